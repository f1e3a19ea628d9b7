//! The consensus store of stage 8: a three-member etcd cluster, one member per host.
//!
//! Stage 5's primary could die and nobody would decide which replica takes its place. Stage 8
//! hands that decision to Patroni, and Patroni keeps the one fact that must never be decided twice
//! (who leads, until when) in a store that agrees on it by consensus: etcd, which runs Raft. A
//! write to etcd is acknowledged once a majority of members (two of three) has it in its log, so
//! one member may be down, or be the leader and die, without losing an acknowledged key; with two
//! down, etcd refuses writes rather than let a minority decide.
//!
//! Each member serves two ports on its host's address:
//!
//! ```text
//! 2379  client  Patroni's reads, writes and watches; also GET /health and the JSON gateway
//!               (POST /v3/maintenance/status: who leads, in which term)
//! 2380  peer    the members among themselves: Raft's votes and log
//! ```
//!
//! The cluster is formed by starting every member with the same list of all members
//! (`--initial-cluster`), the static way: there is no discovery service in a lab. A member that
//! comes back later finds its data folder and rejoins by itself.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Context;
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::{
    consensus::Leadership,
    process::{self, PidRecord, Spawn},
};

/// etcd's standard client port, on every member's own address.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's standard peer port.
pub const PEER_PORT: u16 = 2380;
/// A member listens within a second; 30 s only trips on a broken start. It is not *healthy* then:
/// a member of a new cluster has no leader until a majority runs ([`EtcdCluster::start`] waits
/// for that).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cluster may take to elect its first leader once every member runs: about 2.3 s
/// from the first start on an idle machine here (three members, default timings); 60 s leaves
/// room for a busy one.
pub(crate) const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one status or health question may take before the member counts as not answering.
/// A live member answers in milliseconds; a second also covers a busy host's budget.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The etcd binary (Debian's `etcd-server`).
pub(crate) fn etcd_bin() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    anyhow::bail!(
        "etcd not found: run scripts/setup.sh (Debian/Ubuntu: apt-get install etcd-server)"
    )
}

/// One member of the cluster.
#[derive(Debug, Clone)]
pub struct EtcdMember {
    /// Its name in the cluster (the host's name).
    pub name: String,
    /// Holds `data/`, the log and the PID file.
    pub dir: PathBuf,
    /// Its loopback address.
    pub address: String,
    /// Its client port ([`CLIENT_PORT`] in the lab; tests pick free ones).
    pub client_port: u16,
    /// Its peer port ([`PEER_PORT`] in the lab).
    pub peer_port: u16,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

/// What one member says of the cluster (`POST /v3/maintenance/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its own id.
    pub member_id: u64,
    /// The id of the member it takes for the leader (0: none known).
    pub leader: u64,
    /// The Raft term it is in: one more each time an election starts.
    pub raft_term: u64,
    /// The index of the last entry in its Raft log.
    pub raft_index: u64,
}

impl MemberStatus {
    /// Whether this member is the leader.
    pub fn leads(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }
}

impl EtcdMember {
    /// The member's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("etcd.pid.json")
    }

    /// Its client URL: what Patroni and `etcdctl --endpoints` are given.
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.address, self.client_port)
    }

    /// Its peer URL, as the other members know it.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.address, self.peer_port)
    }

    /// The running member's record, if running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts the member (idempotent) and waits until its client port listens. `cluster` is every
    /// member's `name=peer URL`, the same on every member.
    async fn start(&self, cluster: &str, token: &str) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        process::ensure_free("an etcd member", &self.address, self.client_port)?;
        process::ensure_free("an etcd member's peer port", &self.address, self.peer_port)?;
        fs::create_dir_all(&self.dir)?;
        let data_dir = self.dir.join("data");
        // `new` forms the cluster; a member that already has data ignores the initial flags and
        // rejoins with what it recorded.
        let args: Vec<String> = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={}", self.client_url()),
            format!("--advertise-client-urls={}", self.client_url()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token={token}"),
            // The structured logger; the default one is deprecated in 3.4 and says so at start.
            "--logger=zap".into(),
        ];
        let (program, args, user) =
            crate::budget::wrap(self.cpu_group.as_deref(), None, &etcd_bin()?, args);
        let service = Spawn {
            program: &program,
            args,
            env: vec![],
            log: self.log_path(),
            user,
            cwd: Some(self.dir.clone()),
        };
        let (address, port) = (self.address.clone(), self.client_port);
        process::launch("etcd", service, &self.pid_path(), START_TIMEOUT, || {
            let (address, port) = (address.clone(), port);
            async move {
                tokio::net::TcpStream::connect((address.as_str(), port))
                    .await
                    .is_ok()
            }
        })
        .await
    }

    /// Whether the member is healthy now: it answers and knows a leader (`GET /health`).
    pub async fn healthy(&self) -> bool {
        #[derive(Deserialize)]
        struct Health {
            health: String,
        }
        let Ok(client) = crate::lab::http_client() else {
            return false;
        };
        let request = client
            .get(format!("{}/health", self.client_url()))
            .timeout(ASK_TIMEOUT)
            .send();
        match request.await {
            Ok(response) => response
                .json::<Health>()
                .await
                .is_ok_and(|h| h.health == "true"),
            Err(_) => false,
        }
    }

    /// What the member says of itself and its leader, or `None` if it does not answer.
    pub async fn status(&self) -> Option<MemberStatus> {
        // The JSON gateway writes 64-bit numbers as strings.
        #[derive(Deserialize)]
        struct Header {
            member_id: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Status {
            header: Header,
            #[serde(default)]
            leader: Option<String>,
            raft_term: String,
            raft_index: String,
        }
        let client = crate::lab::http_client().ok()?;
        let response = client
            .post(format!("{}/v3/maintenance/status", self.client_url()))
            .body("{}")
            .timeout(ASK_TIMEOUT)
            .send()
            .await
            .ok()?;
        let status: Status = response.error_for_status().ok()?.json().await.ok()?;
        Some(MemberStatus {
            member_id: status.header.member_id.parse().ok()?,
            leader: status.leader.map_or(Some(0), |l| l.parse().ok())?,
            raft_term: status.raft_term.parse().ok()?,
            raft_index: status.raft_index.parse().ok()?,
        })
    }

    /// Stops the member with `signal`: SIGTERM to leave as an operator would, SIGKILL to crash it
    /// (a drill). Waits until it is gone.
    pub fn stop_with(&self, signal: Signal) -> anyhow::Result<()> {
        // Stopping the last member of a cluster took 5 to 10 s here (it waits for peers that are
        // gone); 30 s only trips on a hung one.
        process::stop_recorded(&self.pid_path(), signal, Duration::from_secs(30))
    }

    /// Stops the member (SIGTERM).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGTERM)
    }
}

/// The cluster: its members and the token that keeps it apart from any other.
#[derive(Debug, Clone)]
pub struct EtcdCluster {
    /// The members, in host order.
    pub members: Vec<EtcdMember>,
    /// `--initial-cluster-token`: members of another cluster with the same peer URLs (an old
    /// state folder) cannot join this one by mistake.
    pub token: String,
}

impl EtcdCluster {
    /// `name=peer URL` of every member, comma-separated: the same `--initial-cluster` for all.
    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members' client URLs, comma-separated, as Patroni's `etcd3.hosts` and etcdctl's
    /// `--endpoints` take them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}:{}", m.address, m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every member that does not run, then waits until the cluster has a leader that
    /// every running member agrees on.
    pub async fn start(&self) -> anyhow::Result<Leadership> {
        // All members first: a member of a new cluster waits for a majority before anything.
        for member in 0..self.members.len() {
            self.start_member(member).await?;
        }
        self.wait_for_leader(|_| true, FORM_TIMEOUT).await
    }

    /// Starts member `member` (idempotent) and waits until its client port listens; it serves
    /// only once a majority of the members runs.
    pub async fn start_member(&self, member: usize) -> anyhow::Result<()> {
        let m = &self.members[member];
        m.start(&self.initial_cluster(), &self.token)
            .await
            .with_context(|| format!("starting etcd member {}", m.name))?;
        Ok(())
    }

    /// Restarts one member (after a drill stopped it) and waits until it is healthy again.
    pub async fn restart(&self, member: usize) -> anyhow::Result<()> {
        let m = &self.members[member];
        m.start(&self.initial_cluster(), &self.token).await?;
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        while !m.healthy().await {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "etcd member {} did not rejoin within {FORM_TIMEOUT:?}; its log ends:\n{}",
                    m.name,
                    process::tail(&m.log_path(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Who leads now: the leader every member that answers names, if they agree on one and it
    /// answers too; `None` while there is no leader or while they disagree (an election).
    pub async fn leader(&self) -> Option<Leadership> {
        let mut seen: Option<u64> = None;
        let mut leader = None;
        for (i, member) in self.members.iter().enumerate() {
            let Some(status) = member.status().await else {
                continue;
            };
            if status.leader == 0 || seen.is_some_and(|l| l != status.leader) {
                return None;
            }
            seen = Some(status.leader);
            if status.leads() {
                leader = Some(Leadership {
                    member: i,
                    term: status.raft_term,
                });
            }
        }
        leader
    }

    /// The value at `key`, read through the first member that answers (a linearizable read,
    /// which that member checks with the leader): `Some(None)` if there is no such key, `None` if
    /// no member answered with a quorum behind it.
    pub async fn get(&self, key: &str) -> Option<Option<String>> {
        use base64::{engine::general_purpose::STANDARD, Engine as _};
        #[derive(Deserialize)]
        struct Kv {
            value: String,
        }
        #[derive(Deserialize)]
        struct Range {
            #[serde(default)]
            kvs: Vec<Kv>,
        }
        let client = crate::lab::http_client().ok()?;
        let body = serde_json::json!({ "key": STANDARD.encode(key) }).to_string();
        for member in &self.members {
            let Ok(response) = client
                .post(format!("{}/v3/kv/range", member.client_url()))
                .body(body.clone())
                .timeout(ASK_TIMEOUT)
                .send()
                .await
            else {
                continue;
            };
            let Ok(range) = response.error_for_status().map(|r| r.json::<Range>()) else {
                continue;
            };
            let Ok(range) = range.await else { continue };
            return Some(match range.kvs.first() {
                Some(kv) => Some(String::from_utf8_lossy(&STANDARD.decode(&kv.value).ok()?).into()),
                None => None,
            });
        }
        None
    }

    /// Waits until the members agree on a leader that `accept` takes (a new term after a drill,
    /// say); fails after `timeout` with every member's log tail.
    pub async fn wait_for_leader(
        &self,
        accept: impl Fn(&Leadership) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Leadership> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leadership) = self.leader().await {
                if accept(&leadership) {
                    return Ok(leadership);
                }
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}:\n{}", m.name, process::tail(&m.log_path(), 10)))
                    .collect();
                anyhow::bail!(
                    "etcd: no agreed leader within {timeout:?}; the logs end:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every member (SIGTERM).
    pub fn stop(&self) -> anyhow::Result<()> {
        for member in self.members.iter().rev() {
            member.stop()?;
        }
        Ok(())
    }
}

/// A three-member cluster for one test, on free ports of 127.0.0.1, in a temporary folder; its
/// members are killed when it is dropped.
pub struct TestEtcd {
    /// The cluster.
    pub cluster: EtcdCluster,
    _dir: tempfile::TempDir,
}

impl TestEtcd {
    /// Three members, not started.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("archlab-etcd-test")
            .tempdir()
            .context("creating a folder for the test etcd")?;
        let members = (1..=3)
            .map(|n| {
                Ok(EtcdMember {
                    name: format!("etcd-{n}"),
                    dir: dir.path().join(format!("etcd-{n}")),
                    address: "127.0.0.1".into(),
                    client_port: crate::postgres::free_port()?,
                    peer_port: crate::postgres::free_port()?,
                    cpu_group: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            cluster: EtcdCluster {
                members,
                token: format!("archlab-test-{}", std::process::id()),
            },
            _dir: dir,
        })
    }

    /// Three members, started, with a leader.
    pub async fn start() -> anyhow::Result<Self> {
        let test = Self::new()?;
        test.cluster.start().await?;
        Ok(test)
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        for member in &self.cluster.members {
            let _ = member.stop_with(Signal::SIGKILL);
        }
    }
}
