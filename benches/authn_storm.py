# Publish round trip of a connected client while N clients connect at
# once with bcrypt passwords; see benches/authn_storm.sh.
import json, socket, struct, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port = int(sys.argv[1]); storm_n = int(sys.argv[2])

def connect_bytes(cid, user, pw):
    def f(b): return struct.pack(">H", len(b)) + b
    body = b"\x00\x04MQTT\x04\xc2\x00\x1e" + f(cid.encode()) + f(user.encode()) + f(pw.encode())
    rl = len(body); enc = b""
    while True:
        d = rl % 128; rl //= 128
        enc += bytes([d | (0x80 if rl else 0)])
        if not rl: break
    return b"\x10" + enc + body

rtts = []; lock = threading.Lock(); sent = {}
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
c.username_pw_set("u", "p")
def on_message(cl, ud, m):
    t = time.perf_counter()
    with lock:
        s = sent.pop(m.payload.decode(), None)
        if s: rtts.append((s, t - s))
c.on_message = on_message
c.connect("127.0.0.1", port, 60); c.loop_start(); time.sleep(1)
c.subscribe("probe/t", 0); time.sleep(0.5)
stop = False
def probe():
    i = 0
    while not stop:
        i += 1; k = str(i)
        with lock: sent[k] = time.perf_counter()
        c.publish("probe/t", k, 0); time.sleep(0.02)
th = threading.Thread(target=probe); th.start()
time.sleep(4)
storm_start = time.perf_counter()
acks = []
def storm(i):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(connect_bytes(f"s{i}", "u", "p"))
        r = s.recv(4); acks.append(r[3] if len(r) == 4 else -1); s.close()
    except Exception as e:
        acks.append(str(e))
ts = [threading.Thread(target=storm, args=(i,)) for i in range(storm_n)]
for t in ts: t.start()
for t in ts: t.join()
storm_end = time.perf_counter()
time.sleep(1); stop = True; th.join(); c.loop_stop()
def stats(xs):
    xs = sorted(x * 1000 for x in xs)
    if not xs: return {}
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return {"n": len(xs), "p50": round(q(.5), 2), "p99": round(q(.99), 2), "max": round(xs[-1], 2)}
before = [r for s, r in rtts if s < storm_start]
during = [r for s, r in rtts if storm_start <= s <= storm_end]
print(json.dumps({"storm_s": round(storm_end - storm_start, 2), "ok": sum(1 for a in acks if a == 0),
                  "before": stats(before), "during": stats(during)}))
