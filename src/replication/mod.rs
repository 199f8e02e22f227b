//! Topology and health: which node is the primary, which replicas may serve reads, and (for the
//! router) what the primary's catalog says about functions and unlogged tables.
//!
//! A background monitor ([`monitor`]) samples every node with sqlx and publishes an immutable
//! [`Snapshot`] through `ArcSwap`; sessions read it without locking or awaiting. Sessions report
//! failures they see (a replica that refused a connection) so that a bad node is avoided at
//! once, and only the monitor's consecutive good samples let it back in (hysteresis).

pub mod catalog;
pub mod monitor;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::NodeAddr;

pub use catalog::{Catalog, Catalogs};

/// What a node is, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
    /// Not sampled successfully yet.
    Unknown,
}

/// One node in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub addr: String,
    pub role: Role,
    /// The last sample succeeded.
    pub healthy: bool,
    /// Kept from reads (failed samples or failures reported by sessions) until it has had
    /// `unban_after` good samples in a row.
    pub banned: bool,
    /// Primary: `pg_current_wal_lsn()`; replica: `pg_last_wal_replay_lsn()`.
    pub lsn: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<u64>,
    /// Replica: bytes of WAL the primary has that this replica has not replayed.
    pub lag_bytes: Option<u64>,
    /// Replica: how far behind replay is in time (0 when nothing is left to replay).
    pub lag_seconds: Option<f64>,
    /// Replica: over `consistency.max_lag` (entered above the limit, left below half of it).
    pub lagging: bool,
    /// Why the last sample failed.
    pub error: Option<String>,
    #[serde(skip)]
    pub sampled_at: Option<Instant>,
}

impl NodeStatus {
    pub fn new(addr: &NodeAddr, role: Role) -> Self {
        NodeStatus {
            addr: addr.to_string(),
            role,
            healthy: false,
            banned: false,
            lsn: None,
            receive_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            lagging: true,
            error: None,
            sampled_at: None,
        }
    }
}

/// A standby as the primary's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standby {
    pub name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// `replay_lag` in seconds (NULL when the standby is idle and caught up).
    pub replay_lag: Option<f64>,
}

/// One point of the lag history, per node (for the dashboard's charts).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    pub nodes: Vec<NodeHistory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeHistory {
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub healthy: bool,
}

/// How much history is kept: one point a second for five minutes.
const HISTORY_POINTS: usize = 300;

/// The published view of the cluster.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub nodes: Vec<NodeStatus>,
    /// Index of the primary, if there is one.
    pub primary: Option<usize>,
    /// Why there is no primary, when there is none.
    pub no_primary: Option<String>,
    /// The primary's WAL position in this round (`pg_current_wal_lsn()`).
    pub primary_lsn: Option<u64>,
    /// The primary's standbys (`pg_stat_replication`).
    pub standbys: Vec<Standby>,
    /// When this round of samples started: its `primary_lsn` is at or after every commit that
    /// completed before this instant.
    pub round_started: Option<Instant>,
    pub taken: Instant,
}

impl Snapshot {
    pub fn initial(nodes: &[NodeAddr]) -> Self {
        let mut list: Vec<NodeStatus> = nodes.iter().map(|n| NodeStatus::new(n, Role::Unknown)).collect();
        if let Some(first) = list.first_mut() {
            // Until the first sample, the declared primary is trusted for writes (every
            // primary connection is still checked: a node in recovery is never written to).
            first.role = Role::Primary;
        }
        Snapshot {
            nodes: list,
            primary: if nodes.is_empty() { None } else { Some(0) },
            no_primary: None,
            primary_lsn: None,
            standbys: Vec::new(),
            round_started: None,
            taken: Instant::now(),
        }
    }

    /// Whether node `i` is a healthy replica, not banned and not lagging.
    pub fn readable(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.role == Role::Replica && n.healthy && !n.banned && !n.lagging)
    }

    /// Whether node `i`'s last good sample is older than `stale_after` (stale counts as lagging).
    pub fn stale(&self, i: usize, now: Instant, stale_after: std::time::Duration) -> bool {
        self.nodes.get(i).and_then(|n| n.sampled_at).is_none_or(|t| now.saturating_duration_since(t) > stale_after)
    }

    /// Whether node `i` has replayed at least to `lsn`.
    pub fn has_replayed(&self, i: usize, lsn: u64) -> bool {
        lsn == 0 || self.nodes.get(i).and_then(|n| n.lsn).is_some_and(|l| l >= lsn)
    }
}

/// A request counted against a node's load (see [`Topology::load_guard`]).
pub struct LoadGuard<'a> {
    topology: &'a Topology,
    node: Option<usize>,
}

impl LoadGuard<'_> {
    /// The request got its connection: it stays counted until [`Topology::release`].
    pub fn keep(mut self) {
        self.node = None;
    }
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.node {
            self.topology.release(i);
        }
    }
}

/// The shared, always-readable topology.
pub struct Topology {
    pub nodes: Vec<NodeAddr>,
    current: ArcSwap<Snapshot>,
    /// Outstanding requests per node (for least-outstanding balancing).
    loads: Vec<AtomicUsize>,
    /// Set by sessions that saw a node fail; cleared by the monitor's good samples.
    suspect: Vec<AtomicBool>,
    /// Set by BAN in the admin console, cleared by UNBAN.
    manual_ban: Vec<AtomicBool>,
    /// Round-robin position.
    rr: AtomicUsize,
    /// When the last write through this pgsplit committed (nanoseconds after `epoch`), for
    /// `global` consistency.
    last_write: std::sync::atomic::AtomicU64,
    epoch: Instant,
    pub catalogs: Catalogs,
    history: std::sync::Mutex<std::collections::VecDeque<HistoryPoint>>,
}

impl Topology {
    pub fn new(nodes: Vec<NodeAddr>) -> Arc<Self> {
        let n = nodes.len();
        Arc::new(Topology {
            current: ArcSwap::from_pointee(Snapshot::initial(&nodes)),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            suspect: (0..n).map(|_| AtomicBool::new(false)).collect(),
            manual_ban: (0..n).map(|_| AtomicBool::new(false)).collect(),
            rr: AtomicUsize::new(0),
            last_write: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            catalogs: Catalogs::default(),
            history: std::sync::Mutex::new(std::collections::VecDeque::new()),
            nodes,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub(crate) fn publish(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
    }

    pub fn load(&self, i: usize) -> usize {
        self.loads.get(i).map(|l| l.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub fn loads(&self) -> Vec<usize> {
        self.loads.iter().map(|l| l.load(Ordering::Relaxed)).collect()
    }

    pub fn acquire(&self, i: usize) {
        if let Some(l) = self.loads.get(i) {
            l.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn release(&self, i: usize) {
        if let Some(l) = self.loads.get(i) {
            l.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts a request against node `i` until the guard is dropped or
    /// [kept](LoadGuard::keep) (then [`release`](Self::release) ends it).
    pub fn load_guard(&self, i: usize) -> LoadGuard<'_> {
        self.acquire(i);
        LoadGuard { topology: self, node: Some(i) }
    }

    pub fn next_round_robin(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// A session saw node `i` fail: keep reads away from it until the monitor vouches for it.
    pub fn report_failure(&self, i: usize, why: &str) {
        if let Some(s) = self.suspect.get(i) {
            if !s.swap(true, Ordering::AcqRel) {
                tracing::warn!(node = %self.nodes[i], why, "node marked unhealthy after a failure seen by a session");
            }
        }
    }

    /// Whether reads must avoid node `i` now: a session saw it fail, or an operator banned it.
    pub fn is_suspect(&self, i: usize) -> bool {
        self.suspect.get(i).is_some_and(|s| s.load(Ordering::Acquire)) || self.is_banned_manually(i)
    }

    pub fn is_banned_manually(&self, i: usize) -> bool {
        self.manual_ban.get(i).is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// BAN / UNBAN from the admin console.
    pub fn set_manual_ban(&self, i: usize, banned: bool) -> bool {
        match self.manual_ban.get(i) {
            Some(b) => {
                b.store(banned, Ordering::Release);
                true
            }
            None => false,
        }
    }

    pub(crate) fn clear_suspect(&self, i: usize) -> bool {
        self.suspect.get(i).is_some_and(|s| s.swap(false, Ordering::AcqRel))
    }

    /// Adds a snapshot to the lag history (at most one point a second).
    pub(crate) fn record_history(&self, s: &Snapshot) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut h = self.history.lock().expect("history");
        if h.back().is_some_and(|p| t < p.t + 1000) {
            return;
        }
        let nodes = s
            .nodes
            .iter()
            .map(|n| NodeHistory { lag_bytes: n.lag_bytes, lag_seconds: n.lag_seconds, healthy: n.healthy })
            .collect();
        h.push_back(HistoryPoint { t, nodes });
        while h.len() > HISTORY_POINTS {
            h.pop_front();
        }
    }

    pub fn history(&self) -> Vec<HistoryPoint> {
        self.history.lock().expect("history").iter().cloned().collect()
    }

    /// A write through pgsplit has committed now.
    pub fn note_write(&self, at: Instant) {
        let n = at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        self.last_write.fetch_max(n, Ordering::AcqRel);
    }

    /// When the last write through this pgsplit committed.
    pub fn last_write(&self) -> Option<Instant> {
        match self.last_write.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + std::time::Duration::from_nanos(n - 1)),
        }
    }

    pub fn index_of(&self, addr: &NodeAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n == addr)
    }
}

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN as PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }

    #[test]
    fn initial_snapshot_trusts_the_declared_primary_only() {
        let nodes = vec![NodeAddr { host: "a".into(), port: 1 }, NodeAddr { host: "b".into(), port: 2 }];
        let s = Snapshot::initial(&nodes);
        assert_eq!(s.primary, Some(0));
        assert!(!s.readable(1), "no replica is readable before it is sampled");
    }

    #[test]
    fn suspects_and_loads() {
        let t = Topology::new(vec![NodeAddr { host: "a".into(), port: 1 }]);
        t.report_failure(0, "test");
        assert!(t.is_suspect(0));
        assert!(t.clear_suspect(0));
        assert!(!t.is_suspect(0));
        t.acquire(0);
        t.acquire(0);
        t.release(0);
        assert_eq!(t.load(0), 1);
    }

    #[test]
    fn load_guard_counts_until_dropped_or_kept() {
        let t = Topology::new(vec![NodeAddr { host: "a".into(), port: 1 }, NodeAddr { host: "b".into(), port: 2 }]);
        {
            let _waiting = t.load_guard(1);
            assert_eq!(t.loads(), [0, 1], "counted while waiting");
        }
        assert_eq!(t.loads(), [0, 0], "a wait that gives up is no longer counted");
        t.load_guard(1).keep();
        assert_eq!(t.loads(), [0, 1], "a kept guard stays counted");
        t.release(1);
        assert_eq!(t.loads(), [0, 0]);
    }
}
