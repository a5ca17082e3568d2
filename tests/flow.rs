//! Flow control end to end: a QoS 1 subscriber that stops reading must
//! slow its publisher down (back-pressure through the publisher's TCP
//! window) instead of losing what the broker already acknowledged, and the
//! subscriber's acknowledgements must not wait behind the deliveries
//! queued for it.

mod common;

use common::{bench_pub, metric, offline_session, wait_suback, Node};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_qos1_subscriber_throttles_its_publisher_and_loses_nothing() {
    let n = Node::start();
    const TOTAL: usize = 20_000;

    // The subscriber subscribes, then stops reading for a while.
    let mut o = MqttOptions::new("slow-sub", "127.0.0.1", n.mqtt_port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    let (c, mut el) = AsyncClient::new(o, 100);
    c.subscribe("flow/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_suback(&mut el, "subscriber").await;

    // The publisher: QoS 1, as fast as its window of 100 allows. Without
    // back-pressure it would have every message acknowledged in a second
    // or two, far more than the subscriber's inbox holds (10,000).
    let total = TOTAL.to_string();
    let publisher = bench_pub(
        n.mqtt_port,
        &["-c", "1", "-q", "1", "--inflight", "100", "-s", "16"],
    )
    .args(["-t", "flow/1", "-I", "0", "-L", &total])
    .spawn()
    .expect("spawn bench pub");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Now read: every message must arrive, once.
    let publishes = receive_distinct(
        &mut el,
        TOTAL,
        |p| p.to_vec(),
        || format!("dropped: {}", metric(&n, "delivery.dropped")),
    )
    .await;
    let mut publisher = publisher;
    let _ = publisher.wait();
    assert_eq!(metric(&n, "delivery.dropped.queue_full"), 0);
    assert_eq!(metric(&n, "delivery.dropped"), 0);
    assert!(
        metric(&n, "client.throttled") >= 1,
        "the publisher was never paused"
    );
    assert_eq!(publishes, TOTAL, "no duplicates");
}

/// Polls `el` until `total` distinct messages (told apart by `key` of
/// their payload) have arrived, within 120 s and with no gap of 10 s;
/// returns how many PUBLISHes came. `state` describes the broker on
/// failure.
async fn receive_distinct(
    el: &mut rumqttc::EventLoop,
    total: usize,
    key: impl Fn(&[u8]) -> Vec<u8>,
    state: impl Fn() -> String,
) -> usize {
    let mut seen = HashSet::new();
    let mut publishes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} distinct messages arrived ({publishes} publishes); {}",
            seen.len(),
            state()
        );
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                publishes += 1;
                seen.insert(key(&p.payload));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber failed: {e}"),
            Err(_) => panic!(
                "nothing for 10 s after {} of {total}; {}",
                seen.len(),
                state()
            ),
        }
    }
    publishes
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Publishes `count` QoS 1 messages of `size` bytes to `topic`, and waits.
fn publish_all(n: &Node, topic: &str, size: usize, count: usize) {
    let st = bench_pub(n.mqtt_port, &["-c", "1", "-q", "1", "--inflight", "20"])
        .args(["-s", &size.to_string(), "-t", topic, "-I", "0"])
        .args(["-L", &count.to_string()])
        .status()
        .expect("bench pub");
    assert!(st.success(), "bench pub: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_sessions_stop_at_their_byte_bound() {
    // 10 offline persistent sessions on big/#, then 1000 messages of 512 KB
    // (500 MB). Without a byte bound each session would keep all of them
    // (max_mqueue_len is 1000); with the default 32 MB bound each keeps
    // the newest 63, the same shared 32 MB for all ten. The ceiling leaves
    // room for the allocator's retained free memory.
    let n = Node::start();
    const SESSIONS: usize = 10;
    const SIZE: usize = 512 * 1024;
    const COUNT: usize = 1000;
    for i in 0..SESSIONS {
        offline_session(&n, &format!("offline-{i}"), "big/#").await;
    }
    let pid = n.pid().expect("pid");
    let before = rss(pid);
    publish_all(&n, "big/1", SIZE, COUNT);
    let grown = rss(pid).saturating_sub(before);
    eprintln!("RSS grew by {} MB", grown / (1024 * 1024));
    assert!(
        grown < 160 * 1024 * 1024,
        "RSS grew by {} MB for 10 sessions bounded at 32 MB each, sharing the messages",
        grown / (1024 * 1024)
    );
    let per = 32 * 1024 * 1024 / (SIZE + "big/1".len());
    let dropped = metric(&n, "delivery.dropped.queue_full");
    assert!(
        dropped >= (SESSIONS * (COUNT - per)) as u64,
        "only {dropped} drops counted"
    );

    // One session comes back: the newest messages, at most the bound.
    let mut o = MqttOptions::new("offline-0", "127.0.0.1", n.mqtt_port);
    o.set_clean_session(false);
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (_c, mut el) = AsyncClient::new(o, 10);
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                assert_eq!(p.payload.len(), SIZE);
                got += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("resumed session failed: {e}"),
            Err(_) => break,
        }
    }
    assert!(got > 0 && got <= per, "{got} messages kept, bound {per}");
}

#[test]
fn force_shutdown_disconnects_a_client_past_max_heap_size() {
    // A v5 client that reads and never acknowledges, with 1 MB allowed:
    // 400 messages of 8 KB pass it, and it is told why it goes.
    let n = Node::start_with(common::Opts {
        extra: "force_shutdown.max_heap_size = 1MB\n".into(),
        ..Default::default()
    });
    let mut raw = common::Raw::connect(&n);
    raw.send(&common::connect_v5("hoarder", 0));
    let (b, _) = raw.read_all(Duration::from_millis(500));
    assert_eq!(b.first(), Some(&0x20), "CONNACK");
    raw.send(&common::frame(
        0x82,
        &[0, 1, 0, 0, 5, b'h', b'o', b'a', b'r', b'd', 1],
    ));
    let (b, _) = raw.read_all(Duration::from_millis(500));
    assert_eq!(b.first(), Some(&0x90), "SUBACK");
    let publisher = std::thread::spawn({
        let port = n.mqtt_port;
        move || {
            bench_pub(
                port,
                &["-c", "1", "-q", "1", "--inflight", "20", "-s", "8192"],
            )
            .args(["-t", "hoard", "-I", "0", "-L", "400"])
            .status()
            .expect("bench pub")
        }
    });
    let (b, closed) = raw.read_all(Duration::from_secs(30));
    assert!(closed, "still connected after {} bytes", b.len());
    // The last packet is a DISCONNECT with 0x97 (quota exceeded).
    let (mut i, mut last) = (0, None);
    while i < b.len() {
        let start = i;
        i += 1;
        let len = common::read_varint(&b, &mut i);
        if i + len > b.len() {
            break;
        }
        last = Some((b[start], b.get(i).copied()));
        i += len;
    }
    assert_eq!(last, Some((0xE0, Some(0x97))), "DISCONNECT, quota exceeded");
    assert!(publisher.join().expect("join").success());
    assert_eq!(metric(&n, "client.force_shutdown"), 1);
    assert!(n.log().contains("force shutdown"), "{}", n.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_large_messages_is_held_within_its_bound_and_loses_nothing() {
    // 120 messages of 512 KB (60 MB) at QoS 1 to a subscriber that takes
    // 20 ms per message: more than its 32 MB bound is in the air, but it
    // keeps taking, so the rest waits (the publisher slowed down) instead
    // of being dropped or the subscriber being disconnected.
    let n = Node::start();
    const TOTAL: usize = 120;
    let mut o = MqttOptions::new("big-reader", "127.0.0.1", n.mqtt_port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("bigflow/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_suback(&mut el, "subscriber").await;
    let port = n.mqtt_port;
    let publisher = std::thread::spawn(move || {
        bench_pub(
            port,
            &["-c", "1", "-q", "1", "--inflight", "32", "-s", "524288"],
        )
        .args(["-t", "bigflow/1", "-I", "0", "-L", &TOTAL.to_string()])
        .status()
        .expect("bench pub")
    });
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < TOTAL {
        assert!(Instant::now() < deadline, "{got} of {TOTAL}");
        match tokio::time::timeout(Duration::from_secs(15), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                assert_eq!(p.payload.len(), 524288);
                got += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Ok(_)) => {}
            other => panic!("subscriber failed after {got}: {other:?}\n{}", n.log()),
        }
    }
    assert!(publisher.join().expect("join").success());
    assert_eq!(metric(&n, "client.force_shutdown"), 0);
    assert_eq!(metric(&n, "delivery.dropped"), 0);
}

/// A node whose forwarding connection stops taking messages (SIGSTOP)
/// must hold back the QoS 1 publishers of the node that forwards to it,
/// not acknowledge their messages and then drop them past twice the
/// forwarding queue's limit (10,000 per connection); and once it reads
/// again, a subscriber there that falls behind must slow the forwarding
/// connection instead of losing what its full inbox cannot take.
///
/// Without durable sessions: with them, the publishers wait for b's
/// acknowledgement of each message instead (until b is seen down, 3 s
/// into its stop here), which the tests of tests/partition.rs cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_node_holds_back_qos1_publishers_and_loses_nothing() {
    use common::cluster;
    let nodes = cluster::cluster_with(&[1, 2], "durable_sessions.enable = false\n");
    let (a, b) = (&nodes[0], &nodes[1]);
    const PUBLISHERS: usize = 4;
    const EACH: usize = 10_000;
    const TOTAL: usize = PUBLISHERS * EACH;

    let mut o = MqttOptions::new("xn-sub", b.host.clone(), b.mqtt_port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    let (c, mut el) = AsyncClient::new(o, 100);
    c.subscribe("xn/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_suback(&mut el, "subscriber").await;
    cluster::wait_route(a, "xn/#", b, true, Duration::from_secs(5));

    // b stops reading anything for 4 s (b is seen down after 3).
    let pid = b.pid().expect("b runs").to_string();
    let stop = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {pid}");
    };
    // The publishers connect first (a connect asks every node about its
    // client id), then b stops.
    let each = EACH.to_string();
    let mut publisher = bench_pub(
        a.mqtt_port,
        &[
            "-h",
            &a.host,
            "-c",
            "4",
            "-q",
            "1",
            "--inflight",
            "100",
            "-s",
            "16",
        ],
    )
    .args(["-t", "xn/1", "-I", "0", "-L", &each])
    .spawn()
    .expect("spawn bench pub");
    assert!(
        common::wait_until(Duration::from_secs(10), || a
            .ctl(&["clients", "list"])
            .1
            .lines()
            .filter(|l| l.starts_with("Client(") && l.contains("connected=true"))
            .count()
            >= PUBLISHERS),
        "{}",
        a.ctl(&["clients", "list"]).1
    );
    stop("-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = metric(a, "client.throttled");
    let dropped_while_stopped = metric(a, "messages.forward.dropped");
    let (_, fwd) = a.ctl(&["cluster", "forwarding"]);
    stop("-CONT");
    assert!(
        held >= 1,
        "the publishers were never held back (forward dropped {dropped_while_stopped}):\n{fwd}"
    );
    assert_eq!(
        dropped_while_stopped, 0,
        "acknowledged messages dropped by the forwarding queue"
    );

    // Every message arrives, once: told apart by the (publisher,
    // sequence number) of the bench payload.
    let publishes = receive_distinct(
        &mut el,
        TOTAL,
        |p| p.get(8..16).map(<[u8]>::to_vec).unwrap_or_default(),
        || {
            format!(
                "forward dropped on a: {}, dropped on b: {}",
                metric(a, "messages.forward.dropped"),
                metric(b, "delivery.dropped")
            )
        },
    )
    .await;
    let _ = publisher.wait();
    assert_eq!(metric(a, "messages.forward.dropped"), 0);
    assert_eq!(metric(b, "delivery.dropped"), 0);
    assert_eq!(publishes, TOTAL, "no duplicates");
}
