//! The configuration loader: any text is a configuration or a list of problems that names
//! the file, never a panic.
#![no_main]

use injixo_sync::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
});
