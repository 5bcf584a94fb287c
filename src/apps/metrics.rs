//! `GET /metrics`: the server's counters in the Prometheus text format. Owns the rendering only.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::server::stats::{rss_bytes, total, Counter, ShardStats};

/// Renders every shard counter (summed), open connections, per-shard loop time, RSS, and the
/// app's own lines (already formatted) after them.
pub fn render(shards: &[Arc<ShardStats>], app_lines: &str) -> String {
    let mut out = String::with_capacity(4096);
    for &c in Counter::ALL {
        let _ = writeln!(out, "# TYPE fanout_{} counter", c.name());
        let _ = writeln!(out, "fanout_{} {}", c.name(), total(shards, c));
    }
    let _ = writeln!(out, "# TYPE fanout_open_connections gauge");
    let open: u64 = shards.iter().map(|s| s.open.load(Relaxed)).sum();
    let _ = writeln!(out, "fanout_open_connections {open}");
    let _ = writeln!(
        out,
        "# HELP fanout_loop_busy_microseconds time the shard's last loop turn spent working"
    );
    let _ = writeln!(out, "# TYPE fanout_loop_busy_microseconds gauge");
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "fanout_loop_busy_microseconds{{shard=\"{i}\"}} {}",
            s.loop_lag_us.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "fanout_shard_open_connections{{shard=\"{i}\"}} {}",
            s.open.load(Relaxed)
        );
    }
    if let Some(rss) = rss_bytes() {
        let _ = writeln!(out, "# TYPE fanout_resident_memory_bytes gauge");
        let _ = writeln!(out, "fanout_resident_memory_bytes {rss}");
    }
    out.push_str(app_lines);
    out
}
