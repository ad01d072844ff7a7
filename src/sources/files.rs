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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

use super::parse::{self, Charset};
use super::rows::{
    self, ChangeRead, JsonRow, RowOut, RowOutcome, STATES_CURSOR, States, commit_blocking,
    json_cursor,
};
use super::{Source, SourceContext};
use crate::config::{After, FileFormat, FileMode, FilesConfig, StartAt, Watch};
use crate::normalize::map::Row;
use crate::normalize::queue_log;
use crate::normalize::schema;
use crate::outbox::{Commit, NewRecord, OutboxError, Parked, dedupe_key, natural_key};

/// How many leading bytes identify a tailed file.
const FINGERPRINT_MAX: usize = 1024;
/// The read buffer; a record longer than this grows it, up to `max_line`.
const CHUNK: usize = 1 << 20;

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

/// How much of a line too long to read is kept with it when it is parked.
const LONG_LINE_KEPT: usize = 4096;

/// Why a line longer than `max_line` was parked.
fn long_line_reason(length: u64, max_line: usize, kept: usize) -> String {
    format!(
        "the line is {} long, longer than max_line ({}); parked, its first {} kept",
        bytesize::ByteSize(length),
        bytesize::ByteSize(max_line as u64),
        bytesize::ByteSize(kept as u64)
    )
}

/// For how long a truncated file's copy is recognised as such.
const COPY_WINDOW_MS: i64 = 15 * 60 * 1000;

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
            after_failed: HashMap::new(),
            problems: super::Problems::default(),
            buf: Vec::new(),
            first_pass: true,
            states: None,
            tracker: None,
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
                    if failures == 1 || e.is_disk_full() {
                        error!(source = %ctx.name, "cannot commit what was read, reading is paused and will resume: {e}");
                    }
                    Duration::from_secs(1 << failures.min(3))
                }
            };
            self.problems.publish_blocking(&ctx);
            self.first_pass = false;
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
        self.pass(ctx).map(|_| ())
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
                    self.by_key.insert(key, self.known.len());
                    self.known.push(Known {
                        id,
                        cur,
                        tail: Vec::new(),
                        long_line: None,
                    });
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

    /// Matching files, oldest first (so a backlog is read in the order it was written).
    fn scan(&mut self, ctx: &SourceContext) -> Found {
        let (files, problems) = matching_files(&self.cfg);
        if !self.cfg.path.exists() {
            self.problems.report(
                self.cfg.path.display().to_string(),
                format!(
                    "directory {} does not exist (any more, or yet): create or mount it; it is \
                     looked for every {}",
                    self.cfg.path.display(),
                    humantime::format_duration(self.cfg.poll_interval)
                ),
            );
        }
        for (dir, message) in problems {
            self.problems.report(dir.display().to_string(), message);
        }
        debug!(source = %ctx.name, files = files.len(), "scanned");
        files
    }

    fn pass_drop(
        &mut self,
        ctx: &SourceContext,
        files: Vec<(PathBuf, std::fs::Metadata)>,
    ) -> Result<Duration, OutboxError> {
        let now = Instant::now();
        let mut wait = self.cfg.poll_interval;
        let present: std::collections::HashSet<&PathBuf> = files.iter().map(|(p, _)| p).collect();
        self.settling.retain(|p, _| present.contains(p));
        self.finished.retain(|p, _| present.contains(p));
        self.after_failed.retain(|p, _| present.contains(p));
        for (path, message) in &self.after_failed {
            self.problems
                .report(path.display().to_string(), message.clone());
        }
        for (path, meta) in files {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            let stamp = (meta.len(), meta.modified().ok());
            if self.finished.get(&path) == Some(&stamp) {
                continue;
            }
            if let Some(marker) = &self.cfg.marker {
                // The writer says when the file is complete; no need to watch it settle.
                if !marker.of(&path).exists() {
                    continue;
                }
                match self.take_dropped(ctx, &path) {
                    Ok(true) => self.finish_dropped(&path, stamp),
                    Ok(false) => {}
                    Err(TakeError::Outbox(e)) => return Err(e),
                    Err(TakeError::Io(e)) => self.cannot_read(&path, &e),
                }
                continue;
            }
            let s = self.settling.entry(path.clone()).or_insert(Settling {
                len: stamp.0,
                mtime: stamp.1,
                since: now,
            });
            if (s.len, s.mtime) != stamp {
                *s = Settling {
                    len: stamp.0,
                    mtime: stamp.1,
                    since: now,
                };
            }
            let quiet = now.duration_since(s.since);
            if quiet < self.cfg.settle {
                wait = wait.min(self.cfg.settle - quiet);
                continue;
            }
            self.settling.remove(&path);
            match self.take_dropped(ctx, &path) {
                Ok(true) => {
                    self.finish_dropped(&path, stamp);
                }
                Ok(false) => {}
                Err(TakeError::Outbox(e)) => return Err(e),
                Err(TakeError::Io(e)) => self.cannot_read(&path, &e),
            }
        }
        Ok(wait)
    }

    /// Reads a settled dropped file completely. Returns whether it is done.
    fn take_dropped(&mut self, ctx: &SourceContext, path: &Path) -> Result<bool, TakeError> {
        let mut file = open_shared(path)?;
        let (digest, len) = hash_file(&mut file)?;
        let key = format!("sha256:{digest}");
        let idx = match self.by_key.get(&key) {
            Some(&i) => i,
            None => self.new_cursor(
                ctx,
                key,
                FileCursor {
                    path: path.display().to_string(),
                    ..FileCursor::default()
                },
            )?,
        };
        if self.known[idx].cur.done {
            debug!(source = %ctx.name, file = %path.display(), "same content was read before; not read again");
            return Ok(true);
        }
        self.known[idx].cur.path = path.display().to_string();
        self.read(ctx, idx, &mut file, Some(len), true)?;
        let cur = &mut self.known[idx];
        if cur.cur.offset >= len {
            let mut done = cur.cur.clone();
            done.done = true;
            commit_blocking(
                ctx,
                Commit {
                    cursors: vec![(cur.id, to_json(&done))],
                    ..Commit::default()
                },
            )?;
            cur.cur = done;
            info!(source = %ctx.name, file = %path.display(), lines = cur.cur.line, "file read");
            return Ok(true);
        }
        Ok(false)
    }

    fn finish_dropped(&mut self, path: &Path, stamp: (u64, Option<SystemTime>)) {
        let marker = self.cfg.marker.as_ref().map(|m| m.of(path));
        let result = match &self.cfg.after {
            After::Keep => {
                self.finished.insert(path.to_owned(), stamp);
                Ok(())
            }
            After::Delete => std::fs::remove_file(path).and_then(|()| match &marker {
                Some(m) => std::fs::remove_file(m),
                None => Ok(()),
            }),
            After::Move(dir) => move_into(path, dir).and_then(|()| match &marker {
                Some(m) => move_into(m, dir),
                None => Ok(()),
            }),
        };
        if let Err(e) = result {
            let message = format!(
                "read {} but could not {}: {e} (it is not read again; fix the permissions)",
                path.display(),
                match &self.cfg.after {
                    After::Move(dir) => format!("move it to {}", dir.display()),
                    _ => "delete it".to_owned(),
                }
            );
            self.problems
                .report(path.display().to_string(), message.clone());
            self.after_failed.insert(path.to_owned(), message);
            self.finished.insert(path.to_owned(), stamp);
        }
    }

    fn pass_tail(
        &mut self,
        ctx: &SourceContext,
        files: Vec<(PathBuf, std::fs::Metadata)>,
    ) -> Result<Duration, OutboxError> {
        let mut wait = self.cfg.poll_interval;
        // 1. Files already open: read on, notice rotation and truncation.
        let mut i = 0;
        while i < self.tailed.len() {
            match self.follow(ctx, i) {
                Ok(Some(w)) => {
                    wait = wait.min(w);
                    i += 1;
                }
                Ok(None) => {
                    self.tailed.swap_remove(i);
                }
                Err(TakeError::Outbox(e)) => return Err(e),
                Err(TakeError::Io(e)) => {
                    let path = self.tailed[i].path.clone();
                    self.cannot_read(&path, &e);
                    self.tailed.swap_remove(i);
                }
            }
        }
        // The cursor lag: bytes the open files hold beyond what is committed.
        let lag: u64 = self
            .tailed
            .iter()
            .map(|t| {
                let len = t.file.metadata().map(|m| m.len()).unwrap_or(0);
                len.saturating_sub(self.known[t.known].cur.offset)
            })
            .sum();
        ctx.metrics
            .lag_bytes
            .store(lag, std::sync::atomic::Ordering::Relaxed);
        // 2. Paths not open yet: new files, or files found again after a restart.
        let present: std::collections::HashSet<PathBuf> =
            files.iter().map(|(p, _)| p.clone()).collect();
        self.copying.retain(|p, _| present.contains(p));
        for (path, meta) in files {
            if ctx.shutdown.is_cancelled() {
                break;
            }
            let Some(id) = path_identity(&path) else {
                continue;
            };
            let open = self.tailed.iter().any(|t| {
                let k = &self.known[t.known].cur;
                t.path == path && (k.dev, k.ino) == id
            });
            if open || meta.len() == 0 {
                continue;
            }
            match self.discover(ctx, &path) {
                Ok(()) => {}
                Err(TakeError::Outbox(e)) => return Err(e),
                Err(TakeError::Io(e)) => self.cannot_read(&path, &e),
            }
        }
        if !self.copying.is_empty() {
            // Look again when a copy still being written may have settled.
            wait = wait.min(self.cfg.settle.max(Duration::from_millis(100)));
        }
        Ok(wait)
    }

    /// Identifies a file found at `path` and starts tailing it, unless it is a finished one.
    fn discover(&mut self, ctx: &SourceContext, path: &Path) -> Result<(), TakeError> {
        let mut file = open_shared(path)?;
        let head = read_head(&mut file)?;
        let (dev, ino) = file_identity(&file);
        // The length of the file opened, not of what the name led to at the scan: names move
        // under a rotation (app.log -> app.log.1 -> app.log.2) between the scan and the open.
        let len = file.metadata()?.len();
        let same_start = |k: &Known| {
            k.cur.fp_len as usize <= head.len()
                && fingerprint(&head[..k.cur.fp_len as usize]) == k.cur.fp
        };
        // A finished file is only the same if it is also still as long as when it was
        // finished: a new file that got its inode back after a delete may begin alike.
        let found = self
            .known
            .iter()
            .position(|k| {
                (k.cur.dev, k.cur.ino) == (dev, ino)
                    && same_start(k)
                    && (!k.cur.done || k.cur.offset == len)
            })
            .or_else(|| {
                // A network share mounted again gets a new device number; its files keep
                // their inodes and content. An unfinished file that is not open elsewhere,
                // with the same inode and the same first bytes, is the same file.
                let open: Vec<usize> = self.tailed.iter().map(|t| t.known).collect();
                self.known.iter().enumerate().position(|(i, k)| {
                    !k.cur.done
                        && k.cur.ino == ino
                        && k.cur.fp_len > 0
                        && !open.contains(&i)
                        && same_start(k)
                })
            });
        // A finished file found again, longer, with the same beginning and the same bytes
        // before where it was finished: it was away (a share that disappeared, a rename and
        // back) and has grown since. It continues where it stopped.
        let found = found.or_else(|| {
            let open: Vec<usize> = self.tailed.iter().map(|t| t.known).collect();
            let i = self.known.iter().enumerate().position(|(i, k)| {
                k.cur.done
                    && k.cur.ino == ino
                    && k.cur.fp_len > 0
                    && len > k.cur.offset
                    && !open.contains(&i)
                    && same_start(k)
            })?;
            let cur = &self.known[i].cur;
            let same_end = cur.offset <= cur.fp_len
                || (!cur.end_fp.is_empty()
                    && end_fingerprint(&mut file, cur.offset).ok().as_ref() == Some(&cur.end_fp));
            same_end.then_some(i)
        });
        // A cursor under which nothing was read says nothing about the file: if it is a
        // copy of another, that counts (an inode freed by a deleted file is soon reused).
        let found = found.filter(|&i| {
            self.known[i].cur.offset > 0
                || !matches!(self.copy_of(&mut file, &head, len), Ok(Some(_)))
        });
        if let Some(i) = found {
            let cur = &mut self.known[i].cur;
            cur.dev = dev;
            if cur.done && len > cur.offset {
                info!(source = %ctx.name, file = %path.display(), offset = cur.offset, "a finished file is back and has grown; reading on");
                cur.done = false;
                cur.end_fp.clear();
            }
        }
        let rewritten = match found {
            Some(i) if !self.known[i].cur.done => {
                len < self.known[i].cur.offset || !ends_as_read(&mut file, &self.known[i].cur)?
            }
            _ => false,
        };
        let idx = match found {
            Some(i) if self.known[i].cur.done => return Ok(()),
            Some(i) if rewritten => {
                // Truncated (or rewritten) while we were away: what is there now is new.
                self.retire(ctx, i)?;
                self.start_file(ctx, path, (dev, ino), &head, 0)?
            }
            Some(i) => {
                if self.tailed.iter().any(|t| t.known == i) {
                    // Open under its old name: a hard link or a rename we have not seen yet.
                    return Ok(());
                }
                self.known[i].cur.path = path.display().to_string();
                i
            }
            None => match self.copy_of(&mut file, &head, len)? {
                Some(of) => {
                    let original = &self.known[of];
                    let mut cur = original.cur.clone();
                    info!(
                        source = %ctx.name,
                        file = %path.display(),
                        of = %cur.path,
                        offset = cur.offset,
                        "a copy of a file read before (copy-and-truncate): reading it on from \
                         where that file was read"
                    );
                    cur.keys_of = Some(cur.key_space(original.id));
                    cur.path = path.display().to_string();
                    (cur.dev, cur.ino) = (dev, ino);
                    cur.fp_len = head.len() as u64;
                    cur.fp = fingerprint(&head);
                    cur.done = false;
                    cur.truncated_ms = None;
                    let tail = original.tail.clone();
                    // Its own cursor: the copy is a file of its own from here on.
                    let created = crate::outbox::now_ms();
                    let key = format!("file:{dev}:{ino}:{created}:copy");
                    let idx = self.new_cursor(ctx, key, cur)?;
                    self.known[idx].tail = tail;
                    self.known[of].cur.truncated_ms = None;
                    idx
                }
                None => {
                    if self.copy_in_progress(path, &head, len) {
                        debug!(source = %ctx.name, file = %path.display(), "looks like a copy still being written; waiting for it");
                        return Ok(());
                    }
                    let start = if self.first_pass && self.cfg.start_at == StartAt::End {
                        line_start_before(&mut file, len)?
                    } else {
                        0
                    };
                    self.start_file(ctx, path, (dev, ino), &head, start)?
                }
            },
        };
        self.copying.remove(path);
        info!(source = %ctx.name, file = %path.display(), offset = self.known[idx].cur.offset, "tailing");
        self.tailed.push(Tailed {
            known: idx,
            file,
            path: path.to_owned(),
            gone_since: None,
        });
        let last = self.tailed.len() - 1;
        self.follow(ctx, last).map(|_| ())
    }

    fn start_file(
        &mut self,
        ctx: &SourceContext,
        path: &Path,
        (dev, ino): (u64, u64),
        head: &[u8],
        offset: u64,
    ) -> Result<usize, TakeError> {
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("file:{dev}:{ino}:{created}");
        Ok(self.new_cursor(
            ctx,
            key,
            FileCursor {
                path: path.display().to_string(),
                dev,
                ino,
                fp_len: head.len() as u64,
                fp: fingerprint(head),
                offset,
                line: 0,
                header: None,
                done: false,
                end_fp: String::new(),
                keys_of: None,
                truncated_ms: None,
            },
        )?)
    }

    /// A new file that begins like a file being read (or truncated a moment ago) but is not as
    /// long as what was read of it: a copy still being written (`cp` of a large file,
    /// copy-and-truncate), or a file that merely begins alike. It is waited for while it
    /// grows (then it is recognised as a copy once long enough), and taken as a file of its
    /// own once it has been quiet for `settle`.
    fn copy_in_progress(&mut self, path: &Path, head: &[u8], len: u64) -> bool {
        let now_ms = crate::outbox::now_ms();
        let begins_like_one = self.known.iter().any(|k| {
            let cur = &k.cur;
            let recent = cur
                .truncated_ms
                .is_some_and(|t| now_ms - t <= COPY_WINDOW_MS);
            (!cur.done || recent)
                && cur.fp_len > 0
                && len < cur.offset
                && head.len() >= cur.fp_len as usize
                && fingerprint(&head[..cur.fp_len as usize]) == cur.fp
        });
        if !begins_like_one {
            return false;
        }
        let now = Instant::now();
        let seen = self.copying.entry(path.to_owned()).or_insert((len, now));
        if seen.0 != len {
            *seen = (len, now);
        }
        now.duration_since(seen.1) < self.cfg.settle
    }

    /// A file not seen before that begins with exactly the bytes another file had up to its
    /// committed offset, where that file is still being read or was truncated a moment ago:
    /// a copy of it (copy-and-truncate rotation with the copy inside `include`, or a copy
    /// made by hand). Its records are keyed under that file's cursor, so the part both hold
    /// is one set of records, and it is read on from that file's offset: the lines written
    /// after the last read and before the truncation are in the copy only.
    fn copy_of(&self, file: &mut File, head: &[u8], len: u64) -> std::io::Result<Option<usize>> {
        let now = crate::outbox::now_ms();
        let mut best: Option<usize> = None;
        for (i, k) in self.known.iter().enumerate() {
            let cur = &k.cur;
            let recent = cur.truncated_ms.is_some_and(|t| now - t <= COPY_WINDOW_MS);
            if (cur.done && !recent)
                || cur.offset == 0
                || cur.fp_len == 0
                || len < cur.offset
                || head.len() < cur.fp_len as usize
                || fingerprint(&head[..cur.fp_len as usize]) != cur.fp
                || best.is_some_and(|b| self.known[b].cur.offset >= cur.offset)
            {
                continue;
            }
            let same_end = cur.offset <= cur.fp_len
                || (!cur.end_fp.is_empty() && end_fingerprint(file, cur.offset)? == cur.end_fp);
            if same_end {
                best = Some(i);
            }
        }
        Ok(best)
    }

    /// Reads an open tailed file on. `None` when it is finished and can be closed; otherwise
    /// how soon to look again.
    fn follow(&mut self, ctx: &SourceContext, i: usize) -> Result<Option<Duration>, TakeError> {
        let idx = self.tailed[i].known;
        let len = self.tailed[i].file.metadata()?.len();
        // One read of the first bytes serves both the check and the growing fingerprint.
        let head = read_head(&mut self.tailed[i].file)?;
        // Copy-and-truncate: the file is shorter than what was read, or (when the writer has
        // already written past the old offset again) no longer begins with the same bytes.
        let cur = &self.known[idx].cur;
        let rewritten = cur.fp_len > 0
            && (head.len() < cur.fp_len as usize
                || fingerprint(&head[..cur.fp_len as usize]) != cur.fp);
        // Rewritten from the start with the same first bytes and past the old offset (a
        // truncation not seen between two looks): the bytes before the offset differ.
        let rewritten = rewritten
            || (len >= cur.offset
                && !ends_as_read(&mut self.tailed[i].file, &self.known[idx].cur)?);
        let cur = &self.known[idx].cur;
        if len < cur.offset || rewritten {
            // The old content is gone; what follows is a new file.
            let path = self.tailed[i].path.clone();
            info!(source = %ctx.name, file = %path.display(), "file was truncated; reading it from the start");
            // A copy of what it held may turn up (copy-and-truncate): see `copy_of`.
            self.known[idx].cur.truncated_ms = Some(crate::outbox::now_ms());
            self.retire(ctx, idx)?;
            let id = file_identity(&self.tailed[i].file);
            let fresh = self.start_file(ctx, &path, id, &head, 0)?;
            self.tailed[i].known = fresh;
            return self.follow(ctx, i);
        }
        // The fingerprint covers up to FINGERPRINT_MAX bytes as the file grows, so two files
        // that begin alike (a CSV header) are told apart once their content differs.
        let cur = &mut self.known[idx].cur;
        if head.len() > cur.fp_len as usize {
            cur.fp_len = head.len() as u64;
            cur.fp = fingerprint(&head);
        }
        let mut file = self.tailed[i].file.try_clone()?;
        self.read(ctx, idx, &mut file, None, false)?;

        // Is the path still this file?
        let path = self.tailed[i].path.clone();
        let here = path_identity(&path);
        let ours = (self.known[idx].cur.dev, self.known[idx].cur.ino);
        // A deleted file whose inode a new file at the same path got back looks like the same
        // file by identity; the open handle knows it has no name any more.
        if here == Some(ours) && !is_unlinked(&self.tailed[i].file) {
            self.tailed[i].gone_since = None;
            return Ok(Some(self.cfg.poll_interval));
        }
        let now = Instant::now();
        match self.tailed[i].gone_since {
            Some((since, size)) if size == len && now.duration_since(since) >= self.cfg.settle => {
                // Rotated away and quiet: take a last unterminated line, then let go.
                self.read(ctx, idx, &mut file, None, true)?;
                self.known[idx].cur.end_fp =
                    end_fingerprint(&mut file, self.known[idx].cur.offset)?;
                self.retire(ctx, idx)?;
                info!(source = %ctx.name, file = %path.display(), "rotated file finished");
                Ok(None)
            }
            Some((_, size)) if size == len => Ok(Some(self.cfg.settle)),
            _ => {
                self.tailed[i].gone_since = Some((now, len));
                Ok(Some(self.cfg.settle))
            }
        }
    }

    /// Marks a file finished.
    fn retire(&mut self, ctx: &SourceContext, idx: usize) -> Result<(), OutboxError> {
        let mut done = self.known[idx].cur.clone();
        done.done = true;
        commit_blocking(
            ctx,
            Commit {
                cursors: vec![(self.known[idx].id, to_json(&done))],
                ..Commit::default()
            },
        )?;
        self.known[idx].cur = done;
        Ok(())
    }

    fn new_cursor(
        &mut self,
        ctx: &SourceContext,
        key: String,
        cur: FileCursor,
    ) -> Result<usize, OutboxError> {
        let id = ctx
            .outbox
            .create_cursor_blocking(ctx.id, key.clone(), to_json(&cur))?;
        self.by_key.insert(key, self.known.len());
        self.known.push(Known {
            id,
            cur,
            tail: Vec::new(),
            long_line: None,
        });
        Ok(self.known.len() - 1)
    }

    /// Reads from the cursor to the end of the file (or `limit`), committing as it goes.
    /// `last`: the file is complete, so a final line without newline is a record.
    ///
    /// A chunk's commit runs on the writer while the next chunk is read and parsed; that
    /// chunk's records, tracker moves and cursor are handed over only once the commit before
    /// them is durable, so a failed commit is never followed by one that builds on it, and
    /// what it would have moved is put back.
    fn read(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        file: &mut File,
        limit: Option<u64>,
        last: bool,
    ) -> Result<(), TakeError> {
        let mut in_flight = None;
        let read = self.read_chunks(ctx, idx, file, limit, last, &mut in_flight);
        // A failed commit is the error to report: it is why reading stops.
        self.settle(ctx, idx, in_flight)?;
        read
    }

    /// Waits for a chunk's commit; on failure puts back the file's position and the trackers
    /// the chunk moved.
    fn settle(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        in_flight: Option<InFlight>,
    ) -> Result<(), OutboxError> {
        let Some(chunk) = in_flight else {
            return Ok(());
        };
        let done = chunk.commit.wait(ctx);
        if let Some(states) = self.states.as_mut() {
            states.settle(done.is_ok());
        }
        if done.is_ok() {
            ctx.metrics.bytes.fetch_add(chunk.bytes, Relaxed);
            ctx.metrics.skipped.fetch_add(chunk.skipped, Relaxed);
        } else {
            self.known[idx].cur = chunk.before;
            self.known[idx].tail = chunk.tail_before;
            if let (Some(before), Some((_, tracker))) =
                (chunk.tracker_before, self.tracker.as_mut())
            {
                *tracker = before;
            }
        }
        done
    }

    fn read_chunks(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        file: &mut File,
        limit: Option<u64>,
        last: bool,
        in_flight: &mut Option<InFlight>,
    ) -> Result<(), TakeError> {
        let mut cap = CHUNK;
        // Origins name the file by its path below the source's `path`: in a recursive source,
        // two `calls.ndjson:1` could not be told apart.
        let read_from = Path::new(&self.known[idx].cur.path);
        let name = read_from
            .strip_prefix(&self.cfg.path)
            .ok()
            .filter(|rel| !rel.as_os_str().is_empty())
            .or_else(|| read_from.file_name().map(Path::new))
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let charset = self.cfg.charset;
        // The first bytes tell a byte-order mark (read from the start) and UTF-16's byte order.
        let mut head = [0u8; 4];
        let head_len = if self.known[idx].cur.offset == 0 || matches!(charset, Charset::Utf16(_)) {
            file.seek(SeekFrom::Start(0))?;
            read_full(file, &mut head)?
        } else {
            0
        };
        let head = &head[..head_len];
        let big_endian = charset.big_endian(head);
        let offset = self.known[idx].cur.offset;
        if self.known[idx].tail.is_empty() && offset > 0 {
            self.known[idx].tail = bytes_before(file, offset)?;
        }
        loop {
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            // A line too long, looked through before: go on looking for its end.
            if self.known[idx]
                .long_line
                .as_ref()
                .is_some_and(|l| l.start == self.known[idx].cur.offset)
            {
                self.settle(ctx, idx, in_flight.take())?;
                if !self.park_long_line(ctx, idx, file, &name, last, big_endian)? {
                    return Ok(());
                }
            }
            let cur = &self.known[idx];
            let offset = cur.cur.offset;
            let want = match limit {
                Some(l) if l <= offset => return Ok(()),
                Some(l) => cap.min((l - offset) as usize),
                None => cap,
            };
            self.buf.resize(want, 0);
            file.seek(SeekFrom::Start(offset))?;
            let n = read_full(file, &mut self.buf)?;
            if n == 0 {
                return Ok(());
            }
            let at_end = n < want || limit.is_some_and(|l| offset + n as u64 >= l);
            let complete = last && at_end;
            let skip = if offset == 0 {
                charset.bom_len(head).min(n)
            } else {
                0
            };
            let raw = &self.buf[skip..n];
            let transcoded = big_endian.map(|be| parse::Transcoded::utf16(raw, be, complete));
            let positions = Positions {
                base: offset + skip as u64,
                map: transcoded.as_ref(),
            };
            let text = transcoded.as_ref().map_or(raw, |t| &t.text[..]);
            let step = self.parse(cur, &name, text, &positions, complete, ctx);
            let consumed = if complete && !step.cut_short {
                n
            } else if step.consumed == 0 {
                0
            } else {
                (positions.at(step.consumed) - offset) as usize
            };
            if consumed == 0 {
                // No whole line in the buffer: the line at the cursor is still being written,
                // or it is longer than it may be (then it is parked without being held).
                let max_line = self.cfg.max_line;
                if n > max_line {
                    self.settle(ctx, idx, in_flight.take())?;
                    if self.park_long_line(ctx, idx, file, &name, last, big_endian)? {
                        cap = CHUNK;
                        continue;
                    }
                    return Ok(());
                }
                if at_end {
                    return Ok(());
                }
                cap = (cap * 2).min(max_line + 1);
                continue;
            }
            let mut next = cur.cur.clone();
            next.offset = offset + consumed as u64;
            next.line += step.newlines;
            let tail = last_bytes(&cur.tail, &self.buf[..consumed]);
            next.end_fp = fingerprint(&tail);
            if step.header.is_some() {
                next.header = step.header;
            }
            let id = cur.id;
            let mut cursors = vec![(id, to_json(&next))];
            let (mut records, mut parked) = (step.records, step.parked);
            let mut changes = step.changes;
            // What follows builds on the chunk before, so that chunk must be durable first.
            self.settle(ctx, idx, in_flight.take())?;
            // The queue_log tracker as committed, put back if the commit fails.
            let tracker_before = (!step.queue_log.is_empty())
                .then(|| self.tracker.as_ref().map(|(_, t)| t.clone()))
                .flatten();
            if !step.queue_log.is_empty() {
                let (tracker_id, json) =
                    self.apply_queue_log(step.queue_log, &mut records, &mut changes, &mut parked);
                cursors.push((tracker_id, json));
            }
            if !changes.is_empty() {
                let ((states_id, json), _) = self.states.as_mut().expect("states loaded").apply(
                    &ctx.name,
                    changes,
                    &mut records,
                    &mut parked,
                );
                cursors.push((states_id, json));
            }
            let commit = rows::submit(
                ctx,
                Commit {
                    records,
                    parked,
                    cursors,
                    ..Commit::default()
                },
            );
            *in_flight = Some(InFlight {
                commit,
                before: std::mem::replace(&mut self.known[idx].cur, next),
                tail_before: std::mem::replace(&mut self.known[idx].tail, tail),
                tracker_before,
                bytes: consumed as u64,
                skipped: step.skipped,
            });
            if at_end && !step.cut_short {
                return Ok(());
            }
        }
    }

    /// Parks the line at the cursor, which is longer than `max_line`, without holding it:
    /// looks through the file for its end a chunk at a time (going on where it stopped last
    /// time, while the line is still being written), then commits it as parked (its first
    /// 4 KiB kept) with the cursor after it. `Ok(true)` when it was parked; `Ok(false)` when
    /// its end is not written yet. A file known to be complete (`last`) ends it.
    fn park_long_line(
        &mut self,
        ctx: &SourceContext,
        idx: usize,
        file: &mut File,
        name: &str,
        last: bool,
        big_endian: Option<bool>,
    ) -> Result<bool, TakeError> {
        let start = self.known[idx].cur.offset;
        let mut long = match self.known[idx].long_line.take() {
            Some(l) if l.start == start => l,
            _ => {
                let mut head = vec![0u8; LONG_LINE_KEPT];
                file.seek(SeekFrom::Start(start))?;
                let n = read_full(file, &mut head)?;
                head.truncate(n);
                LongLine {
                    start,
                    scanned: start,
                    head,
                }
            }
        };
        // Chunks of an even length keep UTF-16 code units aligned.
        let chunk = CHUNK;
        if self.buf.len() < chunk {
            self.buf.resize(chunk, 0);
        }
        let end = loop {
            if ctx.shutdown.is_cancelled() {
                self.known[idx].long_line = Some(long);
                return Ok(false);
            }
            file.seek(SeekFrom::Start(long.scanned))?;
            let n = read_full(file, &mut self.buf[..chunk])?;
            if n == 0 {
                if last {
                    break long.scanned;
                }
                self.known[idx].long_line = Some(long);
                return Ok(false);
            }
            let bytes = &self.buf[..n];
            let found = match big_endian {
                Some(be) => bytes
                    .chunks_exact(2)
                    .position(|u| u == if be { [0, b'\n'] } else { [b'\n', 0] })
                    .map(|i| 2 * i + 2),
                None => bytes.iter().position(|b| *b == b'\n').map(|i| i + 1),
            };
            match found {
                Some(len) => break long.scanned + len as u64,
                None => long.scanned += n as u64,
            }
        };
        let known = &self.known[idx];
        let length = end - start;
        let parked = Parked {
            origin: format!("{name}:{}", known.cur.line + 1),
            reason: long_line_reason(
                length,
                self.cfg.max_line,
                long.head.len().min(length as usize),
            ),
            raw: String::from_utf8_lossy(&long.head[..long.head.len().min(length as usize)])
                .into_owned(),
        };
        let mut next = known.cur.clone();
        next.offset = end;
        next.line += 1;
        let tail = bytes_before(file, end)?;
        next.end_fp = fingerprint(&tail);
        warn!(source = %ctx.name, origin = %parked.origin, "{}", parked.reason);
        commit_blocking(
            ctx,
            Commit {
                parked: vec![parked],
                cursors: vec![(known.id, to_json(&next))],
                ..Commit::default()
            },
        )?;
        ctx.metrics.bytes.fetch_add(length, Relaxed);
        let known = &mut self.known[idx];
        known.cur = next;
        known.tail = tail;
        Ok(true)
    }

    /// Turns a buffer into records and parked rows.
    fn parse(
        &self,
        cur: &Known,
        name: &str,
        buf: &[u8],
        pos: &Positions<'_>,
        last: bool,
        ctx: &SourceContext,
    ) -> Step {
        let mut step = Step {
            expands: self.cfg.rows.map.as_ref().is_some_and(|m| m.expands()),
            ..Step::default()
        };
        let origin = |newlines: u64| format!("{name}:{}", cur.cur.line + newlines + 1);
        match self.cfg.format {
            FileFormat::Ndjson => {
                // Lines already in the API's shape need no object unless a key or skip rule
                // reads their fields.
                let plain = self.cfg.rows.is_plain();
                let mut items = parse::lines(buf, last);
                let cut = step.limit(&mut items);
                for item in items {
                    let origin_here = origin(item.newlines_before);
                    let at = pos.at(item.start);
                    if step.too_long(&item, pos, self.cfg.max_line, &origin_here, buf) {
                        continue;
                    }
                    let text = match self.cfg.charset.decode(item.value) {
                        Ok(t) => t,
                        Err(e) => {
                            let raw = String::from_utf8_lossy(item.value);
                            step.push(cur.cur.key_space(cur.id), at, origin_here, Err(e), &raw);
                            continue;
                        }
                    };
                    let text = text.trim_start_matches('\u{feff}');
                    let result = if plain {
                        schema::normalize_json(ctx.emits, text)
                            .map(|r| Some(RowOut::Records(vec![r], None)))
                    } else {
                        match serde_json::from_str::<serde_json::Value>(text) {
                            Ok(serde_json::Value::Object(obj)) => {
                                self.cfg.rows.convert(&JsonRow(&obj), || {
                                    schema::normalize_json(ctx.emits, text)
                                })
                            }
                            Ok(_) => Err("the line is not a JSON object".into()),
                            Err(e) => Err(format!("not valid JSON: {e}")),
                        }
                    };
                    step.push(cur.cur.key_space(cur.id), at, origin_here, result, text);
                }
                step.consumed = cut.unwrap_or_else(|| parse::consumed_lines(buf, last));
            }
            FileFormat::QueueLog => {
                let mut items = parse::lines(buf, last);
                let cut = step.limit(&mut items);
                for item in items {
                    let origin_here = origin(item.newlines_before);
                    let at = pos.at(item.start);
                    if step.too_long(&item, pos, self.cfg.max_line, &origin_here, buf) {
                        continue;
                    }
                    let line = match self.cfg.charset.decode(item.value) {
                        Ok(t) => t.into_owned(),
                        Err(e) => {
                            let raw = String::from_utf8_lossy(item.value);
                            step.push(cur.cur.key_space(cur.id), at, origin_here, Err(e), &raw);
                            continue;
                        }
                    };
                    match queue_log::parse(&line) {
                        Ok(_) => step.queue_log.push((origin_here, line)),
                        Err(e) => {
                            step.push(cur.cur.key_space(cur.id), at, origin_here, Err(e), &line)
                        }
                    }
                }
                step.consumed = cut.unwrap_or_else(|| parse::consumed_lines(buf, last));
            }
            FileFormat::Csv | FileFormat::Tsv => {
                let (items, consumed) = parse::csv(
                    buf,
                    self.cfg.delimiter,
                    self.cfg.charset,
                    last,
                    ROWS_PER_COMMIT,
                );
                step.cut_short = items.len() == ROWS_PER_COMMIT && consumed < buf.len();
                let mut header: Option<Vec<String>> = cur.cur.header.clone();
                for (n, item) in items.into_iter().enumerate() {
                    let at = pos.at(item.start);
                    let origin_here = origin(item.newlines_before);
                    if step.too_long(&item, pos, self.cfg.max_line, &origin_here, buf) {
                        continue;
                    }
                    let fields = match item.value {
                        Ok(f) => f,
                        Err(e) => {
                            step.push(
                                cur.cur.key_space(cur.id),
                                at,
                                origin(item.newlines_before),
                                Err(e),
                                "",
                            );
                            continue;
                        }
                    };
                    if n == 0 && cur.cur.offset == 0 && self.cfg.header {
                        step.header = Some(fields.clone());
                        header = Some(fields);
                        continue;
                    }
                    let columns: &[String] = match (&self.cfg.columns, &header) {
                        (Some(c), _) => c,
                        (None, Some(h)) => h,
                        (None, None) => &[],
                    };
                    let row = CsvRow {
                        columns,
                        fields: &fields,
                    };
                    let result = self
                        .cfg
                        .rows
                        .convert(&row, || unreachable!("csv sources have a map"));
                    let raw = fields.join(&(self.cfg.delimiter as char).to_string());
                    step.push(
                        cur.cur.key_space(cur.id),
                        at,
                        origin(item.newlines_before),
                        result,
                        &raw,
                    );
                }
                step.consumed = consumed;
            }
        }
        step.newlines = buf[..step.consumed].iter().filter(|b| **b == b'\n').count() as u64;
        step
    }

    /// Runs queue_log lines through the tracker; returns the tracker's cursor to commit with
    /// what they gave.
    fn apply_queue_log(
        &mut self,
        lines: Vec<(String, String)>,
        records: &mut Vec<NewRecord>,
        changes: &mut Vec<ChangeRead>,
        parked: &mut Vec<Parked>,
    ) -> (i64, String) {
        let cfg = self.cfg.queue_log.as_ref().expect("queue_log configured");
        let (id, tracker) = self.tracker.as_mut().expect("tracker loaded");
        super::queue_log::apply(
            cfg,
            self.cfg.rows.states.as_ref(),
            tracker,
            lines,
            records,
            changes,
            parked,
        );
        (*id, serde_json::to_string(tracker).expect("serializes"))
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

/// Files with their metadata.
pub(crate) type Found = Vec<(PathBuf, std::fs::Metadata)>;
/// Directories that could not be listed, with why.
pub(crate) type Unlisted = Vec<(PathBuf, String)>;

/// The files of a source's directory that its globs select, oldest first (a backlog is read in
/// the order it was written), and the directories that could not be listed.
pub(crate) fn matching_files(cfg: &FilesConfig) -> (Found, Unlisted) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut dirs = vec![cfg.path.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                if dir != cfg.path || e.kind() != std::io::ErrorKind::NotFound {
                    problems.push((dir.clone(), format!("cannot list {}: {e}", dir.display())));
                }
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let archive = matches!(&cfg.after, After::Move(a) if *a == path);
                if cfg.recursive && !archive {
                    dirs.push(path);
                }
                continue;
            }
            // A pipe, socket or device would block the source when opened (a FIFO waits for
            // a writer): only regular files are exports.
            if !meta.is_file() {
                continue;
            }
            if cfg.marker.as_ref().is_some_and(|m| m.is_marker(&path)) {
                continue;
            }
            let rel = path.strip_prefix(&cfg.path).unwrap_or(&path);
            let recent = match (cfg.modified_since, meta.modified()) {
                (Some(since), Ok(m)) => m >= since,
                _ => true,
            };
            if recent && cfg.include.is_match(rel) && !cfg.exclude.is_match(rel) {
                out.push((path, meta));
            }
        }
    }
    out.sort_by(|a, b| (a.1.modified().ok(), &a.0).cmp(&(b.1.modified().ok(), &b.0)));
    (out, problems)
}

/// Where a position in the parsed text lies in the file.
struct Positions<'a> {
    /// The file offset of the text's first byte.
    base: u64,
    /// For UTF-16 input, the way back from the UTF-8 text to the file's bytes.
    map: Option<&'a parse::Transcoded>,
}

impl Positions<'_> {
    fn at(&self, pos: usize) -> u64 {
        self.base + self.map.map_or(pos, |t| t.input_offset(pos)) as u64
    }
}

/// What a row became: records with the row's natural key, or an agent state change; `None`
/// for a row skipped on purpose.

#[derive(Default)]
struct Step {
    records: Vec<NewRecord>,
    parked: Vec<Parked>,
    skipped: u64,
    consumed: usize,
    newlines: u64,
    header: Option<Vec<String>>,
    /// Rows may give many records (`expand`): positions then leave room for them.
    expands: bool,
    /// The buffer held more rows than one commit takes; the rest is read again next.
    cut_short: bool,
    /// Agent state changes, in order (`emits = "agent_states"`).
    changes: Vec<ChangeRead>,
    /// queue_log lines (origin, line), in order.
    queue_log: Vec<(String, String)>,
}

/// The most rows one commit takes: bounds memory for files of short rows.
const ROWS_PER_COMMIT: usize = 16_384;

impl Step {
    /// Keeps the first [`ROWS_PER_COMMIT`] items; returns where the first one left out starts.
    fn limit<T>(&mut self, items: &mut Vec<parse::Item<T>>) -> Option<usize> {
        let next = items.get(ROWS_PER_COMMIT)?.start;
        items.truncate(ROWS_PER_COMMIT);
        self.cut_short = true;
        Some(next)
    }

    /// Parks a row longer than `max_line` (its first 4 KiB kept); `true` if it was.
    fn too_long<T>(
        &mut self,
        item: &parse::Item<T>,
        pos: &Positions<'_>,
        max_line: usize,
        origin: &str,
        buf: &[u8],
    ) -> bool {
        let length = pos.at(item.end) - pos.at(item.start);
        if length <= max_line as u64 {
            return false;
        }
        let kept = &buf[item.start..item.end.min(item.start + LONG_LINE_KEPT)];
        self.parked.push(Parked {
            origin: origin.to_owned(),
            reason: long_line_reason(length, max_line, kept.len()),
            raw: String::from_utf8_lossy(kept).into_owned(),
        });
        true
    }

    /// Adds what the row at file offset `offset` became.
    fn push(&mut self, cursor: i64, offset: u64, origin: String, outcome: RowOutcome, raw: &str) {
        match outcome {
            Ok(None) => self.skipped += 1,
            Ok(Some(RowOut::Change(change))) => self.changes.push(ChangeRead {
                change,
                origin,
                raw: crate::push::classify::truncate(raw, 4096),
            }),
            Ok(Some(RowOut::Records(records, key))) => {
                for (piece, payload) in records.into_iter().enumerate() {
                    let dkey = match &key {
                        Some(key) => natural_key(key, piece as u32),
                        None if self.expands => dedupe_key(cursor, (offset << 16) | piece as u64),
                        None => dedupe_key(cursor, offset),
                    };
                    self.records.push(NewRecord {
                        dkey,
                        payload,
                        origin: origin.clone(),
                    });
                }
            }
            Err(reason) => self.parked.push(Parked {
                origin,
                reason,
                raw: crate::push::classify::truncate(raw, 4096),
            }),
        }
    }
}

struct CsvRow<'a> {
    columns: &'a [String],
    fields: &'a [String],
}

impl Row for CsvRow<'_> {
    fn get(&self, column: &str) -> Option<Cow<'_, str>> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.fields.get(i).map(|f| Cow::Borrowed(f.as_str()))
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

fn fingerprint(head: &[u8]) -> String {
    Sha256::digest(head)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_head(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; FINGERPRINT_MAX];
    file.seek(SeekFrom::Start(0))?;
    let n = read_full(file, &mut head)?;
    head.truncate(n);
    Ok(head)
}

/// Whether `file` still holds, just before the cursor's offset, the bytes that were read
/// there (as far as the cursor's fingerprints tell: the first bytes cover short files).
fn ends_as_read(file: &mut File, cur: &FileCursor) -> std::io::Result<bool> {
    if cur.offset <= cur.fp_len || cur.end_fp.is_empty() {
        return Ok(true);
    }
    Ok(end_fingerprint(file, cur.offset)? == cur.end_fp)
}

/// A fingerprint of the (up to [`FINGERPRINT_MAX`]) bytes before `offset`.
fn end_fingerprint(file: &mut File, offset: u64) -> std::io::Result<String> {
    Ok(fingerprint(&bytes_before(file, offset)?))
}

/// The (up to [`FINGERPRINT_MAX`]) bytes before `offset`.
fn bytes_before(file: &mut File, offset: u64) -> std::io::Result<Vec<u8>> {
    let from = offset.saturating_sub(FINGERPRINT_MAX as u64);
    let mut buf = vec![0u8; (offset - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    let n = read_full(file, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The last (up to [`FINGERPRINT_MAX`]) bytes of `before` followed by `read`.
fn last_bytes(before: &[u8], read: &[u8]) -> Vec<u8> {
    if read.len() >= FINGERPRINT_MAX {
        return read[read.len() - FINGERPRINT_MAX..].to_vec();
    }
    let keep = (FINGERPRINT_MAX - read.len()).min(before.len());
    let mut out = Vec::with_capacity(keep + read.len());
    out.extend_from_slice(&before[before.len() - keep..]);
    out.extend_from_slice(read);
    out
}

fn hash_file(file: &mut File) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    file.seek(SeekFrom::Start(0))?;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    let digest = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((digest, len))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The offset just after the last newline before `len` (for `start_at = "end"`).
fn line_start_before(file: &mut File, len: u64) -> std::io::Result<u64> {
    let from = len.saturating_sub(64 * 1024);
    let mut tail = vec![0u8; (len - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    let n = read_full(file, &mut tail)?;
    Ok(match tail[..n].iter().rposition(|b| *b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None => from,
    })
}

/// Opens for reading without keeping the writer from renaming or deleting the file (on
/// Windows that takes an explicit share mode; on Unix it is always so).
fn open_shared(path: &Path) -> std::io::Result<File> {
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_SHARE_READ: u32 = 0x1;
        const FILE_SHARE_WRITE: u32 = 0x2;
        const FILE_SHARE_DELETE: u32 = 0x4;
        std::fs::OpenOptions::new()
            .read(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
            .open(path)
    }
    #[cfg(not(windows))]
    {
        File::open(path)
    }
}

/// Device and inode (Unix), or volume serial number and file index (Windows): what stays the
/// same while a file is renamed and changes when a new file takes its name.
fn file_identity(file: &File) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Storage::FileSystem::{
            BY_HANDLE_FILE_INFORMATION, GetFileInformationByHandle,
        };
        // SAFETY: the handle is open for the duration of the call and `info` is a plain
        // struct the call fills in.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        if unsafe { GetFileInformationByHandle(file.as_raw_handle() as _, &mut info) } == 0 {
            return (0, 0);
        }
        (
            u64::from(info.dwVolumeSerialNumber),
            (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
        )
    }
}

/// Whether an open file has been deleted (Unix: no links left).
fn is_unlinked(file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata().is_ok_and(|m| m.nlink() == 0)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        false
    }
}

/// The identity of whatever `path` names now.
fn path_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(windows)]
    {
        open_shared(path).ok().map(|f| file_identity(&f))
    }
}

fn move_into(path: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default();
    let mut target = dir.join(name);
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{}.{n}", name.to_string_lossy()));
        n += 1;
    }
    std::fs::rename(path, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_for_files_that_differ_after_a_shared_header() {
        let a = b"id,queue\n1,a\n";
        let b = b"id,queue\n2,b\n";
        assert_eq!(fingerprint(&a[..9]), fingerprint(&b[..9]));
        assert_ne!(fingerprint(a), fingerprint(b));
    }

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
