//! A streaming replica of a lab PostgreSQL server: the building block of stage 5's replica hosts.
//!
//! A replica is a second PostgreSQL server that starts as a copy of the primary's data directory
//! (`pg_basebackup`) and then replays the primary's write-ahead log as it is written, over one
//! replication connection. It answers reads (hot standby) and refuses writes. Three choices, each
//! the usual one:
//!
//! - `pg_basebackup -X stream -c fast -R`: the copy streams the WAL written while it runs, starts
//!   from a checkpoint taken at once, and writes `standby.signal` and `primary_conninfo`, so the
//!   copied server starts as a standby of the primary;
//! - a physical replication slot per replica (`-S`, created first): the primary keeps the WAL a
//!   replica has not received yet, so a replica that was down catches up instead of needing a new
//!   copy. The price: a replica gone for good makes the primary keep WAL for ever, so the lab
//!   drops a replica's slot when it deletes the replica;
//! - `application_name` = the replica's name, so the primary's `pg_stat_replication` says which
//!   replica is how far behind.
//!
//! How far behind a replica is: [`replay_lag`] compares the primary's current WAL position with
//! what the replica has replayed (bytes), and says how long ago the replica replayed its last
//! transaction.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context};
use sqlx::{Connection, PgConnection};

use crate::{
    postgres::{bin_dir, server_user, PostgresServer},
    process::PidRecord,
};

/// How long the base backup may take. A lab database is tens of megabytes, copied in about a
/// second here (LAB-NOTES: primary and replica in about 2.5 s); a minute only trips on a broken
/// copy, on any machine this project runs on.
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One replica: its own server, the primary it follows, and its name (slot and
/// `application_name`).
#[derive(Debug, Clone)]
pub struct ReplicaServer {
    /// The replica's own server (folder, address, port, CPU group).
    pub server: PostgresServer,
    /// The primary it copies and follows.
    pub primary: PostgresServer,
    /// Its name: the replication slot on the primary and its `application_name` there.
    /// Letters, digits and `_` only (a slot name's rule).
    pub name: String,
}

impl ReplicaServer {
    /// Starts the replica, copying the primary first if it has no data yet; waits until it
    /// accepts connections. Idempotent, as [`PostgresServer::start`].
    pub async fn start(&self) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.server.running()? {
            return Ok(record);
        }
        if !self.server.data_dir().join("PG_VERSION").exists() {
            self.copy_primary().await?;
        }
        self.server.start(&[]).await
    }

    /// Creates the replica's slot on the primary (unless it exists) and copies the primary's
    /// data directory into the replica's folder as a standby.
    async fn copy_primary(&self) -> anyhow::Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("replica name {:?}: letters, digits and _ only", self.name);
        }
        let mut conn =
            PgConnection::connect_with(&self.primary.connect_options("postgres", "postgres"))
                .await
                .context("connecting to the primary")?;
        sqlx::query(
            "SELECT pg_create_physical_replication_slot($1) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        )
        .bind(&self.name)
        .execute(&mut conn)
        .await
        .context("creating the replication slot")?;
        conn.close().await?;

        let user = server_user()?;
        self.server.prepare_dirs(user)?;
        let data = self.server.data_dir();
        let mut command = Command::new(bin_dir()?.join("pg_basebackup"));
        command
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--wal-method=stream",
                "--checkpoint=fast",
                "--write-recovery-conf",
            ])
            .arg(format!("--slot={}", self.name))
            // Persisted by --write-recovery-conf into primary_conninfo.
            .arg(format!(
                "--dbname=host={} port={} user=postgres application_name={}",
                self.primary.address, self.primary.port, self.name
            ));
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let output = tokio::time::timeout(
            BASEBACKUP_TIMEOUT,
            tokio::process::Command::from(command).output(),
        )
        .await
        .with_context(|| format!("pg_basebackup took over {BASEBACKUP_TIMEOUT:?}"))?
        .context("running pg_basebackup")?;
        if !output.status.success() {
            // Half a copy is no replica: the next start copies again.
            let _ = std::fs::remove_dir_all(&data);
            bail!(
                "pg_basebackup failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Stops the replica (fast shutdown). Its slot stays: it catches up when started again.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.server.stop()
    }

    /// Stops the replica, deletes its data and drops its slot on the primary, which would
    /// otherwise keep WAL for it for ever.
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.stop()?;
        let dir: PathBuf = self.server.dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let mut conn =
            PgConnection::connect_with(&self.primary.connect_options("postgres", "postgres"))
                .await
                .context("connecting to the primary")?;
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
        )
        .bind(&self.name)
        .execute(&mut conn)
        .await
        .context("dropping the replication slot")?;
        Ok(())
    }
}

/// How far a replica is behind its primary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// WAL the primary has written that the replica has not replayed yet.
    pub bytes: u64,
    /// Time since the replica replayed its last transaction: the staleness of its newest row
    /// while the primary is writing (on an idle primary it only grows, and means nothing).
    pub since_last_replay: Option<Duration>,
}

/// The replica's lag behind `primary`: two reads, the primary's WAL position first, so the lag
/// is never under-reported.
pub async fn replay_lag(primary: &PostgresServer, replica: &PostgresServer) -> anyhow::Result<Lag> {
    let mut p = PgConnection::connect_with(&primary.connect_options("postgres", "postgres"))
        .await
        .context("connecting to the primary")?;
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut p)
        .await?;
    let mut r = PgConnection::connect_with(&replica.connect_options("postgres", "postgres"))
        .await
        .context("connecting to the replica")?;
    let (bytes, seconds): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn())::float8, \
                extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
    )
    .bind(&written)
    .fetch_one(&mut r)
    .await?;
    Ok(Lag {
        bytes: bytes.unwrap_or(0.0).max(0.0) as u64,
        since_last_replay: seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
    })
}
