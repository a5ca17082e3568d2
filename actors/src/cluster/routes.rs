//! The replicated route table, as plain data.
//!
//! Every node owns the routes of its own subscribers and is the only one
//! that changes them. It numbers each change (`version`), keeps the recent
//! changes in a bounded log, and sends them to every peer in order. A peer
//! applies a batch only if it starts where its copy of that origin ends;
//! otherwise it has missed something and asks for the changes since its
//! version (answered from the log), or for a full snapshot when the log no
//! longer reaches back that far. So a node that reconnects catches up
//! without a full resend whenever it can.

pub use crate::peers::{RouteKey, RouteOp};
use emqx_mqtt::topic;
use emqx_mqtt::trie::TopicTrie;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// This node's own route changes, numbered, with a bounded history.
#[derive(Debug, Clone)]
pub struct LocalRouteLog {
    /// Version after the last change; 0 = no change yet.
    pub version: u64,
    /// The route keys currently held (the snapshot).
    pub keys: BTreeSet<RouteKey>,
    /// `(version, op)` of the most recent changes.
    log: VecDeque<(u64, RouteOp)>,
    cap: usize,
}

impl LocalRouteLog {
    pub fn new(cap: usize) -> LocalRouteLog {
        LocalRouteLog {
            version: 0,
            keys: BTreeSet::new(),
            log: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Records a change; returns its version, or `None` if it changed nothing.
    pub fn record(&mut self, op: RouteOp) -> Option<u64> {
        let changed = match &op {
            RouteOp::Add(k) => self.keys.insert(k.clone()),
            RouteOp::Del(k) => self.keys.remove(k),
        };
        if !changed {
            return None;
        }
        self.version += 1;
        if self.log.len() == self.cap {
            self.log.pop_front();
        }
        self.log.push_back((self.version, op));
        Some(self.version)
    }

    /// The changes after `since`, if the log still holds all of them.
    pub fn since(&self, since: u64) -> Option<Vec<RouteOp>> {
        if since > self.version {
            return None;
        }
        if since == self.version {
            return Some(Vec::new());
        }
        let first = self.log.front()?.0;
        if since + 1 < first {
            return None;
        }
        Some(
            self.log
                .iter()
                .filter(|(v, _)| *v > since)
                .map(|(_, op)| op.clone())
                .collect(),
        )
    }

    /// Forgets everything (the node joined another cluster or restarted
    /// its broker); the version keeps growing so peers notice.
    pub fn snapshot(&self) -> (u64, Vec<RouteKey>) {
        (self.version, self.keys.iter().cloned().collect())
    }
}

/// Why a batch of changes could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The version this node holds for the origin.
    pub have: u64,
}

/// One origin's routes as known here.
#[derive(Debug, Clone, Default)]
struct Origin {
    version: u64,
    keys: BTreeSet<RouteKey>,
}

/// Nodes holding plain subscribers and shared groups of one filter.
#[derive(Debug, Clone, Default)]
pub struct FilterRoutes {
    pub nodes: BTreeSet<Arc<str>>,
    /// group -> nodes with members of that group.
    pub groups: BTreeMap<Arc<str>, BTreeSet<Arc<str>>>,
}

impl FilterRoutes {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty()
    }
}

/// The routes of every other node, indexed for matching.
#[derive(Default)]
pub struct ClusterRoutes {
    origins: HashMap<Arc<str>, Origin>,
    exact: HashMap<Arc<str>, FilterRoutes>,
    wild: TopicTrie<FilterRoutes>,
}

impl ClusterRoutes {
    pub fn new() -> ClusterRoutes {
        ClusterRoutes::default()
    }

    /// The version held for `origin` (0 if unknown).
    pub fn version(&self, origin: &str) -> u64 {
        self.origins.get(origin).map_or(0, |o| o.version)
    }

    /// Applies `ops` that take `origin` from `base` to `base + ops.len()`.
    /// Batches already applied are ignored; a batch from the future is a gap.
    pub fn apply(&mut self, origin: &str, base: u64, ops: &[RouteOp]) -> Result<(), Gap> {
        let have = self.version(origin);
        let end = base + ops.len() as u64;
        if end <= have {
            return Ok(());
        }
        if base > have {
            return Err(Gap { have });
        }
        let node: Arc<str> = Arc::from(origin);
        let skip = (have - base) as usize;
        for op in &ops[skip..] {
            match op {
                RouteOp::Add(k) => {
                    if self
                        .origins
                        .entry(node.clone())
                        .or_default()
                        .keys
                        .insert(k.clone())
                    {
                        self.index_add(&node, k);
                    }
                }
                RouteOp::Del(k) => {
                    if self.origins.entry(node.clone()).or_default().keys.remove(k) {
                        self.index_del(&node, k);
                    }
                }
            }
        }
        self.origins.entry(node).or_default().version = end;
        Ok(())
    }

    /// Replaces everything known of `origin` with a snapshot.
    pub fn replace(&mut self, origin: &str, version: u64, keys: Vec<RouteKey>) {
        self.purge(origin);
        let node: Arc<str> = Arc::from(origin);
        let mut o = Origin {
            version,
            keys: BTreeSet::new(),
        };
        for k in keys {
            if o.keys.insert(k.clone()) {
                self.index_add(&node, &k);
            }
        }
        self.origins.insert(node, o);
    }

    /// Forgets every route of `origin` (it left, was removed, or is being
    /// re-synced); returns how many routes went.
    pub fn purge(&mut self, origin: &str) -> usize {
        let Some(o) = self.origins.remove(origin) else {
            return 0;
        };
        let node: Arc<str> = Arc::from(origin);
        for k in &o.keys {
            self.index_del(&node, k);
        }
        o.keys.len()
    }

    /// The routes held for `origin`.
    pub fn keys_of(&self, origin: &str) -> Vec<RouteKey> {
        self.origins
            .get(origin)
            .map(|o| o.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Origins known here.
    pub fn origins(&self) -> Vec<Arc<str>> {
        self.origins.keys().cloned().collect()
    }

    /// `(filter, node)` for every route (shared ones by their filter).
    pub fn all(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for (node, o) in &self.origins {
            for k in &o.keys {
                v.push((k.filter.clone(), node.to_string()));
            }
        }
        v.sort();
        v.dedup();
        v
    }

    fn entry_mut(&mut self, filter: &str) -> &mut FilterRoutes {
        if topic::is_wildcard(filter) {
            if self.wild.get(filter).is_none() {
                self.wild.insert(filter, FilterRoutes::default());
            }
            match self.wild.get_mut(filter) {
                Some(e) => e,
                None => unreachable!("inserted above"),
            }
        } else {
            self.exact.entry(Arc::from(filter)).or_default()
        }
    }

    fn index_add(&mut self, node: &Arc<str>, k: &RouteKey) {
        let e = self.entry_mut(&k.filter);
        match &k.group {
            None => {
                e.nodes.insert(node.clone());
            }
            Some(g) => {
                e.groups
                    .entry(Arc::from(g.as_str()))
                    .or_default()
                    .insert(node.clone());
            }
        }
    }

    fn index_del(&mut self, node: &Arc<str>, k: &RouteKey) {
        let f = k.filter.as_str();
        let empty = {
            let e = if topic::is_wildcard(f) {
                self.wild.get_mut(f)
            } else {
                self.exact.get_mut(f)
            };
            let Some(e) = e else { return };
            match &k.group {
                None => {
                    e.nodes.remove(node);
                }
                Some(g) => {
                    if let Some(ns) = e.groups.get_mut(g.as_str()) {
                        ns.remove(node);
                        if ns.is_empty() {
                            e.groups.remove(g.as_str());
                        }
                    }
                }
            }
            e.is_empty()
        };
        if empty {
            if topic::is_wildcard(f) {
                self.wild.remove(f);
            } else {
                self.exact.remove(f);
            }
        }
    }

    /// Calls `f(filter, routes)` for every routed filter matching `topic`.
    pub fn match_each(&self, topic: &str, mut f: impl FnMut(&str, &FilterRoutes)) {
        if let Some(e) = self.exact.get(topic) {
            f(topic, e);
        }
        self.wild.match_each(topic, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(f: &str) -> RouteOp {
        RouteOp::Add(RouteKey::of_subscription(f))
    }
    fn del(f: &str) -> RouteOp {
        RouteOp::Del(RouteKey::of_subscription(f))
    }
    fn nodes_for(r: &ClusterRoutes, topic: &str) -> Vec<String> {
        let mut v = BTreeSet::new();
        r.match_each(topic, |_, e| {
            v.extend(e.nodes.iter().map(|n| n.to_string()))
        });
        v.into_iter().collect()
    }

    #[test]
    fn the_local_log_numbers_changes_and_ignores_no_ops() {
        let mut l = LocalRouteLog::new(10);
        assert_eq!(l.record(add("a")), Some(1));
        assert_eq!(l.record(add("a")), None);
        assert_eq!(l.record(del("a")), Some(2));
        assert_eq!(l.record(del("a")), None);
        assert_eq!(l.since(0), Some(vec![add("a"), del("a")]));
        assert_eq!(l.since(1), Some(vec![del("a")]));
        assert_eq!(l.since(2), Some(vec![]));
        assert_eq!(l.since(3), None);
    }

    #[test]
    fn the_log_is_bounded_and_old_versions_need_a_snapshot() {
        let mut l = LocalRouteLog::new(3);
        for i in 0..5 {
            l.record(add(&format!("t/{i}")));
        }
        assert_eq!(l.version, 5);
        assert_eq!(l.since(1), None, "versions 2..=5 are not all in the log");
        assert_eq!(l.since(2).map(|v| v.len()), Some(3));
        assert_eq!(l.snapshot().1.len(), 5);
    }

    #[test]
    fn batches_apply_in_order_duplicates_are_ignored_and_gaps_detected() {
        let mut r = ClusterRoutes::new();
        r.apply("b@h", 0, &[add("x/+"), add("y")])
            .expect("first batch");
        assert_eq!(r.version("b@h"), 2);
        r.apply("b@h", 0, &[add("x/+"), add("y")])
            .expect("replayed batch is a no-op");
        assert_eq!(r.apply("b@h", 3, &[add("z")]), Err(Gap { have: 2 }));
        r.apply("b@h", 1, &[add("y"), del("x/+")])
            .expect("overlapping batch");
        assert_eq!(r.version("b@h"), 3);
        assert_eq!(nodes_for(&r, "x/1"), Vec::<String>::new());
        assert_eq!(nodes_for(&r, "y"), vec!["b@h"]);
    }

    #[test]
    fn matching_returns_each_node_whose_filters_match() {
        let mut r = ClusterRoutes::new();
        r.apply("b@h", 0, &[add("s/+/t"), add("s/#")]).expect("b");
        r.apply("c@h", 0, &[add("s/1/t")]).expect("c");
        r.apply("d@h", 0, &[add("other")]).expect("d");
        assert_eq!(nodes_for(&r, "s/1/t"), vec!["b@h", "c@h"]);
        assert_eq!(nodes_for(&r, "s"), vec!["b@h"]);
        assert_eq!(nodes_for(&r, "$SYS/x"), Vec::<String>::new());
    }

    #[test]
    fn shared_routes_are_indexed_by_group() {
        let mut r = ClusterRoutes::new();
        r.apply("b@h", 0, &[add("$share/g/t/#"), add("$queue/t/1")])
            .expect("b");
        r.apply("c@h", 0, &[add("$share/g/t/#")]).expect("c");
        let mut groups = BTreeMap::new();
        r.match_each("t/1", |_, e| {
            for (g, ns) in &e.groups {
                groups.insert(g.to_string(), ns.len());
            }
            assert!(e.nodes.is_empty());
        });
        assert_eq!(groups.get("g"), Some(&2));
        assert_eq!(groups.get("$queue"), Some(&1));
        assert_eq!(
            r.all(),
            vec![
                ("t/#".into(), "b@h".into()),
                ("t/#".into(), "c@h".into()),
                ("t/1".into(), "b@h".into())
            ]
        );
    }

    #[test]
    fn purge_and_replace_remove_every_route_of_an_origin() {
        let mut r = ClusterRoutes::new();
        r.apply("b@h", 0, &[add("a/#"), add("b")]).expect("b");
        r.apply("c@h", 0, &[add("a/#")]).expect("c");
        assert_eq!(r.purge("b@h"), 2);
        assert_eq!(nodes_for(&r, "a/1"), vec!["c@h"]);
        assert_eq!(nodes_for(&r, "b"), Vec::<String>::new());
        r.replace("c@h", 9, vec![RouteKey::plain("q")]);
        assert_eq!(r.version("c@h"), 9);
        assert_eq!(nodes_for(&r, "a/1"), Vec::<String>::new());
        assert_eq!(nodes_for(&r, "q"), vec!["c@h"]);
        assert_eq!(r.purge("nobody"), 0);
    }
}
