//! Listeners and the life of the process: bind the client port (and an optional Unix socket)
//! and the admin port, accept clients under the `max_clients` limit, and shut down gracefully —
//! stop accepting, let open transactions finish for up to `shutdown_timeout`, then close.

mod handshake;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::context::Context;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A bound, not yet serving, pgsplit.
pub struct Server {
    ctx: Arc<Context>,
    listener: TcpListener,
    unix: Option<(UnixListener, std::path::PathBuf)>,
    admin: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    pub async fn bind(settings: Settings) -> Result<Server, ServerError> {
        Self::bind_with_reload(settings, None).await
    }

    /// Binds, with a way to load the configuration again for RELOAD and SIGHUP.
    pub async fn bind_with_reload(
        settings: Settings,
        reloader: Option<crate::context::Reloader>,
    ) -> Result<Server, ServerError> {
        let tls = match &settings.server.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key)?),
            None => None,
        };
        let addr = settings.server.listen;
        let listener =
            TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr: addr.to_string(), source })?;
        let unix = match &settings.server.unix_socket_dir {
            Some(dir) => {
                let path =
                    dir.join(format!(".s.PGSQL.{}", listener.local_addr().map(|a| a.port()).unwrap_or(addr.port())));
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path)
                    .map_err(|source| ServerError::Bind { addr: path.display().to_string(), source })?;
                Some((l, path))
            }
            None => None,
        };
        let admin = match settings.admin_listen {
            Some(a) => {
                Some(TcpListener::bind(a).await.map_err(|source| ServerError::Bind { addr: a.to_string(), source })?)
            }
            None => None,
        };
        Ok(Server { ctx: Context::new(settings, reloader), listener, unix, admin, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Cancel this token to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.ctx.shutdown.clone()
    }

    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn serve(self) {
        let Server { ctx, listener, unix, admin, tls } = self;
        let metrics = crate::metrics::install();
        let slots = Arc::new(Semaphore::new(ctx.settings().server.max_clients));
        let mut background = Vec::new();
        background.push(tokio::spawn(ctx.pools.clone().reap(ctx.shutdown.clone())));
        let source: crate::replication::monitor::SettingsSource = {
            let ctx = ctx.clone();
            Arc::new(move || {
                let s = ctx.settings();
                let limits = crate::replication::monitor::LagLimits {
                    max_seconds: s.consistency.max_lag.as_secs_f64(),
                    max_bytes: s.consistency.max_lag_bytes,
                };
                (s.monitor.clone(), limits)
            })
        };
        background.push(tokio::spawn(crate::replication::monitor::run(
            ctx.topology.clone(),
            source,
            ctx.shutdown.clone(),
        )));
        if let Some(admin) = admin {
            background.push(tokio::spawn(crate::admin::serve(admin, ctx.clone(), metrics)));
        }
        let unix_path = unix.as_ref().map(|(_, p)| p.clone());
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "pgsplit accepting clients");
        let (unix_listener, _) = match unix {
            Some((l, p)) => (Some(l), Some(p)),
            None => (None, None),
        };
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        let permit = slots.clone().try_acquire_owned().ok();
                        ctx.sessions.spawn(handshake::tcp(ctx.clone(), sock, peer.to_string(), tls.clone(), permit));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                r = async { unix_listener.as_ref().expect("unix").accept().await }, if unix_listener.is_some() => {
                    if let Ok((sock, _)) = r {
                        let permit = slots.clone().try_acquire_owned().ok();
                        ctx.sessions.spawn(handshake::unix(ctx.clone(), sock, permit));
                    }
                }
            }
        }
        drop(listener);
        drop(unix_listener);
        if let Some(p) = unix_path {
            let _ = std::fs::remove_file(p);
        }
        let timeout = ctx.settings().server.shutdown_timeout;
        tracing::info!(clients = ctx.cancels.len(), timeout = ?timeout, "shutting down: no new clients; waiting for open transactions");
        ctx.sessions.close();
        if tokio::time::timeout(timeout, ctx.sessions.wait()).await.is_err() {
            tracing::warn!("shutdown_timeout reached; closing remaining connections");
        }
        ctx.pools.close_all();
        for b in background {
            b.abort();
        }
        tracing::info!("pgsplit stopped");
    }
}
