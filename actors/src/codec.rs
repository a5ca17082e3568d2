//! MQTT wire codec (stub: being written).
use crate::packet::{Packet, ProtocolVersion};
use bytes::BytesMut;

/// Why a packet could not be decoded, with the MQTT 5 reason code to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Bytes that do not form a valid packet (reason 0x81).
    Malformed(String),
    /// A well-formed packet that breaks a protocol rule (reason 0x82).
    Protocol(String),
    /// The packet is larger than the limit (reason 0x95); `size` is its total size.
    TooLarge { size: usize, max: usize },
    /// CONNECT with a protocol name/level we do not speak (reason 0x84, 3.x return code 1).
    UnsupportedProtocol { name: String, level: u8 },
}

impl DecodeError {
    pub fn reason_code(&self) -> u8 { todo!() }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
}
impl std::error::Error for DecodeError {}

/// Decodes one packet from the front of `buf`.
pub fn decode(buf: &mut BytesMut, version: Option<ProtocolVersion>, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    todo!()
}

/// Appends the wire form of `packet` for `version` to `buf`.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let _ = (packet, version, buf);
    todo!()
}

/// The size `encode` would produce.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    todo!()
}
