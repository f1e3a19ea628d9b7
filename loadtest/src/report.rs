//! The result file: one JSON document per run, with stable keys documented in
//! `docs/results.md`, and its Markdown summary.

use serde::{Deserialize, Serialize};

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl From<&crate::stats::Percentiles> for Latency {
    fn from(p: &crate::stats::Percentiles) -> Self {
        Self {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

/// Both latency views.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyMs {
    /// From the scheduled send time (what a user waits).
    pub corrected: Latency,
    /// From the actual send time (service time, as closed-loop tools report).
    pub uncorrected: Latency,
}

/// Correctness under load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checks {
    /// Writes the server acknowledged (2xx) during the run.
    pub acknowledged_writes: u64,
    /// Of those, writes not found after the run.
    pub lost_writes: u64,
    /// Which ones (up to 100).
    pub lost_write_ids: Vec<String>,
    /// Writes whose check got no definite answer after retries (5xx, no connection).
    #[serde(default)]
    pub unverified_writes: u64,
    /// Reads by a writer right after its write.
    pub ryw_checks: u64,
    /// Of those, reads that did not show the write.
    pub ryw_violations: u64,
    /// Some of them (and of the monotonic-read violations), described.
    pub ryw_examples: Vec<String>,
    /// Second reads by a writer whose first read showed the write (with
    /// `--check-monotonic-reads`).
    #[serde(default)]
    pub monotonic_checks: u64,
    /// Of those, reads that no longer showed it.
    #[serde(default)]
    pub monotonic_violations: u64,
}

/// Cache behaviour seen in `x-cache` headers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cache {
    /// `x-cache: hit` responses.
    pub hits: u64,
    /// `x-cache: miss` responses.
    pub misses: u64,
    /// hits / (hits + misses), or null without any.
    pub hit_ratio: Option<f64>,
    /// What the edge PoPs answered (stage 6 on); absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeAnswers>,
}

/// The edge PoPs' answers as the harness saw them (their `x-cache` header).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EdgeAnswers {
    /// Successful responses by outcome: HIT, STALE, UPDATING, REVALIDATED (answered from a
    /// PoP's store), MISS (fetched from the origin and stored), PASS (not shareable: a write, a
    /// logged-in reader).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Of the responses a PoP may share (all but PASS), the share it answered from its store:
    /// the origin offload on the anonymous reads. Null without any.
    pub offload: Option<f64>,
    /// Clients that moved to another PoP after theirs refused a connection (`--pop` failover).
    pub failovers: u64,
    /// The PoPs the clients were spread over, with the emulated client-to-PoP wait (ms).
    pub pops: Vec<PopUsed>,
}

/// One PoP of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PopUsed {
    /// `address:port`.
    pub addr: String,
    /// The wait before each request its clients send (ms).
    pub delay_ms: f64,
}

impl EdgeAnswers {
    /// From the outcome counts: the offload computed.
    pub fn new(
        outcomes: std::collections::BTreeMap<String, u64>,
        failovers: u64,
        pops: Vec<PopUsed>,
    ) -> Self {
        let at_edge: u64 = ["HIT", "STALE", "UPDATING", "REVALIDATED"]
            .iter()
            .filter_map(|k| outcomes.get(*k))
            .sum();
        let shareable = at_edge + outcomes.get("MISS").copied().unwrap_or(0);
        Self {
            offload: (shareable > 0).then(|| at_edge as f64 / shareable as f64),
            outcomes,
            failovers,
            pops,
        }
    }
}

/// One step of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepStep {
    /// Offered rate.
    pub rate_rps: f64,
    /// Achieved successes per second.
    pub throughput_rps: f64,
    /// Corrected p50 (absent in files from before it was kept: 0).
    #[serde(default)]
    pub p50_ms: f64,
    /// Corrected p99.
    pub p99_ms: f64,
    /// Failed + unknown + dropped over scheduled.
    pub error_rate: f64,
    /// Whether it met the target.
    pub passed: bool,
    /// A repeat of a rate already run: a miss confirmed before it is believed, or the knee
    /// measured again for its spread.
    #[serde(default)]
    pub repeat: bool,
    /// Average cores each host used during this step, by host name (filled in by `archlab`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub host_cores: std::collections::BTreeMap<String, f64>,
    /// The busiest measured second of this step, per host (filled in by `archlab`): a host held
    /// at its budget for a few seconds (a stall) hides in the step's average. Stage 7's sweeps
    /// failed steps with no host over 0.09 of its 0.1 core on average and one over 0.12 for a
    /// second.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub host_peak_cores: std::collections::BTreeMap<String, f64>,
}

/// A sweep's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    /// The p99 the rate had to meet.
    pub target_p99_ms: f64,
    /// The error rate it had to stay under.
    pub max_error_rate: f64,
    /// Highest rate that met both; 0 if none did.
    pub max_rate_rps: f64,
    /// Every step, in the order run.
    pub steps: Vec<SweepStep>,
}

/// What a stage buys and where it is stuck: a sweep's answer set against the stage's cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// Highest rate meeting the target (the sweep's answer), req/s.
    pub capacity_rps: f64,
    /// Cores of all the stage's hosts (what it costs).
    pub total_cores: f64,
    /// `capacity_rps / total_cores`.
    pub rps_per_core: f64,
    /// Runs at the capacity rate (the sweep's own and its repeats), and how many met the target.
    pub knee_runs: usize,
    /// See `knee_runs`.
    pub knee_passed: usize,
    /// Lowest and highest p99 (ms) of those runs: the knee's spread.
    pub knee_p99_ms: [f64; 2],
    /// Corrected p50 and p99 at the sweep's first rate, which every stage of a tour runs.
    pub reference: Option<ReferencePoint>,
    /// The host whose CPU came nearest its budget where the stage stopped meeting the target.
    pub bottleneck: Option<Bottleneck>,
    /// CPU the database hosts spent per request at the knee (ms): a cheap service-level signal.
    pub database_cpu_ms_per_request: Option<f64>,
}

/// The p50 and p99 at one rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReferencePoint {
    /// Offered rate.
    pub rate_rps: f64,
    /// Corrected p50, ms.
    pub p50_ms: f64,
    /// Corrected p99, ms.
    pub p99_ms: f64,
}

/// The bottleneck host of a sweep.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bottleneck {
    /// Host name.
    pub host: String,
    /// Its roles.
    pub role: String,
    /// Offered rate of the step it was read at: the first rate above the capacity (it missed).
    pub at_rate_rps: f64,
    /// Cores it used in that step.
    pub cores_used: f64,
    /// Its budget.
    pub cpu_budget: f64,
    /// `cores_used / cpu_budget`.
    pub utilization: f64,
    /// Whether it was at its budget (utilization at least 0.85); if not, no host budget was the
    /// limit (the machine, or something else such as lock waits or a pool).
    pub at_budget: bool,
}

/// A host of the stage under test and the CPU it used during the measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostUsage {
    /// Host name.
    pub name: String,
    /// Its roles.
    pub role: String,
    /// Its address.
    pub address: String,
    /// Its CPU budget in cores.
    pub cpu_budget: f64,
    /// Whether the budget was enforced.
    pub enforced: bool,
    /// CPU seconds its processes used during the measurement.
    pub cpu_seconds_used: f64,
    /// Average cores used (cpu seconds over wall seconds).
    pub cores_used: f64,
    /// Per-second cores used, for the chart.
    pub cores_series: Vec<f64>,
}

/// Where a result came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// `git rev-parse HEAD` of the project, if known.
    pub git_commit: Option<String>,
    /// Whether tracked files had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// Stage number, if a stage was measured.
    pub stage: Option<u8>,
    /// Hosts and budgets, with enforcement.
    pub hosts: Vec<HostUsage>,
    /// CPU model of this machine.
    pub cpu_model: String,
    /// Cores of this machine.
    pub cores: usize,
    /// Kernel and distribution.
    pub os: String,
    /// Versions of the components involved.
    pub versions: std::collections::BTreeMap<String, String>,
    /// Workload name.
    pub workload: String,
    /// Offered rate (open loop) or null.
    pub rate_rps: Option<f64>,
    /// Seed of the request generators.
    pub seed: u64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds (not measured).
    pub warmup_s: f64,
    /// Connections.
    pub connections: usize,
    /// The command that produced it.
    pub command: String,
    /// When (UTC, RFC 3339).
    pub generated_at: String,
    /// Whether the whole machine, not a host budget, was the limit (all cores busy).
    pub machine_bound: Option<bool>,
    /// Cores of the load harness's own CPU budget, if it ran in one.
    #[serde(default)]
    pub harness_cores: Option<f64>,
    /// The data set the stage was seeded with (`users=… articles=… images=… seed=…`).
    #[serde(default)]
    pub data_set: Option<String>,
}

/// One run's result file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Stage number, or null for a bare `loadtest` run.
    pub stage: Option<u8>,
    /// Workload name.
    pub workload: String,
    /// `open`, `closed` or `sweep`.
    pub mode: String,
    /// Offered rate (open loop); for a sweep, the highest passing rate; null for closed loop.
    pub rate_rps: Option<f64>,
    /// Successful responses per measured second.
    pub throughput_rps: f64,
    /// Latency percentiles.
    pub latency_ms: LatencyMs,
    /// How late sends left compared with their schedule (open loop).
    pub send_lag_ms: Latency,
    /// Outcome counts.
    pub counts: crate::stats::Counts,
    /// Correctness checks.
    pub checks: Checks,
    /// Cache headers seen.
    pub cache: Cache,
    /// Outcomes per operation kind.
    #[serde(default)]
    pub operations: std::collections::BTreeMap<String, crate::stats::OpCounts>,
    /// Latency per operation kind, and of writes per shards spanned (stage 7 on).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub operation_latency: std::collections::BTreeMap<String, crate::stats::OpLatency>,
    /// A fault drill's timeline, for `archlab drill`.
    #[serde(default)]
    pub drill: Option<Drill>,
    /// Sweep details, for a sweep.
    pub sweep: Option<Sweep>,
    /// Capacity, cost and bottleneck, for a sweep of a stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Replication lag and where reads went, for a stage with replicas (stage 5 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
    /// Hosts of the stage and the CPU they used.
    pub hosts: Vec<HostUsage>,
    /// Per-second series.
    pub series: Vec<SeriesPoint>,
    /// HDR percentile curve of corrected latency: [percentile, ms].
    pub curve: Vec<(f64, f64)>,
    /// Where it came from.
    pub provenance: Provenance,
}

/// A stage's replicas during a run: how far behind they were, and where the app sent reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Replication {
    /// Replay lag in ms as the primary measures it (`pg_stat_replication.replay_lag`: from a
    /// commit's flush on the primary to its replay on the replica), sampled every 100 ms over
    /// every replica, while it was known (PostgreSQL clears it once a replica has caught up).
    pub lag_ms: LagSummary,
    /// Requests' reads over the run (warm-up included), summed over app hosts, by server and
    /// route (`replica-1 any_replica`, `primary replicas_behind`, ...; see the app's
    /// `db::session::Route`).
    pub reads: std::collections::BTreeMap<String, u64>,
    /// Of those, the share that went to the primary because no replica had replayed far enough
    /// for the reading user (the session guard's cost in primary reads).
    pub guard_primary_share: f64,
}

/// Percentiles of lag samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagSummary {
    /// Samples taken (a replica with no lag to report gives none).
    pub samples: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl LagSummary {
    /// The summary of `samples` (ms), in any order.
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if samples.is_empty() {
                0.0
            } else {
                let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
                (samples[i] * 100.0).round() / 100.0
            }
        };
        Self {
            samples: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What a drill did and what it caused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drill {
    /// `kill` (SIGKILL the host's processes, start them again after the outage), `freeze`
    /// (SIGSTOP, then SIGCONT), `restart`, `pausereplay` or `applydelay` (a replica).
    pub fault: String,
    /// The host it hit.
    pub host: String,
    /// Second of measurement when the fault began.
    pub injected_at_s: f64,
    /// Second when the host was restored (started again, or continued).
    pub restored_at_s: f64,
    /// First second after the restore from which every later second had no errors (null: never).
    pub recovered_at_s: Option<u64>,
    /// Seconds from restore to recovery.
    pub time_to_recover_s: Option<f64>,
    /// Successes per second before the fault (the whole seconds before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_before: Option<f64>,
    /// First second after the restore whose successes reached 99 % of `throughput_before`
    /// (null: never within the run): "throughput back", where `recovered_at_s` is "no errors".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_back_at_s: Option<u64>,
    /// Requests the kill can have caught at the host (stage 4 on): those the gateway had in
    /// flight to it when the drill looked, just before the kill, plus those it sent there between
    /// that look and the moment after the kill. The most a kill can fail or leave unknown, since
    /// everything else is retried elsewhere or never sent there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_at_fault: Option<u64>,
    /// App settings the drill's variant changed (`APP_DATABASE__CONSISTENCY=none`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_settings: Vec<String>,
    /// Second of measurement when the app host's process died at its armed fault point
    /// (`coordinator-crash` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashed_at_s: Option<f64>,
    /// A sharded stage's state after the drill (stage 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardCheck>,
    /// The failover's timeline (stage 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// What a drill saw of a failover (stage 8), in seconds of measurement. The leader is polled
/// every 100 ms as the app polls it (`GET /primary` on every database host's Patroni, a host
/// slower than 250 ms not counted); the first acknowledged write is the drill's own probe, one
/// article posted through the stage's entry point every 100 ms from the fault on until one is
/// acknowledged (the harness's series has whole seconds only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failover {
    /// The consensus store (`etcd`, `zookeeper`).
    pub store: String,
    /// The database host that led before the fault.
    pub leader_before: String,
    /// The database host that leads at the end (null: none).
    pub leader_after: Option<String>,
    /// First poll after the fault at which no host answered as the leader.
    pub leader_lost_at_s: Option<f64>,
    /// First poll at which another host answered as the leader (its Patroni's `GET /primary`
    /// within the app's own bound): when the app can find it.
    pub new_leader_at_s: Option<f64>,
    /// Over etcd: when Patroni's leader key in the store first named another host, the decision
    /// itself; earlier than `new_leader_at_s` by however long the new leader's Patroni took to
    /// answer (a starved one: never, within the watch). Absent over ZooKeeper and in results made
    /// before 2026-12-06.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_key_at_s: Option<f64>,
    /// The host the key named then, or, if it never named another, the last it named (absent:
    /// the key was not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_key_holder: Option<String>,
    /// When the probe's first write was acknowledged once another host was seen leading.
    /// Results before 2026-12-05 23:45 take the first write *sent* after that (a write sent a
    /// moment before and answered by the new primary was left out: up to a second later).
    pub first_write_at_s: Option<f64>,
    /// How long the stage took no writes: from the last probe write acknowledged before the
    /// new leader was seen (or, without one, the fault) to that first write. Results before
    /// 2026-12-05 20:00 count from the fault (the same after a crash, which leaves no write
    /// before); between 20:00 and 23:45 a write *sent* before the new leader was seen counted
    /// as the old primary's even when the new one answered it (one crash trial: 1.1 s).
    pub writes_unavailable_s: Option<f64>,
    /// The probe's writes refused while it waited (503 each, or what else it got, in `refusals`).
    pub probe_refused: u64,
    /// Refusals by status, `"503": n`; anything but 503 is a defect.
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// PostgreSQL's timeline on the leader before and after (one more per promotion).
    pub timeline_before: Option<u64>,
    /// See `timeline_before`.
    pub timeline_after: Option<u64>,
    /// The consensus store's own leadership before the fault and at the end: its leading
    /// member and Raft term or ZAB epoch (a new term only if its leader was lost).
    pub store_leader_before: Option<String>,
    /// See `store_leader_before`.
    pub store_leader_after: Option<String>,
    /// The registers' history through the fault, checked for linearizability (absent in results
    /// from before the check was built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linearizability: Option<Linearizability>,
}

/// A drill's register history and the checker's verdict on it (stage 8, `archlab::history`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Linearizability {
    /// Registers (keys) checked.
    pub keys: u64,
    /// Operations recorded, all keys together.
    pub operations: u64,
    /// Acknowledged writes and answered reads.
    pub ok: u64,
    /// Writes certainly refused (the app refused them before the database saw them).
    pub failed: u64,
    /// Operations of unknown outcome (timeouts, errors that may have come after the commit).
    pub unknown: u64,
    /// Keys whose history is linearizable.
    pub linearizable_keys: u64,
    /// Keys whose history is not: the checker found no order that explains it.
    pub violating_keys: u64,
    /// Keys the checker could not decide: too many writes of unknown outcome to search, or out of
    /// time.
    pub undecided_keys: u64,
    /// Reads stale beyond doubt, on the keys not found linearizable (a few per key).
    pub stale_reads: Vec<String>,
    /// Seconds the checker took, all keys together.
    pub check_s: f64,
}

/// What a sharded stage looks like once a drill is over and recovery has had its time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardCheck {
    /// Shards checked.
    pub shards: usize,
    /// Prepared branches found on the shards just after an app host crashed at its fault point
    /// (`coordinator-crash`): what the crash left in doubt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_doubt_after_crash: Option<u64>,
    /// Seconds from the crash until recovery had settled them: the window in which their rows
    /// stayed locked (2PC's blocking window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_doubt_after_crash_cleared_s: Option<f64>,
    /// Prepared branches of the app's global transactions found on the shards just after the
    /// load ended (what the fault left in doubt, unless recovery had already finished it).
    pub in_doubt_at_end: u64,
    /// Seconds from the end of the load until no shard held one (null: some still did when the
    /// check gave up).
    pub in_doubt_cleared_after_s: Option<f64>,
    /// Prepared branches left when the check ended (must be 0).
    pub in_doubt_left: u64,
    /// Articles checked, on all shards together.
    pub articles: u64,
    /// Articles whose `favorites_count` differs from their favorite rows on all shards
    /// together (must be 0: a half-committed favorite shows up here).
    pub favorite_count_mismatches: u64,
    /// The app hosts' two-phase commit counters at the end (`/metrics`, summed over the hosts
    /// still running: a crashed host's counts died with it).
    pub two_phase: std::collections::BTreeMap<String, f64>,
}

/// One second of the series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Second since measurement start.
    pub t: u64,
    /// Successes completed.
    pub ok: u64,
    /// Failures and unknown outcomes completed.
    pub errors: u64,
    /// Corrected p50 of the second (ms).
    pub p50_ms: f64,
    /// Corrected p99 of the second (ms).
    pub p99_ms: f64,
    /// Largest corrected latency of the second (ms).
    pub max_ms: f64,
    /// Responses with `x-cache: hit` (absent in results from before the cache: 0).
    #[serde(default)]
    pub cache_hits: u64,
    /// Responses with `x-cache: miss`.
    #[serde(default)]
    pub cache_misses: u64,
    /// Responses with `x-cache: bypass`.
    #[serde(default)]
    pub cache_bypasses: u64,
}

/// Where results that are shown side by side disagree about where they came from: more than one
/// commit (a dirty tree counts as a commit of its own), data set or machine. Each entry says
/// what differs; empty means the results make one comparison.
pub fn mixed_provenance(reports: &[Report]) -> Vec<String> {
    let mut mixed = Vec::new();
    let mut distinct = |what: &str, values: Vec<String>| {
        let mut unique: Vec<String> = Vec::new();
        for v in values {
            if !unique.contains(&v) {
                unique.push(v);
            }
        }
        if unique.len() > 1 {
            mixed.push(format!("{} {what}: {}", unique.len(), unique.join(", ")));
        }
    };
    distinct(
        "commits",
        reports
            .iter()
            .map(|r| {
                let p = &r.provenance;
                let commit = p.git_commit.as_deref().unwrap_or("unknown");
                let short = &commit[..commit.len().min(7)];
                match p.git_dirty {
                    Some(true) => format!("{short} (dirty)"),
                    _ => short.to_owned(),
                }
            })
            .collect(),
    );
    distinct(
        "data sets",
        reports
            .iter()
            .map(|r| {
                r.provenance
                    .data_set
                    .clone()
                    .unwrap_or_else(|| "unrecorded".into())
            })
            .collect(),
    );
    distinct(
        "machines",
        reports
            .iter()
            .map(|r| format!("{} x {}", r.provenance.cores, r.provenance.cpu_model))
            .collect(),
    );
    mixed
}

impl Report {
    /// Error rate as thresholds and sweeps judge it: (failed + unknown + dropped) / scheduled.
    pub fn error_rate(&self) -> f64 {
        let c = &self.counts;
        if c.scheduled == 0 {
            return 0.0;
        }
        (c.failed + c.unknown + c.dropped) as f64 / c.scheduled as f64
    }

    /// A Markdown summary.
    pub fn markdown(&self) -> String {
        let c = &self.counts;
        let l = &self.latency_ms;
        let mut s = String::new();
        let how = match (self.mode.as_str(), self.rate_rps) {
            ("sweep", Some(r)) => {
                format!("sweep; figures at the highest passing rate, {r:.0} req/s")
            }
            (mode, Some(r)) => format!("{mode} loop at {r:.0} req/s offered"),
            (mode, None) => format!("{mode} loop"),
        };
        s.push_str(&format!(
            "### {} — workload `{}`, {how}\n\n",
            self.stage
                .map_or("loadtest".to_owned(), |n| format!("stage {n}")),
            self.workload,
        ));
        s.push_str("| throughput | p50 | p90 | p99 | p99.9 | max | uncorrected p99 |\n|---:|---:|---:|---:|---:|---:|---:|\n");
        s.push_str(&format!(
            "| {:.0} req/s | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms |\n\n",
            self.throughput_rps,
            l.corrected.p50,
            l.corrected.p90,
            l.corrected.p99,
            l.corrected.p999,
            l.corrected.max,
            l.uncorrected.p99
        ));
        s.push_str(&format!(
            "scheduled {} = sent {} + dropped {}; ok {}, failed {} (4xx {}, 5xx {}, connect {}), unknown {} (timed out {}); behind schedule {}.\n\n",
            c.scheduled, c.sent, c.dropped, c.ok, c.failed, c.failed_4xx, c.failed_5xx, c.failed_connect, c.unknown, c.timed_out, c.behind_schedule
        ));
        let k = &self.checks;
        s.push_str(&format!(
            "Writes acknowledged {}, lost {}, unverified {}; read-your-writes checks {}, violations {}.\n",
            k.acknowledged_writes, k.lost_writes, k.unverified_writes, k.ryw_checks, k.ryw_violations
        ));
        if k.monotonic_checks > 0 {
            s.push_str(&format!(
                "Monotonic-read checks {}, violations {}.\n",
                k.monotonic_checks, k.monotonic_violations
            ));
        }
        if let Some(ratio) = self.cache.hit_ratio {
            s.push_str(&format!("Cache hit ratio {:.1} %.\n", ratio * 100.0));
        }
        if let Some(edge) = &self.cache.edge {
            let outcomes: Vec<String> = edge
                .outcomes
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            s.push_str(&format!(
                "Edge answers: {}; origin offload (answered at a PoP, of what a PoP may share) {}; clients that moved PoP {}.\n",
                outcomes.join(", "),
                edge.offload
                    .map_or("n/a".to_owned(), |o| format!("{:.1} %", o * 100.0)),
                edge.failovers
            ));
        }
        if let Some(r) = &self.replication {
            let l = &r.lag_ms;
            s.push_str(&format!(
                "Replication lag p50 {} ms, p99 {} ms, max {} ms ({} samples); reads to the primary because no replica had caught up with the reader: {:.2} %.\n",
                l.p50, l.p99, l.max, l.samples, r.guard_primary_share * 100.0
            ));
            let reads: Vec<String> = r.reads.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s.push_str(&format!(
                "Reads by server and route: {}.\n",
                reads.join(", ")
            ));
        }
        let spanned: Vec<_> = self
            .operation_latency
            .iter()
            .filter(|(name, _)| name.contains(" shard"))
            .collect();
        if !spanned.is_empty() {
            s.push_str("\n| write, by shards spanned | requests | p50 ms | p99 ms |\n|---|---:|---:|---:|\n");
            for (name, l) in spanned {
                s.push_str(&format!(
                    "| {name} | {} | {} | {} |\n",
                    l.n, l.p50_ms, l.p99_ms
                ));
            }
        }
        if let Some(sweep) = &self.sweep {
            s.push_str(&format!(
                "\nSweep: highest rate with p99 <= {} ms and errors < {:.2} %: **{:.0} req/s**.\n\n| offered | achieved | p50 ms | p99 ms | errors | met |\n|---:|---:|---:|---:|---:|:-:|\n",
                sweep.target_p99_ms, sweep.max_error_rate * 100.0, sweep.max_rate_rps
            ));
            for step in &sweep.steps {
                s.push_str(&format!(
                    "| {:.0}{} | {:.0} | {} | {} | {:.3} % | {} |\n",
                    step.rate_rps,
                    if step.repeat { " (again)" } else { "" },
                    step.throughput_rps,
                    step.p50_ms,
                    step.p99_ms,
                    step.error_rate * 100.0,
                    if step.passed { "yes" } else { "no" }
                ));
            }
        }
        if !self.hosts.is_empty() {
            s.push_str(
                "\n| host | role | budget | enforced | cores used |\n|---|---|---:|:-:|---:|\n",
            );
            for h in &self.hosts {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {:.2} |\n",
                    h.name,
                    h.role,
                    h.cpu_budget,
                    if h.enforced { "yes" } else { "no" },
                    h.cores_used
                ));
            }
            if self.provenance.machine_bound == Some(true) {
                s.push_str("\n**Machine-bound**: all cores of this machine were busy, so no host budget was the limit.\n");
            }
        }
        s
    }
}
