//! The fanout scenario's publisher: POSTs to an HTTP publish URL (or sends publish commands
//! over a WebSocket) at a rate, each payload `seq:timestamp_us:` padded to the message size,
//! timestamps on CLOCK_MONOTONIC so subscribers in other processes can time delivery.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::client::{Client, ClientConfig, ClientCtx, ClientHandler, ConnectOptions, WsUrl};
use fanout::server::Message;
use hdrhistogram::Histogram;

use crate::report::new_hist;
use crate::run::mono_us;

#[derive(Debug, Clone)]
pub enum Target {
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
        headers: Vec<(String, String)>,
    },
    Ws {
        addr: SocketAddr,
        url: WsUrl,
        headers: Vec<(String, String)>,
        topic: String,
    },
}

impl Target {
    /// Parses an `http://host:port/path` publish URL.
    pub fn http(url: &str, headers: Vec<(String, String)>) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url}: expected an http:// publish URL (https is not supported)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        // Reuse the ws:// parser for host and port.
        let ws = WsUrl::parse(&format!("ws://{authority}/")).map_err(|e| format!("{url}: {e}"))?;
        let ws = WsUrl {
            port: if authority.contains(':') { ws.port } else { 80 },
            ..ws
        };
        let addr = ws
            .resolve()
            .map_err(|e| format!("{url}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{url}: no address"))?;
        Ok(Target::Http {
            addr,
            host: ws.host_header(),
            path,
            headers,
        })
    }
}

#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub target: Target,
    pub rate: f64,
    pub count: u64,
    pub size: usize,
    /// The WebSocket publisher's client settings (TLS trust for wss://).
    pub client: ClientConfig,
}

#[derive(Debug)]
pub struct PublishResult {
    pub attempted: u64,
    pub ok: u64,
    pub failed: BTreeMap<String, u64>,
    /// Subscribers the server said each publish was queued for, summed.
    pub queued_for: u64,
    pub latency: Histogram<u64>,
    pub seconds: f64,
}

/// HTTP publishes in flight at once.
const PUBLISH_WORKERS: usize = 8;

pub fn payload(seq: u64, size: usize) -> String {
    let mut p = format!("{seq}:{}:", mono_us());
    if p.len() < size {
        p.extend(std::iter::repeat_n('x', size - p.len()));
    }
    p
}

fn subscribers_in(body: &str) -> Option<u64> {
    let i = body.find("\"subscribers\":")? + "\"subscribers\":".len();
    body[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

fn http_publish(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect_{:?}", e.kind()).to_lowercase())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write_{:?}", e.kind()).to_lowercase())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read_{:?}", e.kind()).to_lowercase())?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "bad_response".to_string())?;
    Ok((status, out))
}

struct WsPub {
    open: bool,
    acks: u64,
    queued_for: u64,
    errors: u64,
    closed: bool,
}

impl ClientHandler for WsPub {
    type State = ();
    fn on_open(&mut self, _ctx: &mut ClientCtx<'_, ()>, _p: Option<&str>) {
        self.open = true;
    }
    fn on_message(&mut self, _ctx: &mut ClientCtx<'_, ()>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            if t.contains("\"op\":\"published\"") {
                self.acks += 1;
                self.queued_for += subscribers_in(t).unwrap_or(0);
            } else if t.contains("\"op\":\"error\"") {
                self.errors += 1;
            }
        }
    }
    fn on_close(&mut self, _key: usize, _st: (), _code: u16, _reason: &str) {
        self.closed = true;
    }
}

/// Publishes `plan.count` messages at `plan.rate`, then waits `grace`, then stores the
/// attempted count in `published` and raises `done`.
pub fn run_publisher(
    plan: &PublishPlan,
    grace: Duration,
    stop: &AtomicBool,
    published: &AtomicU64,
    done: &AtomicBool,
) -> Result<PublishResult, String> {
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / plan.rate.max(1e-3));
    let mut r = PublishResult {
        attempted: 0,
        ok: 0,
        failed: BTreeMap::new(),
        queued_for: 0,
        latency: new_hist(),
        seconds: 0.0,
    };
    match &plan.target {
        Target::Http {
            addr,
            host,
            path,
            headers,
        } => {
            // Publishes go out on schedule from a few worker threads, so a slow answer
            // (the server answers once every shard queued the frame) does not delay the next
            // publish. Each publish is its own request: order across them is not promised.
            let (job_tx, job_rx) = std::sync::mpsc::channel::<(u64, String)>();
            let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
            let (res_tx, res_rx) = std::sync::mpsc::channel();
            let workers: Vec<_> = (0..PUBLISH_WORKERS)
                .map(|_| {
                    let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
                    let (addr, host, path, headers) =
                        (*addr, host.clone(), path.clone(), headers.clone());
                    std::thread::spawn(move || loop {
                        let job = job_rx.lock().ok().and_then(|rx| rx.recv().ok());
                        let Some((_seq, body)) = job else { break };
                        let t = Instant::now();
                        let out = http_publish(addr, &host, &path, &headers, &body);
                        let _ = res_tx.send((out, t.elapsed()));
                    })
                })
                .collect();
            drop(res_tx);
            for seq in 0..plan.count {
                if stop.load(Relaxed) {
                    break;
                }
                let due = start + period * seq as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                r.attempted += 1;
                published.store(r.attempted, Relaxed);
                if job_tx.send((seq, payload(seq, plan.size))).is_err() {
                    break;
                }
            }
            drop(job_tx);
            for (out, took) in res_rx {
                match out {
                    Ok((200, resp)) => {
                        r.ok += 1;
                        r.queued_for += subscribers_in(&resp).unwrap_or(0);
                        let _ = r.latency.record(took.as_micros().max(1) as u64);
                    }
                    Ok((status, _)) => *r.failed.entry(format!("http_{status}")).or_default() += 1,
                    Err(e) => *r.failed.entry(e).or_default() += 1,
                }
            }
            for w in workers {
                let _ = w.join();
            }
        }
        Target::Ws {
            addr,
            url,
            headers,
            topic,
        } => {
            let handler = WsPub {
                open: false,
                acks: 0,
                queued_for: 0,
                errors: 0,
                closed: false,
            };
            let mut client =
                Client::new(plan.client.clone(), handler).map_err(|e| e.to_string())?;
            let opts = ConnectOptions {
                headers: headers.clone(),
                ..ConnectOptions::default()
            };
            let key = client
                .connect(*addr, url, &opts, ())
                .map_err(|e| format!("publisher: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !client.handler().open {
                if client.handler().closed || Instant::now() > deadline {
                    return Err(format!("publisher could not connect to {url}"));
                }
                client
                    .poll(Some(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())?;
            }
            let start = Instant::now();
            let topic_json = serde_json::to_string(topic).unwrap_or_default();
            for seq in 0..plan.count {
                if stop.load(Relaxed) || client.handler().closed {
                    break;
                }
                let due = start + period * seq as u32;
                while Instant::now() < due {
                    let wait = due
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(5));
                    client.poll(Some(wait)).map_err(|e| e.to_string())?;
                }
                let cmd = format!(
                    "{{\"op\":\"publish\",\"topic\":{topic_json},\"data\":{}}}",
                    serde_json::to_string(&payload(seq, plan.size)).unwrap_or_default()
                );
                r.attempted += 1;
                published.store(r.attempted, Relaxed);
                client.with_conn(key, |ctx| ctx.send_text(&cmd));
            }
            let wait_acks = Instant::now();
            while client.handler().acks + client.handler().errors < r.attempted
                && wait_acks.elapsed() < Duration::from_secs(5)
                && !client.handler().closed
            {
                client
                    .poll(Some(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())?;
            }
            r.ok = client.handler().acks;
            r.queued_for = client.handler().queued_for;
            if client.handler().errors > 0 {
                r.failed
                    .insert("ws_error_reply".into(), client.handler().errors);
            }
            let missing = r.attempted.saturating_sub(r.ok + client.handler().errors);
            if missing > 0 {
                r.failed.insert("no_ack".into(), missing);
            }
            client.close(key, 1000, "");
            let t = Instant::now();
            while !client.is_empty() && t.elapsed() < Duration::from_secs(2) {
                client
                    .poll(Some(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    let grace_end = Instant::now() + grace;
    while Instant::now() < grace_end && !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    published.store(r.attempted, Relaxed);
    done.store(true, Relaxed);
    Ok(r)
}

/// The shared flags of one fanout run.
#[derive(Clone, Default)]
pub struct Flags {
    pub done: Arc<AtomicBool>,
    pub published: Arc<AtomicU64>,
}
