//! One client connection: a tokio task that owns the socket.
//!
//! It reads and decodes packets, enforces the CONNECT timeout and the
//! keepalive, and writes the bytes the session actor hands it. The session
//! actor (not this task) holds all protocol state, so a connection is cheap
//! and a session can outlive it. Reading pauses while too many bytes wait
//! to be written (a client that stops reading), while the session has not
//! caught up with what was read, and while the client is throttled for
//! filling a subscriber's inbox (see `docs/architecture.md`, flow control).

use crate::cm::Cm;
use crate::inbox::Inbox;
use crate::metrics::{add, inc, Stats};
use crate::session::{CloseCause, SessionMsg};
use crate::Ctx;
use bytes::{Bytes, BytesMut};
use emqx_mqtt::codec::{self, DecodeError};
use emqx_mqtt::packet::*;
use parking_lot::Mutex;
use ractor::ActorRef;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

/// Commands from the session actor to its connection task.
#[derive(Debug)]
pub enum ConnCmd {
    Write(Bytes),
    /// Flush what was queued, then close the socket.
    Close,
}

/// The session actor's handle on a live connection.
#[derive(Debug)]
pub struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    /// The mount point template of the listener the client came through.
    pub mountpoint: Option<Arc<str>>,
    out: Arc<Outbox>,
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

/// What a session and its connection task share: the queue from the
/// session to the task (a locked deque that holds memory only while
/// commands wait, and a `Notify`; a tokio unbounded mpsc allocates about
/// 1.5 KB up front per connection) and the flow-control state.
#[derive(Debug, Default)]
struct Outbox {
    /// Bytes queued and not yet written.
    pending: AtomicUsize,
    state: Mutex<OutboxState>,
    notify: Notify,
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

#[derive(Debug, Default)]
struct OutboxState {
    cmds: VecDeque<ConnCmd>,
    /// Live `ConnHandle`s: the connection ends when the last one is dropped.
    handles: usize,
    /// The connection task is gone: nothing more is queued.
    closed: bool,
}

impl Outbox {
    /// Queues a command; false if the connection task is gone.
    fn push(&self, cmd: ConnCmd) -> bool {
        {
            let mut s = self.state.lock();
            if s.closed {
                return false;
            }
            s.cmds.push_back(cmd);
        }
        self.notify.notify_one();
        true
    }

    /// The next queued command, if any. The deque's memory is freed once
    /// it is empty, so an idle connection holds none.
    fn try_recv(&self) -> Option<ConnCmd> {
        let mut s = self.state.lock();
        let cmd = s.cmds.pop_front();
        if cmd.is_some() && s.cmds.is_empty() {
            s.cmds = VecDeque::new();
        }
        cmd
    }

    /// The next command; None once every `ConnHandle` is dropped and the
    /// queue is empty. Cancel-safe: nothing is taken before it returns.
    async fn recv(&self) -> Option<ConnCmd> {
        loop {
            {
                let mut s = self.state.lock();
                if let Some(cmd) = s.cmds.pop_front() {
                    if s.cmds.is_empty() {
                        s.cmds = VecDeque::new();
                    }
                    return Some(cmd);
                }
                if s.handles == 0 {
                    return None;
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between the check above and this await is not missed.
            self.notify.notified().await;
        }
    }
}

/// The connection task's end of an [`Outbox`]: when the task ends, later
/// writes fail and what was queued is dropped.
struct ConnEnd(Arc<Outbox>);

impl std::ops::Deref for ConnEnd {
    type Target = Outbox;
    fn deref(&self) -> &Outbox {
        &self.0
    }
}

impl Drop for ConnEnd {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.closed = true;
        s.cmds = VecDeque::new();
    }
}

impl Clone for ConnHandle {
    fn clone(&self) -> Self {
        self.out.state.lock().handles += 1;
        ConnHandle {
            id: self.id,
            peer: self.peer,
            mountpoint: self.mountpoint.clone(),
            out: self.out.clone(),
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        let last = {
            let mut s = self.out.state.lock();
            s.handles -= 1;
            s.handles == 0
        };
        if last {
            self.out.notify.notify_one();
        }
    }
}

impl ConnHandle {
    /// A new connection's handle and the connection task's end of it.
    fn new(id: u64, peer: SocketAddr, mountpoint: Option<Arc<str>>) -> (ConnHandle, ConnEnd) {
        let out = Arc::new(Outbox::default());
        out.state.lock().handles = 1;
        (
            ConnHandle {
                id,
                peer,
                mountpoint,
                out: out.clone(),
            },
            ConnEnd(out),
        )
    }

    /// Queues an encoded packet; false if the connection is gone.
    pub fn write(&self, b: Bytes) -> bool {
        self.out.pending.fetch_add(b.len(), Ordering::Relaxed);
        self.out.push(ConnCmd::Write(b))
    }

    pub fn close(&self) {
        let _ = self.out.push(ConnCmd::Close);
    }

    /// Bytes waiting to be written to the socket.
    pub fn pending(&self) -> usize {
        self.out.pending.load(Ordering::Relaxed)
    }

    /// Pauses reading from this client until `inbox` (a subscriber its
    /// QoS 1/2 messages go to) drains to its low-water mark, or stops
    /// draining for [`STALLED`]. Back-pressure: the client's own TCP
    /// window then slows it down, instead of the subscriber's queue
    /// overflowing. Takes effect before the next packet is decoded.
    pub fn throttle(&self, inbox: Arc<Inbox>) {
        *self.out.throttle.lock() = Some(inbox);
        self.out.throttle_set.store(true, Ordering::Release);
    }

    /// The session handled one packet of this connection.
    pub fn inbound_done(&self) {
        let prev = self.out.inbound.fetch_sub(1, Ordering::AcqRel);
        if prev == MAX_INBOUND / 2 + 1 {
            self.out.inbound_wake.notify_one();
        }
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted socket until it closes. `mountpoint` is the
/// listener's mount point template (EMQX's `listeners.*.*.mountpoint`).
pub async fn serve<S>(stream: S, peer: SocketAddr, ctx: Arc<Ctx>, mountpoint: Option<Arc<str>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = ctx.broker.stats.clone();
    Stats::add(&stats.live_connections, None, 1);
    run(stream, peer, ctx, mountpoint).await;
    Stats::add(&stats.live_connections, None, -1);
}

/// A connection whose CONNECT was accepted and handed to a session.
struct Opened {
    session: ActorRef<SessionMsg>,
    conn_id: u64,
    version: ProtocolVersion,
    ka_timeout: Option<Duration>,
    rx: ConnEnd,
}

async fn run<S>(stream: S, peer: SocketAddr, ctx: Arc<Ctx>, mountpoint: Option<Arc<str>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = ctx.settings.clone();
    let metrics = ctx.broker.metrics.clone();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(1024);
    let max = settings.max_packet_size;

    // Boxed: the CONNECT phase holds decoded packets and the session open
    // (several KB of future state), which an inline await would make part
    // of this task's state for the whole life of the connection.
    let Some(Opened {
        session,
        conn_id,
        version,
        ka_timeout,
        rx,
    }) = Box::pin(open(&mut rd, &mut wr, &mut rbuf, peer, &ctx, mountpoint)).await
    else {
        return;
    };

    // 3. Read packets and write what the session sends, until either side closes.
    let mut deadline = ka_timeout.map(|d| Instant::now() + d);
    // The write buffer grows on the first write and is dropped again after
    // a large one, so an idle connection holds none.
    let mut out = Vec::new();
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    let inbox_cap = ctx.broker.settings.max_session_backlog;
    // While throttled: the wait for the subscriber's inbox to drain, boxed
    // (it holds a timer) so an unthrottled connection does not carry it.
    let mut throttled: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    // Complete packets may wait in `rbuf`: decoding stops early when the
    // session falls behind or a throttle is set, and packets the client
    // sent right behind its CONNECT may have come in the same read.
    let mut buffered = !rbuf.is_empty();
    let cause = loop {
        // A plain load first: the swap writes the flag's cache line, and this
        // runs on every turn of the loop.
        if throttled.is_none()
            && rx.throttle_set.load(Ordering::Acquire)
            && rx.throttle_set.swap(false, Ordering::AcqRel)
        {
            if let Some(ib) = rx.throttle.lock().take() {
                inc(&metrics.client_throttled);
                throttled = Some(Box::pin(async move {
                    ib.wait_drained(inbox_cap, STALLED).await;
                }));
            }
        }
        let busy = rx.inbound.load(Ordering::Acquire) >= MAX_INBOUND;
        let hold = throttled.is_some() || busy;
        if buffered && !hold {
            let mut err = None;
            buffered = false;
            loop {
                if rx.inbound.load(Ordering::Acquire) >= MAX_INBOUND
                    || rx.throttle_set.load(Ordering::Acquire)
                {
                    buffered = true;
                    break;
                }
                match codec::decode(&mut rbuf, Some(version), max) {
                    Ok(Some(p)) => {
                        inc(&metrics.packets_received);
                        rx.inbound.fetch_add(1, Ordering::AcqRel);
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
            if rbuf.is_empty() {
                // Nothing partial is left: free the buffer, so an idle
                // connection holds none (see `read_some`).
                rbuf = BytesMut::new();
            }
            continue;
        }
        let paused =
            hold || buffered || rx.pending.load(Ordering::Relaxed) > settings.max_pending_write;
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
                            Some(ConnCmd::Write(b)) => {
                                if let Some(first) = lone.take() {
                                    out.extend_from_slice(&first);
                                }
                                n += b.len();
                                out.extend_from_slice(&b);
                            }
                            Some(ConnCmd::Close) => { close = true; break; }
                            None => break,
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
                    rx.pending.fetch_sub(n, Ordering::Relaxed);
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
            _ = wait_opt(&mut throttled), if throttled.is_some() => throttled = None,
            _ = rx.inbound_wake.notified(), if busy => {}
            r = read_some(&mut rd, &mut rbuf), if !paused => match r {
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

/// Reads the CONNECT (within `idle_timeout`), checks it and opens the
/// session; None when the connection is to be closed (already answered).
async fn open<R, W>(
    rd: &mut R,
    wr: &mut W,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    mountpoint: Option<Arc<str>>,
) -> Option<Opened>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let settings = &ctx.settings;
    let metrics = &ctx.broker.metrics;
    let max = settings.max_packet_size;

    // 1. CONNECT, within idle_timeout.
    let first = timeout(settings.idle_timeout, read_packet(rd, rbuf, None, max)).await;
    let connect = match first {
        Err(_) => {
            tracing::info!(%peer, "closing connection: no CONNECT within {:?}", settings.idle_timeout);
            return None;
        }
        Ok(Err(ReadErr::Io)) => return None,
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
                let _ = write_packet(wr, connack_err(code), v, None).await;
            }
            let _ = wr.shutdown().await;
            return None;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            tracing::info!(%peer, "closing connection: {} before CONNECT", other.kind());
            return None;
        }
    };
    inc(&metrics.packets_connect);
    let version = connect.protocol;
    let client_max = connect.properties.maximum_packet_size;
    if let Err((code, why)) = emqx_mqtt::channel::check_connect(&connect, settings) {
        tracing::info!(%peer, client_id = %connect.client_id, "CONNECT refused: {why}");
        inc(&metrics.packets_connack_error);
        let _ = write_packet(wr, connack_err(code), version, client_max).await;
        let _ = wr.shutdown().await;
        return None;
    }
    let keepalive = emqx_mqtt::channel::effective_keepalive(&connect, settings);
    let ka_timeout = emqx_mqtt::channel::keepalive_timeout(keepalive, settings);

    // 2. Hand the connection to a session (new, resumed or taken over).
    let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (handle, rx) = ConnHandle::new(conn_id, peer, mountpoint);
    let session: ActorRef<SessionMsg> = match Box::pin(Cm::open(ctx, *connect, handle)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "could not open a session: {e}");
            let _ = write_packet(
                wr,
                connack_err(reason::SERVER_UNAVAILABLE),
                version,
                client_max,
            )
            .await;
            return None;
        }
    };
    Some(Opened {
        session,
        conn_id,
        version,
        ka_timeout,
        rx,
    })
}

/// Reads what is available into `buf`. With a partial packet in `buf` it
/// reads straight into it; with an empty `buf` (the usual case between
/// packets, and always while idle) it reads into a buffer on the stack of
/// this poll and copies only the bytes read to the heap, so a connection
/// waiting for its next packet holds no read buffer.
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    if !buf.is_empty() {
        // A partial packet: read the rest in large steps.
        buf.reserve(4096);
        return rd.read_buf(buf).await;
    }
    std::future::poll_fn(|cx| {
        let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut rb = tokio::io::ReadBuf::uninit(&mut tmp);
        std::task::ready!(std::pin::Pin::new(&mut *rd).poll_read(cx, &mut rb))?;
        buf.extend_from_slice(rb.filled());
        std::task::Poll::Ready(Ok(rb.filled().len()))
    })
    .await
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

/// Polls an optional future; never completes without one.
async fn wait_opt(f: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>) {
    match f {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
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

/// Writes one packet, unless it does not fit the client's Maximum Packet
/// Size (`max`), in which case nothing is written ([MQTT-3.1.2-24]).
async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut p: Packet,
    v: ProtocolVersion,
    max: Option<u32>,
) -> std::io::Result<()> {
    if let Some(max) = max {
        if !codec::fit(&mut p, v, max as usize) {
            return Ok(());
        }
    }
    let mut b = BytesMut::new();
    codec::encode(&p, v, &mut b);
    w.write_all(&b).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    fn ret_size<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[tokio::test]
    async fn outbox_keeps_order_and_ends_with_the_last_handle() {
        use super::{ConnCmd, ConnHandle};
        use bytes::Bytes;
        use std::time::Duration;
        let (h, rx) = ConnHandle::new(1, "127.0.0.1:1".parse().unwrap(), None);
        let h2 = h.clone();
        assert!(h.write(Bytes::from_static(b"ab")));
        h2.close();
        assert_eq!(h.pending(), 2);
        assert!(matches!(rx.recv().await, Some(ConnCmd::Write(b)) if &b[..] == b"ab"));
        assert!(matches!(rx.recv().await, Some(ConnCmd::Close)));
        assert!(rx.try_recv().is_none());
        // A handle is left: recv waits, and wakes for a later write.
        drop(h);
        assert!(tokio::time::timeout(Duration::from_millis(20), rx.recv())
            .await
            .is_err());
        let w = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            h2.write(Bytes::from_static(b"c"));
            h2
        });
        assert!(matches!(rx.recv().await, Some(ConnCmd::Write(b)) if &b[..] == b"c"));
        // The last handle goes: the connection ends.
        drop(w.await.unwrap());
        assert!(rx.recv().await.is_none());
        // The connection task is gone: writes fail.
        let (h, rx) = ConnHandle::new(2, "127.0.0.1:1".parse().unwrap(), None);
        drop(rx);
        assert!(!h.write(Bytes::from_static(b"x")));
    }

    /// What one idle connection keeps resident is its task's future: it
    /// must not be sized for the large futures awaited only at connect
    /// or close.
    #[test]
    fn connection_future_stays_small() {
        let run = ret_size(super::run::<tokio::net::TcpStream>);
        assert!(run <= 1024, "the connection future grew to {run} bytes");
    }
}
