//! The HTTP request of a connection, before it is a WebSocket or after it was refused: the
//! upgrade (the gate, the app's `on_open`, deflate, the 101), and plain requests, served by
//! the server's own routes (CORS preflight, the status page, `/healthz`, `/metrics` for apps
//! without their own) or handed complete, body and all, to the app's `on_http`. Each ends
//! with the answer queued and the connection finishing.

use super::*;
use crate::server::stats::Refusal;
use crate::server::status::StatusAccess;

impl<H: Handler> Core<H> {
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
}
