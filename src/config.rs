//! The TOML configuration: raw serde structs (unknown keys rejected) turned once into validated
//! types. Nothing else in the program reads TOML.
//!
//! Validation collects every problem instead of stopping at the first, and each [`Problem`]
//! names the key (`source[1] "acd".format`), the line where the file has it, and what would be
//! valid. `check` prints them all; `run` refuses to start on any.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::normalize::map::{
    ApiField, Expand, ExpandDuration, FieldSource, KeyTemplate, Mapping, SkipIf,
};
use crate::normalize::time::{TimeFormat, TimeParser};
use crate::sources::parse::{Charset, Endian};
use crate::stale::{BusinessHours, StalePolicy};
use crate::types::{Emits, LaneKey, Secret, SourceName};

/// The API's documented base URL.
pub const DEFAULT_API_URL: &str = "https://api.injixo.com";

mod pollers;
pub use pollers::{
    HttpAuth, HttpConfig, HttpCursor, Pagination, Schedule, SqlConfig, WebhookConfig, When,
};

/// Where the configuration is looked for when neither `--config` nor `$INJIXO_SYNC_CONFIG` says.
pub fn default_config_path() -> PathBuf {
    program_data().join("config.toml")
}

/// Where the outbox lives unless `[state] path` says otherwise.
pub fn default_state_path() -> PathBuf {
    if cfg!(windows) {
        program_data().join("outbox.db")
    } else {
        PathBuf::from("/var/lib/injixo-sync/outbox.db")
    }
}

/// `%ProgramData%\injixo-sync` on Windows (configuration, outbox, logs); `/etc/injixo-sync`
/// elsewhere.
pub fn program_data() -> PathBuf {
    #[cfg(windows)]
    {
        known_program_data()
            .or_else(|| std::env::var_os("ProgramData").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            .join("injixo-sync")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/etc/injixo-sync")
    }
}

/// The ProgramData folder as Windows knows it (services do not always get `%ProgramData%`).
#[cfg(windows)]
fn known_program_data() -> Option<PathBuf> {
    use std::os::windows::ffi::OsStringExt;
    use windows_sys::Win32::System::Com::CoTaskMemFree;
    use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, SHGetKnownFolderPath};
    let mut raw: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: SHGetKnownFolderPath allocates a NUL-terminated string into `raw`, which is read
    // up to its NUL and then freed with CoTaskMemFree as documented.
    unsafe {
        let ok =
            SHGetKnownFolderPath(&FOLDERID_ProgramData, 0, std::ptr::null_mut(), &mut raw) == 0;
        let path = (ok && !raw.is_null()).then(|| {
            let len = (0..).take_while(|&i| *raw.add(i) != 0).count();
            PathBuf::from(std::ffi::OsString::from_wide(std::slice::from_raw_parts(
                raw, len,
            )))
        });
        CoTaskMemFree(raw as *const _);
        path
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from; relative paths inside it are resolved against its folder.
    pub file: PathBuf,
    pub api: ApiConfig,
    pub state: StateConfig,
    pub listen: Option<ListenConfig>,
    pub log: LogConfig,
    pub sources: Vec<SourceConfig>,
    /// Things that work but should be changed (an inline token, say).
    pub warnings: Vec<String>,
}

/// `Debug` hides the password in `url` and `proxy` (see [`crate::redact`]); the key is a
/// [`TokenSource`], which never shows it.
#[derive(Clone)]
pub struct ApiConfig {
    pub url: reqwest::Url,
    pub token: TokenSource,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub timeout: Duration,
    pub proxy: Option<reqwest::Url>,
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

/// Where the API key comes from. The key itself is read when needed, so a rotated key written
/// to the file is picked up without a restart.
#[derive(Clone, Debug)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
    Inline(Secret),
}

impl TokenSource {
    pub fn load(&self) -> Result<Secret, String> {
        self.load_as("api.token", "the API key")
    }

    pub fn describe(&self) -> String {
        self.describe_as("api.token")
    }

    /// Reads the secret configured under `key` (`key`, `key_file` or `key_env`); `what` names
    /// it in errors. The value itself never appears in them.
    pub fn load_as(&self, key: &str, what: &str) -> Result<Secret, String> {
        let value = match self {
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {key}_file {}: {e}", path.display()))?,
            TokenSource::Env(var) => std::env::var(var).map_err(|_| {
                format!("{key}_env names ${var}, which is not set in the environment")
            })?,
            TokenSource::Inline(secret) => secret.expose().to_owned(),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{what} from {} is empty", self.describe_as(key)));
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
    pub fn load(&self) -> Result<Secret, String> {
        let what = self.key.rsplit('.').next().unwrap_or("secret");
        self.from.load_as(&self.key, &format!("the {what}"))
    }
}

#[derive(Clone, Debug)]
pub struct StateConfig {
    pub path: PathBuf,
    pub keep_sent: Duration,
    /// Parked input is kept this long for `status` and the operator, then deleted.
    pub keep_parked: Duration,
}

/// The local HTTP listener for `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub address: std::net::SocketAddr,
    /// `/readyz` fails while a lane's oldest pending record is older than this.
    pub ready_pending_age: Duration,
    /// A push's body must have arrived this long after its headers.
    pub body_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: SourceName,
    pub lane: LaneKey,
    pub kind: SourceKind,
    /// When the source counts as silent (`stale_after`, `business_hours`).
    pub stale: Option<StalePolicy>,
}

#[derive(Clone, Debug)]
pub enum SourceKind {
    Files(FilesConfig),
    Sql(SqlConfig),
    Http(HttpConfig),
    Webhook(WebhookConfig),
}

impl SourceKind {
    /// The secrets the source reads when it runs (the webhook's token is read when it is
    /// built).
    pub fn secrets(&self) -> Vec<&SourceSecret> {
        match self {
            SourceKind::Sql(sql) => vec![&sql.connection],
            SourceKind::Http(http) => match &http.auth {
                HttpAuth::None => vec![],
                HttpAuth::Bearer(t) => vec![t],
                HttpAuth::Basic { password, .. } => vec![password],
                HttpAuth::OAuth2 { secret, .. } => vec![secret],
            },
            SourceKind::Files(_) | SourceKind::Webhook(_) => vec![],
        }
    }

    /// How long an agent-state change read again is recognised as a repeat: pollers read rows
    /// again within their overlap (and ties at the cursor), pushers send a push again when an
    /// answer was lost. A files source never reads a change twice (its cursors are positions),
    /// so it remembers nothing.
    fn remember_repeats(&mut self) {
        const RETRIES: Duration = Duration::from_secs(600);
        let (rows, window) = match self {
            SourceKind::Files(_) => return,
            SourceKind::Sql(s) => (&mut s.rows, s.overlap + RETRIES),
            SourceKind::Http(h) => (&mut h.rows, h.lag + RETRIES),
            SourceKind::Webhook(w) => (&mut w.rows, RETRIES),
        };
        if let Some(states) = rows.states.as_mut() {
            states.settings.remember = jiff::SignedDuration::try_from(window).unwrap_or_default();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Ndjson,
    Csv,
    Tsv,
    /// Asterisk's queue_log (`type = "asterisk_queue_log"`).
    QueueLog,
}

/// What an `asterisk_queue_log` source sends for its queues.
#[derive(Clone, Debug)]
pub struct QueueLogConfig {
    /// `channel` of every contact event (default "calls").
    pub channel: String,
    /// `[source.queues]`: Asterisk queue → (queueIdentifier, queueName); others use the
    /// Asterisk queue name for both.
    pub queues: std::collections::HashMap<String, (String, String)>,
}

impl QueueLogConfig {
    pub fn queue(&self, name: &str) -> (String, String) {
        self.queues
            .get(name)
            .cloned()
            .unwrap_or_else(|| (name.to_owned(), name.to_owned()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// Whole files appear; each is read once it has stopped changing.
    Drop,
    /// Files grow; appended lines are read as they arrive.
    Tail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum After {
    Keep,
    Delete,
    Move(PathBuf),
}

/// How agent state changes become intervals (`emits = "agent_states"`).
#[derive(Clone, Debug)]
pub struct StatesConfig {
    pub settings: crate::normalize::intervals::Settings,
    /// `[source.agents]`: external agent id → the identifier injixo knows; others unchanged.
    pub agents: std::collections::HashMap<String, String>,
    /// `[source.activities]`: ACD state → activity identifier; `"*"` for any other state,
    /// else other states are sent unchanged.
    pub activities: std::collections::HashMap<String, String>,
    /// States that end the agent's session (compared in any case).
    pub logout: Vec<String>,
}

impl StatesConfig {
    /// The activity a raw state means, or `None` for a logout.
    pub fn activity(&self, state: &str) -> Option<String> {
        let state = state.trim();
        if self.logout.iter().any(|l| l.eq_ignore_ascii_case(state)) {
            return None;
        }
        // "paused:lunch" falls back to "paused" (Asterisk pause reasons), then to "*".
        let general = state.split_once(':').map(|(g, _)| g);
        Some(
            self.activities
                .get(state)
                .or_else(|| general.and_then(|g| self.activities.get(g)))
                .or_else(|| self.activities.get("*"))
                .cloned()
                .unwrap_or_else(|| state.to_owned()),
        )
    }

    pub fn agent(&self, id: &str) -> String {
        let id = id.trim();
        self.agents
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }
}

/// How a directory is watched (`watch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// File-system events, unless the directory is on a network file system (SMB/CIFS, NFS,
    /// ...), where events from other machines never arrive: then the poll scan alone.
    Auto,
    /// File-system events wherever the directory is.
    Events,
    /// The poll scan alone.
    Poll,
}

/// `marker = "{name}.done"` or `"{stem}.ok"`: the file that says an export is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// `{stem}` (the name without its last extension) rather than `{name}`.
    pub stem: bool,
    pub suffix: String,
}

impl Marker {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (stem, suffix) = if let Some(rest) = s.strip_prefix("{name}") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("{stem}") {
            (true, rest)
        } else {
            return Err(format!(
                "{s:?} is not a marker: write \"{{name}}.done\" (calls.csv → calls.csv.done) or \
                 \"{{stem}}.ok\" (calls.csv → calls.ok)"
            ));
        };
        if suffix.is_empty() || suffix.contains(['/', '\\', '{', '}']) {
            return Err(format!(
                "{s:?}: the marker needs a plain suffix after {{name}} or {{stem}}, such as \".done\""
            ));
        }
        Ok(Self {
            stem,
            suffix: suffix.to_owned(),
        })
    }

    /// The marker file of a data file.
    pub fn of(&self, path: &Path) -> PathBuf {
        let base = if self.stem {
            path.file_stem()
        } else {
            path.file_name()
        }
        .unwrap_or_default();
        let mut name = base.to_os_string();
        name.push(&self.suffix);
        path.with_file_name(name)
    }

    /// Whether a file is a marker rather than data.
    pub fn is_marker(&self, path: &Path) -> bool {
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(&self.suffix))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Clone, Debug)]
pub struct FilesConfig {
    pub path: PathBuf,
    pub recursive: bool,
    pub include: GlobSet,
    pub exclude: GlobSet,
    pub format: FileFormat,
    pub mode: FileMode,
    pub after: After,
    pub settle: Duration,
    pub poll_interval: Duration,
    /// The longest line (a CSV record) read; a longer one is parked, its first 4 KiB kept.
    pub max_line: usize,
    pub start_at: StartAt,
    pub delimiter: u8,
    /// How the files' bytes become text (`encoding`).
    pub charset: Charset,
    pub header: bool,
    pub columns: Option<Vec<String>>,
    pub rows: RowRules,
    pub watch: Watch,
    /// `marker`: a dropped file is complete once its marker file exists.
    pub marker: Option<Marker>,
    /// `type = "asterisk_queue_log"`.
    pub queue_log: Option<QueueLogConfig>,
    /// Only files modified at or after this (`import --since`; not a configuration key).
    pub modified_since: Option<std::time::SystemTime>,
}

/// `max_line` when not set: far above any real export line, far below what hurts.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// What turns a row (a CSV line, a JSON object, a database row) into records.
#[derive(Clone, Debug, Default)]
pub struct RowRules {
    pub map: Option<Mapping>,
    /// The natural key of a row (`key`), if rows are deduplicated by content.
    pub key: Option<KeyTemplate>,
    pub skip_if: SkipIf,
    /// `emits = "agent_states"`: rows are state changes, built into intervals.
    pub states: Option<StatesConfig>,
}

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", p.render(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Problem {
    /// `config.toml:12: source[0] "acd".format: must be one of ...`
    pub fn render(&self, file: &Path) -> String {
        let place = match self.line {
            Some(l) => format!("{}:{l}", file.display()),
            None => file.display().to_string(),
        };
        if self.key.is_empty() {
            format!("{place}: {}", self.message)
        } else {
            format!("{place}: {}: {}", self.key, self.message)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw shapes, exactly as the file may write them.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    state: RawState,
    listen: Option<RawListen>,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    url: Option<String>,
    token_file: Option<String>,
    token_env: Option<String>,
    token: Option<String>,
    batch_records: Option<i64>,
    batch_bytes: Option<String>,
    linger: Option<String>,
    timeout: Option<String>,
    proxy: Option<String>,
    ca_file: Option<String>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    pause_probe: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<String>,
    keep_sent: Option<String>,
    keep_parked: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Option<String>,
    ready_pending_age: Option<String>,
    body_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    integration_id: Option<i64>,
    emits: Option<String>,
    external_system: Option<String>,
    path: Option<String>,
    recursive: Option<bool>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    format: Option<String>,
    mode: Option<String>,
    after: Option<String>,
    archive_dir: Option<String>,
    settle: Option<String>,
    poll_interval: Option<String>,
    max_line: Option<String>,
    start_at: Option<String>,
    delimiter: Option<String>,
    encoding: Option<String>,
    header: Option<bool>,
    columns: Option<Vec<String>>,
    timestamp_format: Option<String>,
    timezone: Option<String>,
    map: Option<toml::Table>,
    key: Option<String>,
    skip_if: Option<toml::Table>,
    expand: Option<String>,
    interval: Option<String>,
    expand_duration: Option<String>,
    duration_unit: Option<String>,
    agents: Option<toml::Table>,
    activities: Option<toml::Table>,
    logout_states: Option<Vec<String>>,
    open_interval_flush: Option<String>,
    max_interval: Option<String>,
    watch: Option<String>,
    marker: Option<String>,
    channel: Option<String>,
    queues: Option<toml::Table>,
    stale_after: Option<String>,
    business_hours: Option<String>,
    schedule: Option<String>,
    every: Option<String>,
    jitter: Option<String>,
    connection: Option<String>,
    connection_file: Option<String>,
    connection_env: Option<String>,
    query: Option<String>,
    cursor_column: Option<String>,
    initial_cursor: Option<String>,
    page_size: Option<i64>,
    lag: Option<String>,
    overlap: Option<String>,
    snapshot: Option<bool>,
    timeout: Option<String>,
    url: Option<String>,
    method: Option<String>,
    headers: Option<toml::Table>,
    body: Option<String>,
    auth: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
    token_env: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    password_env: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<String>,
    client_secret_env: Option<String>,
    scope: Option<String>,
    records: Option<String>,
    pagination: Option<String>,
    next_pointer: Option<String>,
    page_param: Option<String>,
    first_page: Option<i64>,
    offset_param: Option<String>,
    limit_param: Option<String>,
    cursor_field: Option<String>,
    cursor_pointer: Option<String>,
    max_body: Option<String>,
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                line: None,
                message: format!(
                    "cannot read the configuration: {e} (pass --config PATH or set INJIXO_SYNC_CONFIG)"
                ),
            }],
        })?;
        Self::parse(&text, file)
    }

    /// Validates configuration text; `file` names it in errors and anchors relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().trim_end().to_owned(),
            }],
        })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator {
            doc: toml_edit::Document::parse(text).ok(),
            text,
            base,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let api = v.api(raw.api);
        let state = v.state(raw.state);
        let listen = raw.listen.map(|l| v.listen(l));
        let log = v.log(raw.log);
        let webhooks: Vec<(usize, String)> = raw
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind.as_deref() == Some("webhook"))
            .map(|(i, s)| (i, s.name.clone().unwrap_or_default()))
            .collect();
        let sources = v.sources(raw.sources);
        if listen.is_none() {
            for (i, name) in webhooks {
                v.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("type")],
                    &format!("source[{i}] {name:?}.type"),
                    "\"webhook\" is served on the [listen] address: add [listen] with address = \"...\"",
                );
            }
        }
        if v.problems.is_empty() {
            Ok(Config {
                file: file.to_owned(),
                api: api.expect("validated"),
                state,
                listen,
                log,
                sources,
                warnings: v.warnings,
            })
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems: v.problems,
            })
        }
    }

    /// The distinct lanes the sources feed.
    pub fn lanes(&self) -> Vec<LaneKey> {
        let mut lanes: Vec<LaneKey> = Vec::new();
        for s in &self.sources {
            if !lanes.contains(&s.lane) {
                lanes.push(s.lane.clone());
            }
        }
        lanes
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// A key path: `["source", 1, "map", "timestamp"]`.
#[derive(Clone)]
enum Seg {
    Key(&'static str),
    Owned(String),
    Index(usize),
}

struct Validator<'t> {
    doc: Option<toml_edit::Document<&'t str>>,
    text: &'t str,
    base: PathBuf,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn problem(&mut self, path: &[Seg], label: &str, message: impl Into<String>) {
        let line = self.locate(path);
        self.problems.push(Problem {
            key: label.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// The line of the deepest part of `path` that the file has.
    /// A problem for each of a source's `keys` that is set where it does not apply.
    fn not_applicable(&mut self, i: usize, label: &str, keys: &[(&'static str, bool)], why: &str) {
        for (k, set) in keys {
            if *set {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key(k)],
                    &format!("{label}.{k}"),
                    why,
                );
            }
        }
    }

    fn locate(&self, path: &[Seg]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut span = None;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => item.get(*k),
                Seg::Owned(k) => item.get(k.as_str()),
                Seg::Index(i) => item.get(*i),
            };
            match next {
                Some(n) => {
                    item = n;
                    if let Some(s) = n.span() {
                        span = Some(s);
                    }
                }
                None => break,
            }
        }
        span.map(|s| line_of(self.text, s.start))
    }

    fn duration(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<&str>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw) {
            Ok(d) if d >= range.0 && d <= range.1 => d,
            Ok(_) => {
                self.problem(
                    path,
                    label,
                    format!(
                        "{raw:?} is out of range ({} to {})",
                        humantime::format_duration(range.0),
                        humantime::format_duration(range.1)
                    ),
                );
                default
            }
            Err(_) => {
                self.problem(
                    path,
                    label,
                    format!("{raw:?} is not a duration: write it like \"500ms\", \"30s\", \"5m\", \"14d\""),
                );
                default
            }
        }
    }

    fn path(&self, raw: &str) -> PathBuf {
        let p = PathBuf::from(raw);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn one_of<T: Copy>(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(raw) = raw else { return default };
        if let Some((_, v)) = choices.iter().find(|(n, _)| *n == raw) {
            return *v;
        }
        let names: Vec<_> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.problem(
            path,
            label,
            format!("{raw:?} is not valid: use one of {}", names.join(", ")),
        );
        default
    }

    fn api(&mut self, raw: RawApi) -> Option<ApiConfig> {
        let k = |key: &'static str| [Seg::Key("api"), Seg::Key(key)];
        let url_text = raw.url.as_deref().unwrap_or(DEFAULT_API_URL);
        let url = match reqwest::Url::parse(url_text) {
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
                    format!("{url_text:?} is not a URL ({e}); the default is {DEFAULT_API_URL}"),
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
        let batch_bytes = match raw.batch_bytes.as_deref() {
            None => 1 << 20,
            Some(s) => match s.parse::<bytesize::ByteSize>() {
                Ok(b) if (1024..=64 << 20).contains(&b.as_u64()) => b.as_u64() as usize,
                Ok(_) => {
                    self.problem(
                        &k("batch_bytes"),
                        "api.batch_bytes",
                        format!("{s:?} is out of range (1KiB to 64MiB)"),
                    );
                    1 << 20
                }
                Err(_) => {
                    self.problem(
                        &k("batch_bytes"),
                        "api.batch_bytes",
                        format!("{s:?} is not a size: write it like \"512KiB\" or \"1MiB\""),
                    );
                    1 << 20
                }
            },
        };
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
        let proxy = raw.proxy.and_then(|p| match reqwest::Url::parse(&p) {
            Ok(u) if matches!(u.scheme(), "http" | "https" | "socks5") => Some(u),
            _ => {
                self.problem(
                    &k("proxy"),
                    "api.proxy",
                    format!("{p:?} is not a proxy URL like \"http://proxy.example:3128\""),
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

    fn state(&mut self, raw: RawState) -> StateConfig {
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
        StateConfig {
            path,
            keep_sent,
            keep_parked,
        }
    }

    fn listen(&mut self, raw: RawListen) -> ListenConfig {
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
        ListenConfig {
            address,
            ready_pending_age,
            body_timeout,
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
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

    fn sources(&mut self, raws: Vec<RawSource>) -> Vec<SourceConfig> {
        if raws.is_empty() {
            self.problem(
                &[],
                "source",
                "no [[source]] is configured, so there is nothing to deliver",
            );
        }
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            if let Some(s) = self.source(i, raw, &mut names) {
                out.push(s);
            }
        }
        out
    }

    fn source(
        &mut self,
        i: usize,
        mut raw: RawSource,
        names: &mut HashSet<String>,
    ) -> Option<SourceConfig> {
        let before = self.problems.len();
        let label = match &raw.name {
            Some(n) => format!("source[{i}] {n:?}"),
            None => format!("source[{i}]"),
        };
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");

        let name = match raw.name.as_deref().map(SourceName::parse) {
            None => {
                self.problem(
                    &at("name"),
                    &key("name"),
                    "is required: a stable name; cursors are keyed by it",
                );
                None
            }
            Some(Err(e)) => {
                self.problem(&at("name"), &key("name"), e);
                None
            }
            Some(Ok(n)) if !names.insert(n.as_str().to_owned()) => {
                self.problem(
                    &at("name"),
                    &key("name"),
                    "is used by an earlier source: names must be unique",
                );
                None
            }
            Some(Ok(n)) => Some(n),
        };
        let integration_id = match raw.integration_id {
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                self.problem(
                    &at("integration_id"),
                    &key("integration_id"),
                    format!("{n} is not a configuration id: copy the positive number from the integration's tile in injixo"),
                );
                None
            }
            None => {
                self.problem(
                    &at("integration_id"),
                    &key("integration_id"),
                    "is required: the integration's configuration id from its tile in injixo",
                );
                None
            }
        };
        let emits = match raw.emits.as_deref() {
            Some("contact_events") => Some(Emits::ContactEvents),
            Some("agent_statuses") => Some(Emits::AgentStatuses),
            Some("agent_states") => Some(Emits::AgentStatuses),
            Some(other) => {
                self.problem(
                    &at("emits"),
                    &key("emits"),
                    format!("{other:?} is not valid: use \"contact_events\", \"agent_statuses\" or \"agent_states\""),
                );
                None
            }
            None => {
                self.problem(
                    &at("emits"),
                    &key("emits"),
                    "is required: \"contact_events\", \"agent_statuses\" or \"agent_states\"",
                );
                None
            }
        };
        let external_system = match (emits, raw.external_system.take()) {
            (Some(Emits::AgentStatuses), None) => {
                self.problem(
                    &at("external_system"),
                    &key("external_system"),
                    "is required for agent statuses: the name injixo shows for the source system (meta.externalSystem)",
                );
                None
            }
            (_, Some(s)) if s.trim().is_empty() => {
                self.problem(&at("external_system"), &key("external_system"), "is empty");
                None
            }
            (Some(Emits::ContactEvents), Some(_)) => {
                self.problem(
                    &at("external_system"),
                    &key("external_system"),
                    "applies only to agent statuses: contact events carry no externalSystem",
                );
                None
            }
            (_, s) => s,
        };
        let stale = self.stale(i, &label, &raw);
        let kind = match raw.kind.clone().as_deref() {
            Some("files") => self.files(i, &label, emits, raw),
            Some("asterisk_queue_log") => self.queue_log(i, &label, emits, raw),
            Some("sql") => self.sql(i, &label, emits, raw, None),
            Some("http") => self.http(i, &label, emits, raw),
            Some("webhook") => self.webhook(i, &label, emits, raw),
            Some(t) => {
                self.problem(
                    &at("type"),
                    &key("type"),
                    format!(
                        "{t:?} is not a source type: use \"files\", \"asterisk_queue_log\", \
                         \"sql\", \"http\" or \"webhook\""
                    ),
                );
                None
            }
            None => {
                self.problem(
                    &at("type"),
                    &key("type"),
                    "is required, e.g. type = \"files\"",
                );
                None
            }
        };
        if self.problems.len() > before {
            return None;
        }
        let mut kind = kind;
        if let Some(k) = kind.as_mut() {
            k.remember_repeats();
        }
        Some(SourceConfig {
            name: name?,
            lane: LaneKey {
                emits: emits?,
                integration_id: integration_id?,
                external_system,
            },
            kind: kind?,
            stale,
        })
    }

    fn stale(&mut self, i: usize, label: &str, raw: &RawSource) -> Option<StalePolicy> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let Some(after) = raw.stale_after.as_deref() else {
            if raw.business_hours.is_some() {
                self.problem(
                    &at("business_hours"),
                    &format!("{label}.business_hours"),
                    "applies only with stale_after",
                );
            }
            return None;
        };
        let after = self.duration(
            &at("stale_after"),
            &format!("{label}.stale_after"),
            Some(after),
            Duration::from_secs(7200),
            (Duration::from_secs(1), Duration::from_secs(365 * 86_400)),
        );
        let zone = raw
            .timezone
            .as_deref()
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC);
        let hours = match raw
            .business_hours
            .as_deref()
            .map(|h| BusinessHours::parse(h, zone))
        {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                self.problem(&at("business_hours"), &format!("{label}.business_hours"), e);
                None
            }
        };
        Some(StalePolicy { after, hours })
    }

    /// `type = "asterisk_queue_log"`: the files source tailing one queue_log (and its rotated
    /// names), with the queue_log parser.
    fn queue_log(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
    ) -> Option<SourceKind> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        self.not_applicable(
            i,
            label,
            &[
                ("format", raw.format.is_some()),
                ("mode", raw.mode.is_some()),
                ("include", raw.include.is_some()),
                ("map", raw.map.is_some()),
            ],
            "does not apply to asterisk_queue_log: the file's format is fixed",
        );
        if emits == Some(Emits::AgentStatuses) && raw.emits.as_deref() != Some("agent_states") {
            self.problem(
                &at("emits"),
                &key("emits"),
                "asterisk_queue_log emits \"contact_events\" or \"agent_states\"",
            );
        }
        if raw.connection.is_some() || raw.connection_file.is_some() || raw.connection_env.is_some()
        {
            // Asterisk's realtime queue_log table, through the sql poller.
            if raw.path.is_some() {
                self.problem(
                    &at("path"),
                    &key("path"),
                    "set either path (the queue_log file) or connection (the realtime table), not both",
                );
            }
            let queue_log = self.queue_log_config(i, label, &mut raw);
            if raw.query.is_none() {
                raw.query = Some("SELECT * FROM queue_log".into());
            }
            if raw.cursor_column.is_none() {
                raw.cursor_column = Some("id".into());
                raw.initial_cursor.get_or_insert_with(|| "0".into());
            }
            return self.sql(i, label, emits, raw, Some(queue_log));
        }
        let Some(file) = raw.path.take() else {
            self.problem(
                &at("path"),
                &key("path"),
                "is required: the queue_log file (e.g. /var/log/asterisk/queue_log), or \
                 connection_file for the realtime queue_log table",
            );
            return None;
        };
        let file = self.path(&file);
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            self.problem(&at("path"), &key("path"), "names no file");
            return None;
        };
        let name = globset::escape(&name.to_string_lossy());
        raw.path = Some(dir.display().to_string());
        // The file and its rotated names (queue_log.1 ...), but not compressed rotations.
        raw.include = Some(vec![name.clone(), format!("{name}.*")]);
        if raw.exclude.is_none() {
            raw.exclude = Some(
                [".*", "*.gz", "*.bz2", "*.xz", "*.zst", "*.tmp"]
                    .map(String::from)
                    .to_vec(),
            );
        }
        raw.mode = Some("tail".into());
        raw.format = Some("asterisk_queue_log".into());
        self.files(i, label, emits, raw)
    }

    /// `channel` and `[source.queues]` of an `asterisk_queue_log` source.
    fn queue_log_config(&mut self, i: usize, label: &str, raw: &mut RawSource) -> QueueLogConfig {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let mut queues = std::collections::HashMap::new();
        for (q, v) in raw.queues.take().unwrap_or_default() {
            let pair = match v {
                toml::Value::String(n) if !n.trim().is_empty() => Some((q.clone(), n)),
                toml::Value::Table(t) => {
                    let get = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    match (get("identifier"), get("name")) {
                        (Some(id), Some(n)) if t.len() == 2 => Some((id, n)),
                        (Some(id), None) if t.len() == 1 => Some((id, q.clone())),
                        (None, Some(n)) if t.len() == 1 => Some((q.clone(), n)),
                        _ => None,
                    }
                }
                _ => None,
            };
            match pair {
                Some(p) => {
                    queues.insert(q, p);
                }
                None => self.problem(
                    &at("queues"),
                    &key(&format!("queues.{q}")),
                    "write the queue's name, or { identifier = \"...\", name = \"...\" }",
                ),
            }
        }
        let channel = raw.channel.take().unwrap_or_else(|| "calls".into());
        if !crate::normalize::schema::CHANNELS.contains(&channel.as_str()) {
            self.problem(
                &at("channel"),
                &key("channel"),
                format!(
                    "{channel:?} is not a channel injixo knows: use one of {}",
                    crate::normalize::schema::CHANNELS.join(", ")
                ),
            );
        }
        QueueLogConfig { channel, queues }
    }

    fn files(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        mut raw: RawSource,
    ) -> Option<SourceKind> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let path = match raw.path.take() {
            Some(p) => Some(self.path(&p)),
            None => {
                self.problem(
                    &at("path"),
                    &key("path"),
                    "is required: the directory the ACD writes its exports to",
                );
                None
            }
        };
        let format = match raw.format.as_deref() {
            None => {
                self.problem(
                    &at("format"),
                    &key("format"),
                    "is required: \"ndjson\", \"csv\" or \"tsv\"",
                );
                None
            }
            f => Some(self.one_of(
                &at("format"),
                &key("format"),
                f,
                FileFormat::Ndjson,
                if raw.kind.as_deref() == Some("asterisk_queue_log") {
                    &[("asterisk_queue_log", FileFormat::QueueLog)]
                } else {
                    &[
                        ("ndjson", FileFormat::Ndjson),
                        ("csv", FileFormat::Csv),
                        ("tsv", FileFormat::Tsv),
                    ]
                },
            )),
        };
        let queue_log = (format == Some(FileFormat::QueueLog))
            .then(|| self.queue_log_config(i, label, &mut raw));
        self.not_applicable(
            i,
            label,
            &[
                ("channel", raw.channel.is_some()),
                ("queues", raw.queues.is_some()),
            ],
            "applies only to type = \"asterisk_queue_log\"",
        );
        let mode = self.one_of(
            &at("mode"),
            &key("mode"),
            raw.mode.as_deref(),
            FileMode::Drop,
            &[("drop", FileMode::Drop), ("tail", FileMode::Tail)],
        );
        let include = self.globs(&at("include"), &key("include"), raw.include.take(), &["*"]);
        // Names that writers use while a file is incomplete (rsync's hidden temporaries,
        // browsers' and copy tools' partial files, Office lock files).
        let exclude = self.globs(
            &at("exclude"),
            &key("exclude"),
            raw.exclude.take(),
            &[".*", "*/.*", "*.tmp", "*.part", "*.partial", "~$*"],
        );
        let after = match (raw.after.as_deref(), raw.archive_dir.take()) {
            (None | Some("keep"), None) => After::Keep,
            (Some("delete"), None) => After::Delete,
            (Some("move"), Some(dir)) => After::Move(self.path(&dir)),
            (Some("move"), None) => {
                self.problem(
                    &at("after"),
                    &key("after"),
                    "\"move\" needs archive_dir: the directory read files are moved to",
                );
                After::Keep
            }
            (Some("keep" | "delete") | None, Some(_)) => {
                self.problem(
                    &at("archive_dir"),
                    &key("archive_dir"),
                    "applies only with after = \"move\"",
                );
                After::Keep
            }
            (Some(other), _) => {
                self.problem(
                    &at("after"),
                    &key("after"),
                    format!("{other:?} is not valid: use \"keep\", \"delete\" or \"move\""),
                );
                After::Keep
            }
        };
        if mode == FileMode::Tail && after != After::Keep {
            self.problem(
                &at("after"),
                &key("after"),
                "applies only to mode = \"drop\": a tailed file belongs to the ACD that writes it",
            );
        }
        let s = Duration::from_secs;
        let settle = self.duration(
            &at("settle"),
            &key("settle"),
            raw.settle.as_deref(),
            s(2),
            (Duration::ZERO, s(3600)),
        );
        let poll_interval = self.duration(
            &at("poll_interval"),
            &key("poll_interval"),
            raw.poll_interval.as_deref(),
            s(5),
            (Duration::from_millis(50), s(3600)),
        );
        let max_line = match raw
            .max_line
            .as_deref()
            .map(str::parse::<bytesize::ByteSize>)
        {
            None => DEFAULT_MAX_LINE,
            Some(Ok(b)) if (1024..=64 << 20).contains(&b.as_u64()) => b.as_u64() as usize,
            Some(_) => {
                self.problem(
                    &at("max_line"),
                    &key("max_line"),
                    "write a size from \"1KiB\" to \"64MiB\"",
                );
                DEFAULT_MAX_LINE
            }
        };
        let start_at = self.one_of(
            &at("start_at"),
            &key("start_at"),
            raw.start_at.as_deref(),
            StartAt::Beginning,
            &[("beginning", StartAt::Beginning), ("end", StartAt::End)],
        );
        if raw.start_at.is_some() && mode == FileMode::Drop {
            self.problem(
                &at("start_at"),
                &key("start_at"),
                "applies only to mode = \"tail\": dropped files are always read whole",
            );
        }
        let tabular = matches!(format, Some(FileFormat::Csv | FileFormat::Tsv));
        let delimiter = match (&raw.delimiter, format) {
            (None, Some(FileFormat::Tsv)) => b'\t',
            (None, _) => b',',
            (Some(_), _) if !tabular => {
                self.problem(
                    &at("delimiter"),
                    &key("delimiter"),
                    "applies only to format = \"csv\" or \"tsv\"",
                );
                b','
            }
            (Some(d), _) if d == "\\t" || d == "\t" => b'\t',
            (Some(d), _) if d.len() == 1 && d.is_ascii() && d != "\"" && d != "\n" => {
                d.as_bytes()[0]
            }
            (Some(d), _) => {
                self.problem(
                    &at("delimiter"),
                    &key("delimiter"),
                    format!("{d:?} is not a delimiter: use one ASCII character such as \",\", \";\" or \"\\t\""),
                );
                b','
            }
        };
        let charset = match raw
            .encoding
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("utf-8" | "utf8") => Charset::Utf8,
            Some("windows-1252" | "cp1252" | "latin1" | "iso-8859-1") => Charset::Windows1252,
            Some("utf-16" | "utf16" | "ucs-2" | "unicode") => Charset::Utf16(Endian::Detect),
            Some("utf-16le" | "utf16le") => Charset::Utf16(Endian::Little),
            Some("utf-16be" | "utf16be") => Charset::Utf16(Endian::Big),
            Some(other) => {
                self.problem(
                    &at("encoding"),
                    &key("encoding"),
                    format!(
                        "{other:?} is not supported: use \"utf-8\", \"windows-1252\" (also for \
                         latin1), \"utf-16\" (byte order from the BOM), \"utf-16le\" or \"utf-16be\""
                    ),
                );
                Charset::Utf8
            }
        };
        if !tabular && (raw.header.is_some() || raw.columns.is_some()) {
            self.problem(
                &at(if raw.header.is_some() {
                    "header"
                } else {
                    "columns"
                }),
                &key(if raw.header.is_some() {
                    "header"
                } else {
                    "columns"
                }),
                "applies only to format = \"csv\" or \"tsv\"",
            );
        }
        let header = raw.header.unwrap_or(raw.columns.is_none());
        if tabular && !header && raw.columns.is_none() {
            self.problem(
                &at("header"),
                &key("header"),
                "is false, so `columns = [...]` must name the columns",
            );
        }
        let watch = self.one_of(
            &at("watch"),
            &key("watch"),
            raw.watch.as_deref(),
            Watch::Auto,
            &[
                ("auto", Watch::Auto),
                ("events", Watch::Events),
                ("poll", Watch::Poll),
            ],
        );
        let marker = match raw.marker.as_deref().map(Marker::parse) {
            None => None,
            Some(_) if mode == FileMode::Tail => {
                self.problem(
                    &at("marker"),
                    &key("marker"),
                    "applies only to mode = \"drop\": a tailed file is never complete",
                );
                None
            }
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                self.problem(&at("marker"), &key("marker"), e);
                None
            }
        };
        let rows = self.rows(i, label, emits, &mut raw, tabular, queue_log.is_some())?;
        Some(SourceKind::Files(FilesConfig {
            path: path?,
            recursive: raw.recursive.unwrap_or(false),
            include,
            exclude,
            format: format?,
            mode,
            after,
            settle,
            poll_interval,
            max_line,
            start_at,
            delimiter,
            charset,
            header,
            columns: raw.columns,
            rows,
            watch,
            marker,
            queue_log,
            modified_since: None,
        }))
    }

    /// The keys that turn a row into records: the map, `key`, `skip_if`, `expand` and the
    /// agent-state settings. `tabular` rows (csv, tsv) need a map; `builtin_states` sources
    /// (asterisk) make state changes without one.
    fn rows(
        &mut self,
        i: usize,
        label: &str,
        emits: Option<Emits>,
        raw: &mut RawSource,
        tabular: bool,
        builtin_states: bool,
    ) -> Option<RowRules> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let key = |k: &str| format!("{label}.{k}");
        let expand = match (raw.expand.as_deref(), raw.interval.as_deref()) {
            (None, None) if raw.expand_duration.is_none() => None,
            (Some("interval"), interval) => {
                if interval.is_none() {
                    self.problem(
                        &at("interval"),
                        &key("interval"),
                        "is required with expand = \"interval\": the length of the report's intervals, e.g. \"15m\"",
                    );
                }
                let interval = self.duration(
                    &at("interval"),
                    &key("interval"),
                    interval,
                    Duration::from_secs(900),
                    (Duration::from_secs(1), Duration::from_secs(86_400)),
                );
                let duration = self.one_of(
                    &at("expand_duration"),
                    &key("expand_duration"),
                    raw.expand_duration.as_deref(),
                    ExpandDuration::Total,
                    &[
                        ("total", ExpandDuration::Total),
                        ("average", ExpandDuration::Average),
                    ],
                );
                Some(Expand { interval, duration })
            }
            (Some(other), _) => {
                self.problem(
                    &at("expand"),
                    &key("expand"),
                    format!("{other:?} is not valid: the only expansion is \"interval\""),
                );
                None
            }
            (None, _) => {
                let k = if raw.interval.is_some() {
                    "interval"
                } else {
                    "expand_duration"
                };
                self.problem(&at(k), &key(k), "applies only with expand = \"interval\"");
                None
            }
        };
        if expand.is_some() && raw.map.is_none() {
            self.problem(
                &at("expand"),
                &key("expand"),
                "needs a [source.map] naming the interval's columns",
            );
        }
        let row_key = match raw.key.as_deref().map(KeyTemplate::parse) {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                self.problem(&at("key"), &key("key"), e);
                None
            }
        };
        let skip_if = match raw.skip_if.take() {
            None => SkipIf::default(),
            Some(table) => {
                let mut rules = Vec::new();
                for (column, v) in table {
                    let patterns = match v {
                        toml::Value::String(p) => vec![p],
                        toml::Value::Array(a) => a
                            .into_iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect(),
                        _ => {
                            self.problem(
                                &at("skip_if"),
                                &key(&format!("skip_if.{column}")),
                                "write a pattern or a list of patterns, e.g. [\"TEST*\", \"Internal\"]",
                            );
                            continue;
                        }
                    };
                    rules.push((column, patterns));
                }
                SkipIf::new(rules).unwrap_or_else(|e| {
                    self.problem(&at("skip_if"), &key("skip_if"), e);
                    SkipIf::default()
                })
            }
        };
        let states = if raw.emits.as_deref() == Some("agent_states") {
            if raw.map.is_none() && !builtin_states {
                self.problem(
                    &at("emits"),
                    &key("emits"),
                    "\"agent_states\" needs a [source.map] with agentIdentifier, \
                     activityIdentifier and timestamp",
                );
            }
            let table = |this: &mut Self, name: &'static str, t: Option<toml::Table>| {
                let mut out = std::collections::HashMap::new();
                for (k, v) in t.unwrap_or_default() {
                    match v {
                        toml::Value::String(v) if !v.trim().is_empty() => {
                            out.insert(k, v);
                        }
                        _ => this.problem(
                            &at(name),
                            &key(&format!("{name}.{k}")),
                            "write the identifier as a non-empty string",
                        ),
                    }
                }
                out
            };
            let agents = table(self, "agents", raw.agents.take());
            let activities = table(self, "activities", raw.activities.take());
            let max_interval = self.duration(
                &at("max_interval"),
                &key("max_interval"),
                raw.max_interval.as_deref(),
                Duration::from_secs(12 * 3600),
                (Duration::from_secs(60), Duration::from_secs(7 * 86_400)),
            );
            let flush = raw.open_interval_flush.as_deref().map(|f| {
                self.duration(
                    &at("open_interval_flush"),
                    &key("open_interval_flush"),
                    Some(f),
                    Duration::from_secs(60),
                    (Duration::from_secs(1), Duration::from_secs(86_400)),
                )
            });
            let signed = |d: Duration| jiff::SignedDuration::try_from(d).unwrap_or_default();
            Some(StatesConfig {
                settings: crate::normalize::intervals::Settings {
                    max_interval: signed(max_interval),
                    flush_after: flush.map(signed),
                    // Set by the source's kind (`SourceKind::remember_repeats`).
                    remember: jiff::SignedDuration::ZERO,
                },
                agents,
                activities,
                logout: raw.logout_states.take().unwrap_or_else(|| {
                    ["logout", "logged_out", "loggedout", "offline"]
                        .map(String::from)
                        .to_vec()
                }),
            })
        } else {
            self.not_applicable(
                i,
                label,
                &[
                    ("agents", raw.agents.is_some()),
                    ("activities", raw.activities.is_some()),
                    ("logout_states", raw.logout_states.is_some()),
                    ("open_interval_flush", raw.open_interval_flush.is_some()),
                    ("max_interval", raw.max_interval.is_some()),
                ],
                "applies only with emits = \"agent_states\"",
            );
            None
        };
        let millis = self.one_of(
            &at("duration_unit"),
            &key("duration_unit"),
            raw.duration_unit.as_deref(),
            false,
            &[
                ("s", false),
                ("seconds", false),
                ("ms", true),
                ("milliseconds", true),
            ],
        );
        if raw.duration_unit.is_some() && raw.map.is_none() {
            self.problem(
                &at("duration_unit"),
                &key("duration_unit"),
                "applies only with a [source.map]",
            );
        }
        let map = match (raw.map.take(), emits) {
            (Some(table), Some(emits)) => self
                .mapping(
                    i,
                    label,
                    emits,
                    states.is_some(),
                    table,
                    raw.timestamp_format.take(),
                    raw.timezone.clone(),
                )
                .map(|m| if millis { m.with_milliseconds() } else { m })
                .and_then(|m| match expand {
                    None => Some(m),
                    Some(e) => m
                        .with_expand(e)
                        .map_err(|e| self.problem(&at("expand"), &key("expand"), e))
                        .ok(),
                }),
            (None, _) if tabular => {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i)],
                    &key("map"),
                    "is required for csv and tsv: a [source.map] table from API fields to columns",
                );
                None
            }
            (None, _) => {
                self.not_applicable(
                    i,
                    label,
                    &[
                        ("timestamp_format", raw.timestamp_format.is_some()),
                        ("timezone", raw.timezone.is_some()),
                    ],
                    "applies only with a [source.map]: ndjson lines without a map are \
                     already in the API's shape",
                );
                None
            }
            (Some(_), None) => None,
        };
        if let (Some(m), Some(cols)) = (&map, &raw.columns) {
            let keyed = row_key.iter().flat_map(|k| k.columns());
            for c in m.columns().into_iter().chain(keyed) {
                if !cols.iter().any(|x| x == c) {
                    self.problem(
                        &[Seg::Key("source"), Seg::Index(i), Seg::Key("map")],
                        &key("map"),
                        format!("reads column `{c}`, which `columns` does not name"),
                    );
                }
            }
        }
        Some(RowRules {
            map,
            key: row_key,
            skip_if,
            states,
        })
    }

    fn globs(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<Vec<String>>,
        default: &[&str],
    ) -> GlobSet {
        let patterns = raw.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let mut b = GlobSetBuilder::new();
        for p in &patterns {
            match Glob::new(p) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => self.problem(path, label, format!("{p:?} is not a glob: {e}")),
            }
        }
        b.build().unwrap_or_else(|_| GlobSet::empty())
    }

    #[allow(clippy::too_many_arguments)]
    fn mapping(
        &mut self,
        i: usize,
        label: &str,
        emits: Emits,
        states: bool,
        table: toml::Table,
        timestamp_format: Option<String>,
        timezone: Option<String>,
    ) -> Option<Mapping> {
        let at = |key: &'static str| vec![Seg::Key("source"), Seg::Index(i), Seg::Key(key)];
        let before = self.problems.len();
        let format = match timestamp_format.as_deref().map(TimeFormat::parse) {
            None => TimeFormat::Rfc3339,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                self.problem(
                    &at("timestamp_format"),
                    &format!("{label}.timestamp_format"),
                    e,
                );
                TimeFormat::Rfc3339
            }
        };
        let zone = self.zone(i, label, timezone.as_deref());
        let mut fields = Vec::new();
        for (k, v) in table {
            let path = vec![
                Seg::Key("source"),
                Seg::Index(i),
                Seg::Key("map"),
                Seg::Owned(k.clone()),
            ];
            let mkey = format!("{label}.map.{k}");
            let parsed = if states {
                Mapping::STATE_FIELDS
                    .iter()
                    .copied()
                    .find(|f| f.name() == k)
                    .ok_or_else(|| {
                        format!(
                            "`{k}` is not a field of agent state changes (fields: \
                             agentIdentifier, activityIdentifier, timestamp)"
                        )
                    })
            } else {
                ApiField::parse(&k, emits)
            };
            let field = match parsed {
                Ok(f) => f,
                Err(e) => {
                    self.problem(&path, &mkey, e);
                    continue;
                }
            };
            let source = match v {
                toml::Value::String(col) if !col.is_empty() => Ok(FieldSource::Column(col)),
                toml::Value::Table(t) if t.len() == 1 => {
                    let (kind, val) = t.into_iter().next().expect("one entry");
                    match (kind.as_str(), val) {
                        ("column", toml::Value::String(c)) => Ok(FieldSource::Column(c)),
                        ("template", toml::Value::String(t)) => FieldSource::template(&t),
                        ("value", toml::Value::String(s)) => Ok(FieldSource::Literal(s)),
                        ("value", toml::Value::Boolean(b)) => {
                            Ok(FieldSource::Literal(b.to_string()))
                        }
                        ("value", toml::Value::Integer(n)) => {
                            Ok(FieldSource::Literal(n.to_string()))
                        }
                        ("value", toml::Value::Float(n)) => Ok(FieldSource::Literal(n.to_string())),
                        (other, _) => Err(format!(
                            "`{other}` is not understood: write \"column\", {{ column = \"c\" }}, \
                             {{ value = ... }} or {{ template = \"{{a}}_{{b}}\" }}"
                        )),
                    }
                }
                _ => Err(
                    "write a column name, { column = \"c\" }, { value = ... } or \
                     { template = \"{a}_{b}\" }"
                        .to_owned(),
                ),
            };
            match source {
                Ok(s) => fields.push((field, s)),
                Err(e) => self.problem(&path, &mkey, e),
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let time = TimeParser::new(format, zone);
        let built = if states {
            Mapping::states(fields, time)
        } else {
            Mapping::new(emits, fields, time)
        };
        match built {
            Ok(m) => Some(m),
            Err(e) => {
                self.problem(&at("map"), &format!("{label}.map"), e);
                None
            }
        }
    }
}

impl Validator<'_> {
    /// `timezone`: an IANA zone, UTC when unset.
    fn zone(&mut self, i: usize, label: &str, raw: Option<&str>) -> jiff::tz::TimeZone {
        match raw {
            None | Some("UTC") => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or_else(|_| {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("timezone")],
                    &format!("{label}.timezone"),
                    format!("{name:?} is not an IANA time zone such as \"Europe/Berlin\""),
                );
                jiff::tz::TimeZone::UTC
            }),
        }
    }
}

fn host_is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
