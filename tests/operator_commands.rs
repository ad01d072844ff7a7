//! The operator's commands beside a running daemon: `dead list|retry|drop`, `agents`, `resend`,
//! and `send-test`.

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_dropped_from_the_command_line() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.reject_records_containing("\"duration\":7,");
    api.reject_records_containing("\"duration\":8,");
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("a.ndjson"), events(1..=10)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "two dead letters", || {
        env.try_report().is_some_and(|r| r.lanes[0].dead == 2)
    })
    .await;
    let cfg = env.config_file.to_str().unwrap();

    let (code, out) = cli(&["--config", cfg, "dead", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("acd a.ndjson:7 → HTTP 400"), "{out}");
    assert!(out.contains("record refused"), "{out}");
    let (_, json) = cli(&["--config", cfg, "dead", "list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let id_of_8 = listed
        .iter()
        .find(|d| d["origin"] == "a.ndjson:8")
        .and_then(|d| d["record_id"].as_i64())
        .unwrap();

    // The cause is fixed in injixo; record 7 is sent again, record 8 is given up.
    api.clear_rejections();
    let (code, out) = cli(&["--config", cfg, "dead", "drop", &id_of_8.to_string()]);
    assert_eq!((code, out.trim()), (0, "1 record(s) given up"));
    // Ids that are no dead letter are named, and the command fails.
    let (code, out) = cli(&[
        "--config",
        cfg,
        "dead",
        "retry",
        "99999",
        &id_of_8.to_string(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0 record(s) pending again"), "{out}");
    assert!(
        out.contains(&format!(
            "no dead letter #{id_of_8}, #99999 (see `injixo-sync dead list`)"
        )),
        "{out}"
    );
    let (code, out) = cli(&["--config", cfg, "dead", "drop", "99999"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no dead letter #99999"), "{out}");
    let (code, out) = cli(&["--config", cfg, "dead", "retry", "--all"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("1 record(s) pending again"), "{out}");
    // The daemon notices within a second (it used to wait up to a minute): no new input is
    // needed to wake the lane.
    wait_for(Duration::from_secs(10), "record 7 delivered", || {
        arrivals(&api).contains_key(&7)
    })
    .await;
    std::fs::write(env.exports.join("b.ndjson"), events(11..=12)).unwrap();
    wait_for(LIMIT, "records 11 and 12", || arrivals(&api).len() == 11).await;
    daemon.stop().await;

    let got = arrivals(&api);
    assert!(!got.contains_key(&8), "a dropped record is not sent");
    assert!(got.values().all(|n| *n == 1));
    let report = env.report();
    assert_eq!(report.lanes[0].dead, 0);
    assert_eq!(report.lanes[0].pending, 0);
    let (_, out) = cli(&["--config", cfg, "dead", "list"]);
    assert_eq!(out.trim(), "no dead letters");
}

#[test]
fn dead_retry_needs_ids_or_all() {
    let (code, out) = cli(&["--config", "/nonexistent.toml", "dead", "retry"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("required arguments were not provided"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_shows_the_whole_answer_and_explains_a_refusal() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let statuses = format!(
        "[[source]]\nname = \"states\"\ntype = \"files\"\nintegration_id = 8431\n\
         emits = \"agent_statuses\"\nexternal_system = \"My ACD\"\npath = {:?}\nformat = \"ndjson\"\n",
        env.exports.display().to_string()
    );
    env.write_config(&env.config_text(
        &api.url(),
        "",
        &(env.ndjson_source("acd", "drop", "") + &statuses),
    ));
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let args = |kind: &str| {
        vec![
            "--config".into(),
            cfg.clone(),
            "send-test".into(),
            "--type".into(),
            kind.into(),
        ]
    };

    let (code, out) = run(args("contact-event")).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HTTP 200\n{\"accepted\":1}"), "{out}");
    assert!(
        out.contains("ok: the API accepted the test record"),
        "{out}"
    );
    let (code, out) = run(args("agent-status")).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let accepted = api.accepted();
    assert_eq!(accepted[0].records[0]["queueName"], "injixo-sync test");
    assert_eq!(
        accepted[1].meta,
        serde_json::json!({"integrationConfigurationId": 8431, "externalSystem": "My ACD"})
    );

    // Two tests in one second are two tests: each under a key of its own.
    let (code, out) = run(args("contact-event")).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let keys: std::collections::HashSet<String> = api
        .accepted()
        .iter()
        .filter_map(|a| a.idempotency_key.clone())
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");

    api.set_token("regenerated");
    let (code, out) = run(args("contact-event")).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 401"), "{out}");
    assert!(
        out.contains("problem: the API answered 401 Unauthorized"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sent_are_listed_and_an_agents_records_are_sent_again() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = format!(
        "[[source]]\nname = \"states\"\ntype = \"files\"\nintegration_id = 7\nemits = \"agent_statuses\"\n\
         external_system = \"ACD\"\npath = {:?}\nformat = \"ndjson\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n",
        env.exports.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let status = |agent: &str, hour: u32| {
        format!(
            "{{\"agentIdentifier\":\"{agent}\",\"activityIdentifier\":\"ready\",\
             \"startTime\":\"2024-05-0{day}T{hour:02}:00:00Z\",\"endTime\":\"2024-05-0{day}T{hour:02}:30:00Z\"}}\n",
            day = 1 + hour / 24,
            hour = hour % 24
        )
    };
    let lines: String = [("anna", 8), ("ben", 8), ("anna", 30), ("ben", 31)]
        .iter()
        .map(|(a, h)| status(a, *h))
        .collect();
    std::fs::write(env.exports.join("s.ndjson"), lines).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "4 statuses", || api.record_count() >= 4).await;
    let cfg = env.config_file.to_str().unwrap();
    // The API holds them before the outbox has marked them sent (and noted their agents).
    wait_for(LIMIT, "4 statuses marked sent", || {
        env.try_report()
            .is_some_and(|r| r.lanes[0].delivered_total == 4)
    })
    .await;

    let (code, out) = cli(&["--config", cfg, "agents"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("7  ACD  anna"), "{out}");
    assert!(out.contains("7  ACD  ben"), "{out}");
    let (_, json) = cli(&["--config", cfg, "agents", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.len(), 2);

    // Anna was mapped in injixo after her data arrived: her statuses since 2 May again.
    let (code, out) = cli(&[
        "--config",
        cfg,
        "resend",
        "--since",
        "2024-05-02",
        "--agent",
        "anna",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("1 kept record(s)"), "{out}");
    // New input wakes the lane (an idle lane also looks again within a minute).
    std::fs::write(env.exports.join("t.ndjson"), status("carl", 40)).unwrap();
    wait_for(LIMIT, "the resent status", || api.record_count() >= 6).await;
    daemon.stop().await;
    let again: Vec<_> = api.records()[4..]
        .iter()
        .map(|r| (r["agentIdentifier"].clone(), r["startTime"].clone()))
        .collect();
    assert!(
        again.contains(&("anna".into(), "2024-05-02T06:00:00Z".into())),
        "{again:?}"
    );

    let (code, out) = cli(&["--config", cfg, "resend", "--since", "yesterday"]);
    assert_eq!(code, 1);
    assert!(out.contains("neither a date"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_name_for_a_known_queue_is_held_until_the_operator_decides() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let _ =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("a.ndjson"), events(1..=3)).unwrap();
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    // The queue was renamed in the ACD: same identifier, new name.
    let renamed = |ids: std::ops::RangeInclusive<u64>| {
        events(ids).replace(
            "\"queueName\":\"Support\"",
            "\"queueName\":\"Support Hamburg\"",
        )
    };
    std::fs::write(env.exports.join("b.ndjson"), renamed(4..=6)).unwrap();
    std::fs::write(env.exports.join("c.ndjson"), events(7..=8)).unwrap();
    wait_for(LIMIT, "the old name's records", || api.record_count() >= 5).await;
    wait_for(LIMIT, "the renamed ones held back", || {
        env.try_report()
            .is_some_and(|r| r.lanes[0].held == 3 && r.lanes[0].pending == 0)
    })
    .await;
    assert_eq!(api.record_count(), 5, "the renamed ones are held back");
    // More calls under the new name are held too, and the log says it once.
    std::fs::write(env.exports.join("b2.ndjson"), renamed(10..=10)).unwrap();
    wait_for(LIMIT, "the next one held back", || {
        env.try_report().is_some_and(|r| r.lanes[0].held == 4)
    })
    .await;
    let said = std::fs::read_to_string(&log)
        .unwrap()
        .matches("came with the new name \"Support Hamburg\"")
        .count();
    assert_eq!(said, 1, "said once");
    let cfg = env.config_file.to_str().unwrap();
    let (_, out) = cli(&["--config", cfg, "status"]);
    assert!(out.contains("4 record(s) held back"), "{out}");
    let (code, out) = cli(&["--config", cfg, "queues"]);
    assert_eq!(code, 1, "held records make `queues` fail: {out}");
    assert!(out.contains("1234  support  \"Support\"  calls"), "{out}");
    assert!(
        out.contains("HELD 4 record(s): configuration id 1234, identifier \"support\" under the new name \"Support Hamburg\" (injixo knows it as \"Support\")"),
        "{out}"
    );
    let decide = |action: &str| {
        cli(&[
            "--config",
            cfg,
            "queues",
            action,
            "--integration-id",
            "1234",
            "--identifier",
            "support",
            "--name",
            "Support Hamburg",
        ])
    };
    let (code, out) = decide("confirm");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 held record(s) pending again"), "{out}");
    // Nothing is held under that name any more: giving it up does nothing, and says so.
    let (code, out) = decide("drop");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing is held"), "{out}");
    std::fs::write(env.exports.join("d.ndjson"), renamed(9..=9)).unwrap();
    wait_for(LIMIT, "all 10", || api.record_count() >= 10).await;
    settled(&env).await;
    assert!(daemon.terminate().success());
    let got = arrivals(&api);
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|n| *n == 1));
    let (code, _) = cli(&["--config", cfg, "queues"]);
    assert_eq!(code, 0);
}

/// `check` sends each lane an empty batch (nothing is imported) and says which of a wrong key,
/// a configuration id the key may not import into, and an API out of reach it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_a_wrong_key_a_wrong_configuration_id_and_an_unreachable_api_apart() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let write = |url: &str| {
        std::fs::write(
            &env.config_file,
            env.config_text(url, "", &env.ndjson_source("acd", "drop", "")),
        )
        .unwrap();
    };
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let check = || {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || cli(&["--config", &cfg, "check"]))
    };
    write(&api.url());
    let (code, out) = check().await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("took the key and checked an empty test batch for contact_events #1234"),
        "{out}"
    );
    // The API refused the empty batch as a batch: said in words, not as `ok:` with its body.
    assert!(
        out.contains("note: API") && out.contains("saying \"`data` must be a non-empty array\""),
        "{out}"
    );
    assert!(!out.contains("ok: API http"), "{out}");
    assert!(out.contains("next: start the daemon"), "{out}");
    assert_eq!(api.record_count(), 0, "nothing imported");

    api.set_token("regenerated");
    let (code, out) = check().await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused the API key (HTTP 401"), "{out}");
    assert!(out.contains("Generate a key"), "{out}");

    api.set_token(KEY);
    api.refuse_endpoint(Some((injixo_sync::types::Emits::ContactEvents, 403)));
    let (code, out) = check().await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("took the key but refused configuration id 1234"),
        "{out}"
    );
    assert!(out.contains("check integration_id"), "{out}");

    write(&format!("http://127.0.0.1:{}", free_port()));
    let (code, out) = check().await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot reach the API at http://127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("Connection refused") || out.contains("connection refused"),
        "{out}"
    );
}

/// `parked list` groups what could not become records by source and reason, with counts and
/// the first row; `parked drop` gives a group up on purpose, and says when nothing matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_input_is_listed_by_reason_and_given_up_on_purpose() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    // 30 faxes (a channel the API does not take), 4 without a timestamp, 5 good ones.
    let mut rows = String::new();
    for i in 1..=30 {
        rows += &event(i).replace("\"channel\":\"calls\"", "\"channel\":\"fax\"");
        rows += "\n";
    }
    for i in 31..=34 {
        rows += &event(i).replace("\"timestamp\":\"2024-05-01T08:00:00Z\",", "");
        rows += "\n";
    }
    rows += &events(35..=39);
    std::fs::write(env.exports.join("a.ndjson"), rows).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "5 records and 34 parked rows", || {
        api.record_count() >= 5 && env.first_source().is_some_and(|s| s.parked_total == 34)
    })
    .await;
    let cfg = env.config_file.to_str().unwrap();

    let (code, out) = cli(&["--config", cfg, "parked", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("PARKED INPUT: 34 row(s) that could not become records, in 2 group(s)"),
        "{out}"
    );
    let fax = out.find("acd  30 row(s)").expect(&out);
    let undated = out.find("acd  4 row(s)").expect(&out);
    assert!(fax < undated, "the largest group first: {out}");
    // The first row of each group with its id, for `parked retry ID`.
    assert!(out.contains("first: #1 a.ndjson:1: {"), "{out}");
    assert!(out.contains(" a.ndjson:31: {"), "{out}");

    let (_, json) = cli(&["--config", cfg, "parked", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let groups = listed["parked"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{json}");
    assert_eq!(groups[0]["count"], 30);
    assert_eq!(groups[0]["example_origin"], "a.ndjson:1");
    let fax_reason = groups[0]["reason"].as_str().unwrap().to_owned();
    assert!(fax_reason.contains("fax"), "{fax_reason}");

    let (code, out) = cli(&["--config", cfg, "parked", "list", "--reason", "fax"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in 1 group(s)"), "{out}");
    // --exact: the whole reason, as listed; a part of it selects nothing.
    let (_, out) = cli(&[
        "--config",
        cfg,
        "parked",
        "list",
        "--reason",
        &fax_reason,
        "--exact",
    ]);
    assert!(out.contains("in 1 group(s)"), "{out}");
    let (_, out) = cli(&[
        "--config", cfg, "parked", "list", "--reason", "fax", "--exact", "--json",
    ]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["parked"].as_array().map(Vec::len), Some(0), "{out}");

    // Giving up needs a selection.
    let (code, out) = cli(&["--config", cfg, "parked", "drop"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("--source NAME, --reason TEXT, or --all"),
        "{out}"
    );
    let (code, out) = cli(&["--config", cfg, "parked", "drop", "--reason", "fax"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("30 parked row(s) given up"), "{out}");
    let (code, out) = cli(&["--config", cfg, "parked", "drop", "--reason", "fax"]);
    assert_eq!(code, 1, "nothing left to give up: {out}");
    let (_, out) = cli(&["--config", cfg, "parked", "list"]);
    assert!(out.contains("PARKED INPUT: 4 row(s)"), "{out}");
    let (code, out) = cli(&["--config", cfg, "parked", "drop", "--source", "acd"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&["--config", cfg, "parked", "list"]);
    assert!(out.contains("no parked input"), "{out}");
    daemon.stop().await;
    assert_eq!(api.record_count(), 5);
}
