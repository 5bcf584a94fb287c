//! A connection's life at its edges, against real sockets: strict request framing, metrics
//! that count what happened, output kept through a half-close, a paused reader judged by its
//! progress.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{config, echo_server, masked, raw_exchange, NeverAnswers, UPGRADE};
use fanout::server::{stats, Config, Counter, Server, SlowConsumerPolicy};

fn counter(s: &Server, c: Counter) -> u64 {
    stats::total(&s.stats(), c)
}

/// Opens a WebSocket by hand and reads the 101. A small receive buffer, so the server's queue
/// (not the kernel) holds what the client has not read.
fn open_raw(addr: std::net::SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(UPGRADE.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    c
}

fn status(answer: &[u8]) -> u16 {
    answer
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_unclear_content_length_is_a_400() {
    let s = echo_server(config());
    let addr = s.local_addr();
    for head in [
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
    ] {
        let answer = raw_exchange(addr, head.as_bytes());
        assert_eq!(status(&answer), 400, "{head:?}");
    }
    // One value, or the same value twice, is fine (404: the echo app has no routes).
    let answer = raw_exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_eq!(status(&answer), 404);
}

#[test]
fn a_half_closed_client_gets_all_its_echoes_before_the_close() {
    // 8.4 MB of echo asked for, then SHUT_WR: the server keeps the connection until its queue
    // is written, then closes. (Before, it made one write and dropped the rest.)
    let s = echo_server(Config {
        write_queue_limit: 32 << 20,
        ..config()
    });
    let mut c = open_raw(s.local_addr());
    const MSG: usize = 60_000;
    const COUNT: usize = 140;
    let frame = masked(0x82, &[9u8; MSG]);
    for _ in 0..COUNT {
        c.write_all(&frame).unwrap();
    }
    c.shutdown(Shutdown::Write).unwrap();
    // Not reading yet, so the server sees the EOF with most of the echo still queued.
    std::thread::sleep(Duration::from_secs(1));
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_eq!(got.len(), COUNT * (4 + MSG));
    assert!(got
        .chunks(4 + MSG)
        .all(|f| f[..4] == [0x82, 126, 0xea, 0x60]));
}

#[test]
fn a_paused_connection_whose_client_reads_is_not_killed_by_the_pong_timeout() {
    // The client sends more than it reads, so the server pauses reading it; then it reads,
    // slowly. Its pongs cannot be read while paused: its progress keeps it alive.
    let s = echo_server(Config {
        write_queue_limit: 1 << 20,
        slow_consumer: SlowConsumerPolicy::Pause,
        ping_interval: Duration::from_millis(500),
        pong_timeout: Duration::from_millis(500),
        ..config()
    });
    let mut c = open_raw(s.local_addr());
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let frame = masked(0x82, &[1u8; 1000]);
        for _ in 0..8000 {
            if w.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(10);
    while counter(&s, Counter::SlowConsumerPaused) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(counter(&s, Counter::SlowConsumerPaused) > 0);
    // 16 KiB every 50 ms for 3 s: the 1 MiB queue takes longer than a ping and its pong
    // timeout to drain, so reading stays paused past the pong deadline.
    let mut buf = [0u8; 16 << 10];
    for i in 0..60 {
        match c.read(&mut buf) {
            Ok(n) if n > 0 => {}
            other => panic!(
                "read {i}: {other:?} (pong timeouts: {})",
                counter(&s, Counter::PongTimeouts)
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(counter(&s, Counter::PongTimeouts), 0);
    // Once it stops reading it makes no progress, and the pong timeout drops it.
    let until = Instant::now() + Duration::from_secs(10);
    while counter(&s, Counter::PongTimeouts) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counter(&s, Counter::PongTimeouts), 1);
    drop(c);
    writer.join().unwrap();
}

#[test]
fn a_late_504_is_counted_as_a_5xx_and_a_body_in_pieces_as_one_request() {
    let s = Server::start(
        Config {
            close_timeout: Duration::from_millis(200),
            ..config()
        },
        NeverAnswers,
    )
    .unwrap();
    let mut c = TcpStream::connect(s.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n")
        .unwrap();
    // The body in pieces, each its own read on the server.
    for _ in 0..10 {
        c.write_all(&[b'b'; 30_000]).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert_eq!(status(&answer), 504);
    assert_eq!(counter(&s, Counter::Http5xx), 1);
    assert_eq!(counter(&s, Counter::HttpOther4xx), 0);
    assert_eq!(counter(&s, Counter::HttpRequests), 1);
}

#[test]
fn max_lifetime_closes_with_1001_reconnect() {
    let s = echo_server(Config {
        max_lifetime: Duration::from_millis(500),
        ..config()
    });
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", s.local_addr())).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let opened = Instant::now();
    // It stays usable until then.
    ws.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("hi"));
    let close = loop {
        match ws.read().expect("a close frame") {
            tungstenite::Message::Close(Some(f)) => break f,
            tungstenite::Message::Close(None) => panic!("close without a code"),
            _ => continue,
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "reconnect");
    // 500 ms - 10%, give or take a tick.
    assert!(opened.elapsed() >= Duration::from_millis(400));
    assert_eq!(counter(&s, Counter::ClosedMaxLifetime), 1);
}
