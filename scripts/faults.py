#!/usr/bin/env python3
"""The fault suite: a real emqx-rs cluster, a real MQTT workload, seeded faults,
and a checker over what the clients saw.

    scripts/faults.py [--nodes 3] [--replicants 0] [--seed N]
                      [--faults partition,pause,...] [--time 120]
                      [--bin target/debug/emqx-rs] [--extra FILE]

It starts N nodes of the given binary on 127.0.10.1 .. 127.0.10.N (one
address per node, static discovery, fast failure detection; the last
`--replicants` of them with `node.db_role = replicant`), then runs:

- publishers (QoS 1 and QoS 2, clean sessions, two per node) that publish
  numbered messages on their own topic, one at a time, waiting for the
  acknowledgement; a publisher whose node does not answer moves to the next;
- persistent subscribers (MQTT 3.1.1 clean_session=false and MQTT 5 with a
  session expiry, two per node, on `faults/#` at QoS 2 or QoS 1) that stay
  on their node and resume their session after every disconnect;
- a nemesis that, from the seed, applies one fault after another for
  `--time` seconds, heals it, and waits for the cluster to converge
  before the next:
    partition  majority / minority split of the inter-node traffic
    isolate    one node cut from every other
    bridge     A sees B and C, B and C do not see each other
    oneway     one node hears nothing from the others (it can still send)
    pause      SIGSTOP of a node for longer than the down timeout, SIGCONT
    slow       inter-node links limited to a low rate (tc htb) with random
               packet loss (iptables statistic)
    kill       kill -9 of a node, restarted after a while
- a quiet period, then the checker.

The checker reads the recorded history and prints one verdict line with
the seed to replay:

    faults: PASS seed=7 nodes=3 faults=partition,pause ... converge=8.1s
    faults: FAIL seed=7 ... lost=12 dup=0 unknown=0 order=0 ...

- lost: an acknowledged message (PUBACK / PUBCOMP received) published
  while a subscriber was subscribed that the subscriber never got. Losses
  with a known cause are reported apart: a session the broker dropped
  (the subscriber reconnected and was told session_present = 0) because
  its node was killed (`lost_with_session[kill]`), and messages the
  publisher's node acknowledged and was killed before forwarding
  (`lost_with_publisher_node[kill]`). They fail the run too, unless
  `--allow-loss kill` is given; a session dropped with no kill of its
  node always fails it.
- dup: a message delivered twice to one subscriber at QoS 2 (QoS 1 may
  repeat and is only counted).
- unknown: a message nobody published.
- order: within one publisher connection, one subscriber got a later
  message before an earlier one (first deliveries only).
- convergence: after the last heal every node lists the same running
  members (all of them, none stopped) and the same routes.
- with `--ds SHARDS/RF/SITES` the cores also run the replicated durable
  storage's groups (`durable_storage.messages.backend = builtin_raft`); after
  the last heal every shard, as each core sees it, has a leader among
  its voters, no learner, and min(RF, cores) voters, all cores (`ds=`).

Needs root (iptables, tc, signals to the nodes), python3 with paho-mqtt 2.x.
Every iptables rule carries a comment naming this run and is removed at
exit, as is the tc qdisc; rules left by a run that died are removed at
start. History, node logs and the report are kept in `--dir`
(default: a new directory under /tmp).
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
except ImportError:  # pragma: no cover
    sys.exit("faults: needs paho-mqtt 2.x (pip install 'paho-mqtt>=2,<3')")

KINDS = ["partition", "isolate", "bridge", "oneway", "pause", "slow", "kill"]
NET = "127.0.10"
MQTT_PORT = 11883
API_PORT = 28083
NAME_BASE = 70  # emqx71@127.0.10.1: inter-node port 4441, forwarding 5441
TAG = f"emqx-rs-faults-{os.getpid()}"
HEARTBEAT = 1.0
DOWN_TIMEOUT = 3.0


def now():
    return time.monotonic()


class Log:
    """The run's event log: printed and kept with the history."""

    def __init__(self, path, t0):
        self.f = open(path, "a", buffering=1)
        self.t0 = t0
        self.lock = threading.Lock()

    def __call__(self, msg):
        line = f"[{now() - self.t0:7.2f}] {msg}"
        with self.lock:
            print(line, flush=True)
            self.f.write(line + "\n")


# ---------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------


class Node:
    def __init__(self, i, args, cookie, seeds, extra):
        self.i = i
        self.host = f"{NET}.{i}"
        self.short = f"emqx{NAME_BASE + i}"
        self.name = f"{self.short}@{self.host}"
        self.dist = 4370 + NAME_BASE + i
        self.fwd = 5370 + NAME_BASE + i
        self.bin = args.bin
        self.ds = args.ds
        self.dir = os.path.join(args.dir, self.short)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "emqx.conf")
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        with open(self.config, "w") as f:
            f.write(
                f'node {{\n  name = "{self.name}"\n  cookie = "{cookie}"\n'
                f'  data_dir = "{os.path.join(self.dir, "data")}"\n}}\n'
                f'listeners.tcp.default.bind = "{self.host}:{MQTT_PORT}"\n'
                f'dashboard.listeners.http.bind = "{self.host}:{API_PORT}"\n'
                f"cluster {{\n  discovery_strategy = static\n"
                f"  static.seeds = [{seed_list}]\n"
                f"  heartbeat_interval = {int(HEARTBEAT)}s\n"
                f"  down_timeout = {int(DOWN_TIMEOUT)}s\n"
                f"  autoheal_delay = 3s\n}}\n"
                # Offline subscribers queue every message of the run: an
                # overflowing queue is a limit, not a fault.
                f"mqtt.max_mqueue_len = 1000000\n"
                f"log.console.level = info\n"
                f"{extra}\n"
            )
        self.proc = None
        self.paused = False

    def start(self, timeout=30):
        out = open(os.path.join(self.dir, "console.log"), "ab")
        env = dict(os.environ)
        if self.ds:
            shards, rf, sites = self.ds.split("/")
            env["EMQX_DURABLE_STORAGE__MESSAGES__BACKEND"] = "builtin_raft"
            env["EMQX_DURABLE_STORAGE__MESSAGES__N_SHARDS"] = shards
            env["EMQX_DURABLE_STORAGE__MESSAGES__REPLICATION_FACTOR"] = rf
            env["EMQX_DURABLE_STORAGE__MESSAGES__N_SITES"] = sites
            # The shards keep a copy of the session journal.
            env["EMQX_DURABLE_SESSIONS__ENABLE"] = "true"
        self.proc = subprocess.Popen(
            [self.bin, "foreground", "-config", self.config],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.paused = False
        deadline = now() + timeout
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited at start ({self.proc.returncode}); "
                    f"see {self.dir}/console.log"
                )
            try:
                socket.create_connection((self.host, MQTT_PORT), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not open {self.host}:{MQTT_PORT}")

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self):
        if self.paused:
            self.signal(signal.SIGCONT)
            self.paused = False
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.paused:
            self.signal(signal.SIGCONT)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ctl(self, *args, timeout=10):
        try:
            o = subprocess.run(
                [self.bin, "ctl", *args, "-config", self.config],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                text=True,
            )
            return o.returncode, o.stdout
        except subprocess.TimeoutExpired:
            return -1, ""

    def view(self):
        """(running, stopped, routes) as this node sees them, or None."""
        rc, out = self.ctl("cluster", "status", "--json")
        if rc != 0:
            return None
        try:
            v = json.loads(out)
        except ValueError:
            return None
        rc, routes = self.ctl("topics", "list")
        if rc != 0:
            return None
        return (
            tuple(sorted(v.get("running_nodes", []))),
            tuple(sorted(v.get("stopped_nodes", []))),
            tuple(sorted(l for l in routes.splitlines() if "->" in l)),
        )

    def metric(self, name):
        rc, out = self.ctl("broker", "metrics", "--json")
        if rc != 0:
            return None
        try:
            return json.loads(out).get(name)
        except ValueError:
            return None


# ---------------------------------------------------------------------------
# network faults
# ---------------------------------------------------------------------------


def sh(*cmd, check=True):
    o = subprocess.run(cmd, capture_output=True, text=True)
    if check and o.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {o.stderr.strip()}")
    return o


def remove_rules(only_stale):
    o = sh("iptables", "-S", "INPUT", check=False)
    for line in o.stdout.splitlines():
        if "emqx-rs-faults-" not in line:
            continue
        if only_stale and TAG in line:
            continue
        if not only_stale and TAG not in line:
            continue
        spec = line.split()[2:]  # after "-A INPUT"
        sh("iptables", "-D", "INPUT", *spec, check=False)


class Net:
    """iptables rules and the tc qdisc this run installed."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.ports = ",".join(str(p) for n in nodes for p in (n.dist, n.fwd))
        self.tc = False
        remove_rules(only_stale=True)

    def drop(self, src, dst, probability=None):
        """Drops inter-node packets from `src` to `dst`."""
        rule = ["-s", src.host, "-d", dst.host, "-p", "tcp", "-m", "multiport",
                "--ports", self.ports]
        if probability is not None:
            rule += ["-m", "statistic", "--mode", "random", "--probability",
                     f"{probability:.3f}"]
        rule += ["-m", "comment", "--comment", TAG, "-j", "DROP"]
        sh("iptables", "-I", "INPUT", *rule)

    def cut(self, a, b):
        self.drop(a, b)
        self.drop(b, a)

    def split(self, side, other):
        """Cuts every node of `side` from every node of `other`."""
        for a in side:
            for b in other:
                self.cut(a, b)

    def slow(self, rate_kbit):
        sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
        sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb",
           "rate", "10gbit")
        sh("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb",
           "rate", f"{rate_kbit}kbit", "burst", "8k")
        sh("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio",
           "1", "u32", "match", "ip", "src", f"{NET}.0/24", "match", "ip", "dst",
           f"{NET}.0/24", "flowid", "1:2")
        self.tc = True

    def heal(self):
        remove_rules(only_stale=False)
        if self.tc:
            sh("tc", "qdisc", "del", "dev", "lo", "root", check=False)
            self.tc = False


# ---------------------------------------------------------------------------
# workload
# ---------------------------------------------------------------------------


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.published = {}  # (pub, epoch, seq) -> dict(qos, sent, acked)
        self.received = defaultdict(list)  # sub -> [(t, pub, epoch, seq, qos, dup)]
        self.unknown = defaultdict(list)  # sub -> [(t, topic, payload)]
        self.sessions = defaultdict(list)  # sub -> [(kind, t, detail)]

    def dump(self, path):
        with self.lock, open(path, "w") as f:
            for k, v in self.published.items():
                f.write(json.dumps({"published": list(k), **v}) + "\n")
            for s, rs in self.received.items():
                for r in rs:
                    f.write(json.dumps({"received": s, "at": r}) + "\n")
            for s, ev in self.sessions.items():
                for e in ev:
                    f.write(json.dumps({"session": s, "event": e}) + "\n")


class Publisher(threading.Thread):
    def __init__(self, k, qos, nodes, hist, rate, stop, log):
        super().__init__(daemon=True)
        self.id = f"fp{k}"
        self.qos = qos
        self.nodes = nodes
        self.home = k % len(nodes)
        self.hist = hist
        self.gap = 1.0 / rate
        self.stop_ev = stop
        self.log = log
        self.epoch = 0

    def connect(self, node):
        acked = {}
        cv = threading.Condition()

        def on_publish(client, userdata, mid, rc, props):
            with cv:
                acked[mid] = now()
                cv.notify_all()

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id,
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.on_publish = on_publish
        c.connect(node.host, MQTT_PORT, keepalive=10)
        c.loop_start()
        deadline = now() + 5
        while not c.is_connected():
            if now() > deadline:
                c.loop_stop()
                c.disconnect()
                raise OSError("no CONNACK")
            time.sleep(0.02)
        return c, acked, cv

    def run(self):
        seq = 0
        at = self.home
        while not self.stop_ev.is_set():
            node = self.nodes[at % len(self.nodes)]
            try:
                c, acked, cv = self.connect(node)
            except (OSError, ValueError):
                at += 1
                time.sleep(0.2)
                continue
            self.epoch += 1
            while not self.stop_ev.is_set():
                seq += 1
                key = (self.id, self.epoch, seq)
                payload = f"{self.id}:{self.epoch}:{seq}".encode()
                rec = {"qos": self.qos, "sent": now(), "acked": None, "node": node.i}
                with self.hist.lock:
                    self.hist.published[key] = rec
                info = c.publish(f"faults/{self.id}", payload, qos=self.qos)
                deadline = now() + 10
                ok = False
                with cv:
                    while info.mid not in acked and now() < deadline and c.is_connected():
                        cv.wait(0.1)
                    if info.mid in acked:
                        ok = True
                        rec["acked"] = acked.pop(info.mid)
                if not ok:
                    break
                time.sleep(self.gap)
            c.loop_stop()
            try:
                c.disconnect()
            except Exception:
                pass
            at += 1


class Subscriber:
    def __init__(self, k, v5, qos, node, hist, log):
        self.id = f"fs{k}"
        self.v5 = v5
        self.qos = qos
        self.node = node
        self.hist = hist
        self.log = log
        self.had_session = False
        self.last_down = None
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        self.c.on_connect = self.on_connect
        self.c.on_disconnect = self.on_disconnect
        self.c.on_message = self.on_message
        self.c.on_subscribe = self.on_subscribe
        self.c.reconnect_delay_set(1, 2)

    def start(self):
        if self.v5:
            p = Properties(PacketTypes.CONNECT)
            p.SessionExpiryInterval = 3600
            self.c.connect_async(self.node.host, MQTT_PORT, keepalive=5,
                                 clean_start=False, properties=p)
        else:
            self.c.connect_async(self.node.host, MQTT_PORT, keepalive=5)
        self.c.loop_start()

    def on_connect(self, client, userdata, flags, rc, props):
        if rc.is_failure:
            return
        t = now()
        present = bool(flags.session_present)
        with self.hist.lock:
            self.hist.sessions[self.id].append(("connect", t, present))
        if not present:
            if self.had_session:
                self.log(f"{self.id}: session gone on {self.node.name} (session_present = 0)")
                with self.hist.lock:
                    self.hist.sessions[self.id].append(("lost", t, self.last_down))
            client.subscribe("faults/#", qos=self.qos)

    def on_subscribe(self, client, userdata, mid, codes, props):
        with self.hist.lock:
            self.hist.sessions[self.id].append(("subscribed", now(), None))
        self.had_session = True

    def on_disconnect(self, client, userdata, flags, rc, props):
        self.last_down = now()
        with self.hist.lock:
            self.hist.sessions[self.id].append(("disconnect", self.last_down, str(rc)))

    def on_message(self, client, userdata, m):
        t = now()
        parts = m.payload.decode(errors="replace").split(":")
        with self.hist.lock:
            if len(parts) == 3 and m.topic == f"faults/{parts[0]}":
                try:
                    self.hist.received[self.id].append(
                        (t, parts[0], int(parts[1]), int(parts[2]), m.qos, bool(m.dup)))
                    return
                except ValueError:
                    pass
            self.hist.unknown[self.id].append((t, m.topic, repr(m.payload)))

    def stop(self):
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# nemesis
# ---------------------------------------------------------------------------


class Nemesis:
    def __init__(self, nodes, net, rng, log, kinds):
        self.nodes = nodes
        self.net = net
        self.rng = rng
        self.log = log
        self.kinds = kinds
        self.events = []  # (t, kind, nodes affected)

    def apply(self, kind):
        n = self.nodes
        r = self.rng
        t = now()
        if kind == "partition":
            order = n[:]
            r.shuffle(order)
            k = r.randint(1, (len(n) - 1) // 2)
            minority, majority = order[:k], order[k:]
            self.net.split(minority, majority)
            desc = f"split {names(majority)} | {names(minority)}"
            hit = minority
        elif kind == "isolate":
            a = r.choice(n)
            self.net.split([a], [b for b in n if b is not a])
            desc = f"isolate {a.name}"
            hit = [a]
        elif kind == "bridge":
            order = n[:]
            r.shuffle(order)
            bridge, rest = order[0], order[1:]
            half = len(rest) // 2
            g1, g2 = rest[:half], rest[half:]
            self.net.split(g1, g2)
            desc = f"bridge {bridge.name} between {names(g1)} and {names(g2)}"
            hit = g1 + g2
        elif kind == "oneway":
            a = r.choice(n)
            for b in n:
                if b is not a:
                    self.net.drop(b, a)
            desc = f"{a.name} hears nobody (one-way)"
            hit = [a]
        elif kind == "pause":
            a = r.choice(n)
            a.signal(signal.SIGSTOP)
            a.paused = True
            desc = f"SIGSTOP {a.name}"
            hit = [a]
        elif kind == "slow":
            rate = r.choice([512, 1024, 2048])
            loss = r.choice([0.01, 0.03, 0.05])
            self.net.slow(rate)
            for a in n:
                for b in n:
                    if a is not b:
                        self.net.drop(a, b, probability=loss)
            desc = f"slow links: {rate} kbit/s, {loss:.0%} loss"
            hit = []
        elif kind == "kill":
            a = r.choice(n)
            a.kill()
            desc = f"kill -9 {a.name}"
            hit = [a]
        else:
            raise ValueError(kind)
        self.log(f"nemesis: {desc}")
        self.events.append({"kind": kind, "start": t, "end": None, "nodes": [x.name for x in hit],
                            "desc": desc})
        return kind, hit

    def heal(self, kind, hit):
        if kind == "pause":
            for a in hit:
                a.signal(signal.SIGCONT)
                a.paused = False
        elif kind == "kill":
            for a in hit:
                a.start()
        else:
            self.net.heal()
        self.events[-1]["end"] = now()
        self.log(f"nemesis: healed {kind}")

    def duration(self, kind):
        if kind == "pause":
            return DOWN_TIMEOUT + self.rng.uniform(2, 8)
        if kind == "slow":
            return self.rng.uniform(10, 20)
        return self.rng.uniform(6, 15)


def names(ns):
    return "[" + ",".join(x.name for x in ns) + "]"


def converge(nodes, timeout, log):
    """Waits until every node reports all nodes running, none stopped, and
    the same routes; returns the seconds it took or None."""
    t0 = now()
    want = tuple(sorted(n.name for n in nodes))
    last = None
    while now() - t0 < timeout:
        views = [n.view() for n in nodes]
        if all(v is not None for v in views):
            if all(v[0] == want and v[1] == () for v in views) and len({v[2] for v in views}) == 1:
                return now() - t0
        last = views
        time.sleep(0.5)
    log(f"not converged after {timeout:.0f} s: {last}")
    return None


def ds_settled(cores, rf, shards, timeout, log):
    """Waits until every core sees each of `shards` shards led by one of
    its voters, with no learner and min(rf, cores) voters, all cores;
    returns the seconds it took or None."""
    t0 = now()
    names_ = {n.name for n in cores}
    want = min(rf, len(cores))
    last = None
    while now() - t0 < timeout:
        ok = True
        for n in cores:
            rc, out = n.ctl("ds", "info", "--local")
            rows = [l.split() for l in out.splitlines()[2:]] if rc == 0 else []
            rows = [r for r in rows if len(r) >= 9 and r[0].isdigit()]
            good = len(rows) == shards and all(
                r[7] != "-" and not r[8].startswith("(")
                and set(r[7].split(",")) <= names_
                and len(r[7].split(",")) == want
                and r[2] in r[7].split(",")
                for r in rows)
            if not good:
                ok = False
                last = (n.name, out)
                break
        if ok:
            return now() - t0
        time.sleep(0.5)
    log(f"ds not settled after {timeout:.0f} s: {last}")
    return None


# ---------------------------------------------------------------------------
# checker
# ---------------------------------------------------------------------------


def check(hist, subs, nemesis_events, nodes, log, allow_session_loss):
    """Returns (ok, counters, details)."""
    published = hist.published
    acked = {k: v for k, v in published.items() if v["acked"] is not None}
    counters = defaultdict(int)
    details = []
    counters["published"] = len(published)
    counters["acked"] = len(acked)
    for s in subs:
        ev = hist.sessions[s.id]
        recv = hist.received[s.id]
        counters["delivered"] += len(recv)
        for u in hist.unknown[s.id]:
            counters["unknown"] += 1
            details.append(f"{s.id}: unknown message {u}")
        for r in recv:
            if (r[1], r[2], r[3]) not in published:
                counters["unknown"] += 1
                details.append(f"{s.id}: message nobody published {r}")
        # Intervals in which the subscriber had a live subscription; a
        # session loss ends one interval (messages not delivered by then
        # went with the session) and the next SUBACK opens the next.
        intervals = []  # [start, end, ended_by_loss, loss_time]
        for kind, t, detail in ev:
            if kind == "subscribed":
                if not intervals or intervals[-1][1] is not None:
                    intervals.append([t, None, False, None])
            elif kind == "lost" and intervals and intervals[-1][1] is None:
                intervals[-1][1] = t
                intervals[-1][2] = True
                intervals[-1][3] = detail if detail is not None else t
        got = defaultdict(int)
        for r in recv:
            got[(r[1], r[2], r[3])] += 1
        for key, m in acked.items():
            eff = min(m["qos"], s.qos)
            n = got.get(key, 0)
            if n > 1:
                if eff == 2:
                    counters["dup"] += 1
                    details.append(f"{s.id}: QoS 2 message {key} delivered {n} times")
                else:
                    counters["qos1_redelivered"] += 1
            if n:
                continue
            for start, end, by_loss, down in intervals:
                if m["sent"] <= start:
                    continue
                if end is None:
                    killed = publisher_node_killed(m, nodes, nemesis_events)
                    if killed:
                        counters["lost_with_publisher_node[kill]"] += 1
                        details.append(
                            f"{s.id}: lost {key}: acknowledged by {killed} "
                            f"{m['acked']:.2f}, killed before it forwarded it")
                        break
                    counters["lost"] += 1
                    details.append(
                        f"{s.id}: lost {key} (QoS {m['qos']}, published via node {m['node']}, "
                        f"acked at {m['acked']:.2f}, subscribed since {start:.2f})")
                elif m["sent"] < end:
                    cause = loss_cause(s, down, end, nemesis_events)
                    counters[f"lost_with_session[{cause}]"] += 1
                break
        # Order: first deliveries per publisher connection.
        last = {}
        seen = set()
        for r in recv:
            key = (r[1], r[2], r[3])
            if key in seen:
                continue
            seen.add(key)
            pk = (r[1], r[2])
            if pk in last and r[3] < last[pk]:
                counters["order"] += 1
                details.append(f"{s.id}: {key} after {pk}:{last[pk]}")
            last[pk] = max(last.get(pk, 0), r[3])
        losses = [e for e in ev if e[0] == "lost"]
        for e in losses:
            cause = loss_cause(s, e[2] if e[2] is not None else e[1], e[1], nemesis_events)
            counters[f"sessions_lost[{cause}]"] += 1
            if cause not in allow_session_loss:
                counters["sessions_lost_unallowed"] += 1
                details.append(f"{s.id}: session on {s.node.name} dropped ({cause})")
    ok = all(counters[k] == 0 for k in ("lost", "dup", "unknown", "order", "sessions_lost_unallowed"))
    for k, v in counters.items():
        if k.startswith("lost_with_") and v:
            cause = k[k.index("[") + 1:-1]
            if cause not in allow_session_loss:
                ok = False
    return ok, counters, details


def publisher_node_killed(m, nodes, events):
    """The node that acknowledged `m`, if it was killed within 5 s after:
    what it had not forwarded yet died with its memory."""
    name = nodes[m["node"] - 1].name
    for e in events:
        if e["kind"] == "kill" and name in e["nodes"] and m["acked"] <= e["start"] <= m["acked"] + 5:
            return name
    return None


def loss_cause(sub, down, back, events):
    """Why a subscriber's session was gone: its node was killed or paused,
    or restarted by autoheal after a split."""
    for e in events:
        if sub.node.name in e["nodes"] and e["start"] <= back and (e["end"] or back) >= down - 30:
            if e["kind"] == "kill":
                return "kill"
            return f"autoheal after {e['kind']}"
    return "no fault of its node"


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--replicants", type=int, default=0,
                    help="how many of the nodes (the last ones) are replicants")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--faults", default=",".join(k for k in KINDS if k != "kill"),
                    help=f"comma-separated, from {','.join(KINDS)}")
    ap.add_argument("--time", type=float, default=120, help="seconds of faults")
    ap.add_argument("--quiet", type=float, default=10, help="seconds of workload after the last heal")
    ap.add_argument("--rate", type=float, default=5, help="messages per second per publisher")
    ap.add_argument("--bin", default="target/debug/emqx-rs")
    ap.add_argument("--extra", help="a config file appended to every node's config")
    ap.add_argument("--dir", help="where logs, history and the report go")
    ap.add_argument("--converge-timeout", type=float, default=90)
    ap.add_argument("--ds", default="",
                    help="SHARDS/RF/SITES: run the durable storage groups (developer preview) and check them")
    ap.add_argument("--allow-loss", default="",
                    help="causes of loss (only 'kill' so far) that are reported and do not fail the run")
    args = ap.parse_args()
    if args.nodes < 2 or args.nodes > 9:
        ap.error("--nodes must be 2 .. 9")
    if args.replicants < 0 or args.replicants > args.nodes - 1:
        ap.error("--replicants must leave at least one core")
    kinds = [k for k in args.faults.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"--faults: unknown fault {k!r} (known: {','.join(KINDS)})")
        if k == "bridge" and args.nodes < 3:
            ap.error("--faults: bridge needs at least 3 nodes")
        if k == "partition" and args.nodes < 3:
            ap.error("--faults: partition needs at least 3 nodes (use isolate)")
    if not kinds:
        ap.error("--faults: none given")
    ds_spec = None
    if args.ds:
        try:
            ds_spec = tuple(int(x) for x in args.ds.split("/"))
            assert len(ds_spec) == 3 and min(ds_spec) >= 1
        except (ValueError, AssertionError):
            ap.error("--ds: expected SHARDS/RF/SITES, e.g. 4/3/1")
    if os.geteuid() != 0:
        sys.exit("faults: needs root (iptables, tc)")
    for tool in ("iptables", "tc"):
        if shutil.which(tool) is None:
            sys.exit(f"faults: needs {tool} (scripts/test.sh installs it)")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"faults: {args.bin} is not an executable (cargo build first)")
    args.bin = os.path.abspath(args.bin)
    allow = {a.strip() for a in args.allow_loss.split(",") if a.strip()}
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    if args.dir and os.path.isdir(args.dir) and os.listdir(args.dir):
        sys.exit(f"faults: {args.dir} is not empty (nodes would start from an earlier run's data)")
    args.dir = os.path.abspath(args.dir or tempfile.mkdtemp(prefix=f"emqx-rs-faults-{seed}-"))
    os.makedirs(args.dir, exist_ok=True)
    extra = open(args.extra).read() if args.extra else ""
    t0 = now()
    log = Log(os.path.join(args.dir, "events.log"), t0)
    log(f"seed {seed}, {args.nodes} nodes ({args.replicants} replicants), faults {','.join(kinds)}, "
        f"{args.time:.0f} s, in {args.dir}")

    cookie = f"faults{rng.randrange(1 << 30)}"
    names_ = [f"emqx{NAME_BASE + i}@{NET}.{i}" for i in range(1, args.nodes + 1)]
    cores = args.nodes - args.replicants
    role = "node.db_role = replicant\n"
    nodes = [Node(i, args, cookie, names_, extra + (role if i > cores else ""))
             for i in range(1, args.nodes + 1)]
    net = Net(nodes)
    stop = threading.Event()
    subs = []

    def cleanup(*_):
        stop.set()
        net.heal()
        for n in nodes:
            n.stop()

    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(130)))
    hist = History()
    try:
        for n in nodes:
            n.start()
        took = converge(nodes, 60, log)
        if took is None:
            raise RuntimeError("the cluster did not form")
        log(f"cluster of {args.nodes} formed")
        # Two subscribers per node: MQTT 3.1.1 at QoS 2, MQTT 5 at QoS 1,
        # then the other way round on the next node.
        for k in range(2 * args.nodes):
            node = nodes[k // 2]
            v5 = (k + k // 2) % 2 == 1
            qos = 1 if (k % 2 == 1) else 2
            s = Subscriber(k, v5, qos, node, hist, log)
            s.start()
            subs.append(s)
        deadline = now() + 20
        while now() < deadline and not all(s.had_session for s in subs):
            time.sleep(0.1)
        if not all(s.had_session for s in subs):
            raise RuntimeError("subscribers did not subscribe")
        took = converge(nodes, 30, log)
        if took is None:
            raise RuntimeError("the subscribers' routes did not reach every node")
        pubs = [Publisher(k, 1 + k % 2, nodes, hist, args.rate, stop, log)
                for k in range(2 * args.nodes)]
        for p in pubs:
            p.start()
        time.sleep(3)

        nem = Nemesis(nodes, net, rng, log, kinds)
        end = now() + args.time
        converge_times = []
        while now() < end:
            kind = rng.choice(kinds)
            kind, hit = nem.apply(kind)
            time.sleep(nem.duration(kind))
            nem.heal(kind, hit)
            took = converge(nodes, args.converge_timeout, log)
            if took is None:
                converge_times.append(None)
                break
            log(f"converged {took:.1f} s after the heal")
            converge_times.append(took)
            time.sleep(rng.uniform(2, 5))
        time.sleep(args.quiet)
        stop.set()
        for p in pubs:
            p.join(15)
        # Let the subscribers drain: until nothing new arrives for 5 s.
        last = -1
        quiet_since = now()
        while now() - quiet_since < 5 and now() - quiet_since < 60:
            with hist.lock:
                total = sum(len(v) for v in hist.received.values())
            if total != last:
                last = total
                quiet_since = now()
            time.sleep(0.5)
        for s in subs:
            s.stop()
        hist.dump(os.path.join(args.dir, "history.jsonl"))
        ok, counters, details = check(hist, subs, nem.events, nodes, log, allow)
        for d in details[:20]:
            log(f"check: {d}")
        if len(details) > 20:
            log(f"check: ... {len(details) - 20} more in report.json")
        conv_ok = all(t is not None for t in converge_times)
        ok = ok and conv_ok
        ds_word = ""
        if ds_spec is not None:
            ds_took = ds_settled(nodes[:cores], ds_spec[1], ds_spec[0], 30, log)
            ds_word = f"ds={'settled' if ds_took is not None else 'NOT'} "
            ok = ok and ds_took is not None
        worst = max((t for t in converge_times if t is not None), default=0.0)
        with open(os.path.join(args.dir, "report.json"), "w") as f:
            json.dump({"seed": seed, "nodes": args.nodes, "faults": kinds,
                       "events": nem.events, "counters": counters,
                       "converge": converge_times, "details": details}, f, indent=1)
        summary = " ".join(f"{k}={v}" for k, v in sorted(counters.items()))
        print(
            f"faults: {'PASS' if ok else 'FAIL'} seed={seed} nodes={args.nodes} "
            f"replicants={args.replicants} "
            f"faults={','.join(kinds)} applied={len(nem.events)} {summary} "
            f"converged={'yes' if conv_ok else 'NO'} converge_max={worst:.1f}s {ds_word}"
            f"replay: scripts/faults.py --nodes {args.nodes} --replicants {args.replicants} "
            f"--seed {seed} --faults {','.join(kinds)} --time {args.time:g}"
            + (f" --ds {args.ds}" if args.ds else ""),
            flush=True,
        )
        return 0 if ok else 1
    finally:
        cleanup()
        for s in subs:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
