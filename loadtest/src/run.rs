//! The load engine: a fixed-rate schedule (open loop) or N connections flat out (closed loop),
//! over a bounded pool of keep-alive connections.
//!
//! Open loop. A dispatcher thread releases *slots* at the target rate: slot `i` is scheduled for
//! `start + i / rate`. Connections take the next released slot whenever they are free. When the
//! server stalls, every connection is busy, slots queue up, and each one's latency is counted from
//! its scheduled time: the stall is charged to every request it delayed (coordinated omission
//! corrected, as wrk2 does). A slot still queued when the run ends is *dropped*, never sent, so
//! `scheduled = sent + dropped` always. The dispatcher wakes every 100 us and releases every slot
//! whose time has come, so a send leaves at most about that late when a connection is free.
//!
//! Closed loop. Each connection sends its next request as soon as the last one is answered; there
//! is no schedule, so corrected and uncorrected latency are the same.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rand::{rngs::SmallRng, SeedableRng};

use crate::{
    client::{ClientError, Connection, Response},
    stats::{Outcome, Recorder, Summary},
    workload::{Ack, Workload},
};

/// How often the open-loop dispatcher releases due slots. Short enough that send-time error stays
/// well under a millisecond, long enough that the dispatcher is not a busy loop.
const DISPATCH_TICK: Duration = Duration::from_micros(100);
/// Acknowledged writes kept for verification; past this, later ones are not tracked (the count
/// says so). 1 M writes is far beyond any run here and about 200 MB at worst.
const MAX_ACKS: usize = 1_000_000;
/// Read-your-writes violations kept as examples.
const MAX_EXAMPLES: usize = 10;

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// A fixed rate, requests per second.
    Open {
        /// Offered rate.
        rate: f64,
    },
    /// Every connection as fast as the server answers.
    Closed,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server.
    pub target: SocketAddr,
    /// Open or closed loop.
    pub mode: Mode,
    /// Time measured.
    pub duration: Duration,
    /// Time run before measuring (caches, pools, JIT of the server's own kind), not counted.
    pub warmup: Duration,
    /// Connections (the bound on requests in flight).
    pub connections: usize,
    /// A request unanswered after this is given up as `unknown` (timed out).
    pub timeout: Duration,
    /// Seed of the request generators.
    pub seed: u64,
    /// Live counters for a progress display, if wanted.
    pub live: Option<Arc<Live>>,
    /// After a writer's read-back showed their write, read it once more as them: a second read
    /// that no longer shows it is a monotonic-read violation (stage 5's replicas can cause one).
    /// Off by default: it adds a read per write, which would change a benchmark's load.
    pub monotonic_checks: bool,
    /// Points of presence in front of the target (stage 6's edge PoPs), each with the emulated
    /// distance of its clients. Empty: every request goes to `target` at once.
    pub pops: Vec<crate::Pop>,
}

/// Counters a progress display can read while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Responses completed (measured or not).
    pub done: AtomicU64,
    /// Of those, not 2xx/3xx, or no answer at all (failed or unknown).
    pub failed: AtomicU64,
    /// Sends the open-loop schedule has released so far.
    pub released: AtomicU64,
    /// Sends begun so far; `released - started` are waiting for a free connection, and become
    /// *dropped* if a run ends before they go.
    pub started: AtomicU64,
    /// Which sweep step runs (its index in the sweep's steps), for a sampler that attributes
    /// server CPU to steps.
    pub step: std::sync::atomic::AtomicUsize,
    /// True while a measurement window is open (after warm-up, before the end): lets a sampler
    /// of server CPU count exactly the measured seconds.
    pub measuring: AtomicBool,
    /// Set by a caller that has seen what it waited for (a drill whose stage has recovered) to
    /// end the run before its duration: no more sends are released, those waiting for a
    /// connection are dropped, those in flight complete, and the measured time ends here. The
    /// duration then is the bound, the condition the end.
    pub stop: AtomicBool,
}

impl Live {
    fn stopped(live: &Option<Arc<Live>>) -> bool {
        live.as_ref()
            .is_some_and(|l| l.stop.load(Ordering::Relaxed))
    }
}

/// What a run produced.
pub struct RunOutput {
    /// Measurements.
    pub summary: Summary,
    /// Writes the server acknowledged, to verify after the run.
    pub acks: Vec<Ack>,
    /// Acknowledged writes not kept because of [`MAX_ACKS`].
    pub acks_untracked: u64,
    /// Reads right after a write, by the writer, that did not see the write.
    pub ryw_checks: u64,
    /// See `ryw_checks`.
    pub ryw_violations: u64,
    /// A few violations, described.
    pub ryw_examples: Vec<String>,
    /// Second reads by a writer after a first read showed the write (`monotonic_checks`).
    pub monotonic_checks: u64,
    /// Of those, reads that no longer showed it.
    pub monotonic_violations: u64,
    /// Measured seconds (may exceed the configured duration by the last requests' latency).
    pub measured_secs: f64,
    /// Clients that moved to another PoP after theirs refused a connection.
    pub failovers: u64,
}

struct Shared {
    recorder: Mutex<Recorder>,
    acks: Mutex<Vec<Ack>>,
    acks_untracked: AtomicU64,
    ryw_checks: AtomicU64,
    ryw_violations: AtomicU64,
    ryw_examples: Mutex<Vec<String>>,
    monotonic_checks: AtomicU64,
    monotonic_violations: AtomicU64,
    measure_start: Instant,
    end: Instant,
    dropped: AtomicU64,
    failovers: AtomicU64,
    warmup_slots: AtomicU64,
    /// When the run was ended early ([`Live::stop`]), noted by whoever saw it first.
    stopped_at: std::sync::OnceLock<Instant>,
}

impl Shared {
    /// True once the run is over: its end passed, or the caller stopped it.
    fn over(&self, live: &Option<Arc<Live>>) -> bool {
        if Live::stopped(live) {
            let _ = self.stopped_at.set(Instant::now());
            return true;
        }
        Instant::now() > self.end
    }
}

/// Runs the workload against the target; the caller owns the runtime (threads).
pub async fn run(config: &RunConfig, workload: Arc<dyn Workload>) -> RunOutput {
    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::default()),
        acks: Mutex::new(Vec::new()),
        acks_untracked: AtomicU64::new(0),
        ryw_checks: AtomicU64::new(0),
        ryw_violations: AtomicU64::new(0),
        ryw_examples: Mutex::new(Vec::new()),
        monotonic_checks: AtomicU64::new(0),
        monotonic_violations: AtomicU64::new(0),
        measure_start,
        end,
        dropped: AtomicU64::new(0),
        failovers: AtomicU64::new(0),
        warmup_slots: AtomicU64::new(0),
        stopped_at: std::sync::OnceLock::new(),
    });

    let (slots, dispatcher) = match config.mode {
        Mode::Open { rate } => {
            let (tx, rx) = flume::unbounded::<Instant>();
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let total = ((config.warmup + config.duration).as_secs_f64() * rate).floor() as u64;
            let live = config.live.clone();
            let shared = shared.clone();
            let handle =
                std::thread::spawn(move || dispatch(tx, start, interval, total, live, &shared));
            (Some(rx), Some(handle))
        }
        Mode::Closed => (None, None),
    };

    if let Some(live) = config.live.clone() {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_start.into()).await;
            live.measuring.store(true, Ordering::Relaxed);
            while Instant::now() < end && !live.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            live.measuring.store(false, Ordering::Relaxed);
        });
    }
    let mut workers = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        let shared = shared.clone();
        let workload = workload.clone();
        let slots = slots.clone();
        let config = config.clone();
        workers.push(tokio::spawn(async move {
            let mut rng =
                SmallRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            // A client's PoP, as a DNS answer would give it: the clients are spread over the
            // PoPs in turn (connection i to PoP i mod n).
            let mut conn = Connections {
                open: Vec::new(),
                pop: (!config.pops.is_empty()).then(|| i % config.pops.len()),
                failovers: 0,
            };
            match slots {
                Some(slots) => {
                    while let Ok(scheduled) = slots.recv_async().await {
                        if shared.over(&config.live) {
                            // Too late to send: the run is over. Counted, never sent.
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if scheduled < shared.measure_start {
                            shared.warmup_slots.fetch_add(1, Ordering::Relaxed);
                        }
                        one_request(&config, &shared, &*workload, &mut rng, &mut conn, scheduled)
                            .await;
                    }
                }
                None => {
                    tokio::time::sleep_until(start.into()).await;
                    while !shared.over(&config.live) {
                        let now = Instant::now();
                        one_request(&config, &shared, &*workload, &mut rng, &mut conn, now).await;
                    }
                }
            }
            shared
                .failovers
                .fetch_add(conn.failovers, Ordering::Relaxed);
        }));
    }
    drop(slots);
    for w in workers {
        let _ = w.await;
    }
    let scheduled_total = match dispatcher {
        Some(handle) => handle.join().unwrap_or(0),
        None => 0,
    };

    if let Some(live) = &config.live {
        live.measuring.store(false, Ordering::Relaxed);
    }
    let measured = match shared.stopped_at.get() {
        Some(stopped) => stopped
            .saturating_duration_since(measure_start)
            .min(config.duration),
        None => config.duration,
    };
    let measured_secs = measured.as_secs_f64();
    let shared = Arc::try_unwrap(shared).unwrap_or_else(|_| unreachable_shared());
    let recorder = shared
        .recorder
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut summary = recorder.finish(measured.as_secs_f64().ceil() as u64);
    let dropped = shared.dropped.load(Ordering::Relaxed);
    summary.counts.dropped = dropped;
    summary.counts.scheduled = match config.mode {
        Mode::Open { .. } => scheduled_total - shared.warmup_slots.load(Ordering::Relaxed),
        Mode::Closed => summary.counts.sent,
    };
    RunOutput {
        summary,
        acks: shared.acks.into_inner().unwrap_or_else(|e| e.into_inner()),
        acks_untracked: shared.acks_untracked.load(Ordering::Relaxed),
        ryw_checks: shared.ryw_checks.load(Ordering::Relaxed),
        ryw_violations: shared.ryw_violations.load(Ordering::Relaxed),
        monotonic_checks: shared.monotonic_checks.load(Ordering::Relaxed),
        monotonic_violations: shared.monotonic_violations.load(Ordering::Relaxed),
        ryw_examples: shared
            .ryw_examples
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        measured_secs,
        failovers: shared.failovers.load(Ordering::Relaxed),
    }
}

fn unreachable_shared() -> Shared {
    // Every worker has been awaited, so no other reference remains; this is never reached.
    panic!("run state still shared after all workers finished")
}

/// Releases slot times on schedule until all are out or the run is stopped ([`Live::stop`]);
/// returns how many it released.
///
/// The dispatcher asks for real-time scheduling (FIFO, possible as root): on a machine whose cores
/// are shared with the server under test, an ordinary thread waits for its turn after each sleep,
/// which showed up as milliseconds of send-time error in the tail. Without the privilege it runs
/// as an ordinary thread, and the send lag it reports says how precise it was.
fn dispatch(
    tx: flume::Sender<Instant>,
    start: Instant,
    interval: Duration,
    total: u64,
    live: Option<Arc<Live>>,
    shared: &Shared,
) -> u64 {
    let _ = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Crossplatform(50u8.try_into().unwrap_or_default()),
        thread_priority::ThreadSchedulePolicy::Realtime(
            thread_priority::RealtimeThreadSchedulePolicy::Fifo,
        ),
    );
    let mut next = 0u64;
    while next < total {
        if Live::stopped(&live) {
            let _ = shared.stopped_at.set(Instant::now());
            break;
        }
        let now = Instant::now();
        while next < total {
            let due = start + interval.mul_f64(next as f64);
            if due > now {
                break;
            }
            if tx.send(due).is_err() {
                return next;
            }
            if let Some(live) = &live {
                live.released.fetch_add(1, Ordering::Relaxed);
            }
            next += 1;
        }
        std::thread::sleep(DISPATCH_TICK);
    }
    next
}

/// A worker's keep-alive connections: one to the target (or its PoP), and one to each other
/// server its requests name (a stage's file host). A handful at most, so a list beats a map.
#[derive(Default)]
pub struct Connections {
    open: Vec<(SocketAddr, Option<Connection>)>,
    /// The PoP this client sends to, an index into [`RunConfig::pops`]; `None` without PoPs.
    pop: Option<usize>,
    /// Times this client moved to another PoP.
    failovers: u64,
}

impl Connections {
    fn slot(&mut self, addr: SocketAddr) -> &mut Option<Connection> {
        let i = match self.open.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                self.open.push((addr, None));
                self.open.len() - 1
            }
        };
        &mut self.open[i].1
    }
}

/// Sends `request` and reads its answer. Through a PoP, the client first waits out its emulated
/// distance; if its PoP refuses the connection (nothing was sent), it moves to the next PoP, as
/// a client whose resolver stops giving it a dead address would, and sends there once.
async fn exchange(
    config: &RunConfig,
    conns: &mut Connections,
    request: &crate::client::Request,
) -> Result<Response, Outcome> {
    let via_pop = request.authority.is_none() && conns.pop.is_some();
    let mut result = exchange_at(config, conns, request).await;
    if via_pop && config.pops.len() > 1 && matches!(result, Err(Outcome::Connect)) {
        conns.pop = conns.pop.map(|p| (p + 1) % config.pops.len());
        conns.failovers += 1;
        result = exchange_at(config, conns, request).await;
    }
    result
}

async fn exchange_at(
    config: &RunConfig,
    conns: &mut Connections,
    request: &crate::client::Request,
) -> Result<Response, Outcome> {
    let pop = conns
        .pop
        .filter(|_| request.authority.is_none())
        .map(|p| config.pops[p]);
    if let Some(pop) = pop.filter(|p| !p.delay.is_zero()) {
        tokio::time::sleep(pop.delay).await;
    }
    let addr = request
        .authority
        .or(pop.map(|p| p.addr))
        .unwrap_or(config.target);
    let conn = conns.slot(addr);
    if conn.as_ref().is_some_and(Connection::stale) {
        *conn = None;
    }
    let reused = conn.is_some();
    match exchange_once(config, addr, conn, request).await {
        // A kept-alive connection the server closed while idle (it restarted, say) fails on its
        // next use before any answer. An idempotent request may then be sent again on a fresh
        // connection, as browsers and HTTP clients do (RFC 9112, 9.3.1); anything else stays
        // unknown, since the server may have acted on it.
        Err(Outcome::Unknown) if reused && request.is_idempotent() => {
            exchange_once(config, addr, conn, request).await
        }
        other => other,
    }
}

async fn exchange_once(
    config: &RunConfig,
    addr: SocketAddr,
    conn: &mut Option<Connection>,
    request: &crate::client::Request,
) -> Result<Response, Outcome> {
    if conn.is_none() {
        match Connection::connect(addr, config.timeout).await {
            Ok(c) => *conn = Some(c),
            Err(_) => return Err(Outcome::Connect),
        }
    }
    let Some(c) = conn.as_mut() else {
        return Err(Outcome::Connect);
    };
    match tokio::time::timeout(config.timeout, c.send(request)).await {
        Ok(Ok(response)) => {
            if response.close {
                *conn = None;
            }
            Ok(response)
        }
        Ok(Err(ClientError::Connect(_))) => {
            *conn = None;
            Err(Outcome::Connect)
        }
        Ok(Err(_)) => {
            *conn = None;
            Err(Outcome::Unknown)
        }
        Err(_) => {
            *conn = None;
            Err(Outcome::Timeout)
        }
    }
}

async fn one_request(
    config: &RunConfig,
    shared: &Shared,
    workload: &dyn Workload,
    rng: &mut SmallRng,
    conn: &mut Connections,
    scheduled: Instant,
) {
    let op = workload.next(rng);
    if let Some(live) = &config.live {
        live.started.fetch_add(1, Ordering::Relaxed);
    }
    let sent = Instant::now();
    let result = exchange(config, conn, &op.request).await;
    let done = Instant::now();
    if let Some(live) = &config.live {
        live.done.fetch_add(1, Ordering::Relaxed);
        if !matches!(&result, Ok(r) if r.status < 400) {
            live.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let measuring = scheduled >= shared.measure_start;
    let outcome = match &result {
        Ok(response) => Outcome::from_status(response.status),
        Err(outcome) => *outcome,
    };
    if measuring {
        let t = done
            .saturating_duration_since(shared.measure_start)
            .as_secs();
        let mut r = shared.recorder.lock().unwrap_or_else(|e| e.into_inner());
        r.record_send_lag(sent.saturating_duration_since(scheduled));
        r.record(t, op.kind.name(), outcome, done - scheduled, done - sent);
        if let Ok(response) = &result {
            r.record_cache(response.cache.as_deref());
            r.record_edge(response.edge.as_deref());
            if outcome == Outcome::Ok {
                r.record_latency(op.kind.name(), response.shards, done - scheduled);
            }
        }
    }
    // Acknowledged writes: remember them, and read them back at once as the writer.
    let Ok(response) = result else { return };
    if outcome != Outcome::Ok {
        return;
    }
    let Some(ack) = workload.acknowledge(&op, &response) else {
        return;
    };
    if let Some(check) = &ack.read_back {
        // Overloaded or failing is not "the write is missing": availability is counted elsewhere.
        let shows = |result: Result<Response, Outcome>| match result {
            Ok(r) if r.status >= 500 || r.status == 429 => None,
            Ok(r) => Some(check.expect.holds(&r)),
            Err(_) => None,
        };
        let example = |what: &str| {
            let mut examples = shared
                .ryw_examples
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if examples.len() < MAX_EXAMPLES {
                examples.push(format!(
                    "{}: {} {} {what}",
                    ack.id, check.request.method, check.request.path
                ));
            }
        };
        shared.ryw_checks.fetch_add(1, Ordering::Relaxed);
        let first = shows(exchange(config, conn, &check.request).await);
        if first == Some(false) {
            shared.ryw_violations.fetch_add(1, Ordering::Relaxed);
            example("did not show it");
        }
        if config.monotonic_checks && first == Some(true) {
            shared.monotonic_checks.fetch_add(1, Ordering::Relaxed);
            if shows(exchange(config, conn, &check.request).await) == Some(false) {
                shared.monotonic_violations.fetch_add(1, Ordering::Relaxed);
                example("showed it, then did not (monotonic reads)");
            }
        }
    }
    let mut acks = shared.acks.lock().unwrap_or_else(|e| e.into_inner());
    if acks.len() < MAX_ACKS {
        acks.push(ack);
    } else {
        shared.acks_untracked.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the verify phase found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Acknowledged writes that are definitely not there (404, or 200 without them).
    pub lost: Vec<String>,
    /// Writes whose check never got a definite answer (5xx or no connection, after retries).
    pub unverified: Vec<String>,
}

/// Reads every acknowledged write back.
pub async fn verify(target: SocketAddr, acks: &[Ack], timeout: Duration) -> Verified {
    /// Attempts per check, with a pause between, so a server still draining a backlog (503s) or a
    /// broken keep-alive connection does not turn into a "lost" write.
    const ATTEMPTS: u32 = 5;
    const PAUSE: Duration = Duration::from_millis(200);
    let mut found = Verified::default();
    let config = RunConfig {
        target,
        mode: Mode::Closed,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        connections: 1,
        timeout,
        seed: 0,
        live: None,
        monotonic_checks: false,
        // Read back at the target itself, with no distance: the verdict, not the latency, counts.
        pops: Vec::new(),
    };
    let mut conn = Connections::default();
    for ack in acks {
        let Some(check) = &ack.verify else { continue };
        let mut verdict = None;
        for attempt in 0..ATTEMPTS {
            match exchange(&config, &mut conn, &check.request).await {
                Ok(r) if r.status >= 500 || r.status == 429 => {}
                Ok(r) => {
                    verdict = Some(check.expect.holds(&r));
                    break;
                }
                Err(_) => {}
            }
            if attempt + 1 < ATTEMPTS {
                tokio::time::sleep(PAUSE).await;
            }
        }
        match verdict {
            Some(true) => {}
            Some(false) => found.lost.push(ack.id.clone()),
            None => found.unverified.push(ack.id.clone()),
        }
    }
    found
}
