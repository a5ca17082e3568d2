//! The cluster service of a node: membership, heartbeats, route
//! replication and joins, over ractor_cluster (the control plane).
//!
//! Two actors per node:
//! - [`Endpoint`], the node's only remotable cluster actor, in process group
//!   `emqx_cluster:<node>`; it decodes what peers send and hands it on.
//! - [`ClusterService`], local, which owns all cluster state. Work that
//!   waits on the network (dialing, joining, catching up on routes) runs
//!   in spawned tasks that report back, so the service never blocks.
//!
//! This file holds the state, the messages and their dispatch; what each
//! message does lives with its concern: `join.rs` (join, leave),
//! `health.rs` (heartbeats, up and down, autoclean), `heal.rs` (autoheal
//! effects and the restart), `routes_sync.rs` (route catch-up),
//! `peers_in.rs` (what peers send), `hosting.rs` (a core's replicants: its
//! replication stream, their writes, which core hosts which) and
//! `following.rs` (a replicant: the core it follows and its copy). Calls
//! to peers are in `../rpc.rs`.

mod ds_drive;
mod following;
mod heal;
mod health;
mod hosting;
mod join;
mod peers_in;
mod routes_sync;

use super::autoheal::{Beat, Effect, HealConfig, Monitor, SplitView};
use super::copy::{CoreOp, LocalCopy, MemberRow};
use super::detector::Backoff;
use super::ds::driver::{spawn_driver, DsWork};
use super::ds::host::DsHost;
use super::membership::{
    atom, status_json, status_line, status_value, MemberInfo, Membership, Role,
};
use super::registry::Registry;
use super::rlog::{Replica, Upstream};
use super::routes::{LocalRouteLog, RouteChange, RouteOp};
pub use super::rpc::{call_peer, call_peer_within, endpoint_of, group_of, EndpointMsg};
use super::rpc::{cast_peer, CALL_TIMEOUT};
pub use super::view::ClusterView;
use super::wire::{self, JoinSnapshot, Note, Req, Resp};
use crate::metrics::inc;
use crate::peer_tls::{PeerTls, TLS_HINT};
use crate::peers::HandedOver;
use crate::replicated::{ReplTables, TableOps};
use crate::Ctx;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::RactorMessage;
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServerMessage};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Route changes per batch sent to the peers at most.
const ROUTE_BATCH: usize = 1_000;
/// How long to wait for a dialed link to become ready.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an autoheal restart of one node may take.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Snapshot rows per message of a core's stream.
const SNAPSHOT_PART_ROWS: usize = 4;

/// Heartbeats a replicant waits for word from its core before it follows
/// another: the down timeout, in heartbeat intervals.
fn quiet_beats(heartbeat: Duration, down: Duration) -> u32 {
    let hb = heartbeat.as_millis().max(1);
    (down.as_millis().div_ceil(hb)).clamp(2, 1000) as u32
}

pub struct Endpoint;

/// What the endpoint hands requests to.
pub struct EndpointArgs {
    pub svc: ActorRef<SvcMsg>,
    /// This node's durable storage replicas (a core that runs them).
    pub ds: Option<Arc<DsHost>>,
}

impl Actor for Endpoint {
    type Msg = EndpointMsg;
    type State = EndpointArgs;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<EndpointMsg>,
        args: Self::State,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EndpointMsg::Call(bytes, reply) => match wire::decode::<Req>(&bytes) {
                Ok(req) => st.take(req, reply, true),
                Err(e) => {
                    tracing::warn!("cluster: {e}");
                    let _ = reply.send(wire::encode(&Resp::Refused(e.to_string())));
                }
            },
            EndpointMsg::Cast(bytes) => match wire::decode::<Note>(&bytes) {
                Ok(note) => {
                    let _ = st.svc.cast(SvcMsg::Note(note));
                }
                Err(e) => tracing::warn!("cluster: {e}"),
            },
        }
        Ok(())
    }
}

impl EndpointArgs {
    /// Answers a request here, or hands it to the service. `whole`: it
    /// came in one message (a request put together from its parts cannot
    /// be a part itself).
    fn take(&self, req: Req, reply: RpcReplyPort<Vec<u8>>, whole: bool) {
        fn send(reply: RpcReplyPort<Vec<u8>>, resp: &Resp) {
            let _ = reply.send(wire::encode(resp));
        }
        match req {
            // The rest of a big reply, and the parts of a big request:
            // served here, not by the service.
            Req::Part { id, offset } => send(reply, &super::rpc::part(id, offset)),
            Req::Upload { id, offset, bytes } if whole => {
                send(reply, &super::rpc::upload(id, offset, bytes))
            }
            Req::Uploaded { id, total } if whole => match super::rpc::uploaded(id, total) {
                Ok(req) => self.take(req, reply, false),
                Err(why) => send(reply, &Resp::Refused(why)),
            },
            Req::Upload { .. } | Req::Uploaded { .. } => send(
                reply,
                &Resp::Refused("a part inside a request in parts".into()),
            ),
            // A shard's message: to its replica, in a task of its own (a
            // forwarded command waits for its commit).
            Req::Ds { shard, rpc } => match &self.ds {
                Some(ds) => {
                    let ds = ds.clone();
                    tokio::spawn(async move {
                        let answer = Resp::Ds(Box::new(ds.serve(shard, *rpc).await));
                        let _ = reply.send(super::rpc::reply_bytes(&answer));
                    });
                }
                None => send(
                    reply,
                    &Resp::Refused("this node runs no durable storage".into()),
                ),
            },
            req => {
                let _ = self.svc.cast(SvcMsg::Remote(req, reply));
            }
        }
    }
}

/// Settings of the cluster service.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub heartbeat_interval: Duration,
    pub down_timeout: Duration,
    /// Where `cluster.json` lives.
    pub data_dir: PathBuf,
    /// How inter-node connections are opened.
    pub dialer: Dialer,
    /// `cluster.discovery_strategy = singleton`: no join either way.
    pub singleton: bool,
    /// `cluster.autoclean`: a member down this long is removed; zero = never.
    pub autoclean: Duration,
    /// `cluster.autoheal`, `cluster.autoheal_delay`.
    pub heal: HealConfig,
}

#[derive(RactorMessage)]
pub enum SvcMsg {
    Remote(Req, RpcReplyPort<Vec<u8>>),
    Note(Note),
    LinkUp(String),
    LinkDown(String),
    Tick,
    /// Route changes of this node's subscribers, in order (as many as
    /// had queued up: one batch to each peer).
    LocalRoutes(Vec<RouteOp>),
    /// A retained message published on this node, to replicate.
    Retained(emqx_mqtt::message::Message),
    /// A write to a replicated table made on this node, to replicate.
    TableWrite(TableOps),
    DialDone(String, bool),
    RoutesFetched(String, Result<Resp, super::rpc::PeerError>),
    // The local API (ctl).
    /// `cluster join`: the cluster status after joining, or why not.
    Join(String, RpcReplyPort<Result<String, JoinError>>),
    Adopt(String, Box<JoinSnapshot>, RpcReplyPort<()>),
    Leave(RpcReplyPort<String>),
    ForceLeave(String, RpcReplyPort<String>),
    Status(bool, RpcReplyPort<String>),
    RunningPeers(RpcReplyPort<Vec<String>>),
    /// Our join finished (either way).
    JoinEnded,
    /// Whether this node has other members, and whether autocluster may run.
    Clustered(RpcReplyPort<(bool, bool)>),
    /// `cluster discovery enable`.
    EnableDiscovery(RpcReplyPort<()>),
    /// Forwarding statistics per peer.
    ForwardStats(RpcReplyPort<Vec<crate::forward::PeerStats>>),
    /// Autoheal: the split view the leader collected.
    Views(BTreeMap<String, SplitView>),
    /// Autoheal: this node is being restarted: drop the cluster data, take
    /// a new incarnation, and answer with our new member info.
    RebootReset(RpcReplyPort<MemberInfo>),
    /// Autoheal: our restart (as a minority node) finished.
    RebootEnded,
    /// Autoheal: the heal we coordinated finished.
    HealEnded,
}

pub struct ClusterService;

pub struct SvcArgs {
    pub ctx: Arc<Ctx>,
    pub me: MemberInfo,
    pub node_server: ActorRef<NodeServerMessage>,
    pub view: Arc<ClusterView>,
    /// The client id registry the node's connect sequence uses; this
    /// service serves its lock requests and tells it who runs.
    pub registry: Arc<Registry>,
    pub settings: ClusterSettings,
    pub route_rx: mpsc::UnboundedReceiver<RouteOp>,
    pub retain_rx: mpsc::UnboundedReceiver<emqx_mqtt::message::Message>,
    /// The replicated tables (users), and this node's writes to them.
    pub tables: Arc<ReplTables>,
    pub table_rx: mpsc::UnboundedReceiver<TableOps>,
    /// This core's durable storage replicas, if it runs them.
    pub ds: Option<Arc<DsHost>>,
}

pub struct SvcState {
    ctx: Arc<Ctx>,
    tables: Arc<ReplTables>,
    registry: Arc<Registry>,
    membership: Membership,
    /// Failure detection, partitions and autoheal (plain state machine).
    monitor: Monitor,
    backoff: HashMap<String, Backoff>,
    dialing: HashSet<String>,
    syncing: HashSet<String>,
    /// Peers with ready ractor_cluster links, and how many.
    links: HashMap<String, usize>,
    /// Members without a link, since when (see `health::dial_now`).
    want_link: HashMap<String, Instant>,
    /// Nodes this node left: their heartbeats are answered with MemberLeft
    /// so a member that missed the leave learns of it.
    left_from: HashSet<String>,
    incarnations: HashMap<String, u64>,
    local: LocalRouteLog,
    view: Arc<ClusterView>,
    node_server: ActorRef<NodeServerMessage>,
    settings: ClusterSettings,
    last_heartbeat: Instant,
    /// Autocluster may join; `cluster leave` turns it off until re-enabled.
    discovery: bool,
    /// A member restarted with an empty retainer: fetch the cluster's
    /// retained messages from the first peer that comes up.
    retained_sync: bool,
    /// When each member currently down went down (for autoclean).
    down_since: HashMap<String, Instant>,
    last_autoclean: Instant,
    /// Nodes removed by autoclean: if one comes back, it is told so (and
    /// rejoins through discovery, if that is on there).
    removed: HashSet<String>,
    /// A join of ours is in flight.
    joining: bool,
    /// Members announced (MemberUp) while our join was in flight; applied
    /// after the join snapshot so a node joining at the same moment through
    /// the same member is not lost.
    pending_ups: Vec<MemberInfo>,
    /// Autoheal: we coordinate a heal (restarting the minority).
    coordinating: bool,
    /// Autoheal: we are being restarted.
    rebooting: bool,
    /// A core: the replicants that follow it and the changes to stream to
    /// them (see `hosting.rs`).
    upstream: Upstream,
    stream_ops: Vec<CoreOp>,
    streamed_members: Vec<MemberRow>,
    /// The route table keeps its changes for the stream.
    recording: bool,
    /// A core: the core hosting each replicant (empty: none) and when that
    /// was last said.
    hosts: HashMap<String, (String, Instant)>,
    /// A replicant: its stream and copy (see `following.rs`).
    follower: Option<Follower>,
    /// The task that makes this core's durable storage replicas follow the
    /// membership (see `ds_drive.rs`).
    ds: Option<mpsc::UnboundedSender<DsWork>>,
}

/// A replicant's side: the stream it follows, the copy it feeds, and its
/// writes not yet handed to a core.
pub(super) struct Follower {
    replica: Replica<LocalCopy>,
    copy: LocalCopy,
    unsent: VecDeque<Note>,
    /// The core being dialed to follow.
    dialing: Option<String>,
}

/// Turns the node server's session events into link up/down for the
/// service. Only sessions that became ready count: a session that lost the
/// election between two simultaneous dials, or failed the cookie check,
/// never marks a peer up or down.
struct LinkEvents {
    svc: ActorRef<SvcMsg>,
    authenticated: parking_lot::Mutex<HashSet<ractor::ActorId>>,
    ready: parking_lot::Mutex<HashSet<ractor::ActorId>>,
}

impl NodeEventSubscription for LinkEvents {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, s: NodeServerSessionInformation) {
        super::guard::authenticated(&s.peer_addr);
        self.authenticated.lock().insert(s.actor.get_id());
    }
    fn node_session_ready(&self, s: NodeServerSessionInformation) {
        if let Some(p) = s.peer_name {
            self.ready.lock().insert(s.actor.get_id());
            let _ = self.svc.cast(SvcMsg::LinkUp(p.name));
        }
    }
    fn node_session_disconnected(&self, s: NodeServerSessionInformation) {
        let id = s.actor.get_id();
        let was_authenticated = self.authenticated.lock().remove(&id);
        let was_ready = self.ready.lock().remove(&id);
        let name = s
            .peer_name
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        if was_ready {
            let _ = self.svc.cast(SvcMsg::LinkDown(name));
        } else if !was_authenticated {
            tracing::warn!(
                peer = %s.peer_addr,
                node = %name,
                "inter-node connection closed before authentication (wrong cookie, TLS on one side only (cluster.proto_dist), or the loser of two simultaneous connections)"
            );
        }
    }
}

impl Actor for ClusterService {
    type Msg = SvcMsg;
    type State = SvcState;
    type Arguments = SvcArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SvcMsg>,
        a: SvcArgs,
    ) -> Result<SvcState, ActorProcessingErr> {
        let path = a.settings.data_dir.join("cluster.json");
        let membership = Membership::load(a.me.clone(), &path)
            .map_err(|e| -> ActorProcessingErr { e.into() })?;
        let now = Instant::now();
        let mut monitor = Monitor::new(
            &a.me.node,
            a.me.incarnation,
            a.me.role,
            a.settings.heal.clone(),
            a.settings.down_timeout,
        );
        let replicant = a.me.role == Role::Replicant;
        for p in membership.peers() {
            if !replicant && p.info.role == Role::Core {
                monitor.add_member(&p.info.node, p.info.role, now);
            }
            add_forward_peer(&a.view, &p.info);
        }
        let _ = a.node_server.cast(NodeServerMessage::SubscribeToEvents {
            id: "emqx_cluster".into(),
            subscription: Box::new(LinkEvents {
                svc: myself.clone(),
                authenticated: Default::default(),
                ready: Default::default(),
            }),
        });
        // Local route changes and retained messages arrive on channels
        // (the shard actors and publishers must never wait on us).
        let (me1, me2) = (myself.clone(), myself.clone());
        let (mut rrx, mut trx) = (a.route_rx, a.retain_rx);
        tokio::spawn(async move {
            let mut ops = Vec::new();
            while rrx.recv_many(&mut ops, ROUTE_BATCH).await > 0 {
                if me1
                    .cast(SvcMsg::LocalRoutes(std::mem::take(&mut ops)))
                    .is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(m) = trx.recv().await {
                if me2.cast(SvcMsg::Retained(m)).is_err() {
                    break;
                }
            }
        });
        let (me3, mut wrx) = (myself.clone(), a.table_rx);
        tokio::spawn(async move {
            while let Some(ops) = wrx.recv().await {
                if me3.cast(SvcMsg::TableWrite(ops)).is_err() {
                    break;
                }
            }
        });
        myself.send_interval(Duration::from_millis(500), || SvcMsg::Tick);
        if !membership.is_alone() {
            tracing::info!(
                "cluster: rejoining {} known member(s)",
                membership.peers().count()
            );
        }
        // A replicant takes everything from its core's stream.
        let retained_sync = !membership.is_alone() && !replicant;
        let follower = replicant.then(|| Follower {
            replica: Replica::new(
                rand::random(),
                quiet_beats(a.settings.heartbeat_interval, a.settings.down_timeout),
            ),
            copy: LocalCopy {
                view: a.view.clone(),
                ctx: a.ctx.clone(),
                tables: a.tables.clone(),
                members: Vec::new(),
                newer_here: Vec::new(),
            },
            unsent: VecDeque::new(),
            dialing: None,
        });
        let ds = a.ds.map(|h| spawn_driver(h, a.ctx.clone()));
        let st = SvcState {
            tables: a.tables,
            ctx: a.ctx,
            registry: a.registry,
            membership,
            monitor,
            backoff: HashMap::new(),
            dialing: HashSet::new(),
            syncing: HashSet::new(),
            links: HashMap::new(),
            want_link: HashMap::new(),
            left_from: HashSet::new(),
            incarnations: HashMap::new(),
            local: LocalRouteLog::new(10_000),
            view: a.view,
            node_server: a.node_server,
            settings: a.settings,
            last_heartbeat: now,
            discovery: true,
            retained_sync,
            down_since: HashMap::new(),
            last_autoclean: now,
            removed: HashSet::new(),
            joining: false,
            pending_ups: Vec::new(),
            coordinating: false,
            rebooting: false,
            upstream: Upstream::new(SNAPSHOT_PART_ROWS),
            stream_ops: Vec::new(),
            streamed_members: Vec::new(),
            recording: false,
            hosts: HashMap::new(),
            follower,
            ds,
        };
        st.publish_running();
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SvcMsg>,
        msg: SvcMsg,
        st: &mut SvcState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SvcMsg::Remote(req, reply) => match req {
                // These wait on local sessions: never hold the service up.
                Req::Discard { client } => {
                    let ctx = st.ctx.clone();
                    tokio::spawn(async move {
                        let found = ctx.cm.discard(&client).await;
                        let _ = reply.send(wire::encode(&Resp::Bool(found)));
                    });
                }
                Req::HeldFor { down, filters, to } => {
                    let view = st.view.clone();
                    tokio::spawn(async move {
                        let held = view.held_here(&down, &filters, &to).await;
                        if !held.is_empty() {
                            tracing::info!(
                                "cluster: {} message(s) held for {down} copied to {to}, which took a session of it",
                                held.len()
                            );
                        }
                        let _ = reply.send(super::rpc::reply_bytes(&Resp::Held(held)));
                    });
                }
                Req::Takeover { client } => {
                    let ctx = st.ctx.clone();
                    tokio::spawn(async move {
                        let resp = match ctx.cm.takeover_out(&client).await {
                            Some(HandedOver {
                                snapshot,
                                gathering_from: Some(from),
                            }) => Resp::Handover {
                                snapshot: Box::new(snapshot),
                                gathering_from: from.to_string(),
                            },
                            h => Resp::Session(h.map(|h| Box::new(h.snapshot))),
                        };
                        let _ = reply.send(super::rpc::reply_bytes(&resp));
                    });
                }
                Req::Kick { client } => {
                    let ctx = st.ctx.clone();
                    tokio::spawn(async move {
                        let found = ctx.cm.kick(&client).await;
                        let _ = reply.send(wire::encode(&Resp::Bool(found)));
                    });
                }
                Req::Reboot { coordinator } => {
                    if std::mem::replace(&mut st.rebooting, true) {
                        let _ = reply.send(wire::encode(&Resp::Bool(false)));
                    } else {
                        let ctx = st.ctx.clone();
                        let svc = myself.clone();
                        let ns = st.node_server.clone();
                        let ip = st.settings.dialer.clone();
                        tokio::spawn(async move {
                            let ok = reboot(ctx, &svc, ns, &ip, coordinator).await;
                            let _ = svc.cast(SvcMsg::RebootEnded);
                            let _ = reply.send(wire::encode(&Resp::Bool(ok)));
                        });
                    }
                }
                Req::Relay { to, hops, req } => {
                    tokio::spawn(async move {
                        let resp =
                            match super::rpc::relay_within(&to, hops, &req, CALL_TIMEOUT).await {
                                Ok(r) => r,
                                Err(e) => Resp::Refused(e.to_string()),
                            };
                        let _ = reply.send(super::rpc::reply_bytes(&resp));
                    });
                }
                req => {
                    let resp = st.on_request(req).await;
                    let _ = reply.send(super::rpc::reply_bytes(&resp));
                }
            },
            SvcMsg::Note(n) => st.on_note(&myself, n),
            SvcMsg::LinkUp(node) => {
                st.want_link.remove(&node);
                *st.links.entry(node.clone()).or_default() += 1;
                if let Some(b) = st.backoff.get_mut(&node) {
                    b.reset();
                }
                if st.follower.is_some() {
                    st.core_linked(&myself, &node);
                } else if st.membership.peer(&node).is_some() {
                    st.send_heartbeat(&node);
                }
            }
            SvcMsg::LinkDown(node) => {
                // Another ready session to the same peer may remain.
                let left = match st.links.get_mut(&node) {
                    Some(n) => {
                        *n = n.saturating_sub(1);
                        *n
                    }
                    None => 0,
                };
                if left == 0 {
                    st.links.remove(&node);
                    let eff = st.monitor.on_link_lost(&node);
                    st.apply(&myself, eff, "link closed");
                    if st.follower.is_some() {
                        st.core_lost(&myself, &node);
                    } else {
                        st.follower_lost(&node);
                    }
                }
            }
            SvcMsg::Tick => st.tick(&myself),
            SvcMsg::LocalRoutes(ops) => {
                // Only the changes that changed something are numbered.
                let base = st.local.version;
                let ops: Vec<RouteOp> = ops
                    .into_iter()
                    .filter(|op| st.local.record(op.clone()).is_some())
                    .collect();
                if !ops.is_empty() {
                    if st.upstream.agents() > 0 {
                        st.stream_ops.push(CoreOp::Route(RouteChange::Apply {
                            origin: st.me().to_string(),
                            base,
                            ops: ops.clone(),
                        }));
                    }
                    let note = Note::Routes {
                        node: st.me().to_string(),
                        incarnation: st.membership.me.incarnation,
                        base,
                        ops,
                    };
                    st.write(note);
                }
            }
            SvcMsg::Retained(m) => st.write(Note::Retain { msg: m }),
            SvcMsg::TableWrite(ops) => st.write(Note::Table(ops)),
            SvcMsg::DialDone(node, ok) => {
                st.dialing.remove(&node);
                let core_dialed = st
                    .follower
                    .as_mut()
                    .is_some_and(|f| f.dialing.take_if(|d| *d == node).is_some());
                if core_dialed && ok {
                    st.core_linked(&myself, &node);
                }
                if !ok {
                    let b = st.backoff.entry(node).or_insert_with(|| {
                        Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
                    });
                    b.failed(Instant::now(), &mut rand::rng());
                }
            }
            SvcMsg::RoutesFetched(node, r) => {
                st.syncing.remove(&node);
                match r {
                    Ok(Resp::Routes {
                        incarnation,
                        version,
                        delta,
                        snapshot,
                    }) => {
                        let new_run = st.incarnations.get(&node) != Some(&incarnation);
                        if new_run && delta.as_ref().is_some_and(|(base, _)| *base != 0) {
                            // A delta of a run we knew nothing of fits only
                            // from zero: ask for that, keeping the routes we
                            // have meanwhile.
                            st.fetch_routes_since(&myself, &node, 0);
                            return Ok(());
                        }
                        st.incarnations.insert(node.clone(), incarnation);
                        let mut routes = st.view.routes.write();
                        if new_run && delta.is_some() {
                            // Replaced in one step under the lock: no
                            // publish sees the node without routes.
                            routes.purge(&node);
                        }
                        match (delta, snapshot) {
                            (Some((base, ops)), _) if routes.apply(&node, base, &ops).is_err() => {
                                tracing::warn!(
                                    "cluster: route delta from {node} does not fit; will resync"
                                );
                            }
                            (None, Some(keys)) => routes.replace(&node, version, keys),
                            _ => {}
                        }
                    }
                    Ok(other) => {
                        tracing::warn!("cluster: unexpected route reply from {node}: {other:?}")
                    }
                    Err(e) => tracing::info!("cluster: route sync with {node} failed: {e}"),
                }
            }
            SvcMsg::Join(target, reply) => st.start_join(&myself, target, reply),
            SvcMsg::Adopt(via, snap, reply) => {
                st.adopt(&via, *snap);
                // A replicant follows a core at once (not at the next tick).
                st.follow_core(&myself);
                let _ = reply.send(());
            }
            SvcMsg::Leave(reply) => {
                let out = st.leave().await;
                let _ = reply.send(out);
            }
            SvcMsg::ForceLeave(node, reply) => {
                let out = st.force_leave(&node);
                let _ = reply.send(out);
            }
            SvcMsg::Status(json, reply) => {
                let _ = reply.send(st.status(json));
            }
            SvcMsg::Views(views) => {
                let eff = st.monitor.on_views(&views, Instant::now());
                st.apply(&myself, eff, "");
            }
            SvcMsg::RebootReset(reply) => {
                let _ = reply.send(st.reboot_reset());
            }
            SvcMsg::RebootEnded => {
                st.rebooting = false;
                st.joining = false;
                st.pending_ups.clear();
            }
            SvcMsg::HealEnded => st.coordinating = false,
            SvcMsg::Clustered(reply) => {
                let _ = reply.send((!st.membership.is_alone(), st.discovery));
            }
            SvcMsg::EnableDiscovery(reply) => {
                st.discovery = true;
                let _ = reply.send(());
            }
            SvcMsg::ForwardStats(reply) => {
                let _ = reply.send(st.view.forwarder.peers());
            }
            SvcMsg::JoinEnded => {
                st.joining = false;
                st.pending_ups.clear();
            }
            SvcMsg::RunningPeers(reply) => {
                let v = st
                    .membership
                    .peers()
                    .filter(|m| m.running)
                    .map(|m| m.info.node.clone())
                    .collect();
                let _ = reply.send(v);
            }
        }
        st.flush_stream();
        st.publish_running();
        Ok(())
    }
}

fn add_forward_peer(view: &ClusterView, info: &MemberInfo) {
    match info.fwd_addr.parse::<SocketAddr>() {
        Ok(a) => view.forwarder.add_peer(&info.node, a),
        Err(_) => tracing::warn!(
            "cluster: bad forwarding address {:?} for {}",
            info.fwd_addr,
            info.node
        ),
    }
}

/// How this node opens inter-node connections.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    /// Outgoing sockets bind to this address first (the node's own).
    pub bind_ip: Option<IpAddr>,
    /// TLS (`cluster.proto_dist = inet_tls`); clear text when `None`.
    pub tls: Option<PeerTls>,
}

/// Opens an inter-node connection from our own address (so a rule that
/// cuts one loopback alias from another cuts it too) and hands it to the
/// node server, which runs the cookie handshake.
pub async fn dial(
    node_server: &ActorRef<NodeServerMessage>,
    dialer: &Dialer,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = dialer.bind_ip {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(LINK_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let peer_addr = stream.peer_addr()?;
    let local_addr = stream.local_addr()?;
    let opened = match &dialer.tls {
        None => NodeServerMessage::ConnectionOpened {
            stream: Box::new(NetworkStream::Raw {
                peer_addr,
                local_addr,
                stream,
            }),
            is_server: false,
        },
        Some(tls) => {
            let stream = tokio::time::timeout(LINK_TIMEOUT, tls.connect(stream, peer_addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })?
                .map_err(|e| {
                    std::io::Error::other(format!(
                        "TLS handshake with {peer_addr} failed: {e} ({TLS_HINT})"
                    ))
                })?;
            NodeServerMessage::ConnectionOpenedExternal {
                stream: Box::new(super::guard::TlsClient {
                    stream,
                    peer: peer_addr,
                    local: local_addr,
                }),
                is_server: false,
            }
        }
    };
    node_server
        .cast(opened)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Makes sure there is a ready link to `node` (dialing `addr` if there is
/// none) and its endpoint is known; false if not within the link timeout.
async fn ensure_link(
    node_server: &ActorRef<NodeServerMessage>,
    dialer: &Dialer,
    node: &str,
    addr: SocketAddr,
) -> bool {
    if endpoint_of(node).is_some() {
        return true;
    }
    if let Err(e) = dial(node_server, dialer, addr).await {
        tracing::debug!("cannot link to {node} at {addr}: {e}");
        if dialer.tls.is_some() && e.kind() != std::io::ErrorKind::ConnectionRefused {
            tracing::warn!("cannot link to {node} at {addr}: {e}");
        }
        return false;
    }
    let deadline = Instant::now() + LINK_TIMEOUT;
    while endpoint_of(node).is_none() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Asks a node when it started and its role, linking to it first if
/// needed.
pub async fn probe(
    node_server: &ActorRef<NodeServerMessage>,
    dialer: &Dialer,
    node: &str,
) -> Option<(u64, Role)> {
    let addr = resolve_dist_addr(node).await?;
    if !ensure_link(node_server, dialer, node, addr).await {
        return None;
    }
    match call_peer(node, &Req::About).await {
        Ok(Resp::About {
            incarnation, role, ..
        }) => Some((incarnation, role)),
        _ => None,
    }
}

/// Why `cluster join` failed. Displayed as EMQX prints the reason
/// (`{node_down,'x@h'}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("{{node_down,'{0}'}}")]
    NodeDown(String),
    #[error("{{cannot_join_itself,'{0}'}}")]
    CannotJoinItself(String),
    #[error("{{already_in_cluster,'{0}'}}")]
    AlreadyInCluster(String),
    #[error("singleton")]
    Singleton,
    /// The target refused, for the reason it gave.
    #[error("{{{why},'{target}'}}")]
    Refused { why: String, target: String },
}

/// The newcomer's side of `cluster join`: link, ask, adopt; returns the
/// cluster status afterwards.
async fn join_task(
    ns: &ActorRef<NodeServerMessage>,
    ip: &Dialer,
    target: &str,
    me_info: MemberInfo,
    svc: &ActorRef<SvcMsg>,
) -> Result<String, JoinError> {
    let down = || JoinError::NodeDown(target.to_string());
    let Some(addr) = resolve_dist_addr(target).await else {
        return Err(down());
    };
    if !ensure_link(ns, ip, target, addr).await {
        return Err(down());
    }
    match call_peer(target, &Req::Join { info: me_info }).await {
        Ok(Resp::Joined(snap)) => {
            let t = target.to_string();
            let _ = svc
                .call(|r| SvcMsg::Adopt(t, snap, r), Some(CALL_TIMEOUT))
                .await;
            let status = match svc
                .call(|r| SvcMsg::Status(false, r), Some(CALL_TIMEOUT))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(s)) => s,
                _ => String::new(),
            };
            Ok(status)
        }
        Ok(Resp::Refused(why)) => Err(JoinError::Refused {
            why,
            target: target.to_string(),
        }),
        Ok(_) | Err(_) => Err(down()),
    }
}

/// A minority node's autoheal restart: listeners closed, every MQTT
/// client disconnected (persistent sessions stay, as when the network drops
/// a client), the cluster data dropped, then a rejoin through the
/// coordinator (which brings its members, routes and retained messages).
/// A kept session whose client id has a session on another node (the
/// client reconnected on the other side of the split) is discarded: the
/// majority's wins, so a client id stays unique. Then the listeners open
/// again. The peers see the new incarnation and fetch this node's routes,
/// the kept sessions' subscriptions among them.
async fn reboot(
    ctx: Arc<Ctx>,
    svc: &ActorRef<SvcMsg>,
    ns: ActorRef<NodeServerMessage>,
    ip: &Dialer,
    coordinator: String,
) -> bool {
    tracing::warn!(
        "autoheal: {coordinator} restarts this node's broker: clients are disconnected and the cluster data is synced again from {coordinator}"
    );
    inc(&ctx.broker.metrics.cluster_autoheal_restarts);
    ctx.listeners.send_replace(false);
    ctx.cm.disconnect_all().await;
    let reset = svc.call(SvcMsg::RebootReset, Some(CALL_TIMEOUT)).await;
    let Ok(ractor::rpc::CallResult::Success(info)) = reset else {
        tracing::error!("autoheal: cannot reset the cluster state for the restart");
        ctx.listeners.send_replace(true);
        return false;
    };
    let mut ok = false;
    for attempt in 1..=3 {
        match join_task(&ns, ip, &coordinator, info.clone(), svc).await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) => {
                tracing::warn!("autoheal: rejoining {coordinator} failed (attempt {attempt}): {e}")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if ok {
        drop_duplicate_sessions(&ctx, svc, &coordinator).await;
    }
    ctx.listeners.send_replace(true);
    if ok {
        tracing::warn!("autoheal: this node restarted and rejoined through {coordinator}");
    }
    ok
}

/// After an autoheal rejoin: discards each session kept here whose client
/// id also has a session on a running peer.
async fn drop_duplicate_sessions(ctx: &Ctx, svc: &ActorRef<SvcMsg>, coordinator: &str) {
    let kept: Vec<String> = ctx.cm.client_ids().iter().map(|c| c.to_string()).collect();
    if kept.is_empty() {
        return;
    }
    // The coordinator runs with us once the join is adopted; wait for the
    // rest of the links a little.
    let mut peers = Vec::new();
    for _ in 0..20 {
        if let Ok(ractor::rpc::CallResult::Success(p)) =
            svc.call(SvcMsg::RunningPeers, Some(CALL_TIMEOUT)).await
        {
            peers = p;
        }
        if peers.iter().any(|p| p == coordinator) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dropped = 0usize;
    for peer in &peers {
        for chunk in kept.chunks(SESSION_QUERY_CHUNK) {
            let req = Req::Sessions {
                clients: chunk.to_vec(),
            };
            match call_peer(peer, &req).await {
                Ok(Resp::Clients(there)) => {
                    for c in there {
                        if ctx.cm.discard(&c).await {
                            dropped += 1;
                            tracing::info!(
                                client_id = %c,
                                "autoheal: session discarded here, {peer} has the client's session"
                            );
                        }
                    }
                }
                other => {
                    tracing::warn!("autoheal: cannot ask {peer} which sessions it holds: {other:?}")
                }
            }
        }
    }
    tracing::info!(
        "autoheal: kept {} session(s) across the restart, {dropped} discarded as held elsewhere",
        kept.len() - dropped.min(kept.len())
    );
}

/// Client ids per [`Req::Sessions`] request.
const SESSION_QUERY_CHUNK: usize = 10_000;

/// The inter-node address of a node from its name: host part (an IP
/// address; see [`resolve_dist_addr`] for host names), port 4370 + the
/// trailing number of the short name.
pub fn dist_addr_of(node: &str) -> Option<SocketAddr> {
    let (short, host) = node.split_once('@')?;
    Some(SocketAddr::new(host.parse().ok()?, dist_port_of(short)))
}

/// [`dist_addr_of`] for any node name: a host name is looked up now
/// (discovery may name nodes by DNS SRV targets or pod host names).
pub async fn resolve_dist_addr(node: &str) -> Option<SocketAddr> {
    let (short, host) = node.split_once('@')?;
    let ip = emqx_discovery::hosts::lookup(host).await?;
    Some(SocketAddr::new(ip, dist_port_of(short)))
}

/// 4370 + the trailing number of a short name (`emqx12` -> 4382).
pub fn dist_port_of(short: &str) -> u16 {
    let digits: String = short
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let offset = digits
        .parse::<u64>()
        .map(|n| (n % 60000) as u16)
        .unwrap_or(0);
    4370 + offset
}

impl SvcState {
    /// Hands the running peers to the client registry, which reads them
    /// on every connect.
    fn publish_running(&self) {
        let running: Vec<&super::membership::Member> =
            self.membership.peers().filter(|m| m.running).collect();
        let mut lockers: Vec<String> = running
            .iter()
            .filter(|m| m.info.role == Role::Core)
            .map(|m| m.info.node.clone())
            .collect();
        if !self.is_replicant() {
            lockers.push(self.me().to_string());
        }
        self.registry.set_running(
            running.iter().map(|m| m.info.node.clone()).collect(),
            lockers,
        );
    }

    fn me(&self) -> &str {
        &self.membership.me.node
    }

    /// `cluster status [--json]`, with the partitions and the state of
    /// autoheal while there are any (or a heal is under way).
    fn status(&self, json: bool) -> String {
        let (r, s) = self.membership.status();
        let parts = self.monitor.partitions();
        let heal = if parts.is_empty() && !self.rebooting && !self.coordinating {
            None
        } else if !self.settings.heal.enabled {
            Some("off")
        } else if self.rebooting {
            Some("restarting this node")
        } else if self.coordinating {
            Some("restarting the minority")
        } else {
            Some("pending")
        };
        // Roles are shown once the cluster has replicants (an all-core
        // cluster prints exactly what EMQX prints).
        let roles: Option<BTreeMap<&str, &str>> = {
            let all = self.membership.all_infos();
            all.iter().any(|m| m.role == Role::Replicant).then(|| {
                let role = |n: &str| {
                    if n == self.me() {
                        self.membership.me.role
                    } else {
                        self.role_of(n).unwrap_or_default()
                    }
                };
                r.iter()
                    .chain(s.iter())
                    .map(|n| (n.as_str(), role(n).as_str()))
                    .collect()
            })
        };
        if json {
            if heal.is_none() && roles.is_none() {
                return status_json(&r, &s);
            }
            let mut v = status_value(&r, &s);
            if let Some(heal) = heal {
                v["partitions"] = serde_json::json!(parts);
                v["autoheal"] = serde_json::json!(heal);
            }
            if let Some(roles) = roles {
                v["roles"] = serde_json::json!(roles);
            }
            return v.to_string();
        }
        let mut out = status_line(&r, &s);
        if let Some(roles) = roles {
            let list: Vec<String> = roles
                .iter()
                .map(|(n, r)| format!("{} => {r}", atom(n)))
                .collect();
            out.push_str(&format!("\nRoles: #{{{}}}", list.join(",")));
        }
        if let Some(heal) = heal {
            let list: Vec<String> = parts.iter().map(|n| atom(n)).collect();
            out.push_str(&format!(
                "\nPartitioned from: [{}] (autoheal: {heal})",
                list.join(",")
            ));
        }
        out
    }

    fn save(&self) {
        if let Err(e) = self
            .membership
            .save(&self.settings.data_dir.join("cluster.json"))
        {
            tracing::error!("cluster: {e}");
        }
    }

    /// Sends a note to every running core we have a link to (replicants
    /// hear of everything through their core's stream).
    fn broadcast(&self, note: &Note) {
        for m in self.membership.peers() {
            if m.running && m.info.role == Role::Core && self.links.contains_key(&m.info.node) {
                cast_peer(&m.info.node, note);
            }
        }
    }

    /// Whether this node is a replicant.
    fn is_replicant(&self) -> bool {
        self.follower.is_some()
    }

    fn role_of(&self, node: &str) -> Option<Role> {
        self.membership.peer(node).map(|m| m.info.role)
    }

    /// Starts failure detection of a member: cores watch cores; nobody
    /// watches a replicant by heartbeats (its core's link tells).
    fn watch(&mut self, node: &str, role: Role, now: Instant) {
        if !self.is_replicant() && role == Role::Core {
            self.monitor.add_member(node, role, now);
        }
    }
}
