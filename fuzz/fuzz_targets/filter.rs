//! `?filter=` expressions: parsed and checked against the selectors of the health and
//! catalog service endpoints, and when accepted, evaluated against a fixed entry. A
//! refusal must carry Consul's prefix; nothing may panic or run away.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = api::fuzzing::filter(text) {
        assert!(
            e.starts_with("Failed to create boolean expression evaluator: "),
            "{e}"
        );
    }
});
