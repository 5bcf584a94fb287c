//! The write side and the end of connections: corked writes, queues flushed with writev,
//! the slow-consumer policy, closing handshakes and removal.

use super::*;

impl<H: Handler> Core<H> {
    // ----- closing -----

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
        let mut out = Out {
            queue: &mut conn.queue,
            cork: None,
            ws: &mut conn.ws,
            now: self.now,
            stats: &self.stats,
            deflate: None,
        };
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
                if let Some(slot) = self.tls.get_mut(key) {
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

    // ----- writing -----

    /// Writes what this connection has corked and queued. Returns false when the connection
    /// must be dropped (the caller removes it).
    pub(super) fn flush_conn(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
        // A paused connection's input is not read, so its liveness is judged by its output:
        // bytes written to it (its client is reading) count as activity, like input.
        let paused = conn.flags & READ_PAUSED != 0 && conn.phase() == Phase::Open;
        let out_before = if paused {
            self.stats.get(Counter::BytesOut)
        } else {
            0
        };
        let written = if conn.flags & TLS != 0 {
            self.write_tls(key, conn)
        } else {
            self.write_plain(key, conn)
        };
        if !written {
            return false;
        }
        if paused && self.stats.get(Counter::BytesOut) > out_before {
            conn.ws.on_input(self.now);
        }
        self.after_write(key, conn)
    }

    /// Writes the cork, then the queue, as they are. False: the connection failed.
    fn write_plain(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
        if !self.cork.is_empty() {
            let queue_empty = conn.queue.as_ref().is_none_or(|q| q.is_empty());
            let mut written = 0;
            if queue_empty {
                match write_once(&mut conn.sock, &self.cork) {
                    Ok(n) => written = n,
                    Err(e) => {
                        self.cork.clear();
                        self.fail_io(key, conn, e);
                        return false;
                    }
                }
                self.stats.add(Counter::BytesOut, written as u64);
            }
            if written < self.cork.len() {
                let q = conn.queue.get_or_insert_with(Default::default);
                q.push_bytes(&self.cork[written..]);
            }
            self.cork.clear();
            if self.cork.capacity() > CORK_FLUSH_AT * 2 {
                self.cork = Vec::with_capacity(CORK_CAPACITY);
            }
        }
        if let Some(q) = conn.queue.as_mut() {
            if conn.flags & WANT_WRITABLE == 0 || !q.is_empty() {
                match q.flush(&mut conn.sock) {
                    Ok((_, n)) => self.stats.add(Counter::BytesOut, n as u64),
                    Err(e) => {
                        self.fail_io(key, conn, e);
                        return false;
                    }
                }
            }
        }
        true
    }

    /// What follows a write: interest in WRITABLE, the slow-consumer policy, and the shutdown
    /// of a finished connection. False: the connection must be dropped.
    pub(super) fn after_write(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
        let backlog = conn.queued() + self.tls_pending(key);
        if backlog == 0 {
            conn.queue = None;
            if conn.flags & WANT_WRITABLE != 0 {
                conn.flags &= !WANT_WRITABLE;
                let _ =
                    self.poll
                        .registry()
                        .reregister(&mut conn.sock, Token(key), Interest::READABLE);
            }
            if conn.flags & READ_PAUSED != 0 {
                conn.flags = (conn.flags & !READ_PAUSED) | PENDING_READ;
                self.pending_read.push((key, conn.gen));
            }
            if conn.phase() == Phase::Finishing {
                let _ = conn.sock.shutdown(Shutdown::Write);
                conn.flags |= DRAINING;
                conn.ws.finish(self.now);
                self.schedule(key, conn);
            }
            return true;
        }
        if conn.flags & WANT_WRITABLE == 0 {
            conn.flags |= WANT_WRITABLE;
            let _ = self.poll.registry().reregister(
                &mut conn.sock,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            );
        }
        if backlog > self.cfg.write_queue_limit && conn.phase() == Phase::Open {
            match self.cfg.slow_consumer {
                SlowConsumerPolicy::Pause => {
                    if conn.flags & READ_PAUSED == 0 {
                        conn.flags |= READ_PAUSED;
                        self.stats.inc(Counter::SlowConsumerPaused);
                    }
                }
                SlowConsumerPolicy::DropOldest => {
                    if let Some(q) = conn.queue.as_mut() {
                        let n = q.drop_oldest_shared(self.cfg.write_queue_limit / 2);
                        self.stats.add(Counter::SlowConsumerDropped, n as u64);
                    }
                    // Its own replies (owned bytes) are not dropped: stop reading its input
                    // until they drain, as under `pause`.
                    if conn.queued() > self.cfg.write_queue_limit && conn.flags & READ_PAUSED == 0 {
                        conn.flags |= READ_PAUSED;
                        self.stats.inc(Counter::SlowConsumerPaused);
                    }
                }
                SlowConsumerPolicy::Disconnect => {
                    self.disconnect_slow(key, conn);
                    return false;
                }
            }
        }
        true
    }
}

impl<H: Handler> Core<H> {
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

/// One `write` of the cork buffer; WouldBlock counts as nothing written.
fn write_once(sock: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match sock.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
