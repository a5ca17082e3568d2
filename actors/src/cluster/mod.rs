//! Clustering: membership, failure detection, route replication and the
//! actors that run them over ractor_cluster (the control plane). Messages
//! between nodes travel on the forwarding channel ([`crate::forward`]).

pub mod autocluster;
pub mod autoheal;
pub mod copy;
pub mod detector;
pub mod ds;
pub mod ds_link;
pub mod ds_sessions;
pub mod guard;
pub mod membership;
pub mod registry;
pub mod remote;
pub mod rlog;
pub mod routes;
pub mod rpc;
pub mod service;
pub mod view;
pub mod wire;
