//! Counters the daemon keeps while it runs: one set per source and per lane, for the life of
//! the process.
//!
//! Lanes and sources each get their own `Arc` of counters at start-up (the set is fixed by the
//! configuration) and bump atomics; nothing here blocks or allocates on the hot path except
//! the per-status answer map and the latency histogram's lock. Sources, push lanes and `app`
//! write them; `metrics` reads them for `/metrics` and `server` for `/readyz`. *Must not know*
//! how they are exposed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use crate::stale::StalePolicy;
use crate::types::{LaneKey, SourceName};

/// Upper bounds (seconds) of the batch latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug)]
pub struct SourceMetrics {
    pub name: SourceName,
    pub records: AtomicU64,
    pub duplicates: AtomicU64,
    /// Of the duplicates, rows merged by their natural `key`.
    pub merged: AtomicU64,
    pub parked: AtomicU64,
    /// Rows left out on purpose (`skip_if`).
    pub skipped: AtomicU64,
    /// Input bytes committed (records, parked lines and what lies between).
    pub bytes: AtomicU64,
    /// Bytes the source's open files hold beyond its cursors (tail mode), after its last pass.
    pub lag_bytes: AtomicU64,
    /// Unix milliseconds of the last commit, 0 before any.
    pub last_activity_ms: AtomicI64,
    /// Passes finished: a files source's looks over its folder and open files, a poller's
    /// polls (failed ones too). A webhook source, which is pushed to, makes none.
    pub scans: AtomicU64,
    /// Commits refused for want of room, by why: the outbox at its budget, the disk full.
    /// Reading waits (a push is answered 503) each time.
    pub room_waits_budget: AtomicU64,
    pub room_waits_disk_full: AtomicU64,
    /// Pushes refused before anything was kept (a webhook source): from an address not in
    /// `allow`, without the right token, with a signature that does not match, with a signed
    /// time too far from now.
    pub refused_address: AtomicU64,
    pub refused_token: AtomicU64,
    pub refused_signature: AtomicU64,
    pub refused_timestamp: AtomicU64,
    /// When the daemon started: silence is counted from here at the earliest.
    pub since_ms: i64,
    /// `stale_after` and `business_hours` as configured now (a reload may change them).
    stale: Mutex<Option<StalePolicy>>,
    /// What the source cannot do right now, in words (see `sources::Problems`).
    problems: Mutex<Vec<String>>,
}

#[derive(Debug)]
pub struct LaneMetrics {
    pub key: LaneKey,
    pub sent: AtomicU64,
    pub dead: AtomicU64,
    pub retries: AtomicU64,
    pub unknown_outcome: AtomicU64,
    pub last_success_ms: AtomicI64,
    pub paused: AtomicBool,
    pub pause_reason: Mutex<Option<String>>,
    /// When the lane began the step it is in (an outbox call or a request); 0 while it waits
    /// for work or for a retry. The watchdog looks at it.
    pub busy_since_ms: AtomicI64,
    answers: Mutex<BTreeMap<u16, u64>>,
    latency: Histogram,
}

impl LaneMetrics {
    pub fn new(key: LaneKey) -> Self {
        Self {
            key,
            sent: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            unknown_outcome: AtomicU64::new(0),
            last_success_ms: AtomicI64::new(0),
            paused: AtomicBool::new(false),
            pause_reason: Mutex::new(None),
            busy_since_ms: AtomicI64::new(0),
            answers: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }

    /// Records one request: its HTTP status (0 when none came) and how long it took.
    pub fn observe(&self, status: u16, took: Duration) {
        *self
            .answers
            .lock()
            .expect("answers")
            .entry(status)
            .or_default() += 1;
        self.latency.observe(took.as_secs_f64());
    }

    /// How many requests got each HTTP status (0: no answer) so far.
    pub fn answers(&self) -> BTreeMap<u16, u64> {
        self.answers.lock().expect("answers").clone()
    }

    /// How long requests took (seconds), in the buckets of `LATENCY_BUCKETS`.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    pub fn set_paused(&self, reason: Option<String>) {
        self.paused.store(reason.is_some(), Relaxed);
        *self.pause_reason.lock().expect("pause reason") = reason.map(|r| crate::redact::scrub(&r));
    }
}

impl SourceMetrics {
    pub fn new(name: SourceName, stale: Option<StalePolicy>, since_ms: i64) -> Self {
        Self {
            name,
            records: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            last_activity_ms: AtomicI64::new(0),
            scans: AtomicU64::new(0),
            room_waits_budget: AtomicU64::new(0),
            room_waits_disk_full: AtomicU64::new(0),
            refused_address: AtomicU64::new(0),
            refused_token: AtomicU64::new(0),
            refused_signature: AtomicU64::new(0),
            refused_timestamp: AtomicU64::new(0),
            since_ms,
            stale: Mutex::new(stale),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// What the source cannot do right now.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().expect("problems").clone()
    }

    pub fn set_problems(&self, problems: Vec<String>) {
        // What a remote end said may quote a secret back.
        let problems = problems.iter().map(|p| crate::redact::scrub(p)).collect();
        *self.problems.lock().expect("problems") = problems;
    }

    /// Whether silence is watched for this source (`stale_after`).
    pub fn watched(&self) -> bool {
        self.stale.lock().expect("stale policy").is_some()
    }

    /// Counts a commit: records inserted, duplicates absorbed, input parked.
    pub fn committed(&self, done: &crate::outbox::Committed) {
        let parked = done.parked as u64;
        self.records.fetch_add(done.inserted as u64, Relaxed);
        self.duplicates.fetch_add(done.duplicates as u64, Relaxed);
        self.merged.fetch_add(done.merged as u64, Relaxed);
        self.parked.fetch_add(parked, Relaxed);
        self.last_activity_ms
            .store(crate::outbox::now_ms(), Relaxed);
    }

    /// Counts a finished pass (a look over the folder, a poll), whatever came of it.
    pub fn scanned(&self) {
        self.scans.fetch_add(1, Relaxed);
    }

    /// Counts a commit refused for want of room (the outbox at its budget, the disk full);
    /// any other error is not counted here.
    pub fn waited_for_room(&self, e: &crate::outbox::OutboxError) {
        if e.is_at_budget() {
            self.room_waits_budget.fetch_add(1, Relaxed);
        } else if e.is_disk_full() {
            self.room_waits_disk_full.fetch_add(1, Relaxed);
        }
    }

    /// Why this source counts as silent now, if it does.
    pub fn stale_verdict(&self, now_ms: i64) -> Option<String> {
        let last = self.last_activity_ms.load(Relaxed).max(self.since_ms);
        let now = jiff::Timestamp::from_millisecond(now_ms).ok()?;
        self.stale
            .lock()
            .expect("stale policy")
            .as_ref()?
            .verdict(last, now)
    }
}

/// Every source's and lane's counters for the life of the process: a reload keeps counting
/// where the previous configuration left off (Prometheus counters only go up).
#[derive(Debug, Default)]
pub struct Counters {
    sources: Mutex<std::collections::HashMap<SourceName, Arc<SourceMetrics>>>,
    lanes: Mutex<std::collections::HashMap<LaneKey, Arc<LaneMetrics>>>,
}

impl Counters {
    /// The counters of source `name`, made at its first start, with `stale` as configured now.
    pub fn source(&self, name: &SourceName, stale: Option<StalePolicy>) -> Arc<SourceMetrics> {
        let mut sources = self.sources.lock().expect("counters");
        let m = sources.entry(name.clone()).or_insert_with(|| {
            Arc::new(SourceMetrics::new(
                name.clone(),
                None,
                crate::outbox::now_ms(),
            ))
        });
        *m.stale.lock().expect("stale policy") = stale;
        m.clone()
    }

    /// The counters of lane `key`, made at its first start; a lane starts unpaused.
    pub fn lane(&self, key: &LaneKey) -> Arc<LaneMetrics> {
        let mut lanes = self.lanes.lock().expect("counters");
        let m = lanes
            .entry(key.clone())
            .or_insert_with(|| Arc::new(LaneMetrics::new(key.clone())));
        m.set_paused(None);
        m.clone()
    }
}
