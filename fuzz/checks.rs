//! The properties the fuzz targets check, as plain functions of the input bytes: the
//! libFuzzer targets (`fuzz_targets/`) call them, and `tests/fuzz_corpus.rs` replays the
//! kept corpus and the seeds through them in every test run.

use injixo_sync::config::Config;
use injixo_sync::normalize::queue_log::{Tracker, parse};
use injixo_sync::normalize::schema::normalize_json;
use injixo_sync::sources::parse::{Charset, Fields, csv};
use injixo_sync::sources::parse::{consumed_lines, lines};
use injixo_sync::types::Emits;

/// The CSV splitter reads a file in pieces: what it finds in a prefix (a file still being
/// written), followed by what it finds from where it stopped, is what it finds in the whole.
pub fn csv_in_pieces(data: &[u8]) {
    let Some((&head, buf)) = data.split_first() else {
        return;
    };
    let delimiter = [b',', b';', b'\t', b'|'][usize::from(head & 3)];
    let cut = if buf.is_empty() {
        0
    } else {
        usize::from(head >> 2) * buf.len() / 63
    };
    let (whole, consumed) = csv(buf, delimiter, Charset::Utf8, true, usize::MAX);
    assert_eq!(consumed, buf.len(), "a complete file is consumed whole");
    let (first, stop) = csv(&buf[..cut], delimiter, Charset::Utf8, false, usize::MAX);
    assert!(stop <= cut);
    let (rest, _) = csv(&buf[stop..], delimiter, Charset::Utf8, true, usize::MAX);
    let pieces: Vec<_> = first
        .iter()
        .map(|i| (i.start, i.end, i.value.clone()))
        .chain(
            rest.iter()
                .map(|i| (stop + i.start, stop + i.end, i.value.clone())),
        )
        .collect();
    let all: Vec<_> = whole
        .iter()
        .map(|i| (i.start, i.end, i.value.clone()))
        .collect();
    for w in all.windows(2) {
        assert!(w[0].1 <= w[1].0, "records do not overlap");
    }
    // Where a piece ends may differ by a line terminator the next read skips; where each
    // record starts, and what it holds, may not.
    type Read = (usize, usize, Fields);
    let values = |v: &[Read]| -> Vec<(usize, Fields)> {
        v.iter().map(|(s, _, x)| (*s, x.clone())).collect()
    };
    assert_eq!(values(&pieces), values(&all), "read in two pieces at {cut}");
}

/// NDJSON: the line splitter reads a file in pieces exactly as in one, and any line, valid
/// JSON or not, is accepted or refused by the API schema check without a panic.
pub fn ndjson_in_pieces(data: &[u8]) {
    let Some((&head, buf)) = data.split_first() else {
        return;
    };
    let cut = if buf.is_empty() {
        0
    } else {
        usize::from(head >> 1) * buf.len() / 127
    };
    let whole: Vec<_> = lines(buf, true)
        .iter()
        .map(|i| (i.start, i.value))
        .collect();
    let stop = consumed_lines(&buf[..cut], false);
    assert!(stop <= cut);
    let pieces: Vec<_> = lines(&buf[..stop], false)
        .iter()
        .map(|i| (i.start, i.value))
        .chain(
            lines(&buf[stop..], true)
                .iter()
                .map(|i| (stop + i.start, i.value)),
        )
        .collect();
    assert_eq!(pieces, whole, "read in two pieces at {cut}");
    let emits = if head & 1 == 0 {
        Emits::ContactEvents
    } else {
        Emits::AgentStatuses
    };
    for (_, line) in whole {
        if let Ok(text) = std::str::from_utf8(line)
            && let Ok(normal) = normalize_json(emits, text)
        {
            // What is accepted is valid JSON, and stays accepted as it is.
            let again = normalize_json(emits, &normal).expect("a normalized record is accepted");
            assert_eq!(again, normal);
        }
    }
}

/// Asterisk's queue_log: any lines, in any order, are parsed or refused and run through the
/// call and agent tracker without a panic, and the tracker's saved state (its cursor in the
/// outbox) reads back to the same tracker.
pub fn queue_log_tracker(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut tracker = Tracker::default();
    for line in text.lines() {
        if let Ok(l) = parse(line) {
            let out = tracker.apply(&l);
            if let Some(call) = out.call {
                assert!(
                    call.duration.is_finite() && call.duration >= 0.0,
                    "{call:?}"
                );
            }
        }
        let saved = serde_json::to_string(&tracker).unwrap();
        let back: Tracker = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, tracker);
    }
}

/// The configuration loader: any text is a configuration or a list of problems that names
/// the file, never a panic.
pub fn config_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
}
