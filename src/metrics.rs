//! The Prometheus exposition of the daemon's counters (`crate::counters`).
//!
//! Figures that live in the outbox (pending depth, oldest pending) are read when scraped and
//! passed to [`render`] with the counters, which writes every family through
//! `prometheus-client` (names, label escaping, HELP and TYPE lines, histogram buckets as the
//! text format wants them). Nothing here counts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::counters::{LaneMetrics, SourceMetrics};
use crate::types::LaneKey;

/// A lane's backlog as the outbox holds it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Depth {
    pub pending: i64,
    pub oldest_pending_ms: Option<i64>,
    /// Records set aside because they cannot be decoded, until dropped.
    pub damaged: i64,
    /// Contact events held back under a new name for a known queue identifier.
    pub held: i64,
}

/// The `Content-Type` of [`render`]'s text.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The Prometheus text exposition (format 0.0.4) of the counters as they are now, with the
/// outbox's figures read for this scrape.
pub fn render(
    sources: &[Arc<SourceMetrics>],
    lanes: &[(Arc<LaneMetrics>, Depth)],
    outbox: crate::outbox::Usage,
    parked: Vec<crate::outbox::ParkedCount>,
    listener: &Listener,
    now_ms: i64,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        sources: sources.to_vec(),
        lanes: lanes.to_vec(),
        outbox,
        parked,
        listener: listener.clone(),
        now_ms,
    }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("a String takes any text");
    text
}

/// What `/metrics` says about the listener itself.
#[derive(Clone, Debug, Default)]
pub struct Listener {
    /// When the certificate it serves expires (unix seconds), with TLS.
    pub tls_not_after: Option<i64>,
    /// The webhook sources, whose refused pushes are counted.
    pub webhooks: Vec<String>,
}

/// One scrape: every family is written from the counters and depths it holds.
#[derive(Debug)]
struct Scrape {
    listener: Listener,
    sources: Vec<Arc<SourceMetrics>>,
    lanes: Vec<(Arc<LaneMetrics>, Depth)>,
    outbox: crate::outbox::Usage,
    /// Parked rows now, per source and reason (bounded; see `outbox::parked_counts`).
    parked: Vec<crate::outbox::ParkedCount>,
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
            "injixo_sync_source_parked_rows",
            "Rows parked now, by source and reason: the ten largest reasons of each source, the \
             rest summed as reason=\"(other reasons)\". `injixo-sync parked list` shows them; \
             `parked retry` maps them again after the map is fixed.",
            self.parked.iter().map(|p| {
                (
                    [("source", p.source.as_str()), ("reason", p.reason.as_str())],
                    ConstGauge::new(p.count),
                )
            }),
        )?;
        family(
            e,
            "injixo_sync_source_skipped_total",
            "Input rows left out on purpose by skip_if.",
            sources().map(|(l, s)| (l, counter(&s.skipped))),
        )?;
        family(
            e,
            "injixo_sync_source_scans_total",
            "Passes a source finished: a files source's looks over its folder and open files, a \
             poller's polls, failed ones included (a webhook source makes none).",
            sources().map(|(l, s)| (l, counter(&s.scans))),
        )?;
        family(
            e,
            "injixo_sync_source_room_waits_total",
            "Commits a source had refused for want of room, after which its reading waited (a \
             push was answered 503): reason budget (the outbox at max_outbox_size) or disk_full.",
            self.sources.iter().flat_map(|s| {
                let name = s.name.as_str();
                [
                    ("budget", &s.room_waits_budget),
                    ("disk_full", &s.room_waits_disk_full),
                ]
                .map(|(reason, n)| ([("source", name), ("reason", reason)], counter(n)))
            }),
        )?;
        family(
            e,
            "injixo_sync_webhook_refused_total",
            "Pushes a webhook source refused before keeping anything, by reason: address (not \
             in allow), token (missing or wrong), signature (missing or not matching), \
             timestamp (the signed time missing or too far from now: a replay).",
            self.sources
                .iter()
                .filter(|s| self.listener.webhooks.iter().any(|w| w == s.name.as_str()))
                .flat_map(|s| {
                    let name = s.name.as_str();
                    [
                        ("address", &s.refused_address),
                        ("token", &s.refused_token),
                        ("signature", &s.refused_signature),
                        ("timestamp", &s.refused_timestamp),
                    ]
                    .map(|(reason, n)| ([("source", name), ("reason", reason)], counter(n)))
                }),
        )?;
        if let Some(t) = self.listener.tls_not_after {
            let expiry: [([(&str, &str); 0], _); 1] = [([], ConstGauge::new(t))];
            family(
                e,
                "injixo_sync_listen_tls_not_after_timestamp_seconds",
                "When the certificate the listener serves expires (renew it, then reload).",
                expiry,
            )?;
        }
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
            "injixo_sync_lane_held_records",
            "Contact events held back because they bring a new name for a known queue \
             identifier (injixo would make a second queue): `injixo-sync queues` shows them.",
            lanes().map(|(k, _, d)| (k, ConstGauge::new(d.held))),
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
                l.answers().into_iter().map(move |(status, n)| {
                    ((k.clone(), [("status", status)]), ConstCounter::new(n))
                })
            }),
        )?;
        family(
            e,
            "injixo_sync_batch_duration_seconds",
            "Time of one request to the API.",
            lanes().map(|(k, l, _)| (k, l.latency().clone())),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::types::{Emits, SourceName};

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
        source.scanned();
        source.scanned();
        source.waited_for_room(&crate::outbox::OutboxError::DiskFull {
            path: "outbox.db".into(),
            message: "database or disk is full".into(),
        });
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
                    held: 4,
                },
            )],
            crate::outbox::Usage {
                used: 2 << 20,
                on_disk: 3 << 20,
                budget: 2 << 20,
            },
            vec![crate::outbox::ParkedCount {
                source: "acd".into(),
                reason: r#"lookup `queue`: no entry for "Sales \ West""#.into(),
                count: 7,
                first_origin: "calls.csv:2".into(),
            }],
            &Listener {
                tls_not_after: Some(1_900_000_000),
                webhooks: vec!["acd".into()],
            },
            11_000,
        );
        let labels =
            r#"endpoint="agent_statuses",integration_id="8431",external_system="My \"ACD\"""#;
        for line in [
            "injixo_sync_up 1".to_owned(),
            "injixo_sync_listen_tls_not_after_timestamp_seconds 1900000000".to_owned(),
            r#"injixo_sync_webhook_refused_total{source="acd",reason="signature"} 0"#.to_owned(),
            "# TYPE injixo_sync_lane_sent_total counter".to_owned(),
            format!("injixo_sync_lane_sent_total{{{labels}}} 499"),
            format!("injixo_sync_lane_pending_records{{{labels}}} 3"),
            format!("injixo_sync_lane_oldest_pending_age_seconds{{{labels}}} 10.0"),
            format!("injixo_sync_lane_damaged_records{{{labels}}} 2"),
            format!("injixo_sync_lane_held_records{{{labels}}} 4"),
            format!("injixo_sync_http_responses_total{{{labels},status=\"503\"}} 1"),
            format!("injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"0.05\"}} 1"),
            format!("injixo_sync_batch_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("injixo_sync_batch_duration_seconds_count{{{labels}}} 2"),
            "injixo_sync_source_records_total{source=\"acd\"} 501".to_owned(),
            "injixo_sync_source_duplicates_total{source=\"acd\"} 4".to_owned(),
            "injixo_sync_source_merged_total{source=\"acd\"} 3".to_owned(),
            "injixo_sync_source_scans_total{source=\"acd\"} 2".to_owned(),
            "# TYPE injixo_sync_source_room_waits_total counter".to_owned(),
            "injixo_sync_source_room_waits_total{source=\"acd\",reason=\"budget\"} 0".to_owned(),
            "injixo_sync_source_room_waits_total{source=\"acd\",reason=\"disk_full\"} 1".to_owned(),
            "# TYPE injixo_sync_source_parked_rows gauge".to_owned(),
            r#"injixo_sync_source_parked_rows{source="acd",reason="lookup `queue`: no entry for \"Sales \\ West\""} 7"#.to_owned(),
            "injixo_sync_outbox_size_bytes 3145728".to_owned(),
            "injixo_sync_outbox_budget_bytes 2097152".to_owned(),
            "injixo_sync_outbox_full 1".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
