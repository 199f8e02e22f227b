//! Framing of tagged messages: `tag (1 byte) | length (Int32, counts itself) | body`.
//!
//! [`peek_header`] looks at a buffer without consuming or copying anything (the relay's hot path);
//! [`decode_frame`] splits one complete frame off a `BytesMut`. Both return `Ok(None)` when more
//! bytes are needed and reject lengths under 4 or over the per-kind limit before buffering them.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Size limits for messages, in bytes (body plus the 4-byte length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message of any kind (PostgreSQL itself allows 1 GiB).
    pub max_message: usize,
    /// Largest startup packet (PostgreSQL uses 10,000).
    pub max_startup: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message: 256 << 20, max_startup: 10_000 }
    }
}

/// Frontend messages that carry (almost) nothing get a small cap, as PostgreSQL does.
const SMALL_MESSAGE: usize = 10_000;

impl Limits {
    /// The cap for a frontend message of type `tag`.
    pub fn frontend_cap(&self, tag: u8) -> usize {
        match tag {
            b'S' | b'H' | b'X' | b'c' | b'C' | b'D' | b'E' => SMALL_MESSAGE.min(self.max_message),
            b'p' => (64 << 10).min(self.max_message),
            _ => self.max_message,
        }
    }
}

/// The head of one frame: its type byte and total size on the wire (tag + length + body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    pub total: usize,
}

/// One complete message: its type byte and body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Reads the header at the start of `buf` if all 5 header bytes are there.
/// `cap` gives the largest allowed length for a tag.
#[inline]
pub fn peek_header(buf: &[u8], cap: impl Fn(u8) -> usize) -> Result<Option<FrameHeader>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength(len));
    }
    let len = len as usize;
    let max = cap(tag);
    if len > max {
        return Err(ProtocolError::TooLarge { tag: tag as char, len, max });
    }
    Ok(Some(FrameHeader { tag, total: len + 1 }))
}

/// Splits one complete frame off the front of `buf`.
pub fn decode_frame(buf: &mut BytesMut, cap: impl Fn(u8) -> usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(h) = peek_header(buf, cap)? else {
        return Ok(None);
    };
    if buf.len() < h.total {
        buf.reserve(h.total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(h.total);
    frame.advance(5);
    Ok(Some(Frame { tag: h.tag, body: frame.freeze() }))
}

/// Appends a frame with `tag` and `body`.
pub fn encode_frame(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.reserve(5 + body.len());
    buf.extend_from_slice(&[tag]);
    buf.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    buf.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: u8) -> usize {
        1 << 20
    }

    #[test]
    fn incomplete_then_complete() {
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, b'Q', b"select 1\0");
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            assert_eq!(decode_frame(&mut part, any).unwrap(), None, "cut at {cut}");
        }
        let f = decode_frame(&mut wire, any).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"select 1\0");
        assert!(wire.is_empty());
    }

    #[test]
    fn rejects_short_and_oversized_lengths() {
        let mut b = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(decode_frame(&mut b, any), Err(ProtocolError::BadLength(3)));
        let mut b = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert!(matches!(decode_frame(&mut b, any), Err(ProtocolError::TooLarge { .. })));
        let mut b = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode_frame(&mut b, any), Err(ProtocolError::BadLength(-1)));
    }

    #[test]
    fn small_messages_have_small_caps() {
        let l = Limits::default();
        assert_eq!(l.frontend_cap(b'S'), 10_000);
        assert_eq!(l.frontend_cap(b'Q'), l.max_message);
        let mut b = BytesMut::from(&[b'S', 0, 1, 0, 0][..]);
        assert!(matches!(decode_frame(&mut b, |t| l.frontend_cap(t)), Err(ProtocolError::TooLarge { .. })));
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, b'S', b"");
        encode_frame(&mut wire, b'X', b"");
        assert_eq!(decode_frame(&mut wire, any).unwrap().unwrap().tag, b'S');
        assert_eq!(decode_frame(&mut wire, any).unwrap().unwrap().tag, b'X');
        assert_eq!(decode_frame(&mut wire, any).unwrap(), None);
    }
}
