//! Accepting: drain the listener up to the per-turn batch, 503 past max-connections, 429 past
//! max-conns-per-ip (counted per socket, from accept to removal), and a
//! short back-off on EMFILE/ENFILE that keeps open connections served.

use super::*;

/// A shard's side of the listening port: its SO_REUSEPORT listener (dropped when draining) and
/// when to accept again.
pub(super) struct Acceptor {
    pub(super) listener: Option<TcpListener>,
    /// More may be waiting (a batch cap was hit, or the EMFILE back-off ended): the listener's
    /// edge will not fire again for them.
    pub(super) more: bool,
    /// Accepting pauses after EMFILE/ENFILE until this tick.
    pub(super) paused_until: Option<u32>,
    /// EMFILE failures since the last log line, and when it was written (one a second).
    pub(super) emfile_since_log: u64,
    pub(super) emfile_logged_at: Option<Instant>,
}

/// With TCP_DEFER_ACCEPT on io_uring, the accepted connections whose requests are read in one
/// submission before accepting goes on: enough to share a submission's cost, few enough that
/// a flood of costly requests (64 KiB heads) is answered within about the turn's budget.
const ACCEPTED_READS_PER_BATCH: usize = 16;

impl<H: Handler> Shard<H> {
    // ----- accepting -----

    /// Accepts up to the batch cap and within the turn's budget. `in_dispatch`: called while
    /// the turn's events are dispatched, before its batched reads run (see `read_now`).
    pub(super) fn accept(&mut self, in_dispatch: bool) {
        let c = &mut self.core;
        c.accept.more = false;
        if c.accept.paused_until.is_some() || c.draining_until.is_some() {
            return;
        }
        let max = c.global.max_connections;
        // With TCP_DEFER_ACCEPT a connection is handed over once its first bytes are in: read
        // them now rather than on the readiness its registration reports at the next wait
        // (which then finds the socket drained and reports nothing). Outside the dispatch, a
        // batched read would wait a turn and meet that readiness too: leave it to epoll.
        let read_now = !c.cfg.defer_accept.is_zero() && (in_dispatch || c.uring.is_none());
        let mut queued = 0;
        for n in 0..self.core.cfg.accept_batch {
            if queued == ACCEPTED_READS_PER_BATCH {
                // Their requests are answered before more are accepted, so that the budget
                // below counts that work too, not only the accepts.
                self.read_batched();
                queued = 0;
            }
            let c = &mut self.core;
            // A flood of new connections (each accepted, read and answered here or in the
            // turn's read batch) waits for the next turn past the budget, so it cannot hold a
            // message of an open connection for more than about that.
            if n > 0 && c.over_budget() {
                break;
            }
            let Some(listener) = c.accept.listener.as_ref() else {
                return;
            };
            let (mut sock, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    c.accept_failed_emfile(&e);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and the like concern one client; keep accepting.
                    c.stats.inc(Counter::AcceptErrors);
                    tracing::debug!(shard = c.index, "accept: {e}");
                    continue;
                }
            };
            c.stats.inc(Counter::Accepted);
            // Every socket counts against its address's cap from here until it is removed.
            // The address is judged before the socket takes a place under --max-connections,
            // so one refused with 429 never holds, even for a moment, a place another client
            // could have had.
            let Ok(counted_ip) = c.admit_ip(&mut sock, peer.ip()) else {
                continue;
            };
            if c.global.open.fetch_add(1, SeqCst) >= max {
                c.global.open.fetch_sub(1, SeqCst);
                c.release_ip(counted_ip);
                c.stats.inc(Counter::Rejected503);
                c.note_refusal(
                    crate::server::stats::Refusal::MaxConnections,
                    503,
                    "server at its connection limit",
                    None,
                    Some(&sock),
                );
                let mut resp = Vec::new();
                handshake::write_error_response(
                    &mut resp,
                    &HttpError::new(503, "server at its connection limit"),
                );
                // A fresh socket's buffer is empty: the answer fits or the client is gone.
                // (A TLS client cannot read plaintext: it just sees the connection close.)
                if c.cfg.tls.is_none() {
                    let _ = sock.write(&resp);
                }
                let _ = sock.shutdown(Shutdown::Write);
                continue;
            }
            let tls = match &c.cfg.tls {
                None => None,
                Some(cfg) => match TlsConn::new(cfg) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        c.release_ip(counted_ip);
                        c.global.open.fetch_sub(1, SeqCst);
                        c.stats.inc(Counter::TlsErrors);
                        tracing::warn!(shard = c.index, "TLS session: {e}");
                        continue;
                    }
                },
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = c
                .poll
                .registry()
                .register(&mut sock, Token(key), Interest::READABLE)
            {
                c.release_ip(counted_ip);
                c.global.open.fetch_sub(1, SeqCst);
                c.stats.inc(Counter::AcceptErrors);
                tracing::warn!(shard = c.index, "register: {e}");
                continue;
            }
            c.next_gen = c.next_gen.wrapping_add(1);
            let conn = entry.insert(Conn {
                sock,
                flags: if tls.is_some() { TLS } else { 0 },
                ext: Packed::OFF,
                gen: c.next_gen,
                ws: Connection::handshaking(c.now),
                armed_at: NOT_ARMED,
                decoder: Default::default(),
                stash: Default::default(),
                queue: None,
                state: None,
            });
            if let Some(t) = tls {
                if c.tls.conns.len() <= key {
                    c.tls.conns.resize_with(key + 1, || None);
                }
                c.tls.conns[key] = Some(t);
            }
            if counted_ip.is_some() {
                c.ext_mut(key).counted_ip = counted_ip;
            }
            c.stats.open.fetch_add(1, Relaxed);
            c.schedule(key, conn);
            if read_now {
                if self.batchable_read(key, false) {
                    self.queue_read(key);
                    queued += 1;
                } else {
                    self.read(key, false);
                }
            }
        }
        // The batch cap or the turn's budget was hit: more may be waiting, and the edge will
        // not fire again.
        self.core.accept.more = true;
    }
}

impl<H: Handler> Core<H> {
    /// `--max-conns-per-ip` at accept. `Ok(Some(ip))`: counted under `ip` (released when the
    /// connection is removed); `Ok(None)`: no cap. `Err`: refused with 429 and closed.
    fn admit_ip(
        &mut self,
        sock: &mut TcpStream,
        ip: std::net::IpAddr,
    ) -> Result<Option<std::net::IpAddr>, ()> {
        let Some(limiter) = self
            .global
            .per_ip
            .as_ref()
            .filter(|l| l.counts_connections())
        else {
            return Ok(None);
        };
        if limiter.admit_connection(ip, Instant::now()).is_ok() {
            return Ok(Some(ip));
        }
        self.stats.inc(Counter::PerIpConnsRefused);
        self.stats.inc(Counter::HandshakeRejected);
        self.stats.http_status(429);
        if self.cfg.tls.is_none() {
            let mut resp = Vec::new();
            let body = "too many connections from your address\n";
            handshake::write_response(
                &mut resp,
                429,
                &[],
                "text/plain; charset=utf-8",
                body.as_bytes(),
            );
            // A fresh socket's buffer is empty: the answer fits or the client is gone.
            let _ = sock.write(&resp);
        }
        let _ = sock.shutdown(Shutdown::Write);
        // What the client sent already is read and dropped, so closing sends a FIN after the
        // answer rather than a reset that could discard it.
        let mut sink = [0u8; 4096];
        for _ in 0..4 {
            if !matches!(sock.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        Err(())
    }

    /// Gives back a count taken by `admit_ip` for a socket that was not kept.
    fn release_ip(&mut self, ip: Option<std::net::IpAddr>) {
        if let (Some(ip), Some(limiter)) = (ip, &self.global.per_ip) {
            limiter.release(ip, Instant::now());
        }
    }

    pub(super) fn accept_failed_emfile(&mut self, e: &io::Error) {
        self.stats.inc(Counter::AcceptEmfile);
        self.accept.emfile_since_log += 1;
        self.accept.paused_until = Some(self.now + ms_to_ticks(ACCEPT_BACKOFF_MS));
        let due = self
            .accept
            .emfile_logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            tracing::warn!(
                shard = self.index,
                count = self.accept.emfile_since_log,
                "accept: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms (open connections keep being served)"
            );
            self.accept.emfile_since_log = 0;
            self.accept.emfile_logged_at = Some(Instant::now());
        }
    }
}
