//! The soak: for --duration, an echo server and a push server (short --ping-interval and
//! --pong-timeout) under churn (connects and disconnects at a steady rate, half of them RST
//! via SO_LINGER 0), steady echo traffic, publishes to push subscribers with slow readers
//! among them, and a population that never answers pings. Checks: RSS after the churn within
//! --rss-drift of its level after warm-up, the open-connection gauge back to its baseline
//! (the silent population reaped by the server, not closed by us), and no accepted message
//! lost for the well-behaved echo clients and push subscribers.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::good::{GoodClient, GoodPlan};
use super::raw::{self, connect, frame, upgrade};
use super::server::{metrics, ServerProc};
use super::{mib, App, AttackArgs, PUBLISH_KEY};

const PING: &str = "1s";
const PONG: &str = "1s";
/// Churn connections opened per second; a hard cap on those alive at once.
const CHURN_RATE: f64 = 40.0;
const CHURN_MAX_ALIVE: usize = 200;
/// Silent peers opened per second, and at most this many in all.
const SILENT_RATE: f64 = 2.0;
const SILENT_MAX: usize = 2000;
/// Slow (never-reading) subscribers kept on the push server, each replaced after 8 s (RST)
/// unless the server closed it first.
const SLOW_READERS: usize = 5;
/// 64 KiB publishes per second by HTTP to the good subscribers' topics; each slow reader is
/// subscribed to all of them, so its queue fills within a second or two.
const PUBLISH_RATE: f64 = 20.0;
const PUBLISH_BYTES: usize = 64 << 10;

fn gauge(addr: SocketAddr) -> Option<f64> {
    metrics(addr)?.get("fanout_open_connections").copied()
}

fn counter(addr: SocketAddr, name: &str) -> f64 {
    metrics(addr)
        .and_then(|m| m.get(name).copied())
        .unwrap_or(0.0)
}

/// Opens an upgraded raw socket; None if refused.
fn raw_ws(addr: SocketAddr, path: &str, source: Ipv4Addr, small_rcvbuf: bool) -> Option<TcpStream> {
    let mut s = connect(addr, Some(source)).ok()?;
    if small_rcvbuf {
        raw::set_small_rcvbuf(&s, 4096);
    }
    upgrade(&mut s, path, "").ok()?;
    Some(s)
}

pub fn run(a: &AttackArgs, bin: &Path) -> Result<(Value, bool), String> {
    let flags: Vec<String> = ["--ping-interval", PING, "--pong-timeout", PONG]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let echo = ServerProc::start(bin, App::Echo, &flags, None)?;
    let push = ServerProc::start(bin, App::Push, &flags, None)?;
    let (ea, pa) = (echo.addr, push.addr);
    eprintln!(
        "== soak {:?}: echo server pid {}, push server pid {}",
        a.duration, echo.pid, push.pid
    );
    let base_gauge = (gauge(ea), gauge(pa));
    let pong_before = counter(ea, "fanout_pong_timeouts_total");
    let slow_before = (
        (counter(pa, "fanout_slow_consumer_disconnected_total")
            + counter(pa, "fanout_push_slow_consumers_closed_total")
            + counter(pa, "fanout_pong_timeouts_total")),
        counter(pa, "fanout_slow_consumer_dropped_frames_total"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // Every thread's hard stop, whatever happens to the flag.
    let cap = started + a.duration + Duration::from_secs(60);

    // Well-behaved: echo clients and push subscribers that publish to their own topics.
    let good_echo = GoodClient::start(GoodPlan {
        addr: ea,
        app: App::Echo,
        connections: a.good_connections,
        rate: a.good_rate,
        jwt: false,
    });
    let good_push = GoodClient::start(GoodPlan {
        addr: pa,
        app: App::Push,
        connections: a.good_connections,
        rate: a.good_rate,
        jwt: false,
    });
    let good_open = good_echo.wait_open(a.good_connections, Duration::from_secs(5))
        && good_push.wait_open(a.good_connections, Duration::from_secs(5));

    // Churn on the echo server: connect, send a message, hold ~0.5 s, close (half RST).
    let churned = Arc::new(AtomicU64::new(0));
    let churn_failed = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, churned, failed) = (stop.clone(), churned.clone(), churn_failed.clone());
        std::thread::spawn(move || {
            let mut alive: VecDeque<(TcpStream, Instant, bool)> = VecDeque::new();
            let every = Duration::from_secs_f64(1.0 / CHURN_RATE);
            let mut next = Instant::now();
            let mut i = 0u64;
            let hello = frame(0x81, b"churn", false);
            while !stop.load(Relaxed) && Instant::now() < cap {
                let now = Instant::now();
                while alive.front().is_some_and(|(_, t, _)| *t <= now) {
                    if let Some((mut s, _, rst)) = alive.pop_front() {
                        if rst {
                            raw::set_linger_zero(&s);
                        } else {
                            let _ = s.write_all(&frame(0x88, &1000u16.to_be_bytes(), false));
                        }
                        drop(s);
                    }
                }
                if now >= next && alive.len() < CHURN_MAX_ALIVE {
                    next += every;
                    let src = Ipv4Addr::new(127, 0, 4, 1 + (i % 200) as u8);
                    match raw_ws(ea, "/", src, false) {
                        Some(mut s) => {
                            let _ = s.write_all(&hello);
                            let hold = Duration::from_millis(200 + (i * 37 % 600));
                            alive.push_back((s, now + hold, i % 2 == 1));
                            churned.fetch_add(1, Relaxed);
                        }
                        None => {
                            failed.fetch_add(1, Relaxed);
                        }
                    }
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            for (s, _, _) in alive {
                raw::set_linger_zero(&s);
            }
        })
    };

    // Silent peers: upgraded, then never read or answer a ping; kept open by us.
    let silent_opened = Arc::new(AtomicU64::new(0));
    let silent = {
        let (stop, opened) = (stop.clone(), silent_opened.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let every = Duration::from_secs_f64(1.0 / SILENT_RATE);
            let mut next = Instant::now();
            while !stop.load(Relaxed) && Instant::now() < cap {
                if Instant::now() >= next && held.len() < SILENT_MAX {
                    next += every;
                    let src = Ipv4Addr::new(127, 0, 5, 1 + (held.len() % 200) as u8);
                    if let Some(s) = raw_ws(ea, "/", src, true) {
                        held.push(s);
                        opened.fetch_add(1, Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            held
        })
    };

    // Slow readers on the good subscribers' topics, replaced every 5 s (RST), and an HTTP
    // publisher of 16 KiB messages to those topics.
    let published = Arc::new(AtomicU64::new(0));
    let publish_failed = Arc::new(AtomicU64::new(0));
    let pusher = {
        let (stop, ok, failed) = (stop.clone(), published.clone(), publish_failed.clone());
        let topics = a.good_connections.max(1);
        std::thread::spawn(move || {
            let mut slow: Vec<(TcpStream, Instant)> = Vec::new();
            let body = vec![b's'; PUBLISH_BYTES];
            let auth = format!("Authorization: Bearer {PUBLISH_KEY}\r\n");
            let every = Duration::from_secs_f64(1.0 / PUBLISH_RATE);
            let mut next = Instant::now();
            let mut i = 0usize;
            while !stop.load(Relaxed) && Instant::now() < cap {
                slow.retain(|(s, t)| {
                    let keep = t.elapsed() < Duration::from_secs(8);
                    if !keep {
                        raw::set_linger_zero(s);
                    }
                    keep
                });
                while slow.len() < SLOW_READERS {
                    let all: Vec<String> = (0..topics).map(|t| format!("probe-{t}")).collect();
                    let path = format!("/ws?topics={}", all.join(","));
                    match raw_ws(pa, &path, Ipv4Addr::new(127, 0, 6, 1), true) {
                        Some(s) => slow.push((s, Instant::now())),
                        None => break,
                    }
                }
                if Instant::now() >= next {
                    next += every;
                    let path = format!("/publish/probe-{}", i % topics);
                    i += 1;
                    match raw::http(
                        pa,
                        Some(Ipv4Addr::new(127, 0, 6, 2)),
                        "POST",
                        &path,
                        &auth,
                        &body,
                    ) {
                        Ok((200, _)) => ok.fetch_add(1, Relaxed),
                        _ => failed.fetch_add(1, Relaxed),
                    };
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            for (s, _) in slow {
                raw::set_linger_zero(&s);
            }
        })
    };

    // RSS every second; the warm-up level at min(10 s, duration / 6).
    let warmup = Duration::from_secs(10).min(a.duration / 6);
    let mut rss: Vec<(f64, u64, u64)> = Vec::new();
    let mut warm: Option<(u64, u64)> = None;
    let end = started + a.duration;
    let mut next = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            let e = crate::procinfo::rss_bytes(echo.pid).unwrap_or(0);
            let p = crate::procinfo::rss_bytes(push.pid).unwrap_or(0);
            rss.push((started.elapsed().as_secs_f64(), e, p));
            if warm.is_none() && started.elapsed() >= warmup {
                warm = Some((e, p));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Relaxed);
    let _ = churn.join();
    let _ = pusher.join();
    let silent_held = silent.join().unwrap_or_default();
    let ge = good_echo.stop();
    let gp = good_push.stop();

    // The silent peers are still open on our side: only the server's ping timeout closes
    // them. Give it ping + pong + slack, watching the gauges come back.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut last = (gauge(ea), gauge(pa));
    while Instant::now() < deadline && last != base_gauge {
        std::thread::sleep(Duration::from_millis(200));
        last = (gauge(ea), gauge(pa));
    }
    let pong_timeouts = counter(ea, "fanout_pong_timeouts_total") - pong_before;
    let slow_closed = (counter(pa, "fanout_slow_consumer_disconnected_total")
        + counter(pa, "fanout_push_slow_consumers_closed_total")
        + counter(pa, "fanout_pong_timeouts_total"))
        - slow_before.0;
    let slow_dropped = counter(pa, "fanout_slow_consumer_dropped_frames_total") - slow_before.1;
    // Settle, then the RSS after the churn (allocator returns included).
    std::thread::sleep(Duration::from_secs(1));
    let after = (
        crate::procinfo::rss_bytes(echo.pid).unwrap_or(0),
        crate::procinfo::rss_bytes(push.pid).unwrap_or(0),
    );
    let up = raw::http(
        ea,
        Some(super::server::PROBE_IP),
        "GET",
        "/healthz",
        "",
        b"",
    )
    .is_ok_and(|(c, _)| c == 200)
        && raw::http(
            pa,
            Some(super::server::PROBE_IP),
            "GET",
            "/healthz",
            "",
            b"",
        )
        .is_ok_and(|(c, _)| c == 200);
    drop(silent_held);
    let (mut echo, mut push) = (echo, push);
    echo.stop();
    push.stop();

    let warm = warm.unwrap_or(after);
    let drift = |w: u64, x: u64| (x as f64 - w as f64) / (w.max(1) as f64);
    let (de, dp) = (drift(warm.0, after.0), drift(warm.1, after.1));
    let rss_ok = de <= a.rss_drift && dp <= a.rss_drift;
    let gauge_ok = base_gauge.0.is_some() && last == base_gauge;
    let lost_echo = ge.sent.saturating_sub(ge.received);
    let lost_push = gp.sent.saturating_sub(gp.received);
    let lost_ok = lost_echo == 0 && lost_push == 0 && ge.errors == 0 && gp.errors == 0 && good_open;
    let silent_n = silent_opened.load(Relaxed);
    let ok = rss_ok && gauge_ok && lost_ok && up;
    println!(
        "\nsoak {:.0} s: churned {} (failed {}), silent peers {} (pong timeouts {}), publishes {} ok / {} failed, slow readers closed by the server {} (dropped frames {})",
        a.duration.as_secs_f64(),
        churned.load(Relaxed),
        churn_failed.load(Relaxed),
        silent_n,
        pong_timeouts,
        published.load(Relaxed),
        publish_failed.load(Relaxed),
        slow_closed,
        slow_dropped
    );
    println!(
        "  RSS echo {:.1} -> {:.1} MiB ({:+.1}%), push {:.1} -> {:.1} MiB ({:+.1}%), bound +{:.0}%: {}",
        mib(warm.0),
        mib(after.0),
        de * 100.0,
        mib(warm.1),
        mib(after.1),
        dp * 100.0,
        a.rss_drift * 100.0,
        if rss_ok { "ok" } else { "BROKEN" }
    );
    println!(
        "  open connections (echo, push) baseline {:?} -> after {:?}: {}",
        base_gauge,
        last,
        if gauge_ok { "ok" } else { "BROKEN" }
    );
    println!(
        "  good echo: sent {} received {} lost {} errors {} p99 {:.3} ms; good push: sent {} received {} lost {} errors {} p99 {:.3} ms: {}",
        ge.sent, ge.received, lost_echo, ge.errors, ge.before.p99, gp.sent, gp.received, lost_push, gp.errors, gp.before.p99,
        if lost_ok { "ok" } else { "BROKEN" }
    );
    println!("  servers up after: {}", if up { "yes" } else { "NO" });
    let v = json!({
        "duration_seconds": a.duration.as_secs_f64(),
        "server_flags": flags,
        "warmup_seconds": warmup.as_secs_f64(),
        "churn": {
            "rate": CHURN_RATE,
            "opened": churned.load(Relaxed),
            "failed": churn_failed.load(Relaxed),
            "rst_fraction": 0.5,
        },
        "silent": { "rate": SILENT_RATE, "opened": silent_n, "pong_timeouts": pong_timeouts },
        "publish": {
            "rate": PUBLISH_RATE,
            "bytes": PUBLISH_BYTES,
            "slow_consumer_closed": slow_closed,
            "slow_consumer_dropped_frames": slow_dropped,
            "ok": published.load(Relaxed),
            "failed": publish_failed.load(Relaxed),
            "slow_readers": SLOW_READERS,
        },
        "good_echo": { "sent": ge.sent, "received": ge.received, "lost": lost_echo, "errors": ge.errors, "latency_ms": ge.before },
        "good_push": { "sent": gp.sent, "received": gp.received, "lost": lost_push, "errors": gp.errors, "latency_ms": gp.before },
        "rss_bytes": {
            "samples": rss.iter().map(|(t, e, p)| json!([t, e, p])).collect::<Vec<_>>(),
            "echo": { "warm": warm.0, "after": after.0, "drift": de },
            "push": { "warm": warm.1, "after": after.1, "drift": dp },
            "bound": a.rss_drift,
        },
        "open_connections": { "baseline": [base_gauge.0, base_gauge.1], "after": [last.0, last.1] },
        "checks": { "rss": rss_ok, "gauge": gauge_ok, "no_loss": lost_ok, "server_up": up },
        "ok": ok,
    });
    Ok((v, ok))
}
