//! `cluster join`, `leave` and `force-leave`: the newcomer's side of a join, adopting the cluster it joins, and leaving it.

use super::*;

impl SvcState {
    pub(super) fn start_join(
        &mut self,
        myself: &ActorRef<SvcMsg>,
        target: String,
        reply: RpcReplyPort<Result<String, JoinError>>,
    ) {
        let target = if target.contains('@') {
            target
        } else {
            // EMQX appends the local host when no host is given.
            let host = self
                .me()
                .split_once('@')
                .map(|(_, h)| h)
                .unwrap_or("127.0.0.1");
            format!("{target}@{host}")
        };
        if target == self.me() {
            let _ = reply.send(Err(JoinError::CannotJoinItself(target)));
            return;
        }
        if self.settings.singleton {
            let _ = reply.send(Err(JoinError::Singleton));
            return;
        }
        if self.membership.peer(&target).is_some() {
            let _ = reply.send(Err(JoinError::AlreadyInCluster(target)));
            return;
        }
        let ns = self.node_server.clone();
        let ip = self.settings.dialer.clone();
        let me_info = self.membership.me.clone();
        let svc = myself.clone();
        self.joining = true;
        tokio::spawn(async move {
            let out = join_task(&ns, &ip, &target, me_info, &svc).await;
            let _ = svc.cast(SvcMsg::JoinEnded);
            let _ = reply.send(out);
        });
    }

    /// The newcomer's side of a join: drop our cluster data, adopt theirs.
    pub(super) fn adopt(&mut self, via: &str, snap: JoinSnapshot) {
        self.reset_to_single();
        let via_incarnation = snap
            .members
            .iter()
            .find(|m| m.node == via)
            .map(|m| m.incarnation);
        self.left_from.clear();
        let ups = std::mem::take(&mut self.pending_ups);
        let now = Instant::now();
        for info in snap.members {
            if info.node == self.me() {
                continue;
            }
            let node = info.node.clone();
            add_forward_peer(&self.view, &info);
            self.watch(&node, info.role, now);
            self.membership.upsert(info, false);
        }
        {
            let mut routes = self.view.routes.write();
            for origin in routes.origins() {
                routes.purge(&origin);
            }
            for (origin, inc, version, keys) in snap.routes {
                if origin == self.me() {
                    continue;
                }
                self.incarnations.insert(origin.clone(), inc);
                routes.replace(&origin, version, keys);
            }
        }
        let retainer = &self.ctx.broker.retainer;
        retainer.clean(None);
        for m in snap.retained {
            let _ = retainer.store(&Arc::new(m));
        }
        if let Err(e) = self.tables.replace_all(snap.tables) {
            tracing::error!("cluster: cannot take the cluster's replicated tables: {e}");
        }
        for info in ups {
            if info.node == self.me() || info.node == via {
                continue;
            }
            let node = info.node.clone();
            add_forward_peer(&self.view, &info);
            self.watch(&node, info.role, now);
            self.membership.upsert(info, false);
        }
        inc(&self.ctx.broker.metrics.cluster_joined);
        self.save();
        self.ds_joined();
        if self.links.contains_key(via) {
            // We just heard from it: it is up.
            if let Some(inc) = via_incarnation {
                let beat = Beat {
                    incarnation: inc,
                    seq: 0,
                    saw_down: Vec::new(),
                    heard: Vec::new(),
                };
                for e in self.monitor.on_beat(via, &beat, now) {
                    if let Effect::MarkUp(n) = e {
                        self.mark_up(&n);
                    }
                }
            }
            self.send_heartbeat(via);
        }
        tracing::info!("cluster: joined the cluster through {via}");
    }

    pub(super) async fn leave(&mut self) -> String {
        if self.membership.is_alone() {
            return "Failed to leave the cluster: node_not_in_cluster\n".into();
        }
        let me = self.me().to_string();
        let note = Note::MemberLeft { node: me };
        for m in self.membership.peers() {
            // Every member we can reach, running or not; the others learn
            // it from our answer to their next heartbeat.
            cast_peer(&m.info.node, &note);
            self.left_from.insert(m.info.node.clone());
        }
        self.discovery = false;
        self.reset_to_single();
        self.ds_left();
        self.save();
        let (r, s) = self.membership.status();
        format!("Leave the cluster successfully.\n{}\n", status_line(&r, &s))
    }

    pub(super) fn force_leave(&mut self, node: &str) -> String {
        if node == self.me() {
            return "Ignore.\n".into();
        }
        if self.membership.peer(node).is_none() {
            return "Failed to remove the node from cluster: node_not_in_cluster\n".into();
        }
        let note = Note::MemberLeft {
            node: node.to_string(),
        };
        self.broadcast(&note);
        if self.role_of(node) == Some(Role::Replicant) {
            self.removed.insert(node.to_string());
            // Its core, if that is us, tells it; any other core does when
            // it hears from it.
            cast_peer(node, &note);
        }
        self.forget(node);
        self.save();
        let (r, s) = self.membership.status();
        format!(
            "Remove the node from cluster successfully.\n{}\n",
            status_line(&r, &s)
        )
    }

    pub(super) fn reset_to_single(&mut self) {
        self.stop_following();
        self.drop_followers();
        for p in self.membership.peer_names() {
            self.forget(&p);
        }
        self.membership.reset();
    }
}
