//! Stage 8's other consensus store: a three-member ZooKeeper ensemble, one member per host.
//!
//! ZooKeeper agrees by ZAB (ZooKeeper Atomic Broadcast) where etcd uses Raft: members elect a
//! leader (LOOKING, then LEADING or FOLLOWING), the new leader brings every follower's history up
//! to date with its own (synchronisation), and only then broadcasts new writes, each numbered by a
//! *zxid*: the leader's epoch in the high 32 bits, a counter in the low 32. A write is committed
//! once a majority has logged it. `docs/concepts/zab.md` and the model in `services/consensus`
//! take the protocol apart; this module runs the real thing for Patroni.
//!
//! Each member serves four ports on its host's address:
//!
//! ```text
//! 2181  client    Patroni's sessions (kazoo), reads, writes and watches
//! 2888  quorum    followers to the leader: synchronisation and broadcast
//! 3888  election  the members' votes while LOOKING
//! 8080  admin     HTTP; GET /commands/zabstate: leader or not, epoch, last zxid, ZAB phase
//! ```
//!
//! Debian's `zookeeper` package is run as a plain JVM process (no service manager here): its jar
//! (whose manifest names its libraries), the servlet API the admin server needs (the manifest
//! omits it), and slf4j's simple logger, so the log says something.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Context;
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::{
    consensus::Leadership,
    process::{self, PidRecord, Spawn},
};

/// ZooKeeper's standard client port, on every member's own address.
pub const CLIENT_PORT: u16 = 2181;
/// Followers connect to the leader here.
pub const QUORUM_PORT: u16 = 2888;
/// Members vote here.
pub const ELECTION_PORT: u16 = 3888;
/// The admin server (HTTP) on every member's own address.
pub const ADMIN_PORT: u16 = 8080;
/// ZooKeeper's unit of time in milliseconds. Sessions live between 2 and 20 ticks: Patroni asks
/// for its leader TTL (10 s), which 1,000 ms ticks allow (2 to 20 s); the default 2,000 would too,
/// but also double how long a follower waits before it gives up on a dead leader (`syncLimit`).
/// A session expires at the first tick after its deadline, so a dead Patroni's key may outlive
/// its 10 s by up to a tick. 500 ms ticks were tried on 2026-12-07 and showed no earlier key
/// (stage 8's walkthrough, "Half-second ZooKeeper ticks"): not kept, so that every ZooKeeper
/// figure of the walkthrough is of this setting.
const TICK_MS: u32 = 1_000;
/// Ticks a follower may take to connect to and sync with a new leader (10 s): a lab's data is tiny.
const INIT_LIMIT_TICKS: u32 = 10_000 / TICK_MS;
/// Ticks a follower may fall behind (or a leader go silent) before they part (5 s).
const SYNC_LIMIT_TICKS: u32 = 5_000 / TICK_MS;
/// The JVM's heap: ZooKeeper holds its whole tree in memory, and Patroni's is a few keys.
/// 128 MB is far more than that and keeps three members from taking a gigabyte each (the
/// JVM's default is a quarter of the machine's memory).
const HEAP: &str = "-Xmx128m";
/// How long a member may take to listen: the JVM starts within seconds on a quiet machine, but
/// a consensus host's budget is 0.05 core, and on a slow hour (a clean-clone run of .ci/run,
/// 2026-12-06 06:45 UTC)
/// the JVM's class loading and Jetty's start inside it took over 60 s, which this bound then
/// called a failure. Three minutes only trip on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an ensemble may take to elect its first leader once every member runs: a few seconds
/// here; members at 0.05 core on a slow hour are slower by the same factor as their start
/// ([`START_TIMEOUT`]), so three minutes.
pub(crate) const FORM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one admin question may take before the member counts as not answering.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// The jars a member runs with (Debian's paths).
const CLASSPATH: [&str; 3] = [
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/servlet-api.jar",
    "/usr/share/java/slf4j-simple.jar",
];

/// ZooKeeper's version, for a result's provenance: Debian ships `zookeeper.jar` with a versioned
/// name beside it (`zookeeper-3.8.0.jar`, a link to it), so the versioned name that leads to the
/// same file names it.
pub(crate) fn version() -> Option<String> {
    let jar = std::path::Path::new(CLASSPATH[0]);
    let target = std::fs::canonicalize(jar).ok()?;
    std::fs::read_dir(jar.parent()?)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix("zookeeper-")?.strip_suffix(".jar")?;
            let same = std::fs::canonicalize(entry.path()).ok()? == target;
            (same && version.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| format!("ZooKeeper {version}"))
        })
}

/// One member of the ensemble.
#[derive(Debug, Clone)]
pub struct ZooKeeperMember {
    /// Its id in the ensemble (`myid`, 1 to 255), unique.
    pub id: u8,
    /// Its name (the host's name).
    pub name: String,
    /// Holds `zoo.cfg`, `data/`, the log and the PID file.
    pub dir: PathBuf,
    /// Its loopback address.
    pub address: String,
    /// Client, quorum, election and admin ports (the constants above in the lab; tests pick free
    /// ones).
    pub ports: ZooKeeperPorts,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

/// A member's four ports.
#[derive(Debug, Clone, Copy)]
pub struct ZooKeeperPorts {
    /// Clients (Patroni).
    pub client: u16,
    /// Followers to the leader.
    pub quorum: u16,
    /// Votes.
    pub election: u16,
    /// HTTP admin server.
    pub admin: u16,
}

impl ZooKeeperPorts {
    /// The standard ports, for a member on its own address.
    pub const STANDARD: ZooKeeperPorts = ZooKeeperPorts {
        client: CLIENT_PORT,
        quorum: QUORUM_PORT,
        election: ELECTION_PORT,
        admin: ADMIN_PORT,
    };
}

/// What one member says of itself (`GET /commands/zabstate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZabState {
    /// Whether it leads.
    pub is_leader: bool,
    /// The epoch it knows: one more with each new leader.
    pub epoch: u64,
    /// The zxid of the last transaction it logged (epoch << 32 | counter).
    pub last_zxid: u64,
    /// Its ZAB phase: `election`, `discovery`, `synchronization` or `broadcast`.
    pub phase: String,
}

impl ZooKeeperMember {
    /// The member's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("zookeeper.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("zookeeper.pid.json")
    }

    /// `address:port` for clients.
    pub fn client_endpoint(&self) -> String {
        format!("{}:{}", self.address, self.ports.client)
    }

    fn config(&self, ensemble: &ZooKeeperEnsemble) -> String {
        let servers: String = ensemble
            .members
            .iter()
            .map(|m| {
                format!(
                    "server.{}={}:{}:{}\n",
                    m.id, m.address, m.ports.quorum, m.ports.election
                )
            })
            .collect();
        format!(
            "# Written by archlab (stages/lab/src/zookeeper.rs); rewritten at every start.
tickTime={TICK_MS}
initLimit={INIT_LIMIT_TICKS}
syncLimit={SYNC_LIMIT_TICKS}
dataDir={data}
clientPortAddress={address}
clientPort={client}
{servers}admin.enableServer=true
admin.serverAddress={address}
admin.serverPort={admin}
",
            data = self.dir.join("data").display(),
            address = self.address,
            client = self.ports.client,
            admin = self.ports.admin,
        )
    }

    /// Starts the member (idempotent) and waits until its admin server listens.
    async fn start(&self, ensemble: &ZooKeeperEnsemble) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        for (what, port) in [
            ("a ZooKeeper member", self.ports.client),
            ("a ZooKeeper member's quorum port", self.ports.quorum),
            ("a ZooKeeper member's election port", self.ports.election),
            ("a ZooKeeper member's admin server", self.ports.admin),
        ] {
            process::ensure_free(what, &self.address, port)?;
        }
        let data = self.dir.join("data");
        fs::create_dir_all(&data)?;
        fs::write(data.join("myid"), format!("{}\n", self.id))?;
        let config = self.dir.join("zoo.cfg");
        fs::write(&config, self.config(ensemble))?;
        let java = PathBuf::from("/usr/bin/java");
        if !java.exists() || !std::path::Path::new(CLASSPATH[0]).exists() {
            anyhow::bail!(
                "ZooKeeper not found: run scripts/setup.sh (Debian/Ubuntu: apt-get install zookeeper)"
            );
        }
        let args = vec![
            HEAP.into(),
            "-cp".into(),
            CLASSPATH.join(":"),
            "-Dorg.slf4j.simpleLogger.showDateTime=true".into(),
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss.SSS".into(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
            config.display().to_string(),
        ];
        let (program, args, user) =
            crate::budget::wrap(self.cpu_group.as_deref(), None, &java, args);
        let service = Spawn {
            program: &program,
            args,
            env: vec![],
            log: self.log_path(),
            user,
            cwd: Some(self.dir.clone()),
        };
        // Ready once the admin server listens: a member of a new ensemble has no ZAB state to
        // report until a majority runs ([`ZooKeeperEnsemble::start`] waits for that).
        let (address, port) = (self.address.clone(), self.ports.admin);
        process::launch(
            "zookeeper",
            service,
            &self.pid_path(),
            START_TIMEOUT,
            || {
                let (address, port) = (address.clone(), port);
                async move {
                    tokio::net::TcpStream::connect((address.as_str(), port))
                        .await
                        .is_ok()
                }
            },
        )
        .await
    }

    /// The running member's record, if running.
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// What the member says of itself, or `None` if it does not answer.
    pub async fn zab_state(&self) -> Option<ZabState> {
        #[derive(Deserialize)]
        struct Answer {
            is_leader: bool,
            zab_epoch: u64,
            last_zxid: String,
            zabstate: String,
        }
        let client = crate::lab::http_client().ok()?;
        let answer: Answer = client
            .get(format!(
                "http://{}:{}/commands/zabstate",
                self.address, self.ports.admin
            ))
            .timeout(ASK_TIMEOUT)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(ZabState {
            is_leader: answer.is_leader,
            epoch: answer.zab_epoch,
            last_zxid: u64::from_str_radix(answer.last_zxid.trim_start_matches("0x"), 16).ok()?,
            phase: answer.zabstate,
        })
    }

    /// Stops the member with `signal`: SIGTERM as an operator would, SIGKILL to crash it.
    pub fn stop_with(&self, signal: Signal) -> anyhow::Result<()> {
        process::stop_recorded(&self.pid_path(), signal, Duration::from_secs(30))
    }

    /// Stops the member (SIGTERM).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGTERM)
    }
}

/// The ensemble.
#[derive(Debug, Clone)]
pub struct ZooKeeperEnsemble {
    /// The members, in host order.
    pub members: Vec<ZooKeeperMember>,
}

impl ZooKeeperEnsemble {
    /// Every member's client `address:port`, comma-separated, as Patroni's `zookeeper.hosts`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(ZooKeeperMember::client_endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every member that does not run, then waits until one leads and every member that
    /// answers is in ZAB's broadcast phase under it.
    pub async fn start(&self) -> anyhow::Result<Leadership> {
        for member in 0..self.members.len() {
            self.start_member(member).await?;
        }
        self.wait_for_leader(|_| true, FORM_TIMEOUT).await
    }

    /// Starts member `member` (idempotent) and waits until its admin server listens; it takes
    /// part in ZAB only once a majority of the members runs.
    pub async fn start_member(&self, member: usize) -> anyhow::Result<()> {
        let m = &self.members[member];
        m.start(self)
            .await
            .with_context(|| format!("starting ZooKeeper member {}", m.name))?;
        Ok(())
    }

    /// Restarts one member (after a drill stopped it) and waits until it is back in broadcast.
    pub async fn restart(&self, member: usize) -> anyhow::Result<()> {
        let m = &self.members[member];
        m.start(self).await?;
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        while m.zab_state().await.is_none_or(|s| s.phase != "broadcast") {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "ZooKeeper member {} did not rejoin within {FORM_TIMEOUT:?}; its log ends:\n{}",
                    m.name,
                    process::tail(&m.log_path(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Who leads now: the one member that says it leads, if every member that answers is in
    /// ZAB's broadcast phase; `None` during an election or a synchronisation. The term is the
    /// leader's epoch (a follower reports the epoch of the last zxid it logged, which may be older
    /// until the new leader writes something).
    pub async fn leader(&self) -> Option<Leadership> {
        let mut leader = None;
        for (i, member) in self.members.iter().enumerate() {
            let Some(state) = member.zab_state().await else {
                continue;
            };
            if state.phase != "broadcast" {
                return None;
            }
            if state.is_leader {
                if leader.is_some() {
                    return None;
                }
                leader = Some(Leadership {
                    member: i,
                    term: state.epoch,
                });
            }
        }
        leader
    }

    /// Waits until the ensemble has a leader that `accept` takes; fails after `timeout` with every
    /// member's log tail.
    pub async fn wait_for_leader(
        &self,
        accept: impl Fn(&Leadership) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Leadership> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leadership) = self.leader().await {
                if accept(&leadership) {
                    return Ok(leadership);
                }
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}:\n{}", m.name, process::tail(&m.log_path(), 10)))
                    .collect();
                anyhow::bail!(
                    "ZooKeeper: no agreed leader within {timeout:?}; the logs end:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The data of the znode at `path` as text, read once ([`ZnodeReader::get`] on a session
    /// opened for it).
    pub async fn get(&self, path: &str) -> Option<Option<String>> {
        self.reader().get(path).await
    }

    /// A reader of znodes that keeps its session between reads.
    pub fn reader(&self) -> ZnodeReader {
        ZnodeReader {
            endpoints: self
                .members
                .iter()
                .map(ZooKeeperMember::client_endpoint)
                .collect(),
            session: None,
        }
    }

    /// Stops every member (SIGTERM).
    pub fn stop(&self) -> anyhow::Result<()> {
        for member in self.members.iter().rev() {
            member.stop()?;
        }
        Ok(())
    }
}

/// Reads znodes over one session, kept open between reads: opening a session (and closing or
/// expiring it) is a transaction every member logs, and a watch that reads ten times a second must
/// not add twenty a second to the ensemble it watches, whose members have 0.05 core each. A read
/// that fails drops the session and tries each member in turn on a new one; a session left idle
/// expires on its own (2 s, [`znode`]'s timeout).
pub struct ZnodeReader {
    endpoints: Vec<String>,
    session: Option<znode::Session>,
}

impl ZnodeReader {
    /// The data of the znode at `path` as text, read after a `sync` (a member answers reads from
    /// its own copy, which may trail the leader's; `sync` makes it catch up first): `Some(None)`
    /// if there is no such znode, `None` if no member answered within [`ASK_TIMEOUT`].
    pub async fn get(&mut self, path: &str) -> Option<Option<String>> {
        if let Some(session) = &mut self.session {
            if let Ok(Ok(value)) = tokio::time::timeout(ASK_TIMEOUT, session.read(path)).await {
                return Some(value);
            }
            self.session = None;
        }
        for endpoint in &self.endpoints {
            let opened = async {
                let mut session = znode::Session::open(endpoint).await?;
                let value = session.read(path).await?;
                anyhow::Ok((session, value))
            };
            if let Ok(Ok((session, value))) = tokio::time::timeout(ASK_TIMEOUT, opened).await {
                self.session = Some(session);
                return Some(value);
            }
        }
        None
    }
}

/// Reading znodes over ZooKeeper's client protocol: the least of it, so that the drills can
/// read Patroni's leader key over ZooKeeper as they do over etcd without a client library.
///
/// Every packet either way is a 4-byte big-endian length and then that many bytes of Jute
/// (ZooKeeper's serialisation: big-endian integers, a string or a byte buffer as its 4-byte length
/// and its bytes, a length of -1 for none). A session, then two requests per read:
///
/// ```text
/// client                                              member
/// ConnectRequest (version 0, zxid 0, timeout, session 0, password) ─>
///                                   <─ ConnectResponse (version, timeout, session id, password)
/// sync    (xid n, op 9, path)       ─>   the member catches up with the leader
/// getData (xid n+1, op 4, path, no watch) ─>
///                                   <─ reply to n: xid, zxid, err
///                                   <─ reply to n+1: xid, zxid, err (-101: no such znode), data, stat
/// ```
///
/// A member answers one session's requests in the order sent, so the read comes after the sync.
/// Any request keeps the session alive; a reader that stops reading lets it expire.
mod znode {
    use anyhow::{bail, ensure, Context};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The session asked for, in milliseconds: the member clamps it to its bounds (2 to 20 ticks:
    /// 2 to 20 s here), so the least it allows; a reader's reads keep it alive.
    const SESSION_TIMEOUT_MS: i32 = 2_000;
    /// Operation codes (ZooKeeper's `ZooDefs.OpCode`).
    const OP_GET_DATA: i32 = 4;
    const OP_SYNC: i32 = 9;
    /// The error a read of a missing znode gets (`KeeperException.Code.NONODE`).
    const ERR_NO_NODE: i32 = -101;
    /// The largest packet taken: a leader key holds a member's name; ZooKeeper's own bound on a
    /// znode's data (`jute.maxbuffer`) is 1 MiB.
    const MAX_PACKET: usize = 1 << 20;

    /// One session with one member.
    pub(super) struct Session {
        stream: TcpStream,
        /// The last request's id: a session's requests are numbered, and each reply names one.
        xid: i32,
    }

    impl Session {
        /// Connects to the member at `endpoint` (`address:port`) and opens a session.
        pub(super) async fn open(endpoint: &str) -> anyhow::Result<Self> {
            let mut stream = TcpStream::connect(endpoint).await?;
            stream.set_nodelay(true)?;
            let mut connect = Packet::default();
            connect
                .i32(0)
                .i64(0)
                .i32(SESSION_TIMEOUT_MS)
                .i64(0)
                .bytes(&[0; 16]);
            connect.send(&mut stream).await?;
            let answer = receive(&mut stream).await?;
            let mut fields = Fields(&answer);
            let (_version, timeout) = (fields.i32()?, fields.i32()?);
            ensure!(
                timeout > 0,
                "{endpoint} refused the session (it is not serving)"
            );
            Ok(Session { stream, xid: 0 })
        }

        /// The data of the znode at `path`, after a `sync`.
        pub(super) async fn read(&mut self, path: &str) -> anyhow::Result<Option<String>> {
            let (sync_xid, get_xid) = (self.xid + 1, self.xid + 2);
            self.xid = get_xid;
            let mut sync = Packet::default();
            sync.i32(sync_xid).i32(OP_SYNC).bytes(path.as_bytes());
            sync.send(&mut self.stream).await?;
            let mut get = Packet::default();
            get.i32(get_xid)
                .i32(OP_GET_DATA)
                .bytes(path.as_bytes())
                .u8(0);
            get.send(&mut self.stream).await?;

            let synced = receive(&mut self.stream).await?;
            let mut fields = Fields(&synced);
            let (xid, _zxid, err) = (fields.i32()?, fields.i64()?, fields.i32()?);
            ensure!(
                xid == sync_xid && err == 0,
                "sync answered xid {xid}, error {err}"
            );
            let answer = receive(&mut self.stream).await?;
            let mut fields = Fields(&answer);
            let (xid, _zxid, err) = (fields.i32()?, fields.i64()?, fields.i32()?);
            ensure!(xid == get_xid, "getData answered with xid {xid}");
            match err {
                0 => Ok(Some(
                    String::from_utf8_lossy(fields.bytes()?.unwrap_or_default()).into_owned(),
                )),
                ERR_NO_NODE => Ok(None),
                other => bail!("getData {path} failed with error {other}"),
            }
        }
    }

    /// A packet being written.
    #[derive(Default)]
    struct Packet(Vec<u8>);

    impl Packet {
        fn u8(&mut self, v: u8) -> &mut Self {
            self.0.push(v);
            self
        }
        fn i32(&mut self, v: i32) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(&mut self, v: i64) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn bytes(&mut self, v: &[u8]) -> &mut Self {
            // A path or a password: far below i32::MAX.
            self.i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
            self.0.extend_from_slice(v);
            self
        }
        async fn send(&self, stream: &mut TcpStream) -> anyhow::Result<()> {
            let mut framed = Packet::default();
            framed.bytes(&self.0);
            stream.write_all(&framed.0).await?;
            Ok(())
        }
    }

    /// The next packet's bytes.
    async fn receive(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
        let length = stream.read_i32().await.context("the member closed")?;
        let length = usize::try_from(length).context("a negative packet length")?;
        ensure!(length <= MAX_PACKET, "a packet of {length} bytes");
        let mut packet = vec![0; length];
        stream.read_exact(&mut packet).await?;
        Ok(packet)
    }

    /// A packet being read, field by field.
    struct Fields<'a>(&'a [u8]);

    impl<'a> Fields<'a> {
        fn take<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
            let (head, rest) = self
                .0
                .split_first_chunk::<N>()
                .context("a packet ended early")?;
            self.0 = rest;
            Ok(*head)
        }
        fn i32(&mut self) -> anyhow::Result<i32> {
            Ok(i32::from_be_bytes(self.take()?))
        }
        fn i64(&mut self) -> anyhow::Result<i64> {
            Ok(i64::from_be_bytes(self.take()?))
        }
        /// A buffer, `None` when its length is -1.
        fn bytes(&mut self) -> anyhow::Result<Option<&'a [u8]>> {
            let Ok(length) = usize::try_from(self.i32()?) else {
                return Ok(None);
            };
            ensure!(length <= self.0.len(), "a buffer past the packet's end");
            let (value, rest) = self.0.split_at(length);
            self.0 = rest;
            Ok(Some(value))
        }
    }
}

/// A three-member ensemble for one test, on free ports of 127.0.0.1, in a temporary folder; its
/// members are killed when it is dropped.
pub struct TestZooKeeper {
    /// The ensemble.
    pub ensemble: ZooKeeperEnsemble,
    _dir: tempfile::TempDir,
}

impl TestZooKeeper {
    /// Three members, not started.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("archlab-zookeeper-test")
            .tempdir()
            .context("creating a folder for the test ZooKeeper")?;
        let free = crate::postgres::free_port;
        let members = (1..=3u8)
            .map(|id| {
                Ok(ZooKeeperMember {
                    id,
                    name: format!("zk-{id}"),
                    dir: dir.path().join(format!("zk-{id}")),
                    address: "127.0.0.1".into(),
                    ports: ZooKeeperPorts {
                        client: free()?,
                        quorum: free()?,
                        election: free()?,
                        admin: free()?,
                    },
                    cpu_group: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            ensemble: ZooKeeperEnsemble { members },
            _dir: dir,
        })
    }

    /// Three members, started, with a leader.
    pub async fn start() -> anyhow::Result<Self> {
        let test = Self::new()?;
        test.ensemble.start().await?;
        Ok(test)
    }
}

impl Drop for TestZooKeeper {
    fn drop(&mut self) {
        for member in &self.ensemble.members {
            let _ = member.stop_with(Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The provenance names the installed ZooKeeper (scripts/setup.sh installs Debian's).
    #[test]
    fn the_installed_version_is_named() {
        if !std::path::Path::new(super::CLASSPATH[0]).exists() {
            return;
        }
        let version = super::version().unwrap_or_default();
        assert!(version.starts_with("ZooKeeper 3."), "{version:?}");
    }
}
