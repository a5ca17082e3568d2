//! Retained messages: the last retained PUBLISH of each topic.
//!
//! A plain map behind a `RwLock`: retained messages are read when a client
//! subscribes and written by publishes with the retain flag, both far less
//! often than ordinary publishes, so a lock is cheaper than an actor round
//! trip and keeps `retainer info` answers consistent.
//!
//! With a [`Durable`] store (`retainer.backend.storage_type = disc`, the
//! default) every change is also written to its `retained` table, and a
//! client's retained publish is acknowledged once the write is on disk
//! (the [`Ticket`] that [`Retainer::store`] returns). A clear leaves a
//! tombstone (the topic and the time of the clear, kept
//! [`TOMBSTONE_TTL`]), so that a node that comes back with an older copy
//! and syncs with a peer ([`Retainer::merge_synced`]) keeps whichever of
//! the two is newer, a clear included.

use crate::clock::now_ms;
use crate::durable::{Durable, DurableError, Op, Ticket};
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

/// The durable store's table of retained messages (and tombstones).
pub const RETAINED_TABLE: &str = "retained";

/// How long the record of a clear is kept: a node away longer than this
/// may bring a cleared message back when it syncs.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct State {
    msgs: HashMap<Arc<str>, Arc<Message>>,
    /// Cleared topics and when (wall-clock ms of the clear).
    tombs: HashMap<Arc<str>, u64>,
}

/// Whether a retained entry `(timestamp, payload)` wins over another for
/// the same topic (a tombstone has an empty payload): the newer, and on
/// equal times the larger payload, so that every node picks the same one.
fn beats(a: (u64, &[u8]), b: (u64, &[u8])) -> bool {
    a > b
}

pub struct Retainer {
    settings: RetainerSettings,
    state: RwLock<State>,
    durable: Option<Durable>,
}

fn bincode_cfg() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn put_op(m: &Message) -> Option<Op> {
    match bincode::serde::encode_to_vec(m, bincode_cfg()) {
        Ok(value) => Some(Op::Put {
            table: RETAINED_TABLE,
            key: m.topic.as_bytes().to_vec(),
            value,
        }),
        Err(e) => {
            tracing::error!(topic = %m.topic, "retained message not written to disk: {e}");
            None
        }
    }
}

fn delete_op(topic: &str) -> Op {
    Op::Delete {
        table: RETAINED_TABLE,
        key: topic.as_bytes().to_vec(),
    }
}

impl Retainer {
    /// A retainer in memory only.
    pub fn new(settings: RetainerSettings) -> Retainer {
        Retainer {
            settings,
            state: RwLock::new(State::default()),
            durable: None,
        }
    }

    /// A retainer kept in `durable`, with what it holds: expired messages
    /// and old tombstones are dropped, a row that cannot be read is an
    /// error naming the file and the topic.
    pub fn open(settings: RetainerSettings, durable: Durable) -> Result<Retainer, DurableError> {
        let now = now_ms();
        let mut st = State::default();
        let mut stale = Vec::new();
        for (k, v) in durable.load(RETAINED_TABLE)? {
            let decoded: Result<(Message, usize), _> =
                bincode::serde::decode_from_slice(&v, bincode_cfg());
            let m = match decoded {
                Ok((m, _)) if m.topic.as_bytes() == k.as_slice() => m,
                Ok(_) => {
                    return Err(DurableError::Io {
                        path: durable.path().to_path_buf(),
                        error: format!(
                            "table {RETAINED_TABLE}: row {:?} holds another topic",
                            String::from_utf8_lossy(&k)
                        ),
                    })
                }
                Err(e) => {
                    return Err(DurableError::Io {
                        path: durable.path().to_path_buf(),
                        error: format!(
                            "table {RETAINED_TABLE}: row {:?} cannot be read: {e}",
                            String::from_utf8_lossy(&k)
                        ),
                    })
                }
            };
            let topic = m.topic.clone();
            if m.payload.is_empty() {
                if now
                    < m.timestamp_ms
                        .saturating_add(TOMBSTONE_TTL.as_millis() as u64)
                {
                    st.tombs.insert(topic, m.timestamp_ms);
                } else {
                    stale.push(delete_op(&topic));
                }
            } else if expired(&settings, &m, now) {
                stale.push(delete_op(&topic));
            } else {
                st.msgs.insert(topic, Arc::new(m));
            }
        }
        if !stale.is_empty() {
            durable.submit_nowait(stale);
        }
        Ok(Retainer {
            settings,
            state: RwLock::new(st),
            durable: Some(durable),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enable
    }

    /// Whether changes are written to disk.
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    fn expired(&self, m: &Message, now: u64) -> bool {
        expired(&self.settings, m, now)
    }

    /// Stores (or, for an empty payload, clears) the retained message of a
    /// topic. With a durable store, the ticket says when it is on disk.
    pub fn store(&self, msg: &Arc<Message>) -> Result<Option<Ticket>, RetainRefused> {
        if !self.settings.enable {
            return Err(RetainRefused::Disabled);
        }
        let mut st = self.state.write();
        if msg.payload.is_empty() {
            st.msgs.remove(&msg.topic);
            st.tombs.insert(msg.topic.clone(), msg.timestamp_ms);
            return Ok(self.persist(msg));
        }
        if msg.payload.len() > self.settings.max_payload_size {
            return Err(RetainRefused::PayloadTooLarge);
        }
        let max = self.settings.max_retained_messages;
        if max > 0 && st.msgs.len() >= max && !st.msgs.contains_key(&msg.topic) {
            return Err(RetainRefused::Full);
        }
        if !st.tombs.is_empty() {
            st.tombs.remove(&msg.topic);
        }
        st.msgs.insert(msg.topic.clone(), msg.clone());
        // Queued under the lock: the file takes the changes of a topic in
        // the order the memory did.
        Ok(self.persist(msg))
    }

    fn persist(&self, msg: &Message) -> Option<Ticket> {
        let d = self.durable.as_ref()?;
        Some(d.submit(vec![put_op(msg)?]))
    }

    fn persist_nowait(&self, ops: Vec<Op>) {
        if let (Some(d), false) = (&self.durable, ops.is_empty()) {
            d.submit_nowait(ops);
        }
    }

    /// Takes a peer's retained messages and tombstones (empty payloads)
    /// after this node was away: for each topic the newer of the two
    /// copies wins, a clear included. Returns what this node holds that
    /// is newer than the peer's copy or that the peer lacks, for the peer.
    pub fn merge_synced(&self, peer: Vec<Message>) -> Vec<Message> {
        let now = now_ms();
        let mut st = self.state.write();
        let mut ops = Vec::new();
        let mut seen: HashMap<Arc<str>, (u64, bytes::Bytes)> = HashMap::with_capacity(peer.len());
        for m in peer {
            seen.insert(m.topic.clone(), (m.timestamp_ms, m.payload.clone()));
            let local: Option<(u64, &[u8])> = match st.msgs.get(&m.topic) {
                Some(l) => Some((l.timestamp_ms, &l.payload[..])),
                None => st.tombs.get(&m.topic).map(|t| (*t, &[][..])),
            };
            if !local.is_none_or(|l| beats((m.timestamp_ms, &m.payload[..]), l)) {
                continue;
            }
            if m.payload.is_empty() {
                st.msgs.remove(&m.topic);
                st.tombs.insert(m.topic.clone(), m.timestamp_ms);
            } else if !self.expired(&m, now) {
                st.tombs.remove(&m.topic);
                st.msgs.insert(m.topic.clone(), Arc::new(m.clone()));
            } else {
                continue;
            }
            ops.extend(put_op(&m));
        }
        self.persist_nowait(ops);
        let mut back = Vec::new();
        for (t, m) in &st.msgs {
            let newer = seen
                .get(t)
                .is_none_or(|(ts, p)| beats((m.timestamp_ms, &m.payload[..]), (*ts, &p[..])));
            if newer && !self.expired(m, now) {
                back.push((**m).clone());
            }
        }
        for (t, ts) in &st.tombs {
            if let Some((pts, p)) = seen.get(t) {
                if !p.is_empty() && beats((*ts, &[]), (*pts, &p[..])) {
                    back.push(Message::system(t.clone(), bytes::Bytes::new(), true, *ts));
                }
            }
        }
        back
    }

    /// Every live retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = now_ms();
        let st = self.state.read();
        if !topic::is_wildcard(filter) {
            return st
                .msgs
                .get(filter)
                .filter(|m| !self.expired(m, now))
                .cloned()
                .into_iter()
                .collect();
        }
        st.msgs
            .values()
            .filter(|m| topic::matches(filter, &m.topic) && !self.expired(m, now))
            .cloned()
            .collect()
    }

    /// Every live retained message (for a node joining the cluster).
    pub fn all(&self) -> Vec<Arc<Message>> {
        let now = now_ms();
        self.state
            .read()
            .msgs
            .values()
            .filter(|m| !self.expired(m, now))
            .cloned()
            .collect()
    }

    /// Every live retained message and every tombstone (as a retained
    /// message with an empty payload), for a peer that syncs.
    pub fn all_with_tombstones(&self) -> Vec<Message> {
        let now = now_ms();
        let st = self.state.read();
        let mut out: Vec<Message> = st
            .msgs
            .values()
            .filter(|m| !self.expired(m, now))
            .map(|m| (**m).clone())
            .collect();
        for (t, ts) in &st.tombs {
            out.push(Message::system(t.clone(), bytes::Bytes::new(), true, *ts));
        }
        out
    }

    /// Number of retained messages (expired ones included until cleaned).
    pub fn count(&self) -> usize {
        self.state.read().msgs.len()
    }

    /// Sorted retained topics.
    pub fn topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .state
            .read()
            .msgs
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// Removes all retained messages (and tombstones), or those matching
    /// `filter`; returns how many messages.
    pub fn clean(&self, filter: Option<&str>) -> usize {
        let mut st = self.state.write();
        let before = st.msgs.len();
        match filter {
            None => {
                st.msgs.clear();
                st.tombs.clear();
                self.persist_nowait(vec![Op::Clear {
                    table: RETAINED_TABLE,
                }]);
            }
            Some(f) => {
                let mut ops = Vec::new();
                st.msgs.retain(|t, _| {
                    let keep = !topic::matches(f, t);
                    if !keep {
                        ops.push(delete_op(t));
                    }
                    keep
                });
                st.tombs.retain(|t, _| {
                    let keep = !topic::matches(f, t);
                    if !keep {
                        ops.push(delete_op(t));
                    }
                    keep
                });
                self.persist_nowait(ops);
            }
        }
        before - st.msgs.len()
    }

    /// Drops expired messages and old tombstones; run periodically.
    /// Returns how many messages.
    pub fn purge_expired(&self) -> usize {
        let now = now_ms();
        let ttl = TOMBSTONE_TTL.as_millis() as u64;
        let mut st = self.state.write();
        let before = st.msgs.len();
        let mut ops = Vec::new();
        st.msgs.retain(|t, m| {
            let keep = !expired(&self.settings, m, now);
            if !keep {
                ops.push(delete_op(t));
            }
            keep
        });
        st.tombs.retain(|t, ts| {
            let keep = now < ts.saturating_add(ttl);
            if !keep {
                ops.push(delete_op(t));
            }
            keep
        });
        self.persist_nowait(ops);
        before - st.msgs.len()
    }
}

fn expired(settings: &RetainerSettings, m: &Message, now: u64) -> bool {
    if m.expiry_secs.is_some() {
        return m.is_expired(now);
    }
    let d = settings.msg_expiry_interval;
    !d.is_zero() && now >= m.timestamp_ms + d.as_millis() as u64
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
        assert_eq!(r.store(&msg("b", "1")).err(), Some(RetainRefused::Full));
        assert_eq!(
            r.store(&msg("a", "1234")).err(),
            Some(RetainRefused::PayloadTooLarge)
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
        assert_eq!(
            off.store(&msg("a", "1")).err(),
            Some(RetainRefused::Disabled)
        );
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

    fn at(topic: &str, payload: &'static str, ts: u64) -> Message {
        Message::system(topic, payload, true, ts)
    }

    #[test]
    fn a_sync_keeps_the_newer_copy_of_each_topic_clears_included() {
        let now = crate::clock::now_ms();
        let r = Retainer::new(RetainerSettings::default());
        r.store(&Arc::new(at("mine-newer", "new", now)))
            .expect("store");
        r.store(&Arc::new(at("theirs-newer", "old", now - 10)))
            .expect("store");
        r.store(&Arc::new(at("cleared-here", "x", now - 30)))
            .expect("store");
        r.store(&Arc::new(at("cleared-here", "", now - 5)))
            .expect("clear");
        r.store(&Arc::new(at("only-mine", "m", now - 1)))
            .expect("store");
        r.store(&Arc::new(at("cleared-there", "old", now - 50)))
            .expect("store");
        let peer = vec![
            at("mine-newer", "old", now - 20),
            at("theirs-newer", "new", now - 2),
            at("cleared-here", "x", now - 30),
            at("cleared-there", "", now - 3),
            at("only-theirs", "t", now - 4),
        ];
        let mut back: Vec<(String, String)> = r
            .merge_synced(peer)
            .into_iter()
            .map(|m| {
                (
                    m.topic.to_string(),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                )
            })
            .collect();
        back.sort();
        assert_eq!(
            r.topics(),
            vec!["mine-newer", "only-mine", "only-theirs", "theirs-newer"]
        );
        assert_eq!(r.matching("mine-newer")[0].payload, "new");
        assert_eq!(r.matching("theirs-newer")[0].payload, "new");
        // What the peer must take: our newer message, ours alone, our clear.
        assert_eq!(
            back,
            vec![
                ("cleared-here".to_string(), String::new()),
                ("mine-newer".to_string(), "new".to_string()),
                ("only-mine".to_string(), "m".to_string()),
            ]
        );
        // A second sync with the merged copy changes nothing either way.
        assert!(r.merge_synced(r.all_with_tombstones()).is_empty());
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("emqx-rs-retainer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn reopen(dir: &std::path::Path) -> Durable {
        for _ in 0..100 {
            if let Ok(d) = Durable::open(dir) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Durable::open(dir).expect("reopen")
    }

    #[tokio::test]
    async fn a_durable_retainer_comes_back_with_its_messages_and_clears() {
        let dir = temp_dir("reopen");
        let now = crate::clock::now_ms();
        {
            let r = Retainer::open(RetainerSettings::default(), reopen(&dir)).expect("open");
            let mut last = None;
            for (t, p) in [("a/1", "1"), ("a/2", "2"), ("a/1", "3"), ("b", "4")] {
                last = r.store(&Arc::new(at(t, p, now))).expect("store");
            }
            let mut exp = at("gone", "x", now - 5000);
            exp.expiry_secs = Some(1);
            r.store(&Arc::new(exp)).expect("store");
            r.store(&Arc::new(at("b", "", now + 1))).expect("clear");
            r.store(&Arc::new(at("c/1", "c", now))).expect("store");
            assert_eq!(r.clean(Some("c/#")), 1);
            last = r
                .store(&Arc::new(at("d", "d", now)))
                .expect("store")
                .or(last);
            last.expect("a durable retainer gives tickets")
                .wait()
                .await
                .expect("on disk");
        }
        let r = Retainer::open(RetainerSettings::default(), reopen(&dir)).expect("reopen");
        assert_eq!(r.topics(), vec!["a/1", "a/2", "d"]);
        assert_eq!(r.matching("a/1")[0].payload, "3");
        // The clear of `b` is remembered: an older copy from a peer loses.
        let back = r.merge_synced(vec![at("b", "old", now)]);
        let b: Vec<_> = back.iter().filter(|m| &*m.topic == "b").collect();
        assert_eq!(b.len(), 1);
        assert!(b[0].payload.is_empty());
        // The rest goes back too: the peer lacks it.
        assert_eq!(back.len(), 4);
        assert!(r.matching("b").is_empty());
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
