//! The session-to-connection contract: the handle a session writes
//! through ([`ConnHandle`]) and the queue and flow-control state it shares
//! with its connection task. Below both the session and the connection
//! task, so neither imports the other for it.

use bytes::Bytes;
use emqx_mqtt::acl::AuthInfo;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// What a throttled connection waits for before it reads again: a
/// subscriber's inbox or a queue to another node that a publish filled
/// past its limit, draining.
pub type Backpressure = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The wait a session set for its connection's reader, if any.
#[derive(Default)]
pub(crate) struct Throttle(pub(crate) Option<Backpressure>);

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Throttle({})",
            if self.0.is_some() { "set" } else { "none" }
        )
    }
}

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

/// Packets read and handed to the session but not yet handled by it,
/// beyond which reading pauses: the session's mailbox stays short, and a
/// throttle takes effect within this many packets.
pub(crate) const MAX_INBOUND: usize = 32;

/// What a session and its connection task share: the queue from the
/// session to the task (a locked deque that holds memory only while
/// commands wait, and a `Notify`; a tokio unbounded mpsc allocates about
/// 1.5 KB up front per connection) and the flow-control state.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Bytes queued and not yet written.
    pub(crate) pending: AtomicUsize,
    pub(crate) state: Mutex<OutboxState>,
    pub(crate) notify: Notify,
    /// A subscriber's inbox this client's publishes filled past its
    /// high-water mark: reading pauses until it drains.
    pub(crate) throttle: Mutex<Throttle>,
    /// Set with `throttle`, so the reader checks a flag, not a lock.
    pub(crate) throttle_set: AtomicBool,
    /// Packets handed to the session and not yet handled.
    pub(crate) inbound: AtomicUsize,
    /// The session caught up with `inbound`.
    pub(crate) inbound_wake: Notify,
    /// The common name of the client's TLS certificate, if it sent one
    /// (kept here, not in every `ConnHandle`, which session futures hold).
    pub(crate) cert_cn: Option<Arc<str>>,
    /// What authentication said: superuser, the client's own rules, when
    /// its credentials expire.
    pub(crate) auth: AuthInfo,
}

#[derive(Debug, Default)]
pub(crate) struct OutboxState {
    pub(crate) cmds: VecDeque<ConnCmd>,
    /// Live `ConnHandle`s: the connection ends when the last one is dropped.
    pub(crate) handles: usize,
    /// The connection task is gone: nothing more is queued.
    pub(crate) closed: bool,
}

impl Outbox {
    /// Queues a command; false if the connection task is gone.
    pub(crate) fn push(&self, cmd: ConnCmd) -> bool {
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
    pub(crate) fn try_recv(&self) -> Option<ConnCmd> {
        let mut s = self.state.lock();
        let cmd = s.cmds.pop_front();
        if cmd.is_some() && s.cmds.is_empty() {
            s.cmds = VecDeque::new();
        }
        cmd
    }

    /// The next command; None once every `ConnHandle` is dropped and the
    /// queue is empty. Cancel-safe: nothing is taken before it returns.
    pub(crate) async fn recv(&self) -> Option<ConnCmd> {
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
pub(crate) struct ConnEnd(Arc<Outbox>);

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
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        mountpoint: Option<Arc<str>>,
        cert_cn: Option<Arc<str>>,
        auth: AuthInfo,
    ) -> (ConnHandle, ConnEnd) {
        let out = Arc::new(Outbox {
            cert_cn,
            auth,
            ..Outbox::default()
        });
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

    /// The common name of the client's TLS certificate, if it sent one.
    pub fn cert_cn(&self) -> Option<&str> {
        self.out.cert_cn.as_deref()
    }

    /// What authentication said about the client.
    pub fn auth(&self) -> &AuthInfo {
        &self.out.auth
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

    /// Pauses reading from this client until `wait` ends: a subscriber's
    /// inbox its QoS 1/2 messages go to drains to its low-water mark or
    /// stops draining (see [`crate::inbox::Inbox::wait_drained`]), or a queue to
    /// another node drains. Back-pressure: the client's own TCP window
    /// then slows it down, instead of a queue overflowing. Takes effect
    /// before the next packet is decoded.
    pub fn throttle(&self, wait: Backpressure) {
        self.out.throttle.lock().0 = Some(wait);
        self.out.throttle_set.store(true, Ordering::Release);
    }

    /// The session took `n` packets of this connection.
    pub fn inbound_done(&self, n: usize) {
        let prev = self.out.inbound.fetch_sub(n, Ordering::AcqRel);
        // Wakes the connection when this brought the count down to half.
        if prev > MAX_INBOUND / 2 && prev - n <= MAX_INBOUND / 2 {
            self.out.inbound_wake.notify_one();
        }
    }
}

/// What a session hands its connections when some of it must wait for a
/// write to disk first: the PUBLISH of a journaled QoS 2 delivery leaves
/// only once its packet id is on disk (see `emqx_mqtt::channel::JournalPid`).
/// Everything handed over after a held piece waits behind it, so the
/// client sees packets in the order the session made them; when nothing
/// is held, writes go straight through. Each held piece keeps its
/// connection open until it is written.
#[derive(Debug, Clone, Default)]
pub struct OutGate(Arc<Mutex<GateQueue>>);

#[derive(Debug, Default)]
struct GateQueue {
    next: u64,
    /// (piece number, its write is done, the connection, bytes or a close).
    held: VecDeque<(u64, bool, ConnHandle, Option<Bytes>)>,
}

/// Writes `what` to `conn`, or closes it for `None`.
fn hand(conn: &ConnHandle, what: Option<Bytes>) {
    match what {
        Some(b) => {
            conn.write(b);
        }
        None => conn.close(),
    }
}

impl GateQueue {
    /// Hands over the pieces at the front that are ready, in order.
    fn release(&mut self) {
        while self.held.front().is_some_and(|(_, ready, _, _)| *ready) {
            if let Some((_, _, conn, what)) = self.held.pop_front() {
                hand(&conn, what);
            }
        }
        if self.held.is_empty() {
            self.held = VecDeque::new();
        }
    }
}

impl OutGate {
    /// Whether nothing waits.
    pub fn is_open(&self) -> bool {
        self.0.lock().held.is_empty()
    }

    /// Writes `b` to `conn` once `ticket` is done (and what was held
    /// before it is written). A failed write lets it go all the same (with
    /// a warning): the client is better served by its message than by a
    /// stall.
    pub fn write_after(&self, conn: &ConnHandle, b: Bytes, ticket: crate::durable::Ticket) {
        let id = {
            let mut q = self.0.lock();
            let id = q.next;
            q.next += 1;
            q.held.push_back((id, false, conn.clone(), Some(b)));
            id
        };
        let gate = self.0.clone();
        ticket.on_done(move |r| {
            if let Err(e) = r {
                tracing::warn!(
                    "a QoS 2 packet id is not on disk, its PUBLISH goes out anyway: {e}"
                );
            }
            let mut q = gate.lock();
            if let Some(e) = q.held.iter_mut().find(|e| e.0 == id) {
                e.1 = true;
            }
            q.release();
        });
    }

    /// Writes `b` to `conn` behind whatever is held, or at once.
    pub fn write(&self, conn: &ConnHandle, b: Bytes) {
        self.behind(conn, Some(b));
    }

    /// Closes `conn` behind whatever is held for it, or at once.
    pub fn close(&self, conn: &ConnHandle) {
        self.behind(conn, None);
    }

    /// Bytes (or a close, `None`) for `conn` that wait for nothing of
    /// their own: queued behind what is held, else handed over now.
    fn behind(&self, conn: &ConnHandle, what: Option<Bytes>) {
        let mut q = self.0.lock();
        if q.held.is_empty() {
            drop(q);
            hand(conn, what);
            return;
        }
        let id = q.next;
        q.next += 1;
        q.held.push_back((id, true, conn.clone(), what));
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_gate_writes_in_order_behind_a_write_to_disk() {
        use super::{ConnCmd, ConnHandle, OutGate};
        use crate::durable::test_ticket;
        use bytes::Bytes;
        let (h, rx) = ConnHandle::new(
            3,
            "127.0.0.1:1".parse().unwrap(),
            None,
            None,
            super::AuthInfo::default(),
        );
        let gate = OutGate::default();
        // Nothing held: straight through.
        gate.write(&h, Bytes::from_static(b"a"));
        assert!(matches!(rx.try_recv(), Some(ConnCmd::Write(b)) if &b[..] == b"a"));
        assert!(gate.is_open());
        // Two pieces held by writes to disk, a plain one and a close
        // behind them: nothing leaves before the first write is done.
        let (t1, done1) = test_ticket();
        let (t2, done2) = test_ticket();
        gate.write_after(&h, Bytes::from_static(b"b"), t1);
        gate.write_after(&h, Bytes::from_static(b"c"), t2);
        gate.write(&h, Bytes::from_static(b"d"));
        gate.close(&h);
        // The session lets its handle go: the gate keeps the connection.
        drop(h);
        assert!(rx.try_recv().is_none());
        // The second write is done first: still nothing.
        done2(Ok(()));
        assert!(rx.try_recv().is_none());
        assert!(!gate.is_open());
        // The first one fails: its piece goes out all the same, and all
        // the rest behind it, in order.
        done1(Err(crate::durable::DurableError::Stopped {
            path: "durable.redb".into(),
        }));
        assert!(matches!(rx.recv().await, Some(ConnCmd::Write(b)) if &b[..] == b"b"));
        assert!(matches!(rx.recv().await, Some(ConnCmd::Write(b)) if &b[..] == b"c"));
        assert!(matches!(rx.recv().await, Some(ConnCmd::Write(b)) if &b[..] == b"d"));
        assert!(matches!(rx.recv().await, Some(ConnCmd::Close)));
        assert!(gate.is_open());
        // Every handle is gone now: the connection ends.
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn outbox_keeps_order_and_ends_with_the_last_handle() {
        use super::{ConnCmd, ConnHandle};
        use bytes::Bytes;
        use std::time::Duration;
        let (h, rx) = ConnHandle::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            None,
            None,
            super::AuthInfo::default(),
        );
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
        let (h, rx) = ConnHandle::new(
            2,
            "127.0.0.1:1".parse().unwrap(),
            None,
            None,
            super::AuthInfo::default(),
        );
        drop(rx);
        assert!(!h.write(Bytes::from_static(b"x")));
    }
}
