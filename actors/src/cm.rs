//! The client registry (EMQX's emqx_cm): client id -> session actor, and
//! the per-client-id lock that makes two simultaneous CONNECTs with one id
//! end with exactly one session.

use crate::conn::ConnHandle;
use crate::peers::{ClientLock, RegistryError};
use crate::session::{ClientInfo, SessionActor, SessionArgs, SessionMsg};
use crate::Ctx;
use emqx_mqtt::channel::SessionSnapshot;
use emqx_mqtt::packet::Connect;
use parking_lot::Mutex;
use ractor::{Actor, ActorId, ActorRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a connection could not get a session.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Locked(#[from] RegistryError),
    #[error("session spawn failed: {0}")]
    Spawn(String),
}

/// Number of lock stripes; a client id always maps to the same stripe.
const LOCKS: usize = 64;

/// How long an old session may take to hand over or go away.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Cm {
    sessions: Mutex<HashMap<Arc<str>, ActorRef<SessionMsg>>>,
    /// Striped async locks held across the whole open sequence (look up,
    /// discard or resume, spawn, register) of one client id.
    locks: Vec<tokio::sync::Mutex<()>>,
    next_assigned: AtomicU64,
}

impl Default for Cm {
    fn default() -> Self {
        Cm {
            sessions: Mutex::new(HashMap::new()),
            locks: (0..LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            next_assigned: AtomicU64::new(1),
        }
    }
}

impl Cm {
    pub fn lookup(&self, client_id: &str) -> Option<ActorRef<SessionMsg>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Removes the entry of `client_id` if it still points at actor `id`.
    pub fn unregister(&self, client_id: &str, id: ActorId) {
        let mut s = self.sessions.lock();
        if s.get(client_id).is_some_and(|a| a.get_id() == id) {
            s.remove(client_id);
        }
    }

    /// Sorted client ids of every session on this node.
    pub fn client_ids(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.sessions.lock().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// A client id for a client that sent an empty one.
    fn assign_id(&self, node: &str) -> String {
        let n = self.next_assigned.fetch_add(1, Ordering::Relaxed);
        let r: u32 = rand::random();
        format!(
            "emqx-rs-{}-{:08x}{:x}",
            node.split('@').next().unwrap_or("node"),
            r,
            n
        )
    }

    /// Opens the session for a new connection: resumes or discards an
    /// existing session of the same client id, or starts a new one. The
    /// session actor sends the CONNACK.
    pub async fn open(
        ctx: &Arc<Ctx>,
        connect: Connect,
        conn: ConnHandle,
    ) -> Result<ActorRef<SessionMsg>, OpenError> {
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
        let stripe = crate::broker::shard_of(&client_id, LOCKS);
        let _guard = cm.locks[stripe].lock().await;
        // Cluster-wide: lock the id, then discard or take over a session of
        // it on another node (an assigned id is new everywhere).
        let held = match (ctx.registry.as_deref(), assigned) {
            (Some(r), false) => Some(r.lock(&client_id).await?),
            _ => None,
        };
        let r = Cm::open_locked(ctx, connect, conn, client_id, assigned, held.as_ref()).await;
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
    ) -> Result<ActorRef<SessionMsg>, OpenError> {
        let cm = &ctx.cm;
        let mut restored = None;
        if let Some(old) = cm.lookup(&client_id) {
            if connect.clean_start {
                let _ = old.call(SessionMsg::Discard, Some(TAKEOVER_TIMEOUT)).await;
                wait_stopped(&old).await;
                cm.unregister(&client_id, old.get_id());
            } else {
                let r = old
                    .call(
                        |r| SessionMsg::Resume(Box::new(connect.clone()), conn.clone(), r),
                        Some(TAKEOVER_TIMEOUT),
                    )
                    .await;
                if let Ok(ractor::rpc::CallResult::Success(true)) = r {
                    return Ok(old);
                }
                // The old session ended with its connection, or died
                // meanwhile: start afresh.
                wait_stopped(&old).await;
                cm.unregister(&client_id, old.get_id());
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
        let args = SessionArgs {
            ctx: ctx.clone(),
            connect,
            conn,
            client_id: client_id.clone(),
            assigned,
            restored,
        };
        let (actor, _) = Actor::spawn(None, SessionActor, args)
            .await
            .map_err(|e| OpenError::Spawn(e.to_string()))?;
        cm.sessions.lock().insert(client_id, actor.clone());
        Ok(actor)
    }

    /// Ends this node's session of `client` because a clean-start connect
    /// happened on another node; false if there was none.
    pub async fn discard(&self, client_id: &str) -> bool {
        let Some(s) = self.lookup(client_id) else {
            return false;
        };
        let _ = s.call(SessionMsg::Discard, Some(TAKEOVER_TIMEOUT)).await;
        wait_stopped(&s).await;
        self.unregister(client_id, s.get_id());
        true
    }

    /// Hands this node's session of `client` to another node: the session
    /// closes its connection with DISCONNECT 0x8E and stops; its state is
    /// returned.
    pub async fn takeover_out(&self, client_id: &str) -> Option<SessionSnapshot> {
        let s = self.lookup(client_id)?;
        let r = s
            .call(SessionMsg::TakeoverOut, Some(TAKEOVER_TIMEOUT))
            .await;
        wait_stopped(&s).await;
        self.unregister(client_id, s.get_id());
        match r {
            Ok(ractor::rpc::CallResult::Success(snap)) => snap,
            _ => None,
        }
    }

    /// Disconnects and ends a client's session; false if unknown here.
    pub async fn kick(&self, client_id: &str) -> bool {
        match self.lookup(client_id) {
            Some(s) => {
                let _ = s.call(SessionMsg::Kick, Some(TAKEOVER_TIMEOUT)).await;
                true
            }
            None => false,
        }
    }

    pub async fn info(&self, client_id: &str) -> Option<ClientInfo> {
        let s = self.lookup(client_id)?;
        match s.call(SessionMsg::Info, Some(Duration::from_secs(2))).await {
            Ok(ractor::rpc::CallResult::Success(i)) => Some(i),
            _ => None,
        }
    }

    /// Info of every session, sorted by client id.
    pub async fn all_info(&self) -> Vec<ClientInfo> {
        let mut out = Vec::new();
        for id in self.client_ids() {
            if let Some(i) = self.info(&id).await {
                out.push(i);
            }
        }
        out
    }

    /// Stops every session (node stop or broker restart).
    pub async fn stop_all(&self) {
        let all: Vec<ActorRef<SessionMsg>> = self.sessions.lock().values().cloned().collect();
        for s in all {
            let _ = s.call(SessionMsg::Kick, Some(Duration::from_secs(2))).await;
        }
    }
}

async fn wait_stopped(a: &ActorRef<SessionMsg>) {
    for _ in 0..100 {
        if matches!(a.get_status(), ractor::ActorStatus::Stopped) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
