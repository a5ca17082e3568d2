//! The contract every discovery strategy implements, and the checks they
//! share.

use std::future::Future;

/// Why a discovery round failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A seed or record that is not a valid `name@host`.
    #[error("invalid node name {0:?}: expected name@host")]
    InvalidNodeName(String),
    /// The backing service (DNS, etcd, API server) could not be reached.
    #[error("discovery backend unavailable: {0}")]
    Unavailable(String),
    /// Settings that cannot work (a missing file, a bad URL): the node
    /// should not start. The text names the configuration key.
    #[error("{0}")]
    Config(String),
}

/// A way of finding cluster members.
pub trait Strategy: Send + Sync + 'static {
    /// The `cluster.discovery_strategy` value this implements.
    fn name(&self) -> &'static str;

    /// The node names found now (this node may be among them).
    fn discover(&mut self) -> impl Future<Output = Result<Vec<String>, DiscoveryError>> + Send;

    /// Takes the strategy's cluster lock before a discovery-and-join
    /// round, waiting a bounded time for another holder: `Ok(true)` when
    /// it is held, `Ok(false)` when the strategy has none (EMQX's
    /// `ignore`; the default), an error when the round should be skipped.
    /// The autocluster loop calls [`unlock`](Strategy::unlock) after the
    /// round whatever its outcome.
    fn lock(&mut self) -> impl Future<Output = Result<bool, DiscoveryError>> + Send {
        async { Ok(false) }
    }

    /// Releases what [`lock`](Strategy::lock) took; a no-op by default.
    fn unlock(&mut self) -> impl Future<Output = Result<(), DiscoveryError>> + Send {
        async { Ok(()) }
    }

    /// Whether the node should run the autocluster loop at all
    /// (`manual` never does: joins are typed by an operator).
    fn autocluster(&self) -> bool {
        true
    }
}

/// Checks the `name@host` shape EMQX requires of node names: the part
/// before `@` is `[0-9A-Za-z_-]+` and the host is not empty.
pub fn check_node_name(s: &str) -> Result<(), DiscoveryError> {
    let bad = || DiscoveryError::InvalidNodeName(s.to_string());
    let (name, host) = s.split_once('@').ok_or_else(bad)?;
    if name.is_empty()
        || host.is_empty()
        || host.contains('@')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad());
    }
    Ok(())
}
