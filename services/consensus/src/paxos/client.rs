//! The client: writes its value through one proposer, then (if it is a reader) reads through
//! another.
//!
//! Its operations are what the linearizability tester judges: the model records an invocation
//! when a client's `write` or `read` is sent and a return when the answer is delivered. Reading through the *other* proposer is deliberate: a
//! read answered by the proposer that just learned the value would prove little.
//!
//! (stateright ships a register client, but its write-once variant's messages do not implement
//! `Ord`, which its model checker requires of messages, so this model has its own.)

use super::{Msg, Node, Value};
use stateright::actor::{Id, Out};

/// A client.
#[derive(Clone, Debug)]
pub struct Client {
    /// The value it writes.
    pub value: Value,
    /// The proposer it writes through.
    pub writes_to: Id,
    /// The proposer it reads through after its write is answered, if it reads at all.
    pub reads_from: Option<Id>,
}

/// Where a client is in its two operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// The write is outstanding.
    Writing,
    /// The write was answered; the read is outstanding.
    Reading,
    /// Both were answered.
    Done,
}

impl Client {
    /// Starts the write.
    pub fn on_start(&self, o: &mut Out<Node>) -> ClientState {
        o.send(self.writes_to, Msg::Write(self.value));
        ClientState::Writing
    }

    /// Handles an answer; returns the new state, or `None` if it changed nothing.
    pub fn on_msg(&self, state: ClientState, msg: Msg, o: &mut Out<Node>) -> Option<ClientState> {
        match (state, msg) {
            (ClientState::Writing, Msg::WriteOk | Msg::WriteFailed) => match self.reads_from {
                Some(proposer) => {
                    o.send(proposer, Msg::Read);
                    Some(ClientState::Reading)
                }
                None => Some(ClientState::Done),
            },
            (ClientState::Reading, Msg::ReadOk(_)) => Some(ClientState::Done),
            _ => None,
        }
    }
}
