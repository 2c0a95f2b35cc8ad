//! A raw DNS request (UDP datagram or TCP message) answered by a `-dev` agent's DNS
//! request handling, with a few services and a prepared query registered. Every answer
//! must decode, carry the request's ID and, over UDP, fit the size limit.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proconsul::fuzzing::DnsAgent;

static AGENT: OnceLock<DnsAgent> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let agent = AGENT.get_or_init(|| DnsAgent::start().expect("a -dev agent starts"));
    if let Err(e) = agent.check(data) {
        panic!("bad DNS answer: {e}");
    }
});
