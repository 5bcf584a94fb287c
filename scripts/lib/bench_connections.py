"""The whole-box connection benchmark behind scripts/bench-connections.sh (which applies and
reverts the OS limits around it): N WebSocket connections from fanout-load to fanout, both on
this box, ramped, held, then a low-rate echo across every one of them; or, with --find-limit,
a ramp in steps until connections fail or a guard trips, and the name of what stopped it,
read from /proc.

It works out the processes (RLIMIT_NOFILE per process), the source addresses (ephemeral ports)
and the in-flight window N needs, starts the servers on one port (SO_REUSEPORT) and one
`fanout-load` (which splits itself into processes), prints progress every second, guards the
box (MemAvailable floor, ramp stall, a time cap; each stops the run by itself), and writes
OUT/<stamp>-<N>.json and .md (find-limit: <stamp>-limit.json and .md) with the kernel's cost
per connection (slab and TCP memory deltas from /proc) beside the servers' user-space bytes.

usage: python3 scripts/lib/bench_connections.py --connections N [--find-limit] [options]
       (see --help; run through scripts/bench-connections.sh, which owns the OS limits)
"""
import argparse
import datetime
import json
import math
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")
# fds a process keeps besides sockets: RESERVED_FDS of src/rt/limits.rs, read from
# `fanout limits check --json` (--limits-json) when given; this is the fallback.
RESERVED_FDS = 64
# A connect() searches the ephemeral range of its source address for a free port, even ports
# first (Linux __inet_hash_connect): once half the range of an address is taken, every connect
# walks all of its even ports first. Keep each address to a quarter of the range.
PORT_SHARE = 0.25
SERVER_FILL = 0.95  # SO_REUSEPORT spreads by hash: leave each server some headroom
GIB = 1 << 30


# --------------------------------------------------------------------------------------
# /proc readers

def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def sockstat():
    """/proc/net/sockstat as {"TCP": {"inuse": .., "mem": pages, ..}, "sockets": {..}}."""
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            name, rest = line.split(":", 1)
            w = rest.split()
            out[name] = {w[i]: int(w[i + 1]) for i in range(0, len(w) - 1, 2)}
    return out


def netstat():
    """TcpExt counters of /proc/net/netstat (ListenOverflows, TCPAbortOnMemory, ..)."""
    out = {}
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            out = dict(zip(head.split()[1:], map(int, vals.split()[1:])))
    return out


# The slab caches every connected, epoll-watched TCP socket takes objects from (one each per
# socket: TCP, sock_inode_cache, filp, dentry, eventpoll_epi/pwq).
SOCKET_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq")


def slabinfo():
    """Bytes held by each slab cache (slabs x pages per slab), from /proc/slabinfo (root)."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith(("slabinfo", "#")):
                    continue
                w = line.split()
                # name active_objs num_objs objsize objperslab pagesperslab : tunables .. : slabdata active num ..
                out[w[0]] = int(w[14]) * int(w[5]) * PAGE
    except (OSError, IndexError, ValueError):
        pass
    return out


def sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().split()
    except OSError:
        return None


def cpu_times():
    """Whole-box jiffies: user, nice, system, idle, iowait, irq, softirq."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:8]]


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def sample(servers, gen_pid):
    """One reading of everything the report and the diagnosis use."""
    m = meminfo()
    s = sockstat()
    n = netstat()
    fnr = sysctl("fs.file-nr") or ["0", "0", "0"]
    ct = sysctl("net.netfilter.nf_conntrack_count")
    gens = children(gen_pid) if gen_pid else []
    return {
        "t": time.time(),
        "mem_available": m.get("MemAvailable", 0),
        # What the guard watches: MemAvailable counts reclaimable slab as free, but the
        # socket inodes and dentries of open sockets are "reclaimable" slab that no reclaim
        # can free (a run that trusted MemAvailable met the OOM killer with 4.9 GiB "available").
        "mem_guard": m.get("MemAvailable", 0) - m.get("SReclaimable", 0),
        "sreclaimable": m.get("SReclaimable", 0),
        "mem_free": m.get("MemFree", 0),
        "slab": m.get("Slab", 0),
        "sunreclaim": m.get("SUnreclaim", 0),
        "page_tables": m.get("PageTables", 0),
        "tcp_inuse": s.get("TCP", {}).get("inuse", 0),
        "tcp_alloc": s.get("TCP", {}).get("alloc", 0),
        "tcp_orphan": s.get("TCP", {}).get("orphan", 0),
        "tcp_tw": s.get("TCP", {}).get("tw", 0),
        "tcp_mem_pages": s.get("TCP", {}).get("mem", 0),
        "sockets_used": s.get("sockets", {}).get("used", 0),
        "listen_overflows": n.get("ListenOverflows", 0),
        "listen_drops": n.get("ListenDrops", 0),
        "tcp_abort_on_memory": n.get("TCPAbortOnMemory", 0),
        "tcp_memory_pressures": n.get("TCPMemoryPressures", 0),
        "syncookies_sent": n.get("SyncookiesSent", 0),
        "file_nr": int(fnr[0]),
        "file_max": int(fnr[2]),
        "conntrack": int(ct[0]) if ct else None,
        # RssAnon: the processes' own memory (VmRSS also counts the binary's file pages, which
        # the kernel may drop under pressure and which the processes share).
        "server_rss": sum(proc_status(p, "RssAnon") for p in servers),
        "server_cpu": sum(proc_cpu(p) for p in servers),
        "gen_rss": sum(proc_status(p, "RssAnon") for p in gens + ([gen_pid] if gen_pid else [])),
        "gen_cpu": sum(proc_cpu(p) for p in gens + ([gen_pid] if gen_pid else [])),
        "gen_pids": gens,
        "cpu": cpu_times(),
        "slabinfo": slabinfo(),
    }


def oom_first():
    """For the processes started: if memory runs out anyway, the kernel kills these first,
    not the other processes of the box (nor this script, which must stop and report)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def human(b):
    for unit, div in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(b) >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b:.0f} B"


def loopback(k):
    """127.0.0.0 + k as a dotted quad."""
    return f"127.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


# --------------------------------------------------------------------------------------
# The plan

def reserved_fds(limits_json):
    """RESERVED_FDS as `fanout limits check --json` reports it (nofile.reserved_fds)."""
    try:
        with open(limits_json) as f:
            return int(json.load(f)["nofile"]["reserved_fds"])
    except (TypeError, OSError, ValueError, KeyError):
        return RESERVED_FDS


def make_plan(a):
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    per_process = max(1, soft - reserved_fds(a.limits_json))
    lo, hi = map(int, sysctl("net.ipv4.ip_local_port_range") or ["32768", "60999"])
    ports = hi - lo + 1
    n = a.connections
    servers = a.servers or math.ceil(n / (per_process * SERVER_FILL))
    per_source = max(1, int(ports * PORT_SHARE))
    sources = a.sources or max(1, math.ceil(n / per_source))
    generators = math.ceil(n / per_process)
    # Connections connecting or handshaking at once, over all generator processes: enough to
    # keep both cores busy, few enough for the servers' accept queues (somaxconn each).
    in_flight = max(20, a.in_flight // generators)
    return {
        "connections": n,
        "rlimit_nofile": soft,
        "per_process": per_process,
        "server_processes": servers,
        "server_max_connections": per_process,
        "generator_processes": generators,
        "ephemeral_ports": ports,
        "source_addresses": sources,
        "connections_per_source": math.ceil(n / sources),
        "source_ips": f"127.0.0.1-{loopback(sources)}",
        "max_in_flight_per_process": in_flight,
        "somaxconn": int((sysctl("net.core.somaxconn") or ["0"])[0]),
        "server_ping_interval": a.ping_interval,
    }


# --------------------------------------------------------------------------------------
# Processes

class Run:
    def __init__(self, a, plan, base):
        self.a, self.plan, self.base = a, plan, base
        self.servers = []
        self.gen = None
        self.lines = queue.Queue()
        self.pidfile = a.pidfile

    def write_pids(self):
        if self.pidfile:
            pids = [p.pid for p in self.servers] + ([self.gen.pid] if self.gen else [])
            with open(self.pidfile, "w") as f:
                f.write(" ".join(map(str, pids)) + "\n")

    def start_servers(self):
        t0 = time.time()
        logdir = self.a.work
        for i in range(self.plan["server_processes"]):
            log = open(os.path.join(logdir, f"server-{i}.log"), "w")
            p = subprocess.Popen(
                [self.a.fanout, "serve", "--listen", f"127.0.0.1:{self.a.port}", "--shards", "1",
                 "--max-connections", str(self.plan["server_max_connections"]),
                 "--ping-interval", self.a.ping_interval],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=oom_first)
            self.servers.append(p)
        self.write_pids()
        # Wait for all of them at once (they start in parallel).
        deadline = time.time() + 30
        pending = set(range(len(self.servers)))
        while pending and time.time() < deadline:
            for i in list(pending):
                with open(os.path.join(logdir, f"server-{i}.log")) as f:
                    if "listening on" in f.read():
                        pending.discard(i)
                if self.servers[i].poll() is not None:
                    raise SystemExit(f"server {i} exited; see {logdir}/server-{i}.log")
            time.sleep(0.05)
        if pending:
            raise SystemExit(f"{len(pending)} server(s) did not start in 30 s")
        return time.time() - t0

    def start_generator(self, args):
        self.gen = subprocess.Popen([self.a.load, *args], stdout=open(self.base + "-load.txt", "w"),
                                    stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                    preexec_fn=oom_first)
        self.write_pids()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        log = open(os.path.join(self.a.work, "load-stderr.log"), "w")
        for line in self.gen.stderr:
            if line.startswith("progress "):
                self.lines.put(dict(kv.split("=", 1) for kv in line.split()[1:]))
            else:
                log.write(line)
                log.flush()
                sys.stderr.write("  fanout-load: " + line)
        self.lines.put(None)

    def stop_generator(self, why):
        if self.gen and self.gen.poll() is None:
            print(f"== stopping the generator: {why}", file=sys.stderr, flush=True)
            self.gen.send_signal(signal.SIGINT)

    def stop_all(self):
        procs = ([self.gen] if self.gen else []) + self.servers
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------------------
# Monitoring: progress, guards, samples at phase changes

def monitor(run, find_limit, cap_s):
    """Reads the generator's progress until it exits; prints a line a second; trips guards.
    Returns (timeline, marks, guard) where marks holds the samples taken at phase changes."""
    a, servers = run.a, [p.pid for p in run.servers]
    t0 = time.time()
    timeline, marks = [], {}
    guard = None
    last = {"phase": "ramp", "opened": 0, "open": 0, "failed": 0, "dropped": 0, "steps": 0}
    last_growth, last_opened = time.time(), 0
    held_ok, held_steps = 0, 0
    stopping_since = None
    last_print = 0.0
    while True:
        try:
            p = run.lines.get(timeout=1.0)
        except queue.Empty:
            p = {}
        if p is None:
            break
        changed = False
        if p:
            prev_phase = last["phase"]
            last = {k: (v if k == "phase" else int(v)) for k, v in p.items()}
            if last["phase"] != prev_phase:
                changed = True
                marks[last["phase"]] = sample(servers, run.gen.pid)
                marks[last["phase"] + "_progress"] = dict(last)
                if prev_phase == "ramp":
                    marks["ramp_end"] = marks[last["phase"]]
        now = time.time()
        s = sample(servers, run.gen.pid)
        opened = last.get("opened", 0)
        if opened > last_opened:
            last_growth, last_opened = now, opened
        bad = last.get("failed", 0) + last.get("dropped", 0)
        if find_limit and bad == 0:
            step_count = last.get("steps", 0) * a.step
            if last.get("steps", 0) > held_steps:
                held_steps = last["steps"]
                held_ok = max(held_ok, min(step_count, last.get("open", 0)))
        timeline.append({"t": round(now - t0, 1), "phase": last["phase"], "opened": opened,
                         "open": last.get("open", 0), "failed": last.get("failed", 0),
                         "dropped": last.get("dropped", 0), "steps": last.get("steps", 0),
                         "mem_available": s["mem_available"], "slab": s["slab"],
                         "tcp_mem_pages": s["tcp_mem_pages"], "file_nr": s["file_nr"],
                         "listen_overflows": s["listen_overflows"]})
        rate = 0.0
        if len(timeline) > 2:
            a_, b_ = timeline[-3], timeline[-1]
            rate = (b_["opened"] - a_["opened"]) / max(0.1, b_["t"] - a_["t"])
        if changed or now - last_print >= 0.9:
            last_print = now
            print(f"[{now - t0:6.1f}s] {last['phase']:<7} open {last.get('open', 0):>9,} "
                  f"(+{rate:,.0f}/s) failed {last.get('failed', 0):,} dropped {last.get('dropped', 0):,} "
                  f"| MemAvailable {human(s['mem_available'])} (guard {human(s['mem_guard'])}) slab {human(s['slab'])} "
                  f"tcp_mem {s['tcp_mem_pages']:,} pages files {s['file_nr']:,}"
                  + (f" | held {held_ok:,}" if find_limit else ""), file=sys.stderr, flush=True)
        if guard is None:
            if s["mem_guard"] < a.mem_floor_gib * GIB:
                guard = ("memory", f"MemAvailable - SReclaimable {human(s['mem_guard'])} < floor "
                                   f"{a.mem_floor_gib} GiB (MemAvailable {human(s['mem_available'])})")
            elif last["phase"] == "ramp" and now - last_growth > a.stall_s:
                guard = ("stall", f"no connection opened for {a.stall_s} s at {opened:,}")
            elif now - t0 > cap_s:
                guard = ("time", f"run over its cap of {cap_s:.0f} s")
            elif find_limit and bad > 0:
                guard = ("failures", f"{last.get('failed', 0)} failed, {last.get('dropped', 0)} dropped at {opened:,} opened")
            elif find_limit and last["phase"] != "ramp":
                # Every process has finished its ramp: the ceiling is open. Stop before the
                # first to finish start closing while others still connect.
                guard = ("ceiling", f"all {opened:,} connections of the ceiling opened")
            if guard:
                marks["limit"] = s
                marks["limit_progress"] = dict(last)
                run.stop_generator(guard[1])
                stopping_since = now
        elif stopping_since and now - stopping_since > 300 and run.gen.poll() is None:
            run.gen.kill()
    run.gen.wait()
    return timeline, marks, guard, {"held_with_0_failures": held_ok, "last": last}


# --------------------------------------------------------------------------------------
# Figures

def kernel_cost(before, held, open_):
    """Kernel bytes per connection from the /proc deltas between two samples."""
    if not (before and held and open_):
        return None
    slab = held["slab"] - before["slab"]
    unrecl = held["sunreclaim"] - before["sunreclaim"]
    tcp = (held["tcp_mem_pages"] - before["tcp_mem_pages"]) * PAGE
    ptab = held["page_tables"] - before["page_tables"]
    avail = before["mem_available"] - held["mem_available"]
    user = (held["server_rss"] - before["server_rss"]) + (held["gen_rss"] - before["gen_rss"])
    sb, sh = before.get("slabinfo") or {}, held.get("slabinfo") or {}
    caches = {k: (sh.get(k, 0) - sb.get(k, 0)) / open_ for k in sh}
    top = dict(sorted(((k, round(v)) for k, v in caches.items() if v >= 16), key=lambda kv: -kv[1])[:12])
    sockets = sum(caches.get(k, 0) for k in SOCKET_CACHES)
    return {
        "socket_caches_bytes_per_connection": round(sockets),
        "slab_caches_bytes_per_connection": top,
        "connections": open_,
        "sockets": held["tcp_inuse"] - before["tcp_inuse"],
        "slab_bytes": slab,
        "sunreclaim_bytes": unrecl,
        "tcp_buffer_bytes": tcp,
        "kernel_bytes_per_connection": (slab + tcp) / open_,
        "kernel_bytes_per_socket": (slab + tcp) / max(1, 2 * open_),
        "slab_bytes_per_connection": slab / open_,
        "tcp_buffer_bytes_per_connection": tcp / open_,
        "page_tables_bytes_per_connection": ptab / open_,
        "mem_available_drop_bytes_per_connection": avail / open_,
        "user_rss_bytes_per_connection_both_sides": user / open_,
        "server_rss_bytes_per_connection": (held["server_rss"] - before["server_rss"]) / open_,
        "generator_rss_bytes_per_connection": (held["gen_rss"] - before["gen_rss"]) / open_,
    }


def cpu_split(a, b):
    if not (a and b):
        return None
    d = [y - x for x, y in zip(a["cpu"], b["cpu"])]
    tot = max(1, sum(d))
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq"]
    return {k: round(v / tot, 3) for k, v in zip(names, d)}


def split_text(s):
    if not s:
        return "-"
    return ", ".join(f"{k} {v:.0%}" for k, v in s.items() if k != "nice" and v >= 0.005)


def diagnose(plan, base, limit, prog, guard, gen_report):
    """What stopped the ramp: every candidate with its evidence, the first that fired named."""
    rows = []
    reasons = (gen_report or {}).get("failed") or {}
    dropped = (gen_report or {}).get("dropped") or {}
    allr = {**reasons, **{f"dropped_{k}": v for k, v in dropped.items()}}
    soft = plan["rlimit_nofile"]

    def row(name, fired, evidence, fix):
        rows.append({"limit": name, "fired": bool(fired), "evidence": evidence, "fix": fix})

    fm = limit["file_max"]
    row("fs.file-max", limit["file_nr"] >= 0.98 * fm or allr.get("fd_limit"),
        f"file handles {limit['file_nr']:,} of fs.file-max {fm:,}; fd_limit failures {allr.get('fd_limit', 0)}",
        "scripts/tune-limits.sh apply --connections N (raises fs.file-max)")
    refused = sum(v for k, v in allr.items() if k.startswith("http_503"))
    row("RLIMIT_NOFILE per process", refused,
        f"per-process fd cap {soft}: {plan['server_processes']} servers x {plan['server_max_connections']:,}; "
        f"503 refusals (a server at --max-connections) {refused}",
        "more server processes (--servers), or a higher hard limit (systemd LimitNOFILE=)")
    row("ephemeral ports", allr.get("no_source_port"),
        f"EADDRNOTAVAIL failures {allr.get('no_source_port', 0)}; {plan['source_addresses']} source addresses x "
        f"{plan['ephemeral_ports']:,} ports, {plan['connections_per_source']:,} per address planned",
        "more --sources, or a wider net.ipv4.ip_local_port_range")
    tm = [int(x) for x in sysctl("net.ipv4.tcp_mem") or [0, 0, 0]]
    press = limit["tcp_memory_pressures"] - base["tcp_memory_pressures"]
    abort = limit["tcp_abort_on_memory"] - base["tcp_abort_on_memory"]
    row("tcp_mem", limit["tcp_mem_pages"] >= 0.95 * tm[2] or abort > 0 or press > 0,
        f"TCP memory {limit['tcp_mem_pages']:,} pages of tcp_mem {tm}; TCPMemoryPressures +{press}, "
        f"TCPAbortOnMemory +{abort}",
        "sysctl -w net.ipv4.tcp_mem (tune-limits.sh apply)")
    lo = limit["listen_overflows"] - base["listen_overflows"]
    ld = limit["listen_drops"] - base["listen_drops"]
    timeouts = sum(v for k, v in allr.items() if "timeout" in k)
    failed_at_stop = prog.get("failed", 0)
    row("listen backlog", (lo > 0 or ld > 0) and timeouts > 0,
        f"ListenOverflows +{lo}, ListenDrops +{ld}, connect/handshake timeouts {timeouts} by the end "
        f"({failed_at_stop} failures of any kind when the ramp was stopped); "
        f"somaxconn {plan['somaxconn']} per server x {plan['server_processes']}",
        "raise net.core.somaxconn, fewer connections in flight, more server processes")
    ctmax = sysctl("net.netfilter.nf_conntrack_max")
    if limit["conntrack"] is not None and ctmax:
        row("conntrack", limit["conntrack"] >= 0.98 * int(ctmax[0]),
            f"nf_conntrack_count {limit['conntrack']:,} of nf_conntrack_max {ctmax[0]}",
            "sysctl -w net.netfilter.nf_conntrack_max")
    used = base["mem_available"] - limit["mem_available"]
    slab = limit["slab"] - base["slab"]
    user = (limit["server_rss"] - base["server_rss"]) + (limit["gen_rss"] - base["gen_rss"])
    mem_fired = guard and guard[0] == "memory"
    row("kernel memory", mem_fired and slab >= user,
        f"MemAvailable {human(limit['mem_available'])} (down {human(used)}; less SReclaimable "
        f"{human(limit['mem_guard'])}); Slab +{human(slab)} "
        f"(SUnreclaim {human(limit['sunreclaim'])}); TCP buffers {human(limit['tcp_mem_pages'] * PAGE)}",
        "more RAM, or fewer sockets per box (server and generator on different machines halves it)")
    row("user-space RSS", mem_fired and user > slab,
        f"servers {human(limit['server_rss'])}, generators {human(limit['gen_rss'])} (+{human(user)})",
        "smaller per-connection state")
    stall = guard and guard[0] == "stall"
    split = cpu_split(base, limit)
    row("CPU (ramp stalled)", stall,
        f"{guard[1] if stall else 'no stall'}; box CPU since the start: {split_text(split)}",
        "fewer connections in flight; more cores")
    # What stopped the ramp first names the limit: failures (then the row whose errors they
    # were), or a guard. The failure counts above run to the generator's end, so they include
    # connections in flight when it was stopped.
    kind = guard[0] if guard else None
    memory = ("kernel memory", "user-space RSS")
    if kind == "failures":
        named = [r for r in rows if r["fired"] and r["limit"] not in memory]
        limiter = named[0]["limit"] if named else "connection failures: " + ", ".join(
            f"{k}={v}" for k, v in allr.items())
    elif kind == "memory":
        limiter = next((r["limit"] for r in rows if r["fired"] and r["limit"] in memory), "memory")
    elif kind == "stall":
        limiter = "CPU (ramp stalled)"
    elif kind == "time":
        limiter = "time cap (the ramp was still going)"
    elif kind == "ceiling":
        limiter = f"none: the ceiling of {plan['connections']:,} was reached (raise --connections)"
    else:
        limiter = f"none: the ceiling of {plan['connections']:,} was reached (raise --connections)"
    for r in rows:
        r["stopped_it"] = r["limit"] == limiter
    return limiter, rows


def plot_timeline(path, timeline, title):
    """An SVG of open connections and memory left (MemAvailable) over the run."""
    if len(timeline) < 2:
        return
    w, h, m = 800, 360, 60
    tmax = max(t["t"] for t in timeline) or 1
    omax = max(max(t["open"] for t in timeline), 1)
    mmax = max(max(t["mem_available"] for t in timeline), 1)

    def line(key, top, color):
        pts = " ".join(f"{m + (w - 2 * m) * t['t'] / tmax:.1f},{h - m - (h - 2 * m) * t[key] / top:.1f}"
                       for t in timeline)
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{m}" y="24" font-size="14">{title}</text>',
           f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
           f'<text x="{w - m}" y="{h - m + 20}" text-anchor="end">{tmax:.0f} s</text>',
           f'<text x="{m - 4}" y="{m}" text-anchor="end" fill="#1f77b4">{omax:,}</text>',
           f'<text x="{w - m + 4}" y="{m}" fill="#d62728">{human(mmax)}</text>',
           line("open", omax, "#1f77b4"), line("mem_available", mmax, "#d62728"),
           f'<text x="{m + 8}" y="{m + 16}" fill="#1f77b4">open connections</text>',
           f'<text x="{m + 8}" y="{m + 32}" fill="#d62728">MemAvailable</text>', "</svg>"]
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def pct(r, name):
    return ((r or {}).get("latency_ms") or {}).get(name) or {}


def write_report(path, report, md):
    with open(path + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(path + ".md", "w") as f:
        f.write(md)


def fmt(v, spec="{:,.0f}"):
    return "-" if v is None else spec.format(v)


# --------------------------------------------------------------------------------------
# Main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, required=True,
                    help="connections (with --find-limit: the ceiling to stop at)")
    ap.add_argument("--find-limit", action="store_true")
    ap.add_argument("--step", type=int, default=100000, help="find-limit: connections per step")
    ap.add_argument("--step-hold", type=float, default=5.0, help="find-limit: seconds each step is held")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds all connections are held idle")
    ap.add_argument("--echo-duration", type=float, default=85.0)
    ap.add_argument("--echo-rate", type=float, default=0.0125,
                    help="messages/s per connection (rate x duration >= 1: every connection echoes)")
    ap.add_argument("--servers", type=int, default=0, help="server processes (default: as RLIMIT_NOFILE needs)")
    ap.add_argument("--sources", type=int, default=0, help="source addresses (default: a quarter of the port range each)")
    ap.add_argument("--in-flight", type=int, default=4000, help="connections connecting at once, all processes")
    ap.add_argument("--port", type=int, default=9600)
    ap.add_argument("--ping-interval", default="0",
                    help="the servers' --ping-interval (0: none; at 30 s a million idle connections "
                         "are 33,000 pings and pongs a second)")
    ap.add_argument("--mem-floor-gib", type=float, default=3.0)
    ap.add_argument("--stall-s", type=float, default=20.0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--work", required=True, help="directory for logs")
    ap.add_argument("--pidfile", help="pids of everything started, for the caller's trap")
    ap.add_argument("--fanout", default="target/release/fanout")
    ap.add_argument("--load", default="target/release/fanout-load")
    ap.add_argument("--limits-json", help="tune-limits.sh check --json output, kept in the report")
    a = ap.parse_args()

    start = time.time()
    plan = make_plan(a)
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = "limit" if a.find_limit else str(a.connections)
    base = os.path.join(a.out, f"{stamp}-{name}")
    a.work = base + "-logs"  # the servers' and the generator's logs, kept with the report
    os.makedirs(a.work, exist_ok=True)
    print(f"== plan: {plan['server_processes']} server processes (RLIMIT_NOFILE {plan['rlimit_nofile']}), "
          f"{plan['generator_processes']} generator processes, {plan['source_addresses']} source addresses "
          f"({plan['source_ips']}, {plan['connections_per_source']:,} each of {plan['ephemeral_ports']:,} ports), "
          f"{plan['max_in_flight_per_process']} in flight per generator process", file=sys.stderr, flush=True)

    run = Run(a, plan, base)
    report = {"kind": "find-limit" if a.find_limit else "connections", "plan": plan,
              "kernel": os.uname().release, "cpus": os.cpu_count(),
              "mem_total": meminfo()["MemTotal"], "mem_floor_gib": a.mem_floor_gib}
    if a.limits_json:
        try:
            with open(a.limits_json) as f:
                report["limits_before"] = json.load(f)
        except (OSError, ValueError):
            pass
    rc = 0
    try:
        report["server_start_seconds"] = round(run.start_servers(), 2)
        print(f"== {plan['server_processes']} servers listening on 127.0.0.1:{a.port} after "
              f"{report['server_start_seconds']} s", file=sys.stderr, flush=True)
        time.sleep(0.5)
        servers = [p.pid for p in run.servers]
        before = sample(servers, None)
        report["server_rss_idle_processes"] = before["server_rss"]
        common = ["--url", f"ws://127.0.0.1:{a.port}/", "-n", str(a.connections),
                  "--source-ips", plan["source_ips"], "--processes", "auto",
                  "--max-in-flight", str(plan["max_in_flight_per_process"]),
                  "--json", base + "-load.json", "--hgrm", base + "-load.hgrm", "--plot", base + "-load.svg",
                  "--no-progress", "--progress-lines", "1s"]
        for p in servers:
            common += ["--server-pid", str(p)]
        ramp_cap = max(60.0, a.connections / 2000.0)
        if a.find_limit:
            # A long hold: the script stops it once every process holds its share.
            args = ["connect", *common, "--ramp-step", str(a.step), "--step-hold", f"{a.step_hold}s",
                    "--duration", "600s"]
            cap = ramp_cap + 60
        else:
            args = ["echo", *common, "--hold", f"{a.hold}s", "--duration", f"{a.echo_duration}s",
                    "--rate", str(a.echo_rate), "--message-size", "64", "--tick", "1ms"]
            cap = ramp_cap + a.hold + a.echo_duration + 60
        print(f"== fanout-load {args[0]}: {a.connections:,} connections"
              + (f", steps of {a.step:,} held {a.step_hold:.0f} s" if a.find_limit
                 else f", held {a.hold:.0f} s, then {a.echo_rate} msg/s each for {a.echo_duration:.0f} s"),
              file=sys.stderr, flush=True)
        gen_t0 = time.time()
        run.start_generator(args)
        timeline, marks, guard, mon = monitor(run, a.find_limit, cap)
        gen_rc = run.gen.returncode
        report["generator_exit_code"] = gen_rc
        try:
            with open(base + "-load.json") as f:
                g = json.load(f)
        except (OSError, ValueError):
            g = None
        report["generator"] = {k: (g or {}).get(k) for k in (
            "requested", "opened", "established", "open_at_end", "failed", "failed_total", "dropped", "close_errors",
            "ramp_seconds", "run_seconds", "loadgen_cpu_seconds", "loadgen_cpu_seconds_run", "messages",
            "server_rss_bytes_per_connection", "server_cpu_us_per_handshake", "interrupted")}
        report["latency_ms"] = {k: pct(g, k) for k in ("connect", "handshake", "open", "rtt") if pct(g, k)}
        report["guard"] = {"kind": guard[0], "what": guard[1]} if guard else None
        ramp_end = marks.get("ramp_end")
        opened = (g or {}).get("opened") or mon["last"].get("opened", 0)
        ramp_s = (g or {}).get("ramp_seconds")
        report["ramp"] = {"seconds": ramp_s, "opened": opened,
                          "opened_per_second": opened / ramp_s if ramp_s else None,
                          "box_cpu_split": cpu_split(before, ramp_end),
                          "server_cpu_seconds": ramp_end and ramp_end["server_cpu"] - before["server_cpu"],
                          "generator_cpu_seconds": ramp_end and ramp_end["gen_cpu"],
                          "listen_overflows": ramp_end and ramp_end["listen_overflows"] - before["listen_overflows"]}
        report["timeline"] = timeline
        report["samples"] = {"before": before, **marks}
        if a.find_limit:
            # Where it stopped; without a stop, the hold at the ceiling.
            limit = marks.get("limit") or marks.get("run") or sample(servers, None)
            at = marks.get("limit_progress") or marks.get("run_progress") or mon["last"]
            limiter, rows = diagnose(plan, before, limit, at, guard, g)
            report["find_limit"] = {
                "held_with_0_failures": mon["held_with_0_failures"],
                "max_open": max((t["open"] for t in timeline), default=0),
                "limited_by": limiter, "evidence": rows,
                "open_at_stop": at.get("open", 0),
                "kernel_cost_at_limit": kernel_cost(before, limit, at.get("open", 0)),
            }
        else:
            held = marks.get("run")  # the idle hold's end, all open
            open_held = (marks.get("run_progress") or {}).get("open", 0)
            report["kernel_cost"] = kernel_cost(before, held, open_held)
            report["hold_seconds"] = a.hold
            report["echo"] = {"rate_per_connection": a.echo_rate, "seconds": a.echo_duration,
                              "messages": (g or {}).get("messages"), "rtt_ms": pct(g, "rtt"),
                              "box_cpu_split": cpu_split(held, marks.get("closing"))}
        report["wall_seconds"] = round(time.time() - start, 1)
        report["generator_seconds"] = round(time.time() - gen_t0, 1)
        ok = bool(g) and (g.get("failed_total") or 0) == 0 and not g.get("dropped") and not guard
        if not a.find_limit and not ok:
            rc = 3
    finally:
        run.stop_all()
    plot_timeline(base + "-timeline.svg", report.get("timeline") or [],
                  f"fanout {report['kind']}: {a.connections:,} connections, open and MemAvailable over time")
    md = render(report, base, a)
    write_report(base, report, md)
    print(md)
    print(f"wrote {base}.json and {base}.md", file=sys.stderr)
    return rc


def render(r, base, a):
    p, g = r["plan"], r.get("generator") or {}
    lat = r.get("latency_ms", {})
    name = os.path.basename(base)
    head = (f"{p['server_processes']} fanout processes on one port (SO_REUSEPORT, RLIMIT_NOFILE "
            f"{p['rlimit_nofile']}), fanout-load in {p['generator_processes']} processes from "
            f"{p['source_addresses']} loopback addresses, on one {r['cpus']}-core box (kernel {r['kernel']}); "
            f"whole run {r.get('wall_seconds')} s.")
    ramp = r.get("ramp", {})
    rows = [
        ("established / failed / dropped", f"{fmt(g.get('opened'))} / {fmt(g.get('failed_total'))} / "
                                            f"{sum((g.get('dropped') or {}).values()):,}"),
        ("ramp", f"{fmt(ramp.get('seconds'), '{:.1f}')} s, {fmt(ramp.get('opened_per_second'))} opened/s"),
        ("ramp: box CPU (both sides, all processes)", split_text(ramp.get("box_cpu_split"))),
        ("ramp: ListenOverflows", fmt(ramp.get("listen_overflows"))),
        ("connect / handshake p50 / p99 / max (ms)",
         " ; ".join(f"{fmt(lat.get(k, {}).get('p50'), '{:.2f}')} / {fmt(lat.get(k, {}).get('p99'), '{:.2f}')} / "
                    f"{fmt(lat.get(k, {}).get('max'), '{:.1f}')}" for k in ("connect", "handshake"))),
        ("servers started in", f"{r.get('server_start_seconds')} s; idle RSS {human(r.get('server_rss_idle_processes') or 0)} in all"),
        ("generator CPU", f"{fmt(g.get('loadgen_cpu_seconds'), '{:.1f}')} s"),
    ]
    if r.get("guard"):
        rows.append(("guard tripped", f"{r['guard']['kind']}: {r['guard']['what']}"))
    k = r.get("kernel_cost") or (r.get("find_limit") or {}).get("kernel_cost_at_limit")
    if k:
        rows += [
            ("server user-space bytes per idle connection", fmt(k["server_rss_bytes_per_connection"])),
            ("kernel bytes per connection (slab + TCP buffers; 2 sockets)",
             f"{fmt(k['kernel_bytes_per_connection'])} ({fmt(k['kernel_bytes_per_socket'])} per socket; "
             f"slab {fmt(k['slab_bytes_per_connection'])}, TCP buffers {fmt(k['tcp_buffer_bytes_per_connection'])})"),
            ("generator user-space bytes per connection", fmt(k["generator_rss_bytes_per_connection"])),
            ("MemAvailable drop per connection (everything)", fmt(k["mem_available_drop_bytes_per_connection"])),
        ]
    e = r.get("echo")
    if e:
        m = e.get("messages") or {}
        rt = e.get("rtt_ms") or {}
        rows += [
            (f"echo: {e['rate_per_connection']} msg/s per connection for {e['seconds']:.0f} s",
             f"sent {fmt(m.get('sent'))}, received {fmt(m.get('received'))} ({fmt(m.get('received_per_second'))}/s)"),
            ("echo RTT p50 / p99 / max (ms)",
             f"{fmt(rt.get('p50'), '{:.2f}')} / {fmt(rt.get('p99'), '{:.2f}')} / {fmt(rt.get('max'), '{:.1f}')}"),
        ]
    fl = r.get("find_limit")
    if fl:
        rows += [("held with 0 failures (whole steps)", fmt(fl["held_with_0_failures"])),
                 ("most open at once", fmt(fl["max_open"])),
                 ("limited by", fl["limited_by"])]
    md = [f"# fanout {'find-limit' if fl else 'connections'} ({name})", "", head, "", "| figure | value |",
          "| --- | --- |"] + [f"| {a_} | {b_} |" for a_, b_ in rows]
    if fl:
        md += ["", "What each limit showed at the stop (failure counts run to the generator's end, so they "
               "include connections in flight when it was stopped):", "",
               "| limit | at or past it | evidence |", "| --- | --- | --- |"]
        md += [f"| {x['limit']}{' (**stopped it**)' if x.get('stopped_it') else ''} | "
               f"{'**yes**' if x['fired'] else 'no'} | {x['evidence']} |" for x in fl["evidence"]]
    md += ["", f"Raw: `{name}.json` (timeline, /proc samples), `{name}-load.json`; plots: "
           f"`{name}-timeline.svg` (open connections and MemAvailable), `{name}-load.svg` (latencies).", ""]
    return "\n".join(md)


if __name__ == "__main__":
    sys.exit(main())
