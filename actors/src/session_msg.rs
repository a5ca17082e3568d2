//! What a session actor is told, and what it answers: the contract
//! between the session and everyone who talks to it (its connection task,
//! the client registry, the inbox, `ctl`). Its own file, so they need not
//! import the session itself.

use crate::broker::BrokerError;
use crate::inbox::Wake;
use crate::outbox::ConnHandle;
use emqx_mqtt::channel::SessionSnapshot;
use emqx_mqtt::codec::DecodeError;
use emqx_mqtt::packet::{Connect, Packet, SubscriptionOptions};
use ractor::{ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

/// An inbox wakes its session with one `Drain`.
impl Wake for ActorRef<SessionMsg> {
    fn wake(&self) -> bool {
        self.cast(SessionMsg::Drain).is_ok()
    }

    fn id(&self) -> ractor::ActorId {
        self.get_id()
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

#[derive(RactorMessage)]
pub enum SessionMsg {
    /// Deliveries wait in the session's inbox: take them.
    Drain,
    /// A packet read by connection `u64`. Boxed, as is the CONNECT of
    /// `Resume`: ractor boxes every message, and the size of the largest
    /// variant is what every delivery allocates and copies.
    Inbound(u64, Box<Packet>),
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
    TakeoverOut(RpcReplyPort<Option<SessionSnapshot>>),
    /// The node stops: close the connection (DISCONNECT 0x8B on v5),
    /// take what waits in the inbox into the queue, publish a will still
    /// pending, and hand over the session to be kept on disk; `None` for a
    /// session that ends with its connection (it ends).
    Park(RpcReplyPort<Option<Box<Parked>>>),
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
    /// The write of held reply number `u64` is on disk (`true`) or failed
    /// (`false`: its publish is refused): release the replies held up to
    /// it.
    Committed(u64, bool),
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
}
