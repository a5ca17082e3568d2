//! Route replication: checking a peer's route version and fetching what is missing.

use super::*;

impl SvcState {
    /// Starts a route sync with `node` unless its versions already agree.
    /// A new incarnation (the peer restarted) invalidates what we hold: its
    /// routes are fetched from the start and replace ours in one step when
    /// they arrive (see `SvcMsg::RoutesFetched`), so publishes meanwhile
    /// still reach it by the routes it had (an autoheal restart keeps its
    /// sessions and their subscriptions).
    pub(super) fn check_routes(
        &mut self,
        myself: &ActorRef<SvcMsg>,
        node: &str,
        incarnation: u64,
        version: u64,
    ) {
        if self.incarnations.get(node) != Some(&incarnation) {
            self.fetch_routes_since(myself, node, 0);
            return;
        } else if self.view.routes.read().version(node) == version {
            return;
        }
        self.fetch_routes(myself, node);
    }

    pub(super) fn fetch_routes(&mut self, myself: &ActorRef<SvcMsg>, node: &str) {
        let since = self.view.routes.read().version(node);
        self.fetch_routes_since(myself, node, since);
    }

    pub(super) fn fetch_routes_since(&mut self, myself: &ActorRef<SvcMsg>, node: &str, since: u64) {
        if !self.syncing.insert(node.to_string()) {
            return;
        }
        let node = node.to_string();
        let me = myself.clone();
        tokio::spawn(async move {
            let r = call_peer(&node, &Req::RoutesSince { since }).await;
            let _ = me.cast(SvcMsg::RoutesFetched(node, r));
        });
    }
}
