//! Asterisk's queue_log: any lines, in any order, are parsed or refused and run through the
//! call and agent tracker without a panic, and the tracker's saved state (its cursor in the
//! outbox) reads back to the same tracker.
#![no_main]

use injixo_sync::normalize::queue_log::{Tracker, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut tracker = Tracker::default();
    for line in text.lines() {
        if let Ok(l) = parse(line) {
            let out = tracker.apply(&l);
            if let Some(call) = out.call {
                assert!(call.duration.is_finite() && call.duration >= 0.0, "{call:?}");
            }
        }
        let saved = serde_json::to_string(&tracker).unwrap();
        let back: Tracker = serde_json::from_str(&saved).unwrap();
        assert_eq!(back, tracker);
    }
});
