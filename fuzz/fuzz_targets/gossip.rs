//! Gossip from a peer: a received packet, opened with the test keyring (plaintext accepted
//! too), decoded and handled by a one-member engine, whose timers then run; every packet
//! the engine sends afterwards must decode. Then the same bytes as a gossip stream to a
//! plaintext and an encrypted pool (the chunk reader on arbitrary bytes), and, since a
//! fuzzer cannot forge a chunk's tag, as the payload of a frame sealed with the test key
//! (first byte: the frame's kind), so that what follows authentication is reached too.
//! Every answer must be a frame the asking member can read.
#![no_main]

use std::sync::OnceLock;

use gossip::fuzzing::{
    FrameAnswers, Packet, answer_is_well_formed, gossip_packet, gossip_stream, sealed_frame,
    sent_packet_decodes,
};
use libfuzzer_sys::fuzz_target;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn check(runtime: &tokio::runtime::Runtime, answers: &FrameAnswers) {
    let plaintext = &answers.plaintext;
    assert!(
        runtime.block_on(answer_is_well_formed(plaintext, false)),
        "plaintext answer {plaintext:?}"
    );
    let encrypted = &answers.encrypted;
    assert!(
        runtime.block_on(answer_is_well_formed(encrypted, true)),
        "encrypted answer {encrypted:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Packet::Handled { sent } = gossip_packet(data) {
        for packet in &sent {
            assert!(
                sent_packet_decodes(packet),
                "the engine sent an undecodable packet"
            );
        }
    }
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    check(runtime, &runtime.block_on(gossip_stream(data)));
    if let Some((&kind, payload)) = data.split_first()
        && let Some(frame) = sealed_frame(kind, payload)
    {
        check(runtime, &runtime.block_on(gossip_stream(&frame)));
    }
});
