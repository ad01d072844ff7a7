//! The interval builder: agent state *changes* (what ACDs log) become agent-status
//! *intervals* (what injixo takes).
//!
//! Each agent has at most one open state (an activity since an instant). A change to another
//! activity closes the open one at the change's time and opens the new one; a logout closes it
//! and opens nothing. The rules for awkward input, deliberately:
//!
//! * **Same activity again**: the state simply continues (ACDs repeat states in snapshots).
//! * **Out of order**: a change older than the agent's open state began, or than its logout, is
//!   refused (the source parks it with the reason): accepting it would rewrite intervals
//!   already sent. A change
//!   that falls inside a piece already flushed (see below) takes effect where the piece ended.
//! * **Equal times**: a change at the very instant the open state began replaces it; the
//!   zero-length interval is not emitted.
//! * **Never closed**: no state lasts longer than `max_interval`. A change that arrives later
//!   closes the open state at `began + max_interval`; the time between is unknown and not
//!   invented. Flushed pieces stop there too.
//! * **Read again**: a change already applied (same agent, activity and time) is a repeat and
//!   changes nothing, as long as it is within `remember` of the agent's newest change: pollers
//!   read rows again (overlap, ties) and pushers send a push again when its answer was lost.
//!   The changes applied in that window are kept (per agent, a time and a hash of the
//!   activity, at most 64), as Asterisk's table cursor keeps its rows. Sources whose cursors
//!   never read a change twice (files) remember nothing.
//! * **Real time** (`open_interval_flush`): an open state whose unsent part is at least that
//!   long is emitted as a piece up to the horizon and continues from there; consecutive pieces
//!   join exactly. The horizon is now while the input is live (its newest change is less than
//!   `max_interval` old), else the newest change: reading last month's exports never reports
//!   states up to today.
//!
//! Everything is in whole milliseconds; the builder does no I/O (its open states are stored by
//! the source, in the outbox, with the records it emits).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// An agent's state change, already mapped to activity identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub agent: String,
    /// `None`: the agent logged out.
    pub activity: Option<String>,
    pub at: Timestamp,
}

/// A closed interval: one agent-status record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub agent: String,
    pub activity: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Cut at `max_interval` rather than closed by a change.
    pub capped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Open {
    activity: String,
    /// Emitted up to here (where the state began, unless pieces were flushed).
    since: Timestamp,
    /// When the state began: `max_interval` counts from here.
    began: Timestamp,
    /// When the state was last reported again (a repeated state goes on): a change from
    /// before that is out of order too, since what came after it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    again: Option<Timestamp>,
}

impl Open {
    /// The piece a flush up to `horizon` emits, if one is due: where it ends, and whether that
    /// is the `max_interval` cap.
    fn flush_due(&self, horizon: Timestamp, settings: &Settings) -> Option<(Timestamp, bool)> {
        let flush_after = settings.flush_after?;
        let cap = self.began + settings.max_interval;
        let end = horizon.min(cap);
        let unsent = end.duration_since(self.since);
        let exhausted = end == cap;
        (unsent > SignedDuration::ZERO && (unsent >= flush_after || exhausted))
            .then_some((end, exhausted))
    }
}

/// The builder's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub max_interval: SignedDuration,
    pub flush_after: Option<SignedDuration>,
    /// How far behind the newest change a change read again is still recognised as a repeat
    /// (zero: nothing is remembered).
    pub remember: SignedDuration,
}

/// What applying a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It was taken into the agent's states.
    New,
    /// It had been applied before (read again): nothing changed.
    Repeat,
}

/// A change as remembered: its time (ms) and a hash of its activity.
type Seen = (i64, u32);

fn seen_of(activity: Option<&str>, at: Timestamp) -> Seen {
    // FNV-1a: stable across builds and platforms, unlike the standard hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in activity.map_or(&b"\0"[..], str::as_bytes) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    (at.as_millisecond(), h)
}

/// Every agent's open state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Builder {
    open: BTreeMap<String, Open>,
    /// The newest change seen: how far the input has got.
    #[serde(default)]
    clock: Option<Timestamp>,
    /// Per agent, the changes applied within `remember` of the agent's newest one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seen: BTreeMap<String, Vec<Seen>>,
    /// When agents without an open state logged out: an older change is out of order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ended: BTreeMap<String, Timestamp>,
}

/// A change older than what its agent's history already holds: applying it would rewrite
/// time already sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "out of order: {at} is before {since} (agent {agent}){}",
    remember.map(|r| format!(
        "; a change read again is recognised within {r:#} of the agent's newest one"
    )).unwrap_or_default()
)]
pub struct OutOfOrder {
    pub agent: String,
    pub at: Timestamp,
    /// What it is before: the agent's current state's start, or its logout.
    pub since: String,
    /// Within how long of the agent's newest change one read again is recognised, if at all.
    pub remember: Option<SignedDuration>,
}

/// The most changes remembered per agent.
const REMEMBERED: usize = 64;

impl Builder {
    /// Applies one change, appending what it closes to `out`. `Err` when the change is refused
    /// because it is out of order (its row is parked, with the reason).
    pub fn apply(
        &mut self,
        change: Change,
        settings: &Settings,
        out: &mut Vec<Interval>,
    ) -> Result<Applied, OutOfOrder> {
        let Change {
            agent,
            activity,
            at,
        } = change;
        let remembering = settings.remember > SignedDuration::ZERO;
        let seen = seen_of(activity.as_deref(), at);
        if remembering && self.seen.get(&agent).is_some_and(|s| s.contains(&seen)) {
            return Ok(Applied::Repeat);
        }
        let mut at = at;
        let mut moved = true;
        if let Some(open) = self.open.get(&agent) {
            if at < open.began {
                return Err(self.out_of_order(
                    &agent,
                    at,
                    format!(
                        "its current state {:?} began at {}",
                        open.activity, open.began
                    ),
                    settings,
                ));
            }
            if let Some(again) = open.again.filter(|again| at < *again) {
                return Err(self.out_of_order(
                    &agent,
                    at,
                    format!(
                        "its current state {:?} was reported again at {again}",
                        open.activity
                    ),
                    settings,
                ));
            }
            if activity.as_deref() == Some(open.activity.as_str()) {
                // The same state again: it continues, and what is older is now late.
                moved = false;
                if let Some(open) = self.open.get_mut(&agent) {
                    open.again = Some(at);
                }
            } else {
                // Inside a piece already sent: the change takes effect where that piece ended.
                at = at.max(open.since);
                let open = self.open.remove(&agent).expect("present");
                close(&agent, open, at, settings, out);
                if activity.is_none() {
                    self.ended.insert(agent.clone(), at);
                }
            }
        } else if let Some(&ended) = self.ended.get(&agent) {
            // Logged out: a change from before the logout would reopen time already closed.
            if at < ended {
                return Err(self.out_of_order(
                    &agent,
                    at,
                    format!("the agent logged out at {ended}"),
                    settings,
                ));
            }
            if activity.is_some() {
                self.ended.remove(&agent);
            }
        }
        if moved {
            self.clock = self.clock.max(Some(at));
            if let Some(activity) = activity {
                self.open.insert(
                    agent.clone(),
                    Open {
                        activity,
                        since: at,
                        began: at,
                        again: None,
                    },
                );
            }
        }
        if remembering {
            self.remember(agent, seen, settings);
        }
        Ok(Applied::New)
    }

    /// Why a change is refused as out of order.
    fn out_of_order(&self, agent: &str, at: Timestamp, since: String, s: &Settings) -> OutOfOrder {
        OutOfOrder {
            agent: agent.to_owned(),
            at,
            since,
            remember: (s.remember > SignedDuration::ZERO).then_some(s.remember),
        }
    }

    /// Keeps an applied change while it is within `remember` of the agent's newest (at most
    /// [`REMEMBERED`] of them).
    fn remember(&mut self, agent: String, seen: Seen, settings: &Settings) {
        let list = self.seen.entry(agent).or_default();
        // An agent's applied changes never go back in time, so the list stays in order.
        let newest = list.last().map_or(seen.0, |l| l.0.max(seen.0));
        let horizon = newest - settings.remember.as_millis() as i64;
        list.retain(|(t, _)| *t >= horizon);
        list.push(seen);
        if list.len() > REMEMBERED {
            list.drain(..list.len() - REMEMBERED);
        }
    }

    /// With `open_interval_flush`: emits the unsent part of open states as pieces, up to the
    /// horizon (see the module notes). Returns whether anything was emitted.
    pub fn flush(&mut self, now: Timestamp, settings: &Settings, out: &mut Vec<Interval>) -> bool {
        let Some(horizon) = self.flush_horizon(now, settings) else {
            return false;
        };
        let before = out.len();
        for (agent, open) in &mut self.open {
            if let Some((end, exhausted)) = open.flush_due(horizon, settings) {
                out.push(Interval {
                    agent: agent.clone(),
                    activity: open.activity.clone(),
                    start: open.since,
                    end,
                    capped: exhausted,
                });
                open.since = end;
            }
        }
        out.len() > before
    }

    /// Whether [`Builder::flush`] would emit anything now (without changing anything).
    pub fn flush_due(&self, now: Timestamp, settings: &Settings) -> bool {
        self.flush_horizon(now, settings).is_some_and(|horizon| {
            self.open
                .values()
                .any(|o| o.flush_due(horizon, settings).is_some())
        })
    }

    /// The horizon open states are flushed up to; `None` without `open_interval_flush` or any
    /// change seen.
    fn flush_horizon(&self, now: Timestamp, settings: &Settings) -> Option<Timestamp> {
        settings.flush_after?;
        self.horizon(now, settings)
    }

    /// How long until [`Builder::flush`] has something to do; `None` without
    /// `open_interval_flush` or open states.
    pub fn next_flush(&self, now: Timestamp, settings: &Settings) -> Option<SignedDuration> {
        let flush_after = settings.flush_after?;
        self.horizon(now, settings)?;
        self.open
            .values()
            .filter(|o| o.since < o.began + settings.max_interval)
            .map(|o| (flush_after - now.duration_since(o.since)).max(SignedDuration::ZERO))
            .min()
    }

    /// Now while the input is live, else the newest change.
    fn horizon(&self, now: Timestamp, settings: &Settings) -> Option<Timestamp> {
        let clock = self.clock?;
        Some(if now.duration_since(clock) <= settings.max_interval {
            now.max(clock)
        } else {
            clock
        })
    }

    /// The agents with an open state.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.open.keys().map(String::as_str)
    }

    pub fn open_agents(&self) -> usize {
        self.open.len()
    }
}

fn close(agent: &str, open: Open, at: Timestamp, settings: &Settings, out: &mut Vec<Interval>) {
    let limit = open.began + settings.max_interval;
    let (end, capped) = if at > limit {
        (limit, true)
    } else {
        (at, false)
    };
    if end > open.since {
        out.push(Interval {
            agent: agent.to_owned(),
            activity: open.activity,
            start: open.since,
            end,
            capped,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn settings(flush: Option<i64>) -> Settings {
        Settings {
            max_interval: SignedDuration::from_hours(12),
            flush_after: flush.map(SignedDuration::from_secs),
            remember: SignedDuration::ZERO,
        }
    }

    fn change(agent: &str, activity: Option<&str>, at: i64) -> Change {
        Change {
            agent: agent.into(),
            activity: activity.map(str::to_owned),
            at: t(at),
        }
    }

    #[test]
    fn changes_close_intervals_and_logout_ends_the_session() {
        let s = settings(None);
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("available"), 0), &s, &mut out)
            .unwrap();
        b.apply(change("a", Some("available"), 30), &s, &mut out)
            .unwrap();
        b.apply(change("a", Some("break"), 60), &s, &mut out)
            .unwrap();
        b.apply(change("a", None, 90), &s, &mut out).unwrap();
        b.apply(change("a", None, 95), &s, &mut out).unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|i| (i.activity.as_str(), i.start, i.end))
            .collect();
        assert_eq!(got, [("available", t(0), t(60)), ("break", t(60), t(90))]);
        assert_eq!(b.open_agents(), 0);
    }

    /// A state reported again is known to go on until then: a change from before that
    /// report, arriving after it, would cut the state short and lose the report (a login
    /// repaired late with an end in the past, say), so it is out of order too.
    #[test]
    fn a_change_older_than_its_state_reported_again_is_out_of_order() {
        let s = settings(None);
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("available"), 0), &s, &mut out)
            .unwrap();
        b.apply(change("a", Some("available"), 300), &s, &mut out)
            .unwrap();
        let err = b
            .apply(change("a", None, 120), &s, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("was reported again at"), "{err}");
        assert!(out.is_empty(), "nothing cut short: {out:?}");
        b.apply(change("a", Some("break"), 400), &s, &mut out)
            .unwrap();
        assert_eq!((out[0].start, out[0].end), (t(0), t(400)));
    }

    #[test]
    fn an_out_of_order_change_is_refused_with_its_reason() {
        let s = settings(None);
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("available"), 100), &s, &mut out)
            .unwrap();
        let err = b
            .apply(change("a", Some("break"), 50), &s, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of order"), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn a_change_read_again_is_a_repeat_within_the_window_and_out_of_order_beyond_it() {
        let s = Settings {
            remember: SignedDuration::from_mins(10),
            ..settings(None)
        };
        let mut b = Builder::default();
        let mut out = Vec::new();
        for (act, at) in [(Some("ready"), 0), (Some("call"), 300), (Some("wrap"), 900)] {
            assert_eq!(
                b.apply(change("a", act, at), &s, &mut out),
                Ok(Applied::New)
            );
        }
        // Within ten minutes of the agent's newest change: repeats, nothing changes.
        assert_eq!(
            b.apply(change("a", Some("call"), 300), &s, &mut out),
            Ok(Applied::Repeat)
        );
        assert_eq!(
            b.apply(change("a", Some("wrap"), 900), &s, &mut out),
            Ok(Applied::Repeat)
        );
        assert_eq!(out.len(), 2);
        // Fifteen minutes back: forgotten, so out of order, and the reason says why.
        let err = b
            .apply(change("a", Some("ready"), 0), &s, &mut out)
            .unwrap_err();
        assert_eq!(err.remember, Some(SignedDuration::from_mins(10)));
        let err = err.to_string();
        assert!(
            err.contains("out of order") && err.contains("within 10m"),
            "{err}"
        );
        // Without remembering (files), a repeat is out of order as before.
        let mut plain = Builder::default();
        plain
            .apply(change("a", Some("ready"), 0), &settings(None), &mut out)
            .unwrap();
        plain
            .apply(change("a", Some("call"), 300), &settings(None), &mut out)
            .unwrap();
        assert!(
            plain
                .apply(change("a", Some("ready"), 0), &settings(None), &mut out)
                .is_err()
        );
    }

    #[test]
    fn a_change_from_before_a_logout_does_not_reopen_the_closed_time() {
        let s = settings(None);
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("ready"), 0), &s, &mut out)
            .unwrap();
        b.apply(change("a", None, 600), &s, &mut out).unwrap();
        let err = b
            .apply(change("a", Some("call"), 300), &s, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("logged out at"), "{err}");
        assert_eq!(b.open_agents(), 0);
        // A login after the logout opens a session again.
        b.apply(change("a", Some("ready"), 900), &s, &mut out)
            .unwrap();
        assert_eq!(b.open_agents(), 1);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_state_never_closed_is_capped_not_invented() {
        let s = settings(Some(60));
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("available"), 0), &s, &mut out)
            .unwrap();
        b.apply(change("b", Some("available"), 13 * 3600), &s, &mut out)
            .unwrap();
        // Agent a's state is never closed: the pieces stop at 12 hours.
        b.flush(t(13 * 3600 + 10), &s, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end), (t(0), t(12 * 3600)));
        assert!(out[0].capped);
        // Its logout, much later, adds nothing.
        b.apply(change("a", None, 20 * 3600), &s, &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn old_input_is_not_flushed_up_to_today() {
        let s = settings(Some(60));
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("break"), 0), &s, &mut out)
            .unwrap();
        b.apply(change("b", Some("ready"), 600), &s, &mut out)
            .unwrap();
        // Read a year later: pieces end at the newest change, not now.
        b.flush(t(365 * 86_400), &s, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end), (t(0), t(600)));
        b.apply(change("a", None, 1200), &s, &mut out).unwrap();
        assert_eq!((out[1].start, out[1].end), (t(600), t(1200)));
    }

    #[test]
    fn a_change_inside_a_flushed_piece_takes_effect_where_it_ended() {
        let s = settings(Some(60));
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("ready"), 0), &s, &mut out)
            .unwrap();
        b.flush(t(90), &s, &mut out);
        b.apply(change("a", Some("call"), 80), &s, &mut out)
            .unwrap();
        b.apply(change("a", None, 200), &s, &mut out).unwrap();
        let spans: Vec<_> = out
            .iter()
            .map(|i| (i.activity.as_str(), i.start, i.end))
            .collect();
        assert_eq!(spans, [("ready", t(0), t(90)), ("call", t(90), t(200))]);
    }

    #[test]
    fn flushed_pieces_join_exactly() {
        let s = settings(Some(60));
        let mut b = Builder::default();
        let mut out = Vec::new();
        b.apply(change("a", Some("call"), 0), &s, &mut out).unwrap();
        assert!(!b.flush(t(30), &s, &mut out));
        assert!(b.flush(t(61), &s, &mut out));
        assert!(b.flush(t(125), &s, &mut out));
        b.apply(change("a", Some("wrap"), 150), &s, &mut out)
            .unwrap();
        let spans: Vec<_> = out.iter().map(|i| (i.start, i.end)).collect();
        assert_eq!(spans, [(t(0), t(61)), (t(61), t(125)), (t(125), t(150))]);
        assert_eq!(
            b.next_flush(t(150), &s),
            Some(SignedDuration::from_secs(60))
        );
    }

    #[test]
    fn open_states_survive_a_round_trip_through_json() {
        let s = settings(None);
        let mut b = Builder::default();
        b.apply(change("a", Some("x"), 0), &s, &mut Vec::new())
            .unwrap();
        let back: Builder = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Change(u8, Option<u8>, u32),
        Flush(u32),
        /// One of the last applied changes, read again (`remember` covers it).
        Again(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..3, proptest::option::weighted(0.8, 0u8..4), 0u32..20_000)
                .prop_map(|(a, s, dt)| Step::Change(a, s, dt)),
            1 => (0u32..20_000).prop_map(Step::Flush),
            1 => (0usize..8).prop_map(Step::Again),
        ]
    }

    proptest! {
        /// Any sequence of changes (time moving forward by random steps, repeats, logouts) and
        /// flushes gives, per agent, intervals that do not overlap, whose total is the time
        /// the agent was logged in (each state capped at max_interval), and flushed pieces
        /// that join exactly.
        #[test]
        fn intervals_never_overlap_and_add_up_to_logged_in_time(
            steps in proptest::collection::vec(step(), 1..80),
            flush in proptest::option::of(1i64..5_000),
        ) {
            let s = Settings {
                max_interval: SignedDuration::from_secs(10_000),
                flush_after: flush.map(SignedDuration::from_secs),
                remember: SignedDuration::from_hours(1_000),
            };
            let mut b = Builder::default();
            let mut applied: Vec<Change> = Vec::new();
            let mut out = Vec::new();
            let mut now = 0i64;
            // The oracle: per agent, the open (activity, since) and the expected total.
            let mut open: BTreeMap<String, (String, i64)> = BTreeMap::new();
            let mut expected: BTreeMap<String, i64> = BTreeMap::new();
            let cap = 10_000;
            let account = |agent: &str, since: i64, until: i64, expected: &mut BTreeMap<String, i64>| {
                *expected.entry(agent.to_owned()).or_default() += (until - since).min(cap);
            };
            for step in steps {
                match step {
                    Step::Change(a, act, dt) => {
                        now += i64::from(dt);
                        let agent = format!("agent{a}");
                        let activity = act.map(|x| format!("state{x}"));
                        let c = change(&agent, activity.as_deref(), now);
                        let repeat = applied.contains(&c);
                        let done = b.apply(c.clone(), &s, &mut out).unwrap();
                        prop_assert_eq!(done == Applied::Repeat, repeat);
                        applied.push(c);
                        match (open.get(&agent).cloned(), activity) {
                            (Some((cur, _)), Some(new)) if cur == new => {}
                            (Some((_, since)), new) => {
                                account(&agent, since, now, &mut expected);
                                match new {
                                    Some(n) => { open.insert(agent, (n, now)); }
                                    None => { open.remove(&agent); }
                                }
                            }
                            (None, Some(new)) => { open.insert(agent, (new, now)); }
                            (None, None) => {}
                        }
                    }
                    Step::Again(back) => {
                        // Nothing changes: no interval, no state, no error.
                        let Some(c) = applied.iter().rev().nth(back).cloned() else { continue };
                        let before = (out.len(), b.open.clone());
                        prop_assert_eq!(b.apply(c, &s, &mut out), Ok(Applied::Repeat));
                        prop_assert_eq!((out.len(), b.open.clone()), before);
                    }
                    Step::Flush(dt) => {
                        now += i64::from(dt);
                        // Pieces never change the totals, and `flush_due` says exactly
                        // when a flush emits some.
                        let due = b.flush_due(t(now), &s);
                        prop_assert_eq!(b.flush(t(now), &s, &mut out), due);
                    }
                }
            }
            // Everyone logs out at the end: what is still open is accounted for.
            for (agent, (_, since)) in std::mem::take(&mut open) {
                b.apply(change(&agent, None, now), &s, &mut out).unwrap();
                account(&agent, since, now, &mut expected);
            }
            let mut by_agent: BTreeMap<String, Vec<&Interval>> = BTreeMap::new();
            for i in &out {
                prop_assert!(i.end > i.start);
                by_agent.entry(i.agent.clone()).or_default().push(i);
            }
            for (agent, intervals) in &by_agent {
                for pair in intervals.windows(2) {
                    prop_assert!(pair[0].end <= pair[1].start, "overlap for {}: {:?}", agent, pair);
                }
                let total: i64 = intervals.iter().map(|i| i.end.duration_since(i.start).as_secs()).sum();
                prop_assert_eq!(total, expected.get(agent).copied().unwrap_or(0), "total for {}", agent);
            }
            for (agent, e) in &expected {
                if *e > 0 {
                    prop_assert!(by_agent.contains_key(agent), "{} has no intervals", agent);
                }
            }
        }
    }
}
