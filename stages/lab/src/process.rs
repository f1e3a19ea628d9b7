//! Processes the lab starts, and only those: each is recorded in a PID file together with its
//! start time (field 22 of `/proc/<pid>/stat`), so a PID left behind by a crashed run that the
//! kernel has since given to some other program is recognised as stale and never signalled.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// What a PID file holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PidRecord {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot, from `/proc/<pid>/stat`.
    pub start_ticks: u64,
}

/// Start time of `pid`, or `None` if no such process.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    // After the name, fields start at 3; start time is field 22, so index 19 here.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

impl PidRecord {
    /// The record of a running process.
    pub fn of(pid: i32) -> anyhow::Result<Self> {
        let start_ticks =
            start_ticks(pid).with_context(|| format!("process {pid} is not running"))?;
        Ok(Self { pid, start_ticks })
    }

    /// Whether this exact process is still running (same PID *and* same start time), and not a
    /// zombie waiting to be reaped.
    pub fn is_alive(&self) -> bool {
        if start_ticks(self.pid) != Some(self.start_ticks) {
            return false;
        }
        let state = fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s.get(i + 2..i + 3))
                    .map(str::to_owned)
            });
        state.as_deref() != Some("Z")
    }

    /// Reads a PID file; `None` if there is none.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The process a PID file names, if it is still that very process. A stale file (the process
    /// is gone, or its PID now belongs to another) is removed and `None` returned.
    pub fn running(path: &Path) -> anyhow::Result<Option<Self>> {
        match Self::read(path)? {
            Some(record) if record.is_alive() => Ok(Some(record)),
            Some(_) => {
                tracing::info!(path = %path.display(), "removing a stale PID file");
                let _ = fs::remove_file(path);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Writes a PID file.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        fs::write(path, serde_json::to_string(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Sends `signal` to this very process, if it still runs (no wait).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid), signal) {
            Err(nix::errno::Errno::ESRCH) => Ok(()),
            other => other.with_context(|| format!("signalling {}", self.pid)),
        }
    }

    /// Sends `signal`, then waits up to `patience` for the process to be gone; escalates to
    /// SIGKILL after that. Does nothing if the process is already gone.
    pub fn stop(&self, signal: Signal, patience: Duration) -> anyhow::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid), signal) {
            // Exited between the check and the signal: already stopped.
            Err(nix::errno::Errno::ESRCH) => return Ok(()),
            other => other.with_context(|| format!("signalling {}", self.pid))?,
        }
        if self.wait_gone(patience) {
            return Ok(());
        }
        tracing::warn!(pid = self.pid, "did not stop in time; sending SIGKILL");
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        if self.wait_gone(Duration::from_secs(5)) {
            Ok(())
        } else {
            bail!("process {} did not exit even after SIGKILL", self.pid)
        }
    }

    /// Whether this process has left the process table: exited *and* reaped by its parent. A
    /// zombie has exited but not left, and its PID still answers `kill(pid, 0)`, which is all
    /// some programs (PostgreSQL's lock file check) ask before refusing to start over it.
    pub fn has_left(&self) -> bool {
        start_ticks(self.pid) != Some(self.start_ticks)
    }

    /// Waits up to `patience` until this process [has left](Self::has_left) the process table;
    /// whether it has. A killed service of ours is reaped by its adoptive parent (init) once the
    /// `archlab` that started it has exited, at that parent's pace.
    pub async fn wait_left(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while !self.has_left() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn wait_gone(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if !self.is_alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.is_alive()
    }
}

/// A service process to start in the background.
pub struct Spawn<'a> {
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// Run as this user and group (PostgreSQL refuses root).
    pub user: Option<(u32, u32)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

/// Starts a service: spawns it, writes its PID file to `pid_path`, and waits until `ready` says
/// it answers (see [`wait_until`]: it fails early if the process dies, and shows its log).
pub async fn launch<F, Fut>(
    what: &str,
    service: Spawn<'_>,
    pid_path: &Path,
    timeout: Duration,
    ready: F,
) -> anyhow::Result<PidRecord>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let log = service.log.clone();
    let record = spawn(service)?;
    record.write(pid_path)?;
    wait_until(what, &record, &log, timeout, ready).await?;
    Ok(record)
}

/// A service of ours that answers HTTP (the app, the gateway): started inside its host's CPU
/// group (if any), with its log, working folder and PID file under `dir`, ready once `ready_url`
/// answers 2xx.
pub struct HttpService<'a> {
    /// What it is, for messages.
    pub what: &'a str,
    /// Its binary.
    pub bin: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its settings, as environment variables.
    pub env: Vec<(String, String)>,
    /// Working folder; holds nothing else of ours but what the caller names below.
    pub dir: &'a Path,
    /// Log file.
    pub log: PathBuf,
    /// PID file.
    pub pid_path: PathBuf,
    /// The host's CPU group.
    pub cpu_group: Option<&'a Path>,
    /// `address:port` it will listen on (must be free).
    pub listen: (&'a str, u16),
    /// Its readiness URL.
    pub ready_url: String,
    /// How long it may take to become ready.
    pub timeout: Duration,
}

impl HttpService<'_> {
    /// Starts it and waits until it is ready.
    pub async fn launch(self) -> anyhow::Result<PidRecord> {
        ensure_free(self.what, self.listen.0, self.listen.1)?;
        let (program, args, _) = crate::budget::wrap(self.cpu_group, None, self.bin, self.args);
        let service = Spawn {
            program: &program,
            args,
            env: self.env,
            log: self.log,
            user: None,
            cwd: Some(self.dir.to_path_buf()),
        };
        let client = crate::lab::http_client()?;
        let url = self.ready_url;
        launch(self.what, service, &self.pid_path, self.timeout, || {
            let request = client.get(&url).send();
            async move { matches!(request.await, Ok(r) if r.status().is_success()) }
        })
        .await
    }
}

/// Whether `url` answers with a 2xx now (a readiness or health route).
pub async fn answers(url: &str) -> bool {
    let Ok(client) = crate::lab::http_client() else {
        return false;
    };
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Stops the process recorded at `pid_path`, if it runs, with `signal` (waiting up to
/// `patience` for it to go), and removes the record.
pub fn stop_recorded(pid_path: &Path, signal: Signal, patience: Duration) -> anyhow::Result<()> {
    if let Some(record) = PidRecord::running(pid_path)? {
        record.stop(signal, patience)?;
    }
    let _ = std::fs::remove_file(pid_path);
    Ok(())
}

/// Starts a process in its own process group (a Ctrl-C in the terminal that ran `archlab up`
/// does not reach it), detached from our stdin, logging to a file; returns its record.
///
/// The child is reaped by a background thread so it never lingers as a zombie while this process
/// lives; once this process exits, init adopts it.
pub fn spawn(spec: Spawn<'_>) -> anyhow::Result<PidRecord> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening log {}", spec.log.display()))?;
    if let Some((uid, gid)) = spec.user {
        nix::unistd::chown(&spec.log, Some(uid.into()), Some(gid.into()))
            .with_context(|| format!("handing {} to uid {uid}", spec.log.display()))?;
    }
    let mut command = Command::new(spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    if let Some((uid, gid)) = spec.user {
        command.uid(uid).gid(gid);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", spec.program.display()))?;
    let pid = child.id() as i32;
    // Read the start time *before* anything can reap the child: until it is waited for, the PID
    // cannot be reused, so this record names our child and no other process.
    let record = PidRecord::of(pid);
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    record
}

/// Polls `check` every 50 ms until it returns true, the process dies, or `timeout` passes.
pub async fn wait_until<F, Fut>(
    what: &str,
    process: &PidRecord,
    log: &Path,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // Ready only if *our* process is still alive: something else answering on the address
        // (another lab, say) is not our service.
        if check().await && process.is_alive() {
            return Ok(());
        }
        if !process.is_alive() {
            bail!(
                "{what} exited during start-up; last lines of {}:\n{}",
                log.display(),
                tail(log, 15)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not ready after {timeout:?}; last lines of {}:\n{}",
                log.display(),
                tail(log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails if something already accepts connections on `address:port`: starting a service there
/// would fail to bind, and a readiness check would talk to the other process.
pub fn ensure_free(what: &str, address: &str, port: u16) -> anyhow::Result<()> {
    let target = format!("{address}:{port}");
    let Ok(addr) = target.parse::<std::net::SocketAddr>() else {
        return Ok(());
    };
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        bail!(
            "{what}: {target} is already in use by another process (another lab on the same \
             network? use --net to pick another, or stop it)"
        );
    }
    Ok(())
}

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_changed_start_time_is_stale() {
        let me = PidRecord::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let reused = PidRecord {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(
            !reused.is_alive(),
            "a PID with another start time is someone else"
        );
    }

    #[test]
    fn a_spawned_process_is_stopped_by_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let record = spawn(Spawn {
            program: Path::new("/bin/sleep"),
            args: vec!["30".into()],
            env: vec![],
            log: dir.path().join("sleep.log"),
            user: None,
            cwd: None,
        })
        .unwrap();
        assert!(record.is_alive());
        record
            .stop(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap();
        assert!(!record.is_alive());
    }

    /// What PostgreSQL's start trips over: a killed process not yet reaped is no longer alive,
    /// yet has not left the process table; once reaped, it has.
    #[tokio::test]
    async fn a_killed_process_leaves_only_once_it_is_reaped() {
        let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let record = PidRecord::of(child.id() as i32).unwrap();
        kill(Pid::from_raw(record.pid), Signal::SIGKILL).unwrap();
        // Not reaped: a zombie, dead but still in the table.
        let zombie = async {
            while record.is_alive() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), zombie)
            .await
            .unwrap();
        assert!(!record.has_left());
        assert!(!record.wait_left(Duration::from_millis(100)).await);
        child.wait().unwrap();
        assert!(record.wait_left(Duration::from_secs(10)).await);
    }
}
