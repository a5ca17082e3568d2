//! Per-listener limits and operations: `ctl listeners` (list, stop,
//! start, restart), `max_connections` and `max_conn_rate`, over real
//! sockets against a real node.

mod common;

use common::{free_port, Node, Opts};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A v3.1.1 CONNECT for `id` (clean session, keepalive 60).
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// Connects and reads the CONNACK: `Some(stream)` when accepted.
fn mqtt_connect(addr: SocketAddr, id: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(&connect_packet(id)).ok()?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).ok()?;
    (ack == [0x20, 2, 0, 0]).then_some(s)
}

/// Whether the connection still answers a PINGREQ.
fn pings(s: &mut TcpStream) -> bool {
    let mut resp = [0u8; 2];
    s.write_all(&[0xC0, 0]).is_ok() && s.read_exact(&mut resp).is_ok() && resp == [0xD0, 0]
}

fn field(listing: &str, id: &str, key: &str) -> Option<String> {
    let mut lines = listing.lines().skip_while(|l| *l != id).skip(1);
    lines
        .by_ref()
        .take_while(|l| l.starts_with("  "))
        .find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
}

fn wait_field(n: &Node, id: &str, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = n.ctl(&["listeners"]);
        if field(&out, id, key).as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} {key} never became {want}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctl_listeners_lists_stops_starts_and_restarts() {
    let second = free_port();
    let n = Node::start_with(Opts {
        extra: format!(
            "listeners.tcp.second {{ bind = \"127.0.0.1:{second}\", max_connections = 100 }}\n"
        ),
        ..Default::default()
    });
    let (code, out) = n.ctl(&["listeners"]);
    assert_eq!(code, 0, "{out}");
    let expected_default = format!(
        "tcp:default\n  listen_on       : 127.0.0.1:{}\n  acceptors       : 16\n  proxy_protocol  : false\n  running         : true\n  current_conn    : 0\n  max_conns       : infinity\n",
        n.mqtt_port
    );
    assert!(out.starts_with(&expected_default), "{out}");
    assert_eq!(
        field(&out, "tcp:second", "max_conns").as_deref(),
        Some("100")
    );

    let mut a = mqtt_connect(n.addr(), "lst-a").expect("connect a");
    let _b = mqtt_connect(n.addr(), "lst-b").expect("connect b");
    wait_field(&n, "tcp:default", "current_conn", "2");

    // Stopped: new connections are refused, open ones carry on.
    let (code, out) = n.ctl(&["listeners", "stop", "tcp:default"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Stop tcp:default listener successfully.\n")
    );
    assert!(TcpStream::connect_timeout(&n.addr(), Duration::from_secs(2)).is_err());
    assert!(
        pings(&mut a),
        "an open connection survives its listener's stop"
    );
    let (_, out) = n.ctl(&["listeners"]);
    assert_eq!(
        field(&out, "tcp:default", "running").as_deref(),
        Some("false")
    );
    let other: SocketAddr = ([127, 0, 0, 1], second).into();
    assert!(
        mqtt_connect(other, "lst-c").is_some(),
        "the other listener still serves"
    );

    let (code, out) = n.ctl(&["listeners", "start", "tcp:default"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Started tcp:default listener successfully.\n")
    );
    assert!(mqtt_connect(n.addr(), "lst-d").is_some());

    let (code, out) = n.ctl(&["listeners", "restart", "tcp:default"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Restarted tcp:default listener successfully.\n")
    );
    assert!(mqtt_connect(n.addr(), "lst-e").is_some());
    assert!(pings(&mut a));

    // A port taken while the listener was stopped: start says so.
    let (code, _) = n.ctl(&["listeners", "stop", "tcp:default"]);
    assert_eq!(code, 0);
    let squatter = TcpListener::bind(n.addr()).expect("take the port");
    let (code, out) = n.ctl(&["listeners", "start", "tcp:default"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("Failed to start tcp:default listener: "),
        "{out}"
    );
    drop(squatter);
    let (code, out) = n.ctl(&["listeners", "start", "tcp:default"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Started tcp:default listener successfully.\n")
    );
    assert!(mqtt_connect(n.addr(), "lst-f").is_some());

    let (code, out) = n.ctl(&["listeners", "stop", "tcp:nope"]);
    assert_eq!((code, out.as_str()), (1, "Invalid listener: tcp:nope\n"));
}

#[test]
fn max_connections_closes_the_connection_past_the_limit() {
    let n = Node::start_with(Opts {
        extra: "listeners.tcp.default.max_connections = 2\n".into(),
        ..Default::default()
    });
    let a = mqtt_connect(n.addr(), "max-a").expect("first");
    let mut b = mqtt_connect(n.addr(), "max-b").expect("second");
    assert!(
        mqtt_connect(n.addr(), "max-c").is_none(),
        "the third is refused"
    );
    assert!(pings(&mut b), "the others are undisturbed");
    // Counted, so a Prometheus alert can say the listener is full.
    assert_eq!(common::metric(&n, "connections.refused.max_connections"), 1);
    drop(a);
    wait_field(&n, "tcp:default", "current_conn", "1");
    assert!(mqtt_connect(n.addr(), "max-d").is_some(), "room again");
}

#[test]
fn max_conn_rate_spaces_out_accepts() {
    // 10 at once, then 10 per second: 35 connections need at least 2.5 s.
    // (Only the lower bound is checked: a slow machine may take longer.)
    let n = Node::start_with(Opts {
        extra: "listeners.tcp.default.max_conn_rate = \"10/s\"\n".into(),
        ..Default::default()
    });
    // The harness's own start-up probe took a token; let the bucket refill.
    std::thread::sleep(Duration::from_millis(1200));
    let t = Instant::now();
    let mut open = Vec::new();
    for i in 0..35 {
        open.push(mqtt_connect(n.addr(), &format!("rate-{i}")).expect("every connection gets in"));
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2400),
        "35 connections at 10/s took only {took:?}"
    );
    for s in open.iter_mut() {
        assert!(pings(s));
    }
}

#[test]
fn max_conn_rate_is_checked_in_the_config() {
    for (value, ok) in [
        ("\"1000/s\"", true),
        ("\"500/10s\"", true),
        ("100", true),
        ("infinity", true),
        ("\"0/s\"", false),
        ("\"fast\"", false),
    ] {
        let n = Node::prepare(&format!("listeners.tcp.default.max_conn_rate = {value}\n"));
        let o = n.cli(&["check_config"]);
        assert_eq!(
            o.status.success(),
            ok,
            "{value}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if !ok {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("listeners.tcp.default.max_conn_rate"), "{err}");
        }
    }
}
