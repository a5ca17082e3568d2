//! Cluster discovery: strategies that find the names of the nodes a node
//! should cluster with (EMQX's ekka_cluster_* modules).
//!
//! A strategy is plain code behind the [`Strategy`] trait; the
//! [`DiscoveryActor`] wraps one so the autocluster loop can ask it for
//! node names without caring how they are found: `manual`, `static`,
//! `dns`, `etcd` and `k8s` (the Kubernetes API server).

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub mod dns;
pub mod etcd;
pub mod hosts;
pub mod http;
pub mod k8s;
pub mod manual;
pub mod static_seeds;
mod strategy;
pub mod tls;

pub use dns::Dns;
pub use etcd::Etcd;
pub use k8s::K8s;
pub use manual::Manual;
pub use static_seeds::Static;
pub use strategy::{check_node_name, DiscoveryError, Strategy};

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
