//! Route replication: checking a peer's route version and fetching what is missing.

use super::*;

impl SvcState {
    /// Starts a route sync with `node` unless its versions already agree.
    /// A new incarnation (the peer restarted) invalidates what we hold.
    pub(super) fn check_routes(
        &mut self,
        myself: &ActorRef<SvcMsg>,
        node: &str,
        incarnation: u64,
        version: u64,
    ) {
        if self.incarnations.get(node) != Some(&incarnation) {
            if self.syncing.contains(node) {
                return;
            }
            self.incarnations.remove(node);
            self.view.routes.write().purge(node);
        } else if self.view.routes.read().version(node) == version {
            return;
        }
        self.fetch_routes(myself, node);
    }

    pub(super) fn fetch_routes(&mut self, myself: &ActorRef<SvcMsg>, node: &str) {
        if !self.syncing.insert(node.to_string()) {
            return;
        }
        let node = node.to_string();
        let since = self.view.routes.read().version(&node);
        let me = myself.clone();
        tokio::spawn(async move {
            let r = call_peer(&node, &Req::RoutesSince { since }).await;
            let _ = me.cast(SvcMsg::RoutesFetched(node, r));
        });
    }
}
