//! `type = "http"`: a JSON API polled on a schedule, its authentication, pagination and
//! cursor.

use std::time::Duration;

use super::problems::{Seg, Validator};
use super::raw::RawSource;
use super::secret::SourceSecret;
use super::{RowRules, Schedule, SourceKind};
use crate::types::Emits;

/// `type = "http"`. `Debug` hides the URL's password and query values, header values and the
/// body, any of which may hold a credential.
#[derive(Clone)]
pub struct HttpConfig {
    pub schedule: Schedule,
    /// With `{cursor}`, `{now}` and `{until}` filled in (URL-encoded).
    pub url: String,
    pub post: bool,
    /// Names checked by [`is_header_name`]; the source builds the request's headers.
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
        token_url: url::Url,
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

impl Validator<'_> {
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
            Some(u) if url::Url::parse(&fill_example(&u)).is_ok() => Some(u),
            Some(u) => {
                self.source_problem(
                    i,
                    label,
                    "url",
                    format!(
                        "{:?} is not a URL: write it as https://host/path?name=value",
                        crate::redact::url_text(&u)
                    ),
                );
                None
            }
            None => {
                self.source_problem(
                    i,
                    label,
                    "url",
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
            self.source_problem(i, label, "body", "applies only with method = \"POST\"");
        }
        let mut headers = Vec::new();
        for (name, v) in raw.headers.take().unwrap_or_default() {
            match v {
                toml::Value::String(v) if is_header_name(&name) => headers.push((name, v)),
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
                let token_url = match raw.token_url.as_deref().map(url::Url::parse) {
                    Some(Ok(u)) => Some(u),
                    Some(Err(e)) => {
                        self.source_problem(i, label, "token_url", format!("is not a URL: {e}"));
                        None
                    }
                    None => {
                        self.source_problem(i, label, "token_url",
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
                self.source_problem(
                    i,
                    label,
                    "auth",
                    format!("{other:?} is not valid: use \"bearer\", \"basic\" or \"oauth2\""),
                );
                None
            }
        };
        let records = raw.records.take().unwrap_or_default();
        if !records.is_empty() && !records.starts_with('/') {
            self.source_problem(
                i,
                label,
                "records",
                "is a JSON pointer: \"\" for the whole response, or like \"/data/items\"",
            );
        }
        let page_size = self.page_size(i, label, &raw);
        let pagination = match raw.pagination.as_deref() {
            None | Some("none") => Pagination::None,
            Some("next_link") => match raw.next_pointer.take() {
                Some(p) if p.starts_with('/') => Pagination::NextLink(p),
                _ => {
                    self.source_problem(i, label, "next_pointer",
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
                self.source_problem(
                    i,
                    label,
                    "pagination",
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
                self.source_problem(
                    i,
                    label,
                    "cursor_pointer",
                    "is a JSON pointer such as \"/meta/until\"",
                );
                HttpCursor::None
            }
            (Some(_), Some(_)) => {
                self.source_problem(
                    i,
                    label,
                    "cursor_pointer",
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
        // Credentials in the URL and `auth` too would send two Authorization headers: the
        // URL's are left out, and said so.
        let userinfo = url
            .as_deref()
            .and_then(|u| url::Url::parse(&fill_example(u)).ok())
            .is_some_and(|u| !u.username().is_empty() || u.password().is_some());
        let url = if userinfo && !matches!(auth, Some(HttpAuth::None) | None) {
            self.warnings.push(format!(
                "{}: the URL has a user name (and password) and `auth` is set as well: the \
                 URL's credentials are not sent (one Authorization header is); remove them \
                 from the URL",
                key("url")
            ));
            url.map(|u| without_userinfo(&u))
        } else {
            url
        };
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
}

/// A URL template with its placeholders filled with examples, to check that it parses.
fn fill_example(template: &str) -> String {
    template
        .replace("{cursor}", "0")
        .replace("{now}", "2024-01-01T00:00:00Z")
        .replace("{until}", "2024-01-01T00:00:00Z")
}

/// Whether `name` can be an HTTP header's name: a token (RFC 9110, 5.6.2) of at most 65,535
/// bytes, as the `http` crate accepts (`sources::http` tests that they agree).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 1 << 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A URL template without the user info of its authority (`https://user:pw@host/...`).
fn without_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..start], &rest[at + 1..]),
        None => url.to_owned(),
    }
}
