//! Dead letters for the operator: list them, send them again, or drop them. A damaged one (a
//! record the outbox cannot decode, set aside by batch forming) is listed with why and can
//! only be dropped: sent again, it would be garbage.
//!
//! These run from the command line beside a running daemon, each as one short transaction on
//! its own connection (WAL and the busy timeout let the two take turns). A retried record
//! becomes pending again at the end of its lane (moved under a new id, so it joins no batch
//! already formed); a running daemon notices within a second (see `note_requeue`). A dropped record stays as
//! a row (state 3) so that its dedupe key keeps the same input from being enqueued again, and
//! is pruned like a delivered one.

use std::path::Path;

use rusqlite::{Connection, params};

use super::codec::{Decoders, damage};
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

/// Dead letters refused alike (same source, status and answer), largest group first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadGroup {
    pub source: String,
    pub status: i64,
    pub answer: String,
    pub count: i64,
    pub first_id: i64,
    /// Whether they are damaged in the state file (they can only be dropped).
    pub damaged: bool,
    /// Their ids when the group has at most [`GROUP_IDS`]; else the first [`GROUP_IDS`].
    pub ids: Vec<i64>,
}

/// How many ids a [`DeadGroup`] lists.
pub const GROUP_IDS: usize = 20;

/// Dead letters grouped by source, status and answer: the `limit` largest groups.
pub fn dead_groups(path: &Path, limit: usize) -> Result<Vec<DeadGroup>, OutboxError> {
    let conn = schema::open_ro(path)?;
    let read = || -> rusqlite::Result<Vec<DeadGroup>> {
        let mut groups: Vec<DeadGroup> = conn
            .prepare(
                "SELECT s.name, d.status, d.answer, count(*), min(d.record_id), max(d.damaged)
                 FROM dead d JOIN records r ON r.id = d.record_id
                 JOIN sources s ON s.id = r.source_id
                 WHERE r.state = 2 GROUP BY s.name, d.status, d.answer
                 ORDER BY count(*) DESC, min(d.record_id) LIMIT ?1",
            )?
            .query_map([limit as i64], |r| {
                Ok(DeadGroup {
                    source: r.get(0)?,
                    status: r.get(1)?,
                    answer: r.get(2)?,
                    count: r.get(3)?,
                    first_id: r.get(4)?,
                    damaged: r.get::<_, i64>(5)? != 0,
                    ids: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut ids = conn.prepare(
            "SELECT d.record_id FROM dead d JOIN records r ON r.id = d.record_id
             JOIN sources s ON s.id = r.source_id
             WHERE r.state = 2 AND s.name = ?1 AND d.status = ?2 AND d.answer = ?3
             ORDER BY d.record_id LIMIT ?4",
        )?;
        for g in &mut groups {
            g.ids = ids
                .query_map(
                    params![g.source, g.status, g.answer, GROUP_IDS as i64],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
        }
        Ok(groups)
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// Each dead letter is decoded here, one by one, rather than by `payload()` in the query: one
/// that cannot be decoded is listed as damaged instead of failing the whole list.
pub(super) fn query(
    c: &Connection,
    source: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let decoders = Decoders::default();
    c.prepare(
        "SELECT d.record_id, s.name, r.payload, r.origin, d.status, d.answer, d.at, d.damaged
         FROM dead d JOIN records r ON r.id = d.record_id
         JOIN sources s ON s.id = r.source_id
         WHERE r.state = 2 AND (?1 IS NULL OR s.name = ?1)
         ORDER BY d.at DESC, d.record_id DESC LIMIT ?2",
    )?
    .query_map(params![source, limit as i64], |r| {
        let mut answer: String = r.get(5)?;
        let mut damaged = r.get::<_, i64>(7)? != 0;
        let (origin, payload) = match decoders.read(c, r.get_ref(2)?, r.get_ref(3)?) {
            Ok(read) => read,
            Err(e) => {
                let Some(why) = damage(&e) else {
                    return Err(e);
                };
                if !damaged {
                    // Refused by the API, and damaged on disk since.
                    answer.push_str(&format!("; and {why}"));
                    damaged = true;
                }
                // A plain record's origin is its own column; a compressed one's is inside
                // the damaged frame.
                let origin = r.get_ref(3)?.as_str().unwrap_or_default();
                let origin = if origin.is_empty() { "?" } else { origin };
                (origin.to_owned(), String::new())
            }
        };
        Ok(DeadLetter {
            record_id: r.get(0)?,
            source: r.get(1)?,
            origin,
            status: r.get(4)?,
            answer,
            at_ms: r.get(6)?,
            payload,
            damaged,
        })
    })?
    .collect()
}

/// What an operator change did: the records it changed, the ids asked for that are not
/// dead letters (unknown, or no longer dead), and those left alone because they cannot be
/// decoded (a retry would send garbage).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub count: usize,
    pub not_found: Vec<i64>,
    pub damaged: Vec<i64>,
}

/// Makes the selected dead letters pending again; a running daemon sends them within a second.
/// Damaged ones (marked so, or no longer decodable) stay dead letters and are named.
pub fn retry_dead(path: &Path, selection: &Selection) -> Result<Changed, OutboxError> {
    let decoders = Decoders::default();
    change(path, selection, |c, id| {
        let (read, marked) = c.query_row(
            "SELECT r.payload, r.origin, d.damaged FROM records r JOIN dead d
             ON d.record_id = r.id WHERE r.id = ?1",
            [id],
            |r| {
                let read = decoders.read(c, r.get_ref(0)?, r.get_ref(1)?).map(drop);
                Ok((read, r.get::<_, i64>(2)? != 0))
            },
        )?;
        match read {
            Err(e) if damage(&e).is_none() => return Err(e),
            // Marked damaged stays so even if it reads now: what it holds is not trusted.
            Err(_) => return Ok(false),
            Ok(()) if marked => return Ok(false),
            Ok(()) => {}
        }
        super::resend::requeue(c, "FROM records r WHERE r.id = ?1 AND r.state = 2", &[&id])?;
        Ok(true)
    })
}

/// Gives the selected dead letters up.
pub fn drop_dead(path: &Path, selection: &Selection) -> Result<Changed, OutboxError> {
    change(path, selection, |c, id| {
        c.execute(
            "UPDATE records SET state = 3, sent_at = ?1 WHERE id = ?2 AND state = 2",
            params![now_ms(), id],
        )?;
        Ok(true)
    })
}

/// Applies `apply` to each selected dead letter; it returns whether it changed the record
/// (`false`: left alone as damaged).
fn change(
    path: &Path,
    selection: &Selection,
    apply: impl Fn(&Connection, i64) -> rusqlite::Result<bool>,
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
        let mut done = Changed {
            not_found,
            ..Changed::default()
        };
        for id in chosen {
            if apply(conn, id)? {
                conn.execute("DELETE FROM dead WHERE record_id = ?1", [id])?;
                done.count += 1;
            } else {
                done.damaged.push(id);
            }
        }
        Ok(done)
    })
}
