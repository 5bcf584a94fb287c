//! The reactor server: N shard threads, each with its own epoll, SO_REUSEPORT listener, slab
//! of connections and timer wheel. Owns sockets, buffers, syscalls, timers and rlimits; must
//! not know about topics (that is `pubsub`/`apps`).

pub mod api;
pub mod auth;
mod compress;
pub mod config;
pub(crate) mod conn;
pub mod handler;
pub mod origin;
pub mod per_ip;
pub(crate) mod shard;
pub mod stats;
pub mod status;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

pub use api::Remote;
pub use api::ShardApi;
pub use config::{Config, IoMode, SlowConsumerPolicy};
pub use handler::{
    Accept, ConnError, ConnId, ConnInfo, Ctx, Delivery, Handler, HttpReply, HttpResponse,
    SharedFrame, Token,
};
pub use stats::{Counter, ShardStats};

/// State every shard shares: the connection count behind `max_connections`, the shutdown
/// flag, and the upgrade policies (each None when off, so an open server does no work for it).
pub(crate) struct Global {
    pub open: AtomicUsize,
    pub max_connections: usize,
    pub shutdown: AtomicBool,
    pub jwt: Option<auth::JwtVerifier>,
    pub origins: Option<origin::OriginPolicy>,
    pub per_ip: Option<per_ip::PerIpLimiter>,
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    shutdown: ShutdownHandle,
    stats: Arc<[Arc<ShardStats>]>,
    global: Arc<Global>,
}

/// Starts a graceful shutdown from anywhere (a signal thread, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    global: Arc<Global>,
    wakers: Arc<[Arc<mio::Waker>]>,
}

impl ShutdownHandle {
    /// Stop accepting, send 1001 to every open connection, wait up to the drain timeout.
    pub fn shutdown(&self) {
        self.global.shutdown.store(true, SeqCst);
        for w in self.wakers.iter() {
            let _ = w.wake();
        }
    }
}

/// Binds one non-blocking SO_REUSEPORT listener.
fn bind_listener(
    addr: SocketAddr,
    backlog: u32,
    defer_accept: Duration,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux copies it with the
    // socket): one setsockopt here instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    if !defer_accept.is_zero() {
        set_defer_accept(&socket, defer_accept)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// TCP_DEFER_ACCEPT, in whole seconds (at least one).
fn set_defer_accept(socket: &Socket, wait: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = wait.as_secs().clamp(1, i32::MAX as u64) as i32;
    crate::rt::set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        secs,
    )
}

impl Server {
    /// Binds the listeners (so errors surface here) and starts the shards.
    pub fn start<H: Handler>(config: Config, mut handler: H) -> io::Result<Server> {
        let shards = config.shards.max(1);
        let capacity = crate::rt::limits::socket_capacity();
        let max_connections = if config.max_connections == 0 {
            capacity
        } else {
            config.max_connections
        };
        // Before the shards accept: a descriptor table that grows under a flood of new
        // connections stalls every shard while it does (see `reserve_fd_table`).
        let fds = crate::rt::limits::fds_needed(max_connections as u64);
        match crate::rt::limits::reserve_fd_table(fds) {
            Ok(size) => tracing::debug!("descriptor table sized for {fds}: {size:?}"),
            Err(e) => tracing::warn!("cannot size the descriptor table for {fds} descriptors: {e}"),
        }
        let global = Arc::new(Global {
            open: AtomicUsize::new(0),
            max_connections,
            shutdown: AtomicBool::new(false),
            jwt: config.jwt.as_ref().map(auth::JwtVerifier::new),
            origins: config.allowed_origins.clone(),
            per_ip: per_ip::PerIpLimiter::new(
                config.max_conns_per_ip,
                config.handshake_rate_per_ip,
            ),
        });
        // The first listener fixes the port (port 0 picks one); the others share it.
        let first = bind_listener(config.listen, config.backlog, config.defer_accept)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners.push(bind_listener(
                local_addr,
                config.backlog,
                config.defer_accept,
            )?);
        }
        let config = Arc::new(config);
        let mut polls = Vec::new();
        let mut wakers = Vec::new();
        let mut links = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..shards {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), shard::WAKER)?);
            let (tx, rx) = std::sync::mpsc::channel::<H::Msg>();
            links.push(api::ShardLink {
                tx,
                waker: waker.clone(),
            });
            inboxes.push(rx);
            wakers.push(waker);
            polls.push(poll);
        }
        let links: Arc<[api::ShardLink<H::Msg>]> = links.into();
        handler.on_start(api::Remote {
            links: links.clone(),
        })?;
        let stats: Arc<[Arc<ShardStats>]> = (0..shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();
        let mut threads = Vec::new();
        for (i, ((poll, listener), inbox)) in
            polls.into_iter().zip(listeners).zip(inboxes).enumerate()
        {
            let shard = shard::Shard::new(
                i as u16,
                handler.clone(),
                poll,
                mio::net::TcpListener::from_std(listener),
                config.clone(),
                shard::Shared {
                    stats: stats.clone(),
                    global: global.clone(),
                    links: links.clone(),
                    inbox,
                },
            )?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fanout-shard-{i}"))
                    .spawn(move || shard.run())?,
            );
        }
        Ok(Server {
            local_addr,
            threads,
            shutdown: ShutdownHandle {
                global: global.clone(),
                wakers: wakers.into(),
            },
            stats,
            global,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    pub fn stats(&self) -> Arc<[Arc<ShardStats>]> {
        self.stats.clone()
    }

    /// Open connections across shards.
    pub fn open_connections(&self) -> usize {
        self.global.open.load(SeqCst)
    }

    /// Connections counted for `ip` by `--max-conns-per-ip` (0 when the cap is off).
    pub fn connections_from(&self, ip: std::net::IpAddr) -> u32 {
        self.global.per_ip.as_ref().map_or(0, |l| l.connections(ip))
    }

    /// The connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.global.max_connections
    }

    /// Waits for every shard to finish (after a shutdown).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
