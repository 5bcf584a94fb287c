"""The report of scripts/bench-push.sh: reads the fanout-load fanout JSON of the burst and the
sustained run (BASE-burst.json, BASE-sustained.json), writes BASE.json and prints one line of
figures per run.

usage: python3 scripts/lib/bench_push.py BASE
  BASE  the runs' path without suffix, e.g. bench/results/20260101-120000-push
"""

from __future__ import annotations

import sys

from benchlib import load_json, write_json

RUNS = ("burst", "sustained")


def figures(r: dict) -> dict:
    """The figures of one fanout-load fanout run."""
    return {
        "subscribers": r.get("subscribers"),
        "established": r["established"],
        "failed_total": r["failed_total"],
        "published": r["publish"]["ok"],
        "delivered": r["delivered"],
        "expected": r["expected"],
        "lost": r["lost"],
        "duplicated": r["duplicated"],
        "delivery_ms": r["latency_ms"].get("delivery"),
        "deliveries_per_second": r.get("deliveries_per_second"),
        "server_cpu_cores_during_publishing": (r.get("server") or {}).get("cpu_cores_run"),
        "server_rss_bytes_per_connection": r.get("server_rss_bytes_per_connection"),
    }


def line(name: str, r: dict) -> str:
    d = r["delivery_ms"] or {}
    return (
        f"{name}: {r['established']} subscribers, {r['published']} published, "
        f"delivered {r['delivered']}/{r['expected']} "
        f"(lost {r['lost']}, duplicated {r['duplicated']}), "
        f"delivery p50 {d.get('p50')} p99 {d.get('p99')} max {d.get('max')} ms, "
        f"{(r['deliveries_per_second'] or 0):.0f} deliveries/s, "
        f"server {r['server_cpu_cores_during_publishing']} cores"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    base = argv[0]
    out = {name: figures(load_json(f"{base}-{name}.json")) for name in RUNS}
    write_json(base + ".json", out)
    for name, r in out.items():
        print(line(name, r))
    print(f"wrote {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
