//! Two-phase commit (2PC): a coordinator (the transaction manager, TM) collects every RM's vote
//! and tells them all the outcome.
//!
//! ```text
//!   RM  --vote yes/no-->  TM      phase 1: every RM votes; no is an immediate abort
//!   RM  <--commit/abort-- TM      phase 2: commit if all voted yes, else abort
//! ```
//!
//! What the checker shows (`consensus check 2pc`):
//! - **atomicity and validity hold**, with or without a coordinator crash: only the TM decides,
//!   and it decides once.
//! - **it blocks** ([`BLOCKED`](super::BLOCKED) is reached): the TM crashes after some RMs voted
//!   yes and before it told them the outcome (possibly after telling others). Those RMs can
//!   neither commit (someone may have voted no) nor abort (the TM may have decided commit and told
//!   another RM). Nothing else can happen: the run has ended with them in doubt. A real system
//!   waits for the TM to recover from its log, holding the transaction's locks meanwhile; stage 7's
//!   drill measures that window on the running application.
//! - [`COMMITTED_DESPITE_CRASH`](super::COMMITTED_DESPITE_CRASH) is unreached: no one but the TM
//!   can finish a commit.
//!
//! Seeded bugs ([`Bug`]) each break a property, and the tests check that the checker says so.

use super::{
    describe_vote, ids, offer_vote, tm_or_rm, vote_message, with_commit_properties, withdraw_vote,
    CommitScenario, Outcome, RmRecord, Vote, COORDINATOR,
};
use crate::fail_stop::{self, role_state, FailStop, Role};
use crate::scenario::{bug_suffix, ModelOf, MsgOf, Scenario, StateOf, TimerOf};
use stateright::actor::{model_timeout, Actor, ActorModel, Id, Network, Out};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A 2PC configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPhaseCommit {
    /// How many RMs take part. Three is the default: with two, "told some RMs and not others"
    /// has only one shape; four take the state space from 745 to 6,334 states and show nothing
    /// new.
    pub resource_managers: usize,
    /// Whether the TM may crash (once, for good, at any moment before its work is done).
    pub coordinator_crash: bool,
    /// A seeded mistake, or `None` for the protocol as specified.
    pub bug: Option<Bug>,
}

impl Default for TwoPhaseCommit {
    fn default() -> Self {
        TwoPhaseCommit {
            resource_managers: 3,
            coordinator_crash: true,
            bug: None,
        }
    }
}

/// Deliberate mistakes the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bug {
    /// The TM commits once all votes but one are in and all are yes: it counts the missing vote as
    /// a yes. Breaks validity (and atomicity, when the late vote is a no).
    CoordinatorCommitsOnMissingVote,
    /// A prepared RM that has waited "too long" aborts on its own: the tempting cure for blocking.
    /// Breaks atomicity, because the TM may already have decided commit.
    PreparedRmGivesUp,
}

/// The messages of 2PC.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// RM to TM: the RM's vote.
    Vote(Vote),
    /// TM to RM: the outcome.
    Decision(Outcome),
}

/// The only timer of 2PC's RMs, armed only by [`Bug::PreparedRmGivesUp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// A prepared RM stops waiting for the outcome.
    GiveUp,
}

/// A 2PC actor's role.
#[derive(Clone, Debug)]
pub enum Node {
    /// The transaction manager.
    Coordinator {
        /// The RMs it collects votes from and tells the outcome.
        rms: Vec<Id>,
        /// The seeded mistake, if any.
        bug: Option<Bug>,
    },
    /// A resource manager.
    ResourceManager {
        /// Where it sends its vote.
        coordinator: Id,
        /// The seeded mistake, if any.
        bug: Option<Bug>,
    },
}

/// A 2PC actor's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// The TM's state.
    Coordinator(CoordinatorState),
    /// An RM's state: its vote and outcome are all it has.
    ResourceManager(RmRecord),
}

/// What the TM knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CoordinatorState {
    /// The votes received so far.
    pub votes: BTreeMap<Id, Vote>,
    /// The outcome, once decided (a real TM writes it to its log before sending it).
    pub decision: Option<Outcome>,
}

/// The TM's rule: abort on the first no, commit once every RM has voted yes.
fn decide(votes: &BTreeMap<Id, Vote>, rm_count: usize, bug: Option<Bug>) -> Option<Outcome> {
    if votes.values().any(|vote| *vote == Vote::No) {
        return Some(Outcome::Abort);
    }
    let needed = match bug {
        Some(Bug::CoordinatorCommitsOnMissingVote) => rm_count.saturating_sub(1),
        _ => rm_count,
    };
    (votes.len() >= needed).then_some(Outcome::Commit)
}

impl Actor for Node {
    type Msg = Msg;
    type State = NodeState;
    type Timer = Timer;
    type Random = Vote;
    type Storage = ();

    fn name(&self) -> String {
        match self {
            Node::Coordinator { .. } => "transaction manager".to_owned(),
            Node::ResourceManager { .. } => "resource manager".to_owned(),
        }
    }

    fn on_start(&self, _id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> NodeState {
        match self {
            Node::Coordinator { .. } => NodeState::Coordinator(CoordinatorState::default()),
            Node::ResourceManager { .. } => {
                offer_vote(o);
                NodeState::ResourceManager(RmRecord::default())
            }
        }
    }

    fn on_random(&self, _id: Id, state: &mut Cow<NodeState>, vote: &Vote, o: &mut Out<Self>) {
        let (Node::ResourceManager { coordinator, bug }, NodeState::ResourceManager(record)) =
            (self, &**state)
        else {
            return;
        };
        let mut record = *record;
        record.cast(*vote);
        o.send(*coordinator, Msg::Vote(*vote));
        if *vote == Vote::Yes && *bug == Some(Bug::PreparedRmGivesUp) {
            o.set_timer(Timer::GiveUp, model_timeout());
        }
        *state.to_mut() = NodeState::ResourceManager(record);
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match (self, &**state, msg) {
            (Node::Coordinator { rms, bug }, NodeState::Coordinator(tm), Msg::Vote(vote)) => {
                if tm.decision.is_some() {
                    return;
                }
                let mut tm = tm.clone();
                tm.votes.insert(src, vote);
                tm.decision = decide(&tm.votes, rms.len(), *bug);
                if let Some(outcome) = tm.decision {
                    o.broadcast(rms, &Msg::Decision(outcome));
                }
                *state.to_mut() = NodeState::Coordinator(tm);
            }
            (
                Node::ResourceManager { bug, .. },
                NodeState::ResourceManager(record),
                Msg::Decision(outcome),
            ) => {
                let mut record = *record;
                if !record.apply(outcome) {
                    return;
                }
                if record.vote.is_none() {
                    withdraw_vote(o);
                }
                if *bug == Some(Bug::PreparedRmGivesUp) {
                    o.cancel_timer(Timer::GiveUp);
                }
                *state.to_mut() = NodeState::ResourceManager(record);
            }
            _ => {}
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<NodeState>, timer: &Timer, _o: &mut Out<Self>) {
        // Armed only by the seeded bug: the prepared RM aborts on its own.
        let (Timer::GiveUp, NodeState::ResourceManager(record)) = (timer, &**state) else {
            return;
        };
        let mut record = *record;
        if record.apply(Outcome::Abort) {
            *state.to_mut() = NodeState::ResourceManager(record);
        }
    }
}

impl Role for Node {
    fn is_finished(&self, state: &NodeState) -> bool {
        match state {
            NodeState::Coordinator(tm) => tm.decision.is_some(),
            NodeState::ResourceManager(record) => record.outcome.is_some(),
        }
    }
}

impl Scenario for TwoPhaseCommit {
    type Actor = FailStop<Node>;
    type History = ();

    fn title(&self) -> String {
        format!(
            "two-phase commit: {} RMs, {}{}",
            self.resource_managers,
            if self.coordinator_crash {
                "the TM may crash"
            } else {
                "no crashes"
            },
            bug_suffix(self.bug)
        )
    }

    fn model(&self) -> ModelOf<Self> {
        let rms = ids(COORDINATOR + 1, self.resource_managers);
        let coordinator = Node::Coordinator {
            rms: rms.clone(),
            bug: self.bug,
        };
        // No crash notices: 2PC assumes no failure detector, its RMs just wait.
        let coordinator = if self.coordinator_crash {
            FailStop::crashable(coordinator, Vec::new())
        } else {
            FailStop::reliable(coordinator)
        };
        let model = ActorModel::new(self.clone(), ())
            .actor(coordinator)
            .actors(rms.iter().map(|_| {
                FailStop::reliable(Node::ResourceManager {
                    coordinator: Id::from(COORDINATOR),
                    bug: self.bug,
                })
            }))
            .init_network(Network::new_unordered_nonduplicating([]));
        with_commit_properties(model)
    }

    fn actor_name(&self, id: Id) -> String {
        tm_or_rm(id)
    }

    fn describe_message(&self, msg: &MsgOf<Self>) -> String {
        match msg {
            Msg::Vote(vote) => vote_message(vote),
            Msg::Decision(outcome) => outcome.word().to_owned(),
        }
    }

    fn describe_timer(&self, timer: &TimerOf<Self>) -> Option<String> {
        fail_stop::describe_timer(timer, |Timer::GiveUp| {
            "gives up waiting and aborts on its own".to_owned()
        })
    }

    fn describe_choice(&self, vote: &Vote) -> String {
        describe_vote(vote)
    }

    fn describe_state(&self, state: &StateOf<Self>) -> String {
        let coordinator = match role_state(&state.actor_states[COORDINATOR]) {
            None => "TM down".to_owned(),
            Some(NodeState::Coordinator(tm)) => match tm.decision {
                Some(outcome) => format!("TM decided {}", outcome.word()),
                None => "TM undecided".to_owned(),
            },
            Some(NodeState::ResourceManager(_)) => "TM?".to_owned(),
        };
        format!("{coordinator}; {}", self.describe_records(state))
    }
}

impl CommitScenario for TwoPhaseCommit {
    fn records(&self, state: &StateOf<Self>) -> Vec<RmRecord> {
        state.actor_states[COORDINATOR + 1..]
            .iter()
            .map(|life| match role_state(life) {
                Some(NodeState::ResourceManager(record)) => *record,
                _ => RmRecord::default(),
            })
            .collect()
    }

    fn crashed(&self, state: &StateOf<Self>) -> usize {
        fail_stop::crashed_count(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{run, run_until, Stop, Verdict};
    use crate::commit::{
        ALL_ABORTED, ALL_COMMITTED, ATOMICITY, BLOCKED, COMMITTED_DESPITE_CRASH, VALIDITY,
    };

    #[test]
    fn two_phase_commit_is_safe_and_blocks_when_the_coordinator_crashes() {
        let report = run(TwoPhaseCommit::default());
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Holds));
        assert_eq!(report.verdict(VALIDITY), Some(Verdict::Holds));
        assert_eq!(report.verdict(ALL_COMMITTED), Some(Verdict::Reached));
        assert_eq!(report.verdict(ALL_ABORTED), Some(Verdict::Reached));
        assert_eq!(report.verdict(BLOCKED), Some(Verdict::Reached));
        assert_eq!(
            report.verdict(COMMITTED_DESPITE_CRASH),
            Some(Verdict::Unreached)
        );
        let trace = report.trace(BLOCKED).expect("the blocking run");
        assert!(trace.contains("TM crashes"), "{trace}");
        assert!(trace.contains("in doubt"), "{trace}");
    }

    #[test]
    fn without_a_crash_two_phase_commit_never_blocks() {
        let report = run(TwoPhaseCommit {
            coordinator_crash: false,
            ..TwoPhaseCommit::default()
        });
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Holds));
        assert_eq!(report.verdict(BLOCKED), Some(Verdict::Unreached));
        assert_eq!(report.verdict(ALL_COMMITTED), Some(Verdict::Reached));
    }

    #[test]
    fn a_coordinator_that_counts_a_missing_vote_as_yes_is_caught() {
        // Both invariants fail; the model is small enough to let the checker find both.
        let report = run(TwoPhaseCommit {
            bug: Some(Bug::CoordinatorCommitsOnMissingVote),
            ..TwoPhaseCommit::default()
        });
        assert_eq!(report.verdict(VALIDITY), Some(Verdict::Violated));
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Violated));
        let trace = report.trace(ATOMICITY).expect("a counterexample");
        assert!(
            trace.contains("committed") && trace.contains("aborted"),
            "{trace}"
        );
    }

    #[test]
    fn a_prepared_rm_that_gives_up_is_caught() {
        let report = run_until(
            TwoPhaseCommit {
                bug: Some(Bug::PreparedRmGivesUp),
                ..TwoPhaseCommit::default()
            },
            Stop::AtFirstViolation,
        );
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Violated));
        let trace = report.trace(ATOMICITY).expect("a counterexample");
        assert!(trace.contains("gives up waiting"), "{trace}");
    }
}
