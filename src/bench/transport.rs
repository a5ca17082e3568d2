//! The byte stream a bench client speaks MQTT over: plain TCP, TLS, MQTT
//! over WebSocket (binary frames on `--ws-path`, subprotocol `mqtt`),
//! WebSocket over TLS, or QUIC (quinn; ALPN `mqtt`, TLS 1.3, one
//! bidirectional stream a connection, as EMQX's default mode). The QUIC
//! clients of a bench process share one UDP socket (endpoint) per source
//! address, as a QUIC client may.
//!
//! TLS is rustls with the aws-lc-rs provider, as in the broker. Without
//! `--cafile` the server's certificate is not checked at all (the handshake
//! signatures still are); with it, the certificate must chain to that CA
//! and name `--host`. Session resumption is off: every bench client does a
//! full handshake, as a fleet of distinct devices would on first connect.

use super::opts::{Opts, Transport};
use crate::listeners::quic::QuicIo;
use crate::listeners::tls::QUIC_ALPN;
use crate::listeners::ws::WsIo;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;

/// WebSocket read buffer of a client (tungstenite allocates it up front
/// and zero-fills it on the first read, so it is resident for the life of
/// the connection; the default of 128 KiB would be 1.3 GB for 10,000
/// connections).
const WS_READ_BUFFER: usize = 4096;

/// How every client of a run reaches the broker.
pub struct Connector {
    transport: Transport,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `ws://host:port/path` or `wss://...` for the upgrade request.
    ws_uri: String,
    /// QUIC: the client configuration and the server name.
    quic: Option<(quinn::ClientConfig, String)>,
    /// QUIC: one endpoint (UDP socket) per source address, made on first
    /// use (an endpoint needs the runtime).
    endpoints: std::sync::Mutex<HashMap<Option<IpAddr>, quinn::Endpoint>>,
}

impl Connector {
    /// Reads the certificate files and builds the TLS configuration. An
    /// error names the option whose file is wrong.
    pub fn new(o: &Opts) -> Result<Connector, String> {
        let quic = if o.transport == Transport::Quic {
            let mut tls = (*client_config(o)?).clone();
            tls.alpn_protocols = vec![QUIC_ALPN.to_vec()];
            let crypto = QuicClientConfig::try_from(tls).map_err(|e| format!("QUIC: {e}"))?;
            let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
            let mut transport = quinn::TransportConfig::default();
            // MQTT's keepalive watches the connection (bench conn -k can be
            // longer than QUIC's default 30 s idle timeout).
            transport.max_idle_timeout(None);
            cfg.transport_config(Arc::new(transport));
            Some((cfg, o.host.clone()))
        } else {
            None
        };
        let tls = if o.transport.tls() && quic.is_none() {
            let cfg = client_config(o)?;
            let name = ServerName::try_from(o.host.clone())
                .map_err(|e| format!("-h {:?} is not a usable TLS server name: {e}", o.host))?;
            Some((TlsConnector::from(cfg), name))
        } else {
            None
        };
        let host = match o.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => o.host.clone(),
        };
        let scheme = if o.transport.tls() { "wss" } else { "ws" };
        Ok(Connector {
            transport: o.transport,
            tls,
            ws_uri: format!("{scheme}://{host}:{}{}", o.port, o.ws_path),
            quic,
            endpoints: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Opens a connection (from `local` if given) and does the TLS
    /// handshake and the WebSocket upgrade the transport asks for.
    pub async fn connect(&self, addr: SocketAddr, local: Option<IpAddr>) -> io::Result<Stream> {
        if let Some((cfg, name)) = &self.quic {
            return self.quic(cfg, name, addr, local).await;
        }
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = sock.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match self.transport {
            Transport::Tcp => Stream::Tcp(tcp),
            Transport::Tls => Stream::Tls(Box::new(self.handshake(tcp).await?)),
            Transport::Ws => Stream::Ws(Box::new(self.upgrade(tcp).await?)),
            Transport::Wss => {
                let tls = self.handshake(tcp).await?;
                Stream::Wss(Box::new(self.upgrade(tls).await?))
            }
            Transport::Quic => unreachable!("QUIC is connected above"),
        })
    }

    async fn quic(
        &self,
        cfg: &quinn::ClientConfig,
        name: &str,
        addr: SocketAddr,
        local: Option<IpAddr>,
    ) -> io::Result<Stream> {
        let endpoint = {
            let mut eps = self
                .endpoints
                .lock()
                .map_err(|_| io::Error::other("QUIC endpoints poisoned"))?;
            match eps.get(&local) {
                Some(e) => e.clone(),
                None => {
                    let ip = local.unwrap_or(if addr.is_ipv4() {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u16; 8])
                    });
                    let e = quinn::Endpoint::client(SocketAddr::new(ip, 0))?;
                    eps.insert(local, e.clone());
                    e
                }
            }
        };
        let quic_err = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("QUIC {what}: {e}"),
            )
        };
        let connecting = endpoint
            .connect_with(cfg.clone(), addr, name)
            .map_err(|e| quic_err("connect", &e))?;
        let conn = connecting.await.map_err(|e| quic_err("handshake", &e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| quic_err("stream", &e))?;
        Ok(Stream::Quic(Box::new(QuicIo::new(conn, send, recv))))
    }

    async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let (connector, name) = self.tls.as_ref().expect("a TLS transport has a connector");
        connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))
    }

    async fn upgrade<S>(&self, stream: S) -> io::Result<WsIo<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ws_err = |e: WsError| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("WebSocket upgrade: {e}"),
            )
        };
        let mut req = self.ws_uri.as_str().into_client_request().map_err(ws_err)?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
            .await
            .map_err(ws_err)?;
        Ok(WsIo::new(ws))
    }
}

/// The rustls client configuration of a run.
fn client_config(o: &Opts) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &o.cafile {
        Some(ca) => {
            let roots =
                emqx_discovery::tls::load_roots(ca).map_err(|e| format!("--cafile: {e}"))?;
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(emqx_discovery::tls::Unverified(provider))),
    };
    let mut cfg = match (&o.certfile, &o.keyfile) {
        (Some(cert), Some(key)) => {
            let chain =
                emqx_discovery::tls::load_certs(cert).map_err(|e| format!("--certfile: {e}"))?;
            let pk = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--keyfile {}: no usable private key: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, pk).map_err(|e| {
                format!(
                    "--certfile {} / --keyfile {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        // The option parser refuses one without the other.
        _ => builder.with_no_client_auth(),
    };
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A connected client's byte stream. The TLS and WebSocket states are
/// boxed so a plain TCP client stays small.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsIo<TcpStream>>),
    Wss(Box<WsIo<TlsStream<TcpStream>>>),
    Quic(Box<QuicIo>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Quic(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Quic(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Quic(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Quic(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
