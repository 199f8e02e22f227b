//! The socket to a backend: TCP, or a Unix-domain socket when the node's host is a directory
//! (libpq's convention: a host starting with `/` names the directory that holds
//! `.s.PGSQL.<port>`). On the same machine a Unix socket costs the kernel far less per message
//! than loopback TCP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::NodeAddr;

pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl BackendStream {
    /// Connects to `addr`: its socket file when its host is a directory, else over TCP (with
    /// Nagle off: every message pgsplit writes is a whole request).
    pub async fn connect(addr: &NodeAddr) -> io::Result<BackendStream> {
        match addr.socket_path() {
            Some(path) => Ok(BackendStream::Unix(UnixStream::connect(path).await?)),
            None => {
                let s = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
                s.set_nodelay(true)?;
                Ok(BackendStream::Tcp(s))
            }
        }
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub fn try_read_buf<B: BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        match self {
            BackendStream::Tcp(s) => s.try_read_buf(buf),
            BackendStream::Unix(s) => s.try_read_buf(buf),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
