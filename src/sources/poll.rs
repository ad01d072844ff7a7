//! What the polled sources (`sql`, `http`) share: the loop that waits for the schedule, runs
//! one poll at a time and retries a failed one with backoff; and the [`Sink`] a poll hands its
//! pages to, which turns rows into records and commits each page with the cursor after it.
//!
//! A poll commits page by page. The cursor row holds the cursor value (where the next poll
//! starts) and the time of the last complete poll (for missed polls, see `schedule`). A poll
//! that fails half-way has committed its first pages with their cursor; the next attempt reads
//! again from there, and dedupe keys absorb whatever it reads twice.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info};

use super::SourceContext;
use super::queue_log::{TRACKER_CURSOR, TableCursor, apply as apply_queue_log};
use super::rows::{ChangeRead, Converted, States, commit, convert_objects, json_cursor};
use crate::config::{QueueLogConfig, RowRules, Schedule};
use crate::outbox::{Commit, OutboxError};

/// The cursor key of a poller's position.
const POLL_CURSOR: &str = "poll";

/// A poller's position, stored as its cursor row's JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PollCursor {
    /// Where the next poll starts (its meaning is the source's); `None` before the first.
    pub value: Option<String>,
    /// When the last complete poll started (Unix ms).
    pub last_poll_ms: Option<i64>,
}

/// Why a poll failed.
#[derive(Debug)]
pub enum PollError {
    /// The outbox cannot take what was read: reading pauses.
    Outbox(OutboxError),
    /// The remote side failed (down, refused, timed out, answered an error): retried.
    Remote(String),
}

impl From<OutboxError> for PollError {
    fn from(e: OutboxError) -> Self {
        PollError::Outbox(e)
    }
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Outbox(e) => write!(f, "{e}"),
            PollError::Remote(e) => f.write_str(e),
        }
    }
}

/// A source that polls.
///
/// Pollers run on their source's own thread (`block_on`), so their futures need not be `Send`.
pub trait Poll: Send + 'static {
    /// One poll from the sink's cursor to now, page by page.
    fn poll<'a>(
        &'a mut self,
        sink: &'a mut Sink<'_>,
    ) -> impl Future<Output = Result<(), PollError>> + 'a;
}

/// How a poller's rows become records.
pub struct Reading {
    pub rows: RowRules,
    /// Every poll is a complete snapshot of agents' current states.
    pub snapshot: bool,
    /// The cursor of the first poll.
    pub initial: Option<String>,
    /// The rows are Asterisk's realtime queue_log table.
    pub queue_log: Option<TableRules>,
}

/// How realtime queue_log rows are read: the queues, the zone of times without one, and how
/// far behind the latest row a row may be read again.
pub struct TableRules {
    pub cfg: QueueLogConfig,
    pub zone: jiff::tz::TimeZone,
    pub keep: Duration,
}

/// Runs a poller until shutdown. Called on the source's own thread; blocks it.
pub fn run<P: Poll>(mut poller: P, ctx: SourceContext, schedule: Schedule, reading: Reading) {
    let Reading {
        rows,
        snapshot,
        initial,
        queue_log,
    } = reading;
    let setup = || -> Result<_, OutboxError> {
        let list = ctx.outbox.cursors_blocking(ctx.id)?;
        let cursor: (i64, PollCursor) = json_cursor(&ctx, &list, POLL_CURSOR)?;
        let states = match &rows.states {
            Some(cfg) => Some(States::load(cfg.clone(), &ctx, &list)?),
            None => None,
        };
        let table: Option<(i64, TableCursor)> = match &queue_log {
            Some(_) => Some(json_cursor(&ctx, &list, TRACKER_CURSOR)?),
            None => None,
        };
        Ok((cursor, states, table))
    };
    let ((cursor_id, mut cursor), mut states, mut table) = match setup() {
        Ok(s) => s,
        Err(e) => {
            error!(source = %ctx.name, "cannot load cursors: {e}");
            return;
        }
    };
    if cursor.value.is_none() {
        cursor.value = initial;
    }
    let handle = tokio::runtime::Handle::current();
    handle.block_on(async move {
        let now = jiff::Timestamp::now();
        let due = match cursor.last_poll_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
            None => true,
            Some(last) => super::schedule::missed(&schedule, last, now),
        };
        let mut ticks = match super::schedule::Ticks::start(&schedule, ctx.name.as_str(), due).await {
            Ok(t) => t,
            Err(e) => {
                error!(source = %ctx.name, "cannot start the schedule: {e}");
                return;
            }
        };
        info!(source = %ctx.name, "polling on schedule {:?}", schedule.when);
        let mut failures = 0u32;
        let mut retry: Option<Duration> = None;
        loop {
            let retrying = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                t = ticks.next() => { if t.is_none() { break; } false }
                _ = tokio::time::sleep(retry.unwrap_or(Duration::MAX)), if retry.is_some() => true,
            };
            let started = crate::outbox::now_ms();
            let mut sink = Sink {
                ctx: &ctx,
                rows: &rows,
                cursor_id,
                cursor: cursor.clone(),
                states: states.as_mut(),
                snapshot,
                changes: Vec::new(),
                table: queue_log.as_ref().zip(table.as_mut()),
            };
            let result = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = async {
                    poller.poll(&mut sink).await?;
                    sink.finish(started).await
                } => r,
            };
            // What was committed is the cursor now, whether or not the poll completed.
            cursor = sink.cursor;
            match result {
                Ok(()) => {
                    if failures > 0 {
                        info!(source = %ctx.name, "polling works again after {failures} failed attempt(s)");
                    }
                    failures = 0;
                    retry = None;
                }
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_secs(1 << failures.min(8)).min(Duration::from_secs(300));
                    let what = match e {
                        PollError::Outbox(_) => "cannot commit what was read, reading is paused",
                        PollError::Remote(_) => "poll failed",
                    };
                    if failures == 1 || failures.is_power_of_two() {
                        error!(source = %ctx.name, attempt = failures, "{what}: {e}; retrying in {}", humantime::format_duration(wait));
                    } else {
                        debug!(source = %ctx.name, attempt = failures, "{what}: {e}");
                    }
                    retry = Some(wait);
                }
            }
            if retrying {
                debug!(source = %ctx.name, "retried poll done");
            }
        }
        ticks.stop().await;
        debug!(source = %ctx.name, "stopped");
    });
}

/// Where a poll puts what it read.
pub struct Sink<'a> {
    pub ctx: &'a SourceContext,
    rows: &'a RowRules,
    cursor_id: i64,
    cursor: PollCursor,
    states: Option<&'a mut States>,
    snapshot: bool,
    /// A snapshot's changes, applied together at the end.
    changes: Vec<ChangeRead>,
    /// Realtime queue_log rows: how to read them, and the tracker's cursor row.
    table: Option<(&'a TableRules, &'a mut (i64, TableCursor))>,
}

impl Sink<'_> {
    /// The committed cursor value.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.value.as_deref()
    }

    /// Converts one page of rows and commits them with the cursor after them (`None`: the
    /// cursor stays). Returns how many records were new.
    pub async fn page(
        &mut self,
        rows: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
        next: Option<String>,
    ) -> Result<usize, OutboxError> {
        let mut cursors = Vec::new();
        // The tracker as committed, put back if the commit fails.
        let mut committed_table = None;
        let Converted {
            mut records,
            mut parked,
            changes,
            skipped,
        } = match self.table.as_mut() {
            Some((rules, (id, table))) => {
                committed_table = Some(table.clone());
                let (lines, parked) = table.fresh(rows, &rules.zone, rules.keep);
                let mut out = Converted {
                    parked,
                    ..Converted::default()
                };
                let states = self.rows.states.as_ref();
                apply_queue_log(
                    &rules.cfg,
                    states,
                    &mut table.tracker,
                    lines,
                    &mut out.records,
                    &mut out.changes,
                );
                cursors.push((*id, serde_json::to_string(table).expect("serializes")));
                out
            }
            None => convert_objects(self.rows, self.ctx.emits, rows),
        };
        self.ctx
            .metrics
            .skipped
            .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
        if self.snapshot {
            self.changes.extend(changes);
        } else if let Some(states) = self.states.as_deref_mut() {
            cursors.push(states.apply(&self.ctx.name, changes, &mut records, &mut parked));
        }
        let mut after = self.cursor.clone();
        if next.is_some() {
            after.value = next;
        }
        cursors.push((
            self.cursor_id,
            serde_json::to_string(&after).expect("serializes"),
        ));
        let done = commit(
            self.ctx,
            Commit {
                records,
                parked,
                cursors,
            },
        )
        .await;
        if let (Err(_), Some(before), Some((_, (_, table)))) =
            (&done, committed_table, self.table.as_mut())
        {
            *table = before;
        }
        if let Some(states) = self.states.as_deref_mut() {
            states.settle(done.is_ok());
        }
        let done = done?;
        self.cursor = after;
        Ok(done.inserted)
    }

    /// Ends a complete poll: a snapshot's changes (with logouts for agents it lacks) go to
    /// the interval builder, and the poll's start time is kept for the schedule.
    async fn finish(&mut self, started_ms: i64) -> Result<(), PollError> {
        let mut records = Vec::new();
        let mut parked = Vec::new();
        let mut cursors = Vec::new();
        if self.snapshot
            && let Some(states) = self.states.as_deref_mut()
        {
            let mut changes = std::mem::take(&mut self.changes);
            states.snapshot(&mut changes, jiff::Timestamp::now());
            cursors.push(states.apply(&self.ctx.name, changes, &mut records, &mut parked));
        }
        if let Some(states) = self.states.as_deref_mut() {
            let (flushed, _) = states.flush(&self.ctx.name, Duration::from_secs(60));
            if let Some(c) = flushed {
                records.extend(c.records);
                cursors.extend(c.cursors);
            }
        }
        let mut after = self.cursor.clone();
        after.last_poll_ms = Some(started_ms);
        cursors.push((
            self.cursor_id,
            serde_json::to_string(&after).expect("serializes"),
        ));
        let done = commit(
            self.ctx,
            Commit {
                records,
                parked,
                cursors,
            },
        )
        .await;
        if let Some(states) = self.states.as_deref_mut() {
            states.settle(done.is_ok());
        }
        done?;
        self.cursor = after;
        Ok(())
    }
}
