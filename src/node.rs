//! Running a node: the broker, its listeners, the inter-node server that
//! carries ctl commands, and the background (`start`) mode.

use crate::config::{Config, DsBackend};
use crate::ctl::{ctl_group, ControlActor, ControlMsg};
use crate::listeners::Listeners;
use crate::peer_tls::NodeTls;
use crate::running::{pid_file, Node};
use emqx_actors::alarms::{AlarmSettings, Alarms};
use emqx_actors::broker::{Broker, BrokerSettings, SharedStrategy};
use emqx_actors::cluster::ds::host::DsHost;
use emqx_actors::cluster::membership::{MemberInfo, Role};
use emqx_actors::cluster::registry::Registry;
use emqx_actors::cluster::service::{
    group_of, ClusterService, ClusterSettings, ClusterView, Dialer, Endpoint, EndpointArgs,
    SvcArgs, SvcMsg,
};
use emqx_actors::durable::Durable;
use emqx_actors::forward::{ForwardConfig, Forwarder, OnReceive};
use emqx_actors::journal::Journal;
use emqx_actors::metrics::{Metrics, Stats};
use emqx_actors::overload::{Overload, OverloadSettings};
use emqx_actors::parking::FromJournal;
use emqx_actors::peers::BrokerLinks;
use emqx_actors::replicated::ReplTables;
use emqx_actors::retainer::{Retainer, RetainerSettings};
use emqx_actors::session_msg::SessionMsg;
use emqx_actors::sys::SysSettings;
use emqx_actors::Ctx;
use emqx_mqtt::packet::QoS;
use emqx_mqtt::settings::MqttSettings;
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServer;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::watch;

/// `overload_protection.*` in bytes of this node's memory.
fn overload_settings(cfg: &Config) -> Result<OverloadSettings, String> {
    let o = &cfg.overload_protection;
    let limit = emqx_actors::overload::memory_limit().unwrap_or(u64::MAX);
    let (high, low) = (
        o.mem_high_watermark.bytes(limit),
        o.mem_low_watermark.bytes(limit),
    );
    if o.enable && low >= high {
        return Err(format!(
            "overload_protection.mem_low_watermark ({low} bytes) must be below \
             mem_high_watermark ({high} bytes)"
        ));
    }
    Ok(OverloadSettings {
        enable: o.enable,
        backoff_new_conn: o.backoff_new_conn,
        high_watermark: high,
        low_watermark: low,
        check_interval: o.mem_check_interval,
    })
}

/// Translates `mqtt.*` into the broker crate's settings.
pub fn mqtt_settings(c: &Config) -> MqttSettings {
    let m = &c.mqtt;
    MqttSettings {
        max_packet_size: m.max_packet_size as usize,
        max_clientid_len: usize::from(m.max_clientid_len),
        max_topic_levels: usize::from(m.max_topic_levels),
        max_topic_alias: m.max_topic_alias,
        max_qos_allowed: QoS::from_u8(m.max_qos_allowed).unwrap_or(QoS::ExactlyOnce),
        retain_available: m.retain_available,
        wildcard_subscription: m.wildcard_subscription,
        shared_subscription: m.shared_subscription,
        ignore_loop_deliver: m.ignore_loop_deliver,
        response_information: m.response_information.clone(),
        server_keepalive: m.server_keepalive,
        keepalive_multiplier: m.keepalive_multiplier,
        idle_timeout: m.idle_timeout.unwrap_or(Duration::MAX),
        retry_interval: m.retry_interval,
        session_expiry_interval: m.session_expiry_interval,
        message_expiry_interval: m.message_expiry_interval,
        max_awaiting_rel: m.max_awaiting_rel.map(|v| v as usize),
        await_rel_timeout: m.await_rel_timeout,
        max_inflight: m.max_inflight,
        max_mqueue_len: m.max_mqueue_len.map(|v| v as usize),
        mqueue_store_qos0: m.mqueue_store_qos0,
        max_subscriptions: m.max_subscriptions.map(|v| v as usize),
        upgrade_qos: m.upgrade_qos,
        use_username_as_clientid: m.use_username_as_clientid,
        max_held_bytes: Some(c.force_shutdown.max_heap_size as usize),
        force_shutdown: c.force_shutdown.enable,
        ..MqttSettings::default()
    }
}

/// The log file: writes go to the file open now, and `reopen` (on SIGHUP,
/// after logrotate moved the file away) starts a new one at the same path.
/// Past `rotation_size` bytes the file is rotated here (`emqx.log` ->
/// `emqx.log.1` -> ... -> `emqx.log.<rotation_count>`, the oldest dropped),
/// as EMQX's `log.file.rotation_*` do; done in this writer because it owns
/// the file that SIGHUP reopens.
struct LogFile {
    path: PathBuf,
    rotation: Option<(u64, u32)>,
    file: std::sync::Mutex<OpenLog>,
}

struct OpenLog {
    file: std::fs::File,
    /// Bytes in the file now.
    size: u64,
}

impl LogFile {
    fn open(path: PathBuf, rotation: Option<(u64, u32)>) -> std::io::Result<LogFile> {
        let file = LogFile::open_file(&path)?;
        Ok(LogFile {
            path,
            rotation,
            file: std::sync::Mutex::new(file),
        })
    }

    fn open_file(path: &std::path::Path) -> std::io::Result<OpenLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(OpenLog { file, size })
    }

    fn reopen(&self) -> std::io::Result<()> {
        let f = LogFile::open_file(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = f;
        Ok(())
    }

    /// `emqx.log.<n>`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Shifts the rotated files up by one and starts a new file.
    fn rotate(&self, open: &mut OpenLog, count: u32) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.rotated(count));
        for n in (1..count).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        *open = LogFile::open_file(&self.path)?;
        Ok(())
    }
}

/// One log line's hold on the file.
struct LogWriter<'a> {
    log: &'a LogFile,
    open: std::sync::MutexGuard<'a, OpenLog>,
}

impl std::io::Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.open.file.write(buf)?;
        self.open.size += n as u64;
        if let Some((max, count)) = self.log.rotation {
            // A line is written whole by one call: rotate between lines.
            if self.open.size >= max && buf.ends_with(b"\n") {
                if let Err(e) = self.log.rotate(&mut self.open, count) {
                    eprintln!("cannot rotate {}: {e}", self.log.path.display());
                    // Try again after as much again.
                    self.open.size = 0;
                }
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.open.file.flush()
    }
}

/// The log layer's handle on the [`LogFile`] the signal handler reopens.
struct SharedLog(Arc<LogFile>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SharedLog {
    type Writer = LogWriter<'a>;
    fn make_writer(&'a self) -> LogWriter<'a> {
        LogWriter {
            log: &self.0,
            open: self.0.file.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Set by `start` on the node it starts: its standard output and error
/// go to `<name>.out` beside the log, so the console log is left out when
/// the log file is on (each line once; a panic still reaches `.out`).
pub const STARTED_ENV: &str = "EMQX_RS_STARTED_DETACHED";

/// The crates of emqx-rs, which `log.*.level` applies to (others log
/// warnings and errors only).
const OUR_CRATES: &[&str] = &["emqx_rs", "emqx_actors", "emqx_mqtt", "emqx_discovery"];

/// A level filter: `RUST_LOG` when it is set (it replaces the configured
/// levels), else the configured level for our crates.
fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let mut spec = String::from("warn,rustls=error");
    for c in OUR_CRATES {
        spec.push_str(&format!(",{c}={level}"));
    }
    EnvFilter::new(spec)
}

/// Sets up logging; returns the log file, if any, for SIGHUP to reopen.
fn init_logging(cfg: &Config, console: bool) -> Option<Arc<LogFile>> {
    use crate::config::LogFormatter;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, Layer};
    let level = |l: &str| match l {
        "emergency" | "alert" | "critical" | "error" => "error",
        "warning" => "warn",
        "debug" => "debug",
        _ => "info",
    };
    let detached = std::env::var_os(STARTED_ENV).is_some() && cfg.log.file.enable;
    let console_layer = ((cfg.log.console.enable || console) && !detached).then(|| {
        let lvl = level(cfg.log.console.level.as_str());
        let l = fmt::layer().with_writer(std::io::stderr);
        let l: Box<dyn Layer<_> + Send + Sync> = match cfg.log.console.formatter {
            LogFormatter::Json => Box::new(l.json()),
            LogFormatter::Text => {
                Box::new(l.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            }
        };
        l.with_filter(log_filter(lvl))
    });
    let mut log_file = None;
    let file_layer = if cfg.log.file.enable {
        let path = cfg.log_file_path();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let rotation = cfg
            .log
            .file
            .rotation_size
            .map(|s| (s, cfg.log.file.rotation_count));
        match LogFile::open(path.clone(), rotation) {
            Ok(f) => {
                let lvl = level(cfg.log.file.level.as_str());
                let f = Arc::new(f);
                log_file = Some(f.clone());
                let l = fmt::layer().with_ansi(false).with_writer(SharedLog(f));
                let l: Box<dyn Layer<_> + Send + Sync> = match cfg.log.file.formatter {
                    LogFormatter::Json => Box::new(l.json()),
                    LogFormatter::Text => Box::new(l),
                };
                Some(l.with_filter(log_filter(lvl)))
            }
            Err(e) => {
                eprintln!("cannot open log file {}: {e}", path.display());
                None
            }
        }
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(console_layer)
        .with(file_layer)
        .try_init();
    log_file
}

/// `foreground` / `console`: runs until stopped.
pub fn run_foreground(cfg: Config, console: bool) -> ExitCode {
    let log_file = init_logging(&cfg, console);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(crate::listeners::tls::warm_up)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cfg, console, log_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The address of the node name's host: an IP address as it is, a host
/// name as looked up once (through `cluster.dns.resolver` when set).
fn host_ip(name: &str) -> Option<IpAddr> {
    name.split('@')
        .nth(1)
        .and_then(emqx_discovery::hosts::lookup_once)
}

/// The node's life: each step builds what the next needs, in order, and
/// hands it over; nothing is filled in later (docs/architecture.md,
/// "Start-up").
async fn run(cfg: Config, console: bool, log_file: Option<Arc<LogFile>>) -> Result<(), String> {
    // Signals first: SIGHUP must never stop the node, even during start-up.
    let signals = Signals::install(log_file)?;
    prepare(&cfg)?;
    // The MQTT listeners are built (certificates read) first and opened last.
    let listeners = Arc::new(Listeners::new(&cfg)?);
    let tls = NodeTls::from_config(&cfg)?;
    let on = |t: &Option<_>| if t.is_some() { "on" } else { "off" };
    tracing::info!(
        "TLS between nodes: control plane {}, forwarding {}",
        on(&tls.dist),
        on(&tls.rpc)
    );
    let dist = bind_inter_node(&cfg).await?;
    let api_listener = crate::api::bind(&cfg.dashboard.listeners).await?;
    let (core, replication) = start_broker(&cfg, &dist, &tls).await?;
    let api_auth = Arc::new(crate::api::auth::Auth::new(
        core.tables.clone(),
        &cfg.node.cookie,
        (
            &cfg.dashboard.default_username,
            &cfg.dashboard.default_password,
        ),
        cfg.api_key.bootstrap_file.as_deref(),
        cfg.dashboard.token_expired_time,
    )?);
    let cluster = start_cluster(&cfg, dist, &core, replication, &tls).await?;
    let discovery = start_discovery(&cfg, &cluster, &tls)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let node = Arc::new(Node {
        name: cfg.node.name.clone(),
        ctx: core.ctx.clone(),
        discovery_strategy: cfg.cluster.discovery_strategy.as_str().to_string(),
        cluster: cluster.service.clone(),
        view: core.view.clone(),
        shutdown: Arc::new(shutdown),
        listeners: listeners.clone(),
        role: cfg.node.db_role.as_str(),
        api_auth: api_auth.clone(),
        durable: core.durable.clone(),
        ds: core.ds.clone(),
        log_dir: cfg
            .log
            .file
            .enable
            .then(|| cfg.log_file_path())
            .and_then(|p| p.parent().map(|d| d.display().to_string())),
    });
    let (control, _): (ActorRef<ControlMsg>, _) = Actor::spawn(None, ControlActor, node.clone())
        .await
        .map_err(|e| format!("cannot start the control actor: {e}"))?;
    ractor::pg::join(ctl_group(&node.name), vec![control.get_cell()]);
    // MQTT listeners, once the node is wired: a client that connects now
    // gets the cluster-wide client id lock and the remote routes.
    let listener_tasks = listeners.start(&core.ctx).await?;
    let api_task = crate::api::serve(
        api_listener,
        crate::api::Api {
            node: node.clone(),
            auth: api_auth,
            cluster_name: cfg.cluster.name.clone(),
            prometheus_auth: cfg.prometheus.enable_basic_auth,
            config_file: cfg
                .location
                .file
                .as_ref()
                .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())),
            cookie: cfg.node.cookie.clone(),
        },
    );
    let pid = announce(&cfg, cluster.dist_port);
    if console {
        let node = node.clone();
        std::thread::spawn(move || crate::remote::local_console(node));
    }
    signals.wait_for_stop(shutdown_rx).await;

    // Graceful stop: no new connections, sessions closed, tables dropped.
    for t in &listener_tasks {
        t.abort();
    }
    api_task.abort();
    core.sys_task.abort();
    core.hibernate_task.abort();
    if let Some(t) = &core.overload_task {
        t.abort();
    }
    if let Some(t) = &core.journal_clock {
        t.abort();
    }
    cluster.dist_task.abort();
    if let Some(t) = discovery.task {
        t.abort();
    }
    if let Some(etcd) = &discovery.etcd {
        if let Err(e) = etcd.revoke().await {
            tracing::warn!("etcd: {e}");
        }
    }
    // No more forwarded messages in (the peers keep what they have not had
    // acknowledged, for the next start); then persistent sessions are kept
    // on disk, with what reached them, and the others end; then what this
    // node still sends (the wills its stop published, messages of its
    // publishers) reaches the peers that are up, for up to 5 s.
    core.forwarder.close_inbound().await;
    let parked = emqx_actors::parking::park_all(&core.ctx).await;
    let left = core.forwarder.drain(FORWARD_DRAIN).await;
    if left > 0 {
        tracing::warn!(
            "{left} message(s) forwarded to other nodes not acknowledged by the stop (dropped)"
        );
    }
    core.forwarder.shutdown().await;
    match emqx_actors::parking::save(&core.durable, &parked).await {
        Ok(()) => tracing::info!("{} persistent session(s) kept on disk", parked.len()),
        Err(e) => tracing::error!("{} persistent session(s) lost: {e}", parked.len()),
    }
    core.ctx.cm.stop_all().await;
    core.ctx.broker.stop();
    cluster.endpoint.stop(None);
    cluster.service.stop(None);
    control.stop(None);
    cluster.node_server.stop(None);
    let _ = std::fs::remove_file(&pid);
    tracing::info!("node {} stopped", cfg.node.name);
    Ok(())
}

/// Checks and warnings before anything starts.
fn prepare(cfg: &Config) -> Result<(), String> {
    emqx_discovery::hosts::use_server(cfg.cluster.dns.resolver);
    if cfg.uses_default_cookie() {
        tracing::warn!("the default (insecure) cookie is in use; set node.cookie or -setcookie");
    }
    std::fs::create_dir_all(&cfg.node.data_dir).map_err(|e| {
        format!(
            "cannot create node.data_dir {}: {e}",
            cfg.node.data_dir.display()
        )
    })?;
    Ok(())
}

/// The inter-node port, bound first: it is how `ping`, `stop` and `ctl`
/// find the node.
struct InterNode {
    listener: TcpListener,
    /// The node name's address: what the node advertises and peers dial.
    ip: IpAddr,
    port: u16,
    /// Outgoing inter-node connections start from this address.
    source: Option<IpAddr>,
}

/// Where outgoing connections of a listener bound to `listen` (`None`: the
/// name's address `name_ip`) start from: the bound address, or wherever
/// the kernel routes them when it is bound to every interface.
fn source_ip(listen: Option<IpAddr>, name_ip: IpAddr) -> Option<IpAddr> {
    match listen {
        None => Some(name_ip),
        Some(a) if a.is_unspecified() => None,
        Some(a) => Some(a),
    }
}

/// The words added to a bind error when the address is not on this host.
fn not_local_hint(e: &std::io::Error, key: &str) -> String {
    if e.kind() == std::io::ErrorKind::AddrNotAvailable {
        format!(
            " (the address is not on this host: set {key} = \"0.0.0.0\" or to one of the host's \
             addresses; the node name stays the address peers dial, see docs/clustering.md)"
        )
    } else {
        String::new()
    }
}

async fn bind_inter_node(cfg: &Config) -> Result<InterNode, String> {
    let name = &cfg.node.name;
    let port = cfg.dist_port();
    let host = name.split_once('@').map_or("127.0.0.1", |(_, h)| h);
    // A host name that does not resolve is a configuration error: the node
    // would advertise an address it cannot know.
    let ip = host_ip(name).ok_or_else(|| {
        format!("node.name = {name}: cannot resolve the host {host} (checked through cluster.dns.resolver when set, else the system resolver)")
    })?;
    let listen = cfg.node.dist_listen_address;
    let at = listen.unwrap_or(ip);
    let listener = TcpListener::bind(SocketAddr::new(at, port))
        .await
        .map_err(|e| {
            format!(
                "inter-node port {port} on {at} is not available: {e}{}",
                not_local_hint(&e, "node.dist_listen_address")
            )
        })?;
    Ok(InterNode {
        listener,
        ip,
        port,
        source: source_ip(listen, ip),
    })
}

/// What the broker sends the cluster to replicate: the receiving ends,
/// which the cluster service takes.
struct Replication {
    route_rx: mpsc::UnboundedReceiver<emqx_actors::peers::RouteOp>,
    retain_rx: mpsc::UnboundedReceiver<emqx_mqtt::message::Message>,
    tables: Arc<ReplTables>,
    table_rx: mpsc::UnboundedReceiver<emqx_actors::replicated::TableOps>,
}

/// The broker and what it is built with.
struct Core {
    ctx: Arc<Ctx>,
    forwarder: Arc<Forwarder>,
    view: Arc<ClusterView>,
    registry: Arc<Registry>,
    fwd_port: u16,
    sys_task: tokio::task::JoinHandle<()>,
    overload_task: Option<tokio::task::JoinHandle<()>>,
    /// The hibernation sweep of idle sessions.
    hibernate_task: tokio::task::JoinHandle<()>,
    /// Writes the node's clock to the session journal.
    journal_clock: Option<tokio::task::JoinHandle<()>>,
    /// The replicated tables (the API keeps its users there).
    tables: Arc<ReplTables>,
    durable: Durable,
    /// The replicated durable storage's shards on this core, or the way
    /// to them from a replicant (`durable_storage.messages.backend =
    /// builtin_raft`).
    ds: Option<Arc<DsHost>>,
}

/// The replicated durable storage's shards, replication factor and
/// sites, if `durable_storage.messages.backend = builtin_raft`.
fn ds_layout(cfg: &Config) -> Option<(u16, usize, usize)> {
    let m = &cfg.durable_storage.messages;
    (m.backend == DsBackend::BuiltinRaft).then_some((m.n_shards, m.replication_factor, m.n_sites))
}

/// How long a clean stop waits for its peers to acknowledge what it
/// still forwards to them (the wills of the sessions it parks).
const FORWARD_DRAIN: Duration = Duration::from_secs(5);

/// How long a session brought back from the journal waits for its shard
/// to say whether this node still holds it.
const RELINK_PATIENCE: Duration = Duration::from_secs(120);

/// The sessions the journal brought back after a crash are copied to
/// their shards again, each whose shard says this node still holds it. A
/// client that went to another node meanwhile made that node its holder:
/// the copy here is discarded. One the store does not know (released,
/// or never copied) stays as it is. Their shards may need the other
/// nodes back first: each is asked again until [`RELINK_PATIENCE`] is
/// over.
async fn relink_sessions(
    store: Arc<dyn emqx_actors::peers::SessionStore>,
    journal: Arc<Journal>,
    ctx: Arc<Ctx>,
    sessions: Vec<FromJournal>,
) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + RELINK_PATIENCE;
    let linked = std::sync::atomic::AtomicUsize::new(0);
    let elsewhere = std::sync::atomic::AtomicUsize::new(0);
    let unknown = std::sync::atomic::AtomicUsize::new(0);
    futures_util::stream::iter(sessions)
        .for_each_concurrent(64, |back| {
            let (store, journal, ctx) = (store.clone(), journal.clone(), ctx.clone());
            let (linked, elsewhere, unknown) = (&linked, &elsewhere, &unknown);
            async move {
                let FromJournal {
                    client_id: client,
                    incarnation: inc,
                    held_will,
                    ..
                } = back;
                // The will held back at the restore is armed unless another
                // node took the session (and published it) meanwhile.
                let arm = |will: Option<(emqx_mqtt::packet::LastWill, u32)>| {
                    if let (Some((w, delay)), Some(s)) = (will, ctx.cm.lookup(&client)) {
                        let _ = s.cast(SessionMsg::SetWill(Box::new(w), delay));
                    }
                };
                let me = &ctx.node;
                let owner = loop {
                    match store.read(&client).await {
                        Ok(s) => break s.owner,
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            tracing::warn!(client_id = %client, "not copied to its shard again (no answer: {e}); it is when its client connects");
                            arm(held_will);
                            return;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                };
                match owner {
                    Some((node, epoch)) if *node == **me => {
                        arm(held_will);
                        match journal.relink(inc, &client, epoch, store, me).await {
                            Ok(true) => {
                                linked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            // Its client came back here, and a new life of
                            // the session has its own copy.
                            Ok(false) => {}
                            Err(e) => tracing::error!(client_id = %client, "not copied to its shard again: {e}"),
                        }
                    }
                    Some((node, _)) => {
                        // Its client went to `node` while this one was
                        // down: the session lives there now, and this
                        // stale copy goes (what was acknowledged for it
                        // is in the shard, which that node read).
                        tracing::info!(client_id = %client, "the session is held by {node} now: this node's copy is discarded");
                        ctx.cm.discard(&client).await;
                        elsewhere.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => {
                        arm(held_will);
                        unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    tracing::info!(
        "persistent sessions back from the journal or parked: {} copied to their shards again, {} held by another node now (discarded here), {} not in the store",
        linked.into_inner(),
        elsewhere.into_inner(),
        unknown.into_inner()
    );
}

/// The forwarder (bound, not yet serving), the view of the other nodes
/// around it, the broker built with both, the client registry and `Ctx`.
async fn start_broker(
    cfg: &Config,
    dist: &InterNode,
    tls: &NodeTls,
) -> Result<(Core, Replication), String> {
    let name = &cfg.node.name;
    let node_name: Arc<str> = Arc::from(name.as_str());
    // The data plane: message forwarding between nodes.
    let fwd_port = cfg.forward_port();
    let listen = cfg.rpc.listen_address.or(cfg.node.dist_listen_address);
    let at = listen.unwrap_or(dist.ip);
    let mut fwd_cfg = ForwardConfig::new(
        node_name.clone(),
        cfg.node.cookie.clone(),
        SocketAddr::new(at, fwd_port),
    );
    fwd_cfg.bind_ip = source_ip(listen, dist.ip);
    fwd_cfg.tls = tls.rpc.clone();
    let (forwarder, fwd_listener) = Forwarder::bind(fwd_cfg).await.map_err(|e| {
        format!(
            "cannot listen for forwarded messages on port {fwd_port} on {at}: {e}{}",
            not_local_hint(&e, "rpc.listen_address")
        )
    })?;
    // What the publish path reads of the other nodes, kept by the cluster
    // service.
    let view = Arc::new(ClusterView::new(node_name.clone(), forwarder.clone()));

    let metrics = Arc::new(Metrics::default());
    let stats = Arc::new(Stats::default());
    let retainer_settings = RetainerSettings {
        enable: cfg.retainer.enable,
        max_retained_messages: cfg.retainer.max_retained_messages as usize,
        max_payload_size: cfg.retainer.max_payload_size as usize,
        msg_expiry_interval: cfg.retainer.msg_expiry_interval,
    };
    // The durable store (group-committed writes in data_dir): retained
    // messages (unless `retainer.backend.storage_type = ram`) and the
    // sessions parked across a stop.
    let durable = Durable::open(&cfg.node.data_dir).map_err(|e| e.to_string())?;
    let retainer = if cfg.retainer.disc {
        let r = Retainer::open(retainer_settings, durable.clone())
            .map_err(|e| format!("cannot read the retained messages: {e}"))?;
        tracing::info!("{} retained message(s) read from disk", r.count());
        r
    } else {
        Retainer::new(retainer_settings)
    };
    let mut settings = mqtt_settings(cfg);
    // The durable session journal: persistent sessions as they change.
    // Read even when `durable_sessions.enable` was turned off since, so
    // the sessions it holds come back once more.
    let (journal, recovered) = Journal::open(durable.clone(), settings.upgrade_qos)
        .map_err(|e| format!("cannot read the durable sessions: {e}"))?;
    let journal = cfg.durable_sessions.enable.then(|| Arc::new(journal));
    let journal_clock = journal.as_ref().map(|j| j.spawn_clock());
    // The replicated tables (authentication users, bans, authorization
    // rules), kept in data_dir.
    let (tables, table_rx) = ReplTables::open(
        name,
        Some(&cfg.node.data_dir),
        &[
            emqx_actors::authn::USERS_TABLE,
            emqx_actors::banned::BANNED_TABLE,
            emqx_actors::authz_db::AUTHZ_RULES_TABLE,
            crate::api::auth::USERS_TABLE,
            crate::api::auth::API_KEYS_TABLE,
        ],
    )
    .map_err(|e| format!("cannot open the replicated tables: {e}"))?;
    let tables = Arc::new(tables);
    let (authz, authz_rules) = crate::authz::build(cfg, Some(&tables))?;
    settings.authz = Arc::new(authz);
    let authn = Arc::new(crate::authn::build(cfg, &tables)?);
    let mut banned = emqx_actors::banned::Banned::new(tables.clone()).map_err(|e| e.to_string())?;
    let fd = &cfg.flapping_detect;
    if fd.enable {
        banned = banned.with_flapping(emqx_actors::banned::FlappingSettings {
            max_count: fd.max_count,
            window: fd.window_time,
            ban_time: fd.ban_time,
        });
    }
    let banned = Arc::new(banned);
    let bsettings = BrokerSettings {
        shared_strategy: SharedStrategy::parse(cfg.mqtt.shared_subscription_strategy.as_str())
            .unwrap_or_default(),
        max_topic_levels: settings.max_topic_levels,
        ignore_loop_deliver: cfg.mqtt.ignore_loop_deliver,
        max_session_bytes: cfg.force_shutdown.max_heap_size as usize,
        ..BrokerSettings::default()
    };
    let (route_tx, route_rx) = mpsc::unbounded_channel();
    let (retain_tx, retain_rx) = mpsc::unbounded_channel();
    let links = BrokerLinks {
        remote: Some(view.clone()),
        route_tx: Some(route_tx),
        retain_tx: Some(retain_tx),
    };
    let broker = Broker::start(
        node_name.clone(),
        bsettings,
        retainer,
        metrics,
        stats,
        links,
        journal,
    )
    .await
    .map_err(|e| format!("cannot start the broker: {e}"))?;
    let sys = SysSettings {
        sys_msg_interval: cfg.sys_topics.sys_msg_interval.unwrap_or(Duration::ZERO),
        sys_heartbeat_interval: cfg
            .sys_topics
            .sys_heartbeat_interval
            .unwrap_or(Duration::ZERO),
        client_connected: cfg.sys_topics.sys_event_messages.client_connected,
        client_disconnected: cfg.sys_topics.sys_event_messages.client_disconnected,
    };
    // The cluster-wide client id registry: the cluster service keeps it
    // informed of who runs.
    let registry = Arc::new(Registry::new(node_name.clone()));
    // The durable storage's shards (its developer preview): the replicas
    // on a core, the way to them on a replicant; persistent sessions are
    // claimed and kept there.
    let ds = match ds_layout(cfg) {
        Some((shards, rf, _)) if role_of(cfg) == Role::Replicant => {
            // No replicas: it reaches the shards through the cores.
            let transport = Arc::new(emqx_actors::cluster::ds_link::ClusterTransport);
            let host = DsHost::client(
                name,
                &durable,
                shards,
                rf,
                transport,
                &emqx_actors::cluster::ds::Tuning::default(),
            )
            .map_err(|e| format!("cannot start the durable storage client: {e}"))?;
            Some(Arc::new(host))
        }
        Some((shards, rf, sites)) => {
            let transport = Arc::new(emqx_actors::cluster::ds_link::ClusterTransport);
            let host = DsHost::start(
                name,
                &durable,
                shards,
                rf,
                sites,
                transport,
                &emqx_actors::cluster::ds::Tuning::default(),
            )
            .await
            .map_err(|e| format!("cannot start the durable storage shards: {e}"))?;
            tracing::info!(
                "durable storage: {shards} shard(s), replication factor {rf}, made once {sites} core(s) are in the cluster"
            );
            Some(Arc::new(host))
        }
        None => None,
    };
    let session_store = ds.as_ref().map(|h| {
        let s =
            emqx_actors::cluster::ds_sessions::DsSessions::new(h.clone(), Duration::from_secs(5));
        Arc::new(s) as Arc<dyn emqx_actors::peers::SessionStore>
    });
    let ctx = Arc::new(Ctx {
        node: node_name,
        settings: Arc::new(settings),
        broker,
        cm: Default::default(),
        sys,
        started_at: Instant::now(),
        registry: Some(registry.clone()),
        listeners: tokio::sync::watch::channel(true).0,
        authn,
        banned,
        authz_rules,
        alarms: Arc::new(Alarms::new(AlarmSettings {
            log: cfg.alarm.log,
            publish: cfg.alarm.publish,
            size_limit: cfg.alarm.size_limit as usize,
            validity_period: cfg.alarm.validity_period,
        })),
        overload: Arc::new(Overload::new(overload_settings(cfg)?)),
        session_store,
    });
    // Sessions parked at the last stop come back offline (and leave the
    // store) before anything reaches this node: forwarded messages (the
    // peers resend what the last run did not acknowledge) and clients.
    let (unparked, recovered) = emqx_actors::parking::restore(&ctx, &durable, recovered).await?;
    if unparked > 0 {
        tracing::info!("{unparked} persistent session(s) back from disk");
    }
    let crashed = recovered.iter().filter(|r| !r.parked).count();
    if crashed > 0 {
        tracing::info!(
            "{crashed} persistent session(s) back from the journal (the node had not stopped cleanly)"
        );
    }
    if let (Some(store), Some(j), false) = (
        ctx.session_store.clone(),
        ctx.broker.journal.clone(),
        recovered.is_empty(),
    ) {
        tokio::spawn(relink_sessions(store, j, ctx.clone(), recovered));
    }
    // Messages other nodes forward go to the broker.
    let b = ctx.broker.clone();
    let on_receive: OnReceive = Arc::new(move |_from: &str, msg, shared, at| {
        b.publish_forwarded(Arc::new(msg), shared, Some(at))
    });
    match ctx.broker.journal.clone() {
        // What was handed on for persistent sessions before a crash is
        // not handed on again when its sender sends it again.
        Some(j) => {
            let known = j
                .streams()
                .map_err(|e| format!("cannot read the forwarding positions: {e}"))?;
            let keep: emqx_actors::forward::KeepStream =
                Arc::new(move |stream, last| j.note_stream(stream, last));
            forwarder.serve_keeping(fwd_listener, on_receive, known, keep);
        }
        None => forwarder.serve(fwd_listener, on_receive),
    }
    let sys_task = ctx.spawn_sys();
    let overload_task = emqx_actors::overload_monitor::spawn_monitor(ctx.clone());
    // Idle sessions hibernate after `mqtt.idle_timeout`, as in EMQX.
    let hibernate_task = tokio::spawn(emqx_actors::session::hibernator(
        Arc::downgrade(&ctx),
        ctx.settings.idle_timeout,
    ));
    let core = Core {
        ds,
        hibernate_task,
        ctx,
        forwarder,
        view,
        registry,
        fwd_port,
        sys_task,
        overload_task,
        journal_clock,
        tables: tables.clone(),
        durable,
    };
    Ok((
        core,
        Replication {
            route_rx,
            retain_rx,
            tables,
            table_rx,
        },
    ))
}

/// The cluster: the inter-node server, the cluster service and its
/// endpoint, and the inter-node accept loop.
struct ClusterParts {
    node_server: ActorRef<ractor_cluster::NodeServerMessage>,
    service: ActorRef<SvcMsg>,
    endpoint: ActorRef<emqx_actors::cluster::service::EndpointMsg>,
    dist_task: tokio::task::JoinHandle<()>,
    dist_port: u16,
    /// Outgoing inter-node connections start from this address.
    source: Option<IpAddr>,
    me_start: u64,
}

async fn start_cluster(
    cfg: &Config,
    dist: InterNode,
    core: &Core,
    replication: Replication,
    tls: &NodeTls,
) -> Result<ClusterParts, String> {
    let name = &cfg.node.name;
    let (short, host) = name.split_once('@').unwrap_or((name.as_str(), "127.0.0.1"));
    // The inter-node server (ping, stop, ctl, and the cluster's control plane).
    // We accept inter-node connections ourselves (to time out handshakes);
    // the node server's own listener sits unused on an ephemeral loopback port.
    let server = NodeServer::new(
        0,
        cfg.node.cookie.clone(),
        short.to_string(),
        host.to_string(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(IpAddr::from([127, 0, 0, 1]))
    .with_max_inbound_frame_size(emqx_actors::cluster::wire::MAX_MESSAGE as u64);
    let (node_server, _) = Actor::spawn(Some(format!("emqx_node_server:{name}")), server, ())
        .await
        .map_err(|e| {
            format!(
                "cannot start the inter-node server on port {}: {e}",
                dist.port
            )
        })?;

    let me_start = emqx_actors::clock::now_ms();
    let adv_ip = dist.ip;
    let me = MemberInfo {
        node: name.clone(),
        dist_addr: SocketAddr::new(adv_ip, dist.port).to_string(),
        fwd_addr: SocketAddr::new(adv_ip, core.fwd_port).to_string(),
        role: role_of(cfg),
        incarnation: me_start,
    };
    let (service, _) = Actor::spawn(
        None,
        ClusterService,
        SvcArgs {
            ctx: core.ctx.clone(),
            me,
            node_server: node_server.clone(),
            view: core.view.clone(),
            registry: core.registry.clone(),
            settings: ClusterSettings {
                heartbeat_interval: cfg.cluster.heartbeat_interval,
                down_timeout: cfg.cluster.down_timeout,
                data_dir: cfg.node.data_dir.clone(),
                dialer: Dialer {
                    bind_ip: dist.source,
                    tls: tls.dist.clone(),
                },
                singleton: cfg.cluster.discovery_strategy.as_str() == "singleton",
                autoclean: cfg.cluster.autoclean,
                heal: emqx_actors::cluster::autoheal::HealConfig {
                    enabled: cfg.cluster.autoheal,
                    confirm: Duration::from_secs(3),
                    delay: cfg.cluster.autoheal_delay,
                },
            },
            route_rx: replication.route_rx,
            retain_rx: replication.retain_rx,
            tables: replication.tables,
            table_rx: replication.table_rx,
            ds: core.ds.clone(),
        },
    )
    .await
    .map_err(|e| format!("cannot start the cluster service: {e}"))?;
    let endpoint_args = EndpointArgs {
        svc: service.clone(),
        ds: core.ds.clone(),
    };
    let (endpoint, _) = Actor::spawn(None, Endpoint, endpoint_args)
        .await
        .map_err(|e| format!("cannot start the cluster endpoint: {e}"))?;
    ractor::pg::join(group_of(name), vec![endpoint.get_cell()]);

    // Only now (the cluster service watches authentications) take
    // inter-node connections.
    let dist_task = tokio::spawn(emqx_actors::cluster::guard::accept_loop(
        dist.listener,
        node_server.clone(),
        Duration::from_secs(5),
        tls.dist.as_ref().map(|t| t.acceptor.clone()),
    ));
    Ok(ClusterParts {
        node_server,
        service,
        endpoint,
        dist_task,
        dist_port: dist.port,
        source: dist.source,
        me_start,
    })
}

/// The autocluster loop with the configured discovery strategy.
struct Discovery {
    task: Option<tokio::task::JoinHandle<()>>,
    /// Its lease is revoked at stop.
    etcd: Option<Arc<emqx_discovery::Etcd>>,
}

fn start_discovery(
    cfg: &Config,
    cluster: &ClusterParts,
    tls: &NodeTls,
) -> Result<Discovery, String> {
    let name = &cfg.node.name;
    let ac = Autocluster {
        cluster: cluster.service.clone(),
        node_server: cluster.node_server.clone(),
        dialer: Dialer {
            bind_ip: cluster.source,
            tls: tls.dist.clone(),
        },
        name: name.clone(),
        me_start: cluster.me_start,
        role: role_of(cfg),
    };
    let mut etcd = None;
    let task = match cfg.cluster.discovery_strategy.as_str() {
        "static" => Some(
            ac.spawn(
                emqx_discovery::Static::new(cfg.cluster.static_.seeds.clone())
                    .map_err(|e| format!("cluster.static.seeds: {e}"))?,
            ),
        ),
        "dns" => Some(ac.spawn(dns_strategy(cfg, name)?)),
        "etcd" => {
            let e = Arc::new(etcd_strategy(cfg, name)?);
            etcd = Some(e.clone());
            Some(ac.spawn(e))
        }
        "k8s" => Some(ac.spawn(k8s_strategy(cfg, name)?)),
        // A replicant's static core list (EMQX 5.0-5.7's core_nodes).
        "manual" if !cfg.cluster.core_nodes.is_empty() => Some(
            ac.spawn(
                emqx_discovery::Static::new(cfg.cluster.core_nodes.clone())
                    .map_err(|e| format!("cluster.core_nodes: {e}"))?,
            ),
        ),
        "manual" | "singleton" => None,
        other => {
            tracing::warn!("cluster.discovery_strategy = {other} is not available yet; nodes join with `ctl cluster join`");
            None
        }
    };
    Ok(Discovery { task, etcd })
}

/// Builds the configured discovery strategy without starting it, so a
/// node whose strategy cannot work (an etcd certificate file that is
/// missing, a bad seed list, a Kubernetes name that is not one) is told
/// at `check_config` and before anything binds a port. DNS is checked
/// when the node starts (its resolver belongs to the runtime).
pub fn check_discovery(cfg: &Config) -> Result<(), String> {
    let name = &cfg.node.name;
    match cfg.cluster.discovery_strategy.as_str() {
        "static" => emqx_discovery::Static::new(cfg.cluster.static_.seeds.clone())
            .map(|_| ())
            .map_err(|e| format!("cluster.static.seeds: {e}")),
        "etcd" => etcd_strategy(cfg, name).map(|_| ()),
        "k8s" => k8s_strategy(cfg, name).map(|_| ()),
        _ => Ok(()),
    }
}

/// "using config <file> (found ...)", or that none was found.
pub fn using_config(cfg: &Config) -> String {
    let loc = &cfg.location;
    match &loc.file {
        Some(f) => format!("using config {} (from {})", f.display(), loc.how),
        None => format!(
            "no configuration file found (looked for -config, $EMQX_CONF, \
             $EMQX_ETC_DIR/emqx.conf, etc/emqx.conf here and beside the executable, {}): \
             using the defaults",
            crate::config::SYSTEM_CONFIG
        ),
    }
}

/// Writes the pid file and says the node runs; returns the pid file.
fn announce(cfg: &Config, dist_port: u16) -> PathBuf {
    let name = &cfg.node.name;
    let pid = pid_file(cfg);
    let _ = std::fs::write(&pid, format!("{}\n", std::process::id()));
    let using = using_config(cfg);
    tracing::info!("{using}");
    println!("{using}");
    println!(
        "emqx-rs {} is running as {name} (MQTT on {}, inter-node port {dist_port})",
        env!("CARGO_PKG_VERSION"),
        cfg.listeners
            .all()
            .filter(|(_, _, l)| l.enable)
            .map(|(kind, _, l)| format!("{kind} {}", l.bind))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tracing::info!("node {name} started");
    pid
}

/// The signals a node handles: SIGINT and SIGTERM stop it; SIGHUP (as
/// logrotate's postrotate sends) reopens the log file and never stops it.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    log_file: Option<Arc<LogFile>>,
}

impl Signals {
    fn install(log_file: Option<Arc<LogFile>>) -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let hup = signal(SignalKind::hangup())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        Ok(Signals {
            term,
            hup,
            log_file,
        })
    }

    /// Until SIGINT, SIGTERM or `stop`; SIGHUPs on the way reopen the log.
    async fn wait_for_stop(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: stopping");
                    return;
                }
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    return;
                }
                _ = shutdown.wait_for(|v| *v) => {
                    tracing::info!("stop requested");
                    return;
                }
                _ = self.hup.recv() => match &self.log_file {
                    Some(f) => match f.reopen() {
                        Ok(()) => tracing::info!("SIGHUP: log file {} reopened", f.path.display()),
                        Err(e) => tracing::error!("SIGHUP: cannot reopen the log file {}: {e}", f.path.display()),
                    },
                    None => tracing::info!("SIGHUP: no log file to reopen"),
                },
            }
        }
    }
}

/// `start`: runs `foreground` as a background process and waits until it
/// answers pings.
pub fn start_daemon(cfg: Config, args: &[String]) -> ExitCode {
    let name = cfg.node.name.clone();
    if crate::remote::ping_quiet(&cfg) {
        eprintln!("Node {name} is already running!");
        return ExitCode::from(1);
    }
    let log_dir = cfg.node.data_dir.join("log");
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        eprintln!("cannot create {}: {e}", log_dir.display());
        return ExitCode::from(1);
    }
    let out_path = log_dir.join(format!("{name}.out"));
    let out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {}: {e}", out_path.display());
            return ExitCode::from(1);
        }
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {}: {e}", out_path.display());
            return ExitCode::from(1);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find the emqx-rs executable: {e}");
            return ExitCode::from(1);
        }
    };
    let mut child_args: Vec<String> = args.iter().filter(|a| *a != "start").cloned().collect();
    child_args.insert(0, "foreground".into());
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&child_args)
        .env(STARTED_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the node: {e}");
            return ExitCode::from(1);
        }
    };
    let wait: u64 = std::env::var("EMQX_WAIT_FOR_START")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(wait);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "Node {name} failed to start ({status}); see {}",
                out_path.display()
            );
            if let Ok(text) = std::fs::read_to_string(&out_path) {
                for l in text
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("  {l}");
                }
            }
            return ExitCode::from(1);
        }
        if crate::remote::ping_quiet(&cfg) {
            println!(
                "emqx-rs {} is started successfully!",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("Node {name} is started, but failed to complete the boot sequence in time.");
    ExitCode::from(3)
}

/// `node.db_role` as the cluster knows it.
fn role_of(cfg: &Config) -> Role {
    match cfg.node.db_role {
        crate::config::DbRole::Replicant => Role::Replicant,
        crate::config::DbRole::Core => Role::Core,
    }
}

/// Starts the autocluster loop with one discovery strategy.
struct Autocluster {
    cluster: ActorRef<emqx_actors::cluster::service::SvcMsg>,
    node_server: ActorRef<ractor_cluster::NodeServerMessage>,
    dialer: Dialer,
    name: String,
    me_start: u64,
    role: Role,
}

impl Autocluster {
    fn spawn<S: emqx_discovery::Strategy>(&self, strategy: S) -> tokio::task::JoinHandle<()> {
        tokio::spawn(emqx_actors::cluster::autocluster::run(
            strategy,
            self.cluster.clone(),
            self.node_server.clone(),
            self.dialer.clone(),
            self.name.clone(),
            self.me_start,
            self.role,
        ))
    }
}

/// `cluster.dns.*`.
fn dns_strategy(cfg: &Config, name: &str) -> Result<emqx_discovery::Dns, String> {
    use emqx_discovery::dns::{Dns, RecordType};
    let rt = match cfg.cluster.dns.record_type.as_str() {
        "srv" => RecordType::Srv,
        "aaaa" => RecordType::Aaaa,
        _ => RecordType::A,
    };
    Dns::new(&cfg.cluster.dns.name, rt, name, cfg.cluster.dns.resolver)
        .map_err(|e| format!("cluster.dns: {e}"))
}

/// `cluster.etcd.*`.
fn etcd_strategy(cfg: &Config, name: &str) -> Result<emqx_discovery::Etcd, String> {
    let tls = cfg
        .cluster
        .etcd
        .ssl_options
        .client_tls("cluster.etcd.ssl_options");
    emqx_discovery::Etcd::with_tls(
        cfg.cluster.etcd.server.clone(),
        cfg.cluster.etcd.prefix.clone(),
        cfg.cluster.etcd.node_ttl,
        name.to_string(),
        tls.as_ref(),
    )
    .map_err(|e| match e {
        emqx_discovery::DiscoveryError::Config(e) => e,
        e => format!("cluster.etcd: {e}"),
    })
}

/// `cluster.k8s.*`.
fn k8s_strategy(cfg: &Config, name: &str) -> Result<emqx_discovery::K8s, String> {
    use emqx_discovery::k8s::{AddressType, K8sSettings};
    let k = &cfg.cluster.k8s;
    let settings = K8sSettings {
        apiserver: k.apiserver.clone(),
        service_name: k.service_name.clone(),
        namespace: k.namespace.clone(),
        address_type: match k.address_type.as_str() {
            "dns" => AddressType::Dns,
            "hostname" => AddressType::Hostname,
            _ => AddressType::Ip,
        },
        suffix: k.suffix.clone(),
        token_file: k.token_file.clone(),
        ca_file: k.ca_file.clone(),
    };
    emqx_discovery::K8s::new(settings, name).map_err(|e| format!("cluster.k8s: {e}"))
}
