//! One client must never hurt another: a QoS 1 subscriber on `#` that stops
//! (never reads, or reads and never acknowledges) beside a healthy pair
//! publishing QoS 1 at a fixed rate. The pair loses nothing and its p99
//! latency stays within 2x of the same measurement without the stuck
//! client; the stuck client's drops are counted and an alarm is raised,
//! in `ctl alarms` and on `$SYS`, and cleared when it goes.

mod common;

use common::{bench_pub, connect_v5, frame, metric, Node};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn client(n: &Node, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", n.mqtt_port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(100);
    let (c, mut el) = AsyncClient::new(o, 1000);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{id}: no CONNACK");
        if let Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) =
            tokio::time::timeout(Duration::from_secs(5), el.poll()).await
        {
            return (c, el);
        }
    }
}

/// The healthy pair: QoS 1 on `pair/t`, `count` messages `every` apart,
/// each carrying its send time. Returns the latencies, sorted; panics if
/// one is lost.
async fn measure(n: &Node, tag: &str, count: usize, every: Duration) -> Vec<Duration> {
    let (sub, mut sel) = client(n, &format!("pair-sub-{tag}")).await;
    sub.subscribe("pair/t", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sel.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("{tag}: no SUBACK: {other:?}"),
        }
    }
    let (publ, mut pel) = client(n, &format!("pair-pub-{tag}")).await;
    let base = Arc::new(Instant::now());
    let pub_task = {
        let base = base.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for i in 0..count {
                tick.tick().await;
                let at = base.elapsed().as_nanos() as u64;
                let mut payload = (i as u64).to_be_bytes().to_vec();
                payload.extend_from_slice(&at.to_be_bytes());
                publ.publish("pair/t", QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("publish");
            }
            publ
        })
    };
    let pub_loop = tokio::spawn(async move { while pel.poll().await.is_ok() {} });
    let mut lat = Vec::with_capacity(count);
    let mut seen = vec![false; count];
    let deadline = Instant::now() + every * count as u32 + Duration::from_secs(30);
    while lat.len() < count {
        assert!(
            Instant::now() < deadline,
            "{tag}: {} of {count} arrived",
            lat.len()
        );
        match tokio::time::timeout(Duration::from_secs(10), sel.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = base.elapsed().as_nanos() as u64;
                let i = u64::from_be_bytes(p.payload[..8].try_into().expect("8")) as usize;
                let at = u64::from_be_bytes(p.payload[8..16].try_into().expect("8"));
                if !std::mem::replace(&mut seen[i], true) {
                    lat.push(Duration::from_nanos(now.saturating_sub(at)));
                }
            }
            Ok(Ok(_)) => {}
            other => panic!("{tag}: subscriber failed after {}: {other:?}", lat.len()),
        }
    }
    let publ = pub_task.await.expect("publisher");
    let _ = publ.disconnect().await;
    let _ = sub.disconnect().await;
    pub_loop.abort();
    lat.sort();
    lat
}

fn p99(lat: &[Duration]) -> Duration {
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

/// One packet: its first byte and its body.
fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 1];
    s.read_exact(&mut h).expect("header");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("length");
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    (h[0], body)
}

/// A raw v5 client subscribed to `#` at QoS 1 that never acknowledges;
/// with `read`, a thread reads and discards what arrives, otherwise
/// nothing is ever read.
fn stuck_client(n: &Node, id: &str, read: bool) -> TcpStream {
    let mut s = TcpStream::connect(n.addr()).expect("connect");
    use std::io::Write;
    s.write_all(&connect_v5(id, 0)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (h, _) = read_packet(&mut s);
    assert_eq!(h, 0x20, "CONNACK");
    // SUBSCRIBE id 1, no properties, "#" QoS 1.
    let body = [0, 1, 0, 0, 1, b'#', 1];
    s.write_all(&frame(0x82, &body)).expect("subscribe");
    let (h, body) = read_packet(&mut s);
    assert_eq!((h, body.last()), (0x90, Some(&1)), "SUBACK granting QoS 1");
    if read {
        let mut r = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = r.set_read_timeout(None);
            let mut buf = [0u8; 16 * 1024];
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    s
}

/// Floods `flood/<id>` (only the stuck client gets it) with QoS 1 until the
/// stuck client is found stopped: its alarm is raised.
fn drive_to_stopped(n: &Node, id: &str) {
    let mut flood = bench_pub(
        n.mqtt_port,
        &["-c", "1", "-q", "1", "--inflight", "100", "-s", "64"],
    )
    .args(["-t", &format!("flood/{id}"), "-I", "0", "-L", "8000"])
    .spawn()
    .expect("spawn bench pub");
    let alarm = format!("slow_consumer/{id}");
    let raised = common::wait_until(Duration::from_secs(60), || {
        n.ctl(&["alarms", "list"]).1.contains(&alarm)
    });
    assert!(
        raised,
        "no {alarm} alarm: {:?}\n{}",
        n.ctl(&["alarms", "list"]),
        n.log()
    );
    // Not held up any more: the flood finishes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = flood.try_wait().expect("wait") {
            assert!(st.success(), "bench pub failed: {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flood publisher is still held up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_does_not_hold_up_a_healthy_pair() {
    let n = Node::start();
    const COUNT: usize = 600;
    let every = Duration::from_millis(8);

    // $SYS alarm messages, as an operator's client sees them.
    let (sys, mut sysel) = client(&n, "alarm-watch").await;
    sys.subscribe("$SYS/brokers/+/alarms/+", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let (sys_tx, mut sys_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = sysel.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = sys_tx.send((p.topic.clone(), p.payload.to_vec()));
            }
        }
    });

    // Measured before and after, the larger p99 taken: the machine's load
    // may drift during the test.
    let base = measure(&n, "base", COUNT, every).await;
    let mut withs = Vec::new();

    for (id, read) in [("stuck-noread", false), ("stuck-noack", true)] {
        let stuck = stuck_client(&n, id, read);
        let dropped_before = metric(&n, "delivery.dropped.queue_full");
        drive_to_stopped(&n, id);
        assert!(metric(&n, "client.slow_consumer") >= 1);

        let with = measure(&n, id, COUNT, every).await;
        withs.push((id, with));
        let dropped = metric(&n, "delivery.dropped.queue_full") - dropped_before;
        assert!(dropped > 0, "{id}: the stuck client's queue never dropped");

        // The $SYS message names the alarm.
        let name = format!("slow_consumer/{id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, p) = tokio::time::timeout(left, sys_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no $SYS activate for {name}"))
                .expect("open");
            let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
            if t.ends_with("/alarms/activate") && v["name"] == name.as_str() {
                assert_eq!(v["activated"], true);
                assert_eq!(v["details"]["clientid"], id);
                break;
            }
        }

        // The client goes: its alarm clears into the history.
        let _ = stuck.shutdown(std::net::Shutdown::Both);
        drop(stuck);
        let cleared = common::wait_until(Duration::from_secs(20), || {
            !n.ctl(&["alarms", "list"]).1.contains(&name)
                && n.ctl(&["alarms", "history"]).1.contains(&name)
        });
        assert!(
            cleared,
            "{name} not cleared: {:?} {:?}",
            n.ctl(&["alarms", "list"]),
            n.ctl(&["alarms", "history"])
        );
    }
    assert_eq!(n.ctl(&["alarms", "list"]).1, "No active alarms.\n");

    let after = measure(&n, "base-after", COUNT, every).await;
    let b = p99(&base).max(p99(&after));
    for (id, with) in withs {
        let w = p99(&with);
        eprintln!("{id}: p99 {b:?} without, {w:?} with the stuck client");
        assert!(
            w <= b * 2,
            "{id}: the healthy pair's p99 went from {b:?} to {w:?} (max {:?})",
            with.last()
        );
    }
}
