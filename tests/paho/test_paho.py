"""Interoperability tests: the Eclipse Paho Python client (paho-mqtt 2.x)
against a real emqx-rs broker, for MQTT 3.1.1 and MQTT 5.0.

The tests are written in the spirit of the Paho interoperability suite
(basic delivery, retained messages, wills, sessions, keepalive, and the
MQTT 5 features) but are this project's own code.

Each test class starts its own broker in setUpClass from
`<repo>/target/debug/emqx-rs` (run `cargo build` first) with a temporary
config on free ports, and kills it in tearDownClass / class cleanup.

Run from the repository root:

    python3 -m unittest discover -s tests/paho -v
"""

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as e:  # pragma: no cover - environment problem
    raise ImportError(
        "paho-mqtt 2.x is required: python3 -m pip install 'paho-mqtt>=2,<3'"
    ) from e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("EMQX_RS_BIN", REPO / "target" / "debug" / "emqx-rs"))
HOST = "127.0.0.1"

WAIT = 10.0  # upper bound of every "this should happen" wait
QUIET = 1.0  # how long we watch for "this should not happen"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Broker:
    """One emqx-rs process with its own config, ports and data directory."""

    def __init__(self):
        self.proc = None
        self.dir = None
        self.log_file = None
        self.port = None

    def start(self):
        if not BIN.is_file() or not os.access(BIN, os.X_OK):
            raise RuntimeError(
                f"emqx-rs binary not found at {BIN}: run `cargo build` in {REPO} first"
            )
        self.dir = tempfile.mkdtemp(prefix="emqx-rs-paho-")
        self.port = free_port()
        dist_port = free_port()
        while dist_port == self.port:
            dist_port = free_port()
        fwd_port = free_port()
        while fwd_port in (self.port, dist_port):
            fwd_port = free_port()
        data = os.path.join(self.dir, "data")
        conf = os.path.join(self.dir, "emqx.conf")
        with open(conf, "w") as f:
            f.write(
                "node {\n"
                f'  name = "p{dist_port}@127.0.0.1"\n'
                '  cookie = "testcookie"\n'
                f'  data_dir = "{data}"\n'
                f"  dist_listen_port = {dist_port}\n"
                f"  forward_listen_port = {fwd_port}\n"
                "}\n"
                f'listeners.tcp.default.bind = "{HOST}:{self.port}"\n'
                "log.console.level = info\n"
                "log.file.level = info\n"
            )
        # The authorization rules Paho's interoperability suite expects
        # (its test_subscribe_failure), given through the environment as
        # an EMQX user would.
        acl = os.path.join(self.dir, "acl.conf")
        with open(acl, "w") as f:
            f.write('{deny, all, subscribe, ["test/nosubscribe"]}.\n{allow, all}.\n')
        env = dict(os.environ)
        env["EMQX_AUTHORIZATION__SOURCES"] = (
            '[{type = file, enable = true, path = "%s"}]' % acl
        )
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN), "foreground", "-config", conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                pass
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"emqx-rs exited at start with {code}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"emqx-rs did not open its MQTT port in 30 s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def props(packet_type, **kw):
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


class Msg:
    """What a client received (paho's MQTTMessage has __slots__). `topic`
    is resolved through server topic aliases; `raw_topic` is as sent."""

    def __init__(self, m, raw_topic, topic):
        self.raw_topic = raw_topic
        self.topic = self.resolved_topic = topic
        self.payload = m.payload
        self.qos = m.qos
        self.retain = bool(m.retain)
        self.dup = bool(m.dup)
        self.mid = m.mid
        self.properties = m.properties
        self.arrived = time.monotonic()

    def __repr__(self):
        return "Msg(%r, %r, qos=%d, retain=%d, dup=%d)" % (
            self.topic, self.payload, self.qos, self.retain, self.dup)


class Client:
    """A paho client running its network loop in a thread, recording what
    it receives. Every wait is bounded."""

    def __init__(self, case, client_id, v5, clean=True, keepalive=60,
                 connect_props=None, will=None, manual_ack=False):
        self.case = case
        self.v5 = v5
        self.clean = clean
        self.keepalive = keepalive
        self.connect_props = connect_props
        kw = {}
        if not v5:
            kw["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=manual_ack,
            **kw,
        )
        if will is not None:
            self.c.will_set(**will)
        self.cond = threading.Condition()
        self.msgs = []
        self.connacks = []
        self.disconnects = []
        self.subacks = {}
        self.unsubacks = {}
        self.aliases = {}
        self.closed = False
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        case.addCleanup(self.close)

    # callbacks (network thread)
    def _on_connect(self, c, ud, flags, rc, properties):
        with self.cond:
            self.connacks.append((flags.session_present, rc, properties))
            self.cond.notify_all()

    def _on_disconnect(self, c, ud, flags, rc, properties):
        with self.cond:
            self.disconnects.append((rc, properties))
            self.cond.notify_all()

    def _on_message(self, c, ud, msg):
        raw_topic = msg._topic.decode("utf-8", "replace")
        topic = raw_topic
        alias = getattr(msg.properties, "TopicAlias", None) if self.v5 else None
        # paho does not resolve server topic aliases: do it here.
        if alias is not None:
            if raw_topic:
                self.aliases[alias] = raw_topic
            else:
                topic = self.aliases.get(alias, "<unknown alias %d>" % alias)
        rec = Msg(msg, raw_topic, topic)
        with self.cond:
            self.msgs.append(rec)
            self.cond.notify_all()

    def _on_subscribe(self, c, ud, mid, rcs, properties):
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _on_unsubscribe(self, c, ud, mid, rcs, properties):
        with self.cond:
            self.unsubacks[mid] = rcs
            self.cond.notify_all()

    # actions (test thread)
    def connect(self, clean_start=None, expect_ok=True):
        """Connects and waits for CONNACK: (session_present, reason, props)."""
        n = len(self.connacks)
        kw = {}
        if self.v5:
            kw["clean_start"] = self.clean if clean_start is None else clean_start
            kw["properties"] = self.connect_props
        self.c.connect(HOST, self.case.broker.port, self.keepalive, **kw)
        self.c.loop_start()
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.connacks) > n, WAIT)
        self.case.assertTrue(ok, "no CONNACK within %.0f s" % WAIT)
        ack = self.connacks[n]
        if expect_ok:
            self.case.assertFalse(ack[1].is_failure, "CONNACK refused: %s" % ack[1])
        return ack

    def subscribe(self, topic, qos=2, options=None, properties=None, refused=False):
        if options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        self.case.assertEqual(rc, mqtt.MQTT_ERR_SUCCESS)
        with self.cond:
            ok = self.cond.wait_for(lambda: mid in self.subacks, WAIT)
        self.case.assertTrue(ok, "no SUBACK for %s" % topic)
        rcs = self.subacks[mid]
        if not refused:
            for r in rcs:
                self.case.assertFalse(r.is_failure, "subscription to %s refused: %s" % (topic, r))
        return rcs

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        self.case.assertEqual(rc, mqtt.MQTT_ERR_SUCCESS)
        with self.cond:
            ok = self.cond.wait_for(lambda: mid in self.unsubacks, WAIT)
        self.case.assertTrue(ok, "no UNSUBACK for %s" % topic)
        return self.unsubacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties)
        self.case.assertEqual(info.rc, mqtt.MQTT_ERR_SUCCESS, "publish failed: %s" % info.rc)
        info.wait_for_publish(WAIT)
        self.case.assertTrue(info.is_published(), "publish to %r not acknowledged" % topic)
        return info

    def wait_msgs(self, n, timeout=WAIT):
        """Waits until at least n messages arrived; returns all of them."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.msgs) >= n, timeout)
            return list(self.msgs)

    def wait_for(self, pred, timeout=WAIT):
        with self.cond:
            self.cond.wait_for(lambda: pred(self.msgs), timeout)
            return list(self.msgs)

    def settle(self, quiet=QUIET):
        """Waits `quiet` seconds (no more arrivals expected); returns all."""
        deadline = time.monotonic() + quiet
        with self.cond:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return list(self.msgs)
                self.cond.wait(left)

    def clear(self):
        with self.cond:
            self.msgs.clear()

    def pause(self):
        """Stops the network loop: nothing is read, acked or pinged."""
        self.c.loop_stop()

    def drop(self):
        """Closes the TCP connection without DISCONNECT."""
        self.c.loop_stop()
        s = self.c._sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.closed = True

    def disconnect(self, properties=None):
        if self.closed:
            return
        self.closed = True
        try:
            self.c.disconnect(properties=properties)
        finally:
            self.c.loop_stop()

    def close(self):
        try:
            self.disconnect()
        except Exception:
            pass

    def readable(self, timeout=WAIT):
        """True when bytes wait unread on the socket (loop paused)."""
        s = self.c._sock
        r, _, _ = select.select([s], [], [], timeout)
        return bool(r)


def payloads(msgs):
    return [m.payload for m in msgs]


class BrokerCase(unittest.TestCase):
    V5 = False
    broker = None

    @classmethod
    def setUpClass(cls):
        cls.broker = Broker()
        cls.addClassCleanup(cls.broker.stop)
        cls.broker.start()

    @classmethod
    def tearDownClass(cls):
        cls.broker.stop()

    def setUp(self):
        self.uid = uuid.uuid4().hex[:8]
        self.tag = "%s-%s" % ("v5" if self.V5 else "v4", self.uid)

    def topic(self, name):
        return "paho/%s/%s" % (self.tag, name)

    def cid(self, name):
        return "%s-%s" % (name, self.tag)

    def client(self, name, connect=True, **kw):
        c = Client(self, self.cid(name), self.V5, **kw)
        if connect:
            c.connect()
        return c

    def persistent(self, name, expiry=99999, **kw):
        """A client whose session outlives the connection."""
        if self.V5:
            cp = props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)
            return Client(self, self.cid(name), True, clean=False, connect_props=cp, **kw)
        return Client(self, self.cid(name), False, clean=False, **kw)

    def will(self, topic, payload, qos=1, retain=False, properties=None):
        return dict(topic=topic, payload=payload, qos=qos, retain=retain,
                    properties=properties)


class CommonTests:
    """Tests run for MQTT 3.1.1 and MQTT 5.0."""

    def test_subscribe_failure(self):
        # As Paho's interoperability suite: the broker's authorization
        # refuses test/nosubscribe (see Broker.start); 0x80 on 3.1.1,
        # 0x87 Not authorized on 5.0. Publishing there stays allowed, and
        # nothing reaches the refused subscription.
        c = self.client("nosub")
        rcs = c.subscribe("test/nosubscribe", 2, refused=True)
        self.assertEqual(len(rcs), 1)
        self.assertEqual(rcs[0].value, 0x87 if self.V5 else 0x80)
        c.publish("test/nosubscribe", b"x", 1)
        self.assertEqual(c.settle(0.5), [])

    def test_basic_qos_0_1_2_to_self(self):
        c = self.client("basic")
        t = self.topic("basic")
        c.subscribe(t, 2)
        for q in (0, 1, 2):
            c.publish(t, b"qos %d" % q, q)
        got = c.wait_msgs(3)
        got = c.settle(0.5)
        self.assertEqual(sorted(payloads(got)), [b"qos 0", b"qos 1", b"qos 2"])
        self.assertEqual(sorted(m.qos for m in got), [0, 1, 2])
        for m in got:
            self.assertEqual(m.topic, t)
            self.assertFalse(m.retain)

    def test_retained_messages_delivered_and_cleared(self):
        pub = self.client("rpub")
        base = self.topic("ret")
        topics = [base + "/q%d" % q for q in (0, 1, 2)]
        for q, t in enumerate(topics):
            pub.publish(t, b"retained %d" % q, q, retain=True)
        time.sleep(0.2)
        sub = self.client("rsub")
        sub.subscribe(base + "/#", 2)
        got = sub.wait_msgs(3)
        got = sub.settle(0.5)
        self.assertEqual(sorted(m.topic for m in got), topics)
        self.assertEqual(sorted(payloads(got)), [b"retained 0", b"retained 1", b"retained 2"])
        for m in got:
            self.assertTrue(m.retain, "retained delivery on subscribe has retain=1")
            self.assertEqual(m.qos, int(m.topic[-1]))
        # Clear them with empty retained payloads.
        for q, t in enumerate(topics):
            pub.publish(t, b"", q, retain=True)
        time.sleep(0.2)
        sub2 = self.client("rsub2")
        sub2.subscribe(base + "/#", 2)
        self.assertEqual(payloads(sub2.settle()), [], "retained messages were not cleared")

    def test_will_message_on_abrupt_close(self):
        wt = self.topic("will")
        obs = self.client("wobs")
        obs.subscribe(wt, 2)
        w = self.client("wclient", connect=False, will=self.will(wt, b"gone", 1))
        w.connect()
        time.sleep(0.2)
        w.drop()
        got = obs.wait_msgs(1)
        self.assertEqual(payloads(got), [b"gone"])
        self.assertEqual(got[0].topic, wt)

    def test_no_will_after_normal_disconnect(self):
        wt = self.topic("will")
        obs = self.client("wobs")
        obs.subscribe(wt, 2)
        w = self.client("wclient", connect=False, will=self.will(wt, b"gone", 1))
        w.connect()
        w.disconnect()
        self.assertEqual(payloads(obs.settle(1.5)), [])

    def test_offline_message_queueing(self):
        t = self.topic("offline")
        sub = self.persistent("osub")
        sub.connect()
        sub.subscribe(t, 2)
        sub.disconnect()
        pub = self.client("opub")
        for q in (0, 1, 2):
            pub.publish(t, b"offline qos %d" % q, q)
        time.sleep(0.3)
        sub2 = self.persistent("osub")
        present, _, _ = sub2.connect()
        self.assertTrue(present, "session present on reconnect")
        got = sub2.wait_msgs(3, timeout=3)
        got = sub2.settle(0.5)
        p = payloads(got)
        # Paho's suite accepts 2 (QoS 0 not queued) or 3; emqx-rs queues
        # QoS 0 too by default (mqueue_store_qos0 = true).
        self.assertIn(b"offline qos 1", p)
        self.assertIn(b"offline qos 2", p)
        self.assertEqual(sorted(p), [b"offline qos 0", b"offline qos 1", b"offline qos 2"])

    def test_overlapping_subscriptions_deliver_once(self):
        c = self.client("overlap")
        base = self.topic("ov")
        c.subscribe(base + "/#", 2)
        c.subscribe(base + "/+", 1)
        c.publish(base + "/x", b"overlapping", 2)
        c.wait_msgs(1)
        got = c.settle()
        self.assertEqual(len(got), 1, "expected one delivery, got %r" % [(m.topic, m.qos) for m in got])
        self.assertEqual(got[0].qos, 2, "delivered at the highest granted QoS")

    def test_keepalive_timeout_publishes_will(self):
        wt = self.topic("kawill")
        obs = self.client("kaobs")
        obs.subscribe(wt, 2)
        k = self.client("kaclient", connect=False, keepalive=2,
                        will=self.will(wt, b"keepalive expired", 1))
        k.connect()
        k.pause()
        t0 = time.monotonic()
        got = obs.wait_msgs(1, timeout=10)
        self.assertEqual(payloads(got), [b"keepalive expired"],
                         "will not published within 10 s of a silent keepalive-2 client")
        el = got[0].arrived - t0
        self.assertGreaterEqual(el, 1.5, "dropped too early (%.2f s)" % el)

    def test_redelivery_on_reconnect(self):
        t = self.topic("redeliver")
        sub = self.persistent("rdsub")
        sub.connect()
        sub.subscribe(t, 2)
        sub.pause()
        pub = self.client("rdpub")
        pub.publish(t, b"redeliver qos 1", 1)
        pub.publish(t, b"redeliver qos 2", 2)
        self.assertTrue(sub.readable(), "broker sent nothing to the paused subscriber")
        time.sleep(0.3)
        sub.drop()
        sub2 = self.persistent("rdsub")
        present, _, _ = sub2.connect()
        self.assertTrue(present, "session present on reconnect")
        got = sub2.wait_msgs(2)
        got = sub2.settle(0.5)
        self.assertEqual(sorted(payloads(got)), [b"redeliver qos 1", b"redeliver qos 2"])
        for m in got:
            self.assertTrue(m.dup, "re-delivered PUBLISH %r must have DUP=1" % m.payload)

    def test_dollar_topics_not_matched_by_wildcards(self):
        ctl = self.client("dollarctl")
        ctl.subscribe("$SYS/#", 0)
        ctl_got = ctl.wait_msgs(1, timeout=5)
        c = self.client("dollar")
        c.subscribe("#", 0)
        c.subscribe("+/+", 0)
        dt = "$paho%s/x" % self.uid
        ctl.subscribe(dt, 0)
        c.publish(dt, b"dollar", 1)
        got = c.settle(1.5)
        dollars = [m.topic for m in got if m.topic.startswith("$")]
        self.assertEqual(dollars, [], "# or +/+ matched $ topics")
        if not ctl_got:
            self.skipTest("broker published no $SYS message to compare with")

    def test_unsubscribe(self):
        c = self.client("unsub")
        a, b = self.topic("a"), self.topic("b")
        c.subscribe(a, 1)
        c.subscribe(b, 1)
        c.publish(a, b"a1", 1)
        c.wait_msgs(1)
        c.unsubscribe(a)
        c.publish(a, b"a2", 1)
        c.publish(b, b"b1", 1)
        c.wait_for(lambda ms: b"b1" in payloads(ms))
        got = c.settle(0.5)
        self.assertEqual(payloads(got), [b"a1", b"b1"])


class V311Tests(CommonTests, BrokerCase):
    V5 = False

    def test_zero_length_clientid_clean_session_accepted(self):
        c = Client(self, "", False, clean=True)
        _, rc, _ = c.connect()
        self.assertEqual(rc, 0)
        t = self.topic("zero")
        c.subscribe(t, 1)
        c.publish(t, b"hi", 1)
        self.assertEqual(payloads(c.wait_msgs(1)), [b"hi"])

    def test_zero_length_clientid_persistent_session_refused(self):
        # paho itself refuses to build such a client, so this one CONNECT is
        # sent by hand: MQTT 3.1.1, clean session 0, keepalive 60, id "".
        pkt = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x00, 0, 60, 0, 0])
        s = socket.create_connection((HOST, self.broker.port), timeout=WAIT)
        try:
            s.sendall(pkt)
            data = b""
            deadline = time.monotonic() + WAIT
            while len(data) < 4 and time.monotonic() < deadline:
                chunk = s.recv(16)
                if not chunk:
                    break
                data += chunk
            closed = False
            if len(data) >= 4:
                # [MQTT-3.2.2-5]: the server closes the connection after a
                # refusing CONNACK.
                s.settimeout(5)
                try:
                    closed = s.recv(16) == b""
                except (ConnectionResetError, socket.timeout):
                    closed = False
        finally:
            s.close()
        self.assertEqual(data[:4], bytes([0x20, 2, 0, 2]),
                         "expected CONNACK with return code 2 (identifier rejected)")
        self.assertTrue(closed, "connection not closed within 5 s after the refusing CONNACK")


class V5Tests(CommonTests, BrokerCase):
    V5 = True

    def test_zero_length_clientid_assigned(self):
        c = Client(self, "", True)
        _, rc, p = c.connect()
        self.assertEqual(rc, 0)
        assigned = getattr(p, "AssignedClientIdentifier", None)
        self.assertTrue(assigned, "CONNACK carries an assigned client identifier")

    def test_session_expiry(self):
        t = self.topic("sexp")
        c = self.persistent("sexp", expiry=2)
        c.connect()
        c.subscribe(t, 1)
        c.disconnect()
        c2 = self.persistent("sexp", expiry=2)
        present, _, _ = c2.connect()
        self.assertTrue(present, "session kept right after the disconnect")
        c2.disconnect()
        time.sleep(4)
        c3 = self.persistent("sexp", expiry=2)
        present, _, _ = c3.connect()
        self.assertFalse(present, "session still present 4 s after expiry 2 s")
        pub = self.client("sexppub")
        pub.publish(t, b"after expiry", 1)
        self.assertEqual(payloads(c3.settle()), [], "subscription survived the session expiry")

    def test_will_delay(self):
        wt = self.topic("wdelay")
        obs = self.client("wdobs")
        obs.subscribe(wt, 2)
        wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=3)
        cp = props(PacketTypes.CONNECT, SessionExpiryInterval=5)
        w = self.client("wdclient", connect=False, connect_props=cp,
                        will=self.will(wt, b"delayed will", 1, properties=wp))
        w.connect()
        t0 = time.monotonic()
        w.drop()
        got = obs.wait_msgs(1, timeout=8)
        self.assertEqual(payloads(got), [b"delayed will"])
        el = got[0].arrived - t0
        self.assertGreaterEqual(el, 2.5, "will arrived after %.2f s, before its 3 s delay" % el)
        self.assertLessEqual(el, 5.0, "will arrived after %.2f s (delay 3 s)" % el)

    def test_server_topic_alias(self):
        cp = props(PacketTypes.CONNECT, TopicAliasMaximum=1)
        sub = self.client("tasub", connect=False, connect_props=cp)
        sub.connect()
        t1, t2 = self.topic("alias/one"), self.topic("alias/two")
        sub.subscribe(self.topic("alias/#"), 1)
        pub = self.client("tapub")
        for i in range(3):
            pub.publish(t1, b"one %d" % i, 1)
        pub.publish(t2, b"two", 1)
        pub.publish(t1, b"one again", 1)
        got = sub.wait_msgs(5)
        got = sub.settle(0.5)
        self.assertEqual([(m.resolved_topic, m.payload) for m in got],
                         [(t1, b"one 0"), (t1, b"one 1"), (t1, b"one 2"), (t2, b"two"),
                          (t1, b"one again")])
        aliases = [getattr(m.properties, "TopicAlias", None) for m in got]
        for a in aliases:
            self.assertIn(a, (None, 1), "alias above TopicAliasMaximum 1: %r" % aliases)
        self.assertTrue(any(m.raw_topic == "" for m in got),
                        "no publish used the topic alias: %r" % [(m.raw_topic, a) for m, a in zip(got, aliases)])

    def test_client_topic_alias(self):
        t = self.topic("calias")
        sub = self.client("casub")
        sub.subscribe(t, 1)
        pub = self.client("capub")
        pub.publish(t, b"with topic", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
        pub.publish("", b"alias only", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
        got = sub.wait_msgs(2)
        self.assertEqual([(m.resolved_topic, m.payload) for m in got],
                         [(t, b"with topic"), (t, b"alias only")])

    def test_maximum_packet_size(self):
        cp = props(PacketTypes.CONNECT, MaximumPacketSize=64)
        c = self.client("mps", connect=False, connect_props=cp)
        c.connect()
        t = "m/" + self.uid  # short: a 32-byte payload fits in 64 bytes
        c.subscribe(t, 1)
        pub = self.client("mpspub")
        pub.publish(t, b"L" * 100, 1)
        pub.publish(t, b"S" * 32, 1)
        c.wait_msgs(1)
        got = c.settle()
        self.assertEqual(payloads(got), [b"S" * 32],
                         "only the 32-byte message fits MaximumPacketSize 64")
        self.assertFalse(c.disconnects, "client was disconnected: %r" % c.disconnects)

    def test_flow_control_receive_maximum(self):
        cp = props(PacketTypes.CONNECT, ReceiveMaximum=2)
        c = self.client("flow", connect=False, connect_props=cp, manual_ack=True)
        c.connect()
        t = self.topic("flow")
        c.subscribe(t, 1)
        pub = self.client("flowpub")
        for i in range(5):
            pub.publish(t, b"m%d" % i, 1)
        c.wait_msgs(2)
        got = c.settle()
        self.assertEqual(payloads(got), [b"m0", b"m1"], "ReceiveMaximum 2 allows 2 unacked")
        for m in got:
            c.c.ack(m.mid, m.qos)
        c.wait_msgs(4)
        got = c.settle(0.5)
        self.assertEqual(payloads(got), [b"m0", b"m1", b"m2", b"m3"])
        for m in got[2:]:
            c.c.ack(m.mid, m.qos)
        got = c.wait_msgs(5)
        self.assertEqual(payloads(got), [b"m%d" % i for i in range(5)])
        c.c.ack(got[4].mid, 1)

    def test_request_response(self):
        req_t, resp_t = self.topic("request"), self.topic("response")
        responder = self.client("responder")
        responder.subscribe(req_t, 1)
        requester = self.client("requester")
        requester.subscribe(resp_t, 1)
        p = props(PacketTypes.PUBLISH, ResponseTopic=resp_t, CorrelationData=b"\x00corr-42\xff")
        requester.publish(req_t, b"question", 1, properties=p)
        req = responder.wait_msgs(1)
        self.assertEqual(len(req), 1, "request not delivered")
        rp = req[0].properties
        self.assertEqual(rp.ResponseTopic, resp_t)
        self.assertEqual(rp.CorrelationData, b"\x00corr-42\xff")
        responder.publish(rp.ResponseTopic, b"answer", 1,
                          properties=props(PacketTypes.PUBLISH, CorrelationData=rp.CorrelationData))
        resp = requester.wait_msgs(1)
        self.assertEqual(payloads(resp), [b"answer"])
        self.assertEqual(resp[0].properties.CorrelationData, b"\x00corr-42\xff")

    def test_subscribe_option_no_local(self):
        t = self.topic("nolocal")
        me = self.client("nlme")
        me.subscribe(t, options=SubscribeOptions(qos=1, noLocal=True))
        other = self.client("nlother")
        other.subscribe(t, 1)
        me.publish(t, b"from me", 1)
        self.assertEqual(payloads(other.wait_msgs(1)), [b"from me"])
        self.assertEqual(payloads(me.settle()), [], "noLocal subscriber got its own message")
        other.publish(t, b"from other", 1)
        self.assertEqual(payloads(me.wait_msgs(1)), [b"from other"])

    def test_subscribe_option_retain_as_published(self):
        t = self.topic("rap")
        rap = self.client("rap1")
        rap.subscribe(t, options=SubscribeOptions(qos=1, retainAsPublished=True))
        norap = self.client("rap0")
        norap.subscribe(t, options=SubscribeOptions(qos=1, retainAsPublished=False))
        pub = self.client("rappub")
        pub.publish(t, b"retained live", 1, retain=True)
        a, b = rap.wait_msgs(1), norap.wait_msgs(1)
        pub.publish(t, b"", 1, retain=True)
        self.assertEqual(payloads(a)[:1], [b"retained live"])
        self.assertEqual(payloads(b)[:1], [b"retained live"])
        self.assertTrue(a[0].retain, "retainAsPublished keeps retain=1")
        self.assertFalse(b[0].retain, "live delivery without retainAsPublished has retain=0")

    def test_subscribe_option_retain_handling(self):
        t = self.topic("rh")
        pub = self.client("rhpub")
        pub.publish(t, b"kept", 1, retain=True)
        try:
            for rh, first, again in ((0, 1, 1), (1, 1, 0), (2, 0, 0)):
                with self.subTest(retainHandling=rh):
                    c = self.client("rh%d" % rh)
                    opts = SubscribeOptions(qos=1, retainHandling=rh)
                    c.subscribe(t, options=opts)
                    got = c.wait_msgs(first, timeout=QUIET if first == 0 else WAIT)
                    got = c.settle(0.5)
                    self.assertEqual(len(got), first, "first subscribe, rh=%d" % rh)
                    c.clear()
                    c.subscribe(t, options=opts)
                    got = c.settle()
                    self.assertEqual(len(got), again, "repeated subscribe, rh=%d" % rh)
                    c.disconnect()
        finally:
            pub.publish(t, b"", 1, retain=True)

    def test_payload_format_and_content_type(self):
        t = self.topic("pfi")
        c = self.client("pfi")
        c.subscribe(t, 1)
        p = props(PacketTypes.PUBLISH, PayloadFormatIndicator=1, ContentType="text/plain; charset=utf-8")
        c.publish(t, "héllo".encode(), 1, properties=p)
        got = c.wait_msgs(1)
        self.assertEqual(len(got), 1)
        self.assertEqual(getattr(got[0].properties, "PayloadFormatIndicator", None), 1)
        self.assertEqual(getattr(got[0].properties, "ContentType", None), "text/plain; charset=utf-8")

    def test_message_expiry_of_retained_message(self):
        base = self.topic("mexp")
        pub = self.client("mexppub")
        pub.publish(base + "/short", b"short-lived", 1, retain=True,
                    properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
        pub.publish(base + "/long", b"long-lived", 1, retain=True,
                    properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
        try:
            time.sleep(2.5)
            c = self.client("mexp")
            c.subscribe(base + "/#", 1)
            c.wait_msgs(1)
            got = c.settle()
            self.assertEqual(payloads(got), [b"long-lived"], "expired retained message delivered")
            left = getattr(got[0].properties, "MessageExpiryInterval", None)
            self.assertIsNotNone(left, "remaining message expiry interval not sent")
            self.assertLess(left, 60, "expiry interval not reduced by the time it was held")
            self.assertGreaterEqual(left, 55)
        finally:
            pub.publish(base + "/short", b"", 1, retain=True)
            pub.publish(base + "/long", b"", 1, retain=True)

    def test_subscription_identifiers(self):
        base = self.topic("subid")
        c = self.client("subid")
        c.subscribe(base + "/+", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
        c.subscribe(base + "/#", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=3))
        c.publish(base + "/x", b"both", 1)
        c.wait_msgs(1)
        got = c.settle()
        self.assertEqual(len(got), 1, "overlapping subscriptions deliver one message")
        ids = getattr(got[0].properties, "SubscriptionIdentifier", [])
        self.assertEqual(sorted(ids), [2, 3])

    def test_shared_subscription(self):
        t = self.topic("shared")
        a, b = self.client("sharea"), self.client("shareb")
        a.subscribe("$share/g%s/%s" % (self.uid, t), 1)
        b.subscribe("$share/g%s/%s" % (self.uid, t), 1)
        pub = self.client("sharepub")
        n = 10
        for i in range(n):
            pub.publish(t, b"s%d" % i, 1)
        want = sorted(b"s%d" % i for i in range(n))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and len(a.msgs) + len(b.msgs) < n:
            time.sleep(0.05)
        ga, gb = a.settle(0.5), b.settle(0)
        self.assertEqual(sorted(payloads(ga) + payloads(gb)), want,
                         "each message to exactly one member (a=%r, b=%r)" % (payloads(ga), payloads(gb)))

    def test_user_properties_in_order(self):
        t = self.topic("userprops")
        c = self.client("userprops")
        c.subscribe(t, 1)
        up = [("z", "1"), ("a", "2"), ("z", "3"), ("key", "välue")]
        c.publish(t, b"props", 1, properties=props(PacketTypes.PUBLISH, UserProperty=up))
        got = c.wait_msgs(1)
        self.assertEqual(len(got), 1)
        self.assertEqual(getattr(got[0].properties, "UserProperty", None), up)


if __name__ == "__main__":
    unittest.main(verbosity=2)
