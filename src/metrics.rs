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
    /// Input bytes committed (records, parked lines and what lies between).
    pub bytes: AtomicU64,
    /// Bytes the source's open files hold beyond its cursors (tail mode), after its last pass.
    pub lag_bytes: AtomicU64,
    /// Unix milliseconds of the last commit, 0 before any.
    pub last_activity_ms: AtomicI64,
    /// When the daemon started: silence is counted from here at the earliest.
    pub since_ms: i64,
    pub stale: Option<StalePolicy>,
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
            bytes: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            last_activity_ms: AtomicI64::new(0),
            since_ms,
            stale,
        }
    }

    /// Why this source counts as silent now, if it does.
    pub fn stale_verdict(&self, now_ms: i64) -> Option<String> {
        let last = self.last_activity_ms.load(Relaxed).max(self.since_ms);
        let now = jiff::Timestamp::from_millisecond(now_ms).ok()?;
        self.stale.as_ref()?.verdict(last, now)
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

/// The Prometheus text exposition (format 0.0.4).
pub fn render(
    sources: &[std::sync::Arc<SourceMetrics>],
    lanes: &[(std::sync::Arc<LaneMetrics>, Depth)],
    now_ms: i64,
) -> String {
    let mut o = String::from(
        "# HELP injixo_sync_up 1 while the daemon runs.\n# TYPE injixo_sync_up gauge\ninjixo_sync_up 1\n",
    );

    type SourceCounter = fn(&SourceMetrics) -> &AtomicU64;
    let per_source: [(&str, &str, SourceCounter); 4] = [
        (
            "injixo_sync_source_read_bytes_total",
            "Input bytes a source committed past.",
            |s| &s.bytes,
        ),
        (
            "injixo_sync_source_records_total",
            "Records a source committed to the outbox.",
            |s| &s.records,
        ),
        (
            "injixo_sync_source_duplicates_total",
            "Records read again and recognised by their dedupe key.",
            |s| &s.duplicates,
        ),
        (
            "injixo_sync_source_parked_total",
            "Input lines that could not become records.",
            |s| &s.parked,
        ),
    ];
    for (name, help, get) in per_source {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in sources {
            let _ = writeln!(
                o,
                "{name}{{source=\"{}\"}} {}",
                escape(s.name.as_str()),
                get(s).load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP injixo_sync_source_lag_bytes Bytes in the files a source tails beyond its cursors.\n\
         # TYPE injixo_sync_source_lag_bytes gauge"
    );
    for s in sources {
        let _ = writeln!(
            o,
            "injixo_sync_source_lag_bytes{{source=\"{}\"}} {}",
            escape(s.name.as_str()),
            s.lag_bytes.load(Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP injixo_sync_source_last_activity_timestamp_seconds When a source last committed.\n\
         # TYPE injixo_sync_source_last_activity_timestamp_seconds gauge"
    );
    for s in sources {
        let _ = writeln!(
            o,
            "injixo_sync_source_last_activity_timestamp_seconds{{source=\"{}\"}} {}",
            escape(s.name.as_str()),
            s.last_activity_ms.load(Relaxed) as f64 / 1000.0
        );
    }

    let _ = writeln!(
        o,
        "# HELP injixo_sync_source_stale 1 while a source with stale_after has read nothing for that long.\n\
         # TYPE injixo_sync_source_stale gauge"
    );
    for s in sources.iter().filter(|s| s.stale.is_some()) {
        let _ = writeln!(
            o,
            "injixo_sync_source_stale{{source=\"{}\"}} {}",
            escape(s.name.as_str()),
            u8::from(s.stale_verdict(now_ms).is_some())
        );
    }

    type LaneCounter = fn(&LaneMetrics) -> &AtomicU64;
    let per_lane: [(&str, &str, LaneCounter); 4] = [
        (
            "injixo_sync_lane_sent_total",
            "Records the API accepted.",
            |l| &l.sent,
        ),
        (
            "injixo_sync_lane_dead_total",
            "Records the API refused (dead letters).",
            |l| &l.dead,
        ),
        (
            "injixo_sync_lane_retries_total",
            "Attempts repeated after a transient failure.",
            |l| &l.retries,
        ),
        (
            "injixo_sync_lane_unknown_outcome_retries_total",
            "Retries of a batch whose previous attempt got no answer (may duplicate).",
            |l| &l.unknown_outcome,
        ),
    ];
    for (name, help, get) in per_lane {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, _) in lanes {
            let _ = writeln!(
                o,
                "{name}{{{}}} {}",
                lane_labels(&l.key),
                get(l).load(Relaxed)
            );
        }
    }
    let gauges: [(&str, &str); 4] = [
        (
            "injixo_sync_lane_pending_records",
            "Records waiting in the outbox.",
        ),
        (
            "injixo_sync_lane_oldest_pending_age_seconds",
            "Age of the oldest waiting record (0 when none).",
        ),
        (
            "injixo_sync_lane_last_success_timestamp_seconds",
            "When the API last accepted a batch (0 never).",
        ),
        (
            "injixo_sync_lane_paused",
            "1 while the API refuses the key or configuration (401/403/404).",
        ),
    ];
    for (i, (name, help)) in gauges.iter().enumerate() {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (l, depth) in lanes {
            let value = match i {
                0 => depth.pending as f64,
                1 => depth
                    .oldest_pending_ms
                    .map(|t| ((now_ms - t).max(0)) as f64 / 1000.0)
                    .unwrap_or(0.0),
                2 => l.last_success_ms.load(Relaxed) as f64 / 1000.0,
                _ => u8::from(l.paused.load(Relaxed)) as f64,
            };
            let _ = writeln!(o, "{name}{{{}}} {value}", lane_labels(&l.key));
        }
    }
    let _ = writeln!(
        o,
        "# HELP injixo_sync_http_responses_total Answers from the API by status (0: no answer).\n\
         # TYPE injixo_sync_http_responses_total counter"
    );
    for (l, _) in lanes {
        for (status, n) in l.answers.lock().expect("answers").iter() {
            let _ = writeln!(
                o,
                "injixo_sync_http_responses_total{{{},status=\"{status}\"}} {n}",
                lane_labels(&l.key)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP injixo_sync_batch_duration_seconds Time of one request to the API.\n\
         # TYPE injixo_sync_batch_duration_seconds histogram"
    );
    for (l, _) in lanes {
        let labels = lane_labels(&l.key);
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += l.latency[i].load(Relaxed);
            let _ = writeln!(
                o,
                "injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += l.latency[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            o,
            "injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            o,
            "injixo_sync_batch_duration_seconds_sum{{{labels}}} {}",
            l.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "injixo_sync_batch_duration_seconds_count{{{labels}}} {cumulative}"
        );
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
