//! A small client of an agent's HTTP API, used by the CLI verbs (and by tests).

pub use gateway::client::http::{Client, Response, encode, encode_segment};
