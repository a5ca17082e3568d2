//! MQTT over QUIC, checked with an independent QUIC stack: Python's
//! aioquic (installed by scripts/test.sh) carrying MQTT packets written by
//! hand, beside mosquitto clients on the TCP listener.

mod common;

use common::pki;
use common::{free_port, Node, Opts};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// An aioquic client: connects (ALPN and CA as given), sends a CONNECT for
/// `cid`, prints the CONNACK, subscribes to `q/#` when asked, publishes
/// `q/from-quic`, and prints every PUBLISH payload it gets until `want`
/// have come in. Any failure is printed as `ERROR <type>`.
const CLIENT: &str = r#"
import asyncio, json, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
a = json.loads(sys.argv[1])
def pkt(t, body):
    n, enc = len(body), b""
    while True:
        b, n = n % 128, n // 128
        enc += bytes([b | (0x80 if n else 0)])
        if not n: break
    return bytes([t]) + enc + body
def s(x): return len(x).to_bytes(2, "big") + x
async def read_packet(r):
    h = await r.readexactly(1)
    mult, n = 1, 0
    while True:
        b = (await r.readexactly(1))[0]
        n += (b & 127) * mult; mult *= 128
        if b < 128: break
    return h[0], await r.readexactly(n)
async def main():
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[a["alpn"]], server_name="localhost")
    cfg.load_verify_locations(a["ca"])
    if a.get("cert"):
        cfg.load_cert_chain(a["cert"], a["key"])
    async with connect("127.0.0.1", a["port"], configuration=cfg, wait_connected=True) as c:
        r, w = await c.create_stream()
        w.write(pkt(0x10, s(b"MQTT") + b"\x04\x02\x00\x3c" + s(a["cid"].encode())))
        t, body = await read_packet(r)
        print("CONNACK", body.hex(), flush=True)
        if a.get("sub"):
            w.write(pkt(0x82, b"\x00\x01" + s(b"q/#") + b"\x01"))
            t, body = await read_packet(r)
            print("SUBACK", body.hex(), flush=True)
        w.write(pkt(0x30, s(b"q/from-quic") + b"hello-from-quic"))
        got = 0
        while got < a.get("want", 0):
            t, body = await read_packet(r)
            if t >> 4 == 3:
                tl = int.from_bytes(body[:2], "big")
                qos = (t >> 1) & 3
                off = 2 + tl + (2 if qos else 0)
                if qos == 1:
                    w.write(pkt(0x40, body[2 + tl:4 + tl]))
                print("PUBLISH", body[2:2 + tl].decode(), body[off:].decode(), flush=True)
                got += 1
        await asyncio.sleep(float(a.get("hold", 0)))
try:
    asyncio.run(asyncio.wait_for(main(), float(a.get("timeout", 15))))
except Exception as e:
    print("ERROR", type(e).__name__, e, flush=True)
"#;

fn quic_client(args: serde_json::Value) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(args.to_string())
        .output()
        .expect("python3 with aioquic (scripts/test.sh installs it)");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("ModuleNotFoundError"),
        "aioquic is not installed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn listener(port: u16, ssl: &str) -> String {
    format!(
        "listeners.quic.default {{\n  bind = \"127.0.0.1:{port}\"\n  ssl_options {{ {ssl} }}\n}}\n"
    )
}

fn server_files(dir: &Path) -> (pki::Issued, pki::Issued) {
    let ca = pki::make_ca(dir, "quic");
    let srv = pki::issue(
        dir,
        &ca,
        "server",
        "localhost",
        &format!(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n{}",
            pki::SERVER_EXT.replace("subjectAltName=IP:127.0.0.1\n", "")
        ),
    );
    (ca, srv)
}

fn ssl_opts(srv: &pki::Issued) -> String {
    format!(
        "certfile = \"{}\", keyfile = \"{}\"",
        srv.cert.display(),
        srv.key.display()
    )
}

/// A node with a QUIC listener on a free port, its certificate issued
/// for localhost by a CA in `dir`; returns the node, the port and the
/// CA file.
fn quic_node(dir: &Path) -> (Node, u16, String) {
    let (ca, srv) = server_files(dir);
    let port = free_port();
    let n = Node::start_with(Opts {
        extra: listener(port, &ssl_opts(&srv)),
        ..Default::default()
    });
    (n, port, ca.cert.display().to_string())
}

#[test]
fn quic_clients_publish_and_subscribe_beside_tcp_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, port, ca) = quic_node(dir.path());

    // A TCP subscriber sees what the QUIC client publishes.
    let tcp_sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &n.mqtt_port.to_string(),
            "-t",
            "q/from-quic",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let (subscribed, list) = common::cluster::poll_ctl(
        &n,
        &["subscriptions", "list"],
        Duration::from_secs(20),
        |o| o.contains("topic:q/from-quic"),
    );
    assert!(subscribed, "mosquitto_sub did not subscribe: {list}");

    // The QUIC subscriber gets what a TCP client publishes, once its
    // subscription is in.
    let out = std::thread::scope(|sc| {
        let node = &n;
        sc.spawn(move || {
            let (subscribed, list) = common::cluster::poll_ctl(
                node,
                &["subscriptions", "list"],
                Duration::from_secs(40),
                |o| o.contains("quic-1 -> topic:q/#"),
            );
            assert!(subscribed, "no QUIC subscription: {list}");
            for i in 0..3 {
                let st = Command::new("mosquitto_pub")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &node.mqtt_port.to_string(),
                        "-t",
                        "q/from-tcp",
                        "-q",
                        "1",
                        "-m",
                        &format!("tcp-{i}"),
                    ])
                    .status()
                    .expect("mosquitto_pub");
                assert!(st.success());
            }
        });
        quic_client(serde_json::json!({
            "port": port, "alpn": "mqtt", "ca": ca, "cid": "quic-1", "sub": true, "want": 4, "timeout": 45,
        }))
    });
    assert!(out.contains("CONNACK 0000"), "{out}\n{}", n.log());
    assert!(out.contains("SUBACK 000101"), "{out}");
    // Its own publish comes back (it subscribed to q/#), then the three from TCP.
    assert!(out.contains("PUBLISH q/from-quic hello-from-quic"), "{out}");
    for i in 0..3 {
        assert!(
            out.contains(&format!("PUBLISH q/from-tcp tcp-{i}")),
            "{out}"
        );
    }
    let o = tcp_sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello-from-quic");
}

#[test]
fn quic_refuses_other_alpn_and_untrusted_servers_and_can_be_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, srv) = server_files(dir.path());
    let other = pki::make_ca(dir.path(), "other");
    let port = free_port();
    let n = Node::start_with(Opts {
        extra: listener(port, &ssl_opts(&srv)),
        ..Default::default()
    });
    let ca = ca.cert.display().to_string();
    let base =
        serde_json::json!({"port": port, "alpn": "mqtt", "ca": ca, "cid": "q", "timeout": 5});
    let with = |k: &str, v: serde_json::Value| {
        let mut a = base.clone();
        a[k] = v;
        a
    };
    let out = quic_client(with("alpn", "h3".into()));
    assert!(out.starts_with("ERROR"), "another ALPN: {out}");
    let out = quic_client(with("ca", other.cert.display().to_string().into()));
    assert!(
        out.starts_with("ERROR"),
        "a client that does not trust the server: {out}"
    );

    // One client stays connected while the listener stops and starts.
    let held = {
        let a = with("hold", 12.into());
        let a = {
            let mut a = a;
            a["cid"] = "held".into();
            a["timeout"] = 25.into();
            a
        };
        std::thread::spawn(move || quic_client(a))
    };
    std::thread::sleep(Duration::from_secs(2));
    let (code, out) = n.ctl(&["listeners", "stop", "quic:default"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Stop quic:default listener successfully.\n")
    );
    let (code, out) = n.ctl(&["clients", "list"]);
    assert!(
        code == 0 && out.contains("Client(held,"),
        "the open connection stays: {out}"
    );
    let out = quic_client(with("cid", "refused".into()));
    assert!(
        out.starts_with("ERROR"),
        "a stopped QUIC listener refuses: {out}"
    );
    let (code, out) = n.ctl(&["listeners", "start", "quic:default"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Started quic:default listener successfully.\n")
    );
    let out = quic_client(with("cid", "again".into()));
    assert!(out.contains("CONNACK 0000"), "{out}");
    let out = held.join().expect("held client");
    assert!(
        out.contains("CONNACK 0000") && !out.contains("ERROR"),
        "{out}"
    );
}

#[test]
fn quic_with_client_certificates_takes_the_identity_from_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, srv) = server_files(dir.path());
    let client = pki::issue(dir.path(), &ca, "client", "quic-device-7", pki::CLIENT_EXT);
    let port = free_port();
    let cafile = ca.cert.display().to_string();
    let n = Node::start_with(Opts {
        extra: listener(
            port,
            &format!(
                "{}, cacertfile = \"{cafile}\", verify = verify_peer, fail_if_no_peer_cert = true",
                ssl_opts(&srv)
            ),
        ) + "mqtt.peer_cert_as_username = cn\n",
        ..Default::default()
    });
    let out = quic_client(serde_json::json!({
        "port": port, "alpn": "mqtt", "ca": cafile, "cid": "nocert", "timeout": 5,
    }));
    assert!(
        !out.contains("CONNACK"),
        "no certificate, no connection: {out}"
    );
    let args = serde_json::json!({
        "port": port, "alpn": "mqtt", "ca": cafile, "cid": "withcert", "hold": 5,
        "cert": client.cert.display().to_string(), "key": client.key.display().to_string(),
    });
    let held = std::thread::spawn(move || quic_client(args));
    let (seen, list) =
        common::cluster::poll_ctl(&n, &["clients", "list"], Duration::from_secs(4), |o| {
            o.contains("Client(withcert, username=quic-device-7,")
        });
    let out = held.join().expect("client");
    assert!(out.contains("CONNACK 0000"), "{out}\n{}", n.log());
    assert!(seen, "the certificate's CN is the username: {list}");
}

#[test]
fn quic_listener_settings_are_checked() {
    for (extra, expect) in [
        ("listeners.quic.default { bind = 14999 }\n", "listeners.quic.default.ssl_options.certfile"),
        (
            "listeners.quic.default { bind = 14999, proxy_protocol = true, ssl_options { certfile = c, keyfile = k } }\n",
            "QUIC carries no PROXY header",
        ),
        (
            "listeners.quic.default { bind = 14999, proxy_protocol_timeout = 1s, ssl_options { certfile = c, keyfile = k } }\n",
            "QUIC carries no PROXY header",
        ),
        (
            "listeners.quic.default { bind = 14999, websocket.mqtt_path = \"/x\" }\n",
            "unknown key 'listeners.quic.default.websocket'",
        ),
    ] {
        let n = Node::prepare(extra);
        let o = n.cli(&["check_config"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(expect), "{extra}: {err}");
    }
    // With real files: TLS settings QUIC cannot use.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, srv) = server_files(dir.path());
    for (more, expect) in [
        ("versions = [tlsv1.2]", "QUIC needs tlsv1.3"),
        ("ciphers = [TLS_AES_256_GCM_SHA384]", "not usable for QUIC"),
    ] {
        let n = Node::prepare(&listener(14999, &format!("{}, {more}", ssl_opts(&srv))));
        let o = n.cli(&["check_config"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{more}: {err}");
        assert!(err.contains(expect), "{more}: {err}");
    }
}

/// `emqx-rs bench --transport quic` (quinn) against the QUIC listener,
/// checking the broker's certificate: subscribers on QUIC get every QoS 1
/// message QUIC publishers send, once and in order.
#[test]
fn bench_clients_over_quic_count_every_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, port, ca) = quic_node(dir.path());
    let bench = |args: &[&str]| {
        let mut c = Command::new(common::BIN);
        c.args(["bench"])
            .args(args)
            .args(["--transport", "quic", "--cafile", &ca, "-h", "localhost"])
            .args(["-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let sub = bench(&[
        "sub",
        "-c",
        "2",
        "-t",
        "bq/t",
        "-q",
        "1",
        "--duration",
        "15",
    ])
    .spawn()
    .expect("bench sub");
    let (subscribed, list) = common::cluster::poll_ctl(
        &n,
        &["subscriptions", "list"],
        Duration::from_secs(20),
        |o| o.matches("topic:bq/t").count() == 2,
    );
    assert!(subscribed, "the QUIC subscribers did not subscribe: {list}");
    let p = bench(&[
        "pub", "-c", "3", "-t", "bq/t", "-q", "1", "-I", "10", "-L", "50",
    ])
    .output()
    .expect("bench pub");
    let text = |o: &std::process::Output| {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let summary = |o: &std::process::Output| -> serde_json::Value {
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("SUMMARY "))
            .unwrap_or_else(|| panic!("no SUMMARY: {}", text(o)))
            .to_string();
        serde_json::from_str(&line).expect("SUMMARY is JSON")
    };
    let ps = summary(&p);
    assert_eq!(
        (&ps["sent"], &ps["acked"], &ps["errors"]),
        (&150.into(), &150.into(), &0.into()),
        "{}",
        text(&p)
    );
    assert!(text(&p).contains("over quic"), "{}", text(&p));
    let s = sub.wait_with_output().expect("bench sub");
    let ss = summary(&s);
    assert_eq!(ss["received"], 300, "{}", text(&s));
    assert_eq!(
        (
            &ss["loss"],
            &ss["duplicates"],
            &ss["out_of_order"],
            &ss["errors"]
        ),
        (&0.into(), &0.into(), &0.into(), &0.into()),
        "{}",
        text(&s)
    );
}
