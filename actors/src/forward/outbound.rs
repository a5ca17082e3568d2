//! One outgoing connection: connect, handshake, then drain the queue into
//! frames until the socket fails; then back off and start again.

use super::handshake::{self, HandshakeError};
use super::state::{Envelope, ForwardConfig, Peer, Shared, Slot};
use super::wire;
use crate::peer_tls::TLS_HINT;
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// Why a connection attempt failed.
enum ConnectError {
    Io(io::Error),
    Timeout,
    Tls(io::Error),
    Handshake(HandshakeError),
}

/// A connection to a peer, in clear text or TLS (`rpc.driver`).
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why an established connection ended.
enum End {
    ClosedByPeer,
    Io(io::Error),
    SendTimeout,
    UnexpectedData,
}

/// The connection task of slot `idx` of `peer`; runs until aborted.
pub(crate) async fn run(shared: Arc<Shared>, peer: Arc<Peer>, idx: usize) {
    let slot = peer.slots[idx].clone();
    let cfg = &shared.cfg;
    let mut failures: u32 = 0;
    loop {
        let addr = *peer.addr.lock();
        peer.stats.connect_attempts.fetch_add(1, Ordering::Relaxed);
        match connect(cfg, &peer.node, addr).await {
            Ok(stream) => {
                failures = 0;
                if !peer.stats.down_logged.swap(false, Ordering::Relaxed) {
                    tracing::debug!(peer = %peer.node, %addr, conn = idx, "forwarding connection up");
                } else {
                    tracing::info!(peer = %peer.node, %addr, "forwarding connection to peer up again");
                }
                let _up = Connected::new(&peer, &slot);
                let end = write_loop(&shared, &peer, &slot, stream).await;
                drop(_up);
                match end {
                    End::ClosedByPeer => {
                        tracing::debug!(peer = %peer.node, %addr, conn = idx, "forwarding connection closed by peer")
                    }
                    End::Io(e) => {
                        tracing::warn!(peer = %peer.node, %addr, conn = idx, "forwarding connection failed: {e}")
                    }
                    End::SendTimeout => tracing::warn!(
                        peer = %peer.node, %addr, conn = idx,
                        "forwarding connection made no write progress for {:?}; reconnecting",
                        cfg.send_timeout
                    ),
                    End::UnexpectedData => {
                        tracing::warn!(peer = %peer.node, %addr, conn = idx, "peer sent unexpected data; reconnecting")
                    }
                }
            }
            Err(e) => {
                peer.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                match e {
                    // Authentication problems are logged every time: they are
                    // configuration errors someone must see (backoff bounds the rate).
                    ConnectError::Handshake(
                        e @ (HandshakeError::Rejected | HandshakeError::BadCookie { .. }),
                    ) => {
                        tracing::warn!(peer = %peer.node, %addr, "forwarding handshake failed: {e}")
                    }
                    ConnectError::Handshake(e @ HandshakeError::WrongNode { .. }) => {
                        tracing::warn!(peer = %peer.node, %addr, "forwarding handshake failed: {e}")
                    }
                    e => {
                        let why = match e {
                            ConnectError::Io(e) => e.to_string(),
                            ConnectError::Timeout if cfg.tls.is_none() => format!(
                                "no handshake within {:?} (does the peer have rpc.driver = ssl?)",
                                cfg.handshake_timeout
                            ),
                            ConnectError::Timeout => {
                                format!("no handshake within {:?}", cfg.handshake_timeout)
                            }
                            ConnectError::Tls(e) => {
                                format!("TLS handshake failed: {e} ({TLS_HINT})")
                            }
                            ConnectError::Handshake(e) => e.to_string(),
                        };
                        // One warning per outage, not per connection and attempt.
                        if !peer.stats.down_logged.swap(true, Ordering::Relaxed) {
                            tracing::warn!(peer = %peer.node, %addr, "forwarding peer unreachable: {why}");
                        } else {
                            tracing::debug!(peer = %peer.node, %addr, conn = idx, "forwarding connect failed: {why}");
                        }
                    }
                }
            }
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(cfg, failures)).await;
    }
}

/// Marks a slot connected for as long as it lives.
struct Connected<'a> {
    peer: &'a Peer,
    slot: &'a Slot,
}

impl<'a> Connected<'a> {
    fn new(peer: &'a Peer, slot: &'a Slot) -> Self {
        slot.connected.store(true, Ordering::Relaxed);
        peer.stats.connected.fetch_add(1, Ordering::Relaxed);
        Connected { peer, slot }
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.slot.connected.store(false, Ordering::Relaxed);
        self.peer.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Delay before attempt `failures + 1`: `reconnect_min * 2^(failures-1)`
/// capped at `reconnect_max`, then a random point in its upper half.
pub(crate) fn backoff(cfg: &ForwardConfig, failures: u32) -> Duration {
    let min = cfg.reconnect_min.as_millis().max(1) as u64;
    let max = (cfg.reconnect_max.as_millis() as u64).max(min);
    let exp = min
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30))
        .min(max);
    let ms = exp / 2 + rand::random_range(0..=exp - exp / 2);
    Duration::from_millis(ms)
}

async fn connect(
    cfg: &ForwardConfig,
    expected: &str,
    addr: SocketAddr,
) -> Result<Conn, ConnectError> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectError::Io)?;
    if let Some(ip) = cfg.bind_ip {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(ConnectError::Io)?;
    }
    let t = cfg.handshake_timeout;
    let mut stream = timeout(t, sock.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    let Some(tls) = &cfg.tls else {
        timeout(
            t,
            handshake::connect(&mut stream, &cfg.node, expected, &cfg.cookie),
        )
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Handshake)?;
        return Ok(Conn::Plain(stream));
    };
    let mut stream = timeout(t, tls.connect(stream, addr))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Tls)?;
    timeout(
        t,
        handshake::connect(&mut stream, &cfg.node, expected, &cfg.cookie),
    )
    .await
    .map_err(|_| ConnectError::Timeout)?
    .map_err(ConnectError::Handshake)?;
    Ok(Conn::Tls(Box::new(stream)))
}

async fn write_loop(shared: &Shared, peer: &Peer, slot: &Slot, conn: Conn) -> End {
    match conn {
        Conn::Plain(s) => {
            let (rd, wr) = s.into_split();
            write_loop_on(shared, peer, slot, rd, wr).await
        }
        Conn::Tls(s) => {
            let (rd, wr) = tokio::io::split(*s);
            write_loop_on(shared, peer, slot, rd, wr).await
        }
    }
}

async fn write_loop_on<R, W>(shared: &Shared, peer: &Peer, slot: &Slot, mut rd: R, mut wr: W) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &shared.cfg;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<Envelope> = Vec::with_capacity(cfg.batch_max);
    let mut probe = [0u8; 64];
    loop {
        {
            let mut q = slot.queue.lock();
            let n = q.len().min(cfg.batch_max);
            batch.extend(q.drain(..n));
            peer.stats.queued.fetch_sub(n, Ordering::Relaxed);
        }
        if batch.is_empty() {
            // Idle: wait for work, and notice at once if the peer closes.
            tokio::select! {
                _ = slot.notify.notified() => continue,
                r = rd.read(&mut probe) => return match r {
                    Ok(0) => End::ClosedByPeer,
                    Ok(_) => End::UnexpectedData,
                    Err(e) => End::Io(e),
                },
            }
        }
        let mut i = 0;
        while i < batch.len() {
            buf.clear();
            wire::begin_frame(&mut buf);
            let mut count: u32 = 0;
            while i < batch.len() && buf.len() < wire::SOFT_FRAME {
                let mark = buf.len();
                wire::encode_message_to(&mut buf, &batch[i].msg, batch[i].shared.as_deref());
                if buf.len() - mark > wire::MAX_FRAME - (wire::HEADER_LEN - 4) {
                    buf.truncate(mark);
                    peer.count_dropped(shared, 1);
                    tracing::warn!(peer = %peer.node, topic = %batch[i].msg.topic, "message too large to forward, dropped");
                    i += 1;
                    continue;
                }
                if buf.len() - 4 > wire::MAX_FRAME {
                    // Does not fit behind the others: it starts the next frame.
                    buf.truncate(mark);
                    break;
                }
                count += 1;
                i += 1;
            }
            if count == 0 {
                continue;
            }
            wire::finish_frame(&mut buf, count);
            if let Err(end) = write_frame(&mut wr, &buf, cfg.send_timeout).await {
                peer.count_dropped(shared, u64::from(count));
                requeue(shared, peer, slot, &mut batch, i);
                return end;
            }
            peer.stats
                .sent
                .fetch_add(u64::from(count), Ordering::Relaxed);
            peer.stats
                .bytes_sent
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            peer.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        batch.clear();
        if buf.capacity() > 4 * wire::SOFT_FRAME {
            // Do not keep a huge buffer around after one big message.
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frame: &[u8],
    limit: Duration,
) -> Result<(), End> {
    // Flushed: a TLS stream may hold the last record until then (a no-op
    // on a plain socket).
    let sent = async {
        wr.write_all(frame).await?;
        wr.flush().await
    };
    match timeout(limit, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Io(e)),
        Err(_) => Err(End::SendTimeout),
    }
}

/// Puts the not-yet-written rest of a batch back at the head of the queue,
/// in order, for the next connection. The queue stays within its limit:
/// while the batch was out, new messages may have filled it, and the
/// newest beyond the limit are dropped (and counted).
fn requeue(shared: &Shared, peer: &Peer, slot: &Slot, batch: &mut Vec<Envelope>, from: usize) {
    let rest = batch.len() - from;
    if rest > 0 {
        let mut q = slot.queue.lock();
        for m in batch.drain(from..).rev() {
            q.push_front(m);
        }
        // `forward` keeps the queue within the limit, so at most `rest`
        // are over it.
        let keep = q
            .len()
            .min(shared.cfg.queue_limit.max(q.len().saturating_sub(rest)));
        let over = q.len() - keep;
        q.truncate(keep);
        drop(q);
        peer.stats.queued.fetch_add(rest - over, Ordering::Relaxed);
        if over > 0 {
            peer.count_dropped(shared, over as u64);
        }
    }
    batch.clear();
}
