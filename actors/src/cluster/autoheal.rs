//! The node monitor and autoheal as one plain state machine: no sockets,
//! no clock of its own. The cluster service feeds it heartbeats, link
//! losses, reports and split views with the current `Instant`, and carries
//! out the [`Effect`]s it returns; the seeded simulation in
//! `actors/tests/autoheal_sim.rs` drives the same code over a simulated
//! network.
//!
//! Two views of a peer are kept apart, as Erlang keeps `nodes()` apart
//! from Mnesia's running nodes:
//! - *reachable*: heard from within the down timeout (the failure
//!   detector); only this decides where reports and view requests can go;
//! - *running*: part of this node's cluster data. A peer that was seen
//!   down while both kept running, and that saw this node down too, comes
//!   back reachable but not running: the two sides are *partitioned*, their
//!   data may have diverged, and only autoheal (or a restart) merges them.
//!
//! Autoheal then runs as EMQX 5 runs it: each partitioned node reports to
//! the leader (the oldest reachable core) `confirm` after detection; the
//! leader waits until reports stop for `delay`, proceeds only when fewer
//! than half of the cores are unreachable, asks every reachable core which
//! nodes it runs with (the split view), finds the largest group of nodes
//! that all run with each other, and hands the list to that group's
//! oldest node, the coordinator, which restarts every node outside it.

use super::detector::{FailureDetector, Liveness};
use super::membership::Role;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Autoheal timers (`cluster.autoheal`, `cluster.autoheal_delay`).
#[derive(Debug, Clone)]
pub struct HealConfig {
    pub enabled: bool,
    /// From detection to the report to the leader (EMQX: 3 s).
    pub confirm: Duration,
    /// How long the leader waits after the last report (EMQX: 15 s).
    pub delay: Duration,
}

impl Default for HealConfig {
    fn default() -> Self {
        HealConfig {
            enabled: true,
            confirm: Duration::from_secs(3),
            delay: Duration::from_secs(15),
        }
    }
}

/// What a node says about itself in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub incarnation: u64,
    /// Numbers this node's heartbeats within its incarnation.
    pub seq: u64,
    /// Peers this node saw go down while it kept running, each with the
    /// incarnation it had then, and that have not come back since.
    pub saw_down: Vec<(String, u64)>,
    /// For each peer, its incarnation and the `seq` of the last heartbeat
    /// received from that run of it.
    /// A node that saw a peer down decides about it only on a heartbeat
    /// that acknowledges one of its own sent after that: heartbeats queued
    /// in a socket during the split, delivered when it ends, predate the
    /// peer's own view of the split and would make it look one-sided.
    pub heard: Vec<(String, u64, u64)>,
}

/// One core's part of the split view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitView {
    /// Who this core thinks leads.
    pub leader: Option<String>,
    /// The cores it runs with, itself included, sorted.
    pub running: Vec<String>,
}

/// What the owner of a [`Monitor`] must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The peer is running with this node: forward to it, list it.
    MarkUp(String),
    /// The peer is no longer running with this node.
    MarkDown(String),
    /// The peer came back from a split in which both sides ran on.
    PartitionDetected(String),
    /// A partitioned peer restarted (healed, or by hand): running again.
    PartitionHealed(String),
    /// Tell the leader this node has partitions.
    Report { leader: String },
    /// A report reached a node that is not the leader.
    NotLeader { from: String, leader: String },
    /// Leader: too many cores unreachable; tries again after the delay.
    MajorityUnreachable {
        unreachable: Vec<String>,
        cores: usize,
    },
    /// Leader: ask each of these cores (this one included) for
    /// [`Monitor::running_view`], then call [`Monitor::on_views`].
    CollectViews { cores: Vec<String> },
    /// Leader: the split view shows one group, nothing to restart.
    NothingToHeal,
    /// Leader: a core named another leader in its view; retried later.
    LeaderDisputed { by: String, leader: String },
    /// Leader: send the cliques to the coordinator, who restarts every
    /// node outside the first one.
    Heal {
        coordinator: String,
        cliques: Vec<Vec<String>>,
    },
}

#[derive(Debug, Clone)]
struct Peer {
    role: Role,
    /// Last incarnation heard from it; a new one means it restarted.
    incarnation: Option<u64>,
    running: bool,
    /// The incarnation it had when this node saw it go down.
    saw_down: Option<u64>,
    /// Our heartbeat number when we saw it go down.
    down_seq: u64,
    /// Set when it runs with us again while the down record stands: the
    /// record goes once it acknowledges a heartbeat of ours numbered above
    /// this without listing us.
    confirm_seq: Option<u64>,
    /// The number of the last heartbeat received from it.
    seq_in: u64,
    partitioned: bool,
}

/// One node's monitor (see the module docs).
#[derive(Debug, Clone)]
pub struct Monitor {
    me: String,
    incarnation: u64,
    role: Role,
    cfg: HealConfig,
    detector: FailureDetector,
    peers: BTreeMap<String, Peer>,
    /// The number of our last heartbeat.
    seq: u64,
    /// When to (re)port our partitions to the leader.
    report_at: Option<Instant>,
    /// Leader: nodes that reported, and when to take the split view.
    reports: BTreeSet<String>,
    split_at: Option<Instant>,
    /// Leader: a view collection is under way.
    collecting: bool,
}

impl Monitor {
    pub fn new(
        me: &str,
        incarnation: u64,
        role: Role,
        cfg: HealConfig,
        down_timeout: Duration,
    ) -> Monitor {
        Monitor {
            me: me.to_string(),
            incarnation,
            role,
            cfg,
            detector: FailureDetector::new(down_timeout),
            peers: BTreeMap::new(),
            seq: 0,
            report_at: None,
            reports: BTreeSet::new(),
            split_at: None,
            collecting: false,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Starts watching a member (not running until heard from).
    pub fn add_member(&mut self, node: &str, role: Role, now: Instant) {
        if node == self.me {
            return;
        }
        self.detector.watch(node, now);
        self.peers.entry(node.to_string()).or_insert(Peer {
            role,
            incarnation: None,
            running: false,
            saw_down: None,
            down_seq: 0,
            confirm_seq: None,
            seq_in: 0,
            partitioned: false,
        });
    }

    /// Forgets a member that left or was removed.
    pub fn remove_member(&mut self, node: &str) {
        self.detector.unwatch(node);
        self.peers.remove(node);
        self.reports.remove(node);
    }

    /// Forgets every member (leave, or adopting another cluster's list).
    pub fn clear_members(&mut self) {
        let all: Vec<String> = self.peers.keys().cloned().collect();
        for n in all {
            self.remove_member(&n);
        }
    }

    /// This node restarted its broker in place (healed as a minority):
    /// a new incarnation, nothing running, nothing remembered of the split.
    pub fn reboot(&mut self, incarnation: u64, now: Instant) {
        self.incarnation = incarnation;
        let members: Vec<(String, Role)> = self
            .peers
            .iter()
            .map(|(n, p)| (n.clone(), p.role))
            .collect();
        self.clear_members();
        for (n, r) in members {
            self.add_member(&n, r, now);
        }
        self.report_at = None;
        self.split_at = None;
        self.collecting = false;
    }

    /// The next heartbeat to send (each call numbers a new one).
    pub fn beat(&mut self) -> Beat {
        self.seq += 1;
        Beat {
            incarnation: self.incarnation,
            seq: self.seq,
            saw_down: self
                .peers
                .iter()
                .filter_map(|(n, p)| p.saw_down.map(|i| (n.clone(), i)))
                .collect(),
            heard: self
                .peers
                .iter()
                .filter_map(|(n, p)| {
                    let inc = p.incarnation?;
                    (p.seq_in > 0).then(|| (n.clone(), inc, p.seq_in))
                })
                .collect(),
        }
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.peers.get(node).is_some_and(|p| p.running)
    }

    pub fn is_reachable(&self, node: &str) -> bool {
        node == self.me || self.detector.is_up(node)
    }

    /// Peers partitioned from this node, sorted.
    pub fn partitions(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| p.partitioned)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether a heal is pending on this node (as reporter or leader).
    pub fn healing(&self) -> bool {
        self.collecting || self.split_at.is_some() || !self.partitions().is_empty()
    }

    /// The cores this node runs with, itself included, sorted: its part of
    /// the split view.
    pub fn running_view(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.running && p.role == Role::Core)
            .map(|(n, _)| n.clone())
            .collect();
        if self.role == Role::Core {
            v.push(self.me.clone());
        }
        v.sort();
        v
    }

    /// `(incarnation, name)` of a node, for "oldest"; unknown sorts last.
    fn age(&self, node: &str) -> (u64, String) {
        let inc = if node == self.me {
            Some(self.incarnation)
        } else {
            self.peers.get(node).and_then(|p| p.incarnation)
        };
        (inc.unwrap_or(u64::MAX), node.to_string())
    }

    /// The leader: the oldest reachable core (this node, if it is a core
    /// and no reachable core is older).
    pub fn leader(&self) -> Option<String> {
        let mut cands: Vec<(u64, String)> = self
            .peers
            .iter()
            .filter(|(n, p)| p.role == Role::Core && self.detector.is_up(n))
            .map(|(n, _)| self.age(n))
            .collect();
        if self.role == Role::Core {
            cands.push(self.age(&self.me));
        }
        cands.into_iter().min().map(|(_, n)| n)
    }

    /// A heartbeat from `from`.
    pub fn on_beat(&mut self, from: &str, beat: &Beat, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if !self.peers.contains_key(from) {
            return out;
        }
        self.detector.heard(from, now);
        let me = (self.me.clone(), self.incarnation);
        let (enabled, confirm) = (self.cfg.enabled, self.cfg.confirm);
        let Some(p) = self.peers.get_mut(from) else {
            return out;
        };
        let restarted = p.incarnation.is_some_and(|i| i != beat.incarnation);
        p.incarnation = Some(beat.incarnation);
        if restarted {
            p.seq_in = 0;
        }
        p.seq_in = p.seq_in.max(beat.seq);
        let lists_me = beat.saw_down.contains(&me);
        if p.partitioned {
            if !restarted || lists_me {
                return out;
            }
            // Restarted (healed, or by hand) with no memory of the split.
            p.partitioned = false;
            p.saw_down = None;
            out.push(Effect::PartitionHealed(from.to_string()));
        }
        if p.saw_down.is_some() {
            if restarted {
                // A new run of the peer: the record now stands against it,
                // so that the peer can recognise it too.
                p.saw_down = Some(beat.incarnation);
            }
            if lists_me {
                // Each saw the other down while both ran on: their data
                // may differ.
                p.partitioned = true;
                p.confirm_seq = None;
                if std::mem::take(&mut p.running) {
                    out.push(Effect::MarkDown(from.to_string()));
                }
                out.push(Effect::PartitionDetected(from.to_string()));
                if enabled && self.report_at.is_none() {
                    self.report_at = Some(now + confirm);
                }
                return out;
            }
            let acked = beat
                .heard
                .iter()
                .find(|(n, inc, _)| *n == me.0 && *inc == me.1)
                .map_or(0, |(_, _, s)| *s);
            if acked <= p.down_seq {
                // Sent before it heard from us after the split: it may yet
                // turn out to have seen us down too.
                if !p.running {
                    return out;
                }
            } else if p.confirm_seq.is_some_and(|c| acked > c) {
                // It has heard us since we run with it again and still
                // never saw us down: the split was one-sided.
                p.saw_down = None;
                p.confirm_seq = None;
            } else if !p.running {
                // It had not seen us down when it sent this, but heartbeats
                // it sent later (queued, or after a split of its own) may
                // say otherwise: run with it, keep the record until it
                // confirms.
                p.confirm_seq = Some(self.seq);
            }
        }
        if !p.running {
            p.running = true;
            out.push(Effect::MarkUp(from.to_string()));
        }
        out
    }

    /// The transport says the link to `node` closed.
    pub fn on_link_lost(&mut self, node: &str) -> Vec<Effect> {
        match self.detector.lost(node) {
            Some(Liveness::Down(n)) => self.down(&n),
            _ => Vec::new(),
        }
    }

    fn down(&mut self, node: &str) -> Vec<Effect> {
        match self.peers.get_mut(node) {
            Some(p) if p.running => {
                p.running = false;
                p.saw_down = p.incarnation;
                p.down_seq = self.seq;
                p.confirm_seq = None;
                vec![Effect::MarkDown(node.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// Timers: the failure detector, the report, the leader's split view.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        for l in self.detector.tick(now) {
            if let Liveness::Down(n) = l {
                out.extend(self.down(&n));
            }
        }
        if self.report_at.is_some_and(|t| now >= t) {
            if self.partitions().is_empty() || !self.cfg.enabled {
                self.report_at = None;
            } else {
                // Reported again while partitions remain, so a lost report
                // or a leader that went away does not leave them for good.
                self.report_at = Some(now + self.cfg.delay + self.cfg.confirm);
                if let Some(leader) = self.leader() {
                    out.push(Effect::Report { leader });
                }
            }
        }
        if !self.collecting
            && self.split_at.is_some_and(|t| now >= t)
            && self.leader().as_deref() != Some(self.me.as_str())
        {
            // An older core came back since the reports arrived: it leads.
            self.split_at = None;
            self.reports.clear();
        }
        if !self.collecting && self.split_at.is_some_and(|t| now >= t) {
            let cores: Vec<String> = self
                .peers
                .iter()
                .filter(|(_, p)| p.role == Role::Core)
                .map(|(n, _)| n.clone())
                .chain(std::iter::once(self.me.clone()))
                .collect();
            let unreachable: Vec<String> = cores
                .iter()
                .filter(|n| !self.is_reachable(n))
                .cloned()
                .collect();
            if unreachable.len() < cores.len() / 2 || cores.len() == 1 {
                self.split_at = None;
                self.collecting = true;
                let mut reachable: Vec<String> =
                    cores.into_iter().filter(|n| self.is_reachable(n)).collect();
                reachable.sort();
                out.push(Effect::CollectViews { cores: reachable });
            } else {
                self.split_at = Some(now + self.cfg.delay);
                out.push(Effect::MajorityUnreachable {
                    unreachable,
                    cores: cores.len(),
                });
            }
        }
        out
    }

    /// A partition report from `from`.
    pub fn on_report(&mut self, from: &str, now: Instant) -> Vec<Effect> {
        let leader = self.leader();
        if leader.as_deref() != Some(self.me.as_str()) {
            return vec![Effect::NotLeader {
                from: from.to_string(),
                leader: leader.unwrap_or_default(),
            }];
        }
        if !self.cfg.enabled || self.collecting {
            return Vec::new();
        }
        // Each new reporter pushes the split view back, so a burst of
        // reports becomes one view; a node repeating its report (its
        // partition is still there) does not, or reports from several
        // nodes could postpone the view for ever.
        if self.reports.insert(from.to_string()) || self.split_at.is_none() {
            self.split_at = Some(now + self.cfg.delay);
        }
        Vec::new()
    }

    /// This node's answer to a split-view request.
    pub fn split_view(&self) -> SplitView {
        SplitView {
            leader: self.leader(),
            running: self.running_view(),
        }
    }

    /// The split view came back from every core that answered. If any of
    /// them names another leader (both sides of a split elected their own
    /// and the network just came back), nothing is decided and the view is
    /// taken again after the delay: two leaders acting at once would each
    /// restart the other's side.
    pub fn on_views(&mut self, views: &BTreeMap<String, SplitView>, now: Instant) -> Vec<Effect> {
        self.collecting = false;
        if let Some((node, v)) = views
            .iter()
            .find(|(_, v)| v.leader.as_deref() != Some(self.me.as_str()))
        {
            self.split_at = Some(now + self.cfg.delay);
            return vec![Effect::LeaderDisputed {
                by: node.clone(),
                leader: v.leader.clone().unwrap_or_default(),
            }];
        }
        self.reports.clear();
        let views: BTreeMap<String, Vec<String>> = views
            .iter()
            .map(|(n, v)| (n.clone(), v.running.clone()))
            .collect();
        let cliques = cliques(&views, &self.me);
        if cliques.len() <= 1 {
            return vec![Effect::NothingToHeal];
        }
        let coordinator = cliques[0]
            .iter()
            .map(|n| self.age(n))
            .min()
            .map(|(_, n)| n)
            .unwrap_or_default();
        vec![Effect::Heal {
            coordinator,
            cliques,
        }]
    }

    /// Peers watched, with reachable / running / partitioned flags.
    pub fn peers(&self) -> Vec<(String, bool, bool, bool)> {
        self.peers
            .iter()
            .map(|(n, p)| (n.clone(), self.detector.is_up(n), p.running, p.partitioned))
            .collect()
    }
}

/// Splits the nodes of a split view into groups whose members all run
/// with each other (each lists the other), the chosen majority first:
/// the largest such group (exact for up to 16 nodes), a tie going to the
/// group holding `leader`, then to the smaller sorted member list. The
/// other nodes follow, grouped greedily in name order.
pub fn cliques(views: &BTreeMap<String, Vec<String>>, leader: &str) -> Vec<Vec<String>> {
    let nodes: Vec<&String> = views.keys().collect();
    let n = nodes.len();
    if n == 0 {
        return Vec::new();
    }
    let lists = |a: usize, b: usize| views[nodes[a]].iter().any(|x| x == nodes[b]);
    let mutual = |a: usize, b: usize| a == b || (lists(a, b) && lists(b, a));
    let members = |mask: u32| -> Vec<String> {
        (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| nodes[i].clone())
            .collect()
    };
    let greedy = |mut left: Vec<usize>| -> Vec<Vec<String>> {
        let mut groups = Vec::new();
        while !left.is_empty() {
            let first = left.remove(0);
            let mut g = vec![first];
            left.retain(|&c| {
                if g.iter().all(|&m| mutual(m, c)) {
                    g.push(c);
                    false
                } else {
                    true
                }
            });
            groups.push(g.into_iter().map(|i| nodes[i].clone()).collect::<Vec<_>>());
        }
        groups
    };
    let chosen: Vec<String> = if n <= 16 {
        let mut best: Option<(usize, bool, Vec<String>)> = None;
        for mask in 1u32..(1 << n) {
            let idx: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            let ok = idx
                .iter()
                .enumerate()
                .all(|(k, &a)| idx[k + 1..].iter().all(|&b| mutual(a, b)));
            if !ok {
                continue;
            }
            let m = members(mask);
            let has_leader = m.iter().any(|x| x == leader);
            let better = match &best {
                None => true,
                Some((size, lead, list)) => {
                    (idx.len(), has_leader) > (*size, *lead)
                        || ((idx.len(), has_leader) == (*size, *lead) && m < *list)
                }
            };
            if better {
                best = Some((idx.len(), has_leader, m));
            }
        }
        best.map(|b| b.2).unwrap_or_default()
    } else {
        let mut gs = greedy((0..n).collect());
        gs.sort_by(|a, b| {
            let la = a.iter().any(|x| x == leader);
            let lb = b.iter().any(|x| x == leader);
            (b.len(), lb).cmp(&(a.len(), la)).then(a.cmp(b))
        });
        gs.into_iter().next().unwrap_or_default()
    };
    let rest: Vec<usize> = (0..n).filter(|&i| !chosen.contains(nodes[i])).collect();
    let mut out = vec![chosen];
    out.extend(greedy(rest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn cliques_need_both_sides_to_list_each_other() {
        let v = view(&[
            ("1", &["1", "2", "3"]),
            ("2", &["2", "3"]),
            ("3", &["3", "2"]),
        ]);
        assert_eq!(cliques(&v, "1"), vec![vec!["2", "3"], vec!["1"]]);
        let v = view(&[
            ("1", &["1", "2", "3"]),
            ("2", &["1", "2", "3"]),
            ("3", &["1", "2", "3"]),
            ("4", &["4", "5"]),
            ("5", &["4", "5"]),
            ("6", &["6", "4", "5"]),
        ]);
        assert_eq!(
            cliques(&v, "1"),
            vec![vec!["1", "2", "3"], vec!["4", "5"], vec!["6"]]
        );
    }

    #[test]
    fn a_node_running_with_two_that_do_not_run_together_is_not_one_group() {
        // b and c were split from each other while both stayed with a.
        let v = view(&[
            ("a", &["a", "b", "c"]),
            ("b", &["a", "b"]),
            ("c", &["a", "c"]),
        ]);
        assert_eq!(cliques(&v, "a"), vec![vec!["a", "b"], vec!["c"]]);
    }

    #[test]
    fn a_tie_goes_to_the_leader_side() {
        let v = view(&[
            ("a", &["a", "b"]),
            ("b", &["a", "b"]),
            ("c", &["c", "d"]),
            ("d", &["c", "d"]),
        ]);
        assert_eq!(cliques(&v, "c")[0], vec!["c", "d"]);
        assert_eq!(cliques(&v, "a")[0], vec!["a", "b"]);
        assert_eq!(cliques(&v, "x")[0], vec!["a", "b"], "then the smaller list");
    }

    /// Each sends a heartbeat to the other; returns what each decided.
    fn exchange(a: &mut Monitor, b: &mut Monitor, t: Instant) -> (Vec<Effect>, Vec<Effect>) {
        let (ba, bb) = (a.beat(), b.beat());
        let (an, bn) = (a.me().to_string(), b.me().to_string());
        (a.on_beat(&bn, &bb, t), b.on_beat(&an, &ba, t))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn mon(me: &str, inc: u64, peers: &[&str], t0: Instant) -> Monitor {
        let cfg = HealConfig {
            enabled: true,
            confirm: secs(3),
            delay: secs(5),
        };
        let mut m = Monitor::new(me, inc, Role::Core, cfg, secs(6));
        for p in peers {
            m.add_member(p, Role::Core, t0);
        }
        m
    }

    #[test]
    fn both_sides_seeing_each_other_down_is_a_partition_one_side_is_not() {
        let t0 = Instant::now();
        let mut a = mon("a", 1, &["b"], t0);
        let mut b = mon("b", 2, &["a"], t0);
        let up = |n: &str| vec![Effect::MarkUp(n.into())];
        assert_eq!(exchange(&mut a, &mut b, t0), (up("b"), up("a")));
        // Only a loses b.
        assert_eq!(a.on_link_lost("b"), vec![Effect::MarkDown("b".into())]);
        let ba = a.beat();
        assert_eq!(ba.saw_down, vec![("b".to_string(), 2)]);
        // A beat b sent before it heard a again (say, queued in a socket
        // during the split) decides nothing...
        assert!(a.on_beat("b", &b.beat(), t0).is_empty());
        assert!(b.on_beat("a", &ba, t0).is_empty());
        // ...one that acknowledges a's later beat does: b never saw a down.
        // a keeps the record: a late view of b's would still count.
        assert_eq!(a.on_beat("b", &b.beat(), t0), up("b"));
        assert_eq!(a.beat().saw_down.len(), 1);
        // Both lose each other: the first heartbeats that say so find the
        // partition.
        a.on_link_lost("b");
        b.on_link_lost("a");
        assert_eq!(
            exchange(&mut a, &mut b, t0),
            (
                vec![Effect::PartitionDetected("b".into())],
                vec![Effect::PartitionDetected("a".into())]
            )
        );
        let bb = b.beat();
        assert!(a.on_beat("b", &bb, t0).is_empty(), "stays partitioned");
        assert!(!a.is_running("b") && a.is_reachable("b"));
        // a is the leader (older); b reports after the confirm delay.
        assert_eq!(b.leader().as_deref(), Some("a"));
        assert!(b.tick(t0 + secs(2)).is_empty());
        assert_eq!(
            b.tick(t0 + secs(3)),
            vec![Effect::Report { leader: "a".into() }]
        );
        assert_eq!(
            b.on_report("x", t0),
            vec![Effect::NotLeader {
                from: "x".into(),
                leader: "a".into()
            }]
        );
        assert!(a.on_report("b", t0 + secs(3)).is_empty());
        a.on_beat("b", &bb, t0 + secs(4));
        assert!(!a
            .tick(t0 + secs(7))
            .iter()
            .any(|e| matches!(e, Effect::CollectViews { .. })));
        let e = a.tick(t0 + secs(8));
        assert!(
            e.contains(&Effect::CollectViews {
                cores: vec!["a".into(), "b".into()]
            }),
            "{e:?}"
        );
        let views = BTreeMap::from([
            ("a".to_string(), a.split_view()),
            ("b".to_string(), b.split_view()),
        ]);
        let mut disputed = views.clone();
        disputed.insert(
            "b".into(),
            SplitView {
                leader: Some("b".into()),
                running: vec!["b".into()],
            },
        );
        assert!(matches!(
            &a.on_views(&disputed, t0 + secs(8))[..],
            [Effect::LeaderDisputed { .. }]
        ));
        // Two groups of one: the tie goes to the leader's, a coordinates.
        assert_eq!(
            a.on_views(&views, t0 + secs(8)),
            vec![Effect::Heal {
                coordinator: "a".into(),
                cliques: vec![vec!["a".into()], vec!["b".into()]]
            }]
        );
        // b restarts in place; a sees the new incarnation and runs with it.
        b.reboot(3, t0 + secs(9));
        assert!(b.partitions().is_empty() && b.beat().saw_down.is_empty());
        assert_eq!(
            a.on_beat("b", &b.beat(), t0 + secs(9)),
            vec![
                Effect::PartitionHealed("b".into()),
                Effect::MarkUp("b".into())
            ]
        );
        assert_eq!(
            b.on_beat("a", &a.beat(), t0 + secs(9)),
            vec![Effect::MarkUp("a".into())]
        );
    }

    #[test]
    fn the_leader_waits_for_a_majority_of_cores() {
        let t0 = Instant::now();
        let mut a = mon("a", 1, &["b", "c"], t0);
        let mut c = mon("c", 3, &["a", "b"], t0);
        a.on_beat("c", &c.beat(), t0);
        a.on_report("c", t0);
        // b was never heard: 1 of 3 unreachable is not fewer than 3/2 = 1.
        let e = a.tick(t0 + secs(5));
        assert!(
            matches!(&e[..], [Effect::MajorityUnreachable { cores: 3, .. }]),
            "{e:?}"
        );
        assert!(a.healing());
    }

    #[test]
    fn a_disabled_autoheal_never_reports() {
        let t0 = Instant::now();
        let cfg = HealConfig {
            enabled: false,
            ..HealConfig::default()
        };
        let mut a = Monitor::new("a", 1, Role::Core, cfg.clone(), secs(6));
        let mut b = Monitor::new("b", 2, Role::Core, cfg, secs(6));
        a.add_member("b", Role::Core, t0);
        b.add_member("a", Role::Core, t0);
        exchange(&mut a, &mut b, t0);
        a.on_link_lost("b");
        b.on_link_lost("a");
        assert_eq!(
            exchange(&mut a, &mut b, t0).0,
            vec![Effect::PartitionDetected("b".into())]
        );
        assert!(a.tick(t0 + secs(60)).is_empty());
        assert!(a.on_report("b", t0).is_empty());
    }
}
