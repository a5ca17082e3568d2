//! The MQTT decoder, every version: a byte stream is decoded packet by
//! packet as a connection would (the version fixed by the first byte of the
//! input, or by the CONNECT). No panic, no allocation beyond the limit, and
//! every packet decoded encodes to bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use emqx_mqtt::codec::{decode, encode, encoded_len};
use emqx_mqtt::packet::{Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut version = match sel % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V3),
        2 => Some(ProtocolVersion::V4),
        _ => Some(ProtocolVersion::V5),
    };
    let mut buf = BytesMut::from(rest);
    for _ in 0..256 {
        match decode(&mut buf, version, MAX_PACKET) {
            Ok(Some(p)) => {
                if let Packet::Connect(c) = &p {
                    version = Some(c.protocol);
                }
                round_trip(&p, version.unwrap_or(ProtocolVersion::V4));
            }
            Ok(None) | Err(_) => break,
        }
    }
});

fn round_trip(p: &Packet, v: ProtocolVersion) {
    if v != ProtocolVersion::V5 && matches!(p, Packet::Disconnect(_) | Packet::Auth(_)) {
        return; // the encoder writes these as nothing before MQTT 5
    }
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    assert_eq!(out.len(), encoded_len(p, v), "encoded_len disagrees: {p:?}");
    let again_version = match p {
        Packet::Connect(_) => None,
        _ => Some(v),
    };
    let back = decode(&mut out, again_version, usize::MAX)
        .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}: {p:?}"))
        .unwrap_or_else(|| panic!("our own encoding is incomplete: {p:?}"));
    assert_eq!(&back, p, "decode(encode(p)) != p");
    assert!(out.is_empty(), "bytes left after our own packet");
}
