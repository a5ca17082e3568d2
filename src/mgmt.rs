//! What one node answers about itself for the HTTP API (EMQX's
//! emqx_mgmt): node facts, stats, metrics, its clients, a kick. The API
//! asks every running node, itself directly and the others through their
//! control actor (`ControlMsg::Api`), and merges the answers.

use crate::listeners::spec::Action;
use crate::listeners::{Spec, State};
use crate::running::Node;
use emqx_actors::session::ClientInfo;
use emqx_actors::sys::VERSION;
use emqx_mqtt::packet::{QoS, RetainHandling, SubscriptionOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// Stats that count something every node holds whole (the route table,
/// the replicated retained messages): summing them over the nodes would
/// count each thing once per node, so a cluster-wide figure takes the
/// largest node's value instead (EMQX takes the answering node's).
pub const CLUSTER_WIDE_STATS: &[&str] = &["retained.count", "topics.count"];

/// One question to one node; travels as JSON between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// `GET /nodes/{node}`: facts about the node.
    Node,
    /// The stats gauges, by EMQX name.
    Stats,
    /// The metrics counters, by EMQX name.
    Metrics,
    /// Every client (connected or with a session) on the node.
    Clients,
    /// One client, `null` when the node does not hold it.
    Client { clientid: String },
    /// Disconnects a client and drops its session; `true` when found.
    Kick { clientid: String },
    /// Subscribes a client on its behalf: `null` when the node does not
    /// hold it, else `{"ok": true}` or `{"error": ...}`.
    Subscribe {
        clientid: String,
        topic: String,
        qos: u8,
        nl: bool,
        rap: bool,
        rh: u8,
    },
    /// Unsubscribes a client: `null` when the node does not hold it, else
    /// whether it was subscribed.
    Unsubscribe { clientid: String, topic: String },
    /// The node's active (or deactivated) alarms, as EMQX lists them.
    Alarms { activated: bool },
    /// Forgets the node's deactivated alarms.
    ClearAlarms,
    /// The node's listeners: settings, state, connections.
    Listeners,
    /// Starts, stops or restarts one listener: `null` when the node has no
    /// such listener, else `{"ok": true}` or `{"error": ...}`.
    Listener { id: String, action: String },
}

/// Answers `call` from this node's own state.
pub async fn answer(node: &Node, call: &Call) -> Value {
    let ctx = &node.ctx;
    match call {
        Call::Node => node_info(node),
        Call::Stats => Value::Object(
            ctx.stats()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        ),
        Call::Metrics => Value::Object(
            ctx.broker
                .metrics
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        ),
        Call::Clients => Value::Array(
            ctx.cm
                .all_info()
                .await
                .iter()
                .map(|i| with_subscriptions(i, &node.name))
                .collect(),
        ),
        Call::Client { clientid } => match ctx.cm.info(clientid).await {
            Some(i) => with_subscriptions(&i, &node.name),
            None => Value::Null,
        },
        Call::Kick { clientid } => json!(ctx.cm.kick(clientid).await),
        Call::Subscribe {
            clientid,
            topic,
            qos,
            nl,
            rap,
            rh,
        } => {
            let opts = SubscriptionOptions {
                qos: QoS::from_u8(*qos).unwrap_or(QoS::AtMostOnce),
                no_local: *nl,
                retain_as_published: *rap,
                retain_handling: match rh {
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendAtSubscribe,
                },
            };
            match ctx.cm.subscribe(clientid, topic, opts).await {
                None => Value::Null,
                Some(Ok(())) => json!({"ok": true}),
                Some(Err(e)) => json!({"error": e}),
            }
        }
        Call::Unsubscribe { clientid, topic } => match ctx.cm.unsubscribe(clientid, topic).await {
            None => Value::Null,
            Some(had) => json!(had),
        },
        Call::Alarms { activated } => {
            let now_us = emqx_actors::clock::now_ms() * 1000;
            let list = if *activated {
                ctx.alarms.active()
            } else {
                ctx.alarms.history(now_us)
            };
            let time = |us: u64| {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_micros(us),
                )
                .to_string()
            };
            Value::Array(
                list.iter()
                    .map(|a| {
                        let end = a.deactivate_at_us.unwrap_or(now_us);
                        json!({
                            "node": node.name,
                            "name": a.name,
                            "message": a.message,
                            "details": a.details,
                            "duration": end.saturating_sub(a.activate_at_us) / 1000,
                            "activate_at": time(a.activate_at_us),
                            "deactivate_at": a.deactivate_at_us.map_or(json!("infinity"), |t| json!(time(t))),
                            "activated": a.deactivate_at_us.is_none(),
                        })
                    })
                    .collect(),
            )
        }
        Call::ClearAlarms => {
            ctx.alarms.clear_history();
            json!(true)
        }
        Call::Listeners => Value::Array(node.listeners.all.iter().map(|l| listener(l)).collect()),
        Call::Listener { id, action } => {
            let Some(l) = node.listeners.find(id) else {
                return Value::Null;
            };
            let Some(action) = Action::parse(action) else {
                return json!({"error": format!("unknown action {action:?}")});
            };
            match l.act(action).await {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"error": e}),
            }
        }
    }
}

/// One listener as EMQX's `GET /api/v5/listeners` shows it on one node.
fn listener(l: &Spec) -> Value {
    let (kind, name) = l.id.split_once(':').unwrap_or((&l.id, ""));
    json!({
        "id": l.id,
        "type": kind,
        "name": name,
        "bind": l.bind.to_string(),
        "acceptors": l.acceptors,
        "proxy_protocol": l.proxy_protocol(),
        "running": l.state() == State::Running,
        "current_connections": l.open.load(Ordering::Relaxed),
        "max_connections": l.max_connections.map_or(json!("infinity"), |m| json!(m)),
    })
}

/// A node as EMQX's `GET /api/v5/nodes` describes it, with what this
/// process can measure (no Erlang VM figures).
fn node_info(node: &Node) -> Value {
    let ctx = &node.ctx;
    let stat = |name: &str| {
        ctx.stats()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |(_, v)| v)
    };
    let (load1, load5, load15) = load_average();
    let running = *ctx.listeners.borrow();
    json!({
        "node": node.name,
        "node_status": if running { "running" } else { "stopped" },
        "version": VERSION,
        "edition": "Opensource",
        "role": node.role,
        "uptime": ctx.started_at.elapsed().as_millis() as u64,
        "connections": stat("connections.count"),
        "live_connections": stat("live_connections.count"),
        "memory_used": emqx_actors::overload::resident_bytes(),
        "memory_total": emqx_actors::overload::memory_limit(),
        "max_fds": max_fds(),
        "load1": load1,
        "load5": load5,
        "load15": load15,
        "sys_path": std::env::current_exe().ok().map(|p| p.display().to_string()),
        "log_path": node.log_dir,
    })
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
fn load_average() -> (Option<f64>, Option<f64>, Option<f64>) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    (
        it.next().flatten(),
        it.next().flatten(),
        it.next().flatten(),
    )
}

/// The process's soft limit on open files (`/proc/self/limits`).
fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A client as EMQX's `GET /api/v5/clients` names its fields.
pub fn client_json(i: &ClientInfo, node: &str) -> Value {
    let (ip, port) = i
        .peer
        .as_deref()
        .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
        .map(|a| (Some(a.ip().to_string()), Some(a.port())))
        .unwrap_or((None, None));
    json!({
        "clientid": i.client_id,
        "username": i.username,
        "ip_address": ip,
        "port": port,
        "node": node,
        "connected": i.connected,
        "conn_state": if i.connected { "connected" } else { "disconnected" },
        "proto_name": if i.proto_ver == 3 { "MQIsdp" } else { "MQTT" },
        "proto_ver": i.proto_ver,
        "clean_start": i.clean_start,
        "keepalive": i.keepalive,
        "expiry_interval": i.session_expiry,
        "subscriptions_cnt": i.subscriptions.len(),
        "inflight_cnt": i.inflight,
        "awaiting_rel_cnt": i.awaiting_rel,
        "mqueue_len": i.mqueue_len,
        "mqueue_dropped": i.dropped,
        "send_msg": i.delivered,
        "created_at": i.created_at,
        "connected_at": i.connected_at,
        "disconnected_at": i.disconnected_at,
    })
}

/// [`client_json`] plus `subscriptions`: the rows of
/// [`subscriptions_json`] (the API lists them apart).
fn with_subscriptions(i: &ClientInfo, node: &str) -> Value {
    let mut v = client_json(i, node);
    v["subscriptions"] = Value::Array(subscriptions_json(i, node));
    v
}

/// A client's subscriptions as EMQX's `/subscriptions` lists them.
fn subscriptions_json(i: &ClientInfo, node: &str) -> Vec<Value> {
    i.subscriptions
        .iter()
        .map(|(t, o)| {
            json!({
                "node": node,
                "clientid": i.client_id,
                "topic": t,
                "qos": o.qos as u8,
                "nl": u8::from(o.no_local),
                "rap": u8::from(o.retain_as_published),
                "rh": o.retain_handling as u8,
            })
        })
        .collect()
}
