//! Cluster discovery: strategies that find the names of the nodes a node
//! should cluster with (EMQX's ekka_cluster_* modules).
//!
//! A strategy is plain code behind the [`Strategy`] trait; the
//! [`DiscoveryActor`] wraps one so the autocluster loop can ask it for
//! node names without caring how they are found: `manual`, `static`,
//! `dns`, `etcd` and `k8s` (the Kubernetes API server).

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::future::Future;

pub mod dns;
pub mod etcd;
pub mod hosts;
mod http;
pub mod k8s;
pub mod manual;
pub mod static_seeds;
pub mod tls;

pub use dns::Dns;
pub use etcd::Etcd;
pub use k8s::K8s;
pub use manual::Manual;
pub use static_seeds::Static;

/// Why a discovery round failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A seed or record that is not a valid `name@host`.
    #[error("invalid node name {0:?}: expected name@host")]
    InvalidNodeName(String),
    /// The backing service (DNS, etcd, API server) could not be reached.
    #[error("discovery backend unavailable: {0}")]
    Unavailable(String),
    /// Settings that cannot work (a missing file, a bad URL): the node
    /// should not start. The text names the configuration key.
    #[error("{0}")]
    Config(String),
}

/// A way of finding cluster members.
pub trait Strategy: Send + Sync + 'static {
    /// The `cluster.discovery_strategy` value this implements.
    fn name(&self) -> &'static str;

    /// The node names found now (this node may be among them).
    fn discover(&mut self) -> impl Future<Output = Result<Vec<String>, DiscoveryError>> + Send;

    /// Takes the strategy's cluster lock before a discovery-and-join
    /// round, waiting a bounded time for another holder: `Ok(true)` when
    /// it is held, `Ok(false)` when the strategy has none (EMQX's
    /// `ignore`; the default), an error when the round should be skipped.
    /// The autocluster loop calls [`unlock`](Strategy::unlock) after the
    /// round whatever its outcome.
    fn lock(&mut self) -> impl Future<Output = Result<bool, DiscoveryError>> + Send {
        async { Ok(false) }
    }

    /// Releases what [`lock`](Strategy::lock) took; a no-op by default.
    fn unlock(&mut self) -> impl Future<Output = Result<(), DiscoveryError>> + Send {
        async { Ok(()) }
    }

    /// Whether the node should run the autocluster loop at all
    /// (`manual` never does: joins are typed by an operator).
    fn autocluster(&self) -> bool {
        true
    }
}

/// Checks the `name@host` shape EMQX requires of node names: the part
/// before `@` is `[0-9A-Za-z_-]+` and the host is not empty.
pub fn check_node_name(s: &str) -> Result<(), DiscoveryError> {
    let bad = || DiscoveryError::InvalidNodeName(s.to_string());
    let (name, host) = s.split_once('@').ok_or_else(bad)?;
    if name.is_empty()
        || host.is_empty()
        || host.contains('@')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad());
    }
    Ok(())
}

/// Messages of a discovery actor.
#[derive(ractor_cluster::RactorMessage)]
pub enum DiscoveryMsg {
    /// Run one discovery round and reply with the node names found.
    Discover(RpcReplyPort<Result<Vec<String>, DiscoveryError>>),
}

/// An actor that owns one strategy and answers discovery rounds in order.
pub struct DiscoveryActor<S: Strategy>(std::marker::PhantomData<S>);

impl<S: Strategy> Default for DiscoveryActor<S> {
    fn default() -> Self {
        DiscoveryActor(std::marker::PhantomData)
    }
}

impl<S: Strategy> Actor for DiscoveryActor<S> {
    type Msg = DiscoveryMsg;
    type State = S;
    type Arguments = S;

    async fn pre_start(&self, _me: ActorRef<DiscoveryMsg>, s: S) -> Result<S, ActorProcessingErr> {
        Ok(s)
    }

    async fn handle(
        &self,
        _me: ActorRef<DiscoveryMsg>,
        msg: DiscoveryMsg,
        s: &mut S,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DiscoveryMsg::Discover(reply) => {
                let r = s.discover().await;
                if let Err(e) = &r {
                    tracing::warn!(strategy = s.name(), "discovery failed: {e}");
                }
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_emqx_rules() {
        assert!(check_node_name("emqx@127.0.0.1").is_ok());
        assert!(check_node_name("emqx-12@host.example").is_ok());
        assert!(check_node_name("e_1@h").is_ok());
        for bad in ["emqx", "@h", "emqx@", "em qx@h", "a@b@c", "é@h"] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_actor_answers_with_its_strategy() {
        let s = Static::new(vec!["a@h1".into(), "b@h2".into()]).expect("valid seeds");
        let (a, h) = Actor::spawn(None, DiscoveryActor::<Static>::default(), s)
            .await
            .expect("spawn");
        let r = ractor::call!(a, DiscoveryMsg::Discover).expect("call");
        assert_eq!(r, Ok(vec!["a@h1".to_string(), "b@h2".to_string()]));
        a.stop(None);
        h.await.expect("join");
    }
}
