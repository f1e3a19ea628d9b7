//! One shape for every process the lab runs: [`Server`].
//!
//! PostgreSQL, nginx, Redis, the gateway and the app are started, checked, stopped and found
//! the same way (a PID file with a start time, a log, a readiness check), so `up`, `down`,
//! `status` and the drills treat them alike through this trait, and a later server (a replica, an
//! object-store node, a consensus member) is one more implementation.

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use nix::sys::signal::Signal;

use crate::{
    cache::{CacheServer, CACHE_PORT},
    consensus::{ConsensusCluster, ConsensusMember},
    edge::EdgeServer,
    files::{FileServer, FILES_PORT},
    gateway::GatewayServer,
    lab::APP_DATABASE,
    objects::{ObjectNode, S3_PORT},
    patroni::PatroniMember,
    postgres::PostgresServer,
    process::{self, PidRecord},
    replica::ReplicaServer,
    stage::{APP_PORT, DATABASE_PORT},
};

/// A boxed future, so the trait stays object-safe. Not `Send`: sqlx's connection futures cannot
/// always prove it, and the lab awaits its servers in place, never on another task.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A service process of one host.
pub trait Server: Send + Sync {
    /// What it is, for messages (`"the database"`).
    fn what(&self) -> &'static str;
    /// The port it listens on, on its host's address.
    fn port(&self) -> u16;
    /// Its log file.
    fn log(&self) -> PathBuf;
    /// Its PID file (with the process's start time, so a reused PID is never mistaken for it).
    fn pid_file(&self) -> PathBuf;
    /// Its record if it runs (a stale PID file is removed).
    fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_file())
    }
    /// Starts it unless it runs, and waits until it is ready.
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Whether it answers now (a connection, a `PING`, a 200 from its health route).
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// Stops it and waits until it is gone; a no-op if it does not run.
    fn stop(&self) -> anyhow::Result<()>;
}

/// Whether a PostgreSQL server (a primary or a replica) accepts a connection now.
async fn accepts_connections(server: &PostgresServer) -> bool {
    use sqlx::Connection;
    sqlx::PgConnection::connect_with(&server.connect_options("postgres", "postgres"))
        .await
        .is_ok()
}

/// The stage's database: PostgreSQL with the app's role and database in it.
pub struct Database(pub PostgresServer);

impl Server for Database {
    fn what(&self) -> &'static str {
        "the database"
    }
    fn port(&self) -> u16 {
        DATABASE_PORT
    }
    fn log(&self) -> PathBuf {
        self.0.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.0.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.0.start(&[]).await?;
            self.0.ensure_database(APP_DATABASE, APP_DATABASE).await
        })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(accepts_connections(&self.0))
    }
    fn stop(&self) -> anyhow::Result<()> {
        self.0.stop()
    }
}

impl Server for ReplicaServer {
    fn what(&self) -> &'static str {
        "a database replica"
    }
    fn port(&self) -> u16 {
        DATABASE_PORT
    }
    fn log(&self) -> PathBuf {
        self.server.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.server.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { ReplicaServer::start(self).await.map(|_| ()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(accepts_connections(&self.server))
    }
    fn stop(&self) -> anyhow::Result<()> {
        ReplicaServer::stop(self)
    }
}

impl Server for ConsensusMember {
    fn what(&self) -> &'static str {
        "a consensus store member"
    }
    fn port(&self) -> u16 {
        match self.cluster {
            ConsensusCluster::Etcd(_) => crate::etcd::CLIENT_PORT,
            ConsensusCluster::ZooKeeper(_) => crate::zookeeper::CLIENT_PORT,
        }
    }
    fn log(&self) -> PathBuf {
        self.cluster.member_files(self.member).0
    }
    fn pid_file(&self) -> PathBuf {
        self.cluster.member_files(self.member).1
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.cluster.start_member(self.member))
    }
    /// Ready when the cluster has a leader this member agrees on (a member alone serves nothing).
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.cluster.leader().await.is_some() })
    }
    fn stop(&self) -> anyhow::Result<()> {
        self.cluster.stop_member(self.member)
    }
}

impl Server for PatroniMember {
    fn what(&self) -> &'static str {
        "a database host (Patroni)"
    }
    fn port(&self) -> u16 {
        DATABASE_PORT
    }
    fn log(&self) -> PathBuf {
        self.node().log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.node().pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.cluster.start_node(self.node))
    }
    /// Ready when it runs as the primary or as a replica.
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.node().is_primary().await || self.node().is_replica().await })
    }
    fn stop(&self) -> anyhow::Result<()> {
        self.node().stop()
    }
}

impl Server for FileServer {
    fn what(&self) -> &'static str {
        "the file server"
    }
    fn port(&self) -> u16 {
        FILES_PORT
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { FileServer::start(self).await.map(|_| ()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let Ok(client) = crate::lab::http_client() else {
                return false;
            };
            client.get(format!("{}/", self.url())).send().await.is_ok()
        })
    }
    fn stop(&self) -> anyhow::Result<()> {
        FileServer::stop(self)
    }
}

impl Server for CacheServer {
    fn what(&self) -> &'static str {
        "the cache"
    }
    fn port(&self) -> u16 {
        CACHE_PORT
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { CacheServer::start(self).await.map(|_| ()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.healthy())
    }
    fn stop(&self) -> anyhow::Result<()> {
        CacheServer::stop(self)
    }
}

impl Server for ObjectNode {
    fn what(&self) -> &'static str {
        "an object-store node"
    }
    fn port(&self) -> u16 {
        S3_PORT
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { ObjectNode::start(self).await.map(|_| ()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.healthy())
    }
    fn stop(&self) -> anyhow::Result<()> {
        ObjectNode::stop(self)
    }
}

impl Server for GatewayServer {
    fn what(&self) -> &'static str {
        "the gateway"
    }
    fn port(&self) -> u16 {
        APP_PORT
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { GatewayServer::start(self).await.map(|_| ()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.healthy())
    }
    fn stop(&self) -> anyhow::Result<()> {
        GatewayServer::stop(self)
    }
}

impl Server for EdgeServer {
    fn what(&self) -> &'static str {
        "an edge"
    }
    fn port(&self) -> u16 {
        APP_PORT
    }
    fn log(&self) -> PathBuf {
        self.log_path()
    }
    fn pid_file(&self) -> PathBuf {
        self.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { EdgeServer::start(self).await.map(|_| ()) })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.healthy())
    }
    fn stop(&self) -> anyhow::Result<()> {
        EdgeServer::stop(self)
    }
}

/// How long an app host may take to answer `/readyz`: it applies migrations first, which on a
/// fresh database take well under a second.
const APP_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Once told to stop at once (SIGINT), the app finishes in-flight requests within its own grace
/// period (10 s); 15 s covers that.
const APP_STOP_PATIENCE: Duration = Duration::from_secs(15);

/// The Conduit app on one app host.
pub struct AppServer {
    /// Holds `media/`, the log and the PID file.
    pub dir: PathBuf,
    /// Its host's address.
    pub address: String,
    /// The `conduit` binary.
    pub bin: PathBuf,
    /// Its `APP_…` settings ([`crate::topology::app_env`]).
    pub env: Vec<(String, String)>,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

impl AppServer {
    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("app.pid.json")
    }

    fn ready_url(&self) -> String {
        format!("http://{}:{APP_PORT}/readyz", self.address)
    }

    /// Starts draining: SIGTERM makes the app answer `/readyz` with 503 while it keeps serving
    /// (behind a gateway; without one it stops at once). [`Server::stop`] ends it.
    pub fn begin_drain(&self) -> anyhow::Result<()> {
        if let Some(record) = self.running()? {
            record.signal(Signal::SIGTERM)?;
        }
        Ok(())
    }
}

impl Server for AppServer {
    fn what(&self) -> &'static str {
        "the app"
    }
    fn port(&self) -> u16 {
        APP_PORT
    }
    fn log(&self) -> PathBuf {
        self.dir.join("app.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.pid_path()
    }
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            std::fs::create_dir_all(self.dir.join("media"))?;
            if self.running()?.is_some() {
                return Ok(());
            }
            process::HttpService {
                what: "the app",
                bin: &self.bin,
                args: vec!["serve".into()],
                env: self.env.clone(),
                dir: &self.dir,
                log: self.log(),
                pid_path: self.pid_path(),
                cpu_group: self.cpu_group.as_deref(),
                listen: (&self.address, APP_PORT),
                ready_url: self.ready_url(),
                timeout: APP_START_TIMEOUT,
            }
            .launch()
            .await?;
            Ok(())
        })
    }
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { crate::process::answers(&self.ready_url()).await })
    }
    /// SIGINT: stop now (ending a drain if one runs), finishing in-flight requests.
    fn stop(&self) -> anyhow::Result<()> {
        if let Some(record) = PidRecord::read(&self.pid_path())? {
            if record.is_alive() {
                record.stop(Signal::SIGINT, APP_STOP_PATIENCE)?;
            }
        }
        let _ = std::fs::remove_file(self.pid_path());
        Ok(())
    }
}
