//! Node-wide counters (`broker metrics`) and gauges (`broker stats`).
//!
//! Plain atomics: every connection bumps them on the hot path, so they must
//! never take a lock. Names follow EMQX's metric names so dashboards and
//! `$SYS` consumers read the same keys.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! counters {
    ($name:ident { $($field:ident => $key:literal),* $(,)? }) => {
        /// Monotonic counters, named as in EMQX's `emqx ctl broker metrics`.
        #[derive(Debug, Default)]
        pub struct $name { $(pub $field: AtomicU64,)* }
        impl $name {
            /// `(name, value)` pairs sorted by name.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                let mut v = vec![$(($key, self.$field.load(Ordering::Relaxed)),)*];
                v.sort_by_key(|(k, _)| *k);
                v
            }
        }
    };
}

counters!(Metrics {
    bytes_received => "bytes.received",
    bytes_sent => "bytes.sent",
    packets_received => "packets.received",
    packets_sent => "packets.sent",
    packets_connect => "packets.connect.received",
    packets_connack_sent => "packets.connack.sent",
    packets_connack_error => "packets.connack.error",
    packets_connack_auth_error => "packets.connack.auth_error",
    packets_publish_received => "packets.publish.received",
    packets_publish_sent => "packets.publish.sent",
    packets_publish_error => "packets.publish.error",
    packets_publish_auth_error => "packets.publish.auth_error",
    packets_puback_received => "packets.puback.received",
    packets_puback_sent => "packets.puback.sent",
    packets_subscribe_received => "packets.subscribe.received",
    packets_unsubscribe_received => "packets.unsubscribe.received",
    packets_pingreq_received => "packets.pingreq.received",
    packets_disconnect_received => "packets.disconnect.received",
    packets_disconnect_sent => "packets.disconnect.sent",
    packets_malformed => "packets.malformed",
    messages_received => "messages.received",
    messages_sent => "messages.sent",
    messages_qos0_received => "messages.qos0.received",
    messages_qos1_received => "messages.qos1.received",
    messages_qos2_received => "messages.qos2.received",
    messages_delivered => "messages.delivered",
    messages_dropped => "messages.dropped",
    messages_dropped_no_subscribers => "messages.dropped.no_subscribers",
    messages_retained => "messages.retained",
    delivery_dropped => "delivery.dropped",
    delivery_dropped_queue_full => "delivery.dropped.queue_full",
    delivery_dropped_qos0 => "delivery.dropped.qos0_msg",
    delivery_dropped_expired => "delivery.dropped.expired",
    delivery_dropped_too_large => "delivery.dropped.too_large",
    messages_publish => "messages.publish",
    client_connected => "client.connected",
    client_disconnected => "client.disconnected",
    client_subscribe => "client.subscribe",
    client_unsubscribe => "client.unsubscribe",
    client_throttled => "client.throttled",
    client_slow_consumer => "client.slow_consumer",
    client_force_shutdown => "client.force_shutdown",
    connections_refused_max_connections => "connections.refused.max_connections",
    overload_protection_new_conn => "overload_protection.new_conn",
    overload_protection_shed => "overload_protection.shed",
    session_created => "session.created",
    session_resumed => "session.resumed",
    session_takenover => "session.takenover",
    session_discarded => "session.discarded",
    session_terminated => "session.terminated",
    session_hibernated => "session.hibernated",
    session_woken => "session.woken",
    cluster_joined => "cluster.joined",
    cluster_nodes_up => "cluster.nodes.up",
    cluster_nodes_down => "cluster.nodes.down",
    cluster_autocleaned => "cluster.autoclean.removed",
    cluster_partition_detected => "cluster.partition.detected",
    cluster_partition_healed => "cluster.partition.healed",
    cluster_autoheal_restarts => "cluster.autoheal.restarts",
    messages_forward => "messages.forward",
    messages_forward_dropped => "messages.forward.dropped",
    messages_forwarded_in => "messages.forwarded.received",
});

/// Current values (gauges) plus their high-water marks.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicI64,
    pub live_connections: AtomicI64,
    pub sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub subscribers: AtomicI64,
    pub shared_subscriptions: AtomicI64,
    pub connections_max: AtomicI64,
    pub sessions_max: AtomicI64,
    pub subscriptions_max: AtomicI64,
}

impl Stats {
    /// Adds `delta` to a gauge and raises its `max` companion if needed.
    pub fn add(gauge: &AtomicI64, max: Option<&AtomicI64>, delta: i64) {
        let v = gauge.fetch_add(delta, Ordering::Relaxed) + delta;
        if let Some(m) = max {
            m.fetch_max(v, Ordering::Relaxed);
        }
    }
}

/// Shorthand for a relaxed increment.
#[inline]
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Shorthand for a relaxed add.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_sorted_and_counts() {
        let m = Metrics::default();
        inc(&m.messages_received);
        add(&m.bytes_sent, 10);
        let s = m.snapshot();
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(s.contains(&("messages.received", 1)));
        assert!(s.contains(&("bytes.sent", 10)));
    }

    #[test]
    fn gauges_track_their_maximum() {
        let s = Stats::default();
        Stats::add(&s.connections, Some(&s.connections_max), 3);
        Stats::add(&s.connections, Some(&s.connections_max), -2);
        assert_eq!(s.connections.load(Ordering::Relaxed), 1);
        assert_eq!(s.connections_max.load(Ordering::Relaxed), 3);
    }
}
