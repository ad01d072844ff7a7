//! The problem collector: every problem in a file is found, each naming its key, the line the
//! file has it on, and what would be valid. The [`Validator`] core lives here; each table's
//! checks live beside its types.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", p.render(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Problem {
    /// `config.toml:12: source[0] "acd".format: must be one of ...`
    pub fn render(&self, file: &Path) -> String {
        let place = match self.line {
            Some(l) => format!("{}:{l}", file.display()),
            None => file.display().to_string(),
        };
        if self.key.is_empty() {
            format!("{place}: {}", self.message)
        } else {
            format!("{place}: {}: {}", self.key, self.message)
        }
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// A key path: `["source", 1, "map", "timestamp"]`.
#[derive(Clone)]
pub(super) enum Seg {
    Key(&'static str),
    Owned(String),
    Index(usize),
}

pub(super) struct Validator<'t> {
    pub(super) doc: Option<toml_edit::Document<&'t str>>,
    pub(super) text: &'t str,
    pub(super) base: PathBuf,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
    /// A configuration being written (`preview`): what only sending needs (a source's
    /// `integration_id`) may be missing.
    pub(super) draft: bool,
}

impl Validator<'_> {
    /// A problem with `key` of the `i`th source, labelled `label` (e.g. `source[0] "acd"`).
    pub(super) fn source_problem(
        &mut self,
        i: usize,
        label: &str,
        key: &'static str,
        message: impl Into<String>,
    ) {
        self.problem(
            &[Seg::Key("source"), Seg::Index(i), Seg::Key(key)],
            &format!("{label}.{key}"),
            message,
        );
    }

    pub(super) fn problem(&mut self, path: &[Seg], label: &str, message: impl Into<String>) {
        let line = self.locate(path);
        self.problems.push(Problem {
            key: label.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// The line of the deepest part of `path` that the file has.
    /// A problem for each of a source's `keys` that is set where it does not apply.
    pub(super) fn not_applicable(
        &mut self,
        i: usize,
        label: &str,
        keys: &[(&'static str, bool)],
        why: &str,
    ) {
        for (k, set) in keys {
            if *set {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key(k)],
                    &format!("{label}.{k}"),
                    why,
                );
            }
        }
    }

    pub(super) fn locate(&self, path: &[Seg]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut span = None;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => item.get(*k),
                Seg::Owned(k) => item.get(k.as_str()),
                Seg::Index(i) => item.get(*i),
            };
            match next {
                Some(n) => {
                    item = n;
                    if let Some(s) = n.span() {
                        span = Some(s);
                    }
                }
                None => break,
            }
        }
        span.map(|s| line_of(self.text, s.start))
    }

    /// A size such as "64MiB" within `range` (bytes); `default` when absent or wrong.
    pub(super) fn size(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<&str>,
        default: u64,
        range: (u64, u64),
    ) -> u64 {
        let Some(raw) = raw else { return default };
        let (low, high) = (bytesize::ByteSize(range.0), bytesize::ByteSize(range.1));
        match raw.parse::<bytesize::ByteSize>() {
            Ok(b) if (range.0..=range.1).contains(&b.as_u64()) => b.as_u64(),
            Ok(_) => {
                self.problem(
                    path,
                    label,
                    format!("{raw:?} is out of range ({low} to {high})"),
                );
                default
            }
            Err(_) => {
                self.problem(
                    path,
                    label,
                    format!(
                        "{raw:?} is not a size: write it like \"512KiB\", \"64MiB\" or \"5GiB\""
                    ),
                );
                default
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<&str>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw) {
            Ok(d) if d >= range.0 && d <= range.1 => d,
            Ok(_) => {
                self.problem(
                    path,
                    label,
                    format!(
                        "{raw:?} is out of range ({} to {})",
                        humantime::format_duration(range.0),
                        humantime::format_duration(range.1)
                    ),
                );
                default
            }
            Err(_) => {
                self.problem(
                    path,
                    label,
                    format!("{raw:?} is not a duration: write it like \"500ms\", \"30s\", \"5m\", \"14d\""),
                );
                default
            }
        }
    }

    /// Addresses and networks ("203.0.113.0/24", "2001:db8::/32", "10.1.2.3").
    pub(super) fn networks(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<Vec<String>>,
    ) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for text in raw.unwrap_or_default() {
            let t = text.trim();
            match t
                .parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.problem(
                    path,
                    label,
                    format!(
                        "{text:?} is not an address or a network like \"203.0.113.0/24\" or \
                         \"2001:db8::/32\""
                    ),
                ),
            }
        }
        out
    }

    pub(super) fn path(&self, raw: &str) -> PathBuf {
        let p = PathBuf::from(raw);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn one_of<T: Copy>(
        &mut self,
        path: &[Seg],
        label: &str,
        raw: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(raw) = raw else { return default };
        if let Some((_, v)) = choices.iter().find(|(n, _)| *n == raw) {
            return *v;
        }
        let names: Vec<_> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.problem(
            path,
            label,
            format!("{raw:?} is not valid: use one of {}", names.join(", ")),
        );
        default
    }

    /// `timezone`: an IANA zone, UTC when unset.
    pub(super) fn zone(&mut self, i: usize, label: &str, raw: Option<&str>) -> jiff::tz::TimeZone {
        match raw {
            None | Some("UTC") => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or_else(|_| {
                self.problem(
                    &[Seg::Key("source"), Seg::Index(i), Seg::Key("timezone")],
                    &format!("{label}.timezone"),
                    format!("{name:?} is not an IANA time zone such as \"Europe/Berlin\""),
                );
                jiff::tz::TimeZone::UTC
            }),
        }
    }
}
