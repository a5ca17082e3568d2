//! The cluster's side of the publish path: the replicated routes of the
//! other nodes, which of them are up, and the forwarder that reaches them,
//! offered to the broker as [`crate::peers::RemoteRoutes`] (in
//! [`super::remote`], which also asks the other nodes).

use super::routes::ClusterRoutes;
use crate::forward::Forwarder;
use crate::peers::RouteKey;
use emqx_mqtt::message::Message;
use emqx_mqtt::topic;
use emqx_mqtt::trie::TopicTrie;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Remote routes and which peers are up; written by the cluster service,
/// read by every publish.
pub struct ClusterView {
    pub me: Arc<str>,
    pub routes: RwLock<ClusterRoutes>,
    pub up: RwLock<HashSet<Arc<str>>>,
    pub forwarder: Arc<Forwarder>,
    /// Requests for what this node holds for a down node, by that node,
    /// waiting for one scan of its queue together ([`ClusterView::held_here`]).
    held_scans: Arc<Mutex<HashMap<String, Vec<HeldRequest>>>>,
}

/// A request waiting for a scan: when it became ripe to wait
/// [`IN_FLIGHT`] from, its filters, and where its answer goes.
type HeldRequest = (Instant, Vec<String>, oneshot::Sender<Vec<Message>>);

/// How long a node asked for what it holds for a down node waits to
/// route the filters to the asking node ([`ClusterView::held_here`]).
const ROUTE_WAIT: Duration = Duration::from_secs(5);
/// How long it then lets the publishes that looked at its routes before
/// they changed reach the forwarding queues (a synchronous step of the
/// publish path, microseconds long) before it copies them.
const IN_FLIGHT: Duration = Duration::from_millis(100);

impl ClusterView {
    pub fn new(me: Arc<str>, forwarder: Arc<Forwarder>) -> ClusterView {
        ClusterView {
            // A replicant's copy carries its own routes too: left out.
            routes: RwLock::new(ClusterRoutes::excluding(&me)),
            me,
            up: RwLock::default(),
            forwarder,
            held_scans: Arc::default(),
        }
    }
}

impl ClusterView {
    /// This node's part of [`RemoteRoutes::held_for`]: once its routes
    /// send what matches `filters` to `to` (or after [`ROUTE_WAIT`], with
    /// a warning), copies of what it holds for `down` that matches them.
    pub async fn held_here(&self, down: &str, filters: &[String], to: &str) -> Vec<Message> {
        if to != &*self.me {
            let keys: Vec<RouteKey> = filters
                .iter()
                .filter(|f| !matches!(topic::parse_shared(f), Ok(Some(_))))
                .map(|f| RouteKey::plain(f))
                .collect();
            let deadline = Instant::now() + ROUTE_WAIT;
            loop {
                let routed = {
                    let r = self.routes.read();
                    keys.iter().all(|k| r.holds(to, k))
                };
                if routed {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "cluster: {to} asked for what is held for {down}, and its routes did not arrive within {ROUTE_WAIT:?}: what is published meanwhile may miss its sessions"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Many sessions of one node are taken at once (its clients come
        // back elsewhere together): their requests share one scan of the
        // queue, each at least IN_FLIGHT after its routes arrived.
        let (tx, rx) = oneshot::channel();
        let scanner = {
            let mut scans = self.held_scans.lock();
            let waiting = scans.entry(down.to_string()).or_default();
            waiting.push((Instant::now(), filters.to_vec(), tx));
            waiting.len() == 1
        };
        if scanner {
            tokio::spawn(scan_held(
                self.forwarder.clone(),
                self.held_scans.clone(),
                down.to_string(),
            ));
        }
        rx.await.unwrap_or_default()
    }
}

/// Answers the requests waiting for what this node holds for `down`, in
/// rounds, until none is left: each round takes those that waited
/// [`IN_FLIGHT`] and scans the queue once for all of them.
async fn scan_held(
    forwarder: Arc<Forwarder>,
    scans: Arc<Mutex<HashMap<String, Vec<HeldRequest>>>>,
    down: String,
) {
    loop {
        let oldest = scans
            .lock()
            .get(&down)
            .and_then(|w| w.iter().map(|r| r.0).min());
        let Some(oldest) = oldest else {
            scans.lock().remove(&down);
            return;
        };
        tokio::time::sleep_until((oldest + IN_FLIGHT).into()).await;
        let ripe: Vec<HeldRequest> = {
            let mut s = scans.lock();
            let Some(w) = s.get_mut(&down) else {
                return;
            };
            let now = Instant::now();
            let (ripe, rest) = std::mem::take(w)
                .into_iter()
                .partition(|r| r.0 + IN_FLIGHT <= now);
            *w = rest;
            ripe
        };
        answer_held(&forwarder, &down, ripe);
        let mut s = scans.lock();
        if s.get(&down).is_none_or(|w| w.is_empty()) {
            s.remove(&down);
            return;
        }
    }
}

/// One scan of what is held for `down`, each message copied to every
/// request one of whose filters it matches (once per request).
fn answer_held(forwarder: &Forwarder, down: &str, ripe: Vec<HeldRequest>) {
    let mut trie: TopicTrie<Vec<usize>> = TopicTrie::new();
    for (i, (_, filters, _)) in ripe.iter().enumerate() {
        for f in filters {
            match trie.get_mut(f) {
                Some(v) => v.push(i),
                None => {
                    trie.insert(f, vec![i]);
                }
            }
        }
    }
    let held = forwarder.held_for(down, |t| {
        let mut any = false;
        trie.match_each(t, |_, _| any = true);
        any
    });
    let mut out: Vec<Vec<Message>> = vec![Vec::new(); ripe.len()];
    let mut last = vec![usize::MAX; ripe.len()];
    for (n, m) in held.iter().enumerate() {
        trie.match_each(&m.topic, |_, to| {
            for &i in to {
                if last[i] != n {
                    last[i] = n;
                    out[i].push((**m).clone());
                }
            }
        });
    }
    for ((_, _, tx), msgs) in ripe.into_iter().zip(out) {
        let _ = tx.send(msgs);
    }
}
