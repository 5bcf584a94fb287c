//! Helpers for the push app's tests: servers, tungstenite subscribers and plain HTTP requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fanout::apps::push::{Push, PushConfig};
use fanout::server::{Config, Server, SlowConsumerPolicy};
use tungstenite::{connect, Message};

pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

pub const KEY: &str = "test-key";

/// A push server on a free loopback port with 2 shards, whose slow subscribers are closed
/// (the tests want to see it): `cfg` for the rest of the server's settings, `push` for the app.
pub fn push_server(cfg: Config, push: PushConfig) -> Server {
    Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ..cfg
        },
        Push::new(push),
    )
    .unwrap()
}

/// The push app as most tests run it: publishes need `KEY`, WebSocket publishes allowed.
pub fn push_config() -> PushConfig {
    PushConfig {
        publish_key: Some(KEY.into()),
        allow_ws_publish: true,
        ..PushConfig::default()
    }
}

/// The next text message, parsed as JSON.
pub fn json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws)).unwrap()
}

/// Waits until `/healthz` says `ok` (with a broker: connected).
pub fn wait_healthy(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http(s.local_addr(), "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        if body == "ok\n" {
            return;
        }
        assert!(Instant::now() < deadline, "broker never connected: {body}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn sub(addr: SocketAddr, query: &str) -> Ws {
    let (ws, _) = connect(format!("ws://{addr}/ws{query}")).unwrap();
    set_timeout(&ws, Duration::from_secs(5));
    ws
}

pub fn set_timeout(ws: &Ws, t: Duration) {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(t)).unwrap();
    }
}

pub fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return format!("binary:{}", String::from_utf8_lossy(&b)),
            _ => continue,
        }
    }
}

/// Nothing arrives within `t`.
pub fn silent(ws: &mut Ws, t: Duration) -> bool {
    set_timeout(ws, t);
    let r = loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(_) => break false,
            Err(_) => break true,
        }
    };
    set_timeout(ws, Duration::from_secs(5));
    r
}

pub fn http(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

pub fn publish(addr: SocketAddr, topic: &str, body: &str, ct: &str, key: &str) -> (u16, String) {
    http(
        addr,
        &format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}
