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
pub mod replay;
pub mod rows;
pub mod schedule;
pub mod sql;
pub mod webhook;

use std::sync::Arc;
use std::sync::mpsc;

use tokio_util::sync::CancellationToken;

use crate::config::{SourceConfig, SourceKind};
use crate::counters::SourceMetrics;
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
    /// The source's `key`, as configured, for the words that say rows were merged by it.
    pub key: Option<String>,
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
            key: source.kind.rows().key.as_ref().map(|k| k.to_string()),
        }
    }
}

/// What a source cannot do right now (a folder gone, a file it may not read, a database that
/// does not answer), reported anew on every pass or poll. What changed is published: logged
/// once when it begins (warn) and when it ends (info), kept in the outbox for `status` until
/// it ends, counted in `/metrics` and named by `/readyz`.
#[derive(Default)]
pub struct Problems {
    published: std::collections::BTreeMap<String, String>,
    now: std::collections::BTreeMap<String, String>,
}

impl Problems {
    /// Notes a problem with `subject` (a path, `poll`) in this pass.
    pub fn report(&mut self, subject: impl Into<String>, message: String) {
        self.now.insert(subject.into(), message);
    }

    /// Whether this pass noted a problem with `subject`.
    pub fn has(&self, subject: &str) -> bool {
        self.now.contains_key(subject)
    }

    /// Ends a pass: what changed since the last one, logged unless the caller logs itself.
    fn changes(&mut self, ctx: &SourceContext, log: bool) -> Option<Vec<(String, String)>> {
        let now = std::mem::take(&mut self.now);
        if now == self.published {
            return None;
        }
        for (subject, message) in &now {
            if log && self.published.get(subject) != Some(message) {
                tracing::warn!(source = %ctx.name, "{message}");
            }
        }
        for (subject, message) in &self.published {
            if log && !now.contains_key(subject) {
                tracing::info!(source = %ctx.name, "resolved: {message}");
            }
        }
        ctx.metrics.set_problems(now.values().cloned().collect());
        self.published = now;
        Some(
            self.published
                .iter()
                .map(|(s, m)| (s.clone(), m.clone()))
                .collect(),
        )
    }

    /// [`Self::changes`], written to the outbox from a source's own thread.
    pub fn publish_blocking(&mut self, ctx: &SourceContext) {
        if let Some(list) = self.changes(ctx, true)
            && let Err(e) = ctx.outbox.set_problems_blocking(ctx.id, list)
        {
            tracing::debug!(source = %ctx.name, "cannot note the source's problems: {e}");
        }
    }

    /// [`Self::changes`], written to the outbox from async code, by a caller that logs its
    /// problems itself.
    pub async fn publish_quietly(&mut self, ctx: &SourceContext) {
        if let Some(list) = self.changes(ctx, false)
            && let Err(e) = ctx.outbox.set_problems(ctx.id, list).await
        {
            tracing::debug!(source = %ctx.name, "cannot note the source's problems: {e}");
        }
    }
}

/// A configured input.
pub trait Source: Send + 'static {
    /// Reads and commits until `ctx.shutdown` fires. Runs on its own thread: it may block.
    fn run(self: Box<Self>, ctx: SourceContext);
}

/// Why a source cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Hook(#[from] webhook::HookError),
    #[error("cannot set up HTTP: {0}")]
    Http(#[from] reqwest::Error),
}

/// Builds the source a configuration describes; a `webhook` source adds the route the
/// listener serves it under to `hooks`. Fails when a secret the source needs at start
/// cannot be read.
pub fn build(
    cfg: &SourceConfig,
    hooks: &mut Vec<webhook::Hook>,
) -> Result<Box<dyn Source>, BuildError> {
    Ok(match &cfg.kind {
        SourceKind::Files(files) => Box::new(files::FilesSource::new(files.clone())),
        SourceKind::Sql(sql) => Box::new(sql::SqlSource::new(sql.clone())),
        SourceKind::Http(http) => Box::new(http::HttpSource::new(http.clone())?),
        SourceKind::Webhook(w) => {
            let (source, hook) = webhook::WebhookSource::new(&cfg.name, w.clone())?;
            hooks.push(hook);
            Box::new(source)
        }
    })
}
