//! The running node as the command handlers see it, and where its pid
//! file is: what `ctl`, the remote console and the node's start-up share.

use crate::config::Config;
use crate::listeners::Listeners;
use emqx_actors::cluster::service::{ClusterView, SvcMsg};
use emqx_actors::Ctx;
use ractor::ActorRef;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The running node, as seen by ctl commands.
pub struct Node {
    pub name: String,
    pub ctx: Arc<Ctx>,
    /// The cluster service (membership, joins, routes).
    pub cluster: ActorRef<SvcMsg>,
    /// The other nodes' routes, as the publish path reads them.
    pub view: Arc<ClusterView>,
    /// `cluster.discovery_strategy`.
    pub discovery_strategy: String,
    /// Set to true to stop the node.
    pub shutdown: Arc<watch::Sender<bool>>,
    /// The MQTT listeners (`ctl listeners`).
    pub listeners: Arc<Listeners>,
    /// `node.db_role`: `core` or `replicant`.
    pub role: &'static str,
    /// Where the log file is written, if it is.
    pub log_dir: Option<String>,
    /// API users and keys (`ctl api_keys`, the HTTP API).
    pub api_auth: Arc<crate::api::auth::Auth>,
    /// The node's durable store (`ctl durable`).
    pub durable: emqx_actors::durable::Durable,
    /// The replicated durable storage's shards here (`durable_storage.messages.backend = builtin_raft`).
    pub ds: Option<Arc<emqx_actors::cluster::ds::host::DsHost>>,
}

pub fn pid_file(cfg: &Config) -> PathBuf {
    cfg.node.data_dir.join(format!("{}.pid", cfg.node.name))
}
