//! The `http` source against a local fake ACD API: every pagination style, bearer, basic and
//! OAuth 2 auth, 429/503 with `Retry-After`, a revoked token. Every call arrives once.

mod support;

use std::time::Duration;

use support::acd_api::{AcdApi, BASIC, BEARER, CLIENT};
use support::*;

/// An `http` source polling `path` every second, cursor from the records' `updated`.
fn http_source(env: &Env, name: &str, url: &str, extra: &str) -> String {
    let secret = env.dir.path().join(format!("{name}-secret"));
    std::fs::write(
        &secret,
        format!(
            "{}\n",
            match name {
                "page" => BEARER,
                "offset" => BASIC.1,
                _ => CLIENT.1,
            }
        ),
    )
    .unwrap();
    let auth = match name {
        "page" => format!("token_file = {:?}", secret.display().to_string()),
        "offset" => format!(
            "auth = \"basic\"\nusername = {:?}\npassword_file = {:?}",
            BASIC.0,
            secret.display().to_string()
        ),
        _ => format!(
            "auth = \"oauth2\"\ntoken_url = {:?}\nclient_id = {:?}\nclient_secret_file = {:?}",
            url.split("/").take(3).collect::<Vec<_>>().join("/") + "/oauth/token",
            CLIENT.0,
            secret.display().to_string()
        ),
    };
    format!(
        "[[source]]\nname = {name:?}\ntype = \"http\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\nevery = \"1s\"\nurl = \"{url}?since={{cursor}}\"\n\
         initial_cursor = \"2024-01-01T00:00:00Z\"\nrecords = \"/data\"\ncursor_field = \"updated\"\n\
         page_size = 7\nkey = \"{{id}}\"\n{auth}\n{extra}\n\
         [source.map]\ntimestamp = \"started\"\nqueueName = \"queue\"\nqueueIdentifier = \"queue\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = {{ expr = \"seconds(id)\" }}\n\n"
    )
}

fn expected(upto: u64) -> Vec<u64> {
    [1000, 2000, 3000, 4000]
        .into_iter()
        .flat_map(|base| (1..=upto).map(move |i| base + i))
        .collect()
}

fn assert_each_once(api: &FakeApi, upto: u64) {
    let got = arrivals(api);
    for id in expected(upto) {
        assert_eq!(got.get(&id), Some(&1), "id {id}");
    }
    assert_eq!(got.len(), expected(upto).len(), "unexpected ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pagination_style_reads_each_record_once_through_faults() {
    let acd = AcdApi::start().await;
    // 16 calls with one timestamp (ties across pages of 7), then 9 more.
    acd.add(1..=16, "2024-05-01T08:00:00Z");
    acd.add(17..=25, "2024-05-01T08:01:00Z");
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let sources: String = [
        ("page", "pagination = \"page\"\npage_param = \"page\""),
        ("offset", "pagination = \"offset\""),
        (
            "next",
            "pagination = \"next_link\"\nnext_pointer = \"/links/next\"",
        ),
        ("link", "pagination = \"link_header\""),
    ]
    .into_iter()
    .map(|(name, extra)| http_source(&env, name, &acd.url(&format!("/{name}/calls")), extra))
    .collect();
    let config = env.write_config(&env.config_text(&api.url(), "", &sources));
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(30), "100 records", || {
        api.record_count() >= 100
    })
    .await;

    // The ACD is busy, then breaks; an OAuth 2 token is revoked before it expires.
    acd.fail_next(&[429, 503, 500]);
    acd.revoke_tokens();
    acd.add(26..=40, "2024-05-01T09:00:00Z");
    wait_for(Duration::from_secs(60), "160 records", || {
        api.record_count() >= 160
    })
    .await;
    for name in ["page", "offset", "next", "link"] {
        more_polls(&env, name, 2).await;
    }
    settled(&env).await;
    daemon.stop().await;
    assert_each_once(&api, 40);

    // The request after a 429 waited for its Retry-After (1 s).
    let log = acd.log();
    let i = log
        .iter()
        .position(|(_, _, s)| *s == 429)
        .expect("a 429 was answered");
    let after_429 = log[i + 1..]
        .iter()
        .find(|(_, p, _)| *p == log[i].1)
        .expect("asked again");
    assert!(
        after_429.0.duration_since(log[i].0) >= Duration::from_millis(950),
        "the retry came {:?} after the 429",
        after_429.0.duration_since(log[i].0)
    );
    // The revoked token was replaced: a second token request.
    let token_requests = log.iter().filter(|(_, p, _)| p == "/oauth/token").count();
    assert!(token_requests >= 2, "{token_requests} token requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_reported_with_status_and_advice_and_polling_goes_on() {
    let acd = AcdApi::start().await;
    acd.add(1..=3, "2024-05-01T08:00:00Z");
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // A wrong bearer token: 401 on every poll, the daemon keeps running.
    let source = http_source(
        &env,
        "page",
        &acd.url("/page/calls"),
        "pagination = \"page\"",
    );
    std::fs::write(env.dir.path().join("page-secret"), "wrong-token\n").unwrap();
    std::fs::write(&env.config_file, env.config_text(&api.url(), "", &source)).unwrap();
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::start_logged(&env.config_file, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(30), "the refusal reported", || {
        logged().contains("poll failed")
    })
    .await;
    // The report names the status and the answer, and says what to check.
    let text = logged();
    let line = text
        .lines()
        .find(|l| l.contains("poll failed"))
        .expect("a poll failure line");
    assert!(line.contains("answered 401 Unauthorized"), "{line}");
    assert!(
        line.contains("unauthorized"),
        "the start of the answer: {line}"
    );
    assert!(line.contains("check the source's credentials"), "{line}");
    assert!(line.contains("retrying in"), "{line}");
    assert!(
        !line.contains("wrong-token"),
        "the token is not shown: {line}"
    );
    daemon.assert_running();
    // `status` shows the failure with when it began, and when the next poll is due.
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let status = || cli(&["--config", &cfg, "status"]).1;
    wait_for(Duration::from_secs(30), "the problem in status", || {
        status().contains("PROBLEM (since")
    })
    .await;
    let out = status();
    assert!(out.contains("answered 401 Unauthorized"), "{out}");
    assert!(out.contains("next attempt at"), "{out}");
    assert!(out.contains("poll: none complete yet"), "{out}");
    // Polled every second, but while refused it backs off: 2 s, then 4 s between attempts.
    wait_for(Duration::from_secs(30), "3 refused polls", || {
        acd.log().iter().filter(|(_, _, code)| *code == 401).count() >= 3
    })
    .await;
    let refused: Vec<_> = acd
        .log()
        .into_iter()
        .filter(|(_, _, code)| *code == 401)
        .map(|(at, _, _)| at)
        .collect();
    assert!(
        refused[1] - refused[0] >= Duration::from_millis(1900),
        "{:?}",
        refused[1] - refused[0]
    );
    assert!(
        refused[2] - refused[1] >= Duration::from_millis(3900),
        "{:?}",
        refused[2] - refused[1]
    );
    // The operator fixes the token file: the next attempt reads it again.
    std::fs::write(env.dir.path().join("page-secret"), format!("{BEARER}\n")).unwrap();
    wait_for(Duration::from_secs(60), "3 records", || {
        api.record_count() >= 3
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "the problem gone from status",
        || !status().contains("PROBLEM"),
    )
    .await;
    settled(&env).await;
    daemon.kill9();
    assert_arrived_once(&api, 1001..=1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_changes_read_again_at_the_cursor_are_applied_once() {
    let acd = AcdApi::start().await;
    // Three state changes of one agent, all updated at the same moment: every later poll
    // (since the cursor, inclusive) reads all three again.
    acd.add_started(1..=1, "2024-05-01T08:00:00Z", "2024-05-01T09:00:00Z");
    acd.add_started(2..=2, "2024-05-01T08:01:00Z", "2024-05-01T09:00:00Z");
    acd.add_started(3..=3, "2024-05-01T08:02:00Z", "2024-05-01T09:00:00Z");
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let secret = env.dir.path().join("page-secret");
    std::fs::write(&secret, BEARER).unwrap();
    let source = format!(
        "[[source]]\nname = \"states\"\ntype = \"http\"\nintegration_id = 1234\n\
         emits = \"agent_states\"\nexternal_system = \"ACD\"\nevery = \"1s\"\n\
         url = \"{url}?since={{cursor}}\"\ninitial_cursor = \"2024-01-01T00:00:00Z\"\n\
         records = \"/data\"\ncursor_field = \"updated\"\npagination = \"page\"\n\
         page_param = \"page\"\ntoken_file = {secret:?}\n\
         [source.map]\nagentIdentifier = {{ value = \"ann\" }}\n\
         activityIdentifier = {{ template = \"state-{{id}}\" }}\ntimestamp = \"started\"\n",
        url = acd.url("/page/calls"),
        secret = secret.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let daemon = Daemon::start(config);
    let polls = || {
        acd.log()
            .iter()
            .filter(|(_, p, _)| p.contains("/page/calls"))
            .count()
    };
    wait_for(Duration::from_secs(30), "four polls", || polls() >= 4).await;
    acd.add_started(4..=4, "2024-05-01T08:03:00Z", "2024-05-01T09:01:00Z");
    let after = polls();
    wait_for(Duration::from_secs(30), "three more polls", || {
        polls() >= after + 3
    })
    .await;
    wait_for(Duration::from_secs(30), "three intervals", || {
        api.record_count() >= 3
    })
    .await;
    daemon.stop().await;
    let mut spans: Vec<String> = api
        .records()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["activityIdentifier"].as_str().unwrap(),
                r["startTime"].as_str().unwrap(),
                r["endTime"].as_str().unwrap()
            )
        })
        .collect();
    spans.sort();
    assert_eq!(
        spans,
        [
            "state-1001 2024-05-01T08:00:00Z 2024-05-01T08:01:00Z",
            "state-1002 2024-05-01T08:01:00Z 2024-05-01T08:02:00Z",
            "state-1003 2024-05-01T08:02:00Z 2024-05-01T08:03:00Z",
        ]
    );
    let report = env.report();
    assert_eq!(report.sources[0].parked_total, 0, "{:#?}", report.parked);
}

/// `preview` of an http source polls its first page from initial_cursor into a scratch
/// outbox: the records as they would be sent, nothing written beside the configuration's state
/// file, nothing sent, no second page asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_the_first_page_and_writes_nothing() {
    let acd = AcdApi::start().await;
    acd.add(1..=20, "2024-05-01T08:00:00Z");
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = http_source(
        &env,
        "page",
        &acd.url("/page/calls"),
        "pagination = \"page\"",
    );
    std::fs::write(&env.config_file, env.config_text(&api.url(), "", &source)).unwrap();
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let (code, out) = tokio::task::spawn_blocking(move || {
        cli(&["--config", &cfg, "preview", "--source", "page", "--json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["records"], 7, "one page of 7: {out}");
    assert!(
        v["from"].as_str().unwrap().contains("2024-01-01T00:00:00Z"),
        "{out}"
    );
    let pages = acd
        .log()
        .iter()
        .filter(|(_, path, _)| path.starts_with("/page/calls"))
        .count();
    assert_eq!(pages, 1, "{:?}", acd.log());
    assert!(!env.state.exists(), "no state file");
    assert_eq!(api.record_count(), 0);
}

/// A row that parks is read again by every poll (the cursor is inclusive, and the row is at
/// it): it is parked once, however many polls read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_parks_is_parked_once_however_often_polls_read_it() {
    let acd = AcdApi::start().await;
    acd.add(1..=3, "2024-05-01T09:00:00Z");
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let secret = env.dir.path().join("page-secret");
    std::fs::write(&secret, BEARER).unwrap();
    // The third call's id is not in the lookup: it parks.
    let source = format!(
        "[[source]]\nname = \"calls\"\ntype = \"http\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\nevery = \"1s\"\n\
         url = \"{url}?since={{cursor}}\"\ninitial_cursor = \"2024-01-01T00:00:00Z\"\n\
         records = \"/data\"\ncursor_field = \"updated\"\npagination = \"page\"\n\
         page_param = \"page\"\ntoken_file = {secret:?}\nkey = \"{{id}}\"\n\
         [source.map]\ntimestamp = \"started\"\nqueueIdentifier = \"queue\"\nqueueName = \"queue\"\n\
         channel = {{ column = \"id\", values = {{ \"1001\" = \"calls\", \"1002\" = \"calls\" }} }}\n\
         offered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = {{ expr = \"seconds(id)\" }}\n",
        url = acd.url("/page/calls"),
        secret = secret.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(30), "two records", || {
        api.record_count() >= 2
    })
    .await;
    more_polls(&env, "calls", 4).await;
    daemon.stop().await;
    let report = env.report();
    assert_eq!(report.parked.len(), 1, "{:#?}", report.parked);
    assert_eq!(report.sources[0].parked_total, 1);
    assert_eq!(api.record_count(), 2);
}
