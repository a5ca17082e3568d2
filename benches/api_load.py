#!/usr/bin/env python3
"""Load on a node's HTTP API while a benchmark runs: GET /api/v5/clients
(one page of 100) ten times a second and a Prometheus scrape of
/api/v5/prometheus/stats once a second, over kept-alive connections, as a
dashboard and a Prometheus server would. Runs until SIGTERM, then prints
how many requests were made and how many failed.

    api_load.py HOST:PORT [USER PASSWORD]
"""
import http.client
import json
import signal
import sys
import time

addr = sys.argv[1]
user = sys.argv[2] if len(sys.argv) > 2 else "admin"
password = sys.argv[3] if len(sys.argv) > 3 else "public"
host, port = addr.rsplit(":", 1)
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def connect():
    return http.client.HTTPConnection(host, int(port), timeout=10)


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


api, scrape = connect(), connect()
token = None
for _ in range(50):
    try:
        status, data = request(
            api,
            "POST",
            "/api/v5/login",
            json.dumps({"username": user, "password": password}),
            {"Content-Type": "application/json"},
        )
        if status == 200:
            token = json.loads(data)["token"]
            break
    except OSError:
        api = connect()
    time.sleep(0.1)
if token is None:
    print("api_load: cannot log in", file=sys.stderr)
    sys.exit(1)

auth = {"Authorization": "Bearer " + token}
counts = {"clients": 0, "scrapes": 0, "errors": 0}
next_poll = next_scrape = time.monotonic()
while not stop:
    now = time.monotonic()
    for kind, due, conn_name, path, period in (
        ("clients", next_poll, "api", "/api/v5/clients?limit=100", 0.1),
        ("scrapes", next_scrape, "scrape", "/api/v5/prometheus/stats", 1.0),
    ):
        if now < due:
            continue
        conn = api if conn_name == "api" else scrape
        try:
            status, _ = request(conn, "GET", path, headers=auth)
            counts[kind if status == 200 else "errors"] += 1
        except (OSError, http.client.HTTPException):
            counts["errors"] += 1
            if conn_name == "api":
                api = connect()
            else:
                scrape = connect()
        if kind == "clients":
            next_poll += period
        else:
            next_scrape += period
    time.sleep(max(0.0, min(next_poll, next_scrape) - time.monotonic()))
print(json.dumps(counts))
