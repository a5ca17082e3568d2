//! Node-wide overload protection: a publish storm into offline sessions
//! takes the node past its memory watermark; it raises an alarm, refuses
//! new connections, sheds the largest queues, and takes connections again
//! once the storm is over.

mod common;

use common::{bench_pub, connect_v5, metric, offline_session, Node, Opts, Raw};
use std::time::{Duration, Instant};

/// A CONNECT on a fresh socket: true if a CONNACK came back.
fn connects(n: &Node) -> bool {
    let mut r = Raw::connect(n);
    r.send(&connect_v5("probe", 0));
    let (b, _) = r.read_all(Duration::from_secs(3));
    b.first() == Some(&0x20)
}

/// A CONNECT on a fresh socket that the node closes without a CONNACK
/// (not merely a slow answer).
fn refused(n: &Node) -> bool {
    let mut r = Raw::connect(n);
    // The node may close before reading it: the write can fail.
    let _ = std::io::Write::write_all(&mut r.s, &connect_v5("probe", 0));
    let (b, closed) = r.read_all(Duration::from_secs(3));
    closed && b.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_past_the_memory_watermark_is_refused_and_shed_then_the_node_recovers() {
    let n = Node::start_with(Opts {
        extra: "overload_protection {\n  mem_high_watermark = 200MB\n  mem_low_watermark = 150MB\n  mem_check_interval = 200ms\n}\n".into(),
        ..Default::default()
    });
    // 8 offline sessions, each on its own topic: what they queue is theirs.
    const SESSIONS: usize = 8;
    for i in 0..SESSIONS {
        offline_session(&n, &format!("heavy-{i}"), &format!("storm/{i}")).await;
    }
    assert!(connects(&n), "the node takes connections before the storm");

    // The storm: 512 KB messages into every session for 8 s (each session
    // may hold 32 MB: 8 of them, 256 MB, pass the 200 MB watermark).
    let sessions = SESSIONS.to_string();
    let mut storm = bench_pub(
        n.mqtt_port,
        &["-c", &sessions, "-i", "0", "-q", "1", "--inflight", "8"],
    )
    .args([
        "-s",
        "524288",
        "-t",
        "storm/%i",
        "-I",
        "0",
        "--duration",
        "8",
    ])
    .spawn()
    .expect("bench pub");

    let alarm = "high_process_memory_usage";
    let raised = common::wait_until(Duration::from_secs(30), || {
        let (_, l) = n.ctl(&["alarms", "list"]);
        let (_, h) = n.ctl(&["alarms", "history"]);
        l.contains(alarm) || h.contains(alarm)
    });
    assert!(raised, "no {alarm} alarm\n{}", n.log());

    // While the storm lasts, new connections are refused (now and then:
    // shedding may bring the node under its low watermark for a moment).
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut was_refused = false;
    while Instant::now() < deadline && storm.try_wait().expect("wait").is_none() {
        if refused(&n) {
            was_refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = storm.wait();
    assert!(was_refused, "no connection was refused\n{}", n.log());
    assert!(metric(&n, "overload_protection.new_conn") >= 1);
    assert!(metric(&n, "overload_protection.shed") >= 1);
    assert!(metric(&n, "delivery.dropped.queue_full") >= 1);
    assert!(n.log().contains("shedding the queues"), "{}", n.log());

    // The storm is over: the alarm clears and connections are taken again.
    let recovered = common::wait_until(Duration::from_secs(30), || {
        !n.ctl(&["alarms", "list"]).1.contains(alarm)
    });
    assert!(
        recovered,
        "still overloaded: {:?}\n{}",
        n.ctl(&["alarms", "list"]),
        n.log()
    );
    assert!(n.ctl(&["alarms", "history"]).1.contains(alarm));
    assert!(connects(&n), "no connection after the storm");
}
