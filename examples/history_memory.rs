//! What per-topic history costs in memory: fills the history store the push server uses
//! (`pubsub::history::History`) with TOPICS x PER_TOPIC messages of SIZE bytes, framed as the
//! server frames them (an `--envelope` JSON with offset and epoch), and reports the process's
//! RSS growth per entry beside the bytes the store accounts for. Prints the figures and writes
//! them as JSON.
//!
//! cargo run --release --example history_memory -- [TOPICS] [PER_TOPIC] [SIZE] [JSON_PATH]
//! (defaults: 10000 100 100, no JSON)

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use fanout::common::SharedFrame;
use fanout::proto::OpCode;
use fanout::pubsub::history::History;
use fanout::pubsub::{HistoryConfig, HistoryPolicy};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (topics, per_topic, size) = (arg(0, 10_000), arg(1, 100), arg(2, 100));
    let json_path = args.get(3).cloned();
    let h = History::new(HistoryConfig {
        default: Some(HistoryPolicy {
            size: per_topic,
            ttl: None,
        }),
        max_bytes: usize::MAX,
        ..HistoryConfig::default()
    });
    let names: Vec<String> = (0..topics).map(|t| format!("bench.topic.{t}")).collect();
    let data = "x".repeat(size);
    let before = rss_bytes();
    let start = Instant::now();
    // Round-robin over topics, as a real mix of publishes would arrive.
    for _ in 0..per_topic {
        for name in &names {
            h.append(name, Instant::now(), |p| {
                let body = format!(
                    "{{\"topic\":\"{name}\",\"seq\":{},\"offset\":{},\"epoch\":\"{}\",\"data\":\"{data}\"}}",
                    p.offset, p.offset, p.epoch
                );
                SharedFrame::new(OpCode::Text, body.as_bytes())
            });
        }
    }
    let took = start.elapsed();
    let after = rss_bytes();
    let entries = h.stats.entries.load(Relaxed);
    let accounted = h.stats.bytes.load(Relaxed);
    let rss_per_entry = (after.saturating_sub(before)) as f64 / entries.max(1) as f64;
    let frame_len = {
        let body = format!(
            "{{\"topic\":\"{}\",\"seq\":1,\"offset\":1,\"epoch\":\"0123456789ab\",\"data\":\"{data}\"}}",
            names[0]
        );
        SharedFrame::new(OpCode::Text, body.as_bytes())
            .bytes()
            .len()
    };
    let out = serde_json::json!({
        "topics": topics,
        "messages_per_topic": per_topic,
        "payload_bytes": size,
        "frame_bytes": frame_len,
        "entries": entries,
        "rss_bytes_before": before,
        "rss_bytes_after": after,
        "rss_bytes_per_entry": rss_per_entry,
        "accounted_bytes_per_entry": accounted as f64 / entries.max(1) as f64,
        "appends_per_second": entries as f64 / took.as_secs_f64(),
    });
    println!(
        "{entries} entries ({topics} topics x {per_topic}, {size}-byte payloads, {frame_len}-byte frames): \
         RSS +{:.1} MB, {rss_per_entry:.0} B per entry (counted by the store: {:.0} B); {:.0} appends/s",
        (after - before) as f64 / 1e6,
        accounted as f64 / entries.max(1) as f64,
        entries as f64 / took.as_secs_f64()
    );
    if let Some(p) = json_path {
        std::fs::write(&p, serde_json::to_string_pretty(&out).unwrap_or_default())
            .unwrap_or_else(|e| eprintln!("{p}: {e}"));
        println!("wrote {p}");
    }
}
