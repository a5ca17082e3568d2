//! Local pub/sub: the subscription tables, the route table, shared
//! subscriptions and the publish path (EMQX's emqx_broker, emqx_router and
//! emqx_shared_sub in one place).
//!
//! Ownership: the tables live in [`Tables`], read concurrently by every
//! publisher under `RwLock` read guards (as EMQX reads ETS). Writes go
//! through the topic shard actors ([`crate::shard`]): each shard owns the
//! filters that hash to it, so two subscribes to one filter are applied in
//! order and a subscribe never waits behind a publish for long.

use crate::hashing::{bucket, hash_str};
use crate::inbox::{Bounds, Inbox, Matches, Pushed};
use crate::metrics::{inc, Metrics, Stats};
use crate::peers::{Backpressure, BrokerLinks, Forwarded, GroupKey, RemoteRoutes};
use crate::retainer::Retainer;
use crate::shard::{owner_shard, ShardActor, ShardMsg};
pub use crate::tables::{FilterEntry, SharedGroup, SubscribeOutcome, Subscriber, Tables};
use emqx_mqtt::delivery::SubMatch;
use emqx_mqtt::message::Message;
use emqx_mqtt::packet::QoS;
use emqx_mqtt::topic::{self, TopicError};
use emqx_mqtt::trie::TopicTrie;
use parking_lot::RwLock;
use ractor::{Actor, ActorRef};
use std::collections::{BTreeMap, HashMap};
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

/// Settings the broker reads from `mqtt.*`.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub shared_strategy: SharedStrategy,
    pub max_topic_levels: usize,
    pub shards: usize,
    /// Deliveries waiting in one session's inbox beyond which more are
    /// dropped (and counted as `delivery.dropped.queue_full`). Past 256 (or
    /// a fifth of it), publishers of QoS 1/2 messages to it are slowed down.
    pub max_session_backlog: usize,
    /// Bytes waiting in one session's inbox beyond which more are dropped
    /// (`force_shutdown.max_heap_size`; see [`crate::inbox::Bounds`]).
    pub max_session_bytes: usize,
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
            max_session_backlog: 10_000,
            max_session_bytes: 32 * 1024 * 1024,
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
    /// The other nodes' routes and the way to them.
    remote: Option<Arc<dyn RemoteRoutes>>,
    /// Where retained messages published here go to be replicated.
    retain_tx: Option<tokio::sync::mpsc::UnboundedSender<Message>>,
    /// Round-robin position for choosing among nodes of a shared group.
    rr: AtomicUsize,
    /// The durable session journal: deliveries to persistent sessions are
    /// written before the message reaches them (`None`:
    /// `durable_sessions.enable = false`, or a broker in a unit test).
    pub journal: Option<Arc<crate::journal::Journal>>,
}

/// What a local publish reached.
#[derive(Debug, Default)]
pub struct Published {
    /// Sessions here and nodes elsewhere the message went to.
    pub subscribers: usize,
    /// A subscriber's inbox past its high-water mark, or a queue to
    /// another node past its limit: the publisher is held back.
    pub congested: Option<Congestion>,
    /// A retained message, or deliveries to persistent sessions, being
    /// written to disk: the publisher's acknowledgement waits for it.
    pub durable: Option<crate::durable::Ticket>,
}

/// What a QoS 1/2 publish filled past its mark.
pub enum Congestion {
    Inbox(Arc<Inbox>),
    /// A queue to another node (see [`crate::peers::Forwarded`]).
    Remote(Backpressure),
}

impl std::fmt::Debug for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Congestion::Inbox(_) => write!(f, "Congestion::Inbox"),
            Congestion::Remote(_) => write!(f, "Congestion::Remote"),
        }
    }
}

impl Broker {
    /// How much one session's inbox may hold.
    pub fn inbox_bounds(&self) -> Bounds {
        Bounds {
            count: self.settings.max_session_backlog,
            bytes: self.settings.max_session_bytes,
        }
    }

    /// Creates the tables and spawns one shard actor per shard.
    pub async fn start(
        node: Arc<str>,
        settings: BrokerSettings,
        retainer: Retainer,
        metrics: Arc<Metrics>,
        stats: Arc<Stats>,
        links: BrokerLinks,
        journal: Option<Arc<crate::journal::Journal>>,
    ) -> Result<Arc<Broker>, ractor::SpawnErr> {
        let n = settings.shards.max(1);
        let tables = Arc::new(Tables {
            exact: (0..n).map(|_| RwLock::new(HashMap::new())).collect(),
            wild: RwLock::new(TopicTrie::new()),
            routes: RwLock::new(BTreeMap::new()),
            route_tx: links.route_tx,
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
            remote: links.remote,
            retain_tx: links.retain_tx,
            rr: AtomicUsize::new(0),
            journal,
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
        owner: Option<u64>,
    ) -> Result<bool, BrokerError> {
        let shard = &self.shards[owner_shard(filter, self.shards.len())];
        let filter: Arc<str> = Arc::from(filter);
        ractor::call!(shard, |r| ShardMsg::Unsubscribe(
            filter, client_id, owner, r
        ))
        .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// The door for every message published on this node (by a client,
    /// a will, `$SYS`): a retained one is stored and handed to the cluster
    /// for replication, then it goes to every matching subscriber here and
    /// on other nodes. Says how many it reached, and names a subscriber's
    /// inbox this QoS 1/2 message pushed past its high-water mark, if any:
    /// the publisher should pause until it drains.
    pub fn publish(&self, msg: Message) -> Published {
        let msg = Arc::new(msg);
        inc(&self.metrics.messages_publish);
        let mut durable = None;
        if msg.retain {
            match self.retainer.store(&msg) {
                Ok(ticket) => {
                    durable = ticket;
                    inc(&self.metrics.messages_retained);
                    if let Some(tx) = &self.retain_tx {
                        let _ = tx.send((*msg).clone());
                    }
                }
                Err(e) => tracing::debug!(topic = %msg.topic, "retained message not stored: {e:?}"),
            }
        }
        let (subscribers, congested, durable) = self.dispatch(msg, Target::All, durable, None);
        Published {
            subscribers,
            congested,
            durable,
        }
    }

    /// Removes the retained message of `topic` on every node (as an empty
    /// retained publish would, but delivered to nobody); false when this
    /// node holds none for it.
    pub fn clear_retained(&self, topic: &str) -> bool {
        if !self.retainer.topics().iter().any(|t| t == topic) {
            return false;
        }
        let empty = Message::system(topic, bytes::Bytes::new(), true, crate::clock::now_ms());
        let _ = self.retainer.store(&Arc::new(empty.clone()));
        if let Some(tx) = &self.retain_tx {
            let _ = tx.send(empty);
        }
        true
    }

    /// Delivers a message that another node forwarded here: to the plain
    /// subscribers only, or to one member of the named shared group (the
    /// publisher's node already chose this node for it). Never forwards.
    /// Returns the write of its deliveries to persistent sessions, if any.
    /// Also returns what to wait for before taking more from that node: a
    /// subscriber's inbox the message filled past its high-water mark.
    pub fn publish_forwarded(
        &self,
        msg: Arc<Message>,
        shared: Option<(String, String)>,
        at: Option<(u64, u64)>,
    ) -> (Option<crate::durable::Ticket>, Option<Backpressure>) {
        inc(&self.metrics.messages_forwarded_in);
        let (_, congested, written) = match shared {
            None => self.dispatch(msg, Target::PlainOnly, None, at),
            Some((group, filter)) => self.dispatch(msg, Target::Group(group, filter), None, at),
        };
        (written, congested.map(|c| self.backpressure(c)))
    }

    /// The wait for `c` to drain.
    pub fn backpressure(&self, c: Congestion) -> Backpressure {
        match c {
            Congestion::Inbox(ib) => {
                let b = self.inbox_bounds();
                Box::pin(async move { ib.wait_drained(b).await })
            }
            Congestion::Remote(wait) => wait,
        }
    }

    /// The other nodes, in a cluster.
    pub fn remote_routes(&self) -> Option<Arc<dyn RemoteRoutes>> {
        self.remote.clone()
    }

    /// The publish path. Reads the local tables and, in a cluster, the
    /// replicated routes; each remote node with a matching route gets the
    /// message once, and each shared group gets it once cluster-wide.
    /// Deliveries to persistent sessions are journaled first (see
    /// [`crate::journal`]). The third value is what the publisher's
    /// acknowledgement waits for: `prior` (the retained message's write),
    /// that journal write and, with durable sessions on, each other
    /// node's acknowledgement of a QoS 1/2 message forwarded to it (it
    /// acknowledges once the message is on disk for its persistent
    /// sessions, see [`crate::forward`]). `at` is a forwarded message's
    /// place in its forwarding stream (recorded with its journal write).
    fn dispatch(
        &self,
        msg: Arc<Message>,
        target: Target,
        prior: Option<crate::durable::Ticket>,
        at: Option<(u64, u64)>,
    ) -> (usize, Option<Congestion>, Option<crate::durable::Ticket>) {
        let strategy = self.settings.shared_strategy;
        let no_loop = self.settings.ignore_loop_deliver;
        let remote = match target {
            Target::All => self.remote.as_deref(),
            _ => None,
        };
        // Remote side first: which nodes have plain routes, and which have
        // members of each shared group matching this topic.
        let mut remote_plain: Vec<Arc<str>> = Vec::new();
        let mut remote_groups: HashMap<GroupKey, Vec<Arc<str>>> = HashMap::new();
        if let Some(r) = remote {
            r.matching(&msg.topic, &mut remote_plain, &mut remote_groups);
        }
        // The tables stay read-locked until the deliveries are queued, so
        // the subscribers are borrowed, not cloned. Writers take one of
        // these locks at a time, so holding both cannot deadlock.
        let t: &str = &msg.topic;
        let exact = self.tables.exact[bucket(t, self.tables.exact.len())].read();
        let wild = self.tables.wild.read();
        let mut v = Visit {
            out: Gather::default(),
            shared_fwd: Vec::new(),
            remote_groups,
            target: &target,
            msg: &msg,
            strategy,
            no_loop,
            rr: &self.rr,
        };
        if let Some(e) = exact.get(t) {
            v.visit(t, e);
        }
        wild.match_each(t, |f, e| v.visit(f, e));
        let Visit {
            out,
            mut shared_fwd,
            remote_groups,
            ..
        } = v;
        // Groups with members only on other nodes.
        for ((filter, group), nodes) in remote_groups {
            let i = match strategy {
                SharedStrategy::Local => rand::random_range(0..nodes.len()),
                _ => choose(strategy, nodes.len(), &msg, &self.rr),
            };
            shared_fwd.push((nodes[i].clone(), group.to_string(), filter.to_string()));
        }
        let out = out.merged();
        let mut n = out.len();
        let max = self.inbox_bounds();
        let mut congested = None;
        // Written before any session can take the message (and so remove
        // its row).
        let (journaled, keys) = match &self.journal {
            Some(j) if msg.qos != QoS::AtMostOnce || j.upgrades_qos() => {
                let targets = out.iter().map(|(s, m)| (s.inbox.journal(), &m[..]));
                match j.record_at(&msg, targets, at) {
                    Some((t, keys)) => (Some(t), keys),
                    None => (None, Vec::new()),
                }
            }
            _ => (None, Vec::new()),
        };
        for (i, (s, matches)) in out.into_iter().enumerate() {
            // QoS 0 may be dropped; only QoS 1/2 deliveries slow publishers.
            let flow =
                msg.qos != QoS::AtMostOnce && matches.iter().any(|m| m.opts.qos != QoS::AtMostOnce);
            let key = keys.get(i).copied().unwrap_or(0);
            match s.inbox.push((msg.clone(), matches, key), max) {
                Pushed::Queued => {}
                Pushed::Congested => {
                    if flow && congested.is_none() {
                        congested = Some(Congestion::Inbox(s.inbox.clone()));
                    }
                }
                Pushed::Full => {
                    inc(&self.metrics.delivery_dropped);
                    inc(&self.metrics.delivery_dropped_queue_full);
                    if let (Some(j), true) = (&self.journal, key != 0) {
                        j.release(s.inbox.journal(), &[key]);
                    }
                }
            }
        }
        drop(wild);
        drop(exact);
        // Tickets complete in order: the journal's write covers the
        // retained one.
        let mut durable = journaled.or(prior);
        if let Some(r) = remote {
            let forwards = remote_plain.len() + shared_fwd.len();
            let mut parts = Vec::new();
            if forwards > 0 && msg.qos != QoS::AtMostOnce && self.journal.is_some() {
                // Durable sessions on: resolved as each node acknowledges.
                let (t, p) = durable
                    .take()
                    .unwrap_or_else(crate::durable::Ticket::ready)
                    .join(forwards);
                durable = Some(t);
                parts = p;
            }
            let mut parts = parts.into_iter();
            let plain = remote_plain.iter().map(|node| (node, None));
            let shared = shared_fwd
                .iter()
                .map(|(node, group, filter)| (node, Some((group.as_str(), filter.as_str()))));
            for (node, shared) in plain.chain(shared) {
                match r.forward(node, msg.clone(), shared, parts.next()) {
                    Forwarded::Queued => inc(&self.metrics.messages_forward),
                    // Only QoS 1/2 come back congested.
                    Forwarded::Congested(wait) => {
                        inc(&self.metrics.messages_forward);
                        if congested.is_none() {
                            congested = Some(Congestion::Remote(wait));
                        }
                    }
                    Forwarded::Dropped => inc(&self.metrics.messages_forward_dropped),
                }
            }
            n += remote_plain.len() + shared_fwd.len();
        }
        if n == 0 && matches!(target, Target::All) {
            inc(&self.metrics.messages_dropped_no_subscribers);
            inc(&self.metrics.messages_dropped);
        }
        (n, congested, durable)
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

/// Which subscribers a dispatch may reach.
enum Target {
    /// A publish on this node: everyone, here and on other nodes.
    All,
    /// Forwarded from another node: plain subscribers here only.
    PlainOnly,
    /// Forwarded from another node for one shared group of one filter.
    Group(String, String),
}

/// Picks one of `n` candidate nodes for a shared-group message; candidate
/// 0 is this node when it has members (so `local` and `sticky` prefer it).
fn choose(strategy: SharedStrategy, n: usize, msg: &Message, rr: &AtomicUsize) -> usize {
    if n <= 1 {
        return 0;
    }
    match strategy {
        SharedStrategy::Local | SharedStrategy::Sticky => 0,
        SharedStrategy::Random => rand::random_range(0..n),
        SharedStrategy::RoundRobin | SharedStrategy::RoundRobinPerGroup => {
            rr.fetch_add(1, Ordering::Relaxed) % n
        }
        SharedStrategy::HashClientId => (hash_str(&msg.from) % n as u64) as usize,
        SharedStrategy::HashTopic => (hash_str(&msg.topic) % n as u64) as usize,
    }
}

/// The local side of one dispatch: walks the matching filter entries,
/// borrowed from the read-locked tables.
struct Visit<'a> {
    out: Gather<'a>,
    /// Shared-group messages to forward: (node, group, filter).
    shared_fwd: Vec<(Arc<str>, String, String)>,
    remote_groups: HashMap<GroupKey, Vec<Arc<str>>>,
    target: &'a Target,
    msg: &'a Message,
    strategy: SharedStrategy,
    no_loop: bool,
    rr: &'a AtomicUsize,
}

impl<'a> Visit<'a> {
    fn visit(&mut self, filter: &str, e: &'a FilterEntry) {
        let msg = self.msg;
        if !matches!(self.target, Target::Group(..)) && !e.subs.is_empty() {
            self.out.sources += 1;
            for s in e.subs.values() {
                if (s.opts.no_local || self.no_loop) && *s.client_id == *msg.from {
                    continue;
                }
                self.out.push(s);
            }
        }
        for (group, g) in &e.groups {
            match self.target {
                Target::PlainOnly => continue,
                Target::Group(tg, tf) if tg.as_str() != &**group || tf.as_str() != filter => {
                    continue
                }
                _ => {}
            }
            let remote = self
                .remote_groups
                .remove(&(Arc::from(filter), group.clone()));
            let pick_local = match &remote {
                None => true,
                Some(nodes) => match choose(self.strategy, nodes.len() + 1, msg, self.rr) {
                    0 => true,
                    i => {
                        self.shared_fwd.push((
                            nodes[i - 1].clone(),
                            group.to_string(),
                            filter.to_string(),
                        ));
                        false
                    }
                },
            };
            if pick_local {
                if let Some(s) = pick_member(g, msg, self.strategy) {
                    self.out.sources += 1;
                    self.out.push(s);
                }
            }
        }
    }
}

/// The deliveries of one publish, gathered per session.
#[derive(Default)]
struct Gather<'a> {
    out: Vec<(&'a Subscriber, Matches)>,
    /// Filters and shared groups that added subscribers; with more than
    /// one, a session may appear twice and its matches are merged.
    sources: usize,
}

impl<'a> Gather<'a> {
    fn push(&mut self, s: &'a Subscriber) {
        let m = SubMatch {
            opts: s.opts,
            sub_id: s.sub_id,
        };
        self.out.push((s, smallvec::smallvec![m]));
    }

    /// One entry per session (MQTT 5.0 3.3.4: overlapping subscriptions
    /// give one message), in the order first seen.
    fn merged(self) -> Vec<(&'a Subscriber, Matches)> {
        if self.sources <= 1 {
            return self.out;
        }
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(self.out.len());
        let mut merged: Vec<(&'a Subscriber, Matches)> = Vec::with_capacity(self.out.len());
        for (s, m) in self.out {
            match at.get(&*s.client_id) {
                Some(&i) => merged[i].1.extend(m),
                None => {
                    at.insert(&s.client_id, merged.len());
                    merged.push((s, m));
                }
            }
        }
        merged
    }
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
        SharedStrategy::Random | SharedStrategy::Local => rand::random_range(0..n),
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
            let i = rand::random_range(0..n);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retainer::RetainerSettings;
    use crate::session::SessionMsg;
    use emqx_mqtt::packet::SubscriptionOptions;
    use ractor::ActorProcessingErr;
    use tokio::sync::mpsc;

    /// Stands in for a session: forwards deliveries to the test.
    struct Probe;

    type Delivered = (Arc<str>, Arc<Message>, Vec<SubMatch>);

    impl Actor for Probe {
        type Msg = SessionMsg;
        type State = (Arc<str>, mpsc::UnboundedSender<Delivered>, Arc<Inbox>);
        type Arguments = (
            Arc<str>,
            mpsc::UnboundedSender<Delivered>,
            tokio::sync::oneshot::Sender<Arc<Inbox>>,
        );

        async fn pre_start(
            &self,
            me: ActorRef<SessionMsg>,
            (id, tx, give): Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            let inbox = Inbox::new(me);
            let _ = give.send(inbox.clone());
            Ok((id, tx, inbox))
        }

        async fn handle(
            &self,
            _me: ActorRef<SessionMsg>,
            msg: SessionMsg,
            st: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let SessionMsg::Drain = msg {
                let mut got = Vec::new();
                while st.2.take(100, &mut got, Bounds::NONE, usize::MAX) {}
                for (m, matches, _) in got {
                    let _ = st.1.send((st.0.clone(), m, matches.to_vec()));
                }
            }
            Ok(())
        }
    }

    type Rx = mpsc::UnboundedReceiver<Delivered>;

    async fn setup(
        strategy: SharedStrategy,
    ) -> (Arc<Broker>, Rx, mpsc::UnboundedSender<Delivered>) {
        let b = Broker::start(
            Arc::from("n@h"),
            BrokerSettings {
                shared_strategy: strategy,
                ..Default::default()
            },
            Retainer::new(RetainerSettings::default()),
            Arc::new(Metrics::default()),
            Arc::new(Stats::default()),
            Default::default(),
            None,
        )
        .await
        .expect("broker");
        let (tx, rx) = mpsc::unbounded_channel();
        (b, rx, tx)
    }

    async fn sub(
        b: &Broker,
        tx: &mpsc::UnboundedSender<Delivered>,
        client: &str,
        filters: &[(&str, QoS)],
    ) -> ActorRef<SessionMsg> {
        let id: Arc<str> = Arc::from(client);
        let (give, got) = tokio::sync::oneshot::channel();
        let (a, _) = Actor::spawn(None, Probe, (id.clone(), tx.clone(), give))
            .await
            .expect("probe");
        let inbox = got.await.expect("inbox");
        // Subscription identifiers 1, 2, ... tell the filters apart.
        for (i, (f, q)) in filters.iter().enumerate() {
            let s = Subscriber {
                inbox: inbox.clone(),
                client_id: id.clone(),
                opts: SubscriptionOptions {
                    qos: *q,
                    ..Default::default()
                },
                sub_id: Some(i as u32 + 1),
            };
            b.subscribe(f, s).await.expect("subscribe");
        }
        a
    }

    fn publish(b: &Broker, topic: &str, from: &str) -> usize {
        let mut m = Message::system(topic, "x", false, crate::clock::now_ms());
        m.from = Arc::from(from);
        m.qos = QoS::ExactlyOnce;
        b.dispatch(Arc::new(m), Target::All, None, None).0
    }

    async fn drain(rx: &mut Rx) -> Vec<(Arc<str>, Vec<SubMatch>)> {
        let mut out = Vec::new();
        while let Ok(Some((c, _, m))) =
            tokio::time::timeout(std::time::Duration::from_millis(100), rx.recv()).await
        {
            out.push((c, m));
        }
        out
    }

    #[tokio::test]
    async fn overlapping_subscriptions_of_one_client_make_one_delivery() {
        let (b, mut rx, tx) = setup(SharedStrategy::RoundRobin).await;
        sub(
            &b,
            &tx,
            "c1",
            &[
                ("a/#", QoS::AtMostOnce),
                ("a/b", QoS::ExactlyOnce),
                ("+/b", QoS::AtLeastOnce),
            ],
        )
        .await;
        assert_eq!(publish(&b, "a/b", "p"), 1);
        let got = drain(&mut rx).await;
        assert_eq!(got.len(), 1);
        let mut ids: Vec<u32> = got[0].1.iter().filter_map(|m| m.sub_id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3], "one delivery with all three matches");
    }

    #[tokio::test]
    async fn round_robin_shares_evenly_and_each_message_goes_to_one_member() {
        let (b, mut rx, tx) = setup(SharedStrategy::RoundRobin).await;
        for c in ["m1", "m2", "m3"] {
            sub(&b, &tx, c, &[("$share/g/t/+", QoS::AtLeastOnce)]).await;
        }
        for _ in 0..30 {
            assert_eq!(publish(&b, "t/1", "p"), 1);
        }
        let got = drain(&mut rx).await;
        assert_eq!(got.len(), 30);
        for c in ["m1", "m2", "m3"] {
            assert_eq!(got.iter().filter(|(x, _)| &**x == c).count(), 10, "{c}");
        }
        assert_eq!(got[0].1[0].opts.qos, QoS::AtLeastOnce);
    }

    #[tokio::test]
    async fn sticky_keeps_one_member_and_hash_clientid_is_stable_per_publisher() {
        for strategy in [SharedStrategy::Sticky, SharedStrategy::HashClientId] {
            let (b, mut rx, tx) = setup(strategy).await;
            for c in ["m1", "m2", "m3"] {
                sub(&b, &tx, c, &[("$share/g/t", QoS::AtLeastOnce)]).await;
            }
            for _ in 0..20 {
                publish(&b, "t", "same-publisher");
            }
            let got = drain(&mut rx).await;
            assert_eq!(got.len(), 20);
            assert!(got.iter().all(|(c, _)| *c == got[0].0), "{strategy:?}");
        }
    }

    #[tokio::test]
    async fn groups_and_plain_subscribers_each_get_a_copy() {
        let (b, mut rx, tx) = setup(SharedStrategy::Random).await;
        sub(&b, &tx, "g1a", &[("$share/g1/t", QoS::AtMostOnce)]).await;
        sub(&b, &tx, "g2a", &[("$share/g2/t", QoS::AtMostOnce)]).await;
        sub(&b, &tx, "q", &[("$queue/t", QoS::AtMostOnce)]).await;
        sub(&b, &tx, "plain", &[("t", QoS::AtMostOnce)]).await;
        assert_eq!(publish(&b, "t", "p"), 4);
        assert_eq!(drain(&mut rx).await.len(), 4);
    }

    #[tokio::test]
    async fn unsubscribing_the_last_subscriber_removes_the_route() {
        let (b, _rx, tx) = setup(SharedStrategy::RoundRobin).await;
        sub(&b, &tx, "c1", &[("x/+", QoS::AtMostOnce)]).await;
        sub(&b, &tx, "c2", &[("x/+", QoS::AtMostOnce)]).await;
        assert_eq!(b.routes(), vec![("x/+".to_string(), "n@h".to_string())]);
        assert!(b.unsubscribe("x/+", Arc::from("c1")).await.expect("unsub"));
        assert_eq!(b.topics_count(), 1);
        assert!(b.unsubscribe("x/+", Arc::from("c2")).await.expect("unsub"));
        assert!(b.routes().is_empty());
        assert!(!b.unsubscribe("x/+", Arc::from("c2")).await.expect("unsub"));
        assert_eq!(publish(&b, "x/1", "p"), 0);
    }

    #[tokio::test]
    async fn an_ended_session_cannot_remove_its_successors_subscription() {
        let (b, _rx, tx) = setup(SharedStrategy::RoundRobin).await;
        let old = sub(&b, &tx, "c1", &[]).await;
        let _new = sub(&b, &tx, "c1", &[("t", QoS::AtMostOnce)]).await;
        let removed = b
            .unsubscribe_owned("t", Arc::from("c1"), Some(old.get_id().pid()))
            .await
            .expect("unsub");
        assert!(!removed);
        assert_eq!(publish(&b, "t", "p"), 1);
    }
}
