# Sourced by the cluster benchmarks (mesh.sh, cluster_fanout.sh,
# conn100k.sh): start nodes of one cluster on loopback aliases, run ctl on
# them, time things, and stop everything started. Needs BIN (the emqx-rs
# binary) and OUT (the directory of the nodes' files).

PIDS=()
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start_node K DIR NAME [EXTRA]: node NAME<K>@127.0.0.K (cluster NAME,
# manual discovery, EXTRA config lines), MQTT on 127.0.0.K:1883, files in
# DIR/nK (its pid in DIR/nK/pid); returns once its MQTT port answers.
start_node() {
    local k=$1 dir=$2 name=$3 extra=${4:-}
    mkdir -p "$dir/n$k"
    cat >"$dir/n$k/emqx.conf" <<CONF
node { name = "$name$k@127.0.0.$k", cookie = "${name}cookie", data_dir = "$dir/n$k/data" }
cluster { name = $name, discovery_strategy = manual }
listeners.tcp.default.bind = "127.0.0.$k:1883"
dashboard.listeners.http.bind = "127.0.0.$k:18083"
log { file.enable = false, console.level = warning }
$extra
CONF
    "$BIN" foreground -config "$dir/n$k/emqx.conf" >"$dir/n$k/log" 2>&1 &
    PIDS+=("$!")
    echo "$!" >"$dir/n$k/pid"
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.$k/1883") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "node $k did not start: $(tail -5 "$dir/n$k/log")" >&2
    exit 1
}

now() { date +%s.%N; }
# since T: seconds from T (a `now`) until now.
since() { echo "$(now) - $1" | bc; }

# ctl K ARGS...: `emqx-rs ctl ARGS` on node K (files in OUT/nK).
ctl() {
    local k=$1
    shift
    "$BIN" ctl "$@" -config "$OUT/n$k/emqx.conf"
}

# form_cluster NAME N TRIES: nodes 2..N join NAME1@127.0.0.1, then waits
# (TRIES rounds of 0.2 s) until node 1 counts N running nodes; fails if
# a join fails or the cluster does not form.
form_cluster() {
    local name=$1 n=$2 tries=$3 k running=0
    for k in $(seq 2 "$n"); do
        ctl "$k" cluster join "${name}1@127.0.0.1" >/dev/null || { echo "join of $k failed" >&2; return 1; }
    done
    for _ in $(seq 1 "$tries"); do
        running=$(ctl 1 cluster status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))')
        [ "$running" = "$n" ] && return 0
        sleep 0.2
    done
    echo "the cluster did not form ($running of $n running)" >&2
    return 1
}
