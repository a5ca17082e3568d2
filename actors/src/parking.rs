//! Persistent sessions kept across a stop of the node: at `stop` every
//! session with an expiry hands over its state ([`SessionMsg::Park`]) and
//! the lot is written to the durable store in one transaction; at the next
//! start they come back offline, before the listeners open, with their
//! subscriptions (routes), inflight window, queue and QoS 2 ids, and their
//! expiry running on from the stop. The records are then removed from the
//! store (and that removal committed) before any client is served, so a
//! later crash cannot bring back a stale copy.
//!
//! A kill -9 does not park: the durable session journal
//! ([`crate::journal`]) has written those sessions as they changed, and
//! they come back from it. A parked copy, complete, replaces the journal
//! in the commit that writes it.

use crate::clock::now_ms;
use crate::durable::{Durable, DurableError, Op};
use crate::journal::{Journal, Recovered};
use crate::session::{Parked, SessionArgs, SessionHandle, SessionMsg};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

/// The durable store's table of parked sessions (client id -> record).
pub const PARKED_TABLE: &str = "parked_sessions";

fn bincode_cfg() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Parks every session of the node: those with an expiry are returned,
/// the others end (their connections get DISCONNECT 0x8B on v5).
pub async fn park_all(ctx: &Ctx) -> Vec<Parked> {
    let all: Vec<SessionHandle> = ctx.cm.handles();
    let mut out = Vec::new();
    let mut stored = Vec::new();
    for s in all {
        match s.call(SessionMsg::Park, Duration::from_secs(5)).await {
            Some(Some((p, w))) => {
                out.push(*p);
                stored.extend(w);
            }
            Some(None) => {}
            None => tracing::warn!("a session could not be parked: it did not answer"),
        }
    }
    // Their last records in the cluster's session store (all written
    // meanwhile, several per command): a node that takes one of them
    // while this node is stopped finds it offline since now, its will
    // published.
    let n = stored.len();
    let waited = tokio::time::timeout(STORE_DRAIN, async {
        let mut failed = 0;
        for w in stored {
            if !matches!(w.await, Ok(Ok(()))) {
                failed += 1;
            }
        }
        failed
    })
    .await;
    match waited {
        Ok(0) => {}
        Ok(failed) => tracing::warn!(
            "{failed} of {n} parked session(s) could not be written to the cluster's session store"
        ),
        Err(_) => tracing::warn!(
            "the parked sessions' last records were not all in the cluster's session store within {STORE_DRAIN:?}"
        ),
    }
    out
}

/// How long a stop waits for the parked sessions' last records to reach
/// the cluster's session store.
const STORE_DRAIN: Duration = Duration::from_secs(5);

/// Writes `parked` (replacing what the table held) and waits until it is
/// on disk.
pub async fn save(durable: &Durable, parked: &[Parked]) -> Result<(), DurableError> {
    let mut ops = vec![Op::Clear {
        table: PARKED_TABLE,
    }];
    ops.extend(Journal::clear_ops());
    for p in parked {
        let value =
            bincode::serde::encode_to_vec(p, bincode_cfg()).map_err(|e| DurableError::Io {
                path: durable.path().to_path_buf(),
                error: format!("session {:?} cannot be encoded: {e}", p.client_id),
            })?;
        ops.push(Op::Put {
            table: PARKED_TABLE,
            key: p.client_id.as_bytes().to_vec(),
            value,
        });
    }
    durable.submit(ops).wait().await
}

/// Reads the parked sessions: a record that cannot be read is an error
/// naming the file and the client id.
pub fn load(durable: &Durable) -> Result<Vec<Parked>, DurableError> {
    let mut out = Vec::new();
    for (k, v) in durable.load(PARKED_TABLE)? {
        let decoded: Result<(Parked, usize), _> =
            bincode::serde::decode_from_slice(&v, bincode_cfg());
        match decoded {
            Ok((p, _)) if p.client_id.as_bytes() == k.as_slice() => out.push(p),
            Ok(_) => {
                return Err(DurableError::Io {
                    path: durable.path().to_path_buf(),
                    error: format!(
                        "table {PARKED_TABLE}: row {:?} holds another client's session",
                        String::from_utf8_lossy(&k)
                    ),
                })
            }
            Err(e) => {
                return Err(DurableError::Io {
                    path: durable.path().to_path_buf(),
                    error: format!(
                        "table {PARKED_TABLE}: session {:?} cannot be read: {e}",
                        String::from_utf8_lossy(&k)
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// A session brought back at start that the journal holds: back from the
/// journal after a crash, or parked at a clean stop (journaled again as
/// it comes back, when there is a cluster session store, so that it is
/// copied to its shard again as well).
#[derive(Debug)]
pub struct FromJournal {
    pub client_id: String,
    pub incarnation: u64,
    /// Parked at a clean stop, not back from a crash.
    pub parked: bool,
    /// With a cluster session store: the will its client left when the
    /// node died (and the seconds of its delay left), not armed yet. The
    /// store first says whether this node still holds the session; if
    /// another node took it meanwhile, that node published it.
    pub held_will: Option<(emqx_mqtt::packet::LastWill, u32)>,
}

/// Brings the parked sessions back offline (those not expired since the
/// stop), then those of the durable journal (`recovered`: the node died;
/// a parked copy of the same client is newer), then empties the parked
/// table. Returns how many came back parked, and each that the journal
/// holds now ([`FromJournal`]).
pub async fn restore(
    ctx: &Arc<Ctx>,
    durable: &Durable,
    recovered: Vec<Recovered>,
) -> Result<(usize, Vec<FromJournal>), String> {
    let parked = load(durable).map_err(|e| format!("cannot read the parked sessions: {e}"))?;
    let now = now_ms();
    let journal = ctx.broker.journal.clone();
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    let mut m = Vec::new();
    for p in parked {
        seen.insert(p.client_id.clone());
        let Some(left) = p.remaining(now) else {
            continue;
        };
        // With a cluster session store its journal incarnation is given
        // here, so that it is copied to its shard again (see
        // [`FromJournal`]); otherwise the session takes one itself.
        let inc = match (&journal, &ctx.session_store) {
            (Some(j), Some(_)) => Some(j.next_key()),
            _ => None,
        };
        bring_back(ctx, &p, left, inc, None, None, None).await;
        if let Some(inc) = inc {
            m.push(FromJournal {
                client_id: p.client_id.clone(),
                incarnation: inc,
                parked: true,
                held_will: None,
            });
        }
        n += 1;
    }
    for mut r in recovered {
        let shadowed = seen.contains(&r.record.client_id);
        let left = r.remaining(now);
        let keys: Vec<u64> = r.queue.iter().map(|d| d.journal).collect();
        let Some(left) = left.filter(|_| !shadowed) else {
            if let Some(j) = &journal {
                j.forget(r.record.incarnation, &keys);
            }
            continue;
        };
        if journal.is_none() {
            // `durable_sessions.enable` was turned off since: the session
            // comes back, and the journal is emptied below.
            for d in &mut r.queue {
                d.journal = 0;
            }
        }
        let p = parked_of(&r);
        let inc = journal.as_ref().map(|_| r.record.incarnation);
        let (will, held_will) = match ctx.session_store {
            Some(_) => (None, r.will(now)),
            None => (r.will(now), None),
        };
        bring_back(ctx, &p, left, inc, will, None, None).await;
        m.push(FromJournal {
            client_id: r.record.client_id.clone(),
            incarnation: r.record.incarnation,
            parked: false,
            held_will,
        });
    }
    let mut ops = vec![Op::Clear {
        table: PARKED_TABLE,
    }];
    if journal.is_none() {
        ops.extend(Journal::clear_ops());
    }
    durable
        .submit(ops)
        .wait()
        .await
        .map_err(|e| format!("cannot remove the parked sessions once back: {e}"))?;
    Ok((n, m))
}

/// A session read back from a journal (this node's, or its copy in the
/// cluster's session store) as a parked one.
pub(crate) fn parked_of(r: &Recovered) -> Parked {
    Parked {
        client_id: r.record.client_id.clone(),
        proto_level: r.record.proto_level,
        keep_alive: r.record.keep_alive,
        username: r.record.username.clone(),
        session_expiry: r.record.session_expiry,
        parked_at_ms: r.offline_since_ms,
        snapshot: r.snapshot(),
    }
}

/// Brings one session back offline with `left` seconds of its expiry,
/// asleep (see [`crate::session::start_dormant`]). `store_epoch`: the
/// session was taken from the cluster's session store under that epoch
/// (the claim decides who holds it); otherwise it came from this node's
/// disk, and another node may hold a newer one.
pub(crate) async fn bring_back(
    ctx: &Arc<Ctx>,
    p: &Parked,
    left: u32,
    journal: Option<u64>,
    will: Option<(emqx_mqtt::packet::LastWill, u32)>,
    store_epoch: Option<u64>,
    taken_from: Option<&str>,
) {
    let client_id: Arc<str> = Arc::from(p.client_id.as_str());
    let handle = SessionHandle::new();
    let args = SessionArgs {
        ctx: ctx.clone(),
        handle: handle.clone(),
        connect: p.connect(),
        conn: None,
        client_id: client_id.clone(),
        assigned: false,
        unparked: Some((p.session_expiry, left)),
        restored: Some(p.snapshot.clone()),
        journal,
        will,
        store_epoch,
        taken_from: taken_from.map(Arc::from),
    };
    // No actor: the session sleeps until the first message for it.
    ctx.cm.insert(client_id.clone(), handle);
    crate::session::start_dormant(args).await;
    if store_epoch.is_none() {
        ctx.cm.note_unparked(client_id);
    }
}
