//! `injixo-sync demo`: the whole pipeline on this machine in a few seconds, without an injixo
//! account. It starts the fake API on loopback, writes a configuration and a day of generated
//! ACD exports (NDJSON in the API's shape and a CSV with a column map and Berlin local times,
//! with one malformed line and one record the API refuses) into a temporary directory, runs
//! the daemon until every deliverable record has arrived, and prints what happened.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fake_api::{FakeApi, Fault};
use crate::logging::{LogConfig, LogFormat};

const KEY: &str = "demo-api-key";
const REFUSED_QUEUE: &str = "Test queue (refused by the API)";

pub fn main(records: usize) -> anyhow::Result<ExitCode> {
    let records = records.max(10);
    let dir = std::env::temp_dir().join(format!("injixo-sync-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("exports"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    crate::logging::init(&LogConfig {
        format: LogFormat::Text,
        level: "info".into(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(demo(&dir, records));
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| ExitCode::SUCCESS)
}

/// `injixo-sync fake-api`: the fake API alone, until Ctrl-C or SIGTERM.
pub fn serve_fake_api(listen: std::net::SocketAddr, key: &str) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let api = FakeApi::start_on(listen, key)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("fake injixo API listening on {}", api.url());
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        println!("fake injixo API accepted {} records", api.record_count());
        Ok(ExitCode::SUCCESS)
    })
}

async fn demo(dir: &Path, records: usize) -> anyhow::Result<()> {
    let api = FakeApi::start(KEY).await?;
    // One outage answer and one rate limit, to show the retry path; one refused record.
    api.push_fault(Fault::Status(503));
    api.push_fault(Fault::RetryAfter(429, 1));
    api.reject_records_containing(REFUSED_QUEUE);

    let generated = generate(&dir.join("exports"), records)?;
    let config_path = dir.join("config.toml");
    std::fs::write(dir.join("api-key"), KEY)?;
    std::fs::write(&config_path, config_text(dir, &api.url()))?;
    println!(
        "demo: fake injixo API on {}, {} records in {}\n\nconfiguration ({}):\n{}",
        api.url(),
        generated,
        dir.join("exports").display(),
        config_path.display(),
        indent(&std::fs::read_to_string(&config_path)?)
    );
    let config = Config::load(&config_path)?;
    let state = config.state.path.clone();
    let expected = generated - 1; // the refused record becomes a dead letter
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let run = crate::app::run(config, shutdown.clone());
    tokio::pin!(run);
    let deadline = started + Duration::from_secs(120);
    loop {
        tokio::select! {
            r = &mut run => { r?; break; }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if api.record_count() >= expected || Instant::now() > deadline {
                    shutdown.cancel();
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let delivered = api.record_count();
    let seen = api.seen();
    let mut out = String::new();
    let count = |f: fn(u16) -> bool| seen.iter().filter(|s| f(s.status)).count();
    writeln!(
        out,
        "\ndemo: delivered {delivered} of {expected} deliverable records in {:.1} s: {} requests, \
         {} transient failures retried, {} refusals while isolating the bad record",
        elapsed.as_secs_f64(),
        seen.len(),
        count(|s| s == 429 || s >= 500 || s == 0),
        count(|s| s == 400),
    )?;
    if let Some(first) = api
        .accepted()
        .first()
        .and_then(|a| a.records.first().cloned())
    {
        writeln!(out, "demo: a delivered record: {first}")?;
    }
    let report = crate::outbox::inspect(&state, 5)?;
    writeln!(
        out,
        "\n{}",
        crate::status::render(&report, &state, crate::outbox::now_ms(), &[], &[])
    )?;
    print!("{out}");
    anyhow::ensure!(
        delivered >= expected,
        "only {delivered} of {expected} records arrived within the time limit"
    );
    Ok(())
}

fn config_text(dir: &Path, url: &str) -> String {
    let d = |p: &str| toml_string(&dir.join(p));
    format!(
        r#"[api]
url = "{url}"
token_file = {key}
linger = "200ms"
retry_initial = "200ms"

[state]
path = {state}

[[source]]
name = "acd-ndjson"
type = "files"
integration_id = 1234
emits = "contact_events"
path = {exports}
include = ["*.ndjson"]
format = "ndjson"
settle = "300ms"

[[source]]
name = "acd-csv"
type = "files"
integration_id = 1234
emits = "contact_events"
path = {exports}
include = ["*.csv"]
format = "csv"
delimiter = ";"
settle = "300ms"
timestamp_format = "%d.%m.%Y %H:%M:%S"
timezone = "Europe/Berlin"

[source.map]
timestamp = "Start"
queueName = "Queue"
queueIdentifier = {{ template = "hh_{{Queue}}" }}
channel = {{ value = "calls" }}
offered = {{ value = true }}
handled = "Answered"
duration = "Talk time"
"#,
        key = d("api-key"),
        state = d("outbox.db"),
        exports = d("exports"),
    )
}

fn toml_string(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Writes a day of contact events: 4 NDJSON files and one CSV (a fifth of the records). One
/// CSV line is malformed (parked, not a record) and one record names a queue the fake API
/// refuses. Returns the number of valid records.
fn generate(dir: &Path, records: usize) -> anyhow::Result<usize> {
    let queues = ["Level 1 support", "Billing", "Sales", "Retention"];
    let csv_rows = records / 5;
    let ndjson_rows = records - csv_rows;
    let mut rng = fastrand::Rng::with_seed(7);
    let day = jiff::civil::date(2026, 11, 23).at(8, 0, 0, 0);
    let mut files: Vec<String> = vec![String::new(); 4];
    for i in 0..ndjson_rows {
        let at = jiff::tz::TimeZone::UTC
            .to_ambiguous_timestamp(day)
            .compatible()?
            + jiff::SignedDuration::from_secs((i as i64 * 36_000) / ndjson_rows as i64);
        let handled = rng.u8(..10) < 9;
        let queue = if i == ndjson_rows / 2 {
            REFUSED_QUEUE
        } else {
            queues[rng.usize(..queues.len())]
        };
        let record = serde_json::json!({
            "properties": {"offered": true, "handled": handled,
                           "duration": if handled { rng.u32(20..900) as f64 + 0.5 } else { 0.0 }},
            "queueName": queue,
            "queueIdentifier": format!("hh_{queue}"),
            "timestamp": at.to_string(),
            "channel": "calls",
        });
        let _ = writeln!(files[i * 4 / ndjson_rows], "{record}");
    }
    for (i, text) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("contacts-{i}.ndjson")), text)?;
    }
    let mut csv = String::from("Start;Queue;Answered;Talk time\n");
    for i in 0..csv_rows {
        let secs = (i * 36_000 / csv_rows.max(1)) as i64;
        let t = day + jiff::SignedDuration::from_secs(secs);
        let answered = if rng.u8(..10) < 8 { "Y" } else { "N" };
        let _ = writeln!(
            csv,
            "{};{};{answered};{}",
            t.strftime("%d.%m.%Y %H:%M:%S"),
            queues[rng.usize(..queues.len())],
            if answered == "Y" {
                format!("00:{:02}:{:02}", rng.u8(0..15), rng.u8(0..60))
            } else {
                "0".into()
            }
        );
    }
    csv.push_str("not a date;Billing;Y;00:01:00\n");
    std::fs::write(dir.join("calls.csv"), csv)?;
    Ok(ndjson_rows + csv_rows)
}
