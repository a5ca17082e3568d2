//! The cluster's side of the publish path: the replicated routes of the
//! other nodes, which of them are up, and the forwarder that reaches them,
//! offered to the broker as [`RemoteRoutes`].

use super::routes::ClusterRoutes;
use crate::forward::{ForwardError, Forwarder, Queued};
use crate::peers::{Forwarded, GroupKey, RemoteRoutes};
use emqx_mqtt::message::Message;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Remote routes and which peers are up; written by the cluster service,
/// read by every publish.
pub struct ClusterView {
    pub me: Arc<str>,
    pub routes: RwLock<ClusterRoutes>,
    pub up: RwLock<HashSet<Arc<str>>>,
    pub forwarder: Arc<Forwarder>,
}

fn forwarded(r: Result<Queued, ForwardError>) -> Forwarded {
    match r {
        Ok(Queued::Room) => Forwarded::Queued,
        Ok(Queued::Over(b)) => Forwarded::Congested(Box::pin(b.drained())),
        Err(_) => Forwarded::Dropped,
    }
}

impl ClusterView {
    pub fn new(me: Arc<str>, forwarder: Arc<Forwarder>) -> ClusterView {
        ClusterView {
            // A replicant's copy carries its own routes too: left out.
            routes: RwLock::new(ClusterRoutes::excluding(&me)),
            me,
            up: RwLock::default(),
            forwarder,
        }
    }
}

impl RemoteRoutes for ClusterView {
    fn matching(
        &self,
        topic: &str,
        plain: &mut Vec<Arc<str>>,
        groups: &mut HashMap<GroupKey, Vec<Arc<str>>>,
    ) {
        let up = self.up.read();
        self.routes.read().match_each(topic, |filter, fr| {
            for n in fr.nodes.iter() {
                if !plain.contains(n) {
                    plain.push(n.clone());
                }
            }
            for (g, nodes) in &fr.groups {
                let live: Vec<Arc<str>> =
                    nodes.iter().filter(|n| up.contains(*n)).cloned().collect();
                if !live.is_empty() {
                    groups.insert((Arc::from(filter), g.clone()), live);
                }
            }
        });
    }

    fn forward(
        &self,
        node: &str,
        msg: Arc<Message>,
        shared: Option<(&str, &str)>,
        acked: Option<crate::durable::Part>,
    ) -> Forwarded {
        forwarded(self.forwarder.forward_acked(node, msg, shared, acked))
    }
}
