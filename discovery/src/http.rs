//! A deliberately small HTTP/1.1 client for the discovery backends (etcd's
//! JSON gateway, the Kubernetes API server) and for fetching a JWKS
//! ([`get`]): one request per connection
//! (`Connection: close`), plain TCP or TLS (rustls), the whole answer read
//! into memory, chunked bodies decoded. Nothing here is specific to one
//! backend; interpreting the status and body is the caller's job.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read.
pub(crate) const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// How long a failed send waits for the reason (a TLS alert) to arrive.
const ALERT_WAIT: Duration = Duration::from_millis(500);

/// Where requests go: `scheme://host[:port][/base path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub tls: bool,
    /// The host as written (an IPv6 address keeps its brackets).
    pub host: String,
    /// `None` when the URL names no port.
    pub port: Option<u16>,
    /// The path prefix without its trailing `/` (often empty).
    pub base: String,
}

impl Url {
    /// Parses `http://...` or `https://...`; a string without a scheme is
    /// taken as `http://` when `default_http` is true (etcd accepts bare
    /// `host:port`), refused otherwise.
    pub fn parse(s: &str, default_http: bool) -> Result<Url, String> {
        let t = s.trim();
        let (tls, rest) = match t.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (false, rest),
                "https" => (true, rest),
                _ => return Err(format!("{s:?}: expected an http:// or https:// URL")),
            },
            None if default_http => (false, t),
            None => return Err(format!("{s:?}: expected an http:// or https:// URL")),
        };
        let (hostport, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if hostport.is_empty() || hostport.contains('@') {
            return Err(format!("{s:?}: expected scheme://host[:port]"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            // `[::1]:80` or `host:80`; a bare `::1` is not split.
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))?;
                (h, Some(port))
            }
            _ => (hostport, None),
        };
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            base: base.to_string(),
        })
    }

    /// `host:port`, with `default` when the URL has no port.
    pub fn authority(&self, default: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(default))
    }

    /// The host without IPv6 brackets, as TLS wants it for the server name.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// One request.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// `host:port`, for the connection and the `Host` header.
    pub authority: &'a str,
    pub path: &'a str,
    /// Extra headers (`Host`, `Content-Length` and `Connection` are added).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Sends `req` over a new connection (TLS with `tls` and that server
/// name) and returns the status and the de-chunked body. Errors are
/// transport errors (connect, TLS, a malformed or oversized answer) as
/// text; `timeout` bounds the whole exchange.
pub(crate) async fn send(
    req: &Request<'_>,
    tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
    timeout: Option<Duration>,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let tcp = TcpStream::connect(req.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match tls {
            None => exchange(tcp, req).await,
            Some((cfg, name)) => {
                let name = rustls::pki_types::ServerName::try_from(name.to_string())
                    .map_err(|e| format!("TLS server name {name:?}: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(stream, req).await
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {t:?}"))),
        None => exchange.await,
    }
}

/// GETs a whole `http://` or `https://` URL (TLS with `tls`, which an
/// `https` URL requires) and returns the status and body.
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
    tls: Option<&crate::tls::TlsOptions>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let u = Url::parse(url, false)?;
    let authority = u.authority(if u.tls { 443 } else { 80 });
    let path = if u.base.is_empty() { "/" } else { &u.base };
    let req = Request {
        method: "GET",
        authority: &authority,
        path,
        headers,
        body: b"",
    };
    match (u.tls, tls) {
        (false, _) => send(&req, None, Some(timeout)).await,
        (true, None) => Err(format!("{url}: an https URL needs TLS options")),
        (true, Some(o)) => {
            let cfg = o.client_config()?;
            let name = o.server_name(u.bare_host()).to_string();
            send(&req, Some((&cfg, &name)), Some(timeout)).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    req: &Request<'_>,
) -> Result<(u16, Vec<u8>), String> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.path, req.authority
    );
    for (k, v) in req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    let sent = async {
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(req.body).await?;
        conn.flush().await
    }
    .await;
    if let Err(e) = sent {
        // A TLS server that refuses the client's certificate says why in
        // an alert sent after the client's side of the handshake, then
        // closes: the alert, if it came, is the better error.
        let mut byte = [0u8; 1];
        let alert = tokio::time::timeout(ALERT_WAIT, conn.read(&mut byte)).await;
        return Err(match alert {
            Ok(Err(why)) => format!("sending the request: {why}"),
            _ => format!("sending the request: {e}"),
        });
    }
    let mut raw = Vec::new();
    let read = (&mut conn)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await;
    if let Err(e) = read {
        // Servers that close a TLS connection without close_notify are
        // common; what was read is still a whole answer if it parses.
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("reading the answer: {e}"));
        }
    }
    if raw.len() > MAX_RESPONSE {
        return Err("answer too large".into());
    }
    parse_response(&raw)
}

/// Splits a full HTTP/1.1 response into its status and (de-chunked) body.
pub(crate) fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = find(raw, b"\r\n\r\n").ok_or("truncated HTTP answer (no header end)")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "HTTP header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad HTTP status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or("truncated HTTP body")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body. A stream cut short after whole chunks (the
/// server closed a streaming answer) keeps what was read.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(out);
        };
        let size_str = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| format!("bad chunk size {size_str:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let start = eol + 2;
        let chunk = data
            .get(start..start + size)
            .ok_or("truncated HTTP chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(start + size + 2..).unwrap_or_default();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r), Ok((200, b"{}".to_vec())));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(r), Ok((200, b"{\"a\":1}".to_vec())));
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nnope"),
            Ok((404, b"nope".to_vec()))
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://kubernetes.default.svc:443", false).expect("url");
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "kubernetes.default.svc".into(),
                port: Some(443),
                base: String::new()
            }
        );
        let u = Url::parse("http://127.0.0.1:8001/proxy/k8s/", false).expect("url");
        assert_eq!(
            (u.tls, u.authority(80), u.base.as_str()),
            (false, "127.0.0.1:8001".into(), "/proxy/k8s")
        );
        let u = Url::parse("https://[::1]", false).expect("url");
        assert_eq!(
            (u.authority(443), u.bare_host()),
            ("[::1]:443".into(), "::1")
        );
        let u = Url::parse("etcd:2379", true).expect("bare host:port");
        assert_eq!((u.tls, u.authority(1)), (false, "etcd:2379".into()));
        assert!(Url::parse("etcd:2379", false).is_err());
        assert!(Url::parse("ftp://h", true).is_err());
        assert!(Url::parse("http://", true).is_err());
        assert!(Url::parse("http://h:port", true).is_err());
        assert!(Url::parse("http://user@h", true).is_err());
    }
}
