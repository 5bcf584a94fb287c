//! Compresses and inflates a JSON payload the way permessage-deflate does (raw DEFLATE, sync
//! flush, context reset per message) with whichever flate2 backend this build has, and prints
//! one JSON line: backend, level, message size, ratio, and MB/s each way (medians of rounds).
//!
//! usage: fanout-deflate-codec [PAYLOAD_FILE|-] [MESSAGE_SIZE]   (`--dump`: print the sample)

use std::time::Instant;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

const BACKEND: &str = if cfg!(feature = "zlib-rs") {
    "zlib-rs"
} else {
    "miniz_oxide"
};

fn sample_json() -> Vec<u8> {
    // A feed of records, like a push server's messages.
    let mut v = Vec::new();
    v.push(b'[');
    for i in 0..2000u32 {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(
            format!(
                r#"{{"id":{i},"user":"user-{u}","event":"{e}","price":{p}.{c:02},"tags":["{t1}","{t2}"],"ts":{ts}}}"#,
                u = i * 7919 % 1000,
                e = ["click", "view", "buy", "share"][(i % 4) as usize],
                p = i * 31 % 500,
                c = i % 100,
                t1 = ["red", "green", "blue"][(i % 3) as usize],
                t2 = ["new", "sale", "hot", "top", "eco"][(i % 5) as usize],
                ts = 1_700_000_000_000u64 + i as u64 * 1337,
            )
            .as_bytes(),
        );
    }
    v.push(b']');
    v
}

fn compress(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(input.len() + 64);
    let base = c.total_in();
    loop {
        let done = (c.total_in() - base) as usize;
        c.compress_vec(&input[done..], out, FlushCompress::Sync)
            .unwrap();
        if (c.total_in() - base) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    c.reset();
}

fn inflate(d: &mut Decompress, input: &[u8], out: &mut Vec<u8>, size: usize) {
    out.clear();
    out.reserve(size + 64);
    d.decompress_vec(input, out, FlushDecompress::Sync).unwrap();
    d.decompress_vec(&[0, 0, 0xff, 0xff], out, FlushDecompress::Sync)
        .unwrap();
    d.reset(false);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--dump") {
        // The sample document, for `fanout-load echo --payload-file`.
        use std::io::Write;
        std::io::stdout().write_all(&sample_json()).expect("stdout");
        return;
    }
    let doc = match args.next() {
        Some(p) if p != "-" => std::fs::read(&p).expect("payload file"),
        _ => sample_json(),
    };
    let size: usize = args
        .next()
        .map(|s| s.parse().expect("message size"))
        .unwrap_or(4096);
    // Messages: consecutive slices of the document (cycled).
    let msgs: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            let start = i * 977 % doc.len();
            doc.iter().cycle().skip(start).take(size).copied().collect()
        })
        .collect();
    let total: usize = msgs.len() * size;
    for level in [1u32, 2, 3, 6, 9] {
        let mut c = Compress::new(Compression::new(level), false);
        let mut d = Decompress::new(false);
        let mut z = Vec::new();
        let mut out = Vec::new();
        let mut wire = 0usize;
        let (mut cs, mut ds) = (Vec::new(), Vec::new());
        for _round in 0..7 {
            wire = 0;
            let t = Instant::now();
            let mut zs = Vec::with_capacity(msgs.len());
            for m in &msgs {
                compress(&mut c, m, &mut z);
                wire += z.len();
                zs.push(z.clone());
            }
            cs.push(total as f64 / t.elapsed().as_secs_f64() / 1e6);
            let t = Instant::now();
            for (m, z) in msgs.iter().zip(&zs) {
                inflate(&mut d, z, &mut out, size);
                assert_eq!(&out, m);
            }
            ds.push(total as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
        println!(
            "{}",
            serde_json::json!({
                "backend": BACKEND,
                "level": level,
                "message_bytes": size,
                "ratio": total as f64 / wire as f64,
                "compress_mb_per_s": median(cs),
                "inflate_mb_per_s": median(ds),
            })
        );
    }
}
