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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_reading_and_everything_resumes_when_space_returns() {
    let env = Env::new();
    let fs = env.dir.path().join("state");
    std::fs::create_dir_all(&fs).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&fs)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?); .ci/run runs this as root");
        return;
    }
    let _mount = Mount(fs.clone());
    let api = FakeApi::start(KEY).await.unwrap();
    api.set_outage(Some((503, None)));
    let config =
        env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    std::fs::write(env.exports.join("live.ndjson"), events(0..20_000)).unwrap();
    let daemon = Daemon::start(config);

    wait_for(LIMIT, "the state disk to fill", || available_kib(&fs) < 64).await;
    let stuck = env
        .try_report()
        .map(|r| r.sources[0].records_total)
        .unwrap_or(0);
    assert!(
        stuck < 20_000,
        "the disk filled before everything was read ({stuck})"
    );

    // Space returns: reading resumes at the committed position, then delivery once the API is
    // back.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&fs)
            .status()
            .unwrap()
            .success()
    );
    wait_for(LIMIT, "all 20,000 read", || {
        env.try_report()
            .is_some_and(|r| r.sources[0].records_total == 20_000)
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
    let (code, out) = cli(&[
        "--config",
        env.config_file.to_str().unwrap(),
        "check",
        "--offline",
    ]);
    assert_eq!(code, 0, "the outbox is intact: {out}");
}
