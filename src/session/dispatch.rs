//! Client frames in: each batch (a simple Query; extended messages up to Sync or Flush; a
//! FunctionCall) is classified and routed once — with freshness (read-your-writes) and the
//! replicas that may serve it — then handed to a backend connection for its target.

use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use pgsplit_protocol::backend::encode_ready;
use pgsplit_protocol::framing::{peek_header, FrameHeader};
use pgsplit_protocol::{ProtocolError, Severity, TxStatus};

use super::backend::Readiness;
use super::relay::{Batch, Session};
use crate::error::Error;
use crate::router::freshness::{fresh, Requirement};
use crate::router::policy::Candidate;
use crate::router::{policy, Class, ClassRef, Need, Reason, Route, Target};

pub(super) fn protocol(e: ProtocolError) -> Error {
    Error::ClientProtocol(e)
}

impl Session {
    /// Handles every complete client frame that can be handled now.
    pub(super) async fn process_client(&mut self) -> Result<(), Error> {
        loop {
            let limits = self.limits;
            let Some(h) = peek_header(&self.cin, |t| limits.frontend_cap(t)).map_err(protocol)? else {
                return Ok(());
            };
            if self.cin.len() < h.total {
                self.cin.reserve(h.total - self.cin.len());
                return Ok(());
            }
            if self.draining && self.backend.is_none() && !self.batch_open {
                return Err(Error::Shutdown);
            }
            match h.tag {
                b'Q' => {
                    if !self.simple_query(h).await? {
                        return Ok(());
                    }
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => {
                    if !self.extended(h).await? {
                        return Ok(());
                    }
                }
                b'd' | b'c' | b'f' => {
                    // Outside COPY the server ignores these; so does pgsplit.
                    let frame = self.cin.split_to(h.total);
                    if self.backend.is_some() {
                        self.bout.extend_from_slice(&frame);
                    }
                    if h.tag != b'd' && self.copy_sync_ignored {
                        self.copy_ended = true;
                    }
                }
                b'F' => {
                    if !self.function_call(h).await? {
                        return Ok(());
                    }
                }
                b'X' => {
                    self.cin.advance(h.total);
                    self.terminated = true;
                    return Ok(());
                }
                other => return Err(protocol(ProtocolError::UnknownMessage(other as char))),
            }
        }
    }

    /// Routes a batch: one decision, from the class, the session and the replicas that may serve
    /// it now.
    pub(super) fn decide(&mut self, class: &Class) -> Route {
        let topo = self.ctx.topology.clone();
        let settings = self.ctx.settings();
        let cfg = &settings.routing;
        let pinned = !self.pins.is_empty();
        // on the stack: this runs for every batch
        let mut candidates: smallvec::SmallVec<[Candidate; 8]> = smallvec::SmallVec::new();
        let mut freshness = None;
        let mut behind = false;
        if self.tx == TxStatus::Idle && !pinned && class.is_read() {
            let snap = topo.snapshot();
            let now = Instant::now();
            let mode = self.consistency();
            match self.writes.requirement(mode, &snap, topo.last_write(), now) {
                Requirement::Primary(reason) => freshness = Some(reason),
                Requirement::MinLsn(lsn) => {
                    let stale_after = settings.consistency.stale_after;
                    let avoid = self.avoid_node.take();
                    for i in 0..topo.nodes.len() {
                        if avoid == Some(i) {
                            continue;
                        }
                        let as_primary = cfg.primary_reads && snap.primary == Some(i);
                        if topo.is_suspect(i) || !(as_primary || snap.readable(i)) {
                            continue;
                        }
                        if as_primary || fresh(&snap, i, lsn, now, stale_after) {
                            candidates.push(Candidate {
                                node: i,
                                load: topo.load(i),
                                weight: settings.node_weights[i],
                            });
                        } else {
                            behind = true;
                        }
                    }
                }
            }
        }
        let view = policy::SessionView {
            tx: self.tx,
            pinned,
            attached: self.backend.as_ref().map(|b| b.target),
            reads: self.reads(&settings),
            forces_primary: self.forces_primary,
            freshness,
            last_read: self.last_read,
        };
        let catalog = if class.functions.is_empty() && class.relations.is_empty() {
            None
        } else {
            topo.catalogs.get_memo(&self.login.database, &mut self.catalog_memo)
        };
        let rr = if candidates.len() > 1 { topo.next_round_robin() } else { 0 };
        let mut route = policy::route(class, &view, &candidates, catalog, cfg, rr);
        if route.reason == Reason::NoReplica && behind {
            route.reason = Reason::ReplicasBehind;
        }
        if let Target::Replica(n) = route.target {
            self.last_read = Some(n);
        }
        route
    }

    /// Gets the session a connection for `route`. `Ok(None)`: the current backend is busy on
    /// another node; try again when it is done. A replica that cannot be reached is reported
    /// and the read goes to the primary instead.
    pub(super) async fn attach_for(&mut self, route: Route) -> Result<Option<Route>, Error> {
        // Already on that node (every statement of a transaction after the first): no
        // checkout, and no boxed future to allocate and fill.
        let here = self.backend.as_ref().is_some_and(|b| self.node_for(route.target).is_ok_and(|n| n == b.node));
        // Boxed: checking out and syncing a connection is a large state machine, and every
        // idle session would otherwise carry its size.
        let attached = if here { Ok(Readiness::Ready) } else { Box::pin(self.attach(route.target)).await };
        let result = match attached {
            Err(Error::Pool(e)) if matches!(route.target, Target::Replica(_)) && e.is_connection_failure() => {
                tracing::warn!(error = %e, "replica unreachable; sending the read to the primary");
                let fallback = Route { target: Target::Primary, reason: Reason::NoReplica };
                Box::pin(self.attach(Target::Primary)).await.map(|r| (r, fallback))
            }
            r => r.map(|r| (r, route)),
        };
        match result? {
            (Readiness::Wait, _) => {
                self.blocked = true;
                Ok(None)
            }
            (Readiness::Ready, route) => {
                crate::metrics::routed(route.target, route.reason);
                let node = self.backend.as_ref().map(|b| b.node).unwrap_or(0);
                self.ctx.stats.routed(route.target, route.reason, node);
                self.client.entry.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.client.entry.set_state(crate::clients::ClientState::Active);
                tracing::debug!(target = route.target.label(), node = ?self.backend.as_ref().map(|b| b.node), reason = route.reason.as_str(), "routed");
                Ok(Some(route))
            }
        }
    }

    /// A request could not start (no backend connection): tell the client, unless that ends the
    /// session.
    pub(super) fn request_failed(&mut self, e: Error) -> Result<(), Error> {
        match e.response() {
            Some(r) if r.severity == Severity::Error => {
                tracing::warn!(error = %e, "request failed");
                self.report(&r);
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Returns `false` when the query has to wait for the current backend.
    async fn simple_query(&mut self, h: FrameHeader) -> Result<bool, Error> {
        let body = &self.cin[5..h.total];
        let sql = body.strip_suffix(&[0]).ok_or(protocol(ProtocolError::MissingNul))?;
        let text = std::str::from_utf8(sql).ok();
        if let Some(cmd) = text.and_then(super::commands::parse) {
            // answered here, so only in order: after whatever is in flight
            if !self.batches.is_empty() || self.batch_open {
                self.blocked = true;
                return Ok(false);
            }
            self.cin.advance(h.total);
            Box::pin(self.run_command(cmd)).await;
            return Ok(true);
        }
        let class = match text {
            Some(s) => self.classify(s),
            None => Arc::new(Class::new(Need::ParseError)),
        };
        if let Some(sp) = class.sql_prepared.clone() {
            if let Some(done) = Box::pin(self.sql_prepared(h, sp)).await? {
                return Ok(done);
            }
        }
        let route = self.decide(&class);
        let route = match self.attach_for(route).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(false),
            Err(e) => {
                self.cin.advance(h.total);
                self.request_failed(e)?;
                encode_ready(&mut self.cout, self.tx);
                return Ok(true);
            }
        };
        if let Target::Replica(_) = route.target {
            let frames = bytes::BytesMut::from(&self.cin[..h.total]);
            self.arm_retry(route.target, frames, false);
        } else {
            self.arm_retry(route.target, bytes::BytesMut::new(), false);
        }
        self.bout.extend_from_slice(&self.cin[..h.total]);
        self.cin.advance(h.total);
        self.expect.untracked_sync();
        self.batches.push_back(Batch {
            extended: false,
            wrote: route.may_write(&class),
            ddl: class.ddl,
            effects: class.effects.clone(),
            error: false,
            started: Instant::now(),
            target: route.target.label(),
            prepare: None,
        });
        Ok(true)
    }

    async fn function_call(&mut self, h: FrameHeader) -> Result<bool, Error> {
        let route = self.decide(&Class::new(Need::Unknown));
        match self.attach_for(route).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(false),
            Err(e) => {
                self.cin.advance(h.total);
                self.request_failed(e)?;
                encode_ready(&mut self.cout, self.tx);
                return Ok(true);
            }
        }
        self.disarm_retry();
        self.bout.extend_from_slice(&self.cin[..h.total]);
        self.cin.advance(h.total);
        self.expect.untracked_sync();
        self.batches.push_back(Batch {
            extended: false,
            wrote: true,
            ddl: false,
            effects: Vec::new(),
            error: false,
            started: Instant::now(),
            target: "primary",
            prepare: None,
        });
        Ok(true)
    }

    pub(super) fn classify(&self, sql: &str) -> ClassRef {
        let (c, source) = self.ctx.classifier.classify_with_source(sql);
        crate::metrics::classified(source as usize);
        c
    }
}
