//! A node whose name resolves to an address that is not on its host (a
//! cloud host behind 1:1 NAT: the public address is the name, the host
//! only has a private one) starts with `node.dist_listen_address`, and its
//! peer reaches it by name.
//!
//! Two network namespaces made by the test stand for two hosts, joined by
//! a veth pair (10.231.0.1 and 10.231.0.2). Each has its own hosts file
//! (`ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts):
//! `a.emqx.test` is 198.51.100.1, an address no interface has; host A
//! translates it to its private address (iptables DNAT, as the cloud's
//! NAT does), and host B routes it to host A.
//!
//! Needs root, `ip` and `iptables` (installed by `scripts/test.sh`).

mod common;

use common::BIN;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PUBLIC_A: &str = "198.51.100.1";
const PRIVATE_A: &str = "10.231.0.1";
const PRIVATE_B: &str = "10.231.0.2";
const NAME_A: &str = "emqx1@a.emqx.test";
const NAME_B: &str = "emqx2@b.emqx.test";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn must(args: &[&str]) {
    let o = run(Command::new(args[0]).args(&args[1..]));
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two namespaces and their hosts files; removed on drop.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn new() -> Hosts {
        let id = std::process::id();
        let h = Hosts {
            a: format!("emqxla{id}"),
            b: format!("emqxlb{id}"),
        };
        let (a, b) = (h.a.as_str(), h.b.as_str());
        let (va, vb) = (
            format!("vla{}", id % 100_000),
            format!("vlb{}", id % 100_000),
        );
        must(&["ip", "netns", "add", a]);
        must(&["ip", "netns", "add", b]);
        must(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        must(&["ip", "link", "set", &va, "netns", a]);
        must(&["ip", "link", "set", &vb, "netns", b]);
        for (ns, dev, ip) in [(a, &va, PRIVATE_A), (b, &vb, PRIVATE_B)] {
            let cidr = format!("{ip}/24");
            must(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            let dir = PathBuf::from("/etc/netns").join(ns);
            std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
            std::fs::write(
                dir.join("hosts"),
                format!("127.0.0.1 localhost\n{PUBLIC_A} a.emqx.test\n{PRIVATE_B} b.emqx.test\n"),
            )
            .expect("write the namespace's hosts file");
        }
        // Host B reaches the public address through host A.
        must(&["ip", "-n", b, "route", "add", PUBLIC_A, "via", PRIVATE_A]);
        // Host A translates its public address to its private one, for
        // what arrives and for what it sends itself (its own `ctl`).
        must(&["ip", "-n", a, "route", "add", PUBLIC_A, "dev", &va]);
        for chain in ["PREROUTING", "OUTPUT"] {
            must(&[
                "ip",
                "netns",
                "exec",
                a,
                "iptables",
                "-t",
                "nat",
                "-A",
                chain,
                "-d",
                PUBLIC_A,
                "-j",
                "DNAT",
                "--to-destination",
                PRIVATE_A,
            ]);
        }
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
    }
}

/// A node inside a namespace.
struct NsNode {
    ns: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NsNode {
    fn new(ns: &str, name: &str, extra: &str) -> NsNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = format!(
            "node {{\n  name = \"{name}\"\n  cookie = \"natcookie\"\n  data_dir = \"{}\"\n}}\n\
             listeners.tcp.default.bind = \"0.0.0.0:1883\"\nlog.console.level = info\n{extra}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("emqx.conf"), conf).expect("write config");
        NsNode {
            ns: ns.to_string(),
            dir,
            child: None,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("emqx.conf")
    }

    fn in_ns(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("out.log")).expect("log file");
        let err = log.try_clone().expect("log file");
        let mut c = self.in_ns(BIN);
        c.arg("foreground").arg("-config").arg(self.config());
        c.stdin(Stdio::null()).stdout(log).stderr(err);
        self.child = Some(c.spawn().expect("spawn emqx-rs in the namespace"));
    }

    /// Exit status of `foreground` that is expected to stop by itself.
    fn start_and_wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.start();
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }

    /// `emqx-rs <args> -config <conf>` run inside the namespace.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut c = self.in_ns(BIN);
        c.args(args).arg("-config").arg(self.config());
        let o = run(c.stdin(Stdio::null()));
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    fn wait_cli(&self, args: &[&str], within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (success, out) = self.cli(args);
            if success && ok(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` in {} never gave what was expected; last output:\n{out}\nnode log:\n{}",
                args.join(" "),
                self.ns,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_node_named_by_a_translated_address_listens_on_its_own_and_is_reached_by_name() {
    let hosts = Hosts::new();

    // Without the setting the node cannot bind its name's address: it
    // says so, names the key, and stops.
    let mut a = NsNode::new(&hosts.a, NAME_A, "");
    let st = a
        .start_and_wait_exit(Duration::from_secs(30))
        .expect("a node whose name's address is not on its host must not run");
    assert!(!st.success(), "exit status {st}");
    let log = a.log();
    assert!(
        log.contains("not on this host") && log.contains("node.dist_listen_address"),
        "{log}"
    );

    // With it the node listens on every interface of host A.
    let mut a = NsNode::new(&hosts.a, NAME_A, "node.dist_listen_address = \"0.0.0.0\"");
    a.start();
    // `ping` on host A finds the node by its name (the public address,
    // translated by host A).
    a.wait_cli(&["ping"], Duration::from_secs(30), |o| o.contains("pong"));
    let ss = run(Command::new("ip").args(["netns", "exec", &hosts.a, "ss", "-ltn"]));
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(ss.contains("0.0.0.0:4371"), "{ss}");
    // rpc.listen_address follows node.dist_listen_address.
    assert!(ss.contains("0.0.0.0:5371"), "{ss}");

    // Host B's node (its name is its own address) joins A by A's name.
    let mut b = NsNode::new(&hosts.b, NAME_B, "");
    b.start();
    b.wait_cli(&["ping"], Duration::from_secs(30), |o| o.contains("pong"));
    let (ok, out) = b.cli(&["ctl", "cluster", "join", NAME_A]);
    assert!(ok, "join failed: {out}\nB:\n{}\nA:\n{}", b.log(), a.log());
    let both = |o: &str| {
        o.contains(&format!(
            "running_nodes => ['{NAME_A}','{NAME_B}'],stopped_nodes => []"
        ))
    };
    a.wait_cli(&["ctl", "cluster", "status"], Duration::from_secs(20), both);
    b.wait_cli(&["ctl", "cluster", "status"], Duration::from_secs(20), both);

    // A message published on B reaches a subscriber on A: B forwards it to
    // A's public address, which host A translates.
    let mut sub = Command::new("ip")
        .args([
            "netns",
            "exec",
            &hosts.a,
            "mosquitto_sub",
            "-h",
            PRIVATE_A,
            "-p",
            "1883",
            "-t",
            "nat/t",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (scripts/test.sh installs mosquitto-clients)");
    let route = format!("nat/t -> {NAME_A}");
    b.wait_cli(&["ctl", "topics", "list"], Duration::from_secs(20), |o| {
        o.lines().any(|l| l == route)
    });
    let o = run(Command::new("ip").args([
        "netns",
        "exec",
        &hosts.b,
        "mosquitto_pub",
        "-h",
        PRIVATE_B,
        "-p",
        "1883",
        "-t",
        "nat/t",
        "-q",
        "1",
        "-m",
        "through the NAT",
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sub.kill();
    let out = sub.wait_with_output().expect("mosquitto_sub output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "through the NAT",
        "stderr: {}\nA:\n{}\nB:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log(),
        b.log()
    );
}
