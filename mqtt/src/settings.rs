//! The protocol settings a channel reads (`mqtt.*` of emqx.conf), as one
//! typed struct so the broker crate does not depend on the config parser.

use crate::authz::Authz;
use crate::packet::QoS;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub max_packet_size: usize,
    pub max_clientid_len: usize,
    pub max_topic_levels: usize,
    /// Largest topic alias a client may use towards us (0 disables).
    pub max_topic_alias: u16,
    pub max_qos_allowed: QoS,
    pub retain_available: bool,
    pub wildcard_subscription: bool,
    pub shared_subscription: bool,
    pub ignore_loop_deliver: bool,
    pub response_information: String,
    /// When set, overrides the client's keepalive (v5 Server Keep Alive).
    pub server_keepalive: Option<u16>,
    pub keepalive_multiplier: f64,
    /// How long a connection may stay silent before CONNECT, and how
    /// long a session must be left alone to hibernate; `Duration::MAX`:
    /// `infinity` (no limit, no hibernation).
    pub idle_timeout: Duration,
    /// Resend unacknowledged QoS 1/2 after this long; `None` = only on reconnect.
    pub retry_interval: Option<Duration>,
    /// Session expiry for MQTT 3.x clients with clean_session = false.
    pub session_expiry_interval: Duration,
    /// Upper bound for message expiry of every message; `None` = unlimited.
    pub message_expiry_interval: Option<Duration>,
    /// Also our Receive Maximum: QoS 2 messages awaiting PUBREL.
    pub max_awaiting_rel: Option<usize>,
    pub await_rel_timeout: Duration,
    pub max_inflight: u16,
    pub max_mqueue_len: Option<usize>,
    /// Bytes a session may hold in its queue and inflight window together
    /// (`force_shutdown.max_heap_size`); past it the queue drops, QoS 0
    /// first, then the oldest.
    pub max_held_bytes: Option<usize>,
    /// A connected client whose waiting messages pass `max_held_bytes` is
    /// disconnected (`force_shutdown.enable`); otherwise its queue drops.
    pub force_shutdown: bool,
    pub mqueue_store_qos0: bool,
    pub max_subscriptions: Option<usize>,
    pub upgrade_qos: bool,
    /// Use the CONNECT username as the client id (`mqtt.use_username_as_clientid`).
    pub use_username_as_clientid: bool,
    /// Bytes waiting to be written to one socket above which QoS 0
    /// deliveries are dropped and reading from the client pauses.
    pub max_pending_write: usize,
    /// A socket whose pending writes make no progress this long is closed.
    pub send_timeout: Duration,
    /// Authorization (`authorization.*`), shared by every channel.
    pub authz: Arc<Authz>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            max_packet_size: 1024 * 1024,
            max_clientid_len: 65535,
            max_topic_levels: 128,
            max_topic_alias: 65535,
            max_qos_allowed: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            ignore_loop_deliver: false,
            response_information: String::new(),
            server_keepalive: None,
            keepalive_multiplier: 1.5,
            idle_timeout: Duration::from_secs(15),
            retry_interval: Some(Duration::from_secs(30)),
            session_expiry_interval: Duration::from_secs(2 * 3600),
            message_expiry_interval: None,
            max_awaiting_rel: Some(100),
            await_rel_timeout: Duration::from_secs(300),
            max_inflight: 32,
            max_mqueue_len: Some(1000),
            max_held_bytes: Some(32 * 1024 * 1024),
            force_shutdown: true,
            mqueue_store_qos0: true,
            max_subscriptions: None,
            upgrade_qos: false,
            use_username_as_clientid: false,
            max_pending_write: 4 * 1024 * 1024,
            send_timeout: Duration::from_secs(15),
            authz: Arc::new(Authz::default()),
        }
    }
}
