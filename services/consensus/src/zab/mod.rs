//! ZAB, ZooKeeper's atomic broadcast: a leader orders every write, and a new leader first makes
//! sure it holds everything any earlier leader may have committed.
//!
//! ZooKeeper's servers are LOOKING (no leader), FOLLOWING or LEADING. A leader's epoch runs
//! through three phases (Junqueira, Reed and Serafini, "Zab: High-performance broadcast for
//! primary-backup systems", 2011; ZooKeeper's packet names in capitals):
//!
//! ```text
//!  follower                            prospective leader
//!  FOLLOWERINFO (accepted epoch) ───>  1 discovery: a quorum joined; new epoch = highest accepted + 1
//!                                <───  LEADERINFO (new epoch)
//!  (refuses an epoch not above its accepted one)
//!  ACKEPOCH (current epoch, log) ───>  the most up-to-date log of the quorum becomes the leader's
//!                                <───  NEWLEADER (epoch, log)      2 synchronisation
//!  takes the log, ACK            ───>  a quorum holds it: it is committed
//!                                <───  UPTODATE
//!                                <───  PROPOSAL zxid (epoch.counter)   3 broadcast
//!  logs it, ACK                  ───>  a quorum logged it
//!                                <───  COMMIT zxid
//! ```
//!
//! Why a commit survives a leader change: a transaction is committed once a quorum has logged it,
//! and a new leader starts only after a quorum has acknowledged its epoch. The two quorums share a
//! server, which logged the transaction before it acknowledged the new epoch (after that it takes
//! nothing from the old leader), so its log, sent in ACKEPOCH, holds the transaction; the leader
//! takes the most up-to-date log it was sent, and every follower takes the leader's. The epoch
//! numbers are what make "after that" hold: a follower refuses an epoch not above the last one it
//! acknowledged, and an old leader, cut off but alive, can never again gather a quorum for its
//! proposals.
//!
//! The model, with the default sizes: three servers S1 to S3; S1 and S2 may stand for leader; at
//! most two epochs; each leader proposes one transaction. Two faults, each a setting:
//! - **S1 crashes** ([`Zab::crash`]) at any moment and stays down; the others are told (a crash
//!   notice, standing in for the heartbeats that stop).
//! - **Followers suspect a live leader** ([`Zab::suspicions`]): a follower may give up on its
//!   leader at any moment and look for another, as after a partition or a long pause, while the
//!   old leader lives on and keeps trying. This is where split brain would live.
//!
//! Left out, with the reasons:
//! - **The election.** ZooKeeper's fast leader election picks the server with the highest
//!   (last zxid, id), which keeps synchronisation short; ZAB's safety does not rest on it. Here a
//!   LOOKING candidate simply stands, and a LOOKING server follows the first candidate it hears
//!   from: every outcome an election could have, and more, is explored.
//! - **Restarts and disks.** A crashed server stays down, so its log does not matter; the epochs
//!   and logs a real server keeps on disk are the first fields of [`ServerState`] ([`Disk`]).
//! - **Messages are FIFO per pair of servers** (ZooKeeper runs over TCP), never lost: a message
//!   still in flight when its receiver gave up on the sender is ignored on arrival, which is what
//!   a lost one would come to.
//!
//! Kept in: **late joiners.** A server whose FOLLOWERINFO reaches a leader after its epoch began
//! is taken in (ZooKeeper synchronises it too): NEWLEADER with the committed history, UPTODATE,
//! then the proposals not yet committed, in order. The joiner is sent no LEADERINFO and
//! acknowledges no epoch, so it counts toward no candidate's quorum: taking it in cannot make a
//! second leader of an epoch. It does raise its accepted epoch to the leader's, and so refuses
//! older leaders from then on. The model checks this path for first-time joiners only: a server
//! of the model never rejoins a leader it has followed (it has no PING to find it by), which a
//! live server does, and the one mistake found there so far was of that kind (see `take_in`).
//!
//! ## Live
//!
//! The same [`Server`] runs as three processes over UDP ([`crate::live`], `consensus live
//! --protocol zab`), with what a real run needs switched on by [`Server::timing`]: a leader's
//! PING every tick, which keeps its followers from giving up and lets a LOOKING server (one that
//! restarted, or gave up) find it and join; a leader that stops hearing from a quorum steps down;
//! a follower takes only the next proposal of its epoch, and the leader resends the ones it missed
//! (UDP loses datagrams); each server saves [`Disk`] before it acknowledges, and restarts from it.
//! Clients' reads and writes are transactions: the leader proposes each, and answers when it
//! commits. None of this runs in the model, except three rules that there change nothing, since
//! its messages arrive in order, once, and a leader has one proposal outstanding at a time: a
//! follower takes only the next proposal, a COMMIT delivers everything up to its zxid, and a
//! leader commits every proposal a quorum has logged, in order. That a restart from disk is safe
//! rests on the same argument as a follower giving up (it keeps its epochs and log, and loses
//! only what it had delivered), not on a check.
//!
//! What the live runs rely on and do not check: the leader's messages carry no join number, and
//! ACKEPOCH and UPTODATE no epoch, so a copy delayed past a later one (or duplicated) could be
//! taken for it: a follower could take an older NEWLEADER's shorter log, or count toward the
//! wrong epoch. Loopback UDP delivers in order and never duplicates, and ZooKeeper runs over
//! TCP; over a real network each would need the epoch (or a join number) echoed back.
//!
//! Properties:
//!
//! | property | kind | meaning |
//! |---|---|---|
//! | [`ONE_LEADER_PER_EPOCH`] | always | no epoch has two leaders |
//! | [`COMMITTED_SURVIVE`] | always | a leader of a later epoch holds every transaction committed before it |
//! | [`DELIVERED_IN_ONE_ORDER`] | always | of any two servers' delivered logs, one is a prefix of the other |
//! | [`ZXIDS_UNIQUE`] | always | no zxid names two transactions |
//! | [`ZXIDS_INCREASE`] | always | every log is in strictly increasing zxid order |
//! | [`TXN_COMMITTED`] | sometimes | a transaction is committed |
//! | [`LATER_EPOCH_COMMITTED`] | sometimes | the second epoch's leader commits too |
//! | [`COMMIT_CARRIED_OVER`] | sometimes | a new leader took a follower's log to keep a commit |
//! | [`TWO_LEADERS_ALIVE`] | sometimes | an old leader, cut off, lives beside the new one |
//!
//! Seeded bugs ([`Bug`]), each caught with a counterexample by the tests: a new leader that keeps
//! its own log instead of the most up-to-date one (it skips synchronisation), and a leader that
//! commits what only it has logged.

mod properties;
mod server;

pub use properties::{
    ZabHistory, COMMITTED_SURVIVE, COMMIT_CARRIED_OVER, DELIVERED_IN_ONE_ORDER,
    LATER_EPOCH_COMMITTED, ONE_LEADER_PER_EPOCH, TWO_LEADERS_ALIVE, TXN_COMMITTED, ZXIDS_INCREASE,
    ZXIDS_UNIQUE,
};
pub use server::{
    Disk, Epoch, FollowerPhase, LeaderPhase, Mode, Msg, Server, ServerState, Timer, Timing, Txn,
    Zxid,
};

use properties::{
    commit_carried_over, committed_survive, delivered_in_one_order, later_epoch_committed,
    one_leader_per_epoch, record_sent, two_leaders_alive, txn_committed, zxids_increase,
    zxids_unique,
};

use crate::fail_stop::{self, at_most_one_crash, role_state, FailStop};
use crate::scenario::{bug_suffix, ModelOf, MsgOf, Scenario, StateOf, TimerOf};
use stateright::actor::{ActorModel, Id, Network};
use stateright::Expectation;

/// Deliberate mistakes the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bug {
    /// A new leader keeps its own log instead of taking the most up-to-date one its quorum sent
    /// (it skips the synchronisation ZAB's phase 2 exists for): a transaction committed by the
    /// old leader with the other follower is lost.
    NewLeaderSkipsSynchronisation,
    /// A leader commits a proposal as soon as it has logged it itself, without a quorum: when its
    /// followers move on without the proposal, the commit is lost.
    LeaderCommitsWithoutQuorum,
}

/// A ZAB configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zab {
    /// Servers in the ensemble (three by default: the least that survives one failure).
    pub servers: usize,
    /// How many of them (the first ones) may stand for leader. Two by default: a second leader
    /// needs a second candidate, and each candidate multiplies the state space.
    pub candidates: usize,
    /// The highest epoch any leader may start: the number of leader changes explored.
    pub epochs: u8,
    /// Transactions each leader proposes.
    pub writes: u8,
    /// Whether S1 may crash (once, for good, announced to the others).
    pub crash: bool,
    /// Whether followers may give up on a live leader.
    pub suspicions: bool,
    /// A seeded mistake, or `None` for the protocol as specified.
    pub bug: Option<Bug>,
}

impl Default for Zab {
    fn default() -> Self {
        Zab {
            servers: 3,
            candidates: 2,
            epochs: 2,
            writes: 1,
            crash: true,
            suspicions: true,
            bug: None,
        }
    }
}

/// The server that may crash.
const CRASHABLE: usize = 0;

impl Scenario for Zab {
    type Actor = FailStop<Server>;
    type History = ZabHistory;

    fn title(&self) -> String {
        let faults = match (self.crash, self.suspicions) {
            (true, true) => "S1 may crash, followers may suspect a live leader",
            (true, false) => "S1 may crash",
            (false, true) => "followers may suspect a live leader",
            (false, false) => "no faults",
        };
        format!(
            "ZAB: {} servers ({} may lead), up to {} epochs, {} write{} per leader, {faults}{}",
            self.servers,
            self.candidates.min(self.servers),
            self.epochs,
            self.writes,
            if self.writes == 1 { "" } else { "s" },
            bug_suffix(self.bug)
        )
    }

    fn model(&self) -> ModelOf<Self> {
        let ids: Vec<Id> = (0..self.servers).map(Id::from).collect();
        let servers = ids.iter().map(|me| {
            let peers: Vec<Id> = ids.iter().copied().filter(|peer| peer != me).collect();
            let server = Server {
                peers: peers.clone(),
                candidate: usize::from(*me) < self.candidates,
                max_epoch: self.epochs.into(),
                writes: self.writes.into(),
                suspicious: self.suspicions,
                timing: None,
                bug: self.bug,
            };
            if self.crash && usize::from(*me) == CRASHABLE {
                let notices = peers
                    .into_iter()
                    .map(|peer| (peer, Msg::ServerDown))
                    .collect();
                FailStop::crashable(server, notices)
            } else {
                FailStop::reliable(server)
            }
        });
        ActorModel::new(self.clone(), ZabHistory::default())
            .actors(servers)
            .init_network(Network::new_ordered([]))
            .record_msg_out(record_sent)
            .within_boundary(at_most_one_crash)
            .property(
                Expectation::Always,
                ONE_LEADER_PER_EPOCH,
                one_leader_per_epoch,
            )
            .property(Expectation::Always, COMMITTED_SURVIVE, committed_survive)
            .property(
                Expectation::Always,
                DELIVERED_IN_ONE_ORDER,
                delivered_in_one_order,
            )
            .property(Expectation::Always, ZXIDS_UNIQUE, zxids_unique)
            .property(Expectation::Always, ZXIDS_INCREASE, zxids_increase)
            .property(Expectation::Sometimes, TXN_COMMITTED, txn_committed)
            .property(
                Expectation::Sometimes,
                LATER_EPOCH_COMMITTED,
                later_epoch_committed,
            )
            .property(
                Expectation::Sometimes,
                COMMIT_CARRIED_OVER,
                commit_carried_over,
            )
            .property(Expectation::Sometimes, TWO_LEADERS_ALIVE, two_leaders_alive)
    }

    fn actor_name(&self, id: Id) -> String {
        format!("S{}", usize::from(id) + 1)
    }

    fn describe_message(&self, msg: &MsgOf<Self>) -> String {
        match msg {
            Msg::Candidacy => "\"follow me\" (stands for leader)".to_owned(),
            Msg::FollowerInfo { accepted } => format!("FOLLOWERINFO, accepted epoch {accepted}"),
            Msg::LeaderInfo { epoch } => format!("LEADERINFO, new epoch {epoch}"),
            Msg::AckEpoch { current, history } => format!(
                "ACKEPOCH, current epoch {current}, log {}",
                self.describe_log(history)
            ),
            Msg::NewLeader { epoch, history } => {
                format!(
                    "NEWLEADER epoch {epoch}, log {}",
                    self.describe_log(history)
                )
            }
            Msg::AckNewLeader { epoch } => format!("ACK of NEWLEADER {epoch}"),
            Msg::UpToDate => "UPTODATE (the log is committed)".to_owned(),
            Msg::Proposal(txn) => format!("PROPOSAL {}", self.describe_txn(txn)),
            Msg::Ack(zxid) => format!("ACK {}.{}", zxid.epoch, zxid.counter),
            Msg::Commit(txn) => format!("COMMIT {}", self.describe_txn(txn)),
            Msg::ServerDown => "\"S1 is down\" (failure detector)".to_owned(),
            Msg::Ping { epoch, .. } => format!("PING, epoch {epoch}"),
            Msg::Pong { .. } => "PING answered".to_owned(),
            Msg::Put { key, value, .. } => format!("write {value} to register {key}"),
            Msg::Get { key, .. } => format!("read register {key}"),
            Msg::PutOk { .. } => "written".to_owned(),
            Msg::GetOk { value, .. } => format!("read {value:?}"),
            Msg::NotLeader { .. } => "not the leader".to_owned(),
        }
    }

    fn describe_timer(&self, timer: &TimerOf<Self>) -> Option<String> {
        fail_stop::describe_timer(timer, |timer| {
            match timer {
                Timer::Stand => "finds no leader and stands",
                Timer::LeaderSilent => "gives up on its leader (silent too long) and looks",
                Timer::Tick => "ticks (heartbeat)",
            }
            .to_owned()
        })
    }

    fn describe_choice(&self, _choice: &()) -> String {
        "chooses".to_owned()
    }

    fn describe_state(&self, state: &StateOf<Self>) -> String {
        let servers: Vec<String> = state
            .actor_states
            .iter()
            .enumerate()
            .map(|(index, life)| {
                let name = self.actor_name(Id::from(index));
                match role_state(life) {
                    None => format!("{name} down"),
                    Some(server) => format!("{name} {}", self.describe_server(server)),
                }
            })
            .collect();
        let committed: Vec<String> = state
            .history
            .committed
            .iter()
            .map(|txn| self.describe_txn(txn))
            .collect();
        format!(
            "{}; committed: {}",
            servers.join("; "),
            if committed.is_empty() {
                "nothing".to_owned()
            } else {
                committed.join(", ")
            }
        )
    }
}

impl Zab {
    /// `1.1/S1`: zxid epoch.counter, and the leader that proposed it.
    fn describe_txn(&self, txn: &Txn) -> String {
        format!(
            "{}.{}/{}",
            txn.zxid.epoch,
            txn.zxid.counter,
            self.actor_name(txn.by)
        )
    }

    fn describe_log(&self, log: &[Txn]) -> String {
        let txns: Vec<String> = log.iter().map(|txn| self.describe_txn(txn)).collect();
        format!("[{}]", txns.join(", "))
    }

    fn describe_server(&self, server: &ServerState) -> String {
        let mode = match &server.mode {
            Mode::Looking => "LOOKING".to_owned(),
            Mode::Following { leader, phase } => {
                let phase = match phase {
                    FollowerPhase::Discovery => "discovery",
                    FollowerPhase::Synchronisation => "synchronisation",
                    FollowerPhase::Synced => "synced",
                    FollowerPhase::Broadcast => "broadcast",
                };
                format!("FOLLOWING {} ({phase})", self.actor_name(*leader))
            }
            Mode::Leading(phase) => match phase.established_epoch() {
                Some(epoch) => format!("LEADING epoch {epoch}"),
                None => "LEADING (not yet established)".to_owned(),
            },
        };
        format!(
            "{mode}, log {}, delivered {}",
            self.describe_log(&server.history),
            server.delivered
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{run, run_until, Stop, Verdict};

    const SAFETY: [&str; 5] = [
        ONE_LEADER_PER_EPOCH,
        COMMITTED_SURVIVE,
        DELIVERED_IN_ONE_ORDER,
        ZXIDS_UNIQUE,
        ZXIDS_INCREASE,
    ];

    #[test]
    fn zab_keeps_every_commit_across_leader_changes_and_no_check_is_vacuous() {
        let report = run(Zab::default());
        for property in SAFETY {
            assert_eq!(report.verdict(property), Some(Verdict::Holds), "{property}");
        }
        for property in [
            TXN_COMMITTED,
            LATER_EPOCH_COMMITTED,
            COMMIT_CARRIED_OVER,
            TWO_LEADERS_ALIVE,
        ] {
            assert_eq!(
                report.verdict(property),
                Some(Verdict::Reached),
                "{property}"
            );
        }
    }

    #[test]
    fn the_example_of_a_commit_is_the_shortest_run_with_nothing_else_in_it() {
        let report = run(Zab::default());
        let trace = report.trace(TXN_COMMITTED).expect("an example");
        // Stand, FOLLOWERINFO, LEADERINFO, ACKEPOCH, NEWLEADER, its ACK, UPTODATE, PROPOSAL,
        // its ACK: the COMMIT goes out at step 10. No crash, no suspicion: they are not needed.
        let steps = trace
            .lines()
            .filter(|line| {
                line.starts_with(" ")
                    && line
                        .trim_start()
                        .split_once(". ")
                        .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
            })
            .count();
        assert_eq!(steps, 10, "{trace}");
        assert!(
            !trace.contains("crashes") && !trace.contains("gives up"),
            "{trace}"
        );
    }

    /// Live only (a model server never rejoins a leader it followed): a follower that gives up
    /// on its leader and rejoins it drops the proposals past the committed history, so the
    /// acknowledgements it gave them before stop counting; it is sent them again.
    #[test]
    fn a_rejoining_followers_old_acknowledgements_stop_counting() {
        use stateright::actor::{Actor, Command, Out};
        use std::collections::{BTreeMap, BTreeSet};
        let (leader, joiner, other) = (Id::from(0), Id::from(1), Id::from(2));
        let server = Server {
            peers: vec![joiner, other],
            candidate: true,
            max_epoch: 9,
            writes: 0,
            suspicious: true,
            timing: None,
            bug: None,
        };
        let pending = Txn {
            zxid: Zxid {
                epoch: 1,
                counter: 1,
            },
            by: leader,
            command: None,
        };
        let mut state = std::borrow::Cow::Owned(ServerState {
            accepted_epoch: 1,
            current_epoch: 1,
            history: vec![pending],
            delivered: 0,
            mode: Mode::Leading(LeaderPhase::Broadcast {
                epoch: 1,
                followers: BTreeSet::from([joiner, other]),
                proposed: 1,
                acks: BTreeMap::from([(pending.zxid, BTreeSet::from([leader, joiner]))]),
                adopted_from: leader,
            }),
            heard: BTreeSet::new(),
            quiet_ticks: 0,
        });
        let mut out = Out::new();
        server.on_msg(
            leader,
            &mut state,
            joiner,
            Msg::FollowerInfo { accepted: 1 },
            &mut out,
        );
        let Mode::Leading(LeaderPhase::Broadcast { acks, .. }) = &state.mode else {
            panic!("no longer leading: {:?}", state.mode);
        };
        assert_eq!(acks[&pending.zxid], BTreeSet::from([leader]));
        let sent: Vec<Msg> = out
            .into_iter()
            .filter_map(|command| match command {
                Command::Send(to, msg) if to == joiner => Some(msg),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                Msg::NewLeader {
                    epoch: 1,
                    history: vec![]
                },
                Msg::UpToDate,
                Msg::Proposal(pending)
            ]
        );
    }

    fn caught(bug: Bug) -> String {
        let report = run_until(
            Zab {
                bug: Some(bug),
                ..Zab::default()
            },
            Stop::AtFirstViolation,
        );
        let violated: Vec<&str> = report.violations().collect();
        assert!(!violated.is_empty(), "{bug:?} not caught");
        report.trace(violated[0]).expect("a counterexample")
    }

    #[test]
    fn a_new_leader_that_skips_synchronisation_is_caught() {
        let trace = caught(Bug::NewLeaderSkipsSynchronisation);
        assert!(trace.contains("COMMIT 1.1/"), "{trace}");
        assert!(trace.contains("NEWLEADER epoch 2, log []"), "{trace}");
    }

    #[test]
    fn a_leader_that_commits_without_a_quorum_is_caught() {
        let trace = caught(Bug::LeaderCommitsWithoutQuorum);
        assert!(trace.contains("COMMIT 1.1/"), "{trace}");
    }
}
