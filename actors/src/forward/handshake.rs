//! The mutual cookie handshake that opens every forwarding connection.
//!
//! Both ends prove they know the cookie without sending it:
//!
//! ```text
//! server -> client   MAGIC, server_nonce[32], name(server)
//! client -> server   MAGIC, name(client), client_nonce[32],
//!                    HMAC-SHA256(cookie, "emqx-fwd client" | server_nonce | client_nonce | name(server) | name(client))
//! server -> client   0x00, HMAC-SHA256(cookie, "emqx-fwd server" | client_nonce | server_nonce | name(client) | name(server))
//!               or   0x01 and close, if the client's proof is wrong
//! name = len:u16be utf-8 bytes (at most MAX_NAME)
//! ```
//!
//! Fresh random nonces on both sides make every proof single-use; proofs are
//! compared in constant time (`Mac::verify_slice`). The caller bounds the
//! whole exchange with `handshake_timeout`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

/// First bytes on the wire in both directions: protocol name and version.
pub const MAGIC: [u8; 8] = *b"EMQXFWD1";
/// Longest node name accepted.
pub const MAX_NAME: usize = 1024;
const NONCE: usize = 32;
const PROOF: usize = 32;
const ACCEPTED: u8 = 0;
const REJECTED: u8 = 1;

/// Why a handshake failed. Every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a forwarding peer (bad magic)")]
    BadMagic,
    /// The peer opened with a TLS handshake while this node has TLS off.
    #[error("the peer speaks TLS and this node has rpc.driver = tcp: set rpc.driver = ssl on every node")]
    PeerSpeaksTls,
    #[error("invalid node name (empty, too long or not utf-8)")]
    BadName,
    /// The peer's proof does not match our cookie.
    #[error("wrong cookie: node {peer:?} could not prove it knows our cookie")]
    BadCookie { peer: String },
    /// The server refused our proof: the cookies differ.
    #[error("rejected by the peer: cookie mismatch")]
    Rejected,
    #[error("expected node {expected}, the peer is {found}")]
    WrongNode { expected: String, found: String },
    #[error("unexpected handshake status byte {0}")]
    BadStatus(u8),
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    rand::fill(&mut n);
    n
}

fn mac(cookie: &[u8], label: &[u8], parts: [&[u8]; 4]) -> io::Result<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(cookie)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cookie unusable as key"))?;
    m.update(label);
    for p in parts {
        // Length-prefix each part so that no two inputs concatenate alike.
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    Ok(m)
}

fn client_proof(
    cookie: &[u8],
    sn: &[u8],
    cn: &[u8],
    server: &str,
    client: &str,
) -> io::Result<HmacSha256> {
    mac(
        cookie,
        b"emqx-fwd client",
        [sn, cn, server.as_bytes(), client.as_bytes()],
    )
}

fn server_proof(
    cookie: &[u8],
    sn: &[u8],
    cn: &[u8],
    server: &str,
    client: &str,
) -> io::Result<HmacSha256> {
    mac(
        cookie,
        b"emqx-fwd server",
        [cn, sn, client.as_bytes(), server.as_bytes()],
    )
}

fn put_name(s: &mut Vec<u8>, name: &str) -> Result<(), HandshakeError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(HandshakeError::BadName);
    }
    s.extend_from_slice(&(name.len() as u16).to_be_bytes());
    s.extend_from_slice(name.as_bytes());
    Ok(())
}

async fn read_name<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, HandshakeError> {
    let len = s.read_u16().await? as usize;
    if len == 0 || len > MAX_NAME {
        return Err(HandshakeError::BadName);
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    String::from_utf8(buf).map_err(|_| HandshakeError::BadName)
}

async fn read_magic<S: AsyncRead + Unpin>(s: &mut S) -> Result<(), HandshakeError> {
    let mut m = [0u8; 8];
    // A TLS record starts 0x16 0x03 (a handshake, TLS 1.x): the peer has
    // TLS on and this node has not. Told apart before reading all 8 bytes,
    // which a ClientHello may not be followed by.
    s.read_exact(&mut m[..2]).await?;
    if m[..2] == [0x16, 0x03] {
        return Err(HandshakeError::PeerSpeaksTls);
    }
    s.read_exact(&mut m[2..]).await?;
    if m != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    Ok(())
}

/// The accepting side. Returns the client's proven node name.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    me: &str,
    cookie: &str,
) -> Result<String, HandshakeError> {
    let cookie = cookie.as_bytes();
    let sn = nonce();
    let mut out = Vec::with_capacity(8 + NONCE + 2 + me.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&sn);
    put_name(&mut out, me)?;
    s.write_all(&out).await?;
    s.flush().await?;

    read_magic(s).await?;
    let client = read_name(s).await?;
    let mut cn = [0u8; NONCE];
    s.read_exact(&mut cn).await?;
    let mut proof = [0u8; PROOF];
    s.read_exact(&mut proof).await?;
    if client_proof(cookie, &sn, &cn, me, &client)?
        .verify_slice(&proof)
        .is_err()
    {
        // Say so before closing, so the other side can log the real reason.
        let _ = s.write_all(&[REJECTED]).await;
        let _ = s.flush().await;
        return Err(HandshakeError::BadCookie { peer: client });
    }
    let mut out = Vec::with_capacity(1 + PROOF);
    out.push(ACCEPTED);
    out.extend_from_slice(
        &server_proof(cookie, &sn, &cn, me, &client)?
            .finalize()
            .into_bytes(),
    );
    s.write_all(&out).await?;
    s.flush().await?;
    Ok(client)
}

/// The connecting side. `expected` is the node name the peer must have.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    me: &str,
    expected: &str,
    cookie: &str,
) -> Result<(), HandshakeError> {
    let cookie = cookie.as_bytes();
    read_magic(s).await?;
    let mut sn = [0u8; NONCE];
    s.read_exact(&mut sn).await?;
    let server = read_name(s).await?;
    if server != expected {
        return Err(HandshakeError::WrongNode {
            expected: expected.to_owned(),
            found: server,
        });
    }
    let cn = nonce();
    let mut out = Vec::with_capacity(8 + 2 + me.len() + NONCE + PROOF);
    out.extend_from_slice(&MAGIC);
    put_name(&mut out, me)?;
    out.extend_from_slice(&cn);
    out.extend_from_slice(
        &client_proof(cookie, &sn, &cn, &server, me)?
            .finalize()
            .into_bytes(),
    );
    s.write_all(&out).await?;
    s.flush().await?;

    match s.read_u8().await? {
        ACCEPTED => {}
        REJECTED => return Err(HandshakeError::Rejected),
        b => return Err(HandshakeError::BadStatus(b)),
    }
    let mut proof = [0u8; PROOF];
    s.read_exact(&mut proof).await?;
    if server_proof(cookie, &sn, &cn, &server, me)?
        .verify_slice(&proof)
        .is_err()
    {
        return Err(HandshakeError::BadCookie { peer: server });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        server_cookie: &str,
        client_cookie: &str,
    ) -> (Result<String, HandshakeError>, Result<(), HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (sc, cc) = (server_cookie.to_owned(), client_cookie.to_owned());
        let srv = tokio::spawn(async move { accept(&mut a, "b@h", &sc).await });
        let cli = connect(&mut b, "a@h", "b@h", &cc).await;
        (srv.await.unwrap(), cli)
    }

    #[tokio::test]
    async fn same_cookie_succeeds_both_ways() {
        let (s, c) = pair("secret", "secret").await;
        assert_eq!(s.unwrap(), "a@h");
        c.unwrap();
    }

    #[tokio::test]
    async fn wrong_cookie_fails_on_both_ends() {
        let (s, c) = pair("secret", "other").await;
        assert!(matches!(s, Err(HandshakeError::BadCookie { peer }) if peer == "a@h"));
        assert!(matches!(c, Err(HandshakeError::Rejected)));
    }

    #[tokio::test]
    async fn wrong_node_name_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        tokio::spawn(async move { accept(&mut a, "x@h", "c").await });
        let r = connect(&mut b, "a@h", "b@h", "c").await;
        assert!(matches!(r, Err(HandshakeError::WrongNode { .. })));
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            // hold the stream open
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        });
        let r = accept(&mut a, "b@h", "c").await;
        assert!(matches!(r, Err(HandshakeError::BadMagic)));
    }
}
