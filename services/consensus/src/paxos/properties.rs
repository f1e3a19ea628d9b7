//! What the Paxos model checks, and the history it records to check it.
//!
//! The history holds what no actor's state keeps: the clients' operations (for stateright's
//! linearizability tester, against a write-once register), every vote an acceptor ever cast (so
//! that "chosen" means chosen at any time, not only in the acceptors' current states), and the
//! values the clients asked to write (for validity).

use super::{Ballot, Msg, Paxos, Phase, ProposerState, Value};
use crate::scenario::{ModelOf, StateOf};
use stateright::actor::{majority, Envelope, Id};
use stateright::semantics::write_once_register::{WORegister, WORegisterOp, WORegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use std::collections::{BTreeMap, BTreeSet};

/// What the properties need beyond the actors' states.
#[derive(Clone, Debug, Hash, PartialEq)]
pub struct PaxosHistory {
    /// The clients' operations, checked against a write-once register.
    pub register: LinearizabilityTester<Id, WORegister<Value>>,
    /// Every vote ever cast: (ballot, acceptor, value) for each `accepted` an acceptor sent.
    pub votes: BTreeSet<(Ballot, Id, Value)>,
    /// Every value a client asked to write.
    pub written: BTreeSet<Value>,
}

impl PaxosHistory {
    pub(super) fn new() -> Self {
        PaxosHistory {
            register: LinearizabilityTester::new(WORegister(None)),
            votes: BTreeSet::new(),
            written: BTreeSet::new(),
        }
    }

    /// The values a majority of acceptors accepted in one ballot.
    pub fn chosen(&self, acceptors: usize) -> BTreeSet<Value> {
        let mut by_ballot: BTreeMap<(Ballot, Value), usize> = BTreeMap::new();
        for (ballot, _acceptor, value) in &self.votes {
            *by_ballot.entry((*ballot, *value)).or_default() += 1;
        }
        by_ballot
            .into_iter()
            .filter(|(_, count)| *count >= majority(acceptors))
            .map(|((_, value), _)| value)
            .collect()
    }
}

/// Records a sent message: a client's operation starting (into the register history), or an
/// acceptor's vote.
pub(super) fn record_sent(
    _: &Paxos,
    history: &PaxosHistory,
    env: Envelope<&Msg>,
) -> Option<PaxosHistory> {
    let mut next = history.clone();
    match env.msg {
        Msg::Accepted { ballot, value } => {
            next.votes.insert((*ballot, env.src, *value));
        }
        Msg::Write(value) => {
            next.written.insert(*value);
            // An invocation while one is in flight marks the history invalid, which the property
            // then reports as not linearizable; so the result needs no handling here.
            let _ = next
                .register
                .on_invoke(env.src, WORegisterOp::Write(*value));
        }
        Msg::Read => {
            let _ = next.register.on_invoke(env.src, WORegisterOp::Read);
        }
        _ => return None,
    }
    Some(next)
}

/// Records a delivered answer: a client's operation returning.
pub(super) fn record_delivered(
    _: &Paxos,
    history: &PaxosHistory,
    env: Envelope<&Msg>,
) -> Option<PaxosHistory> {
    let returned = match env.msg {
        Msg::WriteOk => WORegisterRet::WriteOk,
        Msg::WriteFailed => WORegisterRet::WriteFail,
        Msg::ReadOk(value) => WORegisterRet::ReadOk(Some(*value)),
        _ => return None,
    };
    let mut next = history.clone();
    // As above: a return without an invocation marks the history invalid.
    let _ = next.register.on_return(env.dst, returned);
    Some(next)
}

/// Property: at most one value chosen, and every learner learned that one.
pub const AGREEMENT: &str = "agreement";
/// Property: every value chosen or accepted was written by a client.
pub const VALIDITY: &str = "validity";
/// Property: the clients' history is linearizable (write-once register).
pub const LINEARIZABLE: &str = "linearizable";
/// Property (sometimes): a value is chosen.
pub const VALUE_CHOSEN: &str = "value chosen";
/// Property (sometimes): votes were cast in two ballots.
pub const SECOND_BALLOT_ACCEPTED: &str = "second ballot accepted";
/// Property (sometimes): a proposer proposes a value carried over from a promise.
pub const VALUE_CARRIED_OVER: &str = "value carried over";
/// Property (sometimes): a client is told its write failed.
pub const LOSING_WRITE_TOLD: &str = "losing write told";

type PaxosState = StateOf<Paxos>;

/// The proposers' states.
pub(super) fn proposer_states(state: &PaxosState) -> impl Iterator<Item = &ProposerState> {
    state
        .actor_states
        .iter()
        .filter_map(|actor| match &**actor {
            super::NodeState::Proposer(proposer) => Some(proposer),
            _ => None,
        })
}

pub(super) fn agreement(model: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    let mut values = state.history.chosen(model.cfg.acceptors);
    values.extend(proposer_states(state).filter_map(|proposer| proposer.chosen));
    values.len() <= 1
}

pub(super) fn validity(model: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    let written = &state.history.written;
    state
        .history
        .votes
        .iter()
        .all(|(_, _, value)| written.contains(value))
        && state
            .history
            .chosen(model.cfg.acceptors)
            .iter()
            .all(|value| written.contains(value))
}

pub(super) fn linearizable(_: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    state.history.register.serialized_history().is_some()
}

pub(super) fn value_chosen(model: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    !state.history.chosen(model.cfg.acceptors).is_empty()
}

pub(super) fn second_ballot_accepted(_: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    let ballots: BTreeSet<Ballot> = state
        .history
        .votes
        .iter()
        .map(|(ballot, _, _)| *ballot)
        .collect();
    ballots.len() >= 2
}

pub(super) fn value_carried_over(_: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    proposer_states(state).any(|proposer| match (&proposer.phase, proposer.request) {
        (Phase::Accepting { value, .. }, Some(request)) => *value != request.value,
        _ => false,
    })
}

pub(super) fn losing_write_told(_: &ModelOf<Paxos>, state: &PaxosState) -> bool {
    state
        .network
        .iter_deliverable()
        .any(|envelope| matches!(envelope.msg, Msg::WriteFailed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_needs_a_majority_in_one_ballot() {
        let ballot = |round, proposer: usize| Ballot {
            round,
            proposer: Id::from(proposer),
        };
        let mut history = PaxosHistory::new();
        history.votes.insert((ballot(1, 0), Id::from(4), 'A'));
        history.votes.insert((ballot(1, 1), Id::from(5), 'A'));
        assert!(
            history.chosen(3).is_empty(),
            "two ballots are not one majority"
        );
        history.votes.insert((ballot(1, 0), Id::from(6), 'A'));
        assert_eq!(history.chosen(3), BTreeSet::from(['A']));
    }
}
