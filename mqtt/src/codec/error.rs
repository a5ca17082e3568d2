//! Why a packet could not be decoded.

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
    /// The MQTT 5 reason code for this error: 0x81 Malformed Packet, 0x82
    /// Protocol Error, 0x95 Packet too large, 0x84 Unsupported Protocol
    /// Version.
    pub fn reason_code(&self) -> u8 {
        use crate::packet::reason;
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Messages are built by this module and never contain a newline;
        // the peer-supplied protocol name is printed escaped.
        match self {
            DecodeError::Malformed(m) => write!(f, "malformed packet: {m}"),
            DecodeError::Protocol(m) => write!(f, "protocol error: {m}"),
            DecodeError::TooLarge { size, max } => {
                write!(
                    f,
                    "packet of {size} bytes exceeds the maximum packet size of {max} bytes"
                )
            }
            DecodeError::UnsupportedProtocol { name, level } => {
                write!(f, "unsupported protocol name {name:?} level {level}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}
