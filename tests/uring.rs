//! The io_uring path (`--io uring`) moves every byte the plain path does, in order: many
//! connections read and answered in one turn, replies the socket takes only part of, a slow
//! reader, a reader that half-closes, broadcasts to many subscribers. Each server here runs
//! with `IoMode::Uring` whatever `FANOUT_TEST_IO` says, and checks that the batches ran
//! (where the kernel allows io_uring; elsewhere the fallback to epoll is what is tested).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::push::{next_text, push_config, push_server, sub, Ws};
use common::*;
use fanout::server::{Config, Counter, IoMode, Server, SlowConsumerPolicy};
use tungstenite::Message;

fn uring_config() -> Config {
    Config {
        io: IoMode::Uring,
        ..config()
    }
}

fn uring_available() -> bool {
    fanout::rt::batch::Batch::new().is_ok()
}

fn counter(s: &Server, c: Counter) -> u64 {
    s.stats().iter().map(|st| st.get(c)).sum()
}

/// The batches ran (when the kernel has io_uring).
fn assert_batched(s: &Server) {
    if uring_available() {
        assert!(counter(s, Counter::UringReads) > 0, "no batched read");
        assert!(counter(s, Counter::UringWrites) > 0, "no batched write");
    }
}

/// A raw WebSocket client: the upgrade, then frames written and read by hand, so a test
/// controls when bytes go out and when they are read.
fn raw_client(addr: SocketAddr) -> TcpStream {
    upgrade(TcpStream::connect(addr).unwrap(), "/")
}

/// A raw client whose receive buffer is set before it connects (so the window it offers
/// stays that small): the server's writes to it soon find the socket full.
fn raw_client_small_window(addr: SocketAddr, rcvbuf: usize, path: &str) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    s.connect(&addr.into()).unwrap();
    upgrade(s.into(), path)
}

fn upgrade(mut s: TcpStream, path: &str) -> TcpStream {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s
}

/// A masked binary frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x82];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked binary frame from the server and returns its payload.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    read_frame_of(s, 0x82)
}

/// Reads one unmasked frame whose first byte is `first` and returns its payload.
fn read_frame_of(s: &mut TcpStream, first: u8) -> Vec<u8> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], first, "a final frame of the expected opcode");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    p
}

/// Bytes that say where they are: a connection, a message and an offset in it.
fn pattern(conn: usize, msg: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (conn.wrapping_mul(31) ^ msg.wrapping_mul(7) ^ i.wrapping_mul(13)) as u8)
        .collect()
}

#[test]
fn many_connections_answered_in_one_turn_each_get_their_own_bytes() {
    let server = echo_server(uring_config());
    let addr = server.local_addr();
    let mut conns: Vec<TcpStream> = (0..300).map(|_| raw_client(addr)).collect();
    for round in 0..6 {
        // Every connection's message is out before any answer is read: the shards find
        // many readable in one turn. Sizes cross the read slots (512 B to 16 KiB) and the 16-bit length.
        let sizes: Vec<usize> = (0..conns.len())
            .map(|i| [1, 20, 125, 126, 4000, 4096, 5000, 70_000][(i + round) % 8])
            .collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(&frame(&pattern(i, round, sizes[i]))).unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert!(
                read_frame(c) == pattern(i, round, sizes[i]),
                "connection {i}, round {round}: wrong bytes"
            );
        }
    }
    assert_batched(&server);
}

#[test]
fn pipelined_messages_come_back_in_order_on_every_connection() {
    let server = echo_server(uring_config());
    let addr = server.local_addr();
    let mut conns: Vec<TcpStream> = (0..50).map(|_| raw_client(addr)).collect();
    // Several frames per write, and frames cut across writes: the server keeps the unfinished
    // rest between batched reads.
    for (i, c) in conns.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        for m in 0..40 {
            bytes.extend(frame(&pattern(i, m, 1 + (m * 97) % 700)));
        }
        for piece in bytes.chunks(333) {
            c.write_all(piece).unwrap();
        }
    }
    for (i, c) in conns.iter_mut().enumerate() {
        for m in 0..40 {
            assert!(
                read_frame(c) == pattern(i, m, 1 + (m * 97) % 700),
                "connection {i}, message {m}"
            );
        }
    }
    assert_batched(&server);
}

#[test]
fn replies_to_readers_that_stop_are_kept_whole_and_in_order_until_they_read() {
    // The peers read nothing for a while: their windows are small, so the socket buffers fill,
    // the batched writes take part of the replies or nothing, the rest waits in the queues
    // (then reading pauses at the limit); then every byte arrives, in order.
    let server = echo_server(Config {
        write_queue_limit: 128 << 10,
        slow_consumer: SlowConsumerPolicy::Pause,
        ..uring_config()
    });
    let addr = server.local_addr();
    let mut slow: Vec<TcpStream> = (0..24)
        .map(|_| raw_client_small_window(addr, 16 << 10, "/"))
        .collect();
    // One message per connection per round, each read in a turn of its own (mostly within
    // its read slot), many connections a turn: about 300 KiB per connection in all.
    const ROUNDS: usize = 150;
    let size = |c: usize, m: usize| 1000 + (c * 17 + m * 131) % 2000;
    let mut writers: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
    let sender = std::thread::spawn(move || {
        for m in 0..ROUNDS {
            for (c, w) in writers.iter_mut().enumerate() {
                w.write_all(&frame(&pattern(c, m, size(c, m)))).unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // Nothing is read until everything is sent (or some seconds passed: the server stops
    // reading a connection once its queue is full, and the sender may then wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sender.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (c, s) in slow.iter_mut().enumerate() {
        for m in 0..ROUNDS {
            let got = read_frame(s);
            assert!(
                got == pattern(c, m, size(c, m)),
                "connection {c}, message {m}"
            );
        }
    }
    sender.join().unwrap();
    assert_batched(&server);
}

#[test]
fn a_large_message_crosses_many_partial_writes_whole() {
    let server = echo_server(Config {
        max_message_size: 16 << 20,
        ..uring_config()
    });
    let addr = server.local_addr();
    let mut c = raw_client(addr);
    let mut others: Vec<TcpStream> = (0..6).map(|_| raw_client(addr)).collect();
    let big = pattern(3, 3, 6 << 20);
    let mut w = c.try_clone().unwrap();
    let f = frame(&big);
    let sender = std::thread::spawn(move || w.write_all(&f).unwrap());
    for (i, o) in others.iter_mut().enumerate() {
        o.write_all(&frame(&pattern(i, 0, 10))).unwrap();
    }
    // Read it in small steps with pauses: the server's writes are partial many times over.
    let mut h = [0u8; 10];
    c.read_exact(&mut h).unwrap();
    assert_eq!(&h[..2], &[0x82, 127]);
    assert_eq!(
        u64::from_be_bytes(h[2..].try_into().unwrap()),
        big.len() as u64
    );
    let mut got = Vec::with_capacity(big.len());
    let mut buf = vec![0u8; 8192];
    let start = Instant::now();
    while got.len() < big.len() {
        let want = buf.len().min(big.len() - got.len());
        let n = c.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if got.len() < (1 << 20) && got.len() % (64 << 10) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert!(got == big, "the large message came back changed");
    sender.join().unwrap();
    for (i, o) in others.iter_mut().enumerate() {
        assert_eq!(read_frame(o), pattern(i, 0, 10));
    }
    assert_batched(&server);
}

#[test]
fn a_half_closed_peer_still_gets_its_answers_then_the_close() {
    let server = echo_server(uring_config());
    let addr = server.local_addr();
    let mut conns: Vec<TcpStream> = (0..20).map(|_| raw_client(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        for m in 0..3 {
            bytes.extend(frame(&pattern(i, m, 50 + i * 300)));
        }
        c.write_all(&bytes).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        for m in 0..3 {
            assert_eq!(read_frame(c), pattern(i, m, 50 + i * 300), "connection {i}");
        }
        // Then the server ends the connection (no close frame came: EOF).
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "half-closed connections stay open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_subscriber_gets_every_broadcast_in_order() {
    let s = push_server(uring_config(), push_config());
    let addr = s.local_addr();
    let mut subs: Vec<Ws> = (0..60).map(|_| sub(addr, "?topics=t")).collect();
    let mut publisher = sub(addr, "");
    const N: usize = 300;
    // Published back to back, so subscribers' queues hold several frames at a flush
    // (gathered into one batched sendmsg each).
    let mut batch = Vec::new();
    for n in 0..N {
        let data = format!("{n:04}-{}", "x".repeat(n % 200));
        batch.push(format!(r#"{{"op":"publish","topic":"t","data":"{data}"}}"#));
    }
    for m in &batch {
        publisher.send(Message::text(m.as_str())).unwrap();
    }
    for (i, ws) in subs.iter_mut().enumerate() {
        for n in 0..N {
            let want = format!("{n:04}-{}", "x".repeat(n % 200));
            assert_eq!(next_text(ws), want, "subscriber {i}");
        }
    }
    assert_batched(&s);
}

#[test]
fn broadcasts_to_subscribers_that_stop_reading_arrive_whole_once_they_read() {
    // Each subscriber's queue holds many shared frames: the batched writes gather them
    // (sendmsg), the sockets fill, writes are partial, and every byte still arrives in order.
    let s = push_server(
        Config {
            write_queue_limit: 64 << 20,
            ..uring_config()
        },
        push_config(),
    );
    let addr = s.local_addr();
    let mut subs: Vec<TcpStream> = (0..8)
        .map(|_| raw_client_small_window(addr, 16 << 10, "/ws?topics=big"))
        .collect();
    let mut publisher = sub(addr, "");
    const N: usize = 700;
    let data = |n: usize| format!("{n:05}{}", "y".repeat(8000 + n % 500));
    for n in 0..N {
        let m = format!(r#"{{"op":"publish","topic":"big","data":"{}"}}"#, data(n));
        publisher.send(Message::text(m)).unwrap();
        assert!(next_text(&mut publisher).contains(r#""subscribers":8"#));
    }
    for (i, s) in subs.iter_mut().enumerate() {
        for n in 0..N {
            let got = read_frame_of(s, 0x81);
            assert!(got == data(n).as_bytes(), "subscriber {i}, message {n}");
        }
    }
    assert_batched(&s);
}

#[test]
fn epoll_makes_no_batches() {
    let server = echo_server(Config {
        io: IoMode::Epoll,
        ..config()
    });
    let mut c = raw_client(server.local_addr());
    c.write_all(&frame(b"plain")).unwrap();
    assert_eq!(read_frame(&mut c), b"plain");
    assert_eq!(counter(&server, Counter::UringReads), 0);
    assert_eq!(counter(&server, Counter::UringWrites), 0);
}

#[test]
fn the_io_flag_and_config_key_take_epoll_or_uring_only() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_fanout");
    let out = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--io", "kqueue"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("epoll") && stderr.contains("uring"),
        "{stderr}"
    );
    let dir = std::env::temp_dir().join(format!("fanout-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fanout.toml");
    std::fs::write(&path, "io = \"kqueue\"\n").unwrap();
    let out = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong io key is refused");
    for io in ["epoll", "uring"] {
        std::fs::write(&path, format!("io = \"{io}\"\n")).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let started = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("listening on"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(started, "io = \"{io}\" starts a server");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
