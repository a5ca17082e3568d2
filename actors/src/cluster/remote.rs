//! The cluster as the broker sees it ([`RemoteRoutes`]): the other nodes
//! with routes for a topic, the forwarding that reaches them, and what
//! they still hold for a node that is gone. Apart from
//! [`super::view`], which the wire types reach, since this asks the other
//! nodes over the wire.

use super::rpc::call_peer_within;
use super::view::ClusterView;
use super::wire::{Req, Resp};
use crate::forward::{ForwardError, Queued};
use crate::peers::{BoxFuture, Forwarded, GroupKey, RemoteRoutes};
use emqx_mqtt::message::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The bound of one peer's answer to [`RemoteRoutes::held_for`].
const HELD_TIMEOUT: Duration = Duration::from_secs(10);

fn forwarded(r: Result<Queued, ForwardError>) -> Forwarded {
    match r {
        Ok(Queued::Room) => Forwarded::Queued,
        Ok(Queued::Over(b)) => Forwarded::Congested(Box::pin(b.drained())),
        Err(_) => Forwarded::Dropped,
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
