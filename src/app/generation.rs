//! One generation: the pipeline of one configuration, from its start to its drain. A reload
//! drains the running generation before the next one starts (see `super::generations`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::tasks::{Compactor, Housekeeping, StateWatch, Supervisor};
use super::{Kept, Prepared, RunError};
use crate::config::Config;
use crate::counters::{LaneMetrics, SourceMetrics};
use crate::outbox::{LaneId, Outbox, SourceId};
use crate::push::{ApiClient, Lane, LaneSettings};
use crate::server;
use crate::service::Notifier;
use crate::sources::{self, SourceContext};
use crate::types::LaneKey;

/// What a generation has started, all of it tracked so that its drain awaits every task.
struct Generation<'k> {
    kept: &'k Kept,
    outbox: Outbox,
    tracker: TaskTracker,
    /// Stops the generation: lanes finish the request in flight, sources stop at their next
    /// step.
    shutdown: CancellationToken,
    /// Fired with `shutdown` on a reload: lanes let their requests in flight go (the next
    /// generation sends them again, under their keys).
    hurry: CancellationToken,
}

/// A lane this generation runs.
struct Started {
    key: LaneKey,
    id: LaneId,
    metrics: Arc<LaneMetrics>,
}

/// Runs `prepared` until `shutdown` fires, then drains it.
pub(super) async fn run(
    prepared: Prepared,
    listener: Option<Arc<tokio::net::TcpListener>>,
    kept: &Kept,
    (shutdown, hurry): (CancellationToken, CancellationToken),
) -> Result<(), RunError> {
    let Prepared {
        config,
        built,
        hooks,
        client,
        listen_token,
        tls,
    } = prepared;
    for w in &config.warnings {
        warn!("{w}");
    }
    let generation = Generation {
        kept,
        outbox: kept.outbox(),
        tracker: TaskTracker::new(),
        shutdown,
        hurry,
    };
    let deadline = config.api.timeout + Duration::from_secs(5);
    generation.apply_budget(&config).await?;
    generation.note_config(&config).await;
    // What started before a step failed is stopped and awaited before the error is returned.
    let started = async {
        let lanes = generation.start_lanes(&config, &client).await?;
        let sources = generation.start_sources(&config, built, &lanes).await?;
        Ok::<_, RunError>((lanes, sources))
    };
    let (lanes, sources) = match started.await {
        Ok(started) => started,
        Err(e) => {
            generation.shutdown.cancel();
            generation.drain(deadline).await?;
            return Err(e);
        }
    };
    let gone = generation.start_tasks(&config);
    if let (Some(listener), Some(listen)) = (listener, &config.listen) {
        let hooks_names = hooks.iter().map(|h| h.name.as_str().to_owned()).collect();
        let observed = Arc::new(server::Observed {
            outbox: generation.outbox.clone(),
            state_path: config.state.path.clone(),
            sources,
            lanes: lanes.iter().map(|l| (l.id, l.metrics.clone())).collect(),
            ready_pending_age: listen.ready_pending_age,
            body_timeout: listen.body_timeout,
            hooks,
            reading: Arc::default(),
            access: server::Access {
                ui: listen.ui,
                token: listen_token,
                loopback: listen.address.ip().is_loopback(),
            },
            flow: generation.kept.flow.clone(),
            glance: crate::page::ConfigGlance::of(&config),
            schedules: config.schedules(),
            address: listen.address,
            tls: tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone())),
            listener: crate::metrics::Listener {
                tls_not_after: tls.as_ref().map(|t| t.not_after),
                webhooks: hooks_names,
            },
            trusted_proxies: listen.trusted_proxies.clone(),
            forwarded_header: listen.forwarded_header,
        });
        if let (Some(t), Some(files)) = (&tls, &listen.tls) {
            match t.expiry_warning(files, crate::outbox::now_ms().div_euclid(1000)) {
                Some(w) => warn!("{w}"),
                None => info!(
                    names = %t.names.join(", "),
                    "HTTPS with the certificate in {}",
                    files.cert.display()
                ),
            }
        }
        generation.spawn(crate::page::sample(
            observed.flow.clone(),
            observed.sources.clone(),
            observed.lanes.iter().map(|(_, m)| m.clone()).collect(),
            generation.shutdown.clone(),
        ));
        info!(
            address = %listen.address,
            "serving {}/status.json, /healthz, /readyz, /metrics and {} webhook(s)",
            if listen.ui { "the page (/), " } else { "" },
            observed.hooks.len()
        );
        generation.spawn(server::serve(
            listener,
            observed,
            generation.shutdown.clone(),
        ));
    }
    let notifier = generation.start_supervisor(&config, &lanes);
    info!(
        sources = config.sources.len(),
        lanes = lanes.len(),
        state = %config.state.path.display(),
        "injixo-sync {} running",
        env!("CARGO_PKG_VERSION")
    );
    generation.shutdown.cancelled().await;
    notifier.notify("STOPPING=1\nSTATUS=stopping: finishing the request in flight");
    generation.drain(deadline).await?;
    if let Some(why) = gone.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(RunError::StateGone(why));
    }
    info!("stopped");
    Ok(())
}

impl Generation<'_> {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Sets the outbox's budget for this configuration and says what it is.
    /// Notes in the outbox which version of the configuration file this generation runs
    /// (`parked retry` warns when the file has changed since). Read off the runtime's threads:
    /// the file may sit on a share that hangs.
    async fn note_config(&self, config: &Config) {
        let file = config.file.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&file)).await;
        if let Ok(Ok(bytes)) = read
            && let Err(e) = self
                .outbox
                .note_config(crate::outbox::config_hash(&bytes))
                .await
        {
            warn!("cannot note the configuration's version in the state file: {e}");
        }
    }

    async fn apply_budget(&self, config: &Config) -> Result<(), RunError> {
        let budget = self
            .outbox
            .apply_budget(config.state.max_outbox_size, false)
            .await?;
        let origin = if config.state.max_outbox_size.is_some() {
            "max_outbox_size".to_owned()
        } else {
            format!(
                "default: what the disk holds for it, leaving {} free",
                bytesize::ByteSize(self.outbox.reserve())
            )
        };
        info!(
            "outbox budget: {} ({origin}); {}",
            bytesize::ByteSize(budget),
            self.outbox.usage().describe()
        );
        Ok(())
    }

    /// One push lane per (endpoint, configuration id, external system). A request in flight
    /// that a reload handed on from a lane this configuration no longer has goes out again
    /// (its records are adopted by another lane), counted as a resend.
    async fn start_lanes(
        &self,
        config: &Config,
        client: &Arc<ApiClient>,
    ) -> Result<Vec<Started>, RunError> {
        let settings = LaneSettings {
            batch_records: config.api.batch_records,
            batch_bytes: config.api.batch_bytes,
            linger: config.api.linger,
            retry_initial: config.api.retry_initial,
            retry_max: config.api.retry_max,
            pause_probe: config.api.pause_probe,
        };
        let mut started = Vec::new();
        for key in config.lanes() {
            let id = self.outbox.lane_id(&key).await?;
            let metrics = self.kept.counters.lane(&key);
            let lane = Lane::new(
                key.clone(),
                id,
                self.outbox.clone(),
                client.clone(),
                settings.clone(),
                (self.shutdown.clone(), self.hurry.clone()),
                (metrics.clone(), self.kept.handoffs.clone()),
            );
            self.spawn(lane.run());
            started.push(Started { key, id, metrics });
        }
        let configured: Vec<LaneId> = started.iter().map(|l| l.id).collect();
        for lane in self.kept.handoffs.keep_only(&configured) {
            let _ = self.outbox.count_unknown_outcome(lane).await;
        }
        Ok(started)
    }

    /// One thread per source (they block: file reads, database drivers). Records a source read
    /// before and left waiting in a lane it no longer sends to are adopted by its lane now.
    async fn start_sources(
        &self,
        config: &Config,
        built: Vec<Box<dyn sources::Source>>,
        lanes: &[Started],
    ) -> Result<Vec<Arc<SourceMetrics>>, RunError> {
        let mut metrics = Vec::new();
        for (source, built) in config.sources.iter().zip(built) {
            let id = self.outbox.source_id(&source.name).await?;
            let lane = lanes
                .iter()
                .find(|l| l.key == source.lane)
                .map(|l| l.id)
                .expect("every source's lane was started");
            self.adopt(source, id, lane).await?;
            let ctx = SourceContext::with_metrics(
                source,
                (id, lane),
                self.outbox.clone(),
                self.shutdown.clone(),
                self.kept
                    .counters
                    .source(&source.name, source.stale.clone()),
            );
            // A source waiting for its next scan or poll wakes at shutdown.
            let (waker, token) = (ctx.waker.clone(), self.shutdown.clone());
            self.spawn(async move {
                token.cancelled().await;
                let _ = waker.send(());
            });
            metrics.push(ctx.metrics.clone());
            self.tracker.spawn_blocking(move || built.run(ctx));
        }
        Ok(metrics)
    }

    async fn adopt(
        &self,
        source: &crate::config::SourceConfig,
        id: SourceId,
        lane: LaneId,
    ) -> Result<(), RunError> {
        let adopted = self.outbox.adopt(id, lane).await?;
        if !adopted.is_empty() {
            self.outbox.lane_notify(lane).notify_one();
        }
        for (from, n) in adopted {
            warn!(
                source = %source.name,
                "{n} record(s) it read before were waiting in lane {from}, which it no longer \
                 sends to (its integration_id or external_system changed): they go to lane {} now",
                source.lane
            );
        }
        Ok(())
    }

    /// Housekeeping, compaction at the budget, the watch for other processes' requeues and the
    /// watch on the state file. Returns where the state watch leaves why it stopped the
    /// generation.
    fn start_tasks(&self, config: &Config) -> Arc<Mutex<Option<String>>> {
        let token = || self.shutdown.clone();
        self.spawn(
            Housekeeping {
                outbox: self.outbox.clone(),
                keep_sent: config.state.keep_sent,
                keep_parked: config.state.keep_parked,
            }
            .run(token()),
        );
        let compactor = Compactor::new(self.outbox.clone(), config.state.max_outbox_size.is_some());
        self.spawn(compactor.run(token()));
        // Records made pending by operator commands in other processes wake the lanes.
        let outbox = self.outbox.clone();
        let requeues = token();
        self.spawn(async move { outbox.watch_requeues(requeues).await });
        let gone = Arc::<Mutex<Option<String>>>::default();
        self.spawn(
            StateWatch {
                outbox: self.outbox.clone(),
                lock: self.kept.lock.clone(),
                state: config.state.path.clone(),
                gone: gone.clone(),
            }
            .run(token()),
        );
        gone
    }

    /// Under a service manager that listens (systemd's `NOTIFY_SOCKET`): `READY=1`, then the
    /// supervisor's `WATCHDOG=1` and `STATUS=`.
    fn start_supervisor(&self, config: &Config, lanes: &[Started]) -> Arc<Notifier> {
        let notifier = Arc::new(Notifier::from_env());
        if notifier.is_active() {
            // READY=1 goes out before the first WATCHDOG=1 and STATUS= from the supervisor.
            notifier.notify(&format!(
                "READY=1\nSTATUS=running: {} sources, {} lanes",
                config.sources.len(),
                lanes.len()
            ));
            let supervisor = Supervisor {
                notifier: notifier.clone(),
                outbox: self.outbox.clone(),
                state_path: config.state.path.clone(),
                lanes: lanes.iter().map(|l| l.metrics.clone()).collect(),
                stuck_after: config.api.timeout + Duration::from_secs(60),
            };
            self.spawn(supervisor.run(self.shutdown.clone()));
        }
        notifier
    }

    /// Awaits every task of the generation, up to `deadline`: a task still running after it
    /// (a database call that cannot be interrupted, say) might write beside a next generation,
    /// so the generation ends as stuck instead.
    async fn drain(self, deadline: Duration) -> Result<(), RunError> {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            let running = self.tracker.len();
            error!(
                "not everything stopped within {}: {running} task(s) still running",
                humantime::format_duration(deadline)
            );
            return Err(RunError::Stuck {
                what: format!("{running} task(s) still running"),
                deadline,
            });
        }
        Ok(())
    }
}
