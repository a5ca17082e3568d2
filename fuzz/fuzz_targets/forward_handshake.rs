//! The forwarding channel's cookie handshake, both sides, against a peer
//! that sends any bytes: no panic, no hang, and never a success (the peer
//! cannot know the cookie's HMAC).
#![no_main]

mod rt;

use emqx_actors::forward::handshake::{accept, connect};
use libfuzzer_sys::fuzz_target;
use rt::rt;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A peer that has sent `input` and then closed; what we write is dropped.
struct Peer<'a> {
    input: &'a [u8],
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut peer = Peer { input: rest };
    rt().block_on(async {
        if sel % 2 == 0 {
            let r = accept(&mut peer, "emqx1@127.0.0.1", "cookie").await;
            assert!(r.is_err(), "a stranger passed the handshake: {r:?}");
        } else {
            let r = connect(&mut peer, "emqx1@127.0.0.1", "emqx2@127.0.0.1", "cookie").await;
            assert!(r.is_err(), "a stranger passed the handshake: {r:?}");
        }
    });
});
