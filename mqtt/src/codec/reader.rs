//! The bounds-checked cursor the decoder and the property reader share.

use super::error::DecodeError;
use bytes::{Buf, Bytes};

pub(crate) fn malformed(msg: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(msg.into())
}

pub(crate) fn protocol(msg: impl Into<String>) -> DecodeError {
    DecodeError::Protocol(msg.into())
}

/// A bounds-checked cursor over one packet's body.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(malformed(format!(
                "packet ends inside {what} ({n} bytes needed, {} left)",
                self.buf.len()
            )))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "a byte field")?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2, "a two byte integer")?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "a four byte integer")?;
        Ok(self.buf.get_u32())
    }

    /// Variable byte integer, at most 4 bytes (MQTT 5.0 1.5.5).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("variable byte integer longer than 4 bytes"))
    }

    /// The next `n` bytes as a reader of their own.
    pub(crate) fn sub(&mut self, n: usize, what: &str) -> Result<Reader, DecodeError> {
        self.need(n, what)?;
        Ok(Reader::new(self.buf.split_to(n)))
    }

    /// Binary data: two byte length, then the bytes (zero copy).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.need(n, "binary data")?;
        Ok(self.buf.split_to(n))
    }

    /// UTF-8 encoded string (MQTT 5.0 1.5.4): valid UTF-8 without U+0000.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let n = usize::from(self.u16()?);
        self.need(n, what)?;
        let s = self
            .buf
            .get(..n)
            .ok_or_else(|| malformed(format!("packet ends inside {what}")))?;
        let s =
            std::str::from_utf8(s).map_err(|_| malformed(format!("{what} is not valid UTF-8")))?;
        if s.contains('\0') {
            return Err(malformed(format!("{what} contains U+0000")));
        }
        let out = s.to_owned();
        self.buf.advance(n);
        Ok(out)
    }

    /// Everything that is left (zero copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes are left over.
    pub(crate) fn finish(&self, what: &str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} unexpected trailing bytes in {what}",
                self.buf.len()
            )))
        }
    }
}
