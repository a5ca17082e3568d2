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

use super::rlog::Shard;
pub use crate::peers::{RouteKey, RouteOp};
use emqx_mqtt::topic;
use emqx_mqtt::trie::TopicTrie;
use serde::{Deserialize, Serialize};
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

/// A change to a node's table of other nodes' routes, as a core streams it
/// to the replicants that follow it (see [`super::rlog`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteChange {
    /// `origin` went from `base` to `base + ops.len()`.
    Apply {
        origin: String,
        base: u64,
        ops: Vec<RouteOp>,
    },
    /// Everything of `origin` replaced.
    Replace {
        origin: String,
        version: u64,
        keys: Vec<RouteKey>,
    },
    /// Everything of `origin` forgotten.
    Purge { origin: String },
}

/// Part of a snapshot of a route table: routes of one origin (an origin
/// with many routes spans several rows; one without any, a row with none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub origin: String,
    pub version: u64,
    pub keys: Vec<RouteKey>,
}

/// The routes of every other node, indexed for matching.
#[derive(Default)]
pub struct ClusterRoutes {
    origins: HashMap<Arc<str>, Origin>,
    exact: HashMap<Arc<str>, FilterRoutes>,
    wild: TopicTrie<FilterRoutes>,
    /// This node: a copy fed by a core carries our own routes too, and
    /// they are left out (they are in this node's [`LocalRouteLog`]).
    own: Option<Arc<str>>,
    /// Changes made since [`ClusterRoutes::take_changes`], when recording.
    changes: Option<Vec<RouteChange>>,
}

impl ClusterRoutes {
    pub fn new() -> ClusterRoutes {
        ClusterRoutes::default()
    }

    /// A table that never holds routes of `me`.
    pub fn excluding(me: &str) -> ClusterRoutes {
        ClusterRoutes {
            own: Some(Arc::from(me)),
            ..ClusterRoutes::default()
        }
    }

    /// An empty table that leaves out the same node as this one.
    pub fn empty_like(&self) -> ClusterRoutes {
        ClusterRoutes {
            own: self.own.clone(),
            ..ClusterRoutes::default()
        }
    }

    /// Applies a change streamed by a core; false if it does not fit.
    pub fn apply_change(&mut self, c: &RouteChange) -> bool {
        <ClusterRoutes as Shard>::apply(self, c)
    }

    /// From now on every change is kept for [`ClusterRoutes::take_changes`]
    /// (a core with replicants streams them).
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// Stops keeping changes (the last replicant stopped following).
    pub fn stop_recording(&mut self) {
        self.changes = None;
    }

    /// The changes made since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<RouteChange> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn is_own(&self, origin: &str) -> bool {
        self.own.as_deref() == Some(origin)
    }

    /// The whole table as snapshot rows of at most `max_keys` routes.
    pub fn rows(&self, max_keys: usize) -> Vec<RouteRow> {
        let mut out = Vec::new();
        let mut origins: Vec<_> = self.origins.iter().collect();
        origins.sort_by(|a, b| a.0.cmp(b.0));
        for (origin, o) in origins {
            out.extend(origin_rows(origin, o.version, o.keys.iter(), max_keys));
        }
        out
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
        if end <= have || self.is_own(origin) {
            return Ok(());
        }
        if base > have {
            return Err(Gap { have });
        }
        let node: Arc<str> = Arc::from(origin);
        let skip = (have - base) as usize;
        if let Some(c) = self.changes.as_mut() {
            c.push(RouteChange::Apply {
                origin: origin.to_string(),
                base: have,
                ops: ops[skip..].to_vec(),
            });
        }
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
        if self.is_own(origin) {
            return;
        }
        if let Some(c) = self.changes.as_mut() {
            c.push(RouteChange::Replace {
                origin: origin.to_string(),
                version,
                keys: keys.clone(),
            });
        }
        self.forget(origin);
        self.add_keys(origin, version, keys);
    }

    /// Forgets every route of `origin` (it left, was removed, or is being
    /// re-synced); returns how many routes went.
    pub fn purge(&mut self, origin: &str) -> usize {
        if self.origins.contains_key(origin) {
            if let Some(c) = self.changes.as_mut() {
                c.push(RouteChange::Purge {
                    origin: origin.to_string(),
                });
            }
        }
        self.forget(origin)
    }

    /// Sets `origin`'s version and adds `keys` to its routes, indexed.
    fn add_keys(&mut self, origin: &str, version: u64, keys: Vec<RouteKey>) {
        let node: Arc<str> = Arc::from(origin);
        let o = self.origins.entry(node.clone()).or_default();
        o.version = version;
        let added: Vec<RouteKey> = keys
            .into_iter()
            .filter(|k| o.keys.insert(k.clone()))
            .collect();
        for k in &added {
            self.index_add(&node, k);
        }
    }

    fn forget(&mut self, origin: &str) -> usize {
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

    /// Whether `origin`'s routes include `key`.
    pub fn holds(&self, origin: &str, key: &RouteKey) -> bool {
        self.origins
            .get(origin)
            .is_some_and(|o| o.keys.contains(key))
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

/// Snapshot rows of one origin's routes, at most `max_keys` per row.
pub fn origin_rows<'a>(
    origin: &str,
    version: u64,
    keys: impl Iterator<Item = &'a RouteKey>,
    max_keys: usize,
) -> Vec<RouteRow> {
    let row = |keys: Vec<RouteKey>| RouteRow {
        origin: origin.to_string(),
        version,
        keys,
    };
    let keys: Vec<RouteKey> = keys.cloned().collect();
    if keys.is_empty() {
        return vec![row(Vec::new())];
    }
    keys.chunks(max_keys.max(1))
        .map(|c| row(c.to_vec()))
        .collect()
}

/// A replicant's copy of its core's table (every origin but itself).
impl Shard for ClusterRoutes {
    type Op = RouteChange;
    type Row = RouteRow;

    fn restore(&mut self, rows: Vec<RouteRow>) {
        // Built aside, then swapped: whoever holds the lock on this table
        // swaps it whole.
        let mut fresh = ClusterRoutes {
            own: self.own.clone(),
            ..ClusterRoutes::default()
        };
        for r in rows {
            if !fresh.is_own(&r.origin) {
                fresh.add_keys(&r.origin, r.version, r.keys);
            }
        }
        fresh.changes = self.changes.take();
        *self = fresh;
    }

    fn apply(&mut self, op: &RouteChange) -> bool {
        match op {
            RouteChange::Apply { origin, base, ops } => {
                // The core sends only what changed its copy, from where its
                // copy was: ours must be there too.
                self.is_own(origin)
                    || (self.version(origin) == *base
                        && ClusterRoutes::apply(self, origin, *base, ops).is_ok())
            }
            RouteChange::Replace {
                origin,
                version,
                keys,
            } => {
                self.replace(origin, *version, keys.clone());
                true
            }
            RouteChange::Purge { origin } => {
                self.purge(origin);
                true
            }
        }
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

    #[test]
    fn a_replicant_copy_follows_the_recorded_changes_and_leaves_itself_out() {
        use crate::cluster::rlog::{Down, Replica, Up, Upstream};
        let mut core = ClusterRoutes::new();
        core.apply("a@h", 0, &[add("x/1"), add("x/+")]).expect("a");
        core.apply("r@h", 0, &[add("mine")]).expect("r");
        core.record_changes();
        let mut up = Upstream::new(2);
        let mut rep: Replica<ClusterRoutes> = Replica::new(1, 3);
        let mut served = ClusterRoutes::excluding("r@h");
        let stream = match rep.subscribe("core@h").pop() {
            Some((_, Up::Subscribe { stream })) => stream,
            other => panic!("{other:?}"),
        };
        let mut rows = core.rows(1);
        rows.extend(origin_rows("core@h", 3, [RouteKey::plain("c")].iter(), 1));
        for d in up.subscribe::<RouteChange, RouteRow>("r@h", stream, rows) {
            rep.receive(d, &mut served);
        }
        assert!(rep.is_following());
        // Applied, replaced, purged; a batch already held changes nothing
        // and is not recorded.
        core.apply("a@h", 1, &[add("x/+"), del("x/1"), add("x/2")])
            .expect("a");
        core.apply("a@h", 0, &[add("x/1")]).expect("old");
        core.replace("b@h", 9, vec![RouteKey::plain("y")]);
        core.apply("r@h", 1, &[add("mine/2")]).expect("r");
        core.purge("b@h");
        core.replace("b@h", 10, vec![RouteKey::plain("z")]);
        let changes = core.take_changes();
        assert_eq!(changes.len(), 5, "{changes:?}");
        assert!(matches!(&changes[0], RouteChange::Apply { base: 2, ops, .. } if ops.len() == 2));
        for (_, d) in up.record::<RouteChange, RouteRow>(changes) {
            assert_eq!(rep.receive(d, &mut served), None);
        }
        assert_eq!(rep.applied(), Some(up.seq()));
        for o in ["a@h", "b@h"] {
            assert_eq!(served.keys_of(o), core.keys_of(o), "{o}");
            assert_eq!(served.version(o), core.version(o), "{o}");
        }
        assert_eq!(served.keys_of("core@h"), vec![RouteKey::plain("c")]);
        assert_eq!(served.version("core@h"), 3);
        assert!(
            served.keys_of("r@h").is_empty(),
            "its own routes are not in the copy"
        );
        assert_eq!(nodes_for(&served, "x/2"), vec!["a@h"]);
        assert_eq!(nodes_for(&served, "mine"), Vec::<String>::new());
        // A change from another base than the copy's ends the stream.
        let bad = Down::Entries {
            stream,
            first: up.seq() + 1,
            ops: vec![RouteChange::Apply {
                origin: "a@h".into(),
                base: 1,
                ops: vec![add("q")],
            }],
        };
        assert!(rep.receive(bad, &mut served).is_some());
    }
}
