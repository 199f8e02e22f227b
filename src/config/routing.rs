//! The routing and monitoring sections of the configuration file, and their validated forms.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Volatile functions that are harmless on a standby (the default of `routing.harmless_functions`).
pub const DEFAULT_HARMLESS: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "clock_timestamp",
    "timeofday",
    "statement_timestamp",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "gen_random_uuid",
    "uuid_generate_v4",
    "gen_random_bytes",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "inet_server_port",
    "inet_server_addr",
    "inet_client_addr",
    "inet_client_port",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_stat_get_activity",
    "pg_stat_clear_snapshot",
    "pg_notification_queue_usage",
    "pg_trigger_depth",
    "pg_current_logfile",
    "pg_wal_lsn_diff",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Where reads go: `replicas` or `primary`.
    pub reads: String,
    /// Whether the primary also serves reads alongside healthy replicas.
    pub primary_reads: bool,
    /// How reads spread over replicas: `least_outstanding`, `round_robin` or `weighted`.
    pub load_balance: String,
    /// Weights for `weighted`, by replica address (`"host:port" = 3`); unlisted replicas weigh 1.
    pub weights: BTreeMap<String, u32>,
    /// Where queries on `pg_catalog` / `information_schema` go: `primary` or `replicas`.
    pub catalog_reads: String,
    /// Volatile functions that may still run on a replica.
    pub harmless_functions: Vec<String>,
    /// Functions that always send a statement to the primary.
    pub primary_functions: Vec<String>,
    /// Retry a read once elsewhere when a replica fails it before any result reached the client.
    pub retry_reads: bool,
    /// Statement classifications kept in the cache.
    pub cache_size: usize,
    /// Read preferences by user, database and application_name (first match wins).
    pub rules: Vec<RuleConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            reads: "replicas".into(),
            primary_reads: false,
            load_balance: "least_outstanding".into(),
            weights: BTreeMap::new(),
            catalog_reads: "primary".into(),
            harmless_functions: DEFAULT_HARMLESS.iter().map(|s| s.to_string()).collect(),
            primary_functions: Vec::new(),
            retry_reads: true,
            cache_size: 10_000,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Match this user (empty: any).
    pub user: String,
    /// Match this database (empty: any).
    pub database: String,
    /// Match this application_name (empty: any).
    pub application_name: String,
    /// `replicas` or `primary`.
    pub reads: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// How often every node is sampled (role, health, WAL positions).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Connect and query timeout of a sample; a slower sample counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Role the monitor logs in as (empty: the first listed user with a password).
    pub user: String,
    /// Password of `monitor.user`.
    pub password: String,
    /// Database the monitor connects to.
    pub database: String,
    /// Consecutive failed samples that ban a node.
    pub ban_after: u32,
    /// Consecutive good samples that lift a ban.
    pub unban_after: u32,
    /// How often function volatility and unlogged tables are re-read from the primary.
    #[serde(with = "humantime_serde")]
    pub catalog_refresh: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            user: String::new(),
            password: String::new(),
            database: "postgres".into(),
            ban_after: 2,
            unban_after: 5,
            catalog_refresh: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    Replicas,
    Primary,
}

impl Reads {
    pub fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s {
            "replicas" => Ok(Reads::Replicas),
            "primary" => Ok(Reads::Primary),
            _ => Err(ConfigError::invalid(key, format!("\"{s}\" is not replicas or primary"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalance {
    LeastOutstanding,
    RoundRobin,
    Weighted,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub reads: Reads,
}

/// Validated routing settings.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    pub reads: Reads,
    pub primary_reads: bool,
    pub load_balance: LoadBalance,
    /// Weights by node address string.
    pub weights: BTreeMap<String, u32>,
    pub catalog_on_replicas: bool,
    pub harmless: HashSet<String>,
    pub primary_functions: HashSet<String>,
    pub retry_reads: bool,
    pub cache_size: usize,
    pub rules: Vec<Rule>,
}

impl RoutingSettings {
    pub fn validate(c: &RoutingConfig) -> Result<Self, ConfigError> {
        let load_balance = match c.load_balance.as_str() {
            "least_outstanding" => LoadBalance::LeastOutstanding,
            "round_robin" => LoadBalance::RoundRobin,
            "weighted" => LoadBalance::Weighted,
            other => {
                return Err(ConfigError::invalid(
                    "routing.load_balance",
                    format!("\"{other}\" is not least_outstanding, round_robin or weighted"),
                ))
            }
        };
        let catalog_on_replicas = Reads::parse("routing.catalog_reads", &c.catalog_reads)? == Reads::Replicas;
        let opt = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let rules = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Rule {
                    user: opt(&r.user),
                    database: opt(&r.database),
                    application_name: opt(&r.application_name),
                    reads: Reads::parse(&format!("routing.rules[{i}].reads"), &r.reads)?,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        if c.cache_size == 0 {
            return Err(ConfigError::invalid("routing.cache_size", "must be at least 1"));
        }
        Ok(RoutingSettings {
            reads: Reads::parse("routing.reads", &c.reads)?,
            primary_reads: c.primary_reads,
            load_balance,
            weights: c.weights.clone(),
            catalog_on_replicas,
            harmless: c.harmless_functions.iter().map(|s| s.to_lowercase()).collect(),
            primary_functions: c.primary_functions.iter().map(|s| s.to_lowercase()).collect(),
            retry_reads: c.retry_reads,
            cache_size: c.cache_size,
            rules,
        })
    }

    /// The read preference for a session.
    pub fn reads_for(&self, user: &str, database: &str, application_name: &str) -> Reads {
        let matches = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        self.rules
            .iter()
            .find(|r| {
                matches(&r.user, user)
                    && matches(&r.database, database)
                    && matches(&r.application_name, application_name)
            })
            .map(|r| r.reads)
            .unwrap_or(self.reads)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// `session` (read your own writes), `global` (every write through pgsplit before the
    /// read), `time` (primary for `time_window` after a write) or `eventual` (lag threshold only).
    pub mode: String,
    /// A replica further behind than this in time gets no reads.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// A replica further behind than this many bytes of WAL gets no reads (0: no byte limit).
    pub max_lag_bytes: u64,
    /// A replica whose last good sample is older than this counts as lagging.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// For `mode = "time"`: how long reads stay on the primary after a write.
    #[serde(with = "humantime_serde")]
    pub time_window: Duration,
    /// Modes by user and database (first match wins).
    pub rules: Vec<ConsistencyRuleConfig>,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            mode: "session".into(),
            max_lag: Duration::from_secs(1),
            max_lag_bytes: 0,
            stale_after: Duration::from_secs(1),
            time_window: Duration::from_secs(1),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyRuleConfig {
    /// Match this user (empty: any).
    pub user: String,
    /// Match this database (empty: any).
    pub database: String,
    /// The mode for matching sessions.
    pub mode: String,
}

/// How fresh a session's reads must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Session,
    Global,
    Time,
    Eventual,
}

impl Mode {
    pub fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "session" => Ok(Mode::Session),
            "global" => Ok(Mode::Global),
            "time" => Ok(Mode::Time),
            "eventual" => Ok(Mode::Eventual),
            _ => Err(ConfigError::invalid(key, format!("\"{s}\" is not session, global, time or eventual"))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Session => "session",
            Mode::Global => "global",
            Mode::Time => "time",
            Mode::Eventual => "eventual",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsistencySettings {
    pub mode: Mode,
    pub max_lag: Duration,
    pub max_lag_bytes: u64,
    pub stale_after: Duration,
    pub time_window: Duration,
    pub rules: Vec<(Option<String>, Option<String>, Mode)>,
}

impl ConsistencySettings {
    pub fn validate(c: &ConsistencyConfig) -> Result<Self, ConfigError> {
        let nonzero = |k: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::invalid(k, "must be greater than zero"))
            } else {
                Ok(d)
            }
        };
        let opt = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let rules = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok((opt(&r.user), opt(&r.database), Mode::parse(&format!("consistency.rules[{i}].mode"), &r.mode)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(ConsistencySettings {
            mode: Mode::parse("consistency.mode", &c.mode)?,
            max_lag: nonzero("consistency.max_lag", c.max_lag)?,
            max_lag_bytes: c.max_lag_bytes,
            stale_after: nonzero("consistency.stale_after", c.stale_after)?,
            time_window: nonzero("consistency.time_window", c.time_window)?,
            rules,
        })
    }

    pub fn mode_for(&self, user: &str, database: &str) -> Mode {
        let m = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        self.rules.iter().find(|(u, d, _)| m(u, user) && m(d, database)).map(|r| r.2).unwrap_or(self.mode)
    }
}
