//! Entry points for the server-port fuzz target in `fuzz/` and for its property tests:
//! bytes as a peer sends them to a server's RPC port, through the frame reader, the
//! request decoder and Raft's message checks to a real single-server Raft. Not part of
//! the API; every function returns normally for any input, and a panic in one is a bug
//! in the code it calls. (The gossip targets' entry points are in `gossip::fuzzing`.)

mod server_port;

pub use server_port::{SERVER_ID, ServerPort, server_port, server_port_frames};
