//! Calls between the cluster services of two nodes: each node's
//! remotable endpoint is found through its process group, and requests
//! and notes travel encoded ([`super::wire`]).

use super::wire::{self, Note, Req, Resp};
use parking_lot::RwLock;
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use std::collections::HashMap;
use std::sync::LazyLock;
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

/// Through which node requests reach the nodes this one has no link to:
/// a replicant sends everything through the core it follows; a core
/// reaches a replicant through the core that hosts it. One table per
/// process, as the process groups that name the endpoints are.
#[derive(Default)]
struct Via {
    default: Option<String>,
    nodes: HashMap<String, String>,
}

static VIA: LazyLock<RwLock<Via>> = LazyLock::new(RwLock::default);

/// The node requests to unlinked nodes go through (a replicant's core).
pub fn set_default_via(node: Option<String>) {
    VIA.write().default = node;
}

/// The node requests to `node` go through (the core hosting a replicant).
pub fn set_via(node: &str, via: Option<&str>) {
    let mut v = VIA.write();
    match via {
        Some(h) => v.nodes.insert(node.to_string(), h.to_string()),
        None => v.nodes.remove(node),
    };
}

/// The node that reaches `node` for us when we have no link to it.
pub fn via_of(node: &str) -> Option<String> {
    let v = VIA.read();
    v.nodes
        .get(node)
        .or(v.default.as_ref())
        .filter(|h| *h != node)
        .cloned()
}

/// Hops a relayed request may take: replicant, its core, the core hosting
/// the target replicant, the target.
pub(crate) const RELAY_HOPS: u8 = 2;

/// Sends a request to a peer and decodes its reply.
pub async fn call_peer(node: &str, req: &Req) -> Result<Resp, PeerError> {
    call_peer_within(node, req, CALL_TIMEOUT).await
}

/// [`call_peer`] with its own timeout. A node without a link is reached
/// through the node [`set_via`] or [`set_default_via`] named.
pub async fn call_peer_within(node: &str, req: &Req, timeout: Duration) -> Result<Resp, PeerError> {
    relay_within(node, RELAY_HOPS, req, timeout).await
}

/// Calls `node` directly, or through its relay while `hops` allow.
pub(crate) async fn relay_within(
    node: &str,
    hops: u8,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, PeerError> {
    if endpoint_of(node).is_none() && hops > 0 {
        if let Some(v) = via_of(node).filter(|v| endpoint_of(v).is_some()) {
            let relayed = Req::Relay {
                to: node.to_string(),
                hops: hops - 1,
                req: Box::new(req.clone()),
            };
            return Box::pin(call_direct(&v, &relayed, timeout)).await;
        }
    }
    call_direct(node, req, timeout).await
}

async fn call_direct(node: &str, req: &Req, timeout: Duration) -> Result<Resp, PeerError> {
    let ep = endpoint_of(node).ok_or_else(|| PeerError::NoLink(node.to_string()))?;
    let call_bytes = |bytes: Vec<u8>| {
        let ep = ep.clone();
        async move {
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
    };
    let call = |req: &Req| call_bytes(wire::encode(req));
    let bytes = wire::encode_large(req)
        .map_err(|e| PeerError::Call(node.to_string(), format!("request too large: {e}")))?;
    let first = if bytes.len() <= wire::PART {
        call_bytes(bytes).await?
    } else {
        // A big request: its parts first, then the word to take it.
        let (id, total) = (rand::random::<u64>(), bytes.len() as u64);
        for (i, chunk) in bytes.chunks(wire::PART).enumerate() {
            let up = Req::Upload {
                id,
                offset: (i * wire::PART) as u64,
                bytes: chunk.to_vec(),
            };
            match call(&up).await? {
                Resp::Bool(true) => {}
                Resp::Refused(why) => return Err(PeerError::Call(node.to_string(), why)),
                _ => return Err(PeerError::NoAnswer(node.to_string())),
            }
        }
        call(&Req::Uploaded { id, total }).await?
    };
    let (id, total, mut all) = match first {
        Resp::Parts { id, total, first } => (id, total, first),
        resp => return Ok(resp),
    };
    // A big reply: fetch the rest from the same node, then decode it whole.
    let total = usize::try_from(total)
        .ok()
        .filter(|t| *t <= wire::MAX_REPLY && *t >= all.len())
        .ok_or_else(|| PeerError::Call(node.to_string(), format!("reply of {total} bytes")))?;
    all.reserve(total - all.len());
    while all.len() < total {
        let offset = all.len() as u64;
        match call(&Req::Part { id, offset }).await? {
            Resp::Part(b) if !b.is_empty() && all.len() + b.len() <= total => all.extend(b),
            Resp::Refused(why) => return Err(PeerError::Call(node.to_string(), why)),
            _ => return Err(PeerError::NoAnswer(node.to_string())),
        }
    }
    wire::decode_large(&all).map_err(|e| PeerError::Decode(node.to_string(), e))
}

/// How long the parts of a big reply wait to be fetched.
const PARTS_KEPT: Duration = Duration::from_secs(60);

struct Parts {
    made: std::time::Instant,
    bytes: Vec<u8>,
}

/// Big replies whose parts wait to be fetched, by id.
static PARTS: LazyLock<parking_lot::Mutex<(u64, HashMap<u64, Parts>)>> =
    LazyLock::new(Default::default);

/// The bytes of a reply to a peer's request. One bigger than
/// [`wire::PART`] (a join snapshot holding many retained messages, a list
/// of every client) goes in parts: its first part now, the others on
/// [`Req::Part`], so no message between nodes exceeds the frame limit.
pub fn reply_bytes(resp: &Resp) -> Vec<u8> {
    let bytes = match wire::encode_large(resp) {
        Ok(b) => b,
        Err(e) => return wire::encode(&Resp::Refused(format!("reply too large: {e}"))),
    };
    if bytes.len() <= wire::PART {
        return bytes;
    }
    let first = bytes[..wire::PART].to_vec();
    let total = bytes.len() as u64;
    let id = {
        let mut p = PARTS.lock();
        p.1.retain(|_, v| v.made.elapsed() < PARTS_KEPT);
        p.0 += 1;
        let id = p.0;
        p.1.insert(
            id,
            Parts {
                made: std::time::Instant::now(),
                bytes,
            },
        );
        id
    };
    wire::encode(&Resp::Parts { id, total, first })
}

/// The answer to [`Req::Part`]: the next part, or a refusal when the reply
/// expired (or never was). The last part frees the reply.
pub fn part(id: u64, offset: u64) -> Resp {
    let mut p = PARTS.lock();
    let Some(parts) = p.1.get(&id) else {
        return Resp::Refused(format!("no reply {id} waiting (expired?)"));
    };
    let len = parts.bytes.len();
    let from = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
    let to = (from + wire::PART).min(len);
    let chunk = parts.bytes[from..to].to_vec();
    if to == len {
        p.1.remove(&id);
    }
    Resp::Part(chunk)
}

/// Big requests being received in parts, by the sender's id.
static UPLOADS: LazyLock<parking_lot::Mutex<HashMap<u64, Parts>>> = LazyLock::new(Default::default);

/// The answer to [`Req::Upload`]: keeps the part (in order; a part out of
/// order or past [`wire::MAX_REPLY`] is refused).
pub fn upload(id: u64, offset: u64, bytes: Vec<u8>) -> Resp {
    let mut u = UPLOADS.lock();
    u.retain(|_, v| v.made.elapsed() < PARTS_KEPT);
    let parts = u.entry(id).or_insert_with(|| Parts {
        made: std::time::Instant::now(),
        bytes: Vec::new(),
    });
    if offset != parts.bytes.len() as u64 {
        u.remove(&id);
        return Resp::Refused(format!("request {id}: a part at {offset} out of order"));
    }
    if parts.bytes.len() + bytes.len() > wire::MAX_REPLY {
        u.remove(&id);
        return Resp::Refused(format!(
            "request {id}: larger than {} bytes",
            wire::MAX_REPLY
        ));
    }
    parts.bytes.extend_from_slice(&bytes);
    Resp::Bool(true)
}

/// On [`Req::Uploaded`]: the request whose parts came, decoded.
pub fn uploaded(id: u64, total: u64) -> Result<Req, String> {
    let parts = UPLOADS
        .lock()
        .remove(&id)
        .ok_or_else(|| format!("no request {id} being received (expired?)"))?;
    if parts.bytes.len() as u64 != total {
        return Err(format!(
            "request {id}: {} of {total} bytes came",
            parts.bytes.len()
        ));
    }
    wire::decode_large(&parts.bytes).map_err(|e| format!("request {id}: {e}"))
}

pub fn cast_peer(node: &str, note: &Note) -> bool {
    match endpoint_of(node) {
        Some(ep) => ep.cast(EndpointMsg::Cast(wire::encode(note))).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_reply_goes_in_parts_and_comes_back_whole() {
        // 20 MB of client ids: three parts.
        let clients: Vec<String> = (0..200_000).map(|i| format!("{i:0>100}")).collect();
        let resp = Resp::Clients(clients.clone());
        let first = reply_bytes(&resp);
        assert!(first.len() <= wire::PART + 64);
        let Ok(Resp::Parts { id, total, first }) = wire::decode::<Resp>(&first) else {
            panic!("not in parts");
        };
        let mut all = first;
        let mut parts = 1;
        while (all.len() as u64) < total {
            match part(id, all.len() as u64) {
                Resp::Part(b) => all.extend(b),
                other => panic!("{other:?}"),
            }
            parts += 1;
        }
        assert_eq!(parts, 3);
        match wire::decode_large::<Resp>(&all) {
            Ok(Resp::Clients(c)) => assert_eq!(c, clients),
            other => panic!("{other:?}"),
        }
        // The last part freed it.
        assert!(matches!(part(id, 0), Resp::Refused(_)));
        // A big request goes up in parts the same way.
        let req = Req::Sessions {
            clients: clients.clone(),
        };
        let bytes = wire::encode_large(&req).expect("encode");
        assert!(bytes.len() > 2 * wire::PART);
        let id = 77;
        for (i, chunk) in bytes.chunks(wire::PART).enumerate() {
            let r = upload(id, (i * wire::PART) as u64, chunk.to_vec());
            assert!(matches!(r, Resp::Bool(true)), "{r:?}");
        }
        match uploaded(id, bytes.len() as u64) {
            Ok(Req::Sessions { clients: c }) => assert_eq!(c, clients),
            other => panic!("{other:?}"),
        }
        assert!(uploaded(id, bytes.len() as u64).is_err(), "taken once");
        // A part out of order, or a short request, is refused.
        assert!(matches!(upload(78, 5, vec![1]), Resp::Refused(_)));
        assert!(matches!(upload(79, 0, vec![1, 2]), Resp::Bool(true)));
        assert!(uploaded(79, 3).is_err());
        // A small reply is not split.
        let small = reply_bytes(&Resp::Bool(true));
        assert!(matches!(wire::decode::<Resp>(&small), Ok(Resp::Bool(true))));
    }
}
