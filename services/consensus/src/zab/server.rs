//! One ZAB server: its messages, its durable and volatile state, and its rules in each mode. The
//! configuration, naming and tests are in [the module](super).

use super::Bug;
use crate::fail_stop::Role;
use stateright::actor::{majority, model_timeout, Actor, Id, Out};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// A ZooKeeper transaction id: the epoch of the leader that proposed it, then that leader's
/// counter within the epoch. Ordered by epoch first, so every transaction of a later leader comes
/// after every transaction of an earlier one. (ZooKeeper packs both in one 64-bit number, epoch in
/// the high 32 bits, and prints it in hex: `0x100000001` is epoch 1, counter 1.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zxid {
    /// The proposing leader's epoch.
    pub epoch: u8,
    /// Its count of proposals in that epoch, from 1.
    pub counter: u8,
}

/// A transaction: its zxid and the server that proposed it, which stands for its content. Two
/// transactions with one zxid and different proposers are two different writes under one name,
/// which is what a broken epoch rule produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Txn {
    /// Its id.
    pub zxid: Zxid,
    /// The leader that proposed it.
    pub by: Id,
}

/// The messages, named as ZooKeeper's quorum packets are (the ZAB paper's names in brackets).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// Candidate to every other server: follow me. Stands in for the election (see the module
    /// docs): a LOOKING server follows the first candidate it hears from.
    Candidacy,
    /// Follower to its prospective leader: FOLLOWERINFO \[CEPOCH\], the last epoch it
    /// acknowledged (`acceptedEpoch`).
    FollowerInfo {
        /// That epoch.
        accepted: u8,
    },
    /// Prospective leader to its followers: LEADERINFO \[NEWEPOCH\], the epoch it will lead.
    LeaderInfo {
        /// The new epoch.
        epoch: u8,
    },
    /// Follower to prospective leader: ACKEPOCH, its current epoch and its whole history, from
    /// which the leader picks the most up-to-date.
    AckEpoch {
        /// The follower's `currentEpoch`.
        current: u8,
        /// The follower's history.
        history: Vec<Txn>,
    },
    /// Leader to follower: NEWLEADER, the history every follower takes before the epoch starts
    /// (ZooKeeper sends the difference, or a truncation, or a snapshot; the model sends it whole).
    NewLeader {
        /// The epoch.
        epoch: u8,
        /// The leader's initial history.
        history: Vec<Txn>,
    },
    /// Follower to leader: ACK of NEWLEADER \[ACKNEWLEADER\].
    AckNewLeader {
        /// The epoch acknowledged.
        epoch: u8,
    },
    /// Leader to followers: UPTODATE \[COMMIT of the initial history\]: a quorum holds it.
    UpToDate,
    /// Leader to followers: PROPOSAL, a new transaction.
    Proposal(Txn),
    /// Follower to leader: ACK, the proposal is in its log.
    Ack(Zxid),
    /// Leader to followers: COMMIT, a quorum logged it; deliver.
    Commit(Txn),
    /// Failure detector to the others: this server has crashed (ZooKeeper's followers notice a
    /// leader gone when its heartbeats stop; the model announces the crash instead).
    ServerDown,
}

/// The servers' timers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// LOOKING and a candidate: stand for leader.
    Stand,
    /// Following: the leader has been silent too long (ZooKeeper's `syncLimit`); give up on it.
    /// Armed only when the model lets followers suspect a live leader.
    LeaderSilent,
}

/// One server of the ensemble.
#[derive(Clone, Debug)]
pub struct Server {
    /// Every other server.
    pub peers: Vec<Id>,
    /// Whether it may stand for leader (the model keeps the candidates few: each one multiplies
    /// the state space).
    pub candidate: bool,
    /// The highest epoch it may propose: the model's bound on leader changes.
    pub max_epoch: u8,
    /// How many transactions it proposes in each epoch it leads.
    pub writes: u8,
    /// Whether, as a follower, it may give up on its leader at any moment (a partition, a long
    /// pause) while that leader lives on.
    pub suspicious: bool,
    /// The seeded mistake, if any.
    pub bug: Option<Bug>,
}

/// A server's state. The first four fields are what ZooKeeper keeps on disk (the two epoch files
/// and the transaction log); the mode is volatile.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerState {
    /// The last epoch this server acknowledged in discovery (ZooKeeper's `acceptedEpoch` file):
    /// it acknowledges no lower one again.
    pub accepted_epoch: u8,
    /// The epoch of the last leader whose initial history it took (`currentEpoch`).
    pub current_epoch: u8,
    /// Its log of transactions, in zxid order.
    pub history: Vec<Txn>,
    /// How many of them it has delivered (applied to its data tree): a prefix of `history`.
    pub delivered: usize,
    /// What it is doing now.
    pub mode: Mode,
}

/// A server's mode, as ZooKeeper names it, with the phase within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// No leader: waiting for a candidate, or to stand.
    Looking,
    /// Following `leader`.
    Following {
        /// The leader it follows.
        leader: Id,
        /// Where it is in the leader's epoch.
        phase: FollowerPhase,
    },
    /// Leading (or trying to).
    Leading(LeaderPhase),
}

/// A follower's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FollowerPhase {
    /// Sent FOLLOWERINFO; waits for the new epoch.
    Discovery,
    /// Acknowledged the new epoch; waits for the leader's history.
    Synchronisation,
    /// Took the leader's history; waits for UPTODATE.
    Synced,
    /// Takes proposals and commits.
    Broadcast,
}

/// A leader's phase, with what it collects in each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaderPhase {
    /// Phase 1a: collecting FOLLOWERINFO (its own included) until a quorum.
    Discovery {
        /// Each server's accepted epoch.
        epochs: BTreeMap<Id, u8>,
    },
    /// Phase 1b: LEADERINFO sent; collecting ACKEPOCH until a quorum.
    EpochProposed {
        /// The new epoch.
        epoch: u8,
        /// The servers that joined in discovery.
        followers: BTreeSet<Id>,
        /// Each acknowledging server's (current epoch, history), its own included.
        acks: BTreeMap<Id, (u8, Vec<Txn>)>,
    },
    /// Phase 2: NEWLEADER sent; collecting its ACKs until a quorum.
    Synchronisation {
        /// The epoch.
        epoch: u8,
        /// The followers NEWLEADER went to.
        followers: BTreeSet<Id>,
        /// Who has taken the history, itself included.
        acks: BTreeSet<Id>,
        /// Whose history it took as its own.
        adopted_from: Id,
    },
    /// Phase 3: proposing and committing.
    Broadcast {
        /// The epoch.
        epoch: u8,
        /// Its followers.
        followers: BTreeSet<Id>,
        /// Proposals made in this epoch.
        proposed: u8,
        /// For each proposal not yet committed, who has logged it (itself included).
        acks: BTreeMap<Zxid, BTreeSet<Id>>,
        /// Whose history it took as its own.
        adopted_from: Id,
    },
}

impl LeaderPhase {
    /// The epoch this leader has established: set once its history is fixed (synchronisation on).
    pub fn established_epoch(&self) -> Option<u8> {
        match self {
            LeaderPhase::Synchronisation { epoch, .. } | LeaderPhase::Broadcast { epoch, .. } => {
                Some(*epoch)
            }
            _ => None,
        }
    }

    /// Whose history the leader took, once it has taken one.
    pub fn adopted_from(&self) -> Option<Id> {
        match self {
            LeaderPhase::Synchronisation { adopted_from, .. }
            | LeaderPhase::Broadcast { adopted_from, .. } => Some(*adopted_from),
            _ => None,
        }
    }
}

impl ServerState {
    fn last_zxid(&self) -> Option<Zxid> {
        self.history.last().map(|txn| txn.zxid)
    }

    /// Takes `history` as its log. What it had delivered stays delivered only as far as the new
    /// log agrees with it; in a correct run that is all of it (the property
    /// [`super::COMMITTED_SURVIVE`] is what says so).
    fn take_history(&mut self, history: Vec<Txn>) {
        let agreeing = self
            .history
            .iter()
            .zip(&history)
            .take_while(|(mine, theirs)| mine == theirs)
            .count();
        self.delivered = self.delivered.min(agreeing);
        self.history = history;
    }
}

impl Server {
    fn quorum(&self) -> usize {
        majority(self.peers.len() + 1)
    }

    /// Back to LOOKING, standing again later if it may.
    fn look(&self, state: &mut ServerState, o: &mut Out<Self>) {
        state.mode = Mode::Looking;
        o.cancel_timer(Timer::LeaderSilent);
        if self.candidate && state.accepted_epoch < self.max_epoch {
            o.set_timer(Timer::Stand, model_timeout());
        }
    }

    /// Phase 1a done: the new epoch, proposed to the servers that joined.
    fn propose_epoch(
        &self,
        id: Id,
        state: &mut ServerState,
        epochs: &BTreeMap<Id, u8>,
        o: &mut Out<Self>,
    ) {
        // Above every epoch any of the quorum has acknowledged: no server of it will have
        // acknowledged this one to another leader (and a follower refuses one it has).
        let epoch = epochs.values().max().copied().unwrap_or(0) + 1;
        if epoch > self.max_epoch {
            // Beyond the model's bound: this candidacy goes no further.
            return;
        }
        let followers: BTreeSet<Id> = epochs.keys().copied().filter(|f| *f != id).collect();
        // The leader is its own first follower: it accepts the epoch and acknowledges it.
        state.accepted_epoch = epoch;
        let acks = BTreeMap::from([(id, (state.current_epoch, state.history.clone()))]);
        for follower in &followers {
            o.send(*follower, Msg::LeaderInfo { epoch });
        }
        state.mode = Mode::Leading(LeaderPhase::EpochProposed {
            epoch,
            followers,
            acks,
        });
    }

    /// Phase 1b done: the most up-to-date history of the quorum becomes the leader's, and goes to
    /// every follower that acknowledged the epoch.
    fn synchronise(
        &self,
        id: Id,
        state: &mut ServerState,
        epoch: u8,
        acks: &BTreeMap<Id, (u8, Vec<Txn>)>,
        o: &mut Out<Self>,
    ) {
        let up_to_date = |(_, (current, history)): &(&Id, &(u8, Vec<Txn>))| {
            (*current, history.last().map(|txn| txn.zxid))
        };
        let best = match self.bug {
            Some(Bug::NewLeaderSkipsSynchronisation) => id,
            // Ties go to the leader itself (its own entry is first among equals): a history taken
            // from a follower is one strictly more up to date.
            _ => acks
                .iter()
                .max_by_key(|entry| (up_to_date(entry), *entry.0 == id))
                .map_or(id, |(who, _)| *who),
        };
        if let Some((_, history)) = acks.get(&best) {
            state.take_history(history.clone());
        }
        state.current_epoch = epoch;
        let followers: BTreeSet<Id> = acks.keys().copied().filter(|f| *f != id).collect();
        for follower in &followers {
            o.send(
                *follower,
                Msg::NewLeader {
                    epoch,
                    history: state.history.clone(),
                },
            );
        }
        state.mode = Mode::Leading(LeaderPhase::Synchronisation {
            epoch,
            followers,
            acks: BTreeSet::from([id]),
            adopted_from: best,
        });
    }

    /// Proposes the epoch's next transaction, if it has one left to propose.
    fn propose_next(&self, id: Id, state: &mut ServerState, o: &mut Out<Self>) {
        let Mode::Leading(LeaderPhase::Broadcast {
            epoch,
            followers,
            proposed,
            acks,
            ..
        }) = &mut state.mode
        else {
            return;
        };
        if *proposed >= self.writes {
            return;
        }
        *proposed += 1;
        let txn = Txn {
            zxid: Zxid {
                epoch: *epoch,
                counter: *proposed,
            },
            by: id,
        };
        for follower in followers.iter() {
            o.send(*follower, Msg::Proposal(txn));
        }
        state.history.push(txn);
        if self.bug == Some(Bug::LeaderCommitsWithoutQuorum) {
            // Logged by the leader alone, and committed.
            self.commit(id, state, txn, o);
        } else {
            acks.insert(txn.zxid, BTreeSet::from([id]));
        }
    }

    /// Commits `txn`, the leader's oldest undelivered transaction: tells the followers, delivers
    /// it, and goes on to the next proposal.
    fn commit(&self, id: Id, state: &mut ServerState, txn: Txn, o: &mut Out<Self>) {
        let Mode::Leading(LeaderPhase::Broadcast {
            followers, acks, ..
        }) = &mut state.mode
        else {
            return;
        };
        acks.remove(&txn.zxid);
        for follower in followers.iter() {
            o.send(*follower, Msg::Commit(txn));
        }
        state.delivered += 1;
        self.propose_next(id, state, o);
    }

    /// A leader's step on a message from `src`.
    fn lead(&self, id: Id, state: &mut ServerState, src: Id, msg: Msg, o: &mut Out<Self>) {
        let Mode::Leading(phase) = &mut state.mode else {
            return;
        };
        match (phase, msg) {
            (LeaderPhase::Discovery { epochs }, Msg::FollowerInfo { accepted }) => {
                epochs.insert(src, accepted);
                if epochs.len() >= self.quorum() {
                    let epochs = epochs.clone();
                    self.propose_epoch(id, state, &epochs, o);
                }
            }
            (
                LeaderPhase::EpochProposed {
                    epoch,
                    followers,
                    acks,
                },
                Msg::AckEpoch { current, history },
            ) if followers.contains(&src) => {
                acks.insert(src, (current, history));
                if acks.len() >= self.quorum() {
                    let (epoch, acks) = (*epoch, acks.clone());
                    self.synchronise(id, state, epoch, &acks, o);
                }
            }
            (
                LeaderPhase::Synchronisation {
                    epoch,
                    followers,
                    acks,
                    adopted_from,
                },
                Msg::AckNewLeader { epoch: acked },
            ) if acked == *epoch && followers.contains(&src) => {
                acks.insert(src);
                if acks.len() >= self.quorum() {
                    // A quorum holds the initial history: it is committed.
                    for follower in followers.iter() {
                        o.send(*follower, Msg::UpToDate);
                    }
                    let next = LeaderPhase::Broadcast {
                        epoch: *epoch,
                        followers: followers.clone(),
                        proposed: 0,
                        acks: BTreeMap::new(),
                        adopted_from: *adopted_from,
                    };
                    state.delivered = state.history.len();
                    state.mode = Mode::Leading(next);
                    self.propose_next(id, state, o);
                }
            }
            (
                LeaderPhase::Broadcast {
                    followers, acks, ..
                },
                Msg::Ack(zxid),
            ) if followers.contains(&src) => {
                let Some(logged) = acks.get_mut(&zxid) else {
                    return;
                };
                logged.insert(src);
                // Commit in zxid order: only the oldest undelivered transaction, once a quorum
                // has logged it.
                let quorum_logged = logged.len() >= self.quorum();
                match state.history.get(state.delivered).copied() {
                    Some(next) if quorum_logged && next.zxid == zxid => {
                        self.commit(id, state, next, o);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// A follower's step on a message from its leader.
    fn follow(&self, state: &mut ServerState, leader: Id, msg: Msg, o: &mut Out<Self>) {
        let Mode::Following { phase, .. } = &mut state.mode else {
            return;
        };
        match (*phase, msg) {
            (FollowerPhase::Discovery, Msg::LeaderInfo { epoch }) => {
                // A lower or equal epoch than one already acknowledged belongs to a leader that
                // cannot be trusted to have seen everything committed since: refuse, look again.
                if epoch <= state.accepted_epoch {
                    self.look(state, o);
                    return;
                }
                state.accepted_epoch = epoch;
                *phase = FollowerPhase::Synchronisation;
                o.send(
                    leader,
                    Msg::AckEpoch {
                        current: state.current_epoch,
                        history: state.history.clone(),
                    },
                );
            }
            (FollowerPhase::Synchronisation, Msg::NewLeader { epoch, history })
                if epoch == state.accepted_epoch =>
            {
                *phase = FollowerPhase::Synced;
                state.current_epoch = epoch;
                state.take_history(history);
                o.send(leader, Msg::AckNewLeader { epoch });
            }
            (FollowerPhase::Synced, Msg::UpToDate) => {
                *phase = FollowerPhase::Broadcast;
                state.delivered = state.history.len();
            }
            (FollowerPhase::Broadcast, Msg::Proposal(txn))
                if state.last_zxid().is_none_or(|last| txn.zxid > last) =>
            {
                state.history.push(txn);
                o.send(leader, Msg::Ack(txn.zxid));
            }
            (FollowerPhase::Broadcast, Msg::Commit(txn))
                if state.history.get(state.delivered) == Some(&txn) =>
            {
                state.delivered += 1;
            }
            _ => {}
        }
    }
}

impl Actor for Server {
    type Msg = Msg;
    type State = ServerState;
    type Timer = Timer;
    type Random = ();
    type Storage = ();

    fn name(&self) -> String {
        "server".to_owned()
    }

    fn on_start(&self, _id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> ServerState {
        let mut state = ServerState {
            accepted_epoch: 0,
            current_epoch: 0,
            history: Vec::new(),
            delivered: 0,
            mode: Mode::Looking,
        };
        self.look(&mut state, o);
        state
    }

    fn on_msg(&self, id: Id, state: &mut Cow<ServerState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match (&state.mode, &msg) {
            (Mode::Looking, Msg::Candidacy) => {
                let state = state.to_mut();
                o.cancel_timer(Timer::Stand);
                state.mode = Mode::Following {
                    leader: src,
                    phase: FollowerPhase::Discovery,
                };
                if self.suspicious {
                    o.set_timer(Timer::LeaderSilent, model_timeout());
                }
                o.send(
                    src,
                    Msg::FollowerInfo {
                        accepted: state.accepted_epoch,
                    },
                );
            }
            (Mode::Following { leader, .. }, Msg::ServerDown) if *leader == src => {
                self.look(state.to_mut(), o);
            }
            (Mode::Following { leader, .. }, _) if *leader == src => {
                let leader = *leader;
                self.follow(state.to_mut(), leader, msg, o);
            }
            (Mode::Leading(_), _) => self.lead(id, state.to_mut(), src, msg, o),
            _ => {}
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<ServerState>, timer: &Timer, o: &mut Out<Self>) {
        match (timer, &state.mode) {
            (Timer::LeaderSilent, Mode::Following { .. }) => self.look(state.to_mut(), o),
            (Timer::Stand, Mode::Looking) if state.accepted_epoch < self.max_epoch => {
                let state = state.to_mut();
                state.mode = Mode::Leading(LeaderPhase::Discovery {
                    epochs: BTreeMap::from([(id, state.accepted_epoch)]),
                });
                for peer in &self.peers {
                    o.send(*peer, Msg::Candidacy);
                }
            }
            _ => {}
        }
    }
}

impl Role for Server {
    /// Never: a crash of any server at any moment is a run worth checking.
    fn is_finished(&self, _state: &ServerState) -> bool {
        false
    }
}
