//! `import`: a one-shot, resumable backfill with progress.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use support::*;

fn setup(files: u64, per_file: u64) -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let history = env.dir.path().join("history");
    std::fs::create_dir_all(&history).unwrap();
    for f in 0..files {
        std::fs::write(
            history.join(format!("2025-{:02}.ndjson", f + 1)),
            events(f * per_file..(f + 1) * per_file),
        )
        .unwrap();
    }
    env.write_config(&env.config_text(
        "http://127.0.0.1:9",
        "",
        &env.ndjson_source("acd", "tail", ""),
    ));
    (env, history)
}

/// `--config CFG import --source acd --from HISTORY`.
fn import_args<'a>(cfg: &'a str, history: &'a std::path::Path) -> [&'a str; 7] {
    let from = history.to_str().unwrap();
    ["--config", cfg, "import", "--source", "acd", "--from", from]
}

fn records(env: &Env) -> i64 {
    env.report().sources.iter().map(|s| s.records_total).sum()
}

#[test]
fn an_import_reads_history_once_and_a_second_run_adds_nothing() {
    let (env, history) = setup(12, 500);
    let cfg = env.config_file.to_str().unwrap();
    let args = import_args(cfg, &history);
    let (code, out) = cli(&args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("importing 12 file(s)"), "{out}");
    assert!(
        out.contains("source \"acd\" now holds 6000 records"),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no terminal codes when not on a terminal: {out}"
    );
    let (code, out) = cli(&args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(records(&env), 6000, "nothing enqueued twice");
    // The history files stay where they are.
    assert_eq!(std::fs::read_dir(&history).unwrap().count(), 12);
}

#[test]
fn since_selects_files_by_modification_time() {
    let (env, history) = setup(4, 10);
    let old = SystemTime::now() - Duration::from_secs(400 * 86_400);
    for f in ["2025-01.ndjson", "2025-02.ndjson"] {
        std::fs::File::options()
            .write(true)
            .open(history.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 30);
    let (code, out) = cli(&[
        "--config",
        env.config_file.to_str().unwrap(),
        "import",
        "--source",
        "acd",
        "--from",
        history.to_str().unwrap(),
        "--since",
        &since.to_string(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("importing 2 file(s)"), "{out}");
    assert_eq!(records(&env), 20);
}

#[test]
fn on_a_terminal_the_import_shows_a_progress_bar() {
    let (env, history) = setup(10, 4000);
    let command = format!(
        "{} --config {} import --source acd --from {}",
        env!("CARGO_BIN_EXE_injixo-sync"),
        env.config_file.display(),
        history.display()
    );
    if !require(
        "script",
        has_program("script", "--version"),
        "apt-get install util-linux (for script)",
    ) {
        return;
    }
    // `script` gives the command a pseudo-terminal, as an operator's shell would.
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("records ("), "{text}");
    assert!(text.contains("ETA"), "{text}");
    assert!(text.contains("now holds 40000 records"), "{text}");
}

#[test]
fn an_interrupted_import_continues_where_it_stopped() {
    let (env, history) = setup(30, 10_000);
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
        .args(import_args(&cfg, &history))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env
        .try_report()
        .is_none_or(|r| r.sources.iter().all(|s| s.records_total == 0))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the import never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    let partial = records(&env);
    assert!(partial > 0 && partial < 300_000, "{partial}");

    let (code, out) = cli(&import_args(&cfg, &history));
    assert_eq!(code, 0, "{out}");
    assert_eq!(records(&env), 300_000, "every record once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailed_source_keeps_its_identity_through_an_import_and_refuses_one_beside_the_daemon() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    env.write_config(&env.config_text(&api.url(), "", &env.ndjson_source("acd", "tail", "")));
    let live = env.exports.join("live.ndjson");
    std::fs::write(&live, events(0..100)).unwrap();
    let cfg = env.config_file.to_str().unwrap().to_owned();
    let (code, out) = cli(&["--config", &cfg, "import", "--source", "acd"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(records(&env), 100);

    // The daemon continues where the import stopped: the file is the same file.
    let daemon = Process::start(&env.config_file);
    wait_for(Duration::from_secs(60), "the imported records", || {
        api.record_count() >= 100
    })
    .await;
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .unwrap()
        .write_all(events(100..110).as_bytes())
        .unwrap();
    wait_for(Duration::from_secs(60), "the appended records", || {
        api.record_count() >= 110
    })
    .await;
    // Beside the running daemon, which tails the same files, an import is refused.
    let (code, out) = cli(&["--config", &cfg, "import", "--source", "acd"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("injixo-sync run (pid {})", daemon.pid())),
        "{out}"
    );
    assert!(out.contains("tails its files"), "{out}");
    settled(&env).await;
    daemon.kill9();
    let got = arrivals(&api);
    assert_eq!(got.len(), 110);
    assert!(got.values().all(|n| *n == 1), "each record once: {got:?}");
}

/// A newer build's `import` beside an older daemon: migrating the schema would rewrite the
/// outbox under the daemon, so the import refuses, naming the daemon, and changes nothing;
/// with no daemon running it takes the lock, migrates and imports.
#[test]
fn an_import_migrates_an_older_outbox_only_under_the_state_lock() {
    let (env, history) = setup(2, 100);
    env.write_config(&env.config_text(
        "http://127.0.0.1:9",
        "",
        &env.ndjson_source("acd", "drop", ""),
    ));
    // A version 5 outbox, as the older daemon keeps it.
    let (outbox, writer) = injixo_sync::outbox::Outbox::open(&env.state).unwrap();
    drop(outbox);
    writer.join().unwrap();
    let version = || -> i32 {
        rusqlite::Connection::open(&env.state)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    rusqlite::Connection::open(&env.state)
        .unwrap()
        .execute_batch(
            "DROP TABLE parked_headers; DROP TABLE parked;
             CREATE TABLE parked (id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL,
               origin TEXT NOT NULL, reason TEXT NOT NULL, raw TEXT NOT NULL, at INTEGER NOT NULL);
             CREATE INDEX parked_raw ON parked (source_id, raw);
             DROP TABLE dicts; DROP INDEX dead_damaged; ALTER TABLE dead DROP COLUMN damaged;
             DROP INDEX parked_raw; ALTER TABLE records DROP COLUMN row_hash;
             PRAGMA user_version = 5;",
        )
        .unwrap();
    let daemon = injixo_sync::outbox::StateLock::acquire(&env.state, "run").unwrap();
    let cfg = env.config_file.to_str().unwrap();
    let args = import_args(cfg, &history);
    let (code, out) = cli(&args);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "state file {} has schema version 5",
            env.state.display()
        )) && out.contains(&format!("injixo-sync run (pid {})", std::process::id()))
            && out.contains("Nothing was changed"),
        "{out}"
    );
    assert_eq!(version(), 5, "not migrated under the daemon");
    drop(daemon);
    let (code, out) = cli(&args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(version(), injixo_sync::outbox::SCHEMA_VERSION);
    assert_eq!(records(&env), 200);
}
