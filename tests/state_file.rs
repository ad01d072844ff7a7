//! The state file is refused loudly, and left untouched, when it is not ours or is corrupt;
//! `check` integrity-checks it.

mod support;

use injixo_sync::outbox::{
    Batch, BatchLimits, Commit, Delivered, LaneId, NewRecord, NextBatch, Outbox, OutboxError,
    SourceId, dedupe_key, lane_depths,
};
use support::{all_parked, cli, open_with_lane};

fn config_for(dir: &std::path::Path, state: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("exports")).unwrap();
    std::fs::write(dir.join("key"), "k").unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[api]\ntoken_file = \"key\"\n[state]\npath = {:?}\n[[source]]\nname = \"a\"\n\
             type = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\npath = \"exports\"\n\
             format = \"ndjson\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// Commits `records` from a blocking thread, as a source does.
async fn commit_all(
    outbox: &Outbox,
    source: SourceId,
    lane: LaneId,
    records: Vec<NewRecord>,
) -> injixo_sync::outbox::Committed {
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || {
        ob.commit_blocking(
            source,
            lane,
            Commit {
                records,
                ..Commit::default()
            },
        )
        .unwrap()
    })
    .await
    .unwrap()
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    std::fs::write(&state, b"these are somebody's notes, not a database\n").unwrap();
    let err = Outbox::open(&state).err().expect("refused");
    assert!(matches!(err, OutboxError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("not an SQLite database"), "{err}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"these are somebody's notes, not a database\n"
    );
    let (code, out) = cli(&[
        "--config",
        config_for(dir.path(), &state).to_str().unwrap(),
        "check",
        "--offline",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("is refused"), "{out}");
}

#[test]
fn short_files_of_foreign_bytes_are_refused_and_kept() {
    // SQLite, not a sniff of the first bytes, tells them apart (see `schema::exists`).
    for len in [1usize, 15, 16, 99, 100, 511, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("outbox.db");
        let bytes: Vec<u8> = (0..len).map(|i| b"SQLite format 3\0junk"[i % 20]).collect();
        std::fs::write(&state, &bytes).unwrap();
        let err = Outbox::open(&state).err().expect("refused");
        assert!(
            matches!(err, OutboxError::Foreign { .. }),
            "{len} bytes: {err}"
        );
        assert_eq!(
            std::fs::read(&state).unwrap(),
            bytes,
            "{len} bytes: left as it was"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{len} bytes: nothing beside it: {names:?}");
    }
}

#[test]
fn an_empty_state_file_is_refused_never_taken_as_a_new_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    std::fs::write(&state, b"").unwrap();
    let err = Outbox::open(&state).err().expect("refused");
    assert!(matches!(err, OutboxError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("empty (0 bytes)"), "{err}");
    assert_eq!(
        std::fs::metadata(&state).unwrap().len(),
        0,
        "left as it was"
    );
    let config = config_for(dir.path(), &state);
    for args in [vec!["check", "--offline"], vec!["status"], vec!["run"]] {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend(&args);
        let (code, out) = cli(&all);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains("empty (0 bytes)"), "{args:?}: {out}");
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().len(),
        0,
        "left as it was"
    );
    // An SQLite database with nothing in it is not an outbox either.
    std::fs::remove_file(&state).unwrap();
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute_batch("PRAGMA user_version = 0; VACUUM;")
        .unwrap();
    let err = Outbox::open(&state).err().expect("refused");
    assert!(
        err.to_string().contains("without an injixo-sync outbox"),
        "{err}"
    );
}

#[test]
fn a_new_outbox_is_made_whole_under_a_temporary_name_and_linked_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nested").join("outbox.db");
    // What a crash while creating leaves: the temporary file, which the next start replaces.
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(dir.path().join("nested").join("outbox.db.new"), b"half").unwrap();
    let (outbox, writer) = Outbox::open(&state).unwrap();
    drop(outbox);
    writer.join().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.iter().any(|n| n.ends_with(".new")), "{names:?}");
    let conn = rusqlite::Connection::open(&state).unwrap();
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, injixo_sync::outbox::SCHEMA_VERSION);
}

/// A daemon and `import` started at the same moment both create the outbox: one file is
/// linked into place, and both open it.
#[test]
fn two_processes_creating_the_outbox_at_once_both_open_the_same_one() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("outbox.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let openers: Vec<_> = (0..2)
            .map(|_| {
                let (state, start) = (state.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let (outbox, writer) = Outbox::open(&state).expect("both open the outbox");
                    drop(outbox);
                    writer.join().unwrap();
                })
            })
            .collect();
        for o in openers {
            o.join().unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".new"))
            .collect();
        assert!(names.is_empty(), "temporary files left: {names:?}");
    }
}

#[test]
fn another_programs_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let other = rusqlite::Connection::open(&state).unwrap();
    other
        .execute_batch("CREATE TABLE invoices (id INTEGER)")
        .unwrap();
    drop(other);
    let err = Outbox::open(&state).err().expect("refused");
    assert!(err.to_string().contains("another program"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_outbox_is_refused_by_run_and_check_and_never_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    {
        let (outbox, writer, source, lane) = open_with_lane(&state, "a").await;
        let records = (0..20_000u64)
            .map(|i| NewRecord {
                dkey: dedupe_key(1, i),
                payload: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100)),
                origin: format!("f:{i}"),
                row_hash: None,
            })
            .collect();
        commit_all(&outbox, source, lane, records).await;
        drop(outbox);
        writer.join().unwrap();
    }
    // Checkpoint the WAL into the main file, then damage pages in the middle.
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 12_288] {
        *b = 0x5a;
    }
    std::fs::write(&state, &bytes).unwrap();

    let err = Outbox::open(&state).err().expect("refused");
    assert!(
        err.to_string().contains("corrupt") || err.to_string().contains("malformed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        bytes,
        "the file was left as it was"
    );
    let (code, out) = cli(&[
        "--config",
        config_for(dir.path(), &state).to_str().unwrap(),
        "check",
        "--offline",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("corrupt") || out.contains("malformed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_key_already_in_the_outbox_is_not_enqueued_again() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _writer, source, lane) = open_with_lane(&dir.path().join("o.db"), "a").await;
    let rec = |i| NewRecord {
        dkey: dedupe_key(7, i),
        payload: format!("{{\"n\":{i}}}"),
        origin: String::new(),
        row_hash: None,
    };
    let ob = outbox.clone();
    let (first, second) = tokio::task::spawn_blocking(move || {
        let a = ob
            .commit_blocking(
                source,
                lane,
                Commit {
                    records: vec![rec(1), rec(2)],
                    ..Commit::default()
                },
            )
            .unwrap();
        let b = ob
            .commit_blocking(
                source,
                lane,
                Commit {
                    records: vec![rec(2), rec(3)],
                    ..Commit::default()
                },
            )
            .unwrap();
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!((first.inserted, first.duplicates), (2, 0));
    assert_eq!((second.inserted, second.duplicates), (1, 1));
}

#[tokio::test]
async fn an_older_outbox_is_migrated_in_place_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let (outbox, writer, source, lane) = open_with_lane(&state, "a").await;
    let record = NewRecord {
        dkey: dedupe_key(1, 0),
        payload: "{}".into(),
        origin: "a:1".into(),
        row_hash: None,
    };
    commit_all(&outbox, source, lane, vec![record]).await;
    drop(outbox);
    writer.join().unwrap();
    // What version 1 wrote: no `agents` or `queues` table, no index of dropped records, batches
    // as record tags.
    let conn = rusqlite::Connection::open(&state).unwrap();
    as_version_3(&conn);
    conn.execute_batch(
        "DROP TABLE agents; DROP TABLE queues; DROP INDEX records_dropped;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let (outbox, writer) = Outbox::open(&state).expect("a version 1 outbox opens");
    drop(outbox);
    writer.join().unwrap();
    let conn = rusqlite::Connection::open(&state).unwrap();
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, injixo_sync::outbox::SCHEMA_VERSION);
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1, "migration keeps the records");
    conn.query_row("SELECT count(*) FROM agents", [], |r| r.get::<_, i64>(0))
        .expect("the agents table exists");
    // Pruning kept records reads indexes only, never the whole table.
    for state in [1, 3] {
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT id FROM records WHERE state = {state} AND sent_at < ?1 LIMIT 5000"
            ))
            .unwrap()
            .query_map([0], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains("INDEX records_"))
                && !plan.iter().any(|p| p == "SCAN records"),
            "state {state}: {plan:?}"
        );
    }
    // Version 7: a dead letter says whether it is a record that cannot be decoded; those of
    // version 6 were all refused by the API.
    conn.execute_batch(
        "UPDATE records SET state = 2;
         INSERT INTO dead (record_id, status, answer, at) SELECT id, 422, 'bad', 0 FROM records;",
    )
    .unwrap();
    as_version_6(&conn);
    // Version 8: a row parked before keeps only its text: listed, not replayed.
    conn.execute(
        "INSERT INTO parked (source_id, origin, reason, raw, at) VALUES (?1, 'old.csv:2', 'bad', 'x,y', 0)",
        [source.0],
    )
    .unwrap();
    drop(conn);
    let (outbox, writer) = Outbox::open(&state).expect("a version 6 outbox opens");
    drop(outbox);
    writer.join().unwrap();
    let conn = rusqlite::Connection::open(&state).unwrap();
    let (version, damaged): (i32, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM dead WHERE damaged = 0)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (version, damaged),
        (injixo_sync::outbox::SCHEMA_VERSION, 1),
        "the dead letter kept, not damaged"
    );
    let parked = all_parked(&state);
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].origin.as_str(), parked[0].replay.is_none()),
        ("old.csv:2", true)
    );
    let letters = injixo_sync::outbox::dead_letters(&state, None, 10).unwrap();
    assert_eq!(letters.len(), 1);
    assert!(!letters[0].damaged, "{:?}", letters[0]);
    conn.execute_batch("PRAGMA user_version = 99;").unwrap();
    drop(conn);
    match Outbox::open(&state) {
        Err(e @ OutboxError::Newer { .. }) => {
            assert!(e.to_string().contains("newer"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer outbox was opened"),
    }
}

#[tokio::test]
async fn lane_depths_count_open_batches_and_the_tail_up_to_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("o.db");
    let (outbox, _writer, source, lane) = open_with_lane(&state, "a").await;
    let records = (0..25)
        .map(|i| NewRecord {
            dkey: dedupe_key(3, i),
            payload: format!("{{\"n\":{i}}}"),
            origin: String::new(),
            row_hash: None,
        })
        .collect();
    commit_all(&outbox, source, lane, records).await;
    let limits = BatchLimits {
        max_records: 10,
        max_bytes: 1 << 20,
        linger: std::time::Duration::ZERO,
    };
    // Ten records in an open batch, fifteen in the tail above it.
    assert!(matches!(
        outbox.next_batch(lane, None, limits).await.unwrap(),
        NextBatch::Ready(b) if b.records.len() == 10
    ));
    let depth = |cap| {
        let rows = lane_depths(&state, cap).unwrap();
        assert_eq!(rows.len(), 1);
        (rows[0].pending, rows[0].oldest_pending_ms.is_some())
    };
    assert_eq!(depth(1_000), (25, true));
    assert_eq!(depth(20), (20, true), "counted up to the cap");
    assert_eq!(depth(5), (5, true));
}

/// Turns a current outbox back into what schema version 3 wrote: no delivered mark, no batch
/// ranges, batches as tags on records.
fn as_version_3(conn: &rusqlite::Connection) {
    as_version_6(conn);
    conn.execute_batch(
        "DROP TABLE problems; DROP TABLE dicts;
         ALTER TABLE sources DROP COLUMN skipped_total; ALTER TABLE sources DROP COLUMN merged_total;
         ALTER TABLE batches DROP COLUMN part_first; ALTER TABLE batches DROP COLUMN part_last;
         ALTER TABLE lanes DROP COLUMN sent_to; ALTER TABLE lanes DROP COLUMN pruned_to;
         ALTER TABLE batches DROP COLUMN first_id; ALTER TABLE batches DROP COLUMN last_id;
         DROP TABLE deliveries;
         CREATE INDEX records_batch ON records (batch_id, id) WHERE batch_id IS NOT NULL;
         PRAGMA user_version = 3;",
    )
    .unwrap();
}

/// Turns a current outbox back into what schema version 6 wrote: no damaged dead letters, no
/// index of parked rows' text, no hashes of the rows records were made of.
fn as_version_6(conn: &rusqlite::Connection) {
    as_version_7(conn);
    conn.execute_batch(
        "DROP INDEX dead_damaged; ALTER TABLE dead DROP COLUMN damaged;
         DROP INDEX parked_raw; ALTER TABLE records DROP COLUMN row_hash;
         PRAGMA user_version = 6;",
    )
    .unwrap();
}

/// Turns a current outbox back into what schema version 7 wrote: parked rows without what
/// replaying them needs.
fn as_version_7(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "DROP TABLE parked_headers; DROP TABLE parked;
         CREATE TABLE parked (id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL,
           origin TEXT NOT NULL, reason TEXT NOT NULL, raw TEXT NOT NULL, at INTEGER NOT NULL);
         CREATE INDEX parked_raw ON parked (source_id, raw);
         PRAGMA user_version = 7;",
    )
    .unwrap();
}

/// Version 6 keeps records compressed and places in files under short keys. A version 5
/// outbox (plain records, 16-byte keys) is migrated so that lines read again after the
/// upgrade are still known, and what it holds goes out as it was.
#[tokio::test]
async fn a_version_5_outbox_still_knows_what_it_read_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let record = |i: u64| NewRecord {
        dkey: dedupe_key(1, i * 180),
        payload: format!(
            r#"{{"queueIdentifier":"q","queueName":"Q","channel":"calls","timestamp":"2024-05-01T08:00:00Z","n":{i}}}"#
        ),
        origin: format!("calls.ndjson:{}", i + 1),
        row_hash: None,
    };
    let (outbox, writer, source, lane) = open_with_lane(&state, "a").await;
    let done = commit_all(&outbox, source, lane, (0..3000).map(record).collect()).await;
    assert_eq!(done.inserted, 3000);
    drop(outbox);
    writer.join().unwrap();
    let conn = rusqlite::Connection::open(&state).unwrap();
    injixo_sync::outbox::register_functions(&conn).unwrap();
    let compressed: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE typeof(payload) = 'blob' AND origin = ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(compressed >= 1000, "{compressed} of 3000 compressed");
    // As version 5 kept them.
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..3000u64 {
        let mut old = [0u8; 16];
        old[..8].copy_from_slice(&1i64.to_be_bytes());
        old[8..].copy_from_slice(&(i * 180).to_be_bytes());
        conn.execute(
            "UPDATE records SET dkey = ?1, payload = payload(payload),
             origin = origin(payload, origin) WHERE id = ?2",
            rusqlite::params![&old[..], i as i64 + 1],
        )
        .unwrap();
    }
    as_version_6(&conn);
    conn.execute_batch("DROP TABLE dicts; PRAGMA user_version = 5; COMMIT;")
        .unwrap();
    drop(conn);

    let (outbox, writer) = Outbox::open(&state).expect("a version 5 outbox opens");
    let again = commit_all(&outbox, source, lane, (0..3500).map(record).collect()).await;
    assert_eq!(
        (again.inserted, again.duplicates),
        (500, 3000),
        "the lines read before are known"
    );
    let limits = BatchLimits {
        max_records: 5000,
        max_bytes: 16 << 20,
        linger: std::time::Duration::ZERO,
    };
    let NextBatch::Ready(batch) = outbox.next_batch(lane, None, limits).await.unwrap() else {
        panic!("no batch");
    };
    let want: Vec<String> = (0..3500).map(|i| record(i).payload).collect();
    assert_eq!(payloads(&batch), want);
    drop(outbox);
    writer.join().unwrap();
    let (code, out) = cli(&[
        "--config",
        config_for(dir.path(), &state).to_str().unwrap(),
        "check",
        "--offline",
    ]);
    assert_eq!(code, 0, "{out}");
}

fn payloads(batch: &injixo_sync::outbox::Batch) -> Vec<&str> {
    batch.records.iter().map(|(_, p)| p.as_str()).collect()
}

async fn ready(outbox: &Outbox, lane: LaneId, delivered: Option<Delivered>) -> Batch {
    let limits = BatchLimits {
        max_records: 100,
        max_bytes: 1 << 20,
        linger: std::time::Duration::ZERO,
    };
    match outbox.next_batch(lane, delivered, limits).await.unwrap() {
        NextBatch::Ready(b) => b,
        other => panic!("no batch: {other:?}"),
    }
}

fn all_of(batch: &Batch) -> Delivered {
    Delivered {
        batch: batch.id,
        last: batch.records[batch.records.len() - 1].0,
    }
}

#[tokio::test]
async fn a_version_3_outbox_sends_its_open_batches_with_their_keys_after_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let (outbox, writer, source, lane) = open_with_lane(&state, "a").await;
    let records = (1..=10)
        .map(|i| NewRecord {
            dkey: dedupe_key(1, i),
            payload: format!("{{\"n\":{i}}}"),
            origin: format!("a:{i}"),
            row_hash: None,
        })
        .collect();
    commit_all(&outbox, source, lane, records).await;
    drop(outbox);
    writer.join().unwrap();
    // Version 3's picture of a lane mid-delivery: 1 and 2 delivered; 3 refused; 4 made pending
    // again by `resend` (below the batches, so `scanned_to` lowered); batch 1 in flight with 5
    // and 7 (6 refused out of it); batch 2 formed ahead with 8 and 9; 10 in no batch yet.
    let conn = rusqlite::Connection::open(&state).unwrap();
    as_version_3(&conn);
    conn.execute_batch(&format!(
        "UPDATE records SET state = 1, sent_at = 1 WHERE id IN (1, 2);
         UPDATE records SET state = 2 WHERE id IN (3, 6);
         INSERT INTO dead (record_id, status, answer, at) VALUES (3, 400, 'no', 1), (6, 422, 'no', 1);
         INSERT INTO batches (id, lane_id, idem_key, created) VALUES (1, {l}, 'key-one', 1),
           (2, {l}, 'key-two', 1);
         UPDATE records SET batch_id = 1 WHERE id IN (5, 7);
         UPDATE records SET batch_id = 2 WHERE id IN (8, 9);
         UPDATE lanes SET scanned_to = 3, delivered_total = 2 WHERE id = {l};",
        l = lane.0
    ))
    .unwrap();
    drop(conn);

    let (outbox, writer) = Outbox::open(&state).expect("a version 3 outbox opens");
    let first = ready(&outbox, lane, None).await;
    assert_eq!(
        (first.key.as_str(), payloads(&first)),
        ("key-one", vec![r#"{"n":5}"#, r#"{"n":7}"#])
    );
    // Sent again after a restart, the batch is the same.
    let again = ready(&outbox, lane, None).await;
    assert_eq!((again.id, payloads(&again)), (first.id, payloads(&first)));
    let second = ready(&outbox, lane, Some(all_of(&first))).await;
    assert_eq!(
        (second.key.as_str(), payloads(&second)),
        ("key-two", vec![r#"{"n":8}"#, r#"{"n":9}"#])
    );
    let third = ready(&outbox, lane, Some(all_of(&second))).await;
    assert_eq!(
        payloads(&third),
        vec![r#"{"n":4}"#, r#"{"n":10}"#],
        "then the rest, in order"
    );
    let limits = BatchLimits {
        max_records: 100,
        max_bytes: 1 << 20,
        linger: std::time::Duration::ZERO,
    };
    assert!(matches!(
        outbox
            .next_batch(lane, Some(all_of(&third)), limits)
            .await
            .unwrap(),
        NextBatch::Empty
    ));
    drop(outbox);
    writer.join().unwrap();
    let report = injixo_sync::outbox::inspect(&state, 10).unwrap();
    let l = &report.lanes[0];
    assert_eq!(
        (l.pending, l.sent_kept, l.dead, l.delivered_total),
        (0, 8, 2, 8)
    );
    let conn = rusqlite::Connection::open(&state).unwrap();
    let tagged: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE batch_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tagged, 0);
}

#[tokio::test]
async fn delivered_records_are_pruned_after_keep_sent_and_pending_and_dead_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("o.db");
    let (outbox, writer, source, lane) = open_with_lane(&state, "a").await;
    let records = (0..12_000)
        .map(|i| NewRecord {
            dkey: dedupe_key(7, i),
            payload: format!("{{\"n\":{i}}}"),
            origin: String::new(),
            row_hash: None,
        })
        .collect();
    commit_all(&outbox, source, lane, records).await;
    // 11,000 delivered in batches of 1,000 (one record of the first refused), 1,000 pending.
    let limits = BatchLimits {
        max_records: 1_000,
        max_bytes: 1 << 20,
        linger: std::time::Duration::ZERO,
    };
    let mut delivered = None;
    for i in 0..11 {
        let NextBatch::Ready(b) = outbox.next_batch(lane, delivered, limits).await.unwrap() else {
            panic!("batch {i} missing");
        };
        let done = all_of(&b);
        if i == 0 {
            outbox
                .mark_dead(b.id, b.records[0].0, 400, "no".into())
                .await
                .unwrap();
        }
        delivered = Some(done);
    }
    outbox.mark_sent(lane, delivered.unwrap()).await.unwrap();
    assert_eq!(
        outbox
            .prune_sent(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    let marked = injixo_sync::outbox::now_ms();
    while injixo_sync::outbox::now_ms() <= marked {
        std::thread::yield_now();
    }
    // More than one step of 5,000.
    assert_eq!(
        outbox.prune_sent(std::time::Duration::ZERO).await.unwrap(),
        10_999
    );
    assert_eq!(
        outbox.prune_sent(std::time::Duration::ZERO).await.unwrap(),
        0
    );
    let report = injixo_sync::outbox::inspect(&state, 10).unwrap();
    let l = &report.lanes[0];
    assert_eq!(
        (l.pending, l.sent_kept, l.dead, l.delivered_total),
        (1_000, 0, 1, 10_999)
    );
    let NextBatch::Ready(rest) = outbox.next_batch(lane, None, limits).await.unwrap() else {
        panic!("the pending records are gone");
    };
    assert_eq!(rest.records.len(), 1_000);
    assert_eq!(rest.records[0].1, r#"{"n":11000}"#);
    drop(outbox);
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_input_is_pruned_after_keep_parked_oldest_first() {
    use injixo_sync::outbox::{Parked, Place, Replay};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let (outbox, writer, source, lane) = open_with_lane(&state, "a").await;
    // Two files' headers: the old file's goes with its rows, the new one's stays.
    let header = |file: &str| -> std::sync::Arc<[String]> {
        vec!["call_id".to_owned(), format!("{file}_queue")].into()
    };
    let parked = (0..12_000)
        .map(|i| Parked {
            origin: format!("day.csv:{i}"),
            reason: "bad".into(),
            raw: String::new(),
            replay: Some(Replay {
                place: Place::File {
                    cursor: 1,
                    offset: i,
                },
                fields: Some(vec![i.to_string(), "q".into()]),
                header: Some(header(if i < 11_000 { "old" } else { "new" })),
                text: None,
            }),
        })
        .collect();
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || {
        ob.commit_blocking(
            source,
            lane,
            Commit {
                parked,
                ..Commit::default()
            },
        )
        .unwrap()
    })
    .await
    .unwrap();
    // The first 11,000 were parked 40 days ago; the last 1,000 just now.
    let forty_days_ago = injixo_sync::outbox::now_ms() - 40 * 86_400_000;
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute(
            "UPDATE parked SET at = ?1 WHERE id <= (SELECT min(id) + 10999 FROM parked)",
            [forty_days_ago],
        )
        .unwrap();
    let keep = std::time::Duration::from_secs(30 * 86_400);
    assert_eq!(outbox.prune_parked(keep).await.unwrap(), 11_000);
    assert_eq!(outbox.prune_parked(keep).await.unwrap(), 0);
    drop(outbox);
    writer.join().unwrap();
    let left: Vec<String> = rusqlite::Connection::open(&state)
        .unwrap()
        .prepare("SELECT origin FROM parked ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left.len(), 1_000);
    assert_eq!(left[0], "day.csv:11000");
    let headers: Vec<String> = rusqlite::Connection::open(&state)
        .unwrap()
        .prepare("SELECT columns FROM parked_headers")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        headers,
        [r#"["call_id","new_queue"]"#],
        "one header per file, kept while named"
    );
}

/// A state file the service user may not write (read-only, or owned by another user after a
/// restore done as root): `check` names it and the fix, and `run` refuses naming it, without
/// leaving a read-only `-shm` file behind.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_the_service_user_cannot_write_is_named_by_check_and_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_dir = root.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = state_dir.join("outbox.db");
    {
        let (outbox, writer, _, _) = open_with_lane(&state, "a").await;
        drop(outbox);
        writer.join().unwrap();
    }
    let config = config_for(root, &state);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    // As root every file is writable: run the commands as an unprivileged user, as the
    // service is run.
    let as_service_user = |args: &[&str]| {
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_injixo-sync"));
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        };
        let out = cmd
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .output()
            .expect("setpriv (util-linux) runs the binary as nobody");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = as_service_user(&["check", "--offline"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the state file {} is not writable by",
            state.display()
        )),
        "{out}"
    );
    assert!(out.contains("chown -R injixo-sync:"), "{out}");
    let (code, out) = as_service_user(&["run"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is not writable by"), "{out}");
    let left: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["outbox.db"], "nothing made beside it");
    // The file writable, its folder not: SQLite could not make the -wal and -shm files.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = as_service_user(&["check", "--offline"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "its folder {} is not writable by",
            state_dir.display()
        )),
        "{out}"
    );
    // A -shm file left by another user (a daemon once started as root).
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let shm = state_dir.join("outbox.db-shm");
    std::fs::write(&shm, b"").unwrap();
    std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o444)).unwrap();
    let (code, out) = as_service_user(&["check", "--offline"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "its -shm file {} is not writable by",
            shm.display()
        )),
        "{out}"
    );
    assert!(out.contains("chown -R injixo-sync:"), "{out}");
    std::fs::remove_file(&shm).unwrap();
    let (code, out) = as_service_user(&["check", "--offline"]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The outbox deleted by hand after a crash, its -wal and -shm left behind: `run` would make
/// a new outbox that SQLite merges the old log into, then call it corrupt. `run` and `check`
/// refuse before anything is created, naming the files and the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_wal_without_its_outbox_is_refused_before_anything_is_created() {
    use support::*;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("0.ndjson"), events(0..500)).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_for(
        std::time::Duration::from_secs(60),
        "500 records read",
        || env.first_source().is_some_and(|s| s.records_total >= 500),
    )
    .await;
    daemon.kill9();
    let side = |suffix: &str| {
        let mut p = env.state.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let (wal, shm) = (side("-wal"), side("-shm"));
    assert!(wal.exists() && shm.exists(), "kill -9 leaves the log");
    std::fs::remove_file(&env.state).unwrap();
    let cfg = env.config_file.to_str().unwrap();
    let (code, out) = cli_within(
        &["--config", cfg, "run"],
        std::time::Duration::from_secs(15),
    );
    assert_eq!(code, 1, "{out}");
    for named in [&env.state, &wal, &shm] {
        assert!(out.contains(&named.display().to_string()), "{out}");
    }
    assert!(
        out.contains("Nothing was created") && out.contains("move them away"),
        "{out}"
    );
    assert!(!env.state.exists(), "no new outbox was made");
    let (code, out) = env.check_offline();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&wal.display().to_string()), "{out}");
    // Moved away, as the message says: a new outbox starts.
    let away = env.dir.path().join("away");
    std::fs::create_dir_all(&away).unwrap();
    for f in [&wal, &shm] {
        std::fs::rename(f, away.join(f.file_name().unwrap())).unwrap();
    }
    let mut daemon = Process::start(&env.config_file);
    wait_for(std::time::Duration::from_secs(60), "a new outbox", || {
        env.try_report().is_some()
    })
    .await;
    daemon.assert_running();
    assert_eq!(daemon.terminate().code(), Some(0));
}
