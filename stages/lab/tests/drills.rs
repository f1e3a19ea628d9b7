//! Fault drills, short form: a stage under a fixed load loses a service and gets it back; the
//! clients' view must match what the architecture promises, and nothing acknowledged may be lost.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestLab;

use serde_json::Value;

fn drill(net: String, args: &[&str]) -> Value {
    drill_with(net, args, &[])
}

/// A quick drill with more options (`--outage 8s`).
fn drill_with(net: String, args: &[&str], extra: &[&str]) -> Value {
    let lab = TestLab::new("archlab-drill", net);
    let out_file = lab.state.path().join("drill.json").display().to_string();
    let quick = ["--quick", "--rate", "100", "--out", out_file.as_str()];
    let (ok, text) = lab.archlab(&[&["drill"], args, &quick, extra].concat());
    assert!(ok, "{text}");
    serde_json::from_str(&std::fs::read_to_string(out_file).unwrap()).unwrap()
}

#[test]
fn stage_1_database_kill_fails_requests_during_the_outage_and_loses_nothing() {
    let report = drill(
        common::net(160, 20),
        &["1", "kill", "--service", "database"],
    );
    let c = &report["counts"];
    assert!(
        c["failed"].as_u64().unwrap() + c["unknown"].as_u64().unwrap() > 0,
        "the outage must show: {c}"
    );
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let d = &report["drill"];
    assert!(d["recovered_at_s"].is_u64(), "the stage must recover: {d}");
    // While the database is down, nothing succeeds: some whole second has no success at all.
    let injected = d["injected_at_s"].as_f64().unwrap().ceil() as u64;
    let restored = d["restored_at_s"].as_f64().unwrap().floor() as u64;
    let series = report["series"].as_array().unwrap();
    assert!(
        series.iter().any(|p| {
            let t = p["t"].as_u64().unwrap();
            t >= injected && t < restored && p["ok"] == 0
        }),
        "{series:?}"
    );
}

#[test]
fn stage_1_clean_database_restart_gets_its_throughput_back_and_loses_nothing() {
    let report = drill(
        common::net(165, 20),
        &["1", "restart", "--service", "database"],
    );
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let d = &report["drill"];
    assert_eq!(d["fault"], "restart");
    assert_eq!(d["host"], "box (database)");
    // Back within the run: no errors, and the throughput of before (99 % of it) once more.
    assert!(d["recovered_at_s"].is_u64(), "the stage must recover: {d}");
    assert!(d["throughput_before"].as_f64().unwrap() > 0.0, "{d}");
    assert!(
        d["throughput_back_at_s"].as_u64().unwrap()
            >= d["restored_at_s"].as_f64().unwrap().floor() as u64,
        "{d}"
    );
}

#[test]
fn stage_2_file_host_kill_fails_only_media() {
    let report = drill(common::net(185, 20), &["2", "kill", "--service", "files"]);
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let ops = report["operations"].as_object().unwrap();
    let media = &ops["fetch_media"];
    assert!(
        media["failed"].as_u64().unwrap() + media["unknown"].as_u64().unwrap() > 0,
        "{ops:?}"
    );
    for (name, c) in ops {
        if name != "fetch_media" && name != "upload_media" {
            assert_eq!(
                (c["failed"].as_u64(), c["unknown"].as_u64()),
                (Some(0), Some(0)),
                "{name} must not fail: {c}"
            );
        }
    }
    assert!(
        report["drill"]["recovered_at_s"].is_u64(),
        "{}",
        report["drill"]
    );
}

/// Checks a stage 3 drill on the cache host: no 5xx, nothing lost, the stage recovers, reads
/// bypass the cache while it is out, and hits come back once it returns.
fn assert_cache_drill(report: &Value) {
    let c = &report["counts"];
    assert_eq!(c["failed_5xx"], 0, "the cache must never cause a 5xx: {c}");
    assert_eq!(c["failed"], 0, "{c}");
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let d = &report["drill"];
    let injected = d["injected_at_s"].as_f64().unwrap();
    let restored = d["restored_at_s"].as_f64().unwrap();
    let series = report["series"].as_array().unwrap();
    // The series counts a response in the second it completed: one completed a request timeout
    // after the fault was sent after it, so no earlier read from the cache can be among them.
    let timeout = archlab::drill::REQUEST_TIMEOUT.as_secs_f64();
    let seconds = |from: f64, to: f64| {
        series.iter().filter(move |p| {
            let t = p["t"].as_f64().unwrap();
            t >= from.ceil() && t + 1.0 <= to.floor()
        })
    };
    let count = |p: &Value, key: &str| p[key].as_u64().unwrap();
    assert!(
        seconds(injected + timeout, restored).count() > 0,
        "the outage must outlast the request timeout: {d}"
    );
    assert!(
        seconds(injected + timeout, restored).all(|p| count(p, "cache_hits") == 0),
        "while the cache is out, nothing is read from it: {series:?}"
    );
    assert!(
        seconds(injected, restored)
            .map(|p| count(p, "cache_bypasses"))
            .sum::<u64>()
            > 0,
        "while the cache is out, reads bypass it: {series:?}"
    );
    assert!(
        seconds(restored + 1.0, f64::MAX).any(|p| count(p, "cache_hits") > 0),
        "after it returns, the cache is used again: {series:?}"
    );
}

#[test]
fn stage_3_redis_kill_costs_no_errors_and_the_cache_comes_back() {
    // Longer than the quick 2 s: the check above needs whole seconds past the request timeout.
    let report = drill_with(
        common::net(205, 10),
        &["3", "kill", "--service", "cache"],
        &["--outage", "6s"],
    );
    assert_cache_drill(&report);
}

#[test]
fn stage_3_redis_freeze_costs_no_errors_and_the_cache_comes_back() {
    let report = drill_with(
        common::net(215, 10),
        &["3", "freeze", "--service", "cache"],
        &["--outage", "6s"],
    );
    assert_cache_drill(&report);
}

/// Operations that only read: the gateway retries these on another host, so none may fail.
const READS: &[&str] = &[
    "read_article",
    "list_articles",
    "list_by_tag",
    "list_by_author",
    "feed",
    "profile",
    "tags",
    "comments",
    "fetch_media",
];

#[test]
fn stage_4_app_host_kill_fails_no_read_and_at_most_the_writes_in_flight() {
    let report = drill(common::net(225, 10), &["4", "kill", "--service", "app"]);
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let ops = report["operations"].as_object().unwrap();
    let mut failed_writes = 0;
    for (name, c) in ops {
        let bad = c["failed"].as_u64().unwrap() + c["unknown"].as_u64().unwrap();
        if READS.contains(&name.as_str()) {
            assert_eq!(bad, 0, "{name} must not fail: {c}");
        } else {
            failed_writes += bad;
        }
    }
    let in_flight = report["drill"]["in_flight_at_fault"].as_u64().unwrap();
    assert!(
        failed_writes <= in_flight,
        "{failed_writes} writes failed but only {in_flight} requests were at the host"
    );
}

#[test]
fn stage_4_rolling_restart_costs_no_errors() {
    let report = drill(common::net(235, 10), &["4", "restart", "--service", "app"]);
    let c = &report["counts"];
    assert_eq!(
        (
            c["failed"].as_u64(),
            c["unknown"].as_u64(),
            c["dropped"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{c}"
    );
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
}

#[test]
fn stage_6_origin_down_the_pops_keep_answering_what_they_hold_and_lose_nothing() {
    let report = drill(common::net(245, 10), &["6", "kill", "--service", "gateway"]);
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let d = &report["drill"];
    assert!(d["recovered_at_s"].is_u64(), "the stage must recover: {d}");
    // Unlike a database outage behind no edge (stage 1), every second of the outage still has
    // answers: what the PoPs hold, fresh or stale.
    let injected = d["injected_at_s"].as_f64().unwrap().ceil() as u64;
    let restored = d["restored_at_s"].as_f64().unwrap().floor() as u64;
    let series = report["series"].as_array().unwrap();
    let during: Vec<&Value> = series
        .iter()
        .filter(|p| (injected..restored).contains(&p["t"].as_u64().unwrap()))
        .collect();
    assert!(!during.is_empty(), "{d}");
    assert!(
        during.iter().all(|p| p["ok"].as_u64().unwrap() > 0),
        "{during:?}"
    );
    // and what they do not hold fails, with a clear 502/504, not a hang
    assert!(
        report["counts"]["failed_5xx"].as_u64().unwrap() > 0,
        "{}",
        report["counts"]
    );
    let edge = &report["cache"]["edge"]["outcomes"];
    assert!(edge["HIT"].as_u64().unwrap_or(0) > 0, "{edge}");
}

#[test]
fn stage_6_a_pop_killed_its_clients_move_to_the_other_and_nothing_is_lost() {
    let report = drill(common::net(255, 1), &["6", "kill", "--service", "edge"]);
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let edge = &report["cache"]["edge"];
    assert!(edge["failovers"].as_u64().unwrap() > 0, "{edge}");
    // A request refused at connect was never sent: its client sends it to the other PoP. Only
    // requests in flight when the PoP died may end unknown; none fails.
    assert_eq!(report["counts"]["failed"], 0, "{}", report["counts"]);
}
