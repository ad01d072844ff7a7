//! One daemon per state file: an exclusive lock on `<state file>.lock`, held for the life of
//! the process (as Filebeat and Logstash do for their data path).
//!
//! Two daemons on one outbox would both read every input and both send every batch. SQLite
//! alone cannot prevent that (it lets writers take turns), so `run` takes this lock before it
//! opens the outbox, and a second `run` refuses at once, naming the state file and the pid
//! that holds it. Operator commands (`status`, `dead`, `resend`, ...) do not take it: they use
//! short SQLite transactions beside the daemon.
//!
//! The lock is a separate file, never the state file itself: the state file is only ever
//! opened through SQLite (see `schema::exists`). On Unix it is an `flock`, which belongs to
//! the open file and is released when the process ends, even by `kill -9`. On Windows the file
//! is held open without write sharing, which the system also releases with the process; other
//! processes can still read who holds it. The file is left in place when the lock is let go:
//! deleting a lock file races with the next holder.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::OutboxError;

/// The held lock; dropping it lets go.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

/// Who holds a state file's lock, as it wrote itself into the lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// The command holding it (`run`, `import`).
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "injixo-sync {} (pid {pid})", self.command),
            None => write!(f, "another injixo-sync {}", self.command),
        }
    }
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it.
    Held(Holder),
    Other(OutboxError),
}

/// The lock file of a state file: `outbox.db` → `outbox.db.lock`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    state.with_file_name(name)
}

impl StateLock {
    /// Takes the state file's lock for `command`, or says who holds it.
    pub fn acquire(state: &Path, command: &str) -> Result<StateLock, LockError> {
        let path = lock_path(state);
        let io = |what: &str, e: std::io::Error| {
            LockError::Other(OutboxError::Io {
                path: state.to_owned(),
                message: format!("{what} {}: {e}", path.display()),
            })
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
        }
        // A moment's patience: `holder` (asked by `status` or `import`) takes a free lock
        // for an instant, and a start at that instant must not take it for a second daemon.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut file = loop {
            match platform::open_exclusive(&path) {
                Ok(Some(f)) => break f,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(None) => return Err(LockError::Held(read_holder(&path))),
                Err(e) => return Err(io("cannot take the lock", e)),
            }
        };
        let me = format!("{}\n{command}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()))
            .map_err(|e| io("cannot write to", e))?;
        Ok(StateLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file at the path is still the one locked: deleting it lets a second
    /// daemon make and lock a new one (Unix; on Windows a held file cannot be deleted).
    pub fn still_held(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let held = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
            held.is_none() || identity(&self.path) == held
        }
        #[cfg(not(unix))]
        {
            let _ = &self.file;
            true
        }
    }
}

/// The device and inode `path` names now, by `stat` (Unix; `None` elsewhere or when nothing
/// is there).
pub fn identity(path: &Path) -> Option<(u64, u64)> {
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

impl LockError {
    /// The message for a start that found the lock taken.
    pub fn into_outbox_error(self, state: &Path) -> OutboxError {
        match self {
            LockError::Held(holder) => OutboxError::Busy {
                path: state.to_owned(),
                holder: holder.to_string(),
            },
            LockError::Other(e) => e,
        }
    }
}

/// Who holds the lock, if anyone: the lock is tried and let go at once.
pub fn holder(state: &Path) -> Option<Holder> {
    let path = lock_path(state);
    if !path.exists() {
        return None;
    }
    match platform::open_exclusive(&path) {
        Ok(Some(_free)) => None,
        Ok(None) => Some(read_holder(&path)),
        Err(_) => None,
    }
}

fn read_holder(path: &Path) -> Holder {
    let mut text = String::new();
    let _ = platform::open_shared(path).and_then(|mut f| f.read_to_string(&mut text));
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let command = lines
        .next()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("run")
        .to_owned();
    Holder { pid, command }
}

#[cfg(unix)]
mod platform {
    use std::fs::{File, TryLockError};
    use std::path::Path;

    /// The lock file opened and locked; `None` when another process holds it.
    pub fn open_exclusive(path: &Path) -> std::io::Result<Option<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    pub fn open_shared(path: &Path) -> std::io::Result<File> {
        File::open(path)
    }
}

#[cfg(windows)]
mod platform {
    use std::fs::File;
    use std::os::windows::fs::OpenOptionsExt;
    use std::path::Path;

    const FILE_SHARE_READ: u32 = 0x1;
    const FILE_SHARE_WRITE: u32 = 0x2;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    const ERROR_LOCK_VIOLATION: i32 = 33;

    /// Opened for writing with read sharing only: a second opener for writing gets a sharing
    /// violation until this process closes it or ends.
    pub fn open_exclusive(path: &Path) -> std::io::Result<Option<File>> {
        match File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .share_mode(FILE_SHARE_READ)
            .open(path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn open_shared(path: &Path) -> std::io::Result<File> {
        File::options()
            .read(true)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
            .open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("outbox.db");
        let first = StateLock::acquire(&state, "run").unwrap();
        assert_eq!(first.path(), dir.path().join("outbox.db.lock"));
        match StateLock::acquire(&state, "import") {
            Err(LockError::Held(h)) => {
                assert_eq!(
                    h,
                    Holder {
                        pid: Some(std::process::id()),
                        command: "run".into()
                    }
                );
                assert_eq!(
                    h.to_string(),
                    format!("injixo-sync run (pid {})", std::process::id())
                );
            }
            other => panic!("not refused: {other:?}"),
        }
        assert!(holder(&state).is_some());
        drop(first);
        assert_eq!(holder(&state), None);
        let again = StateLock::acquire(&state, "import").unwrap();
        assert_eq!(holder(&state).map(|h| h.command).as_deref(), Some("import"));
        drop(again);
    }
}
