//! A session on the virtual database `pgsplit`: the SQL admin console. Users in `admin.users`
//! authenticate as they normally would; the commands are run by `admin::console`.

use bytes::BytesMut;
use pgsplit_protocol::backend::{
    encode_command_complete, encode_data_row, encode_parameter_status, encode_ready, encode_row_description,
};
use pgsplit_protocol::{BackendMessage, ErrorResponse, Severity, SqlState, TxStatus};
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::ClientIo;
use crate::admin::console::{execute, Reply};
use crate::context::Context;
use crate::error::Error;

/// The virtual database of the admin console.
pub const CONSOLE_DATABASE: &str = "pgsplit";

/// Logs an admin in (after authentication) and answers console commands until they leave.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Context,
    io: &mut ClientIo<S>,
    user: &str,
) -> Result<(), Error> {
    if !ctx.settings().admin_users.iter().any(|u| u == user) {
        return Err(Error::NotAdmin(user.to_owned()));
    }
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (pgsplit admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        encode_parameter_status(&mut out, k, v);
    }
    BackendMessage::BackendKeyData { pid: 0, secret: 0 }.encode(&mut out);
    encode_ready(&mut out, TxStatus::Idle);
    io.wbuf.extend_from_slice(&out);
    io.flush().await?;
    tracing::info!("admin console session");
    loop {
        let f = tokio::select! {
            f = io.read_frame() => f?,
            _ = ctx.shutdown.cancelled() => return Err(Error::Shutdown),
        };
        match f.tag {
            b'Q' => {
                let sql = std::str::from_utf8(f.body.strip_suffix(&[0]).unwrap_or(&f.body)).unwrap_or("");
                match execute(ctx, sql).await {
                    Reply::Rows { columns, rows, tag } => {
                        encode_row_description(&mut io.wbuf, &columns);
                        for r in &rows {
                            let values: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
                            encode_data_row(&mut io.wbuf, &values);
                        }
                        encode_command_complete(&mut io.wbuf, &tag);
                    }
                    Reply::Done { tag, notices } => {
                        for n in notices {
                            ErrorResponse::new(Severity::Notice, SqlState::SUCCESSFUL_COMPLETION, n)
                                .encode(&mut io.wbuf);
                        }
                        encode_command_complete(&mut io.wbuf, &tag);
                    }
                    Reply::Error(code, message) => ErrorResponse::error(code, message).encode(&mut io.wbuf),
                }
                encode_ready(&mut io.wbuf, TxStatus::Idle);
                io.flush().await?;
            }
            b'X' => return Ok(()),
            b'S' => {
                ErrorResponse::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "the admin console speaks the simple query protocol only",
                )
                .encode(&mut io.wbuf);
                encode_ready(&mut io.wbuf, TxStatus::Idle);
                io.flush().await?;
            }
            _ => {}
        }
    }
}
