//! `[source.map]`: how a row of columns becomes an API record.
//!
//! Each API field takes a column, a literal or a template of columns, and is converted by the
//! field's type: timestamps through the source's [`TimeParser`], booleans from the usual
//! spellings, durations from seconds (decimal point or comma) or `hh:mm:ss`. Errors name the API
//! field and the column so the parked row tells the operator what to fix.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::expr::{Expr, Out};
use super::schema::CHANNELS;
use super::time::{self, TimeParser};
use crate::types::Emits;

/// A field of an API record that a map can fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiField {
    Timestamp,
    QueueName,
    QueueIdentifier,
    Channel,
    Offered,
    Handled,
    Duration,
    AgentIdentifier,
    ActivityIdentifier,
    StartTime,
    EndTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Bool,
    Seconds,
    Time,
    Channel,
    /// A number of contacts (`expand = "interval"`).
    Count,
}

impl ApiField {
    /// The fields each record kind needs, in the order they are documented.
    pub fn required(emits: Emits) -> &'static [ApiField] {
        use ApiField::*;
        match emits {
            Emits::ContactEvents => &[
                Timestamp,
                QueueName,
                QueueIdentifier,
                Channel,
                Offered,
                Handled,
                Duration,
            ],
            Emits::AgentStatuses => &[AgentIdentifier, ActivityIdentifier, StartTime, EndTime],
        }
    }

    pub fn name(self) -> &'static str {
        use ApiField::*;
        match self {
            Timestamp => "timestamp",
            QueueName => "queueName",
            QueueIdentifier => "queueIdentifier",
            Channel => "channel",
            Offered => "offered",
            Handled => "handled",
            Duration => "duration",
            AgentIdentifier => "agentIdentifier",
            ActivityIdentifier => "activityIdentifier",
            StartTime => "startTime",
            EndTime => "endTime",
        }
    }

    /// Looks a map key up among the fields of `emits`.
    pub fn parse(key: &str, emits: Emits) -> Result<Self, String> {
        Self::required(emits)
            .iter()
            .copied()
            .find(|f| f.name() == key)
            .ok_or_else(|| {
                let names: Vec<_> = Self::required(emits).iter().map(|f| f.name()).collect();
                format!(
                    "`{key}` is not a field of {} records (fields: {})",
                    emits.as_str(),
                    names.join(", ")
                )
            })
    }

    fn kind(self) -> Kind {
        use ApiField::*;
        match self {
            Timestamp | StartTime | EndTime => Kind::Time,
            Offered | Handled => Kind::Bool,
            Duration => Kind::Seconds,
            Channel => Kind::Channel,
            QueueName | QueueIdentifier | AgentIdentifier | ActivityIdentifier => Kind::Text,
        }
    }
}

/// Where a field's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldSource {
    Column(String),
    Literal(String),
    Template(Vec<Part>),
    /// `{ expr = "..." }`: an expression over the row's columns.
    Expr(Expr),
    /// `{ column = "c", values = { ... } }` (or `expr` instead of `column`): the text of the
    /// column or expression looked up in a table.
    Lookup(Box<FieldSource>, Lookup),
}

/// `values = { AGENT = true, HANG = false, "*" = false }`: a column's words translated; `"*"`
/// is every other word. Values are kept as the text a `value` would be, and converted by the
/// field's type.
#[derive(Clone, Debug, PartialEq)]
pub struct Lookup {
    pub table: Vec<(String, String)>,
    pub otherwise: Option<String>,
}

impl Lookup {
    fn find(&self, key: &str) -> Option<&str> {
        self.table
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .or(self.otherwise.as_deref())
    }

    fn listed(&self) -> String {
        let mut keys: Vec<String> = self.table.iter().map(|(k, _)| format!("{k:?}")).collect();
        if keys.len() > 8 {
            keys.truncate(8);
            keys.push("...".into());
        }
        keys.join(", ")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Column(String),
}

/// The columns a template's parts read, in order.
pub(super) fn part_columns(parts: &[Part]) -> impl Iterator<Item = &str> {
    parts.iter().filter_map(|p| match p {
        Part::Column(c) => Some(c.as_str()),
        Part::Text(_) => None,
    })
}

impl FieldSource {
    /// Parses `"{queue}_{site}"`: columns in braces, everything else literal.
    pub fn template(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template {s:?} has a '{{' without its '}}'"))?;
            let column = &rest[open + 1..open + close];
            if column.is_empty() {
                return Err(format!("template {s:?} has an empty '{{}}'"));
            }
            parts.push(Part::Column(column.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(format!(
                "template {s:?} names no column: write {{column}}, or use `value` for a constant"
            ));
        }
        Ok(FieldSource::Template(parts))
    }

    fn columns(&self) -> Vec<&str> {
        match self {
            FieldSource::Column(c) => vec![c.as_str()],
            FieldSource::Literal(_) => vec![],
            FieldSource::Template(parts) => part_columns(parts).collect(),
            FieldSource::Expr(e) => e.columns().collect(),
            FieldSource::Lookup(inner, _) => inner.columns(),
        }
    }

    /// The column a value came from, for messages (an expression names its own).
    fn column(&self) -> Option<String> {
        match self {
            FieldSource::Column(c) => Some(c.clone()),
            FieldSource::Lookup(inner, _) => inner.column(),
            _ => None,
        }
    }
}

/// Fills a template's columns from a row.
pub(super) fn render(
    parts: &[Part],
    row: &dyn Row,
    field: &'static str,
) -> Result<String, RowError> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Column(c) => out.push_str(&row.get(c).ok_or_else(|| RowError {
                field,
                column: Some(c.clone()),
                message: "the column is missing from this row".into(),
            })?),
        }
    }
    Ok(out)
}

/// An expression's value as text (a lookup's key, a row's key).
pub(super) fn out_text(out: Out) -> String {
    match out {
        Out::Bool(b) => b.to_string(),
        Out::Number(n) | Out::Seconds(n) => n.to_string(),
        Out::Int(n) => n.to_string(),
        Out::Text(t) => t,
        Out::Time(t) => time::to_api(t),
    }
}

/// `expand = "interval"`: a row of interval totals becomes one contact event per contact.
#[derive(Clone, Debug, PartialEq)]
pub struct Expand {
    /// The length of the report's intervals; `timestamp` is the start of one.
    pub interval: IntervalLength,
    /// What the `duration` column holds.
    pub duration: ExpandDuration,
}

/// How long a report's interval is: the same for every row (`interval`), or the row's own
/// (`interval_column`), as interval tables that keep each row's length have it (Avaya CMS's
/// INTRVL, Cisco's ReportingInterval: both in minutes).
#[derive(Clone, Debug, PartialEq)]
pub enum IntervalLength {
    Fixed(std::time::Duration),
    /// A column holding minutes as a whole number, or a length such as `15m`.
    Column(String),
}

/// The shortest and the longest interval a row may report.
pub const INTERVAL_RANGE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(86_400),
);

impl IntervalLength {
    fn of(&self, row: &dyn Row) -> Result<std::time::Duration, RowError> {
        let column = match self {
            IntervalLength::Fixed(d) => return Ok(*d),
            IntervalLength::Column(c) => c,
        };
        let error = |message: String| RowError {
            field: "interval",
            column: Some(column.clone()),
            message,
        };
        let Some(raw) = row.get(column) else {
            return Err(error(format!(
                "has no value (NULL, or `{column}` is not a column of the rows): a row with \
                 contacts needs its interval's length"
            )));
        };
        let text = raw.trim();
        if text.is_empty() {
            return Err(error(
                "is empty: a row with contacts needs its interval's length".into(),
            ));
        }
        let length = match text.parse::<u64>() {
            Ok(minutes) => std::time::Duration::from_secs(minutes.saturating_mul(60)),
            Err(_) => humantime::parse_duration(text).map_err(|_| {
                error(format!(
                    "{text:?} is neither a number of minutes nor a length such as 15m"
                ))
            })?,
        };
        let (least, most) = INTERVAL_RANGE;
        if length < least || length > most {
            return Err(error(format!(
                "{text:?} is not an interval length between one second and one day"
            )));
        }
        Ok(length)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpandDuration {
    /// The handle time of all handled contacts of the interval.
    Total,
    /// The average handle time of a handled contact.
    Average,
}

/// The most contacts one interval row may expand to.
pub const EXPAND_MAX: u64 = 10_000;

/// A row of named values: a CSV line with its header, or a JSON object.
pub trait Row {
    fn get(&self, column: &str) -> Option<Cow<'_, str>>;
}

/// A row mapping failure: which field, from which column, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub field: &'static str,
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "column `{c}` → {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// A validated `[source.map]`.
#[derive(Clone, Debug)]
pub struct Mapping {
    emits: Emits,
    fields: Vec<(ApiField, FieldSource)>,
    time: TimeParser,
    expand: Option<Expand>,
    /// Durations written as plain numbers are milliseconds (`duration_unit = "ms"`).
    millis: bool,
}

impl Mapping {
    /// Builds a mapping; every field of `emits` must be present, and literals must convert.
    pub fn new(
        emits: Emits,
        fields: Vec<(ApiField, FieldSource)>,
        time: TimeParser,
    ) -> Result<Self, String> {
        let why = format!(
            "every field of {} records needs a column, value or template",
            emits.as_str()
        );
        require(ApiField::required(emits), &why, &fields)?;
        Self::build(emits, fields, time)
    }

    /// A mapping whose literals convert.
    fn build(
        emits: Emits,
        fields: Vec<(ApiField, FieldSource)>,
        time: TimeParser,
    ) -> Result<Self, String> {
        let mapping = Self {
            emits,
            fields,
            time,
            expand: None,
            millis: false,
        };
        mapping.check_literals(|field, e| format!("value for `{}`: {e}", field.name()))?;
        Ok(mapping)
    }

    /// Converts every literal of the map, as each row would; the first failure, worded by
    /// `error`.
    fn check_literals(&self, error: impl Fn(ApiField, String) -> String) -> Result<(), String> {
        for (field, source) in &self.fields {
            match source {
                FieldSource::Literal(v) => {
                    self.convert(*field, v).map_err(|e| error(*field, e))?;
                }
                FieldSource::Lookup(_, lookup) => {
                    let all = lookup.table.iter().map(|(k, v)| (k.as_str(), v));
                    let all = all.chain(lookup.otherwise.iter().map(|v| ("*", v)));
                    for (k, v) in all {
                        self.convert(*field, v)
                            .map_err(|e| error(*field, format!("values.{k}: {e}")))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn emits(&self) -> Emits {
        self.emits
    }

    /// Turns rows of interval totals into contact events (`expand = "interval"`); the
    /// `offered` and `handled` columns then hold counts.
    pub fn with_expand(mut self, expand: Expand) -> Result<Self, String> {
        if self.emits != Emits::ContactEvents {
            return Err("expand = \"interval\" applies only to contact events".into());
        }
        self.expand = Some(expand);
        self.check_literals(|field, e| {
            format!(
                "`{}` must hold a number of contacts per interval: {e}",
                field.name()
            )
        })?;
        Ok(self)
    }

    /// The fields a map of agent state changes names: the agent, its state and when it began.
    pub const STATE_FIELDS: [ApiField; 3] = [
        ApiField::AgentIdentifier,
        ApiField::ActivityIdentifier,
        ApiField::Timestamp,
    ];

    /// A map whose rows are agent state changes (`emits = "agent_states"`): `agentIdentifier`,
    /// `activityIdentifier` (the ACD's state, before `[source.activities]`) and `timestamp`.
    pub fn states(fields: Vec<(ApiField, FieldSource)>, time: TimeParser) -> Result<Self, String> {
        require(
            &Self::STATE_FIELDS,
            "agent state changes need agentIdentifier, activityIdentifier and timestamp",
            &fields,
        )?;
        if let Some((f, _)) = fields.iter().find(|(f, _)| !Self::STATE_FIELDS.contains(f)) {
            return Err(format!(
                "`{}` is not a field of agent state changes (fields: agentIdentifier, \
                 activityIdentifier, timestamp)",
                f.name()
            ));
        }
        Self::build(Emits::AgentStatuses, fields, time)
    }

    /// A row of a states map: (agent, state, when).
    pub fn change(&self, row: &dyn Row) -> Result<(String, String, jiff::Timestamp), RowError> {
        let values = self.values(row)?;
        let text = |f: ApiField| {
            values[f as usize]
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let at = time::parse_rfc3339(&text(ApiField::Timestamp)).map_err(|message| RowError {
            field: "timestamp",
            column: None,
            message,
        })?;
        let (agent, activity) = (
            text(ApiField::AgentIdentifier),
            text(ApiField::ActivityIdentifier),
        );
        for (field, value) in [
            ("agentIdentifier", &agent),
            ("activityIdentifier", &activity),
        ] {
            super::schema::check_name(field, value).map_err(|message| RowError {
                field,
                column: None,
                message,
            })?;
        }
        Ok((agent, activity, at))
    }

    /// Plain numbers in `duration` are milliseconds; `hh:mm:ss` stays what it says.
    pub fn with_milliseconds(mut self) -> Self {
        self.millis = true;
        self
    }

    pub fn expands(&self) -> bool {
        self.expand.is_some()
    }

    /// Every column the map reads, with the interval's length when a column holds it.
    pub fn columns(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.fields.iter().flat_map(|(_, s)| s.columns()).collect();
        if let Some(Expand {
            interval: IntervalLength::Column(c),
            ..
        }) = &self.expand
        {
            all.push(c);
        }
        all
    }

    /// Maps one row to an API record as compact JSON.
    pub fn apply(&self, row: &dyn Row) -> Result<String, RowError> {
        let mut values = self.values(row)?;
        self.record(&mut values)
    }

    /// Maps one row to its records: one, or with `expand` one per contact of the interval
    /// (none for an interval without contacts).
    pub fn apply_all(&self, row: &dyn Row) -> Result<Vec<String>, RowError> {
        let Some(expand) = &self.expand else {
            return self.apply(row).map(|r| vec![r]);
        };
        let values = self.values(row)?;
        let count = |values: &[Option<Value>; 11], f: ApiField| {
            values[f as usize]
                .as_ref()
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let offered = count(&values, ApiField::Offered);
        let handled = count(&values, ApiField::Handled);
        let error = |field: ApiField, message: String| RowError {
            field: field.name(),
            column: None,
            message,
        };
        if handled > offered {
            return Err(error(
                ApiField::Handled,
                format!("{handled} handled is more than {offered} offered"),
            ));
        }
        if offered > EXPAND_MAX {
            return Err(error(
                ApiField::Offered,
                format!(
                    "{offered} contacts in one interval is more than the {EXPAND_MAX} this expands"
                ),
            ));
        }
        if offered == 0 {
            return Ok(Vec::new());
        }
        let interval = expand.interval.of(row)?;
        let duration = values[ApiField::Duration as usize]
            .as_ref()
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let per_contact = match expand.duration {
            ExpandDuration::Average => duration,
            ExpandDuration::Total if handled > 0 => duration / handled as f64,
            ExpandDuration::Total => 0.0,
        };
        let start = values[ApiField::Timestamp as usize]
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|s| time::parse_rfc3339(s).ok())
            .ok_or_else(|| error(ApiField::Timestamp, "no interval start".into()))?;
        let interval_ms = interval.as_millis() as i64;
        let mut out = Vec::with_capacity(offered as usize);
        for k in 0..offered {
            // Evenly inside the interval, at whole seconds: the middle of the k-th of `offered`
            // equal slices.
            let offset_ms = interval_ms * (2 * k as i64 + 1) / (2 * offered as i64);
            let at = start
                .checked_add(jiff::SignedDuration::from_secs(offset_ms / 1000))
                .map_err(|e| error(ApiField::Timestamp, e.to_string()))?;
            let is_handled = k < handled;
            let mut v = values.clone();
            v[ApiField::Timestamp as usize] = Some(Value::from(time::to_api(at)));
            v[ApiField::Offered as usize] = Some(Value::from(true));
            v[ApiField::Handled as usize] = Some(Value::from(is_handled));
            v[ApiField::Duration as usize] =
                Some(Value::from(if is_handled { per_contact } else { 0.0 }));
            out.push(self.record(&mut v)?);
        }
        Ok(out)
    }

    fn values(&self, row: &dyn Row) -> Result<[Option<Value>; 11], RowError> {
        let mut values: [Option<Value>; 11] = Default::default();
        for (field, source) in &self.fields {
            values[*field as usize] = Some(self.value(*field, source, row)?);
        }
        Ok(values)
    }

    fn record(&self, values: &mut [Option<Value>; 11]) -> Result<String, RowError> {
        let mut take = |f: ApiField| values[f as usize].take().unwrap_or(Value::Null);
        let record = match self.emits {
            Emits::ContactEvents => json!({
                "properties": {
                    "offered": take(ApiField::Offered),
                    "handled": take(ApiField::Handled),
                    "duration": take(ApiField::Duration),
                },
                "queueName": take(ApiField::QueueName),
                "queueIdentifier": take(ApiField::QueueIdentifier),
                "timestamp": take(ApiField::Timestamp),
                "channel": take(ApiField::Channel),
            }),
            Emits::AgentStatuses => json!({
                "agentIdentifier": take(ApiField::AgentIdentifier),
                "activityIdentifier": take(ApiField::ActivityIdentifier),
                "startTime": take(ApiField::StartTime),
                "endTime": take(ApiField::EndTime),
            }),
        };
        let instant = |key: &str| {
            record[key]
                .as_str()
                .and_then(|s| time::parse_rfc3339(s).ok())
        };
        if self.emits == Emits::AgentStatuses && instant("endTime") < instant("startTime") {
            return Err(RowError {
                field: "endTime",
                column: None,
                message: "ends before startTime".into(),
            });
        }
        Ok(record.to_string())
    }

    /// One field's value from a row.
    fn value(
        &self,
        field: ApiField,
        source: &FieldSource,
        row: &dyn Row,
    ) -> Result<Value, RowError> {
        let error = |message: String| RowError {
            field: field.name(),
            column: source.column(),
            message,
        };
        match source {
            FieldSource::Expr(e) => {
                let out = e.eval(row).map_err(error)?;
                self.convert_out(field, out).map_err(error)
            }
            FieldSource::Lookup(inner, lookup) => {
                let key = match &**inner {
                    FieldSource::Expr(e) => out_text(e.eval(row).map_err(error)?),
                    other => self.resolve(field, other, row)?.trim().to_owned(),
                };
                let Some(found) = lookup.find(&key) else {
                    return Err(error(format!(
                        "{key:?} is not among the values ({}): add it, or \"*\" for every other value",
                        lookup.listed()
                    )));
                };
                self.convert(field, found).map_err(error)
            }
            _ => {
                let raw = self.resolve(field, source, row)?;
                self.convert(field, &raw).map_err(error)
            }
        }
    }

    /// An expression's value as the field's type.
    fn convert_out(&self, field: ApiField, out: Out) -> Result<Value, String> {
        let kind = match field.kind() {
            Kind::Bool if self.expand.is_some() => Kind::Count,
            k => k,
        };
        match (kind, out) {
            (Kind::Bool, Out::Bool(b)) => Ok(Value::from(b)),
            (Kind::Seconds, Out::Number(n) | Out::Seconds(n)) if n.is_finite() && n >= 0.0 => {
                Ok(Value::from(n))
            }
            (Kind::Seconds, Out::Int(n)) if n >= 0 => Ok(Value::from(n as f64)),
            (Kind::Seconds, Out::Number(n) | Out::Seconds(n)) => Err(format!(
                "{n} is not a duration (it must be 0 or more seconds)"
            )),
            (Kind::Seconds, Out::Int(n)) => Err(format!(
                "{n} is not a duration (it must be 0 or more seconds)"
            )),
            (Kind::Time, Out::Time(t)) => Ok(Value::from(time::to_api(t))),
            (Kind::Count, Out::Int(n)) if n >= 0 => Ok(Value::from(n as u64)),
            (_, Out::Text(t)) => self.convert(field, &t),
            (Kind::Text | Kind::Channel, Out::Int(n)) => self.convert(field, &n.to_string()),
            (_, other) => Err(format!(
                "the expression gave {}, which is not {}",
                out_text(other),
                match kind {
                    Kind::Bool => "true or false",
                    Kind::Seconds => "a duration",
                    Kind::Time => "a time",
                    Kind::Count => "a number of contacts",
                    Kind::Text | Kind::Channel => "text",
                }
            )),
        }
    }

    fn resolve<'r>(
        &self,
        field: ApiField,
        source: &'r FieldSource,
        row: &'r dyn Row,
    ) -> Result<Cow<'r, str>, RowError> {
        let missing = |c: &str| RowError {
            field: field.name(),
            column: Some(c.to_owned()),
            message: "the column is missing from this row".into(),
        };
        match source {
            FieldSource::Column(c) => row.get(c).ok_or_else(|| missing(c)),
            FieldSource::Literal(v) => Ok(Cow::Borrowed(v.as_str())),
            FieldSource::Template(parts) => render(parts, row, field.name()).map(Cow::Owned),
            FieldSource::Expr(_) | FieldSource::Lookup(..) => {
                unreachable!("expressions and lookups are read by value()")
            }
        }
    }

    fn convert(&self, field: ApiField, raw: &str) -> Result<Value, String> {
        let s = raw.trim();
        let kind = match field.kind() {
            Kind::Bool if self.expand.is_some() => Kind::Count,
            k => k,
        };
        match kind {
            Kind::Count => s
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| format!("{s:?} is not a number of contacts")),
            Kind::Text if s.is_empty() => Err("is empty".into()),
            Kind::Text => super::schema::check_name(field.name(), s).map(|()| Value::from(s)),
            Kind::Channel => {
                let lower = s.to_ascii_lowercase();
                if CHANNELS.contains(&lower.as_str()) {
                    Ok(Value::from(lower))
                } else {
                    Err(format!("{s:?} is not one of {}", CHANNELS.join(", ")))
                }
            }
            Kind::Bool => parse_bool(s).map(Value::from),
            Kind::Seconds if self.millis && !s.contains(':') => {
                parse_seconds(s).map(|ms| Value::from(ms / 1000.0))
            }
            Kind::Seconds => parse_seconds(s).map(Value::from),
            Kind::Time => self.time.parse(s).map(|t| Value::from(time::to_api(t))),
        }
    }
}

/// Every field of `required` has a column, value or template; else which lack one, and `why`.
fn require(
    required: &[ApiField],
    why: &str,
    fields: &[(ApiField, FieldSource)],
) -> Result<(), String> {
    let missing: Vec<_> = required
        .iter()
        .filter(|f| !fields.iter().any(|(g, _)| g == *f))
        .map(|f| f.name())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("map lacks {} ({why})", missing.join(", ")))
    }
}

/// `true/false`, `1/0`, `yes/no`, `y/n`, `t/f`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "t" => Ok(true),
        "false" | "0" | "no" | "n" | "f" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true/false, 1/0, yes/no)")),
    }
}

/// Seconds as `124.6`, `124,6` or `hh:mm:ss` / `mm:ss`.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a duration (seconds like 124.6, or hh:mm:ss)");
    let secs = if s.contains(':') {
        let mut total = 0.0;
        let parts: Vec<_> = s.split(':').collect();
        if parts.len() > 3 {
            return Err(bad());
        }
        for p in parts {
            let v: f64 = p.parse().map_err(|_| bad())?;
            total = total * 60.0 + v;
        }
        total
    } else if s.contains(',') && !s.contains('.') {
        s.replace(',', ".").parse().map_err(|_| bad())?
    } else {
        s.parse().map_err(|_| bad())?
    };
    if secs.is_finite() && secs >= 0.0 {
        Ok(secs)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::schema;
    use crate::normalize::time::TimeFormat;
    use std::collections::HashMap;

    struct MapRow(HashMap<&'static str, &'static str>);
    impl Row for MapRow {
        fn get(&self, column: &str) -> Option<Cow<'_, str>> {
            self.0.get(column).map(|v| Cow::Borrowed(*v))
        }
    }

    fn contact_mapping() -> Mapping {
        use ApiField::*;
        Mapping::new(
            Emits::ContactEvents,
            vec![
                (Timestamp, FieldSource::Column("start".into())),
                (QueueName, FieldSource::Column("queue".into())),
                (
                    QueueIdentifier,
                    FieldSource::template("{site}_{queue}").unwrap(),
                ),
                (Channel, FieldSource::Literal("calls".into())),
                (Offered, FieldSource::Literal("true".into())),
                (Handled, FieldSource::Column("answered".into())),
                (Duration, FieldSource::Column("talk".into())),
            ],
            TimeParser::new(
                TimeFormat::Pattern("%Y-%m-%d %H:%M:%S".into()),
                jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            ),
        )
        .unwrap()
    }

    #[test]
    fn a_csv_row_becomes_a_valid_contact_event() {
        let row = MapRow(HashMap::from([
            ("start", "2021-12-06 11:34:22"),
            ("queue", "Support"),
            ("site", "HH"),
            ("answered", "Y"),
            ("talk", "00:02:04"),
        ]));
        let out = contact_mapping().apply(&row).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        schema::check(Emits::ContactEvents, &v).unwrap();
        assert_eq!(v["timestamp"], "2021-12-06T10:34:22Z");
        assert_eq!(v["queueIdentifier"], "HH_Support");
        assert_eq!(v["properties"]["handled"], true);
        assert_eq!(v["properties"]["duration"], 124.0);
    }

    #[test]
    fn a_bad_cell_names_field_and_column() {
        let row = MapRow(HashMap::from([
            ("start", "2021-12-06 11:34:22"),
            ("queue", "Support"),
            ("site", "HH"),
            ("answered", "maybe"),
            ("talk", "1"),
        ]));
        let err = contact_mapping().apply(&row).unwrap_err();
        assert_eq!(err.field, "handled");
        assert_eq!(err.column.as_deref(), Some("answered"));
        assert!(err.to_string().contains("not a boolean"), "{err}");
    }

    #[test]
    fn a_map_missing_required_fields_lists_them() {
        let err = Mapping::new(
            Emits::AgentStatuses,
            vec![(ApiField::AgentIdentifier, FieldSource::Column("a".into()))],
            TimeParser::utc_rfc3339(),
        )
        .unwrap_err();
        assert!(
            err.contains("activityIdentifier, startTime, endTime"),
            "{err}"
        );
    }

    #[test]
    fn durations_in_the_usual_spellings() {
        assert_eq!(parse_seconds("124.6").unwrap(), 124.6);
        assert_eq!(parse_seconds("124,6").unwrap(), 124.6);
        assert_eq!(parse_seconds("1:00:01").unwrap(), 3601.0);
        assert_eq!(parse_seconds("02:04").unwrap(), 124.0);
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("1:2:3:4").is_err());
    }

    #[test]
    fn durations_in_milliseconds_when_configured() {
        let row = MapRow(HashMap::from([
            ("start", "2021-12-06 11:34:22"),
            ("queue", "Support"),
            ("site", "HH"),
            ("answered", "1"),
            ("talk", "124600"),
        ]));
        let out = contact_mapping().with_milliseconds().apply(&row).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["properties"]["duration"], 124.6);
    }

    /// Interval rows: their start, queue, counts of offered and handled, and `duration`.
    fn interval_mapping(duration: &str) -> Mapping {
        use ApiField::*;
        Mapping::new(
            Emits::ContactEvents,
            vec![
                (Timestamp, FieldSource::Column("start".into())),
                (QueueName, FieldSource::Column("queue".into())),
                (QueueIdentifier, FieldSource::Column("queue".into())),
                (Channel, FieldSource::Literal("calls".into())),
                (Offered, FieldSource::Column("offered".into())),
                (Handled, FieldSource::Column("handled".into())),
                (Duration, FieldSource::Column(duration.into())),
            ],
            TimeParser::utc_rfc3339(),
        )
        .unwrap()
    }

    #[test]
    fn an_interval_row_expands_inside_its_interval_with_its_totals() {
        let map = interval_mapping("aht");
        let expand = |duration| Expand {
            interval: IntervalLength::Fixed(std::time::Duration::from_secs(900)),
            duration,
        };
        let row = |offered: &'static str, handled: &'static str| {
            MapRow(HashMap::from([
                ("start", "2021-12-06T11:30:00Z"),
                ("queue", "Support"),
                ("offered", offered),
                ("handled", handled),
                ("aht", "60"),
            ]))
        };
        let average = map
            .clone()
            .with_expand(expand(ExpandDuration::Average))
            .unwrap();
        let out: Vec<Value> = average
            .apply_all(&row("4", "3"))
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        let times: Vec<&str> = out
            .iter()
            .map(|v| v["timestamp"].as_str().unwrap())
            .collect();
        // The middles of four 225-second slices, at whole seconds.
        assert_eq!(
            times,
            [
                "2021-12-06T11:31:52Z",
                "2021-12-06T11:35:37Z",
                "2021-12-06T11:39:22Z",
                "2021-12-06T11:43:07Z"
            ]
        );
        let handled: Vec<bool> = out
            .iter()
            .map(|v| v["properties"]["handled"].as_bool().unwrap())
            .collect();
        assert_eq!(handled, [true, true, true, false]);
        assert_eq!(out[0]["properties"]["duration"], 60.0);
        assert_eq!(out[3]["properties"]["duration"], 0.0);
        for v in &out {
            schema::check(Emits::ContactEvents, v).unwrap();
        }
        let total = map
            .clone()
            .with_expand(expand(ExpandDuration::Total))
            .unwrap();
        let out = total.apply_all(&row("4", "3")).unwrap();
        assert!(out[0].contains("\"duration\":20.0"), "{}", out[0]);
        assert!(total.apply_all(&row("0", "0")).unwrap().is_empty());
        let err = total.apply_all(&row("2", "3")).unwrap_err();
        assert!(err.to_string().contains("more than 2 offered"), "{err}");
        assert!(total.apply_all(&row("many", "3")).is_err());
        // A map whose `offered` is the literal `true` cannot count contacts.
        assert!(
            contact_mapping()
                .with_expand(expand(ExpandDuration::Total))
                .is_err()
        );
    }

    #[test]
    fn an_interval_row_may_carry_its_own_length() {
        let map = interval_mapping("handle")
            .with_expand(Expand {
                interval: IntervalLength::Column("intrvl".into()),
                duration: ExpandDuration::Total,
            })
            .unwrap();
        assert!(map.columns().contains(&"intrvl"));
        let row = |length: &'static str| {
            MapRow(HashMap::from([
                ("start", "2021-12-06T11:00:00Z"),
                ("queue", "Sales"),
                ("offered", "2"),
                ("handled", "2"),
                ("handle", "300"),
                ("intrvl", length),
            ]))
        };
        let times = |length| -> Vec<String> {
            map.apply_all(&row(length))
                .unwrap()
                .iter()
                .map(|r| serde_json::from_str::<Value>(r).unwrap()["timestamp"].to_string())
                .collect()
        };
        // Two contacts in the middles of the two halves: of 30 minutes, and of an hour.
        assert_eq!(
            times("30"),
            ["\"2021-12-06T11:07:30Z\"", "\"2021-12-06T11:22:30Z\""]
        );
        assert_eq!(times("1h"), times("60"));
        assert_eq!(
            times("60"),
            ["\"2021-12-06T11:15:00Z\"", "\"2021-12-06T11:45:00Z\""]
        );
        for (bad, why) in [
            ("", "is empty"),
            ("0", "between one second and one day"),
            ("1441", "between one second and one day"),
            ("quarter", "neither a number of minutes"),
        ] {
            let err = map.apply_all(&row(bad)).unwrap_err();
            assert_eq!(err.column.as_deref(), Some("intrvl"), "{bad:?}");
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
        let mut without = row("30");
        without.0.remove("intrvl");
        let err = map.apply_all(&without).unwrap_err();
        assert!(
            err.to_string()
                .contains("`intrvl` is not a column of the rows"),
            "{err}"
        );
        // An interval without contacts needs no length.
        let mut quiet = row("");
        quiet.0.insert("offered", "0");
        quiet.0.insert("handled", "0");
        assert!(map.apply_all(&quiet).unwrap().is_empty());
    }

    #[test]
    fn templates_need_a_column_and_closed_braces() {
        assert!(FieldSource::template("{a").is_err());
        assert!(FieldSource::template("const").is_err());
        assert_eq!(
            FieldSource::template("x{a}y").unwrap(),
            FieldSource::Template(vec![
                Part::Text("x".into()),
                Part::Column("a".into()),
                Part::Text("y".into())
            ])
        );
    }
}
