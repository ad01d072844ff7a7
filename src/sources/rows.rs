//! What every source shares once it has a row: turning it into records or a state change
//! ([`RowRules::convert`]), keeping agents' open states ([`States`]), and committing.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tracing::warn;

use super::SourceContext;
use crate::config::{RowRules, StatesConfig};
use crate::normalize::intervals::{Applied, Builder, Change, Interval};
use crate::normalize::map::Row;
use crate::normalize::schema;
use crate::outbox::{
    Commit, NewRecord, OutboxError, Parked, Place, Replay, dedupe_key, natural_key,
};
use crate::types::{Emits, SourceName};

/// What a row became.
pub enum RowOut {
    /// Records in the API's shape, with the row's natural key (`key`) if it has one.
    Records(Vec<String>, Option<String>),
    /// An agent's state change (`emits = "agent_states"`).
    Change(Change),
}

/// Nothing (`skip_if`), something, or why the row cannot become anything.
pub type RowOutcome = Result<Option<RowOut>, String>;

impl RowRules {
    /// What a row becomes. `plain` converts a row that is already in the API's shape (a
    /// JSON object without a map).
    pub fn convert(
        &self,
        row: &dyn Row,
        plain: impl FnOnce() -> Result<String, String>,
    ) -> RowOutcome {
        if self.skip_if.skips(row).map_err(|e| e.to_string())? {
            return Ok(None);
        }
        if let (Some(states), Some(map)) = (&self.states, &self.map) {
            let (agent, state, at) = map.change(row).map_err(|e| e.to_string())?;
            return Ok(Some(RowOut::Change(Change {
                agent: states.agent(&agent),
                activity: states.activity(&state),
                at,
            })));
        }
        let key = match &self.key {
            Some(k) => Some(k.render(row).map_err(|e| e.to_string())?),
            None => None,
        };
        let records = match &self.map {
            Some(map) => map.apply_all(row).map_err(|e| e.to_string())?,
            None => vec![plain()?],
        };
        Ok(Some(RowOut::Records(records, key)))
    }

    /// Every column the map, `key` and `skip_if` read.
    pub fn columns(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.map.iter().flat_map(|m| m.columns()).collect();
        all.extend(self.key.iter().flat_map(|k| k.columns()));
        all.extend(self.skip_if.columns());
        all
    }

    /// The map may give many records per row (`expand`): a file's positions then leave room
    /// for them in its dedupe keys.
    pub fn expands(&self) -> bool {
        self.map.as_ref().is_some_and(|m| m.expands())
    }

    /// Rows are taken as they are: no map, key or skip rule reads their fields.
    pub fn is_plain(&self) -> bool {
        self.map.is_none() && self.key.is_none() && self.skip_if.is_empty()
    }
}

/// A JSON object as a row: strings as they are, other values as JSON text, `null` as absent.
pub struct JsonRow<'a>(pub &'a serde_json::Map<String, serde_json::Value>);

impl Row for JsonRow<'_> {
    fn get(&self, column: &str) -> Option<Cow<'_, str>> {
        match self.0.get(column)? {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
            serde_json::Value::Null => None,
            other => Some(Cow::Owned(other.to_string())),
        }
    }
}

/// A state change read, with where it came from (for the interval it closes, or for parking).
#[derive(Debug)]
pub struct ChangeRead {
    pub change: Change,
    pub origin: String,
    pub raw: String,
    /// What mapping it again needs, should it be parked (out of order).
    pub replay: Option<Replay>,
}

/// The cursor key under which a source's open agent states are stored.
pub const STATES_CURSOR: &str = "agent-states";

/// A source's agents' open states, kept in the outbox in the cursor row [`STATES_CURSOR`]
/// and committed with the intervals they close.
///
/// [`apply`](Self::apply) and [`flush`](Self::flush) change the states ahead of the commit
/// that makes them durable; the caller then calls [`settle`](Self::settle) with the commit's
/// outcome, and a failed commit puts the states back as they are on disk, so the input read
/// again is applied once.
pub struct States {
    pub cfg: StatesConfig,
    id: i64,
    builder: Builder,
    /// The states as last committed, while changes since are not yet durable.
    durable: Option<Builder>,
}

impl States {
    /// Loads the open states from the source's cursor rows (creating the row at first start).
    pub fn load(
        cfg: StatesConfig,
        ctx: &SourceContext,
        rows: &[(i64, String, String)],
    ) -> Result<Self, OutboxError> {
        let (id, builder) = json_cursor(ctx, rows, STATES_CURSOR)?;
        Ok(Self {
            cfg,
            id,
            builder,
            durable: None,
        })
    }

    /// Takes the open states back as the outbox holds them (after a commit whose outcome was
    /// not seen).
    pub fn reload(&mut self, ctx: &SourceContext, rows: &[(i64, String, String)]) {
        if let Some((_, builder)) = stored(ctx, rows, STATES_CURSOR) {
            self.builder = builder;
        }
        self.durable = None;
    }

    /// Ends the changes made since the last commit: kept if `committed`, else undone.
    pub fn settle(&mut self, committed: bool) {
        match self.durable.take() {
            Some(before) if !committed => self.builder = before,
            _ => {}
        }
    }

    /// Keeps the committed states before the first change after a commit.
    fn stage(&mut self) {
        if self.durable.is_none() {
            self.durable = Some(self.builder.clone());
        }
    }

    /// Runs changes through the interval builder: closed intervals become records,
    /// out-of-order changes are parked, changes read again change nothing. Returns the cursor
    /// to commit with them, and how many were repeats.
    pub fn apply(
        &mut self,
        source: &SourceName,
        changes: Vec<ChangeRead>,
        records: &mut Vec<NewRecord>,
        parked: &mut Vec<Parked>,
    ) -> ((i64, String), usize) {
        self.stage();
        let mut closed = Vec::new();
        let mut repeats = 0;
        for read in changes {
            let before = closed.len();
            match self
                .builder
                .apply(read.change, &self.cfg.settings, &mut closed)
            {
                Ok(Applied::Repeat) => repeats += 1,
                Ok(Applied::New) => records.extend(
                    closed[before..]
                        .iter()
                        .map(|i| interval_record(source, i, &read.origin)),
                ),
                Err(refused) => parked.push(Parked {
                    origin: read.origin,
                    reason: refused.to_string(),
                    raw: read.raw,
                    replay: read.replay,
                }),
            }
        }
        (self.cursor(), repeats)
    }

    /// A complete snapshot of current states as changes: each agent in it at its state, and
    /// a logout at `now` for every agent with an open state who is missing from it.
    pub fn snapshot(&self, changes: &mut Vec<ChangeRead>, now: jiff::Timestamp) {
        let present: HashSet<&str> = changes.iter().map(|c| c.change.agent.as_str()).collect();
        let gone: Vec<ChangeRead> = self
            .builder
            .agents()
            .filter(|a| !present.contains(a))
            .map(|agent| ChangeRead {
                change: Change {
                    agent: agent.to_owned(),
                    activity: None,
                    at: now,
                },
                origin: "snapshot".into(),
                raw: format!("{agent} missing from a complete snapshot: logged out"),
                replay: None,
            })
            .collect();
        changes.extend(gone);
    }

    /// Emits and caps open states as time passes (`open_interval_flush`, `max_interval`):
    /// the commit to make, if any, and how long until this is due again (at most `idle`).
    pub fn flush(&mut self, source: &SourceName, idle: Duration) -> (Option<Commit>, Duration) {
        let now = jiff::Timestamp::now();
        let mut closed = Vec::new();
        // Most ticks have nothing due: only a flush that emits needs the states kept to undo.
        let changed = self.builder.flush_due(now, &self.cfg.settings) && {
            self.stage();
            self.builder.flush(now, &self.cfg.settings, &mut closed)
        };
        let commit = changed.then(|| Commit {
            records: closed
                .iter()
                .map(|i| interval_record(source, i, "open state"))
                .collect(),
            cursors: vec![self.cursor()],
            ..Commit::default()
        });
        let wait = self
            .builder
            .next_flush(now, &self.cfg.settings)
            .and_then(|d| Duration::try_from(d).ok())
            .map_or(idle, |d| d.clamp(Duration::from_millis(100), idle));
        (commit, wait)
    }

    fn cursor(&self) -> (i64, String) {
        (
            self.id,
            serde_json::to_string(&self.builder).expect("serializes"),
        )
    }
}

/// Commits and counts, from a source's own thread.
pub fn commit_blocking(ctx: &SourceContext, c: Commit) -> Result<(), OutboxError> {
    submit(ctx, c).wait(ctx).map(|_| ())
}

/// Hands a commit to the writer without waiting (see [`crate::outbox::Outbox::submit`]).
pub fn submit(ctx: &SourceContext, c: Commit) -> Submitted {
    Submitted {
        commit: ctx.outbox.submit(ctx.id, ctx.lane, c),
    }
}

/// A source's commit in the writer's hands; counted once it is durable.
#[must_use = "a submitted commit's outcome must be waited for"]
pub struct Submitted {
    commit: crate::outbox::Submitted,
}

impl Submitted {
    /// Waits for the commit, from a source's own thread, and counts it.
    pub fn wait(self, ctx: &SourceContext) -> Result<Tally, OutboxError> {
        let done = self.commit.wait_blocking()?;
        ctx.metrics.committed(&done);
        Ok(Tally::of(&done))
    }
}

/// Commits and counts, from async code; returns once the commit is durable.
pub async fn commit(
    ctx: &SourceContext,
    c: Commit,
) -> Result<crate::outbox::Committed, OutboxError> {
    let done = ctx.outbox.commit(ctx.id, ctx.lane, c).await?;
    ctx.metrics.committed(&done);
    Ok(done)
}

/// What became of the rows of one read (a file read to its end, a poll), added up over its
/// commits and said in one log line, so that no merge goes unsaid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub records: u64,
    pub parked: u64,
    pub merged: u64,
    /// Rows read again whose record was kept already (overlaps, look-backs).
    pub repeats: u64,
    pub skipped: u64,
}

impl Tally {
    pub fn of(done: &crate::outbox::Committed) -> Self {
        Self {
            records: done.inserted as u64,
            parked: done.parked as u64,
            merged: done.merged as u64,
            repeats: (done.duplicates - done.merged) as u64,
            skipped: 0,
        }
    }

    pub fn add(&mut self, other: Tally) {
        self.records += other.records;
        self.parked += other.parked;
        self.merged += other.merged;
        self.repeats += other.repeats;
        self.skipped += other.skipped;
    }

    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }

    /// Logs what became of the rows of `what` (a file, a poll) and starts again from zero:
    /// a warning when rows were parked or merged, else an info line when `always`.
    pub fn say(&mut self, ctx: &SourceContext, what: &str, always: bool) {
        let t = std::mem::take(self);
        let summary = format!(
            "{} record(s), {} parked, {} merged, {} read before, {} skipped",
            t.records, t.parked, t.merged, t.repeats, t.skipped
        );
        if t.merged > 0 {
            let key = ctx.key.as_deref().unwrap_or("(none)");
            warn!(
                source = %ctx.name,
                "{what}: {summary}; {} row(s) merged by key {key}: they had the key of a record \
                 already kept but other content, and were dropped in its favour; if these are \
                 different calls, the key is too narrow (add the column that tells them apart)",
                t.merged
            );
        } else if t.parked > 0 {
            warn!(source = %ctx.name, "{what}: {summary}; `status` lists the parked rows with their reasons");
        } else if always {
            tracing::info!(source = %ctx.name, "{what}: {summary}");
        }
    }
}

/// A source's JSON state kept in a cursor row (`key`), created empty at the first start.
pub fn json_cursor<T>(
    ctx: &SourceContext,
    rows: &[(i64, String, String)],
    key: &str,
) -> Result<(i64, T), OutboxError>
where
    T: Default + Serialize + serde::de::DeserializeOwned,
{
    match stored(ctx, rows, key) {
        Some(found) => Ok(found),
        None => {
            let value = T::default();
            let json = serde_json::to_string(&value).expect("serializes");
            let id = ctx
                .outbox
                .create_cursor_blocking(ctx.id, key.into(), json)?;
            Ok((id, value))
        }
    }
}

/// A source's JSON state as its cursor row `key` holds it, if the row exists.
pub fn stored<T>(ctx: &SourceContext, rows: &[(i64, String, String)], key: &str) -> Option<(i64, T)>
where
    T: Default + serde::de::DeserializeOwned,
{
    let (id, _, value) = rows.iter().find(|(_, k, _)| k == key)?;
    Some((
        *id,
        serde_json::from_str(value).unwrap_or_else(|e| {
            warn!(source = %ctx.name, "{key} state unreadable, starting without: {e}");
            T::default()
        }),
    ))
}

/// An interval as an agent-status record, keyed by agent and start so that the same interval
/// built again is the same record.
pub fn interval_record(source: &SourceName, i: &Interval, origin: &str) -> NewRecord {
    use crate::normalize::time::to_api;
    if i.capped {
        warn!(
            source = %source,
            agent = %i.agent,
            "state {:?} since {} was never closed; cut at max_interval ({})",
            i.activity, i.start, i.end
        );
    }
    let payload = serde_json::json!({
        "agentIdentifier": i.agent,
        "activityIdentifier": i.activity,
        "startTime": to_api(i.start),
        "endTime": to_api(i.end),
    });
    NewRecord {
        dkey: natural_key(&format!("{}\u{1f}{}", i.agent, i.start.as_millisecond()), 0),
        payload: payload.to_string(),
        origin: origin.to_owned(),
        row_hash: None,
    }
}

/// A hash of an input row as read (a line, a JSON object), stored with a record keyed by the
/// source's `key`: the first 64 bits of its SHA-256, stable across builds and toolchains (it
/// stays in the state file). `preview` tells merges from repeats with it too.
pub fn row_hash(raw: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(raw.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Where a row was read, as its records' dedupe keys need it: [`Place`], borrowed.
#[derive(Clone, Copy, Debug)]
pub enum RowPlace<'a> {
    /// A row of a file: the file's cursor and the row's byte offset. A row without a `key`
    /// is its place: read again, it meets the record it gave.
    File { cursor: i64, offset: u64 },
    /// An element of a push, named by the push's identity (its `Idempotency-Key`, or a hash
    /// of its body): every element of a push is a record of its own, even when two are alike
    /// (three abandoned calls in one second are three contacts), and the same push sent
    /// again gives the same keys.
    Push { push: &'a str, index: usize },
    /// A database row or an API record: a row read again (an overlapping poll) is the same
    /// record by its content.
    Content,
}

impl RowPlace<'_> {
    pub fn of(place: &Place) -> RowPlace<'_> {
        match place {
            Place::File { cursor, offset } => RowPlace::File {
                cursor: *cursor,
                offset: *offset,
            },
            Place::Push { push, index } => RowPlace::Push {
                push,
                index: *index,
            },
            Place::Content => RowPlace::Content,
        }
    }

    pub fn owned(self) -> Place {
        match self {
            RowPlace::File { cursor, offset } => Place::File { cursor, offset },
            RowPlace::Push { push, index } => Place::Push {
                push: push.to_owned(),
                index,
            },
            RowPlace::Content => Place::Content,
        }
    }
}

/// The records a row gave (`list`, in the API's shape), with their dedupe keys: by the row's
/// natural `key` if it has one, else by its place. `expands`: the map may give many records
/// per row, so a file's positions leave room for them. `raw` is the row as read, hashed for
/// a keyed record (see [`row_hash`]).
pub fn row_records(
    list: Vec<String>,
    key: Option<&str>,
    place: RowPlace<'_>,
    expands: bool,
    origin: &str,
    raw: impl FnOnce() -> String,
) -> impl Iterator<Item = NewRecord> {
    let hash = key.map(|_| row_hash(&raw()));
    let key = key.map(str::to_owned);
    let origin = origin.to_owned();
    list.into_iter().enumerate().map(move |(piece, payload)| {
        let n = piece as u32;
        let dkey = match (&key, place) {
            (Some(k), _) => natural_key(k, n),
            (None, RowPlace::File { cursor, offset }) if expands => {
                dedupe_key(cursor, (offset << 16) | piece as u64)
            }
            (None, RowPlace::File { cursor, offset }) => dedupe_key(cursor, offset),
            (None, RowPlace::Push { push, index }) => {
                natural_key(&format!("\u{1d}{push}\u{1f}{index}"), n)
            }
            (None, RowPlace::Content) => natural_key(&format!("\u{1e}{payload}"), n),
        };
        NewRecord {
            dkey,
            payload,
            origin: origin.clone(),
            row_hash: hash,
        }
    })
}

/// What a list of JSON objects became.
#[derive(Default)]
pub struct Converted {
    pub records: Vec<NewRecord>,
    pub parked: Vec<Parked>,
    pub changes: Vec<ChangeRead>,
    pub skipped: u64,
}

/// How records without a natural `key` are told apart: by their content, or by their place
/// in a push named by its identity (see [`RowPlace`]).
#[derive(Clone, Copy, Debug)]
pub enum Keying<'a> {
    Content,
    Push(&'a str),
}

/// Converts JSON objects (database rows, API records, pushes), each with its origin. Objects
/// without a map must already be records of the API's shape.
pub fn convert_objects(
    rules: &RowRules,
    emits: Emits,
    rows: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
    keying: Keying<'_>,
) -> Converted {
    let mut out = Converted::default();
    for (index, (origin, obj)) in rows.into_iter().enumerate() {
        let place = match keying {
            Keying::Content => RowPlace::Content,
            Keying::Push(push) => RowPlace::Push { push, index },
        };
        let text = || serde_json::Value::Object(obj.clone()).to_string();
        // What a change or a parked row keeps: its text (the first 4 KiB) and its replay.
        let kept = || {
            let text = text();
            let raw = crate::text::truncate(&text, 4096);
            (Some(Replay::json(place.owned(), &text, &raw)), raw)
        };
        match convert_object(rules, emits, &obj) {
            Ok(None) => out.skipped += 1,
            Ok(Some(RowOut::Records(list, key))) => out.records.extend(row_records(
                list,
                key.as_deref(),
                place,
                false,
                &origin,
                text,
            )),
            Ok(Some(RowOut::Change(change))) => {
                let (replay, raw) = kept();
                out.changes.push(ChangeRead {
                    change,
                    origin,
                    replay,
                    raw,
                })
            }
            Err(reason) => {
                let (replay, raw) = kept();
                out.parked.push(Parked {
                    origin,
                    reason,
                    replay,
                    raw,
                })
            }
        }
    }
    out
}

/// What a JSON object (a database row, an API record, an element of a push) becomes.
pub fn convert_object(
    rules: &RowRules,
    emits: Emits,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> RowOutcome {
    rules.convert(&JsonRow(obj), || {
        schema::normalize_json(emits, &serde_json::Value::Object(obj.clone()).to_string())
    })
}
