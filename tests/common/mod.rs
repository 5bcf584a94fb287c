//! Shared by the integration tests: start a real server on 127.0.0.1:0 in-process.

#![allow(dead_code)]

pub mod push;
pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use fanout::apps::echo::Echo;
use fanout::server::{Config, IoMode, Server};

/// The I/O path the test run asks for: `FANOUT_TEST_IO=epoll` runs every in-process server of
/// the suite on the plain calls (`scripts/test.sh` does, once more), `uring` on io_uring
/// batches; unset: the default (`uring`).
pub fn test_io() -> IoMode {
    match std::env::var("FANOUT_TEST_IO").as_deref() {
        Ok("uring") => IoMode::Uring,
        Ok("epoll") => IoMode::Epoll,
        Ok("") | Err(_) => IoMode::default(),
        Ok(other) => panic!("FANOUT_TEST_IO={other}: expected uring or epoll"),
    }
}

/// The server's defaults with the run's I/O path: what every test server starts from.
pub fn base_config() -> Config {
    Config {
        io: test_io(),
        ..Config::default()
    }
}

pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        ..base_config()
    }
}

pub fn echo_server(cfg: Config) -> Server {
    Server::start(cfg, Echo).expect("server starts")
}

pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

/// Sends raw bytes and reads until the server closes (or 5 s pass).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

pub const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut v = vec![first];
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

/// The close code in the first close frame of a server's byte stream after the 101 head.
pub fn close_code_in(stream: &[u8]) -> Option<u16> {
    let head_end = stream.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut p = head_end;
    while p + 2 <= stream.len() {
        let op = stream[p] & 0x0f;
        let len = (stream[p + 1] & 0x7f) as usize;
        let (hl, len) = match len {
            126 => (
                4,
                u16::from_be_bytes([stream[p + 2], stream[p + 3]]) as usize,
            ),
            127 => return None,
            n => (2, n),
        };
        if op == 0x8 {
            let body = &stream[p + hl..p + hl + len];
            return Some(if body.len() >= 2 {
                u16::from_be_bytes([body[0], body[1]])
            } else {
                1005
            });
        }
        p += hl + len;
    }
    None
}

/// An app that defers every plain HTTP request and never answers it.
#[derive(Clone)]
pub struct NeverAnswers;

impl fanout::server::Handler for NeverAnswers {
    type State = ();
    type Msg = ();
    fn on_open<'r>(
        &mut self,
        _: &fanout::proto::handshake::Request<'r>,
        _: &fanout::server::ConnInfo<'_>,
    ) -> Result<fanout::server::Accept<'r, ()>, fanout::proto::handshake::HttpError> {
        Ok(fanout::server::Accept::new(()))
    }
    fn on_message(&mut self, _: &mut fanout::server::Ctx<'_, ()>, _: fanout::proto::Message<'_>) {}
    fn on_http(
        &mut self,
        _: &fanout::proto::handshake::Request<'_>,
        _: &[u8],
        _: &fanout::server::ConnInfo<'_>,
    ) -> fanout::server::HttpReply {
        fanout::server::HttpReply::Defer
    }
}
