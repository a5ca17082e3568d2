#!/usr/bin/env python3
"""Markdown table of medians and ratios from benches/run.sh's results.jsonl.

    report.py results.jsonl

Every metric is computed per run, then the median over the runs of one
broker is taken; the ratios divide emqx-rs's median by the other broker's.
"""
import json
import statistics
import sys
from collections import defaultdict

BROKERS = ["emqx-rs", "mosquitto", "rumqttd"]


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def pct(num, den):
    if num is None or not den:
        return None
    return 100.0 * num / den


def pubsub_common(r):
    fan = r.get("fanout", 1)
    sent = g(r, "pub", "sent")
    recv = g(r, "sub", "received")
    return {
        "delivered %": pct(recv, (sent or 0) * fan),
        "gap loss (msgs)": g(r, "sub", "loss"),
        "latency p50 ms": g(r, "sub", "latency_ms", "p50"),
        "latency p99 ms": g(r, "sub", "latency_ms", "p99"),
        "broker RSS at end MB": rss_mb(r),
    }


def rss_mb(r):
    return r["rss_kb"] / 1024 if r.get("rss_kb") else None


def m_a(r):
    d = {"offered msg/s": g(r, "pub", "sent_rate"), "delivered msg/s": g(r, "sub", "recv_rate")}
    d.update(pubsub_common(r))
    return d


def m_a1(r):
    d = {"acked msg/s": g(r, "pub", "sent_rate"), "delivered msg/s": g(r, "sub", "recv_rate")}
    d.update(pubsub_common(r))
    return d


def m_b(r):
    sr = g(r, "pub", "sent_rate")
    d = {"offered deliveries/s": sr * r.get("fanout", 1) if sr is not None else None,
         "delivered msg/s": g(r, "sub", "recv_rate")}
    d.update(pubsub_common(r))
    return d


def m_c(r):
    acked = g(r, "pub", "acked")
    recv = g(r, "sub", "received")
    return {
        "published msg/s": g(r, "pub", "sent_rate"),
        "delivered msg/s": g(r, "sub", "recv_rate"),
        "delivered % of acked": pct(recv, acked),
        "gap loss (msgs)": g(r, "sub", "loss"),
        "duplicates": g(r, "sub", "duplicates"),
        "latency p99 ms": g(r, "sub", "latency_ms", "p99"),
        "broker RSS at end MB": rss_mb(r),
    }


def m_lat(r):
    return {
        "delivered msg/s": g(r, "sub", "recv_rate"),
        "delivered %": pct(g(r, "sub", "received"), g(r, "pub", "sent")),
        "latency p50 ms": g(r, "sub", "latency_ms", "p50"),
        "latency p90 ms": g(r, "sub", "latency_ms", "p90"),
        "latency p99 ms": g(r, "sub", "latency_ms", "p99"),
        "latency max ms": g(r, "sub", "latency_ms", "max"),
    }


def m_d(r):
    # Several conn processes started together: the rate is all connections
    # over the longest process's connect window.
    cs = [c for c in r.get("conns", []) if c]
    conn = sum(c.get("connected", 0) for c in cs)
    windows = [c["connected"] / c["connect_rate"] for c in cs if c.get("connect_rate")]
    grow = (r.get("rss_after_kb") or 0) - (r.get("rss_before_kb") or 0)
    p99 = [g(c, "connect_latency_ms", "p99") for c in cs]
    p99 = [x for x in p99 if x is not None]
    return {
        "connected": conn,
        "errors": sum(c.get("errors", 0) for c in cs),
        "connect/s": conn / max(windows) if windows else None,
        "connect p99 ms": max(p99) if p99 else None,
        "RSS before MB": (r.get("rss_before_kb") or 0) / 1024,
        "RSS KB per connection": grow / conn if conn else None,
    }


def m_e(r):
    n = g(r, "subs", "subscriptions")
    grow = (r.get("rss_after_kb") or 0) - (r.get("rss_before_kb") or 0)
    r0 = g(r, "pub0", "acked")
    r1 = g(r, "pub1", "acked")
    e0 = g(r, "pub0", "elapsed_s")
    e1 = g(r, "pub1", "elapsed_s")
    # A publisher that got no PUBACK at all in the run has rate 0.
    rate0 = r0 / e0 if r0 is not None and e0 else None
    rate1 = r1 / e1 if r1 is not None and e1 else None
    return {
        "subscriptions": n,
        "failed subscriptions": g(r, "subs", "failed"),
        "subscribe/s": g(r, "subs", "rate"),
        "RSS bytes per subscription": grow * 1024 / n if n else None,
        "QoS 1 publish/s, no subscriptions": rate0,
        "QoS 1 publish/s, with subscriptions": rate1,
        "extra us per publish": (1e6 / rate1 - 1e6 / rate0) if rate0 and rate1 else None,
        "broker RSS with subscriptions MB": (r.get("rss_after_kb") or 0) / 1024,
    }


SCEN = [
    ("a", "(a) 100 pairs, QoS 0, 64 B, 100k msg/s offered", m_a),
    ("a1", "(a1) 100 pairs, QoS 1, 64 B, closed loop (window 100)", m_a1),
    ("b", "(b) fan-out 2,000 msg/s to 500 subscribers", m_b),
    ("c", "(c) fan-in 200 QoS 1 publishers (window 100) to t/+", m_c),
    ("d", "(d) idle connections", m_d),
    ("e", "(e) wildcard subscriptions", m_e),
    ("lat", "(lat) latency, 100 pairs at 10k msg/s QoS 0", m_lat),
]


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.3g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["scenario"], r["broker"])].append(r)
    print("| scenario / metric | emqx-rs | mosquitto | rumqttd | emqx-rs / mosquitto | emqx-rs / rumqttd |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, title, fn in SCEN:
        if not any((key, b) in by for b in BROKERS):
            continue
        runs = {b: [fn(r) for r in by.get((key, b), [])] for b in BROKERS}
        n = {b: len(runs[b]) for b in BROKERS}
        print(f"| **{title}** (runs: {', '.join(str(n[b]) for b in BROKERS)}) | | | | | |")
        metrics = []
        for b in BROKERS:
            for m in runs[b]:
                for k in m:
                    if k not in metrics:
                        metrics.append(k)
        for k in metrics:
            med = {}
            for b in BROKERS:
                vals = [m[k] for m in runs[b] if m.get(k) is not None]
                med[b] = statistics.median(vals) if vals else None
            print(f"| {k} | {fmt(med['emqx-rs'])} | {fmt(med['mosquitto'])} | {fmt(med['rumqttd'])} "
                  f"| {ratio(med['emqx-rs'], med['mosquitto'])} | {ratio(med['emqx-rs'], med['rumqttd'])} |")


if __name__ == "__main__":
    main()
