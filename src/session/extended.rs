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

use super::expect::Expect;
use super::relay::{Batch, Session};
use crate::error::Error;
use crate::router::{policy, Class, ClassRef, Need, Route};
use crate::statements::Statement;

/// Extended-protocol batches are routed when their Sync or Flush has arrived, or when this much
/// of the batch is buffered.
const MAX_BATCH_LOOKAHEAD: usize = 1 << 20;

fn target_label(t: crate::router::Target) -> &'static str {
    match t {
        crate::router::Target::Primary => "primary",
        crate::router::Target::Replica(_) => "replica",
    }
}

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
                b'Q' => self.simple_query(h).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => self.extended(h).await?,
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
                b'F' => self.function_call(h).await?,
                b'X' => {
                    self.cin.advance(h.total);
                    self.terminated = true;
                    return Ok(());
                }
                other => return Err(protocol(ProtocolError::UnknownMessage(other as char))),
            }
        }
    }

    fn decide(&self, class: &Class) -> Route {
        let view = policy::SessionView { tx: self.tx, pinned: !self.pins.is_empty() };
        let r = policy::route(class, &view);
        crate::metrics::routed(target_label(r.target), r.reason.as_str());
        tracing::debug!(target = target_label(r.target), reason = r.reason.as_str(), "routed");
        r
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

    async fn simple_query(&mut self, h: FrameHeader) -> Result<(), Error> {
        let body = &self.cin[5..h.total];
        let sql = body.strip_suffix(&[0]).ok_or(protocol(ProtocolError::MissingNul))?;
        let class = match std::str::from_utf8(sql) {
            Ok(s) => self.classify(s),
            Err(_) => Arc::new(Class::new(Need::ParseError)),
        };
        let route = self.decide(&class);
        if let Err(e) = self.attach(route.target).await {
            self.cin.advance(h.total);
            self.request_failed(e)?;
            encode_ready(&mut self.cout, self.tx);
            return Ok(());
        }
        self.bout.extend_from_slice(&self.cin[..h.total]);
        self.cin.advance(h.total);
        self.expect.untracked_sync();
        self.batches.push_back(Batch {
            extended: false,
            effects: class.effects.clone(),
            error: false,
            started: Instant::now(),
            target: target_label(route.target),
        });
        Ok(())
    }

    async fn function_call(&mut self, h: FrameHeader) -> Result<(), Error> {
        let route = self.decide(&Class::new(Need::Unknown));
        if let Err(e) = self.attach(route.target).await {
            self.cin.advance(h.total);
            self.request_failed(e)?;
            encode_ready(&mut self.cout, self.tx);
            return Ok(());
        }
        self.bout.extend_from_slice(&self.cin[..h.total]);
        self.cin.advance(h.total);
        self.expect.untracked_sync();
        self.batches.push_back(Batch {
            extended: false,
            effects: Vec::new(),
            error: false,
            started: Instant::now(),
            target: "primary",
        });
        Ok(())
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

    /// Extended-protocol messages.
    async fn extended(&mut self, h: FrameHeader) -> Result<(), Error> {
        if self.copy_sync_ignored && matches!(h.tag, b'S' | b'H') {
            // Syncs during COPY FROM STDIN are ignored by the server; the first one after the
            // copy ends completes the batch that started it.
            let frame = self.cin.split_to(h.total);
            self.bout.extend_from_slice(&frame);
            if h.tag == b'S' && self.copy_ended {
                self.copy_sync_ignored = false;
                self.copy_ended = false;
            }
            return Ok(());
        }
        if self.skip_until_sync {
            if h.tag != b'S' {
                self.cin.advance(h.total);
                return Ok(());
            }
            self.skip_until_sync = false;
            if self.backend.is_none() {
                self.cin.advance(h.total);
                encode_ready(&mut self.cout, self.tx);
                return Ok(());
            }
        } else if !self.batch_open {
            // Route on the whole batch when it is here; a client may also wait for answers
            // before sending its Sync (COPY FROM STDIN in the extended protocol does), so
            // otherwise route on the complete frames at hand and keep the rest of the batch
            // on the same backend.
            let end = self.batch_end();
            if self.backend.is_none() && self.prepare_locally(end)? {
                return Ok(());
            }
            let class = self.batch_class(end)?;
            let route = self.decide(&class);
            if let Err(e) = self.attach(route.target).await {
                self.request_failed(e)?;
                self.skip_until_sync = true;
                return Ok(());
            }
            self.tracking = self.needs_tracking(end)?;
            self.batch_open = true;
            self.batch_started = Some((Instant::now(), target_label(route.target)));
        }
        self.forward_extended(h)
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
        let conn_id = (b.target, b.conn.pid);
        let mut unnamed_here =
            self.unnamed.as_ref().is_some_and(|u| u.2 == conn_id.1) && self.unnamed_target == Some(conn_id.0);
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
        let (target, pid) = (b.target, b.conn.pid);
        if let Some((sql, types, on)) = &mut self.unnamed {
            if *on != pid || self.unnamed_target != Some(target) {
                encode_parse(&mut self.bout, "", sql, types);
                *on = pid;
                self.unnamed_target = Some(target);
                self.track(Expect::Parse { swallow: true, id: None });
            }
        }
    }

    fn forward_extended(&mut self, h: FrameHeader) -> Result<(), Error> {
        let frame: BytesMut = self.cin.split_to(h.total);
        let body = &frame[5..];
        match h.tag {
            b'P' => {
                let FrontendMessage::Parse { name, sql, param_types } =
                    FrontendMessage::decode(b'P', body).map_err(protocol)?
                else {
                    unreachable!("a P frame decodes to Parse")
                };
                if name.is_empty() {
                    let b = self.backend.as_ref().expect("attached");
                    let (target, pid) = (b.target, b.conn.pid);
                    self.unnamed_class = Some(self.classify(&sql));
                    self.unnamed = Some((sql, param_types, pid));
                    self.unnamed_target = Some(target);
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
