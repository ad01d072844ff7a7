//! `injixo-sync parked list|retry|drop`: the input that could not become records, grouped by
//! reason; mapped again with the configuration of the day once the map is fixed; or given up.
//!
//! A retry takes each row out of the parked input in the same transaction as the records it
//! gives, keyed as the first read would have keyed them: a retry repeated, run twice at once,
//! or killed half-way enqueues each record once, and a record already in the outbox
//! (delivered, or read again since the fix) is not enqueued again. It runs beside a running
//! daemon, which delivers what it enqueued within a second. Agent-state changes go into the
//! source's open states, which a running daemon holds: beside one, only those still out of
//! order are settled (they stay parked with that reason); the others wait for a retry with the
//! daemon stopped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use serde::Serialize;

use crate::config::{Config, SourceConfig};
use crate::normalize::intervals::{Applied, Builder};
use crate::outbox::{
    self, LaneId, Outbox, ParkedFilter, ParkedGroup, ParkedRow, Retried, SourceId, StateLock,
};
use crate::sources::replay::{Remapped, remap};
use crate::sources::rows::{ChangeRead, STATES_CURSOR, interval_record};

// `injixo-sync parked list|retry|drop`.
#[derive(Debug, clap::Subcommand)]
pub enum ParkedAction {
    /// Parked input grouped by source and reason: how many, since when, and the first one.
    List {
        #[command(flatten)]
        filter: ParkedSelection,
        /// Every row with its id and origin, not the groups.
        #[arg(long)]
        rows: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Map parked input again with the current configuration (after fixing the map): rows
    /// that now become records are enqueued once, the others stay parked with their reason
    /// of now. `preview --parked` shows what it would do. Works beside a running daemon.
    Retry {
        #[command(flatten)]
        filter: ParkedSelection,
        /// Row ids as `parked list --rows` shows them.
        #[arg(conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every parked row, or every one --source and --reason select (one of --source,
        /// --reason, --all or ids is needed).
        #[arg(long)]
        all: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Give parked input up on purpose (it is deleted from the state file). A row a poller
    /// reads again (its look-back) is parked again until the map takes it.
    Drop {
        #[command(flatten)]
        filter: ParkedSelection,
        /// Every parked row, or every one --source and --reason select (one of the three is
        /// needed).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Default, Clone, clap::Args)]
pub struct ParkedSelection {
    /// Only this source's (its name in the configuration).
    #[arg(long)]
    pub source: Option<String>,
    /// Only rows whose reason contains this text.
    #[arg(long)]
    pub reason: Option<String>,
    /// --reason is the whole reason, as `parked list` shows it, not a part of it.
    #[arg(long, requires = "reason")]
    pub exact: bool,
}

impl From<ParkedSelection> for ParkedFilter {
    fn from(s: ParkedSelection) -> Self {
        Self {
            source: s.source,
            reason: s.reason,
            exact: s.exact,
        }
    }
}

impl ParkedSelection {
    /// Refuses an empty value, which would select every row, and a source the configuration
    /// does not name (unless `any_source`: `parked drop` gives up rows of a source removed
    /// from the configuration).
    fn check(&self, config: &Config, any_source: bool) -> anyhow::Result<()> {
        if self.source.as_deref() == Some("") || self.reason.as_deref() == Some("") {
            anyhow::bail!(
                "--source and --reason need a value (an empty one would match every row)"
            );
        }
        if let Some(name) = &self.source
            && !any_source
        {
            config.source(name)?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.source.is_none() && self.reason.is_none()
    }
}

/// `injixo-sync parked ...`.
pub fn main(config_path: &Path, action: ParkedAction) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let state = &config.state.path;
    match action {
        ParkedAction::List { filter, rows, json } => {
            filter.check(&config, false)?;
            let filter = filter.into();
            if rows {
                list_rows(state, &filter, json)?;
                return Ok(ExitCode::SUCCESS);
            }
            let groups = outbox::parked_groups(state, &filter)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "parked": groups }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", render_groups(&groups, outbox::now_ms()));
        }
        ParkedAction::Retry {
            filter,
            ids,
            all,
            json,
        } => {
            filter.check(&config, false)?;
            if !all && ids.is_empty() && filter.is_empty() {
                anyhow::bail!(
                    "say which parked rows to retry: --source NAME, --reason TEXT, row ids, or --all"
                );
            }
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            // A second Ctrl-C ends the process at once; what was committed is kept either way.
            let _ = ctrlc_flag(flag);
            let report = retry(&config, &filter.into(), &ids, &stop)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if report.interrupted {
                return Ok(ExitCode::from(130));
            }
            // Another process taking the rows meanwhile did the job too.
            if report
                .sources
                .iter()
                .all(|s| s.replayed == 0 && s.gone == 0)
            {
                return Ok(ExitCode::FAILURE);
            }
        }
        ParkedAction::Drop { filter, all } => {
            filter.check(&config, true)?;
            if !all && filter.is_empty() {
                anyhow::bail!(
                    "say which parked rows to give up: --source NAME, --reason TEXT, or --all"
                );
            }
            let n = outbox::drop_parked(state, &filter.into())?;
            if n == 0 {
                eprintln!(
                    "no parked row matches (see `injixo-sync parked list`): nothing given up"
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("{n} parked row(s) given up");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets `flag` on Ctrl-C (SIGINT), from a thread of its own.
fn ctrlc_flag(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            runtime.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    flag.store(true, Ordering::SeqCst);
                }
                // A second one ends the process.
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            })
        })?;
    Ok(())
}

/// A parked row as `parked list --rows --json` shows it.
#[derive(Serialize)]
struct RowShown<'a> {
    id: i64,
    source: &'a str,
    origin: &'a str,
    reason: &'a str,
    raw: &'a str,
    /// Whether `parked retry` can map it again.
    replayable: bool,
}

impl<'a> RowShown<'a> {
    fn of(r: &'a ParkedRow) -> Self {
        RowShown {
            id: r.id,
            source: &r.source,
            origin: &r.origin,
            reason: &r.reason,
            raw: &r.raw,
            replayable: r.replay.is_some(),
        }
    }
}

/// `parked list --rows`: every selected row, read and written a page at a time, so a large
/// parked table costs no more memory than a page.
fn list_rows(state: &Path, filter: &ParkedFilter, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut after = 0;
    let mut any = false;
    if json {
        write!(out, "{{\"rows\": [")?;
    }
    loop {
        let page = outbox::parked_rows(state, filter, &[], after, CHUNK)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for r in &page {
            if json {
                let sep = if any { "," } else { "" };
                write!(out, "{sep}\n  {}", serde_json::to_string(&RowShown::of(r))?)?;
            } else {
                out.write_all(render_row(r).as_bytes())?;
            }
            any = true;
        }
    }
    match (json, any) {
        (true, _) => writeln!(out, "\n]}}")?,
        (false, false) => writeln!(out, "no parked input")?,
        (false, true) => {}
    }
    Ok(())
}

/// A parked row for a person: its id, where it was read, why, and its input.
fn render_row(r: &ParkedRow) -> String {
    format!(
        "#{} {} {}: {}{}\n    {}\n",
        r.id,
        r.source,
        r.origin,
        r.reason,
        if r.replay.is_some() {
            ""
        } else {
            " (kept to be read, not mapped again)"
        },
        crate::text::truncate(r.raw.trim_end(), 200)
    )
}

/// Parked groups for a person: one line per source and reason, with the first row.
pub fn render_groups(groups: &[ParkedGroup], now_ms: i64) -> String {
    let mut out = String::new();
    if groups.is_empty() {
        out.push_str("no parked input\n");
        return out;
    }
    let total: i64 = groups.iter().map(|g| g.count).sum();
    let _ = writeln!(
        out,
        "PARKED INPUT: {total} row(s) that could not become records, in {} group(s)",
        groups.len()
    );
    for g in groups {
        let _ = writeln!(
            out,
            "\n{}  {} row(s), parked {} to {} ago: {}",
            g.source,
            g.count,
            crate::status::ago(now_ms, g.first_at_ms),
            crate::status::ago(now_ms, g.last_at_ms),
            g.reason
        );
        let _ = writeln!(
            out,
            "    first: #{} {}: {}",
            g.example_id,
            g.example_origin,
            crate::text::truncate(g.example_raw.trim_end(), 200)
        );
    }
    let _ = writeln!(
        out,
        "\nFix the source's map, then `injixo-sync preview --parked --source NAME` shows what these \
         rows become now and `injixo-sync parked retry --source NAME` enqueues them; \
         `injixo-sync parked drop --source NAME --reason TEXT` gives a group up"
    );
    out
}

/// What `parked retry` did.
#[derive(Debug, Default, Serialize)]
pub struct RetryReport {
    pub sources: Vec<SourceRetry>,
    /// Stopped by Ctrl-C: what was committed is kept.
    pub interrupted: bool,
    /// Whether a daemon ran on the state file meanwhile (it delivers what was enqueued).
    pub beside: Option<String>,
    /// Who held the state lock, and so the agents' open states, when agent-state changes
    /// were to be replayed.
    pub states_held_by: Option<String>,
    /// The running daemon was started or reloaded with another version of the configuration
    /// file than the one this retry mapped with.
    pub daemon_config_differs: bool,
    #[serde(skip)]
    config_file: String,
}

/// What `parked retry` did with one source's rows.
#[derive(Debug, Default, Serialize)]
pub struct SourceRetry {
    pub source: String,
    /// Rows taken out of the parked input.
    pub replayed: usize,
    /// Records enqueued for them.
    pub records: usize,
    /// Records already in the outbox (delivered, or read again since): not enqueued again.
    pub already: usize,
    /// Of those, records whose `key` names a record with other content (merged into it).
    pub merged: usize,
    /// Rows `skip_if` now leaves out (taken out, giving nothing).
    pub skipped: usize,
    /// Rows still parked, by their reason of now.
    pub still_parked: BTreeMap<String, usize>,
    /// Rows kept to be read, not mapped again (see `parked list --rows`).
    pub kept: usize,
    /// Agent-state changes that would change the open states a running daemon holds: they
    /// wait for a retry with the daemon stopped.
    pub waiting: usize,
    /// Rows another process replayed or gave up meanwhile.
    pub gone: usize,
    /// The source is no longer in the configuration: its rows were left as they are.
    pub unconfigured: bool,
}

impl RetryReport {
    fn source(&mut self, name: &str) -> &mut SourceRetry {
        if let Some(i) = self.sources.iter().position(|s| s.source == name) {
            return &mut self.sources[i];
        }
        self.sources.push(SourceRetry {
            source: name.to_owned(),
            ..SourceRetry::default()
        });
        self.sources.last_mut().expect("just pushed")
    }

    /// The report for a person.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.sources.is_empty() {
            out.push_str(
                "no parked row matches (see `injixo-sync parked list`): nothing retried\n",
            );
            return out;
        }
        for s in &self.sources {
            if s.unconfigured {
                let _ = writeln!(
                    out,
                    "{}: not in the configuration any more; its parked rows are left as they are \
                     (`parked drop --source {}` gives them up)",
                    s.source, s.source
                );
                continue;
            }
            let _ = writeln!(
                out,
                "{}: {} row(s) replayed: {} record(s) enqueued, {} already in the outbox{}, \
                 {} left out by skip_if",
                s.source,
                s.replayed,
                s.records,
                s.already,
                if s.merged > 0 {
                    format!(
                        " ({} merged: their key names a record with other content)",
                        s.merged
                    )
                } else {
                    String::new()
                },
                s.skipped
            );
            let still: usize = s.still_parked.values().sum();
            if still > 0 {
                let _ = writeln!(out, "    {still} row(s) still parked:");
                for (reason, n) in &s.still_parked {
                    let _ = writeln!(out, "      {n} × {reason}");
                }
            }
            if s.kept > 0 {
                let _ = writeln!(
                    out,
                    "    {} row(s) kept to be read, not mapped again (`parked list --rows` names them)",
                    s.kept
                );
            }
            if s.waiting > 0 {
                let holder = self.states_held_by.as_deref().unwrap_or("another process");
                let what = match holder.starts_with("the running daemon") {
                    true => "stop it, run this retry again, start it",
                    false => "run this retry again once it has finished",
                };
                let _ = writeln!(
                    out,
                    "    {} agent-state change(s) wait: they go into the agents' open states, which \
                     {holder} holds; {what}",
                    s.waiting
                );
            }
            if s.gone > 0 {
                let _ = writeln!(
                    out,
                    "    {} row(s) were replayed or given up by another process meanwhile",
                    s.gone
                );
            }
        }
        if self.interrupted {
            out.push_str(
                "interrupted: what was replayed is kept; run the same command again to go on\n",
            );
        }
        if self.daemon_config_differs {
            let _ = writeln!(
                out,
                "WARNING: the running daemon was started or reloaded with another version of {}: \
                 rows it reads from now on are mapped the old way (and parked again, if the fix \
                 was to the map); reload it: `systemctl reload injixo-sync`",
                self.config_file
            );
        }
        let enqueued: usize = self.sources.iter().map(|s| s.records).sum();
        if enqueued > 0 {
            match &self.beside {
                Some(holder) => {
                    let _ = writeln!(out, "{holder} delivers them");
                }
                None => out.push_str(
                    "no daemon runs on this state file now: they are delivered when it starts\n",
                ),
            }
        }
        out
    }
}

/// Rows read and committed per transaction: bounds memory and what an interruption undoes.
const CHUNK: usize = 500;

/// A configured source with its ids in the outbox and, for agent states, its open states.
struct Target<'a> {
    config: &'a SourceConfig,
    id: SourceId,
    lane: LaneId,
    /// The open states as this retry has left them, and their cursor (with the lock only).
    states: Option<(i64, Builder)>,
}

/// Maps the parked rows `filter` and `ids` select again and commits what they become.
pub fn retry(
    config: &Config,
    filter: &ParkedFilter,
    ids: &[i64],
    stop: &AtomicBool,
) -> anyhow::Result<RetryReport> {
    let path = &config.state.path;
    if let Some(name) = &filter.source {
        config.source(name)?;
    }
    // Nothing to do: no state file is made, no lock taken.
    if outbox::parked_rows(path, filter, ids, 0, 1)?.is_empty() {
        return Ok(RetryReport::default());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (outbox, writer) = Outbox::open(path)?;
    runtime.block_on(outbox.apply_budget(config.state.max_outbox_size, true))?;
    let mut report = RetryReport::default();
    // Taken only for agent-state sources, whose open states a daemon holds: with it, nothing
    // else changes them meanwhile; records need no lock.
    let mut lock = Lock::NotTried;
    let mut targets: HashMap<String, Option<Target<'_>>> = HashMap::new();
    let mut states_sources: Vec<String> = Vec::new();
    let mut after = 0;
    let result = (|| -> anyhow::Result<()> {
        loop {
            if stop.load(Ordering::SeqCst) {
                report.interrupted = true;
                return Ok(());
            }
            let rows = outbox::parked_rows(path, filter, ids, after, CHUNK)?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = last.id;
            let mut by_source: Vec<(String, Vec<ParkedRow>)> = Vec::new();
            for row in rows {
                match by_source.iter_mut().find(|(s, _)| *s == row.source) {
                    Some((_, list)) => list.push(row),
                    None => by_source.push((row.source.clone(), vec![row])),
                }
            }
            for (name, rows) in by_source {
                let target = match targets.get_mut(&name) {
                    Some(t) => t,
                    None => {
                        let t = target(config, &outbox, &runtime, &name, &mut lock)?;
                        targets.entry(name.clone()).or_insert(t)
                    }
                };
                let Some(target) = target else {
                    report.source(&name).unconfigured = true;
                    continue;
                };
                if target.config.kind.rows().states.is_some() {
                    // Replayed below, all at once: an agent's changes apply in time order.
                    if !states_sources.contains(&name) {
                        states_sources.push(name);
                    }
                    continue;
                }
                retry_rows(&outbox, target, rows, report.source(&name))?;
            }
        }
    })();
    let result = result.and_then(|()| {
        for name in &states_sources {
            let target = targets
                .get_mut(name)
                .and_then(Option::as_mut)
                .expect("a configured source");
            retry_states((path, &outbox), target, (filter, ids), report.source(name))?;
        }
        Ok(())
    });
    drop(outbox);
    let _ = writer.join();
    if let Lock::Elsewhere(holder) = &lock {
        report.states_held_by = Some(holder.clone());
    }
    drop(lock);
    report.beside = outbox::lock_holder(path)
        .filter(|h| h.command == "run")
        .map(|h| format!("{h}, running on this state file,"));
    // The daemon maps what it reads from now on with the file as it last loaded it.
    if report.beside.is_some() {
        let now = std::fs::read(&config.file)
            .ok()
            .map(|b| outbox::config_hash(&b));
        let running = outbox::running_config_hash(path).ok().flatten();
        report.daemon_config_differs = matches!((now, running), (Some(a), Some(b)) if a != b);
        report.config_file = config.file.display().to_string();
    }
    result.map(|()| report)
}

/// An agent-state source's selected rows, all in one pass, sorted by time, and committed whole
/// with the open states they leave; or not at all when another process took one of the rows
/// meanwhile, and then done again from the states as stored.
fn retry_states(
    (path, outbox): (&Path, &Outbox),
    target: &mut Target<'_>,
    (filter, ids): (&ParkedFilter, &[i64]),
    report: &mut SourceRetry,
) -> anyhow::Result<()> {
    let name = target.config.name.as_str();
    let selection = ParkedFilter {
        source: Some(name.to_owned()),
        reason: filter.reason.clone(),
        exact: filter.exact,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let rows = outbox::parked_rows(path, &selection, ids, 0, usize::MAX)?;
        if !retry_rows(outbox, target, rows, report)? {
            return Ok(());
        }
        anyhow::ensure!(
            attempt < 5,
            "source {name:?}: its parked rows kept changing under this retry (another \
             `parked retry` or `parked drop`); run it again"
        );
        if target.states.is_some() {
            target.states = Some(open_states(outbox, target.id, true)?);
        }
    }
}

/// The state lock, for replaying agent-state changes into the open states.
enum Lock {
    NotTried,
    /// Held until the retry ends.
    Held {
        _lock: StateLock,
    },
    /// Another process holds it (a daemon, another retry): the open states are its.
    Elsewhere(String),
}

impl Lock {
    /// Whether this process holds the lock, trying to take it the first time.
    fn take(&mut self, path: &Path) -> anyhow::Result<bool> {
        if let Lock::NotTried = self {
            *self = match StateLock::acquire(path, "parked retry") {
                Ok(lock) => Lock::Held { _lock: lock },
                Err(outbox::LockError::Held(holder)) => {
                    Lock::Elsewhere(match holder.command.as_str() {
                        "run" => format!("the running daemon ({holder})"),
                        _ => holder.to_string(),
                    })
                }
                Err(outbox::LockError::Other(e)) => return Err(e.into()),
            };
        }
        Ok(matches!(self, Lock::Held { .. }))
    }
}

/// The source `name` as configured now, with its ids and (with the lock) its open states.
fn target<'a>(
    config: &'a Config,
    outbox: &Outbox,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    lock: &mut Lock,
) -> anyhow::Result<Option<Target<'a>>> {
    let Ok(source) = config.source(name) else {
        return Ok(None);
    };
    let (id, lane) = runtime.block_on(async {
        Ok::<_, outbox::OutboxError>((
            outbox.source_id(&source.name).await?,
            outbox.lane_id(&source.lane).await?,
        ))
    })?;
    let states = match &source.kind.rows().states {
        Some(_) if lock.take(&config.state.path)? => Some(open_states(outbox, id, true)?),
        _ => None,
    };
    Ok(Some(Target {
        config: source,
        id,
        lane,
        states,
    }))
}

/// A source's open states as the outbox holds them, and the id of their cursor; `create`s
/// the cursor if the source has none yet (else its id is 0).
fn open_states(outbox: &Outbox, id: SourceId, create: bool) -> anyhow::Result<(i64, Builder)> {
    let cursors = outbox.cursors_blocking(id)?;
    match cursors.iter().find(|(_, k, _)| k == STATES_CURSOR) {
        Some((cursor, _, value)) => {
            let builder = serde_json::from_str(value)
                .context("the open agent states in the state file are unreadable")?;
            Ok((*cursor, builder))
        }
        None if create => {
            let builder = Builder::default();
            let json = serde_json::to_string(&builder).expect("serializes");
            let cursor = outbox.create_cursor_blocking(id, STATES_CURSOR.into(), json)?;
            Ok((cursor, builder))
        }
        None => Ok((0, Builder::default())),
    }
}

/// Maps one source's rows again and commits what they became in one transaction. `true`
/// when nothing was committed because a row of an agent-state source was taken meanwhile
/// (the open states must then be read again).
fn retry_rows(
    outbox: &Outbox,
    target: &mut Target<'_>,
    rows: Vec<ParkedRow>,
    report: &mut SourceRetry,
) -> anyhow::Result<bool> {
    let mut items: Vec<(i64, Retried)> = Vec::new();
    let mut changes: Vec<(i64, ChangeRead)> = Vec::new();
    let mut kept = 0;
    let mut waiting = 0;
    for row in &rows {
        match remap(target.config, row) {
            Remapped::Records(list) => items.push((row.id, Retried::Records(list))),
            Remapped::Skipped => items.push((row.id, Retried::Skipped)),
            Remapped::Parked(reason) => items.push((row.id, Retried::Parked(reason))),
            Remapped::Kept(_) => kept += 1,
            Remapped::Change(change) => changes.push((row.id, change)),
        }
    }
    let mut cursors = Vec::new();
    if !changes.is_empty() {
        let settings = &target
            .config
            .kind
            .rows()
            .states
            .as_ref()
            .expect("changes come from agent-state sources")
            .settings;
        // An agent's changes are applied in time order, as they happened.
        changes.sort_by_key(|(_, c)| c.change.at);
        let name = &target.config.name;
        match &mut target.states {
            Some((cursor, builder)) => {
                for (id, read) in changes {
                    let mut closed = Vec::new();
                    let outcome = builder.apply(read.change, settings, &mut closed);
                    items.push((
                        id,
                        settle(outcome, || {
                            closed
                                .iter()
                                .map(|i| interval_record(name, i, &read.origin))
                                .collect()
                        }),
                    ));
                }
                cursors.push((*cursor, serde_json::to_string(builder).expect("serializes")));
            }
            None => {
                // A daemon holds the open states: a change is settled here only when it is
                // out of order against what the outbox holds now, which the daemon's states
                // can only have moved beyond.
                let (_, now) = open_states(outbox, target.id, false)?;
                for (id, read) in changes {
                    let mut probe = now.clone();
                    match probe.apply(read.change, settings, &mut Vec::new()) {
                        Err(refused) => items.push((id, Retried::Parked(replayed_late(&refused)))),
                        Ok(_) => waiting += 1,
                    }
                }
            }
        }
    }
    if items.is_empty() && cursors.is_empty() {
        report.kept += kept;
        report.waiting += waiting;
        return Ok(false);
    }
    // Open states moved by these changes are kept only with every one of them.
    let whole = !cursors.is_empty();
    let done = outbox.replay_blocking(target.id, target.lane, items, cursors, whole)?;
    if done.stale {
        return Ok(true);
    }
    report.kept += kept;
    report.waiting += waiting;
    report.replayed += done.replayed;
    report.records += done.committed.inserted;
    report.already += done.committed.duplicates;
    report.merged += done.committed.merged;
    report.gone += done.gone;
    report.skipped += done.skipped;
    for (reason, n) in done.still_parked {
        *report.still_parked.entry(reason).or_insert(0) += n;
    }
    Ok(false)
}

/// What an agent-state change applied on replay becomes.
fn settle(
    outcome: Result<Applied, crate::normalize::intervals::OutOfOrder>,
    records: impl FnOnce() -> Vec<outbox::NewRecord>,
) -> Retried {
    match outcome {
        Ok(Applied::New) => Retried::Records(records()),
        // Applied before: the row is settled, with nothing new.
        Ok(Applied::Repeat) => Retried::Records(Vec::new()),
        Err(refused) => Retried::Parked(replayed_late(&refused)),
    }
}

/// The reason of a change replayed out of order: the rule of any change that comes late.
pub(crate) fn replayed_late(refused: &crate::normalize::intervals::OutOfOrder) -> String {
    format!("{refused} (replayed: a change older than the agent's newest is refused, as when read)")
}
