//! The client registry (EMQX's emqx_cm): client id -> session actor, and
//! the per-client-id lock that makes two simultaneous CONNECTs with one id
//! end with exactly one session (taken by [`crate::connect`]).

use crate::peers::HandedOver;
use crate::session_msg::{ClientInfo, SessionHandle, SessionMsg};
use emqx_mqtt::packet::SubscriptionOptions;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Number of lock stripes; a client id always maps to the same stripe.
pub(crate) const LOCKS: usize = 64;

/// How long an old session may take to hand over or go away.
pub(crate) const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Cm {
    pub(crate) sessions: Mutex<HashMap<Arc<str>, SessionHandle>>,
    /// Striped async locks held across the whole open sequence (look up,
    /// discard or resume, spawn, register) of one client id.
    pub(crate) locks: Vec<tokio::sync::Mutex<()>>,
    next_assigned: AtomicU64,
    /// Sessions brought back from disk at start whose clients have not
    /// returned: another node may hold a newer session of the same client
    /// (made while this node was stopped), checked when a peer comes up
    /// and when the client connects.
    unparked: Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Default for Cm {
    fn default() -> Self {
        Cm {
            sessions: Mutex::new(HashMap::new()),
            locks: (0..LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            next_assigned: AtomicU64::new(1),
            unparked: Mutex::new(std::collections::HashSet::new()),
        }
    }
}

impl Cm {
    pub fn lookup(&self, client_id: &str) -> Option<SessionHandle> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Registers a session brought back from disk.
    pub(crate) fn insert(&self, client_id: Arc<str>, a: SessionHandle) {
        self.sessions.lock().insert(client_id, a);
    }

    pub(crate) fn note_unparked(&self, client_id: Arc<str>) {
        self.unparked.lock().insert(client_id);
    }

    /// Whether `client_id`'s session came back from disk and its client
    /// has not returned yet (and forgets it: it is checked once).
    pub fn take_unparked(&self, client_id: &str) -> bool {
        self.unparked.lock().remove(client_id)
    }

    /// Client ids of the sessions back from disk whose clients have not
    /// returned.
    pub fn unparked(&self) -> Vec<String> {
        self.unparked.lock().iter().map(|c| c.to_string()).collect()
    }

    /// Every session.
    pub fn handles(&self) -> Vec<SessionHandle> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Removes the entry of `client_id` if it still points at session `id`.
    pub fn unregister(&self, client_id: &str, id: u64) {
        let mut s = self.sessions.lock();
        if s.get(client_id).is_some_and(|a| a.id() == id) {
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
    pub(crate) fn assign_id(&self, node: &str) -> String {
        let n = self.next_assigned.fetch_add(1, Ordering::Relaxed);
        let r: u32 = rand::random();
        format!(
            "emqx-rs-{}-{:08x}{:x}",
            node.split('@').next().unwrap_or("node"),
            r,
            n
        )
    }

    /// Ends this node's session of `client` because a clean-start connect
    /// happened on another node; false if there was none.
    pub async fn discard(&self, client_id: &str) -> bool {
        let Some(s) = self.lookup(client_id) else {
            return false;
        };
        let _ = s.call(SessionMsg::Discard, TAKEOVER_TIMEOUT).await;
        s.wait_gone().await;
        self.unregister(client_id, s.id());
        true
    }

    /// Hands this node's session of `client` to another node: the session
    /// closes its connection with DISCONNECT 0x8E and stops; its state is
    /// returned.
    pub async fn takeover_out(&self, client_id: &str) -> Option<HandedOver> {
        let s = self.lookup(client_id)?;
        let r = s.call(SessionMsg::TakeoverOut, TAKEOVER_TIMEOUT).await;
        s.wait_gone().await;
        self.unregister(client_id, s.id());
        r.flatten()
    }

    /// Disconnects and ends a client's session; false if unknown here.
    pub async fn kick(&self, client_id: &str) -> bool {
        match self.lookup(client_id) {
            Some(s) => {
                let _ = s.call(SessionMsg::Kick, TAKEOVER_TIMEOUT).await;
                true
            }
            None => false,
        }
    }

    /// Subscribes a client's session to `filter` on its behalf (the API's
    /// subscribe); `None` if the client is unknown here.
    pub async fn subscribe(
        &self,
        client_id: &str,
        filter: &str,
        opts: SubscriptionOptions,
    ) -> Option<Result<(), String>> {
        let s = self.lookup(client_id)?;
        let filter = filter.to_string();
        Some(
            match s
                .call(|r| SessionMsg::AddSub(filter, opts, r), TAKEOVER_TIMEOUT)
                .await
            {
                Some(r) => r.map_err(|e| e.to_string()),
                None => Err("the session did not answer".into()),
            },
        )
    }

    /// Unsubscribes a client's session from `filter`; `None` if the client
    /// is unknown here, else whether it was subscribed.
    pub async fn unsubscribe(&self, client_id: &str, filter: &str) -> Option<bool> {
        let s = self.lookup(client_id)?;
        let filter = filter.to_string();
        Some(
            s.call(|r| SessionMsg::DelSub(filter, r), TAKEOVER_TIMEOUT)
                .await
                .unwrap_or(false),
        )
    }

    pub async fn info(&self, client_id: &str) -> Option<ClientInfo> {
        let s = self.lookup(client_id)?;
        s.call(SessionMsg::Info, Duration::from_secs(2)).await
    }

    /// Info of every session, sorted by client id. Up to 64 sessions are
    /// asked at once, so a long list costs round trips / 64.
    pub async fn all_info(&self) -> Vec<ClientInfo> {
        const AT_ONCE: usize = 64;
        let sessions: Vec<SessionHandle> = {
            let g = self.sessions.lock();
            let mut v: Vec<(&Arc<str>, &SessionHandle)> = g.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v.into_iter().map(|(_, s)| s.clone()).collect()
        };
        let mut out = Vec::with_capacity(sessions.len());
        let mut asking = tokio::task::JoinSet::new();
        let mut next = sessions.into_iter().enumerate();
        loop {
            while asking.len() < AT_ONCE {
                let Some((i, s)) = next.next() else { break };
                asking.spawn(async move {
                    s.call(SessionMsg::Info, Duration::from_secs(2))
                        .await
                        .map(|info| (i, info))
                });
            }
            match asking.join_next().await {
                Some(Ok(Some(r))) => out.push(r),
                Some(_) => {}
                None => break,
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, info)| info).collect()
    }

    /// Closes every client's connection as [`SessionMsg::Shutdown`] does
    /// (the autoheal restart): sessions with an expiry stay, the others end.
    pub async fn disconnect_all(&self) {
        for s in self.handles() {
            let _ = s.call(SessionMsg::Shutdown, Duration::from_secs(2)).await;
        }
    }

    /// Stops every session (node stop or broker restart).
    pub async fn stop_all(&self) {
        for s in self.handles() {
            let _ = s.call(SessionMsg::Kick, Duration::from_secs(2)).await;
        }
    }

    /// One round of the hibernation sweep: every session whose actor runs
    /// and that was sent nothing since the round before is told to
    /// hibernate (it does if it has nothing in progress). Returns how
    /// many were told.
    pub fn sweep_idle(&self) -> usize {
        let idle: Vec<SessionHandle> = self
            .sessions
            .lock()
            .values()
            .filter(|h| h.idle_since_last_sweep())
            .cloned()
            .collect();
        for h in &idle {
            let _ = h.cast(SessionMsg::Hibernate);
        }
        idle.len()
    }
}
