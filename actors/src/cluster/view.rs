//! The cluster's side of the publish path: the replicated routes of the
//! other nodes, which of them are up, and the forwarder that reaches them,
//! offered to the broker as [`RemoteRoutes`].

use super::routes::ClusterRoutes;
use super::rpc::call_peer_within;
use super::wire::{Req, Resp};
use crate::forward::{ForwardError, Forwarder, Queued};
use crate::peers::{BoxFuture, Forwarded, GroupKey, RemoteRoutes, RouteKey};
use emqx_mqtt::message::Message;
use emqx_mqtt::topic;
use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Remote routes and which peers are up; written by the cluster service,
/// read by every publish.
pub struct ClusterView {
    pub me: Arc<str>,
    pub routes: RwLock<ClusterRoutes>,
    pub up: RwLock<HashSet<Arc<str>>>,
    pub forwarder: Arc<Forwarder>,
}

/// How long a node asked for what it holds for a down node waits to
/// route the filters to the asking node ([`ClusterView::held_here`]).
const ROUTE_WAIT: Duration = Duration::from_secs(5);
/// How long it then lets the publishes that looked at its routes before
/// they changed reach the forwarding queues (a synchronous step of the
/// publish path, microseconds long) before it copies them.
const IN_FLIGHT: Duration = Duration::from_millis(100);
/// The bound of one peer's answer to [`RemoteRoutes::held_for`].
const HELD_TIMEOUT: Duration = Duration::from_secs(10);

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

impl ClusterView {
    /// This node's part of [`RemoteRoutes::held_for`]: once its routes
    /// send what matches `filters` to `to` (or after [`ROUTE_WAIT`], with
    /// a warning), copies of what it holds for `down` that matches them.
    pub async fn held_here(&self, down: &str, filters: &[String], to: &str) -> Vec<Message> {
        if to != &*self.me {
            let keys: Vec<RouteKey> = filters
                .iter()
                .filter(|f| !matches!(topic::parse_shared(f), Ok(Some(_))))
                .map(|f| RouteKey::plain(f))
                .collect();
            let deadline = Instant::now() + ROUTE_WAIT;
            loop {
                let routed = {
                    let r = self.routes.read();
                    keys.iter().all(|k| r.holds(to, k))
                };
                if routed {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "cluster: {to} asked for what is held for {down}, and its routes did not arrive within {ROUTE_WAIT:?}: what is published meanwhile may miss its sessions"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(IN_FLIGHT).await;
        let wanted = |t: &str| filters.iter().any(|f| topic::matches(f, t));
        self.forwarder
            .held_for(down, wanted)
            .into_iter()
            .map(|m| (*m).clone())
            .collect()
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

    fn held_for<'a>(&'a self, down: &'a str, filters: &'a [String]) -> BoxFuture<'a, Vec<Message>> {
        Box::pin(async move {
            let mut peers: Vec<Arc<str>> = self
                .up
                .read()
                .iter()
                .filter(|n| ***n != *down && **n != self.me)
                .cloned()
                .collect();
            peers.sort();
            let req = Req::HeldFor {
                down: down.to_string(),
                filters: filters.to_vec(),
                to: self.me.to_string(),
            };
            let mut calls = tokio::task::JoinSet::new();
            for p in peers {
                let req = req.clone();
                calls.spawn(async move {
                    let r = call_peer_within(&p, &req, HELD_TIMEOUT).await;
                    (p, r)
                });
            }
            let mut out = self.held_here(down, filters, &self.me).await;
            while let Some(r) = calls.join_next().await {
                match r {
                    Ok((_, Ok(Resp::Held(msgs)))) => out.extend(msgs),
                    Ok((p, Ok(other))) => {
                        tracing::warn!(
                            "cluster: {p} answered {other:?} for what it holds for {down}"
                        )
                    }
                    Ok((p, Err(e))) => {
                        tracing::warn!("cluster: {p} did not say what it holds for {down}: {e}")
                    }
                    Err(e) => tracing::warn!("cluster: asking for what is held for {down}: {e}"),
                }
            }
            out
        })
    }
}
