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
                reg.takeover_elsewhere(h).await
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
            // The old session ended with its connection, or died
            // meanwhile: start afresh.
            old.wait_gone().await;
            cm.unregister(&client_id, old.id());
        }
    } else if let (Some(reg), Some(h)) = (ctx.registry.as_deref(), held) {
        if !h.peers.is_empty() {
            if connect.clean_start {
                reg.discard_elsewhere(h).await;
            } else {
                restored = reg.takeover_elsewhere(h).await;
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
    };
    Actor::spawn(None, SessionActor, SessionStart::New(Box::new(args)))
        .await
        .map_err(|e| OpenError::Spawn(e.to_string()))?;
    cm.sessions.lock().insert(client_id, handle.clone());
    Ok(handle)
}
