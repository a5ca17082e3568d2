//! emqx-rs broker core: the MQTT codec, protocol state machines as plain
//! code, and the actors that own the broker's state.

pub mod codec;
pub mod packet;
pub mod topic;
pub mod trie;
