//! The byte stream a bench client speaks MQTT over: plain TCP, TLS, MQTT
//! over WebSocket (binary frames on `--ws-path`, subprotocol `mqtt`) or
//! WebSocket over TLS.
//!
//! TLS is rustls with the aws-lc-rs provider, as in the broker. Without
//! `--cafile` the server's certificate is not checked at all (the handshake
//! signatures still are); with it, the certificate must chain to that CA
//! and name `--host`. Session resumption is off: every bench client does a
//! full handshake, as a fleet of distinct devices would on first connect.

use super::opts::{Opts, Transport};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

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
}

impl Connector {
    /// Reads the certificate files and builds the TLS configuration. An
    /// error names the option whose file is wrong.
    pub fn new(o: &Opts) -> Result<Connector, String> {
        let tls = if o.transport.tls() {
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
        })
    }

    /// Opens a connection (from `local` if given) and does the TLS
    /// handshake and the WebSocket upgrade the transport asks for.
    pub async fn connect(&self, addr: SocketAddr, local: Option<IpAddr>) -> io::Result<Stream> {
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
        })
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
        Ok(WsIo {
            ws,
            rd: Bytes::new(),
        })
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
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs("--cafile", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--cafile {}: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
    };
    let mut cfg = match (&o.certfile, &o.keyfile) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("--certfile", cert)?;
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

/// Every certificate of a PEM file; an error names the option and the file.
fn load_certs(opt: &str, path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("{opt}: cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{opt} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{opt} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Accepts any server certificate (no `--cafile`); the handshake
/// signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connected client's byte stream. The TLS and WebSocket states are
/// boxed so a plain TCP client stays small.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsIo<TcpStream>>),
    Wss(Box<WsIo<TlsStream<TcpStream>>>),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A client WebSocket connection as a byte stream: binary frames in,
/// one binary frame per write out (MQTT packets may span frames or share
/// one). A text frame is an error (MQTT-6.0.0-1); a close frame ends the
/// stream. Written frames reach the socket on flush.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last frame read.
    rd: Bytes,
}

fn io_err(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.rd.is_empty() {
                let n = self.rd.len().min(buf.remaining());
                buf.put_slice(&self.rd[..n]);
                self.rd.advance(n);
                if self.rd.is_empty() {
                    // Let go of the frame (and the read buffer it shares).
                    self.rd = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => self.rd = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the broker sent a text frame (MQTT travels in binary frames only)",
                    )))
                }
                // Pings are answered by tungstenite.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_err)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_err(e))),
        }
    }
}
