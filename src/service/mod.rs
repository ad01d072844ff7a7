//! Telling the service manager how the daemon is doing.
//!
//! Under systemd (`Type=notify`) the daemon says `READY=1` once the outbox is open and every
//! lane and source has started, keeps a `STATUS=` line with the backlog current, sends
//! `WATCHDOG=1` only while every lane is responsive (no lane stuck in one step longer than the
//! request timeout plus a margin), so a wedged pusher gets restarted, and says `STOPPING=1`
//! when it drains. Under the Windows service control manager, `READY=1` and `STOPPING=1`
//! become the service's running and stop-pending states (see [`windows`]). Elsewhere these
//! calls do nothing.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[cfg(windows)]
pub mod windows;

// `injixo-sync service ...` (a plain comment: clap would take a doc comment for help text).
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum ServiceAction {
    /// Register the service: automatic (delayed) start, restart on failure, this executable
    /// and the configuration given with --config (or the default); creates
    /// %ProgramData%\injixo-sync with a config.example.toml and a logs folder.
    Install,
    /// Stop the service if it runs and remove it; configuration, outbox and logs stay.
    Uninstall,
    /// Start the service and wait until it runs.
    Start,
    /// Stop the service and wait until it has drained.
    Stop,
    /// What the service control manager starts.
    #[command(hide = true)]
    Run,
}

/// `injixo-sync service ...`. `daemon` is what `service run` runs under the service control
/// manager: the daemon with its configuration until the token is cancelled (a stop or a
/// shutdown). It is handed in so that this module never depends on the daemon's own code.
pub fn main(
    config: &Path,
    action: ServiceAction,
    daemon: impl FnOnce(Config, CancellationToken) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    #[cfg(windows)]
    {
        match action {
            ServiceAction::Install => windows::install(config)?,
            ServiceAction::Uninstall => windows::uninstall()?,
            ServiceAction::Start => windows::start()?,
            ServiceAction::Stop => windows::stop()?,
            ServiceAction::Run => windows::run(config, daemon)?,
        }
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(windows))]
    {
        let _ = (config, action, daemon);
        anyhow::bail!(
            "`service` manages the Windows service; on Linux the systemd unit does this \
             (installed by the .deb and .rpm packages): systemctl enable --now injixo-sync"
        )
    }
}

/// A connection to the service manager's notification socket, if there is one.
pub struct Notifier {
    #[cfg(unix)]
    socket: Option<(
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::SocketAddr,
    )>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for Linux's abstract namespace).
    pub fn from_env() -> Self {
        #[cfg(unix)]
        {
            let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|raw| {
                let raw = raw.to_string_lossy().into_owned();
                let addr = socket_addr(&raw)?;
                let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
                Some((sock, addr))
            });
            Self { socket }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    pub fn is_active(&self) -> bool {
        #[cfg(unix)]
        {
            self.socket.is_some()
        }
        #[cfg(windows)]
        {
            windows::is_service()
        }
        #[cfg(not(any(unix, windows)))]
        {
            false
        }
    }

    /// Sends newline-separated `KEY=value` assignments; failures are ignored (the manager may
    /// be gone while we stop).
    pub fn notify(&self, state: &str) {
        #[cfg(unix)]
        if let Some((sock, addr)) = &self.socket {
            let _ = sock.send_to_addr(state.as_bytes(), addr);
        }
        #[cfg(windows)]
        windows::notify(state);
        #[cfg(not(any(unix, windows)))]
        let _ = state;
    }
}

/// The notify socket's address: a path, or `@name` in the abstract namespace (which the
/// `sd-notify` crate, 0.5, takes for a relative path; see ARCHITECTURE.md).
#[cfg(unix)]
fn socket_addr(raw: &str) -> Option<std::os::unix::net::SocketAddr> {
    if let Some(name) = raw.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return std::os::unix::net::SocketAddr::from_abstract_name(name).ok();
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return None;
        }
    }
    std::os::unix::net::SocketAddr::from_pathname(raw).ok()
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
