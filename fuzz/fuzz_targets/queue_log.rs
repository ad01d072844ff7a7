//! Asterisk's queue_log: any lines, in any order, are parsed or refused and run through the
//! call and agent tracker without a panic, and the tracker's saved state (its cursor in the
//! outbox) reads back to the same tracker.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::queue_log_tracker(data));
