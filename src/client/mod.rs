//! The client role of `proto` on a mio reactor: many connections per reactor, the same four
//! events as the server (open, message, close, error), masked sends. The load generator is
//! built on it. Owns client sockets, connecting and the opening handshake; the WebSocket
//! lifecycle after it (close handshake, deadlines) is each connection's `proto::Connection`.
//! No async runtime, no threads.

use crate::rt::batch;
mod tls;
mod url;

pub use tls::{client_config as tls_client_config, Trust};
pub use url::{UrlError, WsUrl};

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::deflate::{self, Deflater, Inflater};
use crate::proto::frame::{encode_header, MAX_HEADER_LEN};
use crate::proto::handshake::{self, ClientHandshakeError};
use crate::proto::mask::apply_mask;
use crate::proto::{
    close_code, Connection, Decoded, Decoder, DecoderConfig, Event, Input, Message, OpCode,
    ProtocolError, Role, Tick, Timeout, Timeouts, Transmit,
};
use crate::rt::timer::{ms_to_ticks, visit, Entry, TimerWheel, Visit, NOT_ARMED, TICK_MS};
use crate::rt::write_queue::WriteQueue;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub max_message_size: usize,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    pub read_buffer_size: usize,
    /// With permessage-deflate, shorter messages go out uncompressed.
    pub deflate_min_size: usize,
    /// TLS settings for `wss://` URLs (see `tls_client_config`); without them, `wss://` uses
    /// the system's CA bundle.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Carry each turn's reads, and its writes, in one io_uring submission instead of a
    /// syscall per connection, when a turn has at least 4 of them (plain `ws://` connections;
    /// falls back to the plain calls when io_uring is unavailable). Keeps up to 4 MiB of read
    /// buffers, 16 KiB per connection read in the largest batch so far.
    pub batch_io: bool,
    /// Have the kernel timestamp what each socket receives, and hand it to the handler
    /// (`ClientCtx::received_at_ns`): a reader that looks at its sockets late still knows when
    /// the bytes arrived. Plain `ws://` connections.
    pub rx_timestamps: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_message_size: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            read_buffer_size: 64 << 10,
            deflate_min_size: 0,
            tls: None,
            batch_io: true,
            rx_timestamps: false,
        }
    }
}

/// Per-connection options of `Client::connect`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub headers: Vec<(String, String)>,
    pub protocols: Vec<String>,
    /// Bind the socket to this source address (port chosen at connect time, with
    /// IP_BIND_ADDRESS_NO_PORT, so many source addresses multiply the ephemeral ports).
    pub source: Option<IpAddr>,
    /// Offer permessage-deflate without context takeover either way (`deflate::CLIENT_OFFER`);
    /// if the server accepts, messages of at least `ClientConfig::deflate_min_size` bytes go
    /// out compressed and compressed ones are inflated. The contexts are the reactor's, shared
    /// by all its connections.
    pub deflate: bool,
    /// With `deflate`: offer plain `permessage-deflate` instead, letting both sides keep their
    /// contexts; whichever side keeps one costs this connection its own compressor
    /// (~256 KiB) or inflater (~40 KiB).
    pub deflate_context_takeover: bool,
}

/// Where a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Handshake,
    Close,
}

#[derive(Debug)]
pub enum ClientError {
    /// The TCP connect failed (refused, unreachable, no source port...).
    Connect(io::Error),
    Timeout(Stage),
    /// The server refused the upgrade or answered wrongly (an HTTP status included).
    Handshake(ClientHandshakeError),
    /// The server broke RFC 6455; we closed with this code.
    Protocol(ProtocolError),
    /// The socket failed after connecting (e.g. reset).
    Io(io::Error),
    /// The server closed the TCP connection before the handshake completed.
    ClosedDuringHandshake,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Timeout(s) => write!(f, "timeout during {s:?}"),
            ClientError::Handshake(e) => write!(f, "handshake: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol: {e}"),
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::ClosedDuringHandshake => f.write_str("closed during handshake"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The application side of a client reactor.
pub trait ClientHandler {
    type State;

    /// The TCP connection is established; the upgrade request is being sent.
    fn on_connected(&mut self, _key: usize, _state: &mut Self::State) {}

    /// The upgrade succeeded.
    fn on_open(&mut self, _ctx: &mut ClientCtx<'_, Self::State>, _protocol: Option<&str>) {}

    fn on_message(&mut self, ctx: &mut ClientCtx<'_, Self::State>, msg: Message<'_>);

    fn on_pong(&mut self, _ctx: &mut ClientCtx<'_, Self::State>, _payload: &[u8]) {}

    /// The connection failed; `on_close` follows.
    fn on_error(&mut self, _key: usize, _state: &mut Self::State, _err: &ClientError) {}

    /// Called exactly once for every connection `connect` returned: with the server's close
    /// code, the code we failed it with, or 1006.
    fn on_close(&mut self, _key: usize, _state: Self::State, _code: u16, _reason: &str) {}
}

/// What the reactor does with a connection's bytes. Past `Connecting`, its deadlines and
/// the rest of its lifecycle are its `proto::Connection`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Writing the upgrade request, reading the response.
    Handshaking,
    /// Upgraded: frames.
    Ws,
}

const WANT_WRITABLE: u8 = 2;
const DIRTY: u8 = 4;
const APP_OPEN: u8 = 8;
/// permessage-deflate was offered (handshaking) / accepted (open).
const DEFLATE_OFFERED: u8 = 16;
const DEFLATE: u8 = 32;
/// With DEFLATE: the server keeps its context (this connection has its own inflater) / we
/// keep ours (its own compressor). While handshaking, OWN_OUT means "offered takeover".
const DEFLATE_OWN_IN: u8 = 64;
const DEFLATE_OWN_OUT: u8 = 128;

/// The reactor's permessage-deflate contexts (both sides reset after every message).
#[derive(Default)]
struct ClientDeflate {
    out: Compressor,
    inflater: Option<Inflater>,
    /// Inflaters of connections whose server keeps its context, by key.
    own_in: HashMap<usize, Inflater>,
    /// Where a compressed message is inflated for the handler.
    inflated: Vec<u8>,
}

#[derive(Default)]
struct Compressor {
    deflater: Option<Deflater>,
    /// Compressors of connections that keep their context, by key.
    own: HashMap<usize, Deflater>,
    /// Connections whose server capped our window below 15 (`client_max_window_bits`), by
    /// key: their own compressor with that window (reset after every message unless they
    /// keep their context), or None at 8, which zlib cannot produce: sent uncompressed.
    capped: HashMap<usize, Option<Deflater>>,
    min_size: usize,
}

/// The compressor lent to one connection's context.
struct CtxDeflate<'a> {
    c: &'a mut Compressor,
    own: bool,
}

fn lend(c: &mut Compressor, flags: u8) -> Option<CtxDeflate<'_>> {
    (flags & DEFLATE != 0).then_some(CtxDeflate {
        c,
        own: flags & DEFLATE_OWN_OUT != 0,
    })
}

struct Conn<S> {
    sock: TcpStream,
    phase: Phase,
    flags: u8,
    gen: u32,
    /// When connecting began (the later phases keep theirs in `ws`).
    since: u32,
    armed_at: u32,
    /// The WebSocket lifecycle (handshake deadline, phases, close handshake), from the end of
    /// `Connecting` on.
    ws: Connection,
    key: [u8; 24],
    offered: Vec<String>,
    decoder: Decoder,
    stash: Vec<u8>,
    queue: Option<Box<WriteQueue>>,
    /// `wss://`: the TLS session (buffered rustls; the queue holds plaintext).
    tls: Option<Box<rustls::ClientConnection>>,
    state: Option<S>,
}

/// A fast generator of masking keys, seeded from the OS.
struct MaskRng(u64);

impl MaskRng {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        MaskRng(u64::from_ne_bytes(seed) | 1)
    }

    fn next(&mut self) -> [u8; 4] {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32).to_le_bytes()[..4]
            .try_into()
            .unwrap_or([0x5a; 4])
    }
}

/// The sending side of one open connection.
pub struct ClientCtx<'a, S> {
    state: &'a mut S,
    ws: &'a mut Connection,
    now: Tick,
    out: ClientOut<'a>,
    /// The kernel's receive time of the read that completed the current message (ns since
    /// the Unix epoch), 0 when unknown.
    rx_ns: u64,
}

/// Where one connection's frames go: masked, maybe compressed, into its queue.
struct ClientOut<'a> {
    key: usize,
    queue: &'a mut Option<Box<WriteQueue>>,
    rng: &'a mut MaskRng,
    scratch: &'a mut Vec<u8>,
    /// The reactor's compressor, when this connection negotiated permessage-deflate.
    deflate: Option<CtxDeflate<'a>>,
}

impl Transmit for ClientOut<'_> {
    fn control(&mut self, opcode: OpCode, payload: &[u8]) {
        self.frame(opcode, payload);
    }
}

impl<S> ClientCtx<'_, S> {
    pub fn key(&self) -> usize {
        self.out.key
    }

    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// With `ClientConfig::rx_timestamps`, in `on_message` (and `on_open`): when the kernel
    /// received the last of the bytes read with this message (its last segment, or a later one
    /// read in the same call), in nanoseconds since the Unix epoch (CLOCK_REALTIME).
    pub fn received_at_ns(&self) -> Option<u64> {
        (self.rx_ns != 0).then_some(self.rx_ns)
    }

    pub fn queued_bytes(&self) -> usize {
        self.out.queue.as_ref().map_or(0, |q| q.len())
    }

    /// Sends a frame unless our close was sent: nothing follows it.
    fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        if self.ws.may_send() {
            self.out.frame(opcode, payload);
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.frame(OpCode::Text, text.as_bytes());
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.frame(OpCode::Binary, bytes);
    }

    pub fn ping(&mut self, payload: &[u8]) {
        self.frame(OpCode::Ping, &payload[..payload.len().min(125)]);
    }

    /// Starts the closing handshake.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.ws.close(code, reason, self.now, &mut self.out);
    }
}

impl ClientOut<'_> {
    /// Encodes one masked frame into the queue.
    fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.rng.next();
        // The payload is the caller's: what goes out is a masked copy (of the compressed bytes
        // when compressing), made once, in the queue.
        let mut rsv = 0;
        let body = match self.deflate.as_mut() {
            Some(d)
                if matches!(opcode, OpCode::Text | OpCode::Binary)
                    && payload.len() >= d.c.min_size =>
            {
                let z = match d.c.capped.get_mut(&self.key) {
                    Some(capped) => capped.as_mut(),
                    None if d.own => Some(
                        d.c.own
                            .entry(self.key)
                            .or_insert_with(|| Deflater::new(15, 1)),
                    ),
                    None => Some(d.c.deflater.get_or_insert_with(|| Deflater::new(15, 1))),
                };
                match z {
                    Some(z) => {
                        self.scratch.clear();
                        z.compress(payload, self.scratch, !d.own);
                        rsv = deflate::RSV1;
                        &self.scratch[..]
                    }
                    None => payload,
                }
            }
            _ => payload,
        };
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(
            &mut header,
            true,
            rsv,
            opcode,
            body.len() as u64,
            Some(mask),
        );
        let q = self.queue.get_or_insert_with(Default::default);
        q.push_bytes(&header[..n]);
        if body.len() > 16 << 10 {
            // A large message is its own chunk, not copied again into a coalesced one.
            let mut own = if rsv != 0 {
                std::mem::take(self.scratch)
            } else {
                payload.to_vec()
            };
            apply_mask(&mut own, mask, 0);
            q.push_owned(own);
        } else {
            q.push_bytes_then(body, |b| {
                apply_mask(b, mask, 0);
            });
        }
    }
}

/// A client reactor holding many connections.
pub struct Client<H: ClientHandler> {
    poll: Poll,
    events: Events,
    conns: Slab<Conn<H::State>>,
    handler: H,
    cfg: ClientConfig,
    dec_cfg: DecoderConfig,
    rbuf: Box<[u8]>,
    rng: MaskRng,
    scratch: Vec<u8>,
    deflate: ClientDeflate,
    wheel: TimerWheel,
    start: Instant,
    now: u32,
    next_gen: u32,
    dirty: Vec<(usize, u32)>,
    ready: Vec<(usize, bool, bool, bool)>,
    /// The connect timeout, in ticks.
    connect_ticks: u32,
    /// The WebSocket phases' deadlines, from the opening handshake on (the client sends no
    /// pings of its own: only the handshake and close timeouts are on).
    timeouts: Timeouts,
    /// Batched reads and writes (`ClientConfig::batch_io`); None: one syscall each.
    batch: Option<batch::Batch>,
    /// The batched reads' buffers, one slot of `SLOT` bytes per connection read in a batch.
    arena: Vec<u8>,
    /// Connections (key, generation, bytes kept from their last read) read in this batch.
    batched: Vec<(usize, u32, usize)>,
    results: Vec<Option<io::Result<usize>>>,
    /// Reads and writes carried in io_uring submissions so far.
    batched_ops: [u64; 2],
    /// The kernel's receive time of the bytes being processed (`rx_timestamps`), or 0.
    rx_ns: u64,
    /// With `rx_timestamps`: a socket that asks for them from the start, so the kernel has
    /// turned them on (it does so from a work queue, for the whole system) before the first
    /// connection receives.
    _ts_keeper: Option<std::net::UdpSocket>,
}

/// Bytes of the batch arena per connection: a read that fills its slot is continued with
/// plain reads.
const SLOT: usize = 16 << 10;

fn to_ticks(d: Duration) -> u32 {
    ms_to_ticks(d.as_millis().min(u32::MAX as u128 / 2) as u64).max(1)
}

impl<H: ClientHandler> Client<H> {
    pub fn new(cfg: ClientConfig, handler: H) -> io::Result<Self> {
        let batch = if cfg.batch_io {
            batch::Batch::new().ok()
        } else {
            None
        };
        let ts_keeper = if cfg.rx_timestamps {
            use std::os::fd::AsRawFd;
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            batch::enable_rx_timestamps(s.as_raw_fd())?;
            // The kernel turns them on a moment later: wait, so the first messages are
            // stamped too (a machine where they never come on just reports them unstamped).
            if !batch::wait_rx_timestamps(Duration::from_secs(1)) {
                tracing::debug!("receive timestamps did not come on within 1 s");
            }
            Some(s)
        } else {
            None
        };
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Slab::new(),
            handler,
            dec_cfg: DecoderConfig {
                role: Role::Client,
                max_message_size: cfg.max_message_size,
                rsv_allowed: 0,
            },
            rbuf: vec![0u8; cfg.read_buffer_size.max(4096)].into_boxed_slice(),
            rng: MaskRng::new(),
            scratch: Vec::new(),
            deflate: ClientDeflate {
                out: Compressor {
                    min_size: cfg.deflate_min_size,
                    ..Compressor::default()
                },
                ..ClientDeflate::default()
            },
            wheel: TimerWheel::new(0),
            start: Instant::now(),
            now: 0,
            next_gen: 0,
            dirty: Vec::new(),
            ready: Vec::new(),
            connect_ticks: to_ticks(cfg.connect_timeout),
            timeouts: Timeouts {
                handshake: to_ticks(cfg.handshake_timeout),
                close: to_ticks(cfg.close_timeout),
                ..Timeouts::default()
            },
            batch,
            arena: Vec::new(),
            batched: Vec::new(),
            results: Vec::new(),
            batched_ops: [0; 2],
            rx_ns: 0,
            _ts_keeper: ts_keeper,
            cfg,
        })
    }

    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Whether reads and writes go out in io_uring batches (`ClientConfig::batch_io`, and the
    /// kernel allowed it; a failure of the ring switches to plain calls for good).
    pub fn batching(&self) -> bool {
        self.batch.is_some()
    }

    /// Reads and writes carried in io_uring submissions so far (the rest were plain calls).
    pub fn batched_ops(&self) -> (u64, u64) {
        (self.batched_ops[0], self.batched_ops[1])
    }

    /// Connections not yet closed.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Starts a connection. An error here (no socket, no source port) calls no handler method.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        url: &WsUrl,
        opts: &ConnectOptions,
        state: H::State,
    ) -> Result<usize, ClientError> {
        let tls = if url.tls {
            Some(self.tls_session(url)?)
        } else {
            None
        };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(ClientError::Connect)?;
        socket.set_nonblocking(true).map_err(ClientError::Connect)?;
        socket.set_tcp_nodelay(true).map_err(ClientError::Connect)?;
        if self.cfg.rx_timestamps && !url.tls {
            use std::os::fd::AsRawFd;
            batch::enable_rx_timestamps(socket.as_raw_fd()).map_err(ClientError::Connect)?;
        }
        if let Some(src) = opts.source {
            // Without a port, the kernel picks it at connect() per destination, so each source
            // address has the whole ephemeral range for each server address.
            if src.is_ipv4() {
                set_bind_address_no_port(&socket);
            }
            socket
                .bind(&SocketAddr::new(src, 0).into())
                .map_err(ClientError::Connect)?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(ClientError::Connect(e)),
        }
        let mut sock = TcpStream::from_std(socket.into());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(ClientError::Connect)?;
        let mut random = [0u8; 16];
        let _ = getrandom::fill(&mut random);
        self.next_gen = self.next_gen.wrapping_add(1);
        self.now = (self.start.elapsed().as_millis() as u64 / TICK_MS) as u32;
        let mut request = Vec::with_capacity(256);
        let ws_key = handshake::client_key(random);
        let protocols: Vec<&str> = opts.protocols.iter().map(String::as_str).collect();
        let mut headers: Vec<(&str, &str)> = opts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if opts.deflate {
            let offer = if opts.deflate_context_takeover {
                deflate::TAKEOVER_OFFER
            } else {
                deflate::CLIENT_OFFER
            };
            headers.push(("Sec-WebSocket-Extensions", offer));
        }
        handshake::write_client_request(
            &mut request,
            &url.host_header(),
            &url.path,
            &ws_key,
            &protocols,
            &headers,
        );
        let mut queue = Box::<WriteQueue>::default();
        queue.push_owned(request);
        let conn = entry.insert(Conn {
            sock,
            phase: Phase::Connecting,
            flags: WANT_WRITABLE
                | match (opts.deflate, opts.deflate_context_takeover) {
                    (false, _) => 0,
                    (true, false) => DEFLATE_OFFERED,
                    (true, true) => DEFLATE_OFFERED | DEFLATE_OWN_OUT,
                },
            gen: self.next_gen,
            since: self.now,
            armed_at: NOT_ARMED,
            ws: Connection::handshaking(self.now),
            key: ws_key,
            offered: opts.protocols.clone(),
            decoder: Decoder::new(),
            stash: Vec::new(),
            queue: Some(queue),
            tls,
            state: Some(state),
        });
        schedule(
            &mut self.wheel,
            self.connect_ticks,
            &self.timeouts,
            key,
            conn,
        );
        Ok(key)
    }

    /// A TLS session for a `wss://` URL (the system's CA bundle when no config was given).
    fn tls_session(&mut self, url: &WsUrl) -> Result<Box<rustls::ClientConnection>, ClientError> {
        let setup = |e: String| ClientError::Connect(io::Error::other(e));
        if self.cfg.tls.is_none() {
            self.cfg.tls = Some(tls::client_config(&Trust::System).map_err(setup)?);
        }
        let cfg = self
            .cfg
            .tls
            .clone()
            .ok_or_else(|| setup("no TLS config".into()))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| setup(format!("TLS: bad server name {}: {e}", url.host)))?;
        let conn =
            rustls::ClientConnection::new(cfg, name).map_err(|e| setup(format!("TLS: {e}")))?;
        Ok(Box::new(conn))
    }

    /// Runs `f` on an open connection (to send from outside the event handlers). Returns
    /// false when the connection is not open.
    pub fn with_conn(&mut self, key: usize, f: impl FnOnce(&mut ClientCtx<'_, H::State>)) -> bool {
        self.with_conn_and_handler(key, |_, ctx| f(ctx))
    }

    /// Like `with_conn`, also lending the handler.
    pub fn with_conn_and_handler(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut H, &mut ClientCtx<'_, H::State>),
    ) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.phase != Phase::Ws || !conn.ws.may_send() {
            return false;
        }
        let Some(state) = conn.state.as_mut() else {
            return false;
        };
        let mut ctx = ClientCtx {
            state,
            ws: &mut conn.ws,
            now: self.now,
            out: ClientOut {
                key,
                queue: &mut conn.queue,
                rng: &mut self.rng,
                scratch: &mut self.scratch,
                deflate: lend(&mut self.deflate.out, conn.flags),
            },
            rx_ns: 0,
        };
        f(&mut self.handler, &mut ctx);
        if !conn.ws.may_send() {
            // It closed: the close timeout runs.
            schedule(
                &mut self.wheel,
                self.connect_ticks,
                &self.timeouts,
                key,
                conn,
            );
        }
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push((key, conn.gen));
        }
        true
    }

    /// Starts the closing handshake of an open connection, or drops one still connecting.
    pub fn close(&mut self, key: usize, code: u16, reason: &str) {
        let open = self.with_conn(key, |ctx| ctx.close(code, reason));
        if !open
            && self.conns.contains(key)
            && matches!(
                self.conns[key].phase,
                Phase::Connecting | Phase::Handshaking
            )
        {
            self.drop_conn(key, close_code::ABNORMAL, "closed before open");
        }
    }

    /// Drops a connection at once with a TCP reset (SO_LINGER 0, then close): no close frame,
    /// no FIN, what is queued is discarded. The handler's `on_close` gets 1006.
    pub fn abort(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        self.notify_close(key, close_code::ABNORMAL, "aborted");
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.sock);
            let _ = socket2::SockRef::from(&conn.sock).set_linger(Some(Duration::ZERO));
            if conn.flags & DEFLATE != 0 {
                self.deflate.own_in.remove(&key);
                self.deflate.out.own.remove(&key);
                self.deflate.out.capped.remove(&key);
            }
            // Dropping the socket closes it: with a zero linger, a reset.
        }
    }

    /// Keys of every connection.
    pub fn keys(&self) -> Vec<usize> {
        self.conns.iter().map(|(k, _)| k).collect()
    }

    fn tick_now(&self) -> u32 {
        (self.start.elapsed().as_millis() as u64 / TICK_MS) as u32
    }

    /// One turn of the loop: flush, wait for events up to `timeout`, dispatch, fire timers,
    /// flush.
    ///
    /// Returns the number of events the wait gave, at most the buffer's 1024: a caller that
    /// polls without waiting can poll again while it comes back full.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.flush_dirty();
        let timeout = if self.wheel.is_empty() {
            timeout
        } else {
            let next_ms = self.wheel.next_tick() as u64 * TICK_MS;
            let now_ms = self.start.elapsed().as_millis() as u64;
            let t = Duration::from_millis(next_ms.saturating_sub(now_ms).max(1));
            Some(timeout.map_or(t, |x| x.min(t)))
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.now = self.tick_now();
        // The events are copied out (the handlers need the reactor), into a buffer kept
        // from turn to turn.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token().0,
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable() || e.is_error(),
                e.is_read_closed() || e.is_error(),
            )
        }));
        let mut batched = std::mem::take(&mut self.batched);
        batched.clear();
        for &(key, readable, writable, to_eof) in &ready {
            if writable {
                self.on_writable(key);
            }
            if readable {
                match self.conns.get(key) {
                    Some(c)
                        if self.batch.is_some()
                            && !to_eof
                            && c.tls.is_none()
                            && c.phase != Phase::Connecting
                            && c.stash.len() + 4096 <= SLOT =>
                    {
                        batched.push((key, c.gen, c.stash.len()));
                    }
                    _ => self.on_readable(key, to_eof),
                }
            }
        }
        let ready_count = ready.len();
        self.ready = ready;
        // A plain read above ran handlers: keep only the connections still there.
        batched.retain(|&(key, gen, _)| self.conns.get(key).is_some_and(|c| c.gen == gen));
        if batched.len() < batch::MIN_BATCH {
            for &(key, _, _) in &batched {
                self.on_readable(key, false);
            }
        } else {
            for part in batched.chunks(batch::BATCH) {
                self.read_batch(part);
            }
        }
        self.batched = batched;
        self.fire_timers();
        self.flush_dirty();
        Ok(ready_count)
    }

    fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            match conn.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    self.fail(key, ClientError::Connect(e));
                    return;
                }
            }
            if let Err(e) = conn.sock.peer_addr() {
                if e.kind() == io::ErrorKind::NotConnected {
                    return; // not yet
                }
                self.fail(key, ClientError::Connect(e));
                return;
            }
            conn.phase = Phase::Handshaking;
            conn.ws = Connection::handshaking(self.now);
            // Still registered for WRITABLE (WANT_WRITABLE stays set): flush_conn below drops
            // that interest once the handshake request is out, or every later event would
            // come with a writable edge to serve for nothing.
            schedule(
                &mut self.wheel,
                self.connect_ticks,
                &self.timeouts,
                key,
                conn,
            );
            if let Some(state) = conn.state.as_mut() {
                self.handler.on_connected(key, state);
            }
        }
        self.flush_conn(key);
    }

    /// Reads until a short read (drained: the next byte brings a new edge) or, when the
    /// server's FIN is already in (`to_eof`), until EOF or WouldBlock.
    fn on_readable(&mut self, key: usize, to_eof: bool) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.phase == Phase::Connecting {
                return;
            }
            if conn.tls.is_some() {
                return self.on_readable_tls(key);
            }
            // Input is what was kept from the last read followed by the new bytes.
            let kept = conn.stash.len();
            let mut rbuf = std::mem::take(&mut self.rbuf);
            if rbuf.len() < kept + 4096 {
                rbuf = vec![0u8; kept + self.cfg.read_buffer_size.max(4096)].into_boxed_slice();
            }
            rbuf[..kept].copy_from_slice(&conn.stash);
            let space = rbuf.len() - kept;
            let mut rx_ns = 0;
            let result = if self.cfg.rx_timestamps {
                use std::os::fd::AsRawFd;
                let mut m = batch::RecvMsg::new(&mut rbuf[kept..]);
                let r = batch::recv_msg(conn.sock.as_raw_fd(), &mut m);
                rx_ns = m.timestamp_ns().unwrap_or(0);
                r
            } else {
                conn.sock.read(&mut rbuf[kept..])
            };
            let n = match result {
                Ok(0) => {
                    self.rbuf = rbuf;
                    return self.on_eof(key);
                }
                Ok(n) => n,
                Err(e) => {
                    self.rbuf = rbuf;
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return self.fail(key, ClientError::Io(e)),
                    }
                }
            };
            let total = kept + n;
            self.rx_ns = rx_ns;
            self.process_and_keep(key, &mut rbuf[..total]);
            self.rx_ns = 0;
            self.rbuf = rbuf;
            if n < space && !to_eof {
                break;
            }
        }
        self.flush_conn(key);
    }

    /// Reads the connections of `part` in one submission, then processes each one's bytes;
    /// a read that fills its slot goes on with plain reads. Their answers are flushed at the
    /// end of the turn, in the batched writes.
    fn read_batch(&mut self, part: &[(usize, u32, usize)]) {
        use std::os::fd::AsRawFd;
        let mut arena = std::mem::take(&mut self.arena);
        if arena.len() < part.len() * SLOT {
            arena.resize(part.len() * SLOT, 0);
        }
        let mut results = std::mem::take(&mut self.results);
        // With receive timestamps each read is a recvmsg with its own header.
        let mut msgs = Vec::new();
        let mut ops = Vec::with_capacity(part.len());
        let mut fds = Vec::new();
        for (&(key, _, kept), slot) in part.iter().zip(arena.chunks_mut(SLOT)) {
            let conn = &self.conns[key];
            slot[..kept].copy_from_slice(&conn.stash);
            if self.cfg.rx_timestamps {
                msgs.push(batch::RecvMsg::new(&mut slot[kept..]));
                fds.push(conn.sock.as_raw_fd());
            } else {
                ops.push(batch::Op::Recv(conn.sock.as_raw_fd(), &mut slot[kept..]));
            }
        }
        if self.cfg.rx_timestamps {
            ops.extend(
                msgs.iter_mut()
                    .zip(&fds)
                    .map(|(m, &fd)| batch::Op::RecvMsg(fd, m)),
            );
        }
        Self::run_batch(
            &mut self.batch,
            &mut self.batched_ops[0],
            &mut ops,
            &mut results,
        );
        drop(ops);
        let stamps: Vec<u64> = msgs.iter().map(|m| m.timestamp_ns().unwrap_or(0)).collect();
        drop(msgs);
        for (i, &(key, gen, kept)) in part.iter().enumerate() {
            // A handler run for an earlier connection of the batch may have closed this one
            // (and its key may serve a new connection).
            if self.conns.get(key).is_none_or(|c| c.gen != gen) {
                continue;
            }
            match results.get_mut(i).and_then(Option::take) {
                Some(Ok(0)) => self.on_eof(key),
                Some(Ok(n)) => {
                    let slot = &mut arena[i * SLOT..(i + 1) * SLOT];
                    self.rx_ns = stamps.get(i).copied().unwrap_or(0);
                    self.process_and_keep(key, &mut slot[..kept + n]);
                    self.rx_ns = 0;
                    if kept + n == SLOT {
                        self.on_readable(key, false);
                    } else {
                        self.mark_dirty(key);
                    }
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Some(Err(e)) if e.kind() != io::ErrorKind::Interrupted => {
                    self.fail(key, ClientError::Io(e))
                }
                _ => self.on_readable(key, false),
            }
        }
        self.results = results;
        self.arena = arena;
    }

    /// Runs one batch; when the ring fails, drops it: plain calls from then on (the
    /// operations it did not run have no result, and their callers make them plain).
    fn run_batch(
        batch: &mut Option<batch::Batch>,
        counter: &mut u64,
        ops: &mut [batch::Op<'_, '_>],
        results: &mut Vec<Option<io::Result<usize>>>,
    ) {
        match batch.as_mut() {
            Some(b) => {
                let _ = b.run(ops, results);
                if !b.usable() {
                    *batch = None;
                }
            }
            None => {
                results.clear();
                results.resize_with(ops.len(), || None);
            }
        }
        *counter += results.iter().filter(|r| r.is_some()).count() as u64;
    }

    /// Queues the connection for the end-of-turn flush when it has bytes to send.
    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.flags & DIRTY == 0 && conn.queue.as_ref().is_some_and(|q| !q.is_empty()) {
                conn.flags |= DIRTY;
                self.dirty.push((key, conn.gen));
            }
        }
    }

    /// `on_readable` for `wss://`: records into rustls until the socket is drained, the
    /// plaintext through `process`.
    fn on_readable_tls(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Some(tls) = conn.tls.as_mut() else {
                return;
            };
            let eof = match tls.read_tls(&mut conn.sock) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(key, ClientError::Io(e)),
            };
            if let Err(e) = tls.process_new_packets() {
                // Send the alert rustls queued, then fail.
                let _ = tls.write_tls(&mut conn.sock);
                return self.fail(key, ClientError::Io(io::Error::other(format!("TLS: {e}"))));
            }
            let mut closed = false;
            loop {
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                let Some(tls) = conn.tls.as_mut() else {
                    return;
                };
                let kept = conn.stash.len();
                let mut rbuf = std::mem::take(&mut self.rbuf);
                if rbuf.len() < kept + 4096 {
                    rbuf = vec![0u8; kept + self.cfg.read_buffer_size.max(4096)].into_boxed_slice();
                }
                rbuf[..kept].copy_from_slice(&conn.stash);
                let n = match tls.reader().read(&mut rbuf[kept..]) {
                    Ok(0) => {
                        closed = true; // close_notify
                        0
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => {
                        self.rbuf = rbuf;
                        return self.fail(key, ClientError::Io(e));
                    }
                };
                if n == 0 {
                    self.rbuf = rbuf;
                    break;
                }
                let total = kept + n;
                self.process_and_keep(key, &mut rbuf[..total]);
                self.rbuf = rbuf;
            }
            if closed || eof {
                self.flush_conn(key);
                return self.on_eof(key);
            }
        }
        self.flush_conn(key);
    }

    /// Processes `data` (kept bytes, then what was read) and keeps the unconsumed rest.
    fn process_and_keep(&mut self, key: usize, data: &mut [u8]) {
        let used = self.process(key, data).min(data.len());
        if let Some(c) = self.conns.get_mut(key) {
            c.stash.clear();
            c.stash.extend_from_slice(&data[used..]);
            if c.stash.is_empty() && c.stash.capacity() > 0 {
                c.stash = Vec::new();
            }
        }
    }

    /// Processes input; returns bytes consumed. May drop the connection.
    fn process(&mut self, key: usize, data: &mut [u8]) -> usize {
        let Some(conn) = self.conns.get_mut(key) else {
            return data.len();
        };
        let mut pos = 0;
        if conn.phase == Phase::Handshaking {
            let offered: Vec<&str> = conn.offered.iter().map(String::as_str).collect();
            let protocol;
            let offered_deflate = conn.flags & DEFLATE_OFFERED != 0;
            let parsed = if offered_deflate {
                handshake::parse_response_offering_extensions(data, &conn.key, &offered, 16 << 10)
            } else {
                handshake::parse_response(data, &conn.key, &offered, 16 << 10)
            };
            match parsed {
                Ok(None) => return 0,
                Ok(Some((resp, n))) => {
                    protocol = resp.protocol.map(str::to_string);
                    pos = n;
                    if let Some(ext) = resp.extensions.filter(|e| !e.is_empty()) {
                        // Only offered extensions get here (parse_response refuses others).
                        let shared = conn.flags & DEFLATE_OWN_OUT == 0;
                        match deflate::check_response(ext, shared) {
                            Ok(p) => {
                                conn.flags &= !(DEFLATE_OWN_IN | DEFLATE_OWN_OUT);
                                conn.flags |= DEFLATE;
                                if !p.server_no_context_takeover {
                                    conn.flags |= DEFLATE_OWN_IN;
                                }
                                if !p.client_no_context_takeover {
                                    conn.flags |= DEFLATE_OWN_OUT;
                                }
                                if let Some(bits) = p.client_max_window_bits.filter(|&b| b < 15) {
                                    let z = (bits >= 9).then(|| Deflater::new(bits, 1));
                                    self.deflate.out.capped.insert(key, z);
                                }
                            }
                            Err(why) => {
                                let e = ClientHandshakeError::BadExtension(why);
                                self.fail(key, ClientError::Handshake(e));
                                return data.len();
                            }
                        }
                    } else {
                        conn.flags &= !DEFLATE_OWN_OUT;
                    }
                }
                Err(e) => {
                    self.fail(key, ClientError::Handshake(e));
                    return data.len();
                }
            }
            conn.flags &= !DEFLATE_OFFERED;
            conn.phase = Phase::Ws;
            conn.ws.open(self.now);
            conn.flags |= APP_OPEN;
            conn.offered = Vec::new();
            if let Some(state) = conn.state.as_mut() {
                let mut ctx = ClientCtx {
                    state,
                    ws: &mut conn.ws,
                    now: self.now,
                    out: ClientOut {
                        key,
                        queue: &mut conn.queue,
                        rng: &mut self.rng,
                        scratch: &mut self.scratch,
                        deflate: lend(&mut self.deflate.out, conn.flags),
                    },
                    rx_ns: self.rx_ns,
                };
                self.handler.on_open(&mut ctx, protocol.as_deref());
            }
            if !conn.ws.may_send() {
                schedule(
                    &mut self.wheel,
                    self.connect_ticks,
                    &self.timeouts,
                    key,
                    conn,
                );
            }
        }
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return data.len();
            };
            if !conn.ws.wants_input() {
                return data.len();
            }
            let Conn {
                decoder,
                state,
                queue,
                flags,
                ws,
                ..
            } = conn;
            let deflating = *flags & DEFLATE != 0;
            let dec_cfg = if deflating {
                DecoderConfig {
                    rsv_allowed: deflate::RSV1,
                    ..self.dec_cfg
                }
            } else {
                self.dec_cfg
            };
            let ClientDeflate {
                out,
                inflater,
                own_in,
                inflated,
            } = &mut self.deflate;
            let own_in_ctx = *flags & DEFLATE_OWN_IN != 0;
            let lent = lend(out, *flags);
            let step = match decoder.next(&dec_cfg, &mut data[pos..]) {
                Ok(Decoded::Event(n, Event::Compressed { text, payload })) => {
                    let inf = if own_in_ctx {
                        own_in.entry(key).or_default()
                    } else {
                        inflater.get_or_insert_with(Inflater::new)
                    };
                    inf.inflate(payload, inflated, dec_cfg.max_message_size, !own_in_ctx)
                        .and_then(|()| deflate::inflated_event(inflated, text))
                        .map(|ev| Decoded::Event(n, ev))
                }
                other => other,
            };
            let Some(st) = state.as_mut() else {
                return data.len();
            };
            let mut ctx = ClientCtx {
                state: st,
                ws,
                now: self.now,
                out: ClientOut {
                    key,
                    queue,
                    rng: &mut self.rng,
                    scratch: &mut self.scratch,
                    deflate: lent,
                },
                rx_ns: self.rx_ns,
            };
            match step {
                Ok(Decoded::Event(n, ev)) => {
                    pos += n;
                    let was_open = ctx.ws.may_send();
                    match ctx.ws.on_event(ev, self.now, &mut ctx.out) {
                        Input::Message(m) => self.handler.on_message(&mut ctx, m),
                        Input::Pong(p) => self.handler.on_pong(&mut ctx, p),
                        Input::Ping(_) | Input::Ignored => {}
                        Input::Close(cf) => {
                            let (code, reason) = (cf.code, cf.reason.to_string());
                            self.notify_close(key, code, &reason);
                            if let Some(c) = self.conns.get_mut(key) {
                                schedule(
                                    &mut self.wheel,
                                    self.connect_ticks,
                                    &self.timeouts,
                                    key,
                                    c,
                                );
                            }
                            return data.len();
                        }
                    }
                    if was_open {
                        if let Some(c) = self.conns.get_mut(key) {
                            if !c.ws.may_send() {
                                // The handler closed: the close timeout runs.
                                schedule(
                                    &mut self.wheel,
                                    self.connect_ticks,
                                    &self.timeouts,
                                    key,
                                    c,
                                );
                            }
                        }
                    }
                }
                Ok(Decoded::Progress(n)) => pos += n,
                Ok(Decoded::Incomplete) => return pos,
                Err(e) => {
                    ctx.ws.on_error(e, self.now, &mut ctx.out);
                    self.fail(key, ClientError::Protocol(e));
                    return data.len();
                }
            }
        }
    }

    fn on_eof(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match conn.phase {
            Phase::Handshaking | Phase::Connecting => {
                self.fail(key, ClientError::ClosedDuringHandshake)
            }
            _ => self.drop_conn(key, close_code::ABNORMAL, "connection closed"),
        }
    }

    fn notify_close(&mut self, key: usize, code: u16, reason: &str) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.flags &= !APP_OPEN;
            if let Some(state) = conn.state.take() {
                self.handler.on_close(key, state, code, reason);
            }
        }
    }

    /// Reports an error, then closes.
    fn fail(&mut self, key: usize, err: ClientError) {
        if let Some(conn) = self.conns.get_mut(key) {
            if let Some(state) = conn.state.as_mut() {
                self.handler.on_error(key, state, &err);
            }
        }
        let code = match &err {
            ClientError::Protocol(e) => e.code,
            _ => close_code::ABNORMAL,
        };
        // A protocol error's close frame is queued: try to send it before dropping.
        if matches!(err, ClientError::Protocol(_)) {
            if let Some(conn) = self.conns.get_mut(key) {
                let _ = write_out(conn);
            }
        }
        self.drop_conn(key, code, "failed");
    }

    fn drop_conn(&mut self, key: usize, code: u16, reason: &str) {
        self.notify_close(key, code, reason);
        if let Some(mut conn) = self.conns.try_remove(key) {
            if let Some(tls) = conn.tls.as_mut() {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut conn.sock);
            }
            let _ = self.poll.registry().deregister(&mut conn.sock);
            let _ = conn.sock.shutdown(Shutdown::Both);
            if conn.flags & DEFLATE != 0 {
                self.deflate.own_in.remove(&key);
                self.deflate.out.own.remove(&key);
                self.deflate.out.capped.remove(&key);
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut batched = std::mem::take(&mut self.batched);
        batched.clear();
        for &(key, gen) in &dirty {
            match self.conns.get_mut(key) {
                Some(c) if c.gen == gen => {
                    c.flags &= !DIRTY;
                    if self.batch.is_some()
                        && c.tls.is_none()
                        && c.phase != Phase::Connecting
                        && c.queue.as_ref().is_some_and(|q| q.single().is_some())
                    {
                        batched.push((key, gen, 0));
                        continue;
                    }
                }
                _ => continue,
            }
            self.flush_conn(key);
        }
        if batched.len() < batch::MIN_BATCH {
            for &(key, _, _) in &batched {
                self.flush_conn(key);
            }
        } else {
            for part in batched.chunks(batch::BATCH) {
                self.write_batch(part);
            }
        }
        self.batched = batched;
        // The list's buffer is kept for the next turn, with anything marked meanwhile.
        dirty.clear();
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    /// Writes the queues of `part` (each one chunk) in one submission.
    fn write_batch(&mut self, part: &[(usize, u32, usize)]) {
        use std::os::fd::AsRawFd;
        let mut results = std::mem::take(&mut self.results);
        let mut ops = Vec::with_capacity(part.len());
        for &(key, _, _) in part {
            let conn = &self.conns[key];
            let bytes = conn.queue.as_ref().and_then(|q| q.single()).unwrap_or(&[]);
            ops.push(batch::Op::Send(conn.sock.as_raw_fd(), bytes));
        }
        Self::run_batch(
            &mut self.batch,
            &mut self.batched_ops[1],
            &mut ops,
            &mut results,
        );
        drop(ops);
        for (i, &(key, _, _)) in part.iter().enumerate() {
            let pending = match results.get_mut(i).and_then(Option::take) {
                Some(Ok(0)) => {
                    // Nothing taken of a non-empty buffer: as write_out would say.
                    self.fail(key, ClientError::Io(io::ErrorKind::WriteZero.into()));
                    continue;
                }
                Some(Ok(n)) => {
                    let Some(q) = self.conns.get_mut(key).and_then(|c| c.queue.as_mut()) else {
                        continue;
                    };
                    q.consume(n);
                    !q.is_empty()
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
                Some(Err(e)) if e.kind() != io::ErrorKind::Interrupted => {
                    self.fail(key, ClientError::Io(e));
                    continue;
                }
                _ => {
                    self.flush_conn(key);
                    continue;
                }
            };
            self.want_writable(key, pending);
        }
        self.results = results;
    }

    fn flush_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            return;
        }
        if conn.queue.is_none() && conn.tls.is_none() {
            return;
        }
        let pending = match write_out(conn) {
            Ok(p) => p,
            Err(e) => return self.fail(key, ClientError::Io(e)),
        };
        self.want_writable(key, pending);
    }

    /// Registers for WRITABLE while bytes are left to write, and only then.
    fn want_writable(&mut self, key: usize, pending: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !pending {
            // The client keeps its (empty) queue: load generators send on every connection,
            // and reallocating it per message costs more than the memory it holds.
            if conn.flags & WANT_WRITABLE != 0 {
                conn.flags &= !WANT_WRITABLE;
                let _ =
                    self.poll
                        .registry()
                        .reregister(&mut conn.sock, Token(key), Interest::READABLE);
            }
        } else if conn.flags & WANT_WRITABLE == 0 {
            conn.flags |= WANT_WRITABLE;
            let _ = self.poll.registry().reregister(
                &mut conn.sock,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            );
        }
    }

    fn fire_timers(&mut self) {
        let mut due = Vec::new();
        let conns = &mut self.conns;
        self.wheel.advance(self.now, |e, tick| {
            let c = conns.get_mut(e.key as usize)?;
            if c.gen != e.gen {
                return None;
            }
            // Overdue entries after a stall longer than a turn are due, not stale.
            match visit(c.armed_at, tick) {
                Visit::Due => {
                    c.armed_at = NOT_ARMED;
                    due.push(e);
                    None
                }
                Visit::Later(t) => Some(t),
                Visit::Stale => None,
            }
        });
        for e in due {
            let key = e.key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let Some(deadline) = deadline(self.connect_ticks, &self.timeouts, conn) else {
                continue;
            };
            if self.now < deadline {
                schedule(
                    &mut self.wheel,
                    self.connect_ticks,
                    &self.timeouts,
                    key,
                    conn,
                );
                continue;
            }
            let stage = match conn.phase {
                Phase::Connecting => Stage::Connect,
                Phase::Handshaking | Phase::Ws => {
                    let mut out = ClientOut {
                        key,
                        queue: &mut conn.queue,
                        rng: &mut self.rng,
                        scratch: &mut self.scratch,
                        deflate: lend(&mut self.deflate.out, conn.flags),
                    };
                    match conn.ws.on_timeout(self.now, &self.timeouts, &mut out) {
                        None | Some(Timeout::PingSent | Timeout::Idle) => {
                            schedule(
                                &mut self.wheel,
                                self.connect_ticks,
                                &self.timeouts,
                                key,
                                conn,
                            );
                            self.mark_dirty(key);
                            continue;
                        }
                        Some(Timeout::Linger) => {
                            // The close handshake was done: the server did not close TCP.
                            self.drop_conn(key, close_code::NORMAL, "closed");
                            continue;
                        }
                        Some(Timeout::Handshake) => Stage::Handshake,
                        Some(Timeout::Pong | Timeout::CloseUnanswered) => Stage::Close,
                    }
                }
            };
            self.fail(key, ClientError::Timeout(stage));
        }
    }
}

fn deadline<S>(connect_ticks: u32, timeouts: &Timeouts, conn: &Conn<S>) -> Option<u32> {
    match conn.phase {
        Phase::Connecting => Some(conn.since + connect_ticks),
        Phase::Handshaking | Phase::Ws => conn.ws.deadline(timeouts),
    }
}

fn schedule<S>(
    wheel: &mut TimerWheel,
    connect_ticks: u32,
    timeouts: &Timeouts,
    key: usize,
    conn: &mut Conn<S>,
) {
    if let Some(due) = deadline(connect_ticks, timeouts, conn) {
        if conn.armed_at == NOT_ARMED || due < conn.armed_at {
            conn.armed_at = wheel.arm(
                Entry {
                    key: key as u32,
                    gen: conn.gen,
                },
                due,
            );
        }
    }
}

/// Writes the queue (through TLS for `wss://`). Returns whether bytes are left to write.
fn write_out<S>(conn: &mut Conn<S>) -> io::Result<bool> {
    let Some(tls) = conn.tls.as_mut() else {
        return match conn.queue.as_mut() {
            Some(q) => q.flush(&mut conn.sock).map(|_| !q.is_empty()),
            None => Ok(false),
        };
    };
    loop {
        if let Some(q) = conn.queue.as_mut() {
            if !q.is_empty() {
                q.flush(&mut TlsWriter(tls))?;
            }
        }
        if !tls.wants_write() {
            // Either all is written, or rustls holds plaintext until its handshake is done
            // (its next input brings us back here).
            return Ok(conn.queue.as_ref().is_some_and(|q| !q.is_empty()));
        }
        match tls.write_tls(&mut conn.sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Plaintext into a rustls session; a full session buffer reads as WouldBlock.
struct TlsWriter<'a>(&'a mut rustls::ClientConnection);

impl Write for TlsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.writer().write(buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.0.writer().write_vectored(bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// IP_BIND_ADDRESS_NO_PORT: defer the source port choice to connect().
fn set_bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let _ = crate::rt::set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    );
}
