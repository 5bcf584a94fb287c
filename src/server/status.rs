//! The live status page (`GET /`, `/status`) and its feed (`/status/ws`): who may see it, the
//! page itself (compiled in), and the once-a-second JSON sample computed from the shards'
//! counters. Owns no I/O: the shard serves the page, holds the viewers and sends the samples,
//! and only while someone watches.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::{rss_bytes, Counter, Refusal, ShardStats};
use crate::proto::handshake::Request;

/// The page: HTML, CSS and JS in one file, no external resource.
pub const PAGE: &str = include_str!("status.html");
/// Where the page's WebSocket connects.
pub const WS_PATH: &str = "/status/ws";
/// Viewers per shard past which `/status/ws` answers 503 (each costs a slab entry and one
/// sample of about 600 bytes queued per second).
pub const MAX_VIEWERS_PER_SHARD: usize = 16;
/// How often a sample is sent.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Who may see the status page (`--status on|off|KEY`).
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StatusAccess {
    /// Not served: `/`, `/status` and `/status/ws` go to the app like any other path.
    #[default]
    Off,
    /// Anyone who can reach the port.
    Open,
    /// Only requests with `?key=KEY`.
    Key(String),
}

impl std::fmt::Debug for StatusAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusAccess::Off => f.write_str("Off"),
            StatusAccess::Open => f.write_str("Open"),
            StatusAccess::Key(_) => f.write_str("Key(<hidden>)"),
        }
    }
}

impl StatusAccess {
    pub fn on(&self) -> bool {
        *self != StatusAccess::Off
    }

    /// May this request see the page or open the feed?
    pub fn allows(&self, req: &Request<'_>) -> bool {
        match self {
            StatusAccess::Off => false,
            StatusAccess::Open => true,
            StatusAccess::Key(key) => req
                .query_pairs()
                .any(|(n, v)| n == "key" && constant_time_eq(v.as_bytes(), key.as_bytes())),
        }
    }

    /// Is `path` one of the page's routes?
    pub fn is_page(path: &str) -> bool {
        path == "/" || path == "/status"
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The counters a sample turns into rates, summed over shards.
const RATES: [(&str, &[Counter]); 9] = [
    ("accepts", &[Counter::Accepted]),
    ("handshakes", &[Counter::HandshakesOk]),
    ("handshake_timeouts", &[Counter::HandshakeTimeouts]),
    ("msgs_in", &[Counter::MessagesIn]),
    ("msgs_out", &[Counter::MessagesOut]),
    ("bytes_in", &[Counter::BytesIn]),
    ("bytes_out", &[Counter::BytesOut]),
    (
        "slow_consumers",
        &[
            Counter::SlowConsumerDisconnected,
            Counter::SlowConsumerDropped,
        ],
    ),
    ("closed", &[Counter::Closed]),
];

/// Totals at one instant, to take rates against.
struct Snapshot {
    at: Instant,
    rates: [u64; RATES.len()],
    refused: u64,
    app: Vec<u64>,
}

/// A shard's viewers of the status feed and the state of its sampler. Empty (and never
/// looked at past one branch per loop turn) while nobody watches.
#[derive(Default)]
pub(crate) struct StatusFeed {
    /// Open viewer connections as (slab key, generation).
    pub viewers: Vec<(usize, u32)>,
    /// When the next sample is due (None: no viewer).
    pub next_at: Option<Instant>,
    prev: Option<Snapshot>,
}

impl StatusFeed {
    /// A viewer joined: it gets a sample at the end of this turn.
    pub fn join(&mut self, key: usize, gen: u32) {
        self.viewers.push((key, gen));
        self.next_at = Some(Instant::now());
    }

    /// Is a sample due?
    pub fn due(&self, now: Instant) -> bool {
        self.next_at.is_some_and(|t| now >= t)
    }

    /// After sending: the next one in a second, or none once every viewer has gone.
    pub fn sent(&mut self, now: Instant) {
        if self.viewers.is_empty() {
            self.next_at = None;
            self.prev = None;
        } else {
            self.next_at = Some(now + INTERVAL);
        }
    }

    /// The sample: rates per second since the last one (0 for the first), gauges now.
    /// `app` is the app's own counters (`Handler::status_counters`).
    pub fn sample(
        &mut self,
        shards: &[Arc<ShardStats>],
        app: &[(&'static str, u64)],
        now: Instant,
    ) -> String {
        let sum = |cs: &[Counter]| -> u64 {
            shards
                .iter()
                .flat_map(|s| cs.iter().map(|&c| s.get(c)))
                .sum()
        };
        let rates: [u64; RATES.len()] = std::array::from_fn(|i| sum(RATES[i].1));
        let refused: u64 = shards
            .iter()
            .flat_map(|s| Refusal::ALL.iter().map(|&r| s.get_refused(r)))
            .sum();
        let cur = Snapshot {
            at: now,
            rates,
            refused,
            app: app.iter().map(|(_, v)| *v).collect(),
        };
        let secs = self
            .prev
            .as_ref()
            .map_or(0.0, |p| now.duration_since(p.at).as_secs_f64());
        let rate = |now: u64, before: Option<u64>| -> f64 {
            match before {
                Some(b) if secs > 0.0 => now.saturating_sub(b) as f64 / secs,
                _ => 0.0,
            }
        };
        let open: u64 = shards.iter().map(|s| s.open.load(Relaxed)).sum();
        let rss = rss_bytes().unwrap_or(0);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut out = String::with_capacity(640);
        let _ = write!(
            out,
            "{{\"t\":{unix_ms},\"open\":{open},\"rss\":{rss},\"shards\":{}",
            shards.len()
        );
        for (i, (name, _)) in RATES.iter().enumerate() {
            let before = self.prev.as_ref().map(|p| p.rates[i]);
            let _ = write!(out, ",\"{name}\":{:.1}", rate(cur.rates[i], before));
        }
        let before = self.prev.as_ref().map(|p| p.refused);
        let _ = write!(out, ",\"refused\":{:.1}", rate(cur.refused, before));
        out.push_str(",\"lag_us\":[");
        for (i, s) in shards.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}", s.loop_lag_us.load(Relaxed));
        }
        out.push_str("],\"app\":{");
        for (i, (name, v)) in app.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let before = self
                .prev
                .as_ref()
                .filter(|p| p.app.len() == app.len())
                .map(|p| p.app[i]);
            let _ = write!(out, "\"{name}\":{:.1}", rate(*v, before));
        }
        out.push_str("}}");
        self.prev = Some(cur);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_json_with_rates() {
        let shards: Vec<Arc<ShardStats>> = (0..2).map(|_| Arc::default()).collect();
        let mut feed = StatusFeed::default();
        let t0 = Instant::now();
        let first = feed.sample(&shards, &[("publishes", 10)], t0);
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(v["accepts"], 0.0);
        assert_eq!(v["lag_us"].as_array().unwrap().len(), 2);
        shards[0].add(Counter::Accepted, 30);
        shards[1].add(Counter::Accepted, 10);
        shards[1].open.store(7, Relaxed);
        let second = feed.sample(&shards, &[("publishes", 30)], t0 + Duration::from_secs(2));
        let v: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(v["accepts"], 20.0);
        assert_eq!(v["open"], 7);
        assert_eq!(v["app"]["publishes"], 10.0);
    }

    #[test]
    fn the_page_is_small_and_self_contained() {
        assert!(PAGE.len() < 16 << 10, "{} bytes", PAGE.len());
        for external in ["http://", "https://", "//cdn", "src=\"http"] {
            assert!(!PAGE.contains(external), "{external}");
        }
        assert!(PAGE.contains(WS_PATH));
    }
}
