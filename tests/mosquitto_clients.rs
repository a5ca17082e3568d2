//! End-to-end tests with Debian's `mosquitto_pub` / `mosquitto_sub`
//! (package mosquitto-clients) against the real `emqx-rs` binary.
//!
//! Nothing is skipped: without the tools these tests fail and say how to
//! get them (scripts/test.sh installs mosquitto-clients).

mod common;

use common::Node;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Prefix of the lines `-F` prints for a message, to tell them apart from
/// the `-d` debug lines on the same stdout.
const MSG: &str = "MSG|";

fn require_tools() {
    for tool in ["mosquitto_pub", "mosquitto_sub"] {
        let ok = Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            ok,
            "{tool} not found: these tests need Debian's mosquitto-clients; run scripts/test.sh \
             (it installs them) or `apt-get install mosquitto-clients`"
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
    /// Starts `mosquitto_sub -d` with `args` and waits until it has its
    /// SUBACK, so that publishing afterwards cannot race the subscription.
    fn start(n: &Node, args: &[&str]) -> Sub {
        // Line-buffered stdout (stdbuf, coreutils): `-d` lines are otherwise
        // held in a pipe buffer and the SUBACK would never be seen.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"]);
        cmd.args(["-h", "127.0.0.1", "-p", &n.mqtt_port.to_string(), "-d"]);
        cmd.args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let name = format!("mosquitto_sub {}", args.join(" "));
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run mosquitto_sub ({e}): run scripts/test.sh to install mosquitto-clients"
            )
        });
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                match l {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        let s = Sub { child, lines, name };
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = l.contains("received SUBACK");
                    seen.push(l);
                    if done {
                        break;
                    }
                }
                Err(_) => panic!("{}: no SUBACK in 10 s; output: {seen:#?}", s.name),
            }
        }
        s
    }

    /// Collects `count` message lines (the part after [`MSG`]) within `d`.
    fn messages(&mut self, count: usize, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        let mut other = Vec::new();
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => match l.strip_prefix(MSG) {
                    Some(m) => got.push(m.to_string()),
                    None => other.push(l),
                },
                Err(_) => panic!(
                    "{}: {} of {count} messages in {d:?}; got {:?}; other output (last 20): {:#?}",
                    self.name,
                    got.len(),
                    got.iter().rev().take(5).collect::<Vec<_>>(),
                    other.iter().rev().take(20).collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Waits for the process to exit (it should, by `-C` or `-W`).
    fn wait_exit(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {d:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mosquitto_pub` with `args` (and optional stdin) to completion,
/// bounded in time; panics unless it exits 0.
fn publish(n: &Node, args: &[&str], stdin: Option<&[u8]>) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &n.mqtt_port.to_string()]);
    cmd.args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run mosquitto_pub ({e}): run scripts/test.sh to install mosquitto-clients")
    });
    if let Some(data) = stdin {
        let mut i = child.stdin.take().unwrap();
        i.write_all(data).expect("write mosquitto_pub stdin");
        drop(i);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait mosquitto_pub") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto_pub {} did not finish in 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("mosquitto_pub output");
    assert!(
        status.success(),
        "mosquitto_pub {} failed ({status}): {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Case 1: Each protocol version of mosquitto_sub receives QoS 0/1/2 messages
/// from mosquitto_pub of the same version, at the published QoS.
#[test]
fn versions_and_qos() {
    require_tools();
    let n = Node::start();
    for ver in ["mqttv311", "mqttv5", "mqttv31"] {
        let topic = format!("ver/{ver}");
        let fmt = format!("{MSG}%t|%q|%p");
        let mut sub = Sub::start(
            &n,
            &[
                "-V",
                ver,
                "-i",
                &format!("sub-{ver}"),
                "-q",
                "2",
                "-t",
                &topic,
                "-C",
                "3",
                "-W",
                "20",
                "-F",
                &fmt,
            ],
        );
        for q in ["0", "1", "2"] {
            publish(
                &n,
                &[
                    "-V",
                    ver,
                    "-i",
                    &format!("pub-{ver}-{q}"),
                    "-q",
                    q,
                    "-t",
                    &topic,
                    "-m",
                    &format!("{ver} qos{q}"),
                ],
                None,
            );
        }
        let got = sub.messages(3, Duration::from_secs(10));
        let want: Vec<String> = ["0", "1", "2"]
            .iter()
            .map(|q| format!("{topic}|{q}|{ver} qos{q}"))
            .collect();
        assert_eq!(got, want, "{ver}");
        sub.wait_exit(Duration::from_secs(5));
    }
    // Across versions: a 3.1 publisher to a v5 subscriber and back.
    let fmt = format!("{MSG}%p");
    let mut s5 = Sub::start(
        &n,
        &[
            "-V", "mqttv5", "-q", "1", "-t", "xv/to5", "-C", "1", "-W", "20", "-F", &fmt,
        ],
    );
    let mut s31 = Sub::start(
        &n,
        &[
            "-V", "mqttv31", "-q", "1", "-t", "xv/to31", "-C", "1", "-W", "20", "-F", &fmt,
        ],
    );
    publish(
        &n,
        &["-V", "mqttv31", "-q", "1", "-t", "xv/to5", "-m", "from31"],
        None,
    );
    publish(
        &n,
        &["-V", "mqttv5", "-q", "1", "-t", "xv/to31", "-m", "from5"],
        None,
    );
    assert_eq!(s5.messages(1, Duration::from_secs(10)), ["from31"]);
    assert_eq!(s31.messages(1, Duration::from_secs(10)), ["from5"]);
}

/// Case 2: `mosquitto_pub -r` keeps a message for later subscribers; `-r -n`
/// clears it.
#[test]
fn retained_set_and_cleared() {
    require_tools();
    let n = Node::start();
    publish(&n, &["-q", "1", "-r", "-t", "ret/m", "-m", "kept"], None);
    let fmt = format!("{MSG}%t|%r|%p");
    let mut s = Sub::start(
        &n,
        &["-q", "1", "-t", "ret/#", "-C", "1", "-W", "10", "-F", &fmt],
    );
    assert_eq!(s.messages(1, Duration::from_secs(5)), ["ret/m|1|kept"]);
    s.wait_exit(Duration::from_secs(5));

    publish(&n, &["-q", "1", "-r", "-n", "-t", "ret/m"], None);
    let mut s = Sub::start(&n, &["-q", "1", "-t", "ret/#", "-W", "2", "-F", &fmt]);
    s.wait_exit(Duration::from_secs(6));
    let mut rest = Vec::new();
    while let Ok(l) = s.lines.recv_timeout(Duration::from_secs(2)) {
        if l.starts_with(MSG) {
            rest.push(l);
        }
    }
    assert!(
        rest.is_empty(),
        "retained message not cleared by -r -n: {rest:?}"
    );
}

/// Case 3: A mosquitto_sub with a will, killed with SIGKILL: the will reaches
/// another mosquitto_sub.
#[test]
fn will_on_sigkill() {
    require_tools();
    let n = Node::start();
    let fmt = format!("{MSG}%t|%q|%p");
    let mut watcher = Sub::start(
        &n,
        &["-q", "1", "-t", "will/#", "-C", "1", "-W", "20", "-F", &fmt],
    );
    let mut victim = Sub::start(
        &n,
        &[
            "-i",
            "will-victim",
            "-t",
            "some/topic",
            "--will-topic",
            "will/victim",
            "--will-payload",
            "victim died",
            "--will-qos",
            "1",
        ],
    );
    victim.child.kill().expect("SIGKILL mosquitto_sub"); // Child::kill sends SIGKILL
    let _ = victim.child.wait();
    assert_eq!(
        watcher.messages(1, Duration::from_secs(10)),
        ["will/victim|1|victim died"]
    );
}

/// Case 4: `mosquitto_pub -l` sends 1000 lines at QoS 1; all arrive in order.
#[test]
fn thousand_lines_in_order() {
    require_tools();
    let n = Node::start();
    let fmt = format!("{MSG}%p");
    let mut s = Sub::start(
        &n,
        &[
            "-q", "1", "-t", "lines/t", "-C", "1000", "-W", "60", "-F", &fmt,
        ],
    );
    let input: String = (0..1000).map(|i| format!("line-{i:04}\n")).collect();
    publish(
        &n,
        &["-q", "1", "-t", "lines/t", "-l"],
        Some(input.as_bytes()),
    );
    let got = s.messages(1000, Duration::from_secs(30));
    let want: Vec<String> = (0..1000).map(|i| format!("line-{i:04}")).collect();
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!("1000 messages not received in order; first difference at {first_bad:?}");
    }
    s.wait_exit(Duration::from_secs(5));
}

/// Case 5: MQTT 5 user properties from `mosquitto_pub -D publish user-property`
/// reach `mosquitto_sub -F %P`.
#[test]
fn v5_user_properties() {
    require_tools();
    let n = Node::start();
    let fmt = format!("{MSG}%P|%p");
    let mut s = Sub::start(
        &n,
        &[
            "-V", "mqttv5", "-q", "1", "-t", "up/t", "-C", "1", "-W", "20", "-F", &fmt,
        ],
    );
    publish(
        &n,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "up/t",
            "-m",
            "with props",
            "-D",
            "publish",
            "user-property",
            "k1",
            "v1",
            "-D",
            "publish",
            "user-property",
            "k2",
            "v2",
        ],
        None,
    );
    let got = s.messages(1, Duration::from_secs(10));
    let line = &got[0];
    assert!(line.ends_with("|with props"), "payload: {line}");
    assert!(
        line.contains("k1:v1") && line.contains("k2:v2"),
        "user properties k1:v1 and k2:v2 expected in %P output, got {line:?}"
    );
    let k1 = line.find("k1:v1").unwrap();
    let k2 = line.find("k2:v2").unwrap();
    assert!(
        k1 < k2,
        "user properties keep their order (MQTT 5.0 3.3.2.3.7): {line:?}"
    );
}
