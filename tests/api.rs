//! The HTTP API over real HTTP (curl is the client): EMQX's paths, status
//! codes and bodies, credentials and roles, and cluster-wide answers from
//! any node of a three-node cluster.

mod common;

use common::cluster::{self, mq, Mq};
use common::http::{http, http_raw, login};
use common::Node;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn basic(key: &str, secret: &str) -> String {
    let o = Command::new("sh")
        .args(["-c", &format!("printf '%s' '{key}:{secret}' | base64 -w0")])
        .output()
        .expect("base64");
    format!("Basic {}", String::from_utf8_lossy(&o.stdout))
}

fn wait_for(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn status_login_keys_roles_and_errors_on_one_node() {
    let keys = tempfile::tempdir().expect("tempdir");
    let file = keys.path().join("api_keys");
    std::fs::write(
        &file,
        "# test keys\nops:s3cret\nlook:l00k:viewer\npub:pub1:publisher\n",
    )
    .expect("key file");
    let n = Node::start_with(common::Opts {
        extra: format!("api_key.bootstrap_file = \"{}\"\n", file.display()),
        ..Default::default()
    });

    // Health check: no credentials, EMQX's text and JSON, retry-after.
    let raw = http_raw(&n, "/api/v5/status");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("retry-after: 15"),
        "{raw}"
    );
    assert!(
        raw.ends_with(&format!("Node {} is started\nemqx is running", n.name)),
        "{raw}"
    );
    let (code, v) = http(&n, "GET", "/api/v5/status?format=json", None, None);
    assert_eq!(code, 200);
    assert_eq!(v["node_name"], json!(n.name));
    assert_eq!(v["app_status"], json!("running"));

    // No credentials, bad credentials.
    let (code, v) = http(&n, "GET", "/api/v5/clients", None, None);
    assert_eq!((code, v["code"].as_str()), (401, Some("BAD_TOKEN")), "{v}");
    let (code, v) = http(
        &n,
        "GET",
        "/api/v5/clients",
        Some("Bearer not.a.token"),
        None,
    );
    assert_eq!((code, v["code"].as_str()), (401, Some("BAD_TOKEN")), "{v}");
    let (code, v) = http(
        &n,
        "GET",
        "/api/v5/clients",
        Some(&basic("ops", "wrong")),
        None,
    );
    assert_eq!(
        (code, v["code"].as_str()),
        (401, Some("BAD_API_KEY_OR_SECRET")),
        "{v}"
    );
    assert!(login(&n, "admin", "nope").is_none());
    let (code, v) = http(
        &n,
        "POST",
        "/api/v5/login",
        None,
        Some(&json!({"username": "admin", "password": "nope"})),
    );
    assert_eq!(
        (code, v["code"].as_str()),
        (401, Some("BAD_USERNAME_OR_PWD"))
    );
    assert!(n.log().contains("failed login for user \"admin\""));

    // The default user, and API keys from the bootstrap file.
    let admin = login(&n, "admin", "public").expect("admin/public logs in");
    let ops = basic("ops", "s3cret");
    for auth in [&admin, &ops] {
        let (code, v) = http(&n, "GET", "/api/v5/clients", Some(auth), None);
        assert_eq!(code, 200, "{v}");
        assert_eq!(
            v["meta"],
            json!({"count": 0, "page": 1, "limit": 100, "hasnext": false})
        );
    }

    // Roles: a viewer reads only, a publisher only publishes.
    let viewer = basic("look", "l00k");
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&viewer), None).0, 200);
    let (code, v) = http(&n, "DELETE", "/api/v5/clients/x", Some(&viewer), None);
    assert_eq!((code, v["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    let publisher = basic("pub", "pub1");
    assert_eq!(
        http(&n, "GET", "/api/v5/nodes", Some(&publisher), None).0,
        403
    );
    let (code, v) = http(
        &n,
        "POST",
        "/api/v5/publish",
        Some(&publisher),
        Some(&json!({"topic": "nobody/listens", "payload": "x"})),
    );
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["reason_code"], json!(16));
    assert_eq!(v["message"], json!("no_matching_subscribers"));

    // Bad parameters: 400 with EMQX's body; unknown things: 404.
    for q in [
        "limit=0",
        "limit=10001",
        "page=0",
        "page=x",
        "conn_state=maybe",
        "proto_ver=x",
        "nosuch=1",
    ] {
        let (code, v) = http(&n, "GET", &format!("/api/v5/clients?{q}"), Some(&ops), None);
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{q}: {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (code, v) = http(&n, "GET", "/api/v5/clients/ghost", Some(&ops), None);
    assert_eq!(
        (code, v["code"].as_str()),
        (404, Some("CLIENTID_NOT_FOUND")),
        "{v}"
    );
    assert_eq!(
        http(&n, "DELETE", "/api/v5/clients/ghost", Some(&ops), None).0,
        404
    );
    assert_eq!(
        http(&n, "GET", "/api/v5/nodes/nobody@nowhere", Some(&ops), None).0,
        404
    );
    let refused = |body: Value| {
        let (code, v) = http(&n, "POST", "/api/v5/publish", Some(&ops), Some(&body));
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{v}"
        );
        v["message"].as_str().unwrap_or_default().to_string()
    };
    refused(json!({"topic": "a/+", "payload": "x"}));
    refused(json!({"topic": "a/b", "payload": "x", "qos": 3}));
    // A field we do not act on is refused, not ignored.
    let m = refused(
        json!({"topic": "a/b", "payload": "x", "properties": {"message_expiry_interval": 5}}),
    );
    assert!(m.contains("properties"), "{m}");
    let (code, _) = http(
        &n,
        "GET",
        "/api/v5/mqtt/retainer/messages?topic=x",
        Some(&ops),
        None,
    );
    assert_eq!(code, 400);
    // A client: listed with EMQX's fields, its subscriptions, kicked.
    let mut c = mq(&n, "api-c1");
    c.sub("t/#", 1);
    let (code, v) = http(&n, "GET", "/api/v5/clients/api-c1", Some(&ops), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["clientid"], json!("api-c1"));
    assert_eq!(v["node"], json!(n.name));
    assert_eq!(v["conn_state"], json!("connected"));
    assert_eq!(v["proto_ver"], json!(4));
    assert_eq!(v["subscriptions_cnt"], json!(1));
    assert!(
        v["connected_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    let (_, v) = http(
        &n,
        "GET",
        "/api/v5/clients/api-c1/subscriptions",
        Some(&ops),
        None,
    );
    assert_eq!(v[0]["topic"], json!("t/#"));
    assert_eq!(v[0]["qos"], json!(1));
    let (code, v) = http(
        &n,
        "POST",
        "/api/v5/publish",
        Some(&ops),
        Some(&json!({"topic": "t/1", "payload": "aGk=", "payload_encoding": "base64", "qos": 1})),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["id"].as_str().is_some());
    let got = c.collect(1, Duration::from_secs(10));
    assert_eq!(cluster::payloads(&got), vec!["hi".to_string()]);
    assert_eq!(
        http(&n, "DELETE", "/api/v5/clients/api-c1", Some(&ops), None).0,
        204
    );
    assert!(wait_for(Duration::from_secs(5), || {
        http(&n, "GET", "/api/v5/clients/api-c1", Some(&ops), None).0 == 404
    }));

    // Prometheus: no credentials by default, EMQX's names, no _total.
    let (code, text) = http(&n, "GET", "/api/v5/prometheus/stats", None, None);
    assert_eq!(code, 200);
    let text = text.as_str().unwrap_or_default().to_string();
    for line in [
        "# TYPE emqx_connections_count gauge",
        "# TYPE emqx_messages_received counter",
        "# TYPE emqx_messages_sent counter",
        "# TYPE emqx_messages_dropped counter",
        "emqx_cluster_nodes_running 1",
        "emqx_cluster_nodes_stopped 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("_total"), "{text}");
    assert_eq!(
        http(&n, "GET", "/api/v5/prometheus/stats?mode=bad", None, None).0,
        400
    );

    // A new password ends the tokens given before and the old password.
    let (code, v) = http(
        &n,
        "POST",
        "/api/v5/users/admin/change_pwd",
        Some(&admin),
        Some(&json!({"old_pwd": "wrong", "new_pwd": "an0ther-pass"})),
    );
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{v}"
    );
    let (code, _) = http(
        &n,
        "POST",
        "/api/v5/users/admin/change_pwd",
        Some(&admin),
        Some(&json!({"old_pwd": "public", "new_pwd": "an0ther-pass"})),
    );
    assert_eq!(code, 204);
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&admin), None).0, 401);
    assert!(login(&n, "admin", "public").is_none());
    assert!(login(&n, "admin", "an0ther-pass").is_some());
    assert!(n.log().contains("still has the default password"));
}

#[test]
fn answers_cover_the_cluster_from_any_node() {
    let mut nodes = cluster::cluster(&[1, 2, 3]);
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    // A token made on node 1 is good on node 3.
    let t = login(n1, "admin", "public").expect("login on node 1");
    let auth = Some(t.as_str());
    // An API key made on node 1 is good on node 3.
    let (k, secret) = ctl_key(n1, "everywhere", "viewer");
    let key = basic(&k, &secret);
    assert!(wait_for(Duration::from_secs(10), || {
        http(n3, "GET", "/api/v5/nodes", Some(&key), None).0 == 200
    }));

    // Two clients per node.
    let mut clients: Vec<Mq> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for k in 0..2 {
            clients.push(mq(n, &format!("cl-{}-{k}", i + 1)));
        }
    }
    clients[0].sub("api/x", 1);
    cluster::wait_route(n2, "api/x", n1, true, Duration::from_secs(10));

    let (code, v) = http(n3, "GET", "/api/v5/clients", auth, None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["meta"]["count"], json!(6), "{v}");
    // Paging across nodes gives every client exactly once.
    let mut seen = Vec::new();
    for page in 1..=4 {
        let (_, v) = http(
            n2,
            "GET",
            &format!("/api/v5/clients?limit=2&page={page}"),
            auth,
            None,
        );
        assert_eq!(v["meta"]["hasnext"], json!(page < 3), "page {page}: {v}");
        for c in v["data"].as_array().into_iter().flatten() {
            seen.push(c["clientid"].as_str().unwrap_or_default().to_string());
        }
    }
    seen.sort();
    let mut want: Vec<String> = clients.iter().map(|c| c.id.clone()).collect();
    want.sort();
    assert_eq!(seen, want);
    // Filters.
    let (_, v) = http(
        n1,
        "GET",
        &format!("/api/v5/clients?node={}", n2.name),
        auth,
        None,
    );
    assert_eq!(v["meta"]["count"], json!(2), "{v}");
    let (_, v) = http(n1, "GET", "/api/v5/clients?like_clientid=cl-3", auth, None);
    assert_eq!(v["meta"]["count"], json!(2), "{v}");
    let (_, v) = http(n1, "GET", "/api/v5/clients?clientid=cl-2-1", auth, None);
    assert_eq!(v["data"][0]["node"], json!(n2.name), "{v}");

    // A client of node 1 kicked through node 3.
    assert_eq!(
        http(n3, "DELETE", "/api/v5/clients/cl-1-1", auth, None).0,
        204
    );
    assert!(wait_for(Duration::from_secs(5), || {
        http(n1, "GET", "/api/v5/clients/cl-1-1", auth, None).0 == 404
    }));

    // A message published through node 2's API reaches node 1's subscriber.
    let (code, v) = http(
        n2,
        "POST",
        "/api/v5/publish",
        auth,
        Some(&json!({"topic": "api/x", "payload": "via http", "qos": 1})),
    );
    assert_eq!(code, 200, "{v}");
    let got = clients[0].collect(1, Duration::from_secs(10));
    assert_eq!(cluster::payloads(&got), vec!["via http".to_string()]);

    // Subscribed on its behalf through node 3, node 1's client gets what a
    // node 2 client publishes; unsubscribed through node 2, the route goes.
    let (code, v) = http(
        n3,
        "POST",
        "/api/v5/clients/cl-1-0/subscribe",
        auth,
        Some(&json!({"topic": "api/behalf/#", "qos": 1})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["node"].as_str(), v["qos"].as_u64()),
        (Some(n1.name.as_str()), Some(1)),
        "{v}"
    );
    cluster::wait_route(n2, "api/behalf/#", n1, true, Duration::from_secs(10));
    let (_, v) = http(
        n2,
        "GET",
        "/api/v5/clients/cl-1-0/subscriptions",
        auth,
        None,
    );
    assert!(
        v.as_array()
            .into_iter()
            .flatten()
            .any(|s| s["topic"] == json!("api/behalf/#")),
        "{v}"
    );
    clients[2].publish("api/behalf/1", 1, false, b"on behalf");
    let got = clients[0].collect(1, Duration::from_secs(10));
    assert_eq!(cluster::payloads(&got), vec!["on behalf".to_string()]);
    assert_eq!(
        http(
            n2,
            "POST",
            "/api/v5/clients/cl-1-0/unsubscribe",
            auth,
            Some(&json!({"topic": "api/behalf/#"})),
        )
        .0,
        204
    );
    cluster::wait_route(n3, "api/behalf/#", n1, false, Duration::from_secs(10));
    let sub = |id: &str, topic: &str| {
        http(
            n1,
            "POST",
            &format!("/api/v5/clients/{id}/subscribe"),
            auth,
            Some(&json!({"topic": topic})),
        )
    };
    let (code, v) = sub("nobody", "a/b");
    assert_eq!(
        (code, v["code"].as_str()),
        (404, Some("CLIENTID_NOT_FOUND")),
        "{v}"
    );
    let (code, v) = sub("cl-2-0", "a/#/b");
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{v}"
    );

    // Nodes, cluster, stats, metrics, subscriptions, topics.
    let (_, v) = http(n2, "GET", "/api/v5/nodes", auth, None);
    let names: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["node"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{v}");
    assert!(v
        .as_array()
        .into_iter()
        .flatten()
        .all(|x| x["node_status"] == json!("running")));
    let (_, v) = http(n2, "GET", &format!("/api/v5/nodes/{}", n3.name), auth, None);
    assert_eq!(v["node"], json!(n3.name));
    assert_eq!(v["connections"], json!(2));
    let (_, v) = http(n1, "GET", "/api/v5/cluster", auth, None);
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["self"], json!(n1.name));
    let (_, v) = http(n3, "GET", "/api/v5/stats?aggregate=true", auth, None);
    assert_eq!(v["connections.count"], json!(5), "{v}");
    // The retained messages are on every node: counted once, not thrice.
    let (_, per) = http(n3, "GET", "/api/v5/stats", auth, None);
    let most = per
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["retained.count"].as_i64())
        .max();
    assert_eq!(v["retained.count"].as_i64(), most, "{v} {per}");
    let (_, v) = http(n3, "GET", "/api/v5/metrics", auth, None);
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{v}");
    assert!(
        v[0]["node"].is_string() && v[0]["messages.received"].is_number(),
        "{v}"
    );
    let (_, v) = http(n3, "GET", "/api/v5/subscriptions?topic=api/x", auth, None);
    assert_eq!(v["data"][0]["clientid"], json!("cl-1-0"), "{v}");
    assert_eq!(v["data"][0]["node"], json!(n1.name), "{v}");
    let (_, v) = http(n3, "GET", "/api/v5/topics?topic=api/x", auth, None);
    assert_eq!(
        v["data"],
        json!([{"topic": "api/x", "node": n1.name}]),
        "{v}"
    );

    // A password changed on node 1 holds on node 2.
    let (code, _) = http(
        n1,
        "POST",
        "/api/v5/users/admin/change_pwd",
        auth,
        Some(&json!({"old_pwd": "public", "new_pwd": "cluster-pass-1"})),
    );
    assert_eq!(code, 204);
    assert!(wait_for(Duration::from_secs(10), || login(
        n2,
        "admin",
        "cluster-pass-1"
    )
    .is_some()));
    assert!(login(n3, "admin", "public").is_none());

    // Prometheus, one series per node.
    let (_, text) = http(
        n1,
        "GET",
        "/api/v5/prometheus/stats?mode=all_nodes_unaggregated",
        None,
        None,
    );
    let text = text.as_str().unwrap_or_default().to_string();
    for n in &nodes {
        let line = format!("emqx_connections_count{{node=\"{}\"}} 2", n.name);
        let alt = format!("emqx_connections_count{{node=\"{}\"}} 1", n.name);
        assert!(text.contains(&line) || text.contains(&alt), "{text}");
    }
    let (_, text) = http(
        n1,
        "GET",
        "/api/v5/prometheus/stats?mode=all_nodes_aggregated",
        None,
        None,
    );
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(
        text.lines().any(|l| l == "emqx_connections_count 5"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "emqx_cluster_nodes_running 3"),
        "{text}"
    );

    // The password change ended the old token on every node.
    assert_eq!(http(n3, "GET", "/api/v5/nodes", auth, None).0, 401);
    let t = login(n1, "admin", "cluster-pass-1").expect("login with the new password");
    let auth = Some(t.as_str());

    // Listeners: one id, its connections summed over the three nodes.
    let tcp = |n: &Node| {
        let (code, v) = http(n, "GET", "/api/v5/listeners?type=tcp", auth, None);
        assert_eq!(code, 200, "{v}");
        v.as_array()
            .into_iter()
            .flatten()
            .find(|l| l["id"] == json!("tcp:default"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let l = tcp(n2);
    assert_eq!(l["status"]["current_connections"], json!(5), "{l}");
    assert_eq!(l["status"]["running"], json!(true), "{l}");
    assert_eq!(l["node_status"].as_array().map(Vec::len), Some(3), "{l}");
    let (code, v) = http(n1, "GET", "/api/v5/listeners?type=smtp", auth, None);
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{v}"
    );
    let (code, v) = http(n1, "GET", "/api/v5/listeners/tcp:nope", auth, None);
    assert_eq!(
        (code, v["code"].as_str()),
        (404, Some("BAD_LISTENER_ID")),
        "{v}"
    );
    let (code, v) = http(
        n1,
        "POST",
        "/api/v5/listeners/tcp:default/pause",
        auth,
        None,
    );
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{v}"
    );
    // Stopped through node 2, node 3 takes no new MQTT connection; the
    // open ones stay; started again, it does.
    let (code, v) = http(n2, "POST", "/api/v5/listeners/tcp:default/stop", auth, None);
    assert_eq!(code, 200, "{v}");
    let l = tcp(n1);
    assert_eq!(l["status"]["running"], json!(false), "{l}");
    assert_eq!(l["status"]["current_connections"], json!(5), "{l}");
    assert!(std::net::TcpStream::connect((n3.host.as_str(), n3.mqtt_port)).is_err());
    let (code, v) = http(
        n2,
        "POST",
        "/api/v5/listeners/tcp:default/start",
        auth,
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(tcp(n3)["status"]["running"], json!(true));
    let mut late = mq(n3, "after-restart");
    late.sub("late/x", 0);
    // No partition in a healthy cluster.
    let (_, v) = http(n3, "GET", "/api/v5/cluster", auth, None);
    assert_eq!(
        (v["partitions"].clone(), v["autoheal"].clone()),
        (json!([]), Value::Null),
        "{v}"
    );

    // Node 3 dies: listed as stopped, then removed through node 1.
    let (code, v) = http(
        &nodes[0],
        "DELETE",
        &format!("/api/v5/cluster/{}/force_leave", nodes[0].name),
        auth,
        None,
    );
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{v}"
    );
    let (code, v) = http(
        &nodes[0],
        "DELETE",
        "/api/v5/cluster/nobody@127.0.0.9/force_leave",
        auth,
        None,
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("node_not_in_cluster")),
        "{v}"
    );
    let gone = nodes[2].name.clone();
    nodes[2].kill();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            let (_, v) = http(n2, "GET", &format!("/api/v5/nodes/{gone}"), auth, None);
            v["node_status"] == json!("stopped")
        }),
        "node 3 never listed as stopped"
    );
    assert_eq!(
        http(
            n1,
            "DELETE",
            &format!("/api/v5/cluster/{gone}/force_leave"),
            auth,
            None
        )
        .0,
        204
    );
    let (_, v) = http(n1, "GET", "/api/v5/cluster", auth, None);
    let mut want = vec![n1.name.clone(), n2.name.clone()];
    want.sort();
    assert_eq!(v["nodes"], json!(want), "{v}");
    assert!(wait_for(Duration::from_secs(10), || {
        http(n2, "GET", &format!("/api/v5/nodes/{gone}"), auth, None).0 == 404
    }));
}

/// `key: value` lines of `ctl api_keys add`.
fn ctl_key(n: &Node, name: &str, role: &str) -> (String, String) {
    let (code, out) = n.ctl(&["api_keys", "add", name, role]);
    assert_eq!(code, 0, "{out}");
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    (field("api_key:"), field("api_secret:"))
}

#[test]
fn api_keys_are_made_changed_and_revoked_over_http_and_ctl() {
    let n = Node::start();
    let admin = login(&n, "admin", "public").expect("login");
    let admin = Some(admin.as_str());

    // Made over HTTP: the secret is answered once and works at once.
    let (code, v) = http(
        &n,
        "POST",
        "/api/v5/api_key",
        admin,
        Some(&json!({"name": "grafana", "role": "viewer", "desc": "dashboards"})),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["expired_at"], json!("infinity"), "{v}");
    let key = basic(
        v["api_key"].as_str().unwrap_or_default(),
        v["api_secret"].as_str().unwrap_or_default(),
    );
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&key), None).0, 200);
    assert_eq!(
        http(&n, "DELETE", "/api/v5/clients/x", Some(&key), None).0,
        403
    );
    let (_, v) = http(&n, "GET", "/api/v5/api_key/grafana", admin, None);
    assert_eq!(
        (
            v["role"].as_str(),
            v["enable"].as_bool(),
            v["api_secret"].is_null()
        ),
        (Some("viewer"), Some(true), true),
        "{v}"
    );
    // A name given twice, a bad name, an unknown field: 400.
    for body in [
        json!({"name": "grafana"}),
        json!({"name": "9lives"}),
        json!({"name": "x", "scopes": ["all"]}),
    ] {
        let (code, v) = http(&n, "POST", "/api/v5/api_key", admin, Some(&body));
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{body}: {v}"
        );
    }
    // Disabled, it is refused; enabled again, it works; expired, refused.
    let put = |body: Value| http(&n, "PUT", "/api/v5/api_key/grafana", admin, Some(&body));
    assert_eq!(put(json!({"enable": false})).0, 200);
    let (code, v) = http(&n, "GET", "/api/v5/nodes", Some(&key), None);
    assert_eq!(
        (code, v["code"].as_str()),
        (401, Some("BAD_API_KEY_OR_SECRET")),
        "{v}"
    );
    assert_eq!(put(json!({"enable": true})).0, 200);
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&key), None).0, 200);
    let (code, v) = put(json!({"expired_at": "2001-01-01T00:00:00Z"}));
    assert_eq!((code, v["expired"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&key), None).0, 401);
    assert_eq!(put(json!({"expired_at": "soon"})).0, 400);
    assert_eq!(put(json!({"expired_at": "infinity"})).0, 200);
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&key), None).0, 200);

    // Made by ctl, an administrator key; it may not manage keys or users.
    let (k, s) = ctl_key(&n, "ops-script", "administrator");
    let ops = basic(&k, &s);
    assert_eq!(http(&n, "GET", "/api/v5/clients", Some(&ops), None).0, 200);
    for path in ["/api/v5/api_key", "/api/v5/users"] {
        let (code, v) = http(&n, "GET", path, Some(&ops), None);
        assert_eq!(
            (code, v["code"].as_str()),
            (403, Some("FORBIDDEN")),
            "{path}: {v}"
        );
    }
    let (_, out) = n.ctl(&["api_keys", "list"]);
    assert!(
        out.contains("name=grafana") && out.contains(&format!("api_key={k}")),
        "{out}"
    );
    assert!(!out.contains(&s), "a secret is never listed: {out}");
    // Revoked by ctl and over HTTP: refused at once.
    assert_eq!(n.ctl(&["api_keys", "disable", "ops-script"]).0, 0);
    assert_eq!(http(&n, "GET", "/api/v5/clients", Some(&ops), None).0, 401);
    assert_eq!(n.ctl(&["api_keys", "del", "ops-script"]).0, 0);
    assert_eq!(n.ctl(&["api_keys", "del", "ops-script"]).0, 1);
    assert_eq!(
        http(&n, "DELETE", "/api/v5/api_key/grafana", admin, None).0,
        204
    );
    assert_eq!(http(&n, "GET", "/api/v5/nodes", Some(&key), None).0, 401);
    assert_eq!(
        http(&n, "GET", "/api/v5/api_key/grafana", admin, None).0,
        404
    );
    let (code, out) = n.ctl(&["api_keys", "add", "x", "root"]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn alarms_over_http() {
    // A watermark below what any process uses raises the memory alarm.
    let n = Node::start_with(common::Opts {
        extra: "overload_protection {\n  mem_high_watermark = 2MB\n  mem_low_watermark = 1MB\n  mem_check_interval = 200ms\n}\n".into(),
        ..Default::default()
    });
    let admin = login(&n, "admin", "public").expect("login");
    let auth = Some(admin.as_str());
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (_, v) = http(&n, "GET", "/api/v5/alarms", auth, None);
            v["data"].as_array().into_iter().flatten().any(|a| {
                a["name"] == json!("high_process_memory_usage")
                    && a["node"] == json!(n.name)
                    && a["activated"] == json!(true)
                    && a["deactivate_at"] == json!("infinity")
            })
        }),
        "no memory alarm listed"
    );
    let (code, v) = http(&n, "GET", "/api/v5/alarms?activated=false", auth, None);
    assert_eq!((code, v["meta"]["count"].as_u64()), (200, Some(0)), "{v}");
    assert_eq!(
        http(&n, "GET", "/api/v5/alarms?activated=maybe", auth, None).0,
        400
    );
    assert_eq!(http(&n, "DELETE", "/api/v5/alarms", auth, None).0, 204);
}

#[test]
fn bans_made_over_http_refuse_the_client() {
    let n = Node::start();
    let admin = login(&n, "admin", "public").expect("login");
    let auth = Some(admin.as_str());
    let ban = json!({"as": "clientid", "who": "bad-1", "reason": "testing"});
    let (code, v) = http(&n, "POST", "/api/v5/banned", auth, Some(&ban));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["as"].as_str(), v["until"].as_str(), v["by"].as_str()),
        (Some("clientid"), Some("infinity"), Some("mgmt_api")),
        "{v}"
    );
    let (code, v) = http(&n, "POST", "/api/v5/banned", auth, Some(&ban));
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("ALREADY_EXISTS")),
        "{v}"
    );
    for bad in [
        json!({"as": "peerhost", "who": "not-an-address"}),
        json!({"as": "nickname", "who": "x"}),
        json!({"as": "clientid", "who": "x", "until": "2001-01-01T00:00:00Z"}),
    ] {
        let (code, v) = http(&n, "POST", "/api/v5/banned", auth, Some(&bad));
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{bad}: {v}"
        );
    }
    let (_, v) = http(&n, "GET", "/api/v5/banned", auth, None);
    assert_eq!(v["meta"]["count"], json!(1), "{v}");
    assert_eq!(v["data"][0]["who"], json!("bad-1"), "{v}");
    // The banned client id gets CONNACK 0x8A (banned), another one 0x00.
    let connack = |id: &str| {
        let mut r = common::Raw::connect(&n);
        r.send(&common::connect_v5(id, 30));
        r.read_n(4)
    };
    assert_eq!(connack("bad-1")[3], 0x8A);
    assert_eq!(connack("good-1")[3], 0x00);
    assert_eq!(
        http(&n, "DELETE", "/api/v5/banned/clientid/bad-1", auth, None).0,
        204
    );
    let (code, v) = http(&n, "DELETE", "/api/v5/banned/clientid/bad-1", auth, None);
    assert_eq!((code, v["code"].as_str()), (404, Some("NOT_FOUND")), "{v}");
    assert_eq!(connack("bad-1")[3], 0x00);
    assert_eq!(
        http(
            &n,
            "POST",
            "/api/v5/banned",
            auth,
            Some(&json!({"as": "username", "who": "u"}))
        )
        .0,
        200
    );
    assert_eq!(http(&n, "DELETE", "/api/v5/banned", auth, None).0, 204);
    let (_, v) = http(&n, "GET", "/api/v5/banned", auth, None);
    assert_eq!(v["meta"]["count"], json!(0), "{v}");
}

/// `mosquitto_pub` with a user name and password: whether it got in.
fn mqtt_login(n: &Node, user: &str, pw: &str) -> bool {
    Command::new("timeout")
        .args(["10", "mosquitto_pub", "-h", &n.host, "-p"])
        .arg(n.mqtt_port.to_string())
        .args(["-u", user, "-P", pw, "-t", "t/1", "-m", "x", "-q", "1"])
        .output()
        .expect("mosquitto_pub (scripts/test.sh installs it)")
        .status
        .success()
}

#[test]
fn built_in_database_users_over_http() {
    let n = Node::start_with(common::Opts {
        extra: "authentication = [{mechanism = password_based, backend = built_in_database}]\n"
            .into(),
        ..Default::default()
    });
    let admin = login(&n, "admin", "public").expect("login");
    let auth = Some(admin.as_str());
    let base = "/api/v5/authentication/password_based%3Abuilt_in_database/users";
    let (code, v) = http(
        &n,
        "POST",
        base,
        auth,
        Some(&json!({"user_id": "dev-1", "password": "s3cret!"})),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v, json!({"user_id": "dev-1", "is_superuser": false}));
    assert!(mqtt_login(&n, "dev-1", "s3cret!"));
    assert!(!mqtt_login(&n, "dev-1", "wrong"));
    let (code, v) = http(
        &n,
        "POST",
        base,
        auth,
        Some(&json!({"user_id": "dev-1", "password": "again"})),
    );
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{v}"
    );
    for i in 2..=4 {
        let body = json!({"user_id": format!("dev-{i}"), "password": "p", "is_superuser": i == 4});
        assert_eq!(http(&n, "POST", base, auth, Some(&body)).0, 201);
    }
    let (_, v) = http(&n, "GET", &format!("{base}?limit=3&page=2"), auth, None);
    assert_eq!(v["meta"]["count"], json!(4), "{v}");
    assert_eq!(
        v["data"],
        json!([{"user_id": "dev-4", "is_superuser": true}]),
        "{v}"
    );
    let (_, v) = http(&n, "GET", &format!("{base}?is_superuser=true"), auth, None);
    assert_eq!(v["meta"]["count"], json!(1), "{v}");
    // A new password: the old one no longer gets in.
    let (code, v) = http(
        &n,
        "PUT",
        &format!("{base}/dev-1"),
        auth,
        Some(&json!({"password": "n3w"})),
    );
    assert_eq!(code, 200, "{v}");
    assert!(mqtt_login(&n, "dev-1", "n3w"));
    assert!(!mqtt_login(&n, "dev-1", "s3cret!"));
    assert_eq!(
        http(&n, "DELETE", &format!("{base}/dev-1"), auth, None).0,
        204
    );
    assert!(!mqtt_login(&n, "dev-1", "n3w"));
    assert_eq!(http(&n, "GET", &format!("{base}/dev-1"), auth, None).0, 404);
    let (code, _) = http(
        &n,
        "GET",
        "/api/v5/authentication/password_based%3Ahttp/users",
        auth,
        None,
    );
    assert_eq!(code, 404);
}

/// `mosquitto_sub` (MQTT 5) as `clientid` on `topic`: whether the
/// subscription was refused.
fn sub_denied(n: &Node, clientid: &str, topic: &str) -> bool {
    let o = Command::new("timeout")
        .args(["10", "mosquitto_sub", "-h", &n.host, "-p"])
        .arg(n.mqtt_port.to_string())
        .args([
            "-i", clientid, "-t", topic, "-C", "1", "-W", "1", "-V", "mqttv5",
        ])
        .output()
        .expect("mosquitto_sub (scripts/test.sh installs it)");
    String::from_utf8_lossy(&o.stderr).contains("denied")
        || String::from_utf8_lossy(&o.stdout).contains("denied")
}

#[test]
fn built_in_database_acl_rules_over_http() {
    let n = Node::start_with(common::Opts {
        extra: "authorization {\n  sources = [{type = built_in_database, max_rules = 3}]\n  no_match = allow\n  cache.enable = false\n}\n".into(),
        ..Default::default()
    });
    let admin = login(&n, "admin", "public").expect("login");
    let auth = Some(admin.as_str());
    let base = "/api/v5/authorization/sources/built_in_database/rules";
    assert!(!sub_denied(&n, "s1", "secret/x"));
    let rules = json!([{"clientid": "s1", "rules": [
        {"topic": "secret/#", "permission": "deny", "action": "subscribe"},
        {"topic": "t/1", "permission": "allow", "action": "publish", "qos": [1], "retain": false}
    ]}]);
    let (code, v) = http(&n, "POST", &format!("{base}/clients"), auth, Some(&rules));
    assert_eq!(code, 204, "{v}");
    assert!(sub_denied(&n, "s1", "secret/x"));
    assert!(!sub_denied(&n, "s2", "secret/x"));
    let (code, v) = http(&n, "POST", &format!("{base}/clients"), auth, Some(&rules));
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{v}"
    );
    let (_, v) = http(&n, "GET", &format!("{base}/clients/s1"), auth, None);
    assert_eq!(
        v["rules"][1],
        json!({"topic": "t/1", "permission": "allow", "action": "publish", "qos": [1], "retain": false}),
        "{v}"
    );
    let (_, v) = http(
        &n,
        "GET",
        &format!("{base}/clients?like_clientid=s"),
        auth,
        None,
    );
    assert_eq!(v["meta"]["count"], json!(1), "{v}");
    // The same table as ctl's.
    let (_, out) = n.ctl(&["acl", "rules", "list"]);
    assert!(
        out.contains("clientid s1: deny subscribe \"secret/#\""),
        "{out}"
    );
    // Bad rules, too many rules, a body naming another client: 400.
    for (method, path, body) in [
        (
            "POST",
            "clients",
            json!([{"clientid": "s3", "rules": [{"topic": "a", "permission": "maybe", "action": "all"}]}]),
        ),
        (
            "POST",
            "clients",
            json!([{"clientid": "s3", "rules": [{"topic": "a", "permission": "allow", "action": "all", "qos": [3]}]}]),
        ),
        ("POST", "clients", json!([{"username": "s3", "rules": []}])),
        ("PUT", "clients/s1", json!({"clientid": "s9", "rules": []})),
        (
            "POST",
            "all",
            json!({"rules": [
            {"topic": "a", "permission": "allow", "action": "all"},
            {"topic": "b", "permission": "allow", "action": "all"},
            {"topic": "c", "permission": "allow", "action": "all"},
            {"topic": "d", "permission": "allow", "action": "all"}]}),
        ),
    ] {
        let (code, v) = http(&n, method, &format!("{base}/{path}"), auth, Some(&body));
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{body}: {v}"
        );
    }
    // Replaced by PUT: the denial goes.
    let (code, v) = http(
        &n,
        "PUT",
        &format!("{base}/clients/s1"),
        auth,
        Some(
            &json!({"clientid": "s1", "rules": [{"topic": "other/#", "permission": "deny", "action": "subscribe"}]}),
        ),
    );
    assert_eq!(code, 204, "{v}");
    assert!(!sub_denied(&n, "s1", "secret/x"));
    // Rules for a username and for all.
    let (code, _) = http(
        &n,
        "POST",
        &format!("{base}/all"),
        auth,
        Some(&json!({"rules": [{"topic": "secret/#", "permission": "deny", "action": "all"}]})),
    );
    assert_eq!(code, 204);
    assert!(sub_denied(&n, "s2", "secret/x"));
    let (_, v) = http(&n, "GET", &format!("{base}/all"), auth, None);
    assert_eq!(v["rules"][0]["retain"], json!("all"), "{v}");
    assert_eq!(
        http(&n, "DELETE", &format!("{base}/all"), auth, None).0,
        204
    );
    assert!(!sub_denied(&n, "s2", "secret/x"));
    let (code, _) = http(
        &n,
        "POST",
        &format!("{base}/users"),
        auth,
        Some(
            &json!([{"username": "u1", "rules": [{"topic": "x", "permission": "deny", "action": "publish"}]}]),
        ),
    );
    assert_eq!(code, 204);
    let (_, v) = http(&n, "GET", &format!("{base}/users"), auth, None);
    assert_eq!(v["data"][0]["username"], json!("u1"), "{v}");
    assert_eq!(
        http(&n, "DELETE", &format!("{base}/users/u1"), auth, None).0,
        204
    );
    assert_eq!(
        http(&n, "DELETE", &format!("{base}/users/u1"), auth, None).0,
        404
    );
    assert_eq!(
        http(&n, "GET", &format!("{base}/clients/nobody"), auth, None).0,
        404
    );
}

#[test]
fn https_serves_the_same_api_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::pki::make_ca(dir.path(), "api");
    let cert = common::pki::issue(
        dir.path(),
        &ca,
        "api-server",
        "api.test",
        "subjectAltName=IP:127.0.0.1,DNS:api.test\n",
    );
    let port = common::free_port();
    let n = Node::start_with(common::Opts {
        extra: format!(
            "dashboard.listeners.https {{\n  enable = true\n  bind = \"127.0.0.1:{port}\"\n  ssl_options {{\n    certfile = \"{}\"\n    keyfile = \"{}\"\n  }}\n}}\n",
            common::path_str(&cert.cert),
            common::path_str(&cert.key)
        ),
        ..Default::default()
    });
    let curl = |extra: &[&str], path: &str| {
        let o = Command::new("curl")
            .args(["-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let ca_arg = common::path_str(&ca.cert);
    // Trusted through the CA: the health check and a login over TLS.
    assert_eq!(curl(&["--cacert", &ca_arg], "/api/v5/status"), "200");
    let o = Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "--cacert",
            &ca_arg,
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "--data-binary",
            r#"{"username":"admin","password":"public"}"#,
        ])
        .arg(format!("https://127.0.0.1:{port}/api/v5/login"))
        .output()
        .expect("curl");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert!(v["token"].is_string(), "{v}");
    // Without the CA the certificate is refused; openssl sees the chain
    // verify and the configured name; the HTTP port still serves.
    assert_eq!(curl(&[], "/api/v5/status"), "000");
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            &ca_arg,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(
        text.contains("CN=api.test") || text.contains("CN = api.test"),
        "{text}"
    );
    assert_eq!(http(&n, "GET", "/api/v5/status", None, None).0, 200);

    // A certificate file that does not exist stops the start, naming it.
    let bad = Node::prepare(&format!(
        "dashboard.listeners.https {{\n  enable = true\n  bind = \"127.0.0.1:{}\"\n  ssl_options {{ certfile = \"/nonexistent/c.pem\", keyfile = \"/nonexistent/k.pem\" }}\n}}\n",
        common::free_port()
    ));
    let o = bad.cli(&["foreground"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("dashboard.listeners.https") && err.contains("/nonexistent/c.pem"),
        "{err}"
    );
}

/// A child process killed when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ten_thousand_clients_page_through_three_nodes_exactly_once() {
    let nodes = cluster::cluster(&[1, 2, 3]);
    let per_node = [3334usize, 3333, 3333];
    let _benches: Vec<Reaped> = nodes
        .iter()
        .zip(per_node)
        .enumerate()
        .map(|(i, (n, count))| {
            let child = Command::new(env!("CARGO_BIN_EXE_emqx-rs"))
                .args(["bench", "conn", "-h", &n.host, "-p"])
                .arg(n.mqtt_port.to_string())
                .args(["-c", &count.to_string(), "-i", "0", "-k", "300"])
                .args(["--prefix", &format!("n{}", i + 1), "--duration", "240"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("emqx-rs bench conn");
            Reaped(child)
        })
        .collect();
    let t = login(&nodes[1], "admin", "public").expect("login");
    let auth = Some(t.as_str());
    let total: usize = per_node.iter().sum();
    assert!(
        wait_for(Duration::from_secs(120), || {
            let (_, v) = http(&nodes[1], "GET", "/api/v5/clients?limit=1", auth, None);
            v["meta"]["count"].as_u64() == Some(total as u64)
        }),
        "not every bench client listed"
    );
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut page = 1;
    loop {
        let (code, v) = http(
            &nodes[1],
            "GET",
            &format!("/api/v5/clients?limit=1000&page={page}"),
            auth,
            None,
        );
        assert_eq!(code, 200, "page {page}: {v}");
        let data = v["data"].as_array().cloned().unwrap_or_default();
        seen.extend(
            data.iter()
                .filter_map(|c| c["clientid"].as_str().map(str::to_string)),
        );
        if v["meta"]["hasnext"] != json!(true) {
            break;
        }
        page += 1;
        assert!(page <= 11, "more pages than 10,000 clients fill");
    }
    let took = started.elapsed();
    let mut want: Vec<String> = per_node
        .iter()
        .enumerate()
        .flat_map(|(i, c)| (0..*c).map(move |k| format!("n{}_conn_{k}", i + 1)))
        .collect();
    want.sort();
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "a client listed twice");
    assert_eq!(seen, want);
    eprintln!("listed {total} clients over 3 nodes in {page} pages in {took:?}");
}

#[test]
fn the_openapi_document_is_valid_and_every_path_in_it_is_served() {
    let n = Node::start_with(common::Opts {
        extra: "authentication = [{mechanism = password_based, backend = built_in_database}]\nauthorization.sources = [{type = built_in_database}]\n".into(),
        ..Default::default()
    });
    // Served without credentials, as EMQX serves its /api-docs.
    let (code, doc) = http(&n, "GET", "/api-docs/openapi.json", None, None);
    assert_eq!(code, 200, "{doc}");
    // An independent validator (openapi-spec-validator, from PyPI).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write the document");
    let o = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "openapi-spec-validator (scripts/test.sh installs it): {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Each request body has its own schema (no two types share a name).
    let schemas = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (name, fields) in [
        ("NewUser", "role"),
        ("NewMqttUser", "user_id"),
        ("PublishReq", "topic"),
    ] {
        assert!(
            schemas
                .get(name)
                .is_some_and(|s| s["properties"].get(fields).is_some()),
            "schema {name} with {fields}: {:?}",
            schemas.get(name)
        );
    }
    let params: Vec<&str> = doc["paths"]["/api/v5/clients"]["get"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for want in ["page", "limit", "like_clientid", "conn_state"] {
        assert!(params.contains(&want), "{want} not in {params:?}");
    }
    // Every documented operation reaches a handler: never the router's
    // 404 or a 405.
    let t = login(&n, "admin", "public").expect("login");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let mut operations = 0;
    for (path, item) in &paths {
        let concrete = path
            .replace("{node}", "nobody@127.0.0.9")
            .replace("{id}", "password_based%3Abuilt_in_database")
            .replace("{topic}", "no%2Fsuch")
            .replace("{kind}", "clientid")
            .replace(['{', '}'], "");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let body = (method == "post" || method == "put").then(|| json!({}));
            let (code, v) = http(
                &n,
                &method.to_uppercase(),
                &concrete,
                Some(&format!("Bearer {t}")),
                body.as_ref(),
            );
            assert!(
                code != 405 && !(code == 404 && v["message"] == json!("Request path not found")),
                "{method} {path} ({concrete}) is documented but not served: {code} {v}"
            );
        }
    }
    assert!(operations >= 55, "only {operations} operations documented");
    // A path the document does not name is not served either.
    assert_eq!(
        http(
            &n,
            "GET",
            "/api/v5/nosuch",
            Some(&format!("Bearer {t}")),
            None
        )
        .0,
        404
    );
}

#[test]
fn a_node_is_invited_into_the_cluster_over_http() {
    let n1 = cluster::node(1);
    let n2 = cluster::node(2);
    let t = login(&n1, "admin", "public").expect("login");
    let auth = Some(t.as_str());
    let invite = |who: &str, body: Option<&Value>| {
        http(
            &n1,
            "PUT",
            &format!("/api/v5/cluster/{who}/invite"),
            auth,
            body,
        )
    };
    for (who, body, why) in [
        ("nope", None, "name@host"),
        (n1.name.as_str(), None, "answering"),
        (
            n2.name.as_str(),
            Some(json!({"timeout": "forever"})),
            "timeout",
        ),
        (n2.name.as_str(), Some(json!({"wait": 1})), "unknown field"),
    ] {
        let (code, v) = invite(who, body.as_ref());
        assert_eq!(
            (code, v["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(why)),
            "{why}: {v}"
        );
    }
    // Nothing listens for this name: refused with the reason, in time.
    let started = Instant::now();
    let (code, v) = invite("emqx9@127.0.0.9", Some(&json!({"timeout": "8s"})));
    assert_eq!(code, 400, "{v}");
    assert!(started.elapsed() < Duration::from_secs(12), "{v}");

    // Node 2 joins node 1's cluster on node 1's invitation.
    let (code, v) = invite(&n2.name, Some(&json!({"timeout": 20000})));
    assert_eq!(code, 200, "{v}\n{}", cluster::tails(&[&n1, &n2]));
    let all = [&n1, &n2];
    let line = cluster::status_line(&all, &[]);
    cluster::wait_status(&n2, &line, Duration::from_secs(15), &all);
    cluster::wait_status(&n1, &line, Duration::from_secs(15), &all);
    // The token node 1 gave before the join is still good (both nodes
    // seeded the same default user).
    let (code, v) = invite(&n2.name, None);
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("already in the cluster")),
        "{v}"
    );
    // And works as a member: a client of node 2 gets node 1's publish.
    let mut sub = mq(&n2, "invited-sub");
    sub.sub("invited/x", 1);
    cluster::wait_route(&n1, "invited/x", &n2, true, Duration::from_secs(10));
    let mut publisher = mq(&n1, "invited-pub");
    publisher.publish("invited/x", 1, false, b"welcome");
    let got = sub.collect(1, Duration::from_secs(10));
    assert_eq!(cluster::payloads(&got), vec!["welcome".to_string()]);
}
