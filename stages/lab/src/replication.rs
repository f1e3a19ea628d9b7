//! What a stage's replicas did during a measurement (stage 5 on): their replay lag, sampled from
//! the primary's `pg_stat_replication`, and where the app hosts sent reads, from their
//! `db_reads_total` counters. `bench` and `drill` attach it to their reports as `replication`.
//!
//! The lag is PostgreSQL's own `replay_lag`: for each replica, the time from a commit's flush on
//! the primary to the replica's report that it replayed it. It needs no clock shared between
//! hosts, and it is what a reader of a replica experiences as staleness.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use loadtest::report::{LagSummary, Replication};
use sqlx::{Connection, PgConnection};

use crate::{
    lab::Lab,
    stage::{Stage, APP_PORT},
};

/// How often lag is sampled: ten times a second resolves lags of a few hundred milliseconds
/// (what a drill's apply delay causes) and costs the primary one small query per sample.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples the lag until [`ReplicationWatch::finish`]; counts reads between start and finish.
pub struct ReplicationWatch {
    stop: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<Vec<f64>>,
    reads_before: BTreeMap<String, u64>,
    apps: Vec<String>,
}

impl ReplicationWatch {
    /// Starts watching `stage`, or `None` if it has no replicas.
    pub async fn start(lab: &Lab, stage: &Stage) -> Option<Self> {
        if stage.replica_hosts().is_empty() {
            return None;
        }
        let primary = lab
            .replica_server(stage, stage.replica_hosts()[0])
            .ok()?
            .primary;
        let options = primary.connect_options("postgres", "postgres");
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut conn: Option<PgConnection> = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        conn = PgConnection::connect_with(&options).await.ok();
                    }
                    if let Some(c) = conn.as_mut() {
                        let lags: Result<Vec<Option<f64>>, _> = sqlx::query_scalar(
                            "SELECT (extract(epoch FROM replay_lag) * 1000)::float8 \
                             FROM pg_stat_replication",
                        )
                        .fetch_all(&mut *c)
                        .await;
                        match lags {
                            Ok(lags) => samples.extend(lags.into_iter().flatten()),
                            // The primary is down (a drill): try again at the next sample.
                            Err(_) => conn = None,
                        }
                    }
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
                samples
            })
        };
        let apps: Vec<String> = stage
            .app_hosts()
            .iter()
            .map(|h| format!("http://{}:{APP_PORT}/metrics", h.address))
            .collect();
        let reads_before = reads(&apps).await;
        Some(Self {
            stop,
            sampler,
            reads_before,
            apps,
        })
    }

    /// Stops sampling and summarises.
    pub async fn finish(self) -> Replication {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.sampler.await.unwrap_or_default();
        let after = reads(&self.apps).await;
        let reads: BTreeMap<String, u64> = after
            .into_iter()
            .map(|(k, v)| {
                let before = self.reads_before.get(&k).copied().unwrap_or(0);
                (k, v.saturating_sub(before))
            })
            .filter(|(_, v)| *v > 0)
            .collect();
        let total: u64 = reads.values().sum();
        let guarded: u64 = reads
            .iter()
            .filter(|(k, _)| k.ends_with(" replicas_behind"))
            .map(|(_, v)| v)
            .sum();
        Replication {
            lag_ms: LagSummary::of(samples),
            guard_primary_share: if total == 0 {
                0.0
            } else {
                (guarded as f64 / total as f64 * 10_000.0).round() / 10_000.0
            },
            reads,
        }
    }
}

/// `db_reads_total` of every app host, summed, keyed `"<target> <reason>"`. An app host that does
/// not answer adds nothing.
async fn reads(apps: &[String]) -> BTreeMap<String, u64> {
    crate::lab::summed_metrics(apps, parse_reads).await
}

/// The `db_reads_total{target="…",reason="…"} N` samples of a metrics text.
fn parse_reads(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let labels = line.strip_prefix("db_reads_total{")?;
            let (labels, value) = labels.split_once("} ")?;
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            Some((
                format!("{} {}", label("target")?, label("reason")?),
                value.trim().parse::<f64>().ok()? as u64,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_counters_are_keyed_by_server_and_route() {
        let text = "# HELP db_reads ...\n\
                    db_reads_total{target=\"replica-1\",reason=\"any_replica\"} 12\n\
                    db_reads_total{target=\"primary\",reason=\"replicas_behind\"} 3\n\
                    db_replica_lag_bytes{replica=\"replica-1\"} 0\n";
        assert_eq!(
            parse_reads(text),
            [
                ("replica-1 any_replica".to_owned(), 12),
                ("primary replicas_behind".to_owned(), 3)
            ]
        );
    }

    #[test]
    fn lag_percentiles_come_from_the_sorted_samples() {
        let summary = LagSummary::of((1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (summary.samples, summary.p50, summary.p99, summary.max),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(LagSummary::of(Vec::new()).samples, 0);
    }
}
