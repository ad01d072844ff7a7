//! Small types that carry meaning across modules: names, ids, secrets and what a source emits.
//!
//! They hold no behaviour beyond formatting and parsing, so every module may depend on them.

use std::fmt;

/// A source's name from the configuration. Cursors and dedupe keys are scoped by it, so it must
/// stay stable for the life of an installation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceName(String);

impl SourceName {
    /// Accepts ASCII letters, digits, `-`, `_` and `.`, 1 to 64 characters.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err("must be 1 to 64 characters long".into());
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "{s:?} may only contain ASCII letters, digits, '-', '_' and '.'"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A credential. Its `Debug` and `Display` print `***`, so it cannot leak through logs, error
/// messages or `status`; the value is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret; its value is remembered, so that text from elsewhere that quotes it back is
    /// masked (see [`crate::redact::scrub`]).
    pub fn new(s: impl Into<String>) -> Self {
        let s = s.into();
        crate::redact::remember(&s);
        Self(s)
    }

    /// The raw value, for the one place that must send it (the `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret, compared in constant time (for a value of the right
    /// length: the length is not a secret worth guarding).
    pub fn matches(&self, given: &str) -> bool {
        let want = self.0.as_bytes();
        let given = given.as_bytes();
        if want.len() != given.len() {
            return false;
        }
        let diff = want
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | std::hint::black_box(a ^ b));
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What kind of API record a source produces; it decides the endpoint and the record schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Emits {
    ContactEvents,
    AgentStatuses,
}

impl Emits {
    /// The API path records of this kind are posted to.
    pub fn endpoint(self) -> &'static str {
        match self {
            Emits::ContactEvents => "/external-systems/contact-events",
            Emits::AgentStatuses => "/external-systems/agent-statuses",
        }
    }

    pub fn from_endpoint(path: &str) -> Option<Self> {
        match path {
            "/external-systems/contact-events" => Some(Emits::ContactEvents),
            "/external-systems/agent-statuses" => Some(Emits::AgentStatuses),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Emits::ContactEvents => "contact_events",
            Emits::AgentStatuses => "agent_statuses",
        }
    }

    /// The kind [`Emits::as_str`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "contact_events" => Some(Emits::ContactEvents),
            "agent_statuses" => Some(Emits::AgentStatuses),
            _ => None,
        }
    }
}

/// A push lane: records that share an endpoint and `meta` travel in the same batches, in order,
/// and one lane's trouble never holds up another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LaneKey {
    pub emits: Emits,
    pub integration_id: u64,
    pub external_system: Option<String>,
}

impl LaneKey {
    /// The `meta` object of every request in this lane, as JSON text.
    pub fn meta_json(&self) -> String {
        let mut meta = serde_json::Map::new();
        meta.insert(
            "integrationConfigurationId".into(),
            serde_json::Value::from(self.integration_id),
        );
        if let Some(system) = &self.external_system {
            meta.insert(
                "externalSystem".into(),
                serde_json::Value::from(system.as_str()),
            );
        }
        serde_json::Value::Object(meta).to_string()
    }
}

impl fmt::Display for LaneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}", self.emits.as_str(), self.integration_id)?;
        if let Some(system) = &self.external_system {
            write!(f, " ({system})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn source_names_are_restricted_to_a_safe_alphabet() {
        assert!(SourceName::parse("acd-exports_1.v2").is_ok());
        assert!(SourceName::parse("").is_err());
        assert!(SourceName::parse("with space").is_err());
        assert!(SourceName::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn meta_carries_external_system_only_when_set() {
        let mut lane = LaneKey {
            emits: Emits::ContactEvents,
            integration_id: 1234,
            external_system: None,
        };
        assert_eq!(lane.meta_json(), r#"{"integrationConfigurationId":1234}"#);
        lane.external_system = Some("My ACD".into());
        assert_eq!(
            lane.meta_json(),
            r#"{"externalSystem":"My ACD","integrationConfigurationId":1234}"#
        );
    }
}
