//! The MQTT channel: protocol rules and session state of one client, as a
//! plain struct (EMQX's emqx_channel + emqx_session_mem).
//!
//! It never touches a socket or an actor. Inputs are decoded packets,
//! deliveries from the broker and clock ticks; outputs are [`Action`]s
//! (packets to send, a close) and calls on a [`PublishSink`] for messages
//! going into the broker. The session actor wraps it and does the I/O, so
//! every rule here is tested directly and fast.

use crate::acl::{AclAction, AuthInfo, ClientInfo, Permission, Request};
use crate::authz::{AuthzCache, DenyAction};
use crate::codec;
use crate::delivery::Delivery;
use crate::message::Message;
use crate::packet::*;
use crate::settings::MqttSettings;
use crate::time::Now;
use crate::topic;
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where inbound application messages go: the broker in production, a
/// recorder in tests. Returns the number of subscribers reached.
pub trait PublishSink {
    fn publish(&mut self, msg: Message) -> usize;
}

/// What the session actor must do after a step of the channel.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Encode and write this packet.
    Send(Packet),
    /// Apply these subscriptions in the broker, then call
    /// [`Channel::subscribed`] with the outcomes.
    Subscribe {
        packet_id: u16,
        requests: Vec<SubRequest>,
    },
    /// Remove these subscriptions in the broker (UNSUBACK already produced).
    Unsubscribe(Vec<String>),
    /// Close the connection; on v5 send DISCONNECT with this reason first.
    Close { reason: Option<u8>, why: String },
}

/// One filter of a SUBSCRIBE, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRequest {
    pub filter: String,
    pub opts: SubscriptionOptions,
    pub sub_id: Option<u32>,
    /// `Some(code)` when the filter is refused before reaching the broker.
    pub refused: Option<u8>,
}

/// An outgoing QoS 1/2 message not yet fully acknowledged.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Release,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub state: InflightState,
    pub sent_at: Instant,
    /// Insertion order, for resending in the order first sent.
    pub seq: u64,
    /// A release ([`InflightState::Release`]) the durable journal holds:
    /// its PUBCOMP is reported ([`JournalPid::Completed`]).
    pub journaled: bool,
}

/// What the durable journal must learn of the packet ids of journaled
/// outgoing QoS 2 messages ([`Delivery::journal`] != 0), so that a node
/// that dies resends each one with the packet id the client saw
/// (exactly once needs it: a client knows a message again only by its
/// packet id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalPid {
    /// Delivery `key` is about to go out as packet `pid`: its PUBLISH must
    /// not leave before this is on disk.
    Sent { key: u64, pid: u16 },
    /// The client has delivery `key` (PUBREC): it leaves the queue, and
    /// the release of `pid` is owed.
    Received { key: u64, pid: u16 },
    /// The client completed release `pid` (PUBCOMP).
    Completed(u16),
}

/// Counters shown by `ctl clients list`.
#[derive(Debug, Clone, Default)]
pub struct ChannelCounters {
    pub delivered: u64,
    pub enqueued: u64,
    pub dropped: u64,
    pub dropped_expired: u64,
    pub dropped_too_large: u64,
    /// Dropped because the message queue was full (the oldest goes).
    pub dropped_queue_full: u64,
    /// QoS 0 dropped: offline without `mqueue_store_qos0`, or socket backed up.
    pub dropped_qos0: u64,
    /// PUBLISHes from the client refused as not authorized (`$SYS/...`).
    pub publish_refused: u64,
    /// Of `dropped_queue_full`, those dropped because the queue and the
    /// inflight window held `max_held_bytes` (see [`Channel::held_bytes`]).
    pub dropped_over_bytes: u64,
}

/// What belongs to the client's current (or, once it is gone, last)
/// network connection: what its CONNECT said and what is negotiated per
/// connection. [`Channel::attach`] replaces it whole; the session state
/// beside it in [`Channel`] is kept (EMQX's emqx_channel against
/// emqx_session).
#[derive(Debug)]
pub struct ConnState {
    pub version: ProtocolVersion,
    pub username: Option<String>,
    pub clean_start: bool,
    /// The keepalive in force (ours when `server_keepalive` is set).
    pub keepalive: u16,
    /// Boxed: a `LastWill` is about 400 bytes and most sessions have none.
    pub will: Option<Box<LastWill>>,
    pub connected: bool,
    /// Limits the client announced in CONNECT.
    client_receive_max: u16,
    client_max_packet: Option<u32>,
    client_topic_alias_max: u16,
    request_problem_info: bool,
    /// The listener's mount point rendered for this client: prefixed to
    /// the topics it publishes and the filters it subscribes, removed from
    /// the topics delivered to it.
    mountpoint: Option<String>,
    /// Topic aliases the client set for its PUBLISHes to us.
    in_aliases: HashMap<u16, String>,
    /// Topic aliases we set for PUBLISHes to the client.
    out_aliases: HashMap<Arc<str>, u16>,
    pub connected_at_ms: u64,
    pub disconnected_at_ms: Option<u64>,
    /// The client's address and its TLS certificate's common name, as
    /// authorization rules see them (see [`Channel::set_peer`]).
    pub peer: Option<IpAddr>,
    pub cert_cn: Option<String>,
    /// What authentication said: a superuser may do everything; rules of
    /// the client's own come before the node's sources.
    pub auth: AuthInfo,
    /// Authorization decisions of this connection.
    authz_cache: AuthzCache,
}

impl ConnState {
    fn from_connect(c: &Connect, settings: &MqttSettings, now: Now) -> ConnState {
        ConnState {
            version: c.protocol,
            username: c.username.clone(),
            clean_start: c.clean_start,
            keepalive: effective_keepalive(c, settings),
            will: c.will.clone().map(Box::new),
            connected: true,
            client_receive_max: c.properties.receive_maximum.unwrap_or(u16::MAX),
            client_max_packet: c.properties.maximum_packet_size,
            client_topic_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
            request_problem_info: c.properties.request_problem_information != Some(0),
            mountpoint: None,
            in_aliases: HashMap::new(),
            out_aliases: HashMap::new(),
            connected_at_ms: now.wall_ms,
            disconnected_at_ms: None,
            peer: None,
            cert_cn: None,
            auth: AuthInfo::default(),
            authz_cache: AuthzCache::default(),
        }
    }
}

/// One client's protocol and session state.
pub struct Channel {
    settings: Arc<MqttSettings>,
    pub client_id: Arc<str>,
    /// The connection's side.
    pub conn: ConnState,
    /// Seconds the session outlives its connection (0 = ends with it).
    pub session_expiry: u32,
    pub subscriptions: HashMap<String, (SubscriptionOptions, Option<u32>)>,
    pub inflight: HashMap<u16, Inflight>,
    inflight_seq: u64,
    pub mqueue: VecDeque<Delivery>,
    /// Bytes of the messages in `mqueue` (topic and payload).
    mqueue_bytes: usize,
    /// QoS 0 messages in `mqueue`: a full queue looks for one to drop
    /// only when there is one.
    mqueue_qos0: usize,
    /// Bytes of the messages in `inflight` (those still being published).
    inflight_bytes: usize,
    /// QoS 2 packet ids received and not yet released (exactly-once).
    pub awaiting_rel: HashMap<u16, Instant>,
    next_pid: u16,
    pub counters: ChannelCounters,
    pub created_at_ms: u64,
    /// Journal keys ([`Delivery::journal`]) of the deliveries that left
    /// the session since the caller last took them: acknowledged by the
    /// client (PUBACK, PUBREC), dropped or expired. The session actor
    /// removes them from the durable journal.
    pub journal_done: Vec<u64>,
    /// Packet ids of journaled QoS 2 deliveries, in order, since the
    /// caller last took them (see [`JournalPid`]).
    pub journal_pids: Vec<JournalPid>,
}

/// A persistent session's state in transit between nodes (takeover).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionSnapshot {
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
    /// In the order first sent.
    pub inflight: Vec<(u16, InflightState)>,
    pub mqueue: Vec<Delivery>,
    pub awaiting_rel: Vec<u16>,
    pub next_pid: u16,
    pub created_at_ms: u64,
    /// delivered, enqueued, dropped.
    pub counters: (u64, u64, u64),
}

/// Checks a CONNECT before any session is looked up. On failure returns
/// the CONNACK reason code to refuse with.
pub fn check_connect(c: &Connect, s: &MqttSettings) -> Result<(), (u8, String)> {
    if c.client_id.len() > s.max_clientid_len {
        return Err((
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            format!("client id longer than {}", s.max_clientid_len),
        ));
    }
    if c.client_id.is_empty() && c.protocol != ProtocolVersion::V5 && !c.clean_start {
        // MQTT 3.1.1 3.1.3-8: an empty id needs clean session.
        return Err((
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "empty client id with clean_session = false".into(),
        ));
    }
    if c.client_id.is_empty() && c.protocol == ProtocolVersion::V3 {
        return Err((
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "empty client id on MQTT 3.1".into(),
        ));
    }
    if let Some(w) = &c.will {
        if topic::validate_topic_name(&w.topic, s.max_topic_levels).is_err() {
            return Err((reason::TOPIC_NAME_INVALID, "invalid will topic".into()));
        }
        if w.qos > s.max_qos_allowed {
            return Err((reason::QOS_NOT_SUPPORTED, "will QoS above maximum".into()));
        }
        if w.retain && !s.retain_available {
            return Err((reason::RETAIN_NOT_SUPPORTED, "retained will refused".into()));
        }
        if topic::is_broker_topic(&w.topic) {
            return Err((reason::NOT_AUTHORIZED, "will topic under $SYS".into()));
        }
        if let Some(rt) = &w.properties.response_topic {
            if topic::validate_topic_name(rt, usize::MAX).is_err() {
                return Err((reason::PROTOCOL_ERROR, "invalid will response topic".into()));
            }
        }
    }
    if c.properties.receive_maximum == Some(0) {
        return Err((reason::PROTOCOL_ERROR, "receive maximum 0".into()));
    }
    if c.properties.maximum_packet_size == Some(0) {
        return Err((reason::PROTOCOL_ERROR, "maximum packet size 0".into()));
    }
    if c.properties.authentication_method.is_some() {
        return Err((
            reason::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not supported".into(),
        ));
    }
    Ok(())
}

/// The keepalive the server enforces for a CONNECT.
pub fn effective_keepalive(c: &Connect, s: &MqttSettings) -> u16 {
    match (c.protocol, s.server_keepalive) {
        (ProtocolVersion::V5, Some(k)) => k,
        _ => c.keep_alive,
    }
}

/// How long a connection may be silent: keepalive times the multiplier
/// (MQTT says one and a half times); `None` when keepalive is off.
pub fn keepalive_timeout(keepalive: u16, s: &MqttSettings) -> Option<Duration> {
    if keepalive == 0 {
        None
    } else {
        Some(Duration::from_secs_f64(
            f64::from(keepalive) * s.keepalive_multiplier,
        ))
    }
}

/// Session expiry a CONNECT asks for, in seconds.
pub fn requested_expiry(c: &Connect, s: &MqttSettings) -> u32 {
    match c.protocol {
        ProtocolVersion::V5 => c.properties.session_expiry_interval.unwrap_or(0),
        _ if c.clean_start => 0,
        _ => s.session_expiry_interval.as_secs().min(u64::from(u32::MAX)) as u32,
    }
}

impl Channel {
    /// The session state that moves to another node when a client with a
    /// persistent session reconnects there: subscriptions, the inflight
    /// window (in send order), the queue and the QoS 2 ids awaiting PUBREL.
    pub fn snapshot(&self) -> SessionSnapshot {
        let mut inflight: Vec<(u64, u16, InflightState)> = self
            .inflight
            .iter()
            .map(|(pid, f)| (f.seq, *pid, f.state.clone()))
            .collect();
        inflight.sort_by_key(|(seq, _, _)| *seq);
        SessionSnapshot {
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, (o, id))| (f.clone(), *o, *id))
                .collect(),
            inflight: inflight.into_iter().map(|(_, p, s)| (p, s)).collect(),
            mqueue: self.mqueue.iter().cloned().collect(),
            awaiting_rel: self.awaiting_rel.keys().copied().collect(),
            next_pid: self.next_pid,
            created_at_ms: self.created_at_ms,
            counters: (
                self.counters.delivered,
                self.counters.enqueued,
                self.counters.dropped,
            ),
        }
    }

    /// A session resumed from another node's snapshot, attached to `c`.
    pub fn restore(
        settings: Arc<MqttSettings>,
        c: &Connect,
        client_id: Arc<str>,
        snap: SessionSnapshot,
        now: Now,
    ) -> Channel {
        let mut ch = Channel::new(settings, c, client_id, now);
        let now = now.mono;
        ch.subscriptions = snap
            .subscriptions
            .into_iter()
            .map(|(f, o, id)| (f, (o, id)))
            .collect();
        for (pid, state) in snap.inflight {
            ch.inflight_seq += 1;
            let seq = ch.inflight_seq;
            ch.inflight_put(
                pid,
                Inflight {
                    state,
                    sent_at: now,
                    seq,
                    journaled: false,
                },
            );
        }
        ch.mqueue = snap.mqueue.into();
        ch.mqueue_bytes = ch.mqueue.iter().map(|d| d.msg.size()).sum();
        ch.mqueue_qos0 = ch
            .mqueue
            .iter()
            .filter(|d| d.qos == QoS::AtMostOnce)
            .count();
        ch.awaiting_rel = snap.awaiting_rel.into_iter().map(|p| (p, now)).collect();
        ch.next_pid = snap.next_pid.max(1);
        ch.created_at_ms = snap.created_at_ms;
        ch.counters.delivered = snap.counters.0;
        ch.counters.enqueued = snap.counters.1;
        ch.counters.dropped = snap.counters.2;
        ch
    }

    /// A fresh session for an accepted CONNECT (`client_id` already assigned).
    pub fn new(settings: Arc<MqttSettings>, c: &Connect, client_id: Arc<str>, now: Now) -> Channel {
        Channel {
            client_id,
            conn: ConnState::from_connect(c, &settings, now),
            session_expiry: requested_expiry(c, &settings),
            subscriptions: HashMap::new(),
            inflight: HashMap::new(),
            inflight_seq: 0,
            mqueue: VecDeque::new(),
            mqueue_bytes: 0,
            mqueue_qos0: 0,
            inflight_bytes: 0,
            awaiting_rel: HashMap::new(),
            next_pid: 1,
            counters: ChannelCounters::default(),
            created_at_ms: now.wall_ms,
            journal_done: Vec::new(),
            journal_pids: Vec::new(),
            settings,
        }
    }

    pub fn settings(&self) -> &MqttSettings {
        &self.settings
    }

    /// Binds the session to a (new) connection's CONNECT: the per-connection
    /// state is reset, the session state is kept.
    pub fn attach(&mut self, c: &Connect, now: Now) {
        self.conn = ConnState::from_connect(c, &self.settings, now);
        self.session_expiry = requested_expiry(c, &self.settings);
    }

    /// Sets the mount point of the listener the client connected through
    /// (call after [`Channel::new`], [`Channel::restore`] or
    /// [`Channel::attach`]); the will, already taken from the CONNECT, is
    /// mounted too.
    pub fn set_mountpoint(&mut self, template: Option<&str>) {
        self.conn.mountpoint = template
            .filter(|t| !t.is_empty())
            .map(|t| topic::render_mountpoint(t, &self.client_id, self.conn.username.as_deref()));
        if let (Some(mp), Some(w)) = (&self.conn.mountpoint, self.conn.will.as_mut()) {
            w.topic = topic::mount(mp, &w.topic);
        }
    }

    /// Sets the client's address, its certificate's common name and
    /// what authentication said about it (call with
    /// [`Channel::set_mountpoint`]): authorization rules by address and
    /// `${cert_common_name}` use them, a superuser skips authorization and
    /// the client's own rules come first.
    pub fn set_peer(&mut self, peer: Option<IpAddr>, cert_cn: Option<String>, auth: AuthInfo) {
        self.conn.peer = peer;
        self.conn.cert_cn = cert_cn;
        self.conn.auth = auth;
        self.conn.authz_cache.clear();
    }

    /// Whether authorization lets this client do `action` on `topic` (as
    /// the client names it, without the mount point).
    fn permitted(
        &mut self,
        action: AclAction,
        topic: &str,
        qos: QoS,
        retain: bool,
        now: Now,
    ) -> bool {
        if self.needs_no_check() {
            return true;
        }
        let auth = &self.conn.auth;
        if auth.acl_expire_ms.is_some_and(|exp| now.wall_ms > exp) {
            return false;
        }
        let r = Request {
            action,
            topic,
            qos: qos as u8,
            retain,
        };
        let ConnState {
            authz_cache,
            username,
            peer,
            cert_cn,
            auth,
            ..
        } = &mut self.conn;
        let client = || ClientInfo {
            client_id: self.client_id.to_string(),
            username: username.clone(),
            peer: *peer,
            cert_cn: cert_cn.clone(),
        };
        authz_cache.check_with(
            &self.settings.authz,
            auth.acl.as_deref(),
            client,
            &r,
            now.mono,
        ) == Permission::Allow
    }

    /// A superuser, or a node that allows everything to a client without
    /// rules of its own: nothing to check.
    fn needs_no_check(&self) -> bool {
        self.conn.auth.superuser
            || (self.settings.authz.allows_everything() && self.conn.auth.acl.is_none())
    }

    /// Whether the client may receive a message on `topic` (mounted, as
    /// the broker has it): its retained messages are checked one by one,
    /// as a subscription to the topic itself.
    pub fn may_receive(&mut self, topic: &str, qos: QoS, now: Now) -> bool {
        if self.needs_no_check() {
            return true;
        }
        let t = self.unmounted(topic);
        self.permitted(AclAction::Subscribe, t, qos, false, now)
    }

    /// Takes the will to publish it; `None` when there is none or the
    /// client may not publish it (checked now, when it is sent, as EMQX
    /// does).
    pub fn take_will(&mut self, now: Now) -> Option<Box<LastWill>> {
        let w = self.conn.will.take()?;
        let t = self.unmounted(&w.topic);
        if self.permitted(AclAction::Publish, t, w.qos, w.retain, now) {
            Some(w)
        } else {
            self.counters.publish_refused += 1;
            None
        }
    }

    /// The topic as the client knows it.
    fn unmounted<'a>(&self, topic: &'a str) -> &'a str {
        match &self.conn.mountpoint {
            Some(mp) => topic::unmount(mp, topic),
            None => topic,
        }
    }

    /// The CONNACK for this connection.
    pub fn connack(&self, c: &Connect, session_present: bool, assigned: bool) -> ConnAck {
        let mut p = Properties::default();
        if self.conn.version == ProtocolVersion::V5 {
            let s = &self.settings;
            if assigned {
                p.assigned_client_identifier = Some(self.client_id.to_string());
            }
            if let Some(k) = s.server_keepalive {
                p.server_keep_alive = Some(k);
            }
            if let Some(max) = s.max_awaiting_rel {
                p.receive_maximum = Some(max.clamp(1, 65535) as u16);
            }
            if s.max_qos_allowed < QoS::ExactlyOnce {
                p.maximum_qos = Some(s.max_qos_allowed as u8);
            }
            if !s.retain_available {
                p.retain_available = Some(0);
            }
            p.maximum_packet_size = Some(s.max_packet_size as u32);
            p.topic_alias_maximum = Some(s.max_topic_alias);
            if !s.wildcard_subscription {
                p.wildcard_subscription_available = Some(0);
            }
            if !s.shared_subscription {
                p.shared_subscription_available = Some(0);
            }
            p.subscription_identifiers_available = Some(1);
            if c.properties.request_response_information == Some(1)
                && !s.response_information.is_empty()
            {
                p.response_information = Some(s.response_information.clone());
            }
        }
        ConnAck {
            session_present,
            reason_code: reason::SUCCESS,
            properties: p,
        }
    }

    /// Called when the connection goes away (the session may live on).
    pub fn detach(&mut self, now: Now) {
        self.conn.connected = false;
        self.conn.disconnected_at_ms = Some(now.wall_ms);
        self.conn.in_aliases.clear();
        self.conn.out_aliases.clear();
    }

    fn is_v5(&self) -> bool {
        self.conn.version == ProtocolVersion::V5
    }

    fn close(&self, reason: u8, why: impl Into<String>) -> Action {
        Action::Close {
            reason: Some(reason),
            why: why.into(),
        }
    }

    fn ack(&self, code: u8) -> u8 {
        if self.is_v5() {
            code
        } else {
            0
        }
    }

    fn reason_props(&self, why: &str) -> Properties {
        let mut p = Properties::default();
        if self.is_v5() && self.conn.request_problem_info {
            p.reason_string = Some(why.to_string());
        }
        p
    }

    /// Handles one packet from the client.
    pub fn handle(&mut self, pkt: Packet, now: Now, sink: &mut dyn PublishSink) -> Vec<Action> {
        match pkt {
            Packet::Connect(_) => vec![self.close(reason::PROTOCOL_ERROR, "second CONNECT")],
            Packet::Publish(p) => self.handle_publish(p, now, sink),
            Packet::PubAck(a) => self.handle_puback(a.packet_id, now),
            Packet::PubRec(a) => self.handle_pubrec(a, now),
            Packet::PubRel(a) => self.handle_pubrel(a.packet_id),
            Packet::PubComp(a) => self.handle_pubcomp(a.packet_id, now),
            Packet::Subscribe(s) => self.handle_subscribe(s, now),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(u),
            Packet::PingReq => vec![Action::Send(Packet::PingResp)],
            Packet::Disconnect(d) => self.handle_disconnect(d),
            Packet::Auth(_) => vec![self.close(
                reason::PROTOCOL_ERROR,
                "AUTH without enhanced authentication",
            )],
            other => vec![self.close(
                reason::PROTOCOL_ERROR,
                format!("{} is not sent by clients", other.kind()),
            )],
        }
    }

    fn handle_disconnect(&mut self, d: Disconnect) -> Vec<Action> {
        if self.is_v5() {
            if let Some(exp) = d.properties.session_expiry_interval {
                if self.session_expiry == 0 && exp != 0 {
                    // MQTT 5.0 3.14.2.2.2: cannot go from 0 to non-zero.
                    return vec![self.close(
                        reason::PROTOCOL_ERROR,
                        "session expiry raised from 0 in DISCONNECT",
                    )];
                }
                self.session_expiry = exp;
            }
        }
        if d.reason_code != reason::DISCONNECT_WITH_WILL {
            // Normal disconnect: the will is discarded (MQTT 3.1.2.5 / 3.14.4).
            self.conn.will = None;
        }
        vec![Action::Close {
            reason: None,
            why: "client disconnected".into(),
        }]
    }

    fn handle_publish(
        &mut self,
        mut p: Publish,
        now: Now,
        sink: &mut dyn PublishSink,
    ) -> Vec<Action> {
        let s = self.settings.clone();
        // Topic alias (v5): resolve before anything looks at the topic.
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > s.max_topic_alias {
                return vec![self.close(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias} out of range"),
                )];
            }
            if p.topic.is_empty() {
                match self.conn.in_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return vec![self.close(
                            reason::PROTOCOL_ERROR,
                            format!("unknown topic alias {alias}"),
                        )]
                    }
                }
            } else {
                self.conn.in_aliases.insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return vec![self.close(reason::PROTOCOL_ERROR, "empty topic without a topic alias")];
        }
        if let Err(e) = topic::validate_topic_name(&p.topic, s.max_topic_levels) {
            return vec![self.close(
                reason::TOPIC_NAME_INVALID,
                format!("invalid topic name {:?}: {e:?}", p.topic),
            )];
        }
        if let Some(rt) = &p.properties.response_topic {
            // MQTT-3.3.2-13/14: a topic name, so no wildcards.
            if topic::validate_topic_name(rt, usize::MAX).is_err() {
                return vec![self.close(
                    reason::PROTOCOL_ERROR,
                    format!("invalid response topic {rt:?}"),
                )];
            }
        }
        if p.qos > s.max_qos_allowed {
            return vec![self.close(
                reason::QOS_NOT_SUPPORTED,
                format!("QoS {} above maximum", p.qos as u8),
            )];
        }
        if p.retain && !s.retain_available {
            return vec![self.close(reason::RETAIN_NOT_SUPPORTED, "retain is not available")];
        }
        let bad_payload = p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err();
        let pid = p.packet_id.unwrap_or(0);
        if topic::is_broker_topic(&p.topic) {
            // The broker's own topics: clients read them, only the broker
            // writes them (as EMQX's default authorization has it).
            return self.refuse_publish(&p, now);
        }
        if !self.permitted(AclAction::Publish, &p.topic, p.qos, p.retain, now) {
            if s.authz.deny_action == DenyAction::Disconnect {
                self.counters.publish_refused += 1;
                return vec![self.close(
                    reason::NOT_AUTHORIZED,
                    format!("not authorized to publish to {:?}", p.topic),
                )];
            }
            return self.refuse_publish(&p, now);
        }
        if let Some(mp) = &self.conn.mountpoint {
            p.topic = topic::mount(mp, &p.topic);
        }
        match p.qos {
            QoS::AtMostOnce => {
                if !bad_payload {
                    sink.publish(self.to_message(p, now));
                }
                vec![]
            }
            QoS::AtLeastOnce => {
                let code = if bad_payload {
                    reason::PAYLOAD_FORMAT_INVALID
                } else if sink.publish(self.to_message(p, now)) == 0 {
                    reason::NO_MATCHING_SUBSCRIBERS
                } else {
                    reason::SUCCESS
                };
                vec![Action::Send(Packet::PubAck(PubAckLike::new(
                    pid,
                    self.ack(code),
                )))]
            }
            QoS::ExactlyOnce => {
                if self.awaiting_rel.contains_key(&pid) {
                    // A resend of a message we already took: exactly once.
                    return vec![Action::Send(Packet::PubRec(PubAckLike::new(pid, 0)))];
                }
                if let Some(max) = s.max_awaiting_rel {
                    if self.awaiting_rel.len() >= max {
                        return vec![self.close(
                            reason::RECEIVE_MAXIMUM_EXCEEDED,
                            format!("more than {max} QoS 2 messages awaiting PUBREL"),
                        )];
                    }
                }
                if bad_payload {
                    return vec![Action::Send(Packet::PubRec(PubAckLike::new(
                        pid,
                        self.ack(reason::PAYLOAD_FORMAT_INVALID),
                    )))];
                }
                let n = sink.publish(self.to_message(p, now));
                self.awaiting_rel.insert(pid, now.mono);
                let code = if n == 0 {
                    reason::NO_MATCHING_SUBSCRIBERS
                } else {
                    0
                };
                vec![Action::Send(Packet::PubRec(PubAckLike::new(
                    pid,
                    self.ack(code),
                )))]
            }
        }
    }

    /// A PUBLISH the client is not allowed to make: QoS 0 dropped, QoS 1/2
    /// acknowledged with 0x87 Not authorized on MQTT 5 and with a plain
    /// acknowledgement on 3.x (which has no way to say no); the message is
    /// never published. A QoS 2 refusal keeps no awaiting-rel entry (a
    /// PUBREC with an error code ends the exchange).
    fn refuse_publish(&mut self, p: &Publish, now: Now) -> Vec<Action> {
        self.counters.publish_refused += 1;
        let pid = p.packet_id.unwrap_or(0);
        let code = self.ack(reason::NOT_AUTHORIZED);
        match p.qos {
            QoS::AtMostOnce => vec![],
            QoS::AtLeastOnce => vec![Action::Send(Packet::PubAck(PubAckLike::new(pid, code)))],
            QoS::ExactlyOnce => {
                if !self.is_v5() {
                    // 3.x: the client goes on with PUBREL and expects PUBCOMP.
                    self.awaiting_rel.insert(pid, now.mono);
                }
                vec![Action::Send(Packet::PubRec(PubAckLike::new(pid, code)))]
            }
        }
    }

    fn to_message(&self, p: Publish, now: Now) -> Message {
        let mut m = Message::from_publish(self.client_id.clone(), p, now.wall_ms);
        if let Some(max) = self.settings.message_expiry_interval {
            let max = max.as_secs().min(u64::from(u32::MAX)) as u32;
            m.expiry_secs = Some(m.expiry_secs.map_or(max, |e| e.min(max)));
        }
        m
    }

    fn handle_pubrel(&mut self, pid: u16) -> Vec<Action> {
        let code = if self.awaiting_rel.remove(&pid).is_some() {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        vec![Action::Send(Packet::PubComp(PubAckLike::new(
            pid,
            self.ack(code),
        )))]
    }

    fn handle_puback(&mut self, pid: u16, now: Now) -> Vec<Action> {
        match self.inflight.get(&pid) {
            Some(Inflight {
                state: InflightState::Publish(d),
                ..
            }) if d.qos == QoS::AtLeastOnce => {
                self.inflight_take(pid);
                self.counters.delivered += 1;
                self.drain(now)
            }
            _ => vec![],
        }
    }

    fn handle_pubrec(&mut self, a: PubAckLike, now: Now) -> Vec<Action> {
        let pid = a.packet_id;
        match self.inflight.get_mut(&pid) {
            Some(f) => match &f.state {
                InflightState::Publish(d) if d.qos == QoS::ExactlyOnce => {
                    if a.reason_code >= 0x80 {
                        // The client refused it: the exchange ends here.
                        self.inflight_take(pid);
                        return self.drain(now);
                    }
                    self.inflight_bytes = self.inflight_bytes.saturating_sub(d.msg.size());
                    // The client has the message: only the release is left.
                    let journal = d.journal;
                    f.state = InflightState::Release;
                    f.sent_at = now.mono;
                    if journal != 0 {
                        f.journaled = true;
                        self.journal_pids
                            .push(JournalPid::Received { key: journal, pid });
                    }
                    vec![Action::Send(Packet::PubRel(PubAckLike::new(pid, 0)))]
                }
                InflightState::Release => {
                    vec![Action::Send(Packet::PubRel(PubAckLike::new(pid, 0)))]
                }
                _ => vec![],
            },
            None => vec![Action::Send(Packet::PubRel(PubAckLike::new(
                pid,
                self.ack(reason::PACKET_IDENTIFIER_NOT_FOUND),
            )))],
        }
    }

    fn handle_pubcomp(&mut self, pid: u16, now: Now) -> Vec<Action> {
        if let Some(Inflight {
            state: InflightState::Release,
            journaled,
            ..
        }) = self.inflight.get(&pid)
        {
            if *journaled {
                self.journal_pids.push(JournalPid::Completed(pid));
            }
            self.inflight_take(pid);
            self.counters.delivered += 1;
            return self.drain(now);
        }
        vec![]
    }

    fn handle_subscribe(&mut self, s: Subscribe, now: Now) -> Vec<Action> {
        let st = self.settings.clone();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut requests = Vec::with_capacity(s.filters.len());
        let mut added: Vec<String> = Vec::new();
        for (filter, mut opts) in s.filters {
            let mut refused = None;
            let filter_mounted = match &self.conn.mountpoint {
                Some(mp) => topic::mount(mp, &filter),
                None => filter.clone(),
            };
            let shared = topic::parse_shared(&filter);
            if topic::validate_topic_filter(&filter, st.max_topic_levels).is_err()
                || shared.is_err()
            {
                refused = Some(reason::TOPIC_FILTER_INVALID);
            } else if !st.wildcard_subscription && topic::is_wildcard(&filter) {
                refused = Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
            } else if matches!(shared, Ok(Some(_))) {
                if !st.shared_subscription {
                    refused = Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
                } else if opts.no_local && self.is_v5() {
                    // MQTT 5.0 3.8.3.1: no local on a shared subscription is a protocol error.
                    return vec![
                        self.close(reason::PROTOCOL_ERROR, "no local on a shared subscription")
                    ];
                }
            }
            if refused.is_none() {
                // Rules see the filter as the client wrote it; of a shared
                // subscription, the filter without `$share/<group>/`.
                let real = match &shared {
                    Ok(Some((_, inner))) => inner,
                    _ => filter.as_str(),
                };
                if !self.permitted(AclAction::Subscribe, real, opts.qos, false, now) {
                    refused = Some(reason::NOT_AUTHORIZED);
                }
            }
            if refused.is_none() {
                if let Some(max) = st.max_subscriptions {
                    let known = self.subscriptions.contains_key(&filter_mounted)
                        || added.contains(&filter_mounted);
                    if !known {
                        if self.subscriptions.len() + added.len() >= max {
                            refused = Some(reason::QUOTA_EXCEEDED);
                        } else {
                            added.push(filter_mounted.clone());
                        }
                    }
                }
            }
            opts.qos = opts.qos.min(st.max_qos_allowed);
            requests.push(SubRequest {
                filter: filter_mounted,
                opts,
                sub_id,
                refused,
            });
        }
        vec![Action::Subscribe {
            packet_id: s.packet_id,
            requests,
        }]
    }

    /// Completes a SUBSCRIBE after the broker applied it. `outcomes` has one
    /// entry per request: `Some(is_new)` when it was applied, `None` when
    /// refused. Returns the SUBACK and the filters whose retained messages
    /// must now be sent (per the retain handling option).
    pub fn subscribed(
        &mut self,
        packet_id: u16,
        requests: &[SubRequest],
        outcomes: &[Option<bool>],
    ) -> (Packet, Vec<(String, SubscriptionOptions, Option<u32>)>) {
        let mut codes = Vec::with_capacity(requests.len());
        let mut retained = Vec::new();
        for (r, o) in requests.iter().zip(outcomes) {
            match (r.refused, o) {
                (None, Some(is_new)) => {
                    self.subscriptions
                        .insert(r.filter.clone(), (r.opts, r.sub_id));
                    codes.push(r.opts.qos as u8);
                    let shared = matches!(topic::parse_shared(&r.filter), Ok(Some(_)));
                    let send = match r.opts.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => *is_new,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for shared subscriptions (MQTT 5.0 4.8.2).
                    if send && !shared {
                        retained.push((r.filter.clone(), r.opts, r.sub_id));
                    }
                }
                (Some(code), _) => codes.push(code),
                (None, None) => codes.push(reason::UNSPECIFIED_ERROR),
            }
        }
        let ack = Packet::SubAck(SubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        });
        (ack, retained)
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe) -> Vec<Action> {
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for f in u.filters {
            let mounted = match &self.conn.mountpoint {
                Some(mp) => topic::mount(mp, &f),
                None => f.clone(),
            };
            if self.subscriptions.remove(&mounted).is_some() {
                codes.push(reason::SUCCESS);
                removed.push(mounted);
            } else if topic::validate_topic_filter(&f, self.settings.max_topic_levels).is_err() {
                codes.push(reason::TOPIC_FILTER_INVALID);
            } else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        if !self.is_v5() {
            codes.clear();
        }
        vec![
            Action::Unsubscribe(removed),
            Action::Send(Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            })),
        ]
    }

    /// Accepts a message from the broker: sends it now, queues it, or drops it.
    /// `can_send_qos0` is false while the socket is backed up.
    pub fn deliver(&mut self, d: Delivery, now: Now, can_send_qos0: bool) -> Vec<Action> {
        let now_wall = now.wall_ms;
        if d.msg.is_expired(now_wall) {
            self.counters.dropped += 1;
            self.counters.dropped_expired += 1;
            self.gone(&d);
            return vec![];
        }
        if !self.conn.connected {
            if d.qos == QoS::AtMostOnce && !self.settings.mqueue_store_qos0 {
                self.counters.dropped += 1;
                self.counters.dropped_qos0 += 1;
                self.gone(&d);
                return vec![];
            }
            self.enqueue(d);
            return vec![];
        }
        if d.qos == QoS::AtMostOnce {
            if !can_send_qos0 {
                self.counters.dropped += 1;
                self.counters.dropped_qos0 += 1;
                self.gone(&d);
                return vec![];
            }
            return self
                .send_publish(d, None, now_wall, true)
                .into_iter()
                .collect();
        }
        if self.inflight_full() || !self.mqueue.is_empty() {
            self.enqueue(d);
            return vec![];
        }
        self.send_inflight(d, now).into_iter().collect()
    }

    /// The fast path of [`Channel::deliver`] for the bulk of fan-out: a QoS
    /// 0 message with nothing per client in it (no subscription
    /// identifiers, properties, expiry or topic alias) to a connected
    /// client, encoded straight into `out`. Returns whether it was written
    /// (false: dropped and counted, as `deliver` would), or gives the
    /// delivery back when it does not qualify.
    pub fn deliver_plain(
        &mut self,
        d: Delivery,
        can_send_qos0: bool,
        out: &mut BytesMut,
    ) -> Result<bool, Delivery> {
        let v5 = self.is_v5();
        if !self.conn.connected
            || d.qos != QoS::AtMostOnce
            || !d.sub_ids.is_empty()
            || d.msg.expiry_secs.is_some()
            || (v5 && (self.conn.client_topic_alias_max > 0 || !d.msg.properties.is_empty()))
        {
            return Err(d);
        }
        if !can_send_qos0 {
            self.counters.dropped += 1;
            self.counters.dropped_qos0 += 1;
            return Ok(false);
        }
        let topic = self.unmounted(&d.msg.topic);
        if let Some(max) = self.conn.client_max_packet {
            if codec::plain_qos0_len(topic, &d.msg.payload, v5) > max as usize {
                self.counters.dropped += 1;
                self.counters.dropped_too_large += 1;
                return Ok(false);
            }
        }
        codec::encode_plain_qos0(topic, &d.msg.payload, d.retain, v5, out);
        self.counters.delivered += 1;
        Ok(true)
    }

    /// Connected, with the inflight window full and messages queued behind
    /// it: more deliveries now would only grow the queue (and then drop
    /// from it), so they had better wait where publishers can see them.
    pub fn backed_up(&self) -> bool {
        self.conn.connected && !self.mqueue.is_empty() && self.inflight_full()
    }

    fn inflight_full(&self) -> bool {
        let window = self.settings.max_inflight.min(self.conn.client_receive_max) as usize;
        self.inflight.len() >= window.max(1)
    }

    fn enqueue(&mut self, d: Delivery) {
        let size = d.msg.size();
        let max_len = self.settings.max_mqueue_len.unwrap_or(usize::MAX);
        let max_bytes = self.settings.max_held_bytes.unwrap_or(usize::MAX);
        if max_len == 0 {
            self.counters.dropped += 1;
            self.counters.dropped_queue_full += 1;
            self.gone(&d);
            return;
        }
        let inflight = self.inflight_bytes;
        if inflight + size > max_bytes {
            // Never fits, whatever is dropped from the queue.
            self.counters.dropped += 1;
            self.counters.dropped_queue_full += 1;
            self.counters.dropped_over_bytes += 1;
            self.gone(&d);
            return;
        }
        while self.mqueue.len() >= max_len || inflight + self.mqueue_bytes + size > max_bytes {
            let by_bytes = self.mqueue.len() < max_len;
            // Full: a QoS 0 message goes first, then the oldest.
            if !self.drop_one_for(&d) {
                // The newcomer is the QoS 0 message to drop.
                self.counters.dropped += 1;
                self.counters.dropped_queue_full += 1;
                self.counters.dropped_over_bytes += u64::from(by_bytes);
                self.gone(&d);
                return;
            }
            self.counters.dropped += 1;
            self.counters.dropped_queue_full += 1;
            self.counters.dropped_over_bytes += u64::from(by_bytes);
        }
        self.counters.enqueued += 1;
        self.mqueue_bytes += size;
        self.mqueue_qos0 += usize::from(d.qos == QoS::AtMostOnce);
        self.mqueue.push_back(d);
    }

    /// Makes room in a full queue for `new`: drops the oldest QoS 0
    /// message, or when there is none the oldest message (true); or, when
    /// `new` is itself QoS 0 and nothing queued is, says to drop `new`
    /// (false). EMQX's policy: QoS 0 first, then the oldest.
    fn drop_one_for(&mut self, new: &Delivery) -> bool {
        let qos0 = if self.mqueue_qos0 > 0 {
            self.mqueue.iter().position(|q| q.qos == QoS::AtMostOnce)
        } else {
            None
        };
        match qos0 {
            Some(i) => {
                if let Some(q) = self.mqueue.remove(i) {
                    self.mqueue_bytes = self.mqueue_bytes.saturating_sub(q.msg.size());
                    self.mqueue_qos0 = self.mqueue_qos0.saturating_sub(1);
                    self.gone(&q);
                }
                true
            }
            None if new.qos == QoS::AtMostOnce => false,
            None => match self.mqueue_pop() {
                Some(q) => {
                    self.gone(&q);
                    true
                }
                None => false,
            },
        }
    }

    fn mqueue_pop(&mut self) -> Option<Delivery> {
        let d = self.mqueue.pop_front()?;
        self.mqueue_bytes = self.mqueue_bytes.saturating_sub(d.msg.size());
        self.mqueue_qos0 = self
            .mqueue_qos0
            .saturating_sub(usize::from(d.qos == QoS::AtMostOnce));
        if self.mqueue.is_empty() {
            self.mqueue_bytes = 0;
            self.mqueue_qos0 = 0;
        }
        Some(d)
    }

    /// Bytes (topic and payload) an inflight entry holds.
    fn entry_bytes(f: &Inflight) -> usize {
        match &f.state {
            InflightState::Publish(d) => d.msg.size(),
            InflightState::Release => 0,
        }
    }

    fn inflight_put(&mut self, pid: u16, f: Inflight) {
        self.inflight_bytes += Self::entry_bytes(&f);
        if let Some(old) = self.inflight.insert(pid, f) {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(Self::entry_bytes(&old));
        }
    }

    fn inflight_take(&mut self, pid: u16) -> Option<Inflight> {
        let f = self.inflight.remove(&pid)?;
        self.inflight_bytes = self.inflight_bytes.saturating_sub(Self::entry_bytes(&f));
        if let InflightState::Publish(d) = &f.state {
            self.gone(d);
        }
        Some(f)
    }

    /// `d` leaves the session (sent and acknowledged, dropped, expired):
    /// its journal entry, if any, can go.
    fn gone(&mut self, d: &Delivery) {
        if d.journal != 0 {
            self.journal_done.push(d.journal);
        }
    }

    /// Journal keys of every delivery the session still holds (inflight
    /// and queued), for a session that ends.
    pub fn journal_held(&self) -> Vec<u64> {
        let inflight = self.inflight.values().filter_map(|f| match &f.state {
            InflightState::Publish(d) if d.journal != 0 => Some(d.journal),
            _ => None,
        });
        let queued = self
            .mqueue
            .iter()
            .filter(|d| d.journal != 0)
            .map(|d| d.journal);
        inflight.chain(queued).collect()
    }

    /// The session leaves the durable journal: nothing it holds is
    /// journaled any more, and nothing is reported for it.
    pub fn leave_journal(&mut self) {
        for f in self.inflight.values_mut() {
            f.journaled = false;
            if let InflightState::Publish(d) = &mut f.state {
                d.journal = 0;
            }
        }
        for d in self.mqueue.iter_mut() {
            d.journal = 0;
        }
        self.journal_done.clear();
        self.journal_pids.clear();
    }

    /// What a session that joins the durable journal holds and the journal
    /// does not have yet: the inflight window in the order first sent
    /// (each entry with its packet id; a publish with its delivery, a
    /// release with none, now counted as journaled), then the queue.
    /// Entries that have journal keys already are left out.
    pub fn to_journal(&mut self) -> (Vec<(u16, Option<&mut Delivery>)>, Vec<&mut Delivery>) {
        let mut inflight: Vec<(u64, u16, Option<&mut Delivery>)> = Vec::new();
        for (pid, f) in self.inflight.iter_mut() {
            match &mut f.state {
                InflightState::Publish(d) if d.journal == 0 => {
                    inflight.push((f.seq, *pid, Some(d)));
                }
                InflightState::Release if !f.journaled => {
                    f.journaled = true;
                    inflight.push((f.seq, *pid, None));
                }
                _ => {}
            }
        }
        inflight.sort_by_key(|(seq, _, _)| *seq);
        let queued = self.mqueue.iter_mut().filter(|d| d.journal == 0).collect();
        (
            inflight.into_iter().map(|(_, p, d)| (p, d)).collect(),
            queued,
        )
    }

    /// Bytes that can still be taken in before the queue and the inflight
    /// window hold `max_held_bytes`.
    pub fn room_bytes(&self) -> usize {
        match self.settings.max_held_bytes {
            Some(max) => max.saturating_sub(self.held_bytes()),
            None => usize::MAX,
        }
    }

    /// Bytes of the queued messages (not those in flight).
    pub fn queued_bytes(&self) -> usize {
        self.mqueue_bytes
    }

    /// Drops every queued message (the node is overloaded); returns how
    /// many, counted as dropped for a full queue.
    pub fn shed_queue(&mut self) -> usize {
        let n = self.mqueue.len();
        for d in std::mem::take(&mut self.mqueue) {
            self.gone(&d);
        }
        self.mqueue_bytes = 0;
        self.mqueue_qos0 = 0;
        self.counters.dropped += n as u64;
        self.counters.dropped_queue_full += n as u64;
        n
    }

    /// Bytes of the messages this session holds for its client: queued and
    /// in its inflight window (what `max_held_bytes` bounds).
    pub fn held_bytes(&self) -> usize {
        self.mqueue_bytes + self.inflight_bytes
    }

    fn alloc_pid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let pid = self.next_pid;
            self.next_pid = if self.next_pid == u16::MAX {
                1
            } else {
                self.next_pid + 1
            };
            if !self.inflight.contains_key(&pid) {
                return Some(pid);
            }
        }
        None
    }

    fn send_inflight(&mut self, d: Delivery, now: Now) -> Option<Action> {
        let now_wall = now.wall_ms;
        let Some(pid) = self.alloc_pid() else {
            self.gone(&d);
            return None;
        };
        let Some(action) = self.send_publish(d.clone(), Some(pid), now_wall, true) else {
            self.gone(&d);
            return None;
        };
        self.inflight_seq += 1;
        let seq = self.inflight_seq;
        if d.journal != 0 && d.qos == QoS::ExactlyOnce {
            self.journal_pids.push(JournalPid::Sent {
                key: d.journal,
                pid,
            });
        }
        self.inflight_put(
            pid,
            Inflight {
                state: InflightState::Publish(d),
                sent_at: now.mono,
                seq,
                journaled: false,
            },
        );
        Some(action)
    }

    /// Builds the PUBLISH for a delivery; `None` when it cannot be sent
    /// (larger than the client's maximum packet size: dropped, 3.1.2-24).
    fn send_publish(
        &mut self,
        d: Delivery,
        pid: Option<u16>,
        now_wall: u64,
        use_alias: bool,
    ) -> Option<Action> {
        let mut props = Properties::default();
        let mut new_alias = None;
        let mut topic = self.unmounted(&d.msg.topic).to_string();
        if self.is_v5() {
            // Set only what is there: a message without properties
            // delivered without one allocates none.
            props = d.msg.properties.clone();
            let expiry = d.msg.remaining_expiry(now_wall);
            if expiry.is_some() || props.message_expiry_interval.is_some() {
                props.message_expiry_interval = expiry;
            }
            if !d.sub_ids.is_empty() || !props.subscription_identifiers.is_empty() {
                props.subscription_identifiers = d.sub_ids.clone();
            }
            if use_alias && self.conn.client_topic_alias_max > 0 {
                if let Some(a) = self.conn.out_aliases.get(&d.msg.topic) {
                    props.topic_alias = Some(*a);
                    topic.clear();
                } else if self.conn.out_aliases.len() < self.conn.client_topic_alias_max as usize {
                    new_alias = Some(self.conn.out_aliases.len() as u16 + 1);
                    props.topic_alias = new_alias;
                }
            }
        }
        let p = Packet::Publish(Publish {
            dup: false,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id: pid,
            properties: props,
            payload: d.msg.payload.clone(),
        });
        if let Some(max) = self.conn.client_max_packet {
            if codec::encoded_len(&p, self.conn.version) > max as usize {
                self.counters.dropped += 1;
                self.counters.dropped_too_large += 1;
                if pid.is_none() {
                    // (An inflight one goes when the caller takes it.)
                    self.gone(&d);
                }
                return None;
            }
        }
        if let Some(a) = new_alias {
            self.conn.out_aliases.insert(d.msg.topic.clone(), a);
        }
        if pid.is_none() {
            self.counters.delivered += 1;
        }
        Some(Action::Send(p))
    }

    /// Moves queued messages into the inflight window while there is room.
    pub fn drain(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.conn.connected {
            return out;
        }
        let now_wall = now.wall_ms;
        while let Some(d) = self.mqueue.front() {
            if d.msg.is_expired(now_wall) {
                if let Some(d) = self.mqueue_pop() {
                    self.gone(&d);
                }
                self.counters.dropped += 1;
                self.counters.dropped_expired += 1;
                continue;
            }
            if d.qos != QoS::AtMostOnce && self.inflight_full() {
                break;
            }
            let Some(d) = self.mqueue_pop() else {
                break;
            };
            let a = if d.qos == QoS::AtMostOnce {
                self.send_publish(d, None, now_wall, true)
            } else {
                self.send_inflight(d, now)
            };
            out.extend(a);
        }
        out
    }

    /// After a reconnect to an existing session: resend the inflight window
    /// in order (PUBLISH with DUP, or PUBREL), then the queue (MQTT 4.4).
    pub fn resume(&mut self, now: Now) -> Vec<Action> {
        let mut pending: Vec<(u64, u16)> = self.inflight.iter().map(|(p, f)| (f.seq, *p)).collect();
        pending.sort_unstable();
        let mut out = Vec::new();
        for (_, pid) in pending {
            out.extend(self.resend(pid, now));
        }
        out.extend(self.drain(now));
        out
    }

    fn resend(&mut self, pid: u16, now: Now) -> Option<Action> {
        let now_wall = now.wall_ms;
        let f = self.inflight.get(&pid)?;
        match f.state.clone() {
            InflightState::Release => {
                if let Some(f) = self.inflight.get_mut(&pid) {
                    f.sent_at = now.mono;
                }
                Some(Action::Send(Packet::PubRel(PubAckLike::new(pid, 0))))
            }
            InflightState::Publish(d) => {
                if d.msg.is_expired(now_wall) && self.is_v5() {
                    self.inflight_take(pid);
                    self.counters.dropped += 1;
                    self.counters.dropped_expired += 1;
                    return None;
                }
                // A resend always carries the full topic and no alias, so it
                // never rebinds an alias the client knows.
                let a = self.send_publish(d, Some(pid), now_wall, false);
                if let Some(f) = self.inflight.get_mut(&pid) {
                    f.sent_at = now.mono;
                }
                match a {
                    Some(Action::Send(Packet::Publish(mut p))) => {
                        p.dup = true;
                        Some(Action::Send(Packet::Publish(p)))
                    }
                    _ => {
                        self.inflight_take(pid);
                        None
                    }
                }
            }
        }
    }

    /// Whether [`Channel::tick`] has anything to do: QoS 2 ids awaiting
    /// PUBREL to expire, or (while connected) inflight messages to resend.
    pub fn needs_tick(&self) -> bool {
        !self.awaiting_rel.is_empty()
            || (self.conn.connected
                && self.settings.retry_interval.is_some()
                && !self.inflight.is_empty())
    }

    /// Periodic work: resend what waited longer than `retry_interval`, and
    /// forget QoS 2 ids whose PUBREL never came within `await_rel_timeout`.
    pub fn tick(&mut self, now: Now) -> Vec<Action> {
        let timeout = self.settings.await_rel_timeout;
        self.awaiting_rel
            .retain(|_, t| now.mono.duration_since(*t) < timeout);
        let mut out = Vec::new();
        if !self.conn.connected {
            return out;
        }
        if let Some(retry) = self.settings.retry_interval {
            let mut due: Vec<(u64, u16)> = self
                .inflight
                .iter()
                .filter(|(_, f)| now.mono.duration_since(f.sent_at) >= retry)
                .map(|(p, f)| (f.seq, *p))
                .collect();
            due.sort_unstable();
            for (_, pid) in due {
                out.extend(self.resend(pid, now));
            }
        }
        out
    }

    /// Makes a control packet fit the client's Maximum Packet Size by
    /// leaving out optional properties ([`codec::fit`]). `false`: it does
    /// not fit even bare and must not be sent; the connection is closed
    /// instead ([MQTT-3.1.2-24]).
    pub fn fit_outgoing(&self, p: &mut Packet) -> bool {
        match self.conn.client_max_packet {
            Some(max) => codec::fit(p, self.conn.version, max as usize),
            None => true,
        }
    }

    /// The client's Maximum Packet Size, if it set one.
    pub fn client_max_packet(&self) -> Option<u32> {
        self.conn.client_max_packet
    }

    /// The DISCONNECT (v5) or nothing (3.x) for a server-side close.
    pub fn disconnect_packet(&self, code: u8, why: &str) -> Option<Packet> {
        if self.is_v5() {
            Some(Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: self.reason_props(why),
            }))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
