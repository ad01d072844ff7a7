//! One daemon per state file: an exclusive lock on `<state file>.lock`, held for the life of
//! the process (as Filebeat and Logstash do for their data path), and on Linux a second lock
//! on the state file's identity, so that two names of one file (hard links) share one lock.
//!
//! Two daemons on one outbox would both read every input and both send every batch. SQLite
//! alone cannot prevent that (it lets writers take turns), so `run` takes this lock before it
//! opens the outbox, and a second `run` refuses at once, naming the state file and the pid
//! that holds it. Operator commands (`status`, `dead`, `resend`, ...) do not take it: they use
//! short SQLite transactions beside the daemon. A schema migration happens only under it
//! ([`for_migration`]).
//!
//! The path lock is a separate file: on Unix an `flock`, which belongs to the open file and is
//! released when the process ends, even by `kill -9`. On Windows the file is held open without
//! write sharing, which the system also releases with the process; other processes can still
//! read who holds it. The file is left in place when the lock is let go: deleting a lock file
//! races with the next holder.
//!
//! A lock file named after the path cannot see a hard link: `/a/outbox.db` and
//! `/b/link.db` are one file with two lock files, and two daemons through them would each
//! keep their own WAL (SQLite names it after the path too) and lose each other's commits. So
//! the state file itself is locked as well (see `ident`), through an open file description
//! lock on bytes SQLite never uses.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::OutboxError;

/// The held lock; dropping it lets go.
#[derive(Debug)]
pub struct StateLock {
    /// The lock on the state file's identity (Linux). First, so that it is let go before the
    /// path lock: the next holder takes them in the other order.
    _identity: Option<ident::Held>,
    file: File,
    path: PathBuf,
}

/// The lock files this process holds now: a migration in this process needs no other lock.
static HELD_HERE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl Drop for StateLock {
    fn drop(&mut self) {
        let mut held = HELD_HERE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = held.iter().position(|p| *p == self.path) {
            held.swap_remove(i);
        }
    }
}

/// Who holds a state file's lock, as it wrote itself into the lock file (or into the place
/// of its identity lock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// The command holding it (`run`, `import`, `migrate`).
    pub command: String,
    /// Held through another name of the same file (a hard link).
    pub elsewhere: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "injixo-sync {} (pid {pid})", self.command)?,
            None => write!(f, "another injixo-sync {}", self.command)?,
        }
        if self.elsewhere {
            write!(
                f,
                " through another name of the same file (a hard link; `ls -li` shows names \
                 with the same inode)"
            )?;
        }
        Ok(())
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
        let io_state = |what: &str, e: std::io::Error| {
            LockError::Other(OutboxError::Io {
                path: state.to_owned(),
                message: format!("{what} it: {e}"),
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
        // The identity lock needs a file to lock: the outbox is made here, under the path
        // lock, if nothing is at the path yet.
        super::schema::create_if_absent(state).map_err(LockError::Other)?;
        let identity = loop {
            match ident::lock(state, command) {
                Ok(Ok(held)) => break held,
                // Another process is between taking the whole range and narrowing it to
                // the byte that names it.
                Ok(Err(Holder { pid: None, .. })) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(Err(holder)) => return Err(LockError::Held(holder)),
                Err(e) => return Err(io_state("cannot lock", e)),
            }
        };
        let me = format!("{}\n{command}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()))
            .map_err(|e| io("cannot write to", e))?;
        HELD_HERE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        Ok(StateLock {
            _identity: identity,
            file,
            path,
        })
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

/// Who holds the lock, if anyone: the path lock is tried and let go at once, the identity
/// lock only looked at.
pub fn holder(state: &Path) -> Option<Holder> {
    let path = lock_path(state);
    let by_path = match path.exists().then(|| platform::open_exclusive(&path)) {
        Some(Ok(None)) => Some(read_holder(&path)),
        _ => None,
    };
    by_path.or_else(|| ident::holder(state))
}

/// The lock a schema migration of `state` (at `version`) needs: `None` when this process
/// holds it already (`run`), the lock taken for the migration, or the error naming who holds
/// it.
pub fn for_migration(state: &Path, version: i32) -> Result<Option<StateLock>, OutboxError> {
    let here = HELD_HERE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&lock_path(state));
    if here {
        return Ok(None);
    }
    match StateLock::acquire(state, "migrate") {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held(holder)) => Err(OutboxError::MigrationBusy {
            path: state.to_owned(),
            version,
            holder: holder.to_string(),
        }),
        Err(LockError::Other(e)) => Err(e),
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
    Holder {
        pid,
        command,
        elsewhere: false,
    }
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

/// The lock on the state file's identity: an open file description (OFD) lock on one byte of
/// the state file far beyond SQLite's lock bytes (at 1 GiB) and beyond any outbox's size, so
/// SQLite's own locks never meet it. The byte says who holds it: `BASE + pid * 4 + command`,
/// since the kernel reports an OFD lock's range to others but not its process.
///
/// Why this is safe beside SQLite, which uses POSIX (`fcntl`) record locks: those belong to
/// the process and every one of them on the file is dropped when the process closes *any*
/// descriptor of it. So the descriptor opened here is never closed: it is kept in `OPEN` for
/// the life of the process and used again by the next lock of the same file, and letting go
/// unlocks the byte instead. An OFD lock, for its part, belongs to the open file description:
/// it does not merge with or replace the process's POSIX locks (different bytes), and closing
/// SQLite's descriptors leaves it alone. `flock` was not taken: on NFS and CIFS Linux turns it
/// into a POSIX lock of the whole file, which would meet SQLite's locks, and it reports no
/// holder. Opening the file is harmless: only closing drops locks.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod ident {
    use std::collections::HashMap;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::Holder;

    const BASE: i64 = 1 << 48;
    const SPAN: i64 = 1 << 40;
    const COMMANDS: [&str; 3] = ["run", "import", "migrate"];

    /// Descriptors of state files by device and inode, never closed (see above), and who in
    /// this process holds each one's lock: OFD locks of one open file description do not
    /// exclude each other.
    static OPEN: Mutex<Option<HashMap<(u64, u64), Entry>>> = Mutex::new(None);

    struct Entry {
        file: Arc<File>,
        held: Option<Holder>,
    }

    /// The identity lock held; dropping it unlocks the byte (the descriptor stays open).
    #[derive(Debug)]
    pub struct Held {
        key: (u64, u64),
        file: Arc<File>,
        byte: i64,
    }

    impl Drop for Held {
        fn drop(&mut self) {
            let _ = set(&self.file, libc::F_UNLCK, self.byte, 1);
            if let Some(e) = OPEN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|m| m.get_mut(&self.key))
            {
                e.held = None;
            }
        }
    }

    /// Takes the lock of the file at `state`, or says who holds it (`pid: None` while another
    /// process is taking it).
    pub fn lock(state: &Path, command: &str) -> std::io::Result<Result<Option<Held>, Holder>> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let (key, entry) = descriptor(&mut open, state)?;
        if let Some(h) = &entry.held {
            return Ok(Err(h.clone()));
        }
        let file = entry.file.clone();
        // The whole range first, so that two processes taking it at once cannot both get a
        // byte of it; then only the byte that names this process.
        if let Err(e) = set(&file, libc::F_WRLCK, BASE, SPAN) {
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EACCES) => Ok(Err(who(&file)?.unwrap_or(Holder {
                    pid: None,
                    command: "run".into(),
                    elsewhere: true,
                }))),
                _ => Err(e),
            };
        }
        let code = COMMANDS
            .iter()
            .position(|c| *c == command)
            .unwrap_or(COMMANDS.len() - 1) as i64;
        let byte = BASE + i64::from(std::process::id()) * 4 + code;
        set(&file, libc::F_UNLCK, BASE, byte - BASE)?;
        set(&file, libc::F_UNLCK, byte + 1, BASE + SPAN - byte - 1)?;
        entry.held = Some(Holder {
            pid: Some(std::process::id()),
            command: command.to_owned(),
            elsewhere: true,
        });
        Ok(Ok(Some(Held { key, file, byte })))
    }

    /// Who holds the lock of the file at `state`, looked at without taking it.
    pub fn holder(state: &Path) -> Option<Holder> {
        if !state.is_file() {
            return None;
        }
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let (_, entry) = descriptor(&mut open, state).ok()?;
        if let Some(h) = &entry.held {
            return Some(h.clone());
        }
        who(&entry.file.clone()).ok().flatten()
    }

    /// The kept descriptor of the file at `state`, opened (read-write: a write lock needs it)
    /// the first time; keyed by what the descriptor is, not by what the path named a moment
    /// before.
    fn descriptor<'a>(
        open: &'a mut Option<HashMap<(u64, u64), Entry>>,
        state: &Path,
    ) -> std::io::Result<((u64, u64), &'a mut Entry)> {
        let open = open.get_or_insert_with(HashMap::new);
        let m = std::fs::metadata(state)?;
        let key = (m.dev(), m.ino());
        if !open.contains_key(&key) {
            let file = File::options().read(true).write(true).open(state)?;
            let m = file.metadata()?;
            let key = (m.dev(), m.ino());
            match open.entry(key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Entry {
                        file: Arc::new(file),
                        held: None,
                    });
                }
                // The path named another file between the look and the open, one already kept
                // here: this second descriptor is never closed either (closing any descriptor
                // of the file would drop SQLite's locks on it in this process).
                std::collections::hash_map::Entry::Occupied(_) => std::mem::forget(file),
            }
            // The path may name another file by now; the descriptor decides.
            return Ok((key, open.get_mut(&key).expect("just inserted")));
        }
        Ok((key, open.get_mut(&key).expect("present")))
    }

    fn who(file: &File) -> std::io::Result<Option<Holder>> {
        let mut l = flock(libc::F_WRLCK, BASE, SPAN);
        // SAFETY: a valid descriptor and a valid `flock` the call fills in.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if i32::from(l.l_type) == libc::F_UNLCK {
            return Ok(None);
        }
        let at = l.l_start - BASE;
        let decided = l.l_len == 1 && at >= 0;
        Ok(Some(Holder {
            pid: decided.then_some((at / 4) as u32),
            command: COMMANDS[if decided { (at % 4).min(2) as usize } else { 0 }].into(),
            elsewhere: true,
        }))
    }

    fn set(file: &File, kind: i32, start: i64, len: i64) -> std::io::Result<()> {
        if len == 0 {
            // A length of 0 would mean "to the end of the file and beyond".
            return Ok(());
        }
        let l = flock(kind, start, len);
        // SAFETY: a valid descriptor and a valid `flock`.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn flock(kind: i32, start: i64, len: i64) -> libc::flock {
        // SAFETY: `flock` is plain data; zero is valid for every field (and `l_pid` must be
        // 0 for OFD locks).
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = kind as libc::c_short;
        l.l_whence = libc::SEEK_SET as libc::c_short;
        l.l_start = start;
        l.l_len = len;
        l
    }
}

/// Elsewhere only the path lock (hard links to a state file are not told).
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
mod ident {
    use std::path::Path;

    use super::Holder;

    /// Never held: the path lock is the only one here.
    #[derive(Debug)]
    pub enum Held {}

    pub fn lock(_: &Path, _: &str) -> std::io::Result<Result<Option<Held>, Holder>> {
        Ok(Ok(None))
    }

    pub fn holder(_: &Path) -> Option<Holder> {
        None
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
                        command: "run".into(),
                        elsewhere: false,
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
