//! `dns`: node names from DNS records (`cluster.dns.*`).
//!
//! With A (or AAAA) records every address of `cluster.dns.name` is a node
//! `<short name>@<ip>`, so all nodes share one short name and differ by
//! host. With SRV records each target host gives `<short name>@<target>`.
//! The resolver is the system's, or a given server (tests point it at a
//! local dnsmasq).

use crate::strategy::{DiscoveryError, Strategy};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
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
    resolver: TokioResolver,
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
pub(crate) fn resolver_for(server: Option<SocketAddr>) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| DiscoveryError::Unavailable(format!("system resolver: {e}")))?,
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 0;
    builder
        .build()
        .map_err(|e| DiscoveryError::Unavailable(format!("DNS resolver: {e}")))
}

impl Strategy for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        let fail = |e: NetError| DiscoveryError::Unavailable(format!("DNS lookup failed: {e}"));
        let name = self.name.as_str();
        let lookup = match self.record_type {
            RecordType::A => self.resolver.ipv4_lookup(name).await,
            RecordType::Aaaa => self.resolver.ipv6_lookup(name).await,
            RecordType::Srv => self.resolver.srv_lookup(name).await,
        }
        .map_err(fail)?;
        // Only the records asked for (a CNAME on the way is skipped).
        let mut hosts: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match (&r.data, self.record_type) {
                (RData::A(a), RecordType::A) => Some(a.0.to_string()),
                (RData::AAAA(a), RecordType::Aaaa) => Some(a.0.to_string()),
                (RData::SRV(s), RecordType::Srv) => {
                    Some(s.target.to_utf8().trim_end_matches('.').to_string())
                }
                _ => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        Ok(hosts
            .into_iter()
            .map(|h| format!("{}@{h}", self.short_name))
            .collect())
    }
}
