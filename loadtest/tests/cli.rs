//! The `loadtest` command line: thresholds turn a breach into a non-zero exit, and the result file
//! is written either way.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

#[test]
fn a_breached_threshold_exits_non_zero_and_still_writes_the_result() {
    // Nothing listens on port 1: every request fails to connect.
    let out = tempfile_path("refused.json");
    let run = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--target",
            "http://127.0.0.1:1/",
            "--workload",
            "url",
            "--rate",
            "50",
        ])
        .args([
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--max-error-rate",
            "1",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !run.status.success(),
        "a 100 % error rate must fail the run"
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("thresholds breached"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let c = &json["counts"];
    assert_eq!(c["failed_connect"], c["sent"]);
    assert_eq!(c["ok"], 0);
    assert_eq!(
        c["scheduled"].as_u64(),
        Some(c["sent"].as_u64().unwrap() + c["dropped"].as_u64().unwrap())
    );
}

#[test]
fn bad_arguments_are_explained() {
    let run = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--target",
            "http://127.0.0.1:1/",
            "--duration",
            "ten seconds",
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("not a duration"));
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loadtest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
