//! Validation: the raw [`Config`] becomes [`Settings`], the types the rest of pgsplit uses.
//! Every rejection names the key and says what is wrong.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgsplit_protocol::auth::{md5_secret, ScramVerifier};
use pgsplit_protocol::Limits;

use super::routing::{ConsistencySettings, RoutingSettings};
use super::{Config, ConfigError, LogConfig};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin_listen: Option<SocketAddr>,
    /// Users allowed into the SQL admin console.
    pub admin_users: Vec<String>,
    pub pool: PoolSettings,
    pub auth: AuthSettings,
    pub primary: NodeAddr,
    pub replicas: Vec<NodeAddr>,
    /// Every node: the declared primary first, then the replicas. Roles are only the starting
    /// guess; the monitor finds the real primary with `pg_is_in_recovery()`.
    pub nodes: Vec<NodeAddr>,
    /// Load-balancing weight of each node (`routing.weights`, default 1).
    pub node_weights: Vec<u32>,
    pub routing: RoutingSettings,
    pub consistency: ConsistencySettings,
    pub monitor: MonitorSettings,
    /// Databases clients may use; empty means any.
    pub databases: Vec<String>,
    pub log: LogConfig,
    /// The configuration as loaded, for `SHOW CONFIG` and reloads.
    pub raw: Config,
}

#[derive(Debug, Clone)]
pub struct MonitorSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub user: String,
    pub password: String,
    pub database: String,
    pub ban_after: u32,
    pub unban_after: u32,
    pub catalog_refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub unix_socket_dir: Option<PathBuf>,
    pub max_clients: usize,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
    pub startup_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub limits: Limits,
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PoolMode {
    fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s {
            "transaction" => Ok(PoolMode::Transaction),
            "session" => Ok(PoolMode::Session),
            _ => Err(ConfigError::invalid(key, format!("\"{s}\" is not a pool mode (transaction, session)"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub server_round_robin: bool,
}

/// A PostgreSQL server address. A host that starts with `/` is the directory of the server's
/// Unix-domain socket (as in libpq), which holds `.s.PGSQL.<port>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    /// The socket file, for a node reached over a Unix-domain socket.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.host.starts_with('/').then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    Trust,
}

impl AuthMethod {
    fn parse(key: &str, s: &str) -> Result<Self, ConfigError> {
        match s {
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            "md5" => Ok(AuthMethod::Md5),
            "trust" => Ok(AuthMethod::Trust),
            _ => Err(ConfigError::invalid(key, format!("\"{s}\" is not an auth method (scram-sha-256, md5, trust)"))),
        }
    }
}

/// What pgsplit checks a client's password against.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    None,
    /// A plain password, with its SCRAM verifier derived once at load time.
    Plain {
        password: String,
        scram: ScramVerifier,
    },
    Md5(String),
    Scram(ScramVerifier),
}

impl ClientSecret {
    /// Parses a stored secret as PostgreSQL keeps it (`pg_shadow.passwd` or a config password).
    pub fn parse(secret: &str) -> Result<Self, String> {
        if secret.is_empty() {
            Ok(ClientSecret::None)
        } else if secret.starts_with("SCRAM-SHA-256$") {
            ScramVerifier::parse(secret).map(ClientSecret::Scram).map_err(|e| e.to_string())
        } else if secret.len() == 35 && secret.starts_with("md5") && secret[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(ClientSecret::Md5(secret.to_owned()))
        } else {
            Ok(ClientSecret::Plain { password: secret.to_owned(), scram: ScramVerifier::generate(secret) })
        }
    }
}

/// How pgsplit logs in to the backend for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendCredential {
    /// No password (the backend trusts pgsplit) or whatever the client's exchange provides.
    None,
    Password(String),
    /// An md5 secret (`md5...`) answers md5 challenges without the password.
    Md5(String),
}

#[derive(Debug, Clone)]
pub struct UserAuth {
    pub name: String,
    pub method: AuthMethod,
    pub secret: ClientSecret,
    pub backend: BackendCredential,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
}

/// What happens to users not in the user list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlisted {
    Reject,
    AuthQuery { user: String, password: String, database: Option<String>, query: String },
    Trust,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub users: HashMap<String, Arc<UserAuth>>,
    pub unlisted: Unlisted,
}

fn duration(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError::invalid(key, format!("\"{s}\" is not a host:port address")))
}

/// A node given as `host:port` or as a postgres URL; a URL may carry a user, password and db.
struct ParsedNode {
    addr: NodeAddr,
    user: Option<(String, String)>,
}

/// Parses a postgres URL, also with an empty host as libpq allows (`postgres://user@/db?host=/dir`,
/// which the url crate rejects): such a URL is read with a placeholder host, and the flag says so.
fn parse_url(s: &str) -> (Result<url::Url, url::ParseError>, bool) {
    let (scheme, rest) = s.split_once("://").unwrap_or_default();
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if !host_port.is_empty() && !host_port.starts_with(':') {
        return (url::Url::parse(s), false);
    }
    let (userinfo, tail) = rest.split_at(authority.len() - host_port.len());
    (url::Url::parse(&format!("{scheme}://{userinfo}placeholder{tail}")), true)
}

fn parse_node(key: &str, s: &str) -> Result<ParsedNode, ConfigError> {
    let bad = |m: &str| ConfigError::invalid(key, format!("\"{s}\": {m}"));
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let (parsed, empty_host) = parse_url(s);
        let u = parsed.map_err(|e| bad(&e.to_string()))?;
        // percent-decoding only, as libpq does (a `+` in a password stays a `+`)
        let decode = |v: &str| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
        let query = |name: &str| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        // libpq's forms for a socket directory: `?host=/dir`, or the directory percent-encoded
        // in place of the host
        let host = match query("host") {
            Some(h) => h,
            None if empty_host => String::new(),
            None => decode(u.host_str().unwrap_or_default()),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match query("port") {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => u.port().unwrap_or(5432),
        };
        let user = if u.username().is_empty() {
            None
        } else {
            Some((decode(u.username()), u.password().map(decode).unwrap_or_default()))
        };
        Ok(ParsedNode { addr: NodeAddr { host, port }, user })
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("expected host:port or a postgres:// URL"))?;
        let port = port.parse().map_err(|_| bad("bad port"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(ParsedNode { addr: NodeAddr { host: host.to_owned(), port }, user: None })
    }
}

impl Settings {
    pub fn validate(raw: Config) -> Result<Settings, ConfigError> {
        let c = &raw;
        let s = &c.server;
        let tls = match (s.tls_cert.is_empty(), s.tls_key.is_empty()) {
            (true, true) => None,
            (false, false) => Some((PathBuf::from(&s.tls_cert), PathBuf::from(&s.tls_key))),
            _ => return Err(ConfigError::invalid("server.tls_cert", "tls_cert and tls_key must be set together")),
        };
        if s.require_tls && tls.is_none() {
            return Err(ConfigError::invalid("server.require_tls", "requires server.tls_cert and server.tls_key"));
        }
        if s.max_clients == 0 {
            return Err(ConfigError::invalid("server.max_clients", "must be at least 1"));
        }
        if s.max_message_size < 1024 || s.max_message_size > (1 << 30) {
            return Err(ConfigError::invalid("server.max_message_size", "must be between 1024 and 1073741824"));
        }
        let server = ServerSettings {
            listen: socket_addr("server.listen", &s.listen)?,
            unix_socket_dir: Some(PathBuf::from(&s.unix_socket_dir)).filter(|_| !s.unix_socket_dir.is_empty()),
            max_clients: s.max_clients,
            tls,
            require_tls: s.require_tls,
            startup_timeout: duration("server.startup_timeout", s.startup_timeout)?,
            shutdown_timeout: s.shutdown_timeout,
            limits: Limits { max_message: s.max_message_size, ..Limits::default() },
            worker_threads: s.worker_threads,
        };
        let admin_listen =
            if c.admin.listen.is_empty() { None } else { Some(socket_addr("admin.listen", &c.admin.listen)?) };

        let p = &c.pool;
        if p.size == 0 {
            return Err(ConfigError::invalid("pool.size", "must be at least 1"));
        }
        let pool = PoolSettings {
            mode: PoolMode::parse("pool.mode", &p.mode)?,
            size: p.size,
            checkout_timeout: duration("pool.checkout_timeout", p.checkout_timeout)?,
            connect_timeout: duration("pool.connect_timeout", p.connect_timeout)?,
            idle_timeout: duration("pool.idle_timeout", p.idle_timeout)?,
            max_lifetime: duration("pool.max_lifetime", p.max_lifetime)?,
            server_round_robin: p.server_round_robin,
        };

        if c.cluster.primary.is_empty() {
            return Err(ConfigError::invalid(
                "cluster.primary",
                "is required (host:port or postgres://user:password@host:port/db)",
            ));
        }
        let primary = parse_node("cluster.primary", &c.cluster.primary)?;
        let replicas = c
            .cluster
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| parse_node(&format!("cluster.replicas[{i}]"), r))
            .collect::<Result<Vec<_>, _>>()?;

        let default_method = AuthMethod::parse("auth.method", &c.auth.method)?;
        let mut users = HashMap::new();
        for (i, u) in c.users.iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if u.name.is_empty() {
                return Err(ConfigError::invalid(key("name"), "is required"));
            }
            let method =
                if u.method.is_empty() { default_method } else { AuthMethod::parse(&key("method"), &u.method)? };
            let user = user_auth(&u.name, method, &u.password, &u.server_password)
                .map_err(|m| ConfigError::invalid(key("password"), m))?;
            let user = UserAuth {
                pool_size: Some(u.pool_size).filter(|&n| n > 0),
                pool_mode: if u.pool_mode.is_empty() {
                    None
                } else {
                    Some(PoolMode::parse(&key("pool_mode"), &u.pool_mode)?)
                },
                ..user
            };
            if users.insert(u.name.clone(), Arc::new(user)).is_some() {
                return Err(ConfigError::invalid(key("name"), format!("user \"{}\" is listed twice", u.name)));
            }
        }
        // Credentials in node URLs are listed users too, unless the list already has them.
        for node in std::iter::once(&primary).chain(&replicas) {
            if let Some((name, password)) = &node.user {
                if !users.contains_key(name) {
                    let u = user_auth(name, default_method, password, "")
                        .map_err(|m| ConfigError::invalid("cluster.primary", m))?;
                    users.insert(name.clone(), Arc::new(u));
                }
            }
        }

        let a = &c.auth;
        let unlisted = match a.unlisted_users.as_str() {
            "reject" => Unlisted::Reject,
            "trust" => Unlisted::Trust,
            "auth_query" => {
                if a.auth_user.is_empty() {
                    return Err(ConfigError::invalid(
                        "auth.auth_user",
                        "is required when unlisted_users = \"auth_query\"",
                    ));
                }
                if !a.auth_query.contains("$1") {
                    return Err(ConfigError::invalid("auth.auth_query", "must take the user name as $1"));
                }
                Unlisted::AuthQuery {
                    user: a.auth_user.clone(),
                    password: a.auth_password.clone(),
                    database: Some(a.auth_database.clone()).filter(|d| !d.is_empty()),
                    query: a.auth_query.clone(),
                }
            }
            other => {
                return Err(ConfigError::invalid(
                    "auth.unlisted_users",
                    format!("\"{other}\" is not one of reject, auth_query, trust"),
                ))
            }
        };

        match c.log.format.as_str() {
            "text" | "json" => {}
            other => return Err(ConfigError::invalid("log.format", format!("\"{other}\" is not text or json"))),
        }
        tracing_subscriber::EnvFilter::try_new(&c.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;

        // A database named in a node URL is no restriction: only `cluster.databases` is.
        let databases = c.cluster.databases.clone();
        let routing = RoutingSettings::validate(&c.routing)?;
        let consistency = ConsistencySettings::validate(&c.consistency)?;
        let m = &c.monitor;
        let (mon_user, mon_password) = if !m.user.is_empty() {
            (m.user.clone(), m.password.clone())
        } else {
            // The first user with a known password: one from a node URL, then the list.
            let from_url = std::iter::once(&primary).chain(&replicas).find_map(|n| n.user.clone());
            let from_list = c.users.iter().find_map(|u| {
                users.get(&u.name).and_then(|a| match &a.backend {
                    BackendCredential::Password(p) => Some((u.name.clone(), p.clone())),
                    _ => None,
                })
            });
            from_url.or(from_list).unwrap_or_default()
        };
        if mon_user.is_empty() && !replicas.is_empty() {
            return Err(ConfigError::invalid(
                "monitor.user",
                "is required with replicas when no listed user has a plain password (the monitor must log in to every node)",
            ));
        }
        if m.ban_after == 0 || m.unban_after == 0 {
            return Err(ConfigError::invalid("monitor.ban_after", "ban_after and unban_after must be at least 1"));
        }
        let monitor = MonitorSettings {
            interval: duration("monitor.interval", m.interval)?,
            timeout: duration("monitor.timeout", m.timeout)?,
            user: mon_user,
            password: mon_password,
            database: m.database.clone(),
            ban_after: m.ban_after,
            unban_after: m.unban_after,
            catalog_refresh: duration("monitor.catalog_refresh", m.catalog_refresh)?,
        };
        let replicas: Vec<NodeAddr> = replicas.into_iter().map(|r| r.addr).collect();
        let mut nodes = vec![primary.addr.clone()];
        for r in &replicas {
            if nodes.contains(r) {
                return Err(ConfigError::invalid("cluster.replicas", format!("{r} is listed twice")));
            }
            nodes.push(r.clone());
        }
        let node_weights = nodes.iter().map(|n| routing.weights.get(&n.to_string()).copied().unwrap_or(1)).collect();
        Ok(Settings {
            node_weights,
            server,
            admin_listen,
            admin_users: c.admin.users.clone(),
            pool,
            auth: AuthSettings { users, unlisted },
            primary: primary.addr,
            replicas,
            nodes,
            routing,
            consistency,
            monitor,
            databases,
            log: c.log.clone(),
            raw,
        })
    }

    /// Whether clients may connect to `db`.
    pub fn database_allowed(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }
}

/// Builds a listed user's authentication from its configured secret.
fn user_auth(name: &str, method: AuthMethod, password: &str, server_password: &str) -> Result<UserAuth, String> {
    let secret = ClientSecret::parse(password)?;
    match (&method, &secret) {
        (AuthMethod::ScramSha256, ClientSecret::Md5(_)) => {
            return Err(format!("user \"{name}\": an md5 hash cannot check scram-sha-256 logins"))
        }
        (AuthMethod::Md5, ClientSecret::Scram(_)) => {
            return Err(format!("user \"{name}\": a SCRAM verifier cannot check md5 logins"))
        }
        (AuthMethod::ScramSha256 | AuthMethod::Md5, ClientSecret::None) => {
            return Err(format!("user \"{name}\": a password is required unless method = \"trust\""))
        }
        _ => {}
    }
    let backend = if !server_password.is_empty() {
        BackendCredential::Password(server_password.to_owned())
    } else {
        match &secret {
            ClientSecret::None | ClientSecret::Scram(_) => BackendCredential::None,
            ClientSecret::Plain { password, .. } => BackendCredential::Password(password.clone()),
            ClientSecret::Md5(h) => BackendCredential::Md5(h.clone()),
        }
    };
    Ok(UserAuth { name: name.to_owned(), method, secret, backend, pool_size: None, pool_mode: None })
}

impl UserAuth {
    /// The md5 secret that checks this user's md5 logins, when one can be had.
    pub fn md5_secret(&self) -> Option<String> {
        match &self.secret {
            ClientSecret::Plain { password, .. } => Some(md5_secret(&self.name, password)),
            ClientSecret::Md5(h) => Some(h.clone()),
            _ => None,
        }
    }

    /// The SCRAM verifier that checks this user's SCRAM logins, when one can be had.
    pub fn scram_verifier(&self) -> Option<&ScramVerifier> {
        match &self.secret {
            ClientSecret::Plain { scram, .. } | ClientSecret::Scram(scram) => Some(scram),
            _ => None,
        }
    }
}
