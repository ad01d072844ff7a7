//! A record the outbox cannot decode (its stored bytes damaged, cut short, or its dictionary
//! damaged) is set aside as a damaged dead letter, its stored bytes kept as they are: its lane
//! delivers every other record exactly once, compaction passes over it, and `status`,
//! `dead list`, `/readyz`, `/metrics` and `check` name it. Each test damages the real state
//! file with SQLite while no daemon runs, as a failing disk or a stray write would.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use injixo_sync::outbox::{
    BatchLimits, Commit, Delivered, LaneId, NewRecord, NextBatch, Outbox, natural_key,
};
use injixo_sync::types::{Emits, LaneKey, SourceName};
use support::*;

const LIMIT: Duration = Duration::from_secs(90);
const LANE: &str = r#"{endpoint="contact_events",integration_id="1234",external_system=""}"#;

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("daemon answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A connection to the state file with the outbox's `payload()` function, for reading what a
/// record holds before damaging it.
fn open_state(env: &Env) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(&env.state).unwrap();
    injixo_sync::outbox::register_functions(&conn).unwrap();
    conn
}

/// The event id (see [`event`]) a record holds, read through `payload()`.
fn event_id(conn: &rusqlite::Connection, record: i64) -> u64 {
    let payload: String = conn
        .query_row(
            "SELECT payload(payload) FROM records WHERE id = ?1",
            [record],
            |r| r.get(0),
        )
        .unwrap();
    id_of(&serde_json::from_str(&payload).unwrap())
}

/// Reads `n` events into the outbox while the API answers 503, so that every record is
/// pending (some in batches already formed), then stops the daemon. The first 500 come in a
/// commit of their own, before the lane has a dictionary, and are kept plain; the rest are
/// compressed.
async fn read_while_the_api_is_down(env: &Env, api: &FakeApi, config: &str, n: u64) {
    api.set_outage(Some((503, None)));
    let config = env.write_config(config);
    let file = env.exports.join("day.ndjson");
    std::fs::write(&file, events(0..500)).unwrap();
    let daemon = Daemon::start(config);
    let read = |count: u64| {
        move || {
            env.first_source()
                .is_some_and(|s| s.records_total == count as i64)
        }
    };
    wait_for(LIMIT, "the first 500 events read", read(500)).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, events(500..n).as_bytes()).unwrap();
    drop(f);
    wait_for(LIMIT, "every event read into the outbox", read(n)).await;
    daemon.stop().await;
    api.set_outage(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_set_aside_and_every_other_record_arrives_once() {
    const N: u64 = 3000;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(
            &api.url(),
            "batch_records = 200",
            &env.ndjson_source("acd", "tail", "")
        )
    );
    read_while_the_api_is_down(&env, &api, &config, N).await;

    // Three ways a record is damaged: a plain record cut to one byte, a compressed record
    // overwritten with garbage (its dictionary id then names none), a compressed record cut
    // to one byte. The first lies in a batch formed while the API was down.
    let conn = open_state(&env);
    let plain: i64 = conn
        .query_row(
            "SELECT id FROM records WHERE typeof(payload) = 'text' ORDER BY id LIMIT 1 OFFSET 50",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let packed: Vec<i64> = conn
        .prepare(
            "SELECT id FROM records WHERE typeof(payload) = 'blob' ORDER BY id LIMIT 2 OFFSET 300",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (garbage, cut) = (packed[0], packed[1]);
    let damaged: Vec<u64> = [plain, garbage, cut]
        .iter()
        .map(|id| event_id(&conn, *id))
        .collect();
    conn.execute(
        "UPDATE records SET payload = substr(payload, 1, 1) WHERE id IN (?1, ?2)",
        [plain, cut],
    )
    .unwrap();
    conn.execute(
        "UPDATE records SET payload = CAST('garbage!' AS BLOB) WHERE id = ?1",
        [garbage],
    )
    .unwrap();
    let stored: Vec<u8> = conn
        .query_row(
            "SELECT payload FROM records WHERE id = ?1",
            [garbage],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);

    let daemon = Daemon::start(env.write_config(&config));
    let expected: Vec<u64> = (0..N).filter(|id| !damaged.contains(id)).collect();
    wait_for(LIMIT, "every undamaged record delivered", || {
        api.record_count() >= expected.len()
    })
    .await;
    settled(&env).await;
    assert_arrived_once(&api, expected.iter().copied());

    // Set aside as damaged dead letters, the stored bytes kept as they were.
    let report = env.report();
    assert_eq!(report.lanes[0].dead, 3);
    assert_eq!(report.lanes[0].damaged, 3);
    let conn = open_state(&env);
    let kept: Vec<u8> = conn
        .query_row(
            "SELECT payload FROM records WHERE id = ?1",
            [garbage],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, stored, "the damaged bytes are kept for a look");
    drop(conn);

    let cfg = env.config_file.to_str().unwrap();
    let (code, list) = cli(&["--config", cfg, "dead", "list"]);
    assert_eq!(code, 0, "{list}");
    for id in [plain, garbage, cut] {
        assert!(list.contains(&format!("#{id} ")), "#{id} missing:\n{list}");
    }
    assert_eq!(list.matches("DAMAGED").count(), 3, "{list}");
    // 'g' (0x67) read as the dictionary id.
    assert!(list.contains("dictionary 103"), "{list}");
    let (code, status) = cli(&["--config", cfg, "status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("damaged"), "{status}");
    assert!(status.contains("3 record(s) cannot be decoded"), "{status}");
    assert!(status.contains(&format!("#{garbage} ")), "{status}");

    // The lane flows, so the daemon stays ready; the damage is a warning a person must see.
    let base = format!("http://127.0.0.1:{port}");
    let (code, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let warnings = ready["warnings"].to_string();
    assert!(
        warnings.contains("3 record(s) cannot be decoded") && warnings.contains("dead list"),
        "{ready}"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample_value(&metrics, &format!("injixo_sync_lane_damaged_records{LANE}")),
        Some(3.0),
        "{metrics}"
    );
    let (code, out) = env.check_offline();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("3 damaged record(s)") && out.contains("dead drop"),
        "{out}"
    );

    // A retry would send garbage: refused. A drop gives them up.
    let (code, out) = cli(&["--config", cfg, "dead", "retry", &garbage.to_string()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot be decoded"), "{out}");
    let (code, out) = cli(&["--config", cfg, "dead", "retry", "--all"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot be decoded"), "{out}");
    assert_eq!(env.report().lanes[0].damaged, 3, "nothing retried");
    let ids: Vec<String> = [plain, garbage, cut]
        .iter()
        .map(|i| i.to_string())
        .collect();
    let mut args = vec!["--config", cfg, "dead", "drop"];
    args.extend(ids.iter().map(String::as_str));
    let (code, out) = cli(&args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 record(s) given up"), "{out}");
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample_value(&metrics, &format!("injixo_sync_lane_damaged_records{LANE}")),
        Some(0.0),
        "{metrics}"
    );
    daemon.stop().await;
    let (code, out) = env.check_offline();
    assert_eq!(code, 0, "{out}");
    assert_arrived_once(&api, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dictionary_sets_its_records_aside_and_the_rest_arrive() {
    const N: u64 = 1500;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.config_text(
        &api.url(),
        "batch_records = 200",
        &env.ndjson_source("acd", "tail", ""),
    );
    read_while_the_api_is_down(&env, &api, &config, N).await;

    let conn = open_state(&env);
    let dict: i64 = conn
        .query_row("SELECT id FROM dicts", [], |r| r.get(0))
        .unwrap();
    let packed: HashSet<u64> = conn
        .prepare("SELECT id FROM records WHERE typeof(payload) = 'blob'")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|id| event_id(&conn, id.unwrap()))
        .collect();
    assert!(!packed.is_empty(), "some records were compressed");
    conn.execute(
        "UPDATE dicts SET dict = zeroblob(length(dict)) WHERE id = ?1",
        [dict],
    )
    .unwrap();
    drop(conn);

    let daemon = Daemon::start(env.write_config(&config));
    let expected: Vec<u64> = (0..N).filter(|id| !packed.contains(id)).collect();
    wait_for(
        LIMIT,
        "every record of a sound dictionary delivered",
        || api.record_count() >= expected.len(),
    )
    .await;
    settled(&env).await;
    daemon.stop().await;
    assert_arrived_once(&api, expected);
    let report = env.report();
    assert_eq!(report.lanes[0].damaged as usize, packed.len());
    let (code, list) = cli(&[
        "--config",
        env.config_file.to_str().unwrap(),
        "dead",
        "list",
    ]);
    assert_eq!(code, 0, "{list}");
    assert_eq!(list.matches("DAMAGED").count(), packed.len());
    assert!(
        list.contains(&format!("dictionary {dict} does not match its hash")),
        "{list}"
    );
}

/// Compaction reads a record keyed by its content (for its payload's hash); a damaged one is
/// passed over and kept as it is, and every other delivered record is compacted.
#[tokio::test]
async fn compaction_passes_over_a_damaged_delivered_record() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let open = || async {
        let (outbox, writer) = Outbox::open(&state).unwrap();
        let source = outbox
            .source_id(&SourceName::parse("hook").unwrap())
            .await
            .unwrap();
        let lane = outbox
            .lane_id(&LaneKey {
                emits: Emits::ContactEvents,
                integration_id: 1234,
                external_system: None,
            })
            .await
            .unwrap();
        (outbox, writer, source, lane)
    };
    let (outbox, writer, source, lane) = open().await;
    // Enough records (in two commits) for the second to be compressed with a dictionary.
    for part in [0..1100u64, 1100..2200] {
        let records: Vec<NewRecord> = part
            .map(|i| NewRecord {
                dkey: natural_key(&format!("call-{i}"), 0),
                payload: event(i),
                origin: format!("push {i}"),
                row_hash: None,
            })
            .collect();
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
        .unwrap();
    }
    deliver_all(&outbox, lane).await;
    drop(outbox);
    writer.join().unwrap();

    let conn = rusqlite::Connection::open(&state).unwrap();
    let damaged: i64 = conn
        .query_row(
            "SELECT id FROM records WHERE typeof(payload) = 'blob' ORDER BY id LIMIT 1 OFFSET 10",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE records SET payload = CAST('garbage!' AS BLOB) WHERE id = ?1",
        [damaged],
    )
    .unwrap();
    drop(conn);

    let (outbox, writer, _, lane) = open().await;
    let (mut from, mut compacted) = (0, 0);
    loop {
        let (n, reached) = outbox
            .compact_step(lane.0, from)
            .await
            .expect("a damaged record does not stop compaction");
        compacted += n;
        match reached {
            Some(r) => from = r,
            None => break,
        }
    }
    drop(outbox);
    writer.join().unwrap();
    assert!(compacted > 2000, "{compacted} compacted");
    let conn = rusqlite::Connection::open(&state).unwrap();
    // Left whole: the damaged one, and those stored in fewer bytes than a compacted record
    // (`{}` and a 17-byte hash).
    let whole: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE id != ?1 AND payload IS NOT '{}'
             AND length(payload) + length(origin) > 19",
            [damaged],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(whole, 0, "every other delivered record compacted");
    let kept: Vec<u8> = conn
        .query_row(
            "SELECT payload FROM records WHERE id = ?1",
            [damaged],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, b"garbage!", "kept as it is");
}

/// Forms and marks every pending batch of `lane` delivered, as a lane does after 2xx answers.
async fn deliver_all(outbox: &Outbox, lane: LaneId) {
    let limits = BatchLimits {
        max_records: 500,
        max_bytes: 4 << 20,
        linger: Duration::ZERO,
    };
    let mut delivered = None;
    loop {
        match outbox.next_batch(lane, delivered, limits).await.unwrap() {
            NextBatch::Ready(b) => {
                delivered = Some(Delivered {
                    batch: b.id,
                    last: b.records[b.records.len() - 1].0,
                })
            }
            NextBatch::Empty => break,
            NextBatch::Linger(_) => unreachable!("no linger"),
        }
    }
}
