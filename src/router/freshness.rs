//! Read-your-writes by WAL position: what a session's next read requires of a replica.
//!
//! When a session's write commits, pgsplit notes the instant. The first monitor round that
//! started after it carries the primary's WAL position, which is at or after that commit; from
//! then on the session's reads may go to any replica that has replayed that far. Until that
//! round is in, reads go to the primary. Pure: the caller passes the snapshot and the clock.

use std::time::{Duration, Instant};

use crate::config::Mode;
use crate::replication::Snapshot;

use super::policy::Reason;

/// What one session knows about its own writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteState {
    /// A write committed at this instant; its WAL position is not known yet.
    pub pending: Option<Instant>,
    /// The WAL position at or after the session's last write (0: none).
    pub last_write_lsn: u64,
    /// A position the client demanded with `SET pgsplit.min_lsn` (0: none).
    pub min_lsn: u64,
    /// For `time` mode: reads stay on the primary until then.
    pub primary_until: Option<Instant>,
}

/// What the next read needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Only the primary will do, for this reason.
    Primary(Reason),
    /// A replica that has replayed at least this far (0: any).
    MinLsn(u64),
}

impl WriteState {
    /// A write of this session committed at `at`.
    pub fn wrote(&mut self, at: Instant, mode: Mode, time_window: Duration) {
        self.pending = Some(at);
        if mode == Mode::Time {
            self.primary_until = Some(at + time_window);
        }
    }

    /// Learns the WAL position of a pending write from `snapshot` if a round that started after
    /// the write is in.
    pub fn resolve(&mut self, snapshot: &Snapshot) {
        if let (Some(at), Some(started), Some(lsn)) = (self.pending, snapshot.round_started, snapshot.primary_lsn) {
            if started > at {
                self.last_write_lsn = self.last_write_lsn.max(lsn);
                self.pending = None;
            }
        }
    }

    /// What the session's next read requires, in `mode`. `global_write` is the last write
    /// through this pgsplit by any session.
    pub fn requirement(
        &mut self,
        mode: Mode,
        snapshot: &Snapshot,
        global_write: Option<Instant>,
        now: Instant,
    ) -> Requirement {
        self.resolve(snapshot);
        let mut lsn = self.min_lsn;
        match mode {
            Mode::Eventual => {}
            Mode::Time => {
                if self.primary_until.is_some_and(|t| now < t) {
                    return Requirement::Primary(Reason::TimeWindow);
                }
            }
            Mode::Session => {
                if self.pending.is_some() {
                    return Requirement::Primary(Reason::ReadYourWrites);
                }
                lsn = lsn.max(self.last_write_lsn);
            }
            Mode::Global => {
                if self.pending.is_some() {
                    return Requirement::Primary(Reason::ReadYourWrites);
                }
                if let Some(w) = global_write {
                    match (snapshot.round_started, snapshot.primary_lsn) {
                        (Some(started), Some(p)) if started > w => lsn = lsn.max(p),
                        _ => return Requirement::Primary(Reason::ReadYourWrites),
                    }
                }
                lsn = lsn.max(self.last_write_lsn);
            }
        }
        Requirement::MinLsn(lsn)
    }
}

/// Whether replica `i` may serve a read that needs `min_lsn`: readable, not stale, replayed far
/// enough.
pub fn fresh(snapshot: &Snapshot, i: usize, min_lsn: u64, now: Instant, stale_after: Duration) -> bool {
    snapshot.readable(i) && !snapshot.stale(i, now, stale_after) && snapshot.has_replayed(i, min_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeAddr;
    use crate::replication::{Role, Snapshot};

    fn snapshot(round_started: Option<Instant>, primary_lsn: u64, replica_lsn: u64) -> Snapshot {
        let nodes = vec![NodeAddr { host: "p".into(), port: 1 }, NodeAddr { host: "r".into(), port: 2 }];
        let mut s = Snapshot::initial(&nodes);
        s.round_started = round_started;
        s.primary_lsn = Some(primary_lsn);
        let r = &mut s.nodes[1];
        r.role = Role::Replica;
        r.healthy = true;
        r.lagging = false;
        r.lsn = Some(replica_lsn);
        r.sampled_at = Some(Instant::now());
        s
    }

    #[test]
    fn session_reads_wait_for_the_round_after_the_write() {
        let t0 = Instant::now();
        let mut w = WriteState::default();
        w.wrote(t0 + Duration::from_millis(10), Mode::Session, Duration::from_secs(1));
        // a round that started before the write tells nothing
        let before = snapshot(Some(t0), 100, 100);
        assert_eq!(w.requirement(Mode::Session, &before, None, t0), Requirement::Primary(Reason::ReadYourWrites));
        // the next round: the write is at or before 150; replicas must have replayed it
        let after = snapshot(Some(t0 + Duration::from_millis(20)), 150, 120);
        assert_eq!(w.requirement(Mode::Session, &after, None, t0), Requirement::MinLsn(150));
        assert!(!fresh(&after, 1, 150, Instant::now(), Duration::from_secs(1)), "replica at 120 is behind");
        let caught_up = snapshot(Some(t0 + Duration::from_millis(30)), 160, 155);
        assert!(fresh(&caught_up, 1, 150, Instant::now(), Duration::from_secs(1)));
        assert_eq!(w.last_write_lsn, 150);
    }

    #[test]
    fn modes() {
        let t0 = Instant::now();
        let snap = snapshot(Some(t0 + Duration::from_millis(5)), 500, 500);
        // eventual ignores writes
        let mut w = WriteState::default();
        w.wrote(t0, Mode::Eventual, Duration::from_secs(1));
        assert_eq!(w.requirement(Mode::Eventual, &snapshot(None, 1, 1), None, t0), Requirement::MinLsn(0));
        // time pins for the window, then any replica
        let mut w = WriteState::default();
        w.wrote(t0, Mode::Time, Duration::from_millis(100));
        assert_eq!(w.requirement(Mode::Time, &snap, None, t0), Requirement::Primary(Reason::TimeWindow));
        assert_eq!(w.requirement(Mode::Time, &snap, None, t0 + Duration::from_millis(150)), Requirement::MinLsn(0));
        // global: another session's write counts
        let mut w = WriteState::default();
        let other = Some(t0 + Duration::from_millis(10));
        assert_eq!(w.requirement(Mode::Global, &snap, other, t0), Requirement::Primary(Reason::ReadYourWrites));
        let later = snapshot(Some(t0 + Duration::from_millis(20)), 700, 700);
        assert_eq!(w.requirement(Mode::Global, &later, other, t0), Requirement::MinLsn(700));
        // an explicit minimum always holds
        let mut w = WriteState { min_lsn: 900, ..Default::default() };
        assert_eq!(w.requirement(Mode::Eventual, &later, None, t0), Requirement::MinLsn(900));
    }

    #[test]
    fn stale_samples_do_not_count() {
        let mut s = snapshot(None, 1, 1);
        s.nodes[1].sampled_at = Some(Instant::now() - Duration::from_secs(5));
        assert!(!fresh(&s, 1, 0, Instant::now(), Duration::from_secs(1)));
    }
}
