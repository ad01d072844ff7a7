//! What the polled sources (`sql`, `http`) share: the loop that waits for the schedule, runs
//! one poll at a time and retries a failed one with backoff; and the [`Sink`] a poll hands its
//! pages to, which turns rows into records and commits each page with the cursor after it.
//!
//! A poll commits page by page. The cursor row holds the cursor value (where the next poll
//! starts) and the time of the last complete poll (for missed polls, see `schedule`). A poll
//! that fails half-way has committed its first pages with their cursor; the next attempt reads
//! again from there, and dedupe keys absorb whatever it reads twice.
//!
//! What a page changes in memory (open agent states, the queue_log tracker) is put back when
//! its commit fails. A poll cut off while its commit is in the writer's hands (shutdown) cannot
//! know how that ended; the sink marks itself in doubt before it hands a commit over, and the
//! next poll first reads cursor, states and tracker back from the outbox.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info};

use super::SourceContext;
use super::queue_log::{TRACKER_CURSOR, TableCursor, apply as apply_queue_log};
use super::rows::{ChangeRead, Converted, Keying, States, commit, convert_objects, json_cursor};
use crate::config::{QueueLogConfig, RowRules, Schedule, SecretError};
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
    /// When `value` last changed (Unix ms); `None` before the first page moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_ms: Option<i64>,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The outbox cannot take what was read: reading pauses.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A secret the poll needs (a token, a password) cannot be read: retried, so that a file
    /// the operator fixes is read on the next attempt.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database cannot be reached, or refuses the login: retried.
    #[error(transparent)]
    Connect(#[from] super::sql::ConnectError),
    /// The remote side failed (down, refused, timed out, answered an error): retried.
    #[error("{0}")]
    Remote(String),
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
                // Said in the log, `status` and /readyz until the daemon stops: this source
                // does not poll.
                error!(source = %ctx.name, "{e}: the source does not poll");
                let mut problems = super::Problems::default();
                problems.report("schedule", format!("{e}: the source does not poll"));
                problems.publish_quietly(&ctx).await;
                ctx.shutdown.cancelled().await;
                return;
            }
        };
        info!(source = %ctx.name, "polling on schedule {:?}", schedule.when);
        let mut failures = 0u32;
        // When the next attempt after a failure is due.
        let mut retry: Option<tokio::time::Instant> = None;
        let doubt = std::cell::Cell::new(false);
        let mut problems = super::Problems::default();
        loop {
            let retrying = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                t = ticks.next() => {
                    if t.is_none() {
                        break;
                    }
                    // While polls fail, the back-off decides when the next one is, not the
                    // schedule (a source polled every second is not hammered while down).
                    if retry.is_some() {
                        continue;
                    }
                    false
                }
                _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => true,
            };
            if doubt.get() {
                match reload(&ctx, &mut cursor, states.as_mut(), table.as_mut()).await {
                    Ok(()) => doubt.set(false),
                    Err(e) => {
                        error!(source = %ctx.name, "cannot read the committed cursors back: {e}");
                        retry = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                        continue;
                    }
                }
            }
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
                doubt: &doubt,
                pages_left: None,
                tally: super::rows::Tally::default(),
            };
            let result = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = async {
                    poller.poll(&mut sink).await?;
                    sink.finish(started).await
                } => r,
            };
            // What was committed is the cursor now, whether or not the poll completed.
            sink.tally.say(&ctx, "poll", false);
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
                    if let PollError::Outbox(o) = &e {
                        ctx.metrics.waited_for_room(o);
                    }
                    let wait = match &e {
                        // Space comes back as delivery goes on: look again soon.
                        PollError::Outbox(o) if o.is_out_of_space() => Duration::from_secs(5),
                        _ => Duration::from_secs(1 << failures.min(8)).min(Duration::from_secs(300)),
                    };
                    let what = match e {
                        PollError::Outbox(_) => "cannot commit what was read, reading is paused",
                        PollError::Secret(_) | PollError::Connect(_) | PollError::Remote(_) => {
                            "poll failed"
                        }
                    };
                    let full = matches!(&e, PollError::Outbox(o) if o.is_at_budget());
                    if !full && (failures == 1 || failures.is_power_of_two()) {
                        error!(source = %ctx.name, attempt = failures, "{what}: {e}; retrying in {}", humantime::format_duration(wait));
                    } else {
                        debug!(source = %ctx.name, attempt = failures, "{what}: {e}");
                    }
                    // `status` and /readyz show it (with when it began) until a poll works.
                    let at = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::from_secs(wait.as_secs() as i64))
                        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
                        .unwrap_or_default();
                    problems.report("poll", format!("{what}: {e}; next attempt at {at}"));
                    retry = Some(tokio::time::Instant::now() + wait);
                }
            }
            // Logged above already; published quietly.
            problems.publish_quietly(&ctx).await;
            ctx.metrics.scanned();
            if retrying {
                debug!(source = %ctx.name, "retried poll done");
            }
        }
        ticks.stop().await;
        debug!(source = %ctx.name, "stopped");
    });
}

/// `preview`: the first page from `initial_cursor`, committed to `ctx`'s (scratch) outbox
/// through the same [`Sink`] the daemon uses. Blocks; call it off the runtime's workers.
pub fn first_page<P: Poll>(
    mut poller: P,
    ctx: &SourceContext,
    reading: Reading,
) -> Result<(), PollError> {
    let list = ctx.outbox.cursors_blocking(ctx.id)?;
    let (cursor_id, mut cursor): (i64, PollCursor) = json_cursor(ctx, &list, POLL_CURSOR)?;
    cursor.value = reading.initial;
    let mut states = match &reading.rows.states {
        Some(cfg) => Some(States::load(cfg.clone(), ctx, &list)?),
        None => None,
    };
    let mut table: Option<(i64, TableCursor)> = match &reading.queue_log {
        Some(_) => Some(json_cursor(ctx, &list, TRACKER_CURSOR)?),
        None => None,
    };
    let doubt = std::cell::Cell::new(false);
    let mut sink = Sink {
        ctx,
        rows: &reading.rows,
        cursor_id,
        cursor,
        states: states.as_mut(),
        snapshot: reading.snapshot,
        changes: Vec::new(),
        table: reading.queue_log.as_ref().zip(table.as_mut()),
        doubt: &doubt,
        pages_left: Some(1),
        tally: super::rows::Tally::default(),
    };
    tokio::runtime::Handle::current().block_on(async {
        match poller.poll(&mut sink).await {
            // The page after the first was refused: the preview has what it needs.
            Ok(()) | Err(PollError::Outbox(OutboxError::Closed)) => {}
            Err(e) => return Err(e),
        }
        sink.finish(crate::outbox::now_ms()).await
    })
}

/// Reads the poll cursor, the open states and the tracker back as the outbox holds them.
async fn reload(
    ctx: &SourceContext,
    cursor: &mut PollCursor,
    states: Option<&mut States>,
    table: Option<&mut (i64, TableCursor)>,
) -> Result<(), OutboxError> {
    let rows = ctx.outbox.cursors(ctx.id).await?;
    if let Some((_, stored)) = super::rows::stored(ctx, &rows, POLL_CURSOR) {
        *cursor = stored;
    }
    if let Some(states) = states {
        states.reload(ctx, &rows);
    }
    if let (Some(table), Some(stored)) = (table, super::rows::stored(ctx, &rows, TRACKER_CURSOR)) {
        *table = stored;
    }
    Ok(())
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
    /// Set while a commit is in the writer's hands; still set if the poll was cut off
    /// before it saw the outcome (then the next poll reads its state back first).
    doubt: &'a std::cell::Cell<bool>,
    /// `preview`: how many more pages are taken; the one after ends the poll.
    pages_left: Option<usize>,
    /// What became of the poll's rows, said when it ends.
    tally: super::rows::Tally,
}

impl Sink<'_> {
    /// The committed cursor value.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.value.as_deref()
    }

    /// When the committed cursor value last changed (Unix ms), if a page has moved it.
    pub fn cursor_moved_ms(&self) -> Option<i64> {
        self.cursor.moved_ms
    }

    /// Whether another page is wanted (`preview` takes one).
    pub fn wants_more(&self) -> bool {
        self.pages_left != Some(0)
    }

    /// Converts one page of rows and commits them with the cursor after them (`None`: the
    /// cursor stays). Returns how many records were new.
    pub async fn page(
        &mut self,
        rows: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
        next: Option<String>,
    ) -> Result<usize, OutboxError> {
        match &mut self.pages_left {
            Some(0) => return Err(OutboxError::Closed),
            Some(n) => *n -= 1,
            None => {}
        }
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
                    &mut out.parked,
                );
                cursors.push((*id, serde_json::to_string(table).expect("serializes")));
                out
            }
            None => convert_objects(self.rows, self.ctx.emits, rows, Keying::Content),
        };
        self.ctx
            .metrics
            .skipped
            .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
        if self.snapshot {
            self.changes.extend(changes);
        } else if let Some(states) = self.states.as_deref_mut() {
            cursors.push(
                states
                    .apply(&self.ctx.name, changes, &mut records, &mut parked)
                    .0,
            );
        }
        let mut after = self.cursor.clone();
        // A cursor stored before `moved_ms` was kept counts from its first commit now.
        if (next.is_some() && next != after.value) || after.moved_ms.is_none() {
            after.moved_ms = Some(jiff::Timestamp::now().as_millisecond());
        }
        if next.is_some() {
            after.value = next;
        }
        let done = self
            .commit_with_cursor(
                Commit {
                    records,
                    parked,
                    cursors,
                    skipped,
                    park_once: true,
                    ..Commit::default()
                },
                &after,
            )
            .await;
        if let (Err(_), Some(before), Some((_, (_, table)))) =
            (&done, committed_table, self.table.as_mut())
        {
            *table = before;
        }
        let done = done?;
        let mut tally = super::rows::Tally::of(&done);
        tally.skipped = skipped;
        self.tally.add(tally);
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
            cursors.push(
                states
                    .apply(&self.ctx.name, changes, &mut records, &mut parked)
                    .0,
            );
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
        self.commit_with_cursor(
            Commit {
                records,
                parked,
                cursors,
                ..Commit::default()
            },
            &after,
        )
        .await?;
        self.cursor = after;
        Ok(())
    }

    /// Commits `c` with the poll's cursor `after` behind it. The sink is in doubt while the
    /// commit is in the writer's hands, and stays so if the poll is cut off before the outcome;
    /// the interval builder settles on the outcome either way.
    async fn commit_with_cursor(
        &mut self,
        mut c: Commit,
        after: &PollCursor,
    ) -> Result<crate::outbox::Committed, OutboxError> {
        c.cursors.push((
            self.cursor_id,
            serde_json::to_string(after).expect("serializes"),
        ));
        self.doubt.set(true);
        let done = commit(self.ctx, c).await;
        if let Some(states) = self.states.as_deref_mut() {
            states.settle(done.is_ok());
        }
        self.doubt.set(false);
        done
    }
}

#[cfg(test)]
mod tests {
    //! A page whose commit fails, and one cut off while its commit is in the writer's hands,
    //! against a real outbox: the changes they carried are applied once, none is lost.

    use std::cell::Cell;

    use super::*;
    use crate::config::Config;
    use crate::outbox::Outbox;
    use tokio_util::sync::CancellationToken;

    const CONFIG: &str = r#"
[api]
token_file = "key"
[[source]]
name = "states-db"
type = "sql"
integration_id = 1
emits = "agent_states"
external_system = "ACD"
connection = "postgres://nowhere/db"
every = "1m"
query = "SELECT agent, state, at FROM t"
cursor_column = "at"
initial_cursor = "2024-01-01T00:00:00Z"
[source.map]
agentIdentifier = "agent"
activityIdentifier = "state"
timestamp = "at"
"#;

    struct Rig {
        rt: tokio::runtime::Runtime,
        state: std::path::PathBuf,
        ctx: SourceContext,
        rows: RowRules,
        cursor_id: i64,
        cursor: PollCursor,
        states: Option<States>,
        doubt: Cell<bool>,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("outbox.db");
            let text = format!(
                "{CONFIG}[state]\npath = {:?}\n",
                state.display().to_string()
            );
            let config = Config::parse(&text, &dir.path().join("config.toml")).unwrap();
            let source = config.sources[0].clone();
            let crate::config::SourceKind::Sql(sql) = &source.kind else {
                unreachable!()
            };
            let rows = sql.rows.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (outbox, _writer) = Outbox::open(&state).unwrap();
            let ids = rt.block_on(async {
                (
                    outbox.source_id(&source.name).await.unwrap(),
                    outbox.lane_id(&source.lane).await.unwrap(),
                )
            });
            let ctx = SourceContext::new(&source, ids, outbox.clone(), CancellationToken::new());
            let list = outbox.cursors_blocking(ids.0).unwrap();
            let (cursor_id, cursor) = json_cursor(&ctx, &list, POLL_CURSOR).unwrap();
            let states = Some(States::load(rows.states.clone().unwrap(), &ctx, &list).unwrap());
            Rig {
                rt,
                state,
                ctx,
                rows,
                cursor_id,
                cursor,
                states,
                doubt: Cell::new(false),
                _dir: dir,
            }
        }

        /// One page of `(agent, state, at)` rows, as a poll hands it over; `cut` stops
        /// waiting for its commit after that long.
        fn page(
            &mut self,
            rows: &[(&str, &str, &str)],
            cut: Option<Duration>,
        ) -> Option<Result<usize, OutboxError>> {
            let objects: Vec<_> = rows
                .iter()
                .map(|(a, s, t)| {
                    let row = serde_json::json!({"agent": a, "state": s, "at": t});
                    (format!("at={t}"), row.as_object().unwrap().clone())
                })
                .collect();
            let next = rows.last().map(|r| r.2.to_owned());
            let mut sink = Sink {
                ctx: &self.ctx,
                rows: &self.rows,
                cursor_id: self.cursor_id,
                cursor: self.cursor.clone(),
                states: self.states.as_mut(),
                snapshot: false,
                changes: Vec::new(),
                table: None,
                doubt: &self.doubt,
                pages_left: None,
                tally: crate::sources::rows::Tally::default(),
            };
            let result = self.rt.block_on(async {
                match cut {
                    Some(d) => tokio::time::timeout(d, sink.page(objects, next)).await.ok(),
                    None => Some(sink.page(objects, next).await),
                }
            });
            if result.as_ref().is_some_and(Result::is_ok) {
                self.cursor = sink.cursor;
            }
            result
        }

        /// What the poll loop does before its next poll.
        fn next_poll(&mut self) {
            if self.doubt.get() {
                self.rt
                    .block_on(reload(
                        &self.ctx,
                        &mut self.cursor,
                        self.states.as_mut(),
                        None,
                    ))
                    .unwrap();
                self.doubt.set(false);
            }
        }

        /// Waits until every job handed to the writer so far is done.
        fn writer_done(&self) {
            self.rt
                .block_on(self.ctx.outbox.cursors(self.ctx.id))
                .unwrap();
        }

        fn db(&self) -> rusqlite::Connection {
            let c = rusqlite::Connection::open(&self.state).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            crate::outbox::register_functions(&c).unwrap();
            c
        }

        fn intervals(&self) -> Vec<String> {
            let mut all: Vec<String> = self
                .db()
                .prepare("SELECT payload(payload) FROM records ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|p| {
                    let v: serde_json::Value = serde_json::from_str(&p.unwrap()).unwrap();
                    format!("{} {}", v["activityIdentifier"], v["startTime"])
                })
                .collect();
            all.sort();
            all
        }
    }

    const FIRST: &[(&str, &str, &str)] = &[
        ("ann", "ready", "2024-05-01T08:00:00Z"),
        ("ann", "call", "2024-05-01T08:01:00Z"),
    ];
    const THEN: &[(&str, &str, &str)] = &[("ann", "wrap", "2024-05-01T08:05:00Z")];
    const EXPECTED: [&str; 2] = [
        "\"call\" \"2024-05-01T08:01:00Z\"",
        "\"ready\" \"2024-05-01T08:00:00Z\"",
    ];

    fn fail_inserts(c: &rusqlite::Connection) {
        c.execute_batch(
            "CREATE TRIGGER injected BEFORE INSERT ON records \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    }

    #[test]
    fn a_page_whose_commit_fails_is_applied_again_from_what_is_on_disk() {
        let mut rig = Rig::new();
        rig.page(FIRST, None).unwrap().unwrap();
        let db = rig.db();
        fail_inserts(&db);
        let err = rig.page(THEN, None).unwrap().unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert!(!rig.doubt.get(), "a failure seen is no doubt");
        db.execute_batch("DROP TRIGGER injected").unwrap();
        rig.next_poll();
        // The poll reads from its committed cursor again: the first rows are repeats.
        rig.page(FIRST, None).unwrap().unwrap();
        rig.page(THEN, None).unwrap().unwrap();
        assert_eq!(rig.intervals(), EXPECTED);
    }

    #[test]
    fn a_page_cut_off_while_its_commit_fails_is_read_back_before_the_next_poll() {
        let mut rig = Rig::new();
        // Another writer holds the file: the page's commit waits in the writer's hands.
        let blocker = rig.db();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(
            rig.page(FIRST, Some(Duration::from_millis(200))).is_none(),
            "cut off"
        );
        assert!(rig.doubt.get());
        // When the writer gets its turn, the commit fails.
        fail_inserts(&blocker);
        blocker.execute_batch("COMMIT").unwrap();
        rig.writer_done();
        blocker.execute_batch("DROP TRIGGER injected").unwrap();
        rig.next_poll();
        rig.page(FIRST, None).unwrap().unwrap();
        rig.page(THEN, None).unwrap().unwrap();
        assert_eq!(
            rig.intervals(),
            EXPECTED,
            "the interval of the failed commit is not lost"
        );
    }

    #[test]
    fn a_page_cut_off_while_its_commit_succeeds_is_applied_once() {
        let mut rig = Rig::new();
        let blocker = rig.db();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(
            rig.page(FIRST, Some(Duration::from_millis(200))).is_none(),
            "cut off"
        );
        blocker.execute_batch("COMMIT").unwrap();
        rig.writer_done();
        rig.next_poll();
        assert_eq!(rig.cursor.value.as_deref(), Some("2024-05-01T08:01:00Z"));
        rig.page(FIRST, None).unwrap().unwrap();
        rig.page(THEN, None).unwrap().unwrap();
        assert_eq!(rig.intervals(), EXPECTED);
        let parked: i64 = rig
            .db()
            .query_row("SELECT count(*) FROM parked", [], |r| r.get(0))
            .unwrap();
        assert_eq!(parked, 0, "repeats are not parked");
    }
}
