//! The operations files under deploy/ against the real tools and a real
//! node: promtool checks the alert rules (and runs their unit tests) and
//! the scrape config, and lints the node's real Prometheus output; a real
//! Prometheus server scrapes a node with the shipped config and evaluates
//! every query of the Grafana dashboard and every alert rule;
//! systemd-analyze verifies the unit, and the unit's command lines start,
//! reload and stop a node laid out as the unit expects.
//!
//! promtool, prometheus (Debian's `prometheus`), systemd-analyze
//! (`systemd`) and curl are installed by scripts/test.sh. Everything runs
//! on 127.0.0.1 and every process started here is killed on the way out,
//! panics included.

mod common;

use common::cluster::{self, mq};
use common::{free_port, output_text, Node, BIN};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "deploy/prometheus/emqx-rs.rules.yml";
const RULES_TEST: &str = "deploy/prometheus/emqx-rs.rules.test.yml";
const PROM_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/emqx-rs.json";
const UNIT: &str = "deploy/systemd/emqx-rs.service";

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs a tool, panicking with a hint when it is not installed.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/test.sh installs the tools)"))
}

/// The alert names of the shipped rules file, in order.
fn alert_names() -> Vec<String> {
    read(RULES)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// A process killed (and reaped) when dropped.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &'static str) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e} (scripts/test.sh installs it)"));
        Proc { child, what }
    }

    fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited ({st}):\n{}",
                self.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` GET: (status, body).
fn get(url: &str) -> (u16, String) {
    let o = run(Command::new("curl").args(["-s", "-m", "20", "-w", "\n%{http_code}", url]));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The node's `/api/v5/prometheus/stats?mode=<mode>`.
fn exposition(n: &Node, mode: &str) -> String {
    let (code, body) = get(&format!(
        "http://{}:{}/api/v5/prometheus/stats?mode={mode}",
        n.host, n.api_port
    ));
    assert_eq!(code, 200, "mode={mode}: {body}");
    body
}

/// Polls `f` every 500 ms until it gives `Some`, for at most `t`.
fn poll<T>(t: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------
// promtool on the shipped files
// ---------------------------------------------------------------------------

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_scrape_config() {
    let alerts = alert_names();
    assert!(alerts.len() >= 5, "{alerts:?}");

    let o = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(path(RULES)));
    assert!(o.status.success(), "{}", output_text(&o));
    let want = format!("SUCCESS: {} rules found", alerts.len());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&want),
        "{}",
        output_text(&o)
    );

    // rule_files is relative to the config's directory, where the rules
    // file sits: promtool checks the rules through the config too.
    let o = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(path(PROM_CONFIG)));
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("SUCCESS: 1 rule files found"),
        "{}",
        output_text(&o)
    );
    assert!(out.contains(&want), "{}", output_text(&o));

    // The rules' own unit tests: each alert fires after its `for`, for
    // the node past its threshold only, with the annotations rendered.
    let o = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(path(RULES_TEST)));
    assert!(o.status.success(), "{}", output_text(&o));
    let tests = read(RULES_TEST);
    for a in &alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n    exp_alerts:\n    - ")),
            "{RULES_TEST} has no case where {a} fires"
        );
    }
}

// ---------------------------------------------------------------------------
// promtool check metrics on the real exposition
// ---------------------------------------------------------------------------

/// Metric name -> its `# TYPE`.
type Types = BTreeMap<String, String>;
/// (metric name, labels as written, value).
type Sample = (String, String, f64);

/// `# TYPE` of every metric name, and the samples, of an exposition;
/// panics on anything out of order (a sample before its TYPE, a second
/// TYPE, a series twice).
fn parse_exposition(text: &str) -> (Types, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE line");
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "second TYPE for {name}"
            );
            current = name.to_string();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
            None => (series.to_string(), String::new()),
        };
        assert_eq!(name, current, "sample of {name} outside its TYPE block");
        assert!(seen.insert(series.to_string()), "{series} twice");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.push((name, labels, v));
    }
    (types, samples)
}

/// `promtool check metrics` on `text`: asserts it parsed the whole text
/// and found nothing but the lints that follow from EMQX's conventions,
/// each for a metric and type where it is expected.
///
/// promtool 2.42 prints one `<metric> <problem>` line per finding on
/// stderr and exits 3 when it only has lint findings, or prints `error
/// while linting: ...` and exits 1 when the text does not parse. It has no
/// switch to turn single lints off. EMQX 5's exposition, which emqx-rs
/// reproduces on purpose so that EMQX's dashboards and rules work
/// unchanged, draws two lints by design:
/// - `counter metrics should have "_total" suffix`: EMQX's counters are
///   named without `_total` (`emqx_messages_received`);
/// - `non-histogram and non-summary metrics should not have "_count"
///   suffix`: EMQX's stats gauges end in `_count`
///   (`emqx_connections_count`).
///
/// Any other finding (a duplicate, a bad name, a parse error) fails.
fn assert_promtool_lints_only_emqx_naming(mode: &str, text: &str) {
    let (types, _) = parse_exposition(text);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let o = child.wait_with_output().expect("promtool");
    let report = text_of(&o);
    let code = o.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "mode={mode}: promtool failed:\n{report}\n--- input ---\n{text}"
    );
    assert!(!report.contains("error while linting"), "{report}");
    let mut unexpected = Vec::new();
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let (metric, problem) = line.split_once(' ').unwrap_or((line, ""));
        let ty = types.get(metric).map(String::as_str);
        let by_design = match problem {
            "counter metrics should have \"_total\" suffix" => ty == Some("counter"),
            "non-histogram and non-summary metrics should not have \"_count\" suffix" => {
                ty == Some("gauge") && metric.ends_with("_count")
            }
            _ => false,
        };
        if !by_design {
            unexpected.push(line.to_string());
        }
    }
    assert!(
        unexpected.is_empty(),
        "mode={mode}: promtool check metrics reports more than EMQX's naming:\n{}\n--- input ---\n{text}",
        unexpected.join("\n")
    );
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every `emqx_...` name in `text`.
fn emqx_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("emqx_") {
        let start = i + off;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn promtool_lints_the_real_exposition_in_every_mode() {
    // Two nodes, so that all_nodes_unaggregated has several series per
    // name and aggregation has something to sum.
    let nodes = cluster::cluster(&[1, 2]);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut sub = mq(n2, "deploy-lint-sub");
    sub.sub("deploy/lint", 1);
    let mut publ = mq(n1, "deploy-lint-pub");
    publ.publish("deploy/lint", 1, true, b"x");
    publ.publish("deploy/nobody", 0, false, b"x");
    assert_eq!(sub.collect(1, Duration::from_secs(10)).len(), 1);

    let node_mode = exposition(n1, "node");
    for (mode, text) in [
        ("node", node_mode.clone()),
        (
            "all_nodes_aggregated",
            exposition(n1, "all_nodes_aggregated"),
        ),
        (
            "all_nodes_unaggregated",
            exposition(n1, "all_nodes_unaggregated"),
        ),
    ] {
        assert_promtool_lints_only_emqx_naming(mode, &text);
    }

    // Unaggregated: one series per running node, labelled with its name.
    let (types, samples) = parse_exposition(&exposition(n2, "all_nodes_unaggregated"));
    let mut want: Vec<String> = nodes
        .iter()
        .map(|n| format!("node=\"{}\"", n.name))
        .collect();
    want.sort();
    for name in types.keys() {
        let mut got: Vec<String> = samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect();
        got.sort();
        assert_eq!(got, want, "{name}");
    }

    // Every metric the shipped rules and dashboard use exists.
    let (types, _) = parse_exposition(&node_mode);
    for file in [RULES, RULES_TEST, DASHBOARD] {
        let missing: Vec<String> = emqx_names(&read(file))
            .into_iter()
            .filter(|n| !types.contains_key(n))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the node does not export: {missing:?}\n{node_mode}"
        );
    }
}

// ---------------------------------------------------------------------------
// The Grafana dashboard's structure
// ---------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// `(panel title, expr)` of every query of the dashboard.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or_default().to_string(),
                t["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// A query with Grafana's variables replaced: `$job` by the job, `$node`
/// by `node` (a regular expression), `$__rate_interval` by one minute.
fn substitute(expr: &str, job: &str, node: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", job)
        .replace("$node", node)
}

#[test]
fn grafana_dashboard_is_well_formed() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["id"].is_null(), "an exported dashboard has no id");
    let ds = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});

    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let dsv = var("DS_PROMETHEUS");
    assert_eq!(dsv["type"], "datasource");
    assert_eq!(dsv["query"], "prometheus");
    for name in ["job", "node"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"], ds, "{name}");
        assert_eq!(v["definition"], v["query"]["query"], "{name}");
        assert!(
            v["definition"]
                .as_str()
                .is_some_and(|q| q.starts_with("label_values(emqx_connections_count")),
            "{name}"
        );
    }
    assert_eq!(var("node")["allValue"], ".*");
    assert_eq!(var("node")["includeAll"], true);

    let panels = d["panels"].as_array().expect("panels");
    assert!((10..=14).contains(&panels.len()), "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(ids.insert(p["id"].as_u64().expect("id")), "{title}: id");
        assert!(
            ["stat", "timeseries"].contains(&p["type"].as_str().unwrap_or_default()),
            "{title}"
        );
        assert_eq!(p["datasource"], ds, "{title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"], ds, "{title}");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            let e = t["expr"].as_str().expect("expr");
            // Only variables the dashboard defines (or Grafana's own).
            let rest = substitute(e, "J", "N");
            assert!(!rest.contains('$'), "{title}: unknown variable in {e}");
            assert!(e.contains("instance=~\"$node\""), "{title}: {e}");
            assert!(e.contains("job=\"$job\""), "{title}: {e}");
        }
    }
    let all: String = dashboard_exprs(&d).into_iter().map(|(_, e)| e).collect();
    for m in [
        "emqx_connections_count",
        "emqx_messages_received",
        "emqx_messages_sent",
        "emqx_messages_dropped",
        "emqx_subscriptions_count",
        "emqx_topics_count",
        "emqx_retained_count",
        "emqx_cluster_nodes_running",
        "emqx_cluster_nodes_stopped",
        "emqx_packets_received",
    ] {
        assert!(all.contains(m), "no panel shows {m}");
    }
}

// ---------------------------------------------------------------------------
// A real Prometheus server
// ---------------------------------------------------------------------------

/// `GET /api/v1/query?query=<q>` on Prometheus: the whole answer.
fn prom_query(port: u16, q: &str) -> Value {
    let o = run(Command::new("curl").args([
        "-s",
        "-m",
        "20",
        "-G",
        "--data-urlencode",
        &format!("query={q}"),
        &format!("http://127.0.0.1:{port}/api/v1/query"),
    ]));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| Value::String(text_of(&o)))
}

fn prom_get(port: u16, path_and_query: &str) -> Value {
    let (_, body) = get(&format!("http://127.0.0.1:{port}{path_and_query}"));
    serde_json::from_str(&body).unwrap_or(Value::String(body))
}

/// The first sample's value of an instant vector answer.
fn first_value(v: &Value) -> Option<f64> {
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The shipped prometheus.yml turned into one that scrapes `target` every
/// second and reads the shipped rules by absolute path. Every edit must
/// find its text, so the test follows the shipped file.
fn test_prometheus_config(target: &str) -> String {
    let mut cfg = read(PROM_CONFIG);
    let rules = path(RULES);
    let edits = [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_string(),
        ),
        ("scrape_timeout: 10s", "scrape_timeout: 1s".to_string()),
        ("  - emqx-rs.rules.yml", format!("  - {}", rules.display())),
        ("- 10.0.0.1:18083", format!("- {target}")),
    ];
    for (from, to) in edits {
        assert!(cfg.contains(from), "{PROM_CONFIG} has no {from:?}");
        cfg = cfg.replacen(from, &to, 1);
    }
    cfg.lines()
        .filter(|l| !l.contains("- 10.0.0.2:18083") && !l.contains("- 10.0.0.3:18083"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn prometheus_scrapes_a_node_and_evaluates_the_dashboard_and_the_rules() {
    let n = Node::start();
    let target = format!("127.0.0.1:{}", n.api_port);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = test_prometheus_config(&target);
    assert!(cfg.contains("job_name: emqx-rs") && cfg.contains("/api/v5/prometheus/stats"));
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, &cfg).expect("write config");
    let o = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(&cfg_path));
    assert!(o.status.success(), "{}\n{cfg}", output_text(&o));

    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut prom = Proc::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(out.try_clone().expect("log"))
            .stderr(out),
        "prometheus",
    );
    let prom_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = poll(Duration::from_secs(60), || {
        prom.assert_running(&log);
        (get(&format!("http://127.0.0.1:{port}/-/ready")).0 == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "prometheus not ready in 60 s:\n{}",
        prom_log()
    );

    // Two clients: a subscriber and a publisher of a retained message.
    let mut sub = mq(&n, "deploy-prom-sub");
    sub.sub("deploy/prom", 1);
    let mut publ = mq(&n, "deploy-prom-pub");
    publ.publish("deploy/prom", 1, true, b"hello");
    assert_eq!(sub.collect(1, Duration::from_secs(10)).len(), 1);

    let sel = format!("{{job=\"emqx-rs\",instance=\"{target}\"}}");
    let seen = poll(Duration::from_secs(60), || {
        let v = prom_query(port, &format!("emqx_connections_count{sel}"));
        (first_value(&v) == Some(2.0)).then_some(v)
    });
    assert!(
        seen.is_some(),
        "emqx_connections_count never 2 in Prometheus within 60 s: {}\n{}",
        prom_query(port, &format!("emqx_connections_count{sel}")),
        prom_log()
    );
    assert_eq!(
        first_value(&prom_query(port, &format!("up{sel}"))),
        Some(1.0)
    );
    // Retained: ours and the node's own `$SYS/brokers/<node>/version` and
    // `sysdescr`, as `ctl retainer info` counts them.
    let retained = cluster::retained_count(&n).expect("ctl retainer info") as f64;
    assert!(retained >= 1.0);
    for (m, want) in [
        ("emqx_subscriptions_count", 1.0),
        ("emqx_retained_count", retained),
        ("emqx_cluster_nodes_running", 1.0),
        ("emqx_cluster_nodes_stopped", 0.0),
    ] {
        let v = poll(Duration::from_secs(30), || {
            let v = prom_query(port, &format!("{m}{sel}"));
            (first_value(&v) == Some(want)).then_some(v)
        });
        assert!(
            v.is_some(),
            "{m}: {}",
            prom_query(port, &format!("{m}{sel}"))
        );
    }

    // The dashboard's variables, as Grafana asks for them.
    let d = dashboard();
    let jobs = prom_get(
        port,
        "/api/v1/label/job/values?match[]=emqx_connections_count",
    );
    assert!(
        jobs["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|j| j == "emqx-rs"),
        "{jobs}"
    );
    let nodes = prom_get(
        port,
        "/api/v1/label/instance/values?match[]=emqx_connections_count%7Bjob%3D%22emqx-rs%22%7D",
    );
    assert!(
        nodes["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i == target.as_str()),
        "{nodes}"
    );

    // Every panel query, with "All" nodes and with this node selected,
    // succeeds and shows data (rate() needs two scrapes inside its minute).
    let exprs = dashboard_exprs(&d);
    for node in [".*", target.as_str()] {
        for (title, e) in &exprs {
            let q = substitute(e, "emqx-rs", node);
            let got = poll(Duration::from_secs(30), || {
                let v = prom_query(port, &q);
                assert_eq!(v["status"], "success", "{title}: {q}: {v}");
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                    .then_some(v)
            });
            assert!(
                got.is_some(),
                "{title}: {q} shows nothing: {}",
                prom_query(port, &q)
            );
        }
    }

    // The rule group is loaded from the shipped file and every rule has
    // been evaluated without error.
    let alerts = alert_names();
    let rules_file = path(RULES);
    let group = poll(Duration::from_secs(60), || {
        let v = prom_get(port, "/api/v1/rules");
        let g = v["data"]["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == "emqx-rs")?
            .clone();
        let rules = g["rules"].as_array()?;
        rules.iter().all(|r| r["health"] == "ok").then_some(g)
    })
    .unwrap_or_else(|| {
        panic!(
            "rule group emqx-rs not loaded and healthy in 60 s: {}\n{}",
            prom_get(port, "/api/v1/rules"),
            prom_log()
        )
    });
    assert_eq!(group["file"], rules_file.display().to_string(), "{group}");
    let rules = group["rules"].as_array().expect("rules");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, alerts, "{group}");
    for r in rules {
        assert_eq!(r["type"], "alerting", "{r}");
        assert_eq!(r["lastError"].as_str().unwrap_or_default(), "", "{r}");
        let q = r["query"].as_str().expect("query");
        let v = prom_query(port, q);
        assert_eq!(v["status"], "success", "{}: {q}: {v}", r["name"]);
    }
    // A healthy idle node crosses no threshold (a late scrape can make
    // `up == 0` true for a moment, hence the retries).
    let quiet = poll(Duration::from_secs(30), || {
        rules
            .iter()
            .all(|r| {
                let v = prom_query(port, r["query"].as_str().unwrap_or_default());
                v["data"]["result"].as_array().is_some_and(|a| a.is_empty())
            })
            .then_some(())
    });
    assert!(
        quiet.is_some(),
        "some alert condition holds on a healthy node: {}",
        prom_get(port, "/api/v1/alerts")
    );
    prom.assert_running(&log);
}

// ---------------------------------------------------------------------------
// The systemd unit
// ---------------------------------------------------------------------------

/// The unit with `/opt/emqx-rs` replaced by `root` (so ExecStart names a
/// real binary), written to `dir`.
fn unit_under(root: &Path, dir: &Path) -> PathBuf {
    let unit = read(UNIT);
    assert!(unit.contains("ExecStart=/opt/emqx-rs/bin/emqx-rs foreground\n"));
    let p = dir.join("emqx-rs.service");
    std::fs::write(
        &p,
        unit.replace("/opt/emqx-rs", &root.display().to_string()),
    )
    .expect("write unit");
    p
}

/// `Key=value` of the unit's [Service] section (the last one wins).
fn service_key(unit: &str, key: &str) -> String {
    let mut in_service = false;
    let mut found = None;
    for l in unit.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_service = l == "[Service]";
        } else if in_service {
            if let Some(v) = l.strip_prefix(&format!("{key}=")) {
                found = Some(v.to_string());
            }
        }
    }
    found.unwrap_or_else(|| panic!("{UNIT} has no {key}="))
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    // The shipped unit names /opt/emqx-rs/bin/emqx-rs, which is not on this
    // machine (verify says "Command ... is not executable"); the copy runs
    // the binary under test from the same layout: <root>/bin/emqx-rs.
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = dir.path().join("opt");
    std::fs::create_dir_all(bin_dir.join("bin")).expect("mkdir");
    std::os::unix::fs::symlink(BIN, bin_dir.join("bin/emqx-rs")).expect("symlink");
    let unit = unit_under(&bin_dir, dir.path());
    // systemd-analyze works offline: it loads the file, checks every key
    // and value, and checks that the commands are executable, without a
    // running systemd.
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "",
        "{}",
        output_text(&o)
    );

    // The same check fails on a unit with a mistake, so it is real.
    let bad = dir.path().join("bad").join("emqx-rs.service");
    std::fs::create_dir_all(bad.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&unit)
            .expect("unit")
            .replace("Restart=on-failure", "Restart=sometimes"),
    )
    .expect("write");
    // systemd-analyze exits 0 on a value it ignores, and says so on
    // stderr: hence the empty stderr above.
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&bad));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Failed to parse service restart specifier"),
        "{}",
        output_text(&o)
    );
}

/// Every file and directory below `dir`.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

#[test]
fn the_units_commands_start_reload_and_stop_the_node() {
    // The layout the unit expects, under a temporary root in place of
    // /opt/emqx-rs: bin/emqx-rs (a hard link, so the node finds its
    // config beside the executable as it would there), etc/emqx.conf with
    // the shipped data_dir ("data", relative to WorkingDirectory), and
    // data/ (ReadWritePaths).
    let unit = read(UNIT);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let root = tmp.path().join("opt-emqx-rs");
    let at = |p: &str| PathBuf::from(p.replace("/opt/emqx-rs", &root.display().to_string()));
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    let exe = root.join("bin/emqx-rs");
    if std::fs::hard_link(BIN, &exe).is_err() {
        std::fs::copy(BIN, &exe).expect("copy the binary");
    }
    let writable = at(&service_key(&unit, "ReadWritePaths"));
    std::fs::create_dir_all(&writable).expect("mkdir data");
    let (dist, fwd, mqtt, api) = (free_port(), free_port(), free_port(), free_port());
    let name = format!("deploy{dist}@127.0.0.1");
    std::fs::write(
        root.join("etc/emqx.conf"),
        format!(
            "node {{\n  name = \"{name}\"\n  cookie = \"deploy-test\"\n  data_dir = \"data\"\n  dist_listen_port = {dist}\n  forward_listen_port = {fwd}\n}}\nlisteners.tcp.default.bind = \"127.0.0.1:{mqtt}\"\ndashboard.listeners.http.bind = \"127.0.0.1:{api}\"\nlog.file.level = info\n"
        ),
    )
    .expect("write config");
    let before = tree(&root);

    let exec: Vec<String> = service_key(&unit, "ExecStart")
        .split_whitespace()
        .map(|a| at(a).display().to_string())
        .collect();
    let log = tmp.path().join("journal.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new(&exec[0]);
    cmd.args(&exec[1..])
        .current_dir(at(&service_key(&unit, "WorkingDirectory")))
        .env_remove("EMQX_CONF")
        .env_remove("EMQX_ETC_DIR")
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    let mut node = Proc::spawn(&mut cmd, "emqx-rs foreground (ExecStart)");
    let up = poll(Duration::from_secs(60), || {
        node.assert_running(&log);
        TcpStream::connect(("127.0.0.1", mqtt)).ok()
    });
    assert!(
        up.is_some(),
        "no MQTT listener in 60 s:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (code, body) = get(&format!("http://127.0.0.1:{api}/api/v5/status"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&name), "{body}");
    let journal = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        journal.contains("etc/emqx.conf (from beside the executable)")
            || journal.contains("etc/emqx.conf (from the working directory)"),
        "{journal}"
    );

    // ExecReload: SIGHUP reopens the log file and the node stays up.
    let pid = node.child.id().to_string();
    let reload: Vec<String> = service_key(&unit, "ExecReload")
        .replace("$MAINPID", &pid)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let o = run(Command::new(&reload[0]).args(&reload[1..]));
    assert!(o.status.success(), "{}", output_text(&o));
    let file_log = writable.join("log/emqx.log");
    let reopened = poll(Duration::from_secs(20), || {
        std::fs::read_to_string(&file_log)
            .ok()
            .filter(|l| l.contains("SIGHUP: log file"))
    });
    assert!(
        reopened.is_some(),
        "no reopen in {}:\n{}",
        file_log.display(),
        std::fs::read_to_string(&file_log).unwrap_or_default()
    );
    node.assert_running(&log);

    // Stop as systemd does: KillSignal to the main process, then wait up
    // to TimeoutStopSec. Exit status 0, so neither Restart=on-failure nor
    // a failed state follows a `systemctl stop`.
    let signal = service_key(&unit, "KillSignal");
    let timeout: u64 = service_key(&unit, "TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    let o = run(Command::new("kill").args(["-s", &signal, &pid]));
    assert!(o.status.success(), "{}", output_text(&o));
    let status = poll(Duration::from_secs(timeout), || {
        node.child.try_wait().ok().flatten()
    })
    .unwrap_or_else(|| panic!("the node did not stop within TimeoutStopSec={timeout}s"));
    assert!(
        status.success(),
        "{status}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(service_key(&unit, "Restart") == "on-failure");

    // ProtectSystem=strict leaves only ReadWritePaths writable: the node
    // wrote nowhere else.
    let outside: Vec<PathBuf> = tree(&root)
        .difference(&before)
        .filter(|p| !p.starts_with(&writable))
        .cloned()
        .collect();
    assert!(
        outside.is_empty(),
        "written outside {}: {outside:?}",
        writable.display()
    );
    assert!(writable.join("log/emqx.log").exists());
}

// ---------------------------------------------------------------------------
// The HAProxy configuration of docs/operations.md
// ---------------------------------------------------------------------------

/// The ```haproxy block of docs/operations.md.
fn operations_haproxy_cfg() -> String {
    let doc = read("docs/operations.md");
    let start = doc.find("```haproxy\n").expect("a ```haproxy block") + "```haproxy\n".len();
    let len = doc[start..].find("```").expect("end of the block");
    doc[start..start + len].to_string()
}

/// `show stat` on HAProxy's stats socket: `(proxy, server) -> status`.
fn haproxy_status(sock: &Path) -> BTreeMap<(String, String), String> {
    use std::io::Read;
    let mut out = BTreeMap::new();
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"show stat\n").is_err() {
        return out;
    }
    let mut csv = String::new();
    let _ = s.read_to_string(&mut csv);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let Some(col) = header.iter().position(|h| *h == "status") else {
        return out;
    };
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() > col {
            out.insert((f[0].to_string(), f[1].to_string()), f[col].to_string());
        }
    }
    out
}

#[test]
fn the_operations_haproxy_config_checks_nodes_over_http_and_sends_proxy_v2() {
    let cfg = operations_haproxy_cfg();
    let dir = tempfile::tempdir().expect("tempdir");
    let as_written = dir.path().join("as-written.cfg");
    std::fs::write(&as_written, &cfg).expect("write");
    let o = run(Command::new("haproxy").args(["-c", "-f"]).arg(&as_written));
    assert!(o.status.success(), "{}\n{cfg}", output_text(&o));

    // A node with the guide's `lb` listener (PROXY protocol required) on
    // 127.0.0.1; the guide's servers 10.0.0.N:1884 become 127.0.0.N:<lb>,
    // so only emqx1 has a node (and an API port) behind it.
    let lb = free_port();
    let n = Node::start_with(common::Opts {
        extra: format!(
            "listeners.tcp.lb {{\n  bind = \"127.0.0.1:{lb}\"\n  proxy_protocol = true\n  proxy_protocol_timeout = 3s\n}}\n"
        ),
        ..Default::default()
    });
    let front = free_port();
    let sock = dir.path().join("admin.sock");
    let mut live = cfg.clone();
    let edits = [
        (
            "global\n".to_string(),
            format!(
                "global\n    stats socket {} mode 600 level admin\n",
                sock.display()
            ),
        ),
        ("bind :1883".to_string(), format!("bind 127.0.0.1:{front}")),
        (
            "check port 18083 inter 5s".to_string(),
            format!("check port {} inter 1s", n.api_port),
        ),
        ("10.0.0.1:1884".to_string(), format!("127.0.0.1:{lb}")),
        ("10.0.0.2:1884".to_string(), format!("127.0.0.2:{lb}")),
        ("10.0.0.3:1884".to_string(), format!("127.0.0.3:{lb}")),
    ];
    for (from, to) in &edits {
        assert!(
            live.contains(from.as_str()),
            "the guide's config has no {from:?}"
        );
        live = live.replacen(from.as_str(), to, 1);
    }
    let live_path = dir.path().join("haproxy.cfg");
    std::fs::write(&live_path, &live).expect("write");
    let log = dir.path().join("haproxy.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut hap = Proc::spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&live_path)
            .stdout(out.try_clone().expect("log"))
            .stderr(out),
        "haproxy",
    );

    // The HTTP check (GET /api/v5/status on the API port, without a PROXY
    // header) finds emqx1 up and the two addresses without a node down.
    let want = |s: &BTreeMap<(String, String), String>| {
        let st = |srv: &str| s.get(&("emqx".to_string(), srv.to_string())).cloned();
        st("emqx1").as_deref() == Some("UP")
            && st("emqx2").as_deref() == Some("DOWN")
            && st("emqx3").as_deref() == Some("DOWN")
    };
    let states = poll(Duration::from_secs(60), || {
        hap.assert_running(&log);
        let s = haproxy_status(&sock);
        want(&s).then_some(s)
    });
    assert!(
        states.is_some(),
        "health checks: {:?}\n{}",
        haproxy_status(&sock),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A client through HAProxy reaches the node's PROXY listener, which
    // closes any connection that does not start with a PROXY header.
    let _sub = Proc::spawn(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &front.to_string()])
            .args(["-i", "deploy-hap", "-t", "deploy/hap", "-W", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "mosquitto_sub",
    );
    let seen = poll(Duration::from_secs(30), || {
        let (_, out) = n.ctl(&["clients", "list"]);
        out.contains("Client(deploy-hap,").then_some(out)
    });
    assert!(
        seen.is_some(),
        "the client did not arrive through HAProxy: {}\n{}",
        n.ctl(&["clients", "list"]).1,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    hap.assert_running(&log);
}
