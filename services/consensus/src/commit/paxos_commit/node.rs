//! Paxos Commit's protocol: its messages, its four roles (leader, resource manager, acceptor,
//! backup) and their rules. The configuration, naming and tests are in [the module](super).

use super::Bug;
use crate::commit::{offer_vote, withdraw_vote, Outcome, RmRecord, Vote};
use crate::fail_stop::Role;
use stateright::actor::{majority, model_timeout, Actor, Id, Out};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// A ballot number: 0 is the leader's (in which each RM proposes its own vote), 1 the backup's.
pub type Ballot = u8;
/// The leader's ballot.
const LEADER_BALLOT: Ballot = 0;
/// The backup's ballot.
const BACKUP_BALLOT: Ballot = 1;

/// What an acceptor has accepted in each instance: the ballot and the vote, or nothing.
pub type Accepted = Vec<Option<(Ballot, Vote)>>;

/// The messages of Paxos Commit. Instances are numbered by RM (0 is RM1's).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// Phase 2a, to the acceptors: accept these (instance, vote) pairs in this ballot.
    Accept {
        /// The ballot.
        ballot: Ballot,
        /// The values proposed, by instance.
        votes: Vec<(usize, Vote)>,
    },
    /// Phase 2b, acceptor to the ballot's coordinator: accepted.
    Accepted {
        /// The ballot.
        ballot: Ballot,
        /// The values accepted, by instance.
        votes: Vec<(usize, Vote)>,
    },
    /// Phase 1a, backup to the acceptors, for every instance at once.
    Prepare {
        /// The ballot.
        ballot: Ballot,
    },
    /// Phase 1b, acceptor to backup: promised, and here is what I accepted before.
    Promise {
        /// The ballot.
        ballot: Ballot,
        /// What the acceptor had accepted, by instance.
        accepted: Accepted,
    },
    /// Coordinator to RM: the outcome.
    Decision(Outcome),
    /// Failure detector to the backup: the leader has crashed (reliable network only).
    LeaderDown,
}

/// The backup's timer, armed only with partitions: it may suspect the leader at any moment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The backup suspects the leader and takes over.
    Suspect,
}

/// A Paxos Commit actor's role.
#[derive(Clone, Debug)]
pub enum Node {
    /// The leader (the TM), coordinator of ballot 0.
    Leader {
        /// The RMs, told the outcome.
        rms: Vec<Id>,
        /// How many acceptors there are (a majority of them decides an instance).
        acceptors: usize,
    },
    /// A resource manager, proposer of its own instance in ballot 0.
    ResourceManager {
        /// Its instance.
        instance: usize,
        /// The acceptors it sends its vote to.
        acceptors: Vec<Id>,
    },
    /// An acceptor, one for all instances.
    Acceptor {
        /// Coordinator of ballot 0.
        leader: Id,
        /// Coordinator of ballot 1.
        backup: Id,
        /// How many instances (RMs).
        instances: usize,
    },
    /// The backup coordinator, of ballot 1.
    Backup {
        /// The acceptors.
        acceptors: Vec<Id>,
        /// The RMs, told the outcome.
        rms: Vec<Id>,
        /// Whether it acts on suspicion (timer) instead of a crash notice.
        partitions: bool,
        /// The seeded mistake, if any.
        bug: Option<Bug>,
    },
}

/// What the leader has learned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeaderState {
    /// For each (instance, vote), the acceptors that accepted it in ballot 0.
    pub heard: BTreeMap<(usize, Vote), BTreeSet<Id>>,
    /// The outcome, once every instance is decided (or one is decided no).
    pub outcome: Option<Outcome>,
}

/// What an acceptor has promised and accepted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AcceptorState {
    /// It takes part in no ballot lower than this.
    pub promised: Ballot,
    /// What it accepted, by instance.
    pub accepted: Accepted,
}

/// Where the backup is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackupPhase {
    /// Not involved (the leader is fine, as far as it knows).
    Idle,
    /// Sent prepare b1; the promises so far.
    Preparing(BTreeMap<Id, Accepted>),
    /// Sent accept b1 with these values; the acceptors that accepted so far.
    Accepting {
        /// The value proposed for each instance.
        votes: Vec<Vote>,
        /// The acceptors that accepted.
        accepted_by: BTreeSet<Id>,
    },
    /// Done.
    Decided(Outcome),
}

/// A Paxos Commit actor's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// The leader's state.
    Leader(LeaderState),
    /// An RM's state.
    ResourceManager(RmRecord),
    /// An acceptor's state.
    Acceptor(AcceptorState),
    /// The backup's state.
    Backup(BackupPhase),
}

/// The transaction's outcome from each instance's chosen vote: abort as soon as one chose no,
/// commit once all chose yes, otherwise not yet known.
fn outcome_of(chosen: impl IntoIterator<Item = Option<Vote>>) -> Option<Outcome> {
    let mut all_yes = true;
    for vote in chosen {
        match vote {
            Some(Vote::No) => return Some(Outcome::Abort),
            Some(Vote::Yes) => {}
            None => all_yes = false,
        }
    }
    all_yes.then_some(Outcome::Commit)
}

/// The backup's proposal for one instance: the vote accepted in the highest ballot among the
/// promises (it may have been chosen), else no (nothing can have been chosen, so aborting is safe).
fn proposal_for(instance: usize, promises: &BTreeMap<Id, Accepted>, bug: Option<Bug>) -> Vote {
    if bug == Some(Bug::BackupIgnoresAcceptedVotes) {
        return Vote::No;
    }
    promises
        .values()
        .filter_map(|accepted| accepted.get(instance).copied().flatten())
        .max_by_key(|(ballot, _)| *ballot)
        .map_or(Vote::No, |(_, vote)| vote)
}

impl Node {
    fn on_leader_msg(
        rms: &[Id],
        acceptors: usize,
        leader: &LeaderState,
        src: Id,
        msg: Msg,
        o: &mut Out<Self>,
    ) -> Option<LeaderState> {
        let Msg::Accepted {
            ballot: LEADER_BALLOT,
            votes,
        } = msg
        else {
            return None;
        };
        if leader.outcome.is_some() {
            return None;
        }
        let mut leader = leader.clone();
        for vote in votes {
            leader.heard.entry(vote).or_default().insert(src);
        }
        let chosen = (0..rms.len()).map(|instance| {
            [Vote::Yes, Vote::No].into_iter().find(|vote| {
                leader
                    .heard
                    .get(&(instance, *vote))
                    .is_some_and(|by| by.len() >= majority(acceptors))
            })
        });
        leader.outcome = outcome_of(chosen);
        if let Some(outcome) = leader.outcome {
            o.broadcast(rms, &Msg::Decision(outcome));
        }
        Some(leader)
    }

    fn on_acceptor_msg(
        leader: Id,
        backup: Id,
        acceptor: &AcceptorState,
        src: Id,
        msg: Msg,
        o: &mut Out<Self>,
    ) -> Option<AcceptorState> {
        match msg {
            Msg::Accept { ballot, votes } if ballot >= acceptor.promised => {
                let mut acceptor = acceptor.clone();
                acceptor.promised = ballot;
                for (instance, vote) in &votes {
                    acceptor.accepted[*instance] = Some((ballot, *vote));
                }
                let coordinator = if ballot == LEADER_BALLOT {
                    leader
                } else {
                    backup
                };
                o.send(coordinator, Msg::Accepted { ballot, votes });
                Some(acceptor)
            }
            Msg::Prepare { ballot } if ballot > acceptor.promised => {
                o.send(
                    src,
                    Msg::Promise {
                        ballot,
                        accepted: acceptor.accepted.clone(),
                    },
                );
                Some(AcceptorState {
                    promised: ballot,
                    accepted: acceptor.accepted.clone(),
                })
            }
            _ => None,
        }
    }

    fn take_over(acceptors: &[Id], o: &mut Out<Self>) -> BackupPhase {
        o.broadcast(
            acceptors,
            &Msg::Prepare {
                ballot: BACKUP_BALLOT,
            },
        );
        BackupPhase::Preparing(BTreeMap::new())
    }

    fn on_backup_msg(
        acceptors: &[Id],
        rms: &[Id],
        bug: Option<Bug>,
        phase: &BackupPhase,
        src: Id,
        msg: Msg,
        o: &mut Out<Self>,
    ) -> Option<BackupPhase> {
        let quorum = majority(acceptors.len());
        match (phase, msg) {
            (BackupPhase::Idle, Msg::LeaderDown) => Some(Self::take_over(acceptors, o)),
            (
                BackupPhase::Preparing(promises),
                Msg::Promise {
                    ballot: BACKUP_BALLOT,
                    accepted,
                },
            ) => {
                let mut promises = promises.clone();
                promises.insert(src, accepted);
                if promises.len() < quorum {
                    return Some(BackupPhase::Preparing(promises));
                }
                let votes: Vec<Vote> = (0..rms.len())
                    .map(|instance| proposal_for(instance, &promises, bug))
                    .collect();
                o.broadcast(
                    acceptors,
                    &Msg::Accept {
                        ballot: BACKUP_BALLOT,
                        votes: votes.iter().copied().enumerate().collect(),
                    },
                );
                Some(BackupPhase::Accepting {
                    votes,
                    accepted_by: BTreeSet::new(),
                })
            }
            (
                BackupPhase::Accepting { votes, accepted_by },
                Msg::Accepted {
                    ballot: BACKUP_BALLOT,
                    ..
                },
            ) => {
                let mut accepted_by = accepted_by.clone();
                accepted_by.insert(src);
                if accepted_by.len() < quorum {
                    return Some(BackupPhase::Accepting {
                        votes: votes.clone(),
                        accepted_by,
                    });
                }
                let outcome = outcome_of(votes.iter().copied().map(Some)).unwrap_or(Outcome::Abort);
                o.broadcast(rms, &Msg::Decision(outcome));
                Some(BackupPhase::Decided(outcome))
            }
            _ => None,
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
            Node::Leader { .. } => "leader".to_owned(),
            Node::ResourceManager { .. } => "resource manager".to_owned(),
            Node::Acceptor { .. } => "acceptor".to_owned(),
            Node::Backup { .. } => "backup leader".to_owned(),
        }
    }

    fn on_start(&self, _id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> NodeState {
        match self {
            Node::Leader { .. } => NodeState::Leader(LeaderState::default()),
            Node::ResourceManager { .. } => {
                offer_vote(o);
                NodeState::ResourceManager(RmRecord::default())
            }
            Node::Acceptor { instances, .. } => NodeState::Acceptor(AcceptorState {
                promised: LEADER_BALLOT,
                accepted: vec![None; *instances],
            }),
            Node::Backup { partitions, .. } => {
                if *partitions {
                    o.set_timer(Timer::Suspect, model_timeout());
                }
                NodeState::Backup(BackupPhase::Idle)
            }
        }
    }

    fn on_random(&self, _id: Id, state: &mut Cow<NodeState>, vote: &Vote, o: &mut Out<Self>) {
        let (
            Node::ResourceManager {
                instance,
                acceptors,
            },
            NodeState::ResourceManager(record),
        ) = (self, &**state)
        else {
            return;
        };
        let mut record = *record;
        record.cast(*vote);
        o.broadcast(
            acceptors,
            &Msg::Accept {
                ballot: LEADER_BALLOT,
                votes: vec![(*instance, *vote)],
            },
        );
        *state.to_mut() = NodeState::ResourceManager(record);
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let next = match (self, &**state) {
            (Node::Leader { rms, acceptors }, NodeState::Leader(leader)) => {
                Self::on_leader_msg(rms, *acceptors, leader, src, msg, o).map(NodeState::Leader)
            }
            (Node::ResourceManager { .. }, NodeState::ResourceManager(record)) => {
                let Msg::Decision(outcome) = msg else {
                    return;
                };
                let mut record = *record;
                if !record.apply(outcome) {
                    return;
                }
                if record.vote.is_none() {
                    withdraw_vote(o);
                }
                Some(NodeState::ResourceManager(record))
            }
            (Node::Acceptor { leader, backup, .. }, NodeState::Acceptor(acceptor)) => {
                Self::on_acceptor_msg(*leader, *backup, acceptor, src, msg, o)
                    .map(NodeState::Acceptor)
            }
            (
                Node::Backup {
                    acceptors,
                    rms,
                    bug,
                    ..
                },
                NodeState::Backup(phase),
            ) => {
                Self::on_backup_msg(acceptors, rms, *bug, phase, src, msg, o).map(NodeState::Backup)
            }
            _ => None,
        };
        if let Some(next) = next {
            *state.to_mut() = next;
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<NodeState>, timer: &Timer, o: &mut Out<Self>) {
        if let (
            Node::Backup { acceptors, .. },
            NodeState::Backup(BackupPhase::Idle),
            Timer::Suspect,
        ) = (self, &**state, timer)
        {
            *state.to_mut() = NodeState::Backup(Self::take_over(acceptors, o));
        }
    }
}

impl Role for Node {
    fn is_finished(&self, state: &NodeState) -> bool {
        match state {
            NodeState::Leader(leader) => leader.outcome.is_some(),
            NodeState::ResourceManager(record) => record.outcome.is_some(),
            // An acceptor may be asked again as long as anyone is deciding.
            NodeState::Acceptor(_) => false,
            NodeState::Backup(phase) => matches!(phase, BackupPhase::Decided(_)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_proposes_the_highest_accepted_vote() {
        let promises = BTreeMap::from([
            (Id::from(3), vec![Some((0, Vote::Yes)), None]),
            (Id::from(4), vec![None, None]),
        ]);
        assert_eq!(proposal_for(0, &promises, None), Vote::Yes);
        assert_eq!(proposal_for(1, &promises, None), Vote::No);
        assert_eq!(
            proposal_for(0, &promises, Some(Bug::BackupIgnoresAcceptedVotes)),
            Vote::No
        );
        assert_eq!(outcome_of([Some(Vote::Yes), None]), None);
        assert_eq!(
            outcome_of([Some(Vote::Yes), Some(Vote::No)]),
            Some(Outcome::Abort)
        );
        assert_eq!(
            outcome_of([Some(Vote::Yes), Some(Vote::Yes)]),
            Some(Outcome::Commit)
        );
    }
}
