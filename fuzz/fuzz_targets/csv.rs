//! The CSV splitter reads a file in pieces: what it finds in a prefix (a file still being
//! written), followed by what it finds from where it stopped, is what it finds in the whole.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::csv_in_pieces(data));
