//! End-to-end tests of the WebSocket listeners (`listeners.ws`/`wss`) and
//! the PROXY protocol (`proxy_protocol = true`) against the real `emqx-rs`
//! binary, with independent clients only: Python's paho-mqtt over
//! WebSocket, Python's `websockets` package carrying MQTT bytes written by
//! hand, curl for the HTTP answers, a real HAProxy (`/usr/sbin/haproxy`)
//! sending PROXY v1/v2 headers and terminating TLS, and mosquitto_pub /
//! mosquitto_sub through it.
//!
//! Nothing is skipped: without a tool these tests fail and name it
//! (scripts/test.sh installs them).

mod common;

use common::pki::{self, Issued};
use common::{connect_v4, frame, free_port, Node, Opts};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const HAPROXY: &str = "/usr/sbin/haproxy";

/// Prefix of the lines `mosquitto_sub -F` prints for a message, to tell
/// them apart from its `-d` debug lines.
const MSG: &str = "MSG|";
const MSG_FMT: &str = "MSG|%t|%q|%p";

// ---------------------------------------------------------------------------
// Python clients
// ---------------------------------------------------------------------------

/// Helpers every Python script starts with: MQTT packets built by hand and
/// a reader that cuts MQTT packets out of a byte stream arriving in pieces
/// of any size (WebSocket frames or socket reads).
const PY_PRELUDE: &str = r#"
import os, queue, socket, ssl, sys, time

ARGS = dict(a.split('=', 1) for a in sys.argv[1:])

def varint(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def pkt(h, body):
    return bytes([h]) + varint(len(body)) + body

def s16(b):
    if isinstance(b, str):
        b = b.encode()
    return len(b).to_bytes(2, 'big') + b

def connect(cid, ver=4, keepalive=60):
    body = s16(b'MQIsdp' if ver == 3 else b'MQTT') + bytes([ver, 0x02]) + keepalive.to_bytes(2, 'big')
    if ver == 5:
        body += b'\x00'
    return pkt(0x10, body + s16(cid))

def connect_will(cid, topic, message, qos=1):
    flags = 0x02 | 0x04 | (qos << 3)
    body = s16(b'MQTT') + bytes([4, flags]) + (60).to_bytes(2, 'big')
    return pkt(0x10, body + s16(cid) + s16(topic) + s16(message))

def subscribe(pid, topic, qos):
    return pkt(0x82, pid.to_bytes(2, 'big') + s16(topic) + bytes([qos]))

def publish(topic, payload, qos=0, pid=0):
    return pkt(0x30 | (qos << 1), s16(topic) + (pid.to_bytes(2, 'big') if qos else b'') + payload)

def puback(pid):
    return b'\x40\x02' + pid.to_bytes(2, 'big')

def parse_publish(p):
    """(topic, qos, packet id or None, payload) of a v3/v4 PUBLISH."""
    assert p[0] >> 4 == 3, 'not a PUBLISH: %r' % p[:16]
    qos = (p[0] >> 1) & 3
    i = 1
    while p[i] & 0x80:
        i += 1
    i += 1
    tlen = int.from_bytes(p[i:i + 2], 'big')
    topic = p[i + 2:i + 2 + tlen].decode()
    i += 2 + tlen
    pid = None
    if qos:
        pid = int.from_bytes(p[i:i + 2], 'big')
        i += 2
    return topic, qos, pid, p[i:]

CONNACK_OK = b'\x20\x02\x00\x00'

class Packets:
    def __init__(self, recv):
        self.recv, self.buf = recv, b''

    def next(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            p = self.take()
            if p is not None:
                return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError('no complete MQTT packet in %.1f s; have %r' % (timeout, self.buf[:64]))
            chunk = self.recv(left)
            if not chunk:
                raise EOFError('connection closed; have %r' % self.buf[:64])
            self.buf += chunk

    def take(self):
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            n += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(self.buf) < i + n:
            return None
        p, self.buf = self.buf[:i + n], self.buf[i + n:]
        return p

def ws_packets(ws):
    def recv(t):
        m = ws.recv(timeout=t)
        if isinstance(m, str):
            raise AssertionError('a text frame from the broker: %r' % m)
        return m
    return Packets(recv)

def sock_packets(s):
    def recv(t):
        s.settimeout(t)
        return s.recv(65536)
    return Packets(recv)

def ws_open(uri, protos=('mqtt',), **kw):
    import inspect
    from websockets.sync.client import connect as ws_connect
    if 'proxy' in inspect.signature(ws_connect).parameters:
        kw['proxy'] = None  # websockets 15 would honour $https_proxy and friends
    return ws_connect(uri, subprotocols=list(protos) if protos is not None else None,
                      open_timeout=15, compression=None, **kw)

def pattern(n):
    return bytes(i % 251 for i in range(n))
"#;

/// paho-mqtt over WebSocket. `mode=roundtrip`: a subscriber and a
/// publisher on one listener, QoS 0/1/2 and a 200 KB payload; `mode=pub`:
/// one message; `mode=sub`: subscribe, print READY, print the first
/// message as `GOT <topic> <qos> <len> <payload or pattern=..>`.
const PAHO: &str = r#"
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PORT = int(ARGS['port'])
VER = {'311': mqtt.MQTTv311, '5': mqtt.MQTTv5}[ARGS.get('ver', '311')]

def client(cid):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=VER, transport='websockets')
    c.ws_set_options(path=ARGS.get('path', '/mqtt'))
    if 'ca' in ARGS:
        c.tls_set(ca_certs=ARGS['ca'], certfile=ARGS.get('cert'), keyfile=ARGS.get('key'))
    c.conns, c.acks, c.msgs = queue.Queue(), queue.Queue(), queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: cl.conns.put(rc)
    c.on_subscribe = lambda cl, ud, mid, rcs, props: cl.acks.put(rcs)
    c.on_message = lambda cl, ud, m: cl.msgs.put((m.topic, m.qos, bytes(m.payload)))
    c.connect('127.0.0.1', PORT, keepalive=30)
    c.loop_start()
    rc = c.conns.get(timeout=10)
    assert not rc.is_failure, 'CONNACK %s' % rc
    return c

def sub(c, topic):
    c.subscribe(topic, qos=2)
    rcs = c.acks.get(timeout=10)
    assert [r.value for r in rcs] == [2], 'SUBACK %s' % rcs

def pub(c, topic, payload, qos):
    info = c.publish(topic, payload, qos=qos)
    info.wait_for_publish(timeout=15)
    assert info.is_published(), 'not published: %s' % topic

mode = ARGS['mode']
if mode == 'roundtrip':
    pre = ARGS['prefix']
    s = client(pre + '-sub')
    sub(s, pre + '/#')
    p = client(pre + '-pub')
    want = {
        pre + '/q0': (0, b'zero'),
        pre + '/q1': (1, b'one'),
        pre + '/q2': (2, b'two'),
        pre + '/big': (2, pattern(200000)),
        pre + '/big1': (1, pattern(199999)),
    }
    for topic, (qos, payload) in want.items():
        pub(p, topic, payload, qos)
    got = {}
    deadline = time.monotonic() + 20
    while len(got) < len(want):
        topic, qos, payload = s.msgs.get(timeout=max(0.1, deadline - time.monotonic()))
        assert topic not in got, 'twice: %s' % topic
        got[topic] = (qos, payload)
    for topic, (qos, payload) in want.items():
        gq, gp = got[topic]
        assert gq == qos, '%s: qos %d, want %d' % (topic, gq, qos)
        assert gp == payload, '%s: %d bytes, want %d' % (topic, len(gp), len(payload))
    # The subscriber publishes too: its messages come back to itself.
    pub(s, pre + '/echo', b'echo', 1)
    assert s.msgs.get(timeout=10) == (pre + '/echo', 1, b'echo')
    for c in (p, s):
        c.disconnect()
        c.loop_stop()
    print('OK %d messages' % len(got), flush=True)
elif mode == 'pub':
    c = client(ARGS['cid'])
    pub(c, ARGS['topic'], ARGS['payload'].encode(), int(ARGS['qos']))
    c.disconnect()
    c.loop_stop()
    print('OK published', flush=True)
elif mode == 'sub':
    c = client(ARGS['cid'])
    sub(c, ARGS['topic'])
    print('READY', flush=True)
    topic, qos, payload = c.msgs.get(timeout=40)
    shown = 'pattern=%s' % (payload == pattern(len(payload))) if len(payload) > 100 else payload.decode()
    print('GOT %s %d %d %s' % (topic, qos, len(payload), shown), flush=True)
    c.disconnect()
    c.loop_stop()
elif mode == 'tls_refused':
    try:
        client(ARGS['cid'])
    except ssl.SSLCertVerificationError as e:
        print('REFUSED %s' % e.verify_message, flush=True)
    else:
        raise AssertionError('connected with an untrusted server certificate')
"#;

/// Raw MQTT over python `websockets`: frames cut and joined by hand.
const WS_FRAMES: &str = r#"
from websockets.exceptions import ConnectionClosed
URI = 'ws://127.0.0.1:%s/mqtt' % ARGS['port']

# A: a CONNECT split across three binary frames.
a = ws_open(URI)
assert a.subprotocol == 'mqtt', a.subprotocol
c = connect('raw-a')
a.send(c[:3]); a.send(c[3:9]); a.send(c[9:])
pa = ws_packets(a)
got = pa.next()
assert got == CONNACK_OK, 'A: %r' % got
print('split CONNECT: CONNACK', flush=True)

# B: CONNECT, SUBSCRIBE and PUBLISH (to itself) in one frame.
b = ws_open(URI)
b.send(connect('raw-b') + subscribe(1, 'raw/t', 1) + publish('raw/t', b'hello', 0))
pb = ws_packets(b)
got = [pb.next(), pb.next(), pb.next()]
assert got == [CONNACK_OK, b'\x90\x03\x00\x01\x01', publish('raw/t', b'hello', 0)], 'B: %r' % got
print('one frame: CONNACK SUBACK PUBLISH', flush=True)

# A: a QoS 1 PUBLISH split inside its fixed header, then two PINGREQs in
# one frame.
p = publish('raw/t', b'x' * 300, 1, 7)
a.send(p[:1]); a.send(p[1:2]); a.send(p[2:])
got = pa.next()
assert got == puback(7), 'A PUBACK: %r' % got
topic, qos, pid, payload = parse_publish(pb.next())
assert (topic, qos, payload) == ('raw/t', 1, b'x' * 300), (topic, qos, payload[:20])
b.send(puback(pid))
a.send(b'\xc0\x00\xc0\x00')
got = [pa.next(), pa.next()]
assert got == [b'\xd0\x00', b'\xd0\x00'], 'PINGRESPs: %r' % got
print('split PUBLISH and joined PINGREQs', flush=True)

# A WebSocket ping is answered.
assert a.ping().wait(5), 'no pong in 5 s'

# D: a CONNECT with a will as one fragmented message (three frames).
d = ws_open(URI)
cw = connect_will('raw-d', 'raw/will', b'd is gone')
d.send([cw[:5], cw[5:12], cw[12:]])
got = ws_packets(d).next()
assert got == CONNACK_OK, 'D: %r' % got
print('fragmented CONNECT: CONNACK', flush=True)

# E, on a listener with max_frame_size = 1000: a 2 KB PUBLISH in frames
# of 900 bytes is fine; the same in one frame closes the connection.
e = ws_open('ws://127.0.0.1:%s/mqtt' % ARGS['small'])
e.send(connect('raw-e'))
pe = ws_packets(e)
got = pe.next()
assert got == CONNACK_OK, 'E: %r' % got
p = publish('raw/small', b's' * 2000, 1, 9)
for i in range(0, len(p), 900):
    e.send(p[i:i + 900])
got = pe.next()
assert got == puback(9), 'E PUBACK: %r' % got
e.send(p)
try:
    m = e.recv(timeout=5)
    raise AssertionError('E got %r after a frame over max_frame_size' % m)
except ConnectionClosed as ex:
    print('frame over max_frame_size: closed', flush=True)

# C: a text frame after CONNECT closes the connection.
cc = ws_open(URI)
cc.send(connect('raw-c'))
got = ws_packets(cc).next()
assert got == CONNACK_OK, 'C: %r' % got
print('READY', flush=True)
sys.stdin.readline()  # the test checks the clients list meanwhile
cc.send('this is text')
t0 = time.monotonic()
try:
    m = cc.recv(timeout=5)
    raise AssertionError('C got %r after a text frame' % m)
except ConnectionClosed as e:
    print('text frame: closed after %.2f s (received close %s)' % (time.monotonic() - t0, e.rcvd), flush=True)

# A and B are undisturbed.
a.send(publish('raw/t', b'after', 1, 8))
assert pa.next() == puback(8)
topic, qos, pid, payload = parse_publish(pb.next())
assert (topic, payload) == ('raw/t', b'after'), (topic, payload)
b.send(puback(pid))
for w in (a, b):
    w.send(b'\xe0\x00')  # DISCONNECT
    w.close()

# D closes the WebSocket without DISCONNECT: the closing handshake
# completes and its will is published.
d.close()
assert d.protocol.close_rcvd is not None and d.protocol.close_rcvd.code == 1000, d.protocol.close_rcvd
print('OK', flush=True)
"#;

/// The HTTP side of the upgrade: status codes and subprotocols.
/// `strict=<port>` is a listener with the shipped websocket settings,
/// `custom=<port>` one with `mqtt_path = "/custom"`, only `mqtt` and
/// `fail_if_no_subprotocol = false`.
const WS_HTTP: &str = r#"
from websockets.exceptions import InvalidStatus
STRICT = 'ws://127.0.0.1:%s' % ARGS['strict']
CUSTOM = 'ws://127.0.0.1:%s' % ARGS['custom']

def refused(uri, protos):
    try:
        ws = ws_open(uri, protos)
    except InvalidStatus as e:
        return e.response.status_code, e.response.body.decode(errors='replace')
    ws.close()
    raise AssertionError('%s %s: upgraded' % (uri, protos))

def mqtt_over(uri, protos, ver, cid):
    ws = ws_open(uri, protos)
    ws.send(connect(cid, ver))
    got = ws_packets(ws).next()
    assert got[0] == 0x20 and got[3] == 0, '%s: CONNACK %r' % (uri, got)
    ws.send(b'\xe0\x00')
    ws.close()
    return ws.subprotocol

print('wrong path', refused(STRICT + '/wrong', ['mqtt']), flush=True)
print('no subprotocol', refused(STRICT + '/mqtt', None), flush=True)
print('unknown subprotocol', refused(STRICT + '/mqtt', ['foo', 'bar']), flush=True)
print('default path on custom', refused(CUSTOM + '/mqtt', ['mqtt']), flush=True)
print('mqttv3.1 chosen', mqtt_over(STRICT + '/mqtt', ['mqttv3.1'], 3, 'h31'), flush=True)
print('mqttv5 chosen', mqtt_over(STRICT + '/mqtt', ['foo', 'mqttv5'], 5, 'h5'), flush=True)
print('query string', mqtt_over(STRICT + '/mqtt?client=1', ['mqtt'], 4, 'hq'), flush=True)
print('custom with mqtt', mqtt_over(CUSTOM + '/custom', ['mqtt'], 4, 'hc1'), flush=True)
print('custom without subprotocol', mqtt_over(CUSTOM + '/custom', None, 4, 'hc2'), flush=True)
print('OK', flush=True)
"#;

/// One MQTT 3.1.1 client over `mode=tcp|ssl|ws|wss` to `port`, optionally
/// from `bind=<ip>:<port>`, with `header=<hex>` sent on the socket first
/// (a PROXY header), `ca=` to verify TLS. It subscribes to `topic` at QoS
/// 1, prints READY, prints `GOT <topic> <payload>` for the first message
/// and then holds the connection until stdin closes.
const RAW_CLIENT: &str = r#"
mode, port = ARGS['mode'], int(ARGS['port'])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if 'bind' in ARGS:
    ip, bport = ARGS['bind'].rsplit(':', 1)
    s.bind((ip, int(bport)))
s.settimeout(5)
s.connect(('127.0.0.1', port))
if 'header' in ARGS:
    s.sendall(bytes.fromhex(ARGS['header']))
ctx = ssl.create_default_context(cafile=ARGS['ca']) if 'ca' in ARGS else None
if mode in ('ws', 'wss'):
    # websockets bounds its handshake itself and leaves a ws:// socket's
    # timeout as it finds it: it must not expire while the client waits.
    s.settimeout(None)
    ws = ws_open('%s://127.0.0.1:%d/mqtt' % (mode, port), sock=s, ssl=ctx)
    assert ws.subprotocol == 'mqtt', ws.subprotocol
    send, packets = ws.send, ws_packets(ws)
else:
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname='127.0.0.1')
    send, packets = s.sendall, sock_packets(s)
send(connect(ARGS['cid']))
got = packets.next()
assert got == CONNACK_OK, 'CONNACK %r' % got
send(subscribe(1, ARGS['topic'], 1))
got = packets.next()
assert got == b'\x90\x03\x00\x01\x01', 'SUBACK %r' % got
print('READY', flush=True)
topic, qos, pid, payload = parse_publish(packets.next(timeout=50))
if qos:
    send(puback(pid))
print('GOT %s %s' % (topic, payload.decode()), flush=True)
sys.stdin.readline()
"#;

/// `python3 -u -c <prelude + script> key=value...`.
fn python(script: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg("-c")
        .arg(format!("{PY_PRELUDE}\n{script}"))
        .args(args)
        // Loopback only: never through an HTTP proxy from the environment.
        .env("no_proxy", "*")
        .env("NO_PROXY", "*");
    cmd
}

/// Runs a Python script to completion within `d`; panics with its output
/// unless it exits 0. Returns its stdout and stderr lines.
fn run_python(name: &str, script: &str, args: &[String], d: Duration) -> Vec<String> {
    let mut p = Proc::spawn(name, python(script, args));
    let st = p.finish(d);
    assert!(st.success(), "{name} failed ({st}): {:#?}", p.seen);
    p.seen.clone()
}

fn kv(k: &str, v: impl std::fmt::Display) -> String {
    format!("{k}={v}")
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process whose stdout and stderr lines arrive on a channel;
/// killed on drop.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    name: String,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name} ({e}): run scripts/test.sh"));
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
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
                if tx2.send(format!("stderr: {l}")).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            name: name.to_string(),
            seen: Vec::new(),
        }
    }

    /// The next line containing `pat`, within `d`.
    fn expect_line(&mut self, pat: &str, d: Duration) -> String {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(pat) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "{}: no line with {pat:?} within {d:?} ({e:?}); output: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// `count` messages printed by `mosquitto_sub -F MSG_FMT`, without
    /// the prefix, within `d`.
    fn messages(&mut self, count: usize, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.expect_line(MSG, left.max(Duration::from_millis(1)));
            got.push(l[MSG.len()..].to_string());
        }
        got
    }

    /// Writes a line to the process's stdin.
    fn say(&mut self, line: &str) {
        let i = self.child.stdin.as_mut().expect("stdin");
        let _ = writeln!(i, "{line}");
        let _ = i.flush();
    }

    /// Waits for the process to exit within `d` (killing it and panicking
    /// otherwise) and reads the rest of its output.
    fn finish(&mut self, d: Duration) -> ExitStatus {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + d;
        let st = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.drain();
                panic!(
                    "{} did not finish within {d:?}; output: {:#?}",
                    self.name, self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.drain();
        st
    }

    /// Reads what is left once the process has exited (the reader threads
    /// end at EOF, unless a grandchild holds the pipes: 2 s at most).
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(tool: &str, hint: &str) {
    let ok = Command::new(tool)
        .arg(if tool == HAPROXY { "-v" } else { "--help" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(ok, "{tool} not found: {hint}");
}

/// `mosquitto_sub -d -F MSG_FMT` on 127.0.0.1:`port` with `args`, once it
/// has its SUBACK (so a publish afterwards cannot race the subscription).
fn mosq_sub(port: u16, args: &[&str]) -> Proc {
    require(
        "mosquitto_sub",
        "run scripts/test.sh or `apt-get install mosquitto-clients`",
    );
    // Line-buffered stdout, or the `-d` lines stay in a pipe buffer.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-d", "-F", MSG_FMT]);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    cmd.args(args);
    let mut p = Proc::spawn(&format!("mosquitto_sub {}", args.join(" ")), cmd);
    p.expect_line("received SUBACK", Duration::from_secs(10));
    p
}

/// `mosquitto_pub` on 127.0.0.1:`port` with `args`, to completion within
/// 20 s; panics unless it exits 0.
fn mosq_pub(port: u16, args: &[&str]) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    cmd.args(args);
    let name = format!("mosquitto_pub {}", args.join(" "));
    let mut p = Proc::spawn(&name, cmd);
    let st = p.finish(Duration::from_secs(20));
    assert!(st.success(), "{name} failed ({st}): {:#?}", p.seen);
}

/// A HAProxy in the foreground (`-db`) with a generated configuration,
/// killed on drop.
struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy with `body` after a common global/defaults section
    /// and waits until every port of `ports` accepts connections.
    fn start(body: &str, ports: &[u16]) -> Haproxy {
        require(HAPROXY, "run scripts/test.sh or `apt-get install haproxy`");
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        let text = format!(
            "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n\n{body}"
        );
        std::fs::write(&cfg, text).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut h = Haproxy { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        for &p in ports {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                if let Ok(Some(st)) = h.child.try_wait() {
                    panic!("haproxy exited at start ({st}): {}", h.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not listen on {p} in 10 s: {}",
                    h.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Broker-side helpers
// ---------------------------------------------------------------------------

/// The node's log without the terminal colour codes.
fn plain_log(n: &Node) -> String {
    let log = n.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for a log line containing every one of `parts`.
fn wait_log(n: &Node, parts: &[&str]) -> String {
    let mut found = None;
    let ok = common::wait_until(Duration::from_secs(10), || {
        found = plain_log(n)
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string);
        found.is_some()
    });
    assert!(ok, "no log line with {parts:?}; log:\n{}", plain_log(n));
    found.unwrap_or_default()
}

/// `ctl clients list`.
fn clients(n: &Node) -> String {
    let (code, out) = n.ctl(&["clients", "list"]);
    assert_eq!(code, 0, "ctl clients list: {out}");
    out
}

/// Waits until `ctl clients list` has a line starting with `prefix`.
fn wait_client(n: &Node, prefix: &str) -> String {
    let mut last = String::new();
    let mut line = None;
    let ok = common::wait_until(Duration::from_secs(10), || {
        last = clients(n);
        line = last
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string);
        line.is_some()
    });
    assert!(
        ok,
        "no client line starting with {prefix:?}; clients:\n{last}"
    );
    line.unwrap_or_default()
}

fn listener(kind: &str, name: &str, port: u16, more: &str) -> String {
    format!("listeners.{kind}.{name} {{\n  bind = \"127.0.0.1:{port}\"\n{more}}}\n")
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) built by hand from
/// the spec, with a PP2_TYPE_SSL TLV carrying PP2_SUBTYPE_SSL_CN when
/// `cn` is given.
fn proxy_v2(src: SocketAddr, dst: SocketAddr, cn: Option<&str>) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let mut body = Vec::new();
    body.extend_from_slice(&src.ip().octets());
    body.extend_from_slice(&dst.ip().octets());
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(cn) = cn {
        // client = PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify = 0 (ok)
        let mut ssl = vec![0x03, 0, 0, 0, 0];
        ssl.push(0x22);
        ssl.extend_from_slice(&(cn.len() as u16).to_be_bytes());
        ssl.extend_from_slice(cn.as_bytes());
        body.push(0x20);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// The local addresses of process `pid`'s IPv4 TCP connections to port
/// `to` (from /proc: its socket inodes matched in /proc/net/tcp).
fn tcp_sources(pid: u32, to: u16) -> Vec<SocketAddr> {
    let mut inodes = Vec::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd");
    for fd in fds.map_while(Result::ok) {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let addr = |hex: &str| -> SocketAddr {
        let (ip, port) = hex.split_once(':').expect("address");
        let ip = u32::from_str_radix(ip, 16).expect("ip");
        let port = u16::from_str_radix(port, 16).expect("port");
        // The kernel prints the address bytes as a host-order integer.
        SocketAddr::from((ip.to_ne_bytes(), port))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, inode) = (addr(f[1]), addr(f[2]), f[9]);
            (remote.port() == to && inodes.iter().any(|i| i == inode)).then_some(local)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SUBSCRIBE (packet id 1) to one filter at `qos`.
fn subscribe_packet(topic: &str, qos: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.push(qos);
    frame(0x82, &body)
}

/// A QoS 0 PUBLISH as the broker sends it.
fn publish_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

/// Reads until the broker closes the connection or `d` passes: what
/// arrived, whether it closed, and when.
fn read_until_closed(s: &mut TcpStream, d: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let deadline = t0 + d;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, None);
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (out, Some(t0.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return (out, Some(t0.elapsed()))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn read_exact_within(s: &mut TcpStream, n: usize, d: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(d)).expect("timeout");
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    v
}

fn path(p: &Path) -> String {
    common::path_str(p)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Case 1: paho-mqtt over WebSocket, MQTT 3.1.1 and 5: QoS 0/1/2 and
/// ~200 KB payloads round trip; a TCP subscriber (mosquitto_sub) gets what
/// a WebSocket client publishes and a WebSocket subscriber gets what
/// mosquitto_pub publishes on TCP.
#[test]
fn ws_paho_round_trip_and_tcp_bridge() {
    let ws = free_port();
    let n = Node::start_with(Opts {
        extra: listener("ws", "default", ws, ""),
        ..Default::default()
    });
    let port = kv("port", ws);
    for ver in ["311", "5"] {
        let out = run_python(
            "paho roundtrip",
            PAHO,
            &[
                kv("mode", "roundtrip"),
                port.clone(),
                kv("ver", ver),
                kv("prefix", format!("rt{ver}")),
            ],
            Duration::from_secs(40),
        );
        assert!(out.iter().any(|l| l == "OK 5 messages"), "v{ver}: {out:#?}");
    }

    // WebSocket -> TCP.
    let mut tcp_sub = mosq_sub(
        n.mqtt_port,
        &["-V", "mqttv5", "-q", "2", "-t", "x/ws2tcp", "-C", "1"],
    );
    run_python(
        "paho pub",
        PAHO,
        &[
            kv("mode", "pub"),
            port.clone(),
            kv("ver", "5"),
            kv("cid", "ws-pub"),
            kv("topic", "x/ws2tcp"),
            kv("payload", "from-ws"),
            kv("qos", 2),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        tcp_sub.messages(1, Duration::from_secs(10)),
        ["x/ws2tcp|2|from-ws"]
    );

    // TCP -> WebSocket, a small QoS 2 message and a 200 KB QoS 1 one.
    for (ver, qos, big) in [("311", "2", false), ("5", "1", true)] {
        let mut ws_sub = Proc::spawn(
            "paho sub",
            python(
                PAHO,
                &[
                    kv("mode", "sub"),
                    port.clone(),
                    kv("ver", ver),
                    kv("cid", format!("ws-sub{ver}")),
                    kv("topic", "x/tcp2ws/#"),
                ],
            ),
        );
        ws_sub.expect_line("READY", Duration::from_secs(15));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("payload");
        let payload: Vec<u8> = if big {
            (0..200_000u32).map(|i| (i % 251) as u8).collect()
        } else {
            b"from-tcp".to_vec()
        };
        std::fs::write(&file, &payload).expect("payload file");
        let topic = format!("x/tcp2ws/{ver}");
        mosq_pub(n.mqtt_port, &["-q", qos, "-t", &topic, "-f", &path(&file)]);
        let got = ws_sub.expect_line("GOT", Duration::from_secs(15));
        let want = if big {
            format!("GOT {topic} {qos} 200000 pattern=True")
        } else {
            format!("GOT {topic} {qos} 8 from-tcp")
        };
        assert_eq!(got, want);
        assert!(ws_sub.finish(Duration::from_secs(10)).success());
    }
}

/// Case 2: MQTT bytes in WebSocket frames cut by hand: a CONNECT across
/// three frames and as one fragmented message, CONNECT + SUBSCRIBE +
/// PUBLISH in one frame, a PUBLISH split inside its header; pings are
/// answered; a frame over `max_frame_size` or a text frame closes that
/// connection only; a closing handshake without DISCONNECT publishes the
/// will.
#[test]
fn ws_raw_frames() {
    let (ws, small) = (free_port(), free_port());
    let n = Node::start_with(Opts {
        extra: listener("ws", "default", ws, "")
            + &listener("ws", "small", small, "  websocket.max_frame_size = 1000\n"),
        ..Default::default()
    });
    // A TCP subscriber that must not notice anything.
    let mut watcher = mosq_sub(n.mqtt_port, &["-q", "1", "-t", "raw/#"]);
    let mut py = Proc::spawn(
        "ws frames",
        python(WS_FRAMES, &[kv("port", ws), kv("small", small)]),
    );
    py.expect_line("READY", Duration::from_secs(20));
    for id in ["raw-a", "raw-b", "raw-c", "raw-d"] {
        let line = wait_client(&n, &format!("Client({id}, "));
        assert!(line.contains("connected=true"), "{line}");
    }
    py.say("go");
    let closed = py.expect_line("text frame: closed", Duration::from_secs(10));
    // The broker drops the client that sent the text frame.
    let gone = common::wait_until(Duration::from_secs(10), || {
        !clients(&n).contains("Client(raw-c, ")
    });
    assert!(gone, "{closed}; raw-c still listed:\n{}", clients(&n));
    let st = py.finish(Duration::from_secs(20));
    assert!(st.success(), "ws frames failed ({st}): {:#?}", py.seen);
    assert!(py.seen.iter().any(|l| l == "OK"), "{:#?}", py.seen);
    // The TCP subscriber saw every message the WebSocket clients sent.
    let want = [
        "raw/t|0|hello".to_string(),
        format!("raw/t|1|{}", "x".repeat(300)),
        format!("raw/small|1|{}", "s".repeat(2000)),
        "raw/t|1|after".to_string(),
        "raw/will|1|d is gone".to_string(),
    ];
    assert_eq!(watcher.messages(5, Duration::from_secs(10)), want);
    mosq_pub(n.mqtt_port, &["-q", "1", "-t", "raw/end", "-m", "end"]);
    assert_eq!(
        watcher.messages(1, Duration::from_secs(10)),
        ["raw/end|1|end"]
    );
}

/// Runs curl with a WebSocket upgrade request and returns the status line
/// and the response headers (lower case).
fn curl_upgrade(url: &str, proto: Option<&str>) -> (String, String) {
    require("curl", "run scripts/test.sh or `apt-get install curl`");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-i",
        "--http1.1",
        "--noproxy",
        "*",
        "--max-time",
        "3",
    ]);
    for h in [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ] {
        cmd.args(["-H", h]);
    }
    if let Some(p) = proto {
        cmd.args(["-H", &format!("Sec-WebSocket-Protocol: {p}")]);
    }
    cmd.arg(url);
    // On 101 curl keeps the connection open until --max-time (exit 28).
    let o = cmd.output().expect("run curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let code = o.status.code();
    assert!(code == Some(0) || code == Some(28), "curl {url}: {o:?}");
    let status = out.lines().next().unwrap_or("").trim().to_string();
    (status, out.to_lowercase())
}

/// Case 3: the HTTP answers of the upgrade: 404 on another path, 400
/// without a supported subprotocol, the chosen subprotocol echoed, and a
/// listener with its own `mqtt_path` and subprotocol settings.
#[test]
fn ws_http_answers() {
    let (strict, custom) = (free_port(), free_port());
    let extra = listener(
        "ws",
        "default",
        strict,
        "  websocket {\n    mqtt_path = \"/mqtt\"\n    supported_subprotocols = \"mqtt, mqtt-v3, mqtt-v3.1.1, mqtt-v5, mqttv3.1, mqttv5\"\n    fail_if_no_subprotocol = true\n    max_frame_size = infinity\n  }\n",
    ) + &listener(
        "ws",
        "custom",
        custom,
        "  websocket {\n    mqtt_path = \"/custom\"\n    supported_subprotocols = \"mqtt\"\n    fail_if_no_subprotocol = false\n  }\n",
    );
    let n = Node::start_with(Opts {
        extra,
        ..Default::default()
    });
    let (a, b) = (
        format!("http://127.0.0.1:{strict}"),
        format!("http://127.0.0.1:{custom}"),
    );
    // (URL, subprotocol offered, status, the subprotocol header answered)
    let cases = [
        (format!("{a}/wrong"), Some("mqtt"), "404", None),
        (format!("{a}/mqtt"), None, "400", None),
        (format!("{a}/mqtt"), Some("foo"), "400", None),
        (
            format!("{a}/mqtt"),
            Some("mqttv3.1"),
            "101",
            Some("mqttv3.1"),
        ),
        (
            format!("{a}/mqtt"),
            Some("foo, mqtt-v5"),
            "101",
            Some("mqtt-v5"),
        ),
        (format!("{b}/mqtt"), Some("mqtt"), "404", None),
        (format!("{b}/custom"), None, "101", None),
        (format!("{b}/custom"), Some("mqtt"), "101", Some("mqtt")),
    ];
    // In parallel: on 101 curl waits for its --max-time.
    let answers: Vec<(String, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(url, proto, _, _)| sc.spawn(move || curl_upgrade(url, *proto)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect()
    });
    for ((url, proto, status, echoed), (st, headers)) in cases.iter().zip(&answers) {
        assert!(
            st.starts_with(&format!("HTTP/1.1 {status} ")),
            "{url} offering {proto:?}: {st}"
        );
        let answered = headers
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-protocol: "))
            .map(str::trim);
        assert_eq!(answered, *echoed, "{url} offering {proto:?}: {headers}");
    }

    // Plain HTTP requests (no upgrade headers) get an answer too.
    for (url, status) in [(format!("{a}/wrong"), "404"), (format!("{a}/mqtt"), "400")] {
        let o = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                &url,
            ])
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            status,
            "plain GET {url}"
        );
    }

    let out = run_python(
        "ws http",
        WS_HTTP,
        &[kv("strict", strict), kv("custom", custom)],
        Duration::from_secs(30),
    );
    let want = [
        "wrong path (404, 'not found')",
        "no subprotocol (400, 'no supported MQTT subprotocol offered')",
        "unknown subprotocol (400, 'no supported MQTT subprotocol offered')",
        "default path on custom (404, 'not found')",
        "mqttv3.1 chosen mqttv3.1",
        "mqttv5 chosen mqttv5",
        "query string mqtt",
        "custom with mqtt mqtt",
        "custom without subprotocol None",
        "OK",
    ];
    let printed: Vec<&str> = out
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("stderr: "))
        .collect();
    assert_eq!(printed, want, "all output: {out:#?}");
    // The refusals are logged with the path and the status.
    wait_log(&n, &["ws:default", "upgrade refused", "/wrong 404"]);
    wait_log(&n, &["ws:custom", "upgrade refused", "/mqtt 404"]);
}

/// Case 4: paho-mqtt over WSS with the CA: round trip at every QoS; a
/// client with another CA is refused by its own verification; with
/// `verify_peer` the client certificate's CN becomes the user name.
#[test]
fn wss_paho() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::make_ca(dir.path(), "wss");
    let server = pki::issue(dir.path(), &ca, "server", "127.0.0.1", pki::SERVER_EXT);
    let client = pki::issue(dir.path(), &ca, "dev", "wss-device", pki::CLIENT_EXT);
    let other = pki::make_ca(dir.path(), "other");
    let (wss, mtls) = (free_port(), free_port());
    let ssl = |more: &str| {
        format!(
            "  ssl_options {{\n    certfile = \"{}\"\n    keyfile = \"{}\"\n{more}  }}\n",
            path(&server.cert),
            path(&server.key)
        )
    };
    let extra = listener("wss", "default", wss, &ssl(""))
        + &listener(
            "wss",
            "mtls",
            mtls,
            &ssl(&format!(
                "    cacertfile = \"{}\"\n    verify = verify_peer\n    fail_if_no_peer_cert = true\n",
                path(&ca.cert)
            )),
        )
        + "mqtt.peer_cert_as_username = cn\n";
    let n = Node::start_with(Opts {
        extra,
        ..Default::default()
    });
    for ver in ["311", "5"] {
        let out = run_python(
            "paho wss roundtrip",
            PAHO,
            &[
                kv("mode", "roundtrip"),
                kv("port", wss),
                kv("ver", ver),
                kv("prefix", format!("wss{ver}")),
                kv("ca", path(&ca.cert)),
            ],
            Duration::from_secs(40),
        );
        assert!(out.iter().any(|l| l == "OK 5 messages"), "v{ver}: {out:#?}");
    }
    let out = run_python(
        "paho wss other CA",
        PAHO,
        &[
            kv("mode", "tls_refused"),
            kv("port", wss),
            kv("cid", "wss-untrusting"),
            kv("ca", path(&other.cert)),
        ],
        Duration::from_secs(20),
    );
    assert!(out.iter().any(|l| l.starts_with("REFUSED")), "{out:#?}");

    // Mutual TLS: the CN is the user name, and messages flow from TCP.
    let mut sub = Proc::spawn(
        "paho wss mtls sub",
        python(
            PAHO,
            &[
                kv("mode", "sub"),
                kv("port", mtls),
                kv("cid", "wss-mtls"),
                kv("topic", "wss/in"),
                kv("ca", path(&ca.cert)),
                kv("cert", path(&client.cert)),
                kv("key", path(&client.key)),
            ],
        ),
    );
    sub.expect_line("READY", Duration::from_secs(15));
    let line = wait_client(&n, "Client(wss-mtls, ");
    assert!(
        line.starts_with("Client(wss-mtls, username=wss-device, peername=127.0.0.1:"),
        "{line}"
    );
    mosq_pub(n.mqtt_port, &["-q", "2", "-t", "wss/in", "-m", "to-wss"]);
    assert_eq!(
        sub.expect_line("GOT", Duration::from_secs(10)),
        "GOT wss/in 2 6 to-wss"
    );
    assert!(sub.finish(Duration::from_secs(10)).success());
}

/// Case 5: a real HAProxy in front of a `proxy_protocol` listener with
/// `send-proxy` (v1) and `send-proxy-v2`: the broker sees the clients'
/// own addresses (127.0.0.5/.6), where a plain HAProxy backend shows
/// HAProxy's 127.0.0.1; messages flow through HAProxy both ways.
#[test]
fn haproxy_send_proxy_v1_and_v2() {
    let pp = free_port();
    let (fe1, fe2, fe0) = (free_port(), free_port(), free_port());
    let n = Node::start_with(Opts {
        extra: format!(
            "listeners.tcp.pp {{\n  bind = \"127.0.0.1:{pp}\"\n  proxy_protocol = true\n  proxy_protocol_timeout = 3s\n}}\n"
        ),
        ..Default::default()
    });
    let mqtt = n.mqtt_port;
    let _hap = Haproxy::start(
        &format!(
            "frontend fe_v1\n    bind 127.0.0.1:{fe1}\n    default_backend be_v1\n\
             backend be_v1\n    server broker 127.0.0.1:{pp} send-proxy\n\n\
             frontend fe_v2\n    bind 127.0.0.1:{fe2}\n    default_backend be_v2\n\
             backend be_v2\n    server broker 127.0.0.1:{pp} send-proxy-v2\n\n\
             frontend fe_plain\n    bind 127.0.0.1:{fe0}\n    default_backend be_plain\n\
             backend be_plain\n    server broker 127.0.0.1:{mqtt}\n"
        ),
        &[fe1, fe2, fe0],
    );

    // mosquitto_sub from 127.0.0.5 through v1 and through the plain backend.
    let mut sub_v1 = mosq_sub(
        fe1,
        &["-A", "127.0.0.5", "-i", "hp-v1", "-q", "1", "-t", "hp/#"],
    );
    let mut sub_plain = mosq_sub(
        fe0,
        &["-A", "127.0.0.5", "-i", "hp-plain", "-q", "1", "-t", "hp/#"],
    );
    let mut sub_direct = mosq_sub(mqtt, &["-i", "hp-direct", "-q", "1", "-t", "hp/#"]);
    // A Python client from a known address and port through v2.
    let src_port = free_port();
    let mut py = Proc::spawn(
        "raw client via send-proxy-v2",
        python(
            RAW_CLIENT,
            &[
                kv("mode", "tcp"),
                kv("port", fe2),
                kv("bind", format!("127.0.0.6:{src_port}")),
                kv("cid", "hp-v2"),
                kv("topic", "hp/#"),
            ],
        ),
    );
    py.expect_line("READY", Duration::from_secs(15));

    // mosquitto_sub's own end of its connection to HAProxy, from /proc.
    let src = tcp_sources(sub_v1.child.id(), fe1);
    assert_eq!(src.len(), 1, "mosquitto_sub's sockets to {fe1}: {src:?}");
    assert_eq!(src[0].ip().to_string(), "127.0.0.5");
    let v1 = wait_client(&n, "Client(hp-v1, ");
    assert!(
        v1.starts_with(&format!(
            "Client(hp-v1, username=undefined, peername={}, ",
            src[0]
        )),
        "{v1}"
    );
    let v2 = wait_client(&n, "Client(hp-v2, ");
    assert!(
        v2.starts_with(&format!(
            "Client(hp-v2, username=undefined, peername=127.0.0.6:{src_port}, "
        )),
        "{v2}"
    );
    let plain = wait_client(&n, "Client(hp-plain, ");
    assert!(
        plain.starts_with("Client(hp-plain, username=undefined, peername=127.0.0.1:"),
        "without PROXY the broker sees HAProxy: {plain}"
    );

    // Published through HAProxy (v1 and v2), received through it and directly.
    mosq_pub(
        fe1,
        &[
            "-A",
            "127.0.0.5",
            "-i",
            "hp-pub1",
            "-q",
            "1",
            "-t",
            "hp/1",
            "-m",
            "via-v1",
        ],
    );
    assert_eq!(
        py.expect_line("GOT", Duration::from_secs(10)),
        "GOT hp/1 via-v1"
    );
    mosq_pub(
        fe2,
        &["-V", "mqttv5", "-q", "2", "-t", "hp/2", "-m", "via-v2"],
    );
    mosq_pub(mqtt, &["-q", "1", "-t", "hp/3", "-m", "direct"]);
    let want = ["hp/1|1|via-v1", "hp/2|1|via-v2", "hp/3|1|direct"];
    for s in [&mut sub_v1, &mut sub_plain, &mut sub_direct] {
        assert_eq!(s.messages(3, Duration::from_secs(10)), want, "{}", s.name);
    }
    // The v2 client is still there, at the same address.
    let v2 = wait_client(&n, "Client(hp-v2, ");
    assert!(v2.contains("connected=true"), "{v2}");
}

/// Case 6: TLS terminated at HAProxy, which passes the client
/// certificate's CN in a PROXY v2 TLV (`send-proxy-v2-ssl-cn`); the
/// broker takes the user name and client id from it.
#[test]
fn haproxy_tls_termination_passes_the_cn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::make_ca(dir.path(), "lb");
    let server = pki::issue(dir.path(), &ca, "haproxy", "127.0.0.1", pki::SERVER_EXT);
    let dev9 = pki::issue(dir.path(), &ca, "dev9", "device-9", pki::CLIENT_EXT);
    let dev10 = pki::issue(dir.path(), &ca, "dev10", "device-10", pki::CLIENT_EXT);
    let pem = dir.path().join("haproxy.pem");
    let both = std::fs::read_to_string(&server.cert).expect("cert")
        + &std::fs::read_to_string(&server.key).expect("key");
    std::fs::write(&pem, both).expect("pem");

    let (lb, fe) = (free_port(), free_port());
    let n = Node::start_with(Opts {
        extra: format!(
            "listeners.tcp.lb {{\n  bind = \"127.0.0.1:{lb}\"\n  proxy_protocol = true\n}}\n\
             mqtt.peer_cert_as_username = cn\nmqtt.peer_cert_as_clientid = cn\n"
        ),
        ..Default::default()
    });
    let _hap = Haproxy::start(
        &format!(
            "frontend fe_tls\n    bind 127.0.0.1:{fe} ssl crt {} ca-file {} verify required\n    \
             default_backend be_tls\n\
             backend be_tls\n    server broker 127.0.0.1:{lb} send-proxy-v2 send-proxy-v2-ssl-cn\n",
            path(&pem),
            path(&ca.cert)
        ),
        &[fe],
    );
    let tls = |c: &Issued| {
        vec![
            "--cafile".to_string(),
            path(&ca.cert),
            "--cert".to_string(),
            path(&c.cert),
            "--key".to_string(),
            path(&c.key),
        ]
    };
    let mut args = tls(&dev9);
    args.extend(
        [
            "-A",
            "127.0.0.7",
            "-i",
            "tls-sub",
            "-u",
            "someone",
            "-q",
            "1",
            "-t",
            "tls/#",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sub = mosq_sub(fe, &args);
    let line = wait_client(&n, "Client(device-9, ");
    assert!(
        line.starts_with("Client(device-9, username=device-9, peername=127.0.0.7:"),
        "{line}"
    );
    assert!(
        !clients(&n).contains("Client(tls-sub, "),
        "the CONNECT's client id must be replaced"
    );

    let mut args = tls(&dev10);
    args.extend(["-q", "1", "-t", "tls/x", "-m", "over-tls"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mosq_pub(fe, &args);
    assert_eq!(
        sub.messages(1, Duration::from_secs(10)),
        ["tls/x|1|over-tls"]
    );
    // And from a plain TCP client straight to the broker.
    mosq_pub(n.mqtt_port, &["-q", "1", "-t", "tls/y", "-m", "direct"]);
    assert_eq!(sub.messages(1, Duration::from_secs(10)), ["tls/y|1|direct"]);
}

/// Case 7: bad PROXY input on a `proxy_protocol` listener (timeout 1 s): no
/// header, a malformed v1 header, a bad v2 version, a header never sent
/// or never finished; each connection is closed and logged, while a
/// healthy client on the same listener and a TCP subscriber keep working.
#[test]
fn bad_proxy_headers_are_refused() {
    let pp = free_port();
    let mut n = Node::start_with(Opts {
        extra: format!(
            "listeners.tcp.pp {{\n  bind = \"127.0.0.1:{pp}\"\n  proxy_protocol = true\n  proxy_protocol_timeout = 1s\n}}\n"
        ),
        ..Default::default()
    });
    let pp_addr: SocketAddr = format!("127.0.0.1:{pp}").parse().expect("addr");
    let open = || {
        let s = TcpStream::connect(pp_addr).expect("connect");
        let local = s.local_addr().expect("local addr");
        (s, local)
    };
    let d = Duration::from_secs(5);

    // A healthy client behind a v1 header, subscribed at QoS 0.
    let (mut healthy, _) = open();
    let mut hello = format!("PROXY TCP4 198.51.100.2 127.0.0.1 40000 {pp}\r\n").into_bytes();
    hello.extend(connect_v4("pp-healthy", 60));
    hello.extend(subscribe_packet("bad/#", 0));
    healthy.write_all(&hello).expect("write");
    assert_eq!(
        read_exact_within(&mut healthy, 9, d),
        [0x20, 2, 0, 0, 0x90, 3, 0, 1, 0]
    );
    let mut watcher = mosq_sub(n.mqtt_port, &["-q", "1", "-t", "bad/#"]);

    // v1 UNKNOWN (a balancer's health check): the socket's address stands.
    let (mut unknown, local_unknown) = open();
    let mut bytes = b"PROXY UNKNOWN\r\n".to_vec();
    bytes.extend(connect_v4("pp-unknown", 60));
    unknown.write_all(&bytes).expect("write");
    assert_eq!(read_exact_within(&mut unknown, 4, d), [0x20, 2, 0, 0]);
    let line = wait_client(&n, "Client(pp-unknown, ");
    assert!(
        line.starts_with(&format!(
            "Client(pp-unknown, username=undefined, peername={local_unknown}, "
        )),
        "{line}"
    );

    // v2 LOCAL (the same from a v2 balancer): the socket's address too.
    let (mut local_cmd, local_addr) = open();
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    bytes.extend(connect_v4("pp-local", 60));
    local_cmd.write_all(&bytes).expect("write");
    assert_eq!(read_exact_within(&mut local_cmd, 4, d), [0x20, 2, 0, 0]);
    let line = wait_client(&n, "Client(pp-local, ");
    assert!(
        line.starts_with(&format!(
            "Client(pp-local, username=undefined, peername={local_addr}, "
        )),
        "{line}"
    );

    // Headers that arrive a byte at a time are waited for: v1, and v2
    // with an SSL TLV (its CN unused: peer_cert_as_username is disabled).
    let slow = [
        (
            "pp-slow-v1",
            format!("PROXY TCP4 192.0.2.45 127.0.0.1 4445 {pp}\r\n").into_bytes(),
            "peername=192.0.2.45:4445, ",
        ),
        (
            "pp-slow-v2",
            proxy_v2(
                "192.0.2.44:4444".parse().expect("addr"),
                pp_addr,
                Some("not-used"),
            ),
            "peername=192.0.2.44:4444, ",
        ),
    ];
    let mut slow_conns = Vec::new();
    for (id, header, want) in &slow {
        let (mut s, _) = open();
        s.set_nodelay(true).expect("nodelay");
        for b in header {
            s.write_all(&[*b]).expect("write");
            std::thread::sleep(Duration::from_millis(3));
        }
        s.write_all(&connect_v4(id, 60)).expect("write");
        assert_eq!(read_exact_within(&mut s, 4, d), [0x20, 2, 0, 0], "{id}");
        let line = wait_client(&n, &format!("Client({id}, "));
        assert!(
            line.starts_with(&format!("Client({id}, username=undefined, {want}")),
            "{line}"
        );
        slow_conns.push(s);
    }

    // Slow ones first, so their timeouts run while the rest is checked.
    let (mut silent, local_silent) = open();
    let (mut partial, local_partial) = open();
    partial.write_all(b"PROXY TCP4 192.0.2.1 ").expect("write");

    // No header: a CONNECT straight away.
    let (mut s, local) = open();
    s.write_all(&connect_v4("no-header", 60)).expect("write");
    let (got, closed) = read_until_closed(&mut s, d);
    assert!(closed.is_some() && got.is_empty(), "{got:?} {closed:?}");
    wait_log(
        &n,
        &[
            "listener tcp:pp: closing connection: no PROXY protocol header",
            &format!("peer={local}"),
        ],
    );

    // A malformed v1 header.
    let (mut s, local) = open();
    let mut bytes = b"PROXY TCP4 1.2.3.4\r\n".to_vec();
    bytes.extend(connect_v4("bad-v1", 60));
    s.write_all(&bytes).expect("write");
    let (got, closed) = read_until_closed(&mut s, d);
    assert!(closed.is_some() && got.is_empty(), "{got:?} {closed:?}");
    wait_log(
        &n,
        &[
            "closing connection: malformed PROXY v1 header",
            &format!("peer={local}"),
        ],
    );

    // A v2 header of version 3.
    let (mut s, local) = open();
    let mut bytes = proxy_v2("192.0.2.3:4000".parse().expect("addr"), pp_addr, None);
    bytes[12] = 0x31;
    bytes.extend(connect_v4("bad-v2", 60));
    s.write_all(&bytes).expect("write");
    let (got, closed) = read_until_closed(&mut s, d);
    assert!(closed.is_some() && got.is_empty(), "{got:?} {closed:?}");
    wait_log(
        &n,
        &[
            "closing connection: malformed PROXY v2 header",
            &format!("peer={local}"),
        ],
    );

    // Never sent, never finished: closed after proxy_protocol_timeout.
    for (s, local) in [(&mut silent, local_silent), (&mut partial, local_partial)] {
        let (got, closed) = read_until_closed(s, Duration::from_secs(6));
        assert!(got.is_empty(), "{got:?}");
        assert!(closed.is_some(), "{local}: still open after 6 s");
        wait_log(
            &n,
            &[
                "closing connection: no PROXY header within 1s",
                &format!("peer={local}"),
            ],
        );
    }
    // Time it on a fresh connection: about 1 s, not at once, not 15 s.
    let (mut s, _) = open();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(6));
    let took = closed.expect("a silent connection must be closed");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "closed after {took:?}, want about 1 s"
    );

    // None of them became a client; the healthy ones still work.
    let list = clients(&n);
    for id in ["no-header", "bad-v1", "bad-v2"] {
        assert!(!list.contains(&format!("Client({id}, ")), "{list}");
    }
    let line = wait_client(&n, "Client(pp-healthy, ");
    assert!(
        line.starts_with("Client(pp-healthy, username=undefined, peername=198.51.100.2:40000, "),
        "{line}"
    );
    mosq_pub(
        n.mqtt_port,
        &["-q", "1", "-t", "bad/after", "-m", "still here"],
    );
    let want = publish_qos0("bad/after", b"still here");
    assert_eq!(read_exact_within(&mut healthy, want.len(), d), want);
    assert_eq!(
        watcher.messages(1, Duration::from_secs(10)),
        ["bad/after|1|still here"]
    );
    assert!(n.alive(), "the node must survive bad PROXY input");
}

/// Case 8: PROXY headers on ws, wss and ssl listeners, written by hand
/// before the WebSocket upgrade / TLS handshake: the broker shows the
/// header's address, and a v2 SSL CN becomes the user name.
#[test]
fn proxy_header_on_ws_wss_and_ssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::make_ca(dir.path(), "pp");
    let server = pki::issue(dir.path(), &ca, "server", "127.0.0.1", pki::SERVER_EXT);
    let (ws, wss, ssl) = (free_port(), free_port(), free_port());
    let tls = format!(
        "  proxy_protocol = true\n  ssl_options {{\n    certfile = \"{}\"\n    keyfile = \"{}\"\n  }}\n",
        path(&server.cert),
        path(&server.key)
    );
    let extra = listener("ws", "pp", ws, "  proxy_protocol = true\n")
        + &listener("wss", "pp", wss, &tls)
        + &listener("ssl", "pp", ssl, &tls)
        + "mqtt.peer_cert_as_username = cn\n";
    let n = Node::start_with(Opts {
        extra,
        ..Default::default()
    });
    let dst = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
    // (transport, port, client id, PROXY header, what `clients list` shows)
    let cases = [
        (
            "ws",
            ws,
            "ws-pp",
            format!("PROXY TCP4 203.0.113.7 127.0.0.1 51234 {ws}\r\n").into_bytes(),
            "username=undefined, peername=203.0.113.7:51234, ",
        ),
        (
            "wss",
            wss,
            "wss-pp",
            proxy_v2(
                "198.51.100.9:40009".parse().expect("addr"),
                dst(wss),
                Some("lb-device"),
            ),
            "username=lb-device, peername=198.51.100.9:40009, ",
        ),
        (
            "ssl",
            ssl,
            "ssl-pp",
            format!("PROXY TCP6 2001:db8::7 ::1 40007 {ssl}\r\n").into_bytes(),
            "username=undefined, peername=[2001:db8::7]:40007, ",
        ),
    ];
    let mut procs = Vec::new();
    for (mode, port, cid, header, _) in &cases {
        let mut args = vec![
            kv("mode", mode),
            kv("port", port),
            kv("cid", cid),
            kv("topic", "pp/#"),
            kv("header", hex(header)),
        ];
        if *mode != "ws" {
            args.push(kv("ca", path(&ca.cert)));
        }
        let mut p = Proc::spawn(&format!("{mode} client"), python(RAW_CLIENT, &args));
        p.expect_line("READY", Duration::from_secs(15));
        procs.push(p);
    }
    for (_, _, cid, _, want) in &cases {
        let line = wait_client(&n, &format!("Client({cid}, "));
        assert!(
            line.starts_with(&format!("Client({cid}, {want}")),
            "want {want:?}: {line}"
        );
    }
    mosq_pub(n.mqtt_port, &["-q", "1", "-t", "pp/all", "-m", "hi"]);
    for p in &mut procs {
        assert_eq!(
            p.expect_line("GOT", Duration::from_secs(10)),
            "GOT pp/all hi"
        );
    }
    // Without a header the ws listener closes the connection.
    let out = run_python(
        "ws without PROXY header",
        r#"
try:
    ws_open('ws://127.0.0.1:%s/mqtt' % ARGS['port'])
except Exception as e:
    print('REFUSED', type(e).__name__, flush=True)
else:
    raise AssertionError('upgraded without a PROXY header')
"#,
        &[kv("port", ws)],
        Duration::from_secs(20),
    );
    assert!(out.iter().any(|l| l.starts_with("REFUSED")), "{out:#?}");
    wait_log(
        &n,
        &["listener ws:pp: closing connection: no PROXY protocol header"],
    );
}
