//! The proposer: serves one client's write by running a ballot, and learns what was chosen.
//!
//! A ballot has two phases, each a round trip to a majority of the acceptors:
//! 1. **prepare b** → **promise b** (with what each acceptor last accepted). Once a majority has
//!    promised, no lower ballot can get a new value chosen, and if one was chosen already, at least
//!    one promise reports it.
//! 2. **accept b v** → **accepted b v**, where `v` is the value accepted in the highest ballot
//!    among the promises, or the client's own value if none was. Once a majority has accepted, `v`
//!    is chosen; the proposer learns it and tells the other proposers (`chosen v`), as the
//!    "distinguished learner" of *Paxos Made Simple*.
//!
//! Every proposer is a learner: it answers its client's write with *ok* if the value chosen is the
//! client's and *failed* if it is another (the register is write-once), and answers a read with the
//! chosen value (a read arriving before it knows waits). A proposer whose ballot stalls (a higher
//! one has taken its acceptors) retries with a higher round when its timer fires, up to
//! [`Paxos::rounds`](super::Paxos::rounds).

use super::{Ballot, Bug, Msg, Node, Timer, Value};
use stateright::actor::{majority, model_timeout, Id, Out};
use std::collections::{BTreeMap, BTreeSet};

/// A proposer.
#[derive(Clone, Debug)]
pub struct Proposer {
    /// The acceptors.
    pub acceptors: Vec<Id>,
    /// The other proposers, told when this one learns the chosen value.
    pub peers: Vec<Id>,
    /// The most ballots it starts (its rounds are 1..=rounds).
    pub rounds: u32,
    /// The seeded mistake, if any.
    pub bug: Option<Bug>,
}

/// A client's write being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// The client.
    pub client: Id,
    /// The value the client wants written.
    pub value: Value,
}

/// Where the proposer's current ballot is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No ballot running.
    Idle,
    /// Phase 1: prepare sent; the promises so far, each with what that acceptor had accepted.
    Preparing {
        /// The ballot.
        ballot: Ballot,
        /// Promises by acceptor.
        promises: BTreeMap<Id, Option<(Ballot, Value)>>,
    },
    /// Phase 2: accept sent for this value; the acceptors that accepted so far.
    Accepting {
        /// The ballot.
        ballot: Ballot,
        /// The value proposed.
        value: Value,
        /// The acceptors that accepted.
        accepted_by: BTreeSet<Id>,
    },
}

/// What a proposer knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProposerState {
    /// The client's write being served.
    pub request: Option<Request>,
    /// The last round started (0: none yet).
    pub round: u32,
    /// The current ballot's progress.
    pub phase: Phase,
    /// The chosen value, once learned.
    pub chosen: Option<Value>,
    /// A client whose read waits for the chosen value.
    pub pending_read: Option<Id>,
}

impl Default for ProposerState {
    fn default() -> Self {
        ProposerState {
            request: None,
            round: 0,
            phase: Phase::Idle,
            chosen: None,
            pending_read: None,
        }
    }
}

impl Proposer {
    /// Handles a message; returns the new state, or `None` if it changed nothing.
    pub fn on_msg(
        &self,
        id: Id,
        state: &ProposerState,
        src: Id,
        msg: Msg,
        o: &mut Out<Node>,
    ) -> Option<ProposerState> {
        let mut next = state.clone();
        match msg {
            Msg::Write(value) => {
                let request = Request { client: src, value };
                if let Some(chosen) = state.chosen {
                    o.send(src, answer(request, chosen));
                    return None;
                }
                if state.request.is_some() {
                    return None;
                }
                next.request = Some(request);
                self.start_ballot(id, &mut next, o);
            }
            Msg::Read => match state.chosen {
                Some(chosen) => {
                    o.send(src, Msg::ReadOk(chosen));
                    return None;
                }
                None => next.pending_read = Some(src),
            },
            Msg::Promise { ballot, accepted } => {
                let Phase::Preparing {
                    ballot: current,
                    promises,
                } = &mut next.phase
                else {
                    return None;
                };
                if ballot != *current || state.chosen.is_some() {
                    return None;
                }
                promises.insert(src, accepted);
                if promises.len() >= majority(self.acceptors.len()) {
                    let value = self.value_to_propose(promises, state.request)?;
                    o.broadcast(&self.acceptors, &Msg::Accept { ballot, value });
                    next.phase = Phase::Accepting {
                        ballot,
                        value,
                        accepted_by: BTreeSet::new(),
                    };
                }
            }
            Msg::Accepted { ballot, value } => {
                let Phase::Accepting {
                    ballot: current,
                    accepted_by,
                    ..
                } = &mut next.phase
                else {
                    return None;
                };
                if ballot != *current || state.chosen.is_some() {
                    return None;
                }
                accepted_by.insert(src);
                if accepted_by.len() >= majority(self.acceptors.len()) {
                    o.broadcast(&self.peers, &Msg::Chosen { value });
                    self.learn(&mut next, value, o);
                }
            }
            Msg::Chosen { value } => {
                if state.chosen.is_some() {
                    return None;
                }
                self.learn(&mut next, value, o);
            }
            _ => return None,
        }
        Some(next)
    }

    /// The retry timer: start a higher ballot unless the value is known.
    pub fn on_retry(
        &self,
        id: Id,
        state: &ProposerState,
        o: &mut Out<Node>,
    ) -> Option<ProposerState> {
        if state.chosen.is_some() || state.request.is_none() {
            return None;
        }
        let mut next = state.clone();
        self.start_ballot(id, &mut next, o);
        Some(next)
    }

    /// Phase 1: a ballot one round above the last, prepared at every acceptor.
    fn start_ballot(&self, id: Id, state: &mut ProposerState, o: &mut Out<Node>) {
        state.round += 1;
        let ballot = Ballot {
            round: state.round,
            proposer: id,
        };
        state.phase = Phase::Preparing {
            ballot,
            promises: BTreeMap::new(),
        };
        o.broadcast(&self.acceptors, &Msg::Prepare { ballot });
        if state.round < self.rounds {
            o.set_timer(Timer::Retry, model_timeout());
        }
    }

    /// The value for phase 2: the one accepted in the highest ballot among the promises (it may
    /// have been chosen), else the client's own.
    fn value_to_propose(
        &self,
        promises: &BTreeMap<Id, Option<(Ballot, Value)>>,
        request: Option<Request>,
    ) -> Option<Value> {
        let highest_accepted = promises
            .values()
            .flatten()
            .max_by_key(|(ballot, _)| *ballot);
        match (highest_accepted, self.bug) {
            (Some((_, value)), bug) if bug != Some(Bug::ProposerIgnoresPromisedValue) => {
                Some(*value)
            }
            _ => request.map(|request| request.value),
        }
    }

    /// The chosen value is known: answer the client's write and any waiting read.
    fn learn(&self, state: &mut ProposerState, value: Value, o: &mut Out<Node>) {
        state.chosen = Some(value);
        state.phase = Phase::Idle;
        if self.rounds > 1 {
            o.cancel_timer(Timer::Retry);
        }
        if let Some(request) = state.request {
            o.send(request.client, answer(request, value));
        }
        if let Some(client) = state.pending_read.take() {
            o.send(client, Msg::ReadOk(value));
        }
    }
}

/// The answer to a write once `chosen` is known: ok if it is the client's value, failed if not.
fn answer(request: Request, chosen: Value) -> Msg {
    if request.value == chosen {
        Msg::WriteOk
    } else {
        Msg::WriteFailed
    }
}
