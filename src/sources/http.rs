//! The `http` source: a JSON API polled on a schedule (an ACD's reporting or real-time API).
//!
//! Each poll fills the URL (and a POST body) with `{cursor}` (where the last poll ended),
//! `{now}` and `{until}` (now minus `lag`), follows the configured pagination, takes the
//! records at the `records` JSON pointer of each response and commits them page by page.
//! The cursor moves only when the whole poll has been read: a poll cut off half-way reads
//! its pages again, and dedupe keys (`key`, else the record's content) absorb the repeats.
//!
//! * **Pagination**: `next_link` (the next URL at a JSON pointer of the response), `page`
//!   (`page=1, 2, ...`), `offset` (`offset=0, n, 2n, ...`; both end at a page shorter than
//!   `page_size`), `link_header` (RFC 8288 `Link: <...>; rel="next"`), or `none`.
//! * **Cursor**: `cursor_field` (the greatest value of a record field, compared as times,
//!   numbers or text), `cursor_pointer` (a value of the last response, such as
//!   `/meta/until`), or none (each poll reads the same window, e.g. `{until}`-based).
//! * **Auth**: bearer token, basic, or OAuth 2 client credentials (the client id and secret
//!   sent with HTTP Basic as RFC 6749 requires servers to accept; the token kept until
//!   shortly before it expires, and fetched again after a 401).
//! * **Failures**: 429 and 5xx are retried within the poll, waiting as `Retry-After` says
//!   (at most 5 minutes; three times, then the poll fails and the poll loop backs off);
//!   other 4xx fail the poll with the status and the start of the body.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, LINK, RETRY_AFTER};
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::poll::{Poll, PollError, Sink};
use super::{Source, SourceContext};
use crate::config::{HttpAuth, HttpConfig, HttpCursor, Pagination};
use crate::text::{excerpt, truncate};
use crate::types::Secret;
use crate::web::{describe, parse_retry_after};

/// The largest response body read.
const MAX_RESPONSE: usize = 64 << 20;
/// The most pages one poll follows (a loop guard for APIs that always link a next page).
const MAX_PAGES: usize = 10_000;
/// Attempts per request for 429/5xx before the poll fails.
const ATTEMPTS: u32 = 3;
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

pub struct HttpSource {
    cfg: HttpConfig,
    client: reqwest::Client,
}

impl HttpSource {
    /// The source with its HTTP client built, so that a client that cannot be set up stops
    /// the start instead of this source alone.
    pub fn new(cfg: HttpConfig) -> Result<Self, reqwest::Error> {
        // Header values may be keys (`X-Api-Key`): an answer quoting them back has them
        // masked. Those that describe the request are no secrets.
        for (name, value) in &cfg.headers {
            let n = name.to_ascii_lowercase();
            if !matches!(
                n.as_str(),
                "accept" | "content-type" | "user-agent" | "accept-language"
            ) {
                crate::redact::remember(value);
            }
        }
        // Credentials in the URL are sent as `Authorization: Basic`.
        if let Ok(u) = url::Url::parse(&cfg.url)
            && let Some(pw) = u.password()
        {
            remember_basic(u.username(), pw);
        }
        Ok(Self {
            client: client(&cfg)?,
            cfg,
        })
    }
}

impl Source for HttpSource {
    fn run(self: Box<Self>, ctx: SourceContext) {
        let HttpSource { cfg, client } = *self;
        let schedule = cfg.schedule.clone();
        let (poller, reading) = parts(cfg, client);
        super::poll::run(poller, ctx, schedule, reading);
    }
}

fn client(cfg: &HttpConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("injixo-sync/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn parts(cfg: HttpConfig, client: reqwest::Client) -> (HttpPoller, super::poll::Reading) {
    let reading = super::poll::Reading {
        rows: cfg.rows.clone(),
        snapshot: cfg.snapshot,
        initial: cfg.initial_cursor.clone(),
        queue_log: None,
    };
    let poller = HttpPoller {
        cfg,
        client,
        oauth: None,
    };
    (poller, reading)
}

/// `preview`: the first page from `initial_cursor` into `ctx`'s scratch outbox.
pub fn preview(cfg: &HttpConfig, ctx: &SourceContext) -> Result<(), PollError> {
    let client = client(cfg).map_err(|e| PollError::Remote(format!("cannot set up HTTP: {e}")))?;
    let (poller, reading) = parts(cfg.clone(), client);
    super::poll::first_page(poller, ctx, reading)
}

struct HttpPoller {
    cfg: HttpConfig,
    client: reqwest::Client,
    /// An OAuth 2 access token and when to stop using it.
    oauth: Option<(Secret, Instant)>,
}

/// One page's answer.
struct Page {
    body: Value,
    link_next: Option<String>,
}

impl Poll for HttpPoller {
    async fn poll(&mut self, sink: &mut Sink<'_>) -> Result<(), PollError> {
        let now = jiff::Timestamp::now();
        let until = now
            .checked_sub(jiff::SignedDuration::try_from(self.cfg.lag).unwrap_or_default())
            .unwrap_or(now);
        let cursor = sink.cursor().unwrap_or_default().to_owned();
        let fill = |template: &str, encode: bool| {
            let enc = |v: &str| -> String {
                if encode {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
                } else {
                    v.to_owned()
                }
            };
            template
                .replace("{cursor}", &enc(&cursor))
                .replace("{now}", &enc(&crate::normalize::time::to_api(now)))
                .replace("{until}", &enc(&crate::normalize::time::to_api(until)))
        };
        let first = reqwest::Url::parse(&fill(&self.cfg.url, true))
            .map_err(|e| PollError::Remote(format!("the url is not valid once filled in: {e}")))?;
        let body = self.cfg.body.as_deref().map(|b| fill(b, false));
        let mut url = first.clone();
        let mut number = match &self.cfg.pagination {
            Pagination::Page { first, .. } => *first,
            _ => 0,
        };
        let mut greatest: Option<String> = None;
        let mut pointed: Option<String> = None;
        let mut total = 0usize;
        for page_no in 0.. {
            if page_no == MAX_PAGES {
                warn!(source = %sink.ctx.name, "stopped after {MAX_PAGES} pages in one poll; the rest is read by the next poll");
                break;
            }
            match &self.cfg.pagination {
                Pagination::Page { param, .. } => {
                    url = with_param(&first, param, &number.to_string());
                }
                Pagination::Offset(param) => {
                    url = with_param(&first, param, &(total).to_string());
                }
                _ => {}
            }
            let mut page = self.fetch(&url, body.as_deref()).await?;
            // What else the answer says is read before its records are taken out of it.
            if let HttpCursor::Pointer(p) = &self.cfg.cursor
                && let Some(v) = page.body.pointer(p).and_then(scalar)
            {
                pointed = Some(v);
            }
            let next_link = match &self.cfg.pagination {
                Pagination::NextLink(p) => match page.body.pointer(p) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            };
            let records =
                take_records(&mut page.body, &self.cfg.records).map_err(PollError::Remote)?;
            let n = records.len();
            if let HttpCursor::Field(field) = &self.cfg.cursor {
                for r in &records {
                    if let Some(v) = r.get(field).and_then(scalar) {
                        greatest = Some(match greatest.take() {
                            Some(g) if later(&g, &v) => g,
                            _ => v,
                        });
                    }
                }
            }
            // Origins are stored and shown (`status`, `dead list`, `preview`): the URL's user
            // info and query values stay out of them, so the page number says which page.
            let origin = format!("{} page {}", redact(&url), page_no + 1);
            let rows = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (format!("{origin} record {i}"), r))
                .collect();
            sink.page(rows, None).await?;
            total += n;
            if !sink.wants_more() {
                break;
            }
            let next = match &self.cfg.pagination {
                Pagination::None => None,
                Pagination::Page { .. } | Pagination::Offset(_) => {
                    (n >= self.cfg.page_size as usize && n > 0).then(|| {
                        number += 1;
                        url.clone()
                    })
                }
                Pagination::NextLink(_) => match next_link {
                    Some(s) => Some(url.join(&s).map_err(|e| {
                        PollError::Remote(format!(
                            "the next link {:?} at next_pointer is not a URL ({e}): check next_pointer",
                            crate::redact::url_text(&s)
                        ))
                    })?),
                    None => None,
                },
                Pagination::LinkHeader => match page.link_next {
                    Some(s) => Some(url.join(&s).map_err(|e| {
                        PollError::Remote(format!(
                            "the Link header's next {:?} is not a URL ({e}): check pagination",
                            crate::redact::url_text(&s)
                        ))
                    })?),
                    None => None,
                },
            };
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        let moved = match &self.cfg.cursor {
            HttpCursor::None => None,
            HttpCursor::Field(_) => greatest,
            HttpCursor::Pointer(_) => pointed,
        };
        debug!(source = %sink.ctx.name, records = total, cursor = ?moved, "poll read");
        if moved.is_some() {
            sink.page(Vec::new(), moved).await?;
        }
        Ok(())
    }
}

impl HttpPoller {
    /// One page, retried on 429/5xx and connection failures as `Retry-After` says.
    async fn fetch(&mut self, url: &reqwest::Url, body: Option<&str>) -> Result<Page, PollError> {
        let mut attempt = 0;
        let mut reauthorized = false;
        loop {
            attempt += 1;
            let mut req = if self.cfg.post {
                self.client.post(url.clone())
            } else {
                self.client.get(url.clone())
            };
            req = req.header(reqwest::header::ACCEPT, "application/json");
            for (k, v) in &self.cfg.headers {
                req = req.header(k, v);
            }
            if let Some(b) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_owned());
            }
            req = self.authorize(req).await?;
            let wait = match req.send().await {
                Err(e) => {
                    let why = format!("{}: {}", redact(url), describe(e));
                    if attempt >= ATTEMPTS {
                        return Err(PollError::Remote(why));
                    }
                    debug!("{why}; trying again");
                    Duration::from_secs(1 << attempt)
                }
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let bytes = read_limited(resp).await.map_err(|e| {
                        PollError::Remote(format!("{}: cannot read the answer: {e}", redact(url)))
                    })?;
                    if status.is_success() {
                        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                            PollError::Remote(format!(
                                "{} answered {status} with a body that is not JSON ({e}): {}",
                                redact(url),
                                excerpt(&bytes)
                            ))
                        })?;
                        return Ok(Page {
                            body,
                            link_next: link_next(&headers),
                        });
                    }
                    let said = format!("{} answered {status}: {}", redact(url), excerpt(&bytes));
                    if status.as_u16() == 401
                        && matches!(self.cfg.auth, HttpAuth::OAuth2 { .. })
                        && !reauthorized
                    {
                        // The token may have been revoked before it expired: fetch a new one once.
                        self.oauth = None;
                        reauthorized = true;
                        attempt -= 1;
                        continue;
                    }
                    let retryable = status.as_u16() == 429 || status.is_server_error();
                    if !retryable {
                        let advice = match status.as_u16() {
                            401 | 403 => " (check the source's credentials)",
                            404 => " (check the source's url)",
                            _ => "",
                        };
                        return Err(PollError::Remote(format!("{said}{advice}")));
                    }
                    if attempt >= ATTEMPTS {
                        return Err(PollError::Remote(said));
                    }
                    let after = headers
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
                    debug!("{said}; trying again");
                    after
                        .unwrap_or(Duration::from_secs(1 << attempt))
                        .min(RETRY_AFTER_CAP)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn authorize(
        &mut self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, PollError> {
        Ok(match &self.cfg.auth {
            HttpAuth::None => req,
            HttpAuth::Bearer(secret) => {
                let token = secret.load()?;
                req.header(AUTHORIZATION, bearer(&token)?)
            }
            HttpAuth::Basic { username, password } => {
                let password = password.load()?;
                remember_basic(username, password.expose());
                req.basic_auth(username, Some(password.expose()))
            }
            HttpAuth::OAuth2 { .. } => {
                let fresh = matches!(&self.oauth, Some((_, until)) if Instant::now() < *until);
                if !fresh {
                    self.oauth = Some(self.oauth_token().await?);
                }
                let (token, _) = self.oauth.as_ref().expect("just set");
                req.header(AUTHORIZATION, bearer(token)?)
            }
        })
    }

    /// A client-credentials token, and until when to use it (30 s before it expires).
    async fn oauth_token(&self) -> Result<(Secret, Instant), PollError> {
        let HttpAuth::OAuth2 {
            token_url,
            client_id,
            secret,
            scope,
        } = &self.cfg.auth
        else {
            unreachable!("called for oauth2 only")
        };
        let client_secret = secret.load()?;
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(s) = scope {
            form.push(("scope", s.clone()));
        }
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let resp = self
            .client
            .post(token_url.clone())
            .basic_auth(client_id, {
                remember_basic(client_id, client_secret.expose());
                Some(client_secret.expose())
            })
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                PollError::Remote(format!("token_url {}: {}", redact(token_url), describe(e)))
            })?;
        let status = resp.status();
        let bytes = read_limited(resp)
            .await
            .map_err(|e| PollError::Remote(format!("token_url: cannot read the answer: {e}")))?;
        if !status.is_success() {
            return Err(PollError::Remote(format!(
                "token_url {} answered {status}: {} (check client_id and client_secret)",
                redact(token_url),
                excerpt(&bytes)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            PollError::Remote(format!(
                "token_url {} answered without an access_token: {e}",
                redact(token_url)
            ))
        })?;
        let life = Duration::from_secs(answer.expires_in.unwrap_or(300).max(1));
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(30)).max(life / 2);
        info!(
            "fetched an OAuth 2 access token (valid for {})",
            humantime::format_duration(life)
        );
        Ok((Secret::new(answer.access_token), until))
    }
}

fn bearer(token: &Secret) -> Result<HeaderValue, PollError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| PollError::Remote("the token holds characters a header cannot".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// A body, up to [`MAX_RESPONSE`] bytes.
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if out.len() + chunk.len() > MAX_RESPONSE {
            return Err(format!(
                "the answer is larger than {} MiB",
                MAX_RESPONSE >> 20
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Takes the records out of a response: the array at `pointer` (an object there is one
/// record).
pub fn take_records(body: &mut Value, pointer: &str) -> Result<Vec<Map<String, Value>>, String> {
    let Some(at) = body.pointer_mut(pointer) else {
        return Err(format!(
            "the answer has nothing at records = {pointer:?}: {}",
            excerpt(body.to_string().as_bytes())
        ));
    };
    match at.take() {
        Value::Null => Ok(Vec::new()),
        Value::Object(o) => Ok(vec![o]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(o) => Ok(o),
                other => Err(format!(
                    "record {i} at {pointer:?} is not an object: {}",
                    truncate(&other.to_string(), 100)
                )),
            })
            .collect(),
        other => Err(format!(
            "records = {pointer:?} points at {}, not an array of records",
            truncate(&other.to_string(), 100)
        )),
    }
}

/// A cursor value: strings and numbers as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether cursor value `a` is later than `b`: as instants if both are times, as numbers if
/// both are numbers, else as text.
pub fn later(a: &str, b: &str) -> bool {
    if let (Ok(x), Ok(y)) = (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        return x > y;
    }
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x > y;
    }
    a > b
}

/// `url` with query parameter `name` set to `value` (replacing it if present).
pub fn with_param(url: &reqwest::Url, name: &str, value: &str) -> reqwest::Url {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
    out
}

/// The `rel="next"` target of RFC 8288 `Link` headers.
pub fn link_next(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let Some(target) = target.strip_prefix('<').and_then(|t| t.strip_suffix('>')) else {
                continue;
            };
            let next = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=").is_some_and(|r| {
                    r.trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if next {
                return Some(target.to_owned());
            }
        }
    }
    None
}

/// A URL for messages and origins: without its user info and query values (either may hold
/// a secret).
fn redact(url: &reqwest::Url) -> String {
    crate::redact::url(url)
}

/// Remembers the `Authorization: Basic` value built from `user` and `password`, so that an
/// answer quoting the request's headers back has it masked.
fn remember_basic(user: &str, password: &str) {
    use base64::Engine;
    crate::redact::remember(
        &base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_the_configuration_accepts_are_those_reqwest_accepts() {
        let names = (0..=255u8)
            .map(|b| String::from_utf8_lossy(&[b]).into_owned())
            .chain(["X-Api-Key", "x_tenant", "", "a b", "é", "a:b", "Accept"].map(String::from))
            .chain(["a".repeat(65_535), "a".repeat(65_536)]);
        for name in names {
            assert_eq!(
                crate::config::is_header_name(&name),
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn link_header_next_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            LINK,
            HeaderValue::from_static(
                r#"<https://acd.example/calls?page=1>; rel="prev", <https://acd.example/calls?page=3>; rel="next""#,
            ),
        );
        assert_eq!(
            link_next(&h).as_deref(),
            Some("https://acd.example/calls?page=3")
        );
        let mut last = HeaderMap::new();
        last.append(
            LINK,
            HeaderValue::from_static(r#"</calls?page=1>; rel="first""#),
        );
        assert_eq!(link_next(&last), None);
    }

    #[test]
    fn cursor_values_compare_as_times_numbers_or_text() {
        assert!(later("2024-05-01T10:00:00+02:00", "2024-05-01T07:59:59Z"));
        assert!(!later("2024-05-01T10:00:00+02:00", "2024-05-01T08:00:01Z"));
        assert!(later("10", "9"));
        assert!(later("b", "a"));
    }

    #[test]
    fn page_parameters_replace_and_keep_the_rest() {
        let u = reqwest::Url::parse("https://acd.example/calls?since=x&page=1").unwrap();
        let v = with_param(&u, "page", "2");
        assert_eq!(v.as_str(), "https://acd.example/calls?since=x&page=2");
    }

    #[test]
    fn records_are_found_at_the_pointer_or_refused_clearly() {
        let body = serde_json::json!({"data": {"items": [{"a": 1}, {"a": 2}]}, "one": {"a": 3}});
        assert_eq!(
            take_records(&mut body.clone(), "/data/items")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(take_records(&mut body.clone(), "/one").unwrap().len(), 1);
        let e = take_records(&mut body.clone(), "/missing").unwrap_err();
        assert!(e.contains("/missing"), "{e}");
        let e = take_records(&mut serde_json::json!({"x": [1]}), "/x").unwrap_err();
        assert!(e.contains("record 0"), "{e}");
    }
}
