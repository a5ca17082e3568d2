//! The replication stream from a core to a replicant (Mria's RLOG), as
//! plain state machines with no clock and no transport.
//!
//! A core numbers every change it applies to a shard (a group of tables
//! replicated together) with a contiguous sequence number. A replicant
//! that follows the core for that shard subscribes with a stream id of its
//! own choosing; the core answers with a snapshot of the shard taken after
//! change `at`, cut into parts, and from then on sends every change it
//! applies, tagged with the stream id and its number.
//!
//! The replicant gathers the snapshot's parts beside the copy it serves and
//! hands them over whole when the last one is there, for the copy to
//! replace its contents in one step: it never serves a shard that is half
//! cleared (Mria clears the tables before a bootstrap), and a shard that
//! was never complete is not served at all. The changes numbered after
//! `at` follow.
//!
//! Anything out of line ends the stream: a part or a change that is not the
//! next one (something was lost), a heartbeat saying the core is further
//! than what arrived, no word from the core for a few heartbeats (the core
//! died or the link is cut), or the core going down. The replicant then
//! subscribes again, to the same core or another, under a new stream id,
//! and bootstraps from scratch; whatever still arrives for an old stream is
//! ignored. Sequence numbers are those of one core incarnation and one
//! stream only, so a core that restarts needs no persistent counter.
//!
//! One stream is sent in order by one sender (the core's owner of the
//! shard) over an ordered transport (the cluster's control connection), so
//! its snapshot parts come before anything else on it: a change or a
//! heartbeat during the snapshot means a part was lost. The
//! simulated-network test drops, duplicates and delays messages (keeping
//! each link in order) and proves that the replicant converges all the
//! same.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The number of a change in a core's log of one shard.
pub type Seq = u64;

/// One subscription of one replicant to one core. The replicant picks it:
/// `incarnation` is drawn at random when the replicant starts, `n` counts
/// its subscriptions since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamId {
    pub incarnation: u64,
    pub n: u64,
}

/// A replicant's copy of a shard.
pub trait Shard {
    /// One change.
    type Op: Clone + std::fmt::Debug;
    /// One row of a snapshot.
    type Row: Clone + std::fmt::Debug;
    /// Replaces the whole contents with a snapshot's rows, in one step for
    /// readers.
    fn restore(&mut self, rows: Vec<Self::Row>);
    /// Applies one change; `false` if it does not fit this copy (the copy
    /// and the core's table differ), which ends the stream.
    fn apply(&mut self, op: &Self::Op) -> bool;
}

/// From a core to a replicant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Down<Op, Row> {
    /// Part `part` (from 0) of a snapshot taken after change `at`; `last`
    /// on its final part.
    Snapshot {
        stream: StreamId,
        at: Seq,
        part: u32,
        last: bool,
        rows: Vec<Row>,
    },
    /// Changes numbered `first`, `first + 1`, ...
    Entries {
        stream: StreamId,
        first: Seq,
        ops: Vec<Op>,
    },
    /// The core's log is at `seq` (sent every heartbeat interval).
    Alive { stream: StreamId, seq: Seq },
}

impl<Op, Row> Down<Op, Row> {
    pub fn stream(&self) -> StreamId {
        match self {
            Down::Snapshot { stream, .. }
            | Down::Entries { stream, .. }
            | Down::Alive { stream, .. } => *stream,
        }
    }
}

/// From a replicant to a core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Up {
    /// Start a stream (replacing any earlier stream of this replicant).
    Subscribe { stream: StreamId },
    /// Stop a stream (the replicant moved to another core).
    Unsubscribe { stream: StreamId },
}

/// The core's side of one shard: its change counter and the replicants
/// following it.
#[derive(Debug)]
pub struct Upstream {
    seq: Seq,
    /// replicant -> its current stream.
    agents: BTreeMap<String, StreamId>,
    /// Rows per snapshot part (Mria's `bootstrap_batch_size` is 500).
    part_rows: usize,
}

impl Upstream {
    pub fn new(part_rows: usize) -> Upstream {
        Upstream {
            seq: 0,
            agents: BTreeMap::new(),
            part_rows: part_rows.max(1),
        }
    }

    /// The number of the last change recorded.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// How many replicants follow this core (for their load balancing).
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// The replicants following this core and their streams.
    pub fn followers(&self) -> impl Iterator<Item = (&str, StreamId)> {
        self.agents.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// A replicant asked for a stream: its snapshot (`rows`, the shard's
    /// whole contents now), in parts. Every change recorded from now on
    /// goes to it too.
    pub fn subscribe<Op, Row: Clone>(
        &mut self,
        replica: &str,
        stream: StreamId,
        rows: Vec<Row>,
    ) -> Vec<Down<Op, Row>> {
        self.agents.insert(replica.to_string(), stream);
        let mut parts: Vec<Down<Op, Row>> = Vec::new();
        let mut chunks = rows.chunks(self.part_rows).peekable();
        if chunks.peek().is_none() {
            return vec![Down::Snapshot {
                stream,
                at: self.seq,
                part: 0,
                last: true,
                rows: Vec::new(),
            }];
        }
        let mut part = 0u32;
        while let Some(c) = chunks.next() {
            parts.push(Down::Snapshot {
                stream,
                at: self.seq,
                part,
                last: chunks.peek().is_none(),
                rows: c.to_vec(),
            });
            part += 1;
        }
        parts
    }

    /// The replicant stopped following this core (it said so, or it went
    /// down). A stale `stream` (an older one) changes nothing.
    pub fn unsubscribe(&mut self, replica: &str, stream: Option<StreamId>) {
        if stream.is_none() || self.agents.get(replica).copied() == stream {
            self.agents.remove(replica);
        }
    }

    /// Numbers changes just applied to the shard, in the order applied,
    /// and returns them for every follower.
    pub fn record<Op: Clone, Row>(&mut self, ops: Vec<Op>) -> Vec<(String, Down<Op, Row>)> {
        if ops.is_empty() {
            return Vec::new();
        }
        let first = self.seq + 1;
        self.seq += ops.len() as Seq;
        self.agents
            .iter()
            .map(|(r, s)| {
                (
                    r.clone(),
                    Down::Entries {
                        stream: *s,
                        first,
                        ops: ops.clone(),
                    },
                )
            })
            .collect()
    }

    /// A heartbeat for every follower.
    pub fn alive<Op, Row>(&self) -> Vec<(String, Down<Op, Row>)> {
        self.agents
            .iter()
            .map(|(r, s)| {
                (
                    r.clone(),
                    Down::Alive {
                        stream: *s,
                        seq: self.seq,
                    },
                )
            })
            .collect()
    }
}

/// Why a replicant's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// A snapshot part or a change was missing.
    Gap,
    /// Nothing from the core for `quiet_limit` heartbeats.
    Silent,
    /// The core went down or was cut off.
    CoreDown,
}

/// What the owner of a [`Replica`] must do after feeding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The shard is served from a new complete copy (first bootstrap, or a
    /// re-bootstrap finished).
    Ready,
    /// The stream ended; subscribe again ([`Replica::subscribe`]) to a core
    /// ([`pick_core`]).
    Lost(Lost),
}

enum Phase<S: Shard> {
    /// No stream.
    Idle,
    /// Receiving a snapshot's parts into `rows`.
    Bootstrap {
        core: String,
        stream: StreamId,
        next_part: u32,
        at: Option<Seq>,
        rows: Vec<S::Row>,
    },
    /// Following: `next` is the number of the next change expected.
    Normal {
        core: String,
        stream: StreamId,
        next: Seq,
    },
}

impl<S: Shard> std::fmt::Debug for Phase<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Idle => write!(f, "Idle"),
            Phase::Bootstrap {
                core,
                stream,
                next_part,
                at,
                rows,
            } => write!(
                f,
                "Bootstrap {{ core: {core}, stream: {stream:?}, next_part: {next_part}, at: {at:?}, rows: {} }}",
                rows.len()
            ),
            Phase::Normal { core, stream, next } => {
                write!(f, "Normal {{ core: {core}, stream: {stream:?}, next: {next} }}")
            }
        }
    }
}

/// The replicant's side of one shard. The copy it serves is the caller's
/// (behind whatever lock the readers use), passed to [`Replica::receive`].
pub struct Replica<S: Shard> {
    incarnation: u64,
    streams: u64,
    phase: Phase<S>,
    /// Heartbeat intervals since the current stream last said anything.
    quiet: u32,
    quiet_limit: u32,
    /// Completed bootstraps.
    pub bootstraps: u64,
    /// Streams ended, by cause.
    pub lost: HashMap<&'static str, u64>,
}

impl<S: Shard> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("incarnation", &self.incarnation)
            .field("streams", &self.streams)
            .field("phase", &self.phase)
            .field("quiet", &self.quiet)
            .field("bootstraps", &self.bootstraps)
            .field("lost", &self.lost)
            .finish()
    }
}

impl<S: Shard> Replica<S> {
    /// `incarnation` must differ between two runs of the replicant (drawn
    /// at random at start); `quiet_limit` heartbeats of silence end a
    /// stream.
    pub fn new(incarnation: u64, quiet_limit: u32) -> Replica<S> {
        Replica {
            incarnation,
            streams: 0,
            phase: Phase::Idle,
            quiet: 0,
            quiet_limit: quiet_limit.max(1),
            bootstraps: 0,
            lost: HashMap::new(),
        }
    }

    /// Ends any stream without counting it lost (the replicant left its
    /// cluster); the next subscription starts afresh.
    pub fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.quiet = 0;
    }

    /// Whether the served copy was ever complete (it stays served, as it
    /// was, during a re-bootstrap).
    pub fn has_copy(&self) -> bool {
        self.bootstraps > 0
    }

    /// Whether the shard follows a core and is up to date with the stream.
    pub fn is_following(&self) -> bool {
        matches!(self.phase, Phase::Normal { .. })
    }

    /// The core followed (or being bootstrapped from).
    pub fn core(&self) -> Option<&str> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Bootstrap { core, .. } | Phase::Normal { core, .. } => Some(core),
        }
    }

    /// The current stream, if any.
    pub fn stream(&self) -> Option<StreamId> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Bootstrap { stream, .. } | Phase::Normal { stream, .. } => Some(*stream),
        }
    }

    /// For a follower in step with its core: the number of the last
    /// change applied.
    pub fn applied(&self) -> Option<Seq> {
        match &self.phase {
            Phase::Normal { next, .. } => Some(next - 1),
            _ => None,
        }
    }

    /// Starts a new stream from `core`: send the returned messages to it
    /// (an `Unsubscribe` to the previous core, if it was another one, goes
    /// to that one: the first element names its addressee).
    pub fn subscribe(&mut self, core: &str) -> Vec<(String, Up)> {
        let mut out = Vec::new();
        if let (Some(old), Some(s)) = (self.core(), self.stream()) {
            if old != core {
                out.push((old.to_string(), Up::Unsubscribe { stream: s }));
            }
        }
        self.streams += 1;
        let stream = StreamId {
            incarnation: self.incarnation,
            n: self.streams,
        };
        self.phase = Phase::Bootstrap {
            core: core.to_string(),
            stream,
            next_part: 0,
            at: None,
            rows: Vec::new(),
        };
        self.quiet = 0;
        out.push((core.to_string(), Up::Subscribe { stream }));
        out
    }

    fn lose(&mut self, why: Lost) -> Option<Event> {
        self.phase = Phase::Idle;
        let k = match why {
            Lost::Gap => "gap",
            Lost::Silent => "silent",
            Lost::CoreDown => "core_down",
        };
        *self.lost.entry(k).or_default() += 1;
        Some(Event::Lost(why))
    }

    /// One heartbeat interval passed. A stream silent for too long ends.
    pub fn tick(&mut self) -> Option<Event> {
        if matches!(self.phase, Phase::Idle) {
            return None;
        }
        self.quiet += 1;
        if self.quiet >= self.quiet_limit {
            return self.lose(Lost::Silent);
        }
        None
    }

    /// `node` went down or was cut off.
    pub fn node_down(&mut self, node: &str) -> Option<Event> {
        if self.core() == Some(node) {
            return self.lose(Lost::CoreDown);
        }
        None
    }

    /// A message from a core; `served` is the copy readers use.
    pub fn receive(&mut self, msg: Down<S::Op, S::Row>, served: &mut S) -> Option<Event> {
        if Some(msg.stream()) != self.stream() {
            return None;
        }
        self.quiet = 0;
        match msg {
            Down::Snapshot {
                at: snap_at,
                part,
                last,
                rows,
                ..
            } => self.snapshot_part(snap_at, part, last, rows, served),
            Down::Entries { first, ops, .. } => self.entries(first, ops, served),
            Down::Alive { seq, .. } => match &self.phase {
                // Everything up to `seq` was sent before this heartbeat,
                // and the whole snapshot before anything else.
                Phase::Normal { next, .. } if seq >= *next => self.lose(Lost::Gap),
                Phase::Bootstrap { .. } => self.lose(Lost::Gap),
                _ => None,
            },
        }
    }

    fn snapshot_part(
        &mut self,
        snap_at: Seq,
        part: u32,
        last: bool,
        rows: Vec<S::Row>,
        served: &mut S,
    ) -> Option<Event> {
        let Phase::Bootstrap {
            next_part,
            at,
            rows: gathered,
            ..
        } = &mut self.phase
        else {
            // A copy of a part after the bootstrap ended.
            return None;
        };
        if part < *next_part {
            return None;
        }
        if part > *next_part || at.is_some_and(|a| a != snap_at) {
            return self.lose(Lost::Gap);
        }
        *at = Some(snap_at);
        gathered.extend(rows);
        *next_part += 1;
        if !last {
            return None;
        }
        let Phase::Bootstrap {
            core, stream, rows, ..
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return None;
        };
        served.restore(rows);
        self.bootstraps += 1;
        self.phase = Phase::Normal {
            core,
            stream,
            next: snap_at + 1,
        };
        Some(Event::Ready)
    }

    fn entries(&mut self, first: Seq, ops: Vec<S::Op>, served: &mut S) -> Option<Event> {
        match &mut self.phase {
            Phase::Idle => None,
            // The snapshot comes first on a stream: a part was lost.
            Phase::Bootstrap { .. } => self.lose(Lost::Gap),
            Phase::Normal { next, .. } => {
                let end = first + ops.len() as Seq;
                if end <= *next {
                    // A copy of what was applied.
                    return None;
                }
                if first > *next {
                    return self.lose(Lost::Gap);
                }
                let skip = (*next - first) as usize;
                for op in ops.iter().skip(skip) {
                    *next += 1;
                    if !served.apply(op) {
                        return self.lose(Lost::Gap);
                    }
                }
                None
            }
        }
    }
}

/// The core a replicant should follow: the fewest followers already,
/// ties broken at random (Mria's "badness": followers plus a random number
/// in [0, 1)). `candidates` are running cores with their follower counts;
/// `noise` yields numbers in [0, 1).
pub fn pick_core<'a>(
    candidates: &[(&'a str, usize)],
    mut noise: impl FnMut() -> f64,
) -> Option<&'a str> {
    candidates
        .iter()
        .map(|(c, n)| (*c, *n as f64 + noise().clamp(0.0, 0.999_999)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, Clone, PartialEq)]
    struct Kv(BTreeMap<u32, u32>);

    impl Kv {
        fn rows(&self) -> Vec<(u32, u32)> {
            self.0.iter().map(|(k, v)| (*k, *v)).collect()
        }
    }

    impl Shard for Kv {
        type Op = (u32, Option<u32>);
        type Row = (u32, u32);
        fn restore(&mut self, rows: Vec<(u32, u32)>) {
            self.0 = rows.into_iter().collect();
        }
        fn apply(&mut self, op: &(u32, Option<u32>)) -> bool {
            match op.1 {
                Some(v) => self.0.insert(op.0, v),
                None => self.0.remove(&op.0),
            };
            true
        }
    }

    type KvDown = Down<<Kv as Shard>::Op, <Kv as Shard>::Row>;

    fn write(core: &mut Kv, up: &mut Upstream, ops: Vec<(u32, Option<u32>)>) -> Vec<KvDown> {
        for op in &ops {
            core.apply(op);
        }
        up.record(ops).into_iter().map(|(_, d)| d).collect()
    }

    fn stream_of(out: Vec<(String, Up)>) -> StreamId {
        match out.last() {
            Some((_, Up::Subscribe { stream })) => *stream,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_snapshot_in_parts_then_the_changes_after_it() {
        let mut core = Kv::default();
        let mut up = Upstream::new(2);
        write(&mut core, &mut up, (0..5).map(|k| (k, Some(k))).collect());
        let mut r: Replica<Kv> = Replica::new(7, 3);
        let mut served = Kv::default();
        let stream = stream_of(r.subscribe("c1"));
        let parts = up.subscribe("r1", stream, core.rows());
        assert_eq!(parts.len(), 3);
        // Changes recorded after the snapshot follow it.
        let late = write(&mut core, &mut up, vec![(9, Some(9)), (0, None)]);
        assert_eq!(r.receive(parts[0].clone(), &mut served), None);
        assert_eq!(r.receive(parts[1].clone(), &mut served), None);
        assert!(!r.has_copy());
        assert_eq!(
            served,
            Kv::default(),
            "nothing is served before it is complete"
        );
        assert_eq!(r.receive(parts[2].clone(), &mut served), Some(Event::Ready));
        for d in late {
            assert_eq!(r.receive(d, &mut served), None);
        }
        assert_eq!(served, core);
        assert_eq!(r.applied(), Some(up.seq()));
        // A duplicate is ignored; a hole ends the stream but the copy stays.
        let d = write(&mut core, &mut up, vec![(1, None)]);
        assert_eq!(r.receive(d[0].clone(), &mut served), None);
        assert_eq!(r.receive(d[0].clone(), &mut served), None);
        assert_eq!(served, core);
        let _lost = write(&mut core, &mut up, vec![(2, None)]);
        let d = write(&mut core, &mut up, vec![(3, None)]);
        assert_eq!(
            r.receive(d[0].clone(), &mut served),
            Some(Event::Lost(Lost::Gap))
        );
        assert!(r.has_copy());
        assert!(!r.is_following());
        // During a re-bootstrap the old copy is served; a change before the
        // last part means a part was lost.
        write(&mut core, &mut up, (10..15).map(|k| (k, Some(k))).collect());
        let stream = stream_of(r.subscribe("c1"));
        let parts = up.subscribe("r1", stream, core.rows());
        let before = served.clone();
        assert_eq!(r.receive(parts[0].clone(), &mut served), None);
        assert_eq!(served, before);
        let d = write(&mut core, &mut up, vec![(4, None)]);
        assert_eq!(
            r.receive(d[0].clone(), &mut served),
            Some(Event::Lost(Lost::Gap))
        );
        assert_eq!(served, before);
    }

    #[test]
    fn a_heartbeat_ahead_of_what_arrived_is_a_gap_and_silence_ends_the_stream() {
        let mut core = Kv::default();
        let mut up = Upstream::new(10);
        let mut r: Replica<Kv> = Replica::new(1, 3);
        let mut served = Kv::default();
        let stream = stream_of(r.subscribe("c1"));
        for d in up.subscribe("r1", stream, core.rows()) {
            r.receive(d, &mut served);
        }
        assert!(r.is_following());
        assert!(r.has_copy());
        for d in up.alive() {
            assert_eq!(r.receive(d.1, &mut served), None);
        }
        let _lost = write(&mut core, &mut up, vec![(1, Some(1))]);
        let beat = up.alive().remove(0).1;
        assert_eq!(r.receive(beat, &mut served), Some(Event::Lost(Lost::Gap)));
        // A new stream; the old one's messages are ignored.
        let s2 = stream_of(r.subscribe("c1"));
        assert_ne!(s2, stream);
        let old = Down::Entries {
            stream,
            first: 2,
            ops: vec![(5, Some(5))],
        };
        assert_eq!(r.receive(old, &mut served), None);
        assert_eq!(r.tick(), None);
        assert_eq!(r.tick(), None);
        assert_eq!(r.tick(), Some(Event::Lost(Lost::Silent)));
    }

    #[derive(Default)]
    struct Strict(u32);

    impl Shard for Strict {
        type Op = u32;
        type Row = u32;
        fn restore(&mut self, rows: Vec<u32>) {
            self.0 = rows.len() as u32;
        }
        fn apply(&mut self, op: &u32) -> bool {
            *op == self.0
        }
    }

    #[test]
    fn a_change_that_does_not_fit_the_copy_ends_the_stream() {
        let mut up = Upstream::new(10);
        let mut r: Replica<Strict> = Replica::new(1, 3);
        let mut served = Strict::default();
        let stream = stream_of(r.subscribe("c1"));
        for d in up.subscribe::<u32, u32>("r1", stream, vec![1, 2]) {
            r.receive(d, &mut served);
        }
        let d = up.record::<u32, u32>(vec![2, 3]).remove(0).1;
        assert_eq!(r.receive(d, &mut served), Some(Event::Lost(Lost::Gap)));
    }

    #[test]
    fn moving_to_another_core_unsubscribes_from_the_first() {
        let mut r: Replica<Kv> = Replica::new(1, 3);
        r.subscribe("c1");
        let out = r.subscribe("c2");
        assert!(matches!(&out[0], (c, Up::Unsubscribe { .. }) if c == "c1"));
        assert!(matches!(&out[1], (c, Up::Subscribe { .. }) if c == "c2"));
        assert_eq!(r.node_down("c1"), None);
        assert_eq!(r.node_down("c2"), Some(Event::Lost(Lost::CoreDown)));
    }

    #[test]
    fn the_core_with_the_fewest_followers_is_picked() {
        let c = [("a", 3), ("b", 1), ("c", 1)];
        let mut x = [0.9, 0.2, 0.4].into_iter();
        assert_eq!(pick_core(&c, || x.next().unwrap_or(0.0)), Some("b"));
        let mut x = [0.9, 0.8, 0.4].into_iter();
        assert_eq!(pick_core(&c, || x.next().unwrap_or(0.0)), Some("c"));
        assert_eq!(pick_core(&[], || 0.0), None);
    }
}
