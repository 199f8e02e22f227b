//! One backend connection: connect (TCP or Unix socket), StartupMessage, authentication as the server asks
//! (SCRAM-SHA-256 with a password or pass-through keys, md5, cleartext, trust), and the
//! bookkeeping the session needs to reuse it safely: reported parameters, which session state
//! it carries (`state_fp`), which named statements it has prepared.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pgsplit_protocol::auth::{md5_response, random_nonce, ScramClient, ScramCredential, SCRAM_SHA_256};
use pgsplit_protocol::backend::Authentication;
use pgsplit_protocol::framing::{decode_frame, Frame};
use pgsplit_protocol::frontend::{encode_query, encode_terminate};
use pgsplit_protocol::{BackendMessage, FrontendMessage, StartupPacket, TxStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::BackendStream;
use super::PoolError;
use crate::config::NodeAddr;

/// How pgsplit proves itself to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No secret: works only where the backend trusts pgsplit.
    None,
    Password(String),
    /// A stored md5 secret (`md5...`), enough for md5 challenges.
    Md5(String),
    /// SCRAM keys recovered from a client's login against the same verifier.
    Scram(ScramCredential),
}

/// Largest backend message pgsplit buffers (PostgreSQL's own limit is 1 GiB).
pub const MAX_BACKEND_MESSAGE: usize = 1 << 30;

/// Largest number of pgsplit-named statements kept on one connection before it is retired.
pub const MAX_PREPARED_PER_CONN: usize = 2000;

pub struct ServerConn {
    pub stream: BackendStream,
    /// Bytes read from the backend and not yet processed.
    pub rbuf: BytesMut,
    /// Shared with the cancel slot of the session that holds the connection.
    pub addr: Arc<NodeAddr>,
    /// BackendKeyData: what a CancelRequest for this connection must carry.
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values as the backend last reported them.
    pub params: Vec<(String, String)>,
    /// Fingerprint of the session settings applied here (0: none since connect/reset).
    pub state_fp: u64,
    /// Ids of pgsplit-named prepared statements that exist on this connection.
    pub prepared: HashSet<u64>,
    /// pgsplit's names of SQL-level prepared statements (`PREPARE`) that exist here.
    pub sql_prepared: HashSet<String>,
    /// Set when the connection is in an unknown state; it is then closed, never reused.
    pub broken: bool,
    /// Its entry in the server registry (SHOW SERVERS).
    pub registration: Option<super::ServerRegistration>,
    pub created: Instant,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConn({} pid {})", self.addr, self.pid)
    }
}

async fn read_frame(stream: &mut BackendStream, buf: &mut BytesMut) -> Result<Frame, PoolError> {
    loop {
        if let Some(f) = decode_frame(buf, |_| MAX_BACKEND_MESSAGE)? {
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(PoolError::Closed);
        }
    }
}

/// Decodes a DataRow of text values.
fn decode_data_row(body: &[u8]) -> Result<Vec<Option<String>>, PoolError> {
    use pgsplit_protocol::ProtocolError;
    let bad = || PoolError::Protocol(ProtocolError::Truncated);
    let n = i16::from_be_bytes([*body.first().ok_or_else(bad)?, *body.get(1).ok_or_else(bad)?]);
    let mut pos = 2usize;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len_bytes = body.get(pos..pos + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        pos += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = body.get(pos..pos + len as usize).ok_or_else(bad)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            pos += len as usize;
        }
    }
    Ok(row)
}

impl ServerConn {
    /// Opens and authenticates a connection, waiting for its first ReadyForQuery.
    pub async fn connect(
        addr: &NodeAddr,
        user: &str,
        database: &str,
        credential: &Credential,
        timeout: Duration,
    ) -> Result<ServerConn, PoolError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, user, database, credential))
            .await
            .map_err(|_| PoolError::ConnectTimeout(addr.to_string()))?
    }

    async fn connect_inner(
        addr: &NodeAddr,
        user: &str,
        database: &str,
        credential: &Credential,
    ) -> Result<ServerConn, PoolError> {
        let mut stream = BackendStream::connect(addr).await.map_err(|e| PoolError::Connect(addr.to_string(), e))?;
        let mut out = BytesMut::with_capacity(256);
        StartupPacket::Startup { params: vec![("user".into(), user.into()), ("database".into(), database.into())] }
            .encode(&mut out);
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(8192);
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::new(),
            addr: Arc::new(addr.clone()),
            pid: 0,
            secret: 0,
            params: Vec::new(),
            state_fp: 0,
            prepared: HashSet::new(),
            sql_prepared: HashSet::new(),
            broken: false,
            registration: None,
            created: Instant::now(),
        };
        let mut scram: Option<ScramClient> = None;
        loop {
            let f = read_frame(&mut conn.stream, &mut buf).await?;
            let msg = BackendMessage::decode(f.tag, &f.body)?;
            out.clear();
            match msg {
                BackendMessage::Authentication(a) => match a {
                    Authentication::Ok => {}
                    Authentication::CleartextPassword => match credential {
                        Credential::Password(p) => {
                            FrontendMessage::PasswordMessage { password: p.clone() }.encode(&mut out)
                        }
                        _ => return Err(PoolError::NoCredential("a cleartext password")),
                    },
                    Authentication::Md5Password { salt } => {
                        let secret = match credential {
                            Credential::Password(p) => pgsplit_protocol::auth::md5_secret(user, p),
                            Credential::Md5(s) => s.clone(),
                            _ => return Err(PoolError::NoCredential("an md5 password")),
                        };
                        FrontendMessage::PasswordMessage { password: md5_response(&secret, salt) }.encode(&mut out)
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                            return Err(PoolError::Unsupported(format!("SASL mechanisms {mechanisms:?}")));
                        }
                        let cred = match credential {
                            Credential::Password(p) => ScramCredential::Password(p.clone()),
                            Credential::Scram(c) => c.clone(),
                            _ => return Err(PoolError::NoCredential("a SCRAM password")),
                        };
                        let client = ScramClient::new(cred, random_nonce());
                        FrontendMessage::SaslInitialResponse {
                            mechanism: SCRAM_SHA_256.into(),
                            data: Some(client.client_first().into_bytes().into()),
                        }
                        .encode(&mut out);
                        scram = Some(client);
                    }
                    Authentication::SaslContinue { data } => {
                        let client = scram.as_mut().ok_or(PoolError::Unexpected("SASL continue"))?;
                        let reply = client.server_first(&data)?;
                        FrontendMessage::SaslResponse { data: reply.into_bytes().into() }.encode(&mut out);
                    }
                    Authentication::SaslFinal { data } => {
                        scram.as_ref().ok_or(PoolError::Unexpected("SASL final"))?.server_final(&data)?;
                    }
                    Authentication::Other { code, .. } => {
                        return Err(PoolError::Unsupported(format!("authentication request {code}")))
                    }
                },
                BackendMessage::ParameterStatus { name, value } => conn.set_param(name, value),
                BackendMessage::BackendKeyData { pid, secret } => {
                    conn.pid = pid;
                    conn.secret = secret;
                }
                BackendMessage::ErrorResponse(e) => return Err(PoolError::Server(e)),
                BackendMessage::NoticeResponse(_) | BackendMessage::Raw { tag: b'v', .. } => {}
                BackendMessage::ReadyForQuery(_) => {
                    conn.rbuf = buf;
                    return Ok(conn);
                }
                _ => return Err(PoolError::Unexpected("message during startup")),
            }
            if !out.is_empty() {
                conn.stream.write_all(&out).await?;
            }
        }
    }

    /// Checks, without blocking, that an idle connection is still open: a server that shut down
    /// or terminated it has sent an error and closed it. Asynchronous messages that arrived
    /// while idle (ParameterStatus after a reload, notices) are kept for the next user.
    pub fn idle_and_alive(&mut self) -> bool {
        loop {
            // reads into the connection's own buffer (which grows as needed)
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return false,
                Ok(_) => {
                    let mut at = 0;
                    while let Ok(Some(h)) =
                        pgsplit_protocol::framing::peek_header(&self.rbuf[at..], |_| MAX_BACKEND_MESSAGE)
                    {
                        if h.tag == b'E' {
                            return false;
                        }
                        at += h.total;
                        if at >= self.rbuf.len() {
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn set_param(&mut self, name: String, value: String) {
        match self.params.iter_mut().find(|(k, _)| *k == name) {
            Some(p) => p.1 = value,
            None => self.params.push((name, value)),
        }
    }

    /// Marks the connection as held by a client (or not) for SHOW SERVERS.
    pub fn set_in_use(&self, in_use: bool) {
        if let Some(r) = &self.registration {
            r.entry.in_use.store(in_use, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Runs `sql` as a simple query and discards its results, keeping ParameterStatus updates.
    /// Fails with the server's error if any statement fails; the connection is then broken.
    pub async fn execute(&mut self, sql: &str) -> Result<(), PoolError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        encode_query(&mut out, sql);
        self.broken = true;
        self.stream.write_all(&out).await?;
        let mut error = None;
        loop {
            let f = read_frame(&mut self.stream, &mut self.rbuf).await?;
            match f.tag {
                b'S' => {
                    if let BackendMessage::ParameterStatus { name, value } = BackendMessage::decode(f.tag, &f.body)? {
                        self.set_param(name, value);
                    }
                }
                b'E' => {
                    if let BackendMessage::ErrorResponse(e) = BackendMessage::decode(f.tag, &f.body)? {
                        error = Some(e);
                    }
                }
                b'Z' => {
                    let status =
                        TxStatus::from_byte(*f.body.first().ok_or(pgsplit_protocol::ProtocolError::Truncated)?)?;
                    return match (error, status) {
                        (Some(e), _) => Err(PoolError::Server(e)),
                        (None, TxStatus::Idle) => {
                            self.broken = false;
                            Ok(())
                        }
                        _ => Err(PoolError::Unexpected("transaction left open by a reset")),
                    };
                }
                b'G' | b'H' | b'W' => return Err(PoolError::Unexpected("COPY during a reset")),
                _ => {}
            }
        }
    }

    /// Runs a query that returns text rows (for pgsplit's own lookups, never on the hot path).
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PoolError> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        encode_query(&mut out, sql);
        self.broken = true;
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = read_frame(&mut self.stream, &mut self.rbuf).await?;
            match f.tag {
                b'D' => rows.push(decode_data_row(&f.body)?),
                b'E' => {
                    if let BackendMessage::ErrorResponse(e) = BackendMessage::decode(f.tag, &f.body)? {
                        error = Some(e);
                    }
                }
                b'Z' => {
                    self.broken = f.body.first() != Some(&b'I');
                    return match error {
                        Some(e) => Err(PoolError::Server(e)),
                        None => Ok(rows),
                    };
                }
                b'G' | b'H' | b'W' => return Err(PoolError::Unexpected("COPY in a lookup query")),
                _ => {}
            }
        }
    }

    /// Sends Terminate and closes, ignoring errors (the connection is going away anyway).
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        encode_terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(200), self.stream.write_all(&out)).await;
    }

    /// Drops already-read bytes (used after a read the caller has fully consumed).
    pub fn consume(&mut self, n: usize) {
        self.rbuf.advance(n);
    }
}
