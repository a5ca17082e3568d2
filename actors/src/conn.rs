//! One client connection: a tokio task that owns the socket.
//!
//! It reads and decodes packets, enforces the CONNECT timeout and the
//! keepalive, and writes the bytes the session actor hands it. The session
//! actor (not this task) holds all protocol state, so a connection is cheap
//! and a session can outlive it. Reading pauses while too many bytes wait
//! to be written, which bounds memory for a client that stops reading.

use crate::cm::Cm;
use crate::codec::{self, DecodeError};
use crate::inbox::Inbox;
use crate::metrics::{add, inc, Stats};
use crate::packet::*;
use crate::session::{CloseCause, SessionMsg};
use crate::Ctx;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use ractor::ActorRef;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};

/// Commands from the session actor to its connection task.
#[derive(Debug)]
pub enum ConnCmd {
    Write(Bytes),
    /// Flush what was queued, then close the socket.
    Close,
}

/// A throttled publisher's reading resumes when the subscriber it waits
/// for has taken nothing from its inbox for this long: a stalled
/// subscriber must not stop its publishers for good (its inbox then fills
/// and drops, counted).
const STALLED: Duration = Duration::from_secs(1);

/// Packets read and handed to the session but not yet handled by it,
/// beyond which reading pauses: the session's mailbox stays short, and a
/// throttle takes effect within this many packets.
const MAX_INBOUND: usize = 32;

/// What the session and the connection task share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes queued and not yet written.
    pending: AtomicUsize,
    /// A subscriber's inbox this client's publishes filled past its
    /// high-water mark: reading pauses until it drains.
    throttle: Mutex<Option<Arc<Inbox>>>,
    /// Set with `throttle`, so the reader checks a flag, not a lock.
    throttle_set: AtomicBool,
    /// Packets handed to the session and not yet handled.
    inbound: AtomicUsize,
    /// The session caught up with `inbound`.
    inbound_wake: Notify,
}

/// The session actor's handle on a live connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    tx: mpsc::UnboundedSender<ConnCmd>,
    shared: Arc<Shared>,
}

impl ConnHandle {
    /// Queues an encoded packet; false if the connection is gone.
    pub fn write(&self, b: Bytes) -> bool {
        self.shared.pending.fetch_add(b.len(), Ordering::Relaxed);
        self.tx.send(ConnCmd::Write(b)).is_ok()
    }

    /// Pauses reading from this client until `inbox` (a subscriber its
    /// QoS 1/2 messages go to) drains to its low-water mark, or stops
    /// draining for [`STALLED`]. Back-pressure: the client's own TCP
    /// window then slows it down, instead of the subscriber's queue
    /// overflowing. Takes effect before the next packet is decoded.
    pub fn throttle(&self, inbox: Arc<Inbox>) {
        *self.shared.throttle.lock() = Some(inbox);
        self.shared.throttle_set.store(true, Ordering::Release);
    }

    /// The session handled one packet of this connection.
    pub fn inbound_done(&self) {
        let prev = self.shared.inbound.fetch_sub(1, Ordering::AcqRel);
        if prev == MAX_INBOUND / 2 + 1 {
            self.shared.inbound_wake.notify_one();
        }
    }

    pub fn close(&self) {
        let _ = self.tx.send(ConnCmd::Close);
    }

    /// Bytes waiting to be written to the socket.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted socket until it closes.
pub async fn serve<S>(stream: S, peer: SocketAddr, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = ctx.broker.stats.clone();
    Stats::add(&stats.live_connections, None, 1);
    run(stream, peer, ctx).await;
    Stats::add(&stats.live_connections, None, -1);
}

async fn run<S>(stream: S, peer: SocketAddr, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = ctx.settings.clone();
    let metrics = ctx.broker.metrics.clone();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(1024);
    let max = settings.max_packet_size;

    // 1. CONNECT, within idle_timeout.
    let first = timeout(
        settings.idle_timeout,
        read_packet(&mut rd, &mut rbuf, None, max),
    )
    .await;
    let connect = match first {
        Err(_) => {
            tracing::info!(%peer, "closing connection: no CONNECT within {:?}", settings.idle_timeout);
            return;
        }
        Ok(Err(ReadErr::Io)) => return,
        Ok(Err(ReadErr::Decode(e))) => {
            inc(&metrics.packets_malformed);
            tracing::info!(%peer, "closing connection: bad first packet: {e}");
            if let DecodeError::UnsupportedProtocol { level, .. } = &e {
                // Answer in the version the client can read (MQTT 5.0 3.1.2.2).
                let (v, code) = if *level == 5 {
                    (ProtocolVersion::V5, reason::UNSUPPORTED_PROTOCOL_VERSION)
                } else {
                    (ProtocolVersion::V4, reason::UNSUPPORTED_PROTOCOL_VERSION)
                };
                let _ = write_packet(&mut wr, &connack_err(code), v).await;
            }
            let _ = wr.shutdown().await;
            return;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            tracing::info!(%peer, "closing connection: {} before CONNECT", other.kind());
            return;
        }
    };
    inc(&metrics.packets_connect);
    let version = connect.protocol;
    if let Err((code, why)) = crate::channel::check_connect(&connect, &settings) {
        tracing::info!(%peer, client_id = %connect.client_id, "CONNECT refused: {why}");
        inc(&metrics.packets_connack_error);
        let _ = write_packet(&mut wr, &connack_err(code), version).await;
        let _ = wr.shutdown().await;
        return;
    }
    let keepalive = crate::channel::effective_keepalive(&connect, &settings);
    let ka_timeout = crate::channel::keepalive_timeout(keepalive, &settings);

    // 2. Hand the connection to a session (new, resumed or taken over).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let handle = ConnHandle {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        peer,
        tx,
        shared: shared.clone(),
    };
    let pending = &shared.pending;
    let inbox_cap = ctx.broker.settings.max_session_backlog;
    let conn_id = handle.id;
    // Boxed: `Cm::open` (locks, takeover, actor spawn) is a large future,
    // and an await inline would size this task's state for it for the
    // whole life of the connection.
    let session: ActorRef<SessionMsg> = match Box::pin(Cm::open(&ctx, connect, handle)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "could not open a session: {e}");
            let _ = write_packet(&mut wr, &connack_err(reason::SERVER_UNAVAILABLE), version).await;
            return;
        }
    };

    // 3. Read packets and write what the session sends, until either side closes.
    let mut deadline = ka_timeout.map(|d| Instant::now() + d);
    // The write buffer grows on the first write and is dropped again after
    // a large one, so an idle connection holds none.
    let mut out = Vec::new();
    let mut throttled: Option<Arc<Inbox>> = None;
    // Complete packets may wait in `rbuf`: decoding stops early when the
    // session falls behind or a throttle is set.
    let mut buffered = false;
    let cause = loop {
        if throttled.is_none() && shared.throttle_set.swap(false, Ordering::AcqRel) {
            if let Some(ib) = shared.throttle.lock().take() {
                inc(&metrics.client_throttled);
                throttled = Some(ib);
            }
        }
        let busy = shared.inbound.load(Ordering::Acquire) >= MAX_INBOUND;
        let hold = throttled.is_some() || busy;
        if buffered && !hold {
            let mut err = None;
            buffered = false;
            loop {
                if shared.inbound.load(Ordering::Acquire) >= MAX_INBOUND
                    || shared.throttle_set.load(Ordering::Acquire)
                {
                    buffered = true;
                    break;
                }
                match codec::decode(&mut rbuf, Some(version), max) {
                    Ok(Some(p)) => {
                        inc(&metrics.packets_received);
                        shared.inbound.fetch_add(1, Ordering::AcqRel);
                        if session
                            .cast(SessionMsg::Inbound(conn_id, Box::new(p)))
                            .is_err()
                        {
                            err = Some(CloseCause::Closed);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        inc(&metrics.packets_malformed);
                        err = Some(CloseCause::Decode(e));
                        break;
                    }
                }
            }
            if let Some(c) = err {
                break c;
            }
            if !buffered && rbuf.capacity() > 64 * 1024 && rbuf.is_empty() {
                rbuf = BytesMut::with_capacity(1024);
            }
            continue;
        }
        let paused =
            hold || buffered || pending.load(Ordering::Relaxed) > settings.max_pending_write;
        tokio::select! {
            biased;
            cmd = rx.recv() => match cmd {
                Some(ConnCmd::Write(b)) => {
                    out.clear();
                    let mut n = b.len();
                    // A lone buffer (a session's whole batch) is written as
                    // it is; several queued ones are joined into one write.
                    let mut lone = Some(b);
                    let mut close = false;
                    while out.len() < 64 * 1024 {
                        match rx.try_recv() {
                            Ok(ConnCmd::Write(b)) => {
                                if let Some(first) = lone.take() {
                                    out.extend_from_slice(&first);
                                }
                                n += b.len();
                                out.extend_from_slice(&b);
                            }
                            Ok(ConnCmd::Close) => { close = true; break; }
                            Err(_) => break,
                        }
                    }
                    let buf: &[u8] = match &lone {
                        Some(b) => b,
                        None => &out,
                    };
                    match timeout(settings.send_timeout, wr.write_all(buf)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break CloseCause::SocketError,
                        Err(_) => break CloseCause::SendTimeout,
                    }
                    pending.fetch_sub(n, Ordering::Relaxed);
                    add(&metrics.bytes_sent, n as u64);
                    if out.capacity() > 16 * 1024 {
                        out = Vec::new();
                    }
                    if close {
                        let _ = wr.shutdown().await;
                        linger(&mut rd).await;
                        return;
                    }
                }
                Some(ConnCmd::Close) | None => {
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                    linger(&mut rd).await;
                    return;
                }
            },
            _ = drained(&throttled, inbox_cap), if throttled.is_some() => throttled = None,
            _ = shared.inbound_wake.notified(), if busy => {}
            r = rd.read_buf(&mut rbuf), if !paused => match r {
                Ok(0) | Err(_) => break CloseCause::Closed,
                Ok(n) => {
                    add(&metrics.bytes_received, n as u64);
                    if let Some(d) = ka_timeout {
                        deadline = Some(Instant::now() + d);
                    }
                    buffered = true;
                }
            },
            _ = sleep_until(deadline) => break CloseCause::KeepaliveTimeout,
        }
    };
    // Tell the session; it may still want to write a DISCONNECT.
    let _ = session.cast(SessionMsg::ConnClosed(conn_id, cause.clone()));
    if matches!(cause, CloseCause::Decode(_) | CloseCause::KeepaliveTimeout) {
        // Give the session a moment to queue its DISCONNECT, then flush it.
        let grace = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(cmd)) = tokio::time::timeout_at(grace, rx.recv()).await {
            match cmd {
                ConnCmd::Write(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                ConnCmd::Close => break,
            }
        }
    }
    let _ = wr.shutdown().await;
    if !matches!(cause, CloseCause::Closed | CloseCause::SocketError) {
        linger(&mut rd).await;
    }
}

/// After the server closes its side, reads and discards what the client
/// still sends until it closes too (or 2 s pass). Closing a socket with
/// unread data makes the kernel send RST, and a client still writing (a
/// PUBREL after our DISCONNECT, say) would see a reset instead of a clean
/// close and might lose our DISCONNECT.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let deadline = Instant::now() + Duration::from_secs(2);
    // On the heap: a stack array here would be part of the connection
    // task's state (4 KB) for the whole life of every connection.
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// Waits until a throttling inbox drains, or stops draining.
async fn drained(t: &Option<Arc<Inbox>>, cap: usize) {
    if let Some(ib) = t {
        ib.wait_drained(cap, STALLED).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn connack_err(code: u8) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: Properties::default(),
    })
}

enum ReadErr {
    Io,
    Decode(DecodeError),
}

async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max: usize,
) -> Result<Packet, ReadErr> {
    loop {
        match codec::decode(buf, version, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(ReadErr::Decode(e)),
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadErr::Io),
            Ok(_) => {}
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    p: &Packet,
    v: ProtocolVersion,
) -> std::io::Result<()> {
    let mut b = BytesMut::new();
    codec::encode(p, v, &mut b);
    w.write_all(&b).await?;
    w.flush().await
}
