//! Counters for SHOW STATS and the dashboard, kept next to (not instead of) the Prometheus
//! metrics: fixed arrays of atomics, so counting a routed batch takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::router::{Reason, Target};

pub struct Stats {
    /// Batches routed, by target (0: primary, 1: replica) and reason.
    routed: [[AtomicU64; Reason::COUNT]; 2],
    /// Batches run, by node.
    per_node: Vec<AtomicU64>,
    /// Batches completed, and their total time in microseconds.
    pub completed: AtomicU64,
    pub busy_micros: AtomicU64,
    /// Reads retried after a replica failed them.
    pub retries: AtomicU64,
}

impl Stats {
    pub fn new(nodes: usize) -> Self {
        Stats {
            routed: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            per_node: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            completed: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    pub fn routed(&self, target: Target, reason: Reason, node: usize) {
        let t = matches!(target, Target::Replica(_)) as usize;
        self.routed[t][reason.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.per_node.get(node) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn completed(&self, micros: u64) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.busy_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// (target, reason, count) for every non-zero counter.
    pub fn routed_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut v = Vec::new();
        for (t, label) in [(0, "primary"), (1, "replica")] {
            for r in Reason::all() {
                let n = self.routed[t][r.index()].load(Ordering::Relaxed);
                if n > 0 {
                    v.push((label, r.as_str(), n));
                }
            }
        }
        v
    }

    pub fn per_node(&self) -> Vec<u64> {
        self.per_node.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}
