//! `k8s`: node names from a Kubernetes service's endpoints
//! (`cluster.k8s.*`), EMQX's `ekka_cluster_k8s`.
//!
//! Each round lists the service's EndpointSlices,
//! `GET {apiserver}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?labelSelector=kubernetes.io/service-name={service_name}`
//! (the v1 Endpoints API is deprecated since Kubernetes 1.33), with the
//! pod's service-account token as a bearer token. An API server without
//! that API (404), or a service account not allowed to list slices (403),
//! makes the strategy read `GET {apiserver}/api/v1/namespaces/{namespace}/endpoints/{service_name}`
//! instead, from then on; a round that finds no slice at all asks the
//! Endpoints object too (it says when the service does not exist). Every
//! *ready* address (a slice endpoint whose `conditions.ready` is not
//! false; an Endpoints `subsets[*].addresses[*]`, not
//! `notReadyAddresses`) becomes a node name, the short name being this
//! node's own:
//!
//! | `address_type` | node name |
//! | --- | --- |
//! | `ip` | `app@<ip>` |
//! | `hostname` | `app@<hostname>.<service>.<namespace>.<suffix>` |
//! | `dns` | `app@<ip with . as ->.<namespace>.<suffix>` |
//!
//! With an empty `suffix`, `hostname` and `dns` fall back to `app@<ip>`.
//!
//! An `https://` API server is verified against the CA file when it exists;
//! without one the certificate is not checked (as EMQX does), with a
//! warning. The token is read again every round, since Kubernetes rotates
//! projected tokens.

use crate::http::{self, Url};
use crate::strategy::{check_node_name, DiscoveryError, Strategy};
use crate::tls;
use rustls::ClientConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a pod finds its service-account token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where a pod finds the API server's CA.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Time allowed for one request to the API server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How an address becomes a node's host (`cluster.k8s.address_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    Ip,
    Dns,
    Hostname,
}

/// The `cluster.k8s.*` settings.
#[derive(Debug, Clone)]
pub struct K8sSettings {
    /// `https://kubernetes.default.svc:443` in a pod.
    pub apiserver: String,
    pub service_name: String,
    pub namespace: String,
    pub address_type: AddressType,
    pub suffix: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

/// The k8s discovery strategy.
pub struct K8s {
    url: Url,
    /// The v1 Endpoints object.
    path: String,
    /// The service's EndpointSlices.
    slices_path: String,
    /// The API server has no EndpointSlices for us (404/403): Endpoints only.
    endpoints_only: bool,
    authority: String,
    app: String,
    settings: K8sSettings,
    warned_unverified: bool,
}

impl K8s {
    /// `me` is this node's full name; its short name is used for every
    /// node found. Nothing is sent until the first discovery round.
    pub fn new(settings: K8sSettings, me: &str) -> Result<K8s, DiscoveryError> {
        check_node_name(me)?;
        let bad = |what: &str| DiscoveryError::Unavailable(format!("cluster.k8s.{what}"));
        let url =
            Url::parse(&settings.apiserver, false).map_err(|e| bad(&format!("apiserver: {e}")))?;
        // Both go into the request path: Kubernetes names are DNS labels.
        for (key, v) in [
            ("service_name", &settings.service_name),
            ("namespace", &settings.namespace),
        ] {
            let ok = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(bad(&format!("{key}: {v:?} is not a Kubernetes name")));
            }
        }
        let app = me.split('@').next().unwrap_or("emqx").to_string();
        Ok(K8s {
            path: format!(
                "{}/api/v1/namespaces/{}/endpoints/{}",
                url.base, settings.namespace, settings.service_name
            ),
            slices_path: format!(
                "{}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}",
                url.base, settings.namespace, settings.service_name
            ),
            endpoints_only: false,
            authority: url.authority(if url.tls { 443 } else { 80 }),
            url,
            app,
            settings,
            warned_unverified: false,
        })
    }

    /// The URL of the v1 Endpoints object.
    pub fn endpoint_url(&self) -> String {
        self.url_of(&self.path)
    }

    /// The URL of the service's EndpointSlices.
    pub fn slices_url(&self) -> String {
        self.url_of(&self.slices_path)
    }

    fn url_of(&self, path: &str) -> String {
        let scheme = if self.url.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority)
    }

    /// GET `path`: the body of a 200, or the status and the API server's
    /// message (`Err(Ok(..))`), or a failure to ask (`Err(Err(..))`).
    async fn fetch(
        &mut self,
        path: &str,
    ) -> Result<Vec<u8>, Result<(u16, String), DiscoveryError>> {
        let url = self.url_of(path);
        let fail = |e: String| Err(DiscoveryError::Unavailable(format!("k8s {url}: {e}")));
        let token = match tokio::fs::read_to_string(&self.settings.token_file).await {
            Ok(t) => Some(t.trim().to_string()).filter(|t| !t.is_empty()),
            Err(e) => {
                // An API server reached through `kubectl proxy` needs none;
                // a real one answers 401, which names the file below.
                tracing::debug!(
                    "k8s: no token from {}: {e}",
                    self.settings.token_file.display()
                );
                None
            }
        };
        let tls = if self.url.tls {
            let (cfg, verified) = tls_config(&self.settings.ca_file).map_err(fail)?;
            if !verified && !self.warned_unverified {
                self.warned_unverified = true;
                tracing::warn!(
                    "k8s: {} not found: the API server's certificate is not verified",
                    self.settings.ca_file.display()
                );
            }
            Some(cfg)
        } else {
            None
        };
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Accept", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let req = http::Request {
            method: "GET",
            authority: &self.authority,
            path,
            headers: &headers,
            body: b"",
        };
        let server_name = self.url.bare_host().to_string();
        let (status, body) = http::send(
            &req,
            tls.as_ref().map(|c| (c, server_name.as_str())),
            Some(REQUEST_TIMEOUT),
        )
        .await
        .map_err(fail)?;
        if status != 200 {
            // Errors come as a Status object: {"kind":"Status","message":...}.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
                });
            let hint = match (status, &token) {
                (401, None) => format!(
                    " (no token could be read from {})",
                    self.settings.token_file.display()
                ),
                (403, _) if path == self.path => {
                    " (the service account needs `get` on `endpoints`, or `list` on \
                     `endpointslices` in discovery.k8s.io)"
                        .to_string()
                }
                _ => String::new(),
            };
            return Err(Ok((status, format!("HTTP {status}: {message}{hint}"))));
        }
        Ok(body)
    }

    /// The node names of the v1 Endpoints object.
    async fn read_endpoints(&mut self) -> Result<Vec<String>, DiscoveryError> {
        let url = self.endpoint_url();
        let path = self.path.clone();
        let body = self.fetch(&path).await.map_err(|e| match e {
            Ok((_, m)) => DiscoveryError::Unavailable(format!("k8s {url}: {m}")),
            Err(e) => e,
        })?;
        node_names(&body, &self.app, &self.settings)
            .map_err(|e| DiscoveryError::Unavailable(format!("k8s {url}: {e}")))
    }
}

impl Strategy for K8s {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        if self.endpoints_only {
            return self.read_endpoints().await;
        }
        let url = self.slices_url();
        let path = self.slices_path.clone();
        match self.fetch(&path).await {
            Ok(body) => {
                let (names, slices) = slice_names(&body, &self.app, &self.settings)
                    .map_err(|e| DiscoveryError::Unavailable(format!("k8s {url}: {e}")))?;
                if slices == 0 {
                    // No slice: a service that does not exist (the
                    // Endpoints answer says so) or has no endpoints yet.
                    return self.read_endpoints().await;
                }
                Ok(names)
            }
            Err(Ok((403 | 404, m))) => {
                tracing::warn!(
                    "k8s: cannot list EndpointSlices ({m}); reading the v1 Endpoints object \
                     {} from now on",
                    self.endpoint_url()
                );
                self.endpoints_only = true;
                self.read_endpoints().await
            }
            Err(Ok((_, m))) => Err(DiscoveryError::Unavailable(format!("k8s {url}: {m}"))),
            Err(Err(e)) => Err(e),
        }
    }
}

/// The part of an Endpoints object discovery reads.
#[derive(Deserialize)]
struct Endpoints {
    kind: Option<String>,
    subsets: Option<Vec<Subset>>,
}

#[derive(Deserialize)]
struct Subset {
    /// Ready addresses only; `notReadyAddresses` is deliberately not read.
    addresses: Option<Vec<Address>>,
}

#[derive(Deserialize)]
struct Address {
    ip: String,
    hostname: Option<String>,
}

/// The part of an EndpointSliceList discovery reads.
#[derive(Deserialize)]
struct SliceList {
    kind: Option<String>,
    items: Option<Vec<Slice>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slice {
    address_type: Option<String>,
    endpoints: Option<Vec<SliceEndpoint>>,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    addresses: Option<Vec<String>>,
    conditions: Option<Conditions>,
    hostname: Option<String>,
}

#[derive(Deserialize)]
struct Conditions {
    /// Absent: ready (the API's rule).
    ready: Option<bool>,
}

/// The node names an EndpointSliceList (JSON) lists, sorted, each once,
/// and how many slices it had. Slices of FQDN addresses are skipped.
fn slice_names(json: &[u8], app: &str, s: &K8sSettings) -> Result<(Vec<String>, usize), String> {
    let list: SliceList =
        serde_json::from_slice(json).map_err(|e| format!("not an EndpointSliceList: {e}"))?;
    if let Some(kind) = list.kind.as_deref().filter(|k| *k != "EndpointSliceList") {
        return Err(format!("expected kind EndpointSliceList, got {kind}"));
    }
    let items = list.items.unwrap_or_default();
    let mut addrs = Vec::new();
    for slice in &items {
        if !matches!(
            slice.address_type.as_deref(),
            None | Some("IPv4") | Some("IPv6")
        ) {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for ip in ep.addresses.iter().flatten() {
                addrs.push(Address {
                    ip: ip.clone(),
                    hostname: ep.hostname.clone(),
                });
            }
        }
    }
    Ok((names_of(addrs.iter(), app, s), items.len()))
}

/// The node names an Endpoints object (JSON) lists, sorted, each once.
fn node_names(json: &[u8], app: &str, s: &K8sSettings) -> Result<Vec<String>, String> {
    let ep: Endpoints =
        serde_json::from_slice(json).map_err(|e| format!("not an Endpoints object: {e}"))?;
    if let Some(kind) = ep.kind.as_deref().filter(|k| *k != "Endpoints") {
        return Err(format!("expected kind Endpoints, got {kind}"));
    }
    let addrs = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten());
    Ok(names_of(addrs, app, s))
}

/// Ready addresses as node names, sorted, each once.
fn names_of<'a>(
    addrs: impl Iterator<Item = &'a Address>,
    app: &str,
    s: &K8sSettings,
) -> Vec<String> {
    let mut names = Vec::new();
    for addr in addrs {
        let host = match (s.address_type, s.suffix.is_empty()) {
            (AddressType::Ip, _) | (_, true) => addr.ip.clone(),
            (AddressType::Dns, false) => {
                format!("{}.{}.{}", addr.ip.replace('.', "-"), s.namespace, s.suffix)
            }
            (AddressType::Hostname, false) => match addr.hostname.as_deref() {
                Some(h) if !h.is_empty() => {
                    format!("{h}.{}.{}.{}", s.service_name, s.namespace, s.suffix)
                }
                _ => {
                    tracing::warn!(
                        "k8s: address {} has no hostname (is the service headless with \
                         hostname/subdomain set on its pods?); skipped",
                        addr.ip
                    );
                    continue;
                }
            },
        };
        let name = format!("{app}@{host}");
        match check_node_name(&name) {
            Ok(()) => names.push(name),
            Err(_) => tracing::warn!("k8s: ignoring an address that makes no node name: {name:?}"),
        }
    }
    names.sort();
    names.dedup();
    names
}

/// A client config for the API server: verified against `ca_file` when it
/// exists (true), unverified when it does not (false).
fn tls_config(ca_file: &Path) -> Result<(Arc<ClientConfig>, bool), String> {
    if let Err(e) = std::fs::metadata(ca_file) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok((Arc::new(tls::unverified_config()?), false));
        }
    }
    let roots = tls::load_roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(cfg), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Endpoints object as `kubectl get endpoints emqx -o json` prints
    /// it for a headless service with three ready pods and one starting.
    const ENDPOINTS: &str = r#"{
  "kind": "Endpoints",
  "apiVersion": "v1",
  "metadata": {
    "name": "emqx",
    "namespace": "mqtt",
    "uid": "4d1c2f0e-8a7b-4e61-9c55-2b7f0a3d9e10",
    "resourceVersion": "918273",
    "creationTimestamp": "2024-05-02T09:14:07Z",
    "labels": {
      "app.kubernetes.io/name": "emqx",
      "service.kubernetes.io/headless": ""
    },
    "annotations": {
      "endpoints.kubernetes.io/last-change-trigger-time": "2024-05-02T09:16:41Z"
    }
  },
  "subsets": [
    {
      "addresses": [
        {
          "ip": "10.244.1.17",
          "hostname": "emqx-0",
          "nodeName": "worker-a",
          "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-0", "uid": "b0e3f5d2-1c4a-4f7e-8d21-6a9c0e5b7f31"}
        },
        {
          "ip": "10.244.2.9",
          "hostname": "emqx-1",
          "nodeName": "worker-b",
          "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-1", "uid": "c7a1d9e4-5b2f-4a83-9e60-1f8d3b2c4a57"}
        },
        {
          "ip": "10.244.3.4",
          "hostname": "emqx-2",
          "nodeName": "worker-c",
          "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-2", "uid": "e2b8c6f1-9d3a-4c15-b7e4-8a0f2d6c1b93"}
        }
      ],
      "notReadyAddresses": [
        {
          "ip": "10.244.1.18",
          "hostname": "emqx-3",
          "nodeName": "worker-a",
          "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-3", "uid": "f4c2a8e7-3b1d-4e96-a5c0-7d9e1f3b2a64"}
        }
      ],
      "ports": [
        {"name": "mqtt", "port": 1883, "protocol": "TCP"},
        {"name": "ekka", "port": 4370, "protocol": "TCP"}
      ]
    }
  ]
}"#;

    /// An EndpointSliceList as `kubectl get endpointslices -l
    /// kubernetes.io/service-name=emqx -o json` prints it for the same
    /// pods: two slices (Kubernetes splits large services), one pod
    /// terminating (ready false), one with no conditions (ready), and an
    /// FQDN slice that is skipped.
    const SLICES: &str = r#"{
      "kind": "EndpointSliceList",
      "apiVersion": "discovery.k8s.io/v1",
      "metadata": {"resourceVersion": "91342"},
      "items": [
        {
          "kind": "EndpointSlice",
          "apiVersion": "discovery.k8s.io/v1",
          "metadata": {
            "name": "emqx-7xk2p",
            "namespace": "mqtt",
            "labels": {"kubernetes.io/service-name": "emqx",
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "emqx",
                                 "uid": "3f0c2a9e-51d4-4e7b-9a36-0e8d2b7c4f15"}]
          },
          "addressType": "IPv4",
          "endpoints": [
            {"addresses": ["10.244.1.17"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "hostname": "emqx-0", "nodeName": "node-a",
             "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-0"}},
            {"addresses": ["10.244.2.9"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "hostname": "emqx-1", "nodeName": "node-b",
             "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-1"}},
            {"addresses": ["10.244.1.18"], "conditions": {"ready": false, "serving": false, "terminating": true},
             "hostname": "emqx-3", "nodeName": "node-a",
             "targetRef": {"kind": "Pod", "namespace": "mqtt", "name": "emqx-3"}}
          ],
          "ports": [{"name": "mqtt", "port": 1883, "protocol": "TCP"}]
        },
        {
          "kind": "EndpointSlice",
          "apiVersion": "discovery.k8s.io/v1",
          "metadata": {"name": "emqx-q9c4d", "namespace": "mqtt",
                       "labels": {"kubernetes.io/service-name": "emqx"}},
          "addressType": "IPv4",
          "endpoints": [
            {"addresses": ["10.244.3.4"], "hostname": "emqx-2", "nodeName": "node-c"}
          ]
        },
        {
          "kind": "EndpointSlice",
          "metadata": {"name": "emqx-fqdn", "namespace": "mqtt"},
          "addressType": "FQDN",
          "endpoints": [{"addresses": ["example.com"], "conditions": {"ready": true}}]
        }
      ]
    }"#;

    #[test]
    fn endpoint_slices_give_the_same_ready_nodes() {
        for (t, suffix) in [
            (AddressType::Ip, "pod.local"),
            (AddressType::Hostname, "svc.cluster.local"),
            (AddressType::Dns, "pod.cluster.local"),
        ] {
            let (got, n) =
                slice_names(SLICES.as_bytes(), "emqx", &settings(t, suffix)).expect("valid JSON");
            assert_eq!(n, 3, "three slices");
            assert_eq!(got, names(t, suffix), "{t:?}");
        }
        let (none, n) = slice_names(
            br#"{"kind":"EndpointSliceList","items":[]}"#,
            "emqx",
            &settings(AddressType::Ip, ""),
        )
        .expect("valid");
        assert_eq!((none.len(), n), (0, 0));
        let e = slice_names(
            br#"{"kind":"Status"}"#,
            "emqx",
            &settings(AddressType::Ip, ""),
        )
        .unwrap_err();
        assert!(e.contains("EndpointSliceList"), "{e}");
    }

    fn settings(address_type: AddressType, suffix: &str) -> K8sSettings {
        K8sSettings {
            apiserver: "https://kubernetes.default.svc:443".into(),
            service_name: "emqx".into(),
            namespace: "mqtt".into(),
            address_type,
            suffix: suffix.into(),
            token_file: DEFAULT_TOKEN_FILE.into(),
            ca_file: DEFAULT_CA_FILE.into(),
        }
    }

    fn names(t: AddressType, suffix: &str) -> Vec<String> {
        node_names(ENDPOINTS.as_bytes(), "emqx", &settings(t, suffix)).expect("valid JSON")
    }

    #[test]
    fn ready_addresses_by_ip() {
        assert_eq!(
            names(AddressType::Ip, "pod.local"),
            ["emqx@10.244.1.17", "emqx@10.244.2.9", "emqx@10.244.3.4"]
        );
    }

    #[test]
    fn ready_addresses_by_hostname() {
        assert_eq!(
            names(AddressType::Hostname, "svc.cluster.local"),
            [
                "emqx@emqx-0.emqx.mqtt.svc.cluster.local",
                "emqx@emqx-1.emqx.mqtt.svc.cluster.local",
                "emqx@emqx-2.emqx.mqtt.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn ready_addresses_by_dns() {
        assert_eq!(
            names(AddressType::Dns, "pod.cluster.local"),
            [
                "emqx@10-244-1-17.mqtt.pod.cluster.local",
                "emqx@10-244-2-9.mqtt.pod.cluster.local",
                "emqx@10-244-3-4.mqtt.pod.cluster.local"
            ]
        );
    }

    #[test]
    fn an_empty_suffix_falls_back_to_the_ip() {
        let want = ["emqx@10.244.1.17", "emqx@10.244.2.9", "emqx@10.244.3.4"];
        assert_eq!(names(AddressType::Dns, ""), want);
        assert_eq!(names(AddressType::Hostname, ""), want);
    }

    #[test]
    fn odd_objects() {
        let s = settings(AddressType::Ip, "pod.local");
        // A service without ready pods has no subsets at all.
        let none = r#"{"kind":"Endpoints","apiVersion":"v1","metadata":{"name":"emqx"}}"#;
        assert_eq!(node_names(none.as_bytes(), "a", &s), Ok(vec![]));
        let only_starting =
            r#"{"kind":"Endpoints","subsets":[{"notReadyAddresses":[{"ip":"10.0.0.1"}]}]}"#;
        assert_eq!(node_names(only_starting.as_bytes(), "a", &s), Ok(vec![]));
        // Two subsets (different port sets) naming the same pod: once.
        let twice = r#"{"kind":"Endpoints","subsets":[{"addresses":[{"ip":"10.0.0.2"}]},{"addresses":[{"ip":"10.0.0.2"},{"ip":"10.0.0.1"}]}]}"#;
        assert_eq!(
            node_names(twice.as_bytes(), "a", &s),
            Ok(vec!["a@10.0.0.1".to_string(), "a@10.0.0.2".to_string()])
        );
        // Hostname type, a pod without a hostname: skipped.
        let h = settings(AddressType::Hostname, "svc.cluster.local");
        let nohost = r#"{"kind":"Endpoints","subsets":[{"addresses":[{"ip":"10.0.0.1"},{"ip":"10.0.0.2","hostname":"p2"}]}]}"#;
        assert_eq!(
            node_names(nohost.as_bytes(), "a", &h),
            Ok(vec!["a@p2.emqx.mqtt.svc.cluster.local".to_string()])
        );
        let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
        assert!(node_names(status.as_bytes(), "a", &s).is_err());
        assert!(node_names(b"<html>", "a", &s).is_err());
        assert!(node_names(
            br#"{"subsets":[{"addresses":[{"hostname":"x"}]}]}"#,
            "a",
            &s
        )
        .is_err());
    }

    #[test]
    fn settings_are_checked() {
        let mut s = settings(AddressType::Ip, "");
        let k = K8s::new(s.clone(), "emqx@10.0.0.1").expect("valid");
        assert_eq!(
            k.endpoint_url(),
            "https://kubernetes.default.svc:443/api/v1/namespaces/mqtt/endpoints/emqx"
        );
        assert_eq!(k.name(), "k8s");
        s.apiserver = "http://127.0.0.1/base/".into();
        let k = K8s::new(s.clone(), "emqx@10.0.0.1").expect("valid");
        assert_eq!(
            k.endpoint_url(),
            "http://127.0.0.1:80/base/api/v1/namespaces/mqtt/endpoints/emqx"
        );
        assert!(K8s::new(s.clone(), "nohost").is_err());
        let mut bad = s.clone();
        bad.namespace = "a/b".into();
        assert!(K8s::new(bad, "e@h").is_err());
        let mut bad = s.clone();
        bad.service_name = String::new();
        assert!(K8s::new(bad, "e@h").is_err());
        let mut bad = s;
        bad.apiserver = "kubernetes:443".into();
        assert!(K8s::new(bad, "e@h").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_unavailable() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut s = settings(AddressType::Ip, "");
        s.apiserver = format!("http://127.0.0.1:{port}");
        let mut k = K8s::new(s, "emqx@127.0.0.1").expect("valid");
        match k.discover().await {
            Err(DiscoveryError::Unavailable(e)) => {
                assert!(
                    e.contains("connect") && e.contains(&port.to_string()),
                    "{e}"
                )
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn tls_without_a_ca_file_is_unverified_and_a_bad_ca_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("emqx-k8s-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        let (_, verified) = tls_config(&dir.join("absent.crt")).expect("config");
        assert!(!verified);
        let junk = dir.join("junk.crt");
        std::fs::write(&junk, "not a certificate").expect("write");
        assert!(tls_config(&junk).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
