//! Flow control end to end: a QoS 1 subscriber that stops reading must
//! slow its publisher down (back-pressure through the publisher's TCP
//! window) instead of losing what the broker already acknowledged, and the
//! subscriber's acknowledgements must not wait behind the deliveries
//! queued for it.

mod common;

use common::{Node, BIN};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A metric from `ctl broker metrics`.
fn metric(n: &Node, name: &str) -> u64 {
    let (_, out) = n.ctl(&["broker", "metrics"]);
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k.trim_end() == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{out}"))
}

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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no SUBACK");
        if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
            break;
        }
    }

    // The publisher: QoS 1, as fast as its window of 100 allows. Without
    // back-pressure it would have every message acknowledged in a second
    // or two, far more than the subscriber's inbox holds (10,000).
    let publisher = Command::new(BIN)
        .args(["bench", "pub", "-p", &n.mqtt_port.to_string()])
        .args(["-c", "1", "-q", "1", "--inflight", "100", "-s", "16"])
        .args(["-t", "flow/1", "-I", "0", "-L", &TOTAL.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bench pub");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Now read: every message must arrive, once.
    let mut seen = HashSet::new();
    let mut publishes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} distinct messages arrived ({} publishes); dropped: {}",
            seen.len(),
            publishes,
            metric(&n, "delivery.dropped")
        );
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                publishes += 1;
                seen.insert(p.payload.to_vec());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber failed: {e}"),
            Err(_) => panic!(
                "nothing for 10 s after {} of {TOTAL}; dropped: {}",
                seen.len(),
                metric(&n, "delivery.dropped")
            ),
        }
    }
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
