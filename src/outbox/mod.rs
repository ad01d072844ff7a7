//! The durable outbox: the only module that touches SQLite.
//!
//! Sources hand it records *with* the cursor that follows them, and [`Outbox::commit`] writes
//! both in one transaction, so after any crash a source resumes exactly where its committed
//! records end. Every record carries a dedupe key unique per source; inserting a key that is
//! already there is a no-op, so re-reading input never enqueues a record twice.
//!
//! One writer thread owns the read-write connection. Callers send it jobs; it runs every job
//! that is waiting in one transaction (each job in its own savepoint, so one failing job does
//! not fail the others) and answers each caller only after the commit is on disk. Many small
//! commits from many sources thus share one fsync ("group commit").
//!
//! The pusher takes pending records in batches. A batch is written down (the range of record
//! ids it covers, an idempotency key) before it is sent, so a retry after a crash sends the
//! same records under the same key. Batches of a lane go out in order, so delivery is one
//! mark per lane, `sent_to`: its records in state 0 are pending above it and delivered at or
//! below it. Neither forming a batch nor marking it sent writes to the records themselves;
//! a record is written once, when it comes in. A record made pending again (`resend`, `dead
//! retry`, a confirmed queue) is moved to the end instead ([`move_to_end`]), so no range of
//! an open batch ever gains a record.
//!
//! Where things are: this file has the handle ([`Outbox`]), sources, lanes, cursors and the
//! commit; `writer` the writer thread and its jobs; `batches` forming, marking and requeueing;
//! `prune` what `keep_sent`/`keep_parked` let go; `keys` the dedupe keys; `schema` opening and
//! migrating the file; `lock` the one-daemon lock; `report`, `dead`, `guard` and `resend` what
//! the commands read and change beside a running daemon.

mod batches;
mod codec;
mod dead;
mod guard;
mod keys;
mod lock;
mod parked;
mod prune;
mod report;
mod resend;
mod schema;
mod space;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use tokio::sync::{Notify, mpsc, oneshot};

pub use batches::{Batch, BatchLimits, Delivered, Health, NextBatch};
use batches::{Columns, move_to_end, note_requeue};
pub use codec::register as register_functions;
use codec::{Codecs, Packed};
pub use dead::{
    Changed, DeadGroup, GROUP_IDS, Selection, dead_groups, dead_letters, drop_dead, retry_dead,
};
pub use guard::{HeldQueue, KnownQueue, confirm_queue, held_queues, queues};
pub use keys::{Dkey, dedupe_key, natural_key};
pub use lock::{Holder, LockError, StateLock, holder as lock_holder, lock_path};
pub use parked::{
    KnownKeys, OTHER_REASONS, ParkedCount, ParkedFilter, ParkedGroup, ParkedRow, Place, Replay,
    ReplayDone, Retried, config_hash, cursor_value, drop_parked, parked_counts, parked_groups,
    parked_rows, running_config_hash,
};
pub use report::{
    CursorReport, DeadLetter, LaneDepth, LaneReport, ParkedReport, ProblemReport, Report, RowRead,
    SourceReport, inspect, lane_depths, rows_read, verify,
};
pub use resend::{AgentSent, Resend, agents_sent, resend};
pub use schema::{SCHEMA_VERSION, side_files, writable};
use space::Space;
pub use space::{COMPACTED, Usage, compacted_origin, free_beside, regrown_budget};
use writer::{Job, writer};

use crate::types::{LaneKey, SourceName};

/// Why the outbox could not do something. Messages name the state file and the next step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    #[error("state file {path}: {message}", path = path.display())]
    Sqlite { path: PathBuf, message: String },
    /// The disk the state file is on is full: reading pauses until space is freed.
    #[error(
        "state file {path}: the disk is full ({message}); reading is paused until space is freed",
        path = path.display()
    )]
    DiskFull { path: PathBuf, message: String },
    #[error("state file {path}: {message}", path = path.display())]
    Io { path: PathBuf, message: String },
    /// Another connection holds a lock SQLite would not wait for (two processes opening a new
    /// outbox at once, one of them turning on its WAL): worth trying again.
    #[error("state file {path}: {message}", path = path.display())]
    Locked { path: PathBuf, message: String },
    #[error(
        "state file {path} is refused: {detail}. It was not changed. Point [state] path at \
         another file, or move this one away if it really is not needed",
        path = path.display()
    )]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "state file {path} is corrupt ({detail}). It was not changed: stop the service, keep a \
         copy, and try `sqlite3 {path} .recover`; injixo-sync never recreates it silently",
        path = path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state file {path} has schema version {version}, newer than this build understands: \
         run the newer injixo-sync that wrote it",
        path = path.display()
    )]
    Newer { path: PathBuf, version: i32 },
    #[error(
        "state file {path} has schema version {version}, older than this build reads ({current}): \
         it is brought up to date when the service starts. Restart it (`systemctl restart \
         injixo-sync`), then run this command again",
        path = path.display(),
        current = SCHEMA_VERSION
    )]
    Older { path: PathBuf, version: i32 },
    #[error(
        "state file {path} is in use by {holder}: one daemon per state file. Stop that \
         process first (`systemctl stop injixo-sync`), or point [state] path at another file",
        path = path.display()
    )]
    Busy { path: PathBuf, holder: String },
    #[error("state file {} does not exist yet; `run` creates it", .0.display())]
    Missing(PathBuf),
    /// SQLite's files of a database that is gone: a new outbox made at the path would take
    /// the old log in (and then be found corrupt).
    #[error(
        "state file {path} does not exist, but {files} beside it {verb}: {they} left from an \
         outbox that was deleted or moved without {them}, and SQLite would merge {them} into a \
         new outbox made there. Nothing was created. If the outbox was moved or is in a \
         backup, put it back at {path}; if it is really gone, move {them} away (`mv {list} \
         <somewhere else>`) and start again",
        path = path.display(),
        files = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" and "),
        list = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" "),
        verb = if files.len() == 1 { "does" } else { "do" },
        they = if files.len() == 1 { "it is" } else { "they are" },
        them = if files.len() == 1 { "it" } else { "them" },
    )]
    Orphaned { path: PathBuf, files: Vec<PathBuf> },
    /// An older outbox that this build would migrate, while another process holds the lock.
    #[error(
        "state file {path} has schema version {version}, and this injixo-sync ({build}) would \
         migrate it to version {newest}, but {holder} is using it: migrating would rewrite the \
         outbox under that process. Nothing was changed. Stop it (`systemctl stop \
         injixo-sync`), upgrade the service to this version (it migrates the file when it \
         starts), then run the command again",
        path = path.display(),
        build = env!("CARGO_PKG_VERSION"),
        newest = SCHEMA_VERSION
    )]
    MigrationBusy {
        path: PathBuf,
        version: i32,
        holder: String,
    },
    #[error("the outbox writer has stopped")]
    Closed,
    /// The outbox has reached `max_outbox_size`: reading pauses until space is freed.
    #[error(
        "state file {path}: the outbox is full ({used} in use of its {budget} budget, \
         max_outbox_size); reading is paused until delivery and pruning free space",
        path = path.display(),
        used = bytesize::ByteSize(*used),
        budget = bytesize::ByteSize(*budget)
    )]
    Full {
        path: PathBuf,
        used: u64,
        budget: u64,
    },
}

impl OutboxError {
    fn sqlite(path: &Path, e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => {
                return OutboxError::Foreign {
                    path: path.to_owned(),
                    detail: "it is not an SQLite database".into(),
                };
            }
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
                return OutboxError::Corrupt {
                    path: path.to_owned(),
                    detail: e.to_string(),
                };
            }
            _ => {}
        }
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            return OutboxError::Locked {
                path: path.to_owned(),
                message: e.to_string(),
            };
        }
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return OutboxError::DiskFull {
                path: path.to_owned(),
                message: e.to_string(),
            };
        }
        OutboxError::Sqlite {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::DiskFull { .. })
    }

    /// The outbox is at `max_outbox_size` (said by `status`, /readyz and the daemon's log,
    /// not by every source that waits for room).
    pub fn is_at_budget(&self) -> bool {
        matches!(self, OutboxError::Full { .. })
    }

    /// The disk is full, or the outbox at its budget: reading waits for space.
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            OutboxError::DiskFull { .. } | OutboxError::Full { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(pub i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LaneId(pub i64);

/// A record on its way in.
#[derive(Clone, Debug)]
pub struct NewRecord {
    /// Unique per source; see [`dedupe_key`].
    pub dkey: Dkey,
    /// The record as compact JSON in the API's shape.
    pub payload: String,
    /// Where it came from, such as `calls-2024-05-01.csv:17`.
    pub origin: String,
    /// A hash of the input row, for a record keyed by the source's `key`: another row with
    /// the same key is told from the same row read again ([`Committed::merged`]).
    pub row_hash: Option<i64>,
}

/// Input that could not become a record: kept with its place and reason, never dropped.
#[derive(Clone, Debug)]
pub struct Parked {
    pub origin: String,
    pub reason: String,
    pub raw: String,
    /// What mapping it again needs; `None` when it cannot be (see [`ParkedRow::replay`]).
    pub replay: Option<Replay>,
}

/// One atomic step of a source: records, parked input, and the cursors that follow them.
#[derive(Debug, Default)]
pub struct Commit {
    pub records: Vec<NewRecord>,
    pub parked: Vec<Parked>,
    pub cursors: Vec<(i64, String)>,
    /// Consecutive groups of `records` and `parked` (pushes committed together), counted
    /// apart in [`Committed::groups`]; empty for none.
    pub groups: Vec<Group>,
    /// Input rows the read left out on purpose (`skip_if`), counted for `status`.
    pub skipped: u64,
    /// The input is read again by design (a poller's look-back, ties at its cursor): a row
    /// parked already (the same raw text) is not parked again.
    pub park_once: bool,
}

/// A group of a commit's records and parked input (one push), in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub records: usize,
    pub parked: usize,
    /// A record whose key is in the outbox already must have the same payload, else the
    /// group is left out whole ([`GroupDone::conflict`]): its keys name another record.
    pub same_payload: bool,
}

/// What became of a [`Group`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupDone {
    pub inserted: usize,
    pub duplicates: usize,
    /// A key of the group was in the outbox with another payload: nothing of the group was
    /// written.
    pub conflict: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub inserted: usize,
    pub duplicates: usize,
    /// Of the duplicates, rows whose natural `key` was known with another record: merged
    /// into (dropped in favour of) the record kept.
    pub merged: usize,
    /// Per group of [`Commit::groups`].
    pub groups: Vec<GroupDone>,
    /// Input rows parked (with [`Commit::park_once`], those not parked before).
    pub parked: usize,
}

/// Wakes the lane that a commit added records to.
#[derive(Default)]
struct Wakers(Mutex<HashMap<i64, Arc<Notify>>>);

impl Wakers {
    fn get(&self, lane: i64) -> Arc<Notify> {
        self.0
            .lock()
            .expect("wakers lock")
            .entry(lane)
            .or_default()
            .clone()
    }
}

/// A handle to the outbox; cheap to clone. The writer stops when the last handle is dropped.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Job>,
    wakers: Arc<Wakers>,
    space: Arc<Space>,
    codecs: Arc<Codecs>,
    path: PathBuf,
    instance: Arc<str>,
    /// What the path named when the file was opened (device and inode; Unix only).
    identity: Option<(u64, u64)>,
}

impl Outbox {
    /// Opens the state file (creating it if absent), checks it, and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Outbox, std::thread::JoinHandle<()>), OutboxError> {
        let conn = schema::open_rw(path)?;
        let instance: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })
            .map_err(|e| OutboxError::sqlite(path, e))?;
        let codecs = Codecs::load(&conn).map_err(|e| OutboxError::sqlite(path, e))?;
        let decoders = codec::register(&conn).map_err(|e| OutboxError::sqlite(path, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let owned = path.to_owned();
        let space = Arc::new(Space::default());
        space.measure(&conn);
        let measure = space.clone();
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer(conn, owned, rx, measure, decoders))
            .map_err(|e| OutboxError::Io {
                path: path.to_owned(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((
            Outbox {
                tx,
                wakers: Arc::default(),
                space,
                codecs: Arc::new(codecs),
                path: path.to_owned(),
                instance: instance.into(),
                identity: lock::identity(path),
            },
            handle,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the state file is still where it was opened: an operator who deletes or
    /// replaces it under the running daemon leaves it writing to a file nobody will open
    /// again. Decided by `stat` (never by opening the file).
    pub fn still_at_path(&self) -> bool {
        self.identity.is_none() || lock::identity(&self.path) == self.identity
    }

    /// Whether the writer thread still takes work.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The notification a lane waits on for new records.
    pub fn lane_notify(&self, lane: LaneId) -> Arc<Notify> {
        self.wakers.get(lane.0)
    }

    /// The id of a source, registering its name on first use.
    pub async fn source_id(&self, name: &SourceName) -> Result<SourceId, OutboxError> {
        let name = name.as_str().to_owned();
        self.call(move |c, p| {
            c.execute(
                "INSERT INTO sources (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [&name],
            )
            .and_then(|_| {
                c.query_row("SELECT id FROM sources WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
            })
            .map(SourceId)
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// The id of a lane, registering it on first use.
    pub async fn lane_id(&self, lane: &LaneKey) -> Result<LaneId, OutboxError> {
        let emits = lane.emits.as_str();
        let integration = lane.integration_id as i64;
        let system = lane.external_system.clone().unwrap_or_default();
        self.call(move |c, p| {
            c.execute(
                "INSERT INTO lanes (emits, integration_id, external_system) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![emits, integration, system],
            )
            .and_then(|_| {
                c.query_row(
                    "SELECT id FROM lanes WHERE emits = ?1 AND integration_id = ?2
                     AND external_system = ?3",
                    params![emits, integration, system],
                    |r| r.get(0),
                )
            })
            .map(LaneId)
            .map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Replaces what `source` cannot do right now (`subject` → message, e.g. a path and why it
    /// cannot be read); a problem that stays keeps the time it began.
    pub async fn set_problems(
        &self,
        source: SourceId,
        problems: Vec<(String, String)>,
    ) -> Result<(), OutboxError> {
        self.call(move |c, p| {
            set_problems(c, source, &problems).map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// [`Self::set_problems`] from a source's own thread.
    pub fn set_problems_blocking(
        &self,
        source: SourceId,
        problems: Vec<(String, String)>,
    ) -> Result<(), OutboxError> {
        self.call_blocking(move |c, p| {
            set_problems(c, source, &problems).map_err(|e| OutboxError::sqlite(p, e))
        })
    }

    /// Moves a source's records that wait in another lane of the same kind (pending, or held
    /// by the queue guard) to `lane`, its lane now, as pending: after its `integration_id` or
    /// `external_system` was corrected, what it read before goes where it goes now, instead
    /// of waiting for a lane nothing runs. Returns how many, and from which lanes.
    pub async fn adopt(
        &self,
        source: SourceId,
        lane: LaneId,
    ) -> Result<Vec<(LaneKey, usize)>, OutboxError> {
        self.call(move |c, p| {
            let step = || -> rusqlite::Result<Vec<(LaneKey, usize)>> {
                let others: Vec<(i64, String, i64, String)> = c
                    .prepare_cached(
                        "SELECT DISTINCT l.id, l.emits, l.integration_id, l.external_system
                         FROM records r JOIN lanes l ON l.id = r.lane_id
                         WHERE r.source_id = ?1 AND r.lane_id != ?2
                           AND l.emits = (SELECT emits FROM lanes WHERE id = ?2)
                           AND ((r.state = 0 AND r.id > l.sent_to) OR r.state = 4)",
                    )?
                    .query_map([source.0, lane.0], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let mut moved = Vec::new();
                for (from, emits, integration, system) in others {
                    let m = move_to_end(
                        c,
                        "SELECT r.id FROM records r JOIN lanes l ON l.id = r.lane_id
                         WHERE r.source_id = ?1 AND r.lane_id = ?2
                           AND ((r.state = 0 AND r.id > l.sent_to) OR r.state = 4)",
                        &[&source.0, &from],
                        None,
                        Columns::Current,
                    )?;
                    if let Some(m) = m {
                        c.execute(
                            "UPDATE records SET lane_id = ?1 WHERE id BETWEEN ?2 AND ?3",
                            [lane.0, m.first, m.last],
                        )?;
                        let key = LaneKey {
                            emits: crate::types::Emits::from_name(&emits)
                                .unwrap_or(crate::types::Emits::ContactEvents),
                            integration_id: integration as u64,
                            external_system: (!system.is_empty()).then_some(system),
                        };
                        moved.push((key, m.count));
                    }
                }
                Ok(moved)
            };
            step().map_err(|e| OutboxError::sqlite(p, e))
        })
        .await
    }

    /// Every cursor of a source: `(id, key, value)`.
    pub fn cursors_blocking(
        &self,
        source: SourceId,
    ) -> Result<Vec<(i64, String, String)>, OutboxError> {
        self.call_blocking(move |c, p| {
            read_cursors(c, source).map_err(|e| OutboxError::sqlite(p, e))
        })
    }

    /// [`Self::cursors_blocking`] for async callers. Being a writer job, it runs after every
    /// commit handed over before it: what it reads is what those left on disk.
    pub async fn cursors(
        &self,
        source: SourceId,
    ) -> Result<Vec<(i64, String, String)>, OutboxError> {
        self.call(move |c, p| read_cursors(c, source).map_err(|e| OutboxError::sqlite(p, e)))
            .await
    }

    /// Creates a cursor (or returns the existing one with that key) and returns its id.
    pub fn create_cursor_blocking(
        &self,
        source: SourceId,
        key: String,
        value: String,
    ) -> Result<i64, OutboxError> {
        self.call_blocking(move |c, p| {
            c.execute(
                "INSERT INTO cursors (source_id, key, value, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source_id, key) DO NOTHING",
                params![source.0, key, value, now_ms()],
            )
            .and_then(|_| {
                c.query_row(
                    "SELECT id FROM cursors WHERE source_id = ?1 AND key = ?2",
                    params![source.0, key],
                    |r| r.get(0),
                )
            })
            .map_err(|e| OutboxError::sqlite(p, e))
        })
    }

    /// Deletes cursors a source no longer needs (files gone for longer than records are kept).
    pub fn drop_cursors_blocking(&self, ids: Vec<i64>) -> Result<(), OutboxError> {
        self.call_blocking(move |c, p| {
            let mut stmt = c
                .prepare_cached("DELETE FROM cursors WHERE id = ?1")
                .map_err(|e| OutboxError::sqlite(p, e))?;
            for id in ids {
                stmt.execute([id]).map_err(|e| OutboxError::sqlite(p, e))?;
            }
            Ok(())
        })
    }

    /// Commits records, parked input and cursor moves of one source atomically.
    pub fn commit_blocking(
        &self,
        source: SourceId,
        lane: LaneId,
        commit: Commit,
    ) -> Result<Committed, OutboxError> {
        self.submit(source, lane, commit).wait_blocking()
    }

    /// Hands a commit to the writer and returns at once: the caller can prepare its next
    /// commit meanwhile, and must [`Submitted::wait_blocking`] for this one's outcome before it
    /// builds on it.
    pub fn submit(&self, source: SourceId, lane: LaneId, commit: Commit) -> Submitted {
        Submitted(self.commit_job(source, lane, commit))
    }

    /// [`Outbox::commit_blocking`] for async callers: it returns once the transaction is
    /// durable, so a push acknowledged after it is a push kept.
    pub async fn commit(
        &self,
        source: SourceId,
        lane: LaneId,
        commit: Commit,
    ) -> Result<Committed, OutboxError> {
        self.commit_job(source, lane, commit)
            .await
            .unwrap_or(Err(OutboxError::Closed))
    }

    fn commit_job(
        &self,
        source: SourceId,
        lane: LaneId,
        commit: Commit,
    ) -> oneshot::Receiver<Result<Committed, OutboxError>> {
        let wake = self.wakers.get(lane.0);
        let space = self.space.clone();
        // Compressed here, on the caller's thread, not the writer's. A push's texts stay for
        // the writer to compare with what a key already names.
        let mut commit = commit;
        let strip = !commit.groups.iter().any(|g| g.same_payload);
        let packed = self.codecs.pack(lane.0, &mut commit.records, strip);
        self.job(
            move |c, p| {
                space.refuses(c, commit.records.len(), p)?;
                write_commit(c, source, lane, commit, packed).map_err(|e| OutboxError::sqlite(p, e))
            },
            move |done: &Committed| {
                if done.inserted > 0 {
                    wake.notify_one();
                }
            },
        )
    }
}

fn set_problems(
    c: &Connection,
    source: SourceId,
    problems: &[(String, String)],
) -> rusqlite::Result<()> {
    let now = now_ms();
    let known: Vec<String> = c
        .prepare_cached("SELECT subject FROM problems WHERE source_id = ?1")?
        .query_map([source.0], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for gone in known
        .iter()
        .filter(|k| !problems.iter().any(|(s, _)| s == *k))
    {
        c.prepare_cached("DELETE FROM problems WHERE source_id = ?1 AND subject = ?2")?
            .execute(params![source.0, gone])?;
    }
    for (subject, message) in problems {
        c.prepare_cached(
            "INSERT INTO problems (source_id, subject, message, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (source_id, subject) DO UPDATE SET message = excluded.message",
        )?
        .execute(params![
            source.0,
            subject,
            crate::redact::scrub(message),
            now
        ])?;
    }
    Ok(())
}

fn read_cursors(c: &Connection, source: SourceId) -> rusqlite::Result<Vec<(i64, String, String)>> {
    c.prepare_cached("SELECT id, key, value FROM cursors WHERE source_id = ?1 ORDER BY id")?
        .query_map([source.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

fn write_commit(
    c: &Connection,
    source: SourceId,
    lane: LaneId,
    commit: Commit,
    packed: Option<Packed>,
) -> rusqlite::Result<Committed> {
    let now = now_ms();
    let mut done = Committed::default();
    let dict = match &packed {
        Some(p) => Some(p.dict.store(c, now)?),
        None => None,
    };
    let mut packed = packed;
    let mut frames = packed.as_mut().map(|p| p.frames.iter_mut());
    let mut insert = c.prepare_cached(
        "INSERT INTO records (lane_id, source_id, dkey, payload, origin, created, row_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (source_id, dkey) DO NOTHING",
    )?;
    let groups = if commit.groups.is_empty() {
        vec![Group {
            records: commit.records.len(),
            parked: commit.parked.len(),
            same_payload: false,
        }]
    } else {
        commit.groups.clone()
    };
    let (mut records, mut parked) = (commit.records.iter(), commit.parked.iter());
    let mut parked_total = 0;
    for group in &groups {
        let mut g = GroupDone::default();
        // Counted once the group is kept: a group left out whole merged nothing.
        let mut g_merged = 0;
        if group.same_payload {
            c.execute_batch("SAVEPOINT push_group")?;
        }
        for r in records.by_ref().take(group.records) {
            let frame = frames
                .as_mut()
                .and_then(|f| f.next())
                .and_then(Option::as_mut);
            let blob;
            let (payload, origin): (&dyn rusqlite::ToSql, &str) = match (dict, frame) {
                (Some(dict), Some(frame)) => {
                    blob = codec::stored(dict, frame);
                    (&blob, "")
                }
                _ => (&r.payload, &r.origin),
            };
            let n = insert.execute(params![
                lane.0,
                source.0,
                &r.dkey[..],
                payload,
                origin,
                now,
                r.row_hash
            ])?;
            if n == 1 {
                g.inserted += 1;
                continue;
            }
            g.duplicates += 1;
            // A row with the key of a record kept but from another input row is merged: it is
            // dropped in favour of that record, which a key too narrow for the data does to
            // distinct calls. The same row read again (an export that overlaps the last, a
            // poll's look-back) is only a repeat.
            if let Some(hash) = r.row_hash {
                let kept: Option<i64> = c
                    .prepare_cached(
                        "SELECT row_hash FROM records WHERE source_id = ?1 AND dkey = ?2",
                    )?
                    .query_row(params![source.0, &r.dkey[..]], |row| row.get(0))?;
                let differs = match kept {
                    Some(kept) => kept != hash,
                    // Kept before rows were hashed: told by the record itself.
                    None => kept_differs(c, source, r)?,
                };
                if differs {
                    g_merged += 1;
                }
            }
            if group.same_payload && !g.conflict {
                g.conflict = kept_differs(c, source, r)?;
            }
        }
        let group_parked: Vec<&Parked> = parked.by_ref().take(group.parked).collect();
        if g.conflict {
            c.execute_batch("ROLLBACK TO push_group; RELEASE push_group")?;
            done.groups.push(GroupDone {
                conflict: true,
                ..GroupDone::default()
            });
            continue;
        }
        for p in group_parked {
            if commit.park_once
                && c.prepare_cached("SELECT 1 FROM parked WHERE source_id = ?1 AND raw = ?2")?
                    .exists(params![source.0, p.raw])?
            {
                continue;
            }
            parked::park(c, source.0, p, now)?;
            parked_total += 1;
        }
        if group.same_payload {
            c.execute_batch("RELEASE push_group")?;
        }
        done.inserted += g.inserted;
        done.duplicates += g.duplicates;
        done.merged += g_merged;
        done.groups.push(g);
    }
    if commit.groups.is_empty() {
        done.groups.clear();
    }
    done.parked = parked_total as usize;
    let mut cursor =
        c.prepare_cached("UPDATE cursors SET value = ?1, updated = ?2 WHERE id = ?3")?;
    for (id, value) in &commit.cursors {
        cursor.execute(params![value, now, id])?;
    }
    c.prepare_cached(
        "UPDATE sources SET last_activity = ?1, records_total = records_total + ?2,
         parked_total = parked_total + ?3, skipped_total = skipped_total + ?4,
         merged_total = merged_total + ?5 WHERE id = ?6",
    )?
    .execute(params![
        now,
        done.inserted as i64,
        parked_total,
        commit.skipped as i64,
        done.merged as i64,
        source.0
    ])?;
    Ok(done)
}

/// Whether the record kept under `r`'s key is another record than `r`. A kept record that
/// cannot be decoded counts as another: it must not stop the source's commits.
fn kept_differs(c: &Connection, source: SourceId, r: &NewRecord) -> rusqlite::Result<bool> {
    let kept = c
        .prepare_cached(
            "SELECT payload(payload), origin(payload, origin) FROM records
             WHERE source_id = ?1 AND dkey = ?2",
        )?
        .query_row(params![source.0, &r.dkey[..]], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        });
    let (kept, origin) = match kept {
        Err(e) if codec::damage(&e).is_some() => return Ok(true),
        other => other?,
    };
    // A compacted record's payload is gone; its origin keeps the payload's hash.
    Ok(if kept == COMPACTED {
        origin != compacted_origin(&r.payload)
    } else {
        kept != r.payload
    })
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A commit the writer has been given; see [`Outbox::submit`].
#[must_use = "a submitted commit's outcome must be waited for"]
pub struct Submitted(oneshot::Receiver<Result<Committed, OutboxError>>);

impl Submitted {
    /// Waits for the transaction: `Ok` once it is durable.
    pub fn wait_blocking(self) -> Result<Committed, OutboxError> {
        self.0.blocking_recv().unwrap_or(Err(OutboxError::Closed))
    }
}
