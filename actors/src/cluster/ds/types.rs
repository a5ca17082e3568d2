//! The types every part of `ds` shares: the Raft type configuration, node
//! ids, the store's tables and the encoding of what is stored.

use super::state::{Batch, Reply};
use serde::Serialize;

/// A node's id in the Raft groups: derived from its name (see [`node_id`]).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The type configuration of the shards' Raft groups.
    pub Ds:
        D = Batch,
        R = Vec<Reply>,
        SnapshotData = Vec<u8>,
);

/// A shard's Raft handle.
pub type DsRaft = openraft::Raft<Ds>;

/// Log entries: `shard (2 bytes) ++ index (8 bytes)`, big-endian.
pub const LOG_TABLE: &str = "ds_log";
/// Vote, committed and purged pointers: `shard ++ tag`.
pub const META_TABLE: &str = "ds_meta";
/// The last snapshot of each shard: key `shard`.
pub const SNAP_TABLE: &str = "ds_snapshot";

/// A node's id: the first 8 bytes of the SHA-256 of its name. Stable
/// across restarts and the same on every node; the name travels beside
/// it (in `openraft::BasicNode::addr`).
pub fn node_id(name: &str) -> NodeId {
    hash64(name.as_bytes())
}

/// The first 8 bytes of the SHA-256 of `b`: the same on every node and in
/// every build (node ids, shards and placement depend on it, on disk).
pub fn hash64(b: &[u8]) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(b);
    let mut x = [0u8; 8];
    x.copy_from_slice(&d[..8]);
    u64::from_be_bytes(x)
}

/// The writes that remove everything shard `shard` keeps on a node (its
/// log, vote, pointers and snapshot): every key of each table starts
/// with the shard's two bytes.
pub fn clear_shard_ops(shard: u16) -> Vec<crate::durable::Op> {
    let from = shard.to_be_bytes().to_vec();
    let mut to = from.clone();
    to.extend_from_slice(&[0xff; 16]);
    [LOG_TABLE, META_TABLE, SNAP_TABLE]
        .into_iter()
        .map(|table| crate::durable::Op::DeleteRange {
            table,
            from: from.clone(),
            to: to.clone(),
        })
        .collect()
}

pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v)
}
