//! Dead letters for the operator: list them, send them again, or drop them.
//!
//! These run from the command line beside a running daemon, each as one short transaction on
//! its own connection (WAL and the busy timeout let the two take turns). A retried record
//! becomes pending again at the end of its lane (moved under a new id, so it joins no batch
//! already formed); a running daemon notices within a second (see `note_requeue`). A dropped record stays as
//! a row (state 3) so that its dedupe key keeps the same input from being enqueued again, and
//! is pruned like a delivered one.

use std::path::Path;

use rusqlite::{Connection, params};

use super::report::DeadLetter;
use super::{OutboxError, now_ms, schema};

/// Which dead letters an operator command applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(Vec<i64>),
}

/// Dead letters, newest first, optionally of one source.
pub fn dead_letters(
    path: &Path,
    source: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, OutboxError> {
    let conn = schema::open_ro(path)?;
    query(&conn, source, limit).map_err(|e| OutboxError::sqlite(path, e))
}

pub(super) fn query(
    c: &Connection,
    source: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    c.prepare(
        "SELECT d.record_id, s.name, origin(r.payload, r.origin), d.status, d.answer, d.at,
               payload(r.payload)
         FROM dead d JOIN records r ON r.id = d.record_id
         JOIN sources s ON s.id = r.source_id
         WHERE r.state = 2 AND (?1 IS NULL OR s.name = ?1)
         ORDER BY d.at DESC, d.record_id DESC LIMIT ?2",
    )?
    .query_map(params![source, limit as i64], |r| {
        Ok(DeadLetter {
            record_id: r.get(0)?,
            source: r.get(1)?,
            origin: r.get(2)?,
            status: r.get(3)?,
            answer: r.get(4)?,
            at_ms: r.get(5)?,
            payload: r.get(6)?,
        })
    })?
    .collect()
}

/// What an operator change did: the records it changed, and the ids asked for that are not
/// dead letters (unknown, or no longer dead).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub count: usize,
    pub not_found: Vec<i64>,
}

/// Makes the selected dead letters pending again; a running daemon sends them within a second.
pub fn retry_dead(path: &Path, selection: &Selection) -> Result<Changed, OutboxError> {
    change(path, selection, |c, id| {
        super::resend::requeue(c, "FROM records r WHERE r.id = ?1 AND r.state = 2", &[&id])?;
        Ok(())
    })
}

/// Gives the selected dead letters up.
pub fn drop_dead(path: &Path, selection: &Selection) -> Result<Changed, OutboxError> {
    change(path, selection, |c, id| {
        c.execute(
            "UPDATE records SET state = 3, sent_at = ?1 WHERE id = ?2 AND state = 2",
            params![now_ms(), id],
        )?;
        Ok(())
    })
}

fn change(
    path: &Path,
    selection: &Selection,
    apply: impl Fn(&Connection, i64) -> rusqlite::Result<()>,
) -> Result<Changed, OutboxError> {
    schema::admin_transaction(path, |conn| {
        let dead: Vec<i64> = conn
            .prepare(
                "SELECT d.record_id FROM dead d JOIN records r ON r.id = d.record_id
                 WHERE r.state = 2 ORDER BY d.record_id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let (chosen, not_found): (Vec<i64>, Vec<i64>) = match selection {
            Selection::All => (dead, Vec::new()),
            Selection::Ids(ids) => {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                ids.into_iter()
                    .partition(|id| dead.binary_search(id).is_ok())
            }
        };
        for id in &chosen {
            apply(conn, *id)?;
            conn.execute("DELETE FROM dead WHERE record_id = ?1", [id])?;
        }
        Ok(Changed {
            count: chosen.len(),
            not_found,
        })
    })
}
