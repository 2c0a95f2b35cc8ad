//! A received gossip packet: opened with the test keyring (plaintext accepted too),
//! decoded and handled by a one-member engine, whose timers then run. Every packet the
//! engine sends afterwards must decode.
#![no_main]

use lan::fuzzing::{Packet, gossip_packet, sent_packet_decodes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Packet::Handled { sent } = gossip_packet(data) {
        for packet in &sent {
            assert!(
                sent_packet_decodes(packet),
                "the engine sent an undecodable packet"
            );
        }
    }
});
