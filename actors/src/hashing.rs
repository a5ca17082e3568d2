//! The one hash the node uses to spread keys over buckets: lock stripes,
//! table shards, forwarding connections, the owner of a client id's
//! cluster lock. Stable for a given build (SipHash with fixed keys), so
//! every node of a cluster agrees on it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

pub fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Which of `n` buckets `key` falls in (`n` > 0).
pub fn bucket(key: &str, n: usize) -> usize {
    (hash_str(key) % n as u64) as usize
}
