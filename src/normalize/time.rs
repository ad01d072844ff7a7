//! Timestamps: reading them the way ACDs write them, writing them the way injixo wants them.
//!
//! The API takes RFC 3339 UTC with a `Z`. ACD exports use local wall-clock times, epoch seconds
//! or milliseconds, or RFC 3339 with an offset. A local time that does not exist (skipped by a
//! DST change) is moved forward by the length of the gap; a local time that exists twice (the
//! hour repeated when clocks go back) is read as its first occurrence. Both are the
//! "compatible" rules of RFC 5545 and of `java.time`, so two importers agree.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How a source writes its timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// RFC 3339 / ISO 8601 with a `Z` or an offset.
    Rfc3339,
    /// Seconds since 1970-01-01 UTC, fractions allowed.
    EpochSeconds,
    /// Milliseconds since 1970-01-01 UTC.
    EpochMillis,
    /// A `strftime`-style pattern such as `%d.%m.%Y %H:%M:%S`, read in the configured zone
    /// unless the pattern itself carries an offset (`%z`).
    Pattern(String),
}

impl TimeFormat {
    /// Whether times written so carry their own offset or zone (RFC 3339, epochs, a pattern
    /// with `%z`, `%:z`, `%::z`, `%:::z`, `%Z`, `%Q`, `%:Q` or `%s`): no `timezone` is needed.
    pub fn carries_offset(&self) -> bool {
        match self {
            TimeFormat::Rfc3339 | TimeFormat::EpochSeconds | TimeFormat::EpochMillis => true,
            TimeFormat::Pattern(p) => ["%z", "%:z", "%::z", "%:::z", "%Z", "%Q", "%:Q", "%s"]
                .iter()
                .any(|z| p.contains(z)),
        }
    }

    /// Parses the `timestamp_format` configuration value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            "epoch" | "epoch_seconds" => Ok(TimeFormat::EpochSeconds),
            "epoch_ms" | "epoch_millis" => Ok(TimeFormat::EpochMillis),
            p if p.contains('%') => Ok(TimeFormat::Pattern(p.to_owned())),
            other => Err(format!(
                "{other:?} is not a timestamp format: use \"rfc3339\", \"epoch\", \"epoch_ms\" \
                 or a strftime pattern such as \"%Y-%m-%d %H:%M:%S\""
            )),
        }
    }
}

/// Reads timestamps of one format in one time zone.
#[derive(Clone, Debug)]
pub struct TimeParser {
    format: TimeFormat,
    zone: TimeZone,
}

impl TimeParser {
    pub fn new(format: TimeFormat, zone: TimeZone) -> Self {
        Self { format, zone }
    }

    /// The zone local times are read in.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub fn utc_rfc3339() -> Self {
        Self::new(TimeFormat::Rfc3339, TimeZone::UTC)
    }

    pub fn parse(&self, raw: &str) -> Result<Timestamp, String> {
        let s = raw.trim();
        match &self.format {
            TimeFormat::Rfc3339 => parse_rfc3339(s),
            TimeFormat::EpochSeconds => {
                let secs: f64 = s
                    .parse()
                    .map_err(|_| format!("{raw:?} is not a number of epoch seconds"))?;
                let millis = (secs * 1000.0).round();
                if !millis.is_finite() || millis.abs() > 1e15 {
                    return Err(format!("{raw:?} is out of range for epoch seconds"));
                }
                Timestamp::from_millisecond(millis as i64).map_err(|e| format!("{raw:?}: {e}"))
            }
            TimeFormat::EpochMillis => {
                let millis: i64 = s
                    .parse()
                    .map_err(|_| format!("{raw:?} is not a whole number of epoch milliseconds"))?;
                Timestamp::from_millisecond(millis).map_err(|e| format!("{raw:?}: {e}"))
            }
            TimeFormat::Pattern(pattern) => {
                let parsed = jiff::fmt::strtime::parse(pattern, s)
                    .map_err(|e| format!("{raw:?} does not match {pattern:?}: {e}"))?;
                if parsed.offset().is_some() {
                    return parsed.to_timestamp().map_err(|e| format!("{raw:?}: {e}"));
                }
                let local = parsed
                    .to_datetime()
                    .map_err(|e| format!("{raw:?} is not a complete date and time: {e}"))?;
                self.zone
                    .to_ambiguous_timestamp(local)
                    .compatible()
                    .map_err(|e| format!("{raw:?}: {e}"))
            }
        }
    }
}

/// RFC 3339 with any offset, as a source may write it.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>()
        .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp with an offset"))
}

/// An operator's point in time on the command line: a date (`2024-01-31`, midnight UTC) or an
/// RFC 3339 timestamp.
pub fn parse_since(s: &str) -> Result<Timestamp, String> {
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return TimeZone::UTC
            .to_ambiguous_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .compatible()
            .map_err(|e| e.to_string());
    }
    s.parse::<Timestamp>()
        .map_err(|_| format!("{s:?} is neither a date like 2024-01-31 nor an RFC 3339 timestamp"))
}

/// The API's form: RFC 3339, UTC, `Z`, fractional seconds only when present.
pub fn to_api(ts: Timestamp) -> String {
    ts.to_string()
}

/// Checks the API's form strictly: `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub fn check_api_form(s: &str) -> Result<Timestamp, String> {
    let b = s.as_bytes();
    let shaped = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z');
    if !shaped {
        return Err(format!(
            "{s:?} is not an RFC 3339 UTC timestamp like 2021-12-06T10:34:22Z"
        ));
    }
    parse_rfc3339(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(pattern: &str) -> TimeParser {
        TimeParser::new(
            TimeFormat::Pattern(pattern.into()),
            TimeZone::get("Europe/Berlin").unwrap(),
        )
    }

    #[test]
    fn local_times_convert_to_utc_with_the_zone_offset() {
        let p = berlin("%d.%m.%Y %H:%M:%S");
        assert_eq!(
            to_api(p.parse("06.12.2021 11:34:22").unwrap()),
            "2021-12-06T10:34:22Z"
        );
        assert_eq!(
            to_api(p.parse("06.07.2021 11:34:22").unwrap()),
            "2021-07-06T09:34:22Z"
        );
    }

    #[test]
    fn a_time_skipped_by_dst_moves_forward_and_a_repeated_time_takes_the_first() {
        let p = berlin("%Y-%m-%d %H:%M");
        // 2021-03-28 02:30 does not exist in Berlin: it becomes 03:30 CEST = 01:30Z.
        assert_eq!(
            to_api(p.parse("2021-03-28 02:30").unwrap()),
            "2021-03-28T01:30:00Z"
        );
        // 2021-10-31 02:30 exists twice: the first (CEST, +02:00) is 00:30Z.
        assert_eq!(
            to_api(p.parse("2021-10-31 02:30").unwrap()),
            "2021-10-31T00:30:00Z"
        );
    }

    #[test]
    fn epoch_seconds_and_millis() {
        let s = TimeParser::new(TimeFormat::EpochSeconds, TimeZone::UTC);
        assert_eq!(
            to_api(s.parse("1638786862").unwrap()),
            "2021-12-06T10:34:22Z"
        );
        assert_eq!(
            to_api(s.parse("1638786862.5").unwrap()),
            "2021-12-06T10:34:22.5Z"
        );
        let ms = TimeParser::new(TimeFormat::EpochMillis, TimeZone::UTC);
        assert_eq!(
            to_api(ms.parse("1638786862000").unwrap()),
            "2021-12-06T10:34:22Z"
        );
        assert!(ms.parse("soon").is_err());
    }

    #[test]
    fn rfc3339_with_offset_is_normalised_to_z() {
        let p = TimeParser::utc_rfc3339();
        assert_eq!(
            to_api(p.parse("2021-12-06T11:34:22+01:00").unwrap()),
            "2021-12-06T10:34:22Z"
        );
    }

    #[test]
    fn the_api_form_is_checked_strictly() {
        assert!(check_api_form("2021-12-06T10:34:22Z").is_ok());
        assert!(check_api_form("2021-12-06T10:34:22.123Z").is_ok());
        assert!(check_api_form("2021-12-06T10:34:22+00:00").is_err());
        assert!(check_api_form("2021-12-06 10:34:22Z").is_err());
        assert!(check_api_form("2021-13-06T10:34:22Z").is_err());
    }

    #[test]
    fn unknown_format_names_are_refused_with_the_choices() {
        let e = TimeFormat::parse("iso").unwrap_err();
        assert!(e.contains("rfc3339"), "{e}");
    }
}
