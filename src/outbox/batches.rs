//! Batches: formed from a lane's pending records (and a few ahead), written down with their
//! key before they are sent, marked sent, dead or in parts; lane health; records made pending
//! again moved to the end, and the daemon woken for them.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{LaneId, Outbox, OutboxError, now_ms};

/// At most this many batches are formed ahead in one transaction ...
pub const AHEAD_BATCHES: usize = 16;

/// ... holding at most about this many payload bytes (memory stays bounded with large
/// batches).
pub const AHEAD_BYTES: usize = 2 << 20;

/// How big a batch may grow and how long a partial one waits.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

/// A batch of one lane's pending records, in order.
#[derive(Clone, Debug)]
pub struct Batch {
    pub id: i64,
    /// Sent as `Idempotency-Key`; the same for every retry of these records.
    pub key: String,
    pub records: Vec<(i64, String)>,
    /// The batch was refused whole and split, and this part of it (record ids
    /// `first..=last`) was in flight when the lane last stopped: it goes out first, again,
    /// under its own key.
    pub part: Option<(i64, i64)>,
}

#[derive(Debug)]
pub enum NextBatch {
    Ready(Batch),
    /// Too few records to fill a batch; ask again after this long (the linger time left).
    Linger(Duration),
    /// Nothing pending.
    Empty,
}

/// A lane's delivery health, written for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    Retrying(String),
    Paused(String),
}

impl Outbox {
    /// Marks a delivered part sent (if given) and, in the same transaction, returns the lane's
    /// open batch or a new one formed from its oldest pending records: one fsync per batch on
    /// the delivery path.
    pub async fn next_batch(
        &self,
        lane: LaneId,
        delivered: Option<Delivered>,
        limits: BatchLimits,
    ) -> Result<NextBatch, OutboxError> {
        let instance = self.instance.clone();
        self.call(move |c, p| {
            let step = || -> rusqlite::Result<NextBatch> {
                if let Some(done) = delivered {
                    write_sent(c, lane, done)?;
                }
                next_batch(c, &instance, lane, limits, 0)
            };
            step().map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Like [`Self::next_batch`], but for while batches up to `in_flight` are being sent:
    /// marks what was delivered before them and returns the batches to send after them, in
    /// order: open ones (after a restart), then new ones while one is due (full, or its
    /// linger over), up to [`AHEAD_BATCHES`] and [`AHEAD_BYTES`]. The lane sends them when the
    /// ones in flight are done, so the commit overlaps requests instead of following each;
    /// one transaction yields several batches, so a lane keeps pace even while its
    /// transactions wait behind a source's large commits. Batches still go out in order, each
    /// under its own key.
    pub async fn form_ahead(
        &self,
        lane: LaneId,
        in_flight: i64,
        delivered: Option<Delivered>,
        limits: BatchLimits,
    ) -> Result<Vec<Batch>, OutboxError> {
        let instance = self.instance.clone();
        self.call(move |c, p| {
            let step = || -> rusqlite::Result<Vec<Batch>> {
                if let Some(done) = delivered {
                    write_sent(c, lane, done)?;
                }
                let (mut formed, mut bytes, mut after) = (Vec::new(), 0, in_flight);
                while formed.len() < AHEAD_BATCHES && bytes < AHEAD_BYTES {
                    let NextBatch::Ready(b) = next_batch(c, &instance, lane, limits, after)? else {
                        break;
                    };
                    after = b.id;
                    bytes += b.records.iter().map(|(_, p)| p.len()).sum::<usize>();
                    formed.push(b);
                }
                Ok(formed)
            };
            step().map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Marks a lane's records delivered up to `done`; returns how many the mark passed.
    pub async fn mark_sent(&self, lane: LaneId, done: Delivered) -> Result<usize, OutboxError> {
        self.call(move |c, p| write_sent(c, lane, done).map_err(|e| OutboxError::sqlite(p, e)))
            .await
    }

    /// [`Self::mark_sent`] without waiting for it: written with the writer's next transaction,
    /// so that a crash soon after resends less. The caller marks the same again later, in a
    /// write it waits for (a failed early mark then costs nothing).
    pub fn mark_sent_early(&self, lane: LaneId, done: Delivered) {
        drop(self.job(
            move |c, p| write_sent(c, lane, done).map_err(|e| OutboxError::sqlite(p, e)),
            |_| {},
        ));
    }

    /// Notes that the part `first..=last` (record ids) of a split batch is about to be sent,
    /// before it is: after a crash it goes out again under its own key (see [`Batch::part`]).
    pub async fn begin_part(&self, batch: i64, first: i64, last: i64) -> Result<(), OutboxError> {
        self.call(move |c, p| {
            c.prepare_cached("UPDATE batches SET part_first = ?1, part_last = ?2 WHERE id = ?3")
                .and_then(|mut s| s.execute(params![first, last, batch]))
                .map(|_| ())
                .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Moves one record the API rejected to the dead letters, with the API's answer.
    pub async fn mark_dead(
        &self,
        batch: i64,
        record: i64,
        status: u16,
        answer: String,
    ) -> Result<(), OutboxError> {
        self.call(move |c, p| {
            c.execute(
                "UPDATE records SET state = 2 WHERE id = ?1 AND state = 0",
                [record],
            )
            .and_then(|_| {
                c.execute(
                    "INSERT INTO dead (record_id, status, answer, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (record_id) DO UPDATE SET status = ?2, answer = ?3, at = ?4",
                    params![record, status, answer, now_ms()],
                )
            })
            .and_then(|_| close_batch_if_done(c, batch))
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Records a lane's health for `status`.
    pub async fn set_health(&self, lane: LaneId, health: Health) -> Result<(), OutboxError> {
        self.call(move |c, p| {
            let (name, error) = match health {
                Health::Ok => ("ok", None),
                Health::Retrying(e) => ("retrying", Some(e)),
                Health::Paused(e) => ("paused", Some(e)),
            };
            let result = match error {
                Some(e) => c.execute(
                    "UPDATE lanes SET health = ?1, last_error = ?2, last_error_at = ?3 WHERE id = ?4",
                    params![name, crate::redact::scrub(&e), now_ms(), lane.0],
                ),
                None => c.execute(
                    "UPDATE lanes SET health = ?1 WHERE id = ?2",
                    params![name, lane.0],
                ),
            };
            result.map(|_| ()).map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Counts a retry of a batch whose previous attempt may have reached the API.
    pub async fn count_unknown_outcome(&self, lane: LaneId) -> Result<(), OutboxError> {
        self.call(move |c, p| {
            c.execute(
                "UPDATE lanes SET unknown_outcome_retries = unknown_outcome_retries + 1 WHERE id = ?1",
                [lane.0],
            )
            .map(|_| ())
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }
}

/// A batch row: its key, its range of record ids, the part in flight.
pub(super) struct OpenBatch {
    id: i64,
    key: String,
    first: i64,
    last: i64,
    part: Option<(i64, i64)>,
}

/// The lane's oldest open batch with an id above `open_after` (0: any), else a new batch of
/// pending records above the lane's `scanned_to`.
pub(super) fn next_batch(
    c: &Connection,
    instance: &str,
    lane: LaneId,
    limits: BatchLimits,
    open_after: i64,
) -> rusqlite::Result<NextBatch> {
    let BatchLimits {
        max_records,
        max_bytes,
        linger,
    } = limits;
    let (scanned, sent): (i64, i64) = c
        .prepare_cached("SELECT scanned_to, sent_to FROM lanes WHERE id = ?1")?
        .query_row([lane.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
    // An open batch is resent as it was, under the same key, less what was delivered or
    // refused of it; one with nothing left is closed.
    loop {
        let open = c
            .prepare_cached(
                "SELECT id, idem_key, first_id, last_id, part_first, part_last FROM batches
                 WHERE lane_id = ?1 AND id > ?2 ORDER BY id LIMIT 1",
            )?
            .query_row([lane.0, open_after], |r| {
                Ok(OpenBatch {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    first: r.get(2)?,
                    last: r.get(3)?,
                    part: r.get::<_, Option<i64>>(4)?.zip(r.get(5)?),
                })
            })
            .optional()?;
        let Some(OpenBatch {
            id,
            key,
            first,
            last,
            part,
        }) = open
        else {
            break;
        };
        let (mut records, mut damaged) = (Vec::new(), Vec::new());
        {
            let mut stmt = c.prepare_cached(
                "SELECT id, payload FROM records WHERE id > ?1 AND id BETWEEN ?2 AND ?3
                 AND lane_id = ?4 AND state = 0 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![sent, first, last, lane.0])?;
            while let Some(r) = rows.next()? {
                let id = r.get(0)?;
                if let Some(payload) = decoded(c, id, r.get_ref(1)?, &mut damaged)? {
                    records.push((id, payload));
                }
            }
        }
        set_aside(c, lane, &damaged)?;
        if !records.is_empty() {
            return Ok(NextBatch::Ready(Batch {
                id,
                key,
                records,
                part,
            }));
        }
        c.execute("DELETE FROM batches WHERE id = ?1", [id])?;
    }

    let (mut records, mut oldest, mut full);
    loop {
        let mut stmt = c.prepare_cached(
            "SELECT id, payload, created FROM records
             WHERE id > ?1 AND lane_id = ?2 AND state = 0 ORDER BY id LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![scanned, lane.0, max_records as i64])?;
        records = Vec::new();
        let mut damaged = Vec::new();
        let mut bytes = 64;
        oldest = None;
        full = false;
        while let Some(row) = rows.next()? {
            let id = row.get::<_, i64>(0)?;
            let Some(payload) = decoded(c, id, row.get_ref(1)?, &mut damaged)? else {
                continue;
            };
            if !records.is_empty() && bytes + payload.len() + 1 > max_bytes {
                full = true;
                break;
            }
            bytes += payload.len() + 1;
            oldest.get_or_insert(row.get::<_, i64>(2)?);
            records.push((id, payload));
        }
        drop(rows);
        // Damaged records leave the scan, which then runs again without them: a batch is
        // still a full one when enough sound records follow.
        if !damaged.is_empty() {
            set_aside(c, lane, &damaged)?;
            continue;
        }
        // Held records leave the batch; if that empties it, look again past them.
        if super::guard::hold_renamed_queues(c, lane, &mut records)? == 0 || !records.is_empty() {
            break;
        }
    }
    let Some(oldest) = oldest else {
        // Nothing of ours above `scanned_to`: the next scan can start at the newest record.
        c.prepare_cached(
            "UPDATE lanes SET scanned_to = (SELECT coalesce(max(id), 0) FROM records)
             WHERE id = ?1 AND scanned_to < (SELECT coalesce(max(id), 0) FROM records)",
        )?
        .execute([lane.0])?;
        return Ok(NextBatch::Empty);
    };
    full |= records.len() >= max_records;
    let waited = Duration::from_millis((now_ms() - oldest).max(0) as u64);
    if !full && waited < linger {
        return Ok(NextBatch::Linger(linger - waited));
    }
    let first = records[0].0;
    let last = records[records.len() - 1].0;
    c.prepare_cached(
        "INSERT INTO batches (lane_id, idem_key, created, first_id, last_id)
         VALUES (?1, '', ?2, ?3, ?4)",
    )?
    .execute(params![lane.0, now_ms(), first, last])?;
    let id = c.last_insert_rowid();
    let mut h = Sha256::new();
    h.update(format!("{instance}/{}/{id}/{first}/{last}", lane.0));
    let key: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    c.prepare_cached("UPDATE batches SET idem_key = ?1 WHERE id = ?2")?
        .execute(params![key, id])?;
    c.prepare_cached("UPDATE lanes SET scanned_to = ?1 WHERE id = ?2")?
        .execute(params![last, lane.0])?;
    Ok(NextBatch::Ready(Batch {
        id,
        key,
        records,
        part: None,
    }))
}

/// A record's payload as text; `None` for one that cannot be decoded, which is added to
/// `damaged` with why. Any other error (SQLite's) is returned.
fn decoded(
    c: &Connection,
    id: i64,
    stored: rusqlite::types::ValueRef<'_>,
    damaged: &mut Vec<(i64, super::codec::Damaged)>,
) -> rusqlite::Result<Option<String>> {
    match super::codec::text(c, stored) {
        Ok(payload) => Ok(Some(payload)),
        Err(e) => match super::codec::damage(&e) {
            Some(why) => {
                damaged.push((id, why.clone()));
                Ok(None)
            }
            None => Err(e),
        },
    }
}

/// Sets records that cannot be decoded aside as damaged dead letters (state 2, `damaged` 1,
/// why in `answer`), their stored bytes left as they are for a look: sent, they would be
/// garbage, and kept pending, they would stop their lane for good. `status`, `dead list`,
/// `/readyz`, `/metrics` and `check` name them; `dead drop` gives them up.
fn set_aside(
    c: &Connection,
    lane: LaneId,
    damaged: &[(i64, super::codec::Damaged)],
) -> rusqlite::Result<()> {
    let Some((first, why)) = damaged.first() else {
        return Ok(());
    };
    let now = now_ms();
    for (id, why) in damaged {
        c.prepare_cached("UPDATE records SET state = 2 WHERE id = ?1 AND state = 0")?
            .execute([id])?;
        c.prepare_cached(
            "INSERT INTO dead (record_id, status, answer, at, damaged) VALUES (?1, 0, ?2, ?3, 1)
             ON CONFLICT (record_id) DO UPDATE SET status = 0, answer = ?2, at = ?3, damaged = 1",
        )?
        .execute(params![id, format!("record {id}: {why}"), now])?;
    }
    // One line per scan, not per record: a damaged dictionary sets aside all of its records.
    tracing::error!(
        lane = lane.0,
        "{} record(s) in the state file cannot be decoded (the first, #{first}: {why}); they \
         are set aside as damaged dead letters, their stored bytes kept, and the lane goes on: \
         `injixo-sync dead list` shows them, `injixo-sync dead drop ID` gives them up",
        damaged.len()
    );
    Ok(())
}

/// A lane's records up to `last`, the last of them in batch `batch`, that the API accepted:
/// everything of the lane above its mark and up to `last` that is still queued, since a lane
/// sends its batches, and the parts of a batch, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub batch: i64,
    pub last: i64,
}

/// Moves the lane's mark up to a delivered record: one row written, whatever the number of
/// records. Marking again, or an earlier point, changes nothing, so a mark can be written early
/// and again later.
pub(super) fn write_sent(c: &Connection, lane: LaneId, done: Delivered) -> rusqlite::Result<usize> {
    let now = now_ms();
    let (emits, sent): (String, i64) = c
        .prepare_cached("SELECT emits, sent_to FROM lanes WHERE id = ?1")?
        .query_row([lane.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if done.last <= sent {
        return Ok(0);
    }
    // Agent identifiers sent, for `injixo-sync agents` (agent-status lanes only, so contact
    // events are not read again here).
    if emits == "agent_statuses" {
        c.prepare_cached(
            "INSERT INTO agents (lane_id, agent, first_sent, last_sent)
             SELECT ?1, json_extract(payload(payload), '$.agentIdentifier'), ?2, ?2
             FROM records WHERE id > ?3 AND id <= ?4 AND lane_id = ?1 AND state = 0
               AND json_extract(payload(payload), '$.agentIdentifier') IS NOT NULL
             ON CONFLICT (lane_id, agent) DO UPDATE SET last_sent = excluded.last_sent",
        )?
        .execute(params![lane.0, now, sent, done.last])?;
    }
    let n: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM records WHERE id > ?1 AND id <= ?2 AND lane_id = ?3
             AND state = 0",
        )?
        .query_row(params![sent, done.last, lane.0], |r| r.get(0))?;
    c.prepare_cached(
        "UPDATE lanes SET sent_to = ?1, delivered_total = delivered_total + ?2,
         last_success = ?3, health = 'ok' WHERE id = ?4",
    )?
    .execute(params![done.last, n, now, lane.0])?;
    c.prepare_cached(
        "INSERT INTO deliveries (lane_id, sent_to, at) VALUES (?1, ?2, ?3)
         ON CONFLICT (lane_id, sent_to) DO NOTHING",
    )?
    .execute(params![lane.0, done.last, now])?;
    // Every batch the mark passed is done; the last may end in refused records above it.
    c.prepare_cached("DELETE FROM batches WHERE lane_id = ?1 AND last_id <= ?2")?
        .execute(params![lane.0, done.last])?;
    c.prepare_cached(
        "UPDATE batches SET part_first = NULL, part_last = NULL
         WHERE lane_id = ?1 AND part_last <= ?2",
    )?
    .execute(params![lane.0, done.last])?;
    close_batch_if_done(c, done.batch)?;
    Ok(n as usize)
}

/// Closes a batch that has nothing left to send: every record in its range is delivered
/// (below the lane's mark) or was refused.
pub(super) fn close_batch_if_done(c: &Connection, batch: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "DELETE FROM batches WHERE id = ?1 AND NOT EXISTS (
           SELECT 1 FROM records r, lanes l WHERE l.id = batches.lane_id
             AND r.id > l.sent_to AND r.id BETWEEN batches.first_id AND batches.last_id
             AND r.lane_id = l.id AND r.state = 0)",
    )?
    .execute([batch])?;
    Ok(())
}

/// The `records` table's columns, as of the schema version a move runs under.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Columns {
    /// The current schema's.
    Current,
    /// Before version 7 added `row_hash`: the migration to version 4 moves records too.
    BeforeRowHash,
}

/// Moves the records `chosen` selects (`SELECT id ...`, with `params`) to the end of the
/// outbox as pending: each is deleted and inserted again, with its dedupe key, payload and
/// origin, under a new id above every other (`created` too, if given). Returns how many, and
/// the new ids' range.
pub(crate) fn move_to_end(
    c: &Connection,
    chosen: &str,
    params: &[&dyn rusqlite::ToSql],
    created: Option<i64>,
    columns: Columns,
) -> rusqlite::Result<Option<Moved>> {
    let hashed = columns == Columns::Current;
    let row_hash = if hashed { "row_hash" } else { "NULL" };
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS moving (old INTEGER PRIMARY KEY, lane_id INTEGER,
           source_id INTEGER, dkey BLOB, payload TEXT, origin TEXT, created INTEGER,
           row_hash INTEGER);
         DELETE FROM temp.moving;",
    )?;
    let n = c.execute(
        &format!(
            "INSERT INTO temp.moving SELECT id, lane_id, source_id, dkey, payload, origin, created,
             {row_hash} FROM records WHERE id IN ({chosen})"
        ),
        params,
    )?;
    if n == 0 {
        return Ok(None);
    }
    if let Some(at) = created {
        c.execute("UPDATE temp.moving SET created = ?1", [at])?;
    }
    // Above every id ever given (AUTOINCREMENT), so the moved records follow all others.
    let before: i64 = c.query_row(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'records'",
        [],
        |r| r.get(0),
    )?;
    let hashed = if hashed { ", row_hash" } else { "" };
    c.execute_batch(&format!(
        "DELETE FROM records WHERE id IN (SELECT old FROM temp.moving);
         DELETE FROM dead WHERE record_id IN (SELECT old FROM temp.moving);
         INSERT INTO records (lane_id, source_id, dkey, payload, origin, created{hashed})
           SELECT lane_id, source_id, dkey, payload, origin, created{hashed} FROM temp.moving
           ORDER BY old;
         DELETE FROM temp.moving;",
    ))?;
    c.query_row(
        "SELECT min(id), max(id) FROM records WHERE id > ?1",
        [before],
        |r| {
            Ok(Some(Moved {
                count: n,
                first: r.get(0)?,
                last: r.get(1)?,
            }))
        },
    )
}

/// Records [`move_to_end`] moved: how many, and their new ids `first..=last`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Moved {
    pub count: usize,
    pub first: i64,
    pub last: i64,
}

/// Notes, in the transaction that made records pending from outside the daemon (`dead retry`,
/// `resend`, `queues confirm`, `import`), that there are such records: a running daemon
/// watches this counter ([`Outbox::watch_requeues`]) and wakes its lanes within a second.
pub(crate) fn note_requeue(c: &Connection) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('requeued', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        [],
    )?;
    Ok(())
}

impl Outbox {
    /// [`note_requeue`] for a process that writes records through its own outbox (`import`).
    pub async fn note_requeue(&self) -> Result<(), OutboxError> {
        self.call(|c, p| note_requeue(c).map_err(|e| OutboxError::sqlite(p, e)))
            .await
    }

    /// Wakes every lane within a second of another process noting records made pending
    /// ([`note_requeue`]); runs until `stop`. One small read a second on a read-only
    /// connection of its own.
    pub async fn watch_requeues(&self, stop: tokio_util::sync::CancellationToken) {
        let path = self.path.clone();
        let read = move |conn: &Option<Connection>| -> Option<String> {
            conn.as_ref()?
                .query_row("SELECT value FROM meta WHERE key = 'requeued'", [], |r| {
                    r.get(0)
                })
                .optional()
                .ok()
                .flatten()
        };
        let mut conn = tokio::task::spawn_blocking({
            let path = path.clone();
            move || super::schema::open_ro(&path).ok()
        })
        .await
        .ok()
        .flatten();
        let mut seen = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let (back, now) = tokio::task::spawn_blocking(move || {
                let now = read(&conn);
                (conn, now)
            })
            .await
            .unwrap_or((None, None));
            conn = back;
            // A change (the first value read too: it may be new since the lanes looked) wakes
            // every lane; a lane woken for nothing only looks once more.
            if now != seen {
                for notify in self.wakers.0.lock().expect("wakers lock").values() {
                    notify.notify_one();
                }
            }
            seen = now;
        }
    }
}
