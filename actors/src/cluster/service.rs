//! The cluster service of a node: membership, heartbeats, route
//! replication and joins, over ractor_cluster (the control plane).
//!
//! Two actors per node:
//! - [`Endpoint`], the node's only remotable cluster actor, in process group
//!   `emqx_cluster:<node>`; it decodes what peers send and hands it on.
//! - [`ClusterService`], local, which owns all cluster state. Work that
//!   waits on the network (dialing, joining, catching up on routes) runs
//!   in spawned tasks that report back, so the service never blocks.

use super::autoheal::{Beat, Effect, HealConfig, Monitor, SplitView};
use super::detector::Backoff;
use super::membership::{atom, status_json, status_line, status_value, MemberInfo, Membership};
use super::registry::Registry;
use super::routes::{LocalRouteLog, RouteOp};
pub use super::rpc::{call_peer, call_peer_within, endpoint_of, group_of, EndpointMsg};
use super::rpc::{cast_peer, CALL_TIMEOUT};
pub use super::view::ClusterView;
use super::wire::{self, JoinSnapshot, Note, Req, Resp};
use crate::metrics::inc;
use crate::Ctx;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::RactorMessage;
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServerMessage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long to wait for a dialed link to become ready.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an autoheal restart of one node may take.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Endpoint;

impl Actor for Endpoint {
    type Msg = EndpointMsg;
    type State = ActorRef<SvcMsg>;
    type Arguments = ActorRef<SvcMsg>;

    async fn pre_start(
        &self,
        _me: ActorRef<EndpointMsg>,
        svc: Self::State,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(svc)
    }

    async fn handle(
        &self,
        _me: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        svc: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EndpointMsg::Call(bytes, reply) => match wire::decode::<Req>(&bytes) {
                Ok(req) => {
                    let _ = svc.cast(SvcMsg::Remote(req, reply));
                }
                Err(e) => {
                    tracing::warn!("cluster: {e}");
                    let _ = reply.send(wire::encode(&Resp::Refused(e)));
                }
            },
            EndpointMsg::Cast(bytes) => match wire::decode::<Note>(&bytes) {
                Ok(note) => {
                    let _ = svc.cast(SvcMsg::Note(note));
                }
                Err(e) => tracing::warn!("cluster: {e}"),
            },
        }
        Ok(())
    }
}

/// Settings of the cluster service.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub heartbeat_interval: Duration,
    pub down_timeout: Duration,
    /// Where `cluster.json` lives.
    pub data_dir: PathBuf,
    /// Outgoing inter-node sockets bind to this address first.
    pub bind_ip: Option<IpAddr>,
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
    LocalRoute(RouteOp),
    /// A retained message published on this node, to replicate.
    Retained(emqx_mqtt::message::Message),
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
}

pub struct SvcState {
    ctx: Arc<Ctx>,
    registry: Arc<Registry>,
    membership: Membership,
    /// Failure detection, partitions and autoheal (plain state machine).
    monitor: Monitor,
    backoff: HashMap<String, Backoff>,
    dialing: HashSet<String>,
    syncing: HashSet<String>,
    /// Peers with ready ractor_cluster links, and how many.
    links: HashMap<String, usize>,
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
                "inter-node connection closed before authentication (wrong cookie, or the loser of two simultaneous connections)"
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
        for p in membership.peers() {
            monitor.add_member(&p.info.node, p.info.role, now);
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
            while let Some(op) = rrx.recv().await {
                if me1.cast(SvcMsg::LocalRoute(op)).is_err() {
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
        myself.send_interval(Duration::from_millis(500), || SvcMsg::Tick);
        if !membership.is_alone() {
            tracing::info!(
                "cluster: rejoining {} known member(s)",
                membership.peers().count()
            );
        }
        let retained_sync = !membership.is_alone();
        let st = SvcState {
            ctx: a.ctx,
            registry: a.registry,
            membership,
            monitor,
            backoff: HashMap::new(),
            dialing: HashSet::new(),
            syncing: HashSet::new(),
            links: HashMap::new(),
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
                Req::Takeover { client } => {
                    let ctx = st.ctx.clone();
                    tokio::spawn(async move {
                        let snap = ctx.cm.takeover_out(&client).await.map(Box::new);
                        let _ = reply.send(wire::encode(&Resp::Session(snap)));
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
                        let ip = st.settings.bind_ip;
                        tokio::spawn(async move {
                            let ok = reboot(ctx, &svc, ns, ip, coordinator).await;
                            let _ = svc.cast(SvcMsg::RebootEnded);
                            let _ = reply.send(wire::encode(&Resp::Bool(ok)));
                        });
                    }
                }
                req => {
                    let resp = st.on_request(req).await;
                    let _ = reply.send(wire::encode(&resp));
                }
            },
            SvcMsg::Note(n) => st.on_note(&myself, n),
            SvcMsg::LinkUp(node) => {
                *st.links.entry(node.clone()).or_default() += 1;
                if let Some(b) = st.backoff.get_mut(&node) {
                    b.reset();
                }
                if st.membership.peer(&node).is_some() {
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
                }
            }
            SvcMsg::Tick => st.tick(&myself),
            SvcMsg::LocalRoute(op) => {
                if let Some(v) = st.local.record(op.clone()) {
                    let note = Note::Routes {
                        node: st.me().to_string(),
                        incarnation: st.membership.me.incarnation,
                        base: v - 1,
                        ops: vec![op],
                    };
                    st.broadcast(&note);
                }
            }
            SvcMsg::Retained(m) => st.broadcast(&Note::Retain { msg: m }),
            SvcMsg::DialDone(node, ok) => {
                st.dialing.remove(&node);
                if !ok {
                    let b = st.backoff.entry(node).or_insert_with(|| {
                        Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
                    });
                    b.failed(Instant::now(), &mut rand::thread_rng());
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
                        let mut routes = st.view.routes.write();
                        if st.incarnations.insert(node.clone(), incarnation) != Some(incarnation)
                            && delta.is_some()
                        {
                            // Only a delta from zero fits a run we knew nothing of.
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

/// Opens an inter-node connection from our own address (so a rule that
/// cuts one loopback alias from another cuts it too) and hands it to the
/// node server, which runs the cookie handshake.
pub async fn dial(
    node_server: &ActorRef<NodeServerMessage>,
    bind_ip: Option<IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = bind_ip {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(LINK_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let peer_addr = stream.peer_addr()?;
    let local_addr = stream.local_addr()?;
    node_server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(NetworkStream::Raw {
                peer_addr,
                local_addr,
                stream,
            }),
            is_server: false,
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Makes sure there is a ready link to `node` (dialing `addr` if there is
/// none) and its endpoint is known; false if not within the link timeout.
async fn ensure_link(
    node_server: &ActorRef<NodeServerMessage>,
    bind_ip: Option<IpAddr>,
    node: &str,
    addr: SocketAddr,
) -> bool {
    if endpoint_of(node).is_some() {
        return true;
    }
    if dial(node_server, bind_ip, addr).await.is_err() {
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

/// Asks a node when it started, linking to it first if needed.
pub async fn probe(
    node_server: &ActorRef<NodeServerMessage>,
    bind_ip: Option<IpAddr>,
    node: &str,
) -> Option<(u64, usize)> {
    let addr = resolve_dist_addr(node).await?;
    if !ensure_link(node_server, bind_ip, node, addr).await {
        return None;
    }
    match call_peer(node, &Req::Info).await {
        Ok(Resp::Info {
            incarnation,
            members,
        }) => Some((incarnation, members)),
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
    ip: Option<IpAddr>,
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
/// client disconnected and its session dropped, the cluster data dropped,
/// then a rejoin through the coordinator (which brings its members, routes
/// and retained messages), then the listeners open again.
async fn reboot(
    ctx: Arc<Ctx>,
    svc: &ActorRef<SvcMsg>,
    ns: ActorRef<NodeServerMessage>,
    ip: Option<IpAddr>,
    coordinator: String,
) -> bool {
    tracing::warn!(
        "autoheal: {coordinator} restarts this node's broker: clients are disconnected and the cluster data is synced again from {coordinator}"
    );
    inc(&ctx.broker.metrics.cluster_autoheal_restarts);
    ctx.listeners.send_replace(false);
    ctx.cm.stop_all().await;
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
    ctx.listeners.send_replace(true);
    if ok {
        tracing::warn!("autoheal: this node restarted and rejoined through {coordinator}");
    }
    ok
}

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
fn dist_port_of(short: &str) -> u16 {
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
        self.registry.set_running(
            self.membership
                .peers()
                .filter(|m| m.running)
                .map(|m| m.info.node.clone())
                .collect(),
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
        match (json, heal) {
            (true, None) => status_json(&r, &s),
            (true, Some(heal)) => {
                let mut v = status_value(&r, &s);
                v["partitions"] = serde_json::json!(parts);
                v["autoheal"] = serde_json::json!(heal);
                v.to_string()
            }
            (false, None) => status_line(&r, &s),
            (false, Some(heal)) => {
                let list: Vec<String> = parts.iter().map(|n| atom(n)).collect();
                format!(
                    "{}\nPartitioned from: [{}] (autoheal: {heal})",
                    status_line(&r, &s),
                    list.join(",")
                )
            }
        }
    }

    fn save(&self) {
        if let Err(e) = self
            .membership
            .save(&self.settings.data_dir.join("cluster.json"))
        {
            tracing::error!("cluster: {e}");
        }
    }

    fn broadcast(&self, note: &Note) {
        for m in self.membership.peers() {
            if m.running && self.links.contains_key(&m.info.node) {
                cast_peer(&m.info.node, note);
            }
        }
    }

    fn send_heartbeat(&mut self, node: &str) {
        let beat = self.monitor.beat();
        cast_peer(
            node,
            &Note::Heartbeat {
                node: self.me().to_string(),
                route_version: self.local.version,
                beat,
            },
        );
    }

    /// Autoclean (checked every quarter of the period): members down for
    /// longer than `cluster.autoclean` are removed and their routes purged.
    fn autoclean(&mut self, now: Instant) {
        let period = self.settings.autoclean;
        if period.is_zero() || now.duration_since(self.last_autoclean) < period / 4 {
            return;
        }
        self.last_autoclean = now;
        // Members never seen running since we started count from now.
        let unseen: Vec<String> = self
            .membership
            .peers()
            .filter(|m| !m.running && !self.down_since.contains_key(&m.info.node))
            .map(|m| m.info.node.clone())
            .collect();
        for n in unseen {
            self.down_since.insert(n, now);
        }
        let expired: Vec<(String, Duration)> = self
            .down_since
            .iter()
            .filter(|(n, t)| {
                now.duration_since(**t) >= period
                    && self.membership.peer(n).is_some_and(|m| !m.running)
            })
            .map(|(n, t)| (n.clone(), now.duration_since(*t)))
            .collect();
        for (node, down) in expired {
            tracing::warn!(
                "cluster: autoclean removes {node}, down for {}s",
                down.as_secs()
            );
            self.forget(&node);
            self.down_since.remove(&node);
            self.removed.insert(node.clone());
            inc(&self.ctx.broker.metrics.cluster_autocleaned);
            let ctx = self.ctx.clone();
            ctx.sys_cluster_event("autoclean", &node);
            self.save();
        }
    }

    fn tick(&mut self, myself: &ActorRef<SvcMsg>) {
        let now = Instant::now();
        self.autoclean(now);
        if now.duration_since(self.last_heartbeat) >= self.settings.heartbeat_interval {
            self.last_heartbeat = now;
            let peers: Vec<String> = self
                .membership
                .peers()
                .map(|m| m.info.node.clone())
                .collect();
            for p in peers {
                if self.links.contains_key(&p) {
                    self.send_heartbeat(&p);
                }
            }
        }
        let eff = self.monitor.tick(now);
        self.apply(myself, eff, "no heartbeat within the down timeout");
        // Dial members we have no link to.
        let targets: Vec<MemberInfo> = self
            .membership
            .peers()
            .filter(|m| {
                !self.links.contains_key(&m.info.node) && !self.dialing.contains(&m.info.node)
            })
            .map(|m| m.info.clone())
            .collect();
        for info in targets {
            let ready = self.backoff.get(&info.node).is_none_or(|b| b.ready(now));
            if !ready {
                continue;
            }
            let Ok(addr) = info.dist_addr.parse::<SocketAddr>() else {
                continue;
            };
            self.dialing.insert(info.node.clone());
            let ns = self.node_server.clone();
            let me = myself.clone();
            let ip = self.settings.bind_ip;
            tokio::spawn(async move {
                let ok = ensure_link(&ns, ip, &info.node, addr).await;
                let _ = me.cast(SvcMsg::DialDone(info.node, ok));
            });
        }
    }

    fn mark_down(&mut self, node: &str, why: &str) {
        self.down_since
            .entry(node.to_string())
            .or_insert_with(Instant::now);
        if self.membership.set_running(node, false) {
            tracing::warn!("cluster: node {node} is down ({why})");
            self.view.up.write().remove(node);
            let ctx = self.ctx.clone();
            ctx.sys_node_event(node, false);
        }
    }

    fn mark_up(&mut self, node: &str) {
        self.down_since.remove(node);
        if std::mem::take(&mut self.retained_sync) {
            let ctx = self.ctx.clone();
            let peer = node.to_string();
            tokio::spawn(async move {
                match call_peer(&peer, &Req::RetainedAll).await {
                    Ok(Resp::Retained(msgs)) => {
                        let n = msgs.len();
                        for m in msgs {
                            let _ = ctx.broker.retainer.store(&Arc::new(m));
                        }
                        tracing::info!("cluster: {n} retained message(s) synced from {peer}");
                    }
                    other => tracing::warn!("cluster: retained sync from {peer} failed: {other:?}"),
                }
            });
        }
        if self.membership.set_running(node, true) {
            tracing::info!("cluster: node {node} is up");
            self.view.up.write().insert(Arc::from(node));
            let ctx = self.ctx.clone();
            ctx.sys_node_event(node, true);
        }
    }

    fn on_note(&mut self, myself: &ActorRef<SvcMsg>, n: Note) {
        match n {
            Note::Heartbeat {
                node,
                route_version,
                beat,
            } => {
                if self.membership.peer(&node).is_none() {
                    if self.removed.contains(&node) {
                        // Autocleaned while it was away: tell it.
                        cast_peer(&node, &Note::MemberLeft { node: node.clone() });
                    } else if self.left_from.contains(&node) {
                        cast_peer(
                            &node,
                            &Note::MemberLeft {
                                node: self.me().to_string(),
                            },
                        );
                    }
                    return;
                }
                let eff = self.monitor.on_beat(&node, &beat, Instant::now());
                self.apply(myself, eff, "");
                if self.monitor.is_running(&node) {
                    self.check_routes(myself, &node, beat.incarnation, route_version);
                }
            }
            Note::Routes {
                node,
                incarnation,
                base,
                ops,
            } => {
                if self.membership.peer(&node).is_none() {
                    return;
                }
                let known = self.incarnations.get(&node).copied();
                if known == Some(incarnation) {
                    let r = self.view.routes.write().apply(&node, base, &ops);
                    if r.is_err() {
                        self.fetch_routes(myself, &node);
                    }
                } else {
                    self.check_routes(myself, &node, incarnation, base + ops.len() as u64);
                }
            }
            Note::MemberUp { info } => {
                if info.node == self.me() {
                    return;
                }
                if self.joining {
                    // Our own join is under way: this news about the cluster
                    // we are joining must survive the adoption of its snapshot.
                    self.pending_ups.push(info.clone());
                }
                let node = info.node.clone();
                add_forward_peer(&self.view, &info);
                let (role, running) = (info.role, self.monitor.is_running(&node));
                if self.membership.upsert(info, running) {
                    tracing::info!("cluster: {node} joined the cluster");
                    self.save();
                }
                self.monitor.add_member(&node, role, Instant::now());
                if self.links.contains_key(&node) {
                    self.send_heartbeat(&node);
                }
            }
            Note::MemberLeft { node } => {
                if node == self.me() {
                    tracing::warn!("cluster: this node was removed from the cluster");
                    self.reset_to_single();
                } else {
                    self.forget(&node);
                }
                self.save();
            }
            Note::Retain { msg } => {
                let _ = self.ctx.broker.retainer.store(&Arc::new(msg));
            }
            Note::Report { node } => {
                let eff = self.monitor.on_report(&node, Instant::now());
                self.apply(myself, eff, "");
            }
            Note::Heal { cliques } => self.start_heal(myself, cliques),
        }
    }

    /// Carries out what the monitor decided.
    fn apply(&mut self, myself: &ActorRef<SvcMsg>, effects: Vec<Effect>, why: &str) {
        for e in effects {
            match e {
                Effect::MarkUp(n) => self.mark_up(&n),
                Effect::MarkDown(n) => self.mark_down(&n, why),
                Effect::PartitionDetected(n) => {
                    if self.settings.heal.enabled {
                        tracing::warn!(
                            "cluster: partition detected with {n}: both ran on while each saw the other down; autoheal will report it to the leader"
                        );
                    } else {
                        tracing::warn!(
                            "cluster: partition detected with {n}: both ran on while each saw the other down; cluster.autoheal is off, so it stays split until one side restarts"
                        );
                    }
                    inc(&self.ctx.broker.metrics.cluster_partition_detected);
                    let ctx = self.ctx.clone();
                    ctx.sys_cluster_event("partition", &n);
                }
                Effect::PartitionHealed(n) => {
                    tracing::info!("cluster: partition with {n} healed ({n} restarted)");
                    inc(&self.ctx.broker.metrics.cluster_partition_healed);
                    let ctx = self.ctx.clone();
                    ctx.sys_cluster_event("healed", &n);
                }
                Effect::Report { leader } => {
                    let me = self.me().to_string();
                    tracing::info!(
                        "autoheal: reporting partitions with {:?} to the leader {leader}",
                        self.monitor.partitions()
                    );
                    if leader == me {
                        let eff = self.monitor.on_report(&me, Instant::now());
                        self.apply(myself, eff, why);
                    } else {
                        cast_peer(&leader, &Note::Report { node: me });
                    }
                }
                Effect::NotLeader { from, leader } => tracing::error!(
                    "autoheal: {from} reported a partition here, but the leader is {leader}; ignored"
                ),
                Effect::MajorityUnreachable { unreachable, cores } => tracing::warn!(
                    "autoheal: {} of {cores} core node(s) unreachable ({unreachable:?}); no heal without a majority, trying again in {:?}",
                    unreachable.len(),
                    self.settings.heal.delay
                ),
                Effect::CollectViews { cores } => self.collect_views(myself, cores),
                Effect::NothingToHeal => {
                    tracing::info!("autoheal: the split view shows one cluster; nothing to heal")
                }
                Effect::LeaderDisputed { by, leader } => tracing::info!(
                    "autoheal: {by} says {leader} leads; taking the split view again later"
                ),
                Effect::Heal {
                    coordinator,
                    cliques,
                } => {
                    tracing::warn!(
                        "autoheal: split view {cliques:?}: {coordinator} coordinates, every node outside {:?} restarts",
                        cliques.first()
                    );
                    if coordinator == self.me() {
                        self.start_heal(myself, cliques);
                    } else {
                        cast_peer(&coordinator, &Note::Heal { cliques });
                    }
                }
            }
        }
    }

    /// Leader: asks every reachable core for its view, all at once.
    fn collect_views(&self, myself: &ActorRef<SvcMsg>, cores: Vec<String>) {
        let me = self.me().to_string();
        let own = self.monitor.split_view();
        let svc = myself.clone();
        tokio::spawn(async move {
            let mut views = BTreeMap::from([(me.clone(), own)]);
            let mut calls = tokio::task::JoinSet::new();
            for c in cores.into_iter().filter(|c| *c != me) {
                calls.spawn(async move {
                    let r = call_peer(&c, &Req::SplitView).await;
                    (c, r)
                });
            }
            while let Some(Ok((c, r))) = calls.join_next().await {
                match r {
                    Ok(Resp::SplitView(v)) => {
                        views.insert(c, v);
                    }
                    other => tracing::warn!("autoheal: no split view from {c}: {other:?}"),
                }
            }
            let _ = svc.cast(SvcMsg::Views(views));
        });
    }

    /// Coordinator: restarts every node outside the first clique, one
    /// after the other, each rejoining through this node.
    fn start_heal(&mut self, myself: &ActorRef<SvcMsg>, cliques: Vec<Vec<String>>) {
        let me = self.me().to_string();
        if !cliques.first().is_some_and(|c| c.contains(&me)) {
            tracing::warn!(
                "autoheal: asked to coordinate {cliques:?} from outside its majority; ignored"
            );
            return;
        }
        if std::mem::replace(&mut self.coordinating, true) {
            tracing::info!("autoheal: a heal is already under way here; {cliques:?} ignored");
            return;
        }
        let targets: Vec<String> = cliques[1..].iter().flatten().cloned().collect();
        let svc = myself.clone();
        tokio::spawn(async move {
            for t in targets {
                tracing::warn!("autoheal: restarting {t}");
                let req = Req::Reboot {
                    coordinator: me.clone(),
                };
                match call_peer_within(&t, &req, REBOOT_TIMEOUT).await {
                    Ok(Resp::Bool(true)) => tracing::info!("autoheal: {t} restarted and rejoined"),
                    other => tracing::warn!("autoheal: restarting {t} failed: {other:?}"),
                }
            }
            let _ = svc.cast(SvcMsg::HealEnded);
        });
    }

    /// A minority node's restart, cluster side: forget every member and
    /// route (links stay up: the new incarnation tells peers we restarted),
    /// and take a new incarnation. Nothing is saved until the rejoin
    /// succeeds, so a crash in between restarts into the old membership.
    fn reboot_reset(&mut self) -> MemberInfo {
        let inc = crate::clock::now_ms().max(self.membership.me.incarnation + 1);
        self.membership.reset();
        self.membership.me.incarnation = inc;
        self.monitor = Monitor::new(
            &self.membership.me.node,
            inc,
            self.membership.me.role,
            self.settings.heal.clone(),
            self.settings.down_timeout,
        );
        self.view.up.write().clear();
        {
            let mut routes = self.view.routes.write();
            for origin in routes.origins() {
                routes.purge(&origin);
            }
        }
        self.incarnations.clear();
        self.down_since.clear();
        self.removed.clear();
        self.left_from.clear();
        self.pending_ups.clear();
        self.joining = true;
        self.ctx.broker.retainer.clean(None);
        self.membership.me.clone()
    }

    /// Starts a route sync with `node` unless its versions already agree.
    /// A new incarnation (the peer restarted) invalidates what we hold.
    fn check_routes(
        &mut self,
        myself: &ActorRef<SvcMsg>,
        node: &str,
        incarnation: u64,
        version: u64,
    ) {
        if self.incarnations.get(node) != Some(&incarnation) {
            if self.syncing.contains(node) {
                return;
            }
            self.incarnations.remove(node);
            self.view.routes.write().purge(node);
        } else if self.view.routes.read().version(node) == version {
            return;
        }
        self.fetch_routes(myself, node);
    }

    fn fetch_routes(&mut self, myself: &ActorRef<SvcMsg>, node: &str) {
        if !self.syncing.insert(node.to_string()) {
            return;
        }
        let node = node.to_string();
        let since = self.view.routes.read().version(&node);
        let me = myself.clone();
        tokio::spawn(async move {
            let r = call_peer(&node, &Req::RoutesSince { since }).await;
            let _ = me.cast(SvcMsg::RoutesFetched(node, r));
        });
    }

    /// Forgets a node that left or was removed: membership, routes, links.
    fn forget(&mut self, node: &str) {
        self.down_since.remove(node);
        if self.membership.remove(node) {
            tracing::info!("cluster: {node} left the cluster");
        }
        self.monitor.remove_member(node);
        self.view.up.write().remove(node);
        let purged = self.view.routes.write().purge(node);
        if purged > 0 {
            tracing::info!("cluster: purged {purged} route(s) of {node}");
        }
        self.incarnations.remove(node);
        self.view.forwarder.remove_peer(node);
        self.backoff.remove(node);
        self.disconnect(node);
    }

    fn disconnect(&self, node: &str) {
        let ns = self.node_server.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            // Let what was just cast to the peer (MemberLeft) go out first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(sessions) = ractor::call_t!(ns, NodeServerMessage::GetSessions, 2000) {
                for s in sessions.values() {
                    if s.peer_name.as_ref().is_some_and(|p| p.name == node) {
                        s.actor.stop(Some("left the cluster".into()));
                    }
                }
            }
        });
    }

    fn reset_to_single(&mut self) {
        let peers: Vec<String> = self
            .membership
            .peers()
            .map(|m| m.info.node.clone())
            .collect();
        for p in peers {
            self.forget(&p);
        }
        self.membership.reset();
    }

    async fn on_request(&mut self, req: Req) -> Resp {
        match req {
            Req::Join { info } => {
                if info.node == self.me() {
                    return Resp::Refused("cannot_join_itself".into());
                }
                if self.settings.singleton {
                    return Resp::Refused("singleton".into());
                }
                let node = info.node.clone();
                self.left_from.remove(&node);
                self.removed.remove(&node);
                add_forward_peer(&self.view, &info);
                let others: Vec<String> = self
                    .membership
                    .peers()
                    .map(|m| m.info.node.clone())
                    .collect();
                // A member rejoining after an autoheal restart keeps its
                // running state until its new incarnation is heard.
                let running = self.monitor.is_running(&node);
                self.membership.upsert(info.clone(), running);
                self.monitor.add_member(&node, info.role, Instant::now());
                // A rejoining node's old routes are stale: it sends its own.
                self.view.routes.write().purge(&node);
                self.incarnations.remove(&node);
                self.save();
                for o in others {
                    if o != node {
                        cast_peer(&o, &Note::MemberUp { info: info.clone() });
                    }
                }
                tracing::info!("cluster: {node} joined through this node");
                let (v, keys) = self.local.snapshot();
                let mut routes = vec![(
                    self.me().to_string(),
                    self.membership.me.incarnation,
                    v,
                    keys,
                )];
                {
                    let r = self.view.routes.read();
                    for origin in r.origins() {
                        if &*origin == node.as_str() {
                            continue;
                        }
                        let inc = self.incarnations.get(&*origin).copied().unwrap_or(0);
                        routes.push((
                            origin.to_string(),
                            inc,
                            r.version(&origin),
                            r.keys_of(&origin),
                        ));
                    }
                }
                let retained = self
                    .ctx
                    .broker
                    .retainer
                    .all()
                    .into_iter()
                    .map(|m| (*m).clone())
                    .collect();
                let mut members = self.membership.all_infos();
                members.retain(|m| m.node != node);
                Resp::Joined(Box::new(JoinSnapshot {
                    members,
                    routes,
                    retained,
                }))
            }
            Req::RoutesSince { since } => {
                let inc = self.membership.me.incarnation;
                match self.local.since(since) {
                    Some(ops) => Resp::Routes {
                        incarnation: inc,
                        version: self.local.version,
                        delta: Some((since, ops)),
                        snapshot: None,
                    },
                    None => {
                        let (v, keys) = self.local.snapshot();
                        Resp::Routes {
                            incarnation: inc,
                            version: v,
                            delta: None,
                            snapshot: Some(keys),
                        }
                    }
                }
            }
            Req::Ctl { .. } => Resp::Refused("ctl is served by the control actor".into()),
            Req::Lock { client, holder } => {
                Resp::Bool(self.registry.try_lock_local(&client, &holder))
            }
            Req::Unlock { client, holder } => {
                self.registry.unlock_local(&client, &holder);
                Resp::Bool(true)
            }
            Req::RetainedAll => Resp::Retained(
                self.ctx
                    .broker
                    .retainer
                    .all()
                    .into_iter()
                    .map(|m| (*m).clone())
                    .collect(),
            ),
            Req::Info => Resp::Info {
                incarnation: self.membership.me.incarnation,
                members: self.membership.peers().count() + 1,
            },
            Req::SplitView => Resp::SplitView(self.monitor.split_view()),
            Req::Kick { .. } | Req::Discard { .. } | Req::Takeover { .. } | Req::Reboot { .. } => {
                Resp::Refused("handled asynchronously".into())
            }
        }
    }

    fn start_join(
        &mut self,
        myself: &ActorRef<SvcMsg>,
        target: String,
        reply: RpcReplyPort<Result<String, JoinError>>,
    ) {
        let target = if target.contains('@') {
            target
        } else {
            // EMQX appends the local host when no host is given.
            let host = self
                .me()
                .split_once('@')
                .map(|(_, h)| h)
                .unwrap_or("127.0.0.1");
            format!("{target}@{host}")
        };
        if target == self.me() {
            let _ = reply.send(Err(JoinError::CannotJoinItself(target)));
            return;
        }
        if self.settings.singleton {
            let _ = reply.send(Err(JoinError::Singleton));
            return;
        }
        if self.membership.peer(&target).is_some() {
            let _ = reply.send(Err(JoinError::AlreadyInCluster(target)));
            return;
        }
        let ns = self.node_server.clone();
        let ip = self.settings.bind_ip;
        let me_info = self.membership.me.clone();
        let svc = myself.clone();
        self.joining = true;
        tokio::spawn(async move {
            let out = join_task(&ns, ip, &target, me_info, &svc).await;
            let _ = svc.cast(SvcMsg::JoinEnded);
            let _ = reply.send(out);
        });
    }

    /// The newcomer's side of a join: drop our cluster data, adopt theirs.
    fn adopt(&mut self, via: &str, snap: JoinSnapshot) {
        self.reset_to_single();
        let via_incarnation = snap
            .members
            .iter()
            .find(|m| m.node == via)
            .map(|m| m.incarnation);
        self.left_from.clear();
        let ups = std::mem::take(&mut self.pending_ups);
        let now = Instant::now();
        for info in snap.members {
            if info.node == self.me() {
                continue;
            }
            let node = info.node.clone();
            add_forward_peer(&self.view, &info);
            self.monitor.add_member(&node, info.role, now);
            self.membership.upsert(info, false);
        }
        {
            let mut routes = self.view.routes.write();
            for origin in routes.origins() {
                routes.purge(&origin);
            }
            for (origin, inc, version, keys) in snap.routes {
                if origin == self.me() {
                    continue;
                }
                self.incarnations.insert(origin.clone(), inc);
                routes.replace(&origin, version, keys);
            }
        }
        let retainer = &self.ctx.broker.retainer;
        retainer.clean(None);
        for m in snap.retained {
            let _ = retainer.store(&Arc::new(m));
        }
        for info in ups {
            if info.node == self.me() || info.node == via {
                continue;
            }
            let node = info.node.clone();
            add_forward_peer(&self.view, &info);
            self.monitor.add_member(&node, info.role, now);
            self.membership.upsert(info, false);
        }
        inc(&self.ctx.broker.metrics.cluster_joined);
        self.save();
        if self.links.contains_key(via) {
            // We just heard from it: it is up.
            if let Some(inc) = via_incarnation {
                let beat = Beat {
                    incarnation: inc,
                    seq: 0,
                    saw_down: Vec::new(),
                    heard: Vec::new(),
                };
                for e in self.monitor.on_beat(via, &beat, now) {
                    if let Effect::MarkUp(n) = e {
                        self.mark_up(&n);
                    }
                }
            }
            self.send_heartbeat(via);
        }
        tracing::info!("cluster: joined the cluster through {via}");
    }

    async fn leave(&mut self) -> String {
        if self.membership.is_alone() {
            return "Failed to leave the cluster: node_not_in_cluster\n".into();
        }
        let me = self.me().to_string();
        let note = Note::MemberLeft { node: me };
        for m in self.membership.peers() {
            // Every member we can reach, running or not; the others learn
            // it from our answer to their next heartbeat.
            cast_peer(&m.info.node, &note);
            self.left_from.insert(m.info.node.clone());
        }
        self.discovery = false;
        self.reset_to_single();
        self.save();
        let (r, s) = self.membership.status();
        format!("Leave the cluster successfully.\n{}\n", status_line(&r, &s))
    }

    fn force_leave(&mut self, node: &str) -> String {
        if node == self.me() {
            return "Ignore.\n".into();
        }
        if self.membership.peer(node).is_none() {
            return "Failed to remove the node from cluster: node_not_in_cluster\n".into();
        }
        let note = Note::MemberLeft {
            node: node.to_string(),
        };
        self.broadcast(&note);
        self.forget(node);
        self.save();
        let (r, s) = self.membership.status();
        format!(
            "Remove the node from cluster successfully.\n{}\n",
            status_line(&r, &s)
        )
    }
}
