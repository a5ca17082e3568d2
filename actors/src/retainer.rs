//! Retained messages: the last retained PUBLISH of each topic.
//!
//! A plain map behind a `RwLock`: retained messages are read when a client
//! subscribes and written by publishes with the retain flag, both far less
//! often than ordinary publishes, so a lock is cheaper than an actor round
//! trip and keeps `retainer info` answers consistent.

use crate::clock::now_ms;
use emqx_mqtt::message::Message;
use emqx_mqtt::topic;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the retainer (`retainer.*` in emqx.conf).
#[derive(Debug, Clone)]
pub struct RetainerSettings {
    pub enable: bool,
    /// 0 means no limit.
    pub max_retained_messages: usize,
    pub max_payload_size: usize,
    /// Expiry for retained messages that carry no message expiry; zero = never.
    pub msg_expiry_interval: Duration,
}

impl Default for RetainerSettings {
    fn default() -> Self {
        RetainerSettings {
            enable: true,
            max_retained_messages: 0,
            max_payload_size: 1024 * 1024,
            msg_expiry_interval: Duration::ZERO,
        }
    }
}

/// Why a retained message was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainRefused {
    Disabled,
    PayloadTooLarge,
    Full,
}

pub struct Retainer {
    settings: RetainerSettings,
    msgs: RwLock<HashMap<Arc<str>, Arc<Message>>>,
}

impl Retainer {
    pub fn new(settings: RetainerSettings) -> Retainer {
        Retainer {
            settings,
            msgs: RwLock::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enable
    }

    fn expired(&self, m: &Message, now: u64) -> bool {
        if m.expiry_secs.is_some() {
            return m.is_expired(now);
        }
        let d = self.settings.msg_expiry_interval;
        !d.is_zero() && now >= m.timestamp_ms + d.as_millis() as u64
    }

    /// Stores (or, for an empty payload, clears) the retained message of a topic.
    pub fn store(&self, msg: &Arc<Message>) -> Result<(), RetainRefused> {
        if !self.settings.enable {
            return Err(RetainRefused::Disabled);
        }
        let mut map = self.msgs.write();
        if msg.payload.is_empty() {
            map.remove(&msg.topic);
            return Ok(());
        }
        if msg.payload.len() > self.settings.max_payload_size {
            return Err(RetainRefused::PayloadTooLarge);
        }
        let max = self.settings.max_retained_messages;
        if max > 0 && map.len() >= max && !map.contains_key(&msg.topic) {
            return Err(RetainRefused::Full);
        }
        map.insert(msg.topic.clone(), msg.clone());
        Ok(())
    }

    /// Every live retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = now_ms();
        let map = self.msgs.read();
        if !topic::is_wildcard(filter) {
            return map
                .get(filter)
                .filter(|m| !self.expired(m, now))
                .cloned()
                .into_iter()
                .collect();
        }
        map.values()
            .filter(|m| topic::matches(filter, &m.topic) && !self.expired(m, now))
            .cloned()
            .collect()
    }

    /// Every live retained message (for a node joining the cluster).
    pub fn all(&self) -> Vec<Arc<Message>> {
        let now = now_ms();
        self.msgs
            .read()
            .values()
            .filter(|m| !self.expired(m, now))
            .cloned()
            .collect()
    }

    /// Number of retained messages (expired ones included until cleaned).
    pub fn count(&self) -> usize {
        self.msgs.read().len()
    }

    /// Sorted retained topics.
    pub fn topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.msgs.read().keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Removes all retained messages, or those matching `filter`; returns how many.
    pub fn clean(&self, filter: Option<&str>) -> usize {
        let mut map = self.msgs.write();
        let before = map.len();
        match filter {
            None => map.clear(),
            Some(f) => map.retain(|t, _| !topic::matches(f, t)),
        }
        before - map.len()
    }

    /// Drops expired messages; run periodically.
    pub fn purge_expired(&self) -> usize {
        let now = now_ms();
        let mut map = self.msgs.write();
        let before = map.len();
        map.retain(|_, m| !self.expired(m, now));
        before - map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::system(
            topic,
            payload,
            true,
            crate::clock::now_ms(),
        ))
    }

    #[test]
    fn the_last_retained_message_per_topic_is_kept_and_empty_payload_clears() {
        let r = Retainer::new(RetainerSettings::default());
        r.store(&msg("a/b", "1")).expect("store");
        r.store(&msg("a/b", "2")).expect("store");
        r.store(&msg("a/c", "3")).expect("store");
        assert_eq!(r.count(), 2);
        assert_eq!(r.matching("a/b")[0].payload, "2");
        assert_eq!(r.matching("a/+").len(), 2);
        r.store(&msg("a/b", "")).expect("clear");
        assert_eq!(r.topics(), vec!["a/c".to_string()]);
    }

    #[test]
    fn wildcards_follow_the_dollar_rule() {
        let r = Retainer::new(RetainerSettings::default());
        r.store(&msg("$SYS/x", "1")).expect("store");
        r.store(&msg("x", "2")).expect("store");
        assert_eq!(r.matching("#").len(), 1);
        assert_eq!(r.matching("$SYS/#").len(), 1);
    }

    #[test]
    fn limits_refuse_and_expiry_hides() {
        let r = Retainer::new(RetainerSettings {
            max_retained_messages: 1,
            max_payload_size: 3,
            ..Default::default()
        });
        r.store(&msg("a", "1")).expect("store");
        assert_eq!(r.store(&msg("b", "1")), Err(RetainRefused::Full));
        assert_eq!(
            r.store(&msg("a", "1234")),
            Err(RetainRefused::PayloadTooLarge)
        );
        r.store(&msg("a", "22"))
            .expect("replacing is allowed when full");
        let mut old = Message::system("a", "x", true, crate::clock::now_ms());
        old.expiry_secs = Some(1);
        old.timestamp_ms = 0;
        r.store(&Arc::new(old)).expect("store");
        assert!(r.matching("a").is_empty());
        assert_eq!(r.purge_expired(), 1);
        let off = Retainer::new(RetainerSettings {
            enable: false,
            ..Default::default()
        });
        assert_eq!(off.store(&msg("a", "1")), Err(RetainRefused::Disabled));
    }

    #[test]
    fn clean_by_filter_or_all() {
        let r = Retainer::new(RetainerSettings::default());
        for t in ["a/1", "a/2", "b/1"] {
            r.store(&msg(t, "x")).expect("store");
        }
        assert_eq!(r.clean(Some("a/#")), 2);
        assert_eq!(r.clean(None), 1);
        assert_eq!(r.count(), 0);
    }
}
