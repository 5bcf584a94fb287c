//! The end of connections: the closing handshake started and answered, the app told, late
//! answers to deferred requests, end of input from the peer, the slow-consumer disconnect, and
//! removal (counts, timers, per-address slots given back).

use super::*;

impl<H: Handler> Core<H> {
    /// Answers a deferred request on the app's behalf (timeout, shutdown) and finishes.
    pub(super) fn answer_late(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        status: u16,
        body: &str,
    ) {
        let mut out = Vec::new();
        // A page that made the request (CORS) must be able to read the 503 or 504 too.
        let cors = self.ext(key).and_then(|e| e.cors_origin.as_deref());
        let headers = cors.map(handshake::cors_headers);
        handshake::write_response(
            &mut out,
            status,
            headers.as_ref().map_or(&[][..], |h| &h[..]),
            "text/plain; charset=utf-8",
            body.as_bytes(),
        );
        conn.queue
            .get_or_insert_with(Default::default)
            .push_owned(out);
        self.stats.http_status(status);
        self.finish(key, conn);
        self.mark_dirty(key, conn);
    }

    /// Sends a close frame and waits for the peer's.
    pub(super) fn start_close(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        code: u16,
        reason: &str,
    ) {
        let mut out = Out::to_queue(conn, self.now, &self.stats);
        out.close(code, reason);
        self.stats.inc(Counter::ClosedByServer);
        self.schedule(key, conn);
    }

    /// Tells the app (once) that the connection is closed.
    pub(super) fn notify_close(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        code: u16,
        reason: &str,
    ) {
        if conn.flags & APP_OPEN != 0 {
            conn.flags &= !APP_OPEN;
            let id = self.id(key, conn.gen);
            if let Some(s) = conn.state.as_mut() {
                self.handler.on_close(id, s, code, reason);
            }
        }
    }

    pub(super) fn fail_io(&mut self, key: usize, conn: &mut Conn<H::State>, e: io::Error) {
        self.stats.inc(Counter::IoErrors);
        if conn.flags & APP_OPEN != 0 {
            let id = self.id(key, conn.gen);
            if let Some(s) = conn.state.as_mut() {
                self.handler.on_error(id, s, &ConnError::Io(e));
            }
        }
        self.notify_close(key, conn, close_code::ABNORMAL, "i/o error");
    }

    /// The peer shut down its side (EOF), though it may still read (half-close): what its
    /// input produced is still sent. A connection with output queued (or a deferred HTTP
    /// answer to come) stays, no longer read, until that is written and its write side shut
    /// down, within the close timeout; one with nothing to send is removed now.
    pub(super) fn peer_eof(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        let conn = &mut conns[key];
        if !self.flush_conn(key, conn) {
            self.remove(conns, key);
            return;
        }
        let backlog = conn.queued() + self.tls_pending(key);
        let keep = match conn.phase() {
            Phase::Open | Phase::Closing | Phase::Finishing => backlog > 0,
            Phase::HttpWait => true,
            Phase::Handshaking | Phase::HttpBody | Phase::Draining => false,
        };
        if !keep {
            self.eof(conns, key);
            return;
        }
        if matches!(conn.phase(), Phase::Open | Phase::Closing) {
            self.stats.inc(Counter::ClosedAbnormal);
            self.notify_close(
                key,
                conn,
                close_code::ABNORMAL,
                "connection closed without a close frame",
            );
            conn.finish(self.now);
            self.schedule(key, conn);
        }
        // No more input: once the queue drains reading resumes, sees the EOF again and removes
        // the connection.
        conn.flags |= READ_PAUSED;
    }

    /// The peer closed its side and nothing is left to send.
    pub(super) fn eof(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        let conn = &mut conns[key];
        if matches!(conn.phase(), Phase::Open | Phase::Closing) {
            self.stats.inc(Counter::ClosedAbnormal);
            self.notify_close(
                key,
                conn,
                close_code::ABNORMAL,
                "connection closed without a close frame",
            );
        }
        self.remove(conns, key);
    }

    /// Drops a connection now, telling the app if it had not been told.
    pub(super) fn abort(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        let conn = &mut conns[key];
        self.notify_close(key, conn, close_code::ABNORMAL, "connection aborted");
        self.remove(conns, key);
    }

    /// Frees the slot and the socket.
    pub(super) fn remove(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        // The cork is empty or this connection's: never let its bytes reach another.
        self.cork.clear();
        if let Some(mut conn) = conns.try_remove(key) {
            // No EPOLL_CTL_DEL: the socket is closed below (its only descriptor), which takes
            // it out of the epoll set; one syscall less per connection.
            if conn.ext.server_takeover() || conn.ext.client_takeover() {
                self.deflate.remove(key);
            }
            if conn.flags & TLS != 0 {
                if let Some(slot) = self.tls.conns.get_mut(key) {
                    *slot = None;
                }
            }
            self.notify_close(key, &mut conn, close_code::ABNORMAL, "connection dropped");
            let ext = self.exts.get_mut(key).and_then(Option::take);
            if let Some(ip) = ext.and_then(|e| e.counted_ip) {
                if let Some(limiter) = &self.global.per_ip {
                    limiter.release(ip, Instant::now());
                }
            }
            self.global.open.fetch_sub(1, SeqCst);
            self.stats.open.fetch_sub(1, Relaxed);
            self.stats.inc(Counter::Closed);
        }
    }

    /// The `disconnect` policy: tells the app, drops the queue (it will not drain) and tries
    /// to say why with a close frame (1008). The caller removes the connection.
    pub(super) fn disconnect_slow(&mut self, key: usize, conn: &mut Conn<H::State>) {
        self.stats.inc(Counter::SlowConsumerDisconnected);
        if conn.flags & APP_OPEN != 0 {
            let id = self.id(key, conn.gen);
            if let Some(s) = conn.state.as_mut() {
                self.handler.on_error(id, s, &ConnError::SlowConsumer);
            }
        }
        self.notify_close(key, conn, close_code::POLICY, "slow consumer");
        conn.queue = None;
        let (payload, n) = crate::proto::frame::close_payload(close_code::POLICY, "slow consumer");
        let mut frame = vec![0x88, n as u8];
        frame.extend_from_slice(&payload[..n]);
        // (Not over TLS: records still queued would have to go first.)
        if conn.flags & TLS == 0 {
            let _ = conn.sock.write(&frame);
        }
    }
}
