//! The monitoring host end to end: `archlab up 4 --monitor` starts Prometheus and the exporters
//! on a host of their own; every target they scrape is up, the request counter follows real
//! traffic, and the live dashboard renders every panel with data in headless Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::TestLab;
use serde_json::Value;

/// Bounds every wait below: never reached on a healthy stage, however busy the machine.
const PATIENCE: Duration = Duration::from_secs(120);

async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Option<f64> {
    let body: Value = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits until `check` holds, polling; panics with `what` and the last value after [`PATIENCE`].
async fn wait_for<T: std::fmt::Debug, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let start = Instant::now();
    loop {
        let (ok, last) = check().await;
        if ok {
            return last;
        }
        assert!(start.elapsed() < PATIENCE, "{what}: last {last:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn stage_4_with_monitoring_is_scraped_whole_and_its_dashboard_draws_every_panel() {
    let lab = TestLab::new("archlab-monitor", common::net(250, 5));
    let (ok, out) = lab.archlab(&["up", "4", "--monitor"]);
    assert!(ok, "{out}");
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{out}"))
            .to_owned()
    };
    let (prometheus, dashboard, endpoint) = (
        line("prometheus: "),
        line("dashboard: "),
        line("endpoint: "),
    );

    // `status` lists the monitoring host, healthy, on its own budget.
    let status = lab.status();
    let monitor = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "monitor")
        .unwrap_or_else(|| panic!("no monitor in {status}"));
    assert_eq!(monitor["healthy"], true, "{monitor}");
    assert_eq!(monitor["cpu_budget"], 0.1, "{monitor}");

    // Every job has its targets, all up: the gateway, both app hosts, the exporters, the hosts.
    let http = reqwest::Client::new();
    let jobs = wait_for("every target up", || async {
        let body: Value = match http
            .get(format!("{prometheus}/api/v1/targets?state=active"))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let targets = body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut jobs: Vec<String> = targets
            .iter()
            .map(|t| format!("{} {}", t["scrapePool"], t["health"]))
            .collect();
        jobs.sort();
        let all_up = targets.iter().all(|t| t["health"] == "up");
        (all_up && targets.len() == 6, jobs)
    })
    .await;
    assert_eq!(
        jobs,
        [
            "\"app\" \"up\"",
            "\"app\" \"up\"",
            "\"cache\" \"up\"",
            "\"database\" \"up\"",
            "\"gateway\" \"up\"",
            "\"hosts\" \"up\""
        ]
    );

    // Requests through the gateway move their route's counter at the app hosts by as many (one
    // route: health checks and scrapes count under their own, so only these can move it).
    let counter = "sum(http_requests_total{route=\"/api/tags\"})";
    // No series before the route's first request: that is zero.
    let before = query(&http, &prometheus, counter).await.unwrap_or(0.0);
    for _ in 0..100 {
        let r = http
            .get(format!("{endpoint}/api/tags"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    wait_for("the counter to move by 100", || async {
        let v = query(&http, &prometheus, counter).await.unwrap_or(0.0);
        (v >= before + 100.0, v)
    })
    .await;
    // The cache exporter and the host metrics report what happened.
    wait_for("Redis commands counted", || async {
        let v = query(&http, &prometheus, "sum(redis_commands_processed_total)").await;
        (v.unwrap_or(0.0) > 0.0, v)
    })
    .await;

    // The dashboard under the harness's read-heavy mix (seeded first, 15 s at 60 req/s, bounded
    // by its own duration): every panel draws a chart (the errors panel a flat zero), none failed.
    let (ok, out) = lab.archlab(&[
        "seed",
        "4",
        "--users",
        "20",
        "--articles",
        "200",
        "--images",
        "20",
    ]);
    assert!(ok, "{out}");
    let mut harness = std::process::Command::new(common::conduit_bin().with_file_name("loadtest"))
        .args([
            "--target",
            &endpoint,
            "--workload",
            "read-heavy",
            "--rate",
            "60",
        ])
        .args([
            "--duration",
            "15s",
            "--warmup",
            "0s",
            "--users",
            "5",
            "--no-verify",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("cache hits counted", || async {
        let v = query(
            &http,
            &prometheus,
            "sum(rate(cache_lookups_total{result=\"hit\"}[10s]))",
        )
        .await;
        (v.unwrap_or(0.0) > 0.0, v)
    })
    .await;
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-stage-4.png");
    let dom = common::chromium(&dashboard, 8_000, Some(&png));
    assert!(harness.wait().unwrap().success(), "the harness run failed");
    // What the page drew, without its own script's source (which spells the same markup).
    let drawn = dom.split("<script>").next().unwrap();
    assert!(drawn.contains("every panel answered"), "{drawn}");
    let panels: serde_json::Value =
        serde_json::from_str(include_str!("../monitor/panels.json")).unwrap();
    let panels = panels["panels"].as_array().unwrap().len();
    assert_eq!(drawn.matches("<svg").count(), panels, "{drawn}");
    assert!(
        !drawn.contains("class=\"empty\""),
        "a panel has no data: {drawn}"
    );
    assert!(!drawn.contains("NaN"), "a chart has NaN coordinates");
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "empty screenshot"
    );
    println!("dashboard screenshot: {}", png.display());

    // `down` stops the monitoring host with the stage.
    let (ok, out) = lab.archlab(&["down", "4"]);
    assert!(ok && out.contains("stopping the monitoring host"), "{out}");
}
