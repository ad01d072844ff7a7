//! The chaos suite: the real binary with a tailed files source, a webhook source and a sql
//! source (a real PostgreSQL) delivering to the fake API, while at random moments an operator
//! scrapes `/metrics`, `/readyz`, the page and `/status.json`, runs every operator command,
//! reloads with valid and invalid configurations (while clients push), starts a second daemon
//! on the same state file,
//! kills the daemon with `kill -9` and starts it again, rewrites a tailed file in place from its
//! start, and the API fails in every way it can.
//!
//! The invariant: every record that was acknowledged (a 200 to a push, a line written to a
//! tailed file, a row committed to the database) arrives at least once, and a record arrives
//! more than once only inside a batch that the API accepted more than once under one
//! `Idempotency-Key` (a resend after a lost answer or a kill between the 2xx and its mark).
//!
//! `CHAOS_STEPS` (default 40) sets the number of operations; `CHAOS_SEED` replays a run.
#![cfg(unix)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::databases::Postgres;
use support::*;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "push-token-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(60);

/// Ids by where they come from: a tailed file, pushes, the database, an import.
const FILE_IDS: u64 = 1_000_000;
const PUSH_IDS: u64 = 2_000_000;
const DB_IDS: u64 = 3_000_000;
const IMPORT_IDS: u64 = 4_000_000;
const REWRITE_IDS: u64 = 5_000_000;

struct Setup {
    env: Env,
    log: PathBuf,
    valid: String,
    old: PathBuf,
}

impl Setup {
    fn cfg(&self) -> String {
        self.env.config_file.display().to_string()
    }

    /// The daemon, its log appended to one file across restarts.
    fn start(&self) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Process::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_injixo-sync"))
                .args(["--config", &self.cfg(), "run"])
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(log),
        )
    }

    fn log_count(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.matches(what).count())
            .unwrap_or(0)
    }
}

fn config(env: &Env, api: &str, port: u16, db_url: &str, history: &Path) -> String {
    let token = env.dir.path().join("push-token");
    std::fs::write(&token, TOKEN).unwrap();
    let db = env.dir.path().join("db-url");
    std::fs::write(&db, db_url).unwrap();
    format!(
        "{}\n[listen]\naddress = \"127.0.0.1:{port}\"\nbody_timeout = \"5s\"\n",
        env.config_text(
            api,
            "timeout = \"2s\"",
            &format!(
                "{tail}\n\
                 [[source]]\nname = \"history\"\ntype = \"files\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\npath = {history:?}\nformat = \"ndjson\"\n\
                 mode = \"drop\"\nsettle = \"100ms\"\n\n\
                 [[source]]\nname = \"push\"\ntype = \"webhook\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\ntoken_file = {token:?}\n\n\
                 [[source]]\nname = \"db\"\ntype = \"sql\"\nintegration_id = 1234\n\
                 emits = \"contact_events\"\nconnection_file = {db:?}\nevery = \"1s\"\n\
                 query = \"SELECT id, queue, started, updated_at FROM calls\"\n\
                 cursor_column = \"updated_at\"\ninitial_cursor = \"2024-01-01T00:00:00Z\"\n\
                 overlap = \"5s\"\npage_size = 50\nkey = \"{{id}}\"\n\
                 [source.map]\ntimestamp = \"started\"\nqueueName = \"queue\"\n\
                 queueIdentifier = {{ value = \"support\" }}\nchannel = {{ value = \"calls\" }}\n\
                 offered = {{ value = true }}\nhandled = {{ value = true }}\nduration = \"id\"\n",
                tail = env.ndjson_source("live", "tail", ""),
                history = history.display().to_string(),
                token = token.display().to_string(),
                db = db.display().to_string(),
            )
        )
    )
}

/// What the writers got acknowledged, by id.
#[derive(Default)]
struct Acked(Mutex<HashSet<u64>>);

impl Acked {
    fn add(&self, ids: impl IntoIterator<Item = u64>) {
        self.0.lock().unwrap().extend(ids);
    }
}

/// Appends lines to a tailed file, now and then rotating it by rename (to a name the source
/// also reads); every line written is acknowledged.
async fn append(exports: PathBuf, acked: Arc<Acked>, stop: CancellationToken) {
    let mut next = FILE_IDS;
    let mut rotations = 0;
    while !stop.is_cancelled() {
        let live = exports.join("live.ndjson");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live)
            .unwrap();
        f.write_all(events(next..next + 5).as_bytes()).unwrap();
        acked.add(next..next + 5);
        next += 5;
        if next.is_multiple_of(500) {
            rotations += 1;
            std::fs::rename(&live, exports.join(format!("live-{rotations}.ndjson"))).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pushes three records at a time; those answered 200 are acknowledged.
async fn push(port: u16, acked: Arc<Acked>, stop: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/webhook/push/{TOKEN}");
    let mut next = PUSH_IDS;
    while !stop.is_cancelled() {
        let body = format!(
            "[{}]",
            (next..next + 3).map(event).collect::<Vec<_>>().join(",")
        );
        if let Ok(r) = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            && r.status().as_u16() == 200
        {
            acked.add(next..next + 3);
        }
        next += 3;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inserts two rows at a time; committed rows are acknowledged.
async fn insert(pool: sqlx::PgPool, acked: Arc<Acked>, stop: CancellationToken) {
    let mut next = DB_IDS as i64;
    while !stop.is_cancelled() {
        for id in next..next + 2 {
            sqlx::query(
                "INSERT INTO calls (id, queue, started, updated_at) \
                 VALUES ($1, 'Support', now(), clock_timestamp())",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
            acked.add([id as u64]);
        }
        next += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_arrives_whatever_operators_do_around_the_daemon() {
    let steps: usize = std::env::var("CHAOS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut rng = seeded_rng("CHAOS_SEED");
    let Some(pg) = Postgres::start() else {
        return;
    };
    let pool = pg.calls("timestamptz").await;
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // Some pushed records are refused by the API: dead letters, for `dead retry` at the end.
    for id in [PUSH_IDS + 7, PUSH_IDS + 301, PUSH_IDS + 602] {
        api.reject_records_containing(&format!("\"duration\":{id},"));
    }
    let port = free_port();
    let history = env.dir.path().join("history");
    let old = env.dir.path().join("old");
    std::fs::create_dir_all(&history).unwrap();
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("old.ndjson"), events(IMPORT_IDS..IMPORT_IDS + 10)).unwrap();
    let valid = config(&env, &api.url(), port, &pg.url(), &history);
    std::fs::write(&env.config_file, &valid).unwrap();
    let setup = Setup {
        log: env.dir.path().join("daemon.log"),
        env,
        valid,
        old,
    };
    let started = format!("injixo-sync {} running", env!("CARGO_PKG_VERSION"));
    let mut daemon = setup.start();
    wait_for(LIMIT, "the first start", || setup.log_count(&started) == 1).await;

    let acked = Arc::new(Acked::default());
    let stop = CancellationToken::new();
    let writers = [
        tokio::spawn(append(
            setup.env.exports.clone(),
            acked.clone(),
            stop.clone(),
        )),
        tokio::spawn(push(port, acked.clone(), stop.clone())),
        tokio::spawn(insert(pool.clone(), acked.clone(), stop.clone())),
    ];

    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["dead", "list"],
        &["dead", "retry", "--all"],
        &["dead", "drop", "999999999"],
        &["parked", "list"],
        &["parked", "list", "--json"],
        &["parked", "drop", "--reason", "no reason says this"],
        &["parked", "retry", "--all"],
        &["preview", "--parked"],
        &["resend", "--since", "2999-01-01T00:00:00Z"],
        &["queues"],
        &[
            "queues",
            "drop",
            "--integration-id",
            "1234",
            "--identifier",
            "nope",
            "--name",
            "nope",
        ],
        &["agents"],
        &["check", "--offline"],
        &["import", "--source", "history", "--from", "OLD"],
    ];
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut rewrites, mut last_rewrite) = (0u64, None);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..steps {
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
        let op = match rng.u32(0..100) {
            0..25 => "scrape",
            25..50 => "command",
            50..60 => "reload",
            60..67 => "reload an invalid configuration",
            67..72 => "second daemon",
            72..84 => "kill -9",
            84..88 => "rewrite in place",
            _ => "API failure",
        };
        *ops.entry(op).or_default() += 1;
        match op {
            "rewrite in place" => {
                // The same size, other lines, from the first byte: an ACD that rewrites its
                // current file. Content rewritten before it was read is gone by design; the
                // last content must arrive, and no content twice.
                use std::os::unix::fs::FileExt;
                let from = REWRITE_IDS + rewrites * 3;
                rewrites += 1;
                let path = setup.env.exports.join("rewritten.ndjson");
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .unwrap();
                file.write_all_at(events(from..from + 3).as_bytes(), 0)
                    .unwrap();
                last_rewrite = Some(from..from + 3);
            }
            "scrape" => {
                for path in ["/metrics", "/readyz", "/", "/status.json"] {
                    let _ = client
                        .get(format!("http://127.0.0.1:{port}{path}"))
                        .send()
                        .await;
                }
            }
            "command" => {
                let command = commands[rng.usize(..commands.len())];
                let old = setup.old.display().to_string();
                let mut args = vec!["--config".to_owned(), setup.cfg()];
                args.extend(command.iter().map(|a| a.replace("OLD", &old)));
                let (code, out) = tokio::task::spawn_blocking(move || {
                    cli_within(
                        &args.iter().map(String::as_str).collect::<Vec<_>>(),
                        Duration::from_secs(30),
                    )
                })
                .await
                .unwrap();
                *ops.entry(command[0]).or_default() += 1;
                if command[0] == "import" && code == 0 {
                    acked.add(IMPORT_IDS..IMPORT_IDS + 10);
                }
                if command[0] == "status" {
                    assert_eq!(code, 0, "{command:?}: {out}");
                }
            }
            "reload" => {
                let before = setup.log_count(&started);
                unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
                wait_for(LIMIT, "the reloaded generation", || {
                    setup.log_count(&started) > before
                })
                .await;
            }
            "reload an invalid configuration" => {
                let before = setup.log_count("reload refused");
                std::fs::write(&setup.env.config_file, setup.valid.clone() + "\n[api]\n").unwrap();
                unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
                wait_for(LIMIT, "the refusal", || {
                    setup.log_count("reload refused") > before
                })
                .await;
                std::fs::write(&setup.env.config_file, &setup.valid).unwrap();
            }
            "second daemon" => {
                // By the state file's path, or (Linux) through a hard link to it: the same
                // outbox under another name.
                let cfg = if cfg!(target_os = "linux") && rng.bool() {
                    let linked = setup.env.dir.path().join("linked");
                    std::fs::create_dir_all(&linked).unwrap();
                    let link = linked.join("outbox.db");
                    let _ = std::fs::remove_file(&link);
                    std::fs::hard_link(&setup.env.state, &link).unwrap();
                    let text = std::fs::read_to_string(&setup.env.config_file).unwrap();
                    let state = format!("{:?}", setup.env.state.display().to_string());
                    assert!(
                        text.contains(&state),
                        "the configuration names the state file"
                    );
                    let file = linked.join("config.toml");
                    std::fs::write(
                        &file,
                        text.replace(&state, &format!("{:?}", link.display().to_string())),
                    )
                    .unwrap();
                    file.display().to_string()
                } else {
                    setup.cfg()
                };
                let (code, out) = tokio::task::spawn_blocking(move || {
                    cli_within(&["--config", &cfg, "run"], Duration::from_secs(15))
                })
                .await
                .unwrap();
                assert_eq!(code, 1, "a second daemon must refuse: {out}");
                assert!(out.contains(&format!("(pid {})", daemon.pid())), "{out}");
            }
            "kill -9" => {
                let before = setup.log_count(&started);
                daemon.kill9();
                daemon = setup.start();
                wait_for(LIMIT, "the restart", || setup.log_count(&started) > before).await;
            }
            _ => match rng.u32(0..5) {
                0 => api.push_fault(Fault::Drop),
                1 => api.push_fault(Fault::AcceptThenDrop),
                2 => api.push_fault(Fault::Slow(Duration::from_secs(3))),
                3 => api.push_fault(Fault::RetryAfter(429, 1)),
                _ => {
                    api.set_outage(Some((503, None)));
                    tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
                    api.set_outage(None);
                }
            },
        }
        daemon.assert_running();
    }
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    // The file's last content is acknowledged: it stays there to be read.
    acked.add(last_rewrite.into_iter().flatten());
    // The refusals end; the dead letters they made are sent again.
    api.clear_rejections();
    let cfg = setup.cfg();
    let (code, out) = tokio::task::spawn_blocking(move || {
        cli_within(&["--config", &cfg, "dead", "retry", "--all"], LIMIT)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    let acked: HashSet<u64> = acked.0.lock().unwrap().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = arrivals(&api);
        let mut missing: Vec<u64> = acked
            .iter()
            .filter(|id| !got.contains_key(id))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            missing.sort();
            let (_, status) = cli(&["--config", &setup.cfg(), "status"]);
            let log = std::fs::read_to_string(&setup.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{} acknowledged records never arrived, e.g. {:?}\nstatus:\n{status}\nlog (newest first):\n{}",
                missing.len(),
                &missing[..missing.len().min(20)],
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(&setup.env).await;
    daemon.assert_running();
    daemon.kill9();

    let got = arrivals(&api);
    let mut resent_keys: HashMap<String, usize> = HashMap::new();
    for a in api.accepted() {
        *resent_keys.entry(a.idempotency_key.unwrap()).or_default() += 1;
    }
    let in_resent: HashSet<u64> = api
        .accepted()
        .iter()
        .filter(|a| resent_keys[a.idempotency_key.as_ref().unwrap()] > 1)
        .flat_map(|a| a.records.iter().map(id_of))
        .collect();
    let twice: Vec<u64> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let unexplained: Vec<&u64> = twice.iter().filter(|id| !in_resent.contains(id)).collect();
    let unknown: Vec<&u64> = got.keys().filter(|id| !acked.contains(id)).collect();
    let resent_batches: usize = resent_keys.values().map(|n| n - 1).sum();
    let counted: i64 = setup
        .env
        .report()
        .lanes
        .iter()
        .map(|l| l.unknown_outcome_retries)
        .sum();
    eprintln!(
        "chaos: {steps} operations {ops:?}; {} acknowledged, {} delivered ({} records), {} \
         records in {resent_batches} batch(es) resent under their key ({counted} counted as \
         unknown-outcome retries), {} delivered twice, {rewrites} in-place rewrites",
        acked.len(),
        got.len(),
        api.record_count(),
        in_resent.len(),
        twice.len()
    );
    assert!(
        unexplained.is_empty(),
        "delivered twice outside a resent batch: {unexplained:?}"
    );
    // Pushes whose answer was lost (a kill after the commit) may arrive unacknowledged, and
    // so may a rewritten file's content read before the next rewrite; anything else is a
    // record nobody wrote.
    assert!(
        unknown
            .iter()
            .all(|id| (PUSH_IDS..DB_IDS).contains(*id) || (REWRITE_IDS..).contains(*id)),
        "records nobody acknowledged: {unknown:?}"
    );
}
