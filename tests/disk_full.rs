//! A full disk under the state file: reading stops with a clear error, nothing is corrupted,
//! and everything resumes once space returns. Needs root (it mounts a small tmpfs); CI runs as
//! root.
#![cfg(target_os = "linux")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(90);

fn available_kib(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-k"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A 1 MiB tmpfs over the state directory; `None` where mounting is not allowed and skipping
/// that was asked for (`INJIXO_TEST_SKIP=mount`).
fn small_state_disk(env: &Env) -> Option<Mount> {
    if !require(
        "mount",
        is_root(),
        "run the tests as root, which may mount a tmpfs",
    ) {
        return None;
    }
    let fs = env.dir.path().join("state");
    std::fs::create_dir_all(&fs).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&fs)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mount -t tmpfs failed as root");
    Some(Mount(fs))
}

fn grow(mount: &Mount) {
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&mount.0)
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_reading_and_everything_resumes_when_space_returns() {
    let env = Env::new();
    let Some(mount) = small_state_disk(&env) else {
        return;
    };
    let fs = mount.0.clone();
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    std::fs::write(env.exports.join("live.ndjson"), events(0..20_000)).unwrap();
    let daemon = Daemon::start(config);

    wait_for(LIMIT, "the state disk to fill", || available_kib(&fs) < 64).await;
    let stuck = env.first_source().map_or(0, |s| s.records_total);
    assert!(
        stuck < 20_000,
        "the disk filled before everything was read ({stuck})"
    );

    // Space returns: reading resumes at the committed position, then delivery once the API is
    // back.
    grow(&mount);
    wait_for(LIMIT, "all 20,000 read", || {
        env.first_source()
            .is_some_and(|s| s.records_total == 20_000)
    })
    .await;
    api.set_outage(None);
    wait_for(LIMIT, "all 20,000 delivered", || {
        arrivals(&api).len() == 20_000
    })
    .await;
    daemon.stop().await;
    assert!(arrivals(&api).values().all(|n| *n == 1), "each once");
    assert_eq!(env.report().sources[0].parked_total, 0);
    let (code, out) = env.check_offline();
    assert_eq!(code, 0, "the outbox is intact: {out}");
}

/// Agent states are applied once: a commit the full disk refused leaves the open states as they
/// are on disk, so the changes read again after space returns close each interval once and
/// none is parked as out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_open_agent_states_as_committed() {
    const AGENTS: u64 = 4;
    const CHANGES: u64 = 24_000;
    let env = Env::new();
    let Some(mount) = small_state_disk(&env) else {
        return;
    };
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let source = format!(
        "[[source]]\nname = \"states\"\ntype = \"files\"\nintegration_id = 7\n\
         emits = \"agent_states\"\nexternal_system = \"ACD\"\npath = {:?}\nformat = \"csv\"\n\
         mode = \"tail\"\nsettle = \"100ms\"\npoll_interval = \"200ms\"\n\
         [source.map]\nagentIdentifier = \"agent\"\nactivityIdentifier = \"state\"\ntimestamp = \"at\"\n",
        env.exports.display().to_string()
    );
    let (text, port) = listening(&env.config_text(&api.url(), "", &source));
    let config = env.write_config(&text);
    // Each agent alternates READY and PAUSE, one change per second.
    let start = jiff::Timestamp::from_second(1_714_550_400).unwrap();
    let mut csv = String::from("agent,state,at\n");
    for i in 0..CHANGES {
        let at = start + jiff::SignedDuration::from_secs(i as i64);
        let state = if (i / AGENTS).is_multiple_of(2) {
            "READY"
        } else {
            "PAUSE"
        };
        csv.push_str(&format!("{},{state},{at}\n", 1000 + i % AGENTS));
    }
    std::fs::write(env.exports.join("states.csv"), csv).unwrap();
    let daemon = Daemon::start(config);

    wait_for(LIMIT, "the state disk to fill", || {
        available_kib(&mount.0) < 64
    })
    .await;
    // Reading meets the full disk more than once, each time putting the open states back as
    // the refused commit found them.
    room_waits(port, "states", "disk_full", 2).await;
    grow(&mount);
    api.set_outage(None);
    // Every change but each agent's last closes one interval.
    let expected = (CHANGES - AGENTS) as usize;
    wait_for(LIMIT, "every interval delivered", || {
        api.record_count() >= expected
    })
    .await;
    settled(&env).await;
    daemon.stop().await;
    assert_eq!(env.report().sources[0].parked_total, 0, "nothing parked");
    let mut seen = std::collections::HashSet::new();
    for r in api.records() {
        let key = (
            r["agentIdentifier"].as_str().unwrap().to_owned(),
            r["startTime"].as_str().unwrap().to_owned(),
        );
        assert!(seen.insert(key.clone()), "one interval per start: {key:?}");
        let (begin, end) = (
            r["startTime"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap(),
            r["endTime"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap(),
        );
        assert_eq!(
            end.duration_since(begin).as_secs(),
            AGENTS as i64,
            "each interval lasts until the agent's next change: {r}"
        );
    }
    assert_eq!(seen.len(), expected);
}
