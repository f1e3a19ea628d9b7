//! The harness against a real stage: the tour's reports (JSON keys, Markdown, HTML that headless
//! Chromium renders), and the verify phase catching a write deleted behind its back.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::{conduit_bin, TestLab};

use loadtest::{
    run::{run, verify, Mode, RunConfig},
    Options, Plan,
};
use serde_json::Value;

#[test]
fn a_quick_tour_writes_json_markdown_and_an_html_report_that_chromium_renders() {
    let out = tempfile::tempdir().unwrap();
    let lab = TestLab::new("archlab-harness", common::net(60, 30));
    let out_dir = out.path().display().to_string();
    // Two stages and one workload keep the test short; the full tour is `scripts/tour`.
    let (ok, text) = lab.archlab(&[
        "tour",
        "--quick",
        "--stages",
        "1,2",
        "--workload",
        "read-heavy",
        "--out",
        &out_dir,
    ]);
    assert!(ok, "{text}");

    // The JSON: every documented key is there, and the numbers are consistent.
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("01-monolith-read-heavy.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "stage",
        "workload",
        "mode",
        "rate_rps",
        "throughput_rps",
        "latency_ms",
        "counts",
        "checks",
        "sweep",
        "capacity",
        "hosts",
        "provenance",
        "series",
        "curve",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    for view in ["corrected", "uncorrected"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                json["latency_ms"][view][p].is_number(),
                "latency_ms.{view}.{p}"
            );
        }
    }
    let c = &json["counts"];
    assert_eq!(
        c["scheduled"].as_u64(),
        Some(c["sent"].as_u64().unwrap() + c["dropped"].as_u64().unwrap())
    );
    assert_eq!(json["stage"], 1);
    assert_eq!(json["mode"], "sweep");
    assert!(
        json["sweep"]["max_rate_rps"].as_f64().unwrap() > 0.0,
        "{}",
        json["sweep"]
    );
    assert_eq!(json["sweep"]["target_p99_ms"], 100.0);
    assert_eq!(json["checks"]["lost_writes"], 0);
    assert!(json["checks"]["acknowledged_writes"].as_u64().unwrap() > 0);
    let host = &json["hosts"][0];
    for key in [
        "name",
        "role",
        "address",
        "cpu_budget",
        "enforced",
        "cpu_seconds_used",
    ] {
        assert!(host.get(key).is_some(), "hosts[0].{key}");
    }
    let p = &json["provenance"];
    for key in [
        "git_commit",
        "stage",
        "hosts",
        "cpu_model",
        "cores",
        "os",
        "versions",
        "workload",
        "seed",
        "duration_s",
    ] {
        assert!(p.get(key).is_some(), "provenance.{key}");
    }
    assert!(p["versions"]["postgres"]
        .as_str()
        .unwrap()
        .contains("PostgreSQL"));

    // What the stage buys, costs and where it is stuck.
    let capacity = &json["capacity"];
    assert_eq!(capacity["capacity_rps"], json["sweep"]["max_rate_rps"]);
    assert_eq!(capacity["total_cores"], host["cpu_budget"]);
    assert!(capacity["bottleneck"]["host"].is_string(), "{capacity}");
    assert!(capacity["knee_runs"].as_u64().unwrap() >= 1, "{capacity}");
    let steps = json["sweep"]["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["host_cores"]["box"].is_number()),
        "every step records each host's CPU: {steps:?}"
    );
    for step in steps.iter().filter(|s| s["host_cores"]["box"].is_number()) {
        let (mean, peak) = (&step["host_cores"]["box"], &step["host_peak_cores"]["box"]);
        assert!(
            peak.as_f64().unwrap() + 0.005 >= mean.as_f64().unwrap(),
            "a step's busiest second is at least its average (rounded): {step}"
        );
    }
    // The harness ran in its own budget wherever the hosts did.
    if host["enforced"] == true {
        assert_eq!(p["harness_cores"], archlab::size::HARNESS_CORES, "{p}");
    } else {
        assert!(p["harness_cores"].is_null(), "{p}");
    }
    assert!(p["data_set"].as_str().unwrap().contains("articles=1000"));

    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        markdown.contains("| stage |")
            && markdown.contains("Sweep: highest rate")
            && markdown.contains("bottleneck")
            && markdown.contains("Every result below comes from commit"),
        "{markdown}"
    );

    // The HTML renders in headless Chromium, with its charts.
    let html = out.path().join("index.html");
    let dom = common::chromium(&format!("file://{}", html.display()), 0, None);
    assert!(dom.contains("<h1>archlab tour</h1>"), "{dom}");
    assert!(dom.matches("<svg").count() >= 4, "charts are missing");
    assert!(!dom.contains("NaN"), "a chart has NaN coordinates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_phase_reports_a_write_deleted_behind_the_harness_by_id() {
    let _machine = common::machine_lock();
    let state = common::state_dir("archlab-harness");
    let net: u8 = (92 + std::process::id() % 30) as u8;
    let lab = archlab::Lab::new(state.path(), conduit_bin());
    let stage = archlab::Stage::find("1").unwrap().on_network(net);
    let down = scopeguard(lab.clone(), stage.clone());
    lab.up(&stage, true, &|_| {}).await.unwrap();
    lab.seed(
        &stage,
        &archlab::lab::SeedSpec {
            users: 20,
            articles: 100,
            images: 20,
            seed: 7,
        },
    )
    .await
    .unwrap();

    let target = stage.endpoint();
    let options = Options {
        target: target.clone(),
        workload: "write-heavy".into(),
        plan: Plan::Open { rate: 100.0 },
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        connections: 4,
        timeout: Duration::from_secs(5),
        seed: 3,
        users: 8,
        email_domain: "seed.archlab.test".into(),
        password: "archlab-seed-password".into(),
        verify: true,
        monotonic_checks: false,
        pops: Vec::new(),
        live: None,
    };
    let (_, workload) = loadtest::prepare(&options).await.unwrap();
    let (addr, _) = loadtest::parse_target(&target).unwrap();
    let config = RunConfig {
        target: addr,
        mode: Mode::Open { rate: 100.0 },
        duration: options.duration,
        warmup: Duration::ZERO,
        connections: 4,
        timeout: options.timeout,
        seed: 3,
        live: None,
        monotonic_checks: false,
        pops: Vec::new(),
    };
    let out = run(&config, Arc::clone(&workload)).await;
    assert!(out.ryw_checks > 0 && out.ryw_violations == 0);
    let before = verify(addr, &out.acks, options.timeout).await;
    assert!(
        before.lost.is_empty() && before.unverified.is_empty(),
        "nothing lost yet: {before:?}"
    );

    // Delete one acknowledged article behind the harness's back.
    let victim = out
        .acks
        .iter()
        .find_map(|a| a.id.strip_prefix("article "))
        .expect("the run created an article")
        .to_owned();
    let mut db = sqlx::PgConnection::connect(&lab.database_url(&stage).unwrap())
        .await
        .unwrap();
    let deleted = sqlx::query("DELETE FROM articles WHERE slug = $1")
        .bind(&victim)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);

    let after = verify(addr, &out.acks, options.timeout).await;
    assert!(
        after.lost.contains(&format!("article {victim}")),
        "{after:?}"
    );
    drop(down);
}

use sqlx::Connection;

/// Brings the stage down when dropped, even if the test fails.
fn scopeguard(lab: archlab::Lab, stage: archlab::Stage) -> impl Drop {
    struct Down(archlab::Lab, archlab::Stage);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = self.0.down(&self.1, &|_| {});
        }
    }
    Down(lab, stage)
}

#[test]
fn report_marks_results_from_different_commits_and_strict_refuses_them() {
    let committed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../01-monolith/results/tour-read-heavy.json");
    let base: Value = serde_json::from_str(&std::fs::read_to_string(committed).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, commit: &str| {
        let mut r = base.clone();
        r["provenance"]["git_commit"] = commit.into();
        r["provenance"]["git_dirty"] = false.into();
        let path = dir.path().join(name);
        std::fs::write(&path, r.to_string()).unwrap();
        path.display().to_string()
    };
    let a = write("a.json", "1111111aaaaaaa");
    let same = write("same.json", "1111111aaaaaaa");
    let other = write("b.json", "2222222bbbbbbb");
    let lab = TestLab::beside("archlab-report", "9".into());
    let out = dir.path().join("out").display().to_string();

    let (ok, text) = lab.archlab(&["report", &a, &same, "--out", &out, "--strict"]);
    assert!(ok, "one commit is one comparison: {text}");
    assert!(!text.contains("Mixed results"), "{text}");

    let (ok, text) = lab.archlab(&["report", &a, &other, "--out", &out]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Mixed results") && text.contains("2 commits: 1111111, 2222222"),
        "{text}"
    );
    let html = std::fs::read_to_string(dir.path().join("out/index.html")).unwrap();
    assert!(html.contains("Mixed results"), "the HTML says so too");

    let (ok, text) = lab.archlab(&["report", &a, &other, "--out", &out, "--strict"]);
    assert!(!ok && text.contains("not one comparison"), "{text}");
}
