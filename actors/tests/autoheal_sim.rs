//! Membership, failure detection and autoheal under a seeded, simulated
//! network.
//!
//! 3 to 7 nodes each run the real [`Monitor`] (failure detector, partition
//! detection, autoheal leader and split view) with a simulated clock. A
//! small shell per node does what the cluster service does with the
//! monitor's effects: heartbeats every 2 s, reports to the leader, the
//! leader's view collection, and the coordinator restarting the nodes
//! outside the chosen majority one after the other.
//!
//! Each schedule throws random faults at the cluster for up to 90 s:
//! splits into two or three groups, one-way link failures, single links
//! restored, crashes and restarts. Then every link comes back and every
//! crashed node restarts, and within 300 s of simulated time:
//! - every node runs with every other one, and nobody is partitioned or
//!   waiting on a heal (one membership, agreed by all);
//! - every heal decided after the network came back restarted exactly the
//!   nodes outside its chosen majority, once each, and nobody inside it.
//!
//! `AUTOHEAL_SIM_SEEDS` sets how many schedules run (default 1000);
//! `AUTOHEAL_SIM_SEED` replays one, and `AUTOHEAL_SIM_TRACE=i,j` adds
//! every heartbeat between nodes i and j to the trace a failure prints.

use emqx_actors::cluster::autoheal::{Beat, Effect, HealConfig, Monitor, SplitView};
use emqx_actors::cluster::membership::Role;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

const TICK_MS: u64 = 500;
const BEAT_MS: u64 = 2_000;
const CALL_TIMEOUT_MS: u64 = 3_000;
const FINAL_MS: u64 = 300_000;

#[derive(Debug, Clone)]
enum Msg {
    Beat(Beat),
    LinkLost,
    Report,
    ViewReq {
        round: u64,
    },
    ViewResp {
        round: u64,
        view: SplitView,
    },
    Heal {
        decision: usize,
        cliques: Vec<Vec<String>>,
    },
    Reboot {
        job: u64,
    },
    RebootAck {
        job: u64,
    },
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Deliver { from: usize, to: usize, msg: Msg },
    CollectTimeout { node: usize, round: u64 },
    RebootTimeout { node: usize, job: u64 },
}

struct Collect {
    round: u64,
    waiting: BTreeSet<String>,
    views: BTreeMap<String, SplitView>,
}

struct HealJob {
    decision: usize,
    queue: VecDeque<usize>,
    waiting: Option<u64>,
}

struct Node {
    mon: Option<Monitor>,
    last_beat: u64,
    collect: Option<Collect>,
    heal: Option<HealJob>,
}

struct Decision {
    at: u64,
    majority: Vec<String>,
    outside: Vec<String>,
    /// The coordinator was busy with another heal.
    dropped: bool,
}

struct Sim {
    rng: StdRng,
    t0: Instant,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slots: Vec<Option<Ev>>,
    names: Vec<String>,
    nodes: Vec<Node>,
    /// Directed links that carry nothing.
    cut: BTreeSet<(usize, usize)>,
    /// When true, what is sent on a cut link waits in the socket and is
    /// delivered, in order, once the link is back (TCP retransmitting);
    /// when false it is lost.
    hold: bool,
    held: BTreeMap<(usize, usize), Vec<Msg>>,
    next_inc: u64,
    next_id: u64,
    cfg: HealConfig,
    decisions: Vec<Decision>,
    /// `(time, node, decision)` of every restart a coordinator did.
    reboots: Vec<(u64, usize, usize)>,
    /// `(a, b) -> (a's incarnation, b's)` while a has b marked down.
    down: BTreeMap<(usize, usize), (u64, u64)>,
    /// Real partitions: a and b each had the other marked down at the same
    /// time, in these incarnations. Their data may have diverged, so one
    /// of them must restart before the cluster counts as whole.
    diverged: Vec<(usize, usize, u64, u64)>,
    trace: Vec<String>,
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let cfg = HealConfig {
            enabled: true,
            confirm: Duration::from_secs(3),
            delay: Duration::from_secs(5),
        };
        let names: Vec<String> = (0..n).map(|i| format!("n{i}@sim")).collect();
        let mut s = Sim {
            rng: StdRng::seed_from_u64(seed),
            t0: Instant::now(),
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            slots: Vec::new(),
            names,
            nodes: Vec::new(),
            cut: BTreeSet::new(),
            hold: false,
            held: BTreeMap::new(),
            next_inc: 1,
            next_id: 1,
            cfg,
            decisions: Vec::new(),
            reboots: Vec::new(),
            down: BTreeMap::new(),
            diverged: Vec::new(),
            trace: Vec::new(),
        };
        for i in 0..n {
            let mon = s.fresh_monitor(i);
            s.nodes.push(Node {
                mon: Some(mon),
                last_beat: 0,
                collect: None,
                heal: None,
            });
            let first = s.rng.random_range(0..TICK_MS);
            s.at(first, Ev::Tick(i));
        }
        s
    }

    fn fresh_monitor(&mut self, i: usize) -> Monitor {
        let inc = self.next_inc;
        self.next_inc += 1;
        let mut m = Monitor::new(
            &self.names[i],
            inc,
            Role::Core,
            self.cfg.clone(),
            Duration::from_secs(6),
        );
        let now = self.instant();
        for (j, name) in self.names.iter().enumerate() {
            if j != i {
                m.add_member(name, Role::Core, now);
            }
        }
        m
    }

    fn instant(&self) -> Instant {
        self.t0 + Duration::from_millis(self.now)
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.slots.push(Some(ev));
        self.events
            .push(Reverse((self.now + delay, self.seq, self.slots.len() - 1)));
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.cut.contains(&(from, to)) {
            if self.hold {
                self.held.entry((from, to)).or_default().push(msg);
            }
            return;
        }
        let lat = self.rng.random_range(1..=30);
        self.at(lat, Ev::Deliver { from, to, msg });
    }

    /// A node's current incarnation (0 while crashed).
    fn inc(&self, i: usize) -> u64 {
        self.nodes[i].mon.as_ref().map_or(0, |m| m.incarnation())
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].mon.is_some()
    }

    /// Runs events up to `until` (simulated ms).
    fn run_until(&mut self, until: u64) {
        while let Some(Reverse((t, _, slot))) = self.events.peek().copied() {
            if t > until {
                break;
            }
            self.events.pop();
            self.now = t;
            if let Some(ev) = self.slots[slot].take() {
                self.handle(ev);
            }
        }
        self.now = until;
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(i) => {
                self.at(TICK_MS, Ev::Tick(i));
                if !self.alive(i) {
                    return;
                }
                let now = self.instant();
                let effects = self.nodes[i].mon.as_mut().map(|m| m.tick(now));
                if self.now >= self.nodes[i].last_beat + BEAT_MS {
                    self.nodes[i].last_beat = self.now;
                    if let Some(beat) = self.nodes[i].mon.as_mut().map(|m| m.beat()) {
                        for j in 0..self.names.len() {
                            if j != i {
                                self.send(i, j, Msg::Beat(beat.clone()));
                            }
                        }
                    }
                }
                self.apply(i, effects.unwrap_or_default());
            }
            Ev::Deliver { from, to, msg } => {
                if !self.alive(to) {
                    return;
                }
                if self.cut.contains(&(from, to)) {
                    // In flight when the link was cut: lost or held.
                    if self.hold {
                        self.held.entry((from, to)).or_default().push(msg);
                    }
                    return;
                }
                self.deliver(from, to, msg);
            }
            Ev::CollectTimeout { node, round } => {
                let done = self.nodes[node]
                    .collect
                    .as_ref()
                    .is_some_and(|c| c.round == round);
                if done {
                    self.finish_collect(node);
                }
            }
            Ev::RebootTimeout { node, job } => {
                let waiting = self.nodes[node]
                    .heal
                    .as_ref()
                    .is_some_and(|h| h.waiting == Some(job));
                if waiting {
                    self.trace(format!("{} reboot job {job} timed out", self.names[node]));
                    self.next_reboot(node);
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.instant();
        let from_name = self.names[from].clone();
        match msg {
            Msg::Beat(b) => {
                let eff = self.nodes[to]
                    .mon
                    .as_mut()
                    .map(|m| m.on_beat(&from_name, &b, now))
                    .unwrap_or_default();
                if let Ok(d) = std::env::var("AUTOHEAL_SIM_TRACE") {
                    let (x, y): (usize, usize) = d
                        .split_once(',')
                        .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(0)))
                        .unwrap_or((0, 0));
                    if (to == x && from == y) || (to == y && from == x) {
                        let line =
                            format!("DBG {from_name} -> {}: {b:?} => {eff:?}", self.names[to]);
                        self.trace(line);
                    }
                }
                self.apply(to, eff);
            }
            Msg::LinkLost => {
                let eff = self.nodes[to]
                    .mon
                    .as_mut()
                    .map(|m| m.on_link_lost(&from_name))
                    .unwrap_or_default();
                self.apply(to, eff);
            }
            Msg::Report => {
                let eff = self.nodes[to]
                    .mon
                    .as_mut()
                    .map(|m| m.on_report(&from_name, now))
                    .unwrap_or_default();
                self.apply(to, eff);
            }
            Msg::ViewReq { round } => {
                if let Some(view) = self.nodes[to].mon.as_ref().map(|m| m.split_view()) {
                    self.send(to, from, Msg::ViewResp { round, view });
                }
            }
            Msg::ViewResp { round, view } => {
                let complete = match self.nodes[to].collect.as_mut() {
                    Some(c) if c.round == round => {
                        c.waiting.remove(&from_name);
                        c.views.insert(from_name, view);
                        c.waiting.is_empty()
                    }
                    _ => false,
                };
                if complete {
                    self.finish_collect(to);
                }
            }
            Msg::Heal { decision, cliques } => self.start_heal(to, decision, cliques),
            Msg::Reboot { job } => {
                let inc = self.next_inc;
                self.next_inc += 1;
                if let Some(m) = self.nodes[to].mon.as_mut() {
                    m.reboot(inc, now);
                }
                self.nodes[to].collect = None;
                self.nodes[to].heal = None;
                self.trace(format!("{} rebooted by {from_name}", self.names[to]));
                self.send(to, from, Msg::RebootAck { job });
            }
            Msg::RebootAck { job } => {
                let waiting = self.nodes[to]
                    .heal
                    .as_ref()
                    .is_some_and(|h| h.waiting == Some(job));
                if waiting {
                    self.next_reboot(to);
                }
            }
        }
    }

    fn trace(&mut self, s: String) {
        let line = format!("{:>7}ms {s}", self.now);
        self.trace.push(line);
    }

    /// What the cluster service does with the monitor's effects.
    fn apply(&mut self, i: usize, effects: Vec<Effect>) {
        let me = self.names[i].clone();
        for e in effects {
            match e {
                Effect::MarkUp(p) => {
                    self.trace(format!("{me} marks {p} up"));
                    if let Some(j) = self.idx(&p) {
                        self.down.remove(&(i, j));
                    }
                }
                Effect::MarkDown(p) => {
                    if let Some(j) = self.idx(&p) {
                        let (x, y) = (self.inc(i), self.inc(j));
                        self.trace(format!("{me}({x}) marks {p}({y}) down"));
                        self.down.insert((i, j), (x, y));
                        if self.down.get(&(j, i)) == Some(&(y, x)) {
                            self.diverged.push((i, j, x, y));
                        }
                    }
                }
                Effect::PartitionDetected(p) => self.trace(format!("{me} partitioned from {p}")),
                Effect::PartitionHealed(p) => self.trace(format!("{me} healed with {p}")),
                e @ (Effect::NotLeader { .. }
                | Effect::MajorityUnreachable { .. }
                | Effect::NothingToHeal
                | Effect::LeaderDisputed { .. }) => self.trace(format!("{me}: {e:?}")),
                Effect::Report { leader } => {
                    self.trace(format!("{me} reports to {leader}"));
                    if leader == me {
                        let now = self.instant();
                        let eff = self.nodes[i]
                            .mon
                            .as_mut()
                            .map(|m| m.on_report(&me, now))
                            .unwrap_or_default();
                        self.apply(i, eff);
                    } else if let Some(l) = self.idx(&leader) {
                        self.send(i, l, Msg::Report);
                    }
                }
                Effect::CollectViews { cores } => {
                    let round = self.next_id;
                    self.next_id += 1;
                    let own = self.nodes[i].mon.as_ref().map(|m| m.split_view());
                    let Some(own) = own else {
                        continue;
                    };
                    let mut c = Collect {
                        round,
                        waiting: BTreeSet::new(),
                        views: BTreeMap::from([(me.clone(), own)]),
                    };
                    for core in cores.iter().filter(|c| **c != me) {
                        if let Some(j) = self.idx(core) {
                            c.waiting.insert(core.clone());
                            self.send(i, j, Msg::ViewReq { round });
                        }
                    }
                    let empty = c.waiting.is_empty();
                    self.nodes[i].collect = Some(c);
                    if empty {
                        self.finish_collect(i);
                    } else {
                        self.at(CALL_TIMEOUT_MS, Ev::CollectTimeout { node: i, round });
                    }
                }
                Effect::Heal {
                    coordinator,
                    cliques,
                } => {
                    let decision = self.decisions.len();
                    let outside: Vec<String> = cliques[1..].iter().flatten().cloned().collect();
                    self.trace(format!(
                        "{me} leads a heal: {cliques:?}, coordinator {coordinator}"
                    ));
                    self.decisions.push(Decision {
                        at: self.now,
                        majority: cliques[0].clone(),
                        outside,
                        dropped: false,
                    });
                    let Some(c) = self.idx(&coordinator) else {
                        continue;
                    };
                    if c == i {
                        self.start_heal(i, decision, cliques);
                    } else {
                        self.send(i, c, Msg::Heal { decision, cliques });
                    }
                }
            }
        }
    }

    fn finish_collect(&mut self, i: usize) {
        let Some(c) = self.nodes[i].collect.take() else {
            return;
        };
        let now = self.instant();
        let eff = self.nodes[i]
            .mon
            .as_mut()
            .map(|m| m.on_views(&c.views, now))
            .unwrap_or_default();
        self.apply(i, eff);
    }

    fn start_heal(&mut self, i: usize, decision: usize, cliques: Vec<Vec<String>>) {
        if self.nodes[i].heal.is_some() {
            // A heal is already under way here (two leaders decided the
            // same split during a change of leader): the partitions it
            // leaves are reported again.
            self.trace(format!(
                "{} is busy: heal {decision} dropped",
                self.names[i]
            ));
            self.decisions[decision].dropped = true;
            return;
        }
        let queue: VecDeque<usize> = cliques[1..]
            .iter()
            .flatten()
            .filter_map(|n| self.idx(n))
            .collect();
        self.nodes[i].heal = Some(HealJob {
            decision,
            queue,
            waiting: None,
        });
        self.next_reboot(i);
    }

    fn next_reboot(&mut self, i: usize) {
        let Some(h) = self.nodes[i].heal.as_mut() else {
            return;
        };
        let Some(target) = h.queue.pop_front() else {
            self.nodes[i].heal = None;
            return;
        };
        let job = self.next_id;
        self.next_id += 1;
        h.waiting = Some(job);
        let decision = h.decision;
        self.reboots.push((self.now, target, decision));
        self.send(i, target, Msg::Reboot { job });
        self.at(CALL_TIMEOUT_MS, Ev::RebootTimeout { node: i, job });
    }

    fn crash(&mut self, i: usize) {
        if !self.alive(i) {
            return;
        }
        self.trace(format!("{} crashes", self.names[i]));
        self.nodes[i].mon = None;
        self.nodes[i].collect = None;
        self.nodes[i].heal = None;
        // Its sockets are gone, and what waited in them.
        self.held.retain(|(a, b), _| *a != i && *b != i);
        // Peers with a working link see the socket close.
        for j in 0..self.names.len() {
            if j != i && !self.cut.contains(&(i, j)) {
                let lat = self.rng.random_range(1..=30);
                self.at(
                    lat,
                    Ev::Deliver {
                        from: i,
                        to: j,
                        msg: Msg::LinkLost,
                    },
                );
            }
        }
    }

    fn restart(&mut self, i: usize) {
        if self.alive(i) {
            return;
        }
        self.trace(format!("{} restarts", self.names[i]));
        let m = self.fresh_monitor(i);
        self.nodes[i].mon = Some(m);
    }

    /// Changes which links are cut; what waited on a link that is back
    /// is delivered first, in order.
    fn set_cut(&mut self, cut: BTreeSet<(usize, usize)>) {
        self.cut = cut;
        let back: Vec<(usize, usize)> = self
            .held
            .keys()
            .filter(|l| !self.cut.contains(l))
            .copied()
            .collect();
        for (a, b) in back {
            for (k, msg) in self
                .held
                .remove(&(a, b))
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                self.at(
                    1 + k as u64,
                    Ev::Deliver {
                        from: a,
                        to: b,
                        msg,
                    },
                );
            }
        }
    }

    fn split(&mut self, groups: usize) {
        let n = self.names.len();
        let side: Vec<usize> = (0..n).map(|_| self.rng.random_range(0..groups)).collect();
        let mut cut = BTreeSet::new();
        for a in 0..n {
            for b in 0..n {
                if a != b && side[a] != side[b] {
                    cut.insert((a, b));
                }
            }
        }
        self.set_cut(cut);
        self.trace(format!("split {side:?}"));
    }

    fn random_fault(&mut self) {
        let n = self.names.len();
        match self.rng.random_range(0..10) {
            0..=2 => {
                let g = self.rng.random_range(2..=3);
                self.split(g);
            }
            3 => {
                let a = self.rng.random_range(0..n);
                let b = (a + self.rng.random_range(1..n)) % n;
                self.cut.insert((a, b));
                self.trace(format!("one-way cut {a}->{b}"));
            }
            4 => {
                let a = self.rng.random_range(0..n);
                let b = (a + self.rng.random_range(1..n)) % n;
                let mut cut = self.cut.clone();
                cut.remove(&(a, b));
                cut.remove(&(b, a));
                self.set_cut(cut);
                self.trace(format!("link {a}<->{b} restored"));
            }
            5..=6 => {
                self.set_cut(BTreeSet::new());
                self.trace("network healed".into());
            }
            7 => {
                let a = self.rng.random_range(0..n);
                self.crash(a);
            }
            _ => {
                let a = self.rng.random_range(0..n);
                self.restart(a);
            }
        }
    }

    /// Whether the cluster is whole: everyone runs with everyone.
    fn converged(&self) -> bool {
        let all: Vec<String> = {
            let mut v = self.names.clone();
            v.sort();
            v
        };
        self.nodes.iter().all(|n| {
            n.mon
                .as_ref()
                .is_some_and(|m| m.running_view() == all && !m.healing())
        }) && self
            .nodes
            .iter()
            .all(|n| n.heal.is_none() && n.collect.is_none())
    }

    fn state(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.mon {
                Some(m) => s.push_str(&format!(
                    "  {} inc {} leader {:?} view {:?} partitions {:?} peers {:?}\n",
                    self.names[i],
                    m.incarnation(),
                    m.leader(),
                    m.running_view(),
                    m.partitions(),
                    m.peers()
                )),
                None => s.push_str(&format!("  {} crashed\n", self.names[i])),
            }
        }
        s
    }
}

fn run_schedule(seed: u64) -> Result<(usize, usize), String> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let n = rng.random_range(3..=7);
    let mut sim = Sim::new(seed, n);
    sim.hold = rng.random_bool(0.5);
    // Form the cluster.
    sim.run_until(10_000);
    if !sim.converged() {
        return Err(format!("the cluster never formed:\n{}", sim.state()));
    }
    // Faults.
    let fault_end = 10_000 + rng.random_range(0..90_000);
    while sim.now < fault_end {
        sim.random_fault();
        let step = rng.random_range(500..12_000);
        let until = (sim.now + step).min(fault_end);
        sim.run_until(until);
    }
    // Everything comes back.
    sim.set_cut(BTreeSet::new());
    for i in 0..n {
        sim.restart(i);
    }
    sim.trace("final heal".into());
    let healed_at = sim.now;
    let before = sim.decisions.len();
    let deadline = healed_at + FINAL_MS;
    while !sim.converged() && sim.now < deadline {
        let t = sim.now + 1_000;
        sim.run_until(t);
    }
    if !sim.converged() {
        return Err(format!(
            "not healed {}s after the network came back ({n} nodes):\n{}\ntrace (last 60):\n{}",
            FINAL_MS / 1000,
            sim.state(),
            sim.trace[sim.trace.len().saturating_sub(60)..].join("\n")
        ));
    }
    // Every real partition ended with one side restarted: nothing that
    // diverged was merged silently.
    for &(i, j, x, y) in &sim.diverged {
        if sim.inc(i) == x && sim.inc(j) == y {
            return Err(format!(
                "{} and {} each saw the other down (incarnations {x}, {y}) and run together again without a restart\n{}",
                sim.names[i],
                sim.names[j],
                sim.trace.join("\n")
            ));
        }
    }
    // Heals decided once the network was whole restarted exactly the
    // nodes outside their majority, once each.
    for (d, dec) in sim.decisions.iter().enumerate().skip(before) {
        if dec.dropped {
            continue;
        }
        let mut done: Vec<String> = sim
            .reboots
            .iter()
            .filter(|r| r.2 == d)
            .map(|r| sim.names[r.1].clone())
            .collect();
        done.sort();
        let mut want = dec.outside.clone();
        want.sort();
        if done != want {
            return Err(format!(
                "heal {d} at {}ms (majority {:?}) restarted {done:?}, expected {want:?}\n{}",
                dec.at,
                dec.majority,
                sim.trace.join("\n")
            ));
        }
        if done.iter().any(|x| dec.majority.contains(x)) {
            return Err(format!("heal {d} restarted a node of its majority"));
        }
    }
    // And the cluster stays whole.
    let t = sim.now + 30_000;
    sim.run_until(t);
    if !sim.converged() {
        return Err(format!("fell apart again:\n{}", sim.state()));
    }
    Ok((sim.decisions.len(), sim.reboots.len()))
}

#[test]
fn random_partitions_crashes_and_heals_end_in_one_cluster() {
    let seeds: Vec<u64> = match std::env::var("AUTOHEAL_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("AUTOHEAL_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("AUTOHEAL_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1000u64);
            (0..n).collect()
        }
    };
    let started = Instant::now();
    let (mut heals, mut reboots) = (0, 0);
    for &seed in &seeds {
        match run_schedule(seed) {
            Ok((h, r)) => {
                heals += h;
                reboots += r;
            }
            Err(e) => panic!("seed {seed} failed (replay with AUTOHEAL_SIM_SEED={seed}): {e}"),
        }
    }
    println!(
        "{} schedules in {:.1}s: {heals} heals decided, {reboots} restarts",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        heals > 0 && reboots > 0 || seeds.len() < 20,
        "the faults never led to a heal: the schedules test nothing"
    );
}
