//! `TopicTrie::match_each` benchmarks.
//!
//! * `wildcard_1m`: 1,000,000 distinct wildcard filters of realistic shapes
//!   plus a handful that match the probe topic;
//! * `wildcard_10k`: the same generator with 10,000 filters;
//! * `exact_1m`: 1,000,000 wildcard-free filters, exact topic lookup.
//!
//! Tries are built lazily, once, outside the timed loop. The build also
//! reports the heap bytes per filter (counted by a wrapping global
//! allocator: requested bytes, not counting malloc's own overhead).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use emqx_mqtt::topic::matches;
use emqx_mqtt::trie::TopicTrie;

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Filter number `i` of the wildcard workload; all distinct.
fn wildcard_filter(i: usize) -> String {
    match i % 4 {
        0 => format!("device/{i}/+/status"),
        1 => format!("site/{}/{i}/#", i % 1000),
        2 => format!("a/+/c/{i}"),
        _ => format!("+/{i}/event/#"),
    }
}

/// Filters that match [`WILDCARD_TOPIC`] in addition to the generated ones.
const EXTRA: &[&str] = &["site/#", "site/+/1001/#", "site/1/+/alarm/+", "#", "$SYS/#"];

/// Matches `site/1/1001/#` from the generator plus four of [`EXTRA`].
const WILDCARD_TOPIC: &str = "site/1/1001/alarm/high";

fn build_wildcard(n: usize) -> TopicTrie<u64> {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut trie = TopicTrie::new();
    for i in 0..n {
        trie.insert(&wildcard_filter(i), i as u64);
    }
    for (i, f) in EXTRA.iter().enumerate() {
        trie.insert(f, i as u64);
    }
    let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    eprintln!(
        "wildcard trie: {} filters, {} nodes, built in {:?}, {:.0} heap bytes/filter",
        trie.len(),
        trie.node_count(),
        start.elapsed(),
        bytes as f64 / trie.len() as f64
    );
    check(&trie, WILDCARD_TOPIC, n);
    trie
}

fn build_exact(n: usize) -> TopicTrie<u64> {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut trie = TopicTrie::new();
    for i in 0..n {
        trie.insert(
            &format!("tenant/{}/device/{i}/telemetry", i % 100),
            i as u64,
        );
    }
    let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    eprintln!(
        "exact trie: {} filters, {} nodes, built in {:?}, {:.0} heap bytes/filter",
        trie.len(),
        trie.node_count(),
        start.elapsed(),
        bytes as f64 / trie.len() as f64
    );
    trie
}

/// Sanity check outside the timed loop: the probe matches a handful, and the
/// result agrees with brute force on the small trie.
fn check(trie: &TopicTrie<u64>, topic: &str, n: usize) {
    let mut got = Vec::new();
    trie.match_each(topic, |f, _| got.push(f.to_string()));
    assert!(
        (3..=10).contains(&got.len()),
        "probe should match a handful, got {got:?}"
    );
    if n <= 10_000 {
        let mut want: Vec<String> = (0..n)
            .map(wildcard_filter)
            .chain(EXTRA.iter().map(|s| s.to_string()))
            .filter(|f| matches(f, topic))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }
}

fn wildcard_1m() -> &'static TopicTrie<u64> {
    static T: OnceLock<TopicTrie<u64>> = OnceLock::new();
    T.get_or_init(|| build_wildcard(1_000_000))
}

fn wildcard_10k() -> &'static TopicTrie<u64> {
    static T: OnceLock<TopicTrie<u64>> = OnceLock::new();
    T.get_or_init(|| build_wildcard(10_000))
}

fn exact_1m() -> &'static TopicTrie<u64> {
    static T: OnceLock<TopicTrie<u64>> = OnceLock::new();
    T.get_or_init(|| build_exact(1_000_000))
}

fn bench_match(c: &mut Criterion, name: &str, trie: fn() -> &'static TopicTrie<u64>, topic: &str) {
    c.bench_function(name, |b| {
        let trie = trie();
        b.iter(|| {
            let mut hits = 0u64;
            trie.match_each(black_box(topic), |_, v| hits = hits.wrapping_add(*v));
            black_box(hits)
        })
    });
}

fn benches(c: &mut Criterion) {
    bench_match(c, "match_each/wildcard_10k", wildcard_10k, WILDCARD_TOPIC);
    bench_match(c, "match_each/wildcard_1m", wildcard_1m, WILDCARD_TOPIC);
    bench_match(
        c,
        "match_each/wildcard_1m_device",
        wildcard_1m,
        "device/4000/temp/status",
    );
    bench_match(
        c,
        "match_each/wildcard_1m_miss",
        wildcard_1m,
        "nothing/here/at/all",
    );
    bench_match(
        c,
        "match_each/exact_1m",
        exact_1m,
        "tenant/42/device/123442/telemetry",
    );
}

criterion_group!(topic_match, benches);
criterion_main!(topic_match);
