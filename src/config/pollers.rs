//! The configuration of the sources that are not files: what every poller has (a schedule,
//! its secret, a timeout, a cursor window), `sql` (polled on a schedule) and `webhook` (pushed
//! to the `[listen]` address). `http` is in its own file.

use std::time::Duration;

use super::{
    QueueLogConfig, RawSource, RowRules, Seg, SourceKind, SourceSecret, TokenSource, Validator,
};
use crate::types::{Emits, Secret};

/// When a poller polls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// `schedule`: a cron expression with seconds, in the source's `timezone`.
    Cron(String),
    /// `every`: a fixed period.
    Every(Duration),
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub when: When,
    pub zone: jiff::tz::TimeZone,
    /// `jitter`: each poll starts up to this much later, at random.
    pub jitter: Duration,
}

/// `type = "sql"`.
#[derive(Clone, Debug)]
pub struct SqlConfig {
    pub schedule: Schedule,
    /// `connection`, `connection_file` or `connection_env`: a `postgres://` or `mysql://`
    /// (`mariadb://`) URL.
    pub connection: SourceSecret,
    pub query: String,
    /// The column that orders rows and moves the cursor; `None` for a snapshot.
    pub cursor_column: Option<String>,
    pub initial_cursor: Option<String>,
    pub page_size: u32,
    /// Rows younger than this are not read yet (timestamp cursors).
    pub lag: Duration,
    /// Each poll reads again this far behind the cursor (timestamp cursors).
    pub overlap: Duration,
    /// Every poll returns all agents' current states (`snapshot = true`).
    pub snapshot: bool,
    /// How long records, and so the keys that recognise rows read again, are kept
    /// (`state.keep_sent`): a cursor that has not moved for nearly that long reads only after
    /// itself.
    pub keys_kept: Duration,
    /// How timestamps without a zone in the database are read.
    pub zone: jiff::tz::TimeZone,
    pub timeout: Duration,
    pub rows: RowRules,
    /// `type = "asterisk_queue_log"` with a connection: the rows are Asterisk's realtime
    /// queue_log table, read as queue_log lines.
    pub queue_log: Option<QueueLogConfig>,
}

/// `type = "webhook"`.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The secret path token: pushes go to `/webhook/<source name>/<token>`.
    pub token: SourceSecret,
    pub max_body: usize,
    /// Pushes from other addresses are refused (403) before their body is read; empty: any.
    pub allow: Vec<ipnet::IpNet>,
    /// `signature = "hmac-sha256"`: each body's HMAC is checked before it is kept.
    pub signature: Option<Signature>,
    pub rows: RowRules,
}

/// How a webhook's pushes are signed: HMAC-SHA256 of the body (or of `TIMESTAMP.BODY` when
/// `timestamp_header` is set), hex (optionally `sha256=`) or base64 in `header`.
#[derive(Clone, Debug)]
pub struct Signature {
    pub header: String,
    pub secret: SourceSecret,
    pub timestamp_header: Option<String>,
    /// A signed timestamp further than this from now is refused (a replay).
    pub max_age: Duration,
}

const COMMON: &[&str] = &[
    "name",
    "type",
    "integration_id",
    "emits",
    "external_system",
    "stale_after",
    "business_hours",
    "map",
    "key",
    "skip_if",
    "expand",
    "interval",
    "interval_column",
    "expand_duration",
    "duration_unit",
    "agents",
    "activities",
    "logout_states",
    "open_interval_flush",
    "max_interval",
    "timestamp_format",
    "timezone",
];
/// A files source's own keys (`asterisk_queue_log` files too: `channel`, `queues`).
pub(super) const FILES: &[&str] = &[
    "path",
    "recursive",
    "include",
    "exclude",
    "format",
    "mode",
    "after",
    "archive_dir",
    "settle",
    "poll_interval",
    "max_line",
    "start_at",
    "delimiter",
    "encoding",
    "header",
    "columns",
    "watch",
    "marker",
    "channel",
    "queues",
];
const SQL: &[&str] = &[
    "schedule",
    "every",
    "jitter",
    "connection",
    "connection_file",
    "connection_env",
    "query",
    "cursor_column",
    "initial_cursor",
    "page_size",
    "lag",
    "overlap",
    "snapshot",
    "timeout",
];
const WEBHOOK: &[&str] = &[
    "token",
    "token_file",
    "token_env",
    "max_body",
    "allow",
    "signature",
    "signature_header",
    "signature_secret",
    "signature_secret_file",
    "signature_secret_env",
    "signature_timestamp_header",
    "signature_max_age",
];

impl Validator<'_> {
    /// A problem for every key of source `i` that its type does not take.
    pub(super) fn only_keys(&mut self, i: usize, label: &str, kind: &str, own: &[&str]) {
        let keys: Vec<String> = self
            .doc
            .as_ref()
            .and_then(|d| {
                d.get("source")?
                    .get(i)?
                    .as_table_like()
                    .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
            })
            .unwrap_or_default();
        for k in keys {
            if !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()) {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Owned(k.clone())],
                    &format!("{label}.{k}"),
                    format!("does not apply to type = \"{kind}\""),
                );
            }
        }
    }

    /// A source's secret configured as `name`, `name_file` or `name_env`; required.
    pub(super) fn secret(
        &mut self,
        i: usize,
        label: &str,
        name: &'static str,
        raw: (Option<String>, Option<String>, Option<String>),
        hint: &str,
    ) -> Option<SourceSecret> {
        let base = vec![Seg::Key("source"), Seg::Index(i)];
        let key = format!("{label}.{name}");
        match self.secret_at(&base, &key, name, raw) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                self.problem(
                    &base,
                    &key,
                    format!("is required ({name}, {name}_file or {name}_env): {hint}"),
                );
                None
            }
            Err(()) => None,
        }
    }

    /// A secret configured under `base` as `name`, `name_file` or `name_env` (`key` names it in
    /// messages): `Ok(None)` when none of them is set, `Err` when a problem was noted.
    pub(super) fn secret_at(
        &mut self,
        base: &[Seg],
        key: &str,
        name: &'static str,
        raw: (Option<String>, Option<String>, Option<String>),
    ) -> Result<Option<SourceSecret>, ()> {
        let at = |k: &str| {
            let mut at = base.to_vec();
            at.push(Seg::Owned(k.to_owned()));
            at
        };
        let from = match raw {
            (Some(v), None, None) => {
                self.warnings.push(format!(
                    "{key} is written into the configuration: move it to {name}_file (a file \
                     readable only by the service) or {name}_env"
                ));
                TokenSource::Inline(Secret::new(v))
            }
            (None, Some(f), None) => TokenSource::File(self.path(&f)),
            (None, None, Some(e)) if !e.trim().is_empty() => TokenSource::Env(e),
            (None, None, Some(_)) => {
                self.problem(
                    &at(&format!("{name}_env")),
                    &format!("{key}_env"),
                    "names no variable",
                );
                return Err(());
            }
            (None, None, None) => return Ok(None),
            _ => {
                self.problem(
                    &at(name),
                    key,
                    format!("set only one of {name}, {name}_file and {name}_env"),
                );
                return Err(());
            }
        };
        Ok(Some(SourceSecret {
            key: key.to_owned(),
            from,
        }))
    }

    pub(super) fn schedule(&mut self, i: usize, label: &str, raw: &RawSource) -> Option<Schedule> {
        let at = |k: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(k)];
        let zone = self.zone(i, label, raw.timezone.as_deref());
        let when = match (&raw.schedule, &raw.every) {
            (Some(expr), None) => {
                if let Err(e) = parse_cron(expr) {
                    self.problem(&at("schedule"), &format!("{label}.schedule"), e);
                    return None;
                }
                When::Cron(expr.clone())
            }
            (None, Some(every)) => When::Every(self.duration(
                &at("every"),
                &format!("{label}.every"),
                Some(every),
                Duration::from_secs(60),
                (Duration::from_secs(1), Duration::from_secs(7 * 86_400)),
            )),
            (None, None) => {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i)],
                    &format!("{label}.schedule"),
                    "is required: schedule = \"0 */5 * * * *\" (cron with seconds) or every = \"30s\"",
                );
                return None;
            }
            (Some(_), Some(_)) => {
                self.problem(
                    &at("every"),
                    &format!("{label}.every"),
                    "set either schedule or every, not both",
                );
                return None;
            }
        };
        let jitter = self.duration(
            &at("jitter"),
            &format!("{label}.jitter"),
            raw.jitter.as_deref(),
            Duration::ZERO,
            (Duration::ZERO, Duration::from_secs(3600)),
        );
        Some(Schedule { when, zone, jitter })
    }

    /// `snapshot = true`, which only agent states can be.
    pub(super) fn snapshot(
        &mut self,
        i: usize,
        label: &str,
        raw: &RawSource,
        rows: &RowRules,
    ) -> bool {
        let snapshot = raw.snapshot.unwrap_or(false);
        if snapshot && rows.states.is_none() {
            self.problem(
                &[Seg::Key("source"), Seg::Index(i), Seg::Key("snapshot")],
                &format!("{label}.snapshot"),
                "applies only with emits = \"agent_states\": a snapshot is every agent's current state",
            );
        }
        snapshot
    }

    pub(super) fn timeout(&mut self, i: usize, label: &str, raw: &RawSource) -> Duration {
        self.duration(
            &[Seg::Key("source"), Seg::Index(i), Seg::Key("timeout")],
            &format!("{label}.timeout"),
            raw.timeout.as_deref(),
            Duration::from_secs(60),
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )
    }

    /// `lag` or `overlap`: how far behind now or the cursor a poll reads (up to a week).
    pub(super) fn window(
        &mut self,
        i: usize,
        label: &str,
        name: &'static str,
        value: Option<&str>,
    ) -> Duration {
        self.duration(
            &[Seg::Key("source"), Seg::Index(i), Seg::Key(name)],
            &format!("{label}.{name}"),
            value,
            Duration::ZERO,
            (Duration::ZERO, Duration::from_secs(7 * 86_400)),
        )
    }

    /// A key that `auth = "<auth>"` needs: its value, or a problem saying so.
    pub(super) fn needed(
        &mut self,
        i: usize,
        label: &str,
        name: &'static str,
        value: Option<String>,
        auth: &str,
    ) -> Option<String> {
        if value.is_none() {
            self.problem(
                &[Seg::Key("source"), Seg::Index(i), Seg::Key(name)],
                &format!("{label}.{name}"),
                format!("is required with auth = \"{auth}\""),
            );
        }
        value
    }

    pub(super) fn page_size(&mut self, i: usize, label: &str, raw: &RawSource) -> u32 {
        match raw.page_size {
            None => 1000,
            Some(n) if (1..=100_000).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("page_size")],
                    &format!("{label}.page_size"),
                    format!("{n} is out of range (1 to 100000)"),
                );
                1000
            }
        }
    }

    pub(super) fn sql(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
        queue_log: Option<QueueLogConfig>,
    ) -> Option<SourceKind> {
        match queue_log {
            None => self.only_keys(i, label, "sql", SQL),
            Some(_) => {
                let own: Vec<&str> = SQL
                    .iter()
                    .copied()
                    .chain(["channel", "queues", "path"])
                    .collect();
                self.only_keys(i, label, "asterisk_queue_log", &own);
            }
        }
        let key = |k: &str| format!("{label}.{k}");
        let schedule = self.schedule(i, label, &raw);
        let connection = self.secret(
            i,
            label,
            "connection",
            (
                raw.connection.take(),
                raw.connection_file.take(),
                raw.connection_env.take(),
            ),
            "a postgres://user:password@host/db or mysql://user:password@host/db URL",
        );
        let query = match raw.query.take() {
            Some(q) if !q.trim().is_empty() => Some(q.trim().trim_end_matches(';').to_owned()),
            _ => {
                self.source_problem(
                    i,
                    label,
                    "query",
                    "is required: the SELECT whose rows are read, e.g. \
                     \"SELECT * FROM calls\" (the cursor condition and order are added)",
                );
                None
            }
        };
        if raw.map.is_none() && queue_log.is_none() {
            self.problem(
                &[Seg::Key("source"), Seg::Index(i)],
                &key("map"),
                "is required for sql: a [source.map] table from API fields to columns",
            );
        }
        // An unknown zone is reported by the map that reads it.
        let zone = raw
            .timezone
            .as_deref()
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC);
        if queue_log.is_some() {
            // Read by the rows' own times, not by a map.
            raw.timezone = None;
        }
        let rows = self.rows(i, label, emits, &mut raw, false, queue_log.is_some())?;
        let snapshot = self.snapshot(i, label, &raw, &rows);
        let cursor_column = raw.cursor_column.take();
        match (&cursor_column, snapshot, &raw.initial_cursor) {
            (None, false, _) => self.source_problem(
                i,
                label,
                "cursor_column",
                "is required: the column (a time or a growing number) that orders the rows, \
                 unless snapshot = true",
            ),
            (Some(_), true, _) => self.source_problem(
                i,
                label,
                "cursor_column",
                "does not apply with snapshot = true: a snapshot is read whole every time",
            ),
            (Some(_), false, None) => self.source_problem(
                i,
                label,
                "initial_cursor",
                "is required with cursor_column: where the first poll starts, e.g. \
                 \"2024-01-01T00:00:00Z\" or 0",
            ),
            _ => {}
        }
        if rows.key.is_none() && rows.states.is_none() && queue_log.is_none() {
            self.source_problem(
                i,
                label,
                "key",
                "is required for sql records: the row's natural key, e.g. \"{call_id}\"; \
                 polls overlap, and it is what keeps a row from being sent twice",
            );
        }
        let lag = self.window(i, label, "lag", raw.lag.as_deref());
        let overlap = self.window(i, label, "overlap", raw.overlap.as_deref());
        let page_size = self.page_size(i, label, &raw);
        let timeout = self.timeout(i, label, &raw);
        Some(SourceKind::Sql(SqlConfig {
            schedule: schedule?,
            connection: connection?,
            query: query?,
            cursor_column,
            initial_cursor: raw.initial_cursor.take(),
            page_size,
            lag,
            overlap,
            snapshot,
            // Set from `state.keep_sent` once the sources are read.
            keys_kept: Duration::MAX,
            zone,
            timeout,
            rows,
            queue_log,
        }))
    }

    pub(super) fn webhook(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
    ) -> Option<SourceKind> {
        self.only_keys(i, label, "webhook", WEBHOOK);
        let token = self.secret(
            i,
            label,
            "token",
            (
                raw.token.take(),
                raw.token_file.take(),
                raw.token_env.take(),
            ),
            "the secret part of the push URL (at least 16 characters)",
        );
        let max_body = self.size(
            &[Seg::Key("source"), Seg::Index(i), Seg::Key("max_body")],
            &format!("{label}.max_body"),
            raw.max_body.as_deref(),
            1 << 20,
            (1024, 64 << 20),
        ) as usize;
        let at = |k: &'static str| [Seg::Key("source"), Seg::Index(i), Seg::Key(k)];
        let allow = self.networks(&at("allow"), &format!("{label}.allow"), raw.allow.take());
        let signature = self.signature(i, label, &mut raw);
        let rows = self.rows(i, label, emits, &mut raw, false, false)?;
        Some(SourceKind::Webhook(WebhookConfig {
            token: token?,
            max_body,
            allow,
            signature: signature?,
            rows,
        }))
    }

    /// `signature = "hmac-sha256"` and its keys: `Some(None)` without one, `None` on a problem.
    fn signature(
        &mut self,
        i: usize,
        label: &str,
        raw: &mut RawSource,
    ) -> Option<Option<Signature>> {
        let at = |k: &'static str| [Seg::Key("source"), Seg::Index(i), Seg::Key(k)];
        let kind = raw.signature.take();
        let header = raw.signature_header.take();
        let timestamp_header = raw.signature_timestamp_header.take();
        let max_age = raw.signature_max_age.take();
        let secret = (
            raw.signature_secret.take(),
            raw.signature_secret_file.take(),
            raw.signature_secret_env.take(),
        );
        match kind.as_deref() {
            None => {
                let stray = [
                    ("signature_header", header.is_some()),
                    ("signature_timestamp_header", timestamp_header.is_some()),
                    ("signature_max_age", max_age.is_some()),
                    (
                        "signature_secret",
                        secret.0.is_some() || secret.1.is_some() || secret.2.is_some(),
                    ),
                ];
                for (key, set) in stray {
                    if set {
                        self.problem(
                            &[
                                Seg::Key("source"),
                                Seg::Index(i),
                                Seg::Owned(key.to_owned()),
                            ],
                            &format!("{label}.{key}"),
                            "applies only with signature = \"hmac-sha256\"",
                        );
                    }
                }
                Some(None)
            }
            Some("hmac-sha256") => {
                let secret = self.secret(
                    i,
                    label,
                    "signature_secret",
                    secret,
                    "the secret the sender signs each body with",
                );
                let header = header
                    .map(|h| h.trim().to_owned())
                    .filter(|h| super::is_header_name(h));
                if header.is_none() {
                    self.problem(
                        &at("signature_header"),
                        &format!("{label}.signature_header"),
                        "is required with signature: the header the sender puts the \
                         signature in, such as \"X-Signature\"",
                    );
                }
                let timestamp_header = match timestamp_header {
                    Some(h) if super::is_header_name(h.trim()) => Some(h.trim().to_owned()),
                    Some(h) => {
                        self.problem(
                            &at("signature_timestamp_header"),
                            &format!("{label}.signature_timestamp_header"),
                            format!("{h:?} is not a header name"),
                        );
                        None
                    }
                    None => None,
                };
                if max_age.is_some() && timestamp_header.is_none() {
                    self.problem(
                        &at("signature_max_age"),
                        &format!("{label}.signature_max_age"),
                        "needs signature_timestamp_header: the age is that of the signed \
                         timestamp",
                    );
                }
                let max_age = self.duration(
                    &at("signature_max_age"),
                    &format!("{label}.signature_max_age"),
                    max_age.as_deref(),
                    Duration::from_secs(300),
                    (Duration::from_secs(1), Duration::from_secs(86_400)),
                );
                Some(Some(Signature {
                    header: header?,
                    secret: secret?,
                    timestamp_header,
                    max_age,
                }))
            }
            Some(other) => {
                self.problem(
                    &at("signature"),
                    &format!("{label}.signature"),
                    format!("{other:?} is not supported: use \"hmac-sha256\""),
                );
                None
            }
        }
    }
}

/// Parses a cron expression with seconds (`sec min hour day-of-month month day-of-week`).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds};
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!(
                "{expr:?} is not a cron schedule with seconds, such as \"0 */5 * * * *\" \
                 (every five minutes) or \"0 0 6 * * Mon-Fri\": {e}"
            )
        })
}
