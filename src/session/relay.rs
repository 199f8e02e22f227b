//! The command loop: client frames go to the backend chosen for their batch (`dispatch`), backend
//! frames come back to the client untouched (`answers`). Reads and writes on both sockets are
//! driven from one poll over both, so a large result and a large pipeline can never wedge each
//! other.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pgsplit_protocol::framing::peek_header;
use pgsplit_protocol::{ErrorResponse, Limits, TxStatus};
use std::future::Future;
use std::pin::Pin as StdPin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use super::expect::Expectations;
use super::io::ClientIo;
use super::retry::Retry;
use super::sqlprepare::SqlStatement;
use super::state::SessionParams;
use crate::cancel::Registration;
use crate::clients::ClientHandle;
use crate::config::PoolMode;
use crate::config::{Mode, Reads};
use crate::context::Context;
use crate::error::Error;
use crate::pool::{Credential, Pool, PooledConn};
use crate::router::freshness::WriteState;
use crate::router::{Effect, Pin, Target};
use crate::statements::Statement;

/// Stop reading a side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 << 10;

/// Buffers larger than this are given back when a session goes idle.
const IDLE_BUFFER_KEEP: usize = 16 << 10;

/// Room made in a read buffer before each read, client side and backend side. A read fills at
/// most the room there is: in a buffer whose room had been used up by earlier messages a batch
/// arrived in pieces, one system call each. (Reserving in an emptied buffer takes its space
/// back without allocating.)
const CLIENT_READ_ROOM: usize = 256;
const BACKEND_READ_ROOM: usize = 8 << 10;

fn make_room(buf: &mut BytesMut, room: usize) {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room);
    }
}

/// The backend connection a session holds.
pub(super) struct Backend {
    pub conn: PooledConn,
    pub target: Target,
    /// Index of its node in the topology.
    pub node: usize,
}

/// Who the session is logged in as, and what follows from it.
pub(super) struct Login {
    pub user: String,
    pub database: String,
    pub credential: Credential,
    pub pool_size: usize,
    pub application_name: String,
}

/// What happened to one batch (a simple Query, or extended messages up to Sync).
pub(super) struct Batch {
    /// Extended protocol (ended by Sync) rather than a simple Query.
    pub extended: bool,
    /// Changes schema: the catalog facts are refreshed when it completes.
    pub ddl: bool,
    /// May have written: when it commits, the session's reads must see it.
    pub wrote: bool,
    pub effects: Vec<Effect>,
    pub error: bool,
    pub started: Instant,
    pub target: &'static str,
    /// A SQL PREPARE that registers the client's statement once it succeeds.
    pub prepare: Option<(String, SqlStatement)>,
}

impl Batch {
    /// A batch pgsplit itself sent, or one with nothing to note.
    pub fn internal(target: &'static str) -> Self {
        Batch {
            extended: false,
            ddl: false,
            wrote: false,
            effects: Vec::new(),
            error: false,
            started: Instant::now(),
            target,
            prepare: None,
        }
    }
}

pub struct Session {
    pub(super) ctx: Arc<Context>,
    pub(super) login: Login,
    /// This client's entry in the registry (SHOW CLIENTS, the dashboard).
    pub(super) client: ClientHandle,
    /// Pools by node index, created on first use.
    pub(super) pools: Vec<Option<Pool>>,
    pub(super) mode: PoolMode,
    pub(super) cancel: Registration,
    pub(super) limits: Limits,

    pub(super) cin: BytesMut,
    pub(super) cout: BytesMut,
    pub(super) bout: BytesMut,
    pub(super) backend: Option<Backend>,
    /// Session mode: the other connections this session holds, idle.
    pub(super) parked: Vec<Backend>,
    /// A batch waits for the current backend to finish before it can go elsewhere.
    pub(super) blocked: bool,
    /// Session settings that must not reach a replica are in force.
    pub(super) forces_primary: bool,

    /// Transaction status from the last ReadyForQuery.
    pub(super) tx: TxStatus,
    /// Batches sent whose ReadyForQuery has not come back.
    pub(super) batches: VecDeque<Batch>,
    /// Extended-protocol messages were sent since the last Sync.
    pub(super) batch_open: bool,
    /// The open batch was routed with its Sync in: every statement in it was classified.
    pub(super) batch_whole: bool,
    /// The open extended batch is being tracked in `expect`.
    pub(super) tracking: bool,
    /// Effects of the open extended batch, until its Sync.
    pub(super) open_effects: Vec<Effect>,
    /// Drop client messages up to the next Sync (after pgsplit reported an error itself).
    pub(super) skip_until_sync: bool,
    pub(super) expect: Expectations,
    /// The backend is in COPY FROM STDIN.
    pub(super) copy_in: bool,
    /// A COPY FROM STDIN started by an extended batch whose Sync was already sent: the backend
    /// ignores Syncs until the copy ends, so the first Sync after CopyDone/CopyFail stands in
    /// for that batch's Sync.
    pub(super) copy_sync_ignored: bool,
    /// The client has ended that copy (CopyDone/CopyFail).
    pub(super) copy_ended: bool,

    pub(super) params: SessionParams,
    pub(super) pins: Vec<Pin>,
    /// Effects of statements inside the open transaction, applied if it commits.
    pub(super) tx_effects: Vec<Effect>,
    /// Whether the transaction that just ended committed (from CommandComplete).
    pub(super) tx_committed: Option<bool>,
    /// The client's named statements.
    pub(super) statements: HashMap<String, Arc<Statement>>,
    /// The client's SQL prepared statements (`PREPARE`).
    pub(super) sql_statements: HashMap<String, SqlStatement>,
    /// The client's extended-protocol statements and portals of pgsplit commands.
    pub(super) local: Option<Box<super::local::LocalStatements>>,
    /// The client's unnamed statement and the backend pid it was parsed on.
    pub(super) unnamed: Option<(String, Vec<u32>, i32)>,
    pub(super) unnamed_class: Option<crate::router::ClassRef>,
    pub(super) unnamed_node: Option<usize>,
    /// When the open extended batch started and where it went.
    pub(super) batch_started: Option<(Instant, &'static str)>,
    /// The open extended batch changes schema.
    pub(super) batch_ddl: bool,
    /// The open extended batch may write.
    pub(super) batch_wrote: bool,
    /// The open transaction has written.
    pub(super) tx_wrote: bool,
    /// `SET pgsplit.consistency`: this session's own mode, over the configured one.
    pub(super) consistency_override: Option<Mode>,
    /// What the session knows about its writes, for read-your-writes.
    pub(super) writes: WriteState,

    /// A read that can still be retried elsewhere (see `retry`).
    pub(super) retry: Option<Retry>,
    /// The next routing decision avoids this node (it just failed a read).
    pub(super) avoid_node: Option<usize>,
    /// The replica this session last read from (wins balancing ties).
    pub(super) last_read: Option<usize>,
    /// Its database's catalog facts, as of the last routing decision that needed them.
    pub(super) catalog_memo: crate::replication::catalog::CatalogMemo,
    /// The batch being routed now is a retry: it gets no second one.
    pub(super) retried: bool,
    /// The armed read failed and has ended: retry it before anything else.
    pub(super) retry_due: Option<String>,

    pub(super) draining: bool,
    /// Written to the client since its stream was last flushed: a TLS stream can take the
    /// bytes and still hold records that the full socket did not accept.
    pub(super) client_unflushed: bool,
    pub(super) terminated: bool,
}

enum Event {
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    BackendRead(std::io::Result<usize>),
    BackendWrote(std::io::Result<usize>),
    Shutdown,
}

impl Session {
    pub(super) fn new(
        ctx: Arc<Context>,
        login: Login,
        client: ClientHandle,
        mode: PoolMode,
        params: SessionParams,
        cancel: Registration,
    ) -> Self {
        let limits = ctx.settings().server.limits;
        Session {
            forces_primary: params.forces_primary(),
            consistency_override: None,
            ctx,
            login,
            client,
            pools: Vec::new(),
            mode,
            cancel,
            limits,
            // Grown on demand and let go when idle (see `shrink_idle_buffers`), so that idle
            // sessions cost little; `cin` becomes the login's read buffer.
            cin: BytesMut::new(),
            cout: BytesMut::new(),
            bout: BytesMut::new(),
            backend: None,
            parked: Vec::new(),
            blocked: false,
            tx: TxStatus::Idle,
            batches: VecDeque::new(),
            batch_open: false,
            batch_whole: false,
            tracking: false,
            open_effects: Vec::new(),
            skip_until_sync: false,
            expect: Expectations::default(),
            copy_in: false,
            copy_sync_ignored: false,
            copy_ended: false,
            params,
            pins: Vec::new(),
            tx_effects: Vec::new(),
            tx_committed: None,
            statements: HashMap::new(),
            sql_statements: HashMap::new(),
            local: None,
            unnamed: None,
            unnamed_class: None,
            unnamed_node: None,
            batch_started: None,
            batch_ddl: false,
            batch_wrote: false,
            tx_wrote: false,
            writes: WriteState::default(),
            retry: None,
            avoid_node: None,
            last_read: None,
            catalog_memo: Default::default(),
            retried: false,
            retry_due: None,
            draining: false,
            client_unflushed: false,
            terminated: false,
        }
    }

    /// The session's consistency mode now: its own, or the configured one for its user and
    /// database (which RELOAD can change).
    pub(super) fn consistency(&self) -> Mode {
        self.consistency_override
            .unwrap_or_else(|| self.ctx.settings().consistency.mode_for(&self.login.user, &self.login.database))
    }

    /// Where the session's reads go by preference (configured, and changed by RELOAD).
    pub(super) fn reads(&self, settings: &crate::config::Settings) -> Reads {
        settings.routing.reads_for(&self.login.user, &self.login.database, &self.login.application_name)
    }

    pub(super) fn cancel_pid(&self) -> i32 {
        self.cancel.slot.pid
    }

    pub(super) fn cancel_secret(&self) -> i32 {
        self.cancel.slot.secret
    }

    /// Runs the command loop until the client leaves, then cleans up its backend connection.
    pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self: Box<Self>, io: ClientIo<S>) {
        let ClientIo { mut stream, rbuf, .. } = io;
        self.cin = rbuf;
        let result = self.command_loop(&mut stream).await;
        if let Err(e) = &result {
            if let Some(r) = e.response() {
                r.encode(&mut self.cout);
                crate::metrics::error_sent(r.code.code());
            }
            match e {
                Error::ClientGone | Error::ClientIo(_) => tracing::debug!("client disconnected"),
                e => tracing::info!(error = %e, "session ended"),
            }
        }
        if !self.cout.is_empty() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&self.cout)).await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.shutdown()).await;
        Box::pin(self.finish()).await;
    }

    async fn command_loop<S: AsyncRead + AsyncWrite + Unpin>(&mut self, client: &mut S) -> Result<(), Error> {
        let mut client_eof = false;
        // One shutdown future for the whole session, not one per turn of the loop.
        let shutdown_token = self.ctx.shutdown.clone();
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(shutdown);
        loop {
            if !self.skip_client() {
                self.process_client().await?;
            }
            let was_blocked = self.blocked;
            self.process_backend()?;
            if let Some(why) = self.retry_due.take() {
                Box::pin(self.retry_now(&why)).await;
                continue;
            }
            if self.releasable() {
                // The answer leaves before the connection goes back: the client is waiting for
                // it, and giving the connection back is work it need not wait for.
                self.write_client_now(client).await?;
                self.release().await;
                self.shrink_idle_buffers();
            } else if self.backend.is_some() && self.batches.is_empty() && self.tx == TxStatus::Idle {
                tracing::trace!(batch_open = self.batch_open, expect = ?self.expect, pins = ?self.pins, bout = self.bout.len(), "holding backend while idle");
            }
            if self.draining && self.idle_for_shutdown() {
                return Err(Error::Shutdown);
            }
            if (self.terminated || client_eof) && self.cout.is_empty() {
                return Ok(());
            }
            // The backend has finished what a buffered client batch was waiting for: handle
            // that batch now rather than after the next socket event (there may be none).
            if was_blocked && !self.blocked && !self.cin.is_empty() {
                continue;
            }
            let read_client =
                !client_eof && !self.terminated && self.bout.len() < HIGH_WATER && !self.skip_client_reads();
            // Wait for whichever socket is ready first; writes go first so that what is
            // buffered leaves before more is read.
            let ev = std::future::poll_fn(|cx| {
                let Session { cout, bout, cin, backend, draining, client_unflushed, .. } = &mut *self;
                if !cout.is_empty() {
                    if let Poll::Ready(r) = StdPin::new(&mut *client).poll_write(cx, &cout[..]) {
                        return Poll::Ready(Event::ClientWrote(r));
                    }
                } else if *client_unflushed {
                    // nothing left to write, but what was written may still be buffered (TLS):
                    // push it out now, or when the socket has room (no-op for plain sockets)
                    match StdPin::new(&mut *client).poll_flush(cx) {
                        Poll::Ready(Ok(())) => *client_unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientWrote(Err(e))),
                        Poll::Pending => {}
                    }
                }
                if let Some(b) = backend.as_mut() {
                    let c = &mut *b.conn;
                    if !bout.is_empty() {
                        if let Poll::Ready(r) = StdPin::new(&mut c.stream).poll_write(cx, &bout[..]) {
                            return Poll::Ready(Event::BackendWrote(r));
                        }
                    }
                    if cout.len() < HIGH_WATER {
                        make_room(&mut c.rbuf, BACKEND_READ_ROOM);
                        if let Poll::Ready(r) = poll_read_buf(StdPin::new(&mut c.stream), cx, &mut c.rbuf) {
                            return Poll::Ready(Event::BackendRead(r));
                        }
                    }
                }
                if read_client {
                    make_room(cin, CLIENT_READ_ROOM);
                    if let Poll::Ready(r) = poll_read_buf(StdPin::new(&mut *client), cx, cin) {
                        return Poll::Ready(Event::ClientRead(r));
                    }
                }
                if !*draining && shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Shutdown);
                }
                Poll::Pending
            })
            .await;
            match ev {
                Event::ClientWrote(r) => self.wrote_to_client(r)?,
                Event::BackendWrote(r) => {
                    let n = r.map_err(|_| Error::BackendLost)?;
                    self.bout.advance(n);
                }
                Event::BackendRead(r) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        self.backend_lost();
                        if self.retry.as_ref().is_some_and(|r| !r.open) {
                            Box::pin(self.retry_now("connection lost")).await;
                            continue;
                        }
                        return Err(Error::BackendLost);
                    }
                }
                Event::ClientRead(r) => {
                    if r.map_err(Error::ClientIo)? == 0 {
                        client_eof = true;
                        if self.backend.is_none() || self.cout.is_empty() {
                            return Err(Error::ClientGone);
                        }
                    }
                }
                Event::Shutdown => self.draining = true,
            }
        }
    }

    /// Accounts for a write to the client: what it took leaves the buffer, and the stream may
    /// now hold it until flushed.
    fn wrote_to_client(&mut self, r: std::io::Result<usize>) -> Result<(), Error> {
        let n = r.map_err(Error::ClientIo)?;
        self.cout.advance(n);
        self.client_unflushed = true;
        Ok(())
    }

    /// Writes what is buffered for the client once, without waiting: what the socket does not
    /// take now is written by the command loop as usual.
    async fn write_client_now<S: AsyncWrite + Unpin>(&mut self, client: &mut S) -> Result<(), Error> {
        if self.cout.is_empty() {
            return Ok(());
        }
        let cout = &self.cout;
        let r = std::future::poll_fn(|cx| {
            Poll::Ready(match StdPin::new(&mut *client).poll_write(cx, &cout[..]) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await;
        match r {
            Some(r) => self.wrote_to_client(r),
            None => Ok(()),
        }
    }

    /// An idle session keeps no large buffers: after a big result or COPY they go back to
    /// the allocator instead of staying with the client for the rest of its session.
    fn shrink_idle_buffers(&mut self) {
        for buf in [&mut self.cin, &mut self.cout, &mut self.bout] {
            if buf.is_empty() && buf.capacity() > IDLE_BUFFER_KEEP {
                *buf = BytesMut::new();
            }
        }
    }

    fn skip_client(&self) -> bool {
        self.terminated
    }

    fn skip_client_reads(&self) -> bool {
        // Enough is buffered to work with; wait until it has been sent on.
        self.blocked
            || self.cin.len() >= HIGH_WATER
                && peek_header(&self.cin, |t| self.limits.frontend_cap(t))
                    .ok()
                    .flatten()
                    .is_some_and(|h| h.total <= self.cin.len())
    }

    fn idle_for_shutdown(&self) -> bool {
        self.tx == TxStatus::Idle && self.batches.is_empty() && !self.batch_open && !self.copy_in
    }

    /// Whether the backend connection can go back to its pool now.
    pub(super) fn releasable(&self) -> bool {
        self.backend.is_some()
            && self.mode == PoolMode::Transaction
            && self.pins.is_empty()
            && self.idle_for_shutdown()
            && self.expect.is_empty()
            && self.bout.is_empty()
    }

    fn backend_lost(&mut self) {
        if let Some(b) = &mut self.backend {
            b.conn.broken = true;
        }
    }

    /// Reports an error for the request at hand and, for an extended batch, skips to its Sync.
    pub(super) fn report(&mut self, e: &ErrorResponse) {
        e.encode(&mut self.cout);
        crate::metrics::error_sent(e.code.code());
    }
}
