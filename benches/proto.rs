//! Criterion micro-benchmarks of the sans-IO protocol hot paths: frame decode (parse + unmask +
//! UTF-8, server role) against tungstenite, unmasking, UTF-8 validation, the opening handshake
//! and frame encoding.
//!
//! Run: `cargo bench --bench proto -- --warm-up-time 1 --measurement-time 3`.
//! Throughput is reported with `Throughput::Bytes`, i.e. criterion prints binary units (GiB/s);
//! multiply by 1.074 for GB/s. `cargo bench --bench proto_ratio` prints decimal GB/s and the
//! fanout / tungstenite ratio.
//!
//! What the decode benchmarks time:
//! - `server_decode/*`: fanout's `Decoder::next` loop over 1 MiB of whole masked frames, in
//!   place. Decoding unmasks in place, so each iteration needs fresh masked bytes: the pristine
//!   input is copied into one reused work buffer *outside* the timed region (`iter_custom`
//!   starts the clock after the copy; two clock reads cost ~50 ns against the ~0.1–1 ms of one
//!   iteration). The work buffer is hot in cache, as a read buffer is right after `read(2)`.
//! - `memcpy/1MiB`: that copy alone, for reference (a server's `read(2)` costs at least this).
//! - `tungstenite_decode/*`: tungstenite 0.27 in the server role reading every message from a
//!   rewound in-memory `Cursor` holding the same frames. tungstenite copies from its stream into
//!   its own buffer and unmasks there, so the input stays pristine and nothing is rebuilt per
//!   iteration; its copy out of the cursor is included (it is how its API takes bytes).
//!   For a copy-for-copy comparison add `memcpy/1MiB` to fanout's time (`proto_ratio` reports
//!   both ratios).

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout::proto::frame::{encode_frame, MAX_HEADER_LEN};
use fanout::proto::handshake::{parse_request, write_accept_response, DEFAULT_MAX_HEADER_BYTES};
use fanout::proto::mask::apply_mask;
use fanout::proto::utf8::Utf8Validator;
use fanout::proto::{Decoder, OpCode};

use common::{
    decode_inputs, fanout_decode, server_config, text_payload, Tungstenite, BROWSER_REQUEST,
    TUNGSTENITE_READ_BUF,
};

fn decode(c: &mut Criterion) {
    let inputs = decode_inputs();
    let cfg = server_config();

    let mut group = c.benchmark_group("server_decode");
    for input in &inputs {
        common::check_fanout(input);
        group.throughput(Throughput::Bytes(input.bytes.len() as u64));
        let mut work = input.bytes.clone();
        let mut dec = Decoder::new();
        group.bench_function(input.name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    // Untimed: fresh masked bytes in the (reused, cache-hot) work buffer.
                    work.copy_from_slice(&input.bytes);
                    let start = Instant::now();
                    black_box(fanout_decode(&mut dec, &cfg, black_box(&mut work)));
                    timed += start.elapsed();
                }
                timed
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("memcpy");
    let src = inputs[0].bytes.clone();
    let mut dst = vec![0u8; src.len()];
    group.throughput(Throughput::Bytes(src.len() as u64));
    group.bench_function("1MiB", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)));
        black_box(&dst);
    });
    group.finish();

    let mut group = c.benchmark_group("tungstenite_decode");
    for input in &inputs {
        let mut ws = Tungstenite::new(input, TUNGSTENITE_READ_BUF);
        ws.check(input);
        group.throughput(Throughput::Bytes(input.bytes.len() as u64));
        group.bench_function(input.name, |b| b.iter(|| black_box(ws.decode())));
    }
    group.finish();
}

/// The naive loop `apply_mask` replaces (LLVM may still vectorize it a little).
#[inline(never)]
fn naive_mask(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

fn unmask(c: &mut Criterion) {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut group = c.benchmark_group("unmask");
    for (name, len) in [("125B", 125usize), ("64KiB", 64 << 10)] {
        // XOR is its own inverse: masking the same buffer again and again is fine.
        let mut buf = text_payload(len, false, 1);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("apply_mask", name), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(key), 0))
        });
        group.bench_function(BenchmarkId::new("naive", name), |b| {
            b.iter(|| naive_mask(black_box(&mut buf), black_box(key)))
        });
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    for (name, len) in [("125B", 125usize), ("64KiB", 64 << 10)] {
        for (kind, multibyte) in [("ascii", false), ("mixed", true)] {
            let text = text_payload(len, multibyte, 3);
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(BenchmarkId::new(kind, name), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    let fed = v.feed(black_box(&text));
                    (fed, v.finish())
                })
            });
        }
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(BROWSER_REQUEST.len() as u64));
    let mut out = Vec::with_capacity(512);
    group.bench_function("parse_and_accept", |b| {
        b.iter(|| {
            out.clear();
            let (req, n) = parse_request(black_box(BROWSER_REQUEST), DEFAULT_MAX_HEADER_BYTES)
                .expect("valid request")
                .expect("complete request");
            let key = req.websocket().expect("valid upgrade").expect("an upgrade");
            write_accept_response(&mut out, &key, None, None);
            black_box((n, out.len()))
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");

    // Server to client: unmasked, the common broadcast frame.
    let small = text_payload(125, false, 5);
    let mut out = Vec::with_capacity(256);
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("125B_server", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(&mut out, true, OpCode::Text, black_box(&small), None);
            black_box(out.len())
        })
    });

    // Client to server: masked (the load generator's path).
    let big = common::binary_payload(64 << 10, &mut common::Rng::new(9));
    let mut out = Vec::with_capacity(big.len() + MAX_HEADER_LEN);
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("64KiB_client", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(
                &mut out,
                true,
                OpCode::Binary,
                black_box(&big),
                Some([1, 2, 3, 4]),
            );
            black_box(out.len())
        })
    });

    group.finish();
}

criterion_group!(benches, decode, unmask, utf8, handshake, encode);
criterion_main!(benches);
