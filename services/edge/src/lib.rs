//! # edge: a CDN point of presence in front of the origin (stage 6)
//!
//! A pingora reverse proxy with a shared cache (`pingora-proxy`, `pingora-cache`). It answers
//! anonymous reads from its store, fetches each missing key from the origin once however many
//! clients ask at the same moment (the cache lock), keeps serving a stale copy while it refreshes
//! it in the background or while the origin is down (within the windows the origin allows), and
//! drops what a write changed when the app purges the write's surrogate keys.
//!
//! pingora-cache's defaults are not those of a shared cache: it would store a response with
//! `Set-Cookie`, share one made for an `Authorization` header, ignore `Vary`, and its only store
//! is a test store. [`policy`] is the one place that says what may be shared.
//!
//! Reading order: [`settings`] (every bound and its reason), [`policy`] (what may be shared),
//! [`key`] (which requests are the same), [`store`] (where responses live, how they go),
//! [`proxy`] (what happens to a request), [`rate`], [`metrics`], then [`server`].

pub mod key;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod rate;
pub mod server;
pub mod settings;
pub mod store;

pub use settings::EdgeSettings;
