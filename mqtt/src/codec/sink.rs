//! Where the encoder writes: a buffer, or a counter that only adds up
//! sizes, so one body writer serves both `encode` and `encoded_len`.

use bytes::{BufMut, BytesMut};

/// Where encoded bytes go: a buffer, or a counter.
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, s: &[u8]);

    /// Variable byte integer. Values above 268,435,455 cannot be
    /// represented in MQTT; they are written with more than 4 bytes (and
    /// rejected by any decoder) rather than silently truncated.
    fn put_varint(&mut self, mut v: usize) {
        loop {
            let mut b = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            self.put_u8(b);
            if v == 0 {
                break;
            }
        }
    }

    /// Binary data with its two byte length. Callers keep it under 64 KiB.
    fn put_bin(&mut self, b: &[u8]) {
        self.put_u16(b.len() as u16);
        self.put_slice(b);
    }

    /// A UTF-8 string with its two byte length. Callers keep it under 64 KiB.
    fn put_str(&mut self, s: &str) {
        self.put_bin(s.as_bytes());
    }

    fn put_u8_ref(&mut self, v: &u8) {
        self.put_u8(*v);
    }
    fn put_u16_ref(&mut self, v: &u16) {
        self.put_u16(*v);
    }
    fn put_u32_ref(&mut self, v: &u32) {
        self.put_u32(*v);
    }
}

/// A [`Sink`] that only counts.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, s: &[u8]) {
        self.0 += s.len();
    }
    fn put_varint(&mut self, v: usize) {
        self.0 += varint_len(v);
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
}

pub(crate) fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}
