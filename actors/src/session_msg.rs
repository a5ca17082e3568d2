//! What a session actor is told, and what it answers: the contract
//! between the session and everyone who talks to it (its connection task,
//! the client registry, the inbox, `ctl`). Its own file, so they need not
//! import the session itself.

use crate::broker::BrokerError;
use crate::inbox::Wake;
use crate::outbox::ConnHandle;
use crate::peers::HandedOver;
use emqx_mqtt::channel::SessionSnapshot;
use emqx_mqtt::codec::DecodeError;
use emqx_mqtt::packet::{Connect, Packet, SubscriptionOptions};
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An inbox wakes its session with one `Drain` (an actor without a
/// handle: tests and tools).
impl Wake for ActorRef<SessionMsg> {
    fn wake(&self) -> bool {
        self.cast(SessionMsg::Drain).is_ok()
    }

    fn id(&self) -> u64 {
        self.get_id().pid()
    }
}

/// An inbox wakes its session with one `Drain`, bringing it back if it
/// was dormant.
impl Wake for SessionHandle {
    fn wake(&self) -> bool {
        self.cast(SessionMsg::Drain).is_ok()
    }

    fn id(&self) -> u64 {
        self.0.id
    }
}

/// The state of a session whose actor went away while it was idle (EMQX
/// hibernates an idle connection process): kept as it was, and brought
/// back into a new actor by the next message for it.
pub trait Dormant: Send {
    /// Spawns the session's actor again with this state; it takes what
    /// waits for it from `handle` ([`SessionHandle::go_live`]).
    fn wake(self: Box<Self>, handle: SessionHandle);
    /// What `ctl clients` shows, answered without waking the session.
    fn info(&self) -> ClientInfo;
}

enum Slot {
    /// The actor runs; `sent`: messages handed to it since it started.
    Live(ActorRef<SessionMsg>, u64),
    /// The actor is being started: messages wait here, in order, and it
    /// takes them before anything else.
    Waking(Vec<SessionMsg>),
    Dormant(Box<dyn Dormant>),
    Gone,
}

struct Cell {
    /// Stable for the session's whole life, whatever actor runs it.
    id: u64,
    slot: parking_lot::Mutex<Slot>,
    /// Messages sent to the session, ever: the hibernation sweep sees
    /// from it whether the session was left alone for a whole round.
    activity: AtomicU64,
    /// `activity` at the sweep before.
    seen: AtomicU64,
}

/// The session is gone: it ended, and nothing reaches it any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session is gone")]
pub struct SessionGone;

/// How everyone reaches a session (its connection task, its inbox, the
/// client registry, timers, `ctl`): stable while its actor comes and goes.
/// A message for a dormant session starts its actor again first; messages
/// keep their order across that.
#[derive(Clone)]
pub struct SessionHandle(Arc<Cell>);

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionHandle({})", self.0.id)
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

impl Default for SessionHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionHandle {
    /// A handle for a session about to start: messages wait until its
    /// actor takes them ([`SessionHandle::go_live`]).
    pub fn new() -> SessionHandle {
        SessionHandle(Arc::new(Cell {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            slot: parking_lot::Mutex::new(Slot::Waking(Vec::new())),
            activity: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Sends `msg`; a dormant session is started again to take it (and
    /// `Info` is answered from the dormant state).
    pub fn cast(&self, msg: SessionMsg) -> Result<(), SessionGone> {
        self.0.activity.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.0.slot.lock();
        match &mut *slot {
            Slot::Live(a, sent) => match a.cast(msg) {
                Ok(()) => {
                    *sent += 1;
                    Ok(())
                }
                Err(_) => {
                    *slot = Slot::Gone;
                    Err(SessionGone)
                }
            },
            // Asleep already, or waking for something else.
            Slot::Waking(_) | Slot::Dormant(_) if matches!(msg, SessionMsg::Hibernate) => Ok(()),
            Slot::Waking(q) => {
                q.push(msg);
                Ok(())
            }
            Slot::Dormant(d) => {
                let msg = match msg {
                    SessionMsg::Info(reply) => {
                        let _ = reply.send(d.info());
                        return Ok(());
                    }
                    m => m,
                };
                let Slot::Dormant(d) = std::mem::replace(&mut *slot, Slot::Waking(vec![msg]))
                else {
                    return Ok(());
                };
                drop(slot);
                d.wake(self.clone());
                Ok(())
            }
            Slot::Gone => Err(SessionGone),
        }
    }

    /// Sends the message `f` makes and waits for its answer; `None` if
    /// the session is gone or did not answer within `timeout`.
    pub async fn call<T>(
        &self,
        f: impl FnOnce(RpcReplyPort<T>) -> SessionMsg,
        timeout: Duration,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cast(f(RpcReplyPort::from(tx))).ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Sends what `f` makes after `d` (a timer that outlives the actor
    /// running now: it wakes a dormant session).
    pub fn send_after(&self, d: Duration, f: impl FnOnce() -> SessionMsg + Send + 'static) {
        let h = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = h.cast(f());
        });
    }

    /// The actor `a` runs the session from now: returns what waited for
    /// it, to be taken before its mailbox.
    pub fn go_live(&self, a: ActorRef<SessionMsg>) -> Vec<SessionMsg> {
        let mut slot = self.0.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Live(a, 0)) {
            Slot::Waking(q) => q,
            _ => Vec::new(),
        }
    }

    /// The actor running the session goes away, leaving the state `take`
    /// gives, if it has taken every message sent to it (`handled` of
    /// them); otherwise nothing happens and it goes on. Says which.
    pub fn go_dormant(
        &self,
        handled: u64,
        take: impl FnOnce() -> Option<Box<dyn Dormant>>,
    ) -> bool {
        let mut slot = self.0.slot.lock();
        match &*slot {
            Slot::Live(_, sent) if *sent == handled => match take() {
                Some(d) => {
                    *slot = Slot::Dormant(d);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// A session made without an actor (brought back from disk) goes to
    /// sleep at once with `state`; if messages came for it meanwhile, it
    /// is woken for them instead.
    pub fn sleep_now(&self, state: Box<dyn Dormant>) {
        let mut slot = self.0.slot.lock();
        match &*slot {
            Slot::Waking(q) if q.is_empty() => *slot = Slot::Dormant(state),
            Slot::Waking(_) => {
                drop(slot);
                state.wake(self.clone());
            }
            // Nothing else can be: the session had no actor yet.
            _ => {}
        }
    }

    /// The session ended: nothing reaches it any more.
    pub fn gone(&self) {
        *self.0.slot.lock() = Slot::Gone;
    }

    pub fn is_gone(&self) -> bool {
        match &*self.0.slot.lock() {
            Slot::Gone => true,
            Slot::Live(a, _) => matches!(a.get_status(), ractor::ActorStatus::Stopped),
            _ => false,
        }
    }

    pub fn is_dormant(&self) -> bool {
        matches!(&*self.0.slot.lock(), Slot::Dormant(_))
    }

    /// Waits (up to a second) until the session has ended.
    pub async fn wait_gone(&self) {
        for _ in 0..100 {
            if self.is_gone() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// For the hibernation sweep: whether the session's actor runs and
    /// nothing was sent to it since the sweep before.
    pub fn idle_since_last_sweep(&self) -> bool {
        let now = self.0.activity.load(Ordering::Relaxed);
        let before = self.0.seen.swap(now, Ordering::Relaxed);
        now == before && matches!(&*self.0.slot.lock(), Slot::Live(..))
    }
}

/// Why a connection ended, as seen by its connection task.
#[derive(Debug, Clone)]
pub enum CloseCause {
    /// EOF or reset from the client.
    Closed,
    SocketError,
    SendTimeout,
    KeepaliveTimeout,
    Decode(DecodeError),
}

/// What `ctl clients` shows of a session.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub peer: Option<String>,
    pub proto_ver: u8,
    pub clean_start: bool,
    pub keepalive: u16,
    pub session_expiry: u32,
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    pub inflight: usize,
    pub awaiting_rel: usize,
    pub mqueue_len: usize,
    pub delivered: u64,
    pub enqueued: u64,
    pub dropped: u64,
    pub connected: bool,
    pub created_at: u64,
    pub connected_at: u64,
    pub disconnected_at: Option<u64>,
}

/// A parked session, and the write of its last record to the cluster's
/// session store (see [`SessionMsg::Park`]).
pub type ParkedSession = (
    Box<Parked>,
    Option<tokio::sync::oneshot::Receiver<Result<(), crate::peers::StoreError>>>,
);

/// A persistent session kept on disk while its node is stopped: what a
/// new CONNECT does not bring back (the client's limits come with it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    pub client_id: String,
    /// The protocol level (3, 4, 5).
    pub proto_level: u8,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// Seconds; `u32::MAX` never expires.
    pub session_expiry: u32,
    /// Wall-clock ms when the node stopped: the expiry runs from there.
    pub parked_at_ms: u64,
    pub snapshot: SessionSnapshot,
}

impl Parked {
    /// Seconds left at wall-clock `now_ms`; `None` once expired.
    pub fn remaining(&self, now_ms: u64) -> Option<u32> {
        if self.session_expiry == u32::MAX {
            return Some(u32::MAX);
        }
        let gone = now_ms.saturating_sub(self.parked_at_ms) / 1000;
        let left = u64::from(self.session_expiry).saturating_sub(gone);
        (left > 0).then_some(left as u32)
    }

    /// A CONNECT that brings the session back offline (what its client
    /// sends when it returns replaces it).
    pub fn connect(&self) -> Connect {
        let protocol = match self.proto_level {
            3 => emqx_mqtt::packet::ProtocolVersion::V3,
            4 => emqx_mqtt::packet::ProtocolVersion::V4,
            _ => emqx_mqtt::packet::ProtocolVersion::V5,
        };
        Connect {
            protocol,
            protocol_name: if self.proto_level == 3 {
                "MQIsdp"
            } else {
                "MQTT"
            }
            .to_string(),
            clean_start: false,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will: None,
            username: self.username.clone(),
            password: None,
            properties: Default::default(),
        }
    }
}

/// The outcome of a write that replies wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed.
    Yes,
    /// Not written (the local store failed): its publish is refused.
    Failed,
    /// The cluster's session store had no quorum in time (the outcome is
    /// unknown): the connection closes with 0x89, and its client sends
    /// again.
    Unavailable,
}

impl Written {
    pub fn of(r: &Result<(), crate::durable::DurableError>) -> Written {
        match r {
            Ok(()) => Written::Yes,
            Err(crate::durable::DurableError::Unavailable(_)) => Written::Unavailable,
            Err(_) => Written::Failed,
        }
    }
}

#[derive(RactorMessage)]
pub enum SessionMsg {
    /// Deliveries wait in the session's inbox: take them.
    Drain,
    /// The packets connection `u64` decoded from one read, in order (at
    /// most `MAX_INBOUND`): one actor message for all of them. Behind a
    /// pointer, as is the CONNECT of `Resume`: ractor boxes every message,
    /// and the size of the largest variant is what every message
    /// allocates and copies.
    Inbound(u64, Vec<Packet>),
    /// Connection `u64` ended.
    ConnClosed(u64, CloseCause),
    /// A new connection resumes this session (clean_start = false); replies
    /// `true` once the CONNACK was queued, `false` if this session ends with
    /// its connection (session expiry 0) and is gone instead: the new
    /// connection starts a new session.
    Resume(Box<Connect>, ConnHandle, RpcReplyPort<bool>),
    /// Another connection with clean_start = true replaces this session.
    Discard(RpcReplyPort<()>),
    /// `ctl clients kick`: end the connection and the session.
    Kick(RpcReplyPort<()>),
    /// The node closes every connection and keeps the sessions (the
    /// autoheal restart): DISCONNECT 0x8B Server shutting down on v5, then
    /// as when the network drops the client: the will per its delay, and a
    /// session with an expiry stays for it.
    Shutdown(RpcReplyPort<()>),
    /// The client resumed its session on another node: hand over the state
    /// and stop; `None` if this session ends with its connection (session
    /// expiry 0): there is nothing to hand over and it is gone.
    TakeoverOut(RpcReplyPort<Option<HandedOver>>),
    /// The node stops: close the connection (DISCONNECT 0x8B on v5),
    /// take what waits in the inbox into the queue, publish a will still
    /// pending, and hand over the session to be kept on disk; `None` for a
    /// session that ends with its connection (it ends).
    /// With a cluster session store, the write of the session's last
    /// record there (connection gone, will published) comes along: the
    /// node waits for it before it exits, lest a node that takes the
    /// session while this one is stopped publish the will again.
    Park(RpcReplyPort<Option<ParkedSession>>),
    Info(RpcReplyPort<ClientInfo>),
    /// `ctl subscriptions add`, the API's subscribe on the client's behalf.
    AddSub(
        String,
        SubscriptionOptions,
        RpcReplyPort<Result<(), BrokerError>>,
    ),
    /// `ctl subscriptions del`, the API's unsubscribe; `true` if it was
    /// subscribed.
    DelSub(String, RpcReplyPort<bool>),
    /// The write of held reply number `u64` is done: release the replies
    /// held up to it.
    Committed(u64, Written),
    /// Periodic retry / await-rel check.
    Tick,
    /// Session expiry timer of connection generation `u64`.
    Expire(u64),
    /// Delayed will of connection generation `u64`.
    Will(u64),
    /// The credentials of connection generation `u64` expired (a JWT's
    /// `exp` with `disconnect_after_expire`).
    AuthExpired(u64),
    /// The node is past its memory watermark: drop the queued messages.
    Shed,
    /// The cluster's session store refused a write of this session: another
    /// node holds it now, and this copy is stale.
    Fenced,
    /// The will this session's client left when its node died, to be
    /// published after `u32` seconds unless the client is back: held
    /// until the cluster's session store said this node still holds the
    /// session (after a crash, another node may have taken it, and its
    /// will, meanwhile).
    SetWill(Box<emqx_mqtt::packet::LastWill>, u32),
    /// Nothing was sent to the session for a while (`mqtt.idle_timeout`):
    /// if it has nothing in progress, its actor goes away and its state
    /// waits in its handle until the next message.
    Hibernate,
    /// What the other nodes held for the node this session was taken
    /// from (gone), in the order each sent it; `None`: no answer in time.
    Gathered(Option<Vec<emqx_mqtt::message::Message>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};

    /// An actor that takes what waited in its handle, then its mailbox,
    /// and records the `Will(n)` numbers in the order it took them.
    struct Recorder;

    type Seen = Arc<parking_lot::Mutex<Vec<u64>>>;

    impl Actor for Recorder {
        type Msg = SessionMsg;
        type State = Seen;
        type Arguments = (SessionHandle, Seen);

        async fn pre_start(
            &self,
            myself: ActorRef<SessionMsg>,
            (h, seen): (SessionHandle, Seen),
        ) -> Result<Seen, ActorProcessingErr> {
            for m in h.go_live(myself) {
                if let SessionMsg::Will(n) = m {
                    seen.lock().push(n);
                }
            }
            Ok(seen)
        }

        async fn handle(
            &self,
            _me: ActorRef<SessionMsg>,
            m: SessionMsg,
            seen: &mut Seen,
        ) -> Result<(), ActorProcessingErr> {
            if let SessionMsg::Will(n) = m {
                seen.lock().push(n);
            }
            Ok(())
        }
    }

    /// A dormant state: waking it starts a recorder.
    struct Asleep(Seen);

    impl Dormant for Asleep {
        fn wake(self: Box<Self>, handle: SessionHandle) {
            tokio::spawn(async move {
                let _ = Actor::spawn(None, Recorder, (handle, self.0)).await;
            });
        }

        fn info(&self) -> ClientInfo {
            ClientInfo {
                client_id: "asleep".into(),
                username: None,
                peer: None,
                proto_ver: 4,
                clean_start: false,
                keepalive: 0,
                session_expiry: 0,
                subscriptions: Vec::new(),
                inflight: 0,
                awaiting_rel: 0,
                mqueue_len: 0,
                delivered: 0,
                enqueued: 0,
                dropped: 0,
                connected: false,
                created_at: 0,
                connected_at: 0,
                disconnected_at: None,
            }
        }
    }

    async fn until(f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not met in 1 s");
    }

    #[tokio::test]
    async fn messages_keep_their_order_across_start_sleep_and_wake() {
        let h = SessionHandle::new();
        let seen: Seen = Default::default();
        // Sent before the actor runs: they wait, and come first.
        h.cast(SessionMsg::Will(1)).expect("waiting");
        h.cast(SessionMsg::Will(2)).expect("waiting");
        let (a, _) = Actor::spawn(None, Recorder, (h.clone(), seen.clone()))
            .await
            .expect("spawn");
        h.cast(SessionMsg::Will(3)).expect("live");
        until(|| seen.lock().len() == 3).await;
        assert_eq!(*seen.lock(), vec![1, 2, 3]);

        // It may sleep only once it took all 1 message sent to the actor.
        assert!(!h.go_dormant(0, || Some(Box::new(Asleep(seen.clone())))));
        assert!(h.go_dormant(1, || Some(Box::new(Asleep(seen.clone())))));
        assert!(h.is_dormant());
        a.stop(None);

        // Listing answers from the dormant state, and wakes nothing.
        let info = h
            .call(SessionMsg::Info, Duration::from_secs(1))
            .await
            .expect("info while dormant");
        assert_eq!(info.client_id, "asleep");
        assert!(h.is_dormant());
        // A hibernation request to a dormant session is dropped.
        h.cast(SessionMsg::Hibernate).expect("dropped");
        assert!(h.is_dormant());

        // The next message wakes it; those sent while it wakes follow it.
        for n in 4..=20 {
            h.cast(SessionMsg::Will(n)).expect("wakes");
        }
        until(|| seen.lock().len() == 20).await;
        assert_eq!(*seen.lock(), (1..=20).collect::<Vec<u64>>());
        assert!(!h.is_dormant());

        h.gone();
        assert_eq!(h.cast(SessionMsg::Will(21)), Err(SessionGone));
        assert!(h.is_gone());
    }

    #[test]
    fn the_sweep_sees_a_session_idle_only_after_a_whole_round_without_messages() {
        let h = SessionHandle::new();
        // Not live: never a candidate.
        assert!(!h.idle_since_last_sweep());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let seen: Seen = Default::default();
            let (_a, _) = Actor::spawn(None, Recorder, (h.clone(), seen))
                .await
                .expect("spawn");
            assert!(
                h.idle_since_last_sweep(),
                "nothing sent since the last round"
            );
            h.cast(SessionMsg::Will(1)).expect("live");
            assert!(!h.idle_since_last_sweep(), "a message since the last round");
            assert!(h.idle_since_last_sweep(), "a whole round without one");
        });
    }
}
