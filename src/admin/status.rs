//! `/api/status`: the JSON the dashboard polls — topology and lag, where reads went, pinned
//! sessions, pools, clients, and (on request) the lag history.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::clients::ClientState;
use crate::context::Context;
use crate::replication::{format_lsn, HistoryPoint, Role, Standby};
use crate::router::Pin;

#[derive(Serialize)]
pub struct Status {
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub primary: Option<String>,
    pub no_primary: Option<String>,
    pub primary_lsn: Option<String>,
    pub consistency: &'static str,
    pub max_lag_seconds: f64,
    pub max_lag_bytes: u64,
    pub paused: bool,
    pub nodes: Vec<NodeView>,
    pub standbys: Vec<Standby>,
    pub routed: Vec<Routed>,
    pub pinned: BTreeMap<&'static str, usize>,
    pub pools: Vec<crate::pool::PoolStatus>,
    pub clients: BTreeMap<&'static str, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryPoint>>,
}

#[derive(Serialize)]
pub struct NodeView {
    pub index: usize,
    pub addr: String,
    pub role: Role,
    pub healthy: bool,
    pub banned: bool,
    pub lagging: bool,
    /// healthy | lagging | banned | down | primary
    pub status: &'static str,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub lsn: Option<String>,
    pub sample_age_ms: Option<u64>,
    /// Batches routed to this node.
    pub batches: u64,
    pub outstanding: usize,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct Routed {
    pub target: &'static str,
    pub reason: &'static str,
    pub count: u64,
}

pub fn status(ctx: &Context, with_history: bool) -> Status {
    let settings = ctx.settings();
    let topo = &ctx.topology;
    let snap = topo.snapshot();
    let per_node = ctx.stats.per_node();
    let now = Instant::now();
    let stale_after = settings.consistency.stale_after;
    let nodes = snap
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let banned = n.banned || topo.is_suspect(i);
            let stale = snap.stale(i, now, stale_after);
            let status = if snap.primary == Some(i) {
                "primary"
            } else if !n.healthy {
                "down"
            } else if banned {
                "banned"
            } else if n.lagging || stale {
                "lagging"
            } else {
                "healthy"
            };
            NodeView {
                index: i,
                addr: n.addr.clone(),
                role: n.role,
                healthy: n.healthy,
                banned,
                lagging: n.lagging || stale,
                status,
                lag_bytes: n.lag_bytes,
                lag_seconds: n.lag_seconds,
                lsn: n.lsn.map(format_lsn),
                sample_age_ms: n.sampled_at.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                batches: per_node.get(i).copied().unwrap_or(0),
                outstanding: topo.load(i),
                error: n.error.clone(),
            }
        })
        .collect();
    let mut pinned = BTreeMap::new();
    let mut clients: BTreeMap<&'static str, usize> = BTreeMap::new();
    let list = ctx.clients.list();
    clients.insert("total", list.len());
    for st in [ClientState::Idle, ClientState::Active, ClientState::InTransaction, ClientState::Waiting] {
        clients.insert(st.as_str(), 0);
    }
    for c in &list {
        *clients.entry(c.state().as_str()).or_default() += 1;
        for p in Pin::from_bits(c.pins()) {
            *pinned.entry(p.as_str()).or_default() += 1;
        }
    }
    Status {
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        primary: snap.primary.map(|p| snap.nodes[p].addr.clone()),
        no_primary: snap.no_primary.clone(),
        primary_lsn: snap.primary_lsn.map(format_lsn),
        consistency: settings.consistency.mode.as_str(),
        max_lag_seconds: settings.consistency.max_lag.as_secs_f64(),
        max_lag_bytes: settings.consistency.max_lag_bytes,
        paused: ctx.is_paused(),
        nodes,
        standbys: snap.standbys.clone(),
        routed: ctx
            .stats
            .routed_counts()
            .into_iter()
            .map(|(target, reason, count)| Routed { target, reason, count })
            .collect(),
        pinned,
        pools: ctx.pools.status(),
        clients,
        history: with_history.then(|| topo.history()),
    }
}
