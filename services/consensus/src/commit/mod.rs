//! Atomic commit: one transaction spread over several resource managers (RMs), which must all
//! commit or all abort, decided by a protocol that survives crashes.
//!
//! Three protocols, one vocabulary and one set of properties:
//! - [`two_phase`]: two-phase commit (2PC). Safe, but it **blocks**: once an RM has voted yes it
//!   may not decide on its own, so if the coordinator crashes before telling it, it waits.
//! - [`three_phase`]: three-phase commit (3PC). A pre-commit round lets the RMs finish without the
//!   coordinator, which works when a silent peer is surely a crashed one. Under a **partition**
//!   that assumption fails, and the checker finds a run where one RM commits and another aborts.
//! - [`paxos_commit`]: Paxos Commit (Gray and Lamport, 2006). Each RM's vote is decided by its own
//!   Paxos instance over a set of acceptors, so a backup coordinator can always learn what the
//!   crashed one may have decided. It neither blocks on a coordinator crash nor decides
//!   inconsistently, even when the backup takes over while the coordinator is still alive.
//!
//! The same properties are checked on all three ([`with_commit_properties`]):
//!
//! | property | kind | true when |
//! |---|---|---|
//! | [`ATOMICITY`] | always | no RM has committed while another has aborted |
//! | [`VALIDITY`] | always | an RM commits only if every RM voted yes |
//! | [`BLOCKED`] | sometimes | nothing more can happen, and an RM that voted yes still does not know the outcome |
//! | [`ALL_COMMITTED`] | sometimes | every RM committed (the protocol can commit at all) |
//! | [`ALL_ABORTED`] | sometimes | every RM aborted |
//! | [`COMMITTED_DESPITE_CRASH`] | sometimes | an actor has crashed and every RM committed anyway |
//!
//! "Blocked" is the liveness fact stated as a state: in a model where every run is finite (each
//! message is delivered once, every timer fires once, crashes are permanent), a *final* state is
//! one where no step is left, so an RM in doubt there can never decide. For 2PC the checker
//! reaches such a state (the example is the blocking run); for 3PC without partitions and for
//! Paxos Commit it proves there is none.
//!
//! **Partitions** are modelled as what they look like from inside: a peer's messages may be
//! delayed past any timeout, so a timeout can fire while the silent peer is alive and still
//! deciding. Messages are delayed, not dropped: for properties that judge the actors' states and
//! not the messages in flight (all of these), a message lost is indistinguishable from one that
//! arrives after everything has been decided (stateright's documentation makes the same point),
//! and modelling loss as well multiplied Paxos Commit's state space past 16 GB of memory.
//! (Without loss, [`BLOCKED`] under partitions only says "not even after every delayed message
//! arrived".)
//!
//! Shortcuts, as in Gray and Lamport's specification: the transaction's work is done before the
//! models start, so there is no request to prepare (each RM votes when it is ready, and the vote is
//! a nondeterministic choice, so the checker tries every combination), and a no vote is the RM's
//! unilateral abort. RMs never crash: an RM that did would recover from its log and ask, which adds
//! states but nothing to the argument.

pub mod paxos_commit;
pub mod three_phase;
pub mod two_phase;

use crate::scenario::{is_final, ModelOf, Scenario, StateOf};
use stateright::actor::{Actor, Id, Out};
use stateright::Expectation;

/// An RM's vote. Yes is a promise: the RM has made its changes durable and may no longer abort on
/// its own. No is the RM's own abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vote {
    /// Prepared: able to commit, waiting to be told.
    Yes,
    /// Aborted (unilaterally).
    No,
}

/// The transaction's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Make the changes permanent.
    Commit,
    /// Undo them.
    Abort,
}

impl Outcome {
    /// The outcome in words.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Commit => "commit",
            Outcome::Abort => "abort",
        }
    }
}

/// What an RM has done, as the properties see it: its vote and the outcome it has applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RmRecord {
    /// The RM's vote, once cast.
    pub vote: Option<Vote>,
    /// The outcome the RM has applied, once known.
    pub outcome: Option<Outcome>,
}

impl RmRecord {
    /// Casts the vote; a no vote is also the RM's own abort.
    pub fn cast(&mut self, vote: Vote) {
        self.vote = Some(vote);
        if vote == Vote::No {
            self.outcome = Some(Outcome::Abort);
        }
    }

    /// Applies the outcome, unless one is applied already (an outcome is final). Returns whether
    /// anything changed.
    pub fn apply(&mut self, outcome: Outcome) -> bool {
        if self.outcome.is_some() {
            return false;
        }
        self.outcome = Some(outcome);
        true
    }

    /// Voted yes and not yet told the outcome: the RM may neither commit nor abort on its own.
    pub fn in_doubt(&self) -> bool {
        self.vote == Some(Vote::Yes) && self.outcome.is_none()
    }

    /// The record in words ("voted yes, in doubt").
    pub fn describe(&self) -> String {
        let vote = match self.vote {
            Some(Vote::Yes) => "voted yes",
            Some(Vote::No) => "voted no",
            None => "not voted",
        };
        let outcome = match self.outcome {
            Some(Outcome::Commit) => "committed",
            Some(Outcome::Abort) => "aborted",
            None if self.in_doubt() => "in doubt",
            None => "undecided",
        };
        format!("{vote}, {outcome}")
    }
}

/// The name of an RM's vote choice (one per RM, offered when it starts).
const VOTE: &str = "vote";

/// Offers the RM's vote as a nondeterministic choice: the checker explores both.
pub fn offer_vote<A: Actor<Random = Vote>>(o: &mut Out<A>) {
    o.choose_random(VOTE, vec![Vote::Yes, Vote::No]);
}

/// Withdraws the vote choice of an RM told the outcome before it voted.
pub fn withdraw_vote<A: Actor<Random = Vote>>(o: &mut Out<A>) {
    o.remove_random(VOTE);
}

/// The coordinator's id in 2PC and 3PC: the RMs follow it, `RM1` first.
pub const COORDINATOR: usize = 0;

/// An actor's name in a trace of 2PC or 3PC: `TM` for the coordinator, `RMn` for the others.
pub fn tm_or_rm(id: Id) -> String {
    match usize::from(id) {
        COORDINATOR => "TM".to_owned(),
        index => format!("RM{index}"),
    }
}

/// A vote as a message in a trace.
pub fn vote_message(vote: &Vote) -> String {
    match vote {
        Vote::Yes => "vote yes".to_owned(),
        Vote::No => "vote no".to_owned(),
    }
}

/// A vote choice in words, after the RM's name.
pub fn describe_vote(vote: &Vote) -> String {
    match vote {
        Vote::Yes => "votes yes (prepared)".to_owned(),
        Vote::No => "votes no (and aborts)".to_owned(),
    }
}

/// Each RM's record, and the crash count, read from a commit model's state.
pub trait CommitScenario: Scenario {
    /// Every RM's record, in RM order.
    fn records(&self, state: &StateOf<Self>) -> Vec<RmRecord>;
    /// How many actors have crashed.
    fn crashed(&self, state: &StateOf<Self>) -> usize;

    /// The RMs' records in words ("RM1 voted yes, committed; RM2 ...").
    fn describe_records(&self, state: &StateOf<Self>) -> String {
        self.records(state)
            .iter()
            .enumerate()
            .map(|(index, record)| format!("RM{} {}", index + 1, record.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Property: no RM has committed while another has aborted.
pub const ATOMICITY: &str = "atomicity";
/// Property: an RM commits only if every RM voted yes.
pub const VALIDITY: &str = "validity";
/// Property (sometimes): a final state with an RM in doubt.
pub const BLOCKED: &str = "blocked";
/// Property (sometimes): every RM committed.
pub const ALL_COMMITTED: &str = "all committed";
/// Property (sometimes): every RM aborted.
pub const ALL_ABORTED: &str = "all aborted";
/// Property (sometimes): an actor crashed, and every RM committed anyway.
pub const COMMITTED_DESPITE_CRASH: &str = "committed despite a crash";

/// Adds the atomic-commit properties (see the module docs) to a commit model.
pub fn with_commit_properties<S: CommitScenario>(model: ModelOf<S>) -> ModelOf<S> {
    model
        .property(Expectation::Always, ATOMICITY, atomicity::<S>)
        .property(Expectation::Always, VALIDITY, validity::<S>)
        .property(Expectation::Sometimes, BLOCKED, blocked::<S>)
        .property(Expectation::Sometimes, ALL_COMMITTED, all_committed::<S>)
        .property(Expectation::Sometimes, ALL_ABORTED, all_aborted::<S>)
        .property(
            Expectation::Sometimes,
            COMMITTED_DESPITE_CRASH,
            committed_despite_crash::<S>,
        )
}

fn atomicity<S: CommitScenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    let records = model.cfg.records(state);
    let committed = records
        .iter()
        .any(|record| record.outcome == Some(Outcome::Commit));
    let aborted = records
        .iter()
        .any(|record| record.outcome == Some(Outcome::Abort));
    !(committed && aborted)
}

fn validity<S: CommitScenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    let records = model.cfg.records(state);
    let committed = records
        .iter()
        .any(|record| record.outcome == Some(Outcome::Commit));
    let all_yes = records.iter().all(|record| record.vote == Some(Vote::Yes));
    !committed || all_yes
}

fn blocked<S: CommitScenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    // The cheap test first: finality means trying every step from this state.
    model.cfg.records(state).iter().any(RmRecord::in_doubt) && is_final(model, state)
}

fn all_committed<S: CommitScenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    model
        .cfg
        .records(state)
        .iter()
        .all(|record| record.outcome == Some(Outcome::Commit))
}

fn all_aborted<S: CommitScenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    model
        .cfg
        .records(state)
        .iter()
        .all(|record| record.outcome == Some(Outcome::Abort))
}

fn committed_despite_crash<S: CommitScenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    model.cfg.crashed(state) > 0 && all_committed(model, state)
}

/// The actor ids of `count` actors numbered from `first`.
pub fn ids(first: usize, count: usize) -> Vec<Id> {
    (first..first + count).map(Id::from).collect()
}
