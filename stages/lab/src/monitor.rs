//! The monitoring host (`archlab up N --monitor`): Prometheus scraping every service of the
//! stage, with a live dashboard it serves itself.
//!
//! It is a host of its own (`127.<net>.<stage>.250`) with its own CPU budget ([`MONITOR_SIZE`]),
//! outside the stage's measured hosts: it is not in the stage file, not in the stage's cost, and
//! never a bottleneck candidate. On it run, each an HTTP service with a PID file and a log:
//!
//! | process                        | port | scrapes / serves                                    |
//! |--------------------------------|------|-----------------------------------------------------|
//! | `archlab host-metrics`         | 9100 | CPU used and budget of every host of the stage       |
//! | `prometheus-postgres-exporter` | 9187 | the database host's statistics                       |
//! | `prometheus-redis-exporter`    | 9121 | the cache host's (stages with a cache)               |
//! | `prometheus`                   | 9090 | scrapes those, the app hosts and the gateway; serves the dashboard |
//!
//! The dashboard is `http://<monitor>:9090/consoles/archlab.html`: a console page
//! (`stages/lab/monitor/archlab.html`) that draws the panels of `stages/lab/monitor/panels.json`
//! from Prometheus's own API. The compose files' monitoring host serves the same two files.
//!
//! What watching costs the watched: the exporters query the database and Redis on every scrape,
//! on those hosts' budgets. So monitoring is off unless asked for (`up`, `bench`, `tour` and
//! `drill` take `--monitor`), and the committed results are measured without it.

use std::{fs, path::PathBuf, time::Duration};

use nix::sys::signal::Signal;

use crate::{
    cache::CACHE_PORT,
    process::{self, PidRecord},
    stage::{Host, Stage, DATABASE_PORT},
};

/// The monitoring host's budget: a medium host. Prometheus scraping stage 4's six targets every
/// [`SCRAPE_INTERVAL`] and the exporters answering it used 0.015 core under 100 req/s of the
/// read-heavy mix (an informal reading on 2026-12-02, 46 CPU ticks in 31 s, not a result file);
/// a medium host's 0.1 leaves room for the dashboard's range queries and bursts without taking
/// much from the two cores the stage runs on.
pub const MONITOR_SIZE: crate::size::Size = crate::size::Size::Medium;
/// The last octet of the monitoring host's address in every stage's network: above any host a
/// stage file gives (app hosts count up from .11).
pub const MONITOR_OCTET: u8 = 250;
/// Prometheus's standard port.
pub const PROMETHEUS_PORT: u16 = 9090;
/// `archlab host-metrics`: node_exporter's port, as it plays that exporter's part.
pub const HOST_METRICS_PORT: u16 = 9100;
/// The PostgreSQL exporter's standard port.
pub const DATABASE_EXPORTER_PORT: u16 = 9187;
/// The Redis exporter's standard port.
pub const CACHE_EXPORTER_PORT: u16 = 9121;
/// How often Prometheus scrapes: every 2 s, so the dashboard's 10 s rates have five points and a
/// drill's outage shows within seconds. Once a second did not fit the budget: under stage 4's
/// load the monitoring host was throttled in 3 periods of 4 and kept 14 scrapes of 30.
pub const SCRAPE_INTERVAL: &str = "2s";
/// Each of these starts in well under a second; 30 s only trips on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The dashboard page and its panels, compiled in so `archlab` works from any folder.
const CONSOLES: [(&str, &str); 2] = [
    ("archlab.html", include_str!("../monitor/archlab.html")),
    ("panels.json", include_str!("../monitor/panels.json")),
];

/// One process of the monitoring host.
struct Process {
    /// File name stem of its log and PID file, and its name in messages.
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    /// Path of its readiness check on its port.
    ready_path: &'static str,
}

/// The monitoring host of one stage.
#[derive(Debug, Clone)]
pub struct MonitorServer {
    /// Holds the logs, PID files, Prometheus's data and the dashboard files.
    pub dir: PathBuf,
    /// The monitoring host's loopback address.
    pub address: String,
    /// Its CPU group, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
    /// The `archlab` binary (for `host-metrics`).
    pub archlab_bin: PathBuf,
    /// The arguments `archlab host-metrics` needs to find this stage (state folder, network).
    pub host_metrics_args: Vec<String>,
    /// `address:port` of each app host.
    pub app_targets: Vec<String>,
    /// `address:port` of the gateway, if the stage has one.
    pub gateway_target: Option<String>,
    /// `address:port` of every edge PoP (stage 6 on).
    pub edge_targets: Vec<String>,
    /// Where the database host listens.
    pub database_address: Option<String>,
    /// Where the cache host listens.
    pub cache_address: Option<String>,
}

impl MonitorServer {
    /// The monitoring host of `stage`, watching every app host, the gateway, the database and the
    /// cache the stage has; its files in `dir`, `host-metrics` run as `archlab_bin` with
    /// `host_metrics_args`. No CPU group yet: the lab gives it one.
    pub fn for_stage(
        stage: &Stage,
        dir: PathBuf,
        archlab_bin: PathBuf,
        host_metrics_args: Vec<String>,
    ) -> Self {
        let http = |h: &Host| format!("{}:{}", h.address, crate::stage::APP_PORT);
        MonitorServer {
            dir,
            address: Self::address_for(stage),
            cpu_group: None,
            archlab_bin,
            host_metrics_args,
            app_targets: stage.app_hosts().into_iter().map(http).collect(),
            gateway_target: stage.gateway_host().map(http),
            edge_targets: stage.edge_hosts().into_iter().map(http).collect(),
            database_address: stage.database_host().map(|h| h.address.clone()),
            cache_address: stage.cache_host().map(|h| h.address.clone()),
        }
    }

    /// The monitoring host of `stage`: its address from the stage's network.
    pub fn address_for(stage: &Stage) -> String {
        let first = &stage.hosts[0].address;
        let prefix = first.rsplit_once('.').map_or(first.as_str(), |(p, _)| p);
        format!("{prefix}.{MONITOR_OCTET}")
    }

    /// The host record the budget controller and `status` use.
    pub fn host(&self) -> Host {
        Host {
            name: "monitor".into(),
            address: self.address.clone(),
            size: MONITOR_SIZE,
            cpu_budget: MONITOR_SIZE.cores(),
            roles: vec![],
            copies: None,
            distance: None,
        }
    }

    /// Prometheus's base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{PROMETHEUS_PORT}", self.address)
    }

    /// The dashboard's URL.
    pub fn dashboard_url(&self) -> String {
        format!("{}/consoles/archlab.html", self.url())
    }

    /// Prometheus's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// Prometheus's PID file: the monitoring host runs while Prometheus does.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("prometheus.pid.json")
    }

    /// Prometheus's record, if it runs.
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// What Prometheus scrapes: `(job, targets, metrics path)`, one job per kind of target. The
    /// compose files' `MONITOR_SCRAPE` names the same jobs, ports and paths (a test compares).
    pub fn scrape_jobs(&self) -> Vec<(&'static str, Vec<String>, &'static str)> {
        let on_monitor = |port: u16| vec![format!("{}:{port}", self.address)];
        let mut jobs = vec![("hosts", on_monitor(HOST_METRICS_PORT), "/metrics")];
        if !self.edge_targets.is_empty() {
            jobs.push(("edge", self.edge_targets.clone(), "/edge/metrics"));
        }
        if let Some(gateway) = &self.gateway_target {
            jobs.push(("gateway", vec![gateway.clone()], "/gateway/metrics"));
        }
        jobs.push(("app", self.app_targets.clone(), "/metrics"));
        if self.database_address.is_some() {
            jobs.push(("database", on_monitor(DATABASE_EXPORTER_PORT), "/metrics"));
        }
        if self.cache_address.is_some() {
            jobs.push(("cache", on_monitor(CACHE_EXPORTER_PORT), "/metrics"));
        }
        jobs
    }

    /// Prometheus's scrape configuration: [`MonitorServer::scrape_jobs`], every target by address.
    pub fn prometheus_config(&self) -> String {
        let mut out = format!(
            "# written by archlab (stages/lab/src/monitor.rs)\nglobal:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n"
        );
        for (job, targets, path) in self.scrape_jobs() {
            let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            out.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: [{}]\n",
                quoted.join(", ")
            ));
        }
        out
    }

    /// Its processes, each after what it needs: the exporters before the Prometheus that scrapes
    /// them.
    fn processes(&self) -> Vec<Process> {
        let listen = |port: u16| format!("{}:{port}", self.address);
        let mut out = vec![Process {
            name: "host-metrics",
            program: self.archlab_bin.clone(),
            args: self
                .host_metrics_args
                .iter()
                .cloned()
                .chain(["--listen".into(), listen(HOST_METRICS_PORT)])
                .collect(),
            env: vec![],
            port: HOST_METRICS_PORT,
            ready_path: "/metrics",
        }];
        if let Some(db) = &self.database_address {
            out.push(Process {
                name: "database-exporter",
                program: "prometheus-postgres-exporter".into(),
                args: vec![format!(
                    "--web.listen-address={}",
                    listen(DATABASE_EXPORTER_PORT)
                )],
                // The lab's PostgreSQL trusts its loopback network (stages/lab/src/postgres.rs);
                // a real system would give the exporter a role of its own with pg_monitor.
                env: vec![(
                    "DATA_SOURCE_NAME".into(),
                    format!("postgresql://postgres@{db}:{DATABASE_PORT}/conduit?sslmode=disable"),
                )],
                port: DATABASE_EXPORTER_PORT,
                ready_path: "/metrics",
            });
        }
        if let Some(cache) = &self.cache_address {
            out.push(Process {
                name: "cache-exporter",
                program: "prometheus-redis-exporter".into(),
                args: vec![
                    format!("-web.listen-address={}", listen(CACHE_EXPORTER_PORT)),
                    format!("-redis.addr=redis://{cache}:{CACHE_PORT}"),
                ],
                env: vec![],
                port: CACHE_EXPORTER_PORT,
                ready_path: "/metrics",
            });
        }
        let consoles = self.dir.join("consoles");
        out.push(Process {
            name: "prometheus",
            program: "prometheus".into(),
            args: vec![
                format!(
                    "--config.file={}",
                    self.dir.join("prometheus.yml").display()
                ),
                format!("--storage.tsdb.path={}", self.dir.join("data").display()),
                // A day is longer than any tour; the data set stays small.
                "--storage.tsdb.retention.time=1d".into(),
                format!("--web.listen-address={}", listen(PROMETHEUS_PORT)),
                format!("--web.console.templates={}", consoles.display()),
                format!("--web.console.libraries={}", consoles.display()),
            ],
            env: vec![],
            port: PROMETHEUS_PORT,
            ready_path: "/-/ready",
        });
        out
    }

    fn pid_of(&self, p: &Process) -> PathBuf {
        self.dir.join(format!("{}.pid.json", p.name))
    }

    /// Writes the configuration and the dashboard, then starts every process that is not running
    /// and waits until each answers. What runs keeps running: a stage's hosts cannot change while
    /// it is up (`up` refuses another `--app-hosts` without `down` or `--fresh`, and both stop
    /// this host first), so its targets are still the ones it was started with.
    pub async fn start(&self) -> anyhow::Result<()> {
        fs::create_dir_all(self.dir.join("consoles"))?;
        for (name, text) in CONSOLES {
            fs::write(self.dir.join("consoles").join(name), text)?;
        }
        fs::write(self.dir.join("prometheus.yml"), self.prometheus_config())?;
        for p in self.processes() {
            if PidRecord::running(&self.pid_of(&p))?.is_some() {
                continue;
            }
            let program = which(&p.program)?;
            // Go programs (Prometheus, the exporters) run one thread per core by default, and
            // bursts on both cores spend a small quota in half a period; one is plenty here.
            let mut env = p.env.clone();
            env.push(("GOMAXPROCS".into(), "1".into()));
            process::HttpService {
                what: p.name,
                bin: &program,
                args: p.args.clone(),
                env,
                dir: &self.dir,
                log: self.dir.join(format!("{}.log", p.name)),
                pid_path: self.pid_of(&p),
                cpu_group: self.cpu_group.as_deref(),
                listen: (&self.address, p.port),
                ready_url: format!("http://{}:{}{}", self.address, p.port, p.ready_path),
                timeout: START_TIMEOUT,
            }
            .launch()
            .await?;
        }
        Ok(())
    }

    /// Whether Prometheus answers its readiness route.
    pub async fn ready(&self) -> bool {
        crate::process::answers(&format!("{}/-/ready", self.url())).await
    }

    /// Stops Prometheus first (nothing scrapes the exporters any more), then the exporters.
    pub fn stop(&self) -> anyhow::Result<()> {
        for p in self.processes().iter().rev() {
            if let Some(record) = PidRecord::running(&self.pid_of(p))? {
                record.stop(Signal::SIGTERM, Duration::from_secs(10))?;
            }
            let _ = fs::remove_file(self.pid_of(p));
        }
        Ok(())
    }
}

/// `program` as a path: itself if it has a folder, else found on `PATH` (the exporters and
/// Prometheus come from Debian's packages, which scripts/setup.sh installs).
fn which(program: &std::path::Path) -> anyhow::Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} not found: install Debian's prometheus, prometheus-postgres-exporter and \
                 prometheus-redis-exporter (scripts/setup.sh does)",
                program.display()
            )
        })
}

/// Prometheus's text format for the hosts' CPU: what `archlab host-metrics` serves. One line per
/// host and metric; `used` holds CPU seconds used so far by each host's processes.
pub fn host_metrics_text(stage: &Stage, used: &[f64]) -> String {
    let mut out = String::from(
        "# HELP archlab_host_cpu_seconds_total CPU time used by the host's processes (and their children) that run now.\n\
         # TYPE archlab_host_cpu_seconds_total counter\n",
    );
    for (host, seconds) in stage.hosts.iter().zip(used) {
        out.push_str(&format!(
            "archlab_host_cpu_seconds_total{{host=\"{}\"}} {seconds}\n",
            host.name
        ));
    }
    out.push_str(
        "# HELP archlab_host_cpu_budget_cores The host's CPU budget (its size), in cores.\n\
         # TYPE archlab_host_cpu_budget_cores gauge\n",
    );
    for host in &stage.hosts {
        out.push_str(&format!(
            "archlab_host_cpu_budget_cores{{host=\"{}\"}} {}\n",
            host.name, host.cpu_budget
        ));
    }
    out
}

/// Largest request `host-metrics` reads: a scrape's request line and headers are a few hundred
/// bytes; anything longer is not Prometheus.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long `host-metrics` waits for a request's headers before closing the connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `archlab host-metrics`: serves [`host_metrics_text`] for `stage` on `listener` until killed.
/// Every request gets the metrics (Prometheus asks for `/metrics`; nothing else is served), read
/// afresh from the hosts' PID files and `/proc`, so a host restarted by a drill is followed.
/// A minimal HTTP/1.1 responder, one connection at a time: one scraper asks every few seconds.
pub async fn serve_host_metrics(
    lab: &crate::Lab,
    stage: &Stage,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut socket, _) = listener.accept().await?;
        let mut request = Vec::with_capacity(512);
        let read_headers = async {
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES
            {
                let n = socket.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        };
        if !matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, read_headers).await,
            Ok(Ok(()))
        ) {
            continue;
        }
        let pids: Vec<Vec<i32>> = stage
            .hosts
            .iter()
            .map(|host| lab.host_pids(stage, host))
            .collect();
        let used = crate::budget::cpu_seconds_each(&pids);
        let body = host_metrics_text(stage, &used);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // A scraper that went away is not our problem; the next scrape gets a new connection.
        let _ = socket.write_all(response.as_bytes()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor_of(stage: &Stage) -> MonitorServer {
        MonitorServer::for_stage(stage, "/nonexistent".into(), "archlab".into(), vec![])
    }

    #[test]
    fn stage_4_is_scraped_at_its_gateway_both_app_hosts_and_both_exporters() {
        let stage = Stage::find("4").expect("stage 4");
        let m = monitor_of(&stage);
        assert_eq!(m.address, "127.10.4.250");
        let config = m.prometheus_config();
        for job in ["hosts", "gateway", "app", "database", "cache"] {
            assert!(
                config.contains(&format!("job_name: {job}\n")),
                "{job}: {config}"
            );
        }
        assert!(config.contains("\"127.10.4.11:8080\", \"127.10.4.12:8080\""));
        assert!(config.contains("metrics_path: /gateway/metrics"));
    }

    #[test]
    fn stage_1_has_no_gateway_or_cache_to_scrape() {
        let m = monitor_of(&Stage::find("1").expect("stage 1"));
        let config = m.prometheus_config();
        assert!(!config.contains("job_name: gateway"));
        assert!(!config.contains("job_name: cache"));
        let names: Vec<&str> = m.processes().iter().map(|p| p.name).collect();
        assert_eq!(names, ["host-metrics", "database-exporter", "prometheus"]);
    }

    #[test]
    fn host_metrics_name_every_host_with_its_budget() {
        let stage = Stage::find("2").expect("stage 2");
        let text = host_metrics_text(&stage, &[1.5, 0.25, 0.0]);
        assert!(text.contains("archlab_host_cpu_seconds_total{host=\"app\"} 1.5\n"));
        assert!(text.contains("archlab_host_cpu_budget_cores{host=\"files\"} 0.05\n"));
    }

    /// The compose files' monitoring hosts, which write their scrape jobs as `MONITOR_SCRAPE`.
    const COMPOSE_FILES: [(&str, &str); 6] = [
        ("1", include_str!("../../../docker-compose/01-monolith.yml")),
        ("2", include_str!("../../../docker-compose/02-split.yml")),
        ("3", include_str!("../../../docker-compose/03-cache.yml")),
        ("4", include_str!("../../../docker-compose/04-cluster.yml")),
        ("5", include_str!("../../../docker-compose/05-replicas.yml")),
        ("6", include_str!("../../../docker-compose/06-edge.yml")),
    ];

    #[test]
    fn compose_scrapes_the_same_jobs_ports_and_paths_as_the_native_lab() {
        for (number, file) in COMPOSE_FILES {
            let line = file
                .lines()
                .find_map(|l| l.trim().strip_prefix("MONITOR_SCRAPE: "))
                .unwrap_or_else(|| panic!("stage {number}'s compose file has no MONITOR_SCRAPE"));
            // `job=name:port[/path]` -> (job, port, path)
            let mut compose: Vec<(String, String, String)> = line
                .trim_matches('"')
                .split_whitespace()
                .map(|pair| {
                    let (job, target) = pair.split_once('=').expect("job=target");
                    let (host_port, path) = target.split_once('/').unwrap_or((target, "metrics"));
                    let port = host_port.rsplit_once(':').expect("name:port").1;
                    (job.to_owned(), port.to_owned(), format!("/{path}"))
                })
                .collect();
            // `hosts` is `archlab host-metrics` in the lab, container-metrics.py in compose.
            let stage = Stage::find(number).expect("stage");
            let mut native: Vec<(String, String, String)> = monitor_of(&stage)
                .scrape_jobs()
                .into_iter()
                .map(|(job, targets, path)| {
                    let port = targets[0].rsplit_once(':').expect("address:port").1;
                    (job.to_owned(), port.to_owned(), path.to_owned())
                })
                .collect();
            compose.sort();
            native.sort();
            assert_eq!(compose, native, "stage {number}");
        }
    }

    #[test]
    fn the_dashboard_page_is_a_valid_console_template() {
        // Prometheus renders console pages as Go templates: two opening braces would be a directive.
        for (name, text) in CONSOLES {
            assert!(!text.contains("{{"), "{name} contains a template directive");
        }
    }
}
