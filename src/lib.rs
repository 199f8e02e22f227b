//! pgsplit: a read/write-splitting, pooling PostgreSQL proxy.
//!
//! The path of one query: `server` accepts a client and hands it to `session`, which
//! authenticates it and runs its command loop; `router` classifies each statement batch and
//! picks a target; `pool` lends a backend connection for it; the session relays the backend's
//! answer until ReadyForQuery. `admin` serves metrics and status; `metrics` names every metric;
//! `error` is the one map from internal errors to what clients see.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cancel;
pub mod clients;
pub mod config;
pub mod context;
pub mod error;
pub mod metrics;
pub mod pool;
pub mod replication;
pub mod router;
pub mod server;
mod session;
pub mod statements;
pub mod stats;
