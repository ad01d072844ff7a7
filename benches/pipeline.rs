//! Throughput and footprint of the real binary (release build), against the fake API on
//! loopback. Run: `cargo bench --bench pipeline` (BENCH_RECORDS, BENCH_IDLE_SECS to change
//! the size and the idle window). Writes bench/out/pipeline.md and bench/out/pipeline.json.
//!
//! 1. Ingest: N NDJSON records in 10 dropped files, read into the outbox while the API answers
//!    503 (so nothing leaves): records/s from process start to the last record committed.
//! 2. Delivery: the outage ends; records/s until the fake API holds all N.
//! 3. Peak RSS of the daemon (VmHWM), its RSS at each tenth of the backlog as it grows, and
//!    its CPU while idle for BENCH_IDLE_SECS.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use injixo_sync::fake_api::FakeApi;

mod common;
use common::*;

fn main() {
    let n: u64 = env_or("BENCH_RECORDS", 100_000);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 60);
    let runtime = runtime(1);
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    for f in 0..10 {
        let mut text = String::new();
        for i in (f * n / 10)..((f + 1) * n / 10) {
            let _ = writeln!(text, "{}", contact_event(i));
        }
        std::fs::write(exports.join(format!("export-{f}.ndjson")), text).unwrap();
    }
    let api = runtime.block_on(FakeApi::start("bench-key")).unwrap();
    api.count_only();
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
    let child = daemon(&config);
    let pid = child.id();
    // A cheap read of the source's counter, so the measuring does not load the machine.
    let committed = || committed(&state);
    // Resident memory as the backlog grows: at each tenth of it.
    let mut rss_by_backlog: Vec<(u64, u64)> = Vec::new();
    for tenth in 1..=10 {
        let step = tenth * n / 10;
        wait(Duration::from_secs(3600), || committed() >= step);
        rss_by_backlog.push((step, status_kib(pid, "VmRSS:")));
    }
    let ingest = start.elapsed();

    let start = Instant::now();
    api.set_outage(None);
    wait(Duration::from_secs(3600), || api.record_count() as u64 >= n);
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
    stop(child);

    let ingest_rate = n as f64 / ingest.as_secs_f64();
    // (largest - smallest) / smallest of the samples.
    let (lo, hi) = rss_by_backlog
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), (_, r)| (lo.min(*r), hi.max(*r)));
    let spread = (hi - lo) as f64 / lo.max(1) as f64;
    let deliver_rate = n as f64 / deliver.as_secs_f64();
    let table = format!(
        "| measure ({n} NDJSON records, release build, {} cores) | value | target |\n\
         |---|---:|---:|\n\
         | ingest into the outbox | {:.0} records/s ({:.2} s) | ≥ 100,000 records/s |\n\
         | delivery to the local fake API | {:.0} records/s ({:.2} s) | ≥ 50,000 records/s |\n\
         | peak RSS of the daemon | {:.1} MB | < 30 MB |\n\
         | RSS as the backlog grows ({} → {} records) | {:.1} → {:.1} MB (spread {:.0} %) | flat (± 10 %) |\n\
         | CPU while idle over {idle_secs} s | {:.3} % of a core | ≈ 0 |\n\
         | outbox on disk (records kept as sent) | {:.0} bytes/record | |\n",
        cores(),
        ingest_rate,
        ingest.as_secs_f64(),
        deliver_rate,
        deliver.as_secs_f64(),
        rss_kib as f64 / 1024.0,
        rss_by_backlog[0].0,
        n,
        rss_by_backlog[0].1 as f64 / 1024.0,
        rss_by_backlog[rss_by_backlog.len() - 1].1 as f64 / 1024.0,
        spread * 100.0,
        idle_pct,
        db_bytes as f64 / n as f64,
    );
    save(
        "pipeline",
        &table,
        serde_json::json!({
            "records": n,
            "ingest_records_per_s": ingest_rate,
            "deliver_records_per_s": deliver_rate,
            "peak_rss_kib": rss_kib,
            "rss_kib_by_backlog": rss_by_backlog,
            "rss_spread": spread,
            "idle_cpu_percent": idle_pct,
            "idle_seconds": idle_secs,
            "outbox_bytes": db_bytes,
        }),
    );
}
