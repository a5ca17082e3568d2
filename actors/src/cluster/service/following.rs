//! A replicant's side: it links to one core only, follows that core's
//! replication stream into its own route table, retainer, tables and
//! member list, hands its writes to that core, and moves to another core
//! when its core goes down or falls silent.

use super::super::rlog::{pick_core, Event};
use super::super::rpc::set_default_via;
use super::*;

/// Writes kept while a replicant follows no core, at most.
const UNSENT_MAX: usize = 10_000;

impl SvcState {
    /// A write of this replicant: to its core, or kept until it follows
    /// one (route changes need no keeping: the core asks for what it
    /// missed, seeing our route version in our heartbeats).
    pub(super) fn write_to_core(&mut self, note: Note) {
        let me = self.me().to_string();
        let linked = self.followed_core().filter(|c| self.links.contains_key(c));
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        let note = match note {
            n @ Note::Routes { .. } => n,
            other => Note::Relayed {
                from: me,
                note: Box::new(other),
            },
        };
        if let Some(core) = linked {
            if cast_peer(&core, &note) {
                return;
            }
        }
        if matches!(note, Note::Routes { .. }) {
            return;
        }
        if f.unsent.len() >= UNSENT_MAX {
            f.unsent.pop_front();
            tracing::warn!(
                "cluster: no core to take this replicant's writes; the oldest unsent one is dropped"
            );
        }
        f.unsent.push_back(note);
    }

    /// The core this replicant follows (or is bootstrapping from).
    pub(super) fn followed_core(&self) -> Option<String> {
        self.follower
            .as_ref()
            .and_then(|f| f.replica.core())
            .map(str::to_string)
    }

    /// Without a stream, picks a running core (the least followed) and
    /// follows it, dialing it first when there is no link.
    pub(super) fn follow_core(&mut self, myself: &ActorRef<SvcMsg>) {
        let now = Instant::now();
        let Some(f) = self.follower.as_ref() else {
            return;
        };
        if f.replica.stream().is_some() || f.dialing.is_some() || self.membership.is_alone() {
            return;
        }
        // The cores as our last core saw them; before any stream, as the
        // membership (the join or cluster.json) has them.
        let mut candidates: Vec<(String, usize)> = f
            .copy
            .members
            .iter()
            .filter(|m| m.info.role == Role::Core && m.running)
            .map(|m| (m.info.node.clone(), m.followers as usize))
            .collect();
        if candidates.is_empty() {
            candidates = self
                .membership
                .peers()
                .filter(|m| m.info.role == Role::Core)
                .map(|m| (m.info.node.clone(), 0))
                .collect();
        }
        candidates.retain(|(c, _)| self.backoff.get(c).is_none_or(|b| b.ready(now)));
        let names: Vec<(&str, usize)> = candidates.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        let mut rng = rand::rng();
        let Some(core) = pick_core(&names, || rand::RngExt::random::<f64>(&mut rng)) else {
            return;
        };
        let core = core.to_string();
        if self.links.contains_key(&core) {
            self.subscribe_to(&core);
            return;
        }
        let Some(addr) = self
            .membership
            .peer(&core)
            .and_then(|m| m.info.dist_addr.parse::<SocketAddr>().ok())
        else {
            return;
        };
        if let Some(f) = self.follower.as_mut() {
            f.dialing = Some(core.clone());
        }
        self.dialing.insert(core.clone());
        let ns = self.node_server.clone();
        let me = myself.clone();
        let ip = self.settings.dialer.clone();
        tokio::spawn(async move {
            let ok = ensure_link(&ns, &ip, &core, addr).await;
            let _ = me.cast(SvcMsg::DialDone(core, ok));
        });
    }

    fn subscribe_to(&mut self, core: &str) {
        let me = self.me().to_string();
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        for (to, up) in f.replica.subscribe(core) {
            cast_peer(
                &to,
                &Note::Follow {
                    node: me.clone(),
                    up,
                },
            );
        }
        tracing::info!("cluster: this replicant follows core {core}");
        set_default_via(Some(core.to_string()));
        self.send_heartbeat(core);
        // One control link only: the one to the core we joined through, or
        // followed before, goes.
        let others: Vec<String> = self.links.keys().filter(|n| *n != core).cloned().collect();
        for other in others {
            self.disconnect(&other);
        }
    }

    /// A link came up on a replicant: the core it dialed to follow.
    pub(super) fn core_linked(&mut self, myself: &ActorRef<SvcMsg>, node: &str) {
        let Some(f) = self.follower.as_ref() else {
            return;
        };
        if f.replica.stream().is_none() && f.dialing.is_none() {
            if self.role_of(node) == Some(Role::Core) {
                self.subscribe_to(node);
            } else {
                self.follow_core(myself);
            }
        } else if f.replica.core() != Some(node)
            && f.dialing.as_deref() != Some(node)
            && self.membership.is_member(node)
        {
            // A member that dialed us (a core probing during its
            // discovery): a replicant keeps one control link only. Remote
            // shells are no members and stay.
            self.disconnect(node);
        }
    }

    /// The link to `node` closed on a replicant.
    pub(super) fn core_lost(&mut self, myself: &ActorRef<SvcMsg>, node: &str) {
        let lost = self
            .follower
            .as_mut()
            .and_then(|f| f.replica.node_down(node));
        if let Some(Event::Lost(why)) = lost {
            tracing::warn!("cluster: lost the stream of core {node} ({why:?})");
            self.cut_off();
            self.follow_core(myself);
        }
    }

    /// A replicant's heartbeat: its stream may have fallen silent; its
    /// core hears from it.
    pub(super) fn replicant_tick(&mut self, myself: &ActorRef<SvcMsg>) {
        let lost = self.follower.as_mut().and_then(|f| f.replica.tick());
        if let Some(Event::Lost(why)) = lost {
            tracing::warn!("cluster: the stream of its core fell silent ({why:?})");
            self.cut_off();
        }
        self.follow_core(myself);
        if let Some(core) = self.followed_core() {
            if self.links.contains_key(&core) {
                self.send_heartbeat(&core);
            }
        }
    }

    /// What reaches a replicant: its core's stream, and a removal.
    pub(super) fn on_note_as_replicant(&mut self, myself: &ActorRef<SvcMsg>, n: Note) {
        match n {
            Note::Stream(d) => {
                let Some(f) = self.follower.as_mut() else {
                    return;
                };
                let before = f.copy.members.clone();
                let ev = f.replica.receive(d, &mut f.copy);
                if f.copy.members != before || matches!(ev, Some(Event::Ready)) {
                    self.take_members();
                }
                match ev {
                    Some(Event::Ready) => self.caught_up(),
                    Some(Event::Lost(why)) => {
                        tracing::warn!("cluster: the stream of its core broke ({why:?})");
                        self.cut_off();
                        self.follow_core(myself);
                    }
                    None => {}
                }
            }
            Note::MemberLeft { node } if node == self.me() => {
                tracing::warn!("cluster: this node was removed from the cluster");
                self.reset_to_single();
                self.save();
            }
            Note::MemberLeft { .. } | Note::MemberUp { .. } | Note::Heartbeat { .. } => {}
            // Everything else reaches a replicant through its stream.
            other => tracing::debug!("cluster: a replicant ignores {other:?}"),
        }
    }

    /// A replicant that left (or was removed from) its cluster follows
    /// nobody and keeps nothing of it.
    pub(super) fn stop_following(&mut self) {
        let me = self.me().to_string();
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        if let (Some(core), Some(stream)) = (f.replica.core(), f.replica.stream()) {
            let up = super::super::rlog::Up::Unsubscribe { stream };
            cast_peer(core, &Note::Follow { node: me, up });
        }
        f.replica.reset();
        f.dialing = None;
        f.copy.members.clear();
        f.copy.newer_here.clear();
        f.unsent.clear();
        set_default_via(None);
    }

    /// Without a stream this replicant knows nothing current of the
    /// cluster: every member counts as down until a core streams again
    /// (its clients connect without a cluster lock meanwhile, and shared
    /// groups pick members here).
    fn cut_off(&mut self) {
        set_default_via(None);
        for p in self.membership.peer_names() {
            self.mark_down(&p, "this replicant follows no core");
        }
    }

    /// The copy is complete (again): writes kept meanwhile go to the core.
    fn caught_up(&mut self) {
        let me = self.me().to_string();
        let core = self.followed_core().unwrap_or_default();
        let Some(f) = self.follower.as_mut() else {
            return;
        };
        tracing::info!(
            "cluster: this replicant's copy is complete (from core {core}, bootstrap {})",
            f.replica.bootstraps
        );
        let newer: Vec<Note> = f
            .copy
            .newer_here
            .drain(..)
            .map(|msg| Note::Relayed {
                from: me.clone(),
                note: Box::new(Note::Retain { msg }),
            })
            .collect();
        let unsent: Vec<Note> = f.unsent.drain(..).chain(newer).collect();
        for n in unsent {
            cast_peer(&core, &n);
        }
    }

    /// Takes the member list from the core's stream: who is a member,
    /// where it forwards, and whether it runs (as our core sees it).
    fn take_members(&mut self) {
        let Some(f) = self.follower.as_ref() else {
            return;
        };
        let rows = f.copy.members.clone();
        let core = f.replica.core().map(str::to_string);
        if !rows.iter().any(|r| r.info.node == self.me()) {
            if self.membership.is_alone() {
                return;
            }
            tracing::warn!("cluster: this replicant is no longer a member of its core's cluster");
            self.reset_to_single();
            self.save();
            return;
        }
        let mut changed = false;
        let listed: HashSet<&str> = rows.iter().map(|r| r.info.node.as_str()).collect();
        let gone: Vec<String> = self
            .membership
            .peers()
            .filter(|m| !listed.contains(m.info.node.as_str()))
            .map(|m| m.info.node.clone())
            .collect();
        for node in gone {
            self.forget(&node);
            changed = true;
        }
        for r in rows {
            if r.info.node == self.me() {
                continue;
            }
            let node = r.info.node.clone();
            let known = self.membership.peer(&node).map(|m| m.info.clone());
            if known.as_ref() != Some(&r.info) {
                add_forward_peer(&self.view, &r.info);
                let running = self.membership.peer(&node).is_some_and(|m| m.running);
                self.membership.upsert(r.info, running);
                changed = true;
            }
            let running = r.running || core.as_deref() == Some(node.as_str());
            if running {
                self.mark_up(&node);
            } else {
                self.mark_down(&node, "down as its core sees it");
            }
        }
        if changed {
            self.save();
        }
    }
}
