//! Stage 8 drills: is the app, through a failover, still one register per key? A history of
//! reads and writes, recorded from outside, checked for linearizability.
//!
//! The harness's own check counts acknowledged writes missing at the end. This one asks more:
//! whether every read, *while* the fault happens, could have happened in some single order
//! consistent with real time, each read returning the latest write before it. A failover that
//! loses an acknowledged write, or a read served by a server that has not seen a write already
//! acknowledged, breaks that (a read returns an older value after a newer one was acknowledged).
//!
//! The keys are registers designed for checking: each is one user's `bio`, written with unique
//! values (`PUT /api/user`) and read back (`GET /api/user`) by several clients sharing that user's
//! token, so their operations overlap in time. Every operation is recorded as Jepsen records
//! them: invoked, then *ok*, *fail* (it certainly did not happen) or *unknown* (a timeout, or an
//! error that may have come after the commit: it may have happened, now or later). A write of
//! unknown outcome may take effect at any point after its invocation, or never; following
//! Jepsen's practice (and `todc-utils`'s own reading of Jepsen's logs) it is given a response at
//! the very end of the history, where taking effect last is the same as never being read.
//!
//! The checker is `todc-utils`'s implementation of Wing and Gong's algorithm with Lowe's
//! memoisation (`WGLChecker`), run on each key's history; its self-test, on histories of Jepsen's
//! etcd tests with known verdicts, is in `tests/linearizability.rs`. When a key's history is not
//! linearizable, the report also lists reads that are stale beyond doubt (see [`stale_reads`]):
//! the checker says *whether*, those say *where*.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use loadtest::report::Linearizability;
use serde_json::json;
use todc_utils::{
    linearizability::history::{Action, History},
    specifications::Specification,
    WGLChecker,
};

/// Registers checked: enough that a fault catches some in the middle of a write, few enough that
/// each key's history keeps several clients overlapping.
pub const KEYS: usize = 4;

/// Clients per key: two overlapping clients are what makes a history more than a sequence.
pub const CLIENTS_PER_KEY: usize = 2;

/// Pause between one client's operations: 8 clients at about 5 operations a second each add
/// about 40 requests a second to the drill's load, a fraction of it.
const PAUSE: Duration = Duration::from_millis(200);

/// One operation's timeout: past it the outcome is unknown. A frozen primary holds a write for
/// as long as it is frozen; five seconds keeps a client from waiting out a whole outage on one.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the checker may take for all keys together. A few thousand operations take well
/// under a second; many unknown writes can make the search exponential, and then the verdict
/// is "undecided" rather than a drill that never ends.
const CHECK_BOUND: Duration = Duration::from_secs(60);

/// Stale reads listed per key at most.
const WITNESSES: usize = 5;

/// Writes of unknown outcome one key's history may hold and still be searched. Each may take
/// effect anywhere after its invocation, so the search can grow with every one of them: a drill
/// whose stage was overloaded left a few hundred, and the checker then held gigabytes and ran for
/// minutes. Beyond this the key is reported undecided, its stale reads (which need no search)
/// still listed.
const MAX_UNKNOWN_WRITES: usize = 24;

/// An operation on one register, as the checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// A read that returned this value (`None`: never written).
    Read(Option<u32>),
    /// A write of this value (acknowledged, or of unknown outcome).
    Write(u32),
}

/// The sequential register the history must be explainable by.
pub struct Register;

impl Specification for Register {
    type State = Option<u32>;
    type Operation = RegisterOp;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &RegisterOp, state: &Option<u32>) -> (bool, Option<u32>) {
        match op {
            RegisterOp::Read(value) => (value == state, *state),
            RegisterOp::Write(value) => (true, Some(*value)),
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (a write) or answered (a read).
    Ok,
    /// Certainly did not happen (the app refused it before the database saw it).
    Fail,
    /// May have happened: a timeout, or an error that may have come after the commit.
    Unknown,
}

/// One operation, recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The register (0..KEYS).
    pub key: usize,
    /// The client that made it.
    pub client: usize,
    /// What it did (for a read, what it returned; a failed or unknown read returns nothing).
    pub op: RegisterOp,
    /// How it ended.
    pub outcome: Outcome,
    /// Logical times of invocation and response, from one counter: their order is real time's.
    pub called: u64,
    /// See `called`.
    pub returned: u64,
    /// Seconds from the start of recording, for the report.
    pub called_s: f64,
    /// See `called_s`.
    pub returned_s: f64,
}

/// A register's history in the checker's form: one process per client until it sees an unknown
/// outcome (that operation may still be in flight, so the client goes on as a new process);
/// failed operations and unanswered reads left out (they changed nothing); unknown writes
/// answered at the very end.
pub fn history(ops: &[Recorded]) -> Option<History<RegisterOp>> {
    let mut process_of_client = std::collections::HashMap::new();
    let mut next_process = 0;
    let mut events: Vec<(u64, usize, Action<RegisterOp>)> = Vec::new();
    let mut at_the_end: Vec<(usize, Action<RegisterOp>)> = Vec::new();
    let mut sorted: Vec<&Recorded> = ops.iter().collect();
    sorted.sort_by_key(|op| op.called);
    for op in sorted {
        let process = *process_of_client.entry(op.client).or_insert_with(|| {
            next_process += 1;
            next_process - 1
        });
        match (op.outcome, op.op) {
            (Outcome::Fail, _) | (Outcome::Unknown, RegisterOp::Read(_)) => {}
            (Outcome::Ok, _) => {
                events.push((op.called, process, Action::Call(op.op)));
                events.push((op.returned, process, Action::Response(op.op)));
            }
            (Outcome::Unknown, RegisterOp::Write(_)) => {
                events.push((op.called, process, Action::Call(op.op)));
                at_the_end.push((process, Action::Response(op.op)));
                // Its client goes on as a new process.
                process_of_client.insert(op.client, next_process);
                next_process += 1;
            }
        }
    }
    if events.is_empty() {
        return None;
    }
    events.sort_by_key(|(at, _, _)| *at);
    let actions = events
        .into_iter()
        .map(|(_, process, action)| (process, action))
        .chain(at_the_end)
        .collect();
    Some(History::from_actions(actions))
}

/// Reads stale beyond doubt: a read that returned a value whose write had been *followed*, before
/// the read began, by another acknowledged write (whose own invocation came after the first
/// write's response), or that returned "never written" although an acknowledged write had ended
/// before it began. Every one is a real violation; the checker may find others these miss.
pub fn stale_reads(ops: &[Recorded]) -> Vec<String> {
    let acknowledged: Vec<&Recorded> = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok && matches!(op.op, RegisterOp::Write(_)))
        .collect();
    let write_of = |value: u32| {
        ops.iter()
            .find(|op| op.op == RegisterOp::Write(value) && op.outcome != Outcome::Fail)
    };
    let mut found = Vec::new();
    for read in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        let RegisterOp::Read(value) = read.op else {
            continue;
        };
        let newer = match value {
            None => acknowledged
                .iter()
                .find(|w| w.returned < read.called)
                .copied(),
            Some(v) => match write_of(v) {
                None => {
                    found.push(format!(
                        "read at {:.1} s returned {v}, which nobody wrote",
                        read.called_s
                    ));
                    continue;
                }
                Some(written) => acknowledged
                    .iter()
                    .find(|w| w.called > written.returned && w.returned < read.called)
                    .copied(),
            },
        };
        if let Some(newer) = newer {
            let RegisterOp::Write(newer_value) = newer.op else {
                continue;
            };
            found.push(format!(
                "read at {:.1}-{:.1} s returned {}, though {newer_value} was acknowledged at {:.1} s",
                read.called_s,
                read.returned_s,
                value.map_or("nothing".to_owned(), |v| v.to_string()),
                newer.returned_s
            ));
        }
        if found.len() >= WITNESSES {
            break;
        }
    }
    found
}

/// Records the registers' history while a drill runs.
pub struct RegisterClients {
    endpoint: String,
    tokens: Vec<String>,
}

/// A value a writer sends, and how it reads back: `register value 17`.
fn bio(value: u32) -> String {
    format!("register value {value}")
}

fn value_of(bio: &serde_json::Value) -> Result<Option<u32>, ()> {
    match bio {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => s
            .strip_prefix("register value ")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or(()),
        _ => Err(()),
    }
}

/// Whether a refused write certainly did not happen: the app says so only when it refused before
/// sending anything to the database (no primary known, or no connection free in time). Every
/// other error may have come after the commit.
fn certainly_refused(status: reqwest::StatusCode, body: &str) -> bool {
    status.is_client_error()
        || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && (body.contains("primary down: writes refused") || body.contains("busy, try again")))
}

impl RegisterClients {
    /// Registers the registers' users on the stage at `endpoint`.
    pub async fn prepare(endpoint: &str) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for key in 0..KEYS {
            tokens.push(
                crate::failover::register_drill_user(endpoint, &format!("register-{key}")).await?,
            );
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            tokens,
        })
    }

    /// Runs the clients for `duration` and returns every operation they made.
    pub async fn record(&self, duration: Duration) -> anyhow::Result<Vec<Recorded>> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(OP_TIMEOUT)
            .build()?;
        let clock = Arc::new(AtomicU64::new(0));
        let values = Arc::new(AtomicU64::new(1));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for client in 0..KEYS * CLIENTS_PER_KEY {
            let key = client % KEYS;
            let (http, clock, values, ops) =
                (http.clone(), clock.clone(), values.clone(), ops.clone());
            let url = format!("{}/api/user", self.endpoint);
            let token = format!("Token {}", self.tokens[key]);
            tasks.push(tokio::spawn(async move {
                // Reads and writes in a fixed pseudo-random pattern (a xorshift per client).
                let mut pattern = 0x9e37_79b9_u32 ^ (client as u32 + 1);
                while start.elapsed() < duration {
                    pattern ^= pattern << 13;
                    pattern ^= pattern >> 17;
                    pattern ^= pattern << 5;
                    let write = pattern.is_multiple_of(2);
                    let called = clock.fetch_add(1, Ordering::SeqCst);
                    let called_s = start.elapsed().as_secs_f64();
                    let (op, outcome) = if write {
                        let value = values.fetch_add(1, Ordering::SeqCst) as u32;
                        let sent = http
                            .put(&url)
                            .header("authorization", &token)
                            .json(&json!({"user": {"bio": bio(value)}}))
                            .send()
                            .await;
                        let outcome = match sent {
                            Ok(r) if r.status().is_success() => Outcome::Ok,
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                if certainly_refused(status, &body) {
                                    Outcome::Fail
                                } else {
                                    Outcome::Unknown
                                }
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (RegisterOp::Write(value), outcome)
                    } else {
                        let read = async {
                            let r = http.get(&url).header("authorization", &token).send().await;
                            let r = r.ok().filter(|r| r.status().is_success())?;
                            let body: serde_json::Value = r.json().await.ok()?;
                            Some(value_of(&body["user"]["bio"]))
                        };
                        match read.await {
                            Some(Ok(value)) => (RegisterOp::Read(value), Outcome::Ok),
                            // A bio that is not a register value: recorded as a read of a value
                            // nobody wrote, so the checker and the witnesses both see it.
                            Some(Err(())) => (RegisterOp::Read(Some(u32::MAX)), Outcome::Ok),
                            None => (RegisterOp::Read(None), Outcome::Unknown),
                        }
                    };
                    let returned = clock.fetch_add(1, Ordering::SeqCst);
                    let returned_s = start.elapsed().as_secs_f64();
                    ops.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Recorded {
                            key,
                            client,
                            op,
                            outcome,
                            called,
                            returned,
                            called_s,
                            returned_s,
                        });
                    tokio::time::sleep(PAUSE).await;
                }
            }));
        }
        for task in tasks {
            task.await.context("a register client")?;
        }
        let ops = std::mem::take(&mut *ops.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(ops)
    }
}

/// Checks each key's history; the verdict for the report.
pub async fn check(ops: Vec<Recorded>) -> Linearizability {
    let count = |outcome: Outcome| ops.iter().filter(|op| op.outcome == outcome).count() as u64;
    let mut verdict = Linearizability {
        keys: KEYS as u64,
        operations: ops.len() as u64,
        ok: count(Outcome::Ok),
        failed: count(Outcome::Fail),
        unknown: count(Outcome::Unknown),
        ..Linearizability::default()
    };
    let started = Instant::now();
    for key in 0..KEYS {
        let of_key: Vec<Recorded> = ops.iter().filter(|op| op.key == key).cloned().collect();
        let unknown_writes = of_key
            .iter()
            .filter(|op| op.outcome == Outcome::Unknown && matches!(op.op, RegisterOp::Write(_)))
            .count();
        let witnesses = stale_reads(&of_key);
        let linearizable = if unknown_writes > MAX_UNKNOWN_WRITES {
            None
        } else {
            // On a thread of its own, not the runtime's blocking pool: a search that outlives its
            // bound is abandoned there, and must not hold the process open when the drill ends.
            let (answer, verdict_of) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = answer
                    .send(history(&of_key).is_none_or(WGLChecker::<Register>::is_linearizable));
            });
            let left = CHECK_BOUND.saturating_sub(started.elapsed());
            tokio::time::timeout(left, verdict_of)
                .await
                .ok()
                .and_then(Result::ok)
        };
        match linearizable {
            Some(true) => verdict.linearizable_keys += 1,
            Some(false) => verdict.violating_keys += 1,
            // Too many unknown writes, or the search ran out of time.
            None => verdict.undecided_keys += 1,
        }
        if linearizable != Some(true) {
            verdict.stale_reads.extend(
                witnesses
                    .into_iter()
                    .map(|w| format!("register-{key}: {w}")),
            );
        }
    }
    verdict.check_s = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, op: RegisterOp, outcome: Outcome, called: u64, returned: u64) -> Recorded {
        Recorded {
            key: 0,
            client,
            op,
            outcome,
            called,
            returned,
            called_s: called as f64,
            returned_s: returned as f64,
        }
    }

    fn linearizable(ops: &[Recorded]) -> bool {
        history(ops).is_none_or(WGLChecker::<Register>::is_linearizable)
    }

    use Outcome::*;
    use RegisterOp::*;

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // Write 1 and a read overlap: the read may see 1 or nothing.
        for seen in [None, Some(1)] {
            let ops = [op(0, Write(1), Ok, 0, 3), op(1, Read(seen), Ok, 1, 2)];
            assert!(linearizable(&ops), "read of {seen:?}");
        }
    }

    #[test]
    fn a_read_after_an_acknowledged_write_must_see_it_or_a_later_one() {
        let ops = [
            op(0, Write(1), Ok, 0, 1),
            op(0, Write(2), Ok, 2, 3),
            op(1, Read(Some(1)), Ok, 4, 5),
        ];
        assert!(!linearizable(&ops), "an acknowledged write lost");
        assert_eq!(
            stale_reads(&ops),
            ["read at 4.0-5.0 s returned 1, though 2 was acknowledged at 3.0 s"]
        );
        let nothing = [op(0, Write(1), Ok, 0, 1), op(1, Read(None), Ok, 2, 3)];
        assert!(!linearizable(&nothing));
        assert_eq!(stale_reads(&nothing).len(), 1);
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not_and_a_failed_one_did_not() {
        let seen = [
            op(0, Write(1), Unknown, 0, 1),
            op(1, Read(Some(1)), Ok, 5, 6),
        ];
        assert!(linearizable(&seen), "it took effect");
        let unseen = [op(0, Write(1), Unknown, 0, 1), op(1, Read(None), Ok, 5, 6)];
        assert!(linearizable(&unseen), "it never did");
        let failed = [op(0, Write(1), Fail, 0, 1), op(1, Read(Some(1)), Ok, 5, 6)];
        assert!(!linearizable(&failed), "a write refused was read back");
        // Its client goes on as a new process: a later operation of it is no conflict.
        let after = [
            op(0, Write(1), Unknown, 0, 1),
            op(0, Write(2), Ok, 2, 3),
            op(1, Read(Some(2)), Ok, 4, 5),
        ];
        assert!(linearizable(&after));
    }

    #[test]
    fn the_app_refusing_before_the_database_is_a_certain_failure_and_nothing_else_is() {
        use reqwest::StatusCode;
        let down = r#"{"errors":{"database":["primary down: writes refused, reads served"]}}"#;
        assert!(certainly_refused(StatusCode::SERVICE_UNAVAILABLE, down));
        let moving = r#"{"errors":{"database":["the primary is moving, try again"]}}"#;
        assert!(!certainly_refused(StatusCode::SERVICE_UNAVAILABLE, moving));
        assert!(!certainly_refused(StatusCode::BAD_GATEWAY, ""));
        assert!(certainly_refused(StatusCode::UNPROCESSABLE_ENTITY, ""));
    }
}
