//! The `sql` source against real PostgreSQL and MariaDB servers: rows inserted while the
//! daemon runs, ties across page boundaries, a row committed late inside the overlap window,
//! the database restarted mid-run. Every row must arrive exactly once.
#![cfg(unix)]

mod support;

use std::time::Duration;

use support::databases::{MariaDb, Postgres};
use support::*;

/// A source over `calls`, paging 10 rows at a time; the call's id is its duration.
fn sql_source(env: &Env, url: &str, extra: &str) -> String {
    let url_file = env.dir.path().join("db-url");
    std::fs::write(&url_file, url).unwrap();
    format!(
        "[[source]]\nname = \"acd-db\"\ntype = \"sql\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\nconnection_file = {file:?}\nevery = \"1s\"\n\
         query = \"SELECT id, queue, started, updated_at FROM calls\"\n\
         cursor_column = \"updated_at\"\ninitial_cursor = \"2024-01-01T00:00:00Z\"\n\
         page_size = 10\nkey = \"{{id}}\"\n{extra}\n\
         [source.map]\ntimestamp = \"started\"\nqueueName = \"queue\"\nqueueIdentifier = \"queue\"\n\
         channel = {{ value = \"calls\" }}\noffered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = {{ expr = \"seconds(id)\" }}\n",
        file = url_file.display().to_string()
    )
}

fn assert_each_once(api: &FakeApi, n: u64) {
    let got = arrivals(api);
    for id in 1..=n {
        assert_eq!(got.get(&id), Some(&1), "id {id}: {:?}", got.get(&id));
    }
    assert_eq!(got.len() as u64, n, "unexpected ids");
}

async fn insert_pg(pool: &sqlx::PgPool, ids: std::ops::RangeInclusive<i64>, at: &str) {
    for id in ids {
        sqlx::query(
            "INSERT INTO calls (id, queue, started, updated_at) VALUES ($1, 'support', $2::timestamptz, $2::timestamptz)",
        )
        .bind(id)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_arrive_once_through_ties_late_commits_and_a_restart() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let pool = pg.calls("timestamptz").await;
    // 25 rows with one timestamp: more ties than a page holds, across two page boundaries.
    insert_pg(&pool, 1..=25, "2024-05-01T08:00:00Z").await;
    // Then 12 rows, two per second.
    for id in 26..=37 {
        let at = format!("2024-05-01T08:00:{:02}Z", id / 2);
        insert_pg(&pool, id..=id, &at).await;
    }

    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let (text, port) = listening(&env.config_text(
        &api.url(),
        "",
        // A database that went away fails a poll after `timeout` (the pool keeps trying to
        // connect until then).
        &sql_source(&env, &pg.url(), "overlap = \"1h\"\ntimeout = \"3s\""),
    ));
    let config = env.write_config(&text);
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(30), "37 records", || {
        api.record_count() >= 37
    })
    .await;

    // Rows inserted while the daemon runs; one of them "committed late" with a timestamp
    // older than the cursor, inside the overlap window.
    insert_pg(&pool, 38..=45, "2024-05-01T09:00:00Z").await;
    insert_pg(&pool, 46..=46, "2024-05-01T08:30:00Z").await;
    wait_for(Duration::from_secs(30), "46 records", || {
        api.record_count() >= 46
    })
    .await;

    // Rows committed just before the database goes away, maybe not polled yet; the database
    // stays away until a whole poll has failed on it (the outage is the thing under test),
    // and rows written once it is back arrive too.
    insert_pg(&pool, 47..=52, "2024-05-01T09:30:00Z").await;
    drop(pool);
    pg.stop();
    more_scans(port, "acd-db", 2).await;
    assert_eq!(
        metric(port, "injixo_sync_source_problems{source=\"acd-db\"}").await,
        Some(1),
        "the failed poll is the source's problem"
    );
    pg.restart();
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    insert_pg(&pool, 53..=60, "2024-05-01T10:00:00Z").await;
    wait_for(Duration::from_secs(60), "60 records", || {
        api.record_count() >= 60
    })
    .await;
    // Three more complete polls, each reading the hour of overlap again: nothing is sent
    // twice.
    let last_poll = || {
        env.first_source()
            .and_then(|s| s.cursors.into_iter().find(|c| c.key == "poll"))
            .and_then(|c| c.value["last_poll_ms"].as_i64())
    };
    let mut polls = std::collections::BTreeSet::new();
    wait_for(Duration::from_secs(60), "three more polls", || {
        polls.extend(last_poll());
        polls.len() > 3
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    assert_each_once(&api, 60);
    let report = env.report();
    assert_eq!(report.lanes[0].pending, 0);
}

/// A `DATE` cursor far east of Greenwich: a day is compared as a day in the source's zone (not
/// as UTC's midnight, which is 09:00 in Tokyo), so a row added later to the day last read is
/// found by the next poll without any overlap, days larger than a page are read whole, and the
/// rows read again are not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_cursor_reads_the_last_day_again_in_the_sources_zone() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    sqlx::query(
        "CREATE TABLE daily (id bigint PRIMARY KEY, day date NOT NULL, queue text NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let today = tokyo.to_datetime(jiff::Timestamp::now()).date();
    let yesterday = today.yesterday().unwrap();
    let insert = |ids: std::ops::RangeInclusive<i64>, day: jiff::civil::Date| {
        let pool = pool.clone();
        async move {
            for id in ids {
                sqlx::query("INSERT INTO daily VALUES ($1, $2::date, 'support')")
                    .bind(id)
                    .bind(day.to_string())
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
    };
    insert(1..=3, yesterday).await;
    insert(4..=5, today).await;

    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let url_file = env.dir.path().join("db-url");
    std::fs::write(&url_file, pg.url()).unwrap();
    let source = format!(
        "[[source]]\nname = \"daily\"\ntype = \"sql\"\nintegration_id = 1234\n\
         emits = \"contact_events\"\nconnection_file = {file:?}\nevery = \"1s\"\n\
         timezone = \"Asia/Tokyo\"\nquery = \"SELECT id, day, queue FROM daily\"\n\
         cursor_column = \"day\"\ninitial_cursor = \"{start}\"\nkey = \"{{id}}\"\n\
         page_size = 2\n\
         [source.map]\ntimestamp = {{ expr = \"local(day + ' 00:00', '%Y-%m-%d %H:%M')\" }}\n\
         queueName = \"queue\"\nqueueIdentifier = \"queue\"\nchannel = {{ value = \"calls\" }}\n\
         offered = {{ value = true }}\nhandled = {{ value = true }}\n\
         duration = {{ expr = \"seconds(id)\" }}\n",
        file = url_file.display().to_string(),
        start = yesterday.yesterday().unwrap(),
    );
    let (text, port) = listening(&env.config_text(&api.url(), "", &source));
    let daemon = Daemon::start(env.write_config(&text));
    wait_for(Duration::from_secs(30), "5 records", || {
        api.record_count() >= 5
    })
    .await;
    more_scans(port, "daily", 1).await;
    insert(6..=7, today).await;
    wait_for(Duration::from_secs(30), "7 records", || {
        api.record_count() >= 7
    })
    .await;
    more_scans(port, "daily", 2).await;
    settled(&env).await;
    daemon.stop().await;
    assert_arrived_once(&api, 1..=7);
    // Each day is given to the map as it is, and is that day's start in Tokyo.
    let first = api
        .records()
        .into_iter()
        .find(|r| id_of(r) == 1)
        .expect("row 1");
    let start = tokyo
        .to_ambiguous_timestamp(yesterday.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .unwrap();
    assert_eq!(
        first["timestamp"].as_str(),
        Some(start.to_string().as_str())
    );
}

/// Rows read again are recognised by their keys only while records are kept (`keep_sent`): a
/// table whose cursor has not moved for nearly that long (no new rows) is no longer read
/// behind its cursor, so its last rows are not sent a second time once their records are
/// pruned. Here `keep_sent` is as short as the look-back allows (ten minutes, no overlap or
/// lag): the polls after the first read nothing again. With the default, each poll reads the
/// cursor's own rows again and recognises them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_table_is_not_read_again_past_the_time_records_are_kept() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = pg.calls("timestamptz").await;
    // Rows of an hour and of half an hour ago.
    let ago = |minutes: i64| {
        // Microseconds, which the cursor keeps to the millisecond.
        let at = jiff::Timestamp::now().as_second() - minutes * 60;
        format!(
            "{}",
            jiff::Timestamp::from_microsecond(at * 1_000_000 + 123_456).unwrap()
        )
    };
    insert_pg(&pool, 1..=3, &ago(60)).await;
    insert_pg(&pool, 4..=5, &ago(30)).await;
    for (keep, read_again) in [("10m", false), ("14d", true)] {
        let env = Env::new();
        let api = FakeApi::start(KEY).await.unwrap();
        let (text, port) = listening(&env.config_text(
            &api.url(),
            "",
            &sql_source(&env, &pg.url(), "overlap = \"0s\""),
        ));
        let text = text.replacen("[state]\n", &format!("[state]\nkeep_sent = {keep:?}\n"), 1);
        let daemon = Daemon::start(env.write_config(&text));
        wait_for(Duration::from_secs(30), "5 records", || {
            api.record_count() >= 5
        })
        .await;
        more_scans(port, "acd-db", 3).await;
        let repeats = metric(
            port,
            "injixo_sync_source_duplicates_total{source=\"acd-db\"}",
        )
        .await
        .unwrap_or_default();
        settled(&env).await;
        daemon.stop().await;
        assert_arrived_once(&api, 1..=5);
        assert_eq!(
            repeats > 0,
            read_again,
            "keep_sent {keep}: {repeats} rows recognised as read again"
        );
    }
}

/// `check` connects to each sql source's database and to the API, and names the source whose
/// database does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reaches_the_database_and_names_one_that_does_not_answer() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // A database that does not answer is retried until `timeout`.
    let source = sql_source(&env, &pg.url(), "timeout = \"2s\"");
    env.write_config(&env.config_text(&api.url(), "", &source));
    let config = env.config_file.to_str().unwrap().to_owned();
    let check = move || cli(&["--config", &config, "check"]);
    let (code, out) = tokio::task::spawn_blocking(check.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: source \"acd-db\": the database answers"),
        "{out}"
    );
    assert!(
        out.contains("took the key and checked an empty test batch"),
        "{out}"
    );

    // Port 1 on loopback: nothing listens there.
    std::fs::write(
        env.dir.path().join("db-url"),
        "postgres://injixo:hunter2@127.0.0.1:1/acd",
    )
    .unwrap();
    let (code, out) = tokio::task::spawn_blocking(check).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem: source \"acd-db\": cannot connect to the database"),
        "{out}"
    );
    assert!(out.contains("127.0.0.1:1: connection refused"), "{out}");
    assert!(!out.contains("hunter2"), "the password is not shown: {out}");
    assert!(out.contains("1 problem(s) found"), "{out}");

    // The daemon runs on; `status` says why the source reads nothing, and when it tries again.
    let log = env.dir.path().join("daemon.log");
    let daemon = Process::start_logged(&env.config_file, &log);
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let status = || cli(&["--config", &cfg, "status"]).1;
    wait_for(Duration::from_secs(30), "the problem in status", || {
        status().contains("PROBLEM (since")
    })
    .await;
    let out = status();
    assert!(
        out.contains("cannot connect to 127.0.0.1:1: connection refused"),
        "{out}"
    );
    assert!(out.contains("next attempt at"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    // The database is back at its address: the problem ends, and its rows are read.
    let pool = pg.calls("timestamptz").await;
    insert_pg(&pool, 1..=2, "2024-05-01T08:00:00Z").await;
    std::fs::write(env.dir.path().join("db-url"), pg.url()).unwrap();
    wait_for(Duration::from_secs(60), "2 records", || {
        api.record_count() >= 2
    })
    .await;
    wait_for(Duration::from_secs(60), "the problem gone", || {
        !status().contains("PROBLEM")
    })
    .await;
    assert!(status().contains("poll: last complete"), "{}", status());
    settled(&env).await;
    daemon.kill9();
    assert_each_once(&api, 2);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("polling works again after"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_rows_arrive_once_with_local_datetimes_and_ties() {
    let Some(db) = MariaDb::start() else {
        return;
    };
    let pool = sqlx::MySqlPool::connect(&db.url()).await.unwrap();
    sqlx::query(
        "CREATE TABLE calls (id BIGINT PRIMARY KEY, queue VARCHAR(40) NOT NULL, \
         started DATETIME NOT NULL, updated_at DATETIME(3) NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let insert = |id: i64, at: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO calls VALUES (?, 'support', ?, ?)")
                .bind(id)
                .bind(at)
                .bind(at)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    for id in 1..=15 {
        insert(id, "2024-05-01 10:00:00").await;
    }
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&env.config_text(
        &api.url(),
        "",
        &sql_source(&env, &db.url(), "timezone = \"Europe/Berlin\""),
    ));
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(30), "15 records", || {
        api.record_count() >= 15
    })
    .await;
    for id in 16..=30 {
        insert(id, "2024-05-01 10:00:01").await;
    }
    wait_for(Duration::from_secs(30), "30 records", || {
        api.record_count() >= 30
    })
    .await;
    more_polls(&env, "acd-db", 2).await;
    settled(&env).await;
    daemon.stop().await;
    assert_each_once(&api, 30);
    // DATETIME is wall-clock time in the source's zone: 10:00 in Berlin in May is 08:00 UTC.
    let first = api.records().into_iter().find(|r| id_of(r) == 1).unwrap();
    assert_eq!(first["timestamp"], "2024-05-01T08:00:00Z", "{first}");
}

/// Asterisk's queue_log, as the realtime MySQL table (`time` as text in local time, `id`
/// growing): the same calls and intervals as from the file.
/// time, callid, queuename, agent, event, data1..
type QueueLogRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const QUEUE_LOG: &[QueueLogRow] = &[
    (
        "2024-05-01 10:00:00.000000",
        "NONE",
        "support",
        "SIP/1001",
        "ADDMEMBER",
        &[],
    ),
    (
        "2024-05-01 10:00:00.000000",
        "NONE",
        "support",
        "SIP/1002",
        "ADDMEMBER",
        &[],
    ),
    (
        "2024-05-01 10:01:00.000000",
        "c1",
        "support",
        "NONE",
        "ENTERQUEUE",
        &["", "0401234", "1"],
    ),
    (
        "2024-05-01 10:01:10.000000",
        "c1",
        "support",
        "SIP/1001",
        "RINGNOANSWER",
        &["15000"],
    ),
    (
        "2024-05-01 10:01:20.000000",
        "c1",
        "support",
        "SIP/1002",
        "CONNECT",
        &["20", "c1.1", "5"],
    ),
    (
        "2024-05-01 10:01:40.000000",
        "c2",
        "support",
        "NONE",
        "ENTERQUEUE",
        &["", "0405678", "1"],
    ),
    (
        "2024-05-01 10:02:10.000000",
        "c2",
        "support",
        "NONE",
        "ABANDON",
        &["1", "1", "30"],
    ),
    (
        "2024-05-01 10:03:20.000000",
        "c1",
        "support",
        "SIP/1002",
        "COMPLETECALLER",
        &["20", "120", "1"],
    ),
    (
        "2024-05-01 10:05:00.000000",
        "NONE",
        "support",
        "SIP/1001",
        "PAUSE",
        &["lunch"],
    ),
    (
        "2024-05-01 11:05:00.000000",
        "NONE",
        "support",
        "SIP/1001",
        "UNPAUSE",
        &[],
    ),
    (
        "2024-05-01 11:06:40.000000",
        "NONE",
        "support",
        "SIP/1001",
        "REMOVEMEMBER",
        &[],
    ),
    (
        "2024-05-01 11:06:40.000000",
        "NONE",
        "support",
        "SIP/1002",
        "REMOVEMEMBER",
        &[],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asterisk_realtime_queue_log_table_gives_calls_and_intervals() {
    let Some(db) = MariaDb::start() else {
        return;
    };
    let pool = sqlx::MySqlPool::connect(&db.url()).await.unwrap();
    // contrib/realtime/mysql's queue_log table.
    sqlx::query(
        "CREATE TABLE queue_log (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         time VARCHAR(26) NOT NULL DEFAULT '', callid VARCHAR(40) NOT NULL DEFAULT '', \
         queuename VARCHAR(20) NOT NULL DEFAULT '', agent VARCHAR(40) NOT NULL DEFAULT '', \
         event VARCHAR(20) NOT NULL DEFAULT '', data1 VARCHAR(40) NOT NULL DEFAULT '', \
         data2 VARCHAR(40) NOT NULL DEFAULT '', data3 VARCHAR(40) NOT NULL DEFAULT '', \
         data4 VARCHAR(40) NOT NULL DEFAULT '', data5 VARCHAR(40) NOT NULL DEFAULT '')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let insert = |rows: &'static [QueueLogRow]| {
        let pool = pool.clone();
        async move {
            for (time, callid, queue, agent, event, data) in rows {
                let d = |i: usize| data.get(i).copied().unwrap_or("");
                sqlx::query(
                    "INSERT INTO queue_log (time, callid, queuename, agent, event, data1, data2, data3) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(time)
                .bind(callid)
                .bind(queue)
                .bind(agent)
                .bind(event)
                .bind(d(0))
                .bind(d(1))
                .bind(d(2))
                .execute(&pool)
                .await
                .unwrap();
            }
        }
    };
    insert(&QUEUE_LOG[..8]).await;

    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let url_file = env.dir.path().join("db-url");
    std::fs::write(&url_file, db.url()).unwrap();
    // As `init --acd asterisk-realtime` writes it, with the site's names filled in.
    let sources = recipe_sources(
        env.dir.path(),
        "asterisk-realtime",
        &[
            "--integration-id",
            "1",
            "--timezone",
            "Europe/Berlin",
            "--connection-file",
            url_file.to_str().unwrap(),
        ],
        &[
            (
                "# [source.queues]\n# 600 = \"Support\"",
                "[source.queues]\nsupport = { identifier = \"hh-support\", name = \"Support Hamburg\" }",
            ),
            (
                "# [source.agents]\n# \"PJSIP/1001\" = \"anna.berg\"",
                "[source.agents]\n\"SIP/1001\" = \"anna\"\n\"SIP/1002\" = \"ben\"\n\
                 [source.activities]\navailable = \"ready\"\non_call = \"talking\"\npaused = \"break\"",
            ),
        ],
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &sources));
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(30), "2 calls", || {
        api.record_count() >= 2
    })
    .await;
    insert(&QUEUE_LOG[8..]).await;
    wait_for(Duration::from_secs(30), "2 calls and 6 intervals", || {
        api.record_count() >= 8
    })
    .await;
    more_polls(&env, "pbx-calls", 2).await;
    more_polls(&env, "pbx-agents", 2).await;
    settled(&env).await;
    daemon.stop().await;

    let records = api.records();
    assert_eq!(records.len(), 8, "{records:#?}");
    let mut calls: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.get("queueName").is_some())
        .collect();
    calls.sort_by_key(|r| r["timestamp"].as_str().unwrap().to_owned());
    assert_eq!(
        calls,
        vec![
            &serde_json::json!({"properties": {"offered": true, "handled": true, "duration": 120.0},
                    "queueName": "Support Hamburg", "queueIdentifier": "hh-support",
                    "timestamp": "2024-05-01T08:01:00Z", "channel": "calls"}),
            &serde_json::json!({"properties": {"offered": true, "handled": false, "duration": 30.0},
                    "queueName": "Support Hamburg", "queueIdentifier": "hh-support",
                    "timestamp": "2024-05-01T08:01:40Z", "channel": "calls"}),
        ]
    );
    let mut intervals: Vec<String> = records
        .iter()
        .filter(|r| r.get("agentIdentifier").is_some())
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["agentIdentifier"].as_str().unwrap(),
                r["startTime"].as_str().unwrap(),
                r["endTime"].as_str().unwrap(),
                r["activityIdentifier"].as_str().unwrap()
            )
        })
        .collect();
    intervals.sort();
    assert_eq!(
        intervals,
        vec![
            "anna 2024-05-01T08:00:00Z 2024-05-01T08:05:00Z ready",
            "anna 2024-05-01T08:05:00Z 2024-05-01T09:05:00Z break",
            "anna 2024-05-01T09:05:00Z 2024-05-01T09:06:40Z ready",
            "ben 2024-05-01T08:00:00Z 2024-05-01T08:01:20Z ready",
            "ben 2024-05-01T08:01:20Z 2024-05-01T08:03:20Z talking",
            "ben 2024-05-01T08:03:20Z 2024-05-01T09:06:40Z ready",
        ]
    );
}

/// The same source over ODBC (cargo feature `odbc`), through Debian's PostgreSQL ODBC driver:
/// wall-clock times in the source's zone, ties across pages, rows inserted while running.
#[cfg(feature = "odbc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odbc_rows_arrive_once_through_the_postgresql_odbc_driver() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = pg.calls("timestamp").await;
    let insert = |ids: std::ops::RangeInclusive<i64>, at: &'static str| {
        let pool = pool.clone();
        async move {
            for id in ids {
                sqlx::query(
                    "INSERT INTO calls VALUES ($1, 'support', $2::timestamp, $2::timestamp)",
                )
                .bind(id)
                .bind(at)
                .execute(&pool)
                .await
                .unwrap();
            }
        }
    };
    insert(1..=25, "2024-05-01 10:00:00").await;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let odbc = pg.odbc_url();
    let config = env.write_config(&env.config_text(
        &api.url(),
        "",
        &sql_source(&env, &odbc, "timezone = \"Europe/Berlin\""),
    ));
    let daemon = Daemon::start(config);
    wait_for(Duration::from_secs(30), "25 records", || {
        api.record_count() >= 25
    })
    .await;
    insert(26..=40, "2024-05-01 10:00:01").await;
    wait_for(Duration::from_secs(30), "40 records", || {
        api.record_count() >= 40
    })
    .await;
    more_polls(&env, "acd-db", 2).await;
    settled(&env).await;
    daemon.stop().await;
    assert_each_once(&api, 40);
    let first = api.records().into_iter().find(|r| id_of(r) == 1).unwrap();
    assert_eq!(first["timestamp"], "2024-05-01T08:00:00Z", "{first}");
}

/// A reload whose old generation cannot stop (a source thread inside a blocking ODBC call)
/// must not start the next generation beside it: the daemon exits non-zero, and the service
/// manager starts it afresh.
#[cfg(feature = "odbc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_stop_a_blocked_source_exits_non_zero() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = pg.calls("timestamp").await;
    let env = Env::new();
    let odbc = pg.odbc_url();
    // Every read of the query sleeps for a minute inside the driver.
    let source = sql_source(&env, &odbc, "timeout = \"120s\"")
        .replace("FROM calls", "FROM calls, (SELECT pg_sleep(60)) AS slow");
    std::fs::write(
        &env.config_file,
        env.config_text("http://127.0.0.1:9", "timeout = \"1s\"", &source),
    )
    .unwrap();
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(["--config", env.config_file.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The poll is inside the driver once the database runs its sleep.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' \
             AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if sleeping > 0 {
            break;
        }
        if std::time::Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            let _ = daemon.kill();
            let out = daemon.wait_with_output().unwrap();
            panic!(
                "the poll never started; the daemon said:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                daemon
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            if std::time::Instant::now() > deadline {
                let _ = daemon.kill();
                panic!("the daemon still runs after a reload it could not drain");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("not everything stopped within 6s"), "{log}");
    let started = format!("injixo-sync {} running", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        log.matches(&started).count(),
        1,
        "no second generation started beside the first: {log}"
    );
}

/// Agent-state changes read again by every poll (an overlap of five minutes, ties at the
/// cursor) are applied once: no interval twice, nothing parked "out of order".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_changes_read_again_by_overlapping_polls_are_applied_once() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    sqlx::query("CREATE TABLE agent_events (agent text, state text, at timestamptz NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let insert = |rows: &'static [(&'static str, &'static str, &'static str)]| {
        let pool = pool.clone();
        async move {
            for (agent, state, at) in rows {
                sqlx::query("INSERT INTO agent_events VALUES ($1, $2, $3::timestamptz)")
                    .bind(agent)
                    .bind(state)
                    .bind(at)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
    };
    insert(&[
        ("ann", "ready", "2024-05-01T08:00:00Z"),
        ("ann", "call", "2024-05-01T08:01:00Z"),
        ("ben", "ready", "2024-05-01T08:01:00Z"),
        ("ann", "wrap", "2024-05-01T08:03:00Z"),
    ])
    .await;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let url_file = env.dir.path().join("db-url");
    std::fs::write(&url_file, pg.url()).unwrap();
    let source = format!(
        "[[source]]\nname = \"states-db\"\ntype = \"sql\"\nintegration_id = 1234\n\
         emits = \"agent_states\"\nexternal_system = \"ACD\"\nconnection_file = {file:?}\n\
         every = \"1s\"\nquery = \"SELECT agent, state, at FROM agent_events\"\n\
         cursor_column = \"at\"\ninitial_cursor = \"2024-01-01T00:00:00Z\"\noverlap = \"5m\"\n\
         [source.map]\nagentIdentifier = \"agent\"\nactivityIdentifier = \"state\"\ntimestamp = \"at\"\n",
        file = url_file.display().to_string()
    );
    let config = env.write_config(&env.config_text(&api.url(), "", &source));
    let daemon = Daemon::start(config);
    // Polls, counted by the time of the last complete one in the cursor row.
    let polls = || {
        env.try_report()
            .and_then(|r| r.sources.into_iter().next())
            .and_then(|s| s.cursors.into_iter().find(|c| c.key == "poll"))
            .and_then(|c| c.value["last_poll_ms"].as_i64())
    };
    let wait_polls = |n: usize| {
        let mut seen = std::collections::BTreeSet::new();
        let polls = &polls;
        async move {
            wait_for(Duration::from_secs(30), "polls", || {
                if let Some(p) = polls() {
                    seen.insert(p);
                }
                seen.len() > n
            })
            .await
        }
    };
    wait_polls(3).await;
    insert(&[
        ("ann", "ready", "2024-05-01T08:04:00Z"),
        ("ben", "logout", "2024-05-01T08:04:00Z"),
    ])
    .await;
    wait_polls(3).await;
    daemon.stop().await;
    let mut spans: Vec<String> = api
        .records()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["agentIdentifier"].as_str().unwrap(),
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
            "ann call 2024-05-01T08:01:00Z 2024-05-01T08:03:00Z",
            "ann ready 2024-05-01T08:00:00Z 2024-05-01T08:01:00Z",
            "ann wrap 2024-05-01T08:03:00Z 2024-05-01T08:04:00Z",
            "ben ready 2024-05-01T08:01:00Z 2024-05-01T08:04:00Z",
        ]
    );
    let report = env.report();
    assert_eq!(report.sources[0].parked_total, 0, "{:#?}", report.parked);
}

/// `preview` of an sql source reads its first page from initial_cursor into a scratch
/// outbox: the rows as they would be sent, nothing written to the state file, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_the_first_page_of_rows_and_writes_nothing() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = pg.calls("timestamptz").await;
    insert_pg(&pool, 1..=5, "2024-05-01T08:00:00Z").await;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = sql_source(&env, &pg.url(), "");
    env.write_config(&env.config_text(&api.url(), "", &source));
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let (code, out) = tokio::task::spawn_blocking(move || {
        cli(&["--config", &cfg, "preview", "--source", "acd-db"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 row(s): 5 record(s), 0 parked"), "{out}");
    assert!(out.contains("\"queueName\":\"support\""), "{out}");
    assert!(out.contains("initial_cursor 2024-01-01T00:00:00Z"), "{out}");
    assert!(!env.state.exists(), "no state file");
    assert_eq!(api.record_count(), 0);
}
