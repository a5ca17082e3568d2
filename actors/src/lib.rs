//! emqx-rs node runtime and cluster: the actors and tasks that own a
//! node's state (sessions, topic shards, the client registry, `$SYS`) with
//! the connection tasks that feed them, and, in `cluster/` and `forward/`,
//! what makes nodes one broker. The protocol itself is plain code in
//! `emqx-mqtt`; the node runtime reaches other nodes only through the
//! contracts in [`peers`].

pub mod alarms;
pub mod authn;
pub mod authz_db;
pub mod banned;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod cm;
pub mod conn;
pub mod connect;
pub mod durable;
pub mod forward;
pub mod hashing;
pub mod inbox;
pub mod journal;
pub mod metrics;
pub mod outbox;
pub mod overload;
pub mod overload_monitor;
pub mod parking;
pub mod peer_tls;
pub mod peers;
pub mod replicated;
pub mod retainer;
pub mod session;
pub mod session_msg;
pub mod shard;
pub mod stored;
pub mod sys;
pub mod tables;

use emqx_mqtt::settings;
use std::sync::Arc;

/// Everything a session or connection needs from its node, cheap to clone.
pub struct Ctx {
    /// This node's name, `name@host`.
    pub node: Arc<str>,
    pub settings: Arc<settings::MqttSettings>,
    pub broker: Arc<broker::Broker>,
    pub cm: cm::Cm,
    pub sys: SysSettings,
    /// When the broker started, for `uptime`.
    pub started_at: std::time::Instant,
    /// The cluster-wide client id lock and takeover (`None` only for a
    /// node built without a cluster, in tests).
    pub registry: Option<Arc<dyn peers::ClientRegistry>>,
    /// Whether the MQTT listeners are open: an autoheal restart closes
    /// them (new connects are refused) and opens them again once the node
    /// has rejoined.
    pub listeners: tokio::sync::watch::Sender<bool>,
    /// The authentication chain (empty: every client is allowed).
    pub authn: Arc<authn::Authn>,
    /// Banned clients, checked before authentication.
    pub banned: Arc<banned::Banned>,
    /// The built-in database authorization source's rules, when one is
    /// configured (the channels reach them through the settings' authz).
    pub authz_rules: Option<Arc<authz_db::AuthzRules>>,
    /// This node's active alarms and their history.
    pub alarms: Arc<alarms::Alarms>,
    /// Node-wide overload protection (`overload_protection.*`).
    pub overload: Arc<overload::Overload>,
    /// Where persistent sessions are claimed and kept for the cluster
    /// (the replicated durable storage's developer preview; `None`
    /// otherwise).
    pub session_store: Option<Arc<dyn peers::SessionStore>>,
}

/// `sys_topics.*` of emqx.conf.
#[derive(Debug, Clone)]
pub struct SysSettings {
    /// Period of stats/metrics/uptime messages; zero disables them.
    pub sys_msg_interval: std::time::Duration,
    /// Period of the uptime/datetime heartbeat; zero disables it.
    pub sys_heartbeat_interval: std::time::Duration,
    pub client_connected: bool,
    pub client_disconnected: bool,
}

impl Default for SysSettings {
    fn default() -> Self {
        SysSettings {
            sys_msg_interval: std::time::Duration::from_secs(60),
            sys_heartbeat_interval: std::time::Duration::from_secs(30),
            client_connected: true,
            client_disconnected: true,
        }
    }
}
