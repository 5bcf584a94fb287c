//! The reactor server against a real third-party client (tungstenite) and raw sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use fanout::server::{stats, Config, Counter};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{connect, Message};

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn client(addr: std::net::SocketAddr) -> Ws {
    let (ws, resp) = connect(url(addr)).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn read_data(ws: &mut Ws) -> Message {
    loop {
        match ws.read().expect("read") {
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            _ => continue,
        }
    }
}

#[test]
fn echoes_text_binary_and_empty() {
    let server = echo_server(config());
    let mut ws = client(server.local_addr());
    for msg in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::text("κόσμε 𝄞"),
        Message::binary(vec![7u8; 70_000]),
    ] {
        ws.send(msg.clone()).unwrap();
        assert_eq!(read_data(&mut ws), msg);
    }
    ws.close(None).unwrap();
}

#[test]
fn echoes_fragmented_messages_with_interleaved_ping() {
    let server = echo_server(config());
    let mut ws = client(server.local_addr());
    ws.write(Message::Frame(Frame::message(
        "frag",
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.write(Message::Frame(Frame::ping(b"mid".to_vec())))
        .unwrap();
    ws.write(Message::Frame(Frame::message(
        "men",
        OpCode::Data(Data::Continue),
        false,
    )))
    .unwrap();
    ws.write(Message::Frame(Frame::message(
        "ted",
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    ws.flush().unwrap();
    let mut got_pong = false;
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"mid");
                got_pong = true;
            }
            Message::Text(t) => {
                assert_eq!(t.as_str(), "fragmented");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got_pong, "the ping inside the message was answered first");
}

#[test]
fn echoes_10_mib_messages() {
    // Past the 1 MiB default, as a user with large messages would run it.
    let server = echo_server(Config {
        max_message_size: 16 << 20,
        ..config()
    });
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(32 << 20))
        .max_frame_size(Some(32 << 20));
    let (mut ws, _) =
        tungstenite::client::connect_with_config(url(server.local_addr()), Some(cfg), 3).unwrap();
    let text: String = (0..10 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    ws.send(Message::text(text.clone())).unwrap();
    assert_eq!(read_data(&mut ws), Message::text(text));
    let bin: Vec<u8> = (0..10 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(bin.clone())).unwrap();
    assert_eq!(read_data(&mut ws), Message::binary(bin));
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let server = echo_server(config());
    let mut ws = client(server.local_addr());
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    loop {
        if let Message::Pong(p) = ws.read().unwrap() {
            assert_eq!(&p[..], b"are you there");
            break;
        }
    }
}

#[test]
fn close_codes_are_echoed() {
    let server = echo_server(config());
    for (code, reason) in [
        (CloseCode::Normal, "bye"),
        (CloseCode::Library(4000), "app"),
    ] {
        let mut ws = client(server.local_addr());
        ws.close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(Some(cf))) => {
                    assert_eq!(cf.code, code);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        // Then the server closes the TCP connection.
        assert!(matches!(
            ws.read(),
            Err(tungstenite::Error::ConnectionClosed)
        ));
    }
}

#[test]
fn protocol_violations_close_with_their_codes() {
    let server = echo_server(config());
    let addr = server.local_addr();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked client frame
        (masked(0x83, b"x"), 1002),           // reserved opcode
        (masked(0xC1, b"x"), 1002),           // RSV1 without extension
        (masked(0x09, b"x"), 1002),           // fragmented ping
        (masked(0x80, b"x"), 1002),           // continuation without start
        (masked(0x81, &[0xce, 0xba, 0xff]), 1007), // invalid UTF-8
        (masked(0x88, &[0x03]), 1002),        // close with 1 byte
        (masked(0x88, &999u16.to_be_bytes()), 1002), // invalid close code
        (masked(0x88, &[0x03, 0xe8, 0xff, 0xfe]), 1007), // non-UTF-8 close reason
    ];
    for (frame, code) in cases {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        let out = raw_exchange(addr, &bytes);
        assert!(out.starts_with(b"HTTP/1.1 101"), "{frame:?}");
        assert_eq!(close_code_in(&out), Some(code), "{frame:?}");
    }
}

#[test]
fn message_over_the_limit_is_1009() {
    let server = echo_server(Config {
        max_message_size: 1024,
        ..config()
    });
    let mut bytes = UPGRADE.as_bytes().to_vec();
    bytes.extend_from_slice(&masked(0x82, &[0u8; 1025]));
    let out = raw_exchange(server.local_addr(), &bytes);
    assert_eq!(close_code_in(&out), Some(1009));
}

#[test]
fn bad_handshakes_get_their_status() {
    let server = echo_server(config());
    let addr = server.local_addr();
    let status = |req: &str| {
        let out = raw_exchange(addr, req.as_bytes());
        String::from_utf8_lossy(&out[..12.min(out.len())]).to_string()
    };
    let with = |from: &str, to: &str| UPGRADE.replace(from, to);
    assert_eq!(
        status(&with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
        "HTTP/1.1 400"
    );
    let out = raw_exchange(addr, with("Version: 13", "Version: 8").as_bytes());
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 426"), "{text}");
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    assert_eq!(status(&with("GET /", "POST /")), "HTTP/1.1 400");
    assert_eq!(
        status(&with("Connection: Upgrade", "Connection: close")),
        "HTTP/1.1 400"
    );
    let big = with(
        "Host: t\r\n",
        &format!("Host: t\r\nX-Pad: {}\r\n", "a".repeat(9000)),
    );
    assert_eq!(status(&big), "HTTP/1.1 431");
    assert_eq!(
        status("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"),
        "HTTP/1.1 404"
    );
    assert_eq!(
        status("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
        "HTTP/1.1 200"
    );
    assert_eq!(status("BLAH\r\n\r\n"), "HTTP/1.1 400");
    let s = server.stats();
    assert!(stats::total(&s, Counter::Http400) >= 4);
    assert_eq!(stats::total(&s, Counter::Http426), 1);
    assert_eq!(stats::total(&s, Counter::Http431), 1);
}

#[test]
fn request_split_across_reads_still_upgrades() {
    let server = echo_server(config());
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let mut bytes = UPGRADE.as_bytes().to_vec();
    bytes.extend_from_slice(&masked(0x81, b"split"));
    for chunk in bytes.chunks(7) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = vec![0u8; 4096];
    let mut n = 0;
    while !out[..n].ends_with(b"split") {
        let k = s.read(&mut out[n..]).unwrap();
        assert!(
            k > 0,
            "closed early: {:?}",
            String::from_utf8_lossy(&out[..n])
        );
        n += k;
    }
    assert!(out.starts_with(b"HTTP/1.1 101"));
}

#[test]
fn a_thousand_concurrent_echo_clients() {
    let server = echo_server(config());
    let addr = server.local_addr();
    let threads: Vec<_> = (0..20)
        .map(|t| std::thread::spawn(move || echo_clients(addr, t, 50, 5)))
        .collect();
    let conns: Vec<Vec<Ws>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(conns.iter().map(Vec::len).sum::<usize>(), 1000);
    assert_eq!(server.open_connections(), 1000);
}

#[test]
fn past_max_connections_new_clients_get_503() {
    let server = echo_server(Config {
        max_connections: 3,
        ..config()
    });
    let addr = server.local_addr();
    let mut kept: Vec<Ws> = (0..3).map(|_| client(addr)).collect();
    match connect(url(addr)) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
    }
    for ws in kept.iter_mut() {
        ws.send(Message::text("still here")).unwrap();
        assert_eq!(read_data(ws), Message::text("still here"));
    }
    assert_eq!(stats::total(&server.stats(), Counter::Rejected503), 1);
}

#[test]
fn silent_socket_is_closed_at_the_handshake_deadline() {
    let server = echo_server(Config {
        handshake_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost:").unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(stats::total(&server.stats(), Counter::HandshakeTimeouts), 1);
}

#[test]
fn with_defer_accept_a_silent_socket_waits_in_the_kernel_then_meets_the_handshake_deadline() {
    let server = echo_server(Config {
        handshake_timeout: Duration::from_millis(300),
        defer_accept: Duration::from_secs(1),
        ..config()
    });
    let addr = server.local_addr();
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // Connected on the client's side, but not handed to the server: nothing of it is held.
    assert_eq!(stats::total(&server.stats(), Counter::Accepted), 0);
    // A client that sends its request is accepted and served at once.
    let (mut ws, _) = connect(format!("ws://{addr}/")).unwrap();
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(read_data(&mut ws), Message::text("hi"));
    assert_eq!(stats::total(&server.stats(), Counter::Accepted), 1);
    // The silent one is handed over once the deferral has passed, then the handshake
    // deadline closes it.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stats::total(&server.stats(), Counter::Accepted), 2);
    assert_eq!(stats::total(&server.stats(), Counter::HandshakeTimeouts), 1);
}

#[test]
fn without_defer_accept_a_silent_socket_is_accepted_at_once() {
    let server = echo_server(Config {
        defer_accept: Duration::ZERO,
        ..config()
    });
    let _silent = TcpStream::connect(server.local_addr()).unwrap();
    let start = Instant::now();
    while stats::total(&server.stats(), Counter::Accepted) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "never accepted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn floods_of_input_and_of_new_connections_wait_their_turn_and_lose_nothing() {
    // One shard: large messages (each read over several events, continued under the turn's
    // budget) while 200 connections open at once (accepted under the same budget).
    let server = echo_server(Config {
        shards: 1,
        ..config()
    });
    let addr = server.local_addr();
    let big: Vec<_> = (0..6u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut ws = client(addr);
                bounded(&ws);
                for round in 0..4u8 {
                    let msg = Message::binary(vec![i.wrapping_mul(31) ^ round; 900 << 10]);
                    ws.send(msg.clone()).unwrap();
                    assert!(read_data(&mut ws) == msg, "client {i}, round {round}");
                }
            })
        })
        .collect();
    let small: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || drop(echo_clients(addr, t, 50, 1))))
        .collect();
    for h in big.into_iter().chain(small) {
        h.join().unwrap();
    }
    assert_eq!(stats::total(&server.stats(), Counter::Accepted), 206);
}

/// Opens `n` clients (thread `t`'s) and echoes `rounds` text messages on each, every
/// client's message sent before any answer is read; returns the clients, still open.
fn echo_clients(addr: std::net::SocketAddr, t: usize, n: usize, rounds: usize) -> Vec<Ws> {
    let mut conns: Vec<Ws> = (0..n).map(|_| client(addr)).collect();
    conns.iter().for_each(bounded);
    for round in 0..rounds {
        for (i, ws) in conns.iter_mut().enumerate() {
            ws.send(Message::text(format!("{t}-{i}-{round}"))).unwrap();
        }
        for (i, ws) in conns.iter_mut().enumerate() {
            assert_eq!(read_data(ws), Message::text(format!("{t}-{i}-{round}")));
        }
    }
    conns
}

/// A read that waits longer than this fails the test instead of hanging it.
fn bounded(ws: &Ws) {
    ws.get_ref()
        .get_ref_tcp()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
}

#[test]
fn unanswered_pings_drop_the_connection_and_answered_ones_keep_it() {
    let server = echo_server(Config {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(300),
        ..config()
    });
    let addr = server.local_addr();
    // tungstenite answers pings while it reads: keep it reading in its own thread.
    let good = std::thread::spawn(move || {
        let mut ws = client(addr);
        ws.get_mut()
            .get_ref_tcp()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_millis(1500) {
            match ws.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("the answering client was dropped: {e}"),
            }
        }
        ws.get_mut()
            .get_ref_tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        ws.send(Message::text("alive")).unwrap();
        assert_eq!(read_data(&mut ws), Message::text("alive"));
        pings
    });
    // A raw socket that never answers.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(UPGRADE.as_bytes()).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = bad.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(all.windows(2).any(|w| w == [0x89, 0x00]), "was pinged");
    let pings = good.join().unwrap();
    assert!(pings >= 2, "the answering client was pinged {pings} times");
    assert!(stats::total(&server.stats(), Counter::PongTimeouts) >= 1);
}

#[test]
fn graceful_shutdown_sends_1001_to_every_client() {
    let server = echo_server(config());
    let addr = server.local_addr();
    let mut clients: Vec<Ws> = (0..20).map(|_| client(addr)).collect();
    let handle = server.shutdown_handle();
    let waiter = std::thread::spawn(move || server.join());
    handle.shutdown();
    for ws in clients.iter_mut() {
        loop {
            match ws.read() {
                Ok(Message::Close(Some(cf))) => {
                    assert_eq!(cf.code, CloseCode::Away);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        // tungstenite replies to the close; the server then finishes.
        let _ = ws.flush();
    }
    waiter.join().unwrap();
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

trait TcpRef {
    fn get_ref_tcp(&self) -> &TcpStream;
}

impl TcpRef for tungstenite::stream::MaybeTlsStream<TcpStream> {
    fn get_ref_tcp(&self) -> &TcpStream {
        match self {
            tungstenite::stream::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("plain TCP only"),
        }
    }
}
