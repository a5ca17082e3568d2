//! The subscription and route tables: written by the topic shard actors
//! ([`crate::shard`]), read by every publish ([`crate::broker`]) under
//! read locks. Their own file, below both.

use crate::inbox::Inbox;
use crate::peers::RouteOp;
use emqx_mqtt::packet::SubscriptionOptions;
use emqx_mqtt::trie::TopicTrie;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// One subscriber of one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub client_id: Arc<str>,
    /// Where deliveries for the session go; past
    /// `BrokerSettings::max_session_backlog` waiting in it, new ones are
    /// dropped, so a session that cannot keep up never grows without bound.
    pub inbox: Arc<Inbox>,
    pub opts: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// Members of one shared-subscription group of one filter.
#[derive(Debug, Default)]
pub struct SharedGroup {
    pub members: Vec<Subscriber>,
    pub(crate) next: AtomicUsize,
    /// The member a sticky group keeps sending to while it stays subscribed.
    pub(crate) sticky: Mutex<Option<Arc<str>>>,
}

/// Everything subscribed to one filter on this node.
#[derive(Debug, Default)]
pub struct FilterEntry {
    pub subs: HashMap<Arc<str>, Subscriber>,
    pub groups: BTreeMap<Arc<str>, SharedGroup>,
}

impl FilterEntry {
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.groups.is_empty()
    }
}

/// The tables every publish reads.
pub struct Tables {
    /// Non-wildcard filters, sharded by the filter's hash; a publish to
    /// topic T only reads shard hash(T), because only filter T can match.
    pub exact: Vec<RwLock<HashMap<Arc<str>, FilterEntry>>>,
    /// Wildcard filters.
    pub wild: RwLock<TopicTrie<FilterEntry>>,
    /// Routes: filter -> nodes with subscribers (only this node for now;
    /// the cluster replicates this table).
    pub routes: RwLock<BTreeMap<Arc<str>, Vec<Arc<str>>>>,
    /// Where the shard actors report this node's route changes for the
    /// cluster to replicate.
    pub route_tx: Option<tokio::sync::mpsc::UnboundedSender<RouteOp>>,
}

/// Result of a subscribe applied by a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// False when the same client already had this filter (options replaced).
    pub is_new: bool,
}
