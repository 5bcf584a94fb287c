//! fanout-load against a real fanout server at small scale: the counts it reports are checked
//! against what the server saw.

mod common;

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use common::run_with_report;

use fanout::apps::echo::Echo;
use fanout::server::{stats, Config, Counter, Server};

fn server(cfg: Config) -> Server {
    Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            ..cfg
        },
        Echo,
    )
    .unwrap()
}

fn load(args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    argv.push("--no-progress".into());
    run_with_report(&argv)
}

#[test]
fn connect_scenario_counts_match_the_server() {
    let s = server(Config::default());
    let url = format!("ws://{}/", s.local_addr());
    let pid = std::process::id().to_string();
    let (code, v, out) = load(&[
        "connect",
        "--url",
        &url,
        "-n",
        "300",
        "--rate",
        "3000",
        "--duration",
        "300ms",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["scenario"], "connect");
    assert_eq!(v["established"], 300);
    assert_eq!(v["failed_total"], 0);
    assert_eq!(v["latency_ms"]["open"]["count"], 300);
    assert!(v["server_rss_bytes_per_connection"].is_number(), "{v}");
    assert_eq!(stats::total(&s.stats(), Counter::HandshakesOk), 300);
    // Everything was closed at the end (the server reaps the last EOFs right after).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.open_connections() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.open_connections(), 0);
}

/// `fanout-load echo --url URL -n N` followed by `rest`.
fn echo(url: &str, n: &str, rest: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["echo", "--url", url, "-n", n];
    args.extend_from_slice(rest);
    load(&args)
}

/// 50 connections at 20 messages/s each for 1 s: about 1000 messages, all counted.
fn about_1000_messages(v: &serde_json::Value) -> u64 {
    let received = v["messages"]["received"].as_u64().unwrap();
    assert!((800..=1100).contains(&received), "{received}");
    received
}

/// At least `min` messages sent, each echoed once, intact, and timed.
fn every_message_echoed(v: &serde_json::Value, min: u64) {
    let sent = v["messages"]["sent"].as_u64().unwrap();
    assert!(sent >= min, "{v}");
    assert_eq!(v["messages"]["received"].as_u64().unwrap(), sent);
    assert_eq!(v["messages"]["mismatched"], 0);
    assert_eq!(v["latency_ms"]["rtt"]["count"].as_u64().unwrap(), sent);
}

#[test]
fn echo_scenario_with_pipelining_and_with_a_rate() {
    let s = server(Config::default());
    let url = format!("ws://{}/", s.local_addr());
    let (code, v, out) = echo(
        &url,
        "100",
        &[
            "--duration",
            "500ms",
            "--message-size",
            "200",
            "--pipeline",
            "4",
        ],
    );
    assert_eq!(code, 0, "{out}");
    every_message_echoed(&v, 400);
    // 100 connections pipelining: the turns carry many reads and writes, batched.
    assert_eq!(v["io"]["batching_processes"], 1, "{}", v["io"]);
    assert!(
        v["io"]["batched_reads"].as_u64().unwrap() > 0,
        "{}",
        v["io"]
    );
    assert!(
        v["io"]["batched_writes"].as_u64().unwrap() > 0,
        "{}",
        v["io"]
    );
    let run_cpu = v["loadgen_cpu_seconds_run"].as_f64().unwrap();
    assert!(run_cpu > 0.0 && run_cpu <= v["loadgen_cpu_seconds"].as_f64().unwrap());
    // The same with one syscall per read and write.
    let (code, v, out) = echo(
        &url,
        "100",
        &["--duration", "300ms", "--pipeline", "4", "--no-batch-io"],
    );
    assert_eq!(code, 0, "{out}");
    every_message_echoed(&v, 400);
    assert_eq!(v["io"]["batching_processes"], 0, "{}", v["io"]);
    assert_eq!(v["io"]["batched_reads"], 0, "{}", v["io"]);
    let (code, v, out) = echo(&url, "50", &["--duration", "1s", "--rate", "20", "--text"]);
    assert_eq!(code, 0, "{out}");
    let received = about_1000_messages(&v);
    assert!(stats::total(&s.stats(), Counter::MessagesIn) >= received);
    assert_eq!(v["messages"]["rtt_without_kernel_timestamp"], 0);
}

#[test]
fn echo_in_ticks_keeps_the_rate_and_times_round_trips_by_the_kernel() {
    let s = server(Config::default());
    let url = format!("ws://{}/", s.local_addr());
    // Ticks of 20 ms: a round trip timed by the clock at processing would include up to
    // 20 ms of sleep; the kernel's receive timestamps leave it out.
    for processes in ["1", "2"] {
        let (code, v, out) = echo(
            &url,
            "50",
            &[
                "--duration",
                "1s",
                "--rate",
                "20",
                "--tick",
                "20ms",
                "--processes",
                processes,
            ],
        );
        assert_eq!(code, 0, "{out}");
        every_message_echoed(&v, 800);
        about_1000_messages(&v);
        assert_eq!(v["messages"]["rtt_without_kernel_timestamp"], 0, "{v}");
        let p50 = v["latency_ms"]["rtt"]["p50"].as_f64().unwrap();
        assert!(
            p50 < 5.0,
            "round trip p50 {p50} ms: the tick's sleep is in it"
        );
    }
}

#[test]
fn child_processes_merge_into_one_report() {
    let s = server(Config::default());
    let url = format!("ws://{}/", s.local_addr());
    let (code, v, out) = load(&[
        "echo",
        "--url",
        &url,
        "-n",
        "120",
        "--processes",
        "3",
        "--duration",
        "300ms",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["params"]["processes"], 3);
    assert_eq!(v["established"], 120);
    assert_eq!(v["opened"], 120);
    assert_eq!(v["latency_ms"]["open"]["count"], 120);
    assert_eq!(
        v["messages"]["received"].as_u64().unwrap(),
        v["latency_ms"]["rtt"]["count"].as_u64().unwrap()
    );
    assert_eq!(stats::total(&s.stats(), Counter::HandshakesOk), 120);
}

#[test]
fn refusals_and_resets_are_failures_not_successes() {
    // A server at its connection limit answers 503.
    let s = server(Config {
        max_connections: 10,
        ..Config::default()
    });
    let url = format!("ws://{}/", s.local_addr());
    let (code, v, out) = load(&["connect", "--url", &url, "-n", "30", "--duration", "200ms"]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["established"], 10);
    assert_eq!(v["failed"]["http_503"], 20);
    // A listener that resets every connection.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let s2 = socket2::SockRef::from(&s);
            let _ = s2.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let url = format!("ws://{addr}/");
    let (code, v, out) = load(&["connect", "--url", &url, "-n", "5", "--duration", "100ms"]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["established"], 0);
    assert_eq!(v["failed_total"], 5, "{v}");
}

#[test]
fn clear_errors_for_bad_urls_and_impossible_requests() {
    let (code, _, out) = load(&["connect", "--url", "http://x/", "-n", "1"]);
    assert_eq!(code, 2);
    assert!(out.contains("expected a ws:// or wss:// URL"), "{out}");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, out) = load(&["connect", "--url", &format!("ws://{free}/"), "-n", "1"]);
    assert_eq!(code, 2);
    assert!(out.contains("cannot reach"), "{out}");
    let (code, _, out) = load(&["connect", "--url", "ws://127.0.0.1:9/", "-n", "1000000"]);
    assert_eq!(code, 2);
    assert!(out.contains("ip_local_port_range"), "{out}");
    // --tick where answers would share a receive time, or carry none.
    for (args, says) in [
        (
            &["--rate", "100", "--tick", "20ms"][..],
            "shorter than 1/rate",
        ),
        (&["--pipeline", "4", "--tick", "1ms"][..], "--pipeline 1"),
    ] {
        let (code, _, out) = echo("ws://127.0.0.1:9/", "1", args);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(says), "{out}");
    }
    let (code, _, out) = load(&[
        "echo",
        "--url",
        "wss://127.0.0.1:9/",
        "-n",
        "1",
        "--tick",
        "1ms",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ws:// URLs only"), "{out}");
}

#[test]
fn fanout_scenario_against_the_push_app() {
    use fanout::apps::push::{Push, PushConfig};
    let s = Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            ..Config::default()
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            allow_ws_publish: true,
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = s.local_addr();
    // Topics in the URL, HTTP publisher, one process.
    let (code, v, out) = load(&[
        "fanout",
        "--url",
        &format!("ws://{addr}/ws?topics=bench"),
        "-n",
        "200",
        "--publish-url",
        &format!("http://{addr}/publish/bench"),
        "--publish-header",
        "Authorization: Bearer k",
        "--publish-rate",
        "50",
        "--publish-count",
        "20",
        "--grace",
        "500ms",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["expected"], 4000, "{v}");
    assert_eq!(v["delivered"], 4000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
    assert_eq!(v["latency_ms"]["delivery"]["count"], 4000);
    assert_eq!(v["publish"]["queued_for"], 4000);
    // Subscribe by message, WebSocket publisher, two processes.
    let (code, v, out) = load(&[
        "fanout",
        "--url",
        &format!("ws://{addr}/ws"),
        "--subscribe",
        r#"{"op":"subscribe","topic":"{topic}"}"#,
        "--topic",
        "t2",
        "-n",
        "100",
        "--processes",
        "2",
        "--publish-ws",
        &format!("ws://{addr}/ws"),
        "--publish-rate",
        "50",
        "--publish-count",
        "10",
        "--grace",
        "500ms",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["expected"], 1000, "{v}");
    assert_eq!(v["delivered"], 1000);
    assert_eq!(v["lost"], 0);
    // Publishing to another topic: nothing arrives, and the loss is counted in every
    // process (the children learn the published count from the parent).
    let (code, v, out) = load(&[
        "fanout",
        "--url",
        &format!("ws://{addr}/ws?topics=bench"),
        "-n",
        "40",
        "--processes",
        "2",
        "--publish-url",
        &format!("http://{addr}/publish/elsewhere"),
        "--publish-header",
        "Authorization: Bearer k",
        "--publish-rate",
        "50",
        "--publish-count",
        "5",
        "--grace",
        "200ms",
        "--duration",
        "100ms",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["expected"], 200, "{v}");
    assert_eq!(v["delivered"], 0, "{v}");
    assert_eq!(v["lost"], 200, "{v}");
    assert_eq!(v["lossy_subscribers"], 40, "{v}");
    // A wrong key: every publish fails and the run says so.
    let (code, v, out) = load(&[
        "fanout",
        "--url",
        &format!("ws://{addr}/ws?topics=bench"),
        "-n",
        "10",
        "--publish-url",
        &format!("http://{addr}/publish/bench"),
        "--publish-count",
        "2",
        "--publish-rate",
        "20",
        "--grace",
        "100ms",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["publish"]["failed"]["http_401"], 2, "{v}");
}

/// Two publish URLs in turn, the second with nothing listening: every second publish is
/// refused (connect_refused). Refusals fail the run but are never counted as lost, in one
/// process or in children that learn the refused sequence numbers from the parent's `stop` line.
#[test]
fn refused_publishes_fail_the_run_but_are_not_lost() {
    use fanout::apps::push::{Push, PushConfig};
    let s = Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            ..Config::default()
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = s.local_addr();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for processes in ["1", "2"] {
        let (code, v, out) = load(&[
            "fanout",
            "--url",
            &format!("ws://{addr}/ws?topics=bench"),
            "-n",
            "40",
            "--processes",
            processes,
            "--publish-url",
            &format!("http://{addr}/publish/bench"),
            "--publish-url",
            &format!("http://{dead}/publish/bench"),
            "--publish-header",
            "Authorization: Bearer k",
            "--publish-rate",
            "100",
            "--publish-count",
            "20",
            "--grace",
            "300ms",
        ]);
        assert_eq!(code, 3, "refusals fail the run: {out}");
        let p = &v["publish"];
        assert_eq!(p["attempted"], 20, "{v}");
        assert_eq!(p["accepted"], 10, "{v}");
        assert_eq!(p["refused"], 10, "{v}");
        assert_eq!(p["ok"], 10, "{v}");
        assert_eq!(p["failed_total"], 10, "{v}");
        assert_eq!(p["refused_by_reason"]["connect_refused"], 10, "{v}");
        assert_eq!(p["queued_for"], 400, "{v}");
        assert_eq!(p["nodes_reached"], 0, "{v}");
        // Only the accepted publishes are expected, and every one arrived.
        assert_eq!(v["expected"], 400, "{v}");
        assert_eq!(v["delivered"], 400, "{v}");
        assert_eq!(v["lost"], 0, "processes {processes}: {v}");
        assert_eq!(v["lossy_subscribers"], 0, "{v}");
        assert_eq!(v["delivered_refused"], 0, "{v}");
        assert_eq!(v["duplicated"], 0, "{v}");
        assert_eq!(v["lost_by_seq"], serde_json::json!({}), "{v}");
        assert_eq!(v["latency_ms"]["delivery"]["count"], 400, "{v}");
        // Odd sequence numbers went to the dead URL.
        let refusals = p["refusals"].as_array().unwrap();
        assert_eq!(refusals.len(), 10, "{v}");
        for (i, r) in refusals.iter().enumerate() {
            assert_eq!(r["seq"], 2 * i as u64 + 1, "{r}");
            assert_eq!(r["reason"], "connect_refused", "{r}");
            assert!(r["sent_unix_ms"].as_f64().unwrap() > 1.6e12, "{r}");
        }
        // Each refusal is a run of its own, followed by an accepted publish but the last.
        let rec = p["recoveries"].as_array().unwrap();
        assert_eq!(rec.len(), 10, "{v}");
        assert_eq!(rec[0]["first_refused_seq"], 1);
        assert_eq!(rec[0]["next_accepted_seq"], 2);
        let (first, next) = (
            rec[0]["first_refused_sent_unix_ms"].as_f64().unwrap(),
            rec[0]["next_accepted_sent_unix_ms"].as_f64().unwrap(),
        );
        assert!(next > first, "{}", rec[0]);
        assert_eq!(rec[9]["first_refused_seq"], 19);
        assert!(rec[9]["next_accepted_seq"].is_null(), "{}", rec[9]);
        assert!(rec[9]["next_accepted_sent_unix_ms"].is_null(), "{}", rec[9]);
        assert!(out.contains("publishes accepted: 10"), "{out}");
        assert!(
            out.contains("publishes refused: 10 (connect_refused=10)"),
            "{out}"
        );
        assert!(out.contains("lost (accepted publishes only): 0"), "{out}");
        assert!(out.contains("delivered_refused"), "{out}");
    }
}

/// Losses of accepted publishes are reported by sequence number, summed across processes.
#[test]
fn lost_publishes_are_counted_by_sequence_number() {
    use fanout::apps::push::{Push, PushConfig};
    let s = Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            ..Config::default()
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = s.local_addr();
    // Every publish is accepted, on another topic: every subscriber misses every one.
    let (code, v, out) = load(&[
        "fanout",
        "--url",
        &format!("ws://{addr}/ws?topics=bench"),
        "-n",
        "30",
        "--processes",
        "2",
        "--publish-url",
        &format!("http://{addr}/publish/elsewhere"),
        "--publish-header",
        "Authorization: Bearer k",
        "--publish-rate",
        "100",
        "--publish-count",
        "4",
        "--grace",
        "200ms",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["publish"]["refused"], 0, "{v}");
    assert_eq!(v["lost"], 120, "{v}");
    assert_eq!(
        v["lost_by_seq"],
        serde_json::json!({"0": 30, "1": 30, "2": 30, "3": 30}),
        "{v}"
    );
}

#[test]
fn ctrl_c_stops_the_run_and_still_reports() {
    let s = server(Config::default());
    let url = format!("ws://{}/", s.local_addr());
    let dir = std::env::temp_dir().join(format!("fanout-load-int-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let child = Command::new(env!("CARGO_BIN_EXE_fanout-load"))
        .args([
            "connect",
            "--url",
            &url,
            "-n",
            "50",
            "--duration",
            "60s",
            "--no-progress",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the 50 connections are held, then interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.open_connections() < 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.open_connections(), 50);
    let started = std::time::Instant::now();
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped promptly, not after 60 s"
    );
    assert_eq!(out.status.code(), Some(3), "interrupted runs exit 3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("established (max open) 50"), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["interrupted"], true);
    assert_eq!(v["established"], 50);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_and_echo_over_wss_with_a_ca_file_or_insecure() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("fanout-load-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let s = server(Config {
        tls: Some(fanout::server::tls::load_server_config(&cert, &key).unwrap()),
        ..Config::default()
    });
    let url = format!("wss://localhost:{}/", s.local_addr().port());
    let ca = cert.to_str().unwrap();
    let (code, v, out) = load(&[
        "connect",
        "--url",
        &url,
        "-n",
        "50",
        "--duration",
        "200ms",
        "--tls-ca",
        ca,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["established"], 50, "{out}");
    let (code, v, out) = load(&[
        "echo",
        "--url",
        &url,
        "-n",
        "5",
        "--duration",
        "300ms",
        "--message-size",
        "20000",
        "--insecure",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["failed_total"], 0, "{out}");
    assert!(v["messages"]["received"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["messages"]["mismatched"], 0, "{v}");
    // Without trust in the self-signed certificate, every handshake fails.
    let (code, v, out) = load(&["connect", "--url", &url, "-n", "3", "--duration", "100ms"]);
    if code == 2 {
        // A machine without a system CA bundle says so before connecting.
        assert!(out.contains("no system CA bundle"), "{out}");
    } else {
        assert_eq!(code, 3, "{out}");
        assert_eq!(v["established"], 0, "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A push server delivering envelopes, with a history of `history` messages (0: none).
fn push_server(history: usize) -> Server {
    use fanout::apps::push::{Push, PushConfig};
    use fanout::pubsub::history::{HistoryConfig, HistoryPolicy};
    Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            ..Config::default()
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            envelope: true,
            history: HistoryConfig {
                default: (history > 0).then_some(HistoryPolicy {
                    size: history,
                    ttl: None,
                }),
                ..HistoryConfig::default()
            },
            ..PushConfig::default()
        }),
    )
    .unwrap()
}

/// 200 subscribers, 20 publishes/s for 3 s, half of the subscribers dropped each second, each
/// away for `away` before it reconnects.
fn churn_run(
    addr: std::net::SocketAddr,
    processes: &str,
    away: &str,
) -> (i32, serde_json::Value, String) {
    load(&[
        "fanout",
        "--url",
        &format!("ws://{addr}/ws?topics=bench"),
        "-n",
        "200",
        "--processes",
        processes,
        "--publish-url",
        &format!("http://{addr}/publish/bench"),
        "--publish-header",
        "Authorization: Bearer k",
        "--publish-rate",
        "20",
        "--publish-count",
        "60",
        "--grace",
        "500ms",
        "--churn",
        "0.5",
        "--churn-away",
        away,
    ])
}

/// Subscribers that drop (close or reset) and come back with their last position get what
/// they missed from the history: nothing lost, nothing twice, every reconnect recovered.
#[test]
fn churn_with_history_recovers_every_reconnect() {
    let s = push_server(1000);
    // At once, or away long enough to miss a few publishes (which come back as replays).
    for (processes, away) in [("1", "0"), ("2", "0"), ("1", "120ms"), ("2", "120ms")] {
        let (code, v, out) = churn_run(s.local_addr(), processes, away);
        assert_eq!(code, 0, "{out}");
        let c = &v["churn"];
        let reconnects = c["reconnects"].as_u64().unwrap();
        // 0.5 x 200 a second for about 3 s.
        assert!(reconnects > 100, "{c}");
        assert_eq!(c["recovered"], reconnects, "{c}");
        assert_eq!(c["recovery_failed"], 0, "{c}");
        assert_eq!(c["rate"], 0.5);
        if away != "0" {
            // About 2 publishes missed per reconnect.
            assert!(
                c["messages_recovered"].as_u64().unwrap() > reconnects / 2,
                "{c}"
            );
        }
        assert!(c["recovery_ms"]["p99"].as_f64().unwrap() > 0.0, "{c}");
        assert_eq!(v["subscribers"], 200, "{v}");
        assert_eq!(v["expected"], 200 * 60, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["duplicated"], 0, "{v}");
        assert!(out.contains("churn 0.5/s: reconnects"), "{out}");
    }
}

/// Without a history the same churn loses what was published while subscribers were away,
/// and the run says so.
#[test]
fn churn_without_history_is_reported_as_lost() {
    let s = push_server(0);
    let (code, v, out) = churn_run(s.local_addr(), "1", "120ms");
    assert_eq!(code, 3, "{out}");
    let c = &v["churn"];
    let reconnects = c["reconnects"].as_u64().unwrap();
    assert!(reconnects > 0, "{c}");
    assert_eq!(c["recovered"], 0, "{c}");
    assert_eq!(c["recovery_failed"], reconnects, "{c}");
    let by_reason = &c["recovery_failed_by_reason"];
    assert!(by_reason["no_position"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(v["subscribers"], 200, "{v}");
    assert!(v["lost"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn churn_must_be_a_fraction() {
    for bad in ["0", "1.5", "-0.1"] {
        let (code, _, out) = load(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:1/ws",
            "-n",
            "1",
            "--publish-url",
            "http://127.0.0.1:1/publish/bench",
            &format!("--churn={bad}"),
        ]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("0 < P <= 1"), "{out}");
    }
}

#[test]
fn ramp_steps_and_an_idle_hold_show_in_the_progress_lines() {
    let s = server(Config::default());
    let url = format!("ws://{}/", s.local_addr());
    // Steps of 100 across 2 processes, each held 600 ms: 3 steps (the last one partial).
    let (code, v, out) = load(&[
        "connect",
        "--url",
        &url,
        "-n",
        "250",
        "--processes",
        "2",
        "--ramp-step",
        "100",
        "--step-hold",
        "600ms",
        "--duration",
        "200ms",
        "--progress-lines",
        "50ms",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["established"], 250);
    assert_eq!(v["params"]["ramp_step"], 100);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("progress ")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("phase=ramp") && l.contains("steps=1")),
        "a step held during the ramp: {out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("phase=run") && l.contains("open=250") && l.contains("steps=3")),
        "{out}"
    );
    // Echo with --hold: the connections sit idle, then every one sends.
    let (code, v, out) = load(&[
        "echo",
        "--url",
        &url,
        "-n",
        "50",
        "--hold",
        "300ms",
        "--rate",
        "4",
        "--duration",
        "500ms",
        "--progress-lines",
        "50ms",
    ]);
    assert_eq!(code, 0, "{out}");
    let idle = out.find("phase=idle").expect("an idle phase");
    let run = out.find("phase=run").expect("a run phase");
    assert!(idle < run, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("phase=idle") && l.contains("open=50") && l.contains("received=0")),
        "nothing is sent while idle: {out}"
    );
    assert_eq!(v["params"]["idle_hold_s"], 0.3);
    assert!(v["messages"]["received"].as_u64().unwrap() >= 50, "{v}");
}
