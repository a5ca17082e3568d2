//! The addresses of node-name hosts (`emqx@<host>`): an IP address stands
//! for itself; a host name is looked up, through the DNS server set with
//! [`use_server`] (`cluster.dns.resolver`) when there is one, else through
//! the system resolver. Discovery can yield such names (DNS SRV targets,
//! k8s `hostname`/`dns` address types), and a node named after a host name
//! listens on that name's address.

use crate::dns::resolver_for;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Time allowed for one lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

static SERVER: OnceLock<Option<SocketAddr>> = OnceLock::new();

/// Sets the DNS server host names are looked up with (`None`: the system
/// resolver). The first call wins; later ones are ignored.
pub fn use_server(server: Option<SocketAddr>) {
    let _ = SERVER.set(server);
}

/// `host` as an IP address (brackets around IPv6 allowed), if it is one.
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The address of `host` now: the first one DNS (or the system) gives,
/// `None` when it cannot be resolved within a few seconds.
pub async fn lookup(host: &str) -> Option<IpAddr> {
    if let Some(ip) = literal(host) {
        return Some(ip);
    }
    let found = match SERVER.get().copied().flatten() {
        Some(server) => {
            let resolver = resolver_for(Some(server)).ok()?;
            tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host))
                .await
                .ok()?
                .ok()
                .and_then(|ips| ips.iter().next())
        }
        None => tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 0)))
            .await
            .ok()?
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|a| a.ip()),
    };
    if found.is_none() {
        tracing::warn!("cannot resolve host {host:?}");
    }
    found
}

/// [`lookup`] for code that is not async (or runs before the node's own
/// listeners exist): resolved on a helper thread, trying for up to about
/// 15 s (a DNS server starting next to the node may not answer yet), then
/// remembered for the life of the process, so every caller sees the same
/// address. A failure is not remembered.
pub fn lookup_once(host: &str) -> Option<IpAddr> {
    static SEEN: OnceLock<Mutex<HashMap<String, Option<IpAddr>>>> = OnceLock::new();
    if let Some(ip) = literal(host) {
        return Some(ip);
    }
    let seen = SEEN.get_or_init(Default::default);
    if let Some(r) = seen.lock().ok().and_then(|m| m.get(host).copied()) {
        return r;
    }
    let h = host.to_string();
    let r = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            for _ in 0..3 {
                if let Some(ip) = lookup(&h).await {
                    return Some(ip);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None
        })
    })
    .join()
    .ok()
    .flatten();
    if let (Some(ip), Ok(mut m)) = (r, seen.lock()) {
        m.insert(host.to_string(), Some(ip));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_the_system_resolver() {
        assert_eq!(literal("127.0.0.2"), Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(literal("[::1]"), Some("::1".parse().expect("ip")));
        assert_eq!(literal("n1.emqx.test"), None);
        assert_eq!(
            lookup("127.0.0.3").await,
            Some(IpAddr::from([127, 0, 0, 3]))
        );
        // `localhost` is in every /etc/hosts (no DNS query leaves the host).
        assert!(lookup("localhost").await.is_some_and(|ip| ip.is_loopback()));
        assert_eq!(lookup_once("127.0.0.4"), Some(IpAddr::from([127, 0, 0, 4])));
        assert!(lookup_once("localhost").is_some_and(|ip| ip.is_loopback()));
    }
}
