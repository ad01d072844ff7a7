//! The configuration of the sources that are not files: `sql` and `http` (polled on a
//! schedule) and `webhook` (pushed to the `[listen]` address).

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
    /// How timestamps without a zone in the database are read.
    pub zone: jiff::tz::TimeZone,
    pub timeout: Duration,
    pub rows: RowRules,
    /// `type = "asterisk_queue_log"` with a connection: the rows are Asterisk's realtime
    /// queue_log table, read as queue_log lines.
    pub queue_log: Option<QueueLogConfig>,
}

/// `type = "http"`. `Debug` hides the URL's password and query values, header values and the
/// body, any of which may hold a credential.
#[derive(Clone)]
pub struct HttpConfig {
    pub schedule: Schedule,
    /// With `{cursor}`, `{now}` and `{until}` filled in (URL-encoded).
    pub url: String,
    pub post: bool,
    pub headers: Vec<(String, String)>,
    /// The POST body, with the same placeholders (not encoded).
    pub body: Option<String>,
    pub auth: HttpAuth,
    /// A JSON pointer to the array of records in a response; "" when the response is one.
    pub records: String,
    pub pagination: Pagination,
    pub cursor: HttpCursor,
    pub initial_cursor: Option<String>,
    pub page_size: u32,
    /// `{until}` is now minus this.
    pub lag: Duration,
    pub snapshot: bool,
    pub timeout: Duration,
    pub rows: RowRules,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("schedule", &self.schedule)
            .field("url", &crate::redact::url_text(&self.url))
            .field("post", &self.post)
            .field("headers", &crate::redact::headers(&self.headers))
            .field(
                "body",
                &self.body.as_ref().map(|b| format!("<{} bytes>", b.len())),
            )
            .field("auth", &self.auth)
            .field("records", &self.records)
            .field("pagination", &self.pagination)
            .field("cursor", &self.cursor)
            .field("initial_cursor", &self.initial_cursor)
            .field("page_size", &self.page_size)
            .field("lag", &self.lag)
            .field("snapshot", &self.snapshot)
            .field("timeout", &self.timeout)
            .field("rows", &self.rows)
            .finish()
    }
}

#[derive(Clone)]
pub enum HttpAuth {
    None,
    Bearer(SourceSecret),
    Basic {
        username: String,
        password: SourceSecret,
    },
    /// OAuth 2 client credentials: a token from `token_url`, kept until it expires.
    OAuth2 {
        token_url: reqwest::Url,
        client_id: String,
        secret: SourceSecret,
        scope: Option<String>,
    },
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::None => f.write_str("None"),
            HttpAuth::Bearer(t) => f.debug_tuple("Bearer").field(t).finish(),
            HttpAuth::Basic { username, password } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", password)
                .finish(),
            HttpAuth::OAuth2 {
                token_url,
                client_id,
                secret,
                scope,
            } => f
                .debug_struct("OAuth2")
                .field("token_url", &crate::redact::url(token_url))
                .field("client_id", client_id)
                .field("secret", secret)
                .field("scope", scope)
                .finish(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pagination {
    None,
    /// The next page's URL at a JSON pointer of the response (absent or null: last page).
    NextLink(String),
    /// `param=1, 2, ...` until a page comes back short.
    Page {
        param: String,
        first: u64,
    },
    /// `param=0, n, 2n, ...` until a page comes back short.
    Offset(String),
    /// RFC 8288 `Link: <...>; rel="next"`.
    LinkHeader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpCursor {
    None,
    /// The largest value of this record field among the records read.
    Field(String),
    /// The value at this JSON pointer of the last response.
    Pointer(String),
}

/// `type = "webhook"`.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The secret path token: pushes go to `/webhook/<source name>/<token>`.
    pub token: SourceSecret,
    pub max_body: usize,
    pub rows: RowRules,
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
const HTTP: &[&str] = &[
    "schedule",
    "every",
    "jitter",
    "url",
    "method",
    "headers",
    "body",
    "auth",
    "token",
    "token_file",
    "token_env",
    "username",
    "password",
    "password_file",
    "password_env",
    "token_url",
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_secret_env",
    "scope",
    "records",
    "pagination",
    "next_pointer",
    "page_param",
    "first_page",
    "offset_param",
    "limit_param",
    "page_size",
    "cursor_field",
    "cursor_pointer",
    "initial_cursor",
    "lag",
    "snapshot",
    "timeout",
];
const WEBHOOK: &[&str] = &["token", "token_file", "token_env", "max_body"];

impl Validator<'_> {
    /// A problem for every key of source `i` that its type does not take.
    fn only_keys(&mut self, i: usize, label: &str, kind: &str, own: &[&str]) {
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

    /// A secret configured as `name`, `name_file` or `name_env`.
    fn secret(
        &mut self,
        i: usize,
        label: &str,
        name: &'static str,
        raw: (Option<String>, Option<String>, Option<String>),
        hint: &str,
    ) -> Option<SourceSecret> {
        let at = |k: &str| vec![Seg::Key("source"), Seg::Index(i), Seg::Owned(k.to_owned())];
        let key = format!("{label}.{name}");
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
                return None;
            }
            (None, None, None) => {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i)],
                    &key,
                    format!("is required ({name}, {name}_file or {name}_env): {hint}"),
                );
                return None;
            }
            _ => {
                self.problem(
                    &at(name),
                    &key,
                    format!("set only one of {name}, {name}_file and {name}_env"),
                );
                return None;
            }
        };
        Some(SourceSecret { key, from })
    }

    fn schedule(&mut self, i: usize, label: &str, raw: &RawSource) -> Option<Schedule> {
        let at = |k: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(k)];
        let zone = self.zone(i, label, raw.timezone.as_deref());
        let when = match (&raw.schedule, &raw.every) {
            (Some(expr), None) => {
                if let Err(e) = crate::sources::schedule::parse_cron(expr) {
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
    fn snapshot(&mut self, i: usize, label: &str, raw: &RawSource, rows: &RowRules) -> bool {
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

    fn timeout(&mut self, i: usize, label: &str, raw: &RawSource) -> Duration {
        self.duration(
            &[Seg::Key("source"), Seg::Index(i), Seg::Key("timeout")],
            &format!("{label}.timeout"),
            raw.timeout.as_deref(),
            Duration::from_secs(60),
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )
    }

    /// `lag` or `overlap`: how far behind now or the cursor a poll reads (up to a week).
    fn window(
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
    fn needed(
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

    fn page_size(&mut self, i: usize, label: &str, raw: &RawSource) -> u32 {
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
        let at = |k: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(k)];
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
                self.problem(
                    &at("query"),
                    &key("query"),
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
            (None, false, _) => self.problem(
                &at("cursor_column"),
                &key("cursor_column"),
                "is required: the column (a time or a growing number) that orders the rows, \
                 unless snapshot = true",
            ),
            (Some(_), true, _) => self.problem(
                &at("cursor_column"),
                &key("cursor_column"),
                "does not apply with snapshot = true: a snapshot is read whole every time",
            ),
            (Some(_), false, None) => self.problem(
                &at("initial_cursor"),
                &key("initial_cursor"),
                "is required with cursor_column: where the first poll starts, e.g. \
                 \"2024-01-01T00:00:00Z\" or 0",
            ),
            _ => {}
        }
        if rows.key.is_none() && rows.states.is_none() && queue_log.is_none() {
            self.problem(
                &at("key"),
                &key("key"),
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
            zone,
            timeout,
            rows,
            queue_log,
        }))
    }

    pub(super) fn http(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
    ) -> Option<SourceKind> {
        self.only_keys(i, label, "http", HTTP);
        let at = |k: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(k)];
        let key = |k: &str| format!("{label}.{k}");
        let schedule = self.schedule(i, label, &raw);
        let url = match raw.url.take() {
            Some(u) if reqwest::Url::parse(&fill_example(&u)).is_ok() => Some(u),
            Some(u) => {
                self.problem(&at("url"), &key("url"), format!("{u:?} is not a URL"));
                None
            }
            None => {
                self.problem(
                    &at("url"),
                    &key("url"),
                    "is required: the API address, with {cursor}, {now} or {until} where the \
                     query takes them",
                );
                None
            }
        };
        let post = self.one_of(
            &at("method"),
            &key("method"),
            raw.method.as_deref(),
            false,
            &[
                ("GET", false),
                ("POST", true),
                ("get", false),
                ("post", true),
            ],
        );
        if raw.body.is_some() && !post {
            self.problem(
                &at("body"),
                &key("body"),
                "applies only with method = \"POST\"",
            );
        }
        let mut headers = Vec::new();
        for (name, v) in raw.headers.take().unwrap_or_default() {
            match (v, reqwest::header::HeaderName::from_bytes(name.as_bytes())) {
                (toml::Value::String(v), Ok(_)) => headers.push((name, v)),
                _ => self.problem(
                    &at("headers"),
                    &key(&format!("headers.{name}")),
                    "write a header name and a string value",
                ),
            }
        }
        let auth = match raw.auth.as_deref() {
            None if raw.token.is_none() && raw.token_file.is_none() && raw.token_env.is_none() => {
                Some(HttpAuth::None)
            }
            None | Some("bearer") => self
                .secret(
                    i,
                    label,
                    "token",
                    (
                        raw.token.take(),
                        raw.token_file.take(),
                        raw.token_env.take(),
                    ),
                    "the bearer token",
                )
                .map(HttpAuth::Bearer),
            Some("basic") => {
                let username = self.needed(i, label, "username", raw.username.take(), "basic");
                let password = self.secret(
                    i,
                    label,
                    "password",
                    (
                        raw.password.take(),
                        raw.password_file.take(),
                        raw.password_env.take(),
                    ),
                    "the password for basic authentication",
                );
                Some(HttpAuth::Basic {
                    username: username?,
                    password: password?,
                })
            }
            Some("oauth2") => {
                let token_url = match raw.token_url.as_deref().map(reqwest::Url::parse) {
                    Some(Ok(u)) => Some(u),
                    Some(Err(e)) => {
                        self.problem(
                            &at("token_url"),
                            &key("token_url"),
                            format!("is not a URL: {e}"),
                        );
                        None
                    }
                    None => {
                        self.problem(
                            &at("token_url"),
                            &key("token_url"),
                            "is required with auth = \"oauth2\": where client-credential tokens come from",
                        );
                        None
                    }
                };
                let client_id = self.needed(i, label, "client_id", raw.client_id.take(), "oauth2");
                let secret = self.secret(
                    i,
                    label,
                    "client_secret",
                    (
                        raw.client_secret.take(),
                        raw.client_secret_file.take(),
                        raw.client_secret_env.take(),
                    ),
                    "the OAuth 2 client secret",
                );
                Some(HttpAuth::OAuth2 {
                    token_url: token_url?,
                    client_id: client_id?,
                    secret: secret?,
                    scope: raw.scope.take(),
                })
            }
            Some(other) => {
                self.problem(
                    &at("auth"),
                    &key("auth"),
                    format!("{other:?} is not valid: use \"bearer\", \"basic\" or \"oauth2\""),
                );
                None
            }
        };
        let records = raw.records.take().unwrap_or_default();
        if !records.is_empty() && !records.starts_with('/') {
            self.problem(
                &at("records"),
                &key("records"),
                "is a JSON pointer: \"\" for the whole response, or like \"/data/items\"",
            );
        }
        let page_size = self.page_size(i, label, &raw);
        let pagination = match raw.pagination.as_deref() {
            None | Some("none") => Pagination::None,
            Some("next_link") => match raw.next_pointer.take() {
                Some(p) if p.starts_with('/') => Pagination::NextLink(p),
                _ => {
                    self.problem(
                        &at("next_pointer"),
                        &key("next_pointer"),
                        "is required with pagination = \"next_link\": a JSON pointer such as \"/links/next\"",
                    );
                    Pagination::None
                }
            },
            Some("page") => Pagination::Page {
                param: raw.page_param.take().unwrap_or_else(|| "page".into()),
                first: raw.first_page.unwrap_or(1).max(0) as u64,
            },
            Some("offset") => {
                Pagination::Offset(raw.offset_param.take().unwrap_or_else(|| "offset".into()))
            }
            Some("link_header") => Pagination::LinkHeader,
            Some(other) => {
                self.problem(
                    &at("pagination"),
                    &key("pagination"),
                    format!(
                        "{other:?} is not valid: use \"none\", \"next_link\", \"page\", \
                         \"offset\" or \"link_header\""
                    ),
                );
                Pagination::None
            }
        };
        let cursor = match (raw.cursor_field.take(), raw.cursor_pointer.take()) {
            (None, None) => HttpCursor::None,
            (Some(f), None) => HttpCursor::Field(f),
            (None, Some(p)) if p.starts_with('/') => HttpCursor::Pointer(p),
            (None, Some(_)) => {
                self.problem(
                    &at("cursor_pointer"),
                    &key("cursor_pointer"),
                    "is a JSON pointer such as \"/meta/until\"",
                );
                HttpCursor::None
            }
            (Some(_), Some(_)) => {
                self.problem(
                    &at("cursor_pointer"),
                    &key("cursor_pointer"),
                    "set either cursor_field or cursor_pointer, not both",
                );
                HttpCursor::None
            }
        };
        let lag = self.window(i, label, "lag", raw.lag.as_deref());
        let timeout = self.timeout(i, label, &raw);
        let limit_param = raw.limit_param.take();
        let url = url.map(|u| match &limit_param {
            Some(p) => format!(
                "{u}{}{p}={page_size}",
                if u.contains('?') { '&' } else { '?' }
            ),
            None => u,
        });
        if raw.map.is_none() {
            // The schedule's zone, then; there are no local times to read.
            raw.timezone = None;
        }
        let rows = self.rows(i, label, emits, &mut raw, false, false)?;
        let snapshot = self.snapshot(i, label, &raw, &rows);
        Some(SourceKind::Http(HttpConfig {
            schedule: schedule?,
            url: url?,
            post,
            headers,
            body: raw.body.take(),
            auth: auth?,
            records,
            pagination,
            cursor,
            initial_cursor: raw.initial_cursor.take(),
            page_size,
            lag,
            snapshot,
            timeout,
            rows,
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
        let max_body = match raw
            .max_body
            .as_deref()
            .map(str::parse::<bytesize::ByteSize>)
        {
            None => 1 << 20,
            Some(Ok(b)) if b.as_u64() >= 1024 && b.as_u64() <= 64 << 20 => b.as_u64() as usize,
            Some(_) => {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("max_body")],
                    &format!("{label}.max_body"),
                    "write a size from \"1KiB\" to \"64MiB\"",
                );
                1 << 20
            }
        };
        let rows = self.rows(i, label, emits, &mut raw, false, false)?;
        Some(SourceKind::Webhook(WebhookConfig {
            token: token?,
            max_body,
            rows,
        }))
    }
}

/// A URL template with its placeholders filled with examples, to check that it parses.
pub fn fill_example(template: &str) -> String {
    template
        .replace("{cursor}", "0")
        .replace("{now}", "2024-01-01T00:00:00Z")
        .replace("{until}", "2024-01-01T00:00:00Z")
}
