//! The configuration loader: any text is a configuration or a list of problems that names
//! the file, never a panic.
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_loader(data));
