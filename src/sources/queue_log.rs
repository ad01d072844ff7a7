//! What the `asterisk_queue_log` source does with queue_log lines, whether they come from the
//! file or from Asterisk's realtime `queue_log` table (through the sql poller): run them
//! through the [`Tracker`], turn ended calls into contact events and state changes into the
//! interval builder's input.
//!
//! Rows of the realtime table are turned back into the file's line format
//! (`epoch|callid|queuename|agent|event|data1|...`), so both read the same way. A poller may
//! read a row twice (ties at a page boundary, `overlap`); the tracker must not see it twice,
//! so [`TableCursor`] remembers the rows it applied near the cursor.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::rows::ChangeRead;
use crate::config::{QueueLogConfig, StatesConfig};
use crate::normalize::intervals::Change;
use crate::normalize::queue_log::{self, Tracker};
use crate::outbox::{NewRecord, Parked, natural_key};

/// The cursor key of an asterisk_queue_log source's tracker.
pub const TRACKER_CURSOR: &str = "queue-log";

/// Runs queue_log lines (origin, line) through the tracker: ended calls become contact
/// events (keyed by call and queue), agents' state changes go on to the interval builder
/// (`states`). Lines that are not queue_log lines are skipped (the file reader parks them).
/// Calls and agents whose names hold control characters are parked (`parked`).
pub fn apply(
    cfg: &QueueLogConfig,
    states: Option<&StatesConfig>,
    tracker: &mut Tracker,
    lines: Vec<(String, String)>,
    records: &mut Vec<NewRecord>,
    changes: &mut Vec<ChangeRead>,
    parked: &mut Vec<Parked>,
) {
    use crate::normalize::schema::check_name;
    for (origin, line) in lines {
        let Ok(parsed) = queue_log::parse(&line) else {
            continue;
        };
        let out = tracker.apply(&parsed);
        let park = |reason: String| Parked {
            origin: origin.clone(),
            reason,
            raw: crate::text::truncate(&line, 4096),
            // The call it ends was built from several lines: the line alone cannot be mapped
            // again.
            replay: None,
        };
        if let (Some(call), None) = (out.call, states) {
            let (identifier, name) = cfg.queue(&call.queue);
            if let Err(e) =
                check_name("queueIdentifier", &identifier).and(check_name("queueName", &name))
            {
                parked.push(park(e));
                continue;
            }
            let payload = serde_json::json!({
                "properties": {
                    "offered": true,
                    "handled": call.handled,
                    "duration": call.duration,
                },
                "queueName": name,
                "queueIdentifier": identifier,
                "timestamp": crate::normalize::time::to_api(call.entered),
                "channel": cfg.channel,
            });
            records.push(NewRecord {
                dkey: natural_key(&format!("{}\u{1f}{}", call.callid, call.queue), 0),
                payload: payload.to_string(),
                origin: origin.clone(),
                row_hash: None,
            });
        }
        if let Some(states) = states {
            for c in out.changes {
                let change = Change {
                    agent: states.agent(&c.agent),
                    activity: c.state.and_then(|s| states.activity(&s)),
                    at: c.at,
                };
                let named = check_name("agentIdentifier", &change.agent).and_then(|()| {
                    change
                        .activity
                        .as_deref()
                        .map_or(Ok(()), |a| check_name("activityIdentifier", a))
                });
                match named {
                    Ok(()) => changes.push(ChangeRead {
                        change,
                        origin: origin.clone(),
                        raw: crate::text::truncate(&line, 4096),
                        replay: None,
                    }),
                    Err(e) => parked.push(park(e)),
                }
            }
        }
    }
}

/// A realtime-table source's tracker, with the rows it applied at or after `horizon` (Unix
/// seconds), so that reading them again changes nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TableCursor {
    pub tracker: Tracker,
    /// Hashes of applied rows whose time is at or after `horizon`.
    seen: BTreeSet<(i64, String)>,
    /// The latest row time applied.
    latest: i64,
}

impl TableCursor {
    /// The rows not applied before, as queue_log lines in the order given; rows that are not
    /// queue_log rows come back to be parked. `keep` is how far
    /// behind the latest row a row may be read again (the poll's overlap, plus a margin).
    pub fn fresh(
        &mut self,
        rows: Vec<(String, Map<String, Value>)>,
        zone: &jiff::tz::TimeZone,
        keep: std::time::Duration,
    ) -> (Vec<(String, String)>, Vec<Parked>) {
        let mut lines = Vec::new();
        let mut bad = Vec::new();
        for (origin, row) in rows {
            match row_line(&row, zone) {
                Ok((at, line)) => {
                    let id = (at, hex(&natural_key(&line, 0)));
                    if at < self.horizon(keep) || !self.seen.insert(id) {
                        continue;
                    }
                    self.latest = self.latest.max(at);
                    lines.push((origin, line));
                }
                Err(reason) => {
                    let raw = Value::Object(row).to_string();
                    bad.push(Parked {
                        origin,
                        reason,
                        raw,
                        replay: None,
                    });
                }
            }
        }
        let horizon = self.horizon(keep);
        self.seen.retain(|(at, _)| *at >= horizon);
        (lines, bad)
    }

    fn horizon(&self, keep: std::time::Duration) -> i64 {
        if self.latest == 0 {
            return i64::MIN;
        }
        self.latest - keep.as_secs() as i64 - 60
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A realtime `queue_log` row as a queue_log line, with its time (Unix seconds).
///
/// Columns: `time` (a time, Unix seconds, or `YYYY-MM-DD HH:MM:SS[.ffffff]` text in the
/// source's zone), `callid`, `queuename`, `agent`, `event`, and either `data1`..`data5` or
/// one `data` column holding the fields joined by `|`.
pub fn row_line(
    row: &Map<String, Value>,
    zone: &jiff::tz::TimeZone,
) -> Result<(i64, String), String> {
    let text = |k: &str| -> String {
        match row.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    let at = match row.get("time") {
        None | Some(Value::Null) => return Err("the row has no `time` column".into()),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(|f| f as i64)
            .ok_or_else(|| format!("time {n} is not a Unix time"))?,
        Some(Value::String(s)) => read_time(s, zone)?,
        Some(other) => return Err(format!("time {other} is not a time")),
    };
    let event = text("event");
    if event.is_empty() {
        return Err("the row has no `event`".into());
    }
    let data = if row.contains_key("data1") {
        let mut fields: Vec<String> = (1..=5).map(|i| text(&format!("data{i}"))).collect();
        while fields.last().is_some_and(String::is_empty) {
            fields.pop();
        }
        fields
    } else {
        let d = text("data");
        if d.is_empty() { Vec::new() } else { vec![d] }
    };
    let mut line = format!(
        "{at}|{}|{}|{}|{event}",
        text("callid"),
        text("queuename"),
        text("agent")
    );
    for d in data {
        line.push('|');
        line.push_str(&d);
    }
    Ok((at, line))
}

fn read_time(s: &str, zone: &jiff::tz::TimeZone) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts.as_second());
    }
    if let Some(secs) = s.split('.').next().and_then(|p| p.parse::<i64>().ok()) {
        return Ok(secs);
    }
    let civil = s
        .replacen(' ', "T", 1)
        .parse::<jiff::civil::DateTime>()
        .map_err(|e| format!("time {s:?} is not a time: {e}"))?;
    zone.to_ambiguous_timestamp(civil)
        .compatible()
        .map(|t| t.as_second())
        .map_err(|e| format!("time {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn realtime_rows_become_queue_log_lines() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let row = obj(
            json!({"id": 7, "time": "2024-05-01T08:00:05Z", "callid": "1714550405.12",
            "queuename": "support", "agent": "PJSIP/101", "event": "COMPLETEAGENT",
            "data1": "12", "data2": "95", "data3": "1", "data4": null, "data5": ""}),
        );
        assert_eq!(
            row_line(&row, &berlin).unwrap(),
            (
                1714550405,
                "1714550405|1714550405.12|support|PJSIP/101|COMPLETEAGENT|12|95|1".into()
            )
        );
        // Old schema: one `data` column; a local DATETIME as text.
        let row = obj(
            json!({"time": "2024-05-01 10:00:05.250000", "callid": "NONE",
            "queuename": "support", "agent": "PJSIP/101", "event": "ADDMEMBER", "data": ""}),
        );
        assert_eq!(
            row_line(&row, &berlin).unwrap(),
            (
                1714550405,
                "1714550405|NONE|support|PJSIP/101|ADDMEMBER".into()
            )
        );
        let e = row_line(&obj(json!({"event": "PAUSE"})), &berlin).unwrap_err();
        assert!(e.contains("time"), "{e}");
    }

    #[test]
    fn rows_read_again_are_not_applied_again() {
        let utc = jiff::tz::TimeZone::UTC;
        let keep = std::time::Duration::ZERO;
        let row = |t: i64, ev: &str| {
            (
                format!("row {t} {ev}"),
                obj(json!({"time": t, "callid": "c1", "queuename": "q",
                "agent": "NONE", "event": ev, "data1": "", "data2": ""})),
            )
        };
        let mut c = TableCursor::default();
        let (lines, bad) = c.fresh(
            vec![row(100, "ENTERQUEUE"), row(100, "RINGNOANSWER")],
            &utc,
            keep,
        );
        assert_eq!((lines.len(), bad.len()), (2, 0));
        // A tie read again with a new row of the same second, then a later one.
        let (lines, _) = c.fresh(
            vec![
                row(100, "RINGNOANSWER"),
                row(100, "CONNECT"),
                row(200, "COMPLETECALLER"),
            ],
            &utc,
            keep,
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].1.contains("CONNECT") && lines[1].1.contains("COMPLETECALLER"));
        // Long behind the latest row: older than the horizon, not applied.
        let (lines, _) = c.fresh(vec![row(10, "ABANDON")], &utc, keep);
        assert!(lines.is_empty());
    }
}
