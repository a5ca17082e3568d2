//! Fitting a control packet into the client's Maximum Packet Size
//! (MQTT 5.0 3.1.2.11.4, [MQTT-3.1.2-24]).
//!
//! The server must never send a packet larger than the client allows. For
//! a PUBLISH that means dropping the message (the channel does it); for
//! every other packet the server may leave out optional properties: the
//! Reason String and User Properties first, as the specification names
//! them ([MQTT-3.1.2-25], [MQTT-3.14.2-3] and their siblings), then the
//! remaining properties from the least to the most useful to the client.
//! A packet that does not fit even bare is not sent at all, and the
//! connection is closed instead.

use super::encode::encoded_len;
use crate::packet::{Packet, Properties, PropertyValues, ProtocolVersion};

/// Optional properties in the order they are given up. A packet carries
/// only the ones allowed for its type, so one list serves every type.
const DROP_ORDER: &[fn(&mut PropertyValues)] = &[
    |p| p.reason_string = None,
    |p| p.user_properties.clear(),
    |p| p.response_information = None,
    |p| p.server_reference = None,
    // Each of these restates the default a client assumes without it.
    |p| p.subscription_identifiers_available = None,
    |p| p.wildcard_subscription_available = None,
    |p| p.shared_subscription_available = None,
    |p| p.topic_alias_maximum = None,
    |p| p.maximum_packet_size = None,
    |p| p.retain_available = None,
    |p| p.maximum_qos = None,
    |p| p.receive_maximum = None,
    |p| p.server_keep_alive = None,
    |p| p.session_expiry_interval = None,
    |p| p.assigned_client_identifier = None,
    |p| p.authentication_data = None,
    |p| p.authentication_method = None,
];

fn properties_mut(p: &mut Packet) -> Option<&mut Properties> {
    match p {
        Packet::ConnAck(a) => Some(&mut a.properties),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            Some(&mut a.properties)
        }
        Packet::SubAck(a) => Some(&mut a.properties),
        Packet::UnsubAck(a) => Some(&mut a.properties),
        Packet::Disconnect(d) => Some(&mut d.properties),
        Packet::Auth(a) => Some(&mut a.properties),
        // PUBLISH properties are the message's own: the channel drops a
        // message that does not fit instead of changing it. Client-side
        // packets are never sent by the server.
        _ => None,
    }
}

/// Leaves out optional properties of `p` until its encoded size is at most
/// `max` bytes. Returns whether it fits; a packet that does not fit must
/// not be sent.
pub fn fit(p: &mut Packet, version: ProtocolVersion, max: usize) -> bool {
    if encoded_len(p, version) <= max {
        return true;
    }
    if version != ProtocolVersion::V5 {
        return false;
    }
    for drop in DROP_ORDER {
        let Some(props) = properties_mut(p) else {
            return false;
        };
        if props.is_empty() {
            return false;
        }
        drop(props);
        if props.is_empty() {
            // Back to the unallocated empty set.
            *props = Properties::default();
        }
        if encoded_len(p, version) <= max {
            return true;
        }
    }
    false
}
