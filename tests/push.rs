//! The push app against real clients: subscribing, publishing over HTTP and WebSocket,
//! fan-out across shards, slow consumers, errors, metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::push::{http, next_text, publish, push_config, push_server, silent, sub, Ws};
use fanout::apps::push::PushConfig;
use fanout::server::Config;
use tungstenite::{connect, Message};

const KEY: &str = common::push::KEY;

#[test]
fn publish_reaches_exactly_the_subscribers_once_in_order() {
    let s = push_server(common::base_config(), push_config());
    let addr = s.local_addr();
    // Subscribers spread over both shards: by URL and by message.
    let mut by_url: Vec<Ws> = (0..6).map(|_| sub(addr, "?topics=news,misc")).collect();
    let mut by_msg: Vec<Ws> = (0..6).map(|_| sub(addr, "")).collect();
    for ws in by_msg.iter_mut() {
        ws.send(Message::text(r#"{"op":"subscribe","topic":"news"}"#))
            .unwrap();
        assert_eq!(next_text(ws), r#"{"op":"subscribed","topic":"news"}"#);
    }
    let mut other = sub(addr, "?topics=sport");
    for i in 0..20 {
        let (status, body) = publish(addr, "news", &format!("n{i}"), "text/plain", KEY);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.trim(), r#"{"topic":"news","subscribers":12}"#);
    }
    for ws in by_url.iter_mut().chain(by_msg.iter_mut()) {
        for i in 0..20 {
            assert_eq!(next_text(ws), format!("n{i}"));
        }
        assert!(silent(ws, Duration::from_millis(100)), "nothing twice");
    }
    assert!(
        silent(&mut other, Duration::from_millis(100)),
        "other topics get nothing"
    );
    // Binary content types give binary frames.
    let (status, _) = publish(addr, "sport", "raw", "application/octet-stream", KEY);
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut other), "binary:raw");
}

#[test]
fn websocket_publish_and_unsubscribe() {
    let s = push_server(common::base_config(), push_config());
    let addr = s.local_addr();
    let mut a = sub(addr, "?topics=room");
    let mut b = sub(addr, "?topics=room");
    let mut publisher = sub(addr, "");
    publisher
        .send(Message::text(
            r#"{"op":"publish","topic":"room","data":"hi \"all\""}"#,
        ))
        .unwrap();
    assert_eq!(
        next_text(&mut publisher),
        r#"{"op":"published","topic":"room","subscribers":2}"#
    );
    assert_eq!(next_text(&mut a), "hi \"all\"");
    assert_eq!(next_text(&mut b), "hi \"all\"");
    b.send(Message::text(r#"{"op":"unsubscribe","topic":"room"}"#))
        .unwrap();
    assert_eq!(next_text(&mut b), r#"{"op":"unsubscribed","topic":"room"}"#);
    publisher
        .send(Message::text(
            r#"{"op":"publish","topic":"room","data":{"n":2}}"#,
        ))
        .unwrap();
    assert_eq!(
        next_text(&mut publisher),
        r#"{"op":"published","topic":"room","subscribers":1}"#
    );
    assert_eq!(next_text(&mut a), r#"{"n":2}"#);
    assert!(silent(&mut b, Duration::from_millis(150)));
}

#[test]
fn bad_commands_get_clear_errors_and_the_connection_stays_usable() {
    let s = push_server(
        common::base_config(),
        PushConfig {
            max_topics_per_conn: 2,
            ..push_config()
        },
    );
    let addr = s.local_addr();
    let mut ws = sub(addr, "");
    let cases = [
        ("{not json", "invalid JSON command"),
        (r#"{"op":"dance","topic":"a"}"#, "unknown op `dance`"),
        (r#"{"op":"subscribe"}"#, "needs a \\\"topic\\\""),
        (
            r#"{"op":"subscribe","topic":"bad topic!"}"#,
            "topic names use only",
        ),
        (
            &format!(r#"{{"op":"subscribe","topic":"{}"}}"#, "x".repeat(200)),
            "longer than 128",
        ),
        (r#"{"op":"unsubscribe","topic":"never"}"#, "not subscribed"),
    ];
    for (cmd, reason) in cases {
        ws.send(Message::text(cmd)).unwrap();
        let reply = next_text(&mut ws);
        assert!(reply.starts_with(r#"{"op":"error""#), "{reply}");
        assert!(reply.contains(reason), "{cmd} -> {reply}");
    }
    ws.send(Message::binary(vec![1, 2])).unwrap();
    assert!(next_text(&mut ws).contains("binary messages are not understood"));
    for t in ["a", "b"] {
        ws.send(Message::text(format!(
            r#"{{"op":"subscribe","topic":"{t}"}}"#
        )))
        .unwrap();
        assert!(next_text(&mut ws).contains("subscribed"));
    }
    ws.send(Message::text(r#"{"op":"subscribe","topic":"c"}"#))
        .unwrap();
    assert!(next_text(&mut ws).contains("too many topics"));
    // Still usable.
    let (status, _) = publish(addr, "b", "still here", "text/plain", KEY);
    assert_eq!(status, 200);
    assert_eq!(next_text(&mut ws), "still here");
    // Bad topics in the URL are refused before the upgrade.
    match connect(format!("ws://{addr}/ws?topics=ok,not%20ok")) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("{:?}", other.map(|x| x.1.status())),
    }
}

#[test]
fn publish_api_refusals() {
    let s = push_server(common::base_config(), push_config());
    let addr = s.local_addr();
    assert_eq!(publish(addr, "a", "x", "text/plain", "wrong").0, 401);
    let (status, _) = http(
        addr,
        "POST /publish/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(status, 401);
    assert_eq!(publish(addr, "bad%20topic", "x", "text/plain", KEY).0, 400);
    let (status, _) = http(addr, "GET /publish/a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 405);
    // A text content type with a body that is not UTF-8.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(format!("POST /publish/a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n").as_bytes()).unwrap();
    raw.write_all(&[0xff, 0xfe]).unwrap();
    let mut out = String::new();
    let _ = raw.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("UTF-8"), "{out}");
    // No key configured: publishing over HTTP is refused outright.
    let closed = push_server(common::base_config(), PushConfig::default());
    assert_eq!(
        publish(closed.local_addr(), "a", "x", "text/plain", "anything").0,
        403
    );
}

#[test]
fn a_non_reading_subscriber_is_cut_off_while_others_keep_receiving() {
    let s = push_server(
        Config {
            write_queue_limit: 64 << 10,
            ..common::base_config()
        },
        push_config(),
    );
    let addr = s.local_addr();
    let mut good = sub(addr, "?topics=firehose");
    // A raw subscriber that never reads.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(
        b"GET /ws?topics=firehose HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    // Subscribed once its 101 is back (the head is all it ever reads).
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        slow.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let payload = "p".repeat(60_000);
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        while n < 100 {
            let t = next_text(&mut good);
            assert_eq!(t.len(), 60_000);
            n += 1;
        }
        n
    });
    for _ in 0..100 {
        assert_eq!(
            publish(addr, "firehose", &payload, "text/plain", KEY).0,
            200
        );
    }
    assert_eq!(reader.join().unwrap(), 100);
    let (_, metrics) = http(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("fanout_slow_consumer_disconnected_total"))
        .unwrap();
    assert_eq!(
        line, "fanout_slow_consumer_disconnected_total 1",
        "{metrics}"
    );
    assert!(
        metrics.contains("fanout_push_slow_consumers_closed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fanout_push_publishes_total 100"),
        "{metrics}"
    );
}

#[test]
fn a_subscriber_that_reads_late_gets_every_frame_whole_and_in_order() {
    // The socket takes what fits of the first frames; the rest of a frame, partly written,
    // and every frame after it wait in the queue. Nothing may be lost, repeated or reordered
    // across partial writes.
    let s = push_server(
        Config {
            write_queue_limit: 64 << 20,
            ..common::base_config()
        },
        push_config(),
    );
    let addr = s.local_addr();
    let mut late = sub(addr, "?topics=big");
    let sizes: Vec<usize> = (0..40).map(|i| 150_000 + i * 7_001).collect();
    for (i, &n) in sizes.iter().enumerate() {
        let body: String = std::iter::repeat_n((b'a' + (i % 26) as u8) as char, n).collect();
        assert_eq!(publish(addr, "big", &body, "text/plain", KEY).0, 200);
    }
    for (i, &n) in sizes.iter().enumerate() {
        let t = next_text(&mut late);
        assert_eq!(t.len(), n, "frame {i}");
        let c = (b'a' + (i % 26) as u8) as char;
        assert!(t.chars().all(|x| x == c), "frame {i} holds only {c:?}");
    }
    assert!(
        silent(&mut late, Duration::from_millis(100)),
        "nothing twice"
    );
}

#[test]
fn metrics_reflect_connections_and_publishes() {
    let s = push_server(common::base_config(), push_config());
    let addr = s.local_addr();
    let _subs: Vec<Ws> = (0..4).map(|_| sub(addr, "?topics=m")).collect();
    publish(addr, "m", "x", "text/plain", KEY);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(status, 200);
        if body.contains("fanout_push_deliveries_total 4") {
            // 4 subscribers and this request; the publish request may not be reaped yet.
            let open: u64 = body
                .lines()
                .find_map(|l| l.strip_prefix("fanout_open_connections "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            assert!((5..=6).contains(&open), "{body}");
            assert!(body.contains("fanout_handshakes_total 4"), "{body}");
            assert!(body.contains("fanout_http_401_total 0"), "{body}");
            assert!(body.contains("fanout_loop_busy_microseconds{shard=\"1\"}"));
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
