//! The durable session journal: what a persistent session holds, written
//! to the node's durable store as it changes, so that a node killed (kill
//! -9, a crash, power loss) brings its persistent sessions back with every
//! QoS 1/2 message it acknowledged to their publishers.
//!
//! Tables (byte keys, bincode values):
//! - `session_state`: incarnation -> [`SessionRecord`] (client id,
//!   subscriptions, expiry, when the connection went);
//! - `session_messages`: message key -> the message, once for all the
//!   sessions it is queued for;
//! - `session_queue`: incarnation ++ message key -> the delivery (QoS,
//!   retain flag, subscription ids) of that message to that session, and
//!   the message itself when no other session needs it (most messages:
//!   then the row is the only write);
//! - `session_awaiting_rel`: incarnation ++ packet id -> nothing: a QoS 2
//!   message the client published and has not released;
//! - `session_sent`: incarnation ++ message key -> the packet id a queued
//!   QoS 2 delivery went out with (written before its PUBLISH leaves: a
//!   session brought back resends it with that id, and the client, which
//!   knows a message again only by its id, does not take it twice);
//! - `session_pubrel`: incarnation ++ packet id -> nothing: a QoS 2
//!   delivery the client received (PUBREC) whose release it has not
//!   completed (PUBCOMP);
//! - `session_meta`: the node's clock, written every few seconds (the
//!   expiry of a session that was connected when the node died runs from
//!   the last tick).
//!
//! The publish path writes the message and its queue rows before it
//! hands the message to the sessions, and the publisher's acknowledgement
//! waits for that commit (the same group-committed tickets as retained
//! messages). A session removes a queue row once the message has left it
//! (acknowledged by its client with PUBACK or PUBREC, dropped, expired);
//! a message goes once no queue row needs it. An incarnation is a number
//! given to one life of a persistent session on this node: rows left by
//! a life that ended (a race with the end of a session) belong to no
//! record and are removed when the node next starts.
//!
//! Keys (message keys and incarnations) come from one counter, started
//! above every key on disk and above the wall clock in microseconds.

use crate::clock::now_ms;
use crate::durable::{Durable, DurableError, Op, Part, Ticket};
use crate::peers::{SessionOp, StoreError, StoredSession};
use crate::stored::StoreLink;
use emqx_mqtt::channel::{InflightState, JournalPid, SessionSnapshot};
use emqx_mqtt::delivery::{Delivery, SubMatch};
use emqx_mqtt::message::Message;
use emqx_mqtt::packet::{LastWill, QoS, SubscriptionOptions};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const SESSIONS_TABLE: &str = "session_state";
pub const MESSAGES_TABLE: &str = "session_messages";
pub const QUEUE_TABLE: &str = "session_queue";
pub const REL_TABLE: &str = "session_awaiting_rel";
pub const META_TABLE: &str = "session_meta";
pub const SENT_TABLE: &str = "session_sent";
pub const PUBREL_TABLE: &str = "session_pubrel";

/// Every table of the journal (a clean stop empties them all: the parked
/// sessions replace them).
pub const TABLES: [&str; 7] = [
    SESSIONS_TABLE,
    MESSAGES_TABLE,
    QUEUE_TABLE,
    REL_TABLE,
    META_TABLE,
    SENT_TABLE,
    PUBREL_TABLE,
];

const CLOCK_KEY: &[u8] = b"clock";

/// The tables of a session in the cluster's session store (a copy of its
/// journal rows, keyed within the session, see [`Journal::link`]): its
/// record (key [`STORE_RECORD_KEY`]).
pub const STORE_RECORD: u8 = 1;
/// Message key -> the delivery, always with its message.
pub const STORE_QUEUE: u8 = 2;
/// Message key -> the packet id its QoS 2 delivery went out with.
pub const STORE_SENT: u8 = 3;
/// Packet id -> nothing: a release owed.
pub const STORE_PUBREL: u8 = 4;
/// Packet id -> nothing: a QoS 2 message received, not yet released.
pub const STORE_REL: u8 = 5;
/// [`STORE_HOLDER_KEY`] -> the name of the node whose session wrote the
/// record last. A claim names the node that claimed before it, which is
/// not the one whose state the store holds when that claim failed before
/// its session started (the connect gave up, or the store answered too
/// late): the messages other nodes held for the session are held for the
/// writer.
pub const STORE_HOLDER: u8 = 6;
pub const STORE_TABLES: [u8; 6] = [
    STORE_RECORD,
    STORE_QUEUE,
    STORE_SENT,
    STORE_PUBREL,
    STORE_REL,
    STORE_HOLDER,
];
pub const STORE_RECORD_KEY: &[u8] = b"record";
pub const STORE_HOLDER_KEY: &[u8] = b"holder";

/// The write naming `node` as the one whose session wrote the record
/// ([`STORE_HOLDER`]), written with each record.
pub fn store_holder_op(node: &str) -> SessionOp {
    SessionOp::Put {
        table: STORE_HOLDER,
        key: STORE_HOLDER_KEY.to_vec(),
        value: node.as_bytes().to_vec(),
    }
}

/// The node whose session wrote `stored`'s record last, if the store
/// says ([`STORE_HOLDER`]; a copy written before that row existed does
/// not).
pub fn stored_holder(stored: &StoredSession) -> Option<String> {
    stored
        .rows
        .iter()
        .find(|(t, k, _)| *t == STORE_HOLDER && k == STORE_HOLDER_KEY)
        .and_then(|(_, _, v)| std::str::from_utf8(v).ok())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The store's table of a journal table whose rows are copied there.
fn store_table(table: &str) -> Option<u8> {
    match table {
        QUEUE_TABLE => Some(STORE_QUEUE),
        SENT_TABLE => Some(STORE_SENT),
        PUBREL_TABLE => Some(STORE_PUBREL),
        REL_TABLE => Some(STORE_REL),
        _ => None,
    }
}

/// The copy in the store of a journal change to one session's rows (keys
/// `incarnation ++ rest` there, `rest` in the store); `None` for what is
/// not copied (shared messages, records: see [`Journal::link`]).
fn store_op(op: &Op) -> Option<SessionOp> {
    match op {
        Op::Put { table, key, value } => Some(SessionOp::Put {
            table: store_table(table)?,
            key: key.get(8..)?.to_vec(),
            value: value.clone(),
        }),
        Op::Delete { table, key } => Some(SessionOp::Delete {
            table: store_table(table)?,
            key: key.get(8..)?.to_vec(),
        }),
        _ => None,
    }
}

/// The keys of forwarding streams' positions in the meta table.
const STREAM_PREFIX: &[u8] = b"stream:";

/// The write of forwarding stream `stream`'s position: every message up
/// to `last` handed on (with when, see [`Journal::streams`]).
fn stream_op(stream: u64, last: u64) -> Op {
    let mut key = STREAM_PREFIX.to_vec();
    key.extend_from_slice(&stream.to_be_bytes());
    let mut value = last.to_be_bytes().to_vec();
    value.extend_from_slice(&now_ms().to_be_bytes());
    Op::Put {
        table: META_TABLE,
        key,
        value,
    }
}

/// How long a forwarding stream's position is kept without a write.
pub const STREAM_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// How often the node's clock is written.
pub const CLOCK_PERIOD: Duration = Duration::from_secs(5);

fn cfg() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// A persistent session's own state in the journal.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub client_id: String,
    pub incarnation: u64,
    pub proto_level: u8,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// Seconds; `u32::MAX` never expires.
    pub session_expiry: u32,
    pub created_at_ms: u64,
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
    /// Wall-clock ms when its connection went; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// delivered, enqueued, dropped.
    pub counters: (u64, u64, u64),
    /// The will still to publish: the client's while it is connected (the
    /// node dying ends its connection), or one waiting for its delay.
    pub will: Option<LastWill>,
}

/// One queued delivery, without its message.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct QueueRow {
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    /// The message itself when this row is the only one that needs it
    /// (one write instead of two, nothing to count); otherwise it is in
    /// the messages table under the row's key.
    msg: Option<Message>,
}

/// [`QueueRow`] as it is written, borrowing the message (same encoding).
#[derive(serde::Serialize)]
struct QueueRowOut<'a> {
    qos: QoS,
    retain: bool,
    sub_ids: &'a [u32],
    msg: Option<&'a Message>,
}

/// A session found in the journal when the node starts.
#[derive(Debug)]
pub struct Recovered {
    pub record: SessionRecord,
    /// Its inflight window: releases owed, then the QoS 2 deliveries
    /// that went out, with the packet ids the client saw.
    pub inflight: Vec<(u16, InflightState)>,
    /// Its queue, oldest first, each delivery with its journal key.
    pub queue: Vec<Delivery>,
    pub awaiting_rel: Vec<u16>,
    /// When its expiry started: its disconnection, or for a session that
    /// was connected when the node died, the node's last clock tick.
    pub offline_since_ms: u64,
}

impl Recovered {
    /// Seconds of expiry left at wall-clock `now_ms`; `None` once expired.
    pub fn remaining(&self, now_ms: u64) -> Option<u32> {
        let expiry = self.record.session_expiry;
        if expiry == u32::MAX {
            return Some(u32::MAX);
        }
        let gone = now_ms.saturating_sub(self.offline_since_ms) / 1000;
        let left = u64::from(expiry).saturating_sub(gone);
        (left > 0).then_some(left as u32)
    }

    /// Its will, if any, with the seconds of its delay left at `now_ms`
    /// (counted from when its connection went, at most the session's
    /// expiry left).
    pub fn will(&self, now_ms: u64) -> Option<(LastWill, u32)> {
        let w = self.record.will.clone()?;
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let gone = now_ms.saturating_sub(self.offline_since_ms) / 1000;
        let left = u64::from(delay).saturating_sub(gone) as u32;
        Some((w, left.min(self.remaining(now_ms).unwrap_or(0))))
    }

    /// The session state to bring back (offline, everything queued).
    pub fn snapshot(&self) -> SessionSnapshot {
        let last = self.inflight.iter().map(|(p, _)| *p).max().unwrap_or(0);
        SessionSnapshot {
            subscriptions: self.record.subscriptions.clone(),
            inflight: self.inflight.clone(),
            mqueue: self.queue.clone(),
            awaiting_rel: self.awaiting_rel.clone(),
            next_pid: last.checked_add(1).unwrap_or(1),
            created_at_ms: self.record.created_at_ms,
            counters: self.record.counters,
        }
    }
}

/// The write of `rec` to the cluster's session store.
pub fn store_record_op(rec: &SessionRecord) -> Option<SessionOp> {
    match bincode::serde::encode_to_vec(rec, cfg()) {
        Ok(value) => Some(SessionOp::Put {
            table: STORE_RECORD,
            key: STORE_RECORD_KEY.to_vec(),
            value,
        }),
        Err(e) => {
            tracing::error!(client_id = %rec.client_id, "session not written to the store: {e}");
            None
        }
    }
}

/// The session the cluster's session store holds for its client, if it
/// holds its record: to be brought back offline with its queue, inflight
/// window and QoS 2 ids, as [`Journal::open`] brings back a session of
/// this node's journal. `now_ms` is when its connection went if the
/// record says it was still connected (the node that held it died). A
/// row that cannot be read is an error naming it.
pub fn from_store(stored: &StoredSession, now_ms: u64) -> Result<Option<Recovered>, String> {
    let mut record: Option<SessionRecord> = None;
    let mut sent: HashMap<u64, u16> = HashMap::new();
    let mut queued: Vec<(u64, QueueRow)> = Vec::new();
    let mut pubrels: Vec<u16> = Vec::new();
    let mut awaiting_rel: Vec<u16> = Vec::new();
    for (table, k, v) in &stored.rows {
        let bad = || format!("the session store: table {table}: bad row {k:?}");
        match *table {
            STORE_RECORD if k == STORE_RECORD_KEY => {
                let r = bincode::serde::decode_from_slice(v, cfg())
                    .map_err(|e| format!("the session store: the session's record: {e}"))?;
                record = Some(r.0);
            }
            STORE_QUEUE => {
                let key = be64(k).ok_or_else(bad)?;
                let row: QueueRow = bincode::serde::decode_from_slice(v, cfg())
                    .map(|(r, _)| r)
                    .map_err(|e| format!("the session store: delivery {key}: {e}"))?;
                queued.push((key, row));
            }
            STORE_SENT => {
                sent.insert(be64(k).ok_or_else(bad)?, be16(v).ok_or_else(bad)?);
            }
            STORE_PUBREL => pubrels.push(be16(k).ok_or_else(bad)?),
            STORE_REL => awaiting_rel.push(be16(k).ok_or_else(bad)?),
            _ => {}
        }
    }
    let Some(record) = record else {
        return Ok(None);
    };
    let mut publishes: Vec<(u16, InflightState)> = Vec::new();
    let mut queue: Vec<Delivery> = Vec::new();
    for (key, row) in queued {
        let Some(msg) = row.msg else {
            return Err(format!(
                "the session store: delivery {key} holds no message"
            ));
        };
        // Journaled again, with keys of its own, by the node it comes
        // back on.
        let d = Delivery {
            msg: Arc::new(msg),
            qos: row.qos,
            retain: row.retain,
            sub_ids: row.sub_ids,
            journal: 0,
        };
        match sent.get(&key) {
            Some(&pid) if d.qos == QoS::ExactlyOnce => {
                publishes.push((pid, InflightState::Publish(d)))
            }
            _ => queue.push(d),
        }
    }
    let mut inflight: Vec<(u16, InflightState)> = pubrels
        .into_iter()
        .filter(|p| !publishes.iter().any(|(q, _)| q == p))
        .map(|p| (p, InflightState::Release))
        .collect();
    inflight.extend(publishes);
    Ok(Some(Recovered {
        offline_since_ms: record.disconnected_at_ms.unwrap_or(now_ms),
        inflight,
        queue,
        awaiting_rel,
        record,
    }))
}

/// The journal of one node. Shared by the publish path and the sessions.
pub struct Journal {
    durable: Durable,
    next: AtomicU64,
    /// Message key -> queue rows still holding it.
    refs: Mutex<HashMap<u64, u32>>,
    upgrade_qos: bool,
    /// Incarnation -> the writer of that session's copy in the cluster's
    /// session store ([`Journal::link`]).
    links: parking_lot::RwLock<HashMap<u64, StoreLink>>,
    /// `links.len()`, read without the lock.
    n_links: AtomicU64,
}

/// The outcome of a write to the store, as a part of a journal ticket: a
/// session taken by another node since (fenced) no longer needs it.
fn part_done(part: Part) -> crate::stored::Done {
    Box::new(move |r| {
        part.done(match r {
            Ok(()) | Err(StoreError::Fenced { .. }) => Ok(()),
            Err(StoreError::Unavailable(e)) => Err(DurableError::Unavailable(e)),
        })
    })
}

fn key2(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

fn rel_key(incarnation: u64, pid: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&incarnation.to_be_bytes());
    k.extend_from_slice(&pid.to_be_bytes());
    k
}

fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

fn io(durable: &Durable, error: String) -> DurableError {
    DurableError::Io {
        path: durable.path().to_path_buf(),
        error,
    }
}

impl Journal {
    /// Reads the journal: the sessions it holds (expired ones included:
    /// the caller decides), with their queues. Rows that belong to no
    /// session, and messages no queue row needs, are removed. A row that
    /// cannot be read is an error naming the file, the table and the key.
    pub fn open(
        durable: Durable,
        upgrade_qos: bool,
    ) -> Result<(Journal, Vec<Recovered>), DurableError> {
        // A commit adds a few rows to each session's queue and removes a
        // few, and as many of its QoS 2 packet ids: kept packed, that is
        // a row or two a session and table, not one a message.
        for table in [QUEUE_TABLE, SENT_TABLE, PUBREL_TABLE, REL_TABLE] {
            durable.pack(table)?;
        }
        let mut max_key = 0u64;
        let mut by_inc: BTreeMap<u64, SessionRecord> = BTreeMap::new();
        let mut ops = Vec::new();
        for (k, v) in durable.load(SESSIONS_TABLE)? {
            let inc = be64(&k)
                .ok_or_else(|| io(&durable, format!("table {SESSIONS_TABLE}: bad key {k:?}")))?;
            let rec: SessionRecord = bincode::serde::decode_from_slice(&v, cfg())
                .map(|(r, _)| r)
                .map_err(|e| {
                    io(
                        &durable,
                        format!("table {SESSIONS_TABLE}: session {inc} cannot be read: {e}"),
                    )
                })?;
            if rec.incarnation != inc {
                return Err(io(
                    &durable,
                    format!(
                        "table {SESSIONS_TABLE}: row {inc} holds session {} of {:?}",
                        rec.incarnation, rec.client_id
                    ),
                ));
            }
            max_key = max_key.max(inc);
            by_inc.insert(inc, rec);
        }
        // Two lives of one client (the node died between the start of the
        // new one and the end of the old): the newer stands.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (inc, rec) in &by_inc {
            newest.insert(rec.client_id.as_str(), *inc);
        }
        let stale: Vec<u64> = by_inc
            .iter()
            .filter(|(inc, rec)| newest.get(rec.client_id.as_str()) != Some(*inc))
            .map(|(inc, _)| *inc)
            .collect();
        for inc in stale {
            by_inc.remove(&inc);
            ops.push(Op::Delete {
                table: SESSIONS_TABLE,
                key: inc.to_be_bytes().to_vec(),
            });
        }
        let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
        for (k, v) in durable.load(MESSAGES_TABLE)? {
            let key = be64(&k)
                .ok_or_else(|| io(&durable, format!("table {MESSAGES_TABLE}: bad key {k:?}")))?;
            let m: Message = bincode::serde::decode_from_slice(&v, cfg())
                .map(|(m, _)| m)
                .map_err(|e| {
                    io(
                        &durable,
                        format!("table {MESSAGES_TABLE}: message {key} cannot be read: {e}"),
                    )
                })?;
            max_key = max_key.max(key);
            messages.insert(key, Arc::new(m));
        }
        let mut sent: HashMap<(u64, u64), u16> = HashMap::new();
        for (k, v) in durable.load(SENT_TABLE)? {
            let (Some(inc), Some(key), Some(pid)) = (be64(&k), k.get(8..).and_then(be64), be16(&v))
            else {
                return Err(io(&durable, format!("table {SENT_TABLE}: bad row {k:?}")));
            };
            sent.insert((inc, key), pid);
        }
        let mut queues: HashMap<u64, Vec<Delivery>> = HashMap::new();
        let mut outgoing: HashMap<u64, Vec<(u16, InflightState)>> = HashMap::new();
        let mut refs: HashMap<u64, u32> = HashMap::new();
        for (k, v) in durable.load(QUEUE_TABLE)? {
            let (Some(inc), Some(key)) = (be64(&k), k.get(8..).and_then(be64)) else {
                return Err(io(&durable, format!("table {QUEUE_TABLE}: bad key {k:?}")));
            };
            max_key = max_key.max(key);
            if !by_inc.contains_key(&inc) {
                // A life that ended.
                ops.push(Op::Delete {
                    table: QUEUE_TABLE,
                    key: k,
                });
                continue;
            }
            let row: QueueRow = bincode::serde::decode_from_slice(&v, cfg())
                .map(|(r, _)| r)
                .map_err(|e| {
                    io(
                        &durable,
                        format!("table {QUEUE_TABLE}: row {inc}/{key} cannot be read: {e}"),
                    )
                })?;
            let msg = match row.msg {
                Some(m) => Arc::new(m),
                None => match messages.get(&key) {
                    Some(m) => {
                        *refs.entry(key).or_default() += 1;
                        m.clone()
                    }
                    None => {
                        // Its message is gone: so is the row.
                        ops.push(Op::Delete {
                            table: QUEUE_TABLE,
                            key: k,
                        });
                        continue;
                    }
                },
            };
            let d = Delivery {
                msg,
                qos: row.qos,
                retain: row.retain,
                sub_ids: row.sub_ids,
                journal: key,
            };
            match sent.remove(&(inc, key)) {
                // It went out with this packet id: in flight again.
                Some(pid) if d.qos == QoS::ExactlyOnce => outgoing
                    .entry(inc)
                    .or_default()
                    .push((pid, InflightState::Publish(d))),
                _ => queues.entry(inc).or_default().push(d),
            }
        }
        // Packet ids of deliveries that left their queue, or of lives that
        // ended.
        for (inc, key) in sent.into_keys() {
            ops.push(Op::Delete {
                table: SENT_TABLE,
                key: key2(inc, key),
            });
        }
        let mut pubrels: HashMap<u64, Vec<(u16, InflightState)>> = HashMap::new();
        for (k, _) in durable.load(PUBREL_TABLE)? {
            let (Some(inc), Some(pid)) = (be64(&k), k.get(8..).and_then(be16)) else {
                return Err(io(&durable, format!("table {PUBREL_TABLE}: bad key {k:?}")));
            };
            if by_inc.contains_key(&inc) {
                pubrels
                    .entry(inc)
                    .or_default()
                    .push((pid, InflightState::Release));
            } else {
                ops.push(Op::Delete {
                    table: PUBREL_TABLE,
                    key: k,
                });
            }
        }
        for key in messages.keys() {
            if !refs.contains_key(key) {
                ops.push(Op::Delete {
                    table: MESSAGES_TABLE,
                    key: key.to_be_bytes().to_vec(),
                });
            }
        }
        let mut rels: HashMap<u64, Vec<u16>> = HashMap::new();
        for (k, _) in durable.load(REL_TABLE)? {
            let (Some(inc), Some(pid)) = (
                be64(&k),
                k.get(8..10).map(|b| u16::from_be_bytes([b[0], b[1]])),
            ) else {
                return Err(io(&durable, format!("table {REL_TABLE}: bad key {k:?}")));
            };
            if by_inc.contains_key(&inc) {
                rels.entry(inc).or_default().push(pid);
            } else {
                ops.push(Op::Delete {
                    table: REL_TABLE,
                    key: k,
                });
            }
        }
        let clock = durable
            .load(META_TABLE)?
            .into_iter()
            .find(|(k, _)| k == CLOCK_KEY)
            .and_then(|(_, v)| be64(&v))
            .unwrap_or_else(now_ms);
        if !ops.is_empty() {
            durable.submit_nowait(ops);
        }
        let recovered = by_inc
            .into_values()
            .map(|record| {
                let inc = record.incarnation;
                // Releases were owed before anything still unreceived went
                // out; a packet id in both (reused) is the publish's.
                let publishes = outgoing.remove(&inc).unwrap_or_default();
                let mut inflight: Vec<(u16, InflightState)> = pubrels
                    .remove(&inc)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(p, _)| !publishes.iter().any(|(q, _)| q == p))
                    .collect();
                inflight.extend(publishes);
                Recovered {
                    offline_since_ms: record.disconnected_at_ms.unwrap_or(clock),
                    inflight,
                    queue: queues.remove(&inc).unwrap_or_default(),
                    awaiting_rel: rels.remove(&inc).unwrap_or_default(),
                    record,
                }
            })
            .collect();
        let now_us = now_ms().saturating_mul(1000);
        let journal = Journal {
            durable,
            next: AtomicU64::new(max_key.max(now_us) + 1),
            refs: Mutex::new(refs),
            upgrade_qos,
            links: Default::default(),
            n_links: AtomicU64::new(0),
        };
        Ok((journal, recovered))
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// `mqtt.upgrade_qos`: a QoS 0 message may be delivered at QoS 1/2.
    pub fn upgrades_qos(&self) -> bool {
        self.upgrade_qos
    }

    /// A new key: for a message, or an incarnation of a session.
    pub fn next_key(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The QoS a delivery of `msg` for `matches` will have (as
    /// [`Delivery::from_matches`] decides).
    fn delivered_qos(&self, msg: &Message, matches: &[SubMatch]) -> QoS {
        let max_sub = matches.iter().map(|m| m.opts.qos).max().unwrap_or_default();
        if self.upgrade_qos {
            msg.qos.max(max_sub)
        } else {
            msg.qos.min(max_sub)
        }
    }

    /// The publish path: writes `msg` and one queue row for each target
    /// that journals its deliveries (incarnation != 0) and gets it at QoS
    /// 1 or 2. Returns the commit's ticket and each target's journal key
    /// (0 for the others), or `None` when no target journals it. Call
    /// before the message reaches any session, so a session's removal of
    /// a row always comes after the row.
    pub fn record<'a>(
        &self,
        msg: &Message,
        targets: impl Iterator<Item = (u64, &'a [SubMatch])>,
    ) -> Option<(Ticket, Vec<u64>)> {
        self.record_at(msg, targets, None)
    }

    /// [`Journal::record`] of a message another node forwarded, at `at`
    /// (`(stream, seq)`) in its forwarding stream: the stream's position
    /// is written in the same commit as the rows (see
    /// [`Journal::note_stream`]), so a crash keeps both or neither. Were
    /// the position written after them, a crash between the two commits
    /// would keep the rows and make the sender's resend a second
    /// delivery, twice at QoS 2.
    pub fn record_at<'a>(
        &self,
        msg: &Message,
        targets: impl Iterator<Item = (u64, &'a [SubMatch])>,
        at: Option<(u64, u64)>,
    ) -> Option<(Ticket, Vec<u64>)> {
        let due: smallvec::SmallVec<[(usize, u64, &'a [SubMatch]); 4]> = targets
            .enumerate()
            .filter(|(_, (inc, matches))| {
                *inc != 0 && self.delivered_qos(msg, matches) != QoS::AtMostOnce
            })
            .map(|(i, (inc, matches))| (i, inc, matches))
            .collect();
        if due.is_empty() {
            return None;
        }
        let inline = due.len() == 1;
        let mut keys: Vec<u64> = Vec::new();
        let mut ops: Vec<Op> = Vec::with_capacity(due.len() + 1);
        let mut copies: Vec<(StoreLink, SessionOp)> = Vec::new();
        let key = self.next_key();
        let mut n = 0u32;
        for (i, inc, matches) in due {
            if !inline && ops.is_empty() {
                match bincode::serde::encode_to_vec(msg, cfg()) {
                    Ok(value) => ops.push(Op::Put {
                        table: MESSAGES_TABLE,
                        key: key.to_be_bytes().to_vec(),
                        value,
                    }),
                    Err(e) => {
                        tracing::error!(topic = %msg.topic, "message not journaled: {e}");
                        return None;
                    }
                }
            }
            keys.resize(i, 0);
            let mut sub_ids: Vec<u32> = matches.iter().filter_map(|m| m.sub_id).collect();
            sub_ids.sort_unstable();
            sub_ids.dedup();
            let row = QueueRowOut {
                qos: self.delivered_qos(msg, matches),
                retain: msg.retain && matches.iter().any(|m| m.opts.retain_as_published),
                sub_ids: &sub_ids,
                msg: inline.then_some(msg),
            };
            match bincode::serde::encode_to_vec(&row, cfg()) {
                Ok(value) => {
                    if let Some(link) = self.linked(inc) {
                        // The store's copy always holds the message.
                        let value = if inline {
                            Ok(value.clone())
                        } else {
                            bincode::serde::encode_to_vec(
                                QueueRowOut {
                                    msg: Some(msg),
                                    ..row
                                },
                                cfg(),
                            )
                        };
                        if let Ok(value) = value {
                            let put = SessionOp::Put {
                                table: STORE_QUEUE,
                                key: key.to_be_bytes().to_vec(),
                                value,
                            };
                            copies.push((link, put));
                        }
                    }
                    ops.push(Op::Put {
                        table: QUEUE_TABLE,
                        key: key2(inc, key),
                        value,
                    });
                    keys.push(key);
                    n += 1;
                }
                Err(e) => {
                    tracing::error!(topic = %msg.topic, "delivery not journaled: {e}");
                    keys.push(0);
                }
            }
        }
        if n == 0 {
            return None;
        }
        if !inline {
            self.refs.lock().insert(key, n);
        }
        if let Some((stream, seq)) = at {
            ops.push(stream_op(stream, seq));
        }
        let (ticket, parts) = self.durable.submit(ops).join(copies.len());
        for ((link, put), part) in copies.into_iter().zip(parts) {
            link.send(vec![put], Some(part_done(part)));
        }
        Some((ticket, keys))
    }

    /// From now on, what is journaled of session `incarnation` is also
    /// written to the cluster's session store through `link`: its
    /// deliveries (each with its message), QoS 2 packet ids and releases
    /// owed, and the tickets of those writes wait for both copies. (Its
    /// record is written there by the session itself.)
    pub fn link(&self, incarnation: u64, link: StoreLink) {
        if incarnation == 0 {
            return;
        }
        let mut l = self.links.write();
        l.insert(incarnation, link);
        self.n_links.store(l.len() as u64, Ordering::Relaxed);
    }

    /// Session `incarnation` is no longer copied to the store.
    pub fn unlink(&self, incarnation: u64) {
        if self.n_links.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut l = self.links.write();
        l.remove(&incarnation);
        self.n_links.store(l.len() as u64, Ordering::Relaxed);
    }

    /// Session `incarnation` of `client`, brought back from this journal
    /// after a crash, is still this node's in the store, under `epoch`:
    /// from now on it is copied there again, starting with its whole
    /// journaled state (the changes made while it was not copied
    /// included). Returns once that copy is handed to its writer: true,
    /// or false when that life of the session has ended since.
    pub async fn relink(
        &self,
        incarnation: u64,
        client: &str,
        epoch: u64,
        store: Arc<dyn crate::peers::SessionStore>,
        node: &str,
    ) -> Result<bool, DurableError> {
        let (link, first) = StoreLink::resuming(store, Arc::from(client), epoch);
        self.link(incarnation, link);
        // What was submitted before the link is committed once this is;
        // what comes after it is copied after the whole copy.
        self.durable.submit(Vec::new()).wait().await?;
        let next = incarnation.saturating_add(1);
        let range =
            |table: &'static str, from: Vec<u8>, to: Vec<u8>| self.durable.range(table, &from, &to);
        let mut ops: Vec<SessionOp> = STORE_TABLES
            .iter()
            .map(|&table| SessionOp::Clear { table })
            .collect();
        let bad = |what: &str, e: String| {
            io(
                &self.durable,
                format!("session {incarnation} of {client:?}: {what}: {e}"),
            )
        };
        let record = range(
            SESSIONS_TABLE,
            incarnation.to_be_bytes().to_vec(),
            next.to_be_bytes().to_vec(),
        )?;
        let Some((_, value)) = record.into_iter().next() else {
            // That life of the session ended meanwhile (its client came
            // back and another life replaced it): nothing of it is
            // written, lest its empty copy replace the new life's.
            self.unlink(incarnation);
            return Ok(false);
        };
        ops.push(SessionOp::Put {
            table: STORE_RECORD,
            key: STORE_RECORD_KEY.to_vec(),
            value,
        });
        ops.push(store_holder_op(node));
        for (k, v) in range(QUEUE_TABLE, key2(incarnation, 0), key2(next, 0))? {
            let key = k.get(8..).unwrap_or_default().to_vec();
            let row: QueueRow = bincode::serde::decode_from_slice(&v, cfg())
                .map(|(r, _)| r)
                .map_err(|e| bad("a queue row", e.to_string()))?;
            let value = if row.msg.is_some() {
                v
            } else {
                // Its message is in the messages table: the copy holds it.
                let mut to = key.clone();
                to.push(0);
                let Some((_, m)) = self.durable.range(MESSAGES_TABLE, &key, &to)?.pop() else {
                    continue;
                };
                let msg: Message = bincode::serde::decode_from_slice(&m, cfg())
                    .map(|(m, _)| m)
                    .map_err(|e| bad("a message", e.to_string()))?;
                let out = QueueRowOut {
                    qos: row.qos,
                    retain: row.retain,
                    sub_ids: &row.sub_ids,
                    msg: Some(&msg),
                };
                bincode::serde::encode_to_vec(&out, cfg())
                    .map_err(|e| bad("a queue row", e.to_string()))?
            };
            ops.push(SessionOp::Put {
                table: STORE_QUEUE,
                key,
                value,
            });
        }
        for (table, copy, from, to) in [
            (SENT_TABLE, STORE_SENT, key2(incarnation, 0), key2(next, 0)),
            (
                PUBREL_TABLE,
                STORE_PUBREL,
                rel_key(incarnation, 0),
                rel_key(next, 0),
            ),
            (
                REL_TABLE,
                STORE_REL,
                rel_key(incarnation, 0),
                rel_key(next, 0),
            ),
        ] {
            for (k, value) in range(table, from, to)? {
                ops.push(SessionOp::Put {
                    table: copy,
                    key: k.get(8..).unwrap_or_default().to_vec(),
                    value,
                });
            }
        }
        // A writer that stopped (the session was taken since) drops it.
        let _ = first.send(ops);
        Ok(true)
    }

    /// The writer of session `incarnation`'s copy in the store, if it
    /// has one.
    pub fn linked(&self, incarnation: u64) -> Option<StoreLink> {
        if self.n_links.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.links.read().get(&incarnation).cloned()
    }

    /// Submits `ops` of session `incarnation` and their copy in the store;
    /// with `wait`, returns the ticket of both.
    fn submit_session(&self, incarnation: u64, ops: Vec<Op>, wait: bool) -> Option<Ticket> {
        let copy: Option<(StoreLink, Vec<SessionOp>)> = self
            .linked(incarnation)
            .map(|l| (l, ops.iter().filter_map(store_op).collect::<Vec<_>>()))
            .filter(|(_, c)| !c.is_empty());
        if !wait {
            self.durable.submit_nowait(ops);
            if let Some((link, copy)) = copy {
                link.send(copy, None);
            }
            return None;
        }
        let t = self.durable.submit(ops);
        Some(match copy {
            Some((link, copy)) => {
                let (t, mut parts) = t.join(1);
                link.send(copy, parts.pop().map(part_done));
                t
            }
            None => t,
        })
    }

    /// Writes what a session holds that is not journaled yet (a session
    /// that becomes persistent, one taken over from another node or
    /// brought back from a clean stop): its inflight window in the order
    /// first sent (a delivery with its packet id, or a release owed) and
    /// its queue; each delivery gets its key.
    pub fn adopt<'a>(
        &self,
        incarnation: u64,
        inflight: Vec<(u16, Option<&'a mut Delivery>)>,
        queued: Vec<&'a mut Delivery>,
    ) {
        let mut ops = Vec::new();
        let mut deliveries = Vec::with_capacity(inflight.len() + queued.len());
        for (pid, d) in inflight {
            match d {
                Some(d) => deliveries.push((Some(pid), d)),
                None => ops.push(Op::Put {
                    table: PUBREL_TABLE,
                    key: rel_key(incarnation, pid),
                    value: Vec::new(),
                }),
            }
        }
        deliveries.extend(queued.into_iter().map(|d| (None, d)));
        for (pid, d) in deliveries {
            if d.journal != 0 || d.qos == QoS::AtMostOnce {
                continue;
            }
            let row = QueueRowOut {
                qos: d.qos,
                retain: d.retain,
                sub_ids: &d.sub_ids,
                msg: Some(&d.msg),
            };
            let Ok(value) = bincode::serde::encode_to_vec(&row, cfg()) else {
                continue;
            };
            let key = self.next_key();
            ops.push(Op::Put {
                table: QUEUE_TABLE,
                key: key2(incarnation, key),
                value,
            });
            if let (Some(pid), QoS::ExactlyOnce) = (pid, d.qos) {
                ops.push(Op::Put {
                    table: SENT_TABLE,
                    key: key2(incarnation, key),
                    value: pid.to_be_bytes().to_vec(),
                });
            }
            d.journal = key;
        }
        if !ops.is_empty() {
            self.submit_session(incarnation, ops, false);
        }
    }

    /// Deliveries `keys` left session `incarnation` (or were never taken
    /// by it): their queue rows go, and each message no other row needs.
    pub fn release(&self, incarnation: u64, keys: &[u64]) {
        drop(self.update(incarnation, keys, &[]));
    }

    /// [`Journal::release`] of `keys`, then what `pids` says of the
    /// session's outgoing QoS 2 packet ids, in one write. Returns its
    /// ticket when a packet id went out ([`JournalPid::Sent`]: that
    /// PUBLISH must wait for it) or a release is owed
    /// ([`JournalPid::Received`]: the PUBREL must wait for it, or a node
    /// that dies after the client's PUBCOMP would send the message again
    /// with a packet id the client has forgotten).
    pub fn update(&self, incarnation: u64, keys: &[u64], pids: &[JournalPid]) -> Option<Ticket> {
        if keys.is_empty() && pids.is_empty() {
            return None;
        }
        let mut ops = Vec::with_capacity(keys.len() * 2 + pids.len() * 3);
        let mut r = self.refs.lock();
        let mut left = |key: u64, ops: &mut Vec<Op>| {
            if incarnation != 0 {
                ops.push(Op::Delete {
                    table: QUEUE_TABLE,
                    key: key2(incarnation, key),
                });
            }
            if let Some(n) = r.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    r.remove(&key);
                    ops.push(Op::Delete {
                        table: MESSAGES_TABLE,
                        key: key.to_be_bytes().to_vec(),
                    });
                }
            }
        };
        for &key in keys {
            left(key, &mut ops);
        }
        let mut wait = false;
        if incarnation != 0 {
            for p in pids {
                match *p {
                    JournalPid::Sent { key, pid } => {
                        wait = true;
                        ops.push(Op::Put {
                            table: SENT_TABLE,
                            key: key2(incarnation, key),
                            value: pid.to_be_bytes().to_vec(),
                        });
                    }
                    JournalPid::Received { key, pid } => {
                        wait = true;
                        left(key, &mut ops);
                        ops.push(Op::Delete {
                            table: SENT_TABLE,
                            key: key2(incarnation, key),
                        });
                        ops.push(Op::Put {
                            table: PUBREL_TABLE,
                            key: rel_key(incarnation, pid),
                            value: Vec::new(),
                        });
                    }
                    JournalPid::Completed(pid) => ops.push(Op::Delete {
                        table: PUBREL_TABLE,
                        key: rel_key(incarnation, pid),
                    }),
                }
            }
        }
        drop(r);
        if ops.is_empty() {
            return None;
        }
        self.submit_session(incarnation, ops, wait)
    }

    /// Writes (replaces) a session's record.
    pub fn save(&self, rec: &SessionRecord) -> Option<Ticket> {
        match bincode::serde::encode_to_vec(rec, cfg()) {
            Ok(value) => Some(self.durable.submit(vec![Op::Put {
                table: SESSIONS_TABLE,
                key: rec.incarnation.to_be_bytes().to_vec(),
                value,
            }])),
            Err(e) => {
                tracing::error!(client_id = %rec.client_id, "session not journaled: {e}");
                None
            }
        }
    }

    /// A persistent session's life ends (expiry, discard, takeover by
    /// another node, or it stops being persistent): its record, queue
    /// rows and QoS 2 ids go; `held`, the deliveries it still held, are
    /// released.
    pub fn forget(&self, incarnation: u64, held: &[u64]) {
        self.unlink(incarnation);
        self.release(0, held);
        let next = incarnation.saturating_add(1);
        self.durable.submit_nowait(vec![
            Op::Delete {
                table: SESSIONS_TABLE,
                key: incarnation.to_be_bytes().to_vec(),
            },
            Op::DeleteRange {
                table: QUEUE_TABLE,
                from: key2(incarnation, 0),
                to: key2(next, 0),
            },
            Op::DeleteRange {
                table: REL_TABLE,
                from: rel_key(incarnation, 0),
                to: rel_key(next, 0),
            },
            Op::DeleteRange {
                table: SENT_TABLE,
                from: key2(incarnation, 0),
                to: key2(next, 0),
            },
            Op::DeleteRange {
                table: PUBREL_TABLE,
                from: rel_key(incarnation, 0),
                to: rel_key(next, 0),
            },
        ]);
    }

    /// The client published QoS 2 packet `pid` (its PUBREC waits for the
    /// ticket): a resend after a crash is then still recognized.
    pub fn rel_add(&self, incarnation: u64, pid: u16) -> Option<Ticket> {
        let put = Op::Put {
            table: REL_TABLE,
            key: rel_key(incarnation, pid),
            value: Vec::new(),
        };
        self.submit_session(incarnation, vec![put], true)
    }

    /// The client released QoS 2 packet `pid` (its PUBCOMP waits for the
    /// ticket: the client may use the id again once it has it, and a node
    /// that died with the id still on disk would take the new message
    /// for the old one).
    pub fn rel_del(&self, incarnation: u64, pid: u16) -> Option<Ticket> {
        let del = Op::Delete {
            table: REL_TABLE,
            key: rel_key(incarnation, pid),
        };
        self.submit_session(incarnation, vec![del], true)
    }

    /// The positions of the forwarding streams this node took messages
    /// from (see [`Journal::note_stream`]), `(stream, last)`; those not
    /// written for [`STREAM_KEPT_FOR`] are removed (their senders have
    /// long restarted, with new streams).
    pub fn streams(&self) -> Result<Vec<(u64, u64)>, DurableError> {
        let mut to = STREAM_PREFIX.to_vec();
        to.push(0xff);
        let now = now_ms();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (k, v) in self.durable.range(META_TABLE, STREAM_PREFIX, &to)? {
            let (Some(stream), Some(last), Some(at)) = (
                k.get(STREAM_PREFIX.len()..).and_then(be64),
                be64(&v),
                v.get(8..).and_then(be64),
            ) else {
                return Err(io(
                    &self.durable,
                    format!("table {META_TABLE}: bad stream row {k:?}"),
                ));
            };
            if now.saturating_sub(at) > STREAM_KEPT_FOR.as_millis() as u64 {
                stale.push(Op::Delete {
                    table: META_TABLE,
                    key: k,
                });
            } else {
                out.push((stream, last));
            }
        }
        if !stale.is_empty() {
            self.durable.submit_nowait(stale);
        }
        Ok(out)
    }

    /// Writes that every message of forwarding stream `stream` up to
    /// `last` was handed on (after their deliveries' rows: a crash between
    /// the two makes the sender's resend a duplicate, never a loss).
    pub fn note_stream(&self, stream: u64, last: u64) -> Ticket {
        self.durable.submit(vec![stream_op(stream, last)])
    }

    /// Writes the node's clock now and every [`CLOCK_PERIOD`].
    pub fn spawn_clock(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(CLOCK_PERIOD);
            loop {
                t.tick().await;
                me.durable.submit_nowait(vec![Op::Put {
                    table: META_TABLE,
                    key: CLOCK_KEY.to_vec(),
                    value: now_ms().to_be_bytes().to_vec(),
                }]);
            }
        })
    }

    /// The ops that empty the journal (a clean stop: the parked sessions
    /// replace it, in the same commit).
    pub fn clear_ops() -> Vec<Op> {
        TABLES.iter().map(|t| Op::Clear { table: t }).collect()
    }

    /// Message keys still held by some queue row (tests, `ctl`).
    pub fn messages_held(&self) -> usize {
        self.refs.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emqx_mqtt::packet::SubscriptionOptions;

    fn record(client: &str, inc: u64) -> SessionRecord {
        SessionRecord {
            client_id: client.into(),
            incarnation: inc,
            proto_level: 4,
            keep_alive: 60,
            username: None,
            session_expiry: 3600,
            created_at_ms: 1,
            subscriptions: vec![("t/#".into(), SubscriptionOptions::default(), None)],
            disconnected_at_ms: Some(now_ms()),
            counters: (0, 0, 0),
            will: None,
        }
    }

    fn matches(q: QoS) -> Vec<SubMatch> {
        let opts = SubscriptionOptions {
            qos: q,
            ..Default::default()
        };
        vec![SubMatch { opts, sub_id: None }]
    }

    fn msg(payload: &str) -> Message {
        let mut m = Message::system("t/x", payload.to_string(), false, now_ms());
        m.qos = QoS::AtLeastOnce;
        m
    }

    /// A new session `client`, its record on disk: its incarnation.
    async fn saved(j: &Journal, client: &str) -> u64 {
        let inc = j.next_key();
        j.save(&record(client, inc))
            .expect("save")
            .wait()
            .await
            .expect(client);
        inc
    }

    /// An empty directory of this process under the system's temp dir.
    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    /// The store in `dir`, opened again once the previous writer is gone.
    fn reopen(dir: &std::path::Path) -> (Journal, Vec<Recovered>) {
        for _ in 0..100 {
            if let Ok(d) = Durable::open(dir) {
                return Journal::open(d, false).expect("journal");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cannot reopen {}", dir.display());
    }

    fn queue(r: &[Recovered], client: &str) -> Vec<String> {
        r.iter()
            .find(|r| r.record.client_id == client)
            .map(|r| {
                r.queue
                    .iter()
                    .map(|d| String::from_utf8_lossy(&d.msg.payload).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Rows left in `tables` once the writer has had up to 2 s to empty
    /// them.
    async fn rows_left(d: &Durable, tables: &[&'static str]) -> u64 {
        let mut left = u64::MAX;
        for _ in 0..100 {
            left = tables.iter().map(|t| d.count(t).expect("count")).sum();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        left
    }

    fn inflight(r: &[Recovered]) -> Vec<(u16, Option<String>)> {
        r[0].inflight
            .iter()
            .map(|(p, s)| match s {
                InflightState::Publish(d) => (
                    *p,
                    Some(String::from_utf8_lossy(&d.msg.payload).to_string()),
                ),
                InflightState::Release => (*p, None),
            })
            .collect()
    }

    use crate::peers::SessionStore;

    /// A session store in memory: rows by client, and a switch that makes
    /// every write fail as a shard without quorum does.
    /// (client, table, key) -> value.
    type MemRows = BTreeMap<(String, u8, Vec<u8>), Vec<u8>>;

    #[derive(Default)]
    struct MemStore {
        rows: Mutex<MemRows>,
        down: std::sync::atomic::AtomicBool,
    }

    impl crate::peers::SessionStore for MemStore {
        fn claim<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::peers::BoxFuture<'a, Result<crate::peers::SessionClaim, StoreError>> {
            Box::pin(async {
                Ok(crate::peers::SessionClaim {
                    epoch: 1,
                    previous: None,
                })
            })
        }

        fn adopt<'a>(
            &'a self,
            _: &'a str,
            from: &'a str,
            epoch: u64,
        ) -> crate::peers::BoxFuture<'a, Result<crate::peers::SessionClaim, StoreError>> {
            Box::pin(async move {
                Ok(crate::peers::SessionClaim {
                    epoch: epoch + 1,
                    previous: Some((from.to_string(), epoch)),
                })
            })
        }

        fn read<'a>(
            &'a self,
            client: &'a str,
        ) -> crate::peers::BoxFuture<'a, Result<StoredSession, StoreError>> {
            Box::pin(async move {
                let rows = self
                    .rows
                    .lock()
                    .iter()
                    .filter(|((c, _, _), _)| c == client)
                    .map(|((_, t, k), v)| (*t, k.clone(), v.clone()))
                    .collect();
                Ok(StoredSession { owner: None, rows })
            })
        }

        fn write<'a>(
            &'a self,
            client: &'a str,
            _: u64,
            ops: Vec<SessionOp>,
        ) -> crate::peers::BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                if self.down.load(Ordering::Relaxed) {
                    return Err(StoreError::Unavailable("no quorum".into()));
                }
                let mut rows = self.rows.lock();
                for op in ops {
                    match op {
                        SessionOp::Put { table, key, value } => {
                            rows.insert((client.to_string(), table, key), value);
                        }
                        SessionOp::Delete { table, key } => {
                            rows.remove(&(client.to_string(), table, key));
                        }
                        SessionOp::Clear { table } => {
                            rows.retain(|(c, t, _), _| !(c == client && *t == table))
                        }
                    }
                }
                Ok(())
            })
        }

        fn release<'a>(
            &'a self,
            client: &'a str,
            _: u64,
        ) -> crate::peers::BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                self.rows.lock().retain(|(c, _, _), _| c != client);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_linked_sessions_rows_are_copied_to_its_store_and_read_back_as_the_journal_reads_them(
    ) {
        let dir = fresh_dir("emqx-rs-journal-store");
        let store = Arc::new(MemStore::default());
        let (j, _) = reopen(&dir);
        let (a, b) = (j.next_key(), j.next_key());
        for (client, inc) in [("a", a), ("b", b)] {
            let link = StoreLink::start(store.clone(), Arc::from(client), 1, &STORE_TABLES);
            j.link(inc, link.clone());
            let put = store_record_op(&record(client, inc)).expect("record");
            link.write(vec![put])
                .await
                .expect("answer")
                .expect("record");
        }
        let q2 = matches(QoS::ExactlyOnce);
        let mut keys = Vec::new();
        for p in ["m1", "m2", "m3"] {
            let mut m = msg(p);
            m.qos = QoS::ExactlyOnce;
            // m1 to both sessions (one message row for both in the
            // journal, a whole copy for each in the store).
            let targets: Vec<(u64, &[SubMatch])> = if p == "m1" {
                vec![(a, &q2[..]), (b, &q2[..])]
            } else {
                vec![(a, &q2[..])]
            };
            let (t, k) = j.record(&m, targets.into_iter()).expect("journaled");
            t.wait().await.expect("both copies");
            keys.push(k[0]);
        }
        let sent = [
            JournalPid::Sent {
                key: keys[0],
                pid: 7,
            },
            JournalPid::Sent {
                key: keys[1],
                pid: 8,
            },
        ];
        let t = j.update(a, &[], &sent).expect("a ticket");
        t.wait().await.expect("sent");
        let received = [JournalPid::Received {
            key: keys[0],
            pid: 7,
        }];
        j.update(a, &[], &received)
            .expect("a ticket")
            .wait()
            .await
            .expect("received");
        j.rel_add(a, 42)
            .expect("a ticket")
            .wait()
            .await
            .expect("rel");
        let now = now_ms();
        let ra = from_store(&store.read("a").await.expect("read"), now)
            .expect("readable")
            .expect("a session");
        let rs = [ra];
        // The release of 7 is owed, m2 is in flight as 8, m3 is queued,
        // 42 awaits its release; each message is there whole.
        assert_eq!(inflight(&rs), vec![(7, None), (8, Some("m2".into()))]);
        assert_eq!(queue(&rs, "a"), vec!["m3"]);
        assert_eq!(rs[0].awaiting_rel, vec![42]);
        assert_eq!(rs[0].record.client_id, "a");
        let rb = from_store(&store.read("b").await.expect("read"), now)
            .expect("readable")
            .expect("b session");
        assert_eq!(queue(&[rb], "b"), vec!["m1"]);
        // A store without quorum fails the publish's ticket as such.
        store.down.store(true, Ordering::Relaxed);
        let (t, _) = j
            .record(&msg("m4"), [(b, &q2[..])].into_iter())
            .expect("journaled");
        assert!(
            matches!(t.wait().await, Err(DurableError::Unavailable(_))),
            "the copy was not confirmed"
        );
        // A session that ended (b) is no longer copied; one still linked
        // (a) still waits for its copy; once unlinked, its tickets are the
        // journal's alone.
        j.forget(b, &[]);
        let (t, _) = j
            .record(&msg("m5"), [(a, &q2[..])].into_iter())
            .expect("journaled");
        assert!(matches!(t.wait().await, Err(DurableError::Unavailable(_))));
        j.unlink(a);
        let (t, _) = j
            .record(&msg("m6"), [(a, &q2[..])].into_iter())
            .expect("journaled");
        t.wait().await.expect("the journal alone");
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_relinked_session_is_copied_whole_then_change_by_change() {
        let dir = fresh_dir("emqx-rs-journal-relink");
        let store = Arc::new(MemStore::default());
        let (j, _) = reopen(&dir);
        let a = saved(&j, "a").await;
        let q1 = matches(QoS::AtLeastOnce);
        // Journaled while not copied (m1 shared with a session that is
        // not in the store: its message is in the messages table).
        let b = j.next_key();
        let (t, _) = j
            .record(&msg("m1"), [(a, &q1[..]), (b, &q1[..])].into_iter())
            .expect("journaled");
        t.wait().await.expect("m1");
        assert!(j
            .relink(a, "a", 7, store.clone(), "n1@127.0.0.1")
            .await
            .expect("relink"));
        // Copied after the whole copy.
        let (t, _) = j
            .record(&msg("m2"), [(a, &q1[..])].into_iter())
            .expect("journaled");
        t.wait().await.expect("m2");
        let r = from_store(&store.read("a").await.expect("read"), now_ms())
            .expect("readable")
            .expect("a session");
        assert_eq!(queue(&[r], "a"), vec!["m1", "m2"]);
        // A life that ended is not copied: its empty copy would replace
        // the new life's.
        j.forget(a, &[]);
        let before = store.rows.lock().len();
        assert!(!j
            .relink(a, "a", 8, store.clone(), "n1@127.0.0.1")
            .await
            .expect("relink"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.rows.lock().len(), before);
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn outgoing_qos2_packet_ids_come_back_with_their_session() {
        let dir = fresh_dir("emqx-rs-journal-q2");
        let q2 = matches(QoS::ExactlyOnce);
        let a = {
            let (j, _) = reopen(&dir);
            let a = saved(&j, "a").await;
            let mut keys = Vec::new();
            for p in ["m1", "m2", "m3"] {
                let mut m = msg(p);
                m.qos = QoS::ExactlyOnce;
                let (t, k) = j.record(&m, [(a, &q2[..])].into_iter()).expect("journaled");
                t.wait().await.expect("message");
                keys.push(k[0]);
            }
            // m1 and m2 go out as 7 and 8; the client receives m1.
            let sent = [
                JournalPid::Sent {
                    key: keys[0],
                    pid: 7,
                },
                JournalPid::Sent {
                    key: keys[1],
                    pid: 8,
                },
            ];
            let t = j.update(a, &[], &sent).expect("a ticket for sent ids");
            t.wait().await.expect("sent");
            let received = [JournalPid::Received {
                key: keys[0],
                pid: 7,
            }];
            let t = j.update(a, &[], &received).expect("the PUBREL waits");
            t.wait().await.expect("received");
            // A release completed and nothing else: nothing to wait for.
            assert!(j.update(a, &[], &[JournalPid::Completed(1)]).is_none());
            assert!(j.update(a, &[], &[]).is_none());
            drop(j);
            a
        };
        let (j, r) = reopen(&dir);
        assert_eq!(r.len(), 1);
        // The release of 7 is owed, m2 is in flight as 8, m3 is queued.
        assert_eq!(inflight(&r), vec![(7, None), (8, Some("m2".into()))]);
        assert_eq!(queue(&r, "a"), vec!["m3"]);
        assert_eq!(r[0].snapshot().next_pid, 9);
        // PUBCOMP of 7; PUBREC of 8 and its PUBCOMP.
        let key2_ = match &r[0].inflight[1].1 {
            InflightState::Publish(d) => d.journal,
            InflightState::Release => 0,
        };
        drop(j.update(
            a,
            &[],
            &[
                JournalPid::Completed(7),
                JournalPid::Received { key: key2_, pid: 8 },
                JournalPid::Completed(8),
            ],
        ));
        drop(j);
        let (j, r) = reopen(&dir);
        assert!(inflight(&r).is_empty(), "{:?}", inflight(&r));
        assert_eq!(queue(&r, "a"), vec!["m3"]);
        // The session ends: nothing of it stays.
        j.forget(a, &[]);
        let d = j.durable().clone();
        drop(j);
        let left = rows_left(&d, &[QUEUE_TABLE, SENT_TABLE, PUBREL_TABLE, SESSIONS_TABLE]).await;
        assert_eq!(left, 0);
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A forwarded message's rows carry its stream's position: after a
    /// crash that kept the rows (no separate note of the position was
    /// made), the position is there too, so the sender's resend of it is
    /// skipped rather than delivered a second time.
    #[tokio::test]
    async fn a_forwarded_messages_rows_and_its_streams_position_are_written_together() {
        let dir = fresh_dir("emqx-rs-journal-stream");
        {
            let (j, _) = reopen(&dir);
            let a = saved(&j, "a").await;
            let q1 = matches(QoS::AtLeastOnce);
            assert!(j.streams().expect("streams").is_empty());
            for (seq, body) in [(41u64, "m41"), (42, "m42")] {
                let (t, _) = j
                    .record_at(&msg(body), [(a, &q1[..])].into_iter(), Some((9, seq)))
                    .expect("journaled");
                t.wait().await.expect(body);
            }
            // Not journaled (QoS 0): no position of its own is written.
            let q0 = matches(QoS::AtMostOnce);
            assert!(j
                .record_at(&msg("m43"), [(a, &q0[..])].into_iter(), Some((9, 43)))
                .is_none());
        }
        let (j, r) = reopen(&dir);
        assert_eq!(queue(&r, "a"), vec!["m41", "m42"]);
        assert_eq!(j.streams().expect("streams"), vec![(9, 42)]);
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn rows_follow_the_sessions_and_what_no_session_needs_is_removed() {
        let dir = fresh_dir("emqx-rs-journal");
        let (a, b) = {
            let (j, r) = reopen(&dir);
            assert!(r.is_empty());
            let (a, b) = (j.next_key(), j.next_key());
            j.save(&record("a", a))
                .expect("save")
                .wait()
                .await
                .expect("a");
            j.save(&record("b", b))
                .expect("save")
                .wait()
                .await
                .expect("b");
            let q1 = matches(QoS::AtLeastOnce);
            let q0 = matches(QoS::AtMostOnce);
            // m1 to a, to a session that does not journal, and to b;
            // m2 to a only; m3 to b at QoS 0 (not journaled).
            let (t, keys1) = j
                .record(
                    &msg("m1"),
                    [(a, &q1[..]), (0, &q1[..]), (b, &q1[..])].into_iter(),
                )
                .expect("journaled");
            t.wait().await.expect("m1");
            assert_eq!(keys1.len(), 3);
            assert_eq!(keys1[1], 0);
            assert_eq!(keys1[0], keys1[2]);
            let (t, keys2) = j
                .record(&msg("m2"), [(a, &q1[..])].into_iter())
                .expect("journaled");
            t.wait().await.expect("m2");
            assert!(j.record(&msg("m3"), [(b, &q0[..])].into_iter()).is_none());
            // m1 is shared (in the messages table), m2 is in a's row only.
            assert_eq!(j.messages_held(), 1);
            assert_eq!(j.durable().count(MESSAGES_TABLE).expect("count"), 1);
            // a acknowledges m1: b still needs it.
            j.release(a, &[keys1[0]]);
            assert_eq!(j.messages_held(), 1);
            let _ = keys2;
            (a, b)
        };
        let (j, r) = reopen(&dir);
        assert_eq!(queue(&r, "a"), vec!["m2"]);
        assert_eq!(queue(&r, "b"), vec!["m1"]);
        assert!(r.iter().all(|r| r.remaining(now_ms()).is_some()));
        // b ends (its held m1 released); a's life is replaced by a newer one
        // of the same client, written before the old record went.
        let held: Vec<u64> = r
            .iter()
            .find(|r| r.record.client_id == "b")
            .map(|r| r.queue.iter().map(|d| d.journal).collect())
            .unwrap_or_default();
        j.forget(b, &held);
        let a2 = j.next_key();
        j.save(&record("a", a2))
            .expect("save")
            .wait()
            .await
            .expect("a2");
        drop(j);
        let (j, r) = reopen(&dir);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].record.incarnation, a2);
        assert!(queue(&r, "a").is_empty(), "the old life's rows went");
        // m1 (nobody needs it) and the old life of a are gone from disk.
        let d = j.durable().clone();
        drop(j);
        let _ = a;
        assert_eq!(rows_left(&d, &[MESSAGES_TABLE, QUEUE_TABLE]).await, 0);
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
