//! A session's delivery inbox: where the publish path leaves messages for
//! one session, outside the session actor's mailbox.
//!
//! Going through the mailbox cost one boxed actor message per delivery,
//! and put the subscriber's own acknowledgements behind every delivery
//! already queued, so a busy subscriber's inflight window reopened only
//! after its whole backlog had been moved. Here, a publisher appends to a
//! locked queue and wakes the session (one `SessionMsg::Drain`) when the
//! queue goes from idle to busy; the session takes deliveries in batches,
//! and between batches its mailbox (acknowledgements, connection events)
//! is served. The session also stops taking while its client's inflight
//! window and queue are full, so a slow subscriber's backlog stays here,
//! where it is bounded and where publishers can see it and slow down.

use emqx_mqtt::delivery::SubMatch;
use emqx_mqtt::message::Message;
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
// tokio's clock, so tests can pause and advance it.
use tokio::sync::Notify;
use tokio::time::Instant;

/// The subscriptions one message matched for one session; nearly always
/// one, kept inline.
pub type Matches = SmallVec<[SubMatch; 1]>;

/// One message for one session, and where the durable session journal
/// keeps it for the session (0: nowhere; see [`crate::journal`]).
pub type Item = (Arc<Message>, Matches, u64);

/// The outcome of [`Inbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the inbox is past its high-water mark while its session
    /// keeps taking: the publisher should slow down.
    Congested,
    /// The inbox is full (by count or by bytes): the message was dropped.
    Full,
}

/// How much one session's inbox may hold: messages (`count`) and bytes of
/// topics and payloads (`bytes`, `force_shutdown.max_heap_size`; its queue
/// and inflight window are bounded by as much again, in the channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub count: usize,
    pub bytes: usize,
}

impl Bounds {
    /// No bound at all (tests, tools).
    pub const NONE: Bounds = Bounds {
        count: usize::MAX,
        bytes: usize::MAX,
    };
}

/// A session that has taken nothing from its inbox for this long, while
/// the inbox is past its high-water mark, is not slowing its publishers
/// down any more: the inbox buffers instead (up to half its bound), so a
/// consumer that stopped does not hold up the clients it shares topics
/// with.
pub const SLOW: Duration = Duration::from_millis(200);

/// A session that has taken nothing for this long while its inbox is more
/// than half full has stopped: publishers are never paused for it again
/// until it catches up, and its own queue drops (see
/// [`Inbox::is_stopped`]). A consumer that pauses for less (a client busy
/// for a few seconds) loses nothing: its publishers wait for it.
pub const STOPPED: Duration = Duration::from_secs(5);

struct State {
    q: VecDeque<Item>,
    /// Bytes of the messages in `q` (see [`Message::size`]).
    bytes: usize,
    /// A `Drain` is on its way to the session, or the session will look at
    /// the inbox again by itself (it paused because its client is behind).
    scheduled: bool,
    /// When the session last took from the inbox, or when messages started
    /// waiting in it, whichever is later: how long it has made no progress.
    progress: Instant,
}

/// The session's side of an inbox: how it is woken, and who it is. The
/// session actor implements it; the inbox knows nothing else of it.
pub trait Wake: Send + Sync {
    /// Asks the session to take from its inbox. False when it is gone.
    fn wake(&self) -> bool;
    /// Stable for the session's life.
    fn id(&self) -> u64;
}

pub struct Inbox {
    session: Box<dyn Wake>,
    state: Mutex<State>,
    /// Woken when the inbox falls to its low-water mark (see
    /// [`Inbox::wait_drained`]).
    drained: Notify,
    /// The session made no progress for [`STOPPED`]: see
    /// [`Inbox::is_stopped`].
    stopped: AtomicBool,
    /// A message was dropped because the session was over its byte bound.
    over_bytes: AtomicBool,
    /// Bytes the session's queue holds, as it last said (only while it is
    /// large: see [`crate::overload`]).
    held: AtomicUsize,
    /// The session's incarnation in the durable journal while its
    /// deliveries must be journaled (a persistent session), else 0.
    journal: AtomicU64,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("session", &self.session.id())
            .field("len", &self.len())
            .finish()
    }
}

impl Inbox {
    pub fn new(session: impl Wake + 'static) -> Arc<Inbox> {
        Arc::new(Inbox {
            session: Box::new(session),
            state: Mutex::new(State {
                q: VecDeque::new(),
                bytes: 0,
                scheduled: false,
                progress: Instant::now(),
            }),
            drained: Notify::new(),
            stopped: AtomicBool::new(false),
            over_bytes: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            journal: AtomicU64::new(0),
        })
    }

    /// The session's journal incarnation (0: its deliveries are not
    /// journaled).
    pub fn journal(&self) -> u64 {
        self.journal.load(Ordering::Acquire)
    }

    pub fn set_journal(&self, incarnation: u64) {
        self.journal.store(incarnation, Ordering::Release);
    }

    pub fn session_id(&self) -> u64 {
        self.session.id()
    }

    pub fn len(&self) -> usize {
        self.state.lock().q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the messages waiting.
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Appends a message unless the inbox is at its bounds; wakes the
    /// session if it was idle. Past the high-water mark, says whether the
    /// publisher should slow down: only while the session keeps taking
    /// (see [`SLOW`] and [`STOPPED`]).
    pub fn push(&self, item: Item, b: Bounds) -> Pushed {
        let size = item.0.size();
        let mut s = self.state.lock();
        let len = s.q.len();
        if len >= b.count {
            return Pushed::Full;
        }
        if s.bytes + size > b.bytes {
            drop(s);
            // The session decides (force_shutdown) and frees its queue:
            // woken once, not once per message dropped meanwhile.
            if !self.over_bytes.swap(true, Ordering::AcqRel) {
                let _ = self.session.wake();
            }
            return Pushed::Full;
        }
        if len == 0 {
            s.progress = Instant::now();
        }
        s.q.push_back(item);
        s.bytes += size;
        let wake = !s.scheduled;
        s.scheduled = true;
        let lvl = level(len + 1, s.bytes, b);
        let congested = lvl >= Level::High && self.congested(&s, lvl);
        drop(s);
        if wake {
            // A stopped session is unsubscribing: the message is lost with it.
            let _ = self.session.wake();
        }
        if congested {
            Pushed::Congested
        } else {
            Pushed::Queued
        }
    }

    /// Past the high-water mark: whether the session is still taking, so
    /// its publishers should wait for it. Marks it stopped when it is not.
    fn congested(&self, s: &State, lvl: Level) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let idle = s.progress.elapsed();
        if lvl < Level::Hard {
            return idle < SLOW;
        }
        if idle < STOPPED {
            return true;
        }
        self.mark_stopped();
        false
    }

    fn mark_stopped(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            // The session takes everything now, into its bounded queue.
            let _ = self.session.wake();
        }
    }

    /// The session has taken nothing for [`STOPPED`] while its inbox was
    /// more than half full: publishers are not paused for it, and it takes
    /// from its inbox even while its client is behind (its queue then
    /// drops, with EMQX's policy), until [`Inbox::resume`].
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Session side: its client caught up; publishers wait for it again.
    pub fn resume(&self) {
        self.stopped.store(false, Ordering::Relaxed);
    }

    /// Session side: the bytes its queue holds now.
    pub fn set_held(&self, bytes: usize) {
        self.held.store(bytes, Ordering::Relaxed);
    }

    /// The bytes the session's queue held when it last said.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Session side: whether a message was dropped for the byte bound since
    /// the last call.
    pub fn take_over_bytes(&self) -> bool {
        self.over_bytes.load(Ordering::Relaxed) && self.over_bytes.swap(false, Ordering::AcqRel)
    }

    /// Session side: moves up to `max` messages, and at most `budget`
    /// bytes of them, into `out` (a message larger than the whole byte
    /// bound never fits: it is taken alone, for the session to drop).
    /// Returns true when more remain (the caller must come back: it is
    /// still marked scheduled); false when the inbox is empty and idle
    /// again.
    pub fn take(&self, max: usize, out: &mut Vec<Item>, b: Bounds, budget: usize) -> bool {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let before = s.q.len();
        let was = level(before, s.bytes, b);
        let (mut n, mut bytes) = (0, 0usize);
        for it in s.q.iter().take(max) {
            let size = it.0.size();
            let never_fits = n == 0 && size > b.bytes;
            if bytes + size > budget && !never_fits {
                break;
            }
            bytes += size;
            n += 1;
        }
        out.extend(s.q.drain(..n));
        s.bytes = s.bytes.saturating_sub(bytes);
        if n > 0 {
            s.progress = Instant::now();
        }
        let left = s.q.len();
        if left == 0 {
            s.scheduled = false;
            s.bytes = 0;
        }
        let now = level(left, s.bytes, b);
        drop(guard);
        if was > Level::Low && now == Level::Low {
            self.drained.notify_waiters();
        }
        left > 0
    }

    /// Publisher side: waits until this inbox is down to its low-water mark
    /// (for `b`), or its session stops taking from it: [`SLOW`] without
    /// progress while the inbox is at most half full, [`STOPPED`] beyond
    /// (then the session is marked stopped). Used to pause reading from a
    /// publisher whose messages fill a subscriber faster than it drains.
    pub async fn wait_drained(&self, b: Bounds) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let s = self.state.lock();
                let lvl = level(s.q.len(), s.bytes, b);
                if lvl == Level::Low || self.is_stopped() {
                    return;
                }
                let limit = if lvl == Level::Hard { STOPPED } else { SLOW };
                let idle = s.progress.elapsed();
                if idle >= limit {
                    if limit == STOPPED {
                        drop(s);
                        self.mark_stopped();
                    }
                    return;
                }
                limit - idle
            };
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }
}

/// Past this many waiting, QoS 1/2 publishers are slowed down: 256, or a
/// fifth of the bound if that is less, so that each of many publishers
/// may still overshoot by what it already read (32 packets at most) before
/// the inbox is full. Low enough that a throttled pair's latency stays in
/// the tens of milliseconds.
fn high_water(cap: usize) -> usize {
    (cap / 5).min(256)
}

fn low_water(cap: usize) -> usize {
    high_water(cap) / 2
}

/// Past this many waiting, a session that takes nothing for [`STOPPED`]
/// is stopped; below it, one that takes nothing for [`SLOW`] is let buffer.
fn hard_water(cap: usize) -> usize {
    (cap / 2).max(high_water(cap))
}

/// How full an inbox is, by count or by bytes, whichever is further: at
/// most its low-water mark (publishers waiting for it resume), between,
/// past its high-water mark (publishers slow down while it takes), past
/// half its bounds (it may be found stopped). In bytes the marks are a
/// sixteenth, an eighth and a half of the bound, so large messages slow
/// publishers down before the byte bound drops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Low,
    Normal,
    High,
    Hard,
}

fn level(len: usize, bytes: usize, b: Bounds) -> Level {
    if len > hard_water(b.count) || bytes > b.bytes / 2 {
        Level::Hard
    } else if len > high_water(b.count) || bytes > b.bytes / 8 {
        Level::High
    } else if len <= low_water(b.count) && bytes <= b.bytes / 16 {
        Level::Low
    } else {
        Level::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionMsg;
    use emqx_mqtt::packet::SubscriptionOptions;
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc;

    /// Counts the Drain wake-ups it gets.
    struct Waker;

    impl Actor for Waker {
        type Msg = SessionMsg;
        type State = mpsc::UnboundedSender<()>;
        type Arguments = mpsc::UnboundedSender<()>;

        async fn pre_start(
            &self,
            _me: ActorRef<SessionMsg>,
            a: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(a)
        }

        async fn handle(
            &self,
            _me: ActorRef<SessionMsg>,
            msg: SessionMsg,
            st: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if matches!(msg, SessionMsg::Drain) {
                let _ = st.send(());
            }
            Ok(())
        }
    }

    fn item(i: u32) -> Item {
        let m = Message::system(
            format!("t/{i}").as_str(),
            "x",
            false,
            crate::clock::now_ms(),
        );
        let sm = SubMatch {
            opts: SubscriptionOptions::default(),
            sub_id: Some(i),
        };
        (Arc::new(m), SmallVec::from_elem(sm, 1), 0)
    }

    fn bounds(count: usize) -> Bounds {
        Bounds {
            count,
            ..Bounds::NONE
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_wake_per_busy_period_and_a_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (a, _h) = Actor::spawn(None, Waker, tx).await.expect("spawn");
        let ib = Inbox::new(a.clone());
        // High water 4, low water 2, hard water 10.
        let b = bounds(20);
        let mut got = Vec::new();
        for i in 0..4 {
            assert_eq!(ib.push(item(i), b), Pushed::Queued);
        }
        for i in 4..20 {
            assert_eq!(ib.push(item(i), b), Pushed::Congested);
        }
        assert_eq!(ib.push(item(20), b), Pushed::Full);
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a wake")
            .expect("open");
        // Taking part leaves it scheduled: no new wake for new pushes.
        assert!(ib.take(15, &mut got, b, usize::MAX));
        assert_eq!(got.len(), 15);
        ib.push(item(21), b);
        assert!(!ib.take(100, &mut got, b, usize::MAX));
        let ids: Vec<u32> = got.iter().filter_map(|(_, m, _)| m[0].sub_id).collect();
        let want: Vec<u32> = (0..20).chain([21]).collect();
        assert_eq!(ids, want, "in order, the one over the bound dropped");
        assert_eq!(ib.bytes(), 0);
        // Empty and idle: the next push wakes again.
        ib.push(item(22), b);
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a second wake")
            .expect("open");
        assert!(
            rx.try_recv().is_err(),
            "exactly two wakes for two busy periods"
        );
        a.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_bound_drops_and_tells_the_session() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (a, _h) = Actor::spawn(None, Waker, tx).await.expect("spawn");
        let ib = Inbox::new(a.clone());
        // Each item is "t/N" and "x": 4 bytes.
        let b = Bounds {
            count: 100,
            bytes: 20,
        };
        let mut n = 0;
        while ib.push(item(n), b) != Pushed::Full {
            n += 1;
            assert!(n < 10, "the byte bound never bit");
        }
        assert_eq!(n, 5, "5 items of 4 bytes fit in 20");
        assert_eq!(ib.bytes(), 20);
        assert!(ib.take_over_bytes(), "the session is told");
        assert!(!ib.take_over_bytes(), "once");
        let mut got = Vec::new();
        ib.take(2, &mut got, b, usize::MAX);
        assert_eq!(ib.bytes(), 12);
        assert_ne!(ib.push(item(9), b), Pushed::Full, "room again");
        // The session takes what its budget has room for, in order.
        let mut got = Vec::new();
        assert!(ib.take(100, &mut got, b, 9), "more remain");
        assert_eq!(got.len(), 2, "two of 4 bytes fit in 9");
        ib.take(100, &mut got, b, 0);
        assert_eq!(got.len(), 2, "nothing fits in 0");
        // A message larger than the whole bound is taken alone, to be
        // dropped by the session, not left blocking the inbox.
        let mut big = item(0);
        let mut m = (*big.0).clone();
        m.payload = bytes::Bytes::from(vec![0u8; 64]);
        big.0 = Arc::new(m);
        let tiny = Bounds {
            count: 100,
            bytes: 20,
        };
        let (tx2, _rx2) = mpsc::unbounded_channel();
        let (a2, _h2) = Actor::spawn(None, Waker, tx2).await.expect("spawn");
        let ib2 = Inbox::new(a2.clone());
        {
            let mut st = ib2.state.lock();
            st.bytes += big.0.size();
            st.q.push_back(big);
            st.scheduled = true;
        }
        let mut got = Vec::new();
        assert!(!ib2.take(100, &mut got, tiny, 5));
        assert_eq!(got.len(), 1);
        a2.stop(None);
        a.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_stops_taking_stops_slowing_its_publishers() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (a, _h) = Actor::spawn(None, Waker, tx).await.expect("spawn");
        let ib = Inbox::new(a.clone());
        // High water 4, hard water 10.
        let b = bounds(20);
        for i in 0..4 {
            ib.push(item(i), b);
        }
        assert_eq!(ib.push(item(4), b), Pushed::Congested, "just went busy");
        // Nothing taken for SLOW: below hard water, the inbox buffers.
        tokio::time::advance(SLOW).await;
        for i in 5..10 {
            assert_eq!(ib.push(item(i), b), Pushed::Queued);
        }
        // Past hard water, publishers wait again, up to STOPPED.
        assert_eq!(ib.push(item(10), b), Pushed::Congested);
        assert!(!ib.is_stopped());
        tokio::time::advance(STOPPED - SLOW).await;
        assert_eq!(ib.push(item(11), b), Pushed::Queued);
        assert!(ib.is_stopped(), "no progress for STOPPED: stopped");
        assert_eq!(ib.push(item(12), b), Pushed::Queued);
        // Taking does not end it; the session says when its client caught up.
        let mut got = Vec::new();
        ib.take(100, &mut got, b, usize::MAX);
        assert!(ib.is_stopped());
        ib.resume();
        assert!(!ib.is_stopped());
        // A session that keeps taking is never stopped, however long.
        for round in 0..20u32 {
            for i in 0..12 {
                ib.push(item(round * 100 + i), b);
            }
            tokio::time::advance(SLOW / 2).await;
            assert_eq!(ib.push(item(round * 100 + 99), b), Pushed::Congested);
            got.clear();
            ib.take(100, &mut got, b, usize::MAX);
        }
        assert!(!ib.is_stopped());
        a.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_at_low_water_or_when_the_session_stops_taking() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (a, _h) = Actor::spawn(None, Waker, tx).await.expect("spawn");
        let ib = Inbox::new(a.clone());
        let b = bounds(20);
        for i in 0..8 {
            ib.push(item(i), b);
        }
        let waiter = {
            let ib = ib.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                ib.wait_drained(b).await;
                t.elapsed()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "8 waiting is above low water");
        // A session that takes keeps the waiter waiting...
        let mut got = Vec::new();
        ib.take(2, &mut got, b, usize::MAX);
        tokio::time::advance(SLOW / 2).await;
        assert!(!waiter.is_finished(), "6 waiting is above low water");
        // ... until it is down to low water.
        ib.take(4, &mut got, b, usize::MAX);
        let waited = waiter.await.expect("join");
        assert!(waited < SLOW, "{waited:?}");
        // Below hard water, a session that takes nothing releases the
        // waiter after SLOW and is not marked stopped.
        for i in 0..8 {
            ib.push(item(i), b);
        }
        let t = Instant::now();
        ib.wait_drained(b).await;
        assert_eq!(t.elapsed(), SLOW);
        assert!(!ib.is_stopped());
        // Past hard water, after STOPPED since it last took, and it is.
        for i in 0..8 {
            ib.push(item(i), b);
        }
        let t = Instant::now();
        ib.wait_drained(b).await;
        assert_eq!(t.elapsed(), STOPPED - SLOW);
        assert!(ib.is_stopped());
        // A stopped session holds no one.
        let t = Instant::now();
        ib.wait_drained(b).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        a.stop(None);
    }
}
