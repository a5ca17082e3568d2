//! Frames on a forwarding connection after the handshake.
//!
//! ```text
//! frame   = len:u32be body                      (len = body length, <= MAX_FRAME)
//! body    = kind:u8(=2, batch) stream:u64be first_seq:u64be count:u32be message{count}
//! message = flags:u8 topic:str from:str timestamp_ms:varint
//!           [expiry_secs:varint]  (flag bit 3)
//!           [properties]          (flag bit 4)
//!           payload:bytes
//! flags   = qos (bits 0-1) | retain (bit 2) | has_expiry (bit 3) | has_properties (bit 4)
//! str     = len:varint utf-8 bytes;  bytes = len:varint raw bytes
//! properties = mask:varint, then each present field in field order (see `props_codec!`)
//! ```
//!
//! Messages are numbered per stream: each outgoing connection slot of a
//! node has a random stream id, fixed for the life of the process, and
//! numbers its messages 1, 2, 3, ... over every connection it opens; the
//! messages of a frame carry `first_seq`, `first_seq + 1`, ... The
//! receiving node answers on the same connection with acknowledgements:
//!
//! ```text
//! ack     = seq:u64be        (every message of the stream up to seq was handed on)
//! ```
//!
//! The sender keeps what is not acknowledged and sends it again, in order,
//! on its next connection; the receiver hands a message on only if its
//! number is above the last one it handed on for that stream. So a frame
//! lost with a connection (a partition, a send timeout, a peer that closed)
//! is neither lost nor delivered twice.
//!
//! Integers are LEB128 varints. A hand-written format rather than serde: the
//! message types stay free of serde derives, payloads and correlation data
//! decode as zero-copy slices of the received frame, and every length is
//! checked against what is left, so nothing a peer sends can make the decoder
//! allocate more than the frame it already sent, or panic.

use bytes::{BufMut, Bytes, BytesMut};
use emqx_mqtt::message::Message;
use emqx_mqtt::packet::{Properties, QoS};
use std::sync::Arc;

/// Largest frame body accepted or sent; a bigger length prefix is a protocol
/// error and closes the connection.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// The writer stops adding messages to a frame once it is this big, so one
/// frame of large messages does not delay the next for long.
pub const SOFT_FRAME: usize = 1024 * 1024;
/// Length prefix, kind, stream, first sequence number, count.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 8 + 4;
/// The only frame kind: a numbered batch of messages. (Kind 1, the
/// unnumbered batch of earlier versions, is refused.)
pub const KIND_BATCH: u8 = 2;
/// Bytes of an acknowledgement.
pub const ACK_LEN: usize = 8;

/// Why a frame could not be decoded. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame truncated")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("invalid qos {0}")]
    BadQos(u8),
    #[error("unknown flag bits {0:#x}")]
    BadFlags(u8),
    #[error("string is not utf-8")]
    Utf8,
    #[error("varint too long")]
    Varint,
    #[error("value {0} out of range")]
    Range(u64),
    #[error("unknown property bits {0:#x}")]
    BadPropertyMask(u64),
    #[error("{0} bytes after the last message")]
    Trailing(usize),
}

// ---------------------------------------------------------------- encoding

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn put_bytes(b: &mut BytesMut, s: &[u8]) {
    put_varint(b, s.len() as u64);
    b.put_slice(s);
}

/// Starts a batch frame of `stream` in `b` (which should be empty), whose
/// first message is number `first_seq`: placeholders for the length and
/// the count, patched by [`finish_frame`].
pub fn begin_frame(b: &mut BytesMut, stream: u64, first_seq: u64) {
    b.put_u32(0);
    b.put_u8(KIND_BATCH);
    b.put_u64(stream);
    b.put_u64(first_seq);
    b.put_u32(0);
}

/// Patches the length prefix and message count of the frame started at the
/// beginning of `b`.
pub fn finish_frame(b: &mut BytesMut, count: u32) {
    let body = (b.len() - 4) as u32;
    b[0..4].copy_from_slice(&body.to_be_bytes());
    b[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&count.to_be_bytes());
}

/// Appends one message to a frame.
pub fn encode_message(b: &mut BytesMut, m: &Message) {
    encode_message_to(b, m, None)
}

/// Appends one message to a frame, with the shared-subscription
/// `(group, filter)` it is meant for, if any (flag bit 5).
pub fn encode_message_to(b: &mut BytesMut, m: &Message, shared: Option<&(String, String)>) {
    let has_props = !m.properties.is_empty();
    let flags = (m.qos as u8)
        | (u8::from(m.retain) << 2)
        | (u8::from(m.expiry_secs.is_some()) << 3)
        | (u8::from(has_props) << 4)
        | (u8::from(shared.is_some()) << 5);
    b.reserve(16 + m.topic.len() + m.from.len() + m.payload.len());
    b.put_u8(flags);
    put_bytes(b, m.topic.as_bytes());
    put_bytes(b, m.from.as_bytes());
    put_varint(b, m.timestamp_ms);
    if let Some(e) = m.expiry_secs {
        put_varint(b, u64::from(e));
    }
    if has_props {
        put_props(b, &m.properties);
    }
    if let Some((g, f)) = shared {
        put_bytes(b, g.as_bytes());
        put_bytes(b, f.as_bytes());
    }
    put_bytes(b, &m.payload);
}

/// Encodes `msgs` as one complete frame (length prefix included); for tests
/// and tools. The writer builds frames incrementally instead.
pub fn encode_frame(stream: u64, first_seq: u64, msgs: &[Message]) -> BytesMut {
    let mut b = BytesMut::new();
    begin_frame(&mut b, stream, first_seq);
    for m in msgs {
        encode_message(&mut b, m);
    }
    finish_frame(&mut b, msgs.len() as u32);
    b
}

// ---------------------------------------------------------------- decoding

/// A cursor over a received frame body.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(v)
    }

    fn u32be(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64be(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&s[..8]);
        Ok(u64::from_be_bytes(a))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(DecodeError::Varint);
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Varint)
    }

    fn small<T: TryFrom<u64>>(&mut self) -> Result<T, DecodeError> {
        let v = self.varint()?;
        T::try_from(v).map_err(|_| DecodeError::Range(v))
    }

    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        self.take(n)
    }

    /// A payload or correlation data: small ones are copied, so a message
    /// kept in some session queue does not pin the whole receive buffer.
    fn blob(&mut self) -> Result<Bytes, DecodeError> {
        let b = self.bytes()?;
        Ok(if b.len() < 1024 {
            Bytes::copy_from_slice(&b)
        } else {
            b
        })
    }

    fn str(&mut self) -> Result<&str, DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = std::str::from_utf8(&self.buf[self.pos..self.pos + n])
            .map_err(|_| DecodeError::Utf8)?;
        self.pos += n;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }
}

/// A received message and the shared-subscription `(group, filter)` it is for.
pub type Received = (Message, Option<(String, String)>);

/// Decodes one message. The receiving node gives it a fresh local `id`.
fn decode_message(r: &mut Reader) -> Result<Received, DecodeError> {
    let flags = r.u8()?;
    if flags & !0x3f != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    let qos = QoS::from_u8(flags & 0x03).ok_or(DecodeError::BadQos(flags & 0x03))?;
    let topic: Arc<str> = Arc::from(r.str()?);
    let from: Arc<str> = Arc::from(r.str()?);
    let timestamp_ms = r.varint()?;
    let expiry_secs = if flags & 0x08 != 0 {
        Some(r.small::<u32>()?)
    } else {
        None
    };
    let properties = if flags & 0x10 != 0 {
        get_props(r)?
    } else {
        Properties::default()
    };
    let shared = if flags & 0x20 != 0 {
        Some((r.string()?, r.string()?))
    } else {
        None
    };
    let payload = r.blob()?;
    let mut m = Message::system(topic, payload, flags & 0x04 != 0, timestamp_ms);
    m.qos = qos;
    m.from = from;
    m.properties = properties;
    m.expiry_secs = expiry_secs;
    Ok((m, shared))
}

/// A decoded frame: its stream, the number of its first message, and the
/// messages in order.
#[derive(Debug, PartialEq)]
pub struct Frame {
    pub stream: u64,
    pub first_seq: u64,
    pub msgs: Vec<Received>,
}

/// Decodes a frame body (without its length prefix) into its messages, all
/// or nothing: a malformed frame yields no message at all.
pub fn decode_frame(body: Bytes) -> Result<Frame, DecodeError> {
    let mut r = Reader { buf: body, pos: 0 };
    let kind = r.u8()?;
    if kind != KIND_BATCH {
        return Err(DecodeError::UnknownKind(kind));
    }
    let stream = r.u64be()?;
    let first_seq = r.u64be()?;
    let count = r.u32be()? as usize;
    if first_seq == 0 || first_seq.checked_add(count as u64).is_none() {
        return Err(DecodeError::Range(first_seq));
    }
    // Every message takes at least 5 bytes: never trust `count` for capacity.
    let mut out = Vec::with_capacity(count.min(r.remaining() / 5 + 1));
    for _ in 0..count {
        out.push(decode_message(&mut r)?);
    }
    if r.remaining() != 0 {
        return Err(DecodeError::Trailing(r.remaining()));
    }
    Ok(Frame {
        stream,
        first_seq,
        msgs: out,
    })
}

// ---------------------------------------------------------------- properties

/// Encodes every `Properties` field (even those a message never carries, so
/// nothing is silently lost if one is ever added to messages): a presence
/// mask, then the present fields in this order.
macro_rules! props_codec {
    ($($bit:literal $field:ident : $kind:ident),* $(,)?) => {
        const PROPS_MASK: u64 = 0 $(| (1u64 << $bit))*;

        fn put_props(b: &mut BytesMut, p: &Properties) {
            let mut mask = 0u64;
            $(if props_codec!(@present $kind, p.$field) { mask |= 1 << $bit; })*
            put_varint(b, mask);
            $(props_codec!(@put $kind, b, p.$field);)*
        }

        fn get_props(r: &mut Reader) -> Result<Properties, DecodeError> {
            let mask = r.varint()?;
            if mask & !PROPS_MASK != 0 {
                return Err(DecodeError::BadPropertyMask(mask & !PROPS_MASK));
            }
            let mut p = Properties::default();
            $(if mask & (1 << $bit) != 0 { p.$field = props_codec!(@get $kind, r); })*
            Ok(p)
        }
    };
    (@present ids, $e:expr) => { !$e.is_empty() };
    (@present users, $e:expr) => { !$e.is_empty() };
    (@present $k:ident, $e:expr) => { $e.is_some() };
    (@put int, $b:ident, $e:expr) => { if let Some(v) = $e { put_varint($b, u64::from(v)); } };
    (@put str, $b:ident, $e:expr) => { if let Some(v) = &$e { put_bytes($b, v.as_bytes()); } };
    (@put bin, $b:ident, $e:expr) => { if let Some(v) = &$e { put_bytes($b, v); } };
    (@put ids, $b:ident, $e:expr) => {
        if !$e.is_empty() {
            put_varint($b, $e.len() as u64);
            for v in &$e { put_varint($b, u64::from(*v)); }
        }
    };
    (@put users, $b:ident, $e:expr) => {
        if !$e.is_empty() {
            put_varint($b, $e.len() as u64);
            for (k, v) in &$e { put_bytes($b, k.as_bytes()); put_bytes($b, v.as_bytes()); }
        }
    };
    (@get int, $r:ident) => { Some($r.small()?) };
    (@get str, $r:ident) => { Some($r.string()?) };
    (@get bin, $r:ident) => { Some($r.blob()?) };
    (@get ids, $r:ident) => {{
        let n = $r.varint()? as usize;
        let mut v = Vec::with_capacity(n.min($r.remaining()));
        for _ in 0..n { v.push($r.small()?); }
        v
    }};
    (@get users, $r:ident) => {{
        let n = $r.varint()? as usize;
        let mut v = Vec::with_capacity(n.min($r.remaining() / 2));
        for _ in 0..n { v.push(($r.string()?, $r.string()?)); }
        v
    }};
}

props_codec! {
    0 payload_format_indicator: int,
    1 message_expiry_interval: int,
    2 content_type: str,
    3 response_topic: str,
    4 correlation_data: bin,
    5 subscription_identifiers: ids,
    6 session_expiry_interval: int,
    7 assigned_client_identifier: str,
    8 server_keep_alive: int,
    9 authentication_method: str,
    10 authentication_data: bin,
    11 request_problem_information: int,
    12 will_delay_interval: int,
    13 request_response_information: int,
    14 response_information: str,
    15 server_reference: str,
    16 reason_string: str,
    17 receive_maximum: int,
    18 topic_alias_maximum: int,
    19 topic_alias: int,
    20 maximum_qos: int,
    21 retain_available: int,
    22 user_properties: users,
    23 maximum_packet_size: int,
    24 wildcard_subscription_available: int,
    25 subscription_identifiers_available: int,
    26 shared_subscription_available: int,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_message() -> Message {
        let mut m = Message::system(
            "a/b/c",
            Bytes::from_static(b"payload"),
            true,
            crate::clock::now_ms(),
        );
        m.qos = QoS::ExactlyOnce;
        m.from = Arc::from("client-1");
        m.timestamp_ms = 1_700_000_000_123;
        m.expiry_secs = Some(60);
        m.properties = Properties::from(emqx_mqtt::packet::PropertyValues {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(u32::MAX),
            content_type: Some("text/plain".into()),
            response_topic: Some("resp/x".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
            subscription_identifiers: vec![1, 268_435_455],
            session_expiry_interval: Some(7),
            assigned_client_identifier: Some("aci".into()),
            server_keep_alive: Some(u16::MAX),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            request_problem_information: Some(0),
            will_delay_interval: Some(3),
            request_response_information: Some(1),
            response_information: Some("ri".into()),
            server_reference: Some("sr".into()),
            reason_string: Some("rs".into()),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(11),
            topic_alias: Some(12),
            maximum_qos: Some(1),
            retain_available: Some(1),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "ü".into())],
            maximum_packet_size: Some(1 << 20),
            wildcard_subscription_available: Some(0),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(0),
        });
        m
    }

    fn same(a: &Message, b: &Message) {
        assert_eq!(a.topic, b.topic);
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.qos, b.qos);
        assert_eq!(a.retain, b.retain);
        assert_eq!(a.from, b.from);
        assert_eq!(a.properties, b.properties);
        assert_eq!(a.timestamp_ms, b.timestamp_ms);
        assert_eq!(a.expiry_secs, b.expiry_secs);
    }

    #[test]
    fn roundtrip_every_field() {
        let msgs = vec![
            full_message(),
            Message::system("", Bytes::new(), false, crate::clock::now_ms()),
            Message::system("x", vec![7u8; 100_000], false, crate::clock::now_ms()),
        ];
        let frame = encode_frame(7, 41, &msgs).freeze();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let f = decode_frame(frame.slice(4..)).unwrap();
        assert_eq!((f.stream, f.first_seq), (7, 41));
        let out = f.msgs;
        assert_eq!(out.len(), 3);
        for (a, (b, shared)) in msgs.iter().zip(&out) {
            same(a, b);
            assert!(shared.is_none());
        }
        assert_ne!(out[0].0.id, msgs[0].id, "the receiver assigns its own ids");
    }

    #[test]
    fn the_shared_group_target_travels_with_the_message() {
        let m = full_message();
        let target = ("g".to_string(), "t/#".to_string());
        let mut b = BytesMut::new();
        begin_frame(&mut b, 1, 1);
        encode_message_to(&mut b, &m, Some(&target));
        encode_message(&mut b, &m);
        finish_frame(&mut b, 2);
        let out = decode_frame(b.freeze().slice(4..)).expect("decode").msgs;
        same(&m, &out[0].0);
        assert_eq!(out[0].1.as_ref(), Some(&target));
        assert_eq!(out[1].1, None);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let frame = encode_frame(1, 1, &[full_message(), full_message()]).freeze();
        let body = frame.slice(4..);
        for n in 0..body.len() {
            assert!(decode_frame(body.slice(..n)).is_err(), "prefix {n}");
        }
        let mut long = BytesMut::from(&body[..]);
        long.put_u8(0);
        assert_eq!(decode_frame(long.freeze()), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let body = encode_frame(1, 1, &[full_message()]).freeze().slice(4..);
        for i in 0..body.len() {
            for x in [0x00u8, 0x7f, 0x80, 0xff] {
                let mut b = BytesMut::from(&body[..]);
                b[i] ^= x;
                let _ = decode_frame(b.freeze());
            }
        }
        // A huge count with nothing behind it must not allocate for it.
        let mut b = BytesMut::new();
        b.put_u8(KIND_BATCH);
        b.put_u64(1);
        b.put_u64(1);
        b.put_u32(u32::MAX);
        assert_eq!(decode_frame(b.freeze()), Err(DecodeError::Truncated));
    }

    #[test]
    fn bad_header_fields_are_rejected() {
        let mut b = BytesMut::new();
        b.put_u8(9);
        assert_eq!(decode_frame(b.freeze()), Err(DecodeError::UnknownKind(9)));
        let mut b = BytesMut::new();
        b.put_u8(1); // the unnumbered batch of earlier versions
        b.put_u32(0);
        assert_eq!(decode_frame(b.freeze()), Err(DecodeError::UnknownKind(1)));
        for first in [0, u64::MAX] {
            let mut b = BytesMut::new();
            b.put_u8(KIND_BATCH);
            b.put_u64(1);
            b.put_u64(first);
            b.put_u32(1);
            assert_eq!(decode_frame(b.freeze()), Err(DecodeError::Range(first)));
        }
        let mut b = BytesMut::new();
        b.put_u8(KIND_BATCH);
        b.put_u64(1);
        b.put_u64(1);
        b.put_u32(1);
        b.put_u8(0x03); // qos 3
        assert_eq!(decode_frame(b.freeze()), Err(DecodeError::BadQos(3)));
        let mut b = BytesMut::new();
        b.put_u8(KIND_BATCH);
        b.put_u64(1);
        b.put_u64(1);
        b.put_u32(1);
        b.put_u8(0x08); // has expiry
        put_bytes(&mut b, b"t");
        put_bytes(&mut b, b"");
        put_varint(&mut b, 0);
        put_varint(&mut b, u64::from(u32::MAX) + 1);
        assert_eq!(
            decode_frame(b.freeze()),
            Err(DecodeError::Range(u64::from(u32::MAX) + 1))
        );
    }
}
