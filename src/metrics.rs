//! Every metric pgsplit exports: names as constants, descriptions registered once, and small
//! helpers so that no other module writes a metric name inline.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const CLIENT_CONNECTIONS: &str = "pgsplit_client_connections";
pub const CLIENT_CONNECTIONS_TOTAL: &str = "pgsplit_client_connections_total";
pub const CLIENT_LOGIN_FAILURES_TOTAL: &str = "pgsplit_client_login_failures_total";
pub const QUERIES_ROUTED_TOTAL: &str = "pgsplit_queries_routed_total";
pub const QUERY_DURATION_SECONDS: &str = "pgsplit_query_duration_seconds";
pub const ERRORS_TOTAL: &str = "pgsplit_errors_total";
pub const POOL_CONNECTIONS: &str = "pgsplit_pool_connections";
pub const POOL_WAITING: &str = "pgsplit_pool_waiting_clients";
pub const POOL_CHECKOUT_SECONDS: &str = "pgsplit_pool_checkout_seconds";
pub const SESSIONS_PINNED: &str = "pgsplit_sessions_pinned";
pub const CLASSIFICATIONS_TOTAL: &str = "pgsplit_classifications_total";
pub const READS_RETRIED_TOTAL: &str = "pgsplit_reads_retried_total";
pub const NODE_UP: &str = "pgsplit_node_up";
pub const NODE_PRIMARY: &str = "pgsplit_node_primary";
pub const NODE_BANNED: &str = "pgsplit_node_banned";
pub const NODE_LSN: &str = "pgsplit_node_lsn";
pub const NODE_SAMPLE_AGE: &str = "pgsplit_node_sample_age_seconds";
pub const REPLICA_LAGGING: &str = "pgsplit_replica_lagging";
pub const REPLICA_LAG_BYTES: &str = "pgsplit_replica_lag_bytes";
pub const REPLICA_LAG_SECONDS: &str = "pgsplit_replica_lag_seconds";
pub const MAX_LAG_SECONDS: &str = "pgsplit_max_lag_seconds";
pub const STANDBY_REPLAY_LAG: &str = "pgsplit_standby_replay_lag_seconds";
pub const PRIMARY_LSN: &str = "pgsplit_primary_lsn";

/// Every metric name, for documentation checks and dashboards.
pub const ALL: &[&str] = &[
    CLIENT_CONNECTIONS,
    CLIENT_CONNECTIONS_TOTAL,
    CLIENT_LOGIN_FAILURES_TOTAL,
    QUERIES_ROUTED_TOTAL,
    QUERY_DURATION_SECONDS,
    ERRORS_TOTAL,
    POOL_CONNECTIONS,
    POOL_WAITING,
    POOL_CHECKOUT_SECONDS,
    SESSIONS_PINNED,
    CLASSIFICATIONS_TOTAL,
    READS_RETRIED_TOTAL,
    NODE_UP,
    NODE_PRIMARY,
    NODE_BANNED,
    NODE_LSN,
    NODE_SAMPLE_AGE,
    REPLICA_LAGGING,
    REPLICA_LAG_BYTES,
    REPLICA_LAG_SECONDS,
    MAX_LAG_SECONDS,
    STANDBY_REPLAY_LAG,
    PRIMARY_LSN,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Handles for the metrics recorded on every statement batch, created once: recording through
/// a handle is an atomic add, with no registry lookup.
struct Hot {
    /// [target][reason index]
    routed: Vec<Vec<metrics::Counter>>,
    /// [target]
    duration: [metrics::Histogram; 2],
    /// fast, cache, parse
    classified: [metrics::Counter; 3],
    checkout: metrics::Histogram,
}

static HOT: OnceLock<Hot> = OnceLock::new();

fn hot() -> Option<&'static Hot> {
    HOT.get()
}

fn init_hot() {
    use crate::router::Reason;
    let _ = HOT.set(Hot {
        routed: ["primary", "replica"]
            .iter()
            .map(|t| {
                let mut v: Vec<metrics::Counter> = (0..Reason::COUNT).map(|_| metrics::Counter::noop()).collect();
                for r in Reason::all() {
                    v[r.index()] = counter!(QUERIES_ROUTED_TOTAL, "target" => *t, "reason" => r.as_str());
                }
                v
            })
            .collect(),
        duration: [
            histogram!(QUERY_DURATION_SECONDS, "target" => "primary"),
            histogram!(QUERY_DURATION_SECONDS, "target" => "replica"),
        ],
        classified: [
            counter!(CLASSIFICATIONS_TOTAL, "source" => "fast"),
            counter!(CLASSIFICATIONS_TOTAL, "source" => "cache"),
            counter!(CLASSIFICATIONS_TOTAL, "source" => "parse"),
        ],
        checkout: histogram!(POOL_CHECKOUT_SECONDS),
    });
}

/// How often buffered histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets")
                .install_recorder()
                .expect("one recorder per process");
            // Histograms buffer their samples until upkeep folds them into the buckets; without it
            // they grow with every query for as long as nobody scrapes /metrics.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                })
                .expect("metrics upkeep thread");
            describe();
            init_hot();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CLIENT_CONNECTIONS, "Client connections open now");
    describe_counter!(CLIENT_CONNECTIONS_TOTAL, "Client connections accepted");
    describe_counter!(CLIENT_LOGIN_FAILURES_TOTAL, "Client logins refused, by SQLSTATE");
    describe_counter!(QUERIES_ROUTED_TOTAL, "Statement batches routed, by target and reason");
    describe_histogram!(QUERY_DURATION_SECONDS, Unit::Seconds, "Time from a batch's first byte to its ReadyForQuery");
    describe_counter!(ERRORS_TOTAL, "Errors sent to clients, by SQLSTATE class");
    describe_gauge!(POOL_CONNECTIONS, "Backend connections per pool and state (active, idle)");
    describe_gauge!(POOL_WAITING, "Clients waiting for a backend connection, per pool");
    describe_histogram!(POOL_CHECKOUT_SECONDS, Unit::Seconds, "Time to check out a backend connection");
    describe_gauge!(SESSIONS_PINNED, "Sessions pinned to one backend, by reason");
    describe_counter!(CLASSIFICATIONS_TOTAL, "Statement classifications, by source (fast, cache, parse)");
    describe_counter!(READS_RETRIED_TOTAL, "Reads retried elsewhere after a replica failed them, by cause");
    describe_gauge!(NODE_UP, "1 when the node's last sample succeeded");
    describe_gauge!(NODE_PRIMARY, "1 for the node pgsplit sends writes to");
    describe_gauge!(NODE_BANNED, "1 while the node is banned from reads (failures, or BAN)");
    describe_gauge!(NODE_LSN, "WAL position: current on the primary, replayed on replicas (bytes)");
    describe_gauge!(NODE_SAMPLE_AGE, Unit::Seconds, "Age of the node's last good sample");
    describe_gauge!(REPLICA_LAGGING, "1 while the replica is over consistency.max_lag (or stale)");
    describe_gauge!(REPLICA_LAG_BYTES, Unit::Bytes, "WAL the replica has not replayed");
    describe_gauge!(REPLICA_LAG_SECONDS, Unit::Seconds, "How far behind the replica's replay is (0 when caught up)");
    describe_gauge!(MAX_LAG_SECONDS, Unit::Seconds, "The lag over which a replica gets no reads");
    describe_gauge!(STANDBY_REPLAY_LAG, Unit::Seconds, "replay_lag per standby from the primary's pg_stat_replication");
    describe_gauge!(PRIMARY_LSN, "The primary's current WAL position (bytes)");
}

pub fn client_connected() {
    gauge!(CLIENT_CONNECTIONS).increment(1.0);
    counter!(CLIENT_CONNECTIONS_TOTAL).increment(1);
}

pub fn client_disconnected() {
    gauge!(CLIENT_CONNECTIONS).decrement(1.0);
}

pub fn login_failed(sqlstate: &'static str) {
    counter!(CLIENT_LOGIN_FAILURES_TOTAL, "sqlstate" => sqlstate).increment(1);
}

pub fn routed(target: crate::router::Target, reason: crate::router::Reason) {
    if let Some(h) = hot() {
        let t = matches!(target, crate::router::Target::Replica(_)) as usize;
        h.routed[t][reason.index()].increment(1);
    }
}

pub fn query_duration(target: &'static str, seconds: f64) {
    if let Some(h) = hot() {
        h.duration[(target == "replica") as usize].record(seconds);
    }
}

/// Counts an error sent to a client by its SQLSTATE class (the first two characters).
pub fn error_sent(sqlstate: &str) {
    let class = sqlstate.get(..2).unwrap_or("??").to_owned();
    counter!(ERRORS_TOTAL, "class" => class).increment(1);
}

pub fn checkout(seconds: f64) {
    if let Some(h) = hot() {
        h.checkout.record(seconds);
    }
}

pub fn pinned(reason: &'static str, delta: f64) {
    gauge!(SESSIONS_PINNED, "reason" => reason).increment(delta);
}

pub fn read_retried(cause: &str) {
    counter!(READS_RETRIED_TOTAL, "cause" => cause.to_owned()).increment(1);
}

/// 0: fast path, 1: cache, 2: parse.
pub fn classified(source: usize) {
    if let Some(h) = hot() {
        h.classified[source.min(2)].increment(1);
    }
}

/// Publishes per-node gauges from a monitor snapshot.
pub fn nodes(s: &crate::replication::Snapshot, max_lag_seconds: f64) {
    use crate::replication::Role;
    gauge!(MAX_LAG_SECONDS).set(max_lag_seconds);
    if let Some(l) = s.primary_lsn {
        gauge!(PRIMARY_LSN).set(l as f64);
    }
    for (i, n) in s.nodes.iter().enumerate() {
        let node = [("node", n.addr.clone())];
        gauge!(NODE_UP, &node).set(n.healthy as u8 as f64);
        gauge!(NODE_PRIMARY, &node).set((s.primary == Some(i)) as u8 as f64);
        gauge!(NODE_BANNED, &node).set(n.banned as u8 as f64);
        if let Some(l) = n.lsn {
            gauge!(NODE_LSN, &node).set(l as f64);
        }
        if n.role == Role::Replica {
            gauge!(REPLICA_LAGGING, &node).set(n.lagging as u8 as f64);
            if let Some(b) = n.lag_bytes {
                gauge!(REPLICA_LAG_BYTES, &node).set(b as f64);
            }
            if let Some(sec) = n.lag_seconds {
                gauge!(REPLICA_LAG_SECONDS, &node).set(sec);
            }
        }
    }
    for sb in &s.standbys {
        gauge!(STANDBY_REPLAY_LAG, "standby" => sb.name.clone()).set(sb.replay_lag.unwrap_or(0.0));
    }
}

/// Publishes gauges that depend on the moment of the scrape.
pub fn sample_ages(s: &crate::replication::Snapshot) {
    let now = std::time::Instant::now();
    for n in &s.nodes {
        if let Some(t) = n.sampled_at {
            gauge!(NODE_SAMPLE_AGE, "node" => n.addr.clone()).set(now.saturating_duration_since(t).as_secs_f64());
        }
    }
}

/// Publishes pool gauges from a status snapshot (called when /metrics is scraped).
pub fn pools(status: &[crate::pool::PoolStatus]) {
    for p in status {
        let labels = [("node", p.node.clone()), ("user", p.user.clone()), ("database", p.database.clone())];
        let mut with_state = labels.to_vec();
        with_state.push(("state", "active".into()));
        gauge!(POOL_CONNECTIONS, &with_state).set(p.active as f64);
        with_state.pop();
        with_state.push(("state", "idle".into()));
        gauge!(POOL_CONNECTIONS, &with_state).set(p.idle as f64);
        gauge!(POOL_WAITING, &labels).set(p.waiting as f64);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
        for name in super::ALL {
            assert!(doc.contains(&format!("| `{name}` |")), "{name} is not in docs/operations.md");
        }
    }
}
