//! Prints the decode throughput of fanout and tungstenite over the same inputs and their ratio,
//! and writes it as JSON to `target/bench-proto.json`. No criterion: a plain timed loop, so the
//! figures are easy to reproduce and to compare across commits.
//!
//! Run: `cargo bench --bench proto_ratio`. Environment knobs: `FANOUT_BENCH_RUNS` (default 15),
//! `FANOUT_BENCH_MIB` (MiB decoded per run and decoder, default 64), `FANOUT_BENCH_TUNG_BUF`
//! (tungstenite's read buffer in bytes, default 128 KiB, its own default and its fastest
//! setting here).
//!
//! Per input (1 MiB of whole masked client frames) and per run, interleaved so that noise hits
//! every decoder alike:
//! - `fanout`: the pristine frames are copied into a reused work buffer (not timed), then the
//!   `Decoder::next` loop (parse + unmask in place + UTF-8) is timed. Summed over the run.
//! - `fanout+copy`: the same with the copy timed too, i.e. what a server pays after `read(2)`
//!   filled a buffer, plus one more pass over the bytes. This is the copy-for-copy match for
//!   tungstenite, which copies out of its stream into its own buffer.
//! - `tungstenite`: tungstenite 0.27, server role, reads every message from a rewound
//!   `Cursor<Vec<u8>>` (no rebuild, warm buffers; see `common::Tungstenite`).
//! - `memcpy`: the copy alone.
//!
//! Reported: the median of the runs in GB/s (10^9 bytes per second, frame bytes including
//! headers), and min / max to show the noise.

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fanout::proto::Decoder;

use common::{decode_inputs, fanout_decode, server_config, Input, Tungstenite};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median, min and max of one decoder's per-run throughputs.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut samples: Vec<f64>) -> Stat {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    Stat {
        median,
        min: samples[0],
        max: samples[n - 1],
    }
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

struct Row {
    name: &'static str,
    frames: usize,
    input_bytes: usize,
    fanout: Stat,
    fanout_copy: Stat,
    tungstenite: Stat,
    memcpy: Stat,
    target: f64,
}

fn measure(input: &Input, runs: usize, iters: usize, tung_buf: usize) -> Row {
    let cfg = server_config();
    let mut dec = Decoder::new();
    let mut work = input.bytes.clone();
    let mut tung = Tungstenite::new(input, tung_buf);
    common::check_fanout(input);
    tung.check(input);
    let bytes = input.bytes.len() * iters;

    let mut fanout = Vec::with_capacity(runs);
    let mut fanout_copy = Vec::with_capacity(runs);
    let mut tungstenite = Vec::with_capacity(runs);
    let mut memcpy = Vec::with_capacity(runs);
    // Run 0 is a warm-up and is dropped.
    for run in 0..=runs {
        let mut t = Duration::ZERO;
        for _ in 0..iters {
            work.copy_from_slice(&input.bytes);
            let start = Instant::now();
            black_box(fanout_decode(&mut dec, &cfg, black_box(&mut work)));
            t += start.elapsed();
        }
        let f = gbps(bytes, t);

        let start = Instant::now();
        for _ in 0..iters {
            black_box(tung.decode());
        }
        let w = gbps(bytes, start.elapsed());

        let start = Instant::now();
        for _ in 0..iters {
            work.copy_from_slice(black_box(&input.bytes));
            black_box(fanout_decode(&mut dec, &cfg, black_box(&mut work)));
        }
        let fc = gbps(bytes, start.elapsed());

        let start = Instant::now();
        for _ in 0..iters {
            work.copy_from_slice(black_box(&input.bytes));
            black_box(&mut work);
        }
        let m = gbps(bytes, start.elapsed());

        if run > 0 {
            fanout.push(f);
            tungstenite.push(w);
            fanout_copy.push(fc);
            memcpy.push(m);
        }
    }
    Row {
        name: input.name,
        frames: input.frames,
        input_bytes: input.bytes.len(),
        fanout: stat(fanout),
        fanout_copy: stat(fanout_copy),
        tungstenite: stat(tungstenite),
        memcpy: stat(memcpy),
        target: if input.payload_len <= 125 { 2.0 } else { 5.0 },
    }
}

fn json_stat(out: &mut String, name: &str, s: Stat) {
    let _ = write!(
        out,
        "\"{name}\": {{\"median\": {:.3}, \"min\": {:.3}, \"max\": {:.3}}}",
        s.median, s.min, s.max
    );
}

/// The 1-minute load average (Linux), to tell a quiet run from a noisy one.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn out_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-proto.json")
}

fn main() {
    let runs = env_usize("FANOUT_BENCH_RUNS", 15).max(1);
    let mib = env_usize("FANOUT_BENCH_MIB", 64).max(1);
    let tung_buf = env_usize("FANOUT_BENCH_TUNG_BUF", common::TUNGSTENITE_READ_BUF);
    // `cargo bench` passes `--bench`; any other argument filters inputs by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();

    let load_before = loadavg();
    println!(
        "proto_ratio: server-role decode (parse + unmask + UTF-8), median of {runs} runs of {mib} MiB each, GB/s = 1e9 B/s"
    );
    println!(
        "{:<16} {:>6} {:>9} {:>12} {:>12} {:>8} {:>10} {:>8} {:>9}",
        "input",
        "frames",
        "fanout",
        "fanout+copy",
        "tungstenite",
        "ratio",
        "ratio+copy",
        "memcpy",
        "target"
    );
    let mut rows = Vec::new();
    for input in decode_inputs() {
        if !filters.is_empty() && !filters.iter().any(|f| input.name.contains(f.as_str())) {
            continue;
        }
        let iters = ((mib << 20) / input.bytes.len()).max(1);
        let row = measure(&input, runs, iters, tung_buf);
        let met = row.fanout.median >= row.target && row.fanout.median > row.tungstenite.median;
        println!(
            "{:<16} {:>6} {:>9.2} {:>12.2} {:>12.2} {:>7.2}x {:>9.2}x {:>8.2} {:>4} {:>4}",
            row.name,
            row.frames,
            row.fanout.median,
            row.fanout_copy.median,
            row.tungstenite.median,
            row.fanout.median / row.tungstenite.median,
            row.fanout_copy.median / row.tungstenite.median,
            row.memcpy.median,
            format!(">={}", row.target),
            if met { "met" } else { "MISS" },
        );
        println!(
            "{:<16} {:>6} {:>9} {:>12} {:>12}   (min..max: fanout {:.2}..{:.2}, tungstenite {:.2}..{:.2})",
            "", "", "", "", "", row.fanout.min, row.fanout.max, row.tungstenite.min, row.tungstenite.max
        );
        rows.push(row);
    }

    let load_after = loadavg();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("load average (1 min): {load_before:.2} before, {load_after:.2} after, {cpus} CPUs");
    if load_before.max(load_after) > 0.5 * cpus as f64 {
        println!("note: the machine was busy; expect noisy figures (see min..max)");
    }

    let mut json = String::new();
    let _ = write!(
        json,
        "{{\n  \"bench\": \"proto_ratio\",\n  \"unit\": \"GB/s\",\n  \"runs\": {runs},\n  \"mib_per_run\": {mib},\n  \"tungstenite_read_buffer\": {tung_buf},\n  \"cpus\": {cpus},\n  \"loadavg_before\": {load_before:.2},\n  \"loadavg_after\": {load_after:.2},\n  \"results\": ["
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            json,
            "{}\n    {{\"name\": \"{}\", \"frames\": {}, \"input_bytes\": {}, ",
            if i == 0 { "" } else { "," },
            r.name,
            r.frames,
            r.input_bytes
        );
        json_stat(&mut json, "fanout", r.fanout);
        json.push_str(", ");
        json_stat(&mut json, "fanout_incl_copy", r.fanout_copy);
        json.push_str(", ");
        json_stat(&mut json, "tungstenite", r.tungstenite);
        json.push_str(", ");
        json_stat(&mut json, "memcpy", r.memcpy);
        let _ = write!(
            json,
            ", \"ratio\": {:.3}, \"ratio_incl_copy\": {:.3}, \"target_gbps\": {}, \"target_met\": {}}}",
            r.fanout.median / r.tungstenite.median,
            r.fanout_copy.median / r.tungstenite.median,
            r.target,
            r.fanout.median >= r.target && r.fanout.median > r.tungstenite.median
        );
    }
    json.push_str("\n  ]\n}\n");
    let path = out_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, json) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
