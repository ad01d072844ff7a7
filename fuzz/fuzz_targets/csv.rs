//! The CSV splitter reads a file in pieces: what it finds in a prefix (a file still being
//! written), followed by what it finds from where it stopped, is what it finds in the whole.
#![no_main]

use injixo_sync::sources::parse::{Charset, csv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
        .chain(rest.iter().map(|i| (stop + i.start, stop + i.end, i.value.clone())))
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
    type Read = (usize, usize, Result<Vec<String>, String>);
    let values = |v: &[Read]| -> Vec<(usize, Result<Vec<String>, String>)> {
        v.iter().map(|(s, _, x)| (*s, x.clone())).collect()
    };
    assert_eq!(values(&pieces), values(&all), "read in two pieces at {cut}");
});
