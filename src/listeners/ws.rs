//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade on
//! `websocket.mqtt_path` with one of the MQTT subprotocols, then the
//! binary frames as a byte stream for the connection code. MQTT packets
//! may span frames or share one, so frames are only a transport here.
//! The WebSocket protocol itself is tungstenite's.

use crate::config::WsOptions;
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Accepts the upgrade on `stream`; the error says why it was refused
/// (the client already got its HTTP answer).
// The HTTP error response is the callback type tungstenite asks for.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S, opts: &WsOptions, max_packet: usize) -> Result<WsIo<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut refused = None;
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != opts.mqtt_path {
            return Err(http_error(StatusCode::NOT_FOUND, "not found"));
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| opts.supported_subprotocols.iter().any(|s| s == p))
            .map(str::to_string);
        match offered {
            Some(p) => {
                if let Ok(v) = HeaderValue::from_str(&p) {
                    resp.headers_mut().insert("sec-websocket-protocol", v);
                }
            }
            None if opts.fail_if_no_subprotocol => {
                return Err(http_error(
                    StatusCode::BAD_REQUEST,
                    "no supported MQTT subprotocol offered",
                ));
            }
            None => {}
        }
        Ok(resp)
    };
    let bound = opts
        .max_frame_size
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .unwrap_or(max_packet.saturating_add(64 * 1024));
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_frame_size(Some(bound))
        .max_message_size(Some(bound));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| {
            let r = check(req, resp);
            if let Err(e) = &r {
                refused = Some(format!(
                    "{} {}: {}",
                    req.uri().path(),
                    e.status(),
                    e.body().as_deref().unwrap_or("")
                ));
            }
            r
        },
        Some(config),
    )
    .await;
    match ws {
        Ok(ws) => Ok(WsIo {
            ws,
            rd: Bytes::new(),
        }),
        Err(e) => Err(refused.unwrap_or_else(|| format!("WebSocket upgrade failed: {e}"))),
    }
}

fn http_error(status: StatusCode, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = status;
    r
}

/// A WebSocket connection as a byte stream: binary frames in, binary
/// frames out (one per write). A text frame is a protocol error
/// (MQTT-6.0.0-1); a close frame ends the stream.
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
