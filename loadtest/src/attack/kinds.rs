//! The attack kinds of the hostile review (issue #20), one function each: what the attackers
//! send, what each observed, and whether that is the refusal the docs promise. Every attacker
//! is bounded in count (`Ctx::n`), bytes and seconds.

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::time::{Duration, Instant};

use fanout::proto::DecoderConfig;
use serde_json::json;

use super::good::jwt;
use super::raw::{
    self, connect, frame, io_outcome, read_close, read_status, upgrade, write_bounded,
};
use super::{App, Ctx, Outcome, JWT_SECRET, PUBLISH_KEY};

pub struct Kind {
    pub name: &'static str,
    pub what: &'static str,
    pub app: App,
    /// The server's flags for this kind (given --full).
    pub flags: fn(bool) -> Vec<String>,
    /// The server's RLIMIT_NOFILE, when the kind needs it low.
    pub nofile: Option<u64>,
    /// /metrics counters of which at least one must move.
    pub counters: &'static [&'static str],
    pub run: fn(&Ctx) -> Outcome,
}

impl Kind {
    pub fn flags_need_jwt(&self, flags: &[String]) -> bool {
        flags.iter().any(|f| f == "--jwt-secret")
    }
}

fn none(_: bool) -> Vec<String> {
    Vec::new()
}

fn v(x: &[&str]) -> Vec<String> {
    x.iter().map(|s| s.to_string()).collect()
}

pub fn all() -> Vec<Kind> {
    vec![
        Kind {
            name: "slowloris",
            what: "request heads dripped a byte at a time: closed at --handshake-timeout",
            app: App::Echo,
            flags: |_| v(&["--handshake-timeout", "2s"]),
            nofile: None,
            counters: &["fanout_handshake_timeouts_total"],
            run: slowloris,
        },
        Kind {
            name: "big-head",
            what: "64 KiB request heads: 431 past --max-header-bytes",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &["fanout_http_431_total"],
            run: big_head,
        },
        Kind {
            name: "huge-length",
            what: "frames declaring 2^63 and 2^63-1 bytes: close 1002 / 1009 from the header",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &[
                "fanout_closed_protocol_error_total",
                "fanout_closed_message_too_big_total",
            ],
            run: huge_length,
        },
        Kind {
            name: "fragment-flood",
            what: "thousands of 1-byte fragments then 64 KiB ones past --max-message-size: 1009",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &["fanout_closed_message_too_big_total"],
            run: fragment_flood,
        },
        Kind {
            name: "invalid-utf8",
            what: "text messages with invalid UTF-8 (whole, across fragments, surrogates): 1007",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &["fanout_closed_invalid_utf8_total"],
            run: invalid_utf8,
        },
        Kind {
            name: "ping-flood",
            what: "pings as fast as possible, pongs never read: reading paused at the queue limit",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &["fanout_slow_consumer_paused_total"],
            run: ping_flood,
        },
        Kind {
            name: "slow-reader",
            what: "large echo messages sent, answers never read: reading paused, memory bounded",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &["fanout_slow_consumer_paused_total"],
            run: slow_reader,
        },
        Kind {
            name: "slow-subscriber",
            what: "1 MiB publishes to a subscriber that never reads (--slow-consumer pause): dropped, counted",
            app: App::Push,
            flags: |_| v(&["--slow-consumer", "pause"]),
            nofile: None,
            counters: &["fanout_slow_consumer_dropped_frames_total"],
            run: slow_subscriber,
        },
        Kind {
            name: "conn-flood",
            what: "connections past --max-conns-per-ip 10 (429) and --max-connections 500 (503)",
            app: App::Echo,
            flags: |_| v(&["--max-conns-per-ip", "10", "--max-connections", "500"]),
            nofile: None,
            counters: &[
                "fanout_per_ip_connections_refused_total",
                "fanout_rejected_max_connections_total",
            ],
            run: conn_flood,
        },
        Kind {
            name: "fd-flood",
            what: "connections past RLIMIT_NOFILE 256 (with --max-connections above it): EMFILE handled",
            app: App::Echo,
            flags: |_| v(&["--max-connections", "10000"]),
            nofile: Some(256),
            counters: &[
                "fanout_accept_emfile_total",
                "fanout_rejected_max_connections_total",
                "fanout_accept_errors_total",
            ],
            run: fd_flood,
        },
        Kind {
            name: "protocol",
            what: "RFC 6455 violations (unmasked, reserved opcode, RSV1, long/fragmented control, bad close): 1002",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &["fanout_closed_protocol_error_total"],
            run: protocol,
        },
        Kind {
            name: "deflate-bomb",
            what: "a compressed message inflating past --max-message-size (--deflate): 1009",
            app: App::Echo,
            flags: |_| v(&["--deflate"]),
            nofile: None,
            counters: &["fanout_closed_message_too_big_total"],
            run: deflate_bomb,
        },
        Kind {
            name: "publish-abuse",
            what: "POST /publish with no or a wrong key, 16 MiB, chunked, conflicting lengths: refused on the head",
            app: App::Push,
            flags: none,
            nofile: None,
            counters: &[
                "fanout_http_400_total",
                "fanout_http_401_total",
                "fanout_http_403_total",
                "fanout_http_other_4xx_total",
            ],
            run: publish_abuse,
        },
        Kind {
            name: "forged-jwt",
            what: "upgrades with alg none, a wrong key, expired, garbage, missing, HS512 tokens: 401",
            app: App::Echo,
            flags: |_| v(&["--jwt-secret", "{jwt}"]),
            nofile: None,
            counters: &[
                "fanout_auth_missing_token_total",
                "fanout_auth_malformed_token_total",
                "fanout_auth_bad_signature_total",
                "fanout_auth_expired_token_total",
                "fanout_auth_bad_algorithm_total",
            ],
            run: forged_jwt,
        },
        Kind {
            name: "half-close-rst",
            what: "half-close (SHUT_WR) and RST mid-frame and with a reply queued: reaped, gauge back",
            app: App::Echo,
            flags: |_| v(&["--close-timeout", "2s"]),
            nofile: None,
            counters: &[
                "fanout_closed_abnormal_total",
                "fanout_closed_by_peer_total",
                "fanout_io_errors_total",
                "fanout_closed_protocol_error_total",
            ],
            run: half_close_rst,
        },
        Kind {
            name: "sigterm",
            what: "SIGTERM with many clients open: every client gets 1001, the server exits 0 in time",
            app: App::Echo,
            flags: none,
            nofile: None,
            counters: &[],
            run: sigterm,
        },
    ]
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::new(a, b, c, d))
}

/// Connects and upgrades `n` sockets on `path`; failures are recorded as outcomes.
fn upgraded(c: &Ctx, o: &mut Outcome, n: u64, path: &str, extra: &str) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        match connect(c.addr, None) {
            Ok(mut s) => match upgrade(&mut s, path, extra) {
                Ok(()) => out.push(s),
                Err(e) => o.saw(format!("upgrade refused: {e}")),
            },
            Err(e) => o.saw(format!("connect failed: {}", io_outcome(&e))),
        }
    }
    out
}

fn slowloris(c: &Ctx) -> Outcome {
    let n = c.n(100, 500);
    let mut o = Outcome {
        attackers: n,
        expected: "each socket closed by the server within --handshake-timeout 2s (+1.5 s)".into(),
        ..Default::default()
    };
    let mut socks: Vec<Option<TcpStream>> = Vec::new();
    for _ in 0..n {
        match connect(c.addr, None) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
                socks.push(Some(s));
            }
            Err(e) => o.saw(format!("connect failed: {}", io_outcome(&e))),
        }
    }
    let deadline = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < deadline {
        for slot in socks.iter_mut() {
            if let Some(s) = slot {
                if let Err(e) = s.write_all(b"a") {
                    o.saw(format!("closed by server ({})", io_outcome(&e)));
                    *slot = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for mut s in socks.into_iter().flatten() {
        let r = read_status(&mut s, Instant::now() + Duration::from_millis(100));
        o.saw(match r.as_str() {
            "no answer" => "still open after 3.5 s".to_string(),
            x => format!("closed by server ({x})"),
        });
    }
    o.refusal_ok = o.outcomes.keys().all(|k| k.starts_with("closed by server"));
    o
}

fn big_head(c: &Ctx) -> Outcome {
    let n = c.n(50, 500);
    let mut o = Outcome {
        attackers: n,
        expected: "http 431 (a reset is tolerated: the answer lost to the RST of unread input)"
            .into(),
        ..Default::default()
    };
    let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Big: ".to_vec();
    head.resize(64 << 10, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let mut socks = Vec::new();
    for _ in 0..n {
        match connect(c.addr, None) {
            Ok(mut s) => {
                // The first 16 KiB is past the 8 KiB limit: the answer is due now.
                let (_, r) = write_bounded(
                    &mut s,
                    &head[..16 << 10],
                    Instant::now() + Duration::from_secs(1),
                    Duration::from_millis(300),
                );
                if r == "reset" {
                    o.saw("reset");
                } else {
                    socks.push(s);
                }
            }
            Err(e) => o.saw(format!("connect failed: {}", io_outcome(&e))),
        }
    }
    for mut s in socks {
        o.saw(read_status(&mut s, Instant::now() + Duration::from_secs(2)));
        let _ = write_bounded(
            &mut s,
            &head[16 << 10..],
            Instant::now() + Duration::from_millis(200),
            Duration::from_millis(50),
        );
    }
    o.refusal_ok = o.count("http 431") > 0 && o.only(&["http 431", "reset", "eof"]);
    o
}

fn huge_length(c: &Ctx) -> Outcome {
    let n = c.n(20, 200);
    let mut o = Outcome {
        attackers: n,
        expected: "close 1002 (2^63: the top bit is reserved) or 1009 (2^63-1: too big)".into(),
        ..Default::default()
    };
    let socks = upgraded(c, &mut o, n, "/", "");
    let mut sent = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        let len: u64 = if i % 2 == 0 { 1 << 63 } else { (1 << 63) - 1 };
        let mut f = vec![0x82, 0xff];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(&[0u8; 64]);
        let _ = s.write_all(&f);
        sent.push(s);
    }
    o.saw_closes(sent.iter_mut(), Duration::from_secs(2), 1 << 20);
    o.refusal_ok = o.only(&["close 1002", "close 1009"]);
    o
}

fn fragment_flood(c: &Ctx) -> Outcome {
    let n = c.n(2, 4);
    let mut o = Outcome {
        attackers: n,
        expected: "close 1009 once the fragments pass --max-message-size (default 1 MiB)".into(),
        ..Default::default()
    };
    let mut socks = upgraded(c, &mut o, n, "/", "");
    // 2,000 one-byte fragments, then 64 KiB ones up to 17 MiB (the review's size; the server
    // closes once they pass its limit).
    let mut tiny = frame(0x02, b"x", false);
    for _ in 0..2000 {
        tiny.extend_from_slice(&frame(0x00, b"x", false));
    }
    let big = frame(0x00, &vec![b'y'; 64 << 10], false);
    let target = 17usize << 20;
    let mut done = vec![0usize; socks.len()];
    let mut stopped: Vec<Option<String>> = vec![None; socks.len()];
    for (i, s) in socks.iter_mut().enumerate() {
        let (w, r) = write_bounded(
            s,
            &tiny,
            Instant::now() + Duration::from_secs(2),
            Duration::from_millis(500),
        );
        done[i] += w;
        if r != "done" {
            stopped[i] = Some(r);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && stopped.iter().any(|s| s.is_none()) {
        for (i, s) in socks.iter_mut().enumerate() {
            if stopped[i].is_some() {
                continue;
            }
            let (w, r) = write_bounded(s, &big, deadline, Duration::from_millis(500));
            done[i] += w;
            if r != "done" {
                stopped[i] = Some(r);
            } else if done[i] >= target {
                stopped[i] = Some("done".into());
            }
        }
    }
    o.saw_closes(socks.iter_mut(), Duration::from_secs(3), 64 << 20);
    o.extra = json!({ "bytes_sent": done, "write_stops": stopped });
    o.refusal_ok = o.only(&["close 1009"]);
    o
}

fn invalid_utf8(c: &Ctx) -> Outcome {
    let n = c.n(21, 201);
    let mut o = Outcome {
        attackers: n,
        expected: "close 1007".into(),
        ..Default::default()
    };
    let socks = upgraded(c, &mut o, n, "/", "");
    let mut sent = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        let bytes = match i % 3 {
            0 => frame(0x81, &[b'o', b'k', 0xc3, 0x28], false),
            1 => {
                let mut f = frame(0x01, b"abc", false);
                f.extend_from_slice(&frame(0x80, &[0xff, 0xfe], false));
                f
            }
            _ => frame(0x81, &[0xed, 0xa0, 0x80], false),
        };
        let _ = s.write_all(&bytes);
        sent.push(s);
    }
    o.saw_closes(sent.iter_mut(), Duration::from_secs(2), 1 << 20);
    o.refusal_ok = o.only(&["close 1007"]);
    o
}

/// Writes `chunk` to every socket round robin until `secs` pass, never reading. Returns the
/// bytes each took and how each stopped: "writes blocked" (the server stopped reading) or an
/// I/O outcome (it closed).
fn flood(
    socks: &mut [TcpStream],
    chunk: &[u8],
    secs: Duration,
    per_conn_cap: usize,
) -> (Vec<usize>, Vec<String>) {
    let mut sent = vec![0usize; socks.len()];
    let mut state: Vec<Option<String>> = vec![None; socks.len()];
    let mut blocked_since: Vec<Option<Instant>> = vec![None; socks.len()];
    for s in socks.iter() {
        let _ = s.set_nonblocking(true);
    }
    let deadline = Instant::now() + secs;
    while Instant::now() < deadline && state.iter().any(|s| s.is_none()) {
        let mut progress = false;
        for (i, s) in socks.iter_mut().enumerate() {
            if state[i].is_some() {
                continue;
            }
            if sent[i] >= per_conn_cap {
                state[i] = Some("cap reached".into());
                continue;
            }
            let off = sent[i] % chunk.len();
            match s.write(&chunk[off..]) {
                Ok(k) => {
                    sent[i] += k;
                    blocked_since[i] = None;
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked_since[i].get_or_insert(Instant::now());
                }
                Err(e) => state[i] = Some(io_outcome(&e)),
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let out = state
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.unwrap_or_else(|| match blocked_since[i] {
                Some(t) if t.elapsed() >= Duration::from_millis(300) => "writes blocked".into(),
                _ => "still sending".into(),
            })
        })
        .collect();
    for s in socks.iter() {
        let _ = s.set_nonblocking(false);
    }
    (sent, out)
}

fn ping_flood(c: &Ctx) -> Outcome {
    let n = c.n(5, 20);
    let secs = Duration::from_secs(if c.full { 5 } else { 2 });
    let mut o = Outcome {
        attackers: n,
        expected: "writes blocked: the server stopped reading at the queue limit".into(),
        ..Default::default()
    };
    let mut socks = upgraded(c, &mut o, n, "/", "");
    for s in &socks {
        raw::set_small_rcvbuf(s, 4096);
    }
    let ping = frame(0x89, &[b'p'; 125], false);
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 500)
        .collect();
    let (sent, states) = flood(&mut socks, &chunk, secs, 256 << 20);
    for st in &states {
        o.saw(st.clone());
    }
    for s in &socks {
        raw::set_linger_zero(s);
    }
    o.extra = json!({ "bytes_sent": sent, "pings_sent": sent.iter().sum::<usize>() / ping.len() });
    o.refusal_ok = o.only(&["writes blocked"]);
    o
}

fn slow_reader(c: &Ctx) -> Outcome {
    let n = c.n(3, 10);
    // Messages just under the server's default --max-message-size (1 MiB), so they are valid
    // and each one costs the server the most it allows: the review sent 16 MiB ones, which
    // the default now refuses with 1009 on the frame header (huge-length, fragment-flood).
    let size = DecoderConfig::DEFAULT_MAX_MESSAGE_SIZE;
    let secs = Duration::from_secs(if c.full { 5 } else { 2 });
    let mut o = Outcome {
        attackers: n,
        expected: "writes blocked: the server stopped reading (pause), memory bounded".into(),
        ..Default::default()
    };
    let size = size - 64;
    let mut socks = upgraded(c, &mut o, n, "/", "");
    for s in &socks {
        raw::set_small_rcvbuf(s, 4096);
    }
    let msg = frame(0x82, &vec![b'z'; size], false);
    let (sent, states) = flood(&mut socks, &msg, secs, msg.len() * 64);
    for st in &states {
        o.saw(st.clone());
    }
    for s in &socks {
        raw::set_linger_zero(s);
    }
    o.extra = json!({ "message_bytes": size, "bytes_sent": sent });
    o.refusal_ok = o.only(&["writes blocked"]);
    o
}

fn slow_subscriber(c: &Ctx) -> Outcome {
    let count = c.n(30, 150);
    let mut o = Outcome {
        attackers: 1,
        expected:
            "every publish answered 200; frames past the subscriber's queue dropped and counted"
                .into(),
        ..Default::default()
    };
    let sub = connect(c.addr, None).inspect(|s| raw::set_small_rcvbuf(s, 4096));
    let mut sub = match sub {
        Ok(s) => s,
        Err(e) => {
            o.saw(format!("connect failed: {}", io_outcome(&e)));
            return o;
        }
    };
    if let Err(e) = upgrade(&mut sub, "/ws?topics=slow", "") {
        o.saw(format!("subscriber refused: {e}"));
        return o;
    }
    std::thread::sleep(Duration::from_millis(200));
    let body = vec![b'm'; (1 << 20) - 1024];
    let auth = format!("Authorization: Bearer {PUBLISH_KEY}\r\n");
    let deadline = Instant::now() + Duration::from_secs(if c.full { 60 } else { 20 });
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let a = match raw::http(c.addr, None, "POST", "/publish/slow", &auth, &body) {
            Ok((code, _)) => format!("publish http {code}"),
            Err(e) => format!("publish error {e}"),
        };
        *answers.entry(a).or_insert(0u64) += 1;
    }
    for (k, v) in &answers {
        o.outcomes.insert(k.clone(), *v);
    }
    // The subscriber: still open (its queue holds what fits), answered by a reset at the end.
    raw::set_linger_zero(&sub);
    o.extra = json!({ "publishes": count, "publish_bytes": body.len() });
    o.refusal_ok = o.only(&["publish http 200"]);
    o
}

/// Connects `n` sockets from `source(i)`, each sending the first line of a request and no more
/// (a slowloris: a socket that sends nothing is not even handed to a server that uses
/// TCP_DEFER_ACCEPT until its deferral has passed), waits, and reads what each was told at
/// accept: "http NNN", "eof", or "held" (accepted, or waiting in the backlog).
fn flood_accept(
    c: &Ctx,
    o: &mut Outcome,
    n: u64,
    source: impl Fn(u64) -> Option<Ipv4Addr>,
) -> Vec<TcpStream> {
    let mut socks = Vec::new();
    for i in 0..n {
        match connect(c.addr, source(i)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\n");
                socks.push(s)
            }
            Err(e) => o.saw(format!("connect failed: {}", io_outcome(&e))),
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    let mut held = Vec::new();
    for mut s in socks {
        let _ = s.set_nonblocking(true);
        let mut buf = [0u8; 512];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => o.saw("eof"),
            Ok(k) => {
                let text = String::from_utf8_lossy(&buf[..k]);
                let code = text.split_whitespace().nth(1).unwrap_or("?").to_string();
                o.saw(format!("http {code}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                o.saw("held");
                held.push(s);
            }
            Err(e) => o.saw(io_outcome(&e)),
        }
    }
    held
}

fn conn_flood(c: &Ctx) -> Outcome {
    let a = c.n(40, 150);
    let b = c.n(540, 540);
    let mut o = Outcome {
        attackers: a + b,
        expected: "past 10 from one address: http 429; past 500 in all: http 503; the rest held"
            .into(),
        ..Default::default()
    };
    let one = flood_accept(c, &mut o, a, |_| ip(127, 0, 0, 3));
    let many = flood_accept(c, &mut o, b, |i| ip(127, 0, 1, 1 + (i / 9) as u8));
    o.extra = json!({ "from_one_address": a, "from_many": b, "held": one.len() + many.len() });
    for s in one.iter().chain(many.iter()) {
        raw::set_linger_zero(s);
    }
    o.refusal_ok = o.count("http 429") > 0
        && o.count("http 503") > 0
        && o.only(&["http 429", "http 503", "held"]);
    o
}

fn fd_flood(c: &Ctx) -> Outcome {
    let n = c.n(400, 1000);
    let mut o = Outcome {
        attackers: n,
        expected: "the server keeps serving; sockets past its fd limit wait in the backlog (held) or are refused".into(),
        ..Default::default()
    };
    let held = flood_accept(c, &mut o, n, |i| ip(127, 0, 2, 1 + (i / 200) as u8));
    for s in &held {
        raw::set_linger_zero(s);
    }
    o.refusal_ok = !o.outcomes.keys().any(|k| k.starts_with("connect failed"));
    o
}

fn protocol(c: &Ctx) -> Outcome {
    let n = c.n(27, 207);
    let mut o = Outcome {
        attackers: n,
        expected: "close 1002".into(),
        ..Default::default()
    };
    let socks = upgraded(c, &mut o, n, "/", "");
    let mut sent = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        let bytes = match i % 9 {
            0 => frame(0x82, b"unmasked", true),
            1 => frame(0x83, b"reserved opcode", false),
            2 => frame(0xc2, b"rsv1 without deflate", false),
            3 => frame(0x89, &[0u8; 126], false),
            4 => frame(0x09, b"fragmented ping", false),
            5 => frame(0x80, b"continuation first", false),
            6 => frame(0x88, &[3], false),
            7 => frame(0x88, &999u16.to_be_bytes(), false),
            _ => {
                let mut f = frame(0x02, b"a", false);
                f.extend_from_slice(&frame(0x82, b"new message inside", false));
                f
            }
        };
        let _ = s.write_all(&bytes);
        sent.push(s);
    }
    o.saw_closes(sent.iter_mut(), Duration::from_secs(2), 1 << 20);
    o.refusal_ok = o.only(&["close 1002"]);
    o
}

fn deflate_bomb(c: &Ctx) -> Outcome {
    let n = c.n(2, 10);
    let size = if c.full { 64usize << 20 } else { 32 << 20 };
    let mut o = Outcome {
        attackers: n,
        expected: "close 1009 once inflating passes --max-message-size".into(),
        ..Default::default()
    };
    let mut z = Vec::new();
    fanout::proto::deflate::Deflater::new(15, 9).compress(&vec![0u8; size], &mut z, true);
    let ext = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n";
    let socks = upgraded(c, &mut o, n, "/", ext);
    let bomb = frame(0xc2, &z, false);
    let mut sent = Vec::new();
    for mut s in socks {
        let _ = write_bounded(
            &mut s,
            &bomb,
            Instant::now() + Duration::from_secs(2),
            Duration::from_millis(500),
        );
        sent.push(s);
    }
    o.saw_closes(sent.iter_mut(), Duration::from_secs(3), 1 << 20);
    o.extra = json!({ "inflated_bytes": size, "compressed_bytes": z.len() });
    o.refusal_ok = o.only(&["close 1009"]);
    o
}

fn publish_abuse(c: &Ctx) -> Outcome {
    let n = c.n(20, 150);
    let mut o = Outcome {
        attackers: n,
        expected: "answered on the head: 401/403 (no or a wrong key), 413 (16 MiB), 411 (chunked), 400 (conflicting lengths)".into(),
        ..Default::default()
    };
    let body = vec![b'b'; 1 << 20];
    let key = format!("Authorization: Bearer {PUBLISH_KEY}\r\n");
    let mut socks = Vec::new();
    for i in 0..n {
        let head = match i % 5 {
            0 => "Content-Length: 1048576\r\n".to_string(),
            1 => format!("{key}Content-Length: 16777216\r\n"),
            2 => "Authorization: Bearer wrong\r\nContent-Length: 1048576\r\n".to_string(),
            3 => format!("{key}Transfer-Encoding: chunked\r\n"),
            _ => format!("{key}Content-Length: 1000\r\nContent-Length: 1048576\r\n"),
        };
        let req = format!("POST /publish/abuse HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n");
        match connect(c.addr, None) {
            Ok(mut s) => {
                let _ = s.write_all(req.as_bytes());
                let _ = write_bounded(
                    &mut s,
                    &body[..16 << 10],
                    Instant::now() + Duration::from_millis(500),
                    Duration::from_millis(100),
                );
                socks.push(s);
            }
            Err(e) => o.saw(format!("connect failed: {}", io_outcome(&e))),
        }
    }
    for mut s in socks {
        o.saw(read_status(&mut s, Instant::now() + Duration::from_secs(2)));
        // The rest of the body, bounded: a server that refused on the head has closed.
        let _ = write_bounded(
            &mut s,
            &body,
            Instant::now() + Duration::from_millis(300),
            Duration::from_millis(100),
        );
    }
    o.refusal_ok = o.only(&["http 400", "http 401", "http 403", "http 411", "http 413"]);
    o
}

fn forged_jwt(c: &Ctx) -> Outcome {
    let n = c.n(18, 300);
    let mut o = Outcome {
        attackers: n,
        expected: "http 401 for every forged, expired or missing token".into(),
        ..Default::default()
    };
    let now = fanout::rt::unix_now();
    let claims = format!("{{\"sub\":\"mallory\",\"exp\":{}}}", now + 3600);
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let tokens = [
        Some(format!(
            "{}.{}.",
            b64("{\"alg\":\"none\",\"typ\":\"JWT\"}"),
            b64(&claims)
        )),
        Some(jwt(b"not-the-secret", "HS256", &claims)),
        Some(jwt(
            JWT_SECRET.as_bytes(),
            "HS256",
            &format!("{{\"sub\":\"late\",\"exp\":{}}}", now - 100),
        )),
        Some("not.a.jwt".to_string()),
        None,
        Some(jwt(JWT_SECRET.as_bytes(), "HS512", &claims)),
    ];
    for i in 0..n {
        let extra = match &tokens[i as usize % tokens.len()] {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        match connect(c.addr, None) {
            Ok(mut s) => match upgrade(&mut s, "/", &extra) {
                Ok(()) => o.saw("http 101 (accepted!)"),
                Err(e) => o.saw(e),
            },
            Err(e) => o.saw(format!("connect failed: {}", io_outcome(&e))),
        }
    }
    o.refusal_ok = o.only(&["http 401"]);
    o
}

fn half_close_rst(c: &Ctx) -> Outcome {
    let n = c.n(21, 201);
    let mut o = Outcome {
        attackers: n,
        expected: "half-closed sockets closed by the server (eof or a close) within --close-timeout; open-connection gauge back to its baseline".into(),
        ..Default::default()
    };
    let gauge = |m: &Option<std::collections::BTreeMap<String, f64>>| {
        m.as_ref()
            .and_then(|m| m.get("fanout_open_connections").copied())
    };
    let base = gauge(&super::server::metrics(c.addr));
    let socks = upgraded(c, &mut o, n, "/", "");
    let mut partial = frame(0x82, &[b'h'; 1000], false);
    partial.truncate(20);
    let whole = frame(0x82, &vec![b'q'; 1 << 20], false);
    let mut halves = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        match i % 3 {
            0 => {
                let _ = s.write_all(&partial);
                let _ = s.shutdown(Shutdown::Write);
                halves.push(s);
            }
            1 => {
                let _ = s.write_all(&partial);
                raw::set_linger_zero(&s);
                drop(s);
                o.saw("reset sent mid-frame");
            }
            _ => {
                raw::set_small_rcvbuf(&s, 4096);
                let _ = write_bounded(
                    &mut s,
                    &whole,
                    Instant::now() + Duration::from_secs(2),
                    Duration::from_millis(500),
                );
                std::thread::sleep(Duration::from_millis(5));
                raw::set_linger_zero(&s);
                drop(s);
                o.saw("reset sent with a 1 MiB reply queued");
            }
        }
    }
    for mut s in halves {
        let r = read_close(&mut s, Instant::now() + Duration::from_secs(4), 1 << 20);
        o.saw(format!("half-closed: {r}"));
    }
    // The gauge back where it was (the good client's connections).
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut last = None;
    while Instant::now() < deadline {
        last = gauge(&super::server::metrics(c.addr));
        if last.is_some() && last == base {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    o.extra = json!({ "open_connections_before": base, "open_connections_after": last });
    let gauge_ok = base.is_some() && last == base;
    if !gauge_ok {
        o.notes
            .push(format!("open-connection gauge {last:?}, baseline {base:?}"));
    }
    o.refusal_ok = gauge_ok
        && !o.outcomes.keys().any(|k| {
            k.contains("no answer") || k.starts_with("upgrade") || k.starts_with("connect")
        });
    o
}

fn sigterm(c: &Ctx) -> Outcome {
    let n = c.n(200, 1000);
    let mut o = Outcome {
        attackers: n,
        expected: "close 1001 to every client; the server exits 0 within --drain-timeout (10 s)"
            .into(),
        ..Default::default()
    };
    let socks = upgraded(c, &mut o, n, "/", "");
    let t = Instant::now();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(c.pid as i32, libc::SIGTERM) };
    for mut s in socks {
        o.saw(read_close(&mut s, t + Duration::from_secs(12), 1 << 20));
    }
    let limit = Duration::from_secs(12)
        .saturating_sub(t.elapsed())
        .max(Duration::from_millis(100));
    let st = c
        .server
        .lock()
        .ok()
        .and_then(|mut srv| srv.wait_exit(limit));
    let secs = t.elapsed().as_secs_f64();
    let exit_ok = st.is_some_and(|s| s.success()) && secs <= 12.0;
    o.extra = json!({
        "exit_status": st.map(|s| s.to_string()),
        "exit_seconds": secs,
        "exit_ok": exit_ok,
    });
    o.refusal_ok = exit_ok && o.only(&["close 1001"]);
    o
}
