//! Routing: what a statement batch is ([`classify`]) and where it runs ([`policy`]).
//!
//! Both halves are pure — no I/O, no awaiting, no clocks — so they are table-tested. The
//! classifier reads PostgreSQL's own parse tree (`pg_query`); a small lexical fast path
//! ([`fast`]) answers the common shapes that provably need no parse, and a bounded cache
//! ([`cache`]) remembers results by statement text. Anything the classifier cannot prove safe
//! for a replica is classified as needing the primary.

pub mod cache;
mod classify;
pub mod fast;
pub mod freshness;
mod functions;
pub mod policy;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use cache::Classifier;
pub use classify::{classify_full, quote_literal, setting_forces_primary};
pub use policy::{route, Reason, Route, Target};

/// Transaction control in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN` / `START TRANSACTION` with its access mode and isolation.
    Begin { read_only: bool, serializable: bool },
    /// `COMMIT`, `ROLLBACK`, `END`, `ABORT`.
    End,
}

/// Session state that outlives the statement and ties the session to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Pin {
    Listen,
    TempObject,
    AdvisoryLock,
    HoldCursor,
    Sequence,
    SqlPrepare,
    /// Session state pgsplit cannot replay (`LOAD`, a `set_config` with computed arguments, ...).
    Other,
}

impl Pin {
    pub const ALL: [Pin; 7] =
        [Pin::Listen, Pin::TempObject, Pin::AdvisoryLock, Pin::HoldCursor, Pin::Sequence, Pin::SqlPrepare, Pin::Other];

    /// The pins in a bit set of discriminants.
    pub fn from_bits(bits: u8) -> impl Iterator<Item = Pin> {
        Self::ALL.into_iter().filter(move |p| bits & (1 << (*p as u8)) != 0)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Pin::Listen => "listen",
            Pin::TempObject => "temp_object",
            Pin::AdvisoryLock => "advisory_lock",
            Pin::HoldCursor => "hold_cursor",
            Pin::Sequence => "sequence",
            Pin::SqlPrepare => "sql_prepare",
            Pin::Other => "other",
        }
    }
}

/// What a statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A session-level setting; `sql` replays it (the statement's own text).
    Set {
        name: String,
        sql: String,
    },
    /// `RESET name`.
    Reset {
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`: settings, prepared statements, pins — everything.
    DiscardAll,
    /// `DEALLOCATE ALL`: every prepared statement of the session.
    DeallocateAll,
    /// `DISCARD TEMP`, `DISCARD SEQUENCES`, `UNLISTEN *`, `pg_advisory_unlock_all()`, `CLOSE ALL`.
    Unpin(Pin),
    Pin(Pin),
}

/// A comment hint: `/* pgsplit:primary */` or `/* pgsplit:replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// Why a statement needs the primary, or that it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// Safe on a replica, as far as the text shows.
    Read,
    Write,
    Ddl,
    Locking,
    SelectInto,
    WritableCte,
    SideEffectFunction,
    TxControl,
    SessionState,
    Utility,
    Copy,
    ExplainAnalyze,
    Catalog,
    Unknown,
    ParseError,
}

impl Need {
    pub const ALL: [Need; 15] = [
        Need::Read,
        Need::Write,
        Need::Ddl,
        Need::Locking,
        Need::SelectInto,
        Need::WritableCte,
        Need::SideEffectFunction,
        Need::TxControl,
        Need::SessionState,
        Need::Utility,
        Need::Copy,
        Need::ExplainAnalyze,
        Need::Catalog,
        Need::Unknown,
        Need::ParseError,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// A dense index (the declaration order, which `ALL` follows).
    pub fn index(&self) -> usize {
        *self as usize
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Write => "write",
            Need::Ddl => "ddl",
            Need::Locking => "locking",
            Need::SelectInto => "select_into",
            Need::WritableCte => "writable_cte",
            Need::SideEffectFunction => "side_effect_function",
            Need::TxControl => "tx_control",
            Need::SessionState => "session_state",
            Need::Utility => "utility",
            Need::Copy => "copy",
            Need::ExplainAnalyze => "explain_analyze",
            Need::Catalog => "catalog",
            Need::Unknown => "unknown",
            Need::ParseError => "parse_error",
        }
    }
}

/// Everything routing needs to know about one statement batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// `Need::Read` when every statement may run on a replica; otherwise the first reason why not.
    pub need: Need,
    /// Only reads the catalog (`pg_catalog`, `information_schema`): a read, routed by config.
    pub catalog: bool,
    pub tx: Option<TxControl>,
    pub effects: Vec<Effect>,
    /// Functions whose volatility decides the route (not in pgsplit's built-in tables),
    /// lower-case, unqualified.
    pub functions: Vec<String>,
    /// Operators written in the text (`=`, `@@`, ...), sorted: one backed by a volatile
    /// function makes the batch a write, as the function itself would.
    pub operators: Vec<String>,
    /// Relations read (lower-case, unqualified), for the unlogged-table check.
    pub relations: Vec<String>,
    pub hint: Option<Hint>,
    /// Changes schema: caches of function volatility and relation kinds must be refreshed.
    pub ddl: bool,
    /// Number of statements in the batch.
    pub statements: usize,
    /// A lone SQL `PREPARE`, `EXECUTE` or `DEALLOCATE`, which the session handles itself.
    pub sql_prepared: Option<SqlPrepared>,
}

/// The placeholder for a prepared statement's name in [`SqlPrepared`] templates.
pub const STATEMENT_PLACEHOLDER: &str = "pgsplit_statement_placeholder";

/// SQL-level prepared statements, rewritten so that pgsplit can prepare them under its own
/// names on whichever connection runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlPrepared {
    /// `PREPARE name AS query`: `template` is the statement with the name replaced by
    /// [`STATEMENT_PLACEHOLDER`]; `inner` is the class of the prepared query.
    Prepare { name: String, template: String, inner: Box<Class> },
    /// `EXECUTE name (args)`, as a template.
    Execute { name: String, template: String },
    /// `DEALLOCATE name`.
    Deallocate { name: String },
}

impl Class {
    pub fn new(need: Need) -> Self {
        Class {
            need,
            catalog: false,
            tx: None,
            effects: Vec::new(),
            functions: Vec::new(),
            operators: Vec::new(),
            relations: Vec::new(),
            hint: None,
            ddl: false,
            statements: 1,
            sql_prepared: None,
        }
    }

    pub fn is_read(&self) -> bool {
        self.need == Need::Read
    }

    /// Marks the batch as needing the primary unless it already does.
    pub(crate) fn require(&mut self, need: Need) {
        if self.need == Need::Read {
            self.need = need;
        }
    }

    /// Whether the batch may change data, so that the session's later reads must see it.
    /// Transaction control, session state (LISTEN, locks, cursors, PREPARE) and locking reads
    /// change none; anything unknown might.
    pub fn may_write(&self) -> bool {
        !matches!(self.need, Need::Read | Need::TxControl | Need::SessionState | Need::Locking | Need::Catalog)
    }

    /// Whether any statement changes what later statements see of session state.
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }
}

/// A shared, immutable classification (what the cache hands out).
pub type ClassRef = Arc<Class>;

/// Finds a routing hint anywhere in the statement text.
pub fn find_hint(sql: &str) -> Option<Hint> {
    let i = sql.find("pgsplit:")?;
    let rest = &sql[i + 8..];
    if rest.starts_with("primary") {
        Some(Hint::Primary)
    } else if rest.starts_with("replica") {
        Some(Hint::Replica)
    } else {
        None
    }
}
