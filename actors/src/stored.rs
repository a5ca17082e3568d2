//! A persistent session's state in the cluster's session store (the
//! replicated durable storage, [`crate::peers::SessionStore`]; its
//! developer preview): what a node writes there while it holds the
//! session, and what another node brings back from there when the one
//! that held it is gone.
//!
//! What is kept so far is the session's record (the journal's: client,
//! subscriptions, expiry, when its connection went, its will), written
//! when it changes (connect, SUBSCRIBE and UNSUBSCRIBE, the end of its
//! connection); not yet its queued and inflight messages.

use crate::journal::{Recovered, SessionRecord};
use crate::peers::{SessionOp, SessionStore, StoreError, StoredSession};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The table of a session's record in the store, and its key there.
pub const RECORD_TABLE: u8 = 1;
pub const RECORD_KEY: &[u8] = b"record";

fn cfg() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// What the writer is asked: a record to write (`None`: the session
/// ends, its copy goes), and who waits for it.
type Write = (
    Option<Vec<u8>>,
    Option<oneshot::Sender<Result<(), StoreError>>>,
);

/// A session's writer to the store: records are written in order, and
/// when several wait, only the newest is.
pub struct StoreLink {
    tx: mpsc::UnboundedSender<Write>,
}

impl StoreLink {
    /// Starts the writer of `client`'s record under `epoch` (the claim
    /// its connect made).
    pub fn start(store: Arc<dyn SessionStore>, client: Arc<str>, epoch: u64) -> StoreLink {
        let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
        tokio::spawn(async move {
            while let Some((first, done)) = rx.recv().await {
                let (mut latest, mut waiting) = (first, vec![done]);
                while let Ok((r, d)) = rx.try_recv() {
                    latest = r;
                    waiting.push(d);
                }
                let ending = latest.is_none();
                let r = match latest {
                    Some(value) => {
                        let put = SessionOp::Put {
                            table: RECORD_TABLE,
                            key: RECORD_KEY.to_vec(),
                            value,
                        };
                        store.write(&client, epoch, vec![put]).await
                    }
                    None => store.release(&client, epoch).await,
                };
                match &r {
                    Ok(()) => {}
                    Err(StoreError::Fenced { owner, .. }) => tracing::info!(
                        client_id = %client,
                        "the session store: the session is held by {owner:?} now; this node's copy is no longer written"
                    ),
                    Err(e) => tracing::warn!(client_id = %client, "the session store: {e}"),
                }
                for d in waiting.into_iter().flatten() {
                    let _ = d.send(r.clone());
                }
                if ending || matches!(r, Err(StoreError::Fenced { .. })) {
                    break;
                }
            }
        });
        StoreLink { tx }
    }

    /// Queues `rec` to be written; the answer says when it was (or why
    /// not).
    pub fn write(&self, rec: &SessionRecord) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        let bytes = bincode::serde::encode_to_vec(rec, cfg()).unwrap_or_default();
        // A writer that stopped (fenced) drops `done`: `rx` says so.
        let _ = self.tx.send((Some(bytes), Some(done)));
        rx
    }

    /// The session is no longer persistent (or ends): its copy goes from
    /// the store, and nothing more is written.
    pub fn release(self) {
        let _ = self.tx.send((None, None));
    }
}

/// The session a store holds for its client, if it holds a record: to be
/// brought back offline, with nothing queued (its messages are not kept
/// there yet). `now_ms` is when its connection went if the record says
/// it was still connected (the node that held it died).
pub fn recovered(stored: &StoredSession, now_ms: u64) -> Option<Recovered> {
    let (_, _, bytes) = stored
        .rows
        .iter()
        .find(|(t, k, _)| *t == RECORD_TABLE && k == RECORD_KEY)?;
    let record: SessionRecord = match bincode::serde::decode_from_slice(bytes, cfg()) {
        Ok((r, _)) => r,
        Err(e) => {
            tracing::error!("the session store: an unreadable session record: {e}");
            return None;
        }
    };
    let offline_since_ms = record.disconnected_at_ms.unwrap_or(now_ms);
    Some(Recovered {
        record,
        inflight: Vec::new(),
        queue: Vec::new(),
        awaiting_rel: Vec::new(),
        offline_since_ms,
    })
}
