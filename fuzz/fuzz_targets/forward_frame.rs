//! Frames of the forwarding channel (publishes between nodes), after the
//! handshake: no panic, no allocation beyond the frame, and every frame
//! that decodes re-encodes to one that decodes to the same messages.
#![no_main]

use bytes::{Bytes, BytesMut};
use emqx_actors::forward::wire::{begin_frame, decode_frame, encode_message_to, finish_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode_frame(Bytes::copy_from_slice(data)) else {
        return;
    };
    let got = frame.msgs;
    let mut b = BytesMut::new();
    begin_frame(&mut b, frame.stream, frame.first_seq);
    for (m, shared) in &got {
        encode_message_to(&mut b, m, shared.as_ref());
    }
    finish_frame(&mut b, got.len() as u32);
    // The length prefix is not part of what decode_frame reads.
    let again = decode_frame(b.freeze().slice(4..)).expect("our own frame decodes");
    assert_eq!((again.stream, again.first_seq), (frame.stream, frame.first_seq));
    let again = again.msgs;
    assert_eq!(again.len(), got.len());
    for ((a, sa), (b, sb)) in again.iter().zip(&got) {
        let mut a = a.clone();
        a.id = b.id; // a fresh id per decoded message
        assert_eq!(&a, b, "a message changed on its way round");
        assert_eq!(sa, sb);
    }
});
