//! The local HTTP listener (`[listen] address`): `/healthz`, `/readyz` and `/metrics`.
//!
//! It reads the daemon's counters and the outbox (read-only) and changes nothing. It binds to
//! loopback unless told otherwise, and refuses to start when the address is taken.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Depth, LaneMetrics, SourceMetrics};
use crate::outbox::{LaneId, Outbox, now_ms};

/// What the endpoints read.
pub struct Observed {
    pub outbox: Outbox,
    pub state_path: PathBuf,
    pub sources: Vec<Arc<SourceMetrics>>,
    pub lanes: Vec<(LaneId, Arc<LaneMetrics>)>,
    /// `/readyz` fails when a lane's oldest pending record is older than this.
    pub ready_pending_age: Duration,
}

/// Binds the listener, with an error that says what to do when the address is taken.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "[listen] address {address} is already in use (another injixo-sync, or another \
                 program): stop it or choose another address"
            )
        } else {
            format!("cannot listen on [listen] address {address}: {e}")
        }
    })
}

/// Serves until `shutdown` fires.
pub async fn serve(listener: TcpListener, observed: Arc<Observed>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let observed = observed.clone();
        let stop = shutdown.clone();
        // One request per connection, one connection at a time: plenty for a scraper and a
        // health probe, a stuck client is cut off after 5 s, and every task of the daemon
        // stays owned by `app`.
        let service = hyper::service::service_fn(move |req| answer(req, observed.clone()));
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::select! {
            _ = conn => {}
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    o: Arc<Observed>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(kind),
        );
        Ok(r)
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(
            StatusCode::OK,
            "application/json",
            json!({"status": "alive"}).to_string(),
        ),
        "/readyz" => {
            let reasons = not_ready(&o).await;
            let status = if reasons.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(
                status,
                "application/json",
                json!({"ready": reasons.is_empty(), "reasons": reasons}).to_string(),
            )
        }
        "/metrics" => {
            let depths = depths(&o).await;
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
                "text/plain; version=0.0.4",
                metrics::render(&o.sources, &lanes, now_ms()),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

async fn depths(o: &Observed) -> Vec<(LaneId, Depth)> {
    let path = o.state_path.clone();
    let rows = tokio::task::spawn_blocking(move || crate::outbox::lane_depths(&path))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    rows.into_iter()
        .map(|(lane, pending, oldest)| {
            (
                LaneId(lane),
                Depth {
                    pending,
                    oldest_pending_ms: oldest,
                },
            )
        })
        .collect()
}

/// Why the daemon is not ready, in words; empty when it is.
async fn not_ready(o: &Observed) -> Vec<String> {
    let mut reasons = Vec::new();
    if !o.outbox.is_open() {
        reasons.push("the outbox is closed".to_owned());
    }
    let depths = depths(o).await;
    let now = now_ms();
    for s in &o.sources {
        if let Some(why) = s.stale_verdict(now) {
            reasons.push(format!("source {} is silent: {why}", s.name));
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
