//! Which files a source reads: `path`, `include`, `exclude`, `recursive`, and what it cannot
//! list.

use std::path::PathBuf;

use tracing::debug;

use super::FilesSource;
use crate::config::{After, FilesConfig};
use crate::sources::SourceContext;

impl FilesSource {
    /// Matching files, oldest first (so a backlog is read in the order it was written).
    pub(super) fn scan(&mut self, ctx: &SourceContext) -> Found {
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
