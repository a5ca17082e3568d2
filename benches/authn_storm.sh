#!/bin/bash
# A connect storm of bcrypt (cost 10) clients against one node while a
# connected client measures its publish round trip (benches/authn_storm.py
# prints the round trip before and during the storm as JSON).
# Usage: benches/authn_storm.sh <emqx-rs binary> <connects at once>
BIN=$1; N=$2; D=$(mktemp -d); PORT=$((21000 + RANDOM % 2000)); DP=$((24000 + RANDOM % 2000)); FP=$((26000 + RANDOM % 2000))
printf 'user_id,password,is_superuser\nu,p,false\n' > "$D/users.csv"
cat > "$D/emqx.conf" <<CONF
node { name = "storm$DP@127.0.0.1", cookie = "c", data_dir = "$D/data", dist_listen_port = $DP, forward_listen_port = $FP }
listeners.tcp.default.bind = "127.0.0.1:$PORT"
listeners.ws.default.enable = false
authentication = [{mechanism = password_based, backend = built_in_database, password_hash_algorithm {name = bcrypt, salt_rounds = 10}, bootstrap_file = "$D/users.csv"}]
log.console.level = warning
CONF
"$BIN" foreground -config "$D/emqx.conf" 2>"$D/log" & P=$!
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
timeout 300 python3 "$(dirname "$0")/authn_storm.py" "$PORT" "$N"
kill $P; wait $P 2>/dev/null; rm -rf "$D"
