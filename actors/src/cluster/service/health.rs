//! Failure detection as the service runs it: heartbeats, up and down, forgetting a node, and autoclean.

use super::*;

/// How long the node whose name sorts last waits for the other to dial.
const DIAL_GRACE: Duration = Duration::from_millis(1500);

/// Whether to dial a member we have had no link to since `since`. Two
/// nodes that learn of each other at the same moment (a third joining
/// through one of them) would otherwise dial each other at once, and
/// ractor_cluster may then close both sessions as duplicates: the node
/// whose name sorts first dials at once, the other only after a grace
/// period (if the first never dials, say because it does not know us yet).
pub(super) fn dial_now(me: &str, peer: &str, since: Instant, now: Instant) -> bool {
    me < peer || now.saturating_duration_since(since) >= DIAL_GRACE
}

/// Entries per message when a whole table is pushed to a peer.
const TABLE_CHUNK: usize = 2_000;

impl SvcState {
    pub(super) fn send_heartbeat(&mut self, node: &str) {
        let beat = self.monitor.beat();
        cast_peer(
            node,
            &Note::Heartbeat {
                node: self.me().to_string(),
                route_version: self.local.version,
                beat,
            },
        );
    }

    /// Autoclean (checked every quarter of the period): members down for
    /// longer than `cluster.autoclean` are removed and their routes purged.
    pub(super) fn autoclean(&mut self, now: Instant) {
        let period = self.settings.autoclean;
        if period.is_zero() || now.duration_since(self.last_autoclean) < period / 4 {
            return;
        }
        self.last_autoclean = now;
        // Members never seen running since we started count from now.
        let unseen: Vec<String> = self
            .membership
            .peers()
            .filter(|m| !m.running && !self.down_since.contains_key(&m.info.node))
            .map(|m| m.info.node.clone())
            .collect();
        for n in unseen {
            self.down_since.insert(n, now);
        }
        let expired: Vec<(String, Duration)> = self
            .down_since
            .iter()
            .filter(|(n, t)| {
                now.duration_since(**t) >= period
                    && self.membership.peer(n).is_some_and(|m| !m.running)
            })
            .map(|(n, t)| (n.clone(), now.duration_since(*t)))
            .collect();
        for (node, down) in expired {
            tracing::warn!(
                "cluster: autoclean removes {node}, down for {}s",
                down.as_secs()
            );
            self.forget(&node);
            self.down_since.remove(&node);
            self.removed.insert(node.clone());
            inc(&self.ctx.broker.metrics.cluster_autocleaned);
            let ctx = self.ctx.clone();
            ctx.sys_cluster_event("autoclean", &node);
            self.save();
        }
    }

    pub(super) fn tick(&mut self, myself: &ActorRef<SvcMsg>) {
        let now = Instant::now();
        let beat = now.duration_since(self.last_heartbeat) >= self.settings.heartbeat_interval;
        if beat {
            self.last_heartbeat = now;
        }
        if self.is_replicant() {
            // No failure detection of its own, no autoclean, one link.
            if beat {
                self.replicant_tick(myself);
                // Where it reaches the shards.
                self.drive_ds();
            }
            return;
        }
        self.autoclean(now);
        if beat {
            let peers: Vec<String> = self
                .membership
                .peers()
                .filter(|m| m.info.role == Role::Core)
                .map(|m| m.info.node.clone())
                .collect();
            for p in peers {
                if self.links.contains_key(&p) {
                    self.send_heartbeat(&p);
                }
            }
            self.beat_replicants();
            self.drive_ds();
        }
        self.replicant_liveness(now);
        let eff = self.monitor.tick(now);
        self.apply(myself, eff, "no heartbeat within the down timeout");
        // Dial cores we have no link to (replicants dial their core).
        let targets: Vec<MemberInfo> = self
            .membership
            .peers()
            .filter(|m| {
                m.info.role == Role::Core
                    && !self.links.contains_key(&m.info.node)
                    && !self.dialing.contains(&m.info.node)
            })
            .map(|m| m.info.clone())
            .collect();
        let me = self.me().to_string();
        for info in targets {
            let ready = self.backoff.get(&info.node).is_none_or(|b| b.ready(now));
            let since = *self.want_link.entry(info.node.clone()).or_insert(now);
            if !ready || !dial_now(&me, &info.node, since, now) {
                continue;
            }
            let Ok(addr) = info.dist_addr.parse::<SocketAddr>() else {
                continue;
            };
            self.dialing.insert(info.node.clone());
            let ns = self.node_server.clone();
            let me = myself.clone();
            let ip = self.settings.dialer.clone();
            tokio::spawn(async move {
                let ok = ensure_link(&ns, &ip, &info.node, addr).await;
                let _ = me.cast(SvcMsg::DialDone(info.node, ok));
            });
        }
    }

    pub(super) fn mark_down(&mut self, node: &str, why: &str) {
        self.down_since
            .entry(node.to_string())
            .or_insert_with(Instant::now);
        if self.membership.set_running(node, false) {
            tracing::warn!("cluster: node {node} is down ({why})");
            self.view.up.write().remove(node);
            self.view.forwarder.peer_down(node, true);
            let ctx = self.ctx.clone();
            ctx.sys_node_event(node, false);
        }
    }

    pub(super) fn mark_up(&mut self, node: &str) {
        self.down_since.remove(node);

        if std::mem::take(&mut self.retained_sync) {
            let ctx = self.ctx.clone();
            let peer = node.to_string();
            tokio::spawn(async move {
                match call_peer(&peer, &Req::RetainedAll).await {
                    Ok(Resp::Retained(msgs)) => {
                        // The newer copy of each topic wins; what this node
                        // has that is newer (kept on disk while it was
                        // away, or published here since) goes back.
                        let n = msgs.len();
                        let back = ctx.broker.retainer.merge_synced(msgs);
                        tracing::info!(
                            "cluster: {n} retained message(s) synced from {peer}, {} newer here",
                            back.len()
                        );
                        for msg in back {
                            cast_peer(&peer, &Note::Retain { msg });
                        }
                    }
                    other => tracing::warn!("cluster: retained sync from {peer} failed: {other:?}"),
                }
            });
        }
        let unparked = self.ctx.cm.unparked();
        if !unparked.is_empty() {
            // Sessions back from disk: the peer may hold newer ones of the
            // same clients, made while this node was stopped. Theirs win.
            let ctx = self.ctx.clone();
            let peer = node.to_string();
            tokio::spawn(async move {
                for chunk in unparked.chunks(SESSION_QUERY_CHUNK) {
                    let req = Req::Sessions {
                        clients: chunk.to_vec(),
                    };
                    match call_peer(&peer, &req).await {
                        Ok(Resp::Clients(there)) => {
                            for c in there {
                                if ctx.cm.take_unparked(&c) && ctx.cm.discard(&c).await {
                                    tracing::info!(
                                        client_id = %c,
                                        "cluster: session back from disk discarded, {peer} holds a newer one"
                                    );
                                }
                            }
                        }
                        other => tracing::warn!(
                            "cluster: cannot ask {peer} which sessions it holds: {other:?}"
                        ),
                    }
                }
            });
        }
        if self.membership.set_running(node, true) {
            tracing::info!("cluster: node {node} is up");
            // Anti-entropy between cores: whatever the peer missed of our
            // tables while it was unreachable (both sides push, so both
            // catch up). Replicants take tables from their core's stream.
            let cores = !self.is_replicant() && self.role_of(node) == Some(Role::Core);
            for ops in self.tables.snapshot().into_iter().filter(|_| cores) {
                for chunk in ops.entries.chunks(TABLE_CHUNK) {
                    let note = Note::Table(TableOps {
                        table: ops.table.clone(),
                        entries: chunk.to_vec(),
                    });
                    cast_peer(node, &note);
                }
            }
            self.view.up.write().insert(Arc::from(node));
            self.view.forwarder.peer_down(node, false);
            let ctx = self.ctx.clone();
            ctx.sys_node_event(node, true);
        }
    }

    /// Forgets a node that left or was removed: membership, routes, links.
    pub(super) fn forget(&mut self, node: &str) {
        self.want_link.remove(node);
        self.down_since.remove(node);
        if self.membership.remove(node) {
            tracing::info!("cluster: {node} left the cluster");
        }
        self.monitor.remove_member(node);
        self.view.up.write().remove(node);
        let purged = self.view.routes.write().purge(node);
        if purged > 0 {
            tracing::info!("cluster: purged {purged} route(s) of {node}");
        }
        self.incarnations.remove(node);
        if self.hosts_here(node) {
            self.upstream.unsubscribe(node, None);
        }
        self.hosts.remove(node);
        super::super::rpc::set_via(node, None);
        self.view.forwarder.remove_peer(node);
        self.backoff.remove(node);
        self.disconnect(node);
    }

    pub(super) fn disconnect(&self, node: &str) {
        let ns = self.node_server.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            // Let what was just cast to the peer (MemberLeft) go out first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(sessions) = ractor::call_t!(ns, NodeServerMessage::GetSessions, 2000) {
                for s in sessions.values() {
                    if s.peer_name.as_ref().is_some_and(|p| p.name == node) {
                        s.actor.stop(Some("left the cluster".into()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_two_nodes_missing_a_link_only_the_first_by_name_dials_at_once() {
        let t0 = Instant::now();
        let (a, b) = ("emqx1@127.0.0.1", "emqx2@127.0.0.2");
        assert!(dial_now(a, b, t0, t0));
        assert!(!dial_now(b, a, t0, t0));
        assert!(!dial_now(
            b,
            a,
            t0,
            t0 + DIAL_GRACE - Duration::from_millis(1)
        ));
        // The other still dials if the first does not.
        assert!(dial_now(b, a, t0, t0 + DIAL_GRACE));
    }
}
