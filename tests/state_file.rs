//! The state file is refused loudly, and left untouched, when it is not ours or is corrupt;
//! `check` integrity-checks it.

mod support;

use injixo_sync::outbox::{
    BatchLimits, Commit, LaneId, NewRecord, NextBatch, Outbox, OutboxError, SourceId, dedupe_key,
    lane_depths,
};
use injixo_sync::types::{Emits, LaneKey, SourceName};
use support::cli;

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

/// An outbox with one source and one lane registered.
async fn open_with_lane(
    path: &std::path::Path,
) -> (Outbox, std::thread::JoinHandle<()>, SourceId, LaneId) {
    let (outbox, writer) = Outbox::open(path).unwrap();
    let source = outbox
        .source_id(&SourceName::parse("a").unwrap())
        .await
        .unwrap();
    let lane = outbox
        .lane_id(&LaneKey {
            emits: Emits::ContactEvents,
            integration_id: 1,
            external_system: None,
        })
        .await
        .unwrap();
    (outbox, writer, source, lane)
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
        let (outbox, writer, source, lane) = open_with_lane(&state).await;
        let records = (0..20_000u64)
            .map(|i| NewRecord {
                dkey: dedupe_key(1, i),
                payload: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100)),
                origin: format!("f:{i}"),
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
    let (outbox, _writer, source, lane) = open_with_lane(&dir.path().join("o.db")).await;
    let rec = |i| NewRecord {
        dkey: dedupe_key(7, i),
        payload: format!("{{\"n\":{i}}}"),
        origin: String::new(),
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
    let (outbox, writer, source, lane) = open_with_lane(&state).await;
    let record = NewRecord {
        dkey: dedupe_key(1, 0),
        payload: "{}".into(),
        origin: "a:1".into(),
    };
    commit_all(&outbox, source, lane, vec![record]).await;
    drop(outbox);
    writer.join().unwrap();
    // What version 1 wrote: no `agents` or `queues` table, no index of dropped records.
    let conn = rusqlite::Connection::open(&state).unwrap();
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
    assert_eq!(version, 3);
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
    conn.execute_batch("PRAGMA user_version = 4;").unwrap();
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
    let (outbox, _writer, source, lane) = open_with_lane(&state).await;
    let records = (0..25)
        .map(|i| NewRecord {
            dkey: dedupe_key(3, i),
            payload: format!("{{\"n\":{i}}}"),
            origin: String::new(),
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
        (rows[0].1, rows[0].2.is_some())
    };
    assert_eq!(depth(1_000), (25, true));
    assert_eq!(depth(20), (20, true), "counted up to the cap");
    assert_eq!(depth(5), (5, true));
}
