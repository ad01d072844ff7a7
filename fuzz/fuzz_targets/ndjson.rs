//! NDJSON: the line splitter reads a file in pieces exactly as in one, and any line, valid
//! JSON or not, is accepted or refused by the API schema check without a panic.
#![no_main]

use injixo_sync::normalize::schema::normalize_json;
use injixo_sync::sources::parse::{consumed_lines, lines};
use injixo_sync::types::Emits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, buf)) = data.split_first() else {
        return;
    };
    let cut = if buf.is_empty() {
        0
    } else {
        usize::from(head >> 1) * buf.len() / 127
    };
    let whole: Vec<_> = lines(buf, true).iter().map(|i| (i.start, i.value)).collect();
    let stop = consumed_lines(&buf[..cut], false);
    assert!(stop <= cut);
    let pieces: Vec<_> = lines(&buf[..stop], false)
        .iter()
        .map(|i| (i.start, i.value))
        .chain(lines(&buf[stop..], true).iter().map(|i| (stop + i.start, i.value)))
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
});
