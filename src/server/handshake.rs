//! The untagged start of a client connection: SSLRequest (answered `S` and upgraded when TLS
//! is configured, `N` otherwise), GSSENCRequest (`N`), CancelRequest (forwarded to the right
//! backend, then closed), and the StartupMessage that hands the client to its session.

use std::sync::Arc;

use bytes::BytesMut;
use pgsplit_protocol::{ErrorResponse, ProtocolError, SqlState, StartupPacket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use crate::context::Context;
use crate::session::{self, ClientInfo};

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("client closed the connection during startup")]
    Closed,
    #[error("startup timed out")]
    Timeout,
    #[error("{0}")]
    Refused(&'static str),
}

async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<StartupPacket, HandshakeError> {
    loop {
        if let Some(p) = StartupPacket::decode(buf, max)? {
            return Ok(p);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, e: &HandshakeError) {
    let code = match e {
        HandshakeError::Protocol(ProtocolError::UnsupportedProtocol { .. }) => SqlState::FEATURE_NOT_SUPPORTED,
        _ => SqlState::PROTOCOL_VIOLATION,
    };
    let msg = match e {
        HandshakeError::Protocol(p) => format!("invalid startup packet: {p}"),
        other => other.to_string(),
    };
    let _ = s.write_all(&ErrorResponse::fatal(code, msg).to_bytes()).await;
}

/// Serves one TCP client from its first byte.
pub async fn tcp(
    ctx: Arc<Context>,
    mut tcp: TcpStream,
    peer: String,
    tls: Option<TlsAcceptor>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let _ = tcp.set_nodelay(true);
    let timeout = ctx.settings().server.startup_timeout;
    let max = ctx.settings().server.limits.max_startup;
    let mut buf = BytesMut::with_capacity(256);
    let first = loop {
        let p = match tokio::time::timeout(timeout, read_packet(&mut tcp, &mut buf, max)).await {
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Timeout),
        };
        match p {
            Ok(StartupPacket::SslRequest) => {
                if !buf.is_empty() {
                    // Bytes after SSLRequest, before the handshake, could be injected in the clear.
                    refuse(&mut tcp, &HandshakeError::Refused("unencrypted data after SSL request")).await;
                    return;
                }
                match &tls {
                    Some(acceptor) => {
                        if tcp.write_all(b"S").await.is_err() {
                            return;
                        }
                        match Box::pin(acceptor.accept(tcp)).await {
                            Ok(s) => return Box::pin(after_tls(ctx, s, peer, permit)).await,
                            Err(e) => {
                                tracing::debug!(peer, error = %e, "TLS handshake failed");
                                return;
                            }
                        }
                    }
                    None => {
                        if tcp.write_all(b"N").await.is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(StartupPacket::GssEncRequest) => {
                if tcp.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(p) => break p,
            Err(HandshakeError::Closed) => return,
            Err(e) => {
                refuse(&mut tcp, &e).await;
                return;
            }
        }
    };
    startup(ctx, tcp, buf, first, peer, false, permit).await
}

/// Serves a client over a Unix socket (no TLS there; SSLRequest gets `N`).
pub async fn unix(ctx: Arc<Context>, mut s: tokio::net::UnixStream, permit: Option<OwnedSemaphorePermit>) {
    let timeout = ctx.settings().server.startup_timeout;
    let max = ctx.settings().server.limits.max_startup;
    let mut buf = BytesMut::new();
    let first = loop {
        match tokio::time::timeout(timeout, read_packet(&mut s, &mut buf, max)).await {
            Ok(Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                if s.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(Ok(p)) => break p,
            Ok(Err(HandshakeError::Closed)) => return,
            Ok(Err(e)) => return refuse(&mut s, &e).await,
            Err(_) => return refuse(&mut s, &HandshakeError::Timeout).await,
        }
    };
    startup(ctx, s, buf, first, "unix".into(), false, permit).await
}

async fn after_tls<S>(ctx: Arc<Context>, mut s: S, peer: String, permit: Option<OwnedSemaphorePermit>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = ctx.settings().server.startup_timeout;
    let max = ctx.settings().server.limits.max_startup;
    let mut buf = BytesMut::new();
    let p = match tokio::time::timeout(timeout, read_packet(&mut s, &mut buf, max)).await {
        Ok(Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
            return refuse(&mut s, &HandshakeError::Refused("encryption requested twice")).await
        }
        Ok(Ok(p)) => p,
        Ok(Err(HandshakeError::Closed)) => return,
        Ok(Err(e)) => return refuse(&mut s, &e).await,
        Err(_) => return refuse(&mut s, &HandshakeError::Timeout).await,
    };
    startup(ctx, s, buf, p, peer, true, permit).await
}

async fn startup<S>(
    ctx: Arc<Context>,
    mut s: S,
    buf: BytesMut,
    packet: StartupPacket,
    peer: String,
    tls: bool,
    permit: Option<OwnedSemaphorePermit>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match packet {
        StartupPacket::CancelRequest { pid, secret } => {
            let done = ctx.cancels.cancel(pid, secret).await;
            tracing::debug!(peer, done, "cancel request");
        }
        StartupPacket::Startup { params } => {
            if permit.is_none() {
                let e = crate::error::Error::TooManyClients.response().expect("has a response");
                crate::metrics::login_failed(e.code.code());
                let _ = s.write_all(&e.to_bytes()).await;
                return;
            }
            // Boxed so that idle connections waiting in the handshake stay small.
            Box::pin(session::run(ctx, s, buf, ClientInfo { peer, tls, params })).await;
            drop(permit);
        }
        _ => unreachable!("encryption requests are handled before"),
    }
}
