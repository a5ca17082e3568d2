//! The simulated network of the cluster sims: per-link ordered queues
//! (as TCP keeps a connection in order) that drop, duplicate and delay
//! messages when lossy, and links that can be cut.

#![allow(dead_code)]

use emqx_actors::cluster::routes::RouteKey;
use rand::rngs::StdRng;
use rand::RngExt;
use std::collections::{BTreeMap, VecDeque};

pub struct Net<M> {
    pub now: u64,
    /// (from, to) -> (due, message), in order.
    links: BTreeMap<(usize, usize), VecDeque<(u64, M)>>,
    /// cut[a][b]: a and b cannot talk.
    cut: Vec<Vec<bool>>,
    /// Drop 4 % and duplicate 3 % of what is sent.
    pub lossy: bool,
}

impl<M: Clone> Net<M> {
    pub fn new(nodes: usize) -> Net<M> {
        Net {
            now: 0,
            links: BTreeMap::new(),
            cut: vec![vec![false; nodes]; nodes],
            lossy: true,
        }
    }

    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut[a][b]
    }

    pub fn send(&mut self, rng: &mut StdRng, from: usize, to: usize, m: M) {
        if self.cut[from][to] || (self.lossy && rng.random_bool(0.04)) {
            return;
        }
        let copies = if self.lossy && rng.random_bool(0.03) {
            2
        } else {
            1
        };
        let q = self.links.entry((from, to)).or_default();
        // In order on the link: never due before what is already queued.
        let last = q.back().map(|(at, _)| *at).unwrap_or(0);
        for _ in 0..copies {
            let at = (self.now + rng.random_range(1..15)).max(last);
            q.push_back((at, m.clone()));
        }
    }

    /// Cuts or restores the link between `a` and `b`; a cut drops what
    /// was on its way both ways (the connection closed).
    pub fn set_cut(&mut self, a: usize, b: usize, cut: bool) {
        self.cut[a][b] = cut;
        self.cut[b][a] = cut;
        if cut {
            self.links.remove(&(a, b));
            self.links.remove(&(b, a));
        }
    }

    /// Drops everything on its way to or from `n` (it crashed).
    pub fn drop_node(&mut self, n: usize) {
        self.links.retain(|(a, b), _| *a != n && *b != n);
    }

    /// The head of a random link that has something queued.
    pub fn next(&mut self, rng: &mut StdRng) -> Option<(usize, usize, M)> {
        let busy: Vec<_> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if busy.is_empty() {
            return None;
        }
        let k = busy[rng.random_range(0..busy.len())];
        let (at, m) = self.links.get_mut(&k)?.pop_front()?;
        self.now = self.now.max(at);
        Some((k.0, k.1, m))
    }
}

/// The name of sim node `n`.
pub fn node_name(n: usize) -> String {
    format!("n{n}@h")
}

/// The sim node a name is of.
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.strip_suffix("@h")?.parse().ok()
}

/// Route key `i` of the sims' workload: plain, wildcard and shared.
pub fn key(i: u32) -> RouteKey {
    if i.is_multiple_of(5) {
        RouteKey::of_subscription(&format!("$share/g/t/{}", i % 7))
    } else if i.is_multiple_of(3) {
        RouteKey::plain(&format!("w/+/{}", i % 11))
    } else {
        RouteKey::plain(&format!("t/{}", i % 13))
    }
}

/// The seeds to run: `var` if set (a replay), else `0..count`.
pub fn seeds(var: &str, count: u64) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => match s.parse() {
            Ok(n) => vec![n],
            Err(_) => panic!("{var} must be a number, not {s:?}"),
        },
        Err(_) => (0..count).collect(),
    }
}

/// Runs `run` for each seed of [`seeds`]; a failure names its seed and how
/// to replay it.
pub fn check_seeds(var: &str, count: u64, mut run: impl FnMut(u64) -> Result<(), String>) {
    for seed in seeds(var, count) {
        if let Err(e) = run(seed) {
            panic!("seed {seed}: {e} (replay with {var}={seed})");
        }
    }
}
