//! The shards' replicas on one node, where they live, and who changes
//! that.
//!
//! Every core runs a Raft instance for every shard; the shard's
//! membership (openraft's voters) says which of them hold it. Which cores
//! should hold a shard is decided by rendezvous hashing over the cluster's
//! cores ([`replicas_of`]): every node computes the same answer, and a core
//! that joins or leaves moves only the shards it ranks first for. The
//! leader of each shard makes the membership follow ([`DsHost::reconcile`]):
//! a new replica first joins as a learner and catches up, then one joint
//! change makes the wanted set the voters. A core that is down stays a
//! replica (its shard keeps its quorum with the others); it is replaced
//! only once the cluster removes it (autoclean, force-leave).

use super::types::{hash64, META_TABLE};
use super::{
    node_id, serve, Command, DsRaft, NodeId, Owner, Redirect, Replica, ReplicaError, Reply, Rpc,
    RpcReply, SessionRows, Transport, Tuning,
};
use crate::durable::{Durable, DurableError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The shard a client id falls in: stable across builds and versions (the
/// shards are on disk), the same on every node.
pub fn shard_of(client: &str, n_shards: u16) -> u16 {
    (hash64(client.as_bytes()) % u64::from(n_shards.max(1))) as u16
}

/// The cores that should hold `shard`: the `rf` that rank highest for
/// it (rendezvous hashing), in rank order.
pub fn replicas_of(shard: u16, cores: &[String], rf: usize) -> Vec<String> {
    let mut ranked: Vec<(u64, &String)> = cores
        .iter()
        .map(|c| {
            let mut key = shard.to_be_bytes().to_vec();
            key.extend_from_slice(c.as_bytes());
            (hash64(&key), c)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked
        .into_iter()
        .take(rf)
        .map(|(_, c)| c.clone())
        .collect()
}

/// What [`DsHost::reconcile`] did to one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A core was added as a learner (catching up).
    Learner { shard: u16, node: String },
    /// The voters became `voters`.
    Voters { shard: u16, voters: Vec<String> },
    /// Learners no longer wanted were dropped.
    Dropped { shard: u16, learners: Vec<String> },
}

/// How long [`DsHost::reconcile`] waits for one membership change to
/// commit. A leader cut off from its quorum does not step down until it
/// hears a later term, so without a bound its driver (which also adopts
/// sessions and follows membership) would wait for the heal. A change
/// left half done (joint) is finished by whoever leads next.
const MEMBERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A membership change awaited at most [`MEMBERSHIP_WAIT`]; its outcome
/// is then unknown, and the next reconcile looks again.
async fn bounded<T, E: std::fmt::Display>(
    change: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(MEMBERSHIP_WAIT, change).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "not committed within {} s (outcome unknown)",
            MEMBERSHIP_WAIT.as_secs()
        )),
    }
}

/// One shard as this node sees it.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub shard: u16,
    /// Leader, Follower, Learner, Candidate, or Shutdown.
    pub state: String,
    pub leader: Option<String>,
    pub term: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    /// The last log index the latest snapshot covers.
    pub snapshot: Option<u64>,
    /// On the leader: how far each replica's log is behind the leader's.
    pub lag: BTreeMap<String, u64>,
    pub sessions: usize,
}

/// Why a command or a read got no answer in time. The outcome of a
/// command is then unknown: it may still commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsError {
    #[error("shard {shard}: no leader answered within {waited:?} (last: {why})")]
    NoQuorum {
        shard: u16,
        waited: std::time::Duration,
        why: String,
    },
    #[error("no shard {0}")]
    NoShard(u16),
}

/// Redirections followed in a row before pausing.
const HOPS: usize = 3;

/// What [`DsHost::through_leader`] runs at a shard's leader.
enum Ask {
    Write(Command),
    Read(String),
}

enum Answer {
    Written((u64, Reply)),
    Session(SessionRows),
}

/// Where the number of shards is kept (after every shard's own keys,
/// which start with the shard's two bytes).
const LAYOUT_KEY: &[u8] = b"\xff\xfflayout";

/// The number of shards is fixed once the store holds them (a client id's
/// shard depends on it): a node started with another refuses to start,
/// naming the key and the file; the first start writes it.
async fn check_layout(durable: &Durable, n_shards: u16) -> Result<(), ReplicaError> {
    let io = |e: DurableError| ReplicaError::Layout(e.to_string());
    let mut to = LAYOUT_KEY.to_vec();
    to.push(0);
    let had = durable.range(META_TABLE, LAYOUT_KEY, &to).map_err(io)?;
    match had.first() {
        Some((_, v)) => {
            let had = v
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| {
                    ReplicaError::Layout(format!(
                        "{}: table {META_TABLE}: an unreadable shard count {v:?}",
                        durable.path().display()
                    ))
                })?;
            if had != n_shards {
                return Err(ReplicaError::Layout(format!(
                    "durable_storage.messages.n_shards = {n_shards}, but {} holds {had} shards: the number of shards is fixed once they are made (set it back to {had}, or start with an empty data directory)",
                    durable.path().display()
                )));
            }
            Ok(())
        }
        None => durable
            .submit(vec![crate::durable::Op::Put {
                table: META_TABLE,
                key: LAYOUT_KEY.to_vec(),
                value: n_shards.to_be_bytes().to_vec(),
            }])
            .wait()
            .await
            .map_err(io),
    }
}

/// The replicas of every shard on this node.
pub struct DsHost {
    me: String,
    /// Each shard's replica; replaced when the shard is forgotten
    /// ([`DsHost::forget_foreign`]).
    replicas: Vec<parking_lot::RwLock<Replica>>,
    /// How many shards the cluster has (this node may hold none of them:
    /// a replicant, see [`DsHost::client`]).
    n_shards: u16,
    durable: Durable,
    config: Arc<openraft::Config>,
    rf: usize,
    n_sites: usize,
    transport: Arc<dyn Transport>,
    /// The cluster's cores as last given ([`DsHost::reconcile`]): where a
    /// node that holds no replica of a shard looks for its leader.
    cores: parking_lot::RwLock<Vec<String>>,
}

impl DsHost {
    /// Opens every shard's replica from `durable`.
    pub async fn start(
        me: &str,
        durable: &Durable,
        n_shards: u16,
        rf: usize,
        n_sites: usize,
        transport: Arc<dyn Transport>,
        timers: &Tuning,
    ) -> Result<DsHost, ReplicaError> {
        let config =
            super::raft_config(timers).map_err(|error| ReplicaError::Raft { shard: 0, error })?;
        check_layout(durable, n_shards).await?;
        let mut replicas = Vec::with_capacity(n_shards as usize);
        for shard in 0..n_shards {
            let r = Replica::start(me, shard, durable, transport.clone(), config.clone()).await?;
            replicas.push(parking_lot::RwLock::new(r));
        }
        Ok(DsHost {
            me: me.to_string(),
            replicas,
            n_shards,
            durable: durable.clone(),
            config,
            rf: rf.max(1),
            n_sites: n_sites.max(1),
            transport,
            cores: parking_lot::RwLock::new(vec![me.to_string()]),
        })
    }

    /// A node that holds no replica (a replicant): it reaches every
    /// shard's leader through the cores it is given
    /// ([`DsHost::set_cores`]).
    pub fn client(
        me: &str,
        durable: &Durable,
        n_shards: u16,
        rf: usize,
        transport: Arc<dyn Transport>,
        timers: &Tuning,
    ) -> Result<DsHost, ReplicaError> {
        let config =
            super::raft_config(timers).map_err(|error| ReplicaError::Raft { shard: 0, error })?;
        Ok(DsHost {
            me: me.to_string(),
            replicas: Vec::new(),
            n_shards,
            durable: durable.clone(),
            config,
            rf: rf.max(1),
            n_sites: 1,
            transport,
            cores: parking_lot::RwLock::new(Vec::new()),
        })
    }

    /// Whether this node holds replicas (a core) or only reaches them.
    pub fn holds_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// How many replicas each shard should have.
    pub fn rf(&self) -> usize {
        self.rf
    }

    /// How many cores the cluster needs before the shards are made.
    pub fn n_sites(&self) -> usize {
        self.n_sites
    }

    pub fn n_shards(&self) -> u16 {
        self.n_shards
    }

    /// Shard `shard`'s replica here (a handle: the replica itself may be
    /// replaced meanwhile).
    pub fn replica(&self, shard: u16) -> Option<Replica> {
        self.replicas.get(shard as usize).map(|r| r.read().clone())
    }

    fn all(&self) -> Vec<Replica> {
        self.replicas.iter().map(|r| r.read().clone()).collect()
    }

    pub fn raft(&self, shard: u16) -> Option<DsRaft> {
        self.replica(shard).map(|r| r.raft)
    }

    /// After this node joined a cluster of `members` (its cores and
    /// itself): forgets each shard whose group is not that cluster's, so
    /// the cluster's leader can add this node to the cluster's group
    /// afresh. Two groups of one shard cannot merge: as with everything
    /// else a joining node held, the cluster's copy wins. A group is not
    /// the cluster's when none of its voters but this node is a member
    /// (made while this node was alone, or in another cluster), or when
    /// the other members' replicas of the shard are of another group (see
    /// [`super::log_store::LogStore::group`]): a voter of this node's
    /// group may have left it for the cluster's meanwhile (it joined that
    /// cluster first). Shards of the cluster's own groups (a node back
    /// from an autoheal restart) are kept. A replica forgotten, or of no
    /// group yet, is given the cluster's group, so that it takes no
    /// message of another. Returns the shards forgotten.
    pub async fn forget_foreign(&self, members: &[String]) -> Result<Vec<u16>, ReplicaError> {
        let others: Vec<String> = members.iter().filter(|m| **m != self.me).cloned().collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let other_ids: BTreeSet<NodeId> = others.iter().map(|m| node_id(m)).collect();
        let mut forgotten = Vec::new();
        let replicas = self.all();
        let shards: Vec<u16> = replicas.iter().map(|r| r.shard).collect();
        let mut all_theirs = self.groups_of(&shards, &others).await;
        for r in replicas {
            let shard = r.shard;
            let mine = r.log.group();
            let voters = voters(&r);
            let theirs = all_theirs.remove(&shard).unwrap_or_default();
            let cluster = most_common(theirs.iter().map(|(_, g)| *g).filter(|g| *g != 0));
            let foreign = if voters.is_empty() {
                false
            } else if !voters.iter().any(|v| other_ids.contains(v)) {
                true
            } else if mine == 0 {
                // Made before groups had identities: its voters decide.
                false
            } else {
                cluster.is_some_and(|c| c != mine)
                    || theirs
                        .iter()
                        .any(|(n, g)| voters.contains(&node_id(n)) && *g != mine)
            };
            if foreign {
                tracing::warn!(
                    "ds shard {shard}: this node's group {mine:016x} is not the cluster's ({}): dropped",
                    cluster.map_or("none yet".to_string(), |c| format!("{c:016x}"))
                );
                self.forget_shard(shard, cluster.unwrap_or(0)).await?;
                forgotten.push(shard);
            } else if let (true, 0, Some(c)) = (voters.is_empty(), mine, cluster) {
                r.log
                    .set_group(c)
                    .await
                    .map_err(|error| ReplicaError::Storage { shard, error })?;
            }
        }
        Ok(forgotten)
    }

    /// The groups of `nodes`' replicas of each of `shards`, as those that
    /// answer within 5 s say. Every shard and node is asked at once, so an
    /// unreachable member costs 5 s in all, not 5 s a shard.
    async fn groups_of(
        &self,
        shards: &[u16],
        nodes: &[String],
    ) -> BTreeMap<u16, Vec<(String, u64)>> {
        let mut asks = tokio::task::JoinSet::new();
        for &shard in shards {
            for n in nodes {
                let asked = self.transport.call(n, shard, Rpc::Group);
                let n = n.clone();
                asks.spawn(async move {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
                        Ok(Ok(RpcReply::Group(g))) => Some((shard, n, g)),
                        _ => None,
                    }
                });
            }
        }
        let mut out: BTreeMap<u16, Vec<(String, u64)>> = BTreeMap::new();
        while let Some(r) = asks.join_next().await {
            if let Ok(Some((shard, n, g))) = r {
                out.entry(shard).or_default().push((n, g));
            }
        }
        out
    }

    /// After this node left its cluster (or was removed from it): forgets
    /// every shard it held a replica of, as it drops everything else it
    /// shared with the cluster. Alone, it then makes its own groups (with
    /// `n_sites = 1`). Returns the shards forgotten.
    pub async fn forget_all(&self) -> Result<Vec<u16>, ReplicaError> {
        self.set_cores(std::slice::from_ref(&self.me));
        let mut forgotten = Vec::new();
        for r in self.all() {
            if voters(&r).is_empty() {
                continue;
            }
            self.forget_shard(r.shard, 0).await?;
            forgotten.push(r.shard);
        }
        Ok(forgotten)
    }

    /// Stops, wipes and starts empty this node's replica of `shard`, as a
    /// replica of group `group` (0: of none yet).
    async fn forget_shard(&self, shard: u16, group: u64) -> Result<(), ReplicaError> {
        let Some(slot) = self.replicas.get(usize::from(shard)) else {
            return Ok(());
        };
        let old = slot.read().clone();
        let err = |e: &dyn std::fmt::Display| ReplicaError::Storage {
            shard,
            error: e.to_string(),
        };
        old.raft.shutdown().await.map_err(|e| err(&e))?;
        let mut ops = super::types::clear_shard_ops(shard);
        if group != 0 {
            // Of the cluster's group from its first message on.
            ops.push(super::log_store::LogStore::group_op(shard, group).map_err(|e| err(&e))?);
        }
        self.durable.submit(ops).wait().await.map_err(|e| err(&e))?;
        let new = Replica::start(
            &self.me,
            shard,
            &self.durable,
            self.transport.clone(),
            self.config.clone(),
        )
        .await?;
        *slot.write() = new;
        Ok(())
    }

    /// The cluster's cores now (the members that may hold replicas).
    pub fn set_cores(&self, cores: &[String]) {
        let mut c = self.cores.write();
        if c.as_slice() != cores {
            *c = cores.to_vec();
        }
    }

    /// Where to ask for shard `shard`'s leader when this node knows none:
    /// the shard's wanted replicas, then the other cores, the `n`th first.
    fn ask_next(&self, shard: u16, n: usize) -> Option<String> {
        let cores = self.cores.read();
        let mut order = replicas_of(shard, &cores, self.rf);
        for c in cores.iter() {
            if !order.contains(c) {
                order.push(c.clone());
            }
        }
        order.retain(|c| *c != self.me);
        if order.is_empty() {
            return None;
        }
        Some(order[n % order.len()].clone())
    }

    /// Hands an [`Rpc`] from another node to the shard's replica here.
    /// Raft's own messages are taken only from the cores of this node's
    /// cluster (as last given, see [`DsHost::set_cores`]): a node that left
    /// must not be pulled back into the groups it dropped by a leader
    /// that still counts it in.
    pub async fn serve(&self, shard: u16, rpc: Rpc) -> RpcReply {
        let from = match &rpc {
            Rpc::Append { req, .. } => req.vote.leader_id().voted_for(),
            Rpc::Vote { req, .. } => req.vote.leader_id().voted_for(),
            Rpc::Snapshot { vote, .. } => vote.leader_id().voted_for(),
            Rpc::Write(_) | Rpc::Read { .. } | Rpc::Initialized | Rpc::Group => None,
        };
        if let Some(from) = from {
            if !self.cores.read().iter().any(|c| node_id(c) == from) {
                return RpcReply::Refused(format!(
                    "{}: shard {shard}: the sender is not a core of this node's cluster",
                    self.me
                ));
            }
        }
        match self.replica(shard) {
            Some(r) => serve(&r, rpc).await,
            None => RpcReply::Refused(format!("{}: no shard {shard}", self.me)),
        }
    }

    /// Commits `cmd` in shard `shard` through its leader, wherever it is
    /// (following redirections, retrying while there is none), within
    /// `timeout`. Returns the command's log index and answer.
    ///
    /// An attempt whose outcome is unknown (the leader changed before the
    /// commit, the answer was lost) is tried again, so a command may be
    /// applied twice: row puts and removals come out the same, a claim
    /// takes the later epoch, and a release tried again answers `Fenced`
    /// (its owner is already gone).
    pub async fn submit(
        &self,
        shard: u16,
        cmd: Command,
        timeout: std::time::Duration,
    ) -> Result<(u64, Reply), DsError> {
        match self
            .through_leader(shard, timeout, &Ask::Write(cmd))
            .await?
        {
            Answer::Written(w) => Ok(w),
            Answer::Session(_) => Err(self.mixed_up(shard, timeout)),
        }
    }

    /// `client`'s session in shard `shard`, read at its leader (a
    /// linearizable read: everything committed before is in it).
    pub async fn read_session(
        &self,
        shard: u16,
        client: &str,
        timeout: std::time::Duration,
    ) -> Result<SessionRows, DsError> {
        match self
            .through_leader(shard, timeout, &Ask::Read(client.to_string()))
            .await?
        {
            Answer::Session(s) => Ok(s),
            Answer::Written(_) => Err(self.mixed_up(shard, timeout)),
        }
    }

    fn mixed_up(&self, shard: u16, waited: std::time::Duration) -> DsError {
        DsError::NoQuorum {
            shard,
            waited,
            why: "an answer of the wrong kind".into(),
        }
    }

    /// Runs `ask` at the shard's leader: here when this replica leads,
    /// else at the node it names (up to [`HOPS`] redirections in a row),
    /// pausing while no leader is known, until `timeout`.
    async fn through_leader(
        &self,
        shard: u16,
        timeout: std::time::Duration,
        ask: &Ask,
    ) -> Result<Answer, DsError> {
        if shard >= self.n_shards {
            return Err(DsError::NoShard(shard));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut why = String::from("none yet");
        let mut target: Option<String> = None;
        let mut hops = 0;
        let mut asked = 0usize;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(DsError::NoQuorum {
                    shard,
                    waited: timeout,
                    why,
                });
            }
            let remote = target.take().filter(|t| *t != self.me);
            let was_local = remote.is_none();
            let attempt = async {
                match remote {
                    None => match (self.replica(shard), ask) {
                        (None, _) => Err(Redirect::NoLeader("no replica".into())),
                        (Some(r), Ask::Write(cmd)) => {
                            r.write_here(cmd.clone()).await.map(Answer::Written)
                        }
                        (Some(r), Ask::Read(c)) => r.read_here(c).await.map(Answer::Session),
                    },
                    Some(node) => {
                        let rpc = match ask {
                            Ask::Write(cmd) => Rpc::Write(cmd.clone()),
                            Ask::Read(c) => Rpc::Read { client: c.clone() },
                        };
                        match self.transport.call(&node, shard, rpc).await {
                            Ok(RpcReply::Written(r)) => r.map(Answer::Written),
                            Ok(RpcReply::Session(r)) => r.map(Answer::Session),
                            Ok(RpcReply::Refused(w)) => {
                                Err(Redirect::NoLeader(format!("{node}: {w}")))
                            }
                            Ok(_) => Err(Redirect::NoLeader(format!("{node}: unexpected answer"))),
                            Err(e) => Err(Redirect::NoLeader(format!("{node}: {e}"))),
                        }
                    }
                }
            };
            let outcome = match tokio::time::timeout(left, attempt).await {
                Ok(o) => o,
                Err(_) => Err(Redirect::NoLeader("timed out".into())),
            };
            match outcome {
                Ok(a) => return Ok(a),
                Err(Redirect::Leader(l)) if hops < HOPS => {
                    hops += 1;
                    why = format!("redirected to {l}");
                    target = Some(l);
                }
                Err(r) => {
                    hops = 0;
                    why = match r {
                        Redirect::Leader(l) => format!("redirected to {l} too often"),
                        Redirect::NoLeader(w) => w,
                    };
                    // This node knows no leader (it may hold no replica of
                    // the shard): another core may. Otherwise wait for an
                    // election.
                    if was_local {
                        if let Some(next) = self.ask_next(shard, asked) {
                            asked += 1;
                            target = Some(next);
                            continue;
                        }
                    }
                    let pause = std::time::Duration::from_millis(50).min(left);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The first time the cluster has `n_sites` cores, the first of them
    /// by name makes each shard's group, with the replicas
    /// [`replicas_of`] names; the others learn it from the leaders. A
    /// shard is made only once every other core said its replica belongs
    /// to no group: a core that joins later and sorts first must not make
    /// a second group beside the cluster's. Returns how many shards this
    /// node made.
    pub async fn initialize_if_first(&self, cores: &[String]) -> Result<usize, ReplicaError> {
        self.set_cores(cores);
        let mut sorted: Vec<&String> = cores.iter().collect();
        sorted.sort();
        if cores.len() < self.n_sites || sorted.first().map(|s| s.as_str()) != Some(&self.me) {
            return Ok(0);
        }
        let mut made = 0;
        for r in self.all() {
            let inited = r
                .raft
                .is_initialized()
                .await
                .map_err(|e| ReplicaError::Raft {
                    shard: r.shard,
                    error: e.to_string(),
                })?;
            if inited || !self.nobody_else_has(r.shard, cores).await {
                continue;
            }
            r.initialize(&replicas_of(r.shard, cores, self.rf)).await?;
            made += 1;
        }
        Ok(made)
    }

    /// Whether every core but this one answered that its replica of
    /// `shard` belongs to no group.
    async fn nobody_else_has(&self, shard: u16, cores: &[String]) -> bool {
        for c in cores.iter().filter(|c| **c != self.me) {
            let asked = self.transport.call(c, shard, Rpc::Initialized);
            match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
                Ok(Ok(RpcReply::Initialized(false))) => {}
                _ => return false,
            }
        }
        true
    }

    /// On each shard this node leads, moves the membership one step
    /// towards [`replicas_of`] over `cores`: adds a missing replica as a
    /// learner, or, once every wanted replica is there and caught up,
    /// makes the wanted set the voters, or drops the learners no longer
    /// wanted. Never waits for a learner to catch up: a call that finds
    /// one behind leaves the shard as it is, and the next call looks
    /// again. A joint change left by an earlier leader (it lost its
    /// leadership between openraft's two steps) is carried on to the
    /// wanted voters, since no one else will. Errors are logged and
    /// retried at the next call.
    pub async fn reconcile(&self, cores: &[String]) -> Vec<Change> {
        self.set_cores(cores);
        let mut changes = Vec::new();
        for r in self.all() {
            let m = r.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                continue;
            }
            let want = replicas_of(r.shard, cores, self.rf);
            if want.is_empty() {
                continue;
            }
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
            let want_ids: BTreeSet<NodeId> = want.iter().map(|n| node_id(n)).collect();
            let joint = membership.get_joint_config().len() > 1;
            if voters == want_ids && !joint {
                // Learners left over (added for a core that left before
                // it became a voter) are dropped: a leader would keep
                // sending them the log.
                let stale: BTreeSet<NodeId> = known.difference(&want_ids).copied().collect();
                if stale.is_empty() {
                    continue;
                }
                let names: Vec<String> = stale
                    .iter()
                    .filter_map(|id| membership.get_node(id).map(|n| n.addr.clone()))
                    .collect();
                let drop = r
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(stale), false);
                match bounded(drop).await {
                    Ok(_) => changes.push(Change::Dropped {
                        shard: r.shard,
                        learners: names,
                    }),
                    Err(e) => {
                        tracing::warn!("ds shard {}: cannot drop {names:?}: {e}", r.shard)
                    }
                }
                continue;
            }
            // A core that sees itself alone while others still follow it
            // (it is leaving, or its view is being rebuilt) never takes a
            // shard away from them.
            if cores.len() == 1 && voters.len() > 1 {
                continue;
            }
            if let Some(missing) = want.iter().find(|n| !known.contains(&node_id(n))) {
                let node = BasicNode {
                    addr: missing.clone(),
                };
                match bounded(r.raft.add_learner(node_id(missing), node, false)).await {
                    Ok(_) => changes.push(Change::Learner {
                        shard: r.shard,
                        node: missing.clone(),
                    }),
                    Err(e) => {
                        tracing::warn!("ds shard {}: cannot add {missing}: {e}", r.shard)
                    }
                }
                continue;
            }
            // A wanted replica that is not a voter yet votes once it has
            // answered the leader and its log is within openraft's own
            // catch-up bound of the leader's. (openraft's blocking
            // add_learner counts a learner that never answered as caught
            // up while the log is short: a core that is down would vote,
            // and the shard would lose a replica of its quorum.)
            let last = m.last_log_index.unwrap_or(0);
            let threshold = r.raft.config().replication_lag_threshold;
            let behind = want_ids.difference(&voters).any(|id| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|rep| rep.get(id))
                    .and_then(|l| l.as_ref());
                matched.is_none_or(|l| last.saturating_sub(l.index) > threshold)
            });
            if behind {
                continue;
            }
            match bounded(r.raft.change_membership(want_ids, false)).await {
                Ok(_) => changes.push(Change::Voters {
                    shard: r.shard,
                    voters: want.clone(),
                }),
                Err(e) => tracing::warn!("ds shard {}: cannot change its voters: {e}", r.shard),
            }
        }
        changes
    }

    /// The sessions held by one of `nodes`, in the shards this node
    /// leads: `(shard, client, holder)`. Read from this replica's state,
    /// which may be a little behind its commits: whoever acts on it claims
    /// with [`Command::Adopt`], which checks the holder again.
    pub fn held_by(&self, nodes: &[String]) -> Vec<(u16, String, Owner)> {
        if nodes.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for r in self.all() {
            if r.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            for (client, owner) in r.sm.read(|s| s.owned_by(nodes)) {
                out.push((r.shard, client, owner));
            }
        }
        out
    }

    /// Every shard as this node sees it.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.all()
            .into_iter()
            .map(|r| {
                let m = r.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let name_of = |id: &NodeId| {
                    membership
                        .get_node(id)
                        .map(|n| n.addr.clone())
                        .unwrap_or_else(|| format!("#{id:016x}"))
                };
                let voters: Vec<String> = membership.voter_ids().map(|id| name_of(&id)).collect();
                let learners: Vec<String> =
                    membership.learner_ids().map(|id| name_of(&id)).collect();
                let last = m.last_log_index.unwrap_or(0);
                let lag = m
                    .replication
                    .as_ref()
                    .map(|rep| {
                        rep.iter()
                            .map(|(id, matched)| {
                                let at = matched.map(|l| l.index).unwrap_or(0);
                                (name_of(id), last.saturating_sub(at))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ShardStatus {
                    shard: r.shard,
                    state: format!("{:?}", m.state),
                    leader: m.current_leader.map(|id| name_of(&id)),
                    term: m.current_term,
                    voters,
                    learners,
                    last_log: m.last_log_index,
                    applied: m.last_applied.map(|l| l.index),
                    snapshot: m.snapshot.map(|l| l.index),
                    lag,
                    sessions: r.sm.read(|s| s.owners.len()),
                }
            })
            .collect()
    }

    /// Stops every replica.
    pub async fn shutdown(&self) {
        for r in self.all() {
            let _ = r.raft.shutdown().await;
        }
    }
}

/// The voters of `r`'s group (none: it belongs to no group yet).
fn voters(r: &Replica) -> BTreeSet<NodeId> {
    r.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// The value seen most often (the first of those tied), if any.
fn most_common(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let top = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == top).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("emqx{i}@127.0.0.{i}")).collect()
    }

    #[test]
    fn placement_is_the_same_everywhere_and_moves_little() {
        let three = cores(3);
        for s in 0..16 {
            let mut r = replicas_of(s, &three, 3);
            r.sort();
            assert_eq!(r, three, "every core holds every shard when rf = cores");
        }
        // Order of the input does not matter.
        let mut rev = cores(5);
        rev.reverse();
        for s in 0..16 {
            assert_eq!(replicas_of(s, &cores(5), 3), replicas_of(s, &rev, 3));
        }
        // A sixth core takes over only places where it ranks in the top 3,
        // and each shard changes at most one replica.
        let (five, six) = (cores(5), cores(6));
        let mut moved = 0;
        for s in 0..64 {
            let a: BTreeSet<_> = replicas_of(s, &five, 3).into_iter().collect();
            let b: BTreeSet<_> = replicas_of(s, &six, 3).into_iter().collect();
            let gone = a.difference(&b).count();
            assert!(gone <= 1, "shard {s}: {a:?} -> {b:?}");
            if gone == 1 {
                assert!(b.contains(&six[5]));
                moved += 1;
            }
        }
        // About rf / cores of the shards move to the new core.
        assert!((16..=48).contains(&moved), "{moved} of 64 moved");
        // Shards spread over the cores.
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        for s in 0..64 {
            for c in replicas_of(s, &six, 3) {
                *load.entry(c).or_default() += 1;
            }
        }
        assert!(load.values().all(|n| (16..=48).contains(n)), "{load:?}");
    }

    #[test]
    fn a_client_id_always_falls_in_the_same_shard() {
        // Fixed by SHA-256, not by the build's hasher: the shards are on disk.
        assert_eq!(shard_of("client-1", 16), shard_of("client-1", 16));
        let spread: BTreeSet<u16> = (0..200).map(|i| shard_of(&format!("c{i}"), 16)).collect();
        assert_eq!(spread.len(), 16);
        assert_eq!(shard_of("anything", 1), 0);
    }
}
