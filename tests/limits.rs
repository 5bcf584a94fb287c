//! Every byte held for a peer stays under a stated limit (docs/limits.md), against real
//! sockets: broadcasts to a reader that never reads, half-open handshakes from one address,
//! request bodies the app refuses on the head, echo to a client that never reads.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout::common::SharedFrame;
use fanout::proto::handshake::{HttpError, Request};
use fanout::proto::{Message, OpCode};
use fanout::server::{
    stats, Accept, Config, ConnId, ConnInfo, Counter, Ctx, Delivery, Handler, Server, ShardApi,
    SlowConsumerPolicy,
};

use common::{config, UPGRADE};

/// Reads a server's answer head (up to the blank line).
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut byte).is_err() {
            break;
        }
        head.push(byte[0]);
    }
    head
}

fn counter(s: &Server, c: Counter) -> u64 {
    stats::total(&s.stats(), c)
}

/// What the broadcaster saw: each delivery's outcome and the largest queue it found.
#[derive(Default)]
struct Seen {
    outcomes: Vec<Delivery>,
    max_queued: usize,
}

/// An app that delivers `per_turn` shared frames of `size` bytes to every open connection
/// each loop turn, `total` in all, and records what `deliver` said.
#[derive(Clone)]
struct Broadcaster {
    ids: Arc<Mutex<Vec<ConnId>>>,
    seen: Arc<Mutex<Seen>>,
    frame: SharedFrame,
    per_turn: usize,
    total: usize,
}

impl Handler for Broadcaster {
    type State = ();
    type Msg = ();
    fn on_open<'r>(
        &mut self,
        _req: &Request<'r>,
        conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, ()>, HttpError> {
        self.ids.lock().unwrap().push(conn.id);
        Ok(Accept::new(()))
    }
    fn on_message(&mut self, _ctx: &mut Ctx<'_, ()>, _msg: Message<'_>) {}
    fn on_turn(&mut self, api: &mut ShardApi<'_, Self>) {
        let ids: Vec<ConnId> = self.ids.lock().unwrap().clone();
        let mut seen = self.seen.lock().unwrap();
        let me = api.index();
        for id in ids.into_iter().filter(|id| id.shard == me) {
            for _ in 0..self.per_turn {
                if seen.outcomes.len() >= self.total {
                    return;
                }
                let d = api.deliver(id, &self.frame);
                seen.outcomes.push(d);
                let q = api.queued(id).unwrap_or(0);
                seen.max_queued = seen.max_queued.max(q);
            }
        }
    }
}

fn broadcast_to_a_non_reader(policy: SlowConsumerPolicy) -> (Server, Seen, usize) {
    const LIMIT: usize = 256 << 10;
    const FRAME: usize = 100 << 10;
    let frame = SharedFrame::new(OpCode::Binary, &vec![7u8; FRAME]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Broadcaster {
        ids: Default::default(),
        seen: seen.clone(),
        frame,
        per_turn: 10,
        total: 400,
    };
    let server = Server::start(
        Config {
            write_queue_limit: LIMIT,
            slow_consumer: policy,
            ..config()
        },
        app,
    )
    .unwrap();
    // A subscriber that reads its 101 and never reads again.
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(UPGRADE.as_bytes()).unwrap();
    assert!(read_head(&mut s).starts_with(b"HTTP/1.1 101"));
    let until = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().outcomes.len() < 400 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.outcomes.len(), 400, "the broadcaster ran");
    drop(s);
    (server, seen, LIMIT)
}

#[test]
fn a_broadcast_under_pause_never_takes_the_queue_past_the_limit() {
    // 40 MB offered to a reader that never reads: the kernel's buffers take a few MB, the
    // queue never more than the limit, the rest is dropped and counted.
    let (server, seen, limit) = broadcast_to_a_non_reader(SlowConsumerPolicy::Pause);
    assert!(
        seen.max_queued <= limit,
        "queued {} > {limit}",
        seen.max_queued
    );
    let dropped = seen
        .outcomes
        .iter()
        .filter(|d| **d == Delivery::Dropped)
        .count();
    assert!(dropped > 0, "{:?}", seen.outcomes);
    assert!(!seen.outcomes.contains(&Delivery::SlowConsumer));
    assert_eq!(
        counter(&server, Counter::SlowConsumerDropped),
        dropped as u64
    );
}

#[test]
fn a_broadcast_under_drop_oldest_never_takes_the_queue_past_the_limit() {
    let (_server, seen, limit) = broadcast_to_a_non_reader(SlowConsumerPolicy::DropOldest);
    assert!(
        seen.max_queued <= limit,
        "queued {} > {limit}",
        seen.max_queued
    );
}

#[test]
fn a_broadcast_under_disconnect_closes_the_full_connection_without_queueing() {
    let (server, seen, limit) = broadcast_to_a_non_reader(SlowConsumerPolicy::Disconnect);
    assert!(
        seen.max_queued <= limit,
        "queued {} > {limit}",
        seen.max_queued
    );
    let slow = seen
        .outcomes
        .iter()
        .position(|d| *d == Delivery::SlowConsumer)
        .expect("closed as a slow consumer");
    assert!(seen.outcomes[slow + 1..]
        .iter()
        .all(|d| *d == Delivery::Gone));
    assert_eq!(counter(&server, Counter::SlowConsumerDisconnected), 1);
}

#[test]
fn half_sent_heads_from_one_address_hold_no_more_than_its_cap() {
    // One address opens many sockets and sends only part of a request head on each: at most
    // --max-conns-per-ip of them are held, so another client still gets in under a small
    // --max-connections.
    let s = common::echo_server(Config {
        max_connections: 20,
        max_conns_per_ip: 5,
        ..config()
    });
    let addr = s.local_addr();
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr).unwrap();
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n");
        held.push(c);
    }
    // The server has judged all of them once each accepted socket is either counted for the
    // address or refused (the accept count moves first, the verdict a moment later).
    let until = Instant::now() + Duration::from_secs(10);
    let judged = |s: &Server| {
        counter(s, Counter::Accepted) >= 40
            && counter(s, Counter::PerIpConnsRefused) + u64::from(s.connections_from(addr.ip()))
                >= 40
    };
    while !judged(&s) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(counter(&s, Counter::Accepted), 40);
    assert_eq!(s.connections_from(addr.ip()), 5);
    assert!(s.open_connections() <= 5, "{}", s.open_connections());
    assert_eq!(counter(&s, Counter::PerIpConnsRefused), 35);
    assert_eq!(counter(&s, Counter::Rejected503), 0);
    // A refused one was told why.
    let mut refused = TcpStream::connect(addr).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = refused.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // Another address (127.0.0.2 is loopback too) still gets a WebSocket.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut other: TcpStream = sock.into();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    other.write_all(UPGRADE.as_bytes()).unwrap();
    assert!(read_head(&mut other).starts_with(b"HTTP/1.1 101"));
    drop(held);
}

#[test]
fn a_publish_without_its_key_is_refused_on_the_head_before_the_body_is_read() {
    use fanout::apps::push::{Push, PushConfig};
    let s = Server::start(
        Config {
            handshake_timeout: Duration::from_secs(60),
            ..config()
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = s.local_addr();
    let refused = |head: &str| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        // Part of a large body: the answer must not wait for the rest.
        let _ = c.write_all(&vec![b'x'; 100 << 10]);
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_string()
    };
    let big = (1 << 20) - 1;
    let a = refused(&format!(
        "POST /publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: {big}\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    let a = refused(&format!(
        "POST /publish/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nContent-Length: {big}\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    let a = refused(&format!(
        "PUT /publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: {big}\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 405"), "{a}");
    let a = refused(&format!(
        "POST /publish/bad%20topic HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\nContent-Length: {big}\r\n\r\n"
    ));
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    // Counted once each, although each body came in several reads.
    assert_eq!(counter(&s, Counter::HttpRequests), 4);
    // With the key the body is read and the publish goes through.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /publish/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"abc").unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(counter(&s, Counter::HttpRequests), 5);
}

/// Echo that records the largest backlog a message found on its connection.
#[derive(Clone)]
struct MeasuringEcho {
    max_queued: Arc<Mutex<usize>>,
}

impl Handler for MeasuringEcho {
    type State = ();
    type Msg = ();
    fn on_open<'r>(
        &mut self,
        _req: &Request<'r>,
        _conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, ()>, HttpError> {
        Ok(Accept::new(()))
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, msg: Message<'_>) {
        let mut m = self.max_queued.lock().unwrap();
        *m = (*m).max(ctx.queued_bytes());
        if let Message::Binary(b) = msg {
            ctx.send_binary(b);
        }
    }
}

#[test]
fn echo_to_a_reader_that_stops_reading_pauses_before_decoding_past_the_limit() {
    // Many small messages in each read: before, every one of them was answered before the
    // limit was looked at, so the backlog grew by a whole read's worth of replies.
    const LIMIT: usize = 16 << 10;
    const MSG: usize = 1000;
    const COUNT: usize = 24_000; // 24 MB: more than the kernel's buffers take
    let max_queued = Arc::new(Mutex::new(0));
    let s = Server::start(
        Config {
            write_queue_limit: LIMIT,
            slow_consumer: SlowConsumerPolicy::Pause,
            ..config()
        },
        MeasuringEcho {
            max_queued: max_queued.clone(),
        },
    )
    .unwrap();
    let mut c = TcpStream::connect(s.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(UPGRADE.as_bytes()).unwrap();
    assert!(read_head(&mut c).starts_with(b"HTTP/1.1 101"));
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let frame = common::masked(0x82, &[5u8; MSG]);
        let batch: Vec<u8> = (0..100).flat_map(|_| frame.iter().copied()).collect();
        for _ in 0..COUNT / 100 {
            w.write_all(&batch).unwrap();
        }
    });
    // Not reading until the server has paused the connection.
    let until = Instant::now() + Duration::from_secs(20);
    while counter(&s, Counter::SlowConsumerPaused) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(counter(&s, Counter::SlowConsumerPaused) > 0);
    std::thread::sleep(Duration::from_millis(200));
    // Now every echo comes back, whole: the input kept while paused is not lost.
    let frame_len = 4 + MSG;
    let mut left = COUNT * frame_len;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let n = c.read(&mut buf[..left.min(64 << 10)]).expect("echoes");
        assert!(n > 0, "closed with {left} bytes to go");
        left -= n;
    }
    writer.join().unwrap();
    let max = *max_queued.lock().unwrap();
    assert!(max < LIMIT, "a message was decoded with {max} bytes queued");
}

/// The process's descriptor table is sized for --max-connections when the server starts, so a
/// flood of new connections never makes the kernel grow it (each doubling, in a process with
/// several threads, waits an RCU grace period with every shard's accept blocked behind it).
#[test]
fn the_descriptor_table_is_sized_for_max_connections_at_start() {
    let fd_size = || fanout::rt::limits::fd_table_size().unwrap();
    let max = 3000.min(fanout::rt::limits::socket_capacity());
    let s = common::echo_server(Config {
        max_connections: max,
        ..config()
    });
    let at_start = fd_size();
    assert!(
        at_start >= fanout::rt::limits::fds_needed(max as u64),
        "FDSize {at_start} for --max-connections {max}"
    );
    // Well past the 64-descriptor table a process starts with.
    // Each sends a request line, so TCP_DEFER_ACCEPT hands it over at once.
    let socks: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut c = TcpStream::connect(s.local_addr()).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.open_connections() < socks.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.open_connections(), socks.len());
    assert_eq!(fd_size(), at_start, "the table grew while accepting");
}
