//! The app's router tests, one module a file: each drives the real app over HTTP against real
//! PostgreSQL servers (and Redis, for the cache) that the test starts through the lab library.
//! One test crate, so the app's generic code is compiled once for all of them (see Cargo.toml).
//!
//! `cargo test -p conduit --test api -- articles::` runs one file's tests.

mod common;

mod access_and_races;
mod articles;
mod cache;
mod contract;
mod front_door;
mod hostile_input;
mod ids;
mod media_and_limits;
mod sharding;
mod statistics;
mod users;
