//! `fanout limits check|apply|revert`: the OS limits this box needs to hold N connections
//! (per-process fds, system fds, accept queues, ephemeral ports, TCP memory). `check` only
//! reads; `apply` saves every previous value in a state file before changing it; `revert`
//! restores exactly what the state file holds. `scripts/tune-limits.sh` runs this.
//!
//! [`rules`] decides (pure, from [`host::Inputs`]); [`host`] reads and writes the box;
//! [`state`] is the state file; this module prints, and runs `apply` and `revert`.

pub mod host;
pub mod rules;
pub mod state;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::rt::limits::RESERVED_FDS;
use host::{words, Host};
use rules::{
    human_bytes, kernel_estimate_note, sysctl_cmd, Kind, Plan, Report, Status, DEFAULT_CONNECTIONS,
    KERNEL_BYTES_DEFAULT, USER_BYTES_DEFAULT,
};
use state::Record;

const STATUSES: &str = "\
Statuses (check):
  OK            enough for N connections
  LOW           blocks N connections; `apply` raises it (ulimit: advice only)
  WARN          does not block, but hurts a run (drops, slow port reuse, buffer memory);
                `apply` sets it
  CANNOT-RAISE  cannot be raised from here (e.g. the hard RLIMIT_NOFILE without
                CAP_SYS_RESOURCE); not blocking when the work can be split across
                processes or source addresses, which the fix says how
  INFO          informational
check exits 1 if any row blocks, 0 otherwise; 2 on a usage error.

By default the server and the client (fanout-load) run on this box over loopback, so every
connection costs 2 sockets here; --server-only counts the server side only.

Environment: TUNE_LIMITS_ROOT prefixes the /etc paths --persist writes (default empty).";

/// `fanout limits`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Check, apply and revert the OS limits fanout needs for N connections",
    after_long_help = STATUSES,
    args_override_self = true
)]
pub struct LimitsArgs {
    #[command(subcommand)]
    pub command: LimitsCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum LimitsCommand {
    /// One row per limit: current value, value needed, status and the fix (the command).
    #[command(after_long_help = STATUSES, args_override_self = true)]
    Check(CheckArgs),
    /// Set every sysctl that is LOW or WARN, after saving the previous value of everything it
    /// changes in the state file. It cannot raise the calling shell's ulimit: it prints the
    /// command to run there instead.
    #[command(args_override_self = true)]
    Apply(ApplyArgs),
    /// Restore every value saved in the state file exactly, remove the files apply created,
    /// then delete the state file. With no state file: "nothing to revert", exit 0.
    #[command(args_override_self = true)]
    Revert(RevertArgs),
}

/// What is planned for (check and apply).
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Connections to plan for.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub connections: u64,
    /// The clients run on other machines (1 socket per connection here, not 2).
    #[arg(long)]
    pub server_only: bool,
    /// fanout user-space bytes per connection (the design target by default; give the
    /// measured RSS delta / connections).
    #[arg(long, value_name = "B", default_value_t = USER_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub bytes_per_conn: u64,
    /// Kernel bytes per idle TCP socket (measured: about 5 KiB).
    #[arg(long, value_name = "B", default_value_t = KERNEL_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub kernel_bytes_per_socket: u64,
}

impl PlanArgs {
    pub fn plan(&self) -> Plan {
        Plan {
            connections: self.connections,
            server_only: self.server_only,
            bytes_per_conn: self.bytes_per_conn,
            kernel_bytes_per_socket: self.kernel_bytes_per_socket,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Also write the rows and estimates as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print exactly what would run; change nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write $ROOT/etc/sysctl.d/90-fanout.conf (the sysctls set),
    /// $ROOT/etc/security/limits.d/90-fanout.conf (nofile soft/hard) and the systemd drop-in
    /// $ROOT/etc/systemd/system/fanout.service.d/limits.conf (LimitNOFILE=); revert removes
    /// them (or restores what was there before).
    #[arg(long)]
    pub persist: bool,
    /// The state file [default: ${XDG_STATE_HOME:-$HOME/.local/state}/fanout/tune-limits.state].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Apply although a state file exists: values already saved there are kept, so revert
    /// still restores the originals.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RevertArgs {
    /// The state file [default: ${XDG_STATE_HOME:-$HOME/.local/state}/fanout/tune-limits.state].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Print exactly what would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where the commands run: the box, the /etc prefix, how the program is called.
#[derive(Debug, Clone)]
pub struct Env {
    pub host: Host,
    /// Prefixes the /etc paths `--persist` writes (`TUNE_LIMITS_ROOT`; empty: the real /etc).
    pub etc_root: String,
    /// The command as the user typed it (`scripts/tune-limits.sh`, or `fanout limits`).
    pub invoked: String,
    /// Its short name, for messages.
    pub prog: String,
    /// Refuse to change anything unless root.
    pub need_root: bool,
}

impl Env {
    /// The real box. `FANOUT_LIMITS_PROG` (set by scripts/tune-limits.sh to its `$0`) names
    /// the command in messages; `TUNE_LIMITS_ROOT` prefixes the /etc paths.
    pub fn from_process() -> Self {
        let invoked = std::env::var("FANOUT_LIMITS_PROG")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "fanout limits".to_string());
        let prog = if invoked.contains('/') {
            invoked.rsplit('/').next().unwrap_or(&invoked).to_string()
        } else {
            invoked.clone()
        };
        let mut etc_root = std::env::var("TUNE_LIMITS_ROOT").unwrap_or_default();
        if etc_root.ends_with('/') {
            etc_root.pop();
        }
        if !etc_root.is_empty() && !etc_root.starts_with('/') {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
            etc_root = format!("{}/{etc_root}", cwd.display());
        }
        Self {
            host: Host::default(),
            etc_root,
            invoked,
            prog,
            need_root: true,
        }
    }
}

/// Runs a `fanout limits` command on this box; returns the exit status.
pub fn run(args: LimitsArgs) -> i32 {
    let env = Env::from_process();
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    let r = match &args.command {
        LimitsCommand::Check(a) => check(&env, a, &mut out, &mut err),
        LimitsCommand::Apply(a) => apply(&env, a, &mut out, &mut err),
        LimitsCommand::Revert(a) => revert(&env, a, &mut out, &mut err),
    };
    let _ = out.flush();
    match r {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "{}: {e}", env.prog);
            1
        }
    }
}

// ---------------------------------------------------------------------------------------
// check

pub fn check(
    env: &Env,
    a: &CheckArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let report = rules::evaluate(a.plan.plan(), &env.host.read());
    out.write_all(render_report(&report, &env.invoked).as_bytes())?;
    let code = report.exit_code();
    if let Some(file) = &a.json {
        let json = render_json(&report);
        if std::fs::write(file, json).is_err() {
            writeln!(err, "{}: cannot write {}", env.prog, file.display())?;
            return Ok(2);
        }
        writeln!(out, "JSON written to {}", file.display())?;
    }
    Ok(code)
}

/// The table, the notes, the memory estimate and the result, as `check` prints them.
pub fn render_report(r: &Report, invoked: &str) -> String {
    use std::fmt::Write as _;
    let p = &r.plan;
    let n = p.connections;
    let mut s = String::new();
    let side = if p.server_only {
        "server side only: 1 socket per connection on this box"
    } else {
        "server and client on this box over loopback: 2 sockets per connection"
    };
    let _ = writeln!(s, "fanout limits for {n} connections ({side})\n");
    let width =
        |f: fn(&rules::Row) -> usize, min: usize| r.rows.iter().map(f).fold(min, usize::max);
    let w1 = width(|r| r.name.chars().count(), 5);
    let w2 = width(|r| r.current.chars().count(), 7);
    let w3 = width(|r| r.needed.chars().count(), 6);
    let w4 = width(|r| r.status.as_str().len(), 6);
    let _ = writeln!(
        s,
        "{:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  FIX",
        "LIMIT", "CURRENT", "NEEDED", "STATUS"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            row.name,
            row.current,
            row.needed,
            row.status.as_str(),
            row.fix
        );
    }
    if !r.notes.is_empty() {
        s.push_str("\nNotes:\n");
        for note in &r.notes {
            let _ = writeln!(s, "  - {note}");
        }
    }
    let (kernel, user) = (p.kernel_bytes(), p.user_bytes());
    let _ = writeln!(s, "\nMemory estimate for {n} connections:");
    let _ = writeln!(
        s,
        "  kernel:  {} sockets x {} B = {}  ({})",
        p.sockets(),
        p.kernel_bytes_per_socket,
        human_bytes(kernel),
        kernel_estimate_note(p.kernel_bytes_per_socket)
    );
    let _ = writeln!(
        s,
        "  fanout user space: {n} x {} B = {}  ({})",
        p.bytes_per_conn,
        human_bytes(user),
        if p.bytes_per_conn == USER_BYTES_DEFAULT {
            "the design target; give the measured figure with --bytes-per-conn B"
        } else {
            "from --bytes-per-conn"
        }
    );
    if !p.server_only {
        s.push_str("  (fanout-load user space is not counted)\n");
    }
    let _ = writeln!(
        s,
        "  total:   {}; MemAvailable: {}",
        human_bytes(kernel.saturating_add(user)),
        human_bytes(r.mem_available)
    );
    s.push('\n');
    let blocking: Vec<&str> = r.blocking().map(|r| r.name.as_str()).collect();
    if blocking.is_empty() {
        let _ = writeln!(s, "Result: OK: nothing blocks {n} connections.");
    } else {
        let _ = writeln!(
            s,
            "Result: LOW (blocking): {}. `{invoked} apply --connections {n}{}` raises the sysctls.",
            blocking.join(", "),
            if p.server_only { " --server-only" } else { "" }
        );
    }
    let cannot: Vec<&str> = r
        .rows
        .iter()
        .filter(|r| r.status == Status::CannotRaise && !r.blocking)
        .map(|r| r.name.as_str())
        .collect();
    if !cannot.is_empty() {
        let _ = writeln!(
            s,
            "CANNOT-RAISE, not blocking: {}: split across processes / source addresses as the notes say.",
            cannot.join(", ")
        );
    }
    s
}

#[derive(Serialize)]
struct JsonReport<'a> {
    connections: u64,
    server_only: bool,
    sockets_per_connection: u64,
    cap_sys_resource: bool,
    nofile: JsonNofile,
    processes_needed: u64,
    memory: JsonMemory,
    rows: Vec<JsonRow<'a>>,
    notes: &'a [String],
    exit_code: i32,
}

#[derive(Serialize)]
struct JsonNofile {
    soft: u64,
    hard: u64,
    needed: u64,
    reserved_fds: u64,
}

#[derive(Serialize)]
struct JsonMemory {
    kernel_bytes_per_socket: u64,
    kernel_bytes: u64,
    user_bytes_per_conn: u64,
    user_bytes: u64,
    mem_available_bytes: u64,
    mem_total_bytes: u64,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    name: &'a str,
    current: &'a str,
    needed: &'a str,
    status: Status,
    blocking: bool,
    fix: &'a str,
    /// The value apply writes, words joined by spaces; null if none.
    set: Option<String>,
}

/// `check --json`: the keys the bash script wrote (scripts/lib/bench_connections.py keeps
/// them in its report), plus `memory.mem_total_bytes`.
pub fn render_json(r: &Report) -> String {
    let p = &r.plan;
    let j = JsonReport {
        connections: p.connections,
        server_only: p.server_only,
        sockets_per_connection: p.sockets_per_connection(),
        cap_sys_resource: r.cap_sys_resource,
        nofile: JsonNofile {
            soft: r.nofile_soft,
            hard: r.nofile_hard,
            needed: r.nofile_needed,
            reserved_fds: RESERVED_FDS,
        },
        processes_needed: r.processes,
        memory: JsonMemory {
            kernel_bytes_per_socket: p.kernel_bytes_per_socket,
            kernel_bytes: p.kernel_bytes(),
            user_bytes_per_conn: p.bytes_per_conn,
            user_bytes: p.user_bytes(),
            mem_available_bytes: r.mem_available,
            mem_total_bytes: r.mem_total,
        },
        rows: r
            .rows
            .iter()
            .map(|row| JsonRow {
                name: &row.name,
                current: &row.current,
                needed: &row.needed,
                status: row.status,
                blocking: row.blocking,
                fix: &row.fix,
                set: row.set.as_deref().map(words),
            })
            .collect(),
        notes: &r.notes,
        exit_code: r.exit_code(),
    };
    let mut s = serde_json::to_string_pretty(&j).expect("a report serializes");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------
// apply

const SYSCTL_D: &str = "/etc/sysctl.d/90-fanout.conf";
const LIMITS_D: &str = "/etc/security/limits.d/90-fanout.conf";
const SYSTEMD_DROPIN: &str = "/etc/systemd/system/fanout.service.d/limits.conf";

/// Missing ancestors of a path, outermost first.
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut d = path.parent();
    while let Some(dir) = d {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        out.push(dir.to_path_buf());
        d = dir.parent();
    }
    out.reverse();
    out
}

/// `cp -p`: the content, mode, owner and times.
fn copy_preserving(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::copy(from, to)?;
    let meta = std::fs::metadata(from)?;
    let _ = std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()));
    let times = std::fs::FileTimes::new()
        .set_accessed(meta.accessed()?)
        .set_modified(meta.modified()?);
    std::fs::File::options()
        .write(true)
        .open(to)?
        .set_times(times)?;
    Ok(())
}

fn state_path(state: &Option<PathBuf>) -> PathBuf {
    state.clone().unwrap_or_else(host::default_state_file)
}

pub fn apply(
    env: &Env,
    a: &ApplyArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let plan = a.plan.plan();
    let report = rules::evaluate(plan, &env.host.read());
    let state_file = state_path(&a.state);
    let prog = &env.prog;
    let sf = state_file.display();

    let state_exists = state_file.exists();
    if state_exists && !a.force {
        if a.dry_run {
            writeln!(
                out,
                "note: {sf} exists; apply without --force would refuse (revert first)"
            )?;
        } else {
            writeln!(err, "{prog}: {sf} exists: an earlier apply has not been reverted. Run `{prog} revert --state {sf}` first, or pass --force (values saved there are kept).")?;
            return Ok(2);
        }
    }
    if !a.dry_run && env.need_root && !host::is_root() {
        writeln!(
            err,
            "{prog}: apply needs root to run sysctl -w (or use --dry-run)"
        )?;
        return Ok(2);
    }
    let (old_state, records) = if state_exists {
        let text = std::fs::read_to_string(&state_file)?;
        let records = state::parse(&text);
        (Some(text), records)
    } else {
        (None, Vec::new())
    };

    // The sysctls to set: (name, value, previous raw value).
    let sets: Vec<(String, String, String)> = report
        .rows
        .iter()
        .filter(|r| r.kind == Kind::Sysctl && matches!(r.status, Status::Low | Status::Warn))
        .filter_map(|r| {
            let value = r.set.clone()?;
            let prev = env.host.sysctl(&r.name).unwrap_or_default();
            Some((r.name.clone(), value, prev))
        })
        .collect();

    // The files --persist writes: path and content.
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    if a.persist {
        let stamp = format!(
            "Written by fanout `{prog} apply --persist --connections {}` ({}); `{prog} revert` removes it.",
            plan.connections,
            host::utc_stamp(),
        );
        // Never lower what logins get now.
        let nofile = report.nofile_needed.max(report.nofile_hard);
        if !sets.is_empty() {
            let mut body = format!("# {stamp}\n");
            for (name, value, _) in &sets {
                body.push_str(&format!("{name} = {}\n", words(value)));
            }
            files.push((PathBuf::from(format!("{}{SYSCTL_D}", env.etc_root)), body));
        }
        files.push((
            PathBuf::from(format!("{}{LIMITS_D}", env.etc_root)),
            format!(
                "# {stamp}\n\
                 # '*' does not match root: root has its own lines. Applies to new logins (pam_limits).\n\
                 *       soft    nofile  {nofile}\n\
                 *       hard    nofile  {nofile}\n\
                 root    soft    nofile  {nofile}\n\
                 root    hard    nofile  {nofile}\n"
            ),
        ));
        files.push((
            PathBuf::from(format!("{}{SYSTEMD_DROPIN}", env.etc_root)),
            format!(
                "# {stamp}\n\
                 # For a unit not named fanout.service, copy to /etc/systemd/system/UNIT.service.d/limits.conf;\n\
                 # then: systemctl daemon-reload && systemctl restart UNIT\n\
                 [Service]\n\
                 LimitNOFILE={nofile}\n"
            ),
        ));
    }

    if sets.is_empty() && files.is_empty() {
        writeln!(
            out,
            "nothing to change: every sysctl is already enough for {} connections.",
            plan.connections
        )?;
        ulimit_advice(&report, out)?;
        return Ok(0);
    }

    // Plan the state: previous sysctl values, directories to create, file backups.
    let mut new_records: Vec<Record> = Vec::new();
    for (name, _, prev) in &sets {
        if !state::has(&records, "sysctl", name) {
            new_records.push(Record::new("sysctl", name.clone(), prev.clone()));
        }
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut backups: Vec<Option<PathBuf>> = Vec::new();
    let mut k = 0u64;
    for (f, _) in &files {
        for d in missing_dirs(f) {
            if dirs.contains(&d) {
                continue;
            }
            let ds = d.to_string_lossy().into_owned();
            if !state::has(&records, "dir", &ds) {
                new_records.push(Record::new("dir", ds, ""));
            }
            dirs.push(d);
        }
        let fs = f.to_string_lossy().into_owned();
        let mut backup = None;
        if !state::has(&records, "file", &fs) {
            if f.exists() {
                let bak = |k: u64| PathBuf::from(format!("{}.bak.{k}", state_file.display()));
                while bak(k).exists() {
                    k += 1;
                }
                backup = Some(bak(k));
                k += 1;
            }
            let b = backup.as_ref().map(|b| b.to_string_lossy().into_owned());
            new_records.push(Record::new("file", fs, b.unwrap_or_default()));
        }
        backups.push(backup);
    }

    let pfx = if a.dry_run {
        writeln!(out, "dry run: nothing is changed. apply would:")?;
        "would run: "
    } else {
        ""
    };
    writeln!(
        out,
        "{}save previous values to {sf}:",
        if a.dry_run { "would " } else { "" }
    )?;
    for r in &new_records {
        match r.kind.as_str() {
            "sysctl" => writeln!(out, "  {} = {}", r.name, words(&r.value))?,
            "dir" => writeln!(out, "  {} (directory to create)", r.name)?,
            _ if r.value.is_empty() => writeln!(out, "  {} (file to create)", r.name)?,
            _ => writeln!(
                out,
                "  {} (exists: its content goes to {})",
                r.name, r.value
            )?,
        }
    }
    if new_records.is_empty() {
        writeln!(out, "  (all already saved there)")?;
    }

    if !a.dry_run {
        // Backups and the state come first, so revert can undo a half-finished apply.
        for ((f, _), b) in files.iter().zip(&backups) {
            if let Some(b) = b {
                copy_preserving(f, b).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot back up {} to {}: {e}", f.display(), b.display()),
                    )
                })?;
            }
        }
        if let Some(dir) = state_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = match old_state {
            Some(old) => old,
            None => format!("{}\n", state::HEADER),
        };
        text.push_str(&format!(
            "# apply --connections {}{} at {}\n",
            plan.connections,
            if plan.server_only {
                " --server-only"
            } else {
                ""
            },
            host::utc_stamp()
        ));
        for r in &new_records {
            text.push_str(&r.line());
            text.push('\n');
        }
        let tmp = PathBuf::from(format!(
            "{}.tmp.{}",
            state_file.display(),
            std::process::id()
        ));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &state_file)?;
    }

    let mut failed = false;
    for (name, value, prev) in &sets {
        writeln!(
            out,
            "{pfx}{}   # was {}",
            sysctl_cmd(name, value),
            words(prev)
        )?;
        if a.dry_run {
            continue;
        }
        if let Err(e) = env.host.set_sysctl(name, value) {
            writeln!(err, "{prog}: failed to set {name}: {e}")?;
            failed = true;
        }
    }
    for d in &dirs {
        writeln!(out, "{pfx}mkdir {}", d.display())?;
        if !a.dry_run {
            std::fs::create_dir(d)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", d.display())))?;
        }
    }
    for ((f, content), b) in files.iter().zip(&backups) {
        let saved = b
            .as_ref()
            .map(|b| format!(" (previous content saved to {})", b.display()))
            .unwrap_or_default();
        writeln!(out, "{pfx}write {}{saved}:", f.display())?;
        for line in content.lines() {
            writeln!(out, "    | {line}")?;
        }
        if !a.dry_run {
            std::fs::write(f, content)
                .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", f.display())))?;
        }
    }
    if a.persist {
        writeln!(out, "persist: {}{SYSCTL_D} is read at boot (or now with `sysctl --system`); {}{LIMITS_D} applies to new logins; the systemd drop-in belongs in {SYSTEMD_DROPIN} (then `systemctl daemon-reload`).", env.etc_root, env.etc_root)?;
    }
    ulimit_advice(&report, out)?;
    if a.dry_run {
        return Ok(0);
    }
    if failed {
        writeln!(
            err,
            "some changes failed; `{prog} revert --state {sf}` restores what was saved."
        )?;
        return Ok(1);
    }
    writeln!(
        out,
        "done. `{prog} revert --state {sf}` restores the previous values."
    )?;
    Ok(0)
}

/// What to run in the shell for RLIMIT_NOFILE, which no child process can raise for it.
fn ulimit_advice(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let Some(hard) = r.row("ulimit -Hn (hard)") else {
        return Ok(());
    };
    let (soft, need, n) = (r.nofile_soft, r.nofile_needed, r.plan.connections);
    match hard.status {
        Status::Ok if soft < need => writeln!(out, "ulimit: soft {soft} < {need}; fanout raises soft to hard itself, or run in the shell that starts it: ulimit -n {need}")?,
        Status::Low => writeln!(out, "ulimit: a script cannot raise its parent shell's limit. In the shell that starts fanout run:\n  ulimit -Hn {need} && ulimit -n {need}")?,
        Status::CannotRaise => {
            writeln!(out, "ulimit: CANNOT-RAISE: hard limit {} and no CAP_SYS_RESOURCE, so `ulimit -Hn {need}` fails here, and a script cannot raise its parent's limit anyway.", r.nofile_hard)?;
            if r.nofile_hard > RESERVED_FDS {
                writeln!(out, "  {n} connections need ceil({n} / ({} - {RESERVED_FDS})) = {} server processes on one port (SO_REUSEPORT){}. Not blocking.",
                    r.nofile_hard, r.processes,
                    if r.plan.server_only { "" } else { " and as many client processes (fanout-load --processes auto)" })?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// revert

pub fn revert(
    env: &Env,
    a: &RevertArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let state_file = state_path(&a.state);
    let sf = state_file.display();
    let prog = &env.prog;
    if !state_file.exists() {
        writeln!(out, "nothing to revert (no state file at {sf})")?;
        return Ok(0);
    }
    if !a.dry_run && env.need_root && !host::is_root() {
        writeln!(
            err,
            "{prog}: revert needs root to run sysctl -w (or use --dry-run)"
        )?;
        return Ok(2);
    }
    let records = state::parse(&std::fs::read_to_string(&state_file)?);
    let pfx = if a.dry_run {
        writeln!(out, "dry run: nothing is changed. revert would:")?;
        "would run: "
    } else {
        ""
    };
    let mut failed = false;
    // Newest first: files before the directories that hold them.
    for r in records.iter().rev() {
        let (name, value) = (&r.name, &r.value);
        match r.kind.as_str() {
            "sysctl" => {
                if !host::valid_sysctl_name(name) || !env.host.sysctl_path(name).exists() {
                    writeln!(
                        err,
                        "{prog}: skipping unknown sysctl {name:?} in the state file"
                    )?;
                    failed = true;
                    continue;
                }
                let cur = env.host.sysctl(name).unwrap_or_default();
                if words(&cur) == words(value) {
                    writeln!(out, "{name} already {}", words(value))?;
                    continue;
                }
                writeln!(
                    out,
                    "{pfx}{}   # now {}",
                    sysctl_cmd(name, value),
                    words(&cur)
                )?;
                if a.dry_run {
                    continue;
                }
                match env.host.set_sysctl(name, value) {
                    Ok(()) => writeln!(
                        out,
                        "  restored {name}: {} -> {}",
                        words(&cur),
                        words(value)
                    )?,
                    Err(e) => {
                        writeln!(
                            err,
                            "{prog}: failed to restore {name} to {}: {e}",
                            words(value)
                        )?;
                        failed = true;
                    }
                }
            }
            "file" if !value.is_empty() => {
                writeln!(out, "{pfx}restore {name} from {value}")?;
                if a.dry_run {
                    continue;
                }
                let restored = copy_preserving(Path::new(value), Path::new(name))
                    .and_then(|()| std::fs::remove_file(value));
                if let Err(e) = restored {
                    writeln!(err, "{prog}: cannot restore {name} from {value}: {e}")?;
                    failed = true;
                }
            }
            "file" => {
                writeln!(out, "{pfx}rm -f {name}")?;
                if a.dry_run {
                    continue;
                }
                match std::fs::remove_file(name) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        writeln!(err, "{prog}: cannot remove {name}: {e}")?;
                        failed = true;
                    }
                    _ => {}
                }
            }
            "dir" => {
                writeln!(out, "{pfx}rmdir {name}   # if empty")?;
                if !a.dry_run && Path::new(name).is_dir() && std::fs::remove_dir(name).is_err() {
                    writeln!(out, "  kept {name}: not empty")?;
                }
            }
            _ => writeln!(
                err,
                "{prog}: skipping unknown record {:?} in the state file",
                r.line()
            )?,
        }
    }
    if a.dry_run {
        writeln!(out, "{pfx}rm {sf}")?;
        return Ok(0);
    }
    if failed {
        writeln!(err, "{prog}: some values were not restored; {sf} is kept")?;
        return Ok(1);
    }
    std::fs::remove_file(&state_file)?;
    writeln!(out, "reverted: every saved value restored; removed {sf}")?;
    Ok(0)
}

#[cfg(test)]
mod tests;
