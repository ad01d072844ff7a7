//! When pollers poll: `schedule` (cron with seconds, in the source's `timezone`) or `every`,
//! fired by tokio-cron-scheduler.
//!
//! * **No overlap**: the scheduler's job only offers a tick into a channel that holds one; a
//!   tick that comes while a poll still runs (and one is already waiting) is dropped and said
//!   so in the debug log, so a slow poll is never started twice.
//! * **Missed polls**: the time of the last poll is stored with the source's cursor. At start,
//!   if the schedule was due at least once since then (the daemon was down), one poll runs at
//!   once, not one per missed occurrence. A source's first start polls at once too.
//! * **Jitter**: each poll waits a random part of `jitter` first, so many sites sharing an
//!   API do not hit it at the same second.
//! * **Time zones**: tokio-cron-scheduler applies a zone as the fixed offset it has when the
//!   job is created. The job is therefore created again at each of the zone's offset changes
//!   (daylight saving time), so "at 06:00" stays 06:00 local all year.

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::{debug, warn};

use crate::config::{Schedule, When, parse_cron};

/// The zone's offset at `at`, as chrono wants it.
fn offset(zone: &jiff::tz::TimeZone, at: jiff::Timestamp) -> FixedOffset {
    FixedOffset::east_opt(zone.to_offset(at).seconds()).unwrap_or(FixedOffset::east_opt(0).unwrap())
}

/// Whether the schedule was due in `(last, now]`: a poll was missed.
pub fn missed(schedule: &Schedule, last: jiff::Timestamp, now: jiff::Timestamp) -> bool {
    match &schedule.when {
        When::Every(every) => now.duration_since(last).unsigned_abs() >= *every,
        When::Cron(expr) => {
            let Ok(cron) = parse_cron(expr) else {
                return false;
            };
            let Some(from) = DateTime::from_timestamp_millis(last.as_millisecond()) else {
                return true;
            };
            let from = from.with_timezone(&offset(&schedule.zone, last));
            cron.find_next_occurrence(&from, false)
                .is_ok_and(|next| next.timestamp_millis() <= now.as_millisecond())
        }
    }
}

/// When the schedule polls next after `now`, given the last complete poll: `every` counts from
/// that poll (due now, when it is overdue or there was none), cron is the next occurrence.
pub fn next_poll(
    schedule: &Schedule,
    last: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    match &schedule.when {
        When::Every(every) => {
            let every = jiff::SignedDuration::try_from(*every).ok()?;
            Some(last.map_or(now, |l| (l + every).max(now)))
        }
        When::Cron(expr) => {
            let cron = parse_cron(expr).ok()?;
            let from = DateTime::from_timestamp_millis(now.as_millisecond())?
                .with_timezone(&offset(&schedule.zone, now));
            let next = cron.find_next_occurrence(&from, false).ok()?;
            jiff::Timestamp::from_millisecond(next.timestamp_millis()).ok()
        }
    }
}

/// Why a schedule cannot be set up: the scheduler's own refusal, and of what.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {source}")]
pub struct ScheduleError {
    what: String,
    source: JobSchedulerError,
}

/// `map_err` for the scheduler's calls: what was being done.
fn doing(what: impl Into<String>) -> impl FnOnce(JobSchedulerError) -> ScheduleError {
    let what = what.into();
    move |source| ScheduleError { what, source }
}

/// The ticks of a running schedule.
pub struct Ticks {
    rx: mpsc::Receiver<()>,
    scheduler: JobScheduler,
    jitter: Duration,
}

impl Ticks {
    /// Starts firing; `due_now` offers the first tick at once (a first start or a missed poll).
    pub async fn start(
        schedule: &Schedule,
        source: &str,
        due_now: bool,
    ) -> Result<Ticks, ScheduleError> {
        let (tx, rx) = mpsc::channel(1);
        if due_now {
            let _ = tx.try_send(());
        }
        let scheduler = JobScheduler::new()
            .await
            .map_err(doing("start the scheduler"))?;
        match &schedule.when {
            When::Every(every) => {
                scheduler
                    .add(job_every(*every, tx, source)?)
                    .await
                    .map_err(doing("add the job"))?;
            }
            When::Cron(expr) => {
                arm_cron(
                    &scheduler,
                    expr.clone(),
                    schedule.zone.clone(),
                    tx,
                    source.into(),
                )
                .await?;
            }
        }
        scheduler
            .start()
            .await
            .map_err(doing("start the scheduler"))?;
        Ok(Ticks {
            rx,
            scheduler,
            jitter: schedule.jitter,
        })
    }

    /// Waits for the next tick, then for its jitter.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        if !self.jitter.is_zero() {
            let wait = self.jitter.mul_f64(fastrand::f64());
            tokio::time::sleep(wait).await;
        }
        Some(())
    }

    pub async fn stop(mut self) {
        let _ = self.scheduler.shutdown().await;
    }
}

/// Offers a tick unless one is already waiting.
fn offer(tx: &mpsc::Sender<()>, source: &str) {
    if tx.try_send(()).is_err() {
        debug!(
            source,
            "the previous poll is still running; this one is skipped"
        );
    }
}

fn job_every(every: Duration, tx: mpsc::Sender<()>, source: &str) -> Result<Job, ScheduleError> {
    let source = source.to_owned();
    Job::new_repeated_async(every, move |_, _| {
        offer(&tx, &source);
        Box::pin(async {})
    })
    .map_err(doing(format!(
        "schedule every {}",
        humantime::format_duration(every)
    )))
}

/// Adds the cron job with the zone's current offset, and a one-shot job at the zone's next
/// offset change that replaces both.
fn arm_cron(
    scheduler: &JobScheduler,
    expr: String,
    zone: jiff::tz::TimeZone,
    tx: mpsc::Sender<()>,
    source: String,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ScheduleError>> + Send + '_>> {
    Box::pin(async move {
        let now = jiff::Timestamp::now();
        let fire = {
            let (tx, source) = (tx.clone(), source.clone());
            Job::new_async_tz(expr.as_str(), offset(&zone, now), move |_, _| {
                offer(&tx, &source);
                Box::pin(async {})
            })
            .map_err(doing(format!("schedule {expr:?}")))?
        };
        let fire_id = scheduler.add(fire).await.map_err(doing("add the job"))?;
        let Some(change) = zone.following(now).next() else {
            return Ok(());
        };
        let until = Duration::try_from(change.timestamp().duration_since(now)).unwrap_or_default()
            + Duration::from_secs(1);
        let again = scheduler.clone();
        let rearm = Job::new_one_shot_async(until, move |_, _| {
            let (sched, expr, zone, tx, source) = (
                again.clone(),
                expr.clone(),
                zone.clone(),
                tx.clone(),
                source.clone(),
            );
            Box::pin(async move {
                let _ = sched.remove(&fire_id).await;
                if let Err(e) = arm_cron(&sched, expr, zone, tx, source.clone()).await {
                    warn!(
                        source,
                        "cannot re-arm the schedule after an offset change: {e}"
                    );
                }
            })
        })
        .map_err(doing("schedule the next offset change"))?;
        scheduler
            .add(rearm)
            .await
            .map_err(doing("add the offset change"))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(when: When, zone: &str) -> Schedule {
        Schedule {
            when,
            zone: jiff::tz::TimeZone::get(zone).unwrap(),
            jitter: Duration::ZERO,
        }
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_missed_poll_is_found_once_whatever_the_gap() {
        let every = sched(When::Every(Duration::from_secs(30)), "UTC");
        assert!(!missed(
            &every,
            ts("2024-01-01T00:00:00Z"),
            ts("2024-01-01T00:00:29Z")
        ));
        assert!(missed(
            &every,
            ts("2024-01-01T00:00:00Z"),
            ts("2024-01-03T00:00:00Z")
        ));
        let cron = sched(When::Cron("0 0 6 * * *".into()), "Europe/Berlin");
        // 06:00 in Berlin in summer is 04:00 UTC.
        assert!(!missed(
            &cron,
            ts("2024-07-01T04:00:00Z"),
            ts("2024-07-02T03:59:59Z")
        ));
        assert!(missed(
            &cron,
            ts("2024-07-01T04:00:00Z"),
            ts("2024-07-02T04:00:00Z")
        ));
        // In winter it is 05:00 UTC.
        assert!(!missed(
            &cron,
            ts("2024-01-01T05:00:00Z"),
            ts("2024-01-02T04:30:00Z")
        ));
    }

    #[test]
    fn cron_expressions_need_seconds_and_say_so() {
        assert!(parse_cron("0 */5 * * * *").is_ok());
        assert!(parse_cron("0 0 6 * * Mon-Fri").is_ok());
        let e = parse_cron("*/5 * * * *").unwrap_err();
        assert!(e.contains("with seconds"), "{e}");
    }

    #[tokio::test]
    async fn ticks_do_not_pile_up_while_a_poll_runs() {
        let s = sched(When::Every(Duration::from_millis(1000)), "UTC");
        let mut ticks = Ticks::start(&s, "t", true).await.unwrap();
        // The first tick is there at once.
        tokio::time::timeout(Duration::from_millis(200), ticks.next())
            .await
            .unwrap();
        // A "poll" three periods long: afterwards one tick waits, not three.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        tokio::time::timeout(Duration::from_millis(200), ticks.next())
            .await
            .unwrap();
        assert!(ticks.rx.try_recv().is_err(), "ticks piled up");
        ticks.stop().await;
    }
}
