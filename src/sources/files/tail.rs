//! `mode = "tail"`: files followed as they grow, through renames (numbered rotation),
//! copy-and-truncate, in-place rewrites and slow copies; a file renamed away or deleted is read
//! to its end through the open handle, then retired.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info};

use super::identity::{
    end_fingerprint, ends_as_read, file_identity, fingerprint, is_unlinked, line_start_before,
    open_shared, path_identity, read_head,
};
use super::{FileCursor, FilesSource, Known, Tailed, TakeError, to_json};
use crate::config::StartAt;
use crate::outbox::{Commit, OutboxError};
use crate::sources::SourceContext;
use crate::sources::rows::commit_blocking;

/// For how long a truncated file's copy is recognised as such.
pub(super) const COPY_WINDOW_MS: i64 = 15 * 60 * 1000;

impl FilesSource {
    pub(super) fn pass_tail(
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
    pub(super) fn discover(&mut self, ctx: &SourceContext, path: &Path) -> Result<(), TakeError> {
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

    pub(super) fn start_file(
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
    pub(super) fn copy_in_progress(&mut self, path: &Path, head: &[u8], len: u64) -> bool {
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
    pub(super) fn copy_of(
        &self,
        file: &mut File,
        head: &[u8],
        len: u64,
    ) -> std::io::Result<Option<usize>> {
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
    pub(super) fn follow(
        &mut self,
        ctx: &SourceContext,
        i: usize,
    ) -> Result<Option<Duration>, TakeError> {
        let mut idx = self.tailed[i].known;
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
            // The new content is read below, in this same call: looking again first would let
            // a file rewritten faster than it is looked at start a new cursor on every look
            // without reading any of them (and, as a recursion, overflow the stack).
            let fresh = self.start_file(ctx, &path, id, &head, 0)?;
            self.tailed[i].known = fresh;
            idx = fresh;
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
        // A followed file is never finished: what its new lines became is said only when
        // some were merged or parked.
        let path = self.tailed[i].path.clone();
        self.tally
            .say(ctx, &format!("{} read on", path.display()), false);

        // Is the path still this file?
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
                self.tally.say(
                    ctx,
                    &format!("rotated file {} finished", path.display()),
                    true,
                );
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
    pub(super) fn retire(&mut self, ctx: &SourceContext, idx: usize) -> Result<(), OutboxError> {
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

    pub(super) fn new_cursor(
        &mut self,
        ctx: &SourceContext,
        key: String,
        cur: FileCursor,
    ) -> Result<usize, OutboxError> {
        let id = ctx
            .outbox
            .create_cursor_blocking(ctx.id, key.clone(), to_json(&cur))?;
        Ok(self.register(id, key, cur))
    }

    /// Adds a file whose cursor row is `id` to the known files; gives its index.
    pub(super) fn register(&mut self, id: i64, key: String, cur: FileCursor) -> usize {
        self.by_key.insert(key, self.known.len());
        self.known.push(Known {
            id,
            cur,
            tail: Vec::new(),
            long_line: None,
        });
        self.known.len() - 1
    }
}
