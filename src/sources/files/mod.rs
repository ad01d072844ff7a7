//! The `files` source: export directories that ACDs drop files into (`mode = "drop"`) or append
//! to (`mode = "tail"`).
//!
//! Every file gets a cursor row in the outbox: its identity, the byte offset up to which it is
//! committed, the line number there, and (for CSV) its header. Records are keyed by
//! `(cursor id, byte offset)`, so re-reading any part of a file is a no-op in the outbox.
//!
//! * **drop**: a file is taken once its size and mtime have not changed for `settle`. Its
//!   identity is a SHA-256 of its content, so a file that reappears with the same content is
//!   not read again. After the last record is committed the file is kept, deleted or moved
//!   (`after`).
//! * **tail**: a file's identity is its device and inode *plus* a fingerprint of its first
//!   bytes (up to 1 KiB, growing with the file), so an inode reused by a new file, or files that
//!   share a CSV header, are never mistaken for each other. The file stays open while tailed;
//!   when its path is renamed away or deleted the rest is read through the open handle and the
//!   handle is closed once the file has been quiet for `settle`. A file shorter than its
//!   committed offset was truncated (copy-and-truncate rotation) and is read again from 0 as a
//!   new file. A partial last line waits for its newline until the file is rotated away.
//!
//! The directory is watched with file-system events where they work and scanned every
//! `poll_interval` regardless, so a missed event delays a file but never loses it.
//!
//! Where things are: this file has the source's state, its loop and its cursors; `scan` finds
//! the files, `drop` and `tail` are the two modes, `read` reads a file from its cursor and
//! commits, `identity` says what a file is (platform code included).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

mod drop;
mod identity;
mod read;
mod scan;
mod tail;

pub(crate) use read::{csv_row, json_row};
pub(crate) use scan::{StateFiles, matching_files};

use super::rows::{self, STATES_CURSOR, States, commit_blocking, json_cursor};
use super::{Source, SourceContext};
use crate::config::{FileMode, FilesConfig, Watch};
use crate::normalize::queue_log;
use crate::outbox::OutboxError;

/// A file's committed position, stored as the cursor's JSON value.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct FileCursor {
    path: String,
    #[serde(default)]
    dev: u64,
    #[serde(default)]
    ino: u64,
    /// How many leading bytes `fp` covers.
    #[serde(default)]
    fp_len: u64,
    #[serde(default)]
    fp: String,
    offset: u64,
    /// Newlines before `offset`: the line number of the next record is `line + 1`.
    line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<Vec<String>>,
    #[serde(default)]
    done: bool,
    /// A fingerprint of the (up to 1 KiB) bytes just before `offset`: a finished file that
    /// comes back longer (a share that was away) is recognised by it, and so is a copy of
    /// this file (copy-and-truncate rotation).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    end_fp: String,
    /// This file is a copy of the file with this cursor id (copy-and-truncate rotation, the
    /// copy inside `include`): its records are keyed under that id, by the same positions, so
    /// what both hold is one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys_of: Option<i64>,
    /// When the file was found truncated (Unix ms): for a while, a new file that begins with
    /// its bytes is its copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    truncated_ms: Option<i64>,
}

impl FileCursor {
    /// The cursor id its records are keyed under.
    fn key_space(&self, id: i64) -> i64 {
        self.keys_of.unwrap_or(id)
    }
}

struct Known {
    id: i64,
    cur: FileCursor,
    /// The (up to [`FINGERPRINT_MAX`]) bytes just before `cur.offset`, once read; their
    /// fingerprint is `cur.end_fp`.
    tail: Vec<u8>,
    /// A line longer than `max_line` at the cursor whose end is not written yet.
    long_line: Option<LongLine>,
}

/// How far a line longer than `max_line` has been looked through for its end.
struct LongLine {
    /// Where it begins (the cursor, when it was found).
    start: u64,
    /// Looked through up to here: no newline before.
    scanned: u64,
    /// Its first bytes, kept with the parked line.
    head: Vec<u8>,
}

/// A tailed file held open.
struct Tailed {
    known: usize,
    file: File,
    path: PathBuf,
    /// Since when the path no longer leads to this file, and the size then.
    gone_since: Option<(Instant, u64)>,
}

/// A chunk's commit in the writer's hands, and what to put back if it fails.
struct InFlight {
    commit: rows::Submitted,
    /// The file's position before the chunk, and the bytes before it.
    before: FileCursor,
    tail_before: Vec<u8>,
    /// The queue_log tracker before the chunk, if the chunk moved it.
    tracker_before: Option<queue_log::Tracker>,
    bytes: u64,
    skipped: u64,
}

/// A dropped file waiting to settle.
struct Settling {
    len: u64,
    mtime: Option<SystemTime>,
    since: Instant,
}

/// What must be unchanged for a dropped file's hash to be taken again unread.
type DigestStamp = ((u64, u64), u64, Option<SystemTime>);

pub struct FilesSource {
    cfg: FilesConfig,
    known: Vec<Known>,
    /// `known` by cursor key (drop mode looks files up by content hash).
    by_key: HashMap<String, usize>,
    tailed: Vec<Tailed>,
    settling: HashMap<PathBuf, Settling>,
    /// New tailed files that look like copies still being written: (length, since when).
    copying: HashMap<PathBuf, (u64, Instant)>,
    /// Dropped files already read and kept in place: (len, mtime) when read.
    finished: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    /// Content hashes of dropped files being read, by file identity, length and mtime: a pass
    /// that ends early (the outbox full) and comes back does not hash a large file again.
    digests: HashMap<PathBuf, (DigestStamp, String)>,
    /// Dropped files read whose `after` (delete, move) failed, with why: a problem while
    /// they are there.
    after_failed: HashMap<PathBuf, String>,
    /// What the source cannot do right now, reported anew every pass.
    problems: super::Problems,
    buf: Vec<u8>,
    first_pass: bool,
    /// `emits = "agent_states"`: the open states and the cursor row that stores them.
    states: Option<States>,
    /// `asterisk_queue_log`: calls waiting and agents' memberships, and their cursor row.
    tracker: Option<(i64, queue_log::Tracker)>,
    /// What became of the rows of the file being read, said when it is finished.
    tally: super::rows::Tally,
}

impl FilesSource {
    pub fn new(cfg: FilesConfig) -> Self {
        Self {
            cfg,
            known: Vec::new(),
            by_key: HashMap::new(),
            tailed: Vec::new(),
            settling: HashMap::new(),
            copying: HashMap::new(),
            finished: HashMap::new(),
            digests: HashMap::new(),
            after_failed: HashMap::new(),
            problems: super::Problems::default(),
            buf: Vec::new(),
            first_pass: true,
            states: None,
            tracker: None,
            tally: super::rows::Tally::default(),
        }
    }
}

impl Source for FilesSource {
    fn run(mut self: Box<Self>, ctx: SourceContext) {
        match self.load_cursors(&ctx) {
            Ok(fresh) => self.first_pass = fresh,
            Err(e) => {
                error!(source = %ctx.name, "cannot load cursors: {e}");
                return;
            }
        }
        let mut watcher = None;
        info!(source = %ctx.name, path = %self.cfg.path.display(), "watching for files");
        let mut failures = 0u32;
        while !ctx.shutdown.is_cancelled() {
            // A folder removed takes its watch with it: watch it anew once it is back.
            if !self.cfg.path.is_dir() {
                watcher = None;
            }
            if watcher.is_none() {
                watcher = self.watch(&ctx);
            }
            let wait = match self
                .pass(&ctx)
                .and_then(|w| self.flush_states(&ctx).map(|f| w.min(f)))
            {
                Ok(wait) => {
                    failures = 0;
                    wait
                }
                Err(e) => {
                    failures += 1;
                    ctx.metrics.waited_for_room(&e);
                    // At the budget the daemon says so itself (`status`, /readyz, the log).
                    if e.is_at_budget() {
                        debug!(source = %ctx.name, "reading waits for room in the outbox: {e}");
                    } else if failures == 1 || e.is_disk_full() {
                        error!(source = %ctx.name, "cannot commit what was read, reading is paused and will resume: {e}");
                    }
                    Duration::from_secs(1 << failures.min(3))
                }
            };
            self.problems.publish_blocking(&ctx);
            self.first_pass = false;
            ctx.metrics.scanned();
            match ctx.wake.recv_timeout(wait) {
                Ok(()) => {
                    // Events come in bursts: one pass serves them all.
                    while ctx.wake.try_recv().is_ok() {}
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        debug!(source = %ctx.name, "stopped");
    }
}

impl FilesSource {
    /// Reads every matching file once, completely, and returns (for `import`). Files already
    /// read are skipped by their cursors, so an interrupted import continues where it stopped.
    pub fn run_once(mut self, ctx: &SourceContext) -> Result<(), OutboxError> {
        self.load_cursors(ctx)?;
        self.first_pass = false;
        let mut waited = false;
        loop {
            match self.pass(ctx) {
                // The outbox is at its budget (the running daemon frees space as it delivers),
                // or the daemon's writer held the file longer than the busy timeout.
                Err(e)
                    if (e.is_out_of_space() || matches!(e, OutboxError::Locked { .. }))
                        && !ctx.shutdown.is_cancelled() =>
                {
                    // Only a running daemon delivers and makes room.
                    if e.is_out_of_space()
                        && crate::outbox::lock_holder(ctx.outbox.path()).is_none()
                    {
                        warn!(source = %ctx.name, "{e}; no daemon runs on this state file to deliver and make room: start the service and run the same import again (it goes on where it stopped), or raise max_outbox_size");
                        return Err(e);
                    }
                    if !waited {
                        warn!(source = %ctx.name, "{e}; the import waits and goes on by itself");
                        waited = true;
                    }
                    match ctx.wake.recv_timeout(Duration::from_secs(2)) {
                        Err(RecvTimeoutError::Disconnected) => return Err(e),
                        _ => continue,
                    }
                }
                result => return result.map(|_| ()),
            }
        }
    }

    /// Loads the source's cursors; `true` when it has none yet (a first start).
    fn load_cursors(&mut self, ctx: &SourceContext) -> Result<bool, OutboxError> {
        let rows = ctx.outbox.cursors_blocking(ctx.id)?;
        let fresh = rows.is_empty();
        if let Some(cfg) = &self.cfg.rows.states {
            self.states = Some(States::load(cfg.clone(), ctx, &rows)?);
        }
        if self.cfg.queue_log.is_some() {
            self.tracker = Some(json_cursor(ctx, &rows, super::queue_log::TRACKER_CURSOR)?);
        }
        for (id, key, value) in rows {
            if key == STATES_CURSOR || key == super::queue_log::TRACKER_CURSOR {
                continue;
            }
            match serde_json::from_str(&value) {
                Ok(cur) => {
                    self.register(id, key, cur);
                }
                Err(e) => warn!(source = %ctx.name, "ignoring unreadable cursor {key}: {e}"),
            }
        }
        Ok(fresh)
    }

    fn watch(&mut self, ctx: &SourceContext) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        if self.cfg.watch == Watch::Poll {
            return None;
        }
        if !self.cfg.path.is_dir() {
            // `scan` says so.
            return None;
        }
        if self.cfg.watch == Watch::Auto
            && let Some(fs) = super::fsinfo::network_fs(&self.cfg.path)
        {
            info!(
                source = %ctx.name,
                "{} is on a network file system ({fs}), where changes made by other machines \
                 raise no events: scanning every {} instead (set watch = \"events\" to use \
                 events anyway)",
                self.cfg.path.display(),
                humantime::format_duration(self.cfg.poll_interval)
            );
            self.cfg.watch = Watch::Poll;
            return None;
        }
        let waker = ctx.waker.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Access events (our own listing and reading) must not wake us, or the source
            // would spin on its own activity.
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = waker.send(());
            }
        })
        .map_err(|e| warn!(source = %ctx.name, "file events unavailable, polling only: {e}"))
        .ok()?;
        let mode = if self.cfg.recursive {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        match watcher.watch(&self.cfg.path, mode) {
            Ok(()) => Some(watcher),
            Err(e) => {
                warn!(source = %ctx.name, "file events unavailable, polling only: {e}");
                None
            }
        }
    }

    /// One pass over the directory; returns how long to sleep before the next.
    fn pass(&mut self, ctx: &SourceContext) -> Result<Duration, OutboxError> {
        let files = self.scan(ctx);
        match self.cfg.mode {
            FileMode::Drop => self.pass_drop(ctx, files),
            FileMode::Tail => self.pass_tail(ctx, files),
        }
    }

    /// Emits and caps open agent states as time passes; returns how long until that is due
    /// again.
    fn flush_states(&mut self, ctx: &SourceContext) -> Result<Duration, OutboxError> {
        let idle = self.cfg.poll_interval;
        let Some(states) = self.states.as_mut() else {
            return Ok(idle);
        };
        let (commit, wait) = states.flush(&ctx.name, idle);
        if let Some(c) = commit {
            let done = commit_blocking(ctx, c);
            states.settle(done.is_ok());
            done?;
        }
        Ok(wait)
    }

    /// A file this pass could not read: a problem until it can be.
    fn cannot_read(&mut self, path: &Path, e: &std::io::Error) {
        let advice = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (grant the service user read access)"
        } else {
            ""
        };
        self.problems.report(
            path.display().to_string(),
            format!("cannot read {}: {e}{advice}", path.display()),
        );
    }
}

enum TakeError {
    Outbox(OutboxError),
    Io(std::io::Error),
}

impl From<OutboxError> for TakeError {
    fn from(e: OutboxError) -> Self {
        TakeError::Outbox(e)
    }
}

impl From<std::io::Error> for TakeError {
    fn from(e: std::io::Error) -> Self {
        TakeError::Io(e)
    }
}

fn to_json(cur: &FileCursor) -> String {
    serde_json::to_string(cur).expect("cursor serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_json_round_trips() {
        let cur = FileCursor {
            path: "/x/a.csv".into(),
            dev: 1,
            ino: 2,
            fp_len: 3,
            fp: "ab".into(),
            offset: 10,
            line: 1,
            header: Some(vec!["a".into()]),
            done: false,
            end_fp: "cd".into(),
            keys_of: Some(7),
            truncated_ms: Some(1_700_000_000_000),
        };
        let back: FileCursor = serde_json::from_str(&to_json(&cur)).unwrap();
        assert_eq!(back, cur);
    }

    /// Random interleavings of appends (some ending mid-line), rotations and restarts, with
    /// the source reading in between: every line arrives exactly once.
    mod interleavings {
        use super::*;
        use crate::config::{Config, SourceKind};
        use crate::outbox::{BatchLimits, NextBatch, Outbox};
        use proptest::prelude::*;
        use std::io::Write;

        #[derive(Clone, Debug)]
        enum Op {
            /// Lines, and whether the writer then stops in the middle of the next one.
            Append(u8, bool),
            /// A pass of the source.
            Read,
            /// logrotate `create`: rename to live.ndjson.N, new empty file.
            RotateRename,
            /// logrotate's numbered rotation: live.ndjson.2 -> .3, .1 -> .2, live -> .1, and a
            /// new empty file (every name stays inside `include`; none is deleted, since a
            /// file deleted before it was read is gone for any reader).
            RotateShift,
            /// logrotate `copytruncate` (copy to a name the source does not read).
            CopyTruncate,
            /// `copytruncate` with the copy inside `include`, and no read before it: the
            /// lines not read yet are in the copy only.
            CopyTruncateInside,
            /// The file is deleted and a new one created under its name.
            DeleteRecreate,
            /// The daemon stops and starts again.
            Restart,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1u8..30, any::<bool>()).prop_map(|(n, p)| Op::Append(n, p)),
                3 => Just(Op::Read),
                1 => Just(Op::RotateRename),
                1 => Just(Op::RotateShift),
                1 => Just(Op::CopyTruncate),
                1 => Just(Op::CopyTruncateInside),
                1 => Just(Op::DeleteRecreate),
                1 => Just(Op::Restart),
            ]
        }

        struct Writer {
            dir: std::path::PathBuf,
            next: u64,
            /// The rest of a line the writer is in the middle of.
            partial: Option<String>,
            rotations: u32,
        }

        impl Writer {
            fn live(&self) -> std::path::PathBuf {
                self.dir.join("live.ndjson")
            }

            fn append(&mut self, text: &str) {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.live())
                    .unwrap();
                f.write_all(text.as_bytes()).unwrap();
            }

            fn line(&mut self) -> String {
                let id = self.next;
                self.next += 1;
                format!(
                    "{{\"properties\":{{\"offered\":true,\"handled\":true,\"duration\":{id}}},\
                     \"queueName\":\"Q\",\"queueIdentifier\":\"q\",\
                     \"timestamp\":\"2024-05-01T08:00:00Z\",\"channel\":\"calls\"}}\n"
                )
            }

            /// Writers finish their line before a rotation.
            fn finish_line(&mut self) {
                if let Some(rest) = self.partial.take() {
                    self.append(&rest);
                }
            }
        }

        struct Harness {
            _rt: tokio::runtime::Runtime,
            outbox: Outbox,
            _writer: std::thread::JoinHandle<()>,
            ctx: SourceContext,
            cfg: FilesConfig,
            lane: crate::outbox::LaneId,
        }

        impl Harness {
            fn new(dir: &Path) -> Self {
                let exports = dir.join("exports");
                std::fs::create_dir_all(&exports).unwrap();
                let text = format!(
                    "[api]\ntoken = \"k\"\n[state]\npath = {:?}\n[[source]]\nname = \"live\"\n\
                     type = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\npath = {:?}\n\
                     include = [\"live.ndjson*\"]\nformat = \"ndjson\"\nmode = \"tail\"\n\
                     settle = \"0s\"\nwatch = \"poll\"\n",
                    dir.join("outbox.db").display().to_string(),
                    exports.display().to_string()
                );
                let config = Config::parse(&text, &dir.join("c.toml")).unwrap();
                let source = config.sources[0].clone();
                let SourceKind::Files(cfg) = source.kind.clone() else {
                    unreachable!("a files source")
                };
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (outbox, writer_thread) = Outbox::open(&config.state.path).unwrap();
                let ids = rt.block_on(async {
                    (
                        outbox.source_id(&source.name).await.unwrap(),
                        outbox.lane_id(&source.lane).await.unwrap(),
                    )
                });
                let ctx = SourceContext::new(
                    &source,
                    ids,
                    outbox.clone(),
                    tokio_util::sync::CancellationToken::new(),
                );
                Self {
                    _rt: rt,
                    outbox,
                    _writer: writer_thread,
                    ctx,
                    cfg,
                    lane: ids.1,
                }
            }

            fn start(&self) -> FilesSource {
                let mut source = FilesSource::new(self.cfg.clone());
                source.load_cursors(&self.ctx).unwrap();
                source.first_pass = false;
                source
            }

            /// Every committed record's id, in outbox order.
            fn delivered(&self) -> Vec<u64> {
                let mut ids = Vec::new();
                let limits = BatchLimits {
                    max_records: 100_000,
                    max_bytes: usize::MAX,
                    linger: Duration::ZERO,
                };
                if let NextBatch::Ready(batch) = self
                    ._rt
                    .block_on(self.outbox.next_batch(self.lane, None, limits))
                    .unwrap()
                {
                    for (_, payload) in batch.records {
                        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
                        ids.push(v["properties"]["duration"].as_u64().unwrap());
                    }
                }
                ids
            }
        }

        /// Runs `ops`; returns the ids delivered and how many lines were written.
        fn run(ops: Vec<Op>) -> (Vec<u64>, u64) {
            {
                let dir = tempfile::tempdir().unwrap();
                let h = Harness::new(dir.path());
                let mut w = Writer {
                    dir: dir.path().join("exports"),
                    next: 0,
                    partial: None,
                    rotations: 0,
                };
                let mut source = h.start();
                for op in ops {
                    match op {
                        Op::Append(n, stop_mid_line) => {
                            w.finish_line();
                            let mut text = String::new();
                            for _ in 0..n {
                                text += &w.line();
                            }
                            if stop_mid_line {
                                let line = w.line();
                                let cut = line.len() / 2;
                                text += &line[..cut];
                                w.partial = Some(line[cut..].to_owned());
                            }
                            w.append(&text);
                        }
                        Op::Read => {
                            source.pass(&h.ctx).unwrap();
                        }
                        Op::RotateRename => {
                            w.finish_line();
                            if w.live().exists() {
                                w.rotations += 1;
                                let to = w.dir.join(format!("live.ndjson.{}", w.rotations));
                                std::fs::rename(w.live(), to).unwrap();
                                std::fs::File::create(w.live()).unwrap();
                            }
                        }
                        Op::CopyTruncate => {
                            w.finish_line();
                            // Lines written after the source's last read and before the
                            // truncation exist only in the copy: logrotate's documented
                            // copytruncate window. The source reads right before it here.
                            source.pass(&h.ctx).unwrap();
                            if w.live().exists() {
                                w.rotations += 1;
                                std::fs::copy(
                                    w.live(),
                                    w.dir.join(format!("copy-{}.bak", w.rotations)),
                                )
                                .unwrap();
                                std::fs::OpenOptions::new()
                                    .write(true)
                                    .open(w.live())
                                    .unwrap()
                                    .set_len(0)
                                    .unwrap();
                            }
                        }
                        Op::RotateShift => {
                            w.finish_line();
                            if w.live().exists() {
                                let shifted = |n: u32| w.dir.join(format!("live.ndjson.s{n}"));
                                let top = (1..).find(|n| !shifted(*n).exists()).unwrap();
                                for n in (1..top).rev() {
                                    std::fs::rename(shifted(n), shifted(n + 1)).unwrap();
                                }
                                std::fs::rename(w.live(), shifted(1)).unwrap();
                                std::fs::File::create(w.live()).unwrap();
                            }
                        }
                        Op::CopyTruncateInside => {
                            w.finish_line();
                            if w.live().exists() {
                                w.rotations += 1;
                                let copy = w.dir.join(format!("live.ndjson.c{}", w.rotations));
                                std::fs::copy(w.live(), copy).unwrap();
                                std::fs::OpenOptions::new()
                                    .write(true)
                                    .open(w.live())
                                    .unwrap()
                                    .set_len(0)
                                    .unwrap();
                            }
                        }
                        Op::DeleteRecreate => {
                            w.finish_line();
                            // A file deleted before the source ever opened it is gone for
                            // anyone; here the source has it open.
                            source.pass(&h.ctx).unwrap();
                            if w.live().exists() {
                                std::fs::remove_file(w.live()).unwrap();
                                std::fs::File::create(w.live()).unwrap();
                            }
                        }
                        Op::Restart => {
                            drop(source);
                            source = h.start();
                        }
                    }
                }
                w.finish_line();
                for _ in 0..4 {
                    source.pass(&h.ctx).unwrap();
                }
                (h.delivered(), w.next)
            }
        }

        /// Found by the property below: a copy that gets the inode of a deleted file, whose
        /// cursor had read nothing yet, is still a copy.
        #[test]
        fn a_copy_on_a_reused_inode_is_still_a_copy() {
            use Op::*;
            let (got, written) = run(vec![
                Append(3, false),
                CopyTruncate,
                DeleteRecreate,
                Restart,
                Append(1, false),
                Read,
                CopyTruncateInside,
            ]);
            assert_eq!(got, (0..written).collect::<Vec<_>>());
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
            #[test]
            fn every_line_exactly_once(ops in proptest::collection::vec(op(), 1..40)) {
                let (got, written) = run(ops);
                let mut sorted = got.clone();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), got.len(), "a line arrived twice: {:?}", got);
                prop_assert_eq!(sorted, (0..written).collect::<Vec<_>>());
            }
        }
    }
}
