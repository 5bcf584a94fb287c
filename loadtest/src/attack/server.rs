//! The server under attack: a `fanout serve` child on a free loopback port, its `/metrics`,
//! and its RSS sampled from /proc on a thread. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{raw, App, JWT_SECRET, PUBLISH_KEY};

/// The source address of the harness's own HTTP requests (/healthz, /metrics): apart from
/// the attackers', so a per-IP cap they fill does not refuse it.
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 254);

pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    pub exit: Option<std::process::ExitStatus>,
}

impl ServerProc {
    /// Starts `bin serve` with `flags` (plus what the app needs) and waits up to 10 s for
    /// /healthz. `nofile`: the server's RLIMIT_NOFILE, soft and hard.
    pub fn start(
        bin: &Path,
        app: App,
        flags: &[String],
        nofile: Option<u64>,
    ) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log =
            std::env::temp_dir().join(format!("fanout-attack-{}-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--listen").arg(addr.to_string());
        match app {
            App::Echo => {
                cmd.args(["--app", "echo"]);
            }
            App::Push => {
                cmd.args([
                    "--app",
                    "push",
                    "--publish-key",
                    PUBLISH_KEY,
                    "--allow-ws-publish",
                ]);
            }
        }
        let mut flags = flags.to_vec();
        for f in flags.iter_mut() {
            if f == "{jwt}" {
                *f = JWT_SECRET.to_string();
            }
        }
        cmd.args(&flags)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2));
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let mut s = ServerProc {
            child,
            addr,
            pid,
            log,
            exit: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((200, _)) = raw::http(addr, Some(PROBE_IP), "GET", "/healthz", "", b"") {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                let text = std::fs::read_to_string(&s.log).unwrap_or_default();
                return Err(format!("the server exited ({st}) at start: {text}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        s.stop();
        Err(format!(
            "the server did not answer /healthz within 10 s ({})",
            s.log.display()
        ))
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the status and the time.
    pub fn terminate(&mut self, limit: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let t = Instant::now();
        if self.exit.is_none() {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        }
        while t.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
                return (Some(st), t.elapsed());
            }
            if self.exit.is_some() {
                return (self.exit, Duration::ZERO);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, t.elapsed())
    }

    /// Waits up to `limit` for an exit already asked for (a second SIGTERM would make the
    /// server exit at once, not drain).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while self.exit.is_none() && t.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.exit
    }

    /// SIGTERM, 5 s, then SIGKILL; removes the log unless it exited abnormally.
    pub fn stop(&mut self) {
        if self.exit.is_none() {
            let (st, _) = self.terminate(Duration::from_secs(5));
            if st.is_none() {
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
            }
        }
        if self.exit.is_some_and(|s| s.success()) {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET /metrics as name (with labels) -> value.
pub fn metrics(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let (code, body) = raw::http(addr, Some(PROBE_IP), "GET", "/metrics", "", b"").ok()?;
    if code != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The server's loop turns between two `/metrics` reads (`fanout_loop_turn_seconds`): how
/// many, how many worked longer than 1 ms, and the bound of the longest. A good client's
/// message that arrives during a turn waits for it: a p99 well above the longest turn was
/// spent outside the server (the scheduler of a shared box, the client itself).
pub fn turns_between(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    let moved =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let count = moved("fanout_loop_turn_seconds_count");
    let mut les: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|k| {
            let le = k
                .strip_prefix("fanout_loop_turn_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, moved(k)))
        })
        .collect();
    les.sort_by(|a, b| a.0.total_cmp(&b.0));
    let within = |bound: f64| les.iter().find(|(le, _)| *le >= bound).map_or(0.0, |x| x.1);
    let longest = les.iter().find(|(_, n)| *n >= count).map(|x| x.0);
    json!({
        "count": count,
        "over_1ms": count - within(0.001),
        "longest_at_most_ms": longest.filter(|l| l.is_finite()).map(|l| l * 1e3),
    })
}

/// The peak RSS of a process since start or the last `reset_peak` (VmHWM): catches what
/// sampling misses, e.g. a message buffered and freed between two samples.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`, Linux 4.0+); false
/// when the kernel refuses.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Raises this process's soft RLIMIT_NOFILE to the hard one (attacks open many sockets).
pub fn raise_nofile() {
    let _ = crate::procinfo::raise_nofile();
}

/// Samples a process's VmRSS every `every` on a thread until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            // At most an hour of samples, whatever the caller does.
            let cap = (3600.0 / every.as_secs_f64().max(1e-3)) as usize;
            while !s.load(Relaxed) && out.len() < cap {
                match crate::procinfo::rss_bytes(pid) {
                    Some(r) => out.push(r),
                    None => break,
                }
                std::thread::sleep(every);
            }
            out
        });
        RssSampler { stop, handle }
    }

    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
