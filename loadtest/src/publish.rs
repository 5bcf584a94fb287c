//! The fanout scenario's publisher: POSTs to an HTTP publish URL (or sends publish commands
//! over a WebSocket) at a rate, each payload `seq:timestamp_us:` padded to the message size,
//! timestamps on CLOCK_MONOTONIC so subscribers in other processes can time delivery.
//! Each publish is either accepted (HTTP 200, or a `{"op":"published"}` ack) or refused (any
//! other answer, an error reply, a transport error, no ack); the refused sequence numbers go to
//! the subscribers, which count them apart: a refused publish is never "lost".

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout::client::{Client, ClientConfig, ClientCtx, ClientHandler, ConnectOptions, WsUrl};
use fanout::proto::Message;
use hdrhistogram::Histogram;

use crate::report::new_hist;
use crate::run::mono_us;

#[derive(Debug, Clone)]
pub enum Target {
    /// One or more publish URLs, used in turn (publish `seq` goes to `urls[seq % len]`).
    Http {
        urls: Vec<HttpUrl>,
        headers: Vec<(String, String)>,
    },
    Ws {
        addr: SocketAddr,
        url: WsUrl,
        headers: Vec<(String, String)>,
        topic: String,
    },
}

/// One `http://host:port/path` publish URL, resolved.
#[derive(Debug, Clone)]
pub struct HttpUrl {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    /// The publish URLs (`http://host:port/path`, used in turn) with the headers of every request.
    pub fn http(urls: &[String], headers: Vec<(String, String)>) -> Result<Target, String> {
        if urls.is_empty() {
            return Err("give --publish-url or --publish-ws".into());
        }
        Ok(Target::Http {
            urls: urls
                .iter()
                .map(|u| HttpUrl::parse(u))
                .collect::<Result<_, _>>()?,
            headers,
        })
    }
}

impl HttpUrl {
    /// Parses an `http://host:port/path` publish URL.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
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
        Ok(HttpUrl {
            addr,
            host: ws.host_header(),
            path,
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

/// What became of one publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// CLOCK_REALTIME milliseconds (µs precision) when the request or command was sent.
    pub sent_unix_ms: f64,
    /// `None`: accepted; else why it was refused (`http_503`, `connect_refused`, `no_ack` ...).
    pub refused: Option<String>,
}

#[derive(Debug)]
pub struct PublishResult {
    pub attempted: u64,
    /// Accepted publishes.
    pub ok: u64,
    /// Refused publishes by reason (counted from `outcomes` at the end).
    pub failed: BTreeMap<String, u64>,
    /// Subscribers the server said each accepted publish was queued for (`"subscribers":N`),
    /// summed.
    pub queued_for: u64,
    /// Nodes a broker said each accepted publish reached (`"nodes":N`), summed.
    pub nodes_reached: u64,
    pub latency: Histogram<u64>,
    pub seconds: f64,
    /// Every attempted publish's outcome, indexed by sequence number.
    pub outcomes: Vec<Outcome>,
}

impl PublishResult {
    /// The refused sequence numbers, ascending.
    pub fn refused_seqs(&self) -> Vec<u64> {
        self.outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.refused.is_some())
            .map(|(seq, _)| seq as u64)
            .collect()
    }

    /// Records the answer to publish `seq`: `Ok(reach)` accepted it, `Err(reason)` refused it.
    fn record(&mut self, seq: u64, answer: Result<Reach, String>, took: Option<Duration>) {
        let Some(o) = self.outcomes.get_mut(seq as usize) else {
            return;
        };
        match answer {
            Ok(reach) => {
                o.refused = None;
                self.ok += 1;
                self.queued_for += reach.subscribers;
                self.nodes_reached += reach.nodes;
                if let Some(t) = took {
                    let _ = self.latency.record(t.as_micros().max(1) as u64);
                }
            }
            Err(reason) => o.refused = Some(reason),
        }
    }
}

/// A run of consecutive refused publishes and the accepted one after it (if any).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recovery {
    pub first_refused_seq: u64,
    pub first_refused_sent_unix_ms: f64,
    pub last_refused_sent_unix_ms: f64,
    pub next_accepted_seq: Option<u64>,
    pub next_accepted_sent_unix_ms: Option<f64>,
}

/// Every maximal run of consecutive refused sequence numbers, in order.
pub fn recoveries(outcomes: &[Outcome]) -> Vec<Recovery> {
    let mut out = Vec::new();
    let mut run: Option<Recovery> = None;
    for (seq, o) in outcomes.iter().enumerate() {
        match (&o.refused, run.as_mut()) {
            (Some(_), Some(r)) => r.last_refused_sent_unix_ms = o.sent_unix_ms,
            (Some(_), None) => {
                run = Some(Recovery {
                    first_refused_seq: seq as u64,
                    first_refused_sent_unix_ms: o.sent_unix_ms,
                    last_refused_sent_unix_ms: o.sent_unix_ms,
                    next_accepted_seq: None,
                    next_accepted_sent_unix_ms: None,
                })
            }
            (None, Some(_)) => {
                if let Some(mut r) = run.take() {
                    r.next_accepted_seq = Some(seq as u64);
                    r.next_accepted_sent_unix_ms = Some(o.sent_unix_ms);
                    out.push(r);
                }
            }
            (None, None) => {}
        }
    }
    out.extend(run);
    out
}

/// CLOCK_REALTIME in milliseconds, to the microsecond.
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
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

/// What a publish answer says it reached: `"subscribers":N` (in-process) or `"nodes":N`
/// (with a broker); 0 for a key that is absent.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reach {
    pub subscribers: u64,
    pub nodes: u64,
}

fn number_after(body: &str, key: &str) -> Option<u64> {
    let i = body.find(key)? + key.len();
    body[i..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

pub fn reach_in(body: &str) -> Reach {
    Reach {
        subscribers: number_after(body, "\"subscribers\":").unwrap_or(0),
        nodes: number_after(body, "\"nodes\":").unwrap_or(0),
    }
}

/// A stable reason name for an I/O error of the publish request at `stage`.
fn io_reason(stage: &str, e: &std::io::Error) -> String {
    let what = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".to_string(),
        Some(libc::ECONNRESET) => "reset".to_string(),
        Some(libc::ETIMEDOUT | libc::EAGAIN) => "timeout".to_string(),
        Some(libc::EPIPE) => "broken_pipe".to_string(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".to_string(),
        Some(libc::EMFILE | libc::ENFILE) => "fd_limit".to_string(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable".to_string(),
        _ if e.kind() == std::io::ErrorKind::TimedOut => "timeout".to_string(),
        _ => format!("{:?}", e.kind()).to_lowercase(),
    };
    format!("{stage}_{what}")
}

fn http_publish(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| io_reason("connect", &e))?;
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
        .map_err(|e| io_reason("write", &e))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| io_reason("read", &e))?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "bad_response".to_string())?;
    Ok((status, out))
}

/// The WebSocket publisher: answers come in the order of the commands on one connection, so
/// each `published` or `error` reply is matched to the oldest unanswered sequence number.
struct WsPub {
    open: bool,
    closed: bool,
    /// Sent and not answered yet, oldest first.
    pending: VecDeque<(u64, Instant)>,
    answers: Vec<(u64, Result<Reach, String>, Duration)>,
}

impl ClientHandler for WsPub {
    type State = ();
    fn on_open(&mut self, _ctx: &mut ClientCtx<'_, ()>, _p: Option<&str>) {
        self.open = true;
    }
    fn on_message(&mut self, _ctx: &mut ClientCtx<'_, ()>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            let answer = if t.contains("\"op\":\"published\"") {
                Ok(reach_in(t))
            } else if t.contains("\"op\":\"error\"") {
                Err("ws_error_reply".to_string())
            } else {
                return;
            };
            if let Some((seq, sent)) = self.pending.pop_front() {
                self.answers.push((seq, answer, sent.elapsed()));
            }
        }
    }
    fn on_close(&mut self, _key: usize, _st: (), _code: u16, _reason: &str) {
        self.closed = true;
    }
}

/// Publishes `plan.count` messages at `plan.rate`, then waits `grace`, then stores the
/// attempted count and the refused sequence numbers in `flags` and raises `flags.done`.
pub fn run_publisher(
    plan: &PublishPlan,
    grace: Duration,
    stop: &AtomicBool,
    flags: &Flags,
) -> Result<PublishResult, String> {
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / plan.rate.max(1e-3));
    let published = &flags.published;
    let mut r = PublishResult {
        attempted: 0,
        ok: 0,
        failed: BTreeMap::new(),
        queued_for: 0,
        nodes_reached: 0,
        latency: new_hist(),
        seconds: 0.0,
        outcomes: Vec::new(),
    };
    // Until its answer says otherwise, a publish is refused for want of one.
    let attempt = |r: &mut PublishResult| {
        r.outcomes.push(Outcome {
            sent_unix_ms: unix_ms(),
            refused: Some("no_answer".into()),
        });
        r.attempted += 1;
        published.store(r.attempted, Relaxed);
    };
    match &plan.target {
        Target::Http { urls, headers } => {
            // Publishes go out on schedule from a few worker threads, so a slow answer
            // (the server answers once every shard queued the frame) does not delay the next
            // publish. Each publish is its own request: order across them is not promised.
            // Several URLs are used in turn: publish `seq` goes to `urls[seq % len]`.
            let (job_tx, job_rx) = std::sync::mpsc::channel::<(u64, String)>();
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (res_tx, res_rx) = std::sync::mpsc::channel();
            let workers: Vec<_> = (0..PUBLISH_WORKERS)
                .map(|_| {
                    let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
                    let (urls, headers) = (urls.clone(), headers.clone());
                    std::thread::spawn(move || loop {
                        let job = job_rx.lock().ok().and_then(|rx| rx.recv().ok());
                        let Some((seq, body)) = job else { break };
                        let u = &urls[(seq % urls.len() as u64) as usize];
                        let (sent, t) = (unix_ms(), Instant::now());
                        let out = http_publish(u.addr, &u.host, &u.path, &headers, &body);
                        let _ = res_tx.send((seq, sent, out, t.elapsed()));
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
                attempt(&mut r);
                if job_tx.send((seq, payload(seq, plan.size))).is_err() {
                    break;
                }
            }
            drop(job_tx);
            for (seq, sent, out, took) in res_rx {
                if let Some(o) = r.outcomes.get_mut(seq as usize) {
                    o.sent_unix_ms = sent;
                }
                let answer = match out {
                    Ok((200, resp)) => Ok(reach_in(&resp)),
                    Ok((status, _)) => Err(format!("http_{status}")),
                    Err(e) => Err(e),
                };
                r.record(seq, answer, Some(took));
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
                closed: false,
                pending: VecDeque::new(),
                answers: Vec::new(),
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
                attempt(&mut r);
                client.handler().pending.push_back((seq, Instant::now()));
                client.with_conn(key, |ctx| ctx.send_text(&cmd));
            }
            let wait_acks = Instant::now();
            while !client.handler().pending.is_empty()
                && wait_acks.elapsed() < Duration::from_secs(5)
                && !client.handler().closed
            {
                client
                    .poll(Some(Duration::from_millis(10)))
                    .map_err(|e| e.to_string())?;
            }
            for (seq, answer, took) in std::mem::take(&mut client.handler().answers) {
                r.record(seq, answer, Some(took));
            }
            for (seq, _) in std::mem::take(&mut client.handler().pending) {
                r.record(seq, Err("no_ack".into()), None);
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
    // One count per reason, publishes never answered included.
    r.failed = BTreeMap::new();
    for reason in r.outcomes.iter().filter_map(|o| o.refused.as_ref()) {
        *r.failed.entry(reason.clone()).or_default() += 1;
    }
    r.seconds = start.elapsed().as_secs_f64();
    let grace_end = Instant::now() + grace;
    while Instant::now() < grace_end && !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    published.store(r.attempted, Relaxed);
    if let Ok(mut refused) = flags.refused.lock() {
        *refused = r.refused_seqs();
    }
    flags.done.store(true, Relaxed);
    Ok(r)
}

/// The shared flags of one fanout run: `done` is raised after `published` (attempted publishes)
/// and `refused` (their refused sequence numbers, ascending) hold their final values.
#[derive(Clone, Default)]
pub struct Flags {
    pub done: Arc<AtomicBool>,
    pub published: Arc<AtomicU64>,
    pub refused: Arc<Mutex<Vec<u64>>>,
}

/// The line a parent sends its children when the publisher is done:
/// `stop <published> <seq>,<seq>,...` (the list empty when nothing was refused).
pub fn stop_line(published: u64, refused: &[u64]) -> String {
    let list: Vec<String> = refused.iter().map(u64::to_string).collect();
    format!("stop {published} {}\n", list.join(","))
}

/// Reads a `stop` line's arguments (after `stop `): the published count and the refused
/// sequence numbers, ascending; a line from before refusals were counted has no list.
pub fn parse_stop(args: &str) -> (u64, Vec<u64>) {
    let mut it = args.split_whitespace();
    let published = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut refused: Vec<u64> = it
        .next()
        .map(|l| l.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    refused.sort_unstable();
    refused.dedup();
    (published, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(ms: f64, refused: bool) -> Outcome {
        Outcome {
            sent_unix_ms: ms,
            refused: refused.then(|| "http_503".to_string()),
        }
    }

    #[test]
    fn reach_reads_subscribers_or_nodes() {
        assert_eq!(
            reach_in(r#"{"topic":"t","subscribers":42}"#),
            Reach {
                subscribers: 42,
                nodes: 0
            }
        );
        assert_eq!(
            reach_in(r#"{"op":"published","topic":"t","nodes":3}"#),
            Reach {
                subscribers: 0,
                nodes: 3
            }
        );
        assert_eq!(reach_in("HTTP/1.1 200 OK\r\n\r\n{}"), Reach::default());
    }

    #[test]
    fn recoveries_are_maximal_refused_runs() {
        let out = [
            o(1.0, true),
            o(2.0, false),
            o(3.0, true),
            o(4.0, true),
            o(5.0, true),
            o(6.0, false),
            o(7.0, false),
            o(8.0, true),
        ];
        let r = recoveries(&out);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].first_refused_seq, r[0].next_accepted_seq),
            (0, Some(1))
        );
        assert_eq!(r[1].first_refused_seq, 2);
        assert_eq!(r[1].first_refused_sent_unix_ms, 3.0);
        assert_eq!(r[1].last_refused_sent_unix_ms, 5.0);
        assert_eq!(r[1].next_accepted_seq, Some(5));
        assert_eq!(r[1].next_accepted_sent_unix_ms, Some(6.0));
        assert_eq!((r[2].first_refused_seq, r[2].next_accepted_seq), (7, None));
        assert_eq!(r[2].next_accepted_sent_unix_ms, None);
        assert!(recoveries(&[o(1.0, false)]).is_empty());
    }

    #[test]
    fn stop_line_round_trips_and_old_lines_still_parse() {
        let line = stop_line(10, &[1, 3, 7]);
        assert_eq!(line, "stop 10 1,3,7\n");
        let args = line.trim_end().strip_prefix("stop ").unwrap();
        assert_eq!(parse_stop(args), (10, vec![1, 3, 7]));
        assert_eq!(stop_line(4, &[]), "stop 4 \n");
        assert_eq!(parse_stop("4 "), (4, vec![]));
        assert_eq!(parse_stop("12"), (12, vec![]));
    }
}
