//! The two record shapes the injixo API takes, checked strictly.
//!
//! [`check`] is the single definition of "a valid record": the ingest path uses it (through
//! [`normalize_json`]) so that a record that would be rejected is parked at the source with its
//! file and line instead of becoming a dead letter days later, and the fake API in tests uses it
//! to refuse what the real API would refuse.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::time;
use crate::types::Emits;

/// The channels injixo groups contacts by. Anything else would silently create a new queue.
pub const CHANNELS: &[&str] = &[
    "calls",
    "chats",
    "emails",
    "social_media",
    "documents",
    "cases",
];

/// Checks one element of `data` against the documented schema: exact keys, types, RFC 3339 `Z`
/// timestamps. The error names the offending key.
pub fn check(emits: Emits, record: &Value) -> Result<(), String> {
    let obj = record
        .as_object()
        .ok_or_else(|| "a record must be a JSON object".to_owned())?;
    match emits {
        Emits::ContactEvents => {
            only_keys(
                obj,
                &[
                    "properties",
                    "queueName",
                    "queueIdentifier",
                    "timestamp",
                    "channel",
                ],
            )?;
            let props = obj
                .get("properties")
                .and_then(Value::as_object)
                .ok_or("`properties` must be an object with offered, handled and duration")?;
            only_keys(props, &["offered", "handled", "duration"])
                .map_err(|e| format!("properties: {e}"))?;
            for key in ["offered", "handled"] {
                if !props.get(key).is_some_and(Value::is_boolean) {
                    return Err(format!("`properties.{key}` must be true or false"));
                }
            }
            check_contact(
                props.get("duration").and_then(Value::as_f64),
                text(obj, "queueName")?,
                text(obj, "queueIdentifier")?,
                text(obj, "channel")?,
                text(obj, "timestamp")?,
            )?;
        }
        Emits::AgentStatuses => {
            only_keys(
                obj,
                &[
                    "agentIdentifier",
                    "activityIdentifier",
                    "startTime",
                    "endTime",
                ],
            )?;
            check_status(
                text(obj, "agentIdentifier")?,
                text(obj, "activityIdentifier")?,
                text(obj, "startTime")?,
                text(obj, "endTime")?,
            )?;
        }
    }
    Ok(())
}

/// Reads one record that a source wrote in the API's shape, converts timestamps with an offset
/// to UTC `Z`, checks it and returns it as compact JSON with the documented key order.
///
/// The hot path deserializes into borrowing structs; only a line that fails it goes through
/// the `Value`-based [`check`], whose message names the offending key.
pub fn normalize_json(emits: Emits, raw: &str) -> Result<String, String> {
    let fast = match emits {
        Emits::ContactEvents => serde_json::from_str::<ContactEvent>(raw).map(|mut r| {
            r.timestamp = to_z(r.timestamp);
            r.check().map(|()| serde_json::to_string(&r))
        }),
        Emits::AgentStatuses => serde_json::from_str::<AgentStatus>(raw).map(|mut r| {
            r.start_time = to_z(r.start_time);
            r.end_time = to_z(r.end_time);
            r.check().map(|()| serde_json::to_string(&r))
        }),
    };
    match fast {
        Ok(Ok(json)) => json.map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e),
        Err(typed) => Err(refused(emits, raw, typed)),
    }
}

/// [`check`] on a record's JSON text, through the borrowing structs of [`normalize_json`]
/// (the same rules, without building a `Value`); the message of a record that fails them comes
/// from [`check`].
pub fn check_json(emits: Emits, raw: &str) -> Result<(), String> {
    let fast = match emits {
        Emits::ContactEvents => serde_json::from_str::<ContactEvent>(raw).map(|r| r.check()),
        Emits::AgentStatuses => serde_json::from_str::<AgentStatus>(raw).map(|r| r.check()),
    };
    match fast {
        Ok(checked) => checked,
        Err(typed) => Err(refused(emits, raw, typed)),
    }
}

/// Why the typed reader refused a record, in [`check`]'s words (which name the key), or in
/// its own where the record passes the rules (duplicate keys, say).
fn refused(emits: Emits, raw: &str, typed: serde_json::Error) -> String {
    match serde_json::from_str::<Value>(raw) {
        Err(e) => format!("not valid JSON: {e}"),
        Ok(value) => match check(emits, &value) {
            Err(e) => e,
            Ok(()) => format!("the record does not have the documented shape: {typed}"),
        },
    }
}

/// A timestamp with an offset, rewritten as UTC `Z`; anything else is left for the check.
fn to_z(s: Cow<'_, str>) -> Cow<'_, str> {
    if time::check_api_form(&s).is_ok() {
        return s;
    }
    match time::parse_rfc3339(&s) {
        Ok(ts) => Cow::Owned(time::to_api(ts)),
        Err(_) => s,
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContactEvent<'a> {
    properties: Properties,
    #[serde(borrow)]
    queue_name: Cow<'a, str>,
    #[serde(borrow)]
    queue_identifier: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Properties {
    offered: bool,
    handled: bool,
    duration: serde_json::Number,
}

impl ContactEvent<'_> {
    fn check(&self) -> Result<(), String> {
        check_contact(
            self.properties.duration.as_f64(),
            &self.queue_name,
            &self.queue_identifier,
            &self.channel,
            &self.timestamp,
        )
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AgentStatus<'a> {
    #[serde(borrow)]
    agent_identifier: Cow<'a, str>,
    #[serde(borrow)]
    activity_identifier: Cow<'a, str>,
    #[serde(borrow)]
    start_time: Cow<'a, str>,
    #[serde(borrow)]
    end_time: Cow<'a, str>,
}

impl AgentStatus<'_> {
    fn check(&self) -> Result<(), String> {
        check_status(
            &self.agent_identifier,
            &self.activity_identifier,
            &self.start_time,
            &self.end_time,
        )
    }
}

/// The rules on a contact event's values, shared by both readers.
fn check_contact(
    duration: Option<f64>,
    queue_name: &str,
    queue_identifier: &str,
    channel: &str,
    timestamp: &str,
) -> Result<(), String> {
    match duration {
        Some(d) if d >= 0.0 && d.is_finite() => {}
        _ => return Err("`properties.duration` must be a number of seconds >= 0".into()),
    }
    check_name("queueName", queue_name)?;
    check_name("queueIdentifier", queue_identifier)?;
    check_name("channel", channel)?;
    if !CHANNELS.contains(&channel) {
        return Err(format!(
            "`channel` {channel:?} is not one of {}",
            CHANNELS.join(", ")
        ));
    }
    time::check_api_form(timestamp).map_err(|e| format!("`timestamp`: {e}"))?;
    Ok(())
}

/// The rules on an agent status's values, shared by both readers.
fn check_status(agent: &str, activity: &str, start: &str, end: &str) -> Result<(), String> {
    check_name("agentIdentifier", agent)?;
    check_name("activityIdentifier", activity)?;
    let start = time::check_api_form(start).map_err(|e| format!("`startTime`: {e}"))?;
    let end = time::check_api_form(end).map_err(|e| format!("`endTime`: {e}"))?;
    if end < start {
        return Err("`endTime` is before `startTime`".into());
    }
    Ok(())
}

/// A name injixo shows and keys by (a queue, an agent, an activity): not empty, and without
/// control characters (a NUL or an escape code from a broken export would become part of a
/// queue's identity in injixo).
pub fn check_name(key: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("`{key}` must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "`{key}` {value:?} holds the control character {:?}",
            c
        ));
    }
    Ok(())
}

fn only_keys(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{key}` (expected {})",
                allowed.join(", ")
            ));
        }
    }
    for key in allowed {
        if !obj.contains_key(*key) {
            return Err(format!("missing key `{key}`"));
        }
    }
    Ok(())
}

fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{key}` must be a string"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"properties":{"offered":true,"handled":false,"duration":124.6},
               "queueName":"Level 1 support","queueIdentifier":"1337_99",
               "timestamp":"2021-12-06T10:34:22Z","channel":"calls"})
    }

    #[test]
    fn the_documented_examples_are_valid() {
        check(Emits::ContactEvents, &event()).unwrap();
        check(
            Emits::AgentStatuses,
            &json!({"agentIdentifier":"bob@mycompany.com","activityIdentifier":"Break",
                    "startTime":"2021-12-06T10:00:00Z","endTime":"2021-12-06T10:15:00Z"}),
        )
        .unwrap();
    }

    #[test]
    fn each_violation_names_its_key() {
        let cases = [
            ("/queueName", json!(null), "`queueName` must be a string"),
            ("/properties/offered", json!("yes"), "`properties.offered`"),
            ("/properties/duration", json!(-1), "`properties.duration`"),
            (
                "/timestamp",
                json!("2021-12-06T10:34:22+01:00"),
                "`timestamp`",
            ),
            ("/channel", json!("pigeon"), "`channel` \"pigeon\""),
            (
                "/queueName",
                json!("Sup\u{0}port"),
                "`queueName` \"Sup\\0port\" holds the control character '\\0'",
            ),
            (
                "/queueIdentifier",
                json!("q\u{1b}[31m"),
                "control character '\\u{1b}'",
            ),
        ];
        for (pointer, bad, expected) in cases {
            let mut v = event();
            *v.pointer_mut(pointer).unwrap() = bad;
            let err = check(Emits::ContactEvents, &v).unwrap_err();
            assert!(err.contains(expected), "{pointer}: {err}");
            let text = check_json(Emits::ContactEvents, &v.to_string()).unwrap_err();
            assert_eq!(text, err, "{pointer}: the text check says the same");
        }
        let mut extra = event();
        extra["queue"] = json!("x");
        for err in [
            check(Emits::ContactEvents, &extra).unwrap_err(),
            check_json(Emits::ContactEvents, &extra.to_string()).unwrap_err(),
        ] {
            assert!(err.contains("unknown key `queue`"), "{err}");
        }
        check_json(Emits::ContactEvents, &event().to_string()).unwrap();
        let late = r#"{"agentIdentifier":"a","activityIdentifier":"Break",
            "startTime":"2021-12-06T10:15:00Z","endTime":"2021-12-06T10:00:00Z"}"#;
        assert!(
            check_json(Emits::AgentStatuses, late)
                .unwrap_err()
                .contains("`endTime` is before `startTime`")
        );
        let twice = r#"{"agentIdentifier":"a","agentIdentifier":"b","activityIdentifier":"Break",
            "startTime":"2021-12-06T10:00:00Z","endTime":"2021-12-06T10:15:00Z"}"#;
        assert!(
            check_json(Emits::AgentStatuses, twice)
                .unwrap_err()
                .contains("duplicate field")
        );
    }

    #[test]
    fn ingest_normalises_offsets_to_z_and_compacts() {
        let raw = r#"{ "properties": {"offered": true, "handled": true, "duration": 3},
            "queueName": "Q", "queueIdentifier": "q1",
            "timestamp": "2021-12-06T11:34:22+01:00", "channel": "chats" }"#;
        let out = normalize_json(Emits::ContactEvents, raw).unwrap();
        assert!(
            out.contains(r#""timestamp":"2021-12-06T10:34:22Z""#),
            "{out}"
        );
        assert!(!out.contains(' '));
    }

    #[test]
    fn intervals_must_not_end_before_they_start() {
        let v = json!({"agentIdentifier":"a","activityIdentifier":"Break",
                       "startTime":"2021-12-06T10:15:00Z","endTime":"2021-12-06T10:00:00Z"});
        assert!(
            check(Emits::AgentStatuses, &v)
                .unwrap_err()
                .contains("before")
        );
    }
}
