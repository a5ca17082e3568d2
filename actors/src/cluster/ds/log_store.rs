//! A shard's Raft log and vote, kept in the node's durable store (one redb
//! file, group commit: the appends of every shard on the node share one
//! fsync). The entries also stay in memory from the last purge on, as
//! Raft reads them back to replicate them, and must be able to as soon
//! as `append` returns; what is on disk is read only at start.
//!
//! Writes reach the store in the order they were made (one queue, one
//! writer), and a commit holds a prefix of that queue, so a crash can
//! lose a tail of the changes but never one change while keeping a later
//! one: a truncation is never lost while the append after it survives.

use super::types::{decode, encode, Ds, NodeId, LOG_TABLE, META_TABLE};
use crate::durable::{Durable, Op};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

const VOTE: u8 = 0;
const COMMITTED: u8 = 1;
const PURGED: u8 = 2;
/// The group the replica belongs to (see [`LogStore::group`]).
const GROUP: u8 = 3;

#[derive(Default)]
struct Log {
    entries: BTreeMap<u64, Entry<Ds>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    group: u64,
}

/// One shard's log on one node.
#[derive(Clone)]
pub struct LogStore {
    shard: u16,
    durable: Durable,
    log: Arc<Mutex<Log>>,
}

fn log_key(shard: u16, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The first key past entry `index` of `shard` (the end of a range that
/// takes it in).
fn log_key_after(shard: u16, index: u64) -> Vec<u8> {
    let mut k = log_key(shard, index);
    k.push(0);
    k
}

fn meta_key(shard: u16, what: u8) -> Vec<u8> {
    let mut k = shard.to_be_bytes().to_vec();
    k.push(what);
    k
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

impl LogStore {
    /// Reads shard `shard`'s log, vote and pointers from `durable`.
    pub fn open(durable: &Durable, shard: u16) -> Result<LogStore, String> {
        let mut log = Log::default();
        let bad = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        for (k, v) in durable
            .range(META_TABLE, &meta_key(shard, 0), &meta_key(shard, u8::MAX))
            .map_err(|e| bad(META_TABLE, &e))?
        {
            match k.last() {
                Some(&VOTE) => log.vote = Some(decode(&v).map_err(|e| bad("vote", &e))?),
                Some(&COMMITTED) => {
                    log.committed = Some(decode(&v).map_err(|e| bad("committed", &e))?)
                }
                Some(&PURGED) => log.last_purged = Some(decode(&v).map_err(|e| bad("purged", &e))?),
                Some(&GROUP) => log.group = decode(&v).map_err(|e| bad("group", &e))?,
                _ => {}
            }
        }
        let rows = durable
            .range(
                LOG_TABLE,
                &log_key(shard, 0),
                &log_key_after(shard, u64::MAX),
            )
            .map_err(|e| bad(LOG_TABLE, &e))?;
        for (k, v) in rows {
            let e: Entry<Ds> = decode(&v).map_err(|e| bad(&format!("log entry {k:?}"), &e))?;
            log.entries.insert(e.log_id.index, e);
        }
        Ok(LogStore {
            shard,
            durable: durable.clone(),
            log: Arc::new(Mutex::new(log)),
        })
    }

    fn put_meta(&self, what: u8, bytes: Vec<u8>) -> Op {
        Op::Put {
            table: META_TABLE,
            key: meta_key(self.shard, what),
            value: bytes,
        }
    }

    /// Entries held (from the last purge on), for `ctl`.
    pub fn len(&self) -> usize {
        self.log.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The identity of the shard's group this replica belongs to: drawn
    /// at random by the node that made the group, learned by the others
    /// from its leaders' messages (0: none yet). Two groups of one shard
    /// (made by nodes that were alone, then joined) have different ones,
    /// and a replica takes no message of a group other than its own.
    pub fn group(&self) -> u64 {
        self.log.lock().group
    }

    /// The write that makes `group` the group of shard `shard`'s replica
    /// opened next.
    pub fn group_op(shard: u16, group: u64) -> Result<Op, String> {
        Ok(Op::Put {
            table: META_TABLE,
            key: meta_key(shard, GROUP),
            value: encode(&group).map_err(|e| e.to_string())?,
        })
    }

    /// Makes `group` this replica's group, on disk before it returns.
    pub async fn set_group(&self, group: u64) -> Result<(), String> {
        let op = Self::group_op(self.shard, group)?;
        self.log.lock().group = group;
        self.durable
            .submit(vec![op])
            .wait()
            .await
            .map_err(|e| format!("shard {}: its group not written: {e}", self.shard))
    }
}

impl RaftLogReader<Ds> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Ds>>, StorageError<NodeId>> {
        let log = self.log.lock();
        Ok(log.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<Ds> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Ds>, StorageError<NodeId>> {
        let log = self.log.lock();
        let last = log.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last.or(log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let op = self.put_meta(VOTE, encode(vote).map_err(write_err)?);
        self.log.lock().vote = Some(*vote);
        self.durable
            .submit(vec![op])
            .wait()
            .await
            .map_err(|e| StorageIOError::write_vote(&std::io::Error::other(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.log.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if let Some(c) = committed {
            let op = self.put_meta(COMMITTED, encode(&c).map_err(write_err)?);
            self.log.lock().committed = committed;
            // Only an optimisation (what a restarted replica applies before
            // it hears from a leader): nobody waits for it.
            self.durable.submit_nowait(vec![op]);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.log.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Ds>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Ds>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        {
            let mut log = self.log.lock();
            for e in entries {
                ops.push(Op::Put {
                    table: LOG_TABLE,
                    key: log_key(self.shard, e.log_id.index),
                    value: encode(&e).map_err(write_err)?,
                });
                log.entries.insert(e.log_id.index, e);
            }
        }
        self.durable.submit(ops).on_done(move |r| {
            callback.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())))
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let last = {
            let mut log = self.log.lock();
            let last = log.entries.keys().next_back().copied();
            log.entries.split_off(&log_id.index);
            last
        };
        if let Some(last) = last.filter(|l| *l >= log_id.index) {
            // Queued before any later append: committed with or before it.
            self.durable.submit_nowait(vec![Op::DeleteRange {
                table: LOG_TABLE,
                from: log_key(self.shard, log_id.index),
                to: log_key_after(self.shard, last),
            }]);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let purged = encode(&log_id).map_err(write_err)?;
        {
            let mut log = self.log.lock();
            log.entries = log.entries.split_off(&(log_id.index + 1));
            log.last_purged = Some(log_id);
        }
        // The removal and the new pointer in one commit.
        let ops = vec![
            Op::DeleteRange {
                table: LOG_TABLE,
                from: log_key(self.shard, 0),
                to: log_key_after(self.shard, log_id.index),
            },
            self.put_meta(PURGED, purged),
        ];
        self.durable.submit_nowait(ops);
        Ok(())
    }
}
