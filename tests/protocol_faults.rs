//! Protocol fault end-to-end tests: exact bytes over real TCP sockets
//! against the real `emqx-rs` binary, for faults found in review:
//!
//! 1. control packets fit the client's Maximum Packet Size (MQTT-3.1.2-24);
//! 2. a clean session's state is never reused (MQTT-3.1.2-6, 3.2.2-3),
//!    also under reconnect races, on one node and across a cluster;
//! 3. MQTT 3.1 accepts DUP on PUBREL / SUBSCRIBE / UNSUBSCRIBE (3.1.1 not);
//! 4. a Response Topic with wildcards is a protocol error (MQTT-3.3.2-14);
//! 5. `$SYS` is read-only for clients (PUBLISH and Will);
//! 6. `mqtt.upgrade_qos` applies to retained messages;
//! 7. listener mount points are applied (and checked at start).

mod common;

use common::cluster;
use common::{frame, parse_props, rand_u32, read_varint, varint, wait_until, Node, Opts, Raw};
use std::io::Read;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A client id unique to this test run.
fn uid(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand_u32() % 1_000_000)
}

fn str16(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// A v5 CONNECT (keepalive 60) with raw property bytes.
fn connect5(id: &str, clean: bool, props: &[u8]) -> Vec<u8> {
    connect5k(id, clean, 60, props)
}

/// A v5 CONNECT with a keepalive and raw property bytes.
fn connect5k(id: &str, clean: bool, keepalive: u16, props: &[u8]) -> Vec<u8> {
    let mut body = str16(b"MQTT");
    body.push(5);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&keepalive.to_be_bytes());
    body.extend(varint(props.len()));
    body.extend_from_slice(props);
    body.extend(str16(id.as_bytes()));
    frame(0x10, &body)
}

/// A v5 CONNECT (clean start, keepalive 10) with only a Maximum Packet
/// Size property.
fn connect5_max(id: &str, max: u32) -> Vec<u8> {
    let mut props = vec![0x27];
    props.extend_from_slice(&max.to_be_bytes());
    connect5k(id, true, 10, &props)
}

/// A 3.1.1 CONNECT (keepalive 60).
fn connect4(id: &str, clean: bool) -> Vec<u8> {
    let mut body = str16(b"MQTT");
    body.push(4);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend(str16(id.as_bytes()));
    frame(0x10, &body)
}

/// An MQTT 3.1 CONNECT: `00 06 MQIsdp 03 02 00 3C` + client id.
fn connect3(id: &str) -> Vec<u8> {
    let mut body = vec![
        0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70, 0x03, 0x02, 0x00, 0x3C,
    ];
    body.extend(str16(id.as_bytes()));
    frame(0x10, &body)
}

/// A PUBLISH: `props` is `Some` for v5 (raw property bytes), `None` for 3.x.
fn publish(
    header: u8,
    topic: &str,
    pid: Option<u16>,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = str16(topic.as_bytes());
    if let Some(p) = pid {
        body.extend_from_slice(&p.to_be_bytes());
    }
    if let Some(pr) = props {
        body.extend(varint(pr.len()));
        body.extend_from_slice(pr);
    }
    body.extend_from_slice(payload);
    frame(header, &body)
}

/// A SUBSCRIBE with one filter; v5 adds an empty property block.
fn subscribe(header: u8, v5: bool, pid: u16, filter: &str, opts: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend(str16(filter.as_bytes()));
    body.push(opts);
    frame(header, &body)
}

/// An UNSUBSCRIBE with one filter; v5 adds an empty property block.
fn unsubscribe(header: u8, v5: bool, pid: u16, filter: &str) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend(str16(filter.as_bytes()));
    frame(header, &body)
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// (remaining length, offset of the body) of a whole packet's bytes.
fn parse_header(b: &[u8]) -> (usize, usize) {
    let mut len = 0usize;
    for i in 0..4 {
        let x = b[1 + i];
        len |= usize::from(x & 0x7F) << (7 * i);
        if x & 0x80 == 0 {
            return (len, 2 + i);
        }
    }
    panic!("bad remaining length in {b:02X?}");
}

fn body(b: &[u8]) -> &[u8] {
    let (len, off) = parse_header(b);
    assert_eq!(b.len(), off + len, "packet length: {b:02X?}");
    &b[off..]
}

enum Got {
    Packet(Vec<u8>),
    Eof,
    Timeout,
}

/// Reads one whole packet (fixed header included) within `d`.
fn try_packet(r: &mut Raw, d: Duration) -> Got {
    r.s.set_read_timeout(Some(d)).expect("read timeout");
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    match r.s.read(&mut b) {
        Ok(0) => return Got::Eof,
        Ok(_) => out.push(b[0]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Got::Eof,
        Err(_) => return Got::Timeout,
    }
    let mut len = 0usize;
    for i in 0..4 {
        r.s.read_exact(&mut b).expect("read remaining length");
        out.push(b[0]);
        len |= usize::from(b[0] & 0x7F) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut rest = vec![0u8; len];
    r.s.read_exact(&mut rest).expect("read packet body");
    out.extend_from_slice(&rest);
    Got::Packet(out)
}

/// The next packet; panics (naming `what`) on EOF or after 5 s.
fn next(r: &mut Raw, what: &str) -> Vec<u8> {
    match try_packet(r, secs(5)) {
        Got::Packet(p) => p,
        Got::Eof => panic!("{what}: connection closed instead of a packet"),
        Got::Timeout => panic!("{what}: no packet within 5 s"),
    }
}

/// Nothing arrives within `d` and the connection stays open.
fn expect_silence(r: &mut Raw, d: Duration, what: &str) {
    let (bytes, closed) = r.read_all(d);
    assert!(
        bytes.is_empty(),
        "{what}: expected nothing, got {bytes:02X?}"
    );
    assert!(!closed, "{what}: connection closed");
}

/// The server closes the connection without sending a byte: read
/// returns EOF (0 bytes) or a reset within 3 s.
fn expect_eof_no_bytes(r: &mut Raw, what: &str) {
    r.s.set_read_timeout(Some(secs(3))).expect("read timeout");
    let mut buf = [0u8; 256];
    match r.s.read(&mut buf) {
        Ok(0) => {}
        // Closed without a byte either way: a reset comes when the close
        // races the kernel's acknowledgement of what the client sent.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: expected EOF with no bytes, got {:02X?}", &buf[..n]),
        Err(e) => panic!(
            "{what}: expected EOF with no bytes, got error {e} ({:?})",
            e.kind()
        ),
    }
}

/// The server closes the connection (EOF or reset) without sending a
/// byte, within 3 s.
fn expect_plain_close(r: &mut Raw, what: &str) {
    let (bytes, closed) = r.read_all(secs(3));
    assert!(
        bytes.is_empty(),
        "{what}: expected a plain close, got {bytes:02X?}"
    );
    assert!(closed, "{what}: connection not closed within 3 s");
}

/// Expects exactly one v5 DISCONNECT with `code`, then the close;
/// returns the DISCONNECT's bytes.
fn expect_disconnect(r: &mut Raw, code: u8, what: &str) -> Vec<u8> {
    let (bytes, closed) = r.read_all(secs(3));
    assert!(
        !bytes.is_empty(),
        "{what}: expected DISCONNECT 0x{code:02X}, got nothing (closed = {closed})"
    );
    assert_eq!(
        bytes[0], 0xE0,
        "{what}: expected DISCONNECT 0x{code:02X}, got {bytes:02X?}"
    );
    let (len, off) = parse_header(&bytes);
    assert_eq!(
        bytes.len(),
        off + len,
        "{what}: not exactly one DISCONNECT: {bytes:02X?}"
    );
    let rc = if len == 0 { 0 } else { bytes[off] };
    assert_eq!(
        rc, code,
        "{what}: DISCONNECT reason 0x{rc:02X}, expected 0x{code:02X}: {bytes:02X?}"
    );
    assert!(
        closed,
        "{what}: connection not closed within 3 s after DISCONNECT"
    );
    bytes
}

/// Properties of a v5 packet whose variable header before them is `skip`
/// bytes long (CONNACK 2, DISCONNECT 1, PUBACK 3).
fn props_after(p: &[u8], skip: usize) -> Vec<(u8, Vec<u8>)> {
    let b = body(p);
    if b.len() <= skip {
        return Vec::new();
    }
    let mut i = skip;
    let n = read_varint(b, &mut i);
    assert_eq!(i + n, b.len(), "property length of {p:02X?}");
    parse_props(&b[i..])
}

/// A PUBLISH's (header, topic, packet id, payload); `v5` skips properties.
fn parse_publish(p: &[u8], v5: bool) -> (u8, String, Option<u16>, Vec<u8>) {
    assert_eq!(p[0] >> 4, 3, "expected PUBLISH, got {p:02X?}");
    let b = body(p);
    let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
    let topic = String::from_utf8(b[2..2 + tl].to_vec()).expect("UTF-8 topic");
    let mut i = 2 + tl;
    let pid = if p[0] & 0x06 != 0 {
        i += 2;
        Some(u16::from_be_bytes([b[i - 2], b[i - 1]]))
    } else {
        None
    };
    if v5 {
        let n = read_varint(b, &mut i);
        i += n;
    }
    (p[0], topic, pid, b[i..].to_vec())
}

// ---------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------

/// Sends a CONNECT and returns the socket and the CONNACK's bytes.
fn open(n: &Node, connect: &[u8]) -> (Raw, Vec<u8>) {
    let mut r = Raw::connect(n);
    r.send(connect);
    let ack = next(&mut r, "CONNACK");
    assert_eq!(ack[0], 0x20, "expected CONNACK, got {ack:02X?}");
    (r, ack)
}

/// A v5 client past an accepted CONNACK (clean start, no properties).
fn v5(n: &Node, id: &str) -> Raw {
    let (r, ack) = open(n, &connect5(id, true, &[]));
    assert_eq!(body(&ack)[1], 0x00, "{id}: CONNACK refused: {ack:02X?}");
    r
}

/// A 3.1.1 client past an accepted CONNACK (clean session).
fn v4(n: &Node, id: &str) -> Raw {
    let (r, ack) = open(n, &connect4(id, true));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "{id}: 3.1.1 CONNACK");
    r
}

/// Subscribes and checks the SUBACK grants `opts & 3`.
fn sub(r: &mut Raw, v5: bool, pid: u16, filter: &str, opts: u8) {
    r.send(&subscribe(0x82, v5, pid, filter, opts));
    let ack = next(r, &format!("SUBACK for {filter}"));
    let p = pid.to_be_bytes();
    let want = if v5 {
        vec![0x90, 0x04, p[0], p[1], 0x00, opts & 3]
    } else {
        vec![0x90, 0x03, p[0], p[1], opts & 3]
    };
    assert_eq!(ack, want, "SUBACK for {filter}");
}

/// A PINGREQ gets a PINGRESP: the connection is open and in order.
fn ping(r: &mut Raw, what: &str) {
    r.send(&[0xC0, 0x00]);
    let p = next(r, &format!("{what}: PINGRESP"));
    assert_eq!(p, [0xD0, 0x00], "{what}: PINGRESP");
}

fn node_with(extra: &str) -> Node {
    Node::start_with(Opts {
        extra: extra.to_string(),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------
// 1. Client Maximum Packet Size for control packets (MQTT-3.1.2-24)
// ---------------------------------------------------------------------------

/// 1a. Maximum Packet Size 2: no CONNACK fits, so nothing is sent and the
/// connection is closed.
#[test]
fn max_packet_size_2_gets_no_connack_and_close() {
    let n = Node::start();
    let mut r = Raw::connect(&n);
    let connect = [
        0x10, 0x13, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x0A, 0x05, 0x27, 0x00,
        0x00, 0x00, 0x02, 0x00, 0x01, 0x70,
    ];
    assert_eq!(connect.to_vec(), connect5_max("p", 2));
    r.send(&connect);
    expect_eof_no_bytes(&mut r, "CONNECT with Maximum Packet Size 2");
}

/// 1b. CONNACKs for limits 5, 10 and 17 fit; with 5 only the bare CONNACK
/// `20 03 00 00 00` does.
#[test]
fn connack_fits_client_maximum_packet_size() {
    let n = Node::start();
    // Without a limit: the CONNACK carries properties (more than 5 bytes),
    // so the limits below really need trimming.
    let (mut r, full) = open(&n, &connect5("mps-none", true, &[]));
    assert_eq!(body(&full)[1], 0x00, "CONNACK without limit: {full:02X?}");
    assert!(
        full.len() > 5,
        "CONNACK without limit has no properties: {full:02X?}"
    );
    ping(&mut r, "no limit");
    for max in [5u32, 10, 17] {
        let id = format!("mps-{max}");
        let (mut r, ack) = open(&n, &connect5_max(&id, max));
        eprintln!("Maximum Packet Size {max} -> CONNACK {ack:02X?}");
        assert!(
            ack.len() <= max as usize,
            "CONNACK of {} bytes for Maximum Packet Size {max}: {ack:02X?}",
            ack.len()
        );
        assert_eq!(ack[0], 0x20, "{ack:02X?}");
        let b = body(&ack);
        assert_eq!(b[0], 0x00, "session present for {max}: {ack:02X?}");
        assert_eq!(b[1], 0x00, "reason code for {max}: {ack:02X?}");
        // Well formed: the property block parses.
        let _ = props_after(&ack, 2);
        if max == 5 {
            assert_eq!(ack, [0x20, 0x03, 0x00, 0x00, 0x00], "CONNACK for limit 5");
        }
        // Accepted and open.
        ping(&mut r, &format!("limit {max}"));
    }
}

/// 1c. A DISCONNECT for a malformed packet fits the client's limit: the
/// Reason String is left out (it is there without a limit).
#[test]
fn disconnect_fits_client_maximum_packet_size() {
    let n = Node::start();
    // PUBLISH QoS 0 whose topic length (16) runs past the packet (3 bytes).
    let bad = [0x30, 0x05, 0x00, 0x10, 0x61, 0x2F, 0x62];

    let mut r = v5(&n, "disc-nolimit");
    r.send(&bad);
    let full = expect_disconnect(&mut r, 0x81, "malformed PUBLISH, no limit");
    eprintln!("no limit -> {full:02X?}");
    let props = props_after(&full, 1);
    assert!(
        props.iter().any(|(id, _)| *id == 0x1F),
        "no Reason String in the DISCONNECT without a limit: {full:02X?}"
    );
    assert!(
        full.len() > 20,
        "the DISCONNECT without a limit already fits 20 bytes, the test proves nothing: {full:02X?}"
    );

    let (mut r, ack) = open(&n, &connect5_max("disc-limit20", 20));
    assert_eq!(body(&ack)[1], 0x00, "CONNACK: {ack:02X?}");
    assert!(ack.len() <= 20, "CONNACK over 20 bytes: {ack:02X?}");
    r.send(&bad);
    let d = expect_disconnect(&mut r, 0x81, "malformed PUBLISH, limit 20");
    eprintln!("limit 20 -> {d:02X?}");
    assert!(
        d.len() <= 20,
        "DISCONNECT of {} bytes over the limit 20: {d:02X?}",
        d.len()
    );
    let props = props_after(&d, 1);
    assert!(
        !props.iter().any(|(id, _)| *id == 0x1F),
        "Reason String kept in {d:02X?}"
    );
}

// ---------------------------------------------------------------------------
// 2. A clean session's state is never reused (MQTT-3.1.2-6, MQTT-3.2.2-3)
// ---------------------------------------------------------------------------

/// 2a. A persistent CONNECT taking over a clean session's connection does
/// not get that session (Session Present 0, none of its subscriptions).
#[test]
fn persistent_connect_does_not_resume_a_clean_session_v311() {
    let n = Node::start();
    let topic = "wt/clean/topic";
    let mut first = v4(&n, "will-test");
    sub(&mut first, false, 1, topic, 1);

    let mut observer = v4(&n, "wt-observer");
    sub(&mut observer, false, 1, topic, 0);

    let mut second = Raw::connect(&n);
    let mut c = vec![
        0x10, 0x15, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x00, 0x00, 0x3C, 0x00, 0x09,
    ];
    c.extend_from_slice(b"will-test");
    assert_eq!(c, connect4("will-test", false));
    second.send(&c);
    let ack = next(&mut second, "CONNACK of the persistent connect");
    assert_eq!(
        ack,
        [0x20, 0x02, 0x00, 0x00],
        "persistent CONNECT over a clean session: must be Session Present 0"
    );
    // The first connection is taken over.
    expect_plain_close(&mut first, "first (clean) connection after takeover");

    let mut p = v4(&n, "wt-publisher");
    p.send(&publish(0x32, topic, Some(7), None, b"not for you"));
    assert_eq!(next(&mut p, "PUBACK"), [0x40, 0x02, 0x00, 0x07]);
    // The message was routed (the observer has it) ...
    let got = next(&mut observer, "observer's PUBLISH");
    let (_, t, _, payload) = parse_publish(&got, false);
    assert_eq!((t.as_str(), &payload[..]), (topic, &b"not for you"[..]));
    // ... and the new connection has no subscription to receive it with.
    expect_silence(&mut second, ms(700), "new persistent connection");
    ping(&mut second, "new persistent connection");
}

const RACE_ROUNDS: usize = 300;

/// One 3.1.1 round on the given nodes: persistent connect on `a`, close;
/// clean connect on `a`, close (or, `live`, keep it open); persistent
/// connect on `b` at once. Returns the last CONNACK, which must be
/// `20 02 00 00`. A live clean connection must be closed by the takeover.
fn round_v4(a: &Node, b: &Node, id: &str, live: bool) -> Vec<u8> {
    {
        let (r, ack) = open(a, &connect4(id, false));
        assert!(
            ack == [0x20, 0x02, 0x00, 0x00] || ack == [0x20, 0x02, 0x01, 0x00],
            "{id}: first persistent CONNACK {ack:02X?}"
        );
        drop(r);
    }
    let (clean, ack) = open(a, &connect4(id, true));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "{id}: clean CONNACK");
    let mut clean = if live {
        Some(clean)
    } else {
        drop(clean);
        None
    };
    let (r, ack) = open(b, &connect4(id, false));
    if let Some(c) = clean.as_mut() {
        expect_plain_close(c, "clean 3.1.1 connection taken over");
    }
    drop(r);
    ack
}

/// One v5 round: clean start with Session Expiry 0 on `a`, subscribe,
/// close (or, `live`, keep it open); Clean Start 0 with Session Expiry 60
/// on `b` at once. Returns that CONNACK, which must have Session Present
/// 0. A live first connection must get DISCONNECT 0x8E.
fn round_v5(a: &Node, b: &Node, id: &str, live: bool) -> Vec<u8> {
    let (mut first, ack) = open(a, &connect5(id, true, &[]));
    assert_eq!(
        body(&ack)[..2],
        [0x00, 0x00],
        "{id}: clean CONNACK {ack:02X?}"
    );
    sub(&mut first, true, 1, "race/t", 1);
    let mut first = if live {
        Some(first)
    } else {
        drop(first);
        None
    };
    let mut props = vec![0x11];
    props.extend_from_slice(&60u32.to_be_bytes());
    let (r, ack) = open(b, &connect5(id, false, &props));
    if let Some(c) = first.as_mut() {
        expect_disconnect(c, 0x8E, "expiry 0 v5 connection taken over");
    }
    drop(r);
    ack
}

fn v4_resumed(ack: &[u8]) -> bool {
    ack != [0x20, 0x02, 0x00, 0x00]
}

fn v5_resumed(ack: &[u8]) -> bool {
    body(ack)[..2] != [0x00, 0x00]
}

/// Runs `round` `rounds` times; `None`, or a summary of the rounds that
/// failed.
fn race(
    what: &str,
    rounds: usize,
    mut round: impl FnMut(usize) -> Option<String>,
) -> Option<String> {
    let t0 = Instant::now();
    let mut bad = Vec::new();
    for i in 0..rounds {
        if let Some(e) = round(i) {
            bad.push(format!("round {i}: {e}"));
        }
    }
    eprintln!(
        "{what}: {rounds} rounds in {:?}, {} failed",
        t0.elapsed(),
        bad.len()
    );
    (!bad.is_empty()).then(|| {
        format!(
            "{what}: {} of {rounds} rounds resumed the session; first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        )
    })
}

/// 2b. 3.1.1 on one node: persistent, clean, persistent at once: the
/// last CONNACK is `20 02 00 00` every time.
#[test]
fn race_v311_clean_then_persistent_never_session_present() {
    let n = Node::start();
    let id = uid("race4");
    let bad = race("3.1.1 one node", RACE_ROUNDS, |_| {
        let ack = round_v4(&n, &n, &id, false);
        v4_resumed(&ack).then(|| format!("CONNACK {ack:02X?}"))
    });
    assert!(bad.is_none(), "{}", bad.unwrap_or_default());
}

/// 2c. v5 on one node: Session Expiry 0 + subscription, then Clean Start 0
/// with Session Expiry 60 at once: Session Present 0 every time.
#[test]
fn race_v5_expiry_zero_then_resume_never_session_present() {
    let n = Node::start();
    let id = uid("race5");
    let bad = race("v5 one node", RACE_ROUNDS, |_| {
        let ack = round_v5(&n, &n, &id, false);
        v5_resumed(&ack).then(|| format!("CONNACK {ack:02X?}"))
    });
    assert!(bad.is_none(), "{}", bad.unwrap_or_default());
}

/// 2d. The same with the reconnect going to the other node of a two-node
/// cluster (alternating directions), after a close and with the first
/// connection still open (a takeover across nodes). The races after a
/// close are rarer across nodes (the lookup takes longer than the close),
/// so they run twice as many rounds.
#[test]
fn race_across_cluster_never_session_present() {
    let t0 = Instant::now();
    let nodes = cluster::cluster(&[1, 2]);
    eprintln!("cluster up in {:?}", t0.elapsed());
    let mut bad = Vec::new();
    for live in [false, true] {
        let rounds = if live { RACE_ROUNDS } else { 2 * RACE_ROUNDS };
        let id = uid("xrace4");
        let what = format!("3.1.1 across the cluster, live {live}");
        bad.extend(race(&what, rounds, |i| {
            let (a, b) = (&nodes[i % 2], &nodes[(i + 1) % 2]);
            let ack = round_v4(a, b, &id, live);
            v4_resumed(&ack).then(|| format!("{} -> {}: CONNACK {ack:02X?}", a.name, b.name))
        }));
        let id = uid("xrace5");
        let what = format!("v5 across the cluster, live {live}");
        bad.extend(race(&what, rounds, |i| {
            let (a, b) = (&nodes[i % 2], &nodes[(i + 1) % 2]);
            let ack = round_v5(a, b, &id, live);
            v5_resumed(&ack).then(|| format!("{} -> {}: CONNACK {ack:02X?}", a.name, b.name))
        }));
    }
    eprintln!("cluster test in {:?}", t0.elapsed());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------
// 3. DUP on PUBREL / SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------

/// Fault 3: MQTT 3.1 (MQIsdp, level 3) accepts the DUP flag on a re-sent
/// PUBREL, SUBSCRIBE and UNSUBSCRIBE.
#[test]
fn mqtt31_accepts_dup_on_pubrel_subscribe_unsubscribe() {
    let n = Node::start();
    let mut r = Raw::connect(&n);
    let c = connect3("v31-dup");
    assert_eq!(
        c[..14],
        [0x10, c[1], 0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70, 0x03, 0x02, 0x00, 0x3C]
    );
    r.send(&c);
    assert_eq!(next(&mut r, "3.1 CONNACK"), [0x20, 0x02, 0x00, 0x00]);

    r.send(&publish(0x34, "v31/q2", Some(1), None, b"two"));
    assert_eq!(next(&mut r, "PUBREC"), [0x50, 0x02, 0x00, 0x01]);
    r.send(&[0x6A, 0x02, 0x00, 0x01]);
    assert_eq!(
        next(&mut r, "PUBCOMP for a PUBREL with DUP"),
        [0x70, 0x02, 0x00, 0x01]
    );
    ping(&mut r, "after PUBREL with DUP");

    r.send(&subscribe(0x8A, false, 2, "v31/s", 1));
    assert_eq!(
        next(&mut r, "SUBACK for a SUBSCRIBE with DUP"),
        [0x90, 0x03, 0x00, 0x02, 0x01]
    );
    ping(&mut r, "after SUBSCRIBE with DUP");

    r.send(&unsubscribe(0xAA, false, 3, "v31/s"));
    assert_eq!(
        next(&mut r, "UNSUBACK for an UNSUBSCRIBE with DUP"),
        [0xB0, 0x02, 0x00, 0x03]
    );
    ping(&mut r, "after UNSUBSCRIBE with DUP");
}

/// Fault 3: on MQTT 3.1.1 the fixed header flags rule holds: a PUBREL with DUP
/// closes the connection.
#[test]
fn mqtt311_pubrel_with_dup_closes() {
    let n = Node::start();
    let mut r = v4(&n, "v311-dup");
    r.send(&publish(0x34, "v311/q2", Some(1), None, b"two"));
    assert_eq!(next(&mut r, "PUBREC"), [0x50, 0x02, 0x00, 0x01]);
    r.send(&[0x6A, 0x02, 0x00, 0x01]);
    expect_plain_close(&mut r, "3.1.1 PUBREL with DUP");
}

// ---------------------------------------------------------------------------
// 4. Response Topic with wildcards (MQTT-3.3.2-14)
// ---------------------------------------------------------------------------

#[test]
fn response_topic_with_wildcard_is_protocol_error() {
    let n = Node::start();
    let mut s = v5(&n, "rt-sub");
    sub(&mut s, true, 1, "topic", 0);

    let mut p = v5(&n, "rt-pub");
    let bad = [
        0x32, 0x15, 0x00, 0x05, 0x74, 0x6F, 0x70, 0x69, 0x63, 0x12, 0x34, 0x04, 0x08, 0x00, 0x01,
        0x23, 0x70, 0x61, 0x79, 0x6C, 0x6F, 0x61, 0x64,
    ];
    assert_eq!(
        bad.to_vec(),
        publish(
            0x32,
            "topic",
            Some(0x1234),
            Some(&[0x08, 0x00, 0x01, b'#']),
            b"payload"
        )
    );
    p.send(&bad);
    expect_disconnect(&mut p, 0x82, "Response Topic \"#\"");

    // The same with a single-level wildcard.
    let mut p2 = v5(&n, "rt-pub2");
    p2.send(&publish(
        0x32,
        "topic",
        Some(1),
        Some(&[0x08, 0x00, 0x03, b'a', b'/', b'+']),
        b"plus",
    ));
    expect_disconnect(&mut p2, 0x82, "Response Topic \"a/+\"");

    // A marker after both: the subscriber's only message.
    let mut m = v5(&n, "rt-marker");
    m.send(&publish(0x32, "topic", Some(2), Some(&[]), b"marker"));
    let ack = next(&mut m, "PUBACK of the marker");
    assert_eq!(ack[..4], [0x40, ack[1], 0x00, 0x02], "{ack:02X?}");
    let got = next(&mut s, "subscriber's PUBLISH");
    let (_, t, _, payload) = parse_publish(&got, true);
    assert_eq!(
        (t.as_str(), &payload[..]),
        ("topic", &b"marker"[..]),
        "the subscriber received a message with a wildcard Response Topic"
    );
    expect_silence(&mut s, ms(500), "subscriber after the marker");
}

// ---------------------------------------------------------------------------
// 5. $SYS is read-only for clients
// ---------------------------------------------------------------------------

#[test]
fn sys_topics_are_read_only_for_clients() {
    let n = Node::start();
    let sys = "$SYS/brokers/x";
    let mut s = v5(&n, "sys-sub");
    sub(&mut s, true, 1, sys, 0);
    sub(&mut s, true, 2, "m/sys", 0);

    let mut p5 = v5(&n, "sys-pub5");
    p5.send(&publish(0x32, sys, Some(1), Some(&[]), b"q1"));
    let ack = next(&mut p5, "v5 PUBACK for $SYS");
    eprintln!("v5 QoS 1 PUBLISH to {sys} -> {ack:02X?}");
    assert_eq!(ack[0], 0x40, "expected PUBACK, got {ack:02X?}");
    let b = body(&ack);
    assert!(b.len() >= 3, "PUBACK without a reason code: {ack:02X?}");
    assert_eq!(
        b[..3],
        [0x00, 0x01, 0x87],
        "v5 QoS 1 PUBACK for $SYS: {ack:02X?}"
    );
    let _ = props_after(&ack, 3);

    p5.send(&publish(0x34, sys, Some(2), Some(&[]), b"q2"));
    let rec = next(&mut p5, "v5 PUBREC for $SYS");
    eprintln!("v5 QoS 2 PUBLISH to {sys} -> {rec:02X?}");
    assert_eq!(rec[0], 0x50, "expected PUBREC, got {rec:02X?}");
    let b = body(&rec);
    assert!(b.len() >= 3, "PUBREC without a reason code: {rec:02X?}");
    assert_eq!(
        b[..3],
        [0x00, 0x02, 0x87],
        "v5 QoS 2 PUBREC for $SYS: {rec:02X?}"
    );
    let _ = props_after(&rec, 3);
    ping(&mut p5, "v5 publisher after $SYS publishes");

    let mut p4 = v4(&n, "sys-pub4");
    p4.send(&publish(0x32, sys, Some(3), None, b"v4"));
    assert_eq!(
        next(&mut p4, "3.1.1 PUBACK for $SYS"),
        [0x40, 0x02, 0x00, 0x03]
    );
    ping(&mut p4, "3.1.1 publisher after $SYS publish");

    // Markers from both publishers, after their $SYS publishes.
    p5.send(&publish(0x32, "m/sys", Some(4), Some(&[]), b"m5"));
    let ack = next(&mut p5, "marker PUBACK");
    assert_eq!(body(&ack)[..2], [0x00, 0x04], "{ack:02X?}");
    p4.send(&publish(0x32, "m/sys", Some(5), None, b"m4"));
    assert_eq!(next(&mut p4, "marker PUBACK"), [0x40, 0x02, 0x00, 0x05]);

    let mut got = Vec::new();
    for _ in 0..2 {
        let p = next(&mut s, "subscriber's PUBLISH");
        let (_, t, _, payload) = parse_publish(&p, true);
        got.push((t, String::from_utf8_lossy(&payload).into_owned()));
    }
    let (bytes, closed) = s.read_all(ms(500));
    assert!(!closed, "subscriber closed");
    assert!(
        bytes.is_empty(),
        "more after the markers: {bytes:02X?}; before: {got:?}"
    );
    got.sort();
    assert_eq!(
        got,
        [
            ("m/sys".to_string(), "m4".to_string()),
            ("m/sys".to_string(), "m5".to_string())
        ],
        "a client's $SYS publish was delivered"
    );
}

/// A v5 CONNECT with a Will on `$SYS/x`: CONNACK 0x87 and close.
#[test]
fn sys_will_topic_is_refused() {
    let n = Node::start();
    let mut body = str16(b"MQTT");
    body.push(5);
    body.push(0x06); // clean start, will (QoS 0)
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(0); // no properties
    body.extend(str16(b"sys-will"));
    body.push(0); // no will properties
    body.extend(str16(b"$SYS/x"));
    body.extend(str16(b"gone"));
    let mut r = Raw::connect(&n);
    r.send(&frame(0x10, &body));
    let ack = next(&mut r, "CONNACK for a $SYS will");
    assert_eq!(ack[0], 0x20, "expected CONNACK, got {ack:02X?}");
    let b = self::body(&ack);
    assert_eq!(
        b[..2],
        [0x00, 0x87],
        "CONNACK for a Will on $SYS/x: {ack:02X?}"
    );
    let _ = props_after(&ack, 2);
    expect_plain_close(&mut r, "after CONNACK 0x87");
}

// ---------------------------------------------------------------------------
// 6. mqtt.upgrade_qos applies to retained messages
// ---------------------------------------------------------------------------

#[test]
fn upgrade_qos_applies_to_retained_messages() {
    let n = node_with("mqtt.upgrade_qos = true\n");
    let mut p = v4(&n, "uq-pub");
    p.send(&publish(0x31, "r/1", None, None, b"kept"));
    ping(&mut p, "after the retained publish");
    let stored = wait_until(secs(5), || {
        n.ctl(&["retainer", "topics"])
            .1
            .lines()
            .any(|l| l.trim() == "r/1")
    });
    assert!(
        stored,
        "r/1 not retained: {}",
        n.ctl(&["retainer", "topics"]).1
    );

    for (v5, id) in [(true, "uq-sub5"), (false, "uq-sub4")] {
        let mut s = if v5 { self::v5(&n, id) } else { v4(&n, id) };
        sub(&mut s, v5, 1, "r/1", 1);
        let got = next(&mut s, &format!("{id}: retained PUBLISH"));
        let (h, t, pid, payload) = parse_publish(&got, v5);
        assert_eq!(
            h, 0x33,
            "{id}: retained QoS 0 message to a QoS 1 subscription with upgrade_qos: {got:02X?}"
        );
        assert_eq!((t.as_str(), &payload[..]), ("r/1", &b"kept"[..]), "{id}");
        let pid = pid.expect("packet id");
        assert_ne!(pid, 0, "{id}: packet id 0");
        let [a, b] = pid.to_be_bytes();
        s.send(&[0x40, 0x02, a, b]);
        ping(&mut s, id);
    }
}

// ---------------------------------------------------------------------------
// 7. Mount points
// ---------------------------------------------------------------------------

#[test]
fn listener_mountpoint_is_applied() {
    let n = node_with("listeners.tcp.default.mountpoint = \"t/${clientid}/\"\n");
    let mut c1 = v5(&n, "c1");
    let mut c2 = v5(&n, "c2");
    sub(&mut c1, true, 1, "a/#", 0);
    sub(&mut c2, true, 1, "a/#", 0);

    c1.send(&publish(0x30, "a/b", None, Some(&[]), b"from c1"));
    let got = next(&mut c1, "c1's own message");
    let (_, t, _, payload) = parse_publish(&got, true);
    assert_eq!(
        (t.as_str(), &payload[..]),
        ("a/b", &b"from c1"[..]),
        "c1 gets its message on the unmounted topic"
    );

    c2.send(&publish(0x30, "a/c", None, Some(&[]), b"from c2"));
    let got = next(&mut c2, "c2's own message");
    let (_, t, _, payload) = parse_publish(&got, true);
    assert_eq!(
        (t.as_str(), &payload[..]),
        ("a/c", &b"from c2"[..]),
        "c2's first message must be its own (not c1's)"
    );
    expect_silence(
        &mut c1,
        ms(500),
        "c1 (c2's message is under another mount point)",
    );
    expect_silence(
        &mut c2,
        ms(100),
        "c2 (c1's message is under another mount point)",
    );

    let want1 = "c1 -> topic:t/c1/a/# qos:0 nl:0 rh:0 rap:0";
    let want2 = "c2 -> topic:t/c2/a/# qos:0 nl:0 rh:0 rap:0";
    let mut out = String::new();
    let ok = wait_until(secs(5), || {
        out = n.ctl(&["subscriptions", "list"]).1;
        out.lines().any(|l| l == want1) && out.lines().any(|l| l == want2)
    });
    assert!(ok, "subscriptions list:\n{out}");
    assert!(
        !out.contains("topic:a/#"),
        "an unmounted subscription: {out}"
    );
    let (_, topics) = n.ctl(&["topics", "list"]);
    assert!(
        topics
            .lines()
            .any(|l| l == format!("t/c1/a/# -> {}", n.name)),
        "topics list: {topics}"
    );

    // A shared subscription: only the inner filter is mounted.
    c1.send(&unsubscribe(0xA2, true, 2, "a/#"));
    let ack = next(&mut c1, "UNSUBACK");
    assert_eq!(ack, [0xB0, 0x04, 0x00, 0x02, 0x00, 0x00], "UNSUBACK");
    sub(&mut c1, true, 3, "$share/g/a/#", 0);
    let want = "c1 -> topic:$share/g/t/c1/a/# qos:0 nl:0 rh:0 rap:0";
    let ok = wait_until(secs(5), || {
        out = n.ctl(&["subscriptions", "show", "c1"]).1;
        out.lines().any(|l| l == want)
    });
    assert!(ok, "subscriptions show c1:\n{out}");
    c1.send(&publish(0x30, "a/d", None, Some(&[]), b"shared"));
    let got = next(&mut c1, "c1's message through the shared subscription");
    let (_, t, _, payload) = parse_publish(&got, true);
    assert_eq!((t.as_str(), &payload[..]), ("a/d", &b"shared"[..]));
    expect_silence(&mut c1, ms(300), "c1 after the shared delivery");
    expect_silence(
        &mut c2,
        ms(100),
        "c2 after c1's shared-subscription message",
    );
}

#[test]
fn mountpoint_with_unknown_placeholder_refuses_to_start() {
    let n = Node::prepare("listeners.tcp.default.mountpoint = \"t/${zone}/\"\n");
    let Some((status, err)) = n.foreground_exit(&[], secs(15)) else {
        panic!("emqx-rs started with mountpoint t/${{zone}}/");
    };
    eprintln!("mountpoint t/${{zone}}/ -> exit {status}: {err}");
    assert_eq!(status.code(), Some(2), "exit code; stderr: {err}");
    assert!(
        err.contains("listeners.tcp.default.mountpoint"),
        "message does not name the key: {err:?}"
    );
    let path = n.config.display().to_string();
    assert!(
        err.contains(&path),
        "message does not name the file {path}: {err:?}"
    );
    assert!(
        err.contains("${zone}"),
        "message does not name the placeholder: {err:?}"
    );
}
