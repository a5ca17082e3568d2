//! A persistent session's writer to the cluster's session store (the
//! replicated durable storage, [`crate::peers::SessionStore`]; its
//! developer preview): the changes a node makes to a session it holds
//! are written there in the order they were made, several at a time.
//!
//! What is written is the journal's (see [`crate::journal`]: the
//! session's record, its queued and inflight deliveries, its QoS 2 packet
//! ids), keyed within the session; the journal decides what and when.

use crate::peers::{SessionOp, SessionStore, StoreError};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Called with the outcome of a write once it is known. Dropped without a
/// call when the writer stopped before the write (the session was taken
/// by another node, or released): the write no longer matters.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Job {
    Ops(Vec<SessionOp>, Option<Done>),
    Release,
}

/// About the most bytes of changes sent in one write (more wait for the
/// next one).
const MAX_WRITE_BYTES: usize = 512 * 1024;

fn op_len(op: &SessionOp) -> usize {
    match op {
        SessionOp::Put { key, value, .. } => 8 + key.len() + value.len(),
        SessionOp::Delete { key, .. } => 8 + key.len(),
        SessionOp::Clear { .. } => 8,
    }
}

/// A session's writer to the store. Cloned by the journal, which writes
/// through it what the publish path queues for the session.
/// (One pointer: every persistent session holds one.)
#[derive(Clone)]
pub struct StoreLink(Arc<Link>);

struct Link {
    tx: mpsc::UnboundedSender<Job>,
    /// Shared with the writer, which holds no sender: it stops once every
    /// link is dropped.
    fence: Arc<parking_lot::Mutex<Fence>>,
}

/// Whether the store refused a write because another node holds the
/// session now, and what to do when it does.
#[derive(Default)]
struct Fence {
    fenced: bool,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl Fence {
    fn trip(this: &parking_lot::Mutex<Fence>) {
        let then = {
            let mut f = this.lock();
            f.fenced = true;
            f.then.take()
        };
        if let Some(then) = then {
            then();
        }
    }
}

impl StoreLink {
    /// Starts the writer of `client`'s session under `epoch` (the claim
    /// its connect made). Its first write also clears what the store held
    /// of the session before (tables `tables`): this node's copy replaces
    /// it.
    pub fn start(
        store: Arc<dyn SessionStore>,
        client: Arc<str>,
        epoch: u64,
        tables: &[u8],
    ) -> StoreLink {
        let first: Vec<SessionOp> = tables
            .iter()
            .map(|&table| SessionOp::Clear { table })
            .collect();
        Self::spawn(store, client, epoch, first, None)
    }

    /// Starts the writer of `client`'s session under `epoch`, holding what
    /// is queued until the returned sender gives the first write (the
    /// session's whole copy, read once the link is in place): a change
    /// made meanwhile is then written after it, and written twice at
    /// worst, which leaves the same rows.
    pub fn resuming(
        store: Arc<dyn SessionStore>,
        client: Arc<str>,
        epoch: u64,
    ) -> (StoreLink, tokio::sync::oneshot::Sender<Vec<SessionOp>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self::spawn(store, client, epoch, Vec::new(), Some(rx)), tx)
    }

    fn spawn(
        store: Arc<dyn SessionStore>,
        client: Arc<str>,
        epoch: u64,
        mut first: Vec<SessionOp>,
        held: Option<tokio::sync::oneshot::Receiver<Vec<SessionOp>>>,
    ) -> StoreLink {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let fence: Arc<parking_lot::Mutex<Fence>> = Arc::default();
        let fence_w = fence.clone();
        tokio::spawn(async move {
            if let Some(held) = held {
                match held.await {
                    Ok(ops) => first = ops,
                    // Never given: nothing of this session is written.
                    Err(_) => return,
                }
            }
            // A whole copy given to a resuming link is written at once.
            let mut next: Option<Job> = (!first.is_empty()).then(|| Job::Ops(Vec::new(), None));
            loop {
                let job = match next.take() {
                    Some(j) => j,
                    None => match rx.recv().await {
                        Some(j) => j,
                        None => break,
                    },
                };
                let (mut ops, mut waiting) = match job {
                    Job::Release => {
                        if let Err(e) = store.release(&client, epoch).await {
                            if !matches!(e, StoreError::Fenced { .. }) {
                                tracing::warn!(client_id = %client, "the session store: {e}");
                            }
                        }
                        break;
                    }
                    Job::Ops(ops, done) => (ops, vec![done]),
                };
                let mut bytes: usize = ops.iter().map(op_len).sum();
                while bytes < MAX_WRITE_BYTES {
                    match rx.try_recv() {
                        Ok(Job::Ops(more, done)) => {
                            bytes += more.iter().map(op_len).sum::<usize>();
                            ops.extend(more);
                            waiting.push(done);
                        }
                        Ok(Job::Release) => {
                            next = Some(Job::Release);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !first.is_empty() {
                    first.append(&mut ops);
                    ops = std::mem::take(&mut first);
                }
                let r = store.write(&client, epoch, ops).await;
                match &r {
                    Ok(()) => {}
                    Err(StoreError::Fenced { owner, .. }) => tracing::info!(
                        client_id = %client,
                        "the session store: the session is held by {owner:?} now; this node's copy is no longer written"
                    ),
                    Err(e) => tracing::warn!(client_id = %client, "the session store: {e}"),
                }
                let fenced = matches!(r, Err(StoreError::Fenced { .. }));
                for d in waiting.into_iter().flatten() {
                    d(r.clone());
                }
                if fenced {
                    Fence::trip(&fence_w);
                    break;
                }
            }
        });
        StoreLink(Arc::new(Link { tx, fence }))
    }

    /// `then` runs once a write is refused because another node holds the
    /// session now (at once if one was already): this node's copy of the
    /// session is stale.
    pub fn on_fenced(&self, then: impl FnOnce() + Send + 'static) {
        let mut f = self.0.fence.lock();
        if f.fenced {
            drop(f);
            then();
        } else {
            f.then = Some(Box::new(then));
        }
    }

    /// Queues `ops` to be written after everything queued before;
    /// `done`, if any, is told the outcome.
    pub fn send(&self, ops: Vec<SessionOp>, done: Option<Done>) {
        // A writer that stopped drops `done` (see [`Done`]).
        let _ = self.0.tx.send(Job::Ops(ops, done));
    }

    /// [`StoreLink::send`], the outcome told to the returned receiver
    /// (closed without an answer when the writer stopped).
    pub fn write(
        &self,
        ops: Vec<SessionOp>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(
            ops,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx
    }

    /// The session is no longer persistent (or ends): its copy goes from
    /// the store once what is queued is written, and nothing more is.
    pub fn release(&self) {
        let _ = self.0.tx.send(Job::Release);
    }
}
