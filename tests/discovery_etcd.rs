//! The etcd discovery strategy against a real etcd (Debian package
//! `etcd-server`, `/usr/bin/etcd`) on loopback ports, over plain HTTP and
//! over TLS with client certificates (`--client-cert-auth`).

mod common;

use common::pki::{self, Issued};
use emqx_discovery::tls::{TlsOptions, Verify};
use emqx_discovery::{DiscoveryError, Etcd, Strategy};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// A one-member etcd on 127.0.0.1, killed on drop.
struct EtcdServer {
    child: Child,
    url: String,
    /// With TLS: the settings of a client it accepts.
    tls: Option<TlsOptions>,
    _dir: tempfile::TempDir,
}

/// Certificates for an etcd on 127.0.0.1 that requires client
/// certificates, and a second CA that signed none of them.
struct EtcdPki {
    ca: Issued,
    server: Issued,
    client: Issued,
    other_ca: Issued,
    _dir: tempfile::TempDir,
}

impl EtcdPki {
    fn new() -> EtcdPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::make_ca(dir.path(), "etcd");
        // etcd's JSON gateway reaches etcd's gRPC side presenting the
        // server certificate as a client one: with --client-cert-auth it
        // must be good for clientAuth too, or every request gets HTTP 503.
        let ext = "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                   extendedKeyUsage=serverAuth,clientAuth\n";
        let server = pki::issue(dir.path(), &ca, "server", "127.0.0.1", ext);
        let client = pki::issue(dir.path(), &ca, "client", "emqx", pki::CLIENT_EXT);
        let other_ca = pki::make_ca(dir.path(), "other");
        EtcdPki {
            ca,
            server,
            client,
            other_ca,
            _dir: dir,
        }
    }

    /// What a node with the right CA and client certificate is given.
    fn client_options(&self) -> TlsOptions {
        TlsOptions {
            key_prefix: "cluster.etcd.ssl_options".into(),
            cacertfile: Some(self.ca.cert.clone()),
            certfile: Some(self.client.cert.clone()),
            keyfile: Some(self.client.key.clone()),
            verify: Verify::Peer,
            server_name_indication: None,
        }
    }
}

impl EtcdServer {
    async fn start() -> EtcdServer {
        EtcdServer::start_with(None).await
    }

    /// With `pki`, clients must speak TLS and show a certificate signed
    /// by its CA.
    async fn start_with(pki: Option<&EtcdPki>) -> EtcdServer {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is not installed: run scripts/test.sh or `apt-get install -y etcd-server`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if pki.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", common::free_port());
        let peer = format!("http://127.0.0.1:{}", common::free_port());
        let mut cmd = Command::new(ETCD);
        if let Some(p) = pki {
            cmd.arg("--cert-file")
                .arg(&p.server.cert)
                .arg("--key-file")
                .arg(&p.server.key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&p.ca.cert);
        }
        let child = cmd
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--name",
                "default",
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("default={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let server = EtcdServer {
            child,
            url: client,
            tls: pki.map(EtcdPki::client_options),
            _dir: dir,
        };
        // Ready once a discovery round goes through.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut probe = server.etcd("probe@127.0.0.9", 2);
            match probe.discover().await {
                Ok(_) => {
                    let _ = probe.revoke().await;
                    break;
                }
                Err(e) if Instant::now() > deadline => panic!("etcd did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        server
    }

    fn etcd(&self, me: &str, ttl_secs: u64) -> Etcd {
        self.etcd_with(me, ttl_secs, self.tls.as_ref())
            .expect("valid etcd settings")
    }

    fn etcd_with(
        &self,
        me: &str,
        ttl_secs: u64,
        tls: Option<&TlsOptions>,
    ) -> Result<Etcd, DiscoveryError> {
        Etcd::with_tls(
            vec![self.url.clone()],
            "emqxcl".into(),
            Duration::from_secs(ttl_secs),
            me.into(),
            tls,
        )
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Discovers with `e` until `check` holds (or panics after `secs`).
async fn discover_until(e: &mut Etcd, secs: u64, check: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let nodes = e.discover().await.expect("discover");
        if check(&nodes) {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "discovery still returns {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const A: &str = "a@127.0.0.1";
const B: &str = "b@127.0.0.2";

#[tokio::test]
async fn both_nodes_are_found_and_a_revoked_one_goes() {
    let server = EtcdServer::start().await;
    let mut a = server.etcd(A, 2);
    let mut b = std::sync::Arc::new(server.etcd(B, 2));
    assert_eq!(a.name(), "etcd");
    assert_eq!(b.name(), "etcd");
    assert_eq!(a.node_key(), "emqxcl/ekkacl/nodes/a@127.0.0.1");
    b.discover().await.expect("b registers");
    let nodes = a.discover().await.expect("a registers and discovers");
    assert_eq!(nodes, vec![A.to_string(), B.to_string()]);
    assert_eq!(b.discover().await.expect("b"), nodes);

    // The keepalive holds the 2 s leases well past their TTL (the same
    // leases: not re-granted).
    let (la, lb) = (a.lease_id(), b.lease_id());
    assert!(la.is_some() && lb.is_some() && la != lb);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(a.discover().await.expect("a"), nodes);
    assert_eq!((a.lease_id(), b.lease_id()), (la, lb));

    b.revoke().await.expect("revoke");
    assert_eq!(b.lease_id(), None);
    assert_eq!(a.discover().await.expect("a"), vec![A.to_string()]);
}

#[tokio::test]
async fn a_dropped_node_goes_when_its_lease_expires() {
    let server = EtcdServer::start().await;
    let mut a = server.etcd(A, 2);
    let mut b = server.etcd(B, 2);
    b.discover().await.expect("b registers");
    discover_until(&mut a, 5, |n| n.len() == 2).await;
    // Dropping stops the keepalive without revoking: the key stays until
    // the lease runs out.
    drop(b);
    let gone = Instant::now();
    let nodes = discover_until(&mut a, 10, |n| n.len() == 1).await;
    assert_eq!(nodes, vec![A.to_string()]);
    assert!(
        gone.elapsed() >= Duration::from_millis(500),
        "gone too soon"
    );
}

#[tokio::test]
async fn the_lock_is_exclusive() {
    let server = EtcdServer::start().await;
    let a = server.etcd(A, 2);
    let b = std::sync::Arc::new(server.etcd(B, 2));

    let guard = tokio::time::timeout(Duration::from_secs(5), a.acquire_lock())
        .await
        .expect("a locks in time")
        .expect("a locks");
    assert!(guard.key().starts_with(b"emqxcl/ekkacl/lock/"));

    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        let g = b2.acquire_lock().await;
        let _ = tx.send(());
        g
    });
    // b waits while a holds the lock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rx.try_recv().is_err(), "b got the lock while a held it");

    guard.unlock().await.expect("a unlocks");
    let g = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("b locks once a unlocked")
        .expect("join")
        .expect("b locks");
    g.unlock().await.expect("b unlocks");
}

#[tokio::test]
async fn a_lock_whose_holder_died_expires_with_its_lease() {
    let server = EtcdServer::start().await;
    let a = server.etcd(A, 60);
    let b = server.etcd(B, 60);
    let held = a.acquire_lock().await.expect("a locks");
    // As if a's process died: nothing released, no more keepalives. The
    // lock's own lease (LOCK_TTL), not the 60 s node TTL, frees it.
    held.abandon();
    let t = Instant::now();
    let g = tokio::time::timeout(Duration::from_secs(15), b.acquire_lock())
        .await
        .expect("b locks once a's lock lease expired")
        .expect("b locks");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "b locked while the abandoned lease still lived"
    );
    g.unlock().await.expect("b unlocks");
}

#[tokio::test]
async fn a_wait_given_up_leaves_no_trace_in_the_queue() {
    let server = EtcdServer::start().await;
    let a = server.etcd(A, 60);
    let b = server.etcd(B, 60);
    let c = server.etcd("c@127.0.0.3", 60);
    let held = a.acquire_lock().await.expect("a locks");
    // b queues behind a, then gives up.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), b.acquire_lock())
            .await
            .is_err(),
        "b got the lock while a held it"
    );
    // Let the dropped wait's lease revocation go through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.unlock().await.expect("a unlocks");
    // c is next: b's abandoned place in the queue does not hold it up.
    let g = tokio::time::timeout(Duration::from_secs(3), c.acquire_lock())
        .await
        .expect("c locks at once")
        .expect("c locks");
    g.unlock().await.expect("c unlocks");
}

/// The lock as the autocluster loop takes it (`Strategy::lock`/`unlock`):
/// a second node's `lock` waits until the first one's `unlock`, and
/// revoking a node (a clean stop) releases a lock it holds.
#[tokio::test]
async fn the_autocluster_lock_waits_for_unlock() {
    let server = EtcdServer::start().await;
    let mut a = std::sync::Arc::new(server.etcd(A, 60));
    let b = std::sync::Arc::new(server.etcd(B, 60));
    assert_eq!(Strategy::lock(&mut a).await, Ok(true));
    assert!(a.holds_lock().await);

    let mut b2 = b.clone();
    let waiter = tokio::spawn(async move { Strategy::lock(&mut b2).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiter.is_finished(), "b locked while a held the lock");
    assert!(!b.holds_lock().await);

    Strategy::unlock(&mut a).await.expect("a unlocks");
    assert!(!a.holds_lock().await);
    let r = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("b locks once a unlocked")
        .expect("join");
    assert_eq!(r, Ok(true));
    assert!(b.holds_lock().await);

    // A clean stop of the holder releases the lock at once.
    let mut a2 = a.clone();
    let waiter = tokio::spawn(async move { Strategy::lock(&mut a2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "a locked while b held the lock");
    b.revoke().await.expect("b stops");
    assert!(!b.holds_lock().await);
    let r = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("a locks once b stopped")
        .expect("join");
    assert_eq!(r, Ok(true));
    Strategy::unlock(&mut a).await.expect("a unlocks");
    // Unlocking with nothing held is fine.
    Strategy::unlock(&mut a).await.expect("a unlocks again");
}

/// Real nodes: three emqx-rs processes with `cluster.discovery_strategy =
/// etcd` started together form one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_cluster_through_etcd() {
    let etcd = EtcdServer::start().await;
    let extra = format!(
        "cluster.discovery_strategy = etcd\ncluster.etcd.server = \"{}\"\ncluster.etcd.node_ttl = 5s\n",
        etcd.url
    );
    three_nodes_cluster(&extra).await;
}

/// Two cores and a replicant registered in etcd: the replicant follows
/// the cores' cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicant_registered_in_etcd_follows_the_cores() {
    let etcd = EtcdServer::start().await;
    let extra = format!(
        "cluster.discovery_strategy = etcd\ncluster.etcd.server = \"{}\"\ncluster.etcd.node_ttl = 5s\n",
        etcd.url
    );
    let nodes = three_nodes_cluster_with(&extra, 1).await;
    let replicant = format!("'{}' => replicant", nodes[2].name);
    for n in &nodes {
        let out = n.ctl(&["cluster", "status"]).1;
        assert!(out.contains(&replicant), "{}: {out}", n.name);
    }
}

/// Starts three nodes with `extra` in their config and waits until each
/// one's `cluster status` lists all three running; checks each took and
/// released the etcd lock.
async fn three_nodes_cluster(extra: &str) {
    three_nodes_cluster_with(extra, 0).await;
}

/// [`three_nodes_cluster`] whose last `replicants` nodes are replicants.
async fn three_nodes_cluster_with(extra: &str, replicants: u8) -> Vec<common::Node> {
    let mut nodes: Vec<common::Node> = (1..=3u8)
        .map(|i| {
            let role = if i > 3 - replicants {
                "node.db_role = replicant\n"
            } else {
                ""
            };
            common::Node::prepare_cluster(i, &format!("{extra}{role}"))
        })
        .collect();
    for n in nodes.iter_mut() {
        n.spawn(&[]);
    }
    let mut names: Vec<String> = nodes.iter().map(|n| format!("'{}'", n.name)).collect();
    names.sort();
    let want = format!("running_nodes => [{}],stopped_nodes => []", names.join(","));
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let all = nodes
            .iter()
            .all(|n| n.ctl(&["cluster", "status"]).1.contains(&want));
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no single cluster: {}",
            nodes
                .iter()
                .map(|n| n.ctl(&["cluster", "status"]).1)
                .collect::<Vec<_>>()
                .join("")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every node took and released the lock around its rounds.
    for n in &nodes {
        let log = n.log();
        assert!(
            log.contains("autocluster: lock taken") && log.contains("autocluster: lock released"),
            "{}: {log}",
            n.name
        );
    }
    nodes
}

/// The text of an `Unavailable` error, or a panic.
fn unavailable<T: std::fmt::Debug>(r: Result<T, DiscoveryError>) -> String {
    match r {
        Err(DiscoveryError::Unavailable(e)) => e,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// With the right CA and a client certificate, registration, discovery,
/// the lock and revocation all work over TLS.
#[tokio::test]
async fn tls_with_the_right_ca_and_client_certificate_works() {
    let pki = EtcdPki::new();
    let server = EtcdServer::start_with(Some(&pki)).await;
    assert!(server.url.starts_with("https://127.0.0.1:"));
    let mut a = server.etcd(A, 2);
    let mut b = std::sync::Arc::new(server.etcd(B, 2));
    b.discover().await.expect("b registers over TLS");
    let nodes = a
        .discover()
        .await
        .expect("a registers and discovers over TLS");
    assert_eq!(nodes, vec![A.to_string(), B.to_string()]);
    // The keepalive (a streamed answer) holds the 2 s leases over TLS.
    let la = a.lease_id();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.discover().await.expect("a"), nodes);
    assert_eq!(a.lease_id(), la);

    let guard = tokio::time::timeout(Duration::from_secs(5), a.acquire_lock())
        .await
        .expect("a locks in time")
        .expect("a locks over TLS");
    assert!(guard.key().starts_with(b"emqxcl/ekkacl/lock/"));
    guard.unlock().await.expect("a unlocks");

    b.revoke().await.expect("revoke over TLS");
    assert_eq!(a.discover().await.expect("a"), vec![A.to_string()]);

    // verify_none skips the server check: a CA that signed nothing here
    // does not matter, the client certificate still gets it in.
    let mut o = pki.client_options();
    o.verify = Verify::None;
    o.cacertfile = Some(pki.other_ca.cert.clone());
    let mut c = server.etcd_with("c@127.0.0.3", 2, Some(&o)).expect("valid");
    let nodes = c.discover().await.expect("verify_none registers");
    assert_eq!(nodes, vec![A.to_string(), "c@127.0.0.3".to_string()]);
    c.revoke().await.expect("revoke");
}

/// A CA that did not sign etcd's certificate, or a name the certificate
/// is not for: the handshake fails and nothing is registered.
#[tokio::test]
async fn tls_handshake_fails_against_the_wrong_ca_or_name() {
    let pki = EtcdPki::new();
    let server = EtcdServer::start_with(Some(&pki)).await;
    let mut wrong_ca = pki.client_options();
    wrong_ca.cacertfile = Some(pki.other_ca.cert.clone());
    let mut b = server
        .etcd_with(B, 2, Some(&wrong_ca))
        .expect("valid settings");
    let e = unavailable(b.discover().await);
    assert!(
        e.contains("TLS handshake")
            && e.contains("UnknownIssuer")
            && e.contains(server.url.trim_start_matches("https://")),
        "{e}"
    );
    assert_eq!(b.lease_id(), None);

    let mut wrong_name = pki.client_options();
    wrong_name.server_name_indication = Some("etcd.example.com".into());
    let mut b = server
        .etcd_with(B, 2, Some(&wrong_name))
        .expect("valid settings");
    let e = unavailable(b.discover().await);
    assert!(
        e.contains("TLS handshake") && e.contains("not valid for name \"etcd.example.com\""),
        "{e}"
    );

    // Plain HTTP to a TLS port gets no etcd answer either.
    let plain = server.url.replacen("https://", "http://", 1);
    let mut p = Etcd::new(
        vec![plain],
        "emqxcl".into(),
        Duration::from_secs(2),
        B.into(),
    )
    .expect("valid");
    assert!(p.discover().await.is_err());

    let mut a = server.etcd(A, 2);
    assert_eq!(a.discover().await.expect("a"), vec![A.to_string()]);
}

/// etcd runs with `--client-cert-auth`: a client without a certificate,
/// or with one from another CA, is refused.
#[tokio::test]
async fn etcd_refuses_a_client_without_an_accepted_certificate() {
    let pki = EtcdPki::new();
    let server = EtcdServer::start_with(Some(&pki)).await;
    let mut no_cert = pki.client_options();
    no_cert.certfile = None;
    no_cert.keyfile = None;
    let mut b = server
        .etcd_with(B, 2, Some(&no_cert))
        .expect("valid settings");
    let e = unavailable(b.discover().await);
    assert!(
        e.contains("received fatal alert") && e.contains("no client certificate is configured"),
        "{e}"
    );
    assert_eq!(b.lease_id(), None);

    // A certificate etcd's trusted CA did not sign.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = pki::issue(dir.path(), &pki.other_ca, "rogue", "emqx", pki::CLIENT_EXT);
    let mut rogue = pki.client_options();
    rogue.certfile = Some(other.cert);
    rogue.keyfile = Some(other.key);
    let mut r = server
        .etcd_with(B, 2, Some(&rogue))
        .expect("valid settings");
    let e = unavailable(r.discover().await);
    assert!(
        e.contains("received fatal alert") && !e.contains("no client certificate"),
        "{e}"
    );

    let mut a = server.etcd(A, 2);
    assert_eq!(a.discover().await.expect("a"), vec![A.to_string()]);
}

/// Unusable TLS files are refused when the strategy is made, naming the
/// configuration key and the file.
#[test]
fn bad_tls_files_are_configuration_errors() {
    let pki = EtcdPki::new();
    let make = |o: &TlsOptions| {
        Etcd::with_tls(
            vec!["https://127.0.0.1:1".into()],
            "emqxcl".into(),
            Duration::from_secs(2),
            A.into(),
            Some(o),
        )
        .err()
    };
    let config_error = |o: &TlsOptions| match make(o) {
        Some(DiscoveryError::Config(e)) => e,
        other => panic!("expected a Config error, got {other:?}"),
    };
    assert!(make(&pki.client_options()).is_none());

    let mut o = pki.client_options();
    let absent = pki.ca.cert.with_file_name("absent-ca.crt");
    o.cacertfile = Some(absent.clone());
    let e = config_error(&o);
    assert!(
        e.starts_with("cluster.etcd.ssl_options.cacertfile: cannot read")
            && e.contains(&absent.display().to_string()),
        "{e}"
    );

    // A key that is not the certificate's.
    let mut o = pki.client_options();
    o.keyfile = Some(pki.server.key.clone());
    let e = config_error(&o);
    assert!(
        e.contains("ssl_options.keyfile") && e.contains("server.key"),
        "{e}"
    );

    // A certificate file holding only a key.
    let mut o = pki.client_options();
    o.certfile = Some(pki.client.key.clone());
    let e = config_error(&o);
    assert!(
        e.contains("ssl_options.certfile")
            && e.contains("client.key")
            && e.contains("no PEM certificate"),
        "{e}"
    );

    // https:// without TLS enabled.
    let e = Etcd::new(
        vec!["https://127.0.0.1:1".into()],
        "emqxcl".into(),
        Duration::from_secs(2),
        A.into(),
    )
    .err();
    assert!(
        matches!(&e, Some(DiscoveryError::Config(m)) if m.contains("ssl_options.enable = true")),
        "{e:?}"
    );
}

/// A node whose etcd TLS files are unusable does not start: it exits
/// with 2 (a configuration error) before binding any port, naming the key
/// and the file.
#[test]
fn a_node_with_a_missing_etcd_ca_file_exits_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = dir.path().join("no-such-ca.pem");
    let n = common::Node::prepare(&format!(
        "cluster.discovery_strategy = etcd\n\
         cluster.etcd.server = \"https://127.0.0.1:1\"\n\
         cluster.etcd.ssl_options {{ enable = true, verify = verify_peer, cacertfile = \"{}\" }}\n",
        absent.display()
    ));
    let Some((status, err)) = n.foreground_exit(&[], Duration::from_secs(20)) else {
        panic!("the node kept running with an absent etcd CA file");
    };
    assert_eq!(status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("cluster.etcd.ssl_options.cacertfile: cannot read")
            && err.contains(&absent.display().to_string()),
        "stderr: {err}"
    );
}

/// Real nodes: three emqx-rs processes with `cluster.discovery_strategy =
/// etcd` over https, with client certificates, form one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_cluster_through_etcd_over_tls() {
    let pki = EtcdPki::new();
    let etcd = EtcdServer::start_with(Some(&pki)).await;
    let extra = format!(
        "cluster.discovery_strategy = etcd\n\
         cluster.etcd.server = \"{}\"\n\
         cluster.etcd.node_ttl = 5s\n\
         cluster.etcd.ssl_options {{\n  enable = true\n  verify = verify_peer\n  cacertfile = \"{}\"\n  certfile = \"{}\"\n  keyfile = \"{}\"\n}}\n",
        etcd.url,
        pki.ca.cert.display(),
        pki.client.cert.display(),
        pki.client.key.display(),
    );
    three_nodes_cluster(&extra).await;
    // The nodes are registered in the TLS etcd.
    let mut probe = etcd.etcd("probe@127.0.0.9", 2);
    let found = probe.discover().await.expect("probe");
    assert_eq!(found.len(), 4, "{found:?}");
    let _ = probe.revoke().await;
}
