//! `archlab bench` and `archlab tour`: bring a stage up, seed it, warm it up, measure it with the
//! harness while sampling each host's CPU, verify every acknowledged write, bring it down; and do
//! that for every stage in order, writing the JSON, Markdown and HTML reports.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use loadtest::{report::HostUsage, report::Report, Options, Plan};

use crate::{
    budget,
    lab::{Lab, SeedSpec},
    stage::Stage,
};

/// A machine this busy (all cores, averaged over the run) was the bottleneck itself: no host
/// budget could have been the limit. Flagged in the result.
const MACHINE_BOUND: f64 = 0.95;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Workload name or file.
    pub workload: String,
    /// Open, closed or sweep.
    pub plan: Plan,
    /// Measured time (per sweep step).
    pub duration: Duration,
    /// Warm-up before each measurement.
    pub warmup: Duration,
    /// Connections.
    pub connections: usize,
    /// Data set.
    pub data: SeedSpec,
    /// Start from an empty stage (a fresh `initdb`, a fresh seed).
    pub fresh: bool,
    /// Leave the stage up afterwards.
    pub keep_up: bool,
}

/// Runs one stage's benchmark and returns its report, with hosts and provenance filled in.
pub async fn bench(
    lab: &Lab,
    stage: &Stage,
    options: &BenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    progress(&format!(
        "stage {}: bringing it up{}",
        stage.number,
        if options.fresh { " (fresh)" } else { "" }
    ));
    let result = async {
        lab.up(stage, options.fresh, &|line| progress(line.trim()))
            .await?;
        progress(&format!(
            "stage {}: seeding {} users, {} articles, {} images",
            stage.number, options.data.users, options.data.articles, options.data.images
        ));
        lab.seed(stage, &options.data)?;
        measure(lab, stage, options, progress).await
    }
    .await;
    // Down whatever happened, so a failed bench leaves no process holding the stage's addresses;
    // a failure to stop is reported but does not throw away a measurement.
    if !options.keep_up || result.is_err() {
        progress(&format!("stage {}: bringing it down", stage.number));
        if let Err(e) = lab.down(stage, &|_| {}) {
            progress(&format!(
                "stage {}: could not bring it down: {e:#}",
                stage.number
            ));
        }
    }
    result
}

async fn measure(
    lab: &Lab,
    stage: &Stage,
    options: &BenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let harness = Options {
        target: stage.endpoint(),
        workload: options.workload.clone(),
        plan: options.plan,
        duration: options.duration,
        warmup: options.warmup,
        connections: options.connections,
        timeout: Duration::from_secs(10),
        seed: 1,
        users: loadtest::workload::DEFAULT_USERS,
        email_domain: "seed.archlab.test".into(),
        password: "archlab-seed-password".into(),
        verify: true,
        live: Some(Arc::new(loadtest::run::Live::default())),
    };
    let ticker = harness
        .live
        .clone()
        .map(|live| tokio::spawn(loadtest::show_progress(live)));

    // Sample every host's CPU once a second while the harness runs.
    let hosts: Vec<(crate::stage::Host, Vec<i32>)> = stage
        .hosts
        .iter()
        .map(|h| (h.clone(), lab.host_pids(stage, h)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Sample every host's CPU once a second, counting only seconds inside a measurement window
    // (not the data-set load, warm-ups or verify phases).
    let live = harness.live.clone();
    let sampler = {
        let stop = stop.clone();
        let hosts = hosts.clone();
        tokio::task::spawn_blocking(move || {
            let measuring = || {
                live.as_ref()
                    .is_some_and(|l| l.measuring.load(Ordering::Relaxed))
            };
            let mut last: Vec<f64> = hosts
                .iter()
                .map(|(_, pids)| budget::cpu_seconds(pids))
                .collect();
            let mut last_machine = budget::machine_ticks();
            let mut used = vec![0.0; hosts.len()];
            let mut series: Vec<Vec<f64>> = vec![Vec::new(); hosts.len()];
            let (mut busy, mut total, mut wall) = (0u64, 0u64, 0.0);
            while !stop.load(Ordering::Relaxed) {
                let was_measuring = measuring();
                let tick = Instant::now();
                std::thread::sleep(Duration::from_secs(1));
                let counted = was_measuring && measuring();
                let machine = budget::machine_ticks();
                for (i, (_, pids)) in hosts.iter().enumerate() {
                    let now = budget::cpu_seconds(pids);
                    if counted {
                        let delta = (now - last[i]).max(0.0);
                        series[i].push((delta * 100.0).round() / 100.0);
                        used[i] += delta;
                    }
                    last[i] = now;
                }
                if counted {
                    busy += machine.0 - last_machine.0;
                    total += machine.1 - last_machine.1;
                    wall += tick.elapsed().as_secs_f64();
                }
                last_machine = machine;
            }
            (series, used, wall, busy as f64 / total.max(1) as f64)
        })
    };
    let result = loadtest::execute(&harness, progress).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    stop.store(true, Ordering::Relaxed);
    let (series, used, wall, busy) = sampler.await.context("CPU sampler")?;
    let mut report = result?;

    report.stage = Some(stage.number);
    report.hosts = hosts
        .iter()
        .enumerate()
        .map(|(i, (host, pids))| HostUsage {
            name: host.name.clone(),
            role: host
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            address: host.address.clone(),
            cpu_budget: host.cpu_budget,
            enforced: pids.first().is_some_and(|p| lab.is_budgeted(host, *p)),
            cpu_seconds_used: (used[i] * 100.0).round() / 100.0,
            cores_used: (used[i] / wall.max(0.001) * 100.0).round() / 100.0,
            cores_series: series[i].clone(),
        })
        .collect();
    let p = &mut report.provenance;
    p.stage = Some(stage.number);
    p.hosts = report.hosts.clone();
    p.machine_bound = Some(busy >= MACHINE_BOUND);
    p.versions = versions(lab);
    Ok(report)
}

/// Versions of the components a result depends on.
fn versions(lab: &Lab) -> std::collections::BTreeMap<String, String> {
    let mut v = std::collections::BTreeMap::new();
    let run = |program: &Path, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    if let Ok(bin) = crate::postgres::bin_dir() {
        if let Some(s) = run(&bin.join("postgres"), "--version") {
            v.insert("postgres".into(), s);
        }
    }
    if let Some(s) = run(lab.conduit_bin(), "--version") {
        v.insert("conduit".into(), s);
    }
    v.insert("archlab".into(), env!("CARGO_PKG_VERSION").into());
    v.insert(
        "cpu_budgets".into(),
        match lab.budgets() {
            budget::Controller::V1(_) => format!(
                "cgroup v1 cpu, period {} us (longer under 0.1 core: quota at least {} us)",
                budget::PERIOD_US,
                budget::MIN_QUOTA_US
            ),
            budget::Controller::V2(_) => {
                format!(
                    "cgroup v2 cpu.max, period {} us (longer under 0.1 core: quota at least {} us)",
                    budget::PERIOD_US,
                    budget::MIN_QUOTA_US
                )
            }
            budget::Controller::None(why) => format!("not enforced: {why}"),
        },
    );
    v
}

/// Markdown comparing consecutive reports (the tour's `report.md`).
pub fn tour_markdown(reports: &[Report]) -> String {
    let mut s = String::from("# archlab tour\n\n| stage | workload | mode | rate req/s | throughput req/s | p50 ms | p99 ms | errors | lost writes | vs previous |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, r) in reports.iter().enumerate() {
        let rate = r.rate_rps.unwrap_or(r.throughput_rps);
        let vs = if i == 0 {
            "-".to_owned()
        } else {
            let prev = reports[i - 1]
                .rate_rps
                .unwrap_or(reports[i - 1].throughput_rps);
            format!("{:.2}x", rate / prev.max(0.001))
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {:.3} % | {} | {} |\n",
            r.stage.map_or("-".into(), |n| n.to_string()),
            r.workload,
            r.mode,
            rate,
            r.throughput_rps,
            r.latency_ms.corrected.p50,
            r.latency_ms.corrected.p99,
            r.error_rate() * 100.0,
            r.checks.lost_writes,
            vs
        ));
    }
    s.push('\n');
    for r in reports {
        s.push_str(&r.markdown());
        s.push('\n');
    }
    s
}

/// `archlab compare`: key figures of two result files side by side.
pub fn compare(a: &Report, b: &Report) -> String {
    let row = |name: &str, x: f64, y: f64, unit: &str| {
        format!(
            "| {name} | {x:.2} {unit} | {y:.2} {unit} | {} |\n",
            if x > 0.0 {
                format!("{:.2}x", y / x)
            } else {
                "-".into()
            }
        )
    };
    let mut s = format!(
        "| figure | A: {} | B: {} | B/A |\n|---|---:|---:|---:|\n",
        a.stage.map_or("loadtest".into(), |n| format!("stage {n}")),
        b.stage.map_or("loadtest".into(), |n| format!("stage {n}"))
    );
    s.push_str(&row(
        "rate (offered / highest passing)",
        a.rate_rps.unwrap_or(0.0),
        b.rate_rps.unwrap_or(0.0),
        "req/s",
    ));
    s.push_str(&row(
        "throughput",
        a.throughput_rps,
        b.throughput_rps,
        "req/s",
    ));
    s.push_str(&row(
        "p50 (corrected)",
        a.latency_ms.corrected.p50,
        b.latency_ms.corrected.p50,
        "ms",
    ));
    s.push_str(&row(
        "p99 (corrected)",
        a.latency_ms.corrected.p99,
        b.latency_ms.corrected.p99,
        "ms",
    ));
    s.push_str(&row(
        "p99.9 (corrected)",
        a.latency_ms.corrected.p999,
        b.latency_ms.corrected.p999,
        "ms",
    ));
    s.push_str(&row(
        "error rate",
        a.error_rate() * 100.0,
        b.error_rate() * 100.0,
        "%",
    ));
    s.push_str(&row(
        "lost writes",
        a.checks.lost_writes as f64,
        b.checks.lost_writes as f64,
        "",
    ));
    s
}
