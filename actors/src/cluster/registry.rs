//! The cluster-wide side of the client registry (EMQX's emqx_cm with its
//! cluster lock): a client id is unique in the whole cluster.
//!
//! Every connect of a client id takes a lock held by one node chosen from
//! the running members by the id's hash, so two simultaneous connects on
//! two nodes are serialized and end with exactly one session. Holding it,
//! the connecting node asks the other running nodes to discard
//! (clean start) or hand over (persistent session) any session of that id,
//! then starts its own and releases the lock.
//!
//! Without a replicated registry table this costs one request per running
//! peer for each non-new client id on connect; fine for the cluster sizes a
//! full mesh supports, and the table can replace the fan-out later.

use super::rpc::call_peer;
use super::wire::{Req, Resp};
use crate::peers::{BoxFuture, ClientLock, ClientRegistry, HandedOver, RegistryError};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A lock whose holder vanished is free again after this long.
const LEASE: Duration = Duration::from_secs(15);
/// How long a connect waits for a busy lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

pub struct Registry {
    pub me: Arc<str>,
    /// The running peers (never this node), as the cluster service last
    /// saw them.
    running: RwLock<Vec<String>>,
    /// The running cores (this node included if it is one): the lock of a
    /// client id is held by one of them. Empty on a replicant that follows
    /// no core: its connects go on without a cluster lock.
    lockers: RwLock<Vec<String>>,
    /// Locks this node holds for the client ids it owns: id -> (holder, expiry).
    locks: Mutex<HashMap<String, (String, Instant)>>,
}

impl Registry {
    pub fn new(me: Arc<str>) -> Registry {
        Registry {
            running: RwLock::new(Vec::new()),
            lockers: RwLock::new(vec![me.to_string()]),
            me,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster service tells the registry who runs, after every
    /// change: the running peers, and the running cores among them and us.
    pub fn set_running(&self, peers: Vec<String>, lockers: Vec<String>) {
        *self.running.write() = peers;
        *self.lockers.write() = lockers;
    }

    /// Running peers (never this node).
    pub fn peers(&self) -> Vec<String> {
        self.running.read().clone()
    }

    /// The node that holds the lock of `client`, among `lockers` (every
    /// node hashes the same sorted list); `None` if there is none.
    pub fn owner(client: &str, lockers: &[String]) -> Option<String> {
        let mut all: Vec<&str> = lockers.iter().map(|s| s.as_str()).collect();
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            return None;
        }
        Some(all[crate::hashing::bucket(client, all.len())].to_string())
    }

    /// Takes the lock if it is free, expired, or already `holder`'s.
    pub fn try_lock_local(&self, client: &str, holder: &str) -> bool {
        let now = Instant::now();
        let mut l = self.locks.lock();
        match l.get(client) {
            Some((h, exp)) if h != holder && *exp > now => false,
            _ => {
                l.insert(client.to_string(), (holder.to_string(), now + LEASE));
                true
            }
        }
    }

    pub fn unlock_local(&self, client: &str, holder: &str) {
        let mut l = self.locks.lock();
        if l.get(client).is_some_and(|(h, _)| h == holder) {
            l.remove(client);
        }
    }

    /// Takes the cluster lock of `client`, waiting up to a few seconds.
    pub async fn lock(&self, client: &str) -> Result<ClientLock, RegistryError> {
        let peers = self.peers();
        let lockers = self.lockers.read().clone();
        // A replicant cut off from every core keeps serving its clients
        // without the cluster lock.
        let owner = Registry::owner(client, &lockers).unwrap_or_else(|| self.me.to_string());
        let deadline = Instant::now() + LOCK_WAIT;
        let mut wait = Duration::from_millis(5);
        loop {
            let got = if owner == *self.me {
                self.try_lock_local(client, &self.me)
            } else {
                let req = Req::Lock {
                    client: client.to_string(),
                    holder: self.me.to_string(),
                };
                match call_peer(&owner, &req).await {
                    Ok(Resp::Bool(b)) => b,
                    // The owner is unreachable: going on is better than
                    // refusing every client whose lock it holds.
                    _ => true,
                }
            };
            if got {
                return Ok(ClientLock {
                    client: client.to_string(),
                    owner,
                    peers,
                });
            }
            if Instant::now() > deadline {
                return Err(RegistryError::Locked(client.to_string()));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    pub async fn unlock(&self, held: ClientLock) {
        if held.owner == *self.me {
            self.unlock_local(&held.client, &self.me);
        } else {
            let req = Req::Unlock {
                client: held.client,
                holder: self.me.to_string(),
            };
            let _ = call_peer(&held.owner, &req).await;
        }
    }

    /// Ends the sessions of `client` on every other node (clean start).
    pub async fn discard_elsewhere(&self, client: &str, peers: &[String]) {
        for p in peers {
            let _ = call_peer(
                p,
                &Req::Discard {
                    client: client.to_string(),
                },
            )
            .await;
        }
    }

    /// Takes the session of `client` over from whichever node holds it.
    pub async fn takeover_elsewhere(&self, client: &str, peers: &[String]) -> Option<HandedOver> {
        for p in peers {
            let asked = call_peer(
                p,
                &Req::Takeover {
                    client: client.to_string(),
                },
            )
            .await;
            let handed = match asked {
                Ok(Resp::Session(Some(s))) => HandedOver {
                    snapshot: *s,
                    gathering_from: None,
                },
                Ok(Resp::Handover {
                    snapshot,
                    gathering_from,
                }) => HandedOver {
                    snapshot: *snapshot,
                    gathering_from: Some(Arc::from(gathering_from)),
                },
                _ => continue,
            };
            tracing::info!(
                client_id = %client,
                "session taken over from {p}{}",
                handed
                    .gathering_from
                    .as_ref()
                    .map(|g| format!(" (still gathering what was held for {g}: asked again here)"))
                    .unwrap_or_default()
            );
            return Some(handed);
        }
        None
    }
}

impl ClientRegistry for Registry {
    fn lock<'a>(&'a self, client: &'a str) -> BoxFuture<'a, Result<ClientLock, RegistryError>> {
        Box::pin(Registry::lock(self, client))
    }

    fn unlock(&self, lock: ClientLock) -> BoxFuture<'_, ()> {
        Box::pin(Registry::unlock(self, lock))
    }

    fn discard_elsewhere<'a>(&'a self, lock: &'a ClientLock) -> BoxFuture<'a, ()> {
        Box::pin(Registry::discard_elsewhere(self, &lock.client, &lock.peers))
    }

    fn takeover_elsewhere<'a>(&'a self, lock: &'a ClientLock) -> BoxFuture<'a, Option<HandedOver>> {
        Box::pin(Registry::takeover_elsewhere(
            self,
            &lock.client,
            &lock.peers,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_agrees_on_the_lock_owner() {
        for id in ["x", "client-1", "sensor/42", ""] {
            let oa = Registry::owner(id, &["b@h".into(), "a@h".into(), "c@h".into()]);
            let ob = Registry::owner(id, &["c@h".into(), "b@h".into(), "a@h".into()]);
            let oc = Registry::owner(id, &["a@h".into(), "b@h".into(), "c@h".into()]);
            assert!(oa.is_some());
            assert_eq!(oa, ob);
            assert_eq!(ob, oc);
        }
        assert_eq!(Registry::owner("x", &[]), None);
        let only = Registry::owner("x", &["c@h".into()]);
        assert_eq!(
            only.as_deref(),
            Some("c@h"),
            "a replicant's lock is a core's"
        );
    }

    #[test]
    fn a_lock_is_exclusive_reentrant_and_released_by_its_holder_only() {
        let r = Registry::new(Arc::from("a@h"));
        assert!(r.try_lock_local("c1", "a@h"));
        assert!(
            r.try_lock_local("c1", "a@h"),
            "the holder may take it again"
        );
        assert!(!r.try_lock_local("c1", "b@h"));
        r.unlock_local("c1", "b@h");
        assert!(!r.try_lock_local("c1", "b@h"), "only the holder releases");
        r.unlock_local("c1", "a@h");
        assert!(r.try_lock_local("c1", "b@h"));
    }
}
