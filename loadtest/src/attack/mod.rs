//! `fanout-load attack`: the hostile review of issue #20 as a suite. Each kind starts its own
//! `fanout serve` on loopback with the flags it needs, measures a well-behaved echo client
//! before and during the attack, samples the server's RSS, and checks the stated bounds:
//! server up, peak RSS, the good client's p99, and the expected refusal (answer and counter).
//! Owns no server code and fixes nothing: a broken bound is reported and exits non-zero.

mod good;
mod kinds;
mod raw;
mod server;
mod soak;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use fanout::parse::{parse_duration, parse_size};
use serde_json::{json, Value};

use good::GoodClient;
use server::{RssSampler, ServerProc};

#[derive(Args, Debug)]
pub struct AttackArgs {
    /// An attack kind, a comma-separated list of them, `all`, `soak`, or `list`.
    pub kind: String,
    /// The review's sizes (e.g. 150 x 1 MiB publish bodies, 10 x 16 MiB echo never read,
    /// 1,000 clients at SIGTERM) instead of the short defaults.
    #[arg(long)]
    pub full: bool,
    /// Multiply each kind's attacker count by this (after --full), e.g. 0.5 or 3.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// The soak's length (churn, echo, publishes, silent peers), e.g. 10m or 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The server binary [default: `fanout` next to this executable].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Bound: the server's peak RSS during an attack.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_rss: usize,
    /// Bound: the good client's p99 during an attack at most max(F x baseline, baseline +
    /// --p99-slack-ms).
    #[arg(long, default_value_t = 2.0)]
    pub p99_factor: f64,
    /// See --p99-factor: absorbs sub-millisecond noise on a shared box.
    #[arg(long, default_value_t = 1.0)]
    pub p99_slack_ms: f64,
    /// Report the good client's p99 against its bound but do not fail on it: a latency is a
    /// figure of the box as much as of the server, and CI's shared cores are not a place to
    /// judge one (`scripts/attack.sh --ci`).
    #[arg(long)]
    pub p99_report_only: bool,
    /// The good client's connections.
    #[arg(long, default_value_t = 10)]
    pub good_connections: usize,
    /// The good client's messages per second, all connections together.
    #[arg(long, default_value_t = 200.0)]
    pub good_rate: f64,
    /// Soak bound: RSS after the churn within this fraction of its level after warm-up.
    #[arg(long, default_value_t = 0.10)]
    pub rss_drift: f64,
    /// Run each kind this many times and judge the good client's p99 on the medians (of the
    /// baselines and of the p99s during): one run's p99 on a shared box can be a stall of the
    /// box. Every other bound is judged on every run. With 1, a kind whose p99 bound alone
    /// broke runs once more and the second run decides.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// The attacking threads' nice value (0..=19; 0 leaves them as they are). On loopback the
    /// attacker's own CPU comes out of the server's cores, which an attacker on another
    /// machine never does: at 19 the attacker still loads the server with all its traffic,
    /// but its CPU no longer preempts the server or the good client.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub attacker_nice: i32,
}

/// Which app a kind's server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    Echo,
    Push,
}

/// What a kind hands the harness: its attackers, what each observed, and whether that is
/// the expected refusal.
#[derive(Default, Debug)]
pub struct Outcome {
    pub attackers: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub expected: String,
    pub refusal_ok: bool,
    pub notes: Vec<String>,
    /// Figures particular to the kind (bytes sent, exit status...).
    pub extra: Value,
}

impl Outcome {
    pub fn saw(&mut self, what: impl Into<String>) {
        *self.outcomes.entry(what.into()).or_insert(0) += 1;
    }

    /// Reads each socket until the server closes it (each within `within` of when its turn
    /// comes, reading at most `max_bytes`) and counts what each saw (`read_close`).
    pub fn saw_closes<'s>(
        &mut self,
        socks: impl IntoIterator<Item = &'s mut std::net::TcpStream>,
        within: Duration,
        max_bytes: usize,
    ) {
        for s in socks {
            self.saw(raw::read_close(s, Instant::now() + within, max_bytes));
        }
    }

    pub fn count(&self, what: &str) -> u64 {
        self.outcomes.get(what).copied().unwrap_or(0)
    }

    /// Every attacker saw one of `allowed`.
    pub fn only(&self, allowed: &[&str]) -> bool {
        self.outcomes.keys().all(|k| allowed.contains(&k.as_str()))
    }
}

/// What a kind's attack function gets.
pub struct Ctx {
    pub addr: std::net::SocketAddr,
    pub pid: u32,
    pub full: bool,
    pub scale: f64,
    pub server: Arc<std::sync::Mutex<ServerProc>>,
}

impl Ctx {
    /// `ci` attackers by default, `full` with --full, times --scale (at least 1).
    pub fn n(&self, ci: u64, full: u64) -> u64 {
        let base = if self.full { full } else { ci };
        ((base as f64 * self.scale).round() as u64).max(1)
    }
}

pub const PUBLISH_KEY: &str = "attack-key";
pub const JWT_SECRET: &str = "attack-secret-0123456789abcdef";

pub fn run(a: &AttackArgs) -> ExitCode {
    match run_inner(a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("fanout-load attack: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(a: &AttackArgs) -> Result<bool, String> {
    let all = kinds::all();
    if a.kind == "list" {
        for k in &all {
            println!("{:16} {}", k.name, k.what);
        }
        println!(
            "{:16} churn, echo, publishes, silent peers; RSS drift and gauge",
            "soak"
        );
        return Ok(true);
    }
    server::raise_nofile();
    let bin = match &a.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("fanout"),
    };
    if !bin.exists() {
        return Err(format!(
            "no server binary at {} (build it, or give --server-bin)",
            bin.display()
        ));
    }
    let names: Vec<&str> = if a.kind == "all" {
        all.iter().map(|k| k.name).collect()
    } else {
        a.kind.split(',').map(str::trim).collect()
    };
    let mut reports = Vec::new();
    let mut soak_report = None;
    let mut ok = true;
    for name in names {
        if name == "soak" {
            let (r, good) = soak::run(a, &bin)?;
            ok &= good;
            soak_report = Some(r);
            continue;
        }
        let kind = all
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| format!("no attack kind `{name}` (try `list`)"))?;
        eprintln!("== attack {name}: {}", kind.what);
        if a.repeat > 1 {
            let mut runs = Vec::new();
            for i in 1..=a.repeat {
                eprintln!("== attack {name}: run {i} of {}", a.repeat);
                runs.push(run_kind(a, &bin, kind)?);
            }
            let r = judge_on_medians(a, kind.name == "sigterm", runs);
            ok &= r["ok"].as_bool().unwrap_or(false);
            reports.push(r);
            continue;
        }
        let mut r = run_kind(a, &bin, kind)?;
        // A shared 2-core box makes a sub-millisecond p99 noisy: when the latency bound is the
        // only one broken, the kind runs once more and the second attempt decides (the first
        // is kept in the report).
        if r["ok"] == false && only_p99_broken(&r) {
            eprintln!("== attack {name}: p99 bound broken alone; once more");
            let first = r;
            r = run_kind(a, &bin, kind)?;
            r["first_attempt"] = json!({
                "good": first["good"],
                "broken": first["broken"],
            });
        }
        ok &= r["ok"].as_bool().unwrap_or(false);
        reports.push(r);
    }
    if !reports.is_empty() {
        print_table(&reports);
    }
    let v = json!({
        "suite": "attack",
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "full": a.full,
        "scale": a.scale,
        "bounds": {
            "max_rss_bytes": a.max_rss,
            "p99": format!(
                "during <= max({} x baseline, baseline + {} ms): the slack absorbs sub-millisecond noise{}",
                a.p99_factor, a.p99_slack_ms,
                if a.p99_report_only { " (reported only, not judged)" } else { "" }
            ),
            "server_up": "GET /healthz answers 200 after the attack",
            "refusal": "every attacker saw an allowed outcome and the kind's counter moved",
        },
        "kinds": reports,
        "soak": soak_report,
        "ok": ok,
    });
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "attack suite: {}",
        if ok {
            "all bounds held"
        } else {
            "BOUND BROKEN"
        }
    );
    Ok(ok)
}

/// One kind: its server, a baseline of the good client, the attack, the checks.
fn run_kind(a: &AttackArgs, bin: &std::path::Path, kind: &kinds::Kind) -> Result<Value, String> {
    let started = Instant::now();
    let flags = (kind.flags)(a.full);
    let srv = ServerProc::start(bin, kind.app, &flags, kind.nofile)?;
    let (addr, pid) = (srv.addr, srv.pid);
    let srv = Arc::new(std::sync::Mutex::new(srv));
    let before = server::metrics(addr).unwrap_or_default();
    let rss_idle = crate::procinfo::rss_bytes(pid).unwrap_or(0);
    let sampler = RssSampler::start(pid, Duration::from_millis(50));
    let good = GoodClient::start(good::GoodPlan {
        addr,
        app: kind.app,
        connections: a.good_connections,
        rate: a.good_rate,
        jwt: kind.flags_need_jwt(&flags),
    });
    let opened = good.wait_open(a.good_connections, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    let rss_baseline = crate::procinfo::rss_bytes(pid).unwrap_or(rss_idle);
    let hwm_reset = server::reset_peak(pid);
    good.set_phase(1);
    let ctx = Ctx {
        addr,
        pid,
        full: a.full,
        scale: a.scale,
        server: srv.clone(),
    };
    // The server's loop turns are counted from here (the attack and the 2 s after it).
    let at_attack = server::metrics(addr).unwrap_or_default();
    let attack_start = Instant::now();
    // The attack runs on its own thread at --attacker-nice (the threads it starts inherit it).
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            renice_this_thread(a.attacker_nice);
            (kind.run)(&ctx)
        })
        .join()
    })
    .map_err(|_| format!("attack {} panicked", kind.name))?;
    let attack_secs = attack_start.elapsed().as_secs_f64();
    // The good client's "during" window: the attack and what it leaves, at least 2 s.
    let hwm = server::peak_rss(pid).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2).saturating_sub(attack_start.elapsed()));
    let hwm = hwm.max(server::peak_rss(pid).unwrap_or(0));
    good.set_phase(2);
    let exits = kind.name == "sigterm";
    // Up: /healthz answers 200 (a little time for the server to reap what the attack left).
    let mut up = false;
    if !exits {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok((200, _)) =
                raw::http(addr, Some(server::PROBE_IP), "GET", "/healthz", "", b"")
            {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let after = if exits {
        BTreeMap::new()
    } else {
        server::metrics(addr).unwrap_or_default()
    };
    let g = good.stop();
    let samples = sampler.stop();
    let sampled_peak = samples.iter().copied().max().unwrap_or(0);
    // VmHWM since the attack began (since start, if the kernel would not reset it).
    let peak = sampled_peak.max(hwm);
    srv.lock().map_err(|_| "server lock")?.stop();
    if exits {
        up = outcome.extra["exit_ok"].as_bool().unwrap_or(false);
    }

    let mut counters = serde_json::Map::new();
    let mut moved = 0.0;
    for c in kind.counters {
        let b = before.get(*c).copied().unwrap_or(0.0);
        let x = after.get(*c).copied().unwrap_or(0.0);
        if !exits {
            moved += x - b;
        }
        counters.insert(c.to_string(), json!({"before": b, "after": x}));
    }
    let counter_ok = exits || kind.counters.is_empty() || moved > 0.0;
    let turns = server::turns_between(&at_attack, &after);
    let (p99_before, p99_during) = (g.before.p99, g.during.p99);
    let p99_limit = (a.p99_factor * p99_before).max(p99_before + a.p99_slack_ms);
    let p99_within = g.during.count > 0 && p99_during <= p99_limit;
    // With --p99-report-only the bound is printed and written, but only a good client that
    // saw no answer at all during the attack fails the kind.
    let p99_ok = exits || p99_within || (a.p99_report_only && g.during.count > 0);
    let good_ok = exits || (g.errors == 0 && opened);
    let rss_ok = peak as usize <= a.max_rss;
    let refusal_ok = outcome.refusal_ok && counter_ok;
    let ok = up && rss_ok && p99_ok && refusal_ok && good_ok;
    let per_attacker = if outcome.attackers > 0 {
        peak.saturating_sub(rss_baseline) as f64 / outcome.attackers as f64
    } else {
        0.0
    };
    let mut broken = Vec::new();
    if !up {
        broken.push(if exits {
            "server did not exit cleanly".to_string()
        } else {
            "server not answering /healthz".to_string()
        });
    }
    if !rss_ok {
        broken.push(format!(
            "peak RSS {:.1} MiB > {:.1} MiB",
            mib(peak),
            mib(a.max_rss as u64)
        ));
    }
    let mut over = Vec::new();
    if !exits && !p99_within {
        let b = if p99_ok { &mut over } else { &mut broken };
        b.push(format!(
            "good p99 {p99_during:.3} ms > limit {p99_limit:.3} ms (baseline {p99_before:.3}; server turns over 1 ms: {}, longest <= {} ms)",
            turns["over_1ms"],
            turns["longest_at_most_ms"]
        ));
    }
    if !outcome.refusal_ok {
        broken.push(format!(
            "expected {}, observed {:?}",
            outcome.expected, outcome.outcomes
        ));
    }
    if !counter_ok {
        broken.push(format!("counter(s) {:?} did not move", kind.counters));
    }
    if !good_ok {
        broken.push(format!(
            "good client: {} error(s)/early close(s), all open: {opened}",
            g.errors
        ));
    }
    Ok(json!({
        "kind": kind.name,
        "what": kind.what,
        "app": format!("{:?}", kind.app).to_lowercase(),
        "server_flags": flags,
        "attackers": outcome.attackers,
        "outcomes": outcome.outcomes,
        "expected": outcome.expected,
        "notes": outcome.notes,
        "extra": outcome.extra,
        "attack_seconds": attack_secs,
        "seconds": started.elapsed().as_secs_f64(),
        "server_up": up,
        "rss_bytes": {
            "idle": rss_idle,
            "baseline": rss_baseline,
            "peak": peak,
            "peak_sampled": sampled_peak,
            "vm_hwm": hwm,
            "vm_hwm_reset_at_attack": hwm_reset,
            "samples": samples.len(),
            "per_attacker": per_attacker,
        },
        "good": {
            "connections": a.good_connections,
            "rate": a.good_rate,
            "before_ms": g.before,
            "during_ms": g.during,
            "after_ms": g.after,
            "p99_limit_ms": p99_limit,
            "p99_ratio": if p99_before > 0.0 { p99_during / p99_before } else { 0.0 },
            "sent": g.sent,
            "received": g.received,
            "errors": g.errors,
        },
        "counters": counters,
        "server_turns": turns,
        "checks": {
            "server_up": up,
            "rss": rss_ok,
            "p99": p99_ok,
            "refusal": outcome.refusal_ok,
            "counter": counter_ok,
            "good_client": good_ok,
        },
        "broken": broken,
        "over_reported_only": over,
        "ok": ok,
    }))
}

/// Sets the calling thread's nice value (Linux: nice is per thread, and inherited by the
/// threads it creates). A failure is reported, not fatal: the attack still runs.
fn renice_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid has no preconditions; setpriority on our own thread id.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if r != 0 {
        eprintln!(
            "attack: cannot set the attacker's nice to {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// `--repeat`: one report for a kind's runs. The good client's p99 bound is judged on the
/// median of the runs' baselines and the median of their p99s during; every other check must
/// hold in every run. The report is the run whose p99 during is nearest the median, with every
/// run's figures under `runs` and the medians under `good.median_ms`.
fn judge_on_medians(a: &AttackArgs, exits: bool, runs: Vec<Value>) -> Value {
    let p99 = |r: &Value, phase: &str| r["good"][phase]["p99"].as_f64().unwrap_or(0.0);
    let before = median(runs.iter().map(|r| p99(r, "before_ms")).collect());
    let during = median(runs.iter().map(|r| p99(r, "during_ms")).collect());
    let limit = (a.p99_factor * before).max(before + a.p99_slack_ms);
    let answered = runs
        .iter()
        .all(|r| r["good"]["during_ms"]["count"].as_u64() > Some(0));
    let within = answered && during <= limit;
    let p99_ok = exits || within || (a.p99_report_only && answered);
    let mut broken: Vec<Value> = Vec::new();
    let mut others_ok = true;
    for (i, r) in runs.iter().enumerate() {
        for (check, held) in r["checks"].as_object().into_iter().flatten() {
            if check != "p99" && held == false {
                others_ok = false;
            }
        }
        // What broke in a run besides its own p99 (judged on the medians below).
        for b in r["broken"].as_array().into_iter().flatten() {
            if !b.as_str().is_some_and(|t| t.starts_with("good p99")) {
                broken.push(json!(format!(
                    "run {}: {}",
                    i + 1,
                    b.as_str().unwrap_or("")
                )));
            }
        }
    }
    let mut over = Vec::new();
    if !exits && !within {
        let text = format!(
            "good p99, median of {} runs: {during:.3} ms > limit {limit:.3} ms (median baseline {before:.3})",
            runs.len()
        );
        if p99_ok {
            over.push(json!(text));
        } else {
            broken.push(json!(text));
        }
    }
    let pick = runs
        .iter()
        .enumerate()
        .min_by(|x, y| {
            (p99(x.1, "during_ms") - during)
                .abs()
                .total_cmp(&(p99(y.1, "during_ms") - during).abs())
        })
        .map_or(0, |(i, _)| i);
    let summary: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "good_p99_before_ms": p99(r, "before_ms"),
                "good_p99_during_ms": p99(r, "during_ms"),
                "peak_rss_bytes": r["rss_bytes"]["peak"],
                "server_turns": r["server_turns"],
                "checks": r["checks"],
                "ok": r["ok"],
            })
        })
        .collect();
    let peak = runs
        .iter()
        .filter_map(|r| r["rss_bytes"]["peak"].as_u64())
        .max()
        .unwrap_or(0);
    let mut r = runs.into_iter().nth(pick).unwrap_or(Value::Null);
    r["rss_bytes"]["peak_over_runs"] = json!(peak);
    r["good"]["median_ms"] = json!({"before_p99": before, "during_p99": during});
    r["good"]["p99_limit_ms"] = json!(limit);
    r["good"]["p99_ratio"] = json!(if before > 0.0 { during / before } else { 0.0 });
    r["checks"]["p99"] = json!(p99_ok);
    r["broken"] = json!(broken);
    r["over_reported_only"] = json!(over);
    r["runs"] = json!(summary);
    r["ok"] = json!(others_ok && p99_ok);
    r
}

fn only_p99_broken(r: &Value) -> bool {
    let c = &r["checks"];
    c["p99"] == false
        && ["server_up", "rss", "refusal", "counter", "good_client"]
            .iter()
            .all(|k| c[*k] == true)
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn print_table(reports: &[Value]) {
    println!(
        "\n{:16} {:>3} {:>9} {:>11} {:>15} {:>16} {:>9}  {:4} outcome",
        "kind",
        "up",
        "peak MiB",
        "KiB/attack",
        "p99 ms bef/dur",
        "counter delta",
        "attackers",
        "ok"
    );
    for r in reports {
        let delta: f64 = r["counters"]
            .as_object()
            .map(|m| {
                m.values()
                    .map(|c| {
                        c["after"].as_f64().unwrap_or(0.0) - c["before"].as_f64().unwrap_or(0.0)
                    })
                    .sum()
            })
            .unwrap_or(0.0);
        let outs: Vec<String> = r["outcomes"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} x{v}")).collect())
            .unwrap_or_default();
        println!(
            "{:16} {:>3} {:>9.1} {:>11.1} {:>7.2}/{:<7.2} {:>16} {:>9}  {:4} {}",
            r["kind"].as_str().unwrap_or("?"),
            if r["server_up"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            },
            mib(r["rss_bytes"]["peak_over_runs"]
                .as_u64()
                .or(r["rss_bytes"]["peak"].as_u64())
                .unwrap_or(0)),
            r["rss_bytes"]["per_attacker"].as_f64().unwrap_or(0.0) / 1024.0,
            r["good"]["median_ms"]["before_p99"]
                .as_f64()
                .or(r["good"]["before_ms"]["p99"].as_f64())
                .unwrap_or(0.0),
            r["good"]["median_ms"]["during_p99"]
                .as_f64()
                .or(r["good"]["during_ms"]["p99"].as_f64())
                .unwrap_or(0.0),
            delta + 0.0,
            r["attackers"],
            if r["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAIL"
            },
            outs.join(", ")
        );
        if let Some(b) = r["broken"].as_array() {
            for x in b {
                println!("{:16}   broken: {}", "", x.as_str().unwrap_or(""));
            }
        }
        if let Some(b) = r["over_reported_only"].as_array() {
            for x in b {
                println!(
                    "{:16}   over (reported only): {}",
                    "",
                    x.as_str().unwrap_or("")
                );
            }
        }
    }
    println!();
}
