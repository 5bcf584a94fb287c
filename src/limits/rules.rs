//! The rules: from what the box holds ([`Inputs`]) and what is planned ([`Plan`]), one row per
//! limit with its status and fix, and the notes that explain them. Pure: no I/O.

use serde::Serialize;

use super::host::{words, Inputs};
use crate::rt::limits::{fds_needed, processes_needed, RESERVED_FDS};

/// Connections planned for when `--connections` is not given.
pub const DEFAULT_CONNECTIONS: u64 = 50_000;
/// `tcp_max_syn_backlog` floor, as fanout's default listen backlog.
pub const SYN_BACKLOG_MIN: u64 = 4096;
/// Loopback packets queue in the per-CPU backlog too.
pub const NETDEV_BACKLOG_MIN: u64 = 16_384;
pub const FIN_TIMEOUT_MAX: u64 = 30;
/// The widest ephemeral port range `apply` sets.
pub const WIDE_PORT_LO: u64 = 1024;
pub const WIDE_PORT_HI: u64 = 65_535;
/// connect() searches its source address's ephemeral range even ports first (Linux
/// `__inet_hash_connect`): past half the range, every connect walks all even ports first
/// (242 us of system CPU per connect at 67% full, 45 us at 8%: docs/limits.md). Each source
/// address is planned for a quarter of the range.
pub const PORT_SHARE_DIV: u64 = 4;
/// Kernel bytes per idle loopback TCP socket, measured (see [`kernel_estimate_note`]).
pub const KERNEL_BYTES_DEFAULT: u64 = 5120;
/// fanout's design target per idle connection.
pub const USER_BYTES_DEFAULT: u64 = 256;
/// TCP buffer bytes per socket `tcp_mem` is sized for: closing a million loopback connections
/// at once queued 890,000 pages for 2M sockets, two million 1.88M pages for 4M sockets
/// (1,820-1,930 B per socket; docs/limits.md, docs/benchmarks.md). An idle socket holds
/// almost none.
pub const TCP_BUFFER_BYTES_PER_SOCKET: u64 = 2048;
/// `tcp_mem[2]` is never sized past this fraction of RAM (1/8; the kernel's own default is
/// 3/32 of the memory it can use for buffers). Past it the kernel refuses buffer memory
/// (resets orphaned sockets, drops input) instead of the box running out of memory.
pub const TCP_MEM_RAM_DIV: u64 = 8;

/// The listen backlog floor: fanout's default `--backlog` (the kernel caps it at somaxconn).
pub fn backlog_min() -> u64 {
    u64::from(crate::server::Config::default().backlog)
}

/// What is planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub connections: u64,
    /// The clients run on other machines: one socket per connection here, not two.
    pub server_only: bool,
    pub bytes_per_conn: u64,
    pub kernel_bytes_per_socket: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            connections: DEFAULT_CONNECTIONS,
            server_only: false,
            bytes_per_conn: USER_BYTES_DEFAULT,
            kernel_bytes_per_socket: KERNEL_BYTES_DEFAULT,
        }
    }
}

impl Plan {
    pub fn sockets_per_connection(&self) -> u64 {
        if self.server_only {
            1
        } else {
            2
        }
    }
    pub fn sockets(&self) -> u64 {
        self.connections
            .saturating_mul(self.sockets_per_connection())
    }
    pub fn kernel_bytes(&self) -> u64 {
        self.sockets().saturating_mul(self.kernel_bytes_per_socket)
    }
    pub fn user_bytes(&self) -> u64 {
        self.connections.saturating_mul(self.bytes_per_conn)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Enough for N connections.
    #[serde(rename = "OK")]
    Ok,
    /// Blocks N connections; `apply` raises it (ulimit: advice only).
    #[serde(rename = "LOW")]
    Low,
    /// Does not block, but hurts a run; `apply` sets it.
    #[serde(rename = "WARN")]
    Warn,
    /// Cannot be raised from here; not blocking when the work can be split.
    #[serde(rename = "CANNOT-RAISE")]
    CannotRaise,
    #[serde(rename = "INFO")]
    Info,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Low => "LOW",
            Status::Warn => "WARN",
            Status::CannotRaise => "CANNOT-RAISE",
            Status::Info => "INFO",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ulimit,
    Sysctl,
    Memory,
}

/// One limit: current value, value needed, status and the fix (a command, or "-").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub current: String,
    pub needed: String,
    pub status: Status,
    pub blocking: bool,
    pub fix: String,
    pub kind: Kind,
    /// The value `apply` writes (a sysctl row that is LOW or WARN).
    pub set: Option<String>,
}

/// Everything `check` prints and `apply` acts on.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub nofile_needed: u64,
    pub cap_sys_resource: bool,
    /// Processes each side needs for the fd limit (1 unless the hard limit is short).
    pub processes: u64,
    pub mem_available: u64,
    pub mem_total: u64,
}

impl Report {
    /// The rows that block N connections.
    pub fn blocking(&self) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(|r| r.blocking && matches!(r.status, Status::Low | Status::CannotRaise))
    }
    /// `check`'s exit status: 1 if any row blocks.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.blocking().next().is_some())
    }
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

struct Eval<'a> {
    plan: Plan,
    inp: &'a Inputs,
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// Evaluates every limit, in the order `check` prints them.
pub fn evaluate(plan: Plan, inp: &Inputs) -> Report {
    let mut e = Eval {
        plan,
        inp,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let need = fds_needed(plan.connections);
    let processes = e.nofile(need);
    e.file_max();
    e.min_row("fs.nr_open", need, Status::Low);
    e.min_row("net.core.somaxconn", backlog_min(), Status::Low);
    e.min_row("net.ipv4.tcp_max_syn_backlog", SYN_BACKLOG_MIN, Status::Low);
    e.min_row(
        "net.core.netdev_max_backlog",
        NETDEV_BACKLOG_MIN,
        Status::Warn,
    );
    e.port_range();
    e.tw_reuse();
    e.fin_timeout();
    e.tcp_mem();
    e.buffers();
    e.conntrack();
    e.memory();
    Report {
        plan,
        rows: e.rows,
        notes: e.notes,
        nofile_soft: inp.nofile_soft,
        nofile_hard: inp.nofile_hard,
        nofile_needed: need,
        cap_sys_resource: inp.cap_sys_resource,
        processes,
        mem_available: inp.mem_available,
        mem_total: inp.mem_total,
    }
}

/// `sysctl -w name=value` as it would be typed (quoted when the value has several words).
pub fn sysctl_cmd(name: &str, value: &str) -> String {
    if value.contains(char::is_whitespace) {
        format!("sysctl -w {name}='{}'", words(value))
    } else {
        format!("sysctl -w {name}={value}")
    }
}

/// 1536 -> "1.5 KiB"; one decimal, binary units.
pub fn human_bytes(b: u64) -> String {
    let (unit, div) = match b {
        b if b >= 1 << 30 => ("GiB", 1u64 << 30),
        b if b >= 1 << 20 => ("MiB", 1 << 20),
        b if b >= 1 << 10 => ("KiB", 1 << 10),
        _ => return format!("{b} B"),
    };
    let tenths = (u128::from(b) * 10 + u128::from(div / 2)) / u128::from(div);
    format!("{}.{} {unit}", tenths / 10, tenths % 10)
}

/// 127.0.0.0 + k as a dotted quad (k < 2^24).
pub fn loopback_addr(k: u64) -> String {
    format!("127.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255)
}

/// The addresses `fanout-load --source-ips` needs for `addrs` source addresses.
fn source_ips(addrs: u64) -> String {
    format!("--source-ips 127.0.0.1-{}", loopback_addr(addrs))
}

pub fn kernel_estimate_note(kernel_bytes: u64) -> String {
    format!(
        "per idle loopback TCP socket about 5 KiB of kernel slab, measured by bench-connections.sh at a million connections: 5,061-5,114 B (TCP 2.5 KiB, socket inode 0.86 KiB, dentry, file, epoll item; docs/limits.md); {kernel_bytes} B used (--kernel-bytes-per-socket B to change). MemAvailable counts the inodes and dentries of open sockets as reclaimable: leave a few GiB spare"
    )
}

/// What `apply` sets `tcp_mem[2]` to and what `check` requires of it, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMemPlan {
    /// Every socket holding [`TCP_BUFFER_BYTES_PER_SOCKET`] at once.
    pub need_pages: u64,
    /// 1/[`TCP_MEM_RAM_DIV`] of RAM (`u64::MAX` if RAM is unknown).
    pub cap_pages: u64,
    /// `check`: LOW below min(need, cap).
    pub required_pages: u64,
    /// `apply`: min(need + 25%, cap).
    pub target_pages: u64,
}

/// The tcp_mem rule: size for what N connections' sockets queue when they all close at once
/// (2 KiB each, measured), plus 25%, never past an eighth of RAM.
pub fn tcp_mem_plan(sockets: u64, page_size: u64, mem_total: u64) -> TcpMemPlan {
    let page = page_size.max(1);
    let need_pages = sockets
        .saturating_mul(TCP_BUFFER_BYTES_PER_SOCKET)
        .div_ceil(page);
    let cap_pages = if mem_total == 0 {
        u64::MAX
    } else {
        mem_total / TCP_MEM_RAM_DIV / page
    };
    TcpMemPlan {
        need_pages,
        cap_pages,
        required_pages: need_pages.min(cap_pages),
        target_pages: (need_pages.saturating_mul(5) / 4).min(cap_pages),
    }
}

/// Scales (min, pressure, max) to a new max, keeping their proportions (rounded up).
pub fn scale_tcp_mem(cur: [u64; 3], new_max: u64) -> [u64; 3] {
    let [a, b, c] = cur;
    let c = c.max(1);
    let scale = |x: u64| {
        (u128::from(x) * u128::from(new_max))
            .div_ceil(u128::from(c))
            .min(u128::from(u64::MAX)) as u64
    };
    [scale(a), scale(b), new_max]
}

impl Eval<'_> {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        name: &str,
        current: impl Into<String>,
        needed: impl Into<String>,
        status: Status,
        blocking: bool,
        fix: impl Into<String>,
        kind: Kind,
        set: Option<String>,
    ) {
        self.rows.push(Row {
            name: name.to_string(),
            current: current.into(),
            needed: needed.into(),
            status,
            blocking,
            fix: fix.into(),
            kind,
            set,
        });
    }

    fn info(&mut self, name: &str, current: impl Into<String>, needed: impl Into<String>) {
        self.row(
            name,
            current,
            needed,
            Status::Info,
            false,
            "-",
            Kind::Sysctl,
            None,
        );
    }

    fn ok(&mut self, name: &str, current: impl Into<String>, needed: impl Into<String>) {
        self.row(
            name,
            current,
            needed,
            Status::Ok,
            false,
            "-",
            Kind::Sysctl,
            None,
        );
    }

    /// A sysctl row `apply` sets: LOW (blocking) or WARN.
    fn settable(
        &mut self,
        name: &str,
        current: impl Into<String>,
        needed: impl Into<String>,
        status: Status,
        value: String,
    ) {
        let fix = sysctl_cmd(name, &value);
        self.row(
            name,
            current,
            needed,
            status,
            status == Status::Low,
            fix,
            Kind::Sysctl,
            Some(value),
        );
    }

    fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    /// A sysctl that must be at least `min`.
    fn min_row(&mut self, name: &str, min: u64, severity: Status) {
        let Some(cur) = self.inp.number(name) else {
            self.info(name, "(absent)", format!(">= {min}"));
            return;
        };
        self.at_least(name, cur, min, severity);
    }

    /// The row of a sysctl whose value `cur` must be at least `min`: OK, or `severity` with
    /// the fix that sets `min`. Returns whether it was OK.
    fn at_least(&mut self, name: &str, cur: u64, min: u64, severity: Status) -> bool {
        if cur >= min {
            self.ok(name, cur.to_string(), format!(">= {min}"));
            return true;
        }
        self.settable(
            name,
            cur.to_string(),
            format!(">= {min}"),
            severity,
            min.to_string(),
        );
        false
    }

    /// The two RLIMIT_NOFILE rows; returns the processes each side needs.
    fn nofile(&mut self, need: u64) -> u64 {
        let n = self.plan.connections;
        let (soft, hard) = (self.inp.nofile_soft, self.inp.nofile_hard);
        let mut processes = 1;
        let (hard_status, hard_block, hard_fix);
        if hard >= need {
            (hard_status, hard_block, hard_fix) = (Status::Ok, false, "-".to_string());
        } else if self.inp.cap_sys_resource {
            (hard_status, hard_block) = (Status::Low, true);
            hard_fix = format!("ulimit -Hn {need} && ulimit -n {need}");
            self.note(format!("ulimit: run `ulimit -Hn {need} && ulimit -n {need}` in the shell that starts fanout (and fanout-load): a script cannot raise its parent's limit. fs.nr_open must be >= {need} first."));
        } else if let Some(p) = processes_needed(n, hard) {
            let usable = hard - RESERVED_FDS;
            processes = p;
            hard_status = Status::CannotRaise;
            hard_block = false;
            let per = n.div_ceil(p);
            let who = if self.plan.server_only {
                hard_fix = format!("run {p} x `fanout serve` on one port (SO_REUSEPORT)");
                format!("{p} server processes")
            } else {
                hard_fix = format!(
                    "run {p} x `fanout serve` on one port + `fanout-load --processes auto`"
                );
                format!("{p} server processes and {p} client processes")
            };
            self.note(format!("ulimit: CANNOT-RAISE: this process lacks CAP_SYS_RESOURCE (CapEff bit 24), so the hard limit {hard} cannot be raised here (`ulimit -Hn {need}` fails). {n} connections then need ceil({n} / ({hard} - {RESERVED_FDS})) = {who}, about {per} connections each. Not blocking: fanout binds with SO_REUSEPORT, so start `fanout serve --listen 127.0.0.1:9001` {p} times and they share the port."));
            if !self.plan.server_only {
                self.note(format!("ulimit: the client side splits itself: `fanout-load connect --url ws://127.0.0.1:9001/ -n {n} --processes auto` starts {p} processes."));
            }
            if per * 10 > usable * 9 {
                self.note(format!("ulimit: SO_REUSEPORT spreads connections by hash, only roughly evenly, and {per} of {usable} per process leaves little headroom: start {} servers.", p + 1));
            }
            self.note(format!("ulimit: to raise the limit itself, start fanout from a parent that has CAP_SYS_RESOURCE: a systemd unit with LimitNOFILE={need}, or a new login with /etc/security/limits.d (`apply --persist` writes both)."));
        } else {
            (hard_status, hard_block) = (Status::CannotRaise, true);
            hard_fix = format!(
                "raise the hard limit from a privileged parent (systemd LimitNOFILE={need})"
            );
            self.note(format!("ulimit: the hard limit {hard} leaves no room for sockets after {RESERVED_FDS} reserved fds, and this process lacks CAP_SYS_RESOURCE to raise it: blocking."));
        }

        let (soft_status, soft_fix) = if soft >= need {
            (Status::Ok, "-".to_string())
        } else if hard >= need {
            (
                Status::Warn,
                format!("ulimit -n {need}  (fanout raises soft to hard itself)"),
            )
        } else if soft < hard {
            (
                hard_status,
                format!("ulimit -n {hard}  (fanout raises soft to hard itself)"),
            )
        } else {
            (
                hard_status,
                "- (at the hard limit: see ulimit -Hn)".to_string(),
            )
        };
        // The soft row never blocks on its own: fanout and fanout-load raise soft to hard.
        let needed = format!(">= {need}");
        self.row(
            "ulimit -n (soft)",
            soft.to_string(),
            needed.clone(),
            soft_status,
            false,
            soft_fix,
            Kind::Ulimit,
            None,
        );
        self.row(
            "ulimit -Hn (hard)",
            hard.to_string(),
            needed,
            hard_status,
            hard_block,
            hard_fix,
            Kind::Ulimit,
            None,
        );
        processes
    }

    fn file_max(&mut self) {
        let name = "fs.file-max";
        let Some(cur) = self.inp.number(name) else {
            self.info(name, "(absent)", "-");
            return;
        };
        let in_use = self.inp.number("fs.file-nr").unwrap_or(0);
        let sockets = self.plan.sockets();
        // Both sides' sockets plus what is open now, plus 10%.
        let need = sockets.saturating_add(in_use).saturating_mul(11) / 10 + 1;
        self.note(format!(
            "fs.file-max: needed = ({sockets} sockets + {in_use} file handles open now) + 10%."
        ));
        self.at_least(name, cur, need, Status::Low);
    }

    fn port_range(&mut self) {
        let name = "net.ipv4.ip_local_port_range";
        let Some(&[lo, hi, ..]) = self.inp.numbers(name).as_deref() else {
            self.info(name, "(absent)", "-");
            return;
        };
        let ports = (hi + 1).saturating_sub(lo);
        let n = self.plan.connections;
        let cur = format!("{lo} {hi} ({ports} ports)");
        if self.plan.server_only {
            self.info(name, cur, "- (clients elsewhere)");
            self.note(format!("{name}: with --server-only it bounds outgoing connections from this box only; each client box needs ceil(its connections / its ports) source addresses per server port."));
            return;
        }
        let per_addr = ports.div_ceil(PORT_SHARE_DIV).max(1);
        let addrs = n.div_ceil(per_addr);
        let wide_lo = lo.min(WIDE_PORT_LO);
        let wide_ports = WIDE_PORT_HI - wide_lo + 1;
        let sources = source_ips(addrs);
        if per_addr >= n {
            self.ok(name, cur, format!(">= {n} ports/addr"));
        } else if ports >= n {
            self.row(
                name,
                cur,
                format!(">= {} ports/addr", n * PORT_SHARE_DIV),
                Status::Info,
                false,
                format!("fanout-load {sources}"),
                Kind::Sysctl,
                None,
            );
            self.note(format!("{name}: {n} connections from one source address take over a quarter of its {ports} ports: past half, every connect() walks all the even ports first (slow connects, 100% system CPU). Spread them: fanout-load {sources} ({addrs} addresses, a quarter of the range each)."));
        } else if n <= wide_ports {
            let value = format!("{wide_lo}\t{WIDE_PORT_HI}");
            let fix = format!("{}  or fanout-load {sources}", sysctl_cmd(name, &value));
            self.row(
                name,
                cur,
                format!(">= {n} ports/addr"),
                Status::Low,
                true,
                fix,
                Kind::Sysctl,
                Some(value),
            );
            self.note(format!("{name}: {n} connections to ONE server port from this box need {n} source ports, but the range gives {ports} per source address, of which a quarter should be used (past half, every connect() walks all the even ports first): needs {addrs} source addresses: fanout-load {sources}; or widen the range to '{wide_lo} {WIDE_PORT_HI}' ({wide_ports} ports, what apply does); or spread over several server ports."));
        } else {
            let wide_addrs = n.div_ceil(wide_ports / PORT_SHARE_DIV);
            self.row(
                name,
                cur,
                format!("{addrs} source addrs"),
                Status::CannotRaise,
                false,
                format!("fanout-load {sources}"),
                Kind::Sysctl,
                None,
            );
            self.note(format!("{name}: no port range holds {n} connections to ONE server port from one source address, and each address should use a quarter of its range (past half, every connect() walks all the even ports first): needs {addrs} source addresses now (fanout-load {sources}), or {wide_addrs} after widening the range to '{wide_lo} {WIDE_PORT_HI}' ({}). Not blocking: every 127.0.0.0/8 address works on loopback.", source_ips(wide_addrs)));
        }
    }

    fn tw_reuse(&mut self) {
        let name = "net.ipv4.tcp_tw_reuse";
        let Some(cur) = self.inp.number(name) else {
            self.info(name, "(absent)", "-");
            return;
        };
        if self.plan.server_only {
            self.info(name, cur.to_string(), "- (outgoing only)");
        } else if cur == 1 || cur == 2 {
            // 2 = loopback only, which is where the client runs in this mode.
            self.ok(name, cur.to_string(), "1 or 2");
        } else {
            self.settable(
                name,
                cur.to_string(),
                "1 or 2",
                Status::Warn,
                "1".to_string(),
            );
            self.note(format!("{name}: 0 keeps each closed client port in TIME_WAIT for 60 s, so a second run within a minute can run out of ports."));
        }
    }

    fn fin_timeout(&mut self) {
        let name = "net.ipv4.tcp_fin_timeout";
        let Some(cur) = self.inp.number(name) else {
            self.info(name, "(absent)", "-");
            return;
        };
        let needed = format!("<= {FIN_TIMEOUT_MAX}");
        if cur <= FIN_TIMEOUT_MAX {
            self.ok(name, cur.to_string(), needed);
        } else {
            self.settable(
                name,
                cur.to_string(),
                needed,
                Status::Warn,
                FIN_TIMEOUT_MAX.to_string(),
            );
        }
    }

    fn tcp_mem(&mut self) {
        let name = "net.ipv4.tcp_mem";
        let Some(&[a, b, c, ..]) = self.inp.numbers(name).as_deref() else {
            self.info(name, "(absent)", "-");
            return;
        };
        let page = self.inp.page_size.max(1);
        let sockets = self.plan.sockets();
        let p = tcp_mem_plan(sockets, page, self.inp.mem_total);
        let cur = format!(
            "{a} {b} {c} pages (max {})",
            human_bytes(c.saturating_mul(page))
        );
        let capped = p.need_pages > p.cap_pages;
        let needed = format!(
            ">= {} pages max ({}{})",
            p.required_pages,
            human_bytes(p.required_pages.saturating_mul(page)),
            if capped {
                format!(", 1/{TCP_MEM_RAM_DIV} of RAM")
            } else {
                String::new()
            }
        );
        if c >= p.required_pages {
            self.ok(name, cur, needed);
        } else {
            let [na, nb, nc] = scale_tcp_mem([a, b, c], p.target_pages);
            self.settable(name, cur, needed, Status::Warn, format!("{na}\t{nb}\t{nc}"));
        }
        let cap = if p.cap_pages == u64::MAX {
            "RAM unknown".to_string()
        } else {
            format!(
                "{} pages = {}",
                p.cap_pages,
                human_bytes(p.cap_pages.saturating_mul(page))
            )
        };
        self.note(format!("{name}: counts socket buffer pages only; an idle socket holds almost none, but closing every connection at once queues about {TCP_BUFFER_BYTES_PER_SOCKET} B per socket (measured at 1M and 2M connections: docs/operations.md). Needed: {sockets} sockets x {TCP_BUFFER_BYTES_PER_SOCKET} B = {} pages; apply sets the max to that + 25%, never past 1/{TCP_MEM_RAM_DIV} of RAM ({cap}), keeping the min/pressure proportions. Past tcp_mem[2] the kernel refuses buffer memory (drops input, resets orphaned sockets) rather than letting the box run out of memory. WARN, not blocking: held idle connections do not need it.", p.need_pages));
    }

    fn buffers(&mut self) {
        let mut total = 0u64;
        for name in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
            let Some(raw) = self.inp.raw(name) else {
                self.info(name, "(absent)", "-");
                continue;
            };
            let cur = words(raw);
            total += self
                .inp
                .numbers(name)
                .and_then(|v| v.get(1).copied())
                .unwrap_or(0);
            self.info(name, cur, "- (busy sockets)");
        }
        if let Some(&[_, _, max, ..]) = self.inp.numbers("net.ipv4.tcp_mem").as_deref() {
            let sockets = self.plan.sockets();
            let page = self.inp.page_size.max(1);
            self.note(format!("tcp_rmem/tcp_wmem: an idle socket holds no buffer; a busy one may hold up to the defaults ({} read+write, autotuned up to the maxima). If all {sockets} sockets were busy at the defaults: {}; the kernel caps all TCP buffers at tcp_mem[2] = {}.", human_bytes(total), human_bytes(sockets.saturating_mul(total)), human_bytes(max.saturating_mul(page))));
        }
    }

    fn conntrack(&mut self) {
        let name = "net.netfilter.nf_conntrack_max";
        // Absent: nf_conntrack is not loaded, nothing tracks connections.
        let Some(cur) = self.inp.number(name) else {
            return;
        };
        let count = self
            .inp
            .number("net.netfilter.nf_conntrack_count")
            .unwrap_or(0);
        // One entry per connection (both directions), plus what is tracked now, plus 10%.
        let need = self
            .plan
            .connections
            .saturating_add(count)
            .saturating_mul(11)
            / 10
            + 1;
        if !self.at_least(name, cur, need, Status::Low) {
            self.note(format!("{name}: a full conntrack table drops new connections (\"nf_conntrack: table full\" in dmesg)."));
        }
    }

    fn memory(&mut self) {
        let avail = self.inp.mem_available;
        let total = self
            .plan
            .kernel_bytes()
            .saturating_add(self.plan.user_bytes());
        let (status, fix) = if total <= avail {
            (Status::Ok, "-")
        } else {
            (
                Status::Low,
                "free memory, or spread the connections over machines",
            )
        };
        self.row(
            "MemAvailable",
            human_bytes(avail),
            format!(">= {}", human_bytes(total)),
            status,
            status == Status::Low,
            fix,
            Kind::Memory,
            None,
        );
    }
}
