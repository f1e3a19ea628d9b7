//! The edge PoPs of stage 6 on: archlab's own pingora CDN edge (`services/edge`), one per edge
//! host, each in front of the stage's gateway, started, checked and stopped by the lab.

use std::{fs, path::PathBuf, time::Duration};

use nix::sys::signal::Signal;

use crate::{
    process::{self, PidRecord},
    stage::{Distance, APP_PORT},
};

/// An edge starts in milliseconds; 10 s only trips on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an edge may drain on SIGTERM (requests through it last milliseconds).
const DRAIN_SECS: u64 = 2;

/// Requests per second one client address may make at a PoP, in the lab. Every simulated user
/// of the harness sends from the same loopback address, so the per-client limit of a real PoP
/// (the edge's default, 100/s) would throttle the whole benchmark as one client; the lab raises
/// it far above any stage's capacity. The edge's own tests keep the limit low and check the 429.
pub const LAB_RATE_PER_CLIENT: u32 = 1_000_000;

/// One edge PoP: its folder, address, distance, binary and origin.
#[derive(Debug, Clone)]
pub struct EdgeServer {
    /// Holds the log and the PID file.
    pub dir: PathBuf,
    /// The PoP's name (its host's name), in `x-edge` and its metrics.
    pub name: String,
    /// Its loopback address (it listens on the app port there).
    pub address: String,
    /// The gateway, `address:port`.
    pub origin: String,
    /// How far it is from its clients and from the origin.
    pub distance: Distance,
    /// The key the app purges with.
    pub purge_key: String,
    /// The `edge` binary.
    pub bin: PathBuf,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

impl EdgeServer {
    /// The PoP's log (its access log included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("edge.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("edge.pid.json")
    }

    /// Its base URL: where its clients connect, and where the app sends purges.
    pub fn url(&self) -> String {
        format!("http://{}:{APP_PORT}", self.address)
    }

    /// The running edge's record, if running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts the edge (idempotent) and waits until it answers its health route.
    pub async fn start(&self) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        fs::create_dir_all(&self.dir)?;
        let env = [
            ("EDGE_LISTEN", format!("{}:{APP_PORT}", self.address)),
            ("EDGE_NAME", self.name.clone()),
            ("EDGE_ORIGIN", self.origin.clone()),
            ("EDGE_ORIGIN_DELAY_MS", self.distance.origin_ms.to_string()),
            ("EDGE_PURGE_KEY", self.purge_key.clone()),
            ("EDGE_RATE_PER_CLIENT", LAB_RATE_PER_CLIENT.to_string()),
            ("EDGE_RATE_BURST", LAB_RATE_PER_CLIENT.to_string()),
            ("EDGE_SHUTDOWN_GRACE_SECS", DRAIN_SECS.to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec();
        process::HttpService {
            what: "an edge",
            bin: &self.bin,
            args: vec!["serve".into()],
            env,
            dir: &self.dir,
            log: self.log_path(),
            pid_path: self.pid_path(),
            cpu_group: self.cpu_group.as_deref(),
            listen: (&self.address, APP_PORT),
            ready_url: format!("{}/edge/healthz", self.url()),
            timeout: START_TIMEOUT,
        }
        .launch()
        .await
    }

    /// Whether it answers `/edge/healthz` with 200.
    pub async fn healthy(&self) -> bool {
        process::answers(&format!("{}/edge/healthz", self.url())).await
    }

    /// Stops the edge: SIGTERM, so requests in flight finish (within [`DRAIN_SECS`]).
    pub fn stop(&self) -> anyhow::Result<()> {
        let patience = Duration::from_secs(DRAIN_SECS + 10);
        process::stop_recorded(&self.pid_path(), Signal::SIGTERM, patience)
    }
}
