//! End-to-end cluster tests: several real `emqx-rs` processes on loopback
//! aliases (127.0.0.1 .. 127.0.0.9), joined with `ctl cluster join`, with
//! `rumqttc` clients on different nodes. Every wait is bounded.

mod common;

use common::cluster::*;
use common::{wait_until, Node};
use rumqttc::{Event, MqttOptions, Packet};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// 1. join and status
// ---------------------------------------------------------------------------

#[test]
fn three_nodes_join_and_every_node_reports_all_running_in_emqx_format() {
    let a = node(1);
    let b = node(2);
    let c = node(3);
    let out = join(&b, &a);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("Cluster status: ")),
        "join prints the status after the success line: {out:?}"
    );
    join(&c, &a);
    let all = [&a, &b, &c];
    let line = status_line(&all, &[]);
    for n in all {
        wait_status(n, &line, Duration::from_secs(10), &all);
    }
    let names = sorted_names(&all);
    for n in all {
        let (code, out) = n.ctl(&["cluster", "status", "--json"]);
        assert_eq!(code, 0, "status --json on {}: {out}", n.name);
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("status --json on {} is not JSON ({e}): {out:?}", n.name));
        assert_eq!(
            v,
            serde_json::json!({"running_nodes": names, "stopped_nodes": []}),
            "status --json on {}",
            n.name
        );
    }
}

// ---------------------------------------------------------------------------
// 2. cross-node delivery
// ---------------------------------------------------------------------------

#[test]
fn cross_node_delivery_is_exactly_once_at_min_qos_with_one_forward_per_node() {
    let nodes = cluster(&[1, 2, 3]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut b1 = mq(b, "b1");
    b1.sub("t/#", 1);
    let mut b2 = mq(b, "b2");
    b2.sub("t/+", 2);
    let mut c1 = mq(c, "c1");
    c1.sub("t/+", 2);
    for (f, o) in [("t/#", b), ("t/+", b), ("t/+", c)] {
        wait_route(a, f, o, true, Duration::from_secs(5));
    }
    let mut p = mq(a, "pub-a");
    for q in 0..=2u8 {
        p.publish("t/x", q, false, format!("q{q}").as_bytes());
    }
    for (sub, max) in [(&mut b1, 1u8), (&mut b2, 2), (&mut c1, 2)] {
        let mut got = sub.collect(3, Duration::from_secs(5));
        got.extend(sub.quiet(Duration::from_millis(500)));
        let seen: Vec<(String, u8)> = got
            .iter()
            .map(|p| {
                (
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.qos as u8,
                )
            })
            .collect();
        let mut seen_sorted = seen.clone();
        seen_sorted.sort();
        let expected: Vec<(String, u8)> =
            (0..=2u8).map(|q| (format!("q{q}"), q.min(max))).collect();
        assert_eq!(
            seen_sorted, expected,
            "{} (max QoS {max}) should get each of q0,q1,q2 once at min(pub, sub) QoS; got {seen:?}\n{}",
            sub.id,
            tails(&[a, b, c])
        );
    }
    let (_, m) = b.ctl(&["broker", "metrics"]);
    assert_eq!(
        stat(&m, "messages.forwarded.received"),
        Some(3),
        "B has two matching subscribers but must receive one forward per publish:\n{m}"
    );
    let (_, m) = c.ctl(&["broker", "metrics"]);
    assert_eq!(stat(&m, "messages.forwarded.received"), Some(3), "C:\n{m}");
}

// ---------------------------------------------------------------------------
// 3. routes
// ---------------------------------------------------------------------------

#[test]
fn topics_list_shows_remote_routes_and_unsubscribe_removes_them_everywhere() {
    let nodes = cluster(&[1, 2, 3]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut sb = mq(b, "sb");
    sb.sub("t/#", 1);
    let mut sc = mq(c, "sc");
    sc.sub("t/+", 2);
    wait_route(a, "t/#", b, true, Duration::from_secs(5));
    wait_route(a, "t/+", c, true, Duration::from_secs(5));
    let r = routes(a);
    assert!(
        r.contains(&format!("t/# -> {}", b.name)) && r.contains(&format!("t/+ -> {}", c.name)),
        "{r:?}"
    );
    // Every node sees both routes.
    wait_route(b, "t/+", c, true, Duration::from_secs(5));
    wait_route(c, "t/#", b, true, Duration::from_secs(5));
    sb.unsub("t/#");
    sc.unsub("t/+");
    for n in [a, b, c] {
        wait_route(n, "t/#", b, false, Duration::from_secs(5));
        wait_route(n, "t/+", c, false, Duration::from_secs(5));
    }
    assert_eq!(routes(a), vec!["No topics.".to_string()]);
}

// ---------------------------------------------------------------------------
// 4. retained messages
// ---------------------------------------------------------------------------

#[test]
fn retained_messages_replicate_to_members_and_late_joiners_and_clear_everywhere() {
    let nodes = cluster(&[1, 2, 3]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut p = mq(a, "ret-pub");
    p.publish("r/1", 1, true, b"kept");
    let (ok, out) = poll_ctl(c, &["retainer", "topics"], Duration::from_secs(5), |o| {
        o.lines().any(|l| l == "r/1")
    });
    assert!(ok, "C's retainer never got r/1: {out}\n{}", tails(&[a, c]));
    let mut sc = mq(c, "ret-sub-c");
    sc.sub("r/#", 1);
    let got = sc.collect(1, Duration::from_secs(5));
    assert_eq!(payloads(&got), vec!["kept"], "new subscriber on C");
    assert!(
        got[0].retain,
        "retained flag set on delivery to a new subscriber"
    );

    // A node that joins later gets the retained message too.
    let d = node(4);
    join(&d, b);
    let (ok, out) = poll_ctl(&d, &["retainer", "topics"], Duration::from_secs(5), |o| {
        o.lines().any(|l| l == "r/1")
    });
    assert!(ok, "late joiner D has no r/1: {out}\n{}", tails(&[b, &d]));
    let mut sd = mq(&d, "ret-sub-d");
    sd.sub("r/#", 1);
    let got = sd.collect(1, Duration::from_secs(5));
    assert_eq!(payloads(&got), vec!["kept"], "new subscriber on D");

    let all = [a, b, c, &d];
    let counts: Vec<Option<i64>> = all.iter().map(|n| retained_count(n)).collect();
    assert!(
        counts.iter().all(|x| x.is_some() && *x == counts[0]),
        "retainer info counts of A, B, C, D disagree: {counts:?}; topics: {:?}",
        all.iter().map(|n| retained_topics(n)).collect::<Vec<_>>()
    );

    // An empty retained publish on B clears it everywhere.
    let mut pb = mq(b, "ret-clear");
    pb.publish("r/1", 1, true, b"");
    for n in all {
        let (ok, out) = poll_ctl(n, &["retainer", "topics"], Duration::from_secs(5), |o| {
            !o.lines().any(|l| l == "r/1")
        });
        assert!(
            ok,
            "the empty retained publish on B did not clear r/1 on {} in 5 s: {out}\n{}",
            n.name,
            tails(&all)
        );
    }
    let after: Vec<Option<i64>> = all.iter().map(|n| retained_count(n)).collect();
    assert!(
        after.iter().all(|x| x.is_some() && *x == after[0]),
        "retainer info counts after clearing disagree: {after:?}"
    );
    assert_eq!(
        after[0].zip(counts[0]).map(|(x, y)| y - x),
        Some(1),
        "exactly r/1 was removed: before {counts:?}, after {after:?}"
    );
    let mut late = mq(c, "ret-late");
    late.sub("r/#", 1);
    let got = late.quiet(Duration::from_millis(700));
    assert!(
        got.is_empty(),
        "cleared message delivered: {:?}",
        payloads(&got)
    );
}

// ---------------------------------------------------------------------------
// 5. shared subscriptions
// ---------------------------------------------------------------------------

#[test]
fn shared_group_across_nodes_gets_each_message_once_round_robin() {
    let nodes = cluster(&[1, 2, 3]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut ma = mq(a, "share-a");
    ma.sub("$share/g/s/1", 1);
    let mut mb = mq(b, "share-b");
    mb.sub("$share/g/s/1", 1);
    for o in [a, b] {
        let needle = format!(" -> {}", o.name);
        let (ok, out) = poll_ctl(c, &["topics", "list"], Duration::from_secs(5), |t| {
            t.lines().any(|l| l.contains("s/1") && l.ends_with(&needle))
        });
        assert!(ok, "C never saw the shared route of {}: {out}", o.name);
    }
    let mut p = mq(c, "share-pub");
    for i in 0..40 {
        p.publish("s/1", 1, false, format!("m{i}").as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    while ga.len() + gb.len() < 40 && Instant::now() < deadline {
        ga.extend(payloads(&ma.collect(1, Duration::from_millis(100))));
        gb.extend(payloads(&mb.collect(1, Duration::from_millis(100))));
    }
    ga.extend(payloads(&ma.quiet(Duration::from_millis(500))));
    gb.extend(payloads(&mb.quiet(Duration::from_millis(100))));
    let all: Vec<&String> = ga.iter().chain(gb.iter()).collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (40, 40),
        "40 deliveries, none duplicated; A got {} {ga:?}, B got {} {gb:?}\n{}",
        ga.len(),
        gb.len(),
        tails(&[a, b, c])
    );
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "round_robin spreads over both members: A {}, B {}",
        ga.len(),
        gb.len()
    );
}

/// A join snapshot bigger than the largest message between nodes (64
/// MiB): 1,100 retained messages of 64,000 bytes (70.4 MB). It travels in
/// parts of 8 MiB.
#[test]
fn a_node_joins_a_cluster_whose_snapshot_is_bigger_than_64_mib() {
    let a = node(1);
    let mut p = mq(&a, "big-ret");
    let payload = vec![b'x'; 64_000];
    for i in 0..1_100 {
        p.publish(&format!("big/{i}"), 1, true, &payload);
    }
    // `retainer info` counts the node's own $SYS retained messages too.
    let count = |n: &Node| retained_count(n).unwrap_or(0);
    assert!(count(&a) >= 1_100, "{}", count(&a));
    let b = node(2);
    join(&b, &a);
    assert!(
        wait_until(Duration::from_secs(20), || count(&b) >= 1_100),
        "B holds {} retained messages, A {}\n{}",
        count(&b),
        count(&a),
        tails(&[&a, &b])
    );
    let mut s = mq(&b, "big-sub");
    s.sub("big/1099", 1);
    let got = s.collect(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.len(), 64_000);
}

// ---------------------------------------------------------------------------
// 6. leave
// ---------------------------------------------------------------------------

#[test]
fn leave_removes_the_node_from_status_routes_and_delivery() {
    let nodes = cluster(&[1, 2, 3]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut sc = mq(c, "leave-sub");
    sc.sub("l/#", 1);
    wait_route(a, "l/#", c, true, Duration::from_secs(5));
    let mut p = mq(a, "leave-pub");
    p.publish("l/1", 1, false, b"before");
    assert_eq!(
        payloads(&sc.collect(1, Duration::from_secs(5))),
        vec!["before"],
        "delivery before leaving"
    );

    let (code, out) = c.ctl(&["cluster", "leave"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "Leave the cluster successfully.\n{}\n",
            status_line(&[c], &[])
        )
    );
    let rest = status_line(&[a, b], &[]);
    wait_status(a, &rest, Duration::from_secs(10), &[a, b, c]);
    wait_status(b, &rest, Duration::from_secs(10), &[a, b, c]);
    wait_route(a, "l/#", c, false, Duration::from_secs(10));
    assert!(
        !routes(a)
            .iter()
            .any(|l| l.ends_with(&format!(" -> {}", c.name))),
        "A still has a route of C: {:?}",
        routes(a)
    );
    p.publish("l/1", 1, false, b"after");
    let got = sc.quiet(Duration::from_millis(1500));
    assert!(
        got.is_empty(),
        "a publish on A reached C after C left: {:?}",
        payloads(&got)
    );
    let (code, out) = c.ctl(&["cluster", "leave"]);
    assert_eq!(out, "Failed to leave the cluster: node_not_in_cluster\n");
    assert_ne!(code, 0, "a failed leave exits non-zero");
}

// ---------------------------------------------------------------------------
// 7. force-leave
// ---------------------------------------------------------------------------

#[test]
fn force_leave_removes_the_member_and_purges_its_routes() {
    let nodes = cluster(&[1, 2, 3]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut sb = mq(b, "fl-sub");
    sb.sub("f/#", 1);
    wait_route(a, "f/#", b, true, Duration::from_secs(5));
    wait_route(c, "f/#", b, true, Duration::from_secs(5));

    let (code, out) = a.ctl(&["cluster", "force-leave", &b.name]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "Remove the node from cluster successfully.\n{}\n",
            status_line(&[a, c], &[])
        ),
        "{}",
        tails(&[a, b])
    );
    let r = routes(a);
    assert!(
        !r.iter().any(|l| l.ends_with(&format!(" -> {}", b.name))),
        "B's routes are purged on A at once: {r:?}"
    );
    // The others learn of it too, and B itself is alone.
    wait_status(
        c,
        &status_line(&[a, c], &[]),
        Duration::from_secs(10),
        &[a, b, c],
    );
    wait_route(c, "f/#", b, false, Duration::from_secs(5));
    wait_status(
        b,
        &status_line(&[b], &[]),
        Duration::from_secs(10),
        &[a, b, c],
    );

    let (_, out) = a.ctl(&["cluster", "force-leave", &a.name]);
    assert_eq!(out, "Ignore.\n", "force-leave of self");
    let (code, out) = a.ctl(&["cluster", "force-leave", &b.name]);
    assert_eq!(
        out, "Failed to remove the node from cluster: node_not_in_cluster\n",
        "force-leave of a non-member"
    );
    assert_ne!(code, 0);
    // B does not come back by itself (it was removed, not just down).
    std::thread::sleep(Duration::from_secs(2));
    let (_, out) = a.ctl(&["cluster", "status"]);
    assert_eq!(out.trim_end(), status_line(&[a, c], &[]));
}

// ---------------------------------------------------------------------------
// 8. failure detection and restart
// ---------------------------------------------------------------------------

#[test]
fn killed_node_is_reported_stopped_traffic_continues_and_restart_rejoins() {
    let mut nodes = cluster(&[1, 2, 3]);
    let mut b = nodes.remove(1);
    let (a, c) = (&nodes[0], &nodes[1]);
    let mut sc = mq(c, "kd-sub-c");
    sc.sub("k/#", 1);
    let mut sb = mq(&b, "kd-sub-b");
    sb.sub("k/#", 1);
    wait_route(a, "k/#", c, true, Duration::from_secs(5));
    wait_route(a, "k/#", &b, true, Duration::from_secs(5));

    // A publishes to k/<i> at about 10 Hz from its own thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut p = mq(a, "kd-pub");
    let stop2 = stop.clone();
    let publisher = std::thread::spawn(move || {
        let mut i = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            p.publish(&format!("k/{i}"), 1, false, format!("{i}").as_bytes());
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        i
    });
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    b.kill();
    drop(sb);
    let down = status_line(&[a, c], &[&b]);
    for n in [a, c] {
        let left = (DOWN_TIMEOUT + Duration::from_secs(3)).saturating_sub(killed.elapsed());
        let (ok, out) = poll_ctl(n, &["cluster", "status"], left, |o| o.trim_end() == down);
        assert!(
            ok,
            "{} within down_timeout + 3 s of the kill:\n  got:      {}\n  expected: {down}\n{}",
            n.name,
            out.trim_end(),
            tails(&[a, c])
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.join().expect("publisher thread");
    let got = sc.collect(sent as usize, Duration::from_secs(5));
    let got: Vec<u32> = payloads(&got)
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let missing: Vec<u32> = (0..sent).filter(|i| !got.contains(i)).collect();
    assert!(
        missing.is_empty() && got.len() == sent as usize,
        "C must get all {sent} messages from A while B dies; missing {missing:?}, got {} in total\n{}",
        got.len(),
        tails(&[a, c])
    );

    // B comes back on the same data dir and rejoins by itself.
    let restarted = Instant::now();
    b.spawn(&[]);
    let all = status_line(&[a, &b, c], &[]);
    for n in [a, c, &b] {
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed());
        wait_status(n, &all, left, &[a, &b, c]);
    }
    let mut sb = mq(&b, "kd-sub-b2");
    sb.sub("k/#", 1);
    let mut p = mq(a, "kd-pub2");
    let mut got = Vec::new();
    while got.is_empty() && restarted.elapsed() < Duration::from_secs(15) {
        p.publish("k/again", 1, false, b"again");
        got = sb.collect(1, Duration::from_millis(500));
    }
    assert!(
        payloads(&got).contains(&"again".to_string()),
        "a subscriber on the restarted B gets nothing from A within 15 s\n{}",
        tails(&[a, &b])
    );
}

// ---------------------------------------------------------------------------
// 9. join errors
// ---------------------------------------------------------------------------

#[test]
fn join_reports_node_down_itself_and_already_in_cluster_like_emqx() {
    let a = node(1);
    let b = node(2);
    let t = Instant::now();
    let (code, out) = a.ctl(&["cluster", "join", "emqx9999@127.0.0.9"]);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        out,
        "Failed to join the cluster: {node_down,'emqx9999@127.0.0.9'}\n"
    );
    assert_ne!(code, 0, "a failed join exits non-zero");

    let (code, out) = a.ctl(&["cluster", "join", &a.name]);
    assert!(out.contains("cannot_join_itself"), "{out:?}");
    assert!(out.starts_with("Failed to join the cluster: "), "{out:?}");
    assert_ne!(code, 0);

    join(&b, &a);
    let (code, out) = b.ctl(&["cluster", "join", &a.name]);
    assert_eq!(
        out,
        format!(
            "Failed to join the cluster: {{already_in_cluster,'{}'}}\n",
            a.name
        )
    );
    assert_ne!(code, 0);
    let (_, out) = a.ctl(&["cluster", "join", &b.name]);
    assert_eq!(
        out,
        format!(
            "Failed to join the cluster: {{already_in_cluster,'{}'}}\n",
            b.name
        )
    );
    // Nothing changed.
    let (_, out) = a.ctl(&["cluster", "status"]);
    assert_eq!(out.trim_end(), status_line(&[&a, &b], &[]));
}

#[test]
fn node_with_another_cookie_cannot_join_and_target_logs_the_rejected_connection() {
    let a = node(1);
    let mut w = prepare(5);
    let text = std::fs::read_to_string(&w.config).expect("read config");
    let line = format!("cookie = \"{}\"", w.cookie);
    assert!(text.contains(&line), "config has no {line}: {text}");
    std::fs::write(&w.config, text.replace(&line, "cookie = \"othercookie\"")).expect("write");
    w.cookie = "othercookie".into();
    w.spawn(&[]);
    let t = Instant::now();
    let (code, out) = w.ctl(&["cluster", "join", &a.name]);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        out,
        format!("Failed to join the cluster: {{node_down,'{}'}}\n", a.name),
        "{}",
        tails(&[&a, &w])
    );
    assert_ne!(code, 0);
    let ok = common::wait_until(Duration::from_secs(3), || {
        a.log().contains("closed before authentication")
    });
    assert!(
        ok,
        "A logs the connection closed before authentication\n{}",
        tail(&a)
    );
    let (_, out) = a.ctl(&["cluster", "status"]);
    assert_eq!(out.trim_end(), status_line(&[&a], &[]));
    let (_, out) = w.ctl(&["cluster", "status"]);
    assert_eq!(out.trim_end(), status_line(&[&w], &[]));
}

// ---------------------------------------------------------------------------
// 10. socket addresses
// ---------------------------------------------------------------------------

#[test]
fn outgoing_inter_node_sockets_are_bound_to_the_nodes_own_address() {
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    // Traffic both ways so both forwarding links exist.
    let mut sa = mq(a, "bind-a");
    sa.sub("x/a", 1);
    let mut sb = mq(b, "bind-b");
    sb.sub("x/b", 1);
    wait_route(a, "x/b", b, true, Duration::from_secs(5));
    wait_route(b, "x/a", a, true, Duration::from_secs(5));
    let mut pa = mq(a, "bind-pa");
    pa.publish("x/b", 1, false, b"to-b");
    let mut pb = mq(b, "bind-pb");
    pb.publish("x/a", 1, false, b"to-a");
    assert_eq!(
        payloads(&sb.collect(1, Duration::from_secs(5))),
        vec!["to-b"]
    );
    assert_eq!(
        payloads(&sa.collect(1, Duration::from_secs(5))),
        vec!["to-a"]
    );
    // Let the ctl shells' connections close.
    std::thread::sleep(Duration::from_millis(500));
    let conns = established();
    let ip = |n: &Node| -> std::net::IpAddr { n.host.parse().expect("ip") };
    let mut dist_links = 0;
    for (server, client) in [(a, b), (b, a)] {
        for port in [server.dist_port, fwd_port(server)] {
            let target = SocketAddr::new(ip(server), port);
            let others: Vec<SocketAddr> = conns
                .iter()
                .filter_map(|(l, p)| {
                    if *p == target {
                        Some(*l)
                    } else if *l == target {
                        Some(*p)
                    } else {
                        None
                    }
                })
                .collect();
            // One ractor link serves both directions of the control
            // plane; each node dials its own forwarding link.
            if port == fwd_port(server) {
                assert!(
                    !others.is_empty(),
                    "no established connection to {target} ({}): {conns:?}",
                    server.name
                );
            } else {
                dist_links += others.len();
            }
            assert!(
                others.iter().all(|o| o.ip() == ip(client)),
                "connections to {target} of {} must come from {} only; they come from {others:?}",
                server.name,
                client.host
            );
        }
    }
    assert!(
        dist_links > 0,
        "no inter-node link between A and B: {conns:?}"
    );
}

// ---------------------------------------------------------------------------
// 11. cluster-wide management
// ---------------------------------------------------------------------------

#[test]
fn clients_are_listed_kicked_and_counted_cluster_wide() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
    use rumqttc::v5::{Client as C5, Event as E5, MqttOptions as O5};
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let _ca = mq(a, "mgmt-on-a");
    let _cb = mq(b, "mgmt-on-b");
    let mut o = O5::new("kick-me", b.host.clone(), b.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (_c5, mut conn) = C5::new(o, 10);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let err = ev.is_err();
            // rumqttc reports a server DISCONNECT as an error of the event loop.
            let ev = ev.map_err(|e| match e {
                rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                ) => Ok(reason_code),
                e => Err(format!("{e:?}")),
            });
            if tx.send(ev).is_err() || err {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(E5::Incoming(P5::ConnAck(_)))) => break,
            Ok(Ok(_)) => continue,
            other => panic!("kick-me: no CONNACK from B: {other:?}"),
        }
    }

    let (_, list) = a.ctl(&["clients", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("Client(kick-me,"))
        .unwrap_or_else(|| panic!("clients list on A lacks kick-me (on B):\n{list}"));
    assert!(
        line.ends_with(&format!(", node={})", b.name)),
        "the line names B: {line}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("Client(mgmt-on-a,")
                && l.ends_with(&format!(", node={})", a.name))),
        "{list}"
    );

    let (_, sa) = a.ctl(&["broker", "stats"]);
    let (_, sb) = b.ctl(&["broker", "stats"]);
    let (_, all) = a.ctl(&["broker", "stats", "--cluster"]);
    let (la, lb) = (
        stat(&sa, "connections.count"),
        stat(&sb, "connections.count"),
    );
    assert_eq!(
        (la, lb),
        (Some(1), Some(2)),
        "local counts:\nA:\n{sa}\nB:\n{sb}"
    );
    assert_eq!(
        stat(&all, "connections.count"),
        Some(3),
        "broker stats --cluster on A sums connections.count:\n{all}"
    );

    let (code, out) = a.ctl(&["clients", "kick", "kick-me"]);
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reason = None;
    let mut ended = false;
    while Instant::now() < deadline && !ended {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(E5::Incoming(P5::Disconnect(d)))) => {
                reason = Some(format!("{:?}", d.reason_code))
            }
            Ok(Ok(_)) => {}
            Ok(Err(Ok(rc))) => {
                reason = Some(format!("{rc:?}"));
                ended = true;
            }
            Ok(Err(Err(e))) => {
                reason.get_or_insert(format!("no DISCONNECT; connection error {e}"));
                ended = true;
            }
            Err(RecvTimeoutError::Disconnected) => ended = true,
            Err(RecvTimeoutError::Timeout) => break,
        }
    }
    assert!(
        ended,
        "kick on A did not disconnect kick-me on B within 5 s\n{}",
        tails(&[a, b])
    );
    assert_eq!(
        reason,
        Some(format!("{:?}", DisconnectReasonCode::AdministrativeAction)),
        "a kicked v5 client gets DISCONNECT 0x98"
    );
    let (ok, list) = poll_ctl(a, &["clients", "list"], Duration::from_secs(5), |o| {
        !o.contains("Client(kick-me,")
    });
    assert!(ok, "kick-me still listed after the kick:\n{list}");
    let (_, missing) = a.ctl(&["clients", "show", "kick-me"]);
    assert_eq!(missing, "Not Found.\n");
}

// ---------------------------------------------------------------------------
// 12. restart of the seed node
// ---------------------------------------------------------------------------

#[test]
fn restarted_node_rejoins_its_cluster_automatically() {
    let mut nodes = cluster(&[1, 2, 3]);
    let mut a = nodes.remove(0);
    let (b, c) = (&nodes[0], &nodes[1]);
    // A retained message the restarted node must get back.
    let mut pr = mq(b, "rj-retain-b");
    pr.publish("rk/kept", 1, true, b"kept");
    assert!(
        wait_until(Duration::from_secs(5), || retained_topics(&a)
            .contains(&"rk/kept".to_string())),
        "retained message not replicated before the restart"
    );
    let json = std::fs::read_to_string(a.data_dir().join("cluster.json"))
        .expect("membership is persisted in data_dir/cluster.json");
    assert!(json.contains(&b.name) && json.contains(&c.name), "{json}");
    a.kill();
    let restarted = Instant::now();
    a.spawn(&[]);
    let all = status_line(&[&a, b, c], &[]);
    for n in [&a, b, c] {
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed());
        wait_status(n, &all, left, &[&a, b, c]);
    }
    // The restarted node read its retained set from disk and synced it.
    assert!(
        wait_until(Duration::from_secs(10), || retained_topics(&a)
            .contains(&"rk/kept".to_string())),
        "restarted node did not get the retained set back: {}",
        tails(&[&a, b])
    );
    // Routes work both ways again.
    let mut sa = mq(&a, "rj-sub-a");
    sa.sub("rj/#", 1);
    wait_route(b, "rj/#", &a, true, Duration::from_secs(5));
    let mut pb = mq(b, "rj-pub-b");
    pb.publish("rj/1", 1, false, b"hello-a");
    assert_eq!(
        payloads(&sa.collect(1, Duration::from_secs(5))),
        vec!["hello-a"],
        "{}",
        tails(&[&a, b])
    );
}

/// A 3.1.1 client with clean_session = false; returns it and whether the
/// broker said a session was present.
#[test]
fn persistent_session_moves_to_the_node_the_client_reconnects_to_with_its_queued_messages() {
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (mut s, present) = mq_persistent(a, "tk-move");
    assert!(!present);
    s.sub("tk/#", 1);
    wait_route(b, "tk/#", a, true, Duration::from_secs(5));
    s.c.disconnect().expect("disconnect");
    s.wait_for(Duration::from_secs(2), |_| false);
    drop(s);
    // Published on B while the client is away: queued in its session on A.
    let mut p = mq(b, "tk-pub");
    for i in 0..3 {
        p.publish("tk/x", 1, false, format!("m{i}").as_bytes());
    }
    let (mut s2, present) = mq_persistent(b, "tk-move");
    assert!(
        present,
        "CONNACK on the other node must say session present"
    );
    assert_eq!(
        payloads(&s2.collect(3, Duration::from_secs(5))),
        vec!["m0", "m1", "m2"],
        "{}",
        tails(&[a, b])
    );
    // The route follows the session, and the client exists once, on B.
    wait_route(a, "tk/#", b, true, Duration::from_secs(5));
    wait_route(b, "tk/#", a, false, Duration::from_secs(5));
    let lines = client_lines(a, "tk-move");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with(&format!("node={})", b.name)),
        "{lines:?}"
    );
    // New messages reach it on B.
    p.publish("tk/y", 1, false, b"after");
    assert_eq!(
        payloads(&s2.collect(1, Duration::from_secs(5))),
        vec!["after"]
    );
}

#[test]
fn clean_start_elsewhere_discards_the_session_and_simultaneous_connects_leave_one() {
    let nodes = cluster(&[1, 2]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (s, _) = mq_persistent(a, "tk-clean");
    drop(s);
    let mut o = MqttOptions::new("tk-clean", b.host.clone(), b.mqtt_port);
    o.set_clean_session(true);
    let mut m = Mq::with("tk-clean", o, 100);
    let mut present = None;
    assert!(m.wait_for(Duration::from_secs(5), |e| match e {
        Event::Incoming(Packet::ConnAck(a)) => {
            present = Some(a.session_present);
            true
        }
        _ => false,
    }));
    assert_eq!(present, Some(false));
    assert!(
        wait_until(Duration::from_secs(5), || client_lines(a, "tk-clean").len()
            == 1),
        "{:?}",
        client_lines(a, "tk-clean")
    );
    // Two raw connects with one id on two nodes at the same moment.
    let mut ra = common::Raw::connect(a);
    let mut rb = common::Raw::connect(b);
    let pkt = common::connect_v4("tk-dup", 30);
    let t = std::thread::spawn({
        let pkt = pkt.clone();
        move || {
            ra.send(&pkt);
            ra
        }
    });
    rb.send(&pkt);
    let mut ra = t.join().expect("thread");
    assert!(wait_until(Duration::from_secs(10), || client_lines(
        a, "tk-dup"
    )
    .len()
        == 1));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(client_lines(a, "tk-dup").len(), 1, "{}", tails(&[a, b]));
    assert_eq!(client_lines(b, "tk-dup").len(), 1);
    // Exactly one of the two sockets is still open.
    let (_, closed_a) = ra.read_all(Duration::from_millis(500));
    let (_, closed_b) = rb.read_all(Duration::from_millis(500));
    assert!(closed_a ^ closed_b, "closed: a={closed_a} b={closed_b}");
}

#[test]
fn autoclean_removes_a_node_down_longer_than_the_period_and_tells_it_when_it_returns() {
    let extra = "cluster.autoclean = 4s";
    let mut nodes: Vec<Node> = [1u8, 2, 3]
        .iter()
        .map(|ip| {
            let mut n = prepare(*ip);
            let text = std::fs::read_to_string(&n.config).expect("config");
            std::fs::write(&n.config, format!("{text}\n{extra}\n")).expect("config");
            n.spawn(&[]);
            n
        })
        .collect();
    for i in 1..3 {
        join(&nodes[i], &nodes[0]);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let line = status_line(&all, &[]);
    for n in &nodes {
        wait_status(n, &line, Duration::from_secs(10), &all);
    }
    let mut sc = mq(&nodes[2], "ac-sub");
    sc.sub("ac/#", 1);
    wait_route(&nodes[0], "ac/#", &nodes[2], true, Duration::from_secs(5));
    drop(sc);
    let mut c = nodes.remove(2);
    c.kill();
    let (a, b) = (&nodes[0], &nodes[1]);
    // Down (3 s timeout), then removed after the 4 s period (checked every 1 s).
    let removed = status_line(&[a, b], &[]);
    for n in [a, b] {
        wait_status(n, &removed, Duration::from_secs(15), &[a, b]);
    }
    assert!(
        !routes(a).iter().any(|r| r.ends_with(&c.name)),
        "{:?}",
        routes(a)
    );
    let (_, metrics) = a.ctl(&["broker", "metrics"]);
    assert_eq!(
        stat(&metrics, "cluster.autoclean.removed"),
        Some(1),
        "{metrics}"
    );
    // It comes back (manual discovery): it is told it was removed and
    // stands alone instead of half in the cluster.
    c.spawn(&[]);
    let alone = status_line(&[&c], &[]);
    wait_status(&c, &alone, Duration::from_secs(15), &[&c, a, b]);
    for n in [a, b] {
        wait_status(n, &removed, Duration::from_secs(5), &[a, b]);
    }
}

// ---------------------------------------------------------------------------
// 12. the replicated durable storage's groups (developer preview)
// ---------------------------------------------------------------------------

#[test]
fn durable_storage_shards_form_on_the_cores_elect_again_and_follow_a_removed_core() {
    let env = ds_env("4/3/1");
    // Each node starts alone, so each makes the 4 shards' groups on its
    // own (n_sites = 1); the nodes that join drop theirs for the
    // cluster's.
    let mut nodes: Vec<Node> = [1u8, 2, 3]
        .iter()
        .map(|ip| {
            let mut n = prepare(*ip);
            n.spawn(&env);
            n
        })
        .collect();
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(15), || ds_settled(n, 4, &[n])),
            "{}: its own shards: {:?}\n{}",
            n.name,
            ds_rows(n),
            tail(n)
        );
    }
    for n in &nodes[1..] {
        join(n, &nodes[0]);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    for n in &all {
        assert!(
            wait_until(Duration::from_secs(30), || ds_settled(n, 4, &all)),
            "{}: every shard on the three cores: {:?}\n{}",
            n.name,
            ds_rows(n),
            tails(&all)
        );
        assert!(
            tail(n).contains("dropped 4 shard(s)") == (n.name != nodes[0].name),
            "only the nodes that joined drop their own shards\n{}",
            tail(n)
        );
    }
    // The cluster-wide view lists every node.
    let (_, out) = nodes[0].ctl(&["ds", "info"]);
    for n in &all {
        assert!(
            out.contains(&format!("Node {}: 4 shard(s)", n.name)),
            "{out}"
        );
    }
    // The leader reports its followers' lag.
    let leading: Vec<ShardRow> = all
        .iter()
        .flat_map(|n| ds_rows(n))
        .filter(|r| r.state == "Leader")
        .collect();
    assert_eq!(leading.len(), 4, "one leader per shard: {leading:?}");
    assert!(leading.iter().all(|r| r.lag.contains('=')), "{leading:?}");

    // kill -9 of the node that leads shard 0: the other two elect again.
    let led = leading
        .iter()
        .find(|r| r.shard == 0)
        .map(|r| r.leader.clone())
        .unwrap_or_default();
    let dead = nodes
        .iter()
        .position(|n| n.name == led)
        .expect("shard 0's leader is a node");
    let dead_name = nodes[dead].name.clone();
    let led_by_the_living = |nodes: &[Node]| {
        let alive: Vec<&Node> = nodes.iter().filter(|n| n.name != dead_name).collect();
        for n in &alive {
            assert!(
                wait_until(Duration::from_secs(20), || {
                    let rows = ds_rows(n);
                    rows.len() == 4
                        && rows.iter().all(|r| {
                            r.leader != dead_name && alive.iter().any(|a| a.name == r.leader)
                        })
                }),
                "{}: every shard led by a live core after the kill: {:?}\n{}",
                n.name,
                ds_rows(n),
                tails(&alive)
            );
        }
    };
    nodes[dead].kill();
    led_by_the_living(&nodes);
    // Back with its data directory, it takes its places again: its log
    // and vote were on disk; nothing is dropped.
    nodes[dead].spawn(&env);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_ds_settled(&all, 4, Duration::from_secs(30));
    assert!(
        !tail(&nodes[dead]).contains("ds: dropped"),
        "{}",
        tail(&nodes[dead])
    );
    nodes[dead].kill();
    led_by_the_living(&nodes);
    let alive: Vec<&Node> = nodes.iter().filter(|n| n.name != dead_name).collect();
    // Removed from the cluster, the dead core leaves every shard.
    let (code, out) = alive[0].ctl(&["cluster", "force-leave", &dead_name]);
    assert_eq!(code, 0, "{out}");
    for n in &alive {
        assert!(
            wait_until(Duration::from_secs(30), || ds_settled(n, 4, &alive)),
            "{}: the shards on the two cores left: {:?}\n{}",
            n.name,
            ds_rows(n),
            tails(&alive)
        );
    }
    // A core that leaves drops the cluster's shards and, alone, makes its
    // own again.
    let (code, out) = alive[1].ctl(&["cluster", "leave"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || ds_settled(
            alive[1],
            4,
            &[alive[1]]
        )),
        "{}: its own shards after leaving: {:?}\n{}",
        alive[1].name,
        ds_rows(alive[1]),
        tail(alive[1])
    );
    assert!(
        tail(alive[1]).contains("in the cluster it left"),
        "{}",
        tail(alive[1])
    );
}

#[test]
fn a_persistent_session_and_its_acknowledged_messages_come_back_from_the_session_store_when_its_node_was_killed(
) {
    let mut nodes = ds_cluster(&[4, 5, 6], "4/3/1", 4, "");
    // Subscribed on the first node, then offline.
    assert!(!subscribe_then_leave(&nodes[0], "ps-store", "ps/#", 2));
    wait_route(&nodes[2], "ps/#", &nodes[0], true, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    // Messages queued for it there, each acknowledged (PUBACK, PUBCOMP)
    // only once its shard committed it.
    let mut want: Vec<(String, u8)> = Vec::new();
    let mut p0 = mq(&nodes[0], "ps-pub0");
    for i in 0..10 {
        let q = if i % 4 == 3 { 2 } else { 1 };
        let body = format!("queued-{i}");
        p0.publish("ps/q", q, false, body.as_bytes());
        want.push((body, q));
    }
    // Its node is killed at once; the client comes back to another one.
    kill_first(&mut nodes);
    let (b, c) = (&nodes[1], &nodes[2]);
    let (mut s, present) = mq_persistent(b, "ps-store");
    assert!(
        present,
        "session_present = 1 from the session store\n{}",
        tails(&[b, c])
    );
    assert!(
        b.log()
            .contains("brought back from the cluster's session store"),
        "{}",
        tail(b)
    );
    // Every acknowledged message, in order, at the QoS it was queued with.
    let got: Vec<(String, u8)> = s
        .collect(want.len(), Duration::from_secs(10))
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.payload).to_string(), m.qos as u8))
        .collect();
    assert_eq!(
        got,
        want,
        "the queue came back from the shard\n{}",
        tails(&[b, c])
    );
    // The killed node comes back with its journal's stale copy: its shard
    // says another node holds the session now, so the copy goes.
    nodes[0].spawn(&ds_env("4/3/1"));
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    assert!(
        wait_until(Duration::from_secs(30), || a
            .log()
            .contains("1 held by another node now (discarded here)")),
        "{}",
        tail(a)
    );
    wait_route(c, "ps/#", b, true, Duration::from_secs(10));
    let mut p = mq(c, "ps-pub");
    p.publish("ps/x", 1, false, b"after");
    let got = payloads(&s.collect(1, Duration::from_secs(10)));
    assert_eq!(got, vec!["after".to_string()], "its subscription came back");
    drop(s);
    // A clean start ends it everywhere: nothing comes back afterwards.
    let m = Mq::open(c, "ps-store", true);
    std::thread::sleep(Duration::from_secs(1));
    drop(m);
    std::thread::sleep(Duration::from_millis(500));
    let (_s, present) = mq_persistent(b, "ps-store");
    assert!(
        !present,
        "a clean start dropped the stored session\n{}",
        tails(&[b, c])
    );
}

/// A persistent session's node is killed; what is published for it on
/// another node from then on waits there, queued for the dead node. The
/// node its client comes back to takes the session from its shard and
/// gathers those messages from the node that holds them: the client gets
/// every acknowledged message, once, in order (without the gathering, the
/// ten published after the kill are missing).
#[test]
fn a_node_taking_the_session_of_a_killed_node_gathers_what_other_nodes_held_for_it() {
    let mut nodes = ds_cluster(&[28, 29, 30], "4/3/1", 4, "");
    assert!(!subscribe_then_leave(&nodes[0], "gh-store", "gh/#", 2));
    wait_route(&nodes[2], "gh/#", &nodes[0], true, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let mut want: Vec<(String, u8)> = Vec::new();
    let mut p = mq(&nodes[2], "gh-pub");
    for i in 0..5 {
        let body = format!("before-{i}");
        p.publish("gh/q", 1, false, body.as_bytes());
        want.push((body, 1));
    }
    // Acknowledged by the session's node (on its disk and in the shard).
    kill_first(&mut nodes);
    // Published while the dead node still has the route: acknowledged,
    // and held by the publisher's node for the dead one.
    for i in 0..10 {
        let q = if i % 3 == 2 { 2 } else { 1 };
        let body = format!("after-{i}");
        p.publish("gh/q", q, false, body.as_bytes());
        want.push((body, q));
    }
    let (b, c) = (&nodes[1], &nodes[2]);
    let (mut s, present) = mq_back(b, "gh-store");
    assert!(present, "session_present = 1\n{}", tails(&[b, c]));
    let got: Vec<(String, u8)> = s
        .collect(want.len() + 1, Duration::from_secs(35))
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.payload).to_string(), m.qos as u8))
        .collect();
    assert_eq!(
        got,
        want,
        "every acknowledged message, once and in order\n{}",
        tails(&[b, c])
    );
    assert!(
        b.log().contains("10 queued, 0 it had already"),
        "{}",
        tail(b)
    );
    assert!(
        c.log().contains("copied to"),
        "the publisher's node copied what it held\n{}",
        tail(c)
    );
    // Its route moved: what comes next reaches it directly, once.
    p.publish("gh/q", 1, false, b"next");
    let got = payloads(&s.collect(2, Duration::from_secs(5)));
    assert_eq!(got, vec!["next".to_string()], "{}", tails(&[b, c]));
}

/// The lines of the nodes' logs that contain one of `words`.
fn grep_logs(nodes: &[&Node], words: &[&str]) -> String {
    let mut out = String::new();
    for n in nodes {
        for l in n
            .log()
            .lines()
            .filter(|l| words.iter().any(|w| l.contains(w)))
        {
            out.push_str(&format!("{}: {l}\n", n.name));
        }
    }
    out
}

/// A persistent subscriber connected to the first node while a publisher
/// on the third sends 200 QoS 1 messages, 20 ms apart; the first node is
/// killed mid-stream, and the subscriber comes back to the second. Every
/// acknowledged message reaches it, in the publisher's order (a message it
/// had been sent and not acknowledged may come again: QoS 1).
#[test]
fn a_connected_persistent_subscribers_node_killed_mid_stream_loses_no_acknowledged_message() {
    use rumqttc::QoS;
    let mut nodes = ds_cluster(&[31, 32, 33], "4/3/1", 4, "");
    let (mut s, _) = mq_persistent(&nodes[0], "fl-sub");
    s.sub("fl/#", 1);
    wait_route(&nodes[2], "fl/#", &nodes[0], true, Duration::from_secs(10));
    let (c, rx) = connected_client(&nodes[2], "fl-pub");
    const N: usize = 200;
    let publisher = std::thread::spawn(move || {
        for i in 0..N {
            c.publish("fl/q", QoS::AtLeastOnce, false, format!("m{i:03}"))
                .expect("publish");
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    });
    // A quarter of the way: its node dies.
    let mut before = payloads(&s.collect(N / 4, Duration::from_secs(20)));
    assert_eq!(before.len(), N / 4, "{}", tail(&nodes[0]));
    nodes[0].kill();
    before.extend(payloads(&s.collect(N, Duration::from_millis(200))));
    drop(s);
    let _c = publisher.join().expect("publisher");
    let acked = count_pubacks(&rx, N, Duration::from_secs(30));
    assert_eq!(
        acked,
        N,
        "every publish acknowledged\n{}",
        tails(&[&nodes[1], &nodes[2]])
    );
    let (b, p) = (&nodes[1], &nodes[2]);
    let (mut s, present) = mq_back(b, "fl-sub");
    assert!(present, "session_present = 1\n{}", tails(&[b, p]));
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: std::collections::BTreeSet<String> = before.iter().cloned().collect();
    while seen.len() < N && Instant::now() < deadline {
        for m in payloads(&s.collect(1, Duration::from_millis(500))) {
            seen.insert(m.clone());
            after.push(m);
        }
    }
    let want: Vec<String> = (0..N).map(|i| format!("m{i:03}")).collect();
    // Each first receipt in the publisher's order, every one there.
    let mut firsts: Vec<String> = Vec::new();
    for m in before.iter().chain(&after) {
        if !firsts.contains(m) {
            firsts.push(m.clone());
        }
    }
    assert_eq!(
        firsts,
        want,
        "{} before the kill, {} after\n{}\n{}",
        before.len(),
        after.len(),
        grep_logs(&[b, p], &["fl-", "gather", "held for"]),
        tails(&[b, p])
    );
    let again = before.len() + after.len() - N;
    eprintln!(
        "received {} before the kill, {} after, {again} again",
        before.len(),
        after.len()
    );
    assert!(again <= 100, "{again} sent again");
}

#[test]
fn a_session_back_from_its_nodes_journal_is_copied_to_its_shard_again() {
    back_then_lost(&[7, 8, 9], false);
}

#[test]
fn a_session_parked_at_a_clean_stop_is_copied_to_its_shard_again() {
    back_then_lost(&[13, 14, 15], true);
}

/// A persistent session with five acknowledged messages queued on the
/// first node, which goes (kill -9, or a clean stop) and comes back with
/// it (from its journal, or parked); five more are queued, and the node
/// is lost for good: its client finds all ten on another node (the last
/// five are missing when the copy is not made again after the restart).
fn back_then_lost(ips: &[u8], clean_stop: bool) {
    let env = ds_env("4/3/1");
    let mut nodes = ds_cluster(ips, "4/3/1", 4, "");
    subscribe_then_leave(&nodes[0], "rl-store", "rl/#", 1);
    let mut want = Vec::new();
    let mut p = mq(&nodes[0], "rl-pub");
    for i in 0..5 {
        let body = format!("before-{i}");
        p.publish("rl/q", 1, false, body.as_bytes());
        want.push(body);
    }
    drop(p);
    // Gone and back: the session comes back from the node's journal, or
    // parked, and its shard still names this node as its holder.
    if clean_stop {
        let st = nodes[0].cli(&["stop"]);
        assert!(st.status.success(), "{}", common::output_text(&st));
        assert!(wait_until(Duration::from_secs(10), || !nodes[0].alive()));
    } else {
        nodes[0].kill();
    }
    nodes[0].spawn(&env);
    assert!(
        wait_until(Duration::from_secs(30), || nodes[0]
            .log()
            .contains("1 copied to their shards again")),
        "{}",
        tail(&nodes[0])
    );
    // What is acknowledged now is in the shard too.
    let mut p = mq(&nodes[0], "rl-pub");
    for i in 0..5 {
        let body = format!("after-{i}");
        p.publish("rl/q", 1, false, body.as_bytes());
        want.push(body);
    }
    // The node is lost for good: the client finds all of it elsewhere.
    kill_first(&mut nodes);
    let (b, c) = (&nodes[1], &nodes[2]);
    let (mut s, present) = mq_persistent(b, "rl-store");
    assert!(present, "session_present = 1\n{}", tails(&[b, c]));
    let got = payloads(&s.collect(want.len(), Duration::from_secs(10)));
    assert_eq!(got, want, "\n{}", tails(&[b, c]));
}

#[test]
fn the_sessions_of_a_node_down_for_long_are_taken_by_a_live_core_which_queues_for_them_and_publishes_their_wills(
) {
    let mut nodes = ds_cluster(&[10, 11, 12], "4/3/1", 4, "");
    // An offline persistent subscriber, held by the first node.
    subscribe_then_leave(&nodes[0], "ad-sub", "ad/#", 1);
    wait_route(&nodes[2], "ad/#", &nodes[0], true, Duration::from_secs(10));
    // A persistent client with a will, connected to the first node when
    // it dies; its will is awaited on the second.
    let (mut w, _willer) = watched_will(&nodes, "ad");
    kill_first(&mut nodes);
    let (b, c) = (&nodes[1], &nodes[2]);
    // Published before the session is taken: held for the dead node by
    // the publisher's node, and gathered by the one that takes it.
    let mut p = mq(c, "ad-pub");
    let mut want: Vec<String> = (0..5).map(|i| format!("before-taken-{i}")).collect();
    for m in &want {
        p.publish("ad/q", 1, false, m.as_bytes());
    }
    // Down for 30 s: the leaders of the sessions' shards take them, and
    // their subscriptions route to a live node.
    let taken = |l: &str| l == format!("ad/# -> {}", b.name) || l == format!("ad/# -> {}", c.name);
    let (ok, out) = poll_ctl(b, &["topics", "list"], Duration::from_secs(40), |o| {
        o.lines().any(taken)
    });
    assert!(
        ok,
        "no live node took the session:\n{out}\n{}",
        tails(&[b, c])
    );
    // The will of the client connected to the dead node is published once.
    let got = payloads(&w.collect(1, Duration::from_secs(10)));
    assert_eq!(got, vec!["gone".to_string()], "\n{}", tails(&[b, c]));
    // What is published now is queued for the session on its new node,
    // each message acknowledged.
    let away: Vec<String> = (0..10).map(|i| format!("while-away-{i}")).collect();
    for m in &away {
        p.publish("ad/q", 1, false, m.as_bytes());
    }
    want.extend(away);
    // Its client comes back to the second node and finds all of it, once.
    let (mut s, present) = mq_persistent(b, "ad-sub");
    assert!(present, "session_present = 1\n{}", tails(&[b, c]));
    // A session gathering what was held for its node holds its deliveries
    // until the answers come (30 s at most).
    let got = payloads(&s.collect(want.len() + 1, Duration::from_secs(35)));
    assert_eq!(got, want, "\n{}", tails(&[b, c]));
    // The dead node comes back with both sessions in its journal: another
    // node holds each, so its copies go, and the will it holds for the
    // client that was connected is not published a second time.
    nodes[0].spawn(&ds_env("4/3/1"));
    let a = &nodes[0];
    assert!(
        wait_until(Duration::from_secs(30), || a
            .log()
            .contains("2 held by another node now (discarded here)")),
        "{}",
        tail(a)
    );
    assert!(
        w.collect(1, Duration::from_secs(3)).is_empty(),
        "the will went out once\n{}",
        tail(a)
    );
}

#[test]
fn a_cleanly_stopped_nodes_sessions_are_taken_without_publishing_their_wills_again() {
    let mut nodes = ds_cluster(&[16, 17, 18], "4/3/1", 4, "");
    let (mut w, _willer) = watched_will(&nodes, "cs");
    // The stop publishes the will of the connected client, which reaches
    // the subscriber on another node (the forwarding out is drained
    // before it closes), and parks its session with its last record,
    // without the will, in its shard.
    let st = nodes[0].cli(&["stop"]);
    assert!(st.status.success(), "{}", common::output_text(&st));
    assert!(wait_until(Duration::from_secs(10), || !nodes[0].alive()));
    let (b, c) = (&nodes[1], &nodes[2]);
    let got = payloads(&w.collect(1, Duration::from_secs(5)));
    assert_eq!(got, vec!["gone".to_string()], "{}", tail(&nodes[0]));
    // 30 s later a live node takes the session, its will already gone.
    let taken = "ds: sessions of down nodes: 1 brought back here";
    assert!(
        wait_until(Duration::from_secs(50), || b.log().contains(taken)
            || c.log().contains(taken)),
        "{}",
        tails(&[b, c])
    );
    assert!(
        w.collect(1, Duration::from_secs(3)).is_empty(),
        "the will was published again\n{}",
        tails(&[b, c])
    );
}

/// kill -9 of the node that holds a persistent session while another
/// node takes it over: the connect that asked for it (stuck while the
/// node is stopped) gets the session from its shard instead, with every
/// message acknowledged for it.
#[test]
fn a_node_killed_during_a_takeover_of_its_session_leaves_it_to_the_shards_copy() {
    let mut nodes = ds_cluster(&[19, 20, 21], "4/3/1", 4, "");
    subscribe_then_leave(&nodes[0], "tk-sub", "tk/#", 1);
    wait_route(&nodes[2], "tk/#", &nodes[0], true, Duration::from_secs(10));
    let mut p = mq(&nodes[2], "tk-pub");
    let want: Vec<String> = (0..10).map(|i| format!("queued-{i}")).collect();
    for m in &want {
        p.publish("tk/q", 1, false, m.as_bytes());
    }
    drop(p);
    // The holder stops answering, and the client connects to the second
    // node, which asks the holder to hand the session over.
    let pid = nodes[0].pid().expect("running").to_string();
    let st = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    assert!(st.success());
    let (first, rest) = nodes.split_at_mut(1);
    let b = &rest[0];
    let (mut s, present) = std::thread::scope(|sc| {
        let connect = sc.spawn(|| {
            let mut m = Mq::open(b, "tk-sub", false);
            let mut present = None;
            m.wait_for(Duration::from_secs(30), |e| match e {
                Event::Incoming(Packet::ConnAck(a)) => {
                    present = Some(a.session_present);
                    true
                }
                _ => false,
            });
            (m, present)
        });
        // The takeover is under way; the holder dies in it.
        std::thread::sleep(Duration::from_secs(1));
        first[0].kill();
        connect.join().expect("connect thread")
    });
    let (b, c) = (&nodes[1], &nodes[2]);
    assert_eq!(
        present,
        Some(true),
        "CONNACK with session_present = 1 ({:?})\n{}",
        s.error,
        tails(&[b, c])
    );
    let got = payloads(&s.collect(want.len(), Duration::from_secs(10)));
    let said: Vec<String> = [b, c]
        .iter()
        .flat_map(|n| {
            n.log()
                .lines()
                .filter(|l| l.contains("tk-sub"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, want, "\n{}", said.join("\n"));
}

/// kill -9 of the leader of a session's shard, neither the session's node
/// nor the publisher's, while QoS 1 messages for the session flow: each
/// waits (its PUBACK with it) for the shard to elect a new leader, and
/// the session gets every acknowledged message, in order.
#[test]
fn a_shard_leader_killed_mid_stream_loses_no_acknowledged_message_of_a_session_elsewhere() {
    use rumqttc::QoS;
    let mut nodes = ds_cluster(&[25, 26, 27], "1/3/1", 1, "");
    let leader_name = ds_rows(&nodes[0])
        .first()
        .map(|r| r.leader.clone())
        .expect("a shard");
    let leader = nodes
        .iter()
        .position(|n| n.name == leader_name)
        .expect("the leader is a node");
    let (s, p) = ((leader + 1) % 3, (leader + 2) % 3);
    subscribe_then_leave(&nodes[s], "ld-sub", "ld/#", 1);
    wait_route(&nodes[p], "ld/#", &nodes[s], true, Duration::from_secs(10));
    let mut pubr = mq(&nodes[p], "ld-pub");
    let want: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    for (i, m) in want.iter().enumerate() {
        if i == 10 {
            nodes[leader].kill();
        }
        pubr.c
            .publish("ld/x", QoS::AtLeastOnce, false, m.as_bytes().to_vec())
            .expect("publish");
        // Through the election: up to a few seconds.
        let ok = pubr.wait_for(Duration::from_secs(30), |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_)))
        });
        assert!(
            ok,
            "no PUBACK for {m} ({:?})\n{}",
            pubr.error,
            tails(&[&nodes[s], &nodes[p]])
        );
    }
    let (mut sub, present) = mq_persistent(&nodes[s], "ld-sub");
    assert!(present, "{}", tail(&nodes[s]));
    let got = payloads(&sub.collect(want.len(), Duration::from_secs(10)));
    assert_eq!(got, want, "{}", tails(&[&nodes[s], &nodes[p]]));
    // The shard is led again, by one of the two left.
    let two = [&nodes[s], &nodes[p]];
    assert!(
        wait_until(Duration::from_secs(30), || ds_rows(&nodes[s])
            .first()
            .is_some_and(|r| two.iter().any(|n| n.name == r.leader))),
        "{:?}",
        ds_rows(&nodes[s])
    );
}
