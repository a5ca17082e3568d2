//! The task that makes a core's replicas follow the cluster's membership
//! (fed by the cluster service, see `service/ds_drive.rs`).

use super::host::DsHost;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the driver is told.
pub enum DsWork {
    /// The cluster's cores now (every heartbeat).
    Cores(Vec<String>),
    /// This node joined a cluster of these members.
    Joined(Vec<String>),
    /// This node left its cluster, or was removed from it.
    Left,
}

/// Starts the task that runs `host`'s membership work, one step at a time
/// (a step waits for commits), with the newest cores.
pub fn spawn_driver(host: Arc<DsHost>) -> mpsc::UnboundedSender<DsWork> {
    let (tx, mut rx) = mpsc::unbounded_channel::<DsWork>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let (mut cores, mut joined, mut left) = (None, None, false);
            let mut take = |w: DsWork| match w {
                DsWork::Cores(c) => cores = Some(c),
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
        }
    });
    tx
}
