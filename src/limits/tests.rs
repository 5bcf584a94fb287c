//! The rules' arithmetic on a box written by hand, and apply / revert against a `/proc` that is
//! a temporary directory (its sysctls plain files).

use std::path::{Path, PathBuf};

use super::rules::*;
use super::*;

/// A temporary `/proc` (and /etc root beside it), removed on drop.
struct FakeBox {
    dir: PathBuf,
}

impl FakeBox {
    /// This project's VM: 2 cores, 24 GiB, hard RLIMIT_NOFILE 20,000, stock sysctls.
    fn vm() -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fanout-limits-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proc/self")).unwrap();
        let b = Self { dir };
        for (k, v) in [
            ("fs.file-max", "9223372036854775807"),
            ("fs.file-nr", "1234\t0\t9223372036854775807"),
            ("fs.nr_open", "1048576"),
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "4096"),
            ("net.core.netdev_max_backlog", "1000"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_mem", "287901\t383868\t575802"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t33554432"),
            ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
        ] {
            b.set(k, v);
        }
        std::fs::write(
            b.dir.join("proc/meminfo"),
            "MemTotal:       25165824 kB\nMemFree:  1 kB\nMemAvailable:   20971520 kB\n",
        )
        .unwrap();
        std::fs::write(
            b.dir.join("proc/self/status"),
            "Name:\tx\nCapEff:\t000001fffeffffff\n",
        )
        .unwrap();
        b
    }

    fn host(&self) -> Host {
        Host::at(self.dir.join("proc"))
    }

    fn set(&self, name: &str, value: &str) {
        let p = self.host().sysctl_path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{value}\n")).unwrap();
    }

    fn get(&self, name: &str) -> String {
        self.host().sysctl(name).unwrap()
    }

    /// The inputs with the VM's RLIMIT_NOFILE (20,000, no CAP_SYS_RESOURCE).
    fn inputs(&self) -> host::Inputs {
        let mut i = self.host().read();
        i.nofile_soft = 20_000;
        i.nofile_hard = 20_000;
        i.cap_sys_resource = false;
        i.page_size = 4096;
        i
    }

    fn env(&self) -> Env {
        Env {
            host: self.host(),
            etc_root: self.dir.join("root").display().to_string(),
            invoked: "scripts/tune-limits.sh".into(),
            prog: "tune-limits.sh".into(),
            need_root: false,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

impl Drop for FakeBox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn plan(n: u64) -> Plan {
    Plan {
        connections: n,
        ..Plan::default()
    }
}

fn eval(b: &FakeBox, n: u64) -> Report {
    evaluate(plan(n), &b.inputs())
}

fn row<'a>(r: &'a Report, name: &str) -> &'a Row {
    r.row(name).unwrap_or_else(|| panic!("no row {name}"))
}

#[test]
fn reads_sysctls_meminfo_and_caps_from_the_root() {
    let b = FakeBox::vm();
    let i = b.host().read();
    assert_eq!(i.raw("net.ipv4.ip_local_port_range"), Some("32768\t60999"));
    assert_eq!(
        i.numbers("net.ipv4.tcp_mem"),
        Some(vec![287_901, 383_868, 575_802])
    );
    assert_eq!(i.number("fs.file-nr"), Some(1234));
    assert_eq!(i.raw("net.netfilter.nf_conntrack_max"), None);
    assert_eq!(i.mem_total, 24 << 30);
    assert_eq!(i.mem_available, 20 << 30);
    // This VM's root: every capability but CAP_SYS_RESOURCE (bit 24).
    assert!(!i.cap_sys_resource, "bit 24 of 1fffeffffff is 0");
    std::fs::write(b.path("proc/self/status"), "CapEff:\t000001ffffffffff\n").unwrap();
    assert!(b.host().read().cap_sys_resource);
}

#[test]
fn rows_in_order_and_exit_status() {
    let b = FakeBox::vm();
    let r = eval(&b, 50_000);
    let names: Vec<&str> = r.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ulimit -n (soft)",
            "ulimit -Hn (hard)",
            "fs.file-max",
            "fs.nr_open",
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.core.netdev_max_backlog",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_mem",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "MemAvailable"
        ]
    );
    // The port range blocks 50,000 from one address; everything else does not.
    let blocking: Vec<&str> = r.blocking().map(|r| r.name.as_str()).collect();
    assert_eq!(blocking, ["net.ipv4.ip_local_port_range"]);
    assert_eq!(r.exit_code(), 1);
    assert_eq!(row(&r, "net.core.somaxconn").status, Status::Ok);
    let netdev = row(&r, "net.core.netdev_max_backlog");
    assert_eq!((netdev.status, netdev.blocking), (Status::Warn, false));
    assert_eq!(netdev.set.as_deref(), Some("16384"));
    let fin = row(&r, "net.ipv4.tcp_fin_timeout");
    assert_eq!((fin.status, fin.set.as_deref()), (Status::Warn, Some("30")));
    assert_eq!(fin.needed, "<= 30");
    assert_eq!(row(&r, "net.ipv4.tcp_tw_reuse").status, Status::Ok);
    let rmem = row(&r, "net.ipv4.tcp_rmem");
    assert_eq!(
        (rmem.current.as_str(), rmem.status),
        ("4096 131072 33554432", Status::Info)
    );
}

#[test]
fn somaxconn_and_syn_backlog_low() {
    let b = FakeBox::vm();
    b.set("net.core.somaxconn", "128");
    b.set("net.ipv4.tcp_max_syn_backlog", "128");
    let r = eval(&b, 1000);
    for name in ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"] {
        let x = row(&r, name);
        assert_eq!((x.status, x.blocking), (Status::Low, true), "{name}");
        assert_eq!(x.needed, ">= 4096");
        assert_eq!(x.fix, format!("sysctl -w {name}=4096"));
        assert_eq!(x.set.as_deref(), Some("4096"));
    }
    assert_eq!(r.exit_code(), 1);
    b.set("net.core.somaxconn", "4096");
    b.set("net.ipv4.tcp_max_syn_backlog", "8192");
    assert_eq!(eval(&b, 1000).exit_code(), 0);
}

#[test]
fn absent_sysctls_are_info() {
    let b = FakeBox::vm();
    std::fs::remove_file(b.host().sysctl_path("net.core.somaxconn")).unwrap();
    std::fs::remove_file(b.host().sysctl_path("net.ipv4.tcp_mem")).unwrap();
    let r = eval(&b, 1000);
    let s = row(&r, "net.core.somaxconn");
    assert_eq!(
        (s.current.as_str(), s.needed.as_str(), s.status),
        ("(absent)", ">= 4096", Status::Info)
    );
    assert_eq!(row(&r, "net.ipv4.tcp_mem").status, Status::Info);
}

#[test]
fn port_range_plans_a_quarter_of_the_range_per_source_address() {
    let b = FakeBox::vm();
    // 28,232 ports: a quarter is 7,058 per address.
    let ok = eval(&b, 7058);
    assert_eq!(row(&ok, "net.ipv4.ip_local_port_range").status, Status::Ok);
    assert_eq!(
        row(&ok, "net.ipv4.ip_local_port_range").current,
        "32768 60999 (28232 ports)"
    );

    let r = eval(&b, 10_000);
    let x = row(&r, "net.ipv4.ip_local_port_range");
    assert_eq!((x.status, x.blocking), (Status::Info, false));
    assert_eq!(x.needed, ">= 40000 ports/addr");
    assert_eq!(x.fix, "fanout-load --source-ips 127.0.0.1-127.0.0.2");

    let r = eval(&b, 50_000);
    let x = row(&r, "net.ipv4.ip_local_port_range");
    assert_eq!((x.status, x.blocking), (Status::Low, true));
    assert_eq!(x.set.as_deref(), Some("1024\t65535"));
    assert_eq!(
        x.fix,
        "sysctl -w net.ipv4.ip_local_port_range='1024 65535'  or fanout-load --source-ips 127.0.0.1-127.0.0.8"
    );
    assert!(r
        .notes
        .iter()
        .any(|n| n
            .contains("needs 8 source addresses: fanout-load --source-ips 127.0.0.1-127.0.0.8")));

    // A million: no range holds it; 142 addresses, not blocking.
    let r = eval(&b, 1_000_000);
    let x = row(&r, "net.ipv4.ip_local_port_range");
    assert_eq!((x.status, x.blocking), (Status::CannotRaise, false));
    assert_eq!(x.needed, "142 source addrs");
    assert!(r.notes.iter().any(|n| n.contains(
        "or 63 after widening the range to '1024 65535' (--source-ips 127.0.0.1-127.0.0.63)"
    )));

    // --server-only: the clients are elsewhere.
    let r = evaluate(
        Plan {
            server_only: true,
            ..plan(1_000_000)
        },
        &b.inputs(),
    );
    assert_eq!(row(&r, "net.ipv4.ip_local_port_range").status, Status::Info);
    assert_eq!(row(&r, "net.ipv4.tcp_tw_reuse").needed, "- (outgoing only)");
}

#[test]
fn loopback_addresses() {
    assert_eq!(loopback_addr(1), "127.0.0.1");
    assert_eq!(loopback_addr(142), "127.0.0.142");
    assert_eq!(loopback_addr(256), "127.0.1.0");
    assert_eq!(loopback_addr(70_000), "127.1.17.112");
}

#[test]
fn nofile_without_cap_sys_resource_splits_into_processes() {
    let b = FakeBox::vm();
    let r = eval(&b, 50_000);
    assert_eq!(r.nofile_needed, 50_064);
    assert_eq!(r.processes, 3);
    let hard = row(&r, "ulimit -Hn (hard)");
    assert_eq!((hard.status, hard.blocking), (Status::CannotRaise, false));
    assert_eq!(
        hard.fix,
        "run 3 x `fanout serve` on one port + `fanout-load --processes auto`"
    );
    let soft = row(&r, "ulimit -n (soft)");
    assert_eq!((soft.status, soft.blocking), (Status::CannotRaise, false));
    assert_eq!(soft.fix, "- (at the hard limit: see ulimit -Hn)");
    assert!(r
        .notes
        .iter()
        .any(|n| n
            .contains("ceil(50000 / (20000 - 64)) = 3 server processes and 3 client processes")));

    let r = eval(&b, 1_000_000);
    assert_eq!(r.processes, 51);

    // With CAP_SYS_RESOURCE the hard limit can be raised: LOW, blocking.
    let mut i = b.inputs();
    i.cap_sys_resource = true;
    let r = evaluate(plan(50_000), &i);
    let hard = row(&r, "ulimit -Hn (hard)");
    assert_eq!((hard.status, hard.blocking), (Status::Low, true));
    assert_eq!(hard.fix, "ulimit -Hn 50064 && ulimit -n 50064");

    // A hard limit with no room for a socket blocks.
    let mut i = b.inputs();
    (i.nofile_soft, i.nofile_hard) = (64, 64);
    let r = evaluate(plan(10), &i);
    let hard = row(&r, "ulimit -Hn (hard)");
    assert_eq!((hard.status, hard.blocking), (Status::CannotRaise, true));

    // Soft below what is needed, hard enough: WARN (fanout raises soft to hard itself).
    let mut i = b.inputs();
    (i.nofile_soft, i.nofile_hard) = (1024, 1_048_576);
    let r = evaluate(plan(50_000), &i);
    assert_eq!(row(&r, "ulimit -n (soft)").status, Status::Warn);
    assert_eq!(row(&r, "ulimit -Hn (hard)").status, Status::Ok);
}

#[test]
fn file_max_counts_both_sides_and_what_is_open() {
    let b = FakeBox::vm();
    b.set("fs.file-max", "1000000");
    let r = eval(&b, 1_000_000);
    let x = row(&r, "fs.file-max");
    // (2,000,000 sockets + 1,234 open) * 1.1 + 1
    assert_eq!(x.needed, ">= 2201358");
    assert_eq!((x.status, x.set.as_deref()), (Status::Low, Some("2201358")));
    let r = evaluate(
        Plan {
            server_only: true,
            ..plan(1_000_000)
        },
        &b.inputs(),
    );
    assert_eq!(row(&r, "fs.file-max").needed, ">= 1101358");
    // nr_open: one process holding them all.
    assert_eq!(row(&eval(&b, 1_048_512), "fs.nr_open").status, Status::Ok);
    let x = eval(&b, 2_000_000);
    let nr = row(&x, "fs.nr_open");
    assert_eq!(
        (nr.status, nr.set.as_deref()),
        (Status::Low, Some("2000064"))
    );
}

#[test]
fn conntrack_only_when_loaded() {
    let b = FakeBox::vm();
    assert!(eval(&b, 1000)
        .row("net.netfilter.nf_conntrack_max")
        .is_none());
    b.set("net.netfilter.nf_conntrack_max", "262144");
    b.set("net.netfilter.nf_conntrack_count", "10");
    assert_eq!(
        row(&eval(&b, 1000), "net.netfilter.nf_conntrack_max").status,
        Status::Ok
    );
    let r = eval(&b, 1_000_000);
    let x = row(&r, "net.netfilter.nf_conntrack_max");
    assert_eq!((x.status, x.set.as_deref()), (Status::Low, Some("1100012")));
}

#[test]
fn tcp_mem_sized_from_the_connections_and_capped_by_ram() {
    let b = FakeBox::vm();
    // 50,000 connections: 100,000 sockets x 2 KiB = 50,000 pages, under the stock 575,802.
    let r = eval(&b, 50_000);
    let x = row(&r, "net.ipv4.tcp_mem");
    assert_eq!(x.status, Status::Ok);
    assert_eq!(x.current, "287901 383868 575802 pages (max 2.2 GiB)");
    assert_eq!(x.needed, ">= 50000 pages max (195.3 MiB)");

    // 400,000: 400,000 pages, still under.
    assert_eq!(
        row(&eval(&b, 400_000), "net.ipv4.tcp_mem").status,
        Status::Ok
    );

    // 800,000: 800,000 pages needed, 24 GiB / 8 = 786,432 pages cap.
    let p = tcp_mem_plan(1_600_000, 4096, 24 << 30);
    assert_eq!(p.need_pages, 800_000);
    assert_eq!(p.cap_pages, 786_432);
    assert_eq!((p.required_pages, p.target_pages), (786_432, 786_432));

    // 600,000: 1.2M sockets, 600,000 pages needed, +25% = 750,000, under the cap.
    let r = eval(&b, 600_000);
    let x = row(&r, "net.ipv4.tcp_mem");
    assert_eq!((x.status, x.blocking), (Status::Warn, false));
    assert_eq!(x.set.as_deref(), Some("375000\t500000\t750000"));
    assert_eq!(x.fix, "sysctl -w net.ipv4.tcp_mem='375000 500000 750000'");

    // Two million (the 7.3 GB teardown): capped at an eighth of RAM, 3 GiB, not 25 GB.
    let r = eval(&b, 2_000_000);
    let x = row(&r, "net.ipv4.tcp_mem");
    assert_eq!(x.needed, ">= 786432 pages max (3.0 GiB, 1/8 of RAM)");
    assert_eq!(x.set.as_deref(), Some("393216\t524288\t786432"));

    // Already at or past the cap: OK, never lowered.
    b.set("net.ipv4.tcp_mem", "500000\t600000\t900000");
    assert_eq!(
        row(&eval(&b, 2_000_000), "net.ipv4.tcp_mem").status,
        Status::Ok
    );
}

#[test]
fn tcp_mem_scaling_keeps_proportions() {
    assert_eq!(
        scale_tcp_mem([287_901, 383_868, 575_802], 575_802),
        [287_901, 383_868, 575_802]
    );
    assert_eq!(scale_tcp_mem([1, 2, 4], 8), [2, 4, 8]);
    assert_eq!(scale_tcp_mem([1, 1, 3], 4), [2, 2, 4]); // rounded up
    assert_eq!(scale_tcp_mem([0, 0, 0], 10), [0, 0, 10]);
}

#[test]
fn memory_row() {
    let b = FakeBox::vm();
    let r = eval(&b, 50_000);
    let m = row(&r, "MemAvailable");
    // 100,000 x 5,120 + 50,000 x 256 = 524,800,000 B
    assert_eq!(
        (m.current.as_str(), m.needed.as_str(), m.status),
        ("20.0 GiB", ">= 500.5 MiB", Status::Ok)
    );
    let r = eval(&b, 3_000_000);
    let m = row(&r, "MemAvailable");
    assert_eq!((m.status, m.blocking), (Status::Low, true));
}

#[test]
fn human_bytes_and_sysctl_commands() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    assert_eq!(human_bytes(7_300_000_000), "6.8 GiB");
    assert_eq!(sysctl_cmd("fs.file-max", "10"), "sysctl -w fs.file-max=10");
    assert_eq!(sysctl_cmd("a.b", "1\t2  3"), "sysctl -w a.b='1 2 3'");
}

#[test]
fn report_text_and_json() {
    let b = FakeBox::vm();
    let r = eval(&b, 50_000);
    let text = render_report(&r, "scripts/tune-limits.sh");
    assert!(text.starts_with("fanout limits for 50000 connections (server and client on this box over loopback: 2 sockets per connection)\n\nLIMIT "));
    assert!(
        text.contains("\nnet.core.somaxconn            4096  "),
        "{text}"
    );
    assert!(text.contains("  kernel:  100000 sockets x 5120 B = 488.3 MiB  (per idle loopback"));
    assert!(text.contains("  fanout user space: 50000 x 256 B = 12.2 MiB  (the design target"));
    assert!(text.contains("Result: LOW (blocking): net.ipv4.ip_local_port_range. `scripts/tune-limits.sh apply --connections 50000` raises the sysctls.\n"));
    assert!(text.contains("CANNOT-RAISE, not blocking: ulimit -n (soft), ulimit -Hn (hard): split"));

    let j: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(j["connections"], 50_000);
    assert_eq!(j["server_only"], false);
    assert_eq!(j["sockets_per_connection"], 2);
    assert_eq!(j["nofile"]["reserved_fds"], RESERVED_FDS);
    assert_eq!(j["nofile"]["needed"], 50_064);
    assert_eq!(j["processes_needed"], 3);
    assert_eq!(j["memory"]["kernel_bytes"], 512_000_000);
    assert_eq!(j["memory"]["mem_available_bytes"], 20u64 << 30);
    assert_eq!(j["exit_code"], 1);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), r.rows.len());
    let port = rows
        .iter()
        .find(|x| x["name"] == "net.ipv4.ip_local_port_range")
        .unwrap();
    assert_eq!(port["status"], "LOW");
    assert_eq!(port["blocking"], true);
    assert_eq!(port["set"], "1024 65535");
    let hard = rows
        .iter()
        .find(|x| x["name"] == "ulimit -Hn (hard)")
        .unwrap();
    assert_eq!(hard["status"], "CANNOT-RAISE");
    assert_eq!(hard["set"], serde_json::Value::Null);
    for x in rows {
        let keys: Vec<&str> = x.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7);
        for k in [
            "name", "current", "needed", "status", "blocking", "fix", "set",
        ] {
            assert!(keys.contains(&k));
        }
    }
    assert!(j["notes"].as_array().unwrap().len() >= 4);
}

fn run_apply(b: &FakeBox, a: &ApplyArgs) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = apply(&b.env(), a, &mut out, &mut err).unwrap();
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn run_revert(b: &FakeBox, state: &Path, dry_run: bool) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let a = RevertArgs {
        state: Some(state.to_path_buf()),
        dry_run,
    };
    let code = revert(&b.env(), &a, &mut out, &mut err).unwrap();
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn apply_args(n: u64, state: &Path) -> ApplyArgs {
    ApplyArgs {
        plan: PlanArgs {
            connections: n,
            server_only: false,
            bytes_per_conn: USER_BYTES_DEFAULT,
            kernel_bytes_per_socket: KERNEL_BYTES_DEFAULT,
        },
        dry_run: false,
        persist: false,
        state: Some(state.to_path_buf()),
        force: false,
    }
}

fn snapshot(b: &FakeBox) -> Vec<(String, String)> {
    host::SYSCTLS
        .iter()
        .filter_map(|n| Some((n.to_string(), b.host().sysctl(n)?)))
        .collect()
}

#[test]
fn apply_saves_then_revert_restores_exactly() {
    let b = FakeBox::vm();
    b.set("net.core.somaxconn", "128");
    let before = snapshot(&b);
    let state = b.path("s/x.state");

    let dry = ApplyArgs {
        dry_run: true,
        ..apply_args(600_000, &state)
    };
    let (code, out, _) = run_apply(&b, &dry);
    assert_eq!(code, 0);
    assert!(
        out.contains("would run: sysctl -w net.core.somaxconn=4096   # was 128"),
        "{out}"
    );
    assert_eq!(snapshot(&b), before);
    assert!(!state.exists());

    let (code, out, err) = run_apply(&b, &apply_args(600_000, &state));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(b.get("net.core.somaxconn"), "4096");
    assert_eq!(b.get("net.ipv4.tcp_mem"), "375000 500000 750000");
    assert_eq!(b.get("net.core.netdev_max_backlog"), "16384");
    assert_eq!(b.get("net.ipv4.tcp_fin_timeout"), "30");
    // 600,000 from one address: no range holds them, the fix is source addresses.
    assert_eq!(b.get("net.ipv4.ip_local_port_range"), "32768\t60999");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.starts_with(state::HEADER));
    assert!(text.contains("\nsysctl\tnet.core.somaxconn\t128\n"));
    assert!(text.contains("\nsysctl\tnet.core.netdev_max_backlog\t1000\n"));
    assert!(text.contains("\nsysctl\tnet.ipv4.tcp_mem\t287901\t383868\t575802\n"));
    // After apply no sysctl row is LOW or WARN.
    let r = eval(&b, 600_000);
    let left: Vec<&str> = r
        .rows
        .iter()
        .filter(|r| r.kind == Kind::Sysctl && matches!(r.status, Status::Low | Status::Warn))
        .map(|r| r.name.as_str())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A second apply refuses; --force keeps the original values.
    b.set("net.core.somaxconn", "256");
    let (code, _, err) = run_apply(&b, &apply_args(600_000, &state));
    assert_eq!(code, 2);
    assert!(err.contains("an earlier apply has not been reverted"));
    assert_eq!(std::fs::read_to_string(&state).unwrap(), text);
    let (code, _, _) = run_apply(
        &b,
        &ApplyArgs {
            force: true,
            ..apply_args(600_000, &state)
        },
    );
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&state).unwrap();
    assert_eq!(text.matches("sysctl\tnet.core.somaxconn\t").count(), 1);

    let (code, out, _) = run_revert(&b, &state, true);
    assert_eq!(code, 0);
    assert!(
        out.contains("would run: sysctl -w net.core.somaxconn=128   # now 4096"),
        "{out}"
    );
    assert!(state.exists());

    let (code, out, err) = run_revert(&b, &state, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored net.core.somaxconn: 4096 -> 128"));
    // The fake /proc keeps what was written: the words, space separated.
    let words_of = |s: &[(String, String)]| -> Vec<(String, String)> {
        s.iter().map(|(k, v)| (k.clone(), words(v))).collect()
    };
    assert_eq!(words_of(&snapshot(&b)), words_of(&before));
    assert!(!state.exists());
    let (code, out, _) = run_revert(&b, &state, false);
    assert_eq!((code, out.starts_with("nothing to revert")), (0, true));
}

#[test]
fn persist_writes_files_and_revert_puts_the_tree_back() {
    let b = FakeBox::vm();
    let root = b.path("root");
    std::fs::create_dir_all(root.join("etc/security/limits.d")).unwrap();
    std::fs::write(
        root.join("etc/security/limits.d/90-fanout.conf"),
        "old limits\n",
    )
    .unwrap();
    let state = b.path("p.state");
    let a = ApplyArgs {
        persist: true,
        ..apply_args(50_000, &state)
    };
    let (code, out, err) = run_apply(&b, &a);
    assert_eq!(code, 0, "{out}{err}");
    let sysctl_d = std::fs::read_to_string(root.join("etc/sysctl.d/90-fanout.conf")).unwrap();
    assert!(
        sysctl_d.contains("\nnet.ipv4.ip_local_port_range = 1024 65535\n"),
        "{sysctl_d}"
    );
    let limits_d =
        std::fs::read_to_string(root.join("etc/security/limits.d/90-fanout.conf")).unwrap();
    assert!(
        limits_d.contains("\nroot    hard    nofile  50064\n"),
        "{limits_d}"
    );
    let dropin = root.join("etc/systemd/system/fanout.service.d/limits.conf");
    assert!(std::fs::read_to_string(&dropin)
        .unwrap()
        .ends_with("[Service]\nLimitNOFILE=50064\n"));
    let text = std::fs::read_to_string(&state).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("file\t")).count(), 3);
    assert!(text.contains(&format!(
        "file\t{}/etc/security/limits.d/90-fanout.conf\t{}.bak.0\n",
        root.display(),
        state.display()
    )));
    assert!(text.contains(&format!("dir\t{}/etc/systemd\t\n", root.display())));

    let (code, out, err) = run_revert(&b, &state, false);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/security/limits.d/90-fanout.conf")).unwrap(),
        "old limits\n"
    );
    assert!(!root.join("etc/sysctl.d").exists());
    assert!(!root.join("etc/systemd").exists());
    assert!(!Path::new(&format!("{}.bak.0", state.display())).exists());
}

#[test]
fn revert_reads_a_state_file_the_bash_script_wrote() {
    let b = FakeBox::vm();
    b.set("net.core.somaxconn", "4096");
    b.set("net.ipv4.ip_local_port_range", "1024\t65535");
    let state = b.path("old.state");
    std::fs::write(
        &state,
        "# fanout tune-limits state v1: KIND<TAB>NAME<TAB>PREVIOUS VALUE\n\
         # apply --connections 50000 at 2026-11-27T10:00:00Z\n\
         sysctl\tnet.core.somaxconn\t128\n\
         sysctl\tnet.ipv4.ip_local_port_range\t32768\t60999\n\
         sysctl\tnet.ipv4.tcp_fin_timeout\t60\n\
         sysctl\t../../etc.passwd\tx\n",
    )
    .unwrap();
    let (code, out, err) = run_revert(&b, &state, false);
    // The bad name is skipped and reported; the state file is kept.
    assert_eq!(code, 1);
    assert!(err.contains("skipping unknown sysctl"), "{err}");
    assert!(out.contains("net.ipv4.tcp_fin_timeout already 60"), "{out}");
    assert_eq!(b.get("net.core.somaxconn"), "128");
    assert_eq!(b.get("net.ipv4.ip_local_port_range"), "32768 60999");
    assert!(state.exists());
}
