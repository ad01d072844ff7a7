//! The `files` source in depth, on the release binary. Run: `cargo bench --bench files`.
//! Writes bench/out/files.md and bench/out/files.json.
//!
//! 1. A large CSV with a map (local times in Europe/Berlin, decimal commas, hh:mm:ss
//!    durations): rows/s into the outbox (BENCH_CSV_ROWS, default 1,000,000).
//!
//!    A 10-column call-detail CSV read twice (BENCH_CSV10_ROWS, default 500,000): with a map of
//!    plain columns, and with four of its fields as expressions (two comparisons, a sum of
//!    three `seconds()`, a string function); the ratio is the expressions' cost.
//! 2. A tailed file of BENCH_TAIL_MB (default 1024) MiB: rows/s and the daemon's peak RSS,
//!    which must not grow with the file.
//! 3. Latency from a line appended to its commit in tail mode, with file events and with the
//!    poll scan alone (poll_interval = "1s"): p50 and p99 over BENCH_APPENDS lines (200).
//! 4. A synthetic Asterisk queue_log of BENCH_QUEUE_LOG_CALLS calls (default 200,000; about
//!    six lines each, with agents logging in, pausing and taking calls): lines/s into contact
//!    events.
//! 5. The interval builder alone, in this process: state changes/s for 1,000,000 changes of
//!    500 agents.
//!
//! The fake API is down (503) throughout, so the outbox only fills and reading is measured
//! alone.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use injixo_sync::fake_api::FakeApi;

mod common;
use common::*;

fn main() {
    let csv_rows = env_or("BENCH_CSV_ROWS", 1_000_000);
    let tail_mb = env_or("BENCH_TAIL_MB", 1024);
    let appends = env_or("BENCH_APPENDS", 200);
    let ql_calls = env_or("BENCH_QUEUE_LOG_CALLS", 200_000);
    let runtime = runtime(1);
    let api = runtime.block_on(FakeApi::start("bench-key")).unwrap();
    api.set_outage(Some((503, None)));

    let (csv_secs, csv_rss) = csv_ingest(&api.url(), csv_rows);
    let csv10_rows = env_or("BENCH_CSV10_ROWS", 500_000);
    let plain_secs = csv10_ingest(&api.url(), csv10_rows, false);
    let expr_secs = csv10_ingest(&api.url(), csv10_rows, true);
    let (tail_rows, tail_secs, tail_rss) = big_tail(&api.url(), tail_mb);
    let events = latency(&api.url(), "events", appends);
    let poll = latency(&api.url(), "poll", appends);
    let (ql_lines, ql_secs) = queue_log(&api.url(), ql_calls);
    let builder_rate = builder();

    let table = format!(
        "| measure (release build, {} cores) | value |\n|---|---:|\n\
         | CSV with a map, {csv_rows} rows | {:.0} rows/s ({csv_secs:.2} s), peak RSS {:.1} MB |\n\
         | 10-column CSV, {csv10_rows} rows, plain columns | {:.0} rows/s ({plain_secs:.2} s) |\n\
         | the same with 4 expression fields | {:.0} rows/s ({expr_secs:.2} s), {:.0} % of plain |\n\
         | tail of a {tail_mb} MiB file, {tail_rows} rows | {:.0} rows/s ({tail_secs:.1} s), peak RSS {:.1} MB |\n\
         | append → commit, file events | p50 {:.1} ms, p99 {:.1} ms |\n\
         | append → commit, poll scan every 1 s | p50 {:.0} ms, p99 {:.0} ms |\n\
         | Asterisk queue_log, {ql_calls} calls, {ql_lines} lines | {:.0} lines/s ({ql_secs:.1} s) |\n\
         | interval builder, 1,000,000 changes of 500 agents | {:.0} changes/s |\n",
        cores(),
        csv_rows as f64 / csv_secs,
        csv_rss as f64 / 1024.0,
        csv10_rows as f64 / plain_secs,
        csv10_rows as f64 / expr_secs,
        100.0 * plain_secs / expr_secs,
        tail_rows as f64 / tail_secs,
        tail_rss as f64 / 1024.0,
        events.0,
        events.1,
        poll.0,
        poll.1,
        ql_lines as f64 / ql_secs,
        builder_rate,
    );
    save(
        "files",
        &table,
        serde_json::json!({
            "csv_rows": csv_rows,
            "csv_rows_per_s": csv_rows as f64 / csv_secs,
            "csv_peak_rss_kib": csv_rss,
            "csv10_rows": csv10_rows,
            "csv10_plain_rows_per_s": csv10_rows as f64 / plain_secs,
            "csv10_expr_rows_per_s": csv10_rows as f64 / expr_secs,
            "tail_mib": tail_mb,
            "tail_rows": tail_rows,
            "tail_rows_per_s": tail_rows as f64 / tail_secs,
            "tail_peak_rss_kib": tail_rss,
            "latency_events_ms": {"p50": events.0, "p99": events.1},
            "latency_poll_1s_ms": {"p50": poll.0, "p99": poll.1},
            "queue_log_lines": ql_lines,
            "queue_log_lines_per_s": ql_lines as f64 / ql_secs,
            "builder_changes_per_s": builder_rate,
        }),
    );
}

/// A configuration with one source whose specific keys are `source`.
fn setup(url: &str, source: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir_all(dir.path().join("exports")).unwrap();
    std::fs::write(dir.path().join("key"), "bench-key").unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[api]\nurl = {url:?}\ntoken_file = \"key\"\nretry_initial = \"1s\"\nretry_max = \"2s\"\n\
             [state]\npath = \"outbox.db\"\n[log]\nlevel = \"warn\"\n[[source]]\nname = \"bench\"\n\
             type = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\npath = \"exports\"\n{source}\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("outbox.db");
    (dir, state)
}

fn csv_ingest(url: &str, rows: u64) -> (f64, u64) {
    let (dir, state) = setup(
        url,
        "format = \"csv\"\ndelimiter = \";\"\nsettle = \"0s\"\ntimestamp_format = \"%d.%m.%Y %H:%M:%S\"\n\
         timezone = \"Europe/Berlin\"\n[source.map]\ntimestamp = \"Beginn\"\nqueueName = \"Warteschlange\"\n\
         queueIdentifier = { template = \"HH_{Warteschlange}\" }\nchannel = { value = \"calls\" }\n\
         offered = { value = true }\nhandled = \"Angenommen\"\nduration = \"Gesprächszeit\"\n",
    );
    let mut text = String::from("Beginn;Warteschlange;Angenommen;Gesprächszeit\n");
    let queues = ["Support", "Vertrieb", "Kündigung", "Technik"];
    for i in 0..rows {
        let _ = writeln!(
            text,
            "{:02}.11.2026 {:02}:{:02}:{:02};{};{};{}",
            1 + (i / 86_400) % 28,
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            queues[(i % 4) as usize],
            if i % 7 == 0 { "0" } else { "1" },
            if i % 2 == 0 {
                format!("{},{}", i % 600, i % 10)
            } else {
                format!("00:{:02}:{:02}", (i / 60) % 60, i % 60)
            }
        );
    }
    std::fs::write(dir.path().join("exports/report.csv"), text).unwrap();
    let start = Instant::now();
    let child = run_in(dir.path());
    let pid = child.id();
    wait(Duration::from_secs(900), || committed(&state) >= rows);
    let secs = start.elapsed().as_secs_f64();
    let rss = status_kib(pid, "VmHWM:");
    stop(child);
    (secs, rss)
}

/// A 10-column call-detail CSV into the outbox, with a map of plain columns or with four
/// expression fields; the seconds until every row is committed.
fn csv10_ingest(url: &str, rows: u64, expressions: bool) -> f64 {
    let map = if expressions {
        "queueIdentifier = { expr = \"queue.upperAscii()\" }\n\
         offered = { expr = \"outcome != 'PHANTOM'\" }\n\
         handled = { expr = \"outcome == 'AGENT'\" }\n\
         duration = { expr = \"seconds(talk) + seconds(hold) + seconds(acw)\" }\n"
    } else {
        "queueIdentifier = \"queue\"\noffered = \"offered\"\nhandled = \"handled\"\nduration = \"talk\"\n"
    };
    let (dir, state) = setup(
        url,
        &format!(
            "format = \"csv\"\nsettle = \"0s\"\ntimestamp_format = \"%Y-%m-%d %H:%M:%S\"\n\
             timezone = \"Europe/Berlin\"\n[source.map]\ntimestamp = \"start\"\nqueueName = \"queue\"\n\
             channel = {{ value = \"calls\" }}\n{map}"
        ),
    );
    let mut text = String::from("start,queue,agent,outcome,offered,handled,talk,hold,acw,caller\n");
    let queues = ["support", "sales", "billing", "tech"];
    let outcomes = ["AGENT", "AGENT", "AGENT", "HANG", "PHANTOM"];
    for i in 0..rows {
        let outcome = outcomes[(i % 5) as usize];
        let _ = writeln!(
            text,
            "2026-11-{:02} {:02}:{:02}:{:02},{},agent{},{outcome},{},{},0:{:02}:{:02},{},{},+4930{:07}",
            1 + (i / 86_400) % 28,
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            queues[(i % 4) as usize],
            i % 500,
            u8::from(outcome != "PHANTOM"),
            u8::from(outcome == "AGENT"),
            (i / 60) % 60,
            i % 60,
            i % 90,
            i % 45,
            i,
        );
    }
    std::fs::write(dir.path().join("exports/calls.csv"), text).unwrap();
    let start = Instant::now();
    let child = run_in(dir.path());
    wait(Duration::from_secs(900), || committed(&state) >= rows);
    let secs = start.elapsed().as_secs_f64();
    stop(child);
    secs
}

fn big_tail(url: &str, mib: u64) -> (u64, f64, u64) {
    let (dir, state) = setup(url, "format = \"ndjson\"\nmode = \"tail\"\n");
    let path = dir.path().join("exports/acd.ndjson");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut written = 0u64;
    let mut rows = 0u64;
    while written < mib << 20 {
        let line = format!(
            "{{\"properties\":{{\"offered\":true,\"handled\":{},\"duration\":{}.5}},\"queueName\":\"Level 1 support\",\"queueIdentifier\":\"1337_99\",\"timestamp\":\"2026-11-23T{:02}:{:02}:{:02}Z\",\"channel\":\"calls\"}}\n",
            !rows.is_multiple_of(7),
            rows,
            (rows / 3600) % 24,
            (rows / 60) % 60,
            rows % 60
        );
        f.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        rows += 1;
    }
    f.flush().unwrap();
    drop(f);
    let start = Instant::now();
    let child = run_in(dir.path());
    let pid = child.id();
    wait(Duration::from_secs(1800), || committed(&state) >= rows);
    let secs = start.elapsed().as_secs_f64();
    let rss = status_kib(pid, "VmHWM:");
    stop(child);
    (rows, secs, rss)
}

/// (p50, p99) in milliseconds from a line appended to its commit.
fn latency(url: &str, watch: &str, appends: u64) -> (f64, f64) {
    let (dir, state) = setup(
        url,
        &format!(
            "format = \"ndjson\"\nmode = \"tail\"\nwatch = \"{watch}\"\npoll_interval = \"1s\"\n"
        ),
    );
    let path = dir.path().join("exports/live.ndjson");
    std::fs::write(&path, "").unwrap();
    let child = run_in(dir.path());
    std::thread::sleep(Duration::from_millis(500));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..appends {
        let start = Instant::now();
        writeln!(
            f,
            "{{\"properties\":{{\"offered\":true,\"handled\":true,\"duration\":{i}}},\"queueName\":\"Q\",\"queueIdentifier\":\"q\",\"timestamp\":\"2026-11-23T08:00:00Z\",\"channel\":\"calls\"}}"
        )
        .unwrap();
        while committed(&state) <= i {
            std::thread::sleep(Duration::from_micros(500));
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        // Lines arrive at random moments relative to the poll scan.
        std::thread::sleep(Duration::from_millis(fastrand::u64(10..60)));
    }
    stop(child);
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// (lines, seconds) to read a synthetic queue_log into contact events.
fn queue_log(url: &str, calls: u64) -> (u64, f64) {
    let (dir, state) = setup(url, "");
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "type = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\npath = \"exports\"\n",
        "type = \"asterisk_queue_log\"\nintegration_id = 1\nemits = \"contact_events\"\npath = \"exports/queue_log\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut log = String::new();
    let mut lines = 0u64;
    let t0 = 1_764_000_000u64;
    for agent in 0..50 {
        let _ = writeln!(log, "{t0}|NONE|support|SIP/{agent}|ADDMEMBER|");
        lines += 1;
    }
    for c in 0..calls {
        let t = t0 + c;
        let agent = c % 50;
        let q = ["support", "sales", "billing"][(c % 3) as usize];
        let _ = writeln!(log, "{t}|c{c}|{q}|NONE|ENTERQUEUE||0401234{c}|1");
        if c % 10 == 0 {
            let _ = writeln!(log, "{}|c{c}|{q}|NONE|ABANDON|1|1|12", t + 12);
            lines += 2;
            continue;
        }
        let _ = writeln!(log, "{}|c{c}|{q}|SIP/{agent}|RINGNOANSWER|15000", t + 5);
        let _ = writeln!(log, "{}|c{c}|{q}|SIP/{agent}|CONNECT|20|c{c}.1|3", t + 20);
        let _ = writeln!(log, "{}|NONE|{q}|SIP/{agent}|PAUSE|after call", t + 60);
        let _ = writeln!(
            log,
            "{}|c{c}|{q}|SIP/{agent}|COMPLETEAGENT|20|120|1",
            t + 140
        );
        let _ = writeln!(log, "{}|NONE|{q}|SIP/{agent}|UNPAUSE|", t + 150);
        lines += 6;
    }
    std::fs::write(dir.path().join("exports/queue_log"), log).unwrap();
    let start = Instant::now();
    let child = run_in(dir.path());
    wait(Duration::from_secs(900), || committed(&state) >= calls);
    let secs = start.elapsed().as_secs_f64();
    stop(child);
    (lines, secs)
}

/// State changes/s through the interval builder.
fn builder() -> f64 {
    use injixo_sync::normalize::intervals::{Builder, Change, Settings};
    let settings = Settings {
        max_interval: jiff::SignedDuration::from_hours(12),
        flush_after: None,
        remember: jiff::SignedDuration::ZERO,
    };
    let states = ["available", "on_call", "wrap_up", "break"];
    let agents: Vec<String> = (0..500).map(|a| format!("agent{a}")).collect();
    let t0 = jiff::Timestamp::from_second(1_764_000_000).unwrap();
    let mut b = Builder::default();
    let mut out = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    for i in 0..1_000_000i64 {
        let change = Change {
            agent: agents[(i % 500) as usize].clone(),
            activity: Some(states[((i / 500) % 4) as usize].to_owned()),
            at: t0 + jiff::SignedDuration::from_secs(i),
        };
        b.apply(change, &settings, &mut out).unwrap();
    }
    let rate = 1_000_000.0 / start.elapsed().as_secs_f64();
    assert!(out.len() > 990_000);
    rate
}

fn run_in(dir: &Path) -> std::process::Child {
    std::env::set_current_dir(dir).unwrap();
    daemon(&dir.join("config.toml"))
}
