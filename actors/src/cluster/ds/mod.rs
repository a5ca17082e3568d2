//! Replicated durable storage (`ds`): the persistent sessions whose client
//! ids fall in one shard of the client-id space live in one Raft group,
//! replicated on several cores. [openraft](https://github.com/databendlabs/openraft)
//! (pinned, 0.9.25) runs the consensus; this module gives it a log and a
//! state machine kept in the node's durable store ([`crate::durable`],
//! redb) and a network made of whatever carries [`Rpc`]s between nodes
//! ([`Transport`]: a simulated network in the tests; the cluster's
//! connections once the layer is wired into nodes, which it is not yet).
//!
//! - [`state`]: what a shard agrees on (tables, session owners, epochs);
//! - [`log_store`]: the Raft log and vote of a shard on a node;
//! - [`sm_store`]: the state machine and its snapshots;
//! - [`Replica`]: one shard's Raft on one node, with its stores;
//! - [`host`]: every shard's replica on a node, placement, and reaching a
//!   shard's leader from anywhere.

pub mod driver;
pub mod host;
pub mod log_store;
pub mod sm_store;
pub mod state;
pub mod types;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use state::{
    epoch_of, session_key, session_range, Batch, Command, DsOp, Owner, Reply, SessionRows,
    ShardState,
};
pub use types::{node_id, Ds, DsRaft, NodeId, LOG_TABLE, META_TABLE, SNAP_TABLE};

/// The timers and log compaction of every shard's Raft group.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub heartbeat: std::time::Duration,
    pub election_min: std::time::Duration,
    pub election_max: std::time::Duration,
    /// A snapshot after this many entries...
    pub snapshot_every: u64,
    /// ...and this many entries stay in the log after it, so a follower a
    /// little behind catches up from the log rather than a snapshot.
    pub keep_after_snapshot: u64,
}

impl Default for Tuning {
    /// A leader heartbeats every 200 ms; a follower that hears nothing for
    /// 1-2 s stands for election: a dead leader is replaced within about
    /// 2 s, as the cluster's failure detector notices a dead node.
    fn default() -> Tuning {
        Tuning {
            heartbeat: std::time::Duration::from_millis(200),
            election_min: std::time::Duration::from_millis(1000),
            election_max: std::time::Duration::from_millis(2000),
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
        }
    }
}

/// openraft's configuration for the shards.
pub fn raft_config(t: &Tuning) -> Result<Arc<openraft::Config>, String> {
    let ms = |d: std::time::Duration| d.as_millis().min(u64::MAX as u128) as u64;
    openraft::Config {
        cluster_name: "emqx-rs-ds".into(),
        heartbeat_interval: ms(t.heartbeat),
        election_timeout_min: ms(t.election_min),
        election_timeout_max: ms(t.election_max),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        // openraft gives an append one heartbeat interval to be sent,
        // written and answered: with entries of up to about
        // `MAX_BATCH_BYTES`, a follower behind gets at most about 8 MiB
        // in one message.
        max_payload_entries: 8,
        // A whole snapshot goes in one call (in parts when big).
        install_snapshot_timeout: 60_000,
        max_in_snapshot_log_to_keep: t.keep_after_snapshot,
        ..Default::default()
    }
    .validate()
    .map(Arc::new)
    .map_err(|e| format!("raft timers: {e}"))
}

/// A Raft message to one shard's replica on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rpc {
    /// Raft's own messages carry the sender's group
    /// ([`log_store::LogStore::group`]; 0: it knows none).
    Append {
        group: u64,
        req: AppendEntriesRequest<Ds>,
    },
    Vote {
        group: u64,
        req: VoteRequest<NodeId>,
    },
    Snapshot {
        group: u64,
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A command for the shard's leader, from a node that is not it.
    Write(Command),
    /// A client's session as the leader holds it (a linearizable read).
    Read { client: String },
    /// Whether the receiver's replica belongs to a group (see
    /// [`host::DsHost::initialize_if_first`]).
    Initialized,
    /// The receiver's replica's group (see [`host::DsHost::forget_foreign`]).
    Group,
}

/// Why a node could not take a [`Rpc::Write`] or [`Rpc::Read`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redirect {
    /// It is not the leader; this node is, as far as it knows.
    Leader(String),
    /// It is not the leader and knows of none, or it stopped.
    NoLeader(String),
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Append(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    Snapshot(SnapshotResponse<NodeId>),
    /// The command's log index and answer once committed and applied.
    Written(Result<(u64, Reply), Redirect>),
    Session(Result<SessionRows, Redirect>),
    /// The replica is not there or refused (stopped, not a member yet).
    Refused(String),
    Initialized(bool),
    Group(u64),
}

// openraft's append and snapshot answers are not `Clone`; the cluster's
// replies are.
impl Clone for RpcReply {
    fn clone(&self) -> RpcReply {
        match self {
            RpcReply::Append(a) => RpcReply::Append(match a {
                AppendEntriesResponse::Success => AppendEntriesResponse::Success,
                AppendEntriesResponse::PartialSuccess(l) => {
                    AppendEntriesResponse::PartialSuccess(*l)
                }
                AppendEntriesResponse::Conflict => AppendEntriesResponse::Conflict,
                AppendEntriesResponse::HigherVote(v) => AppendEntriesResponse::HigherVote(*v),
            }),
            RpcReply::Vote(v) => RpcReply::Vote(v.clone()),
            RpcReply::Snapshot(s) => RpcReply::Snapshot(SnapshotResponse::new(s.vote)),
            RpcReply::Written(w) => RpcReply::Written(w.clone()),
            RpcReply::Session(r) => RpcReply::Session(r.clone()),
            RpcReply::Refused(w) => RpcReply::Refused(w.clone()),
            RpcReply::Initialized(b) => RpcReply::Initialized(*b),
            RpcReply::Group(g) => RpcReply::Group(*g),
        }
    }
}

/// Why an [`Rpc`] got no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// What the shards' Raft groups send their messages with.
pub trait Transport: Send + Sync + 'static {
    /// Sends `rpc` to shard `shard` on node `to` (`name@host`) and waits
    /// for its answer.
    fn call(
        &self,
        to: &str,
        shard: u16,
        rpc: Rpc,
    ) -> Pin<Box<dyn Future<Output = Result<RpcReply, TransportError>> + Send + 'static>>;
}

/// openraft's network factory for one shard.
#[derive(Clone)]
pub struct Network {
    shard: u16,
    transport: Arc<dyn Transport>,
    /// Where the replica's group is kept (sent with each message).
    log: log_store::LogStore,
}

impl Network {
    pub fn new(shard: u16, transport: Arc<dyn Transport>, log: log_store::LogStore) -> Network {
        Network {
            shard,
            transport,
            log,
        }
    }
}

/// A connection from a shard's replica to the same shard on `target`.
pub struct Link {
    shard: u16,
    name: String,
    transport: Arc<dyn Transport>,
    log: log_store::LogStore,
}

impl RaftNetworkFactory<Ds> for Network {
    type Network = Link;

    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> Link {
        Link {
            shard: self.shard,
            name: node.addr.clone(),
            transport: self.transport.clone(),
            log: self.log.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Link {
    async fn call<E: std::error::Error>(&self, rpc: Rpc) -> Result<RpcReply, RpcErr<E>> {
        match self.transport.call(&self.name, self.shard, rpc).await {
            Ok(RpcReply::Refused(why)) => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("{}: {why}", self.name)),
            ))),
            Ok(r) => Ok(r),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, r: &RpcReply) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "{}: unexpected answer {r:?}",
            self.name
        ))))
    }
}

impl RaftNetwork<Ds> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Ds>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let group = self.log.group();
        match self.call(Rpc::Append { group, req: rpc }).await? {
            RpcReply::Append(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let group = self.log.group();
        match self.call(Rpc::Vote { group, req: rpc }).await? {
            RpcReply::Vote(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<Ds>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<Ds, Fatal<NodeId>>> {
        let rpc = Rpc::Snapshot {
            group: self.log.group(),
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        match self.call::<InstallSnapshotError>(rpc).await {
            Ok(RpcReply::Snapshot(r)) => Ok(r),
            Ok(other) => Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other(format!("{}: unexpected answer {other:?}", self.name)),
            ))),
            Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}

/// Whether `replica` takes a Raft message of group `theirs` (see
/// [`log_store::LogStore::group`]): a replica of a group takes only its
/// own group's (a sender of none, a group made before groups had
/// identities, only reaches a replica of none). A replica of no group yet
/// takes any, and joins the group of the first leader that sends it
/// entries or a snapshot (a vote request does not make it a member: the
/// first voters of a new group vote before they heard from a leader).
async fn admit(replica: &Replica, theirs: u64, from_leader: bool) -> Result<(), String> {
    let mine = replica.log.group();
    if mine == theirs {
        return Ok(());
    }
    if mine == 0 {
        if from_leader {
            tracing::info!(
                "ds shard {}: this replica joins group {theirs:016x}",
                replica.shard
            );
            return replica.log.set_group(theirs).await;
        }
        return Ok(());
    }
    Err(format!(
        "shard {}: this replica is of group {mine:016x}, the sender of group {theirs:016x}",
        replica.shard
    ))
}

/// Hands an [`Rpc`] that arrived from another node to the local replica.
pub async fn serve(replica: &Replica, rpc: Rpc) -> RpcReply {
    let raft = &replica.raft;
    let refused = |e: &dyn std::fmt::Display| RpcReply::Refused(e.to_string());
    let group = match &rpc {
        Rpc::Append { group, .. } | Rpc::Snapshot { group, .. } => Some((*group, true)),
        Rpc::Vote { group, .. } => Some((*group, false)),
        _ => None,
    };
    if let Some((theirs, from_leader)) = group {
        if let Err(e) = admit(replica, theirs, from_leader).await {
            return RpcReply::Refused(e);
        }
    }
    match rpc {
        Rpc::Append { req, .. } => match raft.append_entries(req).await {
            Ok(a) => RpcReply::Append(a),
            Err(e) => refused(&e),
        },
        Rpc::Vote { req, .. } => match raft.vote(req).await {
            Ok(a) => RpcReply::Vote(a),
            Err(e) => refused(&e),
        },
        Rpc::Snapshot {
            vote, meta, data, ..
        } => {
            let snap = Snapshot {
                meta,
                snapshot: Box::new(data),
            };
            match raft.install_full_snapshot(vote, snap).await {
                Ok(a) => RpcReply::Snapshot(a),
                Err(e) => refused(&e),
            }
        }
        Rpc::Write(cmd) => RpcReply::Written(replica.write_here(cmd).await),
        Rpc::Read { client } => RpcReply::Session(replica.read_here(&client).await),
        Rpc::Initialized => match raft.is_initialized().await {
            Ok(b) => RpcReply::Initialized(b),
            Err(e) => refused(&e),
        },
        Rpc::Group => RpcReply::Group(replica.log.group()),
    }
}

fn redirect(f: &openraft::error::ForwardToLeader<NodeId, BasicNode>) -> Redirect {
    match &f.leader_node {
        Some(n) => Redirect::Leader(n.addr.clone()),
        None => Redirect::NoLeader("no leader known".into()),
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("shard {shard}: {error}")]
    Storage { shard: u16, error: String },
    #[error("shard {shard}: {error}")]
    Raft { shard: u16, error: String },
    /// The store holds shards of another layout.
    #[error("{0}")]
    Layout(String),
}

/// One shard's Raft on one node, with its stores.
#[derive(Clone)]
pub struct Replica {
    pub shard: u16,
    pub raft: DsRaft,
    pub log: log_store::LogStore,
    pub sm: sm_store::SmStore,
    proposer: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// A command waiting for its entry, and where its answer goes.
type Pending = (
    Command,
    tokio::sync::oneshot::Sender<Result<(u64, Reply), Redirect>>,
);

/// Entries proposed and not yet answered, per shard: the commands that
/// arrive meanwhile wait and go together in the next entry.
const IN_FLIGHT: usize = 2;

/// Proposes what `write_here` queued: each entry carries every command
/// queued since the last one (up to [`state::MAX_BATCH`] commands and
/// about [`state::MAX_BATCH_BYTES`]), with at most
/// [`IN_FLIGHT`] entries unanswered. openraft appends and replicates one
/// entry per log flush, so one command per entry would cap a shard at one
/// write per fsync; in batches, a flush carries every writer waiting.
/// Commands keep their order: entries are proposed in order.
///
/// A leader that the shard removed keeps leading until the change is
/// committed, and what it appended after the change never commits: a
/// batch is not proposed on a leader that is no longer a voter, and one
/// waiting for its commit on a replica that stops leading is answered
/// with an unknown outcome (so the caller asks the new leader).
async fn propose(raft: DsRaft, me: NodeId, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
    use openraft::error::ClientWriteError;
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // A command that did not fit in the entry before: the next one's first.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = first.0.approx_len();
        let mut batch = vec![first];
        while batch.len() < state::MAX_BATCH && bytes < state::MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) if bytes + p.0.approx_len() > state::MAX_BATCH_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.0.approx_len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let answer = |txs: Vec<tokio::sync::oneshot::Sender<_>>, r: Redirect| {
            for tx in txs {
                let _ = tx.send(Err(r.clone()));
            }
        };
        let removed = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            m.state == openraft::ServerState::Leader && !leads(&m, me)
        };
        if removed {
            drop(slot);
            answer(
                txs,
                Redirect::NoLeader("no longer a voter of the shard".into()),
            );
            continue;
        }
        match raft.client_write_ff(state::Batch(cmds)).await {
            Ok(pending) => {
                let metrics = raft.metrics();
                tokio::spawn(async move {
                    let out = tokio::select! {
                        out = pending => Some(out),
                        () = lost_lead(metrics, me) => None,
                    };
                    drop(slot);
                    let Some(out) = out else {
                        return answer(
                            txs,
                            Redirect::NoLeader("the leader stepped down before the commit".into()),
                        );
                    };
                    match out {
                        Ok(Ok(r)) => {
                            let index = r.log_id.index;
                            let mut replies = r.data.into_iter();
                            for tx in txs {
                                let reply = match replies.next() {
                                    Some(rep) => Ok((index, rep)),
                                    None => Err(Redirect::NoLeader("answer missing".into())),
                                };
                                let _ = tx.send(reply);
                            }
                        }
                        Ok(Err(ClientWriteError::ForwardToLeader(f))) => answer(txs, redirect(&f)),
                        Ok(Err(e)) => answer(txs, Redirect::NoLeader(e.to_string())),
                        Err(_) => answer(txs, Redirect::NoLeader("stopped".into())),
                    }
                });
            }
            Err(e) => answer(txs, Redirect::NoLeader(e.to_string())),
        }
    }
}

/// Whether node `me` leads its shard and is one of its voters.
fn leads(m: &openraft::RaftMetrics<NodeId, BasicNode>, me: NodeId) -> bool {
    m.state == openraft::ServerState::Leader
        && m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == me)
}

/// Returns once node `me` no longer [`leads`] (or its Raft stopped).
async fn lost_lead(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    me: NodeId,
) {
    loop {
        if !leads(&metrics.borrow_and_update(), me) {
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl Replica {
    /// Opens shard `shard`'s log and state from `durable` and starts its
    /// Raft as node `name`. A shard never initialised waits to be made a
    /// member (see [`Replica::initialize`]).
    pub async fn start(
        name: &str,
        shard: u16,
        durable: &crate::durable::Durable,
        transport: Arc<dyn Transport>,
        config: Arc<openraft::Config>,
    ) -> Result<Replica, ReplicaError> {
        let st = |e: &dyn std::fmt::Display| ReplicaError::Storage {
            shard,
            error: e.to_string(),
        };
        let log = log_store::LogStore::open(durable, shard).map_err(|e| st(&e))?;
        let sm = sm_store::SmStore::open(durable, shard).map_err(|e| st(&e))?;
        let raft = openraft::Raft::new(
            node_id(name),
            config,
            Network::new(shard, transport, log.clone()),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| ReplicaError::Raft {
            shard,
            error: e.to_string(),
        })?;
        let (proposer, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(propose(raft.clone(), node_id(name), queued));
        Ok(Replica {
            shard,
            raft,
            log,
            sm,
            proposer,
        })
    }

    /// Commits `cmd` if this replica leads its shard; otherwise says who
    /// does. An error other than a redirection leaves the outcome unknown
    /// (the command may still commit).
    pub async fn write_here(&self, cmd: Command) -> Result<(u64, Reply), Redirect> {
        let stopped = || Redirect::NoLeader("the replica stopped".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.proposer.send((cmd, tx)).map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// `client`'s session as of now, if this replica leads its shard (it
    /// first makes sure a quorum still follows it and its state machine
    /// has applied everything committed).
    pub async fn read_here(&self, client: &str) -> Result<SessionRows, Redirect> {
        use openraft::error::{CheckIsLeaderError, RaftError};
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.sm.read(|s| s.session(client))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(redirect(&f)),
            Err(e) => Err(Redirect::NoLeader(e.to_string())),
        }
    }

    /// Makes `members` (node names) the first voters of this shard, in a
    /// group of a new identity. Done once, by one node; the others learn
    /// it from its leader.
    pub async fn initialize(&self, members: &[String]) -> Result<(), ReplicaError> {
        // One given already (the cluster's, see `DsHost::forget_foreign`)
        // stays.
        if self.log.group() == 0 {
            let group = loop {
                let g: u64 = rand::random();
                if g != 0 {
                    break g;
                }
            };
            self.log
                .set_group(group)
                .await
                .map_err(|error| ReplicaError::Storage {
                    shard: self.shard,
                    error,
                })?;
        }
        let nodes: std::collections::BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|m| (node_id(m), BasicNode { addr: m.clone() }))
            .collect();
        self.raft
            .initialize(nodes)
            .await
            .map_err(|e| ReplicaError::Raft {
                shard: self.shard,
                error: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("emqx1@127.0.0.1"), node_id("emqx1@127.0.0.1"));
        assert_ne!(node_id("emqx1@127.0.0.1"), node_id("emqx2@127.0.0.1"));
    }
}
