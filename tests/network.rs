//! The API across a bad network: the daemon and the fake API share a network namespace of
//! their own, whose loopback first loses one packet in ten (nftables), then carries no API
//! packet at all for a while, then crawls through a 2 Mbit/s token bucket. Every record
//! arrives without operator action, and a record arrives twice only inside a batch resent under
//! its key. Needs root, iproute2 and nftables (`.ci/run` installs them and runs as root); the
//! kernel here has no netem, so loss comes from nftables and slowness from `tbf`.
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const API_PORT: u16 = 9851;
/// The daemon's `/metrics`, inside the namespace.
const METRICS_PORT: u16 = 9852;
const RECORDS: u64 = 20_000;

/// A network namespace with only a loopback interface, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Option<Self> {
        let name = format!("injixo-test-{}", std::process::id());
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("ip").args(["netns", "add", &name])) {
            return None;
        }
        let ns = Netns(name);
        assert!(ok(&mut ns.cmd(&["ip", "link", "set", "lo", "up"])));
        if !ok(&mut ns.cmd(&["nft", "add", "table", "inet", "faults"])) {
            return None;
        }
        assert!(ok(&mut ns.cmd(&[
            "nft",
            "add chain inet faults out { type filter hook output priority 0; }"
        ])));
        Some(ns)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    fn run(&self, args: &[&str]) {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replaces the fault rules (none: a clean network).
    fn faults(&self, rules: &[&str]) {
        self.run(&["nft", "flush chain inet faults out"]);
        for rule in rules {
            self.run(&["nft", &format!("add rule inet faults out {rule}")]);
        }
    }

    /// The body of `GET path` on `port`, from inside the namespace (`None` while it cannot be
    /// reached).
    fn get(&self, port: u16, path: &str) -> Option<String> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && \
             printf 'GET {path} HTTP/1.0\\r\\nHost: test\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let Output { stdout, .. } = self
            .cmd(&["timeout", "5", "bash", "-c", &script])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&stdout);
        Some(text.split_once("\r\n\r\n")?.1.to_owned())
    }

    /// The fake API's counters (`None` while it cannot be reached).
    fn stats(&self) -> Option<Value> {
        serde_json::from_str(&self.get(API_PORT, "/_fake/stats")?).ok()
    }

    /// Requests of the daemon that got no answer from the API, as its `/metrics` counts them
    /// (`None` while it cannot be reached).
    fn unanswered(&self) -> Option<u64> {
        let text = self.get(METRICS_PORT, "/metrics")?;
        let samples = text.lines().filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let unanswered = name.starts_with("injixo_sync_http_responses_total{")
                && name.ends_with(",status=\"0\"}");
            unanswered.then(|| value.parse::<u64>().ok())?
        });
        text.contains("injixo_sync_up 1").then(|| samples.sum())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn count(stats: &Option<Value>, key: &str) -> u64 {
    stats.as_ref().and_then(|s| s[key].as_u64()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_darkness_and_a_slow_link_are_ridden_out() {
    let tools = has_program("ip", "-V") && has_program("nft", "--version");
    if !require(
        "netns",
        is_root() && tools,
        "run the tests as root with iproute2 and nftables (apt-get install iproute2 nftables)",
    ) {
        return;
    }
    let ns = Netns::create().expect("a network namespace with nftables (root, ip, nft)");
    let env = Env::new();
    let bin = env!("CARGO_BIN_EXE_injixo-sync");
    let listen = format!("127.0.0.1:{API_PORT}");
    let _api = Killed(
        ns.cmd(&[bin, "fake-api", "--listen", &listen, "--key", KEY])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(
        &env.config_file,
        env.config_text(
            &format!("http://{listen}"),
            "timeout = \"2s\"\nbatch_records = 500",
            &format!(
                "{}\n[listen]\naddress = \"127.0.0.1:{METRICS_PORT}\"\n",
                env.ndjson_source("live", "tail", "")
            ),
        ),
    )
    .unwrap();
    let log = env.dir.path().join("daemon.log");
    let daemon = ns
        .cmd(&[bin, "--config", env.config_file.to_str().unwrap(), "run"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let daemon = Killed(daemon);
    let mut live = std::fs::File::create(env.exports.join("live.ndjson")).unwrap();
    let mut written = 0;
    let mut write = |n: u64| {
        live.write_all(events(written..written + n).as_bytes())
            .unwrap();
        written += n;
    };

    // A clean start.
    write(2_000);
    wait_for(Duration::from_secs(30), "the first records", || {
        count(&ns.stats(), "distinct_records") >= 1_000
    })
    .await;

    // One packet in ten lost, both ways.
    ns.faults(&["numgen random mod 100 < 10 drop"]);
    for _ in 0..4 {
        write(2_000);
        tokio::time::sleep(Duration::from_millis(750)).await;
    }

    // Dark: no packet to or from the API, for three request timeouts.
    ns.faults(&[
        &format!("tcp dport {API_PORT} drop"),
        &format!("tcp sport {API_PORT} drop"),
    ]);
    let unanswered = ns.unanswered().expect("the daemon's /metrics");
    write(5_000);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Felt: at least one request was sent and timed out wholly in the dark.
    wait_for(
        Duration::from_secs(60),
        "requests unanswered in the dark",
        || ns.unanswered().is_some_and(|n| n >= unanswered + 2),
    )
    .await;

    // Slow: the link back, at 2 Mbit/s.
    ns.faults(&[]);
    ns.run(&[
        "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "2mbit", "burst", "32kbit",
        "latency", "400ms",
    ]);
    write(5_000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    ns.run(&["tc", "qdisc", "del", "dev", "lo", "root"]);
    assert_eq!(written, RECORDS);

    // No operator action: the daemon catches up by itself.
    let started = Instant::now();
    wait_for(Duration::from_secs(120), "every record delivered", || {
        count(&ns.stats(), "distinct_records") >= RECORDS
    })
    .await;
    let stats = ns.stats();
    let (records, distinct, resent) = (
        count(&stats, "records"),
        count(&stats, "distinct_records"),
        count(&stats, "records_under_repeated_keys"),
    );
    assert_eq!(distinct, RECORDS, "{stats:?}");
    assert!(
        records - distinct <= resent,
        "duplicates only inside batches resent under their key: {stats:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("delivery failing"),
        "the dark phase was felt: {text}"
    );
    eprintln!(
        "{RECORDS} records across loss, darkness and a slow link: {} duplicates (in {resent} \
         resent), caught up {:.1} s after the link was clean",
        records - distinct,
        started.elapsed().as_secs_f64()
    );
    drop(daemon);
}
