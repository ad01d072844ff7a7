//! The local HTTP listener (`[listen] address`): `/healthz`, `/readyz`, `/metrics`, the page
//! (`/`, with `/help`) and `/status.json`, and the `webhook` sources' `POST /webhook/<source>`
//! (the token as `Authorization: Bearer`) or `POST /webhook/<source>/<token>`, over HTTPS with
//! `[listen] tls_cert` (see [`crate::tls`]).
//!
//! Everything but the pushes reads the daemon's counters and the outbox (read-only) and changes
//! nothing; pushes go to their source's thread, which commits them. It binds to loopback unless
//! told otherwise, and refuses to start when the address is taken. The page and
//! `/status.json` show parked input and dead letters: on an address other than loopback they
//! need the `[listen]` token, or are refused. Routing is axum's `Router`, called as a tower
//! service from the connection loop below, which keeps the loop's limits.
//!
//! It stays answerable under floods: a connection is accepted at once (at most
//! [`MAX_CONNECTIONS`], and [`MAX_CONNECTIONS_PER_CLIENT`] from one address other than
//! loopback and the trusted proxies; beyond that answered 503, or on HTTPS closed, never left
//! waiting in the backlog); a TLS handshake must be done within 10 s; a client that sends no
//! request headers within 10 s (also between requests on a kept-alive connection) is cut off;
//! a push's body must arrive within `body_timeout`; and one client address has at most
//! [`MAX_PUSHES_PER_CLIENT`] push bodies read at once. The
//! socket itself belongs to the process, not to a generation: a reload that keeps the
//! address keeps it, so connections made meanwhile wait in the backlog instead of being
//! refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{any, get};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::counters::{LaneMetrics, SourceMetrics};
use crate::flow::Flow;
use crate::metrics::{self, Depth};
use crate::outbox::{LaneId, Outbox, now_ms};
use crate::page::ConfigGlance;
use crate::sources::webhook::{Hook, Push};
use crate::types::Secret;

/// What the endpoints read.
pub struct Observed {
    pub outbox: Outbox,
    pub state_path: PathBuf,
    pub sources: Vec<Arc<SourceMetrics>>,
    pub lanes: Vec<(LaneId, Arc<LaneMetrics>)>,
    /// `/readyz` fails when a lane's oldest pending record is older than this.
    pub ready_pending_age: Duration,
    /// A push's body must arrive within this after its headers.
    pub body_timeout: Duration,
    /// The `webhook` sources' routes.
    pub hooks: Vec<Hook>,
    /// Push bodies being read, per client address.
    pub reading: Arc<PushesByClient>,
    /// Who may see the page and `/status.json`.
    pub access: Access,
    /// Records per minute, for the page's charts.
    pub flow: Arc<Flow>,
    /// What the page says about the configuration (no secret in it).
    pub glance: ConfigGlance,
    /// The pollers' schedules, for when they poll next.
    pub schedules: Vec<(String, crate::config::Schedule)>,
    pub address: SocketAddr,
    /// `[listen] tls_cert`/`tls_key`: the listener speaks HTTPS only.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// What `/metrics` says about the listener.
    pub listener: metrics::Listener,
    /// `[listen] trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[listen] forwarded_header`: which header trusted proxies name the client in.
    pub forwarded_header: crate::listen_auth::ForwardedHeader,
}

/// Who may see the page and `/status.json`, which show parked input and dead letters.
pub struct Access {
    /// `[listen] ui`: whether the page is served.
    pub ui: bool,
    /// `[listen] token`: asked for as `Authorization: Bearer` or as a browser login's password.
    pub token: Option<Secret>,
    /// Whether the listener is on a loopback address: then, without a token, they are open.
    pub loopback: bool,
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`,
/// with or without a port): a page on the loopback address without a token is served only to
/// those, so that a web site whose name an attacker points at 127.0.0.1 (DNS rebinding) cannot
/// read it from the operator's browser.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Access {
    /// Whether `headers` may see the page's details (see [`Access::check`]).
    fn allows(&self, headers: &HeaderMap) -> bool {
        self.check(headers).is_none()
    }

    /// `None` when `headers` may see them; else the answer that says why not.
    fn check(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.token else {
            if self.loopback && loopback_host(headers) {
                return None;
            }
            if self.loopback {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    "without [listen] token the page and /status.json are served only to \
                     localhost, 127.0.0.1 or [::1] (the Host header named another)",
                ));
            }
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "the page and /status.json show parked input and dead letters: on an address \
                 other than loopback they need [listen] token_file. Or reach them through an \
                 SSH tunnel (ssh -L 9850:127.0.0.1:9850 HOST), or a reverse proxy on this \
                 machine that asks for a login",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                let rest = rest.trim();
                if scheme.eq_ignore_ascii_case("bearer") {
                    Some(rest.to_owned())
                } else if scheme.eq_ignore_ascii_case("basic") {
                    use base64::Engine;
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .ok()?;
                    let text = String::from_utf8(decoded).ok()?;
                    // Any user name: the token is the password.
                    Some(text.split_once(':')?.1.to_owned())
                } else {
                    None
                }
            });
        if given.is_some_and(|g| token.matches(&g)) {
            return None;
        }
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "send the [listen] token: as Authorization: Bearer TOKEN, or in a browser as the \
             password of the login it asks for (any user name)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"injixo-sync\", charset=\"UTF-8\""),
        );
        Some(r)
    }
}

/// The shortest `[listen] token` taken: it guards call data from the network.
pub const PAGE_TOKEN_MIN: usize = 16;

/// Reads `[listen] token` and refuses one shorter than [`PAGE_TOKEN_MIN`].
pub fn page_token(t: &crate::config::SourceSecret) -> Result<Secret, crate::app::StartError> {
    let token = t.load()?;
    if token.expose().chars().count() < PAGE_TOKEN_MIN {
        return Err(crate::app::StartError::PageToken(format!(
            "{} is shorter than {PAGE_TOKEN_MIN} characters: use a long random token, e.g. \
             the output of `openssl rand -hex 24`",
            t.from.describe_as(&t.key)
        )));
    }
    Ok(token)
}

/// The `Authorization` header's scheme and credentials.
fn authorization(headers: &HeaderMap) -> Option<(&str, &str)> {
    let (scheme, rest) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .split_once(' ')?;
    Some((scheme, rest.trim()))
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    authorization(headers)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.to_owned())
}

/// The client's address, put into each request by the connection loop.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// How many of something (push bodies being read, connections) each client address has.
#[derive(Default)]
pub struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// Push bodies being read, per client address.
pub type PushesByClient = PerClient;

impl PerClient {
    /// A slot for one more from `ip`, or `None` when it has `limit`.
    fn enter(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut map = self.0.lock().expect("per client");
        let n = map.entry(ip).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

/// One slot of a client's; given back when dropped.
struct ClientSlot(Arc<PerClient>, IpAddr);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().expect("per client");
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Why the listener cannot bind its address.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "[listen] address {address} is already in use (another injixo-sync, or another \
         program): stop it or choose another address"
    )]
    InUse { address: SocketAddr },
    #[error("cannot listen on [listen] address {address}: {source}")]
    Other {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the listener, with an error that says what to do when the address is taken.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            BindError::InUse { address }
        } else {
            BindError::Other { address, source }
        }
    })
}

/// Serves until `shutdown` fires: each connection on a task of its own (at most
/// [`MAX_CONNECTIONS`], and [`MAX_CONNECTIONS_PER_CLIENT`] per address; one more is turned
/// away at once), over TLS when configured, a client that sends no request headers within
/// 10 s cut off. The listener is borrowed: it outlives a generation.
pub async fn serve(
    listener: Arc<TcpListener>,
    observed: Arc<Observed>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_peer = Arc::new(PerClient::default());
    let tls = observed.tls.clone();
    // Loopback and trusted proxies carry many clients' connections; any other address has
    // at most its share, so that one sender cannot take every slot.
    let trusted = observed.trusted_proxies.clone();
    let router = routes(observed);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                // Out of file descriptors, say: wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let ip = peer.ip().to_canonical();
        let shared = ip.is_loopback() || trusted.iter().any(|n| n.contains(&ip));
        let own = if shared {
            None
        } else {
            match per_peer.enter(ip, MAX_CONNECTIONS_PER_CLIENT) {
                Some(s) => Some(s),
                None => {
                    connections.spawn(turn_away(stream, tls.is_some()));
                    continue;
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            connections.spawn(turn_away(stream, tls.is_some()));
            continue;
        };
        let router = router.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => connection(stream, router, peer, stop).await,
                Some(acceptor) => {
                    if let Some(stream) = handshake(stream, &acceptor).await {
                        connection(stream, router, peer, stop).await;
                    }
                }
            }
            drop((slot, own));
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Serves one connection's requests until it closes or, after `stop`, drains it.
async fn connection<I>(io: I, router: Router, peer: SocketAddr, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stopping = stop.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        let (mut router, stopping) = (router.clone(), stopping.clone());
        req.extensions_mut().insert(Peer(peer));
        async move {
            use tower::Service;
            let mut answer = router.call(req.map(Body::new)).await?;
            if stopping.is_cancelled() {
                // The client learns to come back on a new connection, which the next
                // generation takes, instead of finding this one closed under it.
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            // A request in flight, or one sent in the next moment, is answered with
            // `connection: close`; a connection still idle after that is closed.
            if tokio::time::timeout(CLOSING_GRACE, conn.as_mut()).await.is_err() {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
            }
        }
    }
}

/// The TLS handshake, within the time a client has for its request headers. A client that
/// speaks plain HTTP to the HTTPS listener is answered 400 in plain HTTP, saying so, and
/// closed; one that fails the handshake (no client certificate where one is asked for, an
/// old protocol) is closed.
async fn handshake(
    stream: tokio::net::TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    // One deadline for all of it: the first byte and the whole handshake.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] != 0x16 => {
            // Not a TLS record (a handshake starts with 0x16): an HTTP method, most likely.
            plain_http_refused(stream).await;
            return None;
        }
        Ok(Ok(1)) => {}
        _ => return None,
    }
    tokio::time::timeout_at(deadline, acceptor.accept(stream))
        .await
        .ok()?
        .ok()
}

/// Answers a plain HTTP request on the HTTPS listener with 400 and closes.
async fn plain_http_refused(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "this listener speaks HTTPS only: use https://\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The most connections served at once.
const MAX_CONNECTIONS: usize = 1024;
/// How long a stopping listener keeps serving a kept-alive connection, so that a client's
/// next request gets an answer that says to reconnect rather than a closed connection.
const CLOSING_GRACE: Duration = Duration::from_millis(500);
/// The most connections one address other than loopback and the trusted proxies has at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 128;
/// The most push bodies read at once from one client address.
pub const MAX_PUSHES_PER_CLIENT: usize = 64;

/// Answers a connection over [`MAX_CONNECTIONS`] (or over its address's
/// [`MAX_CONNECTIONS_PER_CLIENT`]) with 503 and closes it, without reading it; on the HTTPS
/// listener it is closed at once (a plain answer would read as a TLS error).
async fn turn_away(mut stream: tokio::net::TcpStream, tls: bool) {
    use tokio::io::AsyncWriteExt;
    if tls {
        let _ = stream.shutdown().await;
        return;
    }
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
                   content-length: 0\r\nconnection: close\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer)).await;
}

fn reply(status: StatusCode, kind: &'static str, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

/// A JSON error answer: `{"error": why}`.
fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    reply(
        status,
        "application/json",
        json!({"error": why.to_string()}).to_string(),
    )
}

/// Every route: the page and `/help`, `/status.json`, health, metrics and the webhooks.
fn routes(o: Arc<Observed>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/help", get(help))
        .route("/status.json", get(status_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/webhook/{*rest}", any(webhook))
        .fallback(not_found)
        .method_not_allowed_fallback(use_get)
        .with_state(o)
}

async fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        "text/plain",
        "not found: try /, /healthz, /readyz, /metrics or /status.json\n".into(),
    )
}

async fn use_get() -> Response {
    let mut r = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "use GET\n".into(),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

async fn healthz() -> Response {
    reply(
        StatusCode::OK,
        "application/json",
        json!({"status": "alive"}).to_string(),
    )
}

/// `GET /readyz`: 200 or 503, with the reasons in words for those who may see the page (what
/// a source or the API said may name a host, a table, a file); others get their count.
async fn readyz(State(o): State<Arc<Observed>>, headers: HeaderMap) -> Response {
    let depths = depths(&o).await;
    let mut reasons = not_ready(&o, &depths);
    let mut warnings = warnings(&o, &depths);
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let ready = reasons.is_empty();
    if !o.access.allows(&headers) {
        let hidden = |list: &mut Vec<String>| {
            if !list.is_empty() {
                *list = vec![format!(
                    "{} (in words with the [listen] token, or on loopback)",
                    list.len()
                )];
            }
        };
        hidden(&mut reasons);
        hidden(&mut warnings);
    }
    reply(
        status,
        "application/json",
        json!({
            "ready": ready,
            "reasons": reasons,
            "warnings": warnings,
        })
        .to_string(),
    )
}

/// `GET /metrics`. With a `[listen]` token on an address other than loopback it asks for the
/// token too (Prometheus sends it with `authorization: credentials`): source names and parked
/// reasons are the site's.
async fn metrics_text(State(o): State<Arc<Observed>>, headers: HeaderMap) -> Response {
    if o.access.token.is_some()
        && !o.access.loopback
        && let Some(refused) = o.access.check(&headers)
    {
        return refused;
    }
    let depths = depths(&o).await;
    let path = o.state_path.clone();
    // Bounded: ten reasons per source, the rest summed.
    let parked = tokio::task::spawn_blocking(move || crate::outbox::parked_counts(&path, 10))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let lanes: Vec<_> = o
        .lanes
        .iter()
        .map(|(id, m)| {
            (
                m.clone(),
                depths
                    .iter()
                    .find(|(l, _)| l == id)
                    .map(|(_, d)| *d)
                    .unwrap_or_default(),
            )
        })
        .collect();
    reply(
        StatusCode::OK,
        metrics::CONTENT_TYPE,
        metrics::render(
            &o.sources,
            &lanes,
            o.outbox.usage(),
            parked,
            &o.listener,
            now_ms(),
        ),
    )
}

/// What a page (HTML) answer carries: no caching, no framing, no script or style from
/// elsewhere (the page's own are inline), no referrer.
fn html_page(body: String) -> Response {
    let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", body);
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /`: the page (see [`crate::page`]).
async fn page(State(o): State<Arc<Observed>>, headers: HeaderMap) -> Response {
    if !o.access.ui {
        return refuse(
            StatusCode::NOT_FOUND,
            "the page is off ([listen] ui = false); /status.json is served",
        );
    }
    if let Some(refused) = o.access.check(&headers) {
        return refused;
    }
    let path = o.state_path.clone();
    let read = match tokio::task::spawn_blocking(move || crate::page::read(&path)).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the outbox: {e}"),
            );
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let view = crate::page::View {
        now_ms: now_ms(),
        report: &read.report,
        dead: &read.dead,
        held: &read.held,
        held_groups: read.held_groups,
        sources: &o.sources,
        lanes: &o.lanes,
        flow: &o.flow,
        glance: &o.glance,
        address: o.address,
        schedules: &o.schedules,
    };
    html_page(crate::page::render(&view))
}

/// `GET /help`: the troubleshooting table of this version's docs/operations.md, which the
/// page links to (it works offline).
async fn help(State(o): State<Arc<Observed>>) -> Response {
    if !o.access.ui {
        return not_found().await;
    }
    html_page(crate::page::help())
}

/// `GET /status.json`: what `injixo-sync status --json` prints, read from the state file on a
/// connection of its own.
async fn status_json(State(o): State<Arc<Observed>>, headers: HeaderMap) -> Response {
    if let Some(refused) = o.access.check(&headers) {
        return refused;
    }
    let path = o.state_path.clone();
    let report = tokio::task::spawn_blocking(move || crate::outbox::inspect(&path, 10)).await;
    match report {
        Ok(Ok(report)) => match serde_json::to_string_pretty(&report) {
            Ok(body) => {
                let mut r = reply(StatusCode::OK, "application/json", body);
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        Ok(Err(e)) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the outbox: {e}"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /webhook/<source>` (`Authorization: Bearer`) or `POST /webhook/<source>/<token>`: the
/// body is committed to the outbox before the 2xx.
///
/// Before the body is read: 404 for an unknown source or a wrong token in the path, 401 for a
/// missing or wrong Bearer token (an unknown source alike, so neither can be probed), then 403
/// for a client `allow` does not name (see [`crate::listen_auth::client_ip`]). After it is
/// read, before anything is kept: 401 for a signature that does not hold.
/// 409 when the push's `Idempotency-Key` came before with other records (nothing kept);
/// 408 for a body that does not arrive within `body_timeout`, 503 when the client has
/// [`MAX_PUSHES_PER_CLIENT`] bodies being read already, 405 for a
/// method other than POST, 415 for a body that is not JSON, 413 above `max_body`, 400 for
/// JSON that is not an object or an array of objects, 422 when nothing in the push could
/// become a record (kept all the same, parked with the reason), 503 when the outbox cannot take it
/// now (retry). 200 otherwise, with what was kept, merged (sent before), skipped and rejected.
/// Every element of a push is a record of its own; a push sent again under the same
/// `Idempotency-Key` (or, without one, with the same body; a signed one by what was signed) is
/// recognised and merged.
async fn webhook(
    State(o): State<Arc<Observed>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
) -> Response {
    use http_body_util::BodyExt;
    let rest = req
        .uri()
        .path()
        .strip_prefix("/webhook/")
        .unwrap_or_default()
        .to_owned();
    let (name, token) = rest.split_once('/').unwrap_or((&rest, ""));
    let hook = o.hooks.iter().find(|h| h.name.as_str() == name);
    let counters = o.sources.iter().find(|s| s.name.as_str() == name);
    let count = |n: fn(&SourceMetrics) -> &std::sync::atomic::AtomicU64| {
        if let Some(c) = counters {
            n(c).fetch_add(1, Relaxed);
        }
    };
    // The token first, in the path or else as `Authorization: Bearer`: an unknown source and
    // a wrong token are answered alike, so that neither can be probed.
    let hook = if !token.is_empty() {
        match hook {
            Some(h) if h.token_matches(token) => h,
            _ => {
                count(|c| &c.refused_token);
                return refuse(StatusCode::NOT_FOUND, "no such webhook");
            }
        }
    } else {
        let bearer = bearer(req.headers());
        match hook {
            Some(h) if bearer.as_deref().is_some_and(|t| h.token_matches(t)) => h,
            _ => {
                count(|c| &c.refused_token);
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    "no such webhook, or not its token: send Authorization: Bearer TOKEN \
                     (or the token at the end of the path)",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"injixo-sync\""),
                );
                return r;
            }
        }
    };
    let client = crate::listen_auth::client_ip(
        peer.ip(),
        req.headers(),
        &o.trusted_proxies,
        o.forwarded_header,
    );
    if !hook.allows(client) {
        count(|c| &c.refused_address);
        return refuse(
            StatusCode::FORBIDDEN,
            format!("pushes from {client} are not allowed for this webhook (allow)"),
        );
    }
    if req.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
        .unwrap_or(false);
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json",
        );
    }
    // A retried push is recognised by its `Idempotency-Key`, or else by its whole body.
    let idempotency = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if !v.trim().is_empty() && v.trim().len() <= 256 => Some(v.trim().to_owned()),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 256 visible ASCII characters",
            );
        }
    };
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than max_body ({} bytes)", hook.max_body),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > hook.max_body as u64) {
        return too_large();
    }
    let Some(_reading) = o.reading.enter(client, MAX_PUSHES_PER_CLIENT) else {
        return busy(&format!(
            "{MAX_PUSHES_PER_CLIENT} pushes from {client} are being read already"
        ));
    };
    let headers = req.headers().clone();
    let read = http_body_util::Limited::new(req.into_body(), hook.max_body).collect();
    let body = match tokio::time::timeout(o.body_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
        Err(_) => {
            let mut r = refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within body_timeout ({}); nothing was kept",
                    humantime::format_duration(o.body_timeout)
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    if let Some((sig, secret)) = &hook.signature
        && let Err(why) =
            crate::listen_auth::verify(sig, secret, &headers, &body, now_ms().div_euclid(1000))
    {
        match why {
            crate::listen_auth::Refused::Signature(_) => count(|c| &c.refused_signature),
            crate::listen_auth::Refused::Timestamp(_) => count(|c| &c.refused_timestamp),
        }
        return refuse(StatusCode::UNAUTHORIZED, format!("{why}; nothing was kept"));
    }
    let objects = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(o)) => vec![o],
        Ok(serde_json::Value::Array(items)) => {
            let mut objects = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    serde_json::Value::Object(o) => objects.push(o),
                    other => {
                        return refuse(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "item {i} of the array is not an object but {}",
                                kind(&other)
                            ),
                        );
                    }
                }
            }
            objects
        }
        Ok(other) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is {}, not an object or an array of objects",
                    kind(&other)
                ),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let n = objects.len();
    let at = now_ms();
    let objects = objects
        .into_iter()
        .enumerate()
        .map(|(i, o)| (format!("push from {client} at {at}, item {i}"), o))
        .collect();
    // The SHA-256 of the body, after `prefix.` when there is one, in hex.
    let digest = |prefix: Option<&[u8]>| {
        use sha2::Digest;
        let mut d = sha2::Sha256::new();
        if let Some(p) = prefix {
            d.update(p);
            d.update(b".");
        }
        d.update(&body);
        d.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let identity = match idempotency {
        // A signed push is told apart by what was signed (its time and body): an
        // `Idempotency-Key` is not signed, and a push replayed under another key would be
        // kept again.
        _ if hook.signature.is_some() => {
            let signed_time = hook
                .signature
                .as_ref()
                .and_then(|(sig, _)| sig.timestamp_header.as_deref())
                .and_then(|h| headers.get(h))
                .map(|v| v.as_bytes());
            format!("signed:{}", digest(signed_time))
        }
        Some(key) => format!("key:{key}"),
        None => format!("body:{}", digest(None)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let push = Push {
        identity,
        objects,
        reply: tx,
    };
    if hook.offer(push).is_err() {
        return busy("too many pushes are waiting");
    }
    match rx.await {
        Ok(Ok(outcome)) if outcome.conflict => refuse(
            StatusCode::CONFLICT,
            "this Idempotency-Key came before with other records; nothing of this push was \
             kept: send each push under a key of its own",
        ),
        Ok(Ok(outcome)) => {
            let status = if n > 0 && outcome.accepted == 0 && outcome.rejected > 0 {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            reply(
                status,
                "application/json",
                serde_json::to_string(&outcome).expect("serializes"),
            )
        }
        // Full: reading and pushes resume as delivery frees room, which takes longer than a
        // passing fault.
        Ok(Err(e)) if e.is_at_budget() => busy_for(
            &format!("the outbox cannot take the push now: {e}"),
            FULL_RETRY_AFTER,
        ),
        Ok(Err(e)) => busy(&format!("the outbox cannot take the push now: {e}")),
        Err(_) => busy("the source is stopping"),
    }
}

/// 503 with `Retry-After: 5`: nothing was kept, send again.
fn busy(why: &str) -> Response {
    busy_for(why, 5)
}

/// `Retry-After` for a push refused because the outbox is at its budget (seconds).
const FULL_RETRY_AFTER: u32 = 60;

/// 503 with `Retry-After: seconds`: nothing was kept, send again.
fn busy_for(why: &str, seconds: u32) -> Response {
    let mut r = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{why}; nothing was kept, send it again"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    r
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Pending records per lane are counted up to this for `/metrics` and `/readyz`, so that a
/// scrape during a backlog of millions reads a bounded part of it (`status` counts them all).
pub const METRICS_COUNT_CAP: i64 = 1_000_000;

async fn depths(o: &Observed) -> Vec<(LaneId, Depth)> {
    let path = o.state_path.clone();
    let rows =
        tokio::task::spawn_blocking(move || crate::outbox::lane_depths(&path, METRICS_COUNT_CAP))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
    rows.into_iter()
        .map(|d| {
            (
                LaneId(d.lane),
                Depth {
                    pending: d.pending,
                    oldest_pending_ms: d.oldest_pending_ms,
                    damaged: d.damaged,
                    held: d.held,
                },
            )
        })
        .collect()
}

/// What a person must look at although the daemon works, in words: damaged records set
/// aside, contact events held back under new queue names. They do not make it unready: their lane flows on, and an unready daemon would be
/// taken out of a load balancer and refused pushes, which helps nobody; a person must act,
/// which `/metrics` (`injixo_sync_lane_damaged_records`), `status` and `check` also say.
fn warnings(o: &Observed, depths: &[(LaneId, Depth)]) -> Vec<String> {
    let name = |id: &LaneId| {
        o.lanes
            .iter()
            .find(|(l, _)| l == id)
            .map_or_else(|| format!("#{}", id.0), |(_, m)| m.key.to_string())
    };
    let mut out = Vec::new();
    for (id, d) in depths {
        if d.damaged > 0 {
            out.push(format!(
                "lane {}: {} record(s) cannot be decoded (damaged in the state file) and \
                 were set aside as dead letters; the lane goes on. `injixo-sync dead list` \
                 shows them, `injixo-sync dead drop ID` gives them up",
                name(id),
                d.damaged
            ));
        }
        if d.held > 0 {
            out.push(format!(
                "lane {}: {} contact event(s) held back: they bring a new name for a queue \
                 identifier injixo knows under another (it would make a second queue). \
                 `injixo-sync queues` shows them, `queues confirm` or `queues drop` decides",
                name(id),
                d.held
            ));
        }
    }
    out
}

/// Why the daemon is not ready, in words; empty when it is.
fn not_ready(o: &Observed, depths: &[(LaneId, Depth)]) -> Vec<String> {
    let mut reasons = Vec::new();
    if !o.outbox.is_open() {
        reasons.push("the outbox is closed".to_owned());
    }
    let usage = o.outbox.usage();
    if usage.full() {
        reasons.push(format!("the outbox: {}", usage.describe()));
    }
    let now = now_ms();
    for s in &o.sources {
        if let Some(why) = s.stale_verdict(now) {
            reasons.push(format!("source {} is silent: {why}", s.name));
        }
        for problem in s.problems() {
            reasons.push(format!("source {}: {problem}", s.name));
        }
    }
    for (id, depth) in depths {
        if depth.pending > 0 && !o.lanes.iter().any(|(l, _)| l == id) {
            reasons.push(format!(
                "lane #{}: {} record(s) wait in it and no configured source sends to it any \
                 more (a source removed, or its emits changed): `injixo-sync status` shows it",
                id.0, depth.pending
            ));
        }
    }
    for (id, lane) in &o.lanes {
        if lane.paused.load(Relaxed) {
            let why = lane
                .pause_reason
                .lock()
                .expect("pause reason")
                .clone()
                .unwrap_or_default();
            reasons.push(format!("lane {} is paused: {why}", lane.key));
        }
        let oldest = depths
            .iter()
            .find(|(l, _)| l == id)
            .and_then(|(_, d)| d.oldest_pending_ms);
        if let Some(t) = oldest {
            let age = Duration::from_millis((now - t).max(0) as u64);
            if age > o.ready_pending_age {
                reasons.push(format!(
                    "lane {}: the oldest pending record waits for {} (more than {})",
                    lane.key,
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(o.ready_pending_age)
                ));
            }
        }
    }
    reasons
}
