//! `dns`: node names from DNS records (`cluster.dns.*`).
//!
//! With A (or AAAA) records every address of `cluster.dns.name` is a node
//! `<short name>@<ip>`, so all nodes share one short name and differ by
//! host. With SRV records each target host gives `<short name>@<target>`.
//! The resolver is the system's, or a given server (tests point it at a
//! local dnsmasq).

use crate::strategy::{DiscoveryError, Strategy};
use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
use hickory_resolver::TokioAsyncResolver;
use std::net::SocketAddr;
use std::time::Duration;

/// Which records to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A,
    Aaaa,
    Srv,
}

pub struct Dns {
    name: String,
    record_type: RecordType,
    short_name: String,
    resolver: TokioAsyncResolver,
}

impl Dns {
    /// `me` is this node's full name; its short name is used for every node found.
    pub fn new(
        name: &str,
        record_type: RecordType,
        me: &str,
        server: Option<SocketAddr>,
    ) -> Result<Dns, DiscoveryError> {
        let short_name = me.split('@').next().unwrap_or("emqx").to_string();
        let resolver = resolver_for(server)?;
        Ok(Dns {
            name: name.to_string(),
            record_type,
            short_name,
            resolver,
        })
    }
}

/// A resolver asking `server`, or the system's when `None`; no cache, so
/// every lookup sees the records as they are now.
pub(crate) fn resolver_for(
    server: Option<SocketAddr>,
) -> Result<TokioAsyncResolver, DiscoveryError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 0;
    match server {
        Some(addr) => {
            let mut cfg = ResolverConfig::new();
            cfg.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            Ok(TokioAsyncResolver::tokio(cfg, opts))
        }
        None => TokioAsyncResolver::tokio_from_system_conf()
            .map_err(|e| DiscoveryError::Unavailable(format!("system resolver: {e}"))),
    }
}

impl Strategy for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        let fail = |e: hickory_resolver::error::ResolveError| {
            DiscoveryError::Unavailable(format!("DNS lookup failed: {e}"))
        };
        let mut hosts: Vec<String> = match self.record_type {
            RecordType::A => self
                .resolver
                .ipv4_lookup(self.name.as_str())
                .await
                .map_err(fail)?
                .iter()
                .map(|a| a.0.to_string())
                .collect(),
            RecordType::Aaaa => self
                .resolver
                .ipv6_lookup(self.name.as_str())
                .await
                .map_err(fail)?
                .iter()
                .map(|a| a.0.to_string())
                .collect(),
            RecordType::Srv => self
                .resolver
                .srv_lookup(self.name.as_str())
                .await
                .map_err(fail)?
                .iter()
                .map(|s| s.target().to_utf8().trim_end_matches('.').to_string())
                .collect(),
        };
        hosts.sort();
        hosts.dedup();
        Ok(hosts
            .into_iter()
            .map(|h| format!("{}@{h}", self.short_name))
            .collect())
    }
}
