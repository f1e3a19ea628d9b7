//! The gateway host of stage 4 on: archlab's own pingora load balancer (`services/gateway`),
//! started, checked and stopped by the lab in front of the stage's app hosts.

use std::{fs, path::PathBuf, time::Duration};

use nix::sys::signal::Signal;

use crate::{
    process::{self, PidRecord},
    stage::APP_PORT,
};

/// The gateway starts in milliseconds; 10 s only trips on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the lab lets the gateway drain on SIGTERM before it goes (the gateway's own
/// `shutdown_grace_secs`, set to this by the lab): requests through it last milliseconds.
pub const DRAIN_SECS: u64 = 2;

/// One gateway: its folder, address, binary and the app hosts behind it.
#[derive(Debug, Clone)]
pub struct GatewayServer {
    /// Holds the log and the PID file.
    pub dir: PathBuf,
    /// Its loopback address (it listens on the app port there).
    pub address: String,
    /// `address:port` of every app host.
    pub upstreams: Vec<String>,
    /// `address:port` of every object-store node's web endpoint (stage 7 on): `GET /media/…`
    /// goes to them instead of the app hosts. Empty: media are not the gateway's business.
    pub media_upstreams: Vec<String>,
    /// The `Host` the object store's web endpoint knows the media bucket by.
    pub media_host: String,
    /// The `gateway` binary.
    pub bin: PathBuf,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
    /// `GATEWAY_SELECTION`, when the stage variant sets one.
    pub selection: Option<String>,
}

impl GatewayServer {
    /// The gateway's log (its access log included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("gateway.pid.json")
    }

    /// Its base URL: the stage's endpoint.
    pub fn url(&self) -> String {
        format!("http://{}:{APP_PORT}", self.address)
    }

    /// The running gateway's record, if running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts the gateway (idempotent) and waits until it answers its own health route.
    pub async fn start(&self) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        fs::create_dir_all(&self.dir)?;
        let list = |addresses: &[String]| {
            let quoted: Vec<String> = addresses.iter().map(|u| format!("\"{u}\"")).collect();
            format!("[{}]", quoted.join(","))
        };
        let upstreams = list(&self.upstreams);
        let mut env = vec![
            (
                "GATEWAY_LISTEN".to_owned(),
                format!("{}:{APP_PORT}", self.address),
            ),
            ("GATEWAY_UPSTREAMS".to_owned(), upstreams),
            (
                "GATEWAY_SHUTDOWN_GRACE_SECS".to_owned(),
                DRAIN_SECS.to_string(),
            ),
        ];
        if !self.media_upstreams.is_empty() {
            env.extend([
                (
                    "GATEWAY_MEDIA__UPSTREAMS".to_owned(),
                    list(&self.media_upstreams),
                ),
                ("GATEWAY_MEDIA__HOST".to_owned(), self.media_host.clone()),
                (
                    "GATEWAY_MEDIA__HEALTH_PORT".to_owned(),
                    crate::objects::ADMIN_PORT.to_string(),
                ),
            ]);
        }
        if let Some(selection) = &self.selection {
            env.push(("GATEWAY_SELECTION".to_owned(), selection.clone()));
        }
        process::HttpService {
            what: "the gateway",
            bin: &self.bin,
            args: vec!["serve".into()],
            env,
            dir: &self.dir,
            log: self.log_path(),
            pid_path: self.pid_path(),
            cpu_group: self.cpu_group.as_deref(),
            listen: (&self.address, APP_PORT),
            ready_url: format!("{}/gateway/healthz", self.url()),
            timeout: START_TIMEOUT,
        }
        .launch()
        .await
    }

    /// Whether it answers `/gateway/healthz` with 200 (at least one app host usable).
    pub async fn healthy(&self) -> bool {
        process::answers(&format!("{}/gateway/healthz", self.url())).await
    }

    /// Stops the gateway: SIGTERM, so requests in flight finish (within [`DRAIN_SECS`]).
    pub fn stop(&self) -> anyhow::Result<()> {
        let patience = Duration::from_secs(DRAIN_SECS + 10);
        process::stop_recorded(&self.pid_path(), Signal::SIGTERM, patience)
    }
}
