//! The API's HTTPS port: TCP connections whose TLS handshakes run on their
//! own tasks (bounded by the handshake timeout), so one slow client never
//! holds up the accept loop; finished streams are handed to the server.

use crate::listeners::tls::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// At most this many handshakes at once; connections past it are closed.
const MAX_HANDSHAKES: usize = 256;

pub struct TlsListener {
    local: std::io::Result<SocketAddr>,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
    reload_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(l: TcpListener, tls: Arc<Tls>) -> TlsListener {
        let local = l.local_addr();
        let (tx, ready) = mpsc::channel(64);
        let reload_task = tls.watch();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accept_task = tokio::spawn(async move {
            loop {
                let (s, peer) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, not spin.
                        tracing::warn!("HTTPS API: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        "HTTPS API: {MAX_HANDSHAKES} handshakes under way, closing {peer}"
                    );
                    continue;
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let acceptor = TlsAcceptor::from(tls.config());
                    match tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(s)).await {
                        Ok(Ok(stream)) => {
                            drop(slot);
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("HTTPS API: handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("HTTPS API: handshake with {peer} timed out"),
                    }
                });
            }
        });
        TlsListener {
            local,
            ready,
            accept_task,
            reload_task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reload_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone (only when this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
