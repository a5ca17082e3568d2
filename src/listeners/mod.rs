//! The MQTT listeners: one accept loop per enabled `listeners.<type>.<name>`,
//! and per connection the layers EMQX stacks on a socket before MQTT
//! starts: the PROXY protocol header (`proxy_protocol = true`), the TLS
//! handshake (`ssl`, `wss`) and the WebSocket upgrade (`ws`, `wss`). What
//! remains is a byte stream, served by the same connection code for every
//! transport.

pub mod proxy;
pub mod quic;
pub mod tls;
pub mod ws;

use crate::config::{Config, Listener, ListenerKind, PeerCertAs, Rate};
use bytes::Bytes;
use emqx_actors::conn::{self, Accepted};
use emqx_actors::Ctx;
use proxy::Prefixed;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// One listener, as its connections need it.
pub struct Spec {
    /// EMQX's listener id, `<type>:<name>` (`ssl:default`).
    pub id: String,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    pub acceptors: u32,
    pub max_connections: Option<u64>,
    max_conn_rate: Option<Rate>,
    mountpoint: Option<Arc<str>>,
    /// `proxy_protocol_timeout` when `proxy_protocol = true`.
    proxy: Option<Duration>,
    tls: Option<Arc<Tls>>,
    ws: Option<crate::config::WsOptions>,
    cert_as_username: PeerCertAs,
    cert_as_clientid: PeerCertAs,
    /// Connections open now.
    pub open: AtomicU64,
    /// Whether the operator wants it open (`ctl listeners stop|start`).
    wanted: watch::Sender<bool>,
    /// Whether its socket is bound now, or why it could not be.
    state: watch::Sender<State>,
}

/// What a listener's accept loop is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Running,
    Stopped,
    /// The socket could not be bound again (the port is taken).
    Failed(String),
}

impl Spec {
    /// Builds what a listener needs, reading its certificate files.
    pub fn new(cfg: &Config, kind: ListenerKind, name: &str, l: &Listener) -> Result<Spec, String> {
        let tls = if kind.tls() {
            let key = format!("listeners.{kind}.{name}.ssl_options");
            let t = Tls::new(
                key.clone(),
                l.ssl_options.clone(),
                kind == ListenerKind::Quic,
            )?;
            if kind == ListenerKind::Quic {
                quic::check(&key, &t)?;
            }
            Some(t)
        } else {
            None
        };
        Ok(Spec {
            id: format!("{kind}:{name}"),
            kind,
            bind: l.bind,
            acceptors: l.acceptors,
            max_connections: l.max_connections,
            max_conn_rate: l.max_conn_rate,
            mountpoint: Some(l.mountpoint.as_str())
                .filter(|m| !m.is_empty())
                .map(Arc::from),
            proxy: l.proxy_protocol.then_some(l.proxy_protocol_timeout),
            tls,
            ws: kind.websocket().then(|| l.websocket.clone()),
            cert_as_username: cfg.mqtt.peer_cert_as_username,
            cert_as_clientid: cfg.mqtt.peer_cert_as_clientid,
            open: AtomicU64::new(0),
            wanted: watch::channel(true).0,
            state: watch::channel(State::Stopped).0,
        })
    }

    /// What `mqtt.peer_cert_as_*` takes from the client's certificate.
    fn cert_identity(&self, acc: &mut Accepted, cert: &rustls::pki_types::CertificateDer<'_>) {
        if self.cert_as_username != PeerCertAs::Disabled {
            acc.cert_username = tls::peer_cert_field(self.cert_as_username, cert);
        }
        if self.cert_as_clientid != PeerCertAs::Disabled {
            acc.cert_client_id = tls::peer_cert_field(self.cert_as_clientid, cert);
        }
    }

    pub fn proxy_protocol(&self) -> bool {
        self.proxy.is_some()
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Opens (`true`) or closes the listening socket, and waits (up to
    /// 5 s) for the accept loop to say how it went. Open connections are
    /// not touched.
    pub async fn set_wanted(&self, open: bool) -> State {
        let done =
            |s: &State| matches!((s, open), (State::Running, true) | (State::Stopped, false));
        let mut state = self.state.subscribe();
        state.mark_unchanged();
        self.wanted.send_replace(open);
        if done(&state.borrow()) {
            return self.state();
        }
        // The accept loop's next report (a bind that fails is retried and
        // reported again).
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, state.changed()).await {
            let s = state.borrow_and_update().clone();
            if done(&s) || matches!(s, State::Failed(_)) {
                return s;
            }
        }
        self.state()
    }
}

/// Every configured listener of the node, enabled ones running.
pub struct Listeners {
    pub all: Vec<Arc<Spec>>,
}

impl Listeners {
    /// Builds every enabled listener (reading certificate files); nothing
    /// is bound yet.
    pub fn new(cfg: &Config) -> Result<Listeners, String> {
        let mut all = Vec::new();
        for (kind, name, l) in cfg.listeners.all() {
            if l.enable {
                all.push(Arc::new(Spec::new(cfg, kind, name, l)?));
            }
        }
        Ok(Listeners { all })
    }

    pub fn find(&self, id: &str) -> Option<&Arc<Spec>> {
        self.all.iter().find(|s| s.id == id)
    }

    /// Binds every listener (an error names the one that cannot listen)
    /// and starts the accept loops.
    pub async fn start(&self, ctx: &Arc<Ctx>) -> Result<Vec<JoinHandle<()>>, String> {
        let mut tasks = Vec::new();
        for spec in &self.all {
            let cannot = |e: std::io::Error| {
                let (kind, name) = spec.id.split_once(':').unwrap_or((&spec.id, ""));
                format!(
                    "listeners.{kind}.{name}: cannot listen on {}: {e}",
                    spec.bind
                )
            };
            if let Some(t) = &spec.tls {
                tasks.push(t.watch());
            }
            if spec.kind == ListenerKind::Quic {
                let tls = spec.tls.as_ref().ok_or("a QUIC listener without TLS")?;
                let endpoint = quic::endpoint(spec.bind, tls).map_err(cannot)?;
                tracing::info!("listener {} on {} (UDP)", spec.id, spec.bind);
                spec.state.send_replace(State::Running);
                tasks.push(tokio::spawn(quic::accept_loop(
                    endpoint,
                    spec.clone(),
                    ctx.clone(),
                )));
                continue;
            }
            let sock = TcpListener::bind(spec.bind).await.map_err(cannot)?;
            tracing::info!("listener {} on {}", spec.id, spec.bind);
            spec.state.send_replace(State::Running);
            tasks.push(tokio::spawn(accept_loop(sock, spec.clone(), ctx.clone())));
        }
        Ok(tasks)
    }
}

/// Checks every enabled listener's TLS files (for `check_config`).
pub fn check(cfg: &Config) -> Result<(), String> {
    for (kind, name, l) in cfg.listeners.all() {
        if l.enable && kind.tls() {
            let key = format!("listeners.{kind}.{name}.ssl_options");
            if kind == ListenerKind::Quic {
                let t = Tls::new(key.clone(), l.ssl_options.clone(), true)?;
                quic::check(&key, &t)?;
            } else {
                tls::check(&key, &l.ssl_options)?;
            }
        }
    }
    Ok(())
}

/// `max_conn_rate` as a token bucket: up to `count` connections at once,
/// refilled at `count` per `per`.
pub(crate) struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            tokens: rate.count as f64,
            at: Instant::now(),
        }
    }

    /// How long to wait before the next connection may be accepted; takes
    /// its token.
    pub(crate) fn take(&mut self) -> Duration {
        let per_token = self.rate.per.as_secs_f64() / self.rate.count as f64;
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() / per_token;
        self.tokens = (self.tokens + refill).min(self.rate.count as f64);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens * per_token)
        }
    }
}

/// Accepts connections on one listener. The socket is open while both the
/// node (an autoheal restart closes every listener: `ctx.listeners`) and
/// the operator (`ctl listeners stop`) want it; closed, connects are
/// refused rather than queued.
async fn accept_loop(sock: TcpListener, spec: Arc<Spec>, ctx: Arc<Ctx>) {
    let (id, bind) = (&spec.id, spec.bind);
    let mut node_open = ctx.listeners.subscribe();
    let mut wanted = spec.wanted.subscribe();
    let mut sock = Some(sock);
    let mut bucket = spec.max_conn_rate.map(Bucket::new);
    loop {
        let want = *node_open.borrow_and_update() && *wanted.borrow_and_update();
        if !want && sock.take().is_some() {
            tracing::info!("listener {id} on {bind} closed");
            spec.state.send_replace(State::Stopped);
        }
        if want && sock.is_none() {
            match TcpListener::bind(bind).await {
                Ok(l) => {
                    tracing::info!("listener {id} on {bind} open again");
                    sock = Some(l);
                    spec.state.send_replace(State::Running);
                }
                Err(e) => {
                    tracing::warn!("listener {id}: cannot listen on {bind} again: {e}");
                    spec.state.send_replace(State::Failed(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        r = node_open.changed() => if r.is_err() { return },
                        r = wanted.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
        }
        let Some(listener) = sock.as_ref() else {
            tokio::select! {
                r = node_open.changed() => if r.is_err() { return },
                r = wanted.changed() => if r.is_err() { return },
            }
            continue;
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            r = node_open.changed() => if r.is_err() { return } else { continue },
            r = wanted.changed() => if r.is_err() { return } else { continue },
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("listener {id}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !handle_limits(&spec, peer) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        spec.open.fetch_add(1, Ordering::Relaxed);
        let (s, c) = (spec.clone(), ctx.clone());
        tokio::spawn(async move {
            handle(stream, peer, &s, c).await;
            s.open.fetch_sub(1, Ordering::Relaxed);
        });
        // Over max_conn_rate: the next connections wait in the backlog
        // (a stop or an autoheal restart does not wait for the token).
        if let Some(b) = bucket.as_mut() {
            rate_wait(b.take(), &mut node_open, &mut wanted).await;
        }
    }
}

/// Sleeps `wait`, or less if the listener is to close meanwhile.
async fn rate_wait(
    wait: Duration,
    node_open: &mut watch::Receiver<bool>,
    wanted: &mut watch::Receiver<bool>,
) {
    if wait.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = node_open.changed() => {}
        _ = wanted.changed() => {}
    }
}

/// Whether `max_connections` leaves room for one more connection.
fn handle_limits(spec: &Spec, peer: SocketAddr) -> bool {
    match spec.max_connections {
        Some(max) if spec.open.load(Ordering::Relaxed) >= max => {
            tracing::info!(%peer, "listener {}: max_connections ({max}) reached, closing", spec.id);
            false
        }
        _ => true,
    }
}

/// One connection: PROXY header, TLS, WebSocket, then MQTT.
async fn handle(tcp: TcpStream, peer: SocketAddr, spec: &Spec, ctx: Arc<Ctx>) {
    let id = &spec.id;
    let mut acc = Accepted::new(peer, spec.mountpoint.clone());
    let stream = match spec.proxy {
        None => Prefixed::new(tcp, Bytes::new()),
        Some(limit) => match timeout(limit, proxy::read_header(tcp)).await {
            Ok(Ok((s, info))) => {
                if let Some(src) = info.source {
                    acc.peer = src;
                }
                // A balancer that terminated TLS passes the certificate's
                // CN (PROXY v2 only); nothing else of it.
                if let Some(cn) = info.ssl_cn {
                    if spec.cert_as_username == PeerCertAs::Cn {
                        acc.cert_username = Some(cn.clone());
                    }
                    if spec.cert_as_clientid == PeerCertAs::Cn {
                        acc.cert_client_id = Some(cn);
                    }
                }
                s
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, "listener {id}: closing connection: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "listener {id}: closing connection: no PROXY header within {limit:?}");
                return;
            }
        },
    };
    let Some(tls) = &spec.tls else {
        return upgrade(stream, acc, spec, ctx).await;
    };
    let limit = tls.handshake_timeout();
    let stream = match timeout(limit, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(peer = %acc.peer, "listener {id}: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %acc.peer, "listener {id}: TLS handshake not done within {limit:?}, closing");
            return;
        }
    };
    if let Some(cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        spec.cert_identity(&mut acc, cert);
    }
    upgrade(stream, acc, spec, ctx).await
}

/// The WebSocket upgrade on a `ws`/`wss` listener, then MQTT.
async fn upgrade<S>(stream: S, acc: Accepted, spec: &Spec, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(opts) = &spec.ws else {
        return conn::serve(stream, acc, ctx).await;
    };
    let limit = ctx.settings.idle_timeout;
    match timeout(
        limit,
        ws::accept(stream, opts, ctx.settings.max_packet_size),
    )
    .await
    {
        Ok(Ok(io)) => conn::serve(io, acc, ctx).await,
        Ok(Err(e)) => {
            tracing::info!(peer = %acc.peer, "listener {}: WebSocket upgrade refused: {e}", spec.id);
        }
        Err(_) => {
            tracing::info!(peer = %acc.peer, "listener {}: no WebSocket upgrade within {limit:?}, closing", spec.id);
        }
    }
}
