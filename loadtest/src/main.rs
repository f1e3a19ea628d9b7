//! `loadtest`: drive any HTTP target with an open-loop (default), closed-loop or sweep workload
//! and write a result file.
//!
//! ```text
//! loadtest --target http://127.10.1.1:8080 --workload read-heavy --rate 500 --duration 60s
//! loadtest --target http://127.0.0.1:80/ --workload url --closed --connections 64 --duration 10s
//! loadtest --target http://127.10.1.1:8080 --sweep --target-p99 100ms --out sweep.json
//! ```

use std::{io::IsTerminal, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::Parser;
use loadtest::{run::Live, Options, Plan};

#[derive(Parser)]
#[command(
    version,
    about = "archlab's load harness: open-loop HTTP load, coordinated-omission corrected, with correctness checks"
)]
struct Cli {
    /// Base URL of the server; for the `url` workload, the URL to GET.
    #[arg(long)]
    target: String,
    /// Built-in workload (read-heavy, write-heavy, media, url) or a workload .toml file.
    #[arg(long, default_value = "read-heavy")]
    workload: String,
    /// Offered rate, requests per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Closed loop: every connection sends as soon as it is answered (no schedule).
    #[arg(long, conflicts_with = "sweep")]
    closed: bool,
    /// Sweep: find the highest rate whose corrected p99 meets --target-p99 with errors under
    /// --sweep-max-errors; --rate is the first rate tried.
    #[arg(long)]
    sweep: bool,
    /// p99 bound for a sweep.
    #[arg(long, default_value = "100ms", value_parser = loadtest::parse_duration)]
    target_p99: Duration,
    /// Error-rate bound for a sweep, in percent.
    #[arg(long, default_value_t = 0.1)]
    sweep_max_errors: f64,
    /// Highest rate a sweep tries.
    #[arg(long, default_value_t = 200_000.0)]
    sweep_max_rate: f64,
    /// Measured time (per sweep step).
    #[arg(long, default_value = "30s", value_parser = loadtest::parse_duration)]
    duration: Duration,
    /// Warm-up before measuring, excluded from results.
    #[arg(long, default_value = "5s", value_parser = loadtest::parse_duration)]
    warmup: Duration,
    /// Connections: the bound on requests in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A request unanswered after this is counted as unknown (timed out).
    #[arg(long, default_value = "10s", value_parser = loadtest::parse_duration)]
    timeout: Duration,
    /// Seed of the request generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seeded users to log in as.
    #[arg(long, default_value_t = loadtest::workload::DEFAULT_USERS)]
    users: usize,
    /// Skip reading acknowledged writes back after the run.
    #[arg(long)]
    no_verify: bool,
    /// Read each acknowledged write a second time as its writer, right after the first read
    /// showed it, and count a second read that no longer shows it (monotonic reads). Adds one
    /// read per write.
    #[arg(long)]
    check_monotonic_reads: bool,
    /// A point of presence the clients are spread over instead of the target, with the clients'
    /// distance from it: `ADDR:PORT=5ms` (repeat for several; connection i goes to PoP i mod n,
    /// and moves to the next when its PoP refuses connections). The target still serves logins,
    /// the data set and the read-back of writes.
    #[arg(long = "pop", value_parser = loadtest::parse_pop)]
    pops: Vec<loadtest::Pop>,
    /// Exit non-zero if the corrected p99 is above this.
    #[arg(long, value_parser = loadtest::parse_duration)]
    max_p99: Option<Duration>,
    /// Exit non-zero if (failed + unknown + dropped) / scheduled is above this, in percent.
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// Write the result JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    if cli.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let plan = if cli.sweep {
        Plan::Sweep {
            start_rate: cli.rate,
            stage_warmup: cli.warmup,
            target_p99_ms: cli.target_p99.as_secs_f64() * 1000.0,
            max_error_rate: cli.sweep_max_errors / 100.0,
            max_rate: cli.sweep_max_rate,
        }
    } else if cli.closed {
        Plan::Closed
    } else {
        Plan::Open { rate: cli.rate }
    };
    let live = Arc::new(Live::default());
    let options = Options {
        target: cli.target.clone(),
        workload: cli.workload.clone(),
        plan,
        duration: cli.duration,
        warmup: cli.warmup,
        connections: cli.connections,
        timeout: cli.timeout,
        seed: cli.seed,
        users: cli.users,
        email_domain: "seed.archlab.test".into(),
        password: "archlab-seed-password".into(),
        verify: !cli.no_verify,
        live: Some(live.clone()),
        monotonic_checks: cli.check_monotonic_reads,
        pops: cli.pops.clone(),
    };
    let ticker = tokio::spawn(loadtest::show_progress(live));
    let result = loadtest::execute(&options, &|line| eprintln!("{line}")).await;
    ticker.abort();
    let report = result?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    println!("{}", report.markdown());
    if let Some(out) = &cli.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("written: {}", out.display());
    }
    let mut breached = Vec::new();
    if let Some(max) = cli.max_p99 {
        let max_ms = max.as_secs_f64() * 1000.0;
        if report.latency_ms.corrected.p99 > max_ms {
            breached.push(format!(
                "p99 {} ms > {max_ms} ms",
                report.latency_ms.corrected.p99
            ));
        }
    }
    if let Some(max) = cli.max_error_rate {
        if report.error_rate() * 100.0 > max {
            breached.push(format!(
                "error rate {:.3} % > {max} %",
                report.error_rate() * 100.0
            ));
        }
    }
    if report.checks.lost_writes > 0 {
        breached.push(format!(
            "{} acknowledged writes lost",
            report.checks.lost_writes
        ));
    }
    if !breached.is_empty() {
        bail!("thresholds breached: {}", breached.join("; "));
    }
    Ok(())
}
