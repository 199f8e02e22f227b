//! One client, from its StartupMessage to its last byte: authentication, the session's first
//! backend connection (whose ParameterStatus values the client sees), then the command loop.
//!
//! The session is the only orchestrator: it asks `router` where each batch goes, takes a
//! connection from `pool`, and relays. Nothing imports this module but `server`.

mod answers;
mod auth;
mod backend;
mod commands;
mod console;
mod dispatch;
mod effects;
mod expect;
mod extended;
mod io;
mod local;
mod relay;
mod retry;
mod sqlprepare;
mod state;

use std::sync::Arc;

use bytes::BytesMut;
use pgsplit_protocol::backend::{encode_parameter_status, encode_ready};
use pgsplit_protocol::{BackendMessage, TxStatus};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::config::PoolMode;
use crate::context::Context;
use crate::error::Error;

pub use state::SessionParams;

/// What the listener knows about a new client.
pub struct ClientInfo {
    pub peer: String,
    pub tls: bool,
    pub params: Vec<(String, String)>,
}

/// Runs a client session to its end. `rbuf` holds bytes already read after the startup packet.
pub async fn run<S>(ctx: Arc<Context>, stream: S, rbuf: BytesMut, info: ClientInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let param = |k: &str| info.params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = param("user").unwrap_or_default();
    let database = param("database").filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    let span = tracing::info_span!("client", addr = %info.peer, user = %user, db = %database, tls = info.tls);
    async move {
        crate::metrics::client_connected();
        let mut io = io::ClientIo::new(stream, rbuf, ctx.settings().server.limits);
        let timeout = ctx.settings().server.startup_timeout;
        if database == console::CONSOLE_DATABASE {
            let login =
                tokio::time::timeout(timeout, Box::pin(auth::authenticate(&mut io, &ctx, &user, &database))).await;
            let result = match login {
                Err(_) => Err(Error::StartupTimeout),
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Box::pin(console::serve(&ctx, &mut io, &user)).await,
            };
            if let Err(e) = result {
                if let Some(r) = e.response() {
                    io.send_error(&r).await;
                }
            }
            crate::metrics::client_disconnected();
            return;
        }
        let started = tokio::time::timeout(timeout, Box::pin(startup(&ctx, &mut io, &info, &user, &database))).await;
        let result: Result<(), Error> = match started {
            Err(_) => Err(Error::StartupTimeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(session)) => {
                tracing::debug!("logged in");
                session.run(io).await;
                crate::metrics::client_disconnected();
                return;
            }
        };
        if let Err(e) = result {
            if let Some(r) = e.response() {
                if r.code.code().starts_with("28") || r.code.code() == "3D000" {
                    crate::metrics::login_failed(r.code.code());
                }
                io.send_error(&r).await;
            }
            match e {
                Error::ClientGone | Error::ClientIo(_) => tracing::debug!("client disconnected"),
                e => tracing::info!(error = %e, "session ended"),
            }
        }
        crate::metrics::client_disconnected();
    }
    .instrument(span)
    .await
}

/// Checks the startup packet, authenticates, and prepares the command loop.
async fn startup<S>(
    ctx: &Arc<Context>,
    io: &mut io::ClientIo<S>,
    info: &ClientInfo,
    user: &str,
    database: &str,
) -> Result<Box<relay::Session>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if user.is_empty() {
        return Err(Error::NoUser);
    }
    if ctx.settings().server.require_tls && !info.tls {
        return Err(Error::TlsRequired);
    }
    if !ctx.settings().database_allowed(database) {
        return Err(Error::UnknownDatabase(database.into()));
    }
    if ctx.shutdown.is_cancelled() {
        return Err(Error::Shutdown);
    }
    let params = SessionParams::from_startup(&info.params).map_err(Error::Unsupported)?;
    let authed = auth::authenticate(io, ctx, user, database).await?;

    let settings = ctx.settings();
    let listed = authed.user.as_ref();
    let size = listed.and_then(|u| u.pool_size).unwrap_or(settings.pool.size);
    let mode = listed.and_then(|u| u.pool_mode).unwrap_or(settings.pool.mode);
    let app = info.params.iter().find(|(k, _)| k == "application_name").map(|(_, v)| v.as_str()).unwrap_or("");
    let login = relay::Login {
        user: user.to_owned(),
        database: database.to_owned(),
        credential: authed.credential,
        pool_size: size,
        application_name: app.to_owned(),
    };
    ctx.topology.catalogs.want(database);
    let cancel = ctx.cancels.register();
    let client = ctx.clients.register(&info.peer, user, database, app, info.tls);
    let startup_vars = params.pgsplit.clone();
    // Boxed so that the session's state sits in the task once, not copied into each future that moves it.
    let mut session = Box::new(relay::Session::new(ctx.clone(), login, client, mode, params, cancel));
    session.apply_startup_vars(&startup_vars)?;
    let reported = session.reported_params().await.map_err(|e| match e {
        // At login every failure is final.
        Error::Pool(crate::pool::PoolError::CheckoutTimeout(_)) => {
            Error::Unsupported("pgsplit: no server connection became free for the login (pool.checkout_timeout)".into())
        }
        e => e,
    })?;
    let mut out = BytesMut::with_capacity(512);
    for (k, v) in &reported {
        encode_parameter_status(&mut out, k, v);
    }
    BackendMessage::BackendKeyData { pid: session.cancel_pid(), secret: session.cancel_secret() }.encode(&mut out);
    encode_ready(&mut out, TxStatus::Idle);
    if mode == PoolMode::Transaction {
        session.release().await;
    }
    io.wbuf.extend_from_slice(&out);
    io.flush().await?;
    Ok(session)
}
