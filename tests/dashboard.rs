//! The dashboard in a real browser: Debian's Chromium, driven by
//! playwright-core (tests/dashboard/drive.mjs), logs in to node 2 of a
//! two-node cluster, invites a third node through the overview's form,
//! sees the three nodes, watches the message charts
//! rise while `emqx-rs bench` runs, finds a client of node 1 and kicks it,
//! and adds an MQTT user, an ACL rule and a ban through the forms. This
//! test then checks each of those on its own, over MQTT and the API of
//! the other nodes. A screenshot of every page is left in
//! target/tmp/dashboard/ for a person to look at.

mod common;

use common::cluster::{self, mq, Mq};
use common::http::{http, login};
use common::BIN;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SCRIPT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard");
const SHOTS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard");

#[test]
fn an_operator_runs_the_cluster_from_the_dashboard_in_a_browser() {
    assert!(
        Path::new(SCRIPT_DIR)
            .join("node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: scripts/test.sh runs npm ci in tests/dashboard"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: scripts/test.sh installs Debian's chromium"
    );
    // The built-in database authenticator and ACL exist (their pages have
    // something to show) but the MQTT listener lets anonymous clients in.
    let extra = "authentication = [{mechanism = password_based, backend = built_in_database}]\n\
                 authorization.sources = [{type = built_in_database}]\n\
                 listeners.tcp.default.enable_authn = false\n";
    // Nodes 1 and 2 form the cluster; node 3 starts alone and is invited
    // from the browser.
    let mut nodes = cluster::cluster_with(&[1, 2], extra);
    nodes.push(cluster::node_with(3, extra));
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut victim = mq(n1, "dash-victim");
    victim.sub("victim/#", 1);
    let mut publisher = mq(n2, "dash-publisher");
    publisher.publish("dash/retained", 1, true, b"kept for the dashboard");
    assert!(common::wait_until(Duration::from_secs(10), || {
        cluster::retained_topics(n1).contains(&"dash/retained".to_string())
    }));

    // While the charts are watched: a subscriber on node 2 and publishers
    // on node 1, each stopping by itself.
    let bench = |mode: &str, n: &common::Node, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            BIN.into(),
            "bench".into(),
            mode.into(),
            "-h".into(),
            n.host.clone(),
            "-p".into(),
            n.mqtt_port.to_string(),
            "--duration".into(),
            "40".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let traffic = json!([
        bench("sub", n2, &["-t", "bench/#", "-c", "1"]),
        bench("pub", n1, &["-t", "bench/%i", "-c", "4", "-I", "20"]),
    ]);
    let _ = std::fs::remove_dir_all(SHOTS);
    let mut names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    let out = Command::new("node")
        .arg("drive.mjs")
        .current_dir(SCRIPT_DIR)
        .env("CHROMIUM", &chromium)
        .env("DASH_URL", format!("http://{}:{}/", n2.host, n2.api_port))
        .env("DASH_INVITE", &n3.name)
        .env("DASH_OUT", SHOTS)
        .env("DASH_NODES", names.join(","))
        .env("DASH_VICTIM", "dash-victim")
        .env("DASH_VICTIM_NODE", &n1.name)
        .env("DASH_VICTIM_TOPIC", "victim/#")
        .env("DASH_RETAINED", "dash/retained=kept for the dashboard")
        .env("DASH_TRAFFIC", traffic.to_string())
        .output()
        .expect("node (scripts/test.sh installs Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed:\n{stderr}\nit saw: {stdout}\nscreenshots in {SHOTS}\n{}",
        cluster::tails(&[n1, n2, n3])
    );
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);

    // Node 3 joined on the browser's invitation: every node says so.
    let all = [n1, n2, n3];
    let line = cluster::status_line(&all, &[]);
    for n in all {
        cluster::wait_status(n, &line, Duration::from_secs(15), &all);
    }

    // What the browser saw.
    assert_eq!(seen["bad_login"], json!("Wrong user name or password."));
    assert_eq!(seen["banner"], json!(true), "default password warning");
    assert_eq!(seen["nodes"].as_array().map(Vec::len), Some(3), "{seen}");
    assert!(
        seen["health"]
            .as_str()
            .is_some_and(|h| h.starts_with("No partition")),
        "{seen}"
    );
    let rate = |k: &str, node: &str| seen[k][node].as_f64().unwrap_or(0.0);
    assert!(rate("busy_rates_in", &n1.name) > 0.0, "{seen}");
    assert!(rate("busy_rates_out", &n2.name) > 0.0, "{seen}");
    assert_eq!(seen["chart_moved"], json!(true), "{seen}");
    assert_eq!(seen["victim_node"], json!(n1.name));
    assert_eq!(seen["retained_payload"], json!("kept for the dashboard"));
    let listeners = seen["listeners"].as_array().cloned().unwrap_or_default();
    assert!(
        listeners
            .iter()
            .any(|l| l["id"] == json!("tcp:default") && l["nodes"] == json!(3)),
        "{seen}"
    );
    assert_eq!(seen["logged_out"], json!(true));
    // The only failed requests are the ones the steps meant: the wrong
    // password (401) and the look-up of a client without rules (404).
    let problems: Vec<&str> = seen["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems
            .iter()
            .all(|p| p.contains("status of 401") || p.contains("status of 404")),
        "{problems:?}"
    );

    // Checked apart from the browser: node 1 closed the victim's
    // connection, and no node knows it any more.
    victim.wait_for(Duration::from_secs(10), |_| false);
    assert!(
        victim.error.is_some(),
        "the kicked client is still connected"
    );
    let t = login(n1, "admin", "public").expect("login");
    let auth = Some(t.as_str());
    assert_eq!(
        http(n2, "GET", "/api/v5/clients/dash-victim", auth, None).0,
        404
    );
    // The MQTT user made in the browser is in node 1's table; the ACL
    // rule in node 2's; the ban refuses a client on node 1.
    let (code, v) = http(
        n1,
        "GET",
        "/api/v5/authentication/password_based%3Abuilt_in_database/users/dash-user",
        auth,
        None,
    );
    assert_eq!(
        (code, v["user_id"].clone()),
        (200, json!("dash-user")),
        "{v}"
    );
    let (code, v) = http(
        n2,
        "GET",
        "/api/v5/authorization/sources/built_in_database/rules/clients/dash-acl",
        auth,
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (
            v["rules"][0]["topic"].clone(),
            v["rules"][0]["permission"].clone(),
            v["rules"][0]["action"].clone()
        ),
        (json!("secret/#"), json!("deny"), json!("publish")),
        "{v}"
    );
    let mut banned = Mq::open(n1, "dash-banned", true);
    let connected = banned.wait_for(Duration::from_secs(5), |e| {
        matches!(
            e,
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))
                if a.code == rumqttc::ConnectReturnCode::Success
        )
    });
    assert!(!connected, "a banned client id was let in");

    // A screenshot of every page, as PNG.
    let shots: Vec<_> = std::fs::read_dir(SHOTS)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(shots.len(), 15, "{shots:?}");
    for p in &shots {
        let b = std::fs::read(p).unwrap_or_default();
        assert!(
            b.len() > 2000 && b.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a screenshot",
            p.display()
        );
    }
    drop(publisher);
}
