//! Route replication under a seeded, simulated network.
//!
//! N nodes each change their own routes at random and send the changes to
//! every peer as numbered batches; the network delays, reorders, drops and
//! duplicates them, and links go down and come back. A node that sees a gap
//! (or a heartbeat with a newer version) asks the origin for the changes
//! since its version, answered from the origin's bounded log or by a
//! snapshot. After the network heals and a final round of heartbeats, every
//! node must hold exactly every origin's routes. A failing seed is printed
//! so it can be replayed with `ROUTE_SIM_SEED`.

use emqx_actors::cluster::routes::{ClusterRoutes, LocalRouteLog, RouteKey, RouteOp};
mod simnet;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use simnet::key;
use std::collections::{BTreeSet, VecDeque};

#[derive(Debug, Clone)]
enum Msg {
    Batch {
        origin: usize,
        base: u64,
        ops: Vec<RouteOp>,
    },
    Heartbeat {
        origin: usize,
        version: u64,
    },
    Ask {
        from: usize,
        since: u64,
    },
    Delta {
        origin: usize,
        base: u64,
        ops: Vec<RouteOp>,
    },
    Snapshot {
        origin: usize,
        version: u64,
        keys: Vec<RouteKey>,
    },
}

struct Node {
    local: LocalRouteLog,
    remote: ClusterRoutes,
}

struct Net {
    queue: VecDeque<(u64, usize, usize, Msg)>,
    now: u64,
    up: Vec<Vec<bool>>,
}

impl Net {
    fn send(&mut self, rng: &mut StdRng, from: usize, to: usize, m: Msg, lossy: bool) {
        if !self.up[from][to] || (lossy && rng.random_bool(0.1)) {
            return;
        }
        let copies = if lossy && rng.random_bool(0.05) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now + rng.random_range(1..20);
            self.queue.push_back((at, from, to, m.clone()));
        }
    }

    fn next(&mut self, rng: &mut StdRng) -> Option<(usize, usize, Msg)> {
        if self.queue.is_empty() {
            return None;
        }
        // Deliver something due, not always the oldest: reordering.
        let i = rng.random_range(0..self.queue.len().min(4));
        let (at, f, t, m) = self.queue.remove(i)?;
        self.now = self.now.max(at);
        Some((f, t, m))
    }
}

fn handle(
    nodes: &mut [Node],
    net: &mut Net,
    rng: &mut StdRng,
    from: usize,
    to: usize,
    m: Msg,
    lossy: bool,
) {
    let origin_name = |o: usize| format!("n{o}@h");
    match m {
        Msg::Batch { origin, base, ops } | Msg::Delta { origin, base, ops } => {
            let r = nodes[to].remote.apply(&origin_name(origin), base, &ops);
            if let Err(gap) = r {
                net.send(
                    rng,
                    to,
                    origin,
                    Msg::Ask {
                        from: to,
                        since: gap.have,
                    },
                    lossy,
                );
            }
        }
        Msg::Heartbeat { origin, version } => {
            let have = nodes[to].remote.version(&origin_name(origin));
            if have != version {
                net.send(
                    rng,
                    to,
                    origin,
                    Msg::Ask {
                        from: to,
                        since: have,
                    },
                    lossy,
                );
            }
        }
        Msg::Ask { from: asker, since } => {
            let me = to;
            let reply = match nodes[me].local.since(since) {
                Some(ops) => Msg::Delta {
                    origin: me,
                    base: since,
                    ops,
                },
                None => {
                    let (version, keys) = nodes[me].local.snapshot();
                    Msg::Snapshot {
                        origin: me,
                        version,
                        keys,
                    }
                }
            };
            let _ = from;
            net.send(rng, me, asker, reply, lossy);
        }
        Msg::Snapshot {
            origin,
            version,
            keys,
        } => {
            let name = origin_name(origin);
            if nodes[to].remote.version(&name) < version {
                nodes[to].remote.replace(&name, version, keys);
            }
        }
    }
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(3..=7);
    let mut nodes: Vec<Node> = (0..n)
        .map(|_| Node {
            local: LocalRouteLog::new(rng.random_range(2..40)),
            remote: ClusterRoutes::new(),
        })
        .collect();
    let mut net = Net {
        queue: VecDeque::new(),
        now: 0,
        up: vec![vec![true; n]; n],
    };
    for step in 0..400 {
        net.now += 1;
        match rng.random_range(0..10) {
            0..=4 => {
                let o = rng.random_range(0..n);
                let k = key(rng.random_range(0..60));
                let op = if nodes[o].local.keys.contains(&k) {
                    RouteOp::Del(k)
                } else {
                    RouteOp::Add(k)
                };
                if let Some(v) = nodes[o].local.record(op.clone()) {
                    for p in (0..n).filter(|p| *p != o) {
                        net.send(
                            &mut rng,
                            o,
                            p,
                            Msg::Batch {
                                origin: o,
                                base: v - 1,
                                ops: vec![op.clone()],
                            },
                            true,
                        );
                    }
                }
            }
            5 => {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                if a != b {
                    let v = !net.up[a][b];
                    net.up[a][b] = v;
                    net.up[b][a] = v;
                }
            }
            6 => {
                let o = rng.random_range(0..n);
                let version = nodes[o].local.version;
                for p in (0..n).filter(|p| *p != o) {
                    net.send(&mut rng, o, p, Msg::Heartbeat { origin: o, version }, true);
                }
            }
            _ => {
                for _ in 0..rng.random_range(1..6) {
                    if let Some((f, t, m)) = net.next(&mut rng) {
                        handle(&mut nodes, &mut net, &mut rng, f, t, m, true);
                    }
                }
            }
        }
        let _ = step;
    }
    // Heal: every link up, nothing lost any more; heartbeats until quiet.
    net.up = vec![vec![true; n]; n];
    for _round in 0..4 {
        let versions: Vec<u64> = nodes.iter().map(|x| x.local.version).collect();
        for (o, &version) in versions.iter().enumerate() {
            for p in (0..n).filter(|p| *p != o) {
                net.send(&mut rng, o, p, Msg::Heartbeat { origin: o, version }, false);
            }
        }
        let mut guard = 0;
        while let Some((f, t, m)) = net.next(&mut rng) {
            handle(&mut nodes, &mut net, &mut rng, f, t, m, false);
            guard += 1;
            if guard > 100_000 {
                return Err("the network never went quiet".into());
            }
        }
    }
    for o in 0..n {
        let want: BTreeSet<RouteKey> = nodes[o].local.keys.clone();
        for p in (0..n).filter(|p| *p != o) {
            let name = format!("n{o}@h");
            let got: BTreeSet<RouteKey> = nodes[p].remote.keys_of(&name).into_iter().collect();
            if got != want {
                return Err(format!(
                    "node {p} holds {} routes of node {o}, which has {}",
                    got.len(),
                    want.len()
                ));
            }
            if nodes[p].remote.version(&name) != nodes[o].local.version {
                return Err(format!(
                    "node {p} is at version {} of node {o}, which is at {}",
                    nodes[p].remote.version(&name),
                    nodes[o].local.version
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn replicas_converge_after_random_loss_reordering_duplication_and_partitions() {
    simnet::check_seeds("ROUTE_SIM_SEED", 300, run);
}
