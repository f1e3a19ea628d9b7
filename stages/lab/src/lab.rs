//! The lab: brings a stage's hosts up as local processes, reports on them, and stops exactly what
//! it started.
//!
//! Layout of the state folder (default `.archlab/` in the current folder, or `--state-dir`):
//!
//! ```text
//! .archlab/
//!   secret                      JWT signing key shared by the stage's app hosts (0600)
//!   01-monolith/
//!     box/postgres/             data/, socket/, postgres.log, postgres.pid.json
//!     box/app/                  media/, app.log, app.pid.json
//! ```
//!
//! Data survives `down`/`up`; `up --fresh` starts from nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::{
    budget::Controller,
    cache::{CacheServer, CACHE_PORT},
    consensus::{ConsensusCluster, ConsensusMember, StoreKind},
    edge::EdgeServer,
    etcd::{EtcdCluster, EtcdMember},
    files::FileServer,
    gateway::GatewayServer,
    monitor::MonitorServer,
    objects::{ObjectCluster, ObjectNode, ObjectSecrets},
    patroni::{PatroniCluster, PatroniMember, PatroniNode, Replication},
    postgres::PostgresServer,
    process::PidRecord,
    replica::ReplicaServer,
    server::{AppServer, Database, Server},
    stage::{Host, Layout, Role, Stage, APP_PORT, DATABASE_PORT},
    topology::{
        self, EdgesEndpoint, Endpoints, FilesEndpoint, LeaderCandidate, ObjectStoreEndpoint,
    },
    zookeeper::{ZooKeeperEnsemble, ZooKeeperMember, ZooKeeperPorts},
};

/// How long the lab waits for the gateway to take a draining app host out of rotation, or to take
/// a restarted one back. Its health checks need 2 failures (or 1 success) 1 s apart on an idle
/// machine; a busy one is slower, so the wait is a condition with a generous bound, not a window.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Role and database the app uses.
pub const APP_DATABASE: &str = "conduit";

/// How long a replica may take to replay its primary's checkpoint after seeding and make its
/// restartpoint: replay is milliseconds behind here; a minute means the replica is stuck.
const RESTARTPOINT_WAIT: Duration = Duration::from_secs(60);

/// How big a data set `seed` writes.
#[derive(Debug, Clone, Copy)]
pub struct SeedSpec {
    /// Users.
    pub users: usize,
    /// Articles.
    pub articles: usize,
    /// Images.
    pub images: usize,
    /// Generator seed.
    pub seed: u64,
}

impl SeedSpec {
    /// `users=… articles=… images=… seed=…`, as result files record it.
    pub fn describe(&self) -> String {
        format!(
            "users={} articles={} images={} seed={}",
            self.users, self.articles, self.images, self.seed
        )
    }
}

impl Default for SeedSpec {
    /// The default data set of the benchmarks: 1,000 users, 10,000 articles, 2,000 images.
    fn default() -> Self {
        Self {
            users: 1_000,
            articles: 10_000,
            images: 2_000,
            seed: 42,
        }
    }
}

/// The lab, rooted at a state folder.
#[derive(Debug, Clone)]
pub struct Lab {
    state_dir: PathBuf,
    conduit_bin: PathBuf,
    budgets: Controller,
}

/// One service on one host, as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Stage number.
    pub stage: u8,
    /// Host name.
    pub host: String,
    /// `database`, `app`, `files`, `cache` or `gateway`.
    pub role: &'static str,
    /// Host address.
    pub address: String,
    /// Service port.
    pub port: u16,
    /// The host's machine size.
    pub size: &'static str,
    /// The host's CPU budget in cores.
    pub cpu_budget: f64,
    /// Whether the process runs inside its host's CPU group.
    pub cpu_budget_enforced: bool,
    /// PID if running.
    pub pid: Option<i32>,
    /// Running and answering (PostgreSQL accepts a connection; the app's `/readyz` says 200).
    pub healthy: bool,
    /// Its log file.
    pub log: PathBuf,
    /// A replica's lag behind its primary, when both answer.
    pub replica_lag: Option<ReplicaLag>,
    /// Stage 8: whether this host leads its cluster now (the primary among the Patroni hosts,
    /// the store's leader among its members); `None` for a role without a leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leads: Option<bool>,
}

/// A replica's lag, as `status` shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReplicaLag {
    /// WAL bytes the primary has written that the replica has not replayed.
    pub bytes: u64,
    /// Seconds since it replayed its last transaction (meaningful while the primary writes).
    pub seconds_since_last_replay: Option<f64>,
}

impl std::fmt::Display for ReplicaLag {
    /// `lag 0 B` when caught up, else the bytes and the time since its last replay.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lag {} B", self.bytes)?;
        match self.seconds_since_last_replay {
            Some(s) if self.bytes > 0 => write!(f, ", last replay {s:.1} s ago"),
            _ => Ok(()),
        }
    }
}

impl Lab {
    /// A lab keeping its state in `state_dir`, starting the app from `conduit_bin`.
    pub fn new(state_dir: impl Into<PathBuf>, conduit_bin: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            // Absolute: services run with their own working folders.
            state_dir: std::path::absolute(&state_dir).unwrap_or(state_dir),
            conduit_bin: conduit_bin.into(),
            budgets: Controller::detect(),
        }
    }

    /// The `conduit` binary next to the running executable, or `ARCHLAB_CONDUIT_BIN`.
    pub fn default_conduit_bin() -> anyhow::Result<PathBuf> {
        if let Ok(path) = std::env::var("ARCHLAB_CONDUIT_BIN") {
            return Ok(PathBuf::from(path));
        }
        let exe = std::env::current_exe().context("locating archlab")?;
        let dir = exe.parent().context("archlab has no folder")?;
        // Integration tests run from target/<profile>/deps; the binaries are one folder up.
        for candidate in [dir.join("conduit"), dir.join("../conduit")] {
            if candidate.exists() {
                return Ok(candidate);
            }
        }
        bail!(
            "the `conduit` binary is not next to archlab ({}); build the workspace \
             (`cargo build --release`) or set ARCHLAB_CONDUIT_BIN",
            dir.display()
        )
    }

    /// The app built with its fault injection points (`scripts/build-drills.sh` makes it as
    /// `conduit-drills`, next to `conduit`), for the drills that crash the two-phase commit
    /// coordinator. Every other run uses the plain build, which cannot be made to crash.
    pub fn drills_conduit_bin() -> anyhow::Result<PathBuf> {
        let plain = Self::default_conduit_bin()?;
        let drills = plain.with_file_name("conduit-drills");
        if !drills.exists() {
            bail!(
                "{} is missing: this drill needs the app built with its fault injection points \
                 (`bash scripts/build-drills.sh`, or `--release` for a release build)",
                drills.display()
            );
        }
        Ok(drills)
    }

    /// The URLs of the stage's shards (its database hosts, shard 0 first), as the app connects.
    pub fn shard_urls(&self, stage: &Stage) -> Vec<String> {
        stage
            .database_hosts()
            .iter()
            .map(|host| self.database(stage, host).url(APP_DATABASE, APP_DATABASE))
            .collect()
    }

    /// The app binary this lab starts.
    pub fn conduit_bin(&self) -> &Path {
        &self.conduit_bin
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn stage_dir(&self, stage: &Stage) -> PathBuf {
        self.state_dir.join(&stage.folder)
    }

    fn database(&self, stage: &Stage, host: &Host) -> PostgresServer {
        let mut server = PostgresServer::new(
            self.stage_dir(stage).join(&host.name).join("postgres"),
            host.address.clone(),
            DATABASE_PORT,
        );
        server.cpu_group = self.cpu_group_path(host);
        server
    }

    /// The replica on `host`: a copy of the database host it follows ([`Stage::primary_of`]:
    /// the stage's one primary, or in stage 7 its shard's), with its replication slot named
    /// after the host (`replica-1` -> `replica_1`).
    pub fn replica_server(&self, stage: &Stage, host: &Host) -> anyhow::Result<ReplicaServer> {
        let primary = stage
            .primary_of(host)
            .context("a replica needs a database host to follow")?;
        Ok(ReplicaServer {
            server: self.database(stage, host),
            primary: self.database(stage, primary),
            name: host.name.replace('-', "_"),
        })
    }

    fn file_server(&self, stage: &Stage, host: &Host) -> FileServer {
        FileServer {
            dir: self.stage_dir(stage).join(&host.name).join("nginx"),
            address: host.address.clone(),
            write_key: self
                .secret()
                .map(|s| format!("files-{s}"))
                .unwrap_or_default(),
            cpu_group: self.cpu_group_path(host),
        }
    }

    /// The object-store node on `host` (stage 7 on).
    pub fn object_node(&self, stage: &Stage, host: &Host) -> anyhow::Result<ObjectNode> {
        Ok(ObjectNode {
            dir: self.stage_dir(stage).join(&host.name).join("garage"),
            address: host.address.clone(),
            secrets: self.object_secrets()?,
            cpu_group: self.cpu_group_path(host),
        })
    }

    /// The stage's object-store nodes as one cluster.
    pub fn object_cluster(&self, stage: &Stage) -> anyhow::Result<ObjectCluster> {
        Ok(ObjectCluster {
            nodes: stage
                .object_store_hosts()
                .iter()
                .map(|host| self.object_node(stage, host))
                .collect::<anyhow::Result<_>>()?,
            formed_marker: self.stage_dir(stage).join("object-store-formed"),
        })
    }

    /// The stage's consensus hosts as one cluster of the store `up --dcs` chose (stage 8).
    pub fn consensus_cluster(&self, stage: &Stage) -> ConsensusCluster {
        let hosts = stage.consensus_hosts();
        let dir = |host: &Host| {
            self.stage_dir(stage)
                .join(&host.name)
                .join(stage.dcs.as_str())
        };
        match stage.dcs {
            StoreKind::Etcd => ConsensusCluster::Etcd(EtcdCluster {
                members: hosts
                    .iter()
                    .map(|host| EtcdMember {
                        name: host.name.clone(),
                        dir: dir(host),
                        address: host.address.clone(),
                        client_port: crate::etcd::CLIENT_PORT,
                        peer_port: crate::etcd::PEER_PORT,
                        cpu_group: self.cpu_group_path(host),
                    })
                    .collect(),
                // Unique to this stage on this network: a member of another lab's cluster
                // (another `--net`) can never join this one.
                token: format!("archlab-{}-{}", stage.folder, stage.endpoint()),
            }),
            StoreKind::ZooKeeper => ConsensusCluster::ZooKeeper(ZooKeeperEnsemble {
                members: hosts
                    .iter()
                    .zip(1u8..)
                    .map(|(host, id)| ZooKeeperMember {
                        id,
                        name: host.name.clone(),
                        dir: dir(host),
                        address: host.address.clone(),
                        ports: ZooKeeperPorts::STANDARD,
                        cpu_group: self.cpu_group_path(host),
                    })
                    .collect(),
            }),
        }
    }

    /// The stage's Patroni hosts as one cluster, its leader key in the stage's consensus store
    /// (stage 8). Replication is asynchronous when the cluster is made, as stage 5's;
    /// [`PatroniCluster::set_replication`] changes it in the running cluster.
    pub fn patroni_cluster(&self, stage: &Stage) -> anyhow::Result<PatroniCluster> {
        Ok(PatroniCluster {
            scope: "conduit".into(),
            nodes: stage
                .patroni_hosts()
                .iter()
                .map(|host| PatroniNode {
                    name: host.name.clone(),
                    server: self.database(stage, host),
                    rest_port: crate::patroni::REST_PORT,
                })
                .collect(),
            store: self.consensus_cluster(stage).store(),
            replication: Replication::Async,
            password: self.secret_named("patroni-password")?,
        })
    }

    /// The Patroni host `host` of the stage's cluster (stage 8).
    pub fn patroni_member(&self, stage: &Stage, host: &Host) -> anyhow::Result<PatroniMember> {
        Ok(PatroniMember {
            cluster: self.patroni_cluster(stage)?,
            node: position(&stage.patroni_hosts(), host)?,
        })
    }

    /// The object store's secrets, made from the lab's own secret files (one each, 0600, kept in
    /// the state folder), in the formats Garage asks for.
    fn object_secrets(&self) -> anyhow::Result<ObjectSecrets> {
        Ok(ObjectSecrets {
            rpc_secret: self.secret_named("garage-rpc-secret")?,
            admin_token: self.secret_named("garage-admin-token")?,
            access_key_id: format!("GK{}", &self.secret_named("garage-key-id")?[..24]),
            secret_access_key: self.secret_named("garage-key-secret")?,
        })
    }

    fn cache_server(&self, stage: &Stage, host: &Host) -> CacheServer {
        let mut server = CacheServer::new(
            self.stage_dir(stage).join(&host.name).join("redis"),
            host.address.clone(),
            CACHE_PORT,
        );
        server.cpu_group = self.cpu_group_path(host);
        server
    }

    fn gateway_server(&self, stage: &Stage, host: &Host) -> GatewayServer {
        GatewayServer {
            dir: self.stage_dir(stage).join(&host.name).join("gateway"),
            address: host.address.clone(),
            upstreams: stage
                .app_hosts()
                .iter()
                .map(|h| format!("{}:{APP_PORT}", h.address))
                .collect(),
            media_upstreams: stage
                .object_store_hosts()
                .iter()
                .map(|h| format!("{}:{}", h.address, crate::objects::WEB_PORT))
                .collect(),
            media_host: format!(
                "{}{}",
                crate::objects::BUCKET,
                crate::objects::WEB_ROOT_DOMAIN
            ),
            bin: self.conduit_bin.with_file_name("gateway"),
            cpu_group: self.cpu_group_path(host),
            selection: stage.gateway_selection.clone(),
        }
    }

    /// The edge PoP on `host`, in front of the stage's gateway.
    pub fn edge_server(&self, stage: &Stage, host: &Host) -> EdgeServer {
        EdgeServer {
            dir: self.stage_dir(stage).join(&host.name).join("edge"),
            name: host.name.clone(),
            address: host.address.clone(),
            origin: stage
                .gateway_host()
                .map_or_else(String::new, |g| format!("{}:{APP_PORT}", g.address)),
            distance: stage.distance_of(host),
            purge_key: self.purge_key(),
            bin: self.conduit_bin.with_file_name("edge"),
            cpu_group: self.cpu_group_path(host),
        }
    }

    /// The key the app purges the edges with: made from the lab's secret, like the file host's
    /// write key.
    fn purge_key(&self) -> String {
        self.secret()
            .map(|s| format!("purge-{s}"))
            .unwrap_or_default()
    }

    /// The stage's monitoring host (`up --monitor`): not one of the stage's hosts, so never in
    /// its cost or its bottleneck; see [`crate::monitor`].
    pub fn monitor_server(&self, stage: &Stage) -> MonitorServer {
        let net = MonitorServer::address_for(stage)
            .split('.')
            .nth(1)
            .unwrap_or("10")
            .to_owned();
        let mut monitor = MonitorServer::for_stage(
            stage,
            self.stage_dir(stage).join("monitor"),
            self.conduit_bin.with_file_name("archlab"),
            vec![
                "--state-dir".into(),
                self.state_dir.display().to_string(),
                "--net".into(),
                net,
                "host-metrics".into(),
                stage.number.to_string(),
            ],
        );
        monitor.cpu_group = self.cpu_group_path(&monitor.host());
        monitor
    }

    /// [`Lab::start_monitor`] for a measurement (`bench`, `tour`, `drill` with `--monitor`): says
    /// where to watch it.
    pub async fn watch(
        &self,
        stage: &Stage,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<()> {
        let monitor = self.start_monitor(stage).await?;
        progress(&format!(
            "stage {}: watch it live at {}",
            stage.number,
            monitor.dashboard_url()
        ));
        Ok(())
    }

    /// Starts the stage's monitoring host in its own CPU budget and waits until Prometheus is
    /// ready; returns it (for its URLs).
    pub async fn start_monitor(&self, stage: &Stage) -> anyhow::Result<MonitorServer> {
        let monitor = self.monitor_server(stage);
        let host = monitor.host();
        self.budgets
            .group(&Self::cpu_group_name(&host), host.cpu_budget)?;
        monitor
            .start()
            .await
            .context("starting the monitoring host")?;
        Ok(monitor)
    }

    fn app_server(&self, stage: &Stage, host: &Host) -> anyhow::Result<AppServer> {
        let dir = self.stage_dir(stage).join(&host.name).join("app");
        let env = topology::app_env(
            stage,
            host,
            &self.endpoints(stage)?,
            &self.secret()?,
            &dir.join("media"),
        );
        Ok(AppServer {
            dir,
            address: host.address.clone(),
            bin: self.conduit_bin.clone(),
            env,
            cpu_group: self.cpu_group_path(host),
        })
    }

    /// The process that plays `role` on `host`.
    pub fn server(
        &self,
        stage: &Stage,
        host: &Host,
        role: Role,
    ) -> anyhow::Result<Box<dyn Server>> {
        Ok(match role {
            Role::Database => Box::new(Database(self.database(stage, host))),
            Role::Replica => Box::new(self.replica_server(stage, host)?),
            Role::Files => Box::new(self.file_server(stage, host)),
            Role::Cache => Box::new(self.cache_server(stage, host)),
            Role::Gateway => Box::new(self.gateway_server(stage, host)),
            Role::Edge => Box::new(self.edge_server(stage, host)),
            Role::App => Box::new(self.app_server(stage, host)?),
            Role::ObjectStore => Box::new(self.object_node(stage, host)?),
            Role::Consensus => Box::new(ConsensusMember {
                cluster: self.consensus_cluster(stage),
                member: position(&stage.consensus_hosts(), host)?,
            }),
            Role::Patroni => Box::new(self.patroni_member(stage, host)?),
        })
    }

    /// Where the stage's shared services answer, for its app hosts.
    fn endpoints(&self, stage: &Stage) -> anyhow::Result<Endpoints> {
        let patroni = stage.patroni_hosts();
        let database_url =
            |host: &&Host| self.database(stage, host).url(APP_DATABASE, APP_DATABASE);
        Ok(Endpoints {
            database_url: self.database_url(stage)?,
            // Stage 8: every Patroni host may take reads, the leader too; which of them is a
            // replica changes with each failover, and the app measures each one's lag anyway.
            replica_urls: if patroni.is_empty() {
                stage.replicas_of(0).iter().map(database_url).collect()
            } else {
                patroni.iter().map(database_url).collect()
            },
            leader_candidates: patroni
                .iter()
                .map(|host| LeaderCandidate {
                    url: database_url(host),
                    patroni: format!("http://{}:{}", host.address, crate::patroni::REST_PORT),
                })
                .collect(),
            shard_replica_urls: (1..stage.database_hosts().len())
                .map(|shard| {
                    stage
                        .replicas_of(shard)
                        .iter()
                        .map(|host| self.database(stage, host).url(APP_DATABASE, APP_DATABASE))
                        .collect()
                })
                .collect(),
            shard_urls: stage
                .database_hosts()
                .iter()
                .skip(1)
                .map(|host| self.database(stage, host).url(APP_DATABASE, APP_DATABASE))
                .collect(),
            cache_url: stage
                .cache_host()
                .map(|host| self.cache_server(stage, host).url()),
            edges: (!stage.edge_hosts().is_empty()).then(|| EdgesEndpoint {
                urls: stage
                    .edge_hosts()
                    .iter()
                    .map(|host| self.edge_server(stage, host).url())
                    .collect(),
                purge_key: self.purge_key(),
            }),
            object_store: if stage.object_store_hosts().is_empty() {
                None
            } else {
                let cluster = self.object_cluster(stage)?;
                let secrets = self.object_secrets()?;
                Some(ObjectStoreEndpoint {
                    s3_urls: cluster.nodes.iter().map(ObjectNode::s3_url).collect(),
                    access_key_id: secrets.access_key_id,
                    secret_access_key: secrets.secret_access_key,
                    public_base_url: stage.endpoint(),
                })
            },
            files: stage.files_host().map(|host| {
                let files = self.file_server(stage, host);
                FilesEndpoint {
                    url: files.url(),
                    write_key: files.write_key,
                }
            }),
        })
    }

    /// `stage` as it was last brought up: with as many app hosts and replicas as `up
    /// --app-hosts --replicas` gave it (recorded in the state folder), so `down`, `status` and
    /// `restart` find every one.
    pub fn as_brought_up(&self, stage: Stage, net: u8) -> anyhow::Result<Stage> {
        let recorded: Option<Layout> =
            fs::read_to_string(self.stage_dir(&stage).join("layout.json"))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok());
        match recorded {
            Some(layout) if layout != stage.layout() => {
                Ok(Stage::find_with(&stage.folder, layout)?.on_network(net))
            }
            _ => Ok(stage),
        }
    }

    /// The name of `host`'s CPU group: its address, which is unique on the machine.
    fn cpu_group_name(host: &Host) -> String {
        format!("host-{}", host.address.replace('.', "-"))
    }

    /// Where `host`'s CPU group is, if budgets are enforced here.
    fn cpu_group_path(&self, host: &Host) -> Option<PathBuf> {
        match &self.budgets {
            Controller::V1(root) | Controller::V2(root) => {
                Some(root.join("archlab").join(Self::cpu_group_name(host)))
            }
            Controller::None(_) => None,
        }
    }

    /// Whether CPU budgets are enforced by this lab, and if not, why.
    pub fn budgets(&self) -> &Controller {
        &self.budgets
    }

    /// Whether `pid` runs inside `host`'s CPU group (read from `/proc/<pid>/cgroup`).
    pub fn is_budgeted(&self, host: &Host, pid: i32) -> bool {
        let name = format!("/archlab/{}", Self::cpu_group_name(host));
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.ends_with(&name)))
    }

    /// The URL the app hosts use for the stage's database.
    pub fn database_url(&self, stage: &Stage) -> anyhow::Result<String> {
        let host = stage
            .database_host()
            .context("stage has no database host")?;
        Ok(self.database(stage, host).url(APP_DATABASE, APP_DATABASE))
    }

    /// Brings every host of `stage` up and waits until each answers, role by role in
    /// [`Role::START_ORDER`]. Idempotent: what already runs is left alone. `fresh` stops the stage
    /// and deletes its state first.
    pub async fn up(
        &self,
        stage: &Stage,
        fresh: bool,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<()> {
        if fresh {
            self.down(stage, progress)?;
            let dir = self.stage_dir(stage);
            if dir.exists() {
                progress(&format!("removing {}", dir.display()));
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        fs::create_dir_all(self.stage_dir(stage))?;
        fs::write(
            self.stage_dir(stage).join("layout.json"),
            serde_json::to_string(&stage.layout())?,
        )?;
        for host in &stage.hosts {
            self.budgets
                .group(&Self::cpu_group_name(host), host.cpu_budget)?;
        }
        for role in Role::START_ORDER {
            for host in stage.hosts_with(role) {
                let server = self.server(stage, host, role)?;
                progress(&format!(
                    "{} on {} ({}:{}, {} core)",
                    role.as_str(),
                    host.name,
                    host.address,
                    server.port(),
                    host.cpu_budget
                ));
                server
                    .start()
                    .await
                    .with_context(|| format!("starting {} on {}", server.what(), host.name))?;
            }
            if role == Role::Consensus && !stage.consensus_hosts().is_empty() {
                let leadership = self
                    .consensus_cluster(stage)
                    .form()
                    .await
                    .context("forming the consensus store")?;
                progress(&format!(
                    "consensus: {} agrees on a leader, {} (term {})",
                    stage.dcs.as_str(),
                    stage.consensus_hosts()[leadership.member].name,
                    leadership.term
                ));
            }
            if role == Role::Patroni && !stage.patroni_hosts().is_empty() {
                let cluster = self.patroni_cluster(stage)?;
                let primary = cluster
                    .wait_for_primary()
                    .await
                    .context("waiting for Patroni to name a primary")?;
                progress(&format!(
                    "patroni: {} leads; the app's role and database on it",
                    cluster.nodes[primary].name
                ));
                cluster.nodes[primary]
                    .server
                    .ensure_database(APP_DATABASE, APP_DATABASE)
                    .await?;
            }
            if role == Role::ObjectStore && !stage.object_store_hosts().is_empty() {
                progress("object store: forming the cluster (layout, bucket, key)");
                self.object_cluster(stage)?
                    .form()
                    .await
                    .context("forming the object store cluster")?;
            }
        }
        Ok(())
    }

    /// Restarts the app hosts one at a time (a rolling restart), so the stage never has fewer
    /// than all but one serving. Each host, in turn:
    ///
    /// 1. SIGTERM: it stops being ready but keeps serving;
    /// 2. the lab waits until the gateway reports it out of rotation, with nothing in flight to it;
    /// 3. SIGINT: it finishes what it has and exits; then it is started again;
    /// 4. the lab waits until the gateway uses it again, before the next host.
    ///
    /// Every step waits for a condition the gateway reports, never for a fixed time, so a slow or
    /// busy machine makes the restart slower, not lossy.
    pub async fn restart_apps(&self, stage: &Stage, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        let gateway = stage.gateway_host().map(|h| self.gateway_server(stage, h));
        for host in stage.app_hosts() {
            let app = self.app_server(stage, host)?;
            let upstream = format!("{}:{APP_PORT}", host.address);
            if let Some(record) = app.running()? {
                progress(&format!(
                    "restarting app on {} (pid {})",
                    host.name, record.pid
                ));
                if let Some(gateway) = &gateway {
                    app.begin_drain()?;
                    wait_for_rotation(gateway, &upstream, Rotation::Out).await?;
                    progress(&format!("app on {} is out of rotation", host.name));
                }
                app.stop()?;
            }
            app.start().await?;
            if let Some(gateway) = &gateway {
                wait_for_rotation(gateway, &upstream, Rotation::In).await?;
                progress(&format!("app on {} is back in rotation", host.name));
            }
        }
        Ok(())
    }

    /// The settings `conduit seed` needs to write into the stage: its database and the media
    /// store of its (first) app host.
    pub fn seed_env(&self, stage: &Stage) -> anyhow::Result<Vec<(String, String)>> {
        let host = stage.app_hosts()[0];
        Ok(self
            .app_server(stage, host)?
            .env
            .into_iter()
            .filter(|(k, _)| k != "APP_SERVER__LISTEN")
            .collect())
    }

    /// Writes the deterministic data set into the stage (`conduit seed`; skipped if present),
    /// then checkpoints every server ([`Lab::checkpoint_after_seeding`]).
    pub async fn seed(&self, stage: &Stage, spec: &SeedSpec) -> anyhow::Result<()> {
        let status = tokio::process::Command::new(&self.conduit_bin)
            .args([
                "seed",
                "--users",
                &spec.users.to_string(),
                "--articles",
                &spec.articles.to_string(),
            ])
            .args([
                "--images",
                &spec.images.to_string(),
                "--seed",
                &spec.seed.to_string(),
            ])
            .envs(self.seed_env(stage)?)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("running {} seed", self.conduit_bin.display()))?;
        if !status.success() {
            bail!(
                "seeding failed (is the stage up? `archlab up {}`)",
                stage.number
            );
        }
        self.checkpoint_after_seeding(stage).await
    }

    /// Ends a data-set load as a long-running system would have it: a checkpoint on every
    /// primary, then a restartpoint on every replica once it has replayed that checkpoint.
    /// Without it a stage measured (or drilled) minutes after seeding carries the load's pages
    /// dirty in every server: the primary writes them out during the measurement, and a replica,
    /// which makes a restartpoint only at a checkpoint record it has replayed, keeps them all; a
    /// stage 8 replica promoted a few minutes after seeding spent 7.2 s writing 40 MB of them
    /// on its 0.2 core before it took writes again (stage 8's walkthrough).
    pub async fn checkpoint_after_seeding(&self, stage: &Stage) -> anyhow::Result<()> {
        use sqlx::Connection;
        // (server, the primary it follows) for each replica; the primaries themselves.
        let mut primaries = Vec::new();
        let mut replicas = Vec::new();
        if stage.patroni_hosts().is_empty() {
            for host in stage.database_hosts() {
                primaries.push(self.database(stage, host));
            }
            for host in stage.replica_hosts() {
                let replica = self.replica_server(stage, host)?;
                replicas.push((replica.server, replica.primary));
            }
        } else {
            let cluster = self.patroni_cluster(stage)?;
            let leader = cluster
                .primary()
                .await
                .context("no Patroni host leads: cannot checkpoint after seeding")?;
            for (i, node) in cluster.nodes.iter().enumerate() {
                if i != leader {
                    replicas.push((node.server.clone(), cluster.nodes[leader].server.clone()));
                }
            }
            primaries.push(cluster.nodes[leader].server.clone());
        }
        let connect = |server: &PostgresServer| {
            let options = server.connect_options("postgres", "postgres");
            async move {
                sqlx::PgConnection::connect_with(&options)
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to {}:{}",
                            options.get_host(),
                            options.get_port()
                        )
                    })
            }
        };
        for primary in &primaries {
            let mut conn = connect(primary).await?;
            sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
        }
        for (replica, primary) in &replicas {
            let target = checkpoint_lsn(&mut connect(primary).await?).await?;
            let mut conn = connect(replica).await?;
            let deadline = tokio::time::Instant::now() + RESTARTPOINT_WAIT;
            loop {
                // A restartpoint is made at the last checkpoint record replayed, if newer.
                sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
                if checkpoint_lsn(&mut conn).await? >= target {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the replica at {}:{} did not reach the primary's checkpoint within {RESTARTPOINT_WAIT:?}",
                    replica.address,
                    replica.port
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The main PID of one service (`role`) on `host`, if it runs: the postmaster, nginx's master,
    /// Redis, the gateway or the app.
    pub fn service_pid(&self, stage: &Stage, host: &Host, role: Role) -> Option<i32> {
        let server = self.server(stage, host, role).ok()?;
        server.running().ok().flatten().map(|r| r.pid)
    }

    /// PIDs of the processes on `host` (for CPU sampling; their children are found from these).
    ///
    /// A Patroni host's are Patroni's and its detached PostgreSQL's
    /// ([`crate::patroni::PatroniNode::host_roots`]); sampling Patroni's tree alone read stage 8's
    /// database hosts as 0.02 core at 200 req/s.
    pub fn host_pids(&self, stage: &Stage, host: &Host) -> Vec<i32> {
        host.roles
            .iter()
            .flat_map(|role| match role {
                Role::Patroni => self
                    .patroni_member(stage, host)
                    .and_then(|member| member.node().host_roots())
                    .map(|roots| roots.into_iter().map(|r| r.pid).collect::<Vec<i32>>())
                    .unwrap_or_default(),
                _ => self.service_pid(stage, host, *role).into_iter().collect(),
            })
            .collect()
    }

    /// Stops the stage's processes in the reverse of [`Role::START_ORDER`]: the gateway and the
    /// app hosts first (nothing new reaches what they use), the database last.
    pub fn down(&self, stage: &Stage, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        // A database host a killed drill left cut off (its rules outlive it): healed first.
        for host in stage.patroni_hosts() {
            if crate::partition::Cut::remove_left_over(&host.name) {
                progress(&format!("{}: a drill's network cut removed", host.name));
            }
        }
        // The monitoring host first: it watches the others and depends on none of them.
        let monitor = self.monitor_server(stage);
        if let Some(record) = monitor.running()? {
            progress(&format!(
                "stopping the monitoring host (pid {})",
                record.pid
            ));
        }
        monitor.stop()?;
        if let Some(group) = self.cpu_group_path(&monitor.host()) {
            let _ = fs::remove_dir(group);
        }
        for role in Role::START_ORDER.iter().rev() {
            for host in stage.hosts_with(*role) {
                let server = self.server(stage, host, *role)?;
                // A PID file whose process is gone, or whose PID now belongs to another process,
                // is not ours to signal: say so, and leave that process alone.
                if let Some(record) = PidRecord::read(&server.pid_file())? {
                    if !record.is_alive() {
                        progress(&format!(
                            "{} on {}: stale PID {} (not ours any more), left alone",
                            role.as_str(),
                            host.name,
                            record.pid
                        ));
                    }
                }
                if let Some(record) = server.running()? {
                    progress(&format!(
                        "stopping {} on {} (pid {})",
                        role.as_str(),
                        host.name,
                        record.pid
                    ));
                }
                server.stop()?;
            }
        }
        for host in &stage.hosts {
            if let Some(group) = self.cpu_group_path(host) {
                // Empty now; a group still holding a process (not ours to stop) stays.
                let _ = fs::remove_dir(group);
            }
        }
        Ok(())
    }

    /// Every service of `stage` with its state.
    pub async fn status(&self, stage: &Stage) -> anyhow::Result<Vec<ServiceStatus>> {
        let mut out = Vec::new();
        for host in &stage.hosts {
            for role in &host.roles {
                let server = self.server(stage, host, *role)?;
                let pid = server.running()?.map(|r| r.pid);
                let healthy = pid.is_some() && server.ready().await;
                let replica_lag = match role {
                    Role::Replica if healthy => {
                        let replica = self.replica_server(stage, host)?;
                        crate::replica::replay_lag(&replica.primary, &replica.server)
                            .await
                            .ok()
                            .map(|lag| ReplicaLag {
                                bytes: lag.bytes,
                                seconds_since_last_replay: lag
                                    .since_last_replay
                                    .map(|d| d.as_secs_f64()),
                            })
                    }
                    _ => None,
                };
                let leads = match role {
                    Role::Patroni if healthy => {
                        Some(self.patroni_member(stage, host)?.node().is_primary().await)
                    }
                    Role::Consensus if healthy => {
                        let member = position(&stage.consensus_hosts(), host)?;
                        let leader = self.consensus_cluster(stage).leader().await;
                        Some(leader.is_some_and(|l| l.member == member))
                    }
                    _ => None,
                };
                out.push(ServiceStatus {
                    stage: stage.number,
                    host: host.name.clone(),
                    role: role.as_str(),
                    address: host.address.clone(),
                    port: server.port(),
                    size: host.size.as_str(),
                    cpu_budget: host.cpu_budget,
                    cpu_budget_enforced: pid.is_some_and(|p| self.is_budgeted(host, p)),
                    pid,
                    healthy,
                    log: server.log(),
                    replica_lag,
                    leads,
                });
            }
        }
        let monitor = self.monitor_server(stage);
        if let Some(record) = monitor.running()? {
            let host = monitor.host();
            out.push(ServiceStatus {
                stage: stage.number,
                host: host.name.clone(),
                role: "monitor",
                address: host.address.clone(),
                port: crate::monitor::PROMETHEUS_PORT,
                size: host.size.as_str(),
                cpu_budget: host.cpu_budget,
                cpu_budget_enforced: self.is_budgeted(&host, record.pid),
                pid: Some(record.pid),
                healthy: monitor.ready().await,
                log: monitor.log_path(),
                replica_lag: None,
                leads: None,
            });
        }
        Ok(out)
    }

    /// Whether any state for `stage` exists (it has been up at least once).
    pub fn has_state(&self, stage: &Stage) -> bool {
        self.stage_dir(stage).exists()
    }

    /// The JWT key shared by the lab's app hosts: made once, kept in the state folder (0600).
    fn secret(&self) -> anyhow::Result<String> {
        self.secret_named("secret")
    }

    /// A secret of 64 random hex digits, made once and kept in the state folder as `name` (0600).
    fn secret_named(&self, name: &str) -> anyhow::Result<String> {
        let path = self.state_dir.join(name);
        if let Ok(secret) = fs::read_to_string(&path) {
            return Ok(secret.trim().to_owned());
        }
        fs::create_dir_all(&self.state_dir)?;
        let mut bytes = [0u8; 32];
        getrandom(&mut bytes)?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        // Created 0600: never readable by others, not even for a moment.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(secret.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(secret)
    }
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

/// Which way an app host moves through the gateway's rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rotation {
    /// Taken out: not usable, and nothing in flight to it any more.
    Out,
    /// Taken back: usable.
    In,
}

/// Waits until the gateway's metrics show `upstream` moved `way` (see [`Rotation`]).
async fn wait_for_rotation(
    gateway: &GatewayServer,
    upstream: &str,
    way: Rotation,
) -> anyhow::Result<()> {
    let client = http_client()?;
    let url = format!("{}/gateway/metrics", gateway.url());
    let value = |text: &str, metric: &str| {
        let sample = format!("{metric}{{upstream=\"{upstream}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let deadline = std::time::Instant::now() + ROTATION_TIMEOUT;
    loop {
        if let Ok(response) = client.get(&url).send().await {
            if let Ok(text) = response.text().await {
                let usable = value(&text, "gateway_upstream_usable");
                let in_flight = value(&text, "gateway_upstream_in_flight");
                let done = match way {
                    Rotation::In => usable == Some(1.0),
                    Rotation::Out => usable == Some(0.0) && in_flight == Some(0.0),
                };
                if done {
                    return Ok(());
                }
            }
        }
        if std::time::Instant::now() > deadline {
            let what = match way {
                Rotation::Out => "out of rotation",
                Rotation::In => "back into rotation",
            };
            bail!("the gateway did not take {upstream} {what} within {ROTATION_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The samples `samples` finds in each metrics text at `urls` (one per app host), summed by key
/// over the hosts; a host that does not answer adds nothing.
pub async fn summed_metrics<V: Copy + Default + std::ops::AddAssign>(
    urls: &[String],
    samples: impl Fn(&str) -> Vec<(String, V)>,
) -> std::collections::BTreeMap<String, V> {
    let mut total = std::collections::BTreeMap::new();
    let Ok(client) = http_client() else {
        return total;
    };
    for url in urls {
        let Ok(response) = client.get(url).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for (key, value) in samples(&text) {
            *total.entry(key).or_default() += value;
        }
    }
    total
}

/// An HTTP client for health checks: short timeouts, no proxies (loopback only).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?)
}

/// Where `host` stands among `hosts` (a member's place in its cluster).
fn position(hosts: &[&Host], host: &Host) -> anyhow::Result<usize> {
    hosts
        .iter()
        .position(|h| h.name == host.name)
        .with_context(|| format!("{} is not among its cluster's hosts", host.name))
}

/// Where a PostgreSQL server's last checkpoint (a replica's: restartpoint) record is, as a byte
/// position in its WAL.
async fn checkpoint_lsn(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    use sqlx::Row;
    let row =
        sqlx::query("SELECT (checkpoint_lsn - '0/0'::pg_lsn)::int8 FROM pg_control_checkpoint()")
            .fetch_one(conn)
            .await?;
    Ok(row.try_get::<i64, _>(0)?)
}
