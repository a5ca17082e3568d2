//! The data plane: forwarding published messages to other nodes.
//!
//! EMQX forwards publishes over gen_rpc, a pool of TCP connections separate
//! from Erlang distribution (emqx-reference.md 1.3 and 8.2). This is ours: a
//! few TCP connections per peer node, on the forwarding port (5370 + N in
//! production), separate from the ractor_cluster control plane.
//!
//! # Connections
//!
//! Each node listens on [`ForwardConfig::listen`] and opens
//! [`ForwardConfig::conns_per_peer`] outgoing connections to every peer
//! registered with [`Forwarder::add_peer`]; messages flow one way on a
//! connection, from the node that opened it. A message goes on connection
//! `hash(topic) % conns`, so all messages of one topic share one connection
//! and keep their order (as `gen_rpc:ordered_cast` keyed by `phash2(Topic)`).
//!
//! Every connection starts with a mutual cookie handshake (see
//! [`handshake`]), bounded by `handshake_timeout` and run in the
//! connection's own task, so a silent socket never holds up another. A
//! wrong cookie closes the connection at both ends with one warning line on
//! each. A connection that fails or closes is reopened with exponential
//! backoff and jitter (`reconnect_min` doubling up to `reconnect_max`) for as
//! long as the peer stays registered.
//!
//! After the handshake the connecting side sends length-prefixed frames,
//! each a batch of up to `batch_max` numbered messages (see [`wire`]): the
//! writer drains whatever is queued into one frame per write. The receiving
//! side decodes a frame whole, calls `on_receive(from_node, msg)` for each
//! message in order, and acknowledges on the same connection. A malformed
//! or oversized frame closes that connection with a warning.
//!
//! # Acknowledgements
//!
//! Each connection slot numbers its messages on a stream of its own (a
//! random id, fixed for the life of the process). A message stays in the
//! slot's unacknowledged buffer, after it is written, until the peer
//! acknowledges it; when a connection fails (a partition, a peer that
//! closed, no write progress or no acknowledgement for `send_timeout`), the
//! next connection sends the unacknowledged messages again, in order,
//! before anything new. The receiver remembers per stream the last number
//! it handed on and skips what it already had. So across reconnects a
//! message reaches the peer once, in order: a TCP connection that dies with
//! frames in its buffers loses nothing. The buffer holds at most
//! `queue_limit` messages per slot; a peer that stops acknowledging stops
//! the writer there, and the queue in front of it fills as below.
//!
//! # Queues and the drop policy
//!
//! Each connection has one bounded queue of `queue_limit` messages, filled by
//! [`Forwarder::forward`] (which never blocks) and drained by the
//! connection's writer. While a connection is down its queue keeps filling
//! and is sent once it reconnects.
//!
//! - **QoS 0** over the limit is dropped and counted:
//!   [`ForwardError::Dropped`].
//! - **QoS 1 and 2** over the limit are **held back up to 2x the limit, then
//!   dropped and counted** too. The 2x is a hard cap: a queue never holds
//!   more than `2 * queue_limit` messages. While the connection is up, a
//!   QoS 1/2 message queued past the limit comes back as
//!   [`Queued::Over`]: its publisher reads nothing more (so its next
//!   acknowledgement waits) until the queue is down to half the limit, so
//!   the 2x cap is reached only by many publishers at once or a
//!   connection that is down.
//! - When the connection is down and the queue is full, the error is
//!   [`ForwardError::PeerDown`] instead (still dropped and counted).
//! - A socket that makes no write progress for `send_timeout`, or whose
//!   peer acknowledges nothing for that long while messages wait, is closed
//!   and reopened; nothing is lost (see above).
//! - [`Forwarder::remove_peer`] drops the peer's queues and unacknowledged
//!   messages and counts them.
//!
//! EMQX's async forwarding (gen_rpc casts) is at most once: what is in a
//! connection that fails is lost. Here a message queued for a peer that
//! stays registered is delivered once, whatever happens to the
//! connections, as long as both processes live; it is lost only with the
//! sending process (kill -9; an autoheal restart is not one), with the
//! queue limits above, or when the peer is removed.
//!
//! # Lifecycle
//!
//! Every task (accept loop, one per inbound connection, one per outgoing
//! connection) is tracked; [`Forwarder::stop`] aborts them all, which closes
//! every socket and the listener, and [`Forwarder::shutdown`] also waits
//! for them, so a broker can be stopped and started again in one process.
//! A clean stop of a node goes in steps: [`Forwarder::close_inbound`]
//! first (nothing more arrives while the sessions are parked), then
//! [`Forwarder::drain`] (what the node still sends, such as the wills its
//! stop publishes, reaches its peers), then `shutdown`.

pub mod handshake;
mod inbound;
mod outbound;
mod state;
mod tasks;

pub use state::{
    Envelope, ForwardConfig, ForwardError, KeepStream, ListenerStats, OnReceive, PeerStats,
};
use state::{Peer, PeerCounters, Shared, Slot};
pub mod wire;

use emqx_mqtt::message::Message;
use emqx_mqtt::packet::QoS;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where [`Forwarder::forward`] left a message.
pub enum Queued {
    Room,
    /// In a queue past its limit (QoS 1/2, the connection up): its
    /// publisher should read nothing more until [`Backlog::drained`].
    Over(Backlog),
}

/// A peer connection's queue that a publish filled past its limit.
pub struct Backlog {
    slot: Arc<Slot>,
    low: usize,
    max_wait: std::time::Duration,
}

impl Backlog {
    /// Returns once the queue is down to half its limit, its connection
    /// is gone (the messages then wait for the next one, up to twice the
    /// limit, as for a peer that is down), or after `send_timeout` (a
    /// connection that makes no progress that long is reset anyway).
    pub async fn drained(self) {
        let until = tokio::time::Instant::now() + self.max_wait;
        loop {
            let notified = self.slot.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.slot.connected.load(Ordering::Relaxed)
                || self.slot.queue.lock().len() <= self.low
            {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return;
            }
        }
    }
}

/// A node's forwarding channel: the listener and the connections to peers.
pub struct Forwarder {
    shared: Arc<Shared>,
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
    local_addr: SocketAddr,
}

/// The forwarding listener between [`Forwarder::bind`] and
/// [`Forwarder::serve`].
pub struct ForwardListener(TcpListener);

impl Forwarder {
    /// Binds the listener and spawns the accept loop: [`Forwarder::bind`]
    /// and [`Forwarder::serve`] in one step.
    pub async fn start(
        cfg: ForwardConfig,
        on_receive: OnReceive,
    ) -> std::io::Result<Arc<Forwarder>> {
        let (f, listener) = Forwarder::bind(cfg).await?;
        f.serve(listener, on_receive);
        Ok(f)
    }

    /// Binds the listener; nothing is accepted until [`Forwarder::serve`].
    /// Messages can be forwarded to peers already, so what delivers
    /// received messages (the broker) can be built with this forwarder.
    pub async fn bind(cfg: ForwardConfig) -> std::io::Result<(Arc<Forwarder>, ForwardListener)> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let local_addr = listener.local_addr()?;
        let mut cfg = cfg;
        cfg.conns_per_peer = cfg.conns_per_peer.max(1);
        cfg.queue_limit = cfg.queue_limit.max(1);
        cfg.batch_max = cfg.batch_max.max(1);
        let shared = Arc::new(Shared {
            cfg,
            tasks: tasks::Tasks::new(tokio::runtime::Handle::current()),
            inbound_tasks: tasks::Tasks::new(tokio::runtime::Handle::current()),
            received: RwLock::default(),
            inbound: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            malformed_frames: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            streams: Mutex::default(),
            duplicates: AtomicU64::new(0),
            keep: RwLock::default(),
        });
        let f = Arc::new(Forwarder {
            shared,
            peers: RwLock::default(),
            local_addr,
        });
        Ok((f, ForwardListener(listener)))
    }

    /// Accepts connections from peers; `on_receive` gets every message
    /// they forward.
    pub fn serve(&self, listener: ForwardListener, on_receive: OnReceive) {
        self.shared.inbound_tasks.spawn(inbound::accept_loop(
            self.shared.clone(),
            listener.0,
            on_receive,
        ));
        tracing::info!(node = %self.shared.cfg.node, local_addr = %self.local_addr, "forwarding listener started");
    }

    /// [`Forwarder::serve`], remembering what it handed on across a crash:
    /// `known` are the positions of the streams written before (`(stream,
    /// last)`), and `keep` writes a stream's position after each frame
    /// that wrote to disk (see [`KeepStream`]).
    pub fn serve_keeping(
        &self,
        listener: ForwardListener,
        on_receive: OnReceive,
        known: Vec<(u64, u64)>,
        keep: KeepStream,
    ) {
        {
            let mut streams = self.shared.streams.lock();
            for (stream, last) in known {
                streams.insert(
                    stream,
                    Arc::new(Mutex::new(state::StreamState {
                        last,
                        seen: std::time::Instant::now(),
                    })),
                );
            }
        }
        *self.shared.keep.write() = Some(keep);
        self.serve(listener, on_receive);
    }

    /// The listener's address (useful when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers a peer and opens its connections, which reconnect with
    /// backoff while it stays registered. Idempotent; a new address for a
    /// known node reopens its connections there, keeping its queues.
    /// Does nothing once stopped.
    pub fn add_peer(&self, node: &str, addr: SocketAddr) {
        if self.shared.tasks.is_stopped() {
            return;
        }
        let mut peers = self.peers.write();
        if let Some(peer) = peers.get(node) {
            if *peer.addr.lock() == addr {
                return;
            }
            *peer.addr.lock() = addr;
            let old = std::mem::take(&mut *peer.tasks.lock());
            for t in old {
                t.abort();
            }
            self.spawn_slots(peer);
            return;
        }
        let n = self.shared.cfg.conns_per_peer;
        let peer = Arc::new(Peer {
            node: Arc::from(node),
            addr: Mutex::new(addr),
            slots: (0..n).map(|_| Arc::new(Slot::new())).collect(),
            stats: PeerCounters::default(),
            tasks: Mutex::new(Vec::new()),
            down: std::sync::atomic::AtomicBool::new(false),
            up_gen: AtomicU64::new(0),
            retry: tokio::sync::Notify::new(),
        });
        self.spawn_slots(&peer);
        peers.insert(peer.node.clone(), peer);
    }

    fn spawn_slots(&self, peer: &Arc<Peer>) {
        let mut tasks = peer.tasks.lock();
        for i in 0..peer.slots.len() {
            if let Some(t) =
                self.shared
                    .tasks
                    .spawn(outbound::run(self.shared.clone(), peer.clone(), i))
            {
                tasks.push(t);
            }
        }
    }

    /// The cluster sees `node` down (`true`) or up again: while it is
    /// down, what is queued for it no longer holds its publishers up (see
    /// [`Forwarder::forward_acked`]), even on a connection that has not
    /// failed yet (a partition shows there only after `send_timeout`).
    /// The messages stay queued, and go once the node is reachable; when
    /// it is seen up again, its connections waiting to retry try at once.
    pub fn peer_down(&self, node: &str, down: bool) {
        let Some(peer) = self.peers.read().get(node).cloned() else {
            return;
        };
        let was = peer.down.swap(down, Ordering::Relaxed);
        if down {
            for slot in &peer.slots {
                slot.release_waits();
            }
        } else if was {
            // Back: what waited for it goes now, not after the backoff
            // its connections reached while it was away (up to
            // `reconnect_max`), during which a publisher's node holds
            // acknowledged messages in memory only.
            peer.up_gen.fetch_add(1, Ordering::Relaxed);
            peer.retry.notify_waiters();
        }
    }

    /// The messages for `node`'s plain subscribers that it has not
    /// acknowledged yet (sent and unacknowledged, then queued), whose
    /// topic `wanted` accepts: copies, in the order each connection sends
    /// them (a topic always goes on the same connection). They stay
    /// queued for the node.
    pub fn held_for(&self, node: &str, wanted: impl Fn(&str) -> bool) -> Vec<Arc<Message>> {
        let Some(peer) = self.peers.read().get(node).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for slot in &peer.slots {
            let pick =
                |e: &Envelope| (e.shared.is_none() && wanted(&e.msg.topic)).then(|| e.msg.clone());
            out.extend(slot.unacked.lock().iter().filter_map(|(_, e)| pick(e)));
            out.extend(slot.queue.lock().iter().filter_map(pick));
        }
        out
    }

    /// Unregisters a peer: closes its connections and drops (and counts)
    /// whatever was queued for it.
    pub fn remove_peer(&self, node: &str) {
        let Some(peer) = self.peers.write().remove(node) else {
            return;
        };
        self.close_peer(&peer);
    }

    fn close_peer(&self, peer: &Peer) {
        for t in peer.tasks.lock().drain(..) {
            t.abort();
        }
        let mut n = 0;
        for slot in &peer.slots {
            let mut q = slot.queue.lock();
            n += q.len();
            peer.stats.queued.fetch_sub(q.len(), Ordering::Relaxed);
            q.clear();
            drop(q);
            let mut u = slot.unacked.lock();
            n += u.len();
            u.clear();
            drop(u);
            slot.drained.notify_waiters();
        }
        if n > 0 {
            peer.count_dropped(&self.shared, n as u64);
            tracing::info!(peer = %peer.node, dropped = n, "forwarding peer removed, queued messages dropped");
        }
    }

    /// Queues `msg` for `node` on the connection its topic hashes to. Never
    /// blocks; see the module docs for the drop policy.
    pub fn forward(&self, node: &str, msg: Arc<Message>) -> Result<Queued, ForwardError> {
        self.forward_acked(node, msg, None, None)
    }

    /// As [`Forwarder::forward`], for one member of shared group `group` of
    /// `filter` on that node (the pick of node was made here).
    pub fn forward_shared(
        &self,
        node: &str,
        msg: Arc<Message>,
        group: &str,
        filter: &str,
    ) -> Result<Queued, ForwardError> {
        self.forward_acked(node, msg, Some((group, filter)), None)
    }

    /// [`Forwarder::forward`] or [`Forwarder::forward_shared`] (with
    /// `shared`), and `acked` resolved once the peer acknowledges the
    /// message: after it is on disk there for the peer's persistent
    /// sessions. `acked` is resolved sooner when that cannot be waited
    /// for: the connection is down (or goes down before the peer
    /// acknowledges), the cluster sees the peer down
    /// ([`Forwarder::peer_down`]), or the message is dropped.
    pub fn forward_acked(
        &self,
        node: &str,
        msg: Arc<Message>,
        shared: Option<(&str, &str)>,
        acked: Option<crate::durable::Part>,
    ) -> Result<Queued, ForwardError> {
        let shared = shared.map(|(g, f)| Arc::new((g.to_string(), f.to_string())));
        self.enqueue(
            node,
            Envelope {
                msg,
                shared,
                acked: None,
            },
            acked,
        )
    }

    fn enqueue(
        &self,
        node: &str,
        mut env: Envelope,
        acked: Option<crate::durable::Part>,
    ) -> Result<Queued, ForwardError> {
        let msg = &env.msg;
        let peer = self
            .peers
            .read()
            .get(node)
            .cloned()
            .ok_or(ForwardError::UnknownPeer)?;
        let slot = &peer.slots[slot_of(&msg.topic, peer.slots.len())];
        let limit = self.shared.cfg.queue_limit;
        let cap = if msg.qos == QoS::AtMostOnce {
            limit
        } else {
            limit.saturating_mul(2)
        };
        let mut q = slot.queue.lock();
        let len = q.len();
        if len >= cap {
            drop(q);
            peer.count_dropped(&self.shared, 1);
            return Err(if slot.connected.load(Ordering::Relaxed) {
                ForwardError::Dropped
            } else {
                ForwardError::PeerDown
            });
        }
        let qos = msg.qos;
        // Under the queue's lock: a connection that goes releases what is
        // queued under it after it says so (`Slot::release_waits`).
        let waits = slot.connected.load(Ordering::Relaxed) && !peer.down.load(Ordering::Relaxed);
        if let (Some(part), true) = (acked, waits) {
            env.acked = Some(state::Acked::new(part));
        }
        q.push_back(env);
        peer.stats.queued.fetch_add(1, Ordering::Relaxed);
        drop(q);
        if len == 0 {
            // The writer drains everything before it waits, so only the
            // first message into an empty queue needs to wake it.
            slot.notify.notify_one();
        }
        if qos != QoS::AtMostOnce && len >= limit && slot.connected.load(Ordering::Relaxed) {
            return Ok(Queued::Over(Backlog {
                slot: slot.clone(),
                low: limit / 2,
                max_wait: self.shared.cfg.send_timeout,
            }));
        }
        Ok(Queued::Room)
    }

    /// Counters of every registered peer, sorted by node name.
    pub fn peers(&self) -> Vec<PeerStats> {
        let received = self.shared.received.read();
        let mut v: Vec<PeerStats> = self
            .peers
            .read()
            .values()
            .map(|p| {
                let s = &p.stats;
                PeerStats {
                    node: p.node.to_string(),
                    addr: *p.addr.lock(),
                    connected: s.connected.load(Ordering::Relaxed),
                    queued: s.queued.load(Ordering::Relaxed),
                    unacked: p.slots.iter().map(|s| s.unacked.lock().len()).sum(),
                    sent: s.sent.load(Ordering::Relaxed),
                    dropped: s.dropped.load(Ordering::Relaxed),
                    bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
                    frames_sent: s.frames_sent.load(Ordering::Relaxed),
                    received: received
                        .get(&*p.node)
                        .map_or(0, |c| c.load(Ordering::Relaxed)),
                    connect_attempts: s.connect_attempts.load(Ordering::Relaxed),
                    connect_failures: s.connect_failures.load(Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// Counters of the listener side and node-wide totals.
    pub fn listener_stats(&self) -> ListenerStats {
        let s = &self.shared;
        ListenerStats {
            connections: s.inbound.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            handshake_failures: s.handshake_failures.load(Ordering::Relaxed),
            malformed_frames: s.malformed_frames.load(Ordering::Relaxed),
            received: s.received_total.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Tasks spawned by this forwarder that have not ended yet.
    pub fn live_tasks(&self) -> usize {
        self.shared.tasks.live() + self.shared.inbound_tasks.live()
    }

    /// The first step of a clean stop: closes the listener and every
    /// inbound connection, and waits until their tasks have ended, so
    /// nothing more is received. Peers keep what this node has not
    /// acknowledged, for its next start. The outgoing side runs on, so
    /// what this node still forwards (the wills of the sessions it parks)
    /// can be [`drain`](Self::drain)ed. Idempotent.
    pub async fn close_inbound(&self) {
        self.shared.inbound_tasks.stop();
        self.shared.inbound_tasks.join_stopped().await;
    }

    /// Waits, at most `within`, until every peer that is connected has
    /// acknowledged everything queued for it. Returns the messages still
    /// waiting then, of every peer (those of a peer that is down
    /// included: nothing is waited for them).
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let peers = self.peers();
            let waiting = |p: &PeerStats| p.queued + p.unacked;
            let busy = peers.iter().any(|p| p.connected > 0 && waiting(p) > 0);
            if !busy || tokio::time::Instant::now() >= deadline {
                return peers.iter().map(waiting).sum();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops every task and so closes every socket, the listener included;
    /// forgets every peer (their queues are dropped and counted). Does not
    /// wait: aborted tasks end at their next poll. Idempotent.
    pub fn stop(&self) {
        self.shared.inbound_tasks.stop();
        self.shared.tasks.stop();
        let peers: Vec<_> = self.peers.write().drain().map(|(_, p)| p).collect();
        for p in peers {
            self.close_peer(&p);
        }
    }

    /// [`stop`](Self::stop), then waits until every task has ended, so the
    /// listener port is free and no socket is open when it returns.
    pub async fn shutdown(&self) {
        self.stop();
        self.shared.inbound_tasks.join_stopped().await;
        self.shared.tasks.join_stopped().await;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The connection a topic's messages use: stable for the process lifetime.
fn slot_of(topic: &str, n: usize) -> usize {
    crate::hashing::bucket(topic, n)
}
