//! What stage 8's two consensus stores have in common, as Patroni and the drills see them.
//!
//! Patroni keeps its leader key in one of two stores, each a cluster of three members that agree
//! by consensus: etcd ([`crate::etcd`], Raft) or ZooKeeper ([`crate::zookeeper`], ZAB). Both elect
//! a leader among their members, number each leadership (Raft's *term*, ZAB's *epoch*), and
//! acknowledge a write once a majority has it: one member may be lost, two may not.

use std::path::PathBuf;

use crate::{
    etcd::EtcdCluster,
    zookeeper::{ZnodeReader, ZooKeeperEnsemble},
};

/// Which store Patroni coordinates through: `archlab up 8 --dcs etcd|zookeeper`. etcd by
/// default: Patroni's most used store, and the lighter of the two on a 0.05-core host (one Go
/// process against a JVM).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// etcd: Raft.
    #[default]
    Etcd,
    /// ZooKeeper: ZAB.
    #[value(name = "zookeeper")]
    ZooKeeper,
}

impl StoreKind {
    /// Its name, as `--dcs` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Etcd => "etcd",
            StoreKind::ZooKeeper => "zookeeper",
        }
    }
}

/// A stage's consensus hosts as one cluster of either store.
#[derive(Debug, Clone)]
pub enum ConsensusCluster {
    /// Three etcd members.
    Etcd(EtcdCluster),
    /// Three ZooKeeper members.
    ZooKeeper(ZooKeeperEnsemble),
}

impl ConsensusCluster {
    /// Where Patroni finds it.
    pub fn store(&self) -> ConsensusStore {
        match self {
            ConsensusCluster::Etcd(c) => ConsensusStore {
                kind: StoreKind::Etcd,
                endpoints: c.endpoints(),
            },
            ConsensusCluster::ZooKeeper(z) => ConsensusStore {
                kind: StoreKind::ZooKeeper,
                endpoints: z.endpoints(),
            },
        }
    }

    /// Starts member `member` (idempotent) and waits until it listens; it has a say in the
    /// cluster only once a majority runs ([`ConsensusCluster::form`]).
    pub async fn start_member(&self, member: usize) -> anyhow::Result<()> {
        match self {
            ConsensusCluster::Etcd(c) => c.start_member(member).await,
            ConsensusCluster::ZooKeeper(z) => z.start_member(member).await,
        }
    }

    /// Waits until the members agree on a leader (a new cluster: once a majority runs); fails
    /// after the store's own bound for forming, with the members' logs.
    pub async fn form(&self) -> anyhow::Result<Leadership> {
        match self {
            ConsensusCluster::Etcd(c) => {
                c.wait_for_leader(|_| true, crate::etcd::FORM_TIMEOUT).await
            }
            ConsensusCluster::ZooKeeper(z) => {
                z.wait_for_leader(|_| true, crate::zookeeper::FORM_TIMEOUT)
                    .await
            }
        }
    }

    /// Who leads now, if the members agree.
    pub async fn leader(&self) -> Option<Leadership> {
        match self {
            ConsensusCluster::Etcd(c) => c.leader().await,
            ConsensusCluster::ZooKeeper(z) => z.leader().await,
        }
    }

    /// The value stored at `key` (a key in etcd, a znode's path in ZooKeeper; Patroni spells them
    /// alike), read so that a value the store has agreed on is seen: `Some(None)` if there is no
    /// such key, `None` if no member answered.
    pub async fn get(&self, key: &str) -> Option<Option<String>> {
        self.key_reader().get(key).await
    }

    /// A reader for repeated reads ([`KeyReader::get`]), as a watch makes them.
    pub fn key_reader(&self) -> KeyReader<'_> {
        match self {
            ConsensusCluster::Etcd(c) => KeyReader::Etcd(c),
            ConsensusCluster::ZooKeeper(z) => KeyReader::ZooKeeper(z.reader()),
        }
    }

    /// Member `member`'s log and PID file.
    pub fn member_files(&self, member: usize) -> (PathBuf, PathBuf) {
        match self {
            ConsensusCluster::Etcd(c) => {
                let m = &c.members[member];
                (m.log_path(), m.pid_path())
            }
            ConsensusCluster::ZooKeeper(z) => {
                let m = &z.members[member];
                (m.log_path(), m.pid_path())
            }
        }
    }

    /// Stops member `member` (SIGTERM).
    pub fn stop_member(&self, member: usize) -> anyhow::Result<()> {
        match self {
            ConsensusCluster::Etcd(c) => c.members[member].stop(),
            ConsensusCluster::ZooKeeper(z) => z.members[member].stop(),
        }
    }
}

/// Reads keys of either store again and again: over etcd each read is a request of its own; over
/// ZooKeeper the reads share one session ([`ZnodeReader`]).
pub enum KeyReader<'a> {
    /// etcd's JSON gateway.
    Etcd(&'a EtcdCluster),
    /// A ZooKeeper session.
    ZooKeeper(ZnodeReader),
}

impl KeyReader<'_> {
    /// As [`ConsensusCluster::get`].
    pub async fn get(&mut self, key: &str) -> Option<Option<String>> {
        match self {
            KeyReader::Etcd(c) => c.get(key).await,
            KeyReader::ZooKeeper(z) => z.get(key).await,
        }
    }
}

/// One consensus host of a stage: its member of the cluster.
#[derive(Debug, Clone)]
pub struct ConsensusMember {
    /// The whole cluster (a member's start names every other member).
    pub cluster: ConsensusCluster,
    /// Its position in the cluster's members.
    pub member: usize,
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
