//! The extended protocol: a batch is routed when its Sync (or Flush) is in, and forwarded with
//! named prepared statements mapped to pgsplit's backend names and prepared on demand on
//! whichever connection runs them.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pgsplit_protocol::backend::encode_ready;
use pgsplit_protocol::framing::{peek_header, FrameHeader};
use pgsplit_protocol::frontend::{
    bind_statement, encode_parse, encode_target, parse_repeats, parse_statement, rewrite_bind, Target as DescribeTarget,
};
use pgsplit_protocol::{ErrorResponse, FrontendMessage, SqlState, TxStatus};

use super::dispatch::protocol;
use super::expect::Expect;
use super::relay::{Batch, Session};
use crate::error::Error;
use crate::router::{Class, ClassRef, Need, Target};
use crate::statements::Statement;

/// Extended-protocol batches are routed when their Sync or Flush has arrived, or when this much
/// of the batch is buffered.
const MAX_BATCH_LOOKAHEAD: usize = 1 << 20;

/// A batch whose next frame is still arriving is held back until it is complete, as long as
/// less than this is buffered (client reads pause at the session's high-water mark).
const BATCH_WAIT_LIMIT: usize = 128 << 10;

/// What [`Session::scan_attached`] found in a batch.
struct BatchScan {
    tracking: bool,
    names_statements: bool,
    whole: bool,
}

impl Session {
    /// Extended-protocol messages. Returns `false` when the batch has to wait for the current
    /// backend.
    pub(super) async fn extended(&mut self, h: FrameHeader) -> Result<bool, Error> {
        if self.copy_sync_ignored && matches!(h.tag, b'S' | b'H') {
            // Syncs during COPY FROM STDIN are ignored by the server; the first one after the
            // copy ends completes the batch that started it.
            let frame = self.cin.split_to(h.total);
            self.bout.extend_from_slice(&frame);
            // frames after this Sync are still the batch's, but they were not classified with it
            self.batch_whole = false;
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
            let (end, arriving) = self.batch_end();
            if arriving && self.cin.len() < BATCH_WAIT_LIMIT {
                // The rest of the batch is on its way (a frame of it is half read): route the
                // whole batch once it is here rather than a piece of it now.
                return Ok(false);
            }
            if self.may_be_local(end) {
                if let Some(done) = Box::pin(self.local_batch(end)).await? {
                    return Ok(done);
                }
            }
            if self.backend.is_none() && self.prepare_locally(end)? {
                return Ok(true);
            }
            let (route, ddl, wrote) = {
                let class = self.batch_class(end)?;
                let route = self.decide(&class);
                (route, class.ddl, route.may_write(&class))
            };
            let route = match self.attach_for(route).await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.request_failed(e)?;
                    self.skip_until_sync = true;
                    return Ok(true);
                }
            };
            let scan = self.scan_attached(end)?;
            self.tracking = scan.tracking;
            if scan.names_statements {
                self.disarm_retry();
            } else {
                self.arm_retry(route.target, BytesMut::new(), true);
            }
            self.batch_open = true;
            self.batch_whole = scan.whole;
            self.batch_ddl = ddl;
            self.batch_wrote = wrote;
            self.batch_started = Some((Instant::now(), route.target.label()));
        }
        self.forward_extended(h)?;
        Ok(true)
    }

    /// Where the batch at the head of the input ends: after its Sync or Flush, or after the last
    /// complete extended-protocol frame buffered; and whether a frame of the batch is still
    /// arriving (buffered only in part).
    fn batch_end(&self) -> (usize, bool) {
        let limits = self.limits;
        let mut at = 0;
        while at < MAX_BATCH_LOOKAHEAD {
            let h = match peek_header(&self.cin[at..], |t| limits.frontend_cap(t)) {
                Ok(Some(h)) => h,
                Ok(None) => return (at, at < self.cin.len()),
                Err(_) => break,
            };
            if self.cin.len() < at + h.total {
                return (at, matches!(h.tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H'));
            }
            match h.tag {
                b'S' | b'H' => return (at + h.total, false),
                b'P' | b'B' | b'D' | b'E' | b'C' => at += h.total,
                _ => break,
            }
        }
        (at, false)
    }

    /// Answers named Parse messages followed by a Sync, a Flush or nothing yet (what libpq's
    /// `PQprepare` and `PQsendPrepare` send) without a backend connection: the statements are
    /// registered for the client and prepared on a backend when first used. A Sync or Flush on
    /// its own is answered here too (the session holds no connection and no transaction).
    /// Statements PostgreSQL's parser rejects still go to the server so that the client gets
    /// the server's own error. Holding no connection here matters: a client that prepares
    /// synchronously while its other connections hold every backend in a transaction would
    /// otherwise wait for itself.
    fn prepare_locally(&mut self, end: usize) -> Result<bool, Error> {
        // The common batch starts with an unnamed Parse or a Bind: no decoding to see that.
        let may_qualify = match self.cin.first() {
            Some(b'S' | b'H') => true,
            Some(b'P') => self.cin.get(5).is_some_and(|&b| b != 0),
            _ => false,
        };
        if self.tx != TxStatus::Idle || end == 0 || !may_qualify {
            return Ok(false);
        }
        let mut parses = Vec::new();
        let mut terminator = None;
        let mut eligible = true;
        self.frames(end, |tag, body| {
            match tag {
                _ if terminator.is_some() => eligible = false,
                b'P' => match FrontendMessage::decode(tag, body).map_err(protocol)? {
                    FrontendMessage::Parse { name, sql, param_types } if !name.is_empty() => {
                        parses.push((name, sql, param_types))
                    }
                    _ => eligible = false,
                },
                b'S' | b'H' => terminator = Some(tag),
                _ => eligible = false,
            }
            Ok(())
        })?;
        if !eligible {
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
            if self.statements.contains_key(&name) || self.has_local_statement(&name) {
                let e = ErrorResponse::error(
                    SqlState::DUPLICATE_PREPARED_STATEMENT,
                    format!("prepared statement \"{name}\" already exists"),
                );
                self.report(&e);
                // like the server: the rest of the batch is skipped up to its Sync
                self.skip_until_sync = terminator != Some(b'S');
                break;
            }
            self.statements.insert(name, stmt);
            pgsplit_protocol::backend::encode_empty(&mut self.cout, b'1');
        }
        if terminator == Some(b'S') {
            encode_ready(&mut self.cout, self.tx);
        }
        Ok(true)
    }

    /// Calls `f` with the tag and body of each frame in `cin[..end]`.
    pub(super) fn frames(&self, end: usize, mut f: impl FnMut(u8, &[u8]) -> Result<(), Error>) -> Result<(), Error> {
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

    /// The class of a whole extended batch: a read only if every statement it runs is. A batch
    /// that runs one statement (Parse and Bind of it, the common case) gets that statement's
    /// class as it is; only a batch of several is merged into a new one.
    fn batch_class(&self, end: usize) -> Result<ClassRef, Error> {
        let mut unnamed = self.unnamed_class.clone();
        let mut parts: smallvec::SmallVec<[ClassRef; 4]> = smallvec::SmallVec::new();
        let mut unknown = false;
        let mut note = |c: ClassRef| {
            if !parts.iter().any(|p| Arc::ptr_eq(p, &c)) {
                parts.push(c);
            }
        };
        self.frames(end, |tag, body| {
            match tag {
                b'P' => {
                    let (name, sql) = parse_statement(body).map_err(protocol)?;
                    let c = self.classify_parse(sql);
                    if name.is_empty() {
                        unnamed = Some(c.clone());
                    }
                    note(c);
                }
                b'B' => {
                    let (_, stmt, _) = bind_statement(body).map_err(protocol)?;
                    let c = if stmt.is_empty() {
                        unnamed.clone()
                    } else {
                        self.statements.get(stmt).map(|s| s.class.clone())
                    };
                    match c {
                        Some(c) => note(c),
                        None => unknown = true,
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        if parts.len() == 1 && !unknown {
            return Ok(parts.swap_remove(0));
        }
        let mut class = Class::new(Need::Read);
        for c in &parts {
            class.require(c.need);
            class.catalog |= c.catalog;
            class.hint = class.hint.or(c.hint);
            class.tx = class.tx.or(c.tx);
            class.ddl |= c.ddl;
            class.functions.extend(c.functions.iter().cloned());
            class.operators.extend(c.operators.iter().cloned());
            class.relations.extend(c.relations.iter().cloned());
        }
        if unknown {
            class.require(Need::Unknown);
        }
        Ok(Arc::new(class))
    }

    /// The class of a Parse's query. Drivers that re-parse the same unnamed statement for every
    /// query (libpq's `PQexecParams`, pgbench's extended mode) get its class from the last time.
    pub(super) fn classify_parse(&self, sql: &str) -> ClassRef {
        match (&self.unnamed, &self.unnamed_class) {
            (Some((last, _, _)), Some(c)) if last == sql => c.clone(),
            _ => self.classify(sql),
        }
    }

    /// One pass over a batch that has its connection: whether it needs response bookkeeping
    /// (pgsplit answers or adds messages), whether it parses or closes a named statement, and
    /// whether it is whole (ends with its Sync).
    fn scan_attached(&self, end: usize) -> Result<BatchScan, Error> {
        let b = self.backend.as_ref().expect("attached");
        let mut unnamed_here =
            self.unnamed.as_ref().is_some_and(|u| u.2 == b.conn.pid) && self.unnamed_node == Some(b.node);
        let mut track = false;
        let mut names_statements = false;
        let mut last = 0u8;
        self.frames(end, |tag, body| {
            last = tag;
            let named = |name: &str| !name.is_empty();
            match tag {
                b'P' => {
                    if body.first().is_some_and(|&c| c != 0) {
                        track = true;
                        names_statements = true;
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
                b'C' if body.first() == Some(&b'S') && body.len() > 2 => {
                    track = true;
                    names_statements = true;
                }
                _ => {}
            }
            Ok(())
        })?;
        let whole = last == b'S';
        // A batch routed before its Sync arrived is tracked: its rest may need rewriting.
        Ok(BatchScan { tracking: track || !whole, names_statements, whole })
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
            b'P' => Some(self.classify_parse(parse_statement(body).map_err(protocol)?.1)),
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

    /// An unnamed Parse goes to the server as it is; the session keeps a copy (to re-create
    /// the statement on another connection) and its class. The same text and parameter types
    /// again (libpq's `PQexecParams`) leave the copy as it is: only where it exists changes.
    fn forward_unnamed_parse(&mut self, frame: &[u8]) -> Result<(), Error> {
        let body = &frame[5..];
        self.forget_local(DescribeTarget::Statement, "");
        let b = self.backend.as_ref().expect("attached");
        let (node, pid) = (b.node, b.conn.pid);
        let same = match &self.unnamed {
            Some((last, types, _)) => parse_repeats(body, last, types).map_err(protocol)?,
            None => false,
        };
        if same {
            if let Some(u) = self.unnamed.as_mut() {
                u.2 = pid;
            }
        } else {
            let FrontendMessage::Parse { sql, param_types, .. } =
                FrontendMessage::decode(b'P', body).map_err(protocol)?
            else {
                unreachable!("a P frame decodes to Parse")
            };
            self.unnamed_class = Some(self.classify_parse(&sql));
            self.unnamed = Some((sql, param_types, pid));
        }
        self.unnamed_node = Some(node);
        self.bout.extend_from_slice(frame);
        self.track(Expect::Parse { swallow: false, id: None });
        Ok(())
    }

    fn forward_extended(&mut self, h: FrameHeader) -> Result<(), Error> {
        let frame: BytesMut = self.cin.split_to(h.total);
        let body = &frame[5..];
        // A whole batch was routed on the class of everything in it; only a frame that arrived
        // after the batch was routed is checked on its own.
        if !self.batch_whole && self.refuse_on_replica(h.tag, body)? {
            return Ok(());
        }
        if let Some(r) = self.retry.as_mut().filter(|r| r.open) {
            r.frames.extend_from_slice(&frame);
            if h.tag == b'S' {
                r.open = false;
            }
        }
        match h.tag {
            b'P' if body.first() == Some(&0) => self.forward_unnamed_parse(&frame)?,
            b'P' => {
                let FrontendMessage::Parse { name, sql, param_types } =
                    FrontendMessage::decode(b'P', body).map_err(protocol)?
                else {
                    unreachable!("a P frame decodes to Parse")
                };
                if self.statements.contains_key(&name) || self.has_local_statement(&name) {
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
                let (portal, name, _) = bind_statement(body).map_err(protocol)?;
                if self.local.is_some() {
                    self.forget_local(DescribeTarget::Portal, portal);
                }
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
                    prepare: None,
                });
                self.batch_open = false;
                self.batch_whole = false;
                self.tracking = false;
            }
            _ => unreachable!("only extended-protocol frames come here"),
        }
        Ok(())
    }
}
