//! One ZAB server: its messages, its durable and volatile state, and its rules in each mode. The
//! configuration, naming and tests are in [the module](super).
//!
//! The same code runs in the model and as a process ([`crate::live`]). What only a live run
//! needs is switched on by [`Server::timing`] and stays idle in the model: heartbeats (PING), a
//! leader stepping down when it stops hearing from a quorum, resending proposals a follower
//! missed (UDP loses datagrams; the model's network does not), saving the durable state, and the
//! clients' requests.

use super::Bug;
use crate::fail_stop::Role;
use crate::multi_paxos::{Command, Key, Op, Value};
use serde::{Deserialize, Serialize};
use stateright::actor::{majority, model_timeout, Actor, Id, Out};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

/// A leader's epoch number.
pub type Epoch = u32;

/// A ZooKeeper transaction id: the epoch of the leader that proposed it, then that leader's
/// counter within the epoch. Ordered by epoch first, so every transaction of a later leader comes
/// after every transaction of an earlier one. (ZooKeeper packs both in one 64-bit number, epoch in
/// the high 32 bits, and prints it in hex: `0x100000001` is epoch 1, counter 1.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Zxid {
    /// The proposing leader's epoch.
    pub epoch: Epoch,
    /// Its count of proposals in that epoch, from 1.
    pub counter: u32,
}

/// A transaction: its zxid, the server that proposed it, and in live runs the client's command.
/// In the model the proposer stands for the content: two transactions with one zxid and
/// different proposers are two different writes under one name, which is what a broken epoch
/// rule produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Txn {
    /// Its id.
    pub zxid: Zxid,
    /// The leader that proposed it.
    pub by: Id,
    /// The client's read or write, and whom to answer (live runs; `None` in the model). Reads
    /// are transactions too, so a read is ordered after every write committed before it.
    pub command: Option<Command>,
}

/// The messages, named as ZooKeeper's quorum packets are (the ZAB paper's names in brackets),
/// then the live runs' own: the heartbeat and the clients' register protocol (the same as
/// [Multi-Paxos's](crate::multi_paxos::Msg), so one client speaks to both).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Msg {
    /// Candidate to every other server: follow me. Stands in for the election (see the module
    /// docs): a LOOKING server follows the first candidate it hears from.
    Candidacy,
    /// Follower to its prospective leader: FOLLOWERINFO \[CEPOCH\], the last epoch it
    /// acknowledged (`acceptedEpoch`).
    FollowerInfo {
        /// That epoch.
        accepted: Epoch,
    },
    /// Prospective leader to its followers: LEADERINFO \[NEWEPOCH\], the epoch it will lead.
    LeaderInfo {
        /// The new epoch.
        epoch: Epoch,
    },
    /// Follower to prospective leader: ACKEPOCH, its current epoch and its whole history, from
    /// which the leader picks the most up-to-date.
    AckEpoch {
        /// The follower's `currentEpoch`.
        current: Epoch,
        /// The follower's history.
        history: Vec<Txn>,
    },
    /// Leader to follower: NEWLEADER, the history every follower takes before the epoch starts
    /// (ZooKeeper sends the difference, or a truncation, or a snapshot; this sends it whole).
    /// An established leader sends it to a server that joins late, with its committed history.
    NewLeader {
        /// The epoch.
        epoch: Epoch,
        /// The leader's initial history (to a late joiner: its committed one).
        history: Vec<Txn>,
    },
    /// Follower to leader: ACK of NEWLEADER \[ACKNEWLEADER\].
    AckNewLeader {
        /// The epoch acknowledged.
        epoch: Epoch,
    },
    /// Leader to followers: UPTODATE \[COMMIT of the initial history\]: a quorum holds it.
    UpToDate,
    /// Leader to followers: PROPOSAL, a new transaction.
    Proposal(Txn),
    /// Follower to leader: ACK, the proposal is in its log.
    Ack(Zxid),
    /// Leader to followers: COMMIT, a quorum logged it (and everything before it); deliver.
    Commit(Txn),
    /// Failure detector to the others: this server has crashed (ZooKeeper's followers notice a
    /// leader gone when its heartbeats stop; the model announces the crash instead).
    ServerDown,
    /// Live: the leader to every other server, each tick: PING, with its epoch and the last
    /// zxid it has committed. A LOOKING server that hears it joins that leader.
    Ping {
        /// The leader's epoch.
        epoch: Epoch,
        /// Its last committed zxid.
        committed: Option<Zxid>,
    },
    /// Live: a follower's answer to PING, with its last logged zxid, so the leader can resend
    /// proposals it missed.
    Pong {
        /// The last zxid in its log.
        last: Option<Zxid>,
    },
    /// Client to server: write.
    Put {
        /// The client's request number.
        request: u64,
        /// The register.
        key: Key,
        /// The value.
        value: Value,
    },
    /// Client to server: read.
    Get {
        /// The client's request number.
        request: u64,
        /// The register.
        key: Key,
    },
    /// Server to client: written.
    PutOk {
        /// The request answered.
        request: u64,
    },
    /// Server to client: the value read.
    GetOk {
        /// The request answered.
        request: u64,
        /// The register's value (`None`: never written).
        value: Option<Value>,
    },
    /// Server to client: this server does not lead, and did nothing with the request.
    NotLeader {
        /// The request refused.
        request: u64,
        /// Who it believes leads.
        leader: Option<Id>,
    },
}

/// The servers' timers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// LOOKING and a candidate: stand for leader.
    Stand,
    /// Following: the leader has been silent too long (ZooKeeper's `syncLimit`); give up on it.
    /// Armed only when the model lets followers suspect a live leader.
    LeaderSilent,
    /// Live: a leader's heartbeat, and its check that a quorum still answers.
    Tick,
}

/// Timers of a live run (the model fires its timers whenever the checker chooses).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A LOOKING server stands after a random time in this range. Random, so that two rarely
    /// stand at once; longer than a tick, so that a server that restarts hears an established
    /// leader's PING before it stands against it.
    pub stand: (Duration, Duration),
    /// A follower that has heard nothing from its leader this long looks for another; a leader
    /// that has not heard from a quorum this long steps down; a candidate not established in
    /// this long gives up.
    pub silence: Duration,
    /// A leader's heartbeat period.
    pub tick: Duration,
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
    pub max_epoch: Epoch,
    /// How many transactions of its own it proposes in each epoch it leads (the model's writes;
    /// live runs propose only clients' commands).
    pub writes: u32,
    /// Whether, as a follower, it may give up on its leader at any moment (a partition, a long
    /// pause) while that leader lives on.
    pub suspicious: bool,
    /// Live timers; `None` in the model.
    pub timing: Option<Timing>,
    /// The seeded mistake, if any.
    pub bug: Option<Bug>,
}

/// What a server keeps on disk (ZooKeeper's two epoch files and its transaction log). A live
/// server saves it before any acknowledgement that depends on it leaves; the model's servers
/// never restart, so they save nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Disk {
    /// See [`ServerState::accepted_epoch`].
    pub accepted_epoch: Epoch,
    /// See [`ServerState::current_epoch`].
    pub current_epoch: Epoch,
    /// See [`ServerState::history`].
    pub history: Vec<Txn>,
}

/// A server's state. The first three fields are what ZooKeeper keeps on disk ([`Disk`]); the
/// rest is volatile.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerState {
    /// The last epoch this server acknowledged in discovery (ZooKeeper's `acceptedEpoch` file):
    /// it acknowledges no lower one again.
    pub accepted_epoch: Epoch,
    /// The epoch of the last leader whose initial history it took (`currentEpoch`).
    pub current_epoch: Epoch,
    /// Its log of transactions, in zxid order.
    pub history: Vec<Txn>,
    /// How many of them it has delivered (applied to its data tree): a prefix of `history`.
    pub delivered: usize,
    /// What it is doing now.
    pub mode: Mode,
    /// Live: the followers heard from since the last tick (always empty in the model).
    pub heard: BTreeSet<Id>,
    /// Live: ticks in a row it has led without hearing from a quorum, or been a candidate not
    /// yet established (always 0 in the model).
    pub quiet_ticks: u32,
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
        epochs: BTreeMap<Id, Epoch>,
    },
    /// Phase 1b: LEADERINFO sent; collecting ACKEPOCH until a quorum.
    EpochProposed {
        /// The new epoch.
        epoch: Epoch,
        /// The servers that joined in discovery.
        followers: BTreeSet<Id>,
        /// Each acknowledging server's (current epoch, history), its own included.
        acks: BTreeMap<Id, (Epoch, Vec<Txn>)>,
    },
    /// Phase 2: NEWLEADER sent; collecting its ACKs until a quorum.
    Synchronisation {
        /// The epoch.
        epoch: Epoch,
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
        epoch: Epoch,
        /// Its followers: those of the quorum it was established with, and any that joined
        /// since.
        followers: BTreeSet<Id>,
        /// Proposals made in this epoch.
        proposed: u32,
        /// For each proposal not yet committed, who has logged it (itself included).
        acks: BTreeMap<Zxid, BTreeSet<Id>>,
        /// Whose history it took as its own.
        adopted_from: Id,
    },
}

impl LeaderPhase {
    /// The epoch this leader has established: set once its history is fixed (synchronisation on).
    pub fn established_epoch(&self) -> Option<Epoch> {
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

/// Proposals resent to a follower that missed some, at most, per PONG: one datagram each (about
/// 120 bytes as JSON), so a follower far behind catches up over several ticks rather than
/// receive its whole gap in one burst, which a receive buffer may not hold.
const RESEND_BATCH: usize = 200;

impl ServerState {
    fn last_zxid(&self) -> Option<Zxid> {
        self.history.last().map(|txn| txn.zxid)
    }

    /// The last zxid it has delivered.
    pub fn delivered_zxid(&self) -> Option<Zxid> {
        self.history[..self.delivered].last().map(|txn| txn.zxid)
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

    /// Delivers everything up to `zxid`, if its log holds it (a COMMIT, or a PING's commit
    /// point, covers every transaction before it too).
    fn deliver_through(&mut self, zxid: Zxid) {
        if let Some(position) = self.history.iter().rposition(|txn| txn.zxid == zxid) {
            self.delivered = self.delivered.max(position + 1);
        }
    }

    /// A register's value after the first `len` transactions of the log.
    fn value_after(&self, len: usize, key: Key) -> Option<Value> {
        self.history[..len]
            .iter()
            .rev()
            .find_map(|txn| match txn.command.map(|c| c.op) {
                Some(Op::Put(k, value)) if k == key => Some(value),
                _ => None,
            })
    }
}

impl Server {
    fn quorum(&self) -> usize {
        majority(self.peers.len() + 1)
    }

    /// When a timer fires: whenever the checker chooses in the model; after the live timing in
    /// a live run.
    fn timeout(&self, timer: &Timer) -> Range<Duration> {
        match (self.timing, timer) {
            (None, _) => model_timeout(),
            (Some(t), Timer::Stand) => t.stand.0..t.stand.1,
            (Some(t), Timer::LeaderSilent) => t.silence..t.silence,
            (Some(t), Timer::Tick) => t.tick..t.tick,
        }
    }

    /// Ticks of silence after which a leader steps down or a candidate gives up (live runs).
    fn quiet_limit(&self) -> u32 {
        self.timing.map_or(u32::MAX, |t| {
            (t.silence.as_micros() / t.tick.as_micros().max(1)).max(1) as u32
        })
    }

    /// Live: saves what must survive a crash, before the acknowledgement of this step leaves (the
    /// runner writes it first). The model's servers never restart and save nothing.
    fn save(&self, state: &ServerState, o: &mut Out<Self>) {
        if self.timing.is_some() {
            o.save(Disk {
                accepted_epoch: state.accepted_epoch,
                current_epoch: state.current_epoch,
                history: state.history.clone(),
            });
        }
    }

    /// Back to LOOKING, standing again later if it may.
    fn look(&self, state: &mut ServerState, o: &mut Out<Self>) {
        state.mode = Mode::Looking;
        state.heard.clear();
        state.quiet_ticks = 0;
        o.cancel_timer(Timer::LeaderSilent);
        if self.candidate && state.accepted_epoch < self.max_epoch {
            o.set_timer(Timer::Stand, self.timeout(&Timer::Stand));
        }
    }

    /// LOOKING, it follows `leader`: a candidate that asked, or (live) an established leader it
    /// heard a PING from.
    fn join(&self, state: &mut ServerState, leader: Id, o: &mut Out<Self>) {
        o.cancel_timer(Timer::Stand);
        state.mode = Mode::Following {
            leader,
            phase: FollowerPhase::Discovery,
        };
        if self.suspicious {
            o.set_timer(Timer::LeaderSilent, self.timeout(&Timer::LeaderSilent));
        }
        o.send(
            leader,
            Msg::FollowerInfo {
                accepted: state.accepted_epoch,
            },
        );
    }

    /// Phase 1a done: the new epoch, proposed to the servers that joined.
    fn propose_epoch(
        &self,
        id: Id,
        state: &mut ServerState,
        epochs: &BTreeMap<Id, Epoch>,
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
        self.save(state, o);
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
        epoch: Epoch,
        acks: &BTreeMap<Id, (Epoch, Vec<Txn>)>,
        o: &mut Out<Self>,
    ) {
        let up_to_date = |(_, (current, history)): &(&Id, &(Epoch, Vec<Txn>))| {
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
        self.save(state, o);
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

    /// Proposes the epoch's next transaction of its own, if it has one left (the model's writes).
    fn propose_next(&self, id: Id, state: &mut ServerState, o: &mut Out<Self>) {
        if let Mode::Leading(LeaderPhase::Broadcast { proposed, .. }) = &state.mode {
            if *proposed < self.writes {
                self.propose(id, state, None, o);
            }
        }
    }

    /// Proposes a transaction (a client's command, or the model's own write) in the next zxid
    /// of its epoch: logs it, saves, sends it to every follower.
    fn propose(
        &self,
        id: Id,
        state: &mut ServerState,
        command: Option<Command>,
        o: &mut Out<Self>,
    ) {
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
        *proposed += 1;
        let txn = Txn {
            zxid: Zxid {
                epoch: *epoch,
                counter: *proposed,
            },
            by: id,
            command,
        };
        for follower in followers.iter() {
            o.send(*follower, Msg::Proposal(txn));
        }
        if self.bug != Some(Bug::LeaderCommitsWithoutQuorum) {
            acks.insert(txn.zxid, BTreeSet::from([id]));
        }
        state.history.push(txn);
        self.save(state, o);
        if self.bug == Some(Bug::LeaderCommitsWithoutQuorum) {
            // Logged by the leader alone, and committed.
            self.commit(id, state, txn, o);
        }
    }

    /// Commits `txn`, the leader's oldest undelivered transaction: tells the followers, delivers
    /// it (answering its client), and goes on to the next proposal of its own.
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
        if let Some(command) = txn.command.filter(|_| txn.by == id) {
            let answer = match command.op {
                Op::Put(..) => Msg::PutOk {
                    request: command.request,
                },
                Op::Get(key) => Msg::GetOk {
                    request: command.request,
                    value: state.value_after(state.delivered, key),
                },
                Op::Noop => return,
            };
            o.send(command.client, answer);
        }
        self.propose_next(id, state, o);
    }

    /// Commits, in zxid order, every transaction from the oldest undelivered one on that a
    /// quorum has logged.
    fn commit_ready(&self, id: Id, state: &mut ServerState, o: &mut Out<Self>) {
        loop {
            let Mode::Leading(LeaderPhase::Broadcast { acks, .. }) = &state.mode else {
                return;
            };
            let Some(next) = state.history.get(state.delivered).copied() else {
                return;
            };
            let quorum_logged = acks
                .get(&next.zxid)
                .is_some_and(|logged| logged.len() >= self.quorum());
            if !quorum_logged {
                return;
            }
            self.commit(id, state, next, o);
        }
    }

    /// An established leader takes in a server that asked to follow after its epoch began (it
    /// restarted, or gave up on this leader or another): the committed history as NEWLEADER,
    /// then UPTODATE, then every proposal not yet committed, in order, so the joiner logs and
    /// acknowledges them as the others did. (ZooKeeper's leader likewise queues a learner's
    /// proposals behind its synchronisation.)
    ///
    /// A joiner that followed this leader before may have acknowledged some of those proposals
    /// then; it drops them now, with the rest of its log past the committed history, so its old
    /// acknowledgements no longer count: only the ones it sends again after logging them anew.
    /// (Counting them, a five-server ensemble could commit a write on a quorum of which the
    /// joiner no longer held it, and lose it to two crashes: found in review, live runs only,
    /// since a server of the model never rejoins a leader it has followed.)
    fn take_in(&self, state: &mut ServerState, joiner: Id, o: &mut Out<Self>) {
        let Mode::Leading(LeaderPhase::Broadcast {
            epoch,
            followers,
            acks,
            ..
        }) = &mut state.mode
        else {
            return;
        };
        followers.insert(joiner);
        for logged in acks.values_mut() {
            logged.remove(&joiner);
        }
        o.send(
            joiner,
            Msg::NewLeader {
                epoch: *epoch,
                history: state.history[..state.delivered].to_vec(),
            },
        );
        o.send(joiner, Msg::UpToDate);
        for txn in &state.history[state.delivered..] {
            o.send(joiner, Msg::Proposal(*txn));
        }
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
                    // Live: the ticks spent establishing are not silence of its followers.
                    state.quiet_ticks = 0;
                    state.heard.clear();
                    self.propose_next(id, state, o);
                }
            }
            (LeaderPhase::Broadcast { epoch, .. }, Msg::FollowerInfo { accepted })
                if accepted <= *epoch =>
            {
                self.take_in(state, src, o);
            }
            (
                LeaderPhase::Broadcast {
                    followers, acks, ..
                },
                Msg::Ack(zxid),
            ) if followers.contains(&src) => {
                state.heard.insert(src);
                let Some(logged) = acks.get_mut(&zxid) else {
                    return;
                };
                logged.insert(src);
                self.commit_ready(id, state, o);
            }
            (
                LeaderPhase::Broadcast {
                    epoch, followers, ..
                },
                Msg::Pong { last },
            ) if followers.contains(&src) => {
                let epoch = *epoch;
                state.heard.insert(src);
                // Resend this epoch's proposals the follower has not logged (a lost datagram).
                let missing = state
                    .history
                    .iter()
                    .filter(|txn| txn.zxid.epoch == epoch && last.is_none_or(|l| txn.zxid > l))
                    .take(RESEND_BATCH);
                for txn in missing {
                    o.send(src, Msg::Proposal(*txn));
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
        let heard_from_leader = match (*phase, msg) {
            (FollowerPhase::Discovery, Msg::LeaderInfo { epoch }) => {
                // A lower or equal epoch than one already acknowledged belongs to a leader that
                // cannot be trusted to have seen everything committed since: refuse, look again.
                if epoch <= state.accepted_epoch {
                    self.look(state, o);
                    return;
                }
                state.accepted_epoch = epoch;
                *phase = FollowerPhase::Synchronisation;
                self.save(state, o);
                o.send(
                    leader,
                    Msg::AckEpoch {
                        current: state.current_epoch,
                        history: state.history.clone(),
                    },
                );
                true
            }
            // A late joiner taken in by an established leader: no new epoch is proposed, so it
            // acknowledges none; it takes the leader's committed history. An epoch below one it
            // acknowledged is an old leader's: refused, as above.
            (FollowerPhase::Discovery, Msg::NewLeader { epoch, history }) => {
                if epoch < state.accepted_epoch {
                    self.look(state, o);
                    return;
                }
                *phase = FollowerPhase::Synced;
                state.accepted_epoch = epoch;
                state.current_epoch = epoch;
                state.take_history(history);
                self.save(state, o);
                o.send(leader, Msg::AckNewLeader { epoch });
                true
            }
            (FollowerPhase::Synchronisation, Msg::NewLeader { epoch, history })
                if epoch == state.accepted_epoch =>
            {
                *phase = FollowerPhase::Synced;
                state.current_epoch = epoch;
                state.take_history(history);
                self.save(state, o);
                o.send(leader, Msg::AckNewLeader { epoch });
                true
            }
            (FollowerPhase::Synced, Msg::UpToDate) => {
                *phase = FollowerPhase::Broadcast;
                state.delivered = state.history.len();
                true
            }
            // Only the next proposal of the leader's epoch: after a lost one, the later ones wait
            // until the leader resends (in the model nothing is lost and each is the next).
            (FollowerPhase::Broadcast, Msg::Proposal(txn)) => {
                let last_counter = match state.last_zxid() {
                    Some(last) if last.epoch == state.current_epoch => last.counter,
                    _ => 0,
                };
                if txn.zxid.epoch == state.current_epoch && txn.zxid.counter == last_counter + 1 {
                    state.history.push(txn);
                    self.save(state, o);
                    o.send(leader, Msg::Ack(txn.zxid));
                }
                true
            }
            (FollowerPhase::Broadcast, Msg::Commit(txn)) => {
                state.deliver_through(txn.zxid);
                true
            }
            (FollowerPhase::Broadcast, Msg::Ping { committed, .. }) => {
                if let Some(zxid) = committed {
                    state.deliver_through(zxid);
                }
                o.send(
                    leader,
                    Msg::Pong {
                        last: state.last_zxid(),
                    },
                );
                true
            }
            _ => false,
        };
        // Live: the leader is not silent. (The model's followers may give up at any moment, so
        // their timer is never re-armed.)
        if heard_from_leader && self.timing.is_some() && self.suspicious {
            o.set_timer(Timer::LeaderSilent, self.timeout(&Timer::LeaderSilent));
        }
    }

    /// A client's request: proposed if this server leads an established epoch, refused
    /// otherwise with the leader it knows of.
    fn serve_client(&self, id: Id, state: &mut ServerState, src: Id, msg: Msg, o: &mut Out<Self>) {
        let (request, op) = match msg {
            Msg::Put {
                request,
                key,
                value,
            } => (request, Op::Put(key, value)),
            Msg::Get { request, key } => (request, Op::Get(key)),
            _ => return,
        };
        match &state.mode {
            Mode::Leading(LeaderPhase::Broadcast { .. }) => {
                let command = Command {
                    client: src,
                    request,
                    op,
                };
                self.propose(id, state, Some(command), o);
            }
            Mode::Following { leader, .. } => o.send(
                src,
                Msg::NotLeader {
                    request,
                    leader: Some(*leader),
                },
            ),
            _ => o.send(
                src,
                Msg::NotLeader {
                    request,
                    leader: None,
                },
            ),
        }
    }

    /// Live: a leader's heartbeat and its check of its quorum; a candidate's patience.
    fn tick(&self, state: &mut ServerState, o: &mut Out<Self>) {
        o.set_timer(Timer::Tick, self.timeout(&Timer::Tick));
        let Mode::Leading(phase) = &state.mode else {
            return;
        };
        let heard_quorum = match phase {
            LeaderPhase::Broadcast { epoch, .. } => {
                // To every other server, followers or not: one that is LOOKING joins.
                for peer in &self.peers {
                    o.send(
                        *peer,
                        Msg::Ping {
                            epoch: *epoch,
                            committed: state.delivered_zxid(),
                        },
                    );
                }
                state.heard.len() + 1 >= self.quorum()
            }
            // Not yet established: only patience counts.
            _ => false,
        };
        state.heard.clear();
        state.quiet_ticks = if heard_quorum {
            0
        } else {
            state.quiet_ticks + 1
        };
        if state.quiet_ticks >= self.quiet_limit() {
            // Cut off from its quorum (or never got one): whatever it proposes now cannot
            // commit, and its followers have moved on. Look for the leader they chose.
            self.look(state, o);
        }
    }
}

impl Actor for Server {
    type Msg = Msg;
    type State = ServerState;
    type Timer = Timer;
    type Random = ();
    type Storage = Disk;

    fn name(&self) -> String {
        "server".to_owned()
    }

    /// A fresh server, or (live) one restarting from its disk: LOOKING, with nothing delivered.
    fn on_start(&self, _id: Id, storage: &Option<Disk>, o: &mut Out<Self>) -> ServerState {
        let disk = storage.clone().unwrap_or_default();
        let mut state = ServerState {
            accepted_epoch: disk.accepted_epoch,
            current_epoch: disk.current_epoch,
            history: disk.history,
            delivered: 0,
            mode: Mode::Looking,
            heard: BTreeSet::new(),
            quiet_ticks: 0,
        };
        self.look(&mut state, o);
        if self.timing.is_some() {
            o.set_timer(Timer::Tick, self.timeout(&Timer::Tick));
        }
        state
    }

    fn on_msg(&self, id: Id, state: &mut Cow<ServerState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match (&state.mode, &msg) {
            (_, Msg::Put { .. } | Msg::Get { .. }) => {
                self.serve_client(id, state.to_mut(), src, msg, o);
            }
            (Mode::Looking, Msg::Candidacy) => self.join(state.to_mut(), src, o),
            (Mode::Looking, Msg::Ping { epoch, .. }) if *epoch >= state.accepted_epoch => {
                self.join(state.to_mut(), src, o);
            }
            (Mode::Following { leader, .. }, Msg::ServerDown) if *leader == src => {
                self.look(state.to_mut(), o);
            }
            (Mode::Following { leader, .. }, _) if *leader == src => {
                let leader = *leader;
                self.follow(state.to_mut(), leader, msg, o);
            }
            // A leader of a later epoch is about: this one was cut off, and steps down.
            (Mode::Leading(_), Msg::Ping { epoch, .. }) if *epoch > state.accepted_epoch => {
                self.look(state.to_mut(), o);
            }
            (Mode::Leading(_), _) => self.lead(id, state.to_mut(), src, msg, o),
            _ => {}
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<ServerState>, timer: &Timer, o: &mut Out<Self>) {
        match (timer, &state.mode) {
            (Timer::Tick, _) => self.tick(state.to_mut(), o),
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
