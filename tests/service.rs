//! The systemd notification protocol, over a real notify socket: READY once running, STATUS
//! with the backlog, WATCHDOG while healthy, STOPPING on SIGTERM; the unit file as systemd
//! itself reads it; and reloads (SIGHUP): applied, refused, undone, held up by a share that
//! hangs while the running generation goes on, or ending the process when the running
//! generation cannot stop.
#![cfg(unix)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_speaks_sd_notify_ready_status_watchdog_and_stopping() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    std::fs::write(env.exports.join("a.ndjson"), events(0..50)).unwrap();
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(["--config", env.config_file.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    read(&socket, &mut messages, &|m| {
        m.iter().filter(|s| s.as_str() == "WATCHDOG=1").count() >= 3
    });
    assert!(
        messages[0].starts_with("READY=1\nSTATUS=running: 1 sources, 1 lanes"),
        "{messages:?}"
    );
    wait_for(Duration::from_secs(30), "50 records", || {
        api.record_count() >= 50
    })
    .await;
    read(&socket, &mut messages, &|m| {
        m.iter()
            .any(|s| s == "STATUS=0 pending, 50 delivered since start")
    });

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    read(&socket, &mut messages, &|m| {
        m.iter().any(|s| s.starts_with("STOPPING=1"))
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
}

/// systemd may name its socket in Linux's abstract namespace (`@name`): READY=1 and
/// STOPPING=1 reach it too.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "drop", "")));
    let name = format!("injixo-sync-test-{}-{}", std::process::id(), free_port());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(["--config", env.config_file.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    read(&socket, &mut messages, &|m| {
        m.iter().any(|s| s.starts_with("READY=1"))
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    read(&socket, &mut messages, &|m| {
        m.iter().any(|s| s.starts_with("STOPPING=1"))
    });
    assert!(child.wait_with_output().unwrap().status.success());
}

/// Receives notifications into `messages` until `until` holds.
fn read(socket: &UnixDatagram, messages: &mut Vec<String>, until: &dyn Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !until(messages) {
        assert!(
            Instant::now() < deadline,
            "notifications so far: {messages:?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    if !require(
        "systemd",
        has_program("systemd-analyze", "--version"),
        "apt-get install systemd (for systemd-analyze)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/injixo-sync.service"
    ))
    .unwrap()
    .replace("/usr/bin/injixo-sync", env!("CARGO_BIN_EXE_injixo-sync"));
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let path = dir.path().join("injixo-sync.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The daemon as a child process at log level info, its log in a file.
fn run_logged(env: &Env) -> (std::path::PathBuf, std::process::Child) {
    let log = env.dir.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(["--config", env.config_file.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    (log, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_configuration_and_keeps_the_old_one_for_an_invalid_one() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let second = env.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let one_source = env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", ""));
    let two_sources = format!(
        "{one_source}\n[[source]]\nname = \"second\"\ntype = \"files\"\nintegration_id = 99\n\
         emits = \"contact_events\"\npath = {:?}\nformat = \"ndjson\"\nsettle = \"100ms\"\n",
        second.display().to_string()
    );
    env.write_config(&one_source);
    let (log, child) = run_logged(&env);
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    let live = env.exports.join("live.ndjson");
    std::fs::write(&live, events(0..10)).unwrap();
    wait_for(Duration::from_secs(30), "10 records", || {
        api.record_count() >= 10
    })
    .await;

    // A valid change: a second source is added.
    env.write_config(&two_sources);
    std::fs::write(second.join("b.ndjson"), events(100..105)).unwrap();
    hup();
    wait_for(Duration::from_secs(30), "the new source's records", || {
        api.record_count() >= 15
    })
    .await;

    // An invalid change is refused and the running configuration keeps working.
    std::fs::write(
        &env.config_file,
        two_sources.replace("emits = \"contact_events\"", "emits = \"calls\""),
    )
    .unwrap();
    hup();
    let logged = |text: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(text)
    };
    wait_for(Duration::from_secs(30), "the refusal logged", || {
        logged("reload refused, the running configuration stays")
    })
    .await;
    // A valid configuration whose secret cannot be read is refused too, before the running
    // pipeline is stopped.
    let missing_key = env.dir.path().join("no-such-key");
    std::fs::write(
        &env.config_file,
        two_sources.replace(
            &env.key_file.display().to_string(),
            &missing_key.display().to_string(),
        ),
    )
    .unwrap();
    hup();
    wait_for(Duration::from_secs(30), "the second refusal logged", || {
        logged("cannot read api.token_file")
    })
    .await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .unwrap();
    std::io::Write::write_all(&mut f, events(10..20).as_bytes()).unwrap();
    std::fs::write(second.join("c.ndjson"), events(105..110)).unwrap();
    wait_for(Duration::from_secs(30), "30 records", || {
        api.record_count() >= 30
    })
    .await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let got = arrivals(&api);
    assert_eq!(got.len(), 30);
    assert!(
        got.values().all(|n| *n == 1),
        "nothing read twice across reloads"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reloading the configuration"), "{text}");
    assert!(
        text.contains("\"calls\" is not valid"),
        "the refusal says why: {text}"
    );
    assert_eq!(
        text.matches("reload refused, the running configuration stays")
            .count(),
        2,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_its_address_goes_back_to_the_previous_configuration() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let source = env.ndjson_source("acd", "tail", "");
    let with_listen = |port: u16| format!("[listen]\naddress = \"127.0.0.1:{port}\"\n\n{source}");
    let first = free_port();
    // Another process holds the address the reloaded configuration asks for.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    env.write_config(&env.config_text(&api.url(), "", &with_listen(first)));
    let (log, mut child) = run_logged(&env);
    let healthy = |port: u16| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.starts_with("HTTP/1.1 200")
        })
    };
    wait_for(Duration::from_secs(30), "the first listener", || {
        healthy(first)
    })
    .await;

    env.write_config(&env.config_text(&api.url(), "", &with_listen(taken_port)));
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for(Duration::from_secs(30), "the fallback logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("going back to the previous one")
    })
    .await;
    wait_for(Duration::from_secs(30), "the first listener again", || {
        healthy(first)
    })
    .await;
    let live = env.exports.join("live.ndjson");
    std::fs::write(&live, events(0..10)).unwrap();
    wait_for(Duration::from_secs(30), "10 records", || {
        api.record_count() >= 10
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon keeps running"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    drop(taken);
}

/// A FUSE file system over a folder whose server never answers, not even the kernel's first
/// request: like a network share whose server went away under a hard mount, every look into
/// the folder waits inside the kernel, where only SIGKILL ends it and no cancellation reaches.
/// Dropped, it aborts the connection (whatever waits gets an error) and unmounts.
#[cfg(target_os = "linux")]
struct HungShare {
    device: Option<std::fs::File>,
    at: std::path::PathBuf,
}

#[cfg(target_os = "linux")]
impl HungShare {
    fn mount(at: &std::path::Path) -> Self {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::io::AsRawFd;
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let options = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            device.as_raw_fd()
        ))
        .unwrap();
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let mounted = unsafe {
            libc::mount(
                c"injixo-test-hung-share".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            mounted,
            0,
            "mount -t fuse over {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        Self {
            device: Some(device),
            at: at.to_owned(),
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for HungShare {
    fn drop(&mut self) {
        drop(self.device.take());
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Whether a thread of process `pid` waits inside FUSE.
#[cfg(target_os = "linux")]
fn waits_in_fuse(pid: u32) -> bool {
    threads_in_fuse(pid) > 0
}

/// How many threads of process `pid` wait inside FUSE, as the kernel tells where each sleeps.
#[cfg(target_os = "linux")]
fn threads_in_fuse(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            ["wchan", "stack"].iter().any(|f| {
                std::fs::read_to_string(task.path().join(f)).is_ok_and(|w| w.contains("fuse_"))
            })
        })
        .count()
}

/// Whether this run may mount a FUSE file system (as root, with /dev/fuse); a missing
/// prerequisite fails the test unless `INJIXO_TEST_SKIP` names `mount`.
#[cfg(target_os = "linux")]
fn require_fuse() -> bool {
    require(
        "mount",
        is_root() && std::path::Path::new("/dev/fuse").exists(),
        "run the tests as root on a kernel with FUSE (/dev/fuse), which may mount a file system",
    )
}

/// A source whose folder hangs (a share whose server stopped answering) holds its thread
/// inside the kernel, where no cancellation reaches it: a reload cannot stop that generation.
/// It must not start the next one beside it, over the same outbox; the daemon exits non-zero
/// instead, and the service manager starts it afresh.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_stop_a_source_caught_in_a_hung_share_exits_non_zero() {
    if !require_fuse() {
        return;
    }
    let env = Env::new();
    // Nothing is delivered (no API answers); a generation has 1 s + 5 s to stop.
    let (text, port) = listening(&env.config_text(
        "http://127.0.0.1:9",
        "timeout = \"1s\"",
        &env.ndjson_source("acd", "tail", ""),
    ));
    std::fs::write(&env.config_file, &text).unwrap();
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::start_logged(&env.config_file, &log);
    wait_serving(port).await;
    more_scans(port, "acd", 2).await;

    // The share hangs; the source's next look into it does not come back.
    let share = HungShare::mount(&env.exports);
    wait_for(
        Duration::from_secs(30),
        "the source caught in the share",
        || waits_in_fuse(daemon.pid()),
    )
    .await;

    // The operator points the source at a local folder and reloads.
    let local = env.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("calls.ndjson"), events(0..5)).unwrap();
    std::fs::write(
        &env.config_file,
        text.replace(
            &format!("{:?}", env.exports.display().to_string()),
            &format!("{:?}", local.display().to_string()),
        ),
    )
    .unwrap();
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let status = daemon.exited_within(Duration::from_secs(60)).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{logged}");
    assert!(logged.contains("reloading the configuration"), "{logged}");
    assert!(
        logged.contains("not everything stopped within 6s"),
        "{logged}"
    );
    assert_eq!(
        generations_started(&log),
        1,
        "no second generation started beside the first: {logged}"
    );
    drop(share);
    let read: i64 = env.report().sources.iter().map(|s| s.records_total).sum();
    assert_eq!(read, 0, "nothing read from the local folder");
}

/// A reload whose configuration names a folder on a share that hangs: reading it (the folder
/// is resolved as the configuration is checked) waits in the kernel. That holds up the reload
/// only: the running configuration goes on delivering, a second SIGHUP meanwhile starts no
/// second read, and SIGTERM still stops the daemon, cleanly, with nothing sent twice.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reading_a_folder_on_a_hung_share_holds_up_only_the_reload() {
    if !require_fuse() {
        return;
    }
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let running = env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", ""));
    env.write_config(&running);
    let log = env.dir.path().join("daemon.log");
    let mut daemon = Process::start_logged(&env.config_file, &log);
    let live = env.exports.join("live.ndjson");
    let append = |ids: std::ops::Range<u64>| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live)
            .unwrap();
        std::io::Write::write_all(&mut f, events(ids).as_bytes()).unwrap();
    };
    append(0..10);
    wait_for(Duration::from_secs(30), "10 records", || {
        api.record_count() >= 10
    })
    .await;

    // The operator adds a source over a folder on a share whose server stopped answering.
    let mount = env.dir.path().join("share");
    std::fs::create_dir_all(&mount).unwrap();
    let share = HungShare::mount(&mount);
    std::fs::write(
        &env.config_file,
        format!(
            "{running}\n[[source]]\nname = \"share\"\ntype = \"files\"\nintegration_id = 99\n\
             emits = \"contact_events\"\npath = {:?}\nformat = \"ndjson\"\nsettle = \"100ms\"\n",
            mount.join("exports").display().to_string()
        ),
    )
    .unwrap();
    let hup = || unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    hup();
    wait_for(
        Duration::from_secs(30),
        "the reload caught in the share",
        || threads_in_fuse(daemon.pid()) == 1,
    )
    .await;

    // The running configuration goes on.
    append(10..20);
    wait_for(
        Duration::from_secs(30),
        "the records written after SIGHUP",
        || api.record_count() >= 20,
    )
    .await;

    // A second SIGHUP while the first reload still reads: no second read starts.
    hup();
    append(20..30);
    wait_for(
        Duration::from_secs(30),
        "the records written after the second SIGHUP",
        || api.record_count() >= 30,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.assert_running();
    assert_eq!(
        threads_in_fuse(daemon.pid()),
        1,
        "one reload reads, the second SIGHUP waits for it"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("reloading the configuration"), "{logged}");
    assert_eq!(generations_started(&log), 1, "{logged}");
    // Each SIGHUP is said: the first reads, the second waits for it.
    assert_eq!(
        logged
            .matches("reload requested: reading the configuration")
            .count(),
        1,
        "{logged}"
    );
    assert!(
        logged.contains("reload requested while the previous one is still reading"),
        "{logged}"
    );

    // SIGTERM stops the daemon although the reload never finished, as a clean stop.
    let asked = Instant::now();
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let status = daemon.exited_within(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "stopped within 30 s, exit status 0 (took {took:?}): {logged}"
    );
    eprintln!("stopped {took:?} after SIGTERM");
    assert!(logged.contains("stop requested"), "{logged}");
    assert!(!logged.contains("ERROR"), "{logged}");
    drop(share);
    assert_arrived_once(&api, 0..30);
}
