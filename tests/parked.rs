//! The correction loop: rows parked under a wrong map are replayed, once the map is fixed,
//! exactly once (`parked retry`), with `preview --parked` showing the change before it is
//! made; against the real binary, beside a running daemon, through kill -9.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A CSV contact-events source whose `outcome` lookup knows only `known` values; the talk
/// time carries each row's id into `duration`.
fn calls_source(env: &Env, known: &str) -> String {
    format!(
        "[[source]]\nname = \"acd\"\ntype = \"files\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\npath = {path:?}\ninclude = [\"*.csv\"]\nformat = \"csv\"\n\
         settle = \"100ms\"\npoll_interval = \"200ms\"\n\
         [source.map]\ntimestamp = \"at\"\nqueueName = \"queue\"\nqueueIdentifier = \"queue\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\n\
         handled = {{ column = \"outcome\", values = {{ {known} }} }}\n\
         duration = {{ expr = \"seconds(talk)\" }}\n",
        path = env.exports.display().to_string()
    )
}

/// A calls export of `ids`: every third row's outcome is TRANSFER, which the first map does
/// not know. `order` chooses the column order of the file's header.
fn calls_file(ids: std::ops::Range<u64>, swapped: bool) -> String {
    let mut text = String::from(if swapped {
        "queue,talk,outcome,at\n"
    } else {
        "at,queue,outcome,talk\n"
    });
    for id in ids {
        let outcome = if id.is_multiple_of(3) {
            "TRANSFER"
        } else {
            "AGENT"
        };
        let at = format!("2024-05-01T08:{:02}:{:02}Z", id / 60 % 60, id % 60);
        let line = if swapped {
            format!("Support,{id},{outcome},{at}\n")
        } else {
            format!("{at},Support,{outcome},{id}\n")
        };
        text.push_str(&line);
    }
    text
}

/// A CSV agent-states source whose `state` lookup knows only `known` values.
fn states_source(env: &Env, known: &str) -> String {
    format!(
        "[[source]]\nname = \"acd\"\ntype = \"files\"\nintegration_id = 7\n\
         emits = \"agent_states\"\nexternal_system = \"ACD\"\npath = {path:?}\n\
         format = \"csv\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n\
         [source.map]\nagentIdentifier = \"agent\"\ntimestamp = \"at\"\n\
         activityIdentifier = {{ column = \"state\", values = {{ {known} }} }}\n",
        path = env.exports.display().to_string()
    )
}

fn with_listen(text: String, port: u16) -> String {
    format!("{text}\n[listen]\naddress = \"127.0.0.1:{port}\"\n")
}

/// Rows parked now; 0 before the daemon has made the state file.
fn parked_now(state: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT count(*) FROM parked", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// Runs `parked retry` and kills it with SIGKILL as soon as it has committed its first chunk
/// (or has finished): what it committed stays, what it had not is still parked.
async fn retry_killed_midway(config: &str, state: &Path, before: i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(["--config", config, "parked", "retry", "--source", "acd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while parked_now(state) == before && child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the retry never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "the retry was killed with {} of {before} rows still parked",
        parked_now(state)
    );
}

/// The "done means" of the correction loop: rows parked under a lookup that misses a value are
/// shown by `parked list` as one group with a count, `preview --parked` shows what the fixed
/// map makes of them, and `parked retry` beside the running daemon — once killed with -9
/// half-way, then run to its end, then run again — delivers each row's record exactly once. A
/// row still wrong stays parked with its reason, in `status` and `/metrics`. Two files with
/// different column orders are each re-read with their own header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_lookup_fixed_and_retried_delivers_each_parked_row_once() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.config_file.to_str().unwrap().to_owned();
    let first = calls_source(&env, "AGENT = true, HANG = false");
    env.write_config(&with_listen(env.config_text(&api.url(), "", &first), port));
    // 3,000 rows in two files, 1,000 of them TRANSFER; one row's talk time is no duration.
    std::fs::write(env.exports.join("a.csv"), calls_file(0..1500, false)).unwrap();
    let mut b = calls_file(1500..3000, true);
    b.push_str("Support,soon,AGENT,2024-05-01T09:00:00Z\n");
    std::fs::write(env.exports.join("b.csv"), b).unwrap();
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::start_logged(&env.config_file, &log);
    wait_serving(port).await;
    wait_for(LIMIT, "2,000 records delivered", || {
        api.record_count() >= 2000
    })
    .await;
    wait_for(LIMIT, "1,001 rows parked", || {
        parked_now(&env.state) == 1001
    })
    .await;

    // One group per reason, with a count and an example, not a thousand lines.
    let (code, list) = cli(&["--config", &config, "parked", "list"]);
    assert_eq!(code, 0, "{list}");
    assert!(list.contains("acd  1000 row(s)"), "{list}");
    assert!(
        list.contains("\"TRANSFER\" is not among the values"),
        "{list}"
    );
    assert!(list.contains("\"soon\" is not a duration"), "{list}");
    // Every row with its id and origin, a page at a time.
    let (code, rows) = cli(&["--config", &config, "parked", "list", "--rows", "--json"]);
    assert_eq!(code, 0, "{rows}");
    let rows: Value = serde_json::from_str(&rows).unwrap();
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1001);
    assert!(
        rows.iter()
            .all(|r| r["replayable"] == true && r["id"].as_i64().is_some())
    );
    assert!(rows.iter().any(|r| r["origin"] == "b.csv:1502"), "{rows:?}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("injixo_sync_source_parked_rows{")
                && l.contains("TRANSFER")
                && l.ends_with(" 1000")),
        "{metrics}"
    );

    // The map is fixed and the daemon reloads it.
    let fixed = calls_source(&env, "AGENT = true, HANG = false, TRANSFER = true");
    env.write_config(&with_listen(env.config_text(&api.url(), "", &fixed), port));
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    wait_for(LIMIT, "the reload", || generations_started(&log) == 2).await;

    // What the fixed map makes of them, before anything is changed.
    let (code, preview) = cli(&[
        "--config", &config, "preview", "--parked", "--source", "acd",
    ]);
    assert_eq!(code, 1, "one row would stay parked: {preview}");
    assert!(
        preview.contains("1001 row(s): 1000 record(s), 1 parked"),
        "{preview}"
    );
    assert!(preview.contains("\"handled\":true"), "{preview}");
    assert_eq!(parked_now(&env.state), 1001, "preview changes nothing");
    assert_eq!(api.record_count(), 2000);

    // Retried beside the running daemon: killed half-way, run to its end, run again.
    retry_killed_midway(&config, &env.state, 1001).await;
    let (code, out) = cli(&["--config", &config, "parked", "retry", "--source", "acd"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 row(s) still parked"), "{out}");
    assert!(out.contains("delivers them"), "{out}");
    assert!(!out.contains("WARNING"), "the daemon runs this file: {out}");
    // A retry that maps with a file the daemon has not loaded says so.
    let mut text = std::fs::read_to_string(&env.config_file).unwrap();
    text.push_str("\n# edited after the reload\n");
    std::fs::write(&env.config_file, text).unwrap();
    let (code, again) = cli(&["--config", &config, "parked", "retry", "--source", "acd"]);
    assert!(
        again.contains("WARNING: the running daemon was started or reloaded with another version"),
        "{again}"
    );
    assert_eq!(code, 1, "nothing left to replay: {again}");
    assert!(again.contains("0 row(s) replayed"), "{again}");
    assert_eq!(parked_now(&env.state), 1);

    wait_for(LIMIT, "3,000 records delivered", || {
        api.record_count() >= 3000
    })
    .await;
    settled(&env).await;
    daemon.assert_running();
    let ids: Vec<u64> = (0..3000).collect();
    assert_arrived_once(&api, ids.iter().copied());
    assert_eq!(api.record_count(), 3000, "no record twice");
    assert!(
        api.records()
            .iter()
            .filter(|r| id_of(r).is_multiple_of(3))
            .all(|r| r["properties"]["handled"] == Value::Bool(true)),
        "the replayed rows are mapped with the fixed lookup"
    );

    // What is left is named with its reason in `status`.
    let (_, status) = cli(&["--config", &config, "status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    let groups = status["parked_by_reason"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["count"], 1);
    assert!(groups[0]["reason"].as_str().unwrap().contains("\"soon\""));
    daemon.terminate();
}

/// Agent-state rows replayed follow the rules of any late change: beside a running daemon,
/// which holds the open states, a change that is still out of order stays parked saying so
/// and one that would change the states waits; with the daemon stopped it is applied, and its
/// interval delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_rows_replayed_follow_the_rules_of_late_changes() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.config_file.to_str().unwrap().to_owned();
    let source = |known: &str| states_source(&env, known);
    env.write_config(&env.config_text(
        &api.url(),
        "",
        &source("READY = \"available\", LOGOUT = \"logout\""),
    ));
    // Anna's lunch comes before her later changes; Ben's logout is his newest change.
    std::fs::write(
        env.exports.join("states.csv"),
        "agent,state,at\n\
         anna,READY,2024-05-01T08:00:00Z\n\
         ben,READY,2024-05-01T08:00:00Z\n\
         anna,LUNCH,2024-05-01T09:00:00Z\n\
         anna,READY,2024-05-01T10:00:00Z\n\
         anna,LOGOUT,2024-05-01T11:00:00Z\n\
         ben,LOGOFF,2024-05-01T09:00:00Z\n",
    )
    .unwrap();
    let daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "two rows parked", || parked_now(&env.state) == 2).await;
    wait_for(LIMIT, "anna's interval", || api.record_count() >= 1).await;
    settled(&env).await;

    env.write_config(&env.config_text(
        &api.url(),
        "",
        &source(
            "READY = \"available\", LOGOUT = \"logout\", LUNCH = \"lunch\", LOGOFF = \"logout\"",
        ),
    ));
    // The preview says what the retry will do: Anna's lunch is late against her stored states.
    let (code, preview) = cli(&["--config", &config, "preview", "--parked"]);
    assert_eq!(code, 1, "{preview}");
    assert!(
        preview.contains("PARKED out of order") && preview.contains("(replayed: "),
        "{preview}"
    );
    assert!(
        preview.contains("STATE agent \"ben\" logged out"),
        "{preview}"
    );

    // Beside the daemon: Anna's lunch is settled as late; Ben's logout waits.
    let (code, out) = cli(&["--config", &config, "parked", "retry", "--all"]);
    assert_eq!(code, 1, "nothing was taken out: {out}");
    assert!(out.contains("1 agent-state change(s) wait"), "{out}");
    assert!(out.contains("out of order"), "{out}");
    assert!(out.contains("(replayed: "), "{out}");
    assert_eq!(parked_now(&env.state), 2);
    daemon.terminate();

    // With the daemon stopped, Ben's logout closes his open state.
    let (code, out) = cli(&["--config", &config, "parked", "retry", "--all"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 row(s) replayed: 1 record(s) enqueued"),
        "{out}"
    );
    assert!(out.contains("1 row(s) still parked"), "{out}");
    let (code, _) = cli(&["--config", &config, "parked", "retry", "--all"]);
    assert_eq!(code, 1, "the second retry finds nothing to take out");
    let daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "ben's interval", || api.record_count() >= 2).await;
    settled(&env).await;
    daemon.terminate();
    let mut by_agent: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for r in api.records() {
        let s = |k: &str| r[k].as_str().unwrap().to_owned();
        by_agent.entry(s("agentIdentifier")).or_default().push((
            s("activityIdentifier"),
            s("startTime"),
            s("endTime"),
        ));
    }
    assert_eq!(
        by_agent["ben"],
        [(
            "available".to_owned(),
            "2024-05-01T08:00:00Z".to_owned(),
            "2024-05-01T09:00:00Z".to_owned()
        )],
        "{by_agent:?}"
    );
    assert_eq!(api.record_count(), 2, "{by_agent:?}");
    let left = all_parked(&env.state);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].origin, "states.csv:4");
    assert!(left[0].reason.contains("(replayed: "), "{}", left[0].reason);
}

/// A retry takes out the rows it read and no others: parked ids are never used again, so a
/// row parked after the rows a retry read were given up by another process is not taken
/// out in their place; and all or nothing, as agent-state replays ask, writes nothing when a
/// row is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_takes_out_only_the_rows_it_read() {
    use injixo_sync::outbox::{Commit, Parked, ParkedFilter, Retried};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outbox.db");
    let (outbox, writer, source, lane) = open_with_lane(&state, "acd").await;
    let park = |tag: &'static str| {
        let ob = outbox.clone();
        tokio::task::spawn_blocking(move || {
            let parked = (0..3)
                .map(|i| Parked {
                    origin: format!("{tag}.csv:{i}"),
                    reason: format!("{tag} is not among the values"),
                    raw: format!("{tag},{i}"),
                    replay: None,
                })
                .collect();
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
    };
    park("old").await.unwrap();
    let read = all_parked(&state);
    let old: Vec<i64> = read.iter().map(|r| r.id).collect();
    // Given up by another process, then new rows parked.
    injixo_sync::outbox::drop_parked(
        &state,
        &ParkedFilter {
            source: Some("acd".into()),
            reason: None,
            exact: false,
        },
    )
    .unwrap();
    park("new").await.unwrap();
    let ob = outbox.clone();
    let retried = old.clone();
    let (stale, late) = tokio::task::spawn_blocking(move || {
        let all = |ids: &[i64]| {
            ids.iter()
                .map(|id| (*id, Retried::Records(Vec::new())))
                .collect()
        };
        let stale = ob
            .replay_blocking(source, lane, all(&retried), Vec::new(), true)
            .unwrap();
        let late = ob
            .replay_blocking(source, lane, all(&retried), Vec::new(), false)
            .unwrap();
        (stale, late)
    })
    .await
    .unwrap();
    assert!(stale.stale && stale.replayed == 0, "{stale:?}");
    assert_eq!((late.replayed, late.gone), (0, 3), "{late:?}");
    let left = all_parked(&state);
    assert_eq!(left.len(), 3);
    assert!(
        left.iter()
            .all(|r| r.origin.starts_with("new") && !old.contains(&r.id))
    );
    drop(outbox);
    writer.join().unwrap();
}

/// Agent-state rows replayed with the daemon stopped are applied in the order they happened,
/// however many there are and in whichever order their files were read: a later file's
/// earlier changes are not refused as late because an earlier file held later ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_rows_replay_in_time_order_across_files() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.config_file.to_str().unwrap().to_owned();
    let source = |known: &str| states_source(&env, known);
    let changes = |from: u32| {
        let mut text = String::from("agent,state,at\n");
        for i in 0..300u32 {
            let secs = from + i * 10;
            let state = if i % 2 == 0 { "S1" } else { "S2" };
            text.push_str(&format!(
                "carl,{state},2024-05-01T{:02}:{:02}:{:02}Z\n",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            ));
        }
        text
    };
    env.write_config(&env.config_text(&api.url(), "", &source("READY = \"ready\"")));
    // The later hour first, then the earlier one.
    std::fs::write(env.exports.join("a-later.csv"), changes(10 * 3600)).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "300 rows parked", || parked_now(&env.state) == 300).await;
    std::fs::write(env.exports.join("b-earlier.csv"), changes(8 * 3600)).unwrap();
    wait_for(LIMIT, "600 rows parked", || parked_now(&env.state) == 600).await;
    daemon.terminate();

    env.write_config(&env.config_text(
        &api.url(),
        "",
        &source("READY = \"ready\", S1 = \"s1\", S2 = \"s2\""),
    ));
    let (code, out) = cli(&["--config", &config, "parked", "retry", "--all"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("600 row(s) replayed: 599 record(s) enqueued"),
        "{out}"
    );
    let daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "599 intervals", || api.record_count() >= 599).await;
    settled(&env).await;
    daemon.terminate();
    let mut starts: Vec<String> = api
        .records()
        .iter()
        .map(|r| r["startTime"].as_str().unwrap().to_owned())
        .collect();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), 599, "each interval once");
    assert_eq!(starts[0], "2024-05-01T08:00:00Z");
    assert_eq!(parked_now(&env.state), 0);
}
