//! A fake ACD reporting API for the `http` source: calls changed since a time, served in
//! pages of [`PAGE`] in each pagination style, behind bearer, basic or OAuth 2 client
//! credentials auth, failing on request.
//!
//! `GET /<style>/calls?since=<RFC 3339>` with `<style>` one of `page` (`&page=1..`),
//! `offset` (`&offset=0, 7, ..`), `next` (the body's `/links/next`), `link` (a `Link`
//! header). Records are `{"id", "queue", "started", "updated"}`; each style adds its own
//! id base (page 1000, offset 2000, next 3000, link 4000) so sources do not collide.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

pub const PAGE: usize = 7;
pub const BEARER: &str = "acd-bearer-token";
pub const CLIENT: (&str, &str) = ("injixo", "client-secret-1");
pub const BASIC: (&str, &str) = ("reporter", "basic-pass");

#[derive(Default)]
struct State {
    /// (id, updated, started) of every call.
    calls: Vec<(u64, jiff::Timestamp, jiff::Timestamp)>,
    /// Statuses to answer the next requests with, in order (429/503 with `Retry-After: 1`).
    faults: Vec<u16>,
    /// OAuth 2 tokens handed out; a revoked one answers 401.
    tokens: Vec<String>,
    revoked: Vec<String>,
    /// When each request came, with its status.
    log: Vec<(Instant, String, u16)>,
    /// Appended to every next link (`&token=...`), as APIs that sign their page links do.
    next_suffix: String,
    /// Given as the next link instead of the real one (a link that is not a URL).
    next_instead: Option<String>,
    /// Error answers quote the request's path and query, as many APIs' error pages do.
    echo: bool,
}

#[derive(Clone)]
pub struct AcdApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl AcdApi {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = Self {
            addr,
            state: Arc::default(),
        };
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, std::convert::Infallible>(api.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Adds calls `ids`, started and updated at `at`.
    pub fn add(&self, ids: std::ops::RangeInclusive<u64>, at: &str) {
        self.add_started(ids, at, at);
    }

    /// Adds calls `ids` that started at `started` and were updated at `updated`.
    pub fn add_started(&self, ids: std::ops::RangeInclusive<u64>, started: &str, updated: &str) {
        let started: jiff::Timestamp = started.parse().unwrap();
        let updated: jiff::Timestamp = updated.parse().unwrap();
        let mut s = self.state.lock().unwrap();
        for id in ids {
            s.calls.push((id, updated, started));
        }
    }

    pub fn fail_next(&self, statuses: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .extend_from_slice(statuses);
    }

    pub fn revoke_tokens(&self) {
        let mut s = self.state.lock().unwrap();
        let all = s.tokens.clone();
        s.revoked.extend(all);
    }

    /// Next links (body and `Link` header) end with `suffix` from now on.
    pub fn sign_next_links(&self, suffix: &str) {
        self.state.lock().unwrap().next_suffix = suffix.to_owned();
    }

    /// Next links are `link` from now on (`None`: the real ones again).
    pub fn next_link_instead(&self, link: Option<&str>) {
        self.state.lock().unwrap().next_instead = link.map(str::to_owned);
    }

    /// Error answers quote the request target (path and query) from now on.
    pub fn echo_requests_in_errors(&self) {
        self.state.lock().unwrap().echo = true;
    }

    /// Every request: when, what, answered with.
    pub fn log(&self) -> Vec<(Instant, String, u16)> {
        self.state.lock().unwrap().log.clone()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        // Every Authorization header: a URL's user info arrives as one more (Basic), beside
        // the one the source's `auth` adds.
        let auths: Vec<String> = req
            .headers()
            .get_all("authorization")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let (status, headers, mut body) = self.route(&path, &query, &auths, &body);
        if status >= 400 && self.state.lock().unwrap().echo {
            body["request"] = Value::String(target);
        }
        self.state
            .lock()
            .unwrap()
            .log
            .push((Instant::now(), path, status));
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        for (k, v) in headers {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        r
    }

    fn route(
        &self,
        path: &str,
        query: &[(String, String)],
        auths: &[String],
        body: &[u8],
    ) -> (u16, Vec<(&'static str, String)>, Value) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut s = self.state.lock().unwrap();
        if path == "/oauth/token" {
            let want = format!("Basic {}", b64.encode(format!("{}:{}", CLIENT.0, CLIENT.1)));
            let form: Vec<(String, String)> =
                url::form_urlencoded::parse(body).into_owned().collect();
            let grant = form
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "client_credentials");
            if !auths.contains(&want) || !grant {
                return (401, vec![], json!({"error": "invalid_client"}));
            }
            let token = format!("tok-{}", s.tokens.len());
            s.tokens.push(token.clone());
            return (
                200,
                vec![],
                json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
            );
        }
        let Some((style, rest)) = path.trim_start_matches('/').split_once('/') else {
            return (404, vec![], json!({"error": "no such path"}));
        };
        if rest != "calls" {
            return (404, vec![], json!({"error": "no such path"}));
        }
        let authorized = auths.iter().any(|auth| match style {
            "page" => *auth == format!("Bearer {BEARER}"),
            "offset" => {
                *auth == format!("Basic {}", b64.encode(format!("{}:{}", BASIC.0, BASIC.1)))
            }
            _ => auth.strip_prefix("Bearer ").is_some_and(|t| {
                s.tokens.iter().any(|k| k == t) && !s.revoked.iter().any(|k| k == t)
            }),
        });
        if !authorized {
            return (401, vec![], json!({"error": "unauthorized"}));
        }
        if !s.faults.is_empty() {
            let status = s.faults.remove(0);
            return (
                status,
                vec![("retry-after", "1".into())],
                json!({"error": "busy"}),
            );
        }
        let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
        let Some(since) = get("since").and_then(|v| v.parse::<jiff::Timestamp>().ok()) else {
            return (
                400,
                vec![],
                json!({"error": "since is required (RFC 3339)"}),
            );
        };
        let base = match style {
            "page" => 1000,
            "offset" => 2000,
            "next" => 3000,
            "link" => 4000,
            _ => return (404, vec![], json!({"error": "no such style"})),
        };
        let mut calls: Vec<(u64, jiff::Timestamp, jiff::Timestamp)> = s
            .calls
            .iter()
            .copied()
            .filter(|(_, at, _)| *at >= since)
            .collect();
        calls.sort_by_key(|(id, at, _)| (*at, *id));
        let start = match style {
            "page" => {
                (get("page")
                    .and_then(|p| p.parse::<usize>().ok())
                    .unwrap_or(1)
                    - 1)
                    * PAGE
            }
            "offset" => get("offset").and_then(|p| p.parse().ok()).unwrap_or(0),
            _ => get("after").and_then(|p| p.parse().ok()).unwrap_or(0),
        };
        let page: Vec<Value> = calls
            .iter()
            .skip(start)
            .take(PAGE)
            .map(|(id, at, started)| {
                json!({"id": base + id, "queue": "support", "started": started.to_string(),
                       "updated": at.to_string()})
            })
            .collect();
        let more = start + PAGE < calls.len();
        let next = match &s.next_instead {
            Some(link) => link.clone(),
            None => format!(
                "/{style}/calls?since={}&after={}{}",
                url::form_urlencoded::byte_serialize(since.to_string().as_bytes())
                    .collect::<String>(),
                start + PAGE,
                s.next_suffix
            ),
        };
        match style {
            "next" => (
                200,
                vec![],
                json!({"data": page, "links": {"next": if more { Value::String(next) } else { Value::Null }}}),
            ),
            "link" => {
                let mut headers = vec![];
                if more {
                    headers.push(("link", format!("<{next}>; rel=\"next\"")));
                }
                (200, headers, json!({"data": page}))
            }
            _ => (200, vec![], json!({"data": page})),
        }
    }
}
