//! The `ssl` listener end to end: MQTT over TLS against the real `emqx-rs`
//! binary with clients that share no code with it (Debian's
//! `mosquitto_pub` / `mosquitto_sub`, `openssl s_client`, Python's
//! paho-mqtt), and certificates and expected values made by independent
//! tools (the openssl command line, `md5sum`, `base64`).
//!
//! Nothing is skipped: without the tools these tests fail and say how to
//! get them (scripts/test.sh installs them).

mod common;

use common::pki::{self, Issued};
use common::{free_port, path_str, wait_until, Node, Opts};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Prefix of the lines `mosquitto_sub -F` prints for a message, to tell
/// them apart from the `-d` debug lines on the same stdout.
const MSG: &str = "MSG|";

/// Upper bound of every "this should happen" wait.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates (openssl CLI only)
// ---------------------------------------------------------------------------

/// `<name>.crt` / `<name>.key` in `dir` for the full `subject`
/// (`/C=SE/O=Acme/CN=device-1`), signed by `ca` with the extensions `ext`:
/// [`pki::issue`] with a subject of more than a CN.
fn issue_subject(dir: &Path, ca: &Issued, name: &str, subject: &str, ext: &str) -> Issued {
    let (key, csr, cert, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    pki::openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-utf8",
            "-subj",
            subject,
        ],
    );
    std::fs::write(dir.join(&extfile), ext).expect("extension file");
    let (ca_cert, ca_key) = (path_str(&ca.cert), path_str(&ca.key));
    pki::openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &cert,
        ],
    );
    Issued {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A client certificate `<name>.crt` signed by `ca` that was valid for one
/// day in January 2020. OpenSSL 3.0's `x509 -req` cannot back-date
/// (`-not_before` came in 3.4), so this goes through `openssl ca`, whose
/// `-startdate` / `-enddate` take any dates, with a minimal CA config.
fn issue_expired(dir: &Path, ca: &Issued, name: &str) -> Issued {
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let db = dir.join(format!("{name}-ca-db"));
    std::fs::create_dir_all(db.join("new")).expect("ca db dir");
    std::fs::write(db.join("index.txt"), "").expect("ca index");
    std::fs::write(db.join("serial"), "1000\n").expect("ca serial");
    let cnf = format!(
        "[ ca ]\ndefault_ca = test_ca\n\
         [ test_ca ]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}/new\nserial = {db}/serial\n\
         default_md = sha256\npolicy = any\nx509_extensions = client_ext\nunique_subject = no\n\
         [ any ]\ncommonName = supplied\n\
         [ client_ext ]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n",
        db = db.display()
    );
    let cnf_file = format!("{name}-ca.cnf");
    std::fs::write(dir.join(&cnf_file), cnf).expect("ca config");
    pki::openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let (ca_cert, ca_key) = (path_str(&ca.cert), path_str(&ca.key));
    pki::openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &cnf_file,
            "-cert",
            &ca_cert,
            "-keyfile",
            &ca_key,
            "-in",
            &csr,
            "-out",
            &cert,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ],
    );
    // Make sure it really is expired, by openssl's own judgement.
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(["verify", "-CAfile", &ca_cert, &cert])
        .output()
        .expect("openssl verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success() && text.contains("certificate has expired"),
        "the back-dated certificate is not seen as expired: {text}"
    );
    Issued {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A CA, a server certificate for 127.0.0.1 (CN `a.test`) and a client
/// certificate (CN `client-1`), in a temporary directory.
struct Certs {
    dir: tempfile::TempDir,
    ca: Issued,
    server: Issued,
    client: Issued,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::make_ca(dir.path(), "main");
        let server = pki::issue(dir.path(), &ca, "server", "a.test", pki::SERVER_EXT);
        let client = pki::issue(dir.path(), &ca, "client", "client-1", pki::CLIENT_EXT);
        Certs {
            dir,
            ca,
            server,
            client,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A second CA, unknown to the broker and to the clients.
    fn other_ca(&self) -> Issued {
        pki::make_ca(self.path(), "other")
    }

    /// `mosquitto_*` arguments: verify the server with our CA.
    fn one_way(&self) -> Vec<String> {
        vec!["--cafile".into(), path_str(&self.ca.cert)]
    }

    /// `mosquitto_*` arguments: verify the server and show `client`.
    fn mutual(&self, client: &Issued) -> Vec<String> {
        let mut v = self.one_way();
        v.extend([
            "--cert".into(),
            path_str(&client.cert),
            "--key".into(),
            path_str(&client.key),
        ]);
        v
    }
}

/// Runs `sh -c script` in `dir` (for md5sum / base64 pipelines); its
/// trimmed stdout, or a panic with its stderr.
fn sh(dir: &Path, script: &str) -> String {
    let o = Command::new("sh")
        .current_dir(dir)
        .args(["-c", script])
        .output()
        .expect("run sh");
    assert!(
        o.status.success(),
        "sh -c {script:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

/// A node with its `tcp` listener (as the harness makes it) and
/// `listeners.ssl.default` on `ssl_port`.
struct TlsNode {
    node: Node,
    ssl_port: u16,
}

impl TlsNode {
    /// Starts a node whose ssl listener serves `cert` / `key` with the
    /// extra `ssl_options` lines `ssl_opts`; `extra` is more config.
    /// Returns once the ssl port accepts connections too (the harness
    /// only waits for the tcp one).
    fn start(cert: &Path, key: &Path, ssl_opts: &str, extra: &str) -> TlsNode {
        let ssl_port = free_port();
        let conf = format!(
            "listeners.ssl.default {{\n  bind = \"127.0.0.1:{ssl_port}\"\n  ssl_options {{\n    \
             certfile = \"{}\"\n    keyfile = \"{}\"\n{ssl_opts}\n  }}\n}}\n{extra}\n",
            cert.display(),
            key.display()
        );
        let node = Node::start_with(Opts {
            extra: conf,
            ..Default::default()
        });
        let up = wait_until(WAIT, || TcpStream::connect(("127.0.0.1", ssl_port)).is_ok());
        assert!(
            up,
            "the ssl listener on {ssl_port} did not open in {WAIT:?}; log: {}",
            node.log()
        );
        TlsNode { node, ssl_port }
    }

    /// The node's log with the ANSI colours taken out.
    fn log(&self) -> String {
        strip_ansi(&self.node.log())
    }

    /// `ctl clients list`, asserting it works.
    fn clients(&self) -> String {
        let (code, out) = self.node.ctl(&["clients", "list"]);
        assert_eq!(code, 0, "ctl clients list: {out}");
        out
    }

    /// Waits until `ctl clients list` has a line containing `want`.
    fn wait_client(&self, want: &str) {
        let mut last = String::new();
        let found = wait_until(WAIT, || {
            last = self.clients();
            last.contains(want)
        });
        assert!(
            found,
            "no client with {want:?} in `ctl clients list`:\n{last}"
        );
    }

    /// Waits until the log has at least `n` lines containing `what`.
    fn wait_log(&self, what: &str, n: usize) -> String {
        let mut log = String::new();
        let ok = wait_until(WAIT, || {
            log = self.log();
            count(&log, what) >= n
        });
        assert!(
            ok,
            "not {n} log lines with {what:?} in {WAIT:?}; log:\n{log}"
        );
        log
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

fn require_tools() {
    for (tool, arg) in [
        ("mosquitto_pub", "--help"),
        ("mosquitto_sub", "--help"),
        ("openssl", "version"),
        ("timeout", "--version"),
        ("stdbuf", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            ok,
            "{tool} not found: these tests need mosquitto-clients, openssl and coreutils; \
             run scripts/test.sh (it installs them)"
        );
    }
}

/// A running `mosquitto_sub` whose stdout lines arrive on a channel.
struct Sub {
    child: Child,
    lines: Receiver<String>,
    name: String,
}

impl Sub {
    /// Starts `mosquitto_sub -d -F 'MSG|%t|%p'` on `port` with `args` and
    /// waits until it has its SUBACK, so that publishing afterwards cannot
    /// race the subscription.
    fn start(n: &TlsNode, port: u16, args: &[String]) -> Sub {
        // Line-buffered stdout (stdbuf, coreutils), or the `-d` lines sit
        // in a pipe buffer and the SUBACK is never seen.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-d"]);
        cmd.args(["-p", &port.to_string(), "-F", &format!("{MSG}%t|%p")]);
        cmd.args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let name = format!("mosquitto_sub -p {port} {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name} ({e}): run scripts/test.sh"));
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("mosquitto_sub stdout");
        let err = child.stderr.take().expect("mosquitto_sub stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        let s = Sub { child, lines, name };
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = l.contains("received SUBACK");
                    seen.push(l);
                    if done {
                        return s;
                    }
                }
                Err(_) => panic!(
                    "{}: no SUBACK in {WAIT:?}; output: {seen:#?}\nnode log:\n{}",
                    s.name,
                    n.log()
                ),
            }
        }
    }

    /// The next `n` messages as `topic|payload`, within [`WAIT`].
    fn messages(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let (mut got, mut other) = (Vec::new(), Vec::new());
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => match l.strip_prefix(MSG) {
                    Some(m) => got.push(m.to_string()),
                    None => other.push(l),
                },
                Err(_) => panic!(
                    "{}: {} of {n} messages in {WAIT:?}: {got:?}; other output: {other:#?}",
                    self.name,
                    got.len()
                ),
            }
        }
        got
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p <port> <args>`, bounded to 20 s by
/// coreutils' `timeout`.
fn mosquitto_pub(port: u16, args: &[String]) -> Output {
    Command::new("timeout")
        .args(["-k", "2", "20", "mosquitto_pub", "-h", "127.0.0.1", "-d"])
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mosquitto_pub (run scripts/test.sh to install mosquitto-clients)")
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `mosquitto_pub` that must succeed.
fn publish(port: u16, args: &[String]) {
    let o = mosquitto_pub(port, args);
    assert!(
        o.status.success(),
        "mosquitto_pub -p {port} {} failed ({}): {}",
        args.join(" "),
        o.status,
        output_text(&o)
    );
}

/// `mosquitto_pub` that must fail (exit status neither 0 nor timeout's
/// 124: the client gave up by itself).
fn publish_fails(port: u16, args: &[String]) -> String {
    let o = mosquitto_pub(port, args);
    let text = output_text(&o);
    assert!(
        !o.status.success() && o.status.code() != Some(124),
        "mosquitto_pub -p {port} {} should have failed by itself, got {}: {text}",
        args.join(" "),
        o.status
    );
    text
}

/// `args` with these strings appended (test readability).
fn with(args: &[String], more: &[&str]) -> Vec<String> {
    let mut v = args.to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

/// What one `openssl s_client` run did.
struct Probe {
    status: ExitStatus,
    out: Vec<u8>,
    err: String,
}

impl Probe {
    /// The broker answered the MQTT 3.1.1 CONNECT sent through the TLS
    /// session with CONNACK (accepted): `20 02 00 00` in the data.
    fn connack(&self) -> bool {
        self.out.windows(4).any(|w| w == [0x20, 0x02, 0x00, 0x00])
    }

    fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            String::from_utf8_lossy(&self.out),
            self.err
        )
    }

    /// A full MQTT exchange over TLS happened.
    fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success() && self.connack(),
            "{what}: expected a TLS session with a CONNACK:\n{}",
            self.text()
        );
    }

    /// The TLS session failed: no CONNACK, s_client failed by itself, and
    /// its output has every string of `expect`.
    fn assert_refused(&self, what: &str, expect: &[&str]) {
        let text = self.text();
        assert!(
            !self.connack() && !self.status.success() && self.status.code() != Some(124),
            "{what}: expected s_client to fail without a CONNACK:\n{text}"
        );
        for e in expect {
            assert!(text.contains(e), "{what}: no {e:?} in:\n{text}");
        }
    }
}

/// `openssl s_client -connect 127.0.0.1:<port> <args>` sending a 3.1.1
/// CONNECT and a DISCONNECT as soon as the handshake is done, then reading
/// (`-ign_eof`) until the server closes. The server certificate must
/// verify (`-verify_return_error`) and be for 127.0.0.1. At most 15 s.
fn s_client(port: u16, args: &[&str]) -> Probe {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!("sclient-{}", N.fetch_add(1, Ordering::Relaxed));
    let mut input = common::connect_v4(&id, 60);
    input.extend_from_slice(&[0xE0, 0x00]);
    s_client_sending(port, args, &input)
}

/// [`s_client`] sending `input` (MQTT packets) instead.
fn s_client_sending(port: u16, args: &[&str], input: &[u8]) -> Probe {
    let mut child = Command::new("timeout")
        .args(["-k", "2", "15", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-ign_eof",
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    {
        let mut stdin = child.stdin.take().expect("s_client stdin");
        // A refused handshake may close the pipe first; that is fine.
        let _ = stdin.write_all(input);
    }
    let o = child.wait_with_output().expect("s_client output");
    Probe {
        status: o.status,
        out: o.stdout,
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The CA argument of s_client for `c`.
fn ca_arg(c: &Certs) -> [String; 2] {
    ["-CAfile".into(), path_str(&c.ca.cert)]
}

/// s_client arguments: our CA and `client`'s certificate and key.
fn client_args(c: &Certs, client: &Issued) -> Vec<String> {
    let mut v = ca_arg(c).to_vec();
    v.extend([
        "-cert".into(),
        path_str(&client.cert),
        "-key".into(),
        path_str(&client.key),
    ]);
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------
// 1. One-way TLS
// ---------------------------------------------------------------------------

/// mosquitto clients verifying the server with `--cafile` (no client
/// certificate) publish and subscribe over the ssl listener, and the
/// same broker delivers across transports: TLS to a plain-TCP
/// subscriber and TCP to a TLS subscriber.
#[test]
fn one_way_tls_delivers_within_and_across_transports() {
    require_tools();
    let c = Certs::new();
    let n = TlsNode::start(&c.server.cert, &c.server.key, "", "");
    let tls = c.one_way();
    let mut tls_sub = Sub::start(
        &n,
        n.ssl_port,
        &with(&tls, &["-i", "tls-sub", "-q", "1", "-t", "oneway/#"]),
    );
    let mut tcp_sub = Sub::start(
        &n,
        n.node.mqtt_port,
        &with(&[], &["-i", "tcp-sub", "-q", "1", "-t", "oneway/#"]),
    );
    publish(
        n.ssl_port,
        &with(
            &tls,
            &[
                "-i", "tls-pub", "-q", "1", "-t", "oneway/a", "-m", "over tls",
            ],
        ),
    );
    assert_eq!(tls_sub.messages(1), ["oneway/a|over tls"]);
    assert_eq!(tcp_sub.messages(1), ["oneway/a|over tls"]);
    publish(
        n.node.mqtt_port,
        &with(&[], &["-q", "1", "-t", "oneway/b", "-m", "over tcp"]),
    );
    assert_eq!(tls_sub.messages(1), ["oneway/b|over tcp"]);
    assert_eq!(tcp_sub.messages(1), ["oneway/b|over tcp"]);
    // Both subscribers are one broker's clients.
    n.wait_client("Client(tls-sub, username=undefined, peername=127.0.0.1:");
    n.wait_client("Client(tcp-sub, username=undefined, peername=127.0.0.1:");
    // openssl's view of the same listener: our server certificate, TLS 1.3
    // by default, and MQTT inside.
    let p = s_client(n.ssl_port, &refs(&ca_arg(&c)));
    p.assert_ok("s_client with the CA");
    let text = p.text();
    assert!(text.contains("CN = a.test"), "server certificate:\n{text}");
    assert!(text.contains("TLSv1.3"), "protocol:\n{text}");
}

// ---------------------------------------------------------------------------
// 2. Mutual TLS
// ---------------------------------------------------------------------------

/// `verify = verify_peer` with `fail_if_no_peer_cert = true`: a client
/// certificate from the configured CA gets in; no certificate, one from
/// another CA or an expired one fails the handshake, and none of that
/// disturbs the connected subscriber.
#[test]
fn mutual_tls_requires_a_valid_client_certificate() {
    require_tools();
    let c = Certs::new();
    let other = c.other_ca();
    let stranger = pki::issue(c.path(), &other, "stranger", "stranger", pki::CLIENT_EXT);
    let expired = issue_expired(c.path(), &c.ca, "expired");
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = true",
        c.ca.cert.display()
    );
    let mut n = TlsNode::start(&c.server.cert, &c.server.key, &opts, "");
    let good = c.mutual(&c.client);
    let mut sub = Sub::start(
        &n,
        n.ssl_port,
        &with(&good, &["-i", "mtls-sub", "-q", "1", "-t", "mtls/#"]),
    );
    publish(
        n.ssl_port,
        &with(&good, &["-q", "1", "-t", "mtls/1", "-m", "with cert"]),
    );
    assert_eq!(sub.messages(1), ["mtls/1|with cert"]);
    s_client(n.ssl_port, &refs(&client_args(&c, &c.client))).assert_ok("s_client with a good cert");

    // No certificate: TLS 1.3 lets the client finish its side, then the
    // server's certificate_required alert arrives.
    s_client(n.ssl_port, &refs(&ca_arg(&c))).assert_refused(
        "s_client without a certificate",
        &["alert certificate required"],
    );
    // ... and in TLS 1.2 the handshake itself fails.
    let mut v12 = ca_arg(&c).to_vec();
    v12.push("-tls1_2".into());
    s_client(n.ssl_port, &refs(&v12)).assert_refused("TLS 1.2 without a certificate", &["alert"]);
    publish_fails(
        n.ssl_port,
        &with(&c.one_way(), &["-t", "mtls/1", "-m", "no cert"]),
    );

    // A certificate from a CA the broker does not trust.
    s_client(n.ssl_port, &refs(&client_args(&c, &stranger)))
        .assert_refused("s_client with another CA's cert", &["alert unknown ca"]);
    publish_fails(
        n.ssl_port,
        &with(&c.mutual(&stranger), &["-t", "mtls/1", "-m", "stranger"]),
    );

    // An expired certificate from the right CA.
    s_client(n.ssl_port, &refs(&client_args(&c, &expired))).assert_refused(
        "s_client with an expired cert",
        &["alert certificate expired"],
    );
    publish_fails(
        n.ssl_port,
        &with(&c.mutual(&expired), &["-t", "mtls/1", "-m", "expired"]),
    );

    // The broker said why, and the subscriber saw none of the refused
    // publishes: the next message is the one published now.
    let log = n.wait_log("TLS handshake failed", 6);
    assert!(log.contains("peer sent no certificates"), "log:\n{log}");
    publish(
        n.ssl_port,
        &with(&good, &["-q", "1", "-t", "mtls/2", "-m", "after"]),
    );
    assert_eq!(sub.messages(1), ["mtls/2|after"]);
    assert!(n.node.alive(), "node died");
}

/// `verify_peer` with `fail_if_no_peer_cert = false`: a client without a
/// certificate gets in, but a certificate that is shown is still checked.
#[test]
fn verify_peer_without_fail_if_no_peer_cert_lets_anonymous_clients_in() {
    require_tools();
    let c = Certs::new();
    let other = c.other_ca();
    let stranger = pki::issue(c.path(), &other, "stranger", "stranger", pki::CLIENT_EXT);
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = false",
        c.ca.cert.display()
    );
    let n = TlsNode::start(&c.server.cert, &c.server.key, &opts, "");
    let mut sub = Sub::start(
        &n,
        n.ssl_port,
        &with(&c.one_way(), &["-i", "anon-sub", "-q", "1", "-t", "anon/#"]),
    );
    publish(
        n.ssl_port,
        &with(&c.one_way(), &["-q", "1", "-t", "anon/1", "-m", "no cert"]),
    );
    publish(
        n.ssl_port,
        &with(
            &c.mutual(&c.client),
            &["-q", "1", "-t", "anon/2", "-m", "cert"],
        ),
    );
    assert_eq!(sub.messages(2), ["anon/1|no cert", "anon/2|cert"]);
    s_client(n.ssl_port, &refs(&ca_arg(&c))).assert_ok("s_client without a certificate");
    s_client(n.ssl_port, &refs(&client_args(&c, &stranger)))
        .assert_refused("s_client with another CA's cert", &["alert unknown ca"]);
    n.wait_client("Client(anon-sub, username=undefined,");
}

// ---------------------------------------------------------------------------
// 3. peer_cert_as_username / peer_cert_as_clientid
// ---------------------------------------------------------------------------

/// The subject of the identity certificates, in certificate order.
const DEVICE_SUBJECT: &str = "/C=SE/ST=Stockholm/L=Kista/O=Acme/OU=Devices/CN=device-1";

/// A node with `mqtt.peer_cert_as_username = <user>` and
/// `peer_cert_as_clientid = <id>`, where clients may come without a
/// certificate; and a client certificate for `subject`. The client
/// connects with `mosquitto_sub -i own-id -u own-user` and the
/// certificate; `ctl clients list` must show the client id and username
/// `expect` computes from the certificate.
fn cert_identity(
    subject: &str,
    user: &str,
    id: &str,
    expect: impl Fn(&Path, &Issued) -> (String, String),
) {
    require_tools();
    let c = Certs::new();
    let dev = issue_subject(c.path(), &c.ca, "device", subject, pki::CLIENT_EXT);
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = false",
        c.ca.cert.display()
    );
    let extra = format!("mqtt.peer_cert_as_username = {user}\nmqtt.peer_cert_as_clientid = {id}");
    let n = TlsNode::start(&c.server.cert, &c.server.key, &opts, &extra);
    let (want_id, want_user) = expect(c.path(), &dev);
    let mut sub = Sub::start(
        &n,
        n.ssl_port,
        &with(
            &c.mutual(&dev),
            &["-i", "own-id", "-u", "own-user", "-q", "1", "-t", "ident/#"],
        ),
    );
    n.wait_client(&format!(
        "Client({want_id}, username={want_user}, peername=127.0.0.1:"
    ));
    let list = n.clients();
    assert!(
        !list.contains("own-id") && !list.contains("own-user"),
        "the CONNECT's client id / username should be replaced:\n{list}"
    );
    // The client works under that identity.
    publish(
        n.ssl_port,
        &with(&c.one_way(), &["-q", "1", "-t", "ident/x", "-m", "hi"]),
    );
    assert_eq!(sub.messages(1), ["ident/x|hi"]);
    // A client without a certificate keeps what its CONNECT says.
    let _anon = Sub::start(
        &n,
        n.ssl_port,
        &with(
            &c.one_way(),
            &["-i", "anon-id", "-u", "anon-user", "-t", "ident/#"],
        ),
    );
    n.wait_client("Client(anon-id, username=anon-user, peername=127.0.0.1:");
}

/// The subject as openssl prints it with `sep_comma_plus` (no spaces, in
/// certificate order), e.g. `C=SE,O=Acme,CN=device-1`.
fn openssl_dn(dir: &Path, cert: &Issued) -> String {
    let s = sh(
        dir,
        &format!(
            "openssl x509 -in '{}' -noout -subject -nameopt sep_comma_plus,utf8",
            cert.cert.display()
        ),
    );
    s.strip_prefix("subject=")
        .unwrap_or_else(|| panic!("openssl subject output: {s:?}"))
        .to_string()
}

/// `md5sum` of the certificate's DER.
fn openssl_md5(dir: &Path, cert: &Issued) -> String {
    let s = sh(
        dir,
        &format!(
            "openssl x509 -in '{}' -outform DER | md5sum",
            cert.cert.display()
        ),
    );
    let hex = s.split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(hex.len(), 32, "md5sum output: {s:?}");
    hex
}

/// `base64 -w0` of the certificate's DER.
fn openssl_pem_b64(dir: &Path, cert: &Issued) -> String {
    let s = sh(
        dir,
        &format!(
            "openssl x509 -in '{}' -outform DER | base64 -w0",
            cert.cert.display()
        ),
    );
    assert!(s.len() > 100, "base64 output: {s:?}");
    s
}

#[test]
fn peer_cert_as_username_cn_and_clientid_dn() {
    cert_identity(DEVICE_SUBJECT, "cn", "dn", |dir, dev| {
        let dn = openssl_dn(dir, dev);
        assert_eq!(
            dn, "C=SE,ST=Stockholm,L=Kista,O=Acme,OU=Devices,CN=device-1",
            "openssl's own rendering of the subject"
        );
        (dn, "device-1".into())
    });
}

#[test]
fn peer_cert_as_username_dn_and_clientid_md5() {
    cert_identity(DEVICE_SUBJECT, "dn", "md5", |dir, dev| {
        (openssl_md5(dir, dev), openssl_dn(dir, dev))
    });
}

#[test]
fn peer_cert_as_username_md5_and_clientid_pem() {
    cert_identity(DEVICE_SUBJECT, "md5", "pem", |dir, dev| {
        (openssl_pem_b64(dir, dev), openssl_md5(dir, dev))
    });
}

/// A non-ASCII CN (a UTF8String) comes through as the same UTF-8 text.
#[test]
fn peer_cert_as_clientid_cn_keeps_utf8() {
    cert_identity("/O=Acme/CN=gerät-ü1", "dn", "cn", |dir, dev| {
        ("gerät-ü1".into(), openssl_dn(dir, dev))
    });
}

/// A resumed TLS 1.3 session carries the certificate of the handshake it
/// resumes: the client sends no certificate the second time, yet gets in
/// (with `fail_if_no_peer_cert = true`) under the identity taken from
/// that certificate.
#[test]
fn peer_cert_identity_survives_tls_session_resumption() {
    require_tools();
    let c = Certs::new();
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = true",
        c.ca.cert.display()
    );
    let extra = "mqtt.peer_cert_as_username = cn\nmqtt.peer_cert_as_clientid = cn";
    let n = TlsNode::start(&c.server.cert, &c.server.key, &opts, extra);
    let sess = path_str(&c.path().join("session.pem"));
    let mut first = client_args(&c, &c.client);
    first.extend(["-sess_out".to_string(), sess.clone()]);
    let p = s_client(n.ssl_port, &refs(&first));
    p.assert_ok("first connection, with the certificate");
    assert!(p.text().contains("New, TLSv1.3"), "{}", p.text());
    assert!(
        wait_until(WAIT, || n.clients().trim() == "No clients."),
        "the first, clean session should be gone: {}",
        n.clients()
    );

    // A 3.1.1 CONNECT keeping its session (clean session 0), so that
    // `clients list` shows who it was after the DISCONNECT.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60];
    body.extend_from_slice(&10u16.to_be_bytes());
    body.extend_from_slice(b"resume-own");
    let mut input = common::frame(0x10, &body);
    input.extend_from_slice(&[0xE0, 0x00]);
    let mut again = ca_arg(&c).to_vec();
    again.extend(["-sess_in".to_string(), sess]);
    let p = s_client_sending(n.ssl_port, &refs(&again), &input);
    p.assert_ok("resumed connection, without the certificate");
    assert!(p.text().contains("Reused, TLSv1.3"), "{}", p.text());
    n.wait_client("Client(client-1, username=client-1, ");
    assert!(!n.clients().contains("resume-own"), "{}", n.clients());
}

// ---------------------------------------------------------------------------
// 4. Bad clients on the TLS port
// ---------------------------------------------------------------------------

/// Reads from `s` until EOF or a reset (true), or `limit` passes (false);
/// also what arrived.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return (true, got)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, got)
            }
            // A signal landed during the read (the harness's children
            // come and go): read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Plain MQTT on a TLS port, handshakes that never finish
/// (`handshake_timeout = 1s` on a second ssl listener, `strict`) and a
/// client that does not trust the server's CA: each fails alone; the node
/// runs on and its connected TLS and TCP subscribers still get messages.
///
/// The healthy clients use the default listener (15 s handshake timeout):
/// on a loaded machine a mosquitto client can need more than a second
/// between its TCP connect and its ClientHello (libmosquitto builds its
/// TLS context after connecting), which a 1 s limit would rightly cut.
#[test]
fn bad_clients_on_the_tls_port_leave_the_node_and_its_clients_alone() {
    require_tools();
    let c = Certs::new();
    let strict_port = free_port();
    let strict = format!(
        "listeners.ssl.strict {{\n  bind = \"127.0.0.1:{strict_port}\"\n  ssl_options {{\n    \
         certfile = \"{}\"\n    keyfile = \"{}\"\n    handshake_timeout = 1s\n  }}\n}}\n",
        c.server.cert.display(),
        c.server.key.display()
    );
    let mut n = TlsNode::start(&c.server.cert, &c.server.key, "", &strict);
    assert!(
        wait_until(WAIT, || TcpStream::connect(("127.0.0.1", strict_port))
            .is_ok()),
        "listener ssl:strict did not open"
    );
    let mut tls_sub = Sub::start(
        &n,
        n.ssl_port,
        &with(
            &c.one_way(),
            &["-i", "healthy-tls", "-q", "1", "-t", "bad/#"],
        ),
    );
    let mut tcp_sub = Sub::start(
        &n,
        n.node.mqtt_port,
        &with(&[], &["-i", "healthy-tcp", "-q", "1", "-t", "bad/#"]),
    );
    let connect = |port: u16| {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to an ssl port");
        s.set_write_timeout(Some(WAIT)).expect("write timeout");
        s
    };

    // Plain MQTT CONNECT bytes: not a TLS record, the connection is
    // closed at once and no MQTT answer comes back.
    for port in [n.ssl_port, strict_port] {
        let mut s = connect(port);
        s.write_all(&common::connect_v4("plain-on-tls", 60))
            .expect("write CONNECT");
        let (closed, got) = read_to_close(&mut s, Duration::from_secs(5));
        assert!(
            closed,
            "plain CONNECT on TLS port {port}: not closed in 5 s"
        );
        assert!(
            got.first() != Some(&0x20),
            "plain CONNECT on TLS port {port} got an MQTT answer: {got:02X?}"
        );
    }
    // The same with mosquitto_pub forgetting --cafile.
    publish_fails(n.ssl_port, &with(&[], &["-t", "bad/x", "-m", "plain"]));

    // Handshakes that never finish: nothing at all, and half a
    // ClientHello (a record header announcing 512 bytes, then 10).
    let started = Instant::now();
    let mut silent = connect(strict_port);
    let mut half = connect(strict_port);
    let mut patient = connect(n.ssl_port);
    let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    partial.extend_from_slice(&[0x01, 0x00, 0x01, 0xFC, 0x03, 0x03, 0, 0, 0, 0]);
    half.write_all(&partial).expect("write half a ClientHello");
    for (what, s) in [("silent", &mut silent), ("half ClientHello", &mut half)] {
        let (closed, got) = read_to_close(s, Duration::from_secs(5));
        let took = started.elapsed();
        assert!(
            closed,
            "{what}: not closed within 5 s with handshake_timeout = 1s (got {got:02X?})"
        );
        assert!(
            took >= Duration::from_millis(900),
            "{what}: closed after {took:?}, before the 1 s handshake timeout"
        );
    }
    n.wait_log("listener ssl:strict: TLS handshake not done within 1s", 2);
    // The default listener's 15 s is its own: its silent client is still
    // connected.
    let (closed, _) = read_to_close(&mut patient, Duration::from_millis(200));
    assert!(
        !closed,
        "the default listener (15 s handshake timeout) closed a silent client after {:?}",
        started.elapsed()
    );
    drop(patient);

    // A client that verifies the server with another CA refuses it.
    let other = c.other_ca();
    let wrong = ["-CAfile".to_string(), path_str(&other.cert)];
    s_client(n.ssl_port, &refs(&wrong)).assert_refused(
        "s_client trusting another CA",
        &["certificate verify failed"],
    );
    publish_fails(
        n.ssl_port,
        &with(
            &["--cafile".to_string(), path_str(&other.cert)],
            &["-t", "bad/x", "-m", "wrong ca"],
        ),
    );

    // The node and its clients are fine.
    assert!(n.node.alive(), "node died; log:\n{}", n.log());
    publish(
        n.ssl_port,
        &with(
            &c.one_way(),
            &["-q", "1", "-t", "bad/after", "-m", "still here"],
        ),
    );
    assert_eq!(tls_sub.messages(1), ["bad/after|still here"]);
    assert_eq!(tcp_sub.messages(1), ["bad/after|still here"]);
    n.wait_client("Client(healthy-tls,");
}

// ---------------------------------------------------------------------------
// 5. versions and ciphers
// ---------------------------------------------------------------------------

fn s_args(c: &Certs, more: &[&str]) -> Vec<String> {
    let mut v = ca_arg(c).to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

/// `versions = [tlsv1.2]` refuses TLS 1.3 clients; with `ciphers`, only
/// the listed suite is negotiated.
#[test]
fn versions_and_ciphers_limit_what_is_negotiated() {
    require_tools();
    let c = Certs::new();
    let n = TlsNode::start(
        &c.server.cert,
        &c.server.key,
        "    versions = [tlsv1.2]",
        "",
    );
    s_client(n.ssl_port, &refs(&s_args(&c, &["-tls1_3"])))
        .assert_refused("TLS 1.3 on a tlsv1.2 listener", &["alert protocol version"]);
    let p = s_client(n.ssl_port, &refs(&s_args(&c, &["-tls1_2"])));
    p.assert_ok("TLS 1.2 on a tlsv1.2 listener");
    assert!(p.text().contains("TLSv1.2"), "{}", p.text());
    // A client offering both gets 1.2.
    let p = s_client(n.ssl_port, &refs(&s_args(&c, &[])));
    p.assert_ok("default s_client on a tlsv1.2 listener");
    assert!(p.text().contains("Protocol  : TLSv1.2"), "{}", p.text());

    let n = TlsNode::start(
        &c.server.cert,
        &c.server.key,
        "    versions = [tlsv1.2]\n    ciphers = [\"ECDHE-ECDSA-AES128-GCM-SHA256\"]",
        "",
    );
    let p = s_client(n.ssl_port, &refs(&s_args(&c, &["-tls1_2"])));
    p.assert_ok("the one allowed suite");
    assert!(
        p.text().contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{}",
        p.text()
    );
    for other in [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        s_client(
            n.ssl_port,
            &refs(&s_args(&c, &["-tls1_2", "-cipher", other])),
        )
        .assert_refused(other, &["alert handshake failure"]);
    }
    publish(
        n.ssl_port,
        &with(
            &c.one_way(),
            &[
                "--ciphers",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "--tls-version",
                "tlsv1.2",
                "-t",
                "c/x",
                "-m",
                "ok",
            ],
        ),
    );

    // A TLS 1.3 suite by its OpenSSL name: only it, and no TLS 1.2 at all
    // (no 1.2 suite is left).
    let n = TlsNode::start(
        &c.server.cert,
        &c.server.key,
        "    ciphers = [\"TLS_AES_256_GCM_SHA384\"]",
        "",
    );
    let p = s_client(n.ssl_port, &refs(&s_args(&c, &[])));
    p.assert_ok("TLS 1.3 with the allowed suite");
    assert!(
        p.text().contains("Cipher is TLS_AES_256_GCM_SHA384"),
        "{}",
        p.text()
    );
    s_client(
        n.ssl_port,
        &refs(&s_args(
            &c,
            &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
        )),
    )
    .assert_refused("a TLS 1.3 suite not listed", &["alert handshake failure"]);
    s_client(n.ssl_port, &refs(&s_args(&c, &["-tls1_2"])))
        .assert_refused("TLS 1.2 with no 1.2 suite allowed", &["alert"]);
}

// ---------------------------------------------------------------------------
// 6. Certificates replaced on disk
// ---------------------------------------------------------------------------

/// The server certificate's subject CN as s_client saw it: `a.test`,
/// `b.test`, or `None` when the probe failed.
fn served_cn(c: &Certs, port: u16) -> Option<String> {
    let p = s_client(port, &refs(&ca_arg(c)));
    if !p.connack() {
        return None;
    }
    let text = p.text();
    ["a.test", "b.test"]
        .into_iter()
        .find(|cn| text.contains(&format!("depth=0 CN = {cn}")))
        .map(String::from)
}

/// A renewed certificate is served without a restart; a broken one is
/// refused with an error in the log and the last good one stays in use;
/// a good one after that is taken again. Connections made before stay up.
#[test]
fn certificate_files_are_reloaded_when_they_change() {
    require_tools();
    let c = Certs::new();
    let b = pki::issue(c.path(), &c.ca, "server-b", "b.test", pki::SERVER_EXT);
    let (live_cert, live_key) = (c.path().join("live.crt"), c.path().join("live.key"));
    let install = |cert: &Issued| {
        std::fs::copy(&cert.key, &live_key).expect("copy key");
        std::fs::copy(&cert.cert, &live_cert).expect("copy cert");
    };
    install(&c.server);
    let mut n = TlsNode::start(&live_cert, &live_key, "", "");
    assert_eq!(served_cn(&c, n.ssl_port).as_deref(), Some("a.test"));
    let mut sub = Sub::start(
        &n,
        n.ssl_port,
        &with(
            &c.one_way(),
            &["-i", "before-reload", "-q", "1", "-t", "reload/#"],
        ),
    );

    let poll = |want: &str| {
        let mut last = None;
        let ok = wait_until(WAIT, || {
            last = served_cn(&c, n.ssl_port);
            last.as_deref() == Some(want)
        });
        assert!(
            ok,
            "still serving {last:?}, not {want}, {WAIT:?} after the files changed; log:\n{}",
            n.log()
        );
    };
    install(&b);
    poll("b.test");
    n.wait_log("certificate files changed, reloaded", 1);

    // Garbage in the certificate file: an error, and B stays.
    let errors = count(&n.log(), "do not load");
    std::fs::write(&live_cert, "this is not a certificate\n").expect("write garbage");
    let log = n.wait_log("do not load", errors + 1);
    let line = log
        .lines()
        .rfind(|l| l.contains("do not load"))
        .unwrap_or_default();
    assert!(
        line.contains("ERROR") && line.contains("listeners.ssl.default.ssl_options.certfile"),
        "error line: {line}"
    );
    for _ in 0..3 {
        assert_eq!(served_cn(&c, n.ssl_port).as_deref(), Some("b.test"));
    }
    publish(
        n.ssl_port,
        &with(&c.one_way(), &["-q", "1", "-t", "reload/1", "-m", "on b"]),
    );

    // A good certificate again is picked up.
    install(&c.server);
    poll("a.test");
    assert!(n.node.alive(), "node died");

    // The subscriber from before any reload saw everything.
    publish(
        n.ssl_port,
        &with(&c.one_way(), &["-q", "1", "-t", "reload/2", "-m", "on a"]),
    );
    assert_eq!(sub.messages(2), ["reload/1|on b", "reload/2|on a"]);
}

/// `cacertfile` is watched too: a bundle of two CAs lets clients of both
/// in, and dropping a CA from it locks its clients out, without a
/// restart. A client connected before keeps its session.
#[test]
fn client_ca_bundle_is_reloaded_when_it_changes() {
    require_tools();
    let c = Certs::new();
    let other = c.other_ca();
    let stranger = pki::issue(c.path(), &other, "stranger", "stranger", pki::CLIENT_EXT);
    let live_ca = c.path().join("live-ca.pem");
    let read = |p: &Path| std::fs::read_to_string(p).expect("read CA");
    let (main_pem, other_pem) = (read(&c.ca.cert), read(&other.cert));
    std::fs::write(&live_ca, &main_pem).expect("write CA file");
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = true",
        live_ca.display()
    );
    let n = TlsNode::start(&c.server.cert, &c.server.key, &opts, "");
    let mut sub = Sub::start(
        &n,
        n.ssl_port,
        &with(
            &c.mutual(&c.client),
            &["-i", "early", "-q", "1", "-t", "ca/#"],
        ),
    );
    let accepted = |who: &Issued| s_client(n.ssl_port, &refs(&client_args(&c, who))).connack();
    assert!(accepted(&c.client), "main CA client refused");
    s_client(n.ssl_port, &refs(&client_args(&c, &stranger)))
        .assert_refused("other CA client before the bundle", &["alert unknown ca"]);

    std::fs::write(&live_ca, format!("{main_pem}{other_pem}")).expect("write bundle");
    assert!(
        wait_until(WAIT, || accepted(&stranger)),
        "the other CA's client is still refused {WAIT:?} after the bundle; log:\n{}",
        n.log()
    );
    assert!(
        accepted(&c.client),
        "main CA client refused with the bundle"
    );
    publish(
        n.ssl_port,
        &with(
            &c.mutual(&stranger),
            &["-q", "1", "-t", "ca/1", "-m", "stranger"],
        ),
    );

    std::fs::write(&live_ca, &other_pem).expect("write other CA only");
    assert!(
        wait_until(WAIT, || !accepted(&c.client)),
        "the main CA's client is still let in {WAIT:?} after its CA was dropped"
    );
    s_client(n.ssl_port, &refs(&client_args(&c, &c.client))).assert_refused(
        "main CA client after its CA was dropped",
        &["alert unknown ca"],
    );
    assert!(accepted(&stranger), "other CA client refused");
    publish(
        n.ssl_port,
        &with(
            &c.mutual(&stranger),
            &["-q", "1", "-t", "ca/2", "-m", "again"],
        ),
    );
    assert_eq!(sub.messages(2), ["ca/1|stranger", "ca/2|again"]);
}

/// Chains through an intermediate CA: the listener sends the
/// intermediate from its certfile (clients trust only the root), and a
/// client certificate signed by the intermediate is accepted when the
/// client sends the intermediate along, against a root-only cacertfile.
#[test]
fn certificate_chains_through_an_intermediate_ca() {
    require_tools();
    let c = Certs::new();
    let inter = pki::issue(
        c.path(),
        &c.ca,
        "inter",
        "test intermediate CA",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    let leaf = pki::issue(c.path(), &inter, "leaf", "a.test", pki::SERVER_EXT);
    let dev = pki::issue(c.path(), &inter, "dev", "dev-1", pki::CLIENT_EXT);
    let chain = |i: &Issued, name: &str| {
        let p = c.path().join(name);
        let pem = std::fs::read_to_string(&i.cert).expect("leaf")
            + &std::fs::read_to_string(&inter.cert).expect("intermediate");
        std::fs::write(&p, pem).expect("chain file");
        p
    };
    let server_chain = chain(&leaf, "leaf-chain.pem");
    let dev_chain = chain(&dev, "dev-chain.pem");
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = true",
        c.ca.cert.display()
    );
    let n = TlsNode::start(&server_chain, &leaf.key, &opts, "");
    let inter_path = path_str(&inter.cert);
    let mut with_chain = client_args(&c, &dev);
    with_chain.extend(["-cert_chain".to_string(), inter_path]);
    let p = s_client(n.ssl_port, &refs(&with_chain));
    p.assert_ok("client chain through the intermediate");
    assert!(
        p.text().contains("depth=2 CN = test main CA"),
        "the server's chain should reach the root through the intermediate:\n{}",
        p.text()
    );
    // Without the intermediate the broker cannot reach its root.
    s_client(n.ssl_port, &refs(&client_args(&c, &dev)))
        .assert_refused("client leaf without its intermediate", &["alert"]);
    // mosquitto sends the whole chain file given as --cert.
    let dev_args = with(
        &c.one_way(),
        &[
            "--cert",
            &path_str(&dev_chain),
            "--key",
            &path_str(&dev.key),
        ],
    );
    let mut sub = Sub::start(
        &n,
        n.ssl_port,
        &with(&dev_args, &["-i", "chain-sub", "-t", "chain/#"]),
    );
    publish(
        n.ssl_port,
        &with(
            &dev_args,
            &["-i", "chain-pub", "-t", "chain/x", "-m", "chained"],
        ),
    );
    assert_eq!(sub.messages(1), ["chain/x|chained"]);
}

// ---------------------------------------------------------------------------
// 7. Configuration errors
// ---------------------------------------------------------------------------

/// Broken `ssl_options` are refused by `check_config` (exit 2) with the
/// key named, and `foreground` does not start with them.
#[test]
fn broken_ssl_options_are_refused_with_the_key_named() {
    require_tools();
    let c = Certs::new();
    std::fs::write(c.path().join("junk.pem"), "junk\n").expect("junk file");
    let (cert, key) = (path_str(&c.server.cert), path_str(&c.server.key));
    let missing = path_str(&c.path().join("missing.crt"));
    let junk = path_str(&c.path().join("junk.pem"));
    let other_key = path_str(&c.client.key);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("certfile = \"{missing}\"\n keyfile = \"{key}\""),
            "listeners.ssl.edge.ssl_options.certfile",
        ),
        (
            format!("certfile = \"{junk}\"\n keyfile = \"{key}\""),
            "listeners.ssl.edge.ssl_options.certfile",
        ),
        (
            format!("certfile = \"{cert}\"\n keyfile = \"{junk}\""),
            "listeners.ssl.edge.ssl_options.keyfile",
        ),
        (
            // The client's key with the server's certificate.
            format!("certfile = \"{cert}\"\n keyfile = \"{other_key}\""),
            "listeners.ssl.edge.ssl_options.keyfile",
        ),
        (
            format!("certfile = \"{cert}\"\n keyfile = \"{key}\"\n verify = verify_peer"),
            "listeners.ssl.edge.ssl_options.cacertfile",
        ),
        (
            format!(
                "certfile = \"{cert}\"\n keyfile = \"{key}\"\n verify = verify_peer\n cacertfile = \"{missing}\""
            ),
            "listeners.ssl.edge.ssl_options.cacertfile",
        ),
        (
            format!("keyfile = \"{key}\""),
            "listeners.ssl.edge.ssl_options.certfile",
        ),
        (
            // No TLS 1.3 suite among the ciphers, and only TLS 1.3.
            format!(
                "certfile = \"{cert}\"\n keyfile = \"{key}\"\n versions = [tlsv1.3]\n ciphers = [\"ECDHE-ECDSA-AES128-GCM-SHA256\"]"
            ),
            "listeners.ssl.edge.ssl_options.ciphers",
        ),
    ];
    for (opts, want) in &cases {
        let port = free_port();
        let n = Node::prepare(&format!(
            "listeners.ssl.edge {{\n bind = \"127.0.0.1:{port}\"\n ssl_options {{\n {opts}\n }}\n}}\n"
        ));
        let o = n.cli(&["check_config"]);
        let err = output_text(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "check_config with {opts:?} should exit 2: {err}"
        );
        assert!(
            err.contains(want),
            "check_config with {opts:?}: no {want:?} in: {err}"
        );
    }

    // The node itself refuses to start with a missing certificate file.
    let port = free_port();
    let n = Node::prepare(&format!(
        "listeners.ssl.edge {{\n bind = \"127.0.0.1:{port}\"\n ssl_options {{\n \
         certfile = \"{missing}\"\n keyfile = \"{key}\"\n }}\n}}\n"
    ));
    let (status, err) = n
        .foreground_exit(&[], Duration::from_secs(20))
        .expect("foreground kept running with a missing certfile");
    assert!(
        !status.success(),
        "foreground exited {status} with a missing certfile"
    );
    assert!(
        strip_ansi(&err).contains("listeners.ssl.edge.ssl_options.certfile")
            && err.contains("missing.crt"),
        "foreground's error: {err}"
    );
}

// ---------------------------------------------------------------------------
// 8. paho-mqtt over mutual TLS
// ---------------------------------------------------------------------------

const PAHO_SCRIPT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
WAIT = 10

def client(cid, proto, with_cert=True):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
    if with_cert:
        c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    else:
        c.tls_set(ca_certs=ca)
    return c

subscribed, got, msgs = threading.Event(), threading.Event(), []
def on_subscribe(c, userdata, mid, reason_codes, props):
    subscribed.set()
def on_message(c, userdata, m):
    msgs.append((m.topic, m.payload.decode(), m.qos))
    got.set()

sub = client("paho-tls-sub", mqtt.MQTTv311)
sub.on_subscribe, sub.on_message = on_subscribe, on_message
sub.connect("127.0.0.1", port, keepalive=30)
sub.loop_start()
sub.subscribe("paho/tls", qos=1)
assert subscribed.wait(WAIT), "no SUBACK"

pub = client("paho-tls-pub", mqtt.MQTTv5)
pub.connect("127.0.0.1", port, keepalive=30)
pub.loop_start()
info = pub.publish("paho/tls", b"hello over mutual tls", qos=1)
info.wait_for_publish(WAIT)
assert info.is_published(), "PUBACK missing"
assert got.wait(WAIT), "message not delivered"
print("RECEIVED", msgs[0])
print("VERSION", sub.socket().version())

# Without a client certificate the broker refuses the session.
connected, gone = threading.Event(), threading.Event()
def on_connect(c, userdata, flags, rc, props):
    if not rc.is_failure:
        connected.set()
def on_disconnect(c, userdata, flags, rc, props):
    gone.set()
anon = client("paho-anon", mqtt.MQTTv311, with_cert=False)
anon.on_connect, anon.on_disconnect = on_connect, on_disconnect
try:
    anon.connect("127.0.0.1", port, keepalive=30)
    anon.loop_start()
    assert gone.wait(WAIT), "no disconnect without a certificate"
    anon.loop_stop()
    print("ANON", "connected" if connected.is_set() else "refused")
except Exception as e:
    print("ANON refused", type(e).__name__, e)

for c in (pub, sub):
    c.disconnect()
    c.loop_stop()
"#;

#[test]
fn paho_mqtt_round_trip_over_mutual_tls() {
    require_tools();
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 with paho-mqtt is needed: run scripts/test.sh or \
         `python3 -m pip install 'paho-mqtt>=2,<3'`"
    );
    let c = Certs::new();
    let opts = format!(
        "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = true",
        c.ca.cert.display()
    );
    let n = TlsNode::start(&c.server.cert, &c.server.key, &opts, "");
    let o = Command::new("timeout")
        .args(["-k", "2", "40", "python3", "-c", PAHO_SCRIPT])
        .arg(n.ssl_port.to_string())
        .arg(&c.ca.cert)
        .arg(&c.client.cert)
        .arg(&c.client.key)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = output_text(&o);
    assert!(
        o.status.success(),
        "paho script failed ({}): {text}",
        o.status
    );
    assert!(
        text.contains("RECEIVED ('paho/tls', 'hello over mutual tls', 1)"),
        "{text}"
    );
    assert!(text.contains("VERSION TLSv1.3"), "{text}");
    assert!(text.contains("ANON refused"), "{text}");
    let log = n.log();
    assert!(log.contains("peer sent no certificates"), "log:\n{log}");
}
