//! Driving this core's durable storage replicas from the cluster's
//! membership: the shards' groups are made once the cluster has enough
//! cores, follow the cores as they join and go, and a node that joined a
//! cluster drops the groups it made on its own.

use super::*;
use crate::cluster::ds::driver::DsWork;

impl SvcState {
    /// The cluster's cores, this node first if it is one: the nodes that
    /// may hold replicas. A core that is down stays one until the cluster
    /// removes it.
    pub(super) fn cores(&self) -> Vec<String> {
        let mut cores = Vec::new();
        if !self.is_replicant() {
            cores.push(self.me().to_string());
        }
        cores.extend(
            self.membership
                .peers()
                .filter(|m| m.info.role == Role::Core)
                .map(|m| m.info.node.clone()),
        );
        cores
    }

    /// Every heartbeat: the replicas follow the cores (not while a join
    /// or an autoheal restart rebuilds the membership: the node would
    /// see itself alone).
    pub(super) fn drive_ds(&self) {
        if self.joining || self.rebooting {
            return;
        }
        if let Some(ds) = &self.ds {
            let down: Vec<String> = self
                .membership
                .peers()
                .filter(|m| !m.running)
                .map(|m| m.info.node.clone())
                .collect();
            let _ = ds.send(DsWork::Cores(self.cores(), down));
        }
    }

    /// After a join: drop what belongs to no group of this cluster.
    pub(super) fn ds_joined(&self) {
        if let Some(ds) = &self.ds {
            let mut members = vec![self.me().to_string()];
            members.extend(self.membership.peer_names());
            let _ = ds.send(DsWork::Joined(members));
        }
    }

    /// This node left its cluster or was removed from it.
    pub(super) fn ds_left(&self) {
        if let Some(ds) = &self.ds {
            let _ = ds.send(DsWork::Left);
        }
    }
}
