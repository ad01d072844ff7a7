//! Throughput and footprint of the real binary (release build), against the fake API on
//! loopback. Run: `cargo bench --bench pipeline` (BENCH_RECORDS, BENCH_IDLE_SECS to change
//! the size and the idle window). Writes bench/out/pipeline.md and bench/out/pipeline.json.
//!
//! 1. Ingest: N NDJSON records in 10 dropped files, read into the outbox while the API answers
//!    503 (so nothing leaves): records/s from process start to the last record committed.
//! 2. Delivery: the outage ends; records/s until the fake API holds all N.
//! 3. Peak RSS of the daemon (VmHWM), and its CPU while idle for BENCH_IDLE_SECS.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use injixo_sync::fake_api::FakeApi;

fn main() {
    let n: u64 = env_or("BENCH_RECORDS", 100_000);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    for f in 0..10 {
        let mut text = String::new();
        for i in (f * n / 10)..((f + 1) * n / 10) {
            let _ = writeln!(
                text,
                r#"{{"properties":{{"offered":true,"handled":{},"duration":{}.5}},"queueName":"Level 1 support","queueIdentifier":"1337_99","timestamp":"2026-11-23T{:02}:{:02}:{:02}Z","channel":"calls"}}"#,
                i % 7 != 0,
                i,
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60
            );
        }
        std::fs::write(exports.join(format!("export-{f}.ndjson")), text).unwrap();
    }
    let api = runtime.block_on(FakeApi::start("bench-key")).unwrap();
    api.set_outage(Some((503, None)));
    std::fs::write(dir.path().join("key"), "bench-key").unwrap();
    let state = dir.path().join("outbox.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nurl = {:?}\ntoken_file = \"key\"\nretry_initial = \"20ms\"\nretry_max = \"50ms\"\n\
             [state]\npath = \"outbox.db\"\n[log]\nlevel = \"warn\"\n[[source]]\nname = \"bench\"\n\
             type = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\npath = \"exports\"\n\
             format = \"ndjson\"\nsettle = \"0s\"\n",
            api.url()
        ),
    )
    .unwrap();

    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A cheap read of the source's counter, so the measuring does not load the machine.
    let committed = || {
        rusqlite::Connection::open_with_flags(&state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT records_total FROM sources", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|n| n as u64)
            .unwrap_or(0)
    };
    wait(Duration::from_secs(600), || committed() >= n);
    let ingest = start.elapsed();

    let start = Instant::now();
    api.set_outage(None);
    wait(Duration::from_secs(600), || api.record_count() as u64 >= n);
    let deliver = start.elapsed();
    let rss_kib = status_kib(pid, "VmHWM:");

    // Idle: nothing to read, nothing to send.
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_ticks = cpu_ticks(pid) - before;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let idle_pct = idle_ticks as f64 / ticks_per_sec / idle_secs as f64 * 100.0;
    let db_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("outbox.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();

    let ingest_rate = n as f64 / ingest.as_secs_f64();
    let deliver_rate = n as f64 / deliver.as_secs_f64();
    let table = format!(
        "| measure ({n} NDJSON records, release build, {} cores) | value | target |\n\
         |---|---:|---:|\n\
         | ingest into the outbox | {:.0} records/s ({:.2} s) | ≥ 100,000 records/s |\n\
         | delivery to the local fake API | {:.0} records/s ({:.2} s) | ≥ 50,000 records/s |\n\
         | peak RSS of the daemon | {:.1} MB | < 30 MB |\n\
         | CPU while idle over {idle_secs} s | {:.3} % of a core | ≈ 0 |\n\
         | outbox on disk (records kept as sent) | {:.0} bytes/record | |\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        ingest_rate,
        ingest.as_secs_f64(),
        deliver_rate,
        deliver.as_secs_f64(),
        rss_kib as f64 / 1024.0,
        idle_pct,
        db_bytes as f64 / n as f64,
    );
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("pipeline.md"), &table).unwrap();
    std::fs::write(
        out.join("pipeline.json"),
        serde_json::json!({
            "records": n,
            "ingest_records_per_s": ingest_rate,
            "deliver_records_per_s": deliver_rate,
            "peak_rss_kib": rss_kib,
            "idle_cpu_percent": idle_pct,
            "idle_seconds": idle_secs,
            "outbox_bytes": db_bytes,
        })
        .to_string(),
    )
    .unwrap();
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "benchmark step timed out");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}
