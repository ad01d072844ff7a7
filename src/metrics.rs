//! Counters the daemon keeps while it runs, and their Prometheus exposition.
//!
//! Lanes and sources each get their own `Arc` of counters at start-up (the set is fixed by the
//! configuration) and bump atomics; nothing here blocks or allocates on the hot path except
//! the per-status answer map and the latency histogram's lock. Figures that live in the outbox
//! (pending depth, oldest pending) are read when scraped and passed to [`render`], which
//! writes every family through `prometheus-client` (names, label escaping, HELP and TYPE
//! lines, histogram buckets as the text format wants them).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

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
            merged: AtomicU64::new(0),
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
    pub fn committed(&self, done: &crate::outbox::Committed) {
        let parked = done.parked as u64;
        self.records.fetch_add(done.inserted as u64, Relaxed);
        self.duplicates.fetch_add(done.duplicates as u64, Relaxed);
        self.merged.fetch_add(done.merged as u64, Relaxed);
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

/// A lane's backlog as the outbox holds it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Depth {
    pub pending: i64,
    pub oldest_pending_ms: Option<i64>,
    /// Records set aside because they cannot be decoded, until dropped.
    pub damaged: i64,
}

/// The `Content-Type` of [`render`]'s text.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The Prometheus text exposition (format 0.0.4) of the counters as they are now, with the
/// outbox's figures read for this scrape.
pub fn render(
    sources: &[Arc<SourceMetrics>],
    lanes: &[(Arc<LaneMetrics>, Depth)],
    outbox: crate::outbox::Usage,
    now_ms: i64,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        sources: sources.to_vec(),
        lanes: lanes.to_vec(),
        outbox,
        now_ms,
    }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("a String takes any text");
    text
}

/// One scrape: every family is written from the counters and depths it holds.
#[derive(Debug)]
struct Scrape {
    sources: Vec<Arc<SourceMetrics>>,
    lanes: Vec<(Arc<LaneMetrics>, Depth)>,
    outbox: crate::outbox::Usage,
    now_ms: i64,
}

/// Writes one metric family: its HELP and TYPE lines, and a sample per `(labels, metric)`.
/// `name` is the name exposed; the encoder appends a counter's `_total` itself, so it is
/// taken off here.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let name = match M::TYPE {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let mut family = e.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn lane_labels(k: &LaneKey) -> [(&'static str, String); 3] {
    let external_system = k.external_system.clone().unwrap_or_default();
    [
        ("endpoint", k.emits.as_str().to_owned()),
        ("integration_id", k.integration_id.to_string()),
        ("external_system", external_system),
    ]
}

fn counter(n: &AtomicU64) -> ConstCounter {
    ConstCounter::new(n.load(Relaxed))
}

/// Seconds since the Unix epoch, from milliseconds.
fn seconds(ms: i64) -> ConstGauge<f64> {
    ConstGauge::new(ms as f64 / 1000.0)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let e = &mut e;
        let now = self.now_ms;
        let up: [([(&str, &str); 0], _); 1] = [([], ConstGauge::new(1))];
        family(e, "injixo_sync_up", "1 while the daemon runs.", up)?;
        let o = self.outbox;
        let gauge =
            |n: u64| -> [([(&str, &str); 0], ConstGauge); 1] { [([], ConstGauge::new(n as i64))] };
        family(
            e,
            "injixo_sync_outbox_size_bytes",
            "The state file and its WAL on disk.",
            gauge(o.on_disk),
        )?;
        family(
            e,
            "injixo_sync_outbox_used_bytes",
            "Bytes in the state file's pages in use (free pages are reused).",
            gauge(o.used),
        )?;
        family(
            e,
            "injixo_sync_outbox_budget_bytes",
            "max_outbox_size: reading pauses while the bytes in use reach it.",
            gauge(o.budget),
        )?;
        family(
            e,
            "injixo_sync_outbox_full",
            "1 while the outbox is at its budget and reading is paused.",
            gauge(u64::from(o.full())),
        )?;

        let sources = || {
            self.sources
                .iter()
                .map(|s| ([("source", s.name.as_str())], &**s))
        };
        family(
            e,
            "injixo_sync_source_read_bytes_total",
            "Input bytes a source committed past.",
            sources().map(|(l, s)| (l, counter(&s.bytes))),
        )?;
        family(
            e,
            "injixo_sync_source_records_total",
            "Records a source committed to the outbox.",
            sources().map(|(l, s)| (l, counter(&s.records))),
        )?;
        family(
            e,
            "injixo_sync_source_duplicates_total",
            "Records read again and recognised by their dedupe key.",
            sources().map(|(l, s)| (l, counter(&s.duplicates))),
        )?;
        family(
            e,
            "injixo_sync_source_merged_total",
            "Rows merged into a record already kept, because their key was known.",
            sources().map(|(l, s)| (l, counter(&s.merged))),
        )?;
        family(
            e,
            "injixo_sync_source_parked_total",
            "Input lines that could not become records.",
            sources().map(|(l, s)| (l, counter(&s.parked))),
        )?;
        family(
            e,
            "injixo_sync_source_skipped_total",
            "Input rows left out on purpose by skip_if.",
            sources().map(|(l, s)| (l, counter(&s.skipped))),
        )?;
        family(
            e,
            "injixo_sync_source_lag_bytes",
            "Bytes in the files a source tails beyond its cursors.",
            sources().map(|(l, s)| (l, ConstGauge::new(s.lag_bytes.load(Relaxed)))),
        )?;
        family(
            e,
            "injixo_sync_source_last_activity_timestamp_seconds",
            "When a source last committed.",
            sources().map(|(l, s)| (l, seconds(s.last_activity_ms.load(Relaxed)))),
        )?;
        family(
            e,
            "injixo_sync_source_stale",
            "1 while a source with stale_after has read nothing for that long.",
            sources().filter(|(_, s)| s.watched()).map(|(l, s)| {
                let stale = s.stale_verdict(now).is_some();
                (l, ConstGauge::new(i64::from(stale)))
            }),
        )?;
        family(
            e,
            "injixo_sync_source_problems",
            "What a source cannot do right now (a folder gone, a file it may not read, a database \
             that does not answer): `status` and /readyz say what.",
            sources().map(|(l, s)| (l, ConstGauge::new(s.problems().len() as i64))),
        )?;

        let lanes = || {
            self.lanes
                .iter()
                .map(|(l, d)| (lane_labels(&l.key), &**l, d))
        };
        family(
            e,
            "injixo_sync_lane_sent_total",
            "Records the API accepted.",
            lanes().map(|(k, l, _)| (k, counter(&l.sent))),
        )?;
        family(
            e,
            "injixo_sync_lane_dead_total",
            "Records the API refused (dead letters).",
            lanes().map(|(k, l, _)| (k, counter(&l.dead))),
        )?;
        family(
            e,
            "injixo_sync_lane_retries_total",
            "Attempts repeated after a transient failure.",
            lanes().map(|(k, l, _)| (k, counter(&l.retries))),
        )?;
        family(
            e,
            "injixo_sync_lane_unknown_outcome_retries_total",
            "Retries of a batch whose previous attempt got no answer (may duplicate).",
            lanes().map(|(k, l, _)| (k, counter(&l.unknown_outcome))),
        )?;
        family(
            e,
            "injixo_sync_lane_pending_records",
            "Records waiting in the outbox, counted up to 1,000,000 per lane.",
            lanes().map(|(k, _, d)| (k, ConstGauge::new(d.pending))),
        )?;
        family(
            e,
            "injixo_sync_lane_oldest_pending_age_seconds",
            "Age of the oldest waiting record (0 when none).",
            lanes().map(|(k, _, d)| {
                let age = d.oldest_pending_ms.map_or(0, |t| (now - t).max(0));
                (k, seconds(age))
            }),
        )?;
        family(
            e,
            "injixo_sync_lane_damaged_records",
            "Records that cannot be decoded (damaged in the state file), set aside as dead \
             letters so the lane flows on: `injixo-sync dead list` shows them.",
            lanes().map(|(k, _, d)| (k, ConstGauge::new(d.damaged))),
        )?;
        family(
            e,
            "injixo_sync_lane_last_success_timestamp_seconds",
            "When the API last accepted a batch (0 never).",
            lanes().map(|(k, l, _)| (k, seconds(l.last_success_ms.load(Relaxed)))),
        )?;
        family(
            e,
            "injixo_sync_lane_paused",
            "1 while the API refuses the key or configuration (401/403/404).",
            lanes().map(|(k, l, _)| (k, ConstGauge::new(i64::from(l.paused.load(Relaxed))))),
        )?;
        family(
            e,
            "injixo_sync_http_responses_total",
            "Answers from the API by status (0: no answer).",
            lanes().flat_map(|(k, l, _)| {
                let answers = l.answers.lock().expect("answers").clone();
                answers.into_iter().map(move |(status, n)| {
                    ((k.clone(), [("status", status)]), ConstCounter::new(n))
                })
            }),
        )?;
        family(
            e,
            "injixo_sync_batch_duration_seconds",
            "Time of one request to the API.",
            lanes().map(|(k, l, _)| (k, l.latency.clone())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Emits;

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
        source.committed(&crate::outbox::Committed {
            inserted: 1,
            duplicates: 4,
            merged: 3,
            ..Default::default()
        });
        let text = render(
            &[source],
            &[(
                lane,
                Depth {
                    pending: 3,
                    oldest_pending_ms: Some(1_000),
                    damaged: 2,
                },
            )],
            crate::outbox::Usage {
                used: 2 << 20,
                on_disk: 3 << 20,
                budget: 2 << 20,
            },
            11_000,
        );
        let labels =
            r#"endpoint="agent_statuses",integration_id="8431",external_system="My \"ACD\"""#;
        for line in [
            "injixo_sync_up 1".to_owned(),
            "# TYPE injixo_sync_lane_sent_total counter".to_owned(),
            format!("injixo_sync_lane_sent_total{{{labels}}} 499"),
            format!("injixo_sync_lane_pending_records{{{labels}}} 3"),
            format!("injixo_sync_lane_oldest_pending_age_seconds{{{labels}}} 10.0"),
            format!("injixo_sync_lane_damaged_records{{{labels}}} 2"),
            format!("injixo_sync_http_responses_total{{{labels},status=\"503\"}} 1"),
            format!("injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"0.05\"}} 1"),
            format!("injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("injixo_sync_batch_duration_seconds_count{{{labels}}} 2"),
            "injixo_sync_source_records_total{source=\"acd\"} 501".to_owned(),
            "injixo_sync_source_duplicates_total{source=\"acd\"} 4".to_owned(),
            "injixo_sync_source_merged_total{source=\"acd\"} 3".to_owned(),
            "injixo_sync_outbox_size_bytes 3145728".to_owned(),
            "injixo_sync_outbox_budget_bytes 2097152".to_owned(),
            "injixo_sync_outbox_full 1".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
