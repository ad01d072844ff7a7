//! Throughput of the sources that are not files, on the release binary with the API down (so
//! only reading counts). Run: `cargo bench --bench sources` (BENCH_ROWS, BENCH_PUSH_SECS).
//! Writes bench/out/sources.md and bench/out/sources.json.
//!
//! 1. PostgreSQL → outbox: BENCH_ROWS rows of a `calls` table (a real server from Debian's
//!    packages, as the tests use) read by a `sql` source with a map and a natural key, from
//!    process start to the last row committed.
//! 2. Webhook: 16 concurrent clients pushing for BENCH_PUSH_SECS, one record per push and then
//!    100 records per push; every answer is a 200 after the commit, so this is the sustained
//!    rate *with* durability (`synchronous = FULL`).
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::time::{Duration, Instant};

use injixo_sync::fake_api::FakeApi;

mod common;
use common::*;

#[path = "../tests/support/net.rs"]
mod net;
use net::free_port;

#[cfg(unix)]
#[path = "../tests/support/prereq.rs"]
#[allow(dead_code)]
mod prereq;

#[cfg(unix)]
#[path = "../tests/support/databases.rs"]
#[allow(dead_code)]
mod databases;

const TOKEN: &str = "bench-push-token-0123456789";

fn config(dir: &std::path::Path, api: &str, sources: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(dir.join("key"), "bench-key").unwrap();
    std::fs::write(
        &path,
        format!(
            "[api]\nurl = {api:?}\ntoken_file = \"key\"\nretry_initial = \"1s\"\nretry_max = \"5s\"\n\
             [state]\npath = \"outbox.db\"\n[log]\nlevel = \"warn\"\n{sources}"
        ),
    )
    .unwrap();
    path
}

const MAP: &str = "[source.map]\ntimestamp = \"started\"\nqueueName = \"queue\"\n\
    queueIdentifier = \"queue\"\nchannel = { value = \"calls\" }\noffered = { value = true }\n\
    handled = \"answered\"\nduration = \"talk\"\n";

#[cfg(not(unix))]
fn main() {
    eprintln!("the sources bench starts PostgreSQL from Debian's packages: run it on Linux");
}

#[cfg(unix)]
fn main() {
    let rows: u64 = env_or("BENCH_ROWS", 200_000);
    let push_secs: u64 = env_or("BENCH_PUSH_SECS", 10);
    let runtime = runtime(2);
    let api = runtime.block_on(FakeApi::start("bench-key")).unwrap();
    api.set_outage(Some((503, None)));

    // 1. PostgreSQL.
    let pg = databases::Postgres::start().expect("PostgreSQL (apt-get install postgresql)");
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        sqlx::query(
            "CREATE TABLE calls (id bigint PRIMARY KEY, queue text NOT NULL, \
             started timestamptz NOT NULL, answered boolean NOT NULL, talk integer NOT NULL, \
             updated_at timestamptz NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO calls SELECT i, 'support-' || (i % 20), \
             timestamptz '2026-11-01 00:00:00+00' + i * interval '1 second', i % 7 <> 0, i % 600, \
             timestamptz '2026-11-01 00:00:00+00' + (i / 10) * interval '1 second' \
             FROM generate_series(1, $1) AS i",
        )
        .bind(rows as i64)
        .execute(&pool)
        .await
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-url"), pg.url()).unwrap();
    let cfg = config(
        dir.path(),
        &api.url(),
        &format!(
            "[[source]]\nname = \"pg\"\ntype = \"sql\"\nintegration_id = 1\nemits = \"contact_events\"\n\
             connection_file = \"db-url\"\nevery = \"1m\"\n\
             query = \"SELECT id, queue, started, answered, talk, updated_at FROM calls\"\n\
             cursor_column = \"updated_at\"\ninitial_cursor = \"2026-01-01T00:00:00Z\"\n\
             page_size = 5000\nkey = \"{{id}}\"\n{MAP}"
        ),
    );
    let start = Instant::now();
    let child = daemon(&cfg);
    let state = dir.path().join("outbox.db");
    wait(Duration::from_secs(600), || committed(&state) >= rows);
    let pg_time = start.elapsed();
    let pg_rss = status_kib(child.id(), "VmHWM:");
    stop(child);
    drop(pg);
    let pg_rate = rows as f64 / pg_time.as_secs_f64();

    // 2. Webhook.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("push-token"), TOKEN).unwrap();
    let port = free_port();
    let cfg = config(
        dir.path(),
        &api.url(),
        &format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n\
             [[source]]\nname = \"push\"\ntype = \"webhook\"\nintegration_id = 1\n\
             emits = \"contact_events\"\ntoken_file = \"push-token\"\nmax_body = \"4MiB\"\n"
        ),
    );
    let child = daemon(&cfg);
    wait(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("http://127.0.0.1:{port}/webhook/push/{TOKEN}");
    let mut results = Vec::new();
    for per_push in [1u64, 100] {
        let (pushes, took) =
            runtime.block_on(push_for(&url, per_push, Duration::from_secs(push_secs)));
        results.push((
            per_push,
            pushes as f64 / took,
            (pushes * per_push) as f64 / took,
        ));
    }
    let push_rss = status_kib(child.id(), "VmHWM:");
    stop(child);

    let mut table = format!(
        "| measure (release build, {} cores) | value |\n|---|---:|\n\
         | PostgreSQL → outbox, {rows} rows with a map and a natural key | {pg_rate:.0} rows/s ({:.2} s), peak RSS {:.1} MB |\n",
        cores(),
        pg_time.as_secs_f64(),
        pg_rss as f64 / 1024.0
    );
    for (per_push, req, rec) in &results {
        table.push_str(&format!(
            "| webhook, 16 clients, {per_push} record(s) per push, each committed before its 200 | {req:.0} pushes/s ({rec:.0} records/s) |\n"
        ));
    }
    table.push_str(&format!(
        "| webhook peak RSS | {:.1} MB |\n",
        push_rss as f64 / 1024.0
    ));
    save(
        "sources",
        &table,
        serde_json::json!({
            "postgres_rows": rows,
            "postgres_rows_per_s": pg_rate,
            "postgres_peak_rss_kib": pg_rss,
            "webhook": results.iter().map(|(p, req, rec)| serde_json::json!({
                "records_per_push": p, "pushes_per_s": req, "records_per_s": rec,
            })).collect::<Vec<_>>(),
            "webhook_peak_rss_kib": push_rss,
        }),
    );
}

/// 16 clients pushing `per_push` records per request for `limit`; returns the pushes
/// acknowledged and the seconds taken.
async fn push_for(url: &str, per_push: u64, limit: Duration) -> (u64, f64) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..16u64 {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut n = 0u64;
            while start.elapsed() < limit {
                let body: Vec<String> = (0..per_push)
                    .map(|k| {
                        let id = (c << 40) | (per_push << 32) | (n * per_push + k);
                        format!(
                            r#"{{"properties":{{"offered":true,"handled":true,"duration":{id}}},"queueName":"Support","queueIdentifier":"support","timestamp":"2026-11-01T08:00:00Z","channel":"calls"}}"#
                        )
                    })
                    .collect();
                n += 1;
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!("[{}]", body.join(",")))
                    .send()
                    .await
                    .expect("the daemon answers");
                assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
                done += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap();
    }
    (total, start.elapsed().as_secs_f64())
}
