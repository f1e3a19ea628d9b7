//! What stage 8's two consensus stores have in common, as Patroni and the drills see them.
//!
//! Patroni keeps its leader key in one of two stores, each a cluster of three members that agree
//! by consensus: etcd ([`crate::etcd`], Raft) or ZooKeeper ([`crate::zookeeper`], ZAB). Both elect
//! a leader among their members, number each leadership (Raft's *term*, ZAB's *epoch*), and
//! acknowledge a write once a majority has it: one member may be lost, two may not.

/// Which store Patroni coordinates through: `archlab up 8 --dcs etcd|zookeeper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// etcd: Raft.
    Etcd,
    /// ZooKeeper: ZAB.
    #[value(name = "zookeeper")]
    ZooKeeper,
}

/// Where Patroni finds the store: the kind and its members' client `address:port`s,
/// comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusStore {
    /// etcd or ZooKeeper.
    pub kind: StoreKind,
    /// Every member's client `address:port`, comma-separated.
    pub endpoints: String,
}

/// Who leads a store's cluster, as its members agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The leading member's position in its cluster's list of members.
    pub member: usize,
    /// Which leadership this is: etcd's Raft term, ZooKeeper's ZAB epoch. Each new leader has a
    /// higher one than every leader before it.
    pub term: u64,
}
