//! Test support: a lab in its own state folder on its own loopback network, driven through the
//! `archlab` binary and brought down when dropped (also when a test fails), so tests never
//! disturb each other or a developer's own lab.

#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The `conduit` binary built beside `archlab` (`cargo build` first; `scripts/test` does).
pub fn conduit_bin() -> PathBuf {
    let conduit = Path::new(env!("CARGO_BIN_EXE_archlab")).with_file_name("conduit");
    assert!(
        conduit.exists(),
        "build the workspace first: {} is missing",
        conduit.display()
    );
    conduit
}

/// A temporary state folder the `postgres` user (when tests run as root) can enter.
pub fn state_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// A network octet no other test binary uses at the same time: `base` plus our PID, in `span`.
pub fn net(base: u32, span: u32) -> String {
    (base + std::process::id() % span).to_string()
}

/// Held by every test that brings a stage up: tests that load the machine never run at once,
/// whichever test binary or thread they are in (cargo runs a binary's tests in parallel), so a
/// drill never shares the machine with another stage's load. A file lock (`flock`) in the temp
/// folder, released when the guard drops, also when a test panics.
pub struct MachineLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Waits for, and takes, the [`MachineLock`].
pub fn machine_lock() -> MachineLock {
    let path = std::env::temp_dir().join("archlab-tests-machine.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    MachineLock(lock)
}

/// A lab under test.
pub struct TestLab {
    pub state: tempfile::TempDir,
    pub net: String,
    _machine: Option<MachineLock>,
}

impl TestLab {
    /// A lab of its own; waits until no other lab test loads the machine.
    pub fn new(prefix: &str, net: String) -> Self {
        let machine = machine_lock();
        Self {
            state: state_dir(prefix),
            net,
            _machine: Some(machine),
        }
    }

    /// A second lab inside a test that already holds the machine (no lock of its own).
    pub fn beside(prefix: &str, net: String) -> Self {
        Self {
            state: state_dir(prefix),
            net,
            _machine: None,
        }
    }

    /// Runs `archlab` with this lab's state folder and network; success and all output.
    pub fn archlab(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_archlab"))
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["--net", &self.net])
            .args(args)
            .env("ARCHLAB_CONDUIT_BIN", conduit_bin())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `archlab up STAGE`; returns the endpoint its last line names.
    pub fn up(&self, stage: &str) -> String {
        self.up_with(stage, &[])
    }

    /// `archlab up <stage> <extra…>` (e.g. `--app-hosts 3`); returns the endpoint.
    pub fn up_with(&self, stage: &str, extra: &[&str]) -> String {
        let args: Vec<&str> = ["up", stage].iter().chain(extra).copied().collect();
        let (ok, out) = self.archlab(&args);
        assert!(ok, "archlab up {stage} {extra:?} failed:\n{out}");
        // The last line of stdout names the endpoint; `out` also holds stderr (log lines a busy
        // machine can add, a slow statement say), so look for the line, not at the very end.
        out.lines()
            .rev()
            .find_map(|l| l.strip_prefix("endpoint: "))
            .unwrap_or_else(|| panic!("no endpoint line:\n{out}"))
            .to_owned()
    }

    /// `archlab status --json`.
    pub fn status(&self) -> Value {
        let (ok, out) = self.archlab(&["status", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).unwrap()
    }

    /// Kills (SIGKILL, no goodbye) the service on the host named `host`, found by its PID in
    /// `status --json`: a machine that loses power.
    pub fn kill_host(&self, host: &str) {
        let status = self.status();
        let pid = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == host)
            .and_then(|s| s["pid"].as_i64())
            .unwrap_or_else(|| panic!("no pid for {host}: {status}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.archlab(&["down"]);
    }
}

/// Registers `name` (password `<name>-password`) on the stage at `endpoint`; returns the token.
pub async fn register(http: &reqwest::Client, endpoint: &str, name: &str) -> String {
    let user: Value = http
        .post(format!("{endpoint}/api/users"))
        .json(&serde_json::json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": format!("{name}-password")}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    user["user"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("registering {name}: {user}"))
        .to_owned()
}

/// Renders `url` in headless Chromium (installed by scripts/setup.sh) and returns the DOM after
/// its scripts ran; with `screenshot`, also writes a PNG of the page there. `wait_ms` of virtual
/// time (0: none) lets the page's timers and fetches run first.
pub fn chromium(url: &str, wait_ms: u32, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            // Without these, Chromium dials Google's hosts, which this machine's network refuses.
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args((wait_ms > 0).then(|| format!("--virtual-time-budget={wait_ms}")))
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium is installed by scripts/setup.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if let Some(png) = screenshot {
        run(&[
            "--window-size=1400,1000".into(),
            format!("--screenshot={}", png.display()),
        ]);
    }
    run(&["--dump-dom".into()])
}

/// Bounds every wait on a condition: never reached on a healthy stage, however busy the machine.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until `check` holds, polling every 50 ms, at most [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs `sql` as the superuser on the lab PostgreSQL server at `address` (a replica: pausing
/// and resuming its replay).
pub async fn as_superuser(address: &str, sql: &str) {
    let mut conn = superuser(address).await;
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}

/// A connection as `postgres` to the lab's PostgreSQL server at `address` (port 5432).
pub async fn superuser(address: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let options = sqlx::postgres::PgConnectOptions::new()
        .host(address)
        .port(5432)
        .username("postgres")
        .database("postgres");
    sqlx::PgConnection::connect_with(&options).await.unwrap()
}

/// The sum of `db_reads_total` samples for `target` in an app host's metrics.
pub async fn reads_on(http: &reqwest::Client, app: &str, target: &str) -> u64 {
    reads_matching(http, app, &format!("target=\"{target}\"")).await
}

/// The sum of `db_reads_total` samples whose labels start with `labels` in an app host's metrics.
pub async fn reads_matching(http: &reqwest::Client, app: &str, labels: &str) -> u64 {
    let text = http
        .get(format!("{app}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("db_reads_total{{{labels}");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// GET `url` (with `token`, if any): the status, the JSON body (`null` if none) and the
/// `x-cache` header (empty if none).
pub async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value, String) {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Token {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap_or(Value::Null), cache)
}
