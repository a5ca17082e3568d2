//! This node's alarms (EMQX's emqx_alarm): conditions an operator should
//! know of while they last (a slow consumer, a node past its memory
//! watermark), each under a unique name. Activating a name that is active
//! does nothing; deactivating moves the alarm to a bounded history
//! (`alarm.size_limit` entries, none older than `alarm.validity_period`).
//! What the node does on a change (log, `$SYS` message) is its caller's
//! business: see `Ctx::alarm_activate`.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// `alarm.*` of emqx.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmSettings {
    /// Log a warning when an alarm is raised or cleared (`log` in
    /// `alarm.actions`).
    pub log: bool,
    /// Publish `$SYS/brokers/<node>/alarms/activate|deactivate` (`publish`
    /// in `alarm.actions`).
    pub publish: bool,
    /// Deactivated alarms kept (`alarm.size_limit`, 1..3000).
    pub size_limit: usize,
    /// How long deactivated alarms are kept (`alarm.validity_period`).
    pub validity_period: Duration,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            log: true,
            publish: true,
            size_limit: 1000,
            validity_period: Duration::from_secs(24 * 3600),
        }
    }
}

/// One alarm, active or past.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub name: String,
    pub message: String,
    pub details: serde_json::Value,
    /// Wall-clock microseconds, as EMQX's `$SYS` payloads carry them.
    pub activate_at_us: u64,
    /// `None` while active.
    pub deactivate_at_us: Option<u64>,
}

impl Alarm {
    /// The `$SYS/brokers/<node>/alarms/...` payload: EMQX's fields.
    pub fn sys_payload(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "details": self.details,
            "message": self.message,
            "activate_at": self.activate_at_us,
            "deactivate_at": match self.deactivate_at_us {
                Some(t) => serde_json::json!(t),
                None => serde_json::json!("infinity"),
            },
            "activated": self.deactivate_at_us.is_none(),
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    active: BTreeMap<String, Alarm>,
    /// Deactivated, oldest first.
    history: VecDeque<Alarm>,
}

#[derive(Debug)]
pub struct Alarms {
    settings: AlarmSettings,
    inner: Mutex<Inner>,
}

impl Alarms {
    pub fn new(settings: AlarmSettings) -> Alarms {
        Alarms {
            settings,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn settings(&self) -> &AlarmSettings {
        &self.settings
    }

    /// Raises `name` at `now_us`. Returns the new alarm, or `None` when it
    /// was active already (the first raise stands).
    pub fn activate(
        &self,
        name: &str,
        details: serde_json::Value,
        message: String,
        now_us: u64,
    ) -> Option<Alarm> {
        let mut g = self.inner.lock();
        if g.active.contains_key(name) {
            return None;
        }
        let a = Alarm {
            name: name.to_string(),
            message,
            details,
            activate_at_us: now_us,
            deactivate_at_us: None,
        };
        g.active.insert(name.to_string(), a.clone());
        Some(a)
    }

    /// Clears `name` at `now_us` into the history. Returns it, or `None`
    /// when it was not active.
    pub fn deactivate(&self, name: &str, now_us: u64) -> Option<Alarm> {
        let mut g = self.inner.lock();
        let mut a = g.active.remove(name)?;
        a.deactivate_at_us = Some(now_us);
        g.history.push_back(a.clone());
        self.trim(&mut g, now_us);
        Some(a)
    }

    /// Active alarms, by name.
    pub fn active(&self) -> Vec<Alarm> {
        self.inner.lock().active.values().cloned().collect()
    }

    /// Deactivated alarms still kept at `now_us`, oldest first.
    pub fn history(&self, now_us: u64) -> Vec<Alarm> {
        let mut g = self.inner.lock();
        self.trim(&mut g, now_us);
        g.history.iter().cloned().collect()
    }

    /// Forgets the deactivated alarms (EMQX's `DELETE /alarms`).
    pub fn clear_history(&self) {
        self.inner.lock().history.clear();
    }

    fn trim(&self, g: &mut Inner, now_us: u64) {
        while g.history.len() > self.settings.size_limit {
            g.history.pop_front();
        }
        let keep = self.settings.validity_period.as_micros() as u64;
        while g
            .history
            .front()
            .is_some_and(|a| now_us.saturating_sub(a.deactivate_at_us.unwrap_or(now_us)) > keep)
        {
            g.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_once_clear_into_a_bounded_history() {
        let al = Alarms::new(AlarmSettings {
            size_limit: 2,
            validity_period: Duration::from_secs(10),
            ..AlarmSettings::default()
        });
        let a = al
            .activate("x", serde_json::json!({"k": 1}), "m".into(), 5)
            .expect("new");
        assert_eq!(a.activate_at_us, 5);
        assert!(
            al.activate("x", serde_json::json!({}), "again".into(), 6)
                .is_none(),
            "an active alarm is not raised twice"
        );
        assert_eq!(al.active()[0].message, "m", "the first raise stands");
        assert!(al.deactivate("nope", 7).is_none());
        let d = al.deactivate("x", 7).expect("was active");
        assert_eq!(d.deactivate_at_us, Some(7));
        assert!(al.active().is_empty());
        let p = d.sys_payload();
        assert_eq!(p["activated"], false);
        assert_eq!(p["deactivate_at"], 7);
        assert_eq!(a.sys_payload()["deactivate_at"], "infinity");
        // A name may be raised again once cleared.
        for (i, n) in ["x", "y", "z"].iter().enumerate() {
            let t = 10 + i as u64;
            al.activate(n, serde_json::Value::Null, String::new(), t);
            al.deactivate(n, t);
        }
        let names: Vec<String> = al.history(12).into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["y", "z"], "size_limit keeps the newest");
        // Older than the validity period: gone.
        let names: Vec<String> = al
            .history(11 + 10_000_001)
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["z"]);
        al.clear_history();
        assert!(al.history(0).is_empty());
    }
}
