//! What survives a restart: retained messages on disk
//! (`retainer.backend.storage_type = disc`, the default), through kill -9
//! and a clean stop, and a node that was away syncing its older copy with
//! the cluster's. Real processes; the publishers are rumqttc and Debian's
//! `mosquitto_pub`, the readers rumqttc and `mosquitto_sub`.

mod common;

use common::cluster::{self, mq, payloads, retained_topics, status_line, tails, wait_status};
use common::{wait_until, Node, Opts};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Topic and payload of every retained message `mosquitto_sub` gets for
/// `filter` from `n` (it gets them right after its SUBACK and stops after
/// a second without messages).
fn retained_seen(n: &Node, filter: &str) -> Vec<String> {
    let out = run(mosquitto("mosquitto_sub", n)
        .args(["-t", filter, "-v", "-W", "3", "--retained-only"])
        .args(["-q", "1", "-i", "durable-reader"]));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `mosquitto_pub` or `mosquitto_sub` (Debian's mosquitto-clients) for
/// `n`, speaking MQTT 5.
fn mosquitto(tool: &str, n: &Node) -> Command {
    let mut c = Command::new(tool);
    c.args([
        "-h",
        &n.host,
        "-p",
        &n.mqtt_port.to_string(),
        "-V",
        "mqttv5",
    ])
    .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> std::process::Output {
    c.output().unwrap_or_else(|e| {
        panic!("cannot run {c:?} ({e}): run scripts/test.sh to install mosquitto-clients")
    })
}

fn mosquitto_pub(n: &Node, args: &[&str]) {
    let out = run(mosquitto("mosquitto_pub", n).args(args));
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        out.status
    );
}

#[test]
fn acknowledged_retained_messages_survive_kill_9_and_a_clean_stop() {
    let mut n = Node::start_with(Opts::default());
    // 300 retained QoS 1 publishes, each acknowledged (rumqttc waits for
    // every PUBACK); a topic replaced, one cleared, one with an expiry.
    let mut p = mq(&n, "durable-pub");
    for i in 0..300 {
        p.publish(&format!("keep/{i:03}"), 1, true, format!("v{i}").as_bytes());
    }
    p.publish("keep/000", 1, true, b"replaced");
    p.publish("keep/001", 1, true, b"");
    drop(p);
    mosquitto_pub(
        &n,
        &[
            "-t",
            "short/lived",
            "-m",
            "x",
            "-r",
            "-q",
            "1",
            "-D",
            "publish",
            "message-expiry-interval",
            "2",
        ],
    );
    mosquitto_pub(&n, &["-t", "keep/last", "-m", "last", "-r", "-q", "2"]);
    // No grace: the node dies right after the last acknowledgement.
    n.kill();
    n.spawn(&[]);
    let seen = retained_seen(&n, "keep/#");
    assert_eq!(seen.len(), 300, "after kill -9: {seen:?}\n{}", n.log());
    assert!(seen.contains(&"keep/000 replaced".to_string()));
    assert!(!seen.iter().any(|l| l.starts_with("keep/001 ")));
    assert!(seen.contains(&"keep/299 v299".to_string()));
    assert!(seen.contains(&"keep/last last".to_string()));
    assert!(
        n.log().contains("retained message(s) read from disk"),
        "{}",
        n.log()
    );
    // The message expiry still holds after the restart.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(retained_seen(&n, "short/#").is_empty());

    // A clean stop, with a clear and a `retainer clean` by filter before it.
    mosquitto_pub(&n, &["-t", "keep/last", "-n", "-r", "-q", "1"]);
    for t in ["gone/a", "gone/b/c"] {
        mosquitto_pub(&n, &["-t", t, "-m", "x", "-r", "-q", "1"]);
    }
    let (code, out) = n.ctl(&["retainer", "clean", "gone/#"]);
    assert_eq!(code, 0, "{out}");
    let st = n.cli(&["stop"]);
    assert!(st.status.success(), "{}", common::output_text(&st));
    assert!(
        wait_until(Duration::from_secs(10), || !n.alive()),
        "the node did not stop"
    );
    n.spawn(&[]);
    let seen = retained_seen(&n, "#");
    assert_eq!(seen.len(), 299, "after a clean stop: {seen:?}");
    // `ctl` agrees (besides the node's own retained `$SYS` messages).
    let topics = retained_topics(&n);
    let mine = topics.iter().filter(|t| !t.starts_with("$SYS/")).count();
    assert_eq!(mine, 299, "{topics:?}");
    assert!(
        !seen.iter().any(|l| l.starts_with("keep/last ")),
        "{seen:?}"
    );
    assert!(seen.contains(&"keep/000 replaced".to_string()), "{seen:?}");
    assert!(seen.contains(&"keep/010 v10".to_string()), "{seen:?}");
}

#[test]
fn a_ram_retainer_forgets_on_restart() {
    let mut n = Node::start_with(Opts {
        extra: "retainer.backend.storage_type = ram\n".into(),
        ..Opts::default()
    });
    mosquitto_pub(&n, &["-t", "ram/1", "-m", "x", "-r", "-q", "1"]);
    assert_eq!(retained_seen(&n, "ram/#"), vec!["ram/1 x"]);
    n.kill();
    n.spawn(&[]);
    assert!(retained_seen(&n, "ram/#").is_empty());
}

#[test]
fn a_node_back_from_the_dead_takes_the_clusters_newer_retained_copy() {
    let mut nodes = cluster::cluster(&[1, 2]);
    let mut b = nodes.remove(1);
    let a = &nodes[0];
    let mut pa = mq(a, "sync-pub-a");
    for t in ["s/cleared", "s/replaced", "s/kept"] {
        pa.publish(t, 1, true, b"old");
    }
    assert!(
        wait_until(Duration::from_secs(5), || retained_seen(&b, "s/#").len()
            == 3),
        "retained messages not replicated: {:?} {}",
        retained_topics(&b),
        tails(&[a, &b])
    );
    b.kill();
    // While b is away: a clear, a replacement and a new topic.
    pa.publish("s/cleared", 1, true, b"");
    pa.publish("s/replaced", 1, true, b"new");
    pa.publish("s/added", 1, true, b"new");
    drop(pa);
    let restarted = Instant::now();
    b.spawn(&[]);
    let all = status_line(&[a, &b], &[]);
    for n in [a, &b] {
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed());
        wait_status(n, &all, left, &[a, &b]);
    }
    let want = vec![
        "s/added new".to_string(),
        "s/kept old".to_string(),
        "s/replaced new".to_string(),
    ];
    assert!(
        wait_until(Duration::from_secs(10), || retained_seen(&b, "s/#") == want),
        "b holds {:?}, a holds {:?}\n{}",
        retained_seen(&b, "s/#"),
        retained_seen(a, "s/#"),
        tails(&[a, &b])
    );
    assert_eq!(retained_seen(a, "s/#"), want);
    // And a subscriber on b gets the cluster's copy, not its old one.
    let mut sb = mq(&b, "sync-sub-b");
    sb.sub("s/replaced", 1);
    assert_eq!(
        payloads(&sb.collect(1, Duration::from_secs(5))),
        vec!["new"]
    );
}

/// `mosquitto_sub -V mqttv5 -c -x <expiry>`: with `-E` it subscribes and
/// leaves a persistent session behind; otherwise it takes `count`
/// messages (topic and payload per line).
fn v5_sub(n: &Node, id: &str, expiry: &str, extra: &[&str]) -> Vec<String> {
    let out = run(mosquitto("mosquitto_sub", n)
        .args(["-c", "-i", id, "-x", expiry, "-q", "2", "-t", "ps/#", "-v"])
        .args(extra));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A node with the durable session journal on.
fn journaled() -> Opts {
    Opts {
        extra: "durable_sessions.enable = true\n".into(),
        ..Default::default()
    }
}

fn connack_session_present(m: &mut cluster::Mq) -> bool {
    let mut present = None;
    let ok = m.wait_for(Duration::from_secs(5), |e| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c)) => {
            present = Some(c.session_present);
            true
        }
        _ => false,
    });
    assert!(ok, "no CONNACK: {:?}", m.error);
    present.unwrap_or(false)
}

#[test]
fn persistent_sessions_and_their_queues_survive_a_clean_stop() {
    let mut n = Node::start_with(journaled());
    // An MQTT 5 session (expiry 1 h) and an MQTT 3.1.1 one
    // (clean_session = false), both offline, and one that expires during
    // the stop.
    assert!(v5_sub(&n, "ps5", "3600", &["-E"]).is_empty());
    assert!(v5_sub(&n, "ps-short", "1", &["-E"]).is_empty());
    let mut m = cluster::Mq::open(&n, "ps4", false);
    assert!(!connack_session_present(&mut m));
    m.sub("ps/#", 1);
    // A DISCONNECT, and the session is offline before anything is published.
    m.c.disconnect().expect("disconnect request");
    assert!(m.wait_for(Duration::from_secs(5), |e| matches!(
        e,
        rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)
    )));
    drop(m);
    assert!(wait_until(Duration::from_secs(5), || {
        n.ctl(&["clients", "show", "ps4"])
            .1
            .contains("connected=false")
    }));
    let mut p = mq(&n, "ps-pub");
    for i in 0..50 {
        p.publish("ps/q", 2, false, format!("m{i:02}").as_bytes());
    }
    drop(p);

    let st = n.cli(&["stop"]);
    assert!(st.status.success(), "{}", common::output_text(&st));
    assert!(wait_until(Duration::from_secs(10), || !n.alive()));
    assert!(
        wait_until(Duration::from_secs(5), || n
            .log()
            .contains("3 persistent session(s) kept on disk")),
        "{}",
        n.log()
    );
    std::thread::sleep(Duration::from_millis(1200));
    n.spawn(&[]);
    assert!(
        wait_until(Duration::from_secs(5), || n
            .log()
            .contains("2 persistent session(s) back from disk")),
        "{}",
        n.log()
    );

    // Each session comes back with its 50 queued messages, in order.
    let want: Vec<String> = (0..50).map(|i| format!("ps/q m{i:02}")).collect();
    let mut m = cluster::Mq::open(&n, "ps4", false);
    assert!(connack_session_present(&mut m), "ps4 lost its session");
    let got = m.collect(50, Duration::from_secs(10));
    assert_eq!(
        got.iter()
            .map(|p| format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)))
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(v5_sub(&n, "ps5", "3600", &["-C", "50", "-W", "10"]), want);
    // Its subscription routes again.
    mosquitto_pub(&n, &["-t", "ps/after", "-m", "a", "-q", "1"]);
    assert_eq!(payloads(&m.collect(1, Duration::from_secs(5))), vec!["a"]);
    settle(&n, &["ps4"]);
    drop(m);
    // The session whose expiry ran out during the stop is gone.
    let (_, show) = n.ctl(&["clients", "show", "ps-short"]);
    assert!(!show.contains("ps-short"), "{show}");

    // The parked copies left the disk once back, and the journal has the
    // sessions since: after a kill -9, ps4 comes back as it is now, with
    // nothing it already acknowledged.
    settle(&n, &[]);
    n.kill();
    n.spawn(&[]);
    let mut m = cluster::Mq::open(&n, "ps4", false);
    assert!(connack_session_present(&mut m), "{}", n.log());
    let again = m.quiet(Duration::from_secs(1));
    assert!(
        again.is_empty(),
        "a stale copy of ps4's session came back: {:?}",
        payloads(&again)
    );
}

fn disconnect(mut m: cluster::Mq) {
    m.c.disconnect().expect("disconnect request");
    assert!(m.wait_for(Duration::from_secs(5), |e| matches!(
        e,
        rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)
    )));
}

/// Whether `n` itself holds a session of `id` (`clients show` looks
/// cluster-wide and names the node).
fn holds_session(n: &Node, id: &str) -> bool {
    let out = n.ctl(&["clients", "show", id]).1;
    out.contains(&format!("Client({id},")) && out.contains(&format!("node={})", n.name))
}

/// Two nodes; on the second, client `id` (3.1.1, clean_session = false)
/// subscribes to `filter` and disconnects, and the node stops cleanly
/// once the first one routes `filter` to it.
fn parked_on_a_stopped_node(id: &str, filter: &str) -> (Vec<Node>, Node) {
    let mut nodes = cluster::cluster(&[1, 2]);
    let b = nodes.remove(1);
    let mut m = cluster::Mq::open(&b, id, false);
    assert!(!connack_session_present(&mut m));
    m.sub(filter, 1);
    disconnect(m);
    cluster::wait_route(&nodes[0], filter, &b, true, Duration::from_secs(5));
    let st = b.cli(&["stop"]);
    assert!(st.status.success(), "{}", common::output_text(&st));
    let mut b = b;
    assert!(wait_until(Duration::from_secs(10), || !b.alive()));
    (nodes, b)
}

#[test]
fn a_session_made_elsewhere_while_its_node_was_stopped_wins_over_the_parked_one() {
    let (nodes, mut b) = parked_on_a_stopped_node("cs", "cs/old");
    let a = &nodes[0];
    // While b is stopped the client starts over on a.
    let mut m = cluster::Mq::open(a, "cs", false);
    assert!(!connack_session_present(&mut m));
    m.sub("cs/new", 1);
    disconnect(m);
    let restarted = Instant::now();
    b.spawn(&[]);
    assert!(
        wait_until(Duration::from_secs(5), || b
            .log()
            .contains("1 persistent session(s) back from disk")),
        "{}",
        b.log()
    );
    let all = status_line(&[a, &b], &[]);
    for n in [a, &b] {
        let left = Duration::from_secs(15).saturating_sub(restarted.elapsed());
        wait_status(n, &all, left, &[a, &b]);
    }
    // b learns that a holds a newer session of the client and drops its own.
    assert!(
        wait_until(Duration::from_secs(10), || !holds_session(&b, "cs")),
        "{}",
        tails(&[a, &b])
    );
    assert!(holds_session(a, "cs"));
    // The client comes back to b and gets a's session, not the old one.
    let mut m = cluster::Mq::open(&b, "cs", false);
    assert!(connack_session_present(&mut m));
    let (_, subs) = b.ctl(&["subscriptions", "show", "cs"]);
    assert!(
        subs.contains("cs/new") && !subs.contains("cs/old"),
        "{subs}"
    );
    assert!(wait_until(Duration::from_secs(5), || !holds_session(
        a, "cs"
    )));
}

fn utf8(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

#[test]
fn acknowledgements_keep_the_order_of_publishes_while_retained_ones_wait_for_the_disk() {
    use std::io::{Read, Write};
    let n = Node::start_with(Opts::default());
    let mut s = std::net::TcpStream::connect(n.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&common::connect_v4("order-pub", 60))
        .expect("connect");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).expect("connack");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // 300 QoS 1 publishes in one write, every third one retained: the
    // broker reads them all while the retained ones are being written.
    let mut burst = Vec::new();
    for pid in 1..=300u16 {
        let retain = pid % 3 == 0;
        let mut b = utf8(&format!("order/{}", pid % 7));
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(format!("p{pid}").as_bytes());
        burst.extend(common::frame(if retain { 0x33 } else { 0x32 }, &b));
    }
    s.write_all(&burst).expect("publish");
    let mut acks = vec![0u8; 300 * 4];
    s.read_exact(&mut acks).expect("300 PUBACKs");
    let pids: Vec<u16> = acks
        .chunks(4)
        .map(|a| {
            assert_eq!(&a[..2], &[0x40, 2], "not a PUBACK: {a:?}");
            u16::from_be_bytes([a[2], a[3]])
        })
        .collect();
    assert_eq!(pids, (1..=300).collect::<Vec<u16>>());
    // The last retained message of each topic is the one on disk.
    let seen = retained_seen(&n, "order/#");
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.contains(&"order/6 p300".to_string()), "{seen:?}");
}

#[test]
fn messages_published_elsewhere_while_a_node_is_stopped_reach_its_parked_sessions() {
    let (nodes, mut b) = parked_on_a_stopped_node("fw", "fw/#");
    let a = &nodes[0];
    // Published on a while b is stopped: they wait on a for b.
    let mut p = mq(a, "fw-pub");
    for i in 0..20 {
        p.publish("fw/x", 1, false, format!("w{i:02}").as_bytes());
    }
    drop(p);
    b.spawn(&[]);
    let mut m = cluster::Mq::open(&b, "fw", false);
    assert!(connack_session_present(&mut m), "{}", tails(&[a, &b]));
    let got = payloads(&m.collect(20, Duration::from_secs(15)));
    let want: Vec<String> = (0..20).map(|i| format!("w{i:02}")).collect();
    assert_eq!(
        got,
        want,
        "{:?} {:?} {}",
        a.ctl(&["cluster", "forwarding"]),
        b.ctl(&["cluster", "forwarding"]),
        tails(&[a, &b])
    );
}

/// Bytes of a 3.1.1 CONNECT with clean_session = false.
fn connect_v4_keep(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    common::frame(0x10, &body)
}

/// A SUBSCRIBE (packet id 1) to `filter` at QoS `q`.
fn subscribe_frame(filter: &str, q: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend(utf8(filter));
    body.push(q);
    common::frame(0x82, &body)
}

/// A new 3.1.1 session (clean_session = false) of `id` on a raw socket,
/// subscribed to `filter` at QoS `q`.
fn raw_subscriber(n: &Node, id: &str, filter: &str, q: u8) -> common::Raw {
    let mut raw = common::Raw::connect(n);
    raw.send(&connect_v4_keep(id));
    assert_eq!(raw.read_n(4), vec![0x20, 2, 0, 0]);
    raw.send(&subscribe_frame(filter, q));
    assert_eq!(raw.read_n(5), vec![0x90, 3, 0, 1, q]);
    raw
}

const PUBREC: u8 = 0x50;
const PUBREL: u8 = 0x62;
const PUBCOMP: u8 = 0x70;

/// A PUBREC, PUBREL or PUBCOMP (first byte `h`) of packet id `pid`, no
/// reason code.
fn pid_packet(h: u8, pid: u16) -> Vec<u8> {
    let mut b = vec![h, 2];
    b.extend_from_slice(&pid.to_be_bytes());
    b
}

/// The packets in `b` as (first byte, body).
fn packets(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let h = b[i];
        i += 1;
        let len = common::read_varint(b, &mut i);
        if i + len > b.len() {
            break;
        }
        out.push((h, b[i..i + len].to_vec()));
        i += len;
    }
    out
}

/// Waits until `n` has taken every acknowledgement of clients `ids` (none
/// in flight) and has every change on disk (`ctl durable status`: nothing
/// pending), so a kill -9 now loses nothing they acknowledged.
fn settle(n: &Node, ids: &[&str]) {
    for id in ids {
        assert!(
            wait_until(Duration::from_secs(5), || n
                .ctl(&["clients", "show", id])
                .1
                .contains("inflight=0,")),
            "{}",
            n.ctl(&["clients", "show", id]).1
        );
    }
    settle_disk(n);
}

fn kill_and_restart(n: &mut Node, sessions: usize) {
    n.kill();
    // The log of this start only (its first lines may come a moment after
    // the port opens).
    let _ = std::fs::remove_file(n.dir.path().join("stderr.log"));
    n.spawn(&[]);
    let line = format!("{sessions} persistent session(s) back from the journal");
    assert!(
        wait_until(Duration::from_secs(10), || n.log().contains(&line)),
        "{}",
        n.log()
    );
}

#[test]
fn acknowledged_messages_for_offline_persistent_sessions_survive_kill_9() {
    let mut n = Node::start_with(journaled());
    // MQTT 5 (expiry 1 h, QoS 2) and 3.1.1 (clean_session = false, QoS 1)
    // sessions, offline.
    assert!(v5_sub(&n, "k5", "3600", &["-E"]).is_empty());
    let mut m = cluster::Mq::open(&n, "k4", false);
    assert!(!connack_session_present(&mut m));
    m.sub("ps/#", 1);
    disconnect(m);
    assert!(wait_until(Duration::from_secs(5), || {
        n.ctl(&["clients", "show", "k4"])
            .1
            .contains("connected=false")
    }));
    // Every publish completes (PUBACK, PUBCOMP) before the kill.
    let mut p = mq(&n, "k-pub");
    for i in 0..60 {
        p.publish("ps/k", 1 + (i % 2), false, format!("m{i:02}").as_bytes());
    }
    drop(p);
    kill_and_restart(&mut n, 2);
    let want: Vec<String> = (0..60).map(|i| format!("ps/k m{i:02}")).collect();
    let mut m = cluster::Mq::open(&n, "k4", false);
    assert!(connack_session_present(&mut m), "k4 lost its session");
    let got = m.collect(60, Duration::from_secs(10));
    assert_eq!(
        got.iter()
            .map(|p| format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)))
            .collect::<Vec<_>>(),
        want
    );
    // mosquitto_sub hands a QoS 2 message on once it is released (after
    // PUBREL), so QoS 1 ones pass it: each QoS keeps its order.
    let k5 = v5_sub(&n, "k5", "3600", &["-C", "60", "-W", "10"]);
    for parity in [0, 1] {
        let of = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|l| l.ends_with(|c: char| c.to_digit(10).is_some_and(|d| d % 2 == parity)))
                .cloned()
                .collect()
        };
        assert_eq!(of(&k5), of(&want), "k5 got {k5:?}");
    }
    // The subscriptions came back too: new messages reach both.
    mosquitto_pub(&n, &["-t", "ps/after", "-m", "a", "-q", "1"]);
    assert_eq!(payloads(&m.collect(1, Duration::from_secs(5))), vec!["a"]);
    assert_eq!(
        v5_sub(&n, "k5", "3600", &["-C", "1", "-W", "5"]),
        vec!["ps/after a"]
    );
    // Once delivered and acknowledged, nothing comes back after another kill.
    settle(&n, &["k4"]);
    drop(m);
    kill_and_restart(&mut n, 2);
    // Both again (the MQTT 5 one keeps its expiry through a second crash).
    let (_, k5) = n.ctl(&["clients", "show", "k5"]);
    assert!(k5.contains("session_expiry_interval=3600"), "{k5}");
    let mut m = cluster::Mq::open(&n, "k4", false);
    assert!(connack_session_present(&mut m));
    assert!(payloads(&m.quiet(Duration::from_secs(1))).is_empty());
}

#[test]
fn a_connected_subscriber_gets_its_inflight_and_queued_messages_after_kill_9() {
    let mut n = Node::start_with(journaled());
    // A 3.1.1 subscriber (clean_session = false) that takes its messages
    // and never acknowledges them: its inflight window fills, the rest
    // queues.
    let mut raw = raw_subscriber(&n, "kraw", "kr/#", 1);
    let mut p = mq(&n, "kr-pub");
    for i in 0..100 {
        p.publish("kr/x", 1, false, format!("r{i:03}").as_bytes());
    }
    drop(p);
    let (bytes, _) = raw.read_all(Duration::from_millis(500));
    let sent = packets(&bytes)
        .iter()
        .filter(|(h, _)| h & 0xF0 == 0x30)
        .count();
    assert!(sent >= 10, "only {sent} PUBLISHes reached the subscriber");
    kill_and_restart(&mut n, 1);
    drop(raw);
    let mut m = cluster::Mq::open(&n, "kraw", false);
    assert!(connack_session_present(&mut m), "kraw lost its session");
    let want: Vec<String> = (0..100).map(|i| format!("r{i:03}")).collect();
    assert_eq!(payloads(&m.collect(100, Duration::from_secs(10))), want);
}

#[test]
fn a_qos2_message_taken_before_a_kill_9_is_not_published_twice_when_resent() {
    let mut n = Node::start_with(journaled());
    let mut sub = cluster::Mq::open(&n, "q2-sub", false);
    sub.sub("q2/#", 2);
    // A persistent 3.1.1 publisher: PUBLISH QoS 2, PUBREC, then the node
    // dies before the PUBREL.
    let mut raw = common::Raw::connect(&n);
    raw.send(&connect_v4_keep("q2-pub"));
    assert_eq!(raw.read_n(4), vec![0x20, 2, 0, 0]);
    let mut body = utf8("q2/x");
    body.extend_from_slice(&[0, 7]);
    body.extend_from_slice(b"once");
    raw.send(&common::frame(0x34, &body));
    assert_eq!(raw.read_n(4), vec![0x50, 2, 0, 7], "PUBREC");
    assert_eq!(
        payloads(&sub.collect(1, Duration::from_secs(5))),
        vec!["once"]
    );
    settle(&n, &["q2-sub"]);
    drop(sub);
    kill_and_restart(&mut n, 2);
    let mut sub = cluster::Mq::open(&n, "q2-sub", false);
    assert!(connack_session_present(&mut sub));
    // The client resends it (DUP) as MQTT asks: the node knows packet id 7
    // and does not publish it again.
    let mut raw = common::Raw::connect(&n);
    raw.send(&connect_v4_keep("q2-pub"));
    assert_eq!(raw.read_n(4), vec![0x20, 2, 1, 0], "session present");
    raw.send(&common::frame(0x3C, &body));
    assert_eq!(raw.read_n(4), vec![0x50, 2, 0, 7], "PUBREC");
    raw.send(&common::frame(0x62, &[0, 7]));
    assert_eq!(raw.read_n(4), vec![0x70, 2, 0, 7], "PUBCOMP");
    assert!(
        payloads(&sub.quiet(Duration::from_secs(1))).is_empty(),
        "the QoS 2 message was published twice"
    );
}

/// The PUBLISHes (packet id, payload, DUP) and PUBRELs (packet id) in a
/// 3.1.1 byte stream.
fn publishes_and_pubrels(b: &[u8]) -> (Vec<(u16, String, bool)>, Vec<u16>) {
    let (mut pubs, mut rels) = (Vec::new(), Vec::new());
    for (h, body) in packets(b) {
        match h & 0xF0 {
            0x30 if body.len() >= 2 => {
                let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let Some(pid) = body.get(2 + tl..4 + tl) else {
                    continue;
                };
                let pid = u16::from_be_bytes([pid[0], pid[1]]);
                let payload = String::from_utf8_lossy(&body[4 + tl..]).to_string();
                pubs.push((pid, payload, h & 0x08 != 0));
            }
            0x60 if body.len() >= 2 => rels.push(u16::from_be_bytes([body[0], body[1]])),
            _ => {}
        }
    }
    (pubs, rels)
}

#[test]
fn outgoing_qos2_messages_keep_their_packet_ids_across_kill_9() {
    let mut n = Node::start_with(journaled());
    // A persistent 3.1.1 QoS 2 subscriber that takes what comes and
    // acknowledges only the first three (PUBREC), and completes only the
    // first release (PUBCOMP).
    let mut raw = raw_subscriber(&n, "kq2", "kq/#", 2);
    let mut p = mq(&n, "kq-pub");
    for i in 0..40 {
        p.publish("kq/x", 2, false, format!("q{i:03}").as_bytes());
    }
    drop(p);
    let (bytes, _) = raw.read_all(Duration::from_millis(500));
    let (before, _) = publishes_and_pubrels(&bytes);
    assert!(
        before.len() >= 10,
        "only {} PUBLISHes reached the subscriber",
        before.len()
    );
    let pid_of = |payload: &str| {
        before
            .iter()
            .find(|(_, p, _)| p == payload)
            .map(|(id, _, _)| *id)
            .unwrap_or_else(|| panic!("{payload} was not sent: {before:?}"))
    };
    let first: Vec<u16> = ["q000", "q001", "q002"].iter().map(|p| pid_of(p)).collect();
    for pid in &first {
        raw.send(&pid_packet(PUBREC, *pid));
        assert_eq!(raw.read_n(4), pid_packet(PUBREL, *pid), "PUBREL");
    }
    raw.send(&pid_packet(PUBCOMP, first[0]));
    // Every change on disk before the kill.
    assert!(
        wait_until(Duration::from_secs(5), || n
            .ctl(&["durable", "status"])
            .1
            .contains("pubrel_owed      : 2\n")),
        "{}",
        n.ctl(&["durable", "status"]).1
    );
    settle_disk(&n);
    kill_and_restart(&mut n, 1);
    drop(raw);
    let mut raw = common::Raw::connect(&n);
    raw.send(&connect_v4_keep("kq2"));
    assert_eq!(raw.read_n(4), vec![0x20, 2, 1, 0], "session present");
    let (bytes, _) = raw.read_all(Duration::from_millis(1000));
    let (after, rels) = publishes_and_pubrels(&bytes);
    // The releases still owed come first, with their packet ids.
    assert_eq!(rels, first[1..].to_vec(), "PUBRELs after the restart");
    // What went out before goes out again with DUP and the same packet
    // id (the client knows it by it); nothing it received comes again.
    for (pid, payload, dup) in &after {
        assert!(
            !["q000", "q001", "q002"].contains(&payload.as_str()),
            "{payload} received before, sent again"
        );
        if let Some((old, _, _)) = before.iter().find(|(_, p, _)| p == payload) {
            assert_eq!((pid, *dup), (old, true), "{payload}");
        }
    }
    // Acknowledging everything brings the rest, each message once, in
    // order.
    let mut seen: Vec<String> = Vec::new();
    let mut batch = after;
    for pid in &first[1..] {
        raw.send(&pid_packet(PUBCOMP, *pid));
    }
    for _ in 0..20 {
        if batch.is_empty() {
            break;
        }
        for (pid, payload, _) in &batch {
            seen.push(payload.clone());
            raw.send(&pid_packet(PUBREC, *pid));
        }
        let (bytes, _) = raw.read_all(Duration::from_millis(500));
        let (pubs, rels) = publishes_and_pubrels(&bytes);
        for pid in rels {
            raw.send(&pid_packet(PUBCOMP, pid));
        }
        batch = pubs;
    }
    let want: Vec<String> = (3..40).map(|i| format!("q{i:03}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_truncated_or_overwritten_store_stops_the_node_and_names_its_file() {
    let mut n = Node::start_with(journaled());
    mosquitto_pub(&n, &["-t", "cr/1", "-m", "kept", "-r", "-q", "1"]);
    assert!(v5_sub(&n, "cr5", "3600", &["-E"]).is_empty());
    for i in 0..5 {
        mosquitto_pub(&n, &["-t", "ps/c", "-m", &format!("c{i}"), "-q", "1"]);
    }
    settle_disk(&n);
    n.kill();
    let file = n.data_dir().join("durable.redb");
    let good = std::fs::read(&file).expect("read the store");
    let refused = |why: &str| {
        let (status, err) = n
            .foreground_exit(&[], Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{why}: the node started"));
        assert!(!status.success(), "{why}: {status}");
        assert!(
            err.contains(&file.display().to_string()),
            "{why}: the error does not name the file: {err}"
        );
    };
    // Cut in half.
    std::fs::write(&file, &good[..good.len() / 2]).expect("truncate");
    refused("truncated");
    // Its header overwritten.
    let mut bad = good.clone();
    bad[..512].fill(0xAA);
    std::fs::write(&file, &bad).expect("overwrite");
    refused("overwritten header");
    // A torn tail (garbage past the last commit, as a write cut by a
    // crash leaves) is repaired: everything is there.
    let mut torn = good.clone();
    torn.extend((0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    std::fs::write(&file, &torn).expect("tail");
    let _ = std::fs::remove_file(n.dir.path().join("stderr.log"));
    n.spawn(&[]);
    assert_eq!(retained_seen(&n, "cr/#"), vec!["cr/1 kept"]);
    let got = v5_sub(&n, "cr5", "3600", &["-C", "5", "-W", "10"]);
    let want: Vec<String> = (0..5).map(|i| format!("ps/c c{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_whole_cluster_killed_at_once_comes_back_with_its_sessions_and_retained_messages() {
    whole_cluster_killed(false);
}

#[test]
fn a_whole_cluster_killed_at_once_with_the_session_shards_comes_back_and_copies_them_again() {
    whole_cluster_killed(true);
}

/// Three nodes, each with an offline persistent session holding ten
/// acknowledged QoS 1 messages and a retained message, all killed at once
/// and restarted. With the session shards (`builtin_raft`) their groups
/// elect again from their logs on disk, and each node copies its session
/// to its shard again once the shard answers.
fn whole_cluster_killed(shards: bool) {
    let env = if shards {
        cluster::ds_env("4/3/1")
    } else {
        Vec::new()
    };
    let mut nodes = if shards {
        cluster::ds_cluster(&[4, 5, 6], "4/3/1", 4, "")
    } else {
        cluster::cluster_with(&[1, 2, 3], "durable_sessions.enable = true")
    };
    // On each node an offline persistent 3.1.1 session on `all/#`.
    let ids = ["ka-1", "ka-2", "ka-3"];
    for (n, id) in nodes.iter().zip(ids) {
        let mut m = cluster::Mq::open(n, id, false);
        assert!(!connack_session_present(&mut m));
        m.sub("all/#", 1);
        disconnect(m);
    }
    for n in &nodes[1..] {
        for owner in &nodes {
            cluster::wait_route(n, "all/#", owner, true, Duration::from_secs(5));
        }
    }
    // Ten acknowledged QoS 1 messages published on the first node (two of
    // the three sessions get them forwarded) and a retained one on the
    // second.
    let mut p = mq(&nodes[0], "ka-pub");
    for i in 0..10 {
        p.publish("all/x", 1, false, format!("a{i}").as_bytes());
    }
    drop(p);
    mosquitto_pub(&nodes[1], &["-t", "all/r", "-m", "kept", "-r", "-q", "1"]);
    let want: Vec<String> = (0..10)
        .map(|i| format!("a{i}"))
        .chain(["kept".to_string()])
        .collect();
    for n in &nodes {
        settle_disk(n);
    }
    for n in nodes.iter_mut() {
        n.kill();
    }
    let restarted = Instant::now();
    for n in nodes.iter_mut() {
        let _ = std::fs::remove_file(n.dir.path().join("stderr.log"));
        n.spawn(&env);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let line = status_line(&all, &[]);
    for n in &all {
        let left = Duration::from_secs(30).saturating_sub(restarted.elapsed());
        wait_status(n, &line, left, &all);
        assert!(
            n.log()
                .contains("1 persistent session(s) back from the journal"),
            "{}",
            n.log()
        );
    }
    if shards {
        for n in &all {
            assert!(
                wait_until(Duration::from_secs(60), || n
                    .log()
                    .contains("1 copied to their shards again")),
                "{}",
                cluster::tail(n)
            );
        }
    }
    // Every session has its eleven messages, the first node's in order,
    // and the retained message is on every node.
    for (n, id) in nodes.iter().zip(ids) {
        let mut m = cluster::Mq::open(n, id, false);
        assert!(connack_session_present(&mut m), "{id} lost its session");
        // Order holds per publisher only: the retained message came from
        // another node and may overtake the last forwarded ones.
        let mut got = payloads(&m.collect(11, Duration::from_secs(10)));
        let at = got.iter().position(|p| p == "kept");
        assert!(at.is_some(), "{id}: {got:?}");
        if let Some(at) = at {
            let kept = got.remove(at);
            got.push(kept);
        }
        assert_eq!(got, want, "{id}");
        disconnect(m);
        assert_eq!(retained_seen(n, "all/r"), vec!["all/r kept"], "{}", n.name);
    }
    // The routes came back across the cluster: a publish on the third
    // node reaches all three sessions.
    for owner in &nodes {
        cluster::wait_route(&nodes[2], "all/#", owner, true, Duration::from_secs(10));
    }
    mosquitto_pub(&nodes[2], &["-t", "all/after", "-m", "b", "-q", "1"]);
    for (n, id) in nodes.iter().zip(ids) {
        let mut m = cluster::Mq::open(n, id, false);
        assert!(connack_session_present(&mut m));
        assert_eq!(
            payloads(&m.collect(1, Duration::from_secs(10))),
            vec!["b"],
            "{id}"
        );
    }
}

/// Waits until every change the node made is on disk.
fn settle_disk(n: &Node) {
    assert!(
        wait_until(Duration::from_secs(5), || n
            .ctl(&["durable", "status"])
            .1
            .contains("pending          : 0\n")),
        "{}",
        n.ctl(&["durable", "status"]).1
    );
}

/// A small tmpfs mounted on a directory while it lives (lazily unmounted
/// when dropped, so a node still running does not keep it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("data dir");
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test runs as root, as scripts/test.sh does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// QoS 1 publishes of 256 KB to `topic` from a v5 client, one at a
/// time, until one is refused (at most 100): the first five bytes of each
/// acknowledged payload (its packet id, `00001` on), and the refusal's
/// reason code.
fn fill_until_refused(raw: &mut common::Raw, topic: &str) -> (Vec<String>, Option<u8>) {
    let mut acked = Vec::new();
    for pid in 1..=100u16 {
        let mut body = utf8(topic);
        body.extend_from_slice(&pid.to_be_bytes());
        body.push(0); // no properties
        body.extend_from_slice(format!("{pid:05}").as_bytes());
        body.extend_from_slice(&vec![b'x'; 256 * 1024]);
        raw.send(&common::frame(0x32, &body));
        let ack = raw.read_n(4);
        assert_eq!(ack[0], 0x40, "a PUBACK: {ack:?}");
        assert_eq!(u16::from_be_bytes([ack[2], ack[3]]), pid);
        // Reason code omitted (remaining length 2) is success.
        let code = if ack[1] > 2 {
            raw.read_n(usize::from(ack[1]) - 2)[0]
        } else {
            0
        };
        if code != 0 {
            return (acked, Some(code));
        }
        acked.push(format!("{pid:05}"));
    }
    (acked, None)
}

#[test]
fn a_full_disk_refuses_publishes_that_need_it_with_0x97_and_an_alarm() {
    let mut n = Node::prepare("durable_sessions.enable = true\n");
    let _fs = Tmpfs::mount(&n.data_dir(), "12m");
    n.spawn(&[]);
    // A persistent session offline: each QoS 1 message for it must be on
    // disk before its publisher's PUBACK.
    let out = run(mosquitto("mosquitto_sub", &n).args([
        "-c", "-i", "full-sub", "-x", "3600", "-q", "1", "-t", "full/#", "-E",
    ]));
    assert!(out.status.success(), "{}", common::output_text(&out));
    let mut raw = common::Raw::connect(&n);
    raw.send(&common::connect_v5("full-pub", 60));
    let (b, _) = raw.read_all(Duration::from_millis(500));
    assert_eq!(packets(&b).first().map(|p| p.0), Some(0x20), "CONNACK");
    // 12 MB fill with fewer than 48 messages of 256 KB.
    let (acked, refused) = fill_until_refused(&mut raw, "full/x");
    let acked = acked.len();
    assert!(acked > 0, "nothing was acknowledged");
    assert_eq!(
        refused,
        Some(0x97),
        "after {acked} acknowledged: {}",
        n.log()
    );
    let (_, alarms) = n.ctl(&["alarms", "list"]);
    assert!(alarms.contains("durable_storage_failed"), "{alarms}");
    let (_, st) = n.ctl(&["durable", "status"]);
    assert!(!st.contains("failures         : 0\n"), "{st}");
    // MQTT 3.1.1 cannot refuse a publish: the connection closes without a
    // PUBACK, and the client is to send it again.
    let mut v3 = common::Raw::connect(&n);
    v3.send(&common::connect_v4("full-pub3", 60));
    assert_eq!(v3.read_n(4), vec![0x20, 2, 0, 0]);
    let mut body = utf8("full/y");
    body.extend_from_slice(&[0, 1]);
    body.extend_from_slice(&vec![b'x'; 256 * 1024]);
    v3.send(&common::frame(0x32, &body));
    let (b, closed) = v3.read_all(Duration::from_secs(5));
    assert!(closed && b.is_empty(), "closed={closed}, got {b:?}");
    assert!(n.alive(), "the node died of a full disk");
}

/// A v5 CONNECT (clean start) with a session expiry and a QoS 1 will on
/// `will_topic` delayed by `delay` seconds.
fn connect_v5_with_will(id: &str, expiry: u32, will_topic: &str, delay: u32) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x0E, 0, 60];
    let mut props = vec![0x11];
    props.extend_from_slice(&expiry.to_be_bytes());
    body.extend(common::varint(props.len()));
    body.extend(props);
    body.extend(utf8(id));
    let mut wprops = vec![0x18];
    wprops.extend_from_slice(&delay.to_be_bytes());
    body.extend(common::varint(wprops.len()));
    body.extend(wprops);
    body.extend(utf8(will_topic));
    body.extend(utf8("gone"));
    common::frame(0x10, &body)
}

#[test]
fn wills_and_session_expiry_hold_across_kill_9() {
    let mut n = Node::start_with(journaled());
    // A persistent watcher of the wills, offline.
    let mut w = cluster::Mq::open(&n, "will-watch", false);
    assert!(!connack_session_present(&mut w));
    w.sub("wills/#", 1);
    disconnect(w);
    // A connected client with a will delayed 2 s, and an offline session
    // whose 2 s expiry runs out while the node is down.
    let mut raw = common::Raw::connect(&n);
    raw.send(&connect_v5_with_will("will-c", 3600, "wills/c", 2));
    let (b, _) = raw.read_all(Duration::from_millis(300));
    assert_eq!(packets(&b).first().map(|p| p.0), Some(0x20), "CONNACK");
    assert!(v5_sub(&n, "exp-short", "2", &["-E"]).is_empty());
    settle(&n, &[]);
    n.kill();
    std::thread::sleep(Duration::from_millis(2500));
    let _ = std::fs::remove_file(n.dir.path().join("stderr.log"));
    n.spawn(&[]);
    // will-c and the watcher come back; exp-short expired meanwhile.
    assert!(
        wait_until(Duration::from_secs(10), || n
            .log()
            .contains("2 persistent session(s) back from the journal")),
        "{}",
        n.log()
    );
    // The node died with will-c's connection: its will comes, once, as
    // its delay (counted from the crash) has run out.
    let mut w = cluster::Mq::open(&n, "will-watch", false);
    assert!(connack_session_present(&mut w));
    assert_eq!(
        payloads(&w.collect(1, Duration::from_secs(5))),
        vec!["gone"]
    );
    settle(&n, &["will-watch"]);
    let mut e = cluster::Mq::open(&n, "exp-short", false);
    assert!(
        !connack_session_present(&mut e),
        "an expired session came back"
    );
    drop(e);
    // Published once: another crash does not bring the will back.
    drop(w);
    settle(&n, &[]);
    kill_and_restart(&mut n, 3);
    let mut w = cluster::Mq::open(&n, "will-watch", false);
    assert!(connack_session_present(&mut w));
    assert!(payloads(&w.quiet(Duration::from_secs(3))).is_empty());
}

#[test]
fn the_number_of_shards_is_fixed_once_they_are_made() {
    let mut n = Node::start_with(Opts {
        extra: "durable_sessions.enable = true\n\
                durable_storage.messages { backend = builtin_raft, n_shards = 4 }\n"
            .into(),
        ..Default::default()
    });
    let ok = wait_until(Duration::from_secs(20), || {
        let (_, out) = n.ctl(&["ds", "info", "--local"]);
        out.contains("4 shard(s)") && out.matches("Leader").count() == 4
    });
    assert!(ok, "{}", n.ctl(&["ds", "info", "--local"]).1);
    n.kill();
    let file = n.data_dir().join("durable.redb");
    let (status, err) = n
        .foreground_exit(
            &[("EMQX_DURABLE_STORAGE__MESSAGES__N_SHARDS", "8")],
            Duration::from_secs(20),
        )
        .expect("started with 8 shards over 4");
    assert!(!status.success(), "{status}");
    assert!(
        err.contains("durable_storage.messages.n_shards")
            && err.contains(&file.display().to_string()),
        "the error names the key and the file: {err}"
    );
    // Back to 4: it starts, its shards led again.
    let _ = std::fs::remove_file(n.dir.path().join("stderr.log"));
    n.spawn(&[]);
    let ok = wait_until(Duration::from_secs(20), || {
        n.ctl(&["ds", "info", "--local"])
            .1
            .matches("Leader")
            .count()
            == 4
    });
    assert!(ok, "{}", n.ctl(&["ds", "info", "--local"]).1);
}

/// `builtin_raft`, three cores, the first on a small tmpfs: once its
/// disk is full its publishes that a persistent session needs are
/// refused (0x97) with an alarm, it stays up, and the shards go on on the
/// other two. Lost for good then, it leaves every message it acknowledged
/// to the session's shard: the client finds them all on another node.
#[test]
fn a_full_disk_on_one_core_refuses_its_publishes_and_loses_none_it_acknowledged() {
    let env = cluster::ds_env("4/3/1");
    let mut nodes: Vec<Node> = [22u8, 23, 24]
        .iter()
        .map(|ip| cluster::prepare(*ip))
        .collect();
    let _fs = Tmpfs::mount(&nodes[0].data_dir(), "16m");
    for n in nodes.iter_mut() {
        n.spawn(&env);
    }
    for n in &nodes[1..] {
        cluster::join(n, &nodes[0]);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    cluster::wait_ds_settled(&all, 4, Duration::from_secs(30));
    let a = &nodes[0];
    cluster::subscribe_then_leave(a, "fr-sub", "fr/#", 1);
    let mut raw = common::Raw::connect(a);
    raw.send(&common::connect_v5("fr-pub", 60));
    let (b, _) = raw.read_all(Duration::from_millis(500));
    assert_eq!(packets(&b).first().map(|p| p.0), Some(0x20), "CONNACK");
    // A PUBACK waits for the session's shard, which elects a new leader
    // when the full node led it.
    raw.s
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // 16 MB fill with fewer than 64 messages of 256 KB.
    let (acked, refused) = fill_until_refused(&mut raw, "fr/x");
    assert!(!acked.is_empty(), "nothing was acknowledged");
    assert_eq!(
        refused,
        Some(0x97),
        "after {} acknowledged: {}",
        acked.len(),
        a.log()
    );
    let (_, alarms) = a.ctl(&["alarms", "list"]);
    assert!(alarms.contains("durable_storage_failed"), "{alarms}");
    assert!(nodes[0].alive(), "the node died of a full disk");
    // The shards go on on the other two cores.
    let (b, c) = (&nodes[1], &nodes[2]);
    cluster::subscribe_then_leave(b, "fr-other", "fr-other/#", 1);
    let mut p = mq(c, "fr-other-pub");
    p.publish("fr-other/x", 1, false, b"on");
    drop(p);
    let (mut o, present) = cluster::mq_persistent(b, "fr-other");
    assert!(present, "{}", tails(&[b, c]));
    assert_eq!(payloads(&o.collect(1, Duration::from_secs(10))), vec!["on"]);
    // The full node is lost for good: every message it acknowledged is in
    // the session's shard.
    drop(raw);
    nodes[0].kill();
    let (b, c) = (&nodes[1], &nodes[2]);
    let (mut s, present) = cluster::mq_persistent(b, "fr-sub");
    assert!(present, "session_present = 1\n{}", tails(&[b, c]));
    let got: Vec<String> = s
        .collect(acked.len(), Duration::from_secs(20))
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload[..5]).into_owned())
        .collect();
    assert_eq!(got, acked, "{}", tails(&[b, c]));
}
