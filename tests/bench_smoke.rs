//! Smoke tests of `emqx-rs bench` against a real broker node: it must count
//! correctly (sent, received, loss, duplicates) for every QoS, keep
//! connections open for `conn`, and refuse bad options with exit code 2.

mod common;

use common::{wait_until, Node, BIN};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bench(node: Option<&Node>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("bench").args(args);
    if let Some(n) = node {
        c.arg("-p").arg(n.mqtt_port.to_string());
    }
    c.stdin(Stdio::null());
    c
}

fn run(node: Option<&Node>, args: &[&str]) -> Output {
    bench(node, args).output().expect("run emqx-rs bench")
}

fn spawn(node: &Node, args: &[&str]) -> Child {
    bench(Some(node), args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn emqx-rs bench")
}

/// Waits for a child with a timeout (killing it if it hangs).
fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let o = child.wait_with_output().expect("output");
    panic!(
        "bench did not exit in {timeout:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The `SUMMARY {json}` line of a run.
fn summary(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| {
            panic!(
                "no SUMMARY line\nstdout:\n{out}\nstderr:\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    serde_json::from_str(line).expect("SUMMARY is JSON")
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A value from `ctl broker stats`.
fn stat(node: &Node, name: &str) -> Option<i64> {
    let (_, out) = node.ctl(&["broker", "stats"]);
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k.trim_end() == name).then(|| v.trim().parse().ok())?
    })
}

/// 2 subscribers, then 4 publishers x 100 messages at `qos`: every
/// subscriber gets every message once.
fn pub_sub(qos: &str, version: &str) {
    let node = Node::start();
    let sub = spawn(
        &node,
        &[
            "sub",
            "-c",
            "2",
            "-t",
            "bench/t",
            "-q",
            qos,
            "-V",
            version,
            "-L",
            "400",
            "--duration",
            "20",
        ],
    );
    // Generous bounds: the suite runs beside other tests on two cores.
    assert!(
        wait_until(Duration::from_secs(15), || stat(
            &node,
            "subscriptions.count"
        ) == Some(2)),
        "the subscribers did not subscribe"
    );
    let p = run(
        Some(&node),
        &[
            "pub", "-c", "4", "-t", "bench/t", "-q", qos, "-V", version, "-I", "10", "-L", "100",
        ],
    );
    assert_eq!(p.status.code(), Some(0), "pub: {}", describe(&p));
    let ps = summary(&p);
    let text = String::from_utf8_lossy(&p.stdout);
    assert!(text.contains("sent=400"), "pub: {}", describe(&p));
    assert_eq!(ps["sent"], 400, "pub: {}", describe(&p));
    assert_eq!(ps["errors"], 0, "pub: {}", describe(&p));
    assert_eq!(ps["connected"], 4, "pub: {}", describe(&p));
    assert_eq!(ps["unacked"], 0, "pub: {}", describe(&p));
    let expect_acked = if qos == "0" { 0 } else { 400 };
    assert_eq!(ps["acked"], expect_acked, "pub: {}", describe(&p));

    let s = finish(sub, Duration::from_secs(40));
    assert_eq!(s.status.code(), Some(0), "sub: {}", describe(&s));
    let ss = summary(&s);
    let text = String::from_utf8_lossy(&s.stdout);
    assert!(text.contains("received=800"), "sub: {}", describe(&s));
    assert_eq!(ss["received"], 800, "sub: {}", describe(&s));
    assert_eq!(ss["subscribed"], 2, "sub: {}", describe(&s));
    assert_eq!(ss["loss"], 0, "sub: {}", describe(&s));
    assert_eq!(ss["duplicates"], 0, "sub: {}", describe(&s));
    assert_eq!(ss["out_of_order"], 0, "sub: {}", describe(&s));
    assert_eq!(ss["errors"], 0, "sub: {}", describe(&s));
    assert!(ss["latency_ms"]["max"].as_f64().unwrap() > 0.0, "{ss}");
    // Every bench client disconnected cleanly.
    assert!(
        wait_until(Duration::from_secs(5), || stat(&node, "connections.count")
            == Some(0)),
        "connections left open"
    );
}

#[test]
fn pub_sub_qos1() {
    pub_sub("1", "5");
}

#[test]
fn pub_sub_qos2() {
    pub_sub("2", "5");
}

#[test]
fn pub_sub_qos0() {
    pub_sub("0", "5");
}

#[test]
fn pub_sub_qos2_mqtt311() {
    pub_sub("2", "4");
}

#[test]
fn pub_sub_qos1_mqtt31() {
    pub_sub("1", "3");
}

#[test]
fn conn_keeps_connections_open() {
    let node = Node::start();
    let child = spawn(&node, &["conn", "-c", "50", "--duration", "2"]);
    let mut seen = 0;
    wait_until(Duration::from_secs(3), || {
        seen = seen.max(stat(&node, "connections.count").unwrap_or(0));
        seen == 50
    });
    let o = finish(child, Duration::from_secs(15));
    assert_eq!(seen, 50, "broker saw {seen} connections; {}", describe(&o));
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let s = summary(&o);
    assert_eq!(s["cmd"], "conn");
    assert_eq!(s["connected"], 50, "{}", describe(&o));
    assert_eq!(s["errors"], 0, "{}", describe(&o));
    assert_eq!(s["end"], "duration");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("connected=50"),
        "{}",
        describe(&o)
    );
    assert!(
        wait_until(Duration::from_secs(5), || stat(&node, "connections.count")
            == Some(0)),
        "connections left open"
    );
}

#[test]
fn several_hosts_spread_the_clients_over_them() {
    // Two brokers on one port, on two loopback addresses.
    let mut a = common::cluster::prepare(71);
    let mut b = common::cluster::prepare(72);
    let text = std::fs::read_to_string(&b.config).expect("read config");
    let old = format!("bind = \"{}:{}\"", b.host, b.mqtt_port);
    assert!(text.contains(&old), "{text}");
    let new = format!("bind = \"{}:{}\"", b.host, a.mqtt_port);
    std::fs::write(&b.config, text.replace(&old, &new)).expect("write config");
    b.mqtt_port = a.mqtt_port;
    a.spawn(&[]);
    b.spawn(&[]);
    let hosts = format!("{},{}", a.host, b.host);
    let child = spawn(&a, &["conn", "-h", &hosts, "-c", "10", "--duration", "3"]);
    let count = |n: &Node| stat(n, "connections.count").unwrap_or(0);
    let both = wait_until(Duration::from_secs(5), || count(&a) == 5 && count(&b) == 5);
    let seen = (count(&a), count(&b));
    let o = finish(child, Duration::from_secs(15));
    assert!(both, "connections per broker: {seen:?}; {}", describe(&o));
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(summary(&o)["connected"], 10, "{}", describe(&o));
}

#[test]
fn bad_options_exit_2() {
    for (args, needle) in [
        (&["pub", "-t", "a", "-q", "3"][..], "-q"),
        (&["pub", "-t", "a", "-V", "7"][..], "-V"),
        (&["sub", "-t", "a", "--no-such-flag"][..], "--no-such-flag"),
        (&["pub", "-t", "a", "-s", "4"][..], "-s"),
        (&["pub", "-t", "a", "-S"][..], "TLS is not supported yet"),
        (&["pub", "-c", "2"][..], "-t"),
        (&["conn", "-h", "a,b", "--transport", "ws"][..], "tcp only"),
        (&["flood"][..], "conn, pub or sub"),
    ] {
        let o = run(None, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", describe(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let o = run(None, &["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--inflight"));
}
