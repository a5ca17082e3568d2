//! Core and replicant nodes (`node.db_role`), as real processes on
//! loopback aliases: cores form the mesh, each replicant links to one core
//! only and follows its replication stream, and messages still go straight
//! from the publisher's node to the subscriber's. Every wait is bounded.

mod common;

use common::cluster::*;
use common::Node;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const REPLICANT: &str = "node.db_role = replicant\n";

/// Cores on `cores`, replicants on `replicants`; every core joins the
/// first, every replicant joins the first core; returns when every node
/// reports every node running.
fn mixed(cores: &[u8], replicants: &[u8]) -> (Vec<Node>, Vec<Node>) {
    let cs = cluster(cores);
    let rs: Vec<Node> = replicants
        .iter()
        .map(|ip| node_with(*ip, REPLICANT))
        .collect();
    for r in &rs {
        join(r, &cs[0]);
    }
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let line = status_line(&all, &[]);
    for n in &all {
        wait_status(n, &line, Duration::from_secs(20), &all);
    }
    (cs, rs)
}

/// Peers of the established control-plane (inter-node) connections to or
/// from `n`, by node.
fn control_peers(n: &Node, all: &[&Node]) -> Vec<String> {
    let conns = established();
    let ip = |x: &Node| -> std::net::IpAddr { x.host.parse().expect("ip") };
    let mut out = Vec::new();
    for other in all {
        if other.name == n.name {
            continue;
        }
        let linked = conns.iter().any(|(l, p)| {
            let pair = |a: &Node, b: &Node| {
                (*l == SocketAddr::new(ip(a), a.dist_port) && p.ip() == ip(b))
                    || (*p == SocketAddr::new(ip(a), a.dist_port) && l.ip() == ip(b))
            };
            pair(n, other) || pair(other, n)
        });
        if linked {
            out.push(other.name.clone());
        }
    }
    out
}

#[test]
fn replicants_serve_publishes_and_retained_messages_with_one_core_link_each() {
    let (cs, rs) = mixed(&[1, 2, 3], &[4, 5]);
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let (ra, rb) = (&rs[0], &rs[1]);

    // Subscribe on replicant A; publish on replicant B and on a core.
    let mut sub = mq(ra, "rep-sub");
    sub.sub("t/#", 1);
    for n in &all {
        wait_route(n, "t/#", ra, true, Duration::from_secs(10));
    }
    let mut pb = mq(rb, "rep-pub-b");
    pb.publish("t/from-replicant", 1, false, b"r");
    let mut pc = mq(&cs[1], "rep-pub-core");
    pc.publish("t/from-core", 1, false, b"c");
    let mut got = payloads(&sub.collect(2, Duration::from_secs(10)));
    got.sort();
    assert_eq!(got, vec!["c", "r"], "{}", tails(&all));

    // A subscriber on a core gets what a replicant publishes.
    let mut sc = mq(&cs[2], "core-sub");
    sc.sub("r/+", 2);
    wait_route(rb, "r/+", &cs[2], true, Duration::from_secs(10));
    pb.publish("r/x", 2, false, b"q2");
    assert_eq!(
        payloads(&sc.collect(1, Duration::from_secs(10))),
        vec!["q2"]
    );

    // A retained message set on a replicant reaches every node.
    pb.publish("keep/r", 1, true, b"kept");
    for n in &all {
        let (ok, _) = poll_ctl(n, &["retainer", "topics"], Duration::from_secs(10), |o| {
            o.lines().any(|l| l == "keep/r")
        });
        assert!(ok, "retained keep/r missing on {}\n{}", n.name, tails(&all));
    }

    // Unsubscribing on the replicant removes the route everywhere.
    sub.unsub("t/#");
    for n in &all {
        wait_route(n, "t/#", ra, false, Duration::from_secs(10));
    }

    // Control links: cores with each other, each replicant with exactly
    // one core, never two replicants.
    std::thread::sleep(Duration::from_millis(500));
    for r in &rs {
        let peers = control_peers(r, &all);
        assert_eq!(peers.len(), 1, "{} has control links to {peers:?}", r.name);
        assert!(
            cs.iter().any(|c| c.name == peers[0]),
            "{} links to {}, not a core",
            r.name,
            peers[0]
        );
    }
    let t0 = Instant::now();
    let _ = t0;
}
