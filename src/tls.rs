//! TLS for the listener (`[listen] tls_cert`, `tls_key`, `tls_client_ca`): the PEM files read
//! and checked (readable, a key that matches the certificate, valid now), what `check` and
//! `/metrics` say about them (the names covered, the expiry), and the rustls server
//! configuration: TLS 1.2 and 1.3 only, rustls' AEAD suites (no legacy suite exists in it),
//! HTTP/1.1, and client certificates signed by `tls_client_ca` when one is set.
//!
//! The files are read when a configuration is prepared, at the start and at each reload: a
//! certificate rotated on disk takes effect with `systemctl reload`, and a pair that does not
//! load refuses the reload, the running one staying.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the listener's certificate and key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate, then its chain (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must be signed by one of these (PEM), when set.
    pub client_ca: Option<PathBuf>,
}

/// Why the listener's TLS files cannot be used. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read [listen] {key} {}: {why}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("[listen] tls_cert {}: {why}", path.display())]
    Certificate { path: PathBuf, why: String },
    #[error(
        "[listen] tls_key {} does not belong to the certificate in tls_cert {}: {why}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("[listen] tls_client_ca {}: {why}", path.display())]
    ClientCa { path: PathBuf, why: String },
}

/// A certificate and key that load, with what is known about the certificate.
pub struct Loaded {
    pub config: Arc<rustls::ServerConfig>,
    /// Unix seconds after which the certificate is no longer valid.
    pub not_after: i64,
    /// The DNS names and addresses it covers (subject alternative names, else the CN).
    pub names: Vec<String>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("not_after", &self.not_after)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// How long before its expiry a certificate is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

impl Loaded {
    /// Days left until the certificate expires, at `now` (unix seconds).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// A warning when the certificate expires within [`EXPIRY_WARNING_DAYS`].
    pub fn expiry_warning(&self, files: &TlsFiles, now: i64) -> Option<String> {
        let days = self.days_left(now);
        (days < EXPIRY_WARNING_DAYS).then(|| {
            format!(
                "[listen] tls_cert {} expires in {days} day(s), on {}: renew it, then reload",
                files.cert.display(),
                when(self.not_after)
            )
        })
    }
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        key,
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            key,
            path: path.to_owned(),
            why: format!("not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Read {
            key,
            path: path.to_owned(),
            why: "no certificate in it (a PEM \"BEGIN CERTIFICATE\" block)".into(),
        });
    }
    Ok(certs)
}

/// Reads and checks the files; `now` in unix seconds.
pub fn load(files: &TlsFiles, now: i64) -> Result<Loaded, TlsError> {
    let chain = certificates("tls_cert", &files.cert)?;
    let key_pem = read("tls_key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Read {
        key: "tls_key",
        path: files.key.clone(),
        // The parser's message names the PEM section, never the key's bytes.
        why: format!("no private key in it (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let (not_before, not_after, names) =
        describe(&chain[0]).map_err(|why| TlsError::Certificate {
            path: files.cert.clone(),
            why,
        })?;
    if now > not_after {
        return Err(TlsError::Certificate {
            path: files.cert.clone(),
            why: format!("expired on {}: renew it", when(not_after)),
        });
    }
    if now < not_before {
        return Err(TlsError::Certificate {
            path: files.cert.clone(),
            why: format!("not valid before {}", when(not_before)),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3");
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates("tls_client_ca", ca)? {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: ca.clone(),
                        why: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            why: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
        names,
    })
}

/// The certificate's validity (unix seconds) and the names it covers.
fn describe(cert: &CertificateDer<'_>) -> Result<(i64, i64, Vec<String>), String> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("the first certificate cannot be read: {e}"))?;
    let validity = x509.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        names,
    ))
}
