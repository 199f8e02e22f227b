//! Typed frontend (client → server) messages.
//!
//! [`FrontendMessage::decode`] turns one frame into a typed message; [`FrontendMessage::encode`]
//! writes it back. The `'p'` message means different things at different points of the
//! authentication exchange, so it decodes to [`FrontendMessage::AuthData`] and
//! [`FrontendMessage::decode_auth`] types it once the caller knows what it expects.
//! For the relay's hot path, [`bind_statement`] reads only the names at the head of a Bind, and
//! [`parse_statement`] the name and text of a Parse, and [`parse_repeats`] compares a Parse
//! with the last one without decoding it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{owned, put_cstr, write_message, Reader};
use crate::error::ProtocolError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query {
        sql: String,
    },
    Parse {
        name: String,
        sql: String,
        param_types: Vec<u32>,
    },
    Bind(Bind),
    Describe {
        kind: Target,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        kind: Target,
        name: String,
    },
    Sync,
    Flush,
    CopyData(Bytes),
    CopyDone,
    CopyFail {
        message: String,
    },
    FunctionCall(FunctionCall),
    Terminate,
    /// A `'p'` message before it is typed with [`FrontendMessage::decode_auth`].
    AuthData(Bytes),
    PasswordMessage {
        password: String,
    },
    SaslInitialResponse {
        mechanism: String,
        data: Option<Bytes>,
    },
    SaslResponse {
        data: Bytes,
    },
}

/// Whether Describe/Close names a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
    fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            _ => Err(ProtocolError::Invalid("Describe/Close target must be 'S' or 'P'")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub oid: u32,
    pub arg_formats: Vec<i16>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: i16,
}

/// What a `'p'` message is expected to be at this point of authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthExpect {
    Password,
    SaslInitial,
    SaslContinue,
}

fn formats(r: &mut Reader<'_>) -> Result<Vec<i16>, ProtocolError> {
    let n = r.count(2)?;
    (0..n).map(|_| r.i16()).collect()
}

fn values(r: &mut Reader<'_>) -> Result<Vec<Option<Bytes>>, ProtocolError> {
    let n = r.count(4)?;
    (0..n).map(|_| Ok(r.nullable()?.map(owned))).collect()
}

fn put_formats(buf: &mut BytesMut, f: &[i16]) {
    buf.put_i16(f.len() as i16);
    for x in f {
        buf.put_i16(*x);
    }
}

fn put_values(buf: &mut BytesMut, v: &[Option<Bytes>]) {
    buf.put_i16(v.len() as i16);
    for x in v {
        match x {
            None => buf.put_i32(-1),
            Some(b) => {
                buf.put_i32(b.len() as i32);
                buf.put_slice(b);
            }
        }
    }
}

impl FrontendMessage {
    pub fn decode(tag: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let msg = match tag {
            b'Q' => FrontendMessage::Query { sql: r.cstr()?.to_owned() },
            b'P' => {
                let name = r.cstr()?.to_owned();
                let sql = r.cstr()?.to_owned();
                let n = r.count(4)?;
                let param_types = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                FrontendMessage::Parse { name, sql, param_types }
            }
            b'B' => FrontendMessage::Bind(Bind {
                portal: r.cstr()?.to_owned(),
                statement: r.cstr()?.to_owned(),
                param_formats: formats(&mut r)?,
                params: values(&mut r)?,
                result_formats: formats(&mut r)?,
            }),
            b'D' => FrontendMessage::Describe { kind: Target::from_byte(r.u8()?)?, name: r.cstr()?.to_owned() },
            b'E' => FrontendMessage::Execute { portal: r.cstr()?.to_owned(), max_rows: r.i32()? },
            b'C' => FrontendMessage::Close { kind: Target::from_byte(r.u8()?)?, name: r.cstr()?.to_owned() },
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'X' => FrontendMessage::Terminate,
            b'd' => FrontendMessage::CopyData(owned(r.rest())),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail { message: r.cstr()?.to_owned() },
            b'F' => FrontendMessage::FunctionCall(FunctionCall {
                oid: r.u32()?,
                arg_formats: formats(&mut r)?,
                args: values(&mut r)?,
                result_format: r.i16()?,
            }),
            b'p' => FrontendMessage::AuthData(owned(r.rest())),
            other => return Err(ProtocolError::UnknownMessage(other as char)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Types the body of a `'p'` message.
    pub fn decode_auth(body: &[u8], expect: AuthExpect) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let msg = match expect {
            AuthExpect::Password => FrontendMessage::PasswordMessage { password: r.cstr()?.to_owned() },
            AuthExpect::SaslInitial => {
                let mechanism = r.cstr()?.to_owned();
                let data = r.nullable()?.map(owned);
                FrontendMessage::SaslInitialResponse { mechanism, data }
            }
            AuthExpect::SaslContinue => FrontendMessage::SaslResponse { data: owned(r.rest()) },
        };
        r.finish()?;
        Ok(msg)
    }

    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query { .. } => b'Q',
            FrontendMessage::Parse { .. } => b'P',
            FrontendMessage::Bind(_) => b'B',
            FrontendMessage::Describe { .. } => b'D',
            FrontendMessage::Execute { .. } => b'E',
            FrontendMessage::Close { .. } => b'C',
            FrontendMessage::Sync => b'S',
            FrontendMessage::Flush => b'H',
            FrontendMessage::CopyData(_) => b'd',
            FrontendMessage::CopyDone => b'c',
            FrontendMessage::CopyFail { .. } => b'f',
            FrontendMessage::FunctionCall(_) => b'F',
            FrontendMessage::Terminate => b'X',
            FrontendMessage::AuthData(_)
            | FrontendMessage::PasswordMessage { .. }
            | FrontendMessage::SaslInitialResponse { .. }
            | FrontendMessage::SaslResponse { .. } => b'p',
        }
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        write_message(buf, self.tag(), |buf| match self {
            FrontendMessage::Query { sql } => put_cstr(buf, sql),
            FrontendMessage::Parse { name, sql, param_types } => {
                put_cstr(buf, name);
                put_cstr(buf, sql);
                buf.put_i16(param_types.len() as i16);
                for t in param_types {
                    buf.put_u32(*t);
                }
            }
            FrontendMessage::Bind(b) => {
                put_cstr(buf, &b.portal);
                put_cstr(buf, &b.statement);
                put_formats(buf, &b.param_formats);
                put_values(buf, &b.params);
                put_formats(buf, &b.result_formats);
            }
            FrontendMessage::Describe { kind, name } | FrontendMessage::Close { kind, name } => {
                buf.put_u8(kind.byte());
                put_cstr(buf, name);
            }
            FrontendMessage::Execute { portal, max_rows } => {
                put_cstr(buf, portal);
                buf.put_i32(*max_rows);
            }
            FrontendMessage::Sync | FrontendMessage::Flush | FrontendMessage::CopyDone | FrontendMessage::Terminate => {
            }
            FrontendMessage::CopyData(d) | FrontendMessage::AuthData(d) | FrontendMessage::SaslResponse { data: d } => {
                buf.put_slice(d)
            }
            FrontendMessage::CopyFail { message } => put_cstr(buf, message),
            FrontendMessage::FunctionCall(f) => {
                buf.put_u32(f.oid);
                put_formats(buf, &f.arg_formats);
                put_values(buf, &f.args);
                buf.put_i16(f.result_format);
            }
            FrontendMessage::PasswordMessage { password } => put_cstr(buf, password),
            FrontendMessage::SaslInitialResponse { mechanism, data } => {
                put_cstr(buf, mechanism);
                match data {
                    None => buf.put_i32(-1),
                    Some(d) => {
                        buf.put_i32(d.len() as i32);
                        buf.put_slice(d);
                    }
                }
            }
        })
    }
}

/// The statement name and query text of a Parse body, borrowed (the parameter types are not
/// read): what routing needs, without copying the query.
pub fn parse_statement(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new(body);
    let name = r.cstr()?;
    let sql = r.cstr()?;
    Ok((name, sql))
}

/// Whether a Parse body carries exactly this query text and these parameter types: compared
/// as bytes, without copying or decoding (a driver that re-parses its unnamed statement for
/// every query sends the same Parse each time).
pub fn parse_repeats(body: &[u8], sql: &str, types: &[u32]) -> Result<bool, ProtocolError> {
    let mut r = Reader::new(body);
    r.cstr_bytes()?;
    if r.cstr_bytes()? != sql.as_bytes() {
        return Ok(false);
    }
    let n = r.count(4)?;
    if n != types.len() {
        return Ok(false);
    }
    for &t in types {
        if r.u32()? != t {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The portal and statement names at the head of a Bind body, and where the rest starts.
/// Reads nothing else, so a Bind with large parameters costs nothing to route.
pub fn bind_statement(body: &[u8]) -> Result<(&str, &str, usize), ProtocolError> {
    let mut r = Reader::new(body);
    let portal = r.cstr()?;
    let stmt = r.cstr()?;
    let used = body.len() - r.remaining();
    Ok((portal, stmt, used))
}

/// Re-encodes a Bind frame with another statement name, copying the parameters verbatim.
pub fn rewrite_bind(buf: &mut BytesMut, body: &[u8], statement: &str) -> Result<(), ProtocolError> {
    let (portal, _, rest) = bind_statement(body)?;
    write_message(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_slice(&body[rest..]);
    });
    Ok(())
}

/// Appends a Describe or Close for `name`.
pub fn encode_target(buf: &mut BytesMut, tag: u8, kind: Target, name: &str) {
    write_message(buf, tag, |b| {
        b.put_u8(kind.byte());
        put_cstr(b, name);
    });
}

/// Appends a Parse message.
pub fn encode_parse(buf: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    write_message(buf, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.put_i16(param_types.len() as i16);
        for t in param_types {
            b.put_u32(*t);
        }
    });
}

/// Appends a simple Query message.
pub fn encode_query(buf: &mut BytesMut, sql: &str) {
    write_message(buf, b'Q', |b| put_cstr(b, sql));
}

/// Appends a Sync message.
pub fn encode_sync(buf: &mut BytesMut) {
    buf.put_slice(&[b'S', 0, 0, 0, 4]);
}

/// Appends a Terminate message.
pub fn encode_terminate(buf: &mut BytesMut) {
    buf.put_slice(&[b'X', 0, 0, 0, 4]);
}
