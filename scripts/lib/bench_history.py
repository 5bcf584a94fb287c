"""The report of scripts/bench-history.sh: reads the fanout-load fanout JSON of each phase that
ran (BASE-local.json, BASE-redis.json, BASE-restart.json) and the history_memory example's
BASE-memory.json, writes BASE.json and prints one line of figures per phase.

usage: python3 scripts/lib/bench_history.py BASE
  BASE  the runs' path without suffix, e.g. bench/results/20260101-120000-history
"""

from __future__ import annotations

import sys

from benchlib import QUANTILES, load_json_if, pick, write_json

PHASES = ("local", "redis", "restart")


def figures(r: dict) -> dict:
    """The figures of one fanout-load fanout run, churning or not."""
    c = r.get("churn") or {}
    pub = r.get("publish") or {}
    d = (r.get("latency_ms") or {}).get("delivery") or {}
    return {
        "subscribers": r.get("established"),
        "accepted": pub.get("accepted"),
        "refused": pub.get("refused"),
        "delivered": r.get("delivered"),
        "expected": r.get("expected"),
        "lost": r.get("lost"),
        "duplicated": r.get("duplicated"),
        "reconnects": c.get("reconnects"),
        "recovered": c.get("recovered"),
        "recovery_failed_by_reason": c.get("recovery_failed_by_reason"),
        "messages_recovered": c.get("messages_recovered"),
        "recovery_ms": c.get("recovery_ms"),
        "delivery_ms": pick(d, QUANTILES),
    }


def report(base: str) -> dict:
    out = {}
    for name in PHASES:
        r = load_json_if(f"{base}-{name}.json")
        if r is not None:
            out[name] = figures(r)
    memory = load_json_if(base + "-memory.json")
    if memory is not None:
        out["memory"] = memory
    return out


def line(name: str, r: dict) -> str:
    if name == "memory":
        return (
            f"memory: {r['entries']} entries, {r['rss_bytes_per_entry']:.0f} B RSS per entry "
            f"({r['frame_bytes']}-byte frames)"
        )
    rec = r["recovery_ms"] or {}
    return (
        f"{name}: {r['subscribers']} subscribers, {r['accepted']} accepted ({r['refused']} refused), "
        f"lost {r['lost']}, duplicated {r['duplicated']}; {r['reconnects']} reconnects, "
        f"{r['recovered']} recovered ({r['messages_recovered']} messages), "
        f"failed {r['recovery_failed_by_reason']}; recovery p50 {rec.get('p50')} "
        f"p99 {rec.get('p99')} ms"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    base = argv[0]
    out = report(base)
    write_json(base + ".json", out)
    for name, r in out.items():
        print(line(name, r))
    print(f"wrote {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
