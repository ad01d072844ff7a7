//! Counters the daemon keeps while it runs, and their Prometheus text rendering.
//!
//! Lanes and sources each get their own `Arc` of counters at start-up (the set is fixed by the
//! configuration) and bump atomics; nothing here blocks or allocates on the hot path except
//! the per-status answer map. Figures that live in the outbox (pending depth, oldest pending)
//! are read when scraped and passed to [`render`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    pub parked: AtomicU64,
    /// Rows left out on purpose (`skip_if`).
    pub skipped: AtomicU64,
    /// Input bytes committed (records, parked lines and what lies between).
    pub bytes: AtomicU64,
    /// Bytes the source's open files hold beyond its cursors (tail mode), after its last pass.
    pub lag_bytes: AtomicU64,
    /// Unix milliseconds of the last commit, 0 before any.
    pub last_activity_ms: AtomicI64,
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
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
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
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
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
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn set_paused(&self, reason: Option<String>) {
        self.paused.store(reason.is_some(), Relaxed);
        *self.pause_reason.lock().expect("pause reason") = reason;
    }
}

impl SourceMetrics {
    pub fn new(name: SourceName, stale: Option<StalePolicy>, since_ms: i64) -> Self {
        Self {
            name,
            records: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            last_activity_ms: AtomicI64::new(0),
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
        *self.problems.lock().expect("problems") = problems;
    }

    /// Whether silence is watched for this source (`stale_after`).
    pub fn watched(&self) -> bool {
        self.stale.lock().expect("stale policy").is_some()
    }

    /// Counts a commit: records inserted, duplicates absorbed, input parked.
    pub fn committed(&self, done: &crate::outbox::Committed, parked: u64) {
        self.records.fetch_add(done.inserted as u64, Relaxed);
        self.duplicates.fetch_add(done.duplicates as u64, Relaxed);
        self.parked.fetch_add(parked, Relaxed);
        self.last_activity_ms
            .store(crate::outbox::now_ms(), Relaxed);
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
    sources: Mutex<std::collections::HashMap<SourceName, std::sync::Arc<SourceMetrics>>>,
    lanes: Mutex<std::collections::HashMap<LaneKey, std::sync::Arc<LaneMetrics>>>,
}

impl Counters {
    /// The counters of source `name`, made at its first start, with `stale` as configured now.
    pub fn source(
        &self,
        name: &SourceName,
        stale: Option<StalePolicy>,
    ) -> std::sync::Arc<SourceMetrics> {
        let mut sources = self.sources.lock().expect("counters");
        let m = sources.entry(name.clone()).or_insert_with(|| {
            std::sync::Arc::new(SourceMetrics::new(
                name.clone(),
                None,
                crate::outbox::now_ms(),
            ))
        });
        *m.stale.lock().expect("stale policy") = stale;
        m.clone()
    }

    /// The counters of lane `key`, made at its first start; a lane starts unpaused.
    pub fn lane(&self, key: &LaneKey) -> std::sync::Arc<LaneMetrics> {
        let mut lanes = self.lanes.lock().expect("counters");
        let m = lanes
            .entry(key.clone())
            .or_insert_with(|| std::sync::Arc::new(LaneMetrics::new(key.clone())));
        m.set_paused(None);
        m.clone()
    }
}

/// A lane's backlog as the outbox holds it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Depth {
    pub pending: i64,
    pub oldest_pending_ms: Option<i64>,
}

fn lane_labels(k: &LaneKey) -> String {
    format!(
        "endpoint=\"{}\",integration_id=\"{}\",external_system=\"{}\"",
        k.emits.as_str(),
        k.integration_id,
        escape(k.external_system.as_deref().unwrap_or(""))
    )
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: its help, its type, and a sample per `(labels, value)`.
fn family<V: std::fmt::Display>(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(o, "{name}{{{labels}}} {value}");
    }
}

/// The Prometheus text exposition (format 0.0.4).
pub fn render(
    sources: &[std::sync::Arc<SourceMetrics>],
    lanes: &[(std::sync::Arc<LaneMetrics>, Depth)],
    now_ms: i64,
) -> String {
    let mut o = String::from(
        "# HELP injixo_sync_up 1 while the daemon runs.\n# TYPE injixo_sync_up gauge\ninjixo_sync_up 1\n",
    );
    let source = |s: &SourceMetrics| format!("source=\"{}\"", escape(s.name.as_str()));
    type SourceValue = fn(&SourceMetrics, i64) -> f64;
    let per_source: [(&str, &str, &str, SourceValue); 7] = [
        (
            "injixo_sync_source_read_bytes_total",
            "counter",
            "Input bytes a source committed past.",
            |s, _| s.bytes.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_source_records_total",
            "counter",
            "Records a source committed to the outbox.",
            |s, _| s.records.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_source_duplicates_total",
            "counter",
            "Records read again and recognised by their dedupe key.",
            |s, _| s.duplicates.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_source_parked_total",
            "counter",
            "Input lines that could not become records.",
            |s, _| s.parked.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_source_skipped_total",
            "counter",
            "Input rows left out on purpose by skip_if.",
            |s, _| s.skipped.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_source_lag_bytes",
            "gauge",
            "Bytes in the files a source tails beyond its cursors.",
            |s, _| s.lag_bytes.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_source_last_activity_timestamp_seconds",
            "gauge",
            "When a source last committed.",
            |s, _| s.last_activity_ms.load(Relaxed) as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, value) in per_source {
        family(
            &mut o,
            name,
            kind,
            help,
            sources.iter().map(|s| (source(s), value(s, now_ms))),
        );
    }
    family(
        &mut o,
        "injixo_sync_source_stale",
        "gauge",
        "1 while a source with stale_after has read nothing for that long.",
        sources
            .iter()
            .filter(|s| s.watched())
            .map(|s| (source(s), u8::from(s.stale_verdict(now_ms).is_some()))),
    );
    family(
        &mut o,
        "injixo_sync_source_problems",
        "gauge",
        "What a source cannot do right now (a folder gone, a file it may not read, a database \
         that does not answer): `status` and /readyz say what.",
        sources.iter().map(|s| (source(s), s.problems().len())),
    );

    type LaneValue = fn(&LaneMetrics, &Depth, i64) -> f64;
    let per_lane: [(&str, &str, &str, LaneValue); 8] = [
        (
            "injixo_sync_lane_sent_total",
            "counter",
            "Records the API accepted.",
            |l, _, _| l.sent.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_lane_dead_total",
            "counter",
            "Records the API refused (dead letters).",
            |l, _, _| l.dead.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_lane_retries_total",
            "counter",
            "Attempts repeated after a transient failure.",
            |l, _, _| l.retries.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_lane_unknown_outcome_retries_total",
            "counter",
            "Retries of a batch whose previous attempt got no answer (may duplicate).",
            |l, _, _| l.unknown_outcome.load(Relaxed) as f64,
        ),
        (
            "injixo_sync_lane_pending_records",
            "gauge",
            "Records waiting in the outbox, counted up to 1,000,000 per lane.",
            |_, d, _| d.pending as f64,
        ),
        (
            "injixo_sync_lane_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest waiting record (0 when none).",
            |_, d, now| {
                d.oldest_pending_ms
                    .map(|t| (now - t).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0)
            },
        ),
        (
            "injixo_sync_lane_last_success_timestamp_seconds",
            "gauge",
            "When the API last accepted a batch (0 never).",
            |l, _, _| l.last_success_ms.load(Relaxed) as f64 / 1000.0,
        ),
        (
            "injixo_sync_lane_paused",
            "gauge",
            "1 while the API refuses the key or configuration (401/403/404).",
            |l, _, _| f64::from(u8::from(l.paused.load(Relaxed))),
        ),
    ];
    for (name, kind, help, value) in per_lane {
        family(
            &mut o,
            name,
            kind,
            help,
            lanes
                .iter()
                .map(|(l, d)| (lane_labels(&l.key), value(l, d, now_ms))),
        );
    }
    family(
        &mut o,
        "injixo_sync_http_responses_total",
        "counter",
        "Answers from the API by status (0: no answer).",
        lanes.iter().flat_map(|(l, _)| {
            let labels = lane_labels(&l.key);
            let answers = l.answers.lock().expect("answers").clone();
            answers
                .into_iter()
                .map(move |(status, n)| (format!("{labels},status=\"{status}\""), n))
        }),
    );
    let mut histogram = Vec::new();
    for (l, _) in lanes {
        let labels = lane_labels(&l.key);
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += l.latency[i].load(Relaxed);
            histogram.push((
                format!("_bucket{{{labels},le=\"{bound}\"}}"),
                cumulative as f64,
            ));
        }
        cumulative += l.latency[LATENCY_BUCKETS.len()].load(Relaxed);
        histogram.push((
            format!("_bucket{{{labels},le=\"+Inf\"}}"),
            cumulative as f64,
        ));
        histogram.push((
            format!("_sum{{{labels}}}"),
            l.latency_sum_us.load(Relaxed) as f64 / 1e6,
        ));
        histogram.push((format!("_count{{{labels}}}"), cumulative as f64));
    }
    let name = "injixo_sync_batch_duration_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Time of one request to the API.\n# TYPE {name} histogram"
    );
    for (suffix, value) in histogram {
        let _ = writeln!(o, "{name}{suffix} {value}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Emits;
    use std::sync::Arc;

    #[test]
    fn the_exposition_has_help_type_and_labelled_samples() {
        let lane = Arc::new(LaneMetrics::new(LaneKey {
            emits: Emits::AgentStatuses,
            integration_id: 8431,
            external_system: Some("My \"ACD\"".into()),
        }));
        lane.sent.fetch_add(499, Relaxed);
        lane.observe(200, Duration::from_millis(30));
        lane.observe(503, Duration::from_secs(60));
        let source = Arc::new(SourceMetrics::new(
            SourceName::parse("acd").unwrap(),
            None,
            0,
        ));
        source.records.fetch_add(500, Relaxed);
        let text = render(
            &[source],
            &[(
                lane,
                Depth {
                    pending: 3,
                    oldest_pending_ms: Some(1_000),
                },
            )],
            11_000,
        );
        let labels =
            r#"endpoint="agent_statuses",integration_id="8431",external_system="My \"ACD\"""#;
        for line in [
            "# TYPE injixo_sync_lane_sent_total counter".to_owned(),
            format!("injixo_sync_lane_sent_total{{{labels}}} 499"),
            format!("injixo_sync_lane_pending_records{{{labels}}} 3"),
            format!("injixo_sync_lane_oldest_pending_age_seconds{{{labels}}} 10"),
            format!("injixo_sync_http_responses_total{{{labels},status=\"503\"}} 1"),
            format!("injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"0.05\"}} 1"),
            format!("injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            "injixo_sync_source_records_total{source=\"acd\"} 500".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
