//! Log output: human text or JSON lines, on stderr (journald captures it) or, for the Windows
//! service, in daily files under %ProgramData%\injixo-sync\logs. `RUST_LOG`, when set,
//! overrides `[log] level`. The settings' types live here; `config` fills them from `[log]`,
//! so this module knows nothing of the configuration file.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The `[log]` settings, validated by `config`.
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

/// Installs the global subscriber writing to stderr. A second call (tests, `demo`) is a no-op.
pub fn init(cfg: &LogConfig) {
    // Colours only for a person at a terminal; the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_with(cfg, std::io::stderr, ansi);
}

/// The log folder cannot be written to.
#[cfg(windows)]
#[derive(Debug, thiserror::Error)]
#[error("cannot write logs to {}: {source}", dir.display())]
pub struct LogDirError {
    dir: std::path::PathBuf,
    source: tracing_appender::rolling::InitError,
}

/// Installs the global subscriber writing to daily files `injixo-sync.YYYY-MM-DD.log` in
/// `dir`, keeping the last `keep` of them.
#[cfg(windows)]
pub fn init_files(cfg: &LogConfig, dir: &std::path::Path, keep: usize) -> Result<(), LogDirError> {
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("injixo-sync")
        .filename_suffix("log")
        .max_log_files(keep)
        .build(dir)
        .map_err(|source| LogDirError {
            dir: dir.to_owned(),
            source,
        })?;
    init_with(cfg, appender, false);
    Ok(())
}

/// `RUST_LOG` if set, else `[log] level`; the cron scheduler's own notes ("Uninited", "Job
/// creator created") are kept out below warnings unless asked for by name.
fn filter(env: Option<String>, level: &str) -> EnvFilter {
    let mut wanted = env
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| level.to_owned());
    if !wanted.contains("tokio_cron_scheduler") {
        wanted.push_str(",tokio_cron_scheduler=warn");
    }
    EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info,tokio_cron_scheduler=warn"))
}

fn init_with<W>(cfg: &LogConfig, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter(std::env::var("RUST_LOG").ok(), &cfg.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
