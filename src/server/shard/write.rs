//! The write side of a shard: a connection's corked replies and queue written (writev), the
//! dirty connections of a turn flushed, and the pause or resume of reading that follows.

use super::*;

impl<H: Handler> Shard<H> {
    /// Writes a connection's queue (WRITABLE event, or a dirty connection).
    pub(super) fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !self.core.flush_conn(key, conn) {
            self.core.remove(&mut self.conns, key);
        }
    }

    /// Writes every connection given output this turn outside its own read (deliveries from
    /// the app or other shards, late answers).
    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.core.turn.dirty);
        if self.core.uring.is_some() {
            self.flush_dirty_batched(&dirty);
        } else {
            for &(key, gen) in &dirty {
                match self.conns.get_mut(key) {
                    Some(c) if c.gen == gen => c.flags &= !DIRTY,
                    _ => continue,
                }
                self.flush(key);
            }
        }
        // Keep the list's allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.core.turn.dirty.is_empty() {
            self.core.turn.dirty = dirty;
        }
    }
}

impl<H: Handler> Core<H> {
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
                self.turn.pending_read.push((key, conn.gen));
            }
            if conn.phase() == Phase::Finishing {
                if conn.ws.phase() == WsPhase::CloseReceived && conn.flags & TLS == 0 {
                    // The close handshake is complete and our last bytes are with the kernel:
                    // the peer sends nothing more but its FIN, so the server closes the TCP
                    // connection first (RFC 6455 7.1.1), now. close() sends our FIN after the
                    // queued bytes, and nothing unread is left to turn it into a reset; no
                    // shutdown, no wake-up and read for the peer's FIN. (Over TLS the peer's
                    // close_notify may still come: that connection drains as below.)
                    return false;
                }
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
