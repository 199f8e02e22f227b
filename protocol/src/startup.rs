//! The untagged first packet of a connection: SSLRequest, GSSENCRequest, CancelRequest or a
//! protocol 3.0 StartupMessage. Anything else is a clear error.

use bytes::{Buf, BufMut, BytesMut};

use crate::codec::{put_cstr, Reader};
use crate::error::ProtocolError;

pub const PROTOCOL_3_0: u32 = 196_608;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    CancelRequest {
        pid: i32,
        secret: i32,
    },
    /// StartupMessage parameters in the order the client sent them (`user`, `database`, ...).
    Startup {
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// Decodes the first packet from `buf`, consuming it when complete.
    pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<StartupPacket>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 8 {
            return Err(ProtocolError::BadLength(len));
        }
        let len = len as usize;
        if len > max_len {
            return Err(ProtocolError::TooLarge { tag: '\0', len, max: max_len });
        }
        if buf.len() < len {
            return Ok(None);
        }
        let mut packet = buf.split_to(len);
        packet.advance(4);
        let mut r = Reader::new(&packet);
        let code = r.u32()?;
        let msg = match code {
            SSL_REQUEST_CODE => StartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => StartupPacket::CancelRequest { pid: r.i32()?, secret: r.i32()? },
            PROTOCOL_3_0 => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    if params.len() >= 64 {
                        return Err(ProtocolError::Invalid("too many startup parameters"));
                    }
                    params.push((name.to_owned(), r.cstr()?.to_owned()));
                }
                StartupPacket::Startup { params }
            }
            other if other >> 16 == 3 || other >> 16 == 2 || other >> 16 == 1 => {
                return Err(ProtocolError::UnsupportedProtocol {
                    major: (other >> 16) as u16,
                    minor: (other & 0xffff) as u16,
                })
            }
            other => return Err(ProtocolError::UnknownStartupCode(other)),
        };
        r.finish()?;
        Ok(Some(msg))
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_i32(0);
        match self {
            StartupPacket::SslRequest => buf.put_u32(SSL_REQUEST_CODE),
            StartupPacket::GssEncRequest => buf.put_u32(GSSENC_REQUEST_CODE),
            StartupPacket::CancelRequest { pid, secret } => {
                buf.put_u32(CANCEL_REQUEST_CODE);
                buf.put_i32(*pid);
                buf.put_i32(*secret);
            }
            StartupPacket::Startup { params } => {
                buf.put_u32(PROTOCOL_3_0);
                for (k, v) in params {
                    put_cstr(buf, k);
                    put_cstr(buf, v);
                }
                buf.put_u8(0);
            }
        }
        let len = (buf.len() - start) as i32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The value of a startup parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupPacket::Startup { params } => params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: StartupPacket) {
        let mut b = BytesMut::new();
        p.encode(&mut b);
        let full = b.clone();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(StartupPacket::decode(&mut part, 10_000).unwrap(), None);
        }
        assert_eq!(StartupPacket::decode(&mut b, 10_000).unwrap(), Some(p));
        assert!(b.is_empty());
    }

    #[test]
    fn round_trips() {
        round_trip(StartupPacket::SslRequest);
        round_trip(StartupPacket::GssEncRequest);
        round_trip(StartupPacket::CancelRequest { pid: 42, secret: -7 });
        round_trip(StartupPacket::Startup {
            params: vec![("user".into(), "app".into()), ("database".into(), "app".into())],
        });
    }

    #[test]
    fn rejects_other_protocols_and_codes() {
        let mut b = BytesMut::new();
        b.put_i32(8);
        b.put_u32(2 << 16);
        assert_eq!(
            StartupPacket::decode(&mut b, 10_000),
            Err(ProtocolError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        let mut b = BytesMut::new();
        b.put_i32(8);
        b.put_u32(1234);
        assert_eq!(StartupPacket::decode(&mut b, 10_000), Err(ProtocolError::UnknownStartupCode(1234)));
        // An HTTP request is not a startup packet.
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(StartupPacket::decode(&mut b, 10_000).is_err());
        let mut b = BytesMut::from(&[0u8, 0, 0, 4][..]);
        assert_eq!(StartupPacket::decode(&mut b, 10_000), Err(ProtocolError::BadLength(4)));
    }

    #[test]
    fn rejects_trailing_bytes_after_cancel() {
        let mut b = BytesMut::new();
        b.put_i32(20);
        b.put_u32(CANCEL_REQUEST_CODE);
        b.put_i32(1);
        b.put_i32(2);
        b.put_i32(3);
        assert_eq!(StartupPacket::decode(&mut b, 10_000), Err(ProtocolError::TrailingBytes(4)));
    }
}
