//! Silence as an error: a source that has committed nothing for `stale_after` is reported in
//! `/readyz`, `/metrics` and `status`. A feed that quietly stopped is the failure operators
//! notice last; an ACD that is closed at night is not one, so the check can be limited to
//! business hours (`business_hours = "mon-fri 08:00-18:00"`, in the source's time zone).

use std::time::Duration;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;

/// Days and a daily time window.
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessHours {
    days: Vec<Weekday>,
    start: Time,
    end: Time,
    zone: TimeZone,
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

impl BusinessHours {
    /// Parses `"mon-fri 08:00-18:00"`, `"mon,wed,fri 07:30-20:00"` or `"08:00-18:00"` (every
    /// day).
    pub fn parse(s: &str, zone: TimeZone) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not business hours like \"mon-fri 08:00-18:00\" or \"07:30-20:00\"")
        };
        let (days_part, hours_part) = match s.trim().split_once(' ') {
            Some((d, h)) => (Some(d), h.trim()),
            None => (None, s.trim()),
        };
        let days = match days_part {
            None => DAYS.iter().map(|(_, d)| *d).collect(),
            Some(spec) => {
                let index =
                    |name: &str| DAYS.iter().position(|(n, _)| n.eq_ignore_ascii_case(name));
                let mut days = Vec::new();
                for part in spec.split(',') {
                    match part.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) = (index(a).ok_or_else(bad)?, index(b).ok_or_else(bad)?);
                            let mut i = a;
                            loop {
                                days.push(DAYS[i].1);
                                if i == b {
                                    break;
                                }
                                i = (i + 1) % 7;
                            }
                        }
                        None => days.push(DAYS[index(part).ok_or_else(bad)?].1),
                    }
                }
                days
            }
        };
        let (a, b) = hours_part.split_once('-').ok_or_else(bad)?;
        let time = |t: &str| -> Result<Time, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            Time::new(
                h.parse().map_err(|_| bad())?,
                m.parse().map_err(|_| bad())?,
                0,
                0,
            )
            .map_err(|_| bad())
        };
        let (start, end) = (time(a)?, time(b)?);
        if start >= end {
            return Err(format!("{s:?}: the window must end after it starts"));
        }
        Ok(Self {
            days,
            start,
            end,
            zone,
        })
    }

    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        let local = self.zone.to_datetime(at);
        self.days.contains(&local.weekday())
            && local.time() >= self.start
            && local.time() < self.end
    }
}

/// When a source counts as silent.
#[derive(Clone, Debug, PartialEq)]
pub struct StalePolicy {
    pub after: Duration,
    pub hours: Option<BusinessHours>,
}

impl StalePolicy {
    /// Why the source counts as silent at `now`, or `None`. `last_ms` is its last commit (or
    /// the daemon's start, whichever is later, so a fresh start is not an alarm).
    pub fn verdict(&self, last_ms: i64, now: jiff::Timestamp) -> Option<String> {
        if let Some(hours) = &self.hours
            && !hours.contains(now)
        {
            return None;
        }
        let silent = Duration::from_millis((now.as_millisecond() - last_ms).max(0) as u64);
        (silent > self.after).then(|| {
            format!(
                "nothing read for {} (stale_after {})",
                humantime::format_duration(Duration::from_secs(silent.as_secs())),
                humantime::format_duration(self.after)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_are_read_in_the_sources_zone() {
        let h = BusinessHours::parse(
            "mon-fri 08:00-18:00",
            TimeZone::get("Europe/Berlin").unwrap(),
        )
        .unwrap();
        // Monday 2024-05-06 07:30 Berlin = 05:30Z: before opening.
        assert!(!h.contains(at("2024-05-06T05:30:00Z")));
        assert!(h.contains(at("2024-05-06T06:30:00Z")));
        assert!(!h.contains(at("2024-05-06T16:00:00Z")));
        // Saturday.
        assert!(!h.contains(at("2024-05-11T10:00:00Z")));
    }

    #[test]
    fn day_lists_wrap_and_bad_specs_are_refused() {
        let h = BusinessHours::parse("fri-mon 10:00-12:00", TimeZone::UTC).unwrap();
        assert!(h.contains(at("2024-05-12T11:00:00Z"))); // Sunday
        assert!(!h.contains(at("2024-05-08T11:00:00Z"))); // Wednesday
        assert!(BusinessHours::parse("weekdays 8-18", TimeZone::UTC).is_err());
        assert!(BusinessHours::parse("18:00-08:00", TimeZone::UTC).is_err());
    }

    #[test]
    fn silence_counts_only_inside_business_hours() {
        let p = StalePolicy {
            after: Duration::from_secs(7200),
            hours: Some(BusinessHours::parse("08:00-18:00", TimeZone::UTC).unwrap()),
        };
        let last = at("2024-05-06T07:00:00Z").as_millisecond();
        assert_eq!(p.verdict(last, at("2024-05-06T08:30:00Z")), None);
        let v = p.verdict(last, at("2024-05-06T10:00:00Z")).unwrap();
        assert_eq!(v, "nothing read for 3h (stale_after 2h)");
        assert_eq!(p.verdict(last, at("2024-05-06T19:00:00Z")), None);
    }
}
