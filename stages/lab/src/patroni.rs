//! Stage 8's database hosts: PostgreSQL run by Patroni, which decides failover through the
//! consensus store ([`crate::etcd`]).
//!
//! In stage 5 the lab itself made one server the primary and the others its replicas, and that
//! was that: when the primary died, writes stopped until a person promoted a replica. Here each
//! database host runs Patroni, and Patroni runs PostgreSQL. The primary is whoever holds the
//! *leader key* in the consensus store; the key has a time to live ([`LEADER_TTL_SECS`]) and the
//! leader's Patroni renews it every cycle. If the primary host dies, the key expires, the replicas
//! race to take it (the store lets exactly one win: a compare-and-set decided by consensus), and
//! the winner promotes its PostgreSQL. The others follow the new primary; the old one, when it
//! comes back, rewinds its data to the new history (`pg_rewind`) and follows too.
//!
//! Each host serves two ports on its own address:
//!
//! ```text
//! 5432  PostgreSQL   the app's connections, as in every stage
//! 8008  Patroni      REST API: GET /primary answers 200 on the leader only, GET /replica 200 on
//!                    a running replica; POST /switchover moves the leadership on purpose
//! ```
//!
//! Patroni runs as the `postgres` OS user (it starts PostgreSQL, which refuses root) and inside
//! the host's CPU budget with its server.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::{
    consensus::{ConsensusStore, StoreKind},
    postgres::{bin_dir, hand_over, host_user, PostgresServer, BASE_SETTINGS},
    process::{self, PidRecord, Spawn},
};

/// Patroni's standard REST port, on every database host's own address.
pub const REST_PORT: u16 = 8008;

/// How much lower PostgreSQL's scheduling priority is than its Patroni's on a database host
/// (`nice`): at 10, a runnable PostgreSQL process weighs 110 against Patroni's 1024 inside the
/// host's one CPU budget, so Patroni runs first whenever it has work. Patroni is the host's
/// fence: it renews the leader key, demotes a primary that lost it, and answers the app's
/// `GET /primary`. Drills showed a promoted 0.2-core host whose PostgreSQL took the whole budget
/// starve its Patroni for seconds (REST answers past the app's 1 s bound, "loop time exceeded"),
/// and the app then refused writes to a healthy primary. Patroni uses little CPU, so PostgreSQL
/// loses almost nothing by it; the same thing as giving `patroni.service` a higher CPU weight
/// than `postgresql.service` on a real machine.
pub const SERVER_NICENESS: u8 = 10;

/// The file in a node's PostgreSQL program folder that holds what `postgres --describe-config`
/// prints (every setting the server knows), asked once when the folder is written. Patroni 3.1
/// asks the server that question once for every parameter each time it rewrites
/// `postgresql.conf` (`available_gucs`, new in 3.1.0 with patroni#2671, is not cached;
/// patroni#2967 caches it from 3.3.0, which the lab cannot run: [`LEADER_TTL_SECS`]). It
/// rewrites the file to change `synchronous_standby_names`, which a synchronous primary does
/// just before it promotes and again when it names its synchronous replica: on a 0.2-core host
/// busy with the app's failing writes, those 21 `postgres` starts (one per parameter the lab
/// sets) took 12.8 s before a strict promotion, long enough for the new leader's key to expire,
/// and 6.8 s after it (stages/08-consensus/README.md, "21 `postgres` starts"). A replica
/// rewrites the file too when it follows a new primary. The same binary always gives the same
/// answer, so the wrapper prints the saved one.
pub const DESCRIBE_CONFIG_FILE: &str = "describe-config.txt";
/// Where every Patroni cluster of the lab keeps its keys in the consensus store (`namespace`),
/// each under its scope: `/archlab/<scope>/leader` names the leader.
pub const NAMESPACE: &str = "/archlab/";
/// How long the leader key lives unless its holder renews it: how long a dead primary keeps
/// everyone else from taking over. Ten seconds is the issue's target and Patroni's own
/// recommendation is 30; lower makes a busy primary that misses a renewal lose its leadership.
/// Patroni 3.2 and later raise any TTL below 20 s to 20 s, which is why the lab runs 3.1
/// ([`crate::installed`]).
pub const LEADER_TTL_SECS: u32 = 10;
/// Seconds between two of Patroni's cycles (renew the key, check the server, follow the leader).
/// Patroni requires `loop_wait + 2 * retry_timeout <= ttl`: 2 + 2 * 4 = 10.
const LOOP_WAIT_SECS: u32 = 2;
/// How long Patroni retries the consensus store and PostgreSQL before it gives up on a cycle
/// (and a leader that cannot reach the store demotes itself).
const RETRY_TIMEOUT_SECS: u32 = 4;
/// How long a replica's PostgreSQL waits before it looks for WAL again when none is to be had
/// (`wal_retrieve_retry_interval`; PostgreSQL's default is 5 s). It is on a crash's path: after
/// its primary dies, a replica retries for WAL at this interval, and a promote request that
/// comes at the wrong moment of that cycle is acted on only when the wait ends. In one of five
/// crash trials at 50 req/s the promoted server logged "received promote request" and then
/// "redo done" 5.05 s later (in the four others within 0.1 s), and the first write came 15.9 s
/// after the kill instead of 9.9 to 11.7 s (stages/08-consensus/README.md). Which state of the
/// recovery loop makes it wait out the interval is not established; the interval bounds the
/// wait. Half a second keeps it well inside the 12 s target, and costs a replica with no primary
/// two connection attempts a second, on loopback.
const WAL_RETRIEVE_RETRY_INTERVAL: &str = "500ms";
/// A replica more than this many bytes of WAL behind the primary may not be promoted: it would
/// throw away that much acknowledged history. One megabyte: a few seconds of the write-heavy mix.
const MAXIMUM_LAG_ON_FAILOVER_BYTES: u64 = 1_048_576;
/// Patroni's REST API listens within seconds of starting (it loads Python first); 60 s only trips
/// on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long bootstrapping (initdb on the first node) or joining (a base backup on the others)
/// may take: a few seconds on an idle machine here; two minutes leaves room for a busy one.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long Patroni may take to stop its PostgreSQL (a fast shutdown) and itself.
const STOP_PATIENCE: Duration = Duration::from_secs(60);
/// How long Patroni may take to answer a switchover, which it answers once done: 1.5 to 1.8 s on an
/// idle machine here (stop the primary cleanly, promote the candidate); a minute for a busy one.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one REST question may take before the node counts as not answering.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// How the primary waits for its replicas before it acknowledges a commit: the CAP choice of
/// stage 8, a setting of the running cluster ([`PatroniCluster::set_replication`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Replication {
    /// Commits are acknowledged at once; a replica may be behind when the primary dies, and
    /// what it had not received is lost with the failover.
    Async,
    /// One replica is synchronous: a commit waits until it has the WAL. Patroni only promotes that
    /// replica. If it goes away, the primary carries on alone (asynchronously) rather than stop.
    Sync,
    /// As `Sync`, but with no synchronous replica left the primary stops acknowledging commits:
    /// nothing acknowledged can be lost, and writes are unavailable instead.
    SyncStrict,
}

impl Replication {
    /// `synchronous_mode` and `synchronous_mode_strict`, as Patroni's settings.
    fn settings(self) -> (bool, bool) {
        match self {
            Replication::Async => (false, false),
            Replication::Sync => (true, false),
            Replication::SyncStrict => (true, true),
        }
    }
}

/// One database host: Patroni and the PostgreSQL server it runs.
#[derive(Debug, Clone)]
pub struct PatroniNode {
    /// Its name in the cluster (the host's name).
    pub name: String,
    /// The server Patroni runs: its folder also holds `patroni.yml`, Patroni's log and PID file.
    pub server: PostgresServer,
    /// Patroni's REST port ([`REST_PORT`] in the lab; tests pick free ones).
    pub rest_port: u16,
}

/// What a node's Patroni says of itself (`GET /patroni`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeState {
    /// `primary`, `replica`, `standby_leader` or `uninitialized`.
    pub role: String,
    /// `running`, `starting`, `stopped`, `crashed`, ...
    pub state: String,
    /// The PostgreSQL timeline: one more after each promotion.
    #[serde(default)]
    pub timeline: Option<u64>,
}

impl PatroniNode {
    /// Patroni's log.
    pub fn log_path(&self) -> PathBuf {
        self.server.dir.join("patroni.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.server.dir.join("patroni.pid.json")
    }

    fn config_path(&self) -> PathBuf {
        self.server.dir.join("patroni.yml")
    }

    /// The folder Patroni takes PostgreSQL's programs from (`bin_dir`), made by
    /// [`PatroniNode::write_server_bin_dir`].
    fn server_bin_dir(&self) -> PathBuf {
        self.server.dir.join("bin")
    }

    /// Fills [`PatroniNode::server_bin_dir`]: a link to each installed PostgreSQL program, except
    /// `postgres`, which is a short script starting the real one at [`SERVER_NICENESS`] (with
    /// `exec`, so the server keeps the script's PID, as Patroni expects) and answering
    /// `postgres --describe-config` from [`DESCRIBE_CONFIG_FILE`], that question's answer saved
    /// here once. Written at every start.
    fn write_server_bin_dir(&self) -> anyhow::Result<()> {
        let (installed, dir) = (bin_dir()?, self.server_bin_dir());
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for entry in fs::read_dir(&installed)? {
            let program = entry?.path();
            let Some(name) = program.file_name() else {
                continue;
            };
            if name != "postgres" {
                std::os::unix::fs::symlink(&program, dir.join(name))?;
            }
        }
        let postgres = installed.join("postgres");
        let described = Command::new(&postgres)
            .arg("--describe-config")
            .output()
            .with_context(|| format!("running {} --describe-config", postgres.display()))?;
        if !described.status.success() {
            bail!(
                "{} --describe-config failed: {}",
                postgres.display(),
                String::from_utf8_lossy(&described.stderr)
            );
        }
        let answer = dir.join(DESCRIBE_CONFIG_FILE);
        fs::write(&answer, &described.stdout)
            .with_context(|| format!("writing {}", answer.display()))?;
        let script = dir.join("postgres");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 # Written by archlab (stages/lab/src/patroni.rs: DESCRIBE_CONFIG_FILE, SERVER_NICENESS).\n\
                 if [ \"$*\" = --describe-config ]; then exec cat '{answer}'; fi\n\
                 exec /usr/bin/nice -n {SERVER_NICENESS} {postgres} \"$@\"\n",
                answer = answer.display(),
                postgres = postgres.display()
            ),
        )?;
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(())
    }

    /// Patroni's REST API.
    pub fn rest_url(&self) -> String {
        format!("http://{}:{}", self.server.address, self.rest_port)
    }

    /// The running Patroni's record, if running.
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    fn config(&self, cluster: &PatroniCluster) -> anyhow::Result<String> {
        let s = &self.server;
        let dir = s.dir.display();
        let (synchronous_mode, synchronous_mode_strict) = cluster.replication.settings();
        // Patroni's section for the store: `etcd3` speaks etcd's v3 API, `zookeeper` through
        // the kazoo library.
        let store_section = match cluster.store.kind {
            StoreKind::Etcd => "etcd3",
            StoreKind::ZooKeeper => "zookeeper",
        };
        let endpoints = &cluster.store.endpoints;
        let parameters: String = BASE_SETTINGS
            .iter()
            .map(|(k, v)| format!("    {k}: '{v}'\n"))
            .collect();
        let password = &cluster.password;
        Ok(format!(
            "# Written by archlab (stages/lab/src/patroni.rs); rewritten at every start.
scope: {scope}
namespace: {NAMESPACE}
name: {name}
log:
  level: INFO
restapi:
  listen: {address}:{rest_port}
  connect_address: {address}:{rest_port}
{store_section}:
  hosts: {endpoints}
bootstrap:
  # Written to the consensus store once, when the cluster is made; PATCH /config changes them.
  dcs:
    ttl: {LEADER_TTL_SECS}
    loop_wait: {LOOP_WAIT_SECS}
    retry_timeout: {RETRY_TIMEOUT_SECS}
    maximum_lag_on_failover: {MAXIMUM_LAG_ON_FAILOVER_BYTES}
    synchronous_mode: {synchronous_mode}
    synchronous_mode_strict: {synchronous_mode_strict}
    postgresql:
      # A crashed primary that comes back rewinds to the new primary's history and follows it.
      use_pg_rewind: true
      use_slots: true
      parameters:
        # pg_rewind needs to know which pages changed since the histories split.
        wal_log_hints: 'on'
  initdb:
    - encoding: UTF8
    - locale: C
    # Trust on loopback, as every lab server (stages/lab/src/postgres.rs says why).
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.0/8 trust
    - host replication all 127.0.0.0/8 trust
postgresql:
  listen: {address}:{port}
  connect_address: {address}:{port}
  data_dir: {data}
  # PostgreSQL's own programs, but `postgres` started at a lower priority (SERVER_NICENESS).
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  authentication:
    # Patroni requires passwords (initdb is given one); trust means they are never asked for.
    superuser: {{username: postgres, password: '{password}'}}
    replication: {{username: replicator, password: '{password}'}}
    rewind: {{username: postgres, password: '{password}'}}
  parameters:
    unix_socket_directories: {dir}/socket
    wal_retrieve_retry_interval: '{WAL_RETRIEVE_RETRY_INTERVAL}'
    # One line per new session, naming its application: after one planned switchover the new
    # primary refused connections for 19 s (\"too many clients already\") and the kept logs could
    # not tell whose they were. The app opens few sessions at rest, so the lines are few.
    log_connections: 'on'
{parameters}",
            scope = cluster.scope,
            name = self.name,
            address = s.address,
            rest_port = self.rest_port,
            port = s.port,
            data = s.data_dir().display(),
            bin = self.server_bin_dir().display(),
        ))
    }

    /// Starts Patroni (idempotent) and waits until its REST API answers. Whether its server is
    /// the primary, a replica, or still copying is the cluster's question ([`PatroniCluster`]).
    async fn start(&self, cluster: &PatroniCluster) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        process::ensure_free("Patroni", &self.server.address, self.rest_port)?;
        process::ensure_free("PostgreSQL", &self.server.address, self.server.port)?;
        let user = host_user(&self.name)?;
        self.server.prepare_dirs(user)?;
        hand_over(&self.server.dir, &self.server.data_dir(), user)?;
        self.write_server_bin_dir()?;
        fs::write(self.config_path(), self.config(cluster)?)
            .with_context(|| format!("writing {}", self.config_path().display()))?;
        // PyPI's release, not Debian's 3.0.2: `crate::installed` says why.
        let patroni = crate::installed::PATRONI.program()?;
        let args = vec![self.config_path().display().to_string()];
        let (program, args, user) =
            crate::budget::wrap(self.server.cpu_group.as_deref(), user, &patroni, args);
        let service = Spawn {
            program: &program,
            args,
            env: vec![],
            log: self.log_path(),
            user,
            cwd: Some(self.server.dir.clone()),
        };
        let (address, port) = (self.server.address.clone(), self.rest_port);
        process::launch("patroni", service, &self.pid_path(), START_TIMEOUT, || {
            let (address, port) = (address.clone(), port);
            async move {
                tokio::net::TcpStream::connect((address.as_str(), port))
                    .await
                    .is_ok()
            }
        })
        .await
    }

    /// The status `GET path` answers with on the REST API, or `None` if it does not answer.
    async fn rest_status(&self, path: &str) -> Option<u16> {
        self.rest_status_within(path, ASK_TIMEOUT).await
    }

    /// [`PatroniNode::rest_status`], waiting at most `timeout` (a frozen host never answers).
    async fn rest_status_within(&self, path: &str, timeout: Duration) -> Option<u16> {
        let client = crate::lab::http_client().ok()?;
        let response = client
            .get(format!("{}{path}", self.rest_url()))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    /// Whether `GET /primary` answers 200 within `timeout`: the app's own question, with its
    /// bound (a Patroni slower than that is not counted as the leader that time).
    pub async fn is_primary_within(&self, timeout: Duration) -> bool {
        self.rest_status_within("/primary", timeout).await == Some(200)
    }

    /// Whether this node is the primary now: `GET /primary` answers 200 (Patroni's word: it holds
    /// the leader key and its server runs as a primary). This is what the app and the gateway ask.
    pub async fn is_primary(&self) -> bool {
        self.rest_status("/primary").await == Some(200)
    }

    /// Whether this node is a running replica now (`GET /replica` answers 200).
    pub async fn is_replica(&self) -> bool {
        self.rest_status("/replica").await == Some(200)
    }

    /// What Patroni says of its node, or `None` if it does not answer.
    pub async fn state(&self) -> Option<NodeState> {
        let client = crate::lab::http_client().ok()?;
        let response = client
            .get(format!("{}/patroni", self.rest_url()))
            .timeout(ASK_TIMEOUT)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Whether this node's Patroni lists `name` as a running replica in its view of the cluster
    /// (`GET /cluster`, which it reads from the consensus store).
    async fn sees_replica(&self, name: &str) -> bool {
        #[derive(Deserialize)]
        struct Member {
            name: String,
            role: String,
            state: String,
        }
        #[derive(Deserialize)]
        struct Cluster {
            members: Vec<Member>,
        }
        let Ok(client) = crate::lab::http_client() else {
            return false;
        };
        let request = client
            .get(format!("{}/cluster", self.rest_url()))
            .timeout(ASK_TIMEOUT)
            .send();
        let Ok(response) = request.await else {
            return false;
        };
        let Ok(cluster) = response.json::<Cluster>().await else {
            return false;
        };
        cluster.members.iter().any(|m| {
            m.name == name
                && matches!(m.role.as_str(), "replica" | "sync_standby")
                && matches!(m.state.as_str(), "running" | "streaming")
        })
    }

    /// Crashes the host, for a drill: Patroni and its PostgreSQL are killed (SIGKILL) at once, with
    /// no chance to release the leader key or to shut down cleanly; the key expires after
    /// [`LEADER_TTL_SECS`].
    pub fn crash(&self) -> anyhow::Result<()> {
        let roots = self.signal_host(Signal::SIGKILL)?;
        for record in roots {
            record.stop(Signal::SIGKILL, STOP_PATIENCE)?;
        }
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }

    /// Sends `signal` to everything on the host: Patroni, its PostgreSQL server and the server's
    /// backends, taken in one snapshot. SIGSTOP freezes the host (alive, holding its sockets,
    /// answering nothing: a primary cut off), SIGCONT thaws it. Returns Patroni's and the
    /// server's records.
    pub fn signal_host(&self, signal: Signal) -> anyhow::Result<Vec<PidRecord>> {
        let roots = self.host_roots()?;
        let pids: Vec<i32> = roots.iter().map(|r| r.pid).collect();
        for pid in crate::budget::process_tree(&pids) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        Ok(roots)
    }

    /// The roots of everything running on the host: Patroni and its PostgreSQL server, whichever
    /// run. Patroni starts PostgreSQL detached (the server is not its child), so the two are
    /// found apart: Patroni by its PID file, the server by its own `postmaster.pid`. What is on
    /// the host is these two and their descendants (signalled by [`Self::signal_host`], sampled
    /// for CPU by `Lab::host_pids`).
    pub fn host_roots(&self) -> anyhow::Result<Vec<PidRecord>> {
        Ok(self
            .running()?
            .into_iter()
            .chain(self.postmaster()?)
            .collect())
    }

    /// The PostgreSQL server Patroni started, if it runs: the PID in the first line of its
    /// `postmaster.pid`, taken only if that process is a `postgres` serving this data directory
    /// (a stale file may name a PID reused since).
    pub fn postmaster(&self) -> anyhow::Result<Option<PidRecord>> {
        let Some(pid) = self.server.lock_file_pid() else {
            return Ok(None);
        };
        let data = self.server.data_dir();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("postgres") || !cmdline.contains(&*data.to_string_lossy()) {
            return Ok(None);
        }
        Ok(Some(PidRecord::of(pid)?))
    }

    /// Stops the host as an operator would: SIGTERM to Patroni, which shuts PostgreSQL down and
    /// gives up the leader key if it holds it (so a replica takes over at once, not after the TTL).
    pub fn stop(&self) -> anyhow::Result<()> {
        process::stop_recorded(&self.pid_path(), Signal::SIGTERM, STOP_PATIENCE)?;
        // Patroni stops its server before it exits; one left running (Patroni itself killed
        // earlier) gets PostgreSQL's own fast shutdown.
        if let Some(postmaster) = self.postmaster()? {
            postmaster.stop(Signal::SIGINT, STOP_PATIENCE)?;
        }
        Ok(())
    }
}

/// Whether `primary` streams WAL to `replica` now: its `pg_stat_replication` has a row in state
/// `streaming` whose `application_name` is the replica's node name (Patroni sets it so).
pub async fn streams_to(primary: &PatroniNode, replica: &PatroniNode) -> bool {
    use sqlx::Connection;
    let options = primary.server.connect_options("postgres", "postgres");
    let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await else {
        return false;
    };
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_replication \
         WHERE application_name = $1 AND state = 'streaming')",
    )
    .bind(&replica.name)
    .fetch_one(&mut conn)
    .await
    .unwrap_or(false)
}

/// Whether the primary's PostgreSQL has a synchronous standby now (`pg_stat_replication` shows
/// one with `sync_state = 'sync'`): commits wait for it.
pub async fn has_sync_standby(primary: &PatroniNode) -> bool {
    use sqlx::Connection;
    let options = primary.server.connect_options("postgres", "postgres");
    let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await else {
        return false;
    };
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_replication \
         WHERE sync_state = 'sync' AND state = 'streaming')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap_or(false)
}

/// One database host of a stage's Patroni cluster, as the lab starts, checks and stops it.
#[derive(Debug, Clone)]
pub struct PatroniMember {
    /// The whole cluster (a node's configuration names the store and the cluster's scope).
    pub cluster: PatroniCluster,
    /// Its position in the cluster's nodes.
    pub node: usize,
}

impl PatroniMember {
    /// Its node.
    pub fn node(&self) -> &PatroniNode {
        &self.cluster.nodes[self.node]
    }
}

/// The database hosts of stage 8 as one Patroni cluster.
#[derive(Debug, Clone)]
pub struct PatroniCluster {
    /// The cluster's name: its keys in the consensus store live under it.
    pub scope: String,
    /// Its hosts, in order: the first one bootstraps the cluster and starts as the primary.
    pub nodes: Vec<PatroniNode>,
    /// Where the leader key lives.
    pub store: ConsensusStore,
    /// How the primary waits for replicas, when the cluster is made.
    pub replication: Replication,
    /// The database roles' password (see `config`: required by Patroni, never checked).
    pub password: String,
}

impl PatroniCluster {
    /// The key in the consensus store whose value names the leader: Patroni writes it with the
    /// TTL, renews it every loop while it leads, and a replica takes it once it has expired.
    pub fn leader_key(&self) -> String {
        format!("{NAMESPACE}{}/leader", self.scope)
    }

    /// Starts every node: the first one bootstraps a new cluster and becomes its primary, the
    /// others join as replicas by copying it (a cluster made before takes up where it was: each
    /// node rejoins in its old role). Returns once every node runs as the primary or a replica.
    pub async fn start(&self) -> anyhow::Result<()> {
        let Some((first, rest)) = self.nodes.split_first() else {
            anyhow::bail!("a Patroni cluster needs at least one node");
        };
        // The first node alone: with no cluster in the store yet, it is the one to bootstrap.
        first.start(self).await?;
        self.wait_for(first, "running", JOIN_TIMEOUT, |n| {
            Box::pin(async move { n.is_primary().await || n.is_replica().await })
        })
        .await?;
        // The others together: each copies the primary, which a small host takes a while to do.
        for node in rest {
            node.start(self).await?;
        }
        for node in rest {
            self.wait_for(node, "running", JOIN_TIMEOUT, |n| {
                Box::pin(async move { n.is_primary().await || n.is_replica().await })
            })
            .await?;
        }
        Ok(())
    }

    /// Starts node `node` (idempotent) and waits until it runs as the primary or a replica. A
    /// lab starts its database hosts one by one, in order, so the first bootstraps a new cluster
    /// as [`PatroniCluster::start`] has it.
    pub async fn start_node(&self, node: usize) -> anyhow::Result<()> {
        let n = &self.nodes[node];
        n.start(self).await?;
        self.wait_for(n, "running", JOIN_TIMEOUT, |n| {
            Box::pin(async move { n.is_primary().await || n.is_replica().await })
        })
        .await
    }

    /// Restarts one node (after a drill crashed or stopped it); returns once it is back in the
    /// cluster: the primary again, or a replica the primary streams to.
    ///
    /// `GET /replica` alone is not enough: a crashed primary first starts as a replica (200),
    /// then Patroni finds that its history split from the new primary's, stops it and rewinds it
    /// (`pg_rewind`), and starts it again. Only the primary's `pg_stat_replication` says it follows.
    pub async fn restart(&self, node: usize) -> anyhow::Result<()> {
        let n = &self.nodes[node];
        n.start(self).await?;
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        loop {
            if n.is_primary().await {
                return Ok(());
            }
            if let Some(primary) = self.primary().await {
                if n.is_replica().await && streams_to(&self.nodes[primary], n).await {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not rejoin within {JOIN_TIMEOUT:?}; Patroni's log ends:\n{}",
                    n.name,
                    process::tail(&n.log_path(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `check` holds for `node`; fails after `timeout` with its Patroni log's tail.
    async fn wait_for(
        &self,
        node: &PatroniNode,
        what: &str,
        timeout: Duration,
        check: impl for<'a> Fn(&'a PatroniNode) -> crate::server::BoxFuture<'a, bool>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(node).await {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not become {what} within {timeout:?}; Patroni's log ends:\n{}",
                    node.name,
                    process::tail(&node.log_path(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The node that is the primary now, if exactly one says so.
    pub async fn primary(&self) -> Option<usize> {
        match self.primaries(ASK_TIMEOUT).await[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Every node whose `GET /primary` answers 200 within `timeout`, asked all at once (so a
    /// frozen host delays the answer by `timeout`, not by `timeout` per node).
    pub async fn primaries(&self, timeout: Duration) -> Vec<usize> {
        let asks = self.nodes.iter().map(|n| n.is_primary_within(timeout));
        futures::future::join_all(asks)
            .await
            .into_iter()
            .enumerate()
            .filter_map(|(i, is)| is.then_some(i))
            .collect()
    }

    /// Waits until exactly one node is the primary (a cluster just started: the bootstrap, or
    /// an election among nodes back from a stop), at most `JOIN_TIMEOUT`; returns it.
    pub async fn wait_for_primary(&self) -> anyhow::Result<usize> {
        self.wait_for_new_primary(usize::MAX, JOIN_TIMEOUT).await
    }

    /// Waits until some node other than `old` is the primary (after a crash or a switchover).
    pub async fn wait_for_new_primary(
        &self,
        old: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.primary().await.filter(|&i| i != old) {
                return Ok(i);
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("{}:\n{}", n.name, process::tail(&n.log_path(), 10)))
                    .collect();
                anyhow::bail!(
                    "no new primary within {timeout:?}; Patroni's logs end:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A planned switchover: the primary `from` hands its leadership to the replica `to`, which
    /// Patroni does by stopping `from`'s server cleanly (so `to` has every commit), promoting
    /// `to`, and making `from` follow it. Returns once Patroni reports it done.
    pub async fn switchover(&self, from: usize, to: usize) -> anyhow::Result<()> {
        // The leader answers from its own view of the cluster, read from the store once a cycle:
        // a replica that has just joined may not be in it yet ("candidate does not exist").
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        while !self.nodes[from].sees_replica(&self.nodes[to].name).await {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} never listed {} as a running replica",
                    self.nodes[from].name,
                    self.nodes[to].name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = crate::lab::http_client()?;
        let body = serde_json::json!({
            "leader": self.nodes[from].name,
            "candidate": self.nodes[to].name,
        });
        let response = client
            .post(format!("{}/switchover", self.nodes[from].rest_url()))
            .json(&body)
            .timeout(SWITCHOVER_TIMEOUT)
            .send()
            .await
            .context("asking Patroni for a switchover")?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("Patroni refused the switchover ({status}): {text}");
        }
        Ok(())
    }

    /// Changes how the primary waits for replicas, on the running cluster (`PATCH /config`: the
    /// setting lives in the consensus store, and every node reads it on its next cycle).
    pub async fn set_replication(&self, replication: Replication) -> anyhow::Result<()> {
        let (synchronous_mode, synchronous_mode_strict) = replication.settings();
        let client = crate::lab::http_client()?;
        let body = serde_json::json!({
            "synchronous_mode": synchronous_mode,
            "synchronous_mode_strict": synchronous_mode_strict,
        });
        // Any running node takes it: the settings live in the store, not in the node.
        let node = &self.nodes[self.primary().await.unwrap_or(0)];
        let response = client
            .patch(format!("{}/config", node.rest_url()))
            .json(&body)
            .send()
            .await
            .context("changing Patroni's settings")?;
        if !response.status().is_success() {
            anyhow::bail!("Patroni refused the settings: {}", response.status());
        }
        Ok(())
    }

    /// [`PatroniCluster::set_replication`], then, for a synchronous mode, waits until the
    /// primary has a synchronous standby (Patroni names one within a loop or two).
    pub async fn use_replication(&self, replication: Replication) -> anyhow::Result<()> {
        self.set_replication(replication).await?;
        if replication == Replication::Async {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        loop {
            if let Some(primary) = self.primary().await {
                if has_sync_standby(&self.nodes[primary]).await {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no synchronous standby within {JOIN_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node, replicas first, so the primary does not fail over to a replica that is
    /// about to stop as well.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let primary = self.primary().await;
        for (i, node) in self.nodes.iter().enumerate() {
            if Some(i) != primary {
                node.stop()?;
            }
        }
        if let Some(i) = primary {
            self.nodes[i].stop()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &std::path::Path, arg: &str) -> Vec<u8> {
        let out = Command::new(program).arg(arg).output().unwrap();
        assert!(out.status.success(), "{} {arg}", program.display());
        out.stdout
    }

    /// The node's `postgres` answers `--describe-config` from the saved file (what Patroni 3.1
    /// asks once per parameter), which holds the installed server's own answer, and hands
    /// anything else to the installed server.
    #[test]
    fn the_server_wrapper_answers_describe_config_from_its_saved_answer() {
        let dir = tempfile::tempdir().unwrap();
        let node = PatroniNode {
            name: "db-1".into(),
            server: PostgresServer::new(dir.path().join("db-1"), "127.0.0.1", 5432),
            rest_port: REST_PORT,
        };
        node.write_server_bin_dir().unwrap();
        let (wrapper, saved) = (
            node.server_bin_dir().join("postgres"),
            node.server_bin_dir().join(DESCRIBE_CONFIG_FILE),
        );
        let installed = bin_dir().unwrap().join("postgres");
        assert_eq!(
            run(&wrapper, "--describe-config"),
            run(&installed, "--describe-config")
        );
        // Answered from the file, not by starting the server program again.
        fs::write(&saved, "only_in_the_saved_answer\tsetting\n").unwrap();
        assert_eq!(
            run(&wrapper, "--describe-config"),
            b"only_in_the_saved_answer\tsetting\n"
        );
        assert_eq!(run(&wrapper, "--version"), run(&installed, "--version"));
    }
}
