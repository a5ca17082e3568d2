//! Property tests for `TopicTrie` against brute force `topic::matches` and a
//! `HashMap` model.

use std::collections::{BTreeSet, HashMap};

use emqx_mqtt::topic::{matches, validate_topic_filter, validate_topic_name};
use emqx_mqtt::trie::TopicTrie;
use proptest::prelude::*;

/// Literal levels of filters and topics; `""` exercises empty levels.
fn literal() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just(""), Just("c")]
}

fn filter_level() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => literal(), 1 => Just("+")]
}

/// Random valid filters: optional `$sys` first level, 0..5 levels of
/// literals / `+`, optional trailing `#`.
fn filter() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(filter_level(), 0..5),
        any::<bool>(),
    )
        .prop_filter_map("empty filter", |(sys, levels, hash)| {
            let mut v: Vec<&str> = Vec::new();
            if sys {
                v.push("$sys");
            }
            v.extend(levels);
            if hash {
                v.push("#");
            }
            if v.is_empty() {
                return None;
            }
            let f = v.join("/");
            // "" (a single empty level) is not a valid filter.
            (!f.is_empty()).then_some(f)
        })
}

/// Random topic names over the same alphabet, optionally starting with
/// `$sys`, 1..6 levels.
fn topic() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(literal(), 1..6)).prop_filter_map(
        "empty topic",
        |(sys, levels)| {
            let mut v: Vec<&str> = Vec::new();
            if sys {
                v.push("$sys");
            }
            v.extend(levels);
            let t = v.join("/");
            (!t.is_empty()).then_some(t)
        },
    )
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u32),
    Remove(String),
    GetMut(String, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filter(), any::<u32>()).prop_map(|(f, v)| Op::Insert(f, v)),
        2 => filter().prop_map(Op::Remove),
        1 => (filter(), any::<u32>()).prop_map(|(f, v)| Op::GetMut(f, v)),
    ]
}

fn trie_matches(trie: &TopicTrie<u32>, topic: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut calls = 0usize;
    trie.match_each(topic, |f, v| {
        calls += 1;
        assert_eq!(trie.get(f), Some(v), "value passed for {f:?}");
        out.insert(f.to_string());
    });
    assert_eq!(calls, out.len(), "duplicate report for {topic:?}");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn match_each_equals_brute_force(
        filters in prop::collection::vec(filter(), 0..40),
        topics in prop::collection::vec(topic(), 1..20),
    ) {
        let mut trie = TopicTrie::new();
        for (i, f) in filters.iter().enumerate() {
            prop_assert_eq!(validate_topic_filter(f, 16), Ok(()), "{:?}", f);
            trie.insert(f, i as u32);
        }
        let distinct: BTreeSet<&String> = filters.iter().collect();
        prop_assert_eq!(trie.len(), distinct.len());
        for t in &topics {
            prop_assert_eq!(validate_topic_name(t, 16), Ok(()), "{:?}", t);
            let expected: BTreeSet<String> = distinct
                .iter()
                .filter(|f| matches(f, t))
                .map(|f| f.to_string())
                .collect();
            prop_assert_eq!(trie_matches(&trie, t), expected, "topic {:?}", t);
        }
    }

    #[test]
    fn insert_remove_equals_hashmap_model(
        ops in prop::collection::vec(op(), 0..80),
        topics in prop::collection::vec(topic(), 1..8),
    ) {
        let mut trie = TopicTrie::new();
        let mut model: HashMap<String, u32> = HashMap::new();
        for op in &ops {
            match op {
                Op::Insert(f, v) => {
                    prop_assert_eq!(trie.insert(f, *v), model.insert(f.clone(), *v));
                }
                Op::Remove(f) => {
                    prop_assert_eq!(trie.remove(f), model.remove(f));
                }
                Op::GetMut(f, v) => {
                    let got = trie.get_mut(f).map(|x| {
                        *x = *v;
                        *x
                    });
                    let want = model.get_mut(f).map(|x| {
                        *x = *v;
                        *x
                    });
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(trie.len(), model.len());
            prop_assert_eq!(trie.is_empty(), model.is_empty());
        }
        for (f, v) in &model {
            prop_assert_eq!(trie.get(f), Some(v));
        }
        // Matching still agrees with brute force over the model's keys.
        for t in &topics {
            let expected: BTreeSet<String> =
                model.keys().filter(|f| matches(f, t)).cloned().collect();
            prop_assert_eq!(trie_matches(&trie, t), expected, "topic {:?}", t);
        }
        // Removing everything returns every node.
        let keys: Vec<String> = model.keys().cloned().collect();
        for f in &keys {
            prop_assert_eq!(trie.remove(f), model.remove(f));
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.len(), 0);
        prop_assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn get_is_exact_not_wildcard(filters in prop::collection::vec(filter(), 1..20), probe in filter()) {
        let mut trie = TopicTrie::new();
        for f in &filters {
            trie.insert(f, 0u32);
        }
        prop_assert_eq!(trie.get(&probe).is_some(), filters.contains(&probe));
    }
}
