//! # loadtest: archlab's load harness
//!
//! Open-loop load at a fixed rate with latency measured from each request's *scheduled* send time
//! (coordinated omission corrected, as wrk2 does) and from its actual send time; a closed loop;
//! and a sweep that finds the highest rate meeting a p99 target. It checks correctness under load:
//! every acknowledged write is read back by its writer at once (read-your-writes) and again after
//! the run (lost writes are reported by id); a request without an answer is *unknown*, never
//! *failed*.
//!
//! - [`client`]: a lean HTTP/1.1 keep-alive connection;
//! - [`run`]: the open and closed loops, and the verify phase;
//! - [`stats`]: histograms (constant memory), counts, per-second series;
//! - [`workload`]: workloads as data (`loadtest/workloads/*.toml`) over the target's data set;
//! - [`report`]: the result file (keys documented in `docs/results.md`) and its Markdown;
//! - [`html`]: a self-contained HTML report with SVG charts.
//!
//! `loadtest --target http://127.10.1.1:8080 --workload read-heavy --rate 500 --duration 60s`

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;

pub mod client;
pub mod html;
pub mod linearizability;
pub mod report;
pub mod run;
pub mod stats;
pub mod workload;

use report::{Cache, Checks, Latency, LatencyMs, Report, SeriesPoint, Sweep, SweepStep};
use run::{Mode, RunConfig};
use workload::{ConduitWorkload, DataSet, Workload, WorkloadFile};

/// Lost-write ids kept in a report.
const MAX_LOST_IDS: usize = 100;
/// Extra runs at the knee after a sweep: with the first, three measurements of the reported
/// rate, so a reader sees whether it holds, and how far its p99 moves, from run to run.
pub const KNEE_REPEATS: usize = 2;
/// Passing rates a sweep tries, highest first, to find a knee that holds in most of its runs:
/// past three, the sweep's own steps were noise-bound anyway, and the result says so.
const KNEE_CANDIDATES: usize = 3;
/// Rates a sweep tries at most (each miss is run twice): growing by half from 100 req/s reaches
/// 100,000 in 17 steps, and four bisections follow.
const MAX_SWEEP_RATES: usize = 24;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL of the target (`http://ADDR:PORT`, optionally with a path for the `url` workload).
    pub target: String,
    /// Workload name or file.
    pub workload: String,
    /// What to do.
    pub plan: Plan,
    /// Measured time (per step, for a sweep).
    pub duration: Duration,
    /// Unmeasured warm-up before each measurement.
    pub warmup: Duration,
    /// Connections.
    pub connections: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Seed of the request generators.
    pub seed: u64,
    /// Seeded users to log in as.
    pub users: usize,
    /// Domain of the seeded users' e-mail addresses.
    pub email_domain: String,
    /// Password of the seeded users.
    pub password: String,
    /// Read every acknowledged write back after the run.
    pub verify: bool,
    /// Live counters for a progress display.
    pub live: Option<Arc<run::Live>>,
    /// Read each acknowledged write a second time as its writer (see
    /// [`run::RunConfig::monotonic_checks`]).
    pub monotonic_checks: bool,
    /// Points of presence the clients are spread over instead of the target (stage 6's edge
    /// PoPs), or the target itself at a distance (`--pop`). Empty: the target, no wait.
    pub pops: Vec<Pop>,
}

/// A point of presence: where some clients send their requests, and how far they are from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pop {
    /// Its address.
    pub addr: SocketAddr,
    /// The emulated client-to-PoP round trip: each request of its clients waits this long before
    /// it is sent (and the wait counts in its latency, as a real distance would).
    pub delay: Duration,
}

/// Parses `ADDR:PORT` or `ADDR:PORT=DELAY` (`127.10.6.32:8080=5ms`).
pub fn parse_pop(text: &str) -> Result<Pop, String> {
    let (addr, delay) = text.split_once('=').unwrap_or((text, "0ms"));
    let addr = addr
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("{addr:?} is not ADDRESS:PORT: {e}"))?;
    Ok(Pop {
        addr,
        delay: parse_duration(delay)?,
    })
}

/// Open loop, closed loop, or sweep.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// A fixed rate.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// Every connection as fast as it is answered.
    Closed,
    /// The highest rate whose corrected p99 stays under `target_p99_ms` with errors under
    /// `max_error_rate`. One noisy step cannot fool it: the target is warmed up at `start_rate`
    /// for `stage_warmup` before the first step, every miss is run again before it is believed,
    /// and the knee is measured [`KNEE_REPEATS`] more times so its spread is on record.
    Sweep {
        /// First rate tried.
        start_rate: f64,
        /// Unmeasured load at `start_rate` before the first step (cold caches, cold buffers).
        stage_warmup: Duration,
        /// p99 bound in ms.
        target_p99_ms: f64,
        /// Error-rate bound (0.001 = 0.1 %).
        max_error_rate: f64,
        /// Highest rate tried.
        max_rate: f64,
    },
}

/// Parses `30s`, `250ms`, `2m`, `500us` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 30s, 250ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "us" => n / 1e6,
        _ => return Err(format!("unknown unit in {text:?} (use us, ms, s, m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Splits `http://host:port/path` into a socket address and a path.
pub fn parse_target(target: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = target
        .strip_prefix("http://")
        .context("the target must be an http:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    Ok((addr, path))
}

/// Builds the workload: reads the data set from the target unless the workload is `url` only.
pub async fn prepare(options: &Options) -> anyhow::Result<(String, Arc<dyn Workload>)> {
    let (addr, path) = parse_target(&options.target)?;
    let (name, file) = WorkloadFile::load(&options.workload)?;
    let url_only = file
        .weights
        .iter()
        .all(|(k, w)| *k == workload::OpKind::Url || *w == 0);
    let data = if url_only {
        DataSet::default()
    } else {
        DataSet::load(
            addr,
            options.users,
            &options.email_domain,
            &options.password,
        )
        .await
        .context("reading the data set from the target (is it up and seeded?)")?
    };
    let workload = ConduitWorkload::new(&file, data, &path, options.seed)?;
    Ok((name, Arc::new(workload)))
}

/// Runs the plan and returns the report (without hosts; the caller adds provenance it knows).
pub async fn execute(
    options: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let (addr, _) = parse_target(&options.target)?;
    let (name, workload) = prepare(options).await?;
    let config = |mode| RunConfig {
        target: addr,
        mode,
        duration: options.duration,
        warmup: options.warmup,
        connections: options.connections,
        timeout: options.timeout,
        seed: options.seed,
        live: options.live.clone(),
        monotonic_checks: options.monotonic_checks,
        pops: options.pops.clone(),
    };
    match options.plan {
        Plan::Open { rate } => {
            progress(&format!(
                "open loop: {rate:.0} req/s for {:?} over {} connections",
                options.duration, options.connections
            ));
            let out = run::run(&config(Mode::Open { rate }), workload).await;
            Ok(finish(options, &name, "open", Some(rate), out, addr).await)
        }
        Plan::Closed => {
            progress(&format!(
                "closed loop: {} connections for {:?}",
                options.connections, options.duration
            ));
            let out = run::run(&config(Mode::Closed), workload).await;
            Ok(finish(options, &name, "closed", None, out, addr).await)
        }
        Plan::Sweep {
            start_rate,
            stage_warmup,
            target_p99_ms,
            max_error_rate,
            max_rate,
        } => {
            if !stage_warmup.is_zero() {
                progress(&format!(
                    "sweep: warming up at {start_rate:.0} req/s for {stage_warmup:?} (not measured)"
                ));
                let warm = RunConfig {
                    warmup: stage_warmup,
                    duration: Duration::ZERO,
                    ..config(Mode::Open { rate: start_rate })
                };
                run::run(&warm, workload.clone()).await;
            }
            let mut steps: Vec<SweepStep> = Vec::new();
            // Every rate that met the target, with its report, highest last.
            let mut passes: Vec<(f64, Report)> = Vec::new();
            let mut low = 0.0;
            let mut high: Option<f64> = None;
            let mut rate = start_rate;
            // One step at `rate`: its report and whether it met the target.
            let step = |rate: f64, repeat: bool, steps: &mut Vec<SweepStep>| {
                let index = steps.len();
                if let Some(live) = &options.live {
                    live.step.store(index, std::sync::atomic::Ordering::Relaxed);
                }
                let workload = workload.clone();
                let name = name.clone();
                async move {
                    progress(&format!(
                        "sweep: {rate:.0} req/s{} ...",
                        if repeat { " again" } else { "" }
                    ));
                    let out = run::run(&config(Mode::Open { rate }), workload).await;
                    let report = finish(options, &name, "open", Some(rate), out, addr).await;
                    let error_rate = report.error_rate();
                    let passed = report.latency_ms.corrected.p99 <= target_p99_ms
                        && error_rate < max_error_rate;
                    let c = &report.counts;
                    progress(&format!(
                        "sweep: {rate:.0} req/s -> {:.0} ok/s, p99 {} ms, errors {:.3} % (failed {}, unknown {}, dropped {}): {}",
                        report.throughput_rps,
                        report.latency_ms.corrected.p99,
                        error_rate * 100.0,
                        c.failed,
                        c.unknown,
                        c.dropped,
                        if passed { "met" } else { "missed" }
                    ));
                    let record = SweepStep {
                        rate_rps: rate,
                        throughput_rps: report.throughput_rps,
                        p50_ms: report.latency_ms.corrected.p50,
                        p99_ms: report.latency_ms.corrected.p99,
                        error_rate,
                        passed,
                        repeat,
                        host_cores: Default::default(),
                        host_peak_cores: Default::default(),
                    };
                    (report, passed, record)
                }
            };
            // Grow by half until a rate fails (twice in a row), then bisect between the last pass
            // and the first failure until they are within 4 %.
            for _ in 0..MAX_SWEEP_RATES {
                let (mut report, mut passed, record) = step(rate, false, &mut steps).await;
                steps.push(record);
                if !passed {
                    let (again, again_passed, record) = step(rate, true, &mut steps).await;
                    steps.push(record);
                    if again_passed {
                        (report, passed) = (again, true);
                    }
                }
                if passed {
                    low = rate;
                    passes.push((rate, report));
                } else {
                    high = Some(rate);
                }
                rate = match high {
                    None if rate * 1.5 <= max_rate => rate * 1.5,
                    None => break,
                    Some(h) if (h - low) / h.max(1.0) > 0.04 => (low + h) / 2.0,
                    Some(_) => break,
                };
            }
            // The knee must hold: run the highest passing rate [`KNEE_REPEATS`] more times and
            // keep it only if most of its runs met the target; otherwise try the next lower
            // passing rate the same way (at most [`KNEE_CANDIDATES`] of them).
            passes.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut chosen: Option<(f64, Report)> = None;
            for (rate, report) in passes.into_iter().take(KNEE_CANDIDATES) {
                let mut met = 1;
                for _ in 0..KNEE_REPEATS {
                    let (_, passed, record) = step(rate, true, &mut steps).await;
                    steps.push(record);
                    met += usize::from(passed);
                }
                let holds = 2 * met > 1 + KNEE_REPEATS;
                chosen = Some((rate, report));
                if holds {
                    break;
                }
                progress(&format!(
                    "sweep: {rate:.0} req/s met the target in {met} of {} runs: not a knee that holds",
                    1 + KNEE_REPEATS
                ));
            }
            low = chosen.as_ref().map_or(0.0, |(rate, _)| *rate);
            let mut report = match chosen {
                Some((_, r)) => r,
                None => {
                    // Nothing met the target: report the last step, with a max rate of 0.
                    let out =
                        run::run(&config(Mode::Open { rate: start_rate }), workload.clone()).await;
                    finish(options, &name, "open", Some(start_rate), out, addr).await
                }
            };
            report.mode = "sweep".into();
            report.rate_rps = Some(low);
            report.sweep = Some(Sweep {
                target_p99_ms,
                max_error_rate,
                max_rate_rps: low,
                steps,
            });
            Ok(report)
        }
    }
}

async fn finish(
    options: &Options,
    workload: &str,
    mode: &str,
    rate: Option<f64>,
    out: run::RunOutput,
    addr: SocketAddr,
) -> Report {
    let verified = if options.verify && !out.acks.is_empty() {
        run::verify(addr, &out.acks, options.timeout).await
    } else {
        run::Verified::default()
    };
    let s = out.summary;
    let hits = s.cache_hits;
    let misses = s.cache_misses;
    Report {
        stage: None,
        workload: workload.to_owned(),
        mode: mode.to_owned(),
        rate_rps: rate,
        throughput_rps: (s.counts.ok as f64 / out.measured_secs.max(0.001) * 10.0).round() / 10.0,
        latency_ms: LatencyMs {
            corrected: Latency::from(&s.corrected),
            uncorrected: Latency::from(&s.uncorrected),
        },
        send_lag_ms: Latency::from(&s.send_lag),
        counts: s.counts,
        checks: Checks {
            acknowledged_writes: out.acks.len() as u64 + out.acks_untracked,
            lost_writes: verified.lost.len() as u64,
            lost_write_ids: verified.lost.into_iter().take(MAX_LOST_IDS).collect(),
            unverified_writes: verified.unverified.len() as u64,
            ryw_checks: out.ryw_checks,
            ryw_violations: out.ryw_violations,
            ryw_examples: out.ryw_examples,
            monotonic_checks: out.monotonic_checks,
            monotonic_violations: out.monotonic_violations,
        },
        cache: Cache {
            hits,
            misses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            edge: (!s.edge.is_empty() || !options.pops.is_empty()).then(|| {
                report::EdgeAnswers::new(
                    s.edge.clone(),
                    out.failovers,
                    options
                        .pops
                        .iter()
                        .map(|p| report::PopUsed {
                            addr: p.addr.to_string(),
                            delay_ms: p.delay.as_secs_f64() * 1000.0,
                        })
                        .collect(),
                )
            }),
        },
        sweep: None,
        capacity: None,
        replication: None,
        operations: s.operations.clone(),
        operation_latency: s.operation_latency.clone(),
        drill: None,
        hosts: Vec::new(),
        series: s
            .seconds
            .iter()
            .map(|x| SeriesPoint {
                t: x.t,
                ok: x.ok,
                errors: x.errors,
                p50_ms: x.p50_ms,
                p99_ms: x.p99_ms,
                max_ms: x.max_ms,
                cache_hits: x.cache_hits,
                cache_misses: x.cache_misses,
                cache_bypasses: x.cache_bypasses,
            })
            .collect(),
        curve: s.curve,
        provenance: report::Provenance {
            workload: workload.to_owned(),
            rate_rps: rate,
            seed: options.seed,
            // What was measured: the duration, or less if the caller ended the run early.
            duration_s: (out.measured_secs * 10.0).round() / 10.0,
            warmup_s: options.warmup.as_secs_f64(),
            connections: options.connections,
            ..machine_provenance()
        },
    }
}

/// Reads the checkout's commit and whether it is dirty now, for every result this process makes.
/// A command that measures calls it before it starts, so its results describe the code it was
/// started from, even if someone edits or commits while it runs (a tour takes 40 minutes);
/// otherwise the state is read when the first result is made.
pub fn record_checkout_state() {
    let _ = git_state();
}

/// The checkout's commit and whether it is dirty, read once per process
/// ([`record_checkout_state`]).
fn git_state() -> (Option<String>, Option<bool>) {
    static STATE: std::sync::OnceLock<(Option<String>, Option<bool>)> = std::sync::OnceLock::new();
    STATE
        .get_or_init(|| {
            let git = |args: &[&str]| {
                std::process::Command::new("git")
                    .args(args)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            };
            // Dirty: tracked files that could change what was measured differ from the commit.
            // Result files and prose cannot, and a tour rewrites committed results as it goes,
            // so they are left out.
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude,glob)**/results/**",
                ":(exclude,glob)**/*.md",
                ":(exclude,glob)docs/**",
            ])
            .map(|s| !s.is_empty());
            (git(&["rev-parse", "HEAD"]), dirty)
        })
        .clone()
}

/// What this machine is: CPU, cores, OS, and the project's commit when run from a checkout.
pub fn machine_provenance() -> report::Provenance {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let distro = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".to_owned(), |v| v.trim_matches('"').to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (git_commit, git_dirty) = git_state();
    let command: Vec<String> = std::env::args().collect();
    report::Provenance {
        git_commit,
        git_dirty,
        cpu_model,
        // The machine's processors, not `available_parallelism()`: inside a CPU budget (the
        // harness runs in one) that reports the budget, rounded up, instead of the machine.
        cores: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1),
        os: format!("Linux {} ({distro})", kernel.trim()),
        command: command.join(" "),
        generated_at: now_rfc3339(),
        ..report::Provenance::default()
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date dependency for one timestamp.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Prints one status line per second from `live` until aborted: rewritten in place on a terminal,
/// plain lines otherwise (logs, CI).
pub async fn show_progress(live: Arc<run::Live>) {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering;
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = live.done.load(Ordering::Relaxed);
        let failed = live.failed.load(Ordering::Relaxed);
        let waiting = live
            .released
            .load(Ordering::Relaxed)
            .saturating_sub(live.started.load(Ordering::Relaxed));
        // "failed" here: answered with an error or not at all. A sweep's "errors" also count the
        // sends still waiting when a step ends (dropped), which the last column shows building up.
        let line = format!(
            "{:>4} s  {:>8} req/s  {:>10} done  {:>6} failed  {:>6} waiting to be sent",
            started.elapsed().as_secs(),
            done - last,
            done,
            failed,
            waiting
        );
        last = done;
        if terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pop_is_an_address_with_an_optional_distance() {
        let far = parse_pop("127.10.6.32:8080=85ms").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(far.addr.to_string(), "127.10.6.32:8080");
        assert_eq!(far.delay, Duration::from_millis(85));
        let near = parse_pop("http://127.10.6.31:8080").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(near.delay, Duration::ZERO);
        assert!(parse_pop("edge-near=5ms").is_err());
        assert!(parse_pop("127.0.0.1:80=soon").is_err());
    }

    #[test]
    fn the_offload_counts_what_a_pop_answered_among_what_it_may_share() {
        let outcomes = [
            ("HIT", 90),
            ("STALE", 3),
            ("UPDATING", 2),
            ("MISS", 5),
            ("PASS", 400),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let edge = report::EdgeAnswers::new(outcomes, 0, Vec::new());
        assert_eq!(
            edge.offload,
            Some(0.95),
            "PASS is not shareable, so not counted"
        );
        let none = report::EdgeAnswers::new(Default::default(), 0, Vec::new());
        assert_eq!(none.offload, None);
    }
}
