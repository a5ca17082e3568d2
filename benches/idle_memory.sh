#!/usr/bin/env bash
# Memory of idle connections before and after their sessions hibernate
# (`mqtt.idle_timeout`): one node on 127.0.0.1, C idle clients (MQTT
# 3.1.1, keepalive 600 s; with SUB=1 each subscribed to its own topic at
# QoS 1) from one `emqx-rs bench conn` (or `sub`) process.
#
#   benches/idle_memory.sh                  # C=10000 IDLE=5s
#   IDLE=1h benches/idle_memory.sh          # the same without hibernation
#
# Prints, as `RESULT key value` lines:
#   - kb_per_conn_live     RSS growth per connection 3 s after the last
#                          connected (every session has its actor)
#   - kb_per_conn_settled  the same SETTLE seconds later (default two idle
#                          timeouts and 15 s, so two sweeps have run and the
#                          allocator has returned freed pages)
#   - hibernated           sessions dormant then (`session.hibernated`
#                          minus `session.woken`)
#   - clients_list_s       `ctl clients list` then
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
C=${C:-10000}
IDLE=${IDLE:-5s}
SUB=${SUB:-0}
OUT=${OUT:-/tmp/emqx-rs-idle.$$}
BIN=${BIN:-$ROOT/target/release/emqx-rs}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=benches/nodes.sh
. "$HERE/nodes.sh"

idle_s=$(python3 -c "import re,sys; v,u=re.fullmatch(r'(\d+)(ms|s|m|h)', sys.argv[1]).groups(); print(int(v)*{'ms':0.001,'s':1,'m':60,'h':3600}[u])" "$IDLE")
SETTLE=${SETTLE:-$(python3 -c "print(int(min(2 * $idle_s, 60) + 15))")}
rss_kb() { ps -o rss= -p "$(cat "$OUT/n1/pid")" | tr -d ' '; }
metric() { ctl 1 broker metrics | awk -F: -v k="$1" '{gsub(/ /, "", $1)} $1 == k {gsub(/ /, "", $2); print $2}'; }
connections() { ctl 1 broker stats | awk -F: '$1 ~ /^connections.count/ {gsub(/ /, "", $2); print $2}'; }

start_node 1 "$OUT" idle "mqtt.idle_timeout = $IDLE"
sleep 1
before=$(rss_kb)
mode=(conn)
[ "$SUB" = 1 ] && mode=(sub -t "idle/%i" -q 1)
"$BIN" bench "${mode[@]}" -h 127.0.0.1 -c "$C" -i 1 -k 600 -V 4 --prefix idle \
    --duration $((SETTLE + 60)) >"$OUT/bench.out" 2>&1 &
BENCH=$!
PIDS+=("$BENCH")
for _ in $(seq 1 600); do
    [ "$(connections)" -ge "$C" ] 2>/dev/null && break
    sleep 0.2
done
echo "RESULT connected $(connections)"
sleep 3
live=$(rss_kb)
echo "RESULT kb_per_conn_live $(echo "scale=2; ($live - $before) / $C" | bc)"
sleep "$SETTLE"
settled=$(rss_kb)
echo "RESULT kb_per_conn_settled $(echo "scale=2; ($settled - $before) / $C" | bc)"
echo "RESULT hibernated $(($(metric session.hibernated) - $(metric session.woken)))"
t=$(now)
listed=$(ctl 1 clients list | grep -c '^Client(')
echo "RESULT clients_list_s $(since "$t")"
echo "RESULT clients_listed $listed"
echo "RESULT woken_after_list $(metric session.woken)"
