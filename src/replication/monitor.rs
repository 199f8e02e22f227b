//! The monitor: every `monitor.interval`, sample every node over its own sqlx connection, decide
//! roles and health (with hysteresis), and publish a new snapshot. A second loop keeps the
//! primary's catalog facts current for the databases clients use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::{parse_lsn, NodeStatus, Role, Snapshot, Standby, Topology};
use crate::config::{MonitorSettings, NodeAddr};

/// What one sample of a node returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub in_recovery: bool,
    /// Primary: current WAL position; replica: last replayed position.
    pub lsn: Option<u64>,
    pub receive_lsn: Option<u64>,
    /// Replica: seconds since the last replayed transaction committed on the primary.
    pub replay_age: Option<f64>,
    /// Primary: its standbys as `pg_stat_replication` shows them.
    pub standbys: Vec<Standby>,
}

const SAMPLE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     pg_last_wal_receive_lsn()::text, \
     extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8";

fn options(node: &NodeAddr, settings: &MonitorSettings, database: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&node.host)
        .port(node.port)
        .username(&settings.user)
        .password(&settings.password)
        .database(database)
        .ssl_mode(PgSslMode::Disable)
        .application_name("pgsplit monitor")
        .statement_cache_capacity(8)
        .log_statements(tracing::log::LevelFilter::Trace)
}

const STANDBYS_SQL: &str = "SELECT application_name::text, client_addr::text, state::text, \
     write_lsn::text, flush_lsn::text, replay_lsn::text, extract(epoch FROM replay_lag)::float8 \
     FROM pg_stat_replication ORDER BY application_name";

type StandbyRow =
    (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<f64>);

async fn sample(conn: &mut PgConnection) -> Result<Sample, sqlx::Error> {
    let (in_recovery, lsn, recv, age): (bool, Option<String>, Option<String>, Option<f64>) =
        sqlx::query_as(SAMPLE_SQL).fetch_one(&mut *conn).await?;
    let mut standbys = Vec::new();
    if !in_recovery {
        let rows: Vec<StandbyRow> = sqlx::query_as(STANDBYS_SQL).fetch_all(&mut *conn).await?;
        let l = |v: &Option<String>| v.as_deref().and_then(parse_lsn);
        standbys = rows
            .into_iter()
            .map(|r| Standby {
                name: r.0.unwrap_or_default(),
                client_addr: r.1,
                state: r.2,
                write_lsn: l(&r.3),
                flush_lsn: l(&r.4),
                replay_lsn: l(&r.5),
                replay_lag: r.6,
            })
            .collect();
    }
    Ok(Sample {
        in_recovery,
        lsn: lsn.as_deref().and_then(parse_lsn),
        receive_lsn: recv.as_deref().and_then(parse_lsn),
        replay_age: age,
        standbys,
    })
}

/// Per-node state the monitor keeps between samples.
#[derive(Default)]
struct NodeTrack {
    conn: Option<PgConnection>,
    good_in_a_row: u32,
    bad_in_a_row: u32,
    banned: bool,
}

async fn sample_node(node: &NodeAddr, track: &mut NodeTrack, settings: &MonitorSettings) -> Result<Sample, String> {
    let timeout = settings.timeout;
    let fut = async {
        if track.conn.is_none() {
            let c = options(node, settings, &settings.database).connect().await.map_err(|e| e.to_string())?;
            track.conn = Some(c);
        }
        sample(track.conn.as_mut().expect("connected")).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            track.conn = None;
            Err(e)
        }
        Err(_) => {
            track.conn = None;
            Err(format!("no answer within {} ms", timeout.as_millis()))
        }
    }
}

/// When a replica counts as lagging.
#[derive(Debug, Clone, Copy)]
pub struct LagLimits {
    pub max_seconds: f64,
    /// 0: no byte limit.
    pub max_bytes: u64,
}

impl LagLimits {
    /// Over the limit enters lagging; only under half of it leaves it (hysteresis).
    fn lagging(&self, was: bool, seconds: Option<f64>, bytes: Option<u64>) -> bool {
        let (Some(sec), Some(b)) = (seconds, bytes) else { return true };
        let bytes_over = |limit: u64| self.max_bytes > 0 && b > limit;
        if was {
            sec > self.max_seconds / 2.0 || bytes_over(self.max_bytes / 2)
        } else {
            sec > self.max_seconds || bytes_over(self.max_bytes)
        }
    }
}

/// The primary's WAL position over time (kept when it changes, for ten minutes): how long ago a
/// replica's replay position was current tells its lag in time, independent of clocks and of
/// how long the primary sat idle before the unreplayed write.
#[derive(Debug, Default)]
pub struct LsnHistory {
    points: std::collections::VecDeque<(Instant, u64)>,
}

const LSN_HISTORY: Duration = Duration::from_secs(600);

impl LsnHistory {
    pub fn record(&mut self, t: Instant, lsn: u64) {
        if self.points.back().is_none_or(|&(_, l)| l != lsn) {
            self.points.push_back((t, lsn));
        }
        while self.points.front().is_some_and(|&(pt, _)| t.saturating_duration_since(pt) > LSN_HISTORY) {
            self.points.pop_front();
        }
    }

    /// When the primary's position first went past `lsn`; `None` if it had already passed it
    /// before the history begins.
    pub fn passed_at(&self, lsn: u64) -> Option<Instant> {
        let i = self.points.partition_point(|&(_, l)| l <= lsn);
        if i == 0 {
            return None;
        }
        self.points.get(i).map(|&(t, _)| t)
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.points.front().map(|&(t, _)| t)
    }
}

/// Pure: the next snapshot from the previous one and this round's samples.
pub fn next_snapshot(
    prev: &Snapshot,
    nodes: &[NodeAddr],
    samples: &[Result<Sample, String>],
    banned: &[bool],
    round_started: Instant,
    limits: LagLimits,
    history: &LsnHistory,
) -> Snapshot {
    let mut list = Vec::with_capacity(nodes.len());
    let now = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let mut st = NodeStatus::new(node, prev.nodes.get(i).map(|n| n.role).unwrap_or(Role::Unknown));
        st.banned = banned[i];
        match &samples[i] {
            Ok(s) => {
                st.healthy = true;
                st.role = if s.in_recovery { Role::Replica } else { Role::Primary };
                st.lsn = s.lsn;
                st.receive_lsn = s.receive_lsn;
                st.sampled_at = Some(now);
            }
            Err(e) => {
                st.error = Some(e.clone());
                st.sampled_at = prev.nodes.get(i).and_then(|n| n.sampled_at);
            }
        }
        list.push(st);
    }
    // The primary: a reachable node not in recovery, the current one first. If none is
    // reachable as a primary but the current one cannot be reached at all, keep it (writes
    // then fail with a connection error that says so); if every reachable node is in
    // recovery, there is no primary.
    let candidates: Vec<usize> =
        (0..nodes.len()).filter(|&i| samples[i].as_ref().is_ok_and(|s| !s.in_recovery)).collect();
    let (primary, no_primary) = match prev.primary {
        Some(p) if candidates.contains(&p) => (Some(p), None),
        _ if !candidates.is_empty() => (Some(candidates[0]), None),
        Some(p) if samples[p].is_err() => (Some(p), None),
        _ => (None, Some("no node is out of recovery: there is no primary to write to".to_string())),
    };
    let primary_sample = primary.and_then(|p| samples[p].as_ref().ok());
    let primary_lsn = primary_sample.and_then(|s| s.lsn);
    let standbys = primary_sample.map(|s| s.standbys.clone()).unwrap_or_default();
    for (i, st) in list.iter_mut().enumerate() {
        if let (Ok(s), true) = (&samples[i], st.role == Role::Replica) {
            st.lag_bytes = match (primary_lsn, s.lsn) {
                (Some(p), Some(r)) => Some(p.saturating_sub(r)),
                _ => None,
            };
            // An idle primary must not make a replica look laggy: nothing left to replay is
            // no lag, however long ago the last transaction was. Otherwise the lag is how long
            // ago the primary passed the replica's position.
            st.lag_seconds = match (st.lag_bytes, s.lsn) {
                (Some(0), _) => Some(0.0),
                (_, Some(r)) => match history.passed_at(r) {
                    Some(t) => Some(now.saturating_duration_since(t).as_secs_f64()),
                    None => {
                        let known = history.oldest().map(|o| now.saturating_duration_since(o).as_secs_f64());
                        match (known, s.replay_age) {
                            (Some(k), Some(a)) => Some(k.max(a.max(0.0))),
                            (k, a) => k.or(a.map(|a| a.max(0.0))),
                        }
                    }
                },
                _ => s.replay_age.map(|a| a.max(0.0)),
            };
            let was = prev.nodes.get(i).is_none_or(|n| n.lagging);
            st.lagging = limits.lagging(was, st.lag_seconds, st.lag_bytes);
        } else if samples[i].is_err() {
            st.lagging = prev.nodes.get(i).is_none_or(|n| n.lagging);
        } else {
            st.lagging = false;
        }
    }
    Snapshot { nodes: list, primary, no_primary, primary_lsn, standbys, round_started: Some(round_started), taken: now }
}

/// Samples every node forever (until `shutdown`) and publishes snapshots.
/// Where the monitor reads its settings each round (they can change on RELOAD).
pub type SettingsSource = Arc<dyn Fn() -> (MonitorSettings, LagLimits) + Send + Sync>;

pub async fn run(topology: Arc<Topology>, source: SettingsSource, shutdown: CancellationToken) {
    let nodes = topology.nodes.clone();
    let mut settings = source().0;
    let mut tracks: Vec<NodeTrack> = nodes.iter().map(|_| NodeTrack::default()).collect();
    let mut history = LsnHistory::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(catalog_loop(topology.clone(), source.clone(), shutdown.clone()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (s, limits) = source();
        if s.interval != settings.interval {
            tick = tokio::time::interval(s.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        settings = s;
        let round_started = Instant::now();
        let futs = nodes.iter().zip(tracks.iter_mut()).map(|(n, t)| sample_node(n, t, &settings));
        let samples = futures_util::future::join_all(futs).await;
        let mut banned = Vec::with_capacity(nodes.len());
        for (i, (t, s)) in tracks.iter_mut().zip(&samples).enumerate() {
            if topology.clear_suspect(i) {
                t.banned = true;
                t.good_in_a_row = 0;
            }
            match s {
                Ok(_) => {
                    t.good_in_a_row += 1;
                    t.bad_in_a_row = 0;
                    if t.banned && t.good_in_a_row >= settings.unban_after {
                        t.banned = false;
                        tracing::info!(node = %nodes[i], "node healthy again: back in rotation");
                    }
                }
                Err(e) => {
                    t.bad_in_a_row += 1;
                    t.good_in_a_row = 0;
                    if !t.banned && t.bad_in_a_row >= settings.ban_after {
                        t.banned = true;
                        tracing::warn!(node = %nodes[i], error = %e, "node unhealthy: banned from reads");
                    }
                }
            }
            banned.push(t.banned);
        }
        let prev = topology.snapshot();
        if let Some(l) = samples.iter().filter_map(|s| s.as_ref().ok()).find(|s| !s.in_recovery).and_then(|s| s.lsn) {
            history.record(round_started, l);
        }
        let next = next_snapshot(&prev, &nodes, &samples, &banned, round_started, limits, &history);
        if next.primary != prev.primary {
            match next.primary {
                Some(p) => tracing::warn!(primary = %nodes[p], "primary is now {}", nodes[p]),
                None => tracing::error!("no primary: {}", next.no_primary.as_deref().unwrap_or("")),
            }
        }
        crate::metrics::nodes(&next, limits.max_seconds);
        topology.record_history(&next);
        topology.publish(next);
    }
}

/// Loads catalogs when clients ask for a database, after DDL, and every `catalog_refresh`.
async fn catalog_loop(topology: Arc<Topology>, source: SettingsSource, shutdown: CancellationToken) {
    let mut last_full = Instant::now();
    loop {
        let settings = source().0;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = topology.catalogs.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let mut dbs = topology.catalogs.take_pending();
        if last_full.elapsed() >= settings.catalog_refresh {
            last_full = Instant::now();
            for d in topology.catalogs.databases() {
                if !dbs.contains(&d) {
                    dbs.push(d);
                }
            }
        }
        let Some(p) = topology.snapshot().primary else { continue };
        let node = topology.nodes[p].clone();
        for db in dbs {
            let load = async {
                let mut c = options(&node, &settings, &db).connect().await?;
                let cat = super::catalog::load(&mut c).await;
                let _ = c.close().await;
                cat
            };
            match tokio::time::timeout(settings.timeout * 5, load).await {
                Ok(Ok(cat)) => {
                    tracing::debug!(database = %db, functions = cat.functions.len(), unlogged = cat.unlogged.len(), "catalog loaded");
                    topology.catalogs.store(&db, cat);
                }
                Ok(Err(e)) => {
                    tracing::warn!(database = %db, error = %e, "could not read the catalog; statements calling functions go to the primary");
                    topology.catalogs.refresh_later(&db);
                }
                Err(_) => topology.catalogs.refresh_later(&db),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeAddr> {
        (0..n).map(|i| NodeAddr { host: "h".into(), port: i as u16 }).collect()
    }

    fn primary(lsn: u64) -> Result<Sample, String> {
        Ok(Sample { in_recovery: false, lsn: Some(lsn), receive_lsn: None, replay_age: None, standbys: vec![] })
    }

    const LIMITS: LagLimits = LagLimits { max_seconds: 1.0, max_bytes: 0 };

    fn next(prev: &Snapshot, n: &[NodeAddr], samples: &[Result<Sample, String>], banned: &[bool]) -> Snapshot {
        next_snapshot(prev, n, samples, banned, Instant::now(), LIMITS, &LsnHistory::default())
    }

    fn replica(lsn: u64, age: f64) -> Result<Sample, String> {
        Ok(Sample {
            in_recovery: true,
            lsn: Some(lsn),
            receive_lsn: Some(lsn),
            replay_age: Some(age),
            standbys: vec![],
        })
    }

    #[test]
    fn roles_and_lag() {
        let n = nodes(3);
        let prev = Snapshot::initial(&n);
        let s = next(&prev, &n, &[primary(1000), replica(1000, 500.0), replica(400, 2.5)], &[false; 3]);
        assert_eq!(s.primary, Some(0));
        assert_eq!(s.nodes[1].role, Role::Replica);
        assert_eq!(s.nodes[1].lag_bytes, Some(0));
        assert_eq!(s.nodes[1].lag_seconds, Some(0.0), "an idle primary does not make a replica laggy");
        assert_eq!(s.nodes[2].lag_bytes, Some(600));
        assert_eq!(s.nodes[2].lag_seconds, Some(2.5));
        assert!(s.readable(1));
        assert!(!s.readable(2), "2.5 s behind with max_lag 1 s");
        assert_eq!(s.primary_lsn, Some(1000));
    }

    #[test]
    fn lag_in_time_from_the_primarys_position_history() {
        let t0 = Instant::now() - Duration::from_secs(10);
        let mut h = LsnHistory::default();
        for (s, lsn) in [(0, 100), (1, 100), (2, 200), (5, 300), (9, 400)] {
            h.record(t0 + Duration::from_secs(s), lsn);
        }
        assert_eq!(h.passed_at(100), Some(t0 + Duration::from_secs(2)));
        assert_eq!(h.passed_at(250), Some(t0 + Duration::from_secs(5)));
        assert_eq!(h.passed_at(400), None, "not passed yet");
        assert_eq!(h.passed_at(50), None, "passed before the history");
        let n = nodes(2);
        let s = next_snapshot(
            &Snapshot::initial(&n),
            &n,
            &[primary(400), replica(200, 3600.0)],
            &[false; 2],
            Instant::now(),
            LIMITS,
            &h,
        );
        let lag = s.nodes[1].lag_seconds.unwrap();
        assert!((4.9..6.0).contains(&lag), "replica at 200 is about 5 s behind, not an hour: {lag}");
        assert!(s.nodes[1].lagging);
        assert!(!s.nodes[0].lagging, "a primary is never lagging");
    }

    #[test]
    fn lag_hysteresis() {
        let n = nodes(2);
        let mut s = Snapshot::initial(&n);
        let mut states = Vec::new();
        for age in [0.2, 1.5, 0.8, 0.6, 0.4, 0.9, 1.2] {
            s = next(&s, &n, &[primary(1000), replica(900, age)], &[false; 2]);
            states.push(s.nodes[1].lagging);
        }
        // in at once, out only below half the limit, back in only above the limit
        assert_eq!(states, [false, true, true, true, false, false, true]);
        let bytes = LagLimits { max_seconds: 100.0, max_bytes: 50 };
        assert!(bytes.lagging(false, Some(0.1), Some(60)));
        assert!(bytes.lagging(true, Some(0.1), Some(30)));
        assert!(!bytes.lagging(true, Some(0.1), Some(20)));
        assert!(bytes.lagging(false, None, Some(0)), "unknown lag counts as lagging");
    }

    #[test]
    fn failover_finds_the_new_primary() {
        let n = nodes(3);
        let prev = next(&Snapshot::initial(&n), &n, &[primary(1), replica(1, 0.0), replica(1, 0.0)], &[false; 3]);
        // old primary down, replica 2 promoted
        let s = next(&prev, &n, &[Err("refused".into()), replica(1, 0.0), primary(5)], &[true, false, false]);
        assert_eq!(s.primary, Some(2));
        // primary unreachable and nobody promoted: keep it (writes fail with its connection error)
        let s = next(&prev, &n, &[Err("refused".into()), replica(1, 0.0), replica(1, 0.0)], &[true, false, false]);
        assert_eq!(s.primary, Some(0));
        // every reachable node in recovery: no primary, and it says why
        let s = next(&prev, &n, &[replica(1, 0.0), replica(1, 0.0), replica(1, 0.0)], &[false; 3]);
        assert_eq!(s.primary, None);
        assert!(s.no_primary.is_some());
    }

    #[test]
    fn failed_sample_is_unhealthy() {
        let n = nodes(2);
        let prev = next(&Snapshot::initial(&n), &n, &[primary(1), replica(1, 0.0)], &[false; 2]);
        let s = next(&prev, &n, &[primary(1), Err("timeout".into())], &[false, false]);
        assert!(!s.nodes[1].healthy);
        assert!(!s.readable(1));
        assert_eq!(s.nodes[1].role, Role::Replica, "role kept from before");
    }
}
