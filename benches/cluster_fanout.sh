#!/usr/bin/env bash
# Fan-out across a cluster beside the same fan-out on one node, in one run:
# SUBS QoS 0 subscribers of one topic, PUBS publishers on node 1 at
# 1,000 msg/s each (2,000 msg/s in by default), DUR seconds.
#
#   benches/cluster_fanout.sh            # REPS=2 NODES=3 SUBS=500 PUBS=2 DUR=10
#
# Each repetition runs the single node first (subscribers all on node 1,
# no cluster), then the cluster (NODES nodes on 127.0.0.1..NODES, the
# subscribers spread over them by `bench sub -h a,b,c`). Prints one
# `RESULT <setup> <rep> received=.. expected=.. p50=.. p99=..` line per run.
# Only 127.0.0.0/8 is used; everything started is stopped at the end.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPS=${REPS:-2}
NODES=${NODES:-3}
SUBS=${SUBS:-500}
PUBS=${PUBS:-2}
DUR=${DUR:-10}
OUT=${OUT:-/tmp/emqx-rs-cluster-fanout.$$}
BIN="$ROOT/target/release/emqx-rs"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"

start() { start_node "$1" "$2" fan; }

run() {
    local setup=$1 rep=$2 n=$3
    local dir="$OUT/$setup-$rep" hosts="127.0.0.1"
    start 1 "$dir"
    for k in $(seq 2 "$n"); do
        start "$k" "$dir"
        "$BIN" ctl cluster join fan1@127.0.0.1 -config "$dir/n$k/emqx.conf" >/dev/null ||
            { echo "join failed" >&2; exit 1; }
        hosts="$hosts,127.0.0.$k"
    done
    timeout $((DUR + 60)) "$BIN" bench sub -V 4 -h "$hosts" -p 1883 -c "$SUBS" -i 1 -t fan/1 -q 0 \
        >"$dir/sub.out" 2>"$dir/sub.err" &
    local sp=$!
    sleep 4
    timeout $((DUR + 60)) "$BIN" bench pub -V 4 -h 127.0.0.1 -p 1883 -c "$PUBS" -i 1 -t fan/1 -q 0 \
        -s 64 -I 1 --duration "$DUR" >"$dir/pub.out" 2>"$dir/pub.err"
    sleep 3
    kill -INT "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    python3 - "$setup" "$rep" "$SUBS" "$dir" <<'PY'
import json, sys
setup, rep, subs, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def summary(f):
    for line in open(f):
        if line.startswith("SUMMARY"):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"no summary in {f}")
p, s = summary(d + "/pub.out"), summary(d + "/sub.out")
lat = s["latency_ms"]
print(f"RESULT {setup} {rep} received={s['received']} expected={p['sent'] * subs} "
      f"loss={s['loss']} p50={lat['p50']} p99={lat['p99']}", flush=True)
PY
    stop_all
}

for rep in $(seq 1 "$REPS"); do
    run single "$rep" 1
    run cluster "$rep" "$NODES"
done
