//! What the Multi-Paxos model checks, and the history it records to check it.
//!
//! The history holds what no actor's state keeps: the clients' operations (stateright's
//! linearizability tester, against a read/write register), and every vote an acceptor ever cast,
//! so that "chosen" means chosen at any time, not only in the acceptors' current logs.

use super::{Ballot, Command, Msg, MultiPaxos, Node, NodeState, Op, ServerState, Slot, Value};
use crate::scenario::{ModelOf, StateOf};
use stateright::actor::{majority, Envelope, Id};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use std::collections::{BTreeMap, BTreeSet};

/// At most one command is chosen in each slot.
pub const AGREEMENT: &str = "agreement: one command per slot";
/// A command a server applies in a slot is the one chosen there.
pub const LEARNED_IS_CHOSEN: &str = "a decided slot holds the chosen command";
/// The clients' history is linearizable against a read/write register.
pub const LINEARIZABLE: &str = "linearizable register";
/// Every client's every operation is answered.
pub const ALL_ANSWERED: &str = "every operation answered";
/// A new leader proposes a command it learned from a promise: phase 1 carried it over.
pub const CARRIED_OVER: &str = "a new leader carries a command over";
/// Commands were chosen in two different ballots: a second leader made progress.
pub const TWO_LEADERS_DECIDE: &str = "two leaders decide";
/// A read returned a written value.
pub const READ_SEES_A_WRITE: &str = "a read sees a write";

/// What the properties need beyond the actors' states.
#[derive(Clone, Debug, Hash, PartialEq)]
pub struct MultiPaxosHistory {
    /// The clients' operations, checked against a register holding `None` at first.
    pub register: LinearizabilityTester<Id, Register<Option<Value>>>,
    /// Each client's request in flight (a request re-sent after "not leader" is the same
    /// operation).
    pub in_flight: BTreeMap<Id, u64>,
    /// Every vote ever cast: (slot, ballot, acceptor, command) for each `accepted` sent.
    pub votes: BTreeSet<(Slot, Ballot, Id, Command)>,
    /// Whether a leader proposed, in a higher ballot, a client command accepted in a lower one.
    pub carried_over: bool,
    /// Whether a read returned a value.
    pub read_saw_write: bool,
}

impl MultiPaxosHistory {
    pub(super) fn new() -> Self {
        MultiPaxosHistory {
            register: LinearizabilityTester::new(Register(None)),
            in_flight: BTreeMap::new(),
            votes: BTreeSet::new(),
            carried_over: false,
            read_saw_write: false,
        }
    }

    /// Per slot, the commands a majority accepted in one ballot (and the ballots).
    pub fn chosen(&self, servers: usize) -> BTreeMap<Slot, BTreeSet<(Command, Ballot)>> {
        let mut counts: BTreeMap<(Slot, Ballot, Command), usize> = BTreeMap::new();
        for (slot, ballot, _, command) in &self.votes {
            *counts.entry((*slot, *ballot, *command)).or_default() += 1;
        }
        let mut chosen: BTreeMap<Slot, BTreeSet<(Command, Ballot)>> = BTreeMap::new();
        for ((slot, ballot, command), count) in counts {
            if count >= majority(servers) {
                chosen.entry(slot).or_default().insert((command, ballot));
            }
        }
        chosen
    }
}

/// Records a sent message: a client's operation starting, an acceptor's vote, a leader's
/// proposal.
pub(super) fn record_sent(
    _: &MultiPaxos,
    history: &MultiPaxosHistory,
    env: Envelope<&Msg>,
) -> Option<MultiPaxosHistory> {
    let mut next = history.clone();
    let (request, op) = match env.msg {
        Msg::Accepted {
            ballot,
            slot,
            command,
        } => {
            next.votes.insert((*slot, *ballot, env.src, *command));
            return Some(next);
        }
        Msg::Accept {
            ballot,
            slot,
            command,
        } => {
            let carried = command.op != Op::Noop
                && history
                    .votes
                    .iter()
                    .any(|(s, b, _, c)| s == slot && b < ballot && c == command);
            next.carried_over |= carried;
            // The leader's own acceptor accepted it as it sent this (no message of its own).
            if env.src == ballot.leader {
                next.votes.insert((*slot, *ballot, env.src, *command));
            }
            return (next != *history).then_some(next);
        }
        Msg::Put { request, value, .. } => (*request, RegisterOp::Write(Some(*value))),
        Msg::Get { request, .. } => (*request, RegisterOp::Read),
        _ => return None,
    };
    if history.in_flight.get(&env.src) == Some(&request) {
        return None;
    }
    next.in_flight.insert(env.src, request);
    // An invocation while one is in flight marks the history invalid, which the property then
    // reports as not linearizable; so the result needs no handling here.
    let _ = next.register.on_invoke(env.src, op);
    Some(next)
}

/// Records a delivered answer: a client's operation returning (once; later copies ignored).
pub(super) fn record_delivered(
    _: &MultiPaxos,
    history: &MultiPaxosHistory,
    env: Envelope<&Msg>,
) -> Option<MultiPaxosHistory> {
    let (request, ret) = match env.msg {
        Msg::PutOk { request } => (*request, RegisterRet::WriteOk),
        Msg::GetOk { request, value } => (*request, RegisterRet::ReadOk(*value)),
        _ => return None,
    };
    if history.in_flight.get(&env.dst) != Some(&request) {
        return None;
    }
    let mut next = history.clone();
    next.in_flight.remove(&env.dst);
    if let RegisterRet::ReadOk(Some(_)) = ret {
        next.read_saw_write = true;
    }
    let _ = next.register.on_return(env.dst, ret);
    Some(next)
}

/// The servers' states, in order.
pub(super) fn server_states(state: &StateOf<MultiPaxos>) -> impl Iterator<Item = &ServerState> {
    state.actor_states.iter().filter_map(|s| match &**s {
        NodeState::Server(server) => Some(server),
        NodeState::Client(_) => None,
    })
}

pub(super) fn agreement(model: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    state
        .history
        .chosen(model.cfg.servers)
        .values()
        .all(|chosen| {
            let commands: BTreeSet<&Command> = chosen.iter().map(|(c, _)| c).collect();
            commands.len() <= 1
        })
}

pub(super) fn learned_is_chosen(model: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    let chosen = state.history.chosen(model.cfg.servers);
    server_states(state).all(|server| {
        server.decided.iter().all(|(slot, command)| {
            chosen
                .get(slot)
                .is_some_and(|c| c.iter().any(|(chosen, _)| chosen == command))
        })
    })
}

pub(super) fn linearizable(_: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    state.history.register.serialized_history().is_some()
}

pub(super) fn all_answered(model: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    state
        .actor_states
        .iter()
        .zip(&model.actors)
        .all(|(s, actor)| match (&**s, actor) {
            (NodeState::Client(c), Node::Client(client)) => c.answered == client.ops.len(),
            _ => true,
        })
}

pub(super) fn carried_over(_: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    state.history.carried_over
}

pub(super) fn two_leaders_decide(model: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    let ballots: BTreeSet<Ballot> = state
        .history
        .chosen(model.cfg.servers)
        .values()
        .flatten()
        .filter(|(command, _)| command.op != Op::Noop)
        .map(|(_, ballot)| *ballot)
        .collect();
    let leaders: BTreeSet<Id> = ballots.iter().map(|b| b.leader).collect();
    leaders.len() >= 2
}

pub(super) fn read_sees_a_write(_: &ModelOf<MultiPaxos>, state: &StateOf<MultiPaxos>) -> bool {
    state.history.read_saw_write
}
