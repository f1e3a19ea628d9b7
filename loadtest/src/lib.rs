//! # loadtest: archlab's load harness
//!
//! Empty for now: the open-loop, coordinated-omission-corrected harness arrives with the
//! harness issue. Until then, stage numbers are taken with `wrk` (see `stages/01-monolith`).
