//! TLS between nodes, built from the configuration: the control plane's
//! (`cluster.proto_dist = inet_tls`, `cluster.ssl_options`) and the
//! forwarding channel's (`rpc.driver = ssl`, `rpc.certfile` ...). Both ends
//! present a certificate and accept only one that chains to the cluster CA.
//! Node names are not host names a certificate could carry, so the
//! certificate is checked against the CA, not against a name; the cookie
//! is still checked after the handshake.

use crate::config::PeerTlsOptions;
use crate::listeners::tls::{crypto_provider, load_identity, server_config};
use emqx_actors::peer_tls::PeerTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Reads the files of one plane's TLS; errors name `key.<file key>`.
pub fn peer_tls(key: &str, o: &PeerTlsOptions) -> Result<PeerTls, String> {
    let server = server_config(key, &o.as_ssl_options())?;
    let k = |f: &str| format!("{key}.{f}");
    let provider = crypto_provider(&o.ciphers);
    let ca = o
        .cacertfile
        .as_ref()
        .ok_or_else(|| format!("{}: required", k("cacertfile")))?;
    let roots =
        emqx_discovery::tls::load_roots(ca).map_err(|e| format!("{}: {e}", k("cacertfile")))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{}: {e}", k("cacertfile")))?;
    let (chain, pk) = load_identity(key, o.certfile.as_ref(), o.keyfile.as_ref())?;
    let versions = crate::listeners::tls::protocol_versions(&o.versions);
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{key}: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCa(verifier)))
        .with_client_auth_cert(chain, pk)
        .map_err(|e| format!("{} / {}: {e}", k("certfile"), k("keyfile")))?;
    Ok(PeerTls {
        acceptor: TlsAcceptor::from(server),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// The CA's verdict on a peer's chain, without the host name check.
#[derive(Debug)]
struct ClusterCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // webpki checks the chain first; a name mismatch means the chain
        // (and the validity dates) passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS of both planes as configured: `None` where it is off.
#[derive(Clone, Default)]
pub struct NodeTls {
    /// `cluster.proto_dist = inet_tls`.
    pub dist: Option<PeerTls>,
    /// `rpc.driver = ssl`.
    pub rpc: Option<PeerTls>,
}

impl NodeTls {
    pub fn from_config(cfg: &crate::config::Config) -> Result<NodeTls, String> {
        use crate::config::{ProtoDist, RpcDriver};
        let dist = match cfg.cluster.proto_dist {
            ProtoDist::InetTls => Some(peer_tls("cluster.ssl_options", &cfg.cluster.ssl_options)?),
            ProtoDist::InetTcp => None,
        };
        let rpc = match cfg.rpc.driver {
            RpcDriver::Ssl => Some(peer_tls("rpc", &cfg.rpc.tls)?),
            RpcDriver::Tcp => None,
        };
        Ok(NodeTls { dist, rpc })
    }
}
