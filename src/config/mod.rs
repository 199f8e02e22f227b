//! Typed, documented settings: the TOML file (through the `config` crate), `PGSPLIT_`
//! environment overrides (`PGSPLIT_POOL__SIZE=10`), and command-line flags, merged in that
//! order and validated once into [`Settings`]. Every key is documented with its default in
//! `docs/configuration.md` (a test keeps the two in step). Nothing reads configuration through
//! a global: each subsystem is handed its own part.

mod routing;
mod settings;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use routing::{
    ConsistencyConfig, ConsistencyRuleConfig, ConsistencySettings, LoadBalance, Mode, MonitorConfig, Reads,
    RoutingConfig, RoutingSettings, Rule, RuleConfig, DEFAULT_HARMLESS,
};
pub use settings::{
    AuthMethod, AuthSettings, BackendCredential, ClientSecret, MonitorSettings, NodeAddr, PoolMode, PoolSettings,
    ServerSettings, Settings, Unlisted, UserAuth,
};

/// Why a configuration was rejected. The message is shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// The configuration file as written. See `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub pool: PoolConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub routing: RoutingConfig,
    pub consistency: ConsistencyConfig,
    pub monitor: MonitorConfig,
    pub log: LogConfig,
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// TCP address clients connect to.
    pub listen: String,
    /// Directory for a Unix socket `.s.PGSQL.<port>` (empty: none).
    pub unix_socket_dir: String,
    /// Most client connections at once; more get SQLSTATE 53300.
    pub max_clients: usize,
    /// PEM certificate chain for TLS (empty: TLS off, SSLRequest answered `N`).
    pub tls_cert: String,
    /// PEM private key for TLS.
    pub tls_key: String,
    /// Refuse clients that do not use TLS.
    pub require_tls: bool,
    /// Time a client has to finish startup and authentication.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// On SIGINT/SIGTERM, time given to open transactions before connections are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Largest message accepted from a client, in bytes.
    pub max_message_size: usize,
    /// Tokio worker threads (0: one on machines with up to two cores, else one per core).
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:6432".into(),
            unix_socket_dir: String::new(),
            max_clients: 10_000,
            tls_cert: String::new(),
            tls_key: String::new(),
            require_tls: false,
            startup_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: 256 << 20,
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP address for /metrics, /healthz, /readyz, /api/status and /dashboard (empty: off).
    pub listen: String,
    /// Users (who log in as usual) allowed into the SQL admin console, database `pgsplit`.
    pub users: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:9930".into(), users: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// `transaction` (a backend connection per transaction) or `session` (per client).
    pub mode: String,
    /// Most backend connections per (node, user, database).
    pub size: usize,
    /// How long a client waits for a backend connection before an error.
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// How long opening a backend connection (TCP + startup + auth) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle backend connections older than this are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Backend connections are closed after this age, when next idle.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Hand out idle backend connections in turn (oldest first) instead of the most recently
    /// used one first (PgBouncer's `server_round_robin`).
    pub server_round_robin: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: "transaction".into(),
            size: 20,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            server_round_robin: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Default client authentication for listed users: `scram-sha-256`, `md5` or `trust`.
    pub method: String,
    /// Users not in `[[users]]`: `reject`, `auth_query` (check against the primary's secret),
    /// or `trust` (let them in and connect to the backend as themselves without a password).
    pub unlisted_users: String,
    /// The user pgsplit logs in as to run `auth_query`.
    pub auth_user: String,
    /// Password of `auth_user`.
    pub auth_password: String,
    /// Database to run `auth_query` in (empty: the client's database).
    pub auth_database: String,
    /// Returns (user name, secret) for `$1`; the secret is a SCRAM verifier, an md5 hash or NULL.
    pub auth_query: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: "scram-sha-256".into(),
            unlisted_users: "reject".into(),
            auth_user: String::new(),
            auth_password: String::new(),
            auth_database: String::new(),
            auth_query: "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The primary: `host:port` or `postgres://user:password@host:port/db` (credentials in a
    /// URL become a listed user). A host starting with `/` is a Unix socket directory.
    pub primary: String,
    /// Replicas, in the same forms as `primary`.
    pub replicas: Vec<String>,
    /// Databases clients may ask for (empty: any; the backend rejects what does not exist).
    pub databases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `pgsplit=debug`. `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: "text".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    /// Role name.
    pub name: String,
    /// Plain password, md5 hash (`md5...`) or SCRAM verifier (`SCRAM-SHA-256$...`).
    pub password: String,
    /// Client authentication for this user (empty: `auth.method`).
    pub method: String,
    /// Password pgsplit uses for backend connections when `password` is a hash
    /// (empty: `password`, or the keys from the client's SCRAM exchange).
    pub server_password: String,
    /// Overrides `pool.size` for this user (0: no override).
    pub pool_size: usize,
    /// Overrides `pool.mode` for this user (empty: no override).
    pub pool_mode: String,
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub primary: Option<String>,
    pub replicas: Vec<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<usize>,
    pub log_level: Option<String>,
    pub max_lag: Option<std::time::Duration>,
    pub consistency: Option<String>,
    pub admin_users: Vec<String>,
}

impl Config {
    /// Loads the file (if any), then `PGSPLIT_*` environment variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!("configuration file {} does not exist", path.display())));
            }
            b = b.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let vars: config::Map<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("PGSPLIT_")).collect();
        b = b.add_source(
            config::Environment::with_prefix("PGSPLIT")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("cluster.replicas")
                .with_list_parse_key("cluster.databases")
                .with_list_parse_key("admin.users")
                .with_list_parse_key("routing.harmless_functions")
                .with_list_parse_key("routing.primary_functions")
                .source(Some(vars)),
        );
        let built = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        built.try_deserialize::<Config>().map_err(|e| ConfigError::Load(e.to_string()))
    }

    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.listen {
            self.server.listen = v.clone();
        }
        if let Some(v) = &o.admin_listen {
            self.admin.listen = v.clone();
        }
        if let Some(v) = &o.primary {
            self.cluster.primary = v.clone();
        }
        if !o.replicas.is_empty() {
            self.cluster.replicas = o.replicas.clone();
        }
        if let Some(v) = &o.pool_mode {
            self.pool.mode = v.clone();
        }
        if let Some(v) = o.pool_size {
            self.pool.size = v;
        }
        if let Some(v) = &o.log_level {
            self.log.level = v.clone();
        }
        if let Some(v) = o.max_lag {
            self.consistency.max_lag = v;
        }
        if let Some(v) = &o.consistency {
            self.consistency.mode = v.clone();
        }
        if !o.admin_users.is_empty() {
            self.admin.users = o.admin_users.clone();
        }
    }
}
