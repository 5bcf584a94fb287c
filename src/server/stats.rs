//! Counters a shard bumps and anyone may read: one cache-line-padded block of relaxed atomics
//! per shard, summed on demand for stats lines and metrics. Owns no policy.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

macro_rules! counters {
    ($($name:ident => $text:literal,)*) => {
        /// What a shard counts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $($name,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];
            /// The metric name (Prometheus style, without prefix).
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$name => $text,)* }
            }
        }
        const COUNT: usize = [$(Counter::$name,)*].len();
    };
}

counters! {
    Accepted => "accepted_total",
    Rejected503 => "rejected_max_connections_total",
    AcceptErrors => "accept_errors_total",
    AcceptEmfile => "accept_emfile_total",
    HandshakesOk => "handshakes_total",
    HandshakeRejected => "handshake_rejected_total",
    HandshakeTimeouts => "handshake_timeouts_total",
    AuthMissing => "auth_missing_token_total",
    AuthMalformed => "auth_malformed_token_total",
    AuthBadSignature => "auth_bad_signature_total",
    AuthExpired => "auth_expired_token_total",
    AuthNotYetValid => "auth_not_yet_valid_total",
    AuthBadAlgorithm => "auth_bad_algorithm_total",
    OriginRefused => "origin_refused_total",
    PerIpConnsRefused => "per_ip_connections_refused_total",
    PerIpRateRefused => "per_ip_rate_refused_total",
    TokenExpiredClosed => "closed_token_expired_total",
    ClosedMaxLifetime => "closed_max_lifetime_total",
    Http400 => "http_400_total",
    Http401 => "http_401_total",
    Http403 => "http_403_total",
    Http404 => "http_404_total",
    Http426 => "http_426_total",
    Http429 => "http_429_total",
    Http431 => "http_431_total",
    HttpOther4xx => "http_other_4xx_total",
    Http5xx => "http_5xx_total",
    HttpRequests => "http_requests_total",
    MessagesIn => "messages_in_total",
    MessagesOut => "messages_out_total",
    BytesIn => "bytes_in_total",
    BytesOut => "bytes_out_total",
    PingsSent => "pings_sent_total",
    PongTimeouts => "pong_timeouts_total",
    IdleTimeouts => "idle_timeouts_total",
    CloseTimeouts => "close_timeouts_total",
    Close1002 => "closed_protocol_error_total",
    Close1007 => "closed_invalid_utf8_total",
    CloseBadCompressed => "closed_bad_compressed_data_total",
    Close1009 => "closed_message_too_big_total",
    SlowConsumerPaused => "slow_consumer_paused_total",
    SlowConsumerDisconnected => "slow_consumer_disconnected_total",
    SlowConsumerDropped => "slow_consumer_dropped_frames_total",
    ClosedByPeer => "closed_by_peer_total",
    ClosedByServer => "closed_by_server_total",
    ClosedAbnormal => "closed_abnormal_total",
    IoErrors => "io_errors_total",
    DeflateConnections => "deflate_connections_total",
    DeflateMessagesIn => "deflate_messages_in_total",
    DeflateInWireBytes => "deflate_in_compressed_bytes_total",
    DeflateInRawBytes => "deflate_in_inflated_bytes_total",
    DeflateMessagesOut => "deflate_messages_out_total",
    DeflateOutRawBytes => "deflate_out_raw_bytes_total",
    DeflateOutWireBytes => "deflate_out_compressed_bytes_total",
    TlsErrors => "tls_errors_total",
    UringReads => "uring_reads_total",
    UringWrites => "uring_writes_total",
    UringSubmissions => "uring_submissions_total",
    Closed => "connections_closed_total",
}

/// Why an upgrade was refused: the `reason` label of `fanout_handshake_refused_total`, a fixed
/// set so the metric's size is bounded whatever peers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Refusal {
    /// Past `--max-connections` (503, before the handshake is read).
    MaxConnections,
    /// Not HTTP, or not a valid WebSocket upgrade (400).
    Malformed,
    /// A WebSocket version other than 13 (426).
    Version,
    /// Request head past `--max-header-bytes` (431).
    TooLarge,
    /// `--max-conns-per-ip` or `--handshake-rate-per-ip` (429).
    PerIp,
    /// `Origin` not in `--allowed-origins` (403).
    Origin,
    /// No valid JWT (401).
    Auth,
    /// The app has no WebSocket endpoint at this path (404).
    Path,
    /// The app refused the request's parameters: unknown query parameter, bad topic (400).
    BadRequest,
    /// The app refused what the token allows (403).
    Forbidden,
    /// Any other refusal by the app.
    Other,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::MaxConnections,
        Refusal::Malformed,
        Refusal::Version,
        Refusal::TooLarge,
        Refusal::PerIp,
        Refusal::Origin,
        Refusal::Auth,
        Refusal::Path,
        Refusal::BadRequest,
        Refusal::Forbidden,
        Refusal::Other,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::Malformed => "malformed",
            Refusal::Version => "version",
            Refusal::TooLarge => "too_large",
            Refusal::PerIp => "per_ip",
            Refusal::Origin => "origin",
            Refusal::Auth => "auth",
            Refusal::Path => "path",
            Refusal::BadRequest => "bad_request",
            Refusal::Forbidden => "forbidden",
            Refusal::Other => "other",
        }
    }

    /// The kind of an app's refusal, by its status.
    pub const fn of_app_status(status: u16) -> Refusal {
        match status {
            400 => Refusal::BadRequest,
            401 => Refusal::Auth,
            403 => Refusal::Forbidden,
            404 => Refusal::Path,
            _ => Refusal::Other,
        }
    }

    /// The kind of a refusal by the HTTP parser or the upgrade's validation, by its status.
    pub const fn of_parse_status(status: u16) -> Refusal {
        match status {
            426 => Refusal::Version,
            431 => Refusal::TooLarge,
            _ => Refusal::Malformed,
        }
    }
}

/// One shard's counters, padded so shards never share a cache line.
#[repr(align(128))]
pub struct ShardStats {
    counters: [AtomicU64; COUNT],
    /// Refused upgrades by `Refusal`.
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Gauges, set by the shard.
    pub open: AtomicU64,
    pub loop_lag_us: AtomicU64,
    /// Loop turns by busy time, by `TURN_BUCKETS_US` (the last counts everything longer).
    turn_buckets: [AtomicU64; TURN_BUCKETS_US.len() + 1],
    turn_busy_us: AtomicU64,
}

/// Upper bounds of the loop-turn histogram, in microseconds. A turn is the time a message that
/// arrives while the shard works waits at most before it is read: the tail of this histogram
/// is the latency the server adds under load.
pub const TURN_BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];

impl Default for ShardStats {
    fn default() -> Self {
        Self {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            open: AtomicU64::new(0),
            loop_lag_us: AtomicU64::new(0),
            turn_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            turn_busy_us: AtomicU64::new(0),
        }
    }
}

impl ShardStats {
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Relaxed);
    }

    #[inline]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Records a loop turn that worked for `us` microseconds.
    #[inline]
    pub fn turn(&self, us: u64) {
        self.loop_lag_us.store(us, Relaxed);
        let i = TURN_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(TURN_BUCKETS_US.len());
        self.turn_buckets[i].fetch_add(1, Relaxed);
        self.turn_busy_us.fetch_add(us, Relaxed);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Relaxed)
    }

    /// Counts a refused upgrade by why.
    #[inline]
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub fn get_refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    /// Counts an HTTP error answer by status (5xx in their own series).
    pub fn http_status(&self, status: u16) {
        self.inc(match status {
            400 => Counter::Http400,
            401 => Counter::Http401,
            403 => Counter::Http403,
            404 => Counter::Http404,
            426 => Counter::Http426,
            429 => Counter::Http429,
            431 => Counter::Http431,
            500..=599 => Counter::Http5xx,
            _ => Counter::HttpOther4xx,
        });
    }
}

/// The sum of every shard's counter `c`.
pub fn total(shards: &[std::sync::Arc<ShardStats>], c: Counter) -> u64 {
    shards.iter().map(|s| s.get(c)).sum()
}

/// Resident set size of this process, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// The content type of `render_metrics`'s text.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every shard counter (summed), open connections, per-shard loop time, RSS, and the
/// app's own lines (already formatted) after them.
pub fn render_metrics(shards: &[Arc<ShardStats>], app_lines: &str) -> String {
    let mut out = String::with_capacity(4096);
    for &c in Counter::ALL {
        let _ = writeln!(out, "# TYPE fanout_{} counter", c.name());
        let _ = writeln!(out, "fanout_{} {}", c.name(), total(shards, c));
    }
    let _ = writeln!(
        out,
        "# HELP fanout_handshake_refused_total upgrades refused before the 101, by reason\n# TYPE fanout_handshake_refused_total counter"
    );
    for why in Refusal::ALL {
        let n: u64 = shards.iter().map(|s| s.get_refused(why)).sum();
        let _ = writeln!(
            out,
            "fanout_handshake_refused_total{{reason=\"{}\"}} {n}",
            why.label()
        );
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
    let _ = writeln!(
        out,
        "# HELP fanout_loop_turn_seconds time each loop turn spent working (all shards): what a message arriving during a turn waits at most before it is read\n# TYPE fanout_loop_turn_seconds histogram"
    );
    let mut cum = 0;
    for (i, le) in TURN_BUCKETS_US.iter().enumerate() {
        cum += shards
            .iter()
            .map(|s| s.turn_buckets[i].load(Relaxed))
            .sum::<u64>();
        let _ = writeln!(
            out,
            "fanout_loop_turn_seconds_bucket{{le=\"{}\"}} {cum}",
            *le as f64 / 1e6
        );
    }
    let count: u64 = shards
        .iter()
        .flat_map(|s| s.turn_buckets.iter())
        .map(|b| b.load(Relaxed))
        .sum();
    let busy: u64 = shards.iter().map(|s| s.turn_busy_us.load(Relaxed)).sum();
    let _ = writeln!(
        out,
        "fanout_loop_turn_seconds_bucket{{le=\"+Inf\"}} {count}\nfanout_loop_turn_seconds_sum {}\nfanout_loop_turn_seconds_count {count}",
        busy as f64 / 1e6
    );
    if let Some(rss) = rss_bytes() {
        let _ = writeln!(out, "# TYPE fanout_resident_memory_bytes gauge");
        let _ = writeln!(out, "fanout_resident_memory_bytes {rss}");
    }
    out.push_str(app_lines);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, key: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    }

    #[test]
    fn loop_turns_land_in_their_bucket_cumulated_over_shards() {
        let shards = [
            Arc::new(ShardStats::default()),
            Arc::new(ShardStats::default()),
        ];
        shards[0].turn(10);
        shards[0].turn(600);
        shards[1].turn(3_000);
        shards[1].turn(200_000);
        let text = render_metrics(&shards, "");
        let bucket = |le: &str| {
            line(
                &text,
                &format!("fanout_loop_turn_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.00005"), "1");
        assert_eq!(bucket("0.0005"), "1");
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("0.1"), "3");
        assert_eq!(bucket("+Inf"), "4");
        assert_eq!(line(&text, "fanout_loop_turn_seconds_count"), "4");
        assert_eq!(line(&text, "fanout_loop_turn_seconds_sum"), "0.20361");
        // The last turn of each shard stays the gauge it was.
        assert_eq!(
            line(&text, "fanout_loop_busy_microseconds{shard=\"1\"}"),
            "200000"
        );
    }
}
