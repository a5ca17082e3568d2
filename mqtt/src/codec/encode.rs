//! Encoding. Every packet body is written through a [`Sink`]; running the
//! same code against a [`Counter`] gives the exact size, so `encoded_len`
//! and `encode` cannot disagree.

use super::props::{self, Owner};
use super::sink::{varint_len, Counter, Sink};
use crate::packet::*;
use bytes::BytesMut;

/// The 3.x CONNACK return code for a v5 CONNACK reason code.
pub(crate) fn connack_return_code(rc: u8) -> u8 {
    match rc {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        // Server side trouble: "Server unavailable".
        reason::UNSPECIFIED_ERROR
        | reason::IMPLEMENTATION_SPECIFIC_ERROR
        | reason::SERVER_UNAVAILABLE
        | reason::SERVER_BUSY
        | reason::SERVER_SHUTTING_DOWN
        | reason::QUOTA_EXCEEDED
        | reason::USE_ANOTHER_SERVER
        | reason::SERVER_MOVED
        | reason::CONNECTION_RATE_EXCEEDED => 3,
        reason::BAD_USER_NAME_OR_PASSWORD => 4,
        // NOT_AUTHORIZED, BAD_AUTHENTICATION_METHOD, BANNED and any other
        // refusal: "Not authorized".
        _ => 5,
    }
}

/// The 3.x SUBACK return code for a v5 SUBACK reason code.
fn suback_return_code(rc: u8) -> u8 {
    match rc {
        0..=2 => rc,
        _ => 0x80,
    }
}

/// First byte of the fixed header; `None` for packets that do not exist on
/// the wire for `version` (DISCONNECT and AUTH on 3.x).
fn first_byte(packet: &Packet, version: ProtocolVersion) -> Option<u8> {
    let v5 = version == ProtocolVersion::V5;
    Some(match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            let qos = p.qos as u8;
            let dup = p.dup && qos > 0;
            0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) if v5 => 0xE0,
        Packet::Auth(_) if v5 => 0xF0,
        Packet::Disconnect(_) | Packet::Auth(_) => return None,
    })
}

fn body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) {
    let v5 = version == ProtocolVersion::V5;
    match packet {
        Packet::Connect(c) => connect(c, version, s),
        Packet::ConnAck(a) => {
            let session_present = a.session_present
                && a.reason_code == reason::SUCCESS
                && version != ProtocolVersion::V3;
            s.put_u8(u8::from(session_present));
            if v5 {
                s.put_u8(a.reason_code);
                props::write(&a.properties, Owner::ConnAck, s);
            } else {
                s.put_u8(connack_return_code(a.reason_code));
            }
        }
        Packet::Publish(p) => {
            s.put_str(&p.topic);
            if p.qos != QoS::AtMostOnce {
                s.put_u16(p.packet_id.unwrap_or(0));
            }
            if v5 {
                props::write(&p.properties, Owner::Publish, s);
            }
            s.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            s.put_u16(a.packet_id);
            if v5 {
                short_form(a.reason_code, &a.properties, Owner::PubResp, s);
            }
        }
        Packet::Subscribe(sub) => {
            s.put_u16(sub.packet_id);
            if v5 {
                props::write(&sub.properties, Owner::Subscribe, s);
            }
            for (filter, o) in &sub.filters {
                s.put_str(filter);
                let mut b = o.qos as u8;
                if v5 {
                    b |= u8::from(o.no_local) << 2;
                    b |= u8::from(o.retain_as_published) << 3;
                    b |= (o.retain_handling as u8) << 4;
                }
                s.put_u8(b);
            }
        }
        Packet::SubAck(a) => {
            s.put_u16(a.packet_id);
            if v5 {
                props::write(&a.properties, Owner::SubAck, s);
                s.put_slice(&a.reason_codes);
            } else {
                for rc in &a.reason_codes {
                    s.put_u8(suback_return_code(*rc));
                }
            }
        }
        Packet::Unsubscribe(u) => {
            s.put_u16(u.packet_id);
            if v5 {
                props::write(&u.properties, Owner::Unsubscribe, s);
            }
            for filter in &u.filters {
                s.put_str(filter);
            }
        }
        Packet::UnsubAck(a) => {
            s.put_u16(a.packet_id);
            if v5 {
                props::write(&a.properties, Owner::UnsubAck, s);
                s.put_slice(&a.reason_codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                short_form(d.reason_code, &d.properties, Owner::Disconnect, s);
            }
        }
        Packet::Auth(a) => {
            if v5 {
                short_form(a.reason_code, &a.properties, Owner::Auth, s);
            }
        }
    }
}

/// Reason code plus properties, using the v5 short forms: nothing when the
/// reason is 0 and there are no properties, the reason alone when there are
/// no properties.
fn short_form<S: Sink>(rc: u8, p: &Properties, ctx: Owner, s: &mut S) {
    if props::len(p, ctx) == 0 {
        if rc != reason::SUCCESS {
            s.put_u8(rc);
        }
    } else {
        s.put_u8(rc);
        props::write(p, ctx, s);
    }
}

fn connect<S: Sink>(c: &Connect, version: ProtocolVersion, s: &mut S) {
    let v5 = version == ProtocolVersion::V5;
    s.put_str(if version == ProtocolVersion::V3 {
        "MQIsdp"
    } else {
        "MQTT"
    });
    s.put_u8(version.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        props::write(&c.properties, Owner::Connect, s);
    }
    s.put_str(&c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            props::write(&w.properties, Owner::Will, s);
        }
        s.put_str(&w.topic);
        s.put_bin(&w.payload);
    }
    if let Some(u) = &c.username {
        s.put_str(u);
    }
    if let Some(p) = &c.password {
        s.put_bin(p);
    }
}

fn body_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut c = Counter::default();
    body(packet, version, &mut c);
    c.0
}

/// Appends the wire form of `packet` for `version` to `buf`.
///
/// On MQTT 3.x, `Disconnect` and `Auth` write nothing (the server never
/// sends DISCONNECT before MQTT 5, and AUTH only exists in MQTT 5).
/// Properties are only written on v5, and only those allowed for the packet
/// type. A QoS > 0 PUBLISH without a packet id (a caller bug) is written with
/// id 0.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let Some(first) = first_byte(packet, version) else {
        return;
    };
    let len = body_len(packet, version);
    buf.reserve(1 + varint_len(len) + len);
    Sink::put_u8(buf, first);
    buf.put_varint(len);
    body(packet, version, buf);
}

/// The size `encode` would produce.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    if first_byte(packet, version).is_none() {
        return 0;
    }
    let len = body_len(packet, version);
    1 + varint_len(len) + len
}

/// Appends a QoS 0 PUBLISH that carries no properties (any MQTT 3.x
/// PUBLISH, or a 5.0 one with an empty property list) and returns its size.
/// This is the bulk of fan-out, so it skips building a [`Packet`] and the
/// sizing pass; it writes the same bytes as [`encode`].
pub fn encode_plain_qos0(
    topic: &str,
    payload: &[u8],
    retain: bool,
    v5: bool,
    buf: &mut BytesMut,
) -> usize {
    let len = plain_qos0_body_len(topic, payload, v5);
    let total = 1 + varint_len(len) + len;
    buf.reserve(total);
    Sink::put_u8(buf, 0x30 | u8::from(retain));
    buf.put_varint(len);
    buf.put_str(topic);
    if v5 {
        Sink::put_u8(buf, 0);
    }
    Sink::put_slice(buf, payload);
    total
}

/// The size [`encode_plain_qos0`] would write.
pub fn plain_qos0_len(topic: &str, payload: &[u8], v5: bool) -> usize {
    let len = plain_qos0_body_len(topic, payload, v5);
    1 + varint_len(len) + len
}

/// Topic with its length, the empty property list on 5.0, the payload.
fn plain_qos0_body_len(topic: &str, payload: &[u8], v5: bool) -> usize {
    2 + topic.len() + usize::from(v5) + payload.len()
}
