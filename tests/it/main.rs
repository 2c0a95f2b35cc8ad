//! End-to-end tests of whole agents: in-process agents on OS-chosen ports (`http`,
//! `dns`), and the real binary as a process driven by its own CLI, `dig` and a Consul
//! client library written by others (`process`).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    missing_docs,
    unreachable_pub
)]

mod acl;
mod acl_cli;
mod acl_table;
mod anti_entropy;
mod autopilot;
mod client;
mod cluster;
mod disk;
mod dns;
mod event;
mod faults;
mod filter;
mod gateway;
mod hostile;
mod http;
mod https;
mod jepsen;
mod kv;
mod limits;
mod maint;
mod metrics;
mod monitor;
mod process;
mod raft;
mod recovery;
mod support;
mod tls;
mod ui;
mod wan;
mod watch;
