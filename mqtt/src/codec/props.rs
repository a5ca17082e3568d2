//! MQTT 5 properties (MQTT 5.0 section 2.2.2): which property may appear in
//! which packet, and reading/writing them.

use super::error::DecodeError;
use super::reader::Reader;
use super::sink::{Counter, Sink};
use crate::packet::Properties;

/// The packet (or will message) a property list belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Owner {
    fn name(self) -> &'static str {
        match self {
            Owner::Connect => "CONNECT",
            Owner::Will => "will properties",
            Owner::ConnAck => "CONNACK",
            Owner::Publish => "PUBLISH",
            Owner::PubResp => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Owner::Subscribe => "SUBSCRIBE",
            Owner::SubAck => "SUBACK",
            Owner::Unsubscribe => "UNSUBSCRIBE",
            Owner::UnsubAck => "UNSUBACK",
            Owner::Disconnect => "DISCONNECT",
            Owner::Auth => "AUTH",
        }
    }
}

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// `None` for an unknown property id, otherwise whether it may appear in `ctx`
/// (MQTT 5.0 table 2-4).
pub(crate) fn allowed(id: u8, ctx: Owner) -> Option<bool> {
    use Owner::*;
    let ok = match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => matches!(ctx, Publish | Will),
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, Publish | Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, Connect | ConnAck | Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(ctx, Connect | ConnAck | Auth),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == Connect,
        WILL_DELAY_INTERVAL => ctx == Will,
        SERVER_REFERENCE => matches!(ctx, ConnAck | Disconnect),
        REASON_STRING => matches!(
            ctx,
            ConnAck | PubResp | SubAck | UnsubAck | Disconnect | Auth
        ),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, Connect | ConnAck)
        }
        TOPIC_ALIAS => ctx == Publish,
        USER_PROPERTY => true,
        _ => return None,
    };
    Some(ok)
}

fn set<T>(slot: &mut Option<T>, value: T, id: u8, ctx: Owner) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(format!(
            "property 0x{id:02X} appears more than once in {}",
            ctx.name()
        )));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property whose only legal values are 0 and 1.
fn flag(r: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol(format!(
            "property 0x{id:02X} has value {v}, expected 0 or 1"
        )));
    }
    Ok(v)
}

fn non_zero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol(format!("property 0x{id:02X} is 0"))),
        v => Ok(v),
    }
}

/// Reads a property length and the property list that follows it.
pub(crate) fn read(r: &mut Reader, ctx: Owner) -> Result<Properties, DecodeError> {
    let len = r.varint()? as usize;
    let mut r = r.sub(len, "property list")?;
    let mut p = Properties::default();
    while r.remaining() > 0 {
        let raw = r.varint()?;
        let id = match u8::try_from(raw) {
            Ok(id) if allowed(id, ctx).is_some() => id,
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "unknown property identifier 0x{raw:02X}"
                )))
            }
        };
        if allowed(id, ctx) != Some(true) {
            return Err(DecodeError::Protocol(format!(
                "property 0x{id:02X} is not allowed in {}",
                ctx.name()
            )));
        }
        match id {
            PAYLOAD_FORMAT_INDICATOR => set(&mut p.payload_format_indicator, r.u8()?, id, ctx)?,
            MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, r.u32()?, id, ctx)?,
            CONTENT_TYPE => set(&mut p.content_type, r.string("content type")?, id, ctx)?,
            RESPONSE_TOPIC => set(&mut p.response_topic, r.string("response topic")?, id, ctx)?,
            CORRELATION_DATA => set(&mut p.correlation_data, r.binary()?, id, ctx)?,
            SUBSCRIPTION_IDENTIFIER => {
                let v = r.varint()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("subscription identifier 0".into()));
                }
                if ctx != Owner::Publish && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::Protocol(format!(
                        "subscription identifier appears more than once in {}",
                        ctx.name()
                    )));
                }
                p.subscription_identifiers.push(v);
            }
            SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, r.u32()?, id, ctx)?,
            ASSIGNED_CLIENT_IDENTIFIER => set(
                &mut p.assigned_client_identifier,
                r.string("assigned client identifier")?,
                id,
                ctx,
            )?,
            SERVER_KEEP_ALIVE => set(&mut p.server_keep_alive, r.u16()?, id, ctx)?,
            AUTHENTICATION_METHOD => set(
                &mut p.authentication_method,
                r.string("authentication method")?,
                id,
                ctx,
            )?,
            AUTHENTICATION_DATA => set(&mut p.authentication_data, r.binary()?, id, ctx)?,
            REQUEST_PROBLEM_INFORMATION => set(
                &mut p.request_problem_information,
                flag(&mut r, id)?,
                id,
                ctx,
            )?,
            WILL_DELAY_INTERVAL => set(&mut p.will_delay_interval, r.u32()?, id, ctx)?,
            REQUEST_RESPONSE_INFORMATION => set(
                &mut p.request_response_information,
                flag(&mut r, id)?,
                id,
                ctx,
            )?,
            RESPONSE_INFORMATION => set(
                &mut p.response_information,
                r.string("response information")?,
                id,
                ctx,
            )?,
            SERVER_REFERENCE => set(
                &mut p.server_reference,
                r.string("server reference")?,
                id,
                ctx,
            )?,
            REASON_STRING => set(&mut p.reason_string, r.string("reason string")?, id, ctx)?,
            RECEIVE_MAXIMUM => set(&mut p.receive_maximum, non_zero_u16(&mut r, id)?, id, ctx)?,
            TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, r.u16()?, id, ctx)?,
            TOPIC_ALIAS => set(&mut p.topic_alias, r.u16()?, id, ctx)?,
            MAXIMUM_QOS => set(&mut p.maximum_qos, flag(&mut r, id)?, id, ctx)?,
            RETAIN_AVAILABLE => set(&mut p.retain_available, flag(&mut r, id)?, id, ctx)?,
            USER_PROPERTY => {
                let k = r.string("user property name")?;
                let v = r.string("user property value")?;
                p.user_properties.push((k, v));
            }
            MAXIMUM_PACKET_SIZE => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::Protocol("maximum packet size 0".into()));
                }
                set(&mut p.maximum_packet_size, v, id, ctx)?
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => set(
                &mut p.wildcard_subscription_available,
                flag(&mut r, id)?,
                id,
                ctx,
            )?,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => set(
                &mut p.subscription_identifiers_available,
                flag(&mut r, id)?,
                id,
                ctx,
            )?,
            SHARED_SUBSCRIPTION_AVAILABLE => set(
                &mut p.shared_subscription_available,
                flag(&mut r, id)?,
                id,
                ctx,
            )?,
            // `allowed` returned Some for exactly the ids above.
            _ => {
                return Err(DecodeError::Malformed(format!(
                    "unknown property identifier 0x{id:02X}"
                )))
            }
        }
    }
    Ok(p)
}

/// Writes the properties of `p` that are allowed in `ctx`, without the
/// length prefix. Fields not allowed in `ctx` are skipped; in anything but
/// PUBLISH only the first subscription identifier is written.
fn write_items<S: Sink>(p: &Properties, ctx: Owner, s: &mut S) {
    let ok = |id: u8| allowed(id, ctx) == Some(true);
    macro_rules! prop {
        ($id:expr, $field:expr, $put:ident) => {
            if ok($id) {
                if let Some(v) = &$field {
                    s.put_u8($id);
                    s.$put(v);
                }
            }
        };
    }
    prop!(
        PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_indicator,
        put_u8_ref
    );
    prop!(
        MESSAGE_EXPIRY_INTERVAL,
        p.message_expiry_interval,
        put_u32_ref
    );
    prop!(CONTENT_TYPE, p.content_type, put_str);
    prop!(RESPONSE_TOPIC, p.response_topic, put_str);
    prop!(CORRELATION_DATA, p.correlation_data, put_bin);
    if ok(SUBSCRIPTION_IDENTIFIER) {
        let n = if ctx == Owner::Publish { usize::MAX } else { 1 };
        for v in p.subscription_identifiers.iter().take(n) {
            s.put_u8(SUBSCRIPTION_IDENTIFIER);
            s.put_varint(*v as usize);
        }
    }
    prop!(
        SESSION_EXPIRY_INTERVAL,
        p.session_expiry_interval,
        put_u32_ref
    );
    prop!(
        ASSIGNED_CLIENT_IDENTIFIER,
        p.assigned_client_identifier,
        put_str
    );
    prop!(SERVER_KEEP_ALIVE, p.server_keep_alive, put_u16_ref);
    prop!(AUTHENTICATION_METHOD, p.authentication_method, put_str);
    prop!(AUTHENTICATION_DATA, p.authentication_data, put_bin);
    prop!(
        REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
        put_u8_ref
    );
    prop!(WILL_DELAY_INTERVAL, p.will_delay_interval, put_u32_ref);
    prop!(
        REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
        put_u8_ref
    );
    prop!(RESPONSE_INFORMATION, p.response_information, put_str);
    prop!(SERVER_REFERENCE, p.server_reference, put_str);
    prop!(REASON_STRING, p.reason_string, put_str);
    prop!(RECEIVE_MAXIMUM, p.receive_maximum, put_u16_ref);
    prop!(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum, put_u16_ref);
    prop!(TOPIC_ALIAS, p.topic_alias, put_u16_ref);
    prop!(MAXIMUM_QOS, p.maximum_qos, put_u8_ref);
    prop!(RETAIN_AVAILABLE, p.retain_available, put_u8_ref);
    for (k, v) in &p.user_properties {
        s.put_u8(USER_PROPERTY);
        s.put_str(k);
        s.put_str(v);
    }
    prop!(MAXIMUM_PACKET_SIZE, p.maximum_packet_size, put_u32_ref);
    prop!(
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
        put_u8_ref
    );
    prop!(
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifiers_available,
        put_u8_ref
    );
    prop!(
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
        put_u8_ref
    );
}

/// Size of the property list of `p` in `ctx`, without the length prefix.
pub(crate) fn len(p: &Properties, ctx: Owner) -> usize {
    let mut c = Counter::default();
    write_items(p, ctx, &mut c);
    c.0
}

/// Writes the property length followed by the properties.
pub(crate) fn write<S: Sink>(p: &Properties, ctx: Owner, s: &mut S) {
    s.put_varint(len(p, ctx));
    write_items(p, ctx, s);
}
