//! `consensus`: model-check one protocol and print each property's verdict, with the runs that
//! show them.
//!
//! A shim over the library: the command line becomes a scenario, [`consensus::run`] explores it,
//! and the report and traces are printed. `consensus check --help` lists the models, and each
//! model's `--help` its sizes, faults and seeded bugs.

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use consensus::commit::{paxos_commit, three_phase, two_phase};
use consensus::{multi_paxos, paxos, run_until, zab, Scenario, Stop};

#[derive(Parser)]
#[command(
    name = "consensus",
    version,
    about = "Model-check Paxos, ZAB, two-phase, three-phase and Paxos Commit with stateright",
    long_about = "Model-check Paxos, ZAB, two-phase commit, three-phase commit and Paxos Commit.\n\n\
        Each model is a set of actors exchanging messages; the checker explores every \
        interleaving of their steps (deliveries, votes, crashes, timeouts) and reports, for \
        each property, whether it holds (always) or is reached (sometimes). Counterexamples are \
        printed as numbered steps.\n\n\
        Examples:\n  \
        consensus check 2pc --trace blocked                  2PC blocks: the run\n  \
        consensus check 3pc --rms 2 --no-crash --partitions  3PC commits one RM, aborts another\n  \
        consensus check paxos-commit --crash acceptor        neither blocks nor breaks\n  \
        consensus check paxos --bug acceptor-forgets-accepted  two values chosen: the run\n  \
        consensus check zab --bug new-leader-skips-synchronisation  a commit lost: the run\n  \
        consensus check multi-paxos --bug leader-reads-locally  a stale read: the run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explore every reachable state of a model and report each property's verdict.
    Check {
        #[command(subcommand)]
        model: Model,
    },
    /// Run Multi-Paxos (or ZAB) as three server processes over loopback UDP with clients, kill,
    /// freeze and partition the leader, and check the clients' history for linearizability.
    Live {
        /// The protocol the servers run.
        #[arg(long, value_enum, default_value = "multi-paxos")]
        protocol: consensus::live::Protocol,
        /// How long the clients run.
        #[arg(long, default_value = "24s", value_parser = loadtest::parse_duration)]
        duration: std::time::Duration,
        /// When the leader is killed (started again from its saved log after the outage).
        #[arg(long, default_value = "4s", value_parser = loadtest::parse_duration)]
        kill_at: std::time::Duration,
        /// When the leader is frozen (SIGSTOP; it wakes up believing it still leads).
        #[arg(long, default_value = "10s", value_parser = loadtest::parse_duration)]
        freeze_at: std::time::Duration,
        /// When the leader is cut off from the other servers (clients still reach it).
        #[arg(long, default_value = "16s", value_parser = loadtest::parse_duration)]
        partition_at: std::time::Duration,
        /// How long each fault lasts.
        #[arg(long, default_value = "3s", value_parser = loadtest::parse_duration)]
        outage: std::time::Duration,
        /// Only these faults (comma-separated); all three by default.
        #[arg(long, value_enum, value_delimiter = ',')]
        faults: Vec<consensus::live::FaultKind>,
        /// Seed a mistake in every server: one of the protocol's bugs (`check multi-paxos
        /// --help`, `check zab --help` list them).
        #[arg(long)]
        bug: Option<String>,
        /// The servers' addresses: NET.1 to NET.3.
        #[arg(long, default_value = "127.0.77")]
        net: String,
        /// The servers' UDP port.
        #[arg(long, default_value_t = 7000)]
        port: u16,
        /// Where the servers keep their logs and saved states.
        #[arg(long, default_value = "target/consensus-live")]
        dir: std::path::PathBuf,
        /// Write the result JSON here.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// One server over UDP (what `live` starts three of).
    Serve {
        /// The protocol it runs.
        #[arg(long, value_enum, default_value = "multi-paxos")]
        protocol: consensus::live::Protocol,
        /// Its address.
        #[arg(long)]
        me: std::net::SocketAddrV4,
        /// Every server's address, its own included, comma-separated.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<std::net::SocketAddrV4>,
        /// Where it keeps its durable state.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Seed a mistake: one of the protocol's bugs.
        #[arg(long)]
        bug: Option<String>,
    },
}

// The size caps keep a typo from starting a search that does not end in any reasonable time:
// every actor multiplies the state space. Larger sizes are a one-line change here.
#[derive(Subcommand)]
enum Model {
    /// Single-decree Paxos behind a write-once register: agreement, validity, linearizability.
    Paxos {
        /// Proposers, each with one client that writes through it.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
        proposers: u8,
        /// Acceptors; a majority of them chooses a value.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
        acceptors: u8,
        /// The most ballots each proposer starts (2: a stalled ballot is retried once).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3))]
        rounds: u32,
        /// How many clients read (through another proposer) after their write is answered.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=3))]
        readers: u8,
        /// Seed a mistake the checker must catch.
        #[arg(long, value_enum)]
        bug: Option<paxos::Bug>,
        #[command(flatten)]
        output: Output,
    },
    /// Multi-Paxos: a replicated log behind read/write registers, through a leader change and a
    /// crash.
    MultiPaxos {
        /// Servers; each is acceptor, leader candidate and learner.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
        servers: u8,
        /// How many servers after S1 (which leads from the start) may campaign, once each.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=4))]
        candidates: u8,
        /// The last server never crashes (by default it may crash once and restart from its
        /// saved acceptor log).
        #[arg(long)]
        no_crash: bool,
        /// Clients: 1 (C1 writes, then reads) or 2 (C2 writes too; about 90 times the states).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        clients: u8,
        /// Any message may overtake any other, also between the same two actors (about five times
        /// the states).
        #[arg(long)]
        unordered: bool,
        /// Seed a mistake the checker must catch.
        #[arg(long, value_enum)]
        bug: Option<multi_paxos::Bug>,
        #[command(flatten)]
        output: Output,
    },
    /// ZAB, ZooKeeper's atomic broadcast: one leader per epoch, commits survive leader changes.
    Zab {
        /// Servers in the ensemble.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
        servers: u8,
        /// How many servers (the first ones) may stand for leader.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
        candidates: u8,
        /// The highest epoch a leader may start (2: one leader change). A leader never stands
        /// again in the model, so a third epoch needs a third candidate.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
        epochs: u8,
        /// Transactions each leader proposes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=3))]
        writes: u8,
        /// S1 never crashes.
        #[arg(long)]
        no_crash: bool,
        /// Followers never give up on a live leader (only a crash makes them look).
        #[arg(long)]
        no_suspicions: bool,
        /// Seed a mistake the checker must catch.
        #[arg(long, value_enum)]
        bug: Option<zab::Bug>,
        #[command(flatten)]
        output: Output,
    },
    /// Two-phase commit: atomic, and blocks when the coordinator crashes.
    #[command(name = "2pc")]
    TwoPhase {
        /// Resource managers.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=4))]
        rms: u8,
        /// The coordinator never crashes (then nothing blocks).
        #[arg(long)]
        no_crash: bool,
        /// Seed a mistake the checker must catch.
        #[arg(long, value_enum)]
        bug: Option<two_phase::Bug>,
        #[command(flatten)]
        output: Output,
    },
    /// Three-phase commit: non-blocking on a reliable network, inconsistent under partitions.
    #[command(name = "3pc")]
    ThreePhase {
        /// Resource managers (2 suffice for the partition counterexample).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=4))]
        rms: u8,
        /// The coordinator never crashes.
        #[arg(long)]
        no_crash: bool,
        /// Partitions: messages may be delayed past timeouts, so actors act on timeouts that can
        /// fire while peers are alive. Atomicity fails.
        #[arg(long)]
        partitions: bool,
        /// Seed a mistake the checker must catch.
        #[arg(long, value_enum)]
        bug: Option<three_phase::Bug>,
        #[command(flatten)]
        output: Output,
    },
    /// Paxos Commit: each vote decided by Paxos; neither blocks nor decides inconsistently.
    PaxosCommit {
        /// Resource managers (each is one Paxos instance).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
        rms: u8,
        /// Acceptors; three survive one crash.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
        acceptors: u8,
        /// Which actor may crash (once, for good).
        #[arg(long, value_enum, default_value = "leader")]
        crash: paxos_commit::Crash,
        /// Partitions: the backup takes over whenever it suspects the leader, even a live one.
        #[arg(long)]
        partitions: bool,
        /// Seed a mistake the checker must catch.
        #[arg(long, value_enum)]
        bug: Option<paxos_commit::Bug>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
struct Output {
    /// Explore until every property is decided. Without it the run stops at the first
    /// counterexample, and reports the properties it had not decided by then as undecided.
    #[arg(long)]
    exhaustive: bool,
    /// Also print the run found for this property (an example for a `sometimes` property);
    /// repeatable. Counterexamples are always printed.
    #[arg(long = "trace", value_name = "PROPERTY")]
    traces: Vec<String>,
}

fn main() -> Result<()> {
    let model = match Cli::parse().command {
        Command::Check { model } => model,
        Command::Serve {
            protocol,
            me,
            peers,
            dir,
            bug,
        } => return consensus::live::serve(protocol, me, &peers, &dir, bug.as_deref()),
        Command::Live {
            protocol,
            duration,
            kill_at,
            freeze_at,
            partition_at,
            outage,
            faults,
            bug,
            net,
            port,
            dir,
            out,
        } => {
            use consensus::live::{Fault, FaultKind};
            let octets: Vec<u8> = net
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("--net {net:?} is not three octets like 127.0.77"))?;
            let [a, b, c] = octets[..] else {
                bail!("--net {net:?} is not three octets like 127.0.77");
            };
            if a != 127 {
                bail!("--net {net:?}: the servers run on loopback addresses only (127.x.y)");
            }
            let all = [
                (FaultKind::Kill, kill_at),
                (FaultKind::Freeze, freeze_at),
                (FaultKind::Partition, partition_at),
            ];
            let mut chosen: Vec<Fault> = all
                .into_iter()
                .filter(|(kind, _)| faults.is_empty() || faults.contains(kind))
                .map(|(kind, at)| Fault {
                    kind,
                    at,
                    lasts: outage,
                })
                .collect();
            chosen.sort_by_key(|f| f.at);
            if chosen.windows(2).any(|w| w[0].at + w[0].lasts > w[1].at)
                || chosen.last().is_some_and(|f| f.at + f.lasts > duration)
            {
                bail!("the faults overlap each other or the end of the run: space them (--kill-at, --freeze-at, --partition-at, --outage, --duration)");
            }
            if let Some(bug) = &bug {
                protocol.check_bug(bug)?;
            }
            let options = consensus::live::LiveOptions {
                protocol,
                program: std::env::current_exe()?,
                net: [a, b, c],
                port,
                duration,
                faults: chosen,
                bug,
                dir,
            };
            let report = consensus::live::run(&options, &|line| eprintln!("{line}"))?;
            println!("{}", consensus::live::markdown(&report));
            if let Some(out) = out {
                if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
                eprintln!("written: {}", out.display());
            }
            return Ok(());
        }
    };
    match model {
        Model::Paxos {
            proposers,
            acceptors,
            rounds,
            readers,
            bug,
            output,
        } => check(
            paxos::Paxos {
                proposers: proposers.into(),
                acceptors: acceptors.into(),
                rounds,
                readers: readers.into(),
                bug,
            },
            &output,
        ),
        Model::MultiPaxos {
            servers,
            candidates,
            no_crash,
            clients,
            unordered,
            bug,
            output,
        } => check(
            multi_paxos::MultiPaxos {
                servers: servers.into(),
                candidates: candidates.into(),
                crash: !no_crash,
                clients: clients.into(),
                ordered: !unordered,
                bug,
            },
            &output,
        ),
        Model::Zab {
            servers,
            candidates,
            epochs,
            writes,
            no_crash,
            no_suspicions,
            bug,
            output,
        } => check(
            zab::Zab {
                servers: servers.into(),
                candidates: candidates.into(),
                epochs,
                writes,
                crash: !no_crash,
                suspicions: !no_suspicions,
                bug,
            },
            &output,
        ),
        Model::TwoPhase {
            rms,
            no_crash,
            bug,
            output,
        } => check(
            two_phase::TwoPhaseCommit {
                resource_managers: rms.into(),
                coordinator_crash: !no_crash,
                bug,
            },
            &output,
        ),
        Model::ThreePhase {
            rms,
            no_crash,
            partitions,
            bug,
            output,
        } => check(
            three_phase::ThreePhaseCommit {
                resource_managers: rms.into(),
                coordinator_crash: !no_crash,
                partitions,
                bug,
            },
            &output,
        ),
        Model::PaxosCommit {
            rms,
            acceptors,
            crash,
            partitions,
            bug,
            output,
        } => check(
            paxos_commit::PaxosCommit {
                resource_managers: rms.into(),
                acceptors: acceptors.into(),
                crash,
                partitions,
                bug,
            },
            &output,
        ),
    }
}

/// Checks the scenario, prints the report, every counterexample and the requested traces.
fn check<S: Scenario>(scenario: S, output: &Output) -> Result<()> {
    let known: Vec<&str> = scenario
        .model()
        .properties
        .iter()
        .map(|property| property.name)
        .collect();
    if let Some(unknown) = output
        .traces
        .iter()
        .find(|property| !known.contains(&property.as_str()))
    {
        bail!(
            "this model has no property {unknown:?}; it has: {}",
            known.join(", ")
        );
    }
    let stop = if output.exhaustive {
        Stop::WhenAllDecided
    } else {
        Stop::AtFirstViolation
    };
    let report = run_until(scenario, stop);
    print!("{report}");
    let mut shown: Vec<&str> = report.violations().collect();
    for property in &output.traces {
        if !shown.contains(&property.as_str()) {
            shown.push(property.as_str());
        }
    }
    for property in shown {
        let Some(finding) = report.finding(property) else {
            continue;
        };
        match report.trace(property) {
            Some(trace) => {
                let kind = if finding.verdict == consensus::Verdict::Violated {
                    "counterexample to"
                } else {
                    "example of"
                };
                println!("\n{kind} \"{property}\":\n{trace}");
            }
            None => println!(
                "\n\"{property}\": {}, so there is no run to show",
                finding.verdict
            ),
        }
    }
    Ok(())
}
