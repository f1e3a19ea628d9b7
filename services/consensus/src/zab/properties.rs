//! What the ZAB model checks, and the history it records to check it.
//!
//! The history holds what no server's state keeps once it has moved on or crashed: every leader
//! that established an epoch (from the NEWLEADER messages sent), every transaction proposed, and
//! every transaction committed (from the COMMIT messages sent). A commit is judged from the
//! history, not from the servers' states, because the server that delivered it may since have
//! crashed or taken another history: a commit, once made, must survive both.

use super::server::{Epoch, LeaderPhase, Mode, Msg, ServerState, Txn};
use super::Zab;
use crate::fail_stop::role_state;
use crate::scenario::{ModelOf, StateOf};
use stateright::actor::{Envelope, Id};
use std::collections::{BTreeMap, BTreeSet};

/// What the properties need beyond the servers' states.
#[derive(Clone, Debug, Default, Hash, PartialEq)]
pub struct ZabHistory {
    /// Every (epoch, leader) that sent NEWLEADER: established its epoch's initial history.
    pub leaders: BTreeSet<(Epoch, Id)>,
    /// Every transaction proposed.
    pub proposed: BTreeSet<Txn>,
    /// Every transaction committed.
    pub committed: BTreeSet<Txn>,
}

/// Records a sent message: a leader established, a transaction proposed or committed.
pub(super) fn record_sent(
    _: &Zab,
    history: &ZabHistory,
    env: Envelope<&Msg>,
) -> Option<ZabHistory> {
    let mut next = history.clone();
    let changed = match env.msg {
        Msg::NewLeader { epoch, .. } => next.leaders.insert((*epoch, env.src)),
        Msg::Proposal(txn) => next.proposed.insert(*txn),
        Msg::Commit(txn) => next.committed.insert(*txn),
        _ => false,
    };
    changed.then_some(next)
}

/// Property: no epoch has two leaders.
pub const ONE_LEADER_PER_EPOCH: &str = "one leader per epoch";
/// Property: every leader of a later epoch holds every transaction committed before it.
pub const COMMITTED_SURVIVE: &str = "commits survive leader change";
/// Property: the servers deliver in one order (one's delivered log is a prefix of the other's).
pub const DELIVERED_IN_ONE_ORDER: &str = "delivered in one order";
/// Property: no zxid names two different transactions.
pub const ZXIDS_UNIQUE: &str = "a zxid names one txn";
/// Property: every server's log is in strictly increasing zxid order.
pub const ZXIDS_INCREASE: &str = "zxids increase in each log";
/// Property (sometimes): a transaction is committed.
pub const TXN_COMMITTED: &str = "a txn committed";
/// Property (sometimes): a transaction of a second epoch is committed: a new leader got going.
pub const LATER_EPOCH_COMMITTED: &str = "a later epoch commits";
/// Property (sometimes): a new leader took a follower's more up-to-date history, holding a commit
/// of the epoch before: synchronisation is what carried the commit over.
pub const COMMIT_CARRIED_OVER: &str = "commit carried by a follower";
/// Property (sometimes): two servers lead at once, in different epochs: the old leader is cut off
/// but alive (only when followers may suspect a live leader).
pub const TWO_LEADERS_ALIVE: &str = "old leader alive beside new";

type ZabState = StateOf<Zab>;

/// The live servers' states, with their ids.
fn live_servers(state: &ZabState) -> impl Iterator<Item = (Id, &ServerState)> {
    state
        .actor_states
        .iter()
        .enumerate()
        .filter_map(|(index, life)| role_state(life).map(|server| (Id::from(index), server)))
}

/// The live leaders that have established an epoch: (id, epoch, phase, state).
fn established_leaders(
    state: &ZabState,
) -> impl Iterator<Item = (Id, Epoch, &LeaderPhase, &ServerState)> {
    live_servers(state).filter_map(|(id, server)| match &server.mode {
        Mode::Leading(phase) => phase
            .established_epoch()
            .map(|epoch| (id, epoch, phase, server)),
        _ => None,
    })
}

pub(super) fn one_leader_per_epoch(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    let mut leader_of: BTreeMap<Epoch, Id> = BTreeMap::new();
    state
        .history
        .leaders
        .iter()
        .all(|(epoch, leader)| *leader_of.entry(*epoch).or_insert(*leader) == *leader)
}

pub(super) fn committed_survive(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    established_leaders(state).all(|(_, epoch, _, server)| {
        state
            .history
            .committed
            .iter()
            .filter(|txn| txn.zxid.epoch < epoch)
            .all(|txn| server.history.contains(txn))
    })
}

pub(super) fn delivered_in_one_order(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    let delivered: Vec<&[Txn]> = live_servers(state)
        .map(|(_, server)| &server.history[..server.delivered])
        .collect();
    delivered.iter().enumerate().all(|(i, a)| {
        delivered[i + 1..].iter().all(|b| {
            let common = a.len().min(b.len());
            a[..common] == b[..common]
        })
    })
}

pub(super) fn zxids_unique(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    let zxids: BTreeSet<_> = state.history.proposed.iter().map(|txn| txn.zxid).collect();
    zxids.len() == state.history.proposed.len()
}

pub(super) fn zxids_increase(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    live_servers(state).all(|(_, server)| {
        server
            .history
            .windows(2)
            .all(|pair| pair[0].zxid < pair[1].zxid)
    })
}

pub(super) fn txn_committed(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    !state.history.committed.is_empty()
}

pub(super) fn later_epoch_committed(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    state
        .history
        .committed
        .iter()
        .any(|txn| txn.zxid.epoch >= 2)
}

pub(super) fn commit_carried_over(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    established_leaders(state).any(|(id, epoch, phase, server)| {
        phase.adopted_from().is_some_and(|from| from != id)
            && server
                .history
                .iter()
                .any(|txn| txn.zxid.epoch < epoch && state.history.committed.contains(txn))
    })
}

pub(super) fn two_leaders_alive(_: &ModelOf<Zab>, state: &ZabState) -> bool {
    let epochs: BTreeSet<Epoch> = established_leaders(state)
        .map(|(_, epoch, _, _)| epoch)
        .collect();
    epochs.len() >= 2
}
