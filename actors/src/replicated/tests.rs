use super::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn mem(node: &str) -> (ReplTables, mpsc::UnboundedReceiver<TableOps>) {
    ReplTables::open(node, None, &["users", "banned"]).expect("open")
}

fn rows(t: &ReplTables) -> Vec<Entry> {
    let mut v: Vec<Entry> = t.snapshot().into_iter().flat_map(|o| o.entries).collect();
    v.sort_by(|a, b| (&a.key, a.ms).cmp(&(&b.key, b.ms)));
    v
}

#[test]
fn a_write_after_a_received_one_wins_even_with_a_slow_clock() {
    let (a, mut arx) = mem("a@h");
    let (b, _brx) = mem("b@h");
    a.write_at("users", "u", Some(b"1".to_vec()), 10_000)
        .expect("write");
    let ops = arx.try_recv().expect("sent");
    b.merge(&ops).expect("merge");
    // b's clock is 5 s behind, yet its later write wins everywhere.
    b.write_at("users", "u", Some(b"2".to_vec()), 5_000)
        .expect("write");
    let snap = b.snapshot();
    for o in &snap {
        a.merge(o).expect("merge");
    }
    assert_eq!(
        a.table("users").and_then(|t| t.get("u")),
        Some(b"2".to_vec())
    );
    assert_eq!(
        b.table("users").and_then(|t| t.get("u")),
        Some(b"2".to_vec())
    );
}

#[test]
fn deletes_win_over_older_values_and_bootstrap_entries() {
    let (a, _rx) = mem("a@h");
    a.seed("users", "boot", b"x".to_vec()).expect("seed");
    a.write_at("users", "boot", None, 1).expect("delete");
    // The bootstrap file read again (a restart) does not bring it back.
    a.seed("users", "boot", b"x".to_vec()).expect("seed");
    assert_eq!(a.table("users").map(|t| t.len()), Some(0));
    // An old value arriving late loses to the tombstone.
    let late = TableOps {
        table: "users".into(),
        entries: vec![Entry {
            key: "boot".into(),
            value: Some(b"old".to_vec()),
            ms: 0,
            node: "z@h".into(),
        }],
    };
    assert_eq!(a.merge(&late).expect("merge"), 0);
    assert!(a.table("users").and_then(|t| t.get("boot")).is_none());
    assert!(matches!(
        a.write("nope", "k", None),
        Err(TableError::Unknown(_))
    ));
}

#[test]
fn a_join_takes_the_clusters_tables_with_the_bootstrap_under_them() {
    let (a, _arx) = mem("a@h");
    let (b, _brx) = mem("b@h");
    a.seed("users", "boot", b"a".to_vec()).expect("seed");
    a.write_at("users", "mine", Some(b"1".to_vec()), 100)
        .expect("write");
    b.write_at("users", "theirs", Some(b"2".to_vec()), 200)
        .expect("write");
    b.write_at("users", "boot", None, 300).expect("delete");
    a.replace_all(b.snapshot()).expect("replace");
    let users = a.table("users").expect("table");
    assert_eq!(
        users.get("mine"),
        None,
        "a joining node's own rows are dropped"
    );
    assert_eq!(users.get("theirs"), Some(b"2".to_vec()));
    assert_eq!(
        users.get("boot"),
        None,
        "the cluster's delete wins over the bootstrap"
    );
    // A bootstrap row the cluster never touched comes back under it.
    let (c, _crx) = mem("c@h");
    c.seed("users", "cboot", b"c".to_vec()).expect("seed");
    c.replace_all(b.snapshot()).expect("replace");
    assert_eq!(
        c.table("users").and_then(|t| t.get("cboot")),
        Some(b"c".to_vec())
    );
}

#[test]
fn tables_survive_a_reopen() {
    let dir = std::env::temp_dir().join(format!("emqx-repl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    {
        let (t, _rx) = ReplTables::open("a@h", Some(&dir), &["users"]).expect("open");
        t.write_at("users", "u1", Some(b"v1".to_vec()), 1_000)
            .expect("write");
        t.write_at("users", "u2", Some(b"v2".to_vec()), 1_001)
            .expect("write");
        t.write_at("users", "u2", None, 1_002).expect("delete");
    }
    let (t, _rx) = ReplTables::open("a@h", Some(&dir), &["users"]).expect("reopen");
    let users = t.table("users").expect("table");
    assert_eq!(users.get("u1"), Some(b"v1".to_vec()));
    assert_eq!(users.get("u2"), None);
    // The clock goes on after the largest stamp stored.
    t.write_at("users", "u1", Some(b"v3".to_vec()), 5)
        .expect("write");
    let e = rows(&t).into_iter().find(|e| e.key == "u1").expect("row");
    assert!(e.ms > 1_002, "stamp {} after reopen", e.ms);
    // A join replaces what is stored, too.
    t.replace_all(Vec::new()).expect("replace");
    drop(t);
    let (t, _rx) = ReplTables::open("a@h", Some(&dir), &["users"]).expect("reopen");
    assert_eq!(t.table("users").map(|t| t.len()), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A seeded simulated network: nodes write at random with skewed clocks,
/// messages are delayed, reordered, duplicated and lost while the network
/// is split; after it heals and every pair has exchanged full tables, all
/// nodes hold the same table, and each key holds the value of the write
/// with the largest stamp.
#[test]
fn nodes_converge_under_loss_reordering_and_partitions() {
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(2..=5);
        let mut nodes: Vec<(ReplTables, mpsc::UnboundedReceiver<TableOps>)> =
            (0..n).map(|i| mem(&format!("n{i}@h"))).collect();
        let skew: Vec<i64> = (0..n).map(|_| rng.random_range(-3_000..3_000)).collect();
        // side[i]: which half of a split node i is in (all 0: no split).
        let mut side = vec![0u8; n];
        // (from, to, ops)
        let mut wire: Vec<(usize, usize, TableOps)> = Vec::new();
        let mut issued: Vec<Entry> = Vec::new();
        let keys = ["k1", "k2", "k3", "k4"];
        for step in 0..400u64 {
            let t = 10_000 + step * 7;
            match rng.random_range(0..10) {
                0 => {
                    // Split or heal; a heal pushes full tables both ways.
                    let healing = side.iter().any(|s| *s != 0);
                    if healing {
                        side.iter_mut().for_each(|s| *s = 0);
                        for (i, (a, _)) in nodes.iter().enumerate() {
                            for j in 0..n {
                                if i != j {
                                    for o in a.snapshot() {
                                        wire.push((i, j, o));
                                    }
                                }
                            }
                        }
                    } else {
                        side.iter_mut().for_each(|s| *s = rng.random_range(0..2));
                    }
                }
                1..=4 => {
                    let i = rng.random_range(0..n);
                    let key = keys[rng.random_range(0..keys.len())];
                    let value = if rng.random_bool(0.2) {
                        None
                    } else {
                        Some(format!("{i}:{step}").into_bytes())
                    };
                    let now = (t as i64 + skew[i]) as u64;
                    let _ = nodes[i].0.write_at("users", key, value, now);
                }
                _ => {
                    // Deliver, drop or duplicate one message.
                    if !wire.is_empty() {
                        let k = rng.random_range(0..wire.len());
                        let (from, to, ops) = wire.swap_remove(k);
                        // Lost across the split, or lost anyway (10%).
                        if side[from] == side[to] && !rng.random_bool(0.1) {
                            let _ = nodes[to].0.merge(&ops);
                            if rng.random_bool(0.1) {
                                wire.push((from, to, ops));
                            }
                        }
                    }
                }
            }
            // Writes go out as broadcasts.
            for (i, (_, rx)) in nodes.iter_mut().enumerate() {
                while let Ok(ops) = rx.try_recv() {
                    issued.extend(ops.entries.iter().cloned());
                    for j in 0..n {
                        if j != i {
                            wire.push((i, j, ops.clone()));
                        }
                    }
                }
            }
        }
        // Heal for good: every pair exchanges full tables.
        for (i, (a, _)) in nodes.iter().enumerate() {
            for (j, (b, _)) in nodes.iter().enumerate() {
                if i != j {
                    for o in a.snapshot() {
                        b.merge(&o).expect("merge");
                    }
                }
            }
        }
        let first = rows(&nodes[0].0);
        for (a, _) in &nodes[1..] {
            assert_eq!(rows(a), first, "seed {seed}: nodes disagree");
        }
        for key in keys {
            let want = issued
                .iter()
                .filter(|e| e.key == key)
                .max_by(|x, y| (x.ms, &x.node, &x.value).cmp(&(y.ms, &y.node, &y.value)));
            let got = first.iter().find(|e| e.key == key);
            assert_eq!(got, want, "seed {seed}: key {key}");
        }
        // Stamps issued by one node only grow.
        for (a, _) in &nodes {
            let mine: Vec<u64> = issued
                .iter()
                .filter(|e| e.node == a.node)
                .map(|e| e.ms)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "seed {seed}: stamps of {}",
                a.node
            );
        }
    }
}
