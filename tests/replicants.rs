//! Core and replicant nodes (`node.db_role`), as real processes on
//! loopback aliases: cores form the mesh, each replicant links to one core
//! only and follows its replication stream, and messages still go straight
//! from the publisher's node to the subscriber's. Every wait is bounded.

mod common;

use common::cluster::*;
use common::{add_config, Node};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const REPLICANT: &str = "node.db_role = replicant\n";

/// Cores on `cores`, replicants on `replicants`; every core joins the
/// first, every replicant joins the first core; returns when every node
/// reports every node running.
fn mixed(cores: &[u8], replicants: &[u8]) -> (Vec<Node>, Vec<Node>) {
    mixed_with(cores, replicants, "")
}

/// [`mixed`] with `extra` in every node's config.
fn mixed_with(cores: &[u8], replicants: &[u8], extra: &str) -> (Vec<Node>, Vec<Node>) {
    let cs = cluster_with(cores, extra);
    let rs: Vec<Node> = replicants
        .iter()
        .map(|ip| node_with(*ip, &format!("{REPLICANT}{extra}")))
        .collect();
    for r in &rs {
        join(r, &cs[0]);
    }
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let line = status_with_roles(&all, &[], &rs.iter().collect::<Vec<_>>());
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
    let (cs, rs) = mixed(&[1, 2, 3], &[4, 5, 6, 7]);
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let (ra, rb) = (&rs[0], &rs[1]);

    // Subscribe on replicant A; publish on replicant B and on a core, at
    // every QoS; each message arrives once, at the lower of the two QoS.
    let mut sub = mq(ra, "rep-sub");
    sub.sub("t/#", 2);
    for n in &all {
        wait_route(n, "t/#", ra, true, Duration::from_secs(10));
    }
    let mut pb = mq(rb, "rep-pub-b");
    let mut pc = mq(&cs[1], "rep-pub-core");
    for q in 0..3u8 {
        pb.publish(&format!("t/r/{q}"), q, false, format!("r{q}").as_bytes());
        pc.publish(&format!("t/c/{q}"), q, false, format!("c{q}").as_bytes());
    }
    let got = sub.collect(6, Duration::from_secs(10));
    let mut seen: Vec<(String, u8)> = got
        .iter()
        .map(|p| {
            (
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos as u8,
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, u8)> = ["c0", "c1", "c2", "r0", "r1", "r2"]
        .iter()
        .map(|s| (s.to_string(), s[1..].parse::<u8>().unwrap_or(9)))
        .collect();
    assert_eq!(seen, want, "{}", tails(&all));
    assert!(
        sub.quiet(Duration::from_millis(500)).is_empty(),
        "duplicates"
    );

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
}

/// The core `r` has its control link to.
fn followed(r: &Node, all: &[&Node]) -> Option<String> {
    let peers = control_peers(r, all);
    (peers.len() == 1).then(|| peers[0].clone())
}

#[test]
fn a_replicant_follows_another_core_when_its_core_is_killed_and_keeps_its_clients() {
    let (mut cs, rs) = mixed(&[1, 2, 3], &[4, 5]);
    let (ra, rb) = (&rs[0], &rs[1]);
    let mut sub = mq(ra, "fo-sub");
    sub.sub("fo/#", 1);
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    for n in &all {
        wait_route(n, "fo/#", ra, true, Duration::from_secs(10));
    }
    std::thread::sleep(Duration::from_millis(600));
    let core = followed(ra, &all).expect("replicant A follows one core");
    let idx = cs.iter().position(|c| c.name == core).expect("a core");
    drop(all);
    let killed = Instant::now();
    cs[idx].kill();
    // A subscription made during the switch.
    let mut sub2 = mq(ra, "fo-sub2");
    sub2.sub("during/+", 1);

    let live: Vec<&Node> = cs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, c)| c)
        .chain(rs.iter())
        .collect();
    let deadline = killed + DOWN_TIMEOUT + Duration::from_secs(5);
    let mut now_following = None;
    while Instant::now() < deadline {
        if let Some(c) = followed(ra, &live) {
            now_following = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = killed.elapsed();
    let now_following = now_following.unwrap_or_else(|| {
        panic!(
            "replicant A follows no live core {took:?} after its core was killed\n{}",
            tails(&live)
        )
    });
    assert_ne!(now_following, core);

    // Its clients stayed connected; routes made during the switch reached
    // every live node, and messages flow both ways.
    for n in &live {
        wait_route(n, "during/+", ra, true, Duration::from_secs(10));
        wait_route(n, "fo/#", ra, true, Duration::from_secs(10));
    }
    let mut p = mq(rb, "fo-pub");
    p.publish("fo/1", 1, false, b"after");
    p.publish("during/x", 1, false, b"during");
    assert_eq!(
        payloads(&sub.collect(1, Duration::from_secs(10))),
        vec!["after"],
        "{:?}\n{}",
        sub.error,
        tails(&live)
    );
    assert_eq!(
        payloads(&sub2.collect(1, Duration::from_secs(10))),
        vec!["during"]
    );
    assert!(
        sub.error.is_none(),
        "the subscriber was disconnected: {:?}",
        sub.error
    );
    // Status everywhere: the killed core stopped, everybody else running.
    let stopped: Vec<&Node> = vec![&cs[idx]];
    let line = status_with_roles(&live, &stopped, &rs.iter().collect::<Vec<_>>());
    for n in &live {
        wait_status(n, &line, Duration::from_secs(10), &live);
    }
}

#[test]
fn a_persistent_session_moves_from_a_replicant_to_a_core_and_back() {
    let (cs, rs) = mixed(&[1, 2], &[3, 4]);
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let (r1, r2, c2) = (&rs[0], &rs[1], &cs[1]);
    let (mut s, present) = mq_persistent(r1, "mv");
    assert!(!present);
    s.sub("mv/#", 1);
    for n in &all {
        wait_route(n, "mv/#", r1, true, Duration::from_secs(10));
    }
    s.c.disconnect().expect("disconnect");
    s.wait_for(Duration::from_secs(2), |_| false);
    drop(s);
    let mut p = mq(r2, "mv-pub");
    for i in 0..3 {
        p.publish("mv/x", 1, false, format!("a{i}").as_bytes());
    }
    // To a core: the session comes over from the replicant.
    let (mut s, present) = mq_persistent(c2, "mv");
    assert!(present, "session present on the core\n{}", tails(&all));
    assert_eq!(
        payloads(&s.collect(3, Duration::from_secs(10))),
        vec!["a0", "a1", "a2"],
        "{}",
        tails(&all)
    );
    for n in &all {
        wait_route(n, "mv/#", c2, true, Duration::from_secs(10));
        wait_route(n, "mv/#", r1, false, Duration::from_secs(10));
    }
    s.c.disconnect().expect("disconnect");
    s.wait_for(Duration::from_secs(2), |_| false);
    drop(s);
    for i in 0..2 {
        p.publish("mv/y", 1, false, format!("b{i}").as_bytes());
    }
    // And back to the other replicant.
    let (mut s, present) = mq_persistent(r2, "mv");
    assert!(present, "session present on replicant 2\n{}", tails(&all));
    assert_eq!(
        payloads(&s.collect(2, Duration::from_secs(10))),
        vec!["b0", "b1"]
    );
    let lines = client_lines(&cs[0], "mv");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with(&format!("node={})", r2.name)),
        "{lines:?}"
    );
}

#[test]
fn shared_subscribers_on_replicants_and_cores_share_the_messages_of_every_qos() {
    let (cs, rs) = mixed(&[1, 2], &[3, 4]);
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let mut a = mq(&rs[0], "sh-a");
    a.sub("$share/g/sh/+", 2);
    let mut b = mq(&cs[1], "sh-b");
    b.sub("$share/g/sh/+", 2);
    for o in [&rs[0], &cs[1]] {
        let needle = format!(" -> {}", o.name);
        let (ok, out) = poll_ctl(&rs[1], &["topics", "list"], Duration::from_secs(10), |t| {
            t.lines()
                .any(|l| l.contains("sh/+") && l.ends_with(&needle))
        });
        assert!(
            ok,
            "replicant 2 never saw the shared route of {}: {out}",
            o.name
        );
    }
    let mut p = mq(&rs[1], "sh-pub");
    for i in 0..30 {
        p.publish("sh/1", (i % 3) as u8, false, format!("m{i}").as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    while ga.len() + gb.len() < 30 && Instant::now() < deadline {
        ga.extend(payloads(&a.collect(1, Duration::from_millis(100))));
        gb.extend(payloads(&b.collect(1, Duration::from_millis(100))));
    }
    ga.extend(payloads(&a.quiet(Duration::from_millis(500))));
    gb.extend(payloads(&b.quiet(Duration::from_millis(100))));
    let mut got: Vec<String> = ga.iter().chain(gb.iter()).cloned().collect();
    got.sort();
    got.dedup();
    assert_eq!(
        (ga.len() + gb.len(), got.len()),
        (30, 30),
        "each message once: replicant got {ga:?}, core got {gb:?}\n{}",
        tails(&all)
    );
    assert!(!ga.is_empty() && !gb.is_empty(), "{ga:?} {gb:?}");
}

/// Nodes of a static seed list (`names`), quoted for the config.
fn seeds(names: &[&Node]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.name)).collect();
    format!("[{}]", list.join(", "))
}

#[test]
fn with_static_seeds_cores_form_the_cluster_and_replicants_follow_them() {
    // Every node gets the same list, replicants in it too: cores join the
    // oldest core, replicants a core; nobody joins a replicant.
    let mut cs: Vec<Node> = [1u8, 2].iter().map(|ip| prepare(*ip)).collect();
    let mut rs: Vec<Node> = [3u8, 4].iter().map(|ip| prepare(*ip)).collect();
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let conf = format!(
        "cluster.discovery_strategy = static\ncluster.static.seeds = {}\n",
        seeds(&all)
    );
    for n in &rs {
        add_config(n, REPLICANT);
    }
    for n in cs.iter().chain(rs.iter()) {
        add_config(n, &conf);
    }
    // Replicants first: they must wait for a core.
    for n in rs.iter_mut().chain(cs.iter_mut()) {
        n.spawn(&[]);
    }
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let line = status_with_roles(&all, &[], &rs.iter().collect::<Vec<_>>());
    for n in &all {
        wait_status(n, &line, Duration::from_secs(45), &all);
    }
    std::thread::sleep(Duration::from_millis(1500));
    for r in &rs {
        let peers = control_peers(r, &all);
        assert!(
            peers.len() == 1 && cs.iter().any(|c| c.name == peers[0]),
            "{} has control links to {peers:?}",
            r.name
        );
    }
}

#[test]
fn a_replicant_with_core_nodes_joins_by_itself_and_rejoins_after_a_restart() {
    let cs = cluster(&[1, 2]);
    let mut r = prepare(3);
    add_config(
        &r,
        &format!(
            "{REPLICANT}cluster.core_nodes = {}\n",
            seeds(&cs.iter().collect::<Vec<_>>())
        ),
    );
    r.spawn(&[]);
    let all: Vec<&Node> = cs.iter().chain(std::iter::once(&r)).collect();
    let line = status_with_roles(&all, &[], &[&r]);
    for n in &all {
        wait_status(n, &line, Duration::from_secs(30), &all);
    }
    let (_, json) = r.ctl(&["cluster", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(v["roles"][&r.name], "replicant", "{json}");
    assert_eq!(v["roles"][&cs[0].name], "core", "{json}");

    // A restart (kill -9): it comes back from cluster.json and follows a
    // core again, with the routes made meanwhile.
    let mut sub = mq(&cs[0], "rr-sub");
    drop(all);
    r.kill();
    sub.sub("rr/#", 1);
    r.spawn(&[]);
    let all: Vec<&Node> = cs.iter().chain(std::iter::once(&r)).collect();
    for n in &all {
        wait_status(n, &line, Duration::from_secs(30), &all);
    }
    wait_route(&r, "rr/#", &cs[0], true, Duration::from_secs(10));
    let mut p = mq(&r, "rr-pub");
    p.publish("rr/1", 1, false, b"back");
    assert_eq!(
        payloads(&sub.collect(1, Duration::from_secs(10))),
        vec!["back"]
    );
}

#[test]
fn with_every_core_down_replicants_keep_serving_and_hand_their_writes_over_later() {
    let (mut cs, rs) = mixed(&[1, 2], &[3, 4]);
    let (r3, r4) = (&rs[0], &rs[1]);
    let mut sub = mq(r3, "nc-sub");
    sub.sub("x/#", 1);
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    for n in &all {
        wait_route(n, "x/#", r3, true, Duration::from_secs(10));
    }
    drop(all);
    for c in cs.iter_mut() {
        c.kill();
    }
    std::thread::sleep(DOWN_TIMEOUT + Duration::from_secs(1));
    // Replicant to replicant, from their last copy, with no core.
    let mut p = mq(r4, "nc-pub");
    p.publish("x/1", 1, false, b"no-core");
    assert_eq!(
        payloads(&sub.collect(1, Duration::from_secs(10))),
        vec!["no-core"],
        "{}",
        tails(&[r3, r4])
    );
    // Writes made meanwhile: a subscription, a retained message, a new
    // client (no cluster lock to take).
    let mut sub2 = mq(r4, "nc-sub2");
    sub2.sub("z/#", 1);
    p.publish("ret/a", 1, true, b"while-down");
    // The cores come back (same data directories).
    for c in cs.iter_mut() {
        c.spawn(&[]);
    }
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let line = status_with_roles(&all, &[], &rs.iter().collect::<Vec<_>>());
    for n in &all {
        wait_status(n, &line, Duration::from_secs(30), &all);
    }
    for c in &cs {
        wait_route(c, "z/#", r4, true, Duration::from_secs(15));
        wait_route(c, "x/#", r3, true, Duration::from_secs(15));
        let (ok, out) = poll_ctl(c, &["retainer", "topics"], Duration::from_secs(15), |o| {
            o.lines().any(|l| l == "ret/a")
        });
        assert!(ok, "ret/a never reached {}: {out}\n{}", c.name, tails(&all));
    }
    let mut pc = mq(&cs[0], "nc-core-pub");
    pc.publish("z/1", 1, false, b"core-back");
    assert_eq!(
        payloads(&sub2.collect(1, Duration::from_secs(10))),
        vec!["core-back"]
    );
}

#[test]
fn replicants_leave_are_force_removed_and_autocleaned() {
    let (cs, mut rs) = mixed_with(&[1, 2], &[3, 4, 5], "cluster.autoclean = 6s\n");
    let all: Vec<&Node> = cs.iter().chain(rs.iter()).collect();
    let mut s3 = mq(&rs[0], "lv-sub");
    s3.sub("lv/#", 1);
    for n in &all {
        wait_route(n, "lv/#", &rs[0], true, Duration::from_secs(10));
    }
    // `cluster leave` on a replicant.
    let (code, out) = rs[0].ctl(&["cluster", "leave"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("Leave the cluster successfully."), "{out}");
    let rest: Vec<&Node> = cs.iter().chain(rs[1..].iter()).collect();
    let line = status_with_roles(&rest, &[], &rs[1..].iter().collect::<Vec<_>>());
    for n in &rest {
        wait_status(n, &line, Duration::from_secs(15), &all);
        wait_route(n, "lv/#", &rs[0], false, Duration::from_secs(10));
    }
    let alone = |r: &Node| status_with_roles(&[r], &[], &[r]);
    wait_status(&rs[0], &alone(&rs[0]), Duration::from_secs(10), &all);

    // `cluster force-leave <replicant>` on a core that may not host it.
    let (code, out) = cs[1].ctl(&["cluster", "force-leave", &rs[1].name]);
    assert_eq!(code, 0, "{out}");
    let rest: Vec<&Node> = cs.iter().chain(rs[2..].iter()).collect();
    let line = status_with_roles(&rest, &[], &rs[2..].iter().collect::<Vec<_>>());
    for n in &rest {
        wait_status(n, &line, Duration::from_secs(15), &all);
    }
    // The removed replicant hears of it from its core's stream.
    wait_status(&rs[1], &alone(&rs[1]), Duration::from_secs(15), &all);
    drop(all);

    // Autoclean: a replicant killed and gone longer than the period is
    // removed (its routes go), and told so when it comes back.
    let mut s5 = mq(&rs[2], "ac-sub");
    s5.sub("ac/#", 1);
    for c in &cs {
        wait_route(c, "ac/#", &rs[2], true, Duration::from_secs(10));
    }
    drop(s5);
    rs[2].kill();
    for c in &cs {
        wait_route(c, "ac/#", &rs[2], false, Duration::from_secs(30));
        assert!(
            c.log()
                .contains(&format!("autoclean removes {}", rs[2].name)),
            "{}",
            tails(&[c])
        );
    }
    rs[2].spawn(&[]);
    wait_status(&rs[2], &alone(&rs[2]), Duration::from_secs(20), &[&rs[2]]);
    let cores: Vec<&Node> = cs.iter().collect();
    let line = status_with_roles(&cores, &[], &[]);
    let line = line.lines().next().unwrap_or_default().to_string();
    for c in &cs {
        wait_status(c, &line, Duration::from_secs(10), &cores);
    }
}
