#!/usr/bin/env bash
# CPU profile of emqx-rs under one benchmark load, with perf (software
# cpu-clock event: this VM has no hardware counters).
#
#   benches/profile.sh a     # scenario (a): 100 QoS 0 pairs, 100k msg/s offered
#   benches/profile.sh a1    # scenario (a1): 100 QoS 1 pairs, closed loop
#   benches/profile.sh b     # scenario (b): 2,000 msg/s to 500 subscribers
#   benches/profile.sh c     # scenario (c): 200 QoS 1 publishers into t/+
#
# Needs `perf` (Debian: apt-get install -y linux-perf) and a release build
# (the release profile keeps symbols). Starts its own emqx-rs on
# 127.0.0.1:$PORT, records SECS seconds of the load, prints the top
# functions (self time, then with children; DWARF call graphs, since the
# release build has no frame pointers) and stops everything it started.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SC=${1:-a}
SECS=${SECS:-8}
PORT=${PORT:-21893}
OUT=${OUT:-/tmp/emqx-rs-profile.$$}
BIN="$ROOT/target/release/emqx-rs"
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf is missing: apt-get install -y linux-perf" >&2; exit 1; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release) || exit 1

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$OUT/emqx.conf" <<CONF
node { name = "emqxprof@127.0.0.1", cookie = "profcookie", data_dir = "$OUT/data", dist_listen_port = 24371 }
cluster { name = profcl, discovery_strategy = manual }
rpc { port_discovery = manual, server_port = 25370 }
listeners.tcp.default { bind = "127.0.0.1:$PORT" }
log { file.enable = false }
CONF
"$BIN" foreground -config "$OUT/emqx.conf" >"$OUT/broker.log" 2>&1 &
BPID=$!
PIDS+=("$BPID")
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

case $SC in
a)  SUB="-c 100 -i 1 -t a/%i -q 0"; PUB="-c 100 -i 1 -t a/%i -q 0 -s 64 -I 1" ;;
a1) SUB="-c 100 -i 1 -t a/%i -q 1"; PUB="-c 100 -i 1 -t a/%i -q 1 -s 64 -I 0 --inflight 100" ;;
b)  SUB="-c 500 -i 1 -t fan/1 -q 0"; PUB="-c 2 -i 1 -t fan/1 -q 0 -s 64 -I 1" ;;
c)  SUB="-c 1 -i 1 -t t/+ -q 1"; PUB="-c 200 -i 1 -t t/%i -q 1 -s 64 -I 0 --inflight 100" ;;
*)  echo "scenario a, a1, b or c" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086
timeout $((SECS + 60)) "$BIN" bench sub -V 4 -p "$PORT" $SUB >"$OUT/sub.out" 2>"$OUT/sub.err" &
SPID=$!
PIDS+=("$SPID")
sleep 2
# shellcheck disable=SC2086
timeout $((SECS + 60)) "$BIN" bench pub -V 4 -p "$PORT" $PUB --duration $((SECS + 2)) \
    >"$OUT/pub.out" 2>"$OUT/pub.err" &
PPID_=$!
PIDS+=("$PPID_")
sleep 1
perf record -e cpu-clock -F "${FREQ:-499}" --call-graph "${CALLGRAPH:-dwarf,16384}" -p "$BPID" -o "$OUT/perf.data" -- sleep "$SECS" \
    >"$OUT/perf-record.log" 2>&1
wait "$PPID_" 2>/dev/null
sleep 1
kill -INT "$SPID" 2>/dev/null
wait "$SPID" 2>/dev/null
grep '^SUMMARY' "$OUT/pub.out" "$OUT/sub.out" | cut -c1-400
echo "== self time (top 30)"
perf report -i "$OUT/perf.data" --no-children --stdio --sort symbol -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -30
echo "== with children (top 30)"
perf report -i "$OUT/perf.data" --children --stdio --sort symbol -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -30
echo "perf data in $OUT/perf.data"
