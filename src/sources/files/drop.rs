//! `mode = "drop"`: a file is taken whole once it has settled, known by its content hash, and
//! kept, deleted or moved after its last record is committed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use super::identity::{file_identity, hash_file, open_shared};
use super::{FileCursor, FilesSource, Settling, TakeError, to_json};
use crate::config::After;
use crate::outbox::{Commit, OutboxError};
use crate::sources::SourceContext;
use crate::sources::rows::commit_blocking;

impl FilesSource {
    pub(super) fn pass_drop(
        &mut self,
        ctx: &SourceContext,
        files: Vec<(PathBuf, std::fs::Metadata)>,
    ) -> Result<Duration, OutboxError> {
        let now = Instant::now();
        let mut wait = self.cfg.poll_interval;
        let present: std::collections::HashSet<&PathBuf> = files.iter().map(|(p, _)| p).collect();
        self.settling.retain(|p, _| present.contains(p));
        self.finished.retain(|p, _| present.contains(p));
        self.digests.retain(|p, _| present.contains(p));
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
            match self.take_dropped(ctx, &path) {
                Ok(true) => {
                    self.settling.remove(&path);
                    self.finish_dropped(&path, stamp);
                }
                Ok(false) => {
                    self.settling.remove(&path);
                }
                Err(TakeError::Outbox(e)) => return Err(e),
                // It stays settled: the next pass tries it again at once, so the problem
                // stands until the file can be read (it used to settle anew, every other
                // pass leaving the problem out, and `/readyz` and the log flapped).
                Err(TakeError::Io(e)) => self.cannot_read(&path, &e),
            }
        }
        Ok(wait)
    }

    /// Reads a settled dropped file completely. Returns whether it is done.
    pub(super) fn take_dropped(
        &mut self,
        ctx: &SourceContext,
        path: &Path,
    ) -> Result<bool, TakeError> {
        let mut file = open_shared(path)?;
        let meta = file.metadata()?;
        let stamp = (file_identity(&file), meta.len(), meta.modified().ok());
        let (digest, len) = match self.digests.get(path) {
            Some((known, digest)) if *known == stamp => (digest.clone(), stamp.1),
            _ => {
                let (digest, len) = hash_file(&mut file)?;
                self.digests
                    .insert(path.to_owned(), ((stamp.0, len, stamp.2), digest.clone()));
                (digest, len)
            }
        };
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
            self.digests.remove(path);
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
            self.digests.remove(path);
            let lines = cur.cur.line;
            self.tally.say(
                ctx,
                &format!("{} read ({lines} line(s))", path.display()),
                true,
            );
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn finish_dropped(&mut self, path: &Path, stamp: (u64, Option<SystemTime>)) {
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
}

pub(super) fn move_into(path: &Path, dir: &Path) -> std::io::Result<()> {
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
