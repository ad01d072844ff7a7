//! Read-only views of the outbox for `status` and `check`. They open their own read-only
//! connection, so they work while the daemon runs (WAL lets readers and the writer coexist).

use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use super::{OutboxError, schema};

#[derive(Debug, Serialize)]
pub struct Report {
    pub lanes: Vec<LaneReport>,
    pub sources: Vec<SourceReport>,
    pub dead: Vec<DeadLetter>,
    pub parked: Vec<ParkedReport>,
}

#[derive(Debug, Serialize)]
pub struct LaneReport {
    pub emits: String,
    pub integration_id: i64,
    pub external_system: Option<String>,
    /// `ok`, `retrying` or `paused`.
    pub health: String,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub pending: i64,
    pub oldest_pending_ms: Option<i64>,
    pub sent_kept: i64,
    pub dead: i64,
    /// Held back by the queue guard (`injixo-sync queues`).
    pub held: i64,
    pub delivered_total: i64,
    pub unknown_outcome_retries: i64,
}

#[derive(Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub last_activity_ms: Option<i64>,
    pub records_total: i64,
    pub parked_total: i64,
    /// The most recently moved cursors, newest first.
    pub cursors: Vec<CursorReport>,
}

#[derive(Debug, Serialize)]
pub struct CursorReport {
    pub key: String,
    pub value: serde_json::Value,
    pub updated_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub record_id: i64,
    pub source: String,
    pub origin: String,
    pub status: i64,
    pub answer: String,
    pub at_ms: i64,
    pub payload: String,
}

#[derive(Debug, Serialize)]
pub struct ParkedReport {
    pub source: String,
    pub origin: String,
    pub reason: String,
    pub at_ms: i64,
}

/// Per lane id: records waiting and the creation time of the oldest (for `/metrics` and
/// `/readyz`). Reads only the unsent tail above each lane's `scanned_to` and its open batch.
pub fn lane_depths(path: &Path) -> Result<Vec<(i64, i64, Option<i64>)>, OutboxError> {
    let conn = schema::open_ro(path)?;
    let read = || -> rusqlite::Result<Vec<(i64, i64, Option<i64>)>> {
        // Two index-friendly parts: the rowid range above `scanned_to`, and the open batch
        // (whose records are older, so its oldest is the lane's oldest when it exists).
        conn.prepare(
            "WITH tail AS (
                 SELECT l.id AS lane, count(r.id) AS n, min(r.created) AS oldest FROM lanes l
                 LEFT JOIN records r ON r.id > l.scanned_to AND r.lane_id = l.id AND r.state = 0
                 GROUP BY l.id),
             open AS (
                 SELECT b.lane_id AS lane, count(r.id) AS n, min(r.created) AS oldest
                 FROM batches b JOIN records r ON r.batch_id = b.id AND r.state = 0
                 GROUP BY b.lane_id)
             SELECT tail.lane, tail.n + coalesce(open.n, 0), coalesce(open.oldest, tail.oldest)
             FROM tail LEFT JOIN open ON open.lane = tail.lane",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// Checks the whole file (`PRAGMA integrity_check`) and that it is ours.
pub fn verify(path: &Path) -> Result<(), OutboxError> {
    let conn = schema::open_ro(path)?;
    schema::integrity_check(&conn, path)
}

/// Reads per-lane and per-source figures, the latest dead letters and parked input.
pub fn inspect(path: &Path, recent: usize) -> Result<Report, OutboxError> {
    let conn = schema::open_ro(path)?;
    read(&conn, recent).map_err(|e| OutboxError::sqlite(path, e))
}

fn read(c: &Connection, recent: usize) -> rusqlite::Result<Report> {
    let mut lanes = Vec::new();
    let mut stmt = c.prepare(
        "SELECT l.id, l.emits, l.integration_id, l.external_system, l.health, l.last_error,
                l.last_error_at, l.last_success, l.delivered_total, l.unknown_outcome_retries,
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id AND r.state = 0),
                (SELECT min(created) FROM records r WHERE r.lane_id = l.id AND r.state = 0),
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id AND r.state = 1),
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id AND r.state = 2),
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id AND r.state = 4)
         FROM lanes l ORDER BY l.id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let system: String = r.get(3)?;
        lanes.push(LaneReport {
            emits: r.get(1)?,
            integration_id: r.get(2)?,
            external_system: (!system.is_empty()).then_some(system),
            health: r.get(4)?,
            last_error: r.get(5)?,
            last_error_at_ms: r.get(6)?,
            last_success_ms: r.get(7)?,
            delivered_total: r.get(8)?,
            unknown_outcome_retries: r.get(9)?,
            pending: r.get(10)?,
            oldest_pending_ms: r.get(11)?,
            sent_kept: r.get(12)?,
            dead: r.get(13)?,
            held: r.get(14)?,
        });
    }
    drop(rows);
    drop(stmt);

    let mut sources = Vec::new();
    let mut stmt = c.prepare(
        "SELECT id, name, last_activity, records_total, parked_total FROM sources ORDER BY name",
    )?;
    let mut cursors = c.prepare(
        "SELECT key, value, updated FROM cursors WHERE source_id = ?1
         ORDER BY updated DESC, id DESC LIMIT 5",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let cs = cursors
            .query_map([id], |c| {
                let value: String = c.get(1)?;
                Ok(CursorReport {
                    key: c.get(0)?,
                    value: serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value)),
                    updated_ms: c.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        sources.push(SourceReport {
            name: r.get(1)?,
            last_activity_ms: r.get(2)?,
            records_total: r.get(3)?,
            parked_total: r.get(4)?,
            cursors: cs,
        });
    }
    drop(rows);

    let dead = super::dead::query(c, None, recent)?;
    let parked = c
        .prepare(
            "SELECT s.name, p.origin, p.reason, p.at FROM parked p
             JOIN sources s ON s.id = p.source_id ORDER BY p.id DESC LIMIT ?1",
        )?
        .query_map([recent as i64], |r| {
            Ok(ParkedReport {
                source: r.get(0)?,
                origin: r.get(1)?,
                reason: r.get(2)?,
                at_ms: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Report {
        lanes,
        sources,
        dead,
        parked,
    })
}
