//! End-to-end behaviour of the core pipeline: real files, a real SQLite outbox, real HTTP over
//! loopback to the fake injixo API.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dropped_records_arrive_exactly_once() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    for f in 0..10u64 {
        std::fs::write(
            env.exports.join(format!("export-{f}.ndjson")),
            events(f * 1000..(f + 1) * 1000),
        )
        .unwrap();
    }
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "10,000 records", || api.record_count() >= 10_000).await;
    daemon.stop().await;

    let got = arrivals(&api);
    assert_eq!(got.len(), 10_000, "every record arrived");
    assert!(got.values().all(|n| *n == 1), "no record arrived twice");
    assert!(
        api.accepted().iter().all(|a| a.records.len() <= 500),
        "batches respect batch_records"
    );
    let report = env.report();
    assert_eq!(report.lanes[0].pending, 0);
    assert_eq!(report.lanes[0].sent_kept, 10_000);
    assert_eq!(report.sources[0].records_total, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_files_are_deleted_or_moved_after_commit_and_same_content_is_not_reread() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let archive = env.dir.path().join("archive");
    let source = env.ndjson_source(
        "acd",
        "drop",
        &format!(
            "after = \"move\"\narchive_dir = {:?}\n",
            archive.display().to_string()
        ),
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    std::fs::write(env.exports.join("a.ndjson"), events(1..=3)).unwrap();
    let daemon = Daemon::start(config.clone());
    wait_for(LIMIT, "first file moved", || {
        archive.join("a.ndjson").exists()
    })
    .await;
    // The same export dropped again (a re-run of the ACD's job) is recognised by content.
    std::fs::write(env.exports.join("a.ndjson"), events(1..=3)).unwrap();
    std::fs::write(env.exports.join("b.ndjson"), events(4..=5)).unwrap();
    wait_for(LIMIT, "second round moved", || {
        archive.join("a.ndjson.1").exists() && archive.join("b.ndjson").exists()
    })
    .await;
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    daemon.stop().await;
    assert_eq!(api.record_count(), 5);
    assert!(std::fs::read_dir(&env.exports).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_are_mapped_with_time_zone_types_and_templates() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = format!(
        r#"[[source]]
name = "acd-csv"
type = "files"
integration_id = 77
emits = "contact_events"
path = {path:?}
format = "csv"
delimiter = ";"
settle = "100ms"
timestamp_format = "%d.%m.%Y %H:%M:%S"
timezone = "Europe/Berlin"
[source.map]
timestamp = "Beginn"
queueName = "Warteschlange"
queueIdentifier = {{ template = "{{Standort}}-{{Warteschlange}}" }}
channel = "Kanal"
offered = {{ value = true }}
handled = "Angenommen"
duration = "Gesprächszeit"
"#,
        path = env.exports.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    std::fs::write(
        env.exports.join("calls.csv"),
        "\u{feff}Beginn;Warteschlange;Standort;Kanal;Angenommen;Gesprächszeit\r\n\
         06.12.2021 11:34:22;\"Level 1; Support\";HH;Calls;ja-not-bool;1\r\n\
         06.07.2021 11:34:22;\"Level 1; Support\";HH;calls;Y;124,6\r\n\
         31.10.2021 02:30:00;Billing;M;chats;0;00:02:04\r\n",
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "2 records", || api.record_count() >= 2).await;
    wait_for(LIMIT, "the bad row parked", || {
        env.first_source().is_some_and(|s| s.parked_total == 1)
    })
    .await;
    daemon.stop().await;

    let records = api.records();
    assert_eq!(
        records[0],
        serde_json::json!({"properties":{"offered":true,"handled":true,"duration":124.6},
            "queueName":"Level 1; Support","queueIdentifier":"HH-Level 1; Support",
            "timestamp":"2021-07-06T09:34:22Z","channel":"calls"})
    );
    // 02:30 on the night clocks go back exists twice: the first (CEST) is taken.
    assert_eq!(records[1]["timestamp"], "2021-10-31T00:30:00Z");
    assert_eq!(records[1]["properties"]["handled"], false);
    assert_eq!(records[1]["properties"]["duration"], 124.0);
    assert_eq!(
        api.accepted()[0].meta,
        serde_json::json!({"integrationConfigurationId": 77})
    );
    let parked = &env.report().parked[0];
    assert_eq!(parked.origin, "calls.csv:2");
    assert!(
        parked.reason.contains("column `Angenommen` → handled"),
        "{}",
        parked.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_parked_with_file_and_line_and_the_rest_flows() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    let mut text = events(1..=2);
    text.push_str("{\"this is\": not json\n");
    text.push_str(&event(3).replace("\"calls\"", "\"pigeons\""));
    text.push('\n');
    text.push_str(&events(4..=5));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"{\"queueName\":\"M\xfcller\"}\n");
    std::fs::write(env.exports.join("day.ndjson"), bytes).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "4 records", || api.record_count() >= 4).await;
    daemon.stop().await;
    let report = env.report();
    let mut parked: Vec<_> = report
        .parked
        .iter()
        .map(|p| (p.origin.clone(), p.reason.clone()))
        .collect();
    parked.sort();
    assert_eq!(parked.len(), 3);
    assert_eq!(parked[2].0, "day.ndjson:7");
    assert!(parked[2].1.contains("not valid UTF-8"), "{}", parked[2].1);
    assert_eq!(parked[0].0, "day.ndjson:3");
    assert!(parked[0].1.contains("not valid JSON"));
    assert_eq!(parked[1].0, "day.ndjson:4");
    assert!(
        parked[1].1.contains("\"pigeons\" is not one of calls"),
        "{}",
        parked[1].1
    );
    assert_eq!(api.record_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_mode_reads_appended_lines_and_a_partial_line_only_once_complete() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(1..=2)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "2 records", || api.record_count() >= 2).await;

    // Half a line, as a writer flushes mid-record.
    let third = event(3);
    let (head, tail) = third.split_at(40);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(head.as_bytes()).unwrap();
    f.flush().unwrap();
    // Let several passes see the partial line (events and the 200 ms poll both fire).
    let committed = std::fs::metadata(&path).unwrap().len() - head.len() as u64;
    let seen = Instant::now();
    wait_for(LIMIT, "passes over the partial line", || {
        seen.elapsed() > Duration::from_millis(600)
    })
    .await;
    let cursor = &env.report().sources[0].cursors[0].value;
    assert_eq!(
        cursor["offset"], committed,
        "the cursor stops before the partial line"
    );
    f.write_all(tail.as_bytes()).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(events(4..=5).as_bytes()).unwrap();
    f.flush().unwrap();
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    daemon.stop().await;
    let ids: Vec<_> = api.records().iter().map(id_of).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        env.report().sources[0].parked_total,
        0,
        "the partial line was never parsed early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_exactly_where_the_committed_records_end() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..100)).unwrap();
    let daemon = Daemon::start(config.clone());
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    daemon.stop().await;

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(events(100..200).as_bytes()).unwrap();
    drop(f);
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "200 records", || api.record_count() >= 200).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 200);
    assert!(
        got.values().all(|n| *n == 1),
        "nothing re-sent after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_finishes_the_old_file_and_reads_the_new_one() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env
        .ndjson_source("acd", "tail", "")
        .replace("[\"*.ndjson\"]", "[\"live.ndjson\"]");
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..10)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "10 records", || api.record_count() >= 10).await;
    // logrotate `create`: the writer appends to the renamed file a little longer, then a new
    // file takes the name; the renamed one no longer matches `include`.
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::fs::rename(&path, env.exports.join("live.ndjson.1")).unwrap();
    old.write_all(events(10..20).as_bytes()).unwrap();
    old.write_all(b"{\"unterminated\":").unwrap();
    drop(old);
    std::fs::write(&path, events(20..30)).unwrap();
    wait_for(LIMIT, "30 records", || api.record_count() >= 30).await;
    wait_for(LIMIT, "the rotated file finished", || {
        env.first_source().is_some_and(|s| s.parked_total == 1)
    })
    .await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.len(), 30, "every complete line of both files");
    assert!(got.values().all(|n| *n == 1));
    // The unterminated last line of the rotated file is taken once it is quiet (and parked,
    // since it is not valid JSON) rather than lost or waited on forever.
    assert_eq!(env.report().sources[0].parked_total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_recreated_under_the_same_name_is_read_from_its_start() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..3)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    // Delete and recreate: on most file systems the new file gets the freed inode back.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, events(3..5)).unwrap();
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    daemon.stop().await;
    assert_eq!(arrivals(&api).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_csv_files_with_the_same_header_are_a_hundred_records() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = format!(
        "[[source]]\nname = \"csv\"\ntype = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\n\
         path = {:?}\nformat = \"csv\"\nsettle = \"50ms\"\n[source.map]\ntimestamp = \"t\"\nqueueName = \"q\"\n\
         queueIdentifier = \"q\"\nchannel = {{ value = \"calls\" }}\noffered = {{ value = true }}\n\
         handled = {{ value = true }}\nduration = \"d\"\n",
        env.exports.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    for i in 0..100 {
        std::fs::write(
            env.exports.join(format!("export-{i:03}.csv")),
            format!("t,q,d\n2024-05-01T08:00:00Z,Support,{i}\n"),
        )
        .unwrap();
    }
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    daemon.stop().await;
    assert_eq!(arrivals(&api).len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_delays_but_loses_nothing_and_keeps_order() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let config = env.write_config(&env.config_text(
        &api.url(),
        "batch_records = 50",
        &env.ndjson_source("acd", "tail", ""),
    ));
    let path = env.exports.join("live.ndjson");
    std::fs::write(&path, events(0..500)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "retries during the outage", || api.seen().len() >= 5).await;
    wait_for(LIMIT, "lane marked retrying", || env.health() == "retrying").await;
    assert_eq!(api.record_count(), 0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(events(500..1000).as_bytes()).unwrap();
    drop(f);
    api.set_outage(None);
    wait_for(LIMIT, "1000 records", || api.record_count() >= 1000).await;
    daemon.stop().await;
    let ids: Vec<_> = api.records().iter().map(id_of).collect();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>(), "in order, each once");
    assert_eq!(env.report().lanes[0].health, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_record_in_a_batch_of_500_becomes_a_dead_letter_and_499_arrive() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // The fake matches against its own (key-sorted) rendering of each record.
    api.reject_records_containing("\"duration\":250,");
    // The 500 lines are committed together, so they form one batch of 500.
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("day.ndjson"), events(0..500)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "499 records", || api.record_count() >= 499).await;
    wait_for(LIMIT, "a dead letter", || {
        env.try_report().is_some_and(|r| r.lanes[0].dead == 1)
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    assert_arrived_once(&api, (0..500).filter(|id| *id != 250));
    let report = env.report();
    let dead = &report.dead[0];
    assert_eq!(dead.status, 400);
    assert_eq!(dead.origin, "day.ndjson:251");
    assert!(dead.answer.contains("record refused"), "{}", dead.answer);
    assert!(dead.payload.contains("\"duration\":250"));
    // Bisection: the first request held all 500, and the records went out in few requests.
    assert_eq!(api.seen()[0].records, 0);
    assert!(api.seen().len() < 25, "{} requests", api.seen().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_pauses_the_lane_with_advice_and_a_new_key_resumes_it() {
    let env = Env::new();
    let api = FakeApi::start("the-new-key").await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("day.ndjson"), events(0..50)).unwrap();
    let daemon = Daemon::start(config.clone());
    wait_for(LIMIT, "lane paused", || env.health() == "paused").await;
    let lane = &env.report().lanes[0];
    assert!(
        lane.last_error.as_deref().unwrap().contains("regenerated"),
        "{:?}",
        lane.last_error
    );
    assert_eq!(lane.pending, 50, "nothing dropped while paused");
    assert_eq!(api.record_count(), 0);
    daemon.stop().await;

    // The operator writes the new key; after a restart (or the next probe) delivery resumes.
    std::fs::write(&env.key_file, "the-new-key\n").unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "50 records", || api.record_count() >= 50).await;
    settled(&env).await;
    daemon.stop().await;
    assert_eq!(env.report().lanes[0].health, "ok");
    assert_arrived_once(&api, 0..50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lane_picks_up_a_rotated_key_without_a_restart() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_token("rotated");
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("day.ndjson"), events(0..20)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "lane paused", || env.health() == "paused").await;
    std::fs::write(&env.key_file, "rotated").unwrap();
    wait_for(LIMIT, "20 records", || api.record_count() >= 20).await;
    settled(&env).await;
    daemon.stop().await;
    assert_arrived_once(&api, 0..20);
    assert_eq!(env.report().lanes[0].health, "ok");
    assert_eq!(env.report().lanes[0].dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.push_fault(Fault::RetryAfter(429, 2));
    api.push_fault(Fault::RetryAfter(503, 1));
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("day.ndjson"), events(0..10)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "10 records", || api.record_count() >= 10).await;
    daemon.stop().await;
    let seen = api.seen();
    assert_eq!(
        seen.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![429, 503, 200]
    );
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(2),
        "429 Retry-After: 2 honoured"
    );
    assert!(
        seen[2].at - seen[1].at >= Duration::from_secs(1),
        "503 Retry-After: 1 honoured"
    );
    let keys: Vec<_> = seen
        .iter()
        .map(|s| s.idempotency_key.clone().unwrap())
        .collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key across retries of a batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_dropped_connections_lose_nothing_and_duplicate_only_unanswered_batches() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.push_fault(Fault::Drop);
    api.push_fault(Fault::Slow(Duration::from_millis(1500)));
    api.push_fault(Fault::AcceptThenDrop);
    api.push_fault(Fault::Status(500));
    let config = env.write_config(&env.config_text(
        &api.url(),
        "timeout = \"500ms\"\nbatch_records = 100",
        &env.ndjson_source("acd", "drop", ""),
    ));
    std::fs::write(env.exports.join("day.ndjson"), events(0..300)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "300 records", || arrivals(&api).len() >= 300).await;
    wait_for(LIMIT, "the lane idle", || {
        env.try_report().is_some_and(|r| r.lanes[0].pending == 0)
    })
    .await;
    daemon.stop().await;

    // Every duplicate arrived in a request whose key had been accepted before: a retry of a
    // batch whose answer was lost, never a record enqueued twice.
    let repeated = records_in_resent_batches(&api);
    let total = api.record_count();
    let unique = arrivals(&api).len();
    assert_eq!(unique, 300);
    assert!(
        total - unique <= repeated / 2,
        "duplicates {} beyond repeated batches {repeated}",
        total - unique
    );
    assert!(
        env.report().lanes[0].unknown_outcome_retries >= 2,
        "unanswered retries are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lane_does_not_hold_up_the_others() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.refuse_endpoint(Some((injixo_sync::types::Emits::AgentStatuses, 403)));
    let statuses = env.dir.path().join("statuses");
    std::fs::create_dir_all(&statuses).unwrap();
    let sources = format!(
        "{}\n[[source]]\nname = \"states\"\ntype = \"files\"\nintegration_id = 8431\n\
         emits = \"agent_statuses\"\nexternal_system = \"My ACD\"\npath = {:?}\n\
         format = \"ndjson\"\nsettle = \"100ms\"\n",
        env.ndjson_source("calls", "drop", ""),
        statuses.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &sources));
    std::fs::write(
        statuses.join("s.ndjson"),
        r#"{"agentIdentifier":"bob@mycompany.com","activityIdentifier":"Break","startTime":"2021-12-06T10:00:00Z","endTime":"2021-12-06T10:15:00Z"}"#,
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "the agent-status lane paused", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().any(|l| l.health == "paused"))
    })
    .await;
    // Contact events keep flowing, one file after another, while the other lane is held.
    for f in 0..5u64 {
        std::fs::write(
            env.exports.join(format!("c{f}.ndjson")),
            events(f * 100..(f + 1) * 100),
        )
        .unwrap();
        wait_for(LIMIT, "contact events delivered", || {
            api.record_count() as u64 >= (f + 1) * 100
        })
        .await;
    }
    let report = env.try_report().unwrap();
    let paused = report
        .lanes
        .iter()
        .find(|l| l.emits == "agent_statuses")
        .unwrap();
    assert_eq!(paused.health, "paused");
    assert_eq!(paused.pending, 1, "the held record is kept");
    assert!(paused.last_error.as_deref().unwrap().contains("403"));

    api.refuse_endpoint(None);
    wait_for(LIMIT, "the agent status delivered", || {
        api.accepted()
            .iter()
            .any(|a| a.meta["externalSystem"] == "My ACD")
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_the_configured_proxy() {
    use tokio::io::AsyncReadExt;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // A forward proxy: note each request line, then relay the bytes to the API.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (log, upstream) = (seen.clone(), api.addr());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = proxy.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let n = client.peek(&mut head).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&head[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                log.lock().unwrap().push(line);
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                let _ = client.read(&mut [0u8; 1]).await;
            });
        }
    });
    let config = env.write_config(&env.config_text(
        &api.url(),
        &format!("proxy = {proxy_url:?}"),
        &env.ndjson_source("acd", "drop", ""),
    ));
    std::fs::write(env.exports.join("day.ndjson"), events(0..10)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "10 records", || api.record_count() >= 10).await;
    daemon.stop().await;
    let lines = seen.lock().unwrap().clone();
    let expected = format!(
        "POST {}/external-systems/contact-events HTTP/1.1",
        api.url()
    );
    assert!(lines.contains(&expected), "proxy saw {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_mix_of_api_faults_delays_but_delivers_everything() {
    let mut rng = seeded_rng("FAULT_SEED");
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    for _ in 0..40 {
        api.push_fault(match rng.u8(..7) {
            0 => Fault::Status(500),
            1 => Fault::RetryAfter(503, 1),
            2 => Fault::RetryAfter(429, 0),
            3 => Fault::Drop,
            4 => Fault::AcceptThenDrop,
            5 => Fault::Slow(Duration::from_millis(rng.u64(50..900))),
            _ => Fault::Status(502),
        });
    }
    let config = env.write_config(&env.config_text(
        &api.url(),
        "timeout = \"400ms\"\nbatch_records = 50",
        &env.ndjson_source("acd", "drop", ""),
    ));
    std::fs::write(env.exports.join("day.ndjson"), events(0..2000)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(120), "2,000 records", || {
        arrivals(&api).len() >= 2000
    })
    .await;
    wait_for(LIMIT, "the lane drained", || {
        env.try_report().is_some_and(|r| r.lanes[0].pending == 0)
    })
    .await;
    daemon.stop().await;

    let seen = api.seen();
    // After a 503 with Retry-After: 1, the next request waited at least that second.
    for pair in seen.windows(2) {
        if pair[0].status == 503 {
            assert!(
                pair[1].at - pair[0].at >= Duration::from_secs(1),
                "Retry-After not honoured"
            );
        }
    }
    let resent = records_in_resent_batches(&api);
    let duplicates = api.record_count() - 2000;
    assert!(
        duplicates <= resent,
        "{duplicates} duplicates outside resent batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_1252_csv_from_excel_is_read_as_text() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = format!(
        "[[source]]\nname = \"excel\"\ntype = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\n\
         path = {:?}\nformat = \"csv\"\ndelimiter = \";\"\nencoding = \"windows-1252\"\nsettle = \"50ms\"\n\
         [source.map]\ntimestamp = \"Zeit\"\nqueueName = \"Warteschlange\"\nqueueIdentifier = \"Warteschlange\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = \"Gesprächszeit\"\n",
        env.exports.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let text = "Zeit;Warteschlange;Gesprächszeit\r\n2024-05-01T08:00:00Z;Kündigung Müller;12,5\r\n";
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the file really is not UTF-8"
    );
    std::fs::write(env.exports.join("export.csv"), &bytes).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "1 record", || api.record_count() >= 1).await;
    daemon.stop().await;
    let record = &api.records()[0];
    assert_eq!(record["queueName"], "Kündigung Müller");
    assert_eq!(record["properties"]["duration"], 12.5);
}

/// A batch refused whole is sent in parts, each written down before it goes out. When the
/// process dies with a part in flight (the API may have kept it), that part goes out first
/// after the restart, under its own key, and the rest as a part of its own: no record of the
/// batch reaches the API under two keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_in_flight_at_a_crash_goes_out_again_under_its_own_key() {
    use injixo_sync::outbox::{BatchLimits, Commit, NewRecord, NextBatch, Outbox, dedupe_key};
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    // What the lane left behind: 100 records in one batch, its first half in flight.
    let (key, first, mid, last) = {
        let (outbox, writer) = Outbox::open(&env.state).unwrap();
        let source = outbox.source_id(&config.sources[0].name).await.unwrap();
        let lane = outbox.lane_id(&config.sources[0].lane).await.unwrap();
        let records = (0..100u64)
            .map(|i| NewRecord {
                dkey: dedupe_key(1, i),
                payload: serde_json::to_string(
                    &serde_json::from_str::<serde_json::Value>(&event(i)).unwrap(),
                )
                .unwrap(),
                origin: format!("day.ndjson:{}", i + 1),
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
        let limits = BatchLimits {
            max_records: 500,
            max_bytes: 1 << 20,
            linger: Duration::ZERO,
        };
        let NextBatch::Ready(batch) = outbox.next_batch(lane, None, limits).await.unwrap() else {
            panic!("a batch");
        };
        let ids: Vec<i64> = batch.records.iter().map(|(id, _)| *id).collect();
        outbox.begin_part(batch.id, ids[0], ids[49]).await.unwrap();
        drop(outbox);
        writer.join().unwrap();
        (batch.key, ids[0], ids[50], ids[99])
    };
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "100 records", || api.record_count() >= 100).await;
    wait_for(LIMIT, "nothing pending", || {
        env.try_report().is_some_and(|r| r.lanes[0].pending == 0)
    })
    .await;
    daemon.stop().await;
    let keys: Vec<(String, usize)> = api
        .accepted()
        .iter()
        .map(|a| (a.idempotency_key.clone().unwrap(), a.records.len()))
        .collect();
    assert_eq!(
        keys,
        [
            (format!("{key}-{first}-{}", mid - 1), 50),
            (format!("{key}-{mid}-{last}"), 50)
        ]
    );
    let got = arrivals(&api);
    assert_eq!(got.len(), 100);
    assert!(got.values().all(|n| *n == 1));
}
