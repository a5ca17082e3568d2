//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade on
//! `websocket.mqtt_path` with one of the MQTT subprotocols, then the
//! binary frames as a byte stream for the connection code. MQTT packets
//! may span frames or share one, so frames are only a transport here.
//! The upgrade request is parsed with httparse; the WebSocket protocol
//! after it is tungstenite's.

use crate::config::WsOptions;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Longest HTTP request head accepted.
const MAX_HEAD: usize = 8192;

/// Reads the HTTP upgrade request on `stream` and answers it: 101 and the
/// WebSocket, or an HTTP error (404 for another path, 400 for a request
/// that is not a WebSocket upgrade or offers no MQTT subprotocol) and the
/// reason. The request is parsed here (httparse), so every request gets an
/// HTTP answer; frames that arrive right behind the request are kept.
pub async fn accept<S>(
    mut stream: S,
    opts: &WsOptions,
    max_packet: usize,
) -> Result<WsIo<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (head_len, path, answer) = loop {
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before a complete HTTP request".into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                break (n, req.path.unwrap_or("").to_string(), check(&req, opts))
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                break (
                    0,
                    String::new(),
                    Err((431, "request header fields too large".into())),
                )
            }
            Err(e) => {
                break (
                    0,
                    String::new(),
                    Err((400, format!("bad HTTP request: {e}"))),
                )
            }
        }
    };
    let (accept_key, protocol) = match answer {
        Ok(x) => x,
        Err((status, why)) => {
            let reason = match status {
                404 => "Not Found",
                431 => "Request Header Fields Too Large",
                _ => "Bad Request",
            };
            let resp = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
                why.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
            return Err(format!("{path} {status} {reason}: {why}"));
        }
    };
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept_key}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("sec-websocket-protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    let sent = async {
        stream.write_all(resp.as_bytes()).await?;
        stream.flush().await
    };
    sent.await.map_err(|e| e.to_string())?;
    let bound = opts
        .max_frame_size
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .unwrap_or(max_packet.saturating_add(64 * 1024));
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_frame_size(Some(bound))
        .max_message_size(Some(bound));
    let rest = buf.split_off(head_len).to_vec();
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    Ok(WsIo::new(ws))
}

type Refusal = (u16, String);

/// The `Sec-WebSocket-Accept` value and the chosen subprotocol, or why
/// the request is refused.
fn check(
    req: &httparse::Request<'_, '_>,
    opts: &WsOptions,
) -> Result<(String, Option<String>), Refusal> {
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != opts.mqtt_path {
        return Err((404, "not found".into()));
    }
    if req.method != Some("GET") {
        return Err((400, "a WebSocket upgrade is a GET request".into()));
    }
    fn header<'a>(
        req: &'a httparse::Request<'_, '_>,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    }
    let header = |name: &'static str| header(req, name);
    let has_token = |name: &'static str, token: &str| {
        header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err((400, "not a WebSocket upgrade request".into()));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err((400, "Sec-WebSocket-Version 13 is required".into()));
    }
    let Some(key) = header("sec-websocket-key").next() else {
        return Err((400, "no Sec-WebSocket-Key".into()));
    };
    let offered = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| opts.supported_subprotocols.iter().any(|s| s == p))
        .map(str::to_string);
    if offered.is_none() && opts.fail_if_no_subprotocol {
        return Err((400, "no supported MQTT subprotocol offered".into()));
    }
    Ok((derive_accept_key(key.trim().as_bytes()), offered))
}

/// A WebSocket connection as a byte stream: binary frames in, binary
/// frames out (one per write, sent on flush). A text frame is a protocol
/// error (MQTT-6.0.0-1); a close frame ends the stream. Used by the
/// listeners and by the bench client.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last frame read.
    rd: Bytes,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            rd: Bytes::new(),
        }
    }
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
                        "a text frame (MQTT travels in binary frames only)",
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
