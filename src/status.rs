//! `injixo-sync status`: what the outbox holds, per lane and per source, in words.

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::outbox::{self, DeadLetter, Report, Selection};

// `injixo-sync dead ...` (a plain comment: clap would take a doc comment for help text).
#[derive(Debug, clap::Subcommand)]
pub enum DeadAction {
    /// Show dead letters with the API's answer for each.
    List {
        /// Only this source's.
        #[arg(long)]
        source: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make dead letters pending again (after fixing the cause in injixo or the data).
    Retry {
        /// Record ids as shown by `dead list`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Give dead letters up for good.
    Drop {
        /// Record ids as shown by `dead list`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

// `injixo-sync queues confirm|drop`.
#[derive(Debug, clap::Subcommand)]
pub enum QueueAction {
    /// Accept the new name: its held records are sent (injixo makes a queue of it).
    Confirm(QueueChoice),
    /// Give the held records of that name up.
    Drop(QueueChoice),
}

#[derive(Debug, clap::Args)]
pub struct QueueChoice {
    /// The configuration id (meta.integrationConfigurationId).
    #[arg(long)]
    pub integration_id: i64,
    /// The queue identifier.
    #[arg(long)]
    pub identifier: String,
    /// The new name, as `queues` shows it.
    #[arg(long)]
    pub name: String,
}

pub fn main(config_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let report = outbox::inspect(&config.state.path, 10)
        .with_context(|| "cannot read the outbox".to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let now = crate::outbox::now_ms();
        let silent: Vec<(String, String)> = config
            .sources
            .iter()
            .filter_map(|src| {
                let policy = src.stale.as_ref()?;
                let last = report
                    .sources
                    .iter()
                    .find(|r| r.name == src.name.as_str())?
                    .last_activity_ms?;
                let verdict = policy.verdict(last, jiff::Timestamp::from_millisecond(now).ok()?)?;
                Some((src.name.as_str().to_owned(), verdict))
            })
            .collect();
        let schedules = config.schedules();
        print!(
            "{}",
            render(&report, &config.state.path, now, &silent, &schedules)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dead list|retry|drop`.
/// `injixo-sync agents`.
pub fn agents(config_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let agents = outbox::agents_sent(&config.state.path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
    } else if agents.is_empty() {
        println!("no agent statuses sent yet");
    } else {
        println!("configuration id  external system  agent  first sent  last sent");
        for a in &agents {
            println!(
                "{}  {}  {}  {}  {}",
                a.integration_id,
                a.external_system,
                a.agent,
                when(a.first_sent_ms),
                when(a.last_sent_ms)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `injixo-sync queues [confirm|drop]`.
pub fn queues(
    config_path: &Path,
    action: Option<QueueAction>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let state = &config.state.path;
    match action {
        Some(QueueAction::Confirm(q)) => {
            let n = outbox::confirm_queue(state, q.integration_id, &q.identifier, &q.name, true)?;
            println!(
                "{:?} accepted as a name of queue {:?}; {n} held record(s) pending again",
                q.name, q.identifier
            );
        }
        Some(QueueAction::Drop(q)) => {
            let n = outbox::confirm_queue(state, q.integration_id, &q.identifier, &q.name, false)?;
            if n == 0 {
                eprintln!(
                    "nothing is held for configuration id {} under identifier {:?} and the name \
                     {:?} (see `injixo-sync queues`): nothing given up",
                    q.integration_id, q.identifier, q.name
                );
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{n} held record(s) of {:?} / {:?} given up",
                q.identifier, q.name
            );
        }
        None => {
            let (known, held) = outbox::queues(state)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"queues": known, "held": held})
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            if known.is_empty() {
                println!("no contact events sent yet");
            }
            for q in &known {
                println!(
                    "{}  {}  {:?}  {}  since {}",
                    q.integration_id,
                    q.identifier,
                    q.name,
                    q.channel,
                    when(q.first_sent_ms)
                );
            }
            for h in &held {
                println!(
                    "HELD {} record(s): configuration id {}, identifier {:?} under the new name \
                     {:?} (injixo knows it as {}); accept with `injixo-sync queues confirm \
                     --integration-id={} {} {}`, or fix the map and `queues drop` them",
                    h.records,
                    h.integration_id,
                    h.identifier,
                    h.new_name,
                    h.known_names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    h.integration_id,
                    crate::text::shell_option("identifier", &h.identifier),
                    crate::text::shell_option("name", &h.new_name)
                );
            }
            if !held.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `injixo-sync resend`.
pub fn resend(
    config_path: &Path,
    since: &str,
    agent: Option<String>,
    source: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    if let Some(s) = &source {
        config.source(s)?;
    }
    let since =
        crate::normalize::time::parse_since(since).map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let what = outbox::Resend {
        since: crate::normalize::time::to_api(since),
        agent,
        source,
    };
    let n = outbox::resend(&config.state.path, &what)?;
    println!(
        "{n} kept record(s) from {} on pending again; a running daemon sends them within a \
         second (records older than keep_sent = {} are no longer kept)",
        what.since,
        humantime::format_duration(config.state.keep_sent)
    );
    Ok(ExitCode::SUCCESS)
}

/// A time to the second, RFC 3339 in UTC.
pub(crate) fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default()
}

pub fn dead(config_path: &Path, action: DeadAction) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let state = &config.state.path;
    let selection = |ids: Vec<i64>, all: bool| {
        if all {
            Selection::All
        } else {
            Selection::Ids(ids)
        }
    };
    match action {
        DeadAction::List { source, json } => {
            let dead = outbox::dead_letters(state, source.as_deref(), usize::MAX)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
            } else if dead.is_empty() {
                println!("no dead letters");
            } else {
                for d in &dead {
                    print!("{}", render_dead(d));
                }
            }
        }
        DeadAction::Retry { ids, all } => {
            let done = outbox::retry_dead(state, &selection(ids, all))?;
            println!(
                "{} record(s) pending again; a running daemon sends them within a second",
                done.count
            );
            let found = not_found(&done);
            if !done.damaged.is_empty() {
                let ids: Vec<String> = done.damaged.iter().map(|id| format!("#{id}")).collect();
                eprintln!(
                    "not retried: {} cannot be decoded (damaged in the state file {}), and \
                     sending {} would send garbage. `injixo-sync dead list` says why; \
                     `injixo-sync dead drop ID` gives {} up",
                    ids.join(", "),
                    state.display(),
                    if ids.len() == 1 { "it" } else { "them" },
                    if ids.len() == 1 { "it" } else { "them" },
                );
                return Ok(ExitCode::FAILURE);
            }
            return Ok(found);
        }
        DeadAction::Drop { ids, all } => {
            let done = outbox::drop_dead(state, &selection(ids, all))?;
            println!("{} record(s) given up", done.count);
            return Ok(not_found(&done));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Names the ids asked for that are not dead letters; exit status 1 if there are any.
fn not_found(done: &outbox::Changed) -> ExitCode {
    if done.not_found.is_empty() {
        return ExitCode::SUCCESS;
    }
    let ids: Vec<String> = done.not_found.iter().map(|id| format!("#{id}")).collect();
    eprintln!(
        "no dead letter {} (see `injixo-sync dead list`): nothing done with {}",
        ids.join(", "),
        if ids.len() == 1 { "it" } else { "them" }
    );
    ExitCode::FAILURE
}

fn render_dead(d: &DeadLetter) -> String {
    if d.damaged {
        return format!(
            "#{} {} {} → DAMAGED: {}
    (its stored bytes are kept in the state file as they are; it cannot be retried, only \
dropped: `injixo-sync dead drop {}`)
",
            d.record_id, d.source, d.origin, d.answer, d.record_id
        );
    }
    format!(
        "#{} {} {} → HTTP {}: {}
    {}
",
        d.record_id, d.source, d.origin, d.status, d.answer, d.payload
    )
}

/// A cursor in its source's own terms: a file's place, a poller's last and next poll and
/// where it reads from, the agents in a state.
pub(crate) fn cursor_line(
    c: &outbox::CursorReport,
    schedule: Option<&crate::config::Schedule>,
    now_ms: i64,
) -> String {
    let v = &c.value;
    match c.key.as_str() {
        "poll" => {
            let last = v.get("last_poll_ms").and_then(|l| l.as_i64());
            let mut line = match last {
                Some(t) => format!("poll: last complete {} ago", ago(now_ms, t)),
                None => "poll: none complete yet".to_owned(),
            };
            let now = jiff::Timestamp::from_millisecond(now_ms).ok();
            let last_ts = last.and_then(|t| jiff::Timestamp::from_millisecond(t).ok());
            if let (Some(schedule), Some(now)) = (schedule, now)
                && let Some(next) = crate::sources::schedule::next_poll(schedule, last_ts, now)
            {
                let wait = next.as_millisecond() - now_ms;
                if wait <= 0 {
                    line.push_str(", next due now");
                } else {
                    let _ = write!(line, ", next in {}", ago(wait, 0));
                }
            }
            match v.get("value").and_then(|c| c.as_str()) {
                Some(cursor) => {
                    let _ = write!(line, "; reads on from {cursor}");
                }
                None => line.push_str("; reads from the start (initial_cursor)"),
            }
            line
        }
        "agent-states" => {
            let open = v
                .get("open")
                .and_then(|o| o.as_object())
                .map_or(0, |o| o.len());
            format!("agent states: {open} agent(s) in a state now")
        }
        "queue-log" => "queue_log: calls waiting and agents' queues, as read so far".to_owned(),
        _ => {
            let path = v.get("path").and_then(|p| p.as_str()).unwrap_or(&c.key);
            let offset = v.get("offset").and_then(|o| o.as_u64()).unwrap_or(0);
            let line = v.get("line").and_then(|o| o.as_u64()).unwrap_or(0);
            let done = v.get("done").and_then(|d| d.as_bool()).unwrap_or(false);
            format!(
                "{path}: byte {offset}, line {line}{}",
                if done { " (finished)" } else { "" }
            )
        }
    }
}

/// The human-readable report; `silent` names sources past their `stale_after`, with why;
/// `schedules` are the pollers' schedules (for when they poll next).
pub fn render(
    r: &Report,
    path: &Path,
    now_ms: i64,
    silent: &[(String, String)],
    schedules: &[(String, crate::config::Schedule)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Outbox {}: {}\n", path.display(), r.outbox.describe());
    let _ = writeln!(
        out,
        "{:<40} {:<9} {:>9} {:>9} {:>11} {:>6}  LAST SUCCESS",
        "LANE", "HEALTH", "PENDING", "OLDEST", "SENT(KEPT)", "DEAD"
    );
    for l in &r.lanes {
        let name = l.name();
        // Delivery may be fine while damaged records wait for a person: the column says so.
        let health = if l.health == "ok" && l.damaged > 0 {
            "damaged"
        } else {
            &l.health
        };
        let _ = writeln!(
            out,
            "{:<40} {:<9} {:>9} {:>9} {:>11} {:>6}  {}",
            name,
            health,
            l.pending,
            l.oldest_pending_ms
                .map(|t| ago(now_ms, t))
                .unwrap_or("-".into()),
            l.sent_kept,
            l.dead,
            l.last_success_ms
                .map(|t| format!("{} ago", ago(now_ms, t)))
                .unwrap_or("never".into()),
        );
        if l.health != "ok"
            && let Some(e) = &l.last_error
        {
            let when = l
                .last_error_at_ms
                .map(|t| format!(" ({} ago)", ago(now_ms, t)))
                .unwrap_or_default();
            let _ = writeln!(out, "    {}{when}: {e}", l.health);
        }
        if l.damaged > 0 {
            let _ = writeln!(
                out,
                "    DAMAGED: {} record(s) cannot be decoded (their stored bytes or dictionary are \
                 damaged) and were set aside as dead letters, their bytes kept; the lane goes on. \
                 `injixo-sync dead list` shows them; `injixo-sync dead drop ID` gives them up",
                l.damaged
            );
        }
        if l.held > 0 {
            let _ = writeln!(
                out,
                "    {} record(s) held back: a new name for a known queue identifier \
                 (`injixo-sync queues` says which, and how to decide)",
                l.held
            );
        }
        if l.unknown_outcome_retries > 0 {
            let _ = writeln!(
                out,
                "    {} retries after an unanswered request (the API may hold those batches twice)",
                l.unknown_outcome_retries
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:>10} {:>8} {:>8} {:>8}  LAST ACTIVITY",
        "SOURCE", "RECORDS", "PARKED", "SKIPPED", "MERGED"
    );
    for s in &r.sources {
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>8} {:>8} {:>8}  {}",
            s.name,
            s.records_total,
            s.parked_now,
            s.skipped_total,
            s.merged_total,
            s.last_activity_ms
                .map(|t| format!("{} ago", ago(now_ms, t)))
                .unwrap_or("never".into())
        );
        if let Some((_, why)) = silent.iter().find(|(name, _)| *name == s.name) {
            let _ = writeln!(out, "    silent: {why}");
        }
        for p in &s.problems {
            let _ = writeln!(
                out,
                "    PROBLEM (since {} ago): {}",
                ago(now_ms, p.since_ms),
                p.message
            );
        }
        // While polls fail, the next attempt is the retry the problem names, not the schedule.
        let failing = s.problems.iter().any(|p| p.subject == "poll");
        let schedule = schedules
            .iter()
            .find(|(name, _)| *name == s.name && !failing)
            .map(|(_, sch)| sch);
        let polls = failing || schedules.iter().any(|(name, _)| *name == s.name);
        if polls && !s.cursors.iter().any(|c| c.key == "poll") {
            // No poll has completed yet, so none is stored.
            let none = outbox::CursorReport {
                key: "poll".to_owned(),
                value: serde_json::Value::Null,
                updated_ms: now_ms,
            };
            let _ = writeln!(out, "    {}", cursor_line(&none, schedule, now_ms));
        }
        for c in s.cursors.iter().take(3) {
            let _ = writeln!(out, "    {}", cursor_line(c, schedule, now_ms));
        }
    }
    if !r.dead.is_empty() {
        let _ = writeln!(
            out,
            "\nDEAD LETTERS (latest {}): records the API refused, or that cannot be decoded",
            r.dead.len()
        );
        for d in &r.dead {
            out.push_str(&render_dead(d));
        }
    }
    if !r.parked_by_reason.is_empty() {
        let total: i64 = r.parked_by_reason.iter().map(|p| p.count).sum();
        let _ = writeln!(
            out,
            "\nPARKED INPUT: {total} row(s) that could not become records, by reason \
             (`injixo-sync parked list` shows an example of each)"
        );
        for p in &r.parked_by_reason {
            let _ = writeln!(out, "  {:<24} {:>8}  {}", p.source, p.count, p.reason);
            if p.reason != outbox::OTHER_REASONS {
                let _ = writeln!(out, "  {:<24} {:>8}  first: {}", "", "", p.first_origin);
            }
        }
        let _ = writeln!(
            out,
            "  after fixing the map: `injixo-sync preview --parked --source NAME` shows what they \
             become, `injixo-sync parked retry --source NAME` enqueues them"
        );
    }
    out
}

pub(crate) fn ago(now_ms: i64, then_ms: i64) -> String {
    let secs = ((now_ms - then_ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}
