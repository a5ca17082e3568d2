//! Routes in a cluster of cores and replicants under a seeded, simulated
//! network.
//!
//! Cores replicate their own routes among themselves as numbered batches
//! (as in `route_replication_sim`). A replicant talks to one core only: it
//! sends its route changes there (and its version every heartbeat, so what
//! was lost is asked for again), and follows that core's table through the
//! replication stream (`cluster::rlog`). The core that hosts a replicant
//! relays the replicant's changes to the other cores, names the replicant's
//! version in its heartbeats, and answers other cores' questions about it
//! from its copy.
//!
//! Links drop, duplicate and delay messages (in order per link), links
//! between any two nodes that talk are cut and restored, and a core is
//! isolated from everybody for a while. After the network heals, every
//! node must hold exactly every other node's routes, at its version,
//! whichever core each replicant ended up following. A failing seed is
//! printed so it can be replayed with `REPLICANT_SIM_SEED`.

use emqx_actors::cluster::rlog::{pick_core, Down, Event, Replica, Up, Upstream};
use emqx_actors::cluster::routes::{
    origin_rows, ClusterRoutes, LocalRouteLog, RouteChange, RouteKey, RouteOp, RouteRow,
};
mod simnet;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use simnet::{key, node_index as index, node_name as name, Net};
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Msg {
    /// Core to core: changes of `origin` (the sender's own, or relayed).
    Batch {
        origin: usize,
        base: u64,
        ops: Vec<RouteOp>,
    },
    /// Core to core: the sender's version and those of its replicants.
    Beat {
        versions: Vec<(usize, u64)>,
    },
    /// To whoever holds `origin`'s routes: what came after `since`.
    Ask {
        origin: usize,
        since: u64,
    },
    Delta {
        origin: usize,
        base: u64,
        ops: Vec<RouteOp>,
    },
    Snap {
        origin: usize,
        version: u64,
        keys: Vec<RouteKey>,
    },
    /// Replicant to its core.
    Sub(Up),
    Write {
        base: u64,
        ops: Vec<RouteOp>,
    },
    RBeat {
        version: u64,
    },
    /// Core to replicant.
    Down(Down<RouteChange, RouteRow>),
}

struct Core {
    local: LocalRouteLog,
    routes: ClusterRoutes,
    log: Upstream,
}

struct Rep {
    local: LocalRouteLog,
    replica: Replica<ClusterRoutes>,
    served: ClusterRoutes,
}

struct Sim {
    rng: StdRng,
    nc: usize,
    cores: Vec<Core>,
    reps: Vec<Rep>,
    net: Net<Msg>,
}

impl Sim {
    fn is_core(&self, n: usize) -> bool {
        n < self.nc
    }

    fn send(&mut self, from: usize, to: usize, m: Msg) {
        self.net.send(&mut self.rng, from, to, m);
    }

    /// Whether core `c` hosts node `o` (a replicant following it).
    fn hosts(&self, c: usize, o: usize) -> bool {
        let me = name(o);
        self.cores[c].log.followers().any(|(f, _)| f == me)
    }

    /// After core `c` changed its table: relay what changed of the
    /// replicants it hosts to the other cores, and stream every change to
    /// its followers.
    fn flush(&mut self, c: usize) {
        let changes = self.cores[c].routes.take_changes();
        for ch in &changes {
            let relay = match ch {
                RouteChange::Apply { origin, base, ops } => index(origin)
                    .filter(|o| self.hosts(c, *o))
                    .map(|o| Msg::Batch {
                        origin: o,
                        base: *base,
                        ops: ops.clone(),
                    }),
                RouteChange::Replace {
                    origin,
                    version,
                    keys,
                } => index(origin)
                    .filter(|o| self.hosts(c, *o))
                    .map(|o| Msg::Snap {
                        origin: o,
                        version: *version,
                        keys: keys.clone(),
                    }),
                RouteChange::Purge { .. } => None,
            };
            if let Some(m) = relay {
                for p in (0..self.nc).filter(|p| *p != c) {
                    self.send(c, p, m.clone());
                }
            }
        }
        self.stream(c, changes);
    }

    fn stream(&mut self, c: usize, changes: Vec<RouteChange>) {
        for (f, d) in self.cores[c].log.record::<RouteChange, RouteRow>(changes) {
            if let Some(r) = index(&f) {
                self.send(c, r, Msg::Down(d));
            }
        }
    }

    fn local_change(&mut self, n: usize) {
        let k = key(self.rng.random_range(0..60));
        let local = if self.is_core(n) {
            &mut self.cores[n].local
        } else {
            &mut self.reps[n - self.nc].local
        };
        let op = if local.keys.contains(&k) {
            RouteOp::Del(k)
        } else {
            RouteOp::Add(k)
        };
        let Some(v) = local.record(op.clone()) else {
            return;
        };
        if self.is_core(n) {
            for p in (0..self.nc).filter(|p| *p != n) {
                self.send(
                    n,
                    p,
                    Msg::Batch {
                        origin: n,
                        base: v - 1,
                        ops: vec![op.clone()],
                    },
                );
            }
            let own = RouteChange::Apply {
                origin: name(n),
                base: v - 1,
                ops: vec![op],
            };
            self.stream(n, vec![own]);
        } else if let Some(c) = self.reps[n - self.nc].replica.core().and_then(index) {
            self.send(
                n,
                c,
                Msg::Write {
                    base: v - 1,
                    ops: vec![op],
                },
            );
        }
    }

    /// Replicant `n` without a stream picks a core it can reach.
    fn resubscribe(&mut self, n: usize) {
        let r = n - self.nc;
        if self.reps[r].replica.stream().is_some() {
            return;
        }
        let names: Vec<String> = (0..self.nc).map(name).collect();
        let candidates: Vec<(&str, usize)> = (0..self.nc)
            .filter(|c| !self.net.is_cut(*c, n))
            .map(|c| (names[c].as_str(), self.cores[c].log.agents()))
            .collect();
        let rng = &mut self.rng;
        let Some(core) = pick_core(&candidates, || rng.random::<f64>()) else {
            return;
        };
        let core = core.to_string();
        let out = self.reps[r].replica.subscribe(&core);
        for (to, m) in out {
            if let Some(c) = index(&to) {
                self.send(n, c, Msg::Sub(m));
            }
        }
        // Tell the new core where our routes are.
        if let Some(c) = index(&core) {
            let version = self.reps[r].local.version;
            self.send(n, c, Msg::RBeat { version });
        }
    }

    fn answer_ask(&mut self, me: usize, to: usize, origin: usize, since: u64) {
        let reply = if origin == me {
            let local = if self.is_core(me) {
                &self.cores[me].local
            } else {
                &self.reps[me - self.nc].local
            };
            match local.since(since) {
                Some(ops) => Msg::Delta {
                    origin: me,
                    base: since,
                    ops,
                },
                None => {
                    let (version, keys) = local.snapshot();
                    Msg::Snap {
                        origin: me,
                        version,
                        keys,
                    }
                }
            }
        } else if self.is_core(me) {
            let routes = &self.cores[me].routes;
            let o = name(origin);
            if routes.version(&o) == 0 {
                return;
            }
            Msg::Snap {
                origin,
                version: routes.version(&o),
                keys: routes.keys_of(&o),
            }
        } else {
            return;
        };
        self.send(me, to, reply);
    }

    fn heartbeat(&mut self) {
        for c in 0..self.nc {
            let mut versions = vec![(c, self.cores[c].local.version)];
            let hosted: Vec<usize> = self.cores[c]
                .log
                .followers()
                .filter_map(|(f, _)| index(f))
                .collect();
            for o in hosted {
                versions.push((o, self.cores[c].routes.version(&name(o))));
            }
            for p in (0..self.nc).filter(|p| *p != c) {
                self.send(
                    c,
                    p,
                    Msg::Beat {
                        versions: versions.clone(),
                    },
                );
            }
            for (f, d) in self.cores[c].log.alive::<RouteChange, RouteRow>() {
                if let Some(r) = index(&f) {
                    self.send(c, r, Msg::Down(d));
                }
            }
        }
        for r in 0..self.reps.len() {
            let n = self.nc + r;
            if let Some(Event::Lost(_)) = self.reps[r].replica.tick() {
                self.resubscribe(n);
            }
            self.resubscribe(n);
            if let Some(c) = self.reps[r].replica.core().and_then(index) {
                let version = self.reps[r].local.version;
                self.send(n, c, Msg::RBeat { version });
            }
        }
    }

    fn deliver(&mut self) -> bool {
        let Some((from, to, m)) = self.net.next(&mut self.rng) else {
            return false;
        };
        if !self.is_core(to) {
            let r = to - self.nc;
            match m {
                Msg::Down(d) => {
                    let rep = &mut self.reps[r];
                    if let Some(Event::Lost(_)) = rep.replica.receive(d, &mut rep.served) {
                        self.resubscribe(to);
                    }
                }
                Msg::Ask { origin, since } => self.answer_ask(to, from, origin, since),
                other => panic!("a replicant got {other:?}"),
            }
            return true;
        }
        let c = to;
        match m {
            Msg::Batch { origin, base, ops } => {
                if let Err(gap) = self.cores[c].routes.apply(&name(origin), base, &ops) {
                    self.send(
                        c,
                        from,
                        Msg::Ask {
                            origin,
                            since: gap.have,
                        },
                    );
                }
            }
            Msg::Beat { versions } => {
                for (o, v) in versions {
                    let have = self.cores[c].routes.version(&name(o));
                    if o != c && have < v {
                        self.send(
                            c,
                            from,
                            Msg::Ask {
                                origin: o,
                                since: have,
                            },
                        );
                    }
                }
            }
            Msg::Ask { origin, since } => self.answer_ask(c, from, origin, since),
            Msg::Delta { origin, base, ops } => {
                let _ = self.cores[c].routes.apply(&name(origin), base, &ops);
            }
            Msg::Snap {
                origin,
                version,
                keys,
            } => {
                let o = name(origin);
                if origin != c && self.cores[c].routes.version(&o) < version {
                    self.cores[c].routes.replace(&o, version, keys);
                }
            }
            Msg::Sub(Up::Subscribe { stream }) => {
                let core = &mut self.cores[c];
                let mut rows = core.routes.rows(3);
                rows.extend(origin_rows(
                    &name(c),
                    core.local.version,
                    core.local.keys.iter(),
                    3,
                ));
                let parts = core.log.subscribe(&name(from), stream, rows);
                for p in parts {
                    self.send(c, from, Msg::Down(p));
                }
            }
            Msg::Sub(Up::Unsubscribe { stream }) => {
                self.cores[c].log.unsubscribe(&name(from), Some(stream));
            }
            Msg::Write { base, ops } => {
                if let Err(gap) = self.cores[c].routes.apply(&name(from), base, &ops) {
                    self.send(
                        c,
                        from,
                        Msg::Ask {
                            origin: from,
                            since: gap.have,
                        },
                    );
                }
            }
            Msg::RBeat { version } => {
                let have = self.cores[c].routes.version(&name(from));
                if have < version {
                    self.send(
                        c,
                        from,
                        Msg::Ask {
                            origin: from,
                            since: have,
                        },
                    );
                }
            }
            Msg::Down(_) => panic!("a core got a stream message"),
        }
        self.flush(c);
        true
    }

    /// Cuts or restores the link between `a` and `b`; the monitors of both
    /// notice a cut most of the time.
    fn set_cut(&mut self, a: usize, b: usize, cut: bool) {
        self.net.set_cut(a, b, cut);
        if !cut {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            if self.is_core(x) && !self.is_core(y) {
                self.cores[x].log.unsubscribe(&name(y), None);
            }
            if !self.is_core(x) && self.rng.random_bool(0.7) {
                if let Some(Event::Lost(_)) = self.reps[x - self.nc].replica.node_down(&name(y)) {
                    self.resubscribe(x);
                }
            }
        }
    }
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let nc = rng.random_range(2..=4);
    let nr = rng.random_range(1..=5);
    let n = nc + nr;
    let quiet_limit = rng.random_range(2..5);
    let cores = (0..nc)
        .map(|c| {
            let mut routes = ClusterRoutes::excluding(&name(c));
            routes.record_changes();
            Core {
                local: LocalRouteLog::new(rng.random_range(2..40)),
                routes,
                log: Upstream::new(rng.random_range(1..6)),
            }
        })
        .collect();
    let reps = (nc..n)
        .map(|i| {
            let me = name(i);
            Rep {
                local: LocalRouteLog::new(rng.random_range(2..40)),
                replica: Replica::new(rng.random::<u64>(), quiet_limit),
                served: ClusterRoutes::excluding(&me),
            }
        })
        .collect();
    let mut net = Net::new(n);
    // Replicants never talk to each other.
    for a in nc..n {
        for b in nc..n {
            net.set_cut(a, b, true);
        }
    }
    let mut sim = Sim {
        rng,
        nc,
        cores,
        reps,
        net,
    };
    for i in nc..n {
        sim.resubscribe(i);
    }
    let mut isolated: Option<usize> = None;
    for _step in 0..500 {
        sim.net.now += 1;
        match sim.rng.random_range(0..20) {
            0..=6 => {
                let i = sim.rng.random_range(0..n);
                sim.local_change(i);
            }
            7 | 8 => sim.heartbeat(),
            9 => {
                // Cut or restore a link between a core and anyone.
                let a = sim.rng.random_range(0..nc);
                let b = sim.rng.random_range(0..n);
                if a != b {
                    let c = !sim.net.is_cut(a, b);
                    sim.set_cut(a, b, c);
                }
            }
            10 => {
                // Isolate a core from everybody, or end an isolation.
                match isolated.take() {
                    Some(c) => {
                        for o in (0..n).filter(|o| *o != c) {
                            sim.set_cut(c, o, false);
                        }
                    }
                    None => {
                        let c = sim.rng.random_range(0..nc);
                        for o in (0..n).filter(|o| *o != c) {
                            sim.set_cut(c, o, true);
                        }
                        isolated = Some(c);
                    }
                }
            }
            _ => {
                for _ in 0..sim.rng.random_range(1..8) {
                    if !sim.deliver() {
                        break;
                    }
                }
            }
        }
    }
    // Heal: every link whole, nothing lost any more.
    sim.net.lossy = false;
    for a in 0..nc {
        for b in 0..n {
            if a != b {
                sim.net.set_cut(a, b, false);
            }
        }
    }
    for _round in 0..(quiet_limit as usize + 6) {
        sim.heartbeat();
        let mut guard = 0;
        while sim.deliver() {
            guard += 1;
            if guard > 200_000 {
                return Err("the network never went quiet".into());
            }
        }
    }
    for o in 0..n {
        let (want, version): (BTreeSet<RouteKey>, u64) = if o < nc {
            (sim.cores[o].local.keys.clone(), sim.cores[o].local.version)
        } else {
            let l = &sim.reps[o - nc].local;
            (l.keys.clone(), l.version)
        };
        for h in (0..n).filter(|h| *h != o) {
            let copy = if h < nc {
                &sim.cores[h].routes
            } else {
                let r = &sim.reps[h - nc];
                if !r.replica.is_following() {
                    return Err(format!("{} follows no core after the heal", name(h)));
                }
                &r.served
            };
            let got: BTreeSet<RouteKey> = copy.keys_of(&name(o)).into_iter().collect();
            if got != want || copy.version(&name(o)) != version {
                return Err(format!(
                    "{} holds {} routes of {} at version {}; it has {} at version {}",
                    name(h),
                    got.len(),
                    name(o),
                    copy.version(&name(o)),
                    want.len(),
                    version
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn cores_and_replicants_converge_on_every_nodes_routes() {
    simnet::check_seeds("REPLICANT_SIM_SEED", 300, run);
}
