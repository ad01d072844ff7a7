//! The same job done three ways, in one run, against the same fake API on loopback: N NDJSON
//! contact events in a file, read, kept durably and POSTed in batches. Run:
//! `cargo bench --bench compare` (BENCH_RECORDS, default 200,000). Writes
//! bench/out/compare.md and bench/out/compare.json.
//!
//! * **injixo-sync**: the release binary, `files` source → SQLite outbox (`synchronous = FULL`)
//!   → batches with idempotency keys.
//! * **syslog-ng** (Debian's syslog-ng-core + syslog-ng-mod-http): `file()` source → reliable
//!   disk buffer → `http()` destination building the API's body (`{"meta": ..., "data": [...]}`)
//!   from batches of 500 lines (the API's default, as ours). Skipped, with a note, when it is not installed.
//! * **a naive script** (Python 3, standard library): read the file, POST every 500 lines; no
//!   durability, no retry, no dedupe: the floor any daemon must be measured against.
//!
//! The fake API checks every record strictly and runs on one thread of this process, on the
//! same two cores as the client it measures. Each job runs against a sink that keeps what it
//! accepts and one that only counts, and its faster run is reported. With `BENCH_SINK=python`
//! the sink is instead a plain Python `http.server` that parses each body as JSON and counts
//! its records, a sink that costs CPU on the same cores as real receivers do.
//!
//! It also runs, in this process, the ceiling of our ingest: a raw rusqlite loop inserting
//! the outbox's row shape (sequential dedupe keys, plain payloads, 16,384 rows per transaction) with the
//! outbox's pragmas, at `synchronous = FULL` and `NORMAL`; and the daemon's own ingest (API
//! down) on the same file, as a ratio of that ceiling.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use injixo_sync::fake_api::FakeApi;

mod common;
use common::*;

const KEY: &str = "bench-key";

fn main() {
    let n: u64 = env_or("BENCH_RECORDS", 200_000);
    let runtime = runtime(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let mut text = String::with_capacity(n as usize * 200);
    for i in 0..n {
        text.push_str(&contact_event(i));
        text.push('\n');
    }
    std::fs::write(&file, &text).unwrap();
    drop(text);

    let full = ceiling(dir.path(), n, "FULL");
    let normal = ceiling(dir.path(), n, "NORMAL");

    // The daemon's ingest alone: the API down, records/s into the outbox.
    let api = runtime.block_on(FakeApi::start(KEY)).unwrap();
    api.set_outage(Some((503, None)));
    let ingest = {
        let run = dir.path().join("ingest");
        let config = daemon_config(&run, &file, &api.url());
        let start = Instant::now();
        let child = daemon(&config);
        wait(Duration::from_secs(900), || {
            committed(&run.join("outbox.db")) >= n
        });
        let took = start.elapsed().as_secs_f64();
        stop(child);
        (n as f64 / took, on_disk(&run.join("outbox.db")))
    };
    let (ingest, (disk, payload)) = ingest;
    drop(api);

    // The whole job, three ways; each against a fresh fake API, timed from start to the
    // API holding every record. Each way runs twice, once against a sink that keeps what it
    // accepts and once against one that counts, and the faster run counts: which suits a
    // client better differs (syslog-ng is about a tenth faster against the slower one).
    let ours = best(|keep| {
        let api = sink(&runtime, keep);
        let run = dir.path().join(format!("job-{keep}"));
        let config = daemon_config(&run, &file, &api.url());
        let start = Instant::now();
        let child = daemon(&config);
        let pid = child.id();
        wait(Duration::from_secs(900), || api.record_count() as u64 >= n);
        let took = start.elapsed().as_secs_f64();
        let rss = status_kib(pid, "VmHWM:");
        stop(child);
        Ok((took, rss, api.record_count() as u64))
    });
    let syslog = best(|keep| syslog_ng(&runtime, keep, dir.path(), &file, n));
    let naive = best(|keep| {
        let api = sink(&runtime, keep);
        let start = Instant::now();
        let status = Command::new("python3")
            .arg("-c")
            .arg(NAIVE)
            .arg(&file)
            .arg(format!("{}/external-systems/contact-events", api.url()))
            .arg(KEY)
            .stdout(Stdio::null())
            .status()
            .expect("python3 runs");
        assert!(status.success(), "the naive script failed");
        wait(Duration::from_secs(60), || api.record_count() as u64 >= n);
        Ok((start.elapsed().as_secs_f64(), 0, api.record_count() as u64))
    });
    let (ours, naive) = (ours.ok(), naive.ok());

    let rate = |r: &Option<(f64, u64, u64)>| r.map(|(t, _, _)| n as f64 / t);
    let ours_rate = rate(&ours).unwrap();
    let mut table = format!(
        "| measure ({n} NDJSON contact events, release build, {} cores, {} sink) | value | ratio |\n\
         |---|---:|---:|\n\
         | raw rusqlite insert loop, synchronous = FULL (the ceiling) | {full:.0} records/s | 1.00 |\n\
         | raw rusqlite insert loop, synchronous = NORMAL | {normal:.0} records/s | {:.2} × FULL |\n\
         | injixo-sync ingest into the outbox (API down) | {ingest:.0} records/s | {:.2} of the ceiling |\n\
         | outbox on disk after that ingest ({n} records kept) | {:.0} bytes/record | {:.2} × the payload ({:.0} bytes/record) |\n",
        cores(),
        if python_sink() {
            "Python http.server"
        } else {
            "Rust fake API"
        },
        normal / full,
        ingest / full,
        disk as f64 / n as f64,
        disk as f64 / payload as f64,
        payload as f64 / n as f64,
    );
    let mut job = |name: &str, r: &Option<(f64, u64, u64)>, note: &str| match r {
        Some((t, rss, got)) => {
            let rss = if *rss > 0 {
                format!(", peak RSS {:.1} MB", *rss as f64 / 1024.0)
            } else {
                String::new()
            };
            table.push_str(&format!(
                "| file → API, {name}{note} | {:.0} records/s ({t:.2} s, {got} received{rss}) | injixo-sync {:.2}× |\n",
                n as f64 / t,
                ours_rate / (n as f64 / t),
            ));
        }
        None => table.push_str(&format!("| file → API, {name} | not run: {note} | |\n")),
    };
    job("injixo-sync (durable outbox, idempotency keys)", &ours, "");
    match &syslog {
        Ok(r) => job(
            "syslog-ng (reliable disk buffer, http batches of 500)",
            &Some(*r),
            "",
        ),
        Err(why) => job("syslog-ng", &None, why),
    }
    job("naive script (no durability)", &naive, "");
    save(
        if python_sink() {
            "compare-python"
        } else {
            "compare"
        },
        &table,
        serde_json::json!({
            "records": n,
            "sink": if python_sink() { "python" } else { "rust" },
            "ceiling_full_records_per_s": full,
            "ceiling_normal_records_per_s": normal,
            "ingest_records_per_s": ingest,
            "outbox_bytes": disk,
            "payload_bytes": payload,
            "injixo_sync_records_per_s": ours_rate,
            "syslog_ng_records_per_s": syslog.as_ref().ok().map(|(t, _, _)| n as f64 / t),
            "naive_records_per_s": rate(&naive),
        }),
    );
}

/// What a job sends to: the fake API (in this process), or a Python sink (`BENCH_SINK=python`).
enum Sink {
    Rust(FakeApi),
    Python(std::process::Child, u16),
}

impl Sink {
    fn url(&self) -> String {
        match self {
            Sink::Rust(api) => api.url(),
            Sink::Python(_, port) => format!("http://127.0.0.1:{port}"),
        }
    }

    fn record_count(&self) -> usize {
        match self {
            Sink::Rust(api) => api.record_count(),
            Sink::Python(_, port) => {
                use std::io::{Read, Write};
                let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", *port)) else {
                    return 0;
                };
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                answer
                    .rsplit("\r\n\r\n")
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Python(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn python_sink() -> bool {
    std::env::var("BENCH_SINK").is_ok_and(|s| s == "python")
}

/// The sink a job sends to: the fake API checks every record as strictly as always, and keeps
/// what it accepts or only counts it; the Python sink parses and counts.
fn sink(runtime: &tokio::runtime::Runtime, keep: bool) -> Sink {
    if python_sink() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("python3")
            .arg("-c")
            .arg(PYTHON_SINK)
            .arg(port.to_string())
            .spawn()
            .expect("python3 runs");
        let sink = Sink::Python(child, port);
        wait(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        return sink;
    }
    let api = runtime.block_on(FakeApi::start(KEY)).unwrap();
    if !keep {
        api.count_only();
    }
    Sink::Rust(api)
}

/// A plain `http.server` that parses each body and counts its records (GET: the count).
const PYTHON_SINK: &str = r#"
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count = 0
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        global count
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        with lock:
            count += len(body["data"])
        out = json.dumps({"accepted": len(body["data"])}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def do_GET(self):
        out = str(count).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// The faster of a job's runs against a keeping and a counting sink: (seconds, peak RSS in
/// KiB, records received).
fn best(
    mut job: impl FnMut(bool) -> Result<(f64, u64, u64), String>,
) -> Result<(f64, u64, u64), String> {
    let kept = job(true)?;
    if python_sink() {
        return Ok(kept);
    }
    let counted = job(false)?;
    Ok(if kept.0 <= counted.0 { kept } else { counted })
}

/// A daemon configuration in `run/` reading `file` (tail mode, from its start).
fn daemon_config(run: &std::path::Path, file: &std::path::Path, api: &str) -> std::path::PathBuf {
    let exports = run.join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    std::fs::hard_link(file, exports.join("events.ndjson"))
        .or_else(|_| std::fs::copy(file, exports.join("events.ndjson")).map(|_| ()))
        .unwrap();
    std::fs::write(run.join("key"), KEY).unwrap();
    let config = run.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nurl = {api:?}\ntoken_file = \"key\"\nretry_initial = \"20ms\"\nretry_max = \"50ms\"\n\
             [state]\npath = \"outbox.db\"\n[log]\nlevel = \"warn\"\n[[source]]\nname = \"acd\"\n\
             type = \"files\"\nintegration_id = 1\nemits = \"contact_events\"\npath = \"exports\"\n\
             format = \"ndjson\"\nmode = \"tail\"\nstart_at = \"beginning\"\n"
        ),
    )
    .unwrap();
    config
}

/// The outbox's size on disk (with its WAL) and the bytes of the payloads it keeps.
fn on_disk(state: &std::path::Path) -> (u64, u64) {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = state.with_extension("db-wal");
    let conn =
        rusqlite::Connection::open_with_flags(state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    injixo_sync::outbox::register_functions(&conn).unwrap();
    let payload: i64 = conn
        .query_row(
            "SELECT sum(length(payload(payload))) FROM records",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (size(state) + size(&wal), payload as u64)
}

/// Inserts `n` rows of the outbox's shape in transactions of 16,384 with the outbox's pragmas
/// and `synchronous`; returns rows/s.
fn ceiling(dir: &std::path::Path, n: u64, synchronous: &str) -> f64 {
    let path = dir.join(format!("ceiling-{synchronous}.db"));
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY; \
         PRAGMA wal_autocheckpoint = 4000;
         CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, lane_id INTEGER NOT NULL, \
           source_id INTEGER NOT NULL, dkey BLOB NOT NULL, payload TEXT NOT NULL, \
           origin TEXT NOT NULL, created INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0, \
           batch_id INTEGER, sent_at INTEGER);
         CREATE UNIQUE INDEX records_dedupe ON records (source_id, dkey);
         CREATE TABLE cursors (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO cursors VALUES (1, '0');"
    ))
    .unwrap();
    let lines: Vec<String> = (0..n).map(contact_event).collect();
    let start = Instant::now();
    let mut offset = 0u64;
    for chunk in lines.chunks(16_384) {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO records (lane_id, source_id, dkey, payload, origin, created) \
                     VALUES (1, 1, ?1, ?2, 'events.ndjson', ?3)",
                )
                .unwrap();
            for line in chunk {
                let key = injixo_sync::outbox::dedupe_key(1, offset);
                insert
                    .execute(rusqlite::params![&key[..], line, 0i64])
                    .unwrap();
                offset += line.len() as u64 + 1;
            }
            tx.execute(
                "UPDATE cursors SET value = ?1 WHERE id = 1",
                [offset.to_string()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// syslog-ng doing the job; `Err` says why it did not run.
fn syslog_ng(
    runtime: &tokio::runtime::Runtime,
    keep: bool,
    dir: &std::path::Path,
    file: &std::path::Path,
    n: u64,
) -> Result<(f64, u64, u64), String> {
    if Command::new("syslog-ng").arg("--version").output().is_err() {
        return Err(
            "syslog-ng is not installed (apt-get install syslog-ng-core syslog-ng-mod-http)".into(),
        );
    }
    let api = sink(runtime, keep);
    let run = dir.join(format!("syslog-ng-{keep}"));
    std::fs::create_dir_all(run.join("buffer")).unwrap();
    let conf = run.join("syslog-ng.conf");
    std::fs::write(
        &conf,
        format!(
            r#"@version: 3.38
options {{ stats-freq(0); }};
source s_export {{ file("{file}" flags(no-parse) follow-freq(0.1) log-msg-size(65536) log-fetch-limit(1000) log-iw-size(20000)); }};
destination d_injixo {{
  http(
    url("{api}/external-systems/contact-events")
    method("POST")
    headers("Authorization: Bearer {KEY}", "Content-Type: application/json")
    body-prefix('{{"meta":{{"integrationConfigurationId":1}},"data":[')
    delimiter(",")
    body-suffix("]}}")
    body("${{MSG}}")
    batch-lines(500)
    batch-bytes(1048576)
    batch-timeout(100)
    workers(2)
    persist-name("injixo")
    disk-buffer(reliable(yes) dir("{buffer}") disk-buf-size(2147483648) mem-buf-size(67108864))
  );
}};
log {{ source(s_export); destination(d_injixo); }};
"#,
            file = file.display(),
            api = api.url(),
            buffer = run.join("buffer").display(),
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new("syslog-ng")
        .args(["-F", "--no-caps", "-f"])
        .arg(&conf)
        .arg("-R")
        .arg(run.join("persist"))
        .arg("-p")
        .arg(run.join("pid"))
        .arg("-c")
        .arg(run.join("ctl"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(run.join("stderr")).unwrap())
        .spawn()
        .map_err(|e| format!("cannot start syslog-ng: {e}"))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(900);
    while (api.record_count() as u64) < n {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let said = std::fs::read_to_string(run.join("stderr")).unwrap_or_default();
            return Err(format!(
                "syslog-ng delivered {} of {n} records before it stopped or timed out: {}",
                api.record_count(),
                said.trim().replace('\n', " / ")
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let took = start.elapsed().as_secs_f64();
    let rss = status_kib(pid, "VmHWM:");
    stop(child);
    Ok((took, rss, api.record_count() as u64))
}

/// Reads the file and POSTs every 500 lines; argv: file, url, key.
const NAIVE: &str = r#"
import sys, urllib.request
path, url, key = sys.argv[1:4]
def post(lines):
    body = ('{"meta":{"integrationConfigurationId":1},"data":[' + ",".join(lines) + "]}").encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": "Bearer " + key, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
batch = []
with open(path) as f:
    for line in f:
        batch.append(line.rstrip("\n"))
        if len(batch) == 500:
            post(batch)
            batch = []
if batch:
    post(batch)
"#;
