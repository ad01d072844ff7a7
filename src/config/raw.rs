//! The raw shapes, exactly as the file may write them: unknown keys are refused by serde, and
//! everything else is checked by the validator.

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) api: RawApi,
    #[serde(default)]
    pub(super) state: RawState,
    pub(super) listen: Option<RawListen>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default, rename = "source")]
    pub(super) sources: Vec<RawSource>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) url: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) token: Option<String>,
    pub(super) batch_records: Option<i64>,
    pub(super) batch_bytes: Option<String>,
    pub(super) linger: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) proxy: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) retry_initial: Option<String>,
    pub(super) retry_max: Option<String>,
    pub(super) pause_probe: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) path: Option<String>,
    pub(super) keep_sent: Option<String>,
    pub(super) keep_parked: Option<String>,
    pub(super) max_outbox_size: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) address: Option<String>,
    pub(super) ready_pending_age: Option<String>,
    pub(super) body_timeout: Option<String>,
    pub(super) ui: Option<bool>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) tls_client_ca: Option<String>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) forwarded_header: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) name: Option<String>,
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) integration_id: Option<i64>,
    pub(super) emits: Option<String>,
    pub(super) external_system: Option<String>,
    pub(super) path: Option<String>,
    pub(super) recursive: Option<bool>,
    pub(super) include: Option<Vec<String>>,
    pub(super) exclude: Option<Vec<String>>,
    pub(super) format: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) after: Option<String>,
    pub(super) archive_dir: Option<String>,
    pub(super) settle: Option<String>,
    pub(super) poll_interval: Option<String>,
    pub(super) max_line: Option<String>,
    pub(super) start_at: Option<String>,
    pub(super) delimiter: Option<String>,
    pub(super) encoding: Option<String>,
    pub(super) header: Option<bool>,
    pub(super) columns: Option<Vec<String>>,
    pub(super) timestamp_format: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) map: Option<toml::Table>,
    pub(super) key: Option<toml::Value>,
    pub(super) skip_if: Option<toml::Table>,
    pub(super) expand: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) interval_column: Option<String>,
    pub(super) expand_duration: Option<String>,
    pub(super) duration_unit: Option<String>,
    pub(super) agents: Option<toml::Table>,
    pub(super) activities: Option<toml::Table>,
    pub(super) logout_states: Option<Vec<String>>,
    pub(super) open_interval_flush: Option<String>,
    pub(super) max_interval: Option<String>,
    pub(super) watch: Option<String>,
    pub(super) marker: Option<String>,
    pub(super) channel: Option<String>,
    pub(super) queues: Option<toml::Table>,
    pub(super) stale_after: Option<String>,
    pub(super) business_hours: Option<String>,
    pub(super) schedule: Option<String>,
    pub(super) every: Option<String>,
    pub(super) jitter: Option<String>,
    pub(super) connection: Option<String>,
    pub(super) connection_file: Option<String>,
    pub(super) connection_env: Option<String>,
    pub(super) query: Option<String>,
    pub(super) cursor_column: Option<String>,
    pub(super) initial_cursor: Option<String>,
    pub(super) page_size: Option<i64>,
    pub(super) lag: Option<String>,
    pub(super) overlap: Option<String>,
    pub(super) snapshot: Option<bool>,
    pub(super) timeout: Option<String>,
    pub(super) url: Option<String>,
    pub(super) method: Option<String>,
    pub(super) headers: Option<toml::Table>,
    pub(super) body: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_file: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) records: Option<String>,
    pub(super) pagination: Option<String>,
    pub(super) next_pointer: Option<String>,
    pub(super) page_param: Option<String>,
    pub(super) first_page: Option<i64>,
    pub(super) offset_param: Option<String>,
    pub(super) limit_param: Option<String>,
    pub(super) cursor_field: Option<String>,
    pub(super) cursor_pointer: Option<String>,
    pub(super) max_body: Option<String>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) signature: Option<String>,
    pub(super) signature_header: Option<String>,
    pub(super) signature_secret: Option<String>,
    pub(super) signature_secret_file: Option<String>,
    pub(super) signature_secret_env: Option<String>,
    pub(super) signature_timestamp_header: Option<String>,
    pub(super) signature_max_age: Option<String>,
}
