//! TLS between the nodes of a cluster (EMQX's `cluster.proto_dist =
//! inet_tls` for the control plane and `rpc.driver = ssl` for the
//! forwarding channel): both ends present a certificate of the cluster's
//! CA. The configuration is built by the program from its files; the
//! control plane and the forwarding channel use it from here.

use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The two sides of one plane's TLS.
#[derive(Clone)]
pub struct PeerTls {
    /// For connections from peers (a client certificate is required).
    pub acceptor: TlsAcceptor,
    /// For connections to peers (with this node's certificate).
    pub connector: TlsConnector,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    /// The client handshake over a connected socket. Peers are named by
    /// address; the connector checks the certificate against the cluster
    /// CA, not against a host name.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector
            .connect(ServerName::IpAddress(peer.ip().into()), tcp)
            .await
    }
}

/// The hint logged when a TLS handshake with a peer fails: the usual cause
/// is a peer with TLS off (or another CA).
pub const TLS_HINT: &str = "is TLS on at both ends, with certificates of the same cluster CA?";
