//! TLS between nodes: the control plane (`cluster.proto_dist = inet_tls`)
//! and the forwarding channel (`rpc.driver = ssl`), with certificates of a
//! cluster CA made by the openssl CLI. A capture taken with tcpdump shows
//! no clear-text payload between the nodes; nodes without TLS or with
//! another CA cannot join, and both sides say why.

mod common;

use common::cluster::{self, join, mq, status_line, tails, wait_status};
use common::pki::{self, Issued};
use common::Node;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n";

/// The TLS settings of both planes for one certificate.
fn tls_conf(ca: &Path, node: &Issued) -> String {
    let (ca, cert, key) = (ca.display(), node.cert.display(), node.key.display());
    format!(
        "cluster.proto_dist = inet_tls\n\
         cluster.ssl_options {{ certfile = \"{cert}\", keyfile = \"{key}\", cacertfile = \"{ca}\" }}\n\
         rpc {{ driver = ssl, certfile = \"{cert}\", keyfile = \"{key}\", cacertfile = \"{ca}\" }}\n"
    )
}

/// tcpdump on loopback into a file, stopped (and flushed) on drop.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(dir: &Path, tag: &str, ports: &[u16]) -> Capture {
        let file = dir.join(format!("{tag}.pcap"));
        let filter = ports
            .iter()
            .map(|p| format!("tcp port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg(&filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is not installed: run scripts/test.sh, which installs it");
        // tcpdump says "listening on lo" once it captures.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !file.exists() || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { child, file }
    }

    /// Stops the capture and returns its bytes.
    fn finish(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("read the capture")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_tls_cluster_forms_forwards_and_shows_no_clear_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::make_ca(dir.path(), "cluster");
    let cert = pki::issue(dir.path(), &ca, "node", "emqx cluster node", NODE_EXT);
    let conf = tls_conf(&ca.cert, &cert);
    let nodes = cluster::cluster_with(&[41, 42, 43], &conf);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for n in &nodes {
        assert!(
            n.log()
                .contains("TLS between nodes: control plane on, forwarding on"),
            "{}",
            tails(&[n])
        );
    }

    let mut inter = Vec::new();
    for n in &nodes {
        inter.push(n.dist_port);
        inter.push(cluster::fwd_port(n));
    }
    let links = Capture::start(dir.path(), "links", &inter);
    let clients = Capture::start(dir.path(), "clients", &[a.mqtt_port, c.mqtt_port]);

    let mut sub = mq(c, "tls-sub");
    sub.sub("secret/#", 1);
    cluster::wait_route(a, "secret/#", c, true, Duration::from_secs(10));
    let mut publ = mq(a, "tls-pub");
    let payload = format!("CLEAR-TEXT-CANARY-{}", std::process::id());
    for q in [0u8, 1, 2] {
        publ.publish("secret/x", q, false, payload.as_bytes());
    }
    let got = sub.collect(3, Duration::from_secs(10));
    assert_eq!(got.len(), 3, "forwarded over TLS\n{}", tails(&[a, b, c]));
    assert!(got.iter().all(|p| p.payload.as_ref() == payload.as_bytes()));

    let links = links.finish();
    let clients = clients.finish();
    // The control capture sees the payload on the clients' plain TCP ...
    assert!(contains(&clients, payload.as_bytes()), "the capture works");
    // ... the capture between the nodes saw traffic, TLS records, and never the payload.
    assert!(
        links.len() > 2000,
        "inter-node traffic was captured ({} bytes)",
        links.len()
    );
    assert!(
        contains(&links, &[0x17, 0x03, 0x03]),
        "TLS application data records"
    );
    assert!(
        !contains(&links, payload.as_bytes()),
        "clear-text payload between nodes"
    );
    assert!(
        !contains(&links, b"secret/x"),
        "clear-text topic between nodes"
    );

    // ctl, ping and stop reach a TLS node.
    let o = b.cli(&["ping"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "pong");
    let (code, out) = b.ctl(&["clients", "list"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn nodes_without_tls_or_with_another_ca_cannot_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::make_ca(dir.path(), "cluster");
    let cert = pki::issue(dir.path(), &ca, "node", "emqx cluster node", NODE_EXT);
    let rogue_ca = pki::make_ca(dir.path(), "rogue");
    let rogue = pki::issue(
        dir.path(),
        &rogue_ca,
        "rogue",
        "emqx cluster node",
        NODE_EXT,
    );

    let a = cluster::node_with(51, &tls_conf(&ca.cert, &cert));
    let mut plain = cluster::node_with(52, "");
    // A node of another cluster: its own CA and certificate.
    let mut other = cluster::node_with(53, &tls_conf(&rogue_ca.cert, &rogue));
    for n in [&plain, &other] {
        let (code, out) = n.ctl(&["cluster", "join", &a.name]);
        assert_ne!(
            code,
            0,
            "{} joined a TLS node: {out}\n{}",
            n.name,
            tails(&[n, &a])
        );
        assert!(out.contains("node_down"), "{out}");
    }
    let line = status_line(&[&a], &[]);
    wait_status(&a, &line, Duration::from_secs(5), &[&a]);

    // Both sides say why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = a.log();
        let tls_refused = log.matches("inter-node connection refused").count();
        if tls_refused >= 2 && plain.log().contains("closed before authentication") {
            assert!(log.contains("TLS handshake failed"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs do not say why:\n{}",
            tails(&[&a, &plain, &other])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        other.log().contains("TLS"),
        "rogue node log:\n{}",
        tails(&[&other])
    );
    assert!(plain.alive() && other.alive());

    // Once the plain node has TLS with the cluster's certificate, it joins.
    plain.kill();
    other.kill();
    let mut fixed = cluster::prepare_with(52, &tls_conf(&ca.cert, &cert));
    fixed.spawn(&[]);
    join(&fixed, &a);
    let line = status_line(&[&a, &fixed], &[]);
    wait_status(&a, &line, Duration::from_secs(10), &[&a, &fixed]);
}

#[test]
fn forwarding_with_tls_on_one_side_only_says_so_on_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::make_ca(dir.path(), "cluster");
    let cert = pki::issue(dir.path(), &ca, "node", "emqx cluster node", NODE_EXT);
    let (ca, cert, key) = (ca.cert.display(), cert.cert.display(), cert.key.display());
    let x = cluster::node_with(
        61,
        &format!("rpc {{ driver = ssl, certfile = \"{cert}\", keyfile = \"{key}\", cacertfile = \"{ca}\" }}\n"),
    );
    let y = cluster::node_with(62, "");
    join(&y, &x);
    let mut sub = mq(&x, "half-sub");
    sub.sub("half/#", 1);
    cluster::wait_route(&y, "half/#", &x, true, Duration::from_secs(10));
    let mut publ = mq(&y, "half-pub");
    publ.publish("half/t", 1, false, b"never");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (lx, ly) = (x.log(), y.log());
        // Y dials X: X waits for a TLS handshake Y never starts.
        let x_in = lx.contains("no TLS handshake within") && lx.contains("rpc.driver = ssl");
        let y_out = ly.contains("does the peer have rpc.driver = ssl?");
        if x_in && y_out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs do not say why:\n{}",
            tails(&[&x, &y])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        sub.quiet(Duration::from_millis(500)).is_empty(),
        "nothing crosses in clear text"
    );
}

#[test]
fn tls_between_nodes_needs_its_files() {
    for (extra, key) in [
        (
            "cluster.proto_dist = inet_tls\n",
            "cluster.ssl_options.certfile",
        ),
        ("rpc.driver = ssl\nrpc.certfile = c.pem\n", "rpc.keyfile"),
        (
            "rpc.protocol = ssl\nrpc.certfile = c.pem\nrpc.keyfile = k.pem\n",
            "rpc.cacertfile",
        ),
        ("rpc.insecure_fallback = true\n", "rpc.insecure_fallback"),
        ("cluster.proto_dist = inet6_tls\n", "cluster.proto_dist"),
        (
            "cluster.ssl_options.certfile = c.pem\n",
            "cluster.proto_dist is not inet_tls",
        ),
        ("rpc.certfile = c.pem\n", "rpc.driver is not ssl"),
    ] {
        let n = Node::prepare(extra);
        let o = n.cli(&["check_config"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(key), "{extra}: {err}");
    }
    // Files that do not exist are named too, at start.
    let n = Node::prepare(
        "cluster.proto_dist = inet_tls\ncluster.ssl_options { certfile = /nope/c.pem, keyfile = /nope/k.pem, cacertfile = /nope/ca.pem }\n",
    );
    let (status, err) = n
        .foreground_exit(&[], Duration::from_secs(20))
        .expect("the node refuses to start");
    assert!(!status.success());
    assert!(err.contains("cluster.ssl_options.cacertfile"), "{err}");
}
