//! Counters shared by every client of a run, a lock-free latency histogram,
//! and the per-publisher sequence tracking of subscribers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A log-linear histogram of nanosecond values with 64 buckets per power of
/// two (at most ~1.6% error), updated with relaxed atomics so every client
/// task can record into the same one.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
    sum: AtomicU64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = SUB * 2;

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = e - SUB_BITS;
    (LINEAR + u64::from(e - SUB_BITS - 1) * SUB + ((v >> shift) & (SUB - 1))) as usize
}

/// The middle of a bucket's range.
fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let k = i - LINEAR;
    let e = k / SUB + u64::from(SUB_BITS) + 1;
    let shift = e - u64::from(SUB_BITS);
    let low = (SUB | (k % SUB)) << shift;
    low + (1u64 << shift) / 2
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        let n = bucket_of(u64::MAX) + 1;
        Histogram {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn record(&self, nanos: u64) {
        self.buckets[bucket_of(nanos)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(nanos, Relaxed);
        self.max.fetch_max(nanos, Relaxed);
    }

    /// Records many values, touching the shared totals once.
    pub fn record_all(&self, nanos: &[u64]) {
        if nanos.is_empty() {
            return;
        }
        let (mut sum, mut max) = (0u64, 0u64);
        for &v in nanos {
            self.buckets[bucket_of(v)].fetch_add(1, Relaxed);
            sum = sum.wrapping_add(v);
            max = max.max(v);
        }
        self.count.fetch_add(nanos.len() as u64, Relaxed);
        self.sum.fetch_add(sum, Relaxed);
        self.max.fetch_max(max, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    pub fn mean(&self) -> u64 {
        self.sum
            .load(Relaxed)
            .checked_div(self.count())
            .unwrap_or(0)
    }

    /// The value at quantile `q` (0..=1), never above the recorded maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|b| b.load(Relaxed)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return value_of(i).min(self.max());
            }
        }
        self.max()
    }
}

/// Everything a run counts. Times are nanoseconds since `start`.
pub struct Stats {
    pub start: Instant,
    /// Clients connected right now.
    pub connected: AtomicUsize,
    /// Clients that got a successful CONNACK.
    pub connected_total: AtomicUsize,
    /// Subscribers whose SUBACK granted the subscription.
    pub subscribed: AtomicUsize,
    pub errors: AtomicU64,
    pub sent: AtomicU64,
    /// QoS 1/2 publishes completed (PUBACK / PUBCOMP with success).
    pub acked: AtomicU64,
    /// QoS 1/2 publishes the broker refused (reason code >= 0x80).
    pub refused: AtomicU64,
    /// QoS 1/2 publishes still unacknowledged when their client stopped.
    pub unacked: AtomicU64,
    pub received: AtomicU64,
    /// Received payloads too short to carry a timestamp and sequence.
    pub foreign: AtomicU64,
    pub loss: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub latency: Histogram,
    /// From a QoS 1/2 publish to its PUBACK or PUBCOMP.
    pub ack_latency: Histogram,
    pub connect_latency: Histogram,
    pub first_connect: AtomicU64,
    pub last_connack: AtomicU64,
    pub first_sent: AtomicU64,
    pub last_sent: AtomicU64,
    pub first_recv: AtomicU64,
    pub last_recv: AtomicU64,
    error_lines: AtomicUsize,
}

/// How many error messages are printed before the rest are only counted.
const MAX_ERROR_LINES: usize = 10;

impl Stats {
    pub fn new() -> Stats {
        Stats {
            start: Instant::now(),
            connected: AtomicUsize::new(0),
            connected_total: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            loss: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            latency: Histogram::new(),
            ack_latency: Histogram::new(),
            connect_latency: Histogram::new(),
            first_connect: AtomicU64::new(u64::MAX),
            last_connack: AtomicU64::new(0),
            first_sent: AtomicU64::new(u64::MAX),
            last_sent: AtomicU64::new(0),
            first_recv: AtomicU64::new(u64::MAX),
            last_recv: AtomicU64::new(0),
            error_lines: AtomicUsize::new(0),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Counts an error and prints the first few.
    pub fn error(&self, what: std::fmt::Arguments<'_>) {
        self.errors.fetch_add(1, Relaxed);
        let n = self.error_lines.fetch_add(1, Relaxed);
        if n < MAX_ERROR_LINES {
            eprintln!("error: {what}");
        } else if n == MAX_ERROR_LINES {
            eprintln!("error: (further errors are only counted)");
        }
    }

    pub fn note_window(first: &AtomicU64, last: &AtomicU64, t: u64) {
        first.fetch_min(t, Relaxed);
        last.fetch_max(t, Relaxed);
    }

    /// Length of the `[first, last]` window in seconds (0 if empty).
    pub fn window_secs(first: &AtomicU64, last: &AtomicU64) -> f64 {
        let f = first.load(Relaxed);
        let l = last.load(Relaxed);
        if f == u64::MAX || l < f {
            0.0
        } else {
            Duration::from_nanos(l - f).as_secs_f64()
        }
    }
}

/// Bits of history kept per publisher for duplicate detection.
const WINDOW: u32 = 8192;

/// What one subscriber has seen of one publisher's sequence numbers: the
/// lowest and highest, how many distinct ones, and a bitmap of the last
/// `WINDOW` sequence numbers below the highest.
pub struct SeqTrack {
    min: u32,
    max: u32,
    distinct: u64,
    bits: Box<[u64; (WINDOW / 64) as usize]>,
}

/// What one sequence number turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    OutOfOrder,
    Duplicate,
}

impl SeqTrack {
    pub fn new(seq: u32) -> SeqTrack {
        let mut t = SeqTrack {
            min: seq,
            max: seq,
            distinct: 1,
            bits: Box::new([0; (WINDOW / 64) as usize]),
        };
        t.set(seq);
        t
    }

    fn slot(seq: u32) -> (usize, u64) {
        let b = seq % WINDOW;
        ((b / 64) as usize, 1u64 << (b % 64))
    }

    fn set(&mut self, seq: u32) {
        let (w, m) = Self::slot(seq);
        self.bits[w] |= m;
    }

    fn clear(&mut self, seq: u32) {
        let (w, m) = Self::slot(seq);
        self.bits[w] &= !m;
    }

    fn is_set(&self, seq: u32) -> bool {
        let (w, m) = Self::slot(seq);
        self.bits[w] & m != 0
    }

    pub fn see(&mut self, seq: u32) -> Seen {
        if seq > self.max {
            let gap = seq - self.max;
            if gap >= WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.max + 1..seq {
                    self.clear(s);
                }
            }
            self.set(seq);
            self.max = seq;
            self.distinct += 1;
            return Seen::InOrder;
        }
        self.min = self.min.min(seq);
        if self.max - seq >= WINDOW {
            // Too old to tell a duplicate from a late arrival.
            self.distinct += 1;
            return Seen::OutOfOrder;
        }
        if self.is_set(seq) {
            return Seen::Duplicate;
        }
        self.set(seq);
        self.distinct += 1;
        Seen::OutOfOrder
    }

    /// Sequence numbers between the lowest and highest seen that never
    /// arrived.
    pub fn loss(&self) -> u64 {
        (u64::from(self.max - self.min) + 1).saturating_sub(self.distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            65_537,
            1_000_000,
            123_456_789_000,
        ] {
            let got = value_of(bucket_of(v));
            let err = (got as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "{v} -> {got}");
        }
        let mut last = 0;
        for i in 0..bucket_of(u64::MAX) {
            assert!(value_of(i) >= last);
            last = value_of(i);
        }
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.count(), 1000);
    }

    #[test]
    fn seq_tracking() {
        let mut t = SeqTrack::new(0);
        assert_eq!(t.see(1), Seen::InOrder);
        assert_eq!(t.see(3), Seen::InOrder);
        assert_eq!(t.see(1), Seen::Duplicate);
        assert_eq!(t.loss(), 1);
        assert_eq!(t.see(2), Seen::OutOfOrder);
        assert_eq!(t.loss(), 0);
        assert_eq!(t.see(2), Seen::Duplicate);
        assert_eq!(t.see(20_000), Seen::InOrder);
        assert_eq!(t.loss(), 20_000 - 4);
        assert_eq!(t.see(3), Seen::OutOfOrder);
    }
}
