//! The cache host of stage 3 on: a real `redis-server`, started, checked and stopped by the lab.
//!
//! It runs as a plain cache: nothing is saved to disk (`--save ''`, no append-only file), so a
//! restarted Redis starts empty, as a crashed cache node does; and it has a memory bound with an
//! eviction policy, so it can never grow without limit, whatever clients ask for.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{self, PidRecord, Spawn};

/// Redis's standard port; every cache host keeps it on its own address.
pub const CACHE_PORT: u16 = 6379;
/// Memory Redis may use for entries before it evicts. The default data set's entries are
/// 10,000 articles of a few kilobytes of JSON each, 1,000 small profiles and a few dozen lists:
/// tens of megabytes. 256 MB leaves room for a data set several times larger, and still bounds
/// what a flood of distinct keys (cached "not found" answers for made-up names) can take.
const MAX_MEMORY: &str = "256mb";
/// When full, evict the least recently used entries, whatever they are: every entry here can be
/// loaded again from the database, so any of them may go.
const EVICTION: &str = "allkeys-lru";
/// Redis is ready in about 20 ms; 10 s only trips on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One Redis server: its folder and address.
#[derive(Debug, Clone)]
pub struct CacheServer {
    /// Holds the log and the PID file.
    pub dir: PathBuf,
    /// Its loopback address.
    pub address: String,
    /// Its port ([`CACHE_PORT`] in the lab; tests pick a free one).
    pub port: u16,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

fn redis_bin() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    anyhow::bail!(
        "redis-server not found: run scripts/setup.sh (Debian/Ubuntu: apt-get install redis-server)"
    )
}

impl CacheServer {
    /// A server in `dir` listening on `address:port`, without a CPU budget.
    pub fn new(dir: impl Into<PathBuf>, address: impl Into<String>, port: u16) -> Self {
        Self {
            dir: dir.into(),
            address: address.into(),
            port,
            cpu_group: None,
        }
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("redis.pid.json")
    }

    /// The URL the app hosts use.
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.address, self.port)
    }

    /// The running server's record, if running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts Redis (idempotent) and waits until it answers `PING`.
    pub async fn start(&self) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        process::ensure_free("the cache", &self.address, self.port)?;
        fs::create_dir_all(&self.dir)?;
        let args: Vec<String> = [
            "--bind",
            &self.address,
            "--port",
            &self.port.to_string(),
            "--dir",
            &self.dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            MAX_MEMORY,
            "--maxmemory-policy",
            EVICTION,
            "--daemonize",
            "no",
            // Only loopback clients exist here, and the lab starts it with no password.
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (program, args, user) =
            crate::budget::wrap(self.cpu_group.as_deref(), None, &redis_bin()?, args);
        let service = Spawn {
            program: &program,
            args,
            env: vec![],
            log: self.log_path(),
            user,
            cwd: Some(self.dir.clone()),
        };
        let (address, port) = (self.address.clone(), self.port);
        process::launch("redis", service, &self.pid_path(), START_TIMEOUT, || {
            let (address, port) = (address.clone(), port);
            async move { ping(&address, port).await }
        })
        .await
    }

    /// Whether it answers `PING` now.
    pub async fn healthy(&self) -> bool {
        ping(&self.address, self.port).await
    }

    /// Stops Redis (SIGTERM: it closes its clients and exits; nothing to save).
    pub fn stop(&self) -> anyhow::Result<()> {
        if let Some(record) = self.running()? {
            record.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        }
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }
}

/// `PING` over a fresh connection, answered `+PONG` within a second.
async fn ping(address: &str, port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((address, port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        anyhow::Ok(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// A Redis server for one test, on a free port, in a temporary folder; stopped when dropped.
pub struct TestRedis {
    /// The server.
    pub server: CacheServer,
    _dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts a fresh, empty server.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("archlab-redis-test")
            .tempdir()
            .context("creating a folder for the test Redis")?;
        let port = crate::postgres::free_port()?;
        let server = CacheServer::new(dir.path().join("redis"), "127.0.0.1", port);
        server.start().await?;
        Ok(Self { server, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.server.stop();
    }
}
