//! Asterisk's queue_log as a source: the stock file format, tailed, into contact events and
//! agent-status intervals with the exact records expected.

mod support;

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

const QUEUE_LOG: &str = "\
1714550400|NONE|support|SIP/1001|ADDMEMBER|
1714550400|NONE|support|SIP/1002|ADDMEMBER|
1714550460|c1|support|NONE|ENTERQUEUE||0401234|1
1714550470|c1|support|SIP/1001|RINGNOANSWER|15000
1714550480|c1|support|SIP/1002|CONNECT|20|c1.1|5
1714550600|c1|support|SIP/1002|COMPLETECALLER|20|120|1
1714550500|c2|support|NONE|ENTERQUEUE||0405678|1
1714550530|c2|support|NONE|ABANDON|1|1|30
1714550700|NONE|support|SIP/1001|PAUSE|lunch
1714554300|NONE|support|SIP/1001|UNPAUSE|
1714554400|NONE|support|SIP/1001|REMOVEMEMBER|
1714554400|NONE|support|SIP/1002|REMOVEMEMBER|
";

/// `init --acd asterisk-queue-log` over `log`, with the site's queue names, agents and
/// activities filled in.
fn sources(dir: &std::path::Path, log: &std::path::Path) -> String {
    let log = format!("{:?}", log.display().to_string());
    recipe_sources(
        dir,
        "asterisk-queue-log",
        &["--integration-id", "1"],
        &[
            ("\"/var/log/asterisk/queue_log\"", &log),
            ("# [source.queues]\n# 600 = \"Support\"", "[source.queues]\nsupport = { identifier = \"hh-support\", name = \"Support Hamburg\" }"),
            ("# [source.agents]\n# \"PJSIP/1001\" = \"anna.berg\"", "[source.agents]\n\"SIP/1001\" = \"anna\"\n\"SIP/1002\" = \"ben\""),
            ("# [source.activities]\n# available = \"ready\"\n# on_call = \"talking\"\n# paused = \"break\"", "[source.activities]\navailable = \"ready\"\non_call = \"talking\"\npaused = \"break\""),
        ],
    )
    .replace("channel = \"calls\"\n", "channel = \"calls\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n")
    .replace("external_system = \"Asterisk\"\n", "external_system = \"Asterisk\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_log_gives_its_calls_and_agent_intervals() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let log = env.exports.join("queue_log");
    // Written in two parts: the daemon reads on as the PBX appends.
    let (head, tail) = QUEUE_LOG.split_at(QUEUE_LOG.find("1714550700").unwrap());
    std::fs::write(&log, head).unwrap();
    let config = env.write_config(&env.config_text(&api.url(), "", &sources(env.dir.path(), &log)));
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "2 calls", || api.record_count() >= 2).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(tail.as_bytes()).unwrap();
    drop(f);
    wait_for(LIMIT, "2 calls and 6 intervals", || api.record_count() >= 8).await;
    settled(&env).await;
    daemon.stop().await;

    let records = api.records();
    let mut calls: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("queueName").is_some())
        .collect();
    calls.sort_by_key(|r| r["timestamp"].as_str().unwrap().to_owned());
    assert_eq!(
        calls,
        vec![
            &json!({"properties": {"offered": true, "handled": true, "duration": 120.0},
                    "queueName": "Support Hamburg", "queueIdentifier": "hh-support",
                    "timestamp": "2024-05-01T08:01:00Z", "channel": "calls"}),
            &json!({"properties": {"offered": true, "handled": false, "duration": 30.0},
                    "queueName": "Support Hamburg", "queueIdentifier": "hh-support",
                    "timestamp": "2024-05-01T08:01:40Z", "channel": "calls"}),
        ]
    );
    let mut intervals: Vec<(String, String, String, String)> = records
        .iter()
        .filter(|r| r.get("agentIdentifier").is_some())
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (
                s("agentIdentifier"),
                s("startTime"),
                s("endTime"),
                s("activityIdentifier"),
            )
        })
        .collect();
    intervals.sort();
    let row = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
    assert_eq!(
        intervals,
        vec![
            row(
                "anna",
                "2024-05-01T08:00:00Z",
                "2024-05-01T08:05:00Z",
                "ready"
            ),
            row(
                "anna",
                "2024-05-01T08:05:00Z",
                "2024-05-01T09:05:00Z",
                "break"
            ),
            row(
                "anna",
                "2024-05-01T09:05:00Z",
                "2024-05-01T09:06:40Z",
                "ready"
            ),
            row(
                "ben",
                "2024-05-01T08:00:00Z",
                "2024-05-01T08:01:20Z",
                "ready"
            ),
            row(
                "ben",
                "2024-05-01T08:01:20Z",
                "2024-05-01T08:03:20Z",
                "talking"
            ),
            row(
                "ben",
                "2024-05-01T08:03:20Z",
                "2024-05-01T09:06:40Z",
                "ready"
            ),
        ]
    );
}
