//! Records per minute over the last hour, per source (read) and per lane (delivered), for the
//! page's charts: kept in memory for the life of the process, bounded (61 minutes per series).
//!
//! A series is fed the counter's running total (`SourceMetrics::records`,
//! `LaneMetrics::sent`) every few seconds and keeps the last total seen in each minute; a
//! minute's count is its total less the one before. Samples missed (a busy machine) merge
//! into the next minute sampled; nothing is counted twice. *Must not know* how it is shown.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Minutes a chart shows.
pub const MINUTES: usize = 60;

/// Which counter a series follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Series {
    /// Records a source committed to the outbox.
    Source(String),
    /// Records a lane delivered.
    Lane(String),
}

/// Every series, for the life of the process (a reload keeps them, as it keeps the counters).
#[derive(Debug, Default)]
pub struct Flow(Mutex<HashMap<Series, Totals>>);

/// A counter's total at the end of each minute sampled, oldest first; the first entry is the
/// total when the series began.
#[derive(Debug, Default)]
struct Totals(VecDeque<(i64, u64)>);

impl Flow {
    /// Notes that `series` has counted `total` by `now_ms`.
    pub fn sample(&self, series: Series, total: u64, now_ms: i64) {
        let minute = now_ms.div_euclid(60_000);
        let mut all = self.0.lock().expect("flow");
        let totals = &mut all.entry(series).or_default().0;
        match totals.back_mut() {
            // The minute's last sample so far; a counter never goes back.
            Some((m, t)) if *m == minute => *t = (*t).max(total),
            Some((m, _)) if *m > minute => {}
            Some(_) => totals.push_back((minute, total)),
            // The total before the first minute: what was counted before the series began is
            // not this hour's.
            None => {
                totals.push_back((minute - 1, total));
                totals.push_back((minute, total));
            }
        }
        while totals.len() > MINUTES + 1 {
            totals.pop_front();
        }
    }

    /// Records per minute in the last [`MINUTES`] minutes up to `now_ms`, oldest first (zeros
    /// before the series began or when it is unknown).
    pub fn per_minute(&self, series: &Series, now_ms: i64) -> Vec<u64> {
        let now = now_ms.div_euclid(60_000);
        let all = self.0.lock().expect("flow");
        let Some(Totals(totals)) = all.get(series) else {
            return vec![0; MINUTES];
        };
        // The total at the end of minute `m`: the last sample at or before it.
        let at = |m: i64| {
            totals
                .iter()
                .rev()
                .find(|(minute, _)| *minute <= m)
                .map(|(_, t)| *t)
        };
        (now - MINUTES as i64 + 1..=now)
            .map(|m| match (at(m), at(m - 1)) {
                (Some(t), Some(before)) => t.saturating_sub(before),
                _ => 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn a_minute_counts_what_came_in_it_and_what_came_before_is_not_counted() {
        let flow = Flow::default();
        let s = Series::Source("calls".into());
        let t0 = 1_000 * MIN;
        flow.sample(s.clone(), 500, t0 + 1_000);
        flow.sample(s.clone(), 520, t0 + 30_000);
        flow.sample(s.clone(), 530, t0 + MIN + 5_000);
        flow.sample(s.clone(), 600, t0 + 3 * MIN + 5_000);
        let per = flow.per_minute(&s, t0 + 3 * MIN + 10_000);
        assert_eq!(per.len(), MINUTES);
        // Minutes t0 .. t0+3: 20 (from 500), 10, 0 (not sampled: merged into the next), 70.
        assert_eq!(&per[MINUTES - 4..], &[20, 10, 0, 70]);
        assert!(per[..MINUTES - 4].iter().all(|n| *n == 0));
    }

    #[test]
    fn a_series_keeps_one_hour() {
        let flow = Flow::default();
        let s = Series::Lane("contact-events #1".into());
        for m in 0..500 {
            flow.sample(s.clone(), m as u64 * 3, m * MIN + 1);
        }
        let per = flow.per_minute(&s, 499 * MIN + 2);
        assert_eq!(per, vec![3; MINUTES]);
        assert!(flow.0.lock().unwrap()[&s].0.len() <= MINUTES + 1);
        assert_eq!(
            flow.per_minute(&Series::Lane("other".into()), 0),
            vec![0; MINUTES]
        );
    }
}
