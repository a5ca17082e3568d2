//! Autocluster against a real DNS server: dnsmasq on a loopback port
//! serving A and SRV records for nodes on 127.0.0.1-127.0.0.3.

mod common;

use common::{
    add_config, all_running, cluster_status as status, nodes_sharing_a_short_name as nodes,
    wait_until, Node,
};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A dnsmasq serving `emqx.test` A records, `_emqx._tcp.emqx.test` SRV
/// records and A records of other `hosts`, killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(a: &[&str], srv: &[&str], hosts: &[(String, String)]) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("dnsmasq is not installed: run scripts/test.sh, which installs dnsmasq-base");
        let port = common::free_port();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--log-facility=/dev/null",
        ]);
        for ip in a {
            cmd.arg(format!("--host-record=emqx.test,{ip}"));
        }
        for (host, ip) in hosts {
            cmd.arg(format!("--host-record={host},{ip}"));
        }
        for target in srv {
            cmd.arg(format!("--srv-host=_emqx._tcp.emqx.test,{target},4370"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        // Ready once something answers on the port (UDP: probe by binding).
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq { child, port }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the nodes together and waits until each sees all of them running.
fn start_as_one_cluster(ns: &mut [Node]) {
    for n in ns.iter_mut() {
        n.spawn(&[]);
    }
    assert!(
        wait_until(Duration::from_secs(45), || all_running(ns)),
        "{}",
        ns.iter().map(status).collect::<Vec<_>>().join("")
    );
}

#[test]
fn nodes_started_together_form_one_cluster_from_dns_a_records() {
    let dns = Dnsmasq::start(&["127.0.0.1", "127.0.0.2", "127.0.0.3"], &[], &[]);
    let extra = format!(
        "cluster.discovery_strategy = dns\ncluster.dns.name = \"emqx.test\"\ncluster.dns.record_type = a\ncluster.dns.resolver = \"127.0.0.1:{}\"\n",
        dns.port
    );
    let mut ns = nodes(&extra);
    start_as_one_cluster(&mut ns);
}

/// Two cores and a replicant found by the same A records: the cores form
/// the cluster, the replicant follows one of them (its status lists the
/// roles).
#[test]
fn a_replicant_found_by_dns_follows_the_cores() {
    let dns = Dnsmasq::start(&["127.0.0.1", "127.0.0.2", "127.0.0.3"], &[], &[]);
    let extra = format!(
        "cluster.discovery_strategy = dns\ncluster.dns.name = \"emqx.test\"\ncluster.dns.record_type = a\ncluster.dns.resolver = \"127.0.0.1:{}\"\n",
        dns.port
    );
    let mut ns = nodes(&extra);
    add_config(&ns[2], "node.db_role = replicant\n");
    start_as_one_cluster(&mut ns);
    let replicant = format!("'{}' => replicant", ns[2].name);
    for n in &ns {
        let out = status(n);
        assert!(out.contains(&replicant), "{}: {out}", n.name);
    }
}

#[test]
fn srv_records_name_the_nodes_by_their_targets() {
    let dns = Dnsmasq::start(&[], &["127.0.0.1", "127.0.0.2", "127.0.0.3"], &[]);
    let extra = format!(
        "cluster.discovery_strategy = dns\ncluster.dns.name = \"_emqx._tcp.emqx.test\"\ncluster.dns.record_type = srv\ncluster.dns.resolver = \"127.0.0.1:{}\"\n",
        dns.port
    );
    let mut ns = nodes(&extra);
    start_as_one_cluster(&mut ns);
}

/// SRV targets that are host names (as in EMQX's Docker setup, where each
/// node is `emqx@<hostname>.<dns name>`): nodes named after them listen on
/// the address the name resolves to, dial each other by name, and `ctl`
/// reaches them by name, all through the configured DNS server.
#[test]
fn srv_targets_that_are_host_names() {
    let hosts: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("n{i}.emqx.test"), format!("127.0.0.{i}")))
        .collect();
    let targets: Vec<&str> = hosts.iter().map(|(h, _)| h.as_str()).collect();
    let dns = Dnsmasq::start(&[], &targets, &hosts);
    let extra = format!(
        "cluster.discovery_strategy = dns\ncluster.dns.name = \"_emqx._tcp.emqx.test\"\ncluster.dns.record_type = srv\ncluster.dns.resolver = \"127.0.0.1:{}\"\n",
        dns.port
    );
    let mut ns = nodes(&extra);
    for (n, (host, _)) in ns.iter_mut().zip(&hosts) {
        let short = n.name.split('@').next().expect("short name").to_string();
        let name = format!("{short}@{host}");
        let text = std::fs::read_to_string(&n.config).expect("config");
        std::fs::write(&n.config, text.replace(&n.name, &name)).expect("config");
        n.name = name;
    }
    start_as_one_cluster(&mut ns);
    // Each listens on its name's address, not on every interface: the
    // inter-node port is still free on another loopback address.
    for (i, n) in ns.iter().enumerate() {
        let other = format!("127.0.0.{}", 4 + i);
        assert!(
            std::net::TcpListener::bind((other.as_str(), n.dist_port)).is_ok(),
            "{} listens beyond 127.0.0.{}",
            n.name,
            i + 1
        );
        assert!(
            std::net::TcpListener::bind((format!("127.0.0.{}", i + 1).as_str(), n.dist_port))
                .is_err(),
            "{} does not listen on its own address",
            n.name
        );
    }
}

#[test]
fn a_record_discovery_requires_an_ip_address_host_in_the_node_name() {
    let n = Node::prepare("cluster.discovery_strategy = dns\ncluster.dns.record_type = a\nnode.name = \"emqx@localhost\"\n");
    let o = n.cli(&["foreground"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("node.name") && err.contains("IP address"),
        "{err}"
    );
}
