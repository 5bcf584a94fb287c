"""The report of scripts/bench-broker.sh: reads the fanout-load JSON of each run and the
script's facts (Redis CPU, restart times), writes <base>.json and prints the figures.

usage: bench_broker.py BASE RATE NODES
"""

import glob
import json
import os
import sys

from benchlib import fmt, load_json as load, median, ratio, write_json


def facts(base):
    runs, restart = {}, None
    with open(base + "-facts.jsonl") as f:
        for line in f:
            o = json.loads(line)
            if "run" in o:
                runs[o["run"]] = o
            if "restart" in o:
                restart = o["restart"]
    return runs, restart


def figures(r, redis_cpu=None):
    """The figures of one fanout-load fanout run."""
    pub = r.get("publish", {})
    server = r.get("server") or {}
    delivered = r.get("delivered") or 0
    cpu = server.get("cpu_seconds_run")
    d = (r.get("latency_ms") or {}).get("delivery") or {}
    out = {
        "subscribers": r.get("established"),
        "failed_connections": r.get("failed_total"),
        "published_accepted": pub.get("accepted", pub.get("ok")),
        "published_refused": pub.get("refused", pub.get("failed_total")),
        "delivered": delivered,
        "expected": r.get("expected"),
        "lost": r.get("lost"),
        "duplicated": r.get("duplicated"),
        "delivered_refused": r.get("delivered_refused"),
        "delivery_ms": {k: d.get(k) for k in ("p50", "p99", "max")},
        "deliveries_per_second": r.get("deliveries_per_second"),
        "server_cpu_seconds": cpu,
        "server_cpu_us_per_delivery": (cpu * 1e6 / delivered) if cpu and delivered else None,
        "server_rss_bytes_per_connection": r.get("server_rss_bytes_per_connection"),
    }
    if redis_cpu is not None:
        out["redis_cpu_seconds"] = redis_cpu
        out["redis_cpu_us_per_publish"] = (
            redis_cpu * 1e6 / out["published_accepted"] if out["published_accepted"] else None
        )
    return out


def compare(base, runs):
    out = {}
    for kind in ("burst", "sustained"):
        per_mode = {}
        for mode in ("local", "broker"):
            rounds = []
            for path in sorted(glob.glob(f"{base}-compare-{mode}-{kind}-*.json")):
                name = os.path.basename(path)[len(os.path.basename(base)) + 1 : -5]
                rounds.append(figures(load(path), runs.get(name, {}).get("redis_cpu_seconds")))
            if rounds:
                per_mode[mode] = {
                    "rounds": rounds,
                    "delivery_p99_ms_median": median([r["delivery_ms"]["p99"] for r in rounds]),
                    "delivery_p50_ms_median": median([r["delivery_ms"]["p50"] for r in rounds]),
                    "server_cpu_us_per_delivery_median": median(
                        [r["server_cpu_us_per_delivery"] for r in rounds]
                    ),
                    "lost": sum(r["lost"] or 0 for r in rounds),
                    "duplicated": sum(r["duplicated"] or 0 for r in rounds),
                }
        if len(per_mode) == 2:
            per_mode["broker_over_local"] = {
                "delivery_p99": ratio(
                    per_mode["broker"]["delivery_p99_ms_median"],
                    per_mode["local"]["delivery_p99_ms_median"],
                ),
                "server_cpu_per_delivery": ratio(
                    per_mode["broker"]["server_cpu_us_per_delivery_median"],
                    per_mode["local"]["server_cpu_us_per_delivery_median"],
                ),
            }
        if per_mode:
            out[kind] = per_mode
    return out


def restart_report(base, rate, restart):
    path = base + "-restart.json"
    if not os.path.exists(path) or not restart:
        return None
    r = load(path)
    fig = figures(r)
    pub = r.get("publish", {})
    ready = restart["redis_ready_unix_ms"]
    resub = restart.get("all_resubscribed_unix_ms")
    recoveries = pub.get("recoveries") or []
    back_ms = None
    for rec in recoveries:
        t = rec.get("next_accepted_sent_unix_ms")
        if t is not None and t >= restart["redis_stopped_unix_ms"]:
            back_ms = t - ready
    # When each seq was sent: the publisher keeps a schedule (seq k at start + k / rate).
    start_ms = None
    for ref in pub.get("refusals") or []:
        start_ms = ref["sent_unix_ms"] - ref["seq"] * 1000.0 / rate
        break
    lost_before, lost_after, lost_unplaced = 0, 0, 0
    for seq, n in (r.get("lost_by_seq") or {}).items():
        if start_ms is None or resub is None:
            lost_unplaced += n
            continue
        sent = start_ms + int(seq) * 1000.0 / rate
        if sent < resub:
            lost_before += n
        else:
            lost_after += n
    fig.update(
        {
            "redis_ready_unix_ms": ready,
            "all_nodes_resubscribed_after_ready_ms": (resub - ready) if resub else None,
            "publishes_succeed_again_after_ready_ms": back_ms,
            "refused_by_reason": pub.get("refused_by_reason"),
            "lost_accepted_before_all_resubscribed": lost_before,
            "lost_accepted_after_all_resubscribed": lost_after,
            "lost_accepted_unplaced": lost_unplaced,
        }
    )
    return fig


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, rate, nodes = argv[0], float(argv[1]), int(argv[2])
    runs, restart = facts(base)
    out = {"nodes": nodes, "rate": rate}
    cmp = compare(base, runs)
    if cmp:
        out["compare"] = cmp
    if os.path.exists(base + "-cluster.json"):
        out["cluster"] = figures(
            load(base + "-cluster.json"), runs.get("cluster", {}).get("redis_cpu_seconds")
        )
    rs = restart_report(base, rate, restart)
    if rs:
        out["restart"] = rs
    write_json(base + ".json", out)

    for kind, c in cmp.items():
        lo, br, q = c.get("local", {}), c.get("broker", {}), c.get("broker_over_local", {})
        print(
            f"compare {kind}: delivery p99 {fmt(lo.get('delivery_p99_ms_median'))} ms in-process, "
            f"{fmt(br.get('delivery_p99_ms_median'))} ms with Redis ({fmt(q.get('delivery_p99'))}x); "
            f"server CPU per delivery {fmt(lo.get('server_cpu_us_per_delivery_median'), '.3f')} vs "
            f"{fmt(br.get('server_cpu_us_per_delivery_median'), '.3f')} us ({fmt(q.get('server_cpu_per_delivery'))}x); "
            f"lost {lo.get('lost')} / {br.get('lost')}, duplicated {lo.get('duplicated')} / {br.get('duplicated')}"
        )
    if "cluster" in out:
        c = out["cluster"]
        d = c["delivery_ms"]
        print(
            f"cluster: {nodes} nodes, {c['subscribers']} subscribers, {c['published_accepted']} published "
            f"({c['published_refused']} refused), delivered {c['delivered']}/{c['expected']} "
            f"(lost {c['lost']}, duplicated {c['duplicated']}), delivery p50 {fmt(d['p50'])} p99 {fmt(d['p99'])} "
            f"max {fmt(d['max'])} ms, {fmt(c['deliveries_per_second'], '.0f')} deliveries/s, "
            f"server {fmt(c['server_cpu_us_per_delivery'], '.3f')} us CPU per delivery, "
            f"Redis {fmt(c.get('redis_cpu_seconds'))} s CPU"
        )
    if rs:
        print(
            f"restart: publishes succeed again {fmt(rs['publishes_succeed_again_after_ready_ms'], '.0f')} ms after Redis "
            f"accepts connections; every node resubscribed after {fmt(rs['all_nodes_resubscribed_after_ready_ms'], '.0f')} ms; "
            f"refused {rs['published_refused']} {rs['refused_by_reason']}; lost among accepted: "
            f"{rs['lost_accepted_before_all_resubscribed']} before every node resubscribed, "
            f"{rs['lost_accepted_after_all_resubscribed']} after ({rs['lost_accepted_unplaced']} unplaced); "
            f"duplicated {rs['duplicated']}, delivered despite a refusal {rs['delivered_refused']}"
        )
    print(f"wrote {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
