//! Topic shard actors: the single writer of the filters that hash to them.
//!
//! A subscribe or unsubscribe is a call to the shard owning the filter. The
//! shard updates the subscription table (exact map or wildcard trie) and
//! the route table under short write locks, so publishers reading the same
//! tables concurrently only ever see a complete subscription.

use crate::hashing::bucket;
use crate::metrics::Stats;
use crate::peers::{RouteKey, RouteOp};
use crate::tables::{FilterEntry, SharedGroup, SubscribeOutcome, Subscriber, Tables};
use emqx_mqtt::topic;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::sync::Arc;

#[derive(RactorMessage)]
pub enum ShardMsg {
    Subscribe(Arc<str>, Subscriber, RpcReplyPort<SubscribeOutcome>),
    /// Removes a client's subscription; with `Some(actor)`, only if the
    /// subscription belongs to that session actor (a session that ends must
    /// not remove the subscriptions of its successor with the same id).
    Unsubscribe(Arc<str>, Arc<str>, Option<u64>, RpcReplyPort<bool>),
}

pub struct ShardActor;

pub struct ShardState {
    index: usize,
    tables: Arc<Tables>,
    node: Arc<str>,
    stats: Arc<Stats>,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = (usize, Arc<Tables>, Arc<str>, Arc<Stats>);

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        (index, tables, node, stats): Self::Arguments,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            index,
            tables,
            node,
            stats,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Subscribe(filter, sub, reply) => {
                let out = st.subscribe(&filter, sub);
                let _ = reply.send(out);
            }
            ShardMsg::Unsubscribe(filter, client, owner, reply) => {
                let out = st.unsubscribe(&filter, &client, owner);
                let _ = reply.send(out);
            }
        }
        Ok(())
    }
}

/// The shard that owns a subscribed filter: chosen by the real filter, so
/// `a/b` and `$share/g/a/b` (which share one table entry and one route)
/// are always written by the same actor, in order.
pub fn owner_shard(filter: &str, n: usize) -> usize {
    bucket(split(filter).1, n)
}

/// Splits a subscribed filter into (shared group, real filter).
fn split(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(filter) {
        Ok(Some((g, f))) => (Some(g), f),
        _ => (None, filter),
    }
}

/// The cluster routes an entry stands for: one for its plain subscribers,
/// one per shared-subscription group.
fn route_keys(real: &str, e: &FilterEntry) -> Vec<RouteKey> {
    let mut v = Vec::with_capacity(1 + e.groups.len());
    if !e.subs.is_empty() {
        v.push(RouteKey::plain(real));
    }
    for g in e.groups.keys() {
        v.push(RouteKey {
            filter: real.to_string(),
            group: Some(g.to_string()),
        });
    }
    v
}

impl ShardState {
    /// Tells the cluster service which routes of this node appeared or went.
    fn emit(&self, before: Vec<RouteKey>, after: Vec<RouteKey>) {
        let Some(tx) = &self.tables.route_tx else {
            return;
        };
        for k in before.iter().filter(|k| !after.contains(k)) {
            let _ = tx.send(RouteOp::Del(k.clone()));
        }
        for k in after.iter().filter(|k| !before.contains(k)) {
            let _ = tx.send(RouteOp::Add(k.clone()));
        }
    }

    fn with_entry<R>(&self, real: &str, f: impl FnOnce(&mut FilterEntry) -> R) -> (R, bool) {
        // Returns f's result and whether the entry is empty afterwards.
        if topic::is_wildcard(real) {
            let mut t = self.tables.wild.write();
            if t.get(real).is_none() {
                t.insert(real, FilterEntry::default());
            }
            let (r, empty) = match t.get_mut(real) {
                Some(e) => {
                    let before = route_keys(real, e);
                    let r = f(e);
                    self.emit(before, route_keys(real, e));
                    (r, e.is_empty())
                }
                None => unreachable_entry(),
            };
            if empty {
                t.remove(real);
            }
            (r, empty)
        } else {
            let shard = &self.tables.exact[bucket(real, self.tables.exact.len())];
            let mut m = shard.write();
            let e = m.entry(Arc::from(real)).or_default();
            let before = route_keys(real, e);
            let r = f(e);
            self.emit(before, route_keys(real, e));
            let empty = e.is_empty();
            if empty {
                m.remove(real);
            }
            (r, empty)
        }
    }

    fn subscribe(&mut self, filter: &Arc<str>, sub: Subscriber) -> SubscribeOutcome {
        let (group, real) = split(filter);
        debug_assert_eq!(owner_shard(filter, self.tables.exact.len()), self.index);
        let (is_new, _) = self.with_entry(real, |e| match group {
            None => e.subs.insert(sub.client_id.clone(), sub).is_none(),
            Some(g) => {
                let grp = e
                    .groups
                    .entry(Arc::from(g))
                    .or_insert_with(SharedGroup::default);
                match grp
                    .members
                    .iter_mut()
                    .find(|m| m.client_id == sub.client_id)
                {
                    Some(m) => {
                        *m = sub;
                        false
                    }
                    None => {
                        grp.members.push(sub);
                        true
                    }
                }
            }
        });
        if is_new {
            Stats::add(
                &self.stats.subscriptions,
                Some(&self.stats.subscriptions_max),
                1,
            );
            if group.is_some() {
                Stats::add(&self.stats.shared_subscriptions, None, 1);
            }
            let mut routes = self.tables.routes.write();
            let nodes = routes.entry(Arc::from(real)).or_default();
            if !nodes.contains(&self.node) {
                nodes.push(self.node.clone());
            }
        }
        SubscribeOutcome { is_new }
    }

    fn unsubscribe(&mut self, filter: &Arc<str>, client: &Arc<str>, owner: Option<u64>) -> bool {
        let (group, real) = split(filter);
        let owned = |s: &Subscriber| owner.is_none_or(|id| s.inbox.session_id() == id);
        let (removed, empty) = self.with_entry(real, |e| match group {
            None => {
                if e.subs.get(client).is_some_and(owned) {
                    e.subs.remove(client).is_some()
                } else {
                    false
                }
            }
            Some(g) => {
                let mut removed = false;
                if let Some(grp) = e.groups.get_mut(g) {
                    let before = grp.members.len();
                    grp.members
                        .retain(|m| !(&m.client_id == client && owned(m)));
                    removed = grp.members.len() != before;
                    if grp.members.is_empty() {
                        e.groups.remove(g);
                    }
                }
                removed
            }
        });
        if removed {
            Stats::add(&self.stats.subscriptions, None, -1);
            if group.is_some() {
                Stats::add(&self.stats.shared_subscriptions, None, -1);
            }
        }
        if empty {
            let mut routes = self.tables.routes.write();
            if let Some(nodes) = routes.get_mut(real) {
                nodes.retain(|n| n != &self.node);
                if nodes.is_empty() {
                    routes.remove(real);
                }
            }
        }
        removed
    }
}

fn unreachable_entry<R>() -> R {
    // The entry was inserted just above under the same write lock.
    panic!("topic trie lost an entry under its own write lock")
}
