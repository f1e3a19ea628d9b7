//! # conduit: the one application of archlab
//!
//! The RealWorld "Conduit" API (users, profiles, articles, comments, favorites, tags; see
//! `../shared/realworld/openapi.yml`) plus media uploads, health checks and metrics. Every stage of
//! archlab runs this same binary; a stage changes only its configuration.
//!
//! Reading order:
//! - [`app`]: start-up, the router and its limits (body size, timeout, load shedding);
//! - [`api`]: one module per resource, each with its `router()` and its SQL;
//! - [`db`]: the database seam (one pool now; replicas and shards in later stages);
//! - [`object_cluster`]: the object store cluster as the app sees it (stage 7: S3 nodes, failover);
//! - [`cache`]: the cache seam (cache-aside with Redis from stage 3: keys, single-flight, breaker);
//! - [`auth`], [`extract`], [`error`], [`model`]: tokens, input parsing, error bodies, JSON shapes;
//! - [`slug`]: slugs that end in the article id, so a slug finds its row (and later its shard);
//! - [`settings`]: every bound, with the reason for its default;
//! - [`seed`]: the deterministic data set the benchmarks run on.
//!
//! Run it with `conduit serve` (settings from `APP_…` variables), or let the lab do it:
//! `archlab up 1`.

use std::sync::Arc;

use object_store::ObjectStore;

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod db;
pub mod edge;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod object_cluster;
pub mod seed;
pub mod seed_images;
pub mod serve;
pub mod settings;
pub mod slug;
pub mod throttle;

pub use app::Application;
pub use settings::Settings;

/// What every handler can reach. Cheap to clone: everything is shared.
#[derive(Clone)]
pub struct AppState {
    /// Which pool a query goes to: shard 0's (the only database before stage 7), whose replicas
    /// the read routing and the cache know about.
    pub db: db::Database,
    /// Every shard, shard 0 (`db`) first, and the map from ids to them: which database holds a
    /// given user's or article's rows. One shard before stage 7.
    pub shards: Arc<db::Shards>,
    /// Tokens and password hashes.
    pub auth: Arc<auth::Auth>,
    /// How many login and registration attempts a client, and failed logins an account, may
    /// make (this host's count).
    pub throttles: Arc<throttle::Throttles>,
    /// The read cache in front of the database (the cache seam; off before stage 3).
    pub cache: Arc<cache::Cache>,
    /// Where media bytes live (the `object_store` seam).
    pub media: Arc<dyn ObjectStore>,
    /// Request and pool metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The settings the app started with.
    pub settings: Arc<Settings>,
    /// Set when shutdown begins: `/readyz` answers 503 so load balancers take this host out of
    /// rotation while it still serves (see `server.drain_ms`).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}
