//! Session effects of finished batches: settings, pins, prepared statements. A batch's effects
//! apply when its ReadyForQuery shows it succeeded outside a transaction, or at COMMIT when it
//! ran inside one; never when it failed or was rolled back.

use std::collections::HashMap;
use std::sync::Arc;

use pgsplit_protocol::TxStatus;

use super::relay::Batch;
use super::sqlprepare::SqlStatement;
use super::state::{SessionParams, UNKNOWN_STATE};
use crate::router::{Effect, Pin};
use crate::statements::Statement;

/// The parts of a session a finished batch may change.
pub(super) struct FinishCtx<'a> {
    pub params: &'a mut SessionParams,
    pub pins: &'a mut Vec<Pin>,
    pub statements: &'a mut HashMap<String, Arc<Statement>>,
    pub sql_statements: &'a mut HashMap<String, SqlStatement>,
    pub conn: &'a mut crate::pool::ServerConn,
}

/// Applies a batch's effects once its ReadyForQuery says how it ended: at once when it
/// completed outside a transaction, at COMMIT when inside one, never when it failed.
pub(super) fn finish_batch(
    batch: Batch,
    status: TxStatus,
    tx_effects: &mut Vec<Effect>,
    committed: &mut Option<bool>,
    f: &mut FinishCtx<'_>,
) {
    // PREPARE is not transactional: it holds once it succeeded.
    if let (Some((name, stmt)), false) = (&batch.prepare, batch.error) {
        f.conn.sql_prepared.insert(stmt.internal.clone());
        f.sql_statements.insert(name.clone(), stmt.clone());
    }
    match status {
        TxStatus::Idle => {
            // A transaction that was open has ended: keep its effects only if it committed.
            if !tx_effects.is_empty() {
                let effects = std::mem::take(tx_effects);
                if committed.take() == Some(true) {
                    apply_effects(&effects, f);
                }
            }
            if !batch.error {
                apply_effects(&batch.effects, f);
            }
        }
        TxStatus::InTransaction => {
            if !batch.error {
                tx_effects.extend(batch.effects);
            }
        }
        TxStatus::Failed => {}
    }
    *committed = None;
}

pub(super) fn apply_effects(effects: &[Effect], f: &mut FinishCtx<'_>) {
    for e in effects {
        let before = f.params.fingerprint();
        match e {
            Effect::Pin(p) => {
                if !f.pins.contains(p) {
                    f.pins.push(*p);
                    crate::metrics::pinned(p.as_str(), 1.0);
                    tracing::debug!(pin = p.as_str(), "session pinned to its backend connection");
                }
            }
            Effect::Unpin(p) => {
                if let Some(i) = f.pins.iter().position(|x| x == p) {
                    f.pins.remove(i);
                    crate::metrics::pinned(p.as_str(), -1.0);
                }
            }
            Effect::DiscardAll => {
                for p in f.pins.drain(..) {
                    crate::metrics::pinned(p.as_str(), -1.0);
                }
                f.statements.clear();
                f.sql_statements.clear();
                f.conn.prepared.clear();
                f.conn.sql_prepared.clear();
                f.params.apply(e);
                f.conn.state_fp = 0;
                continue;
            }
            Effect::DeallocateAll => {
                f.statements.clear();
                f.sql_statements.clear();
                f.conn.prepared.clear();
                f.conn.sql_prepared.clear();
                continue;
            }
            Effect::ResetAll | Effect::Reset { .. } => {
                f.params.apply(e);
                // RESET returns the connection to its own defaults, not the client's startup
                // values, and RESET ALL leaves the role: the next use resets and re-applies.
                f.conn.state_fp = UNKNOWN_STATE;
                continue;
            }
            Effect::Set { .. } => {}
        }
        if f.params.apply(e) && f.conn.state_fp == before {
            f.conn.state_fp = f.params.fingerprint();
        }
    }
}
