//! The durable storage shards' messages over the cluster's connections:
//! a [`Transport`] that sends each [`Rpc`] as a [`Req::Ds`] to the peer's
//! endpoint, which hands it to its replica (see `service::Endpoint`).

use super::ds::{Rpc, RpcReply, Transport, TransportError};
use super::rpc::{call_peer_within, PeerError};
use super::wire::{Req, Resp};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long a Raft message or a forwarded command may wait for its
/// answer. openraft bounds its own calls more tightly; a forwarded
/// command is bounded by its caller.
const DS_CALL: Duration = Duration::from_secs(10);
/// A whole snapshot travels in one call (in parts when it is big).
const DS_SNAPSHOT: Duration = Duration::from_secs(60);

/// [`Transport`] over the cluster's links.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterTransport;

impl Transport for ClusterTransport {
    fn call(
        &self,
        to: &str,
        shard: u16,
        rpc: Rpc,
    ) -> Pin<Box<dyn Future<Output = Result<RpcReply, TransportError>> + Send + 'static>> {
        let to = to.to_string();
        Box::pin(async move {
            let timeout = match rpc {
                Rpc::Snapshot { .. } => DS_SNAPSHOT,
                _ => DS_CALL,
            };
            let req = Req::Ds {
                shard,
                rpc: Box::new(rpc),
            };
            answer(call_peer_within(&to, &req, timeout).await)
        })
    }
}

/// A peer's reply as the shard's replica sees it.
fn answer(r: Result<Resp, PeerError>) -> Result<RpcReply, TransportError> {
    match r {
        Ok(Resp::Ds(reply)) => Ok(*reply),
        // An older node, or one that runs no durable storage.
        Ok(Resp::Refused(why)) => Ok(RpcReply::Refused(why)),
        Ok(other) => Err(TransportError(format!("unexpected answer {other:?}"))),
        Err(e) => Err(TransportError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ds::{Command, Reply};
    use crate::cluster::wire;

    #[test]
    fn a_shard_message_and_its_answer_cross_the_wire_whole() {
        let rpc = Rpc::Write(Command::Claim {
            client: "c1".into(),
            node: "emqx1@127.0.0.1".into(),
        });
        let req = Req::Ds {
            shard: 7,
            rpc: Box::new(rpc.clone()),
        };
        match wire::decode::<Req>(&wire::encode(&req)) {
            Ok(Req::Ds { shard: 7, rpc: got }) => {
                assert_eq!(format!("{got:?}"), format!("{rpc:?}"))
            }
            other => panic!("{other:?}"),
        }
        let reply = RpcReply::Written(Ok((
            42,
            Reply::Claimed {
                epoch: 9,
                previous: None,
            },
        )));
        let bytes = wire::encode(&Resp::Ds(Box::new(reply.clone())));
        match answer(wire::decode::<Resp>(&bytes).map_err(|e| PeerError::Decode("x".into(), e))) {
            Ok(RpcReply::Written(Ok((42, Reply::Claimed { epoch: 9, .. })))) => {}
            other => panic!("{other:?}"),
        }
        // A refusal reaches openraft as a refusal, not as an answer.
        assert!(matches!(
            answer(Ok(Resp::Refused("no ds here".into()))),
            Ok(RpcReply::Refused(_))
        ));
        assert!(answer(Err(PeerError::NoLink("emqx2@127.0.0.2".into()))).is_err());
    }
}
