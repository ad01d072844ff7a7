//! The daemon's own tables: `[api]`, `[state]`, `[listen]` and `[log]`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::paths::{DEFAULT_API_URL, default_state_path};
use super::problems::{Seg, Validator};
use super::raw::{RawApi, RawListen, RawLog, RawState};
use super::secret::TokenSource;
use crate::logging::{LogConfig, LogFormat};
use crate::types::Secret;

/// `Debug` hides the password in `url` and `proxy` (see [`crate::redact`]); the key is a
/// [`TokenSource`], which never shows it.
#[derive(Clone)]
pub struct ApiConfig {
    pub url: url::Url,
    pub token: TokenSource,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub timeout: Duration,
    pub proxy: Option<url::Url>,
    pub ca_file: Option<PathBuf>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub pause_probe: Duration,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("token", &self.token)
            .field("batch_records", &self.batch_records)
            .field("batch_bytes", &self.batch_bytes)
            .field("linger", &self.linger)
            .field("timeout", &self.timeout)
            .field("proxy", &self.proxy.as_ref().map(crate::redact::url))
            .field("ca_file", &self.ca_file)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("pause_probe", &self.pause_probe)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct StateConfig {
    pub path: PathBuf,
    pub keep_sent: Duration,
    /// Parked input is kept this long for `status` and the operator, then deleted.
    pub keep_parked: Duration,
    /// The disk budget in bytes; `None`: the outbox's size at start plus half the free space.
    pub max_outbox_size: Option<u64>,
}

/// The local HTTP listener: `/healthz`, `/readyz`, `/metrics`, the page and `/status.json`,
/// the webhooks.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub address: std::net::SocketAddr,
    /// Whether the page (`GET /`) is served.
    pub ui: bool,
    /// What the page and `/status.json` ask for (`Authorization: Bearer` or a browser's
    /// Basic login with the token as its password); without one they are served on a loopback
    /// address only.
    pub token: Option<super::SourceSecret>,
    /// `tls_cert`, `tls_key`, `tls_client_ca`: HTTPS only, when set.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Only from these are `X-Forwarded-For` and `Forwarded` believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header trusted proxies name the client in.
    pub forwarded_header: crate::listen_auth::ForwardedHeader,
    /// `/readyz` fails while a lane's oldest pending record is older than this.
    pub ready_pending_age: Duration,
    /// A push's body must have arrived this long after its headers.
    pub body_timeout: Duration,
}

impl Validator<'_> {
    pub(super) fn api(&mut self, raw: RawApi) -> Option<ApiConfig> {
        let k = |key: &'static str| [Seg::Key("api"), Seg::Key(key)];
        let url_text = raw.url.as_deref().unwrap_or(DEFAULT_API_URL);
        let url = match url::Url::parse(url_text) {
            Ok(u) if u.scheme() == "https" => Some(u),
            Ok(u) if u.scheme() == "http" && host_is_loopback(&u) => Some(u),
            Ok(u) if u.scheme() == "http" => {
                self.problem(
                    &k("url"),
                    "api.url",
                    format!(
                        "plain http:// is refused for {:?}: the API key would cross the network in \
                         clear text; use https://",
                        u.host_str().unwrap_or("")
                    ),
                );
                None
            }
            Ok(u) => {
                self.problem(
                    &k("url"),
                    "api.url",
                    format!("scheme {:?} is not supported: use https://", u.scheme()),
                );
                None
            }
            Err(e) => {
                self.problem(
                    &k("url"),
                    "api.url",
                    format!(
                        "{:?} is not a URL ({e}); the default is {DEFAULT_API_URL}",
                        crate::redact::url_text(url_text)
                    ),
                );
                None
            }
        };
        let given = [
            raw.token_file.is_some(),
            raw.token_env.is_some(),
            raw.token.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let token = match (raw.token_file, raw.token_env, raw.token) {
            _ if given > 1 => {
                self.problem(
                    &k("token_file"),
                    "api",
                    "set only one of token_file, token_env and token",
                );
                None
            }
            (Some(f), None, None) => Some(TokenSource::File(self.path(&f))),
            (None, Some(e), None) if !e.is_empty() => Some(TokenSource::Env(e)),
            (None, Some(_), None) => {
                self.problem(&k("token_env"), "api.token_env", "names no variable");
                None
            }
            (None, None, Some(t)) => {
                self.warnings.push(
                    "api.token is written inline in the configuration file: move the key to a \
                     file readable only by the service (api.token_file) or to api.token_env"
                        .into(),
                );
                Some(TokenSource::Inline(Secret::new(t)))
            }
            _ => {
                self.problem(
                    &[Seg::Key("api")],
                    "api",
                    "no API key configured: set token_file (a file holding the key generated in \
                     injixo under Integrations > injixo API) or token_env",
                );
                None
            }
        };
        let batch_records = match raw.batch_records {
            None => 500,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    &k("batch_records"),
                    "api.batch_records",
                    format!("{n} is out of range (1 to 10000)"),
                );
                500
            }
        };
        let batch_bytes = self.size(
            &k("batch_bytes"),
            "api.batch_bytes",
            raw.batch_bytes.as_deref(),
            1 << 20,
            (1024, 64 << 20),
        ) as usize;
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let linger = self.duration(
            &k("linger"),
            "api.linger",
            raw.linger.as_deref(),
            s(1),
            (ms(0), s(3600)),
        );
        let timeout = self.duration(
            &k("timeout"),
            "api.timeout",
            raw.timeout.as_deref(),
            s(30),
            (ms(100), s(600)),
        );
        let retry_initial = self.duration(
            &k("retry_initial"),
            "api.retry_initial",
            raw.retry_initial.as_deref(),
            ms(500),
            (ms(10), s(600)),
        );
        let retry_max = self.duration(
            &k("retry_max"),
            "api.retry_max",
            raw.retry_max.as_deref(),
            s(300),
            (ms(10), s(86_400)),
        );
        let pause_probe = self.duration(
            &k("pause_probe"),
            "api.pause_probe",
            raw.pause_probe.as_deref(),
            s(300),
            (ms(100), s(86_400)),
        );
        let proxy = raw.proxy.and_then(|p| match url::Url::parse(&p) {
            Ok(u) if matches!(u.scheme(), "http" | "https" | "socks5") => Some(u),
            _ => {
                self.problem(
                    &k("proxy"),
                    "api.proxy",
                    format!(
                        "{:?} is not a proxy URL like \"http://proxy.example:3128\"",
                        crate::redact::url_text(&p)
                    ),
                );
                None
            }
        });
        let ca_file = raw.ca_file.map(|f| self.path(&f));
        Some(ApiConfig {
            url: url?,
            token: token?,
            batch_records,
            batch_bytes,
            linger,
            timeout,
            proxy,
            ca_file,
            retry_initial,
            retry_max: retry_max.max(retry_initial),
            pause_probe,
        })
    }

    pub(super) fn state(&mut self, raw: RawState) -> StateConfig {
        let path = raw
            .path
            .map(|p| self.path(&p))
            .unwrap_or_else(default_state_path);
        let keep_sent = self.duration(
            &[Seg::Key("state"), Seg::Key("keep_sent")],
            "state.keep_sent",
            raw.keep_sent.as_deref(),
            Duration::from_secs(14 * 86_400),
            (Duration::ZERO, Duration::from_secs(3650 * 86_400)),
        );
        let keep_parked = self.duration(
            &[Seg::Key("state"), Seg::Key("keep_parked")],
            "state.keep_parked",
            raw.keep_parked.as_deref(),
            Duration::from_secs(30 * 86_400),
            (
                Duration::from_secs(3600),
                Duration::from_secs(3650 * 86_400),
            ),
        );
        let max_outbox_size = self.size(
            &[Seg::Key("state"), Seg::Key("max_outbox_size")],
            "state.max_outbox_size",
            raw.max_outbox_size.as_deref(),
            0,
            (1 << 20, 1 << 50),
        );
        StateConfig {
            path,
            keep_sent,
            keep_parked,
            max_outbox_size: Some(max_outbox_size).filter(|b| *b > 0),
        }
    }

    pub(super) fn listen(&mut self, raw: RawListen) -> ListenConfig {
        let at = |key: &'static str| [Seg::Key("listen"), Seg::Key(key)];
        let text = raw.address.as_deref().unwrap_or("127.0.0.1:9850");
        let address = text.parse().unwrap_or_else(|_| {
            self.problem(
                &at("address"),
                "listen.address",
                format!("{text:?} is not an address like \"127.0.0.1:9850\""),
            );
            ([127, 0, 0, 1], 9850).into()
        });
        let ready_pending_age = self.duration(
            &at("ready_pending_age"),
            "listen.ready_pending_age",
            raw.ready_pending_age.as_deref(),
            Duration::from_secs(3600),
            (Duration::from_secs(1), Duration::from_secs(30 * 86_400)),
        );
        let body_timeout = self.duration(
            &at("body_timeout"),
            "listen.body_timeout",
            raw.body_timeout.as_deref(),
            Duration::from_secs(10),
            (Duration::from_millis(100), Duration::from_secs(300)),
        );
        let token = self
            .secret_at(
                &[Seg::Key("listen")],
                "listen.token",
                "token",
                (raw.token, raw.token_file, raw.token_env),
            )
            .unwrap_or(None);
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: self.path(&cert),
                key: self.path(&key),
                client_ca: raw.tls_client_ca.as_deref().map(|p| self.path(p)),
            }),
            (None, None) => {
                if raw.tls_client_ca.is_some() {
                    self.problem(
                        &at("tls_client_ca"),
                        "listen.tls_client_ca",
                        "needs tls_cert and tls_key: client certificates are asked for over TLS",
                    );
                }
                None
            }
            (Some(_), None) => {
                self.problem(
                    &at("tls_cert"),
                    "listen.tls_key",
                    "is needed with tls_cert: the certificate's private key (PEM)",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    &at("tls_key"),
                    "listen.tls_cert",
                    "is needed with tls_key: the certificate, then its chain (PEM)",
                );
                None
            }
        };
        let trusted_proxies = self.networks(
            &at("trusted_proxies"),
            "listen.trusted_proxies",
            raw.trusted_proxies,
        );
        let forwarded_header = self.one_of(
            &at("forwarded_header"),
            "listen.forwarded_header",
            raw.forwarded_header.as_deref(),
            crate::listen_auth::ForwardedHeader::XForwardedFor,
            &[
                (
                    "x-forwarded-for",
                    crate::listen_auth::ForwardedHeader::XForwardedFor,
                ),
                ("forwarded", crate::listen_auth::ForwardedHeader::Forwarded),
            ],
        );
        ListenConfig {
            address,
            ui: raw.ui.unwrap_or(true),
            token,
            tls,
            trusted_proxies,
            forwarded_header,
            ready_pending_age,
            body_timeout,
        }
    }

    pub(super) fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = self.one_of(
            &[Seg::Key("log"), Seg::Key("format")],
            "log.format",
            raw.format.as_deref(),
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.problem(
                &[Seg::Key("log"), Seg::Key("level")],
                "log.level",
                format!("{level:?} is not a level: use error, warn, info, debug or trace"),
            );
        }
        LogConfig { format, level }
    }
}

fn host_is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
