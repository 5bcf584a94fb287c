//! The well-behaved client beside every attack: a few connections sending small timestamped
//! messages at a steady rate on the project's client reactor and timing their return (echo,
//! or a WebSocket publish to its own topic on the push app), in histograms by phase.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use fanout::client::{
    Client, ClientConfig, ClientCtx, ClientError, ClientHandler, ConnectOptions, WsUrl,
};
use fanout::proto::Message;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{App, JWT_SECRET};
use crate::report::{percentiles, Percentiles};

/// The good client's source address: apart from the attackers' (per-IP caps).
pub const GOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

pub struct GoodPlan {
    pub addr: SocketAddr,
    pub app: App,
    pub connections: usize,
    pub rate: f64,
    pub jwt: bool,
}

#[derive(Debug)]
pub struct GoodStats {
    pub before: Percentiles,
    pub during: Percentiles,
    pub after: Percentiles,
    pub sent: u64,
    pub received: u64,
    /// Connections that failed or closed before the end.
    pub errors: u64,
}

pub struct GoodClient {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    handle: JoinHandle<GoodStats>,
}

/// An HS256 JWT for `claims` signed with `secret` (header `alg`: as given).
pub fn jwt(secret: &[u8], alg: &str, claims: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"));
    let body = b64.encode(claims);
    let msg = format!("{head}.{body}");
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return msg + ".";
    };
    mac.update(msg.as_bytes());
    let sig = b64.encode(mac.finalize().into_bytes());
    format!("{msg}.{sig}")
}

/// A token the attack servers accept, valid for an hour.
pub fn valid_jwt() -> String {
    let exp = fanout::rt::unix_now() + 3600;
    jwt(
        JWT_SECRET.as_bytes(),
        "HS256",
        &format!("{{\"sub\":\"good\",\"exp\":{exp}}}"),
    )
}

struct Good {
    start: Instant,
    open: Arc<AtomicUsize>,
    hist: [Histogram<u64>; 3],
    received: u64,
    errors: u64,
    stopping: bool,
    opened: Vec<usize>,
}

impl ClientHandler for Good {
    type State = ();

    fn on_open(&mut self, ctx: &mut ClientCtx<'_, ()>, _protocol: Option<&str>) {
        self.opened.push(ctx.key());
        self.open.fetch_add(1, Relaxed);
    }

    fn on_message(&mut self, _ctx: &mut ClientCtx<'_, ()>, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        // "phase:nanos" (push acknowledgements and the like are JSON: skipped).
        let Some((p, ns)) = t.split_once(':') else {
            return;
        };
        let (Ok(p), Ok(ns)) = (p.parse::<usize>(), ns.parse::<u64>()) else {
            return;
        };
        let now = self.start.elapsed().as_nanos() as u64;
        self.received += 1;
        if let Some(h) = self.hist.get_mut(p) {
            let _ = h.record(now.saturating_sub(ns) / 1000);
        }
    }

    fn on_error(&mut self, _key: usize, _state: &mut (), err: &ClientError) {
        if !self.stopping {
            eprintln!("good client: {err}");
            self.errors += 1;
        }
    }

    fn on_close(&mut self, key: usize, _state: (), code: u16, _reason: &str) {
        self.opened.retain(|k| *k != key);
        if !self.stopping && code != 1001 {
            self.errors += 1;
        }
    }
}

impl GoodClient {
    pub fn start(plan: GoodPlan) -> Self {
        let phase = Arc::new(AtomicU8::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (p, s, o) = (phase.clone(), stop.clone(), open.clone());
        let handle = std::thread::spawn(move || run(plan, p, s, o));
        GoodClient {
            phase,
            stop,
            open,
            handle,
        }
    }

    /// Waits up to `limit` for `n` open connections.
    pub fn wait_open(&self, n: usize, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.open.load(Relaxed) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// 0 before the attack, 1 during, 2 after.
    pub fn set_phase(&self, p: u8) {
        self.phase.store(p, Relaxed);
    }

    pub fn stop(self) -> GoodStats {
        self.stop.store(true, Relaxed);
        self.handle.join().unwrap_or_else(|_| failed())
    }
}

fn failed() -> GoodStats {
    GoodStats {
        before: percentiles(&hist()),
        during: percentiles(&hist()),
        after: percentiles(&hist()),
        sent: 0,
        received: 0,
        errors: 1,
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn run(
    plan: GoodPlan,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
) -> GoodStats {
    let start = Instant::now();
    let handler = Good {
        start,
        open,
        hist: [hist(), hist(), hist()],
        received: 0,
        errors: 0,
        stopping: false,
        opened: Vec::new(),
    };
    let cfg = ClientConfig {
        batch_io: false,
        ..ClientConfig::default()
    };
    let mut client = match Client::new(cfg, handler) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("good client: {e}");
            return failed();
        }
    };
    let mut headers = Vec::new();
    if plan.jwt {
        headers.push((
            "Authorization".to_string(),
            format!("Bearer {}", valid_jwt()),
        ));
    }
    let opts = ConnectOptions {
        headers,
        source: Some(IpAddr::V4(GOOD_IP)),
        ..ConnectOptions::default()
    };
    let n = plan.connections.max(1);
    for i in 0..n {
        let path = match plan.app {
            App::Echo => "/".to_string(),
            App::Push => format!("/ws?topics=probe-{i}"),
        };
        let Ok(url) = WsUrl::parse(&format!("ws://{}{path}", plan.addr)) else {
            continue;
        };
        if let Err(e) = client.connect(plan.addr, &url, &opts, ()) {
            eprintln!("good client: {e}");
            client.handler().errors += 1;
        }
    }
    // One message per connection every `interval`, staggered.
    let interval = Duration::from_secs_f64(n as f64 / plan.rate.max(1.0));
    let mut next: Vec<Instant> = (0..n)
        .map(|i| start + interval.mul_f64(i as f64 / n as f64))
        .collect();
    let mut sent = 0u64;
    let cap = start + Duration::from_secs(3600);
    while !stop.load(Relaxed) && Instant::now() < cap {
        let _ = client.poll(Some(Duration::from_millis(1)));
        let now = Instant::now();
        let keys = client.handler().opened.clone();
        for (i, key) in keys.iter().enumerate().take(n) {
            if now < next[i] {
                continue;
            }
            next[i] += interval;
            if next[i] < now {
                next[i] = now + interval;
            }
            let p = phase.load(Relaxed);
            let ns = start.elapsed().as_nanos() as u64;
            let text = match plan.app {
                App::Echo => format!("{p}:{ns}"),
                App::Push => {
                    format!("{{\"op\":\"publish\",\"topic\":\"probe-{i}\",\"data\":\"{p}:{ns}\"}}")
                }
            };
            if client.with_conn(*key, |ctx| ctx.send_text(&text)) {
                sent += 1;
            }
        }
    }
    // Let what is in flight come back (up to 2 s), so that sent - received is what was lost.
    let t = Instant::now();
    while client.handler().received < sent && t.elapsed() < Duration::from_secs(2) {
        let _ = client.poll(Some(Duration::from_millis(5)));
    }
    client.handler().stopping = true;
    for key in client.keys() {
        client.close(key, 1000, "done");
    }
    let t = Instant::now();
    while !client.is_empty() && t.elapsed() < Duration::from_secs(2) {
        let _ = client.poll(Some(Duration::from_millis(10)));
    }
    let h = client.handler();
    GoodStats {
        before: percentiles(&h.hist[0]),
        during: percentiles(&h.hist[1]),
        after: percentiles(&h.hist[2]),
        sent,
        received: h.received,
        errors: h.errors,
    }
}
