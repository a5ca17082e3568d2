//! What peers send: notes (heartbeats, route changes, retained messages, membership) and requests (join, locks, takeover, snapshots).

use super::*;

impl SvcState {
    pub(super) fn on_note(&mut self, myself: &ActorRef<SvcMsg>, n: Note) {
        if self.is_replicant() {
            self.on_note_as_replicant(myself, n);
            return;
        }
        match n {
            Note::Heartbeat {
                node,
                route_version,
                beat,
            } => {
                if self.membership.peer(&node).is_none() {
                    if self.removed.contains(&node) {
                        // Autocleaned while it was away: tell it.
                        cast_peer(&node, &Note::MemberLeft { node: node.clone() });
                    } else if self.left_from.contains(&node) {
                        cast_peer(
                            &node,
                            &Note::MemberLeft {
                                node: self.me().to_string(),
                            },
                        );
                    }
                    return;
                }
                if self.role_of(&node) == Some(Role::Replicant) {
                    // A replicant beats to the core it follows only.
                    if self.hosts_here(&node) {
                        self.follower_heard(&node);
                        self.check_routes(myself, &node, beat.incarnation, route_version);
                    }
                    return;
                }
                let eff = self.monitor.on_beat(&node, &beat, Instant::now());
                self.apply(myself, eff, "");
                if self.monitor.is_running(&node) {
                    self.check_routes(myself, &node, beat.incarnation, route_version);
                }
            }
            Note::Routes {
                node,
                incarnation,
                base,
                ops,
            } => {
                if self.membership.peer(&node).is_none() {
                    return;
                }
                let known = self.incarnations.get(&node).copied();
                let version = base + ops.len() as u64;
                if known == Some(incarnation) {
                    let r = self.view.routes.write().apply(&node, base, &ops);
                    if r.is_err() {
                        self.fetch_routes(myself, &node);
                    } else if self.hosts_here(&node) {
                        // A replicant's changes: the other cores get them
                        // from its core.
                        self.broadcast(&Note::Routes {
                            node,
                            incarnation,
                            base,
                            ops,
                        });
                    }
                } else {
                    self.check_routes(myself, &node, incarnation, version);
                }
            }
            Note::MemberUp { info } => {
                if info.node == self.me() {
                    return;
                }
                if self.joining {
                    // Our own join is under way: this news about the cluster
                    // we are joining must survive the adoption of its snapshot.
                    self.pending_ups.push(info.clone());
                }
                let node = info.node.clone();
                add_forward_peer(&self.view, &info);
                let (role, running) = (info.role, self.monitor.is_running(&node));
                if self.membership.upsert(info, running) {
                    tracing::info!("cluster: {node} joined the cluster");
                    self.save();
                }
                self.watch(&node, role, Instant::now());
                if self.links.contains_key(&node) {
                    self.send_heartbeat(&node);
                }
            }
            Note::MemberLeft { node } => {
                if self.role_of(&node) == Some(Role::Replicant) {
                    // A replicant that still follows (or comes back) is
                    // told it is out, as an autocleaned node is.
                    self.removed.insert(node.clone());
                }
                if self.hosts_here(&node) {
                    // A replicant of ours leaves: the other cores hear it
                    // from us.
                    self.broadcast(&Note::MemberLeft { node: node.clone() });
                }
                if node == self.me() {
                    tracing::warn!("cluster: this node was removed from the cluster");
                    self.reset_to_single();
                    self.ds_left();
                } else {
                    self.forget(&node);
                }
                self.save();
            }
            Note::Retain { msg } => {
                let m = Arc::new(msg);
                if self.ctx.broker.retainer.store(&m).is_ok() && self.upstream.agents() > 0 {
                    self.stream_ops.push(CoreOp::Retain((*m).clone()));
                }
            }
            Note::Report { node } => {
                let eff = self.monitor.on_report(&node, Instant::now());
                self.apply(myself, eff, "");
            }
            Note::Heal { cliques } => self.start_heal(myself, cliques),
            Note::Table(ops) => match self.tables.merge(&ops) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!("cluster: {n} change(s) to table {}", ops.table);
                    if self.upstream.agents() > 0 {
                        self.stream_ops.push(CoreOp::Table(ops));
                    }
                }
                Err(e) => tracing::error!("cluster: replicated table {}: {e}", ops.table),
            },
            Note::Follow { node, up } => self.on_follow(node, up),
            Note::Hosted { host, replicants } => self.on_hosted(myself, host, replicants),
            Note::Relayed { from, note } => self.on_relayed(myself, from, *note),
            Note::Stream(_) => {
                tracing::warn!("cluster: a replication stream reached a core; ignored")
            }
        }
    }

    pub(super) async fn on_request(&mut self, req: Req) -> Resp {
        match req {
            Req::Join { info } => {
                if self.is_replicant() {
                    return Resp::Refused("cannot_join_to_replicant".into());
                }
                if info.node == self.me() {
                    return Resp::Refused("cannot_join_itself".into());
                }
                if self.settings.singleton {
                    return Resp::Refused("singleton".into());
                }
                let node = info.node.clone();
                self.left_from.remove(&node);
                self.removed.remove(&node);
                add_forward_peer(&self.view, &info);
                let others: Vec<String> = self
                    .membership
                    .peers()
                    .map(|m| m.info.node.clone())
                    .collect();
                // A member rejoining after an autoheal restart keeps its
                // running state until its new incarnation is heard.
                let running = self.monitor.is_running(&node);
                self.membership.upsert(info.clone(), running);
                self.watch(&node, info.role, Instant::now());
                // A rejoining node's routes are fetched again from its new
                // run and replace the old ones in one step; until then the
                // old ones stay (an autoheal restart keeps its sessions).
                self.incarnations.remove(&node);
                self.save();
                for o in others {
                    if o != node {
                        cast_peer(&o, &Note::MemberUp { info: info.clone() });
                    }
                }
                tracing::info!("cluster: {node} joined through this node");
                let mut members = self.membership.all_infos();
                members.retain(|m| m.node != node);
                if info.role == Role::Replicant {
                    // A replicant takes the data from the stream it
                    // follows next: the members are all it needs now.
                    return Resp::Joined(Box::new(JoinSnapshot {
                        members,
                        routes: Vec::new(),
                        retained: Vec::new(),
                        tables: Vec::new(),
                    }));
                }
                let (v, keys) = self.local.snapshot();
                let mut routes = vec![(
                    self.me().to_string(),
                    self.membership.me.incarnation,
                    v,
                    keys,
                )];
                {
                    let r = self.view.routes.read();
                    for origin in r.origins() {
                        if &*origin == node.as_str() {
                            continue;
                        }
                        let inc = self.incarnations.get(&*origin).copied().unwrap_or(0);
                        routes.push((
                            origin.to_string(),
                            inc,
                            r.version(&origin),
                            r.keys_of(&origin),
                        ));
                    }
                }
                let retained = self
                    .ctx
                    .broker
                    .retainer
                    .all()
                    .into_iter()
                    .map(|m| (*m).clone())
                    .collect();
                Resp::Joined(Box::new(JoinSnapshot {
                    members,
                    routes,
                    retained,
                    tables: self.tables.snapshot(),
                }))
            }
            Req::RoutesSince { since } => {
                let inc = self.membership.me.incarnation;
                match self.local.since(since) {
                    Some(ops) => Resp::Routes {
                        incarnation: inc,
                        version: self.local.version,
                        delta: Some((since, ops)),
                        snapshot: None,
                    },
                    None => {
                        let (v, keys) = self.local.snapshot();
                        Resp::Routes {
                            incarnation: inc,
                            version: v,
                            delta: None,
                            snapshot: Some(keys),
                        }
                    }
                }
            }
            Req::Ctl { .. } => Resp::Refused("ctl is served by the control actor".into()),
            Req::Lock { client, holder } => {
                Resp::Bool(self.registry.try_lock_local(&client, &holder))
            }
            Req::Unlock { client, holder } => {
                self.registry.unlock_local(&client, &holder);
                Resp::Bool(true)
            }
            // Clears too (empty payloads): a node that comes back with an
            // older copy on disk must drop what was cleared meanwhile.
            Req::RetainedAll => Resp::Retained(self.ctx.broker.retainer.all_with_tombstones()),
            Req::Sessions { clients } => Resp::Clients(
                clients
                    .into_iter()
                    .filter(|c| self.ctx.cm.lookup(c).is_some())
                    .collect(),
            ),
            Req::About => Resp::About {
                incarnation: self.membership.me.incarnation,
                members: self.membership.peers().count() + 1,
                role: self.membership.me.role,
            },
            Req::Info => Resp::Info {
                incarnation: self.membership.me.incarnation,
                members: self.membership.peers().count() + 1,
            },
            Req::SplitView => Resp::SplitView(self.monitor.split_view()),
            Req::Part { id, offset } => super::super::rpc::part(id, offset),
            Req::Ds { .. } | Req::Upload { .. } | Req::Uploaded { .. } => {
                Resp::Refused("served by the endpoint".into())
            }
            Req::Kick { .. }
            | Req::Discard { .. }
            | Req::Takeover { .. }
            | Req::HeldFor { .. }
            | Req::Reboot { .. }
            | Req::Relay { .. } => Resp::Refused("handled asynchronously".into()),
        }
    }
}
