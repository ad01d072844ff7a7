//! The TOML configuration: raw serde structs (unknown keys rejected) turned once into validated
//! types. Nothing else in the program reads TOML.
//!
//! Validation collects every problem instead of stopping at the first, and each [`Problem`]
//! names the key (`source[1] "acd".format`), the line where the file has it, and what would be
//! valid. `check` prints them all; `run` refuses to start on any.
//!
//! Where things are: `raw` (the serde shapes), `problems` (the collector and the validator's
//! core: locating a key's line, durations, choices, time zones), then one file per table, each
//! with its validated types and its checks: `daemon` (`[api]`, `[state]`, `[listen]`, `[log]`),
//! `files`, `rows` (map, key, skip_if, agent states, queue_log), `pollers` (schedule, secrets,
//! `sql`, `webhook`), `http`. `secret` reads secrets; `paths` has the defaults. This file
//! loads, dispatches each `[[source]]` by type and checks what spans tables.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logging::LogConfig;
use crate::stale::{BusinessHours, StalePolicy};
use crate::types::{Emits, LaneKey, SourceName};

mod daemon;
mod files;
mod http;
mod paths;
mod pollers;
mod problems;
mod raw;
mod rows;
mod secret;

pub use daemon::{ApiConfig, ListenConfig, StateConfig};
pub use files::{
    After, DEFAULT_MAX_LINE, FileFormat, FileMode, FilesConfig, Marker, StartAt, Watch,
};
pub use http::{HttpAuth, HttpConfig, HttpCursor, Pagination, is_header_name};
pub use paths::{DEFAULT_API_URL, default_config_path, default_state_path, program_data};
pub use pollers::{Schedule, Signature, SqlConfig, WebhookConfig, When, parse_cron};
pub use problems::{ConfigError, Problem};
pub use rows::{QueueLogConfig, RowRules, StatesConfig};
pub use secret::{SecretError, SourceSecret, TokenSource};

use problems::{Seg, Validator, line_of};
use raw::{RawConfig, RawSource};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from; relative paths inside it are resolved against its folder.
    pub file: PathBuf,
    pub api: ApiConfig,
    pub state: StateConfig,
    pub listen: Option<ListenConfig>,
    pub log: LogConfig,
    pub sources: Vec<SourceConfig>,
    /// Things that work but should be changed (an inline token, say).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: SourceName,
    pub lane: LaneKey,
    pub kind: SourceKind,
    /// When the source counts as silent (`stale_after`, `business_hours`).
    pub stale: Option<StalePolicy>,
}

#[derive(Clone, Debug)]
pub enum SourceKind {
    Files(FilesConfig),
    Sql(SqlConfig),
    Http(HttpConfig),
    Webhook(WebhookConfig),
}

impl SourceKind {
    /// What turns its rows into records.
    pub fn rows(&self) -> &RowRules {
        match self {
            SourceKind::Files(f) => &f.rows,
            SourceKind::Sql(s) => &s.rows,
            SourceKind::Http(h) => &h.rows,
            SourceKind::Webhook(w) => &w.rows,
        }
    }

    /// The `type` it is configured as.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Files(f) if f.queue_log.is_some() => "asterisk_queue_log",
            SourceKind::Files(_) => "files",
            SourceKind::Sql(_) => "sql",
            SourceKind::Http(_) => "http",
            SourceKind::Webhook(_) => "webhook",
        }
    }

    /// The secrets the source reads when it runs (the webhook's token is read when it is
    /// built).
    pub fn secrets(&self) -> Vec<&SourceSecret> {
        match self {
            SourceKind::Sql(sql) => vec![&sql.connection],
            SourceKind::Http(http) => match &http.auth {
                HttpAuth::None => vec![],
                HttpAuth::Bearer(t) => vec![t],
                HttpAuth::Basic { password, .. } => vec![password],
                HttpAuth::OAuth2 { secret, .. } => vec![secret],
            },
            SourceKind::Files(_) | SourceKind::Webhook(_) => vec![],
        }
    }

    /// How long an agent-state change read again is recognised as a repeat: pollers read rows
    /// again within their overlap (and ties at the cursor), pushers send a push again when an
    /// answer was lost. A files source never reads a change twice (its cursors are positions),
    /// so it remembers nothing.
    fn remember_repeats(&mut self) {
        const RETRIES: Duration = Duration::from_secs(600);
        let (rows, window) = match self {
            SourceKind::Files(_) => return,
            SourceKind::Sql(s) => (&mut s.rows, s.overlap + RETRIES),
            SourceKind::Http(h) => (&mut h.rows, h.lag + RETRIES),
            SourceKind::Webhook(w) => (&mut w.rows, RETRIES),
        };
        if let Some(states) = rows.states.as_mut() {
            states.settings.remember = jiff::SignedDuration::try_from(window).unwrap_or_default();
        }
    }
}

/// A source name the configuration does not have.
#[derive(Debug, thiserror::Error)]
#[error("no source is named {name:?} (sources: {known})")]
pub struct UnknownSource {
    pub name: String,
    /// The names it has, comma-separated.
    pub known: String,
}

impl Config {
    /// The pollers' schedules by source name (for when they poll next).
    pub fn schedules(&self) -> Vec<(String, Schedule)> {
        self.sources
            .iter()
            .filter_map(|src| {
                let schedule = match &src.kind {
                    SourceKind::Sql(s) => s.schedule.clone(),
                    SourceKind::Http(h) => h.schedule.clone(),
                    _ => return None,
                };
                Some((src.name.as_str().to_owned(), schedule))
            })
            .collect()
    }

    /// The source named `name`; the error names those there are.
    pub fn source(&self, name: &str) -> Result<&SourceConfig, UnknownSource> {
        self.sources
            .iter()
            .find(|s| s.name.as_str() == name)
            .ok_or_else(|| UnknownSource {
                name: name.to_owned(),
                known: self
                    .sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::load_as(file, false)
    }

    /// [`Config::load`] for a configuration still being written, which `preview` reads: a
    /// source without `integration_id` is taken (as configuration id 0, which nothing sends
    /// to), so that rows can be tried before injixo's side is set up.
    pub fn load_draft(file: &Path) -> Result<Config, ConfigError> {
        Self::load_as(file, true)
    }

    fn load_as(file: &Path, draft: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                line: None,
                message: format!(
                    "cannot read the configuration: {e} (pass --config PATH or set INJIXO_SYNC_CONFIG)"
                ),
            }],
        })?;
        Self::parse_as(&text, file, draft)
    }

    /// Validates configuration text; `file` names it in errors and anchors relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Self::parse_as(text, file, false)
    }

    fn parse_as(text: &str, file: &Path, draft: bool) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().trim_end().to_owned(),
            }],
        })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator {
            doc: toml_edit::Document::parse(text).ok(),
            text,
            base,
            problems: Vec::new(),
            warnings: Vec::new(),
            draft,
        };
        let api = v.api(raw.api);
        let state = v.state(raw.state);
        let listen = raw.listen.map(|l| v.listen(l));
        let log = v.log(raw.log);
        let webhooks: Vec<(usize, String)> = raw
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind.as_deref() == Some("webhook"))
            .map(|(i, s)| (i, s.name.clone().unwrap_or_default()))
            .collect();
        let mut sources = v.sources(raw.sources, &state.path);
        v.keys_outlive_reads(&state, &mut sources);
        if listen.is_none() {
            for (i, name) in webhooks {
                v.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("type")],
                    &format!("source[{i}] {name:?}.type"),
                    "\"webhook\" is served on the [listen] address: add [listen] with address = \"...\"",
                );
            }
        }
        if v.problems.is_empty() {
            Ok(Config {
                file: file.to_owned(),
                api: api.expect("validated"),
                state,
                listen,
                log,
                sources,
                warnings: v.warnings,
            })
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems: v.problems,
            })
        }
    }

    /// The distinct lanes the sources feed.
    pub fn lanes(&self) -> Vec<LaneKey> {
        let mut lanes: Vec<LaneKey> = Vec::new();
        for s in &self.sources {
            if !lanes.contains(&s.lane) {
                lanes.push(s.lane.clone());
            }
        }
        lanes
    }
}

impl Validator<'_> {
    /// A `sql` source reads rows again for `overlap` behind its cursor, which trails now by
    /// `lag`; a `DATE` cursor reads whole days, the cursor's and `overlap` rounded up to days
    /// before it. Rows read again are recognised by their keys while records are kept
    /// (`state.keep_sent`, which each source learns here), and a cursor that has not moved for
    /// nearly that long reads only after itself. So `keep_sent` shorter than `overlap` and
    /// `lag` with ten minutes would stop the look-back of any cursor that has not just moved
    /// (late rows not read) and is refused; shorter than a `DATE` cursor's look-back is
    /// warned about, as the column's type is known only to the database.
    fn keys_outlive_reads(&mut self, state: &daemon::StateConfig, sources: &mut [SourceConfig]) {
        const MARGIN: Duration = Duration::from_secs(600);
        const DAY: Duration = Duration::from_secs(86_400);
        let human = |d: Duration| humantime::format_duration(d).to_string();
        for s in sources {
            let SourceKind::Sql(sql) = &mut s.kind else {
                continue;
            };
            sql.keys_kept = state.keep_sent;
            if sql.cursor_column.is_none() {
                continue;
            }
            let reread = sql.overlap + sql.lag + MARGIN;
            let days = sql.overlap.as_secs().div_ceil(DAY.as_secs()) as u32;
            let reread_days = DAY * (days + 1) + sql.lag + MARGIN;
            let said = format!(
                "source {:?} reads rows again (overlap {} + lag {} + 10m",
                s.name.as_str(),
                human(sql.overlap),
                human(sql.lag)
            );
            if state.keep_sent < reread {
                self.problem(
                    &[Seg::Key("state"), Seg::Key("keep_sent")],
                    "state.keep_sent",
                    format!(
                        "{} must be longer than {said}), as rows read again are recognised only \
                         while their records are kept: set it to at least {}",
                        human(state.keep_sent),
                        human(reread_days),
                    ),
                );
            } else if state.keep_sent < reread_days {
                self.warnings.push(format!(
                    "state.keep_sent ({}) is shorter than {said}, and with a DATE cursor column a \
                     whole day more): with a DATE column, rows committed late into the oldest \
                     day would not be read; set it to at least {}",
                    human(state.keep_sent),
                    human(reread_days),
                ));
            }
        }
    }

    fn sources(&mut self, raws: Vec<RawSource>, state: &Path) -> Vec<SourceConfig> {
        if raws.is_empty() {
            self.problem(
                &[],
                "source",
                "no [[source]] is configured, so there is nothing to deliver",
            );
        }
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            if let Some(s) = self.source(i, raw, &mut names) {
                if let SourceKind::Files(files) = &s.kind {
                    self.away_from_state(i, s.name.as_str(), files, state);
                }
                out.push(s);
            }
        }
        out
    }

    fn source(
        &mut self,
        i: usize,
        mut raw: RawSource,
        names: &mut HashSet<String>,
    ) -> Option<SourceConfig> {
        let before = self.problems.len();
        let label = match &raw.name {
            Some(n) => format!("source[{i}] {n:?}"),
            None => format!("source[{i}]"),
        };

        let name = match raw.name.as_deref().map(SourceName::parse) {
            None => {
                self.source_problem(
                    i,
                    &label,
                    "name",
                    "is required: a stable name; cursors are keyed by it",
                );
                None
            }
            Some(Err(e)) => {
                self.source_problem(i, &label, "name", e);
                None
            }
            Some(Ok(n)) if !names.insert(n.as_str().to_owned()) => {
                self.source_problem(
                    i,
                    &label,
                    "name",
                    "is used by an earlier source: names must be unique",
                );
                None
            }
            Some(Ok(n)) => Some(n),
        };
        let integration_id = match raw.integration_id {
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                self.source_problem(i, &label, "integration_id",
                    format!("{n} is not a configuration id: copy the positive number from the integration's tile in injixo"),
                );
                None
            }
            None if self.draft => Some(0),
            None => {
                self.source_problem(
                    i,
                    &label,
                    "integration_id",
                    "is required: the integration's configuration id from its tile in injixo",
                );
                None
            }
        };
        let emits = match raw.emits.as_deref() {
            Some("contact_events") => Some(Emits::ContactEvents),
            Some("agent_statuses") => Some(Emits::AgentStatuses),
            Some("agent_states") => Some(Emits::AgentStatuses),
            Some(other) => {
                self.source_problem(i, &label, "emits",
                    format!("{other:?} is not valid: use \"contact_events\", \"agent_statuses\" or \"agent_states\""),
                );
                None
            }
            None => {
                self.source_problem(
                    i,
                    &label,
                    "emits",
                    "is required: \"contact_events\", \"agent_statuses\" or \"agent_states\"",
                );
                None
            }
        };
        let external_system = match (emits, raw.external_system.take()) {
            (Some(Emits::AgentStatuses), None) => {
                self.source_problem(i, &label, "external_system",
                    "is required for agent statuses: the name injixo shows for the source system (meta.externalSystem)",
                );
                None
            }
            (_, Some(s)) if s.trim().is_empty() => {
                self.source_problem(i, &label, "external_system", "is empty");
                None
            }
            (Some(Emits::ContactEvents), Some(_)) => {
                self.source_problem(
                    i,
                    &label,
                    "external_system",
                    "applies only to agent statuses: contact events carry no externalSystem",
                );
                None
            }
            (_, s) => s,
        };
        let stale = self.stale(i, &label, &raw);
        let kind = match raw.kind.clone().as_deref() {
            Some("files") => self.files(i, &label, emits, raw),
            Some("asterisk_queue_log") => self.queue_log(i, &label, emits, raw),
            Some("sql") => self.sql(i, &label, emits, raw, None),
            Some("http") => self.http(i, &label, emits, raw),
            Some("webhook") => self.webhook(i, &label, emits, raw),
            Some(t) => {
                self.source_problem(
                    i,
                    &label,
                    "type",
                    format!(
                        "{t:?} is not a source type: use \"files\", \"asterisk_queue_log\", \
                         \"sql\", \"http\" or \"webhook\""
                    ),
                );
                None
            }
            None => {
                self.source_problem(i, &label, "type", "is required, e.g. type = \"files\"");
                None
            }
        };
        if self.problems.len() > before {
            return None;
        }
        let mut kind = kind;
        if let Some(k) = kind.as_mut() {
            k.remember_repeats();
        }
        Some(SourceConfig {
            name: name?,
            lane: LaneKey {
                emits: emits?,
                integration_id: integration_id?,
                external_system,
            },
            kind: kind?,
            stale,
        })
    }

    fn stale(&mut self, i: usize, label: &str, raw: &RawSource) -> Option<StalePolicy> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let Some(after) = raw.stale_after.as_deref() else {
            if raw.business_hours.is_some() {
                self.problem(
                    &at("business_hours"),
                    &format!("{label}.business_hours"),
                    "applies only with stale_after",
                );
            }
            return None;
        };
        let after = self.duration(
            &at("stale_after"),
            &format!("{label}.stale_after"),
            Some(after),
            Duration::from_secs(7200),
            (Duration::from_secs(1), Duration::from_secs(365 * 86_400)),
        );
        let zone = raw
            .timezone
            .as_deref()
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC);
        let hours = match raw
            .business_hours
            .as_deref()
            .map(|h| BusinessHours::parse(h, zone))
        {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                self.problem(&at("business_hours"), &format!("{label}.business_hours"), e);
                None
            }
        };
        Some(StalePolicy { after, hours })
    }
}
