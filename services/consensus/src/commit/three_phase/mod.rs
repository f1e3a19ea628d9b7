//! Three-phase commit (3PC, Skeen 1981): 2PC with a pre-commit round, so that the RMs can finish
//! without the coordinator.
//!
//! ```text
//!   RM  --vote yes/no-->  TM      phase 1: as in 2PC
//!   RM  <--pre-commit--   TM      phase 2: everyone voted yes (nobody has committed yet)
//!   RM  --ack-->          TM
//!   RM  <--commit/abort-- TM      phase 3: commit once every RM has acknowledged
//! ```
//!
//! The pre-commit round creates a rule no 2PC state allows: an RM that is *uncertain* (voted yes,
//! no pre-commit) knows nobody has committed; an RM that is *pre-committed* knows everybody voted
//! yes. So when the TM is gone, a backup (here the RM with the lowest number) runs the
//! **termination protocol**: it asks every RM for its state and decides
//! ([`termination_rule`]): abort if anyone aborted, commit if anyone committed or pre-committed,
//! otherwise abort. The RMs that answered follow the backup, not the TM.
//!
//! What that needs is a **perfect failure detector**: an RM suspects the TM only when the TM has
//! really crashed. Two network settings ([`ThreePhaseCommit::partitions`]):
//! - *reliable* (no partitions): messages arrive, and the TM's crash is announced to the backup
//!   (a crash notice standing in for the detector). The checker proves atomicity, validity, and
//!   that no RM is ever left in doubt: 3PC does not block.
//! - *partitions*: messages may be delayed past any timeout (see [the commit module](super) for
//!   why delayed rather than lost), so silence proves nothing, and every RM (and the TM) must act
//!   on timeouts. An RM that times out runs the termination protocol with whichever RMs answer in
//!   time, and the TM, missing an acknowledgement, commits anyway (the silent RM is presumed
//!   crashed; it will learn the outcome when it recovers). The checker finds the classic
//!   counterexample: the pre-commit to RM2 is held up, the TM times out on the missing ack and
//!   commits RM1, RM2 times out, hears from nobody in time, and aborts. **Atomicity is
//!   violated.**
//!
//! A shortcut: the backup decides without a pre-commit round of its own, which Skeen's protocol
//! has so that a *second* backup can take over if the first one crashes. Here RMs do not crash.

mod node;

pub use node::{
    termination_rule, CoordinatorPhase, Msg, Node, NodeState, RmState, Standing, Termination, Timer,
};

use super::{
    describe_vote, ids, tm_or_rm, vote_message, with_commit_properties, CommitScenario, RmRecord,
    Vote, COORDINATOR,
};
use crate::fail_stop::{self, role_state, FailStop};
use crate::scenario::{bug_suffix, ModelOf, MsgOf, Scenario, StateOf, TimerOf};
use stateright::actor::{ActorModel, Id, Network};

/// A 3PC configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreePhaseCommit {
    /// How many RMs take part. Three by default (as for 2PC); two are enough for the partition
    /// counterexample.
    pub resource_managers: usize,
    /// Whether the TM may crash (once, for good, at any moment before its work is done).
    pub coordinator_crash: bool,
    /// Whether the network may partition: messages may be delayed past any timeout, so actors act
    /// on timeouts that can fire while the silent peer is alive.
    pub partitions: bool,
    /// A seeded mistake, or `None` for the protocol as specified.
    pub bug: Option<Bug>,
}

impl Default for ThreePhaseCommit {
    fn default() -> Self {
        ThreePhaseCommit {
            resource_managers: 3,
            coordinator_crash: true,
            partitions: false,
            bug: None,
        }
    }
}

/// Deliberate mistakes the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bug {
    /// The backup commits unless some RM reports aborted: it reads "nobody aborted" as "everybody
    /// voted yes", which is exactly what an uncertain RM does not know. Breaks validity and
    /// atomicity (an RM that has not voted yet may still vote no).
    BackupCommitsUnlessAborted,
}

/// The first RM (after the TM, actor `COORDINATOR`) is the backup:
/// it runs the termination protocol when the TM's crash is announced.
const BACKUP: usize = 1;

impl Scenario for ThreePhaseCommit {
    type Actor = FailStop<Node>;
    type History = ();

    fn title(&self) -> String {
        format!(
            "three-phase commit: {} RMs, {}, {}{}",
            self.resource_managers,
            if self.coordinator_crash {
                "the TM may crash"
            } else {
                "no crashes"
            },
            if self.partitions {
                "partitions (timeouts may fire while peers are alive)"
            } else {
                "no partitions (a timeout means a crash)"
            },
            bug_suffix(self.bug)
        )
    }

    fn model(&self) -> ModelOf<Self> {
        let rms = ids(COORDINATOR + 1, self.resource_managers);
        let coordinator = Node::Coordinator {
            rms: rms.clone(),
            partitions: self.partitions,
        };
        // Only a reliable network has a perfect failure detector: it tells the backup.
        let notices = if self.partitions {
            Vec::new()
        } else {
            vec![(Id::from(BACKUP), Msg::CoordinatorDown)]
        };
        let coordinator = if self.coordinator_crash {
            FailStop::crashable(coordinator, notices)
        } else {
            FailStop::reliable(coordinator)
        };
        let model = ActorModel::new(self.clone(), ())
            .actor(coordinator)
            .actors(rms.iter().map(|rm| {
                FailStop::reliable(Node::ResourceManager {
                    coordinator: Id::from(COORDINATOR),
                    peers: rms.iter().copied().filter(|peer| peer != rm).collect(),
                    partitions: self.partitions,
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
            Msg::PreCommit => "pre-commit".to_owned(),
            Msg::Ack => "ack".to_owned(),
            Msg::Decision(outcome) => outcome.word().to_owned(),
            Msg::CoordinatorDown => "\"the TM is down\" (failure detector)".to_owned(),
            Msg::StateRequest => "state request".to_owned(),
            Msg::StateReport(standing) => format!("state: {standing:?}").to_lowercase(),
        }
    }

    fn describe_timer(&self, timer: &TimerOf<Self>) -> Option<String> {
        fail_stop::describe_timer(timer, |timer| {
            let phrase = match timer {
                Timer::VotesOverdue => "times out waiting for votes, decides abort",
                Timer::AcksOverdue => "times out waiting for acks, decides commit",
                Timer::CoordinatorSilent => {
                    "times out waiting for the TM, runs the termination protocol"
                }
                Timer::ReportsOverdue => "times out waiting for state reports, decides",
            };
            phrase.to_owned()
        })
    }

    fn describe_choice(&self, vote: &Vote) -> String {
        describe_vote(vote)
    }

    fn describe_state(&self, state: &StateOf<Self>) -> String {
        let coordinator = match role_state(&state.actor_states[COORDINATOR]) {
            None => "TM down".to_owned(),
            Some(NodeState::Coordinator(CoordinatorPhase::Decided(outcome))) => {
                format!("TM decided {}", outcome.word())
            }
            Some(_) => "TM undecided".to_owned(),
        };
        format!("{coordinator}; {}", self.describe_records(state))
    }
}

impl CommitScenario for ThreePhaseCommit {
    fn records(&self, state: &StateOf<Self>) -> Vec<RmRecord> {
        state.actor_states[COORDINATOR + 1..]
            .iter()
            .map(|life| match role_state(life) {
                Some(NodeState::ResourceManager(rm)) => rm.record,
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
    use crate::commit::{ALL_COMMITTED, ATOMICITY, BLOCKED, COMMITTED_DESPITE_CRASH, VALIDITY};

    #[test]
    fn without_partitions_three_phase_commit_is_atomic_and_does_not_block() {
        let report = run(ThreePhaseCommit::default());
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Holds));
        assert_eq!(report.verdict(VALIDITY), Some(Verdict::Holds));
        assert_eq!(report.verdict(BLOCKED), Some(Verdict::Unreached));
        assert_eq!(report.verdict(ALL_COMMITTED), Some(Verdict::Reached));
        // The termination protocol really finishes commits the crashed TM started.
        assert_eq!(
            report.verdict(COMMITTED_DESPITE_CRASH),
            Some(Verdict::Reached)
        );
    }

    #[test]
    fn under_partitions_three_phase_commit_decides_both_ways() {
        let report = run_until(
            ThreePhaseCommit {
                resource_managers: 2,
                coordinator_crash: false,
                partitions: true,
                bug: None,
            },
            Stop::AtFirstViolation,
        );
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Violated));
        let trace = report.trace(ATOMICITY).expect("a counterexample");
        assert!(trace.contains("times out"), "{trace}");
        assert!(
            trace.contains("committed") && trace.contains("aborted"),
            "{trace}"
        );
    }

    #[test]
    fn a_backup_that_commits_unless_someone_aborted_is_caught() {
        let report = run(ThreePhaseCommit {
            bug: Some(Bug::BackupCommitsUnlessAborted),
            ..ThreePhaseCommit::default()
        });
        assert_eq!(report.verdict(VALIDITY), Some(Verdict::Violated));
        assert_eq!(report.verdict(ATOMICITY), Some(Verdict::Violated));
    }
}
