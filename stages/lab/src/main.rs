//! `archlab`: run archlab's stages as real local processes.
//!
//! ```text
//! archlab up 1 [--fresh]     bring stage 1 up; last line: `endpoint: http://ADDR:PORT`
//! archlab up 1 --monitor     ... with a monitoring host: Prometheus and a live dashboard
//! archlab status [--json]    every host: role, size, address, PID, health, log file
//! archlab seed [1]           write the benchmark data set into the stage's database
//! archlab bench 3            measure one stage: capacity at the target, cost, bottleneck
//! archlab tour               every stage in order, both workloads, compared
//! archlab down [1]           stop what the lab started (all stages if none is named)
//! ```
//!
//! A shim: each command is one function below over the `archlab` library.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use archlab::{bench::BenchOptions, drill::DrillOptions, lab::SeedSpec, stage::Layout, Lab, Stage};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Run archlab's architecture stages as real local processes",
    long_about = "Run archlab's architecture stages as real local processes: PostgreSQL, the \
                  Conduit app and, in later stages, Redis, pingora and more, each host on its own \
                  loopback address (127.10.<stage>.<n>). Stages are defined in stages/NN-name/stage.toml."
)]
struct Cli {
    /// Where the lab keeps data, logs and PID files.
    #[arg(
        long,
        global = true,
        env = "ARCHLAB_STATE_DIR",
        default_value = ".archlab"
    )]
    state_dir: PathBuf,
    /// Second octet of the lab's loopback network (hosts are 127.<net>.<stage>.<n>); change it to
    /// run a second lab beside the first.
    #[arg(long, global = true, env = "ARCHLAB_NET", default_value_t = 10)]
    net: u8,
    #[command(subcommand)]
    command: Command_,
}

#[derive(Subcommand)]
enum Command_ {
    /// Bring a stage up and wait until every host answers.
    Up {
        /// Stage number or name (`1`, `monolith`).
        stage: String,
        /// Stop the stage and delete its data first.
        #[arg(long)]
        fresh: bool,
        /// App hosts behind the gateway, 1 to 8 (stages with an app cluster; default: the
        /// stage file's number).
        #[arg(long)]
        app_hosts: Option<u8>,
        /// Database replicas beside the primary, 0 to 4 (stages with replicas; stage 8: 1 to 3
        /// more Patroni hosts beside the first; default: the stage file's number).
        #[arg(long)]
        replicas: Option<u8>,
        /// Database shards, 1 to 4 (stage 7 on: the data split by author; default: the stage
        /// file's number).
        #[arg(long)]
        shards: Option<u8>,
        /// The consensus store Patroni keeps its leader key in (stage 8 on; default: etcd).
        #[arg(long, value_enum)]
        dcs: Option<archlab::consensus::StoreKind>,
        /// Set an app setting on every app host for this run (`database.consistency=none`, to
        /// try what the session guard prevents); repeatable. Not remembered by `restart`.
        #[arg(long, value_parser = parse_setting)]
        app_setting: Vec<(String, String)>,
        /// Also start the monitoring host (Prometheus, exporters, a live dashboard) in a budget
        /// of its own, outside the stage's measured hosts; prints the dashboard's URL.
        #[arg(long)]
        monitor: bool,
        /// Emulate the distances of the stage file (stage 6's PoPs: each waits its `origin_ms`
        /// before a request to the origin). Off by default.
        #[arg(long)]
        distance: bool,
    },
    /// Serve every host's CPU used and budget as Prometheus metrics (the monitoring host runs
    /// this; see `up --monitor`).
    HostMetrics {
        /// Stage number or name.
        stage: String,
        /// `address:port` to listen on.
        #[arg(long)]
        listen: String,
    },
    /// Restart a stage's app hosts one at a time behind its gateway (a rolling restart).
    Restart {
        /// Stage number or name.
        stage: String,
        /// What to restart: `app`.
        #[arg(value_parser = ["app"])]
        service: String,
    },
    /// Stop the processes the lab started.
    Down {
        /// Stage number or name; all stages when omitted.
        stage: Option<String>,
    },
    /// Show every host of every stage the lab has state for.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write the deterministic benchmark data set (skipped if already there).
    Seed {
        /// Stage number or name (default: 1).
        #[arg(default_value = "1")]
        stage: String,
        /// Users to create.
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Articles to create.
        #[arg(long, default_value_t = 10_000)]
        articles: usize,
        /// Images (20-200 KB each; one per user becomes its profile image).
        #[arg(long, default_value_t = 2_000)]
        images: usize,
        /// Seed of the generator: same seed, same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// List the stages the lab implements.
    Stages,
    /// Bring a stage up (fresh), seed it, warm it up, measure it, verify every acknowledged write,
    /// bring it down. Default: a sweep for the highest rate meeting p99 <= 100 ms.
    Bench {
        /// Stage number or name.
        stage: String,
        #[command(flatten)]
        bench: BenchArgs,
        /// Write the result JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// App hosts behind the gateway, 1 to 8 (stages with an app cluster).
        #[arg(long)]
        app_hosts: Option<u8>,
        /// Database replicas, 0 to 4 (stages with replicas; stage 8: Patroni hosts beside the
        /// first, 1 to 3).
        #[arg(long)]
        replicas: Option<u8>,
        /// Database shards, 1 to 4 (stage 7 on).
        #[arg(long)]
        shards: Option<u8>,
        /// The consensus store Patroni keeps its leader key in (stage 8 on; default: etcd).
        #[arg(long, value_enum)]
        dcs: Option<archlab::consensus::StoreKind>,
        /// Measure the stage without its hosts of this role (e.g. `cache`); repeatable.
        #[arg(long, value_enum)]
        without: Vec<archlab::stage::Role>,
        /// Give a host (or every replica of one) this CPU budget: `db=1.0`, `app=0.1`,
        /// `app-1=0.05`; repeatable.
        #[arg(long, value_parser = parse_budget)]
        budget: Vec<(String, f64)>,
        /// How the gateway chooses an app host (stages with a gateway).
        #[arg(long, value_parser = ["round_robin", "least_loaded"])]
        gateway_selection: Option<String>,
        /// Set an app setting on every app host: `database.consistency=none`; repeatable.
        #[arg(long, value_parser = parse_setting)]
        app_setting: Vec<(String, String)>,
        /// Emulate the stage file's distances (stage 6: the PoPs' way to the origin, and the
        /// harness's clients' way to their PoP). Off by default, so capacities compare with the
        /// stages before.
        #[arg(long)]
        distance: bool,
    },
    /// Every implemented stage in order, each compared with the one before; writes
    /// `index.html`, `report.md` and one JSON per stage.
    Tour {
        #[command(flatten)]
        bench: BenchArgs,
        /// A short tour for CI: small data set, short steps.
        #[arg(long)]
        quick: bool,
        /// Only these stages (numbers or names, comma-separated); default: every stage.
        #[arg(long, value_delimiter = ',')]
        stages: Vec<String>,
        /// Report folder.
        #[arg(long, default_value = "report")]
        out: PathBuf,
        /// Also write each result as stages/NN-name/results/tour-<workload>.json under this
        /// checkout (how the committed tour is refreshed).
        #[arg(long)]
        into_stages: Option<PathBuf>,
    },
    /// Run a stage under a fixed load, break one service (kill -9, or SIGSTOP), bring it back, and
    /// report errors, unknown outcomes, latency around the fault, time to recover, lost writes.
    Drill {
        /// Stage number or name.
        stage: String,
        /// What to break (each value is explained below).
        #[arg(value_enum)]
        fault: archlab::drill::Fault,
        /// The service to break.
        #[arg(long, value_enum, default_value = "database")]
        service: archlab::stage::Role,
        /// The host to break, by name (`db-2`: stage 7's shard 1); the service's first host if
        /// not given.
        #[arg(long)]
        host: Option<String>,
        /// Where `coordinator-crash` makes the app's two-phase commit coordinator abort.
        #[arg(long, value_enum)]
        point: Option<archlab::drill::TwoPhasePoint>,
        /// Database replicas, 0 to 4 (stages with replicas; stage 7: dealt to the shards in
        /// turn, so `--replicas 2` gives each of two shards one; stage 8: Patroni hosts beside
        /// the first, 1 to 3).
        #[arg(long)]
        replicas: Option<u8>,
        /// Database shards, 1 to 4 (stage 7 on).
        #[arg(long)]
        shards: Option<u8>,
        /// The consensus store Patroni keeps its leader key in (stage 8 on; default: etcd).
        #[arg(long, value_enum)]
        dcs: Option<archlab::consensus::StoreKind>,
        /// How the primary waits for its replica (stage 8: `async`, `sync`, `sync-strict`),
        /// set in the running cluster before the load; asynchronous by default.
        #[arg(long, value_enum)]
        replication: Option<archlab::patroni::Replication>,
        /// Built-in workload or a workload file.
        #[arg(long, default_value = "read-heavy")]
        workload: String,
        /// Offered rate, requests per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Measured time.
        #[arg(long, default_value = "30s", value_parser = loadtest::parse_duration)]
        duration: std::time::Duration,
        /// When the fault begins: this long after the stage first answered in the measured time
        /// (its first whole second with a success, after the first; the report gives the moment).
        #[arg(long, default_value = "10s", value_parser = loadtest::parse_duration)]
        at: std::time::Duration,
        /// How long the service stays broken [default: 5s; 2s with --quick].
        #[arg(long, value_parser = loadtest::parse_duration)]
        outage: Option<std::time::Duration>,
        /// A short drill for CI: small data set, the fault 2 s after the stage first answers,
        /// and the load ends once the stage has recovered (at most 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Set an app setting on every app host: `database.consistency=none` (to count what the
        /// session guard prevents); repeatable.
        #[arg(long, value_parser = parse_setting)]
        app_setting: Vec<(String, String)>,
        /// Watch it live: start the monitoring host and print the dashboard's URL.
        #[arg(long)]
        monitor: bool,
        /// Run the drill this many times, each on a fresh stage (a claim such as "sync strict
        /// loses no acknowledged write" needs many trials, not one): with `--out x.json` each
        /// trial is written as `x-01.json`, `x-02.json`, ..., and a table of all of them as
        /// `x-trials.md`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        trials: u16,
        /// Write the result JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Render `report.md` and `index.html` from result files (e.g. the committed ones).
    Report {
        /// Result files, in stage order.
        files: Vec<PathBuf>,
        /// Report folder.
        #[arg(long, default_value = "report")]
        out: PathBuf,
        /// Refuse results from different commits, data sets or machines (they are always
        /// marked as mixed; this makes it an error).
        #[arg(long)]
        strict: bool,
    },
    /// Compare two result files.
    Compare {
        /// The baseline.
        a: PathBuf,
        /// The contender.
        b: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct BenchArgs {
    /// Built-in workload (read-heavy, read-articles, write-heavy, media, url, logins) or a workload .toml
    /// file. Default: read-heavy for `bench`, both read-heavy and write-heavy for `tour`.
    #[arg(long)]
    workload: Option<String>,
    /// Open loop at this rate instead of a sweep.
    #[arg(long, conflicts_with = "closed")]
    rate: Option<f64>,
    /// Closed loop instead of a sweep.
    #[arg(long)]
    closed: bool,
    /// p99 bound of the sweep.
    #[arg(long, default_value = "100ms", value_parser = loadtest::parse_duration)]
    target_p99: std::time::Duration,
    /// Measured time per run (per sweep step).
    #[arg(long, default_value = "10s", value_parser = loadtest::parse_duration)]
    duration: std::time::Duration,
    /// Warm-up before each measurement (each sweep step), not measured.
    #[arg(long, default_value = "3s", value_parser = loadtest::parse_duration)]
    warmup: std::time::Duration,
    /// Warm-up of the fresh stage before a sweep's first step (cold caches and buffers), not
    /// measured.
    #[arg(long, default_value = "15s", value_parser = loadtest::parse_duration)]
    stage_warmup: std::time::Duration,
    /// Connections of the harness.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seeded users the harness logs in as and writes for (the first N; at most the data set's
    /// users). More users spread a sharded stage's writes more evenly over its shards.
    #[arg(long, default_value_t = loadtest::workload::DEFAULT_USERS)]
    users: usize,
    /// Leave the stage up afterwards.
    #[arg(long)]
    keep_up: bool,
    /// Watch each stage live: start its monitoring host and print the dashboard's URL (the
    /// exporters' queries then count against the database and cache budgets).
    #[arg(long)]
    monitor: bool,
    /// Only the clients of this edge PoP (`edge-near`, `edge-far`; stage 6 on). Default: the
    /// clients spread over every PoP, each at its PoP's distance (`distance` in the stage file).
    #[arg(long, conflicts_with = "client_distance")]
    clients_at: Option<String>,
    /// Every client this far from the stage's endpoint (a wait before each request), to compare
    /// a stage without edges with one whose far PoP stands near its clients (`85ms`: stage 6's
    /// far clients, 5 ms to their PoP plus 80 ms from it to the origin).
    #[arg(long, value_parser = loadtest::parse_duration)]
    client_distance: Option<std::time::Duration>,
}

impl BenchArgs {
    fn options(&self, workload: &str, quick: bool) -> BenchOptions {
        let plan = match (self.rate, self.closed) {
            (Some(rate), _) => loadtest::Plan::Open { rate },
            (None, true) => loadtest::Plan::Closed,
            (None, false) => loadtest::Plan::Sweep {
                start_rate: if quick { 100.0 } else { 200.0 },
                stage_warmup: if quick { secs(3) } else { self.stage_warmup },
                target_p99_ms: self.target_p99.as_secs_f64() * 1000.0,
                max_error_rate: 0.001,
                max_rate: 100_000.0,
            },
        };
        let (duration, warmup, data) = if quick {
            (secs(2), secs(1), QUICK_DATA)
        } else {
            (self.duration, self.warmup, SeedSpec::default())
        };
        BenchOptions {
            workload: workload.to_owned(),
            plan,
            duration,
            warmup,
            connections: self.connections,
            users: self.users.min(data.users),
            data,
            fresh: true,
            keep_up: self.keep_up,
            monitor: self.monitor,
            clients: match (&self.clients_at, self.client_distance) {
                (Some(pop), _) => archlab::bench::Clients::At(pop.clone()),
                (None, Some(distance)) => archlab::bench::Clients::Distance(distance),
                (None, None) => archlab::bench::Clients::Spread,
            },
        }
    }
}

/// The small data set of `--quick` runs: seeds in seconds, still has every kind of row.
const QUICK_DATA: SeedSpec = SeedSpec {
    users: 100,
    articles: 1_000,
    images: 100,
    seed: 42,
};

/// The workloads a tour climbs the ladder with by default.
const TOUR_WORKLOADS: [&str; 2] = ["read-heavy", "write-heavy"];

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (state, net) = (cli.state_dir, cli.net);
    match cli.command {
        Command_::Up {
            stage,
            fresh,
            app_hosts,
            replicas,
            shards,
            dcs,
            app_setting,
            monitor,
            distance,
        } => {
            let layout = Layout {
                app_hosts,
                replicas,
                shards,
                dcs,
            };
            let options = UpOptions {
                fresh,
                layout,
                app_settings: app_setting,
                monitor,
                distance,
            };
            up(&state, net, &stage, options).await
        }
        Command_::HostMetrics { stage, listen } => host_metrics(&state, net, &stage, &listen).await,
        Command_::Down { stage } => down(&state, net, stage),
        Command_::Status { json } => status(&state, net, json).await,
        Command_::Seed {
            stage,
            users,
            articles,
            images,
            seed,
        } => {
            seed_stage(
                &state,
                net,
                &stage,
                SeedSpec {
                    users,
                    articles,
                    images,
                    seed,
                },
            )
            .await
        }
        Command_::Bench {
            stage,
            bench,
            out,
            app_hosts,
            replicas,
            shards,
            dcs,
            without,
            budget,
            gateway_selection,
            app_setting,
            distance,
        } => {
            let variant = Variant {
                app_settings: app_setting,
                layout: Layout {
                    app_hosts,
                    replicas,
                    shards,
                    dcs,
                },
                without,
                budget,
                gateway_selection,
                distance,
            };
            bench_stage(&state, net, &stage, &bench, out.as_deref(), variant).await
        }
        Command_::Tour {
            bench,
            quick,
            stages,
            out,
            into_stages,
        } => {
            tour(
                &state,
                net,
                &bench,
                quick,
                &stages,
                &out,
                into_stages.as_deref(),
            )
            .await
        }
        Command_::Drill {
            stage,
            fault,
            service,
            host,
            point,
            replicas,
            shards,
            dcs,
            replication,
            workload,
            rate,
            duration,
            at,
            outage,
            quick,
            app_setting,
            monitor,
            trials,
            out,
        } => {
            let layout = Layout {
                app_hosts: None,
                replicas,
                shards,
                dcs,
            };
            let options = DrillOptions {
                fault,
                service,
                host,
                point,
                workload,
                rate,
                // The quick run ends when the stage has recovered, however long that takes on
                // the machine at hand: a killed PostgreSQL's crash recovery took 5.4 s at 0.2
                // core on a loaded machine here, 12.5 s while the whole test suite ran, and 18 s
                // on a CI machine (2026-12-06), where a fixed 24 s run ended before the stage
                // recovered. Two minutes bound it: no stage takes a tenth of that here.
                duration: if quick { secs(120) } else { duration },
                ends_when_recovered: quick,
                warmup: if quick { secs(1) } else { secs(5) },
                at: if quick { secs(2) } else { at },
                outage: outage.unwrap_or(if quick { secs(2) } else { secs(5) }),
                data: if quick {
                    SeedSpec {
                        users: 50,
                        articles: 300,
                        images: 50,
                        seed: 42,
                    }
                } else {
                    SeedSpec::default()
                },
                timeout: archlab::drill::REQUEST_TIMEOUT,
                replication,
                monitor,
            };
            drill_stage(
                &state,
                net,
                &stage,
                layout,
                &app_setting,
                &options,
                trials,
                out.as_deref(),
            )
            .await
        }
        Command_::Report { files, out, strict } => report(&files, &out, strict),
        Command_::Compare { a, b } => {
            println!(
                "{}",
                archlab::bench::compare(&read_report(&a)?, &read_report(&b)?)
            );
            Ok(())
        }
        Command_::Restart { stage, service: _ } => restart(&state, net, &stage).await,
        Command_::Stages => {
            for stage in Stage::all()? {
                println!(
                    "{:>2}  {:<12} {:>5.2} cores  {}",
                    stage.number,
                    stage.name,
                    stage.total_cores(),
                    stage.title
                );
            }
            Ok(())
        }
    }
}

fn progress(line: &str) {
    println!("  {line}");
}

/// How `archlab up` was asked to bring a stage up.
struct UpOptions {
    fresh: bool,
    layout: Layout,
    app_settings: Vec<(String, String)>,
    monitor: bool,
    distance: bool,
}

/// `archlab up`.
async fn up(state: &Path, net: u8, key: &str, options: UpOptions) -> anyhow::Result<()> {
    let UpOptions {
        fresh,
        layout,
        app_settings,
        monitor,
        distance,
    } = options;
    let lab = Lab::new(state, Lab::default_conduit_bin()?);
    let mut stage = if layout == Layout::default() {
        lab.as_brought_up(Stage::find(key)?.on_network(net), net)?
    } else {
        Stage::find_with(key, layout)?.on_network(net)
    };
    for (key, value) in &app_settings {
        stage = stage.with_app_setting(key, value)?;
    }
    if distance {
        stage = stage.with_distance()?;
    }
    if !fresh && lab.has_state(&stage) {
        // A stage that has run keeps its layout; changing a host count needs a fresh start.
        let running = lab.as_brought_up(stage.clone(), net)?;
        if running.layout() != stage.layout() {
            anyhow::bail!(
                "stage {} was brought up with {} app hosts, {} replicas and {} database hosts: \
                 `archlab up {} --fresh` to change that",
                stage.number,
                running.app_host_count(),
                running.replica_hosts().len(),
                running.database_hosts().len(),
                stage.number
            );
        }
    }
    println!(
        "stage {}: {} — {} ({} cores)",
        stage.number,
        stage.name,
        stage.title,
        stage.total_cores()
    );
    lab.up(&stage, fresh, &progress).await?;
    let monitor = if monitor {
        progress(&format!(
            "monitoring host ({}, {} core, outside the stage's cost)",
            archlab::monitor::MonitorServer::address_for(&stage),
            archlab::monitor::MONITOR_SIZE.cores()
        ));
        Some(lab.start_monitor(&stage).await?)
    } else {
        None
    };
    for s in lab.status(&stage).await? {
        println!(
            "  {:<11} {:<12} {:<7} {}:{:<5} pid {:<7} {}{}{}",
            s.host,
            s.role,
            s.size,
            s.address,
            s.port,
            s.pid.map_or("-".into(), |p| p.to_string()),
            if s.healthy { "healthy" } else { "NOT HEALTHY" },
            s.replica_lag
                .map_or(String::new(), |lag| format!(" ({lag})")),
            match s.leads {
                Some(true) => " (leader)",
                Some(false) => " (follower)",
                None => "",
            },
        );
    }
    println!("state: {}", state.display());
    if let Some(monitor) = monitor {
        println!("prometheus: {}", monitor.url());
        println!("dashboard: {}", monitor.dashboard_url());
    }
    println!("endpoint: {}", stage.endpoint());
    Ok(())
}

/// `archlab host-metrics`: runs until killed (the monitoring host stops it).
async fn host_metrics(state: &Path, net: u8, key: &str, listen: &str) -> anyhow::Result<()> {
    let lab = Lab::new(state, PathBuf::new());
    let stage = lab.as_brought_up(Stage::find(key)?.on_network(net), net)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    archlab::monitor::serve_host_metrics(&lab, &stage, listener).await
}

/// `archlab down`.
fn down(state: &Path, net: u8, key: Option<String>) -> anyhow::Result<()> {
    let lab = Lab::new(state, PathBuf::new());
    let stages = match key {
        Some(key) => vec![Stage::find(&key)?.on_network(net)],
        None => all_stages(net)?
            .into_iter()
            .filter(|s| lab.has_state(s))
            .collect(),
    };
    for stage in stages {
        let stage = lab.as_brought_up(stage, net)?;
        println!("stage {}: {}", stage.number, stage.name);
        lab.down(&stage, &progress)?;
    }
    println!("down");
    Ok(())
}

/// `archlab status`.
async fn status(state: &Path, net: u8, json: bool) -> anyhow::Result<()> {
    let lab = Lab::new(state, PathBuf::new());
    let mut all = Vec::new();
    for stage in all_stages(net)?.into_iter().filter(|s| lab.has_state(s)) {
        let stage = lab.as_brought_up(stage, net)?;
        for service in lab.status(&stage).await? {
            all.push((stage.endpoint(), service));
        }
    }
    if json {
        let services: Vec<_> = all
            .iter()
            .map(|(endpoint, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["endpoint"] = endpoint.clone().into();
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "state_dir": state, "services": services,
            }))?
        );
        return Ok(());
    }
    if all.is_empty() {
        println!("no stage has been brought up in {}", state.display());
        return Ok(());
    }
    println!(
        "{:<6} {:<11} {:<12} {:<7} {:<17} {:<8} {:<24} {:<20} log",
        "stage", "host", "role", "size", "address", "pid", "health", "cpu budget"
    );
    for (_, s) in &all {
        println!(
            "{:<6} {:<11} {:<12} {:<7} {:<17} {:<8} {:<24} {:<20} {}",
            s.stage,
            s.host,
            s.role,
            s.size,
            format!("{}:{}", s.address, s.port),
            s.pid.map_or("-".into(), |p| p.to_string()),
            match (s.healthy, s.replica_lag, s.leads) {
                (true, Some(lag), _) => format!("healthy ({lag})"),
                (true, None, Some(true)) => "healthy (leader)".into(),
                (true, None, Some(false)) => "healthy (follower)".into(),
                (true, None, None) => "healthy".into(),
                _ if s.pid.is_some() => "unhealthy".into(),
                _ => "stopped".into(),
            },
            format!(
                "{} ({})",
                s.cpu_budget,
                if s.cpu_budget_enforced {
                    "enforced"
                } else {
                    "not enforced"
                }
            ),
            s.log.display()
        );
    }
    Ok(())
}

/// `archlab seed`.
async fn seed_stage(state: &Path, net: u8, key: &str, spec: SeedSpec) -> anyhow::Result<()> {
    let lab = Lab::new(state, Lab::default_conduit_bin()?);
    let stage = lab.as_brought_up(Stage::find(key)?.on_network(net), net)?;
    println!("seeding stage {} ({})", stage.number, spec.describe());
    let started = std::time::Instant::now();
    lab.seed(&stage, &spec).await?;
    println!("seeded in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A measurement variant of a stage (`bench` options that change the stage itself).
struct Variant {
    layout: Layout,
    app_settings: Vec<(String, String)>,
    without: Vec<archlab::stage::Role>,
    budget: Vec<(String, f64)>,
    gateway_selection: Option<String>,
    distance: bool,
}

/// `archlab bench`.
async fn bench_stage(
    state: &Path,
    net: u8,
    key: &str,
    args: &BenchArgs,
    out: Option<&Path>,
    variant: Variant,
) -> anyhow::Result<()> {
    loadtest::record_checkout_state();
    let mut stage = Stage::find_with(key, variant.layout)?.on_network(net);
    if let Some(selection) = variant.gateway_selection {
        stage = stage.with_gateway_selection(&selection)?;
    }
    for role in variant.without {
        stage = stage.without(role)?;
    }
    for (key, value) in &variant.app_settings {
        stage = stage.with_app_setting(key, value)?;
    }
    for (host, cores) in variant.budget {
        stage = stage.with_budget(&host, cores)?;
    }
    if variant.distance {
        stage = stage.with_distance()?;
    }
    let lab = Lab::new(state, Lab::default_conduit_bin()?);
    let workload = args.workload.as_deref().unwrap_or("read-heavy");
    let report = archlab::bench::bench(&lab, &stage, &args.options(workload, false), &|l| {
        eprintln!("{l}")
    })
    .await?;
    println!("{}", report.markdown());
    if let Some(out) = out {
        write_json(out, &report)?;
    }
    Ok(())
}

/// `archlab tour`: every stage (or the chosen ones) with every tour workload, in stage order.
async fn tour(
    state: &Path,
    net: u8,
    args: &BenchArgs,
    quick: bool,
    only: &[String],
    out: &Path,
    into_stages: Option<&Path>,
) -> anyhow::Result<()> {
    loadtest::record_checkout_state();
    let lab = Lab::new(state, Lab::default_conduit_bin()?);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut stages = Vec::new();
    for stage in all_stages(net)? {
        let chosen = only.is_empty()
            || only.iter().any(|k| {
                k.trim_start_matches('0') == stage.number.to_string()
                    || *k == stage.name
                    || *k == stage.folder
            });
        if chosen {
            stages.push(stage);
        }
    }
    let workloads: Vec<&str> = match &args.workload {
        Some(w) => vec![w.as_str()],
        None => TOUR_WORKLOADS.to_vec(),
    };
    let runs = stages.len() * workloads.len();
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for workload in &workloads {
        for stage in &stages {
            eprintln!(
                "== [{}/{runs}, {:.0} min so far] stage {}: {} — {} ({} cores), workload {workload}",
                reports.len() + 1,
                started.elapsed().as_secs_f64() / 60.0,
                stage.number,
                stage.name,
                stage.title,
                stage.total_cores()
            );
            let report = archlab::bench::bench(&lab, stage, &args.options(workload, quick), &|l| {
                eprintln!("  {l}")
            })
            .await?;
            write_json(
                &out.join(format!("{}-{workload}.json", stage.folder)),
                &report,
            )?;
            if let Some(root) = into_stages {
                write_json(
                    &root
                        .join("stages")
                        .join(&stage.folder)
                        .join("results")
                        .join(format!("tour-{workload}.json")),
                    &report,
                )?;
            }
            reports.push(report);
        }
    }
    // Stage order within each workload.
    reports.sort_by_key(|r| {
        (
            workloads.iter().position(|w| *w == r.workload),
            r.stage.unwrap_or(0),
        )
    });
    write_reports(out, &reports)
}

/// `archlab drill`: one trial, or `trials` of them, each on a fresh stage.
#[allow(clippy::too_many_arguments)]
async fn drill_stage(
    state: &Path,
    net: u8,
    key: &str,
    layout: Layout,
    app_settings: &[(String, String)],
    options: &DrillOptions,
    trials: u16,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    loadtest::record_checkout_state();
    let mut stage = Stage::find_with(key, layout)?.on_network(net);
    for (key, value) in app_settings {
        stage = stage.with_app_setting(key, value)?;
    }
    let conduit = if options.fault == archlab::drill::Fault::CoordinatorCrash {
        Lab::drills_conduit_bin()?
    } else {
        Lab::default_conduit_bin()?
    };
    let lab = Lab::new(state, conduit);
    let mut reports = Vec::new();
    for trial in 1..=trials {
        if trials > 1 {
            eprintln!("trial {trial} of {trials}");
        }
        let report = archlab::drill::drill(&lab, &stage, options, &|l| eprintln!("{l}")).await?;
        println!("{}", archlab::drill::markdown(&report));
        if let Some(out) = out {
            let path = if trials > 1 {
                with_suffix(out, &format!("-{trial:02}"), "json")
            } else {
                out.to_owned()
            };
            write_json(&path, &report)?;
        }
        reports.push(report);
    }
    if trials > 1 {
        let table = archlab::drill::trials_markdown(&reports);
        println!("{table}");
        if let Some(out) = out {
            let path = with_suffix(out, "-trials", "md");
            std::fs::write(&path, table).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("written: {}", path.display());
        }
    }
    Ok(())
}

/// `dir/name.json` with `suffix` after the name and the extension `extension`:
/// `dir/name-01.json`, `dir/name-trials.md`.
fn with_suffix(path: &Path, suffix: &str, extension: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "drill".into(), |s| s.to_string_lossy());
    path.with_file_name(format!("{stem}{suffix}.{extension}"))
}

/// `archlab report`.
fn report(files: &[PathBuf], out: &Path, strict: bool) -> anyhow::Result<()> {
    let reports = files
        .iter()
        .map(|f| read_report(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mixed = loadtest::report::mixed_provenance(&reports);
    if strict && !mixed.is_empty() {
        anyhow::bail!(
            "these results are not one comparison (--strict): {}",
            mixed.join("; ")
        );
    }
    write_reports(out, &reports)
}

/// `archlab restart`.
async fn restart(state: &Path, net: u8, key: &str) -> anyhow::Result<()> {
    let lab = Lab::new(state, Lab::default_conduit_bin()?);
    let stage = lab.as_brought_up(Stage::find(key)?.on_network(net), net)?;
    println!(
        "stage {}: rolling restart of {} app hosts",
        stage.number,
        stage.app_host_count()
    );
    lab.restart_apps(&stage, &progress).await?;
    println!("restarted");
    Ok(())
}

/// `NAME=CORES`.
fn parse_budget(text: &str) -> Result<(String, f64), String> {
    let (name, cores) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=CORES"))?;
    let cores: f64 = cores
        .parse()
        .map_err(|_| format!("{cores:?} is not a number of cores"))?;
    Ok((name.to_owned(), cores))
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{text:?} is not SECTION.NAME=VALUE"))
}

fn all_stages(net: u8) -> anyhow::Result<Vec<Stage>> {
    Ok(Stage::all()?
        .into_iter()
        .map(|s| s.on_network(net))
        .collect())
}

fn write_json(path: &Path, report: &loadtest::report::Report) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("written: {}", path.display());
    Ok(())
}

fn read_report(path: &Path) -> anyhow::Result<loadtest::report::Report> {
    serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a result file", path.display()))
}

/// `report.md` and `index.html` for `reports`, in stage order.
fn write_reports(out: &Path, reports: &[loadtest::report::Report]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let markdown = archlab::bench::tour_markdown(reports);
    std::fs::write(out.join("report.md"), &markdown)?;
    std::fs::write(
        out.join("index.html"),
        loadtest::html::render("archlab tour", reports),
    )?;
    println!("{markdown}");
    println!("report: {}", out.join("index.html").display());
    Ok(())
}
