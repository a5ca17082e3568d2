//! End-to-end tests of MQTT 3.1 and 3.1.1 against the real `emqx-rs`
//! binary: 3.1.1 through the independent `rumqttc` client, 3.1 (and some
//! bad behaviour) through raw bytes on a TCP socket.

mod common;

use common::{connect_v4, frame, Node, Raw};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- rumqttc

/// A connected 3.1.1 client: its handle and the packets it received.
struct V4 {
    c: AsyncClient,
    rx: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
    session_present: bool,
}

fn opts(n: &Node, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", n.mqtt_port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Connects and waits for a successful CONNACK.
async fn v4(n: &Node, id: &str) -> V4 {
    v4_with(opts(n, id, true)).await
}

async fn v4_with(o: MqttOptions) -> V4 {
    let id = o.client_id();
    let (c, mut el) = AsyncClient::new(o, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                // Stop on the first error: polling again would reconnect.
                Err(_) => return,
            }
        }
    });
    let ack = timeout(T, async {
        loop {
            match rx.recv().await {
                Some(Packet::ConnAck(a)) => return Some(a),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id}: no CONNACK in 5 s"))
    .unwrap_or_else(|| panic!("{id}: connection failed before CONNACK"));
    assert_eq!(ack.code, ConnectReturnCode::Success, "{id}: CONNACK code");
    V4 {
        c,
        rx,
        task,
        session_present: ack.session_present,
    }
}

impl V4 {
    /// The next packet matching `f`, skipping others, within `d`.
    async fn next_where<R>(
        &mut self,
        d: Duration,
        mut f: impl FnMut(Packet) -> Option<R>,
    ) -> Option<R> {
        timeout(d, async {
            while let Some(p) = self.rx.recv().await {
                if let Some(r) = f(p) {
                    return Some(r);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    async fn publish_in(&mut self, d: Duration) -> Option<Publish> {
        self.next_where(d, |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH; panics after 5 s.
    async fn recv(&mut self) -> Publish {
        self.publish_in(T).await.expect("no PUBLISH within 5 s")
    }

    /// Asserts that no PUBLISH arrives within `d`.
    async fn none(&mut self, d: Duration) {
        if let Some(p) = self.publish_in(d).await {
            panic!(
                "unexpected PUBLISH on {} ({:?}): {:?}",
                p.topic, p.qos, p.payload
            );
        }
    }

    /// Subscribes and returns the granted return codes from SUBACK.
    async fn sub(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.c.subscribe(filter, qos).await.expect("subscribe");
        self.next_where(T, |p| match p {
            Packet::SubAck(a) => Some(a.return_codes),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    async fn unsub(&mut self, filter: &str) {
        self.c.unsubscribe(filter).await.expect("unsubscribe");
        self.next_where(T, |p| match p {
            Packet::UnsubAck(_) => Some(()),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no UNSUBACK for {filter}"));
    }

    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.c
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish");
    }

    /// Publishes and waits for the broker's acknowledgement (PUBACK or
    /// PUBCOMP), so the message is known to be in the broker.
    async fn publish_acked(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.publish(topic, qos, retain, payload).await;
        match qos {
            QoS::AtMostOnce => {
                // A ping round trip orders it behind the publish.
                self.ping().await;
            }
            QoS::AtLeastOnce => {
                self.next_where(T, |p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
                    .expect("no PUBACK");
            }
            QoS::ExactlyOnce => {
                self.next_where(T, |p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
                    .expect("no PUBCOMP");
            }
        }
    }

    /// A round trip that orders behind everything sent before: UNSUBSCRIBE
    /// of a filter never subscribed, answered by UNSUBACK.
    async fn ping(&mut self) {
        self.unsub("sync/never-subscribed").await;
    }

    /// Graceful DISCONNECT; waits until the event loop ended.
    async fn disconnect(mut self) {
        self.c.disconnect().await.expect("disconnect");
        let _ = timeout(T, &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn granted(q: QoS) -> Vec<SubscribeReasonCode> {
    vec![SubscribeReasonCode::Success(q)]
}

// ---------------------------------------------------------------- raw bytes

/// Reads one MQTT packet: (first byte, body). `None` on EOF/timeout.
fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 1];
    s.read_exact(&mut h).ok()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len += (b[0] & 0x7f) as usize * mult;
        if b[0] & 0x80 == 0 {
            break;
        }
        mult *= 128;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((h[0], body))
}

fn str16(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s);
}

/// An MQTT 3.1 CONNECT ("MQIsdp", level 3) with clean session.
fn connect_v3(client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    str16(&mut body, b"MQIsdp");
    body.push(3);
    body.push(0x02);
    body.extend_from_slice(&keepalive.to_be_bytes());
    str16(&mut body, client_id.as_bytes());
    frame(0x10, &body)
}

/// A 3.1.1 CONNECT with explicit flags and an optional will.
fn connect_v4_full(
    client_id: &str,
    keepalive: u16,
    clean: bool,
    will: Option<(&str, &[u8], u8)>,
) -> Vec<u8> {
    let mut body = Vec::new();
    str16(&mut body, b"MQTT");
    body.push(4);
    let mut flags = if clean { 0x02 } else { 0 };
    if let Some((_, _, q)) = will {
        flags |= 0x04 | (q << 3);
    }
    body.push(flags);
    body.extend_from_slice(&keepalive.to_be_bytes());
    str16(&mut body, client_id.as_bytes());
    if let Some((t, p, _)) = will {
        str16(&mut body, t.as_bytes());
        str16(&mut body, p);
    }
    frame(0x10, &body)
}

fn subscribe_pkt(pid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    str16(&mut body, filter.as_bytes());
    body.push(qos);
    frame(0x82, &body)
}

fn publish_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    str16(&mut body, topic.as_bytes());
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

/// Connects raw bytes and returns the socket and the CONNACK return code.
fn raw_connect(n: &Node, connect: &[u8]) -> (Raw, Option<(u8, Vec<u8>)>) {
    let mut r = Raw::connect(n);
    r.send(connect);
    let ack = read_packet(&mut r.s);
    (r, ack)
}

/// Parses a PUBLISH body: (topic, payload) for QoS 0.
fn parse_publish0(h: u8, body: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(h & 0xf0, 0x30, "not a PUBLISH: {h:#x}");
    assert_eq!(h & 0x06, 0, "expected QoS 0");
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8(body[2..2 + tl].to_vec()).expect("utf8 topic");
    (topic, body[2 + tl..].to_vec())
}

fn vm_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

// ---------------------------------------------------------------- tests

/// Case 1: MQTT 3.1 ("MQIsdp", level 3): accepted, subscribes, receives from a
/// 3.1.1 publisher; an empty client id is refused with return code 2.
#[tokio::test]
async fn mqtt31_connect_subscribe_and_empty_id_refused() {
    let n = Node::start();

    let (mut r, ack) = raw_connect(&n, &connect_v3("v31-client", 60));
    assert_eq!(ack, Some((0x20, vec![0, 0])), "3.1 CONNACK accepted");
    r.send(&subscribe_pkt(7, "v31/t", 0));
    assert_eq!(
        read_packet(&mut r.s),
        Some((0x90, vec![0, 7, 0])),
        "3.1 SUBACK granting QoS 0"
    );

    let mut p = v4(&n, "v311-pub").await;
    p.publish_acked("v31/t", QoS::AtLeastOnce, false, b"hello 3.1")
        .await;
    let (h, body) = read_packet(&mut r.s).expect("3.1 client got no PUBLISH");
    assert_eq!(
        parse_publish0(h, &body),
        ("v31/t".to_string(), b"hello 3.1".to_vec())
    );

    let (mut e, ack) = raw_connect(&n, &connect_v3("", 60));
    assert_eq!(
        ack,
        Some((0x20, vec![0, 2])),
        "3.1 with empty client id: CONNACK 2 (identifier rejected)"
    );
    let (rest, closed) = e.read_all(Duration::from_secs(3));
    assert!(
        rest.is_empty() && closed,
        "connection closed after refusal (got {rest:?}, closed={closed})"
    );
}

/// Case 2: 3.1.1 QoS 0/1/2 round trips, granted QoS in SUBACK, and downgrade of
/// a QoS 2 publish to a QoS 1 subscription.
#[tokio::test]
async fn qos_round_trips_and_downgrade() {
    let n = Node::start();
    let mut s = v4(&n, "rt-sub").await;
    assert_eq!(
        s.sub("rt/0", QoS::AtMostOnce).await,
        granted(QoS::AtMostOnce)
    );
    assert_eq!(
        s.sub("rt/1", QoS::AtLeastOnce).await,
        granted(QoS::AtLeastOnce)
    );
    assert_eq!(
        s.sub("rt/2", QoS::ExactlyOnce).await,
        granted(QoS::ExactlyOnce)
    );

    let mut p = v4(&n, "rt-pub").await;
    for (t, q) in [
        ("rt/0", QoS::AtMostOnce),
        ("rt/1", QoS::AtLeastOnce),
        ("rt/2", QoS::ExactlyOnce),
    ] {
        let payload = format!("payload {t}");
        p.publish_acked(t, q, false, payload.as_bytes()).await;
        let m = s.recv().await;
        assert_eq!(m.topic, t);
        assert_eq!(m.qos, q, "delivered at the QoS of publish and subscription");
        assert_eq!(&m.payload[..], payload.as_bytes());
        assert!(!m.retain);
    }

    // QoS 2 publish to a QoS 1 subscription arrives at QoS 1.
    p.publish_acked("rt/1", QoS::ExactlyOnce, false, b"down")
        .await;
    let m = s.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.qos, &m.payload[..]),
        ("rt/1", QoS::AtLeastOnce, &b"down"[..])
    );
    // And QoS 1 to a QoS 0 subscription arrives at QoS 0.
    p.publish_acked("rt/0", QoS::AtLeastOnce, false, b"down0")
        .await;
    let m = s.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.qos, &m.payload[..]),
        ("rt/0", QoS::AtMostOnce, &b"down0"[..])
    );
    s.none(Duration::from_millis(500)).await;
}

/// Case 3: Persistent sessions (clean_session = false) on 3.1.1.
#[tokio::test]
async fn persistent_session_v311() {
    let n = Node::start();
    let mut s = v4_with(opts(&n, "ps-sub", false)).await;
    assert!(!s.session_present, "first connect: no session");
    assert_eq!(
        s.sub("ps/t", QoS::AtLeastOnce).await,
        granted(QoS::AtLeastOnce)
    );
    s.disconnect().await;

    let mut p = v4(&n, "ps-pub").await;
    for i in 0..3 {
        p.publish_acked("ps/t", QoS::AtLeastOnce, false, format!("m{i}").as_bytes())
            .await;
    }

    let mut s = v4_with(opts(&n, "ps-sub", false)).await;
    assert!(
        s.session_present,
        "reconnect with clean_session=0: session_present=1"
    );
    for i in 0..3 {
        let m = s.recv().await;
        assert_eq!((m.topic.as_str(), m.qos), ("ps/t", QoS::AtLeastOnce));
        assert_eq!(
            m.payload,
            format!("m{i}").as_bytes(),
            "offline messages in order"
        );
    }
    s.none(Duration::from_millis(500)).await;
    s.disconnect().await;

    // A message queued while offline, then a clean_session=1 connect: the
    // session (and the queued message, and the subscription) is discarded.
    p.publish_acked("ps/t", QoS::AtLeastOnce, false, b"discarded")
        .await;
    let mut s = v4_with(opts(&n, "ps-sub", true)).await;
    assert!(!s.session_present, "clean_session=1: session_present=0");
    s.none(Duration::from_millis(800)).await;
    p.publish_acked("ps/t", QoS::AtLeastOnce, false, b"no subscription")
        .await;
    s.none(Duration::from_millis(800)).await;
    s.disconnect().await;

    // The clean session ended with its connection: nothing left to resume.
    let mut s = v4_with(opts(&n, "ps-sub", false)).await;
    assert!(
        !s.session_present,
        "after a clean session, session_present=0"
    );
    s.none(Duration::from_millis(500)).await;
    s.disconnect().await;

    // Empty client id with clean_session=0 is refused (3.1.3-8: code 2).
    let (mut r, ack) = raw_connect(&n, &connect_v4_full("", 60, false, None));
    assert_eq!(
        ack,
        Some((0x20, vec![0, 2])),
        "empty id + clean_session=0 -> CONNACK 2"
    );
    let (rest, closed) = r.read_all(Duration::from_secs(3));
    assert!(
        rest.is_empty() && closed,
        "closed after refusal (got {rest:?}, closed={closed})"
    );

    // While an empty id with clean_session=1 is accepted (id assigned).
    let (_r, ack) = raw_connect(&n, &connect_v4_full("", 60, true, None));
    assert_eq!(
        ack,
        Some((0x20, vec![0, 0])),
        "empty id + clean_session=1 -> accepted"
    );
}

/// Case 4: The will is published when the socket drops, not after DISCONNECT.
#[tokio::test]
async fn will_on_abrupt_close_not_on_disconnect() {
    let n = Node::start();
    let mut w = v4(&n, "will-watch").await;
    w.sub("will/#", QoS::AtLeastOnce).await;

    // Abrupt: the socket is simply dropped.
    let (r, ack) = raw_connect(
        &n,
        &connect_v4_full("will-abrupt", 60, true, Some(("will/abrupt", b"gone", 1))),
    );
    assert_eq!(ack, Some((0x20, vec![0, 0])));
    drop(r);
    let m = w.recv().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        ("will/abrupt", &b"gone"[..], QoS::AtLeastOnce)
    );

    // Same with rumqttc: the event loop (and its socket) is dropped.
    let mut o = opts(&n, "will-rumqttc", true);
    o.set_last_will(LastWill::new("will/rumqttc", "bye", QoS::AtMostOnce, false));
    let c = v4_with(o).await;
    drop(c);
    let m = w.recv().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("will/rumqttc", &b"bye"[..])
    );

    // Graceful: DISCONNECT then close; no will.
    let (mut r, ack) = raw_connect(
        &n,
        &connect_v4_full("will-clean", 60, true, Some(("will/clean", b"x", 1))),
    );
    assert_eq!(ack, Some((0x20, vec![0, 0])));
    r.send(&[0xe0, 0]);
    let (_, closed) = r.read_all(Duration::from_secs(3));
    assert!(closed, "broker closes after DISCONNECT");
    drop(r);
    let mut o = opts(&n, "will-rumqttc2", true);
    o.set_last_will(LastWill::new(
        "will/rumqttc2",
        "bye",
        QoS::AtMostOnce,
        false,
    ));
    v4_with(o).await.disconnect().await;
    w.none(Duration::from_millis(1500)).await;
}

/// Case 5: Retained messages on 3.1.1.
#[tokio::test]
async fn retained_v311() {
    let n = Node::start();
    let mut live = v4(&n, "ret-live").await;
    live.sub("ret/#", QoS::AtLeastOnce).await;

    let mut p = v4(&n, "ret-pub").await;
    p.publish_acked("ret/a", QoS::AtLeastOnce, true, b"kept")
        .await;
    let m = live.recv().await;
    assert_eq!(&m.payload[..], b"kept");
    assert!(
        !m.retain,
        "3.1.1 3.3.1.3: retain=0 to an established subscription"
    );

    let mut late = v4(&n, "ret-late").await;
    late.sub("ret/+", QoS::AtLeastOnce).await;
    let m = late.recv().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("ret/a", &b"kept"[..]));
    assert!(
        m.retain,
        "retained message to a new subscription has retain=1"
    );
    assert_eq!(m.qos, QoS::AtLeastOnce);

    // Replace, then clear with an empty retained payload.
    p.publish_acked("ret/a", QoS::AtMostOnce, true, b"newer")
        .await;
    let mut late2 = v4(&n, "ret-late2").await;
    late2.sub("ret/a", QoS::ExactlyOnce).await;
    let m = late2.recv().await;
    assert_eq!(&m.payload[..], b"newer");
    assert_eq!(
        m.qos,
        QoS::AtMostOnce,
        "min(retained QoS 0, subscription QoS 2)"
    );
    assert!(m.retain);

    p.publish_acked("ret/a", QoS::AtLeastOnce, true, b"").await;
    let m = live.recv().await; // the live subscriber sees each of them
    assert_eq!(&m.payload[..], b"newer");
    let m = live.recv().await;
    assert!(m.payload.is_empty());
    let mut late3 = v4(&n, "ret-late3").await;
    late3.sub("ret/#", QoS::AtLeastOnce).await;
    late3.none(Duration::from_millis(800)).await;
}

/// Case 6: Overlapping subscriptions deliver once at the highest QoS.
#[tokio::test]
async fn overlapping_subscriptions_deliver_once() {
    let n = Node::start();
    let mut s = v4(&n, "ov-sub").await;
    assert_eq!(
        s.sub("a/#", QoS::AtMostOnce).await,
        granted(QoS::AtMostOnce)
    );
    assert_eq!(
        s.sub("a/b", QoS::ExactlyOnce).await,
        granted(QoS::ExactlyOnce)
    );
    let mut p = v4(&n, "ov-pub").await;
    p.publish_acked("a/b", QoS::ExactlyOnce, false, b"once")
        .await;
    let m = s.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.qos, &m.payload[..]),
        ("a/b", QoS::ExactlyOnce, &b"once"[..])
    );
    s.none(Duration::from_millis(1000)).await;
    // Only a/# matches a/c: delivered at QoS 0.
    p.publish_acked("a/c", QoS::ExactlyOnce, false, b"c").await;
    let m = s.recv().await;
    assert_eq!((m.topic.as_str(), m.qos), ("a/c", QoS::AtMostOnce));
    s.none(Duration::from_millis(500)).await;
}

/// Case 7: Wildcards through the broker; `$SYS` topics are not matched by `#`.
#[tokio::test]
async fn wildcard_matching_and_sys() {
    let n = Node::start();
    let mut plus = v4(&n, "wc-plus").await;
    plus.sub("+/b", QoS::AtMostOnce).await;
    let mut hash_a = v4(&n, "wc-hash-a").await;
    hash_a.sub("a/#", QoS::AtMostOnce).await;
    let mut all = v4(&n, "wc-all").await;
    all.sub("#", QoS::AtMostOnce).await;
    let mut sys = v4(&n, "wc-sys").await;
    sys.sub("$SYS/#", QoS::AtMostOnce).await;

    // Drain $SYS messages already on their way (connect events of the
    // clients above).
    while sys.publish_in(Duration::from_millis(300)).await.is_some() {}
    all.none(Duration::from_millis(300)).await;

    let mut p = v4(&n, "wc-pub").await;
    p.publish_acked("a/b", QoS::AtMostOnce, false, b"ab").await;
    for c in [&mut plus, &mut hash_a, &mut all] {
        let m = c.recv().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("a/b", &b"ab"[..]));
    }
    p.publish_acked("a", QoS::AtMostOnce, false, b"a").await; // a/# matches a
    assert_eq!(hash_a.recv().await.topic, "a");
    assert_eq!(all.recv().await.topic, "a");
    p.publish_acked("x/y/b", QoS::AtMostOnce, false, b"xyb")
        .await;
    assert_eq!(all.recv().await.topic, "x/y/b");
    plus.none(Duration::from_millis(500)).await; // + is one level
    hash_a.none(Duration::from_millis(100)).await;

    // A new client makes the broker publish $SYS/brokers/<node>/clients/...
    let _other = v4(&n, "wc-other").await;
    let m = sys
        .publish_in(T)
        .await
        .expect("$SYS/# subscriber got no $SYS event for a new client");
    assert!(m.topic.starts_with("$SYS/"), "{}", m.topic);
    all.none(Duration::from_millis(1000)).await;
    plus.none(Duration::from_millis(100)).await;
}

/// Case 8: A second connection with the same client id closes the first; on
/// 3.1.1 the first socket is just closed (no server DISCONNECT).
#[tokio::test]
async fn same_client_id_takes_over() {
    let n = Node::start();
    let (mut a, ack) = raw_connect(&n, &connect_v4("dup-id", 60));
    assert_eq!(ack, Some((0x20, vec![0, 0])));
    let (mut b, ack) = raw_connect(&n, &connect_v4("dup-id", 60));
    assert_eq!(ack, Some((0x20, vec![0, 0])), "second connection accepted");
    let t0 = Instant::now();
    let (bytes, closed) = a.read_all(Duration::from_secs(5));
    assert!(closed, "first connection closed within 5 s");
    assert!(
        bytes.is_empty(),
        "no bytes (no DISCONNECT) on 3.1.1, got {bytes:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The second connection works.
    b.send(&[0xc0, 0]);
    assert_eq!(
        read_packet(&mut b.s),
        Some((0xd0, vec![])),
        "PINGRESP on the new connection"
    );
}

/// Case 9: Keepalive 1 s and silence: closed within ~1.5 s (+ slack), no bytes.
#[tokio::test]
async fn keepalive_expiry_v311() {
    let n = Node::start();
    let (mut r, ack) = raw_connect(&n, &connect_v4("ka-1", 1));
    assert_eq!(ack, Some((0x20, vec![0, 0])));
    let t0 = Instant::now();
    let (bytes, closed) = r.read_all(Duration::from_secs(6));
    let el = t0.elapsed();
    assert!(
        closed,
        "silent client with keepalive 1 not disconnected in 6 s"
    );
    assert!(
        bytes.is_empty(),
        "no bytes before the close on 3.1.1, got {bytes:?}"
    );
    assert!(
        el <= Duration::from_millis(3200),
        "closed after {el:?}, expected ~1.5 s (<= 3 s)"
    );
    assert!(el >= Duration::from_millis(900), "closed too early: {el:?}");
}

/// Case 10: Cross-version delivery: v5 -> 3.1.1 and 3.1.1 -> v5.
#[tokio::test]
async fn cross_version_v5_and_v311() {
    use rumqttc::v5;
    let n = Node::start();

    let mut o5 = v5::MqttOptions::new("x-v5", "127.0.0.1", n.mqtt_port);
    o5.set_keep_alive(Duration::from_secs(30));
    let (c5, mut el5) = v5::AsyncClient::new(o5, 100);
    let (tx5, mut rx5) = mpsc::unbounded_channel();
    let t5 = tokio::spawn(async move {
        while let Ok(ev) = el5.poll().await {
            if let v5::Event::Incoming(p) = ev {
                if tx5.send(p).is_err() {
                    return;
                }
            }
        }
    });
    use v5::mqttbytes::v5::Packet as P5;
    use v5::mqttbytes::QoS as Q5;
    async fn next5<R>(
        rx: &mut mpsc::UnboundedReceiver<P5>,
        mut f: impl FnMut(P5) -> Option<R>,
    ) -> R {
        timeout(T, async {
            loop {
                if let Some(r) = f(rx.recv().await.expect("v5 connection ended")) {
                    return r;
                }
            }
        })
        .await
        .expect("v5 client: expected packet not received in 5 s")
    }
    next5(&mut rx5, |p| matches!(p, P5::ConnAck(_)).then_some(())).await;
    c5.subscribe("x/from4", Q5::AtLeastOnce).await.unwrap();
    next5(&mut rx5, |p| matches!(p, P5::SubAck(_)).then_some(())).await;

    let mut c4 = v4(&n, "x-v4").await;
    c4.sub("x/from5", QoS::ExactlyOnce).await;

    // v5 -> 3.1.1
    c5.publish("x/from5", Q5::ExactlyOnce, false, b"five".to_vec())
        .await
        .unwrap();
    let m = c4.recv().await;
    assert_eq!(
        (m.topic.as_str(), m.qos, &m.payload[..]),
        ("x/from5", QoS::ExactlyOnce, &b"five"[..])
    );

    // 3.1.1 -> v5
    c4.publish_acked("x/from4", QoS::AtLeastOnce, false, b"four")
        .await;
    let m = next5(&mut rx5, |p| match p {
        P5::Publish(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(
        (&m.topic[..], m.qos, &m.payload[..]),
        (&b"x/from4"[..], Q5::AtLeastOnce, &b"four"[..])
    );
    t5.abort();
}

/// Case 11: UNSUBSCRIBE stops delivery.
#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let n = Node::start();
    let mut s = v4(&n, "un-sub").await;
    s.sub("un/t", QoS::AtLeastOnce).await;
    let mut p = v4(&n, "un-pub").await;
    p.publish_acked("un/t", QoS::AtLeastOnce, false, b"1").await;
    assert_eq!(&s.recv().await.payload[..], b"1");
    s.unsub("un/t").await;
    p.publish_acked("un/t", QoS::AtLeastOnce, false, b"2").await;
    p.publish_acked("un/t", QoS::AtMostOnce, false, b"3").await;
    s.none(Duration::from_millis(1000)).await;
    // Unsubscribing a filter never subscribed is acknowledged too.
    s.unsub("never/subscribed").await;
}

/// Case 12: A subscriber that never reads while 20,000 x 1 KB QoS 0 messages
/// are published at it: the broker stays responsive and bounded in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_stall_or_bloat() {
    let n = Node::start();
    let pid = n.pid().expect("pid");
    let rss0 = vm_rss_kb(pid);

    // The slow subscriber: connects, subscribes, then never reads again.
    let (mut slow, ack) = raw_connect(&n, &connect_v4("slow-sub", 0));
    assert_eq!(ack, Some((0x20, vec![0, 0])));
    slow.send(&subscribe_pkt(1, "slow/t", 0));
    assert_eq!(read_packet(&mut slow.s), Some((0x90, vec![0, 1, 0])));

    // The publisher, in a thread (its writes may block on TCP backpressure).
    let addr = n.addr();
    let publisher = std::thread::spawn(move || -> std::io::Result<Duration> {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(&connect_v4("slow-pub", 0))?;
        let ack = read_packet(&mut s);
        assert_eq!(ack, Some((0x20, vec![0, 0])), "publisher CONNACK");
        let payload = vec![b'x'; 1024];
        let one = publish_qos0("slow/t", &payload);
        let mut batch = Vec::with_capacity(one.len() * 1000);
        for _ in 0..20 {
            batch.clear();
            for _ in 0..1000 {
                batch.extend_from_slice(&one);
            }
            s.write_all(&batch)?;
        }
        // PINGREQ round trip: all 20,000 were read by the broker.
        s.write_all(&[0xc0, 0])?;
        let mut got = None;
        while let Some((h, _)) = read_packet(&mut s) {
            if h == 0xd0 {
                got = Some(());
                break;
            }
        }
        assert!(
            got.is_some(),
            "publisher got no PINGRESP after its 20,000 messages"
        );
        Ok(t0.elapsed())
    });

    // Meanwhile another client must get service within 2 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probe = |id: &'static str| {
        let n = &n;
        async move {
            let t0 = Instant::now();
            let mut c = v4(n, id).await;
            let mut raw = Raw::connect(n);
            raw.send(&connect_v4(&format!("{id}-raw"), 0));
            assert_eq!(read_packet(&mut raw.s), Some((0x20, vec![0, 0])));
            raw.send(&[0xc0, 0]);
            assert_eq!(read_packet(&mut raw.s), Some((0xd0, vec![])), "PINGRESP");
            c.sub("probe/t", QoS::AtLeastOnce).await;
            c.publish_acked("probe/t", QoS::AtLeastOnce, false, b"alive")
                .await;
            let m = c.recv().await;
            assert_eq!(&m.payload[..], b"alive");
            let el = t0.elapsed();
            assert!(
                el < Duration::from_secs(2),
                "{id}: broker slow to serve another client: {el:?}"
            );
            c.disconnect().await;
        }
    };
    timeout(Duration::from_secs(2), probe("probe-during"))
        .await
        .expect("probe while publishing: no service within 2 s");

    let pub_res = tokio::task::spawn_blocking(move || publisher.join())
        .await
        .unwrap();
    let took = match pub_res {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => panic!("publisher I/O error (broker stalled the publisher?): {e}"),
        Err(_) => panic!("publisher thread panicked"),
    };
    eprintln!("publisher sent 20,000 x 1 KB in {took:?}");

    timeout(Duration::from_secs(2), probe("probe-after"))
        .await
        .expect("probe after publishing: no service within 2 s");

    let rss = vm_rss_kb(pid);
    eprintln!("broker VmRSS: {} KB at start, {} KB after", rss0, rss);
    assert!(
        rss < 300 * 1024,
        "broker VmRSS {rss} KB >= 300 MB with a slow consumer"
    );
    drop(slow);
}

/// Packets a client sends right behind its CONNECT may arrive in the same
/// read; they must be handled then, not when the client next sends.
#[test]
fn packets_in_the_same_read_as_connect_are_handled_at_once() {
    let n = Node::start();
    let mut r = Raw::connect(&n);
    let mut bytes = connect_v4("same-read", 60);
    bytes.extend_from_slice(&[0xC0, 0x00]); // PINGREQ
    r.send(&bytes);
    let want = [0x20, 0x02, 0x00, 0x00, 0xD0, 0x00];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < want.len() && Instant::now() < deadline {
        let (b, closed) = r.read_all(Duration::from_millis(200));
        got.extend_from_slice(&b);
        assert!(!closed, "closed after {got:02X?}");
    }
    assert_eq!(got, want, "CONNACK then PINGRESP, without another packet");
}
