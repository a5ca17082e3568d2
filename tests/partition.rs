//! Network partitions with real packet loss, and autoheal.
//!
//! Nodes run on loopback aliases (127.0.0.1 ..) and bind every outgoing
//! inter-node socket to their own address (checked in `cluster.rs`), so an
//! iptables rule that drops TCP between two addresses on the nodes'
//! inter-node and forwarding ports cuts exactly the cluster traffic between
//! those two nodes, while test clients still reach every node's MQTT port.
//! Every rule carries a comment naming this process and is removed when
//! the test ends, even on panic; rules left by an earlier run that died are
//! removed at the start.
//!
//! Needs root and `iptables` (installed by `scripts/test.sh`). The tests
//! run one at a time so the heal times they print are not skewed by each
//! other.

mod common;

use common::cluster::*;
use common::Node;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fast failure detection and a short autoheal delay for every node.
const HEAL: &str = "cluster.autoheal_delay = 3s\n";

static SERIAL: Mutex<()> = Mutex::new(());

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables (scripts/test.sh installs it): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn tag() -> String {
    format!("emqx-rs-partition-test-{}", std::process::id())
}

/// Removes rules left behind by runs of this test that are gone.
fn remove_stale_rules() {
    let Ok(out) = Command::new("iptables").args(["-S", "INPUT"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains("emqx-rs-partition-test-") || line.contains(&tag()) {
            continue;
        }
        let spec: Vec<&str> = line
            .trim_start_matches("-A INPUT ")
            .split_whitespace()
            .collect();
        let mut args = vec!["-D", "INPUT"];
        args.extend(spec);
        let _ = iptables(&args);
    }
}

/// Drop rules between groups of nodes; removed on `heal` or drop.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Cuts the inter-node traffic between every node of one group and
    /// every node of the others.
    fn split(groups: &[&[&Node]]) -> Partition {
        remove_stale_rules();
        let mut p = Partition { rules: Vec::new() };
        for (i, g) in groups.iter().enumerate() {
            for other in groups.iter().skip(i + 1) {
                for a in g.iter() {
                    for b in other.iter() {
                        p.cut(a, b);
                    }
                }
            }
        }
        p
    }

    fn cut(&mut self, a: &Node, b: &Node) {
        let ports = format!(
            "{},{},{},{}",
            a.dist_port,
            fwd_port(a),
            b.dist_port,
            fwd_port(b)
        );
        for (src, dst) in [(&a.host, &b.host), (&b.host, &a.host)] {
            self.insert(src, dst, &["-m", "multiport", "--ports", &ports]);
        }
    }

    /// Inserts a rule dropping TCP from `src` to `dst` that `matching`
    /// selects; kept for [`Partition::heal`].
    fn insert(&mut self, src: &str, dst: &str, matching: &[&str]) {
        let tag = tag();
        let mut rule: Vec<&str> = vec!["INPUT", "-s", src, "-d", dst, "-p", "tcp"];
        rule.extend(matching);
        rule.extend(["-m", "comment", "--comment", &tag, "-j", "DROP"]);
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["-I"];
        args.extend(rule.iter().map(String::as_str));
        if let Err(e) = iptables(&args) {
            self.heal();
            panic!("{e}");
        }
        self.rules.push(rule);
    }

    /// Drops what `from`'s forwarding listener sends to `to`: the
    /// acknowledgements of the messages `to` forwards to `from`, which
    /// still gets them.
    fn drop_acks(from: &Node, to: &Node) -> Partition {
        remove_stale_rules();
        let mut p = Partition { rules: Vec::new() };
        p.insert(
            &from.host,
            &to.host,
            &["--sport", &fwd_port(from).to_string()],
        );
        p
    }

    /// Removes the rules between `a` and `b` only.
    fn restore(&mut self, a: &Node, b: &Node) {
        let hosts = [a.host.as_str(), b.host.as_str()];
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .rules
            .drain(..)
            .partition(|r| hosts.contains(&r[2].as_str()) && hosts.contains(&r[4].as_str()));
        self.rules = kept;
        for r in gone {
            let mut args = vec!["-D"];
            args.extend(r.iter().map(String::as_str));
            let _ = iptables(&args);
        }
    }

    /// Removes every rule; returns when that was done.
    fn heal(&mut self) -> Instant {
        for r in self.rules.drain(..) {
            let mut args = vec!["-D"];
            args.extend(r.iter().map(String::as_str));
            let _ = iptables(&args);
        }
        Instant::now()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A cluster of nodes with the short autoheal delay plus `extra`.
fn healing_cluster(ips: &[u8], extra: &str) -> Vec<Node> {
    cluster_with(ips, &format!("{HEAL}{extra}\n"))
}

fn metric(n: &Node, key: &str) -> i64 {
    let (_, out) = n.ctl(&["broker", "metrics"]);
    stat(&out, key).unwrap_or(0)
}

/// Waits until every node of `side` sees exactly `side` running and the
/// rest stopped.
fn wait_side(side: &[&Node], rest: &[&Node], all: &[&Node], timeout: Duration) {
    let line = status_line(side, rest);
    for n in side {
        let (ok, out) = poll_ctl(n, &["cluster", "status"], timeout, |o| {
            o.lines().next() == Some(line.as_str())
        });
        assert!(
            ok,
            "{} during the split:\n  got:      {}\n  expected: {line}\n{}",
            n.name,
            out.trim_end(),
            tails(all)
        );
    }
}

/// Waits until every node reports every node running and no partition;
/// returns how long that took from `since`.
fn wait_healed(all: &[&Node], since: Instant, timeout: Duration) -> Duration {
    let line = status_line(all, &[]);
    for n in all {
        let left = timeout.saturating_sub(since.elapsed());
        wait_status(n, &line, left, all);
    }
    since.elapsed()
}

/// A publish from every node reaches a subscriber on every node.
fn every_node_reaches_every_node(nodes: &[&Node], tag: &str) {
    let filter = format!("{tag}/#");
    let mut subs: Vec<Mq> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut m = mq(n, &format!("{tag}-sub-{i}"));
            m.sub(&filter, 1);
            m
        })
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        for o in nodes.iter() {
            wait_route(n, &filter, o, true, Duration::from_secs(10));
        }
        let mut p = mq(n, &format!("{tag}-pub-{i}"));
        p.publish(
            &format!("{tag}/{i}"),
            1,
            false,
            format!("from-{i}").as_bytes(),
        );
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let mut got = payloads(&s.collect(nodes.len(), Duration::from_secs(10)));
        got.sort();
        let want: Vec<String> = (0..nodes.len()).map(|k| format!("from-{k}")).collect();
        assert_eq!(got, want, "subscriber on {} after the heal", nodes[i].name);
    }
}

/// Open file descriptors of a node's process.
fn fds(n: &Node) -> usize {
    let pid = n.pid().expect("node runs");
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn stats(n: &Node, key: &str) -> i64 {
    let (_, out) = n.ctl(&["broker", "stats"]);
    stat(&out, key).unwrap_or(-1)
}

/// The status code of `GET /api/v5/status` at `addr` (0: no answer).
fn status_code(addr: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /api/v5/status HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return 0;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).is_err() {
        return 0;
    }
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn log_has(n: &Node, what: &str) -> bool {
    n.log().contains(what)
}

#[test]
fn three_nodes_split_two_one_serve_both_sides_then_autoheal_restarts_the_minority() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = healing_cluster(&[1, 2, 3], "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let all = [a, b, c];
    // Events of the cluster, as an operator would watch them.
    let mut sys = mq(a, "sys-watch");
    sys.sub("$SYS/brokers/+/cluster/#", 0);
    let mut sa = mq(a, "split-sa");
    sa.sub("side/#", 1);
    let mut sc = mq(c, "split-sc");
    sc.sub("side/#", 1);
    wait_route(a, "side/#", c, true, Duration::from_secs(5));

    let mut cut = Partition::split(&[&[a, b], &[c]]);
    wait_side(&[a, b], &[c], &all, Duration::from_secs(20));
    wait_side(&[c], &[a, b], &all, Duration::from_secs(20));

    // Each side keeps serving its own clients.
    let mut pa = mq(a, "split-pa");
    pa.publish("side/a", 1, false, b"on-a");
    assert_eq!(
        payloads(&sa.collect(1, Duration::from_secs(5))),
        vec!["on-a"]
    );
    let mut pc = mq(c, "split-pc");
    pc.publish("side/c", 1, false, b"on-c");
    assert_eq!(
        payloads(&sc.collect(1, Duration::from_secs(5))),
        vec!["on-c"]
    );
    let mut late = mq(c, "split-late");
    late.sub("late/#", 1);
    let fds_before = fds(c);

    // A load balancer's health check on the minority, through the heal.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (addr, watching) = (format!("{}:{}", c.host, c.api_port), watching.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            let started = Instant::now();
            while watching.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(90)
            {
                let code = status_code(&addr);
                if codes.last() != Some(&code) {
                    codes.push(code);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            codes
        })
    };

    let restored = cut.heal();
    let took = wait_healed(&all, restored, Duration::from_secs(60));
    // Healed means rejoined, and the listeners open again right after.
    std::thread::sleep(Duration::from_millis(500));
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let codes = watcher.join().expect("status watcher");
    assert_eq!(
        codes,
        vec![200, 503, 200],
        "GET /api/v5/status on the restarted node: 503 while it restarts, 200 before and after"
    );
    println!(
        "HEAL 3 nodes 2/1: {:.1}s from link restore to one cluster",
        took.as_secs_f64()
    );

    // The minority (c) restarted: its clients were dropped; a and b were not.
    sc.wait_for(Duration::from_secs(3), |_| false);
    assert!(
        sc.error.is_some(),
        "the client on the restarted node {} is still connected\n{}",
        c.name,
        tails(&all)
    );
    assert!(
        sa.error.is_none(),
        "client on {} was disconnected: {:?}",
        a.name,
        sa.error
    );
    assert_eq!(metric(c, "cluster.autoheal.restarts"), 1, "{}", tails(&all));
    assert_eq!(metric(a, "cluster.autoheal.restarts"), 0);
    assert_eq!(metric(b, "cluster.autoheal.restarts"), 0);
    assert!(metric(a, "cluster.partition.detected") >= 1);
    assert!(metric(a, "cluster.partition.healed") >= 1);
    assert!(log_has(c, "restarts this node's broker"), "{}", tail(c));
    // Nothing of the old run is left on c: no session, subscription or
    // connection, and fewer open files than with its three clients.
    for key in ["sessions.count", "subscriptions.count", "connections.count"] {
        assert_eq!(stats(c, key), 0, "{key} on {} after its restart", c.name);
    }
    let fds_after = fds(c);
    assert!(
        fds_after < fds_before,
        "{} had {fds_before} open files with 3 clients before the split, {fds_after} after the restart",
        c.name
    );
    let events: Vec<(String, String)> = sys
        .quiet(Duration::from_millis(500))
        .iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).to_string(),
            )
        })
        .collect();
    for what in ["partition", "healed"] {
        let topic = format!("$SYS/brokers/{}/cluster/{what}", a.name);
        assert!(
            events
                .iter()
                .any(|(t, p)| *t == topic && p.contains(&c.name)),
            "no {topic} about {}: {events:?}",
            c.name
        );
    }

    // Clients reconnect; routes agree everywhere again.
    every_node_reaches_every_node(&all, "after21");
}

#[test]
fn five_nodes_split_three_two_heal_by_restarting_the_two() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = healing_cluster(&[1, 2, 3, 4, 5], "");
    let all: Vec<&Node> = nodes.iter().collect();
    let (major, minor) = (&all[..3], &all[3..]);
    let mut cut = Partition::split(&[major, minor]);
    wait_side(major, minor, &all, Duration::from_secs(20));
    wait_side(minor, major, &all, Duration::from_secs(20));
    let restored = cut.heal();
    let took = wait_healed(&all, restored, Duration::from_secs(60));
    println!(
        "HEAL 5 nodes 3/2: {:.1}s from link restore to one cluster",
        took.as_secs_f64()
    );
    for n in minor {
        assert_eq!(metric(n, "cluster.autoheal.restarts"), 1, "{}", tails(&all));
    }
    for n in major {
        assert_eq!(metric(n, "cluster.autoheal.restarts"), 0, "{}", tails(&all));
    }
    every_node_reaches_every_node(&all, "after32");
}

#[test]
fn three_way_split_heals_only_once_a_majority_is_reachable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = healing_cluster(&[1, 2, 3], "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let all = [a, b, c];
    let mut cut = Partition::split(&[&[a], &[b], &[c]]);
    for n in all {
        let rest: Vec<&Node> = all.iter().copied().filter(|o| o.name != n.name).collect();
        wait_side(&[n], &rest, &all, Duration::from_secs(20));
    }
    // a and b meet again; c is still cut off. With 1 of 3 cores unreachable
    // the leader must not heal (it needs fewer than 3/2 = 1 unreachable).
    cut.restore(a, b);
    let (seen, out) = poll_ctl(a, &["cluster", "status"], Duration::from_secs(20), |o| {
        o.contains("Partitioned from")
    });
    assert!(
        seen,
        "a and b never saw their partition: {out}\n{}",
        tails(&all)
    );
    std::thread::sleep(Duration::from_secs(12));
    for n in all {
        assert_eq!(metric(n, "cluster.autoheal.restarts"), 0, "{}", tails(&all));
    }
    let (_, out) = a.ctl(&["cluster", "status"]);
    assert!(out.contains("Partitioned from"), "{out}");
    let leader_log = [a, b]
        .iter()
        .any(|n| log_has(n, "no heal without a majority"));
    assert!(
        leader_log,
        "the leader did not say why it waits\n{}",
        tails(&all)
    );
    // c comes back: now the split view is taken and the cluster heals.
    let restored = cut.heal();
    let took = wait_healed(&all, restored, Duration::from_secs(60));
    println!(
        "HEAL 3 nodes three-way: {:.1}s from the last link restore to one cluster",
        took.as_secs_f64()
    );
    let restarts: i64 = all
        .iter()
        .map(|n| metric(n, "cluster.autoheal.restarts"))
        .sum();
    assert_eq!(
        restarts,
        2,
        "two of three one-node cliques restart\n{}",
        tails(&all)
    );
    every_node_reaches_every_node(&all, "after111");
}

#[test]
fn with_autoheal_off_a_split_stays_split_after_the_network_returns() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = healing_cluster(&[1, 2, 3], "cluster.autoheal = false");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let all = [a, b, c];
    let mut cut = Partition::split(&[&[a, b], &[c]]);
    wait_side(&[a, b], &[c], &all, Duration::from_secs(20));
    wait_side(&[c], &[a, b], &all, Duration::from_secs(20));
    cut.heal();
    let (seen, out) = poll_ctl(c, &["cluster", "status"], Duration::from_secs(30), |o| {
        o.contains("Partitioned from")
    });
    assert!(seen, "{out}\n{}", tails(&all));
    assert!(out.contains("autoheal: off"), "{out}");
    // Well past what a heal takes with autoheal on.
    std::thread::sleep(Duration::from_secs(15));
    wait_side(&[a, b], &[c], &all, Duration::from_secs(1));
    wait_side(&[c], &[a, b], &all, Duration::from_secs(1));
    for n in all {
        assert_eq!(metric(n, "cluster.autoheal.restarts"), 0);
    }
    assert!(log_has(c, "cluster.autoheal is off"), "{}", tail(c));
}

/// Opens a persistent (clean_session = false) client and returns it with
/// the CONNACK's session present flag.
fn persistent(n: &Node, id: &str) -> (Mq, bool) {
    let mut m = Mq::open(n, id, false);
    let mut present = None;
    let ok = m.wait_for(Duration::from_secs(10), |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => {
            present = Some(a.session_present);
            true
        }
        _ => false,
    });
    assert!(ok, "{id}: no CONNACK from {} ({:?})", n.name, m.error);
    (m, present.unwrap_or(false))
}

#[test]
fn autoheal_keeps_the_minoritys_persistent_sessions_and_a_client_id_stays_unique() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = healing_cluster(&[1, 2, 3], "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let all = [a, b, c];
    // Two persistent sessions on the node that will be the minority.
    let (mut keeper, _) = persistent(c, "heal-keeper");
    keeper.sub("keep/#", 1);
    let (mut mover, _) = persistent(c, "heal-mover");
    mover.sub("moved/#", 1);
    drop(mover);
    wait_route(a, "keep/#", c, true, Duration::from_secs(5));
    wait_route(a, "moved/#", c, true, Duration::from_secs(5));

    let mut cut = Partition::split(&[&[a, b], &[c]]);
    wait_side(&[a, b], &[c], &all, Duration::from_secs(20));
    wait_side(&[c], &[a, b], &all, Duration::from_secs(20));
    // Acknowledged on the majority while c is cut off: it waits for c.
    let mut p = mq(a, "heal-pub");
    p.publish("keep/during", 1, false, b"during the split");
    // The mover's client comes back on the majority: c cannot be asked,
    // so a starts a new session for the id.
    let (mut moved, present) = persistent(a, "heal-mover");
    assert!(!present, "a cannot have taken the session over from c");
    moved.sub("moved/#", 1);
    // Acknowledged on the minority while cut off.
    let mut pc = mq(c, "heal-pub-c");
    pc.publish("keep/on-c", 1, false, b"on c during the split");
    let got = payloads(&keeper.collect(1, Duration::from_secs(5)));
    assert_eq!(got, vec!["on c during the split"]);

    let restored = cut.heal();
    wait_healed(&all, restored, Duration::from_secs(60));
    assert_eq!(metric(c, "cluster.autoheal.restarts"), 1, "{}", tails(&all));
    // The restart disconnected the keeper's client and kept its session,
    // which got the message acknowledged on a during the split: on the old
    // connection if it arrived before the restart, else on the new one.
    keeper.wait_for(Duration::from_secs(5), |_| false);
    assert!(
        keeper.error.is_some(),
        "the keeper's client is still connected"
    );
    let mut got = payloads(&keeper.quiet(Duration::from_millis(1)));
    let ok = common::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(c.addr()).is_ok()
    });
    assert!(
        ok,
        "{} does not accept connections after its restart",
        c.name
    );
    let (mut keeper, present) = persistent(c, "heal-keeper");
    assert!(
        present,
        "the keeper's session on {} was not kept\n{}",
        c.name,
        tail(c)
    );
    if got.is_empty() {
        got = payloads(&keeper.collect(1, Duration::from_secs(10)));
    }
    got.extend(payloads(&keeper.quiet(Duration::from_secs(1))));
    assert_eq!(got, vec!["during the split"], "{}", tails(&all));
    // One session per client id: c discarded its copy of the mover's, the
    // majority's stays, and only a routes moved/# now.
    assert!(
        log_has(c, "session discarded here"),
        "{} kept a second session of heal-mover\n{}",
        c.name,
        tail(c)
    );
    wait_route(b, "moved/#", c, false, Duration::from_secs(10));
    wait_route(b, "moved/#", a, true, Duration::from_secs(10));
    let (_, out) = a.ctl(&["clients", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("clients list --json");
    let movers: Vec<&serde_json::Value> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter(|x| x["clientid"] == "heal-mover")
        .collect();
    assert_eq!(movers.len(), 1, "heal-mover in the cluster: {movers:?}");
    assert_eq!(movers[0]["node"], a.name.as_str());
    p.publish("moved/x", 1, false, b"to the mover");
    assert_eq!(
        payloads(&moved.collect(1, Duration::from_secs(10))),
        vec!["to the mover"]
    );
    assert!(
        moved.quiet(Duration::from_secs(1)).is_empty(),
        "delivered twice"
    );
}

/// A replicant cut off from every core keeps serving its own clients; the
/// cores see it go and never restart anybody for it (a replicant is no
/// member of the majority); when the network returns it bootstraps again
/// from a core and everything made on either side meanwhile converges.
#[test]
fn a_replicant_cut_from_every_core_serves_locally_and_converges_without_autoheal() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cores = healing_cluster(&[1, 2], "");
    let r = node_with(3, &format!("{HEAL}node.db_role = replicant\n"));
    join(&r, &cores[0]);
    let all: Vec<&Node> = cores.iter().chain(std::iter::once(&r)).collect();
    for n in &all {
        wait_route_ready(n, &all);
    }
    let mut local_sub = mq(&r, "cut-local-sub");
    local_sub.sub("loc/#", 1);
    let mut p = Partition::split(&[&[&cores[0], &cores[1]], &[&r]]);
    // The cores see the replicant go (a stopped replicant is not listed).
    let core_refs: Vec<&Node> = cores.iter().collect();
    for c in &cores {
        let line = status_line(&core_refs, &[]);
        let (ok, out) = poll_ctl(c, &["cluster", "status"], Duration::from_secs(20), |o| {
            o.lines().next() == Some(line.as_str())
        });
        assert!(ok, "{} during the cut: {out}\n{}", c.name, tails(&all));
    }
    // The replicant, following no core, counts every core stopped.
    let line = status_with_roles(&[&r], &core_refs, &[&r]);
    wait_status(&r, &line, Duration::from_secs(20), &all);
    // Local traffic on the replicant goes on; writes are made on both sides.
    let mut lp = mq(&r, "cut-local-pub");
    lp.publish("loc/1", 1, false, b"local");
    assert_eq!(
        payloads(&local_sub.collect(1, Duration::from_secs(5))),
        vec!["local"]
    );
    lp.publish("cut/ret", 1, true, b"from-replicant");
    let mut rsub = mq(&r, "cut-r-sub");
    rsub.sub("fromcore/#", 1);
    let mut csub = mq(&cores[1], "cut-c-sub");
    csub.sub("fromrep/#", 1);
    std::thread::sleep(Duration::from_secs(2));
    let healed = p.heal();
    let line = status_with_roles(&all, &[], &[&r]);
    for n in &all {
        let left = Duration::from_secs(30).saturating_sub(healed.elapsed());
        wait_status(n, &line, left, &all);
    }
    wait_route(&r, "fromrep/#", &cores[1], true, Duration::from_secs(15));
    for c in &cores {
        wait_route(c, "fromcore/#", &r, true, Duration::from_secs(15));
        let (ok, out) = poll_ctl(c, &["retainer", "topics"], Duration::from_secs(15), |o| {
            o.lines().any(|l| l == "cut/ret")
        });
        assert!(ok, "cut/ret never reached {}: {out}", c.name);
    }
    let mut cp = mq(&cores[0], "cut-c-pub");
    cp.publish("fromcore/1", 1, false, b"c");
    assert_eq!(
        payloads(&rsub.collect(1, Duration::from_secs(10))),
        vec!["c"]
    );
    lp.publish("fromrep/1", 1, false, b"r");
    assert_eq!(
        payloads(&csub.collect(1, Duration::from_secs(10))),
        vec!["r"]
    );
    for c in &cores {
        assert_eq!(
            metric(c, "cluster.autoheal.restarts"),
            0,
            "{} was restarted by autoheal\n{}",
            c.name,
            tails(&all)
        );
        assert!(
            !c.log().contains("autoheal: "),
            "{} ran autoheal for a replicant:\n{}",
            c.name,
            tails(&all)
        );
    }
    assert_eq!(metric(&r, "cluster.autoheal.restarts"), 0);
}

/// Waits until `n` lists every node of `all` running (first status line).
fn wait_route_ready(n: &Node, all: &[&Node]) {
    let line = status_line(all, &[]);
    let (ok, out) = poll_ctl(n, &["cluster", "status"], Duration::from_secs(20), |o| {
        o.lines().next() == Some(line.as_str())
    });
    assert!(ok, "{}: {out}\n{}", n.name, tails(all));
}

/// The replicated durable storage's groups (developer preview) through a
/// split and its heal: the majority keeps every shard led, and the node
/// autoheal restarts keeps its replicas (their other voters are members
/// of the cluster it rejoins), so every shard ends on the three cores
/// again, nothing dropped.
#[test]
fn durable_storage_shards_stay_led_on_the_majority_and_survive_the_autoheal_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = ds_cluster(&[1, 2, 3], "4/3/1", 4, HEAL);
    let all: Vec<&Node> = nodes.iter().collect();
    let (major, minor) = (&all[..2], &all[2..]);
    let mut cut = Partition::split(&[major, minor]);
    wait_side(major, minor, &all, Duration::from_secs(20));
    // The two keep (or elect) a leader for every shard between them.
    for n in major {
        assert!(
            common::wait_until(Duration::from_secs(20), || {
                let rows = ds_rows(n);
                rows.len() == 4
                    && rows
                        .iter()
                        .all(|r| major.iter().any(|m| m.name == r.leader))
            }),
            "{} during the split: {:?}\n{}",
            n.name,
            ds_rows(n),
            tails(&all)
        );
    }
    let restored = cut.heal();
    wait_healed(&all, restored, Duration::from_secs(60));
    assert_eq!(
        metric(minor[0], "cluster.autoheal.restarts"),
        1,
        "{}",
        tails(&all)
    );
    wait_ds_settled(&all, 4, Duration::from_secs(30));
    for n in &all {
        assert!(
            !log_has(n, "ds: dropped"),
            "{} dropped shards it shares with the cluster\n{}",
            n.name,
            tails(&all)
        );
    }
}

/// With durable sessions, a QoS 1 message forwarded to a persistent
/// session on another node is acknowledged to its publisher once that
/// node has it on disk: not while the link to it is cut, and then each
/// acknowledged message survives kill -9 of the publisher's node.
#[test]
fn a_puback_waits_for_the_node_of_the_persistent_session_and_survives_the_publishers_node() {
    use rumqttc::{Event, Outgoing, Packet, QoS};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut nodes = cluster_with(&[1, 2], "durable_sessions.enable = true\n");
    let b = nodes.remove(1);
    let a = &mut nodes[0];
    subscribe_then_leave(&b, "pw-sub", "pw/#", 1);
    wait_route(a, "pw/#", &b, true, Duration::from_secs(10));
    let (c, rx) = connected_client(a, "pw-pub");
    // The link between the nodes cut for less than cluster.down_timeout:
    // the messages wait on a (in its socket to b), unacknowledged.
    let mut cut = Partition::split(&[&[a], &[&b]]);
    for i in 0..20 {
        c.publish("pw/x", QoS::AtLeastOnce, false, format!("m{i:02}"))
            .expect("publish");
    }
    let (mut sent, mut acked) = (0, 0);
    let mut events = |within: Duration, until: &dyn Fn(usize) -> bool| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && !until(acked) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                other => panic!("publisher: {other:?}"),
            }
        }
        (sent, acked)
    };
    let (out, early) = events(Duration::from_millis(1500), &|_| false);
    assert_eq!(out, 20, "published");
    assert_eq!(early, 0, "acknowledged while b could not have them");
    cut.heal();
    // TCP sends them again; b writes them and acknowledges.
    let (_, acked) = events(Duration::from_secs(15), &|n| n == 20);
    assert_eq!(
        acked,
        20,
        "acknowledged once b has them\n{}",
        tails(&[a, &b])
    );
    a.kill();
    let (mut s, present) = mq_persistent(&b, "pw-sub");
    assert!(present, "{}", tail(&b));
    let got = payloads(&s.collect(20, Duration::from_secs(10)));
    let want: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(got, want, "{}", tail(&b));
}

/// The node of a persistent session writes ten messages forwarded from
/// the publisher's node to the session's shard, but its acknowledgements
/// never get back; it is killed. The node the client comes back to takes
/// the session from the shard, with the ten, and is given the same ten by
/// the publisher's node, which still holds them for the dead node: it
/// recognizes them, and the client gets each once.
#[test]
fn a_session_taken_from_a_killed_node_gets_once_what_that_node_wrote_and_never_acknowledged() {
    use rumqttc::QoS;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut nodes = ds_cluster(&[4, 5, 6], "4/3/1", 4, "");
    assert!(!subscribe_then_leave(&nodes[0], "wa-sub", "wa/#", 2));
    wait_route(&nodes[2], "wa/#", &nodes[0], true, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let _acks = Partition::drop_acks(&nodes[0], &nodes[2]);
    let (c, rx) = connected_client(&nodes[2], "wa-pub");
    let want: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    for m in &want {
        c.publish("wa/q", QoS::AtLeastOnce, false, m.clone())
            .expect("publish");
    }
    // Written there (queued for the offline session, and in its shard),
    // and not acknowledged back.
    let a = &nodes[0];
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let (_, out) = a.ctl(&["durable", "status"]);
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["queued", ":", "10"])
        }),
        "{}",
        a.ctl(&["durable", "status"]).1
    );
    // Its acknowledgement waits for the shard too: let that commit land.
    std::thread::sleep(Duration::from_secs(1));
    kill_first(&mut nodes);
    // Acknowledged once the node is seen down.
    let acked = count_pubacks(&rx, 10, Duration::from_secs(15));
    assert_eq!(acked, 10, "{}", tail(&nodes[2]));
    let (b, p) = (&nodes[1], &nodes[2]);
    let (mut s, present) = mq_back(b, "wa-sub");
    assert!(present, "{}", tails(&[b, p]));
    let got = payloads(&s.collect(want.len() + 1, Duration::from_secs(35)));
    assert_eq!(got, want, "each once, in order\n{}", tails(&[b, p]));
    assert!(
        b.log().contains("10 message(s) gathered")
            && b.log().contains("0 queued, 10 it had already"),
        "{}",
        tail(b)
    );
}

/// Durable sessions through a split and the autoheal restart: an offline
/// persistent session on the node that ends in the minority; ten QoS 1
/// messages published on the majority while the nodes are apart are
/// acknowledged (once the minority is seen down) and wait there. After
/// the heal the minority is restarted by autoheal, keeps the session (its
/// journal and its shard's copy), and its client gets the ten, once, in
/// order.
#[test]
fn a_persistent_session_on_the_minority_gets_what_the_majority_acknowledged_after_the_autoheal() {
    use rumqttc::QoS;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = ds_cluster(&[7, 8, 9], "4/3/1", 4, HEAL);
    let all: Vec<&Node> = nodes.iter().collect();
    let (major, minor) = (&all[..2], &all[2..]);
    let (a, c) = (major[0], minor[0]);
    assert!(!subscribe_then_leave(c, "mh-sub", "mh/#", 1));
    wait_route(a, "mh/#", c, true, Duration::from_secs(10));
    // Connected before the split (a new client id's connect asks the
    // other nodes, which takes longer while one is cut off).
    let (p, rx) = connected_client(a, "mh-pub");
    let mut cut = Partition::split(&[major, minor]);
    wait_side(major, minor, &all, Duration::from_secs(20));
    let want: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    for m in &want {
        p.publish("mh/q", QoS::AtLeastOnce, false, m.clone())
            .expect("publish");
    }
    let acked = count_pubacks(&rx, want.len(), Duration::from_secs(20));
    assert_eq!(
        acked,
        want.len(),
        "acknowledged during the split\n{}",
        tails(&all)
    );
    let restored = cut.heal();
    wait_healed(&all, restored, Duration::from_secs(60));
    assert_eq!(metric(c, "cluster.autoheal.restarts"), 1, "{}", tails(&all));
    wait_route(a, "mh/#", c, true, Duration::from_secs(20));
    let (mut s, present) = mq_persistent(c, "mh-sub");
    assert!(present, "session_present = 1\n{}", tails(&all));
    let got = payloads(&s.collect(want.len() + 1, Duration::from_secs(10)));
    assert_eq!(got, want, "each once, in order\n{}", tails(&all));
}
