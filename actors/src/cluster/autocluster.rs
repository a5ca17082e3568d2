//! The autocluster loop (EMQX's ekka_autocluster): while discovery is on
//! and the node is alone, every few seconds ask the discovery strategy for
//! node names, find out when each of them started, and join the oldest
//! one found. Nodes started together therefore all join the same node and
//! form one cluster instead of several. Only cores count: a core joins the
//! oldest core (itself included), a replicant the oldest core found.

use super::membership::Role;
use super::service::{probe, Dialer, SvcMsg};
use emqx_discovery::Strategy;
use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;
use std::time::Duration;

/// How often the loop runs until the node has joined (EMQX: 5 s).
pub const PERIOD: Duration = Duration::from_secs(5);

/// Picks the node to join among `(name, started_at)` candidates, this node
/// included: the oldest, ties broken by name. `None` when it is this node.
pub fn pick_oldest(me: &str, my_start: u64, found: &[(String, u64)]) -> Option<String> {
    let mut best = (my_start, me.to_string());
    for (n, t) in found {
        if (*t, n.clone()) < best {
            best = (*t, n.clone());
        }
    }
    (best.1 != me).then_some(best.1)
}

/// Runs until the service goes away.
pub async fn run<S: Strategy>(
    mut strategy: S,
    svc: ActorRef<SvcMsg>,
    node_server: ActorRef<NodeServerMessage>,
    dialer: Dialer,
    me: String,
    my_start: u64,
    my_role: Role,
) {
    if !strategy.autocluster() {
        return;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        let state = svc
            .call(SvcMsg::Clustered, Some(Duration::from_secs(5)))
            .await;
        let (clustered, enabled) = match state {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            Ok(_) => (false, false),
            Err(_) => return,
        };
        if enabled && !clustered {
            // The strategy's lock (etcd's) is held for the whole round, so
            // nodes starting together join one at a time; it is released
            // whatever the round's outcome.
            match strategy.lock().await {
                Ok(locked) => {
                    if locked {
                        tracing::info!(strategy = strategy.name(), "autocluster: lock taken");
                    }
                    let mine = (me.as_str(), my_start, my_role);
                    round(&mut strategy, &svc, &node_server, &dialer, mine).await;
                    if locked {
                        match strategy.unlock().await {
                            Ok(()) => tracing::info!(
                                strategy = strategy.name(),
                                "autocluster: lock released"
                            ),
                            Err(e) => tracing::warn!(
                                strategy = strategy.name(),
                                "autocluster: unlock failed: {e}"
                            ),
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    strategy = strategy.name(),
                    "autocluster: cannot take the lock: {e}"
                ),
            }
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// One round: discover, ask each node found when it started, join the
/// oldest (unless that is this node).
async fn round<S: Strategy>(
    strategy: &mut S,
    svc: &ActorRef<SvcMsg>,
    node_server: &ActorRef<NodeServerMessage>,
    dialer: &Dialer,
    (me, my_start, my_role): (&str, u64, Role),
) {
    let names = match strategy.discover().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(
                strategy = strategy.name(),
                "autocluster: discovery failed: {e}"
            );
            return;
        }
    };
    let mut found = Vec::new();
    for n in names.into_iter().filter(|n| n != me) {
        match probe(node_server, dialer, &n).await {
            Some((start, Role::Core)) => found.push((n, start)),
            Some((_, Role::Replicant)) => {
                tracing::debug!("autocluster: {n} is a replicant; only cores are joined")
            }
            None => {}
        }
    }
    // A replicant never starts a cluster of its own: it waits for a core.
    let my_start = match my_role {
        Role::Core => my_start,
        Role::Replicant => u64::MAX,
    };
    if let Some(target) = pick_oldest(me, my_start, &found) {
        tracing::info!(strategy = strategy.name(), "autocluster: joining {target}");
        let t = target.clone();
        let r = svc
            .call(|r| SvcMsg::Join(t, r), Some(Duration::from_secs(30)))
            .await;
        match r {
            Ok(ractor::rpc::CallResult::Success(Ok(_))) => {
                tracing::info!("autocluster: joined the cluster through {target}")
            }
            Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                tracing::info!("autocluster: failed to join the cluster: {e}")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_picks_the_same_oldest_node() {
        let started = [
            ("a@h".to_string(), 30),
            ("b@h".to_string(), 10),
            ("c@h".to_string(), 20),
        ];
        for (me, t) in &started {
            let others: Vec<(String, u64)> =
                started.iter().filter(|(n, _)| n != me).cloned().collect();
            let pick = pick_oldest(me, *t, &others);
            if me == "b@h" {
                assert_eq!(pick, None, "the oldest waits for the others");
            } else {
                assert_eq!(pick.as_deref(), Some("b@h"));
            }
        }
    }

    #[test]
    fn ties_go_to_the_smallest_name() {
        let pick = pick_oldest("b@h", 5, &[("a@h".into(), 5), ("c@h".into(), 5)]);
        assert_eq!(pick.as_deref(), Some("a@h"));
        assert_eq!(pick_oldest("a@h", 5, &[("b@h".into(), 5)]), None);
    }
}
