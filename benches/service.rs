//! The daemon as a service sees it (release build, the fake API on loopback). Run:
//! `cargo bench --bench service` (BENCH_RECORDS for the backlog, BENCH_IDLE_SECS for the idle
//! window, BENCH_APPENDS for the latency samples). Writes bench/out/service.md and .json.
//!
//! 1. Time from start to READY=1 (systemd's notify socket): a fresh state, and a state holding
//!    a backlog of BENCH_RECORDS pending records.
//! 2. Latency in tail mode with `linger = "100ms"`: a line appended to a file until the fake API
//!    holds it (p50, p99), lines appended at random moments.
//! 3. kill -9 while the backlog drains: the delivery rate before, and how long after the restart
//!    until a one-second window delivers at 90 % of that rate again.
//! 4. CPU of an idle daemon with 10 sources (tail and drop files, CSV, TSV, NDJSON, an Asterisk
//!    queue_log, agent states, a webhook) over BENCH_IDLE_SECS.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::fmt::Write as _;
use std::io::Write as _;
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use injixo_sync::fake_api::FakeApi;

mod common;
use common::*;

/// A run directory with an API key, an export directory and a config file.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(api: &str, api_extra: &str, sources: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("exports")).unwrap();
        std::fs::write(dir.path().join("key"), "bench-key").unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[api]\nurl = {api:?}\ntoken_file = \"key\"\nretry_initial = \"20ms\"\n\
                 retry_max = \"50ms\"\n{api_extra}\n[state]\npath = \"outbox.db\"\n\
                 [log]\nlevel = \"warn\"\n{sources}"
            ),
        )
        .unwrap();
        Run { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The daemon, with systemd's notify socket: returns it and the time until READY=1.
    #[cfg(unix)]
    fn start(&self) -> (Daemon, Duration) {
        let socket_path = self.path("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
            .arg("--config")
            .arg(self.path("config.toml"))
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start injixo-sync");
        let mut buf = [0u8; 4096];
        let mut child = child;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("injixo-sync exited before READY=1: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no READY=1 within 2 minutes"
            );
            if let Ok(n) = socket.recv(&mut buf)
                && buf[..n].starts_with(b"READY=1")
            {
                return (Daemon(Some(child)), started.elapsed());
            }
        }
    }
}

/// A running daemon, killed if a step fails before it is stopped.
struct Daemon(Option<Child>);

impl Daemon {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    fn stop(mut self) {
        stop(self.0.take().expect("running"));
    }

    fn kill9(mut self) {
        let mut child = self.0.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the service bench speaks systemd's notify protocol: run it on Linux");
}

#[cfg(unix)]
fn main() {
    let n: u64 = env_or("BENCH_RECORDS", 1_000_000);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 60);
    let appends: u64 = env_or("BENCH_APPENDS", 500);
    let runtime = runtime(1);
    let api = runtime.block_on(FakeApi::start("bench-key")).unwrap();
    let url = api.url();

    let (p50, p99, ready_fresh) = latency(&api, &url, appends);
    let backlog = backlog_and_kill(&api, &url, n);
    let idle_pct = idle_cpu(&url, idle_secs);

    let table = format!(
        "| measure (release build, {} cores) | value | target |\n\
         |---|---:|---:|\n\
         | start to READY=1, fresh state | {:.0} ms | |\n\
         | start to READY=1, {n} records pending | {:.0} ms | |\n\
         | append → POST in tail mode, `linger = \"100ms\"` ({appends} lines) | p50 {p50:.0} ms, p99 {p99:.0} ms | p99 ≤ 300 ms |\n\
         | delivery of the backlog before a kill -9 | {:.0} records/s | |\n\
         | after kill -9: restart to a 1 s window at ≥ 90 % of that rate | {:.2} s | ≤ 2 s |\n\
         | records delivered twice after the kill (the batch in flight) | {} | |\n\
         | CPU of an idle daemon with 10 sources over {idle_secs} s | {idle_pct:.3} % of a core | ≤ 0.1 % |\n",
        cores(),
        ready_fresh.as_secs_f64() * 1000.0,
        backlog.ready.as_secs_f64() * 1000.0,
        backlog.rate,
        backlog.recovered.as_secs_f64(),
        backlog.twice,
    );
    save(
        "service",
        &table,
        serde_json::json!({
            "ready_fresh_ms": ready_fresh.as_secs_f64() * 1000.0,
            "ready_backlog_ms": backlog.ready.as_secs_f64() * 1000.0,
            "backlog_records": n,
            "append_to_post_ms": { "p50": p50, "p99": p99, "samples": appends, "linger_ms": 100 },
            "deliver_before_kill_records_per_s": backlog.rate,
            "recovered_after_kill_s": backlog.recovered.as_secs_f64(),
            "delivered_twice_after_kill": backlog.twice,
            "idle_cpu_percent": idle_pct,
            "idle_seconds": idle_secs,
            "idle_sources": 10,
        }),
    );
}

/// Appends `appends` lines to a tailed file and times each until the fake API holds it:
/// (p50 ms, p99 ms, start to READY on a fresh state).
#[cfg(unix)]
fn latency(api: &FakeApi, url: &str, appends: u64) -> (f64, f64, Duration) {
    let run = Run::new(
        url,
        "linger = \"100ms\"",
        "[[source]]\nname = \"live\"\ntype = \"files\"\nintegration_id = 1\n\
         emits = \"contact_events\"\npath = \"exports\"\nformat = \"ndjson\"\nmode = \"tail\"\n",
    );
    let path = run.path("exports/live.ndjson");
    std::fs::write(&path, "").unwrap();
    let (child, ready) = run.start();
    std::thread::sleep(Duration::from_millis(500));
    let before = api.accepted().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    // Line i carries i in its duration, to find its request.
    let mut appended = Vec::with_capacity(appends as usize);
    for i in 0..appends {
        appended.push(Instant::now());
        writeln!(
            f,
            "{{\"properties\":{{\"offered\":true,\"handled\":true,\"duration\":{i}}},\"queueName\":\"Q\",\"queueIdentifier\":\"latency\",\"timestamp\":\"2026-11-23T08:00:00Z\",\"channel\":\"calls\"}}"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(fastrand::u64(10..60)));
    }
    wait(Duration::from_secs(60), || {
        api.accepted()[before..]
            .iter()
            .map(|a| a.records.len())
            .sum::<usize>()
            >= appends as usize
    });
    child.stop();
    let mut samples = Vec::new();
    for a in &api.accepted()[before..] {
        for r in &a.records {
            if r["queueIdentifier"] == "latency" {
                let i = r["properties"]["duration"].as_u64().unwrap() as usize;
                samples.push((a.at - appended[i]).as_secs_f64() * 1000.0);
            }
        }
    }
    assert_eq!(samples.len(), appends as usize, "each line POSTed once");
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), ready)
}

struct Backlog {
    ready: Duration,
    rate: f64,
    recovered: Duration,
    twice: usize,
}

/// Reads `n` records while the API is down, restarts (READY with a backlog), lets delivery run,
/// kills -9 mid-way and restarts again.
#[cfg(unix)]
fn backlog_and_kill(api: &FakeApi, url: &str, n: u64) -> Backlog {
    let run = Run::new(
        url,
        "",
        "[[source]]\nname = \"backlog\"\ntype = \"files\"\nintegration_id = 2\n\
         emits = \"contact_events\"\npath = \"exports\"\nformat = \"ndjson\"\nsettle = \"0s\"\n",
    );
    for f in 0..10 {
        let mut text = String::new();
        for i in (f * n / 10)..((f + 1) * n / 10) {
            let _ = writeln!(text, "{}", contact_event(i));
        }
        std::fs::write(run.path(&format!("exports/e{f}.ndjson")), text).unwrap();
    }
    api.set_outage(Some((503, None)));
    let (child, _) = run.start();
    let state = run.path("outbox.db");
    wait(Duration::from_secs(600), || committed(&state) >= n);
    child.stop();

    let base = api.record_count();
    api.set_outage(None);
    let (child, ready) = run.start();
    // Steady delivery: the rate over the second after the first half second (short enough
    // that most of the backlog is left for the restart).
    wait(Duration::from_secs(60), || api.record_count() > base);
    std::thread::sleep(Duration::from_millis(500));
    let (c0, t0) = (api.record_count(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let rate = (api.record_count() - c0) as f64 / t0.elapsed().as_secs_f64();
    assert!(
        ((api.record_count() - base) as u64) < n / 2,
        "the backlog is too small to measure a restart: raise BENCH_RECORDS"
    );
    child.kill9();

    let (child, ready_after_kill) = run.start();
    let restarted = Instant::now() - ready_after_kill;
    // Samples every 50 ms; the first one-second window at ≥ 90 % of the rate ends recovery.
    let mut samples: Vec<(Instant, usize)> = vec![(restarted, api.record_count())];
    let recovered = loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = (Instant::now(), api.record_count());
        samples.push(now);
        if std::env::var("BENCH_TRACE").is_ok() {
            eprintln!("{:?} {}", now.0 - restarted, now.1 - base);
        }
        let window = samples
            .iter()
            .rev()
            .find(|(t, _)| now.0 - *t >= Duration::from_secs(1));
        if let Some((t, c)) = window
            && (now.1 - c) as f64 / (now.0 - *t).as_secs_f64() >= 0.9 * rate
        {
            break now.0 - restarted;
        }
        assert!(
            now.0 - restarted < Duration::from_secs(60),
            "no recovery within a minute"
        );
        if (now.1 - base) as u64 >= n {
            panic!("the backlog drained before the rate recovered: raise BENCH_RECORDS");
        }
    };
    wait(Duration::from_secs(600), || {
        (api.record_count() - base) as u64 >= n
    });
    std::thread::sleep(Duration::from_millis(500));
    child.stop();
    let twice = api.record_count() - base - n as usize;
    Backlog {
        ready,
        rate,
        recovered,
        twice,
    }
}

/// CPU of a daemon with 10 sources and nothing to do, as % of one core.
#[cfg(unix)]
fn idle_cpu(url: &str, secs: u64) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sources = String::new();
    for i in 0..4 {
        let _ = write!(
            sources,
            "[[source]]\nname = \"tail-{i}\"\ntype = \"files\"\nintegration_id = {}\n\
             emits = \"contact_events\"\npath = \"exports/tail-{i}\"\nformat = \"ndjson\"\n\
             mode = \"tail\"\n",
            i + 1
        );
    }
    for (i, (format, sep)) in [("csv", ","), ("csv", ";"), ("tsv", "\t")]
        .into_iter()
        .enumerate()
    {
        let _ = write!(
            sources,
            "[[source]]\nname = \"drop-{i}\"\ntype = \"files\"\nintegration_id = {}\n\
             emits = \"contact_events\"\npath = \"exports/drop-{i}\"\nformat = \"{format}\"\n\
             delimiter = {sep:?}\n[source.map]\ntimestamp = \"start\"\nqueueName = \"queue\"\n\
             queueIdentifier = \"queue\"\nchannel = {{ value = \"calls\" }}\n\
             offered = {{ value = true }}\nhandled = \"answered\"\nduration = \"talk\"\n",
            10 + i
        );
    }
    let _ = write!(
        sources,
        "[[source]]\nname = \"asterisk\"\ntype = \"asterisk_queue_log\"\nintegration_id = 20\n\
         emits = \"contact_events\"\npath = \"exports/asterisk/queue_log\"\n\
         [[source]]\nname = \"states\"\ntype = \"files\"\nintegration_id = 21\n\
         emits = \"agent_states\"\nexternal_system = \"ACD\"\npath = \"exports/states\"\nformat = \"csv\"\nmode = \"tail\"\n\
         [source.map]\nagentIdentifier = \"agent\"\nactivityIdentifier = \"state\"\ntimestamp = \"at\"\n\
         [[source]]\nname = \"hook\"\ntype = \"webhook\"\nintegration_id = 22\n\
         emits = \"contact_events\"\ntoken = \"bench-webhook-token\"\n"
    );
    let run = Run::new(
        url,
        "",
        &format!("[listen]\naddress = \"127.0.0.1:{port}\"\n{sources}"),
    );
    for dir in [
        "tail-0", "tail-1", "tail-2", "tail-3", "drop-0", "drop-1", "drop-2", "asterisk", "states",
    ] {
        std::fs::create_dir_all(run.path(&format!("exports/{dir}"))).unwrap();
    }
    let (child, _) = run.start();
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let ticks = cpu_ticks(pid) - before;
    child.stop();
    ticks as f64 / 100.0 / secs as f64 * 100.0
}
