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
use ractor::ActorId;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The subscriptions one message matched for one session; nearly always
/// one, kept inline.
pub type Matches = SmallVec<[SubMatch; 1]>;

/// One message for one session.
pub type Item = (Arc<Message>, Matches);

/// The outcome of [`Inbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued, and the inbox is past its high-water mark: the publisher
    /// should slow down.
    Congested,
    /// The inbox is full: the message was dropped.
    Full,
}

struct State {
    q: VecDeque<Item>,
    /// A `Drain` is on its way to the session, or the session will look at
    /// the inbox again by itself (it paused because its client is behind).
    scheduled: bool,
}

/// The session's side of an inbox: how it is woken, and who it is. The
/// session actor implements it; the inbox knows nothing else of it.
pub trait Wake: Send + Sync {
    /// Asks the session to take from its inbox. False when it is gone.
    fn wake(&self) -> bool;
    fn id(&self) -> ActorId;
}

pub struct Inbox {
    session: Box<dyn Wake>,
    state: Mutex<State>,
    /// Woken when the inbox falls to its low-water mark (see
    /// [`Inbox::wait_drained`]).
    drained: Notify,
    /// Messages taken by the session so far: tells a slow subscriber from a
    /// stalled one.
    taken: AtomicU64,
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
                scheduled: false,
            }),
            drained: Notify::new(),
            taken: AtomicU64::new(0),
        })
    }

    pub fn session_id(&self) -> ActorId {
        self.session.id()
    }

    pub fn len(&self) -> usize {
        self.state.lock().q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a message unless `cap` are already waiting; wakes the
    /// session if it was idle. Past the high-water mark (`high_water`),
    /// says so.
    pub fn push(&self, item: Item, cap: usize) -> Pushed {
        let mut s = self.state.lock();
        let len = s.q.len();
        if len >= cap {
            return Pushed::Full;
        }
        s.q.push_back(item);
        let wake = !s.scheduled;
        s.scheduled = true;
        drop(s);
        if wake {
            // A stopped session is unsubscribing: the message is lost with it.
            let _ = self.session.wake();
        }
        if len + 1 > high_water(cap) {
            Pushed::Congested
        } else {
            Pushed::Queued
        }
    }

    /// Session side: moves up to `max` messages into `out`. Returns true
    /// when more remain (the caller must come back: it is still marked
    /// scheduled); false when the inbox is empty and idle again.
    pub fn take(&self, max: usize, out: &mut Vec<Item>, cap: usize) -> bool {
        let mut s = self.state.lock();
        let before = s.q.len();
        let n = before.min(max);
        out.extend(s.q.drain(..n));
        self.taken.fetch_add(n as u64, Ordering::Release);
        let left = s.q.len();
        if left == 0 {
            s.scheduled = false;
        }
        drop(s);
        if before > low_water(cap) && left <= low_water(cap) {
            self.drained.notify_waiters();
        }
        left > 0
    }

    /// Publisher side: waits until this inbox is down to its low-water mark
    /// (for `cap`), or its session has taken nothing from it for `stalled`.
    /// Used to pause reading from a publisher whose messages fill a
    /// subscriber faster than it drains.
    pub async fn wait_drained(&self, cap: usize, stalled: Duration) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.len() <= low_water(cap) {
                return;
            }
            let taken = self.taken.load(Ordering::Acquire);
            if tokio::time::timeout(stalled, notified).await.is_err()
                && self.taken.load(Ordering::Acquire) == taken
            {
                return;
            }
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
        (Arc::new(m), SmallVec::from_elem(sm, 1))
    }

    #[tokio::test]
    async fn one_wake_per_busy_period_and_a_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (a, _h) = Actor::spawn(None, Waker, tx).await.expect("spawn");
        let ib = Inbox::new(a.clone());
        // High water 4, low water 2.
        let cap = 20;
        let mut got = Vec::new();
        for i in 0..4 {
            assert_eq!(ib.push(item(i), cap), Pushed::Queued);
        }
        for i in 4..20 {
            assert_eq!(ib.push(item(i), cap), Pushed::Congested);
        }
        assert_eq!(ib.push(item(20), cap), Pushed::Full);
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a wake")
            .expect("open");
        // Taking part leaves it scheduled: no new wake for new pushes.
        assert!(ib.take(15, &mut got, cap));
        assert_eq!(got.len(), 15);
        ib.push(item(21), cap);
        assert!(!ib.take(100, &mut got, cap));
        let ids: Vec<u32> = got.iter().filter_map(|(_, m)| m[0].sub_id).collect();
        let want: Vec<u32> = (0..20).chain([21]).collect();
        assert_eq!(ids, want, "in order, the one over the bound dropped");
        // Empty and idle: the next push wakes again.
        ib.push(item(22), cap);
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

    #[tokio::test]
    async fn waiters_wake_at_low_water_or_when_the_session_stalls() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (a, _h) = Actor::spawn(None, Waker, tx).await.expect("spawn");
        let ib = Inbox::new(a.clone());
        let cap = 20;
        for i in 0..8 {
            ib.push(item(i), cap);
        }
        let waiter = {
            let ib = ib.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                ib.wait_drained(cap, Duration::from_secs(30)).await;
                t.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "8 waiting is above low water");
        // A slow session keeps the waiter waiting...
        let mut got = Vec::new();
        ib.take(2, &mut got, cap);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "6 waiting is above low water");
        // ... until it is down to low water.
        ib.take(4, &mut got, cap);
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("join");
        assert!(waited < Duration::from_secs(30));
        // A session that takes nothing releases the waiter after `stalled`,
        // one that keeps taking does not.
        for i in 0..8 {
            ib.push(item(i), cap);
        }
        let t = std::time::Instant::now();
        ib.wait_drained(cap, Duration::from_millis(100)).await;
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(100) && e < Duration::from_secs(5),
            "{e:?}"
        );
        let slow = {
            let ib = ib.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    let mut v = Vec::new();
                    ib.take(1, &mut v, cap);
                }
            })
        };
        let t = std::time::Instant::now();
        ib.wait_drained(cap, Duration::from_millis(500)).await;
        assert!(
            ib.len() <= 2,
            "released at low water, not for a stall ({} left after {:?})",
            ib.len(),
            t.elapsed()
        );
        slow.await.expect("join");
        a.stop(None);
    }
}
