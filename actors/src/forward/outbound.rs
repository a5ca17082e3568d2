//! One outgoing connection: connect, handshake, then drain the queue into
//! frames until the socket fails; then back off and start again.

use super::handshake::{self, HandshakeError};
use super::state::{Envelope, ForwardConfig, Peer, Shared, Slot};
use super::wire;
use crate::peer_tls::TLS_HINT;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
}

/// The connection task of slot `idx` of `peer`; runs until aborted.
pub(crate) async fn run(shared: Arc<Shared>, peer: Arc<Peer>, idx: usize) {
    let slot = peer.slots[idx].clone();
    let cfg = &shared.cfg;
    let mut failures: u32 = 0;
    loop {
        let gen = peer.up_gen.load(Ordering::Relaxed);
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
                        "forwarding connection made no write progress or got no acknowledgement for {:?}; reconnecting",
                        cfg.send_timeout
                    ),
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
                            // A TLS peer waiting for our TLS handshake gives
                            // up at its own timeout: the same 5 s as ours,
                            // so its close may come first.
                            ConnectError::Io(e)
                            | ConnectError::Handshake(HandshakeError::Io(e))
                                if cfg.tls.is_none()
                                    && e.kind() == io::ErrorKind::UnexpectedEof =>
                            {
                                format!("the peer closed the connection during the handshake: {e} (does the peer have rpc.driver = ssl?)")
                            }
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
        // The backoff, cut short when the cluster sees the peer up again
        // (before or while it runs).
        let retry = peer.retry.notified();
        tokio::pin!(retry);
        retry.as_mut().enable();
        if peer.up_gen.load(Ordering::Relaxed) != gen {
            failures = 0;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(cfg, failures)) => {}
            _ = retry => failures = 0,
        }
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
        self.slot.release_waits();
        self.slot.drained.notify_waiters();
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

async fn write_loop_on<R, W>(shared: &Shared, peer: &Peer, slot: &Slot, rd: R, mut wr: W) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &shared.cfg;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<(u64, Envelope)> = Vec::with_capacity(cfg.batch_max);
    // The acknowledgements, read while this loop writes.
    let mut acks = Box::pin(read_acks(slot, rd));
    // What the last connection sent and the peer did not acknowledge goes
    // first, in order; the peer skips what it handed on already.
    let mut resend: VecDeque<(u64, Envelope)> = slot.unacked.lock().iter().cloned().collect();
    // Since when the writer waits, and how many messages were
    // unacknowledged at the last look.
    let mut waiting_since: Option<(Instant, usize)> = None;
    loop {
        batch.clear();
        if !resend.is_empty() {
            let n = resend.len().min(cfg.batch_max);
            batch.extend(resend.drain(..n));
        } else {
            let room = cfg
                .queue_limit
                .saturating_sub(slot.unacked.lock().len())
                .min(cfg.batch_max);
            let mut q = slot.queue.lock();
            let n = q.len().min(room);
            if n > 0 {
                let first = slot.next_seq.fetch_add(n as u64, Ordering::Relaxed);
                let mut u = slot.unacked.lock();
                for (k, env) in q.drain(..n).enumerate() {
                    let seq = first + k as u64;
                    u.push_back((seq, env.clone()));
                    batch.push((seq, env));
                }
                drop(u);
                drop(q);
                slot.drained.notify_waiters();
                peer.stats.queued.fetch_sub(n, Ordering::Relaxed);
                peer.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if batch.is_empty() {
            // Idle, or the peer has not acknowledged `queue_limit` messages:
            // wait for work or an acknowledgement, and notice at once if the
            // peer closes. A peer that acknowledges nothing for
            // `send_timeout` while messages wait is reconnected.
            let unacked = slot.unacked.lock().len();
            let pending = unacked > 0;
            // An acknowledgement since the last look is progress.
            let since = match waiting_since {
                Some((t, n)) if n <= unacked => t,
                _ => Instant::now(),
            };
            waiting_since = Some((since, unacked));
            if pending && since.elapsed() >= cfg.send_timeout {
                return End::SendTimeout;
            }
            let wait = if pending {
                cfg.send_timeout.saturating_sub(since.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = slot.notify.notified() => {}
                end = &mut acks => return end,
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        waiting_since = None;
        let mut i = 0;
        while i < batch.len() {
            buf.clear();
            wire::begin_frame(&mut buf, slot.stream, batch[i].0);
            let mut count: u32 = 0;
            while i < batch.len() && buf.len() < wire::SOFT_FRAME {
                // Numbers in a frame are consecutive: a message dropped as
                // too large ends the frame, and the peer sees a gap.
                if count > 0 && batch[i].0 != batch[i - 1].0 + 1 {
                    break;
                }
                let mark = buf.len();
                let (_, env) = &batch[i];
                wire::encode_message_to(&mut buf, &env.msg, env.shared.as_deref());
                if buf.len() - mark > wire::MAX_FRAME - (wire::HEADER_LEN - 4) {
                    buf.truncate(mark);
                    peer.count_dropped(shared, 1);
                    tracing::warn!(peer = %peer.node, topic = %env.msg.topic, "message too large to forward, dropped");
                    let seq = batch[i].0;
                    slot.unacked.lock().retain(|(s, _)| *s != seq);
                    i += 1;
                    if count == 0 && i < batch.len() {
                        buf.clear();
                        wire::begin_frame(&mut buf, slot.stream, batch[i].0);
                        continue;
                    }
                    break;
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
            tokio::select! {
                r = write_frame(&mut wr, &buf, cfg.send_timeout) => {
                    if let Err(end) = r {
                        // Kept in `unacked`: sent again on the next connection.
                        return end;
                    }
                }
                end = &mut acks => return end,
            }
            peer.stats
                .bytes_sent
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            peer.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        if buf.capacity() > 4 * wire::SOFT_FRAME {
            // Do not keep a huge buffer around after one big message.
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

/// Reads the peer's acknowledgements until the connection ends: each one
/// releases what it covers and wakes the writer.
async fn read_acks<R: AsyncRead + Unpin>(slot: &Slot, mut rd: R) -> End {
    let mut ack = [0u8; wire::ACK_LEN];
    loop {
        match rd.read_exact(&mut ack).await {
            Ok(_) => {
                if slot.acked(u64::from_be_bytes(ack)) > 0 {
                    slot.notify.notify_one();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return End::ClosedByPeer,
            Err(e) => return End::Io(e),
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
