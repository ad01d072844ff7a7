//! Which files a source reads: `path`, `include`, `exclude`, `recursive`, and what it cannot
//! list. Never the outbox's own files ([`StateFiles`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::FilesSource;
use crate::config::{After, FilesConfig};
use crate::sources::SourceContext;

impl FilesSource {
    /// Matching files, oldest first (so a backlog is read in the order it was written).
    pub(super) fn scan(&mut self, ctx: &SourceContext) -> Found {
        let state = StateFiles::of(ctx.outbox.path());
        let (files, problems) = matching_files(&self.cfg, &state);
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

/// The state file and the files kept beside it (SQLite's `-wal`, `-shm` and `-journal`, the
/// lock file, a new outbox's temporary `.new-*` files), which no scan may take: a source that
/// deletes, moves or parks them destroys the outbox. The configuration refuses a source whose
/// folder and patterns reach them; this is the second line, for what the configuration cannot
/// see (a symlink made later, a bind mount): the files are told by device and inode, and by
/// name inside the state file's folder, told by its device and inode (Unix).
#[derive(Clone, Debug, Default)]
pub(crate) struct StateFiles {
    files: Vec<(u64, u64)>,
    dir: Option<(u64, u64)>,
    name: OsString,
}

impl StateFiles {
    /// What the state file at `state` and its side files are now (they come and go: each scan
    /// looks again). Decided by `stat`, never by opening them.
    pub(crate) fn of(state: &Path) -> Self {
        let mut files = Vec::new();
        let mut paths = vec![state.to_path_buf(), crate::outbox::lock_path(state)];
        paths.extend(crate::outbox::side_files(state));
        for p in &paths {
            if let Some(id) = identity(p) {
                files.push(id);
            }
        }
        let dir = state.parent().filter(|d| !d.as_os_str().is_empty());
        Self {
            files,
            dir: identity(dir.unwrap_or(Path::new("."))),
            name: state.file_name().unwrap_or_default().to_owned(),
        }
    }

    /// Whether `path` (in the folder whose identity is `dir`, with `meta`) is one of them.
    fn holds(&self, dir: Option<(u64, u64)>, path: &Path, meta: &std::fs::Metadata) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if self.files.contains(&(meta.dev(), meta.ino())) {
                return true;
            }
        }
        #[cfg(not(unix))]
        let _ = (meta, &self.files);
        if dir.is_none() || dir != self.dir || self.name.is_empty() {
            return false;
        }
        let Some(name) = path.file_name() else {
            return false;
        };
        let (name, state) = (name.as_encoded_bytes(), self.name.as_encoded_bytes());
        name.strip_prefix(state).is_some_and(|rest| {
            matches!(rest, b"" | b"-wal" | b"-shm" | b"-journal" | b".lock")
                || rest.starts_with(b".new")
        })
    }
}

/// Device and inode of what `path` names (Unix; `None` elsewhere, where the configuration's
/// check is the only line).
fn identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The files of a source's directory that its globs select, oldest first (a backlog is read in
/// the order it was written), and the directories that could not be listed; never the outbox's
/// own files (`state`).
pub(crate) fn matching_files(cfg: &FilesConfig, state: &StateFiles) -> (Found, Unlisted) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut dirs = vec![cfg.path.clone()];
    while let Some(dir) = dirs.pop() {
        let dir_id = identity(&dir);
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
            if cfg.marker.as_ref().is_some_and(|m| m.is_marker(&path))
                || state.holds(dir_id, &path, &meta)
            {
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
