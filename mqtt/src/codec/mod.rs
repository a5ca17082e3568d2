//! MQTT wire codec for MQTT 3.1, 3.1.1 and 5.0.
//!
//! [`decode`] reads one control packet from the front of a connection's
//! receive buffer, [`encode`] appends the wire form of a packet and
//! [`encoded_len`] tells how many bytes [`encode`] would append. One set of
//! packet types ([`crate::packet`]) serves all versions; the `version`
//! argument decides what goes on the wire (no properties and no reason codes
//! on 3.x).
//!
//! Decoding never panics on peer data: every read is bounds checked and any
//! problem becomes a [`DecodeError`] that carries the MQTT 5 reason code the
//! server should answer with (CONNACK or DISCONNECT) before closing.
//!
//! Points where the specification leaves room and this codec picks a side:
//!
//! * A packet that is fully buffered but invalid is consumed from the buffer
//!   together with the error (the connection is closed after any decode
//!   error anyway). Errors found in the fixed header (type, flags, remaining
//!   length, size limit) consume nothing.
//! * Packet identifier 0 is rejected (Malformed) in PUBLISH (QoS > 0),
//!   SUBSCRIBE and UNSUBSCRIBE; acknowledgements carrying id 0 are passed
//!   through for the session to reject as unknown.
//! * The password flag without the user name flag is accepted on every
//!   version.
//! * Property values the specification calls a Protocol Error are rejected
//!   as [`DecodeError::Protocol`]: a value other than 0/1 for Request Problem
//!   Information, Request Response Information, Maximum QoS, Retain
//!   Available and the three "... Available" CONNACK flags; Receive Maximum
//!   0; Maximum Packet Size 0; Subscription Identifier 0. Topic Alias 0 is
//!   left to the channel, which must answer it with 0x94 (Topic Alias
//!   invalid) rather than a generic protocol error.
//! * Remaining lengths that do not use the minimal number of bytes are
//!   accepted.
//! * A Mosquitto-style bridge CONNECT (level with bit 7 set) is reported as
//!   [`DecodeError::UnsupportedProtocol`].
//! * `encode` of a CONNECT writes the protocol name and level of the
//!   `version` argument (`MQIsdp`/3, `MQTT`/4, `MQTT`/5); the packet's
//!   `protocol` and `protocol_name` fields are not consulted.
//! * On MQTT 3.x `encode` writes nothing for `Disconnect` and `Auth`: the
//!   server never sends DISCONNECT before MQTT 5 and AUTH does not exist
//!   there. `encoded_len` is 0 for them.
//! * `encode` clears the DUP flag of a QoS 0 PUBLISH (MQTT-3.3.1-2), clears
//!   Session Present in a CONNACK that refuses the connection
//!   (MQTT-3.2.2-4/-6), and always writes a zero acknowledge-flags byte on
//!   MQTT 3.1, which has no Session Present flag.

mod decode;
mod encode;
mod error;
mod fit;
mod props;
mod reader;
mod sink;
#[cfg(test)]
mod tests;

pub use decode::decode;
pub use encode::{encode, encode_plain_qos0, encoded_len, plain_qos0_len};
pub use error::DecodeError;
pub use fit::fit;
