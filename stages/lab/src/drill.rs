//! `archlab drill`: run a stage under a fixed load, break one of its services on purpose, and
//! report what the clients saw: errors and unknown outcomes around the fault, the latency of the
//! seconds around it, how long it took to recover after the service came back, and the verify
//! phase (acknowledged writes lost: must be 0).
//!
//! Faults hit a whole service, its process tree included (PostgreSQL's backends, nginx's workers):
//! - `kill`: SIGKILL, as a crashed host would; after the outage the lab starts it again (the
//!   database recovers from its write-ahead log);
//! - `freeze`: SIGSTOP, a host that hangs without dying; after the outage, SIGCONT;
//! - `pause-replay` (a replica): it stops replaying the primary's WAL (`pg_wal_replay_pause()`)
//!   but keeps answering, with ever older data, until the outage ends;
//! - `apply-delay` (a replica): it applies each commit [`APPLY_DELAY`] late
//!   (`recovery_min_apply_delay`), a replica that lags yet stays within the app's lag bound.
//!
//! On a stage with replicas the harness also reads each acknowledged write twice as its writer
//! (read-your-writes, then monotonic reads), so the report counts both kinds of violation.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context;
use loadtest::{report::Drill, report::Report, Options, Plan};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{
    budget,
    lab::{Lab, SeedSpec},
    stage::{Role, Stage, APP_PORT},
};

/// What to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL the service, start it again after the outage.
    Kill,
    /// SIGSTOP the service, SIGCONT after the outage.
    Freeze,
    /// Restart every host of the service one at a time (`archlab restart`; app hosts only).
    Restart,
    /// Pause WAL replay on a replica, resume it after the outage.
    PauseReplay,
    /// Delay every commit's apply on a replica by [`APPLY_DELAY`] for the outage.
    ApplyDelay,
}

/// The apply delay of `apply-delay`: half the app's default lag bound (`replica_max_lag_ms`,
/// 1 s), so the replica lags visibly on every commit yet stays in rotation; only the session
/// guard keeps a user's reads off it.
pub const APPLY_DELAY: Duration = Duration::from_millis(500);

/// A drill's settings.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The fault.
    pub fault: Fault,
    /// The service it hits (`database`, `app`, `files`).
    pub service: Role,
    /// Workload name or file.
    pub workload: String,
    /// Fixed offered rate (requests per second).
    pub rate: f64,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// When the fault begins, from the start of measurement.
    pub at: Duration,
    /// How long the service stays down or frozen.
    pub outage: Duration,
    /// Data set.
    pub data: SeedSpec,
    /// Per-request timeout of the harness (a frozen service makes requests wait this long).
    pub timeout: Duration,
    /// Watch it live: start the monitoring host once the stage is up (see
    /// [`crate::bench::BenchOptions::monitor`] for what that costs the measurement).
    pub monitor: bool,
}

fn signal_tree(root: i32, signal: Signal) {
    for pid in budget::process_tree(&[root]) {
        // A process that exited meanwhile is simply gone.
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Runs the drill on a fresh stage and returns the harness's report with its `drill` section.
pub async fn drill(
    lab: &Lab,
    stage: &Stage,
    options: &DrillOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let host = stage
        .hosts
        .iter()
        .find(|h| h.roles.contains(&options.service))
        .with_context(|| {
            format!(
                "stage {} has no {} service",
                stage.number,
                options.service.as_str()
            )
        })?
        .clone();
    progress(&format!(
        "stage {}: bringing it up (fresh) and seeding",
        stage.number
    ));
    lab.up(stage, true, &|_| {}).await?;
    let result = async {
        if options.monitor {
            lab.watch(stage, progress).await?;
        }
        lab.seed(stage, &options.data)?;
        run(lab, stage, &host, options, progress).await
    }
    .await;
    progress(&format!("stage {}: bringing it down", stage.number));
    if let Err(e) = lab.down(stage, &|_| {}) {
        progress(&format!("could not bring the stage down: {e:#}"));
    }
    result
}

async fn run(
    lab: &Lab,
    stage: &Stage,
    host: &crate::stage::Host,
    options: &DrillOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let live = Arc::new(loadtest::run::Live::default());
    let harness = Options {
        target: stage.endpoint(),
        workload: options.workload.clone(),
        plan: Plan::Open { rate: options.rate },
        duration: options.duration,
        warmup: options.warmup,
        connections: 64,
        timeout: options.timeout,
        seed: 1,
        users: loadtest::workload::DEFAULT_USERS,
        email_domain: "seed.archlab.test".into(),
        password: "archlab-seed-password".into(),
        verify: true,
        monotonic_checks: !stage.replica_hosts().is_empty(),
        live: Some(live.clone()),
        // Clients spread over the stage's PoPs (stage 6), moving to another when theirs is down.
        pops: crate::bench::Clients::Spread.pops(stage)?,
    };
    let replication = crate::replication::ReplicationWatch::start(lab, stage).await;
    let load =
        tokio::spawn(
            async move { loadtest::execute(&harness, &|line| eprintln!("  {line}")).await },
        );

    // Wait for measurement to begin, then break the service at `at` and restore it after `outage`.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !live.measuring.load(Ordering::Relaxed) {
        if Instant::now() > deadline || load.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let measure_start = Instant::now();
    tokio::time::sleep(options.at).await;
    let pid = lab
        .service_pid(stage, host, options.service)
        .with_context(|| {
            format!(
                "{} on {} is not running",
                options.service.as_str(),
                host.name
            )
        })?;
    let in_flight_at_fault = match stage.gateway_host() {
        Some(_) if options.service == Role::App => {
            gateway_in_flight(&stage.endpoint(), &format!("{}:{APP_PORT}", host.address)).await
        }
        _ => None,
    };
    let injected_at = measure_start.elapsed().as_secs_f64();
    match options.fault {
        Fault::Kill | Fault::Freeze => {
            let signal = if options.fault == Fault::Kill {
                Signal::SIGKILL
            } else {
                Signal::SIGSTOP
            };
            progress(&format!(
                "{injected_at:.1} s: {signal} {} on {} (pid {pid} and its children)",
                options.service.as_str(),
                host.name
            ));
            signal_tree(pid, signal);
        }
        Fault::Restart => {
            progress(&format!(
                "{injected_at:.1} s: rolling restart of the {} app hosts",
                stage.app_host_count()
            ));
        }
        Fault::PauseReplay | Fault::ApplyDelay => {
            let replica = lab.replica_server(stage, host)?;
            let sql = if options.fault == Fault::PauseReplay {
                "SELECT pg_wal_replay_pause()".to_owned()
            } else {
                format!(
                    "ALTER SYSTEM SET recovery_min_apply_delay = '{}ms'",
                    APPLY_DELAY.as_millis()
                )
            };
            progress(&format!("{injected_at:.1} s: {sql} on {}", host.name));
            replica_sql(&replica, &sql).await?;
        }
    }
    let restore = match options.fault {
        Fault::Kill => {
            tokio::time::sleep(options.outage).await;
            lab.up(stage, false, &|_| {}).await
        }
        Fault::Freeze => {
            tokio::time::sleep(options.outage).await;
            signal_tree(pid, Signal::SIGCONT);
            Ok(())
        }
        Fault::Restart if options.service == Role::App => {
            lab.restart_apps(stage, &|line| progress(line)).await
        }
        Fault::Restart => Err(anyhow::anyhow!("only app hosts have a rolling restart")),
        Fault::PauseReplay | Fault::ApplyDelay => {
            tokio::time::sleep(options.outage).await;
            let replica = lab.replica_server(stage, host)?;
            let sql = if options.fault == Fault::PauseReplay {
                "SELECT pg_wal_replay_resume()"
            } else {
                "ALTER SYSTEM RESET recovery_min_apply_delay"
            };
            replica_sql(&replica, sql).await
        }
    };
    let restored_at = measure_start.elapsed().as_secs_f64();
    progress(&format!(
        "{restored_at:.1} s: {} restored",
        options.service.as_str()
    ));
    let mut report = load.await.context("the load task")??;
    if let Some(watch) = replication {
        report.replication = Some(watch.finish().await);
    }
    restore.context("restoring the service")?;

    // Recovered: the first second after the restore from which no second has errors.
    let from = restored_at.floor() as u64;
    let recovered_at = report
        .series
        .iter()
        .filter(|p| p.t >= from)
        .map(|p| p.t)
        .find(|t| {
            report
                .series
                .iter()
                .filter(|q| q.t >= *t)
                .all(|q| q.errors == 0)
        });
    report.stage = Some(stage.number);
    report.drill = Some(Drill {
        fault: format!("{:?}", options.fault).to_lowercase(),
        host: format!("{} ({})", host.name, options.service.as_str()),
        injected_at_s: (injected_at * 10.0).round() / 10.0,
        restored_at_s: (restored_at * 10.0).round() / 10.0,
        recovered_at_s: recovered_at,
        time_to_recover_s: recovered_at
            .map(|t| ((t as f64 - restored_at).max(0.0) * 10.0).round() / 10.0),
        in_flight_at_fault,
        app_settings: stage
            .app_settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    });
    report.provenance.stage = Some(stage.number);
    Ok(report)
}

/// Runs `sql` on a replica as the superuser, then reloads its configuration (for `ALTER SYSTEM`).
async fn replica_sql(replica: &crate::replica::ReplicaServer, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect_with(&replica.server.connect_options("postgres", "postgres"))
            .await
            .context("connecting to the replica")?;
    // One statement per call: `ALTER SYSTEM` refuses to run inside a transaction block.
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .with_context(|| format!("running {sql}"))?;
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .context("reloading the replica's configuration")?;
    Ok(())
}

/// `gateway_upstream_in_flight` for `upstream`, read from the gateway's metrics now.
async fn gateway_in_flight(endpoint: &str, upstream: &str) -> Option<u64> {
    let client = crate::lab::http_client().ok()?;
    let text = client
        .get(format!("{endpoint}/gateway/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let sample = format!("gateway_upstream_in_flight{{upstream=\"{upstream}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&sample).and_then(|v| v.trim().parse().ok()))
}

/// A Markdown summary of a drill.
pub fn markdown(report: &Report) -> String {
    let mut s = report.markdown();
    if let Some(d) = &report.drill {
        s.push_str(&format!(
            "\nDrill: `{}` on {}{} at {} s, restored at {} s; recovered at {}.\n\n| operation | ok | failed | unknown |\n|---|---:|---:|---:|\n",
            d.fault,
            d.host,
            if d.app_settings.is_empty() {
                String::new()
            } else {
                format!(" (app: {})", d.app_settings.join(", "))
            },
            d.injected_at_s,
            d.restored_at_s,
            d.recovered_at_s.map_or("never (within the run)".to_owned(), |t| format!("{t} s ({} s after the restore)", d.time_to_recover_s.unwrap_or(0.0))),
        ));
        for (name, c) in &report.operations {
            s.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                c.ok, c.failed, c.unknown
            ));
        }
        s.push_str("\n| second | ok | errors | p99 ms |\n|---:|---:|---:|---:|\n");
        for p in &report.series {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                p.t, p.ok, p.errors, p.p99_ms
            ));
        }
    }
    s
}
