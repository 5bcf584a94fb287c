//! Inputs and decode loops shared by the `proto` (criterion) and `proto_ratio` benches: masked
//! client frames as a server reads them, and the two decoders (fanout, tungstenite) run over
//! them the same way. Not a bench target itself (Cargo only discovers `benches/*.rs` and
//! `benches/*/main.rs`).
#![allow(dead_code)]

use std::hint::black_box;
use std::io::Cursor;

use fanout::proto::frame::encode_frame;
use fanout::proto::{Decoded, Decoder, DecoderConfig, Event, OpCode, Role};
use tungstenite::protocol::{Role as TRole, WebSocket, WebSocketConfig};

/// How many bytes of frames (headers included) one decode input holds.
pub const INPUT_BYTES: usize = 1 << 20;

/// What the payloads are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// JSON-like ASCII text.
    Ascii,
    /// JSON-like text where roughly a quarter of the bytes belong to 2, 3 and 4-byte code points.
    Utf8,
    /// Pseudo-random bytes, sent as binary messages.
    Binary,
}

/// One decode input: whole masked frames, back to back, as a server's read buffer holds them.
pub struct Input {
    pub name: &'static str,
    /// The masked frames. Decoding unmasks in place, so every fanout run starts from a copy.
    pub bytes: Vec<u8>,
    pub frames: usize,
    pub payload_len: usize,
    /// Sum of all payload bytes (what the decoders must hand out).
    pub payload_bytes: usize,
    /// FNV-1a of all payloads, in order, to check a decoder's output once.
    pub payload_hash: u64,
}

/// A small deterministic generator (xorshift64*), so every run sees the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Exactly `len` bytes of valid UTF-8 text: JSON-like records, cut on a character boundary and
/// padded with ASCII spaces.
pub fn text_payload(len: usize, utf8: bool, seq: u64) -> Vec<u8> {
    let mut out = String::with_capacity(len + 64);
    let mut n = seq;
    while out.len() < len {
        let record = if utf8 {
            format!(
                "{{\"seq\":{n},\"user\":\"Zoë Ångström\",\"msg\":\"naïve café — 日本語のテキスト 🚀✨\",\"px\":\"€{}.{:02}\"}},",
                n % 100_000,
                n % 100
            )
        } else {
            format!(
                "{{\"seq\":{n},\"type\":\"tick\",\"sym\":\"BTC-USD\",\"px\":\"{}.{:02}\",\"qty\":\"0.{:04}\",\"ts\":{}}},",
                60_000 + n % 5_000,
                n % 100,
                n % 10_000,
                1_716_400_000_000u64 + n
            )
        };
        for c in record.chars() {
            if out.len() + c.len_utf8() > len {
                break;
            }
            out.push(c);
        }
        if out.len() < len && out.len() + 4 > len {
            // The next character might not fit: pad.
            while out.len() < len {
                out.push(' ');
            }
        }
        n += 1;
    }
    debug_assert_eq!(out.len(), len);
    out.into_bytes()
}

pub fn binary_payload(len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `INPUT_BYTES` worth of whole masked frames of `payload_len` bytes each (at least one frame),
/// every frame with its own mask key, as a browser would send them.
pub fn make_input(name: &'static str, payload_len: usize, kind: Payload) -> Input {
    let frame_len = fanout::proto::frame::header_len(payload_len as u64, true) + payload_len;
    let frames = (INPUT_BYTES / frame_len).max(1);
    let mut rng = Rng::new(0x5eed ^ payload_len as u64);
    let mut bytes = Vec::with_capacity(frames * frame_len);
    let mut hash = FNV_OFFSET;
    for i in 0..frames {
        let (opcode, payload) = match kind {
            Payload::Ascii => (OpCode::Text, text_payload(payload_len, false, i as u64 * 7)),
            Payload::Utf8 => (OpCode::Text, text_payload(payload_len, true, i as u64 * 7)),
            Payload::Binary => (OpCode::Binary, binary_payload(payload_len, &mut rng)),
        };
        hash = fnv1a(hash, &payload);
        encode_frame(&mut bytes, true, opcode, &payload, Some(rng.mask_key()));
    }
    assert_eq!(bytes.len(), frames * frame_len);
    Input {
        name,
        bytes,
        frames,
        payload_len,
        payload_bytes: frames * payload_len,
        payload_hash: hash,
    }
}

/// The decode inputs every decoder is run over.
pub fn decode_inputs() -> Vec<Input> {
    vec![
        make_input("125B_text", 125, Payload::Ascii),
        make_input("125B_text_utf8", 125, Payload::Utf8),
        make_input("64KiB_text", 64 << 10, Payload::Ascii),
        make_input("64KiB_text_utf8", 64 << 10, Payload::Utf8),
        make_input("64KiB_binary", 64 << 10, Payload::Binary),
    ]
}

pub fn server_config() -> DecoderConfig {
    DecoderConfig {
        max_message_size: 64 << 20,
        ..DecoderConfig::new(Role::Server)
    }
}

fn event_payload<'a>(event: &Event<'a>) -> &'a [u8] {
    match event {
        Event::Text(t) => t.as_bytes(),
        Event::Binary(b) | Event::Ping(b) | Event::Pong(b) => b,
        Event::Compressed { payload, .. } => payload,
        Event::Close(c) => c.reason.as_bytes(),
    }
}

/// The server's read loop: `next()` until `Incomplete`, each message borrowed in place (its
/// length goes through `black_box`). `buf` holds masked frames and is unmasked in place.
/// Returns (messages, payload bytes).
#[inline(never)]
pub fn fanout_decode(dec: &mut Decoder, cfg: &DecoderConfig, buf: &mut [u8]) -> (usize, usize) {
    let mut pos = 0;
    let mut messages = 0;
    let mut payload = 0;
    loop {
        match dec.next(cfg, &mut buf[pos..]) {
            Ok(Decoded::Event(n, event)) => {
                payload += black_box(event_payload(&event).len());
                messages += 1;
                pos += n;
            }
            Ok(Decoded::Progress(n)) => pos += n,
            Ok(Decoded::Incomplete) => break,
            Err(e) => panic!("fanout decode failed: {e}"),
        }
    }
    assert_eq!(pos, buf.len(), "every frame is whole");
    (messages, payload)
}

/// Decodes a fresh copy with fanout and checks messages, bytes and content against the input.
pub fn check_fanout(input: &Input) {
    let mut work = input.bytes.clone();
    let cfg = server_config();
    let mut dec = Decoder::new();
    let mut pos = 0;
    let mut hash = FNV_OFFSET;
    let mut messages = 0;
    loop {
        match dec.next(&cfg, &mut work[pos..]).expect("valid input") {
            Decoded::Event(n, event) => {
                hash = fnv1a(hash, event_payload(&event));
                messages += 1;
                pos += n;
            }
            Decoded::Progress(n) => pos += n,
            Decoded::Incomplete => break,
        }
    }
    assert_eq!(messages, input.frames, "{}", input.name);
    assert_eq!(
        hash, input.payload_hash,
        "{}: fanout payloads differ",
        input.name
    );
    assert!(dec.is_idle());
}

/// tungstenite's read buffer for the comparison. Its default is 128 KiB; see `proto_ratio`
/// (`FANOUT_BENCH_TUNG_BUF`) for how the choice was made.
pub const TUNGSTENITE_READ_BUF: usize = 128 << 10;

/// tungstenite in the server role over an in-memory stream holding the same masked frames.
///
/// tungstenite copies from its stream into its own read buffer and unmasks there, so the input
/// stays pristine: each run only rewinds the cursor and reads every message again, reusing the
/// same `WebSocket` (warm read buffer, no setup in the timed loop). Its copy out of the
/// `Cursor` stands for the `read(2)` a real server does and is part of what it measures.
pub struct Tungstenite {
    ws: WebSocket<Cursor<Vec<u8>>>,
    messages: usize,
    len: u64,
}

impl Tungstenite {
    pub fn new(input: &Input, read_buffer_size: usize) -> Self {
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer_size)
            .max_message_size(None)
            .max_frame_size(None);
        let ws = WebSocket::from_raw_socket(
            Cursor::new(input.bytes.clone()),
            TRole::Server,
            Some(config),
        );
        Self {
            ws,
            messages: input.frames,
            len: input.bytes.len() as u64,
        }
    }

    /// Reads every message once. Returns (messages, payload bytes).
    #[inline(never)]
    pub fn decode(&mut self) -> (usize, usize) {
        self.ws.get_mut().set_position(0);
        let mut payload = 0;
        for _ in 0..self.messages {
            let msg = self.ws.read().expect("tungstenite decode");
            payload += black_box(msg.len());
        }
        debug_assert_eq!(self.ws.get_ref().position(), self.len);
        (self.messages, payload)
    }

    /// Decodes once and checks the content against the input.
    pub fn check(&mut self, input: &Input) {
        self.ws.get_mut().set_position(0);
        let mut hash = FNV_OFFSET;
        for _ in 0..self.messages {
            let msg = self.ws.read().expect("tungstenite decode");
            let is_text = msg.is_text();
            hash = fnv1a(hash, &msg.into_data());
            assert_eq!(is_text, input.name.contains("text"));
        }
        assert_eq!(self.ws.get_ref().position(), self.len, "{}", input.name);
        assert_eq!(
            hash, input.payload_hash,
            "{}: tungstenite payloads differ",
            input.name
        );
    }
}

/// A Chrome-like upgrade request (about 550 bytes).
pub const BROWSER_REQUEST: &[u8] = b"GET /ws?topics=prices,news&token=4f1c2b HTTP/1.1\r\n\
Host: stream.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
Cookie: sid=9f8e7d6c5b4a; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";
