//! The routing policy: one pure decision per statement batch, with the reason that feeds
//! metrics and logs. A decision is never re-derived for the same batch.

use pgsplit_protocol::TxStatus;

use super::{Class, Need};

/// Where a batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Primary,
    /// A replica, by index in the replica list.
    Replica(usize),
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
    /// A read, sent to the primary because no replica may serve it.
    NoReplica,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Needs(n) => n.as_str(),
            Reason::InTransaction => "in_transaction",
            Reason::Pinned => "pinned",
            Reason::NoReplica => "no_replica",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    pub reason: Reason,
}

/// What the policy needs to know about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub tx: TxStatus,
    pub pinned: bool,
}

/// Decides where a batch runs. Until replica routing lands, every batch runs on the primary;
/// the reason still says why a replica could not have taken it.
pub fn route(class: &Class, session: &SessionView) -> Route {
    let reason = if session.tx != TxStatus::Idle {
        Reason::InTransaction
    } else if session.pinned {
        Reason::Pinned
    } else if class.need != Need::Read {
        Reason::Needs(class.need)
    } else {
        Reason::NoReplica
    };
    Route { target: Target::Primary, reason }
}
