//! What every session shares: settings (swappable by RELOAD), pools, the topology, the
//! classifier, cancel keys, the prepared statement registry, the client registry and counters,
//! PAUSE, and the shutdown signal. Built once by `server` and passed explicitly.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::clients::ClientRegistry;
use crate::config::{ConfigError, Settings};
use crate::pool::Pools;
use crate::replication::Topology;
use crate::router::Classifier;
use crate::statements::StatementRegistry;
use crate::stats::Stats;

/// Loads the configuration again (for RELOAD and SIGHUP).
pub type Reloader = Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

pub struct Context {
    settings: ArcSwap<Settings>,
    reloader: Option<Reloader>,
    pub pools: Arc<Pools>,
    /// Which node is the primary, which replicas may serve reads, catalog facts.
    pub topology: Arc<Topology>,
    pub classifier: Classifier,
    pub cancels: Arc<CancelRegistry>,
    pub statements: StatementRegistry,
    pub clients: Arc<ClientRegistry>,
    pub stats: Stats,
    /// PAUSE: no new backend work starts while this is true.
    paused: tokio::sync::watch::Sender<bool>,
    /// Cancelled when pgsplit starts shutting down.
    pub shutdown: CancellationToken,
    /// Every client session, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl Context {
    pub fn new(settings: Settings, reloader: Option<Reloader>) -> Arc<Self> {
        Arc::new(Context {
            pools: Pools::new(settings.pool.clone()),
            classifier: Classifier::new(settings.routing.cache_size),
            topology: Topology::new(settings.nodes.clone()),
            cancels: CancelRegistry::new(),
            statements: StatementRegistry::new(),
            clients: Arc::new(ClientRegistry::default()),
            stats: Stats::new(settings.nodes.len()),
            paused: tokio::sync::watch::channel(false).0,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            settings: ArcSwap::from_pointee(settings),
            reloader,
        })
    }

    /// The settings in force now.
    pub fn settings(&self) -> Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Reloads the configuration. Routing, consistency, authentication, pool sizes and monitor
    /// thresholds take effect at once, for existing sessions too; listen addresses and the node
    /// list need a restart (reported, not applied).
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let Some(reloader) = &self.reloader else { return Err("no configuration source to reload from".into()) };
        let new = reloader().map_err(|e| format!("configuration error: {e}"))?;
        let old = self.settings();
        let mut notes = Vec::new();
        if new.nodes != old.nodes {
            notes.push("cluster nodes changed: restart pgsplit to use them".to_string());
        }
        if new.server.listen != old.server.listen || new.admin_listen != old.admin_listen {
            notes.push("listen addresses changed: restart pgsplit to use them".to_string());
        }
        let mut new = new;
        new.nodes.clone_from(&old.nodes);
        new.node_weights =
            new.nodes.iter().map(|n| new.routing.weights.get(&n.to_string()).copied().unwrap_or(1)).collect();
        self.pools.update(new.pool.clone());
        self.settings.store(Arc::new(new));
        tracing::info!(?notes, "configuration reloaded");
        Ok(notes)
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits while pgsplit is paused (returns at once when it is not).
    pub async fn wait_unpaused(&self) {
        let mut rx = self.paused.subscribe();
        while *rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// PAUSE: lets transactions in flight finish, then holds every new request until RESUME.
    /// Returns once no backend connection is in use (or after `wait`).
    pub async fn pause(&self, wait: Duration) -> bool {
        self.paused.send_replace(true);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.pools.status().iter().all(|p| p.active == 0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}
