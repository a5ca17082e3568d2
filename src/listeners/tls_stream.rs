//! The server side of a TLS connection on rustls's unbuffered API.
//!
//! rustls's buffered connection keeps a 4 KB receive buffer for as long as
//! the connection lives, whether or not a byte is waiting; with an idle
//! connection costing a few KB in all, that buffer alone would be most of
//! what TLS adds. Here the buffers belong to the stream and exist only
//! while they hold something: ciphertext is read into a buffer on the
//! stack of the poll and only an incomplete record is kept on the heap,
//! the plaintext the reader has not taken yet is kept, and encrypted
//! output lives until the socket has taken it. An idle connection holds
//! none of them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How much is read from the socket in one step.
const READ_STEP: usize = 8 * 1024;

/// Encrypted output beyond this makes a writer wait for the socket.
const TX_HIGH: usize = 64 * 1024;

/// A TLS connection over `IO` after a completed handshake.
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: an incomplete record.
    rx: Vec<u8>,
    /// Plaintext decrypted and not yet read, from `plain_pos` on.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext to send, from `tx_pos` on.
    tx: Vec<u8>,
    tx_pos: usize,
    /// The peer sent close_notify or closed the socket.
    read_eof: bool,
    /// Our close_notify is queued.
    close_sent: bool,
    /// A reader waiting for the socket, woken when a writer's processing
    /// decrypted data for it.
    read_waker: Option<Waker>,
}

/// What processing the received ciphertext came to.
enum Next {
    /// More ciphertext is needed.
    More,
    /// The handshake is complete (during the handshake only).
    Ready,
    /// The data to send is encrypted into `tx`.
    Sent,
    /// The peer sent close_notify (once); we may still send.
    PeerClosed,
    /// Both sides closed.
    Closed,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Why rustls did not write its output.
enum OutErr {
    /// The room it needs.
    Room(usize),
    Fail(String),
}

impl From<EncodeError> for OutErr {
    fn from(e: EncodeError) -> OutErr {
        match e {
            EncodeError::InsufficientSize(s) => OutErr::Room(s.required_size),
            e => OutErr::Fail(e.to_string()),
        }
    }
}

impl From<EncryptError> for OutErr {
    fn from(e: EncryptError) -> OutErr {
        match e {
            EncryptError::InsufficientSize(s) => OutErr::Room(s.required_size),
            e => OutErr::Fail(e.to_string()),
        }
    }
}

/// Appends what `write` (one of rustls's encode/encrypt calls) produces to
/// `tx`, starting with `room` bytes of space and growing it as asked.
fn append(
    tx: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, OutErr>,
) -> io::Result<()> {
    let start = tx.len();
    loop {
        tx.resize(start + room, 0);
        match write(&mut tx[start..]) {
            Ok(n) => {
                tx.truncate(start + n);
                return Ok(());
            }
            Err(OutErr::Room(need)) if need > room => room = need,
            Err(e) => {
                tx.truncate(start);
                let msg = match e {
                    OutErr::Fail(m) => m,
                    OutErr::Room(_) => "TLS output does not fit".into(),
                };
                return Err(io::Error::other(msg));
            }
        }
    }
}

/// Processes the records in `input` as far as they go: decrypted
/// application data goes to `out` while it has room, then to `plain`;
/// handshake and alert output to `tx`; with `send`, once rustls may
/// encrypt, that data is encrypted into `tx` too. Returns the bytes of
/// `input` consumed and what it came to. Fields are passed one by one so
/// the connection's borrow of `input` does not hold the whole stream.
fn process(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    mut out: Option<&mut ReadBuf<'_>>,
    plain: &mut Vec<u8>,
    tx: &mut Vec<u8>,
    send: Option<&[u8]>,
) -> io::Result<(usize, Next)> {
    let mut off = 0;
    loop {
        let handshaking = conn.is_handshaking();
        let status = conn.process_tls_records(&mut input[off..]);
        let discard = status.discard;
        let next = match status.state.map_err(tls_err)? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    let mut payload = rec.map_err(tls_err)?.payload;
                    if let Some(out) = out.as_deref_mut() {
                        let n = payload.len().min(out.remaining());
                        out.put_slice(&payload[..n]);
                        payload = &payload[n..];
                    }
                    plain.extend_from_slice(payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut e) => {
                append(tx, 2048, |b| Ok(e.encode(b)?))?;
                None
            }
            // The output is in `tx`, which is sent before anything written
            // later: order is kept without waiting here.
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Next::More),
            ConnectionState::WriteTraffic(mut w) => Some(match send {
                Some(data) => {
                    // Per 16 KB record: 5 header, 1 type and 16 tag bytes.
                    let room = data.len() + 22 * (data.len() / 16384 + 1);
                    append(tx, room, |b| Ok(w.encrypt(data, b)?))?;
                    Next::Sent
                }
                None if handshaking => Next::Ready,
                None => Next::More,
            }),
            ConnectionState::PeerClosed => Some(Next::PeerClosed),
            ConnectionState::Closed => Some(Next::Closed),
            // Early data is not enabled; no other state is known.
            _ => {
                return Err(io::Error::other("unexpected TLS connection state"));
            }
        };
        off += discard;
        if let Some(n) = next {
            return Ok((off, n));
        }
        if handshaking && !conn.is_handshaking() && send.is_none() {
            // Done, maybe with application data right behind the client's
            // Finished (kept in `plain`).
            return Ok((off, Next::Ready));
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Runs the server handshake on `io`. On failure the alert rustls has
    /// for the client is sent before the error is returned.
    pub async fn accept(io: IO, config: Arc<ServerConfig>) -> io::Result<TlsStream<IO>> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
        let mut s = TlsStream {
            io,
            conn,
            rx: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            tx: Vec::new(),
            tx_pos: 0,
            read_eof: false,
            close_sent: false,
            read_waker: None,
        };
        s.handshake().await?;
        Ok(s)
    }

    /// Processes `rx` (see [`process`]) and drops what was consumed.
    fn process_rx(
        &mut self,
        out: Option<&mut ReadBuf<'_>>,
        send: Option<&[u8]>,
    ) -> io::Result<Next> {
        let r = process(
            &mut self.conn,
            &mut self.rx,
            out,
            &mut self.plain,
            &mut self.tx,
            send,
        );
        let (used, next) = r?;
        self.rx.drain(..used);
        if self.rx.is_empty() {
            self.rx = Vec::new();
        }
        if matches!(next, Next::PeerClosed | Next::Closed) {
            self.read_eof = true;
        }
        Ok(next)
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            let next = match self.process_rx(None, None) {
                Ok(n) => n,
                Err(e) => {
                    // rustls queued an alert for the client (unknown CA,
                    // certificate required, ...): send it, then fail.
                    let mut ignored = Vec::new();
                    let _ = process(
                        &mut self.conn,
                        &mut [],
                        None,
                        &mut ignored,
                        &mut self.tx,
                        None,
                    );
                    let _ = self.send_tx().await;
                    return Err(e);
                }
            };
            self.send_tx().await?;
            match next {
                Next::Ready => {
                    // Records right behind the client's Finished (its
                    // CONNECT, usually) are decrypted now: the client
                    // waits for an answer, so a read would wait forever.
                    self.process_rx(None, None)?;
                    self.send_tx().await?;
                    self.rx.shrink_to_fit();
                    return Ok(());
                }
                Next::PeerClosed | Next::Closed | Next::Sent => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the TLS session during the handshake",
                    ));
                }
                Next::More => {
                    let len = self.rx.len();
                    self.rx.resize(len + READ_STEP, 0);
                    let n = self.io.read(&mut self.rx[len..]).await;
                    self.rx.truncate(len + *n.as_ref().unwrap_or(&0));
                    if n? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed the connection during the TLS handshake",
                        ));
                    }
                }
            }
        }
    }

    /// Writes all of `tx` (handshake).
    async fn send_tx(&mut self) -> io::Result<()> {
        if self.tx_pos < self.tx.len() {
            self.io.write_all(&self.tx[self.tx_pos..]).await?;
            self.io.flush().await?;
        }
        self.tx = Vec::new();
        self.tx_pos = 0;
        Ok(())
    }

    /// The client's certificate chain, when it sent one.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Sends what `tx` holds until the socket takes no more.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_pos += n;
        }
        // Emptied: an idle connection holds no output buffer.
        self.tx = Vec::new();
        self.tx_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Hands out plaintext already decrypted.
    fn take_plain(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.plain_pos >= self.plain.len() {
            return false;
        }
        let n = (self.plain.len() - self.plain_pos).min(out.remaining());
        out.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.take_plain(out) || this.read_eof || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Output rustls produced while reading (a KeyUpdate answer, an
            // alert) goes out as the socket allows; a full socket does not
            // hold the reader up.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            let before = out.filled().len();
            if this.rx.is_empty() {
                // The usual case: no partial record. Read on the stack and
                // keep only what is left of an incomplete record.
                let mut tmp = [0u8; READ_STEP];
                let mut rb = ReadBuf::new(&mut tmp);
                if Pin::new(&mut this.io).poll_read(cx, &mut rb)?.is_pending() {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let n = rb.filled().len();
                if n == 0 {
                    this.read_eof = true;
                    return Poll::Ready(Ok(()));
                }
                let r = process(
                    &mut this.conn,
                    &mut tmp[..n],
                    Some(out),
                    &mut this.plain,
                    &mut this.tx,
                    None,
                );
                let (used, next) = r?;
                this.rx.extend_from_slice(&tmp[used..n]);
                if matches!(next, Next::PeerClosed | Next::Closed) {
                    this.read_eof = true;
                }
            } else {
                let len = this.rx.len();
                this.rx.resize(len + READ_STEP, 0);
                let mut rb = ReadBuf::new(&mut this.rx[len..]);
                let polled = Pin::new(&mut this.io).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                this.rx.truncate(len + n);
                if polled?.is_pending() {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                if n == 0 {
                    // Closed in the middle of a record.
                    this.read_eof = true;
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                this.process_rx(Some(out), None)?;
            }
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tx.len() - this.tx_pos >= TX_HIGH {
            ready!(this.poll_send(cx))?;
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // `rx` holds at most an incomplete record (reads process all they
        // can), so this mostly encrypts at once; whatever it decrypts on
        // the way is the reader's.
        let had = this.plain.len();
        loop {
            match this.process_rx(None, Some(buf))? {
                Next::Sent => break,
                // Edge-triggered: the next turn can encrypt.
                Next::PeerClosed => {}
                _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        if this.plain.len() > had {
            if let Some(w) = this.read_waker.take() {
                w.wake();
            }
        }
        // Sent as far as the socket takes it now; the rest by flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            let status = this.conn.process_tls_records(&mut []);
            if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
                // Best effort: a session that cannot say close_notify is
                // closed with the socket anyway.
                let _ = append(&mut this.tx, 64, |b| Ok(w.queue_close_notify(b)?));
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The stream against rustls's own buffered client (tokio-rustls) over
    //! an in-memory pipe, with a certificate made by openssl. The broker's
    //! listeners are tested against openssl, Mosquitto and paho in tests/.

    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::TlsConnector;

    struct Pki {
        _dir: tempfile::TempDir,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let st = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-addext"])
            .args(["subjectAltName=DNS:localhost", "-addext"])
            .args(["basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&k)
            .arg("-out")
            .arg(&c)
            .output()
            .expect("openssl is installed (scripts/test.sh)");
        assert!(st.status.success(), "{st:?}");
        Pki {
            cert: CertificateDer::from_pem_file(&c).expect("cert"),
            key: PrivateKeyDer::from_pem_file(&k).expect("key"),
            _dir: dir,
        }
    }

    fn configs(p: &Pki) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        crate::listeners::tls::warm_up();
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![p.cert.clone()], p.key.clone_key())
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(p.cert.clone()).expect("root");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A transport that hands out at most `step` bytes a read, so records
    /// arrive in pieces.
    struct Trickle {
        inner: DuplexStream,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let step = self.step.min(buf.remaining());
            let mut tmp = vec![0u8; step];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            buf.put_slice(rb.filled());
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Echoes everything back until the client closes, then closes.
    async fn echo<IO: AsyncRead + AsyncWrite + Unpin>(mut s: TlsStream<IO>) -> usize {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).await.expect("server read");
            if n == 0 {
                break;
            }
            total += n;
            s.write_all(&buf[..n]).await.expect("server write");
            s.flush().await.expect("server flush");
        }
        s.shutdown().await.expect("server shutdown");
        total
    }

    async fn round_trip(step: usize, sizes: &[usize]) {
        let p = pki();
        let (server, client) = configs(&p);
        let connector = TlsConnector::from(client);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let s = TlsStream::accept(Trickle { inner: b, step }, server)
                .await
                .expect("handshake");
            echo(s).await
        });
        let name = ServerName::try_from("localhost").expect("name");
        let mut c = connector.connect(name, a).await.expect("client handshake");
        let mut sent = 0;
        for &n in sizes {
            let data = pattern(n);
            c.write_all(&data).await.expect("client write");
            c.flush().await.expect("client flush");
            let mut back = vec![0u8; n];
            c.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, data, "echo of {n} bytes");
            sent += n;
        }
        c.shutdown().await.expect("client shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("close_notify");
        assert!(rest.is_empty());
        assert_eq!(srv.await.expect("server task"), sent);
    }

    #[tokio::test]
    async fn echoes_small_and_multi_record_messages() {
        round_trip(64 * 1024, &[1, 100, 4096, 16_384, 16_385, 100_000, 3]).await;
    }

    #[tokio::test]
    async fn records_arriving_a_few_bytes_at_a_time() {
        round_trip(7, &[1, 300, 20_000, 5]).await;
        round_trip(1, &[50, 2]).await;
    }

    /// The client's first message rides in the same write as its
    /// Finished: it is read at once, without waiting for more from the
    /// client (which waits for an answer).
    #[tokio::test]
    async fn data_sent_with_the_finished_message_is_read() {
        use std::io::{Read, Write};
        let p = pki();
        let (server, client_cfg) = configs(&p);
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").expect("name");
        let client = tokio::spawn(async move {
            let mut cc = rustls::ClientConnection::new(client_cfg, name).expect("client");
            // Buffered by rustls until the handshake is done, then sent
            // right behind the Finished, in the same write.
            cc.writer().write_all(b"hello").expect("early write");
            let mut answer = Vec::new();
            let mut buf = [0u8; 8192];
            while answer.len() < 2 {
                while cc.wants_write() {
                    let mut v = Vec::new();
                    cc.write_tls(&mut v).expect("write_tls");
                    a.write_all(&v).await.expect("send");
                }
                let n = a.read(&mut buf).await.expect("recv");
                assert!(n > 0, "server closed");
                cc.read_tls(&mut &buf[..n]).expect("read_tls");
                cc.process_new_packets().expect("client tls");
                let mut plain = [0u8; 16];
                if let Ok(n) = cc.reader().read(&mut plain) {
                    answer.extend_from_slice(&plain[..n]);
                }
            }
            answer
        });
        let mut s = TlsStream::accept(b, server).await.expect("handshake");
        let mut got = [0u8; 5];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("read without more from the client")
            .expect("read");
        assert_eq!(&got, b"hello");
        s.write_all(b"ok").await.expect("write");
        s.flush().await.expect("flush");
        assert_eq!(client.await.expect("client"), b"ok");
    }

    /// A TLS 1.3 KeyUpdate from the client is followed: data before and
    /// after it is read, and the server's answers still decrypt.
    #[tokio::test]
    async fn key_updates_from_the_client_are_followed() {
        let p = pki();
        let (server, client) = configs(&p);
        let connector = TlsConnector::from(client);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let s = TlsStream::accept(b, server).await.expect("handshake");
            echo(s).await
        });
        let name = ServerName::try_from("localhost").expect("name");
        let mut c = connector.connect(name, a).await.expect("client handshake");
        for round in 0..3u8 {
            let data = vec![round; 1000];
            c.write_all(&data).await.expect("write");
            c.flush().await.expect("flush");
            let mut back = vec![0u8; 1000];
            c.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, data);
            c.get_mut().1.refresh_traffic_keys().expect("key update");
        }
        c.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("close");
        assert_eq!(srv.await.expect("server"), 3000);
    }

    /// Between messages the stream holds no buffer: an idle connection
    /// costs the TLS state and nothing more.
    #[tokio::test]
    async fn an_idle_stream_holds_no_buffers() {
        let p = pki();
        let (server, client) = configs(&p);
        let connector = TlsConnector::from(client);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").expect("name");
        let client = tokio::spawn(async move {
            let mut c = connector.connect(name, a).await.expect("client handshake");
            c.write_all(&pattern(30_000)).await.expect("write");
            c.flush().await.expect("flush");
            let mut back = [0u8; 3];
            c.read_exact(&mut back).await.expect("answer");
            c
        });
        let mut s = TlsStream::accept(b, server).await.expect("handshake");
        let mut got = vec![0u8; 30_000];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(got, pattern(30_000));
        s.write_all(b"ack").await.expect("write");
        s.flush().await.expect("flush");
        let _c = client.await.expect("client");
        let held = s.rx.capacity() + s.plain.capacity() + s.tx.capacity();
        assert_eq!(
            held,
            0,
            "rx {} plain {} tx {}",
            s.rx.capacity(),
            s.plain.capacity(),
            s.tx.capacity()
        );
    }
}
