//! MQTT over QUIC (`listeners.quic.<name>`, EMQX's port 14567): TLS 1.3
//! with ALPN `mqtt`, one bidirectional stream per connection (EMQX's
//! default single-stream mode), served by the same connection code as
//! every other transport. QUIC itself is quinn's.

use super::spec::{handle_limits, overloaded, rate_wait, Bucket, Spec, State};
use crate::listeners::tls::Tls;
use emqx_actors::conn::{self, OpenSlot};
use emqx_actors::Ctx;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::timeout;

fn server_config(tls: &Tls) -> io::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls.config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // No QUIC idle timeout: the MQTT keepalive decides when a silent
    // client is gone, as on every other transport (EMQX's idle_timeout 0).
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    // One stream per connection, opened by the client.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Whether the TLS settings make a QUIC configuration (TLS 1.3 with its
/// initial suite, TLS_AES_128_GCM_SHA256, among the ciphers).
pub fn check(key: &str, tls: &Tls) -> Result<(), String> {
    server_config(tls).map(|_| ()).map_err(|e| {
        format!("{key}.ciphers: not usable for QUIC ({e}; QUIC needs TLS_AES_128_GCM_SHA256)")
    })
}

/// Binds the UDP socket of a QUIC listener.
pub fn endpoint(bind: SocketAddr, tls: &Tls) -> io::Result<Endpoint> {
    Endpoint::server(server_config(tls)?, bind)
}

/// Accepts QUIC connections. Stopping the listener (`ctl listeners stop`,
/// an autoheal restart) refuses new connections and keeps the open ones;
/// a certificate reload takes effect for new connections.
pub async fn accept_loop(endpoint: Endpoint, spec: Arc<Spec>, ctx: Arc<Ctx>) {
    let id = &spec.id;
    let Some(tls) = spec.tls.clone() else { return };
    let mut node_open = ctx.listeners.subscribe();
    let mut wanted = spec.wanted.subscribe();
    let mut reloads = tls.reloads();
    let mut bucket = spec.max_conn_rate.map(Bucket::new);
    let mut open = true;
    loop {
        let want = *node_open.borrow_and_update() && *wanted.borrow_and_update();
        if want != open || reloads.has_changed().unwrap_or(false) {
            reloads.mark_unchanged();
            if want {
                match server_config(&tls) {
                    Ok(cfg) => endpoint.set_server_config(Some(cfg)),
                    Err(e) => tracing::error!("listener {id}: {e}"),
                }
            } else {
                endpoint.set_server_config(None);
            }
            if want != open {
                tracing::info!(
                    "listener {id} on {} {}",
                    spec.bind,
                    if want { "open again" } else { "closed" }
                );
            }
            open = want;
            spec.state
                .send_replace(if open { State::Running } else { State::Stopped });
        }
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            r = node_open.changed() => if r.is_err() { return } else { continue },
            r = wanted.changed() => if r.is_err() { return } else { continue },
            r = reloads.changed() => if r.is_err() { return } else { continue },
        };
        if !handle_limits(&spec, &ctx, incoming.remote_address()) || overloaded(&ctx) {
            incoming.refuse();
            continue;
        }
        let slot = OpenSlot::take(&spec.open);
        let (s, c) = (spec.clone(), ctx.clone());
        tokio::spawn(async move {
            // Given back when the connection ends, however it ends.
            let _slot = slot;
            serve(incoming, &s, c).await;
        });
        if let Some(b) = bucket.as_mut() {
            rate_wait(b.take(), &mut node_open, &mut wanted).await;
        }
    }
}

/// The handshake, the client's stream, then MQTT.
async fn serve(incoming: quinn::Incoming, spec: &Spec, ctx: Arc<Ctx>) {
    let id = &spec.id;
    let peer = incoming.remote_address();
    let Some(tls) = &spec.tls else { return };
    let limit = tls.handshake_timeout();
    let conn = match timeout(limit, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(%peer, "listener {id}: QUIC handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "listener {id}: QUIC handshake not done within {limit:?}, closing");
            return;
        }
    };
    let idle = ctx.settings.idle_timeout;
    let (send, recv) = match timeout(idle, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, "listener {id}: no stream: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "listener {id}: no stream within {idle:?}, closing");
            conn.close(0u32.into(), b"no stream");
            return;
        }
    };
    let mut acc = spec.accepted(peer);
    if let Some(certs) = conn.peer_identity().and_then(|i| {
        i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    }) {
        if let Some(cert) = certs.first() {
            spec.cert_identity(&mut acc, cert);
        }
    }
    let io = QuicIo::new(conn, send, recv);
    conn::serve(io, acc, ctx).await;
}

/// A QUIC connection's one stream as a byte stream. The connection is
/// held with it: dropping the last handle of a connection closes it.
pub struct QuicIo {
    recv: RecvStream,
    send: SendStream,
    _conn: Connection,
}

impl QuicIo {
    pub fn new(conn: Connection, send: SendStream, recv: RecvStream) -> QuicIo {
        QuicIo {
            recv,
            send,
            _conn: conn,
        }
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(io::Error::from)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
