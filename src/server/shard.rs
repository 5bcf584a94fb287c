//! One reactor thread: its own epoll (mio `Poll`), SO_REUSEPORT listener, slab of connections,
//! read buffer, cork buffer and timer wheel. `Shard::run` reads top to bottom: poll, dispatch,
//! fire timers, flush. Owns I/O and connection lifecycles; must not know about topics.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::api::{ShardApi, ShardLink};
use super::config::{Config, SlowConsumerPolicy};
use super::conn::*;
use super::handler::{ConnError, ConnId, ConnInfo, Ctx, Handler, HttpReply, HttpResponse, Message};
use super::stats::{Counter, ShardStats};
use super::timer::{self, ms_to_ticks, Entry, TimerWheel, NOT_ARMED, TICK_MS};
use super::Global;
use crate::proto::handshake::{self, HttpError};
use crate::proto::{close_code, Decoded, DecoderConfig, Event, Role};

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

/// Full reads of one connection per readiness event before others get a turn.
const MAX_READS_PER_EVENT: usize = 16;
/// The cork buffer is flushed early past this size, and shrunk back after a big message.
const CORK_FLUSH_AT: usize = 256 << 10;
const CORK_CAPACITY: usize = 64 << 10;
/// Accepting pauses this long after EMFILE/ENFILE.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// Everything of a shard but its connections and read buffer, so both can be borrowed
/// alongside it.
pub(crate) struct Core<H: Handler> {
    index: u16,
    handler: H,
    poll: Poll,
    cfg: Arc<Config>,
    dec_cfg: DecoderConfig,
    stats: Arc<ShardStats>,
    all_stats: Arc<[Arc<ShardStats>]>,
    global: Arc<Global>,
    links: Arc<[ShardLink<H::Msg>]>,
    inbox: mpsc::Receiver<H::Msg>,
    /// Shards posted to this turn, woken once at its end.
    wake: Vec<bool>,
    cork: Vec<u8>,
    wheel: TimerWheel,
    start: Instant,
    /// The current tick.
    now: u32,
    next_gen: u32,
    /// Connections with output to flush at the end of the turn, as (key, gen).
    dirty: Vec<(usize, u32)>,
    /// Connections with input left unread (fairness cap, or reading resumed).
    pending_read: Vec<(usize, u32)>,
    due: Vec<Entry>,
    // Deadlines in ticks.
    handshake_ticks: u32,
    idle_ticks: u32,
    ping_ticks: u32,
    pong_ticks: u32,
    close_ticks: u32,
    // Accepting.
    listener: Option<TcpListener>,
    accept_more: bool,
    accept_paused_until: Option<u32>,
    emfile_since_log: u64,
    emfile_logged_at: Option<Instant>,
    // Shutting down.
    draining_until: Option<u32>,
}

/// What a shard shares with the others.
pub(crate) struct Shared<M> {
    pub stats: Arc<[Arc<ShardStats>]>,
    pub global: Arc<Global>,
    pub links: Arc<[ShardLink<M>]>,
    pub inbox: mpsc::Receiver<M>,
}

pub(crate) struct Shard<H: Handler> {
    conns: Slab<Conn<H::State>>,
    rbuf: Box<[u8]>,
    core: Core<H>,
}

fn to_ticks(d: Duration) -> u32 {
    ms_to_ticks(d.as_millis().min(u32::MAX as u128 / 2) as u64)
}

impl<H: Handler> Shard<H> {
    pub fn new(
        index: u16,
        handler: H,
        poll: Poll,
        mut listener: TcpListener,
        cfg: Arc<Config>,
        shared: Shared<H::Msg>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let dec_cfg = DecoderConfig {
            role: Role::Server,
            max_message_size: cfg.max_message_size,
            rsv_allowed: 0,
        };
        let core = Core {
            index,
            handler,
            poll,
            dec_cfg,
            stats: shared.stats[index as usize].clone(),
            wake: vec![false; shared.links.len()],
            all_stats: shared.stats,
            global: shared.global,
            links: shared.links,
            inbox: shared.inbox,
            cork: Vec::with_capacity(CORK_CAPACITY),
            wheel: TimerWheel::new(0),
            start: Instant::now(),
            now: 0,
            next_gen: 0,
            dirty: Vec::new(),
            pending_read: Vec::new(),
            due: Vec::new(),
            handshake_ticks: to_ticks(cfg.handshake_timeout).max(1),
            idle_ticks: to_ticks(cfg.idle_timeout),
            ping_ticks: to_ticks(cfg.ping_interval),
            pong_ticks: to_ticks(cfg.pong_timeout).max(1),
            close_ticks: to_ticks(cfg.close_timeout).max(1),
            listener: Some(listener),
            accept_more: false,
            accept_paused_until: None,
            emfile_since_log: 0,
            emfile_logged_at: None,
            draining_until: None,
            cfg,
        };
        Ok(Self {
            conns: Slab::new(),
            rbuf: vec![0u8; core.cfg.read_buffer_size.max(4096)].into_boxed_slice(),
            core,
        })
    }

    /// The event loop. Returns when a graceful shutdown has finished.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.core.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.core.index, "poll failed: {e}");
                    return;
                }
            }
            let busy_from = Instant::now();
            self.core.tick();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        if ev.is_writable() {
                            self.flush(key);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // With the peer's FIN already in, a short read does not mean
                            // drained: the EOF after the data brings no new edge.
                            self.read(key, ev.is_read_closed() || ev.is_error());
                        }
                    }
                }
            }
            if self.core.accept_more {
                // A batch cap was hit or the EMFILE back-off ended: the listener's edge will
                // not fire again for connections already waiting.
                self.accept();
            }
            self.app_hooks();
            self.resume_pending();
            self.fire_timers();
            self.flush_dirty();
            self.wake_peers();
            if self.check_shutdown() {
                return;
            }
            let busy = busy_from.elapsed().as_micros() as u64;
            self.core.stats.loop_lag_us.store(busy, Relaxed);
        }
    }

    /// Lends the shard to the app: messages from other shards, then its once-a-turn hook.
    fn app_hooks(&mut self) {
        let Self { conns, core, .. } = self;
        let Core {
            handler,
            index,
            dirty,
            stats,
            all_stats,
            cfg,
            links,
            wake,
            inbox,
            now,
            ..
        } = core;
        let mut api = ShardApi {
            index: *index,
            conns,
            dirty,
            stats,
            all_stats,
            write_queue_limit: cfg.write_queue_limit,
            links,
            wake,
            now: *now,
        };
        while let Ok(msg) = inbox.try_recv() {
            handler.on_shard_msg(&mut api, msg);
        }
        handler.on_turn(&mut api);
    }

    /// Wakes the shards posted to this turn.
    fn wake_peers(&mut self) {
        let c = &mut self.core;
        for (i, w) in c.wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                let _ = c.links[i].waker.wake();
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let c = &self.core;
        if !c.pending_read.is_empty() || !c.dirty.is_empty() || c.accept_more {
            return Some(Duration::ZERO);
        }
        if c.wheel.is_empty()
            && c.accept_paused_until.is_none()
            && c.draining_until.is_none()
            && !c.global.shutdown.load(Relaxed)
        {
            return None;
        }
        let next_ms = c.wheel.next_tick() as u64 * TICK_MS;
        let now_ms = c.start.elapsed().as_millis() as u64;
        Some(Duration::from_millis(next_ms.saturating_sub(now_ms).max(1)))
    }

    // ----- accepting -----

    fn accept(&mut self) {
        let c = &mut self.core;
        c.accept_more = false;
        if c.accept_paused_until.is_some() || c.draining_until.is_some() {
            return;
        }
        let max = c.global.max_connections;
        for _ in 0..c.cfg.accept_batch {
            let Some(listener) = c.listener.as_ref() else {
                return;
            };
            let (mut sock, _) = match listener.accept() {
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
            if c.global.open.fetch_add(1, SeqCst) >= max {
                c.global.open.fetch_sub(1, SeqCst);
                c.stats.inc(Counter::Rejected503);
                let mut resp = Vec::new();
                handshake::write_error_response(
                    &mut resp,
                    &HttpError::new(503, "server at its connection limit"),
                );
                // A fresh socket's buffer is empty: the answer fits or the client is gone.
                let _ = sock.write(&resp);
                let _ = sock.shutdown(Shutdown::Write);
                continue;
            }
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = c
                .poll
                .registry()
                .register(&mut sock, Token(key), Interest::READABLE)
            {
                c.global.open.fetch_sub(1, SeqCst);
                c.stats.inc(Counter::AcceptErrors);
                tracing::warn!(shard = c.index, "register: {e}");
                continue;
            }
            c.next_gen = c.next_gen.wrapping_add(1);
            let conn = entry.insert(Conn {
                sock,
                phase: Phase::Handshaking,
                flags: 0,
                gen: c.next_gen,
                since: c.now,
                armed_at: NOT_ARMED,
                decoder: Default::default(),
                stash: Default::default(),
                queue: None,
                state: None,
            });
            c.stats.open.fetch_add(1, Relaxed);
            c.schedule(key, conn);
        }
        // The batch cap was hit: more may be waiting, and the edge will not fire again.
        c.accept_more = true;
    }

    // ----- reading -----

    /// Reads what the socket has and processes it, up to the fairness cap. `to_eof`: keep
    /// reading past short reads (the peer has shut down its side).
    fn read(&mut self, key: usize, to_eof: bool) {
        let Self { conns, rbuf, core } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.flags & READ_PAUSED != 0 {
            return;
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
                            let _ = core.flush_conn(key, conn);
                            core.eof(conns, key);
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
                        // The peer may still read (half-close): send what its input produced.
                        let _ = core.flush_conn(key, conn);
                        core.eof(conns, key);
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
    fn resume_pending(&mut self) {
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
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !self.core.flush_conn(key, conn) {
            self.core.remove(&mut self.conns, key);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        for &(key, gen) in &dirty {
            match self.conns.get_mut(key) {
                Some(c) if c.gen == gen => c.flags &= !DIRTY,
                _ => continue,
            }
            self.flush(key);
        }
        // Keep the list's allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
    }

    // ----- timers -----

    fn fire_timers(&mut self) {
        let Self { conns, core, .. } = self;
        if let Some(until) = core.accept_paused_until {
            if core.now >= until {
                core.accept_paused_until = None;
                core.accept_more = true;
            }
        }
        let mut due = std::mem::take(&mut core.due);
        let now = core.now;
        core.wheel.advance(now, |e, tick| {
            let c = conns.get(e.key as usize)?;
            if c.gen != e.gen {
                return None;
            }
            if c.armed_at == tick {
                due.push(e);
                None
            } else if c.armed_at != NOT_ARMED
                && c.armed_at > tick
                && timer::same_slot(c.armed_at, tick)
            {
                Some(c.armed_at) // a later turn of the wheel
            } else {
                None // stale: the connection was re-armed elsewhere
            }
        });
        for e in due.drain(..) {
            let key = e.key as usize;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            conn.armed_at = NOT_ARMED;
            if core.on_deadline(key, conn) {
                core.remove(conns, key);
            }
        }
        core.due = due;
    }

    // ----- shutting down -----

    /// Starts or continues a graceful shutdown. Returns true when the shard is done.
    fn check_shutdown(&mut self) -> bool {
        let Self { conns, core, .. } = self;
        if !core.global.shutdown.load(Relaxed) {
            return false;
        }
        if core.draining_until.is_none() {
            core.draining_until = Some(core.now + to_ticks(core.cfg.drain_timeout).max(1));
            if let Some(mut l) = core.listener.take() {
                let _ = core.poll.registry().deregister(&mut l);
            }
            let keys: Vec<usize> = conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                let conn = &mut conns[key];
                match conn.phase {
                    Phase::Handshaking => core.remove(conns, key),
                    Phase::HttpWait => core.answer_late(key, conn, 503, "server shutting down\n"),
                    Phase::Open => {
                        core.start_close(key, conn, close_code::GOING_AWAY, "server shutting down");
                        core.mark_dirty(key, conn);
                    }
                    _ => {}
                }
            }
            tracing::debug!(shard = core.index, open = conns.len(), "draining");
        }
        if conns.is_empty() {
            return true;
        }
        if core.draining_until.is_some_and(|t| core.now >= t) {
            let keys: Vec<usize> = conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                core.abort(conns, key);
            }
            return true;
        }
        false
    }
}

/// Reads once into `tmp` and appends to `big` (the large-request path).
fn read_append(sock: &mut TcpStream, big: &mut Vec<u8>, tmp: &mut [u8]) -> io::Result<usize> {
    loop {
        match sock.read(tmp) {
            Ok(n) => {
                big.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl<H: Handler> Core<H> {
    fn tick(&mut self) {
        self.now = (self.start.elapsed().as_millis() as u64 / TICK_MS) as u32;
    }

    fn id(&self, key: usize, gen: u32) -> ConnId {
        ConnId {
            shard: self.index,
            key: key as u32,
            gen,
        }
    }

    /// Input arrived: an open connection is not idle.
    fn touch(&mut self, conn: &mut Conn<H::State>) {
        if conn.phase == Phase::Open {
            conn.since = self.now;
            conn.flags &= !PING_OUTSTANDING;
        }
    }

    fn mark_dirty(&mut self, key: usize, conn: &mut Conn<H::State>) {
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push((key, conn.gen));
        }
    }

    fn accept_failed_emfile(&mut self, e: &io::Error) {
        self.stats.inc(Counter::AcceptEmfile);
        self.emfile_since_log += 1;
        self.accept_paused_until = Some(self.now + ms_to_ticks(ACCEPT_BACKOFF_MS));
        let due = self
            .emfile_logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            tracing::warn!(
                shard = self.index,
                count = self.emfile_since_log,
                "accept: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms (open connections keep being served)"
            );
            self.emfile_since_log = 0;
            self.emfile_logged_at = Some(Instant::now());
        }
    }

    // ----- processing input -----

    /// Processes input by phase; returns how many bytes were consumed (the rest is kept).
    fn process(&mut self, key: usize, conn: &mut Conn<H::State>, data: &mut [u8]) -> usize {
        match conn.phase {
            Phase::Handshaking => self.handshake(key, conn, data),
            Phase::Open | Phase::Closing => self.frames(key, conn, data),
            Phase::HttpWait | Phase::Finishing | Phase::Draining => data.len(),
        }
    }

    fn handshake(&mut self, key: usize, conn: &mut Conn<H::State>, data: &mut [u8]) -> usize {
        let (req, head_len) = match handshake::parse_request(data, self.cfg.max_header_bytes) {
            Ok(None) => return 0,
            Ok(Some(parsed)) => parsed,
            Err(e) => return self.refuse(key, conn, &e, data.len()),
        };
        let id = self.id(key, conn.gen);
        let key_ws = match req.websocket() {
            Ok(Some(k)) => k,
            Ok(None) => return self.plain_http(key, conn, data),
            Err(e) => return self.refuse(key, conn, &e, data.len()),
        };
        let info = ConnInfo {
            id,
            sock: &conn.sock,
        };
        match self.handler.on_open(&req, &info) {
            Ok(accept) => {
                debug_assert!(self.cork.is_empty());
                handshake::write_accept_response(&mut self.cork, &key_ws, accept.protocol, None);
                conn.state = Some(accept.state);
            }
            Err(e) => {
                self.stats.inc(Counter::HandshakeRejected);
                return self.refuse(key, conn, &e, data.len());
            }
        }
        self.stats.inc(Counter::HandshakesOk);
        conn.phase = Phase::Open;
        conn.flags |= APP_OPEN;
        conn.since = self.now;
        self.schedule(key, conn);
        // Frames may follow the request in the same read.
        head_len + self.frames(key, conn, &mut data[head_len..])
    }

    /// Answers a plain HTTP request and closes the connection.
    fn plain_http(&mut self, key: usize, conn: &mut Conn<H::State>, data: &mut [u8]) -> usize {
        let Ok(Some((req, head_len))) = handshake::parse_request(data, self.cfg.max_header_bytes)
        else {
            return data.len();
        };
        self.stats.inc(Counter::HttpRequests);
        if req.header("transfer-encoding").is_some() {
            let e = HttpError::new(411, "chunked bodies are not supported; send Content-Length");
            return self.refuse(key, conn, &e, data.len());
        }
        let body_len = match req.content_length.map(|v| v.trim().parse::<usize>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                let e = HttpError::new(400, "bad Content-Length");
                return self.refuse(key, conn, &e, data.len());
            }
        };
        if body_len > self.cfg.max_http_body {
            let e = HttpError::new(413, "request body too large");
            return self.refuse(key, conn, &e, data.len());
        }
        if data.len() < head_len + body_len {
            return 0; // wait for the whole body
        }
        let body = &data[head_len..head_len + body_len];
        let reply = if req.path == "/healthz" && (req.method == "GET" || req.method == "HEAD") {
            HttpReply::Respond(HttpResponse::text(200, "ok\n"))
        } else {
            let info = ConnInfo {
                id: self.id(key, conn.gen),
                sock: &conn.sock,
            };
            self.handler.on_http(&req, body, &info)
        };
        let resp = match reply {
            HttpReply::Respond(r) => Some(r),
            HttpReply::NotFound => None,
            HttpReply::Defer => {
                conn.phase = Phase::HttpWait;
                conn.since = self.now;
                self.schedule(key, conn);
                return data.len();
            }
        };
        let resp = resp.unwrap_or_else(|| HttpResponse::text(404, "not found\n"));
        if resp.status >= 400 {
            self.stats.http_status(resp.status);
        }
        let headers: Vec<(&str, &str)> =
            resp.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
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
        data.len()
    }

    /// Answers a refused handshake with its status and closes.
    fn refuse(
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
    fn finish(&mut self, key: usize, conn: &mut Conn<H::State>) {
        conn.phase = Phase::Finishing;
        conn.since = self.now;
        self.schedule(key, conn);
    }

    /// Runs the frames of an open connection through the decoder and the app.
    fn frames(&mut self, key: usize, conn: &mut Conn<H::State>, data: &mut [u8]) -> usize {
        let id = self.id(key, conn.gen);
        let Conn {
            sock,
            phase,
            flags,
            since,
            decoder,
            queue,
            state,
            ..
        } = conn;
        let mut pos = 0;
        loop {
            let step = decoder.next(&self.dec_cfg, &mut data[pos..]);
            let mut out = Out {
                queue: &mut *queue,
                cork: Some(&mut self.cork),
                flags: &mut *flags,
                stats: &self.stats,
            };
            match step {
                Ok(Decoded::Event(n, event)) => {
                    pos += n;
                    match event {
                        Event::Text(t) => {
                            if let (Phase::Open, Some(state)) = (*phase, state.as_mut()) {
                                self.stats.inc(Counter::MessagesIn);
                                let mut ctx = Ctx {
                                    id,
                                    state,
                                    sock: &*sock,
                                    out,
                                };
                                self.handler.on_message(&mut ctx, Message::Text(t));
                            }
                        }
                        Event::Binary(b) => {
                            if let (Phase::Open, Some(state)) = (*phase, state.as_mut()) {
                                self.stats.inc(Counter::MessagesIn);
                                let mut ctx = Ctx {
                                    id,
                                    state,
                                    sock: &*sock,
                                    out,
                                };
                                self.handler.on_message(&mut ctx, Message::Binary(b));
                            }
                        }
                        Event::Ping(p) => out.frame(crate::proto::OpCode::Pong, p),
                        Event::Pong(_) => {}
                        Event::Close(cf) => {
                            // Echo the peer's close (same code), then close the TCP connection.
                            if cf.code == close_code::NO_STATUS {
                                out.close_empty();
                            } else {
                                out.close(cf.code, "");
                            }
                            self.stats.inc(Counter::ClosedByPeer);
                            if *flags & APP_OPEN != 0 {
                                *flags &= !APP_OPEN;
                                if let Some(s) = state.as_mut() {
                                    self.handler.on_close(id, s, cf.code, cf.reason);
                                }
                            }
                            *phase = Phase::Finishing;
                            *since = self.now;
                            break;
                        }
                    }
                    if *phase == Phase::Open && *flags & CLOSE_SENT != 0 {
                        // The app called close().
                        *phase = Phase::Closing;
                        *since = self.now;
                        self.stats.inc(Counter::ClosedByServer);
                        break;
                    }
                }
                Ok(Decoded::Progress(n)) => pos += n,
                Ok(Decoded::Incomplete) => return pos,
                Err(e) => {
                    self.stats.inc(match e.code {
                        close_code::INVALID_DATA => Counter::Close1007,
                        close_code::TOO_BIG => Counter::Close1009,
                        _ => Counter::Close1002,
                    });
                    out.close(e.code, e.reason);
                    if *flags & APP_OPEN != 0 {
                        *flags &= !APP_OPEN;
                        if let Some(s) = state.as_mut() {
                            self.handler.on_error(id, s, &ConnError::Protocol(e));
                            self.handler.on_close(id, s, e.code, e.reason);
                        }
                    }
                    *phase = Phase::Finishing;
                    *since = self.now;
                    break;
                }
            }
        }
        // The phase changed: a new deadline, and whatever else was read is discarded.
        self.schedule(key, conn);
        data.len()
    }

    // ----- closing -----

    /// Answers a deferred request on the app's behalf (timeout, shutdown) and finishes.
    fn answer_late(&mut self, key: usize, conn: &mut Conn<H::State>, status: u16, body: &str) {
        let mut out = Vec::new();
        handshake::write_response(
            &mut out,
            status,
            &[],
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
    fn start_close(&mut self, key: usize, conn: &mut Conn<H::State>, code: u16, reason: &str) {
        let mut out = Out {
            queue: &mut conn.queue,
            cork: None,
            flags: &mut conn.flags,
            stats: &self.stats,
        };
        out.close(code, reason);
        conn.phase = Phase::Closing;
        conn.since = self.now;
        self.stats.inc(Counter::ClosedByServer);
        self.schedule(key, conn);
    }

    /// Tells the app (once) that the connection is closed.
    fn notify_close(&mut self, key: usize, conn: &mut Conn<H::State>, code: u16, reason: &str) {
        if conn.flags & APP_OPEN != 0 {
            conn.flags &= !APP_OPEN;
            let id = self.id(key, conn.gen);
            if let Some(s) = conn.state.as_mut() {
                self.handler.on_close(id, s, code, reason);
            }
        }
    }

    fn fail_io(&mut self, key: usize, conn: &mut Conn<H::State>, e: io::Error) {
        self.stats.inc(Counter::IoErrors);
        if conn.flags & APP_OPEN != 0 {
            let id = self.id(key, conn.gen);
            if let Some(s) = conn.state.as_mut() {
                self.handler.on_error(id, s, &ConnError::Io(e));
            }
        }
        self.notify_close(key, conn, close_code::ABNORMAL, "i/o error");
    }

    /// The peer closed its side.
    fn eof(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        let conn = &mut conns[key];
        if matches!(conn.phase, Phase::Open | Phase::Closing) {
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
    fn abort(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        let conn = &mut conns[key];
        self.notify_close(key, conn, close_code::ABNORMAL, "connection aborted");
        self.remove(conns, key);
    }

    /// Frees the slot and the socket.
    fn remove(&mut self, conns: &mut Slab<Conn<H::State>>, key: usize) {
        // The cork is empty or this connection's: never let its bytes reach another.
        self.cork.clear();
        if let Some(mut conn) = conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.sock);
            self.notify_close(key, &mut conn, close_code::ABNORMAL, "connection dropped");
            self.global.open.fetch_sub(1, SeqCst);
            self.stats.open.fetch_sub(1, Relaxed);
            self.stats.inc(Counter::Closed);
        }
    }

    // ----- writing -----

    /// Writes what this connection has corked and queued. Returns false when the connection
    /// must be dropped (the caller removes it).
    fn flush_conn(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
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
        let backlog = conn.queued();
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
            if conn.phase == Phase::Finishing {
                let _ = conn.sock.shutdown(Shutdown::Write);
                conn.phase = Phase::Draining;
                conn.since = self.now;
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
        if backlog > self.cfg.write_queue_limit && conn.phase == Phase::Open {
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
                }
                SlowConsumerPolicy::Disconnect => {
                    self.stats.inc(Counter::SlowConsumerDisconnected);
                    if conn.flags & APP_OPEN != 0 {
                        let id = self.id(key, conn.gen);
                        if let Some(s) = conn.state.as_mut() {
                            self.handler.on_error(id, s, &ConnError::SlowConsumer);
                        }
                    }
                    self.notify_close(key, conn, close_code::POLICY, "slow consumer");
                    // Its queue will not drain: drop it, and try to say why.
                    conn.queue = None;
                    let (payload, n) =
                        crate::proto::frame::close_payload(close_code::POLICY, "slow consumer");
                    let mut frame = vec![0x88, n as u8];
                    frame.extend_from_slice(&payload[..n]);
                    let _ = conn.sock.write(&frame);
                    return false;
                }
            }
        }
        true
    }

    // ----- deadlines -----

    /// The tick of this connection's next deadline.
    fn due_tick(&self, conn: &Conn<H::State>) -> Option<u32> {
        match conn.phase {
            Phase::Handshaking => Some(conn.since + self.handshake_ticks),
            Phase::Open => {
                let idle = (self.idle_ticks > 0).then(|| conn.since + self.idle_ticks);
                let ping = (self.ping_ticks > 0).then(|| {
                    if conn.flags & PING_OUTSTANDING != 0 {
                        conn.since + self.ping_ticks + self.pong_ticks
                    } else {
                        conn.since + self.ping_ticks
                    }
                });
                match (idle, ping) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::HttpWait | Phase::Closing | Phase::Finishing | Phase::Draining => {
                Some(conn.since + self.close_ticks)
            }
        }
    }

    /// Arms the connection's timer for its next deadline unless an earlier entry is live.
    fn schedule(&mut self, key: usize, conn: &mut Conn<H::State>) {
        if let Some(due) = self.due_tick(conn) {
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
    fn on_deadline(&mut self, key: usize, conn: &mut Conn<H::State>) -> bool {
        let Some(due) = self.due_tick(conn) else {
            return false;
        };
        if self.now < due {
            self.schedule(key, conn);
            return false;
        }
        match conn.phase {
            Phase::Handshaking => {
                self.stats.inc(Counter::HandshakeTimeouts);
                true
            }
            Phase::Open => {
                let silent = self.now - conn.since;
                if self.idle_ticks > 0 && silent >= self.idle_ticks {
                    self.stats.inc(Counter::IdleTimeouts);
                    self.notify_close(key, conn, close_code::GOING_AWAY, "idle timeout");
                    self.start_close(key, conn, close_code::GOING_AWAY, "idle timeout");
                    self.mark_dirty(key, conn);
                    return false;
                }
                if conn.flags & PING_OUTSTANDING != 0 {
                    self.stats.inc(Counter::PongTimeouts);
                    self.notify_close(key, conn, close_code::ABNORMAL, "pong timeout");
                    return true;
                }
                conn.flags |= PING_OUTSTANDING;
                self.stats.inc(Counter::PingsSent);
                let mut out = Out {
                    queue: &mut conn.queue,
                    cork: None,
                    flags: &mut conn.flags,
                    stats: &self.stats,
                };
                out.frame(crate::proto::OpCode::Ping, b"");
                self.mark_dirty(key, conn);
                self.schedule(key, conn);
                false
            }
            Phase::HttpWait => {
                self.answer_late(key, conn, 504, "the application did not answer in time\n");
                false
            }
            Phase::Closing | Phase::Finishing | Phase::Draining => {
                if conn.phase == Phase::Closing {
                    self.stats.inc(Counter::CloseTimeouts);
                }
                self.notify_close(key, conn, close_code::ABNORMAL, "close timeout");
                true
            }
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
