//! The sans-IO hot paths do not touch the heap: decoding whole frames in place (server role)
//! and answering the opening handshake allocate nothing; a message cut by a read boundary
//! allocates only its own buffer and frees it once delivered.
//!
//! A counting global allocator wraps `System`. Counting is per thread (a `thread_local` flag
//! and counters, `const`-initialised so reading them never allocates), so the test harness's
//! other threads and tests running in parallel do not disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use fanout::proto::frame::{encode_frame, header_len};
use fanout::proto::handshake::{parse_request, write_accept_response, DEFAULT_MAX_HEADER_BYTES};
use fanout::proto::{Decoded, Decoder, DecoderConfig, Event, OpCode, Role};

struct CountingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static REALLOCS: Cell<usize> = const { Cell::new(0) };
    static FREES: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn tracking() -> bool {
    TRACKING.try_with(Cell::get).unwrap_or(false)
}

fn bump(counter: &'static std::thread::LocalKey<Cell<usize>>, by: usize) {
    let _ = counter.try_with(|c| c.set(c.get() + by));
}

fn live(by: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + by));
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are thread-local `Cell`s
// with `const` initialisers and no destructor, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if tracking() {
            bump(&ALLOCS, 1);
            bump(&BYTES, layout.size());
            live(layout.size() as isize);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if tracking() {
            bump(&ALLOCS, 1);
            bump(&BYTES, layout.size());
            live(layout.size() as isize);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if tracking() {
            bump(&REALLOCS, 1);
            bump(&BYTES, new_size.saturating_sub(layout.size()));
            live(new_size as isize - layout.size() as isize);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if tracking() {
            bump(&FREES, 1);
            live(-(layout.size() as isize));
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Heap activity of this thread during one `measure` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heap {
    allocs: usize,
    reallocs: usize,
    frees: usize,
    /// Bytes newly requested (allocations plus growth by realloc).
    bytes: usize,
    /// Bytes still held at the end (allocated minus freed).
    live: isize,
}

impl Heap {
    const NONE: Heap = Heap {
        allocs: 0,
        reallocs: 0,
        frees: 0,
        bytes: 0,
        live: 0,
    };
}

/// Runs `f` with this thread's allocations counted.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Heap) {
    ALLOCS.with(|c| c.set(0));
    REALLOCS.with(|c| c.set(0));
    FREES.with(|c| c.set(0));
    BYTES.with(|c| c.set(0));
    LIVE.with(|c| c.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    let heap = Heap {
        allocs: ALLOCS.with(Cell::get),
        reallocs: REALLOCS.with(Cell::get),
        frees: FREES.with(Cell::get),
        bytes: BYTES.with(Cell::get),
        live: LIVE.with(Cell::get),
    };
    (r, heap)
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the other tests against passing because nothing is counted.
    let (v, heap) = measure(|| {
        let mut v = Vec::<u8>::with_capacity(100);
        v.extend_from_slice(&[1; 200]);
        black_box(Box::new(7u64));
        v
    });
    assert_eq!(
        (heap.allocs, heap.reallocs, heap.frees),
        (2, 1, 1),
        "{heap:?}"
    );
    assert_eq!(heap.live, v.capacity() as isize, "{heap:?}");
}

const KEYS: [[u8; 4]; 3] = [
    [0x37, 0xfa, 0x21, 0x3d],
    [1, 2, 3, 4],
    [0xde, 0xad, 0xbe, 0xef],
];

fn server() -> DecoderConfig {
    DecoderConfig::new(Role::Server)
}

/// Exactly `len` bytes of text with some multi-byte characters.
fn text(len: usize, seed: usize) -> Vec<u8> {
    let alphabet = [
        "a", "b", "{", "\"", ":", "é", "ü", "€", "日", "🚀", " ", "7",
    ];
    let mut s = String::with_capacity(len);
    let mut i = seed;
    while s.len() < len {
        let c = alphabet[i % alphabet.len()];
        if s.len() + c.len() <= len {
            s.push_str(c);
        } else {
            s.push(' ');
        }
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.into_bytes()
}

fn binary(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + seed * 17) as u8).collect()
}

/// Appends one masked (client) frame.
fn push_frame(out: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8], i: usize) {
    encode_frame(out, fin, op, payload, Some(KEYS[i % KEYS.len()]));
}

/// What the server does with one read buffer: `next()` until `Incomplete`. Events are counted
/// and summed (length and a checksum), nothing is copied. Returns (events, consumed).
fn drain(dec: &mut Decoder, cfg: &DecoderConfig, buf: &mut [u8], sum: &mut u64) -> (usize, usize) {
    let mut pos = 0;
    let mut events = 0;
    loop {
        match dec.next(cfg, &mut buf[pos..]) {
            Ok(Decoded::Event(n, event)) => {
                let payload: &[u8] = match event {
                    Event::Text(t) => t.as_bytes(),
                    Event::Binary(b) | Event::Ping(b) | Event::Pong(b) => b,
                    Event::Compressed { payload, .. } => payload,
                    Event::Close(c) => {
                        // The checksum covers the whole payload: code, then reason.
                        let [hi, lo] = c.code.to_be_bytes();
                        *sum = sum.wrapping_add(2 + hi as u64 + lo as u64);
                        c.reason.as_bytes()
                    }
                };
                *sum = sum.wrapping_add(payload.len() as u64);
                *sum = sum.wrapping_add(payload.iter().map(|&b| b as u64).sum::<u64>());
                black_box(payload);
                events += 1;
                pos += n;
            }
            Ok(Decoded::Progress(n)) => pos += n,
            Ok(Decoded::Incomplete) => break,
            Err(e) => panic!("unexpected protocol error: {e}"),
        }
    }
    (events, pos)
}

fn checksum(payloads: &[Vec<u8>]) -> u64 {
    payloads.iter().fold(0u64, |s, p| {
        s.wrapping_add(p.len() as u64)
            .wrapping_add(p.iter().map(|&b| b as u64).sum::<u64>())
    })
}

/// Builds a buffer of whole frames and the payloads they carry.
fn frames(spec: &[(OpCode, Vec<u8>)]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut buf = Vec::new();
    let mut payloads = Vec::new();
    for (i, (op, p)) in spec.iter().enumerate() {
        push_frame(&mut buf, true, *op, p, i);
        payloads.push(p.clone());
    }
    (buf, payloads)
}

fn assert_decodes_without_allocating(what: &str, spec: &[(OpCode, Vec<u8>)]) {
    let (mut buf, payloads) = frames(spec);
    let cfg = server();
    let mut dec = Decoder::new();
    let mut sum = 0;
    let ((events, consumed), heap) = measure(|| drain(&mut dec, &cfg, &mut buf, &mut sum));
    assert_eq!(events, spec.len(), "{what}: every frame is an event");
    assert_eq!(consumed, buf.len(), "{what}: every byte consumed");
    assert_eq!(sum, checksum(&payloads), "{what}: payloads as sent");
    assert!(dec.is_idle(), "{what}");
    assert_eq!(
        heap,
        Heap::NONE,
        "{what}: decoding whole frames must not allocate"
    );
}

#[test]
fn whole_frames_decode_without_allocating() {
    let many = |n: usize, op: OpCode, make: fn(usize, usize) -> Vec<u8>, len: usize| {
        (0..n).map(|i| (op, make(len, i))).collect::<Vec<_>>()
    };
    assert_decodes_without_allocating("125 B text", &many(2000, OpCode::Text, text, 125));
    assert_decodes_without_allocating("64 KiB text", &many(16, OpCode::Text, text, 64 << 10));
    assert_decodes_without_allocating("125 B binary", &many(2000, OpCode::Binary, binary, 125));
    assert_decodes_without_allocating("64 KiB binary", &many(16, OpCode::Binary, binary, 64 << 10));
    // All three length encodings, empty messages, and the 16-bit / 64-bit boundaries.
    let sizes = [0usize, 1, 125, 126, 127, 4096, 65535, 65536, 70000];
    let spec: Vec<_> = sizes
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| [(OpCode::Text, text(n, i)), (OpCode::Binary, binary(n, i))])
        .collect();
    assert_decodes_without_allocating("every length form", &spec);
    // Control frames: pings (empty and full), pongs, and a close at the end.
    let mut spec = many(500, OpCode::Ping, binary, 125);
    spec.extend(many(500, OpCode::Ping, binary, 0));
    spec.extend(many(100, OpCode::Pong, binary, 16));
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice("bye — ciao".as_bytes());
    spec.push((OpCode::Close, close));
    assert_decodes_without_allocating("control frames", &spec);
    // Data and control frames interleaved.
    let spec: Vec<_> = (0..1000)
        .map(|i| match i % 4 {
            0 => (OpCode::Text, text(125, i)),
            1 => (OpCode::Ping, binary(4, i)),
            2 => (OpCode::Binary, binary(1000, i)),
            _ => (OpCode::Pong, Vec::new()),
        })
        .collect();
    assert_decodes_without_allocating("interleaved", &spec);
}

#[test]
fn cut_header_or_control_frame_allocates_nothing() {
    // The decoder keeps nothing for a unit it cannot start: the caller keeps the bytes.
    let cfg = server();
    let mut ping = Vec::new();
    push_frame(&mut ping, true, OpCode::Ping, b"are you there?", 0);
    let mut big = Vec::new();
    push_frame(&mut big, true, OpCode::Binary, &binary(70000, 1), 1);
    for (what, bytes, cut) in [
        ("ping cut in its payload", &ping, ping.len() - 3),
        ("ping cut in its header", &ping, 3),
        ("64-bit length header cut", &big, 9),
    ] {
        let mut dec = Decoder::new();
        let mut part = bytes[..cut].to_vec();
        let (r, heap) = measure(|| matches!(dec.next(&cfg, &mut part), Ok(Decoded::Incomplete)));
        assert!(r, "{what}: Incomplete");
        assert_eq!(heap, Heap::NONE, "{what}");
        assert!(dec.is_idle(), "{what}");
    }
}

#[test]
fn handshake_allocates_nothing() {
    let request: &[u8] = b"GET /ws?topics=prices,news&token=4f1c2b HTTP/1.1\r\n\
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
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";
    let mut out = Vec::with_capacity(512);
    let (accepted, heap) = measure(|| {
        let (req, n) = parse_request(request, DEFAULT_MAX_HEADER_BYTES)
            .expect("valid")
            .expect("complete");
        assert_eq!(n, request.len());
        // What an app looks at before accepting.
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query_param("token"), Some("4f1c2b"));
        assert_eq!(req.origin, Some("https://app.example.com"));
        assert!(req
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("Mozilla/5.0")));
        let protocol = req.offered_protocols().find(|p| *p == "chat");
        let key = req.websocket().expect("valid upgrade").expect("an upgrade");
        let accept = key.accept();
        write_accept_response(&mut out, &key, protocol, None);
        accept
    });
    assert_eq!(heap, Heap::NONE, "handshake must not allocate");
    assert_eq!(&accepted, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let response = std::str::from_utf8(&out).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(response.contains("Sec-WebSocket-Protocol: chat\r\n"));
}

/// A message cut by a read boundary: whole frames before and after it stay allocation-free; the
/// cut message costs its own state (the boxed partial message and its byte buffer) and nothing
/// more, and all of it is freed once the message was delivered and `next()` is called again.
fn split_message_case(what: &str, op: OpCode, payload: Vec<u8>, cut_in_payload: usize) {
    let cfg = server();
    let small: Vec<_> = (0..10).map(|i| (OpCode::Text, text(125, i))).collect();
    let (before, mut expect) = frames(&small);
    let (after, after_payloads) = frames(&small);
    let mut cut_frame = Vec::new();
    push_frame(&mut cut_frame, true, op, &payload, 7);
    let cut = header_len(payload.len() as u64, true) + cut_in_payload;
    assert!(cut < cut_frame.len());

    let mut first = before.clone();
    first.extend_from_slice(&cut_frame[..cut]);
    let mut second = cut_frame[cut..].to_vec();
    second.extend_from_slice(&after);
    expect.push(payload.clone());
    expect.extend(after_payloads);

    let mut dec = Decoder::new();
    let mut sum = 0;
    let ((events, consumed), heap1) = measure(|| drain(&mut dec, &cfg, &mut first, &mut sum));
    assert_eq!(events, 10, "{what}: the whole frames before the cut");
    assert_eq!(
        consumed,
        first.len(),
        "{what}: the partial payload is taken in"
    );
    assert!(!dec.is_idle(), "{what}: holds the partial message");
    assert!(
        dec.buffered() >= payload.len().min(64 << 10),
        "{what}: buffer sized for the message"
    );
    // Only the partial message's own state: a box and one buffer, sized by the message.
    assert!(heap1.allocs <= 2, "{what}: {heap1:?}");
    assert_eq!(heap1.reallocs, 0, "{what}: {heap1:?}");
    assert_eq!(heap1.frees, 0, "{what}: {heap1:?}");
    assert!(heap1.bytes <= payload.len() + 256, "{what}: {heap1:?}");
    assert!(heap1.live > 0, "{what}: {heap1:?}");

    let ((events, consumed), heap2) = measure(|| drain(&mut dec, &cfg, &mut second, &mut sum));
    assert_eq!(
        events, 11,
        "{what}: the cut message and the frames after it"
    );
    assert_eq!(consumed, second.len(), "{what}");
    assert_eq!(sum, checksum(&expect), "{what}: payloads as sent");
    assert!(dec.is_idle(), "{what}: idle once drained");
    assert_eq!(dec.buffered(), 0, "{what}");
    assert_eq!(heap2.allocs + heap2.reallocs, 0, "{what}: {heap2:?}");
    // Everything the partial message took is given back.
    assert_eq!(heap2.frees, heap1.allocs, "{what}: {heap2:?}");
    assert_eq!(
        heap1.live + heap2.live,
        0,
        "{what}: {heap1:?} then {heap2:?}"
    );
}

#[test]
fn message_split_across_reads_allocates_only_for_itself() {
    split_message_case("125 B text", OpCode::Text, text(125, 3), 60);
    // Cut inside a multi-byte character too.
    let t = text(125, 5);
    let mid = (1..124)
        .find(|&i| (t[i] & 0xc0) == 0x80)
        .expect("a continuation byte");
    split_message_case("125 B text, cut in a character", OpCode::Text, t, mid);
    split_message_case("64 KiB text", OpCode::Text, text(64 << 10, 9), 40_000);
    split_message_case("64 KiB binary", OpCode::Binary, binary(64 << 10, 2), 1);
    split_message_case("125 B binary", OpCode::Binary, binary(125, 4), 124);
}
