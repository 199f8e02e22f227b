//! The client's byte stream during startup and authentication: buffered frames in, buffered
//! messages out.

use bytes::BytesMut;
use pgsplit_protocol::framing::{decode_frame, Frame};
use pgsplit_protocol::{ErrorResponse, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;

pub struct ClientIo<S> {
    pub stream: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientIo<S> {
    pub fn new(stream: S, rbuf: BytesMut, limits: Limits) -> Self {
        ClientIo { stream, rbuf, wbuf: BytesMut::with_capacity(1024), limits }
    }

    pub async fn read_frame(&mut self) -> Result<Frame, Error> {
        loop {
            let limits = self.limits;
            if let Some(f) = decode_frame(&mut self.rbuf, |t| limits.frontend_cap(t)).map_err(Error::ClientProtocol)? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.rbuf).await.map_err(Error::ClientIo)? == 0 {
                return Err(Error::ClientGone);
            }
        }
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.map_err(Error::ClientIo)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Sends an error and flushes, ignoring failures (the client may be gone already).
    pub async fn send_error(&mut self, e: &ErrorResponse) {
        e.encode(&mut self.wbuf);
        crate::metrics::error_sent(e.code.code());
        let _ = self.flush().await;
    }
}
