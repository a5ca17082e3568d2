#!/usr/bin/env bash
# 100,000 idle MQTT connections on one machine: a process may hold at most
# 20,000 open files here, so N nodes on 127.0.0.1..N form one cluster and
# N `emqx-rs bench conn` processes (one per node, each from its own source
# addresses) connect TOTAL/N clients each, keep alive 600 s.
#
#   benches/conn100k.sh                 # N=6 TOTAL=100000
#   N=3 TOTAL=30000 benches/conn100k.sh
#
# Prints, as `RESULT key value` lines:
#   - connect_s            from the first connection attempt until every
#                          node counts its share connected (ctl broker stats)
#   - connect_rate         TOTAL / connect_s
#   - connected            connections counted by `broker stats --cluster`
#   - rss_mb_<k>           each node's RSS with its share connected
#   - kb_per_conn_<k>      (RSS with them - RSS before) / its share
#   - settled_kb_per_conn_<k>  the same SETTLE (45) seconds later, once
#                          the idle sessions hibernated
#   - stats_cluster_s      `ctl broker stats --cluster` from node 1
#   - clients_list_s       `ctl clients list` from node 1 (every node's)
#   - clients_listed       lines it printed
#   - bench_errors_<k>     failed connections per bench process
# Only 127.0.0.0/8 is used; everything started is stopped at the end.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-6}
TOTAL=${TOTAL:-100000}
SETTLE=${SETTLE:-45}
HOLD=${HOLD:-$((90 + SETTLE))}
OUT=${OUT:-/tmp/emqx-rs-conn100k.$$}
BIN="$ROOT/target/release/emqx-rs"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"

rss_kb() { ps -o rss= -p "$(cat "$OUT/n$1/pid")" | tr -d ' '; }
connections() { ctl "$1" broker stats | awk -F: '$1 ~ /^connections.count/ {gsub(/ /, "", $2); print $2}'; }

PER=$((TOTAL / N))
BENCH=()
for k in $(seq 1 "$N"); do start_node "$k" "$OUT" big; done
form_cluster big "$N" 150 || exit 1
declare -A BEFORE
for k in $(seq 1 "$N"); do BEFORE[$k]=$(rss_kb "$k"); done

t=$(now)
for k in $(seq 1 "$N"); do
    # Source addresses 127.0.<10+k>.1-4: four times the ephemeral ports.
    src="127.0.$((10 + k)).1,127.0.$((10 + k)).2,127.0.$((10 + k)).3,127.0.$((10 + k)).4"
    "$BIN" bench conn -h "127.0.0.$k" -c "$PER" -i 0 -k 600 -V 4 --ifaddr "$src" \
        --prefix "c$k" --duration "$HOLD" >"$OUT/bench$k.out" 2>&1 &
    PIDS+=("$!")
    BENCH+=("$!")
done
done_all=0
for _ in $(seq 1 600); do
    done_all=1
    for k in $(seq 1 "$N"); do
        c=$(connections "$k")
        [ "${c:-0}" -ge "$PER" ] || { done_all=0; break; }
    done
    [ "$done_all" = 1 ] && break
    sleep 0.2
done
[ "$done_all" = 1 ] || { echo "not every node got its $PER clients" >&2; }
connect_s=$(since "$t")
echo "RESULT connect_s $connect_s"
echo "RESULT connect_rate $(echo "$TOTAL / $connect_s" | bc)"
sleep 5
for k in $(seq 1 "$N"); do
    r=$(rss_kb "$k")
    echo "RESULT rss_mb_$k $(echo "scale=1; $r / 1024" | bc)"
    echo "RESULT kb_per_conn_$k $(echo "scale=2; ($r - ${BEFORE[$k]}) / $PER" | bc)"
done
# Idle sessions hibernate after two sweeps of `mqtt.idle_timeout` (15 s);
# jemalloc returns the pages their actors held within about 10 s more.
if [ "$SETTLE" -gt 0 ]; then
    sleep "$SETTLE"
    for k in $(seq 1 "$N"); do
        r=$(rss_kb "$k")
        echo "RESULT settled_rss_mb_$k $(echo "scale=1; $r / 1024" | bc)"
        echo "RESULT settled_kb_per_conn_$k $(echo "scale=2; ($r - ${BEFORE[$k]}) / $PER" | bc)"
    done
fi
echo "RESULT connected $(ctl 1 broker stats --cluster | awk -F: '$1 ~ /^connections.count/ {gsub(/ /, "", $2); print $2}')"
t=$(now)
ctl 1 broker stats --cluster >/dev/null
echo "RESULT stats_cluster_s $(since "$t")"
t=$(now)
listed=$(ctl 1 clients list | grep -c '^Client(')
echo "RESULT clients_list_s $(since "$t")"
echo "RESULT clients_listed $listed"
# The bench processes end after HOLD seconds and print their summary.
wait "${BENCH[@]}"
for k in $(seq 1 "$N"); do
    grep '^clients:' "$OUT/bench$k.out" | sed "s/^/bench $k /"
    e=$(grep -o '"errors":[0-9]*' "$OUT/bench$k.out" 2>/dev/null | cut -d: -f2)
    echo "RESULT bench_errors_$k ${e:-running}"
done
