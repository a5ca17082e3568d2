//! `$SYS/brokers/<node>/...` topics: broker identity, uptime, stats,
//! metrics, and client connected/disconnected events.

use crate::clock::now_ms;
use crate::outbox::ConnHandle;
use crate::Ctx;
use emqx_mqtt::channel::Channel;
use emqx_mqtt::message::Message;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use crate::SysSettings;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const SYSDESCR: &str = "emqx-rs";

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Formats seconds the way EMQX prints uptime: `1 days, 2 hours, 3 minutes, 4 seconds`.
pub fn human_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d} days"));
    }
    if d > 0 || h > 0 {
        parts.push(format!("{h} hours"));
    }
    if d > 0 || h > 0 || m > 0 {
        parts.push(format!("{m} minutes"));
    }
    parts.push(format!("{s} seconds"));
    parts.join(", ")
}

impl Ctx {
    fn sys_topic(&self, rest: &str) -> String {
        format!("$SYS/brokers/{}/{}", self.node, rest)
    }

    /// Publishes a client connected/disconnected event.
    pub fn sys_client_event(
        &self,
        ch: &Channel,
        conn: Option<&ConnHandle>,
        connected: bool,
        reason: &str,
    ) {
        let enabled = if connected {
            self.sys.client_connected
        } else {
            self.sys.client_disconnected
        };
        if !enabled {
            return;
        }
        let payload = if connected {
            format!(
                "{{\"clientid\":{},\"username\":{},\"ipaddress\":{},\"proto_ver\":{},\"keepalive\":{},\"clean_start\":{},\"connected_at\":{},\"ts\":{}}}",
                json_str(&ch.client_id),
                ch.conn.username.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
                json_str(&conn.map(|c| c.peer.ip().to_string()).unwrap_or_default()),
                ch.conn.version.level(),
                ch.conn.keepalive,
                ch.conn.clean_start,
                ch.conn.connected_at_ms,
                now_ms()
            )
        } else {
            format!(
                "{{\"clientid\":{},\"username\":{},\"reason\":{},\"disconnected_at\":{},\"ts\":{}}}",
                json_str(&ch.client_id),
                ch.conn.username.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
                json_str(reason),
                now_ms(),
                now_ms()
            )
        };
        let what = if connected {
            "connected"
        } else {
            "disconnected"
        };
        let t = self.sys_topic(&format!("clients/{}/{}", ch.client_id, what));
        self.broker
            .publish(Message::system(t, payload, false, now_ms()));
    }

    /// Publishes a cluster node up/down event and counts it.
    pub fn sys_node_event(&self, node: &str, up: bool) {
        let m = &self.broker.metrics;
        crate::metrics::inc(if up {
            &m.cluster_nodes_up
        } else {
            &m.cluster_nodes_down
        });
        let what = if up { "nodeup" } else { "nodedown" };
        let t = self.sys_topic(&format!("cluster/{what}"));
        let payload = format!("{{\"node\":{},\"ts\":{}}}", json_str(node), now_ms());
        self.broker
            .publish(Message::system(t, payload, false, now_ms()));
    }

    /// Raises alarm `name` (nothing when it is active already): logs it and
    /// publishes `$SYS/brokers/<node>/alarms/activate`, as
    /// `alarm.actions` say.
    pub fn alarm_activate(&self, name: &str, details: serde_json::Value, message: String) {
        let now_us = now_ms() * 1000;
        if let Some(a) = self.alarms.activate(name, details, message, now_us) {
            self.alarm_changed(&a, "activate");
        }
    }

    /// Clears alarm `name` (nothing when it is not active).
    pub fn alarm_deactivate(&self, name: &str) {
        let now_us = now_ms() * 1000;
        if let Some(a) = self.alarms.deactivate(name, now_us) {
            self.alarm_changed(&a, "deactivate");
        }
    }

    fn alarm_changed(&self, a: &crate::alarms::Alarm, what: &str) {
        let s = self.alarms.settings();
        if s.log {
            if what == "activate" {
                tracing::warn!(alarm = %a.name, "alarm raised: {}", a.message);
            } else {
                tracing::warn!(alarm = %a.name, "alarm cleared: {}", a.message);
            }
        }
        if s.publish {
            let t = self.sys_topic(&format!("alarms/{what}"));
            let mut m = Message::system(t, a.sys_payload().to_string(), false, now_ms());
            m.properties.content_type = Some("application/json".into());
            self.broker.publish(m);
        }
    }

    /// Publishes a cluster event (`autoclean`, ...) about a node.
    pub fn sys_cluster_event(&self, what: &str, node: &str) {
        let t = self.sys_topic(&format!("cluster/{what}"));
        let payload = format!("{{\"node\":{},\"ts\":{}}}", json_str(node), now_ms());
        self.broker
            .publish(Message::system(t, payload, false, now_ms()));
    }

    /// The stats gauges as `(name, value)`, sorted, named as EMQX names them.
    pub fn stats(&self) -> Vec<(&'static str, i64)> {
        let s = &self.broker.stats;
        let l = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed);
        let retained = self.broker.retainer.count() as i64;
        let topics = self.broker.topics_count() as i64;
        let mut v = vec![
            ("connections.count", l(&s.connections)),
            ("connections.max", l(&s.connections_max)),
            ("live_connections.count", l(&s.live_connections)),
            ("sessions.count", l(&s.sessions)),
            ("sessions.max", l(&s.sessions_max)),
            ("subscriptions.count", l(&s.subscriptions)),
            ("subscriptions.max", l(&s.subscriptions_max)),
            ("subscriptions.shared.count", l(&s.shared_subscriptions)),
            ("retained.count", retained),
            ("topics.count", topics),
        ];
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Publishes version, sysdescr (retained), then uptime/datetime and
    /// stats/metrics every period until the node stops the returned task.
    pub fn spawn_sys(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ctx = self.clone();
        tokio::spawn(async move {
            ctx.broker.publish(Message::system(
                ctx.sys_topic("version"),
                VERSION,
                true,
                now_ms(),
            ));
            ctx.broker.publish(Message::system(
                ctx.sys_topic("sysdescr"),
                SYSDESCR,
                true,
                now_ms(),
            ));
            let hb = ctx.sys.sys_heartbeat_interval;
            let msg = ctx.sys.sys_msg_interval;
            let tick = Duration::from_secs(1);
            let mut since_hb = Duration::ZERO;
            let mut since_msg = Duration::ZERO;
            loop {
                tokio::time::sleep(tick).await;
                since_hb += tick;
                since_msg += tick;
                if !hb.is_zero() && since_hb >= hb {
                    since_hb = Duration::ZERO;
                    let up = ctx.started_at.elapsed().as_secs();
                    ctx.broker.publish(Message::system(
                        ctx.sys_topic("uptime"),
                        human_uptime(up),
                        false,
                        now_ms(),
                    ));
                    ctx.broker.publish(Message::system(
                        ctx.sys_topic("datetime"),
                        now_ms().to_string(),
                        false,
                        now_ms(),
                    ));
                }
                if !msg.is_zero() && since_msg >= msg {
                    since_msg = Duration::ZERO;
                    for (k, v) in ctx.stats() {
                        let t = ctx.sys_topic(&format!("stats/{}", k.replace('.', "/")));
                        ctx.broker
                            .publish(Message::system(t, v.to_string(), false, now_ms()));
                    }
                    for (k, v) in ctx.broker.metrics.snapshot() {
                        let t = ctx.sys_topic(&format!("metrics/{}", k.replace('.', "/")));
                        ctx.broker
                            .publish(Message::system(t, v.to_string(), false, now_ms()));
                    }
                    ctx.broker.retainer.purge_expired();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_emqx() {
        assert_eq!(human_uptime(5), "5 seconds");
        assert_eq!(human_uptime(65), "1 minutes, 5 seconds");
        assert_eq!(human_uptime(90061), "1 days, 1 hours, 1 minutes, 1 seconds");
    }
}
