//! Sources: each reads one kind of input from its committed cursor and commits what it read,
//! records and cursor together, through the [`Outbox`].
//!
//! A source never talks to the API and never decides delivery; it only has to make sure that
//! everything after its cursor is either committed as a record, parked with its place and
//! reason, or still unread. Sources whose input is file I/O run on a thread of their own
//! (given to them by `app`); they sleep on a channel that file events, the poll timer and
//! shutdown all write to, so an idle source costs nothing.

pub mod files;
pub mod fsinfo;
pub mod http;
#[cfg(feature = "odbc")]
pub mod odbc;
pub mod parse;
pub mod poll;
pub mod queue_log;
pub mod rows;
pub mod schedule;
pub mod sql;
pub mod webhook;

use std::sync::Arc;
use std::sync::mpsc;

use tokio_util::sync::CancellationToken;

use crate::config::{SourceConfig, SourceKind};
use crate::metrics::SourceMetrics;
use crate::outbox::{LaneId, Outbox, SourceId};
use crate::types::{Emits, SourceName};

/// What a source is given to run.
pub struct SourceContext {
    pub name: SourceName,
    pub id: SourceId,
    pub lane: LaneId,
    pub emits: Emits,
    pub outbox: Outbox,
    pub shutdown: CancellationToken,
    /// Wake-ups: file events and the shutdown signal send here.
    pub wake: mpsc::Receiver<()>,
    /// A sender for `wake`, for the source's own watchers.
    pub waker: mpsc::Sender<()>,
    pub metrics: Arc<SourceMetrics>,
}

impl SourceContext {
    /// A context with a fresh wake-up channel (`waker` is kept for whoever must wake the
    /// source: file events, shutdown) and fresh counters, silence counted from now.
    pub fn new(
        source: &SourceConfig,
        ids: (SourceId, LaneId),
        outbox: Outbox,
        shutdown: CancellationToken,
    ) -> Self {
        let metrics = Arc::new(SourceMetrics::new(
            source.name.clone(),
            source.stale.clone(),
            crate::outbox::now_ms(),
        ));
        Self::with_metrics(source, ids, outbox, shutdown, metrics)
    }

    /// A context counting into `metrics` (kept across reloads by `app`).
    pub fn with_metrics(
        source: &SourceConfig,
        ids: (SourceId, LaneId),
        outbox: Outbox,
        shutdown: CancellationToken,
        metrics: Arc<SourceMetrics>,
    ) -> Self {
        let (waker, wake) = mpsc::channel();
        Self {
            name: source.name.clone(),
            id: ids.0,
            lane: ids.1,
            emits: source.lane.emits,
            outbox,
            shutdown,
            wake,
            waker,
            metrics,
        }
    }
}

/// A configured input.
pub trait Source: Send + 'static {
    /// Reads and commits until `ctx.shutdown` fires. Runs on its own thread: it may block.
    fn run(self: Box<Self>, ctx: SourceContext);
}

/// Builds the source a configuration describes; a `webhook` source adds the route the
/// listener serves it under to `hooks`. Fails when a secret the source needs at start
/// cannot be read.
pub fn build(
    cfg: &SourceConfig,
    hooks: &mut Vec<webhook::Hook>,
) -> Result<Box<dyn Source>, String> {
    Ok(match &cfg.kind {
        SourceKind::Files(files) => Box::new(files::FilesSource::new(files.clone())),
        SourceKind::Sql(sql) => Box::new(sql::SqlSource::new(sql.clone())),
        SourceKind::Http(http) => Box::new(http::HttpSource::new(http.clone())),
        SourceKind::Webhook(w) => {
            let (source, hook) = webhook::WebhookSource::new(&cfg.name, w.clone())?;
            hooks.push(hook);
            Box::new(source)
        }
    })
}
