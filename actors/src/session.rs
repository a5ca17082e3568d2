//! The session actor: one per client id, local to this node (never
//! remotable), alive while the client is connected and, for a persistent
//! session, until its expiry interval runs out after the connection ends.
//!
//! It owns a [`Channel`] (all protocol and session state) and does the
//! I/O the channel asks for: writing packets to the connection task,
//! subscribing through the broker's shard actors, publishing, timers.

use crate::broker::{BrokerError, Subscriber};
use crate::clock::{self, now_ms};
use crate::inbox::{Inbox, Item, STOPPED};
use crate::metrics::{add, inc, Stats};
use crate::outbox::{ConnHandle, OutGate};
use crate::overload::HEAVY;
use crate::peers::HandedOver;
use crate::Ctx;
use bytes::BytesMut;
use emqx_mqtt::channel::{
    Action, Channel, ChannelCounters, PublishSink, SessionSnapshot, SubRequest,
};
use emqx_mqtt::codec;
use emqx_mqtt::delivery::Delivery;
use emqx_mqtt::message::Message;
use emqx_mqtt::packet::*;
use emqx_mqtt::time::Now;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::session_msg::{
    ClientInfo, CloseCause, Dormant, Parked, SessionGone, SessionHandle, SessionMsg, Written,
};

pub struct SessionActor;

/// What a session actor starts with.
pub enum SessionStart {
    /// A new session (boxed: the actor's arguments are moved around).
    New(Box<SessionArgs>),
    /// A dormant session that a message brought back.
    Wake(Box<SessionState>),
}

/// Arguments of a new session: the CONNECT and its connection.
pub struct SessionArgs {
    pub ctx: Arc<Ctx>,
    /// How everyone reaches the session ([`SessionHandle::new`]).
    pub handle: SessionHandle,
    pub connect: Connect,
    /// `None`: a session kept on disk across a stop of the node, brought
    /// back offline (with `restored` and `unparked`) until its client
    /// returns.
    pub conn: Option<ConnHandle>,
    pub client_id: Arc<str>,
    pub assigned: bool,
    /// State handed over by another node (cross-node takeover).
    pub restored: Option<SessionSnapshot>,
    /// For a session brought back from disk: its expiry and the seconds
    /// of it left.
    pub unparked: Option<(u32, u32)>,
    /// For a session brought back from the durable journal after the node
    /// died: its incarnation there (its queue's deliveries carry their
    /// journal keys).
    pub journal: Option<u64>,
    /// For a session brought back from the journal: the will its client
    /// left (its connection ended with the node), and the seconds of its
    /// delay left.
    pub will: Option<(LastWill, u32)>,
    /// The epoch of the claim its connect made in the cluster's session
    /// store, if there is one: its record is written there under it.
    pub store_epoch: Option<u64>,
    /// For a session taken from the cluster's session store because the
    /// node that held it is gone: that node. What the other nodes still
    /// hold for it (published and never acknowledged by it) is gathered
    /// into the queue before any live delivery.
    pub taken_from: Option<Arc<str>>,
}

/// The actor's state: the session's, unless it went dormant.
pub struct Live {
    s: Option<Box<SessionState>>,
    /// Messages taken from the mailbox (see [`SessionHandle::go_dormant`]).
    handled: u64,
    /// What was sent before the actor ran, taken first.
    pending: Vec<SessionMsg>,
}

pub struct SessionState {
    ctx: Arc<Ctx>,
    /// How the session is reached; every message and timer goes through
    /// it, so none is lost when the actor goes dormant.
    me: SessionHandle,
    ch: Channel,
    conn: Option<ConnHandle>,
    /// Bumped on every attach/detach so stale timers are ignored.
    gen: u64,
    /// Set when the session must end once the connection is closed.
    ending: bool,
    /// The channel's drop counters already added to the node's metrics.
    reported: Reported,
    /// Where the broker leaves deliveries for this session.
    inbox: Arc<Inbox>,
    /// Packets encoded and not yet handed to the connection: everything a
    /// message to the actor produces goes out in one write.
    wbuf: BytesMut,
    /// Deliveries taken from the inbox, being handled (kept for its
    /// capacity).
    batch: Vec<Item>,
    /// Whether a `Tick` is on its way. A timer runs only while the channel
    /// has something to check, so an idle session holds no timer task.
    tick_armed: bool,
    /// The connected client stopped taking its messages: logged, counted
    /// and alarmed once, until it catches up (see [`Inbox::is_stopped`]).
    slow: bool,
    /// Registered with the overload monitor: the queue holds at least
    /// [`crate::overload::HEAVY`] bytes.
    heavy: bool,
    /// Replies waiting for a write to disk (boxed: rare).
    held: Option<Box<Held>>,
    /// Replies released by a write that need the broker, about to run
    /// (each with whether its connection is the current one).
    released: Vec<(bool, Vec<Action>)>,
    /// Parked for the next start of the node: its routes stay, so the
    /// other nodes keep its messages until it is back.
    parked: bool,
    /// Its incarnation in the durable journal while it is journaled (a
    /// persistent session on a node with `durable_sessions.enable`), else 0.
    journal_inc: u64,
    /// Its writer to the cluster's session store (see [`crate::stored`]).
    store: Option<crate::stored::StoreLink>,
    /// The write of the packet ids of journaled QoS 2 deliveries about to
    /// go out, or received by the client: the next flush holds their
    /// PUBLISHes (or PUBRELs) until it is on disk.
    sent_write: Option<crate::durable::Ticket>,
    /// Where such held writes wait (made at the first one).
    gate: Option<OutGate>,
    /// The actor was told to stop: whatever comes after is ignored.
    stopped: bool,
    /// Where a dormant session starts its actor again (set when it goes
    /// dormant: a message may come from a thread outside the runtime).
    rt: Option<tokio::runtime::Handle>,
    /// Taken from a node that is gone: what the other nodes held for it
    /// (boxed: rare).
    gather: Option<Box<Gather>>,
}

/// The channel's drop counters as last added to the node's metrics.
#[derive(Default)]
struct Reported {
    dropped: u64,
    publish_refused: u64,
    dropped_queue_full: u64,
    dropped_qos0: u64,
    dropped_expired: u64,
    dropped_too_large: u64,
    dropped_over_bytes: u64,
}

impl Reported {
    fn of(c: &ChannelCounters) -> Reported {
        Reported {
            dropped: c.dropped,
            publish_refused: c.publish_refused,
            dropped_queue_full: c.dropped_queue_full,
            dropped_qos0: c.dropped_qos0,
            dropped_expired: c.dropped_expired,
            dropped_too_large: c.dropped_too_large,
            dropped_over_bytes: c.dropped_over_bytes,
        }
    }
}

/// The longest a session taken from a node that is gone holds its live
/// deliveries while it gathers (the answers take at most about 15 s).
const GATHER_LIMIT: Duration = Duration::from_secs(30);

/// How long a session that gathered what was held for the node it was
/// taken from drops the live deliveries that repeat one of those
/// messages (a node copied it before its route here sent it along too).
const GATHERED_FOR: Duration = Duration::from_secs(60);

/// A session taken from a node that is gone gathers what the other nodes
/// still hold for that node ([`crate::peers::RemoteRoutes::held_for`]):
/// live deliveries wait in the inbox meanwhile, so the gathered messages,
/// older, come first.
struct Gather {
    /// The node the session was taken from (gone).
    from: Arc<str>,
    /// Still waiting for the answers.
    waiting: bool,
    /// Of each message the session came back with (queued or in flight,
    /// by [`content_key`]): how many copies. Taken before any of them
    /// goes out, since a connected client may have taken them by the time
    /// the answers come.
    had: HashMap<u64, u32>,
    /// Of each message gathered (by [`content_key`]): how many live
    /// deliveries of it to drop still.
    seen: HashMap<u64, u32>,
    /// When `seen` is forgotten.
    until: std::time::Instant,
}

/// What tells two copies of one message apart from other messages across
/// nodes (each node numbers the copies it receives its own way).
fn content_key(m: &Message) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.topic.hash(&mut h);
    m.from.hash(&mut h);
    m.timestamp_ms.hash(&mut h);
    m.payload.hash(&mut h);
    (m.qos as u8).hash(&mut h);
    m.retain.hash(&mut h);
    h.finish()
}

/// What the client's packets produced while a message it published is
/// being written to disk (retained, or for persistent sessions): its
/// acknowledgement waits for the write, and every later reply waits
/// behind it, so acknowledgements keep the order of the packets
/// (MQTT-4.6.0-2) while the session goes on reading. Many writes are then
/// in one commit.
#[derive(Default)]
struct Held {
    /// (write number or 0 for none, connection generation, actions), in
    /// the order the packets came.
    queue: std::collections::VecDeque<(u64, u64, Vec<Action>)>,
    /// The last write number given.
    issued: u64,
    /// Writes done and not yet released, with their outcome.
    done: std::collections::HashMap<u64, Written>,
}

struct Sink<'a> {
    ctx: &'a Ctx,
    /// A subscriber's inbox, or a queue to another node, that a publish
    /// filled past its mark.
    congested: Option<crate::broker::Congestion>,
    /// The last retained message of this packet being written to disk
    /// (boxed: it lives in the session's resident handle future).
    durable: Option<Box<crate::durable::Ticket>>,
}

impl PublishSink for Sink<'_> {
    fn publish(&mut self, msg: Message) -> usize {
        let p = self.ctx.broker.publish(msg);
        let (n, congested) = (p.subscribers, p.congested);
        if congested.is_some() {
            self.congested = congested;
        }
        if let Some(t) = p.durable {
            // Writes to disk complete in order: the last one covers the
            // others (a packet publishes once; a will is not waited for).
            self.durable = Some(Box::new(t));
        }
        n
    }
}

/// Raised when a write to the durable store fails; it stays until the
/// node restarts (the store refuses writes after an I/O error).
pub const DURABLE_ALARM: &str = "durable_storage_failed";

/// Deliveries handled per `Drain` before the session lets its mailbox
/// (acknowledgements above all) have a turn.
const DRAIN_BATCH: usize = 64;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = Live;
    type Arguments = SessionStart;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        start: SessionStart,
    ) -> Result<Live, ActorProcessingErr> {
        let st = match start {
            SessionStart::New(a) => Box::pin(SessionState::start(*a)).await,
            SessionStart::Wake(mut st) => {
                st.rt = None;
                inc(&st.ctx.broker.metrics.session_woken);
                st
            }
        };
        let pending = st.me.go_live(myself);
        Ok(Live {
            s: Some(st),
            handled: 0,
            pending,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SessionMsg>,
        live: &mut Live,
    ) -> Result<(), ActorProcessingErr> {
        let pending = std::mem::take(&mut live.pending);
        if let Some(st) = live.s.as_deref_mut() {
            for msg in pending {
                Box::pin(SessionState::on_msg(Some(&mut *st), myself.clone(), msg)).await?;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        live: &mut Live,
    ) -> Result<(), ActorProcessingErr> {
        // Dormant: the session goes on without this actor.
        if let Some(st) = live.s.as_deref_mut() {
            Box::pin(st.stopped()).await;
        }
        Ok(())
    }

    // Not an `async fn`: the future returned is the session's own, with
    // nothing around it (its size is what every session actor keeps).
    fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        live: &mut Live,
    ) -> impl std::future::Future<Output = Result<(), ActorProcessingErr>> + Send {
        live.handled += 1;
        if let SessionMsg::Hibernate = msg {
            live.hibernate(&myself);
        }
        SessionState::on_msg(live.s.as_deref_mut(), myself, msg)
    }
}

impl Live {
    /// Goes dormant if the session has nothing in progress and every
    /// message sent to this actor was taken.
    fn hibernate(&mut self, myself: &ActorRef<SessionMsg>) {
        let Some(st) = self.s.as_deref_mut() else {
            return;
        };
        if !st.can_hibernate() {
            return;
        }
        st.before_sleep();
        let me = st.me.clone();
        let metrics = st.ctx.broker.metrics.clone();
        let s = &mut self.s;
        if me.go_dormant(self.handled, || s.take().map(|b| b as Box<dyn Dormant>)) {
            inc(&metrics.session_hibernated);
            myself.stop(None);
        }
    }
}

impl Dormant for SessionState {
    fn wake(self: Box<Self>, handle: SessionHandle) {
        let rt = match self
            .rt
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            Some(rt) => rt,
            None => {
                tracing::error!(client_id = %self.ch.client_id, "a dormant session cannot be woken outside the runtime");
                handle.gone();
                return;
            }
        };
        rt.spawn(async move {
            let client_id = self.ch.client_id.clone();
            if let Err(e) = Actor::spawn(None, SessionActor, SessionStart::Wake(self)).await {
                tracing::error!(%client_id, "waking a dormant session failed: {e}");
                handle.gone();
            }
        });
    }

    fn info(&self) -> ClientInfo {
        SessionState::info(self)
    }
}

/// How long a resume waits for the cluster's session store to say whether
/// this node still holds the session.
const HELD_CHECK: Duration = Duration::from_secs(1);

/// What a session does when the cluster's session store refuses its
/// writes: it is told, and ends.
fn fenced_here(me: &SessionHandle) -> impl FnOnce() + Send + 'static {
    let me = me.clone();
    move || {
        let _ = me.cast(SessionMsg::Fenced);
    }
}

/// Brings back a session kept on disk, offline, without an actor: its
/// routes and timers are set up and it sleeps until the first message for
/// it (its client returning, a delivery, a timer). Returns once its routes
/// are in place.
pub async fn start_dormant(args: SessionArgs) {
    let handle = args.handle.clone();
    let mut st = Box::pin(SessionState::start(args)).await;
    st.before_sleep();
    inc(&st.ctx.broker.metrics.session_hibernated);
    handle.sleep_now(st);
}

impl SessionState {
    /// Drops what an idle session need not keep, and notes where to wake
    /// it (a message may come from a thread outside the runtime).
    fn before_sleep(&mut self) {
        self.batch = Vec::new();
        self.wbuf = BytesMut::new();
        self.rt = tokio::runtime::Handle::try_current().ok();
    }

    /// A new session's state: the channel, its routes when it was handed
    /// over, the CONNACK, its timers.
    async fn start(a: SessionArgs) -> Box<SessionState> {
        let resumed = a.restored.is_some();
        let mut ch = match a.restored {
            Some(snap) => Channel::restore(
                a.ctx.settings.clone(),
                &a.connect,
                a.client_id.clone(),
                snap,
                clock::now(),
            ),
            None => Channel::new(
                a.ctx.settings.clone(),
                &a.connect,
                a.client_id.clone(),
                clock::now(),
            ),
        };
        if let Some(conn) = &a.conn {
            ch.set_mountpoint(conn.mountpoint.as_deref());
            ch.set_peer(
                Some(conn.peer.ip()),
                conn.cert_cn().map(String::from),
                conn.auth().clone(),
            );
        }
        let mut st = Box::new(SessionState {
            ctx: a.ctx,
            me: a.handle.clone(),
            ch,
            conn: a.conn,
            gen: 1,
            ending: false,
            reported: Reported::default(),
            inbox: Inbox::new(a.handle),
            wbuf: BytesMut::new(),
            batch: Vec::new(),
            tick_armed: false,
            slow: false,
            heavy: false,
            held: None,
            released: Vec::new(),
            parked: false,
            journal_inc: 0,
            store: None,
            sent_write: None,
            gate: None,
            stopped: false,
            rt: None,
            gather: None,
        });
        if let Some((expiry, _)) = a.unparked {
            // Its CONNECT is made up (a v5 one carries no expiry): the
            // expiry it had stands, before anything looks at it.
            st.ch.session_expiry = expiry;
        }
        if let Some(inc) = a.journal {
            st.journal_inc = inc;
            st.inbox.set_journal(inc);
        }
        if let (Some(store), Some(epoch)) = (st.ctx.session_store.clone(), a.store_epoch) {
            let link = crate::stored::StoreLink::start(
                store,
                a.client_id.clone(),
                epoch,
                &crate::journal::STORE_TABLES,
            );
            link.on_fenced(fenced_here(&st.me));
            if let Some(j) = &st.ctx.broker.journal {
                j.link(st.journal_inc, link.clone());
            }
            st.store = Some(link);
        }
        if let Some((w, _)) = &a.will {
            st.ch.conn.will = Some(Box::new(w.clone()));
        }
        if let Some(t) = st.journal_sync() {
            // Not waited for: a crash before it only costs the client a
            // `session_present = 0` it can see.
            drop(t);
        }
        if resumed {
            // Routes must point here before the client hears it is back.
            let subs: Vec<(String, SubscriptionOptions, Option<u32>)> = st
                .ch
                .subscriptions
                .iter()
                .map(|(f, (o, id))| (f.clone(), *o, *id))
                .collect();
            for (f, opts, sub_id) in subs {
                let sub = Subscriber {
                    inbox: st.inbox.clone(),
                    client_id: st.ch.client_id.clone(),
                    opts,
                    sub_id,
                };
                if let Err(e) = st.ctx.broker.subscribe(&f, sub).await {
                    tracing::warn!(client_id = %st.ch.client_id, "resubscribing {f} after takeover failed: {e}");
                }
            }
            inc(&st.ctx.broker.metrics.session_resumed);
            if let Some(from) = a.taken_from {
                st.gather_from(from);
            }
        }
        if st.conn.is_some() {
            let ack = st.ch.connack(&a.connect, resumed, a.assigned);
            st.send(Packet::ConnAck(ack));
            st.on_connected();
            st.arm_auth_expiry();
            if resumed {
                for a in st.ch.resume(clock::now()) {
                    if let Action::Send(p) = a {
                        st.send(p);
                    }
                }
            }
        } else {
            // Back from disk, offline: the expiry runs on from the stop.
            st.ch.detach(clock::now());
            let (expiry, left) = a.unparked.unwrap_or((0, 0));
            st.ch.session_expiry = expiry;
            if let Some(delay) = a.will.as_ref().map(|(_, delay)| *delay) {
                st.arm_will(delay);
            }
            if left != u32::MAX {
                let gen = st.gen;
                st.me
                    .send_after(Duration::from_secs(u64::from(left)), move || {
                        SessionMsg::Expire(gen)
                    });
            }
        }
        let m = &st.ctx.broker.metrics;
        inc(&m.session_created);
        Stats::add(
            &st.ctx.broker.stats.sessions,
            Some(&st.ctx.broker.stats.sessions_max),
            1,
        );
        st.arm_tick();
        st.flush();
        st
    }

    /// The session ended: its routes and registration go.
    async fn stopped(&mut self) {
        let st = self;
        st.journal_end();
        let subs: Vec<String> = if st.parked {
            Vec::new()
        } else {
            st.ch.subscriptions.keys().cloned().collect()
        };
        let id = st.me.id();
        for f in subs {
            let _ = st
                .ctx
                .broker
                .unsubscribe_owned(&f, st.ch.client_id.clone(), Some(id))
                .await;
        }
        st.ctx.cm.unregister(&st.ch.client_id, id);
        st.clear_slow();
        if st.heavy {
            st.ctx.overload.set_heavy(&st.me, None);
        }
        Stats::add(&st.ctx.broker.stats.sessions, None, -1);
        inc(&st.ctx.broker.metrics.session_terminated);
        st.me.gone();
    }

    /// Stops the actor and the session with it.
    fn stop(&mut self, myself: &ActorRef<SessionMsg>) {
        self.stopped = true;
        myself.stop(None);
    }

    /// Whether the session has nothing in progress that its actor must
    /// be there for: no timer of its own, no write to disk or to the
    /// client waiting, nothing in its inbox.
    fn can_hibernate(&self) -> bool {
        !self.stopped
            && !self.ending
            && !self.parked
            && !self.tick_armed
            && !self.heavy
            && !self.slow
            && self.held.is_none()
            && self.released.is_empty()
            && self.sent_write.is_none()
            && self.gate.as_ref().is_none_or(|g| g.is_open())
            && self.wbuf.is_empty()
            && self.inbox.is_empty()
    }

    /// Handles one message (a dormant session's actor is gone: see
    /// [`Live::hibernate`]).
    async fn on_msg(
        st: Option<&mut SessionState>,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
    ) -> Result<(), ActorProcessingErr> {
        let Some(st) = st.filter(|st| !st.stopped) else {
            return Ok(());
        };
        match msg {
            SessionMsg::Drain => st.pump(&myself).await,
            SessionMsg::Gathered(held) => Box::pin(st.take_gathered(&myself, held)).await,
            SessionMsg::Inbound(id, ps) => {
                match &st.conn {
                    Some(c) if c.id == id => c.inbound_done(ps.len()),
                    _ => return Ok(()),
                }
                // One clock reading and one pump for the whole batch: the
                // packets came in one read. SUBSCRIBE and UNSUBSCRIBE are
                // rare and boxed; the block keeps the batch out of the
                // state every live session keeps.
                {
                    let broker = {
                        let now = clock::now();
                        let mut ps = ps.into_iter();
                        st.inbound_local(&myself, id, &mut ps, now)
                            .map(|acts| Box::pin(st.inbound_broker(&myself, id, acts, ps, now)))
                    };
                    if let Some(f) = broker {
                        f.await;
                    }
                }
                // An acknowledgement may have opened the inflight window.
                st.pump(&myself).await;
            }
            SessionMsg::ConnClosed(id, cause) => {
                if st.conn.as_ref().map(|c| c.id) != Some(id) {
                    return Ok(());
                }
                let (code, why) = match &cause {
                    CloseCause::Decode(e) => (Some(e.reason_code()), e.to_string()),
                    CloseCause::KeepaliveTimeout => (
                        Some(reason::KEEP_ALIVE_TIMEOUT),
                        "keepalive timeout".to_string(),
                    ),
                    CloseCause::SendTimeout => {
                        (None, "send timeout: client is not reading".to_string())
                    }
                    CloseCause::Closed => (None, "connection closed by client".to_string()),
                    CloseCause::SocketError => (None, "socket error".to_string()),
                };
                if !matches!(cause, CloseCause::Closed) {
                    tracing::info!(client_id = %st.ch.client_id, "closing connection: {why}");
                }
                st.close_conn(&myself, code, &why);
                // Offline now: what waits in the inbox goes to the queue.
                st.pump(&myself).await;
            }
            SessionMsg::Resume(connect, conn, reply) => {
                // Boxed: rare, and its awaits would otherwise size every
                // session's resident message loop.
                let resumed = Box::pin(st.resume(&myself, connect, conn)).await;
                let _ = reply.send(resumed);
            }
            SessionMsg::Discard(reply) => {
                st.discard(&myself);
                let _ = reply.send(());
            }
            SessionMsg::TakeoverOut(reply) => {
                // Boxed: its awaits would grow every session's resident
                // message loop (see `handle_future_stays_small`).
                Box::pin(st.hand_over(&myself, reply)).await;
            }
            SessionMsg::Shutdown(reply) => {
                // (What a gathering held back goes to the queue too.)
                if st.gathering_lost("the node restarts") || st.conn.is_some() {
                    if st.conn.is_some() {
                        st.close_conn(
                            &myself,
                            Some(reason::SERVER_SHUTTING_DOWN),
                            "the node restarts (autoheal)",
                        );
                    }
                    // Offline now: what waits in the inbox goes to the queue.
                    st.pump(&myself).await;
                }
                let _ = reply.send(());
            }
            SessionMsg::Park(reply) => {
                if st.ch.session_expiry == 0 {
                    st.send_disconnect(reason::SERVER_SHUTTING_DOWN, "the node stops");
                    st.end(&myself, true);
                    let _ = reply.send(None);
                    return Ok(());
                }
                st.gathering_lost("the node stops");
                Box::pin(st.park(&myself)).await;
                let stored = st.store_sync();
                let _ = reply.send(Some((Box::new(st.parked()), stored)));
                st.ending = true;
                st.parked = true;
                st.stop(&myself);
            }
            SessionMsg::Kick(reply) => {
                st.send_disconnect(reason::ADMINISTRATIVE_ACTION, "kicked by an administrator");
                st.store_release();
                st.end(&myself, true);
                let _ = reply.send(());
            }
            SessionMsg::Info(reply) => {
                let _ = reply.send(st.info());
            }
            SessionMsg::AddSub(filter, opts, reply) => {
                let req = SubRequest {
                    filter,
                    opts,
                    sub_id: None,
                    refused: None,
                };
                let r = Box::pin(async {
                    let r = st.apply_subscribe(0, vec![req], false).await;
                    st.journal_sync_wait().await;
                    r
                })
                .await;
                let _ = reply.send(r);
            }
            SessionMsg::DelSub(filter, reply) => {
                let had = st.ch.subscriptions.remove(&filter).is_some();
                if had {
                    Box::pin(async {
                        let _ = st
                            .ctx
                            .broker
                            .unsubscribe(&filter, st.ch.client_id.clone())
                            .await;
                        st.journal_sync_wait().await;
                    })
                    .await;
                }
                let _ = reply.send(had);
            }
            SessionMsg::Committed(n, written) => {
                // Acknowledgements only (nearly always) run here, with no
                // future to box for them.
                if st.release_local(&myself, n, written) {
                    Box::pin(st.release(&myself)).await;
                }
                st.pump(&myself).await;
            }
            SessionMsg::Tick => {
                st.tick_armed = false;
                let acts = st.ch.tick(clock::now());
                st.run(&myself, acts).await;
                st.pump(&myself).await;
                st.report_drops();
            }
            SessionMsg::Expire(gen) => {
                if gen == st.gen && st.conn.is_none() {
                    tracing::debug!(client_id = %st.ch.client_id, "session expired");
                    st.publish_will();
                    st.store_release();
                    st.stop(&myself);
                }
            }
            SessionMsg::Fenced => {
                if !st.ending {
                    tracing::info!(
                        client_id = %st.ch.client_id,
                        "the cluster's session store says another node holds this session now: it ends here"
                    );
                    st.end_stale(&myself);
                }
            }
            SessionMsg::SetWill(will, delay) => {
                if st.conn.is_none() && !st.ending {
                    st.ch.conn.will = Some(will);
                    st.arm_will(delay);
                    drop(st.journal_sync());
                }
            }
            SessionMsg::AuthExpired(gen) => {
                let due = st
                    .conn
                    .as_ref()
                    .and_then(|c| c.auth().expire_at_ms)
                    .is_some_and(|at| clock::now_ms() >= at);
                if gen == st.gen && due {
                    st.close_for(&myself, Some(reason::NOT_AUTHORIZED), "credentials expired");
                } else if gen == st.gen {
                    // Woken early (a far expiry is waited for in steps).
                    st.arm_auth_expiry();
                }
            }
            SessionMsg::Will(gen) => {
                if gen == st.gen && st.conn.is_none() {
                    st.publish_will();
                }
            }
            SessionMsg::Hibernate => {}
            SessionMsg::Shed => {
                // The inbox first: what waits there would refill the queue.
                // (A local vector: the session's batch keeps its capacity.)
                let mut all = Vec::new();
                let b = st.ctx.broker.inbox_bounds();
                st.inbox.take(usize::MAX, &mut all, b, usize::MAX);
                let from_inbox = all.len() as u64;
                let keys: Vec<u64> = all.iter().map(|i| i.2).filter(|k| *k != 0).collect();
                drop(all);
                if let Some(j) = &st.ctx.broker.journal {
                    j.release(st.journal_inc, &keys);
                }
                st.ch.counters.dropped += from_inbox;
                st.ch.counters.dropped_queue_full += from_inbox;
                let n = from_inbox + st.ch.shed_queue() as u64;
                tracing::warn!(
                    client_id = %st.ch.client_id,
                    "node overloaded: dropped the session's {n} queued messages"
                );
                st.check_flow(&myself);
                st.report_drops();
            }
        }
        st.journal_done();
        st.arm_tick();
        st.flush();
        Ok(())
    }
}

/// Runs the hibernation sweep every `every` (`mqtt.idle_timeout`): a
/// session left alone for one to two rounds hibernates.
pub async fn hibernator(ctx: std::sync::Weak<Ctx>, every: Duration) {
    // `infinity` (Duration::MAX), or anything as long: never.
    if every.is_zero() || every >= Duration::from_secs(u64::from(u32::MAX)) {
        return;
    }
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t.tick().await;
    loop {
        t.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        ctx.cm.sweep_idle();
    }
}

/// Whether a list of actions needs the broker (an await).
fn needs_broker(acts: &[Action]) -> bool {
    acts.iter()
        .any(|a| matches!(a, Action::Subscribe { .. } | Action::Unsubscribe(_)))
}

fn count_inbound(ctx: &Ctx, p: &Packet) {
    let m = &ctx.broker.metrics;
    match p {
        Packet::Publish(p) => {
            inc(&m.packets_publish_received);
            inc(&m.messages_received);
            match p.qos {
                QoS::AtMostOnce => inc(&m.messages_qos0_received),
                QoS::AtLeastOnce => inc(&m.messages_qos1_received),
                QoS::ExactlyOnce => inc(&m.messages_qos2_received),
            }
        }
        Packet::PubAck(_) => inc(&m.packets_puback_received),
        Packet::Subscribe(_) => inc(&m.packets_subscribe_received),
        Packet::Unsubscribe(_) => inc(&m.packets_unsubscribe_received),
        Packet::PingReq => inc(&m.packets_pingreq_received),
        Packet::Disconnect(_) => inc(&m.packets_disconnect_received),
        _ => {}
    }
}

impl SessionState {
    /// Period of the retry / await-rel check (computed, not kept: every
    /// byte of the state is kept by every idle session).
    fn tick_period(&self) -> Duration {
        let s = &self.ctx.settings;
        match s.retry_interval {
            Some(retry) => retry
                .min(s.await_rel_timeout)
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
            None => Duration::from_secs(5),
        }
    }

    /// Schedules the next `Tick` if the channel has inflight messages to
    /// retry or QoS 2 ids to expire and none is scheduled yet.
    fn arm_tick(&mut self) {
        if !self.tick_armed && self.ch.needs_tick() {
            self.tick_armed = true;
            self.me.send_after(self.tick_period(), || SessionMsg::Tick);
        }
    }

    /// Adds what the channel dropped since last time to the node's
    /// `delivery.dropped*` metrics.
    fn report_drops(&mut self) {
        let c = &self.ch.counters;
        let r = &mut self.reported;
        if c.dropped == r.dropped && c.publish_refused == r.publish_refused {
            return;
        }
        let m = &self.ctx.broker.metrics;
        add(
            &m.packets_publish_auth_error,
            c.publish_refused - r.publish_refused,
        );
        add(&m.delivery_dropped, c.dropped - r.dropped);
        add(
            &m.delivery_dropped_queue_full,
            c.dropped_queue_full - r.dropped_queue_full,
        );
        add(&m.delivery_dropped_qos0, c.dropped_qos0 - r.dropped_qos0);
        add(
            &m.delivery_dropped_expired,
            c.dropped_expired - r.dropped_expired,
        );
        add(
            &m.delivery_dropped_too_large,
            c.dropped_too_large - r.dropped_too_large,
        );
        *r = Reported::of(c);
    }

    /// Encodes a packet for the connection; it goes out with the next
    /// [`SessionState::flush`]. Nothing without a connection.
    fn send(&mut self, mut p: Packet) {
        if self.conn.is_none() {
            return;
        }
        // A PUBLISH that does not fit was dropped by the channel already.
        if !matches!(p, Packet::Publish(_)) && !self.ch.fit_outgoing(&mut p) {
            tracing::info!(
                client_id = %self.ch.client_id,
                "closing connection: {} does not fit the client's maximum packet size of {} bytes",
                p.kind(),
                self.ch.client_max_packet().unwrap_or_default()
            );
            self.flush();
            if let Some(c) = &self.conn {
                self.close_out(c);
            }
            return;
        }
        let m = &self.ctx.broker.metrics;
        inc(&m.packets_sent);
        match &p {
            Packet::Publish(_) => {
                inc(&m.packets_publish_sent);
                inc(&m.messages_sent);
            }
            Packet::PubAck(_) => inc(&m.packets_puback_sent),
            Packet::ConnAck(_) => inc(&m.packets_connack_sent),
            Packet::Disconnect(_) => inc(&m.packets_disconnect_sent),
            _ => {}
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf = BytesMut::with_capacity(codec::encoded_len(&p, self.ch.conn.version));
        }
        codec::encode(&p, self.ch.conn.version, &mut self.wbuf);
    }

    /// Hands what was encoded to the connection in one piece; an idle
    /// session keeps no buffer.
    fn flush(&mut self) {
        self.journal_done();
        let sent = self.sent_write.take();
        if self.wbuf.is_empty() {
            return;
        }
        let b = std::mem::take(&mut self.wbuf).freeze();
        let Some(conn) = &self.conn else {
            return;
        };
        match (sent, &self.gate) {
            (Some(t), _) => self
                .gate
                .get_or_insert_with(OutGate::default)
                .write_after(conn, b, t),
            (None, Some(g)) => g.write(conn, b),
            (None, None) => {
                conn.write(b);
            }
        }
    }

    /// Closes `conn` once what was handed to it before is written.
    fn close_out(&self, conn: &ConnHandle) {
        match &self.gate {
            Some(g) => g.close(conn),
            None => conn.close(),
        }
    }

    /// Takes deliveries from the inbox and hands them to the channel, in
    /// batches of [`DRAIN_BATCH`]. While the client is connected and its
    /// inflight window and queue are full, leaves the rest in the inbox
    /// (still marked scheduled; an acknowledgement, the tick or the end of
    /// the connection brings the session back). An empty inbox is never
    /// marked scheduled (the take that empties it clears the mark), so
    /// there is nothing to do then.
    ///
    /// A client that stopped taking (see [`Inbox::is_stopped`]) has its
    /// inbox taken whatever its window: its queue then drops, QoS 0 first,
    /// then the oldest, and publishers are not held up by it.
    async fn pump(&mut self, myself: &ActorRef<SessionMsg>) {
        if self.gather.as_ref().is_some_and(|g| g.waiting) {
            // Live deliveries come after what is being gathered.
            return;
        }
        if self.batch.is_empty()
            && (self.inbox.is_empty() || (self.ch.backed_up() && !self.inbox.is_stopped()))
        {
            self.after_pump(myself);
            return;
        }
        let b = self.ctx.broker.inbox_bounds();
        // A connected client that keeps taking gets what its byte bound
        // has room for; the rest waits here, where publishers see it. An
        // offline or stopped one takes all, and its queue drops.
        let budget = if self.conn.is_some() && !self.inbox.is_stopped() {
            self.ch.room_bytes()
        } else {
            usize::MAX
        };
        let mut batch = std::mem::take(&mut self.batch);
        // Deliveries left in the batch (gathered, see `take_gathered`) go
        // first; the inbox then has its turn.
        let more = if batch.is_empty() {
            self.inbox.take(DRAIN_BATCH, &mut batch, b, budget)
        } else {
            true
        };
        if batch.is_empty() {
            // Nothing fits now (still scheduled): an acknowledgement
            // brings the session back.
            self.batch = batch;
            self.after_pump(myself);
            return;
        }
        let now = clock::now();
        let upgrade = self.ctx.settings.upgrade_qos;
        let max_pending = self.ctx.settings.max_pending_write;
        let mut other = Vec::new();
        let pending = self.conn.as_ref().map(|c| c.pending());
        let mut plain = 0;
        for (m, matches, key) in batch.drain(..) {
            if self.gather.is_some() && self.repeats_gathered(&m, key) {
                continue;
            }
            let mut d = Delivery::from_matches(m, &matches, upgrade);
            d.journal = key;
            // Encoded but unflushed bytes count toward the write backlog.
            let can = pending.is_some_and(|p| p + self.wbuf.len() < max_pending);
            let d = if pending.is_some() {
                match self.ch.deliver_plain(d, can, &mut self.wbuf) {
                    Ok(sent) => {
                        plain += usize::from(sent);
                        continue;
                    }
                    Err(d) => d,
                }
            } else {
                d
            };
            for a in self.ch.deliver(d, now, can) {
                match a {
                    Action::Send(p) => self.send(p),
                    a => other.push(a),
                }
            }
        }
        if plain > 0 {
            let m = &self.ctx.broker.metrics;
            let n = plain as u64;
            add(&m.packets_sent, n);
            add(&m.packets_publish_sent, n);
            add(&m.messages_sent, n);
        }
        self.batch = batch;
        if !other.is_empty() {
            self.run(myself, other).await;
        }
        self.after_pump(myself);
        if more {
            // Let the mailbox have a turn before the next batch.
            let _ = self.me.cast(SessionMsg::Drain);
        }
    }

    /// Asks every node for what it holds for `from`, the node this
    /// session was taken from (gone), that this session's subscriptions
    /// want; live deliveries wait in the inbox until the answer
    /// ([`SessionMsg::Gathered`]).
    fn gather_from(&mut self, from: Arc<str>) {
        let Some(remote) = self.ctx.broker.remote_routes() else {
            return;
        };
        let filters: Vec<String> = self
            .ch
            .subscriptions
            .keys()
            .filter(|f| !matches!(emqx_mqtt::topic::parse_shared(f), Ok(Some(_))))
            .cloned()
            .collect();
        if filters.is_empty() {
            return;
        }
        let mut had: HashMap<u64, u32> = HashMap::new();
        let inflight = self.ch.inflight.values().filter_map(|i| match &i.state {
            emqx_mqtt::channel::InflightState::Publish(d) => Some(d),
            emqx_mqtt::channel::InflightState::Release => None,
        });
        for d in self.ch.mqueue.iter().chain(inflight) {
            *had.entry(content_key(&d.msg)).or_default() += 1;
        }
        self.gather = Some(Box::new(Gather {
            from: from.clone(),
            waiting: true,
            had,
            seen: HashMap::new(),
            until: std::time::Instant::now() + GATHERED_FOR,
        }));
        let me = self.me.clone();
        tokio::spawn(async move {
            let held = remote.held_for(&from, &filters).await;
            let _ = me.cast(SessionMsg::Gathered(Some(held)));
        });
        // The answers are bounded well within this; live deliveries never
        // wait longer, whatever happened to them.
        self.me
            .send_after(GATHER_LIMIT, || SessionMsg::Gathered(None));
    }

    /// The client resumed this session on another node: closes the
    /// connection (DISCONNECT 0x8E), queues what waits in the inbox, hands
    /// the state over and stops; `None` for a session that ends with its
    /// connection (expiry 0): it is discarded.
    async fn hand_over(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        reply: ractor::RpcReplyPort<Option<HandedOver>>,
    ) {
        if self.ch.session_expiry == 0 {
            self.discard(myself);
            let _ = reply.send(None);
            return;
        }
        inc(&self.ctx.broker.metrics.session_takenover);
        self.send_disconnect(
            reason::SESSION_TAKEN_OVER,
            "session taken over by another node",
        );
        self.flush();
        if let Some(old) = self.conn.take() {
            self.close_out(&old);
            self.after_conn_lost(myself, true);
        }
        self.ending = true;
        // A gathering not answered yet goes with the session: its new
        // holder asks again, and the live deliveries held back meanwhile
        // are queued below.
        let gathering_from = self.stop_gathering();
        // What waits in the inbox goes with the session: offline now, the
        // channel queues it (up to `max_mqueue_len`).
        let cap = self.ctx.broker.settings.max_session_backlog;
        for _ in 0..=cap / DRAIN_BATCH {
            if self.inbox.is_empty() {
                break;
            }
            self.pump(myself).await;
        }
        let _ = reply.send(Some(HandedOver {
            snapshot: self.ch.snapshot(),
            gathering_from,
        }));
        self.stop(myself);
    }

    /// Ends a gathering still waiting for its answers (they are then
    /// dropped when they come), so the live deliveries it held back go on;
    /// returns the node it gathered for.
    fn stop_gathering(&mut self) -> Option<Arc<str>> {
        self.gather.take_if(|g| g.waiting).map(|g| g.from.clone())
    }

    /// The session stops with a gathering unanswered: what it held back
    /// is queued (and journaled) as it stops; what the other nodes hold
    /// for the node it was taken from is not gathered.
    fn gathering_lost(&mut self, why: &str) -> bool {
        let Some(from) = self.stop_gathering() else {
            return false;
        };
        tracing::warn!(
            client_id = %self.ch.client_id,
            "{why} before the other nodes answered what they hold for {from}: not gathered"
        );
        true
    }

    /// The messages the other nodes held for the node this session was
    /// taken from: those it did not come back with (that node may have
    /// written a message to the session's shard and died before it
    /// acknowledged it) are journaled and queued, in the order each node
    /// sent them, before the live deliveries that waited meanwhile.
    async fn take_gathered(&mut self, myself: &ActorRef<SessionMsg>, held: Option<Vec<Message>>) {
        let Some(mut g) = self.gather.take_if(|g| g.waiting) else {
            if let Some(n) = held.map(|h| h.len()).filter(|n| *n > 0) {
                tracing::warn!(
                    client_id = %self.ch.client_id,
                    "{n} message(s) gathered for it came after {GATHER_LIMIT:?}: dropped"
                );
            }
            return;
        };
        g.waiting = false;
        let Some(held) = held else {
            tracing::warn!(
                client_id = %self.ch.client_id,
                "no answer within {GATHER_LIMIT:?} from the nodes asked for what they held for its node: its live deliveries go on"
            );
            self.gather = Some(g);
            self.pump(myself).await;
            return;
        };
        let mut have = std::mem::take(&mut g.had);
        let (total, mut known) = (held.len(), 0);
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let mut batch: Vec<Item> = Vec::new();
        for m in held {
            let k = content_key(&m);
            if let Some(n) = have.get_mut(&k).filter(|n| **n > 0) {
                *n -= 1;
                known += 1;
                continue;
            }
            let matches: crate::inbox::Matches = self
                .ch
                .subscriptions
                .iter()
                .filter(|(f, (o, _))| {
                    emqx_mqtt::topic::matches(f, &m.topic)
                        && !(o.no_local && *m.from == *self.ch.client_id)
                })
                .map(|(_, (opts, sub_id))| emqx_mqtt::delivery::SubMatch {
                    opts: *opts,
                    sub_id: *sub_id,
                })
                .collect();
            if matches.is_empty() {
                continue;
            }
            let m = Arc::new(m.renumbered());
            // Not waited for: until it is on disk the nodes that held the
            // message still do.
            let key = match &self.ctx.broker.journal {
                Some(j) if self.journal_inc != 0 => j
                    .record(&m, std::iter::once((self.journal_inc, &matches[..])))
                    .and_then(|(_, keys)| keys.first().copied())
                    .unwrap_or(0),
                _ => 0,
            };
            *seen.entry(k).or_default() += 1;
            batch.push((m, matches, key));
        }
        tracing::info!(
            client_id = %self.ch.client_id,
            "{} message(s) gathered from the nodes that held them for its node (gone): {} queued, {} it had already",
            total,
            batch.len(),
            known
        );
        // Handed on first (the batch goes before the inbox), then the live
        // deliveries that repeat them are dropped.
        self.gather = Some(g);
        self.batch = batch;
        self.pump(myself).await;
        if let Some(g) = self.gather.as_deref_mut() {
            g.seen = seen;
        }
    }

    /// A live delivery of a message gathered already (see [`Gather`]):
    /// dropped, with its journal row.
    fn repeats_gathered(&mut self, m: &Message, key: u64) -> bool {
        let Some(g) = self.gather.as_deref_mut() else {
            return false;
        };
        if g.waiting {
            return false;
        }
        if g.until <= std::time::Instant::now() {
            self.gather = None;
            return false;
        }
        let Some(n) = g.seen.get_mut(&content_key(m)).filter(|n| **n > 0) else {
            return false;
        };
        *n -= 1;
        if let (Some(j), true) = (&self.ctx.broker.journal, key != 0) {
            j.release(self.journal_inc, &[key]);
        }
        true
    }

    fn after_pump(&mut self, myself: &ActorRef<SessionMsg>) {
        self.check_flow(myself);
        self.report_drops();
    }

    /// After taking from the inbox: a connected client over its byte bound
    /// is shut down (`force_shutdown`); one that stopped taking is logged,
    /// counted and alarmed once; one that caught up is waited for again.
    fn check_flow(&mut self, myself: &ActorRef<SessionMsg>) {
        let queued = self.ch.queued_bytes();
        if self.heavy || queued >= HEAVY {
            self.inbox.set_held(queued);
            if !self.heavy {
                self.heavy = true;
                self.ctx.overload.set_heavy(&self.me, Some(&self.inbox));
            } else if queued < HEAVY / 2 {
                self.heavy = false;
                self.ctx.overload.set_heavy(&self.me, None);
            }
        }
        let over = self.inbox.take_over_bytes()
            || self.ch.counters.dropped_over_bytes > self.reported.dropped_over_bytes;
        if self.conn.is_none() {
            self.clear_slow();
            return;
        }
        if over && self.ctx.settings.force_shutdown {
            inc(&self.ctx.broker.metrics.client_force_shutdown);
            let max = self.ctx.broker.settings.max_session_bytes;
            tracing::warn!(
                client_id = %self.ch.client_id,
                "force shutdown: the messages waiting for the client passed force_shutdown.max_heap_size ({max} bytes)"
            );
            self.close_conn(
                myself,
                Some(reason::QUOTA_EXCEEDED),
                "too many bytes waiting",
            );
            self.clear_slow();
            return;
        }
        let stopped = self.inbox.is_stopped();
        if stopped && !self.slow {
            self.slow = true;
            inc(&self.ctx.broker.metrics.client_slow_consumer);
            let waiting = self.ch.mqueue.len() + self.ch.inflight.len();
            tracing::warn!(
                client_id = %self.ch.client_id,
                "slow consumer: the client took no message for {}s with {waiting} waiting; \
                 its publishers are no longer held up for it, and its queue drops past its bounds",
                STOPPED.as_secs()
            );
            let details = serde_json::json!({
                "clientid": &*self.ch.client_id,
                "username": self.ch.conn.username,
                "peername": self.conn.as_ref().map(|c| c.peer.to_string()),
                "inflight": self.ch.inflight.len(),
                "mqueue_len": self.ch.mqueue.len(),
            });
            self.ctx.alarm_activate(
                &self.slow_alarm(),
                details,
                format!(
                    "client {} took no message for {}s",
                    self.ch.client_id,
                    STOPPED.as_secs()
                ),
            );
        } else if stopped && self.inbox.is_empty() && !self.ch.backed_up() {
            tracing::info!(client_id = %self.ch.client_id, "slow consumer caught up");
            self.clear_slow();
        }
    }

    fn slow_alarm(&self) -> String {
        format!("slow_consumer/{}", self.ch.client_id)
    }

    /// Publishers wait for this session again; its alarm, if any, clears.
    fn clear_slow(&mut self) {
        self.inbox.resume();
        if std::mem::take(&mut self.slow) {
            self.ctx.alarm_deactivate(&self.slow_alarm());
        }
    }

    fn send_disconnect(&mut self, code: u8, why: &str) {
        if let Some(p) = self.ch.disconnect_packet(code, why) {
            self.send(p);
        }
    }

    /// Closes the connection when its credentials expire (the
    /// authenticator set `expire_at_ms`); a later connection of the
    /// session has its own generation, so an old timer does nothing.
    fn arm_auth_expiry(&self) {
        let Some(at) = self.conn.as_ref().and_then(|c| c.auth().expire_at_ms) else {
            return;
        };
        // At most a day at a time: the timer is re-armed until the time.
        let wait = Duration::from_millis(at.saturating_sub(clock::now_ms()))
            .min(Duration::from_secs(86_400));
        let gen = self.gen;
        self.me
            .send_after(wait, move || SessionMsg::AuthExpired(gen));
    }

    fn on_connected(&mut self) {
        let ctx = self.ctx.clone();
        inc(&ctx.broker.metrics.client_connected);
        Stats::add(
            &ctx.broker.stats.connections,
            Some(&ctx.broker.stats.connections_max),
            1,
        );
        ctx.sys_client_event(&self.ch, self.conn.as_ref(), true, "");
    }

    /// Carries out the channel's actions in order. Sends and a close (the
    /// usual lists) need no await and run inline; a list with broker work
    /// runs in a boxed future. An `Action` is about 860 bytes: held across
    /// an await here, it would be part of every session actor's resident
    /// message loop, idle or not.
    /// Handles the packets of connection `id` in order, up to the first
    /// one whose actions need the broker (SUBSCRIBE, UNSUBSCRIBE): returns
    /// those, to be run before the rest.
    fn inbound_local(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        id: u64,
        ps: &mut std::vec::IntoIter<Packet>,
        now: Now,
    ) -> Option<Vec<Action>> {
        for p in ps {
            // A packet before this one may have ended the connection.
            if self.stopped || self.conn.as_ref().map(|c| c.id) != Some(id) {
                return None;
            }
            let Some(acts) = self.inbound(p, now) else {
                continue;
            };
            if needs_broker(&acts) {
                return Some(acts);
            }
            self.run_local(myself, acts);
        }
        None
    }

    /// Runs `acts` with the broker, then handles the rest of the packets.
    async fn inbound_broker(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        id: u64,
        mut acts: Vec<Action>,
        mut ps: std::vec::IntoIter<Packet>,
        now: Now,
    ) {
        loop {
            self.run_with_broker(myself, acts, true).await;
            match self.inbound_local(myself, id, &mut ps, now) {
                Some(more) => acts = more,
                None => return,
            }
        }
    }

    /// Hands one packet of the connection to the channel; returns what is
    /// to be done now, or None when its replies wait for a write to disk.
    /// Not async: a `Packet` is about 400 bytes, and the caller's future,
    /// which every live session keeps, must not hold one across an await.
    fn inbound(&mut self, p: Packet, now: Now) -> Option<Vec<Action>> {
        count_inbound(&self.ctx, &p);
        let ctx = self.ctx.clone();
        let q2 = self.qos2_probe(&p);
        let mut sink = Sink {
            ctx: &ctx,
            congested: None,
            durable: None,
        };
        let acts = self.ch.handle(p, now, &mut sink);
        let mut durable = sink.durable;
        if let Some(t) = self.qos2_journal(q2) {
            // Both: the publish's ticket may also wait for other nodes
            // and for other sessions' shards, which this write does not
            // cover.
            durable = Some(Box::new(match durable {
                Some(d) => d.and(t),
                None => t,
            }));
        }
        if let (Some(c), Some(conn)) = (sink.congested, &self.conn) {
            conn.throttle(self.ctx.broker.backpressure(c));
        }
        if durable.is_some() || self.held.is_some() {
            // A retained message is acknowledged once it is on disk.
            self.hold(acts, durable);
            return None;
        }
        Some(acts)
    }

    async fn run(&mut self, myself: &ActorRef<SessionMsg>, acts: Vec<Action>) {
        if needs_broker(&acts) {
            Box::pin(self.run_with_broker(myself, acts, true)).await;
        } else {
            self.run_local(myself, acts);
        }
    }

    /// `run` for a list of sends and closes only.
    fn run_local(&mut self, myself: &ActorRef<SessionMsg>, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send(p) => self.send(p),
                Action::Close { reason, why } => {
                    self.close_for(myself, reason, &why);
                    return;
                }
                Action::Subscribe { .. } | Action::Unsubscribe(_) => {
                    tracing::error!(client_id = %self.ch.client_id, "broker work in a local action list: ignored");
                }
            }
        }
    }

    /// `run` for a list that subscribes or unsubscribes. With `live`
    /// false (replies to a connection that is gone) only the broker work
    /// is done: the channel holds those subscriptions already.
    async fn run_with_broker(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        acts: Vec<Action>,
        live: bool,
    ) {
        for a in acts {
            match a {
                Action::Send(p) if live => self.send(p),
                Action::Send(_) => {}
                Action::Subscribe {
                    packet_id,
                    requests,
                } => {
                    let _ = self.apply_subscribe(packet_id, requests, live).await;
                    // The SUBACK (not sent yet) waits for the session's
                    // subscriptions to be on disk.
                    self.journal_sync_wait().await;
                }
                Action::Unsubscribe(filters) => {
                    inc(&self.ctx.broker.metrics.client_unsubscribe);
                    for f in filters {
                        let _ = self
                            .ctx
                            .broker
                            .unsubscribe(&f, self.ch.client_id.clone())
                            .await;
                    }
                    self.journal_sync_wait().await;
                }
                Action::Close { reason, why } if live => {
                    self.close_for(myself, reason, &why);
                    return;
                }
                Action::Close { .. } => {}
            }
        }
    }

    /// A close the channel asked for.
    fn close_for(&mut self, myself: &ActorRef<SessionMsg>, reason: Option<u8>, why: &str) {
        if let Some(code) = reason {
            tracing::info!(client_id = %self.ch.client_id, "disconnecting client: {why} (reason 0x{code:02X})");
        }
        self.close_conn(myself, reason, why);
    }

    async fn apply_subscribe(
        &mut self,
        packet_id: u16,
        requests: Vec<SubRequest>,
        send_ack: bool,
    ) -> Result<(), BrokerError> {
        inc(&self.ctx.broker.metrics.client_subscribe);
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut err = Ok(());
        for r in &requests {
            if r.refused.is_some() {
                outcomes.push(None);
                continue;
            }
            let sub = Subscriber {
                inbox: self.inbox.clone(),
                client_id: self.ch.client_id.clone(),
                opts: r.opts,
                sub_id: r.sub_id,
            };
            match self.ctx.broker.subscribe(&r.filter, sub).await {
                Ok(o) => outcomes.push(Some(o.is_new)),
                Err(e) => {
                    err = Err(e);
                    outcomes.push(None)
                }
            }
        }
        let (ack, retained) = self.ch.subscribed(packet_id, &requests, &outcomes);
        if send_ack {
            self.send(ack);
        }
        if self.ctx.broker.retainer.enabled() {
            let upgrade = self.ctx.settings.upgrade_qos;
            for (filter, opts, sub_id) in retained {
                for m in self.ctx.broker.retainer.matching(&filter) {
                    if !self.ch.may_receive(&m.topic, m.qos, clock::now()) {
                        continue;
                    }
                    let can = self
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.pending() < self.ctx.settings.max_pending_write);
                    let acts = self.ch.deliver(
                        Delivery::retained(m, &opts, sub_id, upgrade),
                        clock::now(),
                        can,
                    );
                    for a in acts {
                        if let Action::Send(p) = a {
                            self.send(p);
                        }
                    }
                }
            }
        }
        err
    }

    /// Ends the current connection: DISCONNECT (v5, when a reason is given),
    /// close, then will and expiry handling.
    fn close_conn(&mut self, myself: &ActorRef<SessionMsg>, reason: Option<u8>, why: &str) {
        if let Some(code) = reason {
            self.send_disconnect(code, why);
        }
        self.flush();
        if let Some(c) = self.conn.take() {
            self.close_out(&c);
        }
        self.after_conn_lost(myself, false);
    }

    /// Publishes the will now (`delay` 0) or after `delay` seconds, unless
    /// a connection resumes the session first (the timer carries `gen`).
    fn arm_will(&mut self, delay: u32) {
        if delay == 0 {
            self.publish_will();
        } else {
            let gen = self.gen;
            self.me
                .send_after(Duration::from_secs(u64::from(delay)), move || {
                    SessionMsg::Will(gen)
                });
        }
    }

    /// Ends a copy of the session that the cluster's session store says
    /// another node holds now: its connection (if any) is told 0x8E, and
    /// neither the will nor the store's copy is touched (both are the
    /// holder's now).
    fn end_stale(&mut self, myself: &ActorRef<SessionMsg>) {
        inc(&self.ctx.broker.metrics.session_discarded);
        self.store = None;
        self.send_disconnect(reason::SESSION_TAKEN_OVER, "session held by another node");
        self.end(myself, false);
    }

    /// Bookkeeping once a connection is gone: stats, the will, and either
    /// ending the session or arming its expiry timer.
    fn after_conn_lost(&mut self, myself: &ActorRef<SessionMsg>, taken_over: bool) {
        self.ch.detach(clock::now());
        self.gen += 1;
        let ctx = self.ctx.clone();
        inc(&ctx.broker.metrics.client_disconnected);
        Stats::add(&ctx.broker.stats.connections, None, -1);
        ctx.sys_client_event(&self.ch, None, false, "normal");
        ctx.banned
            .client_disconnected(&self.ch.client_id, clock::now_ms());
        if taken_over {
            // The session continues on the new connection: a will without
            // delay is published, a delayed one is cancelled (MQTT 5.0 3.1.3.2.2).
            if self.will_delay() == 0 {
                self.publish_will();
            } else {
                self.ch.conn.will = None;
            }
            return;
        }
        let expiry = self.ch.session_expiry;
        if expiry == 0 {
            self.publish_will();
            self.stop(myself);
            return;
        }
        // The expiry runs from now, also after a crash.
        drop(self.journal_sync());
        if self.ch.conn.will.is_some() {
            self.arm_will(self.will_delay().min(expiry));
        }
        if expiry != u32::MAX {
            let gen = self.gen;
            self.me
                .send_after(Duration::from_secs(u64::from(expiry)), move || {
                    SessionMsg::Expire(gen)
                });
        }
    }

    /// Ends the session now (kick, discard): close, will, stop.
    /// A new connection resumes this session on this node (clean_start =
    /// false). Returns false, and ends the session, when it must end with
    /// its connection instead.
    async fn resume(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        connect: Box<Connect>,
        conn: ConnHandle,
    ) -> bool {
        if self.ch.session_expiry == 0 {
            // A session that ends with its network connection is
            // never resumed, even while the close of that
            // connection is still on its way here (MQTT-3.1.2-6,
            // MQTT 5.0 3.1.2.11.2).
            self.discard(myself);
            return false;
        }
        if !self.store_held().await {
            // Taken by another node while this one was cut off or
            // stopped: the connect takes it over from there instead.
            tracing::info!(
                client_id = %self.ch.client_id,
                "not resumed here: the cluster's session store says another node holds the session"
            );
            self.end_stale(myself);
            return false;
        }
        // Takeover on this node: the old connection (if any) is told
        // and closed, the session moves to the new one.
        if self.conn.is_some() {
            self.send_disconnect(reason::SESSION_TAKEN_OVER, "session taken over");
            self.flush();
            if let Some(old) = self.conn.take() {
                self.close_out(&old);
            }
            inc(&self.ctx.broker.metrics.session_takenover);
            self.after_conn_lost(myself, true);
        }
        self.gen += 1;
        self.ending = false;
        self.ch.attach(&connect, clock::now());
        self.ch.set_mountpoint(conn.mountpoint.as_deref());
        self.ch.set_peer(
            Some(conn.peer.ip()),
            conn.cert_cn().map(String::from),
            conn.auth().clone(),
        );
        self.conn = Some(conn);
        // A resume may end persistence (MQTT 5 session expiry 0).
        drop(self.journal_sync());
        let ack = self.ch.connack(&connect, true, false);
        self.send(Packet::ConnAck(ack));
        inc(&self.ctx.broker.metrics.session_resumed);
        self.on_connected();
        self.arm_auth_expiry();
        let acts = self.ch.resume(clock::now());
        self.run(myself, acts).await;
        self.pump(myself).await;
        self.flush();
        true
    }

    /// Queues the replies to one packet behind the writes to disk still
    /// running; `durable`, the write this packet made, releases them when
    /// it is done.
    fn hold(&mut self, acts: Vec<Action>, durable: Option<Box<crate::durable::Ticket>>) {
        let gen = self.gen;
        let h = self.held.get_or_insert_with(Default::default);
        let n = match durable {
            Some(t) => {
                h.issued += 1;
                let n = h.issued;
                let me = self.me.clone();
                // Called on the store's writer thread: a message, no task.
                t.on_done(move |r| {
                    let _ = me.cast(SessionMsg::Committed(n, Written::of(&r)));
                });
                n
            }
            None => 0,
        };
        h.queue.push_back((n, gen, acts));
    }

    /// Write `n` is done (or failed): takes the replies held up to the
    /// next write whose outcome is not known yet, in order, each with
    /// whether its connection is still the current one. The
    /// acknowledgement of a publish whose write failed becomes a refusal
    /// (see [`SessionState::refuse_unwritten`]); one the cluster's session
    /// store could not confirm closes the connection with 0x89 instead.
    fn take_released(&mut self, n: u64, ok: Written) -> Vec<(bool, Vec<Action>)> {
        let mut ready = Vec::new();
        if let Some(h) = self.held.as_mut() {
            h.done.insert(n, ok);
            while let Some((t, _, _)) = h.queue.front() {
                let ok = match *t {
                    0 => Written::Yes,
                    t => match h.done.remove(&t) {
                        Some(ok) => ok,
                        None => break,
                    },
                };
                match h.queue.pop_front() {
                    Some((_, gen, acts)) => ready.push((gen, acts, ok)),
                    None => break,
                }
            }
            if h.queue.is_empty() {
                self.held = None;
            }
        }
        let mut out = Vec::with_capacity(ready.len());
        for (gen, acts, ok) in ready {
            let acts = if ok == Written::Yes {
                acts
            } else if ok == Written::Unavailable {
                tracing::warn!(client_id = %self.ch.client_id, "a publish is not acknowledged: the cluster's session store did not confirm its copy in time; the connection closes (0x89) and the client sends it again");
                vec![Action::Close {
                    reason: Some(reason::SERVER_BUSY),
                    why: "the cluster's session store is unavailable".into(),
                }]
            } else {
                tracing::error!(client_id = %self.ch.client_id, "a publish is refused: it cannot be written to disk (the store's error is logged above)");
                self.ctx.alarm_activate(
                    DURABLE_ALARM,
                    serde_json::json!({ "clientid": &*self.ch.client_id }),
                    "the durable store cannot be written (see the node's log)".to_string(),
                );
                self.refuse_unwritten(acts)
            };
            out.push((gen == self.gen, acts));
        }
        out
    }

    /// Runs the replies write `n` released when none needs the broker, and
    /// says false; otherwise keeps them for [`SessionState::release`] and
    /// says true.
    fn release_local(&mut self, myself: &ActorRef<SessionMsg>, n: u64, ok: Written) -> bool {
        let ready = self.take_released(n, ok);
        if ready.iter().any(|(_, acts)| needs_broker(acts)) {
            self.released = ready;
            return true;
        }
        for (live, acts) in ready {
            if live {
                self.run_local(myself, acts);
            }
        }
        false
    }

    /// Runs released replies that include broker work (a SUBSCRIBE that
    /// came behind a held publish). Replies to a connection that is gone
    /// are dropped (its subscriptions still apply: the channel has them).
    async fn release(&mut self, myself: &ActorRef<SessionMsg>) {
        for (live, acts) in std::mem::take(&mut self.released) {
            self.run_with_broker(myself, acts, live).await;
        }
    }

    /// The replies to a publish whose write to disk failed (a full disk,
    /// an I/O error): the message is not acknowledged as kept. MQTT 5 gets
    /// its PUBACK or PUBREC with 0x97 Quota exceeded (a QoS 2 exchange
    /// ends there); MQTT 3, which has no refusal, loses its connection
    /// instead, and its client sends the message again.
    fn refuse_unwritten(&mut self, acts: Vec<Action>) -> Vec<Action> {
        let v5 = self.ch.conn.version == ProtocolVersion::V5;
        let mut out = Vec::with_capacity(acts.len());
        for a in acts {
            let refused: (fn(PubAckLike) -> Packet, PubAckLike) = match a {
                Action::Send(Packet::PubAck(p)) if p.reason_code < 0x80 => (Packet::PubAck, p),
                Action::Send(Packet::PubRec(p)) if p.reason_code < 0x80 => {
                    // The exchange ends here: the id is not awaiting release.
                    self.ch.awaiting_rel.remove(&p.packet_id);
                    (Packet::PubRec, p)
                }
                a => {
                    out.push(a);
                    continue;
                }
            };
            if !v5 {
                out.push(Action::Close {
                    reason: None,
                    why: "a publish cannot be written to disk".into(),
                });
                return out;
            }
            let (kind, mut p) = refused;
            p.reason_code = reason::QUOTA_EXCEEDED;
            out.push(Action::Send(kind(p)));
        }
        out
    }

    /// The node stops and this session is kept on disk: the connection
    /// closes, what waits in the inbox goes to the queue, and a will still
    /// waiting for its delay is published now (no timer outlives the
    /// process).
    async fn park(&mut self, myself: &ActorRef<SessionMsg>) {
        if self.conn.is_some() {
            self.close_conn(myself, Some(reason::SERVER_SHUTTING_DOWN), "the node stops");
        }
        let cap = self.ctx.broker.settings.max_session_backlog;
        for _ in 0..=cap / DRAIN_BATCH {
            if self.inbox.is_empty() {
                break;
            }
            self.pump(myself).await;
        }
        self.publish_will();
    }

    fn parked(&self) -> Parked {
        Parked {
            client_id: self.ch.client_id.to_string(),
            proto_level: self.ch.conn.version.level(),
            keep_alive: self.ch.conn.keepalive,
            username: self.ch.conn.username.clone(),
            session_expiry: self.ch.session_expiry,
            parked_at_ms: now_ms(),
            snapshot: self.ch.snapshot(),
        }
    }

    /// Keeps the durable journal in step with the session: a persistent
    /// session gets an incarnation (its deliveries are journaled from now
    /// on, those it already holds are written) and its record is written;
    /// a session that is not persistent (any more) leaves the journal.
    /// Returns the record's write.
    fn journal_sync(&mut self) -> Option<crate::durable::Ticket> {
        // The cluster's copy first (not waited for here).
        drop(self.store_sync());
        self.journal_sync_local()
    }

    /// [`SessionState::journal_sync`] without the cluster's copy.
    fn journal_sync_local(&mut self) -> Option<crate::durable::Ticket> {
        let j = self.ctx.broker.journal.clone()?;
        if self.ch.session_expiry == 0 {
            if self.journal_inc != 0 {
                let held = self.ch.journal_held();
                j.forget(self.journal_inc, &held);
                self.ch.leave_journal();
                self.journal_inc = 0;
                self.inbox.set_journal(0);
            }
            return None;
        }
        if self.journal_inc == 0 {
            self.journal_inc = j.next_key();
            self.inbox.set_journal(self.journal_inc);
            if let Some(s) = &self.store {
                j.link(self.journal_inc, s.clone());
            }
        }
        let (inflight, queued) = self.ch.to_journal();
        j.adopt(self.journal_inc, inflight, queued);
        j.save(&self.journal_record())
    }

    /// [`SessionState::journal_sync`], waiting until the record is on
    /// disk (a SUBACK or UNSUBACK is sent after it).
    async fn journal_sync_wait(&mut self) {
        let stored = self.store_sync();
        if let Some(t) = self.journal_sync_local() {
            if let Err(e) = t.wait().await {
                self.durable_failed(&e);
            }
        }
        if let Some(rx) = stored {
            // Failures are logged by the writer; the reply goes either way.
            let _ = rx.await;
        }
    }

    /// The session's writer to the cluster's session store, if it has one.
    fn store_link(&mut self) -> Option<&crate::stored::StoreLink> {
        if self.store.is_none() && self.journal_inc != 0 {
            // Brought back from the journal, and copied to its shard again
            // since (see `Journal::relink`).
            self.store = self
                .ctx
                .broker
                .journal
                .as_ref()
                .and_then(|j| j.linked(self.journal_inc));
            if let Some(l) = &self.store {
                l.on_fenced(fenced_here(&self.me));
            }
        }
        self.store.as_ref()
    }

    /// The session ends for good here (it expired, or was kicked): its
    /// copy in the cluster's session store goes too.
    fn store_release(&mut self) {
        self.store_link();
        if let Some(s) = self.store.take() {
            s.release();
        }
    }

    /// Whether the cluster's session store still has this node as the
    /// session's holder: false once a write was refused because another
    /// node took it (while this one was cut off or stopped). A store
    /// without quorum, or slower than [`HELD_CHECK`], cannot say: the
    /// session is taken as held (the resume must answer well within the
    /// connect's patience, or the connect starts a second life of it).
    async fn store_held(&mut self) -> bool {
        let Some(link) = self.store_link() else {
            return true;
        };
        // A writer that stopped was fenced before (and this session told),
        // or released its copy.
        !matches!(
            tokio::time::timeout(HELD_CHECK, link.write(Vec::new())).await,
            Ok(Ok(Err(crate::peers::StoreError::Fenced { .. })))
        )
    }

    /// Writes the session's record to the cluster's session store, if it
    /// has one and is persistent; the answer says when it is committed.
    fn store_sync(
        &mut self,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), crate::peers::StoreError>>> {
        self.store_link()?;
        if self.ch.session_expiry == 0 {
            // Not persistent (any more): no copy must outlive it.
            if let Some(s) = self.store.take() {
                s.release();
            }
            return None;
        }
        let rec = self.journal_record();
        let put = crate::journal::store_record_op(&rec)?;
        let holder = crate::journal::store_holder_op(&self.ctx.node);
        self.store.as_ref().map(|s| s.write(vec![put, holder]))
    }

    fn durable_failed(&self, e: &crate::durable::DurableError) {
        tracing::error!(client_id = %self.ch.client_id, "session state not on disk: {e}");
        self.ctx.alarm_activate(
            DURABLE_ALARM,
            serde_json::json!({ "error": e.to_string() }),
            format!("the durable store cannot be written: {e}"),
        );
    }

    fn journal_record(&self) -> crate::journal::SessionRecord {
        let ch = &self.ch;
        crate::journal::SessionRecord {
            client_id: ch.client_id.to_string(),
            incarnation: self.journal_inc,
            proto_level: ch.conn.version.level(),
            keep_alive: ch.conn.keepalive,
            username: ch.conn.username.clone(),
            session_expiry: ch.session_expiry,
            created_at_ms: ch.created_at_ms,
            subscriptions: ch
                .subscriptions
                .iter()
                .map(|(f, (o, id))| (f.clone(), *o, *id))
                .collect(),
            disconnected_at_ms: if self.conn.is_some() {
                None
            } else {
                Some(ch.conn.disconnected_at_ms.unwrap_or_else(now_ms))
            },
            counters: (
                ch.counters.delivered,
                ch.counters.enqueued,
                ch.counters.dropped,
            ),
            will: ch.conn.will.as_deref().cloned(),
        }
    }

    /// Removes from the journal the deliveries that left the session, and
    /// writes what changed of its outgoing QoS 2 packet ids (the write the
    /// next flush waits for when new ones go out).
    fn journal_done(&mut self) {
        if self.ch.journal_done.is_empty() && self.ch.journal_pids.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.ch.journal_done);
        let pids = std::mem::take(&mut self.ch.journal_pids);
        if let Some(j) = &self.ctx.broker.journal {
            if let Some(t) = j.update(self.journal_inc, &keys, &pids) {
                self.sent_write = Some(t);
            }
        }
    }

    /// The session ends: it leaves the journal with what it held (what
    /// waits in its inbox too). A session parked at a clean stop stays:
    /// the parked copy replaces the journal in one commit.
    fn journal_end(&mut self) {
        self.journal_done();
        if self.parked {
            return;
        }
        let Some(j) = self.ctx.broker.journal.clone() else {
            return;
        };
        self.inbox.set_journal(0);
        let mut left = Vec::new();
        let b = self.ctx.broker.inbox_bounds();
        self.inbox.take(usize::MAX, &mut left, b, usize::MAX);
        let mut held = self.ch.journal_held();
        held.extend(left.iter().map(|i| i.2).filter(|k| *k != 0));
        if self.journal_inc != 0 {
            j.forget(self.journal_inc, &held);
            self.journal_inc = 0;
        } else {
            j.release(0, &held);
        }
    }

    /// Before the channel takes `p`: for a journaled session, a QoS 2
    /// PUBLISH (its packet id, and whether it was already awaiting
    /// release) or a PUBREL (its packet id).
    fn qos2_probe(&self, p: &Packet) -> Option<(u16, bool, bool)> {
        if self.journal_inc == 0 {
            return None;
        }
        match p {
            Packet::Publish(x) if x.qos == QoS::ExactlyOnce => {
                let pid = x.packet_id?;
                Some((pid, true, self.ch.awaiting_rel.contains_key(&pid)))
            }
            Packet::PubRel(a) => Some((a.packet_id, false, true)),
            _ => None,
        }
    }

    /// After the channel took the packet [`SessionState::qos2_probe`]
    /// looked at: a QoS 2 id newly awaiting release is written (the
    /// PUBREC waits for it, so a resend after a crash is still known); a
    /// released one is removed (the PUBCOMP waits for it, so the client
    /// cannot use the id again before the node forgets it).
    fn qos2_journal(&self, probe: Option<(u16, bool, bool)>) -> Option<crate::durable::Ticket> {
        let (pid, publish, was) = probe?;
        let j = self.ctx.broker.journal.as_ref()?;
        let now = self.ch.awaiting_rel.contains_key(&pid);
        if publish && !was && now {
            return j.rel_add(self.journal_inc, pid);
        }
        if !publish && !now {
            return j.rel_del(self.journal_inc, pid);
        }
        None
    }

    /// A new connection of this client id replaces the session.
    fn discard(&mut self, myself: &ActorRef<SessionMsg>) {
        inc(&self.ctx.broker.metrics.session_discarded);
        self.send_disconnect(
            reason::SESSION_TAKEN_OVER,
            "session discarded by a new connection",
        );
        self.end(myself, true);
    }

    fn end(&mut self, myself: &ActorRef<SessionMsg>, publish_will: bool) {
        self.ending = true;
        let was_connected = self.conn.is_some();
        self.flush();
        if let Some(c) = self.conn.take() {
            self.close_out(&c);
        }
        if was_connected {
            self.ch.detach(clock::now());
            inc(&self.ctx.broker.metrics.client_disconnected);
            Stats::add(&self.ctx.broker.stats.connections, None, -1);
            let ctx = self.ctx.clone();
            ctx.sys_client_event(&self.ch, None, false, "kicked");
        }
        if publish_will {
            self.publish_will();
        }
        self.stop(myself);
    }

    fn will_delay(&self) -> u32 {
        self.ch
            .conn
            .will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval)
            .unwrap_or(0)
    }

    fn publish_will(&mut self) {
        let Some(w) = self.ch.take_will(clock::now()) else {
            return;
        };
        let w = *w;
        let p = Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic,
            packet_id: None,
            properties: w.properties,
            payload: w.payload,
        };
        let mut m = Message::from_publish(self.ch.client_id.clone(), p, now_ms());
        if let Some(v) = m.properties.values_mut() {
            v.will_delay_interval = None;
        }
        self.ctx.broker.publish(m);
        if self.journal_inc != 0 {
            // Published once: a crash now must not bring it back.
            drop(self.journal_sync());
        }
    }

    fn info(&self) -> ClientInfo {
        let ch = &self.ch;
        let mut subscriptions: Vec<(String, SubscriptionOptions)> = ch
            .subscriptions
            .iter()
            .map(|(f, (o, _))| (f.clone(), *o))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        ClientInfo {
            client_id: ch.client_id.to_string(),
            username: ch.conn.username.clone(),
            peer: self.conn.as_ref().map(|c| c.peer.to_string()),
            proto_ver: ch.conn.version.level(),
            clean_start: ch.conn.clean_start,
            keepalive: ch.conn.keepalive,
            session_expiry: ch.session_expiry,
            subscriptions,
            inflight: ch.inflight.len(),
            awaiting_rel: ch.awaiting_rel.len(),
            mqueue_len: ch.mqueue.len(),
            delivered: ch.counters.delivered,
            enqueued: ch.counters.enqueued,
            dropped: ch.counters.dropped,
            connected: self.conn.is_some(),
            created_at: ch.created_at_ms,
            connected_at: ch.conn.connected_at_ms,
            disconnected_at: ch.conn.disconnected_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    /// ractor boxes every message it carries, so every delivery to a
    /// session allocates and copies a whole `SessionMsg`: large payloads
    /// (a CONNECT, a decoded packet) stay behind their own box.
    /// Every session actor keeps its message loop's future resident, and
    /// that future is sized for the largest `handle`: the rare, large
    /// awaits (broker calls) must stay behind their own box.
    #[test]
    fn handle_future_stays_small() {
        use super::*;
        fn ret_size<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = ret_size(<SessionActor as Actor>::handle);
        // 520 once the state became optional (a dormant session has
        // none); an idle session keeps no actor at all now.
        assert!(
            size <= 544,
            "the session handle future grew to {size} bytes"
        );
    }

    /// Every session, asleep or not, keeps its state in one allocation:
    /// at most 1 KB, jemalloc's size class below 1.25 KB.
    #[test]
    fn session_state_stays_within_1_kb() {
        let size = std::mem::size_of::<super::SessionState>();
        assert!(size <= 1024, "SessionState grew to {size} bytes");
    }

    #[test]
    fn session_messages_stay_small() {
        let size = std::mem::size_of::<super::SessionMsg>();
        assert!(size <= 128, "SessionMsg grew to {size} bytes");
    }
}
