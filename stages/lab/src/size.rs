//! Machine sizes: the one table of host sizes every stage file picks from.
//!
//! A real system grows by buying machines of a few standard sizes, not by slicing one machine
//! thinner. So does the ladder: a stage file gives each host a size (`size = "large"`), and a
//! later stage keeps the hosts of the one before and adds hosts (a database host, a cache host,
//! app hosts, replicas, edges, shards, object-store nodes, a consensus cluster). What a stage buys
//! is then measured against what it costs: the sum of its hosts' cores.
//!
//! ## Why these numbers
//! The whole ladder runs on one 2-core machine, with the load harness in a budget of its own
//! ([`HARNESS_CORES`]), and the largest planned stage must still fit beside it, so no host is ever
//! starved by the machine rather than by its own budget. The plan for the largest stages, in
//! cores (stage 8 = stage 7 + a three-node consensus cluster):
//!
//! | hosts (stage 7 and 8)                          | size          | cores |
//! |------------------------------------------------|---------------|------:|
//! | gateway                                        | large         | 0.20  |
//! | 2 app hosts                                    | large each    | 0.40  |
//! | cache                                          | small         | 0.05  |
//! | 2 edge PoPs                                    | large each    | 0.40  |
//! | 2 shards, a primary each                       | large each    | 0.40  |
//! | 3 object-store nodes (Garage)                  | small each    | 0.15  |
//! | *stage 7 in all*                               |               | 1.60  |
//! | 3 consensus nodes (etcd or ZooKeeper), stage 8 | small each    | 0.15  |
//! | *stage 8 in all*                               |               | 1.75  |
//! | the load harness                               | [`HARNESS_CORES`] | 0.25 |
//! | **total**                                      |               | 2.00 of 2 |
//!
//! The edge PoPs were planned small (0.05 each) and are large: like the gateway they carry every
//! request, and pingora's cost per request at these rates is mostly waking up for it (stage 6's
//! stage file gives the figures). The plan gave each shard a medium replica too (0.2 more), which
//! no longer fits: stage 7 has two shard primaries and, by default, no replicas, the 0.4 core
//! that stage 6's primary and its two replicas had; `--replicas 2` adds the medium replicas and
//! runs past the machine with the harness (stage 7's stage file says why it is not the default).
//! `--shards 4` (for the comparison of 1, 2 and 4 shards) runs past the machine unless the
//! shards are given small budgets (`--budget db=0.05`), which is how that comparison is made.
//! Stage 8 keeps stage 7's 0.4 core of databases as one primary and one replica under Patroni;
//! `up 8 --replicas 2` buys a third large database host (N+1: the two left after a loss carry
//! what two carried before it) and runs 0.2 core past the machine with the harness, which its
//! crash drills accept: they measure how long writes stop, not a capacity.
//!
//! Stages 1 to 4 on this plan: the monolith is one large box (0.2); stage 2 keeps it as the app
//! host and buys a large database host and a small file host (0.45); stage 3 buys a small cache
//! host (0.5); stage 4 turns the app tier into two large app hosts behind a large gateway
//! (0.9; why the gateway is large: its stage file). The database keeps the size it was bought
//! with until stage 5 buys replicas beside it.
//!
//! The smallest size still holds a typical request's CPU time (well under a millisecond for a
//! cache hit or an indexed query) in one quota slice: 0.05 core is 1 ms every 20 ms (see
//! [`crate::budget::quota_and_period`]). Below that a request would wait whole periods and the
//! knee would measure the scheduler more than the work (LAB-NOTES, "CPU budgets"). The cost of
//! small budgets is throttling jitter in the tail; every result records the period it ran with.

use serde::{Deserialize, Serialize};

/// Cores of the load harness's own budget (`archlab bench` and `tour` run it inside a CPU group
/// of this size). The harness costs under 15 µs of CPU per request on this machine (140,000
/// req/s closed loop on two cores it shared with nginx, docs/harness.md), so a quarter core
/// carries several thousand requests a second with their checks, well above the largest stage's
/// capacity; and it keeps the harness and the hosts from starving each other. Recorded with
/// every result.
pub const HARNESS_CORES: f64 = 0.25;

/// A host's size: how many cores it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// 0.05 core: a cache, a file server, an object-store or consensus node.
    Small,
    /// 0.1 core: a database replica.
    Medium,
    /// 0.2 core: the monolith's box, an app host, a gateway, an edge PoP, a database primary.
    Large,
    /// 0.4 core: a machine no stage of the plan needs yet (kept for equal-cost variants).
    Xlarge,
}

impl Size {
    /// Every size, smallest first.
    pub const ALL: [Size; 4] = [Size::Small, Size::Medium, Size::Large, Size::Xlarge];

    /// Cores of this size.
    pub fn cores(self) -> f64 {
        match self {
            Size::Small => 0.05,
            Size::Medium => 0.1,
            Size::Large => 0.2,
            Size::Xlarge => 0.4,
        }
    }

    /// Its name, as in stage files.
    pub fn as_str(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
            Size::Xlarge => "xlarge",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_double_and_the_largest_plan_fits_the_machine_with_the_harness() {
        for pair in Size::ALL.windows(2) {
            assert!((pair[1].cores() - 2.0 * pair[0].cores()).abs() < 1e-9);
        }
        // The plan in the module doc, host by host.
        let stage8 = [
            (1, Size::Medium), // gateway
            (3, Size::Large),  // app hosts
            (1, Size::Small),  // cache
            (2, Size::Small),  // edges
            (2, Size::Large),  // 2 shard primaries
            (2, Size::Medium), // their replicas
            (3, Size::Small),  // object store
            (3, Size::Small),  // consensus
        ];
        let cores: f64 = stage8.iter().map(|(n, s)| *n as f64 * s.cores()).sum();
        assert!(cores + HARNESS_CORES <= 2.0 + 1e-9, "{cores} + harness");
        // Every size holds at least 1 ms of CPU per period, the kernel's smallest quota.
        for size in Size::ALL {
            let (quota, _) = crate::budget::quota_and_period(size.cores());
            assert!(quota >= crate::budget::MIN_QUOTA_US);
        }
    }
}
