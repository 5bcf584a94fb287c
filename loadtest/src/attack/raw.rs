//! Raw sockets for the attacks that need malformed bytes: an HTTP upgrade written by hand,
//! masked frames with any header bits, and reading what the server answered (an HTTP status,
//! a close code, EOF or a reset). Every read and write is bounded by a deadline and a size.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// The sample key of RFC 6455: the answer's accept value is not checked here.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Connects from `source` (any 127/8 address; None: the kernel's choice) within 3 s.
pub fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        s.bind(&SocketAddr::from((ip, 0)).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(3))?;
    s.set_tcp_nodelay(true)?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(3)))?;
    t.set_write_timeout(Some(Duration::from_secs(3)))?;
    Ok(t)
}

/// Sets SO_LINGER 0, so that dropping the stream sends a reset instead of a FIN.
pub fn set_linger_zero(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Shrinks the socket's receive buffer (a reader that barely reads).
pub fn set_small_rcvbuf(s: &TcpStream, bytes: usize) {
    let _ = socket2::SockRef::from(s).set_recv_buffer_size(bytes);
}

/// An upgrade request for `path` with extra header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends an upgrade request and reads the answer's head: Ok(()) on 101, else the outcome.
pub fn upgrade(s: &mut TcpStream, path: &str, extra: &str) -> Result<(), String> {
    s.write_all(upgrade_request(path, extra).as_bytes())
        .map_err(|e| io_outcome(&e))?;
    match read_status(s, Instant::now() + Duration::from_secs(3)) {
        o if o == "http 101" => Ok(()),
        o => Err(o),
    }
}

/// Names an I/O error as an outcome.
pub fn io_outcome(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            "reset".into()
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "no answer".into(),
        _ => format!("error {e}"),
    }
}

fn set_deadline(s: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .is_ok()
}

/// Reads an HTTP answer's status line (at most 16 KiB of head): "http NNN", "eof", "reset" or
/// "no answer" by the deadline.
pub fn read_status(s: &mut TcpStream, deadline: Instant) -> String {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    while buf.len() < 16 << 10 {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok());
            return match code {
                Some(c) => format!("http {c}"),
                None => "bad answer".into(),
            };
        }
        if !set_deadline(s, deadline) {
            return "no answer".into();
        }
        match s.read(&mut chunk) {
            Ok(0) => return "eof".into(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return io_outcome(&e),
        }
    }
    "bad answer".into()
}

/// A client frame: `first` is the FIN/RSV/opcode byte, masked unless `unmasked`.
pub fn frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    let m = if unmasked { 0 } else { 0x80 };
    let n = payload.len();
    if n < 126 {
        out.push(m | n as u8);
    } else if n <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }
    out
}

/// Reads server frames until a close frame, EOF, a reset or the deadline, discarding at most
/// `max_bytes`: "close NNNN", "eof", "reset", "no answer". Answers a close with a close.
pub fn read_close(s: &mut TcpStream, deadline: Instant, max_bytes: usize) -> String {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 << 10];
    let mut seen = 0usize;
    loop {
        // Parse whole frames at the front of `buf`.
        loop {
            if buf.len() < 2 {
                break;
            }
            let op = buf[0] & 0x0f;
            let len7 = (buf[1] & 0x7f) as usize;
            let (hl, len) = match len7 {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (
                        10,
                        u64::from_be_bytes(b).min(usize::MAX as u64 / 2) as usize,
                    )
                }
                126 | 127 => break,
                n => (2, n),
            };
            if op == 8 {
                if buf.len() < hl + len.min(125) {
                    break;
                }
                let code = if len >= 2 {
                    u16::from_be_bytes([buf[hl], buf[hl + 1]])
                } else {
                    1005
                };
                let _ = s.write_all(&frame(0x88, &code.to_be_bytes(), false));
                return format!("close {code}");
            }
            if buf.len() < hl + len {
                // Skip a long payload without keeping it.
                let have = buf.len() - hl;
                let skip = len - have;
                buf.clear();
                if !skip_bytes(s, skip, deadline, &mut chunk, &mut seen, max_bytes) {
                    return if Instant::now() >= deadline {
                        "no answer".into()
                    } else {
                        "eof".into()
                    };
                }
                continue;
            }
            buf.drain(..hl + len);
        }
        if seen > max_bytes || !set_deadline(s, deadline) {
            return "no answer".into();
        }
        match s.read(&mut chunk) {
            Ok(0) => return "eof".into(),
            Ok(n) => {
                seen += n;
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return io_outcome(&e),
        }
    }
}

fn skip_bytes(
    s: &mut TcpStream,
    mut n: usize,
    deadline: Instant,
    chunk: &mut [u8],
    seen: &mut usize,
    max: usize,
) -> bool {
    while n > 0 {
        if *seen > max || !set_deadline(s, deadline) {
            return false;
        }
        let want = n.min(chunk.len());
        match s.read(&mut chunk[..want]) {
            Ok(0) => return false,
            Ok(k) => {
                n -= k;
                *seen += k;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes `bytes` until done, an error, or the deadline (non-blocking writes would block for
/// `stall` in a row): returns (bytes written, outcome of the stop: "done", "blocked", "reset").
pub fn write_bounded(
    s: &mut TcpStream,
    bytes: &[u8],
    deadline: Instant,
    stall: Duration,
) -> (usize, String) {
    let mut off = 0;
    let _ = s.set_nonblocking(true);
    let mut blocked_since: Option<Instant> = None;
    let out = loop {
        if off == bytes.len() {
            break "done".to_string();
        }
        let now = Instant::now();
        if now >= deadline {
            break "blocked".into();
        }
        match s.write(&bytes[off..]) {
            Ok(0) => break "eof".into(),
            Ok(n) => {
                off += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert(now);
                if now - since >= stall {
                    break "blocked".into();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break io_outcome(&e),
        }
    };
    let _ = s.set_nonblocking(false);
    (off, out)
}

/// One HTTP request on a fresh connection from `source` with extra header lines (each ending
/// in CRLF): (status, body), within 3 s.
pub fn http(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut s = connect(addr, source).map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    while buf.len() < 4 << 20 && set_deadline(&s, deadline) {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let cl = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if cl.is_some_and(|cl| buf.len() >= end + 4 + cl) {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if buf.is_empty() {
                    return Err(e.to_string());
                }
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    Ok((code, body.to_string()))
}
