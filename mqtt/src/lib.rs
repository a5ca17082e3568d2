//! emqx-rs protocol core: everything about MQTT that is plain code.
//!
//! The control packets of MQTT 3.1, 3.1.1 and 5.0 and their codec, topic
//! names and filters with the wildcard trie, the application message, the
//! per-client settings, and the channel state machine (protocol rules and
//! session state of one client). This crate does no I/O, runs no tasks and
//! reads no clock: inputs are bytes, packets, deliveries and the time
//! ([`time::Now`]) a caller hands in; outputs are bytes and actions.
//!
//! The layer above (`emqx-actors`) owns sockets, actors and timers.

pub mod acl;
pub mod authz;
pub mod channel;
pub mod codec;
pub mod delivery;
pub mod message;
pub mod packet;
pub mod settings;
pub mod time;
pub mod topic;
pub mod trie;
