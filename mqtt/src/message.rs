//! The application message that travels from a publisher to subscribers.

use crate::packet::{Properties, Publish, QoS};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A published message, shared (`Arc`) by every subscriber it is delivered
/// to, so a fan-out to 500 sessions copies a pointer, not the payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Unique within this node's lifetime; used in logs and to tell copies apart.
    pub id: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Client id of the publisher (empty for messages the broker makes),
    /// needed for the v5 no-local option and shared-sub hashing.
    pub from: Arc<str>,
    /// The properties that travel with the message (MQTT 5.0 3.3.2.3):
    /// payload format, content type, response topic, correlation data,
    /// user properties. Never the topic alias or subscription ids, which
    /// are per connection.
    pub properties: Properties,
    /// Wall-clock milliseconds at publish; with `expiry_secs` gives the
    /// message expiry deadline, and stays meaningful on another node.
    pub timestamp_ms: u64,
    /// The message expiry interval the publisher set, if any.
    pub expiry_secs: Option<u32>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Message {
    /// Builds a message from a client's PUBLISH (topic alias already
    /// resolved), published at wall-clock `timestamp_ms`. Takes the packet:
    /// its payload and properties become the message's without a copy.
    pub fn from_publish(from: Arc<str>, p: Publish, timestamp_ms: u64) -> Message {
        let mut properties = p.properties;
        // A PUBLISH without properties (every 3.x one) allocates none here.
        let expiry_secs = properties.values_mut().and_then(|v| {
            v.topic_alias = None;
            v.subscription_identifiers.clear();
            v.message_expiry_interval.take()
        });
        Message {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            topic: Arc::from(p.topic),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from,
            properties,
            timestamp_ms,
            expiry_secs,
        }
    }

    /// The same message under a number of this process (a copy that
    /// came from another node).
    pub fn renumbered(mut self) -> Message {
        self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self
    }

    /// A message the broker itself publishes ($SYS, wills are from
    /// clients), at wall-clock `timestamp_ms`.
    pub fn system(
        topic: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        retain: bool,
        timestamp_ms: u64,
    ) -> Message {
        Message {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain,
            from: Arc::from(""),
            properties: Properties::default(),
            timestamp_ms,
            expiry_secs: None,
        }
    }

    /// True once the publisher's message expiry interval has passed.
    /// The bytes a message is counted for in a session's bounds: its topic
    /// and payload.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        match self.expiry_secs {
            Some(s) => now_ms >= self.timestamp_ms + u64::from(s) * 1000,
            None => false,
        }
    }

    /// Seconds of life left, for the expiry property of an outgoing PUBLISH
    /// (MQTT 5.0 3.3.2.3.3: the server sends the remaining interval).
    pub fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        self.expiry_secs.map(|s| {
            let deadline = self.timestamp_ms + u64::from(s) * 1000;
            (deadline.saturating_sub(now_ms).div_ceil(1000)) as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_counts_down_and_expires() {
        let mut m = Message::system("t", "x", false, 0);
        m.expiry_secs = Some(10);
        m.timestamp_ms = 1_000;
        assert_eq!(m.remaining_expiry(1_000), Some(10));
        assert_eq!(m.remaining_expiry(5_500), Some(6));
        assert!(!m.is_expired(10_999));
        assert!(m.is_expired(11_000));
    }

    #[test]
    fn publish_conversion_strips_per_connection_properties() {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(1),
            properties: Properties::from(crate::packet::PropertyValues {
                topic_alias: Some(3),
                message_expiry_interval: Some(5),
                subscription_identifiers: vec![7],
                content_type: Some("text/plain".into()),
                ..Default::default()
            }),
            payload: Bytes::from_static(b"hi"),
        };
        let m = Message::from_publish(Arc::from("c1"), p, 1_000);
        assert_eq!(m.expiry_secs, Some(5));
        assert_eq!(m.properties.topic_alias, None);
        assert!(m.properties.subscription_identifiers.is_empty());
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn a_publish_without_properties_makes_a_message_without_any() {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(1),
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        };
        let mut m = Message::from_publish(Arc::from("c1"), p, 1_000);
        assert!(
            m.properties.values_mut().is_none(),
            "no properties allocated"
        );
        assert_eq!(m.expiry_secs, None);
        assert_eq!(&*m.topic, "a/b");
        assert_eq!(&m.payload[..], b"hi");
    }
}
