//! Local pub/sub: the subscription tables, the route table, shared
//! subscriptions and the publish path (EMQX's emqx_broker, emqx_router and
//! emqx_shared_sub in one place).
//!
//! Ownership: the tables live in [`Tables`], read concurrently by every
//! publisher under `RwLock` read guards (as EMQX reads ETS). Writes go
//! through the topic shard actors ([`crate::shard`]): each shard owns the
//! filters that hash to it, so two subscribes to one filter are applied in
//! order and a subscribe never waits behind a publish for long.

use crate::message::Message;
use crate::metrics::{inc, Metrics, Stats};
use crate::packet::SubscriptionOptions;
use crate::retainer::Retainer;
use crate::session::SessionMsg;
use crate::shard::{owner_shard, ShardActor, ShardMsg};
use crate::trie::TopicTrie;
use crate::{topic, topic::TopicError};
use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorRef};
use rand::Rng;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How a shared-subscription group picks the member for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedStrategy {
    Random,
    #[default]
    RoundRobin,
    RoundRobinPerGroup,
    Sticky,
    HashClientId,
    HashTopic,
    /// Prefer members on the publisher's node; on one node, random.
    Local,
}

impl SharedStrategy {
    pub fn parse(s: &str) -> Option<SharedStrategy> {
        Some(match s {
            "random" => SharedStrategy::Random,
            "round_robin" => SharedStrategy::RoundRobin,
            "round_robin_per_group" => SharedStrategy::RoundRobinPerGroup,
            "sticky" => SharedStrategy::Sticky,
            "hash_clientid" => SharedStrategy::HashClientId,
            "hash_topic" => SharedStrategy::HashTopic,
            "local" => SharedStrategy::Local,
            _ => return None,
        })
    }
}

/// One subscriber of one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub client_id: Arc<str>,
    pub session: ActorRef<SessionMsg>,
    pub opts: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// What a session needs to know about the subscription a message matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMatch {
    /// The filter as subscribed (with `$share/<g>/` for shared ones).
    pub filter: Arc<str>,
    pub opts: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// Members of one shared-subscription group of one filter.
#[derive(Debug, Default)]
pub struct SharedGroup {
    pub members: Vec<Subscriber>,
    next: AtomicUsize,
    /// The member a sticky group keeps sending to while it stays subscribed.
    sticky: Mutex<Option<Arc<str>>>,
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
}

pub fn shard_of(key: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % n as u64) as usize
}

fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Settings the broker reads from `mqtt.*`.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub shared_strategy: SharedStrategy,
    pub max_topic_levels: usize,
    pub shards: usize,
    /// Do not deliver a client's messages back to itself, whatever its
    /// subscription options (`mqtt.ignore_loop_deliver`, for MQTT 3.x
    /// clients that have no no-local option).
    pub ignore_loop_deliver: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            shared_strategy: SharedStrategy::RoundRobin,
            max_topic_levels: 128,
            shards: 8,
            ignore_loop_deliver: false,
        }
    }
}

/// The local broker: tables, shard actors, retainer, counters.
pub struct Broker {
    pub node: Arc<str>,
    pub settings: BrokerSettings,
    pub tables: Arc<Tables>,
    shards: Vec<ActorRef<ShardMsg>>,
    pub retainer: Retainer,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Stats>,
}

/// Result of a subscribe applied by a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// False when the same client already had this filter (options replaced).
    pub is_new: bool,
}

impl Broker {
    /// Creates the tables and spawns one shard actor per shard.
    pub async fn start(
        node: Arc<str>,
        settings: BrokerSettings,
        retainer: Retainer,
        metrics: Arc<Metrics>,
        stats: Arc<Stats>,
    ) -> Result<Arc<Broker>, ractor::SpawnErr> {
        let n = settings.shards.max(1);
        let tables = Arc::new(Tables {
            exact: (0..n).map(|_| RwLock::new(HashMap::new())).collect(),
            wild: RwLock::new(TopicTrie::new()),
            routes: RwLock::new(BTreeMap::new()),
        });
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let (a, _) = Actor::spawn(
                None,
                ShardActor,
                (i, tables.clone(), node.clone(), stats.clone()),
            )
            .await?;
            shards.push(a);
        }
        Ok(Arc::new(Broker {
            node,
            settings,
            tables,
            shards,
            retainer,
            metrics,
            stats,
        }))
    }

    /// Stops the shard actors (the node's broker is being restarted or stopped).
    pub fn stop(&self) {
        for s in &self.shards {
            s.stop(None);
        }
    }

    /// Adds or replaces `client`'s subscription to `filter` (possibly shared).
    pub async fn subscribe(
        &self,
        filter: &str,
        sub: Subscriber,
    ) -> Result<SubscribeOutcome, BrokerError> {
        topic::validate_topic_filter(filter, self.settings.max_topic_levels)?;
        let shard = &self.shards[owner_shard(filter, self.shards.len())];
        let filter: Arc<str> = Arc::from(filter);
        ractor::call!(shard, |r| ShardMsg::Subscribe(filter, sub, r))
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// Removes `client`'s subscription to `filter`; false when it had none.
    pub async fn unsubscribe(
        &self,
        filter: &str,
        client_id: Arc<str>,
    ) -> Result<bool, BrokerError> {
        self.unsubscribe_owned(filter, client_id, None).await
    }

    /// As [`Broker::unsubscribe`], but only removes the subscription if it
    /// belongs to session actor `owner`.
    pub async fn unsubscribe_owned(
        &self,
        filter: &str,
        client_id: Arc<str>,
        owner: Option<ractor::ActorId>,
    ) -> Result<bool, BrokerError> {
        let shard = &self.shards[owner_shard(filter, self.shards.len())];
        let filter: Arc<str> = Arc::from(filter);
        ractor::call!(shard, |r| ShardMsg::Unsubscribe(
            filter, client_id, owner, r
        ))
        .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// Delivers a message to every matching local subscriber and returns
    /// how many sessions it went to. Does not store retained messages: the
    /// caller decides (retain flag, retain_available).
    pub fn publish(&self, msg: Arc<Message>) -> usize {
        let mut out: HashMap<Arc<str>, (ActorRef<SessionMsg>, Vec<SubMatch>)> = HashMap::new();
        let strategy = self.settings.shared_strategy;
        let no_loop = self.settings.ignore_loop_deliver;
        let mut visit = |filter: &str, e: &FilterEntry| {
            collect(filter, e, &msg, strategy, no_loop, &mut out);
        };
        {
            let t = &msg.topic;
            let shard = self.tables.exact[shard_of(t, self.tables.exact.len())].read();
            if let Some(e) = shard.get(t.as_ref()) {
                visit(t, e);
            }
        }
        self.tables.wild.read().match_each(&msg.topic, &mut visit);
        let n = out.len();
        if n == 0 {
            inc(&self.metrics.messages_dropped_no_subscribers);
            inc(&self.metrics.messages_dropped);
        }
        for (_, (session, matches)) in out {
            let _ = session.cast(SessionMsg::Deliver(msg.clone(), matches));
        }
        n
    }

    /// Sorted `(filter, node)` pairs of the route table (`ctl topics list`).
    pub fn routes(&self) -> Vec<(String, String)> {
        let r = self.tables.routes.read();
        let mut v = Vec::new();
        for (f, nodes) in r.iter() {
            for n in nodes {
                v.push((f.to_string(), n.to_string()));
            }
        }
        v
    }

    /// Number of distinct routed filters (`topics.count`).
    pub fn topics_count(&self) -> usize {
        self.tables.routes.read().len()
    }
}

fn collect(
    filter: &str,
    e: &FilterEntry,
    msg: &Message,
    strategy: SharedStrategy,
    no_loop: bool,
    out: &mut HashMap<Arc<str>, (ActorRef<SessionMsg>, Vec<SubMatch>)>,
) {
    for s in e.subs.values() {
        if (s.opts.no_local || no_loop) && *s.client_id == *msg.from {
            continue;
        }
        push(out, s, Arc::from(filter));
    }
    for (group, g) in &e.groups {
        if let Some(s) = pick_member(g, msg, strategy) {
            let f: Arc<str> = if &**group == "$queue" {
                Arc::from(format!("$queue/{filter}"))
            } else {
                Arc::from(format!("$share/{group}/{filter}"))
            };
            push(out, s, f);
        }
    }
}

fn push(
    out: &mut HashMap<Arc<str>, (ActorRef<SessionMsg>, Vec<SubMatch>)>,
    s: &Subscriber,
    filter: Arc<str>,
) {
    let m = SubMatch {
        filter,
        opts: s.opts,
        sub_id: s.sub_id,
    };
    out.entry(s.client_id.clone())
        .or_insert_with(|| (s.session.clone(), Vec::new()))
        .1
        .push(m);
}

/// Picks the member of a shared group that gets `msg`.
pub fn pick_member<'a>(
    g: &'a SharedGroup,
    msg: &Message,
    strategy: SharedStrategy,
) -> Option<&'a Subscriber> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let i = match strategy {
        SharedStrategy::Random | SharedStrategy::Local => rand::thread_rng().gen_range(0..n),
        SharedStrategy::RoundRobin | SharedStrategy::RoundRobinPerGroup => {
            g.next.fetch_add(1, Ordering::Relaxed) % n
        }
        SharedStrategy::HashClientId => (hash_str(&msg.from) % n as u64) as usize,
        SharedStrategy::HashTopic => (hash_str(&msg.topic) % n as u64) as usize,
        SharedStrategy::Sticky => {
            let mut st = g.sticky.lock();
            if let Some(cur) = st.as_ref() {
                if let Some(i) = g.members.iter().position(|m| &m.client_id == cur) {
                    return g.members.get(i);
                }
            }
            let i = rand::thread_rng().gen_range(0..n);
            *st = Some(g.members[i].client_id.clone());
            i
        }
    };
    g.members.get(i)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    InvalidFilter(TopicError),
    /// A shard actor did not answer (the broker is stopping).
    Unavailable(String),
}

impl From<TopicError> for BrokerError {
    fn from(e: TopicError) -> Self {
        BrokerError::InvalidFilter(e)
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::InvalidFilter(e) => write!(f, "invalid topic filter: {e:?}"),
            BrokerError::Unavailable(e) => write!(f, "broker unavailable: {e}"),
        }
    }
}

impl std::error::Error for BrokerError {}
