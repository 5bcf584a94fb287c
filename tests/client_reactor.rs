//! fanout's client reactor against fanout's server (and against refusals).

mod common;

use std::time::{Duration, Instant};

use common::*;
use fanout::client::{
    Client, ClientConfig, ClientCtx, ClientError, ClientHandler, ConnectOptions, WsUrl,
};
use fanout::proto::handshake::ClientHandshakeError;
use fanout::proto::Message;
use fanout::server::Config;

#[derive(Default)]
struct Tally {
    opened: usize,
    echoed: usize,
    closed: Vec<u16>,
    errors: Vec<String>,
    statuses: Vec<u16>,
}

struct St {
    sent: u32,
    got: u32,
}

impl ClientHandler for Tally {
    type State = St;

    fn on_open(&mut self, ctx: &mut ClientCtx<'_, St>, _: Option<&str>) {
        self.opened += 1;
        for i in 0..5 {
            ctx.send_text(&format!("m{i}"));
        }
        ctx.send_binary(&vec![9u8; 100_000]);
        ctx.state().sent = 6;
    }

    fn on_message(&mut self, ctx: &mut ClientCtx<'_, St>, msg: Message<'_>) {
        let i = ctx.state().got;
        match msg {
            Message::Text(t) => assert_eq!(t, format!("m{i}")),
            Message::Binary(b) => assert_eq!(b, &vec![9u8; 100_000][..]),
        }
        self.echoed += 1;
        ctx.state().got += 1;
        if ctx.state().got == ctx.state().sent {
            ctx.close(1000, "");
        }
    }

    fn on_error(&mut self, _: usize, _: &mut St, err: &ClientError) {
        if let ClientError::Handshake(ClientHandshakeError::Status(s)) = err {
            self.statuses.push(*s);
        }
        self.errors.push(err.to_string());
    }

    fn on_close(&mut self, _: usize, _: St, code: u16, _: &str) {
        self.closed.push(code);
    }
}

fn run_until(client: &mut Client<Tally>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.handler().closed.len() < n && Instant::now() < deadline {
        client.poll(Some(Duration::from_millis(50))).unwrap();
    }
}

#[test]
fn many_connections_echo_and_close_cleanly_with_plain_calls() {
    let client = many_connections_echo_and_close_cleanly(false);
    assert!(!client.batching());
    assert_eq!(client.batched_ops(), (0, 0));
}

#[test]
fn many_connections_echo_and_close_cleanly_in_io_uring_batches() {
    let client = many_connections_echo_and_close_cleanly(true);
    assert!(
        client.batching(),
        "io_uring is available here, and no batch failed"
    );
    let (reads, _) = client.batched_ops();
    // 300 connections answered at once: turns with many ready connections are batched.
    assert!(reads >= 300, "{reads} reads batched");
}

/// Each connection answers every echo with its next message, as a load generator does:
/// reads and writes of many connections per turn, in io_uring batches or plain calls.
#[derive(Default)]
struct PingPong {
    done: usize,
    errors: Vec<String>,
    /// Echoes that came with a kernel receive timestamp no later than their processing.
    stamped: usize,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const ROUNDS: u32 = 30;

fn ping_pong_message(round: u32) -> Vec<u8> {
    // Every tenth a 40,000-byte one: more than a batched read's slot.
    let len = if round % 10 == 5 {
        40_000
    } else {
        20 + round as usize
    };
    (0..len).map(|i| (i as u32 * 7 + round) as u8).collect()
}

impl ClientHandler for PingPong {
    type State = u32;

    fn on_open(&mut self, ctx: &mut ClientCtx<'_, u32>, _: Option<&str>) {
        ctx.send_binary(&ping_pong_message(0));
    }

    fn on_message(&mut self, ctx: &mut ClientCtx<'_, u32>, msg: Message<'_>) {
        let round = *ctx.state();
        if let Some(ts) = ctx.received_at_ns() {
            let now = now_ns();
            if ts <= now && ts + 10_000_000_000 > now {
                self.stamped += 1;
            } else {
                self.errors.push(format!("receive timestamp {ts} at {now}"));
            }
        }
        match msg {
            Message::Binary(b) if b == &ping_pong_message(round)[..] => {}
            Message::Binary(b) => {
                self.errors
                    .push(format!("round {round}: a wrong echo of {} bytes", b.len()));
                return;
            }
            Message::Text(t) => {
                self.errors.push(format!("round {round}: text {t:?}"));
                return;
            }
        }
        *ctx.state() += 1;
        if round + 1 == ROUNDS {
            self.done += 1;
            ctx.close(1000, "");
        } else {
            ctx.send_binary(&ping_pong_message(round + 1));
        }
    }

    fn on_error(&mut self, _: usize, _: &mut u32, err: &ClientError) {
        self.errors.push(err.to_string());
    }
}

fn ping_pong(batch_io: bool, rx_timestamps: bool) -> Client<PingPong> {
    let server = echo_server(config());
    let url = WsUrl::parse(&url(server.local_addr())).unwrap();
    let cfg = ClientConfig {
        batch_io,
        rx_timestamps,
        ..ClientConfig::default()
    };
    let mut client = Client::new(cfg, PingPong::default()).unwrap();
    for _ in 0..200 {
        client
            .connect(server.local_addr(), &url, &ConnectOptions::default(), 0)
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.is_empty() && Instant::now() < deadline {
        client.poll(Some(Duration::from_millis(50))).unwrap();
    }
    let h = client.handler();
    assert!(
        h.errors.is_empty(),
        "{:?}",
        &h.errors[..h.errors.len().min(5)]
    );
    assert_eq!(h.done, 200);
    if rx_timestamps {
        // The kernel turns timestamps on from a work queue; the client asks at its start, so
        // all should have one, but a slow work queue may miss a first echo per connection.
        let all = 200 * ROUNDS as usize;
        assert!(
            h.stamped >= all - 200,
            "{} of {all} echoes stamped",
            h.stamped
        );
    } else {
        assert_eq!(h.stamped, 0);
    }
    client
}

#[test]
fn ping_pong_over_many_connections_in_io_uring_batches() {
    let client = ping_pong(true, false);
    assert!(client.batching());
    let (reads, writes) = client.batched_ops();
    assert!(
        reads > 1000 && writes > 1000,
        "{reads} reads, {writes} writes batched of 6,000 each way"
    );
}

#[test]
fn ping_pong_over_many_connections_with_plain_calls() {
    let client = ping_pong(false, false);
    assert_eq!(client.batched_ops(), (0, 0));
}

#[test]
fn kernel_receive_timestamps_reach_the_handler_in_batches_and_with_plain_calls() {
    let batched = ping_pong(true, true);
    let (reads, _) = batched.batched_ops();
    assert!(reads > 1000, "{reads} reads batched");
    let plain = ping_pong(false, true);
    assert_eq!(plain.batched_ops(), (0, 0));
}

/// 300 connections, each sending 5 short texts and one 100,000-byte binary (bigger than a
/// batch read's slot, and its own chunk in the queue), checking every echo, then closing.
fn many_connections_echo_and_close_cleanly(batch_io: bool) -> Client<Tally> {
    let server = echo_server(config());
    let url = WsUrl::parse(&url(server.local_addr())).unwrap();
    let cfg = ClientConfig {
        batch_io,
        ..ClientConfig::default()
    };
    let mut client = Client::new(cfg, Tally::default()).unwrap();
    for _ in 0..300 {
        client
            .connect(
                server.local_addr(),
                &url,
                &ConnectOptions::default(),
                St { sent: 0, got: 0 },
            )
            .unwrap();
    }
    run_until(&mut client, 300);
    let t = client.handler();
    assert_eq!(t.opened, 300, "{:?}", t.errors);
    assert_eq!(t.echoed, 300 * 6);
    assert_eq!(t.closed.len(), 300);
    assert!(t.closed.iter().all(|&c| c == 1000), "{:?}", t.closed);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    client
}

#[test]
fn refusals_are_reported_by_reason() {
    // Nothing listens on this port (bound then dropped).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = echo_server(Config {
        max_connections: 1,
        ..config()
    });
    let addr = server.local_addr();
    let url = WsUrl::parse(&url(addr)).unwrap();
    let mut client = Client::new(ClientConfig::default(), Tally::default()).unwrap();
    let opts = ConnectOptions {
        source: Some("127.0.0.2".parse().unwrap()),
        ..Default::default()
    };
    client
        .connect(free, &url, &opts, St { sent: 0, got: 0 })
        .unwrap();
    run_until(&mut client, 1);
    assert!(
        client.handler().errors[0].contains("refused"),
        "{:?}",
        client.handler().errors
    );
    // Hold the only slot with a raw socket, then a client gets 503.
    let _held = std::net::TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.open_connections() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    client
        .connect(addr, &url, &opts, St { sent: 0, got: 0 })
        .unwrap();
    run_until(&mut client, 2);
    assert_eq!(client.handler().statuses, vec![503]);
}

#[test]
fn deflate_is_negotiated_when_the_server_accepts_and_plain_otherwise() {
    use fanout::proto::deflate::DeflateConfig;
    let deflating = echo_server(Config {
        deflate: DeflateConfig {
            enabled: true,
            min_size: 0,
            ..DeflateConfig::default()
        },
        ..config()
    });
    let plain = echo_server(config());
    let takeover = echo_server(Config {
        deflate: DeflateConfig {
            enabled: true,
            min_size: 0,
            context_takeover: true,
            ..DeflateConfig::default()
        },
        ..config()
    });
    for (server, keep) in [
        (&deflating, false),
        (&plain, false),
        (&takeover, true),
        (&deflating, true),
    ] {
        let url = WsUrl::parse(&url(server.local_addr())).unwrap();
        let mut client = Client::new(ClientConfig::default(), Tally::default()).unwrap();
        let opts = ConnectOptions {
            deflate: true,
            deflate_context_takeover: keep,
            ..ConnectOptions::default()
        };
        for _ in 0..20 {
            client
                .connect(server.local_addr(), &url, &opts, St { sent: 0, got: 0 })
                .unwrap();
        }
        run_until(&mut client, 20);
        let t = client.handler();
        assert_eq!(t.errors, Vec::<String>::new());
        assert_eq!((t.opened, t.echoed), (20, 20 * 6));
        assert!(t.closed.iter().all(|&c| c == 1000), "{:?}", t.closed);
    }
    // The deflating server saw compressed messages both ways; the plain one none.
    let compressed = |s: &fanout::server::Server| {
        fanout::server::stats::total(
            &s.stats(),
            fanout::server::stats::Counter::DeflateMessagesIn,
        )
    };
    assert_eq!(compressed(&deflating), 2 * 20 * 6);
    assert_eq!(compressed(&plain), 0);
    assert_eq!(compressed(&takeover), 20 * 6);
}
