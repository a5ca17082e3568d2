//! Bad-input end-to-end tests: raw bytes against the real `emqx-rs` binary.
//!
//! For every bad input the broker must answer as MQTT 5 says (DISCONNECT
//! with a reason code after CONNECT, CONNACK with a reason code for CONNECT
//! problems, a plain close where nothing else is defined), log one line
//! about it, not panic, and leave every other client undisturbed. Each test
//! keeps a healthy rumqttc subscriber + publisher pair connected across the
//! bad input and checks that a message still flows end to end afterwards.

mod common;

use common::{connect_v4, connect_v5, frame, wait_until, Node, Opts, Raw};
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{Client as C5, Event as E5, MqttOptions as O5};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Heavy tests (flood, 1000 connections) run alone; the others share.
static HEAVY: RwLock<()> = RwLock::new(());

fn light() -> std::sync::RwLockReadGuard<'static, ()> {
    HEAVY.read().unwrap_or_else(|e| e.into_inner())
}

fn heavy() -> std::sync::RwLockWriteGuard<'static, ()> {
    HEAVY.write().unwrap_or_else(|e| e.into_inner())
}

static UNIQ: AtomicU64 = AtomicU64::new(1);

fn uniq() -> u64 {
    UNIQ.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// The healthy pair
// ---------------------------------------------------------------------------

/// A rumqttc v5 subscriber and publisher that must stay connected and keep
/// working while bad clients come and go.
struct Healthy {
    topic: String,
    publisher: C5,
    subscriber: C5,
    rx: mpsc::Receiver<Vec<u8>>,
    errors: Arc<Mutex<Vec<String>>>,
    seq: u64,
}

fn drive(
    mut conn: rumqttc::v5::Connection,
    name: String,
    errors: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    ready: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(E5::Incoming(P5::ConnAck(_))) if tx.is_none() => {
                    let _ = ready.send(());
                }
                Ok(E5::Incoming(P5::SubAck(_))) => {
                    let _ = ready.send(());
                }
                Ok(E5::Incoming(P5::Publish(p))) => {
                    if let Some(tx) = &tx {
                        let _ = tx.send(p.payload.to_vec());
                    }
                }
                Ok(E5::Incoming(P5::Disconnect(d))) => {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("{name}: DISCONNECT from broker: {d:?}"));
                }
                Ok(_) => {}
                Err(e) => {
                    errors.lock().unwrap().push(format!("{name}: {e:?}"));
                    // Ends when the client handle is dropped; otherwise
                    // rumqttc would reconnect, which the error list records.
                    if matches!(e, rumqttc::v5::ConnectionError::RequestsDone) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
}

impl Healthy {
    fn start(node: &Node) -> Healthy {
        let n = uniq();
        let topic = format!("healthy/{n}");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();

        let mut so = O5::new(format!("healthy-sub-{n}"), "127.0.0.1", node.mqtt_port);
        so.set_keep_alive(Duration::from_secs(30));
        let (subscriber, sconn) = C5::new(so, 100);
        let (sready_tx, sready) = mpsc::channel();
        drive(
            sconn,
            "subscriber".into(),
            errors.clone(),
            Some(tx),
            sready_tx,
        );
        subscriber
            .subscribe(topic.clone(), Q5::AtLeastOnce)
            .expect("healthy subscribe");
        sready
            .recv_timeout(Duration::from_secs(10))
            .expect("healthy subscriber got no SUBACK");

        let mut po = O5::new(format!("healthy-pub-{n}"), "127.0.0.1", node.mqtt_port);
        po.set_keep_alive(Duration::from_secs(30));
        let (publisher, pconn) = C5::new(po, 1000);
        let (pready_tx, pready) = mpsc::channel();
        drive(pconn, "publisher".into(), errors.clone(), None, pready_tx);
        pready
            .recv_timeout(Duration::from_secs(10))
            .expect("healthy publisher got no CONNACK");

        let mut h = Healthy {
            topic,
            publisher,
            subscriber,
            rx,
            errors,
            seq: 0,
        };
        h.check("at start");
        h
    }

    /// A QoS 1 message goes from the publisher to the subscriber, and
    /// neither lost its connection so far.
    fn check(&mut self, when: &str) {
        self.seq += 1;
        let payload = format!("healthy-{}-{}", self.topic, self.seq).into_bytes();
        self.publisher
            .publish(self.topic.clone(), Q5::AtLeastOnce, false, payload.clone())
            .expect("healthy publish");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(p) if p == payload => break,
                Ok(_) => continue,
                Err(_) => panic!(
                    "healthy pair: message {} not delivered within 10 s ({when}); errors: {:?}",
                    self.seq,
                    self.errors.lock().unwrap()
                ),
            }
        }
        let errs = self.errors.lock().unwrap();
        assert!(
            errs.is_empty(),
            "healthy pair was disturbed ({when}): {errs:?}"
        );
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        let _ = self.publisher.disconnect();
        let _ = self.subscriber.disconnect();
    }
}

// ---------------------------------------------------------------------------
// Raw helpers
// ---------------------------------------------------------------------------

/// Reads one whole MQTT packet (fixed header included) from the socket.
fn read_packet(raw: &mut Raw, timeout: Duration) -> Vec<u8> {
    raw.s.set_read_timeout(Some(timeout)).unwrap();
    let mut first = [0u8; 1];
    raw.s
        .read_exact(&mut first)
        .expect("read the first byte of a packet");
    let mut out = vec![first[0]];
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        raw.s.read_exact(&mut b).expect("read remaining length");
        out.push(b[0]);
        len |= usize::from(b[0] & 0x7F) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    raw.s.read_exact(&mut body).expect("read packet body");
    out.extend_from_slice(&body);
    out
}

/// (remaining length, offset of the body) of a packet's fixed header.
fn parse_header(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let x = *b.get(1 + i)?;
        len |= usize::from(x & 0x7F) << (7 * i);
        if x & 0x80 == 0 {
            return Some((len, 2 + i));
        }
    }
    None
}

/// A raw v5 client past CONNECT/CONNACK (accepted).
fn raw_v5(node: &Node, id: &str, keepalive: u16) -> Raw {
    let mut r = Raw::connect(node);
    r.send(&connect_v5(id, keepalive));
    let ack = read_packet(&mut r, Duration::from_secs(5));
    assert_eq!(ack[0], 0x20, "expected CONNACK, got {ack:02X?}");
    let (_, off) = parse_header(&ack).unwrap();
    assert_eq!(ack[off + 1], 0x00, "CONNACK refused: {ack:02X?}");
    r
}

/// A raw 3.1.1 client past CONNECT/CONNACK (accepted).
fn raw_v4(node: &Node, id: &str, keepalive: u16) -> Raw {
    let mut r = Raw::connect(node);
    r.send(&connect_v4(id, keepalive));
    let ack = read_packet(&mut r, Duration::from_secs(5));
    assert_eq!(ack, vec![0x20, 2, 0, 0], "3.1.1 CONNACK");
    r
}

/// Expects a v5 DISCONNECT with `code` and then the close, within `within`.
fn expect_disconnect(raw: &mut Raw, code: u8, within: Duration, what: &str) {
    let t0 = Instant::now();
    let (bytes, closed) = raw.read_all(within);
    assert!(
        !bytes.is_empty(),
        "{what}: expected DISCONNECT 0x{code:02X}, got no bytes (closed = {closed}, after {:?})",
        t0.elapsed()
    );
    assert_eq!(
        bytes[0], 0xE0,
        "{what}: expected DISCONNECT 0x{code:02X}, got {:02X?}",
        bytes
    );
    let (len, off) = parse_header(&bytes).expect("DISCONNECT header");
    assert!(
        bytes.len() >= off + len,
        "{what}: truncated DISCONNECT {bytes:02X?}"
    );
    let rc = if len == 0 { 0 } else { bytes[off] };
    assert_eq!(
        rc, code,
        "{what}: DISCONNECT reason 0x{rc:02X}, expected 0x{code:02X}: {bytes:02X?}"
    );
    assert_eq!(
        bytes.len(),
        off + len,
        "{what}: bytes after DISCONNECT: {bytes:02X?}"
    );
    assert!(
        closed,
        "{what}: socket not closed within {within:?} after DISCONNECT"
    );
}

/// Expects the socket to close without any byte, within `within`.
fn expect_plain_close(raw: &mut Raw, within: Duration, what: &str) {
    let (bytes, closed) = raw.read_all(within);
    assert!(
        bytes.is_empty(),
        "{what}: expected a plain close, got {bytes:02X?}"
    );
    assert!(closed, "{what}: socket not closed within {within:?}");
}

/// Count of log lines containing `needle`.
fn log_count(node: &Node, needle: &str) -> usize {
    node.log().lines().filter(|l| l.contains(needle)).count()
}

/// The node is alive, never panicked, and logged exactly `n` lines
/// mentioning `needle`.
fn assert_node_ok(node: &mut Node, needle: &str, n: usize) {
    wait_until(Duration::from_secs(3), || log_count(node, needle) >= n);
    // A moment for duplicates to show up.
    std::thread::sleep(Duration::from_millis(100));
    let log = node.log();
    let c = log_count(node, needle);
    assert_eq!(
        c, n,
        "expected {n} log line(s) mentioning {needle:?}, found {c}; log:\n{log}"
    );
    assert_alive(node);
}

fn assert_alive(node: &mut Node) {
    let log = node.log();
    assert!(!log.contains("panicked"), "node panicked; log:\n{log}");
    assert!(node.alive(), "node process died; log:\n{log}");
}

fn publish_v5(header: u8, topic: &[u8], pid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    if let Some(p) = pid {
        body.extend_from_slice(&p.to_be_bytes());
    }
    body.push(0); // no properties
    body.extend_from_slice(payload);
    frame(header, &body)
}

fn publish_v4(header: u8, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(payload);
    frame(header, &body)
}

fn subscribe_v5(header: u8, pid: u16, filter: &str, opts: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(opts);
    frame(header, &body)
}

/// A fixed header with remaining length `len` and no body.
fn header_only(first: u8, mut len: usize) -> Vec<u8> {
    let mut v = vec![first];
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        v.push(b);
        if len == 0 {
            break;
        }
    }
    v
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// 1. Remaining length of 5 bytes (continuation bit on the 4th).
#[test]
fn malformed_remaining_length() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "bad-rl", 60);
    r.send(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    expect_disconnect(&mut r, 0x81, secs(3), "5-byte remaining length");
    assert_node_ok(&mut node, "remaining length longer than 4 bytes", 1);
    h.check("after malformed remaining length");
}

/// 2a. A truncated packet, then the client closes.
#[test]
fn truncated_packet_then_client_close() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    {
        let mut r = raw_v5(&node, "trunc-close", 60);
        let p = publish_v5(0x30, b"t/x", None, &[7u8; 100]);
        r.send(&p[..20]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = r.s.shutdown(std::net::Shutdown::Both);
    }
    // The same before CONNECT is complete.
    {
        let mut r = Raw::connect(&node);
        let c = connect_v5("trunc-connect", 60);
        r.send(&c[..c.len() - 3]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = r.s.shutdown(std::net::Shutdown::Both);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_alive(&mut node);
    h.check("after truncated packets and client close");
}

/// 2b. A truncated packet and the client keeps the socket open: nothing
/// happens until the keepalive (2 s * 1.5) expires.
#[test]
fn truncated_packet_waits_for_keepalive() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "trunc-open", 2);
    let p = publish_v5(0x30, b"t/x", None, &[7u8; 100]);
    let t0 = Instant::now();
    r.send(&p[..20]);
    let (bytes, closed) = r.read_all(Duration::from_millis(1500));
    assert!(
        bytes.is_empty() && !closed,
        "broker acted on a truncated packet before the keepalive expired: {bytes:02X?} closed={closed}"
    );
    h.check("while a truncated packet is pending");
    expect_disconnect(&mut r, 0x8D, secs(5), "keepalive after truncated packet");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took <= secs(5),
        "keepalive close after {took:?}, expected about 3 s"
    );
    assert_node_ok(&mut node, "keepalive timeout", 1);
    h.check("after keepalive close");
}

/// 3. Packet type 0 after CONNECT.
#[test]
fn reserved_packet_type_zero() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "type0", 60);
    r.send(&[0x00, 0x00]);
    expect_disconnect(&mut r, 0x81, secs(3), "packet type 0");
    assert_node_ok(&mut node, "reserved packet type 0", 1);
    h.check("after packet type 0");
}

/// 4. Reserved fixed-header flag bits.
#[test]
fn reserved_flag_bits() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PUBREL flags 0000", vec![0x60, 0x02, 0x00, 0x01]),
        ("SUBSCRIBE flags 0000", subscribe_v5(0x80, 1, "a/b", 0)),
        ("PINGREQ flags 0001", vec![0xC1, 0x00]),
    ];
    let n = cases.len();
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let mut r = raw_v5(&node, &format!("flags-{i}"), 60);
        r.send(&bytes);
        expect_disconnect(&mut r, 0x81, secs(3), what);
        h.check(what);
    }
    assert_node_ok(&mut node, "with fixed header flags", n);
    h.check("after reserved flags");
}

/// 5. A packet before CONNECT: plain close, no bytes.
#[test]
fn packet_before_connect() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PINGREQ before CONNECT", vec![0xC0, 0x00]),
        ("PUBLISH before CONNECT", publish_v4(0x30, b"a/b", b"hello")),
    ];
    let n = cases.len();
    for (what, bytes) in cases {
        let mut r = Raw::connect(&node);
        r.send(&bytes);
        expect_plain_close(&mut r, secs(3), what);
        h.check(what);
    }
    assert_node_ok(&mut node, "first packet must be CONNECT", n);
    h.check("after packets before CONNECT");
}

/// 6. A second CONNECT: DISCONNECT 0x82.
#[test]
fn second_connect() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "twice", 60);
    r.send(&connect_v5("twice", 60));
    expect_disconnect(&mut r, 0x82, secs(3), "second CONNECT");
    assert_node_ok(&mut node, "second CONNECT", 1);
    h.check("after second CONNECT");
}

/// 7a. Invalid UTF-8 in a PUBLISH topic: DISCONNECT 0x81.
#[test]
fn invalid_utf8_publish_topic() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "utf8-topic", 60);
    r.send(&publish_v5(0x30, &[b'a', b'/', 0xC3, 0x28], None, b"x"));
    expect_disconnect(&mut r, 0x81, secs(3), "invalid UTF-8 topic");
    assert_node_ok(&mut node, "topic name is not valid UTF-8", 1);
    h.check("after invalid UTF-8 topic");
}

/// 7b. Invalid UTF-8 in the client id: CONNACK 0x81 or plain close, but closed.
#[test]
fn invalid_utf8_client_id() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
    body.extend_from_slice(&[0, 3, b'a', 0xFF, 0xFE]);
    let mut r = Raw::connect(&node);
    r.send(&frame(0x10, &body));
    let (bytes, closed) = r.read_all(secs(3));
    eprintln!("invalid UTF-8 client id -> {bytes:02X?}, closed = {closed}");
    if !bytes.is_empty() {
        assert_eq!(bytes[0], 0x20, "expected CONNACK or nothing: {bytes:02X?}");
        let (_, off) = parse_header(&bytes).unwrap();
        assert_eq!(
            bytes[off + 1],
            0x81,
            "CONNACK reason for a bad client id: {bytes:02X?}"
        );
    }
    assert!(closed, "socket not closed after invalid UTF-8 client id");
    assert_node_ok(&mut node, "client identifier is not valid UTF-8", 1);
    h.check("after invalid UTF-8 client id");
}

/// 8. Wildcards in a PUBLISH topic: DISCONNECT 0x90; 3.1.1 plain close.
#[test]
fn wildcard_in_publish_topic() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    for (i, t) in ["a/+", "#"].iter().enumerate() {
        let mut r = raw_v5(&node, &format!("wild5-{i}"), 60);
        r.send(&publish_v5(0x30, t.as_bytes(), None, b"x"));
        expect_disconnect(&mut r, 0x90, secs(3), &format!("v5 PUBLISH to {t}"));
        h.check(t);
    }
    for (i, t) in ["a/+", "#"].iter().enumerate() {
        let mut r = raw_v4(&node, &format!("wild4-{i}"), 60);
        r.send(&publish_v4(0x30, t.as_bytes(), b"x"));
        expect_plain_close(&mut r, secs(3), &format!("3.1.1 PUBLISH to {t}"));
        h.check(t);
    }
    assert_node_ok(&mut node, "invalid topic name", 4);
    h.check("after wildcard topics");
}

/// 9. Empty topic without a topic alias: DISCONNECT 0x82; 3.1.1 close.
#[test]
fn empty_topic_without_alias() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "empty5", 60);
    r.send(&publish_v5(0x30, b"", None, b"x"));
    expect_disconnect(&mut r, 0x82, secs(3), "v5 empty topic");
    h.check("after v5 empty topic");
    let mut r = raw_v4(&node, "empty4", 60);
    r.send(&publish_v4(0x30, b"", b"x"));
    expect_plain_close(&mut r, secs(3), "3.1.1 empty topic");
    // 3.1.1 empty topic is either a channel error or an invalid topic name.
    wait_until(secs(3), || {
        log_count(&node, "empty topic") + log_count(&node, "invalid topic name") >= 2
    });
    let n = log_count(&node, "empty topic") + log_count(&node, "invalid topic name");
    assert_eq!(n, 2, "log lines about empty topics:\n{}", node.log());
    assert_alive(&mut node);
    h.check("after empty topics");
}

/// 10a. A PUBLISH larger than mqtt.max_packet_size: DISCONNECT 0x95.
#[test]
fn packet_too_large() {
    let _g = light();
    let mut node = Node::start_with(Opts {
        extra: "mqtt.max_packet_size = 1KB\n".into(),
        ..Default::default()
    });
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "big", 60);
    r.send(&publish_v5(0x30, b"big/t", None, &[0x55; 2048]));
    expect_disconnect(&mut r, 0x95, secs(3), "2 KB PUBLISH over 1 KB limit");
    assert_node_ok(&mut node, "exceeds the maximum packet size", 1);
    h.check("after 2 KB PUBLISH");
}

/// 10b. A header claiming 200 MB, then nothing: DISCONNECT 0x95 at once.
#[test]
fn packet_too_large_header_only() {
    let _g = light();
    let mut node = Node::start_with(Opts {
        extra: "mqtt.max_packet_size = 1KB\n".into(),
        ..Default::default()
    });
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "huge", 60);
    let t0 = Instant::now();
    r.send(&header_only(0x30, 200 * 1024 * 1024));
    // Within 1 s: the broker must not wait for the body.
    expect_disconnect(&mut r, 0x95, secs(1), "200 MB header");
    assert!(t0.elapsed() < secs(1), "took {:?}", t0.elapsed());
    assert_node_ok(&mut node, "exceeds the maximum packet size", 1);
    h.check("after 200 MB header");
}

/// 11. PUBLISH with QoS 3: DISCONNECT 0x81.
#[test]
fn publish_qos3() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "qos3", 60);
    r.send(&publish_v5(0x36, b"a/b", Some(1), b"x"));
    expect_disconnect(&mut r, 0x81, secs(3), "QoS 3 PUBLISH");
    assert_node_ok(&mut node, "QoS 3", 1);
    h.check("after QoS 3");
}

fn connect_with(name: &str, level: u8) -> Vec<u8> {
    let mut body = (name.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&[level, 0x02, 0, 60]);
    if level == 5 || level == 6 {
        body.push(0);
    }
    body.extend_from_slice(&[0, 4, b'p', b'r', b'o', b't']);
    frame(0x10, &body)
}

/// 12. Unsupported protocol name / level.
#[test]
fn unsupported_protocol() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    // MQTT level 6: v5 CONNACK 0x84 or 3.1.1 CONNACK return code 1.
    let mut r = Raw::connect(&node);
    r.send(&connect_with("MQTT", 6));
    let (bytes, closed) = r.read_all(secs(3));
    eprintln!("MQTT level 6 -> {bytes:02X?}, closed = {closed}");
    let ok = bytes == [0x20, 2, 0, 1]
        || (bytes.len() >= 4 && bytes[0] == 0x20 && {
            let (len, off) = parse_header(&bytes).unwrap();
            bytes.len() == off + len && bytes[off] == 0 && bytes[off + 1] == 0x84
        });
    assert!(
        ok,
        "MQTT level 6: expected CONNACK 0x84 (v5) or return code 1 (3.1.1), got {bytes:02X?}"
    );
    assert!(closed, "MQTT level 6: socket not closed");
    h.check("after MQTT level 6");
    // MQIsdp level 4, XYZ: CONNACK return code 1 or plain close.
    for (name, level) in [("MQIsdp", 4u8), ("XYZ", 4u8)] {
        let mut r = Raw::connect(&node);
        r.send(&connect_with(name, level));
        let (bytes, closed) = r.read_all(secs(3));
        eprintln!("{name} level {level} -> {bytes:02X?}, closed = {closed}");
        assert!(
            bytes.is_empty() || bytes == [0x20, 2, 0, 1],
            "{name} level {level}: expected CONNACK return code 1 or nothing, got {bytes:02X?}"
        );
        assert!(closed, "{name} level {level}: socket not closed");
        h.check(name);
    }
    assert_node_ok(&mut node, "unsupported protocol", 3);
    h.check("after unsupported protocols");
}

/// 13. Keepalive 1 and silence: DISCONNECT 0x8D within 3 s; 3.1.1 close.
#[test]
fn keepalive_expiry() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "ka5", 1);
    let t0 = Instant::now();
    expect_disconnect(&mut r, 0x8D, secs(3), "v5 keepalive 1");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        t0.elapsed()
    );
    h.check("after v5 keepalive expiry");
    let mut r = raw_v4(&node, "ka4", 1);
    let t0 = Instant::now();
    expect_plain_close(&mut r, secs(3), "3.1.1 keepalive 1");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        t0.elapsed()
    );
    assert_node_ok(&mut node, "keepalive timeout", 2);
    h.check("after 3.1.1 keepalive expiry");
}

fn vm_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn metric(out: &str, name: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// 14. A subscriber that stops reading while 50,000 1 KB messages flow.
#[test]
fn client_that_stops_reading() {
    let _g = heavy();
    let mut node = Node::start();
    let pid = node.pid().expect("pid");
    let mut h = Healthy::start(&node);

    // The stuck subscriber: subscribes, reads its SUBACK, never reads again.
    let mut stuck = raw_v5(&node, "stuck", 0);
    stuck.send(&subscribe_v5(0x82, 1, "flood/#", 0x01));
    let ack = read_packet(&mut stuck, secs(5));
    assert_eq!(ack[0], 0x90, "SUBACK expected: {ack:02X?}");

    let mut fo = O5::new("flooder", "127.0.0.1", node.mqtt_port);
    fo.set_keep_alive(secs(60));
    let (flooder, fconn) = C5::new(fo, 1000);
    let ferrs = Arc::new(Mutex::new(Vec::new()));
    let (fready_tx, fready) = mpsc::channel();
    drive(fconn, "flooder".into(), ferrs.clone(), None, fready_tx);
    fready.recv_timeout(secs(10)).expect("flooder CONNACK");

    let payload = vec![0xA5u8; 1024];
    let mut max_rss = vm_rss_kb(pid);
    let t0 = Instant::now();
    for i in 0..50_000u32 {
        let qos = if i % 10_000 == 5_000 {
            Q5::AtLeastOnce
        } else {
            Q5::AtMostOnce
        };
        flooder
            .publish(format!("flood/{}", i % 16), qos, false, payload.clone())
            .expect("flood publish");
        if i % 1000 == 999 {
            max_rss = max_rss.max(vm_rss_kb(pid));
        }
        if i % 10_000 == 9_999 {
            h.check(&format!("during flood, after {} messages", i + 1));
            max_rss = max_rss.max(vm_rss_kb(pid));
            assert!(max_rss < 300 * 1024, "RSS {max_rss} kB during flood");
        }
    }
    eprintln!("flood published in {:?}", t0.elapsed());
    h.check("right after the flood");

    // The stuck subscriber is disconnected or its messages are dropped.
    let mut seen = String::new();
    let handled = wait_until(secs(30), || {
        max_rss = max_rss.max(vm_rss_kb(pid));
        let (_, m) = node.ctl(&["broker", "metrics"]);
        // messages.dropped also counts messages nobody subscribed to ($SYS).
        let dropped = metric(&m, "messages.dropped")
            .saturating_sub(metric(&m, "messages.dropped.no_subscribers"));
        let (_, c) = node.ctl(&["clients", "show", "stuck"]);
        let client_dropped = c
            .split("dropped_msgs=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let gone = c.contains("Not Found") || c.contains("connected=false");
        seen = format!("metrics messages.dropped={dropped}; client: {c}");
        dropped > 0 || client_dropped > 0 || gone
    });
    eprintln!("stuck subscriber: {seen}");
    assert!(
        handled,
        "stuck subscriber neither disconnected nor dropping messages: {seen}"
    );
    assert!(max_rss < 300 * 1024, "max RSS {max_rss} kB");
    eprintln!("max RSS {} MB", max_rss / 1024);
    assert!(
        ferrs.lock().unwrap().is_empty(),
        "flooder disturbed: {:?}",
        ferrs.lock().unwrap()
    );
    assert_alive(&mut node);
    h.check("after flood");
    drop(stuck);
}

/// Deterministic pseudo-random bytes (xorshift64).
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// 15. 1 KB of garbage as the first packet: close, node alive.
#[test]
fn garbage_first_packet() {
    let _g = light();
    let mut node = Node::start_with(Opts {
        extra: "mqtt.idle_timeout = 3s\n".into(),
        ..Default::default()
    });
    let mut h = Healthy::start(&node);
    let mut inputs: Vec<Vec<u8>> = (1..=8u64).map(|s| garbage(s * 0x9E37_79B9, 1024)).collect();
    // One that looks like a CONNECT header.
    let mut g = garbage(42, 1024);
    g[0] = 0x10;
    inputs.push(g);
    for (i, g) in inputs.iter().enumerate() {
        let mut r = Raw::connect(&node);
        r.send(g);
        let (_, closed) = r.read_all(secs(6));
        assert!(
            closed,
            "garbage #{i} (first bytes {:02X?}): socket not closed",
            &g[..8]
        );
        h.check(&format!("after garbage #{i}"));
    }
    assert_alive(&mut node);
    // The line of the last close may reach the log a moment after its
    // socket closed.
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("bad first packet") || l.contains("no CONNECT within"))
            .count()
    };
    wait_until(secs(5), || count(&node.log()) >= inputs.len());
    let log = node.log();
    let lines = count(&log);
    assert_eq!(
        lines,
        inputs.len(),
        "one log line per garbage connection expected; log:\n{log}"
    );
    h.check("after garbage");
}

/// Case 16: 1000 connections send half a CONNECT and stall: closed after
/// mqtt.idle_timeout (2 s); the healthy pair works throughout.
#[test]
fn half_connect_stall() {
    let _g = heavy();
    let mut node = Node::start_with(Opts {
        extra: "mqtt.idle_timeout = 2s\n".into(),
        ..Default::default()
    });
    let mut h = Healthy::start(&node);
    let c = connect_v5("stalling-client", 60);
    let half = &c[..c.len() / 2];
    let mut conns = Vec::with_capacity(1000);
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..1000 {
        let t = Instant::now();
        let mut r = Raw::connect(&node);
        r.send(half);
        slowest = slowest.max(t.elapsed());
        conns.push((t, r));
        if i % 250 == 249 {
            h.check(&format!("after {} stalled connections", i + 1));
        }
    }
    let opened = t0.elapsed();
    eprintln!("1000 half CONNECTs in {opened:?}, slowest connect+send {slowest:?}");
    h.check("with 1000 stalled connections");
    // The last one is not closed before the idle timeout.
    {
        let (t, r) = conns.last_mut().unwrap();
        if t.elapsed() < Duration::from_millis(1500) {
            let (b, closed) = r.read_all(Duration::from_millis(200));
            assert!(
                b.is_empty() && !closed,
                "stalled connection closed after {:?}, before idle_timeout (2 s)",
                t.elapsed()
            );
        }
    }
    // Every one is closed, without bytes, within idle_timeout + 3 s slack.
    let mut late = 0;
    let mut first_late = String::new();
    for (i, (t, r)) in conns.iter_mut().enumerate() {
        let left = (*t + secs(5))
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let (b, closed) = r.read_all(left);
        assert!(b.is_empty(), "stalled connection #{i} got bytes {b:02X?}");
        if !closed {
            late += 1;
            if first_late.is_empty() {
                first_late = format!("#{i}, still open {:?} after its half CONNECT", t.elapsed());
            }
        }
    }
    assert_eq!(
        late, 0,
        "{late} stalled connections not closed within idle_timeout (2 s) + 3 s; first: {first_late}"
    );
    eprintln!("all stalled connections closed after {:?}", t0.elapsed());
    h.check("after the stalled connections were closed");
    assert_node_ok(&mut node, "no CONNECT within", 1000);
    h.check("at end");
}

/// Splits what a socket received into whole packets (first byte, body).
fn split_packets(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((len, off)) = parse_header(b) {
        if b.len() < off + len {
            break;
        }
        out.push((b[0], b[off..off + len].to_vec()));
        b = &b[off + len..];
    }
    out
}

/// The payloads the healthy subscriber receives within `within`, in order.
fn received(h: &Healthy, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while let Ok(p) =
        h.rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        got.push(p);
    }
    got
}

/// Packets that came in one read with a malformed one behind them: the
/// good ones before it are handled (acknowledged and delivered, in order),
/// then DISCONNECT 0x81.
#[test]
fn packets_ahead_of_a_malformed_one_are_handled() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "batch-bad", 60);
    let mut bytes = Vec::new();
    for i in 1..=3u16 {
        let payload = format!("ahead-{i}");
        bytes.extend_from_slice(&publish_v5(
            0x32,
            h.topic.as_bytes(),
            Some(i),
            payload.as_bytes(),
        ));
    }
    bytes.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    r.send(&bytes);
    let (got, closed) = r.read_all(secs(3));
    let packets = split_packets(&got);
    let kinds: Vec<u8> = packets.iter().map(|p| p.0).collect();
    assert_eq!(
        kinds,
        vec![0x40, 0x40, 0x40, 0xE0],
        "three PUBACKs, then DISCONNECT: {got:02X?}"
    );
    for (i, (_, body)) in packets.iter().take(3).enumerate() {
        assert_eq!(&body[..2], &(i as u16 + 1).to_be_bytes(), "PUBACK {i}");
    }
    assert_eq!(packets[3].1.first(), Some(&0x81), "DISCONNECT reason");
    assert!(closed, "the connection is closed");
    let want: Vec<Vec<u8>> = (1..=3).map(|i| format!("ahead-{i}").into_bytes()).collect();
    assert_eq!(received(&h, secs(2)), want, "delivered once each, in order");
    assert_node_ok(&mut node, "remaining length longer than 4 bytes", 1);
    h.check("after packets ahead of a malformed one");
}

/// A DISCONNECT with packets behind it in the same read: what came before
/// it is handled, what came after it is not.
#[test]
fn packets_behind_a_disconnect_are_not_handled() {
    let _g = light();
    let mut node = Node::start();
    let mut h = Healthy::start(&node);
    let mut r = raw_v5(&node, "batch-disc", 60);
    let mut bytes = publish_v5(0x32, h.topic.as_bytes(), Some(1), b"before");
    bytes.extend_from_slice(&[0xE0, 0x00]);
    bytes.extend_from_slice(&publish_v5(0x32, h.topic.as_bytes(), Some(2), b"after"));
    r.send(&bytes);
    let (got, closed) = r.read_all(secs(3));
    let packets = split_packets(&got);
    assert_eq!(
        packets,
        vec![(0x40, vec![0, 1])],
        "one PUBACK, for the publish before the DISCONNECT: {got:02X?}"
    );
    assert!(closed, "the connection is closed");
    assert_eq!(
        received(&h, secs(2)),
        vec![b"before".to_vec()],
        "only the publish before the DISCONNECT is delivered"
    );
    assert_alive(&mut node);
    h.check("after packets behind a DISCONNECT");
}
