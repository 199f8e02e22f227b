//! Small, defensive readers and writers shared by the message decoders.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// A cursor over one message body that never reads past its end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        let b = *self.buf.get(self.pos).ok_or(ProtocolError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(self.i32()? as u32)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.remaining() < n {
            return Err(ProtocolError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.cstr_bytes()?).map_err(|_| ProtocolError::InvalidUtf8)
    }

    /// The bytes of a NUL-terminated string, not checked for UTF-8.
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let rest = &self.buf[self.pos..];
        let nul = memchr::memchr(0, rest).ok_or(ProtocolError::MissingNul)?;
        self.pos += nul + 1;
        Ok(&rest[..nul])
    }

    /// A count that announces `n` items of at least `min_item` bytes each: rejected before
    /// anything is allocated when the body cannot hold them.
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(ProtocolError::Invalid("negative count"));
        }
        let n = n as usize;
        if n * min_item > self.remaining() {
            return Err(ProtocolError::Truncated);
        }
        Ok(n)
    }

    /// An Int32-length-prefixed value where -1 means NULL.
    pub(crate) fn nullable(&mut self) -> Result<Option<&'a [u8]>, ProtocolError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(ProtocolError::Invalid("negative value length"));
        }
        Ok(Some(self.bytes(len as usize)?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes(self.remaining()))
        }
    }
}

pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Writes `tag`, a length placeholder, the body written by `f`, then patches the length.
pub(crate) fn write_message(buf: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let start = buf.len();
    buf.put_i32(0);
    f(buf);
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn owned(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}
