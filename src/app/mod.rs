//! Wiring and lifecycle: the only module that spawns tasks and threads for the daemon.
//!
//! [`run`] opens the outbox, then runs one *generation* (`generation`): one push lane per
//! (endpoint, configuration id, external system), one thread per source, the listener and the
//! background tasks (`tasks`), until the shutdown token fires. On shutdown, sources stop at
//! their next step (what they committed is safe), lanes finish the request in flight or leave
//! the batch pending, and everything is awaited up to a deadline. [`main`] runs one generation
//! after another, one per configuration a reload brings, never two at once.

mod generation;
mod import;
mod tasks;

pub use import::import;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use std::path::PathBuf;

use crate::config::{Config, ConfigError, SecretError};
use crate::outbox::{Outbox, OutboxError};
use crate::push::{ApiClient, ClientError};
use crate::server;
use crate::service::Notifier;
use crate::sources;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// This configuration cannot start. A reload that fails so goes back to the configuration
    /// that ran before.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The process cannot go on: the async runtime or a thread could not start.
    #[error("{0}")]
    Internal(String),
    /// A generation did not stop within its deadline: something still runs (a blocking
    /// database call, say) and might write beside a next generation, so the process ends
    /// instead and the service manager starts it again.
    #[error(
        "not everything stopped within {deadline}: {what}; exiting so that the service \
         manager starts the daemon afresh (nothing is lost: unconfirmed batches are sent again)",
        deadline = humantime::format_duration(*deadline)
    )]
    Stuck { what: String, deadline: Duration },
    /// The state file or its lock file was deleted or replaced under the running daemon.
    #[error("{0}")]
    StateGone(String),
}

/// Why a configuration cannot start: a secret it cannot read, a source or the API client it
/// cannot build, a listen address that is taken.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("source {name:?}: {error}")]
    Source {
        name: String,
        #[source]
        error: sources::BuildError,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Listen(#[from] server::BindError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    PageToken(String),
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The process holds the state file's lock, and moving to another outbox would read every
    /// input again.
    #[error(
        "[state] path changed from {} to {}: restart the service to use another state file",
        from.display(),
        to.display()
    )]
    StateMoved { from: PathBuf, to: PathBuf },
    #[error(transparent)]
    Start(#[from] StartError),
}

/// What lives as long as the process, across generations: the state file's lock, and the
/// counters (a reload keeps counting where the previous configuration left off).
/// Fields drop in order: the outbox and its writer go before the lock, so that the lock is not
/// let go while this process may still commit (see [`Drop`]).
pub struct Kept {
    /// The outbox, opened (checked and migrated) once: a reload does not open it again.
    outbox: Option<Outbox>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: crate::counters::Counters,
    /// Records per minute over the last hour, for the page.
    flow: Arc<crate::flow::Flow>,
    /// Requests in flight that a reload handed from one generation's lanes to the next's.
    handoffs: Arc<crate::push::Handoffs>,
    lock: Arc<crate::outbox::StateLock>,
}

impl Kept {
    /// Takes the state file's lock and opens the outbox. Blocks: call it off the runtime's
    /// workers.
    fn open(config: &Config) -> Result<Self, RunError> {
        let lock = lock_state(config, "run")?;
        let (outbox, writer) = Outbox::open(&config.state.path)?;
        Ok(Self {
            outbox: Some(outbox),
            writer: std::sync::Mutex::new(Some(writer)),
            counters: crate::counters::Counters::default(),
            flow: Arc::default(),
            handoffs: Arc::default(),
            lock: Arc::new(lock),
        })
    }

    fn outbox(&self) -> Outbox {
        self.outbox.clone().expect("open until dropped")
    }

    /// Lets the outbox go and waits for its writer to finish what it was given.
    fn close(self) {
        drop(self);
    }
}

impl Drop for Kept {
    /// The writer finishes the jobs it was given (every handle gone, it stops) before the
    /// lock is let go, however the daemon ends; a writer still busy after a deadline (a disk
    /// that hangs) is left behind, with the lock, for the process's exit to end.
    fn drop(&mut self) {
        self.outbox = None;
        let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !writer.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !writer.is_finished() {
            error!("the outbox writer did not finish within 10 s");
            std::mem::forget(self.lock.clone());
            return;
        }
        if writer.join().is_err() {
            error!("the outbox writer panicked");
        }
    }
}

/// Takes the state file's lock for the life of the daemon: a second daemon on the same
/// state file refuses to start, naming the process that holds it.
pub fn lock_state(config: &Config, command: &str) -> Result<crate::outbox::StateLock, RunError> {
    crate::outbox::writable(&config.state.path)?;
    crate::outbox::StateLock::acquire(&config.state.path, command)
        .map_err(|e| RunError::Outbox(e.into_outbox_error(&config.state.path)))
}

/// Builds a runtime, runs the daemon until SIGTERM or Ctrl-C, and drains it. SIGHUP reloads
/// the configuration file: a valid one replaces the running pipeline (drained first, so
/// nothing is lost or read twice: every cursor is committed with its records); an invalid one
/// is refused and the running one stays, with an error that says why.
pub fn main(config: Config) -> Result<(), RunError> {
    main_until(config, CancellationToken::new())
}

/// [`main`], also stopped by `stop` (the Windows service control manager).
pub fn main_until(config: Config, stop: CancellationToken) -> Result<(), RunError> {
    raise_open_files_limit();
    let kept = Kept::open(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Internal(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(generations(config, &kept, stop));
    if result.is_ok() {
        kept.close();
    }
    // A thread that would not stop (a reload reading from a share that hangs, a source stuck
    // in a driver) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Runs one generation after another: the first configuration, then each reloaded one.
async fn generations(config: Config, kept: &Kept, stop: CancellationToken) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    let reload = Arc::new(tokio::sync::Notify::new());
    let (signals, hup) = (shutdown.clone(), reload.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = wait_for_signals(&hup) => {}
            _ = stop.cancelled() => {}
        }
        info!("stop requested");
        signals.cancel();
    });
    let mut current = prepare(config)?;
    // The configuration that ran before a reload, to go back to if the reloaded one fails
    // while starting (a listen address that is taken, say).
    let mut previous: Option<Config> = None;
    let mut listening = Listening::default();
    loop {
        let config = current.config.clone();
        let stop_generation = shutdown.child_token();
        let socket = match (listening.for_config(&config).await, previous.take()) {
            (Ok(socket), _) => socket,
            (Err(e), Some(old)) => {
                error!(
                    "the reloaded configuration cannot start ({e}); going back to the previous one"
                );
                current = prepare(old)?;
                continue;
            }
            (Err(e), _) => return Err(e.into()),
        };
        let hurry = CancellationToken::new();
        let running = generation::run(
            current,
            socket,
            kept,
            (stop_generation.clone(), hurry.clone()),
        );
        tokio::pin!(running);
        // The new configuration's sources and API client are built (their secrets read)
        // before the running generation is stopped: a reload that cannot start is refused,
        // and the running one stays. Reading it touches the disk (the file, secrets, folders
        // resolved): that runs on a blocking thread, so that a share that hangs holds up the
        // reload and not the daemon, which goes on and still stops when told.
        let mut loading: Option<tokio::task::JoinHandle<Result<Prepared, ReloadError>>> = None;
        // A reload asked for while one is reading: it follows that one.
        let mut again = false;
        let next = loop {
            tokio::select! {
                done = &mut running => return done,
                _ = reload.notified() => {
                    if loading.is_some() {
                        warn!(
                            "reload requested while the previous one is still reading the \
                             configuration (a file or folder on a share that does not answer?): \
                             it follows once that one is done"
                        );
                        again = true;
                    } else {
                        info!(file = %config.file.display(), "reload requested: reading the configuration");
                        let config = config.clone();
                        loading = Some(tokio::task::spawn_blocking(move || reloaded(&config)));
                    }
                }
                loaded = async { loading.as_mut().expect("loading").await }, if loading.is_some() => {
                    loading = None;
                    if std::mem::take(&mut again) {
                        reload.notify_one();
                    }
                    match loaded {
                        Ok(Ok(next)) => break next,
                        Ok(Err(e)) => error!("reload refused, the running configuration stays: {e}"),
                        Err(e) => error!("reload refused, the running configuration stays: reading the configuration failed ({e})"),
                    }
                }
            }
        };
        info!(file = %next.config.file.display(), "reloading the configuration");
        Notifier::from_env().notify("RELOADING=1");
        hurry.cancel();
        stop_generation.cancel();
        running.await?;
        previous = Some(config);
        current = next;
    }
}

/// The configuration file read again and prepared. A reloaded configuration must keep the
/// state file: the process holds its lock, and moving to another outbox would read every input
/// again.
fn reloaded(running: &Config) -> Result<Prepared, ReloadError> {
    let next = Config::load(&running.file)?;
    if next.state.path != running.state.path {
        return Err(ReloadError::StateMoved {
            from: running.state.path.clone(),
            to: next.state.path,
        });
    }
    Ok(prepare(next)?)
}

/// Waits for SIGTERM or Ctrl-C; SIGHUP (Unix) wakes `reload` meanwhile.
async fn wait_for_signals(reload: &tokio::sync::Notify) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hup.recv() => reload.notify_one(),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Raises the soft limit of open files to the hard one (systemd's default soft limit is 1,024):
/// the listener serves up to 1,024 connections, and the files, the database and the reload
/// need descriptors beside them.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// Runs the pipeline until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let opening = config.clone();
    let kept = tokio::task::spawn_blocking(move || Kept::open(&opening))
        .await
        .map_err(|e| RunError::Internal(format!("cannot open the outbox: {e}")))??;
    let listener = Listening::default().for_config(&config).await?;
    let hurry = CancellationToken::new();
    let result = generation::run(prepare(config)?, listener, &kept, (shutdown, hurry)).await;
    if result.is_ok() {
        tokio::task::spawn_blocking(move || kept.close())
            .await
            .map_err(|e| RunError::Internal(format!("cannot close the outbox: {e}")))?;
    }
    result
}

/// A configuration whose sources and API client are built: every secret has been read.
pub struct Prepared {
    config: Config,
    built: Vec<Box<dyn sources::Source>>,
    hooks: Vec<sources::webhook::Hook>,
    client: Arc<ApiClient>,
    /// `[listen] token`, read.
    listen_token: Option<crate::types::Secret>,
    /// `[listen] tls_cert` and `tls_key`, loaded and checked.
    tls: Option<crate::tls::Loaded>,
}

/// Builds what a configuration needs before anything runs, so that a secret that cannot be read
/// stops a start (or refuses a reload) before the outbox is touched.
pub fn prepare(config: Config) -> Result<Prepared, StartError> {
    // Every secret a source reads as it runs (database connections, HTTP credentials) is read
    // once here too, so that one that cannot be read refuses the start or the reload; the
    // sources read them again when they connect (a rotated password is picked up).
    for s in &config.sources {
        for secret in s.kind.secrets() {
            secret.load()?;
        }
    }
    let mut hooks = Vec::new();
    let built = config
        .sources
        .iter()
        .map(|s| {
            sources::build(s, &mut hooks).map_err(|error| StartError::Source {
                name: s.name.as_str().to_owned(),
                error,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = Arc::new(ApiClient::new(&config.api)?);
    let listen_token = match config.listen.as_ref().and_then(|l| l.token.as_ref()) {
        Some(t) => Some(crate::server::page_token(t)?),
        None => None,
    };
    // A pair that does not load refuses the start, or the reload (the running pair stays).
    let tls = match config.listen.as_ref().and_then(|l| l.tls.as_ref()) {
        Some(files) => Some(crate::tls::load(
            files,
            crate::outbox::now_ms().div_euclid(1000),
        )?),
        None => None,
    };
    Ok(Prepared {
        config,
        built,
        hooks,
        client,
        listen_token,
        tls,
    })
}

/// The listen socket, which belongs to the process: a reload that keeps `[listen] address`
/// keeps it, so that connections made meanwhile wait in the backlog instead of being refused.
#[derive(Default)]
struct Listening(Option<(std::net::SocketAddr, Arc<tokio::net::TcpListener>)>);

impl Listening {
    /// The socket for `config`: the one held if its address is the same, else a new one
    /// (bound first, so that a taken address stops the start before anything else runs).
    async fn for_config(
        &mut self,
        config: &Config,
    ) -> Result<Option<Arc<tokio::net::TcpListener>>, StartError> {
        let Some(listen) = &config.listen else {
            self.0 = None;
            return Ok(None);
        };
        match &self.0 {
            Some((address, socket)) if *address == listen.address => Ok(Some(socket.clone())),
            _ => {
                self.0 = None;
                let socket = Arc::new(server::bind(listen.address).await?);
                self.0 = Some((listen.address, socket.clone()));
                Ok(Some(socket))
            }
        }
    }
}
