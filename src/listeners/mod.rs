//! The MQTT listeners: one accept loop per enabled `listeners.<type>.<name>`,
//! and per connection the layers EMQX stacks on a socket before MQTT
//! starts: the PROXY protocol header (`proxy_protocol = true`), the TLS
//! handshake (`ssl`, `wss`) and the WebSocket upgrade (`ws`, `wss`). What
//! remains is a byte stream, served by the same connection code for every
//! transport.

pub mod proxy;
pub mod quic;
pub mod spec;
pub mod tls;
pub mod tls_stream;
pub mod ws;

use crate::config::{Config, ListenerKind, PeerCertAs};
use bytes::Bytes;
use emqx_actors::conn::{self, Accepted, OpenSlot};
use emqx_actors::Ctx;
use proxy::Prefixed;
use spec::{handle_limits, overloaded, rate_wait, Bucket};
pub use spec::{Spec, State};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

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
                let spec = Spec::new(cfg, kind, name, l)?;
                if let (ListenerKind::Quic, Some(t)) = (kind, &spec.tls) {
                    quic::check(&format!("listeners.{kind}.{name}.ssl_options"), t)?;
                }
                all.push(Arc::new(spec));
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
            let sock = bind(spec.bind).map_err(cannot)?;
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
            match self::bind(bind) {
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
        if !handle_limits(&spec, &ctx, peer) || overloaded(&ctx) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let slot = OpenSlot::take(&spec.open);
        let (s, c) = (spec.clone(), ctx.clone());
        if s.proxy.is_none() && s.tls.is_none() && s.ws.is_none() {
            // The task is the connection itself, which gives the count
            // back when it ends: an idle connection's memory is mostly
            // this task.
            let mut acc = s.accepted(peer);
            acc.open = Some(slot);
            tokio::spawn(conn::serve(stream, acc, c));
        } else {
            tokio::spawn(serve_layered(stream, peer, s, c, slot));
        }
        // Over max_conn_rate: the next connections wait in the backlog
        // (a stop or an autoheal restart does not wait for the token).
        if let Some(b) = bucket.as_mut() {
            rate_wait(b.take(), &mut node_open, &mut wanted).await;
        }
    }
}

/// A connection's byte stream after its PROXY header, TLS handshake or
/// WebSocket upgrade.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection: PROXY header, TLS, WebSocket, then MQTT. The layers
/// are set up in a boxed future that is freed once they are done, and
/// the connection is served through one boxed stream type, so this task
/// stays about as small as a plain one.
async fn serve_layered(
    tcp: TcpStream,
    peer: SocketAddr,
    spec: Arc<Spec>,
    ctx: Arc<Ctx>,
    slot: OpenSlot,
) {
    if let Some((io, acc)) = Box::pin(setup(tcp, peer, &spec, &ctx, slot)).await {
        conn::serve(io, acc, ctx).await;
    }
}

/// The layers of one connection; `slot` (its place in the listener's
/// count) goes with the connection, or is given back when setting up
/// fails.
async fn setup(
    tcp: TcpStream,
    peer: SocketAddr,
    spec: &Spec,
    ctx: &Ctx,
    slot: OpenSlot,
) -> Option<(Box<dyn Io>, Accepted)> {
    let id = &spec.id;
    let mut acc = spec.accepted(peer);
    acc.open = Some(slot);
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
                    acc.cert_cn = Some(cn.as_str().into());
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
                return None;
            }
            Err(_) => {
                tracing::info!(%peer, "listener {id}: closing connection: no PROXY header within {limit:?}");
                return None;
            }
        },
    };
    let Some(tls) = &spec.tls else {
        return upgrade(stream, acc, spec, ctx).await;
    };
    let limit = tls.handshake_timeout();
    let stream = match timeout(limit, tls_stream::TlsStream::accept(stream, tls.config())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(peer = %acc.peer, "listener {id}: TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(peer = %acc.peer, "listener {id}: TLS handshake not done within {limit:?}, closing");
            return None;
        }
    };
    if let Some(cert) = stream.peer_certificates().and_then(|c| c.first()) {
        spec.cert_identity(&mut acc, cert);
    }
    upgrade(stream, acc, spec, ctx).await
}

/// The WebSocket upgrade on a `ws`/`wss` listener.
async fn upgrade<S>(
    stream: S,
    acc: Accepted,
    spec: &Spec,
    ctx: &Ctx,
) -> Option<(Box<dyn Io>, Accepted)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(opts) = &spec.ws else {
        return Some((Box::new(stream), acc));
    };
    let limit = ctx.settings.idle_timeout;
    match timeout(
        limit,
        ws::accept(stream, opts, ctx.settings.max_packet_size),
    )
    .await
    {
        Ok(Ok(io)) => Some((Box::new(io), acc)),
        Ok(Err(e)) => {
            tracing::info!(peer = %acc.peer, "listener {}: WebSocket upgrade refused: {e}", spec.id);
            None
        }
        Err(_) => {
            tracing::info!(peer = %acc.peer, "listener {}: no WebSocket upgrade within {limit:?}, closing", spec.id);
            None
        }
    }
}

/// Binds a listening socket with EMQX's backlog (1024; tokio's default
/// is 128, which a burst of TLS connects overflows).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

#[cfg(test)]
mod tests {
    fn ret_size5<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn ret_size3<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle connection's memory is mostly its task: the setup of TLS
    /// and WebSocket must not be part of it, and a plain connection's
    /// task is the connection alone (tokio adds about 128 bytes and
    /// rounds the task up to 128; jemalloc's classes are 1280, 1536,
    /// 1792 bytes). Debug builds are larger than release ones (1160
    /// bytes for the plain task there).
    #[test]
    fn the_connection_task_stays_small() {
        let plain = ret_size3(emqx_actors::conn::serve::<tokio::net::TcpStream>);
        assert!(
            plain <= 1408,
            "the plain connection task grew to {plain} bytes"
        );
        let layered = ret_size5(super::serve_layered);
        assert!(
            layered <= 1536,
            "the layered connection task grew to {layered} bytes"
        );
    }
}
