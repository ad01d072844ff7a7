//! The HTTP client for the injixo API: the only code that builds requests to it.

use std::sync::RwLock;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::classify::Attempt;
use crate::config::{ApiConfig, SecretError, TokenSource};
use crate::text::truncate;
use crate::types::{LaneKey, Secret};
use crate::web::{describe, parse_retry_after};

/// Why the API client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Key(#[from] SecretError),
    #[error("api.proxy {proxy}: {source}")]
    Proxy {
        proxy: String,
        source: reqwest::Error,
    },
    #[error("cannot read api.ca_file {}: {source}", path.display())]
    CaRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("api.ca_file {} holds no usable PEM certificate: {source}", path.display())]
    CaUnusable {
        path: std::path::PathBuf,
        source: reqwest::Error,
    },
    #[error("api.ca_file {} holds no PEM certificate", path.display())]
    CaEmpty { path: std::path::PathBuf },
    #[error("cannot set up HTTPS: {0}")]
    Tls(reqwest::Error),
}

/// Sends batches; holds the API key and re-reads it when the API refuses it.
pub struct ApiClient {
    http: reqwest::Client,
    base: reqwest::Url,
    token_source: TokenSource,
    /// The key, and the destination it makes with `base` (see [`Self::destination`]).
    token: RwLock<(Secret, u64)>,
}

impl ApiClient {
    /// Where its requests go, as a number: the API's address and the key (which names the
    /// customer). A request handed on at a reload counts only for a client with the same.
    pub fn destination(&self) -> u64 {
        self.token.read().expect("token lock").1
    }

    fn keyed(base: &reqwest::Url, token: Secret) -> (Secret, u64) {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(base.as_str().as_bytes())
            .chain_update([0])
            .chain_update(token.expose().as_bytes())
            .finalize();
        let destination = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        (token, destination)
    }

    /// Builds the client: timeout, proxy (`api.proxy`, else `HTTPS_PROXY`/`NO_PROXY`), extra CA
    /// bundle. Fails if the key cannot be read or the CA file is unusable.
    pub fn new(cfg: &ApiConfig) -> Result<Self, ClientError> {
        let token = cfg.token.load()?;
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("injixo-sync/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(50));
        if let Some(proxy) = &cfg.proxy {
            let p = reqwest::Proxy::all(proxy.as_str()).map_err(|source| ClientError::Proxy {
                proxy: crate::redact::url(proxy),
                source,
            })?;
            builder = builder.proxy(p);
        }
        if let Some(ca) = &cfg.ca_file {
            let path = ca.clone();
            let pem = std::fs::read(ca).map_err(|source| ClientError::CaRead {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaUnusable {
                    path: path.clone(),
                    source,
                }
            })?;
            if certs.is_empty() {
                return Err(ClientError::CaEmpty { path });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(ClientError::Tls)?;
        Ok(Self {
            http,
            base: cfg.url.clone(),
            token_source: cfg.token.clone(),
            token: RwLock::new(Self::keyed(&cfg.url, token)),
        })
    }

    /// Reads the key again (after a 401/403, the operator may have written a new one).
    pub fn reload_token(&self) -> Result<(), SecretError> {
        let fresh = Self::keyed(&self.base, self.token_source.load()?);
        *self.token.write().expect("token lock") = fresh;
        Ok(())
    }

    /// The URL of an endpoint under the configured base.
    pub fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{path}"));
        url
    }

    /// POSTs an empty batch (`"data": []`) for `lane`, which imports nothing: for `check`,
    /// whose question is whether the key and the configuration id are taken.
    pub async fn probe(&self, lane: &LaneKey) -> Attempt {
        let body = format!("{{\"data\":[],\"meta\":{}}}", lane.meta_json());
        let key = format!(
            "check-{}-{:08x}",
            jiff::Timestamp::now().as_millisecond(),
            fastrand::u32(..)
        );
        self.post(lane, &key, body).await
    }

    /// POSTs one batch and reports what happened, without judging it.
    pub async fn post(&self, lane: &LaneKey, idempotency_key: &str, body: String) -> Attempt {
        let auth = {
            let token = self.token.read().expect("token lock");
            HeaderValue::from_str(&format!("Bearer {}", token.0.expose()))
        };
        let Ok(mut auth) = auth else {
            return Attempt::Answered {
                status: 401,
                retry_after: None,
                body: "the API key contains characters that cannot be sent in a header".into(),
            };
        };
        auth.set_sensitive(true);
        let request = self
            .http
            .post(self.url(lane.emits.endpoint()))
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", idempotency_key)
            .body(body);
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
                let body = match resp.text().await {
                    // Kept in dead letters and lane health: an answer quoting the request must
                    // not bring api.url's query values along.
                    Ok(t) => truncate(&crate::redact::text(&t), 2000),
                    Err(e) if (200..300).contains(&status) => {
                        // The API said yes; a broken body after that does not undo it.
                        format!("(answer body unreadable: {e})")
                    }
                    Err(e) => return Attempt::Unknown(describe(e)),
                };
                Attempt::Answered {
                    status,
                    retry_after,
                    body,
                }
            }
            Err(e) if e.is_connect() => Attempt::NotSent(describe(e)),
            Err(e) => Attempt::Unknown(describe(e)),
        }
    }
}

/// The request body: `{"data":[...],"meta":{...}}`, built from stored JSON without re-parsing.
pub fn body(meta_json: &str, records: &[(i64, String)]) -> String {
    let len: usize = records.iter().map(|(_, p)| p.len() + 1).sum();
    let mut out = String::with_capacity(len + meta_json.len() + 20);
    out.push_str("{\"data\":[");
    for (i, (_, payload)) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(payload);
    }
    out.push_str("],\"meta\":");
    out.push_str(meta_json);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_documented_shape() {
        let records = vec![(1, r#"{"a":1}"#.to_owned()), (2, r#"{"a":2}"#.to_owned())];
        let b = body(r#"{"integrationConfigurationId":1234}"#, &records);
        assert_eq!(
            b,
            r#"{"data":[{"a":1},{"a":2}],"meta":{"integrationConfigurationId":1234}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
    }
}
