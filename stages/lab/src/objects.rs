//! The object store of stage 7: a Garage cluster, one node per host, holding the media.
//!
//! Stage 2 put media on one file host: one disk, one process, and when it is gone every image is.
//! Here three nodes each keep a full copy (`replication_factor = 3`); a write is acknowledged
//! once two of them have it, and a read needs two to agree, so one node may be down without any
//! request failing, and a second one down makes writes fail with a 503 rather than pretend.
//!
//! Garage is AGPL-licensed: archlab runs its binary (built once by `scripts/setup.sh`) and never
//! links it. Each node serves three things on its host's address:
//!
//! ```text
//! 3900  S3 API      the app hosts write (and delete) media here, signed with the app's key
//! 3901  RPC         the nodes among themselves, with a shared secret
//! 3902  web         anonymous reads of the `media` bucket: the gateway's media pool sends
//!                   `GET /media/<id>.<ext>` here with `Host: media.web.archlab`
//! 3903  admin       `GET /health`: 200 once this node sees a quorum for every partition
//! ```
//!
//! Forming the cluster is one more step after every node runs ([`ObjectCluster::form`]): the
//! nodes are told of each other, given a role in the layout, and the bucket and the app's key
//! are made. It runs once per state folder; a node that comes back later rejoins by itself.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::process::{self, PidRecord, Spawn};

/// The S3 API's port, on every node's own address.
pub const S3_PORT: u16 = 3900;
/// The nodes' RPC port.
pub const RPC_PORT: u16 = 3901;
/// The web endpoint's port: anonymous reads of website-enabled buckets.
pub const WEB_PORT: u16 = 3902;
/// The admin API's port (`/health`, `/metrics`).
pub const ADMIN_PORT: u16 = 3903;
/// The bucket media live in.
pub const BUCKET: &str = "media";
/// The web endpoint finds a bucket by the request's `Host`: the bucket's name followed by this
/// suffix (so `media.web.archlab`). Nothing resolves this name; the gateway sets it.
pub const WEB_ROOT_DOMAIN: &str = ".web.archlab";
/// The S3 region the app signs its requests for. Garage answers in one region, named here.
pub const REGION: &str = "garage";
/// Copies of every object, one per node: with 3, a quorum is 2, so one node may be down.
const REPLICATION_FACTOR: usize = 3;
/// The capacity each node declares in the layout. Equal on every node, so each holds a full copy;
/// the figure only weighs nodes against each other and is not a disk quota.
const NODE_CAPACITY: &str = "1GB";
/// A node listens within a second; 30 s only trips on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long forming the cluster may take until every node reports a quorum: about 1.2 s on an
/// idle machine (LAB-NOTES); 60 s leaves room for a busy one.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// The secrets a cluster shares: made by the lab once per state folder.
#[derive(Debug, Clone)]
pub struct ObjectSecrets {
    /// 32 bytes as 64 hex digits: the nodes accept RPC only from peers that know it.
    pub rpc_secret: String,
    /// Bearer token of the admin API (only `/health` is used, which needs none).
    pub admin_token: String,
    /// The app's S3 key id: `GK` and 24 hex digits, Garage's format.
    pub access_key_id: String,
    /// The app's S3 secret: 64 hex digits.
    pub secret_access_key: String,
}

/// One Garage node.
#[derive(Debug, Clone)]
pub struct ObjectNode {
    /// Holds `meta/`, `data/`, `garage.toml`, the log and the PID file.
    pub dir: PathBuf,
    /// Its loopback address (every port above on it).
    pub address: String,
    /// The cluster's secrets.
    pub secrets: ObjectSecrets,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

impl ObjectNode {
    /// The node's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("garage.pid.json")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }

    /// The S3 API's URL, for the app hosts.
    pub fn s3_url(&self) -> String {
        format!("http://{}:{S3_PORT}", self.address)
    }

    /// `address:port` of the web endpoint, for the gateway's media pool.
    pub fn web_addr(&self) -> String {
        format!("{}:{WEB_PORT}", self.address)
    }

    /// The health route: 200 once the node sees a quorum for every partition.
    pub fn health_url(&self) -> String {
        format!("http://{}:{ADMIN_PORT}/health", self.address)
    }

    fn config(&self) -> String {
        let dir = self.dir.display();
        let address = &self.address;
        let s = &self.secrets;
        format!(
            r#"# Written by archlab: one node of the object store. Regenerated at every start.
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
# LMDB, Garage's default: its map is a sparse file, so the large default size costs no disk.
db_engine = "lmdb"
replication_factor = {REPLICATION_FACTOR}
# Media are PNG, JPEG, GIF or WebP: compressed already, so zstd would spend CPU for nothing.
compression_level = "none"
# Nothing here is worth an fsync per write: a crashed lab node is rebuilt from the others.
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "{address}:{RPC_PORT}"
rpc_public_addr = "{address}:{RPC_PORT}"
rpc_secret = "{rpc_secret}"

[s3_api]
api_bind_addr = "{address}:{S3_PORT}"
s3_region = "{REGION}"

[s3_web]
bind_addr = "{address}:{WEB_PORT}"
root_domain = "{WEB_ROOT_DOMAIN}"

[admin]
api_bind_addr = "{address}:{ADMIN_PORT}"
admin_token = "{admin_token}"
"#,
            rpc_secret = s.rpc_secret,
            admin_token = s.admin_token,
        )
    }

    /// The running node's record, if running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts the node (idempotent) and waits until its admin API answers at all: a node that
    /// is up but not yet in a cluster answers `/health` with 503, which is enough here;
    /// [`ObjectCluster::form`] waits for the quorum.
    pub async fn start(&self) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        for port in [S3_PORT, RPC_PORT, WEB_PORT, ADMIN_PORT] {
            process::ensure_free("an object-store node", &self.address, port)?;
        }
        fs::create_dir_all(self.dir.join("meta"))?;
        fs::create_dir_all(self.dir.join("data"))?;
        write_private(&self.config_path(), &self.config())?;
        let args = vec![
            "-c".into(),
            self.config_path().display().to_string(),
            "server".into(),
        ];
        let (program, args, user) = crate::budget::wrap(
            self.cpu_group.as_deref(),
            None,
            &crate::installed::GARAGE.program()?,
            args,
        );
        let service = Spawn {
            program: &program,
            args,
            // Garage logs at info by default; warnings are what an operator reads here.
            env: vec![("RUST_LOG".into(), "garage=warn".into())],
            log: self.log_path(),
            user,
            cwd: Some(self.dir.clone()),
        };
        let client = crate::lab::http_client()?;
        let url = self.health_url();
        process::launch("garage", service, &self.pid_path(), START_TIMEOUT, || {
            let request = client.get(&url).send();
            async move { request.await.is_ok() }
        })
        .await
    }

    /// Whether the node answers and sees a quorum.
    pub async fn healthy(&self) -> bool {
        process::answers(&self.health_url()).await
    }

    /// Stops the node (SIGTERM: Garage closes its connections and exits).
    pub fn stop(&self) -> anyhow::Result<()> {
        process::stop_recorded(&self.pid_path(), Signal::SIGTERM, Duration::from_secs(20))
    }

    /// Runs `garage <args>` against this node (the CLI reaches it over RPC, with the secret from
    /// its config file) and returns its standard output.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(crate::installed::GARAGE.program()?)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "garage=warn")
            .output()
            .with_context(|| format!("running garage {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "garage {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// This node's identity as its peers connect to it: `<public key>@<address>:<port>`.
    fn node_id(&self) -> anyhow::Result<String> {
        let out = self.cli(&["node", "id", "-q"])?;
        let id = out.trim();
        if !id.contains('@') {
            bail!("garage node id printed {id:?}, not <id>@<address>");
        }
        Ok(id.to_owned())
    }
}

/// The nodes of one stage's object store, and the one-time step that makes them a cluster.
#[derive(Debug, Clone)]
pub struct ObjectCluster {
    /// Every node, in host order. The first one runs the CLI commands that form the cluster.
    pub nodes: Vec<ObjectNode>,
    /// Written once the cluster is formed, so a later `up` skips forming it again.
    pub formed_marker: PathBuf,
}

impl ObjectCluster {
    /// Makes the running nodes one cluster (once), then waits until every node reports a quorum.
    ///
    /// 1. each node's id; the first node connects to every other;
    /// 2. every node gets a role (zone `lab`, equal capacity) and the layout is applied;
    /// 3. the app's key is imported, the bucket made, the key allowed on it, and the bucket's
    ///    anonymous web reads switched on.
    pub async fn form(&self) -> anyhow::Result<()> {
        let Some(first) = self.nodes.first() else {
            return Ok(());
        };
        if !self.formed_marker.exists() {
            let ids = self
                .nodes
                .iter()
                .map(ObjectNode::node_id)
                .collect::<anyhow::Result<Vec<_>>>()?;
            for id in &ids[1..] {
                first.cli(&["node", "connect", id])?;
            }
            for id in &ids {
                let public_key = id.split('@').next().unwrap_or(id);
                first.cli(&[
                    "layout",
                    "assign",
                    "-z",
                    "lab",
                    "-c",
                    NODE_CAPACITY,
                    public_key,
                ])?;
            }
            first.cli(&["layout", "apply", "--version", "1"])?;
            let s = &first.secrets;
            first.cli(&[
                "key",
                "import",
                "--yes",
                "-n",
                "app",
                &s.access_key_id,
                &s.secret_access_key,
            ])?;
            first.cli(&["bucket", "create", BUCKET])?;
            first.cli(&[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "app",
            ])?;
            first.cli(&["bucket", "website", "--allow", BUCKET])?;
            fs::write(&self.formed_marker, "formed\n")?;
        }
        self.wait_for_quorum(FORM_TIMEOUT).await
    }

    /// Waits until every node's `/health` says 200 (a quorum for every partition).
    pub async fn wait_for_quorum(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for node in &self.nodes {
            while !node.healthy().await {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "the object-store node on {} reports no quorum after {timeout:?}; its log:\n{}",
                        node.address,
                        process::tail(&node.log_path(), 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// Writes `text` to `path`, readable by its owner only (the config holds the RPC secret).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
