//! The etcd discovery strategy against a real etcd (Debian package
//! `etcd-server`, `/usr/bin/etcd`) on loopback ports.

mod common;

use emqx_discovery::{Etcd, Strategy};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// A one-member etcd on 127.0.0.1, killed on drop.
struct EtcdServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    async fn start() -> EtcdServer {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is not installed: run scripts/test.sh or `apt-get install -y etcd-server`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let client = format!("http://127.0.0.1:{}", common::free_port());
        let peer = format!("http://127.0.0.1:{}", common::free_port());
        let child = Command::new(ETCD)
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
        Etcd::new(
            vec![self.url.clone()],
            "emqxcl".into(),
            Duration::from_secs(ttl_secs),
            me.into(),
        )
        .expect("valid etcd settings")
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
    let mut nodes: Vec<common::Node> = (1..=3u8)
        .map(|i| common::Node::prepare_cluster(i, &extra))
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
}
