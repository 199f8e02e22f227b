//! The routing policy: one pure decision per statement batch, from the batch's class, the
//! session's state, the replicas that may serve it, and configuration — with the reason that
//! feeds metrics and logs. A decision is never re-derived for the same batch.

use pgsplit_protocol::TxStatus;

use super::{Class, Hint, Need, TxControl};
use crate::config::{LoadBalance, Reads, RoutingSettings};
use crate::replication::Catalog;

/// A check that needs the catalog: whether it applies, whether the catalog says the batch hits
/// it, and the reason to give.
type CatalogCheck<'a> = (bool, &'a dyn Fn(&Catalog) -> bool, Reason);

/// Where a batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Primary,
    /// A node serving a read, by index in the node list.
    Replica(usize),
}

impl Target {
    pub fn label(&self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica(_) => "replica",
        }
    }
}

/// Why the policy chose its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The statement needs the primary for this reason.
    Needs(Need),
    /// A transaction is open: everything stays on its backend.
    InTransaction,
    /// Session state ties the session to the primary.
    Pinned,
    HintPrimary,
    HintReplica,
    VolatileFunction,
    UnknownFunction,
    PrimaryFunction,
    UnloggedTable,
    /// The database's catalog facts are not loaded yet: reads wait on the primary.
    CatalogNotLoaded,
    Catalog,
    /// Session settings a replica must not get (serializable, read-write defaults).
    SessionSettings,
    /// The user/database/application prefers the primary for reads.
    Preference,
    /// A read, sent to the primary because no replica may serve it.
    NoReplica,
    /// The session's last write is not known to be on any replica yet.
    ReadYourWrites,
    /// `time` consistency: the window after a write.
    TimeWindow,
    /// Healthy replicas exist but none has replayed the position this read needs.
    ReplicasBehind,
    /// A read on a replica.
    Read,
    /// A `BEGIN READ ONLY` transaction on a replica.
    ReadOnlyTransaction,
}

impl Reason {
    /// How many distinct reasons there are (for counter arrays).
    pub const COUNT: usize = 20 + Need::COUNT;

    /// A dense index for counter arrays.
    pub fn index(&self) -> usize {
        match self {
            Reason::InTransaction => 0,
            Reason::Pinned => 1,
            Reason::HintPrimary => 2,
            Reason::HintReplica => 3,
            Reason::VolatileFunction => 4,
            Reason::UnknownFunction => 5,
            Reason::PrimaryFunction => 6,
            Reason::UnloggedTable => 7,
            Reason::CatalogNotLoaded => 8,
            Reason::Catalog => 9,
            Reason::SessionSettings => 10,
            Reason::Preference => 11,
            Reason::NoReplica => 12,
            Reason::ReadYourWrites => 13,
            Reason::TimeWindow => 14,
            Reason::ReplicasBehind => 15,
            Reason::Read => 16,
            Reason::ReadOnlyTransaction => 17,
            Reason::Needs(n) => 20 + n.index(),
        }
    }

    /// Every reason, once.
    pub fn all() -> impl Iterator<Item = Reason> {
        [
            Reason::InTransaction,
            Reason::Pinned,
            Reason::HintPrimary,
            Reason::HintReplica,
            Reason::VolatileFunction,
            Reason::UnknownFunction,
            Reason::PrimaryFunction,
            Reason::UnloggedTable,
            Reason::CatalogNotLoaded,
            Reason::Catalog,
            Reason::SessionSettings,
            Reason::Preference,
            Reason::NoReplica,
            Reason::ReadYourWrites,
            Reason::TimeWindow,
            Reason::ReplicasBehind,
            Reason::Read,
            Reason::ReadOnlyTransaction,
        ]
        .into_iter()
        .chain(Need::ALL.iter().map(|n| Reason::Needs(*n)))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Needs(n) => n.as_str(),
            Reason::InTransaction => "in_transaction",
            Reason::Pinned => "pinned",
            Reason::HintPrimary => "hint_primary",
            Reason::HintReplica => "hint_replica",
            Reason::VolatileFunction => "volatile_function",
            Reason::UnknownFunction => "unknown_function",
            Reason::PrimaryFunction => "primary_function",
            Reason::UnloggedTable => "unlogged_table",
            Reason::CatalogNotLoaded => "catalog_not_loaded",
            Reason::Catalog => "catalog",
            Reason::SessionSettings => "session_settings",
            Reason::Preference => "preference",
            Reason::NoReplica => "no_replica",
            Reason::ReadYourWrites => "read_your_writes",
            Reason::TimeWindow => "time_window",
            Reason::ReplicasBehind => "replicas_behind",
            Reason::Read => "read",
            Reason::ReadOnlyTransaction => "read_only_transaction",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    pub reason: Reason,
}

impl Route {
    fn primary(reason: Reason) -> Self {
        Route { target: Target::Primary, reason }
    }

    /// Whether running the batch may have changed data: the class says so, or a function the
    /// policy could not clear sent it to the primary.
    pub fn may_write(&self, class: &Class) -> bool {
        class.may_write()
            || matches!(
                self.reason,
                Reason::VolatileFunction | Reason::UnknownFunction | Reason::PrimaryFunction | Reason::CatalogNotLoaded
            )
    }
}

/// What the policy needs to know about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub tx: TxStatus,
    pub pinned: bool,
    /// The target of the backend the session holds, if any.
    pub attached: Option<Target>,
    pub reads: Reads,
    /// Session settings that must not reach a replica.
    pub forces_primary: bool,
    /// Freshness keeps this session's reads on the primary, for this reason.
    pub freshness: Option<Reason>,
    /// The node this session last read from: it wins ties of least-outstanding balancing
    /// (its server process and caches are warm, and a lone client is not bounced between
    /// replicas on every statement).
    pub last_read: Option<usize>,
}

/// A node that may serve this read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub node: usize,
    /// Requests outstanding on it.
    pub load: usize,
    pub weight: u32,
}

/// Decides where a batch runs. `candidates` are the nodes that may serve reads for this session
/// right now (healthy, not banned, fresh enough); `rr` is a rotating counter for balancing.
pub fn route(
    class: &Class,
    s: &SessionView,
    candidates: &[Candidate],
    catalog: Option<&Catalog>,
    cfg: &RoutingSettings,
    rr: usize,
) -> Route {
    if s.tx != TxStatus::Idle {
        return Route { target: s.attached.unwrap_or(Target::Primary), reason: Reason::InTransaction };
    }
    if s.pinned {
        return Route::primary(Reason::Pinned);
    }
    if class.hint == Some(Hint::Primary) {
        return Route::primary(Reason::HintPrimary);
    }
    if class.need != Need::Read {
        return Route::primary(Reason::Needs(class.need));
    }
    if let Some(TxControl::Begin { read_only: false, .. } | TxControl::Begin { serializable: true, .. }) = class.tx {
        return Route::primary(Reason::Needs(Need::TxControl));
    }
    for f in &class.functions {
        if cfg.primary_functions.contains(f) {
            return Route::primary(Reason::PrimaryFunction);
        }
        if cfg.harmless.contains(f) {
            continue;
        }
        let Some(catalog) = catalog else { return Route::primary(Reason::CatalogNotLoaded) };
        match catalog.volatility(f) {
            Some(b'v') => return Route::primary(Reason::VolatileFunction),
            Some(_) => {}
            None => return Route::primary(Reason::UnknownFunction),
        }
    }
    // operators backed by volatile functions, unlogged tables: both need the catalog
    let catalog_checks: [CatalogCheck<'_>; 2] = [
        (
            !class.operators.is_empty(),
            &|c| class.operators.iter().any(|o| c.volatile_operators.contains(o)),
            Reason::VolatileFunction,
        ),
        (
            !class.relations.is_empty(),
            &|c| class.relations.iter().any(|r| c.unlogged.contains(r)),
            Reason::UnloggedTable,
        ),
    ];
    for (present, hit, reason) in catalog_checks {
        match catalog {
            _ if !present => {}
            None => return Route::primary(Reason::CatalogNotLoaded),
            Some(c) if hit(c) => return Route::primary(reason),
            Some(_) => {}
        }
    }
    if s.forces_primary {
        return Route::primary(Reason::SessionSettings);
    }
    // A hint for a replica overrides preferences and freshness (the client accepts a replica's
    // view), never what a replica cannot do.
    let hinted = class.hint == Some(Hint::Replica);
    if !hinted {
        if class.catalog && !cfg.catalog_on_replicas {
            return Route::primary(Reason::Catalog);
        }
        if s.reads == Reads::Primary {
            return Route::primary(Reason::Preference);
        }
        if let Some(r) = s.freshness {
            return Route::primary(r);
        }
    }
    match choose(candidates, cfg.load_balance, rr, s.last_read) {
        Some(node) => Route {
            target: Target::Replica(node),
            reason: if hinted {
                Reason::HintReplica
            } else if matches!(class.tx, Some(TxControl::Begin { .. })) {
                Reason::ReadOnlyTransaction
            } else {
                Reason::Read
            },
        },
        None => Route::primary(Reason::NoReplica),
    }
}

/// Picks a node among the candidates.
pub fn choose(candidates: &[Candidate], mode: LoadBalance, rr: usize, prefer: Option<usize>) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let pick = match mode {
        LoadBalance::RoundRobin => candidates[rr % candidates.len()],
        LoadBalance::LeastOutstanding => {
            // the least loaded; ties go to `prefer`, or else rotate so equal replicas share
            // the work
            let min = candidates.iter().map(|c| c.load).min().unwrap_or(0);
            let tied = candidates.iter().filter(|c| c.load == min);
            if let Some(p) = tied.clone().find(|c| Some(c.node) == prefer) {
                return Some(p.node);
            }
            let n = tied.clone().count();
            *tied.clone().nth(rr % n).unwrap_or(&candidates[0])
        }
        LoadBalance::Weighted => {
            let total: u64 = candidates.iter().map(|c| c.weight.max(1) as u64).sum();
            let mut at = (rr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
            let mut chosen = candidates[0];
            for c in candidates {
                let w = c.weight.max(1) as u64;
                if at < w {
                    chosen = *c;
                    break;
                }
                at -= w;
            }
            chosen
        }
    };
    Some(pick.node)
}
