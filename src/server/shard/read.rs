//! The read side of a shard: read into the shard's buffer (after any kept bytes), run the
//! input through the HTTP request (`http.rs`) or the frame decoder and the app, keep only what
//! is unfinished.

use super::*;

impl<H: Handler> Shard<H> {
    // ----- reading -----

    /// Reads what the socket has and processes it, up to the fairness cap. `to_eof`: keep
    /// reading past short reads (the peer has shut down its side).
    ///
    /// One path for plaintext and TLS: TLS is a layer between the socket and `process`. Its
    /// unfinished ciphertext waits in the session (rustls may refer to it) where plaintext's
    /// unfinished input waits in the connection's stash, and its records are decrypted in the
    /// read buffer before the plaintext goes through the same `process`.
    pub(super) fn read(&mut self, key: usize, to_eof: bool) {
        let Self { conns, rbuf, core } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.flags & READ_PAUSED != 0 {
            return;
        }
        // Input left undecoded when the connection paused goes first.
        core.process_kept(key, conn);
        if conn.flags & READ_PAUSED != 0 {
            if !core.flush_conn(key, conn) {
                core.remove(conns, key);
            }
            return;
        }
        let tls = conn.flags & TLS != 0;
        if !tls && discards_input(conn.phase()) {
            return self.discard(key, to_eof);
        }
        for round in 0.. {
            if round == MAX_READS_PER_EVENT {
                conn.flags |= PENDING_READ;
                core.turn.pending_read.push((key, conn.gen));
                break;
            }
            let stash = if tls {
                core.tls_of(key).and_then(|t| t.incoming.take())
            } else {
                conn.stash.take()
            };
            let kept = stash.as_ref().map_or(0, |s| s.len());
            if tls && kept + TLS_MIN_READ > rbuf.len() {
                // Unfinished records larger than any handshake message rustls accepts.
                core.stats.inc(Counter::TlsErrors);
                tracing::debug!(shard = core.index, kept, "TLS: unfinished input too large");
                core.abort(conns, key);
                return;
            }
            let (n, space) = if !tls && kept * 2 > rbuf.len() {
                // A large unfinished HTTP request: grow it in place rather than through the
                // read buffer.
                let mut big = stash.unwrap_or_default();
                let cap = core.cfg.max_header_bytes + core.cfg.max_http_body + rbuf.len();
                let n = match read_append(&conn.sock, &mut big, rbuf.len(), cap) {
                    Ok(n) if n > 0 => n,
                    other => {
                        conn.stash.set(big);
                        if let Err(e) = other {
                            if e.kind() == io::ErrorKind::WouldBlock {
                                break;
                            }
                            core.fail_io(key, conn, e);
                            core.remove(conns, key);
                        } else {
                            core.peer_eof(conns, key);
                        }
                        return;
                    }
                };
                core.stats.add(Counter::BytesIn, n as u64);
                core.touch(conn);
                let len = big.len();
                let used = core.process(key, conn, &mut big[..len]);
                big.drain(..used);
                conn.stash.set(big);
                (n, rbuf.len())
            } else {
                if let Some(s) = &stash {
                    rbuf[..kept].copy_from_slice(s);
                }
                let space = rbuf.len() - kept;
                let n = match conn.sock.read(&mut rbuf[kept..]) {
                    Ok(0) => {
                        // The peer may still read (half-close): what its input produced is
                        // sent.
                        core.peer_eof(conns, key);
                        return;
                    }
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        if tls {
                            core.keep_incoming(key, &rbuf[..kept], stash);
                        } else {
                            conn.stash.keep(&rbuf[..kept], stash);
                        }
                        if e.kind() == io::ErrorKind::WouldBlock {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        core.fail_io(key, conn, e);
                        core.remove(conns, key);
                        return;
                    }
                };
                core.stats.add(Counter::BytesIn, n as u64);
                core.touch(conn);
                let total = kept + n;
                if tls {
                    // Records are decrypted in every phase, so rustls' state stays whole; after
                    // the last answer the plaintext is discarded (`process`), as for plaintext.
                    match core.decrypt_and_process(key, conn, &mut rbuf[..total], stash) {
                        TlsInput::More => {}
                        TlsInput::PeerClosed => {
                            core.peer_eof(conns, key);
                            return;
                        }
                        TlsInput::Failed(e) => {
                            core.tls_failed(key, conn, &e);
                            break;
                        }
                    }
                } else {
                    let used = core.process(key, conn, &mut rbuf[..total]);
                    conn.stash.keep(&rbuf[used..total], stash);
                }
                (n, space)
            };
            if core.cork.len() >= CORK_FLUSH_AT && !core.flush_conn(key, conn) {
                core.remove(conns, key);
                return;
            }
            if conn.flags & READ_PAUSED != 0 || (n < space && !to_eof) {
                // A short read drained the socket: the next byte brings a new edge.
                break;
            }
        }
        if !core.flush_conn(key, conn) {
            core.remove(conns, key);
        }
    }

    /// Input after a connection's last answer (a refused request's body, what follows a close
    /// frame) thrown away in the kernel, without reading it into the buffer; the same fairness
    /// cap as `read`. TLS input is decrypted as usual instead (rustls' state stays whole).
    fn discard(&mut self, key: usize, to_eof: bool) {
        let Self { conns, core, .. } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        for round in 0.. {
            if round == MAX_READS_PER_EVENT {
                conn.flags |= PENDING_READ;
                core.turn.pending_read.push((key, conn.gen));
                break;
            }
            match recv_discard(&conn.sock, DISCARD_PER_CALL) {
                Ok(0) => {
                    core.peer_eof(conns, key);
                    return;
                }
                Ok(n) => {
                    core.stats.add(Counter::BytesIn, n as u64);
                    core.touch(conn);
                    if n < DISCARD_PER_CALL && !to_eof {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    core.fail_io(key, conn, e);
                    core.remove(conns, key);
                    return;
                }
            }
        }
        if !core.flush_conn(key, conn) {
            core.remove(conns, key);
        }
    }

    /// Continues connections with input left unread.
    ///
    /// Within the turn's budget: once the turn has worked `TURN_BUDGET`, the rest wait, first
    /// in line, for the next turn, which polls (without waiting) before it comes back to them.
    /// A few connections sending as fast as they can then cannot hold a message from another
    /// connection for more than about the budget. At least one is continued every turn, so
    /// none waits forever behind busy turns.
    pub(super) fn resume_pending(&mut self) {
        let pending = std::mem::take(&mut self.core.turn.pending_read);
        let mut rest = pending.into_iter();
        let mut continued = 0;
        while let Some((key, gen)) = rest.next() {
            if continued > 0 && self.core.over_budget() {
                let newer = std::mem::take(&mut self.core.turn.pending_read);
                let waiting = &mut self.core.turn.pending_read;
                waiting.push((key, gen));
                waiting.extend(rest);
                waiting.extend(newer);
                return;
            }
            match self.conns.get_mut(key) {
                Some(c) if c.gen == gen && c.flags & PENDING_READ != 0 => {
                    c.flags &= !PENDING_READ;
                }
                _ => continue,
            }
            continued += 1;
            self.read(key, true);
        }
    }
}

/// The phases whose input `process` throws away whole.
pub(super) fn discards_input(phase: Phase) -> bool {
    matches!(phase, Phase::HttpWait | Phase::Finishing | Phase::Draining)
}

impl<H: Handler> Core<H> {
    // ----- processing input -----

    /// Processes the input an open connection kept from earlier reads, before more is read:
    /// what it left undecoded when its write queue reached the limit (otherwise at most an
    /// unfinished frame head). Its replies are in the cork; the caller flushes.
    pub(super) fn process_kept(&mut self, key: usize, conn: &mut Conn<H::State>) {
        if !conn.ws.wants_input() {
            return;
        }
        let tls = conn.flags & TLS != 0;
        let kept = if tls {
            self.tls_of(key).and_then(|t| t.plain.take())
        } else {
            conn.stash.take()
        };
        let Some(mut v) = kept else {
            return;
        };
        let len = v.len();
        let used = self.process(key, conn, &mut v[..len]);
        v.drain(..used.min(len));
        if tls {
            if let Some(t) = self.tls_of(key) {
                t.plain.set(v);
            }
        } else {
            conn.stash.set(v);
        }
    }

    /// Processes input by phase; returns how many bytes were consumed (the rest is kept).
    pub(super) fn process(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        data: &mut [u8],
    ) -> usize {
        match conn.phase() {
            Phase::Handshaking | Phase::HttpBody => self.handshake(key, conn, data),
            Phase::Open | Phase::Closing => self.frames(key, conn, data),
            _ => {
                debug_assert!(discards_input(conn.phase()));
                data.len()
            }
        }
    }

    /// Gives back the inflate buffer after a large message.
    fn trim_inflated(&mut self) {
        if self.inflated.capacity() > CORK_FLUSH_AT {
            self.inflated = Vec::new();
        }
    }

    /// Runs the frames of an open connection through the decoder and the app.
    pub(super) fn frames(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        data: &mut [u8],
    ) -> usize {
        let id = self.id(key, conn.gen);
        let Conn {
            sock,
            ws,
            flags,
            decoder,
            queue,
            state,
            ext,
            ..
        } = conn;
        let now = self.now;
        let ext = *ext;
        let dec_cfg = if ext.on() {
            DecoderConfig {
                rsv_allowed: deflate::RSV1,
                ..self.dec_cfg
            }
        } else {
            self.dec_cfg
        };
        let token = self.exts.get(key).and_then(|e| e.as_ref()?.token.as_ref());
        let limit = self.cfg.write_queue_limit;
        let mut pos = 0;
        loop {
            // Its output is at the limit: decode nothing more until it drains (the rest of the
            // input is kept, at most what one read brought). So the queue holds at most the
            // limit plus the replies to one message.
            if ws.phase() == WsPhase::Open
                && queue.as_ref().map_or(0, |q| q.len()) + self.cork.len() >= limit
            {
                if *flags & READ_PAUSED == 0 {
                    *flags |= READ_PAUSED;
                    self.stats.inc(Counter::SlowConsumerPaused);
                }
                self.trim_inflated();
                return pos;
            }
            // A 1007 from inflating is bad compressed data, not bad UTF-8: counted apart.
            let mut bad_deflate = false;
            let step = match decoder.next(&dec_cfg, &mut data[pos..]) {
                Ok(Decoded::Event(n, Event::Compressed { text, payload })) => self
                    .deflate
                    .inflate(
                        key,
                        ext,
                        payload,
                        &mut self.inflated,
                        dec_cfg.max_message_size,
                        &self.stats,
                    )
                    .inspect_err(|e| bad_deflate = e.code == close_code::INVALID_DATA)
                    .and_then(|()| deflate::inflated_event(&self.inflated, text))
                    .map(|ev| Decoded::Event(n, ev)),
                other => other,
            };
            let mut out = Out {
                queue: &mut *queue,
                cork: Some(&mut self.cork),
                ws: &mut *ws,
                now,
                stats: &self.stats,
                deflate: ext.on().then_some(OutDeflate {
                    ctx: &mut self.deflate,
                    key,
                    ext,
                }),
            };
            match step {
                Ok(Decoded::Event(n, event)) => {
                    pos += n;
                    let was_open = out.ws.may_send();
                    // Pings are answered and a close first from the peer echoed (same code)
                    // by the lifecycle; what is left is the app's.
                    match out.lifecycle(|ws, out| ws.on_event(event, now, out)) {
                        Input::Message(msg) => {
                            if let (true, Some(state)) = (was_open, state.as_mut()) {
                                self.stats.inc(Counter::MessagesIn);
                                let mut ctx = Ctx {
                                    id,
                                    state,
                                    sock: &*sock,
                                    token,
                                    out,
                                };
                                self.handler.on_message(&mut ctx, msg);
                            }
                        }
                        Input::Ping(_) | Input::Pong(_) | Input::Ignored => {}
                        Input::Close(cf) => {
                            // Then the TCP connection is closed (`Finishing`).
                            self.stats.inc(Counter::ClosedByPeer);
                            if *flags & APP_OPEN != 0 {
                                *flags &= !APP_OPEN;
                                if let Some(s) = state.as_mut() {
                                    self.handler.on_close(id, s, cf.code, cf.reason);
                                }
                            }
                            break;
                        }
                    }
                    if was_open && !ws.may_send() {
                        // The app called close().
                        self.stats.inc(Counter::ClosedByServer);
                        break;
                    }
                }
                Ok(Decoded::Progress(n)) => pos += n,
                Ok(Decoded::Incomplete) => {
                    self.trim_inflated();
                    return pos;
                }
                Err(e) => {
                    self.stats.inc(match e.code {
                        _ if bad_deflate => Counter::CloseBadCompressed,
                        close_code::INVALID_DATA => Counter::Close1007,
                        close_code::TOO_BIG => Counter::Close1009,
                        _ => Counter::Close1002,
                    });
                    // Our close with its code, then the TCP connection is closed (`Finishing`).
                    out.lifecycle(|ws, out| ws.on_error(e, now, out));
                    if *flags & APP_OPEN != 0 {
                        *flags &= !APP_OPEN;
                        if let Some(s) = state.as_mut() {
                            self.handler.on_error(id, s, &ConnError::Protocol(e));
                            self.handler.on_close(id, s, e.code, e.reason);
                        }
                    }
                    break;
                }
            }
        }
        self.trim_inflated();
        // The phase changed: a new deadline, and whatever else was read is discarded.
        self.schedule(key, conn);
        data.len()
    }
}

/// Input past a connection's last answer is thrown away in calls of at most this many bytes.
const DISCARD_PER_CALL: usize = 1 << 20;

/// Throws away up to `max` bytes of the socket's input inside the kernel: TCP's `recv` with
/// `MSG_TRUNC` drops the data instead of copying it out (tcp(7)), so no buffer is needed.
fn recv_discard(sock: &TcpStream, max: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: with MSG_TRUNC a TCP socket writes nothing to the buffer; a null one is valid.
    let r = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            std::ptr::null_mut(),
            max,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Reads once, at most `max` bytes, straight into `big`'s spare capacity (the large-request
/// path: a 1 MiB publish body is copied out of the kernel once, not through the read buffer).
/// The buffer doubles as it grows, but never past `cap` (or what this read needs), so what a
/// request holds stays within its stated bound (limits.md: head + body + one read), not twice
/// it.
fn read_append(sock: &TcpStream, big: &mut Vec<u8>, max: usize, cap: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    if big.capacity() - big.len() < max {
        let need = big.len() + max;
        let target = (big.capacity() * 2).max(need).min(cap.max(need));
        big.reserve_exact(target - big.len());
    }
    let spare = big.spare_capacity_mut();
    let want = spare.len().min(max);
    loop {
        // SAFETY: `spare` is `want` or more writable bytes of `big`'s allocation; recv writes
        // at most `want` and tells how many.
        let r = unsafe { libc::recv(sock.as_raw_fd(), spare.as_mut_ptr().cast(), want, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = r as usize;
        // SAFETY: recv initialized the first `n` bytes past the length.
        unsafe { big.set_len(big.len() + n) };
        return Ok(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large request grows its buffer by doubling, but never past its bound: 1 MiB read
    /// 64 KiB at a time under a cap of 1 MiB + 72 KiB ends at most at the cap (doubling
    /// alone would have taken it to 2 MiB).
    #[test]
    fn a_large_request_buffer_stays_within_its_cap() {
        const TOTAL: usize = 1 << 20;
        const READ: usize = 64 << 10;
        const CAP: usize = TOTAL + 8 * 1024 + READ;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&vec![7u8; TOTAL]).unwrap();
        });
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sock = TcpStream::from_std(sock);
        let mut big = Vec::new();
        while big.len() < TOTAL {
            let n = read_append(&sock, &mut big, READ, CAP).unwrap();
            assert!(n > 0 && n <= READ);
            assert!(
                big.capacity() <= CAP,
                "capacity {} past {CAP}",
                big.capacity()
            );
        }
        writer.join().unwrap();
        assert_eq!(big.len(), TOTAL);
        assert!(big.iter().all(|&b| b == 7));
    }
}
