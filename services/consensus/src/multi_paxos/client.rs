//! The model's client: a fixed list of operations on one register, one at a time, each sent to
//! the server it believes leads.
//!
//! A server that does not lead answers `not leader` (with whom it believes leads) and has done
//! nothing with the command, so the client sends the *same* request there: the operation stays
//! one operation in the history. The model's clients never time out; a request whose proposal
//! was lost with its leader simply stays unanswered, which the linearizability tester allows.

use super::{Msg, Node, Op};
use stateright::actor::{Id, Out};

/// A client.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its operations, in order.
    pub ops: Vec<Op>,
    /// The server it sends its first request to.
    pub first: Id,
    /// Every server, for when a refusal names no leader (it then tries the next).
    pub servers: Vec<Id>,
}

/// How far a client has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientState {
    /// Operations answered; the one outstanding is `ops[answered]`, request number
    /// `answered + 1`.
    pub answered: usize,
    /// The server the outstanding request went to.
    pub target: Id,
}

impl Client {
    /// Sends the first operation.
    pub fn on_start(&self, o: &mut Out<Node>) -> ClientState {
        let state = ClientState {
            answered: 0,
            target: self.first,
        };
        self.send(&state, o);
        state
    }

    /// Handles an answer; returns the new state, or `None` if it changed nothing.
    pub fn on_msg(&self, state: ClientState, msg: Msg, o: &mut Out<Node>) -> Option<ClientState> {
        let outstanding = state.answered as u64 + 1;
        match msg {
            Msg::PutOk { request } | Msg::GetOk { request, .. } if request == outstanding => {
                let next = ClientState {
                    answered: state.answered + 1,
                    ..state
                };
                self.send(&next, o);
                Some(next)
            }
            Msg::NotLeader { request, leader } if request == outstanding => {
                let next_server = || {
                    let at = self.servers.iter().position(|s| *s == state.target);
                    self.servers[at.map_or(0, |at| (at + 1) % self.servers.len())]
                };
                let next = ClientState {
                    target: leader.unwrap_or_else(next_server),
                    ..state
                };
                self.send(&next, o);
                Some(next)
            }
            _ => None,
        }
    }

    /// Sends the outstanding operation, if any is left.
    fn send(&self, state: &ClientState, o: &mut Out<Node>) {
        let request = state.answered as u64 + 1;
        match self.ops.get(state.answered) {
            Some(Op::Put(key, value)) => o.send(
                state.target,
                Msg::Put {
                    request,
                    key: *key,
                    value: *value,
                },
            ),
            Some(Op::Get(key)) => o.send(state.target, Msg::Get { request, key: *key }),
            Some(Op::Noop) | None => {}
        }
    }
}
