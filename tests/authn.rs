//! Authentication against the built-in database, checked from the
//! outside. Password hashes are made by Python (`hashlib`, and the
//! `bcrypt` package scripts/test.sh installs), never by the broker; paho
//! reports v5 CONNACK reason codes, raw 3.1.1 CONNECTs show the v3 return
//! codes, and mosquitto_pub and rumqttc connect as users do.

mod common;

use common::{frame, Node, Opts, Raw};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Writes a `bootstrap_type = hash` CSV with Python's own hashing: each
/// user `[id, password, superuser]` hashed as EMQX stores it for `algo`.
const MAKE_CSV: &str = r#"
import csv, hashlib, json, os, sys
plan = json.loads(sys.argv[1])
a = plan["algo"]
rows = []
for uid, pw, su in plan["users"]:
    pw = pw.encode()
    salt = os.urandom(8).hex()
    name = a["name"]
    if name == "bcrypt":
        import bcrypt
        h = bcrypt.hashpw(pw, bcrypt.gensalt(rounds=a["salt_rounds"])).decode()
        salt = h[:29]
    elif name == "pbkdf2":
        h = hashlib.pbkdf2_hmac(a["mac_fun"], pw, salt.encode(), a["iterations"],
                                a.get("dk_length")).hex()
    else:
        pos = a.get("salt_position", "prefix")
        if pos == "disable":
            salt, data = "", pw
        elif pos == "prefix":
            data = salt.encode() + pw
        else:
            data = pw + salt.encode()
        h = data.decode() if name == "plain" else hashlib.new(
            {"sha": "sha1"}.get(name, name), data).hexdigest()
    rows.append([uid, h, salt, "true" if su else "false"])
with open(plan["path"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user_id", "password_hash", "salt", "is_superuser"])
    w.writerows(rows)
"#;

/// Connects with paho (v5 unless `v5 = false`) and prints the CONNACK's
/// reason code.
const CONNECT: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
plan = json.loads(sys.argv[1])
done = threading.Event()
out = {}
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=plan["cid"], protocol=mqtt.MQTTv5)
if plan.get("user") is not None:
    c.username_pw_set(plan["user"], plan.get("pw"))
def on_connect(cl, ud, flags, rc, props):
    out["rc"] = rc.value
    done.set()
c.on_connect = on_connect
c.connect(plan.get("host", "127.0.0.1"), plan["port"], 30)
c.loop_start()
done.wait(20)
c.disconnect()
c.loop_stop()
print(json.dumps(out))
"#;

fn python(script: &str, arg: &Value) -> String {
    let o = Command::new("timeout")
        .args(["-k", "2", "60", "python3", "-c", script])
        .arg(arg.to_string())
        .output()
        .expect("python3 (scripts/test.sh installs paho-mqtt and bcrypt)");
    assert!(
        o.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The v5 CONNACK reason code for these credentials.
fn v5_code(n: &Node, cid: &str, user: Option<&str>, pw: Option<&str>) -> i64 {
    let out = python(
        CONNECT,
        &json!({"host": n.host, "port": n.mqtt_port, "cid": cid, "user": user, "pw": pw}),
    );
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("paho output {out:?}: {e}"));
    v["rc"]
        .as_i64()
        .unwrap_or_else(|| panic!("no CONNACK: {out}\n{}", n.log()))
}

/// The 3.1.1 CONNACK return code, from a raw CONNECT.
fn v3_code(n: &Node, cid: &str, user: Option<&str>, pw: Option<&str>) -> u8 {
    raw_code(n, 4, cid, user, pw)
}

/// The CONNACK code of a raw CONNECT at protocol `level` (4 or 5): the
/// return code of 3.1.1, the reason code of 5.0. Cheap enough to poll with.
fn raw_code(n: &Node, level: u8, cid: &str, user: Option<&str>, pw: Option<&str>) -> u8 {
    let mut flags = 0x02;
    let mut payload = Vec::new();
    let mut field = |b: &[u8]| {
        payload.extend_from_slice(&(b.len() as u16).to_be_bytes());
        payload.extend_from_slice(b);
    };
    field(cid.as_bytes());
    if let Some(u) = user {
        flags |= 0x80;
        field(u.as_bytes());
    }
    if let Some(p) = pw {
        flags |= 0x40;
        field(p.as_bytes());
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&payload);
    let mut r = Raw::connect(n);
    r.send(&frame(0x10, &body));
    let ack = r.read_n(4);
    assert_eq!(ack[0], 0x20, "CONNACK expected: {ack:?}");
    ack[3]
}

fn node_with_chain(authn: &str, more: &str) -> Node {
    Node::start_with(Opts {
        extra: format!("authentication = [{authn}]\n{more}"),
        ..Default::default()
    })
}

fn db(extra: &str) -> String {
    format!("{{mechanism = password_based, backend = built_in_database{extra}}}")
}

fn csv_for(dir: &Path, algo: &Value, users: &Value) -> String {
    let path = dir.join("users.csv");
    python(
        MAKE_CSV,
        &json!({"path": path.display().to_string(), "algo": algo, "users": users}),
    );
    path.display().to_string()
}

#[test]
fn hashes_made_by_python_authenticate_for_every_algorithm() {
    let algos = [
        (
            json!({"name": "plain", "salt_position": "disable"}),
            "{name = plain, salt_position = disable}",
        ),
        (
            json!({"name": "md5", "salt_position": "suffix"}),
            "{name = md5, salt_position = suffix}",
        ),
        (
            json!({"name": "sha", "salt_position": "prefix"}),
            "{name = sha, salt_position = prefix}",
        ),
        (
            json!({"name": "sha256", "salt_position": "disable"}),
            "{name = sha256, salt_position = disable}",
        ),
        (
            json!({"name": "sha512", "salt_position": "suffix"}),
            "{name = sha512, salt_position = suffix}",
        ),
        (
            json!({"name": "bcrypt", "salt_rounds": 5}),
            "{name = bcrypt, salt_rounds = 5}",
        ),
        (
            json!({"name": "pbkdf2", "mac_fun": "sha256", "iterations": 1000, "dk_length": 32}),
            "{name = pbkdf2, mac_fun = sha256, iterations = 1000, dk_length = 32}",
        ),
        (
            json!({"name": "pbkdf2", "mac_fun": "sha1", "iterations": 10}),
            "{name = pbkdf2, mac_fun = sha, iterations = 10}",
        ),
    ];
    for (py, conf) in algos {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = csv_for(
            dir.path(),
            &py,
            &json!([["alice", "right-pw", false], ["root", "root-pw", true]]),
        );
        let n = node_with_chain(
            &db(&format!(
                ", password_hash_algorithm = {conf}, bootstrap_file = \"{csv}\", bootstrap_type = hash"
            )),
            "",
        );
        assert_eq!(
            v5_code(&n, "c1", Some("alice"), Some("right-pw")),
            0,
            "{conf}"
        );
        assert_eq!(
            v5_code(&n, "c2", Some("root"), Some("root-pw")),
            0,
            "{conf}"
        );
        assert_eq!(
            v5_code(&n, "c3", Some("alice"), Some("wrong")),
            0x86,
            "{conf}"
        );
        assert_eq!(
            v3_code(&n, "c4", Some("alice"), Some("right-pw")),
            0,
            "{conf}"
        );
        assert_eq!(
            v3_code(&n, "c5", Some("alice"), Some("Right-pw")),
            4,
            "{conf}"
        );
        // Nobody claims an unknown user or an anonymous client.
        assert_eq!(
            v5_code(&n, "c6", Some("mallory"), Some("x")),
            0x87,
            "{conf}"
        );
        assert_eq!(v5_code(&n, "c7", None, None), 0x87, "{conf}");
        assert_eq!(v3_code(&n, "c8", None, None), 5, "{conf}");
        let log = n.log();
        assert!(
            !log.contains("right-pw") && !log.contains("wrong"),
            "{conf}: a password in the log"
        );
    }
}

#[test]
fn users_managed_with_ctl_take_effect_at_once() {
    let n = node_with_chain(
        &db(""),
        r#"
listeners.ws.default.enable = false
authorization {
  sources = []
  no_match = deny
}
"#,
    );
    assert_eq!(n.ctl(&["users", "list"]), (0, String::new()));
    assert_eq!(n.ctl(&["users", "add", "dev", "s3cret"]).0, 0);
    assert_eq!(n.ctl(&["users", "add", "admin", "adm", "--superuser"]).0, 0);
    let (code, out) = n.ctl(&["users", "add", "dev", "again"]);
    assert!(code != 0 && out.contains("already exists"), "{out}");
    let (_, list) = n.ctl(&["users", "list"]);
    assert_eq!(
        list,
        "admin (is_superuser=true, hash=sha256)\ndev (is_superuser=false, hash=sha256)\n"
    );
    assert_eq!(v5_code(&n, "d1", Some("dev"), Some("s3cret")), 0);
    // A password from stdin (kept out of the process list).
    let mut child = Command::new(env!("CARGO_BIN_EXE_emqx-rs"))
        .args(["ctl", "-config"])
        .arg(&n.config)
        .args(["users", "passwd", "dev", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"n3w-pass\n")
        .expect("write");
    let out = child.wait_with_output().expect("ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(v5_code(&n, "d2", Some("dev"), Some("s3cret")), 0x86);
    assert_eq!(v5_code(&n, "d3", Some("dev"), Some("n3w-pass")), 0);
    // A 1 MB password (more than MQTT can carry) is refused, and the
    // node goes on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_emqx-rs"))
        .args(["ctl", "-config"])
        .arg(&n.config)
        .args(["users", "add", "huge", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctl");
    let big = vec![b'p'; 1 << 20];
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&big)
        .expect("write");
    let out = child.wait_with_output().expect("ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("password longer than 65535 bytes"),
        "{text}"
    );
    assert_eq!(v5_code(&n, "d4", Some("dev"), Some("n3w-pass")), 0);
    // A superuser is not bound by authorization (no_match = deny here).
    let sub = |user: &str, pw: &str| {
        Command::new("timeout")
            .args(["10", "mosquitto_sub", "-h", "127.0.0.1", "-p"])
            .arg(n.mqtt_port.to_string())
            .args([
                "-u", user, "-P", pw, "-t", "t/1", "-C", "1", "-W", "3", "-V", "mqttv5",
            ])
            .output()
            .expect("mosquitto_sub")
    };
    let denied = sub("dev", "n3w-pass");
    let allowed = Command::new("timeout")
        .args(["10", "mosquitto_pub", "-h", "127.0.0.1", "-p"])
        .arg(n.mqtt_port.to_string())
        .args([
            "-u", "admin", "-P", "adm", "-t", "t/1", "-m", "x", "-q", "1", "-V", "mqttv5",
        ])
        .output()
        .expect("mosquitto_pub");
    assert!(allowed.status.success(), "superuser publish: {allowed:?}");
    let err = String::from_utf8_lossy(&denied.stderr).to_string()
        + &String::from_utf8_lossy(&denied.stdout);
    assert!(
        err.contains("subscription requests were denied"),
        "an ordinary user's subscription is denied: {err}"
    );
    assert_eq!(n.ctl(&["users", "superuser", "dev", "true"]).0, 0);
    let ok = sub("dev", "n3w-pass");
    let text = String::from_utf8_lossy(&ok.stderr).to_string();
    assert!(!text.contains("denied"), "after superuser: {text}");
    assert_eq!(n.ctl(&["users", "del", "dev"]).0, 0);
    assert_eq!(v5_code(&n, "d4", Some("dev"), Some("n3w-pass")), 0x87);
    let (code, out) = n.ctl(&["users", "del", "dev"]);
    assert!(code != 0 && out.contains("not found"), "{out}");
    let (code, out) = n.ctl(&["users", "frobnicate"]);
    assert!(code != 0 && out.contains("users add"), "{out}");
}

#[test]
fn listeners_may_skip_authentication_or_refuse_anonymous_clients_first() {
    let n = node_with_chain(
        "",
        "listeners.tcp.default.enable_authn = quick_deny_anonymous\n",
    );
    // An empty chain allows everyone, except anonymous clients here.
    assert_eq!(v5_code(&n, "q1", Some("anyone"), Some("x")), 0);
    assert_eq!(v5_code(&n, "q2", None, None), 0x87);
    assert_eq!(v3_code(&n, "q3", None, None), 5);
    let n = node_with_chain(&db(""), "listeners.tcp.default.enable_authn = false\n");
    assert_eq!(v5_code(&n, "q4", None, None), 0);
    // rumqttc with a user that does not exist: allowed, no authentication.
    let mut o = rumqttc::MqttOptions::new("q5", "127.0.0.1", n.mqtt_port);
    o.set_credentials("ghost", "pw");
    let (_c, mut conn) = rumqttc::Client::new(o, 10);
    let ev = conn.recv_timeout(Duration::from_secs(5));
    assert!(
        matches!(ev, Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ref a))))
            if a.code == rumqttc::ConnectReturnCode::Success),
        "{ev:?}"
    );
}

#[test]
fn a_bootstrap_file_that_does_not_parse_stops_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, "user_id,password,is_superuser\nalice,pw,true\nbob,pw\n").expect("write");
    let n = Node::prepare(&format!(
        "authentication = [{}]\n",
        db(&format!(", bootstrap_file = \"{}\"", p.display()))
    ));
    let out = n.cli(&["check_config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("authentication.1.bootstrap_file")
            && err.contains("bad.csv")
            && err.contains("line 3"),
        "{err}"
    );
    let n = Node::prepare(&format!(
        "authentication = [{}]\n",
        db(", password_hash_algorithm {name = argon2}")
    ));
    let out = n.cli(&["check_config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(0) && err.contains("unknown password hash algorithm"),
        "{err}"
    );
}

#[test]
fn users_are_kept_across_a_restart() {
    let mut n = node_with_chain(&db(""), "");
    assert_eq!(n.ctl(&["users", "add", "keep", "pw"]).0, 0);
    n.kill();
    n.spawn(&[]);
    let t = Instant::now();
    assert_eq!(
        v5_code(&n, "r1", Some("keep"), Some("pw")),
        0,
        "after {:?}",
        t.elapsed()
    );
}

/// The v5 code once it is `want` (polling every 100 ms for `within`), and
/// how long that took.
fn wait_code(n: &Node, user: &str, pw: &str, want: i64, within: Duration) -> Duration {
    let t = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        // Raw CONNECTs: a paho process per poll takes longer to start
        // than replication takes under a loaded CI machine.
        let got = raw_code(n, 5, &format!("w{i}"), Some(user), Some(pw)) as i64;
        if got == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "{}: {user} still gets {got:#x}, not {want:#x}, after {within:?}\n{}",
            n.name,
            common::cluster::tails(&[n])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn users_are_replicated_to_every_node_and_to_nodes_that_join_or_come_back() {
    use common::cluster::*;
    let chain = format!("authentication = [{}]\n", db(""));
    let mut nodes = cluster_with(&[1, 2], &chain);
    assert_eq!(nodes[0].ctl(&["users", "add", "u1", "pw1"]).0, 0);
    // Effective on the other node within a second (measured from ctl's
    // return; each poll is a whole paho connect).
    let took = wait_code(&nodes[1], "u1", "pw1", 0, Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "replicated in {took:?}");
    // paho, an independent client, agrees.
    assert_eq!(v5_code(&nodes[1], "p1", Some("u1"), Some("pw1")), 0);
    // A node that joins later gets the users.
    let n3 = node_with(3, &chain);
    join(&n3, &nodes[0]);
    wait_code(&n3, "u1", "pw1", 0, Duration::from_secs(5));
    // A change on the newcomer reaches the others.
    assert_eq!(n3.ctl(&["users", "passwd", "u1", "pw2"]).0, 0);
    wait_code(&nodes[0], "u1", "pw2", 0, Duration::from_secs(5));
    wait_code(&nodes[1], "u1", "pw1", 0x86, Duration::from_secs(5));
    // A member that was down catches up when it comes back.
    nodes[1].kill();
    assert_eq!(nodes[0].ctl(&["users", "add", "u2", "pw"]).0, 0);
    assert_eq!(nodes[0].ctl(&["users", "del", "u1"]).0, 0);
    nodes[1].spawn(&[]);
    wait_code(&nodes[1], "u2", "pw", 0, Duration::from_secs(20));
    wait_code(&nodes[1], "u1", "pw2", 0x87, Duration::from_secs(5));
    let (_, l1) = nodes[1].ctl(&["users", "list"]);
    let (_, l3) = n3.ctl(&["users", "list"]);
    assert_eq!(l1, "u2 (is_superuser=false, hash=sha256)\n");
    assert_eq!(l1, l3);
    // A ban made on one node refuses the client on the others, before its
    // (right) password is looked at.
    assert_eq!(
        n3.ctl(&["banned", "add", "username", "u2", "1h", "too", "chatty"])
            .0,
        0
    );
    wait_code(&nodes[0], "u2", "pw", 0x8A, Duration::from_secs(5));
    wait_code(&nodes[1], "u2", "pw", 0x8A, Duration::from_secs(5));
    assert_eq!(v3_code(&nodes[1], "b3", Some("u2"), Some("pw")), 5);
    let (_, list) = nodes[0].ctl(&["banned", "list"]);
    assert!(
        list.starts_with("username u2 (reason=\"too chatty\", by=ctl, at=")
            && list.lines().count() == 1,
        "{list}"
    );
    assert_eq!(nodes[1].ctl(&["banned", "del", "username", "u2"]).0, 0);
    wait_code(&nodes[0], "u2", "pw", 0, Duration::from_secs(5));
}

#[test]
fn bans_by_client_id_and_address_hold_until_they_expire() {
    let n = Node::start();
    assert_eq!(n.ctl(&["banned", "add", "clientid", "bad-one"]).0, 0);
    assert_eq!(v5_code(&n, "bad-one", None, None), 0x8A);
    assert_eq!(v3_code(&n, "bad-one", None, None), 5);
    assert_eq!(v5_code(&n, "good-one", None, None), 0);
    assert_eq!(
        n.ctl(&["banned", "add", "peerhost", "127.0.0.0/8", "2s"]).0,
        0
    );
    assert_eq!(v5_code(&n, "good-one", None, None), 0x8A);
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(v5_code(&n, "good-one", None, None), 0);
    let (_, list) = n.ctl(&["banned", "list"]);
    assert!(
        list.starts_with("clientid bad-one")
            && list.contains("until=infinity")
            && list.lines().count() == 1,
        "{list}"
    );
    for (args, want) in [
        (
            &["banned", "add", "peerhost", "10.0.0.0/40"][..],
            "not an address",
        ),
        (&["banned", "add", "ip", "x"][..], "unknown ban type"),
        (
            &["banned", "add", "clientid", "x", "soon"][..],
            "bad duration",
        ),
        (
            &["banned", "del", "clientid", "nobody"][..],
            "no ban of clientid",
        ),
    ] {
        let (code, out) = n.ctl(args);
        assert!(code == 1 && out.contains(want), "{args:?}: {out}");
    }
}

#[test]
fn a_client_that_flaps_is_banned_for_ban_time() {
    let n = Node::start_with(Opts {
        extra:
            "flapping_detect { enable = true, max_count = 3, window_time = 30s, ban_time = 2s }\n"
                .into(),
        ..Default::default()
    });
    // Three connections of one client id that end within the window.
    for _ in 0..3 {
        assert_eq!(v5_code(&n, "flappy", None, None), 0);
    }
    // The disconnect is counted once the session has seen it.
    let t = Instant::now();
    loop {
        let got = raw_code(&n, 5, "flappy", None, None);
        if got == 0x8A {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not banned: {got:#x}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(v3_code(&n, "flappy", None, None), 5);
    assert_eq!(v5_code(&n, "steady", None, None), 0);
    let (_, list) = n.ctl(&["banned", "list"]);
    assert!(
        list.starts_with("clientid flappy (reason=\"flapping is detected\", by=flapping_detect"),
        "{list}"
    );
    assert!(n.log().contains("flapping detected"), "{}", n.log());
    // The ban runs out.
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(v5_code(&n, "flappy", None, None), 0);
}

#[test]
fn rumqttc_sees_the_right_and_wrong_password_answers() {
    let n = node_with_chain(&db(""), "");
    assert_eq!(n.ctl(&["users", "add", "alice", "s3cret"]).0, 0);
    let first = |cid: &str, creds: Option<(&str, &str)>| {
        let mut o = rumqttc::MqttOptions::new(cid, "127.0.0.1", n.mqtt_port);
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let (_c, mut conn) = rumqttc::Client::new(o, 10);
        format!("{:?}", conn.recv_timeout(Duration::from_secs(5)))
    };
    let ok = first("r1", Some(("alice", "s3cret")));
    assert!(ok.contains("ConnAck") && ok.contains("Success"), "{ok}");
    let bad = first("r2", Some(("alice", "wrong")));
    assert!(
        bad.contains("ConnectionRefused(BadUserNamePassword)"),
        "{bad}"
    );
    let anon = first("r3", None);
    assert!(anon.contains("ConnectionRefused(NotAuthorized)"), "{anon}");
}

#[test]
fn bans_by_regular_expression_find_client_ids_and_usernames() {
    let n = Node::start();
    assert_eq!(
        n.ctl(&["banned", "add", "clientid_re", "^bot-[0-9]+$"]).0,
        0
    );
    assert_eq!(n.ctl(&["banned", "add", "username_re", "spam"]).0, 0);
    assert_eq!(v5_code(&n, "bot-42", None, None), 0x8A);
    assert_eq!(v3_code(&n, "bot-43", None, None), 5);
    assert_eq!(v5_code(&n, "bot-x", None, None), 0);
    assert_eq!(v5_code(&n, "c1", Some("a-spammer"), Some("pw")), 0x8A);
    assert_eq!(v5_code(&n, "c2", Some("alice"), Some("pw")), 0);
    let (code, out) = n.ctl(&["banned", "add", "clientid_re", "(unclosed"]);
    assert!(
        code == 1 && out.contains("not a regular expression"),
        "{out}"
    );
    assert_eq!(n.ctl(&["banned", "del", "username_re", "spam"]).0, 0);
    assert_eq!(v5_code(&n, "c1", Some("a-spammer"), Some("pw")), 0);
}
