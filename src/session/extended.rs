//! Client frames: each batch (a simple Query; extended messages up to Sync or Flush; a
//! FunctionCall) is classified and routed once, then forwarded. Named prepared statements are
//! mapped to pgsplit's backend names and prepared on demand on whichever connection runs them.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pgsplit_protocol::backend::encode_ready;
use pgsplit_protocol::framing::{peek_header, FrameHeader};
use pgsplit_protocol::frontend::{bind_statement, encode_parse, encode_target, rewrite_bind, Target as DescribeTarget};
use pgsplit_protocol::{ErrorResponse, FrontendMessage, ProtocolError, Severity, SqlState, TxStatus};

use super::backend::Readiness;
use super::expect::Expect;
use super::relay::{Batch, Session};
use crate::error::Error;
use crate::router::freshness::{fresh, Requirement};
use crate::router::policy::Candidate;
use crate::router::{policy, Class, ClassRef, Need, Reason, Route, Target};
use crate::statements::Statement;

/// Extended-protocol batches are routed when their Sync or Flush has arrived, or when this much
/// of the batch is buffered.
const MAX_BATCH_LOOKAHEAD: usize = 1 << 20;

fn protocol(e: ProtocolError) -> Error {
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
    fn decide(&mut self, class: &Class) -> Route {
        let topo = self.ctx.topology.clone();
        let cfg = &self.ctx.settings.routing;
        let pinned = !self.pins.is_empty();
        let mut candidates = Vec::new();
        let mut freshness = None;
        let mut behind = false;
        if self.tx == TxStatus::Idle && !pinned && class.is_read() {
            let snap = topo.snapshot();
            let now = Instant::now();
            match self.writes.requirement(self.consistency, &snap, topo.last_write(), now) {
                Requirement::Primary(reason) => freshness = Some(reason),
                Requirement::MinLsn(lsn) => {
                    let stale_after = self.ctx.settings.consistency.stale_after;
                    for i in 0..topo.nodes.len() {
                        let as_primary = cfg.primary_reads && snap.primary == Some(i);
                        if topo.is_suspect(i) || !(as_primary || snap.readable(i)) {
                            continue;
                        }
                        if as_primary || fresh(&snap, i, lsn, now, stale_after) {
                            candidates.push(Candidate {
                                node: i,
                                load: topo.load(i),
                                weight: self.ctx.node_weights[i],
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
            reads: self.login.reads,
            forces_primary: self.forces_primary,
            freshness,
        };
        let catalog = if class.functions.is_empty() && class.relations.is_empty() {
            None
        } else {
            topo.catalogs.get(&self.login.database)
        };
        let rr = if candidates.len() > 1 { topo.next_round_robin() } else { 0 };
        let mut route = policy::route(class, &view, &candidates, catalog.as_deref(), cfg, rr);
        if route.reason == Reason::NoReplica && behind {
            route.reason = Reason::ReplicasBehind;
        }
        route
    }

    /// Gets the session a connection for `route`. `Ok(None)`: the current backend is busy on
    /// another node; try again when it is done. A replica that cannot be reached is reported
    /// and the read goes to the primary instead.
    async fn attach_for(&mut self, route: Route) -> Result<Option<Route>, Error> {
        let result = match self.attach(route.target).await {
            Err(Error::Pool(e)) if matches!(route.target, Target::Replica(_)) && e.is_connection_failure() => {
                tracing::warn!(error = %e, "replica unreachable; sending the read to the primary");
                let fallback = Route { target: Target::Primary, reason: Reason::NoReplica };
                self.attach(Target::Primary).await.map(|r| (r, fallback))
            }
            r => r.map(|r| (r, route)),
        };
        match result? {
            (Readiness::Wait, _) => {
                self.blocked = true;
                Ok(None)
            }
            (Readiness::Ready, route) => {
                crate::metrics::routed(route.target.label(), route.reason.as_str());
                tracing::debug!(target = route.target.label(), node = ?self.backend.as_ref().map(|b| b.node), reason = route.reason.as_str(), "routed");
                Ok(Some(route))
            }
        }
    }

    /// A request could not start (no backend connection): tell the client, unless that ends the
    /// session.
    fn request_failed(&mut self, e: Error) -> Result<(), Error> {
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
        if let Some(cmd) = std::str::from_utf8(sql).ok().and_then(super::commands::parse) {
            // answered here, so only in order: after whatever is in flight
            if !self.batches.is_empty() || self.batch_open {
                self.blocked = true;
                return Ok(false);
            }
            self.cin.advance(h.total);
            self.run_command(cmd).await;
            return Ok(true);
        }
        let class = match std::str::from_utf8(sql) {
            Ok(s) => self.classify(s),
            Err(_) => Arc::new(Class::new(Need::ParseError)),
        };
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
        });
        Ok(true)
    }

    pub(super) fn classify(&self, sql: &str) -> ClassRef {
        let (c, source) = self.ctx.classifier.classify_with_source(sql);
        crate::metrics::classified(match source {
            crate::router::cache::Source::Fast => "fast",
            crate::router::cache::Source::Cache => "cache",
            crate::router::cache::Source::Parse => "parse",
        });
        c
    }

    /// Extended-protocol messages. Returns `false` when the batch has to wait for the current
    /// backend.
    async fn extended(&mut self, h: FrameHeader) -> Result<bool, Error> {
        if self.copy_sync_ignored && matches!(h.tag, b'S' | b'H') {
            // Syncs during COPY FROM STDIN are ignored by the server; the first one after the
            // copy ends completes the batch that started it.
            let frame = self.cin.split_to(h.total);
            self.bout.extend_from_slice(&frame);
            if h.tag == b'S' && self.copy_ended {
                self.copy_sync_ignored = false;
                self.copy_ended = false;
            }
            return Ok(true);
        }
        if self.skip_until_sync {
            if h.tag != b'S' {
                self.cin.advance(h.total);
                return Ok(true);
            }
            self.skip_until_sync = false;
            if self.backend.is_none() {
                self.cin.advance(h.total);
                encode_ready(&mut self.cout, self.tx);
                return Ok(true);
            }
        } else if !self.batch_open {
            // Route on the whole batch when it is here; a client may also wait for answers
            // before sending its Sync (COPY FROM STDIN in the extended protocol does), so
            // otherwise route on the complete frames at hand and keep the rest of the batch
            // on the same backend.
            let end = self.batch_end();
            if self.backend.is_none() && self.prepare_locally(end)? {
                return Ok(true);
            }
            let class = self.batch_class(end)?;
            let route = self.decide(&class);
            let route = match self.attach_for(route).await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.request_failed(e)?;
                    self.skip_until_sync = true;
                    return Ok(true);
                }
            };
            self.tracking = self.needs_tracking(end)?;
            self.batch_open = true;
            self.batch_ddl = class.ddl;
            self.batch_wrote = route.may_write(&class);
            self.batch_started = Some((Instant::now(), route.target.label()));
        }
        self.forward_extended(h)?;
        Ok(true)
    }

    /// Where the batch at the head of the input ends: after its Sync or Flush, or after the last
    /// complete extended-protocol frame buffered.
    fn batch_end(&self) -> usize {
        let limits = self.limits;
        let mut at = 0;
        while at < MAX_BATCH_LOOKAHEAD {
            let Ok(Some(h)) = peek_header(&self.cin[at..], |t| limits.frontend_cap(t)) else {
                break;
            };
            if self.cin.len() < at + h.total {
                break;
            }
            match h.tag {
                b'S' | b'H' => return at + h.total,
                b'P' | b'B' | b'D' | b'E' | b'C' => at += h.total,
                _ => break,
            }
        }
        at
    }

    /// Answers a batch of only named Parse messages and a Sync (what libpq's `PQprepare` sends)
    /// without a backend connection: the statements are registered for the client and prepared
    /// on a backend when first used. Statements PostgreSQL's parser rejects still go to the
    /// server so that the client gets the server's own error. Holding no connection here matters:
    /// a client that prepares synchronously while its other connections hold every backend in a
    /// transaction would otherwise wait for itself.
    fn prepare_locally(&mut self, end: usize) -> Result<bool, Error> {
        if self.tx != TxStatus::Idle || end == 0 {
            return Ok(false);
        }
        let mut parses = Vec::new();
        let mut ends_with_sync = false;
        let mut eligible = true;
        self.frames(end, |tag, body| {
            match tag {
                b'P' if !ends_with_sync => match FrontendMessage::decode(tag, body).map_err(protocol)? {
                    FrontendMessage::Parse { name, sql, param_types } if !name.is_empty() => {
                        parses.push((name, sql, param_types))
                    }
                    _ => eligible = false,
                },
                b'S' => ends_with_sync = true,
                _ => eligible = false,
            }
            Ok(())
        })?;
        if !eligible || !ends_with_sync || parses.is_empty() {
            return Ok(false);
        }
        let mut stmts = Vec::with_capacity(parses.len());
        for (name, sql, types) in &parses {
            let ctx = self.ctx.clone();
            let stmt = ctx.statements.intern(sql, types, |s| self.classify(s));
            if stmt.class.need == Need::ParseError {
                return Ok(false);
            }
            stmts.push((name.clone(), stmt));
        }
        self.cin.advance(end);
        for (name, stmt) in stmts {
            if self.statements.contains_key(&name) {
                let e = ErrorResponse::error(
                    SqlState::DUPLICATE_PREPARED_STATEMENT,
                    format!("prepared statement \"{name}\" already exists"),
                );
                self.report(&e);
                break;
            }
            self.statements.insert(name, stmt);
            pgsplit_protocol::backend::encode_empty(&mut self.cout, b'1');
        }
        encode_ready(&mut self.cout, self.tx);
        Ok(true)
    }

    /// Calls `f` with the tag and body of each frame in `cin[..end]`.
    fn frames(&self, end: usize, mut f: impl FnMut(u8, &[u8]) -> Result<(), Error>) -> Result<(), Error> {
        let limits = self.limits;
        let mut at = 0;
        while at < end {
            let Some(h) = peek_header(&self.cin[at..end], |t| limits.frontend_cap(t)).map_err(protocol)? else {
                break;
            };
            if at + h.total > end {
                break;
            }
            f(h.tag, &self.cin[at + 5..at + h.total])?;
            at += h.total;
        }
        Ok(())
    }

    /// The class of a whole extended batch: a read only if every statement it runs is.
    fn batch_class(&self, end: usize) -> Result<Class, Error> {
        let mut class = Class::new(Need::Read);
        let mut unnamed = self.unnamed_class.clone();
        let add = |c: &Class, class: &mut Class| {
            class.require(c.need);
            class.catalog |= c.catalog;
            class.hint = class.hint.or(c.hint);
            class.tx = class.tx.or(c.tx);
            class.ddl |= c.ddl;
            class.functions.extend(c.functions.iter().cloned());
            class.relations.extend(c.relations.iter().cloned());
        };
        self.frames(end, |tag, body| {
            match tag {
                b'P' => {
                    let FrontendMessage::Parse { name, sql, .. } =
                        FrontendMessage::decode(tag, body).map_err(protocol)?
                    else {
                        unreachable!("a P frame decodes to Parse")
                    };
                    let c = self.classify(&sql);
                    add(&c, &mut class);
                    if name.is_empty() {
                        unnamed = Some(c);
                    }
                }
                b'B' => {
                    let (_, stmt, _) = bind_statement(body).map_err(protocol)?;
                    let c = if stmt.is_empty() {
                        unnamed.clone()
                    } else {
                        self.statements.get(stmt).map(|s| s.class.clone())
                    };
                    match c {
                        Some(c) => add(&c, &mut class),
                        None => class.require(Need::Unknown),
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(class)
    }

    /// Whether the batch needs response bookkeeping (pgsplit answers or adds messages).
    fn needs_tracking(&self, end: usize) -> Result<bool, Error> {
        let Some(b) = self.backend.as_ref() else {
            return Ok(false);
        };
        let mut unnamed_here =
            self.unnamed.as_ref().is_some_and(|u| u.2 == b.conn.pid) && self.unnamed_node == Some(b.node);
        let mut track = false;
        let mut last = 0u8;
        self.frames(end, |tag, body| {
            last = tag;
            let named = |name: &str| !name.is_empty();
            match tag {
                b'P' => {
                    let mut r = body.split(|&c| c == 0);
                    if named(std::str::from_utf8(r.next().unwrap_or_default()).unwrap_or("")) {
                        track = true;
                    } else {
                        unnamed_here = true;
                    }
                }
                b'B' | b'D' => {
                    let name = if tag == b'B' {
                        bind_statement(body).map_err(protocol)?.1
                    } else if body.first() == Some(&b'S') {
                        std::str::from_utf8(&body[1..body.len().saturating_sub(1)]).unwrap_or("")
                    } else {
                        return Ok(());
                    };
                    if named(name) {
                        match self.statements.get(name) {
                            Some(s) if b.conn.prepared.contains(&s.id) => {}
                            Some(_) => track = true,
                            None => {}
                        }
                    } else if !unnamed_here && self.unnamed.is_some() {
                        track = true;
                    }
                }
                b'C' if body.first() == Some(&b'S') && body.len() > 2 => track = true,
                _ => {}
            }
            Ok(())
        })?;
        // A batch routed before its Sync arrived is tracked: its rest may need rewriting.
        Ok(track || last != b'S')
    }

    fn track(&mut self, e: Expect) {
        if self.tracking {
            self.expect.push(e);
        }
    }

    /// Prepares a client's named statement on the current connection if it is not there yet.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        let conn = &mut self.backend.as_mut().expect("attached").conn;
        if conn.prepared.insert(stmt.id) {
            encode_parse(&mut self.bout, &stmt.backend_name, &stmt.sql, &stmt.param_types);
            self.track(Expect::Parse { swallow: true, id: Some(stmt.id) });
        }
    }

    /// Re-creates the client's unnamed statement on this connection if it was parsed on another.
    fn ensure_unnamed(&mut self) {
        let b = self.backend.as_ref().expect("attached");
        let (node, pid) = (b.node, b.conn.pid);
        if let Some((sql, types, on)) = &mut self.unnamed {
            if *on != pid || self.unnamed_node != Some(node) {
                encode_parse(&mut self.bout, "", sql, types);
                *on = pid;
                self.unnamed_node = Some(node);
                self.track(Expect::Parse { swallow: true, id: None });
            }
        }
    }

    /// In a batch already sent to a replica (routed before its Sync arrived), a statement that
    /// is not a read is refused by pgsplit itself rather than sent there.
    fn refuse_on_replica(&mut self, tag: u8, body: &[u8]) -> Result<bool, Error> {
        if !matches!(self.backend.as_ref().map(|b| b.target), Some(Target::Replica(_))) {
            return Ok(false);
        }
        let class = match tag {
            b'P' => match FrontendMessage::decode(tag, body).map_err(protocol)? {
                FrontendMessage::Parse { sql, .. } => Some(self.classify(&sql)),
                _ => None,
            },
            b'B' => {
                let (_, name, _) = bind_statement(body).map_err(protocol)?;
                if name.is_empty() {
                    self.unnamed_class.clone()
                } else {
                    self.statements.get(name).map(|s| s.class.clone())
                }
            }
            _ => return Ok(false),
        };
        if class.is_some_and(|c| c.is_read()) {
            return Ok(false);
        }
        let e = ErrorResponse::error(
            SqlState::READ_ONLY_SQL_TRANSACTION,
            "pgsplit: this batch was sent to a replica before this statement arrived, and it is not a read; send a Sync before it",
        );
        crate::metrics::error_sent(e.code.code());
        self.expect.push(Expect::SynthError(e.to_bytes().freeze()));
        self.skip_until_sync = true;
        Ok(true)
    }

    fn forward_extended(&mut self, h: FrameHeader) -> Result<(), Error> {
        let frame: BytesMut = self.cin.split_to(h.total);
        let body = &frame[5..];
        if self.refuse_on_replica(h.tag, body)? {
            return Ok(());
        }
        match h.tag {
            b'P' => {
                let FrontendMessage::Parse { name, sql, param_types } =
                    FrontendMessage::decode(b'P', body).map_err(protocol)?
                else {
                    unreachable!("a P frame decodes to Parse")
                };
                if name.is_empty() {
                    let b = self.backend.as_ref().expect("attached");
                    let (node, pid) = (b.node, b.conn.pid);
                    self.unnamed_class = Some(self.classify(&sql));
                    self.unnamed = Some((sql, param_types, pid));
                    self.unnamed_node = Some(node);
                    self.bout.extend_from_slice(&frame);
                    self.track(Expect::Parse { swallow: false, id: None });
                } else if self.statements.contains_key(&name) {
                    let e = ErrorResponse::error(
                        SqlState::DUPLICATE_PREPARED_STATEMENT,
                        format!("prepared statement \"{name}\" already exists"),
                    );
                    crate::metrics::error_sent(e.code.code());
                    self.expect.push(Expect::SynthError(e.to_bytes().freeze()));
                    self.skip_until_sync = true;
                } else {
                    let ctx = self.ctx.clone();
                    let stmt = ctx.statements.intern(&sql, &param_types, |s| self.classify(s));
                    self.statements.insert(name, stmt.clone());
                    let conn = &mut self.backend.as_mut().expect("attached").conn;
                    if conn.prepared.insert(stmt.id) {
                        encode_parse(&mut self.bout, &stmt.backend_name, &stmt.sql, &stmt.param_types);
                        self.expect.push(Expect::Parse { swallow: false, id: Some(stmt.id) });
                    } else {
                        self.expect.push(Expect::Synth(b'1'));
                    }
                }
            }
            b'B' => {
                let (_, name, _) = bind_statement(body).map_err(protocol)?;
                if name.is_empty() {
                    self.ensure_unnamed();
                    if let Some(c) = &self.unnamed_class {
                        self.open_effects.extend(c.effects.iter().cloned());
                    }
                    self.bout.extend_from_slice(&frame);
                } else if let Some(stmt) = self.statements.get(name).cloned() {
                    self.ensure_prepared(&stmt);
                    rewrite_bind(&mut self.bout, body, &stmt.backend_name).map_err(protocol)?;
                    self.open_effects.extend(stmt.class.effects.iter().cloned());
                } else {
                    self.bout.extend_from_slice(&frame);
                }
                self.track(Expect::Bind);
            }
            b'D' => {
                let FrontendMessage::Describe { kind, name } = FrontendMessage::decode(b'D', body).map_err(protocol)?
                else {
                    unreachable!("a D frame decodes to Describe")
                };
                match kind {
                    DescribeTarget::Portal => {
                        self.bout.extend_from_slice(&frame);
                        self.track(Expect::DescribePortal);
                    }
                    DescribeTarget::Statement => {
                        if name.is_empty() {
                            self.ensure_unnamed();
                            self.bout.extend_from_slice(&frame);
                        } else if let Some(stmt) = self.statements.get(&name).cloned() {
                            self.ensure_prepared(&stmt);
                            encode_target(&mut self.bout, b'D', DescribeTarget::Statement, &stmt.backend_name);
                        } else {
                            self.bout.extend_from_slice(&frame);
                        }
                        self.track(Expect::DescribeStatement);
                    }
                }
            }
            b'E' => {
                self.bout.extend_from_slice(&frame);
                self.track(Expect::Execute);
            }
            b'C' => {
                let FrontendMessage::Close { kind, name } = FrontendMessage::decode(b'C', body).map_err(protocol)?
                else {
                    unreachable!("a C frame decodes to Close")
                };
                if kind == DescribeTarget::Statement && !name.is_empty() {
                    // The backend keeps pgsplit's copy for other clients; the client's name goes.
                    self.statements.remove(&name);
                    self.expect.push(Expect::Synth(b'3'));
                } else {
                    self.bout.extend_from_slice(&frame);
                    self.track(Expect::Close);
                }
            }
            b'H' => self.bout.extend_from_slice(&frame),
            b'S' => {
                self.bout.extend_from_slice(&frame);
                if self.tracking {
                    self.expect.push(Expect::Sync);
                } else {
                    self.expect.untracked_sync();
                }
                let (started, target) = self.batch_started.take().unwrap_or((Instant::now(), "primary"));
                self.batches.push_back(Batch {
                    extended: true,
                    wrote: std::mem::take(&mut self.batch_wrote),
                    ddl: std::mem::take(&mut self.batch_ddl),
                    effects: std::mem::take(&mut self.open_effects),
                    error: false,
                    started,
                    target,
                });
                self.batch_open = false;
                self.tracking = false;
            }
            _ => unreachable!("only extended-protocol frames come here"),
        }
        Ok(())
    }
}
