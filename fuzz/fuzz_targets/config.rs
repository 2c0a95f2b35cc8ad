//! A config file's text, parsed and checked on its own and on top of the `-dev` preset,
//! as JSON and as HCL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proconsul::config::Format;

fuzz_target!(|data: &[u8]| {
    // The agent reads config files as UTF-8 text; other bytes never reach the parser.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = proconsul::fuzzing::config(text, Format::Json);
        let _ = proconsul::fuzzing::config(text, Format::Hcl);
    }
});
