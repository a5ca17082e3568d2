//! The MQTT listeners: one accept loop per enabled `listeners.<type>.<name>`,
//! and per connection the layers EMQX stacks on a socket before MQTT
//! starts: the PROXY protocol header (`proxy_protocol = true`), the TLS
//! handshake (`ssl`, `wss`) and the WebSocket upgrade (`ws`, `wss`). What
//! remains is a byte stream, served by the same connection code for every
//! transport.

pub mod proxy;
pub mod tls;
pub mod ws;

use crate::config::{Config, Listener, ListenerKind, PeerCertAs};
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
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// One listener, as its connections need it.
pub struct Spec {
    /// EMQX's listener id, `<type>:<name>` (`ssl:default`).
    pub id: String,
    pub bind: SocketAddr,
    max_connections: Option<u64>,
    mountpoint: Option<Arc<str>>,
    /// `proxy_protocol_timeout` when `proxy_protocol = true`.
    proxy: Option<Duration>,
    tls: Option<Arc<Tls>>,
    ws: Option<crate::config::WsOptions>,
    cert_as_username: PeerCertAs,
    cert_as_clientid: PeerCertAs,
    /// Connections open now.
    pub open: AtomicU64,
}

impl Spec {
    /// Builds what a listener needs, reading its certificate files.
    pub fn new(cfg: &Config, kind: ListenerKind, name: &str, l: &Listener) -> Result<Spec, String> {
        let id = format!("{kind}:{name}");
        let tls = if kind.tls() {
            Some(Tls::new(
                format!("listeners.{kind}.{name}.ssl_options"),
                l.ssl_options.clone(),
            )?)
        } else {
            None
        };
        Ok(Spec {
            id,
            bind: l.bind,
            max_connections: l.max_connections,
            mountpoint: Some(l.mountpoint.as_str())
                .filter(|m| !m.is_empty())
                .map(Arc::from),
            proxy: l.proxy_protocol.then_some(l.proxy_protocol_timeout),
            tls,
            ws: kind.websocket().then(|| l.websocket.clone()),
            cert_as_username: cfg.mqtt.peer_cert_as_username,
            cert_as_clientid: cfg.mqtt.peer_cert_as_clientid,
            open: AtomicU64::new(0),
        })
    }
}

/// Checks every enabled listener's TLS files (for `check_config`).
pub fn check(cfg: &Config) -> Result<(), String> {
    for (kind, name, l) in cfg.listeners.all() {
        if l.enable && kind.tls() {
            tls::check(
                &format!("listeners.{kind}.{name}.ssl_options"),
                &l.ssl_options,
            )?;
        }
    }
    Ok(())
}

/// Binds every enabled listener and starts its accept loop.
pub async fn start(cfg: &Config, ctx: &Arc<Ctx>) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for (kind, name, l) in cfg.listeners.all() {
        if !l.enable {
            continue;
        }
        let spec = Arc::new(Spec::new(cfg, kind, name, l)?);
        let sock = TcpListener::bind(l.bind)
            .await
            .map_err(|e| format!("listeners.{kind}.{name}: cannot listen on {}: {e}", l.bind))?;
        tracing::info!("listener {} on {}", spec.id, l.bind);
        if let Some(t) = &spec.tls {
            tasks.push(t.watch());
        }
        tasks.push(tokio::spawn(accept_loop(sock, spec, ctx.clone())));
    }
    Ok(tasks)
}

/// Accepts connections on one listener. While an autoheal restart has the
/// listeners closed (`ctx.listeners` is false) the socket itself is
/// closed, so connects are refused rather than queued, and it is bound
/// again once the node has rejoined.
async fn accept_loop(sock: TcpListener, spec: Arc<Spec>, ctx: Arc<Ctx>) {
    let (id, bind) = (&spec.id, spec.bind);
    let mut state = ctx.listeners.subscribe();
    let mut sock = Some(sock);
    loop {
        let Some(listener) = sock.as_ref() else {
            if state.wait_for(|open| *open).await.is_err() {
                return;
            }
            match TcpListener::bind(bind).await {
                Ok(l) => {
                    tracing::info!("listener {id} on {bind} reopened");
                    sock = Some(l);
                }
                Err(e) => {
                    tracing::warn!("listener {id}: cannot listen on {bind} again: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            continue;
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*state.borrow_and_update() {
                    tracing::info!("listener {id} on {bind} closed for a broker restart");
                    sock = None;
                }
                continue;
            }
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
        if let Some(max) = spec.max_connections {
            if spec.open.load(Ordering::Relaxed) >= max {
                tracing::info!(%peer, "listener {id}: max_connections ({max}) reached, closing");
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        spec.open.fetch_add(1, Ordering::Relaxed);
        let (spec, ctx) = (spec.clone(), ctx.clone());
        tokio::spawn(async move {
            handle(stream, peer, &spec, ctx).await;
            spec.open.fetch_sub(1, Ordering::Relaxed);
        });
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
        if spec.cert_as_username != PeerCertAs::Disabled {
            acc.cert_username = tls::peer_cert_field(spec.cert_as_username, cert);
        }
        if spec.cert_as_clientid != PeerCertAs::Disabled {
            acc.cert_client_id = tls::peer_cert_field(spec.cert_as_clientid, cert);
        }
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
