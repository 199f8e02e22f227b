//! Backend (server → client) messages the proxy must understand; everything else stays raw bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{owned, put_cstr, write_message, Reader};
use crate::error::{ErrorFields, ProtocolError};

/// Transaction status from ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries rejected until ROLLBACK).
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'I' => Ok(TxStatus::Idle),
            b'T' => Ok(TxStatus::InTransaction),
            b'E' => Ok(TxStatus::Failed),
            _ => Err(ProtocolError::Invalid("ReadyForQuery status must be I, T or E")),
        }
    }
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// The Authentication request family (`'R'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue {
        data: Bytes,
    },
    SaslFinal {
        data: Bytes,
    },
    /// Kerberos, GSS, SSPI: not supported by pgsplit, kept so it can say which.
    Other {
        code: i32,
        data: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        pid: i32,
        secret: i32,
    },
    ReadyForQuery(TxStatus),
    ErrorResponse(ErrorFields),
    NoticeResponse(ErrorFields),
    CommandComplete {
        tag: String,
    },
    CopyInResponse(CopyResponse),
    CopyOutResponse(CopyResponse),
    CopyBothResponse(CopyResponse),
    NotificationResponse {
        pid: i32,
        channel: String,
        payload: String,
    },
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    EmptyQueryResponse,
    PortalSuspended,
    CopyDone,
    /// RowDescription, DataRow, CopyData, ParameterDescription, FunctionCallResponse,
    /// NegotiateProtocolVersion, ...: carried without decoding.
    Raw {
        tag: u8,
        body: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    pub format: u8,
    pub column_formats: Vec<i16>,
}

impl CopyResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let format = r.u8()?;
        let n = r.count(2)?;
        let column_formats = (0..n).map(|_| r.i16()).collect::<Result<_, _>>()?;
        Ok(CopyResponse { format, column_formats })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.format);
        buf.put_i16(self.column_formats.len() as i16);
        for f in &self.column_formats {
            buf.put_i16(*f);
        }
    }
}

impl BackendMessage {
    pub fn decode(tag: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let msg = match tag {
            b'R' => BackendMessage::Authentication(match r.i32()? {
                0 => Authentication::Ok,
                3 => Authentication::CleartextPassword,
                5 => {
                    let s = r.bytes(4)?;
                    Authentication::Md5Password { salt: [s[0], s[1], s[2], s[3]] }
                }
                10 => {
                    let mut mechanisms = Vec::new();
                    loop {
                        let m = r.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        mechanisms.push(m.to_owned());
                    }
                    Authentication::Sasl { mechanisms }
                }
                11 => Authentication::SaslContinue { data: owned(r.rest()) },
                12 => Authentication::SaslFinal { data: owned(r.rest()) },
                code => Authentication::Other { code, data: owned(r.rest()) },
            }),
            b'S' => BackendMessage::ParameterStatus { name: r.cstr()?.to_owned(), value: r.cstr()?.to_owned() },
            b'K' => BackendMessage::BackendKeyData { pid: r.i32()?, secret: r.i32()? },
            b'Z' => BackendMessage::ReadyForQuery(TxStatus::from_byte(r.u8()?)?),
            b'E' => BackendMessage::ErrorResponse(ErrorFields::decode(r.rest())?),
            b'N' => BackendMessage::NoticeResponse(ErrorFields::decode(r.rest())?),
            b'C' => BackendMessage::CommandComplete { tag: r.cstr()?.to_owned() },
            b'G' => BackendMessage::CopyInResponse(CopyResponse::decode(&mut r)?),
            b'H' => BackendMessage::CopyOutResponse(CopyResponse::decode(&mut r)?),
            b'W' => BackendMessage::CopyBothResponse(CopyResponse::decode(&mut r)?),
            b'A' => BackendMessage::NotificationResponse {
                pid: r.i32()?,
                channel: r.cstr()?.to_owned(),
                payload: r.cstr()?.to_owned(),
            },
            b'1' => BackendMessage::ParseComplete,
            b'2' => BackendMessage::BindComplete,
            b'3' => BackendMessage::CloseComplete,
            b'n' => BackendMessage::NoData,
            b'I' => BackendMessage::EmptyQueryResponse,
            b's' => BackendMessage::PortalSuspended,
            b'c' => BackendMessage::CopyDone,
            _ => BackendMessage::Raw { tag, body: owned(r.rest()) },
        };
        r.finish()?;
        Ok(msg)
    }

    pub fn tag(&self) -> u8 {
        match self {
            BackendMessage::Authentication(_) => b'R',
            BackendMessage::ParameterStatus { .. } => b'S',
            BackendMessage::BackendKeyData { .. } => b'K',
            BackendMessage::ReadyForQuery(_) => b'Z',
            BackendMessage::ErrorResponse(_) => b'E',
            BackendMessage::NoticeResponse(_) => b'N',
            BackendMessage::CommandComplete { .. } => b'C',
            BackendMessage::CopyInResponse(_) => b'G',
            BackendMessage::CopyOutResponse(_) => b'H',
            BackendMessage::CopyBothResponse(_) => b'W',
            BackendMessage::NotificationResponse { .. } => b'A',
            BackendMessage::ParseComplete => b'1',
            BackendMessage::BindComplete => b'2',
            BackendMessage::CloseComplete => b'3',
            BackendMessage::NoData => b'n',
            BackendMessage::EmptyQueryResponse => b'I',
            BackendMessage::PortalSuspended => b's',
            BackendMessage::CopyDone => b'c',
            BackendMessage::Raw { tag, .. } => *tag,
        }
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        write_message(buf, self.tag(), |buf| match self {
            BackendMessage::Authentication(a) => match a {
                Authentication::Ok => buf.put_i32(0),
                Authentication::CleartextPassword => buf.put_i32(3),
                Authentication::Md5Password { salt } => {
                    buf.put_i32(5);
                    buf.put_slice(salt);
                }
                Authentication::Sasl { mechanisms } => {
                    buf.put_i32(10);
                    for m in mechanisms {
                        put_cstr(buf, m);
                    }
                    buf.put_u8(0);
                }
                Authentication::SaslContinue { data } => {
                    buf.put_i32(11);
                    buf.put_slice(data);
                }
                Authentication::SaslFinal { data } => {
                    buf.put_i32(12);
                    buf.put_slice(data);
                }
                Authentication::Other { code, data } => {
                    buf.put_i32(*code);
                    buf.put_slice(data);
                }
            },
            BackendMessage::ParameterStatus { name, value } => {
                put_cstr(buf, name);
                put_cstr(buf, value);
            }
            BackendMessage::BackendKeyData { pid, secret } => {
                buf.put_i32(*pid);
                buf.put_i32(*secret);
            }
            BackendMessage::ReadyForQuery(s) => buf.put_u8(s.byte()),
            BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => f.encode_body(buf),
            BackendMessage::CommandComplete { tag } => put_cstr(buf, tag),
            BackendMessage::CopyInResponse(c)
            | BackendMessage::CopyOutResponse(c)
            | BackendMessage::CopyBothResponse(c) => c.encode(buf),
            BackendMessage::NotificationResponse { pid, channel, payload } => {
                buf.put_i32(*pid);
                put_cstr(buf, channel);
                put_cstr(buf, payload);
            }
            BackendMessage::ParseComplete
            | BackendMessage::BindComplete
            | BackendMessage::CloseComplete
            | BackendMessage::NoData
            | BackendMessage::EmptyQueryResponse
            | BackendMessage::PortalSuspended
            | BackendMessage::CopyDone => {}
            BackendMessage::Raw { body, .. } => buf.put_slice(body),
        })
    }
}

/// Appends ReadyForQuery with `status`.
pub fn encode_ready(buf: &mut BytesMut, status: TxStatus) {
    buf.put_slice(&[b'Z', 0, 0, 0, 5, status.byte()]);
}

/// Appends a body-less message such as ParseComplete (`'1'`) or CloseComplete (`'3'`).
pub fn encode_empty(buf: &mut BytesMut, tag: u8) {
    buf.put_slice(&[tag, 0, 0, 0, 4]);
}

/// Appends ParameterStatus.
pub fn encode_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    write_message(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// Appends CommandComplete.
pub fn encode_command_complete(buf: &mut BytesMut, tag: &str) {
    write_message(buf, b'C', |b| put_cstr(b, tag));
}

/// Appends a RowDescription of text columns (for pgsplit's own result sets, e.g. `SHOW`).
pub fn encode_row_description(buf: &mut BytesMut, columns: &[&str]) {
    write_message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for c in columns {
            put_cstr(b, c);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    });
}

/// Appends a DataRow of text values.
pub fn encode_data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    write_message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
    });
}
