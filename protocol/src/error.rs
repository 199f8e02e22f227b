//! Protocol errors, SQLSTATE codes, and the ErrorResponse/NoticeResponse builder.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_cstr, write_message, Reader};

/// Why a byte sequence is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message length {0} is invalid")]
    BadLength(i32),
    #[error("message of type {tag:?} with length {len} exceeds the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("message is truncated")]
    Truncated,
    #[error("string is missing its NUL terminator")]
    MissingNul,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("{0} unexpected trailing bytes in message")]
    TrailingBytes(usize),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("unknown startup request code {0}")]
    UnknownStartupCode(u32),
    #[error("unknown message type {0:?}")]
    UnknownMessage(char),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState("00000");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: SqlState = SqlState("08001");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    pub const INVALID_CURSOR_NAME: SqlState = SqlState("34000");
    pub const ACTIVE_SQL_TRANSACTION: SqlState = SqlState("25001");
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState("25006");
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
    pub const INSUFFICIENT_RESOURCES: SqlState = SqlState("53000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CRASH_SHUTDOWN: SqlState = SqlState("57P02");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    pub const INVALID_TEXT_REPRESENTATION: SqlState = SqlState("22P02");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const CANT_CHANGE_RUNTIME_PARAM: SqlState = SqlState("55P02");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");

    pub fn code(&self) -> &'static str {
        self.0
    }
}

/// Severity of an error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// Field codes of ErrorResponse / NoticeResponse.
pub mod field {
    pub const SEVERITY: u8 = b'S';
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
}

/// The fields of an ErrorResponse or NoticeResponse, in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    pub fields: Vec<(u8, String)>,
}

impl ErrorFields {
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            fields.push((code, r.cstr()?.to_owned()));
        }
        r.finish()?;
        Ok(ErrorFields { fields })
    }

    pub fn encode_body(&self, buf: &mut BytesMut) {
        for (code, value) in &self.fields {
            buf.put_u8(*code);
            put_cstr(buf, value);
        }
        buf.put_u8(0);
    }

    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE, or "" if absent.
    pub fn code(&self) -> &str {
        self.get(field::CODE).unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.get(field::MESSAGE).unwrap_or("")
    }

    pub fn severity(&self) -> &str {
        self.get(field::SEVERITY_NONLOCALIZED).or_else(|| self.get(field::SEVERITY)).unwrap_or("")
    }
}

/// Builder for the errors and notices pgsplit itself sends to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorResponse {
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> Self {
        ErrorResponse { severity, code, message: message.into(), detail: None, hint: None }
    }

    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn fields(&self) -> ErrorFields {
        let mut fields = vec![
            (field::SEVERITY, self.severity.as_str().to_owned()),
            (field::SEVERITY_NONLOCALIZED, self.severity.as_str().to_owned()),
            (field::CODE, self.code.0.to_owned()),
            (field::MESSAGE, self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((field::DETAIL, d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((field::HINT, h.clone()));
        }
        ErrorFields { fields }
    }

    /// Appends this as an ErrorResponse ('E'), or a NoticeResponse ('N') for non-error severities.
    pub fn encode(&self, buf: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Error | Severity::Fatal | Severity::Panic => b'E',
            _ => b'N',
        };
        let fields = self.fields();
        write_message(buf, tag, |b| fields.encode_body(b));
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b
    }
}
