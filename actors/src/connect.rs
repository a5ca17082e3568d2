//! The connect sequence (EMQX's emqx_cm:open_session): a new connection
//! gets its session, resumed, taken over from another node, or new, with
//! the client id locked on this node and in the cluster meanwhile.

use crate::cm::{LOCKS, TAKEOVER_TIMEOUT};
use crate::outbox::ConnHandle;
use crate::peers::{ClientLock, RegistryError};
use crate::session::{SessionActor, SessionArgs, SessionStart};
use crate::session_msg::{SessionHandle, SessionMsg};
use crate::Ctx;
use emqx_mqtt::packet::Connect;
use ractor::Actor;
use std::sync::Arc;

/// Why a connection could not get a session.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Locked(#[from] RegistryError),
    #[error("session spawn failed: {0}")]
    Spawn(String),
    /// The cluster's session store could not claim the session (no
    /// quorum in time): CONNACK 0x88 (3.1.1: 3), the client tries again.
    #[error("the session store: {0}")]
    Store(#[from] crate::peers::StoreError),
}

/// Opens the session for a new connection: resumes or discards an
/// existing session of the same client id, or starts a new one. The
/// session actor sends the CONNACK.
pub async fn open_session(
    ctx: &Arc<Ctx>,
    connect: Connect,
    conn: ConnHandle,
) -> Result<SessionHandle, OpenError> {
    let cm = &ctx.cm;
    let mut connect = connect;
    if ctx.settings.use_username_as_clientid {
        if let Some(u) = connect.username.as_ref().filter(|u| !u.is_empty()) {
            connect.client_id = u.clone();
        }
    }
    let (client_id, assigned): (Arc<str>, bool) = if connect.client_id.is_empty() {
        (Arc::from(cm.assign_id(&ctx.node)), true)
    } else {
        (Arc::from(connect.client_id.as_str()), false)
    };
    let stripe = crate::hashing::bucket(&client_id, LOCKS);
    let _guard = cm.locks[stripe].lock().await;
    // Cluster-wide: lock the id, then discard or take over a session of
    // it on another node (an assigned id is new everywhere).
    let held = match (ctx.registry.as_deref(), assigned) {
        (Some(r), false) => Some(r.lock(&client_id).await?),
        _ => None,
    };
    let r = open_locked(ctx, connect, conn, client_id, assigned, held.as_ref()).await;
    if let (Some(reg), Some(h)) = (ctx.registry.as_deref(), held) {
        reg.unlock(h).await;
    }
    r
}

async fn open_locked(
    ctx: &Arc<Ctx>,
    connect: Connect,
    conn: ConnHandle,
    client_id: Arc<str>,
    assigned: bool,
    held: Option<&ClientLock>,
) -> Result<SessionHandle, OpenError> {
    let cm = &ctx.cm;
    let mut restored = None;
    // The node a session handed over here was still gathering for.
    let mut handed_from: Option<Arc<str>> = None;
    let mut handed = |h: Option<crate::peers::HandedOver>| {
        h.map(|h| {
            handed_from = h.gathering_from;
            h.snapshot
        })
    };
    if let (Some(old), Some(reg), Some(h)) = (cm.lookup(&client_id), ctx.registry.as_deref(), held)
    {
        if cm.take_unparked(&client_id) && !h.peers.is_empty() {
            // This session came back from disk: the client may have made
            // a newer one elsewhere while this node was stopped. That one
            // wins; ours goes.
            let newer = if connect.clean_start {
                reg.discard_elsewhere(h).await;
                None
            } else {
                handed(reg.takeover_elsewhere(h).await)
            };
            if newer.is_some() {
                let _ = old.call(SessionMsg::Discard, TAKEOVER_TIMEOUT).await;
                old.wait_gone().await;
                cm.unregister(&client_id, old.id());
                restored = newer;
            }
        }
    }
    if restored.is_some() {
        // Taken over from another node, above.
    } else if let Some(old) = cm.lookup(&client_id) {
        if connect.clean_start {
            let _ = old.call(SessionMsg::Discard, TAKEOVER_TIMEOUT).await;
            old.wait_gone().await;
            cm.unregister(&client_id, old.id());
        } else {
            let r = old
                .call(
                    |r| SessionMsg::Resume(Box::new(connect.clone()), conn.clone(), r),
                    TAKEOVER_TIMEOUT,
                )
                .await;
            if r == Some(true) {
                return Ok(old);
            }
            // The old session ended with its connection, died meanwhile,
            // or is held by another node now (the cluster's session store
            // said so): taken over from there, or started afresh.
            old.wait_gone().await;
            cm.unregister(&client_id, old.id());
            if let (Some(reg), Some(h), Some(_)) =
                (ctx.registry.as_deref(), held, ctx.session_store.as_ref())
            {
                if !h.peers.is_empty() {
                    restored = handed(reg.takeover_elsewhere(h).await);
                }
            }
        }
    } else if let (Some(reg), Some(h)) = (ctx.registry.as_deref(), held) {
        if !h.peers.is_empty() {
            if connect.clean_start {
                reg.discard_elsewhere(h).await;
            } else {
                restored = handed(reg.takeover_elsewhere(h).await);
            }
        }
    }
    // A new persistent session here (not one resumed here, above) is
    // claimed in the cluster's session store (the durable storage
    // preview): the claim fences the node that held it.
    let expiry = emqx_mqtt::channel::requested_expiry(&connect, &ctx.settings);
    let store = ctx.session_store.clone().filter(|_| !assigned);
    if let (Some(s), true) = (&store, connect.clean_start) {
        // A clean start: what the store kept of an earlier session goes,
        // whichever node held it.
        let c = s.claim(&client_id).await?;
        s.release(&client_id, c.epoch).await?;
    }
    // The node that held a session taken from the store (it is gone), or
    // that a session handed over here was still gathering for.
    let mut taken_from: Option<Arc<str>> = handed_from.filter(|n| **n != *ctx.node);
    let claim = match store.as_ref().filter(|_| expiry > 0) {
        Some(s) => Some(s.claim(&client_id).await?),
        None => None,
    };
    if let (Some(s), Some(c)) = (&store, &claim) {
        if !connect.clean_start && restored.is_none() && c.previous.is_some() {
            // No node handed the session over (the one that held it is
            // gone): the store's copy, if it has not expired.
            let now = crate::clock::now_ms();
            let stored = s.read(&client_id).await?;
            let rec = crate::journal::from_store(&stored, now).unwrap_or_else(|e| {
                // Not brought back rather than brought back wrong: the
                // client sees `session_present = 0`.
                tracing::error!(client_id = %client_id, "{e}");
                None
            });
            if let Some(rec) = rec {
                if rec.remaining(now).is_some() {
                    // The node whose session wrote the copy: the claim's
                    // previous holder may instead be a node (this one
                    // included) whose claim failed before its session
                    // started.
                    let writer = crate::journal::stored_holder(&stored)
                        .or_else(|| c.previous.as_ref().map(|(n, _)| n.clone()));
                    tracing::info!(
                        client_id = %client_id,
                        "a persistent session brought back from the cluster's session store (claimed from {:?}, written by {:?})",
                        c.previous,
                        writer
                    );
                    restored = Some(rec.snapshot());
                    taken_from = writer.filter(|n| **n != *ctx.node).map(Arc::from);
                }
            }
        }
    }
    let handle = SessionHandle::new();
    let args = SessionArgs {
        ctx: ctx.clone(),
        handle: handle.clone(),
        connect,
        conn: Some(conn),
        client_id: client_id.clone(),
        assigned,
        restored,
        unparked: None,
        journal: None,
        will: None,
        store_epoch: claim.map(|c| c.epoch),
        taken_from,
    };
    Actor::spawn(None, SessionActor, SessionStart::New(Box::new(args)))
        .await
        .map_err(|e| OpenError::Spawn(e.to_string()))?;
    cm.sessions.lock().insert(client_id, handle.clone());
    Ok(handle)
}

/// How many times [`adopt`] reads a session it claimed again when the
/// store does not answer (a leader moving).
const ADOPT_READS: u32 = 3;

/// What [`adopt`] did with a session of a node that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Brought back here, offline: its subscriptions route here, and
    /// what is published for it is queued here until its client returns
    /// (to this node, or to another one, which takes it over from here).
    Here,
    /// Its expiry had run out, or its copy held no record: released.
    Expired,
    /// The node named no longer held it (its client went elsewhere), or
    /// this node has a session of that client already: left alone.
    NotHeld,
}

/// Takes the persistent session of `client` that `from`, a node the
/// cluster sees down, holds in the cluster's session store under `epoch`:
/// claimed under a new epoch (which fences `from`) only while `from`
/// still holds it under that epoch, then brought back offline from the
/// store's copy with its queue, inflight QoS 2 messages and QoS 2 ids. Its will, if its client was
/// connected to `from` or its delay had not run out, is published here,
/// after what is left of its delay. Holds the client id's locks, on this
/// node and in the cluster, as a connect does.
pub async fn adopt(
    ctx: &Arc<Ctx>,
    client: &str,
    from: &str,
    epoch: u64,
) -> Result<Adopted, OpenError> {
    let Some(store) = ctx.session_store.clone() else {
        return Ok(Adopted::NotHeld);
    };
    let client_id: Arc<str> = Arc::from(client);
    let stripe = crate::hashing::bucket(&client_id, LOCKS);
    let _guard = ctx.cm.locks[stripe].lock().await;
    let held = match ctx.registry.as_deref() {
        Some(r) => Some(r.lock(&client_id).await?),
        None => None,
    };
    let r = adopt_locked(ctx, &*store, &client_id, from, epoch).await;
    if let (Some(reg), Some(h)) = (ctx.registry.as_deref(), held) {
        reg.unlock(h).await;
    }
    r
}

async fn adopt_locked(
    ctx: &Arc<Ctx>,
    store: &dyn crate::peers::SessionStore,
    client_id: &str,
    from: &str,
    epoch: u64,
) -> Result<Adopted, OpenError> {
    if ctx.cm.lookup(client_id).is_some() {
        return Ok(Adopted::NotHeld);
    }
    let claim = match store.adopt(client_id, from, epoch).await {
        Ok(c) => c,
        Err(crate::peers::StoreError::Fenced { .. }) => return Ok(Adopted::NotHeld),
        Err(e) => return Err(e.into()),
    };
    // Held here from now on: a client that connects to another node gets
    // it from here (the registry asks every running node), or from the
    // store if this read fails.
    let mut tries = 0;
    let stored = loop {
        match store.read(client_id).await {
            Ok(s) => break s,
            Err(e) if tries >= ADOPT_READS => return Err(e.into()),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let now = crate::clock::now_ms();
    let rec = crate::journal::from_store(&stored, now).map_err(|e| {
        crate::peers::StoreError::Unavailable(format!("{e} (held by this node now)"))
    })?;
    let Some((rec, left)) = rec.and_then(|r| r.remaining(now).map(|left| (r, left))) else {
        store.release(client_id, claim.epoch).await?;
        return Ok(Adopted::Expired);
    };
    let p = crate::parking::parked_of(&rec);
    crate::parking::bring_back(
        ctx,
        &p,
        left,
        None,
        rec.will(now),
        Some(claim.epoch),
        Some(from),
    )
    .await;
    tracing::info!(
        client_id = %client_id,
        "a persistent session of {from} (down) brought back from the cluster's session store: {} queued, {} in flight",
        p.snapshot.mqueue.len(),
        p.snapshot.inflight.len()
    );
    Ok(Adopted::Here)
}
