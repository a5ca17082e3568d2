#!/usr/bin/env python3
"""When does every node of a cluster route a filter made on one node?

    route_spread.py SUB_HOST PORT NODE_HOST...

Subscribes `sentinel/#` on SUB_HOST:PORT, then publishes `sentinel/<i>`
(QoS 0) every 20 ms from a client on each NODE_HOST:PORT until the
subscriber has received one from it. A node routes a filter only after
every route change its origin made before it (each origin's changes apply
in order), so the sentinel arriving from a node means that node routes
everything subscribed on SUB_HOST before the sentinel.

Prints `ARRIVED <host> <unix time>` per node and `ALL <unix time>` when
every node's message has arrived (or `MISSING <hosts>` after 300 s).
Only the given hosts are contacted (loopback addresses in benches/mesh.sh).
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    sub_host, port, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    arrived = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c, _u, msg):
        host = msg.payload.decode()
        with lock:
            if host not in arrived:
                arrived[host] = time.time()
                print(f"ARRIVED {host} {arrived[host]:.3f}", flush=True)

    def on_subscribe(*_a):
        subscribed.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spread-sub")
    sub.on_message = on_message
    sub.on_subscribe = on_subscribe
    sub.connect(sub_host, port, keepalive=600)
    sub.subscribe("sentinel/#", qos=0)
    sub.loop_start()
    if not subscribed.wait(60):
        print("MISSING subscription", flush=True)
        return 1
    pubs = []
    for i, h in enumerate(hosts):
        p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spread-pub-{i}")
        p.connect(h, port, keepalive=600)
        p.loop_start()
        pubs.append((h, p))
    deadline = time.time() + 300
    while time.time() < deadline:
        with lock:
            left = [(h, p) for h, p in pubs if h not in arrived]
        if not left:
            break
        for h, p in left:
            p.publish(f"sentinel/{h}", h.encode(), qos=0)
        time.sleep(0.02)
    with lock:
        missing = [h for h, _ in pubs if h not in arrived]
    for _, p in pubs:
        p.loop_stop()
        p.disconnect()
    sub.loop_stop()
    sub.disconnect()
    if missing:
        print("MISSING " + " ".join(missing), flush=True)
        return 1
    print(f"ALL {max(arrived.values()):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
