//! Topic trie: a map from topic filters (wildcard or not) to values, with a
//! fast "which stored filters match this topic name" query.
//!
//! # Design
//!
//! One trie node per filter level. A node has
//!
//! * `lits`: children for literal levels. Most nodes have zero or one literal
//!   child (chains such as `+/status`), so that case is stored inline as a
//!   single boxed `(level, node)` pair and compared directly; from two
//!   children on it becomes a `HashMap<Box<str>, Node>`. Either way, finding
//!   the child for a topic level is one comparison or one hash lookup: matching
//!   never scans siblings, so a node with a million children (`device/{id}`)
//!   costs the same as one with two.
//! * `plus`: the child for a `+` level, `Option<Box<Node>>`.
//! * `hash`: the filter ending in `#` at this level. `#` can only be the last
//!   level, so this is a leaf entry, not a node.
//! * `entry`: the filter that ends exactly at this node.
//!
//! Entries (`Box<Entry>`) hold the full filter string next to the value, so
//! [`TopicTrie::match_each`] hands out `(filter, value)` without rebuilding
//! the filter, and a node without a filter pays 8 bytes for it. A node is 40
//! bytes; wildcard children and entries are boxed because most nodes have
//! none of them.
//!
//! Matching a topic of `L` levels walks down the trie: at each reached node it
//! reports the `#` entry (which also covers the parent level: `a/#` matches
//! `a`), then follows at most two edges for the next level, the literal one
//! and `+`. The cost is therefore `O(L * b + m)` hash lookups, where `b` is
//! the number of distinct wildcard paths that are live at once (small for
//! realistic filters) and `m` the number of matches, independent of the
//! number of stored filters. Matching does not allocate: topic levels are
//! sliced with `split_once('/')` and pending `+` branches are kept on a small
//! inline stack (spilling to the heap only past 16 pending branches). The
//! `$` rule (first-level `+`/`#` do not match topics starting with `$`) is
//! applied at the root.
//!
//! Insertion and lookup are `O(L)`. Removal is `O(L)` and prunes every node
//! left empty (and shrinks or collapses children maps), so memory is returned
//! when subscriptions go away.
//!
//! Literal maps use SipHash-1-3 with a process-wide random key (the std
//! `RandomState`, created once) so that subscribers cannot engineer hash
//! collisions, without storing 16 bytes of hasher state in every map.
//!
//! Filters are stored as given. They are expected to be valid (see
//! [`crate::topic::validate_topic_filter`], which also bounds their depth):
//! a `#` that is not the last level, or `+`/`#` inside a level, is stored as
//! a literal level and, since topic names cannot contain those characters,
//! never matches. `remove` and `Drop` recurse once per level, so the level
//! limit also bounds stack use.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Hasher builder for literal-level maps: SipHash-1-3 keyed by one random
/// `RandomState` per process. Zero-sized, unlike `RandomState` itself.
#[derive(Clone, Copy, Default)]
struct LevelHasher;

impl BuildHasher for LevelHasher {
    type Hasher = DefaultHasher;

    #[inline]
    fn build_hasher(&self) -> DefaultHasher {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        KEYS.get_or_init(RandomState::new).build_hasher()
    }
}

type LitMap<V> = HashMap<Box<str>, Node<V>, LevelHasher>;

/// A stored filter and its value.
struct Entry<V> {
    filter: Box<str>,
    value: V,
}

/// Literal-level children of a node.
enum Lits<V> {
    Empty,
    One(Box<(Box<str>, Node<V>)>),
    Many(Box<LitMap<V>>),
}

struct Node<V> {
    lits: Lits<V>,
    plus: Option<Box<Node<V>>>,
    hash: Option<Box<Entry<V>>>,
    entry: Option<Box<Entry<V>>>,
}

/// Splits off the first level of `rest`: `Some("a/b")` gives `("a",
/// Some("b"))`, `Some("a")` gives `("a", None)` (no more levels).
#[inline]
fn next_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (rest, None),
    }
}

impl<V> Lits<V> {
    #[inline]
    fn get(&self, level: &str) -> Option<&Node<V>> {
        match self {
            Lits::Empty => None,
            Lits::One(kv) => (&*kv.0 == level).then_some(&kv.1),
            Lits::Many(map) => map.get(level),
        }
    }

    #[inline]
    fn get_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        match self {
            Lits::Empty => None,
            Lits::One(kv) => (&*kv.0 == level).then_some(&mut kv.1),
            Lits::Many(map) => map.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node<V> {
        match self {
            Lits::Empty => {
                *self = Lits::One(Box::new((level.into(), Node::new())));
            }
            Lits::One(kv) if &*kv.0 == level => {}
            Lits::One(_) => {
                let Lits::One(kv) = std::mem::replace(self, Lits::Empty) else {
                    unreachable!()
                };
                let (k, n) = *kv;
                let mut map = LitMap::with_capacity_and_hasher(2, LevelHasher);
                map.insert(k, n);
                map.insert(level.into(), Node::new());
                *self = Lits::Many(Box::new(map));
            }
            Lits::Many(map) => {
                if !map.contains_key(level) {
                    map.insert(level.into(), Node::new());
                }
            }
        }
        self.get_mut(level).expect("just inserted")
    }

    /// Removes the child for `level` (used to prune empty children), keeping
    /// the representation compact.
    fn remove(&mut self, level: &str) {
        match self {
            Lits::Empty => {}
            Lits::One(kv) => {
                if &*kv.0 == level {
                    *self = Lits::Empty;
                }
            }
            Lits::Many(map) => {
                map.remove(level);
                match map.len() {
                    0 => *self = Lits::Empty,
                    1 => {
                        let Lits::Many(map) = std::mem::replace(self, Lits::Empty) else {
                            unreachable!()
                        };
                        let kv = map.into_iter().next().expect("one element");
                        *self = Lits::One(Box::new(kv));
                    }
                    // Give memory back after mass unsubscribes; the factor of
                    // 4 keeps shrinking amortised O(1) per removal.
                    n if map.capacity() > 4 * n.max(4) => map.shrink_to(2 * n),
                    _ => {}
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Lits::Empty)
    }

    fn for_each(&self, mut f: impl FnMut(&Node<V>)) {
        match self {
            Lits::Empty => {}
            Lits::One(kv) => f(&kv.1),
            Lits::Many(map) => map.values().for_each(f),
        }
    }
}

impl<V> Node<V> {
    const fn new() -> Self {
        Node {
            lits: Lits::Empty,
            plus: None,
            hash: None,
            entry: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.entry.is_none() && self.hash.is_none() && self.plus.is_none() && self.lits.is_empty()
    }

    /// Number of nodes below this one (children, `#` leaves count as nodes).
    fn count_nodes(&self) -> usize {
        let mut n = usize::from(self.hash.is_some());
        if let Some(p) = &self.plus {
            n += 1 + p.count_nodes();
        }
        self.lits.for_each(|c| n += 1 + c.count_nodes());
        n
    }

    /// Removes the filter whose remaining levels are `level` + `rest` below
    /// this node, pruning children that become empty.
    fn remove(&mut self, level: &str, rest: Option<&str>) -> Option<Box<Entry<V>>> {
        if level == "#" && rest.is_none() {
            return self.hash.take();
        }
        if level == "+" {
            let child = self.plus.as_deref_mut()?;
            let removed = child.remove_below(rest)?;
            if child.is_empty() {
                self.plus = None;
            }
            Some(removed)
        } else {
            let child = self.lits.get_mut(level)?;
            let removed = child.remove_below(rest)?;
            if child.is_empty() {
                self.lits.remove(level);
            }
            Some(removed)
        }
    }

    fn remove_below(&mut self, rest: Option<&str>) -> Option<Box<Entry<V>>> {
        match rest {
            None => self.entry.take(),
            Some(rest) => {
                let (level, rest) = next_level(rest);
                self.remove(level, rest)
            }
        }
    }
}

/// Small LIFO work list for matching: inline up to `N` items, heap beyond.
struct WorkList<T: Copy, const N: usize> {
    inline: [T; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> WorkList<T, N> {
    #[inline]
    fn new(fill: T) -> Self {
        WorkList {
            inline: [fill; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, item: T) {
        if self.len < N {
            self.inline[self.len] = item;
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.inline[self.len])
    }
}

/// A map from MQTT topic filters to values, answering "which filters match
/// this topic" in time independent of the number of filters. See the module
/// documentation for the design.
pub struct TopicTrie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::new(),
            len: 0,
        }
    }
}

impl<V> fmt::Debug for TopicTrie<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTrie")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V> TopicTrie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` under the exact filter `filter`, returning the previous
    /// value for that filter if there was one. The filter should be valid
    /// (see [`crate::topic::validate_topic_filter`]) and not shared: strip
    /// `$share/<group>/` first.
    pub fn insert(&mut self, filter: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut rest = filter;
        let slot = loop {
            let (level, more) = next_level(rest);
            match (level, more) {
                ("#", None) => break &mut node.hash,
                ("+", _) => node = node.plus.get_or_insert_with(|| Box::new(Node::new())),
                _ => node = node.lits.get_or_insert(level),
            }
            match more {
                Some(more) => rest = more,
                None => break &mut node.entry,
            }
        };
        match slot {
            Some(entry) => Some(std::mem::replace(&mut entry.value, value)),
            None => {
                *slot = Some(Box::new(Entry {
                    filter: filter.into(),
                    value,
                }));
                self.len += 1;
                None
            }
        }
    }

    fn find(&self, filter: &str) -> Option<&Entry<V>> {
        let mut node = &self.root;
        let mut rest = filter;
        loop {
            let (level, more) = next_level(rest);
            match (level, more) {
                ("#", None) => return node.hash.as_deref(),
                ("+", _) => node = node.plus.as_deref()?,
                _ => node = node.lits.get(level)?,
            }
            match more {
                Some(more) => rest = more,
                None => return node.entry.as_deref(),
            }
        }
    }

    fn find_mut(&mut self, filter: &str) -> Option<&mut Entry<V>> {
        let mut node = &mut self.root;
        let mut rest = filter;
        loop {
            let (level, more) = next_level(rest);
            match (level, more) {
                ("#", None) => return node.hash.as_deref_mut(),
                ("+", _) => node = node.plus.as_deref_mut()?,
                _ => node = node.lits.get_mut(level)?,
            }
            match more {
                Some(more) => rest = more,
                None => return node.entry.as_deref_mut(),
            }
        }
    }

    /// The value stored under exactly this filter (no wildcard matching:
    /// `get("a/+")` finds the filter `a/+`, not `a/b`).
    pub fn get(&self, filter: &str) -> Option<&V> {
        self.find(filter).map(|e| &e.value)
    }

    /// Mutable access to the value stored under exactly this filter.
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        self.find_mut(filter).map(|e| &mut e.value)
    }

    /// True if exactly this filter is stored.
    pub fn contains(&self, filter: &str) -> bool {
        self.find(filter).is_some()
    }

    /// Removes exactly this filter, returning its value. Nodes left without
    /// filters below them are freed.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let (level, rest) = next_level(filter);
        let entry = self.root.remove(level, rest)?;
        self.len -= 1;
        Some(entry.value)
    }

    /// Number of filters stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no filter is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes below the root (`#` leaves included). A
    /// diagnostic for tests and memory accounting: walks the whole trie.
    pub fn node_count(&self) -> usize {
        self.root.count_nodes()
    }

    /// Calls `f(filter, value)` once for every stored filter that matches the
    /// topic name `topic` (MQTT rules, see [`crate::topic::matches`]), in no
    /// particular order. Does not allocate unless more than 16 `+` branches
    /// are pending at once.
    pub fn match_each<'a, F: FnMut(&'a str, &'a V)>(&'a self, topic: &str, f: F) {
        self.walk(topic, f)
    }

    /// Collects the filters matching `topic` (convenience over
    /// [`match_each`](Self::match_each); allocates).
    pub fn matching_filters(&self, topic: &str) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(topic, |f, _| out.push(f));
        out
    }

    /// The matching walk behind `match_each`, with results borrowed for the
    /// trie's lifetime.
    fn walk<'a, F: FnMut(&'a str, &'a V)>(&'a self, topic: &str, mut f: F) {
        let root = &self.root;
        let (level, rest) = next_level(topic);
        // Root level: `#` and `+` do not match topics starting with '$'.
        if !topic.starts_with('$') {
            if let Some(h) = &root.hash {
                f(&h.filter, &h.value);
            }
        }
        let plus = if topic.starts_with('$') {
            None
        } else {
            root.plus.as_deref()
        };
        let lit = root.lits.get(level);

        // Work items are (node reached, remaining levels after that node).
        let mut work: WorkList<(&'a Node<V>, Option<&str>), 16> = WorkList::new((root, None));
        let mut cur = match (lit, plus) {
            (Some(l), Some(p)) => {
                work.push((p, rest));
                Some((l, rest))
            }
            (Some(n), None) | (None, Some(n)) => Some((n, rest)),
            (None, None) => None,
        };
        while let Some((node, rest)) = cur.take().or_else(|| work.pop()) {
            // `#` here matches the parent level and every deeper level.
            if let Some(h) = &node.hash {
                f(&h.filter, &h.value);
            }
            match rest {
                None => {
                    if let Some(e) = &node.entry {
                        f(&e.filter, &e.value);
                    }
                }
                Some(rest) => {
                    let (level, rest) = next_level(rest);
                    let lit = node.lits.get(level);
                    match (lit, node.plus.as_deref()) {
                        (Some(l), Some(p)) => {
                            work.push((p, rest));
                            cur = Some((l, rest));
                        }
                        (Some(n), None) | (None, Some(n)) => cur = Some((n, rest)),
                        (None, None) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use std::collections::BTreeSet;

    fn matched<V>(trie: &TopicTrie<V>, topic: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut calls = 0;
        trie.match_each(topic, |f, _| {
            calls += 1;
            out.insert(f.to_string());
        });
        assert_eq!(
            calls,
            out.len(),
            "a filter was reported twice for {topic:?}"
        );
        out
    }

    fn brute(filters: &[&str], topic: &str) -> BTreeSet<String> {
        filters
            .iter()
            .filter(|f| matches(f, topic))
            .map(|f| f.to_string())
            .collect()
    }

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "/+",
        "/#",
        "+/#",
        "sport",
        "sport/#",
        "sport/+",
        "sport/tennis/player1/#",
        "sport/tennis/+",
        "sport/tennis/player1",
        "sport/+/player1",
        "+/tennis/#",
        "+/monitor/Clients",
        "$SYS/#",
        "$SYS/monitor/+",
        "$SYS",
        "a//b",
        "a/+/b",
        "a/",
        "a/#",
        "a",
        "",
        "/",
        "+/+/+",
        "a/b/c/d/e",
        "a/+/+/+/#",
    ];

    const TOPICS: &[&str] = &[
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "/finance",
        "finance",
        "$SYS",
        "$SYS/x",
        "$SYS/monitor/Clients",
        "a//b",
        "a/x/b",
        "a/",
        "a",
        "/",
        "//",
        "",
        "a/b/c/d/e",
        "a/b/c/d/e/f",
        "x/monitor/Clients",
    ];

    #[test]
    fn empty_trie() {
        let trie: TopicTrie<u32> = TopicTrie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.get("a"), None);
        assert_eq!(trie.node_count(), 0);
        assert!(matched(&trie, "a/b").is_empty());
        assert_eq!(format!("{trie:?}"), "TopicTrie { len: 0, .. }");
    }

    #[test]
    fn insert_get_replace_remove() {
        let mut trie = TopicTrie::new();
        assert_eq!(trie.insert("a/b", 1), None);
        assert_eq!(trie.insert("a/+", 2), None);
        assert_eq!(trie.insert("a/#", 3), None);
        assert_eq!(trie.insert("a", 4), None);
        assert_eq!(trie.len(), 4);
        assert_eq!(trie.get("a/b"), Some(&1));
        assert_eq!(trie.get("a/+"), Some(&2));
        assert_eq!(trie.get("a/#"), Some(&3));
        assert_eq!(trie.get("a"), Some(&4));
        // Exact lookups, no wildcard semantics.
        assert_eq!(trie.get("a/c"), None);
        assert_eq!(trie.get("a/b/c"), None);
        assert_eq!(trie.get("#"), None);
        assert_eq!(trie.get("+"), None);
        assert!(trie.contains("a/#"));
        assert!(!trie.contains("a/b/#"));

        assert_eq!(trie.insert("a/b", 10), Some(1));
        assert_eq!(trie.len(), 4);
        assert_eq!(trie.get("a/b"), Some(&10));
        *trie.get_mut("a/+").unwrap() += 100;
        assert_eq!(trie.get("a/+"), Some(&102));
        assert_eq!(trie.get_mut("zzz"), None);

        assert_eq!(trie.remove("a/c"), None);
        assert_eq!(trie.remove("a/b/c"), None);
        assert_eq!(trie.remove("a/b"), Some(10));
        assert_eq!(trie.remove("a/b"), None);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.get("a/+"), Some(&102));
        assert_eq!(trie.remove("a"), Some(4));
        assert_eq!(trie.get("a/#"), Some(&3));
        assert_eq!(trie.remove("a/#"), Some(3));
        assert_eq!(trie.remove("a/+"), Some(102));
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn empty_levels_are_distinct() {
        let mut trie = TopicTrie::new();
        for (i, f) in ["a//b", "a/b", "/a", "a/", "a", "", "/", "//"]
            .iter()
            .enumerate()
        {
            assert_eq!(trie.insert(f, i), None, "{f:?}");
        }
        assert_eq!(trie.len(), 8);
        for (i, f) in ["a//b", "a/b", "/a", "a/", "a", "", "/", "//"]
            .iter()
            .enumerate()
        {
            assert_eq!(trie.get(f), Some(&i), "{f:?}");
        }
        assert_eq!(matched(&trie, "a//b"), BTreeSet::from(["a//b".to_string()]));
        assert_eq!(matched(&trie, "/"), BTreeSet::from(["/".to_string()]));
    }

    #[test]
    fn remove_prunes_everything() {
        let mut trie = TopicTrie::new();
        for (i, f) in FILTERS.iter().enumerate() {
            trie.insert(f, i);
        }
        for i in 0..500 {
            trie.insert(&format!("device/{i}/+/status"), i);
            trie.insert(&format!("site/{}/#", i % 7), i);
        }
        assert!(trie.node_count() > 1000);
        let n = trie.len();
        assert_eq!(n, FILTERS.len() + 500 + 7);
        for (i, f) in FILTERS.iter().enumerate().rev() {
            assert_eq!(trie.remove(f), Some(i), "{f:?}");
        }
        for i in 0..500 {
            assert_eq!(trie.remove(&format!("device/{i}/+/status")), Some(i));
        }
        for i in 0..7 {
            assert!(trie.remove(&format!("site/{i}/#")).is_some());
        }
        assert_eq!(trie.len(), 0);
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 0);
        assert!(trie.root.is_empty());
    }

    #[test]
    fn node_count_tracks_shape() {
        let mut trie = TopicTrie::new();
        trie.insert("a/b/c", ());
        assert_eq!(trie.node_count(), 3);
        trie.insert("a/b/#", ());
        assert_eq!(trie.node_count(), 4);
        trie.insert("a/+/c", ());
        assert_eq!(trie.node_count(), 6);
        trie.remove("a/b/c");
        assert_eq!(trie.node_count(), 5); // c under b pruned, b kept for '#'
        trie.remove("a/b/#");
        assert_eq!(trie.node_count(), 3);
        trie.remove("a/+/c");
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn many_children_collapse_back() {
        let mut trie = TopicTrie::new();
        for i in 0..1000 {
            trie.insert(&format!("x/{i}"), i);
        }
        for i in 1..1000 {
            assert_eq!(trie.remove(&format!("x/{i}")), Some(i));
        }
        assert_eq!(trie.node_count(), 2);
        assert_eq!(trie.get("x/0"), Some(&0));
        assert_eq!(matched(&trie, "x/0"), BTreeSet::from(["x/0".to_string()]));
        // Representation went back to the single-child form.
        let x = trie.root.lits.get("x").unwrap();
        assert!(matches!(x.lits, Lits::One(_)));
    }

    #[test]
    fn spec_examples_through_trie() {
        let mut trie = TopicTrie::new();
        for f in FILTERS {
            trie.insert(f, ());
        }
        let m = matched(&trie, "sport/tennis/player1");
        assert!(m.contains("sport/tennis/player1/#"));
        assert!(m.contains("sport/#"));
        assert!(m.contains("sport/tennis/+"));
        assert!(m.contains("#"));
        let m = matched(&trie, "sport");
        assert!(m.contains("sport/#"));
        assert!(m.contains("sport"));
        assert!(!m.contains("sport/+"));
        let m = matched(&trie, "/finance");
        assert!(!m.contains("+"));
        assert!(m.contains("+/+"));
        assert!(m.contains("/+"));
        let m = matched(&trie, "$SYS/x");
        assert_eq!(m, BTreeSet::from(["$SYS/#".to_string()]));
        let m = matched(&trie, "$SYS/monitor/Clients");
        assert!(!m.contains("+/monitor/Clients"));
        assert!(!m.contains("+/+/+"));
        assert!(m.contains("$SYS/monitor/+"));
        assert!(m.contains("$SYS/#"));
        let m = matched(&trie, "$SYS");
        assert_eq!(
            m,
            BTreeSet::from(["$SYS".to_string(), "$SYS/#".to_string()])
        );
    }

    #[test]
    fn match_each_equals_brute_force() {
        let mut trie = TopicTrie::new();
        for (i, f) in FILTERS.iter().enumerate() {
            trie.insert(f, i);
        }
        for t in TOPICS {
            assert_eq!(matched(&trie, t), brute(FILTERS, t), "topic {t:?}");
            let mut v: Vec<&str> = trie.matching_filters(t);
            v.sort_unstable();
            let b: Vec<String> = brute(FILTERS, t).into_iter().collect();
            assert_eq!(v, b, "topic {t:?}");
        }
    }

    #[test]
    fn match_each_passes_stored_value() {
        let mut trie = TopicTrie::new();
        trie.insert("a/+", "plus");
        trie.insert("a/#", "hash");
        trie.insert("a/b", "exact");
        let mut got = Vec::new();
        trie.match_each("a/b", |f, v| got.push((f.to_string(), *v)));
        got.sort();
        assert_eq!(
            got,
            [
                ("a/#".to_string(), "hash"),
                ("a/+".to_string(), "plus"),
                ("a/b".to_string(), "exact")
            ]
        );
    }

    #[test]
    fn invalid_filters_are_literal_and_never_match() {
        let mut trie = TopicTrie::new();
        trie.insert("a/#/b", 1);
        trie.insert("a/b+", 2);
        assert_eq!(trie.get("a/#/b"), Some(&1));
        assert_eq!(trie.get("a/b+"), Some(&2));
        assert!(matched(&trie, "a/x/b").is_empty());
        assert!(matched(&trie, "a/b").is_empty());
        assert_eq!(trie.remove("a/#/b"), Some(1));
        assert_eq!(trie.remove("a/b+"), Some(2));
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn many_pending_plus_branches_spill() {
        // 20 levels, each with a literal and a '+' path: more than 16 pending
        // branches at once.
        let mut trie = TopicTrie::new();
        let mut filters = Vec::new();
        for mask in 0u32..(1 << 10) {
            let f: Vec<&str> = (0..10)
                .map(|i| if mask & (1 << i) != 0 { "+" } else { "x" })
                .collect();
            filters.push(f.join("/"));
        }
        let deep = ["+"; 20].join("/");
        filters.push(deep.clone());
        filters.push(["x"; 20].join("/"));
        for f in &filters {
            trie.insert(f, ());
        }
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        let t10 = ["x"; 10].join("/");
        assert_eq!(matched(&trie, &t10).len(), 1 << 10);
        assert_eq!(matched(&trie, &t10), brute(&refs, &t10));
        let t20 = ["x"; 20].join("/");
        assert_eq!(matched(&trie, &t20), brute(&refs, &t20));
        assert_eq!(matched(&trie, &t20).len(), 2);
    }

    #[test]
    fn large_fanout_matches() {
        let mut trie = TopicTrie::new();
        for i in 0..10_000 {
            trie.insert(&format!("device/{i}/+/status"), i);
            trie.insert(&format!("a/+/c/{i}"), i);
        }
        trie.insert("device/#", usize::MAX);
        let m = matched(&trie, "device/42/x/status");
        assert_eq!(
            m,
            BTreeSet::from(["device/42/+/status".to_string(), "device/#".to_string()])
        );
        let m = matched(&trie, "a/zz/c/9999");
        assert_eq!(m, BTreeSet::from(["a/+/c/9999".to_string()]));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn node_layout_is_compact() {
        // Documented in the module header; keep it honest.
        assert_eq!(std::mem::size_of::<Node<u64>>(), 40);
        assert_eq!(std::mem::size_of::<Node<[u8; 256]>>(), 40);
        assert_eq!(std::mem::size_of::<LevelHasher>(), 0);
    }

    #[test]
    fn trie_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TopicTrie<u64>>();
        assert_send_sync::<TopicTrie<String>>();
        assert_send_sync::<TopicTrie<std::sync::Arc<str>>>();
    }
}
