//! What one shard's Raft group agrees on: the tables of the persistent
//! sessions whose client ids fall in the shard, and who owns each session
//! (which node, since which epoch).
//!
//! Plain data and a deterministic `apply`: every replica that applies the
//! same commands in the same order holds the same state. An epoch comes
//! from the log position of the claim that set it ([`epoch_of`]), so epochs
//! only grow, and a write
//! made under an epoch that a later claim replaced is refused (fenced):
//! a node that lost a session without knowing it cannot change it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A table of a shard: keys and values are the caller's bytes.
pub type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// One change to one table of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
///
/// Keys and values are encoded as byte strings (`serde_bytes`), not as
/// sequences of numbers: a message's payload is copied, not walked.
pub enum DsOp {
    Put {
        table: u8,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        table: u8,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Removes every key `from <= key < to`.
    DeleteRange {
        table: u8,
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
}

/// Who holds a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node's name, `name@host`.
    pub node: String,
    /// From the log position of the claim ([`epoch_of`]).
    pub epoch: u64,
}

/// What a shard's log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A connect on `node` takes the session of `client`: the answer is
    /// the new epoch and the owner before (none: no session was there).
    Claim { client: String, node: String },
    /// Changes made by the owner of `client`'s session under `epoch`;
    /// refused when another claim came since.
    Write {
        client: String,
        epoch: u64,
        ops: Vec<DsOp>,
    },
    /// The session ended (expired, or replaced by a clean start): `ops`
    /// are applied, then its owner and every row of it go; fenced like a
    /// write.
    Release {
        client: String,
        epoch: u64,
        ops: Vec<DsOp>,
    },
    /// `node` takes the session of `client` from `from` (a node the
    /// cluster sees down): a claim, but only while `from` still holds it
    /// under `epoch`; otherwise refused as `Fenced` with the owner it has.
    Adopt {
        client: String,
        node: String,
        from: String,
        epoch: u64,
    },
}

/// What one log entry carries: the commands that reached the leader
/// while the entry before was on its way (see `Replica::write_here`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// The epoch of the command at `position` in the entry at log `index`:
/// epochs grow with the log, and two claims in one entry differ.
pub fn epoch_of(index: u64, position: usize) -> u64 {
    (index << 16) | (position as u64 & 0xffff)
}

/// Most commands in one entry (their epochs must fit [`epoch_of`]).
pub const MAX_BATCH: usize = 4096;

/// About the most bytes of commands in one entry (an entry holds at least
/// one command, whatever its size): a follower behind gets many entries
/// in one message.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

impl DsOp {
    /// About the bytes this change carries.
    pub fn approx_len(&self) -> usize {
        match self {
            DsOp::Put { key, value, .. } => 8 + key.len() + value.len(),
            DsOp::Delete { key, .. } => 8 + key.len(),
            DsOp::DeleteRange { from, to, .. } => 8 + from.len() + to.len(),
        }
    }
}

impl Command {
    /// About the bytes this command carries.
    pub fn approx_len(&self) -> usize {
        match self {
            Command::Claim { client, node } => 16 + client.len() + node.len(),
            Command::Adopt {
                client, node, from, ..
            } => 32 + client.len() + node.len() + from.len(),
            Command::Write { client, ops, .. } | Command::Release { client, ops, .. } => {
                24 + client.len() + ops.iter().map(DsOp::approx_len).sum::<usize>()
            }
        }
    }
}

/// The answer to a [`Command`] once it is committed and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Also the answer to the entries Raft itself adds (blank, membership).
    Done,
    Claimed {
        epoch: u64,
        previous: Option<Owner>,
    },
    /// The write or release was refused: `owner` holds the session now.
    Fenced {
        owner: Option<Owner>,
    },
}

/// The key of a row of `client`'s session: every table keys a session's
/// rows by its client id and a 0 byte (MQTT client ids hold no U+0000), so
/// [`ShardState::session`] finds them all.
pub fn session_key(client: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 1 + rest.len());
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// The keys of every row of `client`'s session: `from <= key < to`.
pub fn session_range(client: &str) -> (Vec<u8>, Vec<u8>) {
    let from = session_key(client, &[]);
    let mut to = from.clone();
    if let Some(last) = to.last_mut() {
        *last = 1;
    }
    (from, to)
}

/// Removes every key `from <= key < to` of `t`.
fn remove_range(t: &mut Table, from: &[u8], to: &[u8]) {
    if from < to {
        let doomed: Vec<Vec<u8>> = t
            .range(from.to_vec()..to.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            t.remove(&k);
        }
    }
}

/// One client's session as a shard holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRows {
    pub owner: Option<Owner>,
    /// `(table, key, value)`, in table then key order.
    pub rows: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

/// A shard's replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    pub tables: BTreeMap<u8, Table>,
    pub owners: BTreeMap<String, Owner>,
}

impl ShardState {
    /// Applies a committed entry found at log index `index`.
    pub fn apply_batch(&mut self, index: u64, batch: &Batch) -> Vec<Reply> {
        batch
            .0
            .iter()
            .enumerate()
            .map(|(i, c)| self.apply(epoch_of(index, i), c))
            .collect()
    }

    /// Applies a committed command; a claim takes `epoch`.
    pub fn apply(&mut self, epoch: u64, cmd: &Command) -> Reply {
        match cmd {
            Command::Claim { client, node } => self.claim(client, node, epoch),
            Command::Adopt {
                client,
                node,
                from,
                epoch: held,
            } => match self.owners.get(client) {
                Some(o) if o.node == *from && o.epoch == *held => self.claim(client, node, epoch),
                other => Reply::Fenced {
                    owner: other.cloned(),
                },
            },
            Command::Write { client, epoch, ops } => {
                if let Some(fenced) = self.fence(client, *epoch) {
                    return fenced;
                }
                self.change(ops);
                Reply::Done
            }
            Command::Release { client, epoch, ops } => {
                if let Some(fenced) = self.fence(client, *epoch) {
                    return fenced;
                }
                self.change(ops);
                // Every row of the session goes with it, in every table.
                let (from, to) = session_range(client);
                for t in self.tables.values_mut() {
                    remove_range(t, &from, &to);
                }
                self.tables.retain(|_, t| !t.is_empty());
                self.owners.remove(client);
                Reply::Done
            }
        }
    }

    /// The sessions held by one of `nodes`: `(client, owner)`.
    pub fn owned_by(&self, nodes: &[String]) -> Vec<(String, Owner)> {
        self.owners
            .iter()
            .filter(|(_, o)| nodes.contains(&o.node))
            .map(|(c, o)| (c.clone(), o.clone()))
            .collect()
    }

    /// `client`'s owner and rows (see [`session_key`]).
    pub fn session(&self, client: &str) -> SessionRows {
        let (from, to) = session_range(client);
        let mut rows = Vec::new();
        for (t, table) in &self.tables {
            for (k, v) in table.range(from.clone()..to.clone()) {
                rows.push((*t, k.clone(), v.clone()));
            }
        }
        SessionRows {
            owner: self.owners.get(client).cloned(),
            rows,
        }
    }

    fn claim(&mut self, client: &str, node: &str, epoch: u64) -> Reply {
        let owner = Owner {
            node: node.to_string(),
            epoch,
        };
        let previous = self.owners.insert(client.to_string(), owner);
        Reply::Claimed { epoch, previous }
    }

    fn fence(&self, client: &str, epoch: u64) -> Option<Reply> {
        match self.owners.get(client) {
            Some(o) if o.epoch == epoch => None,
            other => Some(Reply::Fenced {
                owner: other.cloned(),
            }),
        }
    }

    fn change(&mut self, ops: &[DsOp]) {
        for op in ops {
            match op {
                DsOp::Put { table, key, value } => {
                    self.tables
                        .entry(*table)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                DsOp::Delete { table, key } => {
                    if let Some(t) = self.tables.get_mut(table) {
                        t.remove(key);
                    }
                }
                DsOp::DeleteRange { table, from, to } => {
                    if let Some(t) = self.tables.get_mut(table) {
                        remove_range(t, from, to);
                    }
                }
            }
        }
        self.tables.retain(|_, t| !t.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &[u8]) -> DsOp {
        DsOp::Put {
            table: 1,
            key: k.to_vec(),
            value: b"v".to_vec(),
        }
    }

    #[test]
    fn an_adoption_takes_a_session_only_from_the_node_named() {
        let mut s = ShardState::default();
        let claim = |c: &str, n: &str| Command::Claim {
            client: c.into(),
            node: n.into(),
        };
        let adopt = |s: &ShardState, c: &str, from: &str| Command::Adopt {
            client: c.into(),
            node: "b@h".into(),
            from: from.into(),
            epoch: s.owners.get(c).map(|o| o.epoch).unwrap_or(0),
        };
        s.apply(epoch_of(1, 0), &claim("x", "a@h"));
        s.apply(epoch_of(1, 1), &claim("y", "c@h"));
        assert_eq!(
            s.owned_by(&["a@h".to_string()])
                .into_iter()
                .map(|(c, _)| c)
                .collect::<Vec<_>>(),
            vec!["x".to_string()]
        );
        // The client went to c meanwhile: a's session is not there to take.
        let r = s.apply(epoch_of(2, 0), &adopt(&s, "y", "a@h"));
        assert!(
            matches!(&r, Reply::Fenced { owner: Some(o) } if o.node == "c@h"),
            "{r:?}"
        );
        // Nor is a session nobody holds.
        let r = s.apply(epoch_of(2, 1), &adopt(&s, "z", "a@h"));
        assert_eq!(r, Reply::Fenced { owner: None });
        assert!(!s.owners.contains_key("z"));
        // a claimed it again since it was seen: not taken.
        let seen = adopt(&s, "x", "a@h");
        s.apply(epoch_of(2, 2), &claim("x", "a@h"));
        assert!(matches!(
            s.apply(epoch_of(2, 3), &seen),
            Reply::Fenced { .. }
        ));
        // Taken from a: a new epoch, and a's writes are refused from now.
        let old = s.owners["x"].epoch;
        let r = s.apply(epoch_of(2, 4), &adopt(&s, "x", "a@h"));
        assert!(
            matches!(&r, Reply::Claimed { epoch, previous: Some(p) } if *epoch > old && p.node == "a@h"),
            "{r:?}"
        );
        let w = Command::Write {
            client: "x".into(),
            epoch: old,
            ops: vec![put(b"k")],
        };
        assert!(matches!(s.apply(epoch_of(3, 0), &w), Reply::Fenced { .. }));
        // Adopted twice (a command tried again): the second one is refused.
        let again = Command::Adopt {
            client: "x".into(),
            node: "b@h".into(),
            from: "a@h".into(),
            epoch: old,
        };
        assert!(matches!(
            s.apply(epoch_of(3, 1), &again),
            Reply::Fenced { .. }
        ));
    }

    #[test]
    fn claims_in_one_entry_get_growing_epochs() {
        let mut s = ShardState::default();
        let claim = |c: &str| Command::Claim {
            client: c.into(),
            node: "a@h".into(),
        };
        let r = s.apply_batch(7, &Batch(vec![claim("x"), claim("x"), claim("y")]));
        let epochs: Vec<u64> = r
            .iter()
            .map(|r| match r {
                Reply::Claimed { epoch, .. } => *epoch,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(epochs[0] < epochs[1] && epochs[1] < epochs[2]);
        assert!(epochs[2] < epoch_of(8, 0));
        assert_eq!(s.owners["x"].epoch, epochs[1]);
    }

    #[test]
    fn a_later_claim_fences_the_writes_of_the_owner_before() {
        let mut s = ShardState::default();
        let c = "c1".to_string();
        assert_eq!(
            s.apply(
                3,
                &Command::Claim {
                    client: c.clone(),
                    node: "a@h".into()
                }
            ),
            Reply::Claimed {
                epoch: 3,
                previous: None
            }
        );
        let w = |epoch, k: &[u8]| Command::Write {
            client: c.clone(),
            epoch,
            ops: vec![put(k)],
        };
        assert_eq!(s.apply(4, &w(3, b"k1")), Reply::Done);
        let second = s.apply(
            5,
            &Command::Claim {
                client: c.clone(),
                node: "b@h".into(),
            },
        );
        assert_eq!(
            second,
            Reply::Claimed {
                epoch: 5,
                previous: Some(Owner {
                    node: "a@h".into(),
                    epoch: 3
                })
            }
        );
        // The first owner's write comes too late: refused, nothing changes.
        let owner = Some(Owner {
            node: "b@h".into(),
            epoch: 5,
        });
        assert_eq!(
            s.apply(6, &w(3, b"k2")),
            Reply::Fenced {
                owner: owner.clone()
            }
        );
        assert_eq!(s.tables[&1].len(), 1);
        assert_eq!(s.apply(7, &w(5, b"k2")), Reply::Done);
        assert_eq!(s.tables[&1].len(), 2);
        // A release under the old epoch is refused as well; under the
        // current one it removes the owner and the rows.
        let rel = |epoch| Command::Release {
            client: c.clone(),
            epoch,
            ops: vec![DsOp::DeleteRange {
                table: 1,
                from: b"k".to_vec(),
                to: b"l".to_vec(),
            }],
        };
        assert_eq!(s.apply(8, &rel(3)), Reply::Fenced { owner });
        assert_eq!(s.apply(9, &rel(5)), Reply::Done);
        assert!(s.tables.is_empty() && s.owners.is_empty());
        // A session's rows are found by its client id, not a neighbour's.
        let mut t = ShardState::default();
        let put_s = |c: &str, k: &[u8]| DsOp::Put {
            table: 2,
            key: session_key(c, k),
            value: k.to_vec(),
        };
        t.change(&[
            put_s("ab", b"1"),
            put_s("a", b"2"),
            put_s("a", b"3"),
            put_s("a\u{1}", b"4"),
        ]);
        let rows = t.session("a").rows;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.iter().all(|(_, k, _)| k.starts_with(b"a\0")));
        // Without an owner every write is refused.
        assert_eq!(s.apply(10, &w(5, b"k3")), Reply::Fenced { owner: None });
    }
}
