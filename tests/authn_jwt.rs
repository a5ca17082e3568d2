//! JWT authentication checked from the outside: keys are made by openssl,
//! tokens and JWK sets by Python's PyJWT, clients are paho (v5 reason
//! codes) and the JWKS endpoint is Python's HTTPS server with a
//! certificate from openssl. Nothing here is signed by the broker's code.

mod common;

use common::{free_port, path_str, pki, Node, Opts};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `sign`: a token for `claims` (HMAC with a secret, RSA/EC with a PEM
/// private key file, or `alg = none`); `jwk`: the JWK of a PEM public key;
/// `session`: a paho v5 client that connects, subscribes, publishes at
/// QoS 1 and optionally waits to be disconnected, reporting every code.
const TOOL: &str = r#"
import json, sys, threading, time
plan = json.loads(sys.argv[1])
mode = plan["mode"]
if mode == "sign":
    import jwt
    alg = plan["alg"]
    if alg == "none":
        key = None
    elif alg.startswith("HS"):
        key = plan["secret"]
    else:
        key = open(plan["key"]).read()
    print(jwt.encode(plan["claims"], key, algorithm=alg))
elif mode == "jwk":
    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    pub = load_pem_public_key(open(plan["pub"], "rb").read())
    algo = jwt.algorithms.RSAAlgorithm if plan["kty"] == "RSA" else jwt.algorithms.ECAlgorithm
    k = json.loads(algo.to_jwk(pub))
    k["kid"] = plan["kid"]
    k["use"] = "sig"
    print(json.dumps(k))
else:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    out = {"suback": [], "puback": {}}
    connected, subbed, gone = threading.Event(), threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=plan["cid"], protocol=mqtt.MQTTv5)
    if plan.get("user") is not None or plan.get("pw") is not None:
        c.username_pw_set(plan.get("user"), plan.get("pw"))
    def on_connect(cl, ud, flags, rc, props):
        out["rc"] = rc.value
        connected.set()
    def on_subscribe(cl, ud, mid, codes, props):
        out["suback"] = [x.value for x in codes]
        subbed.set()
    def on_publish(cl, ud, mid, rc, props):
        out["puback"][str(mid)] = rc.value
    def on_disconnect(cl, ud, flags, rc, props):
        out["disconnect"] = rc.value
        out["after"] = time.monotonic() - t0
        out["at"] = time.time()
        gone.set()
    c.on_connect, c.on_subscribe, c.on_publish, c.on_disconnect = on_connect, on_subscribe, on_publish, on_disconnect
    t0 = time.monotonic()
    c.connect("127.0.0.1", plan["port"], 60)
    c.loop_start()
    connected.wait(10)
    if out.get("rc") == 0:
        if plan.get("subs"):
            c.subscribe([(f, 1) for f in plan["subs"]])
            subbed.wait(10)
        mids = []
        for t in plan.get("pubs", []):
            info = c.publish(t, b"x", qos=1)
            mids.append((t, info.mid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(out["puback"]) < len(mids):
            time.sleep(0.02)
        # 0x10 (no matching subscribers) is a publish that was allowed.
        out["puback"] = {t: (lambda rc: 0 if rc == 16 else rc)(out["puback"].get(str(m))) for t, m in mids}
        if plan.get("wait_disconnect"):
            gone.wait(plan["wait_disconnect"])
    if not gone.is_set():
        c.on_disconnect = None
        c.disconnect()
    c.loop_stop()
    print(json.dumps(out))
"#;

fn tool(plan: &Value) -> String {
    let o = Command::new("timeout")
        .args(["-k", "2", "60", "python3", "-c", TOOL])
        .arg(plan.to_string())
        .output()
        .expect("python3 (scripts/test.sh installs paho-mqtt and PyJWT)");
    assert!(
        o.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hs(alg: &str, secret: &str, claims: Value) -> String {
    tool(&json!({"mode": "sign", "alg": alg, "secret": secret, "claims": claims}))
}

fn signed(alg: &str, key: &Path, claims: Value) -> String {
    tool(&json!({"mode": "sign", "alg": alg, "key": path_str(key), "claims": claims}))
}

/// A private key and its public half (`<name>.pem`, `<name>.pub.pem`).
fn keypair(dir: &Path, name: &str, rsa: bool) -> (PathBuf, PathBuf) {
    let (key, public) = (format!("{name}.pem"), format!("{name}.pub.pem"));
    let opt = if rsa {
        ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    } else {
        ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    let mut args = vec!["genpkey"];
    args.extend(opt);
    args.extend(["-out", &key]);
    pki::openssl(dir, &args);
    pki::openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
    (dir.join(key), dir.join(public))
}

/// A paho session's report.
fn session(n: &Node, cid: &str, user: Option<&str>, pw: Option<&str>, extra: Value) -> Value {
    let mut plan =
        json!({"mode": "session", "port": n.mqtt_port, "cid": cid, "user": user, "pw": pw});
    if let (Some(p), Some(e)) = (plan.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let out = tool(&plan);
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("paho output {out:?}: {e}"))
}

/// The CONNACK code for a token as the password (paho sends a password
/// only with a username, so one is always given).
fn code(n: &Node, cid: &str, user: Option<&str>, pw: &str) -> i64 {
    let r = session(n, cid, Some(user.unwrap_or("u")), Some(pw), json!({}));
    r["rc"]
        .as_i64()
        .unwrap_or_else(|| panic!("no CONNACK: {r}\n{}", n.log()))
}

fn node(chain: &str, more: &str) -> Node {
    Node::start_with(Opts {
        extra: format!("authentication = [{chain}]\n{more}"),
        ..Default::default()
    })
}

#[test]
fn hmac_tokens_are_checked_for_signature_time_and_claims() {
    let secret = "a-shared-secret";
    let n = node(
        &format!(
            r#"{{mechanism = jwt, algorithm = hmac-based, secret = "{secret}",
               verify_claims {{sub = "${{clientid}}", team = "blue"}}}}"#
        ),
        "",
    );
    let t = now_s();
    let good = json!({"sub": "c1", "team": "blue", "exp": t + 600});
    for alg in ["HS256", "HS384", "HS512"] {
        assert_eq!(
            code(&n, "c1", None, &hs(alg, secret, good.clone())),
            0,
            "{alg}"
        );
    }
    // exp and nbf as numeric strings are read as numbers (EMQX does so).
    let as_strings = json!({"sub": "c1", "team": "blue", "exp": (t + 600).to_string(), "nbf": (t - 5).to_string()});
    assert_eq!(code(&n, "c1", None, &hs("HS256", secret, as_strings)), 0);
    // Claims that do not hold: bad username or password (0x86).
    for (what, claims) in [
        (
            "expired",
            json!({"sub": "c1", "team": "blue", "exp": t - 10}),
        ),
        (
            "not yet valid",
            json!({"sub": "c1", "team": "blue", "nbf": t + 600}),
        ),
        (
            "sub is another client",
            json!({"sub": "c2", "team": "blue"}),
        ),
        ("team missing", json!({"sub": "c1"})),
    ] {
        assert_eq!(
            code(&n, "c1", None, &hs("HS256", secret, claims)),
            0x86,
            "{what}"
        );
    }
    // No key verifies it: the authenticator passes, the chain ends, the
    // client is not authorized (0x87), as EMQX answers.
    assert_eq!(
        code(&n, "c1", None, &hs("HS256", "another-secret", good.clone())),
        0x87
    );
    let none = tool(&json!({"mode": "sign", "alg": "none", "claims": good}));
    assert_eq!(code(&n, "c1", None, &none), 0x87, "alg = none");
    assert_eq!(code(&n, "c1", None, "not-a-token"), 0x87);
    let r = session(&n, "c1", Some("u"), None, json!({}));
    assert_eq!(r["rc"], 0x87, "no password");
    // The token never reaches the log.
    let token = hs("HS256", secret, json!({"sub": "c1", "team": "blue"}));
    assert_eq!(code(&n, "c1", None, &token), 0);
    let log = n.log();
    assert!(!log.contains(&token[..40]), "the token is in the log");
    assert!(!log.contains(secret), "the secret is in the log");
}

#[test]
fn rsa_and_ec_tokens_verify_with_their_public_keys_in_chain_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let (rsa, rsa_pub) = keypair(dir.path(), "rsa", true);
    let (ec, ec_pub) = keypair(dir.path(), "ec", false);
    let (other, _) = keypair(dir.path(), "other", true);
    // The RSA key inline as PEM text, the EC key as a file; the token
    // comes in the username here.
    let rsa_pem = std::fs::read_to_string(&rsa_pub).expect("pem");
    let n = node(
        &format!(
            r#"{{mechanism = jwt, from = username, algorithm = public-key, public_key = """{rsa_pem}"""}},
               {{mechanism = jwt, from = username, algorithm = public-key, public_key = "{}"}}"#,
            path_str(&ec_pub)
        ),
        "",
    );
    let claims = json!({"exp": now_s() + 600});
    for alg in ["RS256", "RS512", "PS256"] {
        let t = signed(alg, &rsa, claims.clone());
        assert_eq!(code(&n, "r", Some(&t), "ignored"), 0, "{alg}");
    }
    let t = signed("ES256", &ec, claims.clone());
    assert_eq!(
        code(&n, "e", Some(&t), "x"),
        0,
        "ES256 by the second authenticator"
    );
    let t = signed("RS256", &other, claims);
    assert_eq!(
        code(&n, "o", Some(&t), "x"),
        0x87,
        "a key nobody configured"
    );
}

#[test]
fn the_acl_claim_decides_before_the_sources_and_superusers_skip_them() {
    let secret = "s";
    // The node denies whatever no rule allows.
    let n = node(
        &format!(r#"{{mechanism = jwt, algorithm = hmac-based, secret = "{secret}"}}"#),
        "authorization { no_match = deny, sources = [] }\n",
    );
    let exp = now_s() + 600;
    // EMQX's older form: pub/sub/all lists, everything else denied.
    let t = hs(
        "HS256",
        secret,
        json!({"exp": exp, "acl": {"pub": ["up/${username}"], "sub": ["down/#"], "all": ["both"]}}),
    );
    let r = session(
        &n,
        "c1",
        Some("u1"),
        Some(&t),
        json!({"subs": ["down/x", "up/u1", "both"], "pubs": ["up/u1", "up/u2", "both", "down/x"]}),
    );
    assert_eq!(r["rc"], 0, "{r}");
    assert_eq!(r["suback"], json!([1, 0x87, 1]), "{r}");
    assert_eq!(
        r["puback"],
        json!({"up/u1": 0, "up/u2": 0x87, "both": 0, "down/x": 0x87}),
        "{r}"
    );
    // The rule list: tried in order; no match falls to the node's
    // sources (here: deny).
    let t = hs(
        "HS256",
        secret,
        json!({"exp": exp, "acl": [
            {"permission": "deny", "action": "subscribe", "topic": "eq a/#"},
            {"permission": "allow", "action": "all", "topics": ["a/#"], "qos": [1, 2]},
            {"permission": "allow", "action": "subscribe", "topic": "b/+", "qos": "0,1"}
        ]}),
    );
    let r = session(
        &n,
        "c2",
        Some("u2"),
        Some(&t),
        json!({"subs": ["a/#", "a/x", "b/x", "c"], "pubs": ["a/1", "b/x"]}),
    );
    assert_eq!(r["suback"], json!([0x87, 1, 1, 0x87]), "{r}");
    assert_eq!(r["puback"], json!({"a/1": 0, "b/x": 0x87}), "{r}");
    // A malformed acl claim refuses the token.
    let t = hs(
        "HS256",
        secret,
        json!({"acl": [{"permission": "maybe", "action": "all", "topic": "x"}]}),
    );
    assert_eq!(code(&n, "c3", None, &t), 0x86);
    // A superuser may do anything.
    let t = hs("HS256", secret, json!({"exp": exp, "is_superuser": true}));
    let r = session(
        &n,
        "c4",
        Some("u4"),
        Some(&t),
        json!({"subs": ["x/#"], "pubs": ["x/1"]}),
    );
    assert_eq!(
        (r["suback"].clone(), r["puback"].clone()),
        (json!([1]), json!({"x/1": 0}))
    );
    // Without an acl claim the node's rules hold.
    let t = hs("HS256", secret, json!({"exp": exp}));
    let r = session(
        &n,
        "c5",
        Some("u5"),
        Some(&t),
        json!({"subs": ["x/#"], "pubs": ["x/1"]}),
    );
    assert_eq!(
        (r["suback"].clone(), r["puback"].clone()),
        (json!([0x87]), json!({"x/1": 0x87}))
    );
}

#[test]
fn a_connection_is_closed_when_its_token_expires() {
    let secret = "s";
    let n = node(
        &format!(r#"{{mechanism = jwt, algorithm = hmac-based, secret = "{secret}"}}"#),
        "",
    );
    // Time for the client to start and connect before it expires, on a
    // loaded machine too (a Python client starts in seconds there).
    let exp = now_s() + 8;
    let t = hs("HS256", secret, json!({"exp": exp}));
    let r = session(
        &n,
        "short",
        Some("u"),
        Some(&t),
        json!({"wait_disconnect": 15}),
    );
    assert_eq!(r["rc"], 0, "{r}");
    assert_eq!(r["disconnect"], 0x87, "{r}");
    // Closed at exp (wall clock), not before it and not long after.
    let at = r["at"].as_f64().unwrap_or(0.0);
    let exp = exp as f64;
    assert!(
        at >= exp - 0.05 && at < exp + 3.0,
        "closed at {at}, exp is {exp}: {r}"
    );
    // disconnect_after_expire = false keeps it.
    let n = node(
        &format!(
            r#"{{mechanism = jwt, algorithm = hmac-based, secret = "{secret}", disconnect_after_expire = false}}"#
        ),
        "",
    );
    let t = hs("HS256", secret, json!({"exp": now_s() + 2}));
    let r = session(
        &n,
        "kept",
        Some("u"),
        Some(&t),
        json!({"wait_disconnect": 4}),
    );
    assert_eq!(r["rc"], 0, "{r}");
    assert!(r.get("disconnect").is_none(), "{r}");
}

/// Python's HTTPS server over `dir`, killed on drop.
struct Https(Child);

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SERVE: &str = r#"
import http.server, ssl, sys, functools
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

fn jwk(public: &Path, kid: &str, kty: &str) -> Value {
    serde_json::from_str(&tool(
        &json!({"mode": "jwk", "pub": path_str(public), "kid": kid, "kty": kty}),
    ))
    .expect("jwk")
}

#[test]
fn keys_come_from_a_jwks_endpoint_over_https_and_follow_its_rotation() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let ca = pki::make_ca(d, "jwks");
    let srv = pki::issue(
        d,
        &ca,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1\n",
    );
    let (k1, k1_pub) = keypair(d, "k1", true);
    let (k2, k2_pub) = keypair(d, "k2", false);
    let www = d.join("www");
    std::fs::create_dir(&www).expect("www");
    let set = |keys: Vec<Value>| {
        let tmp = www.join("jwks.tmp");
        std::fs::write(&tmp, json!({"keys": keys}).to_string()).expect("jwks");
        std::fs::rename(&tmp, www.join("jwks.json")).expect("rename");
    };
    set(vec![jwk(&k1_pub, "k1", "RSA")]);
    let port = free_port();
    let _server = Https(
        Command::new("python3")
            .args(["-c", SERVE, &port.to_string(), &path_str(&www)])
            .args([path_str(&srv.cert), path_str(&srv.key)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 https server"),
    );
    let n = node(
        &format!(
            r#"{{mechanism = jwt, use_jwks = true, endpoint = "https://127.0.0.1:{port}/jwks.json",
               refresh_interval = 1, ssl {{enable = true, verify = verify_peer, cacertfile = "{}"}}}}"#,
            path_str(&ca.cert)
        ),
        "",
    );
    let claims = json!({"exp": now_s() + 600});
    let t1 = signed("RS256", &k1, claims.clone());
    let t2 = signed("ES256", &k2, claims);
    let wait_for = |token: &str, want: i64| {
        let start = Instant::now();
        loop {
            let got = code(&n, "j", None, token);
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "still {got:#x}, not {want:#x}\n{}",
                n.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The first fetch happens at start (the server may still be coming up).
    wait_for(&t1, 0);
    assert_eq!(code(&n, "j", None, &t2), 0x87);
    // The endpoint rotates to the EC key: the old token stops working.
    set(vec![jwk(&k2_pub, "k2", "EC")]);
    wait_for(&t2, 0);
    wait_for(&t1, 0x87);
}

#[test]
fn bad_jwt_settings_stop_the_node_naming_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let garbage = dir.path().join("not-a-key.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .expect("write");
    for (entry, want) in [
        (
            format!(r#"{{mechanism = jwt, algorithm = public-key, public_key = "{}"}}"#, path_str(&garbage)),
            "authentication.1.public_key",
        ),
        (
            r#"{mechanism = jwt, algorithm = hmac-based, secret = "%%%", secret_base64_encoded = true}"#.to_string(),
            "authentication.1.secret",
        ),
        (r#"{mechanism = jwt, algorithm = rsa}"#.to_string(), "authentication.1.algorithm"),
        (
            r#"{mechanism = jwt, use_jwks = true, endpoint = "https://127.0.0.1:1/k"}"#.to_string(),
            "authentication.1.ssl.enable",
        ),
        (
            r#"{mechanism = jwt, algorithm = hmac-based, secret = "s", pool_size = 8}"#.to_string(),
            "authentication.1.pool_size",
        ),
    ] {
        let n = Node::prepare(&format!("authentication = [{entry}]\n"));
        let o = n.cli(&["check_config"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.code() == Some(2) && err.contains(want),
            "{entry}: exit {:?}: {err}",
            o.status.code()
        );
    }
}
