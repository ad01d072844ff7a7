//! Wiring and lifecycle: the only module that spawns tasks and threads for the daemon.
//!
//! [`run`] opens the outbox, starts one push lane per (endpoint, configuration id, external
//! system), one thread per source and a housekeeping task, then waits for the shutdown token.
//! On shutdown, sources stop at their next step (what they committed is safe), lanes finish the
//! request in flight or leave the batch pending, and everything is awaited up to a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::counters::{LaneMetrics, SourceMetrics};
use crate::outbox::{LaneId, Outbox, OutboxError};
use crate::push::{ApiClient, Lane, LaneSettings};
use crate::server;
use crate::service::{Notifier, watchdog_interval};
use crate::sources::{self, SourceContext};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// This configuration cannot start: a secret it cannot read, a source or the API client it
    /// cannot build, a listen address that is taken. A reload that fails so goes back to the
    /// configuration that ran before.
    #[error("{0}")]
    Config(String),
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

/// What lives as long as the process, across generations: the state file's lock, and the
/// counters (a reload keeps counting where the previous configuration left off).
/// Fields drop in order: the outbox and its writer go before the lock, so that the lock is not
/// let go while this process may still commit (see [`Drop`]).
pub struct Kept {
    /// The outbox, opened (checked and migrated) once: a reload does not open it again.
    outbox: Option<Outbox>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: crate::counters::Counters,
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
    if result.is_err() {
        // A thread that would not stop must not keep the process alive.
        runtime.shutdown_background();
    }
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
        let generation = shutdown.child_token();
        let socket = match (listening.for_config(&config).await, previous.take()) {
            (Ok(socket), old) => {
                previous = old;
                socket
            }
            (Err(RunError::Config(e)), Some(old)) => {
                error!(
                    "the reloaded configuration cannot start ({e}); going back to the previous one"
                );
                current = prepare(old)?;
                continue;
            }
            (Err(e), _) => return Err(e),
        };
        let hurry = CancellationToken::new();
        let running = run_prepared(current, socket, kept, (generation.clone(), hurry.clone()));
        tokio::pin!(running);
        let next = loop {
            tokio::select! {
                done = &mut running => match (done, previous.take()) {
                    (Err(RunError::Config(e)), Some(old)) => {
                        error!("the reloaded configuration cannot start ({e}); going back to the previous one");
                        break Next::Fallback(prepare(old)?);
                    }
                    (done, _) => return done,
                },
                // The new configuration's sources and API client are built (their secrets
                // read) before the running generation is stopped: a reload that cannot start
                // is refused, and the running one stays.
                _ = reload.notified() => match Config::load(&config.file)
                    .map_err(|e| e.to_string())
                    .and_then(|next| same_state(&config, next))
                    .and_then(|next| prepare(next).map_err(|e| e.to_string()))
                {
                    Ok(next) => break Next::Reload(next),
                    Err(e) => error!("reload refused, the running configuration stays: {e}"),
                },
            }
        };
        current = match next {
            Next::Reload(next) => {
                info!(file = %next.config.file.display(), "reloading the configuration");
                Notifier::from_env().notify("RELOADING=1");
                hurry.cancel();
                generation.cancel();
                running.await?;
                previous = Some(config);
                next
            }
            Next::Fallback(old) => old,
        };
    }
}

/// A reloaded configuration must keep the state file: the process holds its lock, and moving
/// to another outbox would read every input again.
fn same_state(running: &Config, next: Config) -> Result<Config, String> {
    if next.state.path == running.state.path {
        Ok(next)
    } else {
        Err(format!(
            "[state] path changed from {} to {}: restart the service to use another state file",
            running.state.path.display(),
            next.state.path.display()
        ))
    }
}

/// What follows a running generation.
enum Next {
    /// A reloaded configuration, ready to start.
    Reload(Prepared),
    /// The configuration from before a reload that could not start.
    Fallback(Prepared),
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

/// Runs the pipeline until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let opening = config.clone();
    let kept = tokio::task::spawn_blocking(move || Kept::open(&opening))
        .await
        .map_err(|e| RunError::Internal(format!("cannot open the outbox: {e}")))??;
    let listener = Listening::default().for_config(&config).await?;
    let hurry = CancellationToken::new();
    let result = run_prepared(prepare(config)?, listener, &kept, (shutdown, hurry)).await;
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
}

/// Builds what a configuration needs before anything runs, so that a secret that cannot be read
/// stops a start (or refuses a reload) before the outbox is touched.
pub fn prepare(config: Config) -> Result<Prepared, RunError> {
    // Every secret a source reads as it runs (database connections, HTTP credentials) is read
    // once here too, so that one that cannot be read refuses the start or the reload; the
    // sources read them again when they connect (a rotated password is picked up).
    for s in &config.sources {
        for secret in s.kind.secrets() {
            secret.load().map_err(RunError::Config)?;
        }
    }
    let mut hooks = Vec::new();
    let built = config
        .sources
        .iter()
        .map(|s| {
            sources::build(s, &mut hooks)
                .map_err(|e| RunError::Config(format!("source {:?}: {e}", s.name.as_str())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = Arc::new(ApiClient::new(&config.api).map_err(RunError::Config)?);
    Ok(Prepared {
        config,
        built,
        hooks,
        client,
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
    ) -> Result<Option<Arc<tokio::net::TcpListener>>, RunError> {
        let Some(listen) = &config.listen else {
            self.0 = None;
            return Ok(None);
        };
        match &self.0 {
            Some((address, socket)) if *address == listen.address => Ok(Some(socket.clone())),
            _ => {
                self.0 = None;
                let socket = Arc::new(
                    server::bind(listen.address)
                        .await
                        .map_err(RunError::Config)?,
                );
                self.0 = Some((listen.address, socket.clone()));
                Ok(Some(socket))
            }
        }
    }
}

/// `shutdown` stops the generation (lanes finish the request in flight); `hurry`, fired with it
/// on a reload, lets the lanes' requests in flight go (they are sent again, under their keys,
/// by the next generation).
async fn run_prepared(
    prepared: Prepared,
    listener: Option<Arc<tokio::net::TcpListener>>,
    kept: &Kept,
    (shutdown, hurry): (CancellationToken, CancellationToken),
) -> Result<(), RunError> {
    let lock = kept.lock.clone();
    let Prepared {
        config,
        built,
        hooks,
        client,
    } = prepared;
    for w in &config.warnings {
        warn!("{w}");
    }
    let outbox = kept.outbox();
    let budget = outbox
        .apply_budget(config.state.max_outbox_size, false)
        .await?;
    info!(
        "outbox budget: {} ({}); {}",
        bytesize::ByteSize(budget),
        if config.state.max_outbox_size.is_some() {
            "max_outbox_size".to_owned()
        } else {
            format!(
                "default: what the disk holds for it, leaving {} free",
                bytesize::ByteSize(outbox.reserve())
            )
        },
        outbox.usage().describe()
    );
    let tracker = TaskTracker::new();
    let settings = LaneSettings {
        batch_records: config.api.batch_records,
        batch_bytes: config.api.batch_bytes,
        linger: config.api.linger,
        retry_initial: config.api.retry_initial,
        retry_max: config.api.retry_max,
        pause_probe: config.api.pause_probe,
    };

    let mut lane_ids = Vec::new();
    let mut lane_metrics = Vec::new();
    let mut lane_metrics_for_service = Vec::new();
    for key in config.lanes() {
        let id = outbox.lane_id(&key).await?;
        let metrics = kept.counters.lane(&key);
        lane_ids.push((key.clone(), id));
        lane_metrics.push((id, metrics.clone()));
        lane_metrics_for_service.push(metrics.clone());
        let lane = Lane::new(
            key,
            id,
            outbox.clone(),
            client.clone(),
            settings.clone(),
            (shutdown.clone(), hurry.clone()),
            (metrics, kept.handoffs.clone()),
        );
        tracker.spawn(lane.run());
    }
    // A request handed on by a lane this configuration no longer has: its batch goes out
    // again (its records are adopted by another lane), counted as a resend.
    let configured: Vec<LaneId> = lane_ids.iter().map(|(_, id)| *id).collect();
    for lane in kept.handoffs.keep_only(&configured) {
        let _ = outbox.count_unknown_outcome(lane).await;
    }
    let mut source_metrics = Vec::new();
    let mut built = built.into_iter();
    for source in &config.sources {
        let id = outbox.source_id(&source.name).await?;
        let lane = lane_ids
            .iter()
            .find(|(k, _)| *k == source.lane)
            .map(|(_, id)| *id)
            .expect("every source's lane was registered");
        let adopted = outbox.adopt(id, lane).await?;
        if !adopted.is_empty() {
            outbox.lane_notify(lane).notify_one();
        }
        for (from, n) in adopted {
            warn!(
                source = %source.name,
                "{n} record(s) it read before were waiting in lane {from}, which it no longer \
                 sends to (its integration_id or external_system changed): they go to lane {} now",
                source.lane
            );
        }
        let metrics = kept.counters.source(&source.name, source.stale.clone());
        let ctx = SourceContext::with_metrics(
            source,
            (id, lane),
            outbox.clone(),
            shutdown.clone(),
            metrics,
        );
        let stop = ctx.waker.clone();
        let token = shutdown.clone();
        tracker.spawn(async move {
            token.cancelled().await;
            let _ = stop.send(());
        });
        source_metrics.push(ctx.metrics.clone());
        let built = built.next().expect("one per source");
        tracker.spawn_blocking(move || built.run(ctx));
    }

    let housekeeping = outbox.clone();
    let (keep, keep_parked) = (config.state.keep_sent, config.state.keep_parked);
    let token = shutdown.clone();
    tracker.spawn(async move {
        loop {
            match housekeeping.prune_sent(keep).await {
                Ok(0) => {}
                Ok(n) => info!(
                    "removed {n} delivered records older than {}",
                    humantime::format_duration(keep)
                ),
                Err(e) => warn!("cannot prune delivered records: {e}"),
            }
            match housekeeping.prune_parked(keep_parked).await {
                Ok(0) => {}
                Ok(n) => info!(
                    "removed {n} parked lines older than {}",
                    humantime::format_duration(keep_parked)
                ),
                Err(e) => warn!("cannot prune parked lines: {e}"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    });

    // At the budget, delivered records still kept for `keep_sent` give their payload up,
    // oldest first, so reading resumes as soon as delivery allows.
    {
        let (outbox, token) = (outbox.clone(), shutdown.clone());
        let configured = config.state.max_outbox_size.is_some();
        tracker.spawn(async move { compact_when_full(outbox, configured, token).await });
    }

    // Records made pending by operator commands in other processes wake the lanes.
    {
        let (outbox, token) = (outbox.clone(), shutdown.clone());
        tracker.spawn(async move { outbox.watch_requeues(token).await });
    }

    // The state file and its lock stay where they were: an operator who deletes or replaces
    // either under the daemon would leave it writing where nobody reads, or let a second
    // daemon in. Then the daemon stops (and says why) rather than acknowledge more input.
    let gone: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    {
        let (outbox, lock, gone, token) =
            (outbox.clone(), lock.clone(), gone.clone(), shutdown.clone());
        let state = config.state.path.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(STATE_WATCH) => {}
                }
                let what = if !outbox.still_at_path() {
                    format!("state file {}", state.display())
                } else if !lock.still_held() {
                    format!("lock file {}", lock.path().display())
                } else {
                    continue;
                };
                let why = format!(
                    "the {what} was deleted or replaced while the daemon ran: stopping, so that \
                     nothing more is acknowledged into a file no start will open. Input \
                     committed since may be read again at the next start; restore the file, or \
                     start afresh knowing that"
                );
                error!("{why}");
                *gone.lock().expect("state watch") = Some(why);
                token.cancel();
                return;
            }
        });
    }

    if let (Some(listener), Some(listen)) = (listener, &config.listen) {
        let observed = Arc::new(server::Observed {
            outbox: outbox.clone(),
            state_path: config.state.path.clone(),
            sources: source_metrics,
            lanes: lane_metrics,
            ready_pending_age: listen.ready_pending_age,
            body_timeout: listen.body_timeout,
            hooks,
            reading: Arc::default(),
        });
        info!(address = %listen.address, "serving /healthz, /readyz, /metrics and {} webhook(s)", observed.hooks.len());
        tracker.spawn(server::serve(listener, observed, shutdown.clone()));
    }

    let notifier = Arc::new(Notifier::from_env());
    if notifier.is_active() {
        let supervised = Supervised {
            notifier: notifier.clone(),
            outbox: outbox.clone(),
            state_path: config.state.path.clone(),
            lanes: lane_metrics_for_service,
            stuck_after: config.api.timeout + Duration::from_secs(60),
        };
        // READY=1 goes out before the first WATCHDOG=1 and STATUS= from the supervisor.
        notifier.notify(&format!(
            "READY=1\nSTATUS=running: {} sources, {} lanes",
            config.sources.len(),
            lane_ids.len()
        ));
        tracker.spawn(supervise(supervised, shutdown.clone()));
    }

    info!(
        sources = config.sources.len(),
        lanes = lane_ids.len(),
        state = %config.state.path.display(),
        "injixo-sync {} running",
        env!("CARGO_PKG_VERSION")
    );
    shutdown.cancelled().await;
    notifier.notify("STOPPING=1\nSTATUS=stopping: finishing the request in flight");
    tracker.close();
    let deadline = config.api.timeout + Duration::from_secs(5);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        let running = tracker.len();
        error!(
            "not everything stopped within {}: {running} task(s) still running",
            humantime::format_duration(deadline)
        );
        return Err(RunError::Stuck {
            what: format!("{running} task(s) still running"),
            deadline,
        });
    }
    drop(outbox);
    if let Some(why) = gone.lock().expect("state watch").take() {
        return Err(RunError::StateGone(why));
    }
    info!("stopped");
    Ok(())
}

/// How often the daemon checks that its state file and lock file are still in place.
const STATE_WATCH: Duration = Duration::from_secs(2);

/// What the service-manager task watches.
struct Supervised {
    notifier: Arc<Notifier>,
    outbox: Outbox,
    state_path: std::path::PathBuf,
    lanes: Vec<Arc<LaneMetrics>>,
    /// A lane in one step for longer than this counts as stuck.
    stuck_after: Duration,
}

/// Pending records per lane are counted up to this for the service status line (which then
/// shows "100000+"): the count reads the backlog, and a status every 10 s must stay cheap.
const STATUS_COUNT_CAP: i64 = 100_000;

/// Keeps systemd's `STATUS=` current and sends `WATCHDOG=1` while the outbox is open and no
/// lane is stuck; a stuck daemon thus stops feeding the watchdog and is restarted.
async fn supervise(s: Supervised, shutdown: CancellationToken) {
    use std::sync::atomic::Ordering::Relaxed;
    let watchdog = watchdog_interval();
    let tick = watchdog
        .unwrap_or(Duration::from_secs(10))
        .min(Duration::from_secs(10));
    let mut stuck_logged = false;
    loop {
        let now = crate::outbox::now_ms();
        let stuck: Vec<String> = s
            .lanes
            .iter()
            .filter(|l| {
                let since = l.busy_since_ms.load(Relaxed);
                since > 0 && now - since > s.stuck_after.as_millis() as i64
            })
            .map(|l| l.key.to_string())
            .collect();
        let healthy = s.outbox.is_open() && stuck.is_empty();
        if healthy {
            stuck_logged = false;
            if watchdog.is_some() {
                s.notifier.notify("WATCHDOG=1");
            }
        } else if !stuck_logged {
            error!(lanes = ?stuck, "not feeding the watchdog: the outbox is closed or a lane is stuck");
            stuck_logged = true;
        }
        let path = s.state_path.clone();
        let pending = tokio::task::spawn_blocking(move || {
            crate::outbox::lane_depths(&path, STATUS_COUNT_CAP)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .map(|rows| {
            let capped = rows.iter().any(|(_, n, _, _)| *n >= STATUS_COUNT_CAP);
            let sum: i64 = rows.iter().map(|(_, n, _, _)| n).sum();
            let damaged: i64 = rows.iter().map(|(_, _, _, d)| d).sum();
            (format!("{sum}{}", if capped { "+" } else { "" }), damaged)
        })
        .unwrap_or_else(|| ("?".into(), 0));
        let (pending, damaged) = pending;
        let sent: u64 = s.lanes.iter().map(|l| l.sent.load(Relaxed)).sum();
        let paused = s.lanes.iter().filter(|l| l.paused.load(Relaxed)).count();
        let mut line = format!("STATUS={pending} pending, {sent} delivered since start");
        if paused > 0 {
            line.push_str(&format!(", {paused} lane(s) paused"));
        }
        if damaged > 0 {
            line.push_str(&format!(
                ", {damaged} damaged record(s) set aside (injixo-sync dead list)"
            ));
        }
        s.notifier.notify(&line);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// Compacts delivered records while the outbox is at its budget (see `outbox::space`).
/// A default budget (none configured) grows with the disk: at the budget it is worked out
/// again from the space free now, so a disk grown or cleaned up lets reading go on.
async fn compact_when_full(outbox: Outbox, configured: bool, token: CancellationToken) {
    // What the default budget leaves free for the rest of the system.
    let reserve = outbox.reserve();
    let mut compacted_to: std::collections::HashMap<i64, i64> = Default::default();
    // Said at most every ten minutes: reading pauses and resumes as often as delivery
    // frees a little room.
    let mut told: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !outbox.usage().full() {
            continue;
        }
        if !configured
            && let Some(grown) =
                crate::outbox::regrown_budget(outbox.path(), reserve, outbox.usage().budget)
        {
            match outbox.set_budget(grown).await {
                Ok(()) => info!(
                    "outbox budget: {} (more space is free now)",
                    bytesize::ByteSize(grown)
                ),
                Err(e) => warn!("cannot set the outbox budget: {e}"),
            }
            if !outbox.usage().full() {
                continue;
            }
        }
        if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(600)) {
            warn!("{}", outbox.usage().describe());
            told = Some(std::time::Instant::now());
        }
        let lanes = match outbox.kept_lanes().await {
            Ok(lanes) => lanes,
            Err(e) => {
                warn!("cannot compact delivered records: {e}");
                continue;
            }
        };
        let mut total = 0;
        for (lane, pruned_to) in lanes {
            let from = compacted_to.entry(lane).or_insert(pruned_to);
            *from = (*from).max(pruned_to);
            while outbox.usage().above(0.9) && !token.is_cancelled() {
                match outbox.compact_step(lane, *from).await {
                    Ok((n, Some(reached))) => {
                        total += n;
                        *from = reached;
                        // Other processes on the state file (`import`, commands) get a turn.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok((_, None)) => break,
                    Err(e) => {
                        warn!("cannot compact delivered records: {e}");
                        break;
                    }
                }
            }
        }
        if total > 0 {
            debug!(
                "compacted {total} delivered records (kept as keys only) to make room: {}",
                outbox.usage().describe()
            );
        }
    }
}

/// Reads one source's files once into the outbox (`import`), stopping early on Ctrl-C.
/// `progress` is called about five times a second with the source's counters. Returns
/// whether every file was read to its end.
pub fn import(
    config: &Config,
    source: &crate::config::SourceConfig,
    files: crate::config::FilesConfig,
    mut progress: impl FnMut(&SourceMetrics),
) -> Result<bool, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Internal(format!("cannot start the async runtime: {e}")))?;
    let (outbox, writer) = Outbox::open(&config.state.path)?;
    let (id, lane) = runtime.block_on(async {
        outbox
            .apply_budget(config.state.max_outbox_size, true)
            .await?;
        Ok::<_, OutboxError>((
            outbox.source_id(&source.name).await?,
            outbox.lane_id(&source.lane).await?,
        ))
    })?;
    let shutdown = CancellationToken::new();
    let interrupt = shutdown.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let ctx = SourceContext::new(source, (id, lane), outbox.clone(), shutdown.clone());
    let metrics = ctx.metrics.clone();
    let reader = std::thread::Builder::new()
        .name("import".into())
        .spawn(move || crate::sources::files::FilesSource::new(files).run_once(&ctx))
        .map_err(|e| RunError::Internal(format!("cannot start the import thread: {e}")))?;
    // A running daemon delivers what is imported: it is told within a second of new records.
    let mut told = 0;
    let mut tell = |metrics: &SourceMetrics| {
        let records = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
        if records > told {
            told = records;
            let _ = runtime.block_on(outbox.note_requeue());
        }
    };
    let mut last_told = std::time::Instant::now();
    while !reader.is_finished() {
        progress(&metrics);
        if last_told.elapsed() >= Duration::from_secs(1) {
            tell(&metrics);
            last_told = std::time::Instant::now();
        }
        runtime.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
    progress(&metrics);
    tell(&metrics);
    let result = reader
        .join()
        .map_err(|_| RunError::Internal("the import thread panicked".into()))?;
    drop(outbox);
    let _ = writer.join();
    result?;
    Ok(!shutdown.is_cancelled())
}
