//! Backend connection pools: one deadpool pool per (node, user, database), created on first
//! use. Checkout is a semaphore plus a queue pop — no health-check round trip; connections are
//! known-good because a session only returns one that is idle and clean (see `session`), and a
//! reaper closes connections past `idle_timeout` or `max_lifetime`. This module knows nothing
//! about routing or lag.

mod conn;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, QueueMode, RecycleError, RecycleResult, Timeouts};
use pgsplit_protocol::auth::AuthError;
use pgsplit_protocol::error::ErrorFields;
use pgsplit_protocol::ProtocolError;
use tokio_util::sync::CancellationToken;

pub use conn::{Credential, ServerConn, MAX_BACKEND_MESSAGE, MAX_PREPARED_PER_CONN};
pub use stream::BackendStream;

use crate::config::{NodeAddr, PoolSettings};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("could not connect to {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("backend I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("backend closed the connection")]
    Closed,
    #[error("backend protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("backend authentication failed: {0}")]
    Auth(#[from] AuthError),
    #[error("the backend asks for {0}, and pgsplit has none for this user")]
    NoCredential(&'static str),
    #[error("backend asks for unsupported {0}")]
    Unsupported(String),
    #[error("unexpected {0} from backend")]
    Unexpected(&'static str),
    #[error("{}", .0.message())]
    Server(ErrorFields),
    #[error("no backend connection became free within {0:?}")]
    CheckoutTimeout(Duration),
    #[error("pool is closed")]
    PoolClosed,
}

impl PoolError {
    /// A failure to reach the node at all (as opposed to the server refusing the login).
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, PoolError::Connect(..) | PoolError::ConnectTimeout(_) | PoolError::Closed | PoolError::Io(_))
    }
}

/// A backend connection as SHOW SERVERS lists it.
#[derive(Debug)]
pub struct ServerEntry {
    pub id: u64,
    pub node: String,
    pub user: String,
    pub database: String,
    pub pid: i32,
    pub created: std::time::SystemTime,
    pub in_use: std::sync::atomic::AtomicBool,
}

/// Every open backend connection.
#[derive(Default)]
pub struct ServerRegistry {
    next: std::sync::atomic::AtomicU64,
    entries: Mutex<HashMap<u64, Arc<ServerEntry>>>,
}

/// Keeps a connection in the registry for as long as it exists.
#[derive(Debug)]
pub struct ServerRegistration {
    registry: Arc<ServerRegistry>,
    pub entry: Arc<ServerEntry>,
}

impl Drop for ServerRegistration {
    fn drop(&mut self) {
        self.registry.entries.lock().expect("server registry").remove(&self.entry.id);
    }
}

impl std::fmt::Debug for ServerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerRegistry")
    }
}

impl ServerRegistry {
    fn register(self: &Arc<Self>, key: &PoolKey, pid: i32) -> ServerRegistration {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let entry = Arc::new(ServerEntry {
            id,
            node: key.node.to_string(),
            user: key.user.clone(),
            database: key.database.clone(),
            pid,
            created: std::time::SystemTime::now(),
            in_use: std::sync::atomic::AtomicBool::new(false),
        });
        self.entries.lock().expect("server registry").insert(id, entry.clone());
        ServerRegistration { registry: self.clone(), entry }
    }

    pub fn list(&self) -> Vec<Arc<ServerEntry>> {
        let mut v: Vec<_> = self.entries.lock().expect("server registry").values().cloned().collect();
        v.sort_by_key(|e| e.id);
        v
    }
}

/// Which pool: a node, and the role and database its connections log in as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: NodeAddr,
    pub user: String,
    pub database: String,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}/{}", self.user, self.node, self.database)
    }
}

/// ParameterStatus names and values.
pub type ParamList = Vec<(String, String)>;

pub struct Manager {
    key: PoolKey,
    credential: RwLock<Credential>,
    connect_timeout: Duration,
    max_lifetime: Duration,
    /// ParameterStatus values a connection reports once given a session's settings, by the
    /// settings' fingerprint: lets a client log in without waiting for a free connection.
    reported: Mutex<HashMap<u64, Arc<ParamList>>>,
    servers: Arc<ServerRegistry>,
}

impl Manager {
    pub fn reported_params(&self, fingerprint: u64) -> Option<Arc<ParamList>> {
        self.reported.lock().expect("reported params").get(&fingerprint).cloned()
    }

    pub fn remember_params(&self, fingerprint: u64, params: &[(String, String)]) {
        let mut m = self.reported.lock().expect("reported params");
        if m.len() > 1000 {
            m.clear();
        }
        m.insert(fingerprint, Arc::new(params.to_vec()));
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }
}

impl managed::Manager for Manager {
    /// Boxed: the pool moves a connection several times per checkout and return, and a
    /// pointer moves for less than the struct (about 2,000 instructions per transaction of
    /// `memcpy` unboxed).
    type Type = Box<ServerConn>;
    type Error = PoolError;

    async fn create(&self) -> Result<Box<ServerConn>, PoolError> {
        let cred = self.credential.read().expect("credential lock").clone();
        // Boxed: the connect state machine is large, and every session future that may check
        // out a connection would otherwise carry its size.
        let conn = Box::pin(ServerConn::connect(
            &self.key.node,
            &self.key.user,
            &self.key.database,
            &cred,
            self.connect_timeout,
        ))
        .await;
        match conn {
            Ok(mut c) => {
                tracing::debug!(pool = %self.key, "backend connection opened");
                c.registration = Some(self.servers.register(&self.key, c.pid));
                Ok(Box::new(c))
            }
            Err(e) => {
                tracing::warn!(pool = %self.key, error = %e, "backend connection failed");
                Err(e)
            }
        }
    }

    async fn recycle(&self, conn: &mut Box<ServerConn>, metrics: &Metrics) -> RecycleResult<PoolError> {
        if conn.broken {
            return Err(RecycleError::message("broken"));
        }
        if metrics.age() > self.max_lifetime {
            return Err(RecycleError::message("max_lifetime reached"));
        }
        if !conn.idle_and_alive() {
            return Err(RecycleError::message("closed by the server while idle"));
        }
        Ok(())
    }
}

pub type Pool = managed::Pool<Manager>;
/// A checked-out backend connection; dropping it returns it to its pool.
pub type PooledConn = Object<Manager>;

/// All pools, by key.
pub struct Pools {
    settings: Mutex<PoolSettings>,
    pub servers: Arc<ServerRegistry>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

/// A snapshot of one pool for SHOW POOLS, /metrics and the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    pub pool: String,
    pub node: String,
    pub user: String,
    pub database: String,
    pub max_size: usize,
    pub size: usize,
    pub idle: usize,
    pub active: usize,
    pub waiting: usize,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(Pools {
            settings: Mutex::new(settings),
            servers: Arc::new(ServerRegistry::default()),
            pools: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> PoolSettings {
        self.settings.lock().expect("pool settings").clone()
    }

    /// New pool settings (RELOAD): they apply to pools created from now on, and the default
    /// size to existing pools too.
    pub fn update(&self, settings: PoolSettings) {
        let old = std::mem::replace(&mut *self.settings.lock().expect("pool settings"), settings.clone());
        if old.size != settings.size {
            for p in self.pools.lock().expect("pools lock").values() {
                if p.status().max_size == old.size {
                    p.resize(settings.size);
                }
            }
        }
    }

    /// The pool for `key`, created with `size` connections at most if new. A credential learned
    /// later (SCRAM keys from a client login) replaces a missing one.
    pub fn get(&self, key: &PoolKey, size: usize, credential: &Credential) -> Pool {
        let mut pools = self.pools.lock().expect("pools lock");
        if let Some(p) = pools.get(key) {
            if *credential != Credential::None {
                let m = p.manager();
                let current = m.credential.read().expect("credential lock");
                if *current != *credential {
                    drop(current);
                    *m.credential.write().expect("credential lock") = credential.clone();
                }
            }
            return p.clone();
        }
        let settings = self.settings();
        let manager = Manager {
            key: key.clone(),
            credential: RwLock::new(credential.clone()),
            connect_timeout: settings.connect_timeout,
            max_lifetime: settings.max_lifetime,
            reported: Mutex::new(HashMap::new()),
            servers: self.servers.clone(),
        };
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            // Most recently used first (as PgBouncer): the fewest server processes stay busy and
            // theirs are the warm caches; handing connections out in turn woke a cold process for
            // every transaction.
            .queue_mode(if settings.server_round_robin { QueueMode::Fifo } else { QueueMode::Lifo })
            .timeouts(Timeouts {
                wait: Some(settings.checkout_timeout),
                create: Some(settings.connect_timeout),
                // recycling is a non-blocking read (see `Manager::recycle`): nothing to time
                recycle: None,
            })
            .build()
            .expect("pool with a runtime and valid size");
        pools.insert(key.clone(), pool.clone());
        pool
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        let pools = self.pools.lock().expect("pools lock");
        let mut out: Vec<PoolStatus> = pools
            .iter()
            .map(|(k, p)| {
                let s = p.status();
                PoolStatus {
                    pool: k.to_string(),
                    node: k.node.to_string(),
                    user: k.user.clone(),
                    database: k.database.clone(),
                    max_size: s.max_size,
                    size: s.size,
                    idle: s.available,
                    active: s.size - s.available,
                    waiting: s.waiting,
                }
            })
            .collect();
        out.sort_by(|a, b| a.pool.cmp(&b.pool));
        out
    }

    /// Closes idle connections past `idle_timeout` or `max_lifetime`, every few seconds,
    /// until `shutdown`.
    pub async fn reap(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.settings().idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let pools: Vec<Pool> = self.pools.lock().expect("pools lock").values().cloned().collect();
            for p in pools {
                let s = self.settings();
                let (idle, life) = (s.idle_timeout, s.max_lifetime);
                p.retain(|_, m| m.last_used() < idle && m.age() < life);
            }
        }
    }

    /// Closes every pool (at shutdown).
    pub fn close_all(&self) {
        for p in self.pools.lock().expect("pools lock").values() {
            p.close();
        }
    }
}

/// Checks a connection out of `pool`, mapping deadpool's errors to ours.
pub async fn checkout(pool: &Pool) -> Result<PooledConn, PoolError> {
    // The common case is an idle connection or room for a new one: take it without arming a
    // timer. Only when the pool is exhausted does the checkout wait, with `checkout_timeout`
    // (and in turn: the semaphore hands released connections to waiters first).
    let now = Timeouts { wait: Some(Duration::ZERO), ..pool.timeouts() };
    let got = match pool.timeout_get(&now).await {
        Err(managed::PoolError::Timeout(managed::TimeoutType::Wait)) => pool.get().await,
        got => got,
    };
    got.map_err(|e| match e {
        managed::PoolError::Timeout(managed::TimeoutType::Wait) => {
            PoolError::CheckoutTimeout(pool.timeouts().wait.unwrap_or_default())
        }
        managed::PoolError::Timeout(_) => PoolError::ConnectTimeout(pool.manager().key.node.to_string()),
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Closed => PoolError::PoolClosed,
        managed::PoolError::NoRuntimeSpecified | managed::PoolError::PostCreateHook(_) => {
            PoolError::Unexpected("pool configuration")
        }
    })
}

/// Takes a connection out of its pool for good and closes it.
pub fn discard(conn: PooledConn) {
    let c = Object::take(conn);
    tokio::spawn(c.close());
}
