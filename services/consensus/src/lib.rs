//! # consensus: the protocols of stage 8 as models a checker judges
//!
//! Prose can say that two-phase commit blocks and that three-phase commit is unsafe under a
//! partition; this crate makes a machine say it. Each protocol is written as a small set of
//! [stateright](https://docs.rs/stateright) actors exchanging messages, and stateright's model
//! checker runs *every* interleaving of their steps (every order of message deliveries, every
//! choice of vote, every moment for a crash or a timeout) up to the model's bounds, checking
//! properties in every state it reaches. A property that fails comes back as a counterexample: the
//! shortest run that breaks it, printed as numbered steps ([`trace`]).
//!
//! ```text
//! cargo run -p consensus -- check 2pc --trace blocked       # 2PC blocks: the run that shows it
//! cargo run -p consensus -- check 3pc --rms 2 --no-crash --partitions   # 3PC: commits and aborts
//! cargo run --release -p consensus -- check paxos-commit    # Paxos Commit: neither
//! cargo run -p consensus -- check paxos --bug acceptor-forgets-accepted
//! cargo run -p consensus -- check zab --bug new-leader-skips-synchronisation
//! ```
//!
//! ## What each model shows
//!
//! | model | holds | fails (the checker finds the run) |
//! |---|---|---|
//! | [Multi-Paxos](multi_paxos) | agreement per slot, a decided slot holds the chosen command, linearizability of the registers it implements (through a leader change and a crash-restart) | each seeded bug: two commands in a slot, or a stale read |
//! | [single-decree Paxos](paxos) | agreement, validity, linearizability of the register it implements | each seeded bug: two values chosen |
//! | [ZAB](zab) | one leader per epoch, commits survive leader changes (a crash, or followers giving up on a live leader), one delivery order, zxids unique and increasing | each seeded bug: a commit lost |
//! | [two-phase commit](commit::two_phase) | atomicity, validity | it *blocks*: the coordinator crashes and an RM that voted yes can never decide |
//! | [three-phase commit](commit::three_phase) | atomicity, validity, and no blocking, on a reliable network | under partitions, *atomicity*: one RM commits, another aborts |
//! | [Paxos Commit](commit::paxos_commit) | atomicity, validity, no blocking with one crash (leader or acceptor); atomicity even under partitions | only its seeded bug |
//!
//! Every model also has `sometimes` properties: states the checker must *reach* (a value chosen, a
//! second proposer's ballot accepted, a commit finished by a backup after a crash). A safety
//! property that holds because nothing interesting ever happens would be vacuous; these show that
//! the interesting runs are explored.
//!
//! And every model has **seeded bugs**, each a flag on its configuration (an acceptor that forgets
//! what it accepted, a coordinator that counts a missing vote as yes, ...). The tests check both
//! directions: the protocol as specified passes, and each bug is caught with a counterexample.
//!
//! ## How to read the code
//!
//! - [`scenario`]: what every model provides (build the model, name its actors and messages).
//! - [`check`]: run the checker, get a verdict per property, print the report.
//! - [`trace`]: a discovery as numbered steps ("RM1 → TM: vote yes").
//! - [`fail_stop`]: crashes as a modelled action, including a crash in the middle of a broadcast.
//! - [`paxos`]: proposers ([`paxos::Proposer`]) and acceptors ([`paxos::Acceptor`]) behind a
//!   write-once register, with stateright's linearizability tester inside the model.
//! - [`zab`]: ZooKeeper's atomic broadcast: servers LOOKING, FOLLOWING and LEADING through
//!   discovery, synchronisation and broadcast, with a crash and followers that give up.
//! - [`commit`]: the atomic-commit vocabulary and properties, then one file per protocol.
//! - [`multi_paxos`]: a replicated log behind read/write registers: one phase 1 per leadership,
//!   a leader change at any moment, a crash and restart from the acceptor's saved log.
//! - [`live`]: the same Multi-Paxos and ZAB servers as processes over loopback UDP, killed,
//!   frozen and partitioned, their clients' histories checked for linearizability.
//!
//! ## What a model is, and is not
//!
//! The checker proves properties *of these models, at these sizes*: two proposers and three
//! acceptors, two or three RMs, one crash, bounded ballots. Small models are how protocol bugs are
//! found in practice (most need two or three actors to show), but they are not proofs for every
//! size. A model also leaves out what it does not need: there is no disk, a crashed actor stays
//! down, a vote is a coin the checker flips both ways. Each module says what it leaves out and
//! why. The state counts the README records are measured, with the command that measures them.

pub mod check;
pub mod commit;
pub mod fail_stop;
pub mod live;
pub mod multi_paxos;
pub mod paxos;
pub mod scenario;
pub mod trace;
pub mod zab;

pub use check::{run, run_until, Report, Stop, Verdict};
pub use scenario::Scenario;
