//! One reactor thread: its own epoll (mio `Poll`), SO_REUSEPORT listener, slab of connections,
//! read buffer, cork buffer and timer wheel. `Shard::run` reads top to bottom: poll, dispatch,
//! fire timers, flush. Owns I/O and connection lifecycles; must not know about topics.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod accept;
mod close;
mod deadlines;
mod gate;
mod http;
mod read;
mod refusals;
mod status;
mod tls;
mod uring;
mod write;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::proto::deflate::{self, Packed};
use crate::proto::handshake::{self, HttpError};
use crate::proto::{
    close_code, Connection, Decoded, DecoderConfig, Event, Input, Phase as WsPhase, Role, Timeout,
    Timeouts,
};
use crate::rt::timer::{self, ms_to_ticks, Entry, TimerWheel, Visit, NOT_ARMED, TICK_MS};
use crate::server::api::{ShardApi, ShardLink};
use crate::server::compress::ShardDeflate;
use crate::server::config::{Config, SlowConsumerPolicy};
use crate::server::conn::*;
use crate::server::handler::{ConnError, ConnId, ConnInfo, Ctx, Handler, HttpReply, HttpResponse};
use crate::server::stats::{render_metrics, Counter, ShardStats, METRICS_CONTENT_TYPE};
use crate::server::tls::{Sealer, TlsConn, TlsInput};
use crate::server::Global;

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

/// Full reads of one connection per readiness event before others get a turn (4 x the 64 KiB
/// read buffer: a quarter of a millisecond to a millisecond of work per event).
const MAX_READS_PER_EVENT: usize = 4;
/// The work a loop turn does on new connections, and on connections with input left unread,
/// before it polls again (at least one of each is served every turn, so none starves).
const TURN_BUDGET: Duration = Duration::from_millis(1);
/// The cork buffer is flushed early past this size, and shrunk back after a big message.
const CORK_FLUSH_AT: usize = 256 << 10;
const CORK_CAPACITY: usize = 64 << 10;
/// The smallest read buffer with TLS: two records of the largest size (16 KiB + 2 KiB + 5).
const TLS_MIN_READ_BUFFER: usize = 40 << 10;
/// Room a TLS read needs past the unfinished records it keeps.
const TLS_MIN_READ: usize = 4096;
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
    peers: Peers<H::Msg>,
    cork: Vec<u8>,
    /// permessage-deflate contexts, and where a compressed message is inflated.
    deflate: ShardDeflate,
    inflated: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` answer being written.
    ext_buf: Vec<u8>,
    tls: tls::TlsConns,
    wheel: TimerWheel,
    start: Instant,
    /// The current tick.
    now: u32,
    next_gen: u32,
    turn: TurnWork,
    /// Per-connection extensions (token, per-IP count) by slab key; empty while every upgrade
    /// policy is off. A slot is cleared when its connection is removed.
    exts: Vec<Option<Box<ConnExt>>>,
    /// Every connection's deadlines in ticks (handshake, ping, pong, idle, close).
    timeouts: Timeouts,
    /// `--max-lifetime` in ticks; 0: off.
    lifetime_ticks: u32,
    accept: accept::Acceptor,
    // Shutting down.
    draining_until: Option<u32>,
    /// The rate limit of the refused-upgrade log.
    refusals: refusals::RefusalLog,
    /// Viewers of the status page's feed, and its sampler.
    status: crate::server::status::StatusFeed,
    /// `--io uring`: the ring and the turn's batched reads and writes; None: plain calls.
    uring: Option<Box<uring::Uring>>,
}

/// The other shards: their message channels, this shard's inbox, and which of them this turn
/// posted to (woken once, at its end).
struct Peers<M> {
    links: Arc<[ShardLink<M>]>,
    inbox: mpsc::Receiver<M>,
    wake: Vec<bool>,
}

/// Work a loop turn collects for later in the turn (or the next), by (key, gen): a
/// connection removed meanwhile is skipped. Each list keeps its allocation.
#[derive(Default)]
struct TurnWork {
    /// When this turn's work began (after the poll): `TURN_BUDGET` is counted from here.
    started: Option<Instant>,
    /// Connections with output to flush at the end of the turn.
    dirty: Vec<(usize, u32)>,
    /// Connections with input left unread (fairness cap, or reading resumed).
    pending_read: Vec<(usize, u32)>,
    /// Connections a broadcast found full under the `disconnect` policy, closed after the
    /// app's hooks.
    slow: Vec<(usize, u32)>,
    /// Timer entries that came due, handled after the wheel's visit.
    due: Vec<Entry>,
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
            all_stats: shared.stats,
            global: shared.global,
            peers: Peers {
                wake: vec![false; shared.links.len()],
                links: shared.links,
                inbox: shared.inbox,
            },
            cork: Vec::with_capacity(CORK_CAPACITY),
            deflate: ShardDeflate::new(cfg.deflate),
            inflated: Vec::new(),
            ext_buf: Vec::new(),
            tls: tls::TlsConns::default(),
            wheel: TimerWheel::new(0),
            start: Instant::now(),
            now: 0,
            next_gen: 0,
            turn: TurnWork::default(),
            exts: Vec::new(),
            timeouts: Timeouts {
                handshake: to_ticks(cfg.handshake_timeout).max(1),
                ping: to_ticks(cfg.ping_interval),
                pong: to_ticks(cfg.pong_timeout).max(1),
                idle: to_ticks(cfg.idle_timeout),
                close: to_ticks(cfg.close_timeout).max(1),
            },
            lifetime_ticks: to_ticks(cfg.max_lifetime),
            accept: accept::Acceptor {
                listener: Some(listener),
                more: false,
                paused_until: None,
                emfile_since_log: 0,
                emfile_logged_at: None,
            },
            draining_until: None,
            refusals: Default::default(),
            status: Default::default(),
            uring: match cfg.io {
                crate::server::config::IoMode::Uring => uring::Uring::new(index),
                crate::server::config::IoMode::Epoll => None,
            },
            cfg,
        };
        // With TLS, the buffer must hold an unfinished record plus a whole one.
        let min_rbuf = if core.cfg.tls.is_some() {
            TLS_MIN_READ_BUFFER
        } else {
            4096
        };
        Ok(Self {
            conns: Slab::new(),
            rbuf: vec![0u8; core.cfg.read_buffer_size.max(min_rbuf)].into_boxed_slice(),
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
            self.core.turn.started = Some(busy_from);
            self.core.tick();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(true),
                    WAKER => {}
                    Token(key) => {
                        if ev.is_writable() {
                            self.flush(key);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // With the peer's FIN already in, a short read does not mean
                            // drained: the EOF after the data brings no new edge.
                            let to_eof = ev.is_read_closed() || ev.is_error();
                            if self.batchable_read(key, to_eof) {
                                self.queue_read(key);
                            } else {
                                self.read(key, to_eof);
                            }
                        }
                    }
                }
            }
            // `--io uring`: the reads gathered above, in one submission, then their answers.
            self.read_batched();
            if self.core.accept.more {
                // A batch cap was hit or the EMFILE back-off ended: the listener's edge will
                // not fire again for connections already waiting.
                self.accept(false);
            }
            self.app_hooks();
            self.resume_pending();
            self.fire_timers();
            self.flush_dirty();
            self.wake_peers();
            self.core.refusals.flush(self.core.index);
            if self.check_shutdown() {
                return;
            }
            let busy = busy_from.elapsed().as_micros() as u64;
            self.core.stats.turn(busy);
        }
    }

    /// Lends the shard to the app: messages from other shards, then its once-a-turn hook.
    fn app_hooks(&mut self) {
        let Self { conns, core, .. } = self;
        let Core {
            handler,
            index,
            turn: TurnWork { dirty, slow, .. },
            stats,
            all_stats,
            cfg,
            peers: Peers { links, wake, inbox },
            now,
            deflate,
            exts,
            status,
            ..
        } = core;
        let mut api = ShardApi {
            index: *index,
            conns,
            dirty,
            stats,
            all_stats,
            write_queue_limit: cfg.write_queue_limit,
            policy: cfg.slow_consumer,
            slow,
            links,
            wake,
            now: *now,
            deflate,
            exts,
        };
        while let Ok(msg) = inbox.try_recv() {
            handler.on_shard_msg(&mut api, msg);
        }
        handler.on_turn(&mut api);
        if status.next_at.is_some() {
            status::send_samples(status, handler, &mut api);
        }
        api.deflate.end_turn();
        for (key, gen) in std::mem::take(&mut core.turn.slow) {
            if let Some(conn) = conns.get_mut(key).filter(|c| c.gen == gen) {
                core.disconnect_slow(key, conn);
                core.remove(conns, key);
            }
        }
    }

    /// Wakes the shards posted to this turn.
    fn wake_peers(&mut self) {
        let c = &mut self.core;
        crate::server::api::wake_marked(&mut c.peers.wake, &c.peers.links);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let c = &self.core;
        if !c.turn.pending_read.is_empty() || !c.turn.dirty.is_empty() || c.accept.more {
            return Some(Duration::ZERO);
        }
        // The status feed's next sample, while someone watches.
        let sample_in = c.status.next_at.map(|t| {
            t.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let wheel_in = self.wheel_timeout();
        match (sample_in, wheel_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long until the timer wheel (or an accept back-off, or a drain) needs the loop.
    fn wheel_timeout(&self) -> Option<Duration> {
        let c = &self.core;
        if c.wheel.is_empty()
            && c.accept.paused_until.is_none()
            && c.draining_until.is_none()
            && !c.global.shutdown.load(Relaxed)
        {
            return None;
        }
        let next_ms = c.wheel.next_tick() as u64 * TICK_MS;
        let now_ms = c.start.elapsed().as_millis() as u64;
        Some(Duration::from_millis(next_ms.saturating_sub(now_ms).max(1)))
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
            if let Some(mut l) = core.accept.listener.take() {
                let _ = core.poll.registry().deregister(&mut l);
            }
            let keys: Vec<usize> = conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                let conn = &mut conns[key];
                match conn.phase() {
                    Phase::Handshaking | Phase::HttpBody => core.remove(conns, key),
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

impl<H: Handler> Core<H> {
    /// Whether this turn has worked its `TURN_BUDGET`.
    fn over_budget(&self) -> bool {
        self.turn
            .started
            .is_some_and(|t| t.elapsed() >= TURN_BUDGET)
    }

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
        conn.ws.on_input(self.now);
    }

    /// The connection's extension, if it has one.
    fn ext(&self, key: usize) -> Option<&ConnExt> {
        self.exts.get(key)?.as_deref()
    }

    /// The connection's extension, made if needed.
    fn ext_mut(&mut self, key: usize) -> &mut ConnExt {
        if self.exts.len() <= key {
            self.exts.resize_with(key + 1, || None);
        }
        self.exts[key].get_or_insert_with(Default::default)
    }

    fn mark_dirty(&mut self, key: usize, conn: &mut Conn<H::State>) {
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.turn.dirty.push((key, conn.gen));
        }
    }
}
