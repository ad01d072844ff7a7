//! `[state] max_outbox_size`: at the budget reading pauses, `status`, `/readyz` and `/metrics`
//! say so, nothing is dropped, and reading resumes as delivery frees space.

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(120);
const BUDGET: u64 = 4 << 20;

/// Contact events as a history holds them: one every 37 seconds, some not handled, each with
/// its id in `duration` (see [`event`]). Compressed, each takes about 30 bytes.
fn history(ids: std::ops::Range<u64>) -> String {
    let start = jiff::Timestamp::from_second(1_714_550_400).unwrap();
    ids.map(|id| {
        let at = start + jiff::SignedDuration::from_secs(id as i64 * 37);
        format!(
            "{{\"properties\":{{\"offered\":true,\"handled\":{},\"duration\":{id}}},\
             \"queueName\":\"Support\",\"queueIdentifier\":\"support\",\
             \"timestamp\":\"{at}\",\"channel\":\"calls\"}}\n",
            id % 5 != 0
        )
    })
    .collect()
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("daemon answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// 60,000 records (about 5 MB in the outbox, compressed) through a 4 MiB budget: the outbox stops near
/// the budget while the API is down, and once it is back every record arrives exactly once,
/// which needs the delivered records (kept for `keep_sent`) to give their room up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_pauses_at_the_budget_and_resumes_as_delivery_frees_space() {
    const N: u64 = 60_000;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let port = free_port();
    let text = env
        .config_text(&api.url(), "", &env.ndjson_source("acd", "tail", ""))
        .replace("[state]\n", "[state]\nmax_outbox_size = \"4MiB\"\n");
    let config = env.write_config(&format!(
        "{text}\n[listen]\naddress = \"127.0.0.1:{port}\"\n"
    ));
    assert_eq!(config.state.max_outbox_size, Some(BUDGET));
    std::fs::write(env.exports.join("history.ndjson"), history(0..N)).unwrap();
    let daemon = Daemon::start(config);

    wait_for(LIMIT, "the outbox at its budget", || {
        env.try_report().is_some_and(|r| r.outbox.full())
    })
    .await;
    // Reading has stopped near the budget: at most the chunk in hand went past it. Refused
    // twice, the source has waited and tried again at least once.
    room_waits(port, "acd", "budget", 2).await;
    let report = env.report();
    let read = report.sources[0].records_total;
    assert!((read as u64) < N, "reading did not pause ({read} read)");
    assert!(
        report.outbox.used < BUDGET + (2 << 20),
        "the outbox went far past its budget: {}",
        report.outbox.describe()
    );
    assert_eq!(report.outbox.budget, BUDGET);

    // Said where the operator looks.
    let (code, status) = cli(&["--config", env.config_file.to_str().unwrap(), "status"]);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("full, reading is paused until delivery and pruning free space"),
        "{status}"
    );
    let base = format!("http://127.0.0.1:{port}");
    let (code, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("the outbox:") && body.contains("max_outbox_size"),
        "{body}"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(
        metrics.lines().any(|l| l == "injixo_sync_outbox_full 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("injixo_sync_outbox_budget_bytes {BUDGET}")),
        "{metrics}"
    );

    // Delivery frees space; reading resumes and the whole history arrives once.
    api.set_outage(None);
    wait_for(LIMIT, "all 60,000 delivered", || {
        api.record_count() >= N as usize
    })
    .await;
    settled(&env).await;
    // Delivered records give their room up: the outbox is below its budget again.
    wait_for(LIMIT, "room in the outbox again", || {
        !env.report().outbox.full()
    })
    .await;
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    daemon.stop().await;
    assert_arrived_once(&api, 0..N);
    let report = env.report();
    assert_eq!(report.sources[0].parked_total, 0);
    assert!(!report.outbox.full(), "{}", report.outbox.describe());
    assert!(
        metrics.lines().any(|l| l == "injixo_sync_outbox_full 0"),
        "{metrics}"
    );
    assert_eq!(report.lanes[0].pending, 0);
    let (code, out) = env.check_offline();
    assert_eq!(code, 0, "the outbox is intact: {out}");
}

/// A push that meets a full outbox is answered 503 with Retry-After and nothing of it is kept
/// twice: sent again once there is room, it is kept once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_at_the_budget_is_answered_503_and_kept_when_sent_again() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let port = free_port();
    let token_file = env.dir.path().join("push-token");
    std::fs::write(&token_file, "push-token-0123456789").unwrap();
    let text = env
        .config_text(
            &api.url(),
            "",
            &format!(
                "{}\n[[source]]\nname = \"push\"\ntype = \"webhook\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\ntoken_file = {:?}\n",
                env.ndjson_source("acd", "tail", ""),
                token_file.display().to_string()
            ),
        )
        .replace("[state]\n", "[state]\nmax_outbox_size = \"4MiB\"\n");
    let config = env.write_config(&format!(
        "{text}\n[listen]\naddress = \"127.0.0.1:{port}\"\n"
    ));
    std::fs::write(env.exports.join("history.ndjson"), history(0..60_000)).unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "the outbox at its budget", || {
        env.try_report().is_some_and(|r| r.outbox.full())
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/webhook/push/push-token-0123456789");
    let body = format!("[{}]", event(1_000_000));
    let client = reqwest::Client::new();
    // The same push each time, under the same Idempotency-Key.
    let push = || {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", "push-1")
            .body(body.clone())
            .send()
    };
    let answer = push().await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    // Room comes back as delivery goes on, which takes longer than a passing fault.
    assert_eq!(answer.headers()["retry-after"], "60");
    let said = answer.text().await.unwrap();
    assert!(said.contains("max_outbox_size"), "{said}");

    api.set_outage(None);
    let mut kept = false;
    for _ in 0..600 {
        let answer = push().await.unwrap();
        if answer.status().is_success() {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(kept, "the push was never kept");
    wait_for(LIMIT, "everything delivered", || {
        api.record_count() >= 60_001
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    assert_arrived_once(&api, (0..60_000).chain([1_000_000]));
}
