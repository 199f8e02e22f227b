//! pgsplit's own knowledge of built-in functions that matter for routing. Functions not named
//! here are judged by their volatility in the primary's `pg_proc` (see the policy).

use super::{Effect, Need, Pin};

/// What calling a known function means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Writes, or has node-local side effects: primary (a standby says 25006 or 55000).
    SideEffect,
    /// Session-level advisory lock: primary, and the session stays there.
    SessionLock,
    /// Releases every session advisory lock.
    UnlockAll,
    /// Transaction-level advisory lock: primary for the transaction.
    XactLock,
    /// Session-local sequence state (`currval`, `lastval`): primary, and the session stays.
    SequenceState,
    /// `set_config(name, value, is_local)`: handled by the classifier.
    SetConfig,
}

pub fn known(name: &str) -> Option<Known> {
    use Known::*;
    Some(match name {
        "nextval"
        | "setval"
        | "pg_notify"
        | "txid_current"
        | "txid_current_if_assigned"
        | "pg_current_xact_id"
        | "pg_current_xact_id_if_assigned"
        | "pg_switch_wal"
        | "pg_current_wal_lsn"
        | "pg_current_wal_insert_lsn"
        | "pg_current_wal_flush_lsn"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "dblink_exec"
        | "dblink"
        | "dblink_open"
        | "dblink_fetch"
        | "dblink_close"
        | "dblink_connect"
        | "dblink_connect_u"
        | "dblink_disconnect"
        | "dblink_send_query"
        | "lo_create"
        | "lo_creat"
        | "lo_import"
        | "lo_unlink"
        | "lo_from_bytea"
        | "lo_put"
        | "lo_open"
        | "lowrite"
        | "lo_write"
        | "lo_truncate"
        | "lo_truncate64"
        | "lo_close"
        | "lo_lseek"
        | "lo_lseek64"
        | "loread"
        | "lo_export"
        | "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_drop_replication_slot"
        | "pg_copy_physical_replication_slot"
        | "pg_copy_logical_replication_slot"
        | "pg_logical_slot_get_changes"
        | "pg_logical_slot_get_binary_changes"
        | "pg_replication_slot_advance"
        | "pg_logical_emit_message"
        | "pg_replication_origin_create"
        | "pg_replication_origin_drop"
        | "pg_replication_origin_advance"
        | "pg_replication_origin_session_setup"
        | "pg_terminate_backend"
        | "pg_cancel_backend"
        | "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_promote"
        | "pg_stat_reset"
        | "pg_stat_reset_shared"
        | "pg_stat_reset_single_table_counters"
        | "pg_stat_reset_single_function_counters"
        | "pg_stat_reset_slru"
        | "pg_stat_reset_replication_slot"
        | "pg_stat_reset_subscription_stats"
        | "pg_import_system_collations"
        | "pg_export_snapshot"
        | "pg_log_backend_memory_contexts"
        | "pg_wal_replay_pause"
        | "pg_wal_replay_resume"
        | "brin_summarize_new_values"
        | "brin_summarize_range"
        | "brin_desummarize_range"
        | "gin_clean_pending_list"
        | "pg_file_write"
        | "pg_file_unlink"
        | "pg_file_rename"
        | "pg_file_sync"
        | "pg_prewarm"
        | "nextval_for" => SideEffect,
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared"
        | "pg_advisory_unlock"
        | "pg_advisory_unlock_shared" => SessionLock,
        "pg_advisory_unlock_all" => UnlockAll,
        "pg_advisory_xact_lock"
        | "pg_advisory_xact_lock_shared"
        | "pg_try_advisory_xact_lock"
        | "pg_try_advisory_xact_lock_shared" => XactLock,
        "currval" | "lastval" => SequenceState,
        "set_config" => SetConfig,
        _ => return None,
    })
}

/// Applies a known function's meaning to the batch being classified. Returns `false` for
/// `set_config`, which the caller handles because it needs the arguments.
pub fn apply(known: Known, need: &mut Need, effects: &mut Vec<Effect>) -> bool {
    let mut require = |n: Need| {
        if *need == Need::Read {
            *need = n;
        }
    };
    match known {
        Known::SideEffect | Known::XactLock => require(Need::SideEffectFunction),
        Known::SessionLock => {
            require(Need::SessionState);
            effects.push(Effect::Pin(Pin::AdvisoryLock));
        }
        Known::UnlockAll => {
            require(Need::SessionState);
            effects.push(Effect::Unpin(Pin::AdvisoryLock));
        }
        Known::SequenceState => {
            require(Need::SessionState);
            effects.push(Effect::Pin(Pin::Sequence));
        }
        Known::SetConfig => return false,
    }
    true
}
