#!/usr/bin/env bash
# The durable session journal's cost, in one run: 100 pairs of persistent
# MQTT 3.1.1 sessions (`clean_session = false`), QoS 1 (QOS=2 for QoS 2), 64-byte
# payloads, each publisher on its own topic (`pp/%i`) with its own
# subscriber, closed loop with WINDOW unacknowledged per publisher, for
# DUR seconds, with `durable_sessions.enable` false and true alternated
# REPS times (a fresh node and data directory per run).
#
#   benches/durable.sh                 # REPS=3 DUR=10 WINDOW=32
#   BIN=/path/to/emqx-rs benches/durable.sh   # another build
#
# Prints one line per run:
#   RESULT <off|on> <rep> acked=.. rate=.. received=.. loss=.. dup=.. p50=.. p99=.. fsyncs=..
# (rate: publishes acknowledged per second; fsyncs: the store's commits
# during the run, from `ctl durable status`), then the ratio of the
# medians. Only 127.0.0.1 is used; everything started is stopped.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPS=${REPS:-3}
DUR=${DUR:-10}
WINDOW=${WINDOW:-32}
QOS=${QOS:-1}
OUT=${OUT:-/tmp/emqx-rs-durable.$$}
BIN=${BIN:-"$ROOT/target/release/emqx-rs"}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"

commits() {
    ctl 1 durable status 2>/dev/null | awk '$1 == "commits" || $1 == "commits:" {print $NF; exit}'
}

run() {
    local mode=$1 rep=$2 enable=false
    [ "$mode" = on ] && enable=true
    local dir="$OUT/$mode-$rep"
    OUT_SAVED=$OUT
    start_node 1 "$dir" dur "durable_sessions.enable = $enable"
    OUT=$dir
    timeout $((DUR + 60)) "$BIN" bench sub -V 4 -h 127.0.0.1 -p 1883 -c 100 -i 1 -t 'pp/%i' \
        -q "$QOS" -C false >"$dir/sub.out" 2>"$dir/sub.err" &
    local sp=$!
    sleep 3
    local c0
    c0=$(commits)
    timeout $((DUR + 60)) "$BIN" bench pub -V 4 -h 127.0.0.1 -p 1883 -c 100 -i 1 -t 'pp/%i' \
        -q "$QOS" -I 0 --inflight "$WINDOW" -s 64 --duration "$DUR" >"$dir/pub.out" 2>"$dir/pub.err"
    local c1
    c1=$(commits)
    sleep 3
    kill -INT "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    python3 - "$mode" "$rep" "$dir" "$DUR" "${c0:-0}" "${c1:-0}" <<'PY'
import json, sys
mode, rep, d, dur, c0, c1 = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
def summary(f):
    for line in open(f):
        if line.startswith("SUMMARY"):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"no summary in {f}")
p, s = summary(d + "/pub.out"), summary(d + "/sub.out")
lat = s["latency_ms"]
acked = p.get("acked", p["sent"])
try:
    fsyncs = f"{(int(c1) - int(c0)) / dur:.0f}/s"
except ValueError:
    fsyncs = "?"
print(f"RESULT {mode} {rep} acked={acked} rate={acked / dur:.0f} received={s['received']} "
      f"loss={s['loss']} dup={s['duplicates']} p50={lat['p50']} p99={lat['p99']} fsyncs={fsyncs}",
      flush=True)
PY
    stop_all
    OUT=$OUT_SAVED
}

for rep in $(seq 1 "$REPS"); do
    run off "$rep"
    run on "$rep"
done | tee "$OUT/results"
python3 - "$OUT/results" <<'PY'
import statistics, sys
rates = {"off": [], "on": []}
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "RESULT":
        rates[f[1]].append(float(dict(kv.split("=") for kv in f[3:])["rate"]))
if rates["off"] and rates["on"]:
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"RATIO on/off = {on / off:.2f} (medians {on:.0f} / {off:.0f}; "
          f"runs off {sorted(rates['off'])}, on {sorted(rates['on'])})")
PY
