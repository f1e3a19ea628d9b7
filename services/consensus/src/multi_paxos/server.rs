//! The server: acceptor, leader and learner of one replicated log, and the register it applies.
//!
//! Every server plays every role, as in a real Multi-Paxos service:
//!
//! - **acceptor**: it promises ballots and accepts commands into slots of its log, and keeps both
//!   in its durable [`AcceptorLog`] (saved before it answers; a crash loses everything else);
//! - **leader**: a server whose election timer fires runs phase 1 *once for every slot from its
//!   first unapplied one on*, with a ballot above any it has seen. A majority's promises carry
//!   what those acceptors accepted; the new leader proposes, slot by slot, the command accepted in
//!   the highest ballot (a no-op where a slot has none), and then each client command in the next
//!   free slot with phase 2 alone. That is what makes it *Multi*-Paxos: one phase 1 per
//!   leadership, not per command;
//! - **learner**: a command accepted by a majority in one ballot is chosen; the leader, counting
//!   the `accepted` answers, knows it first and applies its log in slot order to its copy of the
//!   registers (in live runs it also tells the followers, `decided`, and they apply theirs). The leader answers a client when it applies the client's
//!   command: reads go through the log too, so a read is ordered after every write before it.
//!
//! A leader that learns of a higher ballot (a refusal, a promise to another, a heartbeat) steps
//! down. In live runs ([`crate::live`]) the leader also sends heartbeats, which keep followers
//! from campaigning and let a follower that missed decisions (it was down) catch up; the model
//! leaves heartbeats out and lets the checker fire election timers at any moment instead, which
//! covers every way a follower could suspect a live leader.

use super::{Ballot, Bug, Command, Key, Msg, Node, Op, Slot, Timer, Value};
use serde::{Deserialize, Serialize};
use stateright::actor::{majority, Id, Out};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Decided entries one catch-up answer carries: about 40 bytes each as JSON, so 200 fit a UDP
/// datagram (64 KiB) with room to spare; a server further behind asks again at the next
/// heartbeat.
const CATCH_UP_BATCH: usize = 200;

/// Timers of a live run (the model fires its timers whenever the checker chooses).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A follower that hears nothing from a leader for a random time in this range campaigns.
    /// Random, so that two followers rarely campaign at once.
    pub election: (Duration, Duration),
    /// How often a leader tells the followers it is alive. Several heartbeats fit in the shortest
    /// election timeout, so one lost datagram does not start an election.
    pub heartbeat: Duration,
}

/// A server.
#[derive(Clone, Debug)]
pub struct Server {
    /// Every server of the group, this one included.
    pub peers: Vec<Id>,
    /// The most ballots it starts (the model's bound); `None`: no bound (live runs).
    pub campaigns: Option<u32>,
    /// Live timers; `None` in the model.
    pub timing: Option<Timing>,
    /// The model's starting point: every acceptor has promised this ballot and its server leads
    /// (`None`: no leader until an election, as in live runs).
    pub initial_leader: Option<Ballot>,
    /// The model's crash: this server may, once, lose everything but its acceptor's log and
    /// start again from it (see [`Timer::Restart`]).
    pub may_restart: bool,
    /// The seeded mistake, if any.
    pub bug: Option<Bug>,
}

/// What an acceptor must not forget: the ballot it promised and what it accepted in each slot.
/// Saved before every answer that depends on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AcceptorLog {
    /// The highest ballot promised.
    pub promised: Option<Ballot>,
    /// Per slot, the last command accepted and its ballot.
    pub accepted: BTreeMap<Slot, (Ballot, Command)>,
}

/// What a server is doing about leadership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Following whichever leader it hears from.
    Follower,
    /// Phase 1 of its ballot is under way.
    Candidate {
        /// Its ballot.
        ballot: Ballot,
        /// The first slot phase 1 covers (its first unapplied slot).
        from: Slot,
        /// The acceptors that promised.
        promised_by: BTreeSet<Id>,
        /// Per slot, the command accepted in the highest ballot among the promises.
        carried: BTreeMap<Slot, (Ballot, Command)>,
        /// Client commands that arrived meanwhile: proposed once it leads, refused if it does
        /// not. (Refusing them at once would send their clients back and forth between the old
        /// leader, which points at the candidate, and the candidate, which points at the old
        /// leader.)
        waiting: BTreeSet<Command>,
    },
    /// Phase 1 done: it proposes commands in its ballot.
    Leader {
        /// Its ballot.
        ballot: Ballot,
        /// The next free slot.
        next: Slot,
        /// Proposed commands not yet applied, with the acceptors that accepted each.
        proposals: BTreeMap<Slot, (Command, BTreeSet<Id>)>,
    },
}

/// A server's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerState {
    /// The acceptor's durable part.
    pub log: AcceptorLog,
    /// Slots known to be chosen, and their commands (kept after they are applied, for followers
    /// that catch up).
    pub decided: BTreeMap<Slot, Command>,
    /// Slots below this one are applied to `registers`.
    pub applied: Slot,
    /// The replicated state: each register's value.
    pub registers: BTreeMap<Key, Value>,
    /// Its part in leadership.
    pub role: Role,
    /// Ballots it has started since it (re)started.
    pub campaigns: u32,
    /// Whether it has crashed and restarted (the model's one crash).
    pub restarted: bool,
    /// The highest round of any ballot it has seen.
    pub highest_round: u32,
    /// Who it believes leads (the owner of the highest ballot it has heard from).
    pub leader: Option<Id>,
}

impl Server {
    /// A fresh server, or one restarting with what its acceptor saved.
    pub fn on_start(
        &self,
        me: Id,
        storage: Option<&AcceptorLog>,
        o: &mut Out<Node>,
    ) -> ServerState {
        let mut state = self.restart(storage.cloned().unwrap_or_default(), o);
        if let (None, Some(ballot)) = (storage, self.initial_leader) {
            state.log.promised = Some(ballot);
            state.highest_round = ballot.round;
            state.leader = Some(ballot.leader);
            self.save(&state, o);
            if ballot.leader == me {
                state.role = Role::Leader {
                    ballot,
                    next: 0,
                    proposals: BTreeMap::new(),
                };
            }
        }
        if self.may_restart {
            o.set_timer(Timer::Restart, stateright::actor::model_timeout());
        }
        state
    }

    /// The state after a (re)start from `log`: a follower that knows nothing decided.
    fn restart(&self, log: AcceptorLog, o: &mut Out<Node>) -> ServerState {
        let state = ServerState {
            highest_round: log.promised.map_or(0, |b| b.round),
            log,
            decided: BTreeMap::new(),
            applied: 0,
            registers: BTreeMap::new(),
            role: Role::Follower,
            campaigns: 0,
            restarted: false,
            leader: None,
        };
        self.arm_election(&state, o);
        state
    }

    /// Handles a message; returns the new state, or `None` if it changed nothing.
    pub fn on_msg(
        &self,
        me: Id,
        state: &ServerState,
        src: Id,
        msg: Msg,
        o: &mut Out<Node>,
    ) -> Option<ServerState> {
        let mut s = state.clone();
        match msg {
            Msg::Put {
                request,
                key,
                value,
            } => self.on_request(me, &mut s, src, request, Op::Put(key, value), o),
            Msg::Get { request, key } => self.on_request(me, &mut s, src, request, Op::Get(key), o),
            Msg::Prepare { ballot, from } => {
                s.see(me, ballot, o);
                if s.log.promised < Some(ballot) {
                    s.log.promised = Some(ballot);
                    self.save(&s, o);
                    let accepted = s
                        .log
                        .accepted
                        .range(from..)
                        .map(|(slot, (b, c))| (*slot, *b, *c))
                        .collect();
                    o.send(src, Msg::Promise { ballot, accepted });
                } else if let Some(promised) = s.log.promised.filter(|p| *p > ballot) {
                    o.send(src, Msg::Rejected { ballot, promised });
                }
            }
            Msg::Accept {
                ballot,
                slot,
                command,
            } => {
                s.see(me, ballot, o);
                if s.log.promised <= Some(ballot) {
                    s.log.promised = Some(ballot);
                    s.log.accepted.insert(slot, (ballot, command));
                    self.save(&s, o);
                    o.send(
                        ballot.leader,
                        Msg::Accepted {
                            ballot,
                            slot,
                            command,
                        },
                    );
                    if ballot.leader != me {
                        self.arm_election(&s, o);
                    }
                } else if let Some(promised) = s.log.promised {
                    o.send(ballot.leader, Msg::Rejected { ballot, promised });
                }
            }
            Msg::Promise { ballot, accepted } => {
                let Role::Candidate {
                    ballot: mine,
                    from,
                    promised_by,
                    carried,
                    waiting,
                } = &mut s.role
                else {
                    return None;
                };
                if *mine != ballot || !promised_by.insert(src) {
                    return None;
                }
                for (slot, b, command) in accepted {
                    if carried.get(&slot).is_none_or(|(highest, _)| *highest < b) {
                        carried.insert(slot, (b, command));
                    }
                }
                if promised_by.len() >= majority(self.peers.len()) {
                    let (from, carried, waiting) =
                        (*from, std::mem::take(carried), std::mem::take(waiting));
                    self.lead(me, &mut s, ballot, from, carried, o);
                    for command in waiting {
                        self.on_request(me, &mut s, command.client, command.request, command.op, o);
                    }
                }
            }
            Msg::Accepted { ballot, slot, .. } => {
                let Role::Leader {
                    ballot: mine,
                    proposals,
                    ..
                } = &mut s.role
                else {
                    return None;
                };
                let (command, votes) = proposals.get_mut(&slot)?;
                if *mine != ballot || !votes.insert(src) {
                    return None;
                }
                if votes.len() == majority(self.peers.len()) {
                    let command = *command;
                    // Followers are told in live runs, so that they can serve as leader without
                    // a long phase 1 and answer catch-up requests. The model leaves the
                    // announcement out: no property depends on a follower knowing (a new leader
                    // learns every chosen command from its promises), and the announcements'
                    // deliveries, interleaved with everything else, multiplied the states
                    // about eightfold.
                    if self.timing.is_some() {
                        o.broadcast(self.others(me), &Msg::Decided { slot, command });
                    }
                    s.learn(slot, command);
                    s.apply(o);
                }
            }
            Msg::Rejected { ballot, promised } => {
                let mine = match &s.role {
                    Role::Candidate { ballot, .. } | Role::Leader { ballot, .. } => *ballot,
                    Role::Follower => return None,
                };
                if mine != ballot {
                    return None;
                }
                s.see(me, promised, o);
                self.arm_election(&s, o);
            }
            Msg::Decided { slot, command } => {
                s.learn(slot, command);
                s.apply(o);
            }
            Msg::Heartbeat { ballot, applied } => {
                if s.log.promised > Some(ballot) {
                    return None;
                }
                s.see(me, ballot, o);
                self.arm_election(&s, o);
                if applied > s.applied {
                    o.send(src, Msg::CatchUp { from: s.applied });
                }
            }
            Msg::CatchUp { from } => {
                let entries = s
                    .decided
                    .range(from..s.applied)
                    .take(CATCH_UP_BATCH)
                    .map(|(slot, command)| (*slot, *command))
                    .collect();
                o.send(src, Msg::Learn { entries });
                return None;
            }
            Msg::Learn { entries } => {
                for (slot, command) in entries {
                    s.learn(slot, command);
                }
                s.apply(o);
            }
            Msg::PutOk { .. } | Msg::GetOk { .. } | Msg::NotLeader { .. } => return None,
        }
        (s != *state).then_some(s)
    }

    /// A timer fired; returns the new state, or `None` if it changed nothing.
    pub fn on_timeout(
        &self,
        me: Id,
        state: &ServerState,
        timer: &Timer,
        o: &mut Out<Node>,
    ) -> Option<ServerState> {
        match (timer, &state.role) {
            (Timer::Heartbeat, Role::Leader { ballot, .. }) => {
                o.broadcast(
                    self.others(me),
                    &Msg::Heartbeat {
                        ballot: *ballot,
                        applied: state.applied,
                    },
                );
                if let Some(timing) = self.timing {
                    o.set_timer(Timer::Heartbeat, timing.heartbeat..timing.heartbeat);
                }
                None
            }
            (Timer::Election, Role::Follower | Role::Candidate { .. }) => {
                if self.campaigns.is_some_and(|most| state.campaigns >= most) {
                    return None;
                }
                let mut s = state.clone();
                let ballot = Ballot {
                    round: s.highest_round + 1,
                    leader: me,
                };
                s.highest_round = ballot.round;
                s.campaigns += 1;
                // Its own acceptor promises at once (the ballot is above any it has seen).
                s.log.promised = Some(ballot);
                self.save(&s, o);
                let carried = s
                    .log
                    .accepted
                    .range(s.applied..)
                    .map(|(slot, entry)| (*slot, *entry))
                    .collect();
                let waiting = match &s.role {
                    Role::Candidate { waiting, .. } => waiting.clone(),
                    _ => BTreeSet::new(),
                };
                s.role = Role::Candidate {
                    ballot,
                    from: s.applied,
                    promised_by: BTreeSet::from([me]),
                    carried,
                    waiting,
                };
                o.broadcast(
                    self.others(me),
                    &Msg::Prepare {
                        ballot,
                        from: s.applied,
                    },
                );
                self.arm_election(&s, o);
                Some(s)
            }
            (Timer::Restart, _) if !state.restarted => {
                // The crash: everything but what the acceptor saved is lost (all of it, with the
                // seeded bug that saves nothing).
                let saved = if self.bug == Some(Bug::AcceptorForgetsOnRestart) {
                    AcceptorLog::default()
                } else {
                    state.log.clone()
                };
                let mut s = self.restart(saved, o);
                s.restarted = true;
                Some(s)
            }
            _ => None,
        }
    }

    /// A client's command: proposed if this server leads, refused with a hint otherwise.
    fn on_request(
        &self,
        me: Id,
        s: &mut ServerState,
        client: Id,
        request: u64,
        op: Op,
        o: &mut Out<Node>,
    ) {
        let command = Command {
            client,
            request,
            op,
        };
        if let Role::Candidate { waiting, .. } = &mut s.role {
            waiting.insert(command);
            return;
        }
        let Role::Leader { ballot, next, .. } = &mut s.role else {
            o.send(
                client,
                Msg::NotLeader {
                    request,
                    leader: s.leader.filter(|l| *l != me),
                },
            );
            return;
        };
        if let (Op::Get(key), Some(Bug::LeaderReadsLocally)) = (op, self.bug) {
            o.send(
                client,
                Msg::GetOk {
                    request,
                    value: s.registers.get(&key).copied(),
                },
            );
            return;
        }
        let (ballot, slot) = (*ballot, *next);
        *next += 1;
        self.propose(me, s, ballot, slot, command, o);
    }

    /// Phase 2 for one slot: its own acceptor accepts at once (a leader's acceptor has promised
    /// nothing above its ballot, or the leader would have stepped down), the others are asked.
    fn propose(
        &self,
        me: Id,
        s: &mut ServerState,
        ballot: Ballot,
        slot: Slot,
        command: Command,
        o: &mut Out<Node>,
    ) {
        if let Role::Leader { proposals, .. } = &mut s.role {
            proposals.insert(slot, (command, BTreeSet::from([me])));
        }
        s.log.accepted.insert(slot, (ballot, command));
        self.save(s, o);
        o.broadcast(
            self.others(me),
            &Msg::Accept {
                ballot,
                slot,
                command,
            },
        );
    }

    /// Phase 1 won: propose what the promises carried (or a no-op) in every slot from `from` up
    /// to the highest one any promise named, then lead.
    fn lead(
        &self,
        me: Id,
        s: &mut ServerState,
        ballot: Ballot,
        from: Slot,
        carried: BTreeMap<Slot, (Ballot, Command)>,
        o: &mut Out<Node>,
    ) {
        let carried = if self.bug == Some(Bug::NewLeaderIgnoresPromises) {
            BTreeMap::new()
        } else {
            carried
        };
        let end = carried
            .keys()
            .chain(s.decided.keys())
            .map(|slot| slot + 1)
            .max()
            .unwrap_or(from)
            .max(from);
        s.role = Role::Leader {
            ballot,
            next: end,
            proposals: BTreeMap::new(),
        };
        s.leader = Some(me);
        for slot in from..end {
            let command = carried
                .get(&slot)
                .map(|(_, c)| *c)
                .or_else(|| s.decided.get(&slot).copied())
                .unwrap_or(Command::noop(me));
            self.propose(me, s, ballot, slot, command, o);
        }
        if let Some(timing) = self.timing {
            o.cancel_timer(Timer::Election);
            o.broadcast(
                self.others(me),
                &Msg::Heartbeat {
                    ballot,
                    applied: s.applied,
                },
            );
            o.set_timer(Timer::Heartbeat, timing.heartbeat..timing.heartbeat);
        }
    }

    /// Saves the acceptor's log (unless the seeded bug forgets it).
    fn save(&self, s: &ServerState, o: &mut Out<Node>) {
        if self.bug != Some(Bug::AcceptorForgetsOnRestart) {
            o.save(s.log.clone());
        }
    }

    /// (Re)arms the election timer: live, a random timeout; in the model, a timer the checker may
    /// fire at any moment, while the server may still campaign.
    fn arm_election(&self, s: &ServerState, o: &mut Out<Node>) {
        if matches!(s.role, Role::Leader { .. }) {
            return;
        }
        match self.timing {
            Some(timing) => o.set_timer(Timer::Election, timing.election.0..timing.election.1),
            None if self.campaigns.is_none_or(|most| s.campaigns < most) => {
                o.set_timer(Timer::Election, stateright::actor::model_timeout());
            }
            None => {}
        }
    }

    fn others(&self, me: Id) -> impl Iterator<Item = &Id> {
        self.peers.iter().filter(move |p| **p != me)
    }
}

impl ServerState {
    /// A ballot seen in any message: remember its round, and who leads it; step down if it is
    /// above this server's own.
    fn see(&mut self, me: Id, ballot: Ballot, o: &mut Out<Node>) {
        self.highest_round = self.highest_round.max(ballot.round);
        let mine = match &self.role {
            Role::Candidate { ballot, .. } | Role::Leader { ballot, .. } => Some(*ballot),
            Role::Follower => None,
        };
        if ballot.leader != me && mine.is_none_or(|mine| mine < ballot) {
            self.leader = Some(ballot.leader);
        }
        if mine.is_some_and(|mine| mine < ballot) {
            if let Role::Candidate { waiting, .. } =
                std::mem::replace(&mut self.role, Role::Follower)
            {
                for command in waiting {
                    o.send(
                        command.client,
                        Msg::NotLeader {
                            request: command.request,
                            leader: self.leader,
                        },
                    );
                }
            }
        }
    }

    fn learn(&mut self, slot: Slot, command: Command) {
        if slot >= self.applied {
            self.decided.insert(slot, command);
        }
    }

    /// Applies decided slots in order; the leader answers the clients of the commands it
    /// proposed.
    fn apply(&mut self, o: &mut Out<Node>) {
        while let Some(command) = self.decided.get(&self.applied).copied() {
            let answer = match command.op {
                Op::Put(key, value) => {
                    self.registers.insert(key, value);
                    Some(Msg::PutOk {
                        request: command.request,
                    })
                }
                Op::Get(key) => Some(Msg::GetOk {
                    request: command.request,
                    value: self.registers.get(&key).copied(),
                }),
                Op::Noop => None,
            };
            if let Role::Leader { proposals, .. } = &mut self.role {
                let proposed_here = proposals
                    .remove(&self.applied)
                    .is_some_and(|(proposed, _)| proposed == command);
                if let Some(answer) = answer.filter(|_| proposed_here) {
                    o.send(command.client, answer);
                }
            }
            self.applied += 1;
        }
    }
}
