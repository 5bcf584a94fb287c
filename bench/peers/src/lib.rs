//! Shared plumbing for the peer echo servers: command-line flags, the tokio
//! runtime and the listening socket. Everything WebSocket-specific lives in
//! the two binaries, each written the way its crate's own examples do it.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Default listen address shared by both peers (one runs at a time, or pass
/// `--listen` to run both side by side).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9011";

/// Listen backlog; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: u32 = 4096;

/// Largest message either peer accepts, in bytes (64 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct Args {
    pub listen: SocketAddr,
    pub threads: usize,
}

fn usage(prog: &str) -> String {
    format!(
        "usage: {prog} [--listen ADDR] [--threads N]\n\
         \n\
         \x20 --listen ADDR   address to listen on (default {DEFAULT_LISTEN})\n\
         \x20 --threads N     tokio worker threads (default: number of CPUs)\n"
    )
}

/// Parses `--listen ADDR` / `--listen=ADDR` and `--threads N` / `--threads=N`.
/// Exits with status 2 and a usage message on anything else.
pub fn parse_args() -> Args {
    let mut it = std::env::args();
    let prog = it.next().unwrap_or_else(|| "echo".into());
    let die = |msg: &str| -> ! {
        eprintln!("{prog}: {msg}\n{}", usage(&prog));
        std::process::exit(2)
    };

    let mut listen: SocketAddr = DEFAULT_LISTEN.parse().expect("default address");
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> String {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen");
                listen = v
                    .parse()
                    .unwrap_or_else(|e| die(&format!("bad --listen {v:?}: {e}")));
            }
            "--threads" => {
                let v = value("--threads");
                threads = match v.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => die(&format!("bad --threads {v:?}: need a positive integer")),
                };
            }
            "-h" | "--help" => {
                print!("{}", usage(&prog));
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    Args { listen, threads }
}

/// A multi-thread tokio runtime with `threads` workers.
pub fn runtime(threads: usize) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

/// Binds with SO_REUSEADDR and a backlog of [`BACKLOG`], then prints
/// `listening on ADDR` to stderr. Must be called inside the runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    eprintln!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// Per-accepted-socket setup shared by both peers.
pub fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("set TCP_NODELAY: {e}");
    }
}

/// Accept errors such as EMFILE are transient: report, back off briefly, go on.
pub async fn accept_backoff(e: &io::Error) {
    eprintln!("accept: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}
