//! The `webhook` source: pushes to `POST /webhook/<source>/<token>` on the `[listen]`
//! address. A push that got a 2xx is in the outbox (kill -9 right after it loses nothing);
//! bad pushes get a clear 4xx and nothing is half-taken.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "push-token-0123456789abcdef";

/// A config with a contact-event webhook `acd` (records in the API's shape) and an
/// agent-state webhook `states` (mapped), listening on `port`.
fn config(env: &Env, api_url: &str, port: u16) -> String {
    let token_file = env.dir.path().join("push-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
        env.config_text(
            api_url,
            "",
            &format!(
                "[[source]]\nname = \"acd\"\ntype = \"webhook\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\ntoken_file = {file:?}\nmax_body = \"64KiB\"\n\n\
                 [[source]]\nname = \"states\"\ntype = \"webhook\"\nintegration_id = 1234\n\
                 emits = \"agent_states\"\nexternal_system = \"Odigo\"\ntoken_file = {file:?}\n\
                 [source.map]\nagentIdentifier = \"user\"\nactivityIdentifier = {{ expr = \"status.trim()\" }}\ntimestamp = \"at\"\n",
                file = token_file.display().to_string()
            )
        )
    )
}

fn events_json(ids: std::ops::Range<u64>) -> Value {
    Value::Array(
        ids.map(|i| serde_json::from_str(&event(i)).unwrap())
            .collect(),
    )
}

async fn post(client: &reqwest::Client, url: &str, kind: &str, body: String) -> (u16, Value) {
    let r = client
        .post(url)
        .header("content-type", kind)
        .body(body)
        .send()
        .await
        .expect("the daemon answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_listening(port: u16) {
    wait_serving(port).await;
}

/// The real binary on this installation's configuration, its log in `daemon.log`, once its
/// first generation runs.
#[cfg(unix)]
async fn start_logged(env: &Env) -> (Process, std::path::PathBuf) {
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_for(Duration::from_secs(30), "the first generation", || {
        generations_started(&log) == 1
    })
    .await;
    (daemon, log)
}

/// `clients` clients pushing `per_push` events a request without pause until `stop`: each
/// returns the ids answered 200 and why the others were not.
#[cfg(unix)]
fn push_until(
    port: u16,
    clients: u64,
    per_push: u64,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinSet<(Vec<u64>, Vec<String>)> {
    let mut pushers = tokio::task::JoinSet::new();
    for p in 0..clients {
        let stop = stop.clone();
        pushers.spawn(async move {
            let client = reqwest::Client::new();
            let url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let ids = (p * 1_000_000 + n)..(p * 1_000_000 + n + per_push);
                n += per_push;
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(events_json(ids.clone()).to_string())
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 200 => acked.extend(ids),
                    Ok(r) => refused.push(format!("{ids:?}: HTTP {}", r.status())),
                    Err(e) => refused.push(format!("{ids:?}: {e}")),
                }
            }
            (acked, refused)
        });
    }
    pushers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_acknowledged_is_kept_through_kill_9() {
    let env = Env::new();
    // While the daemon takes the pushes, the API cannot be reached: what was acknowledged
    // exists only in the outbox when the daemon is killed.
    let port = free_port();
    let dead_api = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&env.config_file, config(&env, &dead_api, port)).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_listening(port).await;

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    // 100 pushes of 10 records, 8 at a time.
    let mut acknowledged = 0;
    for round in 0..100u64 / 8 + 1 {
        let mut set = tokio::task::JoinSet::new();
        for k in 0..8u64 {
            let push = round * 8 + k;
            if push >= 100 {
                break;
            }
            let (client, url) = (client.clone(), url.clone());
            set.spawn(async move {
                let body = events_json(push * 10..push * 10 + 10).to_string();
                post(&client, &url, "application/json", body).await
            });
        }
        while let Some(r) = set.join_next().await {
            let (status, body) = r.unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["accepted"], 10, "{body}");
            acknowledged += 10;
        }
    }
    // A sender that did not see the answer sends again: kept once.
    let (status, _) = post(
        &client,
        &url,
        "application/json",
        events_json(0..10).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    daemon.kill9();

    let api = FakeApi::start(KEY).await.unwrap();
    std::fs::write(&env.config_file, config(&env, &api.url(), port)).unwrap();
    let daemon = Process::start(&env.config_file);
    wait_for(Duration::from_secs(60), "1000 records", || {
        api.record_count() >= acknowledged
    })
    .await;
    settled(&env).await;
    daemon.kill9();
    assert_each_once(&api, 1000);
}

fn assert_each_once(api: &FakeApi, n: u64) {
    let got = arrivals(api);
    for id in 0..n {
        assert_eq!(got.get(&id), Some(&1), "id {id}");
    }
    assert_eq!(got.len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_get_a_clear_4xx_and_mapped_pushes_become_intervals() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.write_config(&config(&env, &api.url(), port));
    let daemon = Daemon::start(config);
    wait_listening(port).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/webhook");
    let good = format!("{base}/acd/{TOKEN}");
    let json = "application/json";

    // Wrong token and unknown source, alike: 404 in the path form, 401 without a token
    // (which the Bearer form asks for).
    for url in [
        format!("{base}/acd/{}", TOKEN.replace('0', "1")),
        format!("{base}/nope/{TOKEN}"),
    ] {
        let (status, body) = post(&client, &url, json, event(1)).await;
        assert_eq!(status, 404, "{url}: {body}");
    }
    for url in [format!("{base}/acd"), format!("{base}/nope")] {
        let (status, body) = post(&client, &url, json, event(1)).await;
        assert_eq!(status, 401, "{url}: {body}");
    }
    let r = client.get(&good).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let (status, body) = post(&client, &good, "text/plain", event(1)).await;
    assert_eq!(status, 415, "{body}");
    let big = events_json(0..1000).to_string();
    let (status, body) = post(&client, &good, json, big).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_body"),
        "{body}"
    );
    let (status, body) = post(&client, &good, json, "{\"broken\": ".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
    let (status, body) = post(&client, &good, json, "[1, 2]".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("item 0"), "{body}");
    // Nothing in it can become a record: 422, and it is kept (parked, with the reason).
    let (status, body) = post(
        &client,
        &good,
        json,
        json!({"queueName": "Support", "channel": "pigeons"}).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rejected"], 1, "{body}");
    // One good, one bad: 200 with both counted.
    let mixed = format!("[{}, {{\"nonsense\": true}}]", event(7));
    let (status, body) = post(&client, &good, "application/json; charset=utf-8", mixed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].clone(), body["rejected"].clone()),
        (json!(1), json!(1))
    );

    // Agent states pushed one change at a time become closed intervals.
    let states = format!("{base}/states/{TOKEN}");
    for (status, at) in [
        ("available", "2024-05-01T08:00:00Z"),
        ("on_call", "2024-05-01T08:05:00Z"),
        ("logged_out", "2024-05-01T08:20:00Z"),
    ] {
        let body = json!({"user": "agent-7", "status": status, "at": at}).to_string();
        let (code, answer) = post(&client, &states, json, body).await;
        assert_eq!(code, 200, "{answer}");
    }
    wait_for(Duration::from_secs(30), "2 intervals and 1 event", || {
        api.records().len() >= 3
    })
    .await;
    daemon.stop().await;
    let mut intervals: Vec<Value> = api
        .records()
        .into_iter()
        .filter(|r| r.get("agentIdentifier").is_some())
        .collect();
    intervals.sort_by_key(|r| r["startTime"].as_str().unwrap().to_owned());
    assert_eq!(
        intervals,
        vec![
            json!({"agentIdentifier": "agent-7", "activityIdentifier": "available",
                   "startTime": "2024-05-01T08:00:00Z", "endTime": "2024-05-01T08:05:00Z"}),
            json!({"agentIdentifier": "agent-7", "activityIdentifier": "on_call",
                   "startTime": "2024-05-01T08:05:00Z", "endTime": "2024-05-01T08:20:00Z"}),
        ]
    );
    let report = env.report();
    let acd = report.sources.iter().find(|s| s.name == "acd").unwrap();
    assert_eq!(acd.parked_total, 2, "{report:#?}");
    assert_eq!(report.parked.len(), 2, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_element_of_a_push_is_kept_and_a_push_sent_again_is_recognised() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.write_config(&config(&env, &api.url(), port));
    let daemon = Daemon::start(config);
    wait_listening(port).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    let push = |body: String, key: Option<&'static str>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(k) = key {
                r = r.header("Idempotency-Key", k);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            (v["kept"].as_u64().unwrap(), v["merged"].as_u64().unwrap())
        }
    };
    // Three abandoned calls in one second in one queue: three contacts.
    let three = format!("[{0},{0},{0}]", event(1));
    assert_eq!(push(three.clone(), None).await, (3, 0));
    // The same push again (its answer was lost): recognised by its body.
    assert_eq!(push(three.clone(), None).await, (0, 3));
    // Another push that happens to hold the same call once more: a new contact.
    assert_eq!(push(format!("[{}]", event(1)), None).await, (1, 0));
    // With an Idempotency-Key, the key says what is a resend, whatever the body.
    let two = format!("[{0},{0}]", event(2));
    assert_eq!(push(two.clone(), Some("batch-17")).await, (2, 0));
    assert_eq!(push(two.clone(), Some("batch-17")).await, (0, 2));
    assert_eq!(push(two, Some("batch-18")).await, (2, 0));
    wait_for(Duration::from_secs(30), "8 records", || {
        api.record_count() >= 8
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    let got = arrivals(&api);
    assert_eq!(got.get(&1), Some(&4), "{got:?}");
    assert_eq!(got.get(&2), Some(&4), "{got:?}");
    assert_eq!(api.record_count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_changes_pushed_again_are_applied_once_and_never_parked() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let config = env.write_config(&config(&env, &api.url(), port));
    let daemon = Daemon::start(config);
    wait_listening(port).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhook/states/{TOKEN}");
    let changes = [
        ("available", "2024-05-01T08:00:00Z"),
        ("on_call", "2024-05-01T08:05:00Z"),
        ("wrap_up", "2024-05-01T08:09:00Z"),
        ("logged_out", "2024-05-01T08:14:00Z"),
    ];
    let body = |i: usize| {
        let (status, at) = changes[i];
        json!({"user": "agent-7", "status": status, "at": at}).to_string()
    };
    for i in 0..changes.len() {
        let (code, answer) = post(&client, &url, "application/json", body(i)).await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(
            (answer["kept"].clone(), answer["merged"].clone()),
            (json!(1), json!(0))
        );
        // This push and the one before it are sent again (their answers were lost): repeats,
        // not "out of order".
        for j in i.saturating_sub(1)..=i {
            let (code, answer) = post(&client, &url, "application/json", body(j)).await;
            assert_eq!(code, 200, "{answer}");
            assert_eq!(
                (
                    answer["kept"].clone(),
                    answer["merged"].clone(),
                    answer["rejected"].clone()
                ),
                (json!(0), json!(1), json!(0)),
                "push {j} again after {i}"
            );
        }
    }
    wait_for(Duration::from_secs(30), "3 intervals", || {
        api.record_count() >= 3
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    let spans: Vec<(String, String, String)> = api
        .records()
        .iter()
        .map(|r| {
            (
                r["activityIdentifier"].as_str().unwrap().to_owned(),
                r["startTime"].as_str().unwrap().to_owned(),
                r["endTime"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let report = env.report();
    let states = report.sources.iter().find(|s| s.name == "states").unwrap();
    assert_eq!(states.parked_total, 0, "{report:#?}");
}

/// 300 idle connections and 260 pushes whose bodies trickle in: `/healthz`, `/metrics` and
/// another client's push still answer at once, and the slow pushes end with 408 after
/// `body_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_pushes_answer_under_a_flood_of_idle_and_slow_clients() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    let text =
        config(&env, &api.url(), port).replace("[listen]\n", "[listen]\nbody_timeout = \"3s\"\n");
    std::fs::write(&env.config_file, text).unwrap();
    let mut daemon = Process::start(&env.config_file);
    wait_listening(port).await;
    let flooder = |_: usize| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
    };
    let mut idle = Vec::new();
    for i in 0..300 {
        idle.push(flooder(i).await);
    }
    let mut slow = Vec::new();
    for i in 0..260 {
        let mut s = flooder(i).await;
        s.write_all(
            format!(
                "POST /webhook/acd/{TOKEN} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: 1000\r\n\r\n["
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        slow.push(s);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    for path in ["/healthz", "/metrics"] {
        let r = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer within 1 s: {e}"));
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let r = client
        .post(format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}"))
        .header("content-type", "application/json")
        .body(event(1))
        .send()
        .await
        .expect("a push from another client is answered within 1 s");
    assert_eq!(r.status().as_u16(), 200);
    // The slow pushes: 64 from one address are read at once (the rest answered 503 at
    // once); those end with 408 when body_timeout has passed.
    let mut statuses = std::collections::BTreeMap::new();
    for s in slow.iter_mut() {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("every slow push is answered")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        *statuses
            .entry(head.split(' ').nth(1).unwrap_or("closed").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(statuses.get("408"), Some(&64), "{statuses:?}");
    assert_eq!(statuses.get("503"), Some(&196), "{statuses:?}");
    drop(idle);
    daemon.assert_running();
    daemon.kill9();
    wait_for(Duration::from_secs(30), "the one good push", || {
        api.record_count() >= 1
    })
    .await;
}

/// Five reloads while clients push without pause: the socket is kept, so no push is refused
/// and none fails to connect; every acknowledged record arrives.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_that_keep_the_address_refuse_no_push() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let port = free_port();
    std::fs::write(&env.config_file, config(&env, &api.url(), port)).unwrap();
    let (daemon, log) = start_logged(&env).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut pushers = push_until(port, 4, 1, &stop);
    for reload in 1..=5 {
        unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
        wait_for(Duration::from_secs(30), "the next generation", || {
            generations_started(&log) == reload + 1
        })
        .await;
        let before = api.record_count();
        wait_for(
            Duration::from_secs(30),
            "pushes delivered after the reload",
            || api.record_count() > before + 20,
        )
        .await;
    }
    stop.cancel();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while let Some(r) = pushers.join_next().await {
        let (a, r) = r.unwrap();
        acked.extend(a);
        refused.extend(r);
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    // Counted by id: a batch resent under its key after a reload may arrive twice.
    wait_for(Duration::from_secs(60), "every acknowledged push", || {
        let got = arrivals(&api);
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    daemon.kill9();
    let got = arrivals(&api);
    for id in &acked {
        assert!(
            got.contains_key(id),
            "push {id} was acknowledged but not delivered"
        );
    }
}

/// A reload while the API hangs on a request: the request in flight is handed to the next
/// generation (whose lane waits for its answer), so the reload does not wait out
/// `api.timeout` while pushes wait for the listener.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_wait_for_a_hanging_api() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.push_fault(Fault::Slow(Duration::from_secs(25)));
    let port = free_port();
    let text = config(&env, &api.url(), port).replace("[api]\n", "[api]\ntimeout = \"30s\"\n");
    std::fs::write(&env.config_file, text).unwrap();
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    wait_for(Duration::from_secs(30), "the first generation", || {
        generations_started(&log) == 1
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhook/acd/{TOKEN}");
    let (status, _) = post(&client, &url, "application/json", event(1)).await;
    assert_eq!(status, 200);
    // The lane's request is under way (the fake holds it for 25 s).
    wait_for(Duration::from_secs(30), "the request in flight", || {
        api.received() >= 1
    })
    .await;
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    wait_for(
        Duration::from_secs(10),
        "the next generation, before the API answers",
        || generations_started(&log) == 2,
    )
    .await;
    let (status, _) = post(&client, &url, "application/json", event(2)).await;
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(60), "both records", || {
        let got = arrivals(&api);
        got.contains_key(&1) && got.contains_key(&2)
    })
    .await;
    daemon.kill9();
}

/// SIGHUP every half second while 20 clients push: every acknowledged record arrives, and a
/// batch in flight at a reload is handed to the next generation, which waits for its answer
/// instead of sending it again. A batch the API still accepted twice under its key is counted
/// as an unknown-outcome retry (`status`, `/metrics`), never resent unsaid.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_pushes_hand_the_request_in_flight_on_and_count_every_resend() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // Every answer takes a while, so that reloads meet requests in flight.
    api.set_latency(Duration::from_millis(150));
    let port = free_port();
    std::fs::write(&env.config_file, config(&env, &api.url(), port)).unwrap();
    let (daemon, log) = start_logged(&env).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut pushers = push_until(port, 20, 5, &stop);
    let reloads = 20;
    for reload in 1..=reloads {
        tokio::time::sleep(Duration::from_millis(500)).await;
        unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
        wait_for(Duration::from_secs(30), "the next generation", || {
            generations_started(&log) == reload + 1
        })
        .await;
    }
    stop.cancel();
    let mut acked = Vec::new();
    while let Some(r) = pushers.join_next().await {
        acked.extend(r.unwrap().0);
    }
    wait_for(Duration::from_secs(120), "every acknowledged push", || {
        let got = arrivals(&api);
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    settled(&env).await;
    let handed_on = std::fs::read_to_string(&log)
        .unwrap()
        .matches("waiting for the answer to the request in flight at the reload")
        .count();
    assert!(daemon.terminate().success());
    assert_eq!(
        generations_one_at_a_time(&log),
        reloads + 1,
        "each generation stopped before the next started"
    );
    let resent_batches = {
        let mut by_key: std::collections::HashMap<String, usize> = Default::default();
        for a in api.accepted() {
            *by_key.entry(a.idempotency_key.unwrap()).or_default() += 1;
        }
        by_key.values().map(|n| n - 1).sum::<usize>()
    };
    let counted: i64 = env
        .report()
        .lanes
        .iter()
        .map(|l| l.unknown_outcome_retries)
        .sum();
    eprintln!(
        "reloads {reloads}, acknowledged {}, delivered {}, handed on {handed_on}, resent batches {resent_batches}, counted {counted}",
        acked.len(),
        api.record_count()
    );
    assert!(!acked.is_empty());
    // Reloads met requests in flight, and their lanes waited for the answers: nothing went
    // out twice (the API answers every batch well within the timeout here).
    assert!(handed_on > 0, "no reload met a request in flight");
    assert_eq!(
        resent_batches, 0,
        "{resent_batches} batch(es) accepted again under their key ({counted} counted)"
    );
    assert!(resent_batches as i64 <= counted);
    let got = arrivals(&api);
    let twice = got.values().filter(|n| **n > 1).count();
    assert!(
        twice <= records_in_resent_batches(&api),
        "{twice} records arrived twice outside batches resent under their key"
    );
}
