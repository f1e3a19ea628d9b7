//! Multi-Paxos: a replicated log of commands, and the read/write registers it implements.
//!
//! Single-decree Paxos ([`crate::paxos`]) chooses one value. A service needs a *sequence* of
//! them: slot 0, slot 1, ... of a log, each chosen by its own instance of Paxos, and every server
//! applying the log in order to its copy of the state. Run naively, that is two round trips per
//! command. Multi-Paxos runs phase 1 (prepare, promise) once per *leadership*, for every slot at
//! once, and then each command costs phase 2 alone (accept, accepted) until another server takes
//! over with a higher ballot. The [server](Server) says how; this module wires the model.
//!
//! The actors (with the default sizes):
//!
//! | actors | role |
//! |---|---|
//! | S1, S2, S3 | [servers](Server): acceptor, leader candidate, learner; each applies the log to its registers |
//! | C1 (C2) | [clients](Client): C1 writes 1 and then reads, through S1 first; with [`MultiPaxos::clients`] = 2, C2 writes 2 |
//!
//! S1 leads ballot 1 from the start (every acceptor has promised it: the state after an election,
//! which S2's campaign then exercises for real). S2 may campaign once, at any moment the checker
//! chooses, which covers a follower suspecting a live leader as well as a dead one. With a crash
//! ([`MultiPaxos::crash`]) S3 may crash once, losing everything but its acceptor's saved log, and
//! restart from it.
//!
//! Properties:
//!
//! | property | kind | meaning |
//! |---|---|---|
//! | [`AGREEMENT`] | always | no slot has two different commands chosen |
//! | [`LEARNED_IS_CHOSEN`] | always | what a server decides in a slot is what was chosen there |
//! | [`LINEARIZABLE`] | always | the clients' history is linearizable against a read/write register |
//! | [`ALL_ANSWERED`] | sometimes | every client operation is answered |
//! | [`CARRIED_OVER`] | sometimes | a new leader proposes a client command it learned from a promise |
//! | [`TWO_LEADERS_DECIDE`] | sometimes | client commands are chosen under two leaders |
//! | [`READ_SEES_A_WRITE`] | sometimes | a read returns a written value |
//!
//! Seeded bugs ([`Bug`]): a new leader that ignores what the promises carried (two commands
//! chosen in one slot), an acceptor that does not save its log and so forgets its promises and
//! votes across a crash (the same), and a leader that answers reads from its own copy without
//! going through the log (a deposed leader that does not know it yet returns a stale value: not
//! linearizable). The tests check that the checker finds each.
//!
//! The same [`Server`] runs as real processes over UDP in [`crate::live`], where the leader's
//! heartbeats and random election timeouts replace the checker's choices.

mod client;
mod properties;
mod server;

pub use client::{Client, ClientState};
pub use properties::{
    MultiPaxosHistory, AGREEMENT, ALL_ANSWERED, CARRIED_OVER, LEARNED_IS_CHOSEN, LINEARIZABLE,
    READ_SEES_A_WRITE, TWO_LEADERS_DECIDE,
};
pub use server::{AcceptorLog, Role, Server, ServerState, Timing};

use properties::{
    agreement, all_answered, carried_over, learned_is_chosen, linearizable, read_sees_a_write,
    record_delivered, record_sent, server_states, two_leaders_decide,
};

use crate::scenario::{bug_suffix, ModelOf, MsgOf, Scenario, StateOf, TimerOf};
use serde::{Deserialize, Serialize};
use stateright::actor::{Actor, ActorModel, Id, Network, Out};
use stateright::Expectation;
use std::borrow::Cow;

/// A slot of the log.
pub type Slot = u32;
/// A register's number.
pub type Key = u8;
/// A register's value.
pub type Value = u32;

/// A ballot: a round number and the server that leads it. Ordered by round, then by server, so
/// two servers never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ballot {
    /// The round.
    pub round: u32,
    /// The server whose ballot it is.
    pub leader: Id,
}

/// What a command does to the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    /// Write a value.
    Put(Key, Value),
    /// Read the value (through the log, so ordered after every earlier write).
    Get(Key),
    /// Nothing: fills a slot a new leader found empty below one that was not.
    Noop,
}

/// A log entry: an operation and the client request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Command {
    /// The client to answer.
    pub client: Id,
    /// The client's request number.
    pub request: u64,
    /// What it does.
    pub op: Op,
}

impl Command {
    /// A no-op, proposed by `leader`.
    pub fn noop(leader: Id) -> Self {
        Command {
            client: leader,
            request: 0,
            op: Op::Noop,
        }
    }
}

/// The messages: the register protocol between clients and servers, then Multi-Paxos's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Msg {
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
    /// Phase 1a: a candidate asks every acceptor for a promise covering slots from `from` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The first slot it covers.
        from: Slot,
    },
    /// Phase 1b: promised, with everything accepted from `from` on.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// (slot, ballot, command) for each slot with an accepted command.
        accepted: Vec<(Slot, Ballot, Command)>,
    },
    /// Phase 2a: accept this command in this slot.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
        /// The command.
        command: Command,
    },
    /// Phase 2b: accepted (the command is named so the model can count votes).
    Accepted {
        /// The ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
        /// The command accepted.
        command: Command,
    },
    /// A promise or an acceptance refused: a higher ballot was promised.
    Rejected {
        /// The ballot refused.
        ballot: Ballot,
        /// The higher ballot promised.
        promised: Ballot,
    },
    /// Leader to servers: this slot's command is chosen.
    Decided {
        /// The slot.
        slot: Slot,
        /// The command.
        command: Command,
    },
    /// Leader to followers (live runs): alive, and applied up to here.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's first unapplied slot.
        applied: Slot,
    },
    /// Follower to leader (live runs): send me the decided slots from here.
    CatchUp {
        /// The follower's first unapplied slot.
        from: Slot,
    },
    /// Leader to follower: decided slots it asked for.
    Learn {
        /// (slot, command) pairs.
        entries: Vec<(Slot, Command)>,
    },
}

/// The servers' timers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// No word from a leader: campaign.
    Election,
    /// Leading: tell the followers (live runs).
    Heartbeat,
    /// The model's crash and restart (see [`Server::may_restart`]). A timer of the server itself
    /// rather than stateright's crash action, which would crash clients too. Messages sent to it
    /// "while it is down" are delivered later instead of lost; the network already lets any
    /// message wait, and a lost one would only add runs where less happens.
    Restart,
}

/// Deliberate mistakes the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bug {
    /// A new leader ignores the commands the promises carried and fills the slots with no-ops
    /// or new commands: two commands chosen in one slot.
    NewLeaderIgnoresPromises,
    /// An acceptor keeps its promises and votes only in memory: after a crash it promises and
    /// accepts as if it had never voted, and a second command is chosen in a slot.
    AcceptorForgetsOnRestart,
    /// A leader answers reads from its own registers without going through the log. A leader
    /// that has been replaced without knowing it answers with a value already overwritten: the
    /// history is not linearizable (what leases exist to prevent).
    LeaderReadsLocally,
}

/// An actor's role.
#[derive(Clone, Debug)]
pub enum Node {
    /// A server.
    Server(Server),
    /// A client.
    Client(Client),
}

/// An actor's state. (A server's state is far larger than a client's; boxing it would add an
/// allocation to every one of the checker's state copies to save memory only on clients.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// A server's state.
    Server(ServerState),
    /// A client's state.
    Client(ClientState),
}

impl Actor for Node {
    type Msg = Msg;
    type State = NodeState;
    type Timer = Timer;
    type Random = ();
    type Storage = AcceptorLog;

    fn name(&self) -> String {
        match self {
            Node::Server(_) => "server".to_owned(),
            Node::Client(_) => "client".to_owned(),
        }
    }

    fn on_start(&self, id: Id, storage: &Option<AcceptorLog>, o: &mut Out<Self>) -> NodeState {
        match self {
            Node::Server(server) => NodeState::Server(server.on_start(id, storage.as_ref(), o)),
            Node::Client(client) => NodeState::Client(client.on_start(o)),
        }
    }

    fn on_msg(&self, id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let next = match (self, &**state) {
            (Node::Server(server), NodeState::Server(s)) => {
                server.on_msg(id, s, src, msg, o).map(NodeState::Server)
            }
            (Node::Client(client), NodeState::Client(s)) => {
                client.on_msg(*s, msg, o).map(NodeState::Client)
            }
            _ => None,
        };
        if let Some(next) = next {
            *state.to_mut() = next;
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<NodeState>, timer: &Timer, o: &mut Out<Self>) {
        if let (Node::Server(server), NodeState::Server(s)) = (self, &**state) {
            if let Some(next) = server.on_timeout(id, s, timer, o) {
                *state.to_mut() = NodeState::Server(next);
            }
        }
    }
}

/// A Multi-Paxos configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiPaxos {
    /// Servers (three by default: the least that survives one failure).
    pub servers: usize,
    /// How many servers after S1 (which leads from the start) may campaign, once each (one by
    /// default, S2: one leader change, at any moment).
    pub candidates: usize,
    /// Whether the last server may crash once and restart from its saved acceptor log.
    pub crash: bool,
    /// Clients: one (C1 writes, then reads) or two (C2 writes too).
    pub clients: usize,
    /// Whether messages between two actors arrive in the order sent (as loopback UDP and TCP
    /// deliver them), rather than any message overtaking any other. Messages from different
    /// senders still interleave in every order, which is where Paxos's races are (an old
    /// leader's accept against a new leader's prepare); per-pair order cuts the states about
    /// fivefold (57,770 against 284,769 with the defaults), which keeps the default check within
    /// seconds in CI's debug build. `--unordered` is the stronger check, and holds too.
    pub ordered: bool,
    /// A seeded mistake, or `None` for the protocol as specified.
    pub bug: Option<Bug>,
}

impl Default for MultiPaxos {
    fn default() -> Self {
        MultiPaxos {
            servers: 3,
            candidates: 1,
            crash: true,
            clients: 1,
            ordered: true,
            bug: None,
        }
    }
}

impl MultiPaxos {
    /// The clients' operations, on register 0: C1 writes 1 and then reads; C2 (with two
    /// clients) writes 2. C1's two operations are the fewest that show every seeded bug (its read
    /// must see its write); C2's write multiplies the states by about ninety (20,876 to
    /// 1,917,953 without the crash).
    fn client_ops(&self) -> Vec<Vec<Op>> {
        [vec![Op::Put(0, 1), Op::Get(0)], vec![Op::Put(0, 2)]]
            .into_iter()
            .take(self.clients)
            .collect()
    }
}

impl Scenario for MultiPaxos {
    type Actor = Node;
    type History = MultiPaxosHistory;

    fn title(&self) -> String {
        format!(
            "Multi-Paxos: {} servers (S1 leads, {} more may campaign once), {} client{} on one register, {} delivery{}{}",
            self.servers,
            self.candidates,
            self.clients,
            if self.clients == 1 { "" } else { "s" },
            if self.ordered { "per-pair ordered" } else { "unordered" },
            if self.crash {
                format!(", S{} may crash and restart once", self.servers)
            } else {
                String::new()
            },
            bug_suffix(self.bug)
        )
    }

    fn model(&self) -> ModelOf<Self> {
        let servers: Vec<Id> = (0..self.servers).map(Id::from).collect();
        let clients = self.client_ops().into_iter().map(|ops| {
            Node::Client(Client {
                ops,
                first: servers[0],
                servers: servers.clone(),
            })
        });
        ActorModel::new(self.clone(), MultiPaxosHistory::new())
            .actors((0..self.servers).map(|index| {
                Node::Server(Server {
                    peers: servers.clone(),
                    campaigns: Some(u32::from(index >= 1 && index <= self.candidates)),
                    timing: None,
                    initial_leader: Some(Ballot {
                        round: 1,
                        leader: servers[0],
                    }),
                    may_restart: self.crash && index == self.servers - 1,
                    bug: self.bug,
                })
            }))
            .actors(clients)
            .init_network(if self.ordered {
                Network::new_ordered([])
            } else {
                Network::new_unordered_nonduplicating([])
            })
            .record_msg_out(record_sent)
            .record_msg_in(record_delivered)
            .property(Expectation::Always, AGREEMENT, agreement)
            .property(Expectation::Always, LEARNED_IS_CHOSEN, learned_is_chosen)
            .property(Expectation::Always, LINEARIZABLE, linearizable)
            .property(Expectation::Sometimes, ALL_ANSWERED, all_answered)
            .property(Expectation::Sometimes, CARRIED_OVER, carried_over)
            .property(
                Expectation::Sometimes,
                TWO_LEADERS_DECIDE,
                two_leaders_decide,
            )
            .property(Expectation::Sometimes, READ_SEES_A_WRITE, read_sees_a_write)
    }

    fn actor_name(&self, id: Id) -> String {
        let index = usize::from(id);
        if index < self.servers {
            format!("S{}", index + 1)
        } else {
            format!("C{}", index - self.servers + 1)
        }
    }

    fn describe_message(&self, msg: &MsgOf<Self>) -> String {
        let ballot = |b: &Ballot| format!("b{}/{}", b.round, self.actor_name(b.leader));
        let command = |c: &Command| match c.op {
            Op::Put(_, value) => format!("{} writes {value}", self.actor_name(c.client)),
            Op::Get(_) => format!("{} reads", self.actor_name(c.client)),
            Op::Noop => "no-op".to_owned(),
        };
        match msg {
            Msg::Put { value, .. } => format!("write {value}"),
            Msg::Get { .. } => "read".to_owned(),
            Msg::PutOk { .. } => "written".to_owned(),
            Msg::GetOk { value, .. } => format!(
                "read → {}",
                value.map_or("nothing".to_owned(), |v| v.to_string())
            ),
            Msg::NotLeader { leader, .. } => format!(
                "not leader (try {})",
                leader.map_or("another".to_owned(), |l| self.actor_name(l))
            ),
            Msg::Prepare { ballot: b, from } => format!("prepare {} from slot {from}", ballot(b)),
            Msg::Promise {
                ballot: b,
                accepted,
            } => {
                let carried: Vec<String> = accepted
                    .iter()
                    .map(|(slot, b, c)| format!("slot {slot}: {} in {}", command(c), ballot(b)))
                    .collect();
                if carried.is_empty() {
                    format!("promise {}, nothing accepted", ballot(b))
                } else {
                    format!("promise {}, had accepted {}", ballot(b), carried.join(", "))
                }
            }
            Msg::Accept {
                ballot: b,
                slot,
                command: c,
            } => format!("accept slot {slot} = {} in {}", command(c), ballot(b)),
            Msg::Accepted {
                ballot: b,
                slot,
                command: c,
            } => format!("accepted slot {slot} = {} in {}", command(c), ballot(b)),
            Msg::Rejected {
                ballot: b,
                promised,
            } => {
                format!("refused {}: promised {}", ballot(b), ballot(promised))
            }
            Msg::Decided { slot, command: c } => format!("decided slot {slot} = {}", command(c)),
            Msg::Heartbeat { ballot: b, .. } => format!("heartbeat {}", ballot(b)),
            Msg::CatchUp { from } => format!("catch me up from slot {from}"),
            Msg::Learn { entries } => format!("{} decided slots", entries.len()),
        }
    }

    fn describe_timer(&self, timer: &TimerOf<Self>) -> Option<String> {
        match timer {
            Timer::Election => Some("times out and campaigns".to_owned()),
            Timer::Heartbeat => None,
            Timer::Restart => Some("crashes and restarts from its saved acceptor log".to_owned()),
        }
    }

    fn describe_choice(&self, _choice: &()) -> String {
        "chooses".to_owned()
    }

    fn describe_state(&self, state: &StateOf<Self>) -> String {
        let chosen: Vec<String> = state
            .history
            .chosen(self.servers)
            .iter()
            .map(|(slot, commands)| {
                let names: Vec<String> = commands
                    .iter()
                    .map(|(c, _)| {
                        self.describe_message(&Msg::Decided {
                            slot: *slot,
                            command: *c,
                        })
                    })
                    .collect();
                names.join(" and ")
            })
            .collect();
        let servers: Vec<String> = server_states(state)
            .enumerate()
            .map(|(index, s)| {
                format!(
                    "S{} {} applied {} slot{}",
                    index + 1,
                    match s.role {
                        Role::Leader { .. } => "(leading)",
                        Role::Candidate { .. } => "(campaigning)",
                        Role::Follower => "(following)",
                    },
                    s.applied,
                    if s.applied == 1 { "" } else { "s" }
                )
            })
            .collect();
        format!(
            "chosen: {}; {}; client history {}",
            if chosen.is_empty() {
                "nothing".to_owned()
            } else {
                chosen.join("; ")
            },
            servers.join(", "),
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

    fn assert_holds(scenario: MultiPaxos) {
        let report = run(scenario);
        for property in [AGREEMENT, LEARNED_IS_CHOSEN, LINEARIZABLE] {
            assert_eq!(report.verdict(property), Some(Verdict::Holds), "{property}");
        }
        for property in [
            ALL_ANSWERED,
            CARRIED_OVER,
            TWO_LEADERS_DECIDE,
            READ_SEES_A_WRITE,
        ] {
            assert_eq!(
                report.verdict(property),
                Some(Verdict::Reached),
                "{property}"
            );
        }
    }

    #[test]
    fn multi_paxos_agrees_and_is_linearizable_through_a_crash_and_no_check_is_vacuous() {
        assert_holds(MultiPaxos::default());
    }

    #[test]
    #[ignore = "285k states: seconds in the release build (cargo test --release -- --ignored)"]
    fn multi_paxos_holds_when_any_message_may_overtake_any_other() {
        assert_holds(MultiPaxos {
            ordered: false,
            ..MultiPaxos::default()
        });
    }

    fn assert_caught(bug: Bug, property: &str) {
        let report = run_until(
            MultiPaxos {
                bug: Some(bug),
                ..MultiPaxos::default()
            },
            Stop::AtFirstViolation,
        );
        assert_eq!(report.verdict(property), Some(Verdict::Violated), "{bug:?}");
        assert!(
            report.trace(property).is_some(),
            "{bug:?}: a counterexample"
        );
    }

    #[test]
    fn a_new_leader_that_ignores_the_promises_is_caught() {
        assert_caught(Bug::NewLeaderIgnoresPromises, AGREEMENT);
    }

    #[test]
    fn an_acceptor_that_forgets_its_votes_across_a_crash_is_caught() {
        assert_caught(Bug::AcceptorForgetsOnRestart, AGREEMENT);
    }

    #[test]
    fn a_leader_that_reads_locally_is_caught_serving_a_stale_value() {
        assert_caught(Bug::LeaderReadsLocally, LINEARIZABLE);
    }
}
