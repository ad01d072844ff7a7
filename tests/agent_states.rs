//! Agent state changes become intervals: real files, a real outbox, the fake API.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn states_source(env: &Env, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"states\"\ntype = \"files\"\nintegration_id = 7\nemits = \"agent_states\"\n\
         external_system = \"ACD\"\npath = {:?}\nformat = \"csv\"\nmode = \"tail\"\nsettle = \"100ms\"\n\
         poll_interval = \"200ms\"\n{extra}\n\
         [source.map]\nagentIdentifier = \"agent\"\nactivityIdentifier = \"state\"\ntimestamp = \"at\"\n\
         [source.agents]\n\"1001\" = \"anna.berg\"\n\
         [source.activities]\nREADY = \"available\"\nPAUSE = \"break\"\n\"*\" = \"other\"\n",
        env.exports.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_become_intervals_and_an_open_state_survives_a_restart() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&env.config_text(&api.url(), "", &states_source(&env, "")));
    let path = env.exports.join("states.csv");
    std::fs::write(
        &path,
        "agent,state,at\n\
         1001,READY,2024-05-01T08:00:00Z\n\
         1002,READY,2024-05-01T08:00:05Z\n\
         1001,READY,2024-05-01T08:01:00Z\n\
         1001,PAUSE,2024-05-01T08:10:00Z\n\
         1002,ACW,2024-05-01T08:12:00Z\n\
         1002,READY,2024-05-01T08:11:00Z\n",
    )
    .unwrap();
    let daemon = Daemon::start(config.clone());
    wait_for(LIMIT, "2 intervals", || api.record_count() >= 2).await;
    settled(&env).await;
    daemon.stop().await;
    let report = env.report();
    assert_eq!(
        report.sources[0].parked_total, 1,
        "the out-of-order change is parked"
    );

    // Anna's break and agent 1002's after-call work are open across the restart.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(
        b"1001,LOGOUT,2024-05-01T08:30:00Z\n1002,READY,2024-05-01T08:15:00Z\n1002,logout,2024-05-01T08:20:00Z\n",
    )
    .unwrap();
    drop(f);
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "5 intervals", || api.record_count() >= 5).await;
    settled(&env).await;
    daemon.stop().await;
    let mut got = intervals(&api);
    got.sort();
    let row = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
    assert_eq!(
        got,
        vec![
            row(
                "1002",
                "available",
                "2024-05-01T08:00:05Z",
                "2024-05-01T08:12:00Z"
            ),
            row(
                "1002",
                "available",
                "2024-05-01T08:15:00Z",
                "2024-05-01T08:20:00Z"
            ),
            row(
                "1002",
                "other",
                "2024-05-01T08:12:00Z",
                "2024-05-01T08:15:00Z"
            ),
            row(
                "anna.berg",
                "available",
                "2024-05-01T08:00:00Z",
                "2024-05-01T08:10:00Z"
            ),
            row(
                "anna.berg",
                "break",
                "2024-05-01T08:10:00Z",
                "2024-05-01T08:30:00Z"
            ),
        ]
    );
    let parked = injixo_sync::outbox::inspect(&env.state, 50).unwrap();
    assert!(
        parked
            .parked
            .iter()
            .any(|p| p.reason.contains("out of order") && p.origin == "states.csv:7"),
        "{:?}",
        parked.parked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_open_state_is_sent_in_pieces_that_join_exactly() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&env.config_text(
        &api.url(),
        "",
        &states_source(&env, "open_interval_flush = \"1s\""),
    ));
    let began = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3);
    std::fs::write(
        env.exports.join("states.csv"),
        format!("agent,state,at\n1001,READY,{began}\n"),
    )
    .unwrap();
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "3 pieces", || api.record_count() >= 3).await;
    daemon.stop().await;
    let got = intervals(&api);
    assert_eq!(got[0].2, injixo_sync::normalize::time::to_api(began));
    for pair in got.windows(2) {
        assert_eq!(pair[0].3, pair[1].2, "pieces join exactly: {got:?}");
        assert_eq!(pair[1].1, "available");
    }
}
