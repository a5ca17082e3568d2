#!/usr/bin/env bash
# What a cluster of N nodes costs: N nodes on 127.0.0.1..N joined into one
# cluster, then ROUTES wildcard subscriptions made on node SUB (1 by
# default), then one more node joining the cluster that holds them. The
# first CORES nodes are cores, the others replicants (default: all cores,
# a full mesh); the late node is a replicant when there are any.
#
#   benches/mesh.sh                # N=15 ROUTES=100000, 15 cores
#   CORES=3 benches/mesh.sh        # 3 cores + 12 replicants
#   CORES=3 SUB=15 benches/mesh.sh # the subscriptions made on a replicant
#   N=5 ROUTES=10000 benches/mesh.sh
#
# Prints, as `RESULT key value` lines:
#   - join_s              time for nodes 2..N to join node 1, one after another
#   - control_links       established inter-node (control plane) TCP connections
#   - data_links          established forwarding (data plane) TCP connections
#   - rss_mb_<k>          each node's RSS after the routes spread
#   - subscribe_s         time for the subscriptions to be acknowledged on node 1
#   - spread_s            from the first SUBSCRIBE until every node routes them
#                         (benches/route_spread.py: a filter subscribed after
#                         them reaches each node after them; a message
#                         published on each node every 20 ms shows when)
#   - late_join_s         node N+1 joining the cluster with the routes: from
#                         `cluster join` until it routes all of them
# Only 127.0.0.0/8 is used; everything started is stopped at the end.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-15}
ROUTES=${ROUTES:-100000}
CONNS=${CONNS:-20}
CORES=${CORES:-$N}
SUB=${SUB:-1}
OUT=${OUT:-/tmp/emqx-rs-mesh.$$}
BIN="$ROOT/target/release/emqx-rs"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"


start() {
    if [ "$1" -gt "$CORES" ]; then
        start_node "$1" "$OUT" mesh "node.db_role = replicant"
    else
        start_node "$1" "$OUT" mesh
    fi
}


routes_on() { ctl "$1" topics list | wc -l; }

for k in $(seq 1 "$N"); do start "$k"; done
t=$(now)
form_cluster mesh "$N" 300 || exit 1
echo "RESULT join_s $(since "$t")"
sleep 3
ports_ctl=$(seq -s '|' $((4370 + 1)) $((4370 + N + 1)))
ports_fwd=$(seq -s '|' $((5370 + 1)) $((5370 + N + 1)))
count_links() {
    # One line per connection: the side whose local port is the listener.
    ss -Htn state established | awk '{print $3}' | grep -Ec ":($1)\$"
}
echo "RESULT control_links $(count_links "$ports_ctl")"
echo "RESULT data_links $(count_links "$ports_fwd")"

t=$(now)
python3 "$HERE/subscribe_many.py" 1883 "$CONNS" "$ROUTES" "127.0.0.$SUB" >"$OUT/subs.out" 2>&1 &
SUBPID=$!
PIDS+=("$SUBPID")
for _ in $(seq 1 600); do
    grep -q '^READY' "$OUT/subs.out" && break
    sleep 0.1
done
echo "RESULT subscribe_s $(since "$t")"
hosts=$(for k in $(seq 1 "$N"); do printf '127.0.0.%s ' "$k"; done)
# shellcheck disable=SC2086
python3 "$HERE/route_spread.py" "127.0.0.$SUB" 1883 $hosts >"$OUT/spread.out" 2>&1
all=$(awk '/^ALL/ {print $2}' "$OUT/spread.out")
[ -n "$all" ] || { echo "routes did not spread: $(cat "$OUT/spread.out")" >&2; exit 1; }
echo "RESULT spread_s $(echo "$all - $t" | bc)"
for k in $(seq 1 "$N"); do
    got=$(routes_on "$k")
    [ "$got" -ge "$ROUTES" ] || { echo "node $k routes $got filters" >&2; exit 1; }
done
for k in $(seq 1 "$N"); do
    echo "RESULT rss_mb_$k $(ps -o rss= -p "$(cat "$OUT/n$k/pid")" | awk '{printf "%.1f", $1/1024}')"
done

L=$((N + 1))
start "$L"
t=$(now)
ctl "$L" cluster join "mesh1@127.0.0.1" >/dev/null || { echo "late join failed" >&2; exit 1; }
python3 "$HERE/route_spread.py" "127.0.0.$SUB" 1883 "127.0.0.$L" >"$OUT/late.out" 2>&1
all=$(awk '/^ALL/ {print $2}' "$OUT/late.out")
[ -n "$all" ] || { echo "the late node routes nothing: $(cat "$OUT/late.out")" >&2; exit 1; }
echo "RESULT late_join_s $(echo "$all - $t" | bc)"
echo "RESULT rss_mb_$L $(ps -o rss= -p "$(cat "$OUT/n$L/pid")" | awk '{printf "%.1f", $1/1024}')"
sleep 3
echo "RESULT control_links_after $(count_links "$ports_ctl")"
