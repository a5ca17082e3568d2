//! Calls between the cluster services of two nodes: each node's
//! remotable endpoint is found through its process group, and requests
//! and notes travel encoded ([`super::wire`]).

use super::wire::{self, Note, Req, Resp};
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use std::time::Duration;

/// The process group of a node's endpoint.
pub fn group_of(node: &str) -> String {
    format!("emqx_cluster:{node}")
}

/// How long a join or a peer call may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Why a call to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no link to {0}")]
    NoLink(String),
    #[error("{0} did not answer")]
    NoAnswer(String),
    #[error("{0}: {1}")]
    Call(String, String),
    #[error("{0}: {1}")]
    Decode(String, wire::WireError),
}

/// The remotable face of the cluster service.
#[derive(RactorClusterMessage)]
pub enum EndpointMsg {
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    Cast(Vec<u8>),
}

/// Finds a peer's endpoint (after its link is ready).
pub fn endpoint_of(node: &str) -> Option<ActorRef<EndpointMsg>> {
    ractor::pg::get_members(&group_of(node))
        .into_iter()
        .next()
        .map(Into::into)
}

/// Sends a request to a peer and decodes its reply.
pub async fn call_peer(node: &str, req: &Req) -> Result<Resp, PeerError> {
    call_peer_within(node, req, CALL_TIMEOUT).await
}

/// [`call_peer`] with its own timeout.
pub async fn call_peer_within(node: &str, req: &Req, timeout: Duration) -> Result<Resp, PeerError> {
    let ep = endpoint_of(node).ok_or_else(|| PeerError::NoLink(node.to_string()))?;
    let bytes = wire::encode(req);
    match ep
        .call(|r| EndpointMsg::Call(bytes, r), Some(timeout))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(b)) => {
            wire::decode(&b).map_err(|e| PeerError::Decode(node.to_string(), e))
        }
        Ok(_) => Err(PeerError::NoAnswer(node.to_string())),
        Err(e) => Err(PeerError::Call(node.to_string(), e.to_string())),
    }
}

pub fn cast_peer(node: &str, note: &Note) -> bool {
    match endpoint_of(node) {
        Some(ep) => ep.cast(EndpointMsg::Cast(wire::encode(note))).is_ok(),
        None => false,
    }
}
