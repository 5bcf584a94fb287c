"""The report of scripts/bench-compare.sh: reads the fanout-load JSON of every run and the
script's own /proc/<pid>/stat samples of the server around each run, writes the comparison JSON
and prints a table.

usage: bench_compare.py WORK OUT CONNECTIONS ECHO_CONNECTIONS ROUNDS "SERVERS" SUBSCRIBERS

WORK holds <server>-<phase>-<round>.json (the driver's report) and, beside each,
<server>-<phase>-<round>.cpu: "utime0 stime0 utime1 stime1 hz" of the server process read just
before the driver started and just after it ended.

Figures per server and round, then medians over rounds:
  connect: handshakes/s, server CPU per handshake (the driver's ramp window), server RSS per
           idle connection;
  echo:    messages/s, RTT, server CPU per echoed message: user+system from the driver's run
           window (ramp excluded), and user only from the script's samples over the whole
           client run (it also counts the echo connections' handshakes: 1,000 of them cost
           about 1/1000 of a 10 s run);
  fanout:  deliveries (counted by the subscribers), lost, duplicated, server CPU per delivery
           (user+system over the driver's run window: publishing and the grace after it).
Cost ratios are fanout / peer (< 1 favours fanout), as a ratio of medians and as the median of
each round's own ratio; the older rate ratios are fanout / peer for rates and peer / fanout for
costs (> 1 favours fanout).
"""

import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return None if a in (None, 0) or b in (None, 0) else round(a / b, 3)


def proc_cpu(path):
    """(user seconds, system seconds) of the server over one client run, or None."""
    try:
        with open(path) as f:
            u0, s0, u1, s1, hz = (float(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return (u1 - u0) / hz, (s1 - s0) / hz


def runs(work, name, phase):
    """[(round, report, (user s, system s) or None)] in round order."""
    out = []
    pattern = re.compile(rf"^{re.escape(name)}-{phase}-(\d+)\.json$")
    for path in glob.glob(os.path.join(work, f"{name}-{phase}-*.json")):
        m = pattern.match(os.path.basename(path))
        if not m:
            continue
        try:
            report = load(path)
        except (OSError, ValueError):
            continue
        out.append((int(m.group(1)), report, proc_cpu(path[: -len(".json")] + ".cpu")))
    return sorted(out, key=lambda r: r[0])


def connect_round(r):
    server = r.get("server") or {}
    return {
        "opened": r.get("opened"),
        "failed": r.get("failed_total"),
        "handshakes_per_second": r["opened"] / r["ramp_seconds"] if r.get("ramp_seconds") else None,
        "server_cpu_us_per_handshake": r.get("server_cpu_us_per_handshake"),
        "server_rss_bytes_per_connection": r.get("server_rss_bytes_per_connection"),
        "open_p99_ms": (r.get("latency_ms") or {}).get("open", {}).get("p99"),
        "server_cpu_seconds_ramp": server.get("cpu_seconds_ramp"),
    }


def echo_round(r, cpu):
    server = r.get("server") or {}
    msgs = r.get("messages") or {}
    received = msgs.get("received") or 0
    total = server.get("cpu_seconds_run")
    user = cpu[0] if cpu else None
    return {
        "messages_received": received,
        "messages_per_second": msgs.get("received_per_second"),
        "rtt_p50_ms": (r.get("latency_ms") or {}).get("rtt", {}).get("p50"),
        "rtt_p99_ms": (r.get("latency_ms") or {}).get("rtt", {}).get("p99"),
        "server_cpu_cores": server.get("cpu_cores_run"),
        "server_cpu_seconds": total,
        "server_cpu_us_per_message": total * 1e6 / received if total is not None and received else None,
        "server_user_seconds_whole_run": user,
        "server_system_seconds_whole_run": cpu[1] if cpu else None,
        "server_user_us_per_message": user * 1e6 / received if user is not None and received else None,
        "loadgen_cpu_seconds": r.get("loadgen_cpu_seconds"),
        "loadgen_cpu_seconds_run": r.get("loadgen_cpu_seconds_run"),
    }


def fanout_round(r, cpu):
    server = r.get("server") or {}
    delivered = r.get("delivered") or 0
    total = server.get("cpu_seconds_run")
    publish = r.get("publish") or {}
    return {
        "subscribers": r.get("established"),
        "published": publish.get("ok"),
        "publish_refused": publish.get("failed_total"),
        "delivered": delivered,
        "expected": r.get("expected"),
        "lost": r.get("lost"),
        "duplicated": r.get("duplicated"),
        "deliveries_per_second": r.get("deliveries_per_second"),
        "delivery_p50_ms": (r.get("latency_ms") or {}).get("delivery", {}).get("p50"),
        "delivery_p99_ms": (r.get("latency_ms") or {}).get("delivery", {}).get("p99"),
        "server_cpu_seconds": total,
        "server_cpu_us_per_delivery": total * 1e6 / delivered if total is not None and delivered else None,
        "server_user_seconds_whole_run": cpu[0] if cpu else None,
        "server_system_seconds_whole_run": cpu[1] if cpu else None,
        "server_rss_bytes_per_subscriber": r.get("server_rss_bytes_per_connection"),
    }


def summarise(work, servers):
    res = {}
    for s in servers:
        c = [(n, connect_round(r)) for n, r, _ in runs(work, s, "connect")]
        e = [(n, echo_round(r, cpu)) for n, r, cpu in runs(work, s, "echo")]
        f = [(n, fanout_round(r, cpu)) for n, r, cpu in runs(work, s, "fanout")]

        def med(rounds, key):
            return median([x[key] for _, x in rounds])

        res[s] = {
            # The keys the script wrote before the uWS and fan-out phases, unchanged.
            "connect_opened": med(c, "opened"),
            "connect_failed": med(c, "failed"),
            "handshakes_per_second": med(c, "handshakes_per_second"),
            "server_cpu_us_per_handshake": med(c, "server_cpu_us_per_handshake"),
            "server_rss_bytes_per_connection": med(c, "server_rss_bytes_per_connection"),
            "open_p99_ms": med(c, "open_p99_ms"),
            "echo_messages_per_second": med(e, "messages_per_second"),
            "echo_rtt_p50_ms": med(e, "rtt_p50_ms"),
            "echo_rtt_p99_ms": med(e, "rtt_p99_ms"),
            "echo_server_cpu_cores": med(e, "server_cpu_cores"),
            "echo_loadgen_cpu_seconds": med(e, "loadgen_cpu_seconds"),
            "echo_loadgen_cpu_seconds_run": med(e, "loadgen_cpu_seconds_run"),
            "echo_server_cpu_seconds": med(e, "server_cpu_seconds"),
            # New: CPU per unit of work.
            "echo_server_cpu_us_per_message": med(e, "server_cpu_us_per_message"),
            "echo_server_user_us_per_message": med(e, "server_user_us_per_message"),
            "fanout_server_cpu_us_per_delivery": med(f, "server_cpu_us_per_delivery"),
            "fanout_delivered": med(f, "delivered"),
            "fanout_deliveries_per_second": med(f, "deliveries_per_second"),
            "fanout_delivery_p99_ms": med(f, "delivery_p99_ms"),
            "fanout_lost_total": sum(x["lost"] or 0 for _, x in f) if f else None,
            "fanout_duplicated_total": sum(x["duplicated"] or 0 for _, x in f) if f else None,
            "runs": {"connect": len(c), "echo": len(e), "fanout": len(f)},
            "rounds": {
                "connect": [dict(x, round=n) for n, x in c],
                "echo": [dict(x, round=n) for n, x in e],
                "fanout": [dict(x, round=n) for n, x in f],
            },
        }
    return res


COSTS = (
    ("echo_cpu_per_message", "echo_server_cpu_us_per_message"),
    ("echo_user_cpu_per_message", "echo_server_user_us_per_message"),
    ("cpu_per_handshake", "server_cpu_us_per_handshake"),
    ("rss_per_idle_connection", "server_rss_bytes_per_connection"),
    ("fanout_cpu_per_delivery", "fanout_server_cpu_us_per_delivery"),
)


PAIRED = (
    ("echo_cpu_per_message", "echo", "server_cpu_us_per_message"),
    ("echo_user_cpu_per_message", "echo", "server_user_us_per_message"),
    ("cpu_per_handshake", "connect", "server_cpu_us_per_handshake"),
    ("rss_per_idle_connection", "connect", "server_rss_bytes_per_connection"),
    ("fanout_cpu_per_delivery", "fanout", "server_cpu_us_per_delivery"),
)


def paired(mine, theirs, phase, key):
    """Median over rounds that both ran of mine/theirs, with the per-round ratios."""
    other = {x["round"]: x[key] for x in theirs[phase]}
    each = [ratio(x[key], other.get(x["round"])) for x in mine[phase]]
    each = [r for r in each if r is not None]
    return {"median": median(each), "rounds": each}


OURS = ("fanout", "fanout-uring")


def ratios(res, mine="fanout"):
    """`mine` (fanout's epoll or io_uring path) against every other server: the peers, and
    for the epoll path its io_uring twin."""
    out = {}
    f = res.get(mine)
    if not f:
        return out
    for s, p in res.items():
        if s == mine or (mine != "fanout" and s in OURS):
            continue
        out[s] = {
            "handshake_rate_fanout_over_peer": ratio(f["handshakes_per_second"], p["handshakes_per_second"]),
            "cpu_per_handshake_peer_over_fanout": ratio(
                p["server_cpu_us_per_handshake"], f["server_cpu_us_per_handshake"]
            ),
            "rss_per_conn_peer_over_fanout": ratio(
                p["server_rss_bytes_per_connection"], f["server_rss_bytes_per_connection"]
            ),
            "echo_throughput_fanout_over_peer": ratio(f["echo_messages_per_second"], p["echo_messages_per_second"]),
            "cost_fanout_over_peer": {name: ratio(f[key], p[key]) for name, key in COSTS},
            # The same costs as the median of each round's own ratio (rounds run back to back,
            # so a box whose load drifts over the run moves both sides of a round together).
            "cost_fanout_over_peer_paired": {
                name: paired(f["rounds"], p["rounds"], phase, per_round)
                for name, phase, per_round in PAIRED
            },
        }
    return out


def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"


def main():
    work, out, conns, echo_conns, rounds, servers, subscribers = sys.argv[1:8]
    servers = servers.split()
    res = summarise(work, servers)
    rat = ratios(res)
    rat_uring = ratios(res, "fanout-uring")
    report = {
        "connections": int(conns),
        "echo_connections": int(echo_conns),
        "fanout_subscribers": int(subscribers),
        "rounds": int(rounds),
        "medians": res,
        "ratios": rat,
        # fanout --io uring against the peers (the same keys: "fanout" there is fanout-uring).
        "ratios_fanout_uring": rat_uring,
        "note": "rate ratios and *_peer_over_fanout > 1 favour fanout; cost_fanout_over_peer < 1 favours fanout",
    }
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)

    print(
        f"\n{'server':<18} {'opened':>7} {'fail':>4} {'hs/s':>8} {'us/hs':>6} {'B/conn':>8} {'echo msg/s':>10} "
        f"{'rtt p99':>7} {'us/msg':>6} {'usr/msg':>7} {'us/dlv':>7} {'lost':>5}"
    )
    for s in servers:
        r = res[s]
        print(
            f"{s:<18} {fmt(r['connect_opened'], 0):>7} {fmt(r['connect_failed'], 0):>4} "
            f"{fmt(r['handshakes_per_second'], 0):>8} {fmt(r['server_cpu_us_per_handshake']):>6} "
            f"{fmt(r['server_rss_bytes_per_connection'], 0):>8} {fmt(r['echo_messages_per_second'], 0):>10} "
            f"{fmt(r['echo_rtt_p99_ms'], 2):>7} {fmt(r['echo_server_cpu_us_per_message'], 2):>6} "
            f"{fmt(r['echo_server_user_us_per_message'], 2):>7} {fmt(r['fanout_server_cpu_us_per_delivery'], 3):>7} "
            f"{fmt(r['fanout_lost_total'], 0):>5}"
        )
    for mine, s, r in [("fanout", s, r) for s, r in rat.items()] + [
        ("fanout-uring", s, r) for s, r in rat_uring.items()
    ]:
        c = r["cost_fanout_over_peer"]
        q = {k: v["median"] for k, v in r["cost_fanout_over_peer_paired"].items()}
        print(
            f"{mine} / {s} (cost, < 1 favours fanout): CPU/echo msg {fmt(c['echo_cpu_per_message'], 2)}x, "
            f"user CPU/echo msg {fmt(c['echo_user_cpu_per_message'], 2)}x, CPU/handshake {fmt(c['cpu_per_handshake'], 2)}x, "
            f"memory/idle conn {fmt(c['rss_per_idle_connection'], 2)}x, CPU/fan-out delivery {fmt(c['fanout_cpu_per_delivery'], 2)}x; "
            f"handshake rate x{fmt(r['handshake_rate_fanout_over_peer'], 2)}, echo throughput x{fmt(r['echo_throughput_fanout_over_peer'], 2)}"
        )
        print(
            f"  median of per-round ratios: CPU/echo msg {fmt(q['echo_cpu_per_message'], 2)}x, "
            f"user CPU/echo msg {fmt(q['echo_user_cpu_per_message'], 2)}x, CPU/handshake {fmt(q['cpu_per_handshake'], 2)}x, "
            f"memory/idle conn {fmt(q['rss_per_idle_connection'], 2)}x, CPU/fan-out delivery {fmt(q['fanout_cpu_per_delivery'], 2)}x"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
