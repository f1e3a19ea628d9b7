//! Stage 8 drills: a failover seen from outside, as a timeline.
//!
//! ```text
//!   fault ── leader lost ── new leader ── first acknowledged write
//!     │          │               │                 │
//!     │   no Patroni answers     another host      the drill's probe gets
//!     │   GET /primary 200       answers 200       a 200 for a write of its
//!     │                                            own bio, once another host led
//! ```
//!
//! The leader is polled as the app polls it ([`ASK_WITHIN`], every [`POLL`]); the write is the
//! drill's own probe, a write of its user's bio every [`POLL`] without waiting for the one before
//! ([`PROBES_IN_FLIGHT`]), since the harness counts whole seconds only. The watch also reads Patroni's
//! leader key in the store (etcd or ZooKeeper), the decision itself: a promoted host whose
//! Patroni is too starved to answer in time has taken the key all the same, and the two instants
//! together tell "no leader yet" from "a leader nobody hears". Between the fault and the first
//! write the stage takes no writes: with a crash that is the leader key's TTL plus
//! Patroni's loop and the app's next poll; the store's election is not on that path unless the
//! store's own leader was the one lost.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use loadtest::report::Failover;
use serde_json::json;

use crate::{
    consensus::{ConsensusCluster, StoreKind},
    lab::Lab,
    patroni::PatroniCluster,
    stage::Stage,
};

/// How often the watch asks for the leader and the probe writes: 0.1 s resolution on a timeline
/// measured in seconds, for a few requests per poll.
pub const POLL: Duration = Duration::from_millis(100);

/// How long a Patroni may take to answer and still count as the leader at that poll: the app's
/// own bound (`database.replica_poll_timeout_ms`, 250 ms), so the watch sees what the app sees.
pub const ASK_WITHIN: Duration = Duration::from_millis(250);

/// The probe's timeout per write: a write sent to a frozen primary hangs; past this it counts as
/// `timeout` (an unknown outcome, not a refusal).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe's writes waiting for an answer at once, at most. The probe sends a write every
/// [`POLL`] without waiting for the one before, so the first write the new primary acknowledges
/// is seen to 0.1 s, as the timeline promises. (A probe that waited for each answer measured
/// its own bad luck: in a crash trial with three database hosts its write sent during the
/// promotion waited 2.2 s, while a write sent 0.2 s later was acknowledged 1.5 s earlier.) Ten is
/// a second of writes: more than a promoted primary's first answers take, few enough that a
/// frozen primary, which lets every write hang until [`PROBE_TIMEOUT`], holds ten of the app's
/// connections for the probe rather than fifty. A tick with ten waiting sends nothing.
const PROBES_IN_FLIGHT: usize = 10;

/// The database and the store as the drill finds them just before the fault, and what it needs
/// to watch them.
pub struct FailoverWatch {
    cluster: PatroniCluster,
    consensus: ConsensusCluster,
    store: StoreKind,
    endpoint: String,
    token: String,
    leader_before: Option<usize>,
    timeline_before: Option<u64>,
    store_before: Option<String>,
}

/// What the watch saw while it ran, as instants.
#[derive(Debug, Default)]
pub struct Seen {
    lost: Option<Instant>,
    new_leader: Option<Instant>,
    /// When the store's leader key first named another host.
    key_taken: Option<Instant>,
    /// Whom the key named last time it was read: the new leader, or whoever kept it.
    key_holder: Option<String>,
    first_write: Option<Instant>,
    /// The last write acknowledged before that one's stretch: one the old primary took (a
    /// planned switchover takes writes until it stops the old primary).
    last_write_before: Option<Instant>,
    refusals: BTreeMap<String, u64>,
}

impl FailoverWatch {
    /// Registers the probe's user and reads who leads (the database, the store): call it just
    /// before the fault.
    pub async fn prepare(lab: &Lab, stage: &Stage) -> anyhow::Result<Self> {
        let cluster = lab.patroni_cluster(stage)?;
        let consensus = lab.consensus_cluster(stage);
        let endpoint = stage.endpoint();
        let token = register_drill_user(&endpoint, "failover-probe").await?;
        let leader_before = cluster.primary().await;
        let timeline_before = match leader_before {
            Some(i) => cluster.nodes[i].state().await.and_then(|s| s.timeline),
            None => None,
        };
        let store_before = store_leader(&consensus, stage).await;
        Ok(Self {
            cluster,
            consensus,
            store: stage.dcs,
            endpoint,
            token,
            leader_before,
            timeline_before,
            store_before,
        })
    }

    /// The host that leads now, by index among the Patroni hosts.
    pub fn leader_before(&self) -> Option<usize> {
        self.leader_before
    }

    /// Watches from `fault` on, until another host leads and a write has been acknowledged, or
    /// `limit` has passed: the instants seen. The leader and the probe are watched apart, so a
    /// write left hanging by a dead primary does not delay the look at the leader.
    pub async fn watch(&self, fault: Instant, limit: Duration) -> Seen {
        // When another host was first seen leading (shared with the probe), and whether the
        // leaders' watch is over.
        let new_leader_at = std::sync::Mutex::new(None::<Instant>);
        let leaders_done = std::sync::atomic::AtomicBool::new(false);
        let new_leader_now = || *new_leader_at.lock().unwrap_or_else(|e| e.into_inner());
        // Either way another host is known to lead: its Patroni answered, or it took the key.
        let other_leads = |at: Instant| {
            let mut seen = new_leader_at.lock().unwrap_or_else(|e| e.into_inner());
            *seen = Some(seen.map_or(at, |s: Instant| s.min(at)));
        };
        let key = async {
            let before = self
                .leader_before
                .map(|i| self.cluster.nodes[i].name.clone());
            let path = self.cluster.leader_key();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut holder = None;
            let mut reader = self.consensus.key_reader();
            while fault.elapsed() < limit {
                tick.tick().await;
                if let Some(Some(named)) = reader.get(&path).await {
                    if before.as_ref() != Some(&named) {
                        let now = Instant::now();
                        other_leads(now);
                        return (Some(now), Some(named));
                    }
                    holder = Some(named);
                }
            }
            (None, holder)
        };
        let leaders = async {
            let (mut lost, mut new_leader) = (None, None);
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while new_leader.is_none() && fault.elapsed() < limit {
                tick.tick().await;
                let leaders = self.cluster.primaries(ASK_WITHIN).await;
                let now = Instant::now();
                if leaders.is_empty() {
                    lost.get_or_insert(now);
                }
                if leaders.iter().any(|&i| Some(i) != self.leader_before) {
                    new_leader = Some(now);
                    lost.get_or_insert(now);
                    other_leads(now);
                }
            }
            leaders_done.store(true, std::sync::atomic::Ordering::Release);
            (lost, new_leader)
        };
        let probe = async {
            let mut refusals = BTreeMap::<String, u64>::new();
            // Each acknowledged write: when it was sent, when acknowledged.
            let mut acknowledged = Vec::<(Instant, Instant)>::new();
            let Ok(client) = reqwest::Client::builder()
                .no_proxy()
                .timeout(PROBE_TIMEOUT)
                .build()
            else {
                return (acknowledged, refusals);
            };
            // A write every tick, whether or not the ones before have been answered: one slow
            // write must not hide the next tick's fast one (see PROBES_IN_FLIGHT).
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                let sending = fault.elapsed() < limit;
                tokio::select! {
                    _ = tick.tick(), if sending => {
                        if in_flight.len() >= PROBES_IN_FLIGHT {
                            continue;
                        }
                        n += 1;
                        let client = &client;
                        in_flight.push(async move {
                            let sent = Instant::now();
                            let outcome = self.probe_write(client, n).await;
                            (sent, outcome, Instant::now())
                        });
                    }
                    Some((sent, outcome, at)) = futures::StreamExt::next(&mut in_flight) => {
                        match outcome {
                            Ok(()) => {
                                acknowledged.push((sent, at));
                                // Done once a write went through after another host was seen
                                // leading, or, the leaders' watch over without one, at the
                                // first write. Writes still in flight then are dropped: any
                                // answer they get comes later than this one.
                                let new_leader = new_leader_now();
                                let after_new = new_leader.is_some_and(|since| at >= since);
                                let watch_over_without_one = new_leader.is_none()
                                    && leaders_done.load(std::sync::atomic::Ordering::Acquire);
                                if after_new || watch_over_without_one {
                                    break;
                                }
                            }
                            Err(refusal) => *refusals.entry(refusal).or_default() += 1,
                        }
                    }
                    else => break,
                }
            }
            (acknowledged, refusals)
        };
        let ((lost, new_leader), (key_taken, key_holder), (acknowledged, refusals)) =
            tokio::join!(leaders, key, probe);
        // Writes are told apart by when they were *acknowledged*: before another host was seen
        // leading, by the old primary (a planned switchover keeps taking writes on it for a
        // moment); from then on, by the new one, even one sent a moment earlier (after a crash
        // such a write can only have been answered by the new primary: counting it as the old
        // one's last write made a crash trial report 1.1 s without writes). Without a new
        // leader, the leader's loss is the line; never lost, the first write is the first. The new
        // leader is the first sign of one: its Patroni answering, or its name in the key.
        let since = new_leader_now().or(lost);
        let first_write = acknowledged
            .iter()
            .map(|(_, acknowledged)| *acknowledged)
            .find(|acknowledged| since.is_none_or(|since| *acknowledged >= since));
        let last_write_before = acknowledged
            .iter()
            .map(|(_, acknowledged)| *acknowledged)
            .filter(|acknowledged| since.is_some_and(|since| *acknowledged < since))
            .max();
        Seen {
            lost,
            new_leader,
            key_taken,
            key_holder,
            first_write,
            last_write_before,
            refusals,
        }
    }

    /// Writes the probe user's own `bio` (`PUT /api/user`); `Err` names how it was refused
    /// (`503`, `timeout`).
    ///
    /// A write of one row nobody else writes: the probe asks when the primary takes writes
    /// again, not how long the stage's busiest rows take to drain. (It posted articles before;
    /// every article also updates the one row that counts them all, as each of the harness's
    /// article writes does, so the probe's writes waited in that row's queue with theirs.)
    async fn probe_write(&self, client: &reqwest::Client, n: u64) -> Result<(), String> {
        let sent = client
            .put(format!("{}/api/user", self.endpoint))
            .header("authorization", format!("Token {}", self.token))
            .json(&json!({"user": {"bio": format!("failover probe {n}")}}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().as_u16().to_string()),
            Err(e) if e.is_timeout() => Err("timeout".into()),
            Err(_) => Err("connection".into()),
        }
    }

    /// The timeline, with who leads at the end, in seconds since `measure_start`.
    pub async fn finish(
        &self,
        stage: &Stage,
        seen: Seen,
        fault: Instant,
        measure_start: Instant,
    ) -> Failover {
        let at = |i: Option<Instant>| {
            i.map(|i| round(i.saturating_duration_since(measure_start).as_secs_f64()))
        };
        let name = |i: usize| self.cluster.nodes[i].name.clone();
        let leader_after = self.cluster.primary().await;
        let timeline_after = match leader_after {
            Some(i) => self.cluster.nodes[i].state().await.and_then(|s| s.timeline),
            None => None,
        };
        Failover {
            store: self.store.as_str().into(),
            leader_before: self.leader_before.map_or_else(|| "none".into(), name),
            leader_after: leader_after.map(name),
            leader_lost_at_s: at(seen.lost),
            new_leader_at_s: at(seen.new_leader),
            leader_key_at_s: at(seen.key_taken),
            leader_key_holder: seen.key_holder,
            first_write_at_s: at(seen.first_write),
            // From the last write the old primary acknowledged (the fault, after a crash) to the
            // first the new one did.
            writes_unavailable_s: seen.first_write.map(|w| {
                let from = seen.last_write_before.map_or(fault, |l| l.max(fault));
                round(w.saturating_duration_since(from).as_secs_f64())
            }),
            probe_refused: seen.refusals.values().sum(),
            refusals: seen.refusals,
            timeline_before: self.timeline_before,
            timeline_after,
            store_leader_before: self.store_before.clone(),
            store_leader_after: store_leader(&self.consensus, stage).await,
            linearizability: None,
        }
    }
}

/// Registers a user of a drill's own (`<name>@drill.archlab.test`) on the stage at `endpoint`,
/// and returns its token.
pub(crate) async fn register_drill_user(endpoint: &str, name: &str) -> anyhow::Result<String> {
    let response = crate::lab::http_client()?
        .post(format!("{endpoint}/api/users"))
        .json(&json!({"user": {
            "username": name,
            "email": format!("{name}@drill.archlab.test"),
            "password": format!("{name}-password"),
        }}))
        .send()
        .await
        .with_context(|| format!("registering the drill's user {name}"))?;
    let body: serde_json::Value = response.json().await?;
    Ok(body["user"]["token"]
        .as_str()
        .with_context(|| format!("registering the drill's user {name}: {body}"))?
        .to_owned())
}

/// `member (term N)` or `member (epoch N)`: who leads the store, if its members agree.
async fn store_leader(consensus: &ConsensusCluster, stage: &Stage) -> Option<String> {
    let leadership = consensus.leader().await?;
    let hosts = stage.consensus_hosts();
    let word = match stage.dcs {
        StoreKind::Etcd => "term",
        StoreKind::ZooKeeper => "epoch",
    };
    Some(format!(
        "{} ({word} {})",
        hosts.get(leadership.member)?.name,
        leadership.term
    ))
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}
