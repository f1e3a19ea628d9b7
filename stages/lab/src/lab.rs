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
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::{
    budget::{self, Controller},
    cache::{CacheServer, CACHE_PORT},
    files::{FileServer, FILES_PORT},
    gateway::GatewayServer,
    postgres::PostgresServer,
    process::{self, PidRecord, Spawn},
    stage::{Host, Role, Stage, APP_PORT, DATABASE_PORT},
};

/// How long an app host may take to answer `/readyz`: it applies migrations first, which on a
/// fresh database take well under a second.
const APP_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The app drains in-flight requests on SIGTERM for up to its own grace period (10 s).
const APP_STOP_PATIENCE: Duration = Duration::from_secs(15);
/// Database connections each app host opens per core of the database host's budget. PostgreSQL
/// runs one process per connection; past a few per core they only add context switches (an
/// informal comparison on the 2-core reference machine, stage 1, one-article reads at 64 clients:
/// a pool of 4 beat 8, which beat 16; not a recorded result).
const POOL_PER_DATABASE_CORE: f64 = 4.0;
/// How long an app host behind a gateway keeps serving, not ready, after SIGTERM: the gateway
/// needs 2 failed checks 1 s apart to take it out; 2.5 s covers that with a margin.
const APP_DRAIN_MS: u64 = 2_500;
/// Role and database the app uses.
pub const APP_DATABASE: &str = "conduit";

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
    /// `database`, `app`, `files` or `cache`.
    pub role: &'static str,
    /// Host address.
    pub address: String,
    /// Service port.
    pub port: u16,
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
            bin: self.conduit_bin.with_file_name("gateway"),
            cpu_group: self.cpu_group_path(host),
            selection: stage.gateway_selection.clone(),
        }
    }

    /// `stage` as it was last brought up: with as many app hosts as `up --app-hosts` gave it
    /// (recorded in the state folder), so `down`, `status` and `restart` find every one.
    pub fn as_brought_up(&self, stage: Stage, net: u8) -> anyhow::Result<Stage> {
        let recorded = fs::read_to_string(self.stage_dir(&stage).join("app-hosts"))
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok());
        match recorded {
            Some(n) if n as usize != stage.app_host_count() => {
                Ok(Stage::find_with(&stage.folder, Some(n))?.on_network(net))
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

    fn app_dir(&self, stage: &Stage, host: &Host) -> PathBuf {
        self.stage_dir(stage).join(&host.name).join("app")
    }

    /// The URL the app hosts use for the stage's database.
    pub fn database_url(&self, stage: &Stage) -> anyhow::Result<String> {
        let host = stage
            .database_host()
            .context("stage has no database host")?;
        Ok(self.database(stage, host).url(APP_DATABASE, APP_DATABASE))
    }

    /// Brings every host of `stage` up and waits until each answers. Idempotent: what already
    /// runs is left alone. `fresh` stops the stage and deletes its state first.
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
            self.stage_dir(stage).join("app-hosts"),
            stage.app_host_count().to_string(),
        )?;
        for host in &stage.hosts {
            self.budgets
                .group(&Self::cpu_group_name(host), host.cpu_budget)?;
        }
        let db_host = stage
            .database_host()
            .context("stage has no database host")?;
        let db = self.database(stage, db_host);
        progress(&format!(
            "database on {} ({}:{DATABASE_PORT})",
            db_host.name, db_host.address
        ));
        db.start(&[]).await?;
        db.ensure_database(APP_DATABASE, APP_DATABASE).await?;
        if let Some(host) = stage.files_host() {
            progress(&format!(
                "file server on {} ({}:{FILES_PORT})",
                host.name, host.address
            ));
            self.file_server(stage, host).start().await?;
        }
        if let Some(host) = stage.cache_host() {
            progress(&format!(
                "cache on {} ({}:{CACHE_PORT})",
                host.name, host.address
            ));
            self.cache_server(stage, host).start().await?;
        }

        let secret = self.secret()?;
        for host in stage.app_hosts() {
            progress(&format!(
                "app on {} ({}:{APP_PORT})",
                host.name, host.address
            ));
            self.start_app(stage, host, &secret).await?;
        }
        if let Some(host) = stage.gateway_host() {
            progress(&format!(
                "gateway on {} ({}:{APP_PORT}) in front of {} app hosts",
                host.name,
                host.address,
                stage.app_host_count()
            ));
            self.gateway_server(stage, host).start().await?;
        }
        Ok(())
    }

    /// Restarts the app hosts one at a time (a rolling restart). Each is stopped with SIGTERM (it
    /// stops being ready, keeps serving while the gateway's health checks take it out, finishes
    /// what it has, exits), started again, and the next one waits until the gateway uses this
    /// one again, so the stage never has fewer than all but one host serving.
    pub async fn restart_apps(&self, stage: &Stage, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        let secret = self.secret()?;
        let gateway = stage.gateway_host().map(|h| self.gateway_server(stage, h));
        for host in stage.app_hosts() {
            let pid_path = self.app_dir(stage, host).join("app.pid.json");
            if let Some(record) = PidRecord::running(&pid_path)? {
                progress(&format!(
                    "restarting app on {} (pid {})",
                    host.name, record.pid
                ));
                record.stop(Signal::SIGTERM, APP_STOP_PATIENCE)?;
                let _ = fs::remove_file(&pid_path);
            }
            self.start_app(stage, host, &secret).await?;
            if let Some(gateway) = &gateway {
                let upstream = format!("{}:{APP_PORT}", host.address);
                wait_until_usable(gateway, &upstream).await?;
                progress(&format!("app on {} is back in rotation", host.name));
            }
        }
        Ok(())
    }

    async fn start_app(&self, stage: &Stage, host: &Host, secret: &str) -> anyhow::Result<()> {
        let dir = self.app_dir(stage, host);
        fs::create_dir_all(dir.join("media"))?;
        let pid_path = dir.join("app.pid.json");
        let ready_url = format!("http://{}:{APP_PORT}/readyz", host.address);
        if PidRecord::running(&pid_path)?.is_some() {
            return Ok(());
        }
        process::ensure_free("the app", &host.address, APP_PORT)?;
        let log = dir.join("app.log");
        let (program, args, _) = budget::wrap(
            self.cpu_group_path(host).as_deref(),
            None,
            &self.conduit_bin,
            vec!["serve".into()],
        );
        let service = Spawn {
            program: &program,
            args,
            env: self.app_env(stage, host, secret)?,
            log: log.clone(),
            user: None,
            cwd: Some(dir.clone()),
        };
        let client = http_client()?;
        process::launch("the app", service, &pid_path, APP_START_TIMEOUT, || {
            let request = client.get(&ready_url).send();
            async move { matches!(request.await, Ok(r) if r.status().is_success()) }
        })
        .await?;
        Ok(())
    }

    /// The settings of the app on `host`, as `APP_…` variables.
    fn app_env(
        &self,
        stage: &Stage,
        host: &Host,
        secret: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let dir = self.app_dir(stage, host);
        Ok([
            (
                "APP_SERVER__LISTEN".into(),
                format!("{}:{APP_PORT}", host.address),
            ),
            ("APP_DATABASE__URL".into(), self.database_url(stage)?),
            (
                "APP_DATABASE__MAX_CONNECTIONS".into(),
                pool_size(stage).to_string(),
            ),
            ("APP_AUTH__JWT_SECRET".into(), secret.to_owned()),
            (
                "APP_MEDIA__ROOT".into(),
                dir.join("media").display().to_string(),
            ),
        ]
        .into_iter()
        .chain(self.media_env(stage))
        .chain(self.cache_env(stage))
        .chain(self.drain_env(stage))
        .collect())
    }

    /// Behind a gateway, an app host stops being ready before it stops serving on SIGTERM, for
    /// long enough that the gateway's health checks (2 failures, 1 s apart) take it out first.
    fn drain_env(&self, stage: &Stage) -> Vec<(String, String)> {
        match stage.gateway_host() {
            Some(_) => vec![("APP_SERVER__DRAIN_MS".into(), APP_DRAIN_MS.to_string())],
            None => Vec::new(),
        }
    }

    /// With a cache host, the app reads through it.
    fn cache_env(&self, stage: &Stage) -> Vec<(String, String)> {
        match stage.cache_host() {
            Some(host) => vec![
                ("APP_CACHE__BACKEND".into(), "redis".into()),
                (
                    "APP_CACHE__URL".into(),
                    self.cache_server(stage, host).url(),
                ),
            ],
            None => Vec::new(),
        }
    }

    /// With a file host, media go to it over HTTP and clients read them from it directly.
    fn media_env(&self, stage: &Stage) -> Vec<(String, String)> {
        match stage.files_host() {
            Some(host) => {
                let url = self.file_server(stage, host).url();
                let files = self.file_server(stage, host);
                vec![
                    ("APP_MEDIA__STORE".into(), "http".into()),
                    ("APP_MEDIA__URL".into(), url.clone()),
                    ("APP_MEDIA__PUBLIC_BASE_URL".into(), url),
                    ("APP_MEDIA__WRITE_KEY".into(), files.write_key),
                ]
            }
            None => Vec::new(),
        }
    }

    /// The settings `conduit seed` needs to write into the stage: its database and the media
    /// store of its (first) app host.
    pub fn seed_env(&self, stage: &Stage) -> anyhow::Result<Vec<(String, String)>> {
        let host = stage.app_hosts()[0];
        let secret = self.secret()?;
        Ok(self
            .app_env(stage, host, &secret)?
            .into_iter()
            .filter(|(k, _)| k != "APP_SERVER__LISTEN")
            .collect())
    }

    /// Writes the deterministic data set into the stage (`conduit seed`; skipped if present).
    pub fn seed(&self, stage: &Stage, spec: &SeedSpec) -> anyhow::Result<()> {
        let status = std::process::Command::new(&self.conduit_bin)
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
            .with_context(|| format!("running {} seed", self.conduit_bin.display()))?;
        if !status.success() {
            bail!(
                "seeding failed (is the stage up? `archlab up {}`)",
                stage.number
            );
        }
        Ok(())
    }

    /// The main PID of one service (`role`) on `host`, if it runs: the postmaster, nginx's master,
    /// Redis, or the app.
    pub fn service_pid(&self, stage: &Stage, host: &Host, role: Role) -> Option<i32> {
        let record = match role {
            Role::Database => self.database(stage, host).running().ok().flatten(),
            Role::Files => self.file_server(stage, host).running().ok().flatten(),
            Role::Cache => self.cache_server(stage, host).running().ok().flatten(),
            Role::Gateway => self.gateway_server(stage, host).running().ok().flatten(),
            Role::App => PidRecord::running(&self.app_dir(stage, host).join("app.pid.json"))
                .ok()
                .flatten(),
        };
        record.map(|r| r.pid)
    }

    /// PIDs of the processes on `host` (for CPU sampling; their children are found from these).
    pub fn host_pids(&self, stage: &Stage, host: &Host) -> Vec<i32> {
        host.roles
            .iter()
            .filter_map(|role| self.service_pid(stage, host, *role))
            .collect()
    }

    /// Stops the stage's processes: the gateway and the app hosts first (they drain), then the
    /// services behind them.
    pub fn down(&self, stage: &Stage, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        if let Some(host) = stage.gateway_host() {
            let gateway = self.gateway_server(stage, host);
            if let Some(record) = gateway.running()? {
                progress(&format!(
                    "stopping gateway on {} (pid {})",
                    host.name, record.pid
                ));
            }
            gateway.stop()?;
        }
        for host in stage.app_hosts() {
            let pid_path = self.app_dir(stage, host).join("app.pid.json");
            if let Some(record) = PidRecord::read(&pid_path)? {
                if record.is_alive() {
                    progress(&format!(
                        "stopping app on {} (pid {})",
                        host.name, record.pid
                    ));
                    record.stop(Signal::SIGTERM, APP_STOP_PATIENCE)?;
                } else {
                    progress(&format!(
                        "app on {}: stale PID {} (not ours any more), left alone",
                        host.name, record.pid
                    ));
                }
                fs::remove_file(&pid_path)?;
            }
        }
        if let Some(host) = stage.files_host() {
            let files = self.file_server(stage, host);
            if let Some(record) = files.running()? {
                progress(&format!(
                    "stopping file server on {} (pid {})",
                    host.name, record.pid
                ));
            }
            files.stop()?;
        }
        if let Some(host) = stage.cache_host() {
            let cache = self.cache_server(stage, host);
            if let Some(record) = cache.running()? {
                progress(&format!(
                    "stopping cache on {} (pid {})",
                    host.name, record.pid
                ));
            }
            cache.stop()?;
        }
        if let Some(host) = stage.database_host() {
            let db = self.database(stage, host);
            if let Some(record) = db.running()? {
                progress(&format!(
                    "stopping database on {} (pid {})",
                    host.name, record.pid
                ));
            }
            db.stop()?;
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
        let client = http_client()?;
        let mut out = Vec::new();
        for host in &stage.hosts {
            for role in &host.roles {
                let (pid, healthy, log, port) = match role {
                    Role::Database => {
                        let db = self.database(stage, host);
                        let record = db.running()?;
                        let healthy = match &record {
                            Some(_) => {
                                use sqlx::Connection;
                                sqlx::PgConnection::connect_with(
                                    &db.connect_options("postgres", "postgres"),
                                )
                                .await
                                .is_ok()
                            }
                            None => false,
                        };
                        (record.map(|r| r.pid), healthy, db.log_path(), DATABASE_PORT)
                    }
                    Role::Files => {
                        let files = self.file_server(stage, host);
                        let record = files.running()?;
                        let healthy = match &record {
                            Some(_) => client.get(format!("{}/", files.url())).send().await.is_ok(),
                            None => false,
                        };
                        (record.map(|r| r.pid), healthy, files.log_path(), FILES_PORT)
                    }
                    Role::Gateway => {
                        let gateway = self.gateway_server(stage, host);
                        let record = gateway.running()?;
                        let healthy = record.is_some() && gateway.healthy().await;
                        (record.map(|r| r.pid), healthy, gateway.log_path(), APP_PORT)
                    }
                    Role::Cache => {
                        let cache = self.cache_server(stage, host);
                        let record = cache.running()?;
                        let healthy = record.is_some() && cache.healthy().await;
                        (record.map(|r| r.pid), healthy, cache.log_path(), CACHE_PORT)
                    }
                    Role::App => {
                        let dir = self.app_dir(stage, host);
                        let record = PidRecord::running(&dir.join("app.pid.json"))?;
                        let healthy = match &record {
                            Some(_) => client
                                .get(format!("http://{}:{APP_PORT}/readyz", host.address))
                                .send()
                                .await
                                .is_ok_and(|r| r.status().is_success()),
                            None => false,
                        };
                        (
                            record.map(|r| r.pid),
                            healthy,
                            dir.join("app.log"),
                            APP_PORT,
                        )
                    }
                };
                out.push(ServiceStatus {
                    stage: stage.number,
                    host: host.name.clone(),
                    role: role.as_str(),
                    address: host.address.clone(),
                    port,
                    cpu_budget: host.cpu_budget,
                    cpu_budget_enforced: pid.is_some_and(|p| self.is_budgeted(host, p)),
                    pid,
                    healthy,
                    log,
                });
            }
        }
        Ok(out)
    }

    /// Whether any state for `stage` exists (it has been up at least once).
    pub fn has_state(&self, stage: &Stage) -> bool {
        self.stage_dir(stage).exists()
    }

    /// The JWT key shared by the lab's app hosts: made once, kept in the state folder (0600).
    fn secret(&self) -> anyhow::Result<String> {
        let path = self.state_dir.join("secret");
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

/// Connections per app host: [`POOL_PER_DATABASE_CORE`] per core of the database host, shared
/// among the app hosts, at least 2.
fn pool_size(stage: &Stage) -> u32 {
    let cores = stage.database_host().map_or(1.0, |h| h.cpu_budget);
    let apps = stage.app_hosts().len().max(1) as f64;
    ((POOL_PER_DATABASE_CORE * cores / apps).ceil() as u32).max(2)
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

/// Waits until the gateway reports `upstream` usable again (its health check passed).
async fn wait_until_usable(gateway: &GatewayServer, upstream: &str) -> anyhow::Result<()> {
    let client = http_client()?;
    let url = format!("{}/gateway/metrics", gateway.url());
    let line = format!("gateway_upstream_usable{{upstream=\"{upstream}\"}} 1");
    let deadline = std::time::Instant::now() + APP_START_TIMEOUT;
    loop {
        if let Ok(response) = client.get(&url).send().await {
            if response
                .text()
                .await
                .is_ok_and(|t| t.lines().any(|l| l == line))
            {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("the gateway did not take {upstream} back within {APP_START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for health checks: short timeouts, no proxies (loopback only).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?)
}
