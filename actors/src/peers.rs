//! What the node runtime needs from the other nodes of its cluster,
//! declared here, at the bottom of the node layer, and implemented by the
//! cluster (`cluster/`, `forward/`). The node never imports the cluster:
//! it is handed these at construction.
//!
//! * [`RemoteRoutes`]: the publish path asks which other nodes want a
//!   topic and hands them the message.
//! * [`RouteOp`]: the changes of this node's own routes, which the shard
//!   actors report for the cluster to replicate.
//! * [`ClientRegistry`]: the cluster-wide side of opening a session: a
//!   client id is locked cluster-wide, and its sessions on other nodes are
//!   discarded or handed over.
//! * [`SessionStore`]: the replicated home of persistent sessions: a node
//!   claims a session with an epoch that fences the node before it, and
//!   writes its rows under that epoch.

use emqx_mqtt::channel::SessionSnapshot;
use emqx_mqtt::message::Message;
use emqx_mqtt::topic;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

pub use crate::outbox::Backpressure;

/// What a route is for: plain subscribers of a filter, or the members of
/// one shared-subscription group of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteKey {
    pub filter: String,
    pub group: Option<String>,
}

impl RouteKey {
    pub fn plain(filter: &str) -> RouteKey {
        RouteKey {
            filter: filter.to_string(),
            group: None,
        }
    }

    /// The key of a subscribed filter (`$share/g/f` and `$queue/f` included).
    pub fn of_subscription(filter: &str) -> RouteKey {
        match topic::parse_shared(filter) {
            Ok(Some((g, f))) => RouteKey {
                filter: f.to_string(),
                group: Some(g.to_string()),
            },
            _ => RouteKey::plain(filter),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteOp {
    Add(RouteKey),
    Del(RouteKey),
}

/// `(filter, group)` of a shared subscription.
pub type GroupKey = (Arc<str>, Arc<str>);

/// The other nodes' routes and the way to them, as the publish path sees
/// them. Called once per publish on this node, so implementations read
/// shared tables and never wait.
pub trait RemoteRoutes: Send + Sync {
    /// For `topic`: the other nodes with plain subscribers of a matching
    /// filter (each once, into `plain`), whether they are up or not, and for
    /// each shared group of a matching filter its live nodes with members
    /// (into `groups`).
    ///
    /// A member that is down (or only seems down: a slow link, a split that
    /// will heal) keeps its plain routes here, so its subscribers' messages
    /// wait in the forwarder's queue for it (bounded by the queue limit)
    /// instead of being dropped; a node that leaves or is removed has no
    /// routes left. A shared group picks among live members only.
    fn matching(
        &self,
        topic: &str,
        plain: &mut Vec<Arc<str>>,
        groups: &mut HashMap<GroupKey, Vec<Arc<str>>>,
    );

    /// Hands `msg` to `node` for its plain subscribers, or with `shared`
    /// (`(group, filter)`) for one member of that shared group there.
    /// `acked`, if given, is resolved once `node` acknowledges the message
    /// (it has it on disk for its persistent sessions), or sooner when
    /// that cannot be waited for (the node is unreachable, the message is
    /// dropped).
    fn forward(
        &self,
        node: &str,
        msg: Arc<Message>,
        shared: Option<(&str, &str)>,
        acked: Option<crate::durable::Part>,
    ) -> Forwarded;

    /// The messages for `down`'s plain subscribers of one of `filters`
    /// that this node and every running peer hold and `down` has not
    /// acknowledged (they wait in the forwarding queues for it): a node
    /// that takes a persistent session of `down` gathers them, since
    /// `down` may never come back. Each node answers once it routes those
    /// filters to `to` (the taking node, whose new routes send it what is
    /// published from then on), so nothing published meanwhile falls
    /// between the two. Copies, each node's in the order it sends them; a
    /// node that does not answer in time gives none.
    fn held_for<'a>(&'a self, down: &'a str, filters: &'a [String]) -> BoxFuture<'a, Vec<Message>>;
}

/// What became of a message handed to another node.
pub enum Forwarded {
    Queued,
    /// Queued past the queue's limit: the publisher of a QoS 1/2 message
    /// reads nothing more from its client until this ends (its next
    /// acknowledgement waits), as for a local subscriber's full inbox.
    Congested(Backpressure),
    /// Dropped (the node's queue is full or the node is gone).
    Dropped,
}

/// The cluster as a broker is built with it. All are `None` for a broker
/// that runs alone (unit tests); a node always has both.
#[derive(Default, Clone)]
pub struct BrokerLinks {
    /// Other nodes' routes, read by the publish path.
    pub remote: Option<Arc<dyn RemoteRoutes>>,
    /// Where the shard actors report this node's route changes.
    pub route_tx: Option<UnboundedSender<RouteOp>>,
    /// Where retained messages published here go to be replicated.
    pub retain_tx: Option<UnboundedSender<Message>>,
}

/// A future a trait object can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The cluster-wide lock of one client id, held while its session opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLock {
    pub client: String,
    /// The node that keeps the lock.
    pub owner: String,
    /// The running peers when the lock was taken: where other sessions of
    /// the client id may live.
    pub peers: Vec<String>,
}

/// Why a client id could not be locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("client id {0} is locked by another connect")]
    Locked(String),
}

/// The cluster-wide client registry (EMQX's emqx_cm with its cluster
/// lock), as the connect sequence uses it.
pub trait ClientRegistry: Send + Sync {
    /// Takes the cluster lock of `client`, waiting a few seconds at most.
    fn lock<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<ClientLock, RegistryError>>;

    fn unlock(&self, lock: ClientLock) -> BoxFuture<'_, ()>;

    /// Ends the sessions of the locked client id on every other node
    /// (clean start).
    fn discard_elsewhere<'a>(&'a self, lock: &'a ClientLock) -> BoxFuture<'a, ()>;

    /// Takes the session of the locked client id over from whichever
    /// other node holds it.
    fn takeover_elsewhere<'a>(&'a self, lock: &'a ClientLock) -> BoxFuture<'a, Option<HandedOver>>;
}

/// A session handed over by the node that held it.
#[derive(Debug, Clone)]
pub struct HandedOver {
    pub snapshot: SessionSnapshot,
    /// The node the session was taken from, gone, when the session was
    /// still gathering what the other nodes held for that node (see
    /// [`RemoteRoutes::held_for`]): its new holder gathers it instead.
    pub gathering_from: Option<Arc<str>>,
}

/// A claim of a session ([`SessionStore::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaim {
    /// Higher than every epoch the session had before.
    pub epoch: u64,
    /// The node that held the session until now, and under which epoch
    /// (none: there was no session).
    pub previous: Option<(String, u64)>,
}

/// One change to a session's rows: `table` is the caller's (a small
/// number), `key` is within the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOp {
    Put {
        table: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: u8,
        key: Vec<u8>,
    },
    /// Removes every row of the session in `table`.
    Clear {
        table: u8,
    },
}

/// A session as its store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSession {
    /// Who holds it, and under which epoch.
    pub owner: Option<(String, u64)>,
    /// `(table, key, value)`, in table then key order.
    pub rows: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

/// Why the store did not do it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No quorum answered in time: the outcome of a write is unknown (it
    /// may still be committed).
    #[error("{0}")]
    Unavailable(String),
    /// A later claim took the session (or it was released): this node no
    /// longer holds it.
    #[error("session {client} is held by {owner:?} now")]
    Fenced {
        client: String,
        owner: Option<(String, u64)>,
    },
}

/// The replicated home of persistent sessions (the durable storage's
/// shards): what a node needs to take a session from a node that is gone,
/// and to make sure a node that lost one cannot change it.
pub trait SessionStore: Send + Sync {
    /// Takes `client`'s session for this node.
    fn claim<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<SessionClaim, StoreError>>;

    /// Takes `client`'s session for this node from `from` (a node the
    /// cluster sees down), only if `from` still holds it under `epoch`:
    /// `Fenced` (with the holder it has, or none) otherwise.
    fn adopt<'a>(
        &'a self,
        client: &'a str,
        from: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<SessionClaim, StoreError>>;

    /// `client`'s session as committed so far (read at its shard's
    /// leader: everything committed before is in it).
    fn read<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<StoredSession, StoreError>>;

    /// Changes `client`'s rows, if this node still holds the session
    /// under `epoch`; resolves once committed.
    fn write<'a>(
        &'a self,
        client: &'a str,
        epoch: u64,
        ops: Vec<SessionOp>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Ends `client`'s session (expired, or replaced by a clean start):
    /// its owner and every row go, if this node still holds it under
    /// `epoch`.
    fn release<'a>(&'a self, client: &'a str, epoch: u64) -> BoxFuture<'a, Result<(), StoreError>>;
}
