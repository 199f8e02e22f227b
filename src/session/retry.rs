//! Retrying a read once elsewhere. A read sent to a replica outside a transaction, with nothing
//! else in flight, keeps a copy of its frames, and its answer is held back until its
//! ReadyForQuery. If the replica fails it first — the connection drops, or it answers with a
//! recovery conflict (40001), a shutdown (57P01-57P03) or a read-only refusal (25006) — nothing
//! has reached the client: the answer is dropped, the replica avoided, and the batch routed
//! again. A large answer (over 256 KiB) is released as it comes and can no longer be retried.
//! Batches that name statements (Parse or Close of a named statement) are not retried: they
//! change the session's statement registry as they are sent.

use bytes::BytesMut;

use super::relay::Session;
use crate::router::Target;

/// Errors after which a read is worth another try elsewhere.
const RETRYABLE: &[&str] = &["40001", "57P01", "57P02", "57P03", "25006"];

/// Most of an answer held back before the read gives up its retry.
const MAX_HOLD: usize = 256 << 10;

pub(super) struct Retry {
    /// The client's frames for the batch, as received.
    pub frames: BytesMut,
    /// The node the batch went to.
    pub node: usize,
    /// The answer so far, not yet released to the client.
    pub hold: BytesMut,
    /// The SQLSTATE that failed the batch, once it has.
    pub failed: Option<String>,
    /// The batch's frames are still arriving (an extended batch before its Sync).
    pub open: bool,
}

/// What the relay does with a backend message while a retry is armed.
pub(super) enum Held {
    /// Keep it back (appended to the hold).
    Kept,
    /// Drop it: the batch failed and will be retried.
    Dropped,
    /// The failed batch has ended: retry now.
    RetryNow,
    /// Not held: the retry is over; relay as usual.
    Released,
}

pub(super) fn retryable(code: &str) -> bool {
    RETRYABLE.contains(&code)
}

/// Accounts for one backend message (`frame`, whole) while a retry is armed; held messages go to
/// the retry's hold, and a released retry's hold goes to `cout`. `forward` says whether the
/// message would reach the client at all (pgsplit swallows some).
pub(super) fn hold(
    retry: &mut Option<Retry>,
    cout: &mut BytesMut,
    tag: u8,
    frame: &[u8],
    error_code: &str,
    forward: bool,
) -> Held {
    let Some(r) = retry.as_mut() else { return Held::Released };
    if !forward && tag != b'Z' {
        return if r.failed.is_some() { Held::Dropped } else { Held::Released };
    }
    if r.open {
        // An answer before the batch is complete: it goes to the client, so no retry.
        cout.extend_from_slice(&r.hold);
        *retry = None;
        return Held::Released;
    }
    if r.failed.is_some() {
        return if tag == b'Z' { Held::RetryNow } else { Held::Dropped };
    }
    match tag {
        b'E' if retryable(error_code) => {
            r.failed = Some(error_code.to_owned());
            Held::Dropped
        }
        b'Z' => {
            // Success: release what was held; the ReadyForQuery follows as usual.
            cout.extend_from_slice(&r.hold);
            *retry = None;
            Held::Released
        }
        _ => {
            r.hold.extend_from_slice(frame);
            if r.hold.len() > MAX_HOLD {
                cout.extend_from_slice(&r.hold);
                *retry = None;
            }
            Held::Kept
        }
    }
}

impl Session {
    /// Arms a retry for a batch about to be sent to `target`, if it qualifies.
    pub(super) fn arm_retry(&mut self, target: Target, frames: BytesMut, open: bool) {
        self.disarm_retry();
        let retried = std::mem::take(&mut self.retried);
        let Target::Replica(node) = target else { return };
        if !self.ctx.settings().routing.retry_reads
            || retried
            || !self.batches.is_empty()
            || self.tx != pgsplit_protocol::TxStatus::Idle
        {
            return;
        }
        self.retry = Some(Retry { frames, node, hold: BytesMut::new(), failed: None, open });
    }

    /// Gives up the retry: whatever was held goes to the client.
    pub(super) fn disarm_retry(&mut self) {
        if let Some(r) = self.retry.take() {
            self.cout.extend_from_slice(&r.hold);
        }
    }

    /// The armed batch failed (or its connection died) before any of it reached the client:
    /// drop the connection, avoid the node, and put the batch back to be routed again.
    pub(super) async fn retry_now(&mut self, why: &str) {
        let Some(r) = self.retry.take() else { return };
        tracing::info!(node = %self.ctx.topology.nodes[r.node], why, "read failed on a replica before any answer reached the client; retrying elsewhere");
        crate::metrics::read_retried(why);
        self.ctx.stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if why != "40001" {
            self.ctx.topology.report_failure(r.node, why);
        }
        self.batches.clear();
        self.expect.clear();
        self.batch_open = false;
        self.batch_whole = false;
        self.tracking = false;
        self.skip_until_sync = false;
        self.copy_in = false;
        self.tx = pgsplit_protocol::TxStatus::Idle;
        if let Some(b) = self.backend.as_mut() {
            b.conn.broken = true;
        }
        self.release().await;
        self.avoid_node = Some(r.node);
        self.retried = true;
        let mut cin = r.frames;
        cin.extend_from_slice(&self.cin);
        self.cin = cin;
    }
}
