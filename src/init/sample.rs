//! The sample as `init` reads it: its encoding, its layout (format, delimiter, a header or
//! Asterisk's cdr_csv columns) and what each column holds ([`Kind`]), guessed from its values.
//! Nothing here writes configuration; [`super::render`] does, from a [`Sample`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::encoding::{Charset, Endian};
use crate::normalize::map::parse_seconds;
use crate::sources::parse;

/// Asterisk's cdr_csv columns: 16, then `uniqueid` and `userfield` (18), then `peeraccount`,
/// `linkedid` and `sequence` (21).
const CDR: [&str; 21] = [
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
    "uniqueid",
    "userfield",
    "peeraccount",
    "linkedid",
    "sequence",
];

/// Date and time patterns tried, most specific first.
const DATE_TIMES: &[&str] = &[
    // With their UTC offset ("+01:00", "+0100"): the zone is in the times.
    "%Y-%m-%d %H:%M:%S%:z",
    "%Y-%m-%d %H:%M:%S %z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%Y/%m/%d %H:%M:%S",
];
const DATES: &[&str] = &["%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d"];
const TIMES: &[&str] = &["%H:%M:%S", "%H:%M"];

/// What a column holds, as far as the sample shows.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    /// Every value reads as a time with this `timestamp_format`.
    Time(String),
    Date(&'static str),
    TimeOfDay(&'static str),
    /// `h:mm:ss` / `mm:ss`.
    Clock,
    /// Whole or decimal numbers.
    Number,
    /// A handful of distinct words.
    Words(Vec<String>),
    Text,
    Empty,
}

pub(super) struct Column {
    pub(super) name: String,
    pub(super) kind: Kind,
    /// A value from the sample, for comments.
    pub(super) example: String,
}

/// The sample as read: encoding, layout, columns.
pub(super) struct Sample {
    pub(super) path: PathBuf,
    pub(super) charset: (&'static str, String),
    pub(super) format: &'static str,
    pub(super) delimiter: Option<u8>,
    pub(super) header: bool,
    /// Why the columns are named as they are.
    pub(super) columns_note: String,
    pub(super) columns: Vec<Column>,
    pub(super) rows: usize,
}

pub(super) fn read(path: &Path) -> anyhow::Result<Sample> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot read the sample {}", path.display()))?
        .take(4 << 20)
        .read_to_end(&mut bytes)?;
    anyhow::ensure!(!bytes.is_empty(), "the sample {} is empty", path.display());
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let (charset, text) = decode(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let first = lines.first().copied().unwrap_or_default().trim_start();
    if first.starts_with('{') {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = lines
            .iter()
            .take(1000)
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mut names: Vec<String> = Vec::new();
        for o in &objects {
            for k in o.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        let columns = names
            .iter()
            .map(|n| {
                let values: Vec<String> = objects
                    .iter()
                    .filter_map(|o| match o.get(n)? {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Null => None,
                        v => Some(v.to_string()),
                    })
                    .collect();
                classify(n, &values)
            })
            .collect();
        return Ok(Sample {
            path: path.to_owned(),
            charset,
            format: "ndjson",
            delimiter: None,
            header: false,
            columns_note: format!("the keys of the first {} JSON lines", objects.len()),
            columns,
            rows: objects.len(),
        });
    }
    let delimiter = [b',', b';', b'\t', b'|']
        .into_iter()
        .map(|d| (d, consistency(&text, d)))
        .max_by_key(|(_, score)| *score)
        .map(|(d, _)| d)
        .unwrap_or(b',');
    let (items, _) = parse::csv(text.as_bytes(), delimiter, Charset::Utf8, true, 1001);
    let records: Vec<Vec<String>> = items.into_iter().map(|i| i.value.fields).collect();
    anyhow::ensure!(
        records.len() >= 2,
        "the sample {} has fewer than two rows: give one with a few rows of data",
        path.display()
    );
    let width = records.iter().map(Vec::len).max().unwrap_or(0);
    let header = looks_like_header(&records);
    let (names, note) = if header {
        (
            records[0].clone(),
            "the first row is a header: its names are text, and the rows below hold numbers \
             or times where it does not"
                .to_owned(),
        )
    } else if is_cdr(&records, width) {
        (
            CDR[..width].iter().map(|s| s.to_string()).collect(),
            format!(
                "no header; {width} columns with ANSWERED/NO ANSWER/BUSY in column 15: \
                 Asterisk's cdr_csv Master.csv"
            ),
        )
    } else {
        (
            (1..=width).map(|i| format!("column{i}")).collect(),
            "no header (the first row holds data): the columns are numbered; rename them here \
             and in the map"
                .to_owned(),
        )
    };
    let data = &records[usize::from(header)..];
    let columns = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let values: Vec<String> = data
                .iter()
                .filter_map(|r| r.get(i))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            classify(n, &values)
        })
        .collect();
    Ok(Sample {
        path: path.to_owned(),
        charset,
        format: if delimiter == b'\t' { "tsv" } else { "csv" },
        delimiter: Some(delimiter),
        header,
        columns_note: note,
        columns,
        rows: data.len(),
    })
}

/// The encoding, with what was seen, and the text.
pub(super) fn decode(bytes: &[u8]) -> ((&'static str, String), String) {
    if bytes.starts_with(&[0xef, 0xbb, 0xbf]) {
        let text = String::from_utf8_lossy(&bytes[3..]).into_owned();
        return (
            ("utf-8", "it starts with a UTF-8 byte-order mark".into()),
            text,
        );
    }
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        let be = bytes[0] == 0xfe;
        let charset = Charset::Utf16(if be { Endian::Big } else { Endian::Little });
        let t =
            parse::Transcoded::utf16(&bytes[2..], charset.big_endian(bytes) == Some(true), true);
        let text = String::from_utf8_lossy(&t.text).into_owned();
        return (
            ("utf-16", "it starts with a UTF-16 byte-order mark".into()),
            text,
        );
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => (("utf-8", "every byte is valid UTF-8".into()), t.to_owned()),
        Err(_) => {
            let bad = bytes
                .split(|b| *b == b'\n')
                .filter(|l| std::str::from_utf8(l).is_err())
                .count();
            let text = encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned();
            (
                (
                    "windows-1252",
                    format!(
                        "{bad} line(s) are not valid UTF-8, and Windows-1252 reads every byte \
                         (if most lines are UTF-8 with a few broken names, \"utf-8\" also \
                         works: rows are parked only when a mapped column is broken)"
                    ),
                ),
                text,
            )
        }
    }
}

/// How well `delimiter` splits the first lines: rows with the most common field count, when
/// that count is more than one.
fn consistency(text: &str, delimiter: u8) -> usize {
    let (items, _) = parse::csv(text.as_bytes(), delimiter, Charset::Utf8, true, 50);
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for i in &items {
        *counts.entry(i.value.fields.len()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(width, _)| *width > 1)
        .map(|(width, n)| n * 1000 + width)
        .max()
        .unwrap_or(0)
}

fn looks_like_header(records: &[Vec<String>]) -> bool {
    let first = &records[0];
    let plain = |v: &str| {
        let v = v.trim();
        !v.is_empty()
            && v.parse::<f64>().is_err()
            && parse_seconds(v).is_err()
            && !DATE_TIMES.iter().chain(DATES).any(|f| strtime(f, v))
    };
    let mut seen = std::collections::HashSet::new();
    if !first
        .iter()
        .all(|v| plain(v) && seen.insert(v.trim().to_owned()))
    {
        return false;
    }
    // Some column of the rows below is not plain text where the first row is.
    (0..first.len()).any(|i| {
        records[1..]
            .iter()
            .filter_map(|r| r.get(i))
            .any(|v| !v.trim().is_empty() && !plain(v))
    })
}

fn is_cdr(records: &[Vec<String>], width: usize) -> bool {
    [16, 17, 18, 21].contains(&width)
        && records.iter().take(50).all(|r| {
            r.get(14).is_some_and(|d| {
                ["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"].contains(&d.as_str())
            })
        })
}

fn strtime(pattern: &str, value: &str) -> bool {
    jiff::fmt::strtime::parse(pattern, value).is_ok_and(|p| {
        if pattern.contains("%H") || pattern.contains("%I") {
            if pattern.contains("%d") {
                p.to_datetime().is_ok()
            } else {
                p.to_time().is_ok()
            }
        } else {
            p.to_date().is_ok()
        }
    })
}

fn classify(name: &str, values: &[String]) -> Column {
    let example = values.first().cloned().unwrap_or_default();
    let all = |f: &dyn Fn(&str) -> bool| !values.is_empty() && values.iter().all(|v| f(v));
    let kind = if values.is_empty() {
        Kind::Empty
    } else if all(&|v| v.parse::<jiff::Timestamp>().is_ok()) {
        Kind::Time("rfc3339".into())
    } else if let Some(f) = DATE_TIMES.iter().find(|f| all(&|v| strtime(f, v))) {
        Kind::Time((*f).to_owned())
    } else if let Some(f) = DATES.iter().find(|f| all(&|v| strtime(f, v))) {
        Kind::Date(f)
    } else if all(&|v| v.contains(':') && parse_seconds(v).is_ok()) {
        // 7:00:00 reads as a time of day and as a duration: the name decides.
        let lower = name.to_ascii_lowercase();
        let clock_name = ["time", "zeit", "start", "begin", "end", "from", "to", "uhr"]
            .iter()
            .any(|w| lower.contains(w))
            && !DURATION_WORDS.iter().any(|w| lower.contains(w));
        match TIMES.iter().find(|f| all(&|v| strtime(f, v))) {
            Some(f) if clock_name => Kind::TimeOfDay(f),
            _ => Kind::Clock,
        }
    } else if all(&|v| v.replace(',', ".").parse::<f64>().is_ok()) {
        Kind::Number
    } else {
        let mut distinct: Vec<String> = Vec::new();
        for v in values {
            if !distinct.contains(v) {
                distinct.push(v.clone());
            }
            if distinct.len() > 12 {
                break;
            }
        }
        if distinct.len() <= 12 && values.len() >= 2 * distinct.len() {
            distinct.sort();
            Kind::Words(distinct)
        } else {
            Kind::Text
        }
    };
    Column {
        name: name.to_owned(),
        kind,
        example,
    }
}

pub(super) const DURATION_WORDS: &[&str] = &[
    "talk",
    "hold",
    "acw",
    "wrap",
    "duration",
    "dauer",
    "billsec",
    "handle",
    "aht",
    "sec",
    "gespräch",
    "nachbearbeitung",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_format_is_chosen_only_when_it_reads_every_value() {
        let c = classify(
            "start",
            &["01.03.2024 07:00:00".into(), "13.03.2024 17:30:00".into()],
        );
        assert_eq!(c.kind, Kind::Time("%d.%m.%Y %H:%M:%S".into()));
        // 13/03 is no month: the day comes first.
        let c = classify(
            "start",
            &["01/03/2024 07:00:00".into(), "13/03/2024 07:00:00".into()],
        );
        assert_eq!(c.kind, Kind::Time("%d/%m/%Y %H:%M:%S".into()));
        let c = classify("talk", &["0:02:04".into(), "1:10:00".into()]);
        assert_eq!(c.kind, Kind::Clock);
        let c = classify("Time", &["7:00:00".into(), "17:30:00".into()]);
        assert_eq!(c.kind, Kind::TimeOfDay("%H:%M:%S"));
    }
}
