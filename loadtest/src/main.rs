//! `fanout-load`: a load generator for WebSocket servers on fanout's client reactor.
//! Scenarios `connect` and `echo` against any ws:// URL; past one process's fd limit it splits
//! the connections across child processes and merges their histograms and counts.
//! `fanout` counts each publish as accepted or refused: only accepted publishes are expected
//! by subscribers, so a refused one is never "lost" (a refused one delivered anyway counts as
//! `delivered_refused`); a refusal still makes the run fail.
//!
//! Exit status: 0 when all went well; 2 for a usage or setup error; 3 when a connection failed
//! or dropped, the run was interrupted, or (fanout) an accepted publish was lost or duplicated
//! or any publish was refused.

mod attack;
mod procinfo;
mod publish;
mod report;
mod run;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use fanout::client::{tls_client_config, ClientConfig, ConnectOptions, Trust, WsUrl};
use fanout::parse::{parse_duration, parse_size};
use indicatif::{ProgressBar, ProgressStyle};

use report::{Merged, Partial, ServerFigures};
use run::{Observer, Plan, Progress, Scenario, PHASE_CLOSE, PHASE_HOLD, PHASE_IDLE};

/// A child process learns its share from this variable: "index/of/connections".
const CHILD_ENV: &str = "FANOUT_LOAD_CHILD";

#[derive(Parser, Debug)]
#[command(
    name = "fanout-load",
    version,
    about = "Load generator for WebSocket servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open N connections at a ramp rate, hold them, close them.
    Connect(ConnectArgs),
    /// N connections each sending messages and timing the echoes.
    Echo(EchoArgs),
    /// N subscribers and one publisher: delivery latency, lost and duplicated messages.
    ///
    /// Each publish is accepted (HTTP 200, or a {"op":"published"} ack) or refused (any other
    /// status, an error reply, a transport error, no ack). Subscribers are expected to get the
    /// accepted publishes only: "lost" counts accepted publishes a subscriber missed, never
    /// refused ones. Exit status 3 when a connection failed or dropped, an accepted publish was
    /// lost or duplicated, or any publish was refused (a refusal fails the run without counting
    /// as lost); 2 for a usage or setup error.
    Fanout(FanoutArgs),
    /// The hostile review as a suite: `attack KIND|all|soak|list` against servers it starts.
    Attack(attack::AttackArgs),
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers opened per second during the ramp (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Publish by HTTP POST to this URL (e.g. http://127.0.0.1:9001/publish/bench); repeat
    /// to publish to several (e.g. nodes on different ports) in turn.
    #[arg(
        long,
        conflicts_with = "publish_ws",
        required_unless_present = "publish_ws"
    )]
    publish_url: Vec<String>,
    /// Publish over a WebSocket connection to this URL with {"op":"publish"} commands.
    #[arg(long)]
    publish_ws: Option<String>,
    /// Header for the publisher's requests, 'Name: value' (e.g. 'Authorization: Bearer KEY').
    #[arg(long = "publish-header")]
    publish_headers: Vec<String>,
    /// Publishes per second.
    #[arg(long, default_value_t = 1.0)]
    publish_rate: f64,
    /// How many messages to publish.
    #[arg(long, default_value_t = 10)]
    publish_count: u64,
    /// Payload size in bytes (at least the `seq:timestamp:` prefix).
    #[arg(long, default_value = "100", value_parser = parse_size)]
    message_size: usize,
    /// Topic for --subscribe and --publish-ws.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Subscribe by sending this text on open ({topic} is replaced), e.g.
    /// '{"op":"subscribe","topic":"{topic}"}'; without it, topics are in the --url.
    #[arg(long)]
    subscribe: Option<String>,
    /// Time to wait for the last deliveries after the last publish.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    grace: Duration,
    /// Churn: each second, this fraction of the subscribers (0 < P <= 1, spread over the
    /// second, round robin) drop their connection, half with a close (1000), half with a TCP
    /// reset, and reconnect at once (or after --churn-away) to the same URL with the last position they saw
    /// (`since.<topic>=OFFSET:EPOCH` in the URL, or "since" in the --subscribe command), each
    /// still one subscriber for lost and duplicated counts. Recovery needs a push server run
    /// with --envelope and a history (--history-size): without one, every reconnect loses what
    /// was published meanwhile, and the report shows it as lost. A reconnect the server does
    /// not recover fails the run (exit 3). Churn starts with the first delivery; when the
    /// server gives positions, only subscribers that saw one are dropped.
    #[arg(long, value_name = "P")]
    churn: Option<f64>,
    /// With --churn: how long a dropped subscriber stays away before it reconnects (what is
    /// published meanwhile must come back from the history); recovery times count it.
    #[arg(long, default_value = "0", value_parser = parse_duration, requires = "churn")]
    churn_away: Duration,
}

#[derive(Args, Debug)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Connections opened per second (0: as fast as --max-in-flight allows).
    #[arg(long, visible_alias = "connect-rate", default_value_t = 0.0)]
    rate: f64,
    /// Ramp in steps of this many connections (across processes): each step is opened,
    /// held --step-hold, then the next starts; the progress shows the steps held by every
    /// process (`scripts/bench-connections.sh --find-limit`).
    #[arg(long, default_value_t = 0)]
    ramp_step: u64,
    /// How long each --ramp-step is held before the next.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    step_hold: Duration,
}

#[derive(Args, Debug)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Connections opened per second during the ramp (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Hold every connection open and silent this long after the ramp, before the messages
    /// start (one ramp for an idle hold and an echo; the progress says `idle`).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    hold: Duration,
    /// Message size (at least 16 bytes: a timestamp and a sequence number lead it).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    message_size: usize,
    /// Messages per second per connection; without it, each connection keeps --pipeline
    /// messages in flight, as fast as the server answers.
    #[arg(long, conflicts_with = "pipeline")]
    rate: Option<f64>,
    /// Messages in flight per connection when no --rate is given.
    #[arg(long, default_value_t = 1)]
    pipeline: u32,
    /// Work in ticks of this length: read what arrived and send what is due once per tick,
    /// sleeping between, instead of waking for every answer; far less CPU on both sides
    /// under --rate. Round trips are then timed by the kernel's receive timestamps, so the
    /// sleep is not in them (answers read together share the last one's time, so at most one
    /// message per connection per tick: --pipeline 1, or --rate R with R x tick < 1; ws://
    /// only). What falls due within a tick goes out together. e.g. 100us; 0: wake for every
    /// event.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    tick: Duration,
    /// Send text frames (hex timestamp) instead of binary.
    #[arg(long)]
    text: bool,
    /// Fill messages with this file's bytes (cycled) after the timestamp, e.g. a JSON
    /// document to measure compression; ASCII with --text [default: the byte `x`].
    #[arg(long)]
    payload_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct Common {
    /// Target ws:// URL; repeat to spread connections over several (round robin).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Connections to open.
    #[arg(long, short = 'n')]
    connections: u64,
    /// Hold (connect) or run (echo) time after the ramp, e.g. 60s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Source addresses to bind, e.g. 127.0.0.1-127.0.0.16 or 127.0.0.1,127.0.0.2.
    #[arg(long)]
    source_ips: Option<String>,
    /// Processes to split the connections across: auto (as RLIMIT_NOFILE requires) or N.
    #[arg(long, default_value = "auto")]
    processes: String,
    /// A server process to sample (RSS, CPU); repeat for several.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write HdrHistogram percentile distributions here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write an SVG plot of latency by percentile here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Extra request header, 'Name: value'; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Subprotocol to offer; repeatable.
    #[arg(long = "protocol")]
    protocols: Vec<String>,
    /// Offer permessage-deflate (no context takeover either way); when accepted, every
    /// message is sent compressed and compressed answers are inflated.
    #[arg(long)]
    deflate: bool,
    /// With --deflate: offer plain permessage-deflate, letting both sides keep their
    /// contexts (each connection then has its own on both ends).
    #[arg(long, requires = "deflate")]
    deflate_context_takeover: bool,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Connections connecting or handshaking at once, per process.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: u64,
    /// No live progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Also print the progress as one plain line to stderr this often (e.g. 1s), for
    /// scripts: `progress phase=ramp started=.. opened=.. open=.. failed=.. dropped=..
    /// received=.. steps=..`.
    #[arg(long, value_parser = parse_duration)]
    progress_lines: Option<Duration>,
    /// One recv(2) or send(2) per connection instead of one io_uring submission carrying
    /// every ready connection's read (and write) of a loop turn (the default, when the
    /// kernel allows io_uring).
    #[arg(long)]
    no_batch_io: bool,
    /// wss://: trust the certificates in this PEM file (e.g. a self-signed server's)
    /// instead of the system's CA bundle.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    tls_ca: Option<PathBuf>,
    /// wss://: accept any server certificate (test servers only).
    #[arg(long)]
    insecure: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Attack(a) = &cli.cmd {
        return attack::run(a);
    }
    let mut fanout = None;
    let mut shape = Shape::default();
    let (scenario_name, common, scenario, connect_rate) = match &cli.cmd {
        Cmd::Fanout(a) => {
            if let Some(p) = a.churn.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
                eprintln!("fanout-load: --churn {p}: expected a fraction per second, 0 < P <= 1");
                return ExitCode::from(2);
            }
            fanout = Some(a);
            (
                "fanout",
                &a.common,
                Scenario::Fanout {
                    subscribe: a.subscribe.as_ref().map(|t| t.replace("{topic}", &a.topic)),
                    churn: a.churn.unwrap_or(0.0),
                    churn_away: a.churn_away,
                },
                a.connect_rate,
            )
        }
        Cmd::Connect(a) => {
            shape.ramp_step = a.ramp_step;
            shape.step_hold = a.step_hold;
            ("connect", &a.common, Scenario::Connect, a.rate)
        }
        Cmd::Attack(_) => unreachable!("handled above"),
        Cmd::Echo(a) => {
            if let Err(e) = check_tick(a) {
                eprintln!("fanout-load: {e}");
                return ExitCode::from(2);
            }
            shape.idle = a.hold;
            (
                "echo",
                &a.common,
                Scenario::Echo {
                    size: a.message_size,
                    pipeline: a.pipeline,
                    rate: a.rate.unwrap_or(0.0),
                    text: a.text,
                    tick: a.tick,
                    fill: match read_fill(a) {
                        Ok(f) => f,
                        Err(e) => {
                            eprintln!("fanout-load: {e}");
                            return ExitCode::from(2);
                        }
                    },
                },
                a.connect_rate,
            )
        }
    };
    match main_inner(scenario_name, common, scenario, connect_rate, fanout, shape) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanout-load: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("bad address `{a}` in --source-ips"))?;
            let b: std::net::Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("bad address `{b}` in --source-ips"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65535 {
                return Err(format!("bad range `{part}` in --source-ips"));
            }
            out.extend((a..=b).map(|x| IpAddr::from(std::net::Ipv4Addr::from(x))));
        } else {
            out.push(
                part.parse()
                    .map_err(|_| format!("bad address `{part}` in --source-ips"))?,
            );
        }
    }
    Ok(out)
}

fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2 && v[1] >= v[0]).then(|| v[1] - v[0] + 1)
        })
        .unwrap_or(28232)
}

fn parse_headers(list: &[String], flag: &str) -> Result<Vec<(String, String)>, String> {
    list.iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{flag} `{h}`: expected 'Name: value'"))
        })
        .collect()
}

fn publish_plan(f: &FanoutArgs) -> Result<publish::PublishPlan, String> {
    let headers = parse_headers(&f.publish_headers, "--publish-header")?;
    let target = match (f.publish_url.is_empty(), &f.publish_ws) {
        (false, _) => publish::Target::http(&f.publish_url, headers)?,
        (true, Some(u)) => {
            let url = WsUrl::parse(u).map_err(|e| e.to_string())?;
            let addr = url
                .resolve()
                .map_err(|e| format!("{u}: {e}"))?
                .into_iter()
                .next()
                .ok_or_else(|| format!("{u}: no address"))?;
            publish::Target::Ws {
                addr,
                url,
                headers,
                topic: f.topic.clone(),
            }
        }
        (true, None) => return Err("give --publish-url or --publish-ws".into()),
    };
    if f.publish_rate <= 0.0 {
        return Err("--publish-rate must be above 0".into());
    }
    Ok(publish::PublishPlan {
        target,
        rate: f.publish_rate,
        count: f.publish_count,
        size: f.message_size,
        client: ClientConfig::default(),
    })
}

/// Runs the publisher on its own thread.
fn spawn_publisher(
    plan: publish::PublishPlan,
    grace: Duration,
    stop: Arc<AtomicBool>,
    flags: publish::Flags,
) -> std::thread::JoinHandle<Result<publish::PublishResult, String>> {
    std::thread::spawn(move || {
        // Let subscriptions sent on open settle before the first publish.
        std::thread::sleep(Duration::from_millis(300));
        let r = publish::run_publisher(&plan, grace, &stop, &flags);
        flags.done.store(true, Relaxed);
        r
    })
}

/// The ramp's steps and the idle hold: what a scenario adds to the ramp / hold / close.
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    idle: Duration,
    ramp_step: u64,
    step_hold: Duration,
}

fn main_inner(
    name: &str,
    c: &Common,
    scenario: Scenario,
    connect_rate: f64,
    fanout: Option<&FanoutArgs>,
    shape: Shape,
) -> Result<ExitCode, String> {
    let mut targets = Vec::new();
    for u in &c.urls {
        let url = WsUrl::parse(u).map_err(|e| e.to_string())?;
        let addr = url
            .resolve()
            .map_err(|e| format!("{u}: cannot resolve {}: {e}", url.host))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{u}: no address for {}", url.host))?;
        targets.push((addr, url));
    }
    let publish_wss = fanout
        .and_then(|f| f.publish_ws.as_deref())
        .is_some_and(|u| u.starts_with("wss://"));
    let tls = if publish_wss || targets.iter().any(|(_, u)| u.tls) {
        let trust = match (&c.tls_ca, c.insecure) {
            (Some(ca), _) => Trust::CaFile(ca.clone()),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        };
        Some(tls_client_config(&trust)?)
    } else {
        None
    };
    let sources = match &c.source_ips {
        Some(s) => parse_sources(s)?,
        None => Vec::new(),
    };
    let mut headers = Vec::new();
    for h in &c.headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header `{h}`: expected 'Name: value'"))?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signals: {e}"))?;
    }
    // Fanout: subscribers are held until the publisher is done (it says so), never cut
    // short by --duration while it still publishes.
    let hold = match fanout {
        // A safety cap only: the publisher's "done" ends the hold, however late it runs.
        Some(f) => c.duration.max(
            Duration::from_secs_f64(3.0 * f.publish_count as f64 / f.publish_rate.max(1e-3))
                + f.grace
                + Duration::from_secs(120),
        ),
        None => c.duration,
    };
    let (soft, hard) = procinfo::raise_nofile();
    let per_process = soft.saturating_sub(64).max(1);

    // A child runs its share and reports on stdout.
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let v: Vec<u64> = spec.split('/').filter_map(|x| x.parse().ok()).collect();
        let [index, of, share] = v[..] else {
            return Err(format!("bad {CHILD_ENV}={spec}"));
        };
        let mut plan = make_plan(
            c,
            hold,
            scenario,
            connect_rate,
            targets,
            sources,
            headers,
            share,
            index,
            of,
            shape,
        );
        plan.client.tls = tls.clone();
        if fanout.is_some() {
            // The parent says when the publisher is done, with the refused sequence numbers:
            // "stop <published> <seq>,<seq>,..." on stdin (see `publish::stop_line`).
            let flags = publish::Flags::default();
            plan.hold_done = Some(flags.done.clone());
            plan.published = Some(flags.published.clone());
            plan.refused = Some(flags.refused.clone());
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if let Some(args) = line.strip_prefix("stop ") {
                        let (published, refused) = publish::parse_stop(args);
                        if let Ok(mut r) = flags.refused.lock() {
                            *r = refused;
                        }
                        flags.published.store(published, Relaxed);
                        flags.done.store(true, Relaxed);
                        break;
                    }
                }
            });
        }
        let mut obs = ChildObserver {
            out: std::io::stdout(),
        };
        let result = run::run(&plan, &stop, &mut obs);
        let line = match result {
            Ok(p) => serde_json::json!({ "result": p }),
            Err(e) => serde_json::json!({ "error": e }),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        return Ok(ExitCode::SUCCESS);
    }

    // Limits that make the request impossible, said plainly.
    let ports = ephemeral_ports();
    let per_target = ports * sources.len().max(1) as u64;
    let needed_pairs = c.connections.div_ceil(targets.len() as u64);
    if needed_pairs > per_target {
        let need_sources = needed_pairs.div_ceil(ports);
        return Err(format!(
            "{} connections to {} target(s) need {needed_pairs} source ports per target, but net.ipv4.ip_local_port_range gives {ports} per source address and {} source address(es) are in use: add --source-ips with at least {need_sources} addresses (e.g. --source-ips 127.0.0.1-127.0.0.{}), add target ports, or widen ip_local_port_range",
            c.connections,
            targets.len(),
            sources.len().max(1),
            need_sources.min(254)
        ));
    }
    for (addr, url) in &targets {
        // Only "nothing there" stops the run; a server that resets is measured and reported.
        if let Err(e) = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(3)) {
            use std::io::ErrorKind::*;
            if matches!(
                e.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
            ) {
                return Err(format!("cannot reach {url} ({addr}): {e}"));
            }
        }
    }
    let processes = match c.processes.as_str() {
        "auto" => c.connections.div_ceil(per_process).max(1),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("--processes `{n}`: expected auto or a number >= 1"))?,
    };
    if c.connections.div_ceil(processes) > per_process {
        return Err(format!(
            "{} connections in {processes} process(es) need {} file descriptors each, but RLIMIT_NOFILE is {soft} (hard {hard}): use --processes {} (or auto), or raise the limit (ulimit -n; scripts/tune-limits.sh apply)",
            c.connections,
            c.connections.div_ceil(processes),
            c.connections.div_ceil(per_process)
        ));
    }

    let mut pub_plan = fanout.map(publish_plan).transpose()?;
    if let Some(p) = pub_plan.as_mut() {
        p.client.tls = tls.clone();
    }
    let mut publisher = PublisherCtl {
        plan: pub_plan,
        grace: fanout.map_or(Duration::ZERO, |f| f.grace),
        stop: stop.clone(),
        flags: publish::Flags::default(),
        handle: None,
    };
    let mut sampler = Sampler::new(&c.server_pids);
    let bar = make_bar(c);
    let parts: Vec<Partial> = if processes == 1 {
        let mut plan = make_plan(
            c,
            hold,
            scenario.clone(),
            connect_rate,
            targets,
            sources,
            headers,
            c.connections,
            0,
            1,
            shape,
        );
        plan.client.tls = tls.clone();
        if publisher.plan.is_some() {
            plan.hold_done = Some(publisher.flags.done.clone());
            plan.published = Some(publisher.flags.published.clone());
            plan.refused = Some(publisher.flags.refused.clone());
        }
        let mut obs = LocalObserver {
            bar: &bar,
            sampler: &mut sampler,
            publisher: &mut publisher,
        };
        vec![run::run(&plan, &stop, &mut obs)?]
    } else {
        run_children(c, processes, &stop, &bar, &mut sampler, &mut publisher)?
    };
    let pub_result = match publisher.handle.take() {
        Some(h) => Some(
            h.join()
                .map_err(|_| "publisher thread panicked".to_string())??,
        ),
        None if publisher.plan.is_some() => {
            return Err("the publisher never started: no subscriber reached the hold phase".into())
        }
        None => None,
    };
    bar.bar.finish_and_clear();
    let merged = Merged::from_parts(&parts)?;
    let server = (!c.server_pids.is_empty()).then(|| sampler.figures(&merged.p));
    let mut stdout = std::io::stdout().lock();
    report::print_table(name, &merged, server.as_ref(), &mut stdout).map_err(|e| e.to_string())?;
    let churn = fanout.and_then(|f| f.churn);
    let fanout_json = pub_result
        .as_ref()
        .map(|r| fanout_summary(&merged, r, churn, &mut stdout));
    let params = serde_json::json!({
        "urls": c.urls,
        "connections": c.connections,
        "processes": processes,
        "duration_s": c.duration.as_secs_f64(),
        "idle_hold_s": shape.idle.as_secs_f64(),
        "ramp_step": shape.ramp_step,
        "connect_rate": connect_rate,
        "source_ips": sources_len(&c.source_ips),
        "scenario": format!("{scenario:?}"),
    });
    if let Some(path) = &c.json {
        let mut v = report::json_report(name, &merged, server.as_ref(), params);
        if let Some(serde_json::Value::Object(f)) = &fanout_json {
            for (k, x) in f {
                v[k] = x.clone();
            }
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &c.hgrm {
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        report::write_hgrm(&merged, &mut f).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &c.plot {
        report::write_plot(
            &merged,
            path,
            &format!("fanout-load {name}: latency by percentile"),
        )?;
    }
    let fanout_bad = fanout_json.as_ref().map_or(0, |f| {
        f["lost"].as_u64().unwrap_or(0)
            + f["duplicated"].as_u64().unwrap_or(0)
            + f["publish"]["failed_total"].as_u64().unwrap_or(0)
            + merged.p.churn_recovery_failed.values().sum::<u64>()
    });
    let bad =
        merged.p.failed.values().sum::<u64>() + merged.p.dropped.values().sum::<u64>() + fanout_bad;
    Ok(if bad > 0 || merged.p.interrupted {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Refusals listed one by one in the JSON report.
const REFUSALS_CAP: usize = 10_000;

/// Prints the fanout figures and returns them as JSON keys of the report.
fn fanout_summary(
    m: &Merged,
    r: &publish::PublishResult,
    churn: Option<f64>,
    out: &mut impl Write,
) -> serde_json::Value {
    let p = &m.p;
    let subs = p.fanout_subscribers;
    let attempted = r.attempted;
    let accepted = r.ok;
    let refused: u64 = r.failed.values().sum();
    // Subscribers expect the accepted publishes only; children counted what each open
    // subscriber missed of those (`lost`) and saw of the refused ones (`delivered_refused`).
    let expected = subs * accepted;
    let lost = p.fanout_lost;
    let delivered = expected.saturating_sub(lost);
    let pubq = report::percentiles(&r.latency);
    let _ = writeln!(
        out,
        "\n  fanout: {subs} subscribers, {attempted} publishes in {:.1} s ({:.1}/s), queued for {} in all, reached {} nodes in all",
        r.seconds,
        attempted as f64 / r.seconds.max(1e-9),
        r.queued_for,
        r.nodes_reached
    );
    let _ = writeln!(out, "  publishes accepted: {accepted}");
    let reasons: Vec<String> = r.failed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "  publishes refused: {refused}{}",
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(" "))
        }
    );
    let _ = writeln!(
        out,
        "  delivered {delivered} / expected {expected} (accepted publishes): duplicated {}, subscribers missing any {}",
        p.fanout_duplicated, p.fanout_lossy_subscribers
    );
    let _ = writeln!(out, "  lost (accepted publishes only): {lost}");
    let _ = writeln!(
        out,
        "  delivered_refused (refused publishes delivered anyway): {}",
        p.fanout_delivered_refused
    );
    if !r.latency.is_empty() {
        let _ = writeln!(
            out,
            "  publish request latency (ms): p50 {:.3}  p99 {:.3}  max {:.3}",
            pubq.p50, pubq.p99, pubq.max
        );
    }
    let refusals: Vec<serde_json::Value> = r
        .outcomes
        .iter()
        .enumerate()
        .filter_map(|(seq, o)| {
            o.refused.as_ref().map(|reason| {
                serde_json::json!({
                    "seq": seq,
                    "sent_unix_ms": o.sent_unix_ms,
                    "reason": reason,
                })
            })
        })
        .take(REFUSALS_CAP)
        .collect();
    let lost_by_seq: serde_json::Map<String, serde_json::Value> = p
        .fanout_lost_by_seq
        .iter()
        .map(|(seq, n)| (seq.to_string(), (*n).into()))
        .collect();
    let churn = churn.map(|rate| churn_summary(m, rate, out));
    serde_json::json!({
        "churn": churn,
        "delivered": delivered,
        "expected": expected,
        "lost": lost,
        "delivered_refused": p.fanout_delivered_refused,
        "lost_by_seq": lost_by_seq,
        "duplicated": p.fanout_duplicated,
        "subscribers": subs,
        "lossy_subscribers": p.fanout_lossy_subscribers,
        "deliveries_per_second": delivered as f64 / r.seconds.max(1e-9),
        "publish": {
            "attempted": attempted,
            "accepted": accepted,
            "refused": refused,
            "refused_by_reason": r.failed,
            "refusals": refusals,
            "recoveries": publish::recoveries(&r.outcomes),
            "ok": accepted,
            "failed": r.failed,
            "failed_total": refused,
            "queued_for": r.queued_for,
            "nodes_reached": r.nodes_reached,
            "seconds": r.seconds,
            "latency_ms": pubq,
        },
    })
}

/// Prints the `--churn` figures and returns them as the report's `churn` object.
fn churn_summary(m: &Merged, rate: f64, out: &mut impl Write) -> serde_json::Value {
    let p = &m.p;
    let q = |name: &str| m.hists.get(name).map(report::percentiles);
    let failed: u64 = p.churn_recovery_failed.values().sum();
    let reasons: Vec<String> = p
        .churn_recovery_failed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "  churn {rate}/s: reconnects {}, recovered {}, not recovered {failed}{}, messages replayed {}",
        p.churn_reconnects,
        p.churn_recovered,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(" "))
        },
        p.churn_messages_recovered
    );
    let ms = |x: &Option<report::Percentiles>| {
        x.as_ref()
            .map(|x| serde_json::json!({ "p50": x.p50, "p99": x.p99, "max": x.max }))
    };
    let (answer, done, live) = (q("recovery"), q("recovery_done"), q("delivery_live"));
    for (what, x) in [
        ("drop -> recovery answer", &answer),
        ("drop -> last replayed message", &done),
        ("delivery latency, live only", &live),
    ] {
        if let Some(x) = x.as_ref().filter(|x| x.count > 0) {
            let _ = writeln!(
                out,
                "  {what} (ms): p50 {:.3}  p99 {:.3}  max {:.3}",
                x.p50, x.p99, x.max
            );
        }
    }
    serde_json::json!({
        "rate": rate,
        "reconnects": p.churn_reconnects,
        "recovered": p.churn_recovered,
        "recovery_failed": failed,
        "recovery_failed_by_reason": p.churn_recovery_failed,
        "messages_recovered": p.churn_messages_recovered,
        "ignored_after_drop": p.churn_ignored_after_drop,
        "recovery_ms": ms(&answer),
        "recovery_done_ms": ms(&done),
        "delivery_live_ms": ms(&live),
    })
}

/// Starts the publisher once every subscriber process holds.
struct PublisherCtl {
    plan: Option<publish::PublishPlan>,
    grace: Duration,
    stop: Arc<AtomicBool>,
    flags: publish::Flags,
    handle: Option<std::thread::JoinHandle<Result<publish::PublishResult, String>>>,
}

impl PublisherCtl {
    fn on_phase(&mut self, phase: u8) {
        if phase >= PHASE_HOLD && self.handle.is_none() {
            if let Some(plan) = self.plan.clone() {
                self.handle = Some(spawn_publisher(
                    plan,
                    self.grace,
                    self.stop.clone(),
                    self.flags.clone(),
                ));
            }
        }
    }
}

fn sources_len(s: &Option<String>) -> usize {
    s.as_deref()
        .and_then(|s| parse_sources(s).ok())
        .map_or(0, |v| v.len())
}

#[allow(clippy::too_many_arguments)]
fn make_plan(
    c: &Common,
    hold: Duration,
    scenario: Scenario,
    connect_rate: f64,
    targets: Vec<(std::net::SocketAddr, WsUrl)>,
    sources: Vec<IpAddr>,
    headers: Vec<(String, String)>,
    connections: u64,
    index: u64,
    of: u64,
    shape: Shape,
) -> Plan {
    Plan {
        scenario,
        targets,
        connections,
        connect_rate: connect_rate / of as f64,
        duration: hold,
        idle: shape.idle,
        ramp_step: if shape.ramp_step > 0 {
            shape.ramp_step.div_ceil(of).max(1)
        } else {
            0
        },
        step_hold: shape.step_hold,
        sources,
        max_in_flight: c.max_in_flight.max(1),
        options: ConnectOptions {
            headers,
            protocols: c.protocols.clone(),
            source: None,
            deflate: c.deflate,
            deflate_context_takeover: c.deflate_context_takeover,
        },
        client: ClientConfig {
            connect_timeout: c.connect_timeout,
            handshake_timeout: c.handshake_timeout,
            tls: None,
            batch_io: !c.no_batch_io,
            ..ClientConfig::default()
        },
        index,
        of,
        hold_done: None,
        published: None,
        refused: None,
    }
}

/// `--tick` times round trips by the kernel's receive timestamp of each read, which several
/// answers read together would share, and `wss://` reads go through TLS without one.
fn check_tick(a: &EchoArgs) -> Result<(), String> {
    if a.tick.is_zero() {
        return Ok(());
    }
    if a.common.urls.iter().any(|u| u.starts_with("wss://")) {
        return Err(
            "--tick works with ws:// URLs only (TLS reads carry no receive timestamp)".into(),
        );
    }
    match a.rate {
        Some(r) if r * a.tick.as_secs_f64() >= 1.0 => Err(format!(
            "--tick {:?} with --rate {r}: a connection would have several answers in one tick; \
             use a tick shorter than 1/rate",
            a.tick
        )),
        None if a.pipeline > 1 => Err(
            "--tick needs --pipeline 1 (several answers read together would share one receive time)"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// The echo fill pattern from --payload-file.
fn read_fill(a: &EchoArgs) -> Result<Arc<[u8]>, String> {
    let Some(path) = &a.payload_file else {
        return Ok(Arc::from(&[][..]));
    };
    let bytes =
        std::fs::read(path).map_err(|e| format!("--payload-file {}: {e}", path.display()))?;
    if bytes.is_empty() {
        return Err(format!("--payload-file {}: empty", path.display()));
    }
    if a.text && !bytes.is_ascii() {
        return Err(format!(
            "--payload-file {}: must be ASCII with --text (messages are cut at any byte)",
            path.display()
        ));
    }
    Ok(bytes.into())
}

/// The live progress: a bar on a terminal, and plain lines with `--progress-lines`.
struct Display {
    bar: ProgressBar,
    lines: Option<Duration>,
    last_line: std::cell::Cell<Option<Instant>>,
    last_phase: std::cell::Cell<u8>,
}

impl Display {
    fn show(&self, p: &Progress) {
        show(&self.bar, p);
        let Some(every) = self.lines else { return };
        let due = self.last_line.get().is_none_or(|t| t.elapsed() >= every);
        if due || p.phase != self.last_phase.get() {
            self.last_line.set(Some(Instant::now()));
            self.last_phase.set(p.phase);
            eprintln!(
                "progress phase={} started={} opened={} open={} failed={} dropped={} received={} steps={}",
                phase_name(p.phase),
                p.started,
                p.opened,
                p.open_now,
                p.failed,
                p.dropped,
                p.received,
                p.steps
            );
        }
    }
}

fn make_bar(c: &Common) -> Display {
    Display {
        bar: make_progress_bar(c),
        lines: c.progress_lines.filter(|d| !d.is_zero()),
        last_line: std::cell::Cell::new(None),
        last_phase: std::cell::Cell::new(run::PHASE_RAMP),
    }
}

fn make_progress_bar(c: &Common) -> ProgressBar {
    if c.no_progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(c.connections);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} opened ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

fn phase_name(phase: u8) -> &'static str {
    match phase {
        run::PHASE_RAMP => "ramp",
        run::PHASE_IDLE => "idle",
        run::PHASE_HOLD => "run",
        run::PHASE_CLOSE => "closing",
        _ => "done",
    }
}

fn show(bar: &ProgressBar, p: &Progress) {
    bar.set_position(p.opened);
    bar.set_message(format!(
        "{}: open {} failed {} dropped {} received {}",
        phase_name(p.phase),
        p.open_now,
        p.failed,
        p.dropped,
        p.received
    ));
}

/// Samples the server processes at phase changes.
struct Sampler {
    pids: Vec<u32>,
    fig: ServerFigures,
    cpu_base: f64,
    cpu_hold: Option<f64>,
    hold_at: Option<Instant>,
    open_at_sample: u64,
    closed: bool,
}

impl Sampler {
    fn new(pids: &[u32]) -> Self {
        Sampler {
            pids: pids.to_vec(),
            fig: ServerFigures {
                pids: pids.to_vec(),
                rss_bytes_before: procinfo::sum_rss(pids),
                ..Default::default()
            },
            cpu_base: procinfo::sum_cpu(pids),
            cpu_hold: None,
            hold_at: None,
            open_at_sample: 0,
            closed: false,
        }
    }

    /// `phase` is the least advanced phase across processes; `open` the open connections.
    fn update(&mut self, phase: u8, open: u64) {
        if self.pids.is_empty() {
            return;
        }
        // The ramp ends at the idle hold when there is one.
        if phase >= PHASE_IDLE && self.cpu_hold.is_none() {
            let cpu = procinfo::sum_cpu(&self.pids);
            self.cpu_hold = Some(cpu);
            self.fig.cpu_seconds_ramp = cpu - self.cpu_base;
            self.hold_at = Some(Instant::now());
        }
        if phase >= PHASE_CLOSE && !self.closed {
            self.closed = true;
            // Connections are still open: this is the held memory.
            self.fig.rss_bytes_held = procinfo::sum_rss(&self.pids);
            self.open_at_sample = open;
            if let (Some(c), Some(t)) = (self.cpu_hold, self.hold_at) {
                self.fig.cpu_seconds_run = procinfo::sum_cpu(&self.pids) - c;
                self.fig.cpu_cores_run =
                    self.fig.cpu_seconds_run / t.elapsed().as_secs_f64().max(1e-9);
            }
        }
    }

    fn figures(&self, p: &Partial) -> ServerFigures {
        let mut f = self.fig.clone();
        if self.open_at_sample > 0 && f.rss_bytes_held > 0 {
            f.rss_bytes_per_connection = Some(
                f.rss_bytes_held.saturating_sub(f.rss_bytes_before) as f64
                    / self.open_at_sample as f64,
            );
        }
        if p.opened > 0 && self.cpu_hold.is_some() {
            f.cpu_us_per_handshake = Some(f.cpu_seconds_ramp * 1e6 / p.opened as f64);
        }
        f
    }
}

struct LocalObserver<'a> {
    bar: &'a Display,
    sampler: &'a mut Sampler,
    publisher: &'a mut PublisherCtl,
}

impl Observer for LocalObserver<'_> {
    fn progress(&mut self, p: &Progress) {
        self.sampler.update(p.phase, p.open_now);
        self.publisher.on_phase(p.phase);
        self.bar.show(p);
    }
}

struct ChildObserver {
    out: std::io::Stdout,
}

impl Observer for ChildObserver {
    fn progress(&mut self, p: &Progress) {
        let mut out = self.out.lock();
        let _ = writeln!(out, "{}", serde_json::json!({ "progress": p }));
        let _ = out.flush();
    }
}

enum FromChild {
    Progress(usize, Progress),
    Result(usize, Box<Partial>),
    Error(usize, String),
    Exited,
}

fn run_children(
    c: &Common,
    processes: u64,
    stop: &Arc<AtomicBool>,
    bar: &Display,
    sampler: &mut Sampler,
    publisher: &mut PublisherCtl,
) -> Result<Vec<Partial>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tx, rx) = mpsc::channel();
    let mut children = Vec::new();
    for i in 0..processes {
        let share = c.connections / processes + u64::from(i < c.connections % processes);
        let mut child = Command::new(&exe)
            .args(&args)
            .env(CHILD_ENV, format!("{i}/{processes}/{share}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start child process: {e}"))?;
        let stdout = child.stdout.take().ok_or("child stdout")?;
        let tx = tx.clone();
        let idx = i as usize;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let msg = if let Some(p) = v.get("progress") {
                    serde_json::from_value(p.clone())
                        .ok()
                        .map(|p| FromChild::Progress(idx, p))
                } else if let Some(r) = v.get("result") {
                    serde_json::from_value(r.clone())
                        .ok()
                        .map(|r| FromChild::Result(idx, Box::new(r)))
                } else {
                    v.get("error")
                        .map(|e| FromChild::Error(idx, e.as_str().unwrap_or("?").to_string()))
                };
                if let Some(m) = msg {
                    let _ = tx.send(m);
                }
            }
            let _ = tx.send(FromChild::Exited);
        });
        children.push(child);
    }
    drop(tx);
    let n = processes as usize;
    let mut latest = vec![Progress::default(); n];
    let mut results: Vec<Option<Partial>> = vec![None; n];
    let mut errors = Vec::new();
    let mut exited = 0;
    let mut forwarded = false;
    let mut stop_sent = false;
    while exited < n {
        if stop.load(Relaxed) && !forwarded {
            forwarded = true;
            for ch in &children {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(ch.id() as i32, libc::SIGINT) };
            }
        }
        // One message, then all that are waiting: with 100+ children on a busy box the
        // parent must not fall behind them (it showed progress minutes old).
        let mut next = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        while let Some(m) = next.take() {
            match m {
                FromChild::Progress(i, p) => latest[i] = p,
                FromChild::Result(i, r) => results[i] = Some(*r),
                FromChild::Error(i, e) => errors.push(format!("process {i}: {e}")),
                FromChild::Exited => exited += 1,
            }
            next = rx.try_recv().ok();
        }
        let sum = Progress {
            phase: latest.iter().map(|p| p.phase).min().unwrap_or(0),
            started: latest.iter().map(|p| p.started).sum(),
            opened: latest.iter().map(|p| p.opened).sum(),
            open_now: latest.iter().map(|p| p.open_now).sum(),
            failed: latest.iter().map(|p| p.failed).sum(),
            dropped: latest.iter().map(|p| p.dropped).sum(),
            received: latest.iter().map(|p| p.received).sum(),
            steps: latest.iter().map(|p| p.steps).min().unwrap_or(0),
        };
        sampler.update(sum.phase, sum.open_now);
        publisher.on_phase(sum.phase);
        if publisher.flags.done.load(Relaxed) && !stop_sent {
            stop_sent = true;
            let refused = publisher
                .flags
                .refused
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            let line = publish::stop_line(publisher.flags.published.load(Relaxed), &refused);
            for ch in children.iter_mut() {
                if let Some(stdin) = ch.stdin.as_mut() {
                    let _ = stdin.write_all(line.as_bytes());
                    let _ = stdin.flush();
                }
            }
        }
        bar.show(&sum);
    }
    for mut ch in children {
        let _ = ch.wait();
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let missing = results.iter().filter(|r| r.is_none()).count();
    if missing > 0 {
        return Err(format!(
            "{missing} child process(es) ended without a result"
        ));
    }
    Ok(results.into_iter().flatten().collect())
}
