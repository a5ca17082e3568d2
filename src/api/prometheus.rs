//! `GET /api/v5/prometheus/stats`: the stats and metrics in Prometheus'
//! text exposition format under EMQX's names (`emqx_` + the name with dots
//! as underscores; counters without `_total`, as EMQX, so its Grafana
//! dashboards and alert rules work unchanged).
//!
//! `?mode=node` (default): this node; `all_nodes_aggregated`: summed over
//! the running nodes; `all_nodes_unaggregated`: one series per node with
//! a `node` label.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// How the nodes' figures are shown (`?mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This node only.
    Node,
    /// Summed over the running nodes.
    Aggregated,
    /// One series per node, labelled `node`.
    Unaggregated,
}

impl Mode {
    pub fn parse(s: Option<&str>) -> Option<Mode> {
        match s {
            None | Some("node") => Some(Mode::Node),
            Some("all_nodes_aggregated") => Some(Mode::Aggregated),
            Some("all_nodes_unaggregated") => Some(Mode::Unaggregated),
            _ => None,
        }
    }
}

/// One node's answer: its stats (gauges) and metrics (counters).
pub struct NodeFigures {
    pub node: String,
    pub stats: Value,
    pub metrics: Value,
}

/// Which stats are gauges (everything else is a counter).
fn is_gauge(stat: bool) -> &'static str {
    if stat {
        "gauge"
    } else {
        "counter"
    }
}

fn metric_name(key: &str) -> String {
    let mut n = String::from("emqx_");
    for c in key.chars() {
        n.push(if c.is_ascii_alphanumeric() { c } else { '_' });
    }
    n
}

/// `(name, is a gauge)` -> (help text, per-node values).
type Series = BTreeMap<(String, bool), (String, Vec<(String, i64)>)>;

fn add(series: &mut Series, node: &str, v: &Value, gauge: bool) {
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let (_, values) = series.entry((metric_name(k), gauge)).or_insert_with(|| {
                let what = if gauge { "stat" } else { "metric" };
                (format!("The {what} {k} (GET /api/v5/{what}s)"), Vec::new())
            });
            values.push((node.to_string(), x.as_i64().unwrap_or(0)));
        }
    }
}

/// The exposition text for `nodes` (the cluster seen from this node:
/// `running` and `stopped` members).
pub fn render(nodes: &[NodeFigures], running: usize, stopped: usize, mode: Mode) -> String {
    let mut series = Series::new();
    for n in nodes {
        add(&mut series, &n.node, &n.stats, true);
        add(&mut series, &n.node, &n.metrics, false);
    }
    for (name, v, help) in [
        (
            "emqx_cluster_nodes_running",
            running,
            "Members of the cluster this node reaches",
        ),
        (
            "emqx_cluster_nodes_stopped",
            stopped,
            "Members of the cluster this node does not reach",
        ),
    ] {
        series.insert(
            (name.to_string(), true),
            (
                help.to_string(),
                nodes.iter().map(|n| (n.node.clone(), v as i64)).collect(),
            ),
        );
    }
    let mut out = String::new();
    for ((name, gauge), (help, values)) in &series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {}", is_gauge(*gauge));
        if mode == Mode::Unaggregated {
            for (node, v) in values {
                let _ = writeln!(out, "{name}{{node=\"{}\"}} {v}", escape(node));
            }
        } else if name.starts_with("emqx_cluster_nodes_") {
            // The same figure seen from every node: not a sum.
            let v = values.first().map_or(0, |(_, v)| *v);
            let _ = writeln!(out, "{name} {v}");
        } else if *gauge && cluster_wide(name) {
            // Every node holds all of them: one node's count, not a sum.
            let v = values.iter().map(|(_, v)| *v).max().unwrap_or(0);
            let _ = writeln!(out, "{name} {v}");
        } else {
            let v: i64 = values.iter().map(|(_, v)| v).sum();
            let _ = writeln!(out, "{name} {v}");
        }
    }
    out
}

fn cluster_wide(name: &str) -> bool {
    crate::mgmt::CLUSTER_WIDE_STATS
        .iter()
        .any(|k| metric_name(k) == name)
}

/// A label value as the exposition format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_sum_or_label() {
        let fig = |n: &str, c: i64, r: i64| NodeFigures {
            node: n.into(),
            stats: serde_json::json!({"connections.count": c, "retained.count": 7}),
            metrics: serde_json::json!({"messages.received": r}),
        };
        let nodes = [fig("a@h", 2, 10), fig("b@h", 3, 5)];
        let t = render(&nodes, 2, 1, Mode::Aggregated);
        assert!(
            t.contains("# TYPE emqx_connections_count gauge\nemqx_connections_count 5\n"),
            "{t}"
        );
        // Every node holds the 7 retained messages: 7, not 14.
        assert!(t.contains("\nemqx_retained_count 7\n"), "{t}");
        assert!(
            t.contains("# TYPE emqx_messages_received counter\nemqx_messages_received 15\n"),
            "{t}"
        );
        assert!(
            t.contains("emqx_cluster_nodes_running 2\n")
                && t.contains("emqx_cluster_nodes_stopped 1\n"),
            "{t}"
        );
        let t = render(&nodes, 2, 1, Mode::Unaggregated);
        assert!(
            t.contains(
                "emqx_connections_count{node=\"a@h\"} 2\nemqx_connections_count{node=\"b@h\"} 3\n"
            ),
            "{t}"
        );
        assert_eq!(Mode::parse(Some("x")), None);
        assert_eq!(Mode::parse(None), Some(Mode::Node));
    }

    #[test]
    fn names_follow_emqx() {
        assert_eq!(metric_name("messages.received"), "emqx_messages_received");
        assert_eq!(metric_name("connections.count"), "emqx_connections_count");
        assert_eq!(
            metric_name("client.auth.anonymous"),
            "emqx_client_auth_anonymous"
        );
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
