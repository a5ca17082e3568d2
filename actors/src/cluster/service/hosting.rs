//! A core's side of its replicants: the replication stream it sends the
//! replicants that follow it, their writes it applies and passes on to the
//! other cores, and what the cores tell each other of the replicants they
//! host (so every core knows which replicants run, reaches them through
//! their core, and fetches their routes from there when it missed some).

use super::super::copy::{retained_rows, table_rows, CoreRow, ROUTES_PER_ROW};
use super::super::rlog::Up;
use super::super::routes::origin_rows;
use super::super::rpc::set_via;
use super::super::wire::HostedReplicant;
use super::*;

impl SvcState {
    /// A write made on this node (route changes, a retained message, a
    /// table write): a core applies it to its stream and sends it to the
    /// other cores; a replicant hands it to its core.
    pub(super) fn write(&mut self, note: Note) {
        if self.is_replicant() {
            self.write_to_core(note);
            return;
        }
        match &note {
            Note::Retain { msg } => self.stream_ops.push(CoreOp::Retain(msg.clone())),
            Note::Table(t) => self.stream_ops.push(CoreOp::Table(t.clone())),
            _ => {}
        }
        self.broadcast(&note);
    }

    /// Whether a replicant follows this core.
    pub(super) fn hosts_here(&self, node: &str) -> bool {
        self.upstream.followers().any(|(f, _)| f == node)
    }

    /// This core is about to drop its cluster data (an autoheal restart,
    /// or a join of another cluster): its replicants must not copy that.
    /// Their links are closed, so they follow a core at once, keeping the
    /// copy they serve until the new one is complete.
    pub(super) fn drop_followers(&mut self) {
        let followers: Vec<String> = self
            .upstream
            .followers()
            .map(|(f, _)| f.to_string())
            .collect();
        if followers.is_empty() {
            return;
        }
        tracing::warn!(
            "cluster: this core resets its cluster data; its {} replicant(s) follow another core",
            followers.len()
        );
        self.upstream = Upstream::new(SNAPSHOT_PART_ROWS);
        self.stream_ops.clear();
        self.streamed_members.clear();
        if std::mem::take(&mut self.recording) {
            self.view.routes.write().stop_recording();
        }
        for f in followers {
            if let Some(h) = self.hosts.get_mut(&f) {
                h.0.clear();
            }
            self.disconnect(&f);
        }
    }

    /// A replicant subscribes to this core's stream, or leaves it.
    pub(super) fn on_follow(&mut self, node: String, up: Up) {
        match up {
            Up::Subscribe { stream } => {
                if self.rebooting || self.joining {
                    // Our data is being replaced: a snapshot now would be
                    // empty. The replicant's stream falls silent and it
                    // picks a core again.
                    tracing::info!(
                        "cluster: {node} asked to follow this core while it rejoins; not now"
                    );
                    return;
                }
                if self.role_of(&node) != Some(Role::Replicant) {
                    tracing::warn!("cluster: {node} asked to follow this core but is no replicant member of this cluster");
                    return;
                }
                // What changed so far goes out first: the snapshot below
                // holds it.
                self.flush_stream();
                if !self.recording {
                    self.view.routes.write().record_changes();
                    self.recording = true;
                }
                let rows = self.snapshot_rows();
                let parts = self
                    .upstream
                    .subscribe::<CoreOp, CoreRow>(&node, stream, rows);
                tracing::info!(
                    "cluster: replicant {node} follows this core ({} snapshot part(s))",
                    parts.len()
                );
                for p in parts {
                    cast_peer(&node, &Note::Stream(p));
                }
                set_via(&node, None);
                self.hosts
                    .insert(node.clone(), (self.me().to_string(), Instant::now()));
                self.mark_up(&node);
                // The other cores count it running from now, not from our
                // next heartbeat.
                self.announce_hosted();
            }
            Up::Unsubscribe { stream } => {
                self.upstream.unsubscribe(&node, Some(stream));
                if let Some(h) = self.hosts.get_mut(&node) {
                    *h = (String::new(), Instant::now());
                }
            }
        }
    }

    /// The link to `node` closed: if it followed us, it no longer does (it
    /// counts as running for a down timeout more, the time it has to
    /// follow another core).
    pub(super) fn follower_lost(&mut self, node: &str) {
        if self.hosts_here(node) {
            self.upstream.unsubscribe(node, None);
            self.hosts
                .insert(node.to_string(), (String::new(), Instant::now()));
        }
    }

    /// Everything a replicant starts from: members, every route (ours
    /// included), retained messages and tables.
    fn snapshot_rows(&self) -> Vec<CoreRow> {
        let mut rows = vec![CoreRow::Members(self.member_rows())];
        rows.extend(
            self.view
                .routes
                .read()
                .rows(ROUTES_PER_ROW)
                .into_iter()
                .map(CoreRow::Route),
        );
        rows.extend(
            origin_rows(
                self.me(),
                self.local.version,
                self.local.keys.iter(),
                ROUTES_PER_ROW,
            )
            .into_iter()
            .map(CoreRow::Route),
        );
        rows.extend(retained_rows(
            self.ctx.broker.retainer.all_with_tombstones(),
        ));
        rows.extend(table_rows(self.tables.snapshot()));
        rows
    }

    /// The member list as this core sees it, with each core's followers.
    fn member_rows(&self) -> Vec<MemberRow> {
        let mut followers: HashMap<&str, u32> = HashMap::new();
        for (host, _) in self.hosts.values() {
            *followers.entry(host.as_str()).or_default() += 1;
        }
        let mut rows = vec![MemberRow {
            info: self.membership.me.clone(),
            running: true,
            followers: self.upstream.agents() as u32,
        }];
        for m in self.membership.peers() {
            rows.push(MemberRow {
                info: m.info.clone(),
                running: m.running,
                followers: followers.get(m.info.node.as_str()).copied().unwrap_or(0),
            });
        }
        rows
    }

    /// Sends the followers what changed while handling the last message.
    pub(super) fn flush_stream(&mut self) {
        if self.is_replicant() {
            return;
        }
        if self.upstream.agents() == 0 {
            self.stream_ops.clear();
            if std::mem::take(&mut self.recording) {
                self.view.routes.write().stop_recording();
            }
            return;
        }
        let mut ops: Vec<CoreOp> = self
            .view
            .routes
            .write()
            .take_changes()
            .into_iter()
            .map(CoreOp::Route)
            .collect();
        ops.append(&mut self.stream_ops);
        let members = self.member_rows();
        if members != self.streamed_members {
            self.streamed_members = members.clone();
            ops.push(CoreOp::Members(members));
        }
        if ops.is_empty() {
            return;
        }
        for (f, d) in self.upstream.record::<CoreOp, CoreRow>(ops) {
            cast_peer(&f, &Note::Stream(d));
        }
    }

    /// Every heartbeat: the followers hear where the stream is, and the
    /// other cores which replicants this core hosts.
    pub(super) fn beat_replicants(&mut self) {
        for (f, d) in self.upstream.alive::<CoreOp, CoreRow>() {
            cast_peer(&f, &Note::Stream(d));
        }
        self.announce_hosted();
    }

    /// Tells the other cores which replicants this core hosts.
    fn announce_hosted(&self) {
        let routes = self.view.routes.read();
        let replicants: Vec<HostedReplicant> = self
            .upstream
            .followers()
            .filter_map(|(f, _)| {
                Some(HostedReplicant {
                    node: f.to_string(),
                    incarnation: *self.incarnations.get(f)?,
                    route_version: routes.version(f),
                })
            })
            .collect();
        drop(routes);
        let note = Note::Hosted {
            host: self.me().to_string(),
            replicants,
        };
        self.broadcast(&note);
    }

    /// Another core's list of the replicants it hosts.
    pub(super) fn on_hosted(
        &mut self,
        myself: &ActorRef<SvcMsg>,
        host: String,
        replicants: Vec<HostedReplicant>,
    ) {
        let now = Instant::now();
        for r in replicants {
            if self.role_of(&r.node) != Some(Role::Replicant) || self.hosts_here(&r.node) {
                continue;
            }
            set_via(&r.node, Some(&host));
            self.hosts.insert(r.node.clone(), (host.clone(), now));
            self.mark_up(&r.node);
            self.check_routes(myself, &r.node, r.incarnation, r.route_version);
        }
    }

    /// A follower of ours was heard from (its heartbeat).
    pub(super) fn follower_heard(&mut self, node: &str) {
        let me = self.me().to_string();
        self.hosts.insert(node.to_string(), (me, Instant::now()));
    }

    /// A replicant runs while a core hosts it: this one, or another that
    /// said so within the down timeout. A follower of ours silent for the
    /// down timeout (its link cut without closing) no longer is one.
    pub(super) fn replicant_liveness(&mut self, now: Instant) {
        let silent: Vec<String> = self
            .upstream
            .followers()
            .filter(|(f, _)| {
                self.hosts
                    .get(*f)
                    .is_none_or(|(_, seen)| now.duration_since(*seen) >= self.settings.down_timeout)
            })
            .map(|(f, _)| f.to_string())
            .collect();
        for f in silent {
            tracing::warn!("cluster: replicant {f} fell silent; it no longer follows this core");
            self.upstream.unsubscribe(&f, None);
            if let Some(h) = self.hosts.get_mut(&f) {
                h.0.clear();
            }
            self.disconnect(&f);
        }
        let replicants: Vec<(String, bool)> = self
            .membership
            .peers()
            .filter(|m| m.info.role == Role::Replicant)
            .map(|m| (m.info.node.clone(), m.running))
            .collect();
        for (node, running) in replicants {
            let hosted = self.hosts_here(&node)
                || self.hosts.get(&node).is_some_and(|(h, seen)| {
                    !h.is_empty()
                        && now.duration_since(*seen) < self.settings.down_timeout
                        && self.membership.peer(h).is_some_and(|m| m.running)
                });
            let recent = self
                .hosts
                .get(&node)
                .is_some_and(|(_, seen)| now.duration_since(*seen) < self.settings.down_timeout);
            if hosted && !running {
                self.mark_up(&node);
            } else if !hosted && !recent && running {
                self.mark_down(&node, "no core hosts it");
                set_via(&node, None);
            }
        }
    }

    /// A replicant's write, relayed by the core that hosts it.
    pub(super) fn on_relayed(&mut self, myself: &ActorRef<SvcMsg>, from: String, note: Note) {
        if !matches!(note, Note::Retain { .. } | Note::Table(_)) {
            tracing::warn!("cluster: {from} relayed a note that is not a write");
            return;
        }
        let hosted = self.hosts_here(&from);
        self.on_note(myself, note.clone());
        if hosted {
            self.broadcast(&note);
        }
    }
}
