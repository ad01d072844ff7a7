//! NDJSON: the line splitter reads a file in pieces exactly as in one, and any line, valid
//! JSON or not, is accepted or refused by the API schema check without a panic.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ndjson_in_pieces(data));
