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

    /// Hands `msg` to `node` for its plain subscribers.
    fn forward(&self, node: &str, msg: Arc<Message>) -> Forwarded;

    /// Hands `msg` to `node` for one member of shared group `group` of
    /// `filter` there.
    fn forward_shared(&self, node: &str, msg: Arc<Message>, group: &str, filter: &str)
        -> Forwarded;
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
    fn takeover_elsewhere<'a>(
        &'a self,
        lock: &'a ClientLock,
    ) -> BoxFuture<'a, Option<SessionSnapshot>>;
}
