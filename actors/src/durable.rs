//! The node's durable store: `<node.data_dir>/durable.redb`, written by one
//! thread that commits everything waiting in one transaction (group
//! commit: one fsync for every write queued while the previous commit ran,
//! never one per message), and says to each writer when its write is on
//! disk.
//!
//! redb is a copy-on-write B-tree with checksummed commit slots: a commit
//! is durable once `commit()` returns (fsync), and a write torn by a crash
//! is rolled back to the last commit when the file is opened again. A file
//! redb cannot open makes the node refuse to start, naming it.
//!
//! This module is the only one that knows the engine: the retainer (and
//! the persistent sessions after it) see tables of byte keys and values.

mod packed;

use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Why the store could not be opened, read or written.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DurableError {
    #[error("cannot open {path}: {error}")]
    Open { path: PathBuf, error: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: String },
    #[error("{path}: the store's writer has stopped")]
    Stopped { path: PathBuf },
    /// A copy that must be written elsewhere too (the cluster's session
    /// store) was not: no quorum answered in time.
    #[error("the cluster's session store: {0}")]
    Unavailable(String),
}

/// One change to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
    /// Removes every key `from <= key < to`.
    DeleteRange {
        table: &'static str,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Empties the table.
    Clear {
        table: &'static str,
    },
}

struct Job {
    ops: Vec<Op>,
    done: Option<Arc<Outcome>>,
}

/// What is to be done once a write is committed (or failed).
type Callback = Box<dyn FnOnce(Result<(), DurableError>) + Send>;

/// The outcome of one submitted write, shared by its ticket and the
/// writer: pending (with what to call then), or known.
struct Outcome(parking_lot::Mutex<Result<Result<(), DurableError>, Option<Callback>>>);

impl Outcome {
    fn pending() -> Arc<Outcome> {
        Arc::new(Outcome(parking_lot::Mutex::new(Err(None))))
    }

    /// Records the outcome and runs the callback waiting for it, if any
    /// (on the caller's thread: the writer's).
    fn complete(&self, r: Result<(), DurableError>) {
        let cb = {
            let mut g = self.0.lock();
            match std::mem::replace(&mut *g, Ok(r.clone())) {
                Err(cb) => cb,
                Ok(first) => {
                    // Already known: keep the first outcome.
                    *g = Ok(first);
                    None
                }
            }
        };
        if let Some(cb) = cb {
            cb(r);
        }
    }
}

/// A ticket the test resolves itself, with `Ok(())` or an error, by
/// calling the function returned beside it.
#[cfg(test)]
pub(crate) fn test_ticket() -> (Ticket, impl FnOnce(Result<(), DurableError>)) {
    let o = Outcome::pending();
    (Ticket(o.clone()), move |r| o.complete(r))
}

impl Drop for Job {
    /// A write that never reached a commit (the writer is gone).
    fn drop(&mut self) {
        if let Some(o) = self.done.take() {
            o.complete(Err(DurableError::Stopped {
                path: PathBuf::from("durable.redb"),
            }));
        }
    }
}

/// Resolves once the writes it was given for are committed (or failed).
/// Tickets complete in the order their writes were submitted.
pub struct Ticket(Arc<Outcome>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket")
    }
}

impl Ticket {
    /// A ticket already resolved with `Ok`: what a [`join`](Self::join)
    /// starts from when there is no write of its own to wait for.
    pub fn ready() -> Ticket {
        let o = Outcome::pending();
        o.complete(Ok(()));
        Ticket(o)
    }

    /// A ticket that resolves once both this one and `other` have: `Ok`
    /// if both were, else the first failure.
    pub fn and(self, other: Ticket) -> Ticket {
        let (t, mut parts) = self.join(1);
        if let Some(p) = parts.pop() {
            other.on_done(move |r| p.done(r));
        }
        t
    }

    /// Calls `f` with the outcome once the write is committed or failed:
    /// at once if it is known, else on the writer's thread (keep `f`
    /// short: a message to an actor). No task is spent waiting.
    pub fn on_done(self, f: impl FnOnce(Result<(), DurableError>) + Send + 'static) {
        let known = {
            let mut g = self.0 .0.lock();
            match &mut *g {
                Ok(r) => Some(r.clone()),
                Err(slot) => {
                    *slot = Some(Box::new(f));
                    return;
                }
            }
        };
        if let Some(r) = known {
            f(r);
        }
    }

    /// A ticket that resolves once this one and `n` more parts have: `Ok`
    /// if all were, else the first failure. A part dropped unresolved
    /// counts as done (its writer stopped because the write no longer
    /// matters: see [`Part`]).
    pub fn join(self, n: usize) -> (Ticket, Vec<Part>) {
        if n == 0 {
            return (self, Vec::new());
        }
        let joined = Arc::new(Join {
            left: AtomicU64::new(n as u64 + 1),
            first_error: parking_lot::Mutex::new(None),
            outcome: Outcome::pending(),
        });
        let ticket = Ticket(joined.outcome.clone());
        let parts = (0..n).map(|_| Part(Some(joined.clone()))).collect();
        let mine = Part(Some(joined));
        self.on_done(move |r| mine.done(r));
        (ticket, parts)
    }

    pub async fn wait(self) -> Result<(), DurableError> {
        let (tx, rx) = oneshot::channel();
        self.on_done(move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or_else(|_| {
            Err(DurableError::Stopped {
                path: PathBuf::from("durable.redb"),
            })
        })
    }
}

/// What a joined ticket waits for ([`Ticket::join`]).
struct Join {
    left: AtomicU64,
    first_error: parking_lot::Mutex<Option<DurableError>>,
    outcome: Arc<Outcome>,
}

/// One part of a joined ticket, to resolve with its own outcome.
pub struct Part(Option<Arc<Join>>);

impl Part {
    pub fn done(mut self, r: Result<(), DurableError>) {
        if let Some(j) = self.0.take() {
            Self::finish(j, r);
        }
    }

    fn finish(j: Arc<Join>, r: Result<(), DurableError>) {
        if let Err(e) = r {
            j.first_error.lock().get_or_insert(e);
        }
        if j.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let r = match j.first_error.lock().take() {
                Some(e) => Err(e),
                None => Ok(()),
            };
            j.outcome.complete(r);
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(j) = self.0.take() {
            Self::finish(j, Ok(()));
        }
    }
}

/// Counters of the writer, for `ctl` and tests.
#[derive(Debug, Default)]
pub struct DurableStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Changes committed.
    pub ops: AtomicU64,
    /// Commits that failed (each failure also goes to the log).
    pub failures: AtomicU64,
    /// Changes queued, committed or not.
    pub submitted: AtomicU64,
    /// Changes whose commit failed.
    pub failed_ops: AtomicU64,
}

impl DurableStats {
    /// Changes queued and not yet committed (or failed).
    pub fn pending(&self) -> u64 {
        let done = self.ops.load(Ordering::Acquire) + self.failed_ops.load(Ordering::Acquire);
        self.submitted.load(Ordering::Acquire).saturating_sub(done)
    }
}

/// A stored `(key, value)`.
pub type Row = (Vec<u8>, Vec<u8>);

/// Most jobs one transaction takes: bounds the latency of the first one.
const MAX_BATCH: usize = 8192;

/// How long changes nobody waits for (removals of what a client
/// acknowledged, the clock, ...) may wait for others before they are
/// committed: a commit costs the same pages and fsync whatever it holds,
/// so the acknowledgements of one message by its 500 subscribers make one
/// commit, not ten. A change somebody waits for is committed at once,
/// with whatever is queued.
const LAZY: std::time::Duration = std::time::Duration::from_millis(10);

/// redb's page cache (its default is 1 GiB, which a node writing large
/// messages for its persistent sessions would fill with pages it rarely
/// reads again).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The store. Cheap to clone; the writer thread ends when every clone is
/// dropped, after committing what was queued.
#[derive(Clone)]
pub struct Durable {
    db: Arc<redb::Database>,
    path: PathBuf,
    tx: std_mpsc::Sender<Job>,
    /// The tables kept packed ([`Durable::pack`]).
    packed: Packed,
    pub stats: Arc<DurableStats>,
}

type Packed = Arc<parking_lot::RwLock<Vec<&'static str>>>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The name `table` is stored under.
fn stored_name(table: &str, packed: bool) -> String {
    if packed {
        packed::physical(table)
    } else {
        table.to_string()
    }
}

impl Durable {
    /// Opens (or creates) `<dir>/durable.redb` and starts its writer.
    pub fn open(dir: &Path) -> Result<Durable, DurableError> {
        let path = dir.join("durable.redb");
        let db = redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| DurableError::Open {
                path: path.clone(),
                error: e.to_string(),
            })?;
        Durable::start(db, path)
    }

    /// Opens a store kept by another storage backend (the simulated disk
    /// of the crash tests); `label` names it in errors.
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        label: PathBuf,
    ) -> Result<Durable, DurableError> {
        let db = redb::Database::builder()
            .create_with_backend(backend)
            .map_err(|e| DurableError::Open {
                path: label.clone(),
                error: e.to_string(),
            })?;
        Durable::start(db, label)
    }

    fn start(db: redb::Database, path: PathBuf) -> Result<Durable, DurableError> {
        let db = Arc::new(db);
        let stats = Arc::new(DurableStats::default());
        let (tx, rx) = std_mpsc::channel::<Job>();
        let packed = Packed::default();
        let (wdb, wpath, wstats, wpacked) =
            (db.clone(), path.clone(), stats.clone(), packed.clone());
        std::thread::Builder::new()
            .name("durable-writer".into())
            .spawn(move || writer(&wdb, &wpath, &wstats, &wpacked, rx))
            .map_err(|e| DurableError::Open {
                path: path.clone(),
                error: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Durable {
            db,
            path,
            tx,
            packed,
            stats,
        })
    }

    /// From now on `table` is kept packed: the rows one commit writes side
    /// by side, under keys whose first 8 bytes name their owner, are
    /// stored as one row (see `durable/packed.rs`); reads see the rows as
    /// written. Rows the table held unpacked (a file written by an
    /// earlier version) are packed at once, in one commit. Call before
    /// anything writes to `table`.
    pub fn pack(&self, table: &'static str) -> Result<(), DurableError> {
        if self.is_packed(table) {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| self.table_error(table, e);
        let old = self.rows(table, ..)?;
        if !old.is_empty() {
            let keys: BTreeMap<&[u8], Option<&[u8]>> = old
                .iter()
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                .collect();
            let name = packed::physical(table);
            let tx = self.db.begin_write().map_err(|e| err(&e))?;
            {
                let mut t = tx
                    .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                    .map_err(|e| err(&e))?;
                packed::apply(&mut t, &[], &keys).map_err(|e| err(&e))?;
            }
            tx.delete_table(TableDefinition::<&[u8], &[u8]>::new(table))
                .map_err(|e| err(&e))?;
            tx.commit().map_err(|e| err(&e))?;
        }
        self.packed.write().push(table);
        Ok(())
    }

    fn is_packed(&self, table: &str) -> bool {
        self.packed.read().contains(&table)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows of `table` (0 when it was never written).
    pub fn count(&self, table: &'static str) -> Result<u64, DurableError> {
        match self.read_table(table)? {
            None => Ok(0),
            Some((true, t)) => packed::count(&t).map_err(|e| self.table_error(table, &e)),
            Some((false, t)) => t.len().map_err(|e| self.table_error(table, &e)),
        }
    }

    fn table_error(&self, table: &str, e: &dyn std::fmt::Display) -> DurableError {
        DurableError::Io {
            path: self.path.clone(),
            error: format!("table {table}: {e}"),
        }
    }

    /// `table` open for reading, and whether it is packed (`None`: it was
    /// never written).
    fn read_table(&self, table: &'static str) -> Result<Option<(bool, ReadTable)>, DurableError> {
        let packed = self.is_packed(table);
        let name = stored_name(table, packed);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.table_error(table, &e))?;
        match tx.open_table(def) {
            Ok(t) => Ok(Some((packed, t))),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.table_error(table, &e)),
        }
    }

    /// Queues `ops`; they commit with whatever else is queued. The ticket
    /// says when they are on disk.
    pub fn submit(&self, ops: Vec<Op>) -> Ticket {
        self.stats
            .submitted
            .fetch_add(ops.len() as u64, Ordering::AcqRel);
        let done = Outcome::pending();
        if let Err(std_mpsc::SendError(mut job)) = self.tx.send(Job {
            ops,
            done: Some(done.clone()),
        }) {
            if let Some(o) = job.done.take() {
                o.complete(Err(DurableError::Stopped {
                    path: self.path.clone(),
                }));
            }
        }
        Ticket(done)
    }

    /// Queues `ops` without waiting for them (writes nobody acknowledges
    /// to a client: a copy the cluster also holds).
    pub fn submit_nowait(&self, ops: Vec<Op>) {
        self.stats
            .submitted
            .fetch_add(ops.len() as u64, Ordering::AcqRel);
        let _ = self.tx.send(Job { ops, done: None });
    }

    /// Every `(key, value)` of `table`, in key order (empty when the table
    /// was never written).
    pub fn load(&self, table: &'static str) -> Result<Vec<Row>, DurableError> {
        self.rows(table, ..)
    }

    /// The rows of `table` with `from <= key < to`, in key order.
    pub fn range(
        &self,
        table: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<Row>, DurableError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.rows(table, from..to)
    }

    fn rows<'a>(
        &self,
        table: &'static str,
        bounds: impl std::ops::RangeBounds<&'a [u8]> + 'a,
    ) -> Result<Vec<Row>, DurableError> {
        let err = |e: &dyn std::fmt::Display| self.table_error(table, e);
        let Some((packed, t)) = self.read_table(table)? else {
            return Ok(Vec::new());
        };
        if packed {
            fn bound<'k>(b: std::ops::Bound<&&'k [u8]>) -> Option<&'k [u8]> {
                match b {
                    std::ops::Bound::Included(k) | std::ops::Bound::Excluded(k) => Some(*k),
                    std::ops::Bound::Unbounded => None,
                }
            }
            // Only `from..to` and `..` are asked for.
            let (from, to) = (bound(bounds.start_bound()), bound(bounds.end_bound()));
            return packed::rows(&t, from, to).map_err(|e| err(&e));
        }
        let mut out = Vec::new();
        for row in t.range::<&[u8]>(bounds).map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn writer(
    db: &redb::Database,
    path: &Path,
    stats: &DurableStats,
    packed: &Packed,
    rx: std_mpsc::Receiver<Job>,
) {
    let mut batch: Vec<Job> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut waited = first.done.is_some();
        batch.push(first);
        let deadline = std::time::Instant::now() + LAZY;
        loop {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => {
                        waited |= j.done.is_some();
                        batch.push(j);
                    }
                    Err(_) => break,
                }
            }
            if waited || batch.len() >= MAX_BATCH {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(j) => {
                    waited |= j.done.is_some();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        let n: usize = batch.iter().map(|j| j.ops.len()).sum();
        let res = commit(db, &batch, &packed.read().clone()).map_err(|e| DurableError::Io {
            path: path.to_path_buf(),
            error: e,
        });
        match &res {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(n as u64, Ordering::AcqRel);
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                stats.failed_ops.fetch_add(n as u64, Ordering::AcqRel);
                tracing::error!("durable store: {n} change(s) not written: {e}");
            }
        }
        for mut j in batch.drain(..) {
            if let Some(o) = j.done.take() {
                o.complete(res.clone());
            }
        }
    }
}

/// What one batch does to one table: emptied first or not, then the last
/// write of each key (`None`: deleted).
#[derive(Default)]
struct TableBatch<'a> {
    cleared: bool,
    /// Key ranges removed, applied before `keys` (which holds only the
    /// writes made after the last removal covering them).
    ranges: Vec<(&'a [u8], &'a [u8])>,
    keys: BTreeMap<&'a [u8], Option<&'a [u8]>>,
}

/// Commits a batch in one transaction: each table is opened once, and
/// only the last write of each key is applied, in key order.
fn commit(db: &redb::Database, batch: &[Job], packed: &[&str]) -> Result<(), String> {
    let mut tables: BTreeMap<&'static str, TableBatch<'_>> = BTreeMap::new();
    for op in batch.iter().flat_map(|j| &j.ops) {
        match op {
            Op::Put { table, key, value } => {
                tables
                    .entry(table)
                    .or_default()
                    .keys
                    .insert(key, Some(value));
            }
            Op::Delete { table, key } => {
                tables.entry(table).or_default().keys.insert(key, None);
            }
            Op::DeleteRange { table, from, to } => {
                let t = tables.entry(table).or_default();
                if from < to {
                    t.keys
                        .retain(|k, _| *k < from.as_slice() || *k >= to.as_slice());
                    t.ranges.push((from, to));
                }
            }
            Op::Clear { table } => {
                let t = tables.entry(table).or_default();
                t.cleared = true;
                t.ranges.clear();
                t.keys.clear();
            }
        }
    }
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    for (name, b) in &tables {
        let packed = packed.contains(name);
        let stored = stored_name(name, packed);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&stored);
        if b.cleared {
            tx.delete_table(def).map_err(|e| e.to_string())?;
        }
        if b.keys.is_empty() && b.ranges.is_empty() {
            continue;
        }
        let mut t = tx.open_table(def).map_err(|e| e.to_string())?;
        if packed {
            packed::apply(&mut t, &b.ranges, &b.keys)?;
            continue;
        }
        for (from, to) in &b.ranges {
            t.retain_in::<&[u8], _>(*from..*to, |_, _| false)
                .map_err(|e| e.to_string())?;
        }
        for (k, v) in &b.keys {
            match v {
                Some(v) => {
                    t.insert(*k, *v).map_err(|e| e.to_string())?;
                }
                None => {
                    t.remove(*k).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            table: "t",
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn rows(d: &Durable) -> Vec<(String, String)> {
        d.load("t")
            .expect("load")
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k).expect("utf8"),
                    String::from_utf8(v).expect("utf8"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn writes_are_committed_in_order_and_read_back_after_reopening() {
        let dir = std::env::temp_dir().join(format!("emqx-rs-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        {
            let d = Durable::open(&dir).expect("open");
            assert!(rows(&d).is_empty());
            let mut tickets = Vec::new();
            for i in 0..200 {
                tickets.push(d.submit(vec![put(&format!("k{:03}", i % 50), &i.to_string())]));
            }
            d.submit_nowait(vec![Op::Delete {
                table: "t",
                key: b"k000".to_vec(),
            }]);
            let last = d.submit(vec![put("z", "1")]);
            for t in tickets {
                t.wait().await.expect("committed");
            }
            last.wait().await.expect("committed");
            // Later writes to a key win, and writes queued together share
            // commits.
            assert!(d.stats.commits.load(Ordering::Relaxed) <= 202);
            assert_eq!(d.stats.ops.load(Ordering::Relaxed), 202);
        }
        // The writer ends with the last clone (and then closes the file,
        // which may take a moment); the file stays.
        let mut reopened = Durable::open(&dir);
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            reopened = Durable::open(&dir);
        }
        let d = reopened.expect("reopen");
        let r = rows(&d);
        assert_eq!(r.len(), 50);
        assert_eq!(r[0], ("k001".to_string(), "151".to_string()));
        assert_eq!(r[48], ("k049".to_string(), "199".to_string()));
        assert_eq!(r[49], ("z".to_string(), "1".to_string()));
        // A range removal drops what was there and what was written before
        // it in the same batch, not what comes after it.
        d.submit_nowait(vec![put("k0105", "x")]);
        d.submit_nowait(vec![Op::DeleteRange {
            table: "t",
            from: b"k010".to_vec(),
            to: b"k020".to_vec(),
        }]);
        d.submit(vec![put("k015", "y")])
            .wait()
            .await
            .expect("range");
        let r = rows(&d);
        assert_eq!(r.len(), 50 - 10 + 1);
        assert!(r
            .iter()
            .all(|(k, _)| !(k.as_str() >= "k010" && k.as_str() < "k020") || k == "k015"));
        assert!(r.contains(&("k015".to_string(), "y".to_string())));
        d.submit(vec![Op::Clear { table: "t" }])
            .wait()
            .await
            .expect("clear");
        assert!(rows(&d).is_empty());
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A packed table reads back, after every commit, exactly what the
    /// same writes make of a plain map: random puts, removals, range
    /// removals and clears of keys of a few owners, in bursts that share
    /// commits; rows written before the table was packed are kept.
    #[tokio::test]
    async fn a_packed_table_holds_what_its_writes_say() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let top = std::env::temp_dir().join(format!("emqx-rs-packed-{}", std::process::id()));
        for seed in 0..8u64 {
            let dir = top.join(seed.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let mut rng = StdRng::seed_from_u64(seed);
            let key = |rng: &mut StdRng| {
                let mut k = rng.random_range(0..4u64).to_be_bytes().to_vec();
                k.extend_from_slice(&rng.random_range(0..200u64).to_be_bytes());
                k
            };
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let d = Durable::open(&dir).expect("open");
            // Written before the table is packed.
            let mut before = Vec::new();
            for n in 0..rng.random_range(0..40) {
                let (k, v) = (key(&mut rng), format!("old{n}").into_bytes());
                model.insert(k.clone(), v.clone());
                before.push(Op::Put {
                    table: "p",
                    key: k,
                    value: v,
                });
            }
            d.submit(before).wait().await.expect("plain");
            d.pack("p").expect("pack");
            assert_eq!(d.load("p").expect("load"), rows_of(&model));
            for round in 0..60 {
                let mut burst = Vec::new();
                for n in 0..rng.random_range(1..6) {
                    let mut ops = Vec::new();
                    for _ in 0..rng.random_range(1..12) {
                        let op = match rng.random_range(0..100) {
                            0..=59 => {
                                let len = rng.random_range(0..300);
                                let mut v = format!("{round}.{n}:").into_bytes();
                                v.resize(v.len() + len, b'v');
                                Op::Put {
                                    table: "p",
                                    key: key(&mut rng),
                                    value: v,
                                }
                            }
                            60..=93 => Op::Delete {
                                table: "p",
                                key: key(&mut rng),
                            },
                            94..=98 => {
                                let (a, b) = (key(&mut rng), key(&mut rng));
                                Op::DeleteRange {
                                    table: "p",
                                    from: a.clone().min(b.clone()),
                                    to: a.max(b),
                                }
                            }
                            _ => Op::Clear { table: "p" },
                        };
                        apply_to(&mut model, &op);
                        ops.push(op);
                    }
                    burst.push(d.submit(ops));
                }
                for t in burst {
                    t.wait().await.expect("committed");
                }
                assert_eq!(d.load("p").expect("load"), rows_of(&model), "seed {seed}");
                assert_eq!(d.count("p").expect("count"), model.len() as u64);
                let (a, b) = (key(&mut rng), key(&mut rng));
                let (from, to) = (a.clone().min(b.clone()), a.max(b));
                let want: Vec<Row> = model
                    .range(from.clone()..to.clone())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(d.range("p", &from, &to).expect("range"), want);
            }
            drop(d);
        }
        let _ = std::fs::remove_dir_all(&top);
    }

    fn apply_to(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: &Op) {
        match op {
            Op::Put { key, value, .. } => {
                model.insert(key.clone(), value.clone());
            }
            Op::Delete { key, .. } => {
                model.remove(key);
            }
            Op::DeleteRange { from, to, .. } => model.retain(|k, _| k < from || k >= to),
            Op::Clear { .. } => model.clear(),
        }
    }

    fn rows_of(model: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Row> {
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("emqx-rs-durable-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("durable.redb"), vec![0x5a; 8192]).expect("write");
        match Durable::open(&dir) {
            Err(DurableError::Open { path, .. }) => assert!(path.ends_with("durable.redb")),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a garbage file was opened"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
