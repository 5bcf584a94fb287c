//! Connection deadlines on the shard's timing wheel: handshake, ping and pong, idle, token
//! expiry (`--jwt-close-on-expiry`, only for connections that carry one), max lifetime (only
//! when `--max-lifetime` is on; kept in the side table), close. A connection
//! whose reading is paused is judged by its output's progress, not by reads it may not make.

use super::*;

impl<H: Handler> Shard<H> {
    // ----- timers -----

    pub(super) fn fire_timers(&mut self) {
        let Self { conns, core, .. } = self;
        if let Some(until) = core.accept.paused_until {
            if core.now >= until {
                core.accept.paused_until = None;
                core.accept.more = true;
            }
        }
        let mut due = std::mem::take(&mut core.turn.due);
        let now = core.now;
        core.wheel.advance(now, |e, tick| {
            let c = conns.get_mut(e.key as usize)?;
            if c.gen != e.gen {
                return None;
            }
            match timer::visit(c.armed_at, tick) {
                Visit::Due => {
                    // No entry is live any more (a duplicate in this pass is now stale).
                    c.armed_at = NOT_ARMED;
                    due.push(e);
                    None
                }
                Visit::Later(t) => Some(t),
                Visit::Stale => None,
            }
        });
        for e in due.drain(..) {
            let key = e.key as usize;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if core.on_deadline(key, conn) {
                core.remove(conns, key);
            }
        }
        core.turn.due = due;
    }
}

impl<H: Handler> Core<H> {
    // ----- deadlines -----

    /// The tick of this connection's next deadline: its lifecycle's (handshake; ping, pong,
    /// idle; close) or, while open, one of the shard's own policies' (token expiry, max
    /// lifetime), whichever comes first.
    pub(super) fn due_tick(&self, key: usize, conn: &Conn<H::State>) -> Option<u32> {
        let due = conn.ws.deadline(&self.timeouts);
        if conn.ws.phase() != WsPhase::Open {
            return due;
        }
        let ext = self.ext(key);
        let expiry = ext.and_then(|e| e.expires_at);
        let end_of_life = ext.and_then(|e| e.max_life_at);
        [due, expiry, end_of_life].into_iter().flatten().min()
    }

    /// `--max-lifetime` in ticks, +-10%, different for each connection.
    pub(super) fn jittered_lifetime(&self, key: usize, gen: u32) -> u32 {
        jittered(self.lifetime_ticks, key, gen, self.now)
    }

    /// Arms the connection's timer for its next deadline unless an earlier entry is live.
    pub(super) fn schedule(&mut self, key: usize, conn: &mut Conn<H::State>) {
        if let Some(due) = self.due_tick(key, conn) {
            if conn.armed_at == NOT_ARMED || due < conn.armed_at {
                let entry = Entry {
                    key: key as u32,
                    gen: conn.gen,
                };
                conn.armed_at = self.wheel.arm(entry, due);
            }
        }
    }

    /// A timer fired. Returns true when the connection must be dropped.
    pub(super) fn on_deadline(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
        let Some(due) = self.due_tick(key, conn) else {
            return false;
        };
        if self.now < due {
            self.schedule(key, conn);
            return false;
        }
        match conn.phase() {
            Phase::Handshaking | Phase::HttpBody => {
                self.stats.inc(Counter::HandshakeTimeouts);
                true
            }
            Phase::Open => {
                let expiry = self.ext(key).and_then(|e| e.expires_at);
                if expiry.is_some_and(|t| self.now >= t) {
                    self.stats.inc(Counter::TokenExpiredClosed);
                    self.notify_close(key, conn, close_code::POLICY, "token expired");
                    self.start_close(key, conn, close_code::POLICY, "token expired");
                    self.mark_dirty(key, conn);
                    return false;
                }
                let end_of_life = self.ext(key).and_then(|e| e.max_life_at);
                if end_of_life.is_some_and(|t| self.now >= t) {
                    self.stats.inc(Counter::ClosedMaxLifetime);
                    self.notify_close(key, conn, close_code::GOING_AWAY, "reconnect");
                    self.start_close(key, conn, close_code::GOING_AWAY, "reconnect");
                    self.mark_dirty(key, conn);
                    return false;
                }
                let silent = self.now - conn.ws.since();
                let idle = self.timeouts.idle > 0 && silent >= self.timeouts.idle;
                if !idle && conn.ws.ping_outstanding() && conn.flags & READ_PAUSED != 0 {
                    // Paused: its pong cannot be read. Judge it by its progress instead: what
                    // it has read since lets this write go out (and counts as activity).
                    if !self.flush_conn(key, conn) {
                        return true;
                    }
                    if conn.phase() != Phase::Open {
                        return false;
                    }
                    if !conn.ws.ping_outstanding() {
                        self.schedule(key, conn);
                        return false;
                    }
                }
                if idle {
                    // The app hears of it before the close frame is queued.
                    self.notify_close(key, conn, close_code::GOING_AWAY, "idle timeout");
                }
                let mut out = Out::to_queue(conn, self.now, &self.stats);
                let now = self.now;
                let timeouts = self.timeouts;
                match out.lifecycle(|ws, out| ws.on_timeout(now, &timeouts, out)) {
                    Some(Timeout::Idle) => {
                        self.stats.inc(Counter::IdleTimeouts);
                        self.stats.inc(Counter::ClosedByServer);
                    }
                    Some(Timeout::Pong) => {
                        self.stats.inc(Counter::PongTimeouts);
                        self.notify_close(key, conn, close_code::ABNORMAL, "pong timeout");
                        return true;
                    }
                    Some(Timeout::PingSent) => self.stats.inc(Counter::PingsSent),
                    _ => {}
                }
                self.mark_dirty(key, conn);
                self.schedule(key, conn);
                false
            }
            Phase::HttpWait => {
                self.answer_late(key, conn, 504, "the application did not answer in time\n");
                false
            }
            Phase::Closing | Phase::Finishing | Phase::Draining => {
                if conn.phase() == Phase::Closing {
                    self.stats.inc(Counter::CloseTimeouts);
                }
                self.notify_close(key, conn, close_code::ABNORMAL, "close timeout");
                true
            }
        }
    }
}

/// `base` ticks +-10%, spread by a hash of the connection's slot, generation and open tick (no
/// randomness needed, only spread, so clients do not all come back at once). At least 1.
fn jittered(base: u32, key: usize, gen: u32, now: u32) -> u32 {
    let spread = base / 10;
    if spread == 0 {
        return base.max(1);
    }
    let mut h = ((key as u64) << 32 | gen as u64) ^ ((now as u64) << 17);
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let offset = (h % (2 * spread as u64 + 1)) as u32;
    (base - spread + offset).max(1)
}

#[cfg(test)]
mod tests {
    use super::jittered;

    #[test]
    fn lifetimes_stay_within_ten_percent_and_spread() {
        let base = 3000; // a minute of 20 ms ticks
        let all: Vec<u32> = (0..1000)
            .map(|k| jittered(base, k, k as u32 + 1, 77))
            .collect();
        assert!(all.iter().all(|&t| (2700..=3300).contains(&t)));
        let (lo, hi) = (all.iter().min().unwrap(), all.iter().max().unwrap());
        assert!(*lo < 2800 && *hi > 3200, "spread {lo}..{hi}");
        assert_eq!(jittered(5, 1, 1, 0), 5);
        assert_eq!(jittered(0, 1, 1, 0), 1);
    }
}
