//! Test harness: runs real `emqx-rs` processes on loopback with their own
//! ports and data directories, and kills them when the test ends (even on
//! panic, through `Drop`).

#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_emqx-rs");

/// A finished command's exit code, stdout and stderr, for failure messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A metric from `ctl broker metrics`; panics when the node has none of
/// that name.
pub fn metric(n: &Node, name: &str) -> u64 {
    let (_, out) = n.ctl(&["broker", "metrics"]);
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k.trim_end() == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{out}"))
}

/// Polls a rumqttc event loop until its SUBACK arrives (10 s at most).
pub async fn wait_suback(el: &mut rumqttc::EventLoop, who: &str) {
    use rumqttc::{Event, Packet};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{who}: no SUBACK");
        if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
            return;
        }
    }
}

/// A persistent session (MQTT 3.1.1, clean session false) of `client_id`
/// subscribed to `filter` at QoS 1, then left offline.
pub async fn offline_session(n: &Node, client_id: &str, filter: &str) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let mut o = MqttOptions::new(client_id, "127.0.0.1", n.mqtt_port);
    o.set_clean_session(false);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_suback(&mut el, client_id).await;
    c.disconnect().await.expect("disconnect");
    while el.poll().await.is_ok() {}
}

/// `emqx-rs bench pub -p <port> <args>`, its output discarded; the caller
/// spawns it or waits for it.
pub fn bench_pub(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["bench", "pub", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Claims port number `port` for this test process against every other
/// test process (the suite runs several test binaries at once, each
/// choosing ports): a lock on a file named after it in
/// `$TMPDIR/emqx-rs-test-ports`, held until the process exits, so two
/// binaries never pick the same port between one's check and its node's
/// bind. False if another process (or this one) holds it.
pub fn claim_port(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("emqx-rs-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        // No lock directory: the bind check alone, as before.
        return true;
    };
    if f.try_lock().is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    true
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range
/// (32768 and up) so an outgoing connection of another test cannot take it
/// between this check and the node's bind, claimed against the other test
/// binaries ([`claim_port`]), and never the same port twice in one test
/// binary.
pub fn free_port() -> u16 {
    const LO: u16 = 30_000;
    const SPAN: u16 = 2_700;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| NEXT.store((rand_u32() % u32::from(SPAN)) as u16, Ordering::Relaxed));
    for _ in 0..SPAN {
        let p = LO + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && claim_port(p) {
            return p;
        }
    }
    panic!("no free port in {LO}..{}", LO + SPAN);
}

/// One broker node under test.
pub struct Node {
    pub name: String,
    pub mqtt_port: u16,
    /// The HTTP API's port (`dashboard.listeners.http.bind`).
    pub api_port: u16,
    pub dist_port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub cookie: String,
    child: Option<Child>,
    /// The loopback address the node listens on.
    pub host: String,
}

/// Options for a node; `extra` is appended to the generated emqx.conf.
#[derive(Default, Clone)]
pub struct Opts {
    pub extra: String,
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Writes a config and starts `emqx-rs foreground`, waiting until the
    /// MQTT port accepts connections.
    pub fn start() -> Node {
        Node::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Node {
        let mut n = Node::prepare(&opts.extra);
        n.spawn(&opts.env);
        n
    }

    /// Creates the config without starting anything.
    pub fn prepare(extra: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt_port = free_port();
        let dist_port = free_port();
        let fwd_port = free_port();
        let api_port = free_port();
        let name = format!("t{}@127.0.0.1", dist_port);
        let cookie = "testcookie".to_string();
        let config = dir.path().join("emqx.conf");
        let text = format!(
            "node {{\n  name = \"{name}\"\n  cookie = \"{cookie}\"\n  data_dir = \"{data}\"\n  dist_listen_port = {dist_port}\n  forward_listen_port = {fwd_port}\n}}\nlisteners.tcp.default.bind = \"127.0.0.1:{mqtt_port}\"\ndashboard.listeners.http.bind = \"127.0.0.1:{api_port}\"\nlog.console.level = info\nlog.file.level = info\n{extra}\n",
            data = dir.path().join("data").display()
        );
        std::fs::write(&config, text).expect("write config");
        Node {
            name,
            mqtt_port,
            api_port,
            dist_port,
            dir,
            config,
            cookie,
            child: None,
            host: "127.0.0.1".into(),
        }
    }

    /// A cluster node on 127.0.0.`ip`, named `emqx<N>@127.0.0.<ip>` so its
    /// inter-node port (4370 + N) and forwarding port (5370 + N) follow
    /// from the name, as `cluster join <name>` needs. N is random with
    /// both ports free.
    pub fn prepare_cluster(ip: u8, extra: &str) -> Node {
        let host = format!("127.0.0.{ip}");
        let n = loop {
            let n: u16 = 100 + (rand_u32() % 9000) as u16;
            let free = |p: u16| TcpListener::bind((host.as_str(), p)).is_ok() && claim_port(p);
            if free(4370 + n) && free(5370 + n) {
                break n;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt_port = free_port();
        let api_port = free_port();
        let name = format!("emqx{n}@{host}");
        let cookie = "clustercookie".to_string();
        let config = dir.path().join("emqx.conf");
        let text = format!(
            "node {{\n  name = \"{name}\"\n  cookie = \"{cookie}\"\n  data_dir = \"{data}\"\n}}\nlisteners.tcp.default.bind = \"{host}:{mqtt_port}\"\ndashboard.listeners.http.bind = \"{host}:{api_port}\"\nlog.console.level = info\nlog.file.level = info\n{extra}\n",
            data = dir.path().join("data").display()
        );
        std::fs::write(&config, text).expect("write config");
        Node {
            name,
            mqtt_port,
            api_port,
            dist_port: 4370 + n,
            dir,
            config,
            cookie,
            child: None,
            host,
        }
    }

    /// Starts `emqx-rs foreground` with this node's config and `env`,
    /// stderr piped.
    fn spawn_foreground<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &self,
        env: &[(K, V)],
    ) -> Child {
        let mut cmd = Command::new(BIN);
        cmd.arg("foreground").arg("-config").arg(&self.config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn emqx-rs")
    }

    pub fn spawn(&mut self, env: &[(String, String)]) {
        let mut child = self.spawn_foreground(env);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(self.addr()).is_ok() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("emqx-rs exited at start ({st}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "emqx-rs did not open its MQTT port in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Drain stderr in the background so the node never blocks on it.
        if let Some(mut e) = child.stderr.take() {
            let log = self.dir.path().join("stderr.log");
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut f = std::fs::File::create(log).ok();
                while let Ok(n) = e.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Some(f) = f.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                }
            });
        }
        self.child = Some(child);
    }

    pub fn addr(&self) -> SocketAddr {
        let ip: std::net::IpAddr = self.host.parse().expect("loopback address");
        SocketAddr::new(ip, self.mqtt_port)
    }

    /// Runs `emqx-rs <args>` against this node's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("-config").arg(&self.config);
        cmd.stdin(Stdio::null());
        cmd.output().expect("run emqx-rs")
    }

    /// Runs `emqx-rs foreground` with this node's config (and `env`) for
    /// at most `timeout`: its exit status and stderr, or `None` (the node
    /// is then killed) if it was still running.
    pub fn foreground_exit(
        &self,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Option<(std::process::ExitStatus, String)> {
        let mut child = self.spawn_foreground(env);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Some((status, err))
    }

    /// `emqx-rs ctl <args>`: (exit code, stdout).
    pub fn ctl(&self, args: &[&str]) -> (i32, String) {
        let mut a = vec!["ctl"];
        a.extend_from_slice(args);
        let o = self.cli(&a);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// The node's stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three cluster nodes on 127.0.0.1-3 sharing one short name `emqx<N>`
/// (so one inter-node port, 4370 + N), as discovery by address needs:
/// every address found becomes `<my short name>@<address>`. Each gets
/// `extra` config; none is started.
pub fn nodes_sharing_a_short_name(extra: &str) -> Vec<Node> {
    let n = loop {
        let n: u16 = 100 + (rand_u32() % 9000) as u16;
        let free = |ip: &str, p: u16| TcpListener::bind((ip, p)).is_ok();
        if (1..=3).all(|i| {
            let ip = format!("127.0.0.{i}");
            free(&ip, 4370 + n) && free(&ip, 5370 + n)
        }) && claim_port(4370 + n)
            && claim_port(5370 + n)
        {
            break n;
        }
    };
    (1..=3u8)
        .map(|i| {
            let mut node = Node::prepare_cluster(i, extra);
            let name = format!("emqx{n}@127.0.0.{i}");
            let text = std::fs::read_to_string(&node.config).expect("config");
            let text = text.replace(&node.name, &name);
            std::fs::write(&node.config, text).expect("config");
            node.name = name;
            node.dist_port = 4370 + n;
            node
        })
        .collect()
}

/// Appends `text` to a node's config (before it starts).
pub fn add_config(n: &Node, text: &str) {
    let mut conf = std::fs::read_to_string(&n.config).expect("config");
    conf.push_str(text);
    std::fs::write(&n.config, conf).expect("config");
}

/// `ctl cluster status` as the node prints it.
pub fn cluster_status(n: &Node) -> String {
    n.ctl(&["cluster", "status"]).1
}

/// True when every node reports all of them running and none stopped.
pub fn all_running(nodes: &[Node]) -> bool {
    let mut names: Vec<String> = nodes.iter().map(|n| format!("'{}'", n.name)).collect();
    names.sort();
    let want = format!("running_nodes => [{}],stopped_nodes => []", names.join(","));
    nodes.iter().all(|n| cluster_status(n).contains(&want))
}

/// A random number from the OS-seeded std hasher (no rand dependency).
pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A raw TCP client for bad-input tests.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub fn connect(n: &Node) -> Raw {
        let s = TcpStream::connect(n.addr()).unwrap_or_else(|e| {
            panic!(
                "connect to {} ({}): {e}\nnode log:\n{}",
                n.addr(),
                n.name,
                n.log()
            )
        });
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Raw { s }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write");
    }

    /// Reads until EOF or timeout; returns what arrived and whether the
    /// server closed the connection.
    pub fn read_all(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let _ = self.s.set_read_timeout(Some(timeout));
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
                Err(_) => return (out, false),
            }
        }
    }

    /// Reads exactly `n` bytes (or panics after 5 s).
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v).expect("read_exact");
        v
    }
}

/// Bytes of a v5 CONNECT with a client id and clean start.
pub fn connect_v5(client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02];
    body.extend_from_slice(&keepalive.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

/// Bytes of a 3.1.1 CONNECT with a client id and clean session.
pub fn connect_v4(client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&keepalive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    frame(0x10, &body)
}

/// A packet with a fixed header byte and a body (remaining length encoded).
pub fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![header];
    v.extend(varint(body.len()));
    v.extend_from_slice(body);
    v
}

/// `n` as an MQTT variable byte integer.
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            return v;
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A variable byte integer (remaining length, property length) at `*i`,
/// advancing `*i` past it.
pub fn read_varint(b: &[u8], i: &mut usize) -> usize {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let x = b[*i];
        *i += 1;
        n |= usize::from(x & 0x7F) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            return n;
        }
    }
}

/// A v5 property block as (id, value bytes).
pub fn parse_props(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let id = b[i];
        i += 1;
        let n = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => {
                let s = i;
                read_varint(b, &mut i);
                out.push((id, b[s..i].to_vec()));
                continue;
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                2 + u16::from_be_bytes([b[i], b[i + 1]]) as usize
            }
            0x26 => {
                let k = 2 + u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                k + 2 + u16::from_be_bytes([b[i + k], b[i + k + 1]]) as usize
            }
            other => panic!("unknown property 0x{other:02X} in {b:02X?}"),
        };
        out.push((id, b[i..i + n].to_vec()));
        i += n;
    }
    out
}
