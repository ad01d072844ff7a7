//! The disk budget (`[state] max_outbox_size`): how much of the disk the outbox may use.
//!
//! The writer measures the pages in use (`page_count - freelist_count`) after every
//! transaction; a commit that brings records while that is at the budget is refused with
//! [`OutboxError::Full`] before it writes anything, so its source keeps its input and reads it
//! again later (a file from its committed cursor, a poll from its cursor, a push answered 503).
//! Cursor moves, parked lines, delivery marks and operator commands are never refused. Free
//! pages are reused by SQLite, so the file stops growing near the budget, and reading resumes
//! as delivery and pruning free pages. To free them sooner, delivered records still kept for
//! `keep_sent` are compacted at the budget, oldest first: their payload and origin are emptied
//! ([`COMPACTED`]) and their dedupe key kept, so re-read input is still recognised and nothing
//! is enqueued twice; only `resend` can no longer reach them. A record keyed by its content (a
//! push, a `key` template) keeps a hash of its payload in its origin when compacted, so a push
//! sent again with other records under its key is still told apart. Records are kept
//! compressed (`codec.rs`), so compacting frees about a third of a delivered record; one
//! compressed smaller than its compacted form stays whole. Keys are let go only by
//! `keep_sent`: a budget too small for them keeps reading
//! paused (`status` says so) until the budget is raised or `keep_sent` lets keys go. Nothing
//! pending is ever dropped.
//!
//! The default budget leaves a reserve free for the rest of the system: half the space free
//! at the first start, kept in the state file, so a restart with a fuller outbox does not
//! grant it half of what is left again.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rusqlite::{Connection, params};

use rusqlite::types::ValueRef;

use super::keys::is_natural_key;
use super::{Outbox, OutboxError};

/// The payload of a compacted record: valid JSON with none of the fields `resend` reads.
pub const COMPACTED: &str = "{}";

/// A compacted record's origin: a hash of the payload it had, so a push sent again under its
/// key with other records is still told from one sent again whole.
pub fn compacted_origin(payload: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(payload.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("#{hex}")
}

/// The bytes of payload and origin a record keeps once compacted: a record read from a place
/// in a file needs no hash, as only pushes are checked against the payload they had. A record
/// stored in fewer (compressed well) is left as it is.
fn compacted_size(dkey: &[u8]) -> i64 {
    (COMPACTED.len() + if is_natural_key(dkey) { 17 } else { 0 }) as i64
}

/// What the outbox uses and may use, shared by the writer and every handle.
#[derive(Debug, Default)]
pub(super) struct Space {
    /// Bytes in pages in use after the last transaction.
    used: AtomicU64,
    /// 0: no budget.
    budget: AtomicU64,
    /// A second process (`import`) follows the budget the daemon keeps in the state file.
    follow_stored: std::sync::atomic::AtomicBool,
    /// What the default budget leaves free on the disk (0: a budget was configured).
    reserve: AtomicU64,
}

/// The outbox's size for `status`, `/readyz` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes in the pages records, keys and cursors use.
    pub used: u64,
    /// The state file and its WAL on disk.
    pub on_disk: u64,
    /// `max_outbox_size` as in effect; 0 when none was set yet.
    pub budget: u64,
}

impl Usage {
    /// Reading is paused: records are refused until pages are freed.
    pub fn full(&self) -> bool {
        self.budget > 0 && self.used >= self.budget
    }

    /// More than `share` of the budget is in use. Room is made down to 90 %, so that reading
    /// goes on for a while before the budget is met again, instead of a chunk at a time.
    pub fn above(&self, share: f64) -> bool {
        self.budget > 0 && self.used as f64 > self.budget as f64 * share
    }

    /// In words, for `status` and `/readyz`.
    pub fn describe(&self) -> String {
        let size = |b: u64| bytesize::ByteSize(b).to_string();
        let mut text = format!("{} on disk, {} in use", size(self.on_disk), size(self.used));
        if self.budget > 0 {
            // Which of the two it is, the start's log says.
            text.push_str(&format!(
                " of a {} budget (max_outbox_size, or by default what the disk holds)",
                size(self.budget)
            ));
        }
        if self.full() {
            text.push_str(
                ": full, reading is paused until delivery and pruning free space \
                 (nothing is dropped)",
            );
        }
        text
    }
}

impl Space {
    pub(super) fn measure(&self, c: &Connection) {
        if let Ok(used) = used_bytes(c) {
            self.used.store(used, Relaxed);
        }
    }

    /// The commit of `records` new records must wait.
    pub(super) fn refuses(
        &self,
        c: &Connection,
        records: usize,
        path: &Path,
    ) -> Result<(), OutboxError> {
        let budget = self.budget.load(Relaxed);
        if records == 0 || budget == 0 || self.used.load(Relaxed) < budget {
            return Ok(());
        }
        // Another process (a daemon beside `import`) may have freed pages meanwhile, or
        // raised the budget.
        self.measure(c);
        let mut budget = budget;
        if self.follow_stored.load(Relaxed) {
            let stored = stored_budget(c);
            if stored > 0 {
                budget = stored;
                self.budget.store(stored, Relaxed);
            }
        }
        let used = self.used.load(Relaxed);
        if used >= budget {
            return Err(OutboxError::Full {
                path: path.to_owned(),
                used,
                budget,
            });
        }
        Ok(())
    }
}

/// Bytes in pages in use: the file without its free pages.
pub(super) fn used_bytes(c: &Connection) -> rusqlite::Result<u64> {
    // After every transaction of the writer: one cached statement, no parsing.
    c.prepare_cached(
        "SELECT (p.page_count - f.freelist_count) * s.page_size
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|b| b.max(0) as u64)
}

/// The state file and its WAL on disk, by `stat` (never by opening them).
pub(super) fn on_disk(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path, Path::new(&wal)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The budget as last set by a daemon, for commands in other processes.
pub(super) fn stored_budget(c: &Connection) -> u64 {
    c.query_row(
        "SELECT value FROM meta WHERE key = 'max_outbox_size'",
        [],
        |r| r.get::<_, String>(0),
    )
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(0)
}

/// The default budget worked out again, for a disk grown or cleaned up since the start: what
/// the outbox holds plus what is free now, less the `reserve` left free at the start.
pub fn regrown_budget(path: &Path, reserve: u64, budget: u64) -> Option<u64> {
    let grown = budget_leaving(path, free_beside(path)?, reserve);
    // Only a real change counts: the WAL, the -shm file and the file system's own blocks
    // move the sum a little all the time, and a budget that crept up with them would never
    // pause reading before the disk is full.
    (grown > budget + (budget / 10).max(1 << 20)).then_some(grown)
}

/// What the disk holds for the outbox (its size and the space free beside it), less the
/// `reserve` left for the rest of the system; never 0, which would mean no budget.
fn budget_leaving(path: &Path, free: u64, reserve: u64) -> u64 {
    (on_disk(path) + free).saturating_sub(reserve).max(1 << 20)
}

/// Bytes free beside the state file.
pub fn free_beside(path: &Path) -> Option<u64> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    free_space(folder.unwrap_or(Path::new(".")))
}

/// Bytes available to this user on the file system holding `folder`.
#[cfg(unix)]
fn free_space(folder: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(folder.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes available to this user on the volume holding `folder`.
#[cfg(windows)]
fn free_space(folder: &Path) -> Option<u64> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
    let wide: Vec<u16> = folder.as_os_str().encode_wide().chain(Some(0)).collect();
    let mut free = 0u64;
    // SAFETY: `wide` is NUL-terminated; the other outputs may be null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            wide.as_ptr(),
            &mut free,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(free)
}

impl Outbox {
    /// Sets the budget (bytes; 0 for none) and keeps it in the state file for `status`.
    pub async fn set_budget(&self, budget: u64) -> Result<(), OutboxError> {
        self.space.budget.store(budget, Relaxed);
        self.call(move |c, p| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('max_outbox_size', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [budget.to_string()],
            )
            .map(drop)
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Puts `max_outbox_size` in effect: `configured`, else (for a second process such as
    /// `import`, `prefer_stored`) what the daemon set, else [`default_budget`]. Returns it.
    pub async fn apply_budget(
        &self,
        configured: Option<u64>,
        prefer_stored: bool,
    ) -> Result<u64, OutboxError> {
        let stored = if prefer_stored {
            self.call(|c, _| Ok(stored_budget(c))).await?
        } else {
            0
        };
        if prefer_stored && configured.is_none() && stored > 0 {
            // The daemon's budget, as it changes; this process does not set it.
            self.space.follow_stored.store(true, Relaxed);
            self.space.budget.store(stored, Relaxed);
            return Ok(stored);
        }
        let budget = match configured {
            Some(b) => b,
            None => self.default_budget().await?,
        };
        self.set_budget(budget).await?;
        Ok(budget)
    }

    /// The default budget: what the outbox holds plus the space free beside it, less the
    /// reserve kept in the state file (half the space free when it was first worked out).
    async fn default_budget(&self) -> Result<u64, OutboxError> {
        let Some(free) = free_beside(&self.path) else {
            return Ok(0);
        };
        let proposed = free / 2;
        let reserve = self
            .call(move |c, p| {
                c.execute(
                    "INSERT INTO meta (key, value) VALUES ('outbox_reserve', ?1)
                     ON CONFLICT (key) DO NOTHING",
                    [proposed.to_string()],
                )
                .and_then(|_| {
                    c.query_row(
                        "SELECT value FROM meta WHERE key = 'outbox_reserve'",
                        [],
                        |r| r.get::<_, String>(0),
                    )
                })
                .map(|v| v.parse().unwrap_or(proposed))
                .map_err(|e| OutboxError::sqlite(p, e))
            })
            .await?;
        self.space.reserve.store(reserve, Relaxed);
        // A disk fuller than the reserve pauses reading.
        Ok(budget_leaving(&self.path, free, reserve))
    }

    /// What the default budget leaves free on the disk; 0 when a budget is configured.
    pub fn reserve(&self) -> u64 {
        self.space.reserve.load(Relaxed)
    }

    /// What the outbox uses now, as the writer last measured it.
    pub fn usage(&self) -> Usage {
        Usage {
            used: self.space.used.load(Relaxed),
            on_disk: on_disk(&self.path),
            budget: self.space.budget.load(Relaxed),
        }
    }

    /// Compacts up to 5,000 delivered records of `lane` above `from` (see the module doc);
    /// returns how many, and how far the lane is compacted (`None`: nothing left to compact).
    pub async fn compact_step(
        &self,
        lane: i64,
        from: i64,
    ) -> Result<(usize, Option<i64>), OutboxError> {
        self.call(move |c, p| compact_step(c, lane, from).map_err(|e| OutboxError::sqlite(p, e)))
            .await
    }

    /// The lanes with delivered records kept, and where each is pruned to.
    pub async fn kept_lanes(&self) -> Result<Vec<(i64, i64)>, OutboxError> {
        self.call(|c, p| {
            c.prepare_cached(
                "SELECT id, pruned_to FROM lanes WHERE sent_to > pruned_to ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }
}

fn compact_step(c: &Connection, lane: i64, from: i64) -> rusqlite::Result<(usize, Option<i64>)> {
    const STEP: i64 = 5000;
    let upto: i64 = c
        .prepare_cached("SELECT sent_to FROM lanes WHERE id = ?1")?
        .query_row([lane], |r| r.get(0))?;
    if from >= upto {
        return Ok((0, None));
    }
    // Each row to compact, with the origin it keeps. Only a record keyed by its content is
    // decoded (for its payload's hash); the others are judged by their stored size.
    type Kept = (i64, i64, Vec<u8>, i64, Option<i64>, String, Option<i64>);
    let mut last = None;
    let mut seen = 0;
    let rows: Vec<Kept> = c
        .prepare_cached(
            "SELECT id, source_id, dkey, created, batch_id, payload,
                    length(payload) + length(origin), row_hash FROM records
             WHERE id > ?1 AND id <= ?2 AND lane_id = ?3 AND state = 0 ORDER BY id LIMIT ?4",
        )?
        .query_map(
            params![from, upto, lane, STEP],
            |r| -> rusqlite::Result<Option<Kept>> {
                let (id, dkey): (i64, Vec<u8>) = (r.get(0)?, r.get(2)?);
                last = Some(id);
                let payload = r.get_ref(5)?;
                // Rows compacted before are passed over, but count towards the step; so do
                // rows stored in fewer bytes than their compacted form.
                let compacted = payload == ValueRef::Text(COMPACTED.as_bytes());
                if compacted || r.get::<_, i64>(6)? <= compacted_size(&dkey) {
                    return Ok(None);
                }
                let origin = if is_natural_key(&dkey) {
                    match super::codec::text(c, payload) {
                        Ok(text) => compacted_origin(&text),
                        // Passed over and kept as it is (for a look): its hash cannot be
                        // known, and the rest of the lane is still compacted.
                        Err(e) => match super::codec::damage(&e) {
                            Some(why) => {
                                tracing::warn!(
                                    lane,
                                    "delivered record #{id} is not compacted: {why}; its \
                                     stored bytes are kept as they are"
                                );
                                return Ok(None);
                            }
                            None => return Err(e),
                        },
                    }
                } else {
                    String::new()
                };
                Ok(Some((
                    id,
                    r.get(1)?,
                    dkey,
                    r.get(3)?,
                    r.get(4)?,
                    origin,
                    r.get(7)?,
                )))
            },
        )?
        .filter_map(|r| {
            seen += 1;
            r.transpose()
        })
        .collect::<Result<_, _>>()?;
    // Rewritten rather than updated, and all of a step deleted before any is written again: a
    // row that only shrinks keeps its page, and so does one deleted and written back at once
    // (a page that keeps more than a third of its rows is not merged). Pages emptied whole go
    // to the free list, and the rows written back fill fewer.
    let mut delete = c.prepare_cached("DELETE FROM records WHERE id = ?1")?;
    let mut insert = c.prepare_cached(
        "INSERT INTO records (id, lane_id, source_id, dkey, payload, origin, created, state, batch_id,
                              row_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)",
    )?;
    for row in &rows {
        delete.execute([row.0])?;
    }
    for (id, source, dkey, created, batch, origin, row_hash) in &rows {
        insert.execute(params![
            id, lane, source, dkey, COMPACTED, origin, created, batch, row_hash
        ])?;
    }
    let reached = match last {
        Some(last) if seen == STEP => last,
        _ => upto,
    };
    Ok((rows.len(), Some(reached)))
}
