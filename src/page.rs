//! The page for the person who runs the daemon (`GET /` on the `[listen]` address): what flows,
//! what is stuck and the command that resolves it, the configuration at a glance.
//!
//! It reads what `status` reads (the state file, read-only) and the daemon's counters, changes
//! nothing, and is rendered on the server (maud, checked at compile time) into one page with
//! its style and its small script inline: sites are often offline, and it works without
//! JavaScript (the script only refreshes it and copies commands). It never shows a secret:
//! what it says about the configuration is built here from named fields
//! ([`ConfigGlance`]), URLs redacted as in logs, and a webhook's path without its token.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::config::{Config, FileFormat, FileMode, SourceKind, When};
use crate::counters::{LaneMetrics, SourceMetrics};
use crate::flow::{Flow, MINUTES, Series};
use crate::outbox::{self, DeadGroup, HeldQueue, LaneId, LaneReport, Report};
use crate::status::{ago, cursor_line, when as rfc3339};
use crate::text::shell_option;

/// The troubleshooting table (docs/operations.md, served by the daemon itself), for the
/// page's links.
const TROUBLESHOOTING: &str = "/help";

/// What the page says about the configuration: built once per generation from named fields,
/// never from the secrets.
#[derive(Clone, Debug, Default)]
pub struct ConfigGlance {
    /// The configuration file, for the commands the page gives.
    pub file: String,
    pub api: String,
    pub sources: Vec<SourceGlance>,
}

#[derive(Clone, Debug)]
pub struct SourceGlance {
    pub name: String,
    pub kind: &'static str,
    pub reads: String,
    pub schedule: String,
    pub lane: String,
}

impl ConfigGlance {
    pub fn of(config: &Config) -> Self {
        let sources = config
            .sources
            .iter()
            .map(|s| {
                let (kind, reads, schedule) = match &s.kind {
                    SourceKind::Files(f) => {
                        let kind = match f.format {
                            FileFormat::Csv => "CSV files",
                            FileFormat::Tsv => "TSV files",
                            FileFormat::Ndjson => "NDJSON files",
                            FileFormat::QueueLog => "Asterisk queue_log",
                        };
                        let how = match f.mode {
                            FileMode::Tail => "followed as they grow",
                            FileMode::Drop => "each read once complete",
                        };
                        (
                            kind,
                            format!(
                                "{}{}",
                                f.path.display(),
                                if f.recursive {
                                    " and its subfolders"
                                } else {
                                    ""
                                }
                            ),
                            format!(
                                "{how}; looked at every {}",
                                humantime::format_duration(f.poll_interval)
                            ),
                        )
                    }
                    SourceKind::Sql(q) => (
                        "SQL query",
                        format!(
                            "the database named by {}",
                            q.connection.from.describe_as(&q.connection.key)
                        ),
                        schedule(&q.schedule),
                    ),
                    SourceKind::Http(h) => (
                        "HTTP API",
                        crate::redact::url_text(&h.url),
                        schedule(&h.schedule),
                    ),
                    SourceKind::Webhook(_) => (
                        "webhook",
                        format!("pushes to POST /webhook/{}/…", s.name.as_str()),
                        "as they arrive".to_owned(),
                    ),
                };
                SourceGlance {
                    name: s.name.as_str().to_owned(),
                    kind,
                    reads,
                    schedule,
                    lane: s.lane.to_string(),
                }
            })
            .collect();
        // The commands the page gives work from any folder.
        let file = std::path::absolute(&config.file).unwrap_or_else(|_| config.file.clone());
        Self {
            file: file.display().to_string(),
            api: crate::redact::url(&config.api.url),
            sources,
        }
    }
}

fn schedule(s: &crate::config::Schedule) -> String {
    match &s.when {
        When::Cron(expr) => format!("cron \"{expr}\" ({})", s.zone.iana_name().unwrap_or("UTC")),
        When::Every(d) => format!("every {}", humantime::format_duration(*d)),
    }
}

/// Everything one rendering shows, read at once.
pub struct View<'a> {
    pub now_ms: i64,
    pub report: &'a Report,
    pub dead: &'a [DeadGroup],
    pub held: &'a [HeldQueue],
    /// Groups of held records in all (`held` shows the first of them).
    pub held_groups: i64,
    pub sources: &'a [Arc<SourceMetrics>],
    pub lanes: &'a [(LaneId, Arc<LaneMetrics>)],
    pub flow: &'a Flow,
    pub glance: &'a ConfigGlance,
    pub address: std::net::SocketAddr,
    /// The poll schedules, for when a poller tries next.
    pub schedules: &'a [(String, crate::config::Schedule)],
}

/// Samples every counter into `flow` every few seconds until `stop` fires.
pub async fn sample(
    flow: Arc<Flow>,
    sources: Vec<Arc<SourceMetrics>>,
    lanes: Vec<Arc<LaneMetrics>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let now = outbox::now_ms();
        for s in &sources {
            flow.sample(
                Series::Source(s.name.as_str().to_owned()),
                s.records.load(Relaxed),
                now,
            );
        }
        for l in &lanes {
            flow.sample(Series::Lane(l.key.to_string()), l.sent.load(Relaxed), now);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// A state in words, with a mark that is not colour alone.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tone {
    Good,
    Attention,
    Bad,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Good => "state good",
            Tone::Attention => "state attention",
            Tone::Bad => "state bad",
        }
    }
    fn mark(self) -> &'static str {
        match self {
            Tone::Good => "✓",
            Tone::Attention => "!",
            Tone::Bad => "✕",
        }
    }
}

fn badge(tone: Tone, words: &str) -> Markup {
    html! { span class=(tone.class()) { span aria-hidden="true" { (tone.mark()) " " } (words) } }
}

/// A lane in words: its tone, its state, what to do.
fn lane_state(l: &LaneReport, live: Option<&LaneMetrics>) -> (Tone, String, Option<String>) {
    let paused = live.is_some_and(|m| m.paused.load(Relaxed)) || l.health == "paused";
    if paused {
        let why = live
            .and_then(|m| m.pause_reason.lock().ok().and_then(|r| r.clone()))
            .or_else(|| l.last_error.clone())
            .unwrap_or_default();
        return (
            Tone::Bad,
            "Paused: the API refuses this lane".into(),
            Some(format!(
                "{why}. Nothing is lost meanwhile: records wait in the outbox, and the lane \
                 resumes where it stopped."
            )),
        );
    }
    if l.health == "retrying" {
        return (
            Tone::Attention,
            "Waiting for the API: retrying".into(),
            Some(format!(
                "{}. Nothing is lost: records wait in the outbox and are sent when the API \
                 answers.",
                l.last_error.clone().unwrap_or_default()
            )),
        );
    }
    if l.pending > 0 {
        (
            Tone::Good,
            format!("Delivering: {} waiting", l.pending),
            None,
        )
    } else {
        (Tone::Good, "Delivering: nothing waiting".into(), None)
    }
}

fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.round(jiff::Unit::Second)
                .unwrap_or(t)
                .strftime("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_default()
}

/// How long ago, with the time itself (left out on narrow screens).
fn since(now: i64, ms: Option<i64>) -> Markup {
    match ms {
        Some(t) if t > 0 => html! {
            (ago(now, t)) " ago" span class="wide" { " (" time datetime=(rfc3339(t)) { (when(t)) } ")" }
        },
        _ => html! { "never" },
    }
}

/// Records per minute as a small bar chart (inline SVG), labelled for screen readers.
fn chart(per_minute: &[u64], what: &str) -> Markup {
    let max = per_minute.iter().copied().max().unwrap_or(0);
    let total: u64 = per_minute.iter().sum();
    let label = format!(
        "{what} per minute over the last {MINUTES} minutes: {total} in all, at most {max} in a \
         minute"
    );
    let (w, h) = (2.0 * MINUTES as f64, 28.0);
    html! {
        svg class="chart" viewBox=(format!("0 0 {w} {h}")) width="180" height="42"
            role="img" aria-label=(label) preserveAspectRatio="none" {
            title { (label) }
            line x1="0" y1=(h - 0.5) x2=(w) y2=(h - 0.5) class="axis" {}
            @for (i, n) in per_minute.iter().enumerate() {
                @if *n > 0 {
                    @let bar = ((*n as f64 / max as f64) * (h - 2.0)).max(1.5);
                    rect x=(i as f64 * 2.0) y=(h - 1.0 - bar) width="1.6" height=(bar) {}
                }
            }
        }
    }
}

fn command(text: &str) -> Markup {
    html! {
        div class="cmd" {
            code { (text) }
            button type="button" class="copy" data-copy=(text) hidden { "Copy" }
        }
    }
}

/// The page.
pub fn render(v: &View) -> String {
    let r = v.report;
    let now = v.now_ms;
    let cli = format!("injixo-sync {}", shell_option("config", &v.glance.file));
    let live_lane = |l: &LaneReport| {
        v.lanes
            .iter()
            .map(|(_, m)| m)
            .find(|m| {
                m.key.emits.as_str() == l.emits
                    && m.key.integration_id as i64 == l.integration_id
                    && m.key.external_system == l.external_system
            })
            .map(|m| m.as_ref())
    };
    let live_source = |name: &str| {
        v.sources
            .iter()
            .find(|s| s.name.as_str() == name)
            .map(|s| s.as_ref())
    };
    let stored = |name: &str| r.sources.iter().find(|s| s.name == name);

    // What needs a person, and the worst state, for the verdict at the top.
    let mut tone = Tone::Good;
    let mut lanes = Vec::new();
    for l in &r.lanes {
        let (t, words, advice) = lane_state(l, live_lane(l));
        tone = tone.max(t);
        lanes.push((l, t, words, advice));
    }
    if r.outbox.full() {
        tone = Tone::Bad;
    }
    let mut troubles: Vec<(String, Tone, String, Option<i64>)> = Vec::new();
    for s in &v.glance.sources {
        let live = live_source(&s.name);
        if let Some(st) = stored(&s.name) {
            for p in &st.problems {
                troubles.push((
                    s.name.clone(),
                    Tone::Attention,
                    format!("{}: {}", p.subject, p.message),
                    Some(p.since_ms),
                ));
            }
        }
        if let Some(why) = live.and_then(|m| m.stale_verdict(now)) {
            troubles.push((
                s.name.clone(),
                Tone::Attention,
                format!("silent: {why}"),
                None,
            ));
        }
    }
    let parked_now: i64 = r.sources.iter().map(|s| s.parked_now).sum();
    let dead_total: i64 = r.lanes.iter().map(|l| l.dead).sum();
    let held_total: i64 = v.held_groups;
    if !troubles.is_empty() || parked_now > 0 || dead_total > 0 || held_total > 0 {
        tone = tone.max(Tone::Attention);
    }
    let stopped = lanes.iter().filter(|l| l.1 == Tone::Bad).count();
    let verdict = match tone {
        Tone::Good => "Working: data flows, nothing waits for a person".to_owned(),
        Tone::Attention => "Working, and something needs a person (below)".to_owned(),
        Tone::Bad if r.outbox.full() => "The outbox is full: reading waits, see Health".to_owned(),
        Tone::Bad => format!(
            "{stopped} of {} lane(s) not delivering: see Health",
            lanes.len()
        ),
    };

    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "injixo-sync: " (verdict) }
                link rel="icon" href=(ICON);
                style { (PreEscaped(STYLE)) }
            }
            body {
                a class="skip" href="#main" { "Skip to the content" }
                header {
                    h1 { "injixo-sync" }
                    p id="verdict" { (badge(tone, &verdict)) }
                    p class="meta" id="shown" {
                        "Version " (env!("CARGO_PKG_VERSION")) " · listening on " (v.address)
                        " · shown at " time datetime=(rfc3339(now)) { (when(now)) }
                        " · " a href="/status.json" { "the same as JSON" }
                    }
                    nav aria-label="Sections" {
                        ul {
                            li { a href="#flow" { "Flow" } }
                            li { a href="#health" { "Health" } }
                            li { a href="#attention" { "Needs a person" } }
                            li { a href="#configuration" { "Configuration" } }
                        }
                    }
                }
                main id="main" {
                    section id="flow" aria-labelledby="flow-h" {
                        h2 id="flow-h" { "Flow" }
                        (outbox_bar(r))
                        h3 { "Sources: records read" }
                        div class="scroll" {
                        table {
                            caption class="sr" { "Records each source read, per minute over the last hour" }
                            thead { tr {
                                th scope="col" { "Source" }
                                th scope="col" { "Last hour (per minute)" }
                                th scope="col" class="num" { "Last hour" }
                                th scope="col" class="num" { "Since start" }
                                th scope="col" { "Last read" }
                            } }
                            tbody {
                                @for s in &v.glance.sources {
                                    @let series = v.flow.per_minute(&Series::Source(s.name.clone()), now);
                                    @let live = live_source(&s.name);
                                    tr {
                                        th scope="row" { (s.name) }
                                        td { (chart(&series, "Records read")) }
                                        td class="num" { (series.iter().sum::<u64>()) }
                                        td class="num" { (live.map_or(0, |m| m.records.load(Relaxed))) }
                                        td { (since(now, stored(&s.name).and_then(|x| x.last_activity_ms))) }
                                    }
                                }
                            }
                        }
                        }
                        h3 { "Lanes: records delivered to injixo" }
                        div class="scroll" {
                        table {
                            caption class="sr" { "Records each lane delivered, per minute over the last hour" }
                            thead { tr {
                                th scope="col" { "Lane" }
                                th scope="col" { "Last hour (per minute)" }
                                th scope="col" class="num" { "Last hour" }
                                th scope="col" class="num" { "Since start" }
                                th scope="col" class="num" { "Waiting" }
                                th scope="col" { "Oldest waiting" }
                            } }
                            tbody {
                                @for (l, _, _, _) in &lanes {
                                    @let name = l.name();
                                    @let series = v.flow.per_minute(&Series::Lane(name.clone()), now);
                                    tr {
                                        th scope="row" { (name) }
                                        td { (chart(&series, "Records delivered")) }
                                        td class="num" { (series.iter().sum::<u64>()) }
                                        td class="num" { (live_lane(l).map_or(0, |m| m.sent.load(Relaxed))) }
                                        td class="num" { (l.pending) }
                                        td { @match l.oldest_pending_ms { Some(t) => { (ago(now, t)) " ago" }, None => "—" } }
                                    }
                                }
                            }
                        }
                        }
                    }
                    section id="health" aria-labelledby="health-h" {
                        h2 id="health-h" { "Health" }
                        h3 { "Lanes" }
                        ul class="items" {
                            @for (l, t, words, advice) in &lanes {
                                li {
                                    strong { (l.name()) } " "
                                    (badge(*t, words))
                                    p { "Last successful delivery: " (since(now, l.last_success_ms)) "." }
                                    @if let Some(a) = advice { p { (a) " " a href=(TROUBLESHOOTING) { "Troubleshooting" } } }
                                }
                            }
                            @if r.lanes.is_empty() { li { "No lane has sent yet." } }
                        }
                        @if r.outbox.full() {
                            p { (badge(Tone::Bad, "The outbox is full")) " Reading waits until delivery frees room: " (r.outbox.describe()) }
                        }
                        h3 { "Sources" }
                        ul class="items" {
                            @for s in &v.glance.sources {
                                @let mine: Vec<_> = troubles.iter().filter(|t| t.0 == s.name).collect();
                                li {
                                    strong { (s.name) } " "
                                    @if mine.is_empty() { (badge(Tone::Good, "Reading")) }
                                    @else { (badge(Tone::Attention, "Has a problem")) }
                                    @for (_, _, what, at) in &mine {
                                        p { (what) @if let Some(at) = at { " (since " (when(*at)) ")" } }
                                    }
                                    @if let Some(st) = stored(&s.name) {
                                        @for c in &st.cursors {
                                            @if c.key == "poll" {
                                                p class="meta" { (cursor_line(c, v.schedules.iter().find(|x| x.0 == s.name).map(|x| &x.1), now)) }
                                            }
                                        }
                                    }
                                    @if !mine.is_empty() { p { a href=(TROUBLESHOOTING) { "Troubleshooting" } } }
                                }
                            }
                        }
                    }
                    section id="attention" aria-labelledby="attention-h" {
                        h2 id="attention-h" { "What needs a person" }
                        @if dead_total == 0 && parked_now == 0 && held_total == 0 && troubles.is_empty() {
                            p { (badge(Tone::Good, "Nothing")) " No dead letters, no parked input, no queue names held back." }
                        }
                        (dead_part(v, &cli, dead_total))
                        (parked_part(r, &cli))
                        (held_part(v.held, v.held_groups, &cli))
                        @if cfg!(windows) && (dead_total > 0 || parked_now > 0 || held_total > 0) {
                            p class="meta" { "The commands are written for PowerShell." }
                        }
                    }
                    section id="configuration" aria-labelledby="configuration-h" {
                        h2 id="configuration-h" { "Configuration" }
                        p { "From " code { (v.glance.file) } ", sending to " code { (v.glance.api) } "." }
                        div class="scroll" {
                        table {
                            caption class="sr" { "Configured sources" }
                            thead { tr {
                                th scope="col" { "Source" } th scope="col" { "Type" }
                                th scope="col" { "Reads" } th scope="col" { "When" } th scope="col" { "Lane" }
                            } }
                            tbody {
                                @for s in &v.glance.sources {
                                    tr { th scope="row" { (s.name) } td { (s.kind) } td { (s.reads) } td { (s.schedule) } td { (s.lane) } }
                                }
                            }
                        }
                        }
                    }
                }
                footer {
                    p { "What each state means and what to do: " a href=(TROUBLESHOOTING) { "troubleshooting" } ". "
                        "This page refreshes itself every 10 seconds while JavaScript is on; reload it otherwise." }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    page.into_string()
}

fn outbox_bar(r: &Report) -> Markup {
    let u = &r.outbox;
    let share = if u.budget > 0 {
        (u.used as f64 / u.budget as f64).min(1.0)
    } else {
        0.0
    };
    let pct = (share * 100.0).round() as u64;
    let tone = if u.full() {
        Tone::Bad
    } else if share > 0.8 {
        Tone::Attention
    } else {
        Tone::Good
    };
    html! {
        div class="outbox" {
            h3 id="outbox-h" { "Outbox" }
            @if u.budget > 0 {
                div class="bar" role="meter" aria-labelledby="outbox-h" aria-valuemin="0" aria-valuemax="100" aria-valuenow=(pct) aria-valuetext=(format!("{pct}% of the budget in use")) {
                    div class=(format!("fill {}", tone.class().trim_start_matches("state "))) style=(format!("width:{:.1}%", share * 100.0)) {}
                }
            }
            p { (badge(tone, &format!("{pct}% of the budget"))) " " (u.describe()) }
            p class="meta" {
                @for l in &r.lanes { (l.name()) ": " (l.pending) " waiting, " (l.sent_kept) " delivered and kept. " }
            }
        }
    }
}

fn dead_part(v: &View, cli: &str, total: i64) -> Markup {
    if total == 0 {
        return html! {};
    }
    html! {
        h3 { "Dead letters: records the API refused (" (total) ")" }
        p { "Each was refused for the reason shown; fix the cause in injixo or in the map, then send them again." }
        ul class="items" {
            @for g in v.dead {
                li {
                    strong { (g.count) " from " (g.source) } " "
                    @if g.damaged { (badge(Tone::Attention, "damaged in the state file: can only be dropped")) }
                    @else { (badge(Tone::Attention, &format!("HTTP {}", g.status))) }
                    p { "For example #" (g.first_id) ": " (g.answer) }
                    @if g.ids.len() as i64 == g.count {
                        @if g.damaged {
                            (command(&format!("{cli} dead drop {}", join(&g.ids))))
                        } @else {
                            (command(&format!("{cli} dead retry {}", join(&g.ids))))
                        }
                    } @else {
                        p { "Too many to name here: list them, then "
                            code { @if g.damaged { "dead drop ID..." } @else { "dead retry ID..." } }
                            " with the ids shown (" code { "--all" } " would take every dead letter of every source)." }
                        (command(&format!("{cli} dead list {}", shell_option("source", &g.source))))
                    }
                }
            }
        }
    }
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parked_part(r: &Report, cli: &str) -> Markup {
    if r.parked_by_reason.is_empty() {
        return html! {};
    }
    let total: i64 = r.parked_by_reason.iter().map(|p| p.count).sum();
    html! {
        h3 { "Parked input: rows that could not become records (" (total) ")" }
        p { "Fix the map in the configuration, see what it makes of them, then map them again: each becomes its records once." }
        ul class="items" {
            @for p in &r.parked_by_reason {
                li {
                    strong { (p.count) " from " (p.source) } " " (badge(Tone::Attention, "parked"))
                    p { (p.reason) }
                    p class="meta" { "First at " (p.first_origin) }
                    @if p.reason == outbox::OTHER_REASONS {
                        p { "Smaller groups of this source, each with a reason of its own: list them." }
                        (command(&format!("{cli} parked list {}", shell_option("source", &p.source))))
                    } @else {
                        (command(&format!("{cli} preview --parked {}", shell_option("source", &p.source))))
                        (command(&format!("{cli} parked retry {} {} --exact", shell_option("source", &p.source), shell_option("reason", &p.reason))))
                    }
                }
            }
        }
    }
}

fn held_part(held: &[HeldQueue], groups: i64, cli: &str) -> Markup {
    if held.is_empty() {
        return html! {};
    }
    let more = groups - held.len() as i64;
    html! {
        h3 { "Queue names held back" }
        p { "A queue identifier came with a new name; injixo would make a second queue of it. Accept the name, or fix the map and give the records up." }
        ul class="items" {
            @for h in held {
                li {
                    strong { (h.records) " record(s): " (h.identifier) " as " (format!("{:?}", h.new_name)) } " "
                    (badge(Tone::Attention, "held"))
                    p { "injixo knows it as " (h.known_names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")) " (configuration id " (h.integration_id) ")." }
                    @let which = format!("--integration-id={} {} {}", h.integration_id, shell_option("identifier", &h.identifier), shell_option("name", &h.new_name));
                    (command(&format!("{cli} queues confirm {which}")))
                    (command(&format!("{cli} queues drop {which}")))
                }
            }
        }
        @if more > 0 {
            p { (more) " more new name(s) held back: " code { "injixo-sync queues" } " lists them all." }
        }
    }
}

/// Reads what the page shows from the state file (blocking: call it off the runtime).
pub fn read(path: &Path) -> Result<Read, outbox::OutboxError> {
    let report = outbox::inspect(path, 1)?;
    let dead = outbox::dead_groups(path, SHOWN)?;
    let (held, held_groups) = outbox::held_queues(path, SHOWN)?;
    Ok(Read {
        report,
        dead,
        held,
        held_groups,
    })
}

/// Groups of dead letters and of held records shown; the page says how many more there are.
const SHOWN: usize = 20;

/// What [`read`] reads for one rendering.
pub struct Read {
    pub report: Report,
    pub dead: Vec<DeadGroup>,
    pub held: Vec<HeldQueue>,
    pub held_groups: i64,
}

/// The troubleshooting table of docs/operations.md as this build ships it, as a page of its
/// own (`/help`): what each state and message means and what to do, offline.
pub fn help() -> String {
    const OPERATIONS: &str = include_str!("../docs/operations.md");
    let start = OPERATIONS.find("## Troubleshooting").unwrap_or(0);
    let rest = &OPERATIONS[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut body = String::new();
    let options = pulldown_cmark::Options::ENABLE_TABLES;
    pulldown_cmark::html::push_html(&mut body, pulldown_cmark::Parser::new_ext(section, options));
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "injixo-sync: troubleshooting" }
                link rel="icon" href=(ICON);
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { p { a href="/" { "Back to the page" } } }
                main id="troubleshooting" { div class="scroll" { (PreEscaped(body)) } }
            }
        }
    }
    .into_string()
}

/// The tab's icon, inline (a browser asks for /favicon.ico otherwise).
const ICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='3' fill='%230a5cad'/%3E%3Cpath d='M3 11h2V7H3zm4 0h2V4H7zm4 0h2V8h-2z' fill='%23fff'/%3E%3C/svg%3E";

const STYLE: &str = r#"
:root{--fg:#1b1f24;--muted:#57606a;--bg:#fff;--line:#d0d7de;--good:#116329;--good-bg:#dafbe1;
--att:#7d4e00;--att-bg:#fff8c5;--bad:#a40e26;--bad-bg:#ffebe9;--bar:#0a5cad}
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header,main,footer{max-width:72rem;margin:0 auto;padding:0 1rem}
h1{font-size:1.5rem;margin:1rem 0 .25rem}h2{font-size:1.25rem;border-bottom:1px solid var(--line);padding-bottom:.25rem;margin-top:2rem}
h3{font-size:1.05rem;margin:1.25rem 0 .5rem}
.meta{color:var(--muted);font-size:.9rem}
nav ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.5rem 0}
a{color:#0550ae}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
.state{display:inline-block;border-radius:1rem;padding:0 .6rem;font-weight:600;border:1px solid}
.state.good{color:var(--good);background:var(--good-bg);border-color:var(--good)}
.state.attention{color:var(--att);background:var(--att-bg);border-color:var(--att)}
.state.bad{color:var(--bad);background:var(--bad-bg);border-color:var(--bad)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.95rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:middle}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.chart{display:block;width:180px;height:42px}.chart rect{fill:var(--bar)}.chart .axis{stroke:var(--line)}
.items{list-style:none;padding:0}.items>li{border:1px solid var(--line);border-radius:.5rem;padding:.6rem .8rem;margin:.5rem 0}
.items p{margin:.3rem 0;overflow-wrap:anywhere}
.cmd{display:flex;gap:.5rem;align-items:flex-start;margin:.35rem 0}
.cmd code{flex:1;background:#f6f8fa;border:1px solid var(--line);border-radius:.3rem;padding:.3rem .5rem;overflow-wrap:anywhere;font-size:.85rem}
button{font:inherit;font-size:.85rem;padding:.2rem .6rem;border:1px solid var(--muted);border-radius:.3rem;background:#fff;color:var(--fg);cursor:pointer}
.bar{height:.9rem;border:1px solid var(--line);border-radius:.3rem;overflow:hidden;max-width:32rem;background:#f6f8fa}
.bar .fill{display:block;height:100%;border:0;border-radius:0;padding:0}
.bar .fill.good{background:var(--good)}.bar .fill.attention{background:#bf8700}.bar .fill.bad{background:var(--bad)}
footer{margin:2rem auto;color:var(--muted)}
@media (max-width:40rem){th,td{padding:.25rem .3rem}.chart{width:110px;height:36px}.wide{display:none}}
"#;

const SCRIPT: &str = r#"
(function(){
  function wire(){
    document.querySelectorAll('button.copy').forEach(function(b){
      if(!navigator.clipboard){return;}
      b.hidden=false;
      b.onclick=function(){navigator.clipboard.writeText(b.dataset.copy).then(function(){b.textContent='Copied';setTimeout(function(){b.textContent='Copy';},1500);},function(){});};
    });
  }
  wire();
  // One refresh at a time, each given 8 s, the next 10 s after the last one ended.
  function refresh(){
    var ctl=new AbortController(), timer=setTimeout(function(){ctl.abort();},8000);
    fetch(location.pathname,{credentials:'same-origin',cache:'no-store',signal:ctl.signal}).then(function(r){
      if(!r.ok){throw new Error(r.status);} return r.text();
    }).then(function(t){
      var d=new DOMParser().parseFromString(t,'text/html');
      ['verdict','shown','main'].forEach(function(id){
        var n=d.getElementById(id),o=document.getElementById(id); if(n&&o){o.replaceWith(n);}
      });
      document.title=d.title; wire();
    }).catch(function(){}).then(function(){clearTimeout(timer);setTimeout(refresh,10000);});
  }
  setTimeout(refresh,10000);
})();
"#;
