//! `fanout-load attack` against the real `fanout` binary: the report's shape and exit status on
//! a cheap kind, and a broken bound turning into a non-zero exit.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use common::run_with_report;

/// The `fanout` server binary of the same profile, built if this test run did not build it.
fn server_bin() -> PathBuf {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_fanout-load"));
    let bin = load.with_file_name("fanout");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "fanout", "--bin", "fanout"]);
        if load.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo build -p fanout");
        assert!(st.success(), "cannot build the fanout binary");
    }
    bin
}

fn attack(args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut argv: Vec<OsString> = vec!["attack".into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--server-bin".into(), server_bin().into_os_string()]);
    // A debug build on a shared box: the latency bound is not what these tests check.
    argv.extend(["--p99-slack-ms".into(), "200".into()]);
    run_with_report(&argv)
}

#[test]
fn a_cheap_kind_reports_its_figures_and_exits_zero() {
    let (code, v, out) = attack(&["huge-length", "--scale", "0.5"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["suite"], "attack");
    assert_eq!(v["ok"], true);
    assert!(v["bounds"]["max_rss_bytes"].is_number(), "{v}");
    let k = &v["kinds"][0];
    assert_eq!(k["kind"], "huge-length");
    assert_eq!(k["attackers"], 10);
    assert_eq!(k["server_up"], true);
    // Every attacker saw one of the two refusals, and the counters moved by as many.
    let outcomes = k["outcomes"].as_object().unwrap();
    let seen: u64 = outcomes.values().map(|x| x.as_u64().unwrap()).sum();
    assert_eq!(seen, 10, "{k}");
    assert!(outcomes
        .keys()
        .all(|o| o == "close 1002" || o == "close 1009"));
    let moved: f64 = k["counters"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["after"].as_f64().unwrap() - c["before"].as_f64().unwrap())
        .sum();
    assert_eq!(moved, 10.0, "{k}");
    for key in ["idle", "baseline", "peak", "per_attacker"] {
        assert!(k["rss_bytes"][key].is_number(), "{key}: {k}");
    }
    assert!(k["rss_bytes"]["peak"].as_u64().unwrap() > 0);
    for key in ["before_ms", "during_ms"] {
        assert!(k["good"][key]["count"].as_u64().unwrap() > 0, "{key}: {k}");
        assert!(k["good"][key]["p99"].is_number(), "{key}: {k}");
    }
    assert_eq!(k["good"]["errors"], 0);
    for c in [
        "server_up",
        "rss",
        "p99",
        "refusal",
        "counter",
        "good_client",
    ] {
        assert_eq!(k["checks"][c], true, "{c}: {k}");
    }
    assert!(out.contains("huge-length"), "the table: {out}");
}

#[test]
fn a_broken_bound_exits_non_zero_and_says_which() {
    // No server fits in 1 MiB: the RSS bound must break, the rest hold.
    let (code, v, out) = attack(&["invalid-utf8", "--scale", "0.3", "--max-rss", "1MiB"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(v["ok"], false);
    let k = &v["kinds"][0];
    assert_eq!(k["ok"], false);
    assert_eq!(k["checks"]["rss"], false);
    assert_eq!(k["checks"]["server_up"], true);
    assert_eq!(k["checks"]["refusal"], true);
    let broken = k["broken"].as_array().unwrap();
    assert!(
        broken
            .iter()
            .any(|b| b.as_str().unwrap().starts_with("peak RSS")),
        "{k}"
    );
    assert!(out.contains("BOUND BROKEN"), "{out}");
}

#[test]
fn an_unknown_kind_is_a_usage_error() {
    let (code, _, out) = attack(&["no-such-kind"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no attack kind"), "{out}");
}

#[test]
fn a_short_soak_reports_its_checks() {
    let (code, v, out) = attack(&["soak", "--duration", "4s"]);
    assert_eq!(code, 0, "{out}");
    let s = &v["soak"];
    for c in ["rss", "gauge", "no_loss", "server_up"] {
        assert_eq!(s["checks"][c], true, "{c}: {s}");
    }
    assert!(s["churn"]["opened"].as_u64().unwrap() > 0, "{s}");
    assert!(s["silent"]["opened"].as_u64().unwrap() > 0, "{s}");
    // The silent peers were closed by the server's ping timeout, not by the soak.
    assert!(
        s["silent"]["pong_timeouts"].as_f64().unwrap() >= s["silent"]["opened"].as_f64().unwrap(),
        "{s}"
    );
    assert_eq!(s["good_echo"]["lost"], 0);
    assert_eq!(s["good_push"]["lost"], 0);
    assert!(s["good_echo"]["sent"].as_u64().unwrap() > 0);
    assert_eq!(
        s["open_connections"]["baseline"],
        s["open_connections"]["after"]
    );
}
