//! Secrets in the configuration (the API key, a database URL, a token, a password): inline, in
//! a file or in an environment variable, read when needed and never shown.

use std::path::PathBuf;

use crate::types::Secret;

/// Why a secret cannot be read. The value itself never appears in it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {key}_file {}: {source}", path.display())]
    File {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}_env names ${var}, which is not set in the environment")]
    Unset { key: String, var: String },
    #[error("{what} from {from} is empty")]
    Empty { what: String, from: String },
}

/// Where the API key comes from. The key itself is read when needed, so a rotated key written
/// to the file is picked up without a restart.
#[derive(Clone, Debug)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
    Inline(Secret),
}

impl TokenSource {
    pub fn load(&self) -> Result<Secret, SecretError> {
        self.load_as("api.token", "the API key")
    }

    pub fn describe(&self) -> String {
        self.describe_as("api.token")
    }

    /// Reads the secret configured under `key` (`key`, `key_file` or `key_env`); `what` names
    /// it in errors. The value itself never appears in them.
    pub fn load_as(&self, key: &str, what: &str) -> Result<Secret, SecretError> {
        let value = match self {
            TokenSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    key: key.to_owned(),
                    path: path.clone(),
                    source,
                })?
            }
            TokenSource::Env(var) => std::env::var(var).map_err(|_| SecretError::Unset {
                key: key.to_owned(),
                var: var.clone(),
            })?,
            TokenSource::Inline(secret) => secret.expose().to_owned(),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(SecretError::Empty {
                what: what.to_owned(),
                from: self.describe_as(key),
            });
        }
        Ok(Secret::new(value))
    }

    pub fn describe_as(&self, key: &str) -> String {
        match self {
            TokenSource::File(p) => format!("{key}_file ({})", p.display()),
            TokenSource::Env(v) => format!("{key}_env (${v})"),
            TokenSource::Inline(_) => key.into(),
        }
    }
}

/// A secret a source needs (a connection string, a token, a password), with the key it is
/// configured under for messages.
#[derive(Clone, Debug)]
pub struct SourceSecret {
    /// The configuration key without `_file`/`_env`, e.g. `source "pg".connection`.
    pub key: String,
    pub from: TokenSource,
}

impl SourceSecret {
    pub fn load(&self) -> Result<Secret, SecretError> {
        let what = self.key.rsplit('.').next().unwrap_or("secret");
        self.from.load_as(&self.key, &format!("the {what}"))
    }
}
