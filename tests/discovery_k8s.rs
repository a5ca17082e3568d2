//! The k8s discovery strategy against a local stand-in for the Kubernetes
//! API server: a small HTTP(S) server on 127.0.0.1 that checks the bearer
//! token and answers the service's EndpointSlices list with a recorded
//! EndpointSliceList, and `GET /api/v1/namespaces/default/endpoints/emqx`
//! with a recorded Endpoints object; or, as an API server without the
//! discovery.k8s.io API, the Endpoints object only. (No real API server
//! can run here.)

mod common;

use common::{all_running, cluster_status, nodes_sharing_a_short_name, pki, wait_until};
use emqx_discovery::k8s::{AddressType, K8sSettings};
use emqx_discovery::{DiscoveryError, K8s, Strategy};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PATH: &str = "/api/v1/namespaces/default/endpoints/emqx";

/// Recorded from a headless service `emqx` in namespace `default` (as
/// `kubectl get endpoints emqx -o json` prints it), with the pod IPs
/// changed to 127.0.0.1-3 and a fourth pod, 127.0.0.4, not ready yet.
const ENDPOINTS: &str = r#"{
  "kind": "Endpoints",
  "apiVersion": "v1",
  "metadata": {
    "name": "emqx",
    "namespace": "default",
    "uid": "0b6f3c1e-7d2a-4c58-a1e9-5f3b8d2c6e47",
    "resourceVersion": "48213",
    "creationTimestamp": "2024-06-11T08:02:55Z",
    "labels": {"app": "emqx", "service.kubernetes.io/headless": ""},
    "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-06-11T08:04:12Z"}
  },
  "subsets": [
    {
      "addresses": [
        {"ip": "127.0.0.1", "hostname": "emqx-0", "nodeName": "kind-worker",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-0", "uid": "6a0d4e2b-3f1c-4b97-8e55-c2a9f0d71b38"}},
        {"ip": "127.0.0.2", "hostname": "emqx-1", "nodeName": "kind-worker2",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-1", "uid": "9e3b7c15-0a4d-4f26-b8c1-7d5e2a0f9c64"}},
        {"ip": "127.0.0.3", "hostname": "emqx-2", "nodeName": "kind-worker3",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-2", "uid": "d41f8a27-6c3e-4e08-9b72-1a6c5e3d8f90"}}
      ],
      "notReadyAddresses": [
        {"ip": "127.0.0.4", "hostname": "emqx-3", "nodeName": "kind-worker",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-3", "uid": "2c7e9b40-5d1a-4a63-8f3e-b0d6c4a2e715"}}
      ],
      "ports": [
        {"name": "mqtt", "port": 1883, "protocol": "TCP"},
        {"name": "ekka", "port": 4370, "protocol": "TCP"}
      ]
    }
  ]
}"#;

const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Demqx";

/// The same pods as [`ENDPOINTS`], as `kubectl get endpointslices -l
/// kubernetes.io/service-name=emqx -o json` prints them: the fourth pod is
/// not ready.
const SLICES: &str = r#"{
  "kind": "EndpointSliceList",
  "apiVersion": "discovery.k8s.io/v1",
  "metadata": {"resourceVersion": "48215"},
  "items": [
    {
      "kind": "EndpointSlice",
      "apiVersion": "discovery.k8s.io/v1",
      "metadata": {
        "name": "emqx-5dq8r",
        "generateName": "emqx-",
        "namespace": "default",
        "uid": "c1a4e7d2-98b3-4f60-a2d5-6e0f3b9c8a17",
        "resourceVersion": "48214",
        "labels": {"kubernetes.io/service-name": "emqx", "service.kubernetes.io/headless": "",
                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "emqx",
                             "uid": "0b6f3c1e-7d2a-4c58-a1e9-5f3b8d2c6e47",
                             "controller": true, "blockOwnerDeletion": true}]
      },
      "addressType": "IPv4",
      "endpoints": [
        {"addresses": ["127.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false},
         "hostname": "emqx-0", "nodeName": "kind-worker",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-0", "uid": "6a0d4e2b-3f1c-4b97-8e55-c2a9f0d71b38"}},
        {"addresses": ["127.0.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false},
         "hostname": "emqx-1", "nodeName": "kind-worker2",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-1", "uid": "9e3b7c15-0a4d-4f26-b8c1-7d5e2a0f9c64"}},
        {"addresses": ["127.0.0.3"], "conditions": {"ready": true, "serving": true, "terminating": false},
         "hostname": "emqx-2", "nodeName": "kind-worker3",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-2", "uid": "d41f8a27-6c3e-4e08-9b72-1a6c5e3d8f90"}},
        {"addresses": ["127.0.0.4"], "conditions": {"ready": false, "serving": false, "terminating": false},
         "hostname": "emqx-3", "nodeName": "kind-worker",
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "emqx-3", "uid": "2c7e9b40-5d1a-4a63-8f3e-b0d6c4a2e715"}}
      ],
      "ports": [
        {"name": "mqtt", "port": 1883, "protocol": "TCP"},
        {"name": "ekka", "port": 4370, "protocol": "TCP"}
      ]
    }
  ]
}"#;

/// What the API server answers a selector that matches no slice.
const NO_SLICES: &str = r#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"48215"},"items":[]}"#;

const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
const NOT_FOUND: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"endpoints \"x\" not found","reason":"NotFound","code":404}"#;

/// The stand-in API server, on its own runtime, stopped on drop.
struct ApiServer {
    port: u16,
    /// Requests answered with the Endpoints object or the slices.
    served: Arc<AtomicUsize>,
    /// Of those, the Endpoints object.
    served_endpoints: Arc<AtomicUsize>,
    /// Requests refused (bad token, unknown path).
    refused: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

impl ApiServer {
    fn start(token: &str, tls: Option<Arc<rustls::ServerConfig>>) -> ApiServer {
        ApiServer::start_with(token, tls, true)
    }

    /// `slices`: whether the server has the discovery.k8s.io API.
    fn start_with(token: &str, tls: Option<Arc<rustls::ServerConfig>>, slices: bool) -> ApiServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std = StdListener::bind("127.0.0.1:0").expect("bind");
        std.set_nonblocking(true).expect("nonblocking");
        let port = std.local_addr().expect("addr").port();
        let served = Arc::new(AtomicUsize::new(0));
        let served_endpoints = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (s, r) = (served.clone(), refused.clone());
        let se = served_endpoints.clone();
        let auth = format!("Bearer {token}");
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std).expect("listener");
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (s, r, auth, acceptor) = (s.clone(), r.clone(), auth.clone(), acceptor.clone());
                let se = se.clone();
                tokio::spawn(async move {
                    let c = Counters {
                        served: &s,
                        served_endpoints: &se,
                        refused: &r,
                        slices,
                    };
                    match acceptor {
                        None => answer(tcp, &auth, c).await,
                        Some(a) => {
                            if let Ok(stream) = a.accept(tcp).await {
                                answer(stream, &auth, c).await
                            }
                        }
                    }
                });
            }
        });
        ApiServer {
            port,
            served,
            served_endpoints,
            refused,
            rt: Some(rt),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Clone, Copy)]
struct Counters<'a> {
    served: &'a AtomicUsize,
    served_endpoints: &'a AtomicUsize,
    refused: &'a AtomicUsize,
    slices: bool,
}

/// Reads one request and answers it like the API server would.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S, auth: &str, c: Counters<'_>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && req.len() < 65536 => req.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let authorized = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == auth)
    });
    let slices_api = "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices?";
    let (status, body) = if !authorized {
        ("401 Unauthorized", UNAUTHORIZED)
    } else if request_line == format!("GET {PATH} HTTP/1.1") {
        c.served_endpoints.fetch_add(1, Ordering::SeqCst);
        ("200 OK", ENDPOINTS)
    } else if c.slices && request_line == format!("GET {SLICES_PATH} HTTP/1.1") {
        ("200 OK", SLICES)
    } else if c.slices && request_line.starts_with(slices_api) {
        ("200 OK", NO_SLICES)
    } else {
        ("404 Not Found", NOT_FOUND)
    };
    if status.starts_with("200") {
        c.served.fetch_add(1, Ordering::SeqCst);
    } else {
        c.refused.fetch_add(1, Ordering::SeqCst);
    }
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with
/// the openssl command-line tool.
struct Pki {
    ca: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn make_pki(dir: &Path, tag: &str) -> Pki {
    let ca = pki::make_ca(dir, tag);
    let issued = pki::issue(dir, &ca, "server", "127.0.0.1", pki::SERVER_EXT);
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&issued.cert)
        .expect("server.crt")
        .collect::<Result<Vec<_>, _>>()
        .expect("server.crt");
    let key = PrivateKeyDer::from_pem_file(&issued.key).expect("server.key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    Pki {
        ca: ca.cert,
        server: Arc::new(server),
    }
}

fn settings(port: u16, tls: bool, token_file: &Path, ca_file: &Path) -> K8sSettings {
    K8sSettings {
        apiserver: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
        service_name: "emqx".into(),
        namespace: "default".into(),
        address_type: AddressType::Ip,
        suffix: "pod.local".into(),
        token_file: token_file.into(),
        ca_file: ca_file.into(),
    }
}

fn token_file(dir: &Path) -> (String, PathBuf) {
    let token = format!("test-token-{}", common::rand_u32());
    let path = dir.join("token");
    // As mounted in a pod: with a trailing newline.
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    (token, path)
}

fn unavailable(r: Result<Vec<String>, DiscoveryError>) -> String {
    match r {
        Err(DiscoveryError::Unavailable(e)) => e,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn the_strategy_reads_ready_addresses_with_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, tf) = token_file(dir.path());
    let api = ApiServer::start(&token, None);
    let absent = dir.path().join("no-ca.crt");
    let mut k = K8s::new(settings(api.port, false, &tf, &absent), "emqx@127.0.0.1")
        .expect("valid settings");
    assert_eq!(
        k.discover().await,
        Ok(vec![
            "emqx@127.0.0.1".to_string(),
            "emqx@127.0.0.2".to_string(),
            "emqx@127.0.0.3".to_string()
        ])
    );
    assert_eq!(api.served.load(Ordering::SeqCst), 1);
    assert_eq!(
        api.served_endpoints.load(Ordering::SeqCst),
        0,
        "slices only"
    );

    // A wrong token: the API server's 401 is an error naming the status.
    std::fs::write(&tf, "another-token").expect("token file");
    let e = unavailable(k.discover().await);
    assert!(e.contains("HTTP 401") && e.contains("Unauthorized"), "{e}");

    // No token file at all: sent without one, refused, and the error says why.
    let mut k = K8s::new(
        settings(api.port, false, &dir.path().join("missing"), &absent),
        "emqx@127.0.0.1",
    )
    .expect("valid settings");
    let e = unavailable(k.discover().await);
    assert!(e.contains("HTTP 401") && e.contains("no token"), "{e}");

    // Another service: no slice, and the Endpoints object's 404 with the
    // API server's message.
    let mut s = settings(api.port, false, &tf, &absent);
    std::fs::write(&tf, &token).expect("token file");
    s.service_name = "x".into();
    let mut k = K8s::new(s, "emqx@127.0.0.1").expect("valid settings");
    let e = unavailable(k.discover().await);
    assert!(e.contains("HTTP 404") && e.contains("not found"), "{e}");
    assert_eq!(api.refused.load(Ordering::SeqCst), 3);
    assert_eq!(api.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_endpoint_slices_the_endpoints_object_is_read() {
    // An API server without discovery.k8s.io (404 for the slices): the
    // strategy falls back to v1 Endpoints, and keeps to it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, tf) = token_file(dir.path());
    let api = ApiServer::start_with(&token, None, false);
    let absent = dir.path().join("no-ca.crt");
    let mut k = K8s::new(settings(api.port, false, &tf, &absent), "emqx@127.0.0.1")
        .expect("valid settings");
    let want: Vec<String> = ["emqx@127.0.0.1", "emqx@127.0.0.2", "emqx@127.0.0.3"]
        .map(String::from)
        .to_vec();
    assert_eq!(k.discover().await, Ok(want.clone()));
    assert_eq!(api.refused.load(Ordering::SeqCst), 1, "the slices, once");
    assert_eq!(k.discover().await, Ok(want));
    assert_eq!(api.refused.load(Ordering::SeqCst), 1, "not asked again");
    assert_eq!(api.served_endpoints.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn https_is_verified_against_the_ca_file_when_there_is_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, tf) = token_file(dir.path());
    let pki = make_pki(dir.path(), "good");
    let api = ApiServer::start(&token, Some(pki.server.clone()));
    let want = Ok(vec![
        "emqx@127.0.0.1".to_string(),
        "emqx@127.0.0.2".to_string(),
        "emqx@127.0.0.3".to_string(),
    ]);

    let mut k =
        K8s::new(settings(api.port, true, &tf, &pki.ca), "emqx@127.0.0.1").expect("valid settings");
    assert_eq!(k.discover().await, want, "verified against the right CA");

    // Another CA: the handshake fails, nothing is served.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = make_pki(other_dir.path(), "other");
    let mut k = K8s::new(settings(api.port, true, &tf, &other.ca), "emqx@127.0.0.1")
        .expect("valid settings");
    let e = unavailable(k.discover().await);
    assert!(e.contains("TLS"), "{e}");
    assert_eq!(api.served.load(Ordering::SeqCst), 1);

    // No CA file: not verified (EMQX's verify_none), so it goes through.
    let absent = dir.path().join("no-ca.crt");
    let mut k =
        K8s::new(settings(api.port, true, &tf, &absent), "emqx@127.0.0.1").expect("valid settings");
    assert_eq!(k.discover().await, want, "unverified without a CA file");
    assert_eq!(api.served.load(Ordering::SeqCst), 2);
}

/// Three real nodes with `discovery_strategy = k8s` started together form
/// one cluster from the Endpoints object, and none dials the address that
/// is not ready.
fn three_nodes_cluster(tls: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, tf) = token_file(dir.path());
    let pki = tls.then(|| make_pki(dir.path(), "good"));
    let api = ApiServer::start(&token, pki.as_ref().map(|p| p.server.clone()));
    let ca = pki
        .as_ref()
        .map(|p| p.ca.clone())
        .unwrap_or_else(|| dir.path().join("no-ca.crt"));
    let extra = format!(
        "cluster.discovery_strategy = k8s\n\
         cluster.k8s.apiserver = \"{}://127.0.0.1:{}\"\n\
         cluster.k8s.service_name = emqx\n\
         cluster.k8s.namespace = default\n\
         cluster.k8s.address_type = ip\n\
         cluster.k8s.token_file = \"{}\"\n\
         cluster.k8s.ca_file = \"{}\"\n",
        if tls { "https" } else { "http" },
        api.port,
        tf.display(),
        ca.display()
    );
    let mut nodes = nodes_sharing_a_short_name(&extra);
    // Stands where the not-ready pod's node would listen.
    let not_ready = StdListener::bind(("127.0.0.4", nodes[0].dist_port)).expect("bind 127.0.0.4");
    not_ready.set_nonblocking(true).expect("nonblocking");
    for n in nodes.iter_mut() {
        n.spawn(&[]);
    }
    assert!(
        wait_until(Duration::from_secs(60), || all_running(&nodes)),
        "no single cluster: {}\n{}",
        nodes
            .iter()
            .map(cluster_status)
            .collect::<Vec<_>>()
            .join(""),
        nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    assert!(api.served.load(Ordering::SeqCst) >= 3);
    assert_eq!(api.refused.load(Ordering::SeqCst), 0);
    assert!(
        matches!(not_ready.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a node dialled the address that is not ready"
    );
}

#[test]
fn three_nodes_form_one_cluster_through_an_http_api_server() {
    three_nodes_cluster(false);
}

#[test]
fn three_nodes_form_one_cluster_through_an_https_api_server() {
    three_nodes_cluster(true);
}
