//! A shard's state machine on one node: the [`ShardState`] in memory, and
//! its last snapshot in the durable store. Applying does not write to
//! disk: after a restart the state is the snapshot's, and Raft applies the
//! log after it again (the log is purged only up to a snapshot that is on
//! disk).

use super::state::{Reply, ShardState};
use super::types::{decode, encode, Ds, NodeId, SNAP_TABLE};
use crate::durable::{Durable, Op};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use std::sync::Arc;

type Meta = SnapshotMeta<NodeId, BasicNode>;

#[derive(Default)]
struct Sm {
    state: ShardState,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<(Meta, Vec<u8>)>,
    built: u64,
}

/// One shard's state machine on one node. Cheap to clone.
#[derive(Clone)]
pub struct SmStore {
    shard: u16,
    durable: Durable,
    sm: Arc<Mutex<Sm>>,
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl SmStore {
    /// Restores shard `shard` from its last snapshot in `durable`.
    pub fn open(durable: &Durable, shard: u16) -> Result<SmStore, String> {
        let mut sm = Sm::default();
        let key = shard.to_be_bytes();
        let mut end = key.to_vec();
        end.push(0);
        let read_err = |e: &dyn std::fmt::Display| format!("{SNAP_TABLE}: {e}");
        if let Some((_, v)) = durable
            .range(SNAP_TABLE, &key, &end)
            .map_err(|e| read_err(&e))?
            .pop()
        {
            let (meta, data): (Meta, Vec<u8>) = decode(&v).map_err(|e| read_err(&e))?;
            sm.state = decode(&data).map_err(|e| read_err(&e))?;
            sm.applied = meta.last_log_id;
            sm.membership = meta.last_membership.clone();
            sm.snapshot = Some((meta, data));
        }
        Ok(SmStore {
            shard,
            durable: durable.clone(),
            sm: Arc::new(Mutex::new(sm)),
        })
    }

    /// Runs `f` on the state as applied on this replica so far.
    pub fn read<T>(&self, f: impl FnOnce(&ShardState) -> T) -> T {
        f(&self.sm.lock().state)
    }

    /// The last log id applied here.
    pub fn applied(&self) -> Option<LogId<NodeId>> {
        self.sm.lock().applied
    }

    async fn save(&self, meta: &Meta, data: &[u8]) -> Result<(), StorageError<NodeId>> {
        let value = encode(&(meta, data)).map_err(snap_err)?;
        self.durable
            .submit(vec![Op::Put {
                table: SNAP_TABLE,
                key: self.shard.to_be_bytes().to_vec(),
                value,
            }])
            .wait()
            .await
            .map_err(snap_err)
    }
}

impl RaftSnapshotBuilder<Ds> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Ds>, StorageError<NodeId>> {
        let (meta, data) = {
            let mut sm = self.sm.lock();
            sm.built += 1;
            let id = match sm.applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, sm.built),
                None => format!("--{}", sm.built),
            };
            let meta = Meta {
                last_log_id: sm.applied,
                last_membership: sm.membership.clone(),
                snapshot_id: id,
            };
            (meta, encode(&sm.state).map_err(snap_err)?)
        };
        // On disk before Raft may purge the log it replaces.
        self.save(&meta, &data).await?;
        self.sm.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<Ds> for SmStore {
    type SnapshotBuilder = SmStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let sm = self.sm.lock();
        Ok((sm.applied, sm.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Reply>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Ds>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut sm = self.sm.lock();
        let mut out = Vec::new();
        for e in entries {
            sm.applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(ref batch) => sm.state.apply_batch(e.log_id.index, batch),
                EntryPayload::Membership(ref m) => {
                    sm.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    Vec::new()
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SmStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        let state: ShardState = decode(&snapshot).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            ))
        })?;
        self.save(meta, &snapshot).await?;
        let mut sm = self.sm.lock();
        sm.state = state;
        sm.applied = meta.last_log_id;
        sm.membership = meta.last_membership.clone();
        sm.snapshot = Some((meta.clone(), *snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Ds>>, StorageError<NodeId>> {
        Ok(self
            .sm
            .lock()
            .snapshot
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(data),
            }))
    }
}
