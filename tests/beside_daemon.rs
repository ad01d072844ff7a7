//! What operators do around a running daemon, one thing at a time: scrapes, every operator
//! command, a second daemon on the same state file, then `kill -9`. Every acknowledged record
//! must still arrive (`tests/chaos.rs` mixes all of it at random).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const TOKEN: &str = "push-token-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(60);

/// A webhook source `acd` and a files source `history` (for `import`), listening on `port`.
fn config(env: &Env, api_url: &str, port: u16) -> String {
    let token_file = env.dir.path().join("push-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let history = env.dir.path().join("history");
    std::fs::create_dir_all(&history).unwrap();
    format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(
            api_url,
            "",
            &format!(
                "[[source]]\nname = \"acd\"\ntype = \"webhook\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\ntoken_file = {token:?}\n\n\
                 [[source]]\nname = \"history\"\ntype = \"files\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\npath = {history:?}\nformat = \"ndjson\"\n\
                 mode = \"drop\"\nsettle = \"100ms\"\n",
                token = token_file.display().to_string(),
                history = history.display().to_string(),
            )
        )
    )
}

fn push_body(ids: std::ops::Range<u64>) -> String {
    format!("[{}]", ids.map(event).collect::<Vec<_>>().join(","))
}

async fn get(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn run_cli(args: Vec<String>) -> (i32, String) {
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Pending records per `status --json`, summed over lanes.
fn status_pending(cfg: &str) -> i64 {
    let (code, out) = run_cli(vec![
        "--config".into(),
        cfg.into(),
        "status".into(),
        "--json".into(),
    ]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["pending"].as_i64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_pushes_survive_scrapes_every_operator_command_and_kill_9() {
    let env = Env::new();
    let port = free_port();
    let dead_api = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&env.config_file, config(&env, &dead_api, port)).unwrap();
    let cfg = env.config_file.to_str().unwrap().to_owned();
    // Old exports, outside the source's directory: only `import --from` reads them.
    let old = env.dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("old.ndjson"), events(9000..9005)).unwrap();
    let old = old.display().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["dead", "retry", "--all"],
        vec!["dead", "drop", "--all"],
        vec!["dead", "list"],
        vec!["resend", "--since", "2000-01-01T00:00:00Z"],
        vec!["import", "--source", "history", "--from", &old],
        vec!["queues"],
        vec![
            "queues",
            "drop",
            "--integration-id",
            "1234",
            "--identifier",
            "support",
            "--name",
            "Other",
        ],
        vec!["agents"],
        vec!["status"],
        vec!["check", "--offline"],
    ];
    let client = reqwest::Client::new();
    let push_url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    let mut acknowledged = 0;
    for (round, command) in commands.iter().enumerate() {
        let mut daemon = Process::start(&env.config_file);
        wait_serving(port).await;
        assert_eq!(
            get(&client, &format!("http://127.0.0.1:{port}/metrics")).await,
            200
        );
        get(&client, &format!("http://127.0.0.1:{port}/readyz")).await;
        let mut args = vec!["--config".to_owned(), cfg.clone()];
        args.extend(command.iter().map(|s| s.to_string()));
        let (code, out) = tokio::task::spawn_blocking(move || run_cli(args))
            .await
            .unwrap();
        assert!(code == 0 || command[0] == "queues", "{command:?}: {out}");
        if command[0] == "import" {
            acknowledged += 5;
        }
        let base = 100 * round as u64;
        let r = client
            .post(&push_url)
            .header("content-type", "application/json")
            .body(push_body(base..base + 10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        acknowledged += 10;
        // `status` from another process sees what the daemon has committed.
        let pending = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || status_pending(&cfg)
        })
        .await
        .unwrap();
        assert_eq!(
            pending, acknowledged as i64,
            "after {command:?}: status must show every acknowledged record"
        );
        daemon.assert_running();
        daemon.kill9();
    }

    let api = FakeApi::start(KEY).await.unwrap();
    std::fs::write(&env.config_file, config(&env, &api.url(), port)).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "every acknowledged record", || {
        api.record_count() >= acknowledged
    })
    .await;
    daemon.kill9();
    let got = arrivals(&api);
    for round in 0..commands.len() as u64 {
        for id in 100 * round..100 * round + 10 {
            assert_eq!(got.get(&id), Some(&1), "record {id}");
        }
    }
    for id in 9000..9005 {
        assert_eq!(got.get(&id), Some(&1), "imported record {id}");
    }
    assert_eq!(got.len(), acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_file_refuses_at_once_naming_the_first() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    std::fs::write(
        &env.config_file,
        env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")),
    )
    .unwrap();
    for f in 0..5u64 {
        std::fs::write(
            env.exports.join(format!("{f}.ndjson")),
            events(f * 1000..(f + 1) * 1000),
        )
        .unwrap();
    }
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let mut first = Process::start(&env.config_file);
    wait_for(LIMIT, "the first daemon's outbox", || {
        env.try_report().is_some()
    })
    .await;
    let (code, out) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || cli_within(&["--config", &cfg, "run"], Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&env.state.display().to_string()), "{out}");
    assert!(
        out.contains(&format!("injixo-sync run (pid {})", first.pid())),
        "{out}"
    );
    // Operator commands keep working beside the one daemon.
    let (code, out) = run_cli(vec!["--config".into(), cfg.clone(), "status".into()]);
    assert_eq!(code, 0, "{out}");
    wait_for(LIMIT, "5000 records", || api.record_count() >= 5000).await;
    first.assert_running();
    assert_eq!(first.terminate().code(), Some(0));
    let got = arrivals(&api);
    assert_eq!(got.len(), 5000);
    assert!(got.values().all(|n| *n == 1), "each record once");
    // Once the first has stopped, the state file is free again.
    let again = Process::start(&env.config_file);
    wait_for(LIMIT, "a new daemon to take the lock", || {
        injixo_sync::outbox::lock_holder(&env.state).is_some()
    })
    .await;
    again.kill9();
    assert_eq!(
        injixo_sync::outbox::lock_holder(&env.state),
        None,
        "kill -9 lets go"
    );
}

/// The state file reached through a hard link in another folder is the same outbox: a
/// second daemon through it refuses at once, naming the first, instead of running beside it
/// with a lock file and a WAL of its own (and losing the first one's commits).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_through_a_hard_link_refuses_at_once_naming_the_first() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let text = env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", ""));
    std::fs::write(&env.config_file, &text).unwrap();
    std::fs::write(env.exports.join("0.ndjson"), events(0..1000)).unwrap();
    let mut first = Process::start(&env.config_file);
    wait_for(LIMIT, "the first daemon's outbox", || {
        env.try_report().is_some()
    })
    .await;
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let link = elsewhere.join("link.db");
    std::fs::hard_link(&env.state, &link).unwrap();
    let other = env.dir.path().join("other.toml");
    std::fs::write(
        &other,
        text.replace(
            &format!("path = {:?}", env.state.display().to_string()),
            &format!("path = {:?}", link.display().to_string()),
        ),
    )
    .unwrap();
    let (code, out) = tokio::task::spawn_blocking(move || {
        cli_within(
            &["--config", other.to_str().unwrap(), "run"],
            Duration::from_secs(15),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&link.display().to_string()), "{out}");
    assert!(
        out.contains(&format!("injixo-sync run (pid {})", first.pid()))
            && out.contains("hard link"),
        "{out}"
    );
    assert_eq!(
        injixo_sync::outbox::lock_holder(&link).and_then(|h| h.pid),
        Some(first.pid()),
        "the holder is seen through the link too"
    );
    wait_for(LIMIT, "1000 records", || api.record_count() >= 1000).await;
    first.assert_running();
    assert_eq!(first.terminate().code(), Some(0));
    assert_arrived_once(&api, 0..1000);
    assert!(
        !elsewhere.join("link.db-wal").exists(),
        "no WAL of its own beside the link"
    );
}

/// An operator deletes the state file (or its lock file) under the running daemon: it stops
/// within seconds, non-zero and saying why, and acknowledges no push into the deleted file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_state_file_or_its_lock_under_the_daemon_stops_it() {
    for victim in ["outbox.db", "outbox.db.lock"] {
        let env = Env::new();
        let port = free_port();
        let dead_api = format!("http://127.0.0.1:{}", free_port());
        std::fs::write(&env.config_file, config(&env, &dead_api, port)).unwrap();
        let cfg = env.config_file.to_str().unwrap().to_owned();
        let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
            .args(["--config", &cfg, "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Serving: the outbox is open (the socket alone is bound before it is).
        let client = reqwest::Client::new();
        let healthz = format!("http://127.0.0.1:{port}/healthz");
        let deadline = std::time::Instant::now() + LIMIT;
        while get(&client, &healthz).await != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon never served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state_dir = env.state.parent().unwrap();
        for name in [
            victim.to_owned(),
            format!("{victim}-wal"),
            format!("{victim}-shm"),
        ] {
            let _ = std::fs::remove_file(state_dir.join(name));
        }
        // Pushes from now on: none may get a 200 for a file no start will open.
        let push_url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{victim}: the daemon goes on"
            );
            if victim == "outbox.db"
                && let Ok(r) = client
                    .post(&push_url)
                    .header("content-type", "application/json")
                    .body(event(1))
                    .send()
                    .await
            {
                assert_ne!(
                    r.status().as_u16(),
                    200,
                    "a push acknowledged into a deleted file"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut log = String::new();
        use std::io::Read;
        daemon
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("was deleted or replaced while the daemon ran"),
            "{log}"
        );
        assert!(log.contains(victim), "{log}");
    }
}

/// The operator corrects a source's `integration_id` (after 403s, as the advice says): what
/// the source read before goes to the corrected configuration id, instead of waiting forever
/// in a lane nothing runs any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_under_an_old_integration_id_follow_the_corrected_one() {
    let env = Env::new();
    let port = free_port();
    let dead_api = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&env.config_file, config(&env, &dead_api, port)).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_serving(port).await;
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}"))
        .header("content-type", "application/json")
        .body(push_body(0..20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(daemon.terminate().code(), Some(0));

    let api = FakeApi::start(KEY).await.unwrap();
    let corrected =
        config(&env, &api.url(), port).replace("integration_id = 1234", "integration_id = 5678");
    std::fs::write(&env.config_file, corrected).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_for(LIMIT, "20 records", || api.record_count() >= 20).await;
    daemon.kill9();
    assert!(
        api.accepted()
            .iter()
            .all(|a| a.meta["integrationConfigurationId"] == 5678),
        "every record went to the corrected configuration id"
    );
    assert_eq!(arrivals(&api).len(), 20);
}

/// A reload reads every secret the sources will need (here a database connection string):
/// one that cannot be read refuses the reload, and the running configuration stays.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_database_secret_cannot_be_read_is_refused() {
    let env = Env::new();
    let url_file = env.dir.path().join("db-url");
    std::fs::write(&url_file, "postgres://acd@127.0.0.1:1/acd").unwrap();
    let source = format!(
        "[[source]]\nname = \"acd-db\"\ntype = \"sql\"\nintegration_id = 1\n\
         emits = \"contact_events\"\nconnection_file = {:?}\nevery = \"1h\"\n\
         query = \"SELECT 1\"\ncursor_column = \"t\"\ninitial_cursor = \"0\"\nkey = \"{{id}}\"\n\
         [source.map]\ntimestamp = \"t\"\nqueueName = \"q\"\nqueueIdentifier = \"q\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\n\
         handled = {{ value = true }}\nduration = \"d\"\n",
        url_file.display().to_string()
    );
    std::fs::write(
        &env.config_file,
        env.config_text("http://127.0.0.1:9", "", &source),
    )
    .unwrap();
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::start_logged(&env.config_file, &log);
    wait_for(LIMIT, "the first generation", || {
        generations_started(&log) == 1
    })
    .await;
    std::fs::remove_file(&url_file).unwrap();
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(LIMIT, "the refusal", || logged().contains("reload refused")).await;
    let text = logged();
    assert!(
        text.contains("reload refused, the running configuration stays: cannot read source[0] \"acd-db\".connection_file"),
        "{text}"
    );
    daemon.assert_running();
    assert_eq!(
        generations_started(&log),
        1,
        "the running configuration stays"
    );
    // The cron scheduler's own notes stay out of the log.
    assert!(
        !text.contains("Uninited") && !text.contains("Job creator created"),
        "{text}"
    );
    daemon.kill9();
}

/// Counters keep counting across a reload (Prometheus counters only go up).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_carry_on_across_a_reload() {
    let env = Env::new();
    let port = free_port();
    let dead_api = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&env.config_file, config(&env, &dead_api, port)).unwrap();
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_serving(port).await;
    let client = reqwest::Client::new();
    let push = |ids: std::ops::Range<u64>| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}"))
                .header("content-type", "application/json")
                .body(push_body(ids))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    let records = || {
        let client = client.clone();
        async move {
            let text = client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find(|l| l.starts_with("injixo_sync_source_records_total{source=\"acd\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no records counter for acd:\n{text}"))
        }
    };
    push(0..5).await;
    assert_eq!(records().await, 5);
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    wait_for(LIMIT, "the reloaded generation", || {
        generations_started(&log) == 2
    })
    .await;
    wait_serving(port).await;
    assert_eq!(records().await, 5, "kept across the reload");
    push(5..8).await;
    assert_eq!(records().await, 8);
    daemon.kill9();
}
