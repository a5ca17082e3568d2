//! The PROXY protocol (HAProxy's, versions 1 and 2) that a load balancer
//! sends before the client's bytes: it gives the client's real address,
//! and in version 2 what the balancer learned from the client's TLS
//! certificate. Parsing is the `ppp` crate's; this module reads the header
//! off the socket and keeps whatever arrived behind it.

use bytes::{Buf, Bytes, BytesMut};
use ppp::v1;
use ppp::v2;
use ppp::PartialResult;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A v1 header is at most 107 bytes; v2 allows 16 + 65535, but a header
/// longer than this carries TLVs no balancer sends to MQTT.
const MAX_HEADER: usize = 4096;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header's limit, CRLF included.
const MAX_V1: usize = 107;

/// PP2_TYPE_SSL and its PP2_SUBTYPE_SSL_CN.
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// The `client` bits of PP2_TYPE_SSL: TLS, and a certificate presented on
/// this connection or its session.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT: u8 = 0x02 | 0x04;

/// What a PROXY header said.
#[derive(Debug, Default, PartialEq)]
pub struct ProxyInfo {
    /// The client's address; `None` for `UNKNOWN`/`LOCAL` (a balancer's
    /// own health check), when the socket's peer stands.
    pub source: Option<SocketAddr>,
    /// The client certificate's common name (v2 `PP2_SUBTYPE_SSL_CN`).
    pub ssl_cn: Option<String>,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the connection closed before a complete PROXY header")]
    Closed,
    #[error("no PROXY protocol header (got bytes that are not one)")]
    Missing,
    #[error("malformed PROXY v{version} header: {reason}")]
    Malformed { version: u8, reason: String },
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the PROXY header at the start of `stream`. The bytes read past it
/// (the client's first packet may share the segment) come first from the
/// returned stream.
pub async fn read_header<S: AsyncRead + Unpin>(
    mut stream: S,
) -> Result<(Prefixed<S>, ProxyInfo), ProxyError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProxyError::Closed);
        }
        if !could_be_header(&buf) {
            return Err(ProxyError::Missing);
        }
        match parse(&buf)? {
            Some((len, info)) => {
                buf.advance(len);
                return Ok((Prefixed::new(stream, buf.freeze()), info));
            }
            None if buf.len() >= MAX_HEADER => return Err(ProxyError::TooLong),
            None => {}
        }
    }
}

/// Whether `buf` starts as a v1 (`PROXY `) or v2 (its 12-byte signature)
/// header would, as far as it goes.
fn could_be_header(buf: &[u8]) -> bool {
    let starts = |p: &[u8]| {
        let n = buf.len().min(p.len());
        buf[..n] == p[..n]
    };
    starts(V1_PREFIX) || starts(V2_SIGNATURE)
}

/// The header's length and contents, or `None` while incomplete.
fn parse(buf: &[u8]) -> Result<Option<(usize, ProxyInfo)>, ProxyError> {
    if buf.starts_with(V1_PREFIX) {
        return parse_v1(buf);
    }
    if buf.len() < V2_SIGNATURE.len() {
        return Ok(None);
    }
    let header = v2::Header::try_from(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    let h = header.map_err(|e| ProxyError::Malformed {
        version: 2,
        reason: e.to_string(),
    })?;
    let source = match (h.command, h.addresses) {
        (v2::Command::Local, _) => None,
        (_, v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        (_, v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        (_, _) => None,
    };
    let mut ssl_cn = None;
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| ProxyError::Malformed {
            version: 2,
            reason: e.to_string(),
        })?;
        if tlv.kind == PP2_TYPE_SSL {
            ssl_cn = ssl_common_name(&tlv.value);
        }
    }
    Ok(Some((h.len(), ProxyInfo { source, ssl_cn })))
}

/// A v1 header is one line: it is judged once its CRLF is in.
fn parse_v1(buf: &[u8]) -> Result<Option<(usize, ProxyInfo)>, ProxyError> {
    let malformed = |reason: String| ProxyError::Malformed { version: 1, reason };
    let line = match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end + 2 <= MAX_V1 => &buf[..end + 2],
        Some(_) => return Err(malformed("longer than 107 bytes".into())),
        None if buf.len() >= MAX_V1 => return Err(malformed("no CRLF within 107 bytes".into())),
        None => return Ok(None),
    };
    let header = v1::Header::try_from(line);
    if header.is_incomplete() {
        return Err(malformed("missing fields".into()));
    }
    let h = header.map_err(|e| malformed(e.to_string()))?;
    let source = match h.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    };
    Ok(Some((
        line.len(),
        ProxyInfo {
            source,
            ssl_cn: None,
        },
    )))
}

/// The CN sub-TLV of a PP2_TYPE_SSL value: `client` (1 byte), `verify`
/// (4 bytes), then sub-TLVs of type (1), length (2, big-endian), value.
fn ssl_common_name(value: &[u8]) -> Option<String> {
    // Only from a client that connected over TLS with a certificate
    // (PP2_CLIENT_SSL and PP2_CLIENT_CERT_CONN or _SESS) which the
    // balancer verified (`verify` 0).
    let (&client, verify) = (value.first()?, value.get(1..5)?);
    if client & PP2_CLIENT_SSL == 0 || client & PP2_CLIENT_CERT == 0 || verify != [0, 0, 0, 0] {
        return None;
    }
    let mut rest = value.get(5..)?;
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let v = rest.get(3..3 + len)?;
        if kind == PP2_SUBTYPE_SSL_CN {
            return std::str::from_utf8(v).ok().map(str::to_string);
        }
        rest = &rest[3 + len..];
    }
    None
}

/// A stream whose first bytes were already read: they are served before
/// the stream's own.
pub struct Prefixed<S> {
    inner: S,
    prefix: Bytes,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Bytes) -> Self {
        Prefixed { inner, prefix }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<(ProxyInfo, Vec<u8>), ProxyError> {
        let (mut s, info) = read_header(bytes).await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await?;
        Ok((info, rest))
    }

    #[tokio::test]
    async fn v1_gives_the_source_and_keeps_what_follows() {
        let (info, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 1883\r\n\x10\x00")
            .await
            .unwrap();
        assert_eq!(info.source, Some("192.0.2.7:40001".parse().unwrap()));
        assert_eq!(rest, b"\x10\x00");
        let (info, rest) = read(b"PROXY TCP6 2001:db8::5 2001:db8::1 40002 1883\r\n")
            .await
            .unwrap();
        assert_eq!(info.source, Some("[2001:db8::5]:40002".parse().unwrap()));
        assert!(rest.is_empty());
        let (info, _) = read(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(info.source, None);
    }

    /// A v2 header: signature, PROXY over TCP/IPv4, 12 address bytes and a
    /// PP2_TYPE_SSL TLV with a CN sub-TLV, built by hand per the spec.
    fn v2_header(cn: &[u8]) -> Vec<u8> {
        v2_header_with(cn, 0x03, 0)
    }

    fn v2_header_with(cn: &[u8], client: u8, verify: u32) -> Vec<u8> {
        let mut ssl = vec![client];
        ssl.extend_from_slice(&verify.to_be_bytes());
        ssl.push(PP2_SUBTYPE_SSL_CN);
        ssl.extend_from_slice(&(cn.len() as u16).to_be_bytes());
        ssl.extend_from_slice(cn);
        let mut body = vec![192, 0, 2, 9, 198, 51, 100, 1];
        body.extend_from_slice(&40003u16.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        body.push(PP2_TYPE_SSL);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x21);
        h.push(0x11);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(&body);
        h
    }

    #[tokio::test]
    async fn v2_gives_the_source_and_the_certificate_cn() {
        let mut bytes = v2_header(b"device-7");
        bytes.extend_from_slice(b"\x10\x01");
        let (info, rest) = read(&bytes).await.unwrap();
        assert_eq!(info.source, Some("192.0.2.9:40003".parse().unwrap()));
        assert_eq!(info.ssl_cn.as_deref(), Some("device-7"));
        assert_eq!(rest, b"\x10\x01");
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        assert!(matches!(
            read(b"\x10\x0c\x00\x04MQTT").await,
            Err(ProxyError::Missing)
        ));
        let r = read(b"PROXY TCP4 1.2.3.4\r\n").await;
        assert!(
            matches!(r, Err(ProxyError::Malformed { version: 1, .. })),
            "{r:?}"
        );
        assert!(matches!(
            read(b"PROXY TCP4 1.2.3.4 ").await,
            Err(ProxyError::Closed)
        ));
        let mut v2 = v2_header(b"x");
        v2[12] = 0x31; // version 3
        assert!(matches!(
            read(&v2).await,
            Err(ProxyError::Malformed { version: 2, .. })
        ));
        let long = [b"PROXY ".as_slice(), &[b'1'; 5000]].concat();
        assert!(read(&long).await.is_err());
    }

    #[tokio::test]
    async fn a_cn_counts_only_from_a_verified_client_certificate() {
        for (client, verify) in [(0x01, 0), (0x03, 1), (0x00, 0)] {
            let (info, _) = read(&v2_header_with(b"dev", client, verify)).await.unwrap();
            assert_eq!(info.ssl_cn, None, "client {client:#x} verify {verify}");
        }
        let (info, _) = read(&v2_header_with(b"dev", 0x05, 0)).await.unwrap();
        assert_eq!(info.ssl_cn.as_deref(), Some("dev"));
    }

    #[test]
    fn a_truncated_ssl_tlv_gives_no_cn() {
        assert_eq!(
            ssl_common_name(&[3, 0, 0, 0, 0, PP2_SUBTYPE_SSL_CN, 0, 9, b'a']),
            None
        );
        assert_eq!(ssl_common_name(&[1, 0]), None);
    }
}
