#!/usr/bin/env bash
# emqx-rs beside Mosquitto and rumqttd, in one run, on one machine.
#
#   benches/run.sh                   # everything, 3 repetitions
#   REPS=5 DUR=10 benches/run.sh     # more repetitions / longer runs
#   SCENARIOS="a c" benches/run.sh   # a subset (a a1 b c d lat e)
#   SCENARIOS="lat lat_tls d d_ws" BROKERS="emqx-rs mosquitto" ORDER=rep benches/run.sh
#   BROKER_BIN=/tmp/old/emqx-rs BROKERS=emqx-rs benches/run.sh   # another build, same generator
#
# A scenario name with a suffix _tls, _ws or _wss runs that scenario (any
# but e) over TLS, MQTT over WebSocket, or WebSocket over TLS instead of
# plain TCP, against emqx-rs and Mosquitto (rumqttd is left out of those,
# see serves() below); _quic runs it over MQTT over QUIC, against emqx-rs
# only (neither Mosquitto nor rumqttd serves QUIC). The TLS clients verify the broker's certificate
# against a throwaway CA made with openssl in $OUT/certs.
#
# Installs the peers (Debian's mosquitto, `cargo install rumqttd`), builds
# emqx-rs in release, then for every scenario and repetition starts each
# broker fresh on 127.0.0.1 (one at a time, the order rotated between
# repetitions), drives it with `emqx-rs bench`, and stops it. Results go to
# $OUT/results.jsonl; benches/report.py prints the markdown table of medians
# and ratios at the end. Every broker and bench process started here is
# killed on exit. Nothing leaves 127.0.0.0/8, but Mosquitto 2.0.11's
# WebSocket listeners ignore their bind address (eclipse-mosquitto/mosquitto
# issue 3045) and listen on every address while a _ws/_wss scenario runs
# against it.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# ROOT: the tree whose emqx-rs is measured (another checkout for an A/B).
ROOT=${ROOT:-$(cd "$HERE/.." && pwd)}
OUT=${OUT:-/tmp/emqx-rs-benches.$$}
REPS=${REPS:-3}
DUR=${DUR:-10}                       # seconds of publishing per run
SCENARIOS=${SCENARIOS:-"a a1 b c d lat e a_tls a_ws lat_tls lat_ws d_tls d_ws"}
BROKERS=${BROKERS:-"emqx-rs mosquitto rumqttd"}
IDLE_CONNS=${IDLE_CONNS:-10000}       # scenario (d)
E_SUBS=${E_SUBS:-100000}             # scenario (e)
PORT_EMQX=${PORT_EMQX:-21883}
PORT_MOSQ=${PORT_MOSQ:-21884}
PORT_RUMQ=${PORT_RUMQ:-21885}
PORT_EMQX_TLS=${PORT_EMQX_TLS:-21886}
PORT_MOSQ_TLS=${PORT_MOSQ_TLS:-21887}
PORT_EMQX_WS=${PORT_EMQX_WS:-21888}
PORT_MOSQ_WS=${PORT_MOSQ_WS:-21889}
PORT_EMQX_WSS=${PORT_EMQX_WSS:-21890}
PORT_MOSQ_WSS=${PORT_MOSQ_WSS:-21891}
PORT_EMQX_QUIC=${PORT_EMQX_QUIC:-21892}   # UDP
PORT_EMQX_API=${PORT_EMQX_API:-21893}
# API_LOAD=1: while emqx-rs runs a scenario, its HTTP API is polled as a
# dashboard and a Prometheus server would (benches/api_load.py).
API_LOAD=${API_LOAD:-0}
BENCH="$ROOT/target/release/emqx-rs"
# BROKER_BIN: run this emqx-rs binary as the broker instead of the one
# built here (an A/B of two builds with the same load generator).
BROKER_BIN=${BROKER_BIN:-$BENCH}
PROTO=4   # MQTT 3.1.1 for all: rumqttd's v5 support is partial

CLK_TCK=$(getconf CLK_TCK)

# Every scenario name is checked before anything is installed.
for sc in $SCENARIOS; do
    base=${sc%_*}
    tr=tcp
    [ "$base" != "$sc" ] && tr=${sc##*_}
    case $tr in tcp | tls | ws | wss | quic) ;; *) base=bad ;; esac
    case $base:$tr in
    a:* | a1:* | b:* | c:* | d:* | lat:* | e:tcp) ;;
    *)
        echo "unknown scenario $sc (a a1 b c d lat e; all but e also with _tls, _ws, _wss or _quic)" >&2
        exit 2
        ;;
    esac
done

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- cleanup
PIDS=()
BROKER_PID=""
cleanup() {
    local p
    for p in "${PIDS[@]}" $BROKER_PID; do
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    sleep 0.5
    for p in "${PIDS[@]}" $BROKER_PID; do
        [ -n "$p" ] && kill -9 "$p" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The broker and the load generator both need one descriptor a connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true
log "open files limit: $(ulimit -n); results in $OUT"

# ------------------------------------------------------------ installation
wants() { case " $BROKERS " in *" $1 "*) return 0 ;; esac; return 1; }
if wants mosquitto && ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing mosquitto (apt)"
    apt-get install -y mosquitto >"$OUT/apt.log" 2>&1 ||
        { apt-get update >>"$OUT/apt.log" 2>&1 && apt-get install -y mosquitto >>"$OUT/apt.log" 2>&1; } ||
        { echo "cannot install mosquitto, see $OUT/apt.log" >&2; exit 1; }
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# Debian starts a service on install; we run our own process instead.
systemctl stop mosquitto >/dev/null 2>&1 || true

RUMQTTD="$HOME/.cargo/bin/rumqttd"
if wants rumqttd && [ ! -x "$RUMQTTD" ]; then
    log "installing rumqttd (cargo install, several minutes)"
    cargo install rumqttd >"$OUT/rumqttd-install.log" 2>&1 ||
        { echo "cannot install rumqttd, see $OUT/rumqttd-install.log" >&2; exit 1; }
fi

log "building emqx-rs (release)"
(cd "$ROOT" && cargo build --release >"$OUT/build.log" 2>&1) ||
    { echo "build failed, see $OUT/build.log" >&2; exit 1; }

# ------------------------------------------------------------ certificates
# A CA and a server certificate for 127.0.0.1 (EC P-256), for the TLS
# listeners of emqx-rs and Mosquitto.
CERTS="$OUT/certs"
mkdir -p "$CERTS"
command -v openssl >/dev/null || { echo "openssl is missing (apt-get install -y openssl)" >&2; exit 1; }
(
    cd "$CERTS" &&
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key &&
        openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=emqx-rs bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem &&
        openssl ecparam -name prime256v1 -genkey -noout -out server.key &&
        openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr &&
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1" >server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -sha256 -extfile server.ext -out server.pem &&
        # Mosquitto started as root reads its files as user mosquitto.
        chmod 644 server.key
) >"$OUT/certs.log" 2>&1 || { echo "cannot make the certificates, see $OUT/certs.log" >&2; exit 1; }

# ---------------------------------------------------------------- configs
mkdir -p "$OUT/conf"
cat >"$OUT/conf/mosquitto.conf" <<EOF
# Defaults otherwise (max_queued_messages 1000, max_inflight_messages 20).
listener $PORT_MOSQ 127.0.0.1
max_connections -1
listener $PORT_MOSQ_TLS 127.0.0.1
max_connections -1
certfile $CERTS/server.pem
keyfile $CERTS/server.key
cafile $CERTS/ca.pem
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
EOF
# The WebSocket listeners only for the _ws/_wss scenarios: they listen on
# every address whatever the bind address says (see the top).
cp "$OUT/conf/mosquitto.conf" "$OUT/conf/mosquitto-ws.conf"
cat >>"$OUT/conf/mosquitto-ws.conf" <<EOF
listener $PORT_MOSQ_WS 127.0.0.1
max_connections -1
protocol websockets
listener $PORT_MOSQ_WSS 127.0.0.1
max_connections -1
protocol websockets
certfile $CERTS/server.pem
keyfile $CERTS/server.key
EOF

cat >"$OUT/conf/emqx.conf" <<EOF
# Defaults otherwise (mqueue 1000, inflight 32).
node {
  name = "emqxbench@127.0.0.1"
  cookie = "benchcookie"
  data_dir = "$OUT/emqx-data"
  dist_listen_port = 24370
}
cluster {
  name = benchcl
  discovery_strategy = manual
}
rpc {
  port_discovery = manual
  server_port = 25369
}
listeners.tcp.default {
  bind = "127.0.0.1:$PORT_EMQX"
  max_connections = infinity
}
listeners.ssl.default {
  bind = "127.0.0.1:$PORT_EMQX_TLS"
  max_connections = infinity
  ssl_options {
    certfile = "$CERTS/server.pem"
    keyfile = "$CERTS/server.key"
    cacertfile = "$CERTS/ca.pem"
  }
}
listeners.ws.default {
  bind = "127.0.0.1:$PORT_EMQX_WS"
  max_connections = infinity
}
listeners.wss.default {
  bind = "127.0.0.1:$PORT_EMQX_WSS"
  max_connections = infinity
  ssl_options {
    certfile = "$CERTS/server.pem"
    keyfile = "$CERTS/server.key"
    cacertfile = "$CERTS/ca.pem"
  }
}
listeners.quic.default {
  bind = "127.0.0.1:$PORT_EMQX_QUIC"
  max_connections = infinity
  ssl_options {
    certfile = "$CERTS/server.pem"
    keyfile = "$CERTS/server.key"
    cacertfile = "$CERTS/ca.pem"
  }
}
log {
  file.enable = false
}
dashboard.listeners.http.bind = "127.0.0.1:$PORT_EMQX_API"
EOF

# rumqttd: its shipped rumqttd.toml with every listener moved to loopback
# ports of ours and the connection limits raised.
SHIPPED=""
if wants rumqttd; then
    SHIPPED=$(ls -d "$HOME"/.cargo/registry/src/*/rumqttd-*/ 2>/dev/null | sort -V | tail -1)
    if [ -z "$SHIPPED" ] || [ ! -f "$SHIPPED/rumqttd.toml" ]; then
        echo "cannot find rumqttd.toml under ~/.cargo/registry/src" >&2
        exit 1
    fi
    python3 "$HERE/rumqttd_conf.py" "$SHIPPED/rumqttd.toml" "$PORT_RUMQ" 40000 \
        >"$OUT/conf/rumqttd.toml" || exit 1
    cp "$SHIPPED/rumqttd.toml" "$OUT/conf/rumqttd.shipped.toml"
fi

# ---------------------------------------------------------------- brokers
# The transport of the scenario running now (tcp, tls, ws, wss or quic).
TR=tcp

# port_of BROKER [TRANSPORT]
port_of() {
    case $1:${2:-$TR} in
    emqx-rs:tcp) echo "$PORT_EMQX" ;;
    emqx-rs:tls) echo "$PORT_EMQX_TLS" ;;
    emqx-rs:ws) echo "$PORT_EMQX_WS" ;;
    emqx-rs:wss) echo "$PORT_EMQX_WSS" ;;
    emqx-rs:quic) echo "$PORT_EMQX_QUIC" ;;
    mosquitto:tcp) echo "$PORT_MOSQ" ;;
    mosquitto:tls) echo "$PORT_MOSQ_TLS" ;;
    mosquitto:ws) echo "$PORT_MOSQ_WS" ;;
    mosquitto:wss) echo "$PORT_MOSQ_WSS" ;;
    rumqttd:tcp) echo "$PORT_RUMQ" ;;
    esac
}

# The bench options of the current transport: TLS clients check the
# broker's certificate, as a device would.
targs() {
    case $TR in
    tcp) ;;
    ws) echo "--transport ws" ;;
    tls | wss | quic) echo "--transport $TR --cafile $CERTS/ca.pem" ;;
    esac
}

# Whether a broker takes part in a transport's scenarios. rumqttd runs the
# TCP ones only: its TLS listener takes a CA only to make client
# certificates mandatory, and its WebSocket listener is another server
# section of its configuration; neither was set up. QUIC is emqx-rs's
# alone.
serves() {
    case $2 in
    tcp) true ;;
    quic) [ "$1" = emqx-rs ] ;;
    *) [ "$1" != rumqttd ] ;;
    esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_broker() {
    local b=$1 port p
    port=$(port_of "$b")
    # QUIC's port is UDP: readiness is seen on the TCP listener, which
    # opens with it.
    [ "$TR" = quic ] && port=$(port_of "$b" tcp)
    for p in $(port_of "$b" tcp) "$port"; do
        if port_open "$p"; then
            echo "port $p is already taken; set PORT_* to free ports" >&2
            exit 1
        fi
    done
    case $b in
    emqx-rs)
        rm -rf "$OUT/emqx-data"
        "$BROKER_BIN" foreground -config "$OUT/conf/emqx.conf" >"$OUT/broker-$b.log" 2>&1 &
        ;;
    mosquitto)
        local conf="$OUT/conf/mosquitto.conf"
        case $TR in ws | wss) conf="$OUT/conf/mosquitto-ws.conf" ;; esac
        "$MOSQUITTO" -c "$conf" >"$OUT/broker-$b.log" 2>&1 &
        ;;
    rumqttd)
        "$RUMQTTD" -c "$OUT/conf/rumqttd.toml" >"$OUT/broker-$b.log" 2>&1 &
        ;;
    esac
    BROKER_PID=$!
    local i
    for i in $(seq 1 100); do
        port_open "$port" && { sleep 0.3; return 0; }
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$b did not start; log:" >&2
    tail -20 "$OUT/broker-$b.log" >&2
    exit 1
}

stop_broker() {
    [ -z "$BROKER_PID" ] && return
    kill "$BROKER_PID" 2>/dev/null
    local i
    for i in $(seq 1 50); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
    BROKER_PID=""
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    # After the ")" that ends the command name, utime and stime are the
    # 12th and 13th fields.
    awk '{print $12 + $13}' <<<"${s##*) }"
}
now_s() { date +%s.%N; }
# seconds A B: B - A ticks in seconds.
ticks_s() { awk -v a="$1" -v b="$2" -v k="$CLK_TCK" 'BEGIN {print (b - a) / k}'; }

# The SUMMARY json of a bench output file, or {} when there is none.
summary_of() {
    local s
    s=$(grep '^SUMMARY ' "$1" 2>/dev/null | tail -1 | cut -d' ' -f2-)
    echo "${s:-{\}}"
}

# Waits (bounded) until a bench process reports `connected=N` on stderr.
wait_connected() {
    local errfile=$1 n=$2 pid=$3 limit=$4 i
    for i in $(seq 1 $((limit * 10))); do
        if grep -q "connected=$n " "$errfile" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Stops a background bench process with SIGINT (it then prints its summary).
stop_bench() {
    local pid=$1 i
    kill -INT "$pid" 2>/dev/null
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

record() {  # scenario broker rep json...
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, sys
sc, broker, rep = sys.argv[1:4]
d = {"scenario": sc, "broker": broker, "rep": int(rep)}
# The machine's load (1-minute average) when the run ended: other work on
# it shows here.
d["load1"] = float(open("/proc/loadavg").read().split()[0])
for kv in sys.argv[4:]:
    k, v = kv.split("=", 1)
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
print(json.dumps(d))
EOF
}

# ----------------------------------------------------------- pub/sub runs
# pubsub SCENARIO BROKER REP FANOUT "SUB ARGS" "PUB ARGS"
# Subscribers first (all of them connected and given a moment to
# subscribe), then the publishers for $DUR seconds, then 2 s to drain, then
# the subscribers are stopped.
# The broker's CPU time is taken from just before the publishers start to
# the end of the drain.
pubsub() {
    local sc=$1 b=$2 rep=$3 fanout=$4 subargs=$5 pubargs=$6
    local port tag subn ta
    port=$(port_of "$b")
    ta=$(targs)
    tag="$OUT/$sc-$b-$rep"
    subn=$(sed -E 's/.*-c ([0-9]+).*/\1/' <<<"$subargs")
    rm -f "$tag.sub.out" "$tag.sub.err"
    # shellcheck disable=SC2086
    timeout $((DUR + 90)) "$BENCH" bench sub -V "$PROTO" -p "$port" $ta --prefix "s$rep" $subargs \
        >"$tag.sub.out" 2>"$tag.sub.err" &
    local spid=$!
    PIDS+=("$spid")
    if ! wait_connected "$tag.sub.err" "$subn" "$spid" 30; then
        log "$sc $b: subscribers did not all connect"
    fi
    sleep 1
    local c0 c1 t0 t1
    c0=$(cpu_ticks "$BROKER_PID")
    t0=$(now_s)
    # shellcheck disable=SC2086
    timeout $((DUR + 60)) "$BENCH" bench pub -V "$PROTO" -p "$port" $ta --prefix "p$rep" $pubargs --duration "$DUR" \
        >"$tag.pub.out" 2>"$tag.pub.err"
    sleep 2
    c1=$(cpu_ticks "$BROKER_PID")
    t1=$(now_s)
    stop_bench "$spid"
    local rss
    rss=$(rss_kb "$BROKER_PID")
    record "$sc" "$b" "$rep" transport="$TR" fanout="$fanout" rss_kb="$rss" \
        cpu_s="$(ticks_s "$c0" "$c1")" cpu_wall_s="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
        pub="$(summary_of "$tag.pub.out")" sub="$(summary_of "$tag.sub.out")"
}

# (a) 100 pairs, QoS 0, 64 bytes, each publisher one message a millisecond
#     (100,000 msg/s offered): delivered rate and loss.
sc_a() {
    pubsub "$SC" "$1" "$2" 1 "-c 100 -i 1 -t a/%i -q 0" "-c 100 -i 1 -t a/%i -q 0 -s 64 -I 1"
}
# (a1) the same pairs at QoS 1, as fast as a window of 100 unacknowledged
#      publishes per publisher allows (the closed-loop variant).
sc_a1() {
    pubsub "$SC" "$1" "$2" 1 "-c 100 -i 1 -t a/%i -q 1" \
        "-c 100 -i 1 -t a/%i -q 1 -s 64 -I 0 --inflight 100"
}
# (b) fan-out: one topic, 500 subscribers, 2 publishers of one message a
#     millisecond each (bench's interval is whole milliseconds, so 2,000 msg/s
#     takes two publishers): 1,000,000 deliveries/s offered.
sc_b() {
    pubsub "$SC" "$1" "$2" 500 "-c 500 -i 1 -t fan/1 -q 0" "-c 2 -i 1 -t fan/1 -q 0 -s 64 -I 1"
}
# (c) fan-in: 200 QoS 1 publishers (window 100) on t/<i>, one QoS 1
#     subscriber on t/+.
sc_c() {
    pubsub "$SC" "$1" "$2" 1 "-c 1 -i 1 -t t/+ -q 1" "-c 200 -i 1 -t t/%i -q 1 -s 64 -I 0 --inflight 100"
}
# (lat) latency at a rate every broker sustains: the pairs of (a) at one
#       message per 10 ms each, 10,000 msg/s.
sc_lat() {
    pubsub "$SC" "$1" "$2" 1 "-c 100 -i 1 -t a/%i -q 0" "-c 100 -i 1 -t a/%i -q 0 -s 64 -I 10"
}

# (d) idle connections: IDLE_CONNS clients from D_PROCS bench processes
#     started together, each opening one connection a millisecond (so
#     D_PROCS * 1000 connections/s offered, paced rather than one burst that
#     would overflow the listen backlog), each from its own loopback source
#     address new to this run (no TIME_WAIT left over). Connect rate, the
#     broker's CPU time per connection, and broker RSS growth per
#     connection once all are in (or after 60 s), and again D_SETTLE
#     seconds later (`rss_settled_kb`, default 45: emqx-rs's idle sessions
#     hibernate after one to two `mqtt.idle_timeout`s of 15 s, and
#     jemalloc returns their pages within about 10 s more).
D_RUN=0
D_PROCS=${D_PROCS:-10}
D_SETTLE=${D_SETTLE:-45}
sc_d() {
    local b=$1 rep=$2 port tag ta
    port=$(port_of "$b")
    ta=$(targs)
    tag="$OUT/$SC-$b-$rep"
    D_RUN=$((D_RUN + 1))
    local per=$((IDLE_CONNS / D_PROCS)) j
    sleep 0.5
    local before after c0 c1
    before=$(rss_kb "$BROKER_PID")
    c0=$(cpu_ticks "$BROKER_PID")
    local cpids=()
    for j in $(seq 1 "$D_PROCS"); do
        rm -f "$tag.$j.out" "$tag.$j.err"
        # shellcheck disable=SC2086
        timeout 200 "$BENCH" bench conn -V "$PROTO" -p "$port" $ta -c "$per" -i 1 -k 300 \
            -n $(((j - 1) * per)) --ifaddr "127.3.$D_RUN.$j" --prefix "c$rep" --duration 150 \
            >"$tag.$j.out" 2>"$tag.$j.err" &
        cpids+=("$!")
        PIDS+=("$!")
    done
    local i done_n
    for i in $(seq 1 600); do
        done_n=0
        for j in $(seq 1 "$D_PROCS"); do
            grep -q "connected=$per " "$tag.$j.err" 2>/dev/null && done_n=$((done_n + 1))
        done
        [ "$done_n" -eq "$D_PROCS" ] && break
        sleep 0.1
    done
    [ "$done_n" -eq "$D_PROCS" ] || log "$SC $b: not all connected within 60 s"
    c1=$(cpu_ticks "$BROKER_PID")
    sleep 1
    after=$(rss_kb "$BROKER_PID")
    sleep "$D_SETTLE"
    local settled
    settled=$(rss_kb "$BROKER_PID")
    for j in "${cpids[@]}"; do kill -INT "$j" 2>/dev/null; done
    for j in "${cpids[@]}"; do stop_bench "$j"; done
    local conns="["
    for j in $(seq 1 "$D_PROCS"); do conns+="$(summary_of "$tag.$j.out"),"; done
    conns="${conns%,}]"
    record "$SC" "$b" "$rep" transport="$TR" rss_before_kb="$before" rss_after_kb="$after" \
        rss_settled_kb="$settled" cpu_s="$(ticks_s "$c0" "$c1")" conns="$conns"
}

# (e) E_SUBS wildcard subscriptions (e/<conn>/<k>/+) from 10 connections:
#     subscribe rate, RSS growth, and the cost of a publish that walks the
#     filters without matching (e/<c>/<k>/x/y), from the QoS 1 publish rate of
#     one closed-loop publisher before and after subscribing.
sc_e() {
    local b=$1 rep=$2 port tag
    port=$(port_of "$b")
    tag="$OUT/e-$b-$rep"
    local edur=5
    timeout 60 "$BENCH" bench pub -V "$PROTO" -p "$port" -c 1 -q 1 -I 0 --inflight 100 -s 64 \
        -t e/3/777/x/y --prefix "e0$rep" --duration "$edur" >"$tag.pub0.out" 2>"$tag.pub0.err"
    local before after
    before=$(rss_kb "$BROKER_PID")
    python3 -u "$HERE/subscribe_many.py" "$port" 10 "$E_SUBS" >"$tag.subs.out" 2>"$tag.subs.err" &
    local ppid=$!
    PIDS+=("$ppid")
    local i
    for i in $(seq 1 1200); do
        grep -q '^READY' "$tag.subs.out" 2>/dev/null && break
        kill -0 "$ppid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    after=$(rss_kb "$BROKER_PID")
    timeout 60 "$BENCH" bench pub -V "$PROTO" -p "$port" -c 1 -q 1 -I 0 --inflight 100 -s 64 \
        -t e/3/777/x/y --prefix "e1$rep" --duration "$edur" >"$tag.pub1.out" 2>"$tag.pub1.err"
    kill "$ppid" 2>/dev/null
    wait "$ppid" 2>/dev/null
    local subs
    subs=$(grep '^READY' "$tag.subs.out" | tail -1 | cut -d' ' -f2-)
    record "$SC" "$b" "$rep" rss_before_kb="$before" rss_after_kb="$after" \
        subs="${subs:-{\}}" pub0="$(summary_of "$tag.pub0.out")" pub1="$(summary_of "$tag.pub1.out")"
}

# ------------------------------------------------------------------- run
log "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GB; $(uname -r)"
log "emqx-rs $(git -C "$ROOT" rev-parse --short HEAD)$([ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && echo ' (with uncommitted changes)'), $("$MOSQUITTO" -h 2>/dev/null | head -1), rumqttd ${SHIPPED:+$(basename "$SHIPPED")}"
read -r -a all_brokers <<<"$BROKERS"
# One repetition of one scenario: each broker once, the order rotated
# between repetitions so no broker always runs first or last.
run_scenario() {
    local sc=$1 rep=$2 base b k n
    SC=$sc
    base=${sc%_*}
    TR=tcp
    [ "$base" != "$sc" ] && TR=${sc##*_}
    local blist=()
    for b in "${all_brokers[@]}"; do
        if serves "$b" "$TR"; then
            blist+=("$b")
        elif [ "$rep" = 1 ]; then
            log "scenario $sc: $b left out (TCP only)"
        fi
    done
    n=${#blist[@]}
    for k in $(seq 0 $((n - 1))); do
        b=${blist[$(((k + rep - 1) % n))]}
        log "scenario $sc, run $rep, $b (load $(cut -d' ' -f1-3 /proc/loadavg))"
        start_broker "$b"
        local load_pid=""
        if [ "$API_LOAD" = 1 ] && [ "$b" = emqx-rs ]; then
            python3 "$HERE/api_load.py" "127.0.0.1:$PORT_EMQX_API" \
                >"$OUT/api-load-$sc-$rep.json" 2>&1 &
            load_pid=$!
            PIDS+=("$load_pid")
        fi
        "sc_$base" "$b" "$rep"
        if [ -n "$load_pid" ]; then
            kill "$load_pid" 2>/dev/null
            wait "$load_pid" 2>/dev/null
            log "API load during $sc run $rep: $(cat "$OUT/api-load-$sc-$rep.json")"
        fi
        stop_broker
        sleep 1
    done
}
# ORDER=scenario (the default) runs every repetition of a scenario before
# the next scenario; ORDER=rep runs every scenario once per repetition, so
# a change in the machine's load spreads over all scenarios alike (better
# for comparing scenarios, such as a transport against TCP).
if [ "${ORDER:-scenario}" = rep ]; then
    for rep in $(seq 1 "$REPS"); do
        for sc in $SCENARIOS; do run_scenario "$sc" "$rep"; done
    done
else
    for sc in $SCENARIOS; do
        for rep in $(seq 1 "$REPS"); do run_scenario "$sc" "$rep"; done
    done
fi
TR=tcp
PIDS=()

python3 "$HERE/report.py" "$RESULTS" | tee "$OUT/table.md"
log "done; raw results in $RESULTS"
