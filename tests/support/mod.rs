//! Shared test fixtures: a temporary installation (export directory, key file, state file),
//! configuration text, condition waits with deadlines, and the daemon run in-process or as a
//! real child process. The fake injixo API itself is `injixo_sync::fake_api`, which `demo` uses
//! too; it validates every request against the documented schema.

#![allow(dead_code)]

pub mod acd_api;
pub mod browser;
pub mod net;
pub mod prereq;
#[allow(unused_imports)]
pub use net::free_port;
#[allow(unused_imports)]
pub use prereq::{has_program, is_root, require};
#[cfg(unix)]
pub mod databases;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use injixo_sync::config::Config;
#[allow(unused_imports)]
pub use injixo_sync::fake_api::{FakeApi, Fault};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "test-key-0123456789";

/// A temporary installation.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub exports: PathBuf,
    pub state: PathBuf,
    pub key_file: PathBuf,
    pub config_file: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        // Daemon logs go to the test's captured output (shown for failing tests); RUST_LOG
        // chooses the level.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let exports = dir.path().join("exports");
        std::fs::create_dir_all(&exports).unwrap();
        let key_file = dir.path().join("api-key");
        std::fs::write(&key_file, KEY).unwrap();
        Self {
            state: dir.path().join("state").join("outbox.db"),
            config_file: dir.path().join("config.toml"),
            exports,
            key_file,
            dir,
        }
    }

    /// `[api]` and `[state]` for a fake API at `url`, fast retries, plus `sources` verbatim.
    pub fn config_text(&self, url: &str, api_extra: &str, sources: &str) -> String {
        format!(
            "[api]\nurl = {url:?}\ntoken_file = {key:?}\nlinger = \"50ms\"\nretry_initial = \"50ms\"\n\
             retry_max = \"400ms\"\npause_probe = \"300ms\"\n{api_extra}\n\n[state]\npath = {state:?}\n\n{sources}",
            key = self.key_file.display().to_string(),
            state = self.state.display().to_string(),
        )
    }

    /// An NDJSON contact-events source over the export directory.
    pub fn ndjson_source(&self, name: &str, mode: &str, extra: &str) -> String {
        format!(
            "[[source]]\nname = {name:?}\ntype = \"files\"\nintegration_id = 1234\n\
             emits = \"contact_events\"\npath = {path:?}\ninclude = [\"*.ndjson\"]\n\
             format = \"ndjson\"\nmode = {mode:?}\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n{extra}\n",
            path = self.exports.display().to_string(),
        )
    }

    pub fn write_config(&self, text: &str) -> Config {
        std::fs::write(&self.config_file, text).unwrap();
        Config::load(&self.config_file).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `check --offline` on this installation's configuration: exit code and output.
    pub fn check_offline(&self) -> (i32, String) {
        cli(&[
            "--config",
            self.config_file.to_str().unwrap(),
            "check",
            "--offline",
        ])
    }

    pub fn report(&self) -> injixo_sync::outbox::Report {
        injixo_sync::outbox::inspect(&self.state, 50).expect("outbox report")
    }

    /// The report, or `None` while the daemon has not created the outbox yet.
    pub fn try_report(&self) -> Option<injixo_sync::outbox::Report> {
        injixo_sync::outbox::inspect(&self.state, 50)
            .ok()
            .filter(|r| !r.lanes.is_empty())
    }

    /// The first source's row, `None` until the daemon has written it (the lanes can exist
    /// before any source has committed).
    pub fn first_source(&self) -> Option<injixo_sync::outbox::SourceReport> {
        self.try_report()?.sources.into_iter().next()
    }

    /// The first lane's health, `""` before it exists.
    pub fn health(&self) -> String {
        self.try_report()
            .map(|r| r.lanes[0].health.clone())
            .unwrap_or_default()
    }
}

/// A contact event whose `duration` carries a unique id, as one NDJSON line.
pub fn event(id: u64) -> String {
    format!(
        r#"{{"properties":{{"offered":true,"handled":true,"duration":{id}}},"queueName":"Support","queueIdentifier":"support","timestamp":"2024-05-01T08:00:00Z","channel":"calls"}}"#
    )
}

pub fn events(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter().map(|i| event(i) + "\n").collect()
}

/// The id of an accepted record (see [`event`]).
pub fn id_of(record: &Value) -> u64 {
    record["properties"]["duration"].as_f64().expect("duration") as u64
}

/// How often each id arrived.
pub fn arrivals(api: &FakeApi) -> HashMap<u64, usize> {
    let mut m = HashMap::new();
    for r in api.records() {
        *m.entry(id_of(&r)).or_default() += 1;
    }
    m
}

/// Every id of `ids` arrived exactly once, and nothing else arrived.
pub fn assert_arrived_once(api: &FakeApi, ids: impl IntoIterator<Item = u64>) {
    let got = arrivals(api);
    let mut expected: Vec<u64> = ids.into_iter().collect();
    expected.sort_unstable();
    for id in &expected {
        assert_eq!(
            got.get(id),
            Some(&1),
            "record {id} arrived {:?} times",
            got.get(id)
        );
    }
    let mut extra: Vec<&u64> = got
        .keys()
        .filter(|id| expected.binary_search(id).is_err())
        .collect();
    extra.sort();
    assert!(extra.is_empty(), "records nobody expected: {extra:?}");
}

/// Waits until the daemon listening on `port` serves requests (`/healthz` answers 200): its
/// outbox is open and its sources run. (The socket alone is bound before that, and kept
/// across reloads, so a connection is no sign.)
pub async fn wait_serving(port: u16) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status().as_u16() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the daemon to serve"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no lane has a record left to send (so no further copy can arrive).
pub async fn settled(env: &Env) {
    wait_for(
        Duration::from_secs(60),
        "every lane to have nothing pending",
        || {
            env.try_report()
                .is_some_and(|r| r.lanes.iter().all(|l| l.pending == 0))
        },
    )
    .await;
}

/// Waits until the poller `source` has completed `n` more polls (its `poll` cursor row keeps
/// when the last complete poll started).
pub async fn more_polls(env: &Env, source: &str, n: usize) {
    let last_poll = || {
        env.try_report()?
            .sources
            .into_iter()
            .find(|s| s.name == source)?
            .cursors
            .into_iter()
            .find(|c| c.key == "poll")?
            .value["last_poll_ms"]
            .as_i64()
    };
    let mut seen = std::collections::BTreeSet::new();
    seen.extend(last_poll());
    let before = seen.len();
    wait_for(Duration::from_secs(60), "more polls", || {
        seen.extend(last_poll());
        seen.len() >= before + n
    })
    .await;
}

/// `text` with a `[listen]` table on a free port, so that the daemon serves `/metrics`: the
/// text and the port.
pub fn listening(text: &str) -> (String, u16) {
    let port = free_port();
    (
        format!("{text}\n[listen]\naddress = \"127.0.0.1:{port}\"\n"),
        port,
    )
}

/// The value of `sample` (a metric's name and labels, as `/metrics` writes them) in a
/// Prometheus text exposition.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .parse::<f64>()
            .ok()
    })
}

/// The value of `sample` in the `/metrics` of the daemon listening on `port`; `None` while it
/// does not serve.
pub async fn metric(port: u16, sample: &str) -> Option<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let r = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?;
    sample_value(&r.text().await.ok()?, sample).map(|v| v as u64)
}

/// Waits until the counter `sample` of the daemon listening on `port` has gone up by `n` from
/// what it is when called (once the daemon serves).
pub async fn counter_rises(port: u16, sample: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = loop {
        if let Some(v) = metric(port, sample).await {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {sample} in /metrics"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    counter_reaches(port, sample, start + n).await;
}

/// Waits until the counter `sample` of the daemon listening on `port` is at least `target`.
pub async fn counter_reaches(port: u16, sample: &str, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(port, sample).await;
        if now.is_some_and(|v| v >= target) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {sample} to reach {target} (it is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until source `source` of the daemon listening on `port` has finished `n` more passes
/// (looks over its folder and files, polls) than when called. With `n` >= 2 at least one whole
/// pass began after the call: what was set up before it, the source has seen.
pub async fn more_scans(port: u16, source: &str, n: u64) {
    let sample = format!("injixo_sync_source_scans_total{{source=\"{source}\"}}");
    counter_rises(port, &sample, n).await;
}

/// Waits until source `source` of the daemon listening on `port` has had at least `n` commits
/// refused for want of room (`reason`: `budget` or `disk_full`) since the daemon started.
pub async fn room_waits(port: u16, source: &str, reason: &str, n: u64) {
    let sample =
        format!("injixo_sync_source_room_waits_total{{source=\"{source}\",reason=\"{reason}\"}}");
    counter_reaches(port, &sample, n).await;
}

/// Records the API accepted inside batches it accepted more than once under one
/// `Idempotency-Key`: resends of a batch whose answer was lost. Duplicates must fit in here.
pub fn records_in_resent_batches(api: &FakeApi) -> usize {
    let accepted = api.accepted();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for a in &accepted {
        *by_key
            .entry(a.idempotency_key.clone().unwrap())
            .or_default() += 1;
    }
    accepted
        .iter()
        .filter(|a| by_key[a.idempotency_key.as_ref().unwrap()] > 1)
        .map(|a| a.records.len())
        .sum()
}

/// A random generator seeded from `$var` when set, else at random; the seed is printed so a
/// failing run can be repeated.
pub fn seeded_rng(var: &str) -> fastrand::Rng {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{var}={seed}");
    fastrand::Rng::with_seed(seed)
}

/// Polls `cond` until it holds or `limit` passes (then panics naming `what`).
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The daemon running inside the test process. Dropping it (a failed assertion) stops it, so
/// the source threads do not keep the test's runtime from shutting down.
pub struct Daemon {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), injixo_sync::app::RunError>>>,
}

impl Daemon {
    pub fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(injixo_sync::run(config, shutdown.clone()));
        Self {
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("running");
        handle.await.expect("daemon task").expect("daemon run");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The real binary as a child process, for kill -9.
pub struct Process(Child);

impl Process {
    pub fn start(config: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start injixo-sync");
        Self(child)
    }

    /// A process started from a prepared command.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("start injixo-sync"))
    }

    /// Like [`Process::start`], with the log (`info`) written to `log`.
    pub fn start_logged(config: &Path, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start injixo-sync");
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Panics if the process has already exited (a configuration it refused, say).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("injixo-sync exited early with {status}");
        }
    }

    /// Waits up to `limit` for the process to end by itself: its exit status, or `None` while
    /// it still runs.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for injixo-sync") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.0.id().to_string())
                .status();
        }
        self.0.wait().expect("wait for injixo-sync")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many generations a logged daemon (see [`Process::start_logged`]) has started.
pub fn generations_started(log: &Path) -> usize {
    let started = format!("injixo-sync {} running", env!("CARGO_PKG_VERSION"));
    std::fs::read_to_string(log)
        .map(|t| t.matches(&started).count())
        .unwrap_or(0)
}

/// How many generations a logged daemon ran, checking that each stopped before the next
/// started: in its log, starts (`injixo-sync <version> running`) and stops (`stopped`)
/// alternate, a start first.
pub fn generations_one_at_a_time(log: &Path) -> usize {
    let started = format!("injixo-sync {} running", env!("CARGO_PKG_VERSION"));
    let text = std::fs::read_to_string(log).expect("the daemon's log");
    let marks: String = text
        .lines()
        .filter_map(|l| {
            if l.contains(&started) {
                Some('R')
            } else if l.ends_with(" INFO stopped") {
                Some('S')
            } else {
                None
            }
        })
        .collect();
    let alternating = marks
        .chars()
        .enumerate()
        .all(|(i, m)| m == if i % 2 == 0 { 'R' } else { 'S' });
    assert!(
        alternating,
        "a generation started before the previous one stopped (R: started, S: stopped): {marks}"
    );
    marks.matches('R').count()
}

/// Runs the binary with arguments and returns (exit code, stdout + stderr).
pub fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(args)
        .output()
        .expect("run injixo-sync");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// [`cli`], but a command still running after `limit` is killed and reported as such.
pub fn cli_within(args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run injixo-sync");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "injixo-sync {args:?} still ran after {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The sources `init --acd acd` writes with `flags`, from its first `[[source]]` on, with each
/// `(from, to)` of `edits` applied (each must match: a test that edits what the recipe no
/// longer writes fails) and the schedules shortened to a second.
pub fn recipe_sources(dir: &Path, acd: &str, flags: &[&str], edits: &[(&str, &str)]) -> String {
    let out = dir.join(format!("{acd}.toml"));
    let mut args = vec!["init", "--acd", acd];
    args.extend_from_slice(flags);
    args.extend(["--output", out.to_str().unwrap()]);
    let (code, text) = cli(&args);
    assert_eq!(code, 0, "{text}");
    let generated = std::fs::read_to_string(&out).unwrap();
    let mut sources = generated[generated.find("[[source]]").expect("sources")..].to_owned();
    for (from, to) in edits {
        assert!(
            sources.contains(from),
            "the recipe writes no {from:?}:\n{sources}"
        );
        sources = sources.replace(from, to);
    }
    for every in ["every = \"1m\"", "every = \"5m\"", "every = \"10s\""] {
        sources = sources.replace(every, "every = \"1s\"");
    }
    sources
}

/// An outbox with one source (`source`) and one contact-events lane registered.
pub async fn open_with_lane(
    path: &Path,
    source: &str,
) -> (
    injixo_sync::outbox::Outbox,
    std::thread::JoinHandle<()>,
    injixo_sync::outbox::SourceId,
    injixo_sync::outbox::LaneId,
) {
    use injixo_sync::types::{Emits, LaneKey, SourceName};
    let (outbox, writer) = injixo_sync::outbox::Outbox::open(path).unwrap();
    let source = outbox
        .source_id(&SourceName::parse(source).unwrap())
        .await
        .unwrap();
    let lane = outbox
        .lane_id(&LaneKey {
            emits: Emits::ContactEvents,
            integration_id: 1,
            external_system: None,
        })
        .await
        .unwrap();
    (outbox, writer, source, lane)
}

/// (agent, activity, start, end) of every agent status the API accepted, in order.
pub fn intervals(api: &FakeApi) -> Vec<(String, String, String, String)> {
    api.records()
        .iter()
        .filter(|r| r.get("agentIdentifier").is_some())
        .map(|r: &Value| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (
                s("agentIdentifier"),
                s("activityIdentifier"),
                s("startTime"),
                s("endTime"),
            )
        })
        .collect()
}

/// Every row parked in the state file at `path`, in the order they were parked.
pub fn all_parked(path: &Path) -> Vec<injixo_sync::outbox::ParkedRow> {
    let all = injixo_sync::outbox::ParkedFilter::default();
    injixo_sync::outbox::parked_rows(path, &all, &[], 0, usize::MAX).unwrap()
}
