"""The report of scripts/bench-tls.sh: reads fanout-load's reports in WORK (connect-plain,
connect-tls: connections held; echo-plain, echo-tls: echo throughput; after-tls: TLS memory
after 64 KiB echoes, each NAME.json), writes OUT with the TLS over plaintext ratios and prints
the comparison table.

usage: python3 scripts/lib/bench_tls.py WORK OUT N ECHO_N ECHO_DURATION SIZE PIPELINE SHARDS
  N, ECHO_N, ECHO_DURATION, SIZE, PIPELINE, SHARDS: the run's settings, for the report
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

from benchlib import load_json, write_json

KINDS = ("plain", "tls")


def figures(c: dict, e: dict) -> dict:
    """One kind's figures from its connect run C and echo run E."""
    srv = e.get("server") or {}
    rtt = e["latency_ms"].get("rtt", {})
    return {
        "established": c["established"],
        "failed": c["failed_total"],
        "handshakes_per_second": c["opened"] / max(c["ramp_seconds"], 1e-9),
        "handshake_ms_p50": c["latency_ms"].get("handshake", {}).get("p50"),
        "server_cpu_us_per_handshake": c.get("server_cpu_us_per_handshake"),
        "server_rss_bytes_per_idle_connection": c.get("server_rss_bytes_per_connection"),
        "loadgen_cpu_seconds_connect": c.get("loadgen_cpu_seconds"),
        "echo_messages_per_second": e["messages"]["received_per_second"],
        "echo_failed": e["failed_total"],
        "echo_rtt_ms_p50": rtt.get("p50"),
        "echo_rtt_ms_p99": rtt.get("p99"),
        "echo_server_cpu_cores": srv.get("cpu_cores_run"),
        "echo_server_cpu_us_per_message": 1e6 * (srv.get("cpu_seconds_run") or 0)
        / max(e["messages"]["received"], 1),
    }


def report(work: str, settings: dict) -> dict:
    def load(name: str) -> dict:
        return load_json(os.path.join(work, name + ".json"))

    rep = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        **settings,
    }
    for kind in KINDS:
        rep[kind] = figures(load(f"connect-{kind}"), load(f"echo-{kind}"))
    rep["tls"]["server_rss_bytes_per_connection_after_64k_echo"] = load("after-tls").get(
        "server_rss_bytes_per_connection"
    )
    p, t = rep["plain"], rep["tls"]
    rep["ratios_tls_over_plain"] = {
        "handshakes_per_second": t["handshakes_per_second"] / p["handshakes_per_second"],
        "server_cpu_per_handshake": (t["server_cpu_us_per_handshake"] or 0)
        / max(p["server_cpu_us_per_handshake"] or 1e-9, 1e-9),
        "echo_messages_per_second": t["echo_messages_per_second"] / p["echo_messages_per_second"],
        "echo_server_cpu_per_message": t["echo_server_cpu_us_per_message"]
        / max(p["echo_server_cpu_us_per_message"], 1e-9),
    }
    rep["tls_extra_bytes_per_idle_connection"] = (t["server_rss_bytes_per_idle_connection"] or 0) - (
        p["server_rss_bytes_per_idle_connection"] or 0
    )
    return rep


def print_report(rep: dict, n: str, shards: str) -> None:
    p, t, r = rep["plain"], rep["tls"], rep["ratios_tls_over_plain"]
    print(f"connections held: {n} per run, {shards} shard(s)")
    print(
        f"handshakes/s      plain {p['handshakes_per_second']:8.0f}   "
        f"tls {t['handshakes_per_second']:8.0f}   ratio {r['handshakes_per_second']:.2f}  "
        f"(load generator bound; see server CPU)"
    )
    print(
        f"server CPU/hs us  plain {p['server_cpu_us_per_handshake'] or 0:8.1f}   "
        f"tls {t['server_cpu_us_per_handshake'] or 0:8.1f}   ratio {r['server_cpu_per_handshake']:.1f}"
    )
    print(
        f"RSS/idle conn B   plain {p['server_rss_bytes_per_idle_connection'] or 0:8.0f}   "
        f"tls {t['server_rss_bytes_per_idle_connection'] or 0:8.0f}   "
        f"(+{rep['tls_extra_bytes_per_idle_connection']:.0f} B for TLS)"
    )
    print(
        f"RSS/conn B after 64 KiB echoes (2000 TLS conns, then idle): "
        f"{t['server_rss_bytes_per_connection_after_64k_echo'] or 0:.0f}"
    )
    print(
        f"echo msg/s        plain {p['echo_messages_per_second']:8.0f}   "
        f"tls {t['echo_messages_per_second']:8.0f}   ratio {r['echo_messages_per_second']:.2f}"
    )
    print(
        f"server CPU/msg us plain {p['echo_server_cpu_us_per_message']:8.2f}   "
        f"tls {t['echo_server_cpu_us_per_message']:8.2f}   ratio {r['echo_server_cpu_per_message']:.2f}"
    )
    print(f"echo rtt p50 ms   plain {p['echo_rtt_ms_p50']:8.3f}   tls {t['echo_rtt_ms_p50']:8.3f}")


def main(argv: list[str]) -> int:
    if len(argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    work, out, n, echo_n, dur, size, pipeline, shards = argv
    settings = {
        "connections": int(n),
        "shards": int(shards),
        "echo": {
            "connections": int(echo_n),
            "duration": dur,
            "message_size": int(size),
            "pipeline": int(pipeline),
        },
    }
    rep = report(work, settings)
    write_json(out, rep)
    print_report(rep, n, shards)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
