//! Taking and giving back backend connections: checkout, applying the session's settings,
//! attaching the cancel key, and returning a connection only when it is clean.

use std::time::Instant;

use crate::cancel::CancelTarget;
use crate::error::Error;
use crate::pool::{checkout, discard, MAX_PREPARED_PER_CONN};
use crate::router::Target;

use super::relay::{Backend, Session};

impl Session {
    /// Checks out a primary connection and brings it to the session's settings.
    pub(super) async fn attach_primary(&mut self) -> Result<(), Error> {
        self.attach(Target::Primary).await
    }

    pub(super) async fn attach(&mut self, target: Target) -> Result<(), Error> {
        if let Some(b) = &self.backend {
            if b.target == target {
                return Ok(());
            }
        }
        let started = Instant::now();
        let mut conn = checkout(&self.pool).await?;
        crate::metrics::checkout(started.elapsed().as_secs_f64());
        let fp = self.params.fingerprint();
        if conn.state_fp != fp {
            let sql = self.params.sync_sql(conn.state_fp);
            if !sql.is_empty() {
                if let Err(e) = conn.execute(&sql).await {
                    discard(conn);
                    return Err(e.into());
                }
            }
            conn.state_fp = fp;
            self.pool.manager().remember_params(fp, &conn.params);
        }
        self.cancel.slot.attach(CancelTarget { addr: conn.addr.clone(), pid: conn.pid, secret: conn.secret });
        self.backend = Some(Backend { conn, target });
        Ok(())
    }

    /// The ParameterStatus values the client is shown at startup: known from an earlier login
    /// with the same settings, or read off a connection (which also proves the backend accepts
    /// this user and database).
    pub(super) async fn reported_params(&mut self) -> Result<Vec<(String, String)>, Error> {
        let fp = self.params.fingerprint();
        if let Some(p) = self.pool.manager().reported_params(fp) {
            return Ok(p.as_ref().clone());
        }
        self.attach_primary().await?;
        let b = self.backend.as_ref().expect("attached");
        self.pool.manager().remember_params(fp, &b.conn.params);
        Ok(b.conn.params.clone())
    }

    /// Gives the backend connection back to its pool (it is idle and clean).
    pub(super) async fn release(&mut self) {
        let Some(b) = self.backend.take() else { return };
        self.cancel.slot.detach().await;
        tracing::trace!(pid = b.conn.pid, "backend released");
        if b.conn.prepared.len() > MAX_PREPARED_PER_CONN || b.conn.broken {
            discard(b.conn);
        }
    }

    /// At the end of the session: return the connection if it can be made clean, else close it.
    /// A query still running is cancelled first, so the server stops working for nobody.
    pub(super) async fn finish(&mut self) {
        let Some(mut b) = self.backend.take() else {
            return;
        };
        let busy = !self.batches.is_empty() || self.batch_open || self.copy_in || !self.bout.is_empty();
        if busy && !b.conn.broken {
            crate::cancel::send_cancel(&CancelTarget {
                addr: b.conn.addr.clone(),
                pid: b.conn.pid,
                secret: b.conn.secret,
            })
            .await;
        }
        self.cancel.slot.detach().await;
        if busy || b.conn.broken {
            discard(b.conn);
            return;
        }
        if self.tx != pgsplit_protocol::TxStatus::Idle && b.conn.execute("ROLLBACK").await.is_err() {
            discard(b.conn);
            return;
        }
        // Session state that settings replay cannot undo is cleared with DISCARD ALL.
        if !self.pins.is_empty() {
            if b.conn.execute("DISCARD ALL").await.is_err() {
                discard(b.conn);
                return;
            }
            b.conn.prepared.clear();
            b.conn.state_fp = 0;
        }
        for p in self.pins.drain(..) {
            crate::metrics::pinned(p.as_str(), -1.0);
        }
        drop(b);
    }
}
