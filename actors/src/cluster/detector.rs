//! Failure detection and reconnect pacing, as plain state machines with an
//! injected clock.
//!
//! ractor_cluster only notices a dead peer when its socket closes; a silent
//! partition or a frozen process would go unseen. So every node sends a
//! heartbeat to every peer every `interval`, and a peer not heard from for
//! `timeout` is declared down, whatever its socket says.

use rand::{Rng, RngExt};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the detector concluded at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Up(String),
    Down(String),
}

#[derive(Debug, Clone)]
struct Peer {
    last_seen: Option<Instant>,
    up: bool,
    watched_since: Instant,
}

/// Heartbeat bookkeeping for every watched peer.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    timeout: Duration,
    peers: BTreeMap<String, Peer>,
}

impl FailureDetector {
    pub fn new(timeout: Duration) -> FailureDetector {
        FailureDetector {
            timeout,
            peers: BTreeMap::new(),
        }
    }

    /// Starts watching a peer; it counts as down until heard from.
    pub fn watch(&mut self, node: &str, now: Instant) {
        self.peers.entry(node.to_string()).or_insert(Peer {
            last_seen: None,
            up: false,
            watched_since: now,
        });
    }

    pub fn unwatch(&mut self, node: &str) {
        self.peers.remove(node);
    }

    /// A heartbeat (or any message) from `node` arrived; returns `Up` when
    /// this brings it back.
    pub fn heard(&mut self, node: &str, now: Instant) -> Option<Liveness> {
        let p = self.peers.get_mut(node)?;
        p.last_seen = Some(now);
        if !p.up {
            p.up = true;
            return Some(Liveness::Up(node.to_string()));
        }
        None
    }

    /// The transport says the peer is gone (socket closed): down at once.
    pub fn lost(&mut self, node: &str) -> Option<Liveness> {
        let p = self.peers.get_mut(node)?;
        if p.up {
            p.up = false;
            return Some(Liveness::Down(node.to_string()));
        }
        None
    }

    /// Peers silent past the timeout go down.
    pub fn tick(&mut self, now: Instant) -> Vec<Liveness> {
        let mut out = Vec::new();
        for (n, p) in self.peers.iter_mut() {
            let last = p.last_seen.unwrap_or(p.watched_since);
            if p.up && now.duration_since(last) >= self.timeout {
                p.up = false;
                out.push(Liveness::Down(n.clone()));
            }
        }
        out
    }

    pub fn is_up(&self, node: &str) -> bool {
        self.peers.get(node).is_some_and(|p| p.up)
    }

    /// Watched peers and whether each is up.
    pub fn peers(&self) -> Vec<(String, bool)> {
        self.peers.iter().map(|(n, p)| (n.clone(), p.up)).collect()
    }
}

/// Exponential backoff with full jitter, capped, for reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    next_at: Option<Instant>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
            next_at: None,
        }
    }

    /// Whether an attempt may be made now.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_at.is_none_or(|t| now >= t)
    }

    /// Records a failed attempt at `now` and schedules the next one
    /// `rand(base/2 ..= min(max, base * 2^attempt))` later.
    pub fn failed(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let cap = exp.min(self.max).max(self.base);
        let lo = self.base / 2;
        let wait = if cap > lo {
            lo + Duration::from_millis(rng.random_range(0..=(cap - lo).as_millis() as u64))
        } else {
            cap
        };
        self.attempt = self.attempt.saturating_add(1);
        self.next_at = Some(now + wait);
        wait
    }

    /// The peer answered: start from scratch next time.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.next_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_peer_goes_up_when_heard_and_down_after_the_timeout() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(Duration::from_secs(6));
        d.watch("b@h", t0);
        assert!(!d.is_up("b@h"));
        assert_eq!(d.heard("b@h", t0), Some(Liveness::Up("b@h".into())));
        assert_eq!(d.heard("b@h", t0 + Duration::from_secs(2)), None);
        assert!(d.tick(t0 + Duration::from_secs(7)).is_empty());
        assert_eq!(
            d.tick(t0 + Duration::from_secs(8)),
            vec![Liveness::Down("b@h".into())]
        );
        assert!(
            d.tick(t0 + Duration::from_secs(30)).is_empty(),
            "down is reported once"
        );
        assert_eq!(
            d.heard("b@h", t0 + Duration::from_secs(31)),
            Some(Liveness::Up("b@h".into()))
        );
    }

    #[test]
    fn a_closed_socket_is_down_at_once_and_unknown_peers_are_ignored() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(Duration::from_secs(6));
        d.watch("b@h", t0);
        d.heard("b@h", t0);
        assert_eq!(d.lost("b@h"), Some(Liveness::Down("b@h".into())));
        assert_eq!(d.lost("b@h"), None);
        assert_eq!(d.heard("x@h", t0), None);
        d.unwatch("b@h");
        assert!(d.peers().is_empty());
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        assert!(b.ready(t0));
        let mut waits = Vec::new();
        for _ in 0..12 {
            waits.push(b.failed(t0, &mut rng));
        }
        assert!(!b.ready(t0));
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(100) && *w <= Duration::from_secs(5)));
        assert!(
            waits[8..].iter().any(|w| *w > Duration::from_secs(1)),
            "{waits:?}"
        );
        b.reset();
        assert!(b.ready(t0));
    }
}
