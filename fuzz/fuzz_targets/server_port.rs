//! The bytes of one server-port connection from a stranger to a server whose port has
//! nothing to prove with: frames decoded, Raft's messages checked and, when they pass,
//! handled by a real single-server Raft. Nothing may panic, and nothing opens as a
//! sealed record without the session key.
#![no_main]

use std::sync::OnceLock;

use lan::fuzzing::server_port;
use libfuzzer_sys::fuzz_target;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    let out = runtime.block_on(server_port(data));
    assert_eq!(out.opened, 0, "a sealed record opened without its key");
    assert!(out.raft_alive, "raft stopped on what passed the checks");
});
