//! What the benchmarks share: knobs from the environment, waits, and the daemon's footprint
//! read from /proc.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The async runtime the fake API (and any in-process client) runs on.
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn wait(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "benchmark step timed out");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

/// The release binary running `config`.
pub fn daemon(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start injixo-sync")
}

/// SIGTERM and wait.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Records the source(s) committed so far, read from the outbox without disturbing it.
pub fn committed(state: &std::path::Path) -> u64 {
    rusqlite::Connection::open_with_flags(state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(records_total), 0) FROM sources",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as u64)
        .unwrap_or(0)
}

/// Writes a Markdown table and a JSON document to bench/out/NAME.{md,json}.
pub fn save(name: &str, table: &str, json: serde_json::Value) {
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(format!("{name}.md")), table).unwrap();
    std::fs::write(out.join(format!("{name}.json")), json.to_string()).unwrap();
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// Contact event `i` as one NDJSON line in the API's shape (realistic values, one per second).
pub fn contact_event(i: u64) -> String {
    format!(
        r#"{{"properties":{{"offered":true,"handled":{},"duration":{}.5}},"queueName":"Level 1 support","queueIdentifier":"1337_99","timestamp":"2026-11-23T{:02}:{:02}:{:02}Z","channel":"calls"}}"#,
        !i.is_multiple_of(7),
        i,
        (i / 3600) % 24,
        (i / 60) % 60,
        i % 60
    )
}
