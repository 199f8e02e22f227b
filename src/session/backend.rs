//! Taking and giving back backend connections: resolving a route's target to a node, checkout,
//! applying the session's settings, attaching the cancel key, and returning a connection only
//! when it is clean. A connection checked out for a write is refused if its server reports being
//! in recovery, whatever the topology said: a write never reaches a replica.

use std::time::Instant;

use crate::cancel::CancelTarget;
use crate::config::PoolMode;
use crate::error::Error;
use crate::pool::{checkout, discard, Pool, PoolKey, MAX_PREPARED_PER_CONN};
use crate::router::Target;

use super::relay::{Backend, Session};

/// Whether the session can use a target now.
pub(super) enum Readiness {
    Ready,
    /// The session's current backend is still busy on another node.
    Wait,
}

impl Session {
    /// The node a target means right now.
    pub(super) fn node_for(&self, target: Target) -> Result<usize, Error> {
        match target {
            Target::Replica(i) => Ok(i),
            Target::Primary => {
                let s = self.ctx.topology.snapshot();
                s.primary.ok_or_else(|| Error::NoPrimary(s.no_primary.clone().unwrap_or_else(|| "unknown".into())))
            }
        }
    }

    fn pool_for(&mut self, node: usize) -> Pool {
        if let Some(Some(p)) = self.pools.get(node) {
            return p.clone();
        }
        let key = PoolKey {
            node: self.ctx.topology.nodes[node].clone(),
            user: self.login.user.clone(),
            database: self.login.database.clone(),
        };
        let p = self.ctx.pools.get(&key, self.login.pool_size, &self.login.credential);
        if self.pools.len() <= node {
            self.pools.resize(node + 1, None);
        }
        self.pools[node] = Some(p.clone());
        p
    }

    /// Whether the backend the session holds is doing something (so it cannot be swapped).
    pub(super) fn backend_busy(&self) -> bool {
        !self.batches.is_empty()
            || self.batch_open
            || self.copy_in
            || !self.bout.is_empty()
            || !self.expect.is_empty()
            || self.tx != pgsplit_protocol::TxStatus::Idle
    }

    /// Makes sure the session holds a connection for `target`.
    pub(super) async fn attach(&mut self, target: Target) -> Result<Readiness, Error> {
        let node = self.node_for(target)?;
        if let Some(b) = &self.backend {
            if b.node == node {
                return Ok(Readiness::Ready);
            }
            if self.backend_busy() {
                return Ok(Readiness::Wait);
            }
            self.detach().await;
        }
        if let Some(i) = self.parked.iter().position(|b| b.node == node) {
            let b = self.parked.swap_remove(i);
            self.cancel.slot.attach(CancelTarget { addr: b.conn.addr.clone(), pid: b.conn.pid, secret: b.conn.secret });
            self.client.entry.set_backend(Some(node), b.conn.pid);
            self.backend = Some(b);
            return Ok(Readiness::Ready);
        }
        if self.ctx.is_paused() {
            self.client.entry.set_state(crate::clients::ClientState::Waiting);
            self.ctx.wait_unpaused().await;
        }
        let pool = self.pool_for(node);
        // Counted from the moment the session queues for a connection, so that
        // least-outstanding balancing sees the queues and not just the busy connections.
        let topology = self.ctx.topology.clone();
        let load = topology.load_guard(node);
        let started = Instant::now();
        self.client.entry.set_state(crate::clients::ClientState::Waiting);
        let conn = checkout(&pool).await;
        self.client.entry.set_state(crate::clients::ClientState::Active);
        crate::metrics::checkout(started.elapsed().as_secs_f64());
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if matches!(target, Target::Replica(_)) && e.is_connection_failure() {
                    self.ctx.topology.report_failure(node, &e.to_string());
                }
                return Err(e.into());
            }
        };
        if target == Target::Primary && conn.param("in_hot_standby") == Some("on") {
            discard(conn);
            self.ctx.topology.report_failure(node, "in recovery");
            return Err(Error::NoPrimary(format!("{} is in recovery", self.ctx.topology.nodes[node])));
        }
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
            pool.manager().remember_params(fp, &conn.params);
        }
        self.cancel.slot.attach(CancelTarget { addr: conn.addr.clone(), pid: conn.pid, secret: conn.secret });
        load.keep();
        self.client.entry.set_backend(Some(node), conn.pid);
        conn.set_in_use(true);
        self.backend = Some(Backend { conn, target, node });
        Ok(Readiness::Ready)
    }

    /// The ParameterStatus values the client is shown at startup: known from an earlier login
    /// with the same settings, or read off a primary connection (which also proves the backend
    /// accepts this user and database).
    pub(super) async fn reported_params(&mut self) -> Result<Vec<(String, String)>, Error> {
        let fp = self.params.fingerprint();
        let node = self.node_for(Target::Primary)?;
        let pool = self.pool_for(node);
        if let Some(p) = pool.manager().reported_params(fp) {
            return Ok(p.as_ref().clone());
        }
        self.attach(Target::Primary).await?;
        let b = self.backend.as_ref().expect("attached");
        pool.manager().remember_params(fp, &b.conn.params);
        Ok(b.conn.params.clone())
    }

    /// Lets go of the current backend: back to its pool (transaction mode) or parked for the
    /// rest of the session (session mode).
    async fn detach(&mut self) {
        let Some(b) = self.backend.take() else { return };
        self.cancel.slot.detach().await;
        if self.mode == PoolMode::Session {
            self.parked.push(b);
        } else {
            self.give_back(b);
        }
    }

    fn give_back(&self, b: Backend) {
        self.ctx.topology.release(b.node);
        self.client.entry.set_backend(None, 0);
        b.conn.set_in_use(false);
        tracing::trace!(pid = b.conn.pid, "backend released");
        if b.conn.prepared.len() > MAX_PREPARED_PER_CONN || b.conn.broken {
            discard(b.conn);
        }
    }

    /// Gives the backend connection back to its pool (it is idle and clean).
    pub(super) async fn release(&mut self) {
        let Some(b) = self.backend.take() else { return };
        self.cancel.slot.detach().await;
        self.give_back(b);
    }

    /// At the end of the session: return each connection if it can be made clean, else close it.
    /// A query still running is cancelled first, so the server stops working for nobody.
    pub(super) async fn finish(&mut self) {
        let busy = self.backend.is_some()
            && (!self.batches.is_empty() || self.batch_open || self.copy_in || !self.bout.is_empty());
        let mut all: Vec<(Backend, bool)> = self.parked.drain(..).map(|b| (b, false)).collect();
        if let Some(b) = self.backend.take() {
            all.push((b, busy));
        }
        self.cancel.slot.detach().await;
        for (mut b, busy) in all {
            if busy && !b.conn.broken {
                crate::cancel::send_cancel(&CancelTarget {
                    addr: b.conn.addr.clone(),
                    pid: b.conn.pid,
                    secret: b.conn.secret,
                })
                .await;
            }
            let clean = !busy
                && !b.conn.broken
                && (self.tx == pgsplit_protocol::TxStatus::Idle || b.conn.execute("ROLLBACK").await.is_ok())
                // Session state that settings replay cannot undo is cleared with DISCARD ALL.
                && (self.pins.is_empty() || b.conn.execute("DISCARD ALL").await.is_ok());
            if !clean {
                b.conn.broken = true;
            } else if !self.pins.is_empty() {
                b.conn.prepared.clear();
                b.conn.state_fp = 0;
            }
            self.give_back(b);
        }
        for p in self.pins.drain(..) {
            crate::metrics::pinned(p.as_str(), -1.0);
        }
    }
}
