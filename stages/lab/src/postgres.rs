//! A real PostgreSQL server as a local process: `initdb` into a folder the lab owns, `postgres`
//! started on one loopback address, stopped by its PID.
//!
//! PostgreSQL refuses to run as root, so when the lab runs as root, every PostgreSQL process runs
//! as the `postgres` OS user (created by Debian's package) and every folder it writes is handed to
//! that user. The server binaries come from `pg_config --bindir`, the newest
//! `/usr/lib/postgresql/<version>/bin`, or `ARCHLAB_PG_BIN`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, PgConnection};

use crate::process::{self, PidRecord, Spawn};

/// How long a start may take: `initdb` about 1 s and start-up 0.1 s on the reference machine
/// (LAB-NOTES), so 60 s only trips on a real failure (crash recovery of a large WAL included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A fast shutdown (SIGINT) rolls back open transactions and checkpoints; 30 s is plenty here.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// Settings every lab server starts with, before the caller's own.
///
/// `pg_stat_statements` is always on: production databases run it (it is how an operator finds
/// the statement that costs the most), its overhead is small (a hash-table update per statement),
/// and it lets `scripts/bench/db_cost.py` measure the database time per operation on any stage
/// without restarting the server. Debian's `postgresql-15` package ships the module, so no
/// extra package is needed. `track = top` counts the statements the app sends, not the ones run
/// inside functions they call (`next_id()`), so each row's time is the whole of one app
/// statement and the shares add up. Loading it needs a server start; the view itself needs
/// `CREATE EXTENSION`, which [`PostgresServer::ensure_database`] does. `track_utility = off`:
/// stage 7's two-phase commit sends `PREPARE TRANSACTION '<gid>'` and `COMMIT PREPARED '<gid>'`
/// with a new gid every time, and PostgreSQL 15 keeps each as a statement of its own: 321 new
/// entries in one minute at 100 req/s on two shards (2026-12-04), so a long run fills the view's
/// 5,000 and it then evicts (a sort of every entry under an exclusive lock) again and again.
/// What is left out is BEGIN, COMMIT and the like, which cost next to nothing to execute.
///
/// `max_prepared_transactions` allows stage 7's two-phase commit (PostgreSQL's default, 0,
/// refuses `PREPARE TRANSACTION`). A branch is prepared for the few milliseconds between its
/// PREPARE and its COMMIT PREPARED, one per app connection at most, and stays prepared longer
/// only when its coordinator died: 64 is past the app's connections to one shard (8 per app
/// process, two or three processes) with room for orphans awaiting recovery; the 65th gets a
/// clear error and its transaction is rolled back. Each slot costs some shared memory (it widens
/// the lock table), which is why the default is 0. Every server gets it, because a replica must
/// allow at least as many as its primary.
///
/// `log_autovacuum_min_duration = 0` logs every pass of autovacuum (a vacuum or an analyze of a
/// table) with its duration and CPU. They come unasked, once a minute per server at most, and on
/// a 0.1-core host a pass takes the budget for a while: stage 7's write-heavy sweeps stalled in
/// seconds that matched each shard's passes (stages/07-distributed/README.md, "What sets the
/// knee"), and the log is how a stall is matched to one. A few lines a minute.
///
/// `random_page_cost = 1.1` (PostgreSQL's default is 4, a disk whose random reads cost four
/// sequential ones): every lab database is small enough to stay in memory (the seeded data set
/// is tens of megabytes; `db_cost.py`'s runs read no block from outside shared buffers), so an
/// index probe costs about what a page of a scan costs. With 4 the planner preferred scanning
/// and hashing a whole small table to a few index probes: a stage 7 shard holds a quarter of the
/// users (250 rows, 7 pages), and fetching one article with its author hashed all 250
/// (19 buffers and 0.28 ms a call, against 6 buffers and 0.08 ms on the unsharded database;
/// stages/07-distributed/MEASUREMENTS.md, "Small tables, other plans"). 1.1 is the usual setting for
/// data held in RAM or on SSDs, and is true here for every stage, so every server gets it.
pub(crate) const BASE_SETTINGS: [(&str, &str); 6] = [
    ("shared_preload_libraries", "pg_stat_statements"),
    ("pg_stat_statements.track", "top"),
    ("pg_stat_statements.track_utility", "off"),
    ("max_prepared_transactions", "64"),
    ("log_autovacuum_min_duration", "0"),
    ("random_page_cost", "1.1"),
];

/// Where the PostgreSQL server binaries are.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("ARCHLAB_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries not found. Install them (Debian/Ubuntu: `scripts/setup.sh`, \
         or `apt-get install postgresql`), or point ARCHLAB_PG_BIN at the folder holding `postgres`."
    )
}

/// The OS user PostgreSQL runs as: ourselves, or `postgres` when we are root.
pub fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("looking up the postgres user")?
        .context(
            "running as root, and there is no `postgres` OS user to run PostgreSQL as \
             (PostgreSQL refuses root). Install the postgresql package, which creates it.",
        )?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// The OS user a stage 8 database host's processes (Patroni, its PostgreSQL) run as when we are
/// root: one per host, `archlab-<host>`, made on first use. On loopback every connection a host
/// opens leaves from 127.0.0.1, whatever its own address, so only the owner of a packet tells
/// which host sent it: that is how a drill cuts one host off (`iptables -m owner`,
/// [`crate::partition`]). Not root: ourselves, as for any server.
pub fn host_user(host: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = format!("archlab-{host}");
    anyhow::ensure!(
        name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{name:?} cannot be an OS user name"
    );
    // Two starts at once may both add it (useradd then fails for one, or finds /etc/passwd
    // locked): looked up again after each try.
    for _ in 0..10 {
        if let Some(user) = nix::unistd::User::from_name(&name)? {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
        let output = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
            .arg(&name)
            .output()
            .context("running useradd")?;
        if !output.status.success() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let user = nix::unistd::User::from_name(&name)?
        .with_context(|| format!("could not add the OS user {name} (useradd)"))?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// Hands `dir` and everything in it to `user` if `owned` (a file in it) belongs to someone else:
/// a data folder made before its host had a user of its own.
pub(crate) fn hand_over(dir: &Path, owned: &Path, user: Option<(u32, u32)>) -> anyhow::Result<()> {
    let Some((uid, gid)) = user else {
        return Ok(());
    };
    match fs::metadata(owned) {
        Ok(meta) if std::os::unix::fs::MetadataExt::uid(&meta) != uid => chown_tree(dir, uid, gid),
        _ => Ok(()),
    }
}

/// One PostgreSQL server: its folders, address and process.
#[derive(Debug, Clone)]
pub struct PostgresServer {
    /// The folder holding `data/`, `socket/`, the log and the PID file.
    pub dir: PathBuf,
    /// The loopback address it listens on.
    pub address: String,
    /// Its TCP port.
    pub port: u16,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

impl PostgresServer {
    /// A server living in `dir`, listening on `address:port`.
    pub fn new(dir: impl Into<PathBuf>, address: impl Into<String>, port: u16) -> Self {
        let dir = dir.into();
        Self {
            // Absolute: the server runs with its own working folder.
            dir: std::path::absolute(&dir).unwrap_or(dir),
            address: address.into(),
            port,
            cpu_group: None,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The PID file.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("postgres.pid.json")
    }

    /// A URL for `user` on `database`.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@{}:{}/{database}",
            self.address, self.port
        )
    }

    /// Creates the cluster unless it exists. Trust authentication on loopback only: this is a lab
    /// on one machine; a real system would use scram-sha-256 with a password per service.
    pub fn init(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        if data.join("PG_VERSION").exists() {
            return Ok(());
        }
        let user = server_user()?;
        self.prepare_dirs(user)?;
        let initdb = bin_dir()?.join("initdb");
        let mut command = Command::new(&initdb);
        command
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            // initdb's own fsyncs only; the running server keeps fsync on.
            .arg("--no-sync");
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let out = command
            .output()
            .with_context(|| format!("running {}", initdb.display()))?;
        if !out.status.success() {
            bail!(
                "initdb failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Connections from any loopback address (each lab host has its own).
        let hba = data.join("pg_hba.conf");
        let mut text = fs::read_to_string(&hba).context("reading pg_hba.conf")?;
        // Streaming replicas (stage 5 on) connect for `replication`, which `all` does not cover.
        text.push_str("\n# archlab: every lab host has its own 127.x.y.z address\nhost all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n");
        fs::write(&hba, text).context("writing pg_hba.conf")?;
        Ok(())
    }

    pub(crate) fn prepare_dirs(&self, user: Option<(u32, u32)>) -> anyhow::Result<()> {
        for dir in [self.dir.clone(), self.dir.join("socket")] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = user {
                nix::unistd::chown(&dir, Some(uid.into()), Some(gid.into()))
                    .with_context(|| format!("handing {} to the postgres user", dir.display()))?;
            }
        }
        if let Some((uid, _)) = user {
            check_reachable(&self.dir, uid)?;
        }
        Ok(())
    }

    /// The PID in the first line of the data directory's `postmaster.pid`: PostgreSQL's own
    /// record of the last postmaster to start here (left behind by one that was killed). It may
    /// name a process long gone, or one that has since taken the PID: callers check.
    pub fn lock_file_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The running server's record, if it is running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts the server (initialising it first if needed) and waits until it accepts
    /// connections. Idempotent: an already running server is left as it is.
    pub async fn start(&self, extra_settings: &[(&str, String)]) -> anyhow::Result<PidRecord> {
        self.init()?;
        // A server killed a moment ago (a drill, a crash) may still be a zombie its adoptive
        // parent has not reaped yet; PostgreSQL takes any PID it can signal for a live postmaster
        // and refuses to start ("lock file \"postmaster.pid\" already exists"). Seen in CI a
        // second after a replica was killed. Found by PostgreSQL's own lock file, not the lab's
        // PID file, which any look at a stale record (`running`) removes.
        let previous = self.lock_file_pid().and_then(|pid| PidRecord::of(pid).ok());
        if let Some(previous) = previous {
            if !previous.is_alive() && !previous.wait_left(STOP_PATIENCE).await {
                bail!(
                    "the previous PostgreSQL in {} (PID {}) has exited but its parent has not \
                     reaped it after {STOP_PATIENCE:?}; PostgreSQL will not start over it",
                    self.dir.display(),
                    previous.pid
                );
            }
        }
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        process::ensure_free("PostgreSQL", &self.address, self.port)?;
        let user = server_user()?;
        self.prepare_dirs(user)?;
        let mut args: Vec<String> = vec!["-D".into(), self.data_dir().display().to_string()];
        let settings: Vec<(&str, String)> = [
            ("listen_addresses", self.address.clone()),
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                self.dir.join("socket").display().to_string(),
            ),
        ]
        .into_iter()
        .chain(BASE_SETTINGS.iter().map(|(k, v)| (*k, v.to_string())))
        .chain(extra_settings.iter().cloned())
        .collect();
        for (key, value) in settings {
            args.push("-c".into());
            args.push(format!("{key}={value}"));
        }
        let (program, args, user) = crate::budget::wrap(
            self.cpu_group.as_deref(),
            user,
            &bin_dir()?.join("postgres"),
            args,
        );
        let service = Spawn {
            program: &program,
            args,
            env: vec![],
            log: self.log_path(),
            user,
            cwd: Some(self.dir.clone()),
        };
        let options = self.connect_options("postgres", "postgres");
        process::launch(
            "PostgreSQL",
            service,
            &self.pid_path(),
            START_TIMEOUT,
            || {
                let options = options.clone();
                async move { PgConnection::connect_with(&options).await.is_ok() }
            },
        )
        .await
    }

    /// Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit). No-op if stopped.
    pub fn stop(&self) -> anyhow::Result<()> {
        if let Some(record) = self.running()? {
            record.stop(Signal::SIGINT, STOP_PATIENCE)?;
        }
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }

    /// Connection options for `user` on `database`.
    pub fn connect_options(&self, user: &str, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host(&self.address)
            .port(self.port)
            .username(user)
            .database(database)
            .log_statements(tracing::log::LevelFilter::Trace)
            // The lab's own statements (CREATE DATABASE, a readiness probe) can take seconds on
            // a busy machine; that is not worth a warning in every command's output.
            .log_slow_statements(
                tracing::log::LevelFilter::Debug,
                std::time::Duration::from_secs(1),
            )
    }

    /// Creates a login role and a database it owns, unless they exist, with the
    /// `pg_stat_statements` view in it (creating an extension needs the superuser; the app's role
    /// is not one).
    pub async fn ensure_database(&self, role: &str, database: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres", "postgres"))
            .await
            .context("connecting as the postgres superuser")?;
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut conn)
                .await?;
        if !role_exists {
            // Identifiers cannot be bound as parameters; quote_ident makes them safe.
            let sql: String = sqlx::query_scalar("SELECT format('CREATE ROLE %I LOGIN', $1::text)")
                .bind(role)
                .fetch_one(&mut conn)
                .await?;
            sqlx::raw_sql(&sql).execute(&mut conn).await?;
        }
        let db_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&mut conn)
                .await?;
        if !db_exists {
            let sql: String = sqlx::query_scalar(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
            )
            .bind(database)
            .bind(role)
            .fetch_one(&mut conn)
            .await?;
            sqlx::raw_sql(&sql).execute(&mut conn).await?;
        }
        conn.close().await?;
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres", database))
            .await
            .with_context(|| format!("connecting to {database} as the postgres superuser"))?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await
            .context("creating the pg_stat_statements extension")?;
        Ok(())
    }
}

/// PostgreSQL running as `uid` must be able to reach `dir`: every ancestor must let others
/// through (the execute bit). A state folder under `/root` fails this; say so plainly.
fn check_reachable(dir: &Path, uid: u32) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        let mode = meta.permissions().mode();
        let owner = std::os::unix::fs::MetadataExt::uid(&meta);
        if owner != uid && mode & 0o001 == 0 {
            bail!(
                "PostgreSQL runs as the `postgres` user, which cannot enter {} (mode {:o}). \
                 Choose a state folder it can reach, e.g. `--state-dir /var/lib/archlab`.",
                ancestor.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// A throwaway PostgreSQL server for tests: its own folder and a free port on 127.0.0.1, removed
/// when dropped. `initdb` runs once per test process; each server copies that template.
pub struct TestPostgres {
    /// The server.
    pub server: PostgresServer,
    _dir: tempfile::TempDir,
}

/// The template's data folder: made once per test process, in a folder named after the process.
static TEMPLATE: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// Names of template folders: this prefix, the test process's PID, a dash.
const TEMPLATE_PREFIX: &str = "archlab-pg-template-";

/// Removes the template folders of test processes that have ended. A static is never dropped, so
/// a process cannot remove its own template; the next test process does (40 MB each otherwise
/// pile up in the temporary folder, one per test binary run).
fn remove_ended_templates(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPLATE_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl TestPostgres {
    /// Starts a fresh server and creates database `conduit` owned by role `conduit`.
    pub async fn start() -> anyhow::Result<Self> {
        let template = TEMPLATE
            .get_or_try_init(|| async {
                remove_ended_templates(&std::env::temp_dir());
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{TEMPLATE_PREFIX}{}-", std::process::id()))
                    .tempdir()?
                    .keep();
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                let server = PostgresServer::new(dir.join("pg"), "127.0.0.1", 0);
                server.init()?;
                anyhow::Ok(server.data_dir())
            })
            .await?;
        let dir = tempfile::Builder::new()
            .prefix("archlab-pg-test")
            .tempdir()?;
        // The postgres user (when we are root) must be able to enter it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let port = free_port()?;
        let server = PostgresServer::new(dir.path().join("pg"), "127.0.0.1", port);
        let user = server_user()?;
        server.prepare_dirs(user)?;
        copy_dir(template, &server.data_dir(), user)?;
        // Tests want speed, not durability: a crash of a test server loses nothing we need.
        server
            .start(&[
                ("fsync", "off".into()),
                ("synchronous_commit", "off".into()),
            ])
            .await?;
        server.ensure_database("conduit", "conduit").await?;
        Ok(Self { server, _dir: dir })
    }

    /// URL of the `conduit` database as the `conduit` role.
    pub fn url(&self) -> String {
        self.server.url("conduit", "conduit")
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Ok(Some(record)) = self.server.running() {
            // Immediate shutdown: the data is thrown away anyway.
            let _ = record.stop(Signal::SIGQUIT, Duration::from_secs(10));
        }
    }
}

/// The lowest port a test server may be given: above the ports services are known by.
const TEST_PORTS_FROM: u32 = 10_000;

/// A port for a test server (PostgreSQL, Redis) that is free now and that nothing else in this
/// process is handed: the servers cannot take port 0 and report what they got, so the port is
/// chosen first and the server started on it.
///
/// Not a port from the kernel (`bind` to port 0): those come from the ephemeral range, which is
/// also where every outgoing connection takes its local port, and on a busy test run one of the
/// tests' own client connections took such a port between this check and the server's start
/// (`scripts/test --busy`, "127.0.0.1:42207 is already in use"). So the port comes from below
/// the ephemeral range, where nothing is handed out unasked, and a counter walks it from a
/// per-process starting point, so that tests of one process never get the same port twice.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = ephemeral_ports_from();
    let span = ephemeral_from.saturating_sub(TEST_PORTS_FROM).max(1);
    // Test binaries run one after another, but a second `cargo test` may run beside this one:
    // start each process somewhere else in the range.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(TEST_PORTS_FROM + offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port for a test server between {TEST_PORTS_FROM} and {ephemeral_from}")
}

/// The first port of the kernel's ephemeral range (Linux's default if it cannot be read).
fn ephemeral_ports_from() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn copy_dir(from: &Path, to: &Path, user: Option<(u32, u32)>) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("copying the template cluster")?;
    if !status.success() {
        bail!("copying {} to {} failed", from.display(), to.display());
    }
    match user {
        Some((uid, gid)) => chown_tree(to, uid, gid),
        None => Ok(()),
    }
}

/// `chown -R uid:gid dir`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("chown of {} failed", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ports_are_distinct_and_below_the_ephemeral_range() {
        let ephemeral_from = ephemeral_ports_from();
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "no port handed out twice");
        assert!(ports
            .iter()
            .all(|&p| (TEST_PORTS_FROM..ephemeral_from).contains(&u32::from(p))));
    }

    /// Docker Compose's database hosts cannot read this file, so they repeat the settings:
    /// every one of them must be there, with the same value (a setting added here and not
    /// there would make the two ways of running a stage measure different servers).
    #[test]
    fn compose_database_hosts_start_with_the_same_base_settings() {
        let images =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose/images");
        let entrypoint = fs::read_to_string(images.join("database-entrypoint.sh")).unwrap();
        let patroni = fs::read_to_string(images.join("patroni.yml")).unwrap();
        for (name, value) in BASE_SETTINGS {
            assert!(
                entrypoint.contains(&format!("-c {name}={value} ")),
                "database-entrypoint.sh lacks -c {name}={value}"
            );
            assert!(
                patroni.lines().any(|line| {
                    line.trim()
                        .strip_prefix(&format!("{name}:"))
                        .is_some_and(|v| v.trim().trim_matches('\'') == value)
                }),
                "patroni.yml lacks {name}: {value}"
            );
        }
    }
}
