//! The configuration `init` writes for a [`Sample`]: the `[api]`, `[state]` and `[[source]]`
//! tables with a comment on every guess, the map of contact events or of agent states, a `key`
//! only where it holds over the whole sample, and the preview of the first rows as comments.

use std::fmt::Write as _;
use std::path::Path;

use super::key;
use super::sample::{Column, DURATION_WORDS, Kind, Sample};

fn first_named<'a>(
    columns: &'a [Column],
    words: &[&str],
    fits: impl Fn(&Kind) -> bool,
) -> Option<&'a Column> {
    for w in words {
        if let Some(c) = columns
            .iter()
            .find(|c| c.name.to_ascii_lowercase().contains(w) && fits(&c.kind))
        {
            return Some(c);
        }
    }
    None
}

/// A column name as the map writes it: bare when it is a plain identifier.
fn variable(name: &str) -> String {
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        name.to_owned()
    } else {
        format!(
            "row[{}]",
            serde_json::to_string(name)
                .unwrap_or_default()
                .replace('"', "'")
        )
    }
}

/// `[api]` and `[state]` as `init` writes them: the API key a TODO, the state file where the
/// packages put it.
pub(super) const API_AND_STATE: &str = "[api]
# TODO: the API key from injixo (Account > Integrations > injixo API > generate key),
# in a file only the service user may read.
token_file = \"/etc/injixo-sync/api-key\"

[state]
path = \"/var/lib/injixo-sync/outbox.db\"

";

pub(super) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Words that differ only in case and surrounding spaces, as (upper-cased key, the first
/// spelling seen trimmed).
fn spellings(words: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for w in words {
        let key = w.trim().to_uppercase();
        if !out.iter().any(|(k, _)| *k == key) {
            out.push((key, w.trim().to_owned()));
        }
    }
    out
}

/// Whether a word means the contact was handled.
fn handled_word(w: &str) -> bool {
    let w = w.to_ascii_uppercase();
    [
        "ANSWER",
        "AGENT",
        "HANDLED",
        "CONNECT",
        "COMPLETE",
        "ACCEPT",
        "TRUE",
        "YES",
        "ANGENOMMEN",
    ]
    .iter()
    .any(|h| {
        w.contains(h) && !w.starts_with("NO") && !w.starts_with("UN") && !w.starts_with("NICHT")
    }) || ["Y", "1", "J", "JA"].contains(&w.as_str())
}

/// Writes the configuration to `out`; returns the part a preview can parse (with TODOs filled
/// with placeholders).
pub(super) fn render(s: &Sample, out: &mut String) -> String {
    let dir = s
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let ext = s
        .path
        .extension()
        .map(|e| format!("*.{}", e.to_string_lossy()))
        .unwrap_or_else(|| "*".into());
    let zone = jiff::tz::TimeZone::system()
        .iana_name()
        .unwrap_or("UTC")
        .to_owned();
    let _ = writeln!(
        out,
        "# injixo-sync configuration written by `injixo-sync init --sample {}`.\n\
         # Every guess below says what it saw. Next: fill in what is marked TODO and check the\n\
         # guesses; `injixo-sync --config THIS_FILE preview --source acd` shows what each row\n\
         # becomes; `injixo-sync --config THIS_FILE check` tries the key against the API; then\n\
         # start the daemon (`injixo-sync --config THIS_FILE run`, or the service).\n\
         # config.example.toml documents every key.\n",
        s.path.display()
    );
    out.push_str(API_AND_STATE);
    let mut source = String::new();
    let _ = writeln!(
        source,
        "[[source]]\nname = \"acd\"\ntype = \"files\"\nemits = \"contact_events\"\n\
         # TODO: the configuration id from the integration's tile in injixo, e.g.\n\
         # integration_id = 1234\n\
         # The folder the sample is in, and files named like it.\n\
         path = {}\ninclude = [{}]\nformat = {:?}",
        toml_str(&dir.display().to_string()),
        toml_str(&ext),
        s.format
    );
    if let Some(d) = s.delimiter
        && s.format == "csv"
    {
        let _ = writeln!(
            source,
            "# {:?} splits the first rows into the same number of columns.\ndelimiter = {}",
            d as char,
            toml_str(&(d as char).to_string())
        );
    }
    let _ = writeln!(
        source,
        "# Encoding: {}.\nencoding = {:?}",
        s.charset.1, s.charset.0
    );
    if s.format != "ndjson" {
        let _ = writeln!(source, "# Columns: {}.", s.columns_note);
        if s.header {
            source.push_str("header = true\n");
        } else {
            let names: Vec<String> = s.columns.iter().map(|c| toml_str(&c.name)).collect();
            let _ = writeln!(source, "header = false\ncolumns = [{}]", names.join(", "));
        }
    }
    let mut map = String::new();
    let mut todo: Vec<&'static str> = Vec::new();
    let emits = match agent_columns(s) {
        Some(agent) => agent_map(&agent, &mut source, &mut map, &mut todo, &zone),
        None => {
            contact_map(s, &mut source, &mut map, &mut todo, &zone);
            "contact_events"
        }
    };
    let source = source.replacen(
        "emits = \"contact_events\"",
        &format!("emits = \"{emits}\""),
        1,
    );
    out.push_str(&source);
    let _ = writeln!(out, "\n[source.map]\n{map}");
    if !todo.is_empty() {
        let _ = writeln!(
            out,
            "# Not guessed: {} (see the TODOs above; `check` names what is missing).",
            todo.join(", ")
        );
    }
    let placeholder = source.replacen(
        "name = \"acd\"\n",
        "name = \"acd\"\nintegration_id = 1\n",
        1,
    );
    format!(
        "[api]\ntoken = \"preview\"\n[state]\npath = \"preview.db\"\n{placeholder}\n[source.map]\n{map}"
    )
}

/// The columns of an agent-status export: who, in which state, from when (and until when).
struct AgentColumns<'a> {
    agent: &'a Column,
    activity: &'a Column,
    start: Option<&'a Column>,
    end: Option<&'a Column>,
    length: Option<&'a Column>,
    date: Option<&'a Column>,
}

/// Whether the sample is agents' states rather than contacts: an agent column, a state column
/// of a handful of words, and no queue.
fn agent_columns(s: &Sample) -> Option<AgentColumns<'_>> {
    let queue = first_named(
        &s.columns,
        &["queue", "skill", "split", "warteschlange"],
        |_| true,
    );
    if queue.is_some() {
        return None;
    }
    let agent = first_named(
        &s.columns,
        &["agent", "login", "user", "mitarbeiter", "extension"],
        |k| !matches!(k, Kind::Empty),
    )?;
    let activity = first_named(
        &s.columns,
        &["state", "status", "activity", "reason", "aux", "zustand"],
        |k| matches!(k, Kind::Words(_)),
    )?;
    let timed = |k: &Kind| matches!(k, Kind::Time(_) | Kind::TimeOfDay(_));
    let start = first_named(
        &s.columns,
        &["start", "from", "begin", "von", "since"],
        timed,
    )
    .or_else(|| s.columns.iter().find(|c| matches!(c.kind, Kind::Time(_))));
    let end = first_named(&s.columns, &["end", "to", "stop", "until", "bis"], |k| {
        timed(k)
    })
    .filter(|e| start.is_none_or(|st| st.name != e.name));
    let length = first_named(
        &s.columns,
        &["length", "duration", "dauer", "seconds", "secs"],
        |k| matches!(k, Kind::Number | Kind::Clock),
    );
    let date = s.columns.iter().find(|c| matches!(c.kind, Kind::Date(_)));
    Some(AgentColumns {
        agent,
        activity,
        start,
        end,
        length,
        date,
    })
}

/// The map of agent statuses (from a start and an end or a length) or of agent state changes
/// (one time per row); returns what the source emits.
fn agent_map(
    a: &AgentColumns<'_>,
    source: &mut String,
    map: &mut String,
    todo: &mut Vec<&'static str>,
    zone: &str,
) -> &'static str {
    let _ = writeln!(
        map,
        "# `{}` names the agent and `{}` the state ({}).\n\
         agentIdentifier = {}\nactivityIdentifier = {}",
        a.agent.name,
        a.activity.name,
        match &a.activity.kind {
            Kind::Words(w) => w.join(", "),
            _ => String::new(),
        },
        toml_str(&a.agent.name),
        toml_str(&a.activity.name)
    );
    // A time: the column, or a date column and a time of day read together.
    let at = |c: &Column| -> (String, Option<String>) {
        match (&c.kind, a.date) {
            (Kind::Time(f), _) => (format!("local({})", variable(&c.name)), Some(f.clone())),
            (Kind::TimeOfDay(tf), Some(d)) => {
                let Kind::Date(df) = &d.kind else {
                    unreachable!()
                };
                (
                    format!("local({} + ' ' + {})", variable(&d.name), variable(&c.name)),
                    Some(format!("{df} {tf}")),
                )
            }
            _ => (format!("local({})", variable(&c.name)), None),
        }
    };
    let external = "# The name injixo shows for this system (meta.externalSystem).\nexternal_system = \"ACD\"\n";
    let (end, length) = (a.end, a.length);
    let emits = match a.start {
        Some(start) if end.is_some() || length.is_some() => {
            let (from, format) = at(start);
            let end_expr = match (end, length) {
                (Some(e), _) => {
                    let (to, _) = at(e);
                    if matches!(e.kind, Kind::TimeOfDay(_)) {
                        let _ = writeln!(
                            map,
                            "# `{}` is a time of day: one earlier than `{}` is on the next day.",
                            e.name, start.name
                        );
                        format!("endAfter({from}, {to})")
                    } else {
                        to
                    }
                }
                (None, Some(l)) => {
                    let _ = writeln!(
                        map,
                        "# Each interval lasts `{}` from `{}`.",
                        l.name, start.name
                    );
                    format!("{from} + span({})", variable(&l.name))
                }
                (None, None) => unreachable!(),
            };
            if let Some(f) = format {
                let _ = writeln!(
                    source,
                    "# `{}` reads as a time with this format in every row (e.g. {:?}).\ntimestamp_format = {}",
                    start.name,
                    start.example,
                    toml_str(&f)
                );
            }
            source.push_str(external);
            let _ = writeln!(
                map,
                "startTime = {{ expr = {} }}\nendTime = {{ expr = {} }}",
                toml_str(&from),
                toml_str(&end_expr)
            );
            "agent_statuses"
        }
        Some(start) => {
            let (from, format) = at(start);
            if let Some(f) = format {
                let _ = writeln!(
                    source,
                    "# One time per row: each row is an agent's state change, built into intervals.\n\
                     timestamp_format = {}",
                    toml_str(&f)
                );
            }
            source.push_str(external);
            let _ = writeln!(map, "timestamp = {{ expr = {} }}", toml_str(&from));
            "agent_states"
        }
        None => {
            todo.push("startTime");
            source.push_str(external);
            map.push_str("# TODO: no column reads as a time in every row.\n# startTime = \"start\"\n# endTime = \"end\"\n");
            "agent_statuses"
        }
    };
    zone_lines(source, a.start.and_then(|c| at(c).1).as_deref(), zone);
    emits
}

/// The map of contact events: timestamp, queue, channel, handled, duration, key.
fn contact_map(
    s: &Sample,
    source: &mut String,
    map: &mut String,
    todo: &mut Vec<&'static str>,
    zone: &str,
) {
    timestamp(s, source, map, todo, zone);
    queue(s, map, todo);
    channel(s, map);
    map.push_str("offered = { value = true }\n");
    handled(s, map, todo);
    duration(s, map, todo);
    key_guess(s, source);
    other_words(s, map);
}

/// `timestamp`: one column that reads as a time, or a date and a time of day; and the zone
/// local times are read in.
fn timestamp(
    s: &Sample,
    source: &mut String,
    map: &mut String,
    todo: &mut Vec<&'static str>,
    zone: &str,
) {
    let time_words = [
        "start",
        "begin",
        "calldate",
        "date",
        "time",
        "timestamp",
        "zeit",
        "datum",
    ];
    let time_col = first_named(&s.columns, &time_words, |k| matches!(k, Kind::Time(_)))
        .or_else(|| s.columns.iter().find(|c| matches!(c.kind, Kind::Time(_))));
    let date_col = s.columns.iter().find(|c| matches!(c.kind, Kind::Date(_)));
    let clock_col = s
        .columns
        .iter()
        .find(|c| matches!(c.kind, Kind::TimeOfDay(_)));
    match (time_col, date_col, clock_col) {
        (Some(c), _, _) => {
            let Kind::Time(f) = &c.kind else {
                unreachable!()
            };
            let _ = writeln!(
                source,
                "# `{}` reads as a time with this format in every row (e.g. {:?}).\ntimestamp_format = {}",
                c.name,
                c.example,
                toml_str(f)
            );
            let _ = writeln!(map, "timestamp = {}", toml_str(&c.name));
        }
        (None, Some(d), Some(t)) => {
            let (Kind::Date(df), Kind::TimeOfDay(tf)) = (&d.kind, &t.kind) else {
                unreachable!()
            };
            let _ = writeln!(
                source,
                "# The date is in `{}` and the time of day in `{}`: read together.\ntimestamp_format = {}",
                d.name,
                t.name,
                toml_str(&format!("{df} {tf}"))
            );
            let _ = writeln!(
                map,
                "timestamp = {{ expr = {} }}",
                toml_str(&format!(
                    "local({} + ' ' + {})",
                    variable(&d.name),
                    variable(&t.name)
                ))
            );
        }
        _ => {
            todo.push("timestamp");
            map.push_str("# TODO: no column reads as a time in every row; name it, and set timestamp_format.\n# timestamp = \"start\"\n");
        }
    }
    let format = match time_col.map(|c| &c.kind) {
        Some(Kind::Time(f)) => Some(f.as_str()),
        _ => None,
    };
    zone_lines(source, format, zone);
}

/// Whether times written as `format` (`rfc3339` or a strftime pattern) carry their offset.
fn carries_offset(format: &str) -> bool {
    crate::normalize::time::TimeFormat::parse(format).is_ok_and(|f| f.carries_offset())
}

/// The source's `timezone`: none where the times carry their offset; else a TODO, since a
/// sample of local times does not tell their zone (the machine's is named, not assumed).
fn zone_lines(source: &mut String, format: Option<&str>, machine: &str) {
    if format.is_some_and(carries_offset) {
        source.push_str("# The times carry their UTC offset: no timezone is needed.\n");
        return;
    }
    let _ = writeln!(
        source,
        "# TODO: the zone the ACD writes these local times in (they carry no offset), e.g.\n\
         # \"Europe/Berlin\"; this machine's is {}. Unset, they are read as UTC, and `check`\n\
         # warns.\n\
         # timezone = {}",
        toml_str(machine),
        toml_str(machine)
    );
}

/// `queueName` and `queueIdentifier`: the column that names the queue.
fn queue(s: &Sample, map: &mut String, todo: &mut Vec<&'static str>) {
    let queue_words = [
        "queue",
        "skill",
        "split",
        "warteschlange",
        "dcontext",
        "group",
        "service",
    ];
    match first_named(&s.columns, &queue_words, |k| !matches!(k, Kind::Empty)) {
        Some(q) => match &q.kind {
            // "Support", " support ": one queue, written differently.
            Kind::Words(words) if spellings(words).len() < words.len() => {
                // An expression, not a lookup of the spellings seen: a queue that first turns
                // up after the sample must not park its rows.
                let _ = writeln!(
                    map,
                    "# `{}` names the queue, written {}: trimmed and upper-cased, they are {} \
                     queue(s), and so is\n# any queue the sample did not show.\n\
                     queueName = {{ expr = {} }}\nqueueIdentifier = {{ expr = {} }}",
                    q.name,
                    words
                        .iter()
                        .map(|w| format!("{w:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    spellings(words).len(),
                    toml_str(&format!("{}.trim().upperAscii()", variable(&q.name))),
                    toml_str(&format!("{}.trim().lowerAscii()", variable(&q.name))),
                );
            }
            _ => {
                let _ = writeln!(
                    map,
                    "# `{}` names the queue (e.g. {:?}); injixo makes one queue per identifier.\n\
                     queueName = {}\nqueueIdentifier = {}",
                    q.name,
                    q.example,
                    toml_str(&q.name),
                    toml_str(&q.name)
                );
            }
        },
        None => {
            todo.push("queueName");
            map.push_str("# TODO: which column names the queue?\n# queueName = \"queue\"\n# queueIdentifier = \"queue\"\n");
        }
    }
}

/// `channel`: calls, chats or emails, from a column's words; calls when no column says.
fn channel(s: &Sample, map: &mut String) {
    let channel_words = ["channel", "media", "kanal", "type"];
    match first_named(&s.columns, &channel_words, |k| matches!(k, Kind::Words(_))) {
        Some(c) => {
            let Kind::Words(words) = &c.kind else { unreachable!() };
            let channel_of = |w: &str| {
                let l = w.to_ascii_lowercase();
                if l.contains("chat") {
                    "chats"
                } else if l.contains("mail") {
                    "emails"
                } else {
                    "calls"
                }
            };
            let first = channel_of(&words[0]);
            if words.iter().all(|w| channel_of(w) == first) {
                // A lookup whose every value gives one result is that result, and a constant
                // does not park what the sample did not show.
                let _ = writeln!(
                    map,
                    "# `{}` holds {} in the sample: all {first}.\nchannel = {{ value = \"{first}\" }}",
                    c.name,
                    words.join(", "),
                );
            } else {
                let entries: Vec<String> = words
                    .iter()
                    .map(|w| format!("{} = \"{}\"", toml_str(w), channel_of(w)))
                    .collect();
                let _ = writeln!(
                    map,
                    "# `{}` holds {}: check what each is. \"*\" is every value the sample did not \
                     show: calls\n# (without it, rows with a new value would be parked).\n\
                     channel = {{ column = {}, values = {{ {}, \"*\" = \"calls\" }} }}",
                    c.name,
                    words.join(", "),
                    toml_str(&c.name),
                    entries.join(", ")
                );
            }
        }
        None => map.push_str("# No column names the channel: every contact is a call.\nchannel = { value = \"calls\" }\n"),
    }
}

/// `handled`: a lookup of an outcome column's words.
fn handled(s: &Sample, map: &mut String, todo: &mut Vec<&'static str>) {
    let outcome_words = [
        "disposition",
        "outcome",
        "result",
        "status",
        "handled",
        "answered",
        "angenommen",
        "state",
    ];
    match first_named(&s.columns, &outcome_words, |k| matches!(k, Kind::Words(_))) {
        Some(c) => {
            let Kind::Words(words) = &c.kind else {
                unreachable!()
            };
            let entries: Vec<String> = words
                .iter()
                .map(|w| format!("{} = {}", toml_str(w), handled_word(w)))
                .collect();
            let _ = writeln!(
                map,
                "# `{}` holds {} in the sample: check which mean handled.\n\
                 handled = {{ column = {}, values = {{ {}, \"*\" = false }} }}",
                c.name,
                words.join(", "),
                toml_str(&c.name),
                entries.join(", ")
            );
        }
        None => {
            todo.push("handled");
            map.push_str("# TODO: which column says the contact was handled? e.g.\n# handled = { column = \"outcome\", values = { AGENT = true, \"*\" = false } }\n");
        }
    }
}

/// `duration`: the handle time, one duration column or the talk, hold and wrap-up columns
/// added up.
fn duration(s: &Sample, map: &mut String, todo: &mut Vec<&'static str>) {
    let durations: Vec<&Column> = s
        .columns
        .iter()
        .filter(|c| {
            let lower = c.name.to_ascii_lowercase();
            matches!(c.kind, Kind::Clock | Kind::Number)
                && DURATION_WORDS.iter().any(|w| lower.contains(w))
                && !(lower == "duration" && s.columns.iter().any(|o| o.name == "billsec"))
        })
        .collect();
    let talk = durations
        .iter()
        .copied()
        .filter(|c| {
            let l = c.name.to_ascii_lowercase();
            [
                "talk",
                "hold",
                "acw",
                "wrap",
                "billsec",
                "gespräch",
                "nachbearbeitung",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect::<Vec<_>>();
    let parts = if talk.is_empty() {
        durations.clone()
    } else {
        talk
    };
    match parts.as_slice() {
        [] => {
            todo.push("duration");
            map.push_str(
                "# TODO: which column holds the handle time? e.g.\n# duration = \"talk\"\n",
            );
        }
        [one] => {
            let _ = writeln!(
                map,
                "# `{}` holds durations ({}).\nduration = {}",
                one.name,
                if one.kind == Kind::Clock {
                    "h:mm:ss"
                } else {
                    "seconds"
                },
                toml_str(&one.name)
            );
        }
        many => {
            let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
            let sum: Vec<String> = many
                .iter()
                .map(|c| format!("seconds({})", variable(&c.name)))
                .collect();
            let _ = writeln!(
                map,
                "# Handle time: {} added up.\nduration = {{ expr = {} }}",
                names.join(" + "),
                toml_str(&sum.join(" + "))
            );
        }
    }
}

/// A hint for each column of a handful of words the map does not use yet.
fn other_words(s: &Sample, map: &mut String) {
    for c in &s.columns {
        if let Kind::Words(words) = &c.kind
            && words.len() > 1
            && !map.contains(&format!("column = {}", toml_str(&c.name)))
            && !map.contains(&variable(&c.name))
        {
            let _ = writeln!(
                map,
                "# `{}` has {} distinct value(s): {}. To use it, e.g.\n\
                 # someField = {{ column = {}, values = {{ {} = ..., \"*\" = ... }} }}",
                c.name,
                words.len(),
                words.join(", "),
                toml_str(&c.name),
                toml_str(&words[0])
            );
        }
    }
}

/// Column sets that may be a row's natural key, most likely first: an id column alone, then
/// with a column that tells apart the rows one id can have (a leg's sequence number, the
/// phone line, the channel, the start time, the agent, the queue).
fn key_candidates(s: &Sample) -> Vec<Vec<String>> {
    let id_words = ["uniqueid", "call_id", "callid", "contact_id", "id"];
    let Some(id) = first_named(&s.columns, &id_words, |k| {
        !matches!(k, Kind::Empty | Kind::Words(_))
    }) else {
        return Vec::new();
    };
    let mut out = vec![vec![id.name.clone()]];
    let companions = [
        "sequence",
        "seq",
        "leg",
        "line",
        "dstchannel",
        "channel",
        "start",
        "time",
        "date",
        "agent",
        "queue",
    ];
    for w in companions {
        for c in &s.columns {
            let set = vec![id.name.clone(), c.name.clone()];
            // A talk time or a count is no part of a call's identity, however unique.
            let fits = match w {
                "start" | "time" | "date" => {
                    matches!(c.kind, Kind::Time(_) | Kind::Date(_) | Kind::TimeOfDay(_))
                }
                _ => !matches!(c.kind, Kind::Empty | Kind::Clock),
            };
            if c.name != id.name
                && c.name.to_ascii_lowercase().contains(w)
                && fits
                && !out.contains(&set)
            {
                out.push(set);
            }
        }
    }
    out
}

/// `key`, only for a column set unique over the whole sample; otherwise each row is its own
/// record (its place in its file), which never merges two rows.
fn key_guess(s: &Sample, source: &mut String) {
    const WHY: &str = "# A content key is needed only where exports overlap (a file that \
                       exports again rows an earlier\n# file held): rows with the same key are \
                       then one record. Without it, each row of each file\n# is one record, \
                       by its place in the file, and no two rows are ever merged.\n";
    let candidates = key_candidates(s);
    if candidates.is_empty() {
        let _ = write!(
            source,
            "{WHY}# No column looks like a call id: no key. If files overlap, name the columns \
             that tell every row\n# apart, e.g. key = \"{{call_id}}-{{line}}\"\n"
        );
        return;
    }
    let layout = match s.delimiter {
        Some(delimiter) => key::Layout::Delimited {
            delimiter,
            header: s.header,
        },
        None => key::Layout::Ndjson,
    };
    let names: Vec<String> = s.columns.iter().map(|c| c.name.clone()).collect();
    let template = |cols: &[String]| {
        cols.iter()
            .map(|c| format!("{{{c}}}"))
            .collect::<Vec<_>>()
            .join("-")
    };
    let checked = match key::check(&s.path, &layout, &names, &candidates) {
        Ok(c) => c,
        Err(e) => {
            let _ = write!(
                source,
                "{WHY}# No key: a key is proposed only when it is unique over the whole \
                 sample, and {e}.\n# Check one yourself with `preview`, e.g. key = {}\n",
                toml_str(&template(&candidates[0]))
            );
            return;
        }
    };
    if let Some(v) = checked.verdicts.iter().find(|v| v.holds()) {
        let _ = write!(
            source,
            "{WHY}# {} is unique in all {} row(s) of the sample{}.\nkey = {}\n",
            v.columns
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" with "),
            checked.rows,
            if v.repeats > 0 {
                format!(" ({} row(s) exported twice are one record)", v.repeats)
            } else {
                String::new()
            },
            toml_str(&template(&v.columns))
        );
        return;
    }
    let _ = write!(
        source,
        "{WHY}# No key: no column set tried is unique over the {} row(s) of the sample, and \
         a key that is not\n# would merge distinct calls into one record:\n",
        checked.rows
    );
    for v in &checked.verdicts {
        let mut why = Vec::new();
        if v.conflicts > 0 {
            why.push(format!(
                "{} row(s) share a key with another row of other content (e.g. {})",
                v.conflicts,
                v.example.as_deref().unwrap_or("")
            ));
        }
        if v.empty > 0 {
            why.push(format!("{} row(s) have an empty key column", v.empty));
        }
        let _ = writeln!(source, "#   {}: {}", template(&v.columns), why.join("; "));
    }
}

/// The preview of the first rows, as comments.
pub(super) fn preview_comments(s: &Sample, config: &str) -> String {
    let mut out = format!(
        "\n# Preview of the first rows of {} ({} row(s) read):\n",
        s.path.display(),
        s.rows
    );
    let dir = s.path.parent().unwrap_or(Path::new("."));
    let parsed = crate::config::Config::parse(config, &dir.join("init.toml"));
    let text = match parsed {
        Err(e) => format!(
            "(no preview until the TODOs are filled in: {})",
            e.problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Ok(config) => {
            let source = &config.sources[0];
            match &source.kind {
                crate::config::SourceKind::Files(files) => {
                    match crate::preview::preview_file(source, files, &s.path, 10) {
                        Ok(p) => p.render(),
                        Err(e) => format!("(no preview: {e})"),
                    }
                }
                _ => String::new(),
            }
        }
    };
    for line in text.lines() {
        let _ = writeln!(out, "#   {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_words_are_told_from_the_others() {
        for w in ["ANSWERED", "AGENT", "handled", "Y", "ja"] {
            assert!(handled_word(w), "{w}");
        }
        for w in [
            "NO ANSWER",
            "BUSY",
            "FAILED",
            "HANG",
            "PHANTOM",
            "unanswered",
            "N",
        ] {
            assert!(!handled_word(w), "{w}");
        }
    }

    #[test]
    fn columns_as_expression_variables() {
        assert_eq!(variable("talk_time"), "talk_time");
        assert_eq!(variable("Talk Time"), "row['Talk Time']");
    }
}
