//! Decoding: fixed header, then the body of each of the 15 packet types.

use super::error::DecodeError;
use super::props::{self, Owner};
use super::reader::{malformed, protocol, Reader};
use crate::packet::*;
use bytes::{Buf, BytesMut};

/// Parses the remaining length that follows the first byte. `Ok(None)` when
/// more bytes are needed; otherwise (value, number of length bytes).
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = bytes.get(i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(malformed("remaining length longer than 4 bytes"))
}

/// Checks the packet type and the flag bits of the first byte
/// (MQTT 3.1.1 2.2.2, MQTT 5.0 2.1.3).
fn check_first_byte(
    ptype: u8,
    flags: u8,
    version: Option<ProtocolVersion>,
) -> Result<(), DecodeError> {
    if ptype == 0 {
        return Err(malformed("reserved packet type 0"));
    }
    if ptype != 1 && version.is_none() {
        return Err(protocol("first packet must be CONNECT"));
    }
    if ptype == 15 && version != Some(ProtocolVersion::V5) {
        return Err(malformed("AUTH packet on an MQTT 3.x connection"));
    }
    match ptype {
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(malformed("PUBLISH with QoS 0 and DUP set"));
            }
        }
        6 | 8 | 10 => {
            // MQTT 3.1 marks a retried PUBREL, SUBSCRIBE or UNSUBSCRIBE
            // with DUP; the fixed 0010 is MQTT 3.1.1's and 5.0's rule.
            let checked = if version == Some(ProtocolVersion::V3) {
                flags & !0x08
            } else {
                flags
            };
            if checked != 0b0010 {
                return Err(malformed(format!(
                    "packet type {ptype} with fixed header flags 0x{flags:X}, expected 0x2"
                )));
            }
        }
        _ => {
            if flags != 0 {
                return Err(malformed(format!(
                    "packet type {ptype} with fixed header flags 0x{flags:X}, expected 0"
                )));
            }
        }
    }
    Ok(())
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` without consuming anything while the packet is
/// incomplete. `version` is `None` until CONNECT was decoded; CONNECT is
/// always parsed according to its own protocol name and level.
/// `max_packet_size` bounds the whole packet (fixed header included) and is
/// checked as soon as the remaining length is known.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let ptype = first >> 4;
    let flags = first & 0x0F;
    check_first_byte(ptype, flags, version)?;
    let Some((remaining, len_bytes)) = remaining_length(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let header = 1 + len_bytes;
    let total = header + remaining;
    if total > max_packet_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header);
    let mut r = Reader::new(frame);
    body(ptype, flags, version, &mut r).map(Some)
}

fn body(
    ptype: u8,
    flags: u8,
    version: Option<ProtocolVersion>,
    r: &mut Reader,
) -> Result<Packet, DecodeError> {
    if ptype == 1 {
        return connect(r).map(|c| Packet::Connect(Box::new(c)));
    }
    let Some(v) = version else {
        return Err(protocol("first packet must be CONNECT"));
    };
    let v5 = v == ProtocolVersion::V5;
    let p = match ptype {
        2 => Packet::ConnAck(connack(r, v)?),
        3 => Packet::Publish(publish(r, flags, v5)?),
        4 => Packet::PubAck(pub_resp(r, v5, "PUBACK")?),
        5 => Packet::PubRec(pub_resp(r, v5, "PUBREC")?),
        6 => Packet::PubRel(pub_resp(r, v5, "PUBREL")?),
        7 => Packet::PubComp(pub_resp(r, v5, "PUBCOMP")?),
        8 => Packet::Subscribe(subscribe(r, v5)?),
        9 => Packet::SubAck(suback(r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(r, v5)?),
        11 => Packet::UnsubAck(unsuback(r, v5)?),
        12 => {
            r.finish("PINGREQ")?;
            Packet::PingReq
        }
        13 => {
            r.finish("PINGRESP")?;
            Packet::PingResp
        }
        14 => {
            let (reason_code, properties) =
                reason_and_props(r, v5, Owner::Disconnect, "DISCONNECT")?;
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        }
        15 => {
            let (reason_code, properties) = reason_and_props(r, v5, Owner::Auth, "AUTH")?;
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        }
        _ => return Err(malformed(format!("unknown packet type {ptype}"))),
    };
    Ok(p)
}

fn v5_props(r: &mut Reader, v5: bool, ctx: Owner) -> Result<Properties, DecodeError> {
    if v5 {
        props::read(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn packet_id(r: &mut Reader, what: &str) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(malformed(format!("{what} with packet identifier 0"))),
        id => Ok(id),
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol_name = String::from_utf8_lossy(&name).into_owned();
    let protocol = match (protocol_name.as_str(), level) {
        ("MQIsdp", 3) => ProtocolVersion::V3,
        ("MQTT", 4) => ProtocolVersion::V4,
        ("MQTT", 5) => ProtocolVersion::V5,
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name: protocol_name,
                level,
            })
        }
    };
    let v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed("CONNECT reserved flag is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let will_qos = QoS::from_u8(will_qos_bits).ok_or_else(|| malformed("CONNECT will QoS 3"))?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(malformed(
            "CONNECT will QoS or will retain set without will flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = v5_props(r, v5, Owner::Connect)?;
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = v5_props(r, v5, Owner::Will)?;
        let topic = r.string("will topic")?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish("CONNECT")?;
    Ok(Connect {
        protocol,
        protocol_name,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(malformed("CONNACK reserved acknowledge flags are set"));
    }
    let code = r.u8()?;
    let (reason_code, properties) = if v == ProtocolVersion::V5 {
        (code, props::read(r, Owner::ConnAck)?)
    } else {
        let rc = match code {
            0 => reason::SUCCESS,
            1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
            2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
            3 => reason::SERVER_UNAVAILABLE,
            4 => reason::BAD_USER_NAME_OR_PASSWORD,
            5 => reason::NOT_AUTHORIZED,
            _ => return Err(malformed(format!("CONNACK return code {code}"))),
        };
        (rc, Properties::default())
    };
    r.finish("CONNACK")?;
    // 3.1.1 MQTT-3.2.2-4, 5.0 MQTT-3.2.2-6: a refusal says no session.
    if ack_flags & 0x01 != 0 && reason_code != reason::SUCCESS {
        return Err(protocol(
            "CONNACK refusing the connection with Session Present set",
        ));
    }
    Ok(ConnAck {
        // MQTT 3.1 has no Session Present flag: that byte is reserved.
        session_present: ack_flags & 0x01 != 0 && v != ProtocolVersion::V3,
        reason_code,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or_else(|| malformed("PUBLISH with QoS 3"))?;
    let topic = r.string("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r, "PUBLISH")?)
    };
    let properties = v5_props(r, v5, Owner::Publish)?;
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. On v5 a remaining length of 2 means
/// reason 0 and no properties, 3 means a reason code and no properties.
fn pub_resp(r: &mut Reader, v5: bool, what: &str) -> Result<PubAckLike, DecodeError> {
    let packet_id = r.u16()?;
    let mut ack = PubAckLike::new(packet_id, reason::SUCCESS);
    if v5 && r.remaining() > 0 {
        ack.reason_code = r.u8()?;
        if r.remaining() > 0 {
            ack.properties = props::read(r, Owner::PubResp)?;
        }
    }
    r.finish(what)?;
    Ok(ack)
}

/// DISCONNECT and AUTH: on 3.x (DISCONNECT only) the body is empty; on v5
/// an empty body means reason 0, and one byte means a reason code without
/// properties.
fn reason_and_props(
    r: &mut Reader,
    v5: bool,
    ctx: Owner,
    what: &str,
) -> Result<(u8, Properties), DecodeError> {
    let mut reason_code = reason::SUCCESS;
    let mut properties = Properties::default();
    if v5 && r.remaining() > 0 {
        reason_code = r.u8()?;
        if r.remaining() > 0 {
            properties = props::read(r, ctx)?;
        }
    }
    r.finish(what)?;
    Ok((reason_code, properties))
}

fn subscription_options(o: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    if v5 {
        if o & 0xC0 != 0 {
            return Err(malformed("SUBSCRIBE options reserved bits are set"));
        }
    } else if o & 0xFC != 0 {
        return Err(malformed("SUBSCRIBE requested QoS reserved bits are set"));
    }
    let qos = QoS::from_u8(o & 0x03).ok_or_else(|| malformed("SUBSCRIBE with QoS 3"))?;
    let retain_handling = match (o >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(malformed("SUBSCRIBE with retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: o & 0x04 != 0,
        retain_as_published: o & 0x08 != 0,
        retain_handling,
    })
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r, "SUBSCRIBE")?;
    let properties = v5_props(r, v5, Owner::Subscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// The SUBACK codes each version defines (3.1.1 3.9.3, 5.0 3.9.3): a
/// granted QoS, or a failure.
const SUBACK_CODES_V4: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const SUBACK_CODES_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r, "SUBACK")?;
    let properties = v5_props(r, v5, Owner::SubAck)?;
    let reason_codes = r.rest().to_vec();
    if reason_codes.is_empty() {
        return Err(protocol("SUBACK without a reason code"));
    }
    let known = if v5 { SUBACK_CODES_V5 } else { SUBACK_CODES_V4 };
    if let Some(c) = reason_codes.iter().find(|c| !known.contains(c)) {
        return Err(malformed(format!(
            "SUBACK with the reserved code 0x{c:02X}"
        )));
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r, "UNSUBSCRIBE")?;
    let properties = v5_props(r, v5, Owner::Unsubscribe)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.u16()?;
    let (properties, reason_codes) = if v5 {
        let p = props::read(r, Owner::UnsubAck)?;
        (p, r.rest().to_vec())
    } else {
        r.finish("UNSUBACK")?;
        (Properties::default(), Vec::new())
    };
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes,
    })
}
