//! The daemon's background tasks besides lanes, sources and the listener. Each is a type that
//! owns its state and runs until the generation's shutdown token fires; the generation
//! (`super::generation`) spawns them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::counters::LaneMetrics;
use crate::outbox::{Outbox, StateLock};
use crate::service::{Notifier, watchdog_interval};

/// Removes delivered records older than `keep_sent` and parked lines older than
/// `keep_parked`, at start and hourly.
pub(super) struct Housekeeping {
    pub outbox: Outbox,
    pub keep_sent: Duration,
    pub keep_parked: Duration,
}

impl Housekeeping {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.prune().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    }

    async fn prune(&self) {
        let kept = humantime::format_duration(self.keep_sent);
        match self.outbox.prune_sent(self.keep_sent).await {
            Ok(0) => {}
            Ok(n) => info!("removed {n} delivered records older than {kept}"),
            Err(e) => warn!("cannot prune delivered records: {e}"),
        }
        let kept = humantime::format_duration(self.keep_parked);
        match self.outbox.prune_parked(self.keep_parked).await {
            Ok(0) => {}
            Ok(n) => info!("removed {n} parked lines older than {kept}"),
            Err(e) => warn!("cannot prune parked lines: {e}"),
        }
    }
}

/// At the budget, delivered records still kept for `keep_sent` give their payload up, oldest
/// first, so that reading resumes as soon as delivery allows (see `outbox::space`). A default
/// budget (none configured) grows with the disk: at the budget it is worked out again from the
/// space free now, so a disk grown or cleaned up lets reading go on.
pub(super) struct Compactor {
    outbox: Outbox,
    /// Whether `max_outbox_size` is configured (a fixed budget).
    configured: bool,
    /// What the default budget leaves free for the rest of the system.
    reserve: u64,
    /// Per lane, the sequence number compaction has reached.
    compacted_to: HashMap<i64, i64>,
    /// When the outbox's state was last said: at most every ten minutes, since reading pauses
    /// and resumes as often as delivery frees a little room.
    told: Option<Instant>,
}

impl Compactor {
    pub fn new(outbox: Outbox, configured: bool) -> Self {
        Self {
            reserve: outbox.reserve(),
            outbox,
            configured,
            compacted_to: HashMap::new(),
            told: None,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if self.outbox.usage().full() && !self.regrow().await {
                self.compact(&shutdown).await;
            }
        }
    }

    /// With a default budget, works it out again from the space free now; whether the outbox
    /// has room after that.
    async fn regrow(&self) -> bool {
        if self.configured {
            return false;
        }
        let usage = self.outbox.usage();
        let Some(grown) =
            crate::outbox::regrown_budget(self.outbox.path(), self.reserve, usage.budget)
        else {
            return false;
        };
        match self.outbox.set_budget(grown).await {
            Ok(()) => info!(
                "outbox budget: {} (more space is free now)",
                bytesize::ByteSize(grown)
            ),
            Err(e) => warn!("cannot set the outbox budget: {e}"),
        }
        !self.outbox.usage().full()
    }

    /// Compacts delivered records, lane by lane, until the outbox is below 90 % of its budget
    /// or nothing is left to compact.
    async fn compact(&mut self, shutdown: &CancellationToken) {
        if self
            .told
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(600))
        {
            warn!("{}", self.outbox.usage().describe());
            self.told = Some(Instant::now());
        }
        let lanes = match self.outbox.kept_lanes().await {
            Ok(lanes) => lanes,
            Err(e) => {
                warn!("cannot compact delivered records: {e}");
                return;
            }
        };
        let mut total = 0;
        for (lane, pruned_to) in lanes {
            let from = self.compacted_to.entry(lane).or_insert(pruned_to);
            *from = (*from).max(pruned_to);
            while self.outbox.usage().above(0.9) && !shutdown.is_cancelled() {
                match self.outbox.compact_step(lane, *from).await {
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
                self.outbox.usage().describe()
            );
        }
    }
}

/// How often the daemon checks that its state file and lock file are still in place.
const STATE_WATCH: Duration = Duration::from_secs(2);

/// Watches that the state file and its lock stay where they were: an operator who deletes or
/// replaces either under the daemon would leave it writing where nobody reads, or let a second
/// daemon in. Then the generation stops (and says why) rather than acknowledge more input.
pub(super) struct StateWatch {
    pub outbox: Outbox,
    pub lock: Arc<StateLock>,
    pub state: PathBuf,
    /// Why the daemon stopped, once it did: the generation's result.
    pub gone: Arc<Mutex<Option<String>>>,
}

impl StateWatch {
    /// Cancels `shutdown` (the generation's token) when either file is gone.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(STATE_WATCH) => {}
            }
            let what = if !self.outbox.still_at_path() {
                format!("state file {}", self.state.display())
            } else if !self.lock.still_held() {
                format!("lock file {}", self.lock.path().display())
            } else {
                continue;
            };
            let why = format!(
                "the {what} was deleted or replaced while the daemon ran: stopping, so that \
                 nothing more is acknowledged into a file no start will open. Input committed \
                 since may be read again at the next start; restore the file, or start afresh \
                 knowing that"
            );
            error!("{why}");
            *self.gone.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            shutdown.cancel();
            return;
        }
    }
}

/// Pending records per lane are counted up to this for the service status line (which then
/// shows "100000+"): the count reads the backlog, and a status every 10 s must stay cheap.
const STATUS_COUNT_CAP: i64 = 100_000;

/// Keeps systemd's `STATUS=` current and sends `WATCHDOG=1` while the outbox is open and no
/// lane is stuck; a stuck daemon thus stops feeding the watchdog and is restarted.
pub(super) struct Supervisor {
    pub notifier: Arc<Notifier>,
    pub outbox: Outbox,
    pub state_path: PathBuf,
    pub lanes: Vec<Arc<LaneMetrics>>,
    /// A lane in one step for longer than this counts as stuck.
    pub stuck_after: Duration,
}

impl Supervisor {
    pub async fn run(self, shutdown: CancellationToken) {
        let watchdog = watchdog_interval();
        let tick = watchdog
            .unwrap_or(Duration::from_secs(10))
            .min(Duration::from_secs(10));
        let mut stuck_logged = false;
        loop {
            let stuck = self.stuck_lanes();
            if self.outbox.is_open() && stuck.is_empty() {
                stuck_logged = false;
                if watchdog.is_some() {
                    self.notifier.notify("WATCHDOG=1");
                }
            } else if !stuck_logged {
                error!(lanes = ?stuck, "not feeding the watchdog: the outbox is closed or a lane is stuck");
                stuck_logged = true;
            }
            let line = self.status_line().await;
            self.notifier.notify(&line);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// The lanes in one step for longer than `stuck_after`.
    fn stuck_lanes(&self) -> Vec<String> {
        let now = crate::outbox::now_ms();
        self.lanes
            .iter()
            .filter(|l| {
                let since = l.busy_since_ms.load(Relaxed);
                since > 0 && now - since > self.stuck_after.as_millis() as i64
            })
            .map(|l| l.key.to_string())
            .collect()
    }

    /// `STATUS=` with what is pending, delivered, paused and set aside.
    async fn status_line(&self) -> String {
        let path = self.state_path.clone();
        let (pending, damaged) = tokio::task::spawn_blocking(move || {
            crate::outbox::lane_depths(&path, STATUS_COUNT_CAP)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .map(|rows| {
            let capped = rows.iter().any(|d| d.pending >= STATUS_COUNT_CAP);
            let sum: i64 = rows.iter().map(|d| d.pending).sum();
            let damaged: i64 = rows.iter().map(|d| d.damaged).sum();
            (format!("{sum}{}", if capped { "+" } else { "" }), damaged)
        })
        .unwrap_or_else(|| ("?".into(), 0));
        let sent: u64 = self.lanes.iter().map(|l| l.sent.load(Relaxed)).sum();
        let paused = self.lanes.iter().filter(|l| l.paused.load(Relaxed)).count();
        let mut line = format!("STATUS={pending} pending, {sent} delivered since start");
        if paused > 0 {
            line.push_str(&format!(", {paused} lane(s) paused"));
        }
        if damaged > 0 {
            line.push_str(&format!(
                ", {damaged} damaged record(s) set aside (injixo-sync dead list)"
            ));
        }
        line
    }
}
