//! Opening the state file: refusing what is not ours, checking integrity, migrating the schema.
//!
//! A file that is not an injixo-sync outbox, is corrupt, or was written by a newer version is
//! refused with a message that says so. It is never deleted or recreated: the records in it may
//! be the only copy of a day's contact-center data.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::OutboxError;

/// `PRAGMA application_id`: "IJXS".
pub const APPLICATION_ID: i32 = 0x494A_5853;
/// The newest schema this build knows.
pub const SCHEMA_VERSION: i32 = 9;

const SCHEMA_V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE sources (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    last_activity INTEGER,
    records_total INTEGER NOT NULL DEFAULT 0,
    parked_total  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE lanes (
    id              INTEGER PRIMARY KEY,
    emits           TEXT NOT NULL,
    integration_id  INTEGER NOT NULL,
    external_system TEXT NOT NULL DEFAULT '',
    health          TEXT NOT NULL DEFAULT 'ok',
    last_success    INTEGER,
    last_error      TEXT,
    last_error_at   INTEGER,
    delivered_total INTEGER NOT NULL DEFAULT 0,
    unknown_outcome_retries INTEGER NOT NULL DEFAULT 0,
    -- Every pending record of this lane that is in no batch has an id above this.
    scanned_to      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (emits, integration_id, external_system)
);

-- state: 0 pending, 1 sent, 2 dead, 3 dropped by the operator (kept as a dedupe key).
CREATE TABLE records (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    lane_id   INTEGER NOT NULL,
    source_id INTEGER NOT NULL,
    dkey      BLOB NOT NULL,
    payload   TEXT NOT NULL,
    origin    TEXT NOT NULL,
    created   INTEGER NOT NULL,
    state     INTEGER NOT NULL DEFAULT 0,
    batch_id  INTEGER,
    sent_at   INTEGER
);
-- No index on pending records: batches are formed by a rowid range scan above the lane's
-- `scanned_to`, which keeps inserts to two b-trees (table and dedupe key).
CREATE UNIQUE INDEX records_dedupe ON records (source_id, dkey);
CREATE INDEX records_batch ON records (batch_id, id) WHERE batch_id IS NOT NULL;
CREATE INDEX records_sent ON records (sent_at) WHERE state = 1;

CREATE TABLE batches (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    lane_id   INTEGER NOT NULL,
    idem_key  TEXT NOT NULL,
    created   INTEGER NOT NULL
);

CREATE TABLE cursors (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id INTEGER NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    updated   INTEGER NOT NULL,
    UNIQUE (source_id, key)
);

CREATE TABLE dead (
    id        INTEGER PRIMARY KEY,
    record_id INTEGER NOT NULL UNIQUE,
    status    INTEGER NOT NULL,
    answer    TEXT NOT NULL,
    at        INTEGER NOT NULL
);

CREATE TABLE parked (
    id        INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    origin    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    raw       TEXT NOT NULL,
    at        INTEGER NOT NULL
);
"#;

/// Version 2: the agent identifiers each lane has sent (`injixo-sync agents`), and the queues
/// (identifier and name per configuration id) contact events were sent under (the queue
/// guard). Records held back by the guard have state 4.
/// Version 3: records the operator dropped get their own small index, so that pruning kept
/// records reads two indexes instead of the whole table.
const SCHEMA_V3: &str = r#"
CREATE INDEX records_dropped ON records (sent_at) WHERE state = 3;
"#;

/// Version 4: delivery is a per-lane mark instead of a write per record. A lane's `sent_to`
/// is the id up to which its records are delivered: a record in state 0 is pending above it
/// and delivered (kept for `resend`) at or below it. A batch is the range `first_id..=last_id`
/// of its lane's state-0 records (`batch_id` is no longer written), and `deliveries` says when
/// the mark passed each id, for pruning after `keep_sent`; `pruned_to` is how far that went.
/// Records in state 1 (delivered before version 4) keep their `sent_at` and index.
const SCHEMA_V4: &str = r#"
ALTER TABLE lanes ADD COLUMN sent_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE lanes ADD COLUMN pruned_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN first_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN last_id INTEGER NOT NULL DEFAULT 0;
CREATE TABLE deliveries (
    lane_id INTEGER NOT NULL,
    sent_to INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (lane_id, sent_to)
) WITHOUT ROWID;
"#;

/// Version 5: the part of a split batch in flight (`part_first..=part_last`, record ids), written
/// before the part is sent, so that after a crash it goes out again under its own key; what
/// each source cannot do right now (a folder gone, a file it may not read, a database that does
/// not answer), for `status`, kept until it is resolved; and per source the rows left out by
/// `skip_if` and merged by their `key`.
const SCHEMA_V5: &str = r#"
ALTER TABLE batches ADD COLUMN part_first INTEGER;
ALTER TABLE batches ADD COLUMN part_last INTEGER;
ALTER TABLE sources ADD COLUMN skipped_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sources ADD COLUMN merged_total INTEGER NOT NULL DEFAULT 0;
CREATE TABLE problems (
    source_id INTEGER NOT NULL,
    subject   TEXT NOT NULL,
    message   TEXT NOT NULL,
    since     INTEGER NOT NULL,
    PRIMARY KEY (source_id, subject)
) WITHOUT ROWID;
"#;

/// Version 6: records are kept compressed (see `codec.rs`), with zstd dictionaries trained on
/// each lane's own records. A compressed record names its dictionary, so they are versions:
/// never changed nor deleted while a record may name them.
const SCHEMA_V6: &str = r#"
CREATE TABLE dicts (
    id      INTEGER PRIMARY KEY,
    lane_id INTEGER NOT NULL,
    hash    BLOB NOT NULL UNIQUE,
    dict    BLOB NOT NULL,
    created INTEGER NOT NULL
);
"#;

/// Version 7:
/// * A dead letter may be a record the outbox cannot decode (its stored bytes or its
///   dictionary damaged), set aside so that its lane flows on: `damaged` is 1 and `answer`
///   says why (status 0: the API never saw it). Its stored bytes are kept as they are. The
///   index keeps counting them cheap for every scrape.
/// * A poller reads rows again by design (its look-back, ties at its cursor); a row it parked
///   is found by its raw text, so it is parked once.
/// * A record keyed by the source's `key` keeps a hash of its input row, so that a row with a
///   known key is told apart from the same row read again: only the first is a merge.
const SCHEMA_V7: &str = r#"
ALTER TABLE dead ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
CREATE INDEX dead_damaged ON dead (record_id) WHERE damaged = 1;
CREATE INDEX parked_raw ON parked (source_id, raw);
ALTER TABLE records ADD COLUMN row_hash INTEGER;
"#;

/// Version 8: a parked row keeps what mapping it again needs (`parked retry`): `replay` (JSON:
/// where its records' keys come from, a CSV record's fields, its input in full when `raw` is
/// cut short) and its file's header, stored once per source and distinct header in
/// `parked_headers`. Parked ids are never used again (AUTOINCREMENT): a retry that read a row
/// takes out that row, not a row parked after it under a freed id. The index counts parked
/// rows per reason for every scrape.
const SCHEMA_V8: &str = r#"
CREATE TABLE parked_v8 (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id INTEGER NOT NULL,
    origin    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    raw       TEXT NOT NULL,
    at        INTEGER NOT NULL,
    replay    TEXT,
    header_id INTEGER
);
INSERT INTO parked_v8 (id, source_id, origin, reason, raw, at)
    SELECT id, source_id, origin, reason, raw, at FROM parked;
DROP TABLE parked;
ALTER TABLE parked_v8 RENAME TO parked;
CREATE INDEX parked_raw ON parked (source_id, raw);
CREATE INDEX parked_reason ON parked (source_id, reason);
CREATE INDEX parked_header ON parked (header_id) WHERE header_id IS NOT NULL;
CREATE TABLE parked_headers (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id INTEGER NOT NULL,
    columns   TEXT NOT NULL,
    UNIQUE (source_id, columns)
);
"#;

/// Version 9: records held back by the queue guard are counted per lane for every scrape.
const SCHEMA_V9: &str =
    "CREATE INDEX IF NOT EXISTS records_held ON records (lane_id) WHERE state = 4;";

const SCHEMA_V2: &str = r#"
CREATE TABLE agents (
    lane_id    INTEGER NOT NULL,
    agent      TEXT NOT NULL,
    first_sent INTEGER NOT NULL,
    last_sent  INTEGER NOT NULL,
    PRIMARY KEY (lane_id, agent)
) WITHOUT ROWID;
CREATE TABLE queues (
    integration_id INTEGER NOT NULL,
    identifier     TEXT NOT NULL,
    name           TEXT NOT NULL,
    channel        TEXT NOT NULL,
    first_sent     INTEGER NOT NULL,
    PRIMARY KEY (integration_id, identifier, name)
) WITHOUT ROWID;
"#;

/// Opens (creating if absent) and migrates the outbox for writing.
///
/// Only a path where nothing exists is created, and atomically (see [`create`]): an empty
/// file, or an SQLite database without our schema, is refused like any foreign file.
pub fn open_rw(path: &Path) -> Result<Connection, OutboxError> {
    // Two processes opening a new outbox at once both turn WAL on; one of them is told "locked"
    // at once, without SQLite's busy wait.
    let mut tries = 0;
    loop {
        match open_rw_once(path) {
            Err(OutboxError::Locked { .. }) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

fn open_rw_once(path: &Path) -> Result<Connection, OutboxError> {
    create_if_absent(path)?;
    // Before SQLite opens it: SQLite would quietly open a read-only file read-only and make
    // its -shm file read-only too.
    writable(path)?;
    let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // Identify before anything writes: a foreign file is refused untouched.
    let version = identify(&conn, path)?;
    // A migration rewrites tables a running daemon of an older build reads and writes: it
    // happens only under the state lock, which `run` holds for its life; anyone else (an
    // `import` by a newer build) takes it for the migration or, while a daemon runs, refuses.
    let _migrating = if version < SCHEMA_VERSION {
        super::lock::for_migration(path, version)?
    } else {
        None
    };
    configure(&conn, path)?;
    verify_pragma(&conn, path, "quick_check")?;
    migrate(&conn, path, version)?;
    Ok(conn)
}

/// Creates the outbox at `path` if nothing is there, unless SQLite's side files of a database
/// that is gone are (see [`refuse_orphans`]).
pub fn create_if_absent(path: &Path) -> Result<(), OutboxError> {
    if !exists(path)? {
        refuse_orphans(path)?;
        create(path)?;
    }
    Ok(())
}

/// The files SQLite keeps beside a database: its write-ahead log, the log's index, and the
/// rollback journal (a new outbox is made with one, see [`create`]).
pub fn side_files(path: &Path) -> [PathBuf; 3] {
    ["-wal", "-shm", "-journal"].map(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Refuses a missing state file whose side files are still there (the outbox deleted by
/// hand): SQLite would take an old `-wal` (or hot `-journal`) into a new database at the path
/// and then find it corrupt, and the records in that log may be the only copy.
///
/// The side files are looked for before the database is looked for again: a creator links
/// the database into place before SQLite makes any side file of it, and nothing removes the
/// database, so side files seen before the database is found missing are really orphans and
/// not those of an outbox being created at this moment.
fn refuse_orphans(path: &Path) -> Result<(), OutboxError> {
    let left: Vec<PathBuf> = side_files(path)
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if left.is_empty() || exists(path)? {
        return Ok(());
    }
    Err(OutboxError::Orphaned {
        path: path.to_owned(),
        files: left,
    })
}

/// Opens an existing outbox read-only (for `status` and `check`).
pub fn open_ro(path: &Path) -> Result<Connection, OutboxError> {
    open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// Opens an existing outbox for a short operator change (`dead retry`) beside a running
/// daemon: WAL and the busy timeout let the two take turns.
pub fn open_admin(path: &Path) -> Result<Connection, OutboxError> {
    let conn = open_existing(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(|e| OutboxError::sqlite(path, e))?;
    Ok(conn)
}

/// Runs an operator change (`dead`, `resend`, `queues`) as one immediate transaction on its
/// own connection beside a running daemon; rolled back if any step fails.
pub fn admin_transaction<T>(
    path: &Path,
    change: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, OutboxError> {
    let conn = open_admin(path)?;
    let run = || -> rusqlite::Result<T> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let done = change(&conn)?;
        conn.execute_batch("COMMIT")?;
        Ok(done)
    };
    run().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        OutboxError::sqlite(path, e)
    })
}

fn open_existing(path: &Path, mode: OpenFlags) -> Result<Connection, OutboxError> {
    if !exists(path)? {
        refuse_orphans(path)?;
        return Err(OutboxError::Missing(path.to_owned()));
    }
    let conn = connect(path, mode)?;
    let version = identify(&conn, path)?;
    // Commands read what this build writes; only the daemon (or `import`, under the lock)
    // migrates an older file.
    if version < SCHEMA_VERSION {
        return Err(OutboxError::Older {
            path: path.to_owned(),
            version,
        });
    }
    Ok(conn)
}

/// Whether something is at `path`, decided by `stat` alone.
///
/// The state file is never opened except through SQLite: POSIX locks belong to the process,
/// so closing any other descriptor of the file (a `File::open` to sniff its first bytes, say)
/// would drop the locks of every SQLite connection this process holds on it. Another
/// process's last connection would then believe it is alone, checkpoint, and delete the WAL
/// this process is still writing to (sqlite.org, "How To Corrupt An SQLite Database File",
/// 2.2). Foreign bytes are told by SQLite itself (`SQLITE_NOTADB`).
fn exists(path: &Path) -> Result<bool, OutboxError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(OutboxError::Io {
            path: path.to_owned(),
            message: format!("cannot look at it: {e}"),
        }),
        Ok(m) if m.is_dir() => Err(OutboxError::Foreign {
            path: path.to_owned(),
            detail: "it is a directory".into(),
        }),
        Ok(m) if m.len() == 0 => Err(OutboxError::Foreign {
            path: path.to_owned(),
            detail: "it is empty (0 bytes), and an outbox never is: it was truncated or \
                     replaced, and taking it as a new outbox would read and send every input \
                     again"
                .into(),
        }),
        Ok(_) => Ok(true),
    }
}

/// Whether this process may write the state file, its `-wal` and `-shm` files (those that
/// exist) and the folder they are in (where SQLite makes them); an error names the first
/// that it may not write, and the fix. Decided by `access(2)` (Unix) or the read-only
/// attribute (Windows), without opening anything.
pub fn writable(path: &Path) -> Result<(), OutboxError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    for (what, p) in [
        ("the state file", path.to_path_buf()),
        ("its -wal file", wal.into()),
        ("its -shm file", shm.into()),
        ("its folder", dir.to_path_buf()),
    ] {
        if !p.exists() {
            continue;
        }
        if !may_write(&p) {
            return Err(OutboxError::Io {
                path: path.to_owned(),
                message: format!(
                    "{what} {} is not writable by {}: the daemon writes the state file, its \
                     -wal and -shm files and the folder they are in. Give the service user \
                     write access to them (e.g. `chown -R injixo-sync: {}`), or point \
                     [state] path elsewhere",
                    p.display(),
                    whoami(),
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn may_write(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(not(unix))]
fn may_write(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir() || !m.permissions().readonly())
}

#[cfg(unix)]
fn whoami() -> String {
    // SAFETY: getuid cannot fail.
    format!("this user (uid {})", unsafe { libc::getuid() })
}

#[cfg(not(unix))]
fn whoami() -> String {
    "this user".into()
}

/// Opens an existing file through SQLite, never creating it.
fn connect(path: &Path, mode: OpenFlags) -> Result<Connection, OutboxError> {
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| OutboxError::sqlite(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| OutboxError::sqlite(path, e))?;
    super::codec::register(&conn).map_err(|e| OutboxError::sqlite(path, e))?;
    Ok(conn)
}

fn not_ours(path: &Path) -> OutboxError {
    OutboxError::Foreign {
        path: path.to_owned(),
        detail: "it is an SQLite database without an injixo-sync outbox in it".into(),
    }
}

/// Creates a new outbox at `path`, where nothing exists: built under a temporary name in the
/// same directory (rollback journal, `synchronous = FULL`), then linked into place only if
/// the path is still free, and the directory synced. A crash on the way leaves the path free
/// (and a `.new-<pid>-<n>` file beside it), never an empty or half-made outbox there.
fn create(path: &Path) -> Result<(), OutboxError> {
    let io = |what: &str, e: std::io::Error| OutboxError::Io {
        path: path.to_owned(),
        message: format!("{what}: {e}"),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the state directory", e))?;
    }
    // A name of its own: two processes creating the outbox at once (a daemon and `import`
    // started together) must not remove each other's file; the first link wins.
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(
        ".new-{}-{}",
        std::process::id(),
        MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let fresh = dir.join(name);
    // What a crash while creating left (a creator at work now made its file moments ago).
    let stem = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let old = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60))
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(&format!("{stem}.new")) else {
            continue;
        };
        // Only names `create` makes: `.new` (older builds) or `.new-<pid>-<n>`, each with its
        // `-journal`; never another file that happens to share the prefix.
        let ours = |r: &str| {
            let r = r.strip_suffix("-journal").unwrap_or(r);
            r.is_empty()
                || r.strip_prefix('-').is_some_and(|r| {
                    let mut parts = r.split('-');
                    let digits = |p: Option<&str>| {
                        p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    };
                    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
                })
        };
        let legacy = rest.is_empty() || rest == "-journal";
        let leftover = ours(rest) && (legacy || old(&entry));
        if leftover
            && let Err(e) = std::fs::remove_file(entry.path())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io(&format!("cannot remove {}", entry.path().display()), e));
        }
    }
    {
        let conn = Connection::open_with_flags(
            &fresh,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| OutboxError::sqlite(&fresh, e))?;
        conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL;")
            .map_err(|e| OutboxError::sqlite(&fresh, e))?;
        migrate(&conn, &fresh, 0)?;
    }
    // A hard link fails if the path was taken meanwhile; a rename would replace it.
    match std::fs::hard_link(&fresh, path) {
        Ok(()) => {
            std::fs::remove_file(&fresh).map_err(|e| io("cannot remove the new file's name", e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&fresh);
            return Ok(());
        }
        // File systems without hard links: rename, the path being free a moment ago; one
        // made meanwhile by another process is kept (a rename would replace it).
        Err(_) if path.exists() => {
            let _ = std::fs::remove_file(&fresh);
            return Ok(());
        }
        Err(_) => std::fs::rename(&fresh, path).map_err(|e| io("cannot move it into place", e))?,
    }
    sync_dir(dir).map_err(|e| io("cannot sync the state directory", e))
}

/// Makes a new name in `dir` durable (Unix; NTFS journals its directory entries itself).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A full `PRAGMA integrity_check`; slow on a large file, so only `check` runs it.
pub fn integrity_check(conn: &Connection, path: &Path) -> Result<(), OutboxError> {
    verify_pragma(conn, path, "integrity_check")
}

/// `quick_check` on open (O(pages), no index cross-checks) or `integrity_check` in `check`.
fn verify_pragma(conn: &Connection, path: &Path, pragma: &str) -> Result<(), OutboxError> {
    let result: String = conn
        .query_row(&format!("PRAGMA {pragma}(1)"), [], |r| r.get(0))
        .map_err(|e| OutboxError::sqlite(path, e))?;
    if result == "ok" {
        Ok(())
    } else {
        Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: result,
        })
    }
}

fn configure(conn: &Connection, path: &Path) -> Result<(), OutboxError> {
    let err = |e| OutboxError::sqlite(path, e);
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Io {
            path: path.to_owned(),
            message: format!(
                "SQLite refused write-ahead logging (journal_mode is {mode}); the state file \
                 must be on a local disk, not a network share"
            ),
        });
    }
    // FULL: a commit that moved a cursor is on disk before the source reads further.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 4000;",
    )
    .map_err(err)?;
    Ok(())
}

/// Returns the schema version after checking the file is ours: an SQLite database with
/// nothing in it is not (only [`create`] makes new outboxes, and never leaves one empty).
fn identify(conn: &Connection, path: &Path) -> Result<i32, OutboxError> {
    let err = |e| OutboxError::sqlite(path, e);
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(err)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err)?;
    if version == 0 && tables == 0 {
        return Err(not_ours(path));
    }
    if app != APPLICATION_ID {
        return Err(OutboxError::Foreign {
            path: path.to_owned(),
            detail: "it is an SQLite database of another program".into(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(OutboxError::Newer {
            path: path.to_owned(),
            version,
        });
    }
    Ok(version)
}

/// Brings the schema from `version` (0: a file [`create`] has just made) to [`SCHEMA_VERSION`].
fn migrate(conn: &Connection, path: &Path, version: i32) -> Result<(), OutboxError> {
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // Each step in its own transaction: an interrupted migration leaves a valid older version.
    let run = |sql: String| {
        conn.execute_batch(&sql)
            .map_err(|e| OutboxError::sqlite(path, e))
    };
    if version == 0 {
        let instance: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let instance: String = instance.iter().map(|b| format!("{b:02x}")).collect();
        run(format!(
            "BEGIN IMMEDIATE;
             {SCHEMA_V1}
             INSERT INTO meta (key, value) VALUES ('instance', '{instance}');
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = 1;
             COMMIT;"
        ))?;
    }
    // A step that is only its SQL.
    let plain = |step: i32, schema: &str| {
        if version >= step {
            return Ok(());
        }
        run(format!(
            "BEGIN IMMEDIATE;
             {schema}
             PRAGMA user_version = {step};
             COMMIT;"
        ))
    };
    plain(2, SCHEMA_V2)?;
    plain(3, SCHEMA_V3)?;
    if version < 4 {
        let v4 = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.execute_batch(SCHEMA_V4)?;
            to_ranges(conn)?;
            conn.execute_batch("DROP INDEX records_batch; PRAGMA user_version = 4; COMMIT")
        };
        v4().map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            OutboxError::sqlite(path, e)
        })?;
    }
    plain(5, SCHEMA_V5)?;
    if version < 6 {
        // Dedupe keys of places in a file take their short form: what is read again after
        // the upgrade must meet the key it had before.
        conn.create_scalar_function(
            "shorten_dkey",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| {
                let old = ctx.get_raw(0).as_blob()?;
                Ok(super::keys::shorten(old).map(|k| k.to_vec()))
            },
        )
        .map_err(|e| OutboxError::sqlite(path, e))?;
        run(format!(
            "BEGIN IMMEDIATE;
             {SCHEMA_V6}
             UPDATE records SET dkey = shorten_dkey(dkey)
              WHERE length(dkey) = 16 AND shorten_dkey(dkey) IS NOT NULL;
             PRAGMA user_version = 6;
             COMMIT;"
        ))?;
        let _ = conn.remove_function("shorten_dkey", 1);
    }
    plain(7, SCHEMA_V7)?;
    plain(8, SCHEMA_V8)?;
    plain(9, SCHEMA_V9)?;
    Ok(())
}

/// Turns version 3's per-record batch tags into version 4's ranges: every pending record is
/// moved to the end (its lane's open batches first, in order, then the rest), so that each
/// lane's pending records lie above its new `sent_to` and each open batch is one range with
/// the same records and key as before.
fn to_ranges(c: &Connection) -> rusqlite::Result<()> {
    let top: i64 = c.query_row("SELECT coalesce(max(id), 0) FROM records", [], |r| r.get(0))?;
    let lanes: Vec<i64> = c
        .prepare("SELECT id FROM lanes ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for lane in lanes {
        let batches: Vec<i64> = c
            .prepare("SELECT id FROM batches WHERE lane_id = ?1 ORDER BY id")?
            .query_map([lane], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut scanned = top;
        for batch in batches {
            let moved = super::move_to_end(
                c,
                "SELECT id FROM records WHERE batch_id = ?1 AND state = 0",
                &[&batch],
                None,
                super::Columns::BeforeRowHash,
            )?;
            match moved {
                Some(m) => {
                    c.execute(
                        "UPDATE batches SET first_id = ?1, last_id = ?2 WHERE id = ?3",
                        [m.first, m.last, batch],
                    )?;
                    scanned = m.last;
                }
                None => {
                    c.execute("DELETE FROM batches WHERE id = ?1", [batch])?;
                }
            }
        }
        // The records of the batches just moved are above `top` now, in no batch by tag.
        super::move_to_end(
            c,
            "SELECT id FROM records WHERE id <= ?1 AND lane_id = ?2 AND state = 0
             AND batch_id IS NULL",
            &[&top, &lane],
            None,
            super::Columns::BeforeRowHash,
        )?;
        c.execute(
            "UPDATE lanes SET sent_to = ?1, scanned_to = ?2 WHERE id = ?3",
            [top, scanned, lane],
        )?;
    }
    c.execute(
        "UPDATE records SET batch_id = NULL WHERE batch_id IS NOT NULL",
        [],
    )?;
    Ok(())
}
