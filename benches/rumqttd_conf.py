#!/usr/bin/env python3
"""rumqttd's shipped rumqttd.toml with its listeners moved to loopback.

    rumqttd_conf.py SHIPPED.toml PORT MAX_CONNECTIONS > rumqttd.toml

The first MQTT v4 listener gets PORT (the one the benchmark uses); every
other listener (v5, websocket, console, prometheus) gets PORT + 100 * k on
127.0.0.1, so nothing listens beyond loopback or on a common port. The
router's max_connections is raised to MAX_CONNECTIONS. Everything else is
left as shipped.
"""
import re
import sys

src, port, maxconn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
section = ""
other = 0
seen_v4 = False
out = []
for line in open(src):
    stripped = line.strip()
    if stripped.startswith("["):
        section = stripped
    if not stripped.startswith("#"):
        if re.match(r"listen\s*=", stripped):
            if section.startswith("[v4.") and not seen_v4:
                p = port
                seen_v4 = True
            else:
                other += 1
                p = port + 100 * other
            indent = line[: len(line) - len(line.lstrip())]
            line = f'{indent}listen = "127.0.0.1:{p}"\n'
        elif re.match(r"max_connections\s*=", stripped):
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}max_connections = {maxconn}\n"
    out.append(line)
if not seen_v4:
    sys.exit("no [v4.*] listener in " + src)
sys.stdout.write("".join(out))
