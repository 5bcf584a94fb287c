//! Counters a shard bumps and anyone may read: one cache-line-padded block of relaxed atomics
//! per shard, summed on demand for stats lines and metrics. Owns no policy.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    Http400 => "http_400_total",
    Http401 => "http_401_total",
    Http403 => "http_403_total",
    Http404 => "http_404_total",
    Http426 => "http_426_total",
    Http431 => "http_431_total",
    HttpOther4xx => "http_other_4xx_total",
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
    Close1009 => "closed_message_too_big_total",
    SlowConsumerPaused => "slow_consumer_paused_total",
    SlowConsumerDisconnected => "slow_consumer_disconnected_total",
    SlowConsumerDropped => "slow_consumer_dropped_frames_total",
    ClosedByPeer => "closed_by_peer_total",
    ClosedByServer => "closed_by_server_total",
    ClosedAbnormal => "closed_abnormal_total",
    IoErrors => "io_errors_total",
    TlsErrors => "tls_errors_total",
    Closed => "connections_closed_total",
}

/// One shard's counters, padded so shards never share a cache line.
#[repr(align(128))]
pub struct ShardStats {
    counters: [AtomicU64; COUNT],
    /// Gauges, set by the shard.
    pub open: AtomicU64,
    pub loop_lag_us: AtomicU64,
}

impl Default for ShardStats {
    fn default() -> Self {
        Self {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            open: AtomicU64::new(0),
            loop_lag_us: AtomicU64::new(0),
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

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Relaxed)
    }

    /// Counts a refused handshake by status.
    pub fn http_status(&self, status: u16) {
        self.inc(match status {
            400 => Counter::Http400,
            401 => Counter::Http401,
            403 => Counter::Http403,
            404 => Counter::Http404,
            426 => Counter::Http426,
            431 => Counter::Http431,
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
