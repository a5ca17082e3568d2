//! Idle sessions hibernate (`mqtt.idle_timeout`, as in EMQX): their actor
//! goes away and their state waits until the next message for them.
//! These tests run real nodes with a 1 s idle timeout and independent
//! clients (rumqttc, mosquitto_sub), wait until the sessions are dormant
//! (the node's `session.hibernated` minus `session.woken` metrics), and
//! check that every kind of wake-up finds the session as it was: nothing
//! lost, nothing twice, nothing reordered.

mod common;

use common::cluster::{self, client_lines, mq, mq_persistent, payloads, Mq};
use common::{metric, wait_until, Node, Opts};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IDLE: &str = "mqtt.idle_timeout = 1s\n";

fn node() -> Node {
    Node::start_with(Opts {
        extra: IDLE.into(),
        ..Default::default()
    })
}

/// Sessions dormant now: every session that hibernated and was not woken
/// since (a session always ends from a running actor).
fn dormant(n: &Node) -> i64 {
    metric(n, "session.hibernated") as i64 - metric(n, "session.woken") as i64
}

fn wait_dormant(n: &Node, at_least: i64, why: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || dormant(n) >= at_least),
        "{why}: {} of {at_least} sessions dormant after 10 s\n{}",
        dormant(n),
        cluster::tail(n)
    );
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn idle_sessions_hibernate_and_wake_for_deliveries_publishes_and_subscribes() {
    let n = node();
    let mut subs: Vec<Mq> = (0..3).map(|q| mq(&n, &format!("hs{q}"))).collect();
    for (q, s) in subs.iter_mut().enumerate() {
        s.sub("h/t", q as u8);
    }
    let mut p = mq(&n, "hp");
    wait_dormant(&n, 4, "four idle clients");

    // Listing the clients answers from the dormant state: it wakes none.
    let woken = metric(&n, "session.woken");
    for id in ["hs0", "hs1", "hs2", "hp"] {
        assert_eq!(client_lines(&n, id).len(), 1, "{id} listed");
    }
    assert_eq!(
        metric(&n, "session.woken"),
        woken,
        "clients list woke sessions"
    );

    // The publisher's PUBLISH wakes it; each delivery wakes a subscriber.
    for round in 0..2 {
        let want = numbered(&format!("r{round}-"), 30);
        for (i, m) in want.iter().enumerate() {
            p.publish("h/t", (i % 3) as u8, false, m.as_bytes());
        }
        for (q, s) in subs.iter_mut().enumerate() {
            let got = s.collect(want.len(), Duration::from_secs(10));
            assert_eq!(payloads(&got), want, "hs{q}, round {round}");
            for (i, m) in got.iter().enumerate() {
                let expected = cluster::qos((i % 3).min(q) as u8);
                assert_eq!(m.qos, expected, "hs{q}: QoS of message {i}");
            }
            assert!(
                s.quiet(Duration::from_millis(300)).is_empty(),
                "hs{q}: extra"
            );
        }
        wait_dormant(&n, 4, "idle again after a round of messages");
    }

    // A SUBSCRIBE and an UNSUBSCRIBE wake the session and take effect.
    subs[1].sub("h2/#", 2);
    subs[2].unsub("h/t");
    wait_dormant(&n, 4, "idle after subscribing");
    p.publish("h2/x", 2, false, b"deep");
    p.publish("h/t", 1, false, b"last");
    let got = subs[1].collect(2, Duration::from_secs(10));
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|m| (m.topic.clone(), String::from_utf8_lossy(&m.payload).into()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("h/t".to_string(), "last".to_string()),
            ("h2/x".to_string(), "deep".to_string())
        ]
    );
    assert!(
        subs[2].quiet(Duration::from_millis(700)).is_empty(),
        "hs2 unsubscribed while its session slept"
    );
    let m = metric(&n, "session.hibernated");
    assert!(m >= 12, "only {m} hibernations");
}

#[test]
fn a_dormant_offline_session_queues_messages_and_resumes_with_them() {
    let n = node();
    let (mut s, present) = mq_persistent(&n, "ho");
    assert!(!present);
    s.sub("ho/t", 1);
    s.c.disconnect().expect("disconnect");
    let _ = s.quiet(Duration::from_millis(300));
    drop(s);
    let mut p = mq(&n, "hop");
    wait_dormant(&n, 2, "an offline session and a publisher");

    let want = numbered("q", 40);
    for m in &want {
        p.publish("ho/t", 1, false, m.as_bytes());
    }
    wait_dormant(&n, 2, "the offline session, back to sleep with its queue");
    let lines = client_lines(&n, "ho");
    assert!(
        lines.len() == 1 && lines[0].contains("connected=false"),
        "listed offline while dormant: {lines:?}"
    );

    let (mut s, present) = mq_persistent(&n, "ho");
    assert!(present, "session present after sleeping");
    let got = s.collect(want.len(), Duration::from_secs(10));
    assert_eq!(payloads(&got), want);
    assert!(s.quiet(Duration::from_millis(500)).is_empty());
}

#[test]
fn deliveries_racing_the_reconnect_of_a_dormant_session_arrive_once_in_order() {
    let n = node();
    for round in 0..3i64 {
        let id = format!("hr{round}");
        let topic = format!("hr/{round}");
        let (mut s, _) = mq_persistent(&n, &id);
        s.sub(&topic, 1);
        s.c.disconnect().expect("disconnect");
        let _ = s.quiet(Duration::from_millis(300));
        drop(s);
        // Every offline session of this test sleeps (the publishers'
        // sessions ended with their connections).
        wait_dormant(&n, round + 1, "the offline sessions");
        // A publisher streams while the client comes back.
        let want = numbered("m", 300);
        let pub_node = n.mqtt_port;
        let (host, t, w) = (n.host.clone(), topic.clone(), want.clone());
        let publisher = std::thread::spawn(move || {
            let mut o = rumqttc::MqttOptions::new(format!("hrp{round}"), host, pub_node);
            o.set_keep_alive(Duration::from_secs(30));
            let (c, mut conn) = rumqttc::Client::new(o, 1000);
            let mut acked = 0;
            for m in &w {
                c.publish(t.as_str(), rumqttc::QoS::AtLeastOnce, false, m.as_bytes())
                    .expect("publish");
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            for ev in conn.iter() {
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev {
                    acked += 1;
                    if acked == w.len() {
                        break;
                    }
                }
                if ev.is_err() || Instant::now() > deadline {
                    break;
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(20 * round as u64));
        let (mut s, present) = mq_persistent(&n, &id);
        assert!(present, "{id}: session present");
        let got = s.collect(want.len(), Duration::from_secs(20));
        assert_eq!(publisher.join().expect("publisher"), want.len());
        assert_eq!(payloads(&got), want, "{id}: every message once, in order");
        assert!(
            s.quiet(Duration::from_millis(500)).is_empty(),
            "{id}: extra"
        );
        s.c.disconnect().expect("disconnect");
        let _ = s.quiet(Duration::from_millis(300));
    }
}

#[test]
fn a_connected_dormant_session_is_taken_over_and_kicked() {
    let n = node();
    let (mut old, _) = mq_persistent(&n, "ht");
    old.sub("ht/t", 1);
    let mut k = mq(&n, "hk");
    wait_dormant(&n, 2, "two idle connected clients");

    // A new connection of the same client takes the session over.
    let (mut new, present) = mq_persistent(&n, "ht");
    assert!(present, "taken over from its dormant session");
    assert!(
        !old.wait_for(Duration::from_secs(5), |_| false) && old.error.is_some(),
        "the old connection is closed"
    );
    let mut p = mq(&n, "htp");
    p.publish("ht/t", 1, false, b"to-new");
    assert_eq!(
        payloads(&new.collect(1, Duration::from_secs(5))),
        vec!["to-new"]
    );

    // `ctl clients kick` ends a dormant session and its connection.
    wait_dormant(&n, 3, "idle again");
    let (code, out) = n.ctl(&["clients", "kick", "hk"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !k.wait_for(Duration::from_secs(5), |_| false) && k.error.is_some(),
        "the kicked client's connection is closed"
    );
    assert!(client_lines(&n, "hk").is_empty(), "hk still listed");
}

/// `mosquitto_sub` (MQTT 5) with a session expiry and a delayed will,
/// killed so that its connection drops without DISCONNECT.
fn v5_client_with_will(n: &Node, id: &str, expiry: u32, delay: u32) -> std::process::Child {
    let port = n.mqtt_port.to_string();
    let (expiry, delay) = (expiry.to_string(), delay.to_string());
    let will = format!("w/{id}");
    let mut c = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-i", id, "-c"])
        .args(["-x", &expiry, "-t", "nothing/here", "-q", "1"])
        .args([
            "--will-topic",
            &will,
            "--will-payload",
            "bye",
            "--will-qos",
            "1",
        ])
        .args(["-D", "will", "will-delay-interval", &delay])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    assert!(
        wait_until(Duration::from_secs(5), || client_lines(n, id).len() == 1),
        "{id} never connected: {:?}",
        c.try_wait()
    );
    c
}

#[test]
fn a_will_delay_and_a_session_expiry_run_out_while_the_session_sleeps() {
    let n = node();
    let mut watcher = mq(&n, "hw");
    watcher.sub("w/#", 1);
    let mut c = v5_client_with_will(&n, "hv", 7, 4);
    let _ = c.kill();
    let _ = c.wait();
    let t0 = Instant::now();
    wait_dormant(&n, 2, "the offline session and the watcher");
    let slept = metric(&n, "session.hibernated");
    assert!(
        watcher.quiet(Duration::from_millis(200)).is_empty(),
        "will before its delay"
    );

    let got = watcher.collect(1, Duration::from_secs(8));
    let at = t0.elapsed();
    assert_eq!(payloads(&got), vec!["bye"], "the delayed will");
    assert_eq!(got[0].topic, "w/hv");
    assert!(
        at >= Duration::from_millis(3000),
        "will after {at:?}, before its 4 s delay"
    );
    assert!(slept >= 2, "the session slept before its will");

    // The session expires 7 s after the drop, woken by its own timer.
    assert!(
        wait_until(Duration::from_secs(10), || client_lines(&n, "hv")
            .is_empty()),
        "hv still listed 10 s after the will"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(6),
        "expired after {:?}, before its 7 s",
        t0.elapsed()
    );
    assert!(
        watcher.quiet(Duration::from_millis(500)).is_empty(),
        "a second will"
    );
}

#[test]
fn a_dormant_session_is_taken_over_from_another_node() {
    let nodes = cluster::cluster_with(&[1, 2], IDLE);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let (mut s, _) = mq_persistent(n1, "hx");
    s.sub("hx/t", 1);
    s.c.disconnect().expect("disconnect");
    let _ = s.quiet(Duration::from_millis(300));
    drop(s);
    cluster::wait_route(n2, "hx/t", n1, true, Duration::from_secs(10));
    let mut p = mq(n2, "hxp");
    wait_dormant(n1, 1, "the offline session on node 1");
    let want = numbered("x", 20);
    for m in &want {
        p.publish("hx/t", 1, false, m.as_bytes());
    }
    wait_dormant(n1, 1, "node 1's session, back to sleep with its queue");

    let (mut s, present) = mq_persistent(n2, "hx");
    assert!(present, "taken over from node 1's dormant session");
    let got = s.collect(want.len(), Duration::from_secs(10));
    assert_eq!(payloads(&got), want);
    assert!(
        wait_until(Duration::from_secs(5), || client_lines(n1, "hx").len() == 1),
        "listed once in the cluster"
    );
    p.publish("hx/t", 1, false, b"after");
    assert_eq!(
        payloads(&s.collect(1, Duration::from_secs(5))),
        vec!["after"]
    );
}

/// Sessions kept on disk come back asleep: their routes are in place and
/// no actor runs for them until a message comes (issue 16's "without
/// waking an actor per session").
#[test]
fn sessions_back_from_disk_come_back_asleep_with_their_routes() {
    // The default idle timeout (15 s): no sweep runs during the test, so
    // every dormant session came back that way.
    let mut n = Node::start_with(Opts {
        extra: "durable_sessions.enable = true\n".into(),
        ..Default::default()
    });
    let ids: Vec<String> = (0..20).map(|i| format!("hd{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (mut s, _) = mq_persistent(&n, id);
        s.sub(&format!("hd/{i}"), 1);
        s.c.disconnect().expect("disconnect");
        let _ = s.quiet(Duration::from_millis(100));
    }
    for (round, hard) in [(0, false), (1, true)] {
        if hard {
            n.kill();
        } else {
            let st = n.cli(&["stop"]);
            assert!(st.status.success(), "{}", common::output_text(&st));
            assert!(wait_until(Duration::from_secs(10), || !n.alive()));
        }
        n.spawn(&[]);
        assert_eq!(dormant(&n), 20, "round {round}: all 20 back asleep");
        assert_eq!(metric(&n, "session.woken"), 0, "round {round}");
        // Their routes are there: a publish reaches the one it is for
        // (waking it), and only that one.
        let mut p = mq(&n, "hdp");
        p.publish("hd/7", 1, false, format!("r{round}").as_bytes());
        assert!(
            wait_until(Duration::from_secs(5), || metric(&n, "session.woken") >= 1),
            "round {round}: the delivery woke no session"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            metric(&n, "session.woken"),
            1,
            "round {round}: the delivery woke others"
        );
        p.c.disconnect().expect("disconnect");
        let _ = p.quiet(Duration::from_millis(200));
        let (mut s, present) = mq_persistent(&n, "hd7");
        assert!(present, "round {round}: hd7's session");
        assert_eq!(
            payloads(&s.collect(1, Duration::from_secs(5))),
            vec![format!("r{round}")]
        );
        s.c.disconnect().expect("disconnect");
        let _ = s.quiet(Duration::from_millis(300));
    }
}
