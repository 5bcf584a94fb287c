//! Server settings with their defaults. Owns no parsing of command lines or files (see
//! `crate::cli`); every field here is a key of `fanout.toml` and a `fanout serve` flag.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::auth::JwtConfig;
use super::origin::OriginPolicy;
use super::per_ip::RateLimit;
pub use crate::proto::deflate::DeflateConfig;

/// What to do with a connection whose queue of unsent bytes passes the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Stop reading from it until its queue is written out (the echo default).
    Pause,
    /// Close it with 1008 "slow consumer" (the push default).
    Disconnect,
    /// Drop its oldest queued broadcast frames (never a frame partly written).
    DropOldest,
}

/// How a shard moves bytes to and from its sockets. Both wait for readiness with epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// One `recv`/`send`/`writev` per connection per turn.
    Epoll,
    /// A turn's reads, then its writes, for all ready plaintext connections in one io_uring
    /// submission each (`rt::batch`). Falls back to `Epoll` (logged once) where the kernel
    /// refuses io_uring. TLS connections keep the plain calls. The default: never measured
    /// costlier than `Epoll` in server CPU (level on a quiet box, 4-30% cheaper on a busy one)
    /// and 2.5-3.3x less user CPU per echoed message (docs/benchmarks.md).
    #[default]
    Uring,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Shard threads, each with its own SO_REUSEPORT listener and epoll instance.
    pub shards: usize,
    /// Listen backlog, capped by net.core.somaxconn by the kernel.
    pub backlog: u32,
    /// Open connections across shards past which new clients get 503. 0: the fd limit.
    pub max_connections: usize,
    pub max_message_size: usize,
    pub max_header_bytes: usize,
    pub max_http_body: usize,
    /// The shard's read buffer.
    pub read_buffer_size: usize,
    /// Unsent bytes a connection may have queued before the slow-consumer policy applies.
    pub write_queue_limit: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub handshake_timeout: Duration,
    /// Close (1001) a connection that sent nothing for this long. Zero: never.
    pub idle_timeout: Duration,
    /// Close (1001 "reconnect") an open connection this long after its upgrade, each one's
    /// deadline jittered by +-10% so clients do not all come back at once. Zero: never.
    pub max_lifetime: Duration,
    /// Ping a connection that sent nothing for this long. Zero: never.
    pub ping_interval: Duration,
    /// After a ping, drop a connection still silent this long.
    pub pong_timeout: Duration,
    /// How long a close handshake (or the last flush before closing) may take.
    pub close_timeout: Duration,
    /// How long a graceful shutdown waits for connections to close.
    pub drain_timeout: Duration,
    /// Connections accepted per listener per loop turn before other work runs.
    pub accept_batch: usize,
    /// TCP_DEFER_ACCEPT on the listeners: the kernel hands a connection over only once its
    /// first bytes (the request, a ClientHello) are in, so accepting it and reading it are one
    /// wake-up, and a socket that never sends is not accepted until this has passed (it then
    /// gets the handshake timeout). Zero: off.
    pub defer_accept: Duration,
    /// permessage-deflate (off unless enabled).
    pub deflate: DeflateConfig,
    /// Upgrades need a valid HS256 JWT (401 otherwise). None: no authentication.
    pub jwt: Option<JwtConfig>,
    /// Upgrades whose `Origin` is not in the list get 403. None: any origin.
    pub allowed_origins: Option<OriginPolicy>,
    /// Origins whose pages may call the plain HTTP routes cross-origin (CORS: preflights
    /// answered, `Access-Control-Allow-Origin` on responses). None: no CORS headers.
    pub cors_origins: Option<OriginPolicy>,
    /// Open WebSocket connections per source address (IPv6: per /64) past which upgrades get
    /// 429. 0: no cap.
    pub max_conns_per_ip: u32,
    /// Upgrade requests per second per source address past which they get 429 with
    /// Retry-After. None: no limit.
    pub handshake_rate_per_ip: Option<RateLimit>,
    /// The live status page (`GET /`, `/status`, `/status/ws`): off, open, or behind a key.
    pub status: super::status::StatusAccess,
    /// TLS (`wss://`, `https://`) on every connection when set (see `server::tls`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Plain calls or io_uring batches for the sockets' reads and writes.
    pub io: IoMode,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backlog: 4096,
            max_connections: 0,
            max_message_size: crate::proto::DecoderConfig::DEFAULT_MAX_MESSAGE_SIZE,
            max_header_bytes: crate::proto::handshake::DEFAULT_MAX_HEADER_BYTES,
            max_http_body: 1 << 20,
            read_buffer_size: 64 << 10,
            write_queue_limit: 1 << 20,
            slow_consumer: SlowConsumerPolicy::Pause,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            max_lifetime: Duration::ZERO,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            accept_batch: 256,
            defer_accept: Duration::from_secs(1),
            deflate: DeflateConfig::default(),
            jwt: None,
            allowed_origins: None,
            cors_origins: None,
            max_conns_per_ip: 0,
            handshake_rate_per_ip: None,
            status: Default::default(),
            tls: None,
            io: IoMode::default(),
        }
    }
}
