//! One lane's delivery loop: take the next batch from the outbox, send it until the API has
//! decided on every record in it, mark what was accepted, repeat.
//!
//! Transient failures retry the same batch (same records, same `Idempotency-Key`) forever with
//! backoff. A batch the API rejects as content is split in halves until the bad records stand
//! alone; they become dead letters with the API's answer and the rest is delivered. An answer
//! that points at the setup (401, 403, 404) holds the lane, re-reading the key every
//! `pause_probe`, and never drops a record. Each lane runs on its own, so one lane's trouble
//! does not slow another. Logs say when the state changes, not on every attempt.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::classify::{Action, Attempt, Backoff, classify};
use super::client::{ApiClient, body};
use crate::counters::LaneMetrics;
use crate::outbox::{Batch, BatchLimits, Delivered, Health, LaneId, NextBatch, Outbox, now_ms};
use crate::types::LaneKey;

/// How a lane forms batches and paces retries (from `[api]`).
#[derive(Clone, Debug)]
pub struct LaneSettings {
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub pause_probe: Duration,
}

/// The shutdown token fired while the lane was waiting.
struct Stopped;

/// Requests in flight when a reload let their lane go, by lane: the next generation's lane
/// waits for the answer to the request under the same `Idempotency-Key` instead of sending
/// the batch again (the API may have imported it). Kept by `app` across generations.
#[derive(Default)]
pub struct Handoffs(std::sync::Mutex<std::collections::HashMap<LaneId, InFlight>>);

/// A request under way: its `Idempotency-Key`, where it went ([`ApiClient::destination`]) and
/// the task that will have its answer.
struct InFlight {
    key: String,
    to: u64,
    answer: tokio::task::JoinHandle<Attempt>,
}

impl Handoffs {
    fn put(&self, lane: LaneId, key: String, to: u64, answer: tokio::task::JoinHandle<Attempt>) {
        self.0
            .lock()
            .expect("handoffs")
            .insert(lane, InFlight { key, to, answer });
    }

    /// The request in flight for `lane`, if any: `Ok` with its answer to come when it was
    /// sent under `key` to `to`; `Err(())` when it was another batch's or went elsewhere (the
    /// API's address or key changed with the reload): its outcome does not count here.
    fn take(
        &self,
        lane: LaneId,
        key: &str,
        to: u64,
    ) -> Option<Result<tokio::task::JoinHandle<Attempt>, ()>> {
        let found = self.0.lock().expect("handoffs").remove(&lane)?;
        if found.key == key && found.to == to {
            Some(Ok(found.answer))
        } else {
            found.answer.abort();
            Some(Err(()))
        }
    }

    /// Lets go of the requests handed on by lanes that are not among `lanes` (a reload that
    /// removed them): their batches go out again under their keys. Returns those lanes.
    pub fn keep_only(&self, lanes: &[LaneId]) -> Vec<LaneId> {
        let mut map = self.0.lock().expect("handoffs");
        let gone: Vec<LaneId> = map.keys().filter(|l| !lanes.contains(l)).copied().collect();
        for lane in &gone {
            if let Some(f) = map.remove(lane) {
                f.answer.abort();
            }
        }
        gone
    }
}

pub struct Lane {
    key: LaneKey,
    id: LaneId,
    meta: String,
    outbox: Outbox,
    client: Arc<ApiClient>,
    settings: LaneSettings,
    shutdown: CancellationToken,
    /// Fired with `shutdown` on a reload: the request in flight is not waited for (a hanging
    /// API must not hold up a reload) but handed to the next generation in `handoffs`, whose
    /// lane waits for its answer rather than sending the batch again.
    hurry: CancellationToken,
    handoffs: Arc<Handoffs>,
    health: Health,
    metrics: Arc<LaneMetrics>,
}

impl Lane {
    pub fn new(
        key: LaneKey,
        id: LaneId,
        outbox: Outbox,
        client: Arc<ApiClient>,
        settings: LaneSettings,
        (shutdown, hurry): (CancellationToken, CancellationToken),
        // What outlives a generation: the counters and requests handed on at a reload.
        (metrics, handoffs): (Arc<LaneMetrics>, Arc<Handoffs>),
    ) -> Self {
        Self {
            handoffs,
            meta: key.meta_json(),
            key,
            id,
            outbox,
            client,
            settings,
            shutdown,
            hurry,
            health: Health::Ok,
            metrics,
        }
    }

    /// Runs until the shutdown token fires. A request under way when it fires is finished
    /// (bounded by `api.timeout`); records not yet confirmed stay pending for the next start.
    pub async fn run(mut self) {
        let notify = self.outbox.lane_notify(self.id);
        let limits = BatchLimits {
            max_records: self.settings.batch_records,
            max_bytes: self.settings.batch_bytes,
            linger: self.settings.linger,
        };
        // What was delivered since the last mark, marked together with forming what follows.
        let mut delivered: Option<Delivered> = None;
        // Batches formed while the ones before them were in flight, to send next, in order.
        let mut ahead: Vec<Batch> = Vec::new();
        self.metrics.busy_since_ms.store(now_ms(), Relaxed);
        loop {
            let batches = if ahead.is_empty() {
                let next = self.outbox.next_batch(self.id, delivered, limits).await;
                if next.is_ok() {
                    delivered = None;
                }
                match next {
                    Ok(NextBatch::Ready(batch)) => vec![batch],
                    // A partial batch waits out its linger time without rescanning on every
                    // commit; whatever arrives meanwhile goes into it.
                    Ok(NextBatch::Linger(left)) => {
                        if self.sleep(left).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // New records wake the lane; the timer catches records an operator made
                    // pending again from the command line (`dead retry`).
                    Ok(NextBatch::Empty) => {
                        let stop = self
                            .idle(async {
                                tokio::select! {
                                    _ = self.shutdown.cancelled() => true,
                                    _ = notify.notified() => false,
                                    _ = tokio::time::sleep(Duration::from_secs(60)) => false,
                                }
                            })
                            .await;
                        if stop {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        // `delivered` is kept: the mark is retried before anything else.
                        error!(lane = %self.key, "cannot read or update pending records: {e}");
                        if self.sleep(Duration::from_secs(1)).await.is_err() {
                            if let Some(done) = delivered {
                                let _ = self.outbox.mark_sent(self.id, done).await;
                            }
                            return;
                        }
                        continue;
                    }
                }
            } else {
                std::mem::take(&mut ahead)
            };
            // While these batches are in flight, one after another, what was delivered before
            // them is marked and the next ones are formed: the commit overlaps the requests.
            let outbox = self.outbox.clone();
            let previous = delivered.take();
            let (lane, in_flight) = (self.id, batches[batches.len() - 1].id);
            let (sent, formed) = tokio::join!(
                self.deliver_in_order(batches),
                outbox.form_ahead(lane, in_flight, previous, limits)
            );
            match formed {
                Ok(b) => ahead = b,
                Err(e) => {
                    warn!(lane = %self.key, "cannot form the next batches ahead: {e}");
                    if let Some(p) = previous {
                        let _ = self.outbox.mark_sent(self.id, p).await;
                    }
                }
            }
            match sent {
                Ok(done) => delivered = done,
                Err(Stopped) => return,
            }
        }
    }

    /// Sends batches one after another, each until the API has decided on every record in it.
    /// Returns what was accepted and is not marked yet, for the caller to mark with forming
    /// the next batches.
    async fn deliver_in_order(
        &mut self,
        batches: Vec<Batch>,
    ) -> Result<Option<Delivered>, Stopped> {
        let mut accepted = None;
        for batch in batches {
            accepted = self.deliver(batch, accepted).await?;
        }
        Ok(accepted)
    }

    /// Sends a batch until the API has decided on every record in it, after `accepted` (what
    /// was delivered before it and is not marked for sure yet). Returns what is accepted and
    /// not marked for sure now. A whole batch is marked early, without waiting, and for sure
    /// with forming the next batches. A part of a split batch is written down before it is
    /// sent and marked for sure as soon as it is accepted: after a crash, the part in flight
    /// goes out again under its own key, and no part under the whole batch's key.
    async fn deliver(
        &mut self,
        batch: Batch,
        accepted: Option<Delivered>,
    ) -> Result<Option<Delivered>, Stopped> {
        let n = batch.records.len();
        let mut parts: VecDeque<(usize, usize)> = VecDeque::from([(0, n)]);
        // A split batch whose part was in flight when the lane last stopped: that part first,
        // under its own key (the API may hold it), then the rest as a part of its own.
        // Parts go out in id order: a mark covers everything below it.
        let mut resumed = None;
        if let Some((first, last)) = batch.part {
            let a = batch.records.partition_point(|(id, _)| *id < first);
            let b = batch.records.partition_point(|(id, _)| *id <= last);
            if a < b {
                parts = [(0, a), (a, b), (b, n)]
                    .into_iter()
                    .filter(|(lo, hi)| lo < hi)
                    .collect();
                resumed = Some(((a, b), (first, last)));
            }
        }
        let mut last_accepted: Option<Delivered> = accepted;
        while let Some((lo, hi)) = parts.pop_front() {
            let slice = &batch.records[lo..hi];
            let (first, last) = match resumed {
                Some((at, ids)) if at == (lo, hi) => ids,
                _ => (slice[0].0, slice[slice.len() - 1].0),
            };
            // A part of a split batch gets its own key, derived so it too is stable, and is
            // written down before it is sent.
            let whole = hi - lo == n && batch.part.is_none();
            let idem = if whole {
                batch.key.clone()
            } else {
                let batch_id = batch.id;
                self.persist(|o, _| {
                    let o = o.clone();
                    async move { o.begin_part(batch_id, first, last).await }
                })
                .await?;
                format!("{}-{first}-{last}", batch.key)
            };
            let request = body(&self.meta, slice);
            let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
            loop {
                if self.shutdown.is_cancelled() {
                    self.flush(last_accepted.take()).await;
                    return Err(Stopped);
                }
                let started = Instant::now();
                let to = self.client.destination();
                let mut answer = match self.handoffs.take(self.id, &idem, to) {
                    Some(Ok(answer)) => {
                        info!(lane = %self.key, "waiting for the answer to the request in flight at the reload, rather than sending the batch again");
                        answer
                    }
                    other => {
                        if other.is_some() {
                            // Another batch, or another destination, was in flight at the
                            // reload: whatever became of it, it goes out again.
                            self.metrics.unknown_outcome.fetch_add(1, Relaxed);
                            let _ = self.outbox.count_unknown_outcome(self.id).await;
                        }
                        // Its own task, so that a reload can hand it on unfinished.
                        let (client, key, idem, request) = (
                            self.client.clone(),
                            self.key.clone(),
                            idem.clone(),
                            request.clone(),
                        );
                        tokio::spawn(async move { client.post(&key, &idem, request).await })
                    }
                };
                let attempt = tokio::select! {
                    a = &mut answer => a.unwrap_or_else(|e| {
                        Attempt::Unknown(format!("the request was cut off: {e}"))
                    }),
                    _ = self.hurry.cancelled() => {
                        self.handoffs.put(self.id, idem.clone(), to, answer);
                        self.flush(last_accepted.take()).await;
                        return Err(Stopped);
                    }
                };
                let status = match &attempt {
                    Attempt::Answered { status, .. } => *status,
                    _ => 0,
                };
                self.metrics.observe(status, started.elapsed());
                match classify(&attempt) {
                    Action::Delivered => {
                        self.metrics.sent.fetch_add((hi - lo) as u64, Relaxed);
                        self.metrics.last_success_ms.store(now_ms(), Relaxed);
                        let part = Delivered {
                            batch: batch.id,
                            last: slice[slice.len() - 1].0,
                        };
                        if whole {
                            // A later mark covers the earlier ones.
                            self.outbox.mark_sent_early(self.id, part);
                            last_accepted = Some(part);
                        } else {
                            // A part is marked at once: after a crash, nothing of it goes out
                            // again under another key.
                            last_accepted = None;
                            self.flush(Some(part)).await;
                        }
                        self.set_health(Health::Ok).await;
                        break;
                    }
                    Action::Retry {
                        after,
                        unknown_outcome,
                        reason,
                    } => {
                        self.metrics.retries.fetch_add(1, Relaxed);
                        if unknown_outcome {
                            self.metrics.unknown_outcome.fetch_add(1, Relaxed);
                            let _ = self.outbox.count_unknown_outcome(self.id).await;
                        }
                        self.set_health(Health::Retrying(reason)).await;
                        let delay = backoff.next_delay(after, fastrand::f64());
                        if self.sleep(delay).await.is_err() {
                            self.flush(last_accepted.take()).await;
                            return Err(Stopped);
                        }
                    }
                    Action::Split { status, .. } if hi - lo > 1 => {
                        let mid = lo + (hi - lo) / 2;
                        parts.push_front((mid, hi));
                        parts.push_front((lo, mid));
                        tracing::debug!(lane = %self.key, status, "batch refused; splitting {} records", hi - lo);
                        break;
                    }
                    Action::Split { status, body } => {
                        warn!(
                            lane = %self.key, record = first, status,
                            "the API refused a record; it is kept as a dead letter (see `status`): {body}"
                        );
                        self.persist(|o, _| {
                            let o = o.clone();
                            let body = body.clone();
                            async move { o.mark_dead(batch.id, first, status, body).await }
                        })
                        .await?;
                        self.metrics.dead.fetch_add(1, Relaxed);
                        break;
                    }
                    Action::Pause { reason, .. } => {
                        self.set_health(Health::Paused(reason)).await;
                        if self.sleep(self.settings.pause_probe).await.is_err() {
                            self.flush(last_accepted.take()).await;
                            return Err(Stopped);
                        }
                        if let Err(e) = self.client.reload_token() {
                            warn!(lane = %self.key, "cannot re-read the API key: {e}");
                        }
                    }
                }
            }
        }
        Ok(last_accepted)
    }

    /// Marks an accepted part sent now (before another part goes out, or on shutdown).
    async fn flush(&self, done: Option<Delivered>) {
        if let Some(done) = done {
            let _ = self
                .persist(|o, id| {
                    let o = o.clone();
                    async move { o.mark_sent(id, done).await.map(|_| ()) }
                })
                .await;
        }
    }

    /// Writes an outcome to the outbox, retrying until it sticks (a full disk clears).
    async fn persist<F, Fut>(&self, write: F) -> Result<(), Stopped>
    where
        F: Fn(&Outbox, LaneId) -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::outbox::OutboxError>>,
    {
        let mut logged = false;
        loop {
            match write(&self.outbox, self.id).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if !logged {
                        error!(lane = %self.key, "cannot record a delivery outcome: {e}; retrying");
                        logged = true;
                    }
                    self.sleep(Duration::from_secs(1)).await?;
                }
            }
        }
    }

    async fn set_health(&mut self, next: Health) {
        let changed = std::mem::discriminant(&self.health) != std::mem::discriminant(&next);
        if !changed {
            return;
        }
        self.metrics.set_paused(match &next {
            Health::Paused(reason) => Some(reason.clone()),
            _ => None,
        });
        match (&self.health, &next) {
            (_, Health::Paused(reason)) => error!(lane = %self.key, "delivery paused: {reason}"),
            (_, Health::Retrying(reason)) => {
                warn!(lane = %self.key, "delivery failing, retrying with backoff: {reason}")
            }
            (Health::Paused(_), Health::Ok) => info!(lane = %self.key, "delivery resumed"),
            (_, Health::Ok) => info!(lane = %self.key, "delivery recovered"),
        }
        if let Err(e) = self.outbox.set_health(self.id, next.clone()).await {
            warn!(lane = %self.key, "cannot record lane health: {e}");
        }
        self.health = next;
    }

    async fn sleep(&self, d: Duration) -> Result<(), Stopped> {
        self.idle(async {
            tokio::select! {
                _ = self.shutdown.cancelled() => Err(Stopped),
                _ = tokio::time::sleep(d) => Ok(()),
            }
        })
        .await
    }

    /// Runs a wait with the lane marked idle, so the watchdog does not count it as stuck.
    async fn idle<T>(&self, wait: impl std::future::Future<Output = T>) -> T {
        self.metrics.busy_since_ms.store(0, Relaxed);
        let out = wait.await;
        self.metrics.busy_since_ms.store(now_ms(), Relaxed);
        out
    }
}
