//! Replicated tables: small key-value tables every node holds in full and
//! any node may write (the users of the built-in authentication database,
//! the banned clients; later the built-in authorization rules). EMQX keeps
//! these in Mria tables; here each table is a last-writer-wins map.
//!
//! - Every write is stamped with a hybrid logical clock `(ms, node)`: the
//!   wall clock, never below one more than the largest stamp this node has
//!   seen, so a write made after another one was received wins even when
//!   the clocks of the two nodes disagree.
//! - A delete is a tombstone (an entry without value) so it wins over the
//!   older value wherever that still lives. Tombstones are kept.
//! - Merging is commutative, associative and idempotent: nodes that have
//!   received the same entries, in any order and any number of times, hold
//!   the same table. The cluster broadcasts each write and, whenever a peer
//!   comes up, pushes its whole tables to it, so a member that missed
//!   writes (down, partitioned) catches up as soon as it is reachable.
//! - A node that joins a cluster drops its tables and takes the cluster's
//!   (as a Mria join does), then lays its bootstrap entries under them.
//! - Bootstrap entries (from a file read at start) carry stamp zero: any
//!   explicit write, a delete included, wins over them.
//!
//! Tables are kept in `<node.data_dir>/tables.redb` (redb, one redb table
//! per replicated table), written in one transaction per merge.
//!
//! This is the node layer's contract: the cluster carries [`TableOps`]
//! between nodes and calls [`ReplTables::merge`], [`ReplTables::snapshot`]
//! and [`ReplTables::replace_all`].

use parking_lot::{Mutex, RwLock};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One row: its key, its value (`None`: deleted) and its stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// Hybrid-clock milliseconds; zero for bootstrap entries.
    pub ms: u64,
    /// The node that wrote it (empty for bootstrap entries).
    pub node: String,
}

impl Entry {
    /// Whether `self` wins over `other` (same key). Equal stamps with
    /// different values (two bootstrap files that disagree) are ordered by
    /// value, so every node picks the same one.
    fn beats(&self, other: &Entry) -> bool {
        (self.ms, &self.node, &self.value) > (other.ms, &other.node, &other.value)
    }
}

/// Writes of one table, as sent between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableOps {
    pub table: String,
    pub entries: Vec<Entry>,
}

/// Why a table could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot open {path}: {error}")]
    Open { path: PathBuf, error: String },
    #[error("{path}: {error}")]
    Store { path: PathBuf, error: String },
    #[error("no replicated table named {0:?}")]
    Unknown(String),
}

/// Stored form of an entry (the key is the redb key).
#[derive(Serialize, Deserialize)]
struct Stored {
    value: Option<Vec<u8>>,
    ms: u64,
    node: String,
}

fn bincode_cfg() -> impl bincode::config::Config {
    bincode::config::standard()
}

struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl Store {
    fn err(&self, e: impl std::fmt::Display) -> TableError {
        TableError::Store {
            path: self.path.clone(),
            error: e.to_string(),
        }
    }

    /// Writes `entries` of `table` in one transaction; with `clear`, the
    /// table is emptied first.
    fn write(&self, table: &str, entries: &[&Entry], clear: bool) -> Result<(), TableError> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            if clear {
                tx.delete_table(def).map_err(|e| self.err(e))?;
            }
            let mut t = tx.open_table(def).map_err(|e| self.err(e))?;
            for e in entries {
                let s = Stored {
                    value: e.value.clone(),
                    ms: e.ms,
                    node: e.node.clone(),
                };
                let bytes =
                    bincode::serde::encode_to_vec(&s, bincode_cfg()).map_err(|e| self.err(e))?;
                t.insert(e.key.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn load(&self, table: &str) -> Result<HashMap<String, Entry>, TableError> {
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = HashMap::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (s, _): (Stored, usize) =
                bincode::serde::decode_from_slice(v.value(), bincode_cfg())
                    .map_err(|e| self.err(format!("table {table}, key {:?}: {e}", k.value())))?;
            let key = k.value().to_string();
            out.insert(
                key.clone(),
                Entry {
                    key,
                    value: s.value,
                    ms: s.ms,
                    node: s.node,
                },
            );
        }
        Ok(out)
    }
}

/// One replicated table.
pub struct Table {
    name: String,
    rows: RwLock<HashMap<String, Entry>>,
    /// Bumped on every change (caches built from the table compare it).
    generation: AtomicU64,
}

impl Table {
    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.rows.read().get(key).and_then(|e| e.value.clone())
    }

    /// Every live `(key, value)`, ordered by key.
    pub fn list(&self) -> Vec<(String, Vec<u8>)> {
        let rows = self.rows.read();
        let mut out: Vec<(String, Vec<u8>)> = rows
            .values()
            .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How many live rows.
    pub fn len(&self) -> usize {
        self.rows
            .read()
            .values()
            .filter(|e| e.value.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies the entries that win; returns those that changed the table.
    fn merge<'a>(&self, entries: &'a [Entry]) -> Vec<&'a Entry> {
        let mut rows = self.rows.write();
        let mut changed = Vec::new();
        for e in entries {
            let wins = match rows.get(&e.key) {
                Some(old) => e.beats(old),
                None => true,
            };
            if wins {
                rows.insert(e.key.clone(), e.clone());
                changed.push(e);
            }
        }
        if !changed.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }
}

/// The node's replicated tables.
pub struct ReplTables {
    node: String,
    tables: BTreeMap<String, Arc<Table>>,
    store: Option<Store>,
    /// The largest stamp issued or seen (the hybrid clock).
    clock: Mutex<u64>,
    /// Bootstrap entries, laid again under the cluster's tables after a join.
    seeds: Mutex<Vec<(String, Entry)>>,
    /// Local writes, to the cluster.
    out: mpsc::UnboundedSender<TableOps>,
    /// Serialises merges with their store writes, so the file receives
    /// changes in the order the memory did.
    write_lock: Mutex<()>,
}

impl ReplTables {
    /// Opens the tables `names`, kept under `dir` (`None`: memory only, for
    /// tests), and the receiver of this node's writes for the cluster.
    pub fn open(
        node: &str,
        dir: Option<&Path>,
        names: &[&str],
    ) -> Result<(ReplTables, mpsc::UnboundedReceiver<TableOps>), TableError> {
        let store = match dir {
            Some(d) => {
                let path = d.join("tables.redb");
                let db = redb::Database::create(&path).map_err(|e| TableError::Open {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
                Some(Store { db, path })
            }
            None => None,
        };
        let mut tables = BTreeMap::new();
        let mut max_ms = 0;
        for name in names {
            let rows = match &store {
                Some(s) => s.load(name)?,
                None => HashMap::new(),
            };
            max_ms = rows.values().map(|e| e.ms).fold(max_ms, u64::max);
            tables.insert(
                name.to_string(),
                Arc::new(Table {
                    name: name.to_string(),
                    rows: RwLock::new(rows),
                    generation: AtomicU64::new(0),
                }),
            );
        }
        let (out, rx) = mpsc::unbounded_channel();
        Ok((
            ReplTables {
                node: node.to_string(),
                tables,
                store,
                clock: Mutex::new(max_ms),
                seeds: Mutex::new(Vec::new()),
                out,
                write_lock: Mutex::new(()),
            },
            rx,
        ))
    }

    pub fn table(&self, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(name)
    }

    fn table_or_err(&self, name: &str) -> Result<&Arc<Table>, TableError> {
        self.tables
            .get(name)
            .ok_or_else(|| TableError::Unknown(name.to_string()))
    }

    /// The next stamp at wall-clock time `now_ms`.
    fn tick(&self, now_ms: u64) -> u64 {
        let mut c = self.clock.lock();
        *c = (*c + 1).max(now_ms);
        *c
    }

    fn observe(&self, ms: u64) {
        let mut c = self.clock.lock();
        *c = (*c).max(ms);
    }

    /// Writes (`Some`) or deletes (`None`) `key` on this node and sends the
    /// write to the cluster.
    pub fn write(&self, table: &str, key: &str, value: Option<Vec<u8>>) -> Result<(), TableError> {
        self.write_at(table, key, value, crate::clock::now_ms())
    }

    /// [`ReplTables::write`] at a given wall-clock time.
    pub fn write_at(
        &self,
        table: &str,
        key: &str,
        value: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Result<(), TableError> {
        let t = self.table_or_err(table)?;
        let e = Entry {
            key: key.to_string(),
            value,
            ms: self.tick(now_ms),
            node: self.node.clone(),
        };
        let entries = [e];
        self.apply(t, &entries)?;
        let [e] = entries;
        let _ = self.out.send(TableOps {
            table: table.to_string(),
            entries: vec![e],
        });
        Ok(())
    }

    /// A bootstrap entry: stamp zero, so any real write wins over it; kept
    /// to be laid again under the cluster's table after a join.
    pub fn seed(&self, table: &str, key: &str, value: Vec<u8>) -> Result<(), TableError> {
        let t = self.table_or_err(table)?;
        let e = Entry {
            key: key.to_string(),
            value: Some(value),
            ms: 0,
            node: String::new(),
        };
        self.seeds.lock().push((table.to_string(), e.clone()));
        self.apply(t, &[e]).map(|_| ())
    }

    fn apply(&self, t: &Table, entries: &[Entry]) -> Result<usize, TableError> {
        let _w = self.write_lock.lock();
        let changed = t.merge(entries);
        if let (Some(s), false) = (&self.store, changed.is_empty()) {
            s.write(&t.name, &changed, false)?;
        }
        Ok(changed.len())
    }

    /// Merges entries received from another node; returns how many changed
    /// this node's table.
    pub fn merge(&self, ops: &TableOps) -> Result<usize, TableError> {
        let t = self.table_or_err(&ops.table)?;
        if let Some(max) = ops.entries.iter().map(|e| e.ms).max() {
            self.observe(max);
        }
        self.apply(t, &ops.entries)
    }

    /// Every table in full (tombstones included), for a peer that comes up
    /// or a node joining through this one. Empty tables are left out.
    pub fn snapshot(&self) -> Vec<TableOps> {
        self.tables
            .values()
            .filter_map(|t| {
                let rows = t.rows.read();
                if rows.is_empty() {
                    return None;
                }
                let mut entries: Vec<Entry> = rows.values().cloned().collect();
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                Some(TableOps {
                    table: t.name.clone(),
                    entries,
                })
            })
            .collect()
    }

    /// A join: drop every table, take the cluster's, and lay this node's
    /// bootstrap entries under them.
    pub fn replace_all(&self, snapshot: Vec<TableOps>) -> Result<(), TableError> {
        let _w = self.write_lock.lock();
        let mut by_name: HashMap<String, Vec<Entry>> = HashMap::new();
        for ops in snapshot {
            by_name.entry(ops.table).or_default().extend(ops.entries);
        }
        let seeds = self.seeds.lock().clone();
        for (name, t) in &self.tables {
            let mut rows: HashMap<String, Entry> = HashMap::new();
            for e in by_name.remove(name).unwrap_or_default() {
                self.observe(e.ms);
                match rows.get(&e.key) {
                    Some(old) if !e.beats(old) => {}
                    _ => {
                        rows.insert(e.key.clone(), e);
                    }
                }
            }
            for (_, e) in seeds.iter().filter(|(n, _)| n == name) {
                match rows.get(&e.key) {
                    Some(old) if !e.beats(old) => {}
                    _ => {
                        rows.insert(e.key.clone(), e.clone());
                    }
                }
            }
            if let Some(s) = &self.store {
                let all: Vec<&Entry> = rows.values().collect();
                s.write(name, &all, true)?;
            }
            *t.rows.write() = rows;
            t.generation.fetch_add(1, Ordering::AcqRel);
        }
        for name in by_name.keys() {
            tracing::warn!("replicated table {name:?} from the cluster is unknown here; ignored");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
