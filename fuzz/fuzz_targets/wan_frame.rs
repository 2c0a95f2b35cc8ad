//! The request of an incoming WAN stream: the kind byte, then an RPC (JSON) or a gossip
//! stream for a plaintext and an encrypted pool. A decoded RPC must encode back to
//! itself; a pool's answer must be a frame its peer can read.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wan::fuzzing::{Stream, stream};

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    match runtime.block_on(stream(data)) {
        Stream::Rpc {
            round_trips,
            request,
        } => {
            assert!(round_trips, "the request does not round-trip: {request:?}");
        }
        Stream::Gossip(answers) => {
            let plaintext = &answers.plaintext;
            assert!(
                runtime.block_on(gossip::fuzzing::answer_is_well_formed(plaintext, false)),
                "plaintext answer {plaintext:?}"
            );
            let encrypted = &answers.encrypted;
            assert!(
                runtime.block_on(gossip::fuzzing::answer_is_well_formed(encrypted, true)),
                "encrypted answer {encrypted:?}"
            );
        }
        Stream::Unreadable | Stream::Unknown => {}
    }
});
