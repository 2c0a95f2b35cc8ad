//! One request body, parsed by every HTTP write endpoint (catalog register and
//! deregister, agent service and check register, check update, prepared query create
//! and update, keyring key changes, snapshot restore, KV transactions, session create). A refused body must be a 400; an
//! accepted catalog change must survive the Raft log's encoding and apply to a catalog
//! without panicking, and a restored catalog must answer every query and pass as a
//! snapshot itself.
#![no_main]

use api::fuzzing::{Endpoint, http_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for endpoint in Endpoint::ALL {
        match http_body(endpoint, data) {
            Ok(accepted) => assert!(
                accepted.log_round_trips,
                "{endpoint:?}: the command does not round-trip: {:?}",
                accepted.command
            ),
            Err(refused) => assert!(
                endpoint.refusal_statuses().contains(&refused.status),
                "{endpoint:?} refused a body with {}: {}",
                refused.status, refused.message
            ),
        }
    }
});
