//! permessage-deflate on the wire, with a raw client that compresses with `proto::deflate` and
//! reads the server's frames byte for byte: negotiation, RSV1 on the server's messages, context
//! takeover across messages, fragmented compressed messages, RSV1 misuse (1002), bad data
//! (1007), bombs (1009), and a push broadcast compressed once per shard.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use fanout::apps::push::{Push, PushConfig};
use fanout::proto::deflate::{DeflateConfig, Deflater, Inflater};
use fanout::server::{Config, Server, SlowConsumerPolicy};

use common::{close_code_in, config, echo_server, masked, UPGRADE};

fn deflate_cfg(takeover: bool) -> Config {
    Config {
        deflate: DeflateConfig {
            enabled: true,
            min_size: 0,
            context_takeover: takeover,
            ..DeflateConfig::default()
        },
        ..config()
    }
}

fn request(path: &str, ext: Option<&str>) -> String {
    let mut r = UPGRADE.replacen("GET / ", &format!("GET {path} "), 1);
    if let Some(e) = ext {
        r = r.replacen(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Extensions: {e}\r\n\r\n"),
            1,
        );
    }
    r
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Frame {
    fin: bool,
    rsv: u8,
    op: u8,
    payload: Vec<u8>,
}

impl Raw {
    /// Connects, sends the upgrade and returns the client and the response head.
    fn open(addr: SocketAddr, path: &str, ext: Option<&str>) -> (Raw, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request(path, ext).as_bytes()).unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let end = loop {
            if let Some(p) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            raw.fill();
        };
        let head = String::from_utf8(raw.buf.drain(..end).collect()).unwrap();
        (raw, head)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn frame(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 2 {
                let b1 = self.buf[1] & 0x7f;
                let (hl, len) = match b1 {
                    126 if self.buf.len() >= 4 => {
                        (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    127 if self.buf.len() >= 10 => (
                        10,
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n as usize),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                if hl != usize::MAX && self.buf.len() >= hl + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Frame {
                        fin: b0 & 0x80 != 0,
                        rsv: (b0 >> 4) & 7,
                        op: b0 & 0x0f,
                        payload,
                    };
                }
            }
            self.fill();
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads until the server closes; returns the close code it sent.
    fn close_code(&mut self) -> Option<u16> {
        let mut rest = std::mem::take(&mut self.buf);
        let _ = self.s.read_to_end(&mut rest);
        let mut fake = b"HTTP/1.1 101 x\r\n\r\n".to_vec();
        fake.extend_from_slice(&rest);
        close_code_in(&fake)
    }
}

/// A masked client frame of any length, with the given first byte.
fn masked_any(first: u8, payload: &[u8]) -> Vec<u8> {
    if payload.len() <= u16::MAX as usize {
        return masked(first, payload);
    }
    let key = [0x9a, 0xbc, 0xde, 0xf0];
    let mut v = vec![first, 0x80 | 127];
    v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

fn compress(d: &mut Deflater, data: &[u8], reset: bool) -> Vec<u8> {
    let mut z = Vec::new();
    d.compress(data, &mut z, reset);
    z
}

fn json_doc(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id":{i},"name":"user-{i}","active":{}}}"#, i % 2 == 0))
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn negotiation_answers_per_config() {
    let off = echo_server(config());
    let (_, head) = Raw::open(off.local_addr(), "/", Some("permessage-deflate"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");

    let on = echo_server(deflate_cfg(false));
    let (_, head) = Raw::open(
        on.local_addr(),
        "/",
        Some("permessage-deflate; client_max_window_bits"),
    );
    assert!(
        head.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
        "{head}"
    );
    // An unacceptable offer is declined, the connection still opens.
    let (_, head) = Raw::open(on.local_addr(), "/", Some("permessage-deflate; bogus=1"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    // No offer: no extension.
    let (_, head) = Raw::open(on.local_addr(), "/", None);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
}

#[test]
fn messages_are_compressed_both_ways_without_takeover() {
    let server = echo_server(deflate_cfg(false));
    let (mut c, _) = Raw::open(server.local_addr(), "/", Some("permessage-deflate"));
    let mut d = Deflater::new(15, 6);
    let mut inf = Inflater::new();
    let doc = json_doc(2000);
    for round in 0..3 {
        let z = compress(&mut d, doc.as_bytes(), true);
        assert!(z.len() * 4 < doc.len());
        c.send(&masked_any(0xc1, &z)); // FIN + RSV1 + text
        let f = c.frame();
        assert!(f.fin && f.op == 1, "{f:?}");
        assert_eq!(f.rsv, 0b100, "round {round}: the echo is compressed");
        assert!(f.payload.len() * 4 < doc.len());
        let mut out = Vec::new();
        inf.inflate(&f.payload, &mut out, 1 << 24, true).unwrap();
        assert_eq!(out, doc.as_bytes());
    }
    // An uncompressed message on the same connection is fine too (RSV1 clear).
    c.send(&masked(0x82, b"plain binary"));
    let f = c.frame();
    assert_eq!(f.op, 2);
    let mut out = Vec::new();
    if f.rsv == 0b100 {
        inf.inflate(&f.payload, &mut out, 1 << 20, true).unwrap();
    } else {
        out = f.payload;
    }
    assert_eq!(out, b"plain binary");
    // The echo app answers /metrics with the server's counters.
    assert_eq!(
        metric(server.local_addr(), "fanout_deflate_messages_in_total"),
        3
    );
    assert!(metric(server.local_addr(), "fanout_deflate_messages_out_total") >= 3);
}

#[test]
fn context_takeover_spans_messages() {
    let server = echo_server(deflate_cfg(true));
    let (mut c, head) = Raw::open(server.local_addr(), "/", Some("permessage-deflate"));
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        "{head}"
    );
    let mut d = Deflater::new(15, 6);
    let mut inf = Inflater::new();
    let doc = json_doc(300);
    let mut sizes = Vec::new();
    for _ in 0..4 {
        // Client side keeps its context: the second copy refers back to the first.
        let z = compress(&mut d, doc.as_bytes(), false);
        c.send(&masked_any(0xc1, &z));
        let f = c.frame();
        assert_eq!(f.rsv, 0b100);
        sizes.push(f.payload.len());
        let mut out = Vec::new();
        inf.inflate(&f.payload, &mut out, 1 << 24, false).unwrap();
        assert_eq!(out, doc.as_bytes());
    }
    // The server kept its context: repeats cost a fraction of the first message.
    assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
}

#[test]
fn fragmented_compressed_message_is_reassembled_then_inflated() {
    let server = echo_server(deflate_cfg(false));
    let (mut c, _) = Raw::open(server.local_addr(), "/", Some("permessage-deflate"));
    let doc = json_doc(5000);
    let z = compress(&mut Deflater::new(15, 6), doc.as_bytes(), true);
    let parts: Vec<&[u8]> = z.chunks(z.len() / 3 + 1).collect();
    assert_eq!(parts.len(), 3);
    let mut bytes = masked_any(0x41, parts[0]); // RSV1 + text, not FIN
    bytes.extend(masked(0x89, b"ping in between"));
    bytes.extend(masked_any(0x00, parts[1]));
    bytes.extend(masked_any(0x80, parts[2]));
    // Byte by byte in a few writes, so frames are cut by reads.
    for chunk in bytes.chunks(777) {
        c.send(chunk);
    }
    let pong = c.frame();
    assert_eq!(
        (pong.op, pong.rsv),
        (0xA, 0),
        "control frames are never compressed"
    );
    assert_eq!(pong.payload, b"ping in between");
    let f = c.frame();
    assert_eq!((f.op, f.rsv), (1, 0b100));
    let mut out = Vec::new();
    Inflater::new()
        .inflate(&f.payload, &mut out, 1 << 24, true)
        .unwrap();
    assert_eq!(out, doc.as_bytes());
}

#[test]
fn rsv1_misuse_is_a_protocol_error() {
    let server = echo_server(deflate_cfg(false));
    let z = compress(&mut Deflater::new(15, 6), b"hello", true);
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("RSV1 without negotiation", None, masked(0xc1, &z)),
        (
            "RSV1 on a ping",
            Some("permessage-deflate"),
            masked(0xc9, b"x"),
        ),
        ("RSV1 on a continuation", Some("permessage-deflate"), {
            let mut v = masked(0x41, &z);
            v.extend(masked(0xc0, &z));
            v
        }),
        ("RSV2", Some("permessage-deflate"), masked(0xa1, b"x")),
    ];
    for (what, ext, bytes) in cases {
        let (mut c, _) = Raw::open(server.local_addr(), "/", ext);
        c.send(&bytes);
        assert_eq!(c.close_code(), Some(1002), "{what}");
    }
}

#[test]
fn bad_data_and_bombs_close_with_1007_and_1009() {
    let cfg = Config {
        max_message_size: 1 << 20,
        ..deflate_cfg(false)
    };
    let server = echo_server(cfg);
    let addr = server.local_addr();

    let (mut c, _) = Raw::open(addr, "/", Some("permessage-deflate"));
    c.send(&masked(0xc2, &[0xff, 0xff, 0xff, 0xff, 0x01, 0x02]));
    assert_eq!(c.close_code(), Some(1007), "not DEFLATE data");

    let (mut c, _) = Raw::open(addr, "/", Some("permessage-deflate"));
    let z = compress(&mut Deflater::new(15, 6), &[0xc3, 0x28, b'a', b'b'], true);
    c.send(&masked(0xc1, &z));
    assert_eq!(
        c.close_code(),
        Some(1007),
        "compressed text that is not UTF-8"
    );

    // 16 MiB of zeros is about 16 KiB compressed: under the limit on the wire, far over it
    // inflated. The server stops at the limit.
    let bomb = compress(&mut Deflater::new(15, 6), &vec![0u8; 16 << 20], true);
    assert!(bomb.len() < 1 << 20);
    let (mut c, _) = Raw::open(addr, "/", Some("permessage-deflate"));
    c.send(&masked_any(0xc2, &bomb));
    assert_eq!(c.close_code(), Some(1009));

    // Exactly the limit inflated is accepted.
    let ok = compress(&mut Deflater::new(15, 9), &vec![7u8; 1 << 20], true);
    let (mut c, _) = Raw::open(addr, "/", Some("permessage-deflate"));
    c.send(&masked_any(0xc2, &ok));
    let f = c.frame();
    let mut out = Vec::new();
    Inflater::new()
        .inflate(&f.payload, &mut out, 1 << 21, true)
        .unwrap();
    assert_eq!(out.len(), 1 << 20);
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{out}"))
}

#[test]
fn a_broadcast_is_compressed_once_per_shard() {
    let server = Server::start(
        Config {
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ..deflate_cfg(false)
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut deflating: Vec<Raw> = (0..40)
        .map(|_| Raw::open(addr, "/ws?topics=news", Some("permessage-deflate")).0)
        .collect();
    let mut plain: Vec<Raw> = (0..10)
        .map(|_| Raw::open(addr, "/ws?topics=news", None).0)
        .collect();
    // Every subscription is registered once its connection answers a command.
    for c in deflating.iter_mut().chain(plain.iter_mut()) {
        c.send(&masked(0x81, br#"{"op":"subscribe","topic":"other"}"#));
        let _ = c.frame();
    }
    let before = metric(addr, "fanout_deflate_messages_out_total");
    let doc = json_doc(1000);
    let req = format!(
        "POST /publish/news HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{doc}",
        doc.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.contains(r#""subscribers":50"#), "{resp}");

    let mut inf = Inflater::new();
    for c in &mut deflating {
        let f = c.frame();
        assert_eq!((f.op, f.rsv), (1, 0b100));
        let mut out = Vec::new();
        inf.inflate(&f.payload, &mut out, 1 << 24, true).unwrap();
        assert_eq!(out, doc.as_bytes());
    }
    for c in &mut plain {
        let f = c.frame();
        assert_eq!((f.op, f.rsv), (1, 0));
        assert_eq!(f.payload, doc.as_bytes());
    }
    let compressions = metric(addr, "fanout_deflate_messages_out_total") - before;
    assert!(
        (1..=2).contains(&compressions),
        "40 deflate subscribers on 2 shards: {compressions} compressions"
    );
}

#[test]
fn bad_compressed_data_is_counted_apart_from_bad_utf8() {
    use fanout::server::{stats, Counter};
    let server = echo_server(deflate_cfg(false));
    let addr = server.local_addr();
    let count = |c| stats::total(&server.stats(), c);
    let (mut c, _) = Raw::open(addr, "/", Some("permessage-deflate"));
    c.send(&masked(0xc2, &[0xff, 0xff, 0xff, 0xff, 0x01, 0x02]));
    assert_eq!(c.close_code(), Some(1007), "not DEFLATE data");
    assert_eq!(count(Counter::CloseBadCompressed), 1);
    assert_eq!(count(Counter::Close1007), 0);
    let (mut c, _) = Raw::open(addr, "/", Some("permessage-deflate"));
    let z = compress(&mut Deflater::new(15, 6), &[0xc3, 0x28, b'a', b'b'], true);
    c.send(&masked(0xc1, &z));
    assert_eq!(c.close_code(), Some(1007), "compressed text, not UTF-8");
    assert_eq!(count(Counter::CloseBadCompressed), 1);
    assert_eq!(count(Counter::Close1007), 1);
}
