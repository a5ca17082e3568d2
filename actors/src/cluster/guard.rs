//! The inter-node listener with a handshake timeout.
//!
//! ractor_cluster keeps an unauthenticated connection forever: a socket
//! that connects to the inter-node port and says nothing holds a session
//! open indefinitely. So the node accepts inter-node connections itself,
//! hands each to the node server as an external stream, and closes any
//! stream whose cookie handshake has not completed within the timeout.
//! Authentication is reported by the node server's session events, keyed by
//! the peer's address.

use crate::peer_tls::TLS_HINT;
use parking_lot::Mutex;
use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Connections accepted and not yet authenticated, by peer address.
static PENDING: LazyLock<Mutex<HashMap<String, Arc<Gate>>>> = LazyLock::new(Default::default);

/// Shared between a guarded stream and its timer.
#[derive(Default)]
struct Gate {
    authenticated: AtomicBool,
    expired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Called from the node server's `authenticated` event.
pub fn authenticated(peer_addr: &str) {
    if let Some(g) = PENDING.lock().remove(peer_addr) {
        g.authenticated.store(true, Ordering::Release);
    }
}

struct GuardedRead {
    inner: BoxRead,
    gate: Arc<Gate>,
}

impl AsyncRead for GuardedRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.gate.expired.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "inter-node handshake not completed in time",
            )));
        }
        if !self.gate.authenticated.load(Ordering::Acquire) {
            *self.gate.waker.lock() = Some(cx.waker().clone());
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// An accepted inter-node stream, in clear text or TLS.
enum Accepted {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

struct Guarded {
    stream: Accepted,
    peer: SocketAddr,
    local: SocketAddr,
    gate: Arc<Gate>,
}

impl ClusterBidiStream for Guarded {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w): (BoxRead, BoxWrite) = match self.stream {
            Accepted::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Accepted::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        };
        (
            Box::new(GuardedRead {
                inner: r,
                gate: self.gate,
            }),
            w,
        )
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local.to_string())
    }
}

/// A TLS connection this node opened to a peer.
pub struct TlsClient {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl ClusterBidiStream for TlsClient {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self.stream);
        (Box::new(r), Box::new(w))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local.to_string())
    }
}

/// Accepts inter-node connections on `listener` forever, handing each to
/// the node server and closing it if it has not authenticated in `timeout`
/// (the TLS handshake, with `tls`, included).
pub async fn accept_loop(
    listener: TcpListener,
    node_server: ActorRef<NodeServerMessage>,
    timeout: Duration,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("inter-node listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let gate = Arc::new(Gate::default());
        PENDING.lock().insert(peer.to_string(), gate.clone());
        let g = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            // Already closed (a failed TLS handshake, logged there).
            if g.expired.load(Ordering::Acquire) {
                return;
            }
            if !g.authenticated.load(Ordering::Acquire) {
                PENDING.lock().remove(&peer.to_string());
                tracing::warn!(%peer, "closing inter-node connection: no cookie handshake within {timeout:?}");
                g.expired.store(true, Ordering::Release);
                if let Some(w) = g.waker.lock().take() {
                    w.wake();
                }
            }
        });
        let Some(acceptor) = tls.clone() else {
            let s = Guarded {
                stream: Accepted::Plain(stream),
                peer,
                local,
                gate,
            };
            if !hand_over(&node_server, s) {
                return;
            }
            continue;
        };
        // The handshake in its own task: a peer that never finishes it
        // must not hold up the others.
        let ns = node_server.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let s = Guarded {
                        stream: Accepted::Tls(Box::new(s)),
                        peer,
                        local,
                        gate,
                    };
                    hand_over(&ns, s);
                }
                Ok(Err(e)) => {
                    PENDING.lock().remove(&peer.to_string());
                    gate.expired.store(true, Ordering::Release);
                    tracing::warn!(%peer, "inter-node connection refused: TLS handshake failed: {e} ({TLS_HINT})");
                }
                Err(_) => {
                    PENDING.lock().remove(&peer.to_string());
                    gate.expired.store(true, Ordering::Release);
                    tracing::warn!(%peer, "inter-node connection refused: no TLS handshake within {timeout:?} (a peer with cluster.proto_dist = inet_tcp?)");
                }
            }
        });
    }
}

fn hand_over(node_server: &ActorRef<NodeServerMessage>, s: Guarded) -> bool {
    node_server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(s),
            is_server: true,
        })
        .is_ok()
}
