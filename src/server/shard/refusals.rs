//! Refused upgrades made visible to operators: each is counted by reason
//! (`fanout_handshake_refused_total{reason}`) and logged at info with its status, reason and
//! the offending value, at most `LINES_PER_SECOND` lines per shard per second; the rest are
//! summed into one "N more" line. Owns no policy: the gate and the app decide what to refuse.

use super::*;
use crate::server::stats::Refusal;

/// Log lines per shard per second before refusals are only counted.
const LINES_PER_SECOND: u32 = 10;
/// Peer values are quoted (escaped) and cut to this many characters in the log.
const MAX_VALUE_CHARS: usize = 80;

/// The rate limit of the refusal log.
#[derive(Default)]
pub(crate) struct RefusalLog {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Opens a new window if a second has passed, reporting what the last one suppressed.
    fn roll(&mut self, shard: u16, now: Instant) {
        if self
            .window_start
            .is_some_and(|s| now.duration_since(s) < Duration::from_secs(1))
        {
            return;
        }
        if self.suppressed > 0 {
            tracing::info!(
                shard,
                suppressed = self.suppressed,
                "{} more refused upgrades not logged (counted in fanout_handshake_refused_total)",
                self.suppressed
            );
        }
        *self = RefusalLog {
            window_start: Some(now),
            lines: 0,
            suppressed: 0,
        };
    }

    /// Called once per loop turn: the "N more" line is not left waiting for the next refusal.
    pub(super) fn flush(&mut self, shard: u16) {
        if self.suppressed > 0 {
            self.roll(shard, Instant::now());
        }
    }
}

/// `value` as it goes into a log line: escaped, cut to `MAX_VALUE_CHARS` characters.
fn quoted(value: &str) -> String {
    let cut: String = value.chars().take(MAX_VALUE_CHARS).collect();
    let more = if cut.len() < value.len() { "…" } else { "" };
    format!("{cut:?}{more}")
}

impl<H: Handler> Core<H> {
    /// Counts a refused upgrade and logs it (rate-limited). `value` is what the peer sent that
    /// was refused (an Origin, a path), if there is one to show.
    pub(super) fn note_refusal(
        &mut self,
        why: Refusal,
        status: u16,
        reason: &str,
        value: Option<&str>,
        peer: Option<&TcpStream>,
    ) {
        self.stats.refused(why);
        let log = &mut self.refusals;
        log.roll(self.index, Instant::now());
        if log.lines >= LINES_PER_SECOND {
            log.suppressed += 1;
            return;
        }
        log.lines += 1;
        let peer = peer.and_then(|s| s.peer_addr().ok());
        let peer = peer.map_or_else(|| "?".to_string(), |a| a.to_string());
        let value = value.map_or_else(String::new, |v| format!(" value={}", quoted(v)));
        tracing::info!(
            shard = self.index,
            "upgrade refused: {status} {} ({reason}) from {peer}{value}",
            why.label()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_cut() {
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(200);
        let q = quoted(&long);
        assert!(q.ends_with('…') && q.len() < 100, "{q}");
    }

    #[test]
    fn a_window_logs_ten_then_counts() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        log.roll(0, t0);
        log.lines = LINES_PER_SECOND;
        log.suppressed = 5;
        log.roll(0, t0 + Duration::from_millis(500));
        assert_eq!(log.suppressed, 5, "same window");
        log.roll(0, t0 + Duration::from_millis(1001));
        assert_eq!((log.lines, log.suppressed), (0, 0), "a new window");
    }
}
