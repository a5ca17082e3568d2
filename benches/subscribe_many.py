#!/usr/bin/env python3
"""Scenario (e): many wildcard subscriptions over a few MQTT 3.1.1 connections.

    subscribe_many.py PORT CONNECTIONS SUBSCRIPTIONS [HOST]

Connection c subscribes to e/<c>/<k>/+ for its share of k, 100 filters per
SUBSCRIBE, up to 20 SUBSCRIBEs in flight. Prints one line
`READY {"subscriptions": .., "failed": .., "elapsed_s": .., "rate": ..}` once
every SUBACK is in, then holds the connections open (keep alive 600 s, no PINGREQ; at most 10 minutes or
until killed). HOST (default 127.0.0.1) must be a loopback address.
"""
import json
import socket
import struct
import sys
import threading
import time

PER_PACKET = 100
WINDOW = 20


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x):
    b = x.encode()
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by broker")
        buf += chunk
    return bytes(buf)


def read_packet(sock):
    first = read_exact(sock, 1)[0]
    mult, length = 1, 0
    for _ in range(4):
        b = read_exact(sock, 1)[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return first, read_exact(sock, length)


def connect(port, cid):
    sock = socket.create_connection((HOST, port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = s("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + s(cid)
    sock.sendall(packet(0x10, body))
    first, b = read_packet(sock)
    if first >> 4 != 2 or b[1] != 0:
        raise ConnectionError(f"CONNACK refused: {b!r}")
    return sock


def subscribe_all(sock, conn, first_k, count, result):
    failed = 0
    pid = 0
    filters = [f"e/{conn}/{k}/+" for k in range(first_k, first_k + count)]
    packets = []
    for i in range(0, len(filters), PER_PACKET):
        pid = pid % 65535 + 1
        body = struct.pack("!H", pid) + b"".join(s(f) + b"\x00" for f in filters[i:i + PER_PACKET])
        packets.append(packet(0x82, body))
    sent = acked = 0
    while acked < len(packets):
        while sent < len(packets) and sent - acked < WINDOW:
            sock.sendall(packets[sent])
            sent += 1
        first, b = read_packet(sock)
        if first >> 4 == 9:
            failed += sum(1 for rc in b[2:] if rc >= 0x80)
            acked += 1
    result.append(failed)


HOST = "127.0.0.1"


def main():
    global HOST
    port, nconn, total = (int(x) for x in sys.argv[1:4])
    if len(sys.argv) > 4:
        HOST = sys.argv[4]
        if not HOST.startswith("127."):
            sys.exit("HOST must be a loopback address (127.0.0.0/8)")
    socks = [connect(port, f"esub{c}_{int(time.time())}") for c in range(nconn)]
    share = total // nconn
    result = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=subscribe_all, args=(socks[c], c, 0, share, result))
               for c in range(nconn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.monotonic() - t0
    n = share * nconn
    done = len(result) == nconn
    print("READY " + json.dumps({
        "subscriptions": n if done else None,
        "failed": sum(result) if done else None,
        "complete": done,
        "elapsed_s": round(elapsed, 3),
        "rate": round(n / elapsed, 1) if done and elapsed > 0 else None,
    }), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
