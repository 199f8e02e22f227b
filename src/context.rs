//! What every session shares: settings, pools, the classifier, cancel keys, the prepared
//! statement registry, and the shutdown signal. Built once by `server` and passed explicitly.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::config::Settings;
use crate::pool::Pools;
use crate::replication::Topology;
use crate::router::Classifier;
use crate::statements::StatementRegistry;

pub struct Context {
    pub settings: Arc<Settings>,
    pub pools: Arc<Pools>,
    /// Which node is the primary, which replicas may serve reads, catalog facts.
    pub topology: Arc<Topology>,
    /// Load-balancing weight of each node (`routing.weights`, default 1).
    pub node_weights: Vec<u32>,
    pub classifier: Classifier,
    pub cancels: Arc<CancelRegistry>,
    pub statements: StatementRegistry,
    /// Cancelled when pgsplit starts shutting down.
    pub shutdown: CancellationToken,
    /// Every client session, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

impl Context {
    pub fn new(settings: Settings) -> Arc<Self> {
        let settings = Arc::new(settings);
        Arc::new(Context {
            pools: Pools::new(settings.pool.clone()),
            classifier: Classifier::new(settings.routing.cache_size),
            topology: Topology::new(settings.nodes.clone()),
            node_weights: settings
                .nodes
                .iter()
                .map(|n| settings.routing.weights.get(&n.to_string()).copied().unwrap_or(1))
                .collect(),
            cancels: CancelRegistry::new(),
            statements: StatementRegistry::new(),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            settings,
        })
    }
}
