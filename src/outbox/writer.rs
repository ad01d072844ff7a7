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
        for job in jobs {
            let sp = conn.execute_batch("SAVEPOINT job");
            let (ok, finish) = job(Ok((&conn, &path)));
            if sp.is_ok() {
                let end = if ok {
                    "RELEASE job"
                } else {
                    // A dictionary the job stored is gone, and its id may name another.
                    decoders.forget();
                    "ROLLBACK TO job; RELEASE job"
                };
                let _ = conn.execute_batch(end);
            }
            finishes.push(finish);
        }
        let commit = conn
            .execute_batch("COMMIT")
            .map_err(|e| OutboxError::sqlite(&path, e));
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
