//! A config file's text, parsed and checked on its own and on top of the `-dev` preset.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads config files as UTF-8 text; other bytes never reach the parser.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = proconsul::fuzzing::config(text);
    }
});
