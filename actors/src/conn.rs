//! One client connection: a tokio task that owns the socket.
//!
//! It reads and decodes packets, enforces the CONNECT timeout and the
//! keepalive, and writes the bytes the session actor hands it. The session
//! actor (not this task) holds all protocol state, so a connection is cheap
//! and a session can outlive it. Reading pauses while too many bytes wait
//! to be written (a client that stops reading), while the session has not
//! caught up with what was read, and while the client is throttled for
//! filling a subscriber's inbox (see `docs/architecture.md`, flow control).

use crate::authn::{Credentials, ListenerAuthn, Refusal, Verdict};
use crate::connect::open_session;
use crate::metrics::{add, inc, Stats};
pub use crate::outbox::ConnHandle;
use crate::outbox::{ConnCmd, ConnEnd, MAX_INBOUND};
use crate::session_msg::{CloseCause, SessionHandle, SessionMsg};
use crate::Ctx;
use bytes::BytesMut;
use emqx_mqtt::codec::{self, DecodeError};
use emqx_mqtt::packet::*;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// What the listener learned of a connection before its first packet.
#[derive(Debug)]
pub struct Accepted {
    /// The client's address: the socket's peer, or the source address a
    /// load balancer's PROXY protocol header gave.
    pub peer: SocketAddr,
    /// The listener's mount point template (EMQX's
    /// `listeners.*.*.mountpoint`).
    pub mountpoint: Option<Arc<str>>,
    /// Taken from the client's TLS certificate (`mqtt.peer_cert_as_username`
    /// and `mqtt.peer_cert_as_clientid`): they replace what the CONNECT says.
    pub cert_username: Option<String>,
    pub cert_client_id: Option<String>,
    /// The common name of the client's certificate (for authorization
    /// rules' `${cert_common_name}`).
    pub cert_cn: Option<Arc<str>>,
    /// The listener's `enable_authn`.
    pub authn: ListenerAuthn,
    /// The connection's place in its listener's count of open
    /// connections: given back when the connection ends, so a plain TCP
    /// connection's task can be [`serve`] alone.
    pub open: Option<OpenSlot>,
}

/// One place in a count of open connections (a listener's, for its
/// `max_connections`), given back when dropped: when the connection ends,
/// and also when its task panics or is cancelled, so the count cannot
/// drift up and refuse clients that would fit.
#[derive(Debug)]
pub struct OpenSlot(Arc<AtomicU64>);

impl OpenSlot {
    /// Counts one more open connection in `count`.
    pub fn take(count: &Arc<AtomicU64>) -> OpenSlot {
        count.fetch_add(1, Ordering::Relaxed);
        OpenSlot(count.clone())
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection in the node's `live_connections` gauge while it lives
/// (given back on drop, as [`OpenSlot`]).
struct Live(Arc<Stats>);

impl Live {
    fn new(stats: &Arc<Stats>) -> Live {
        Stats::add(&stats.live_connections, None, 1);
        Live(stats.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        Stats::add(&self.0.live_connections, None, -1);
    }
}

impl Accepted {
    /// A plain connection: its address and the listener's mount point.
    pub fn new(peer: SocketAddr, mountpoint: Option<Arc<str>>) -> Self {
        Accepted {
            peer,
            mountpoint,
            cert_username: None,
            cert_client_id: None,
            cert_cn: None,
            authn: ListenerAuthn::Enabled,
            open: None,
        }
    }
}

/// Serves one accepted connection (a socket, or a TLS or WebSocket
/// stream over one) until it closes.
pub async fn serve<S>(stream: S, acc: Accepted, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut acc = acc;
    // Both are given back when this future ends or is dropped.
    let _open = acc.open.take();
    let _live = Live::new(&ctx.broker.stats);
    run(stream, acc, ctx).await;
}

/// A connection whose CONNECT was accepted and handed to a session.
struct Opened {
    session: SessionHandle,
    conn_id: u64,
    version: ProtocolVersion,
    ka_timeout: Option<Duration>,
    rx: ConnEnd,
}

async fn run<S>(stream: S, acc: Accepted, ctx: Arc<Ctx>)
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
    }) = Box::pin(open(&mut rd, &mut wr, &mut rbuf, acc, &ctx)).await
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
            if let Some(wait) = rx.throttle.lock().0.take() {
                inc(&metrics.client_throttled);
                throttled = Some(wait);
            }
        }
        let busy = rx.inbound.load(Ordering::Acquire) >= MAX_INBOUND;
        let hold = throttled.is_some() || busy;
        if buffered && !hold {
            let mut err = None;
            buffered = false;
            // Every complete packet goes to the session in one message,
            // within the session's budget of undecided packets.
            let mut batch = Vec::new();
            let room = MAX_INBOUND.saturating_sub(rx.inbound.load(Ordering::Acquire));
            loop {
                if batch.len() >= room || rx.throttle_set.load(Ordering::Acquire) {
                    buffered = true;
                    break;
                }
                match codec::decode(&mut rbuf, Some(version), max) {
                    Ok(Some(p)) => {
                        if batch.capacity() == 0 {
                            batch.reserve_exact(4.min(room));
                        }
                        batch.push(p);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        inc(&metrics.packets_malformed);
                        err = Some(CloseCause::Decode(e));
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                // The packets before a malformed one are the session's.
                add(&metrics.packets_received, batch.len() as u64);
                rx.inbound.fetch_add(batch.len(), Ordering::AcqRel);
                if session.cast(SessionMsg::Inbound(conn_id, batch)).is_err() {
                    err = Some(CloseCause::Closed);
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
                    // Flushed: TLS and WebSocket streams may hold bytes
                    // until then (a no-op on a plain socket).
                    let sent = async {
                        wr.write_all(buf).await?;
                        wr.flush().await
                    };
                    match timeout(settings.send_timeout, sent).await {
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
    acc: Accepted,
    ctx: &Arc<Ctx>,
) -> Option<Opened>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let settings = &ctx.settings;
    let metrics = &ctx.broker.metrics;
    let max = settings.max_packet_size;
    let peer = acc.peer;

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
        Ok(Ok(Packet::Connect(mut c))) => {
            if let Some(u) = acc.cert_username {
                c.username = Some(u);
            }
            if let Some(id) = acc.cert_client_id {
                c.client_id = id;
            }
            c
        }
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
    if let Some(ban) = ctx.banned.check(
        &connect.client_id,
        connect.username.as_deref(),
        peer.ip(),
        crate::clock::now_ms(),
    ) {
        tracing::info!(%peer, client_id = %connect.client_id,
            "CONNECT refused: banned ({} {})", ban.kind.name(), ban.who);
        inc(&metrics.packets_connack_auth_error);
        inc(&metrics.packets_connack_error);
        let _ = write_packet(wr, connack_err(reason::BANNED), version, client_max).await;
        let _ = wr.shutdown().await;
        return None;
    }
    let creds = Credentials {
        client_id: connect.client_id.clone(),
        username: connect.username.clone(),
        password: connect.password.clone(),
        peer: peer.ip(),
    };
    let auth = match ctx.authn.authenticate(&creds, acc.authn).await {
        Verdict::Allow(info) => info,
        Verdict::Deny(why) => {
            let (code, text) = match why {
                Refusal::BadUsernameOrPassword => (
                    reason::BAD_USER_NAME_OR_PASSWORD,
                    "bad username or password",
                ),
                Refusal::NotAuthorized => (reason::NOT_AUTHORIZED, "not authorized"),
            };
            // Never the password.
            tracing::info!(%peer, client_id = %connect.client_id,
                username = connect.username.as_deref().unwrap_or(""),
                "authentication failed: {text}");
            inc(&metrics.packets_connack_auth_error);
            inc(&metrics.packets_connack_error);
            let _ = write_packet(wr, connack_err(code), version, client_max).await;
            let _ = wr.shutdown().await;
            return None;
        }
    };
    let keepalive = emqx_mqtt::channel::effective_keepalive(&connect, settings);
    let ka_timeout = emqx_mqtt::channel::keepalive_timeout(keepalive, settings);

    // 2. Hand the connection to a session (new, resumed or taken over).
    let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (handle, rx) = ConnHandle::new(conn_id, peer, acc.mountpoint, acc.cert_cn, auth);
    let session: SessionHandle = match Box::pin(open_session(ctx, *connect, handle)).await {
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
    fn ret_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What one idle connection keeps resident is its task's future: it
    /// must not be sized for the large futures awaited only at connect
    /// or close.
    #[test]
    fn connection_future_stays_small() {
        let run = ret_size(super::run::<tokio::net::TcpStream>);
        assert!(run <= 1024, "the connection future grew to {run} bytes");
    }

    /// A listener's count of open connections comes back down however a
    /// connection's task ends: returning, panicking or cancelled.
    #[tokio::test]
    async fn an_open_slot_is_given_back_when_its_task_panics_or_is_cancelled() {
        use super::OpenSlot;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let count = Arc::new(AtomicU64::new(0));
        let (a, b, c) = (
            OpenSlot::take(&count),
            OpenSlot::take(&count),
            OpenSlot::take(&count),
        );
        assert_eq!(count.load(Ordering::Relaxed), 3);
        let ended = tokio::spawn(async move {
            let _a = a;
        });
        let panicked = tokio::spawn(async move {
            let _b = b;
            panic!("a connection task panics");
        });
        let cancelled = tokio::spawn(async move {
            let _c = c;
            std::future::pending::<()>().await;
        });
        assert!(ended.await.is_ok());
        assert!(panicked.await.is_err_and(|e| e.is_panic()));
        assert_eq!(count.load(Ordering::Relaxed), 1);
        cancelled.abort();
        assert!(cancelled.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
