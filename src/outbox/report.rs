//! Read-only views of the outbox for `status` and `check`. They open their own read-only
//! connection, so they work while the daemon runs (WAL lets readers and the writer coexist).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{OutboxError, schema};

#[derive(Debug, Serialize)]
pub struct Report {
    /// The state file's size, what is in use and the budget.
    pub outbox: super::Usage,
    pub lanes: Vec<LaneReport>,
    pub sources: Vec<SourceReport>,
    pub dead: Vec<DeadLetter>,
    /// The latest parked rows.
    pub parked: Vec<ParkedReport>,
    /// Parked rows per source and reason (the ten largest reasons per source).
    pub parked_by_reason: Vec<super::ParkedCount>,
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
    /// Of the dead letters, records that cannot be decoded (see [`DeadLetter::damaged`]).
    pub damaged: i64,
    /// Held back by the queue guard (`injixo-sync queues`).
    pub held: i64,
    pub delivered_total: i64,
    pub unknown_outcome_retries: i64,
}

impl LaneReport {
    /// The lane as `status` and the page name it: `contact_events #1234 (ACD)`, as
    /// [`crate::types::LaneKey`] displays.
    pub fn name(&self) -> String {
        let mut name = format!("{} #{}", self.emits, self.integration_id);
        if let Some(s) = &self.external_system {
            name.push_str(&format!(" ({s})"));
        }
        name
    }
}

#[derive(Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub last_activity_ms: Option<i64>,
    pub records_total: i64,
    /// Rows ever parked (since replayed, given up or pruned included).
    pub parked_total: i64,
    /// Rows parked now.
    pub parked_now: i64,
    /// Rows left out on purpose by `skip_if`.
    pub skipped_total: i64,
    /// Rows merged into a record already kept, because their `key` was known.
    pub merged_total: i64,
    /// The most recently moved cursors, newest first.
    pub cursors: Vec<CursorReport>,
    /// What the source cannot do right now (while the daemon runs), oldest first.
    pub problems: Vec<ProblemReport>,
}

#[derive(Debug, Serialize)]
pub struct ProblemReport {
    /// What it is about: a path, `poll`.
    pub subject: String,
    pub message: String,
    pub since_ms: i64,
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
    /// Empty for a damaged one.
    pub payload: String,
    /// The record cannot be decoded (its stored bytes or its dictionary are damaged): set
    /// aside so its lane flows on, never sent; `answer` says why (status 0).
    pub damaged: bool,
}

#[derive(Debug, Serialize)]
pub struct ParkedReport {
    pub source: String,
    pub origin: String,
    pub reason: String,
    pub at_ms: i64,
}

/// Per lane id: records waiting (counted up to `cap`, so that a large backlog costs a bounded
/// read; `status` counts them all), the creation time of the oldest, the damaged records set
/// aside and the records held back, for `/metrics`, `/readyz` and the service status. Reads the lane's records above
/// its delivered mark in rowid order, where the first is the oldest.
pub fn lane_depths(path: &Path, cap: i64) -> Result<Vec<LaneDepth>, OutboxError> {
    let conn = schema::open_ro(path)?;
    let read = || -> rusqlite::Result<Vec<LaneDepth>> {
        let lanes: Vec<(i64, i64)> = conn
            .prepare("SELECT id, sent_to FROM lanes ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut pending = conn.prepare(
            "SELECT count(*) FROM (SELECT 1 FROM records
             WHERE id > ?1 AND lane_id = ?2 AND state = 0 LIMIT ?3)",
        )?;
        let mut first = conn.prepare(
            "SELECT created FROM records WHERE id > ?1 AND lane_id = ?2 AND state = 0
             ORDER BY id LIMIT 1",
        )?;
        // Through the partial index of damaged dead letters: no scan of the others.
        let mut damaged = conn.prepare(
            "SELECT count(*) FROM dead d JOIN records r ON r.id = d.record_id
             WHERE d.damaged = 1 AND r.lane_id = ?1 AND r.state = 2",
        )?;
        // Through the partial index of held records.
        let mut held =
            conn.prepare("SELECT count(*) FROM records WHERE lane_id = ?1 AND state = 4")?;
        let mut out = Vec::with_capacity(lanes.len());
        for (lane, sent) in lanes {
            let n: i64 = pending.query_row(params![sent, lane, cap], |r| r.get(0))?;
            let oldest = if n > 0 {
                first
                    .query_row(params![sent, lane], |r| r.get(0))
                    .optional()?
            } else {
                None
            };
            let damaged: i64 = damaged.query_row([lane], |r| r.get(0))?;
            let held: i64 = held.query_row([lane], |r| r.get(0))?;
            out.push(LaneDepth {
                lane,
                pending: n,
                oldest_pending_ms: oldest,
                damaged,
                held,
            });
        }
        Ok(out)
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// What waits in a lane (see [`lane_depths`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LaneDepth {
    pub lane: i64,
    /// Records waiting, counted up to a cap.
    pub pending: i64,
    /// When the oldest of them was made.
    pub oldest_pending_ms: Option<i64>,
    /// Records set aside because they cannot be decoded.
    pub damaged: i64,
    /// Contact events held back under a new name for a known queue identifier.
    pub held: i64,
}

/// Checks the whole file (`PRAGMA integrity_check`) and that it is ours.
pub fn verify(path: &Path) -> Result<(), OutboxError> {
    let conn = schema::open_ro(path)?;
    schema::integrity_check(&conn, path)
}

/// Reads per-lane and per-source figures, the latest dead letters and parked input.
pub fn inspect(path: &Path, recent: usize) -> Result<Report, OutboxError> {
    let conn = schema::open_ro(path)?;
    let mut report = read(&conn, recent).map_err(|e| OutboxError::sqlite(path, e))?;
    report.outbox = super::Usage {
        used: super::space::used_bytes(&conn).unwrap_or(0),
        on_disk: super::space::on_disk(path),
        budget: super::space::stored_budget(&conn),
    };
    Ok(report)
}

fn read(c: &Connection, recent: usize) -> rusqlite::Result<Report> {
    let mut lanes = Vec::new();
    let mut stmt = c.prepare(
        "SELECT l.id, l.emits, l.integration_id, l.external_system, l.health, l.last_error,
                l.last_error_at, l.last_success, l.delivered_total, l.unknown_outcome_retries,
                (SELECT count(*) FROM records r
                 WHERE r.id > l.sent_to AND r.lane_id = l.id AND r.state = 0),
                (SELECT min(created) FROM records r
                 WHERE r.id > l.sent_to AND r.lane_id = l.id AND r.state = 0),
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id
                 AND (r.state = 1 OR (r.state = 0 AND r.id <= l.sent_to))),
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id AND r.state = 2),
                (SELECT count(*) FROM records r WHERE r.lane_id = l.id AND r.state = 4),
                (SELECT count(*) FROM dead d JOIN records r ON r.id = d.record_id
                 WHERE d.damaged = 1 AND r.lane_id = l.id AND r.state = 2)
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
            damaged: r.get(15)?,
        });
    }
    drop(rows);
    drop(stmt);

    let mut sources = Vec::new();
    let mut stmt = c.prepare(
        "SELECT id, name, last_activity, records_total, parked_total, skipped_total, merged_total,
                (SELECT count(*) FROM parked p WHERE p.source_id = sources.id)
         FROM sources ORDER BY name",
    )?;
    let mut cursors = c.prepare(
        "SELECT key, value, updated FROM cursors WHERE source_id = ?1
         ORDER BY updated DESC, id DESC LIMIT 5",
    )?;
    let mut problems = c.prepare(
        "SELECT subject, message, since FROM problems WHERE source_id = ?1
         ORDER BY since, subject",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let ps = problems
            .query_map([id], |p| {
                Ok(ProblemReport {
                    subject: p.get(0)?,
                    message: p.get(1)?,
                    since_ms: p.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
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
            skipped_total: r.get(5)?,
            merged_total: r.get(6)?,
            parked_now: r.get(7)?,
            cursors: cs,
            problems: ps,
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
        outbox: super::Usage::default(),
        lanes,
        sources,
        dead,
        parked,
        parked_by_reason: super::parked::counts(c, 10)?,
    })
}

/// A record or a parked line of a (scratch) outbox, for `preview`.
#[derive(Debug)]
pub struct RowRead {
    pub origin: String,
    pub payload: String,
    /// Why it was parked (then `payload` is the input kept).
    pub parked: Option<String>,
}

/// The first `limit` records and parked lines, each in the order they were committed.
pub fn rows_read(path: &Path, limit: usize) -> Result<Vec<RowRead>, OutboxError> {
    let conn = super::schema::open_ro(path)?;
    let err = |e| OutboxError::sqlite(path, e);
    let mut out: Vec<RowRead> = conn
        .prepare(
            "SELECT origin(payload, origin), payload(payload) FROM records ORDER BY id LIMIT ?1",
        )
        .map_err(err)?
        .query_map([limit as i64], |r| {
            Ok(RowRead {
                origin: r.get(0)?,
                payload: r.get(1)?,
                parked: None,
            })
        })
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let parked: Vec<RowRead> = conn
        .prepare("SELECT origin, raw, reason FROM parked ORDER BY id LIMIT ?1")
        .map_err(err)?
        .query_map([limit as i64], |r| {
            Ok(RowRead {
                origin: r.get(0)?,
                payload: r.get(1)?,
                parked: Some(r.get(2)?),
            })
        })
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    out.extend(parked);
    Ok(out)
}
