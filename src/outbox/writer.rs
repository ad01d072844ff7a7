//! The writer thread: the one read-write connection. It runs every job waiting in one
//! transaction, each in its own savepoint, and answers each caller after the commit is on disk
//! (group commit).

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{Outbox, OutboxError, Space};

pub(super) type Finish = Box<dyn FnOnce(Option<&OutboxError>) + Send>;

/// A unit of work for the writer. It receives the connection, or the error that kept the
/// writer from opening a transaction (then it only answers its caller).
pub(super) type Job =
    Box<dyn FnOnce(Result<(&Connection, &Path), &OutboxError>) -> (bool, Finish) + Send>;

impl Outbox {
    pub(super) fn job<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Path) -> Result<R, OutboxError> + Send + 'static,
        after: impl FnOnce(&R) + Send + 'static,
    ) -> oneshot::Receiver<Result<R, OutboxError>> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let result = match db {
                Ok((conn, path)) => work(conn, path),
                Err(e) => Err(e.clone()),
            };
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit_error| {
                let result = match commit_error {
                    Some(e) => Err(e.clone()),
                    None => {
                        if let Ok(r) = &result {
                            after(r);
                        }
                        result
                    }
                };
                let _ = reply.send(result);
            });
            (ok, finish)
        });
        // A closed channel drops the reply sender, which the caller sees as `Closed`.
        let _ = self.tx.send(job);
        rx
    }

    pub(super) async fn call<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Path) -> Result<R, OutboxError> + Send + 'static,
    ) -> Result<R, OutboxError> {
        self.job(work, |_| {})
            .await
            .unwrap_or(Err(OutboxError::Closed))
    }

    pub(super) fn call_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Path) -> Result<R, OutboxError> + Send + 'static,
    ) -> Result<R, OutboxError> {
        self.job(work, |_| {})
            .blocking_recv()
            .unwrap_or(Err(OutboxError::Closed))
    }
}

pub(super) fn writer(
    conn: Connection,
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Job>,
    space: std::sync::Arc<Space>,
    decoders: std::sync::Arc<super::codec::Decoders>,
) {
    super::codec::adopt(decoders.clone());
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < 512 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut finishes = Vec::with_capacity(jobs.len());
        let begin = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| OutboxError::sqlite(&path, e));
        if let Err(e) = begin {
            // Nothing ran: every caller gets the error and keeps its input.
            for job in jobs {
                let (_, finish) = job(Err(&e));
                finish(Some(&e));
            }
            continue;
        }
        // Set when a savepoint could not be ended: what the transaction holds is no longer
        // known to be what its jobs wrote, so none of it is committed.
        let mut poisoned: Option<OutboxError> = None;
        for job in jobs {
            if let Some(e) = &poisoned {
                let (_, finish) = job(Err(e));
                finishes.push(finish);
                continue;
            }
            // A job runs only inside its own savepoint: without one, a failed job could not
            // be undone alone, and its half would be committed with the others.
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                let e = OutboxError::sqlite(&path, e);
                let (_, finish) = job(Err(&e));
                finishes.push(finish);
                continue;
            }
            let (ok, finish) = job(Ok((&conn, &path)));
            let end = if ok {
                "RELEASE job"
            } else {
                // A dictionary the job stored is gone, and its id may name another.
                decoders.forget();
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                poisoned = Some(OutboxError::sqlite(&path, e));
            }
            finishes.push(finish);
        }
        let commit = match poisoned {
            Some(e) => Err(e),
            None => conn
                .execute_batch("COMMIT")
                .map_err(|e| OutboxError::sqlite(&path, e)),
        };
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            // A dictionary this transaction stored is gone, and its id may name another.
            decoders.forget();
        }
        space.measure(&conn);
        for finish in finishes {
            finish(commit.as_ref().err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that leaves the savepoint stack broken (its savepoint gone when the writer ends
    /// it) fails the whole transaction: every job in it is answered with the error, and
    /// nothing any of them wrote is committed, the failed job's half least of all.
    #[test]
    fn a_savepoint_that_cannot_be_ended_fails_every_job_of_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, writer) = Outbox::open(&dir.path().join("outbox.db")).unwrap();
        outbox
            .call_blocking(|c, p| {
                c.execute_batch("CREATE TABLE t (x INTEGER)")
                    .map_err(|e| OutboxError::sqlite(p, e))
            })
            .unwrap();
        // The first job holds the writer until the three after it are queued, so that those
        // run in one transaction.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (running, started) = std::sync::mpsc::channel::<()>();
        let held = outbox.job(
            move |_, _| {
                running.send(()).unwrap();
                wait.recv().unwrap();
                Ok(())
            },
            |_| {},
        );
        started.recv().unwrap();
        let insert = |x: i64, broken: bool| {
            outbox.job(
                move |c, p| {
                    c.execute("INSERT INTO t VALUES (?1)", [x])
                        .map_err(|e| OutboxError::sqlite(p, e))?;
                    if broken {
                        // Ends the writer's savepoint itself, then fails.
                        c.execute_batch("RELEASE job")
                            .map_err(|e| OutboxError::sqlite(p, e))?;
                        return Err(OutboxError::Closed);
                    }
                    Ok(())
                },
                |_| {},
            )
        };
        let answers = [insert(1, false), insert(2, true), insert(3, false)];
        go.send(()).unwrap();
        held.blocking_recv().unwrap().unwrap();
        for a in answers {
            assert!(a.blocking_recv().unwrap().is_err());
        }
        let rows: i64 = outbox
            .call_blocking(|c, p| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(|e| OutboxError::sqlite(p, e))
            })
            .unwrap();
        assert_eq!(rows, 0, "nothing of the transaction was committed");
        drop(outbox);
        writer.join().unwrap();
    }
}
