//! Three-phase commit's protocol: its messages, the TM's and the RMs' rules, and the
//! termination protocol. The configuration, naming and tests are in [the module](super).

use super::Bug;
use crate::commit::{offer_vote, withdraw_vote, Outcome, RmRecord, Vote};
use crate::fail_stop::Role;
use stateright::actor::{model_timeout, Actor, Id, Out};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// An RM's state as it reports it to a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Standing {
    /// Has not voted.
    Working,
    /// Voted yes, no pre-commit yet: does not know whether everybody voted yes.
    Uncertain,
    /// Pre-committed: knows everybody voted yes.
    PreCommitted,
    /// Committed.
    Committed,
    /// Aborted.
    Aborted,
}

/// The messages of 3PC.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// RM to TM: the RM's vote.
    Vote(Vote),
    /// TM to RM: everybody voted yes.
    PreCommit,
    /// RM to TM: pre-commit received.
    Ack,
    /// TM or backup to RM: the outcome.
    Decision(Outcome),
    /// Failure detector to the backup: the TM has crashed (reliable setting only).
    CoordinatorDown,
    /// Backup to RM: what is your state? (From now on, follow me.)
    StateRequest,
    /// RM to backup: my state.
    StateReport(Standing),
}

/// The timers of 3PC, armed only in the partition setting, where silence is all an actor sees.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// TM: not every vote came; abort.
    VotesOverdue,
    /// TM: not every acknowledgement came; commit anyway.
    AcksOverdue,
    /// RM: the TM has gone quiet; run the termination protocol.
    CoordinatorSilent,
    /// Backup: not every RM answered; decide with the answers in.
    ReportsOverdue,
}

/// A 3PC actor's role.
#[derive(Clone, Debug)]
pub enum Node {
    /// The transaction manager.
    Coordinator {
        /// The RMs.
        rms: Vec<Id>,
        /// Whether to act on timeouts (the partition setting).
        partitions: bool,
    },
    /// A resource manager, possibly the backup.
    ResourceManager {
        /// The TM.
        coordinator: Id,
        /// The other RMs, polled when this RM runs the termination protocol.
        peers: Vec<Id>,
        /// Whether to act on timeouts (the partition setting).
        partitions: bool,
        /// The seeded mistake, if any.
        bug: Option<Bug>,
    },
}

/// Where the TM is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorPhase {
    /// Waiting for votes.
    Collecting(BTreeMap<Id, Vote>),
    /// Everybody voted yes; waiting for acknowledgements of the pre-commit.
    PreCommitting(BTreeSet<Id>),
    /// Done.
    Decided(Outcome),
}

/// An RM's part in the termination protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Termination {
    /// Not involved.
    Idle,
    /// Answered a backup's request; follows that backup from now on.
    Following(Id),
    /// Running it as the backup: the states reported so far, its own included.
    Polling(BTreeMap<Id, Standing>),
    /// Ran it and told everybody.
    Done,
}

/// What an RM knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RmState {
    /// Its vote and outcome.
    pub record: RmRecord,
    /// Received the pre-commit.
    pub pre_committed: bool,
    /// Its part in the termination protocol.
    pub termination: Termination,
}

impl RmState {
    fn standing(&self) -> Standing {
        match (self.record.outcome, self.record.vote) {
            (Some(Outcome::Commit), _) => Standing::Committed,
            (Some(Outcome::Abort), _) => Standing::Aborted,
            (None, None) => Standing::Working,
            (None, Some(_)) if self.pre_committed => Standing::PreCommitted,
            (None, Some(_)) => Standing::Uncertain,
        }
    }
}

/// A 3PC actor's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// The TM's state.
    Coordinator(CoordinatorPhase),
    /// An RM's state.
    ResourceManager(RmState),
}

/// The backup's decision from the states it has (Skeen's termination rule): abort if anyone
/// aborted; commit if anyone committed or pre-committed (then everybody voted yes, and nobody can
/// have aborted); otherwise, with everybody uncertain or working, nobody can have committed, so
/// abort.
pub fn termination_rule(reports: &BTreeMap<Id, Standing>, bug: Option<Bug>) -> Outcome {
    let any = |standing| reports.values().any(|reported| *reported == standing);
    if any(Standing::Aborted) {
        Outcome::Abort
    } else if any(Standing::Committed)
        || any(Standing::PreCommitted)
        || bug == Some(Bug::BackupCommitsUnlessAborted)
    {
        Outcome::Commit
    } else {
        Outcome::Abort
    }
}

impl Node {
    fn on_coordinator_msg(
        rms: &[Id],
        partitions: bool,
        phase: &CoordinatorPhase,
        src: Id,
        msg: Msg,
        o: &mut Out<Self>,
    ) -> Option<CoordinatorPhase> {
        match (phase, msg) {
            (CoordinatorPhase::Collecting(votes), Msg::Vote(vote)) => {
                let mut votes = votes.clone();
                votes.insert(src, vote);
                if vote == Vote::No {
                    Some(Self::decide(rms, partitions, Outcome::Abort, o))
                } else if votes.len() == rms.len() {
                    o.broadcast(rms, &Msg::PreCommit);
                    if partitions {
                        o.cancel_timer(Timer::VotesOverdue);
                        o.set_timer(Timer::AcksOverdue, model_timeout());
                    }
                    Some(CoordinatorPhase::PreCommitting(BTreeSet::new()))
                } else {
                    Some(CoordinatorPhase::Collecting(votes))
                }
            }
            (CoordinatorPhase::PreCommitting(acks), Msg::Ack) => {
                let mut acks = acks.clone();
                acks.insert(src);
                if acks.len() == rms.len() {
                    Some(Self::decide(rms, partitions, Outcome::Commit, o))
                } else {
                    Some(CoordinatorPhase::PreCommitting(acks))
                }
            }
            _ => None,
        }
    }

    fn decide(
        rms: &[Id],
        partitions: bool,
        outcome: Outcome,
        o: &mut Out<Self>,
    ) -> CoordinatorPhase {
        o.broadcast(rms, &Msg::Decision(outcome));
        if partitions {
            o.cancel_timer(Timer::VotesOverdue);
            o.cancel_timer(Timer::AcksOverdue);
        }
        CoordinatorPhase::Decided(outcome)
    }

    /// Starts the termination protocol as the backup: poll the others, or decide at once if
    /// there are none.
    fn start_termination(
        id: Id,
        peers: &[Id],
        partitions: bool,
        bug: Option<Bug>,
        rm: &mut RmState,
        o: &mut Out<Self>,
    ) {
        let reports = BTreeMap::from([(id, rm.standing())]);
        o.broadcast(peers, &Msg::StateRequest);
        if partitions {
            o.set_timer(Timer::ReportsOverdue, model_timeout());
        }
        rm.termination = Termination::Polling(reports);
        if peers.is_empty() {
            Self::finish_termination(peers, partitions, bug, rm, o);
        }
    }

    /// Decides with the reports in (or keeps the outcome it already has, if one reached it
    /// meanwhile), applies it and tells the other RMs.
    fn finish_termination(
        peers: &[Id],
        partitions: bool,
        bug: Option<Bug>,
        rm: &mut RmState,
        o: &mut Out<Self>,
    ) {
        let Termination::Polling(reports) = &rm.termination else {
            return;
        };
        let outcome = rm
            .record
            .outcome
            .unwrap_or_else(|| termination_rule(reports, bug));
        o.broadcast(peers, &Msg::Decision(outcome));
        rm.termination = Termination::Done;
        Self::apply(partitions, rm, outcome, o);
    }

    /// Applies an outcome (the first one wins) and stops every pending timer and choice.
    fn apply(partitions: bool, rm: &mut RmState, outcome: Outcome, o: &mut Out<Self>) {
        if !rm.record.apply(outcome) {
            return;
        }
        if rm.record.vote.is_none() {
            withdraw_vote(o);
        }
        if partitions {
            o.cancel_timer(Timer::CoordinatorSilent);
            o.cancel_timer(Timer::ReportsOverdue);
        }
    }
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
            Node::Coordinator { partitions, .. } => {
                if *partitions {
                    o.set_timer(Timer::VotesOverdue, model_timeout());
                }
                NodeState::Coordinator(CoordinatorPhase::Collecting(BTreeMap::new()))
            }
            Node::ResourceManager { .. } => {
                offer_vote(o);
                NodeState::ResourceManager(RmState {
                    record: RmRecord::default(),
                    pre_committed: false,
                    termination: Termination::Idle,
                })
            }
        }
    }

    fn on_random(&self, _id: Id, state: &mut Cow<NodeState>, vote: &Vote, o: &mut Out<Self>) {
        let (
            Node::ResourceManager {
                coordinator,
                partitions,
                ..
            },
            NodeState::ResourceManager(rm),
        ) = (self, &**state)
        else {
            return;
        };
        let mut rm = rm.clone();
        rm.record.cast(*vote);
        o.send(*coordinator, Msg::Vote(*vote));
        if *vote == Vote::Yes && *partitions {
            o.set_timer(Timer::CoordinatorSilent, model_timeout());
        }
        *state.to_mut() = NodeState::ResourceManager(rm);
    }

    fn on_msg(&self, id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match (self, &**state) {
            (Node::Coordinator { rms, partitions }, NodeState::Coordinator(phase)) => {
                if let Some(phase) = Self::on_coordinator_msg(rms, *partitions, phase, src, msg, o)
                {
                    *state.to_mut() = NodeState::Coordinator(phase);
                }
            }
            (
                Node::ResourceManager {
                    coordinator,
                    peers,
                    partitions,
                    bug,
                },
                NodeState::ResourceManager(before),
            ) => {
                let mut rm = before.clone();
                match msg {
                    // An RM following a backup no longer listens to the TM's pre-commit.
                    Msg::PreCommit
                        if rm.termination == Termination::Idle
                            && rm.standing() == Standing::Uncertain =>
                    {
                        rm.pre_committed = true;
                        o.send(*coordinator, Msg::Ack);
                    }
                    Msg::Decision(outcome) => Self::apply(*partitions, &mut rm, outcome, o),
                    Msg::CoordinatorDown if rm.termination == Termination::Idle => {
                        Self::start_termination(id, peers, *partitions, *bug, &mut rm, o);
                    }
                    Msg::StateRequest => {
                        o.send(src, Msg::StateReport(rm.standing()));
                        if rm.termination == Termination::Idle {
                            rm.termination = Termination::Following(src);
                        }
                    }
                    Msg::StateReport(standing) => {
                        let Termination::Polling(reports) = &mut rm.termination else {
                            return;
                        };
                        reports.insert(src, standing);
                        if reports.len() == peers.len() + 1 {
                            Self::finish_termination(peers, *partitions, *bug, &mut rm, o);
                        }
                    }
                    _ => return,
                }
                // A message that changed nothing (a second outcome, say) stays a no-op.
                if rm != *before {
                    *state.to_mut() = NodeState::ResourceManager(rm);
                }
            }
            _ => {}
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<NodeState>, timer: &Timer, o: &mut Out<Self>) {
        match (self, &**state, timer) {
            (
                Node::Coordinator { rms, partitions },
                NodeState::Coordinator(CoordinatorPhase::Collecting(_)),
                Timer::VotesOverdue,
            ) => {
                *state.to_mut() =
                    NodeState::Coordinator(Self::decide(rms, *partitions, Outcome::Abort, o));
            }
            (
                Node::Coordinator { rms, partitions },
                NodeState::Coordinator(CoordinatorPhase::PreCommitting(_)),
                Timer::AcksOverdue,
            ) => {
                // The silent RM is presumed crashed: it will learn the outcome when it recovers.
                *state.to_mut() =
                    NodeState::Coordinator(Self::decide(rms, *partitions, Outcome::Commit, o));
            }
            (
                Node::ResourceManager {
                    peers,
                    partitions,
                    bug,
                    ..
                },
                NodeState::ResourceManager(rm),
                Timer::CoordinatorSilent,
            ) if rm.record.outcome.is_none() && rm.termination == Termination::Idle => {
                let mut rm = rm.clone();
                Self::start_termination(id, peers, *partitions, *bug, &mut rm, o);
                *state.to_mut() = NodeState::ResourceManager(rm);
            }
            (
                Node::ResourceManager {
                    peers,
                    partitions,
                    bug,
                    ..
                },
                NodeState::ResourceManager(rm),
                Timer::ReportsOverdue,
            ) if matches!(rm.termination, Termination::Polling(_)) => {
                let mut rm = rm.clone();
                Self::finish_termination(peers, *partitions, *bug, &mut rm, o);
                *state.to_mut() = NodeState::ResourceManager(rm);
            }
            _ => {}
        }
    }
}

impl Role for Node {
    fn is_finished(&self, state: &NodeState) -> bool {
        match state {
            NodeState::Coordinator(phase) => matches!(phase, CoordinatorPhase::Decided(_)),
            NodeState::ResourceManager(rm) => rm.record.outcome.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_termination_rule_commits_only_after_a_pre_commit() {
        let reports = |standings: &[Standing]| -> BTreeMap<Id, Standing> {
            standings
                .iter()
                .enumerate()
                .map(|(index, standing)| (Id::from(index), *standing))
                .collect()
        };
        use Standing::*;
        let rule = |standings: &[Standing]| termination_rule(&reports(standings), None);
        assert_eq!(rule(&[Uncertain, Uncertain]), Outcome::Abort);
        assert_eq!(rule(&[Uncertain, PreCommitted]), Outcome::Commit);
        assert_eq!(rule(&[Uncertain, Committed]), Outcome::Commit);
        assert_eq!(rule(&[Working, Uncertain]), Outcome::Abort);
        assert_eq!(rule(&[PreCommitted, Aborted]), Outcome::Abort);
    }
}
