#!/usr/bin/env bash
# Persistent sessions kept in their shards, in one run: a 3-node cluster
# with `durable_sessions.enable = true` and `durable_storage.messages.backend`
# `builtin_local` (each node's own disk) or `builtin_raft` (also every
# session in its shard, SHARDS shards on the three cores, replication
# factor 3), alternated REPS times (fresh nodes and data directories per
# run). Two scenarios, every client on node 1 (so each acknowledgement
# waits for the shard's commit):
#
# - pairs: 100 pairs of persistent MQTT 3.1.1 sessions, QoS 1, 64-byte
#   payloads, each publisher on its own topic with its own subscriber,
#   closed loop with WINDOW unacknowledged per publisher, for DUR seconds;
# - fanout: FANOUT persistent subscribers of one topic, one QoS 1
#   publisher (window 8, 64-byte payloads), for DUR seconds.
#
#   benches/durable_cluster.sh          # REPS=3 DUR=10 WINDOW=32 SHARDS=16 FANOUT=500
#
# Prints one line per run:
#   RESULT <scenario> <local|raft> <rep> acked=.. rate=.. delivered=.. loss=.. dup=..
#          ack_p50=.. ack_p99=.. fsyncs=.. bytes_per_msg=.. bytes_per_delivery=..
# rate: publishes acknowledged per second; ack_p50/p99: from a publish to
# its PUBACK, ms; fsyncs: the stores' commits per second, the three nodes
# together (`ctl durable status`); bytes_per_msg: bytes the three nodes
# wrote to disk (/proc/PID/io write_bytes) per acknowledged publish, and
# per delivery. Then the raft/local ratio of the median rates per
# scenario. Only 127.0.0.1-3 are used; everything started is stopped.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REPS=${REPS:-3}
DUR=${DUR:-10}
WINDOW=${WINDOW:-32}
SHARDS=${SHARDS:-16}
FANOUT=${FANOUT:-500}
SCENARIOS=${SCENARIOS:-"pairs fanout"}
OUT=${OUT:-/tmp/emqx-rs-durable-cluster.$$}
BIN=${BIN:-"$ROOT/target/release/emqx-rs"}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"

# The three nodes' store commits, summed.
commits() {
    local k sum=0 c
    for k in 1 2 3; do
        c=$(ctl "$k" durable status 2>/dev/null | awk '$1 == "commits" || $1 == "commits:" {print $NF; exit}')
        sum=$((sum + ${c:-0}))
    done
    echo "$sum"
}

# Bytes the three nodes wrote to disk so far, summed.
written() {
    local k sum=0 w
    for k in 1 2 3; do
        w=$(awk '$1 == "write_bytes:" {print $2}' "/proc/$(cat "$OUT/n$k/pid")/io" 2>/dev/null)
        sum=$((sum + ${w:-0}))
    done
    echo "$sum"
}

# Waits until node 1 sees every shard led, with three voters and no
# learner.
wait_shards() {
    for _ in $(seq 1 300); do
        ctl 1 ds info --local 2>/dev/null | python3 -c '
import sys
rows = [l.split() for l in sys.stdin.read().splitlines()[2:]]
rows = [r for r in rows if len(r) >= 9]
ok = len(rows) == int(sys.argv[1]) and all(
    r[2] != "-" and len(r[7].split(",")) == 3 and not r[8].startswith("(") for r in rows)
sys.exit(0 if ok else 1)' "$SHARDS" && return 0
        sleep 0.2
    done
    echo "the shards did not settle: $(ctl 1 ds info --local)" >&2
    return 1
}

run() {
    local scenario=$1 mode=$2 rep=$3 backend=builtin_local
    [ "$mode" = raft ] && backend=builtin_raft
    local dir="$OUT/$scenario-$mode-$rep"
    local extra="durable_sessions.enable = true
durable_storage.messages { backend = $backend, n_shards = $SHARDS, replication_factor = 3, n_sites = 3 }
mqtt.max_mqueue_len = 1000000"
    OUT_SAVED=$OUT
    OUT=$dir
    local k
    for k in 1 2 3; do start_node "$k" "$dir" dcl "$extra"; done
    form_cluster dcl 3 150 || exit 1
    if [ "$mode" = raft ]; then wait_shards || exit 1; fi
    local subs topic pubs window
    case $scenario in
        pairs) subs=100 topic='pp/%i' pubs=100 window=$WINDOW ;;
        fanout) subs=$FANOUT topic='fan/t' pubs=1 window=8 ;;
    esac
    timeout $((DUR + 90)) "$BIN" bench sub -V 4 -h 127.0.0.1 -p 1883 -c "$subs" -i 1 -t "$topic" \
        -q 1 -C false >"$dir/sub.out" 2>"$dir/sub.err" &
    local sp=$!
    sleep 5
    local c0 w0 c1 w1
    c0=$(commits)
    w0=$(written)
    timeout $((DUR + 60)) "$BIN" bench pub -V 4 -h 127.0.0.1 -p 1883 -c "$pubs" -i 1 -t "$topic" \
        -q 1 -I 0 --inflight "$window" -s 64 --duration "$DUR" >"$dir/pub.out" 2>"$dir/pub.err"
    c1=$(commits)
    w1=$(written)
    sleep 5
    kill -INT "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    python3 - "$scenario" "$mode" "$rep" "$dir" "$DUR" "$c0" "$c1" "$w0" "$w1" <<'PY'
import json, sys
scenario, mode, rep, d = sys.argv[1:5]
dur = float(sys.argv[5])
c0, c1, w0, w1 = (int(x or 0) for x in sys.argv[6:10])
def summary(f):
    for line in open(f):
        if line.startswith("SUMMARY"):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"no summary in {f}")
p, s = summary(d + "/pub.out"), summary(d + "/sub.out")
acked = p.get("acked", p["sent"])
ack = p.get("ack_latency_ms", {})
delivered = s["received"]
print(f"RESULT {scenario} {mode} {rep} acked={acked} rate={acked / dur:.0f} delivered={delivered} "
      f"loss={s['loss']} dup={s['duplicates']} ack_p50={ack.get('p50')} ack_p99={ack.get('p99')} "
      f"fsyncs={(c1 - c0) / dur:.0f}/s bytes_per_msg={(w1 - w0) / max(acked, 1):.0f} "
      f"bytes_per_delivery={(w1 - w0) / max(delivered, 1):.0f}", flush=True)
PY
    stop_all
    OUT=$OUT_SAVED
}

for scenario in $SCENARIOS; do
    for rep in $(seq 1 "$REPS"); do
        run "$scenario" local "$rep"
        run "$scenario" raft "$rep"
    done
done | tee "$OUT/results"
python3 - "$OUT/results" <<'PY'
import statistics, sys
rates = {}
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "RESULT":
        rates.setdefault((f[1], f[2]), []).append(float(dict(kv.split("=") for kv in f[4:])["rate"]))
for scenario in sorted({s for s, _ in rates}):
    local, raft = rates.get((scenario, "local")), rates.get((scenario, "raft"))
    if local and raft:
        l, r = statistics.median(local), statistics.median(raft)
        print(f"RATIO {scenario} raft/local = {r / l:.2f} (medians {r:.0f} / {l:.0f})")
PY
