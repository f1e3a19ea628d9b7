//! # gateway: the load balancer in front of the app hosts (stage 4)
//!
//! A pingora proxy (`pingora-proxy`, `pingora-load-balancing`) that spreads requests over the app
//! hosts, checks their health actively (`GET /readyz`) and passively (a failed connect or a 5xx
//! takes a host out at once), retries a read-only request once on another host when its host
//! breaks, pools keep-alive connections to the hosts, and counts everything per host.
//!
//! Reading order: [`settings`] (every bound and its reason), [`pool`] (hosts, health, how one is
//! chosen), [`proxy`] (what happens to a request), [`connections`] (the cap on client
//! connections), [`metrics`], then [`server`] (how it is put together and started).

pub mod connections;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod settings;

pub use settings::GatewaySettings;
