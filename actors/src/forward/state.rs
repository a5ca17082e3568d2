//! What the forwarder and its tasks share: the settings, the per-peer
//! queues and the counters. Its own file so the listener and connection
//! tasks can use it without importing the forwarder that starts them.

use super::tasks::Tasks;
use crate::peer_tls::PeerTls;
use emqx_mqtt::message::Message;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// Settings of a node's forwarding channel.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// This node's name, `name@host`.
    pub node: Arc<str>,
    /// Shared secret proved by both ends of every connection; never sent.
    pub cookie: String,
    /// Where this node accepts forwarding connections (5370 + N in production).
    pub listen: SocketAddr,
    /// Bind every outgoing socket to this local address before connecting.
    pub bind_ip: Option<IpAddr>,
    /// Outgoing connections per peer (default 4).
    pub conns_per_peer: usize,
    /// Queue limit per connection, in messages (default 10 000).
    pub queue_limit: usize,
    /// Most messages in one frame (default 256, as EMQX's `rpc.async_batch_size`).
    pub batch_max: usize,
    /// Bound on connecting plus the handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// A socket with no write progress for this long is reopened (default 15 s).
    pub send_timeout: Duration,
    /// First reconnect delay (default 250 ms); doubles per failed attempt.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (default 10 s).
    pub reconnect_max: Duration,
    /// TLS on every connection (`rpc.driver = ssl`); clear text when `None`.
    pub tls: Option<PeerTls>,
}

impl ForwardConfig {
    /// The defaults, for a node name, cookie and listen address.
    pub fn new(
        node: impl Into<Arc<str>>,
        cookie: impl Into<String>,
        listen: SocketAddr,
    ) -> ForwardConfig {
        ForwardConfig {
            node: node.into(),
            cookie: cookie.into(),
            listen,
            bind_ip: None,
            conns_per_peer: 4,
            queue_limit: 10_000,
            batch_max: 256,
            handshake_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(15),
            reconnect_min: Duration::from_millis(250),
            tls: None,
            reconnect_max: Duration::from_secs(10),
        }
    }
}

/// Called for every received message with the sending node's name, in the
/// order the messages were sent on their connection.
/// Called for each received message with the sending node and, for a
/// shared-subscription message, the `(group, filter)` the sending node
/// picked this node for. Returns a write to disk (deliveries to persistent
/// sessions) that the acknowledgement to the sender waits for: until
/// then the sender keeps the message and sends it again after a failure.
/// Also returns what to wait for before reading more from that node (a
/// subscriber here that the message filled past its mark): the sender's
/// queue then fills, and its publishers are held back. The last argument
/// is the message's place in its forwarding stream, `(stream, seq)`: a
/// journal write of it also records that place, in the same commit (see
/// `Journal::record_at`).
pub type OnReceive = Arc<
    dyn Fn(
            &str,
            Message,
            Option<(String, String)>,
            (u64, u64),
        ) -> (
            Option<crate::durable::Ticket>,
            Option<crate::outbox::Backpressure>,
        ) + Send
        + Sync,
>;

/// A queued message and, for a shared-subscription delivery, the group and
/// filter whose member on the receiving node must get it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub msg: Arc<Message>,
    pub shared: Option<Arc<(String, String)>>,
    /// What the publisher's acknowledgement waits for, if anything.
    pub acked: Option<Arc<Acked>>,
}

/// The publisher's wait for the peer to acknowledge one message (which
/// it does once the message is on disk for the peer's persistent
/// sessions): resolved when the last copy of the message's envelope goes
/// (acknowledged, or dropped by the queue policy or with the peer), or
/// at once by [`Acked::release`] when its connection fails, so that a
/// peer that is down does not hold publishers up.
pub struct Acked(Mutex<Option<crate::durable::Part>>);

impl Acked {
    pub(crate) fn new(part: crate::durable::Part) -> Arc<Acked> {
        Arc::new(Acked(Mutex::new(Some(part))))
    }

    /// Resolves the wait now (the message stays queued).
    pub(crate) fn release(&self) {
        drop(self.0.lock().take());
    }
}

impl std::fmt::Debug for Acked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acked")
    }
}

/// Why [`Forwarder::forward`] did not queue a message. It is counted as
/// dropped in every case but `UnknownPeer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("unknown peer node")]
    UnknownPeer,
    /// Over the queue limit (QoS 0), or over twice the limit (QoS 1/2).
    #[error("forwarding queue full, message dropped")]
    Dropped,
    /// The connection is down and its queue is full.
    #[error("peer down and its forwarding queue full, message dropped")]
    PeerDown,
}

/// A snapshot of one peer's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub node: String,
    pub addr: SocketAddr,
    /// Outgoing connections that finished their handshake and are up.
    pub connected: usize,
    /// Messages waiting in this peer's queues.
    pub queued: usize,
    /// Messages sent and not acknowledged yet (sent again on the next
    /// connection if it fails).
    pub unacked: usize,
    /// Messages written to the peer's sockets (the first time; a message
    /// sent again after a reconnect counts once).
    pub sent: u64,
    /// Messages dropped: queue full, frame lost on a failed write, peer removed.
    pub dropped: u64,
    /// Frame bytes written (length prefixes included).
    pub bytes_sent: u64,
    /// Frames written (`sent / frames_sent` is the average batch).
    pub frames_sent: u64,
    /// Messages received from this node on its connections to us.
    pub received: u64,
    /// Outgoing connection attempts so far.
    pub connect_attempts: u64,
    /// Outgoing attempts whose connect or handshake failed.
    pub connect_failures: u64,
}

/// Node-wide counters of the listener side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Inbound connections currently up (handshake done).
    pub connections: usize,
    /// TCP connections accepted so far.
    pub accepted: u64,
    /// Inbound handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Frames that failed to decode or exceeded the size limit.
    pub malformed_frames: u64,
    /// Messages received from all nodes.
    pub received: u64,
    /// Messages dropped by this node's outgoing side, removed peers included.
    pub dropped: u64,
    /// Messages a peer sent again after a reconnect that had been handed on
    /// already, and were not handed on twice.
    pub duplicates: u64,
}

#[derive(Default)]
pub(crate) struct PeerCounters {
    pub queued: AtomicUsize,
    pub connected: AtomicUsize,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_sent: AtomicU64,
    pub connect_attempts: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Set once a "peer unreachable" warning was logged; cleared on connect,
    /// so an outage logs one line, not one per connection and attempt.
    pub down_logged: AtomicBool,
}

/// One outgoing connection's queue, and its stream: the numbered messages
/// it sent that the peer has not acknowledged yet, kept across connections.
pub(crate) struct Slot {
    pub queue: Mutex<VecDeque<Envelope>>,
    pub notify: Notify,
    pub connected: AtomicBool,
    /// Random, fixed for the life of the slot (see [`super::wire`]).
    pub stream: u64,
    /// Sent and not acknowledged, oldest first, with their numbers; at
    /// most `queue_limit`.
    pub unacked: Mutex<VecDeque<(u64, Envelope)>>,
    /// The number of the next message sent for the first time.
    pub next_seq: AtomicU64,
    /// Woken when the writer takes from the queue, or the connection
    /// goes: publishers held back by a full queue look again.
    pub drained: Notify,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            connected: AtomicBool::new(false),
            stream: rand::random::<u64>(),
            unacked: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            drained: Notify::new(),
        }
    }

    /// The connection went (or the peer is down): what waits in it for
    /// the peer no longer holds its publishers up (it is sent again on
    /// the next connection). Called with `connected` false (or the peer's
    /// `down` true), so what is queued after this is not waited for
    /// either (see [`super::Forwarder::forward_acked`]).
    pub(crate) fn release_waits(&self) {
        let release = |e: &Envelope| {
            if let Some(a) = &e.acked {
                a.release();
            }
        };
        self.queue.lock().iter().for_each(release);
        self.unacked.lock().iter().for_each(|(_, e)| release(e));
    }

    /// The peer acknowledged every message up to `seq`: forget them.
    pub(crate) fn acked(&self, seq: u64) -> usize {
        let mut u = self.unacked.lock();
        let mut n = 0;
        while u.front().is_some_and(|(s, _)| *s <= seq) {
            u.pop_front();
            n += 1;
        }
        n
    }
}

pub(crate) struct Peer {
    pub node: Arc<str>,
    pub addr: Mutex<SocketAddr>,
    pub slots: Vec<Arc<Slot>>,
    pub stats: PeerCounters,
    pub tasks: Mutex<Vec<AbortHandle>>,
    /// The cluster sees the node down: nothing queued for it holds a
    /// publisher up (see [`super::Forwarder::peer_down`]).
    pub down: AtomicBool,
    /// Bumped, and its waiters woken, when the cluster sees the node up
    /// again: connections waiting out their backoff try at once.
    pub up_gen: AtomicU64,
    pub retry: Notify,
}

impl Peer {
    pub(crate) fn count_dropped(&self, shared: &Shared, n: u64) {
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        shared.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the tasks share; they never hold the `Forwarder` itself, so
/// dropping the last `Arc<Forwarder>` stops everything.
pub(crate) struct Shared {
    pub cfg: ForwardConfig,
    /// The outgoing connections' tasks.
    pub tasks: Tasks,
    /// The accept loop and the inbound connections' tasks: stopped first
    /// at a clean stop (see [`super::Forwarder::close_inbound`]).
    pub inbound_tasks: Tasks,
    /// Messages received per sending node.
    pub received: RwLock<HashMap<Arc<str>, Arc<AtomicU64>>>,
    pub inbound: AtomicUsize,
    pub accepted: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub received_total: AtomicU64,
    pub dropped: AtomicU64,
    /// Receiving side: the state of each stream (see [`super::wire`]).
    pub streams: Mutex<HashMap<u64, Arc<Mutex<StreamState>>>>,
    /// Messages received again after a reconnect and not handed on twice.
    pub duplicates: AtomicU64,
    /// Writes the position of a stream to disk (see
    /// [`super::Forwarder::serve_keeping`]).
    pub keep: RwLock<Option<KeepStream>>,
}

/// Called with a stream and the last number handed on, after a frame
/// whose messages were written to disk (deliveries to persistent
/// sessions): writes that position, and returns the write, which the
/// frame's acknowledgement waits for. After a crash the node reads the
/// positions back, so what the sender sends again (its acknowledgement
/// was lost with the crash) is not handed on twice.
pub type KeepStream = Arc<dyn Fn(u64, u64) -> crate::durable::Ticket + Send + Sync>;

/// What the receiving side knows of one stream. Locked while a frame of
/// the stream is handed on, so two connections of one stream (an old one
/// not yet closed and its successor) never hand messages on out of order.
pub(crate) struct StreamState {
    /// The last message number handed on.
    pub last: u64,
    /// When a frame of the stream last arrived.
    pub seen: std::time::Instant,
}

impl StreamState {
    /// Of a frame numbered from `first_seq` with `count` messages: how many
    /// at its head were handed on already (to be skipped). Records the
    /// frame as handed on.
    pub(crate) fn accept(&mut self, first_seq: u64, count: u64) -> u64 {
        self.seen = std::time::Instant::now();
        if count == 0 {
            return 0;
        }
        let skip = self.last.saturating_sub(first_seq - 1).min(count);
        self.last = self.last.max(first_seq + count - 1);
        skip
    }
}

/// Streams remembered by the receiving side; past this, the one seen
/// least recently is forgotten (a stream lives as long as the sending
/// process, so this only grows with peer restarts).
const MAX_STREAMS: usize = 4096;

impl Shared {
    /// The receiving side's state of `stream` (see [`super::wire`]).
    pub(crate) fn stream(&self, stream: u64) -> Arc<Mutex<StreamState>> {
        let mut streams = self.streams.lock();
        if let Some(s) = streams.get(&stream) {
            return s.clone();
        }
        if streams.len() >= MAX_STREAMS {
            let oldest = streams
                .iter()
                .min_by_key(|(_, s)| s.lock().seen)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                streams.remove(&k);
            }
        }
        let s = Arc::new(Mutex::new(StreamState {
            last: 0,
            seen: std::time::Instant::now(),
        }));
        streams.insert(stream, s.clone());
        s
    }

    pub(crate) fn received_counter(&self, node: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.received.read().get(node) {
            return c.clone();
        }
        self.received
            .write()
            .entry(Arc::from(node))
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::StreamState;

    #[test]
    fn a_stream_skips_what_it_handed_on_and_accepts_gaps() {
        let mut s = StreamState {
            last: 0,
            seen: std::time::Instant::now(),
        };
        assert_eq!(s.accept(1, 5), 0);
        assert_eq!(s.last, 5);
        // Sent again from 3 after a reconnect, with two new ones behind.
        assert_eq!(s.accept(3, 5), 3);
        assert_eq!(s.last, 7);
        // Wholly old.
        assert_eq!(s.accept(1, 3), 3);
        assert_eq!(s.last, 7);
        // A gap (the sender dropped a message too large to forward).
        assert_eq!(s.accept(9, 2), 0);
        assert_eq!(s.last, 10);
        assert_eq!(s.accept(11, 0), 0);
        assert_eq!(s.last, 10);
    }
}
