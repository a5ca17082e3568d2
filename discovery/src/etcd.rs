//! `etcd`: node names registered in etcd (`cluster.etcd.*`), EMQX's
//! `ekka_cluster_etcd` with the v3 API.
//!
//! Each node grants a lease of `node_ttl` seconds, puts the key
//! `<prefix>/ekkacl/nodes/<node>` (value: the node name) bound to that
//! lease and keeps the lease alive every `node_ttl / 3`. Discovery is a
//! range read of every key under `<prefix>/ekkacl/nodes/`. A node that
//! stops cleanly revokes its lease ([`Etcd::revoke`]) so its key goes at
//! once; a node that dies loses it when the lease expires.
//!
//! The lock EMQX takes while joining is [`Etcd::acquire_lock`]: etcd's
//! lock service on `<prefix>/ekkacl/lock/`. The autocluster loop holds it
//! around each discovery-and-join round ([`Strategy::lock`]), so nodes
//! started together join one after another. Each hold has its own short
//! lease ([`LOCK_TTL`], kept alive while held), so the lock of a node that
//! dies holding it goes within seconds, whatever `node_ttl` is.
//!
//! etcd is spoken to through its v3 JSON gateway (`/v3/...`) with the
//! crate's small HTTP/1.1 client (one request per connection); keys and
//! values travel base64-encoded.
//!
//! TLS ([`Etcd::with_tls`], `cluster.etcd.ssl_options`): as in EMQX, it
//! applies to every server when enabled, whatever the URL's scheme. The
//! server is verified against `cacertfile` (`verify_peer`) or not at all
//! (`verify_none`); `certfile` + `keyfile` give a client certificate for
//! an etcd started with `--client-cert-auth`.
//!
//! Differences from EMQX: the lease TTL is `node_ttl` (EMQX v3 uses a
//! fixed 5 s and ignores `node_ttl`); the range read is a real prefix scan
//! (EMQX uses `range_end = "\0"`, which also returns keys of later
//! prefixes); an `https://` server without TLS enabled is refused (EMQX
//! would speak plain TCP to it).

use crate::http;
use crate::strategy::{check_node_name, DiscoveryError, Strategy};
use crate::tls::{TlsOptions, Verify};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Time allowed for one request (connect, send, read the answer), except
/// for lock requests, which wait as long as the lock is held elsewhere.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The TTL of the lease a held lock is bound to.
pub const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long [`Strategy::lock`] waits for another holder before the round
/// gives up (EMQX waits forever).
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The etcd discovery strategy.
pub struct Etcd {
    client: Client,
    me: String,
    node_key: String,
    nodes_prefix: String,
    lock_name: String,
    ttl: Duration,
    /// The current lease id, 0 when none is held.
    lease: Arc<AtomicI64>,
    /// The keepalive task while this node is registered.
    keepalive: Mutex<Option<JoinHandle<()>>>,
    /// The lock taken through [`Strategy::lock`], until `unlock`.
    held: Mutex<Option<LockGuard>>,
}

impl Etcd {
    /// `servers` are URLs like `http://127.0.0.1:2379` (or bare
    /// `host:port`); `prefix` is `cluster.etcd.prefix`; `node_ttl` the
    /// lease TTL (at least 1 s); `me` this node's name. Nothing is sent
    /// to etcd until the first [`discover`](Strategy::discover) (or
    /// [`register`](Etcd::register)). Plain TCP: `https://` servers are
    /// refused (see [`with_tls`](Etcd::with_tls)).
    pub fn new(
        servers: Vec<String>,
        prefix: String,
        node_ttl: Duration,
        me: String,
    ) -> Result<Etcd, DiscoveryError> {
        Etcd::with_tls(servers, prefix, node_ttl, me, None)
    }

    /// [`new`](Etcd::new), speaking TLS to every server when `tls` is
    /// given. Its files are read here: a missing or unusable one is a
    /// [`DiscoveryError::Config`] naming the key and the file.
    pub fn with_tls(
        servers: Vec<String>,
        prefix: String,
        node_ttl: Duration,
        me: String,
        tls: Option<&TlsOptions>,
    ) -> Result<Etcd, DiscoveryError> {
        check_node_name(&me)?;
        if servers.is_empty() {
            return Err(DiscoveryError::Config(
                "cluster.etcd.server: no etcd server given".into(),
            ));
        }
        let servers = servers
            .iter()
            .map(|s| parse_server(s, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let no_client_cert = tls.is_some_and(|t| t.certfile.is_none());
        let tls = match tls {
            None => None,
            Some(opts) => {
                let cfg = opts.client_config().map_err(DiscoveryError::Config)?;
                if opts.verify == Verify::None {
                    tracing::warn!(
                        "{}.verify = verify_none: the certificate of etcd is not checked",
                        opts.key_prefix
                    );
                }
                Some(cfg)
            }
        };
        let prefix = prefix.trim_end_matches('/');
        let nodes_prefix = format!("{prefix}/ekkacl/nodes/");
        Ok(Etcd {
            client: Client {
                servers,
                tls,
                alert_hint: if no_client_cert {
                    " (no client certificate is configured: an etcd run with \
                     --client-cert-auth needs cluster.etcd.ssl_options.certfile and keyfile)"
                } else {
                    ""
                },
            },
            node_key: format!("{nodes_prefix}{me}"),
            nodes_prefix,
            lock_name: format!("{prefix}/ekkacl/lock/"),
            me,
            ttl: node_ttl.max(Duration::from_secs(1)),
            lease: Arc::new(AtomicI64::new(0)),
            keepalive: Mutex::new(None),
            held: Mutex::new(None),
        })
    }

    /// The key this node registers under.
    pub fn node_key(&self) -> &str {
        &self.node_key
    }

    /// The lease currently held, if registered.
    pub fn lease_id(&self) -> Option<i64> {
        match self.lease.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// Grants a lease, puts this node's key on it and starts the
    /// keepalive task, unless that is already running. `discover` calls
    /// this first, so calling it is only needed to register early.
    pub async fn register(&self) -> Result<(), DiscoveryError> {
        let mut task = self.keepalive.lock().await;
        if task.as_ref().is_some_and(|t| !t.is_finished()) && self.lease_id().is_some() {
            return Ok(());
        }
        if let Some(t) = task.take() {
            t.abort();
        }
        let id = grant_and_put(&self.client, self.ttl, &self.node_key, &self.me).await?;
        self.lease.store(id, Ordering::SeqCst);
        *task = Some(tokio::spawn(keepalive_loop(
            self.client.clone(),
            self.ttl,
            self.node_key.clone(),
            self.me.clone(),
            self.lease.clone(),
        )));
        Ok(())
    }

    /// Releases the lock held through [`Strategy::lock`], stops the
    /// keepalive and revokes the lease, so this node's key goes at once. For a clean stop; a later
    /// `discover` registers again with a new lease.
    pub async fn revoke(&self) -> Result<(), DiscoveryError> {
        if let Some(g) = self.held.lock().await.take() {
            if let Err(e) = g.unlock().await {
                tracing::warn!("{e}");
            }
        }
        let mut task = self.keepalive.lock().await;
        if let Some(t) = task.take() {
            t.abort();
        }
        revoke_lease(&self.client, self.lease.swap(0, Ordering::SeqCst)).await
    }

    /// Takes the cluster lock `<prefix>/ekkacl/lock/` (etcd's lock
    /// service), bound to a new lease of [`LOCK_TTL`] that the returned
    /// guard keeps alive. Waits for as long as another node holds it (as
    /// EMQX does: wrap the call in a timeout to bound the wait; a wait
    /// given up that way leaves nothing behind). The lock is released by
    /// [`LockGuard::unlock`], by dropping the guard (the lease is revoked
    /// from a spawned task) or, if this process dies, when the lease
    /// expires.
    pub async fn acquire_lock(&self) -> Result<LockGuard, DiscoveryError> {
        let lease = grant(&self.client, LOCK_TTL)
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd lock: {e}")))?;
        // From here on, dropping the guard (also when this future is
        // dropped while waiting) revokes the lease and with it our place
        // in the lock's queue.
        let mut guard = LockGuard {
            client: self.client.clone(),
            lease,
            key: None,
            keepalive: Some(tokio::spawn(lock_keepalive(self.client.clone(), lease))),
        };
        let body = json!({
            "name": b64_encode(self.lock_name.as_bytes()),
            "lease": lease.to_string(),
        });
        let v = self
            .client
            .call_with_timeout("/v3/lock/lock", &body, None)
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd lock: {e}")))?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .and_then(b64_decode)
            .ok_or_else(|| {
                DiscoveryError::Unavailable(format!("etcd lock: answer without a key: {v}"))
            })?;
        guard.key = Some(key);
        Ok(guard)
    }

    /// [`Strategy::lock`]: takes the lock within [`LOCK_WAIT`] and keeps
    /// it until [`release_lock`](Etcd::release_lock).
    pub async fn hold_lock(&self) -> Result<(), DiscoveryError> {
        if let Some(old) = self.held.lock().await.take() {
            let _ = old.unlock().await;
        }
        let guard = tokio::time::timeout(LOCK_WAIT, self.acquire_lock())
            .await
            .map_err(|_| {
                DiscoveryError::Unavailable(format!(
                    "etcd lock: still held by another node after {LOCK_WAIT:?}"
                ))
            })??;
        *self.held.lock().await = Some(guard);
        Ok(())
    }

    /// [`Strategy::unlock`]: releases the lock taken by
    /// [`hold_lock`](Etcd::hold_lock), if any.
    pub async fn release_lock(&self) -> Result<(), DiscoveryError> {
        match self.held.lock().await.take() {
            Some(g) => g.unlock().await,
            None => Ok(()),
        }
    }

    /// Whether [`hold_lock`](Etcd::hold_lock) holds the lock now.
    pub async fn holds_lock(&self) -> bool {
        self.held.lock().await.is_some()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(t) = self.keepalive.get_mut().take() {
            t.abort();
        }
    }
}

impl Strategy for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        self.nodes().await
    }

    async fn lock(&mut self) -> Result<bool, DiscoveryError> {
        self.hold_lock().await.map(|()| true)
    }

    async fn unlock(&mut self) -> Result<(), DiscoveryError> {
        self.release_lock().await
    }
}

/// Shared, so the node can keep a handle for [`Etcd::revoke`] and
/// the lock while the autocluster loop owns the strategy.
impl Strategy for Arc<Etcd> {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        self.nodes().await
    }

    async fn lock(&mut self) -> Result<bool, DiscoveryError> {
        self.hold_lock().await.map(|()| true)
    }

    async fn unlock(&mut self) -> Result<(), DiscoveryError> {
        self.release_lock().await
    }
}

impl Etcd {
    /// One discovery round (what `discover` does): registers this node if
    /// it is not yet, then lists the node names under the prefix, sorted
    /// by key.
    pub async fn nodes(&self) -> Result<Vec<String>, DiscoveryError> {
        self.register().await?;
        let start = self.nodes_prefix.as_bytes();
        let body = json!({
            "key": b64_encode(start),
            "range_end": b64_encode(&prefix_end(start)),
            "sort_order": "ASCEND",
            "sort_target": "KEY",
        });
        let v = self
            .client
            .call("/v3/kv/range", &body)
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("etcd range: {e}")))?;
        let mut nodes = Vec::new();
        let kvs = match v.get("kvs") {
            None | Some(Value::Null) => return Ok(nodes),
            Some(Value::Array(kvs)) => kvs,
            Some(other) => {
                return Err(DiscoveryError::Unavailable(format!(
                    "etcd range: kvs is not a list: {other}"
                )))
            }
        };
        for kv in kvs {
            let name = kv
                .get("value")
                .and_then(Value::as_str)
                .and_then(b64_decode)
                .and_then(|b| String::from_utf8(b).ok());
            match name {
                Some(n) if check_node_name(&n).is_ok() => nodes.push(n),
                _ => tracing::warn!("etcd: ignoring a key without a valid node name: {kv}"),
            }
        }
        Ok(nodes)
    }
}

/// A held etcd lock (or, inside [`Etcd::acquire_lock`], a place in its
/// queue). Release it with [`unlock`](LockGuard::unlock); dropping it
/// revokes its lease from a spawned task.
pub struct LockGuard {
    client: Client,
    lease: i64,
    key: Option<Vec<u8>>,
    keepalive: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// The etcd key that marks the lock as held.
    pub fn key(&self) -> &[u8] {
        self.key.as_deref().unwrap_or_default()
    }

    /// Releases the lock: deletes its key and revokes its lease.
    pub async fn unlock(mut self) -> Result<(), DiscoveryError> {
        if let Some(t) = self.keepalive.take() {
            t.abort();
        }
        let unlocked = match self.key.take() {
            Some(key) => unlock(&self.client, &key).await,
            None => Ok(()),
        };
        let lease = std::mem::take(&mut self.lease);
        let revoked = revoke_lease(&self.client, lease).await;
        unlocked.and(revoked)
    }

    /// Stops keeping the lease alive without releasing anything, as if
    /// this process had died: the lock goes when the lease expires.
    pub fn abandon(mut self) {
        if let Some(t) = self.keepalive.take() {
            t.abort();
        }
        self.key = None;
        self.lease = 0;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(t) = self.keepalive.take() {
            t.abort();
        }
        let lease = std::mem::take(&mut self.lease);
        if lease != 0 {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let client = self.client.clone();
                rt.spawn(async move {
                    if let Err(e) = revoke_lease(&client, lease).await {
                        tracing::warn!("{e}");
                    }
                });
            }
        }
    }
}

async fn unlock(client: &Client, key: &[u8]) -> Result<(), DiscoveryError> {
    client
        .call("/v3/lock/unlock", &json!({ "key": b64_encode(key) }))
        .await
        .map(|_| ())
        .map_err(|e| DiscoveryError::Unavailable(format!("etcd unlock: {e}")))
}

async fn revoke_lease(client: &Client, id: i64) -> Result<(), DiscoveryError> {
    if id == 0 {
        return Ok(());
    }
    client
        .call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
        .await
        .map(|_| ())
        .map_err(|e| DiscoveryError::Unavailable(format!("etcd lease revoke: {e}")))
}

/// Keeps a lock's lease alive every third of [`LOCK_TTL`] until aborted
/// or the lease is gone.
async fn lock_keepalive(client: Client, id: i64) {
    loop {
        tokio::time::sleep(LOCK_TTL / 3).await;
        match keepalive_once(&client, id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("etcd: the lease of the cluster lock expired; the lock is lost");
                return;
            }
            Err(e) => tracing::warn!("etcd lock lease keepalive: {e}"),
        }
    }
}

/// One keepalive of lease `id`: whether it still exists.
async fn keepalive_once(client: &Client, id: i64) -> Result<bool, String> {
    client
        .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
        .await
        .map(|v| {
            // A streamed answer: {"result": {"ID", "TTL"}}; TTL 0 or
            // absent means the lease no longer exists.
            let r = v.get("result").unwrap_or(&v);
            r.get("TTL").and_then(as_i64).unwrap_or(0) > 0
        })
}

/// Grants a lease of `ttl`; its id.
async fn grant(client: &Client, ttl: Duration) -> Result<i64, String> {
    let v = client
        .call(
            "/v3/lease/grant",
            &json!({ "TTL": ttl.as_secs().max(1).to_string() }),
        )
        .await
        .map_err(|e| format!("lease grant: {e}"))?;
    if let Some(err) = v
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        return Err(format!("lease grant: {err}"));
    }
    v.get("ID")
        .and_then(as_i64)
        .filter(|id| *id != 0)
        .ok_or_else(|| format!("lease grant: answer without an ID: {v}"))
}

/// Grants a lease of `ttl` and puts `key = value` on it; the lease id.
async fn grant_and_put(
    client: &Client,
    ttl: Duration,
    key: &str,
    value: &str,
) -> Result<i64, DiscoveryError> {
    let id = grant(client, ttl)
        .await
        .map_err(|e| DiscoveryError::Unavailable(format!("etcd {e}")))?;
    let put = json!({
        "key": b64_encode(key.as_bytes()),
        "value": b64_encode(value.as_bytes()),
        "lease": id.to_string(),
    });
    if let Err(e) = client.call("/v3/kv/put", &put).await {
        // Do not leave the lease behind.
        let _ = revoke_lease(client, id).await;
        return Err(DiscoveryError::Unavailable(format!("etcd put {key}: {e}")));
    }
    Ok(id)
}

/// Refreshes the lease every `ttl / 3`. If etcd says the lease is gone
/// (it expired while etcd was unreachable), registers again with a new
/// one, so a node that has joined (and no longer calls `discover`) stays
/// listed.
async fn keepalive_loop(
    client: Client,
    ttl: Duration,
    key: String,
    value: String,
    lease: Arc<AtomicI64>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let id = lease.load(Ordering::SeqCst);
        let alive = if id == 0 {
            Ok(false)
        } else {
            keepalive_once(&client, id).await
        };
        match alive {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("etcd: lease {id:x} is gone; registering {key} again");
                match grant_and_put(&client, ttl, &key, &value).await {
                    Ok(new) => lease.store(new, Ordering::SeqCst),
                    Err(e) => tracing::warn!("etcd: {e}"),
                }
            }
            Err(e) => tracing::warn!("etcd lease keepalive: {e}"),
        }
    }
}

/// The end of a prefix range: the prefix with its last byte incremented
/// (bytes 0xff dropped first); `"\0"` (everything) if all bytes are 0xff.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's JSON gateway writes int64 as strings; accept both.
fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// One etcd server: where to connect and, with TLS, the name to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    /// `host:port`.
    authority: String,
    /// The TLS server name (the URL's host, or `server_name_indication`).
    name: String,
}

/// `http(s)://host:port[/]` or `host:port` to a [`Server`] (port 2379 if
/// none). `https://` needs `tls`; with `tls`, every server speaks TLS
/// whatever its scheme (as in EMQX), and an explicit `http://` is warned
/// about.
fn parse_server(s: &str, tls: Option<&TlsOptions>) -> Result<Server, DiscoveryError> {
    let bad = |why: &str| DiscoveryError::Config(format!("cluster.etcd.server {s:?}: {why}"));
    let url = http::Url::parse(s, true).map_err(|_| bad("expected http(s)://host:port"))?;
    match tls {
        None if url.tls => {
            return Err(bad(
                "an https:// server needs cluster.etcd.ssl_options.enable = true",
            ))
        }
        Some(_) if !url.tls && s.trim().to_ascii_lowercase().starts_with("http://") => {
            tracing::warn!(
                "cluster.etcd.server {s:?}: spoken to with TLS, since ssl_options.enable = true"
            );
        }
        _ => {}
    }
    Ok(Server {
        authority: url.authority(2379),
        name: match tls {
            Some(t) => t.server_name(url.bare_host()).to_string(),
            None => url.bare_host().to_string(),
        },
    })
}

/// A JSON client for etcd's gateway: one POST per connection, servers
/// tried in order until one answers.
#[derive(Clone)]
struct Client {
    servers: Vec<Server>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Added to a TLS alert from the server when no client certificate
    /// is configured.
    alert_hint: &'static str,
}

impl Client {
    async fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call_with_timeout(path, body, Some(REQUEST_TIMEOUT))
            .await
    }

    async fn call_with_timeout(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, String> {
        let body = body.to_string();
        let mut errors = Vec::new();
        for server in &self.servers {
            let tls = self.tls.as_ref().map(|c| (c, server.name.as_str()));
            let at = &server.authority;
            match post(at, tls, path, &body, timeout).await {
                Ok(v) => return Ok(v),
                Err(Failure::Transport(e)) => {
                    let hint = if e.contains("fatal alert") {
                        self.alert_hint
                    } else {
                        ""
                    };
                    errors.push(format!("{at}{path}: {e}{hint}"))
                }
                // etcd answered: trying another member would not help.
                Err(Failure::Etcd(e)) => return Err(format!("{at}{path}: {e}")),
            }
        }
        Err(errors.join("; "))
    }
}

enum Failure {
    /// Could not reach the server or read its answer.
    Transport(String),
    /// The server answered with an error.
    Etcd(String),
}

async fn post(
    server: &str,
    tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
    path: &str,
    body: &str,
    timeout: Option<Duration>,
) -> Result<Value, Failure> {
    let req = http::Request {
        method: "POST",
        authority: server,
        path,
        headers: &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        body: body.as_bytes(),
    };
    let (status, body) = http::send(&req, tls, timeout)
        .await
        .map_err(Failure::Transport)?;
    // A streamed answer is a sequence of JSON objects: take the first.
    let value = serde_json::Deserializer::from_slice(&body)
        .into_iter::<Value>()
        .next();
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match value {
        Some(Ok(v)) if status == 200 => {
            // A stream that failed after the header carries {"error": ...}.
            if let Some(e) = v
                .get("error")
                .filter(|e| !e.is_null() && v.get("result").is_none())
            {
                return Err(Failure::Etcd(format!("etcd error: {e}")));
            }
            Ok(v)
        }
        Some(Ok(v)) => Err(Failure::Etcd(format!(
            "HTTP {status}: {}",
            v.get("message")
                .or_else(|| v.get("error"))
                .map(|m| m.to_string())
                .unwrap_or_else(|| v.to_string())
        ))),
        _ if status == 200 => Err(Failure::Transport(format!(
            "answer is not JSON: {}",
            snippet()
        ))),
        _ => Err(Failure::Etcd(format!("HTTP {status}: {}", snippet()))),
    }
}

/// Standard base64 with padding (etcd's JSON gateway encoding).
fn b64_encode(data: &[u8]) -> String {
    data_encoding::BASE64.encode(data)
}

/// Standard base64 with padding; `None` if invalid.
fn b64_decode(s: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64.decode(s.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("emqxcl/ekkacl/nodes/", "ZW1xeGNsL2Vra2FjbC9ub2Rlcy8="),
        ] {
            assert_eq!(b64_encode(plain.as_bytes()), enc);
            assert_eq!(b64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(b64_decode(&b64_encode(&all)), Some(all));
        assert_eq!(b64_decode("Z"), None);
        assert_eq!(b64_decode("Zm9v!"), None);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn servers() {
        let plain = |s: &str| parse_server(s, None).ok().map(|s| s.authority);
        assert_eq!(
            plain("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(plain("http://etcd/").as_deref(), Some("etcd:2379"));
        assert_eq!(plain("h:1").as_deref(), Some("h:1"));
        assert_eq!(plain("http://[::1]:2379").as_deref(), Some("[::1]:2379"));
        let e = parse_server("https://h:2379", None)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("needs cluster.etcd.ssl_options.enable = true")));
        assert!(parse_server("ftp://h", None).is_err());

        let mut tls = TlsOptions::default();
        let s = parse_server("https://[::1]:2379", Some(&tls)).expect("https");
        assert_eq!(
            (s.authority.as_str(), s.name.as_str()),
            ("[::1]:2379", "::1")
        );
        // The scheme does not decide: TLS is on for every server.
        let s = parse_server("http://etcd-0", Some(&tls)).expect("http with TLS");
        assert_eq!(
            (s.authority.as_str(), s.name.as_str()),
            ("etcd-0:2379", "etcd-0")
        );
        tls.server_name_indication = Some("etcd.cluster.local".into());
        let s = parse_server("https://10.0.0.1:2379", Some(&tls)).expect("sni");
        assert_eq!(s.name, "etcd.cluster.local");
        assert!(Etcd::new(vec![], "p".into(), Duration::from_secs(2), "a@h".into()).is_err());
        assert!(Etcd::new(
            vec!["h:1".into()],
            "p".into(),
            Duration::from_secs(2),
            "bad".into()
        )
        .is_err());
    }
}
