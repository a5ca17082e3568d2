//! Autoheal as the service carries it out: the effects the monitor asks for, gathering views for a heal, and the minority's restart.

use super::*;

impl SvcState {
    /// Carries out what the monitor decided.
    pub(super) fn apply(&mut self, myself: &ActorRef<SvcMsg>, effects: Vec<Effect>, why: &str) {
        for e in effects {
            match e {
                Effect::MarkUp(n) => self.mark_up(&n),
                Effect::MarkDown(n) => self.mark_down(&n, why),
                Effect::PartitionDetected(n) => {
                    if self.settings.heal.enabled {
                        tracing::warn!(
                            "cluster: partition detected with {n}: both ran on while each saw the other down; autoheal will report it to the leader"
                        );
                    } else {
                        tracing::warn!(
                            "cluster: partition detected with {n}: both ran on while each saw the other down; cluster.autoheal is off, so it stays split until one side restarts"
                        );
                    }
                    inc(&self.ctx.broker.metrics.cluster_partition_detected);
                    let ctx = self.ctx.clone();
                    ctx.sys_cluster_event("partition", &n);
                }
                Effect::PartitionHealed(n) => {
                    tracing::info!("cluster: partition with {n} healed ({n} restarted)");
                    inc(&self.ctx.broker.metrics.cluster_partition_healed);
                    let ctx = self.ctx.clone();
                    ctx.sys_cluster_event("healed", &n);
                }
                Effect::Report { leader } => {
                    let me = self.me().to_string();
                    tracing::info!(
                        "autoheal: reporting partitions with {:?} to the leader {leader}",
                        self.monitor.partitions()
                    );
                    if leader == me {
                        let eff = self.monitor.on_report(&me, Instant::now());
                        self.apply(myself, eff, why);
                    } else {
                        cast_peer(&leader, &Note::Report { node: me });
                    }
                }
                Effect::NotLeader { from, leader } => tracing::error!(
                    "autoheal: {from} reported a partition here, but the leader is {leader}; ignored"
                ),
                Effect::MajorityUnreachable { unreachable, cores } => tracing::warn!(
                    "autoheal: {} of {cores} core node(s) unreachable ({unreachable:?}); no heal without a majority, trying again in {:?}",
                    unreachable.len(),
                    self.settings.heal.delay
                ),
                Effect::CollectViews { cores } => self.collect_views(myself, cores),
                Effect::NothingToHeal => {
                    tracing::info!("autoheal: the split view shows one cluster; nothing to heal")
                }
                Effect::LeaderDisputed { by, leader } => tracing::info!(
                    "autoheal: {by} says {leader} leads; taking the split view again later"
                ),
                Effect::Heal {
                    coordinator,
                    cliques,
                } => {
                    tracing::warn!(
                        "autoheal: split view {cliques:?}: {coordinator} coordinates, every node outside {:?} restarts",
                        cliques.first()
                    );
                    if coordinator == self.me() {
                        self.start_heal(myself, cliques);
                    } else {
                        cast_peer(&coordinator, &Note::Heal { cliques });
                    }
                }
            }
        }
    }

    /// Leader: asks every reachable core for its view, all at once.
    pub(super) fn collect_views(&self, myself: &ActorRef<SvcMsg>, cores: Vec<String>) {
        let me = self.me().to_string();
        let own = self.monitor.split_view();
        let svc = myself.clone();
        tokio::spawn(async move {
            let mut views = BTreeMap::from([(me.clone(), own)]);
            let mut calls = tokio::task::JoinSet::new();
            for c in cores.into_iter().filter(|c| *c != me) {
                calls.spawn(async move {
                    let r = call_peer(&c, &Req::SplitView).await;
                    (c, r)
                });
            }
            while let Some(Ok((c, r))) = calls.join_next().await {
                match r {
                    Ok(Resp::SplitView(v)) => {
                        views.insert(c, v);
                    }
                    other => tracing::warn!("autoheal: no split view from {c}: {other:?}"),
                }
            }
            let _ = svc.cast(SvcMsg::Views(views));
        });
    }

    /// Coordinator: restarts every node outside the first clique, one
    /// after the other, each rejoining through this node.
    pub(super) fn start_heal(&mut self, myself: &ActorRef<SvcMsg>, cliques: Vec<Vec<String>>) {
        let me = self.me().to_string();
        if !cliques.first().is_some_and(|c| c.contains(&me)) {
            tracing::warn!(
                "autoheal: asked to coordinate {cliques:?} from outside its majority; ignored"
            );
            return;
        }
        if std::mem::replace(&mut self.coordinating, true) {
            tracing::info!("autoheal: a heal is already under way here; {cliques:?} ignored");
            return;
        }
        let targets: Vec<String> = cliques[1..].iter().flatten().cloned().collect();
        let svc = myself.clone();
        tokio::spawn(async move {
            for t in targets {
                tracing::warn!("autoheal: restarting {t}");
                let req = Req::Reboot {
                    coordinator: me.clone(),
                };
                match call_peer_within(&t, &req, REBOOT_TIMEOUT).await {
                    Ok(Resp::Bool(true)) => tracing::info!("autoheal: {t} restarted and rejoined"),
                    other => tracing::warn!("autoheal: restarting {t} failed: {other:?}"),
                }
            }
            let _ = svc.cast(SvcMsg::HealEnded);
        });
    }

    /// A minority node's restart, cluster side: forget every member and
    /// route (links stay up: the new incarnation tells peers we restarted),
    /// and take a new incarnation. Nothing is saved until the rejoin
    /// succeeds, so a crash in between restarts into the old membership.
    pub(super) fn reboot_reset(&mut self) -> MemberInfo {
        let inc = crate::clock::now_ms().max(self.membership.me.incarnation + 1);
        self.drop_followers();
        self.membership.reset();
        self.membership.me.incarnation = inc;
        self.monitor = Monitor::new(
            &self.membership.me.node,
            inc,
            self.membership.me.role,
            self.settings.heal.clone(),
            self.settings.down_timeout,
        );
        self.view.up.write().clear();
        {
            let mut routes = self.view.routes.write();
            for origin in routes.origins() {
                routes.purge(&origin);
            }
        }
        self.incarnations.clear();
        self.down_since.clear();
        self.removed.clear();
        self.left_from.clear();
        self.pending_ups.clear();
        self.joining = true;
        self.ctx.broker.retainer.clean(None);
        self.membership.me.clone()
    }
}
