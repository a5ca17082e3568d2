//! Authorization with EMQX's acl.conf, checked from the outside: Python's
//! paho-mqtt (installed by scripts/test.sh) connects from a chosen source
//! address, subscribes and publishes, and reports the reason codes the
//! broker answers with; mosquitto clients watch what gets through.

mod common;

use common::{Node, Opts};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A paho client driven by a JSON plan: connects (version, client id,
/// username, source address, will), subscribes to `subs` (printing the
/// SUBACK codes), publishes `pubs` (printing each acknowledgement's code
/// for QoS 1), then collects messages for `wait` seconds and prints them,
/// and how it was first disconnected (the broker's reason code, or 0 for
/// its own DISCONNECT), as one JSON object.
const CLIENT: &str = r#"
import json, sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

plan = json.loads(sys.argv[1])
v5 = plan.get("v5", True)
out = {"suback": [], "puback": {}, "msgs": [], "disconnect": None, "connack": None}
lock = threading.Condition()

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=plan["cid"],
                protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
if plan.get("user"):
    c.username_pw_set(plan["user"], "pw")
if plan.get("will"):
    w = plan["will"]
    c.will_set(w["topic"], w["payload"], 1, w.get("retain", False))

def on_connect(cl, ud, flags, rc, props):
    with lock:
        out["connack"] = rc.value
        lock.notify_all()
def on_subscribe(cl, ud, mid, rcs, props):
    with lock:
        out["suback"].append([r.value for r in rcs])
        lock.notify_all()
def on_publish(cl, ud, mid, rc, props):
    with lock:
        out["puback"][str(mid)] = rc.value
        lock.notify_all()
def on_message(cl, ud, m):
    with lock:
        out["msgs"].append([m.topic, m.payload.decode(), m.retain])
def on_disconnect(cl, ud, flags, rc, props):
    with lock:
        # The first one: the broker's, when it closed the connection.
        if out["disconnect"] is None:
            out["disconnect"] = rc.value
        lock.notify_all()
c.on_connect, c.on_subscribe, c.on_publish = on_connect, on_subscribe, on_publish
c.on_message, c.on_disconnect = on_message, on_disconnect
c.connect(plan.get("host", "127.0.0.1"), plan["port"], 30, bind_address=plan.get("bind", ""))
c.loop_start()
with lock:
    lock.wait_for(lambda: out["connack"] is not None, 10)
for i, s in enumerate(plan.get("subs", [])):
    c.subscribe(s, 1)
    with lock:
        lock.wait_for(lambda: len(out["suback"]) > i, 10)
mids = []
for p in plan.get("pubs", []):
    info = c.publish(p["topic"], p["payload"], p.get("qos", 1), p.get("retain", False))
    mids.append(info.mid)
    with lock:
        lock.wait_for(lambda: p.get("qos", 1) == 0 or str(info.mid) in out["puback"]
                      or out["disconnect"] is not None, 10)
time.sleep(plan.get("wait", 0))
if plan.get("abrupt"):
    c._sock.close()
    c.loop_stop()
else:
    c.disconnect()
    c.loop_stop()
out["pubacks"] = [out["puback"].get(str(m)) for m in mids]
print(json.dumps(out))
"#;

fn paho(plan: Value) -> Value {
    let o = Command::new("timeout")
        .args(["-k", "2", "40", "python3", "-c", CLIENT])
        .arg(plan.to_string())
        .output()
        .expect("python3 with paho-mqtt (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "paho client failed ({e}):\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn write_acl(dir: &Path, text: &str) -> String {
    let p = dir.join("acl.conf");
    std::fs::write(&p, text).expect("write acl.conf");
    p.display().to_string()
}

fn with_acl(path: &str, more: &str) -> String {
    format!("authorization {{\n  sources = [{{type = file, enable = true, path = \"{path}\"}}]\n{more}\n}}\n")
}

const RULES: &str = r#"
%% who may read what
{allow, {clientid, "reader"}, subscribe, ["private/#"]}.
{deny, all, subscribe, ["private/#"]}.
{deny, all, publish, ["secret/#"]}.
{allow, all, all, ["users/${username}/#"]}.
{deny, all, all, ["users/#"]}.
{deny, {ipaddr, "127.0.0.3"}, publish, ["t/#"]}.
{allow, all}.
"#;

/// A node whose one authorization source is a file holding `rules`.
fn node_with(rules: &str) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = write_acl(dir.path(), rules);
    let n = Node::start_with(Opts {
        extra: with_acl(&acl, ""),
        ..Default::default()
    });
    (dir, n)
}

#[test]
fn acl_rules_decide_publish_and_subscribe() {
    let (_dir, n) = node_with(RULES);
    let port = n.mqtt_port;
    // Subscriptions: refused with 0x87 on v5 and 0x80 on v3.1.1.
    let v5 = paho(json!({"port": port, "cid": "other", "subs": ["private/x", "open/#"]}));
    assert_eq!(v5["suback"], json!([[0x87], [1]]), "{v5}");
    let v3 = paho(json!({"port": port, "cid": "other3", "v5": false, "subs": ["private/x"]}));
    assert_eq!(v3["suback"], json!([[0x80]]), "{v3}");
    let reader = paho(json!({"port": port, "cid": "reader", "subs": ["private/#"]}));
    assert_eq!(reader["suback"], json!([[1]]), "{reader}");
    // Placeholders: a user's own subtree only.
    let alice = paho(json!({
        "port": port, "cid": "a1", "user": "alice",
        "subs": ["users/alice/#", "users/bob/#"],
    }));
    assert_eq!(alice["suback"], json!([[1], [0x87]]), "{alice}");

    // Publishing: a subscriber on everything sees only what is allowed.
    let watcher = std::thread::spawn(move || {
        paho(json!({"port": port, "cid": "watch", "subs": ["#"], "wait": 4}))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let p5 = paho(json!({"port": port, "cid": "pub5", "pubs": [
        {"topic": "secret/a", "payload": "no"},
        {"topic": "open/a", "payload": "yes"},
    ]}));
    assert_eq!(p5["pubacks"], json!([0x87, 0]), "{p5}");
    // v3.1.1 has no refusal code: acknowledged, not published.
    let p3 = paho(json!({"port": port, "cid": "pub3", "v5": false, "pubs": [
        {"topic": "secret/b", "payload": "no"},
        {"topic": "open/b", "payload": "yes"},
    ]}));
    assert_eq!(p3["pubacks"], json!([0, 0]), "{p3}");
    // By source address: 127.0.0.3 may not publish under t/.
    let far = paho(
        json!({"port": port, "cid": "far", "bind": "127.0.0.3", "pubs": [
            {"topic": "t/x", "payload": "no"},
        ]}),
    );
    assert_eq!(far["pubacks"], json!([0x87]), "{far}");
    let near = paho(json!({"port": port, "cid": "near", "pubs": [
        {"topic": "t/x", "payload": "yes"},
    ]}));
    assert_eq!(near["pubacks"], json!([0]), "{near}");
    let w = watcher.join().expect("watcher");
    let topics: Vec<&str> = w["msgs"]
        .as_array()
        .expect("msgs")
        .iter()
        .filter_map(|m| m[0].as_str())
        .collect();
    assert_eq!(topics, ["open/a", "open/b", "t/x"], "{w}\n{}", n.log());
}

#[test]
fn the_shipped_rules_keep_sys_and_everything_from_other_hosts() {
    // No authorization settings: EMQX's default, etc/acl.conf.
    let n = Node::start();
    let port = n.mqtt_port;
    let remote = paho(json!({
        "port": port, "cid": "remote", "bind": "127.0.0.2",
        "subs": ["$SYS/#", "#", "+/#", "a/#"],
    }));
    assert_eq!(
        remote["suback"],
        json!([[0x87], [0x87], [0x87], [1]]),
        "{remote}"
    );
    let local = paho(json!({"port": port, "cid": "local", "subs": ["$SYS/#", "#"]}));
    assert_eq!(local["suback"], json!([[1], [1]]), "{local}");
}

#[test]
fn wills_and_retained_messages_are_checked_too() {
    let (_dir, n) = node_with(RULES);
    let port = n.mqtt_port;
    // Retained messages under a subtree the subscriber may not read.
    let r = paho(json!({"port": port, "cid": "reader", "pubs": [
        {"topic": "private/r", "payload": "hidden", "retain": true},
        {"topic": "public/r", "payload": "shown", "retain": true},
    ]}));
    assert_eq!(r["pubacks"], json!([0x10, 0x10]), "{r}");
    let s = paho(json!({"port": port, "cid": "late", "subs": ["+/r"], "wait": 1}));
    assert_eq!(s["suback"], json!([[1]]), "{s}");
    assert_eq!(s["msgs"], json!([["public/r", "shown", true]]), "{s}");
    let rd = paho(json!({"port": port, "cid": "reader", "subs": ["private/#"], "wait": 1}));
    assert_eq!(rd["msgs"], json!([["private/r", "hidden", true]]), "{rd}");

    // Wills: sent only where the client may publish.
    let watcher = std::thread::spawn(move || {
        paho(json!({"port": port, "cid": "watch", "subs": ["secret/#", "wills/#"], "wait": 5}))
    });
    std::thread::sleep(Duration::from_millis(1500));
    for (cid, topic) in [("w1", "secret/w"), ("w2", "wills/w")] {
        paho(json!({
            "port": port, "cid": cid, "abrupt": true,
            "will": {"topic": topic, "payload": format!("gone {cid}")},
        }));
    }
    let w = watcher.join().expect("watcher");
    assert_eq!(w["msgs"], json!([["wills/w", "gone w2", false]]), "{w}");
}

#[test]
fn deny_action_disconnect_and_reloading_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = write_acl(
        dir.path(),
        "{deny, all, publish, [\"t/deny\"]}.\n{allow, all}.\n",
    );
    let n = Node::start_with(Opts {
        extra: with_acl(&acl, "  deny_action = disconnect"),
        ..Default::default()
    });
    let port = n.mqtt_port;
    let p = paho(json!({"port": port, "cid": "d1", "pubs": [
        {"topic": "t/deny", "payload": "x"},
    ], "wait": 1}));
    assert_eq!(p["disconnect"], json!(0x87), "{p}");

    // A file that does not parse: the reload says where, the rules stay.
    std::fs::write(&acl, "{allow, all}.\n{deny, all, publish, [\"t/deny\"]\n").expect("write");
    let (code, out) = n.ctl(&["acl", "reload"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("acl.conf: line 3, column 1") && out.contains("rules in force are kept"),
        "{out}"
    );
    let p = paho(json!({"port": port, "cid": "d2", "pubs": [
        {"topic": "t/deny", "payload": "x"},
    ], "wait": 1}));
    assert_eq!(p["disconnect"], json!(0x87), "{p}");

    // A good file: in force at once, for connected clients as well.
    std::fs::write(&acl, "{allow, all}.\n").expect("write");
    let (code, out) = n.ctl(&["acl", "reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 rules loaded"), "{out}");
    let p = paho(json!({"port": port, "cid": "d3", "pubs": [
        {"topic": "t/deny", "payload": "x"},
    ], "wait": 1}));
    assert_eq!(
        (&p["pubacks"], &p["disconnect"]),
        (&json!([0x10]), &json!(0)),
        "{p}"
    );
}

#[test]
fn a_broken_acl_file_stops_the_node_naming_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = write_acl(
        dir.path(),
        "{allow, all, publish, [\"a\"]}.\n{allow, {ipaddr, \"300.1.1.1\"}, all, all}.\n",
    );
    let n = Node::prepare(&with_acl(&acl, ""));
    let o = n.cli(&["check_config"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("authorization.sources.1.path")
            && err.contains(&acl)
            && err.contains("line 2, column 18")
            && err.contains("not an IP address"),
        "{err}"
    );
    let (status, err) = n
        .foreground_exit(&[], Duration::from_secs(20))
        .expect("the node must refuse to start");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("line 2, column 18"), "{err}");
    // A path that does not exist, given explicitly.
    let missing = dir.path().join("nope.conf");
    let n = Node::prepare(&with_acl(&missing.display().to_string(), ""));
    let o = n.cli(&["check_config"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot read") && err.contains("nope.conf"),
        "{err}"
    );
}

#[test]
fn rules_hold_for_publishes_and_retained_messages_from_another_node() {
    use common::cluster::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = write_acl(dir.path(), RULES);
    let nodes = cluster_with(&[1, 2], &with_acl(&acl, ""));
    let (p1, p2) = (nodes[0].mqtt_port, nodes[1].mqtt_port);
    let (h1, h2) = (nodes[0].host.clone(), nodes[1].host.clone());
    assert_eq!((h1.as_str(), h2.as_str()), ("127.0.0.1", "127.0.0.2"));
    // A subscriber on node 2; the publisher on node 1, whose rules refuse
    // secret/# before anything is forwarded.
    let watcher = std::thread::spawn(move || {
        paho(
            json!({"port": p2, "cid": "watch2", "subs": ["secret/#", "open/#"], "wait": 4,
                    "host": "127.0.0.2"}),
        )
    });
    wait_route(
        &nodes[0],
        "open/#",
        &nodes[1],
        true,
        Duration::from_secs(10),
    );
    let r = paho(json!({"port": p1, "cid": "pub1", "pubs": [
        {"topic": "secret/x", "payload": "no"},
        {"topic": "open/x", "payload": "yes"},
    ]}));
    assert_eq!(r["pubacks"], json!([0x87, 0]), "{r}");
    let w = watcher.join().expect("watcher");
    assert_eq!(w["suback"], json!([[1], [1]]), "{w}");
    assert_eq!(w["msgs"], json!([["open/x", "yes", false]]), "{w}");
    // Retained messages set on node 1 reach a subscriber on node 2 only
    // where node 2's rules let it read.
    let r = paho(json!({"port": p1, "cid": "reader", "pubs": [
        {"topic": "private/r", "payload": "hidden", "retain": true},
        {"topic": "public/r", "payload": "shown", "retain": true},
    ]}));
    assert_eq!(r["pubacks"], json!([0x10, 0x10]), "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = paho(
            json!({"port": p2, "cid": "late2", "subs": ["+/r"], "wait": 1,
                            "host": "127.0.0.2"}),
        );
        if s["msgs"] == json!([["public/r", "shown", true]]) {
            break;
        }
        assert!(
            s["msgs"].as_array().is_some_and(|m| m.len() <= 1)
                && std::time::Instant::now() < deadline,
            "{s}"
        );
    }
    let rd = paho(
        json!({"port": p2, "cid": "reader", "subs": ["private/#"], "wait": 1,
                         "host": "127.0.0.2"}),
    );
    assert_eq!(rd["msgs"], json!([["private/r", "hidden", true]]), "{rd}");
}

/// A raw MQTT 5 connection (client id only) for checks that span a rule
/// change: PUBLISH at QoS 1, the PUBACK's reason code back.
struct V5(common::Raw, u16);

impl V5 {
    fn connect(n: &Node, cid: &str) -> V5 {
        let mut r = common::Raw::connect(n);
        r.send(&common::connect_v5(cid, 60));
        let head = r.read_n(2);
        assert!(head[0] == 0x20 && head[1] < 128, "CONNACK {head:?}");
        let ack = r.read_n(head[1] as usize);
        assert_eq!(ack[1], 0, "CONNACK {ack:?}");
        V5(r, 0)
    }

    fn publish(&mut self, topic: &str) -> u8 {
        self.1 += 1;
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&self.1.to_be_bytes());
        body.push(0); // no properties
        body.extend_from_slice(b"x");
        self.0.send(&common::frame(0x32, &body));
        let head = self.0.read_n(2);
        assert_eq!(head[0], 0x40, "PUBACK expected: {head:?}");
        let rest = self.0.read_n(head[1] as usize);
        let code = rest.get(2).copied().unwrap_or(0);
        // No matching subscribers (0x10) is an allowed publish.
        if code == 0x10 {
            0
        } else {
            code
        }
    }
}

#[test]
fn built_in_database_rules_are_managed_with_ctl_and_hold_on_every_node() {
    use common::cluster::*;
    let conf = "authorization {\n  sources = [{type = built_in_database, max_rules = 3}]\n  no_match = allow\n}\n";
    let nodes = cluster_with(&[1, 2], conf);
    // A connected client's cached decision goes when the rules change.
    let mut held = V5::connect(&nodes[1], "held");
    assert_eq!(held.publish("open/1"), 0);
    let add = |n: &Node, args: &[&str]| {
        let mut a = vec!["acl", "rules", "add"];
        a.extend_from_slice(args);
        let (code, out) = n.ctl(&a);
        assert_eq!(code, 0, "{args:?}: {out}");
    };
    add(&nodes[0], &["all", "deny", "publish", "secret/#"]);
    add(
        &nodes[0],
        &["clientid", "held", "deny", "publish", "open/#"],
    );
    let wait = |f: &mut dyn FnMut() -> bool| {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "rules did not arrive");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(&mut || held.publish("open/1") == 0x87);
    assert_eq!(held.publish("secret/1"), 0x87);
    assert_eq!(held.publish("other"), 0);
    // Username rules come before the rules for all (paho, user u1).
    add(
        &nodes[1],
        &["username", "u1", "allow", "publish", "secret/${username}"],
    );
    wait(&mut || {
        let r = paho(
            json!({"port": nodes[0].mqtt_port, "cid": "p1", "user": "u1", "pubs": [
            {"topic": "secret/u1", "payload": "a"}, {"topic": "secret/u2", "payload": "b"}]}),
        );
        r["pubacks"] == json!([0x10, 0x87])
    });
    // Subscriptions too, with `eq` for the literal filter.
    add(&nodes[0], &["all", "deny", "subscribe", "eq #"]);
    wait(&mut || {
        let s = paho(
            json!({"port": nodes[1].mqtt_port, "cid": "s1", "host": "127.0.0.2",
                            "subs": ["#", "a/#"]}),
        );
        s["suback"] == json!([[0x87], [1]])
    });
    let (_, list) = nodes[1].ctl(&["acl", "rules", "list"]);
    assert_eq!(
        list,
        "clientid held: deny publish \"open/#\"\n\
         username u1: allow publish \"secret/${username}\"\n\
         all: deny publish \"secret/#\"\n\
         all: deny subscribe \"eq #\"\n"
    );
    // max_rules per owner, bad input, deleting.
    add(
        &nodes[0],
        &["all", "allow", "all", "x", "qos=1,2", "retain=false"],
    );
    let (code, out) = nodes[0].ctl(&["acl", "rules", "add", "all", "allow", "all", "y"]);
    assert!(code == 1 && out.contains("max_rules is 3"), "{out}");
    let (code, out) = nodes[0].ctl(&["acl", "rules", "add", "all", "perhaps", "all", "y"]);
    assert!(code == 1 && out.contains("allow or deny"), "{out}");
    assert_eq!(
        nodes[0].ctl(&["acl", "rules", "del", "clientid", "held"]).0,
        0
    );
    wait(&mut || held.publish("open/1") == 0);
    let (code, _) = nodes[0].ctl(&["acl", "rules", "del", "clientid", "held"]);
    assert_eq!(code, 1);
}
