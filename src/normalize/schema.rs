//! The two record shapes the injixo API takes, checked strictly.
//!
//! [`check`] is the single definition of "a valid record": the ingest path uses it (through
//! [`normalize_json`]) so that a record that would be rejected is parked at the source with its
//! file and line instead of becoming a dead letter days later, and the fake API in tests uses it
//! to refuse what the real API would refuse.

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
            match props.get("duration").and_then(Value::as_f64) {
                Some(d) if d >= 0.0 && d.is_finite() => {}
                _ => return Err("`properties.duration` must be a number of seconds >= 0".into()),
            }
            text(obj, "queueName")?;
            text(obj, "queueIdentifier")?;
            let channel = text(obj, "channel")?;
            if !CHANNELS.contains(&channel) {
                return Err(format!(
                    "`channel` {channel:?} is not one of {}",
                    CHANNELS.join(", ")
                ));
            }
            time::check_api_form(text(obj, "timestamp")?)
                .map_err(|e| format!("`timestamp`: {e}"))?;
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
            text(obj, "agentIdentifier")?;
            text(obj, "activityIdentifier")?;
            let start = time::check_api_form(text(obj, "startTime")?)
                .map_err(|e| format!("`startTime`: {e}"))?;
            let end = time::check_api_form(text(obj, "endTime")?)
                .map_err(|e| format!("`endTime`: {e}"))?;
            if end < start {
                return Err("`endTime` is before `startTime`".into());
            }
        }
    }
    Ok(())
}

/// Reads one record that a source wrote in the API's shape, converts timestamps with an offset
/// to UTC `Z`, checks it and returns it as compact JSON.
pub fn normalize_json(emits: Emits, raw: &str) -> Result<String, String> {
    let mut value: Value = serde_json::from_str(raw).map_err(|e| format!("not valid JSON: {e}"))?;
    if let Some(obj) = value.as_object_mut() {
        let keys: &[&str] = match emits {
            Emits::ContactEvents => &["timestamp"],
            Emits::AgentStatuses => &["startTime", "endTime"],
        };
        for key in keys {
            if let Some(Value::String(s)) = obj.get_mut(*key)
                && time::check_api_form(s).is_err()
                && let Ok(ts) = time::parse_rfc3339(s)
            {
                *s = time::to_api(ts);
            }
        }
    }
    check(emits, &value)?;
    Ok(value.to_string())
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
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("`{key}` must not be empty")),
        _ => Err(format!("`{key}` must be a string")),
    }
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
        ];
        for (pointer, bad, expected) in cases {
            let mut v = event();
            *v.pointer_mut(pointer).unwrap() = bad;
            let err = check(Emits::ContactEvents, &v).unwrap_err();
            assert!(err.contains(expected), "{pointer}: {err}");
        }
        let mut extra = event();
        extra["queue"] = json!("x");
        assert!(
            check(Emits::ContactEvents, &extra)
                .unwrap_err()
                .contains("unknown key `queue`")
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
