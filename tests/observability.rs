//! `/metrics`, `/healthz`, `/readyz` and `/status.json` on the `[listen]` address.

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("daemon answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of `name` (a metric with its labels) in `text`; a test fails without it.
fn sample(text: &str, name: &str) -> f64 {
    sample_value(text, name).unwrap_or_else(|| panic!("no sample {name}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_to_what_the_api_received() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.push_fault(Fault::Status(503));
    api.reject_records_containing("\"duration\":42,");
    let port = free_port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(
            &api.url(),
            "batch_records = 100",
            &env.ndjson_source("acd", "drop", "")
        )
    ));
    let mut text = events(0..1000);
    text.push_str("not json\n");
    std::fs::write(env.exports.join("day.ndjson"), text).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "999 records", || api.record_count() >= 999).await;
    wait_for(LIMIT, "the lane drained", || {
        env.try_report()
            .is_some_and(|r| r.lanes[0].pending == 0 && r.lanes[0].dead == 1)
    })
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let lane = r#"{endpoint="contact_events",integration_id="1234",external_system=""}"#;
    assert_eq!(
        sample(&metrics, &format!("injixo_sync_lane_sent_total{lane}")),
        api.record_count() as f64
    );
    assert_eq!(
        sample(&metrics, &format!("injixo_sync_lane_dead_total{lane}")),
        1.0
    );
    assert_eq!(
        sample(&metrics, &format!("injixo_sync_lane_pending_records{lane}")),
        0.0
    );
    assert_eq!(
        sample(&metrics, "injixo_sync_source_records_total{source=\"acd\"}"),
        1000.0
    );
    assert_eq!(
        sample(&metrics, "injixo_sync_source_parked_total{source=\"acd\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "injixo_sync_source_lag_bytes{source=\"acd\"}"),
        0.0
    );
    let answered_200 = api.seen().iter().filter(|s| s.status == 200).count() as f64;
    let endpoint = r#"injixo_sync_http_responses_total{endpoint="contact_events",integration_id="1234",external_system="""#;
    assert_eq!(
        sample(&metrics, &format!("{endpoint},status=\"200\"}}")),
        answered_200
    );
    assert_eq!(
        sample(&metrics, &format!("{endpoint},status=\"503\"}}")),
        1.0
    );
    assert!(sample(&metrics, &format!("injixo_sync_lane_retries_total{lane}")) >= 1.0);
    let requests = api.seen().len() as f64;
    assert_eq!(
        sample(
            &metrics,
            &format!("injixo_sync_batch_duration_seconds_count{lane}")
        ),
        requests
    );

    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");

    // What `status --json` prints, over HTTP.
    let (status, body) = get(&format!("{base}/status.json")).await;
    assert_eq!(status, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (code, printed) = cli(&[
        "--config",
        env.config_file.to_str().unwrap(),
        "status",
        "--json",
    ]);
    assert_eq!(code, 0, "{printed}");
    let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
    for key in [
        "outbox",
        "lanes",
        "sources",
        "dead",
        "parked",
        "parked_by_reason",
    ] {
        assert!(served.get(key).is_some(), "{key}: {served}");
    }
    assert_eq!(served["lanes"][0]["dead"], printed["lanes"][0]["dead"]);
    assert_eq!(served["sources"], printed["sources"]);
    assert_eq!(served["parked_by_reason"][0]["count"], 1);
    daemon.stop().await;
}

/// `/status.json` shows parked input and dead letters: on an address other than loopback it
/// is refused, saying how to reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_refused_off_loopback() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"0.0.0.0:{port}\"\n",
        env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", ""))
    ));
    let daemon = Daemon::start(config);
    wait_serving(port).await;
    let (status, body) = get(&format!("http://127.0.0.1:{port}/status.json")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SSH tunnel"), "{body}");
    let (status, _) = get(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(status, 200);
    daemon.stop().await;

    // With a [listen] token: the page, /status.json and /metrics ask for it; /healthz and
    // /readyz answer, the reasons only with it.
    let token = "page-token-0123456789abcdef";
    let port = free_port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"0.0.0.0:{port}\"\ntoken = {token:?}\n",
        env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", ""))
    ));
    let daemon = Daemon::start(config);
    wait_serving(port).await;
    let client = reqwest::Client::new();
    for path in ["/", "/status.json", "/metrics"] {
        let url = format!("http://127.0.0.1:{port}{path}");
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let r = client
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let (status, _) = get(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(status, 200);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_lane_is_paused_and_recovers() {
    let env = Env::new();
    let api = FakeApi::start("rotated-key").await.unwrap();
    let port = free_port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", ""))
    ));
    std::fs::write(env.exports.join("day.ndjson"), events(0..5)).unwrap();
    let daemon = Daemon::start(config);
    let url = format!("http://127.0.0.1:{port}/readyz");
    wait_for(LIMIT, "lane paused", || env.health() == "paused").await;
    let (status, body) = get(&url).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("paused: the API answered 401"),
        "{body}"
    );

    std::fs::write(&env.key_file, "rotated-key").unwrap();
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    let (status, body) = get(&url).await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_listen_address_stops_the_start_with_a_clear_error() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(
            "http://127.0.0.1:9",
            "",
            &env.ndjson_source("acd", "drop", "")
        )
    ));
    let err = injixo_sync::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port} is already in use")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_source_makes_readyz_fail_until_it_reads_again() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.write_config(&format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(
            &api.url(),
            "",
            &env.ndjson_source("acd", "drop", "stale_after = \"1s\"")
        )
    ));
    let daemon = Daemon::start(config);
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let deadline = std::time::Instant::now() + LIMIT;
    let body = loop {
        // The listener may not be up yet on the first tries.
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status().as_u16() == 503
        {
            break r.text().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never reported the silence"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        body.contains("source acd is silent: nothing read for 1s (stale_after 1s)"),
        "{body}"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&metrics, "injixo_sync_source_stale{source=\"acd\"}"),
        1.0
    );

    std::fs::write(env.exports.join("day.ndjson"), events(0..3)).unwrap();
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_each_lane_state_in_words() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let status = |json: bool| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["--config", cfg.as_str(), "status"];
            if json {
                args.push("--json");
            }
            cli(&args)
        })
    };
    std::fs::write(env.exports.join("a.ndjson"), events(0..5)).unwrap();
    let daemon = Daemon::start(config);

    wait_for(LIMIT, "retrying", || env.health() == "retrying").await;
    let (code, out) = status(false).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let lane = out
        .lines()
        .find(|l| l.starts_with("contact_events #1234"))
        .unwrap();
    assert!(
        lane.contains(" retrying ") && lane.contains(" 5 ") && lane.ends_with("never"),
        "{out}"
    );
    assert!(
        out.contains("    retrying (") && out.contains("the API answered 503"),
        "{out}"
    );

    api.set_outage(None);
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    wait_for(LIMIT, "ok", || env.health() == "ok").await;
    let (_, out) = status(false).await.unwrap();
    let lane = out
        .lines()
        .find(|l| l.starts_with("contact_events #1234"))
        .unwrap();
    assert!(lane.contains(" ok ") && lane.contains(" ago"), "{out}");
    assert!(
        !out.contains("    retrying ("),
        "no stale error once healthy: {out}"
    );
    assert!(out.contains("a.ndjson: byte"), "{out}");

    api.set_token("regenerated");
    std::fs::write(env.exports.join("b.ndjson"), events(5..7)).unwrap();
    wait_for(LIMIT, "paused", || env.health() == "paused").await;
    let (_, out) = status(false).await.unwrap();
    assert!(
        out.contains("    paused (") && out.contains("the API key was probably regenerated"),
        "{out}"
    );
    let (_, json) = status(true).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["lanes"][0]["health"], "paused");
    assert_eq!(v["lanes"][0]["pending"], 2);
    daemon.stop().await;
}

/// A source folder removed while the daemon runs, and a file it may not read: `status`, the
/// log (once), `/readyz` and `/metrics` say so until it is resolved, and reading goes on.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_gone_and_an_unreadable_file_are_shown_until_resolved() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    // The service does not run as root: as root every file is readable.
    for dir in [env.dir.path(), env.exports.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(&env.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", ""))
        + &format!("\n[listen]\naddress = \"127.0.0.1:{port}\"\n");
    std::fs::write(&env.config_file, text).unwrap();
    std::fs::set_permissions(&env.config_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = env.dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_injixo-sync"));
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
    };
    cmd.args(["--config", env.config_file.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(file);
    let daemon = Process::spawn(&mut cmd);
    wait_serving(port).await;
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let status = || cli(&["--config", &cfg, "status"]).1;
    let client = reqwest::Client::new();
    let readyz = || {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let problems_metric = || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .lines()
                .find(|l| l.starts_with("injixo_sync_source_problems{source=\"acd\"}"))
                .map(str::to_owned)
        }
    };

    // A file the service user may not read.
    let secret = env.exports.join("locked.ndjson");
    std::fs::write(&secret, events(0..3)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_for(LIMIT, "the unreadable file in status", || {
        status().contains("PROBLEM (since")
    })
    .await;
    let out = status();
    assert!(out.contains("cannot read"), "{out}");
    assert!(out.contains("locked.ndjson"), "{out}");
    assert!(out.contains("grant the service user read access"), "{out}");
    let (code, body) = readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("locked.ndjson"), "{body}");
    assert_eq!(
        problems_metric().await.as_deref(),
        Some("injixo_sync_source_problems{source=\"acd\"} 1")
    );
    // Made readable: read, and the problem is gone.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_for(LIMIT, "3 records", || api.record_count() >= 3).await;
    wait_for(LIMIT, "the problem gone", || !status().contains("PROBLEM")).await;

    // The folder goes away while the daemon runs.
    std::fs::remove_dir_all(&env.exports).unwrap();
    wait_for(LIMIT, "the missing folder in status", || {
        status().contains("does not exist")
    })
    .await;
    let (code, body) = readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("does not exist"), "{body}");
    // It comes back: files in it are read again.
    std::fs::create_dir_all(&env.exports).unwrap();
    std::fs::set_permissions(&env.exports, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(env.exports.join("back.ndjson"), events(10..12)).unwrap();
    wait_for(LIMIT, "5 records", || api.record_count() >= 5).await;
    wait_for(LIMIT, "the problem gone", || !status().contains("PROBLEM")).await;
    assert_eq!(readyz().await.0, 200);
    daemon.kill9();
    let text = std::fs::read_to_string(&log).unwrap();
    let warned = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("does not exist (any more, or yet)"))
        .count();
    assert_eq!(warned, 1, "warned once: {text}");
    assert!(text.contains("resolved: directory"), "{text}");
}
