//! The HTTP API, one module per resource; each owns its `router()`.

pub mod articles;
pub mod comments;
pub mod contract;
pub mod counts;
pub mod media;
pub mod ops;
pub mod profiles;
pub mod scatter;
pub mod shared;
pub mod tags;
pub mod users;
