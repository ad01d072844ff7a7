//! kill -9 of the real binary at random moments while files are written, read and pushed:
//! every record arrives, and a record arrives twice only inside a batch the API had accepted
//! when the kill cut the answer off (that batch is then resent under the same key).

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

// 200,000 records across two lanes: a tailed file and files dropped whole.
const TAIL_RECORDS: u64 = 180_000;
const DROP_FILES: u64 = 40;
const DROP_RECORDS: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing() {
    let mut rng = seeded_rng("CRASH_SEED");
    let writer_seed = rng.u64(..);
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let drops = env.dir.path().join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    let sources = format!(
        "{}\n[[source]]\nname = \"drops\"\ntype = \"files\"\nintegration_id = 5678\n\
         emits = \"contact_events\"\npath = {:?}\nformat = \"ndjson\"\nsettle = \"100ms\"\n\
         after = \"delete\"\n",
        env.ndjson_source("live", "tail", ""),
        drops.display().to_string()
    );
    let config = env.config_text(&api.url(), "batch_records = 200", &sources);
    std::fs::write(&env.config_file, &config).unwrap();

    // A writer that appends in random pieces (lines cut anywhere) and drops whole files.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let live = env.exports.join("live.ndjson");
        let drops = drops.clone();
        let done = done.clone();
        let mut rng = fastrand::Rng::with_seed(writer_seed);
        std::thread::spawn(move || {
            let text = events(0..TAIL_RECORDS);
            let bytes = text.as_bytes();
            let mut f = std::fs::File::create(&live).unwrap();
            let mut at = 0;
            let mut next_drop = 0;
            while at < bytes.len() {
                let n = rng.usize(1..4000).min(bytes.len() - at);
                f.write_all(&bytes[at..at + n]).unwrap();
                f.flush().unwrap();
                at += n;
                if next_drop < DROP_FILES && rng.u8(..20) == 0 {
                    let first = 1_000_000 + next_drop * DROP_RECORDS;
                    let tmp = drops.join(format!(".{next_drop}.tmp"));
                    std::fs::write(&tmp, events(first..first + DROP_RECORDS)).unwrap();
                    std::fs::rename(&tmp, drops.join(format!("drop-{next_drop}.ndjson"))).unwrap();
                    next_drop += 1;
                }
                std::thread::sleep(Duration::from_micros(rng.u64(0..3000)));
            }
            while next_drop < DROP_FILES {
                let first = 1_000_000 + next_drop * DROP_RECORDS;
                std::fs::write(
                    drops.join(format!("drop-{next_drop}.ndjson")),
                    events(first..first + DROP_RECORDS),
                )
                .unwrap();
                next_drop += 1;
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let kills = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for _ in 0..kills {
        let mut daemon = Process::start(&env.config_file);
        tokio::time::sleep(Duration::from_millis(rng.u64(150..900))).await;
        daemon.assert_running();
        daemon.kill9();
    }
    let daemon = Process::start(&env.config_file);
    let expected = (TAIL_RECORDS + DROP_FILES * DROP_RECORDS) as usize;
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(done.load(Ordering::SeqCst) && arrivals(&api).len() >= expected) {
        if Instant::now() > deadline {
            let report = env.try_report();
            panic!(
                "timed out: writer done {}, {} of {expected} arrived; outbox: {report:#?}",
                done.load(Ordering::SeqCst),
                arrivals(&api).len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(Duration::from_secs(30), "the outbox drained", || {
        env.try_report()
            .is_some_and(|r| r.lanes.iter().all(|l| l.pending == 0))
    })
    .await;
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    writer.join().unwrap();

    let got = arrivals(&api);
    let missing: Vec<_> = (0..TAIL_RECORDS)
        .chain((0..DROP_FILES * DROP_RECORDS).map(|i| 1_000_000 + i))
        .filter(|id| !got.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} records, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(got.len(), expected, "no record that was never written");

    // Duplicates only come from batches accepted more than once under one key.
    let resent = records_in_resent_batches(&api);
    let duplicates = api.record_count() - got.len();
    eprintln!(
        "{kills} kills: {expected} records delivered, {duplicates} duplicates, all inside batches \
         resent under their key ({resent} records in such batches); drained {:.1}s after the last start",
        started.elapsed().as_secs_f64()
    );
    assert!(
        duplicates <= resent,
        "{duplicates} duplicates but only {resent} records in resent batches"
    );
    let parked: i64 = env.report().sources.iter().map(|s| s.parked_total).sum();
    assert_eq!(
        parked, 0,
        "no partial line was ever parsed before it was complete"
    );
}
