"""The Python of scripts/bench-deflate.sh, two commands:

  python3 scripts/lib/bench_deflate.py metric PORT NAME
      prints the value of the counter NAME on the server's http://127.0.0.1:PORT/metrics.

  python3 scripts/lib/bench_deflate.py report WORK OUT N ECHO_N SIZE
      reads what the script left in WORK (codec.jsonl from bench/deflate-codec; fanout-load's
      idle-MODE.json and active-MODE.json for MODE off, shared, takeover; echo-MODE.json and
      echo-MODE.wchar, the bytes the server wrote, for MODE off, shared), writes OUT and prints
      the codec table, memory per connection and the echo figures with their on/off ratios.
      N, ECHO_N and SIZE are the idle connections, echo connections and message size of the run.
"""

from __future__ import annotations

import os
import sys

from benchlib import load_json, load_jsonl, metric, write_json

MEMORY_MODES = ("off", "shared", "takeover")
ECHO_MODES = ("off", "shared")


def idle(d: dict) -> dict:
    """The figures of fanout-load connect holding idle connections."""
    return {
        "connections": d["opened"],
        "failed": d["failed_total"],
        "rss_bytes_per_connection": d.get("server_rss_bytes_per_connection"),
    }


def active(d: dict) -> dict:
    """The figures of fanout-load echo at 1 message/s: connections that exchanged messages."""
    return {
        "connections": d["opened"],
        "failed": d["failed_total"],
        "messages_received": d["messages"]["received"],
        "rss_bytes_per_connection": d.get("server_rss_bytes_per_connection"),
    }


def echo(e: dict, wrote: int) -> dict:
    """The figures of one fanout-load echo run; WROTE: the bytes the server wrote meanwhile."""
    got = e["messages"]["received"]
    srv = e.get("server", {})
    return {
        "messages_per_second": e["messages"]["received_per_second"],
        "messages": got,
        "mismatched": e["messages"]["mismatched"],
        "failed": e["failed_total"],
        "rtt_ms": e["latency_ms"].get("rtt"),
        "server_cpu_cores": srv.get("cpu_cores_run"),
        "server_cpu_us_per_message": (srv.get("cpu_seconds_run") or 0) * 1e6 / max(got, 1),
        "server_bytes_written_per_message": wrote / max(got, 1),
    }


def report(work: str, size: int) -> dict:
    def load(name: str) -> dict:
        return load_json(os.path.join(work, name))

    res = {
        "codec": load_jsonl(f"{work}/codec.jsonl"),
        "message_bytes": size,
        "idle": {},
        "active": {},
        "echo": {},
    }
    for mode in MEMORY_MODES:
        res["idle"][mode] = idle(load(f"idle-{mode}.json"))
        res["active"][mode] = active(load(f"active-{mode}.json"))
    for mode in ECHO_MODES:
        with open(f"{work}/echo-{mode}.wchar") as f:
            wrote = int(f.read())
        res["echo"][mode] = echo(load(f"echo-{mode}.json"), wrote)
    off, on = res["echo"]["off"], res["echo"]["shared"]
    res["echo"]["throughput_ratio_on_over_off"] = on["messages_per_second"] / max(
        off["messages_per_second"], 1e-9
    )
    res["echo"]["server_cpu_ratio_on_over_off"] = on["server_cpu_us_per_message"] / max(
        off["server_cpu_us_per_message"], 1e-9
    )
    res["echo"]["wire_ratio"] = off["server_bytes_written_per_message"] / max(
        on["server_bytes_written_per_message"], 1e-9
    )
    return res


def bytes_or_na(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} B"


def print_report(res: dict, echo_n: int, size: int) -> None:
    print(f"\ncodec ({size}-byte JSON messages):")
    for c in res["codec"]:
        print(
            f"  {c['backend']:<12} level {c['level']}: ratio {c['ratio']:.2f}, "
            f"compress {c['compress_mb_per_s']:.0f} MB/s, inflate {c['inflate_mb_per_s']:.0f} MB/s"
        )
    print("memory per connection (server RSS delta / N):")
    for mode in MEMORY_MODES:
        i, a = res["idle"][mode], res["active"][mode]
        print(
            f"  deflate {mode:<8}: idle {bytes_or_na(i['rss_bytes_per_connection'])} "
            f"({i['connections']} conns), "
            f"after messages {bytes_or_na(a['rss_bytes_per_connection'])} ({a['connections']} conns)"
        )
    print(f"echo, {echo_n} connections, {size}-byte JSON text:")
    for mode in ECHO_MODES:
        e = res["echo"][mode]
        print(
            f"  deflate {mode:<8}: {e['messages_per_second']:,.0f} msg/s, "
            f"server {e['server_cpu_cores'] or 0:.2f} cores "
            f"({e['server_cpu_us_per_message']:.1f} us per message), "
            f"{e['server_bytes_written_per_message']:,.0f} B written per message"
        )
    r = res["echo"]
    print(
        f"  throughput on/off {r['throughput_ratio_on_over_off']:.2f} (the load generator "
        f"compresses and inflates too, on the same cores), server CPU per message on/off "
        f"{r['server_cpu_ratio_on_over_off']:.2f}, wire bytes off/on {r['wire_ratio']:.2f}"
    )


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "metric":
        print(metric(argv[1], argv[2]))
        return 0
    if len(argv) == 6 and argv[0] == "report":
        work, out, _n, echo_n_s, size_s = argv[1:]  # N: in the command for the record
        echo_n, size = int(echo_n_s), int(size_s)
        res = report(work, size)
        write_json(out, res)
        print_report(res, echo_n, size)
        print(f"\nwrote {out}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
