//! The read side of a shard: read into the shard's buffer (after any kept bytes), run the
//! input through the handshake or the decoder and the app, keep only what is unfinished.

use super::*;
use crate::server::stats::Refusal;
use crate::server::status::StatusAccess;

impl<H: Handler> Shard<H> {
    // ----- reading -----

    /// Reads what the socket has and processes it, up to the fairness cap. `to_eof`: keep
    /// reading past short reads (the peer has shut down its side).
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
        if conn.flags & TLS != 0 {
            return self.read_tls(key, to_eof);
        }
        for round in 0.. {
            if round == MAX_READS_PER_EVENT {
                conn.flags |= PENDING_READ;
                core.pending_read.push((key, conn.gen));
                break;
            }
            let stash = conn.stash.take();
            let kept = stash.as_ref().map_or(0, |s| s.len());
            let (result, space) = if kept * 2 > rbuf.len() {
                // A large unfinished HTTP request: grow it in place rather than through the
                // read buffer.
                let mut big = stash.unwrap_or_default();
                let r = read_append(&mut conn.sock, &mut big, rbuf);
                let space = rbuf.len();
                let n = match r {
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
                (n, space)
            } else {
                if let Some(s) = &stash {
                    rbuf[..kept].copy_from_slice(s);
                }
                let space = rbuf.len() - kept;
                let n = match conn.sock.read(&mut rbuf[kept..]) {
                    Ok(0) => {
                        // The peer may still read (half-close): what its input produced is sent.
                        core.peer_eof(conns, key);
                        return;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.stash.keep(&rbuf[..kept], stash);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        conn.stash.keep(&rbuf[..kept], stash);
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
                let used = core.process(key, conn, &mut rbuf[..total]);
                conn.stash.keep(&rbuf[used..total], stash);
                (n, space)
            };
            if core.cork.len() >= CORK_FLUSH_AT && !core.flush_conn(key, conn) {
                core.remove(conns, key);
                return;
            }
            if conn.flags & READ_PAUSED != 0 || (result < space && !to_eof) {
                // A short read drained the socket: the next byte brings a new edge.
                break;
            }
        }
        if !core.flush_conn(key, conn) {
            core.remove(conns, key);
        }
    }

    /// Continues connections with input left unread.
    pub(super) fn resume_pending(&mut self) {
        let pending = std::mem::take(&mut self.core.pending_read);
        for (key, gen) in pending {
            match self.conns.get_mut(key) {
                Some(c) if c.gen == gen && c.flags & PENDING_READ != 0 => {
                    c.flags &= !PENDING_READ;
                }
                _ => continue,
            }
            self.read(key, true);
        }
    }

    // ----- writing -----

    /// Writes a connection's queue (WRITABLE event, or a dirty connection).
    pub(super) fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !self.core.flush_conn(key, conn) {
            self.core.remove(&mut self.conns, key);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
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
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
    }
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
            Phase::HttpWait | Phase::Finishing | Phase::Draining => data.len(),
        }
    }

    pub(super) fn handshake(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        data: &mut [u8],
    ) -> usize {
        let (req, head_len) = match handshake::parse_request(data, self.cfg.max_header_bytes) {
            Ok(None) => return 0,
            Ok(Some(parsed)) => parsed,
            Err(e) => {
                let why = Refusal::of_parse_status(e.status);
                self.note_refusal(why, e.status, &e.reason, None, Some(&conn.sock));
                return self.refuse(key, conn, &e, data.len());
            }
        };
        let id = self.id(key, conn.gen);
        let key_ws = match req.websocket() {
            Ok(Some(k)) => k,
            Ok(None) => return self.plain_http(key, conn, &req, head_len, data),
            Err(e) => {
                let why = Refusal::of_parse_status(e.status);
                self.note_refusal(why, e.status, &e.reason, Some(req.path), Some(&conn.sock));
                return self.refuse(key, conn, &e, data.len());
            }
        };
        if req.path == crate::server::status::WS_PATH && self.cfg.status.on() {
            // The server's own page, not the app's: its own access check, not the gate's.
            return match self.open_viewer(key, conn, &req, &key_ws, data.len()) {
                // Frames may follow the request in the same read.
                Ok(()) => head_len + self.frames(key, conn, &mut data[head_len..]),
                Err(n) => n,
            };
        }
        if let Err(n) = self.gate(key, conn, &req, data.len()) {
            return n;
        }
        let info = ConnInfo {
            id,
            sock: &conn.sock,
            token: self.exts.get(key).and_then(|e| e.as_ref()?.token.as_ref()),
        };
        match self.handler.on_open(&req, &info) {
            Ok(accept) => {
                debug_assert!(self.cork.is_empty());
                let params = deflate::negotiate(
                    req.header_values("sec-websocket-extensions"),
                    &self.cfg.deflate,
                );
                let ext = params.map(|p| {
                    self.ext_buf.clear();
                    p.write_response(&mut self.ext_buf);
                    conn.ext = Packed(p.pack());
                    self.stats.inc(Counter::DeflateConnections);
                    // ASCII by construction.
                    std::str::from_utf8(&self.ext_buf).unwrap_or_default()
                });
                handshake::write_accept_response(&mut self.cork, &key_ws, accept.protocol, ext);
                conn.state = Some(accept.state);
            }
            Err(e) => {
                self.stats.inc(Counter::HandshakeRejected);
                let why = Refusal::of_app_status(e.status);
                self.note_refusal(why, e.status, &e.reason, Some(req.path), Some(&conn.sock));
                return self.refuse(key, conn, &e, data.len());
            }
        }
        self.stats.inc(Counter::HandshakesOk);
        conn.ws.open(self.now);
        conn.flags |= APP_OPEN;
        if self.lifetime_ticks > 0 {
            let at = self
                .now
                .saturating_add(self.jittered_lifetime(key, conn.gen));
            self.ext_mut(key).max_life_at = Some(at);
        }
        self.schedule(key, conn);
        // Frames may follow the request in the same read.
        head_len + self.frames(key, conn, &mut data[head_len..])
    }

    /// Answers a plain HTTP request and closes the connection.
    pub(super) fn plain_http(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        req: &handshake::Request<'_>,
        head_len: usize,
        data: &[u8],
    ) -> usize {
        // The head is parsed again on every read of an unfinished body: act on it once.
        let first = conn.phase() == Phase::Handshaking;
        if first {
            self.stats.inc(Counter::HttpRequests);
        }
        if req.header("transfer-encoding").is_some() {
            let e = HttpError::new(411, "chunked bodies are not supported; send Content-Length");
            return self.refuse(key, conn, &e, data.len());
        }
        let body_len = match req.body_length() {
            Ok(n) => n.unwrap_or(0),
            Err(e) => return self.refuse(key, conn, &e, data.len()),
        };
        if body_len > self.cfg.max_http_body {
            let e = HttpError::new(413, "request body too large");
            return self.refuse(key, conn, &e, data.len());
        }
        let healthz = req.path == "/healthz" && (req.method == "GET" || req.method == "HEAD");
        // CORS: a page from an allowed origin may call these routes with `fetch`.
        let cors = self.cors_origin(req);
        let preflight = cors.is_some() && req.method == "OPTIONS";
        let status_page = self.cfg.status.on()
            && StatusAccess::is_page(req.path)
            && (req.method == "GET" || req.method == "HEAD");
        if first {
            // The deadline stays the handshake's, from accept.
            conn.flags |= HTTP;
            if !healthz && !preflight && !status_page {
                if let Some(resp) = self.handler.on_http_head(req) {
                    // Refused on its head: the body is never read into memory (whatever of it
                    // came with the head is dropped; the rest is discarded while draining).
                    self.http_answer(key, conn, req, resp);
                    return data.len();
                }
            }
        }
        if data.len() < head_len + body_len {
            return 0; // wait for the whole body
        }
        let body = &data[head_len..head_len + body_len];
        let reply = if preflight {
            // A preflight: which methods and headers the real request may use.
            let mut r = HttpResponse::text(204, "");
            r.headers.extend(
                handshake::CORS_PREFLIGHT_HEADERS
                    .iter()
                    .map(|(n, v)| (*n, v.to_string())),
            );
            HttpReply::Respond(r)
        } else if status_page {
            HttpReply::Respond(self.status_page(req))
        } else if healthz {
            HttpReply::Respond(self.handler.healthz())
        } else {
            let info = ConnInfo {
                id: self.id(key, conn.gen),
                sock: &conn.sock,
                token: None,
            };
            self.handler.on_http(req, body, &info)
        };
        let resp = match reply {
            HttpReply::Respond(r) => Some(r),
            // An app without its own metrics still has the server's.
            HttpReply::NotFound if req.path == "/metrics" && req.method == "GET" => {
                let mut r = HttpResponse::text(200, render_metrics(&self.all_stats, ""));
                r.content_type = METRICS_CONTENT_TYPE;
                Some(r)
            }
            HttpReply::NotFound => None,
            HttpReply::Defer => {
                if let Some(origin) = cors {
                    self.ext_mut(key).cors_origin = Some(origin.into());
                }
                // Still HTTP: waiting for its answer, within the close timeout.
                conn.ws.finish(self.now);
                self.schedule(key, conn);
                return data.len();
            }
        };
        let resp = resp.unwrap_or_else(|| HttpResponse::text(404, "not found\n"));
        self.http_answer(key, conn, req, resp);
        data.len()
    }

    /// The request's Origin, if CORS is on and allows it.
    fn cors_origin<'r>(&self, req: &handshake::Request<'r>) -> Option<&'r str> {
        match (&self.cfg.cors_origins, req.origin) {
            (Some(list), Some(origin)) if list.allows(Some(origin)) => Some(origin),
            _ => None,
        }
    }

    /// Writes a plain HTTP answer and finishes the connection.
    fn http_answer(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        req: &handshake::Request<'_>,
        resp: HttpResponse,
    ) {
        if resp.status >= 400 {
            self.stats.http_status(resp.status);
        }
        let mut headers: Vec<(&str, &str)> =
            resp.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Some(origin) = self.cors_origin(req) {
            headers.extend(handshake::cors_headers(origin));
        }
        let body: &[u8] = if req.method == "HEAD" {
            &[]
        } else {
            &resp.body
        };
        handshake::write_response(
            &mut self.cork,
            resp.status,
            &headers,
            resp.content_type,
            body,
        );
        self.finish(key, conn);
    }

    /// Answers a refused handshake with its status and closes.
    pub(super) fn refuse(
        &mut self,
        key: usize,
        conn: &mut Conn<H::State>,
        e: &HttpError,
        len: usize,
    ) -> usize {
        self.stats.http_status(e.status);
        tracing::debug!(
            shard = self.index,
            status = e.status,
            "handshake refused: {}",
            e.reason
        );
        handshake::write_error_response(&mut self.cork, e);
        self.finish(key, conn);
        len
    }

    /// The last bytes are queued: shut down once they are written.
    pub(super) fn finish(&mut self, key: usize, conn: &mut Conn<H::State>) {
        conn.finish(self.now);
        self.schedule(key, conn);
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
