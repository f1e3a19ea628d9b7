//! Single-decree Paxos: proposers and acceptors agree on one value, used by clients as a
//! write-once register.
//!
//! The actors (with the default sizes):
//!
//! | actors | role |
//! |---|---|
//! | P1, P2 | [proposers](Proposer): each serves its client's write by running a ballot, and learns the outcome |
//! | A1, A2, A3 | [acceptors](Acceptor): promise and accept; a value accepted by a majority in one ballot is chosen |
//! | C1, C2 | [clients](Client): C1 writes `A` through P1, C2 writes `B` through P2; then C1 reads through P2 ([`Paxos::readers`]) |
//!
//! Single-decree Paxos decides *one* value, so the register it implements is write-once: a write
//! succeeds if its value is the one chosen and fails if another was, and every read returns the
//! chosen value. That is stateright's `WORegister` semantics, and stateright's
//! `LinearizabilityTester` checks the clients' history against it *inside* the model: an
//! invocation is recorded when a client's request is sent, a return when the answer is
//! delivered, and the property asks whether some order of the operations, consistent with real
//! time, explains every answer.
//!
//! Properties:
//!
//! | property | kind | meaning |
//! |---|---|---|
//! | [`AGREEMENT`] | always | at most one value is ever chosen, and every learner learned that one |
//! | [`VALIDITY`] | always | a value chosen or accepted was written by a client |
//! | [`LINEARIZABLE`] | always | the clients' history is linearizable against a write-once register |
//! | [`VALUE_CHOSEN`] | sometimes | some value is chosen |
//! | [`SECOND_BALLOT_ACCEPTED`] | sometimes | acceptors have accepted in two different ballots: the second proposer's round really ran |
//! | [`VALUE_CARRIED_OVER`] | sometimes | a proposer proposes a value it learned from a promise, not its client's: phase 1 did its job |
//! | [`LOSING_WRITE_TOLD`] | sometimes | a client is told its write failed |
//!
//! "Chosen" is judged from every vote ever cast (the history records each `accepted` message an
//! acceptor sends), not from the acceptors' current state: an acceptor that later accepts a higher
//! ballot overwrites its state, but a value once chosen stays chosen.
//!
//! The state space is bounded by the number of rounds each proposer may start
//! ([`Paxos::rounds`], 1 by default: each proposer's one ballot, with proposer 2's ordered above
//! proposer 1's in the same round). Seeded bugs ([`Bug`]) each break agreement, and the tests check
//! that the checker finds a counterexample for every one.

mod acceptor;
mod client;
mod properties;
mod proposer;

pub use acceptor::{Acceptor, AcceptorState};
pub use client::{Client, ClientState};
pub use properties::{
    PaxosHistory, AGREEMENT, LINEARIZABLE, LOSING_WRITE_TOLD, SECOND_BALLOT_ACCEPTED, VALIDITY,
    VALUE_CARRIED_OVER, VALUE_CHOSEN,
};
pub use proposer::{Phase, Proposer, ProposerState, Request};

use properties::{
    agreement, linearizable, losing_write_told, proposer_states, record_delivered, record_sent,
    second_ballot_accepted, validity, value_carried_over, value_chosen,
};

use crate::scenario::{bug_suffix, ModelOf, MsgOf, Scenario, StateOf, TimerOf};
use stateright::actor::{Actor, ActorModel, Id, Network, Out};
use stateright::Expectation;
use std::borrow::Cow;

/// A register value: client k writes the k-th letter (`A`, `B`, ...).
pub type Value = char;

/// A ballot: a round number and the proposer that owns it. Ballots are ordered by round, then by
/// proposer, so two proposers never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ballot {
    /// The round.
    pub round: u32,
    /// The proposer whose ballot it is.
    pub proposer: Id,
}

/// The messages: the register protocol between clients and proposers, then Paxos's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// Client to proposer: write this value.
    Write(Value),
    /// Client to proposer: what is the value?
    Read,
    /// Proposer to client: your value was chosen.
    WriteOk,
    /// Proposer to client: another value was chosen (the register is write-once).
    WriteFailed,
    /// Proposer to client: the chosen value.
    ReadOk(Value),
    /// Phase 1a, proposer to acceptors.
    Prepare {
        /// The ballot.
        ballot: Ballot,
    },
    /// Phase 1b, acceptor to proposer: promised, and the last value accepted (with its ballot).
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's last accepted value.
        accepted: Option<(Ballot, Value)>,
    },
    /// Phase 2a, proposer to acceptors.
    Accept {
        /// The ballot.
        ballot: Ballot,
        /// The value proposed.
        value: Value,
    },
    /// Phase 2b, acceptor to the ballot's proposer.
    Accepted {
        /// The ballot.
        ballot: Ballot,
        /// The value accepted.
        value: Value,
    },
    /// Learner to learners: this value is chosen.
    Chosen {
        /// The chosen value.
        value: Value,
    },
}

/// The proposers' timer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The ballot has stalled: start a higher one.
    Retry,
}

/// Deliberate mistakes the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bug {
    /// An acceptor's promise reports nothing accepted, as an acceptor that kept its vote only in
    /// memory would after a restart. The next proposer cannot carry the value on, and proposes its
    /// own: two values chosen.
    AcceptorForgetsAccepted,
    /// An acceptor accepts in a ballot below the one it promised, so a promise no longer shuts
    /// out older ballots: two values chosen.
    AcceptorAcceptsBelowPromise,
    /// A proposer proposes its client's value even when a promise reported an accepted one: two
    /// values chosen.
    ProposerIgnoresPromisedValue,
}

/// An actor's role.
#[derive(Clone, Debug)]
pub enum Node {
    /// A proposer (and learner).
    Proposer(Proposer),
    /// An acceptor.
    Acceptor(Acceptor),
    /// A client.
    Client(Client),
}

/// An actor's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// A proposer's state.
    Proposer(ProposerState),
    /// An acceptor's state.
    Acceptor(AcceptorState),
    /// A client's state.
    Client(ClientState),
}

impl Actor for Node {
    type Msg = Msg;
    type State = NodeState;
    type Timer = Timer;
    type Random = ();
    type Storage = ();

    fn name(&self) -> String {
        match self {
            Node::Proposer(_) => "proposer".to_owned(),
            Node::Acceptor(_) => "acceptor".to_owned(),
            Node::Client(_) => "client".to_owned(),
        }
    }

    fn on_start(&self, _id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> NodeState {
        match self {
            Node::Proposer(_) => NodeState::Proposer(ProposerState::default()),
            Node::Acceptor(_) => NodeState::Acceptor(AcceptorState::default()),
            Node::Client(client) => NodeState::Client(client.on_start(o)),
        }
    }

    fn on_msg(&self, id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let next = match (self, &**state) {
            (Node::Proposer(proposer), NodeState::Proposer(proposer_state)) => proposer
                .on_msg(id, proposer_state, src, msg, o)
                .map(NodeState::Proposer),
            (Node::Acceptor(acceptor), NodeState::Acceptor(acceptor_state)) => acceptor
                .on_msg(acceptor_state, src, msg, o)
                .map(NodeState::Acceptor),
            (Node::Client(client), NodeState::Client(client_state)) => {
                client.on_msg(*client_state, msg, o).map(NodeState::Client)
            }
            _ => None,
        };
        if let Some(next) = next {
            *state.to_mut() = next;
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<NodeState>, timer: &Timer, o: &mut Out<Self>) {
        let (Node::Proposer(proposer), NodeState::Proposer(proposer_state), Timer::Retry) =
            (self, &**state, timer)
        else {
            return;
        };
        if let Some(next) = proposer.on_retry(id, proposer_state, o) {
            *state.to_mut() = NodeState::Proposer(next);
        }
    }
}

/// A single-decree Paxos configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paxos {
    /// How many proposers, each with one client (two by default: the least that can compete).
    pub proposers: usize,
    /// How many acceptors (three by default: the least that survives one failure).
    pub acceptors: usize,
    /// The most ballots each proposer starts. One (the default) already lets the two proposers'
    /// ballots interleave in every order; two adds retries after a stalled ballot (see the README
    /// for what that costs).
    pub rounds: u32,
    /// How many clients read (through another proposer) after their write is answered. One by
    /// default: it checks that a value read is the value chosen, and a second reader multiplies
    /// the state space by about 2.4 (171k to 406k states) without a new kind of run.
    pub readers: usize,
    /// A seeded mistake, or `None` for the protocol as specified.
    pub bug: Option<Bug>,
}

impl Default for Paxos {
    fn default() -> Self {
        Paxos {
            proposers: 2,
            acceptors: 3,
            rounds: 1,
            readers: 1,
            bug: None,
        }
    }
}

impl Paxos {
    /// Actor numbering: the proposers, then the acceptors, then one client per proposer.
    fn first_acceptor(&self) -> usize {
        self.proposers
    }

    fn first_client(&self) -> usize {
        self.proposers + self.acceptors
    }
}

impl Scenario for Paxos {
    type Actor = Node;
    type History = PaxosHistory;

    fn title(&self) -> String {
        format!(
            "single-decree Paxos: {} proposers (one client each, {} reading), {} acceptors, {} round{} per proposer{}",
            self.proposers,
            self.readers.min(self.proposers),
            self.acceptors,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
            bug_suffix(self.bug)
        )
    }

    fn model(&self) -> ModelOf<Self> {
        let proposers: Vec<Id> = (0..self.proposers).map(Id::from).collect();
        let acceptors: Vec<Id> = (self.first_acceptor()..self.first_client())
            .map(Id::from)
            .collect();
        let clients = (0..self.proposers).map(|index| {
            Node::Client(Client {
                value: char::from(b'A' + index as u8),
                writes_to: proposers[index],
                reads_from: (index < self.readers).then(|| proposers[(index + 1) % self.proposers]),
            })
        });
        ActorModel::new(self.clone(), PaxosHistory::new())
            .actors(proposers.iter().map(|me| {
                Node::Proposer(Proposer {
                    acceptors: acceptors.clone(),
                    peers: proposers
                        .iter()
                        .copied()
                        .filter(|peer| peer != me)
                        .collect(),
                    rounds: self.rounds,
                    bug: self.bug,
                })
            }))
            .actors(
                acceptors
                    .iter()
                    .map(|_| Node::Acceptor(Acceptor { bug: self.bug })),
            )
            .actors(clients)
            .init_network(Network::new_unordered_nonduplicating([]))
            .record_msg_out(record_sent)
            .record_msg_in(record_delivered)
            .property(Expectation::Always, AGREEMENT, agreement)
            .property(Expectation::Always, VALIDITY, validity)
            .property(Expectation::Always, LINEARIZABLE, linearizable)
            .property(Expectation::Sometimes, VALUE_CHOSEN, value_chosen)
            .property(
                Expectation::Sometimes,
                SECOND_BALLOT_ACCEPTED,
                second_ballot_accepted,
            )
            .property(
                Expectation::Sometimes,
                VALUE_CARRIED_OVER,
                value_carried_over,
            )
            .property(Expectation::Sometimes, LOSING_WRITE_TOLD, losing_write_told)
    }

    fn actor_name(&self, id: Id) -> String {
        let index = usize::from(id);
        if index < self.first_acceptor() {
            format!("P{}", index + 1)
        } else if index < self.first_client() {
            format!("A{}", index - self.first_acceptor() + 1)
        } else {
            format!("C{}", index - self.first_client() + 1)
        }
    }

    fn describe_message(&self, msg: &MsgOf<Self>) -> String {
        let ballot =
            |ballot: &Ballot| format!("b{}/{}", ballot.round, self.actor_name(ballot.proposer));
        match msg {
            Msg::Write(value) => format!("write {value}"),
            Msg::Read => "read".to_owned(),
            Msg::WriteOk => "write ok".to_owned(),
            Msg::WriteFailed => "write failed (another value was chosen)".to_owned(),
            Msg::ReadOk(value) => format!("read → {value}"),
            Msg::Prepare { ballot: b } => format!("prepare {}", ballot(b)),
            Msg::Promise {
                ballot: b,
                accepted: Some((accepted_in, value)),
            } => format!(
                "promise {}, had accepted {value} in {}",
                ballot(b),
                ballot(accepted_in)
            ),
            Msg::Promise {
                ballot: b,
                accepted: None,
            } => format!("promise {}, nothing accepted", ballot(b)),
            Msg::Accept { ballot: b, value } => format!("accept {value} in {}", ballot(b)),
            Msg::Accepted { ballot: b, value } => format!("accepted {value} in {}", ballot(b)),
            Msg::Chosen { value } => format!("chosen: {value}"),
        }
    }

    fn describe_timer(&self, timer: &TimerOf<Self>) -> Option<String> {
        match timer {
            Timer::Retry => Some("times out and starts a higher ballot".to_owned()),
        }
    }

    fn describe_choice(&self, _choice: &()) -> String {
        "chooses".to_owned()
    }

    fn describe_state(&self, state: &StateOf<Self>) -> String {
        let chosen: Vec<String> = state
            .history
            .chosen(self.acceptors)
            .iter()
            .map(char::to_string)
            .collect();
        let learned: Vec<String> = proposer_states(state)
            .enumerate()
            .map(|(index, proposer)| match proposer.chosen {
                Some(value) => format!("P{} learned {value}", index + 1),
                None => format!("P{} has learned nothing", index + 1),
            })
            .collect();
        format!(
            "chosen: {}; {}; client history {}",
            if chosen.is_empty() {
                "nothing".to_owned()
            } else {
                chosen.join(" and ")
            },
            learned.join(", "),
            if state.history.register.serialized_history().is_some() {
                "linearizable"
            } else {
                "NOT linearizable"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{run, run_until, Stop, Verdict};

    #[test]
    fn paxos_agrees_and_is_linearizable_and_no_check_is_vacuous() {
        let report = run(Paxos::default());
        for property in [AGREEMENT, VALIDITY, LINEARIZABLE] {
            assert_eq!(report.verdict(property), Some(Verdict::Holds), "{property}");
        }
        for property in [
            VALUE_CHOSEN,
            SECOND_BALLOT_ACCEPTED,
            VALUE_CARRIED_OVER,
            LOSING_WRITE_TOLD,
        ] {
            assert_eq!(
                report.verdict(property),
                Some(Verdict::Reached),
                "{property}"
            );
        }
    }

    fn assert_caught(bug: Bug) {
        let report = run_until(
            Paxos {
                bug: Some(bug),
                ..Paxos::default()
            },
            Stop::AtFirstViolation,
        );
        assert_eq!(
            report.verdict(AGREEMENT),
            Some(Verdict::Violated),
            "{bug:?}"
        );
        let trace = report.trace(AGREEMENT).expect("a counterexample");
        assert!(trace.contains("chosen: A and B"), "{bug:?}: {trace}");
    }

    #[test]
    fn an_acceptor_that_forgets_what_it_accepted_is_caught() {
        assert_caught(Bug::AcceptorForgetsAccepted);
    }

    #[test]
    fn an_acceptor_that_accepts_below_its_promise_is_caught() {
        assert_caught(Bug::AcceptorAcceptsBelowPromise);
    }

    #[test]
    fn a_proposer_that_ignores_the_promised_value_is_caught() {
        assert_caught(Bug::ProposerIgnoresPromisedValue);
    }
}
