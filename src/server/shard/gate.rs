//! The upgrade gate: the per-IP handshake rate (429), the Origin allow-list (403) and the JWT
//! (401), checked once the request head is read and before the app sees it, so a refused client
//! gets a status rather than a reset (the per-IP connection cap is counted at accept). With every
//! policy off it is one branch: no syscall, lock or hash.

use super::*;
use crate::proto::handshake::Request;
use crate::server::per_ip::Refusal;
use crate::server::stats::Refusal as Why;

impl<H: Handler> Core<H> {
    /// Runs the checks. `Ok(())`: go on (the token and the per-IP count, if any, are in
    /// the shard's `exts`, so removing the connection releases the count). `Err(n)`: refused and
    /// answered, `n` bytes consumed.
    pub(super) fn gate(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        req: &Request<'_>,
        len: usize,
    ) -> Result<(), usize> {
        let g = &self.global;
        if g.per_ip.is_none() && g.origins.is_none() && g.jwt.is_none() {
            return Ok(());
        }
        let global = Arc::clone(g);
        // The connection was counted against its address's cap at accept; the rate is per request.
        if let Some(limiter) = global.per_ip.as_ref().filter(|l| l.limits_rate()) {
            let ip = match conn.sock.peer_addr() {
                Ok(a) => a.ip(),
                Err(_) => {
                    let e = HttpError::new(400, "connection lost");
                    return Err(self.refuse(key, conn, &e, len));
                }
            };
            if let Err(Refusal::RateLimited { retry_after_secs }) =
                limiter.admit_handshake(ip, Instant::now())
            {
                self.stats.inc(Counter::PerIpRateRefused);
                let retry = retry_after_secs.to_string();
                let reason = "too many handshakes from your address; retry later";
                self.note_refusal(Why::PerIp, 429, reason, None, Some(&conn.sock));
                return Err(self.refuse_with(
                    key,
                    conn,
                    429,
                    reason,
                    &[("Retry-After", &retry)],
                    len,
                ));
            }
        }
        if let Some(origins) = &global.origins {
            if !origins.allows(req.origin) {
                self.stats.inc(Counter::OriginRefused);
                let reason = "origin not allowed";
                self.note_refusal(Why::Origin, 403, reason, req.origin, Some(&conn.sock));
                return Err(self.refuse_with(key, conn, 403, "origin not allowed", &[], len));
            }
        }
        if let Some(jwt) = &global.jwt {
            match jwt.check(req) {
                Ok(token) => {
                    let expires_at = jwt.close_on_expiry().then(|| self.expiry_tick(token.exp));
                    let ext = self.ext_mut(key);
                    ext.expires_at = expires_at;
                    ext.token = Some(token);
                }
                Err(failure) => {
                    self.stats.inc(failure.counter());
                    let reason = jwt.reason(failure);
                    // The token itself is a credential: only why it failed is logged.
                    self.note_refusal(Why::Auth, 401, reason, None, Some(&conn.sock));
                    return Err(self.refuse_with(
                        key,
                        conn,
                        401,
                        reason,
                        &[("WWW-Authenticate", failure.challenge())],
                        len,
                    ));
                }
            }
        }
        Ok(())
    }

    /// The tick at which a token with this `exp` (Unix seconds) has expired.
    fn expiry_tick(&self, exp: u64) -> u32 {
        let secs = exp.saturating_sub(crate::rt::unix_now());
        // Far enough is never within the life of a shard (months); the wheel re-checks anyway.
        let ticks = (secs.saturating_mul(1000) / TICK_MS).min(u32::MAX as u64 / 4) as u32;
        self.now.saturating_add(ticks.max(1))
    }

    /// Answers a refused upgrade with a status, extra headers and a one-line reason, and closes.
    pub(super) fn refuse_with(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
        len: usize,
    ) -> usize {
        self.stats.inc(Counter::HandshakeRejected);
        self.stats.http_status(status);
        tracing::debug!(shard = self.index, status, "handshake refused: {reason}");
        let mut body = String::with_capacity(reason.len() + 1);
        body.push_str(reason);
        body.push('\n');
        handshake::write_response(
            &mut self.cork,
            status,
            headers,
            "text/plain; charset=utf-8",
            body.as_bytes(),
        );
        self.finish(key, conn);
        len
    }
}
