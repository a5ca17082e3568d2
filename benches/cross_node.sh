#!/usr/bin/env bash
# Pairs across two nodes beside the same pairs on one node, in one run:
# 100 publishers, each with its own subscriber on its own topic (`x/%i`,
# MQTT 3.1.1, 64-byte payloads), for DUR seconds, at
#   - QoS 0, 1 msg/ms offered per publisher (scenario (a) of run.sh), and
#   - QoS 1, closed loop with WINDOW unacknowledged per publisher (a1).
#
#   benches/cross_node.sh              # REPS=3 DUR=10 WINDOW=100
#
# For A/B runs: BIN (the broker binary), QOS ("0 1"), SETUPS ("single
# pair"), EXTRA (lines added to every node's config, e.g.
# "durable_sessions.enable = true") and SUB_CLEAN (true; false makes the
# subscribers persistent sessions).
#
# Each repetition runs, per QoS, the single node first (publishers and
# subscribers on node 1), then the pair (publishers on node 1 of a
# two-node cluster on 127.0.0.1-2, subscribers on node 2, so every message
# crosses the forwarding channel). Prints one line per run:
#   RESULT <qos> <setup> <rep> sent=.. received=.. rate=.. loss=.. dup=.. p50=.. p99=..
# (rate: messages received per second). Only 127.0.0.0/8 is used;
# everything started is stopped at the end.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPS=${REPS:-3}
DUR=${DUR:-10}
WINDOW=${WINDOW:-100}
OUT=${OUT:-/tmp/emqx-rs-cross-node.$$}
BIN=${BIN:-"$ROOT/target/release/emqx-rs"}
QOS=${QOS:-"0 1"}
SETUPS=${SETUPS:-"single pair"}
EXTRA=${EXTRA:-}
SUB_CLEAN=${SUB_CLEAN:-true}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"

run() {
    local qos=$1 setup=$2 rep=$3
    local dir="$OUT/q$qos-$setup-$rep" sub_host=127.0.0.1 load
    OUT_SAVED=$OUT
    start_node 1 "$dir" xn "$EXTRA"
    if [ "$setup" = pair ]; then
        start_node 2 "$dir" xn "$EXTRA"
        OUT=$dir form_cluster xn 2 50 || exit 1
        sub_host=127.0.0.2
    fi
    if [ "$qos" = 0 ]; then
        load="-q 0 -I 1"
    else
        load="-q 1 -I 0 --inflight $WINDOW"
    fi
    timeout $((DUR + 60)) "$BIN" bench sub -V 4 -h "$sub_host" -p 1883 -c 100 -i 1 -t 'x/%i' \
        -q "$qos" -C "$SUB_CLEAN" >"$dir/sub.out" 2>"$dir/sub.err" &
    local sp=$!
    sleep 3
    # shellcheck disable=SC2086
    timeout $((DUR + 60)) "$BIN" bench pub -V 4 -h 127.0.0.1 -p 1883 -c 100 -i 1 -t 'x/%i' \
        $load -s 64 --duration "$DUR" >"$dir/pub.out" 2>"$dir/pub.err"
    sleep 3
    kill -INT "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    python3 - "$qos" "$setup" "$rep" "$dir" "$DUR" <<'PY'
import json, sys
qos, setup, rep, d, dur = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
def summary(f):
    for line in open(f):
        if line.startswith("SUMMARY"):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"no summary in {f}")
p, s = summary(d + "/pub.out"), summary(d + "/sub.out")
lat = s["latency_ms"]
print(f"RESULT {qos} {setup} {rep} sent={p['sent']} received={s['received']} "
      f"rate={s['received'] / dur:.0f} loss={s['loss']} dup={s['duplicates']} "
      f"p50={lat['p50']} p99={lat['p99']}", flush=True)
PY
    stop_all
    OUT=$OUT_SAVED
}

for rep in $(seq 1 "$REPS"); do
    for qos in $QOS; do
        for setup in $SETUPS; do
            run "$qos" "$setup" "$rep"
        done
    done
done
