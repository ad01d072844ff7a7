//! Asterisk's queue_log: `epoch|callid|queue|agent|event|data1|data2|...`, one line per queue
//! event, turned into contact events (one per call per queue) and agent state changes.
//!
//! **Contact events.** A call's visit to a queue starts with `ENTERQUEUE`; its `timestamp` is
//! that entry. It ends, and its event is emitted, with:
//!
//! | event | handled | `duration` |
//! |---|---|---|
//! | `COMPLETEAGENT`, `COMPLETECALLER` (holdtime, calltime) | yes | talk time (calltime) |
//! | `BLINDTRANSFER`, `ATTENDEDTRANSFER`, `TRANSFER` (…, holdtime, calltime) | yes | talk time |
//! | `ABANDON` (position, origposition, waittime) | no | wait time |
//! | `EXITWITHTIMEOUT`, `EXITEMPTY` (position, origposition, waittime) | no | wait time |
//! | `EXITWITHKEY` (key, position, origposition, waittime) | no | wait time |
//!
//! `CONNECT` marks the call answered (an end without `CONNECT` still counts by its event).
//! `RINGNOANSWER` is an agent not answering: the call stays in the queue, nothing is emitted.
//! A call transferred to another queue enters that queue with its own `ENTERQUEUE`: one event
//! per queue. A call whose `ENTERQUEUE` was not seen (the log was read from its middle) gets its
//! entry time back from the end: end − talk time − hold time, or end − wait time. Calls still
//! waiting are kept (with the parser's state, in the outbox) until they end.
//!
//! **Agent states.** `ADDMEMBER` logs an agent into a queue and `REMOVEMEMBER` out; the agent is
//! logged in while a member of any queue. `PAUSE`/`PAUSEALL` (with a reason in data1, if any)
//! and `UNPAUSE`/`UNPAUSEALL` switch between "paused" (or "paused:REASON") and "available";
//! `CONNECT` starts "on_call", and the call's end returns the agent to what it was before. The
//! states are raw names mapped by `[source.activities]` like any source's states.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A parsed line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<'a> {
    pub at: Timestamp,
    pub callid: &'a str,
    pub queue: &'a str,
    pub agent: &'a str,
    pub event: &'a str,
    pub data: Vec<&'a str>,
}

/// Splits a queue_log line; `Err` says why it is not one.
pub fn parse(line: &str) -> Result<Line<'_>, String> {
    let mut f = line.trim_end_matches(['\r', '\n']).split('|');
    let epoch = f.next().unwrap_or_default();
    let at = epoch
        .split('.')
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|s| Timestamp::from_second(s).ok())
        .ok_or_else(|| format!("{epoch:?} is not a Unix time: not a queue_log line"))?;
    let (Some(callid), Some(queue), Some(agent), Some(event)) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return Err("a queue_log line has at least time|callid|queue|agent|event".into());
    };
    Ok(Line {
        at,
        callid,
        queue,
        agent,
        event,
        data: f.collect(),
    })
}

/// A call's visit to a queue, ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub callid: String,
    pub queue: String,
    pub entered: Timestamp,
    pub handled: bool,
    /// Talk time when handled, wait time when not.
    pub duration: f64,
}

/// An agent's state change (raw state name; `None` is a logout).
#[derive(Clone, Debug, PartialEq)]
pub struct StateChange {
    pub agent: String,
    pub state: Option<String>,
    pub at: Timestamp,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct AgentState {
    queues: BTreeSet<String>,
    /// The pause reason ("" for none) while paused.
    paused: Option<String>,
    on_call: bool,
}

/// What the log has said so far that later lines need: calls waiting, agents' memberships and
/// pauses. Stored with the source's cursor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    /// "callid␟queue" → entry time (Unix seconds).
    waiting: BTreeMap<String, i64>,
    /// Calls answered, by the same key.
    #[serde(default)]
    answered: BTreeSet<String>,
    #[serde(default)]
    agents: BTreeMap<String, AgentState>,
}

/// What one line gives.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    pub call: Option<Call>,
    pub changes: Vec<StateChange>,
}

fn num(data: &[&str], i: usize) -> f64 {
    data.get(i)
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(0.0)
}

impl Tracker {
    pub fn apply(&mut self, l: &Line<'_>) -> Output {
        let mut out = Output::default();
        let key = format!("{}\u{1f}{}", l.callid, l.queue);
        let end = |this: &mut Self, handled: bool, duration: f64, before_end: f64| -> Call {
            let entered = this
                .waiting
                .remove(&key)
                .and_then(|s| Timestamp::from_second(s).ok())
                .unwrap_or_else(|| {
                    // Entered before the log we read: back from the end (a time the line's
                    // figures put out of range counts as the end itself).
                    l.at.checked_sub(jiff::SignedDuration::from_secs(before_end.round() as i64))
                        .unwrap_or(l.at)
                });
            let answered = this.answered.remove(&key);
            Call {
                callid: l.callid.to_owned(),
                queue: l.queue.to_owned(),
                entered,
                handled: handled || answered,
                duration,
            }
        };
        match l.event {
            "ENTERQUEUE" => {
                self.waiting.insert(key.clone(), l.at.as_second());
            }
            "CONNECT" => {
                self.answered.insert(key.clone());
                out.changes.extend(self.agent_call(l.agent, true, l.at));
            }
            "COMPLETEAGENT" | "COMPLETECALLER" => {
                // holdtime|calltime|origposition
                let (hold, talk) = (num(&l.data, 0), num(&l.data, 1));
                out.call = Some(end(self, true, talk, hold + talk));
                out.changes.extend(self.agent_call(l.agent, false, l.at));
            }
            "BLINDTRANSFER" | "ATTENDEDTRANSFER" | "TRANSFER" => {
                // …|holdtime|calltime|origposition: hold and talk are data 2 and 3.
                let (hold, talk) = (num(&l.data, 2), num(&l.data, 3));
                out.call = Some(end(self, true, talk, hold + talk));
                out.changes.extend(self.agent_call(l.agent, false, l.at));
            }
            "ABANDON" | "EXITWITHTIMEOUT" | "EXITEMPTY" => {
                let wait = num(&l.data, 2);
                out.call = Some(end(self, false, wait, wait));
            }
            "EXITWITHKEY" => {
                let wait = num(&l.data, 3);
                out.call = Some(end(self, false, wait, wait));
            }
            "ADDMEMBER" => {
                let a = self.agents.entry(l.agent.to_owned()).or_default();
                let first = a.queues.is_empty();
                a.queues.insert(l.queue.to_owned());
                if first {
                    out.changes.push(change(l.agent, Some(state_of(a)), l.at));
                }
            }
            "REMOVEMEMBER" => {
                if let Some(a) = self.agents.get_mut(l.agent) {
                    a.queues.remove(l.queue);
                    if a.queues.is_empty() {
                        self.agents.remove(l.agent);
                        out.changes.push(change(l.agent, None, l.at));
                    }
                }
            }
            "PAUSE" | "PAUSEALL" | "UNPAUSE" | "UNPAUSEALL" => {
                let a = self.agents.entry(l.agent.to_owned()).or_default();
                a.paused = l.event.starts_with("PAUSE").then(|| {
                    l.data
                        .first()
                        .map(|r| r.trim().to_owned())
                        .unwrap_or_default()
                });
                if !a.on_call {
                    out.changes.push(change(l.agent, Some(state_of(a)), l.at));
                }
            }
            _ => {}
        }
        out
    }

    fn agent_call(&mut self, agent: &str, on: bool, at: Timestamp) -> Option<StateChange> {
        if agent.is_empty() || agent == "NONE" {
            return None;
        }
        let a = self.agents.entry(agent.to_owned()).or_default();
        a.on_call = on;
        Some(change(agent, Some(state_of(a)), at))
    }

    /// Calls waiting in a queue now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

fn state_of(a: &AgentState) -> String {
    match (&a.paused, a.on_call) {
        (_, true) => "on_call".into(),
        (Some(r), false) if r.is_empty() => "paused".into(),
        (Some(r), false) => format!("paused:{r}"),
        (None, false) => "available".into(),
    }
}

fn change(agent: &str, state: Option<String>, at: Timestamp) -> StateChange {
    StateChange {
        agent: agent.to_owned(),
        state,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (agent, state, seconds after the fixtures' epoch).
    type Seen = (String, Option<String>, i64);

    /// Found by fuzzing (fuzz/corpus/queue_log): an end without its ENTERQUEUE whose times
    /// reach before the earliest timestamp.
    #[test]
    fn an_end_whose_times_reach_out_of_range_keeps_its_own_time() {
        let (calls, _) = run("1111111|c1|q|NONE|TRANSFER|||666662166621|1|||\n");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].entered.as_second(), 1_111_111);
    }

    fn run(log: &str) -> (Vec<Call>, Vec<Seen>) {
        let mut t = Tracker::default();
        let (mut calls, mut changes) = (Vec::new(), Vec::new());
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let out = t.apply(&parse(line.trim()).unwrap());
            calls.extend(out.call);
            changes.extend(
                out.changes
                    .into_iter()
                    .map(|c| (c.agent, c.state, c.at.as_second() - 1_700_000_000)),
            );
        }
        (calls, changes)
    }

    fn call(callid: &str, queue: &str, entered: i64, handled: bool, duration: f64) -> Call {
        Call {
            callid: callid.into(),
            queue: queue.into(),
            entered: Timestamp::from_second(1_700_000_000 + entered).unwrap(),
            handled,
            duration,
        }
    }

    #[test]
    fn every_way_a_call_leaves_a_queue() {
        let (calls, _) = run("
            1700000000|c1|support|NONE|ENTERQUEUE||0123|1
            1700000010|c1|support|SIP/1001|RINGNOANSWER|15000
            1700000020|c1|support|SIP/1002|CONNECT|20|c1.1|3
            1700000140|c1|support|SIP/1002|COMPLETEAGENT|20|120|1
            1700000000|c2|support|NONE|ENTERQUEUE||0124|2
            1700000030|c2|support|NONE|ABANDON|1|2|30
            1700000000|c3|support|NONE|ENTERQUEUE||0125|3
            1700000300|c3|support|NONE|EXITWITHTIMEOUT|1|3|300
            1700000000|c4|support|NONE|ENTERQUEUE||0126|4
            1700000005|c4|support|NONE|EXITWITHKEY|1|1|4|5
            1700000000|c5|support|NONE|ENTERQUEUE||0127|5
            1700000001|c5|support|NONE|EXITEMPTY|1|5|1
            1700000000|c6|support|NONE|ENTERQUEUE||0128|6
            1700000010|c6|support|SIP/1003|CONNECT|10|c6.1|2
            1700000070|c6|support|SIP/1003|BLINDTRANSFER|200|default|10|60|1
            1700000000|c7|support|NONE|ENTERQUEUE||0129|7
            1700000004|c7|support|SIP/1004|CONNECT|4|c7.1|2
            1700000050|c7|support|SIP/1004|COMPLETECALLER|4|46|1
        ");
        assert_eq!(
            calls,
            vec![
                call("c1", "support", 0, true, 120.0),
                call("c2", "support", 0, false, 30.0),
                call("c3", "support", 0, false, 300.0),
                call("c4", "support", 0, false, 5.0),
                call("c5", "support", 0, false, 1.0),
                call("c6", "support", 0, true, 60.0),
                call("c7", "support", 0, true, 46.0),
            ]
        );
    }

    #[test]
    fn a_transfer_to_another_queue_is_one_event_per_queue() {
        let (calls, _) = run("
            1700000000|c1|sales|NONE|ENTERQUEUE||0123|1
            1700000010|c1|sales|SIP/1001|CONNECT|10|c1.1|2
            1700000040|c1|sales|SIP/1001|ATTENDEDTRANSFER|BRIDGE|c1.2|10|30|1
            1700000041|c1|support|NONE|ENTERQUEUE||0123|1
            1700000050|c1|support|SIP/1002|CONNECT|9|c1.3|2
            1700000150|c1|support|SIP/1002|COMPLETECALLER|9|100|1
        ");
        assert_eq!(
            calls,
            vec![
                call("c1", "sales", 0, true, 30.0),
                call("c1", "support", 41, true, 100.0),
            ]
        );
    }

    #[test]
    fn a_call_that_entered_before_the_log_gets_its_entry_back_from_the_end() {
        let (calls, _) = run("
            1700000100|c9|support|SIP/1001|COMPLETEAGENT|20|80|1
            1700000100|c8|support|NONE|ABANDON|1|1|40
        ");
        assert_eq!(
            calls,
            vec![
                call("c9", "support", 0, true, 80.0),
                call("c8", "support", 60, false, 40.0),
            ]
        );
    }

    #[test]
    fn agents_log_in_pause_take_calls_and_log_out() {
        let (_, changes) = run("
            1700000000|NONE|support|SIP/1001|ADDMEMBER|
            1700000000|NONE|sales|SIP/1001|ADDMEMBER|
            1700000060|NONE|NONE|SIP/1001|PAUSEALL|lunch
            1700000120|NONE|NONE|SIP/1001|UNPAUSEALL|
            1700000000|c1|support|NONE|ENTERQUEUE||0123|1
            1700000130|c1|support|SIP/1001|CONNECT|130|c1.1|2
            1700000140|NONE|support|SIP/1001|PAUSE|after call
            1700000200|c1|support|SIP/1001|COMPLETEAGENT|130|70|1
            1700000260|NONE|support|SIP/1001|UNPAUSE|
            1700000300|NONE|support|SIP/1001|REMOVEMEMBER|
            1700000400|NONE|sales|SIP/1001|REMOVEMEMBER|
        ");
        let s = |x: &str| Some(x.to_owned());
        let a = "SIP/1001".to_owned();
        assert_eq!(
            changes,
            vec![
                (a.clone(), s("available"), 0),
                (a.clone(), s("paused:lunch"), 60),
                (a.clone(), s("available"), 120),
                (a.clone(), s("on_call"), 130),
                // Paused during the call: the pause shows once the call ends.
                (a.clone(), s("paused:after call"), 200),
                (a.clone(), s("available"), 260),
                (a, None, 400),
            ]
        );
    }

    #[test]
    fn lines_that_are_not_queue_log_say_why() {
        assert!(parse("hello").unwrap_err().contains("not a Unix time"));
        assert!(parse("1700000000|c1").unwrap_err().contains("at least"));
        assert_eq!(parse("1700000000.123|c|q|a|E|x").unwrap().data, vec!["x"]);
    }

    #[test]
    fn the_tracker_survives_a_round_trip_through_json() {
        let mut t = Tracker::default();
        t.apply(&parse("1700000000|c1|support|NONE|ENTERQUEUE||0123|1").unwrap());
        t.apply(&parse("1700000000|NONE|support|SIP/1|ADDMEMBER|").unwrap());
        let back: Tracker = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.waiting(), 1);
    }
}
