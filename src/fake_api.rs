//! A stand-in for the injixo import API on loopback, for `demo` and the test suites.
//!
//! It checks requests as strictly as the documentation allows: method and path, the bearer
//! key, `Content-Type`, a body of exactly `data` (a non-empty array) and `meta`, the `meta`
//! keys each endpoint takes, and every record against [`schema::check`]. An invalid batch is
//! refused whole with 400, naming the index and reason of every bad record. It can be told to fail:
//! fixed statuses, `Retry-After`, slow answers, dropped connections before or after accepting,
//! a whole outage, and refusing chosen records.
//!
//! It is tooling, not part of the daemon: it runs its own accept loop task.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::normalize::schema;
use crate::types::Emits;

/// A failure to inject into the next request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (and an error body).
    Status(u16),
    /// Answer with this status and `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Wait this long, then handle the request normally (a client that timed out meanwhile
    /// does not know the batch was accepted).
    Slow(Duration),
    /// Close the connection without answering and without accepting.
    Drop,
    /// Accept the batch, then close the connection without answering.
    AcceptThenDrop,
}

/// A request the fake accepted.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub emits: Emits,
    pub meta: Value,
    pub records: Vec<Value>,
    pub idempotency_key: Option<String>,
    pub at: Instant,
}

/// Every request the fake saw, with its answer (0 when it dropped the connection).
#[derive(Clone, Debug)]
pub struct Seen {
    pub status: u16,
    pub records: usize,
    pub idempotency_key: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    token: String,
    accepted: Vec<Accepted>,
    seen: Vec<Seen>,
    faults: VecDeque<Fault>,
    outage: Option<(u16, Option<u64>)>,
    /// How long an accepted batch's answer takes after its records are imported.
    latency: Option<std::time::Duration>,
    refused: Option<(Emits, u16)>,
    reject_containing: Vec<String>,
    /// `true`: accepted records are counted in `counted_only`, not kept (for benchmarks of
    /// millions of records).
    discard: bool,
    counted_only: usize,
    /// Import requests that arrived (before any fault or answer).
    received: usize,
}

impl State {
    /// Every record accepted, kept or only counted.
    fn record_count(&self) -> usize {
        self.counted_only + self.accepted.iter().map(|a| a.records.len()).sum::<usize>()
    }
}

/// A running fake API. Stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeApi {
    /// Listens on `127.0.0.1` on a free port, accepting `token` as the API key.
    pub async fn start(token: &str) -> std::io::Result<FakeApi> {
        Self::start_on("127.0.0.1:0".parse().expect("address"), token).await
    }

    /// Listens on a chosen address (to come back on the same port after a restart).
    pub async fn start_on(addr: SocketAddr, token: &str) -> std::io::Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            ..State::default()
        }));
        let stop = CancellationToken::new();
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                };
                let st = st.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Ok(FakeApi { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to put into `api.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("fake api state"))
    }

    /// Queues a failure for the next request (faults apply in order, one per request).
    pub fn push_fault(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    /// Imports every accepted batch at once but answers it only `latency` later, as an API
    /// under load does: a client that stops waiting cannot know it was imported.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.with(|s| s.latency = Some(latency));
    }

    /// Answers every request with `status` (and `Retry-After`) until cleared with `None`.
    pub fn set_outage(&self, outage: Option<(u16, Option<u64>)>) {
        self.with(|s| s.outage = outage);
    }

    /// Answers every request to one endpoint with `status` (say 403) until cleared.
    pub fn refuse_endpoint(&self, refused: Option<(Emits, u16)>) {
        self.with(|s| s.refused = refused);
    }

    /// Changes the accepted key (as when a customer regenerates it in injixo).
    pub fn set_token(&self, token: &str) {
        self.with(|s| s.token = token.to_owned());
    }

    /// Refuses (400) any batch with a record whose JSON (compact, keys sorted) contains
    /// `marker`.
    pub fn reject_records_containing(&self, marker: &str) {
        self.with(|s| s.reject_containing.push(marker.to_owned()));
    }

    /// Stops refusing records (see [`FakeApi::reject_records_containing`]).
    pub fn clear_rejections(&self) {
        self.with(|s| s.reject_containing.clear());
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.with(|s| s.accepted.clone())
    }

    /// Every accepted record, in the order they arrived.
    pub fn records(&self) -> Vec<Value> {
        self.with(|s| s.accepted.iter().flat_map(|a| a.records.clone()).collect())
    }

    pub fn record_count(&self) -> usize {
        self.with(|s| s.record_count())
    }

    /// Counts accepted records without keeping them (`accepted()` and `records()` stay empty):
    /// for benchmarks that send millions.
    pub fn count_only(&self) {
        self.with(|s| s.discard = true);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    /// Import requests that have arrived, answered or not yet (a slow one is counted at once).
    pub fn received(&self) -> usize {
        self.with(|s| s.received)
    }
}

type Answer = Result<Response<Full<Bytes>>, DropConnection>;

/// Returned to make hyper close the connection without an answer.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Answer {
    // For scripts driving a fake API in another process (`injixo-sync fake-api`).
    if req.method() == hyper::Method::GET && req.uri().path() == "/_fake/stats" {
        let s = state.lock().expect("state");
        let records = s.record_count();
        // Records accepted again under a key already accepted (a resent batch), and how many
        // different records arrived.
        let mut keys = std::collections::HashSet::new();
        let mut texts = std::collections::HashSet::new();
        let mut under_repeated_keys = 0;
        for a in &s.accepted {
            if let Some(k) = &a.idempotency_key
                && !keys.insert(k.as_str())
            {
                under_repeated_keys += a.records.len();
            }
            texts.extend(a.records.iter().map(Value::to_string));
        }
        return Ok(answer(
            200,
            json!({
                "records": records,
                "distinct_records": texts.len(),
                "records_under_repeated_keys": under_repeated_keys,
                "requests": s.seen.len(),
            }),
            None,
        ));
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fault = {
        let mut s = state.lock().expect("state");
        s.received += 1;
        s.faults.pop_front()
    };
    let log = |status: u16, records: usize| {
        state.lock().expect("state").seen.push(Seen {
            status,
            records,
            idempotency_key: key.clone(),
            at: Instant::now(),
        });
    };
    match fault {
        Some(Fault::Status(status)) => {
            log(status, 0);
            return Ok(answer(
                status,
                json!({"error": {"category": "injected"}}),
                None,
            ));
        }
        Some(Fault::RetryAfter(status, secs)) => {
            log(status, 0);
            return Ok(answer(
                status,
                json!({"error": {"category": "rate_limited"}}),
                Some(secs),
            ));
        }
        Some(Fault::Drop) => {
            log(0, 0);
            return Err(DropConnection);
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::AcceptThenDrop) | None => {}
    }
    let outage = state.lock().expect("state").outage;
    if let Some((status, retry)) = outage {
        log(status, 0);
        return Ok(answer(
            status,
            json!({"error": {"category": "unavailable"}}),
            retry,
        ));
    }
    let refused = state.lock().expect("state").refused;
    if let Some((emits, status)) = refused
        && Emits::from_endpoint(req.uri().path()) == Some(emits)
    {
        log(status, 0);
        return Ok(answer(
            status,
            json!({"error": {"category": "forbidden"}}),
            None,
        ));
    }
    let verdict = validate(req, &state).await;
    match verdict {
        Ok((accepted, n)) => {
            log(200, n);
            let latency = {
                let mut st = state.lock().expect("state");
                if st.discard {
                    st.counted_only += n;
                } else {
                    st.accepted.push(Accepted {
                        idempotency_key: key.clone(),
                        ..accepted
                    });
                }
                st.latency
            };
            if let Some(latency) = latency {
                tokio::time::sleep(latency).await;
            }
            if matches!(fault, Some(Fault::AcceptThenDrop)) {
                return Err(DropConnection);
            }
            Ok(answer(200, json!({"accepted": n}), None))
        }
        Err((status, body)) => {
            log(status, 0);
            Ok(answer(status, body, None))
        }
    }
}

/// The accepted request (its records as `Value`s unless the fake only counts) and how many
/// records it had.
async fn validate(
    req: Request<Incoming>,
    state: &Mutex<State>,
) -> Result<(Accepted, usize), (u16, Value)> {
    let error = |status: u16, category: &str, message: String| {
        (
            status,
            json!({"error": {"category": category, "message": message}}),
        )
    };
    let emits = Emits::from_endpoint(req.uri().path()).ok_or_else(|| {
        error(
            404,
            "not_found",
            format!("no route for {}", req.uri().path()),
        )
    })?;
    if req.method() != hyper::Method::POST {
        return Err(error(405, "method_not_allowed", "use POST".into()));
    }
    let token = state.lock().expect("state").token.clone();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {token}")) {
        return Err(error(
            401,
            "unauthorized",
            "invalid or missing bearer token".into(),
        ));
    }
    let json_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err(error(
            415,
            "unsupported_media_type",
            "Content-Type must be application/json".into(),
        ));
    }
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| error(400, "bad_request", format!("cannot read body: {e}")))?
        .to_bytes();
    // Records are checked on their text and become `Value`s only when kept: at benchmark
    // rates the sink shares the machine with the client it measures.
    let obj: std::collections::BTreeMap<std::borrow::Cow<'_, str>, &RawValue> =
        serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                error(400, "bad_request", "body must be an object".into())
            }
            _ => error(400, "bad_request", format!("body is not JSON: {e}")),
        })?;
    if let Some(k) = obj.keys().find(|k| *k != "data" && *k != "meta") {
        return Err(error(400, "bad_request", format!("unknown key `{k}`")));
    }
    let data: Vec<&RawValue> = obj
        .get("data")
        .and_then(|d| serde_json::from_str::<Vec<&RawValue>>(d.get()).ok())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            error(
                400,
                "bad_request",
                "`data` must be a non-empty array".into(),
            )
        })?;
    let Some(Ok(Value::Object(meta))) = obj.get("meta").map(|m| serde_json::from_str(m.get()))
    else {
        return Err(error(400, "bad_request", "`meta` must be an object".into()));
    };
    let allowed: &[&str] = match emits {
        Emits::ContactEvents => &["integrationConfigurationId"],
        Emits::AgentStatuses => &["integrationConfigurationId", "externalSystem"],
    };
    if let Some(k) = meta.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(400, "bad_request", format!("unknown key `meta.{k}`")));
    }
    if meta
        .get("integrationConfigurationId")
        .and_then(Value::as_u64)
        .is_none_or(|id| id == 0)
    {
        return Err(error(
            400,
            "bad_request",
            "`meta.integrationConfigurationId` must be a positive integer".into(),
        ));
    }
    if emits == Emits::AgentStatuses
        && meta
            .get("externalSystem")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
    {
        return Err(error(
            400,
            "bad_request",
            "`meta.externalSystem` must be a non-empty string".into(),
        ));
    }
    let markers = state.lock().expect("state").reject_containing.clone();
    let mut errors = Vec::new();
    for (i, record) in data.iter().enumerate() {
        if let Err(e) = schema::check_json(emits, record.get()) {
            errors.push(json!({"index": i, "message": e}));
        } else if !markers.is_empty() {
            // Markers match the fake's own (key-sorted) rendering of the record.
            let text = serde_json::from_str::<Value>(record.get())
                .map(|v| v.to_string())
                .unwrap_or_default();
            if let Some(m) = markers.iter().find(|m| text.contains(m.as_str())) {
                errors.push(
                    json!({"index": i, "message": format!("record refused (contains {m:?})")}),
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err((
            400,
            json!({"error": {"category": "validation_failed"}, "errors": errors}),
        ));
    }
    let records = if state.lock().expect("state").discard {
        Vec::new()
    } else {
        data.iter()
            .map(|r| serde_json::from_str(r.get()).expect("checked JSON"))
            .collect()
    };
    let accepted = Accepted {
        emits,
        meta: Value::Object(meta),
        records,
        idempotency_key: None,
        at: Instant::now(),
    };
    Ok((accepted, data.len()))
}

fn answer(status: u16, body: Value, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, secs.into());
    }
    resp
}
