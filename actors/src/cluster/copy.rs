//! What a core streams to the replicants that follow it, and the
//! replicant's copy that takes it in.
//!
//! One shard carries everything a replicant serves locally: the route
//! table (every node's routes, the core's own included), the member list
//! as the core sees it, retained messages and the replicated tables. The
//! core numbers each change it makes to any of them ([`super::rlog`]);
//! the replicant applies them in order to the very structures its own
//! node reads (its route table, retainer and tables), so a replicant
//! serves publishes, retained messages and logins from local memory.

use super::membership::MemberInfo;
use super::rlog::{Down, Shard};
use super::routes::{RouteChange, RouteRow};
use super::view::ClusterView;
use crate::replicated::{ReplTables, TableOps};
use crate::retainer::Retainer;
use crate::Ctx;
use emqx_mqtt::message::Message;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A member as a core sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub info: MemberInfo,
    pub running: bool,
    /// For a core: how many replicants follow it (a replicant picks the
    /// least followed core).
    pub followers: u32,
}

/// One change of the shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreOp {
    Route(RouteChange),
    /// The whole member list (it is short and changes seldom), the core
    /// itself included.
    Members(Vec<MemberRow>),
    /// A retained message stored or (empty payload) cleared.
    Retain(Message),
    Table(TableOps),
}

/// One row of a snapshot of the shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreRow {
    Route(RouteRow),
    Members(Vec<MemberRow>),
    Retain(Vec<Message>),
    Table(TableOps),
}

/// The stream's message from a core to a replicant.
pub type CoreDown = Down<CoreOp, CoreRow>;

/// Retained messages per snapshot row.
pub const RETAINED_PER_ROW: usize = 200;
/// Table entries per snapshot row.
pub const ENTRIES_PER_ROW: usize = 1_000;
/// Routes per snapshot row.
pub const ROUTES_PER_ROW: usize = 1_000;

/// A replicant's copy: the route table its publishes read, its retainer
/// and tables, and the member list as its core sees it.
pub struct LocalCopy {
    pub view: Arc<ClusterView>,
    pub ctx: Arc<Ctx>,
    pub tables: Arc<ReplTables>,
    pub members: Vec<MemberRow>,
    /// Retained messages of this node newer than the core's, found when a
    /// snapshot was taken in: they go back to the core.
    pub newer_here: Vec<Message>,
}

impl LocalCopy {
    fn retainer(&self) -> &Retainer {
        &self.ctx.broker.retainer
    }
}

impl Shard for LocalCopy {
    type Op = CoreOp;
    type Row = CoreRow;

    fn restore(&mut self, rows: Vec<CoreRow>) {
        let mut route_rows = Vec::new();
        let mut retained = Vec::new();
        let mut tables: Vec<TableOps> = Vec::new();
        for r in rows {
            match r {
                CoreRow::Route(r) => route_rows.push(r),
                CoreRow::Members(m) => self.members = m,
                CoreRow::Retain(m) => retained.extend(m),
                CoreRow::Table(t) => tables.push(t),
            }
        }
        // Built aside and swapped under the lock: publishes see the old
        // table or the new one, never a half-filled one.
        let mut fresh = self.view.routes.read().empty_like();
        fresh.restore(route_rows);
        *self.view.routes.write() = fresh;
        // Retained messages and tables merge by timestamp (a clear is a
        // tombstone): what the core has that is newer wins, and what this
        // node wrote while it followed nobody survives to be sent back.
        let newer = self.retainer().merge_synced(retained);
        self.newer_here.extend(newer);
        for t in tables {
            if let Err(e) = self.tables.merge(&t) {
                tracing::error!("cluster: replicated table {}: {e}", t.table);
            }
        }
    }

    fn apply(&mut self, op: &CoreOp) -> bool {
        match op {
            CoreOp::Route(c) => self.view.routes.write().apply_change(c),
            CoreOp::Members(m) => {
                self.members = m.clone();
                true
            }
            CoreOp::Retain(m) => {
                if let Err(e) = self.retainer().store(&Arc::new(m.clone())) {
                    tracing::debug!("cluster: retained message from the core not kept: {e:?}");
                }
                true
            }
            CoreOp::Table(t) => {
                if let Err(e) = self.tables.merge(t) {
                    tracing::error!("cluster: replicated table {}: {e}", t.table);
                }
                true
            }
        }
    }
}

/// Snapshot rows of retained messages.
pub fn retained_rows(all: Vec<Message>) -> Vec<CoreRow> {
    all.chunks(RETAINED_PER_ROW)
        .map(|c| CoreRow::Retain(c.to_vec()))
        .collect()
}

/// Snapshot rows of the tables.
pub fn table_rows(tables: Vec<TableOps>) -> Vec<CoreRow> {
    let mut out = Vec::new();
    for t in tables {
        for c in t.entries.chunks(ENTRIES_PER_ROW) {
            out.push(CoreRow::Table(TableOps {
                table: t.table.clone(),
                entries: c.to_vec(),
            }));
        }
    }
    out
}
