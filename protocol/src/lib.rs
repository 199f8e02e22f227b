//! Sans-IO PostgreSQL wire protocol for pgsplit.
//!
//! This crate owns everything about bytes on the wire and nothing about sockets: framing with
//! size limits ([`framing`]), the untagged startup phase ([`startup`]), typed frontend and backend
//! messages ([`frontend`], [`backend`]), SQLSTATE codes and the ErrorResponse builder
//! ([`error`]), and the authentication exchanges — server-side SCRAM-SHA-256 verification,
//! client-side SCRAM (with a password or with keys recovered from a client's proof) and md5
//! ([`auth`]). Every decoder works on a byte buffer and returns `Ok(None)` when a frame is
//! incomplete; nothing here blocks, allocates per row, or knows about tokio.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
mod codec;
pub mod error;
pub mod framing;
pub mod frontend;
pub mod startup;

pub use backend::{BackendMessage, TxStatus};
pub use error::{ErrorResponse, ProtocolError, Severity, SqlState};
pub use framing::{Frame, FrameHeader, Limits};
pub use frontend::FrontendMessage;
pub use startup::StartupPacket;
