//! What cluster nodes say to each other on the control plane.
//!
//! The remotable endpoint actor carries opaque bytes (ractor_cluster's
//! derive needs `BytesConvertable` fields); the typed requests, replies and
//! notes below are encoded with bincode 2. New variants may be added at the
//! end without breaking older nodes' decoding of the existing ones.

use super::autoheal::SplitView;
use super::membership::MemberInfo;
use super::routes::{RouteKey, RouteOp};
use emqx_mqtt::message::Message;
use serde::{Deserialize, Serialize};

/// A request that expects a reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Req {
    /// A node asks to join the cluster of the receiver.
    Join {
        info: MemberInfo,
    },
    /// The receiver's own route changes after version `since`, or a
    /// snapshot when its log no longer reaches back that far.
    RoutesSince {
        since: u64,
    },
    /// Runs a ctl command on the receiver, for its own node only.
    Ctl {
        args: Vec<String>,
    },
    /// Kicks a client if it is connected to the receiver.
    Kick {
        client: String,
    },
    /// Takes the cluster lock of a client id for `holder` (the receiver
    /// owns that id's lock).
    Lock {
        client: String,
        holder: String,
    },
    Unlock {
        client: String,
        holder: String,
    },
    /// Ends the receiver's session of a client id (a clean start elsewhere).
    Discard {
        client: String,
    },
    /// Hands the receiver's session of a client id over (a persistent
    /// session resumed elsewhere).
    Takeover {
        client: String,
    },
    /// When the receiver started and how many members its cluster has
    /// (autocluster joins the oldest node it finds).
    Info,
    /// Every retained message the receiver holds (a restarted member
    /// catching up).
    RetainedAll,
    /// Autoheal: the receiver's part of the split view.
    SplitView,
    /// Autoheal: the coordinator restarts the receiver, which then rejoins
    /// through it; answered once that is done.
    Reboot {
        coordinator: String,
    },
    /// Which of these client ids the receiver holds a session of (a node
    /// back from an autoheal restart with the sessions it kept).
    Sessions {
        clients: Vec<String>,
    },
    /// Passes `req` on to `to`, which the sender has no link to (a
    /// replicant reaches everybody through its core; a core reaches a
    /// replicant through the core that hosts it). `hops` is how many more
    /// times it may be passed on.
    Relay {
        to: String,
        hops: u8,
        req: Box<Req>,
    },
    /// [`Req::Info`] with the receiver's role (autocluster joins cores only).
    About,
    /// The bytes from `offset` on of a reply that came in parts
    /// ([`Resp::Parts`]).
    Part {
        id: u64,
        offset: u64,
    },
    /// A message to the receiver's replica of a durable storage shard
    /// ([`super::ds`]); answered with [`Resp::Ds`].
    Ds {
        shard: u16,
        rpc: Box<super::ds::Rpc>,
    },
    /// One part, at `offset`, of a request bigger than [`PART`] bytes
    /// (a shard's snapshot): kept by the receiver under the sender's `id`
    /// until [`Req::Uploaded`]. Answered with `Bool(true)`.
    Upload {
        id: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Every part of request `id` was sent (`total` bytes): the receiver
    /// decodes it and answers it as if it had come whole.
    Uploaded {
        id: u64,
        total: u64,
    },
    /// The messages the receiver holds for `down`'s plain subscribers of
    /// one of `filters`, which `down` has not acknowledged, copied once
    /// the receiver routes those filters to `to` (a node taking a
    /// persistent session of `down`: [`crate::peers::RemoteRoutes::held_for`]).
    /// Answered with [`Resp::Held`].
    HeldFor {
        down: String,
        filters: Vec<String>,
        to: String,
    },
}

/// Replies to [`Req`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Resp {
    Joined(Box<JoinSnapshot>),
    Refused(String),
    Routes {
        incarnation: u64,
        version: u64,
        delta: Option<(u64, Vec<RouteOp>)>,
        snapshot: Option<Vec<RouteKey>>,
    },
    Ctl {
        code: i32,
        out: String,
    },
    Bool(bool),
    Session(Option<Box<emqx_mqtt::channel::SessionSnapshot>>),
    Info {
        incarnation: u64,
        members: usize,
    },
    Retained(Vec<Message>),
    SplitView(SplitView),
    Clients(Vec<String>),
    About {
        incarnation: u64,
        members: usize,
        role: super::membership::Role,
    },
    /// A reply bigger than [`PART`] bytes: its first part; the others
    /// are fetched with [`Req::Part`] until `total` bytes are there,
    /// which decode as the reply.
    Parts {
        id: u64,
        total: u64,
        first: Vec<u8>,
    },
    /// One part of such a reply.
    Part(Vec<u8>),
    /// A durable storage replica's answer to [`Req::Ds`].
    Ds(Box<super::ds::RpcReply>),
    /// The answer to [`Req::HeldFor`], in the order the receiver sends them.
    Held(Vec<Message>),
    /// The answer to [`Req::Takeover`] for a session that was still
    /// gathering what the nodes held for `gathering_from` (the node it
    /// was taken from, gone): the new holder gathers it. (Any other
    /// session is answered with [`Resp::Session`].)
    Handover {
        snapshot: Box<emqx_mqtt::channel::SessionSnapshot>,
        gathering_from: String,
    },
}

/// Everything a newcomer adopts when it joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinSnapshot {
    /// Every member, the answering node first.
    pub members: Vec<MemberInfo>,
    /// `(origin, incarnation, version, routes)` of every origin known.
    pub routes: Vec<(String, u64, u64, Vec<RouteKey>)>,
    pub retained: Vec<Message>,
    /// The replicated tables, in full.
    pub tables: Vec<crate::replicated::TableOps>,
}

/// A one-way message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Note {
    /// Sent every heartbeat interval and whenever a link comes up.
    Heartbeat {
        node: String,
        route_version: u64,
        /// The sender's incarnation and what partition detection needs
        /// (see [`super::autoheal`]).
        beat: super::autoheal::Beat,
    },
    /// Route changes of `node` taking it from `base` to `base + ops.len()`.
    Routes {
        node: String,
        incarnation: u64,
        base: u64,
        ops: Vec<RouteOp>,
    },
    /// A node joined (sent by the node it joined through).
    MemberUp { info: MemberInfo },
    /// A node left or was removed.
    MemberLeft { node: String },
    /// A retained message to store (an empty payload clears the topic).
    Retain { msg: Message },
    /// Autoheal: the sender has partitions (sent to the leader).
    Report { node: String },
    /// Autoheal: the leader's decision, sent to the coordinator, who
    /// restarts every node outside the first clique.
    Heal { cliques: Vec<Vec<String>> },
    /// Writes to a replicated table: one as it is made, or a whole table
    /// (in chunks) pushed to a peer that came up.
    Table(crate::replicated::TableOps),
    /// A replicant to its core: start or stop following its stream.
    Follow { node: String, up: super::rlog::Up },
    /// A core to a replicant following it: the replication stream.
    Stream(super::copy::CoreDown),
    /// A core to the other cores, every heartbeat: the replicants it hosts
    /// and where their routes are.
    Hosted {
        host: String,
        replicants: Vec<HostedReplicant>,
    },
    /// A replicant to its core: a write of the replicant's (a retained
    /// message, a table write) for the core to apply and pass on to the
    /// other cores.
    Relayed { from: String, note: Box<Note> },
}

/// A replicant as its core tells the other cores of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedReplicant {
    pub node: String,
    pub incarnation: u64,
    pub route_version: u64,
}

/// The largest cluster message decoded, and the largest frame a node
/// accepts from a peer (ractor_cluster's default is 16 MiB: a join
/// snapshot or a ctl reply naming every client of a big node is larger).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain owned data into a Vec cannot fail short of the size
    // limit; replies that may reach it go through `encode_large` and
    // travel in parts.
    bincode::serde::encode_to_vec(v, config()).unwrap_or_default()
}

/// The largest reply reassembled from parts (a join snapshot with many
/// retained messages, a list of every client of a big node).
pub const MAX_REPLY: usize = 1024 * 1024 * 1024;

/// Replies bigger than this travel in parts of this size.
pub const PART: usize = 8 * 1024 * 1024;

fn large_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_REPLY>()
}

/// Encodes a reply (or a request) of up to [`MAX_REPLY`] bytes.
pub fn encode_large<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(v, large_config()).map_err(|e| WireError(e.to_string()))
}

/// Decodes a reply (or a request) reassembled from its parts.
pub fn decode_large<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, WireError> {
    bincode::serde::decode_from_slice(b, large_config())
        .map(|(v, _)| v)
        .map_err(|e| WireError(e.to_string()))
}

/// A cluster message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable cluster message: {0}")]
pub struct WireError(String);

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, WireError> {
    bincode::serde::decode_from_slice(b, config())
        .map(|(v, _)| v)
        .map_err(|e| WireError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_replies_round_trip() {
        let n = Note::Routes {
            node: "a@h".into(),
            incarnation: 3,
            base: 7,
            ops: vec![RouteOp::Add(RouteKey::of_subscription("$share/g/t/#"))],
        };
        let back: Note = decode(&encode(&n)).expect("decode");
        assert!(matches!(back, Note::Routes { base: 7, ref ops, .. } if ops.len() == 1));
        let mut m = Message::system("t", "payload", true, crate::clock::now_ms());
        m.properties.user_properties.push(("k".into(), "v".into()));
        let r: Note = decode(&encode(&Note::Retain { msg: m.clone() })).expect("decode");
        assert!(matches!(r, Note::Retain { msg } if msg == m));
        assert!(decode::<Note>(&[0xff, 0xff, 0xff]).is_err());
    }
}
