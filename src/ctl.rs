//! `emqx-rs ctl` commands, run inside the node (EMQX's emqx_ctl and
//! emqx_mgmt_cli), and the control actor that serves them to remote shells
//! over the inter-node protocol.

use crate::running::Node;
use emqx_actors::cluster::service::SvcMsg;
use emqx_actors::session::ClientInfo;
use emqx_actors::sys::{human_uptime, SYSDESCR, VERSION};
use emqx_mqtt::packet::QoS;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The process group of a node's control actor; a remote shell (or
/// another cluster node) finds it there by the node's name.
pub fn ctl_group(node: &str) -> String {
    format!("emqx_ctl:{node}")
}

/// Messages of the control actor; this is the only remotable actor of a
/// node, so its variants are part of the inter-node protocol.
#[derive(RactorClusterMessage)]
pub enum ControlMsg {
    /// Runs a ctl command given as a JSON array of words; replies with a
    /// JSON object `{"code": exit code, "out": text}`.
    #[rpc]
    Run(String, RpcReplyPort<String>),
    /// Answers one HTTP API question about this node ([`crate::mgmt::Call`]
    /// as JSON); replies with the answer as JSON.
    #[rpc]
    Api(String, RpcReplyPort<String>),
    /// Passes a `Run` or `Api` request on to a node the sender has no link
    /// to ([`Relayed`] as JSON); replies with that node's answer.
    #[rpc]
    Relay(String, RpcReplyPort<String>),
}

/// Which request of the control actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ControlKind {
    Run,
    Api,
}

/// A control request passed on by a node in between.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Relayed {
    to: String,
    hops: u8,
    kind: ControlKind,
    body: String,
}

/// Calls the control actor of `node`: over the link to it, or else through
/// the node the cluster reaches it by (a replicant talks to its core only;
/// a core reaches a replicant through the core that hosts it).
pub async fn call_control(
    node: &str,
    kind: ControlKind,
    body: String,
    timeout: Duration,
) -> Option<String> {
    call_control_hops(node, 2, kind, body, timeout).await
}

async fn call_control_hops(
    node: &str,
    hops: u8,
    kind: ControlKind,
    body: String,
    timeout: Duration,
) -> Option<String> {
    let actor_of = |n: &str| -> Option<ActorRef<ControlMsg>> {
        ractor::pg::get_members(&ctl_group(n))
            .into_iter()
            .next()
            .map(Into::into)
    };
    let r = if let Some(actor) = actor_of(node) {
        match kind {
            ControlKind::Run => {
                actor
                    .call(|rp| ControlMsg::Run(body, rp), Some(timeout))
                    .await
            }
            ControlKind::Api => {
                actor
                    .call(|rp| ControlMsg::Api(body, rp), Some(timeout))
                    .await
            }
        }
    } else {
        let via = emqx_actors::cluster::rpc::via_of(node).filter(|_| hops > 0)?;
        let actor = actor_of(&via)?;
        let relayed = Relayed {
            to: node.to_string(),
            hops: hops - 1,
            kind,
            body,
        };
        let req = serde_json::to_string(&relayed).ok()?;
        actor
            .call(|rp| ControlMsg::Relay(req, rp), Some(timeout))
            .await
    };
    match r {
        Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
        _ => None,
    }
}

pub struct ControlActor;

impl Actor for ControlActor {
    type Msg = ControlMsg;
    type State = Arc<Node>;
    type Arguments = Arc<Node>;

    async fn pre_start(
        &self,
        _me: ActorRef<ControlMsg>,
        node: Arc<Node>,
    ) -> Result<Arc<Node>, ActorProcessingErr> {
        Ok(node)
    }

    async fn handle(
        &self,
        _me: ActorRef<ControlMsg>,
        msg: ControlMsg,
        node: &mut Arc<Node>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ControlMsg::Run(args, reply) => {
                let (code, out) = match serde_json::from_str::<Vec<String>>(&args) {
                    Ok(words) => {
                        // Commands may wait on sessions; never block the actor on them.
                        let node = node.clone();
                        tokio::spawn(async move {
                            let (code, out) = run(&node, &words).await;
                            let _ = reply
                                .send(serde_json::json!({"code": code, "out": out}).to_string());
                        });
                        return Ok(());
                    }
                    Err(e) => (2, format!("bad ctl request: {e}\n")),
                };
                let _ = reply.send(serde_json::json!({"code": code, "out": out}).to_string());
            }
            ControlMsg::Relay(req, reply) => match serde_json::from_str::<Relayed>(&req) {
                Ok(r) => {
                    tokio::spawn(async move {
                        let out = Box::pin(call_control_hops(
                            &r.to,
                            r.hops,
                            r.kind,
                            r.body,
                            Duration::from_secs(10),
                        ))
                        .await;
                        let _ = reply.send(out.unwrap_or_else(|| "null".into()));
                    });
                }
                Err(e) => {
                    tracing::warn!("bad relayed control request from a peer: {e}");
                    let _ = reply.send("null".into());
                }
            },
            ControlMsg::Api(call, reply) => {
                match serde_json::from_str::<crate::mgmt::Call>(&call) {
                    Ok(call) => {
                        let node = node.clone();
                        tokio::spawn(async move {
                            let v = crate::mgmt::answer(&node, &call).await;
                            let _ = reply.send(v.to_string());
                        });
                    }
                    Err(e) => {
                        tracing::warn!("bad API request from a peer: {e}");
                        let _ = reply.send("null".into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// (name, usage, description) of each command, for `ctl help`.
const COMMANDS: &[(&str, &str, &str)] = &[
    ("status", "status", "Show broker status"),
    (
        "broker",
        "broker",
        "Show broker version, uptime and description",
    ),
    (
        "broker",
        "broker stats",
        "Show broker statistics of clients, topics, subscribers",
    ),
    ("broker", "broker metrics", "Show broker metrics"),
    (
        "broker",
        "broker stats|metrics --json",
        "Show this node's statistics or metrics as a JSON object",
    ),
    ("cluster", "cluster join <Node>", "Join the cluster"),
    ("cluster", "cluster leave", "Leave the cluster"),
    (
        "cluster",
        "cluster force-leave <Node>",
        "Force the node leave from cluster",
    ),
    ("cluster", "cluster status [--json]", "Cluster status"),
    (
        "cluster",
        "cluster discovery enable",
        "Enable and run automatic cluster discovery",
    ),
    (
        "cluster",
        "cluster forwarding",
        "Message forwarding statistics per peer node",
    ),
    ("clients", "clients list", "List all clients"),
    (
        "clients",
        "clients list --json",
        "List all clients as a JSON array (EMQX's REST field names)",
    ),
    ("clients", "clients show <ClientId>", "Show a client"),
    ("clients", "clients kick <ClientId>", "Kick out a client"),
    (
        "subscriptions",
        "subscriptions list",
        "List all subscriptions",
    ),
    (
        "subscriptions",
        "subscriptions show <ClientId>",
        "Show subscriptions of a client",
    ),
    (
        "subscriptions",
        "subscriptions add <ClientId> <Topic> <QoS>",
        "Add a static subscription manually",
    ),
    (
        "subscriptions",
        "subscriptions del <ClientId> <Topic>",
        "Delete a static subscription manually",
    ),
    ("topics", "topics list", "List all topics"),
    ("topics", "topics show <Topic>", "Show a topic"),
    (
        "retainer",
        "retainer info",
        "Show the count of retained messages",
    ),
    (
        "retainer",
        "retainer topics",
        "Show all topics of retained messages",
    ),
    ("retainer", "retainer clean", "Clean all retained messages"),
    ("listeners", "listeners", "List listeners"),
    (
        "acl",
        "acl reload",
        "Read the authorization files (acl.conf) again; a file that does not parse keeps its rules in force",
    ),
    (
        "acl",
        "acl rules list",
        "List the built-in database source's rules",
    ),
    (
        "acl",
        "acl rules add <clientid <Id>|username <Name>|all> <allow|deny> <publish|subscribe|all> <Topic> [qos=0,1,2] [retain=true|false]",
        "Add a rule on every node, after the owner's others (eq <Topic> matches exactly)",
    ),
    (
        "acl",
        "acl rules del <clientid <Id>|username <Name>|all>",
        "Delete an owner's rules on every node",
    ),
    ("alarms", "alarms list", "List the active alarms of every node"),
    ("api_keys", "api_keys list", "List the HTTP API keys"),
    (
        "api_keys",
        "api_keys add <Name> [administrator|viewer|publisher]",
        "Create an API key; its secret is shown once",
    ),
    ("api_keys", "api_keys del <Name>", "Revoke an API key on every node"),
    (
        "api_keys",
        "api_keys enable|disable <Name>",
        "Enable or disable an API key on every node",
    ),
    (
        "alarms",
        "alarms history",
        "List the deactivated alarms of every node (alarm.size_limit, alarm.validity_period)",
    ),
    ("banned", "banned list", "List the banned clients"),
    (
        "banned",
        "banned add <clientid|username|peerhost|clientid_re|username_re> <Who> [<Duration>|infinity] [<Reason>]",
        "Ban a client id, username or address (peerhost: an address or CIDR block), or every client id or username a regular expression finds, on every node, for a duration (1h, 30m, ...) or for ever (the default)",
    ),
    (
        "banned",
        "banned del <clientid|username|peerhost|clientid_re|username_re> <Who>",
        "Lift a ban",
    ),
    ("users", "users list", "List the built-in authentication database's users"),
    (
        "users",
        "users add <UserId> <Password> [--superuser]",
        "Add a user (a Password of - is read from stdin)",
    ),
    (
        "users",
        "users passwd <UserId> <Password>",
        "Change a user's password (- reads it from stdin)",
    ),
    (
        "users",
        "users superuser <UserId> <true|false>",
        "Make a user a superuser, or not",
    ),
    ("users", "users del <UserId>", "Delete a user"),
    (
        "listeners",
        "listeners stop <Identifier>",
        "Stop a listener (open connections stay)",
    ),
    (
        "listeners",
        "listeners start <Identifier>",
        "Start a listener",
    ),
    (
        "listeners",
        "listeners restart <Identifier>",
        "Restart a listener",
    ),
    (
        "retainer",
        "retainer clean <Topic>",
        "Clean retained messages by the specified topic filter",
    ),
    (
        "ds",
        "ds info [--local]",
        "The replicated durable storage's shards on every core (--local: this node): state, leader, term, log, replicas and their lag",
    ),
    (
        "durable",
        "durable status",
        "This node's durable store: size, commits, writes pending, journaled sessions and messages",
    ),
];

/// Usage text of one command group, or of all, as EMQX prints it.
pub fn usage(group: Option<&str>) -> String {
    let rows: Vec<&(&str, &str, &str)> = COMMANDS
        .iter()
        .filter(|c| group.is_none_or(|g| c.0 == g))
        .collect();
    let mut out = String::new();
    if group.is_none() {
        out.push_str("Usage: emqx-rs ctl\n");
    }
    let mut last = "";
    for (g, u, d) in rows.iter().map(|r| (r.0, r.1, r.2)) {
        if g != last {
            if group.is_none() {
                out.push_str(&"-".repeat(110));
                out.push('\n');
            }
            last = g;
        }
        let width = COMMANDS
            .iter()
            .filter(|c| c.0 == g)
            .map(|c| c.1.len())
            .max()
            .unwrap_or(0);
        out.push_str(&format!("{u:<w$} # {d}\n", w = width + 1));
    }
    out
}

fn ok() -> (i32, String) {
    (0, "ok\n".into())
}

/// Runs one ctl command; returns (exit code, output).
/// Output of a command: exit code and text.
type Out = (i32, String);

/// One group of commands (`ctl <group> ...`).
type Handler =
    for<'a> fn(&'a Node, &'a [&'a str]) -> Pin<Box<dyn Future<Output = Out> + Send + 'a>>;

/// The command groups and their handlers; each matches its own words.
const HANDLERS: &[(&str, Handler)] = &[
    ("ping", |n, w| Box::pin(cmd_ping(n, w))),
    ("stop", |n, w| Box::pin(cmd_stop(n, w))),
    ("status", |n, w| Box::pin(cmd_status(n, w))),
    ("broker", |n, w| Box::pin(cmd_broker(n, w))),
    ("cluster", |n, w| Box::pin(cmd_cluster(n, w))),
    ("clients", |n, w| Box::pin(cmd_clients(n, w))),
    ("subscriptions", |n, w| Box::pin(cmd_subscriptions(n, w))),
    ("topics", |n, w| Box::pin(cmd_topics(n, w))),
    ("retainer", |n, w| Box::pin(cmd_retainer(n, w))),
    ("listeners", |n, w| Box::pin(cmd_listeners(n, w))),
    ("acl", |n, w| Box::pin(cmd_acl(n, w))),
    ("users", |n, w| Box::pin(cmd_users(n, w))),
    ("banned", |n, w| Box::pin(cmd_banned(n, w))),
    ("alarms", |n, w| Box::pin(cmd_alarms(n, w))),
    ("api_keys", |n, w| Box::pin(cmd_api_keys(n, w))),
    ("durable", |n, w| Box::pin(cmd_durable(n, w))),
    ("ds", |n, w| Box::pin(cmd_ds(n, w))),
];

/// A command of `group` that does not exist: that group's usage, or the
/// whole usage for a command without subcommands.
fn unknown(group: &str) -> Out {
    if COMMANDS.iter().any(|c| c.0 == group) {
        (1, usage(Some(group)))
    } else {
        (1, usage(None))
    }
}

pub async fn run(node: &Node, words: &[String]) -> (i32, String) {
    let w: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
    match w.first() {
        None | Some(&"help") => (0, usage(None)),
        Some(g) => match HANDLERS.iter().find(|(name, _)| name == g) {
            Some((_, h)) => h(node, &w).await,
            None => (1, usage(None)),
        },
    }
}

async fn cmd_ping(_node: &Node, w: &[&str]) -> (i32, String) {
    match w {
        ["ping"] => (0, "pong\n".into()),
        _ => unknown("ping"),
    }
}

async fn cmd_stop(node: &Node, w: &[&str]) -> (i32, String) {
    match w {
        ["stop"] => {
            // Answer first: the caller must see `ok` before the inter-node
            // server that carries the reply goes away.
            let tx = node.shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let _ = tx.send(true);
            });
            ok()
        }
        _ => unknown("stop"),
    }
}

async fn cmd_status(node: &Node, w: &[&str]) -> (i32, String) {
    match w {
        ["status"] => (0, format!("Node '{}' {} is started\n", node.name, VERSION)),
        _ => unknown("status"),
    }
}

/// `w` without `--json`, and whether it was there.
fn json_flag<'a>(w: &[&'a str]) -> (Vec<&'a str>, bool) {
    let json = w.contains(&"--json");
    (
        w.iter().filter(|x| **x != "--json").copied().collect(),
        json,
    )
}

/// `(name, value)` pairs as one JSON object, a line.
fn json_object<V: serde::Serialize>(pairs: impl IntoIterator<Item = (String, V)>) -> String {
    let m: serde_json::Map<String, serde_json::Value> = pairs
        .into_iter()
        .map(|(k, v)| (k, serde_json::json!(v)))
        .collect();
    format!("{}\n", serde_json::Value::Object(m))
}

async fn cmd_broker(node: &Node, w: &[&str]) -> (i32, String) {
    let ctx = &node.ctx;
    let (w, json) = json_flag(w);
    match w.as_slice() {
        ["broker", "stats"] if json => (
            0,
            json_object(ctx.stats().into_iter().map(|(k, v)| (k.to_string(), v))),
        ),
        ["broker", "metrics"] if json => (
            0,
            json_object(
                ctx.broker
                    .metrics
                    .snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v)),
            ),
        ),
        ["broker"] => {
            let up = ctx.started_at.elapsed().as_secs();
            let now = chrono_like_now();
            (
                0,
                format!(
                    "{:<10}: {}\n{:<10}: {}\n{:<10}: {}\n{:<10}: {}\n",
                    "sysdescr",
                    SYSDESCR,
                    "version",
                    VERSION,
                    "datetime",
                    now,
                    "uptime",
                    human_uptime(up)
                ),
            )
        }
        ["broker", "stats"] => {
            let out: String = ctx
                .stats()
                .iter()
                .map(|(k, v)| format!("{k:<30}: {v}\n"))
                .collect();
            (0, out)
        }
        ["broker", "metrics"] => {
            let out: String = ctx
                .broker
                .metrics
                .snapshot()
                .iter()
                .map(|(k, v)| format!("{k:<30}: {v}\n"))
                .collect();
            (0, out)
        }
        ["broker", "stats", "--cluster"] => {
            let mut sums: std::collections::BTreeMap<String, i64> = ctx
                .stats()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            for (_, o) in on_peers(node, &["broker", "stats"]).await {
                for line in o.lines() {
                    if let Some((k, v)) = line.split_once(':') {
                        if let Ok(v) = v.trim().parse::<i64>() {
                            *sums.entry(k.trim().to_string()).or_default() += v;
                        }
                    }
                }
            }
            (
                0,
                sums.iter()
                    .map(|(k, v)| format!("{k:<30}: {v}\n"))
                    .collect(),
            )
        }
        _ => unknown("broker"),
    }
}

async fn cmd_cluster(node: &Node, w: &[&str]) -> (i32, String) {
    match w {
        ["cluster", "join", target] => {
            let t = target.to_string();
            match node
                .cluster
                .call(|r| SvcMsg::Join(t, r), Some(Duration::from_secs(30)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(Ok(status))) => {
                    (0, format!("Join the cluster successfully.\n{status}\n"))
                }
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    (1, format!("Failed to join the cluster: {e}\n"))
                }
                _ => (1, "Error: the cluster service did not answer\n".into()),
            }
        }
        ["cluster", "leave"] => {
            let mut notice = String::new();
            if node.discovery_strategy != "manual" {
                notice = "Automatic cluster discovery is disabled on this node: it will not rejoin by itself.\nTo enable it run: 'emqx-rs ctl cluster discovery enable' or restart the node.\n".into();
            }
            let (c, out) = call_cluster(node, SvcMsg::Leave, 30).await;
            (c, format!("{notice}{out}"))
        }
        ["cluster", "discovery", "enable"] => {
            let _ = node
                .cluster
                .call(SvcMsg::EnableDiscovery, Some(Duration::from_secs(5)))
                .await;
            (0, "Automatic cluster discovery enabled.\n".into())
        }
        ["cluster", "forwarding"] => {
            let stats = match node
                .cluster
                .call(SvcMsg::ForwardStats, Some(Duration::from_secs(5)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(s)) => s,
                _ => return (1, "Error: the cluster service did not answer\n".into()),
            };
            if stats.is_empty() {
                return (0, "No peers.\n".into());
            }
            let out = stats
                .iter()
                .map(|p| {
                    format!(
                        "{} addr={} connections={} queued={} unacked={} sent={} dropped={} bytes_sent={} received={}\n",
                        p.node, p.addr, p.connected, p.queued, p.unacked, p.sent, p.dropped, p.bytes_sent, p.received
                    )
                })
                .collect();
            (0, out)
        }
        ["cluster", "force-leave", target] => {
            let t = target.to_string();
            call_cluster(node, |r| SvcMsg::ForceLeave(t, r), 30).await
        }
        ["cluster", "status"] => {
            let (c, out) = call_cluster(node, |r| SvcMsg::Status(false, r), 5).await;
            (c, format!("{out}\n"))
        }
        ["cluster", "status", "--json"] => {
            let (c, out) = call_cluster(node, |r| SvcMsg::Status(true, r), 5).await;
            (c, format!("{out}\n"))
        }
        _ => unknown("cluster"),
    }
}

async fn cmd_clients(node: &Node, w: &[&str]) -> (i32, String) {
    let ctx = &node.ctx;
    let (w, json) = json_flag(w);
    match w.as_slice() {
        ["clients", "list", rest @ ..] if json => {
            let mut all: Vec<serde_json::Value> = ctx
                .cm
                .all_info()
                .await
                .iter()
                .map(|i| crate::mgmt::client_json(i, &node.name))
                .collect();
            if rest != ["--local"] {
                for (_, o) in on_peers(node, &["clients", "list", "--local", "--json"]).await {
                    if let Ok(serde_json::Value::Array(v)) = serde_json::from_str(&o) {
                        all.extend(v);
                    }
                }
            }
            (0, format!("{}\n", serde_json::Value::Array(all)))
        }
        ["clients", "list", rest @ ..] => {
            let mut out: String = ctx
                .cm
                .all_info()
                .await
                .iter()
                .map(|i| format_client(i, &node.name))
                .collect();
            if rest != ["--local"] {
                for (_, o) in on_peers(node, &["clients", "list", "--local"]).await {
                    if o != "No clients.\n" {
                        out.push_str(&o);
                    }
                }
            }
            if out.is_empty() {
                return (0, "No clients.\n".into());
            }
            (0, out)
        }
        ["clients", "show", id, rest @ ..] => match ctx.cm.info(id).await {
            Some(i) => (0, format_client(&i, &node.name)),
            None if rest != ["--local"] => {
                for (_, o) in on_peers(node, &["clients", "show", id, "--local"]).await {
                    if o != "Not Found.\n" {
                        return (0, o);
                    }
                }
                (0, "Not Found.\n".into())
            }
            None => (0, "Not Found.\n".into()),
        },
        ["clients", "kick", id, rest @ ..] => {
            if !ctx.cm.kick(id).await {
                let mut found = false;
                if rest != ["--local"] {
                    for (_, o) in on_peers(node, &["clients", "kick", id, "--local"]).await {
                        found |= o == "ok\n";
                    }
                }
                if !found {
                    tracing::warn!("ctl clients kick: client {id} not found");
                }
                if rest == ["--local"] {
                    return (0, "Not Found.\n".into());
                }
            }
            ok()
        }
        _ => unknown("clients"),
    }
}

async fn cmd_subscriptions(node: &Node, w: &[&str]) -> (i32, String) {
    let ctx = &node.ctx;
    match w {
        ["subscriptions", "list"] => {
            let all = ctx.cm.all_info().await;
            let out: String = all.iter().flat_map(format_subs).collect();
            if out.is_empty() {
                (0, "No subscriptions.\n".into())
            } else {
                (0, out)
            }
        }
        ["subscriptions", "show", id] => match ctx.cm.info(id).await {
            Some(i) if !i.subscriptions.is_empty() => (0, format_subs(&i).concat()),
            _ => (0, "Not Found.\n".into()),
        },
        ["subscriptions", "add", id, topic, qos] => {
            let Some(q) = qos.parse::<u8>().ok().and_then(QoS::from_u8) else {
                return (1, "QoS should be 0, 1, 2\n".into());
            };
            let Some(s) = ctx.cm.lookup(id) else {
                return (1, "Error: client not found\n".into());
            };
            let r = s
                .call(
                    |r| {
                        let opts = emqx_mqtt::packet::SubscriptionOptions {
                            qos: q,
                            ..Default::default()
                        };
                        emqx_actors::session::SessionMsg::AddSub(topic.to_string(), opts, r)
                    },
                    std::time::Duration::from_secs(5),
                )
                .await;
            match r {
                Some(Ok(())) => ok(),
                Some(Err(e)) => (1, format!("Error: {e}\n")),
                None => (1, "Error: the session did not answer\n".into()),
            }
        }
        ["subscriptions", "del", id, topic] => {
            let Some(s) = ctx.cm.lookup(id) else {
                return (1, "Error: client not found\n".into());
            };
            let _ = s
                .call(
                    |r| emqx_actors::session::SessionMsg::DelSub(topic.to_string(), r),
                    std::time::Duration::from_secs(5),
                )
                .await;
            ok()
        }
        _ => unknown("subscriptions"),
    }
}

async fn cmd_topics(node: &Node, w: &[&str]) -> (i32, String) {
    match w {
        ["topics", "list"] => {
            let r = all_routes(node);
            if r.is_empty() {
                return (0, "No topics.\n".into());
            }
            (0, r.iter().map(|(t, n)| format!("{t} -> {n}\n")).collect())
        }
        ["topics", "show", t] => {
            let r: Vec<(String, String)> = all_routes(node)
                .into_iter()
                .filter(|(f, _)| f == t)
                .collect();
            if r.is_empty() {
                return (0, "Not Found.\n".into());
            }
            (0, r.iter().map(|(t, n)| format!("{t} -> {n}\n")).collect())
        }
        _ => unknown("topics"),
    }
}

/// `acl reload`: the rules of every authorization file read again.
async fn cmd_acl(node: &Node, w: &[&str]) -> (i32, String) {
    match w {
        ["acl", "rules", rest @ ..] => {
            match crate::authz::ctl_rules(node.ctx.authz_rules.as_deref(), rest) {
                Some(r) => r,
                None => unknown("acl"),
            }
        }
        ["acl", "reload"] => {
            let (ok, lines) = crate::authz::reload(&node.ctx.settings.authz);
            for l in &lines {
                if ok {
                    tracing::info!("ctl acl reload: {l}");
                } else {
                    tracing::warn!("ctl acl reload: {l}");
                }
            }
            (if ok { 0 } else { 1 }, lines.join("\n") + "\n")
        }
        _ => unknown("acl"),
    }
}

/// `users ...`: the built-in authentication database (ours: EMQX offers
/// this over its HTTP API only).
async fn cmd_users(node: &Node, w: &[&str]) -> (i32, String) {
    let args: Vec<String> = w[1..].iter().map(|s| s.to_string()).collect();
    let authn = node.ctx.authn.clone();
    // Hashing a new password (bcrypt, PBKDF2) is slow: off the runtime.
    match tokio::task::spawn_blocking(move || crate::authn::ctl(&authn, &args)).await {
        Ok(Some(out)) => out,
        Ok(None) => unknown("users"),
        Err(e) => (1, format!("users: {e}\n")),
    }
}

/// `api_keys ...`: the HTTP API's keys (EMQX manages them over the API and
/// its dashboard only), replicated to every node.
async fn cmd_api_keys(node: &Node, w: &[&str]) -> (i32, String) {
    use crate::api::auth::{KeyChange, Role};
    let auth = &node.api_auth;
    match w {
        ["api_keys", "list"] => {
            let keys = auth.api_keys();
            if keys.is_empty() {
                return (
                    0,
                    "No API keys.
"
                    .into(),
                );
            }
            let now = emqx_actors::clock::now_ms() / 1000;
            let out = keys
                .iter()
                .map(|(key, k)| {
                    format!(
                        "name={} api_key={key} role={} enable={} expired={} desc={:?}\n",
                        k.name,
                        k.role.name(),
                        k.enable,
                        k.expired(now),
                        k.desc
                    )
                })
                .collect();
            (0, out)
        }
        ["api_keys", "add", name, rest @ ..] if rest.len() <= 1 => {
            let role = match rest.first() {
                None => Role::Administrator,
                Some(r) => match Role::parse(r) {
                    Some(r) => r,
                    None => return (1, format!("Error: unknown role {r:?}\n")),
                },
            };
            match auth.add_api_key(name, role, None, "created by ctl".into()) {
                Ok((key, secret, _)) => (
                    0,
                    format!(
                        "api_key: {key}\napi_secret: {secret}\n(the secret is not shown again)\n"
                    ),
                ),
                Err(e) => (1, format!("Error: {e}\n")),
            }
        }
        ["api_keys", "del", name] => match auth.delete_api_key(name) {
            Ok(true) => ok(),
            Ok(false) => (1, "Error: API key not found\n".into()),
            Err(e) => (1, format!("Error: {e}\n")),
        },
        ["api_keys", op @ ("enable" | "disable"), name] => {
            let change = KeyChange {
                enable: Some(*op == "enable"),
                ..Default::default()
            };
            match auth.update_api_key(name, change) {
                Some(Ok(_)) => ok(),
                Some(Err(e)) => (1, format!("Error: {e}\n")),
                None => (1, "Error: API key not found\n".into()),
            }
        }
        _ => unknown("api_keys"),
    }
}

/// `alarms list|history`: every node's alarms (`--local`: this node's).
/// `durable status`: what this node keeps in its durable store.
async fn cmd_durable(node: &Node, w: &[&str]) -> (i32, String) {
    if w != ["durable", "status"] {
        return unknown("durable");
    }
    use emqx_actors::journal;
    let d = &node.durable;
    let st = &d.stats;
    let count = |t: &'static str| match d.count(t) {
        Ok(n) => n.to_string(),
        Err(e) => format!("unreadable ({e})"),
    };
    let size = std::fs::metadata(d.path())
        .map(|m| m.len().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let load = std::sync::atomic::Ordering::Acquire;
    let rows = [
        ("store", d.path().display().to_string()),
        ("size_bytes", size),
        (
            "durable_sessions",
            if node.ctx.broker.journal.is_some() {
                "enabled"
            } else {
                "disabled"
            }
            .to_string(),
        ),
        ("commits", st.commits.load(load).to_string()),
        ("changes", st.ops.load(load).to_string()),
        ("pending", st.pending().to_string()),
        ("failures", st.failures.load(load).to_string()),
        ("sessions", count(journal::SESSIONS_TABLE)),
        ("messages", count(journal::MESSAGES_TABLE)),
        ("queued", count(journal::QUEUE_TABLE)),
        ("awaiting_rel", count(journal::REL_TABLE)),
        ("qos2_sent", count(journal::SENT_TABLE)),
        ("pubrel_owed", count(journal::PUBREL_TABLE)),
        ("retained", count(emqx_actors::retainer::RETAINED_TABLE)),
        ("parked", count(emqx_actors::parking::PARKED_TABLE)),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<17}: {v}\n"));
    }
    (0, out)
}

/// `ds info`: each shard as this core sees it, then as every other
/// running node does (`--local`: this node only). Lag (log entries a
/// replica is behind) is known on the shard's leader.
async fn cmd_ds(node: &Node, w: &[&str]) -> (i32, String) {
    let local = match w {
        ["ds", "info"] => false,
        ["ds", "info", "--local"] => true,
        _ => return unknown("ds"),
    };
    let mut out = String::new();
    match &node.ds {
        Some(ds) if !ds.holds_replicas() => out.push_str(&format!(
            "Node {}: holds no replica of the {} shard(s) (a replicant reaches them through the cores)\n",
            node.name,
            ds.n_shards()
        )),
        None => out.push_str(&format!(
            "Node {}: runs no durable storage shards (durable_storage.messages.backend is not builtin_raft)\n",
            node.name
        )),
        Some(ds) => {
            let rows = node
                .durable
                .count(emqx_actors::cluster::ds::LOG_TABLE)
                .map(|n| n.to_string())
                .unwrap_or_else(|e| format!("unreadable ({e})"));
            let size = std::fs::metadata(node.durable.path())
                .map(|m| m.len().to_string())
                .unwrap_or_else(|e| format!("unknown ({e})"));
            out.push_str(&format!(
                "Node {}: {} shard(s), replication factor {}, {} site(s) to start; {rows} log entries kept in {} ({size} bytes)\n",
                node.name,
                ds.n_shards(),
                ds.rf(),
                ds.n_sites(),
                node.durable.path().display(),
            ));
            out.push_str(&format!(
                "{:<5} {:<9} {:<23} {:>5} {:>9} {:>9} {:>9}  {:<39} {}\n",
                "shard",
                "state",
                "leader",
                "term",
                "last_log",
                "applied",
                "snapshot",
                "voters (learners)",
                "lag"
            ));
            let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
            for st in ds.status() {
                let mut voters = st.voters.join(",");
                if !st.learners.is_empty() {
                    voters.push_str(&format!(" ({})", st.learners.join(",")));
                }
                let lag = if st.lag.is_empty() {
                    "-".to_string()
                } else {
                    st.lag
                        .iter()
                        .map(|(n, l)| format!("{n}={l}"))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                out.push_str(&format!(
                    "{:<5} {:<9} {:<23} {:>5} {:>9} {:>9} {:>9}  {:<39} {}\n",
                    st.shard,
                    st.state,
                    st.leader.as_deref().unwrap_or("-"),
                    st.term,
                    opt(st.last_log),
                    opt(st.applied),
                    opt(st.snapshot),
                    if voters.is_empty() {
                        "-".into()
                    } else {
                        voters
                    },
                    lag
                ));
            }
        }
    }
    if !local {
        for (_, o) in on_peers(node, &["ds", "info", "--local"]).await {
            out.push_str(&o);
        }
    }
    (0, out)
}

async fn cmd_alarms(node: &Node, w: &[&str]) -> (i32, String) {
    let (which, rest) = match w {
        ["alarms", which @ ("list" | "history"), rest @ ..]
            if rest.is_empty() || rest == ["--local"] =>
        {
            (*which, rest)
        }
        _ => return unknown("alarms"),
    };
    let time = |us: u64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_micros(us))
            .to_string()
    };
    let alarms = &node.ctx.alarms;
    let list = if which == "list" {
        alarms.active()
    } else {
        alarms.history(emqx_actors::clock::now_ms() * 1000)
    };
    let mut out = String::new();
    for a in list {
        out.push_str(&format!(
            "{} (node={}, activated={}",
            a.name,
            node.name,
            time(a.activate_at_us)
        ));
        if let Some(d) = a.deactivate_at_us {
            out.push_str(&format!(", deactivated={}", time(d)));
        }
        out.push_str(&format!(
            ", message={:?}, details={})\n",
            a.message, a.details
        ));
    }
    let none = if which == "list" {
        "No active alarms.\n"
    } else {
        "No deactivated alarms.\n"
    };
    if rest.is_empty() {
        for (_, o) in on_peers(node, &["alarms", which, "--local"]).await {
            if o != none {
                out.push_str(&o);
            }
        }
    }
    if out.is_empty() {
        return (0, none.into());
    }
    (0, out)
}

/// `banned ...`: bans replicated to every node (EMQX manages them over its
/// HTTP API; these commands are ours).
async fn cmd_banned(node: &Node, w: &[&str]) -> (i32, String) {
    use emqx_actors::banned::{Ban, BanKind};
    let banned = &node.ctx.banned;
    let now = emqx_actors::clock::now_ms();
    let time = |ms: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    let kind = |s: &str| {
        BanKind::from_name(s).ok_or_else(|| {
            (
                1,
                format!(
                    "unknown ban type {s:?}: expected {}\n",
                    BanKind::ALL.join(", ")
                ),
            )
        })
    };
    match w {
        ["banned", "list"] => {
            banned.purge_expired(now);
            let mut out = String::new();
            for b in banned.list() {
                out.push_str(&format!(
                    "{} {} (reason={:?}, by={}, at={}, until={})\n",
                    b.kind.name(),
                    b.who,
                    b.reason,
                    b.by,
                    time(b.at_ms),
                    b.until_ms.map_or("infinity".to_string(), time)
                ));
            }
            (0, out)
        }
        ["banned", "add", k, who, rest @ ..] => {
            let kind = match kind(k) {
                Ok(k) => k,
                Err(e) => return e,
            };
            let (until_ms, reason) = match rest {
                [] => (None, String::new()),
                [d, reason @ ..] => {
                    let until = if *d == "infinity" {
                        None
                    } else {
                        match humantime::parse_duration(d) {
                            Ok(d) if !d.is_zero() => Some(now.saturating_add(d.as_millis() as u64)),
                            _ => {
                                return (
                                    1,
                                    format!(
                                    "bad duration {d:?}: expected 30s, 10m, 1h, 7d or infinity\n"
                                ),
                                )
                            }
                        }
                    };
                    (until, reason.join(" "))
                }
            };
            banned.purge_expired(now);
            let ban = Ban {
                kind,
                who: who.to_string(),
                reason,
                by: "ctl".into(),
                at_ms: now,
                until_ms,
            };
            match banned.add(ban) {
                Ok(()) => (0, "ok\n".into()),
                Err(e) => (1, format!("{e}\n")),
            }
        }
        ["banned", "del", k, who] => {
            let kind = match kind(k) {
                Ok(k) => k,
                Err(e) => return e,
            };
            match banned.delete(kind, who) {
                Ok(()) => (0, "ok\n".into()),
                Err(e) => (1, format!("{e}\n")),
            }
        }
        _ => unknown("banned"),
    }
}

/// `listeners`: EMQX's listing (id, then `key : value` lines), and stop,
/// start and restart of one listener by its id (`tcp:default`).
async fn cmd_listeners(node: &Node, w: &[&str]) -> (i32, String) {
    use crate::listeners::spec::Action;
    use crate::listeners::State;
    use std::sync::atomic::Ordering;
    let find = |id: &str| node.listeners.find(id).cloned();
    let failed =
        |verb: &str, id: &str, why: &str| (1, format!("Failed to {verb} {id} listener: {why}\n"));
    match w {
        ["listeners"] => {
            let mut out = String::new();
            for l in &node.listeners.all {
                let state = l.state();
                let max = l
                    .max_connections
                    .map_or("infinity".to_string(), |m| m.to_string());
                out.push_str(&format!("{}\n", l.id));
                for (k, v) in [
                    ("listen_on", l.bind.to_string()),
                    ("acceptors", l.acceptors.to_string()),
                    ("proxy_protocol", l.proxy_protocol().to_string()),
                    ("running", (state == State::Running).to_string()),
                    ("current_conn", l.open.load(Ordering::Relaxed).to_string()),
                    ("max_conns", max),
                ] {
                    out.push_str(&format!("  {k:<16}: {v}\n"));
                }
            }
            (0, out)
        }
        ["listeners", verb @ ("stop" | "start" | "restart"), id] => {
            let Some(l) = find(id) else {
                return (1, format!("Invalid listener: {id}\n"));
            };
            let Some(action) = Action::parse(verb) else {
                return unknown("listeners");
            };
            let done = match action {
                Action::Stop => "Stop",
                Action::Start => "Started",
                Action::Restart => "Restarted",
            };
            match l.act(action).await {
                Ok(()) => (0, format!("{done} {id} listener successfully.\n")),
                Err(e) => failed(verb, id, &e),
            }
        }
        _ => unknown("listeners"),
    }
}

async fn cmd_retainer(node: &Node, w: &[&str]) -> (i32, String) {
    let ctx = &node.ctx;
    match w {
        ["retainer", rest @ ..] if !ctx.broker.retainer.enabled() && !rest.is_empty() => {
            (1, "Retainer is not enabled\n".into())
        }
        ["retainer", "info"] => (
            0,
            format!(
                "Number of retained messages: {}\n",
                ctx.broker.retainer.count()
            ),
        ),
        ["retainer", "topics", page @ ..] => {
            let topics = ctx.broker.retainer.topics();
            let (start, len) = match page {
                [s, l] => (
                    s.parse::<usize>().unwrap_or(1).max(1),
                    l.parse::<usize>().unwrap_or(1000),
                ),
                _ => (1, 1000),
            };
            let mut out = format!("Number of retained messages: {}\n", topics.len());
            for t in topics.iter().skip((start - 1) * len).take(len) {
                out.push_str(t);
                out.push('\n');
            }
            (0, out)
        }
        ["retainer", "clean"] => {
            ctx.broker.retainer.clean(None);
            ok()
        }
        ["retainer", "clean", t] => {
            ctx.broker.retainer.clean(Some(t));
            ok()
        }
        _ => unknown("retainer"),
    }
}

/// Calls the cluster service and returns its text as the command output.
async fn call_cluster<F>(node: &Node, msg: F, timeout_s: u64) -> (i32, String)
where
    F: FnOnce(RpcReplyPort<String>) -> SvcMsg,
{
    match node
        .cluster
        .call(msg, Some(Duration::from_secs(timeout_s)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(out)) => {
            let code = if out.starts_with("Failed") { 1 } else { 0 };
            (code, out)
        }
        _ => (1, "Error: the cluster service did not answer\n".into()),
    }
}

/// Runs a ctl command on every running peer through its control actor.
async fn on_peers(node: &Node, words: &[&str]) -> Vec<(String, String)> {
    let peers = match node
        .cluster
        .call(SvcMsg::RunningPeers, Some(Duration::from_secs(5)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(p)) => p,
        _ => return Vec::new(),
    };
    let req = serde_json::to_string(words).unwrap_or_else(|_| "[]".into());
    let mut out = Vec::new();
    for p in peers {
        let r = call_control(&p, ControlKind::Run, req.clone(), Duration::from_secs(10)).await;
        if let Some(s) = r {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                out.push((p, v["out"].as_str().unwrap_or("").to_string()));
            }
        }
    }
    out
}

/// Routes of this node and of every other node, sorted.
fn all_routes(node: &Node) -> Vec<(String, String)> {
    let mut r = node.ctx.broker.routes();
    r.extend(node.view.routes.read().all());
    r.sort();
    r.dedup();
    r
}

fn chrono_like_now() -> String {
    // RFC 3339 in UTC without an extra date crate.
    let ms = emqx_actors::clock::now_ms();
    let secs = ms / 1000;
    let days = secs / 86400;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// One `clients list` line, in EMQX's shape.
pub fn format_client(i: &ClientInfo, node: &str) -> String {
    let mut s = format!(
        "Client({}, username={}, peername={}, clean_start={}, keepalive={}, session_expiry_interval={}, subscriptions={}, inflight={}, awaiting_rel={}, delivered_msgs={}, enqueued_msgs={}, dropped_msgs={}, connected={}, created_at={}, connected_at={}",
        i.client_id,
        i.username.as_deref().unwrap_or("undefined"),
        i.peer.as_deref().unwrap_or("undefined"),
        i.clean_start,
        i.keepalive,
        i.session_expiry,
        i.subscriptions.len(),
        i.inflight,
        i.awaiting_rel,
        i.delivered,
        i.enqueued,
        i.dropped,
        i.connected,
        i.created_at,
        i.connected_at
    );
    if let Some(d) = i.disconnected_at {
        s.push_str(&format!(", disconnected_at={d}"));
    }
    s.push_str(&format!(", node={node})\n"));
    s
}

fn format_subs(i: &ClientInfo) -> Vec<String> {
    i.subscriptions
        .iter()
        .map(|(t, o)| {
            format!(
                "{} -> topic:{} qos:{} nl:{} rh:{} rap:{}\n",
                i.client_id,
                t,
                o.qos as u8,
                u8::from(o.no_local),
                o.retain_handling as u8,
                u8::from(o.retain_as_published)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lines_are_padded_and_commented() {
        let u = usage(Some("retainer"));
        assert!(u.lines().all(|l| l.contains(" # ")));
        let col: Vec<usize> = u.lines().map(|l| l.find(" # ").unwrap_or(0)).collect();
        assert!(col.windows(2).all(|w| w[0] == w[1]), "{u}");
        assert!(usage(None).starts_with("Usage: emqx-rs ctl\n"));
    }

    #[test]
    fn datetime_is_rfc3339() {
        let d = chrono_like_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.ends_with('Z'));
    }
}
