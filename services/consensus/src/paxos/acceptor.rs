//! The acceptor: Paxos's memory. It promises to ignore lower ballots, and accepts a value in a
//! ballot it has not promised away.
//!
//! Its two rules are the whole of Paxos's safety:
//! - **promise**: on `prepare b` with `b` above every ballot it has promised, promise `b` and
//!   report the value it last accepted (and in which ballot), so the new proposer can carry it on;
//! - **accept**: on `accept b v` unless it has promised a ballot above `b`, accept `v` in `b` and
//!   tell the ballot's proposer.
//!
//! A real acceptor writes `promised` and `accepted` to disk before answering; one that forgot them
//! across a restart would be [`Bug::AcceptorForgetsAccepted`].

use super::{Ballot, Bug, Msg, Node, Value};
use stateright::actor::{Id, Out};

/// An acceptor.
#[derive(Clone, Debug)]
pub struct Acceptor {
    /// The seeded mistake, if any.
    pub bug: Option<Bug>,
}

/// What an acceptor has promised and accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AcceptorState {
    /// The highest ballot promised (no promise sorts below every ballot).
    pub promised: Option<Ballot>,
    /// The last value accepted, and in which ballot.
    pub accepted: Option<(Ballot, Value)>,
}

impl Acceptor {
    /// Handles a message; returns the new state, or `None` if it changed nothing.
    pub fn on_msg(
        &self,
        state: &AcceptorState,
        src: Id,
        msg: Msg,
        o: &mut Out<Node>,
    ) -> Option<AcceptorState> {
        match msg {
            Msg::Prepare { ballot } if state.promised < Some(ballot) => {
                let accepted = match self.bug {
                    Some(Bug::AcceptorForgetsAccepted) => None,
                    _ => state.accepted,
                };
                o.send(src, Msg::Promise { ballot, accepted });
                Some(AcceptorState {
                    promised: Some(ballot),
                    accepted: state.accepted,
                })
            }
            Msg::Accept { ballot, value }
                if state.promised <= Some(ballot)
                    || self.bug == Some(Bug::AcceptorAcceptsBelowPromise) =>
            {
                o.send(ballot.proposer, Msg::Accepted { ballot, value });
                Some(AcceptorState {
                    promised: state.promised.max(Some(ballot)),
                    accepted: Some((ballot, value)),
                })
            }
            _ => None,
        }
    }
}
