//! The task that makes a core's replicas follow the cluster's membership
//! (fed by the cluster service, see `service/ds_drive.rs`).

use super::host::DsHost;
use crate::connect::Adopted;
use crate::Ctx;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a session must have been held by a member that is down,
/// under the same epoch, before the leader of its shard takes it: a node
/// killed and restarted at once (a supervisor, an upgrade) gets its
/// sessions back from its own journal instead of finding them moved, and
/// a node only cut off for a while (a pause, a partition, links slow to
/// come back) is not mistaken for a dead one. A session its node claims
/// again meanwhile (its client connected there) starts the wait again.
pub const ADOPT_AFTER: Duration = Duration::from_secs(30);

/// Sessions taken at once, over all the down nodes.
const ADOPTING: usize = 32;

/// What the driver is told.
pub enum DsWork {
    /// The cluster's cores now, and the members (of any role) that are
    /// down (every heartbeat).
    Cores(Vec<String>, Vec<String>),
    /// This node joined a cluster of these members.
    Joined(Vec<String>),
    /// This node left its cluster, or was removed from it.
    Left,
}

/// Starts the task that runs `host`'s membership work, one step at a time
/// (a step waits for commits), with the newest cores; and on the shards
/// this node leads, takes the sessions of members down for
/// [`ADOPT_AFTER`] ([`crate::connect::adopt`]).
pub fn spawn_driver(host: Arc<DsHost>, ctx: Arc<Ctx>) -> mpsc::UnboundedSender<DsWork> {
    let (tx, mut rx) = mpsc::unbounded_channel::<DsWork>();
    let mut adopter = Adopter::new(ctx);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let (mut cores, mut joined, mut left, mut down) = (None, None, false, None);
            let mut take = |w: DsWork| match w {
                DsWork::Cores(c, d) => {
                    cores = Some(c);
                    down = Some(d);
                }
                DsWork::Joined(m) => joined = Some(m),
                DsWork::Left => {
                    // What came before the leave is moot.
                    left = true;
                    cores = None;
                    joined = None;
                }
            };
            take(first);
            while let Ok(w) = rx.try_recv() {
                take(w);
            }
            if left {
                match host.forget_all().await {
                    Ok(v) if !v.is_empty() => tracing::warn!(
                        "ds: dropped the {} shard(s) this node held in the cluster it left",
                        v.len()
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("ds: cannot drop the shards of the cluster left: {e}")
                    }
                }
            }
            if let Some(members) = joined {
                match host.forget_foreign(&members).await {
                    Ok(v) if !v.is_empty() => tracing::warn!(
                        "ds: dropped {} shard(s) this node held outside the cluster it joined: {v:?}",
                        v.len()
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!("ds: cannot drop the shards made before the join: {e}"),
                }
            }
            let Some(cores) = cores else { continue };
            match host.initialize_if_first(&cores).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("ds: made {n} shard(s) on {} core(s)", cores.len()),
                Err(e) => tracing::warn!("ds: cannot make the shards: {e}"),
            }
            for change in host.reconcile(&cores).await {
                tracing::info!("ds: {change:?}");
            }
            if let Some(down) = down {
                adopter.beat(&host, &down);
            }
        }
    });
    tx
}

/// Takes the sessions of the members that stay down.
struct Adopter {
    ctx: Arc<Ctx>,
    /// Each session held by a member that is down, in the shards this
    /// node leads: its holder, the epoch it holds it under, and since
    /// when it has been seen so, beat after beat.
    seen: HashMap<String, (String, u64, Instant)>,
    /// Client ids being taken now (not asked for again meanwhile).
    pending: Arc<parking_lot::Mutex<HashSet<String>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Adopter {
    fn new(ctx: Arc<Ctx>) -> Adopter {
        Adopter {
            ctx,
            seen: HashMap::new(),
            pending: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(ADOPTING)),
        }
    }

    fn beat(&mut self, host: &DsHost, down: &[String]) {
        let now = Instant::now();
        let mut seen = HashMap::new();
        for (_, client, owner) in host.held_by(down) {
            let since = match self.seen.get(&client) {
                Some((n, e, since)) if *n == owner.node && *e == owner.epoch => *since,
                _ => now,
            };
            seen.insert(client, (owner.node, owner.epoch, since));
        }
        self.seen = seen;
        let mut fresh: Vec<(String, String, u64)> = Vec::new();
        {
            let mut pending = self.pending.lock();
            for (client, (node, epoch, since)) in &self.seen {
                if now.duration_since(*since) >= ADOPT_AFTER && pending.insert(client.clone()) {
                    fresh.push((client.clone(), node.clone(), *epoch));
                }
            }
        }
        if fresh.is_empty() {
            return;
        }
        let mut from: Vec<&str> = fresh.iter().map(|(_, n, _)| n.as_str()).collect();
        from.sort_unstable();
        from.dedup();
        tracing::info!(
            "ds: taking {} persistent session(s) of down node(s) {from:?}",
            fresh.len()
        );
        let (ctx, pending, slots) = (self.ctx.clone(), self.pending.clone(), self.slots.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (client, from, epoch) in fresh {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (ctx, pending) = (ctx.clone(), pending.clone());
                tasks.spawn(async move {
                    let r = crate::connect::adopt(&ctx, &client, &from, epoch).await;
                    pending.lock().remove(&client);
                    drop(slot);
                    match r {
                        Ok(a) => Some(a),
                        Err(e) => {
                            // Tried again at the next beat while its node
                            // stays down; its client may connect meanwhile.
                            tracing::warn!(client_id = %client, "ds: the session of {from} (down) could not be taken: {e}");
                            None
                        }
                    }
                });
            }
            let (mut here, mut expired, mut not_held, mut failed) = (0, 0, 0, 0);
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok(Some(Adopted::Here)) => here += 1,
                    Ok(Some(Adopted::Expired)) => expired += 1,
                    Ok(Some(Adopted::NotHeld)) => not_held += 1,
                    _ => failed += 1,
                }
            }
            tracing::info!(
                "ds: sessions of down nodes: {here} brought back here, {expired} expired (released), {not_held} held elsewhere meanwhile, {failed} not taken"
            );
        });
    }
}
