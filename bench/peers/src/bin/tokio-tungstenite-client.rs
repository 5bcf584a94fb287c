//! Connection opener on `tokio-tungstenite`, the baseline `fanout-load
//! connect` is measured against: a plain client as a user would write it.
//!
//!   tokio-tungstenite-client --url ws://127.0.0.1:9001/ --connections 10000
//!                            [--concurrency 1000] [--hold 0s] [--threads CPUs]
//!
//! Opens N connections with `tokio_tungstenite::connect_async`, at most
//! `--concurrency` connects/handshakes in flight (a semaphore), one task per
//! connection on a multi-thread runtime. Keeps them open for `--hold`, prints
//! one JSON line to stdout, then closes them all (Close frame, then waits for
//! the server to close the TCP connection, as RFC 6455 has it).
//!
//! JSON keys: `opened`, `failed`, `seconds` (from the first connect start to
//! the last successful open), `opened_per_second` (= opened / seconds),
//! `cpu_seconds` (this process, user + system, from getrusage at the time the
//! line is printed: startup, connects and hold; not the close),
//! `connections`, `concurrency`, `threads`, and `errors` (first error text
//! per kind, with counts).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::connect_async;

struct Args {
    url: String,
    connections: usize,
    concurrency: usize,
    hold: Duration,
    threads: usize,
}

const USAGE: &str = "usage: tokio-tungstenite-client --url ws://HOST:PORT/PATH --connections N\n\
    \x20      [--concurrency C] [--hold D] [--threads T]\n\
    \n\
    \x20 --url URL          ws:// URL to connect to\n\
    \x20 --connections N    connections to open\n\
    \x20 --concurrency C    connects/handshakes in flight at most (default 1000)\n\
    \x20 --hold D           keep them open this long after the last one opened,\n\
    \x20                    e.g. 5s, 500ms (default 0s)\n\
    \x20 --threads T        tokio worker threads (default: number of CPUs)\n";

fn die(msg: &str) -> ! {
    eprintln!("tokio-tungstenite-client: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let x: f64 = num.parse().ok()?;
    (x >= 0.0 && x.is_finite()).then(|| Duration::from_secs_f64(x * scale))
}

fn parse_args() -> Args {
    let mut url = None;
    let mut connections = None;
    let mut concurrency = 1000;
    let mut hold = Duration::ZERO;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        let positive = |v: String| match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => die(&format!("bad {flag} {v:?}: need a positive integer")),
        };
        match flag.as_str() {
            "--url" => url = Some(value()),
            "--connections" | "-n" => connections = Some(positive(value())),
            "--concurrency" => concurrency = positive(value()),
            "--threads" => threads = positive(value()),
            "--hold" => {
                let v = value();
                hold = parse_duration(&v).unwrap_or_else(|| die(&format!("bad --hold {v:?}")));
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0)
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    Args {
        url: url.unwrap_or_else(|| die("--url is required")),
        connections: connections.unwrap_or_else(|| die("--connections is required")),
        concurrency,
        hold,
        threads,
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur as u64;
            }
        }
        lim.rlim_cur as u64
    }
}

/// User + system CPU seconds of this process (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage with a valid pointer to a local struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Short error kind for the counts, e.g. "Io(ConnectionRefused)".
fn kind(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => format!("Io({:?})", io.kind()),
        Error::Http(resp) => format!("Http({})", resp.status().as_u16()),
        other => {
            let s = format!("{other:?}");
            s.split(['(', ' ', '{']).next().unwrap_or("Other").to_string()
        }
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn run(args: Args) {
    let semaphore = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = JoinSet::new();

    let start = Instant::now();
    for _ in 0..args.connections {
        let permit = semaphore.clone().acquire_owned().await.expect("semaphore closed");
        let url = args.url.clone();
        tasks.spawn(async move {
            let result = connect_async(url).await;
            drop(permit);
            result.map(|(ws, _response)| (ws, Instant::now()))
        });
    }

    let mut open = Vec::with_capacity(args.connections);
    let mut last_open = start;
    let mut errors: BTreeMap<String, (u64, String)> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("connect task panicked") {
            Ok((ws, at)) => {
                last_open = last_open.max(at);
                open.push(ws);
            }
            Err(e) => {
                let entry = errors.entry(kind(&e)).or_insert_with(|| (0, e.to_string()));
                entry.0 += 1;
            }
        }
    }
    let seconds = last_open.duration_since(start).as_secs_f64();
    let failed: u64 = errors.values().map(|(n, _)| n).sum();

    tokio::time::sleep(args.hold).await;

    let opened = open.len();
    let rate = if seconds > 0.0 { opened as f64 / seconds } else { 0.0 };
    let errors_json: Vec<String> = errors
        .iter()
        .map(|(k, (n, first))| {
            format!("{}:{{\"count\":{n},\"first\":{}}}", json_str(k), json_str(first))
        })
        .collect();
    println!(
        "{{\"client\":\"tokio-tungstenite\",\"connections\":{},\"concurrency\":{},\"threads\":{},\
         \"opened\":{opened},\"failed\":{failed},\"seconds\":{seconds:.6},\
         \"opened_per_second\":{rate:.1},\"cpu_seconds\":{:.6},\"errors\":{{{}}}}}",
        args.connections,
        args.concurrency,
        args.threads,
        cpu_seconds(),
        errors_json.join(",")
    );

    // Close politely: send a Close frame, then read until the server has
    // answered and closed the TCP connection (so the TIME_WAIT is its own).
    let mut closing = JoinSet::new();
    for mut ws in open {
        closing.spawn(async move {
            let _ = ws.close(None).await;
            let drain = async { while let Some(Ok(_)) = ws.next().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        });
    }
    while closing.join_next().await.is_some() {}
}

fn main() {
    let args = parse_args();
    let nofile = raise_nofile();
    if (nofile as usize) < args.connections + 64 {
        eprintln!(
            "tokio-tungstenite-client: RLIMIT_NOFILE is {nofile}, fewer than {} connections need",
            args.connections
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
}
