//! The inter-node forwarding channel over real sockets on loopback.

use bytes::Bytes;
use emqx_actors::durable::Ticket;
use emqx_actors::forward::{handshake, ForwardConfig, ForwardError, Forwarder, OnReceive, Queued};
use emqx_mqtt::message::Message;
use emqx_mqtt::packet::{Properties, PropertyValues, QoS};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const COOKIE: &str = "s3cret";

fn any_port() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

fn cfg(node: &str, cookie: &str) -> ForwardConfig {
    let mut c = ForwardConfig::new(node, cookie, any_port());
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_secs(1);
    c
}

/// Everything a node received, with the sending node's name.
#[derive(Default)]
struct Sink {
    msgs: Mutex<Vec<(String, Message)>>,
    count: AtomicUsize,
}

impl Sink {
    fn on_receive(self: &Arc<Self>) -> OnReceive {
        let me = self.clone();
        Arc::new(
            move |from: &str, m: Message, _shared: Option<(String, String)>, _at: (u64, u64)| {
                me.msgs.lock().push((from.to_owned(), m));
                me.count.fetch_add(1, Ordering::Release);
                (None, None)
            },
        )
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.len() < n {
            assert!(
                Instant::now() < deadline,
                "received {} of {n} messages within {within:?}",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A counting sink that keeps nothing, for the throughput run.
fn counting(count: Arc<AtomicUsize>) -> OnReceive {
    Arc::new(
        move |_: &str, _: Message, _: Option<(String, String)>, _: (u64, u64)| {
            count.fetch_add(1, Ordering::Relaxed);
            (None, None)
        },
    )
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn msg(topic: &str, seq: u64, qos: QoS) -> Message {
    let mut m = Message::system(
        topic,
        format!("{topic}#{seq}"),
        seq.is_multiple_of(3),
        emqx_actors::clock::now_ms(),
    );
    m.qos = qos;
    m.from = Arc::from(format!("client-{}", seq % 7).as_str());
    m.timestamp_ms = 1_700_000_000_000 + seq;
    m.expiry_secs = if seq.is_multiple_of(2) {
        Some(30 + seq as u32)
    } else {
        None
    };
    m.properties = Properties::from(PropertyValues {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some(format!("reply/{topic}")),
        correlation_data: Some(Bytes::from(seq.to_be_bytes().to_vec())),
        user_properties: vec![("seq".into(), seq.to_string()), ("k".into(), "v".into())],
        ..Default::default()
    });
    m
}

fn seq_of(m: &Message) -> u64 {
    let s = std::str::from_utf8(&m.payload).unwrap();
    s.rsplit('#').next().unwrap().parse().unwrap()
}

/// Checks that each topic's messages arrived complete and in order.
fn check_order(received: &[(String, Message)], per_topic: &HashMap<String, u64>) {
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (_, m) in received {
        let n = next.entry(&m.topic).or_insert(0);
        assert_eq!(seq_of(m), *n, "topic {} out of order", m.topic);
        *n += 1;
    }
    for (t, count) in per_topic {
        assert_eq!(
            next.get(t.as_str()).copied().unwrap_or(0),
            *count,
            "topic {t} incomplete"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_arrive_intact_and_in_order() {
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", b.local_addr());
    a.add_peer("b@host", b.local_addr()); // idempotent

    let topics: Vec<String> = (0..10).map(|i| format!("t/{i}")).collect();
    let mut sent = Vec::new();
    let mut per_topic = HashMap::new();
    for seq in 0..10_000u64 {
        let topic = &topics[(seq % 10) as usize];
        let n = per_topic.entry(topic.clone()).or_insert(0u64);
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][(seq % 3) as usize];
        let m = msg(topic, *n, qos);
        *n += 1;
        a.forward("b@host", Arc::new(m.clone())).unwrap();
        sent.push(m);
    }
    sink.wait_for(10_000, Duration::from_secs(20)).await;

    let got = sink.msgs.lock().clone();
    assert_eq!(got.len(), 10_000);
    check_order(&got, &per_topic);
    let by_key: HashMap<(String, u64), &Message> = sent
        .iter()
        .map(|m| ((m.topic.to_string(), seq_of(m)), m))
        .collect();
    for (from, m) in &got {
        assert_eq!(from, "a@host");
        let orig = by_key[&(m.topic.to_string(), seq_of(m))];
        assert_eq!(m.payload, orig.payload);
        assert_eq!(m.qos, orig.qos);
        assert_eq!(m.retain, orig.retain);
        assert_eq!(m.from, orig.from);
        assert_eq!(m.timestamp_ms, orig.timestamp_ms);
        assert_eq!(m.expiry_secs, orig.expiry_secs);
        assert_eq!(m.properties, orig.properties);
    }
    let pa = &a.peers()[0];
    assert_eq!((pa.sent, pa.dropped, pa.queued), (10_000, 0, 0));
    assert!(pa.bytes_sent > 10_000 * 50);
    assert_eq!(b.listener_stats().received, 10_000);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_per_topic_holds_across_four_connections() {
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", b.local_addr());
    wait_until("4 connections", Duration::from_secs(5), || {
        a.peers()[0].connected == 4
    })
    .await;
    assert_eq!(b.listener_stats().connections, 4);

    // 64 topics, interleaved round-robin, forwarded from 4 tasks at once
    // (each task owns 16 topics, so per-topic order is the task's order).
    let mut per_topic = HashMap::new();
    let mut handles = Vec::new();
    for w in 0..4 {
        let a = a.clone();
        let topics: Vec<String> = (0..16).map(|i| format!("w{w}/topic/{i}")).collect();
        for t in &topics {
            per_topic.insert(t.clone(), 500u64);
        }
        handles.push(tokio::spawn(async move {
            for seq in 0..500 {
                for t in &topics {
                    a.forward("b@host", Arc::new(msg(t, seq, QoS::AtLeastOnce)))
                        .unwrap();
                }
                if seq % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    sink.wait_for(32_000, Duration::from_secs(30)).await;
    check_order(&sink.msgs.lock(), &per_topic);
    a.shutdown().await;
    b.shutdown().await;
}

/// Collects formatted log lines of the current thread.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread: every task runs on this thread, under the scoped subscriber.
#[tokio::test(flavor = "current_thread")]
async fn wrong_cookie_delivers_nothing_logs_both_sides_and_backs_off() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", "cookie-b"), sink.on_receive())
        .await
        .unwrap();
    let mut ca = cfg("a@host", "cookie-a");
    ca.reconnect_min = Duration::from_millis(200);
    ca.reconnect_max = Duration::from_secs(5);
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", b.local_addr());
    for seq in 0..100 {
        let _ = a.forward("b@host", Arc::new(msg("t", seq, QoS::AtLeastOnce)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let p = a.peers().remove(0);
    assert_eq!(sink.len(), 0, "nothing delivered with a wrong cookie");
    assert_eq!(p.connected, 0);
    assert_eq!(p.queued, 100, "messages wait for a connection");
    // 4 connections, backoff 200 ms doubling with jitter: about 4 attempts
    // each in 2 s. A busy loop would make thousands.
    assert!(p.connect_attempts >= 8, "retries: {}", p.connect_attempts);
    assert!(
        p.connect_attempts <= 24,
        "too many attempts in 2 s: {}",
        p.connect_attempts
    );
    assert_eq!(p.connect_failures, p.connect_attempts);
    let ls = b.listener_stats();
    assert!(ls.handshake_failures >= 8, "{ls:?}");
    assert_eq!(ls.connections, 0);

    let text = String::from_utf8(logs.0.lock().clone()).unwrap();
    let server_side = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("wrong cookie"))
        .count();
    let client_side = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("rejected by the peer"))
        .count();
    assert!(server_side >= 1 && client_side >= 1, "logs:\n{text}");
    // One line per failed connection on each side, naming the peer.
    assert!(text
        .lines()
        .any(|l| l.contains("wrong cookie") && l.contains("a@host") && l.contains("127.0.0.1")));
    assert!(text
        .lines()
        .any(|l| l.contains("rejected") && l.contains("b@host")));
    assert!(server_side as u64 <= p.connect_attempts && client_side as u64 <= p.connect_attempts);

    // Still retrying, still slowly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = a.peers()[0].connect_attempts;
    assert!(
        later > p.connect_attempts && later <= p.connect_attempts + 12,
        "{later}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_does_not_block_a_real_peer() {
    let sink = Arc::new(Sink::default());
    let mut cb = cfg("b@host", COOKIE);
    cb.handshake_timeout = Duration::from_secs(2);
    let b = Forwarder::start(cb, sink.on_receive()).await.unwrap();

    // Several silent sockets, connected before the real peer.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(b.local_addr()).await.unwrap());
    }
    let t0 = Instant::now();
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", b.local_addr());
    for seq in 0..100 {
        a.forward("b@host", Arc::new(msg("t", seq, QoS::AtMostOnce)))
            .unwrap();
    }
    sink.wait_for(100, Duration::from_secs(1)).await;
    assert!(t0.elapsed() < Duration::from_secs(1));

    // The silent sockets are closed once the handshake timeout passes.
    for mut s in silent {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "silent socket still open");
        assert!(
            buf.starts_with(&handshake::MAGIC),
            "the server speaks first"
        );
    }
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    assert_eq!(b.listener_stats().handshake_failures, 3);
    a.shutdown().await;
    b.shutdown().await;
}

/// Accepts connections and never reads from them; with `handshake`, it
/// completes the handshake first (so the forwarder counts it connected).
async fn stalled_peer(handshake: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            if handshake {
                let _ = handshake::accept(&mut s, "b@host", COOKIE).await;
            }
            held.push(s);
        }
    });
    (addr, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_that_never_reads_keeps_queues_bounded() {
    let (addr, server) = stalled_peer(true).await;
    let mut ca = cfg("a@host", COOKIE);
    ca.queue_limit = 100;
    ca.send_timeout = Duration::from_secs(1);
    let limit_total = 2 * 100 * ca.conns_per_peer;
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", addr);
    wait_until("connections", Duration::from_secs(5), || {
        a.peers()[0].connected == 4
    })
    .await;

    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    let (mut ok, mut dropped, mut down, mut over) = (0u64, 0u64, 0u64, 0u64);
    let mut held_back = None;
    let t0 = Instant::now();
    let mut seq = 0u64;
    while t0.elapsed() < Duration::from_millis(2500) {
        for _ in 0..200 {
            let qos = if seq.is_multiple_of(4) {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let mut m = Message::system(
                format!("t/{}", seq % 32),
                payload.clone(),
                false,
                emqx_actors::clock::now_ms(),
            );
            m.qos = qos;
            match a.forward("b@host", Arc::new(m)) {
                Ok(Queued::Room) => ok += 1,
                Ok(Queued::Over(b)) => {
                    ok += 1;
                    over += 1;
                    held_back.get_or_insert(b);
                }
                Err(ForwardError::Dropped) => dropped += 1,
                Err(ForwardError::PeerDown) => down += 1,
                Err(e) => panic!("{e:?}"),
            }
            seq += 1;
        }
        let p = &a.peers()[0];
        assert!(
            p.queued <= limit_total,
            "queued {} > {limit_total}",
            p.queued
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let p = a.peers().remove(0);
    assert!(
        dropped > 0,
        "QoS 0 past the limit is dropped (ok {ok}, down {down})"
    );
    assert!(
        over > 0,
        "QoS 1 past the limit of a connected peer holds its publisher back"
    );
    // The hold ends by itself: the peer never reads, so its connection is
    // reset after send_timeout, and a publisher is not held for a
    // connection that is gone.
    let b = held_back.expect("a publisher held back");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), b.drained())
            .await
            .is_ok(),
        "held back for good"
    );
    assert!(p.queued <= limit_total);
    // Every refusal was counted; in-flight frames lost to send_timeout add to it.
    assert!(p.dropped >= dropped + down, "{p:?}");
    // No write progress for send_timeout: connections were closed and reopened.
    assert!(p.connect_attempts > 4, "{p:?}");
    assert_eq!(ok + dropped + down, seq);
    // Accepted = sent + queued + in a frame being written or lost with one.
    assert!(ok >= p.sent + p.queued as u64, "{p:?}");
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_answers_the_handshake_keeps_queues_bounded() {
    let (addr, server) = stalled_peer(false).await;
    let mut ca = cfg("a@host", COOKIE);
    ca.queue_limit = 100;
    ca.handshake_timeout = Duration::from_millis(300);
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", addr);
    let mut results = HashMap::new();
    for seq in 0..2000u64 {
        // One topic per message spreads them evenly over the 4 connections.
        let mut m = msg(&format!("t/{seq}"), seq, QoS::AtMostOnce);
        if seq >= 1000 {
            m.qos = QoS::AtLeastOnce;
        }
        let r = match a.forward("b@host", Arc::new(m)) {
            Ok(Queued::Room) => "Ok".to_string(),
            Ok(Queued::Over(_)) => "Over".to_string(),
            Err(e) => format!("Err({e:?})"),
        };
        *results.entry(r).or_insert(0) += 1;
    }
    let p = a.peers().remove(0);
    // QoS 0 fills each queue to the limit, QoS 1 to twice the limit, never more.
    assert_eq!(p.queued, 2 * 100 * 4, "{results:?}");
    // Never connected: nothing to hold a publisher back for.
    assert_eq!(results["Ok"], 800);
    assert_eq!(results["Err(PeerDown)"], 1200);
    assert_eq!(p.dropped, 1200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        a.peers()[0].connect_attempts > 4,
        "handshake timeouts lead to reconnects"
    );
    a.remove_peer("b@host");
    assert_eq!(
        a.listener_stats().dropped,
        2000,
        "removing a peer drops and counts its queue"
    );
    assert!(matches!(
        a.forward("b@host", Arc::new(msg("t", 0, QoS::AtMostOnce))),
        Err(ForwardError::UnknownPeer)
    ));
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_to_a_restarted_peer() {
    let sink1 = Arc::new(Sink::default());
    let b1 = Forwarder::start(cfg("b@host", COOKIE), sink1.on_receive())
        .await
        .unwrap();
    let addr = b1.local_addr();
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", addr);
    for seq in 0..100 {
        a.forward("b@host", Arc::new(msg("t", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    sink1.wait_for(100, Duration::from_secs(5)).await;

    b1.shutdown().await;
    wait_until("disconnect seen", Duration::from_secs(5), || {
        a.peers()[0].connected == 0
    })
    .await;
    // Queued while the peer is away.
    for seq in 0..50 {
        a.forward("b@host", Arc::new(msg("u", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sink2 = Arc::new(Sink::default());
    let mut cb = cfg("b@host", COOKIE);
    cb.listen = addr;
    let b2 = Forwarder::start(cb, sink2.on_receive()).await.unwrap();
    for seq in 50..100 {
        a.forward("b@host", Arc::new(msg("u", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    // reconnect_max is 1 s.
    sink2.wait_for(100, Duration::from_secs(5)).await;
    check_order(&sink2.msgs.lock(), &HashMap::from([("u".to_string(), 100)]));
    wait_until("all reconnected", Duration::from_secs(5), || {
        a.peers()[0].connected == 4
    })
    .await;
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_seen_up_again_is_reconnected_at_once_not_after_the_backoff() {
    let b1 = Forwarder::start(
        cfg("b@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    let addr = b1.local_addr();
    let mut ca = cfg("a@host", COOKIE);
    // A backoff far longer than the test.
    ca.reconnect_min = Duration::from_secs(60);
    ca.reconnect_max = Duration::from_secs(120);
    let a = connected_to(addr, ca).await;
    b1.shutdown().await;
    a.peer_down("b@host", true);
    wait_until("disconnect seen", Duration::from_secs(5), || {
        a.peers()[0].connected == 0
    })
    .await;
    // Every connection has failed once against the closed port and
    // waits out its backoff.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for seq in 0..20 {
        a.forward("b@host", Arc::new(msg("u", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    let sink = Arc::new(Sink::default());
    let mut cb = cfg("b@host", COOKIE);
    cb.listen = addr;
    let b2 = Forwarder::start(cb, sink.on_receive()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.len(), 0, "still in its backoff");
    a.peer_down("b@host", false);
    sink.wait_for(20, Duration::from_secs(3)).await;
    wait_until("all reconnected", Duration::from_secs(3), || {
        a.peers()[0].connected == 4
    })
    .await;
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_frees_the_port_and_ends_every_task() {
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", b.local_addr());
    b.add_peer("a@host", a.local_addr());
    a.forward("b@host", Arc::new(msg("t", 0, QoS::AtMostOnce)))
        .unwrap();
    sink.wait_for(1, Duration::from_secs(5)).await;
    wait_until("both ways up", Duration::from_secs(5), || {
        a.peers()[0].connected == 4 && b.peers()[0].connected == 4
    })
    .await;
    // accept loop + 4 outgoing + 4 inbound
    assert_eq!(a.live_tasks(), 9);
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());

    // stop() alone: no waiting, yet everything ends promptly.
    a.stop();
    wait_until("a's tasks end", Duration::from_secs(2), || {
        a.live_tasks() == 0
    })
    .await;
    assert!(a.peers().is_empty());
    std::net::TcpListener::bind(a_addr).expect("a's port is free after stop");
    // Its sockets closed too: b sees its inbound connections from a go.
    wait_until("b's inbound closed", Duration::from_secs(2), || {
        b.listener_stats().connections == 0
    })
    .await;
    assert!(matches!(
        a.forward("b@host", Arc::new(msg("t", 1, QoS::AtMostOnce))),
        Err(ForwardError::UnknownPeer)
    ));
    a.add_peer("b@host", b_addr); // inert once stopped
    assert!(a.peers().is_empty());
    assert_eq!(a.live_tasks(), 0);

    // shutdown() waits, so the port is free the moment it returns.
    b.shutdown().await;
    assert_eq!(b.live_tasks(), 0);
    std::net::TcpListener::bind(b_addr).expect("b's port is free after shutdown");

    // A broker restarted in-process gets its port back.
    let mut again = cfg("b@host", COOKIE);
    again.listen = b_addr;
    let b2 = Forwarder::start(again, sink.on_receive()).await.unwrap();
    assert_eq!(b2.local_addr(), b_addr);
    drop(b2); // dropping the last handle stops it as well
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_closes_the_inbound_side_first_and_drains_the_outbound() {
    let (sa, sb) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    let a = Forwarder::start(cfg("a@host", COOKIE), sa.on_receive())
        .await
        .unwrap();
    let b = Forwarder::start(cfg("b@host", COOKIE), sb.on_receive())
        .await
        .unwrap();
    a.add_peer("b@host", b.local_addr());
    b.add_peer("a@host", a.local_addr());
    wait_until("both ways up", Duration::from_secs(5), || {
        a.peers()[0].connected == 4 && b.peers()[0].connected == 4
    })
    .await;
    a.close_inbound().await;
    // accept loop + 4 inbound gone; the 4 outgoing run on.
    assert_eq!(a.live_tasks(), 4);
    wait_until("b's connections to a down", Duration::from_secs(5), || {
        b.peers()[0].connected == 0
    })
    .await;
    // What b sends now waits in b for a's next start.
    for i in 0..10 {
        b.forward("a@host", Arc::new(msg("in", i, QoS::AtLeastOnce)))
            .unwrap();
    }
    // What a sends still goes out, and a drain waits for b's acknowledgements.
    for i in 0..1000 {
        a.forward(
            "b@host",
            Arc::new(msg(&format!("out/{}", i % 7), i, QoS::AtLeastOnce)),
        )
        .unwrap();
    }
    assert_eq!(a.drain(Duration::from_secs(10)).await, 0);
    assert_eq!(sb.len(), 1000);
    assert_eq!(a.peers()[0].unacked, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sa.len(), 0, "a received after its inbound side closed");
    assert_eq!(b.peers()[0].queued, 10, "b keeps what a did not take");
    // A peer that is down is not waited for: its queue is what is left.
    b.shutdown().await;
    wait_until("a's connections to b down", Duration::from_secs(5), || {
        a.peers()[0].connected == 0
    })
    .await;
    for i in 0..3 {
        a.forward("b@host", Arc::new(msg("late", i, QoS::AtLeastOnce)))
            .unwrap();
    }
    let t = Instant::now();
    assert_eq!(a.drain(Duration::from_secs(60)).await, 3);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "waited for a peer that is down"
    );
    a.shutdown().await;
    assert_eq!(a.live_tasks(), 0);
}

/// A QoS 1 message `i` on `topic` forwarded by `a` to `b@host` (for one
/// member of `shared`, if given) with a publisher's wait; receives its
/// outcome (whether it is `Ok`) once known.
fn send_acked(
    a: &Forwarder,
    topic: &str,
    i: u64,
    shared: Option<(&str, &str)>,
) -> std::sync::mpsc::Receiver<bool> {
    let (t, mut parts) = Ticket::ready().join(1);
    let (tx, rx) = std::sync::mpsc::channel();
    t.on_done(move |r| {
        let _ = tx.send(r.is_ok());
    });
    a.forward_acked(
        "b@host",
        Arc::new(msg(topic, i, QoS::AtLeastOnce)),
        shared,
        parts.pop(),
    )
    .unwrap();
    rx
}

/// A forwarder connected to a [`stalled_peer`] (it never acknowledges)
/// with `send_timeout`, and a message sent to it whose wait is checked
/// to go on for 200 ms.
async fn waiting_on_a_stalled_peer(
    send_timeout: Duration,
) -> (
    Arc<Forwarder>,
    tokio::task::JoinHandle<()>,
    std::sync::mpsc::Receiver<bool>,
) {
    let (addr, server) = stalled_peer(true).await;
    let mut ca = cfg("a@host", COOKIE);
    ca.send_timeout = send_timeout;
    let a = connected_to(addr, ca).await;
    let done = send_acked(&a, "t", 0, None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        done.try_recv().is_err(),
        "resolved before any acknowledgement"
    );
    (a, server, done)
}

/// A forwarder `a@host` (receiving nothing) with `b@host` at `addr`,
/// once its four connections are up.
async fn connected_to(addr: SocketAddr, ca: ForwardConfig) -> Arc<Forwarder> {
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", addr);
    wait_until("connected", Duration::from_secs(5), || {
        a.peers()[0].connected == 4
    })
    .await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_wait_ends_at_the_peers_acknowledgement_or_when_the_connection_goes() {
    // A peer that acknowledges.
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();
    let a = connected_to(b.local_addr(), cfg("a@host", COOKIE)).await;
    let (first, second) = (
        send_acked(&a, "t", 0, None),
        send_acked(&a, "u", 1, Some(("g", "u"))),
    );
    wait_until("acknowledged", Duration::from_secs(5), || {
        first.try_recv() == Ok(true)
    })
    .await;
    wait_until("acknowledged", Duration::from_secs(5), || {
        second.try_recv() == Ok(true)
    })
    .await;
    assert_eq!(sink.len(), 2);
    assert_eq!(a.peers()[0].unacked, 0);
    a.shutdown().await;
    b.shutdown().await;

    // A peer that takes the connection and never reads: the wait goes on
    // until the connection is given up (send_timeout), the message kept.
    let (a, server, done) = waiting_on_a_stalled_peer(Duration::from_secs(1)).await;
    wait_until("given up", Duration::from_secs(10), || {
        done.try_recv() == Ok(true)
    })
    .await;
    assert_eq!(a.peers()[0].unacked + a.peers()[0].queued, 1, "kept");
    a.shutdown().await;
    server.abort();

    // A peer that cannot be reached: nothing is waited for.
    let nobody = std::net::TcpListener::bind(any_port()).unwrap();
    let addr = nobody.local_addr().unwrap();
    drop(nobody);
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", addr);
    assert_eq!(send_acked(&a, "t", 0, None).try_recv(), Ok(true));
    assert_eq!(a.peers()[0].queued, 1, "queued for the peer all the same");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_the_cluster_sees_down_holds_no_publisher_up() {
    // Connected, and never reading or acknowledging (a partition looks
    // like this until send_timeout).
    let (a, server, first) = waiting_on_a_stalled_peer(Duration::from_secs(60)).await;
    a.peer_down("b@host", true);
    assert_eq!(
        first.try_recv(),
        Ok(true),
        "released when the peer is seen down"
    );
    assert_eq!(
        send_acked(&a, "t", 1, None).try_recv(),
        Ok(true),
        "not waited for while down"
    );
    a.peer_down("b@host", false);
    let third = send_acked(&a, "t", 2, None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(third.try_recv().is_err(), "waited for again once up");
    let p = a.peers().remove(0);
    assert_eq!(
        p.queued + p.unacked,
        3,
        "every message still queued for the peer"
    );
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_peer_has_not_acknowledged_can_be_copied_and_stays_queued() {
    // Sent and never acknowledged (the first ones), then queued behind.
    let (a, server, _first) = waiting_on_a_stalled_peer(Duration::from_secs(60)).await;
    for seq in 1..=6 {
        let topic = if seq % 2 == 0 { "x/even" } else { "t" };
        a.forward("b@host", Arc::new(msg(topic, seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    a.forward_shared(
        "b@host",
        Arc::new(msg("x/shared", 7, QoS::AtLeastOnce)),
        "g",
        "x/#",
    )
    .unwrap();
    let held = a.held_for("b@host", |t| emqx_mqtt::topic::matches("x/#", t));
    assert_eq!(
        held.iter().map(|m| seq_of(m)).collect::<Vec<_>>(),
        vec![2, 4, 6],
        "the plain messages of the filter, in order, not the shared one"
    );
    let t: Vec<u64> = a
        .held_for("b@host", |t| t == "t")
        .iter()
        .map(|m| seq_of(m))
        .collect();
    assert_eq!(t, vec![0, 1, 3, 5], "the unacknowledged first");
    // (Counted as the writer moves them from the queue to its window.)
    wait_until(
        "every message still queued for the peer",
        Duration::from_secs(5),
        || {
            let p = a.peers().remove(0);
            p.queued + p.unacked == 8
        },
    )
    .await;
    assert!(a.held_for("c@host", |_| true).is_empty(), "an unknown node");
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_what_a_down_node_is_owed_share_one_scan_and_each_get_theirs() {
    use emqx_actors::cluster::view::ClusterView;
    let (a, server, _first) = waiting_on_a_stalled_peer(Duration::from_secs(60)).await;
    for (seq, topic) in [(1, "x/1"), (2, "y/1"), (3, "x/2"), (4, "z"), (5, "y/2")] {
        a.forward("b@host", Arc::new(msg(topic, seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    let view = Arc::new(ClusterView::new(Arc::from("a@host"), a.clone()));
    let ask = |filters: &[&str]| {
        let view = view.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        tokio::spawn(async move {
            // In order per topic (a topic keeps to one connection), not
            // across them.
            let mut got: Vec<u64> = view
                .held_here("b@host", &filters, "a@host")
                .await
                .iter()
                .map(seq_of)
                .collect();
            got.sort_unstable();
            got
        })
    };
    // Asked together (as the sessions of one node taken at once), and
    // once more after their scan.
    let (x, xy, none) = (ask(&["x/#"]), ask(&["x/1", "y/+", "x/#"]), ask(&["q"]));
    assert_eq!(x.await.unwrap(), vec![1, 3]);
    assert_eq!(xy.await.unwrap(), vec![1, 2, 3, 5], "each once");
    assert!(none.await.unwrap().is_empty());
    assert_eq!(ask(&["z", "#"]).await.unwrap(), vec![0, 1, 2, 3, 4, 5]);
    // (Counted as the writer moves them from the queue to its window.)
    wait_until(
        "every message still queued for the peer",
        Duration::from_secs(5),
        || {
            let p = a.peers().remove(0);
            p.queued + p.unacked == 6
        },
    )
    .await;
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_sockets_bind_to_bind_ip() {
    let l = TcpListener::bind(any_port()).await.unwrap();
    let mut ca = cfg("a@host", COOKIE);
    ca.bind_ip = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    ca.conns_per_peer = 2;
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", l.local_addr().unwrap());
    for _ in 0..2 {
        let (_s, peer) = tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }
    a.shutdown().await;

    // And end to end with a real peer.
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();
    let mut ca = cfg("a@host", COOKIE);
    ca.bind_ip = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", b.local_addr());
    a.forward("b@host", Arc::new(msg("t", 0, QoS::AtMostOnce)))
        .unwrap();
    sink.wait_for(1, Duration::from_secs(5)).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_only_that_connection() {
    use tokio::io::AsyncWriteExt;
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();

    // A well-authenticated client that then sends garbage.
    let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
    handshake::connect(&mut s, "evil@host", "b@host", COOKIE)
        .await
        .unwrap();
    // Stream 7, first message 1, count 9, and no messages.
    let mut f = vec![0, 0, 0, 21, 2];
    f.extend_from_slice(&7u64.to_be_bytes());
    f.extend_from_slice(&1u64.to_be_bytes());
    f.extend_from_slice(&9u32.to_be_bytes());
    s.write_all(&f).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();

    // An oversized length prefix.
    let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
    handshake::connect(&mut s, "evil@host", "b@host", COOKIE)
        .await
        .unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.listener_stats().malformed_frames, 2);

    // A real peer is undisturbed.
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", b.local_addr());
    a.forward("b@host", Arc::new(msg("t", 0, QoS::AtMostOnce)))
        .unwrap();
    sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(sink.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// Not a timed assertion: prints msgs/s for 64-byte payloads over loopback.
/// `FWD_BENCH_MSGS=2000000 cargo test --release -p emqx-actors --test forward
/// throughput -- --nocapture` for a real number.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throughput_64_byte_payloads() {
    let total: usize = std::env::var("FWD_BENCH_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let count = Arc::new(AtomicUsize::new(0));
    let b = Forwarder::start(cfg("b@host", COOKIE), counting(count.clone()))
        .await
        .unwrap();
    let a = Forwarder::start(
        cfg("a@host", COOKIE),
        Arc::new(|_: &str, _, _, _| (None, None)),
    )
    .await
    .unwrap();
    a.add_peer("b@host", b.local_addr());
    wait_until("connections", Duration::from_secs(5), || {
        a.peers()[0].connected == 4
    })
    .await;

    let payload = Bytes::from(vec![b'x'; 64]);
    let msgs: Vec<Arc<Message>> = (0..64)
        .map(|i| {
            let mut m = Message::system(
                format!("bench/{i}"),
                payload.clone(),
                false,
                emqx_actors::clock::now_ms(),
            );
            m.qos = QoS::AtLeastOnce;
            Arc::new(m)
        })
        .collect();
    let t0 = Instant::now();
    let mut retries = 0u64;
    for i in 0..total {
        while a.forward("b@host", msgs[i % msgs.len()].clone()).is_err() {
            retries += 1;
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "throughput run stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let dt = t0.elapsed();
    let p = &a.peers()[0];
    println!(
        "forward throughput: {total} msgs of 64 B in {:.3} s = {:.0} msgs/s \
         ({:.1} MB/s on the wire, {:.1} msgs/frame, {retries} full-queue retries)",
        dt.as_secs_f64(),
        total as f64 / dt.as_secs_f64(),
        p.bytes_sent as f64 / dt.as_secs_f64() / 1e6,
        p.sent as f64 / p.frames_sent.max(1) as f64,
    );
    assert_eq!(p.dropped, retries);
    a.shutdown().await;
    b.shutdown().await;
}

/// A TCP relay to `to`. On the first connection through it, once `swallow`
/// is set, nothing from `to` gets back (the acknowledgements are lost),
/// and `cut` closes that connection at both ends; later connections relay
/// both ways.
async fn lossy_relay(
    to: SocketAddr,
    swallow: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let l = TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let mut n = 0;
        let mut held = Vec::new();
        loop {
            let (down, _) = l.accept().await.unwrap();
            n += 1;
            let first = n == 1;
            let up = TcpStream::connect(to).await.unwrap();
            let (mut dr, mut dw) = down.into_split();
            let (mut ur, mut uw) = up.into_split();
            let fwd = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut dr, &mut uw).await;
            });
            let sw = swallow.clone();
            let back = tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => {
                            if !(first && sw.load(Ordering::SeqCst))
                                && dw.write_all(&buf[..k]).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
            if first {
                let cut = cut.clone();
                held.push(tokio::spawn(async move {
                    cut.notified().await;
                    fwd.abort();
                    back.abort();
                }));
            }
        }
    });
    (addr, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_lost_with_unacknowledged_frames_loses_and_repeats_nothing() {
    let sink = Arc::new(Sink::default());
    let b = Forwarder::start(cfg("b@host", COOKIE), sink.on_receive())
        .await
        .unwrap();
    let (a, cut, relay_task) = sender_losing_acks(b.local_addr()).await;
    for seq in 0..500 {
        a.forward("b@host", Arc::new(msg("t", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    sink.wait_for(500, Duration::from_secs(5)).await;
    // b handed all 500 on, a heard of none: the connection dies.
    cut.notify_one();
    for seq in 500..1000 {
        a.forward("b@host", Arc::new(msg("t", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    sink.wait_for(1000, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Each message once, in order, though the first 500 crossed twice
    // (and so did any of the next 500 that left on the dying connection
    // before the cut reached it: its acknowledgements were lost too).
    assert_eq!(sink.len(), 1000);
    check_order(&sink.msgs.lock(), &HashMap::from([("t".to_string(), 1000)]));
    let st = b.listener_stats();
    assert!((500..=1000).contains(&st.duplicates), "{st:?}");
    assert_eq!(st.received, 1000, "{st:?}");
    let p = a.peers().remove(0);
    assert_eq!(p.dropped, 0, "{p:?}");
    assert_eq!(p.sent, 1000, "{p:?}");
    assert!(p.connect_attempts >= 2, "{p:?}");
    // Everything is acknowledged now: a holds nothing back.
    wait_until("all acknowledged", Duration::from_secs(5), || {
        let p = &a.peers()[0];
        p.queued == 0 && p.unacked == 0
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    relay_task.abort();
}

/// Node a, sending to node b at `to` on one connection through a relay,
/// once connected: from then on b's acknowledgements on that first
/// connection are lost, until the returned `cut` ends it.
async fn sender_losing_acks(
    to: SocketAddr,
) -> (
    Arc<Forwarder>,
    Arc<tokio::sync::Notify>,
    tokio::task::JoinHandle<()>,
) {
    let swallow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut = Arc::new(tokio::sync::Notify::new());
    let (relay, relay_task) = lossy_relay(to, swallow.clone(), cut.clone()).await;
    let mut ca = cfg("a@host", COOKIE);
    ca.conns_per_peer = 1;
    let a = Forwarder::start(ca, Arc::new(|_: &str, _, _, _| (None, None)))
        .await
        .unwrap();
    a.add_peer("b@host", relay);
    wait_until("connected", Duration::from_secs(5), || {
        a.peers()[0].connected == 1
    })
    .await;
    swallow.store(true, Ordering::SeqCst);
    (a, cut, relay_task)
}

/// A receiver's `on_receive` whose deliveries are written to disk (each
/// message returns a write of `durable`, as deliveries to persistent
/// sessions do) with their place in the stream (into `positions`, as
/// the journal's write carries it), except the messages `unwritten` says
/// (none of the node's sessions journals them).
fn keeping(
    sink: &Arc<Sink>,
    durable: &emqx_actors::durable::Durable,
    positions: &Arc<Mutex<HashMap<u64, u64>>>,
    unwritten: fn(u64) -> bool,
) -> OnReceive {
    let (sink, durable, positions) = (sink.clone(), durable.clone(), positions.clone());
    Arc::new(
        move |from: &str, m: Message, _: Option<(String, String)>, (stream, seq): (u64, u64)| {
            let skip = unwritten(seq_of(&m));
            sink.msgs.lock().push((from.to_owned(), m));
            sink.count.fetch_add(1, Ordering::Release);
            if skip {
                return (None, None);
            }
            positions.lock().insert(stream, seq);
            (Some(durable.submit(Vec::new())), None)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_kept_its_positions_takes_nothing_twice_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("emqx-rs-fwd-keep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let durable = emqx_actors::durable::Durable::open(&dir).unwrap();
    let positions: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let keep = |positions: &Arc<Mutex<HashMap<u64, u64>>>| -> emqx_actors::forward::KeepStream {
        let (positions, durable) = (positions.clone(), durable.clone());
        Arc::new(move |stream, last| {
            positions.lock().insert(stream, last);
            durable.submit(Vec::new())
        })
    };
    // b takes 500 messages whose acknowledgements never reach a.
    let sink1 = Arc::new(Sink::default());
    let (b1, l1) = Forwarder::bind(cfg("b@host", COOKIE)).await.unwrap();
    let addr = b1.local_addr();
    // Every tenth message is not written: the stream's position after
    // it is kept by the note made after each batch.
    let unwritten: fn(u64) -> bool = |seq| seq % 10 == 9;
    b1.serve_keeping(
        l1,
        keeping(&sink1, &durable, &positions, unwritten),
        Vec::new(),
        keep(&positions),
    );
    let (a, _cut, relay_task) = sender_losing_acks(addr).await;
    for seq in 0..500 {
        a.forward("b@host", Arc::new(msg("t", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    sink1.wait_for(500, Duration::from_secs(5)).await;
    wait_until("the position written", Duration::from_secs(5), || {
        positions.lock().values().any(|&last| last == 500)
    })
    .await;
    // b dies; a new b starts on its address with the positions it wrote.
    b1.shutdown().await;
    let known: Vec<(u64, u64)> = positions.lock().iter().map(|(s, l)| (*s, *l)).collect();
    let sink2 = Arc::new(Sink::default());
    let mut cb = cfg("b@host", COOKIE);
    cb.listen = addr;
    let (b2, l2) = Forwarder::bind(cb).await.unwrap();
    b2.serve_keeping(
        l2,
        keeping(&sink2, &durable, &positions, unwritten),
        known,
        keep(&positions),
    );
    // a sends the 500 again (it never heard of them), then 500 more.
    for seq in 500..1000 {
        a.forward("b@host", Arc::new(msg("t", seq, QoS::AtLeastOnce)))
            .unwrap();
    }
    sink2.wait_for(500, Duration::from_secs(10)).await;
    wait_until("all acknowledged", Duration::from_secs(10), || {
        let p = &a.peers()[0];
        p.queued == 0 && p.unacked == 0
    })
    .await;
    // The new b took only the 500 new ones, in order.
    assert_eq!(sink2.len(), 500);
    let seqs: Vec<u64> = sink2.msgs.lock().iter().map(|(_, m)| seq_of(m)).collect();
    assert_eq!(seqs, (500..1000).collect::<Vec<u64>>());
    assert_eq!(b2.listener_stats().duplicates, 500);
    a.shutdown().await;
    b2.shutdown().await;
    relay_task.abort();
    drop(durable);
    let _ = std::fs::remove_dir_all(&dir);
}
