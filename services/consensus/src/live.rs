//! # Multi-Paxos and ZAB as processes: the checked servers over loopback UDP, under faults
//!
//! The model checker proves properties of [`crate::multi_paxos`] and [`crate::zab`] at small
//! sizes. This module runs the *same* server code (its `on_msg` and `on_timeout`, unchanged) as
//! three operating-system processes that talk over loopback UDP, loads them with clients, breaks
//! them, and checks what the clients saw with the same linearizability checker as stage 8's
//! drills ([`loadtest::linearizability`]).
//!
//! ```text
//! cargo run --release -p consensus -- live                         # Multi-Paxos: kill, freeze, partition
//! cargo run --release -p consensus -- live --bug leader-reads-locally   # the stale reads, caught
//! cargo run --release -p consensus -- live --protocol zab          # ZAB, the same faults
//! cargo run --release -p consensus -- live --protocol zab --bug leader-commits-without-quorum
//! ```
//!
//! What runs:
//!
//! - **three servers** (`consensus serve`), each a process on its own loopback address
//!   (127.0.77.1 to .3 by default). [`serve`] is a small event loop around the actor: it
//!   receives a datagram, hands it to `on_msg`, carries out what the actor asked (save its
//!   durable state, send, set or cancel a timer) and fires timers when due. The durable state (a
//!   Multi-Paxos acceptor's log; a ZAB server's epochs and transaction log) is written to a file,
//!   synced and renamed into place *before* any message of the same step leaves, so a promise, a
//!   vote or an acknowledgement is never sent and then forgotten by a crash. (stateright's own
//!   UDP runner truncates and rewrites the file in place, unsynced: a kill between the two loses
//!   the log, which is the Multi-Paxos model's seeded bug `acceptor-forgets-on-restart`.) A
//!   message too big for one datagram (ZAB sends whole histories when a leader changes) goes as
//!   numbered fragments, reassembled on arrival; a fragment lost loses the message, which the
//!   protocols survive like any lost message. That takes a receive buffer as big as a burst of
//!   fragments: as root the servers get [`RECEIVE_BUFFER`]; otherwise Linux caps it at
//!   `net.core.rmem_max` (about 208 KiB by default), and a history past that size loses its tail
//!   every time, so no new leader can be established late in a long run.
//! - **eight clients** in the driver process, two per register on four registers: one that only
//!   reads and one that reads and writes unique values in a fixed pseudo-random pattern. A client
//!   sends to the server it believes leads; `not leader` is a certain failure (the server did
//!   nothing with the request) and names the leader to try; no answer within [`OP_TIMEOUT`] is an
//!   unknown outcome, and the client tries the next server. Every operation is recorded with
//!   invocation and response order, as in the drills. Both protocols order reads through their
//!   log, so every read is meant to be linearizable. (ZooKeeper itself answers a read from the
//!   server the client is connected to: sequentially consistent, not linearizable, unless the
//!   client calls `sync` first.)
//! - **faults**, each on the server that answered the most recent successful operation (the
//!   leader, as the clients see it): `kill` (SIGKILL, started again after the outage from its
//!   saved state), `freeze` (SIGSTOP, then SIGCONT: it wakes up believing it still leads), and
//!   `partition` (it drops every datagram to and from the other servers, while clients still
//!   reach it: the minority side of a network split, with clients on it).
//!
//! With Multi-Paxos's seeded bug `leader-reads-locally` the partitioned old leader keeps answering
//! reads from its own copy while the majority elects a new leader and takes writes: the checker
//! finds reads that returned a value already overwritten. With ZAB's `leader-commits-without-quorum`
//! the partitioned leader acknowledges writes only it has logged; the majority's new leader never
//! had them, and reads after the partition return older values: not linearizable.

use crate::multi_paxos::{self, Key, Value};
use crate::zab;
use anyhow::{bail, Context};
use loadtest::linearizability::{self, Outcome, Recorder, RegisterOp};
use loadtest::report::{Linearizability, Provenance};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stateright::actor::{Actor, Command, Id, Out};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Multi-Paxos's live timers. Elections: a follower waits 300 to 600 ms without a heartbeat (a
/// random point, so two rarely campaign together; six heartbeats fit in the shortest). Heartbeats
/// every 50 ms: cheap on loopback, and a frozen or killed leader is noticed within the timeout.
pub const TIMING: multi_paxos::Timing = multi_paxos::Timing {
    election: (Duration::from_millis(300), Duration::from_millis(600)),
    heartbeat: Duration::from_millis(50),
};

/// ZAB's live timers, on the same scale as Multi-Paxos's: a PING every 50 ms; a follower gives up
/// on a leader silent for 500 ms, and a leader that has not heard from a quorum for as long steps
/// down (ZooKeeper's `syncLimit`, 5 ticks of 2 s by default, is the same idea on a WAN's scale);
/// a LOOKING server stands after 150 to 450 ms, three PINGs at least, so a restarted server
/// joins the leader it hears rather than stand against it.
pub const ZAB_TIMING: zab::Timing = zab::Timing {
    stand: (Duration::from_millis(150), Duration::from_millis(450)),
    silence: Duration::from_millis(500),
    tick: Duration::from_millis(50),
};

/// Registers the clients use: as in stage 8's drills, enough that a fault catches some in the
/// middle of a write, few enough that each key's history keeps its clients overlapping.
pub const KEYS: usize = 4;

/// Clients per register.
pub const CLIENTS_PER_KEY: usize = 2;

/// One operation's timeout: past it the outcome is unknown. A leader change takes the election
/// timeout (up to 600 ms) and a round trip; a second lets a request sent just before a fault be
/// answered by the new leader, yet keeps a client from waiting out an outage on one request.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between one client's operations: eight clients at about 20 operations a second each.
/// That keeps a log a few thousand entries long in a run of half a minute: a Multi-Paxos promise
/// that carries the accepted tail, or a catch-up, fits in one datagram; a ZAB history (about 130
/// bytes an entry as JSON, never compacted here: ZooKeeper snapshots) stays within a few
/// hundred KiB, a few fragments.
const PAUSE: Duration = Duration::from_millis(50);

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;

/// A datagram that begins with this byte is one fragment of a message too big for one datagram
/// (a JSON message never begins with it), followed by the message's number (4 bytes), the
/// fragment's index and the count (2 bytes each).
const FRAGMENT: u8 = 0xFF;

/// Header of a fragment.
const FRAGMENT_HEADER: usize = 9;

/// The largest message sent: 4 MiB, far above what a run of [`PAUSE`]-paced clients builds, and
/// half the receive buffer asked for ([`RECEIVE_BUFFER`]), so a whole message in fragments fits
/// in it at once. A bigger one is not sent (and said so in the log).
const MAX_MESSAGE: usize = 4 << 20;

/// The socket receive buffer a server asks for. Linux's default (about 208 KiB) drops the tail of
/// a burst of fragments; as root the limit `net.core.rmem_max` is passed by (`SO_RCVBUFFORCE`),
/// otherwise the request is capped by it.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Incomplete messages a server keeps fragments of: one per sender is the usual case; past this
/// the oldest is dropped (lost).
const REASSEMBLING: usize = 8;

/// How long the checker may take, all registers together (as in the drills).
const CHECK_BOUND: Duration = Duration::from_secs(60);

/// The protocols that run live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Multi-Paxos ([`crate::multi_paxos`]).
    MultiPaxos,
    /// ZAB, ZooKeeper's atomic broadcast ([`crate::zab`]).
    Zab,
}

impl Protocol {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::MultiPaxos => MultiPaxosLive::NAME,
            Protocol::Zab => ZabLive::NAME,
        }
    }

    /// Checks that `bug` names one of this protocol's seeded bugs.
    pub fn check_bug(self, bug: &str) -> anyhow::Result<()> {
        match self {
            Protocol::MultiPaxos => MultiPaxosLive::bug(bug).map(|_| ()),
            Protocol::Zab => ZabLive::bug(bug).map(|_| ()),
        }
    }
}

/// A client's answer, whatever the protocol's message for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Written.
    Written,
    /// The value read (`None`: never written).
    Read(Option<Value>),
    /// Not the leader; did nothing; the leader it knows of.
    NotLeader(Option<Id>),
}

/// What the live runner needs from a protocol: its server, and its messages for the register
/// protocol between clients and servers.
pub trait LiveProtocol {
    /// Its name on the command line.
    const NAME: &'static str;
    /// Its name in prose.
    const TITLE: &'static str;
    /// The server actor.
    type Node: Actor<
        Random = (),
        Msg: Serialize + DeserializeOwned,
        Storage: Serialize + DeserializeOwned,
    >;
    /// Its seeded bugs.
    type Bug: Copy + clap::ValueEnum;
    /// The server at `me` of `servers` (every server, `me` included).
    fn server(me: Id, servers: &[Id], bug: Option<Self::Bug>) -> Self::Node;
    /// A write.
    fn put(request: u64, key: Key, value: Value) -> <Self::Node as Actor>::Msg;
    /// A read.
    fn get(request: u64, key: Key) -> <Self::Node as Actor>::Msg;
    /// The answer to `request`, if `msg` is one.
    fn answer(msg: &<Self::Node as Actor>::Msg, request: u64) -> Option<Answer>;
    /// The server's role in words, for its log ("leads in ballot 3/127.0.77.2:7000").
    fn describe(state: &<Self::Node as Actor>::State) -> String;

    /// The seeded bug named `name`.
    fn bug(name: &str) -> anyhow::Result<Self::Bug> {
        <Self::Bug as clap::ValueEnum>::from_str(name, true).map_err(|_| {
            let names: Vec<String> = <Self::Bug as clap::ValueEnum>::value_variants()
                .iter()
                .filter_map(|b| {
                    clap::ValueEnum::to_possible_value(b).map(|v| v.get_name().to_owned())
                })
                .collect();
            anyhow::anyhow!(
                "{name:?} is not a seeded bug of {}; it has: {}",
                Self::NAME,
                names.join(", ")
            )
        })
    }
}

/// Multi-Paxos, live.
pub struct MultiPaxosLive;

impl LiveProtocol for MultiPaxosLive {
    const NAME: &'static str = "multi-paxos";
    const TITLE: &'static str = "Multi-Paxos";
    type Node = multi_paxos::Node;
    type Bug = multi_paxos::Bug;

    fn server(_me: Id, servers: &[Id], bug: Option<Self::Bug>) -> Self::Node {
        multi_paxos::Node::Server(multi_paxos::Server {
            peers: servers.to_vec(),
            campaigns: None,
            timing: Some(TIMING),
            initial_leader: None,
            may_restart: false,
            bug,
        })
    }

    fn put(request: u64, key: Key, value: Value) -> multi_paxos::Msg {
        multi_paxos::Msg::Put {
            request,
            key,
            value,
        }
    }

    fn get(request: u64, key: Key) -> multi_paxos::Msg {
        multi_paxos::Msg::Get { request, key }
    }

    fn answer(msg: &multi_paxos::Msg, request: u64) -> Option<Answer> {
        use multi_paxos::Msg;
        match *msg {
            Msg::PutOk { request: r } if r == request => Some(Answer::Written),
            Msg::GetOk { request: r, value } if r == request => Some(Answer::Read(value)),
            Msg::NotLeader { request: r, leader } if r == request => {
                Some(Answer::NotLeader(leader))
            }
            _ => None,
        }
    }

    fn describe(state: &multi_paxos::NodeState) -> String {
        use multi_paxos::{NodeState, Role};
        match state {
            NodeState::Server(s) => match &s.role {
                Role::Leader { ballot, .. } => format!(
                    "leads in ballot {}/{}",
                    ballot.round,
                    SocketAddrV4::from(ballot.leader)
                ),
                Role::Candidate { ballot, .. } => format!(
                    "campaigns in ballot {}/{}",
                    ballot.round,
                    SocketAddrV4::from(ballot.leader)
                ),
                Role::Follower => match s.leader {
                    Some(leader) => format!("follows {}", SocketAddrV4::from(leader)),
                    None => "follows nobody yet".to_owned(),
                },
            },
            NodeState::Client(_) => "a client".to_owned(),
        }
    }
}

/// ZAB, live.
pub struct ZabLive;

impl LiveProtocol for ZabLive {
    const NAME: &'static str = "zab";
    const TITLE: &'static str = "ZAB";
    type Node = zab::Server;
    type Bug = zab::Bug;

    fn server(me: Id, servers: &[Id], bug: Option<Self::Bug>) -> Self::Node {
        zab::Server {
            peers: servers.iter().copied().filter(|s| *s != me).collect(),
            candidate: true,
            max_epoch: zab::Epoch::MAX,
            writes: 0,
            suspicious: true,
            timing: Some(ZAB_TIMING),
            bug,
        }
    }

    fn put(request: u64, key: Key, value: Value) -> zab::Msg {
        zab::Msg::Put {
            request,
            key,
            value,
        }
    }

    fn get(request: u64, key: Key) -> zab::Msg {
        zab::Msg::Get { request, key }
    }

    fn answer(msg: &zab::Msg, request: u64) -> Option<Answer> {
        use zab::Msg;
        match *msg {
            Msg::PutOk { request: r } if r == request => Some(Answer::Written),
            Msg::GetOk { request: r, value } if r == request => Some(Answer::Read(value)),
            Msg::NotLeader { request: r, leader } if r == request => {
                Some(Answer::NotLeader(leader))
            }
            _ => None,
        }
    }

    fn describe(state: &zab::ServerState) -> String {
        use zab::{LeaderPhase, Mode};
        let epochs = format!(
            "accepted epoch {}, current {}, {} logged, {} delivered",
            state.accepted_epoch,
            state.current_epoch,
            state.history.len(),
            state.delivered
        );
        let mode = match &state.mode {
            Mode::Looking => "LOOKING".to_owned(),
            Mode::Following { leader, phase } => {
                format!("FOLLOWING {} ({phase:?})", SocketAddrV4::from(*leader))
            }
            Mode::Leading(LeaderPhase::Broadcast { epoch, .. }) => {
                format!("LEADING epoch {epoch}")
            }
            Mode::Leading(_) => "LEADING (not yet established)".to_owned(),
        };
        // The counts change with every transaction; the log names the mode, and the counts at
        // the moment it changed.
        format!("{mode}; {epochs}")
    }
}

/// Runs one server of `protocol` until it is killed: the actor's code inside a UDP event loop.
///
/// `peers` are all servers' addresses, `me` among them; `dir` holds its durable state
/// (`state.json`) across restarts. A line `partition` on standard input makes it drop every
/// datagram to and from the other servers; `heal` ends that.
pub fn serve(
    protocol: Protocol,
    me: SocketAddrV4,
    peers: &[SocketAddrV4],
    dir: &Path,
    bug: Option<&str>,
) -> anyhow::Result<()> {
    match protocol {
        Protocol::MultiPaxos => serve_with::<MultiPaxosLive>(me, peers, dir, bug),
        Protocol::Zab => serve_with::<ZabLive>(me, peers, dir, bug),
    }
}

fn serve_with<P: LiveProtocol>(
    me: SocketAddrV4,
    peers: &[SocketAddrV4],
    dir: &Path,
    bug: Option<&str>,
) -> anyhow::Result<()> {
    let bug = bug.map(P::bug).transpose()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = UdpSocket::bind(me).with_context(|| format!("binding {me}"))?;
    enlarge_receive_buffer(&socket);
    let state_path = dir.join("state.json");
    let storage: Option<<P::Node as Actor>::Storage> = match std::fs::read(&state_path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).context("reading the saved state")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading the saved state"),
    };
    let ids: Vec<Id> = peers.iter().map(|p| Id::from(*p)).collect();
    let node = P::server(Id::from(me), &ids, bug);
    let partitioned = Arc::new(AtomicBool::new(false));
    {
        let partitioned = partitioned.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                partitioned.store(line.trim() == "partition", Ordering::SeqCst);
                eprintln!(
                    "{me}: {}",
                    if line.trim() == "partition" {
                        "cut off from the other servers"
                    } else {
                        "back in touch"
                    }
                );
            }
        });
    }
    let is_peer = |addr: SocketAddrV4| addr != me && peers.contains(&addr);
    let id = Id::from(me);
    let mut runtime = Runtime::<P::Node> {
        me,
        socket: &socket,
        state_path: &state_path,
        dir,
        timers: HashMap::new(),
        random: seed(),
        // Not 0: a server restarted after a kill must not reuse the numbers of its previous
        // run, whose half-sent messages may still wait at the others for fragments.
        next_message: seed() as u32,
        partitioned: &partitioned,
        is_peer: &is_peer,
    };
    let mut out = Out::new();
    let mut state = Cow::Owned(node.on_start(id, &storage, &mut out));
    eprintln!(
        "{me}: {} started{}",
        P::TITLE,
        if storage.is_some() {
            " from its saved state"
        } else {
            ""
        }
    );
    runtime.carry_out(out)?;
    let mut role = P::describe(&state);
    eprintln!("{me}: {role}");
    let mut reassembly = Reassembly::default();
    let mut buf = vec![0; 65_536];
    loop {
        let mut out = Out::new();
        let due = runtime
            .timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (t.clone(), *at));
        match due {
            Some((timer, at)) if at <= Instant::now() => {
                runtime.timers.remove(&timer);
                node.on_timeout(id, &mut state, &timer, &mut out);
            }
            _ => {
                let wait = due.map_or(Duration::from_secs(1), |(_, at)| {
                    at.saturating_duration_since(Instant::now())
                });
                socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
                match socket.recv_from(&mut buf) {
                    Ok((n, SocketAddr::V4(src))) => {
                        if partitioned.load(Ordering::SeqCst) && is_peer(src) {
                            continue;
                        }
                        let Some(bytes) = reassembly.take(src, &buf[..n]) else {
                            continue;
                        };
                        // Anything that is not a message is ignored, as a lost datagram would be.
                        let Ok(msg) = serde_json::from_slice(&bytes) else {
                            continue;
                        };
                        node.on_msg(id, &mut state, Id::from(src), msg, &mut out);
                    }
                    Ok(_) => continue,
                    // A timeout, or a signal (SIGCONT after a freeze) interrupting the wait.
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(e).context("receiving"),
                }
            }
        }
        runtime.carry_out(out)?;
        let now = P::describe(&state);
        // Log a change of role, not of counts (the part after ';' moves with every message).
        if now.split(';').next() != role.split(';').next() {
            eprintln!("{me}: {now}");
        }
        role = now;
    }
}

/// Asks for a [`RECEIVE_BUFFER`]-sized receive buffer; keeps the default if refused.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
}

/// `bytes` cut into datagrams of at most [`MAX_DATAGRAM`] bytes, each [`FRAGMENT`], the message's
/// `number`, its index and the count, then its part; `None` past [`MAX_MESSAGE`].
fn fragments(number: u32, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let chunk = MAX_DATAGRAM - FRAGMENT_HEADER;
    let count = u16::try_from(bytes.len().div_ceil(chunk)).ok()?;
    if bytes.len() > MAX_MESSAGE {
        return None;
    }
    let datagrams = bytes
        .chunks(chunk)
        .zip(0..count)
        .map(|(part, index)| {
            let mut datagram = Vec::with_capacity(FRAGMENT_HEADER + part.len());
            datagram.push(FRAGMENT);
            datagram.extend_from_slice(&number.to_be_bytes());
            datagram.extend_from_slice(&index.to_be_bytes());
            datagram.extend_from_slice(&count.to_be_bytes());
            datagram.extend_from_slice(part);
            datagram
        })
        .collect();
    Some(datagrams)
}

/// Fragments of messages too big for one datagram, put back together.
#[derive(Default)]
struct Reassembly {
    /// (sender, message number) to its fragments so far.
    parts: HashMap<(SocketAddrV4, u32), Vec<Option<Vec<u8>>>>,
    /// The same keys, oldest first.
    order: VecDeque<(SocketAddrV4, u32)>,
}

impl Reassembly {
    /// The whole message, if `datagram` is one or completes one.
    fn take(&mut self, src: SocketAddrV4, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.first() != Some(&FRAGMENT) {
            return Some(datagram.to_vec());
        }
        let header = datagram.get(..FRAGMENT_HEADER)?;
        let number = u32::from_be_bytes(header[1..5].try_into().ok()?);
        let index = usize::from(u16::from_be_bytes(header[5..7].try_into().ok()?));
        let count = usize::from(u16::from_be_bytes(header[7..9].try_into().ok()?));
        if index >= count {
            return None;
        }
        let key = (src, number);
        if !self.parts.contains_key(&key) {
            if self.order.len() >= REASSEMBLING {
                if let Some(oldest) = self.order.pop_front() {
                    self.parts.remove(&oldest);
                }
            }
            self.order.push_back(key);
        }
        let parts = self.parts.entry(key).or_insert_with(|| vec![None; count]);
        if parts.len() != count {
            return None;
        }
        parts[index] = Some(datagram[FRAGMENT_HEADER..].to_vec());
        if parts.iter().any(Option::is_none) {
            return None;
        }
        let whole = self
            .parts
            .remove(&key)?
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        self.order.retain(|k| *k != key);
        Some(whole)
    }
}

/// What one server's event loop needs to carry out its actor's commands.
struct Runtime<'a, A: Actor> {
    me: SocketAddrV4,
    socket: &'a UdpSocket,
    state_path: &'a Path,
    dir: &'a Path,
    timers: HashMap<A::Timer, Instant>,
    random: u64,
    next_message: u32,
    partitioned: &'a AtomicBool,
    is_peer: &'a dyn Fn(SocketAddrV4) -> bool,
}

impl<A> Runtime<'_, A>
where
    A: Actor<Msg: Serialize, Storage: Serialize>,
{
    /// Saves first, then sends and sets timers: nothing promised, accepted or acknowledged in
    /// this step leaves before it is on disk.
    fn carry_out(&mut self, out: Out<A>) -> anyhow::Result<()> {
        let commands: Vec<_> = out.into_iter().collect();
        if let Some(saved) = commands.iter().rev().find_map(|c| match c {
            Command::Save(saved) => Some(saved),
            _ => None,
        }) {
            self.save(saved)?;
        }
        for command in commands {
            match command {
                Command::Send(to, msg) => {
                    let to = SocketAddrV4::from(to);
                    if self.partitioned.load(Ordering::SeqCst) && (self.is_peer)(to) {
                        continue;
                    }
                    self.send(to, &serde_json::to_vec(&msg)?);
                }
                Command::SetTimer(timer, range) => {
                    let span = range.end.saturating_sub(range.start).as_micros() as u64;
                    self.random ^= self.random << 13;
                    self.random ^= self.random >> 7;
                    self.random ^= self.random << 17;
                    let extra = if span == 0 { 0 } else { self.random % span };
                    self.timers.insert(
                        timer,
                        Instant::now() + range.start + Duration::from_micros(extra),
                    );
                }
                Command::CancelTimer(timer) => {
                    self.timers.remove(&timer);
                }
                Command::Save(_) | Command::ChooseRandom(..) => {}
            }
        }
        Ok(())
    }

    /// One datagram, or numbered fragments. A send that fails is a lost datagram, which the
    /// protocols survive.
    fn send(&mut self, to: SocketAddrV4, bytes: &[u8]) {
        if bytes.len() <= MAX_DATAGRAM {
            let _ = self.socket.send_to(bytes, to);
            return;
        }
        self.next_message = self.next_message.wrapping_add(1);
        let Some(datagrams) = fragments(self.next_message, bytes) else {
            eprintln!(
                "{}: a message of {} bytes is over the {MAX_MESSAGE}-byte limit; not sent",
                self.me,
                bytes.len()
            );
            return;
        };
        for datagram in datagrams {
            let _ = self.socket.send_to(&datagram, to);
        }
    }

    /// Writes the state to a new file, syncs it, renames it over the old one and syncs the
    /// folder: after a kill (or a power loss) the file is the old state or the new one, never
    /// half of one.
    fn save(&self, saved: &A::Storage) -> anyhow::Result<()> {
        let next = self.state_path.with_extension("json.next");
        let mut file = std::fs::File::create(&next)?;
        file.write_all(&serde_json::to_vec(saved)?)?;
        file.sync_all()?;
        std::fs::rename(&next, self.state_path)?;
        std::fs::File::open(self.dir)?.sync_all()?;
        Ok(())
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 16) ^ u64::from(std::process::id()) | 1
}

/// A fault the driver injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL; started again from its saved log when the outage ends.
    Kill,
    /// SIGSTOP; SIGCONT when the outage ends.
    Freeze,
    /// Cut off from the other servers (clients still reach it); healed when the outage ends.
    Partition,
}

/// A fault: what, when (from the start of the run), for how long.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// When it begins.
    pub at: Duration,
    /// How long it lasts.
    pub lasts: Duration,
}

/// A live run's settings.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// The protocol the servers run.
    pub protocol: Protocol,
    /// The `consensus` program (its `serve` command runs each server).
    pub program: PathBuf,
    /// The servers' addresses are `net.1` to `net.3` (the first three octets).
    pub net: [u8; 3],
    /// Their UDP port.
    pub port: u16,
    /// How long the clients run.
    pub duration: Duration,
    /// The faults, in time order.
    pub faults: Vec<Fault>,
    /// A seeded bug in every server, by name (one of the protocol's: [`LiveProtocol::bug`]).
    pub bug: Option<String>,
    /// Where the servers keep their logs and saved states.
    pub dir: PathBuf,
}

/// A fault as it happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What.
    pub kind: FaultKind,
    /// The server it hit.
    pub server: String,
    /// Seconds from the start when it began.
    pub at_s: f64,
    /// Seconds from the start when it ended.
    pub ended_s: f64,
}

/// What a live run found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveReport {
    /// The protocol run.
    pub protocol: String,
    /// The seeded bug, if any.
    pub bug: Option<String>,
    /// The servers' addresses.
    pub servers: Vec<String>,
    /// Seconds the clients ran.
    pub duration_s: f64,
    /// The faults.
    pub faults: Vec<FaultRecord>,
    /// Acknowledged writes and answered reads per second of the run.
    pub ok_per_second: Vec<u64>,
    /// The registers' history and the checker's verdict.
    pub linearizability: Linearizability,
    /// Where and when it ran.
    pub provenance: Provenance,
}

/// A running server process and how to start it again.
struct ServerProcess {
    addr: SocketAddrV4,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
}

impl ServerProcess {
    fn start(
        program: &Path,
        addr: SocketAddrV4,
        args: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let child = spawn(program, &args, &log)?;
        Ok(ServerProcess {
            addr,
            args,
            log,
            child,
        })
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        // A process that already exited has nothing to stop or continue.
        let _ = nix::sys::signal::kill(self.pid(), signal);
    }

    fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("the server's input")?;
        writeln!(stdin, "{line}")?;
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self, program: &Path) -> anyhow::Result<()> {
        self.child = spawn(program, &self.args, &self.log)?;
        Ok(())
    }
}

fn spawn(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Runs three servers, the clients and the faults; checks the history.
pub fn run(options: &LiveOptions, progress: &dyn Fn(&str)) -> anyhow::Result<LiveReport> {
    if let Some(bug) = &options.bug {
        options.protocol.check_bug(bug)?;
    }
    let addrs: Vec<SocketAddrV4> = (1..=3)
        .map(|host| {
            SocketAddrV4::new(
                Ipv4Addr::new(options.net[0], options.net[1], options.net[2], host),
                options.port,
            )
        })
        .collect();
    let peers = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    std::fs::create_dir_all(&options.dir)?;
    let mut servers = Vec::new();
    for (index, addr) in addrs.iter().enumerate() {
        let dir = options.dir.join(format!("s{}", index + 1));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let mut args = vec![
            "serve".to_owned(),
            "--me".to_owned(),
            addr.to_string(),
            "--peers".to_owned(),
            peers.clone(),
            "--dir".to_owned(),
            dir.display().to_string(),
        ];
        args.extend(["--protocol".to_owned(), options.protocol.name().to_owned()]);
        if let Some(bug) = &options.bug {
            args.extend(["--bug".to_owned(), bug.clone()]);
        }
        let log = options.dir.join(format!("s{}.log", index + 1));
        let _ = std::fs::remove_file(&log);
        servers.push(ServerProcess::start(&options.program, *addr, args, log)?);
    }
    progress(&format!(
        "servers: {} (logs in {})",
        peers,
        options.dir.display()
    ));
    let result = match options.protocol {
        Protocol::MultiPaxos => drive::<MultiPaxosLive>(options, &addrs, &mut servers, progress),
        Protocol::Zab => drive::<ZabLive>(options, &addrs, &mut servers, progress),
    };
    for server in &mut servers {
        server.signal(nix::sys::signal::Signal::SIGCONT);
        server.kill();
    }
    result
}

fn drive<P: LiveProtocol>(
    options: &LiveOptions,
    addrs: &[SocketAddrV4],
    servers: &mut [ServerProcess],
    progress: &dyn Fn(&str),
) -> anyhow::Result<LiveReport> {
    let recorder = Arc::new(Recorder::new());
    let values = Arc::new(AtomicU32::new(1));
    let last_ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut clients = Vec::new();
    for client in 0..KEYS * CLIENTS_PER_KEY {
        let shared = Shared {
            recorder: recorder.clone(),
            values: values.clone(),
            last_ok: last_ok.clone(),
            stop: stop.clone(),
        };
        let addrs = addrs.to_vec();
        let bind = *addrs[0].ip();
        clients.push(std::thread::spawn(move || {
            run_client::<P>(client, &addrs, bind, &shared)
        }));
    }
    let mut faults = Vec::new();
    for fault in &options.faults {
        sleep_until(start + fault.at);
        let index = last_ok.load(Ordering::SeqCst);
        let server = &mut servers[index];
        let at_s = start.elapsed().as_secs_f64();
        progress(&format!(
            "{at_s:.1} s: {:?} {} (the last server to answer)",
            fault.kind, server.addr
        ));
        match fault.kind {
            FaultKind::Kill => server.kill(),
            FaultKind::Freeze => server.signal(nix::sys::signal::Signal::SIGSTOP),
            FaultKind::Partition => server.tell("partition")?,
        }
        sleep_until(start + fault.at + fault.lasts);
        match fault.kind {
            FaultKind::Kill => server.restart(&options.program)?,
            FaultKind::Freeze => server.signal(nix::sys::signal::Signal::SIGCONT),
            FaultKind::Partition => server.tell("heal")?,
        }
        let ended_s = start.elapsed().as_secs_f64();
        progress(&format!("{ended_s:.1} s: {} back", server.addr));
        faults.push(FaultRecord {
            kind: fault.kind,
            server: server.addr.to_string(),
            at_s: round(at_s),
            ended_s: round(ended_s),
        });
    }
    sleep_until(start + options.duration);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        if client.join().is_err() {
            bail!("a client thread panicked");
        }
    }
    let ops = recorder.take();
    let mut ok_per_second = vec![0; options.duration.as_secs().max(1) as usize + 1];
    for op in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        if let Some(slot) = ok_per_second.get_mut(op.returned_s as usize) {
            *slot += 1;
        }
    }
    progress(&format!(
        "{} operations; checking each register's history",
        ops.len()
    ));
    let linearizability = linearizability::check(ops, KEYS, CHECK_BOUND);
    Ok(LiveReport {
        protocol: P::NAME.to_owned(),
        bug: options.bug.clone(),
        servers: addrs.iter().map(ToString::to_string).collect(),
        duration_s: options.duration.as_secs_f64(),
        faults,
        ok_per_second,
        linearizability,
        provenance: loadtest::machine_provenance(),
    })
}

/// What the clients share.
struct Shared {
    recorder: Arc<Recorder>,
    values: Arc<AtomicU32>,
    last_ok: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn run_client<P: LiveProtocol>(
    client: usize,
    servers: &[SocketAddrV4],
    bind: Ipv4Addr,
    shared: &Shared,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((bind, 0))?;
    let key = client % KEYS;
    // The first client of each register only reads; the others read and write. A reader stays
    // with the server that answers it, as a client keeps a connection, so that a server that
    // has lost its leadership without knowing it is asked, and a stale answer shows.
    let reads_only = client < KEYS;
    let mut target = client % servers.len();
    let mut pattern = 0x9e37_79b9_u32 ^ (client as u32 + 1);
    let mut buf = vec![0; 65_536];
    let mut request = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        pattern ^= pattern << 13;
        pattern ^= pattern >> 17;
        pattern ^= pattern << 5;
        request += 1;
        let (msg, mut op) = if !reads_only && pattern % 2 == 0 {
            let value = shared.values.fetch_add(1, Ordering::SeqCst);
            (P::put(request, key as Key, value), RegisterOp::Write(value))
        } else {
            (P::get(request, key as Key), RegisterOp::Read(None))
        };
        let invocation = shared.recorder.invoke();
        socket.send_to(&serde_json::to_vec(&msg)?, servers[target])?;
        let deadline = Instant::now() + OP_TIMEOUT;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                target = (target + 1) % servers.len();
                break Outcome::Unknown;
            }
            socket.set_read_timeout(Some(left))?;
            let Ok((n, _)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(answer) = serde_json::from_slice::<<P::Node as Actor>::Msg>(&buf[..n]) else {
                continue;
            };
            match P::answer(&answer, request) {
                Some(Answer::Written) => break Outcome::Ok,
                Some(Answer::Read(value)) => {
                    op = RegisterOp::Read(value);
                    break Outcome::Ok;
                }
                Some(Answer::NotLeader(leader)) => {
                    target = leader
                        .and_then(|l| servers.iter().position(|s| Id::from(*s) == l))
                        .unwrap_or((target + 1) % servers.len());
                    break Outcome::Fail;
                }
                None => continue,
            }
        };
        if outcome == Outcome::Ok {
            shared.last_ok.store(target, Ordering::SeqCst);
        }
        shared
            .recorder
            .complete(invocation, key, client, op, outcome);
        std::thread::sleep(PAUSE);
    }
    Ok(())
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// The report in words.
pub fn markdown(report: &LiveReport) -> String {
    let l = &report.linearizability;
    let mut s = format!(
        "{} as three processes over loopback UDP ({}), {} clients on {KEYS} registers for {} s{}\n\n",
        match report.protocol.as_str() {
            ZabLive::NAME => ZabLive::TITLE,
            _ => MultiPaxosLive::TITLE,
        },
        report.servers.join(", "),
        KEYS * CLIENTS_PER_KEY,
        report.duration_s,
        report.bug.as_ref().map_or(String::new(), |b| format!(", seeded bug: {b}")),
    );
    for f in &report.faults {
        s.push_str(&format!(
            "- {:.1} s to {:.1} s: {} {}\n",
            f.at_s,
            f.ended_s,
            match f.kind {
                FaultKind::Kill => "killed",
                FaultKind::Freeze => "frozen",
                FaultKind::Partition => "cut off from the other servers",
            },
            f.server
        ));
    }
    let per_second: Vec<String> = report
        .ok_per_second
        .iter()
        .map(ToString::to_string)
        .collect();
    s.push_str(&format!(
        "\nOperations: {} ({} ok, {} failed: not the leader, {} unknown: no answer in {} s). Answered per second: {}.\n\n\
         Registers: linearizable {}, **not linearizable {}**, undecided {} (checked in {} s).\n",
        l.operations, l.ok, l.failed, l.unknown, OP_TIMEOUT.as_secs(), per_second.join(" "),
        l.linearizable_keys, l.violating_keys, l.undecided_keys, l.check_s
    ));
    for w in &l.stale_reads {
        s.push_str(&format!("- {w}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 77, 1), 7000)
    }

    /// A message of three datagrams, its fragments arriving in any order, comes out whole,
    /// once; a message of one datagram passes as it is.
    #[test]
    fn fragments_in_any_order_make_the_message_again() {
        let message: Vec<u8> = (0..150_000).map(|i| (i % 251) as u8).collect();
        let mut parts = fragments(7, &message).unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= MAX_DATAGRAM));
        parts.swap(0, 2);
        let mut reassembly = Reassembly::default();
        assert_eq!(reassembly.take(sender(), &parts[0]), None);
        assert_eq!(reassembly.take(sender(), &parts[1]), None);
        assert_eq!(reassembly.take(sender(), &parts[2]), Some(message));
        assert!(reassembly.parts.is_empty() && reassembly.order.is_empty());
        assert_eq!(
            reassembly.take(sender(), b"{\"Ack\":1}"),
            Some(b"{\"Ack\":1}".to_vec())
        );
    }

    /// Incomplete messages are kept up to [`REASSEMBLING`]; past that the oldest is given up,
    /// and its late fragments alone do not make a message.
    #[test]
    fn the_oldest_incomplete_message_is_given_up() {
        let message = vec![1; 100_000];
        let mut reassembly = Reassembly::default();
        let first = fragments(1, &message).unwrap();
        assert_eq!(reassembly.take(sender(), &first[0]), None);
        for number in 2..=REASSEMBLING as u32 + 1 {
            let parts = fragments(number, &message).unwrap();
            assert_eq!(reassembly.take(sender(), &parts[0]), None);
        }
        assert_eq!(reassembly.parts.len(), REASSEMBLING);
        assert_eq!(reassembly.take(sender(), &first[1]), None);
        assert!(fragments(1, &vec![0; MAX_MESSAGE + 1]).is_none());
    }
}
