//! Helpers for tests of clusters of real nodes: nodes on loopback
//! aliases, `ctl` polling, and `rumqttc` clients with buffered events.

use super::Node;
use rumqttc::{Client, Connection, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Fast failure detection for every test node.
pub const FAST: &str = "cluster.heartbeat_interval = 1s\ncluster.down_timeout = 3s\n";
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// nodes and ctl
// ---------------------------------------------------------------------------

/// A cluster node on 127.0.0.`ip`, not started. Its MQTT port is moved
/// out of the kernel's ephemeral range (32768..61000): nodes dial from
/// their own address with ephemeral ports, so while a node is down another
/// node on the same address could take an ephemeral MQTT port and the
/// restart would fail with `Address already in use`.
///
/// Nodes prepared concurrently by parallel tests could also draw the same
/// or overlapping inter-node ports (4370+N of one = 5370+N' of another),
/// since the harness only checks that the ports are free at that moment;
/// every port handed out in this test binary is remembered and never
/// handed out again.
pub fn prepare(ip: u8) -> Node {
    prepare_with(ip, "")
}

/// [`prepare`] with `extra` appended to the node's config.
pub fn prepare_with(ip: u8, extra: &str) -> Node {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut n = loop {
        let n = Node::prepare_cluster(ip, &format!("{FAST}{extra}"));
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        let ports = [n.dist_port, fwd_port(&n)];
        if ports.iter().all(|p| !taken.contains(p)) {
            taken.extend(ports);
            break n;
        }
    };
    let port = loop {
        let p = 20_000 + (super::rand_u32() % 10_000) as u16;
        if std::net::TcpListener::bind((n.host.as_str(), p)).is_ok() && super::claim_port(p) {
            break p;
        }
    };
    let text = std::fs::read_to_string(&n.config).expect("read config");
    let old = format!(
        "listeners.tcp.default.bind = \"{}:{}\"",
        n.host, n.mqtt_port
    );
    assert!(text.contains(&old), "config has no {old}: {text}");
    let new = format!("listeners.tcp.default.bind = \"{}:{port}\"", n.host);
    std::fs::write(&n.config, text.replace(&old, &new)).expect("write config");
    n.mqtt_port = port;
    n
}

/// A running node on 127.0.0.`ip`.
pub fn node(ip: u8) -> Node {
    node_with(ip, "")
}

/// [`node`] with `extra` appended to the node's config.
pub fn node_with(ip: u8, extra: &str) -> Node {
    let mut n = prepare_with(ip, extra);
    n.spawn(&[]);
    n
}

/// The forwarding (data plane) port of a cluster node: 5370 + N.
pub fn fwd_port(n: &Node) -> u16 {
    n.dist_port + 1000
}

/// The last lines of a node's log, for failure messages.
pub fn tail(n: &Node) -> String {
    let log = n.log();
    // The ctl shells' sessions are noise here.
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("remsh")).collect();
    let from = lines.len().saturating_sub(25);
    format!(
        "--- log of {} (last {} lines) ---\n{}\n",
        n.name,
        lines.len() - from,
        lines[from..].join("\n")
    )
}

pub fn tails(nodes: &[&Node]) -> String {
    nodes.iter().map(|n| tail(n)).collect()
}

pub fn sorted_names(nodes: &[&Node]) -> Vec<String> {
    let mut v: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    v.sort();
    v
}

/// `Cluster status: #{running_nodes => [...],stopped_nodes => [...]}`.
pub fn status_line(running: &[&Node], stopped: &[&Node]) -> String {
    let list = |v: &[&Node]| {
        sorted_names(v)
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "Cluster status: #{{running_nodes => [{}],stopped_nodes => [{}]}}",
        list(running),
        list(stopped)
    )
}

/// Polls `ctl <args>` on `n` every 200 ms until `pred` holds on its output;
/// returns whether it did and the last output.
pub fn poll_ctl(
    n: &Node,
    args: &[&str],
    timeout: Duration,
    mut pred: impl FnMut(&str) -> bool,
) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, out) = n.ctl(args);
        if pred(&out) {
            return (true, out);
        }
        if Instant::now() >= deadline {
            return (false, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `cluster status` on `n` prints exactly `line`.
pub fn wait_status(n: &Node, line: &str, timeout: Duration, all: &[&Node]) {
    let (ok, out) = poll_ctl(n, &["cluster", "status"], timeout, |o| o.trim_end() == line);
    assert!(
        ok,
        "cluster status on {} after {timeout:?}:\n  got:      {}\n  expected: {line}\n{}",
        n.name,
        out.trim_end(),
        tails(all)
    );
}

/// `ctl cluster join <target>` on `n`, asserting success.
pub fn join(n: &Node, target: &Node) -> String {
    let (code, out) = n.ctl(&["cluster", "join", &target.name]);
    assert!(
        code == 0 && out.starts_with("Join the cluster successfully.\n"),
        "{} joining {}: exit {code}, output {out:?}\n{}",
        n.name,
        target.name,
        tails(&[n, target])
    );
    out
}

/// Starts nodes on the given loopback addresses and joins every node to
/// the first; returns when every node reports every node running.
pub fn cluster(ips: &[u8]) -> Vec<Node> {
    cluster_with(ips, "")
}

/// [`cluster`] of nodes with `extra` appended to their config.
pub fn cluster_with(ips: &[u8], extra: &str) -> Vec<Node> {
    let nodes: Vec<Node> = ips.iter().map(|ip| node_with(*ip, extra)).collect();
    for n in &nodes[1..] {
        join(n, &nodes[0]);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let line = status_line(&all, &[]);
    for n in &nodes {
        wait_status(n, &line, Duration::from_secs(15), &all);
    }
    nodes
}

/// `topic -> node` lines of `topics list`.
pub fn routes(n: &Node) -> Vec<String> {
    let (_, out) = n.ctl(&["topics", "list"]);
    out.lines().map(str::to_string).collect()
}

/// Waits until `topics list` on `n` has (or, with `present` false, lacks)
/// the line `<filter> -> <owner>`.
pub fn wait_route(n: &Node, filter: &str, owner: &Node, present: bool, timeout: Duration) {
    let line = format!("{filter} -> {}", owner.name);
    let (ok, out) = poll_ctl(n, &["topics", "list"], timeout, |o| {
        o.lines().any(|l| l == line) == present
    });
    assert!(
        ok,
        "topics list on {} after {timeout:?} should {}contain {line:?}; got:\n{out}\n{}",
        n.name,
        if present { "" } else { "not " },
        tails(&[n, owner])
    );
}

/// A `name : value` line of `broker stats` / `broker metrics`.
pub fn stat(out: &str, key: &str) -> Option<i64> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

pub fn retained_count(n: &Node) -> Option<i64> {
    let (_, out) = n.ctl(&["retainer", "info"]);
    out.trim()
        .strip_prefix("Number of retained messages: ")
        .and_then(|v| v.parse().ok())
}

pub fn retained_topics(n: &Node) -> Vec<String> {
    let (_, out) = n.ctl(&["retainer", "topics"]);
    out.lines().skip(1).map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// MQTT clients (rumqttc, synchronous API; every wait bounded)
// ---------------------------------------------------------------------------

pub type Ev = Result<Event, ConnectionError>;

/// Runs a connection's event loop on its own thread and hands its events
/// (up to and including the first error) to a channel.
pub fn pump(mut conn: Connection) -> Receiver<Ev> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let err = ev.is_err();
            if tx.send(ev).is_err() || err {
                break;
            }
        }
    });
    rx
}

/// A v3.1.1 client whose events the test reads itself (a publisher whose
/// acknowledgements it counts), once its CONNACK came.
pub fn connected_client(n: &Node, id: &str) -> (Client, Receiver<Ev>) {
    let mut o = MqttOptions::new(id, n.host.clone(), n.mqtt_port);
    o.set_keep_alive(Duration::from_secs(60));
    let (c, conn) = Client::new(o, 300);
    let rx = pump(conn);
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_))))
        ),
        "{id}: no CONNACK from {}",
        n.name
    );
    (c, rx)
}

/// The PUBACKs `rx` brings, counted until there are `n` or `within`
/// passed.
pub fn count_pubacks(rx: &Receiver<Ev>, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut acked = 0;
    while acked < n && Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            rx.recv_timeout(Duration::from_millis(100))
        {
            acked += 1;
        }
    }
    acked
}

/// A v3.1.1 client with its received publishes buffered.
pub struct Mq {
    pub id: String,
    pub c: Client,
    pub rx: Receiver<Ev>,
    pub got: VecDeque<rumqttc::Publish>,
    pub error: Option<String>,
}

pub fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub fn mq(n: &Node, id: &str) -> Mq {
    let mut m = Mq::open(n, id, true);
    let ok = m.wait_for(Duration::from_secs(5), |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    });
    assert!(
        ok,
        "{id}: no CONNACK from {} in 5 s ({:?})",
        n.name, m.error
    );
    m
}

impl Mq {
    /// Starts a 3.1.1 client of `n` (keepalive 30 s) without waiting for
    /// its CONNACK.
    pub fn open(n: &Node, id: &str, clean_session: bool) -> Mq {
        let mut o = MqttOptions::new(id, n.host.clone(), n.mqtt_port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(clean_session);
        // rumqttc's default (10 KB each way) is below what some tests send.
        o.set_max_packet_size(1024 * 1024, 1024 * 1024);
        Mq::with(id, o, 1000)
    }

    /// A client with options of its own (`cap`: its request queue), not
    /// waiting for its CONNACK.
    pub fn with(id: &str, o: MqttOptions, cap: usize) -> Mq {
        let (c, conn) = Client::new(o, cap);
        Mq {
            id: id.to_string(),
            c,
            rx: pump(conn),
            got: VecDeque::new(),
            error: None,
        }
    }

    /// Handles events until `pred` matches one (true), the time is up or
    /// the connection fails (false). Publishes are buffered on the way.
    pub fn wait_for(&mut self, t: Duration, mut pred: impl FnMut(&Event) -> bool) -> bool {
        let deadline = Instant::now() + t;
        loop {
            if self.error.is_some() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(ev)) => {
                    if let Event::Incoming(Packet::Publish(p)) = &ev {
                        self.got.push_back(p.clone());
                    }
                    if pred(&ev) {
                        return true;
                    }
                }
                Ok(Err(e)) => {
                    self.error = Some(format!("{e:?}"));
                    return false;
                }
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => {
                    self.error = Some("event loop ended".into());
                    return false;
                }
            }
        }
    }

    pub fn sub(&mut self, filter: &str, q: u8) {
        self.c.subscribe(filter, qos(q)).expect("subscribe request");
        let mut rc = None;
        let ok = self.wait_for(Duration::from_secs(5), |e| match e {
            Event::Incoming(Packet::SubAck(a)) => {
                rc = Some(a.return_codes.clone());
                true
            }
            _ => false,
        });
        assert!(ok, "{}: no SUBACK for {filter} ({:?})", self.id, self.error);
        let rc = rc.unwrap_or_default();
        assert!(
            rc.iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            "{}: SUBACK for {filter}: {rc:?}",
            self.id
        );
    }

    pub fn unsub(&mut self, filter: &str) {
        self.c.unsubscribe(filter).expect("unsubscribe request");
        let ok = self.wait_for(Duration::from_secs(5), |e| {
            matches!(e, Event::Incoming(Packet::UnsubAck(_)))
        });
        assert!(
            ok,
            "{}: no UNSUBACK for {filter} ({:?})",
            self.id, self.error
        );
    }

    /// Publishes and waits for the end of the QoS flow (sent / PUBACK / PUBCOMP).
    pub fn publish(&mut self, topic: &str, q: u8, retain: bool, payload: &[u8]) {
        self.c
            .publish(topic, qos(q), retain, payload.to_vec())
            .expect("publish request");
        let ok = self.wait_for(Duration::from_secs(5), |e| match q {
            0 => matches!(e, Event::Outgoing(Outgoing::Publish(_))),
            1 => matches!(e, Event::Incoming(Packet::PubAck(_))),
            _ => matches!(e, Event::Incoming(Packet::PubComp(_))),
        });
        assert!(
            ok,
            "{}: publish to {topic} (QoS {q}) not completed in 5 s ({:?})",
            self.id, self.error
        );
    }

    /// Waits until at least `n` publishes arrived (or `t` passes), then
    /// returns and clears what arrived.
    pub fn collect(&mut self, n: usize, t: Duration) -> Vec<rumqttc::Publish> {
        let deadline = Instant::now() + t;
        while self.got.len() < n && Instant::now() < deadline && self.error.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_for(left, |e| matches!(e, Event::Incoming(Packet::Publish(_))));
        }
        self.got.drain(..).collect()
    }

    /// Everything that arrives within `t`.
    pub fn quiet(&mut self, t: Duration) -> Vec<rumqttc::Publish> {
        self.wait_for(t, |_| false);
        self.got.drain(..).collect()
    }
}

pub fn payloads(v: &[rumqttc::Publish]) -> Vec<String> {
    v.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// (local, peer) of every established TCP connection.
pub fn established() -> Vec<(SocketAddr, SocketAddr)> {
    let o = std::process::Command::new("ss")
        .args(["-tnH", "state", "established"])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let a: Vec<SocketAddr> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (a.len() == 2).then(|| (a[0], a[1]))
        })
        .collect()
}

/// A persistent (clean session false) client; whether its CONNACK said
/// session present.
pub fn mq_persistent(n: &Node, id: &str) -> (Mq, bool) {
    let mut m = Mq::open(n, id, false);
    let mut present = None;
    let ok = m.wait_for(Duration::from_secs(5), |e| match e {
        Event::Incoming(Packet::ConnAck(a)) => {
            present = Some(a.session_present);
            true
        }
        _ => false,
    });
    assert!(ok, "{id}: no CONNACK from {} ({:?})", n.name, m.error);
    (m, present.unwrap_or(false))
}

/// [`mq_persistent`] for a client coming back right after its node died:
/// the shard of its session may still be electing a leader, and the node
/// then refuses the connect (CONNACK 0x88 after 5 s, as a client should
/// expect); it connects again, three times at most.
pub fn mq_back(n: &Node, id: &str) -> (Mq, bool) {
    let mut last = String::new();
    for _ in 0..3 {
        let mut m = Mq::open(n, id, false);
        let mut got = None;
        m.wait_for(Duration::from_secs(10), |e| match e {
            Event::Incoming(Packet::ConnAck(a)) => {
                got = Some((a.code, a.session_present));
                true
            }
            _ => false,
        });
        match got {
            Some((rumqttc::ConnectReturnCode::Success, present)) => return (m, present),
            other => last = format!("{other:?} ({:?})", m.error),
        }
        drop(m);
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{id}: not connected to {} in three tries: {last}", n.name);
}

/// A will to watch: a subscriber of `{p}-will/#` on `nodes[1]`, routed
/// from `nodes[0]`, and a persistent 3.1.1 client `{p}-willer` connected
/// to `nodes[0]` whose will (QoS 1, `gone`) goes to `{p}-will/x`.
/// Returns (watcher, willer). The willer stays connected for a moment,
/// since a session's first record is not waited for before its CONNACK
/// (docs/durability.md).
pub fn watched_will(nodes: &[Node], p: &str) -> (Mq, Mq) {
    let mut w = mq(&nodes[1], &format!("{p}-watch"));
    w.sub(&format!("{p}-will/#"), 1);
    wait_route(
        &nodes[0],
        &format!("{p}-will/#"),
        &nodes[1],
        true,
        Duration::from_secs(10),
    );
    let (n, id) = (&nodes[0], format!("{p}-willer"));
    let mut o = MqttOptions::new(&id, n.host.clone(), n.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(false);
    o.set_last_will(rumqttc::LastWill::new(
        format!("{p}-will/x"),
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut m = Mq::with(&id, o, 100);
    assert!(
        m.wait_for(Duration::from_secs(5), |e| matches!(
            e,
            Event::Incoming(Packet::ConnAck(_))
        )),
        "{id}: no CONNACK from {} ({:?})",
        n.name,
        m.error
    );
    std::thread::sleep(Duration::from_millis(500));
    (w, m)
}

/// kill -9 of `nodes[0]`; returns once the second node sees it down and
/// the others running.
pub fn kill_first(nodes: &mut [Node]) {
    nodes[0].kill();
    let (first, rest) = nodes.split_at(1);
    let running: Vec<&Node> = rest.iter().collect();
    wait_status(
        &rest[0],
        &status_line(&running, &[&first[0]]),
        Duration::from_secs(15),
        &running,
    );
}

/// A persistent subscriber of `filter` on `n` that then goes away for
/// good, its session left offline there; whether its CONNACK said
/// session present.
pub fn subscribe_then_leave(n: &Node, id: &str, filter: &str, q: u8) -> bool {
    let (mut s, present) = mq_persistent(n, id);
    s.sub(filter, q);
    s.c.disconnect().expect("disconnect");
    // A dropped client's loop would still take, and acknowledge, what
    // comes next.
    assert!(!s.wait_for(Duration::from_secs(2), |e| matches!(
        e,
        Event::Incoming(Packet::Publish(_))
    )));
    present
}

/// `clients list` lines (cluster-wide) of client `id`.
pub fn client_lines(n: &Node, id: &str) -> Vec<String> {
    let (_, out) = n.ctl(&["clients", "list"]);
    out.lines()
        .filter(|l| l.starts_with(&format!("Client({id},")))
        .map(String::from)
        .collect()
}

/// `cluster status` of a cluster with replicants: EMQX's line, then the
/// role of every node listed.
pub fn status_with_roles(running: &[&Node], stopped: &[&Node], replicants: &[&Node]) -> String {
    let mut listed: Vec<&Node> = running.iter().chain(stopped.iter()).copied().collect();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let roles: Vec<String> = listed
        .iter()
        .map(|n| {
            let role = if replicants.iter().any(|r| r.name == n.name) {
                "replicant"
            } else {
                "core"
            };
            format!("'{}' => {role}", n.name)
        })
        .collect();
    format!(
        "{}\nRoles: #{{{}}}",
        status_line(running, stopped),
        roles.join(",")
    )
}

/// One shard's line of `ds info --local`.
#[derive(Debug)]
pub struct ShardRow {
    pub shard: u16,
    pub state: String,
    pub leader: String,
    pub voters: Vec<String>,
    pub learners: bool,
    pub lag: String,
}

pub fn ds_rows(n: &Node) -> Vec<ShardRow> {
    let (code, out) = n.ctl(&["ds", "info", "--local"]);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 9 {
                return None;
            }
            Some(ShardRow {
                shard: f[0].parse().ok()?,
                state: f[1].to_string(),
                leader: f[2].to_string(),
                voters: f[7].split(',').map(str::to_string).collect(),
                learners: f[8].starts_with('('),
                lag: f[f.len() - 1].to_string(),
            })
        })
        .collect()
}

/// Whether, as `n` sees it, every one of `shards` shards has a leader
/// among `members` whose voters are exactly `members`.
pub fn ds_settled(n: &Node, shards: u16, members: &[&Node]) -> bool {
    let want: std::collections::HashSet<String> = members.iter().map(|m| m.name.clone()).collect();
    let rows = ds_rows(n);
    rows.len() == shards as usize
        && rows.iter().all(|r| {
            want.contains(&r.leader)
                && !r.learners
                && r.voters
                    .iter()
                    .cloned()
                    .collect::<std::collections::HashSet<_>>()
                    == want
        })
}

/// The environment that runs the replicated durable storage's groups
/// (`durable_storage.messages.backend = builtin_raft`, with durable
/// sessions): `shards/replication_factor/n_sites`.
pub fn ds_env(spec: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = spec.split('/').collect();
    let [shards, rf, sites] = parts.as_slice() else {
        panic!("{spec}: expected SHARDS/RF/SITES");
    };
    let var = |k: &str, v: &str| {
        (
            format!("EMQX_DURABLE_STORAGE__MESSAGES__{k}"),
            v.to_string(),
        )
    };
    vec![
        var("BACKEND", "builtin_raft"),
        var("N_SHARDS", shards),
        var("REPLICATION_FACTOR", rf),
        var("N_SITES", sites),
        // The shards keep a copy of the session journal.
        (
            "EMQX_DURABLE_SESSIONS__ENABLE".to_string(),
            "true".to_string(),
        ),
    ]
}

/// Waits until every node of `nodes` sees each of `shards` shards led,
/// with exactly `nodes` as voters.
pub fn wait_ds_settled(nodes: &[&Node], shards: u16, timeout: Duration) {
    for n in nodes {
        assert!(
            super::wait_until(timeout, || ds_settled(n, shards, nodes)),
            "{}: every shard on {} cores: {:?}\n{}",
            n.name,
            nodes.len(),
            ds_rows(n),
            tails(nodes)
        );
    }
}

/// Nodes on the given loopback addresses with the durable storage's
/// groups (`ds_env(spec)`, `extra` in their config), each joined to the
/// first; returns once `shards` shards are on all of them.
pub fn ds_cluster(ips: &[u8], spec: &str, shards: u16, extra: &str) -> Vec<Node> {
    let env = ds_env(spec);
    let nodes: Vec<Node> = ips
        .iter()
        .map(|ip| {
            let mut n = prepare_with(*ip, extra);
            n.spawn(&env);
            n
        })
        .collect();
    for n in &nodes[1..] {
        join(n, &nodes[0]);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_ds_settled(&all, shards, Duration::from_secs(30));
    nodes
}
