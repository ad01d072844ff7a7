//! What turns a row into records: `[source.map]`, `key`, `skip_if`, agent states
//! (`emits = "agent_states"`) and Asterisk's queue_log.

use std::time::Duration;

use super::SourceKind;
use super::problems::{Seg, Validator};
use super::raw::RawSource;
use crate::normalize::expr::{Expr, Reading, Want};
use crate::normalize::key::KeyTemplate;
use crate::normalize::map::{
    ApiField, Expand, ExpandDuration, FieldSource, INTERVAL_RANGE, IntervalLength, Lookup, Mapping,
};
use crate::normalize::skip::SkipIf;
use crate::normalize::time::{TimeFormat, TimeParser};
use crate::types::Emits;

/// What turns a row (a CSV line, a JSON object, a database row) into records.
#[derive(Clone, Debug, Default)]
pub struct RowRules {
    pub map: Option<Mapping>,
    /// The natural key of a row (`key`), if rows are deduplicated by content.
    pub key: Option<KeyTemplate>,
    pub skip_if: SkipIf,
    /// `emits = "agent_states"`: rows are state changes, built into intervals.
    pub states: Option<StatesConfig>,
}

/// What an `asterisk_queue_log` source sends for its queues.
#[derive(Clone, Debug)]
pub struct QueueLogConfig {
    /// `channel` of every contact event (default "calls").
    pub channel: String,
    /// `[source.queues]`: Asterisk queue → (queueIdentifier, queueName); others use the
    /// Asterisk queue name for both.
    pub queues: std::collections::HashMap<String, (String, String)>,
}

impl QueueLogConfig {
    pub fn queue(&self, name: &str) -> (String, String) {
        self.queues
            .get(name)
            .cloned()
            .unwrap_or_else(|| (name.to_owned(), name.to_owned()))
    }
}

/// How agent state changes become intervals (`emits = "agent_states"`).
#[derive(Clone, Debug)]
pub struct StatesConfig {
    pub settings: crate::normalize::intervals::Settings,
    /// `[source.agents]`: external agent id → the identifier injixo knows; others unchanged.
    pub agents: std::collections::HashMap<String, String>,
    /// `[source.activities]`: ACD state → activity identifier; `"*"` for any other state,
    /// else other states are sent unchanged.
    pub activities: std::collections::HashMap<String, String>,
    /// States that end the agent's session (compared in any case).
    pub logout: Vec<String>,
}

impl StatesConfig {
    /// The activity a raw state means, or `None` for a logout.
    pub fn activity(&self, state: &str) -> Option<String> {
        let state = state.trim();
        if self.logout.iter().any(|l| l.eq_ignore_ascii_case(state)) {
            return None;
        }
        // "paused:lunch" falls back to "paused" (Asterisk pause reasons), then to "*".
        let general = state.split_once(':').map(|(g, _)| g);
        Some(
            self.activities
                .get(state)
                .or_else(|| general.and_then(|g| self.activities.get(g)))
                .or_else(|| self.activities.get("*"))
                .cloned()
                .unwrap_or_else(|| state.to_owned()),
        )
    }

    pub fn agent(&self, id: &str) -> String {
        let id = id.trim();
        self.agents
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }
}

impl Validator<'_> {
    /// `type = "asterisk_queue_log"`: the files source tailing one queue_log (and its rotated
    /// names), with the queue_log parser.
    pub(super) fn queue_log(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
    ) -> Option<SourceKind> {
        self.not_applicable(
            i,
            label,
            &[
                ("format", raw.format.is_some()),
                ("mode", raw.mode.is_some()),
                ("include", raw.include.is_some()),
                ("map", raw.map.is_some()),
            ],
            "does not apply to asterisk_queue_log: the file's format is fixed",
        );
        if emits == Some(Emits::AgentStatuses) && raw.emits.as_deref() != Some("agent_states") {
            self.source_problem(
                i,
                label,
                "emits",
                "asterisk_queue_log emits \"contact_events\" or \"agent_states\"",
            );
        }
        if raw.connection.is_some() || raw.connection_file.is_some() || raw.connection_env.is_some()
        {
            // Asterisk's realtime queue_log table, through the sql poller.
            if raw.path.is_some() {
                self.source_problem(i, label, "path",
                    "set either path (the queue_log file) or connection (the realtime table), not both",
                );
            }
            let queue_log = self.queue_log_config(i, label, &mut raw);
            if raw.query.is_none() {
                raw.query = Some("SELECT * FROM queue_log".into());
            }
            if raw.cursor_column.is_none() {
                raw.cursor_column = Some("id".into());
                raw.initial_cursor.get_or_insert_with(|| "0".into());
            }
            return self.sql(i, label, emits, raw, Some(queue_log));
        }
        let Some(file) = raw.path.take() else {
            self.source_problem(
                i,
                label,
                "path",
                "is required: the queue_log file (e.g. /var/log/asterisk/queue_log), or \
                 connection_file for the realtime queue_log table",
            );
            return None;
        };
        let file = self.path(&file);
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            self.source_problem(i, label, "path", "names no file");
            return None;
        };
        let name = globset::escape(&name.to_string_lossy());
        raw.path = Some(dir.display().to_string());
        // The file and its rotated names (queue_log.1 ...), but not compressed rotations.
        raw.include = Some(vec![name.clone(), format!("{name}.*")]);
        if raw.exclude.is_none() {
            raw.exclude = Some(
                [".*", "*.gz", "*.bz2", "*.xz", "*.zst", "*.tmp"]
                    .map(String::from)
                    .to_vec(),
            );
        }
        raw.mode = Some("tail".into());
        raw.format = Some("asterisk_queue_log".into());
        self.files(i, label, emits, raw)
    }

    /// `channel` and `[source.queues]` of an `asterisk_queue_log` source.
    pub(super) fn queue_log_config(
        &mut self,
        i: usize,
        label: &str,
        raw: &mut RawSource,
    ) -> QueueLogConfig {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let mut queues = std::collections::HashMap::new();
        for (q, v) in raw.queues.take().unwrap_or_default() {
            let pair = match v {
                toml::Value::String(n) if !n.trim().is_empty() => Some((q.clone(), n)),
                toml::Value::Table(t) => {
                    let get = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    match (get("identifier"), get("name")) {
                        (Some(id), Some(n)) if t.len() == 2 => Some((id, n)),
                        (Some(id), None) if t.len() == 1 => Some((id, q.clone())),
                        (None, Some(n)) if t.len() == 1 => Some((q.clone(), n)),
                        _ => None,
                    }
                }
                _ => None,
            };
            match pair {
                Some(p) => {
                    queues.insert(q, p);
                }
                None => self.problem(
                    &at("queues"),
                    &key(&format!("queues.{q}")),
                    "write the queue's name, or { identifier = \"...\", name = \"...\" }",
                ),
            }
        }
        let channel = raw.channel.take().unwrap_or_else(|| "calls".into());
        if !crate::normalize::schema::CHANNELS.contains(&channel.as_str()) {
            self.source_problem(
                i,
                label,
                "channel",
                format!(
                    "{channel:?} is not a channel injixo knows: use one of {}",
                    crate::normalize::schema::CHANNELS.join(", ")
                ),
            );
        }
        QueueLogConfig { channel, queues }
    }

    /// The keys that turn a row into records: the map, `key`, `skip_if`, `expand` and the
    /// agent-state settings. `tabular` rows (csv, tsv) need a map; `builtin_states` sources
    /// (asterisk) make state changes without one.
    pub(super) fn rows(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        raw: &mut RawSource,
        tabular: bool,
        builtin_states: bool,
    ) -> Option<RowRules> {
        let key = |k: &str| format!("{label}.{k}");
        let expand = self.expand(i, label, raw);
        let millis = self.duration_unit(i, label, raw);
        let reading = self.reading(i, label, raw, millis);
        let known = raw.columns.clone();
        let known = known.as_deref();
        let row_key = self.row_key(i, label, raw, &reading, known);
        let skip_if = self.skip_if(i, label, raw, &reading, known);
        let states = self.agent_states(i, label, raw, builtin_states);
        let map = match (raw.map.take(), emits) {
            (Some(table), Some(emits)) => self
                .mapping(
                    i,
                    label,
                    (emits, states.is_some(), expand.is_some()),
                    table,
                    &reading,
                    known,
                )
                .map(|m| if millis { m.with_milliseconds() } else { m })
                .and_then(|m| match expand {
                    None => Some(m),
                    Some(e) => m
                        .with_expand(e)
                        .map_err(|e| self.source_problem(i, label, "expand", e))
                        .ok(),
                }),
            (None, _) if tabular => {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i)],
                    &key("map"),
                    "is required for csv and tsv: a [source.map] table from API fields to columns",
                );
                None
            }
            (None, _) => {
                self.not_applicable(
                    i,
                    label,
                    &[
                        ("timestamp_format", raw.timestamp_format.is_some()),
                        ("timezone", raw.timezone.is_some()),
                    ],
                    "applies only with a [source.map]: ndjson lines without a map are \
                     already in the API's shape",
                );
                None
            }
            (Some(_), None) => None,
        };
        if let Some(m) = &map {
            self.columns_named(i, label, raw, m, row_key.as_ref());
        }
        Some(RowRules {
            map,
            key: row_key,
            skip_if,
            states,
        })
    }

    /// `expand = "interval"` with its `interval` (or `interval_column`) and `expand_duration`.
    fn expand(&mut self, i: usize, label: &str, raw: &RawSource) -> Option<Expand> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let column = raw.interval_column.as_deref();
        let expand = match (raw.expand.as_deref(), raw.interval.as_deref()) {
            (None, None) if raw.expand_duration.is_none() && column.is_none() => None,
            (Some("interval"), interval) => {
                let length = match (interval, column) {
                    (Some(_), Some(_)) => {
                        self.source_problem(
                            i,
                            label,
                            "interval_column",
                            "and `interval` both give the interval's length: keep one",
                        );
                        None
                    }
                    (None, Some(c)) if c.trim().is_empty() => {
                        self.source_problem(
                            i,
                            label,
                            "interval_column",
                            "is empty: name the column that holds each row's interval length",
                        );
                        None
                    }
                    (None, Some(c)) => Some(IntervalLength::Column(c.to_owned())),
                    (interval, None) => {
                        if interval.is_none() {
                            self.source_problem(
                                i,
                                label,
                                "interval",
                                "is required with expand = \"interval\": the length of the \
                                 report's intervals, e.g. \"15m\" (or interval_column, the \
                                 column that holds each row's)",
                            );
                        }
                        let (least, most) = INTERVAL_RANGE;
                        Some(IntervalLength::Fixed(self.duration(
                            &at("interval"),
                            &key("interval"),
                            interval,
                            Duration::from_secs(900),
                            (least, most),
                        )))
                    }
                };
                let duration = self.one_of(
                    &at("expand_duration"),
                    &key("expand_duration"),
                    raw.expand_duration.as_deref(),
                    ExpandDuration::Total,
                    &[
                        ("total", ExpandDuration::Total),
                        ("average", ExpandDuration::Average),
                    ],
                );
                length.map(|interval| Expand { interval, duration })
            }
            (Some(other), _) => {
                self.source_problem(
                    i,
                    label,
                    "expand",
                    format!("{other:?} is not valid: the only expansion is \"interval\""),
                );
                None
            }
            (None, _) => {
                let k = if raw.interval.is_some() {
                    "interval"
                } else if column.is_some() {
                    "interval_column"
                } else {
                    "expand_duration"
                };
                self.problem(&at(k), &key(k), "applies only with expand = \"interval\"");
                None
            }
        };
        if expand.is_some() && raw.map.is_none() {
            self.source_problem(
                i,
                label,
                "expand",
                "needs a [source.map] naming the interval's columns",
            );
        }
        expand
    }

    /// `duration_unit`: whether plain numbers of seconds are milliseconds.
    fn duration_unit(&mut self, i: usize, label: &str, raw: &RawSource) -> bool {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let millis = self.one_of(
            &at("duration_unit"),
            &key("duration_unit"),
            raw.duration_unit.as_deref(),
            false,
            &[
                ("s", false),
                ("seconds", false),
                ("ms", true),
                ("milliseconds", true),
            ],
        );
        if raw.duration_unit.is_some() && raw.map.is_none() {
            self.source_problem(
                i,
                label,
                "duration_unit",
                "applies only with a [source.map]",
            );
        }
        millis
    }

    /// `key`: a template of columns, or `{ expr = "..." }`.
    fn row_key(
        &mut self,
        i: usize,
        label: &str,
        raw: &mut RawSource,
        reading: &Reading,
        known: Option<&[String]>,
    ) -> Option<KeyTemplate> {
        let key = |k: &str| format!("{label}.{k}");
        match raw.key.take() {
            None => None,
            Some(toml::Value::String(t)) => match KeyTemplate::parse(&t) {
                Ok(k) => Some(k),
                Err(e) => {
                    self.source_problem(i, label, "key", e);
                    None
                }
            },
            Some(toml::Value::Table(t))
                if t.len() == 1 && t.get("expr").is_some_and(|e| e.is_str()) =>
            {
                let source = t["expr"].as_str().unwrap_or_default();
                match Expr::compile(source, Want::Text, reading, known) {
                    Ok(e) => Some(KeyTemplate::expr(e)),
                    Err(e) => {
                        self.problem(&key_path(i, &["key", "expr"]), &key("key.expr"), e);
                        None
                    }
                }
            }
            Some(_) => {
                self.source_problem(
                    i,
                    label,
                    "key",
                    "write a template such as \"{call_id}\", or { expr = \"...\" }",
                );
                None
            }
        }
    }

    /// `skip_if`: patterns per column, and `expr`.
    fn skip_if(
        &mut self,
        i: usize,
        label: &str,
        raw: &mut RawSource,
        reading: &Reading,
        known: Option<&[String]>,
    ) -> SkipIf {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        match raw.skip_if.take() {
            None => SkipIf::default(),
            Some(table) => {
                let mut rules = Vec::new();
                let mut exprs = Vec::new();
                for (column, v) in table {
                    if column == "expr"
                        && let toml::Value::String(source) = &v
                    {
                        match Expr::compile(source, Want::Condition, reading, known) {
                            Ok(e) => exprs.push(e),
                            Err(e) => self.problem(
                                &key_path(i, &["skip_if", "expr"]),
                                &key("skip_if.expr"),
                                e,
                            ),
                        }
                        continue;
                    }
                    let patterns = match v {
                        toml::Value::String(p) => vec![p],
                        toml::Value::Array(a) => a
                            .into_iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect(),
                        _ => {
                            self.problem(
                                &at("skip_if"),
                                &key(&format!("skip_if.{column}")),
                                "write a pattern or a list of patterns, e.g. [\"TEST*\", \"Internal\"]",
                            );
                            continue;
                        }
                    };
                    rules.push((column, patterns));
                }
                let skip = SkipIf::new(rules).unwrap_or_else(|e| {
                    self.source_problem(i, label, "skip_if", e);
                    SkipIf::default()
                });
                exprs.into_iter().fold(skip, SkipIf::with_expr)
            }
        }
    }

    /// `emits = "agent_states"`: `agents`, `activities`, `logout_states`, `max_interval`,
    /// `open_interval_flush`; refused on other sources.
    fn agent_states(
        &mut self,
        i: usize,
        label: &str,
        raw: &mut RawSource,
        builtin_states: bool,
    ) -> Option<StatesConfig> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        if raw.emits.as_deref() == Some("agent_states") {
            if raw.map.is_none() && !builtin_states {
                self.source_problem(
                    i,
                    label,
                    "emits",
                    "\"agent_states\" needs a [source.map] with agentIdentifier, \
                     activityIdentifier and timestamp",
                );
            }
            let table = |this: &mut Self, name: &'static str, t: Option<toml::Table>| {
                let mut out = std::collections::HashMap::new();
                for (k, v) in t.unwrap_or_default() {
                    match v {
                        toml::Value::String(v) if !v.trim().is_empty() => {
                            out.insert(k, v);
                        }
                        _ => this.problem(
                            &at(name),
                            &key(&format!("{name}.{k}")),
                            "write the identifier as a non-empty string",
                        ),
                    }
                }
                out
            };
            let agents = table(self, "agents", raw.agents.take());
            let activities = table(self, "activities", raw.activities.take());
            let max_interval = self.duration(
                &at("max_interval"),
                &key("max_interval"),
                raw.max_interval.as_deref(),
                Duration::from_secs(12 * 3600),
                (Duration::from_secs(60), Duration::from_secs(7 * 86_400)),
            );
            let flush = raw.open_interval_flush.as_deref().map(|f| {
                self.duration(
                    &at("open_interval_flush"),
                    &key("open_interval_flush"),
                    Some(f),
                    Duration::from_secs(60),
                    (Duration::from_secs(1), Duration::from_secs(86_400)),
                )
            });
            let signed = |d: Duration| jiff::SignedDuration::try_from(d).unwrap_or_default();
            Some(StatesConfig {
                settings: crate::normalize::intervals::Settings {
                    max_interval: signed(max_interval),
                    flush_after: flush.map(signed),
                    // Set by the source's kind (`SourceKind::remember_repeats`).
                    remember: jiff::SignedDuration::ZERO,
                },
                agents,
                activities,
                logout: raw.logout_states.take().unwrap_or_else(|| {
                    ["logout", "logged_out", "loggedout", "offline"]
                        .map(String::from)
                        .to_vec()
                }),
            })
        } else {
            self.not_applicable(
                i,
                label,
                &[
                    ("agents", raw.agents.is_some()),
                    ("activities", raw.activities.is_some()),
                    ("logout_states", raw.logout_states.is_some()),
                    ("open_interval_flush", raw.open_interval_flush.is_some()),
                    ("max_interval", raw.max_interval.is_some()),
                ],
                "applies only with emits = \"agent_states\"",
            );
            None
        }
    }

    /// Every column the map and the key read is one that `columns` names, when it is given.
    fn columns_named(
        &mut self,
        i: usize,
        label: &str,
        raw: &RawSource,
        m: &Mapping,
        row_key: Option<&KeyTemplate>,
    ) {
        let key = |k: &str| format!("{label}.{k}");
        let Some(cols) = &raw.columns else {
            return;
        };
        let keyed = row_key.into_iter().flat_map(|k| k.columns());
        for c in m.columns().into_iter().chain(keyed) {
            if !cols.iter().any(|x| x == c) {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("map")],
                    &key("map"),
                    format!("reads column `{c}`, which `columns` does not name"),
                );
            }
        }
    }

    /// How the source's values are read: `timestamp_format`, `timezone`, `duration_unit`.
    fn reading(&mut self, i: usize, label: &str, raw: &RawSource, millis: bool) -> Reading {
        let format = match raw.timestamp_format.as_deref().map(TimeFormat::parse) {
            None => TimeFormat::Rfc3339,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                self.problem(
                    &key_path(i, &["timestamp_format"]),
                    &format!("{label}.timestamp_format"),
                    e,
                );
                TimeFormat::Rfc3339
            }
        };
        let zone = self.zone(i, label, raw.timezone.as_deref());
        if let TimeFormat::Pattern(p) = &format
            && raw.timezone.is_none()
            && !format.carries_offset()
        {
            self.warnings.push(format!(
                "{label}: timestamp_format {p:?} reads local times and no `timezone` is set, so \
                 they are read as UTC: set `timezone` to the zone the ACD writes them in (e.g. \
                 \"Europe/Berlin\"), or to \"UTC\" to say so"
            ));
        }
        Reading {
            time: TimeParser::new(format, zone),
            millis,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn mapping(
        &mut self,
        i: usize,
        label: &str,
        (emits, states, expands): (Emits, bool, bool),
        table: toml::Table,
        reading: &Reading,
        known: Option<&[String]>,
    ) -> Option<Mapping> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let before = self.problems.len();
        let mut fields = Vec::new();
        for (k, v) in table {
            let path = vec![
                Seg::Key("source"),
                Seg::Index(i),
                Seg::Key("map"),
                Seg::Owned(k.clone()),
            ];
            let mkey = format!("{label}.map.{k}");
            let parsed = if states {
                Mapping::STATE_FIELDS
                    .iter()
                    .copied()
                    .find(|f| f.name() == k)
                    .ok_or_else(|| {
                        format!(
                            "`{k}` is not a field of agent state changes (fields: \
                             agentIdentifier, activityIdentifier, timestamp)"
                        )
                    })
            } else {
                ApiField::parse(&k, emits)
            };
            let field = match parsed {
                Ok(f) => f,
                Err(e) => {
                    self.problem(&path, &mkey, e);
                    continue;
                }
            };
            let want = match field {
                ApiField::Offered | ApiField::Handled if expands => Want::Count,
                ApiField::Offered | ApiField::Handled => Want::Bool,
                ApiField::Duration => Want::Seconds,
                ApiField::Timestamp | ApiField::StartTime | ApiField::EndTime => Want::Time,
                _ => Want::Text,
            };
            let source = self.field_source(v, want, reading, known);
            match source {
                Ok(s) => fields.push((field, s)),
                Err(e) => self.problem(&path, &mkey, e),
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let time = reading.time.clone();
        let built = if states {
            Mapping::states(fields, time)
        } else {
            Mapping::new(emits, fields, time)
        };
        match built {
            Ok(m) => Some(m),
            Err(e) => {
                self.problem(&at("map"), &format!("{label}.map"), e);
                None
            }
        }
    }

    /// One `[source.map]` entry: `"column"`, `{ column }`, `{ value }`, `{ template }`,
    /// `{ expr }`, or a column or expression with `values`.
    fn field_source(
        &mut self,
        v: toml::Value,
        want: Want,
        reading: &Reading,
        known: Option<&[String]>,
    ) -> Result<FieldSource, String> {
        const FORMS: &str = "write a column name, { column = \"c\" }, { value = ... }, \
             { template = \"{a}_{b}\" }, { expr = \"...\" }, or { column = \"c\", values = \
             { A = true, \"*\" = false } }";
        let mut t = match v {
            toml::Value::String(col) if !col.is_empty() => return Ok(FieldSource::Column(col)),
            toml::Value::Table(t) => t,
            _ => return Err(FORMS.to_owned()),
        };
        if let Some(values) = t.remove("values") {
            let inner = match (t.remove("column"), t.remove("expr")) {
                (Some(toml::Value::String(c)), None) if t.is_empty() => FieldSource::Column(c),
                (None, Some(toml::Value::String(e))) if t.is_empty() => {
                    FieldSource::Expr(Expr::compile(&e, Want::Text, reading, known)?)
                }
                _ => {
                    return Err(
                        "`values` looks up a `column` or an `expr`: write { column = \"c\", \
                         values = { ... } }"
                            .into(),
                    );
                }
            };
            let toml::Value::Table(values) = values else {
                return Err("`values` is a table: { AGENT = true, \"*\" = false }".into());
            };
            let mut lookup = Lookup {
                table: Vec::new(),
                otherwise: None,
            };
            for (k, v) in values {
                let text = literal(&v)
                    .ok_or_else(|| format!("values.{k}: write text, a number or true/false"))?;
                if k == "*" {
                    lookup.otherwise = Some(text);
                } else {
                    lookup.table.push((k, text));
                }
            }
            if lookup.table.is_empty() {
                return Err("`values` lists no value: { AGENT = true, \"*\" = false }".into());
            }
            return Ok(FieldSource::Lookup(Box::new(inner), lookup));
        }
        if t.len() != 1 {
            return Err(FORMS.to_owned());
        }
        let (kind, val) = t.into_iter().next().expect("one entry");
        match (kind.as_str(), val) {
            ("column", toml::Value::String(c)) => Ok(FieldSource::Column(c)),
            ("template", toml::Value::String(t)) => FieldSource::template(&t),
            ("expr", toml::Value::String(e)) => {
                Ok(FieldSource::Expr(Expr::compile(&e, want, reading, known)?))
            }
            ("value", v) => literal(&v)
                .map(FieldSource::Literal)
                .ok_or_else(|| "write text, a number or true/false".to_owned()),
            (other, _) => Err(format!("`{other}` is not understood: {FORMS}")),
        }
    }
}

/// A TOML value as the text a `value` is kept as.
fn literal(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A key path below `source[i]`.
fn key_path(i: usize, keys: &[&'static str]) -> Vec<Seg> {
    let mut path = vec![Seg::Key("source"), Seg::Index(i)];
    path.extend(keys.iter().map(|k| Seg::Key(k)));
    path
}
