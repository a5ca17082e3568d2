#!/usr/bin/env python3
"""Markdown tables of medians and ratios from benches/run.sh's results.jsonl.

    report.py results.jsonl

Every metric is computed per run, then the median over the runs of one
broker is taken; the ratios divide emqx-rs's median by the other broker's.
When a scenario ran over TLS, WebSocket or QUIC as well as TCP (a and a_tls, ...),
a second table sets each transport beside TCP for every broker.
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


def cpu(r, delivered):
    """The broker's CPU time per delivered message (microseconds) and its
    average CPU use (cores) from just before publishing to the end of the
    drain."""
    c, wall = r.get("cpu_s"), r.get("cpu_wall_s")
    if c is None:
        return {}
    return {
        "broker CPU us per delivered msg": c * 1e6 / delivered if delivered else None,
        "broker CPU cores": c / wall if wall else None,
    }


def m_a(r):
    d = {"offered msg/s": g(r, "pub", "sent_rate"), "delivered msg/s": g(r, "sub", "recv_rate")}
    d.update(pubsub_common(r))
    d.update(cpu(r, g(r, "sub", "received")))
    return d


def m_a1(r):
    d = {"acked msg/s": g(r, "pub", "sent_rate"), "delivered msg/s": g(r, "sub", "recv_rate")}
    d.update(pubsub_common(r))
    d.update(cpu(r, g(r, "sub", "received")))
    return d


def m_b(r):
    sr = g(r, "pub", "sent_rate")
    d = {"offered deliveries/s": sr * r.get("fanout", 1) if sr is not None else None,
         "delivered msg/s": g(r, "sub", "recv_rate")}
    d.update(pubsub_common(r))
    d.update(cpu(r, g(r, "sub", "received")))
    return d


def m_c(r):
    acked = g(r, "pub", "acked")
    recv = g(r, "sub", "received")
    d = {
        "published msg/s": g(r, "pub", "sent_rate"),
        "delivered msg/s": g(r, "sub", "recv_rate"),
        "delivered % of acked": pct(recv, acked),
        "gap loss (msgs)": g(r, "sub", "loss"),
        "duplicates": g(r, "sub", "duplicates"),
        "latency p99 ms": g(r, "sub", "latency_ms", "p99"),
        "broker RSS at end MB": rss_mb(r),
    }
    d.update(cpu(r, recv))
    return d


def m_lat(r):
    d = {
        "delivered msg/s": g(r, "sub", "recv_rate"),
        "delivered %": pct(g(r, "sub", "received"), g(r, "pub", "sent")),
        "latency p50 ms": g(r, "sub", "latency_ms", "p50"),
        "latency p90 ms": g(r, "sub", "latency_ms", "p90"),
        "latency p99 ms": g(r, "sub", "latency_ms", "p99"),
        "latency max ms": g(r, "sub", "latency_ms", "max"),
    }
    d.update(cpu(r, g(r, "sub", "received")))
    return d


def m_d(r):
    # Several conn processes started together: the rate is all connections
    # over the longest process's connect window.
    cs = [c for c in r.get("conns", []) if c]
    conn = sum(c.get("connected", 0) for c in cs)
    windows = [c["connected"] / c["connect_rate"] for c in cs if c.get("connect_rate")]
    grow = (r.get("rss_after_kb") or 0) - (r.get("rss_before_kb") or 0)
    # D_SETTLE seconds later (older results have no such field).
    settled = r.get("rss_settled_kb")
    settled = settled - (r.get("rss_before_kb") or 0) if settled else None
    p99 = [g(c, "connect_latency_ms", "p99") for c in cs]
    p99 = [x for x in p99 if x is not None]
    c = r.get("cpu_s")
    return {
        "connected": conn,
        "errors": sum(c.get("errors", 0) for c in cs),
        "connect/s": conn / max(windows) if windows else None,
        "connect p99 ms": max(p99) if p99 else None,
        "broker CPU ms per connection": c * 1e3 / conn if c is not None and conn else None,
        "RSS before MB": (r.get("rss_before_kb") or 0) / 1024,
        "RSS KB per connection": grow / conn if conn else None,
        "RSS KB per connection, settled": settled / conn
        if conn and settled is not None
        else None,
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


BASE = [
    ("a", "(a) 100 pairs, QoS 0, 64 B, 100k msg/s offered", m_a),
    ("a1", "(a1) 100 pairs, QoS 1, 64 B, closed loop (window 100)", m_a1),
    ("b", "(b) fan-out 2,000 msg/s to 500 subscribers", m_b),
    ("c", "(c) fan-in 200 QoS 1 publishers (window 100) to t/+", m_c),
    ("d", "(d) idle connections", m_d),
    ("e", "(e) wildcard subscriptions", m_e),
    ("lat", "(lat) latency, 100 pairs at 10k msg/s QoS 0", m_lat),
]
TRANSPORTS = [("tcp", ""), ("tls", " over TLS"), ("ws", " over WebSocket"),
              ("wss", " over WebSocket over TLS"), ("quic", " over QUIC")]
# Every scenario run.sh can produce: the base ones, then each over the
# other transports (a_tls, ...).
SCEN = [(key if tr == "tcp" else f"{key}_{tr}", title + suffix, fn, key, tr)
        for tr, suffix in TRANSPORTS for key, title, fn in BASE]

# Rows of the transport table: (base scenario, metric, how it compares
# with TCP: "ratio" or "diff").
TRANSPORT_ROWS = [
    ("a", "delivered msg/s", "ratio"),
    ("a", "delivered %", "ratio"),
    ("a", "latency p99 ms", "ratio"),
    ("a", "broker CPU us per delivered msg", "ratio"),
    ("a1", "delivered msg/s", "ratio"),
    ("a1", "broker CPU us per delivered msg", "ratio"),
    ("b", "delivered msg/s", "ratio"),
    ("b", "broker CPU us per delivered msg", "ratio"),
    ("c", "delivered msg/s", "ratio"),
    ("c", "broker CPU us per delivered msg", "ratio"),
    ("lat", "delivered msg/s", "ratio"),
    ("lat", "latency p50 ms", "ratio"),
    ("lat", "latency p99 ms", "ratio"),
    ("lat", "broker CPU us per delivered msg", "ratio"),
    ("d", "connect/s", "ratio"),
    ("d", "broker CPU ms per connection", "ratio"),
    ("d", "RSS KB per connection", "diff"),
    ("d", "RSS KB per connection, settled", "diff"),
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


def diff(a, b):
    if a is None or b is None:
        return "-"
    return f"{a - b:+.1f}"


def medians(by, key, fn):
    """{broker: {metric: median}} and {broker: number of runs}."""
    runs = {b: [fn(r) for r in by.get((key, b), [])] for b in BROKERS}
    metrics = []
    for b in BROKERS:
        for m in runs[b]:
            for k in m:
                if k not in metrics:
                    metrics.append(k)
    med = {}
    for b in BROKERS:
        med[b] = {}
        for k in metrics:
            vals = [m[k] for m in runs[b] if m.get(k) is not None]
            med[b][k] = statistics.median(vals) if vals else None
    return metrics, med, {b: len(runs[b]) for b in BROKERS}


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["scenario"], r["broker"])].append(r)
    # Columns for the brokers that ran (all three unless BROKERS said
    # otherwise), then emqx-rs's ratio to each other one.
    present = [b for b in BROKERS if any(k[1] == b for k in by)] or BROKERS
    peers = [b for b in present if b != "emqx-rs"]
    print("| scenario / metric | " + " | ".join(present + [f"emqx-rs / {b}" for b in peers]) + " |")
    print("|---|" + "---:|" * (len(present) + len(peers)))
    meds = {}
    for key, title, fn, base, tr in SCEN:
        if not any((key, b) in by for b in BROKERS):
            continue
        metrics, med, n = medians(by, key, fn)
        meds[(base, tr)] = med
        print(f"| **{title}** (runs: {', '.join(str(n[b]) for b in present)}) |"
              + " |" * (len(present) + len(peers)))
        for k in metrics:
            vals = [fmt(med[b][k]) for b in present]
            ratios = [ratio(med["emqx-rs"][k], med[b][k]) for b in peers]
            print(f"| {k} | " + " | ".join(vals + ratios) + " |")

    # Each transport beside TCP, per broker (same run, medians).
    others = [tr for tr, _ in TRANSPORTS[1:] if any(t == tr and (b, "tcp") in meds
                                                  for b, t in meds)]
    if not others:
        return
    shown = [b for b in BROKERS if any(med.get(b) and any(v is not None for v in med[b].values())
                                       for (base, tr), med in meds.items() if tr != "tcp")]
    print()
    print("Each transport against TCP, per broker (medians of the same run; \"vs tcp\" is "
          "the ratio, or for RSS KB per connection the difference in KB):")
    print()
    print("| scenario / metric | transport | " + " | ".join(f"{b} | vs tcp" for b in shown) + " |")
    print("|---|---|" + "---:|---:|" * len(shown))
    for base, metric, how in TRANSPORT_ROWS:
        if (base, "tcp") not in meds:
            continue
        for tr in ["tcp"] + others:
            if (base, tr) not in meds:
                continue
            cells = []
            for b in shown:
                v = meds[(base, tr)].get(b, {}).get(metric)
                t = meds[(base, "tcp")].get(b, {}).get(metric)
                cmp = "" if tr == "tcp" else (diff(v, t) if how == "diff" else ratio(v, t))
                cells.append(f"{fmt(v)} | {cmp}")
            print(f"| ({base}) {metric} | {tr} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
