//! Property tests of the sans-IO protocol through its public API: a stream decodes to the same
//! events whether it arrives whole or cut anywhere (the way the server feeds the decoder: keep
//! the unconsumed tail, append the next read), garbage never panics, and the handshake parsers
//! say "incomplete" for every strict prefix of a head.
//!
//! The case count defaults to a moderate number; set `PROPTEST_CASES` to run more.

use fanout::proto::frame::{close_payload, encode_frame};
use fanout::proto::handshake::{
    accept_key, client_key, parse_request, parse_response, write_accept_response,
    write_client_request, DEFAULT_MAX_HEADER_BYTES,
};
use fanout::proto::testing::Owned;
use fanout::proto::{close_code, Decoded, Decoder, DecoderConfig, OpCode, Role};
use proptest::prelude::*;
use proptest::sample::Index;

// ----- harness -----

/// What a run left behind.
struct Run {
    events: Vec<Owned>,
    /// Unconsumed bytes at the end (the stash the server would keep).
    left: usize,
    idle: bool,
}

/// Feeds `chunks` the way the server does: the unconsumed tail is kept and the next chunk is
/// appended to it; `next` is called in a loop, advancing by the consumed count, until
/// `Incomplete`. Stops at the first error.
fn decode_chunks(cfg: &DecoderConfig, chunks: &[&[u8]]) -> Run {
    let mut dec = Decoder::new();
    let mut events = Vec::new();
    let mut stash: Vec<u8> = Vec::new();
    for chunk in chunks {
        let mut data = std::mem::take(&mut stash);
        data.extend_from_slice(chunk);
        let mut pos = 0;
        // Calls in a row that consumed nothing: more than two would spin the server's loop.
        let mut idle_calls = 0usize;
        loop {
            let before = pos;
            match dec.next(cfg, &mut data[pos..]) {
                Ok(Decoded::Event(n, e)) => {
                    events.push(Owned::of(&e));
                    pos += n;
                }
                Ok(Decoded::Progress(n)) => pos += n,
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    events.push(Owned::Error(e.code));
                    return Run {
                        events,
                        left: data.len() - pos,
                        idle: dec.is_idle(),
                    };
                }
            }
            assert!(pos <= data.len(), "consumed more than was given");
            idle_calls = if pos == before { idle_calls + 1 } else { 0 };
            assert!(idle_calls <= 2, "decoder spins without consuming");
        }
        stash = data[pos..].to_vec();
    }
    Run {
        events,
        left: stash.len(),
        idle: dec.is_idle(),
    }
}

/// Cuts `bytes` at the given points (sorted, deduplicated, clamped to the length).
fn cut<'a>(bytes: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = points.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for p in at {
        out.push(&bytes[start..p]);
        start = p;
    }
    out.push(&bytes[start..]);
    out
}

/// A cheap deterministic byte generator (splitmix64), for mask keys and large payloads.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

// ----- valid streams -----

#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Data {
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Message {
    /// Control frames sent before the message starts.
    before: Vec<Control>,
    data: Data,
    /// Byte offsets where the payload is cut into fragments (any order, repeats allowed: a
    /// repeat makes an empty fragment). Text is cut at arbitrary bytes, inside code points too.
    cuts: Vec<Index>,
    /// Control frames after each fragment but the last (extra entries are unused).
    between: Vec<Vec<Control>>,
}

#[derive(Debug, Clone)]
enum Close {
    Empty,
    With(u16, String),
}

#[derive(Debug, Clone)]
struct Stream {
    messages: Vec<Message>,
    close: Option<Close>,
    /// Seeds the mask keys (one per frame).
    key_seed: u64,
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Control::Ping),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Control::Pong),
    ]
}

fn controls(max: usize) -> impl Strategy<Value = Vec<Control>> {
    prop::collection::vec(control(), 0..=max)
}

/// Text mixing ASCII with 2-, 3- and 4-byte characters.
fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => proptest::char::range('\u{20}', '\u{7e}'),
        1 => proptest::char::range('\u{80}', '\u{7ff}'),
        1 => proptest::char::range('\u{800}', '\u{ffff}'),
        1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
        1 => any::<char>(),
    ];
    prop_oneof![
        8 => prop::collection::vec(ch.clone(), 0..80),
        2 => prop::collection::vec(ch, 100..400),
    ]
    .prop_map(|v| v.into_iter().collect())
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        5 => text().prop_map(Data::Text),
        4 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Data::Binary),
        // Past 65535 bytes: the 64-bit length form.
        1 => (65_536usize..66_000, any::<u64>())
            .prop_map(|(n, seed)| Data::Binary(Rng(seed).bytes(n))),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        controls(2),
        data(),
        prop::collection::vec(any::<Index>(), 0..5),
        prop::collection::vec(controls(2), 0..5),
    )
        .prop_map(|(before, data, cuts, between)| Message {
            before,
            data,
            cuts,
            between,
        })
}

fn valid_close_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        1000u16..=1003,
        1007u16..=1014,
        3000u16..=4999,
        Just(close_code::NORMAL),
    ]
}

fn close() -> impl Strategy<Value = Close> {
    prop_oneof![
        1 => Just(Close::Empty),
        4 => (valid_close_code(), text()).prop_map(|(code, reason)| {
            // Keep the reason within the 123 bytes a close frame has room for.
            let (buf, n) = close_payload(code, &reason);
            let reason = std::str::from_utf8(&buf[2..n]).unwrap().to_string();
            Close::With(code, reason)
        }),
    ]
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        prop::collection::vec(message(), 0..6),
        prop::option::of(close()),
        any::<u64>(),
    )
        .prop_map(|(messages, close, key_seed)| Stream {
            messages,
            close,
            key_seed,
        })
}

/// Appends one frame as the peer of `role` sends it: masked with a fresh key to a server.
fn put_frame(out: &mut Vec<u8>, rng: &mut Rng, role: Role, fin: bool, op: OpCode, payload: &[u8]) {
    let mask = match role {
        Role::Server => Some(rng.key()),
        Role::Client => None,
    };
    encode_frame(out, fin, op, payload, mask);
}

fn put_controls(
    out: &mut Vec<u8>,
    expected: &mut Vec<Owned>,
    rng: &mut Rng,
    role: Role,
    list: &[Control],
) {
    for c in list {
        match c {
            Control::Ping(p) => {
                put_frame(out, rng, role, true, OpCode::Ping, p);
                expected.push(Owned::Ping(p.clone()));
            }
            Control::Pong(p) => {
                put_frame(out, rng, role, true, OpCode::Pong, p);
                expected.push(Owned::Pong(p.clone()));
            }
        }
    }
}

/// Encodes `stream` as the peer of `role` sends it and returns the events the decoder must
/// report.
fn encode(stream: &Stream, role: Role) -> (Vec<u8>, Vec<Owned>) {
    let rng = &mut Rng(stream.key_seed);
    let mut out = Vec::new();
    let mut expected = Vec::new();
    for m in &stream.messages {
        put_controls(&mut out, &mut expected, rng, role, &m.before);
        let (op, payload, event) = match &m.data {
            Data::Text(t) => (OpCode::Text, t.as_bytes(), Owned::Text(t.clone())),
            Data::Binary(b) => (OpCode::Binary, &b[..], Owned::Binary(b.clone())),
        };
        let mut at: Vec<usize> = m.cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        at.sort_unstable();
        at.push(payload.len());
        let mut start = 0;
        for (i, &end) in at.iter().enumerate() {
            let last = i + 1 == at.len();
            let opcode = if i == 0 { op } else { OpCode::Continuation };
            put_frame(&mut out, rng, role, last, opcode, &payload[start..end]);
            if !last {
                if let Some(list) = m.between.get(i) {
                    put_controls(&mut out, &mut expected, rng, role, list);
                }
            }
            start = end;
        }
        expected.push(event);
    }
    match &stream.close {
        None => {}
        Some(Close::Empty) => {
            put_frame(&mut out, rng, role, true, OpCode::Close, &[]);
            expected.push(Owned::Close(close_code::NO_STATUS, String::new()));
        }
        Some(Close::With(code, reason)) => {
            let (buf, n) = close_payload(*code, reason);
            put_frame(&mut out, rng, role, true, OpCode::Close, &buf[..n]);
            expected.push(Owned::Close(*code, reason.clone()));
        }
    }
    (out, expected)
}

/// Decodes a valid stream whole, cut at `points`, in random-sized pieces, and (when small)
/// one byte at a time; every way must give exactly `expected` and leave the decoder idle.
fn check_valid(role: Role, bytes: &[u8], expected: &[Owned], points: &[Index]) {
    let cfg = DecoderConfig::new(role);
    let whole = decode_chunks(&cfg, &[bytes]);
    assert_eq!(whole.events, expected, "whole");
    assert_eq!(whole.left, 0, "whole: bytes left over");
    assert!(whole.idle, "whole: decoder not idle at the end");

    let pieces = cut(bytes, points);
    let split = decode_chunks(&cfg, &pieces);
    assert_eq!(split.events, expected, "split at {points:?}");
    assert_eq!(split.left, 0, "split: bytes left over");
    assert!(split.idle, "split: decoder not idle at the end");

    if bytes.len() <= 4096 {
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        let one = decode_chunks(&cfg, &bytewise);
        assert_eq!(one.events, expected, "one byte at a time");
        assert_eq!(one.left, 0, "bytewise: bytes left over");
        assert!(one.idle, "bytewise: decoder not idle at the end");
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn server_decodes_masked_stream_cut_anywhere(
        s in stream(),
        points in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let (bytes, expected) = encode(&s, Role::Server);
        check_valid(Role::Server, &bytes, &expected, &points);
    }

    #[test]
    fn client_decodes_unmasked_stream_cut_anywhere(
        s in stream(),
        points in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let (bytes, expected) = encode(&s, Role::Client);
        check_valid(Role::Client, &bytes, &expected, &points);
    }

    /// Arbitrary bytes: no panic, no endless loop, and an error is always one of the codes a
    /// decoder may close with. Whole and cut runs must agree.
    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        points in prop::collection::vec(any::<Index>(), 0..16),
        server in any::<bool>(),
        max in prop_oneof![Just(DecoderConfig::DEFAULT_MAX_MESSAGE_SIZE), 0usize..300],
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let cfg = DecoderConfig { max_message_size: max, ..DecoderConfig::new(role) };
        check_garbage(&cfg, &bytes, &points);
    }

    /// A valid stream with a few bytes changed: mostly valid frames with errors deep inside.
    #[test]
    fn mutated_streams_never_panic(
        s in stream(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        points in prop::collection::vec(any::<Index>(), 0..16),
        server in any::<bool>(),
        max in prop_oneof![Just(DecoderConfig::DEFAULT_MAX_MESSAGE_SIZE), 0usize..300],
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let (mut bytes, _) = encode(&s, role);
        if !bytes.is_empty() {
            for (at, x) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
        }
        let cfg = DecoderConfig { max_message_size: max, ..DecoderConfig::new(role) };
        check_garbage(&cfg, &bytes, &points);
    }

    /// Every strict prefix of a request head is "incomplete"; the whole parses the same as
    /// when it is read in one go, with frames after it left alone.
    #[test]
    fn handshake_request_split_anywhere(
        req in request(),
        points in prop::collection::vec(any::<Index>(), 0..8),
        trailing in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let head = req.bytes();
        let whole = parse_request(&head, DEFAULT_MAX_HEADER_BYTES);
        let (parsed, n) = whole.clone().unwrap().unwrap();
        prop_assert_eq!(n, head.len());
        for cut in 0..head.len() {
            prop_assert_eq!(parse_request(&head[..cut], DEFAULT_MAX_HEADER_BYTES), Ok(None), "cut at {}", cut);
        }
        // Read in random pieces: incomplete until the last one, then the same parse.
        let mut buf = Vec::new();
        let pieces = cut(&head, &points);
        for (i, piece) in pieces.iter().enumerate() {
            buf.extend_from_slice(piece);
            let r = parse_request(&buf, DEFAULT_MAX_HEADER_BYTES);
            if i + 1 < pieces.len() && buf.len() < head.len() {
                prop_assert_eq!(r, Ok(None));
            } else {
                prop_assert_eq!(&r, &whole);
            }
        }
        // Bytes after the head do not change its parse.
        let mut more = head.clone();
        more.extend_from_slice(&trailing);
        let (again, m) = parse_request(&more, DEFAULT_MAX_HEADER_BYTES).unwrap().unwrap();
        prop_assert_eq!(m, head.len());
        prop_assert_eq!(&again, &parsed);

        // What the generator put in is what the views show.
        prop_assert_eq!(parsed.path, req.path.as_str());
        prop_assert_eq!(parsed.query, req.query.as_deref());
        for (name, value) in &req.extra {
            prop_assert_eq!(parsed.header(name), Some(value.trim()));
        }
        let key = parsed.websocket().unwrap().unwrap();
        prop_assert_eq!(key.0, std::str::from_utf8(&req.key).unwrap());
        prop_assert_eq!(key.accept(), accept_key(&req.key));
    }

    /// The client side: every strict prefix of the server's 101 is "incomplete".
    #[test]
    fn handshake_response_split_anywhere(
        random in any::<[u8; 16]>(),
        protocol in prop::option::of("[a-z]{1,8}"),
        trailing in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let key = client_key(random);
        let offered: Vec<&str> = protocol.iter().map(String::as_str).collect();
        let mut req = Vec::new();
        write_client_request(&mut req, "h", "/", &key, &offered, &[]);
        let (parsed, _) = parse_request(&req, DEFAULT_MAX_HEADER_BYTES).unwrap().unwrap();
        let ws_key = parsed.websocket().unwrap().unwrap();
        let mut resp = Vec::new();
        write_accept_response(&mut resp, &ws_key, protocol.as_deref(), None);
        let head = resp.len();
        for cut in 0..head {
            prop_assert_eq!(parse_response(&resp[..cut], &key, &offered, 4096), Ok(None), "cut at {}", cut);
        }
        resp.extend_from_slice(&trailing);
        let (r, n) = parse_response(&resp, &key, &offered, 4096).unwrap().unwrap();
        prop_assert_eq!(n, head);
        prop_assert_eq!(r.protocol, protocol.as_deref());
    }
}

fn check_garbage(cfg: &DecoderConfig, bytes: &[u8], points: &[Index]) {
    let whole = decode_chunks(cfg, &[bytes]);
    let split = decode_chunks(cfg, &cut(bytes, points));
    for run in [&whole, &split] {
        for e in &run.events {
            if let Owned::Error(code) = e {
                assert!(
                    matches!(code, 1002 | 1007 | 1009),
                    "unexpected close code {code}"
                );
            }
        }
    }
    assert_eq!(whole.events, split.events, "whole and cut runs disagree");
}

// ----- handshake requests -----

#[derive(Debug, Clone)]
struct GenRequest {
    path: String,
    query: Option<String>,
    host: String,
    key: [u8; 24],
    extra: Vec<(String, String)>,
    /// Put the extra headers before the WebSocket ones.
    extra_first: bool,
}

impl GenRequest {
    fn bytes(&self) -> Vec<u8> {
        let mut s = format!("GET {}", self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        s.push_str(" HTTP/1.1\r\n");
        let extra: String = self
            .extra
            .iter()
            .map(|(n, v)| format!("{n}:{v}\r\n"))
            .collect();
        if self.extra_first {
            s.push_str(&extra);
        }
        s.push_str(&format!(
            "Host: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
            self.host
        ));
        s.push_str(std::str::from_utf8(&self.key).unwrap());
        s.push_str("\r\n");
        if !self.extra_first {
            s.push_str(&extra);
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

fn request() -> impl Strategy<Value = GenRequest> {
    // Extra header names start with "x-" so they never shadow the WebSocket ones; values are
    // visible ASCII with inner spaces, optionally padded (the lookup trims them).
    let header = ("x-[a-z0-9-]{1,12}", "[ ]?[!-~]([ !-~]{0,30}[!-~])?[ ]?");
    (
        "/[a-zA-Z0-9/._~-]{0,30}",
        prop::option::of("[a-zA-Z0-9=&,%._-]{0,30}"),
        "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        any::<[u8; 16]>(),
        prop::collection::vec(header, 0..8),
        any::<bool>(),
    )
        .prop_map(|(path, query, host, random, extra, extra_first)| {
            // Distinct names, so `header(name)` has one answer.
            let mut seen = std::collections::HashSet::new();
            let extra = extra
                .into_iter()
                .filter(|(n, _)| seen.insert(n.clone()))
                .collect();
            GenRequest {
                path,
                query,
                host,
                key: client_key(random),
                extra,
                extra_first,
            }
        })
}

// ----- regressions -----

/// A unit test of the harness itself: the example of RFC 6455 §5.7 (two fragments of an
/// unmasked text message with a ping between) read by the client role one byte at a time.
#[test]
fn rfc_fragmented_hello_bytewise() {
    let bytes = [
        0x01, 0x03, 0x48, 0x65, 0x6c, // "Hel", not FIN
        0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, // ping "Hello"
        0x80, 0x02, 0x6c, 0x6f, // "lo", FIN
    ];
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    let run = decode_chunks(&DecoderConfig::new(Role::Client), &chunks);
    assert_eq!(
        run.events,
        vec![Owned::Ping(b"Hello".to_vec()), Owned::Text("Hello".into())]
    );
    assert!(run.idle);
    assert_eq!(run.left, 0);
}

/// `parse_response` refuses a head past `max_header_bytes` however it is read (a complete
/// head once slipped past the limit when it arrived in one read).
#[test]
fn response_head_past_the_limit_is_refused_however_it_is_read() {
    let key = client_key([0; 16]);
    let mut req = Vec::new();
    write_client_request(&mut req, "h", "/", &key, &[], &[]);
    let (parsed, _) = parse_request(&req, DEFAULT_MAX_HEADER_BYTES)
        .unwrap()
        .unwrap();
    let mut resp = Vec::new();
    write_accept_response(&mut resp, &parsed.websocket().unwrap().unwrap(), None, None);
    let max = resp.len() / 2;
    // Read in two pieces: the first already reaches the limit.
    assert!(parse_response(&resp[..max], &key, &[], max).is_err());
    // Read whole: must be refused the same way.
    assert!(
        parse_response(&resp, &key, &[], max).is_err(),
        "a {}-byte head passed a {max}-byte limit",
        resp.len()
    );
}
