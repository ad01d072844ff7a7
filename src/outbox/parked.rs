//! Parked input: what a parked row keeps to be mapped again ([`Replay`]), and the rows as the
//! operator sees them: grouped by source and reason, read for a retry, given up on purpose
//! (`injixo-sync parked list|retry|drop`).

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{OutboxError, schema};

/// What a parked row needs, beside its `raw` text, to be mapped again with the configuration
/// of the day (`parked retry`), giving its records the keys the first read would have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// Where its records' dedupe keys come from when the source has no `key`.
    pub place: Place,
    /// A CSV/TSV record's fields as parsed (its `raw` joins them, which loses quoting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// The columns the fields were read under: its file's header, or the `columns` then
    /// configured. Stored once per source and distinct header.
    #[serde(skip)]
    pub header: Option<Arc<[String]>>,
    /// The input in full, when `raw` keeps only its first 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Where a row was read, as its records' dedupe keys need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// A row of a file: the file's cursor and the row's byte offset.
    File { cursor: i64, offset: u64 },
    /// An element of a push: the push's identity and the element's index.
    Push { push: String, index: usize },
    /// A database row or an API record: told apart by its content.
    Content,
}

impl Replay {
    /// A JSON object or line `text`, kept as `raw` (in full, or its first 4 KiB).
    pub fn json(place: Place, text: &str, raw: &str) -> Self {
        Replay {
            place,
            fields: None,
            header: None,
            text: (raw != text).then(|| text.to_owned()),
        }
    }
}

/// A parked row as `parked retry` and `preview --parked` read it.
#[derive(Clone, Debug)]
pub struct ParkedRow {
    pub id: i64,
    pub source: String,
    pub origin: String,
    pub reason: String,
    pub raw: String,
    /// `None`: kept to be read, not mapped again (a line longer than `max_line`, of which
    /// only the head is kept; a line not in the source's encoding; a queue_log line).
    pub replay: Option<Replay>,
}

impl ParkedRow {
    /// The input as it was read: in full, not cut short.
    pub fn input(&self) -> &str {
        self.replay
            .as_ref()
            .and_then(|r| r.text.as_deref())
            .unwrap_or(&self.raw)
    }
}

/// The parked rows of one source with one reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedGroup {
    pub source: String,
    pub reason: String,
    pub count: i64,
    /// When the first and the latest of them were parked (Unix ms).
    pub first_at_ms: i64,
    pub last_at_ms: i64,
    /// The first of them: where it was read (file:line, a poll's page, a push) and its input.
    pub example_id: i64,
    pub example_origin: String,
    pub example_raw: String,
}

/// Which parked rows: of one source, with a reason containing some text; both optional.
#[derive(Debug, Clone, Default)]
pub struct ParkedFilter {
    pub source: Option<String>,
    pub reason: Option<String>,
    /// `reason` is the whole reason, not a part of it.
    pub exact: bool,
}

impl ParkedFilter {
    /// The rows it selects, as SQL over `parked p` joined to `sources s` (`?1` the source,
    /// `?2` the reason).
    fn selected(&self) -> &'static str {
        if self.exact {
            "(?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR p.reason = ?2)"
        } else {
            "(?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR instr(p.reason, ?2) > 0)"
        }
    }
}

/// Parked input grouped by source and reason, the largest groups first.
pub fn parked_groups(path: &Path, f: &ParkedFilter) -> Result<Vec<ParkedGroup>, OutboxError> {
    let conn = schema::open_ro(path)?;
    let query = format!(
        "WITH g AS (
           SELECT p.source_id, p.reason, count(*) AS n, min(p.id) AS first, max(p.at) AS last_at
           FROM parked p JOIN sources s ON s.id = p.source_id
           WHERE {sel}
           GROUP BY p.source_id, p.reason)
         SELECT s.name, g.reason, g.n, p.at, g.last_at, p.id, p.origin, p.raw
         FROM g JOIN parked p ON p.id = g.first JOIN sources s ON s.id = g.source_id
         ORDER BY g.n DESC, s.name, g.reason",
        sel = f.selected()
    );
    let read = || -> rusqlite::Result<Vec<ParkedGroup>> {
        conn.prepare(&query)?
            .query_map(params![f.source, f.reason], |r| {
                Ok(ParkedGroup {
                    source: r.get(0)?,
                    reason: r.get(1)?,
                    count: r.get(2)?,
                    first_at_ms: r.get(3)?,
                    last_at_ms: r.get(4)?,
                    example_id: r.get(5)?,
                    example_origin: r.get(6)?,
                    example_raw: r.get(7)?,
                })
            })?
            .collect()
    };
    read().map_err(|e| OutboxError::sqlite(path, e))
}

/// Up to `limit` parked rows `f` selects, and of `ids` if not empty, with ids above `after`,
/// in the order they were parked.
pub fn parked_rows(
    path: &Path,
    f: &ParkedFilter,
    ids: &[i64],
    after: i64,
    limit: usize,
) -> Result<Vec<ParkedRow>, OutboxError> {
    let conn = schema::open_ro(path)?;
    read_rows(&conn, f, ids, after, limit).map_err(|e| OutboxError::sqlite(path, e))
}

fn read_rows(
    c: &Connection,
    f: &ParkedFilter,
    ids: &[i64],
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<ParkedRow>> {
    let ids = (!ids.is_empty()).then(|| serde_json::to_string(ids).expect("serializes"));
    let query = format!(
        "SELECT p.id, s.name, p.origin, p.reason, p.raw, p.replay, h.columns
         FROM parked p JOIN sources s ON s.id = p.source_id
         LEFT JOIN parked_headers h ON h.id = p.header_id
         WHERE {sel} AND p.id > ?3
           AND (?4 IS NULL OR p.id IN (SELECT value FROM json_each(?4)))
         ORDER BY p.id LIMIT ?5",
        sel = f.selected()
    );
    c.prepare_cached(&query)?
        .query_map(params![f.source, f.reason, after, ids, limit as i64], |r| {
            let replay: Option<String> = r.get(5)?;
            let header: Option<String> = r.get(6)?;
            Ok(ParkedRow {
                id: r.get(0)?,
                source: r.get(1)?,
                origin: r.get(2)?,
                reason: r.get(3)?,
                raw: r.get(4)?,
                replay: replay.and_then(|text| {
                    let mut replay: Replay = serde_json::from_str(&text).ok()?;
                    replay.header = header
                        .and_then(|h| serde_json::from_str::<Vec<String>>(&h).ok())
                        .map(Arc::from);
                    Some(replay)
                }),
            })
        })?
        .collect()
}

/// How many rows are parked for one reason of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedCount {
    pub source: String,
    pub reason: String,
    pub count: i64,
    /// Where the first of them was read (file:line, a poll's page, a push).
    pub first_origin: String,
}

/// The reason under which [`parked_counts`] sums a source's smaller groups.
pub const OTHER_REASONS: &str = "(other reasons)";

/// Parked rows per source and reason, the largest first: at most `per_source` reasons per
/// source, the rest summed as [`OTHER_REASONS`] (a bounded set of series for `/metrics`).
pub fn parked_counts(path: &Path, per_source: usize) -> Result<Vec<ParkedCount>, OutboxError> {
    let conn = schema::open_ro(path)?;
    counts(&conn, per_source).map_err(|e| OutboxError::sqlite(path, e))
}

/// [`parked_counts`] on an open connection: through the index on (source, reason).
pub(super) fn counts(c: &Connection, per_source: usize) -> rusqlite::Result<Vec<ParkedCount>> {
    let all: Vec<ParkedCount> = c
        .prepare_cached(
            "SELECT s.name, g.reason, g.n, p.origin FROM
               (SELECT source_id, reason, count(*) AS n, min(id) AS first FROM parked
                GROUP BY source_id, reason) g
             JOIN sources s ON s.id = g.source_id JOIN parked p ON p.id = g.first
             ORDER BY s.name, g.n DESC, g.reason",
        )?
        .query_map([], |r| {
            Ok(ParkedCount {
                source: r.get(0)?,
                reason: r.get(1)?,
                count: r.get(2)?,
                first_origin: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut out: Vec<ParkedCount> = Vec::new();
    let mut shown = 0;
    for g in all {
        let same = out.last().is_some_and(|l| l.source == g.source);
        if !same {
            shown = 0;
        }
        if shown < per_source {
            shown += 1;
            out.push(g);
            continue;
        }
        match out.last_mut() {
            Some(last) if last.reason == OTHER_REASONS => last.count += g.count,
            _ => out.push(ParkedCount {
                reason: OTHER_REASONS.into(),
                ..g
            }),
        }
    }
    Ok(out)
}

/// The `meta` key under which the daemon keeps a hash of the configuration file it runs.
const CONFIG_HASH: &str = "config_sha256";

/// A hash of a configuration file's bytes, as [`Outbox::note_config`] keeps it.
pub fn config_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl super::Outbox {
    /// Notes the hash of the configuration file the running generation was made from, so that
    /// `parked retry` beside the daemon can tell it maps with another version of the file.
    pub async fn note_config(&self, hash: String) -> Result<(), OutboxError> {
        self.call(move |c, p| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![CONFIG_HASH, hash],
            )
            .map(drop)
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }
}

/// The hash of the configuration file the daemon last started or reloaded with, if noted.
pub fn running_config_hash(path: &Path) -> Result<Option<String>, OutboxError> {
    let conn = schema::open_ro(path)?;
    conn.query_row(
        "SELECT value FROM meta WHERE key = ?1",
        [CONFIG_HASH],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| OutboxError::sqlite(path, e))
}

/// The value of a source's cursor `key` as the outbox holds it, read-only (`preview
/// --parked` reads the agents' open states so).
pub fn cursor_value(path: &Path, source: &str, key: &str) -> Result<Option<String>, OutboxError> {
    let conn = schema::open_ro(path)?;
    conn.query_row(
        "SELECT c.value FROM cursors c JOIN sources s ON s.id = c.source_id
         WHERE s.name = ?1 AND c.key = ?2",
        params![source, key],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| OutboxError::sqlite(path, e))
}

/// Which records the outbox holds, by source and dedupe key (`preview --parked`).
pub struct KnownKeys {
    conn: Connection,
    path: std::path::PathBuf,
}

impl KnownKeys {
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        Ok(KnownKeys {
            conn: schema::open_ro(path)?,
            path: path.to_owned(),
        })
    }

    pub fn has(&self, source: &str, dkey: &[u8]) -> Result<bool, OutboxError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM records r JOIN sources s ON s.id = r.source_id
                 WHERE s.name = ?1 AND r.dkey = ?2",
            )
            .and_then(|mut s| s.exists(params![source, dkey]))
            .map_err(|e| OutboxError::sqlite(&self.path, e))
    }
}

/// Stores a parked row with what replaying it needs.
pub(super) fn park(
    c: &Connection,
    source: i64,
    p: &super::Parked,
    now: i64,
) -> rusqlite::Result<()> {
    let (replay, header) = match &p.replay {
        Some(r) => (
            Some(serde_json::to_string(r).expect("serializes")),
            r.header
                .as_deref()
                .map(|h| header_id(c, source, h))
                .transpose()?,
        ),
        None => (None, None),
    };
    c.prepare_cached(
        "INSERT INTO parked (source_id, origin, reason, raw, at, replay, header_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        source, p.origin, p.reason, p.raw, now, replay, header
    ])?;
    Ok(())
}

/// The id of a header in `parked_headers`, stored there if new.
fn header_id(c: &Connection, source: i64, header: &[String]) -> rusqlite::Result<i64> {
    let columns = serde_json::to_string(header).expect("serializes");
    let known = c
        .prepare_cached("SELECT id FROM parked_headers WHERE source_id = ?1 AND columns = ?2")?
        .query_row(params![source, columns], |r| r.get(0))
        .optional()?;
    if let Some(id) = known {
        return Ok(id);
    }
    c.prepare_cached("INSERT INTO parked_headers (source_id, columns) VALUES (?1, ?2)")?
        .execute(params![source, columns])?;
    Ok(c.last_insert_rowid())
}

/// Deletes the headers no parked row names any more.
pub(super) fn drop_unused_headers(c: &Connection) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "DELETE FROM parked_headers WHERE NOT EXISTS
           (SELECT 1 FROM parked p WHERE p.header_id = parked_headers.id)",
    )?
    .execute([])
}

/// Gives the parked rows `f` selects up: they are deleted. Returns how many.
pub fn drop_parked(path: &Path, f: &ParkedFilter) -> Result<usize, OutboxError> {
    schema::admin_transaction(path, |c| {
        let n = c.execute(
            &format!(
                "DELETE FROM parked WHERE id IN (
                   SELECT p.id FROM parked p JOIN sources s ON s.id = p.source_id
                   WHERE {sel})",
                sel = f.selected()
            ),
            params![f.source, f.reason],
        )?;
        drop_unused_headers(c)?;
        Ok(n)
    })
}

/// What a parked row became when mapped again.
#[derive(Debug)]
pub enum Retried {
    /// It is no longer parked: these records (none when `skip_if` now leaves it out, or when
    /// an agent's state change closed no interval yet) are enqueued with it.
    Records(Vec<super::NewRecord>),
    /// It is no longer parked, and gives nothing: `skip_if` leaves it out now.
    Skipped,
    /// It stays parked, with this reason now.
    Parked(String),
}

/// What [`Outbox::replay_blocking`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayDone {
    /// Rows taken out of the parked input, with the records they gave.
    pub replayed: usize,
    /// Of those, rows `skip_if` left out.
    pub skipped: usize,
    /// Rows that stay parked, by their reason of now.
    pub still_parked: std::collections::BTreeMap<String, usize>,
    /// Rows that were no longer parked (replayed or given up meanwhile by another process):
    /// nothing was enqueued for them.
    pub gone: usize,
    /// The records enqueued (`inserted`), and those already in the outbox (`duplicates`,
    /// of which `merged` under the same `key` with other content).
    pub committed: super::Committed,
    /// Asked for all or nothing, a row was no longer parked: nothing was written.
    pub stale: bool,
}

impl super::Outbox {
    /// Takes parked rows of one source out as what they became, in one transaction with the
    /// records they gave and `cursors` (an agent-state source's open states): a row that is
    /// still parked when the transaction starts gives its records; one that is not (another
    /// `parked retry` took it first) gives nothing. A record whose key is in the outbox
    /// already (delivered, or read again since) is not enqueued twice. `whole`: all rows or
    /// nothing; if one is no longer parked, nothing is written and the answer is `stale`.
    pub fn replay_blocking(
        &self,
        source: super::SourceId,
        lane: super::LaneId,
        rows: Vec<(i64, Retried)>,
        cursors: Vec<(i64, String)>,
        whole: bool,
    ) -> Result<ReplayDone, OutboxError> {
        let wake = self.wakers.get(lane.0);
        let space = self.space.clone();
        let codecs = self.codecs.clone();
        self.job(
            move |c, p| {
                let fail = |e| OutboxError::sqlite(p, e);
                let mut done = ReplayDone::default();
                if whole {
                    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
                    let present: i64 = c
                        .query_row(
                            "SELECT count(*) FROM parked WHERE source_id = ?1
                             AND id IN (SELECT value FROM json_each(?2))",
                            params![source.0, serde_json::to_string(&ids).expect("serializes")],
                            |r| r.get(0),
                        )
                        .map_err(fail)?;
                    if present != ids.len() as i64 {
                        done.stale = true;
                        return Ok(done);
                    }
                }
                let mut records = Vec::new();
                let take = |id: i64| {
                    c.prepare_cached("DELETE FROM parked WHERE id = ?1 AND source_id = ?2")
                        .and_then(|mut s| s.execute(params![id, source.0]))
                        .map(|n| n == 1)
                };
                for (id, retried) in rows {
                    match retried {
                        Retried::Skipped => match take(id).map_err(fail)? {
                            true => {
                                done.replayed += 1;
                                done.skipped += 1;
                            }
                            false => done.gone += 1,
                        },
                        Retried::Records(list) => {
                            if take(id).map_err(fail)? {
                                done.replayed += 1;
                                records.extend(list);
                            } else {
                                done.gone += 1;
                            }
                        }
                        Retried::Parked(reason) => {
                            let kept = c
                                .prepare_cached(
                                    "UPDATE parked SET reason = ?1 WHERE id = ?2 AND source_id = ?3",
                                )
                                .and_then(|mut s| s.execute(params![reason, id, source.0]))
                                .map_err(fail)?;
                            if kept == 1 {
                                *done.still_parked.entry(reason).or_insert(0) += 1;
                            } else {
                                done.gone += 1;
                            }
                        }
                    }
                }
                space.refuses(c, records.len(), p)?;
                let packed = codecs.pack(lane.0, &mut records, true);
                let commit = super::Commit {
                    records,
                    cursors,
                    // Rows `skip_if` now leaves out count as skipped, as when read.
                    skipped: done.skipped as u64,
                    ..super::Commit::default()
                };
                done.committed = super::write_commit(c, source, lane, commit, packed).map_err(fail)?;
                drop_unused_headers(c).map_err(fail)?;
                if done.committed.inserted > 0 {
                    // A daemon running beside this process delivers them within a second.
                    super::batches::note_requeue(c).map_err(fail)?;
                }
                Ok(done)
            },
            move |done: &ReplayDone| {
                if done.committed.inserted > 0 {
                    wake.notify_one();
                }
            },
        )
        .blocking_recv()
        .unwrap_or(Err(OutboxError::Closed))
    }
}
