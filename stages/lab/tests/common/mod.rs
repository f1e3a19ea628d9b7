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

/// A lab under test.
pub struct TestLab {
    pub state: tempfile::TempDir,
    pub net: String,
}

impl TestLab {
    pub fn new(prefix: &str, net: String) -> Self {
        Self {
            state: state_dir(prefix),
            net,
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
        let (ok, out) = self.archlab(&["up", stage]);
        assert!(ok, "archlab up {stage} failed:\n{out}");
        let last = out.lines().rfind(|l| !l.is_empty()).unwrap_or_default();
        last.strip_prefix("endpoint: ")
            .unwrap_or_else(|| panic!("last line is not the endpoint:\n{out}"))
            .to_owned()
    }

    /// `archlab status --json`.
    pub fn status(&self) -> Value {
        let (ok, out) = self.archlab(&["status", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).unwrap()
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
