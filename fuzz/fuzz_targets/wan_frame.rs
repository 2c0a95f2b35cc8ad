//! The request of an incoming WAN stream: the kind byte, then an RPC (JSON) or a gossip
//! frame for a plaintext and an encrypted pool. A decoded RPC must encode back to
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
            if let Some(a) = &answers.plaintext {
                assert!(
                    lan::fuzzing::answer_is_well_formed(a, false),
                    "plaintext answer {a:?}"
                );
            }
            if let Some(a) = &answers.encrypted {
                assert!(
                    lan::fuzzing::answer_is_well_formed(a, true),
                    "encrypted answer {a:?}"
                );
            }
        }
        Stream::Unreadable | Stream::Unknown => {}
    }
});
