//! What the routing layer hands a session for one message: the
//! subscriptions it matched ([`SubMatch`]) and the delivery decided from
//! them ([`Delivery`]). The contract between the broker's matching and the
//! channel, so it lives below both.

use crate::message::Message;
use crate::packet::{QoS, SubscriptionOptions};
use std::sync::Arc;

/// What a session needs to know about the subscription a message matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubMatch {
    pub opts: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// A message on its way to this client, as decided from its matches.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// Where the node's durable session journal keeps this delivery (0:
    /// nowhere). Meaningful on this node only: never sent to another.
    #[serde(skip)]
    pub journal: u64,
}

impl Delivery {
    /// Combines the subscriptions one message matched (MQTT 5.0 3.3.4:
    /// overlapping subscriptions deliver once at the highest granted QoS,
    /// with every subscription identifier).
    pub fn from_matches(msg: Arc<Message>, matches: &[SubMatch], upgrade_qos: bool) -> Delivery {
        let max_sub = matches.iter().map(|m| m.opts.qos).max().unwrap_or_default();
        let qos = if upgrade_qos {
            msg.qos.max(max_sub)
        } else {
            msg.qos.min(max_sub)
        };
        let retain = msg.retain && matches.iter().any(|m| m.opts.retain_as_published);
        let mut sub_ids: Vec<u32> = matches.iter().filter_map(|m| m.sub_id).collect();
        sub_ids.sort_unstable();
        sub_ids.dedup();
        Delivery {
            msg,
            qos,
            retain,
            sub_ids,
            journal: 0,
        }
    }

    /// A retained message sent because of a new subscription: the retain
    /// flag stays set (MQTT 5.0 3.3.1.3).
    /// `upgrade_qos` as for live messages (`mqtt.upgrade_qos`).
    pub fn retained(
        msg: Arc<Message>,
        opts: &SubscriptionOptions,
        sub_id: Option<u32>,
        upgrade_qos: bool,
    ) -> Delivery {
        Delivery {
            qos: if upgrade_qos {
                msg.qos.max(opts.qos)
            } else {
                msg.qos.min(opts.qos)
            },
            retain: true,
            sub_ids: sub_id.into_iter().collect(),
            msg,
            journal: 0,
        }
    }
}
