//! Is a history of reads and writes on registers linearizable? The checker the stage 8 drills
//! (`archlab::history`, over HTTP) and the consensus crate's protocols run as processes
//! (`consensus::live`, over UDP) share: one definition of an operation, of its outcomes, of how a
//! history is handed to the checker and of what the verdict says.
//!
//! Every operation is recorded as Jepsen records them: invoked, then *ok*, *fail* (it certainly
//! did not happen) or *unknown* (a timeout, or an error that may have come after the commit: it
//! may have happened, now or later). A write of unknown outcome may take effect at any point after
//! its invocation, or never; following Jepsen's practice (and `todc-utils`'s own reading of
//! Jepsen's logs) it is given a response at the very end of the history, where taking effect last
//! is the same as never being read.
//!
//! The checker is `todc-utils`'s implementation of Wing and Gong's algorithm with Lowe's
//! memoisation (`WGLChecker`), run on each key's history; its self-test, on histories of Jepsen's
//! etcd tests with known verdicts, is in `stages/lab/tests/linearizability.rs`. When a key's
//! history is not linearizable, the verdict also lists reads that are stale beyond doubt (see
//! [`stale_reads`]): the checker says *whether*, those say *where*.

use std::time::{Duration, Instant};

use crate::report::Linearizability;
use todc_utils::{
    linearizability::history::{Action, History},
    specifications::Specification,
    WGLChecker,
};

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

/// Records operations as clients make them, from any number of threads or tasks: one counter
/// orders every invocation and response (so their order is real time's), one clock gives the
/// seconds for the report.
pub struct Recorder {
    clock: std::sync::atomic::AtomicU64,
    start: Instant,
    ops: std::sync::Mutex<Vec<Recorded>>,
}

/// An operation invoked and not yet returned ([`Recorder::invoke`]).
#[derive(Debug, Clone, Copy)]
pub struct Invocation {
    called: u64,
    called_s: f64,
}

impl Recorder {
    /// A recorder whose seconds count from now.
    pub fn new() -> Self {
        Recorder {
            clock: std::sync::atomic::AtomicU64::new(0),
            start: Instant::now(),
            ops: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Seconds since the recorder was made.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Marks an operation's invocation; call just before sending it.
    pub fn invoke(&self) -> Invocation {
        Invocation {
            called: self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            called_s: self.start.elapsed().as_secs_f64(),
        }
    }

    /// Records the operation's response (or its giving up), as `op` with `outcome`.
    pub fn complete(
        &self,
        invocation: Invocation,
        key: usize,
        client: usize,
        op: RegisterOp,
        outcome: Outcome,
    ) {
        let returned = self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let returned_s = self.start.elapsed().as_secs_f64();
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Recorded {
                key,
                client,
                op,
                outcome,
                called: invocation.called,
                returned,
                called_s: invocation.called_s,
                returned_s,
            });
    }

    /// Every operation recorded so far (the recorder is left empty).
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
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

/// Whether one key's history is linearizable; `None` when it holds too many writes of unknown
/// outcome to search.
pub fn linearizable(ops: &[Recorded]) -> Option<bool> {
    let unknown_writes = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Unknown && matches!(op.op, RegisterOp::Write(_)))
        .count();
    if unknown_writes > MAX_UNKNOWN_WRITES {
        return None;
    }
    Some(history(ops).is_none_or(WGLChecker::<Register>::is_linearizable))
}

/// Checks the history of each of `keys` registers (operations on keys `0..keys`), all together
/// within `bound`: a key whose search is still running then is undecided (its search is left on a
/// detached thread, which does not keep the process alive). Blocks while it checks.
pub fn check(ops: Vec<Recorded>, keys: usize, bound: Duration) -> Linearizability {
    let count = |outcome: Outcome| ops.iter().filter(|op| op.outcome == outcome).count() as u64;
    let mut verdict = Linearizability {
        keys: keys as u64,
        operations: ops.len() as u64,
        ok: count(Outcome::Ok),
        failed: count(Outcome::Fail),
        unknown: count(Outcome::Unknown),
        ..Linearizability::default()
    };
    let started = Instant::now();
    for key in 0..keys {
        let of_key: Vec<Recorded> = ops.iter().filter(|op| op.key == key).cloned().collect();
        let witnesses = stale_reads(&of_key);
        let (answer, verdict_of) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = answer.send(linearizable(&of_key));
        });
        let left = bound.saturating_sub(started.elapsed());
        // Too many unknown writes, or the search ran out of time: undecided.
        let linearizable = verdict_of.recv_timeout(left).ok().flatten();
        match linearizable {
            Some(true) => verdict.linearizable_keys += 1,
            Some(false) => verdict.violating_keys += 1,
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
        super::linearizable(ops).expect("few unknown writes")
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
}
