//! The listener: accepts connections, runs each handshake in its own task
//! with a timeout, then reads frames and hands their messages to
//! `on_receive`.

use super::handshake::{self, HandshakeError};
use super::state::{OnReceive, Shared, StreamState};
use super::wire::{self, DecodeError};
use crate::peer_tls::TLS_HINT;
use bytes::{Buf, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, on_receive: OnReceive) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared.inbound_tasks.spawn(connection(
                    shared.clone(),
                    stream,
                    addr,
                    on_receive.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("forwarding listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts an inbound connection as up for as long as it lives.
struct Up<'a>(&'a Shared);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.inbound.fetch_sub(1, Ordering::Relaxed);
    }
}

enum End {
    Closed,
    Io(io::Error),
    TooLarge(usize),
    Malformed(DecodeError),
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    on_receive: OnReceive,
) {
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    let Some(tls) = &cfg.tls else {
        return serve(&shared, stream, addr, &on_receive).await;
    };
    match timeout(cfg.handshake_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => serve(&shared, s, addr, &on_receive).await,
        Ok(Err(e)) => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, "inbound forwarding connection refused: TLS handshake failed: {e} ({TLS_HINT})");
        }
        Err(_) => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, "inbound forwarding connection refused: no TLS handshake within {:?} (a peer without rpc.driver = ssl?)", cfg.handshake_timeout);
        }
    }
}

/// The cookie handshake, then the frames, on a plain or TLS stream.
async fn serve<S>(shared: &Arc<Shared>, mut stream: S, addr: SocketAddr, on_receive: &OnReceive)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &shared.cfg;
    let peer = match timeout(
        cfg.handshake_timeout,
        handshake::accept(&mut stream, &cfg.node, &cfg.cookie),
    )
    .await
    {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            match e {
                HandshakeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%addr, "forwarding connection closed during handshake")
                }
                e => tracing::warn!(%addr, "inbound forwarding handshake failed: {e}"),
            }
            return;
        }
        Err(_) => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, "inbound forwarding handshake timed out after {:?}", cfg.handshake_timeout);
            return;
        }
    };
    shared.inbound.fetch_add(1, Ordering::Relaxed);
    let _up = Up(shared);
    tracing::debug!(%addr, %peer, "inbound forwarding connection up");
    let received = shared.received_counter(&peer);
    match read_loop(shared, on_receive, &peer, &received, stream).await {
        End::Closed => tracing::debug!(%addr, %peer, "inbound forwarding connection closed"),
        End::Io(e) => tracing::debug!(%addr, %peer, "inbound forwarding connection failed: {e}"),
        End::TooLarge(n) => {
            shared.malformed_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, %peer, "frame of {n} bytes exceeds the {} byte limit; closing", wire::MAX_FRAME)
        }
        End::Malformed(e) => {
            shared.malformed_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, %peer, "malformed forwarding frame: {e}; closing")
        }
    }
}

async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    on_receive: &OnReceive,
    peer: &str,
    received: &std::sync::atomic::AtomicU64,
    stream: S,
) -> End {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The stream of this connection (one per connection in practice).
    let mut stream_state: Option<(u64, Arc<parking_lot::Mutex<StreamState>>)> = None;
    loop {
        // Hand over every complete frame in the buffer, then acknowledge.
        let mut to_ack = None;
        let mut written: Option<crate::durable::Ticket> = None;
        // The seq of the last message whose write carries its stream's
        // position (the node journaled it, see `Journal::record_at`).
        let mut written_to = 0u64;
        let mut congested = None;
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > wire::MAX_FRAME {
                return End::TooLarge(len);
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                break;
            }
            buf.advance(4);
            let body = buf.split_to(len).freeze();
            let frame = match wire::decode_frame(body) {
                Ok(f) => f,
                Err(e) => return End::Malformed(e),
            };
            let count = frame.msgs.len() as u64;
            let state = match &stream_state {
                Some((id, s)) if *id == frame.stream => s.clone(),
                _ => {
                    let s = shared.stream(frame.stream);
                    stream_state = Some((frame.stream, s.clone()));
                    s
                }
            };
            let mut st = state.lock();
            let skip = st.accept(frame.first_seq, count);
            let first = frame.first_seq + skip;
            for (i, (m, target)) in frame.msgs.into_iter().skip(skip as usize).enumerate() {
                let seq = first + i as u64;
                let (t, c) = on_receive(peer, m, target, (frame.stream, seq));
                if let Some(t) = t {
                    written_to = seq;
                    // Not the last alone: a write to the node's disk
                    // completes in order, but one that also waits for the
                    // cluster's session store (`builtin_raft`) waits for
                    // that session's shard, which others do not cover.
                    written = Some(match written.take() {
                        Some(w) => w.and(t),
                        None => t,
                    });
                }
                if congested.is_none() {
                    congested = c;
                }
            }
            let last = st.last;
            drop(st);
            if skip > 0 {
                shared.duplicates.fetch_add(skip, Ordering::Relaxed);
            }
            let n = count - skip;
            received.fetch_add(n, Ordering::Relaxed);
            shared.received_total.fetch_add(n, Ordering::Relaxed);
            to_ack = Some(last);
        }
        if let (Some(_), Some((stream, state))) = (&written, &stream_state) {
            // What was handed on is on disk: so is how far it went. Each
            // write already carries the position of its message; only
            // messages after the last one written move it further.
            let last = state.lock().last;
            if last > written_to {
                let keep = shared.keep.read().clone();
                if let (Some(keep), Some(w)) = (keep, written.take()) {
                    written = Some(w.and(keep(*stream, last)));
                }
            }
        }
        if let Some(t) = written {
            if let Err(e) = t.wait().await {
                tracing::error!(%peer, "forwarded messages for persistent sessions not on disk: {e}");
            }
        }
        if let Some(last) = to_ack {
            let ack = last.to_be_bytes();
            // Flushed: a TLS stream holds the record until then.
            if let Err(e) = async {
                wr.write_all(&ack).await?;
                wr.flush().await
            }
            .await
            {
                return End::Io(e);
            }
        }
        if let Some(wait) = congested {
            // A subscriber here is behind: read nothing more from this
            // node until it catches up (or is found stopped).
            wait.await;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return End::Closed,
            Ok(_) => {}
            Err(e) => return End::Io(e),
        }
    }
}
