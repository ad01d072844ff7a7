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

mod dead;
mod guard;
mod lock;
mod report;
mod resend;
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};

pub use dead::{Changed, Selection, dead_letters, drop_dead, retry_dead};
pub use guard::{HeldQueue, KnownQueue, confirm_queue, queues};
pub use lock::{Holder, LockError, StateLock, holder as lock_holder, lock_path};
pub use report::{
    CursorReport, DeadLetter, LaneReport, ParkedReport, ProblemReport, Report, SourceReport,
    inspect, lane_depths, verify,
};
pub use resend::{AgentSent, Resend, agents_sent, resend};
pub use schema::{SCHEMA_VERSION, writable};

use crate::types::{LaneKey, SourceName};

/// Why the outbox could not do something. Messages name the state file and the next step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    #[error("state file {path}: {message}", path = path.display())]
    Sqlite {
        path: PathBuf,
        message: String,
        disk_full: bool,
    },
    #[error("state file {path}: {message}", path = path.display())]
    Io { path: PathBuf, message: String },
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
        "state file {path} is in use by {holder}: one daemon per state file. Stop that \
         process first (`systemctl stop injixo-sync`), or point [state] path at another file",
        path = path.display()
    )]
    Busy { path: PathBuf, holder: String },
    #[error("state file {} does not exist yet; `run` creates it", .0.display())]
    Missing(PathBuf),
    #[error("the outbox writer has stopped")]
    Closed,
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
        let disk_full = matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull));
        let message = if disk_full {
            format!("the disk is full ({e}); reading is paused until space is freed")
        } else {
            e.to_string()
        };
        OutboxError::Sqlite {
            path: path.to_owned(),
            message,
            disk_full,
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            OutboxError::Sqlite {
                disk_full: true,
                ..
            }
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
    pub dkey: [u8; 16],
    /// The record as compact JSON in the API's shape.
    pub payload: String,
    /// Where it came from, such as `calls-2024-05-01.csv:17`.
    pub origin: String,
}

/// Input that could not become a record: kept with its place and reason, never dropped.
#[derive(Clone, Debug)]
pub struct Parked {
    pub origin: String,
    pub reason: String,
    pub raw: String,
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
    /// Per group of [`Commit::groups`].
    pub groups: Vec<GroupDone>,
}

/// A dedupe key built from a cursor id and a position inside it (a byte offset, a row number).
/// Keys of one file grow with the offset, so the unique index is written in order: the insert
/// rate stays near SQLite's sequential ceiling instead of the random-key one.
pub fn dedupe_key(cursor: i64, position: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&cursor.to_be_bytes());
    k[8..].copy_from_slice(&position.to_be_bytes());
    k
}

/// The dedupe key of a record named by its content (`key = "{call_id}"`): a hash of the
/// natural key and the record's number among those the row gave. The top bit is set, so it
/// never equals a [`dedupe_key`] (cursor ids are positive).
pub fn natural_key(key: &str, piece: u32) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(piece.to_be_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finalize()[..16]);
    k[0] |= 0x80;
    k
}

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

type Finish = Box<dyn FnOnce(Option<&OutboxError>) + Send>;
/// A unit of work for the writer. It receives the connection, or the error that kept the
/// writer from opening a transaction (then it only answers its caller).
type Job = Box<dyn FnOnce(Result<(&Connection, &Path), &OutboxError>) -> (bool, Finish) + Send>;

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
        let (tx, rx) = mpsc::unbounded_channel();
        let owned = path.to_owned();
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer(conn, owned, rx))
            .map_err(|e| OutboxError::Io {
                path: path.to_owned(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((
            Outbox {
                tx,
                wakers: Arc::default(),
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

    fn job<R: Send + 'static>(
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

    async fn call<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Path) -> Result<R, OutboxError> + Send + 'static,
    ) -> Result<R, OutboxError> {
        self.job(work, |_| {})
            .await
            .unwrap_or(Err(OutboxError::Closed))
    }

    fn call_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Path) -> Result<R, OutboxError> + Send + 'static,
    ) -> Result<R, OutboxError> {
        self.job(work, |_| {})
            .blocking_recv()
            .unwrap_or(Err(OutboxError::Closed))
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
        self.job(
            move |c, p| {
                write_commit(c, source, lane, commit).map_err(|e| OutboxError::sqlite(p, e))
            },
            move |done: &Committed| {
                if done.inserted > 0 {
                    wake.notify_one();
                }
            },
        )
    }

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
                    params![name, e, now_ms(), lane.0],
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

    /// Deletes parked input older than `keep`, oldest first, at most 5,000 rows per
    /// transaction (so writers take turns); returns how many.
    pub async fn prune_parked(&self, keep: Duration) -> Result<usize, OutboxError> {
        let cutoff = now_ms() - keep.as_millis() as i64;
        let mut total = 0;
        loop {
            let (n, more) = self
                .call(move |c, p| {
                    prune_parked_step(c, cutoff).map_err(|e| OutboxError::sqlite(p, e))
                })
                .await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Deletes delivered records older than `keep`; returns how many.
    pub async fn prune_sent(&self, keep: Duration) -> Result<usize, OutboxError> {
        let cutoff = now_ms() - keep.as_millis() as i64;
        let mut total = 0;
        // Each lane up to where its mark was before the cutoff, in rowid order from where the
        // last prune stopped; a step deletes at most 5,000, so writers take turns.
        let lanes: Vec<(i64, i64, i64)> = self
            .call(move |c, p| {
                c.prepare_cached(
                    "SELECT l.id, l.pruned_to, d.upto FROM lanes l JOIN
                       (SELECT lane_id, max(sent_to) AS upto FROM deliveries WHERE at < ?1
                        GROUP BY lane_id) d ON d.lane_id = l.id
                     WHERE d.upto > l.pruned_to",
                )
                .and_then(|mut s| {
                    s.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| OutboxError::sqlite(p, e))
            })
            .await?;
        for (lane, mut from, upto) in lanes {
            while from < upto {
                let (n, reached) = self
                    .call(move |c, p| {
                        prune_step(c, lane, from, upto).map_err(|e| OutboxError::sqlite(p, e))
                    })
                    .await?;
                total += n;
                from = reached;
            }
        }
        // One state at a time, each through its partial index on `sent_at` (an `IN (1, 3)`
        // would read the whole table); a step deletes at most 5,000, so writers take turns.
        for state in [1, 3] {
            loop {
                let n = self
                    .call(move |c, p| {
                        // The state is written into the statement: a partial index is
                        // chosen when the statement is prepared.
                        c.prepare_cached(&format!(
                            "DELETE FROM records WHERE id IN (SELECT id FROM records
                             WHERE state = {state} AND sent_at < ?1 LIMIT 5000)"
                        ))
                        .and_then(|mut s| s.execute([cutoff]))
                        .map_err(|e| OutboxError::sqlite(p, e))
                    })
                    .await?;
                total += n;
                if n < 5000 {
                    break;
                }
            }
        }
        Ok(total)
    }
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

fn writer(conn: Connection, path: PathBuf, mut rx: mpsc::UnboundedReceiver<Job>) {
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
        }
        for finish in finishes {
            finish(commit.as_ref().err());
        }
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
        .execute(params![source.0, subject, message, now])?;
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
) -> rusqlite::Result<Committed> {
    let now = now_ms();
    let mut done = Committed::default();
    let mut insert = c.prepare_cached(
        "INSERT INTO records (lane_id, source_id, dkey, payload, origin, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (source_id, dkey) DO NOTHING",
    )?;
    let mut park = c.prepare_cached(
        "INSERT INTO parked (source_id, origin, reason, raw, at) VALUES (?1, ?2, ?3, ?4, ?5)",
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
        if group.same_payload {
            c.execute_batch("SAVEPOINT push_group")?;
        }
        for r in records.by_ref().take(group.records) {
            let n = insert.execute(params![
                lane.0,
                source.0,
                &r.dkey[..],
                r.payload,
                r.origin,
                now
            ])?;
            if n == 1 {
                g.inserted += 1;
                continue;
            }
            g.duplicates += 1;
            if group.same_payload && !g.conflict {
                let kept: String = c
                    .prepare_cached(
                        "SELECT payload FROM records WHERE source_id = ?1 AND dkey = ?2",
                    )?
                    .query_row(params![source.0, &r.dkey[..]], |row| row.get(0))?;
                g.conflict = kept != r.payload;
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
            park.execute(params![source.0, p.origin, p.reason, p.raw, now])?;
            parked_total += 1;
        }
        if group.same_payload {
            c.execute_batch("RELEASE push_group")?;
        }
        done.inserted += g.inserted;
        done.duplicates += g.duplicates;
        done.groups.push(g);
    }
    if commit.groups.is_empty() {
        done.groups.clear();
    }
    let mut cursor =
        c.prepare_cached("UPDATE cursors SET value = ?1, updated = ?2 WHERE id = ?3")?;
    for (id, value) in &commit.cursors {
        cursor.execute(params![value, now, id])?;
    }
    c.prepare_cached(
        "UPDATE sources SET last_activity = ?1, records_total = records_total + ?2,
         parked_total = parked_total + ?3 WHERE id = ?4",
    )?
    .execute(params![now, done.inserted as i64, parked_total, source.0])?;
    Ok(done)
}

/// A batch row: its key, its range of record ids, the part in flight.
struct OpenBatch {
    id: i64,
    key: String,
    first: i64,
    last: i64,
    part: Option<(i64, i64)>,
}

/// The lane's oldest open batch with an id above `open_after` (0: any), else a new batch of
/// pending records above the lane's `scanned_to`.
fn next_batch(
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
        let records: Vec<(i64, String)> = c
            .prepare_cached(
                "SELECT id, payload FROM records WHERE id > ?1 AND id BETWEEN ?2 AND ?3
                 AND lane_id = ?4 AND state = 0 ORDER BY id",
            )?
            .query_map(params![sent, first, last, lane.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
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
        let mut bytes = 64;
        oldest = None;
        full = false;
        while let Some(row) = rows.next()? {
            let payload: String = row.get(1)?;
            if !records.is_empty() && bytes + payload.len() + 1 > max_bytes {
                full = true;
                break;
            }
            bytes += payload.len() + 1;
            oldest.get_or_insert(row.get::<_, i64>(2)?);
            records.push((row.get::<_, i64>(0)?, payload));
        }
        drop(rows);
        // Held records leave the batch; if that empties it, look again past them.
        if guard::hold_renamed_queues(c, lane, &mut records)? == 0 || !records.is_empty() {
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
fn write_sent(c: &Connection, lane: LaneId, done: Delivered) -> rusqlite::Result<usize> {
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
             SELECT ?1, json_extract(payload, '$.agentIdentifier'), ?2, ?2
             FROM records WHERE id > ?3 AND id <= ?4 AND lane_id = ?1 AND state = 0
               AND json_extract(payload, '$.agentIdentifier') IS NOT NULL
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
fn close_batch_if_done(c: &Connection, batch: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "DELETE FROM batches WHERE id = ?1 AND NOT EXISTS (
           SELECT 1 FROM records r, lanes l WHERE l.id = batches.lane_id
             AND r.id > l.sent_to AND r.id BETWEEN batches.first_id AND batches.last_id
             AND r.lane_id = l.id AND r.state = 0)",
    )?
    .execute([batch])?;
    Ok(())
}

/// Deletes the oldest parked rows, up to 5,000, that were parked before `cutoff`; returns how
/// many, and whether there may be more. Rows are parked in id order, so the oldest come
/// first and no index on the time is needed.
fn prune_parked_step(c: &Connection, cutoff: i64) -> rusqlite::Result<(usize, bool)> {
    const STEP: usize = 5000;
    let oldest: Vec<(i64, i64)> = c
        .prepare_cached("SELECT id, at FROM parked ORDER BY id LIMIT ?1")?
        .query_map([STEP as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let old: Vec<i64> = oldest
        .iter()
        .take_while(|(_, at)| *at < cutoff)
        .map(|(id, _)| *id)
        .collect();
    let mut delete = c.prepare_cached("DELETE FROM parked WHERE id = ?1")?;
    for id in &old {
        delete.execute([id])?;
    }
    Ok((old.len(), old.len() == STEP))
}

/// Deletes up to 5,000 of a lane's delivered records above `from` and up to `upto`; returns
/// how many, and how far the lane is now pruned.
fn prune_step(c: &Connection, lane: i64, from: i64, upto: i64) -> rusqlite::Result<(usize, i64)> {
    const STEP: usize = 5000;
    let ids: Vec<i64> = c
        .prepare_cached(
            "SELECT id FROM records WHERE id > ?1 AND id <= ?2 AND lane_id = ?3 AND state = 0
             ORDER BY id LIMIT ?4",
        )?
        .query_map(params![from, upto, lane, STEP as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delete = c.prepare_cached("DELETE FROM records WHERE id = ?1")?;
    for id in &ids {
        delete.execute([id])?;
    }
    let reached = match ids.last() {
        Some(&last) if ids.len() == STEP => last,
        _ => upto,
    };
    c.prepare_cached("UPDATE lanes SET pruned_to = ?1 WHERE id = ?2")?
        .execute([reached, lane])?;
    c.prepare_cached("DELETE FROM deliveries WHERE lane_id = ?1 AND sent_to <= ?2")?
        .execute([lane, reached])?;
    Ok((ids.len(), reached))
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
) -> rusqlite::Result<Option<Moved>> {
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS moving (old INTEGER PRIMARY KEY, lane_id INTEGER,
           source_id INTEGER, dkey BLOB, payload TEXT, origin TEXT, created INTEGER);
         DELETE FROM temp.moving;",
    )?;
    let n = c.execute(
        &format!(
            "INSERT INTO temp.moving SELECT id, lane_id, source_id, dkey, payload, origin, created
             FROM records WHERE id IN ({chosen})"
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
    c.execute_batch(
        "DELETE FROM records WHERE id IN (SELECT old FROM temp.moving);
         DELETE FROM dead WHERE record_id IN (SELECT old FROM temp.moving);
         INSERT INTO records (lane_id, source_id, dkey, payload, origin, created)
           SELECT lane_id, source_id, dkey, payload, origin, created FROM temp.moving
           ORDER BY old;
         DELETE FROM temp.moving;",
    )?;
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
            move || schema::open_ro(&path).ok()
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

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
