"""The report of scripts/bench-loadgen.sh: reads what the script left in WORK and writes OUT,
then prints the tables of (a) the connection rate of fanout-load against the tokio-tungstenite
client, per round and median, and (b) the echo runs' CPU, generator against server, per
mode/server and round and median, with the ratios, the idle gaps' background load and uptime.

WORK holds fanout-load-connect-R.json (fanout-load connect --json), tokio-client-R.json
(tokio-tungstenite-client's stdout: its last line is the JSON), echo-MODE-SERVER-R.json
(fanout-load echo --json), modes.tsv (MODE<TAB>its fanout-load arguments, one a line) and
gaps.tsv (label, other busy cores, TIME_WAIT sockets, loadavg; tab-separated).

usage: python3 scripts/lib/bench_loadgen.py WORK OUT CONNECTIONS CONCURRENCY ECHO_CONNECTIONS
           ECHO_DURATION ROUNDS UPTIME_START UPTIME_END NCPU "ECHO_SERVERS" "FLAGS" "ECHO_MODES"
  ECHO_SERVERS and ECHO_MODES: words separated by spaces; FLAGS: fanout-load's extra flags
  (e.g. --no-batch-io, or empty)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any, Optional

from benchlib import fmt, median, ratio, write_json

SERVERS = {
    "fanout": "fanout serve --shards 2 --ping-interval 0",
    "fastwebsockets": "bench/peers fastwebsockets-echo --threads 2",
    "tokio-tungstenite": "bench/peers tokio-tungstenite-echo --threads 2",
    "note": "each started once for the whole run",
}
NOTES = [
    "open_rate_ratio > 1: fanout-load opens connections faster than the tokio-tungstenite client",
    "cpu_ratio < 1: the generator used less CPU than the server, both over the echo run "
    "(between ramp and close); the echo ratios are medians of the per-round ratios",
]
# The connect figures of a round that are not numbers (no median).
NOT_MEDIAN = ("round", "first", "fanout_load_failed_reasons", "tokio_errors", "echo")


def load(work: str, name: str) -> Optional[dict]:
    """WORK/NAME's JSON (the last line of a tokio client's output), or None if unreadable."""
    path = os.path.join(work, name)
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return json.loads(text.splitlines()[-1] if name.startswith("tokio") else text)
    except (OSError, ValueError, IndexError):
        return None


def f(v: Optional[float], d: int = 0) -> str:
    """V with thousands separators and D decimals, or "-" when missing."""
    return fmt(v, f",.{d}f")


def connect_row(r: int, fl: Optional[dict], tc: Optional[dict]) -> dict:
    """Round R's connect figures: fanout-load's report FL and the tokio client's TC."""
    row: dict[str, Any] = {
        "round": r,
        "first": "fanout-load" if r % 2 == 1 else "tokio-tungstenite-client",
        "fanout_load_opened": fl and fl["opened"],
        "fanout_load_failed": fl and fl["failed_total"],
        "fanout_load_ramp_seconds": fl and fl["ramp_seconds"],
        "fanout_load_opened_per_second": fl and ratio(fl["opened"], fl["ramp_seconds"]),
        "fanout_load_connect_cpu_seconds": fl and fl["loadgen_cpu_seconds"],
        "fanout_load_failed_reasons": fl and fl.get("failed"),
        "tokio_opened": tc and tc["opened"],
        "tokio_failed": tc and tc["failed"],
        "tokio_seconds": tc and tc["seconds"],
        "tokio_opened_per_second": tc and ratio(tc["opened"], tc["seconds"]),
        "tokio_cpu_seconds": tc and tc["cpu_seconds"],
        "tokio_errors": tc and tc.get("errors"),
        "echo": {},
    }
    row["open_rate_ratio"] = ratio(row["fanout_load_opened_per_second"], row["tokio_opened_per_second"])
    return row


def echo_figures(ec: Optional[dict]) -> dict:
    """One echo run's figures from fanout-load echo's report EC (None: every figure None)."""
    srv = (ec or {}).get("server") or {}
    e = {
        "opened": ec and ec["opened"],
        "failed": ec and ec["failed_total"],
        "mismatched": ec and ec["messages"]["mismatched"],
        "run_seconds": ec and ec.get("run_seconds"),
        "messages_per_second": ec and ec["messages"]["received_per_second"],
        "rtt_p50_ms": ec and ec["latency_ms"].get("rtt", {}).get("p50"),
        "rtt_p99_ms": ec and ec["latency_ms"].get("rtt", {}).get("p99"),
        "rtt_without_kernel_timestamp": ec and ec["messages"].get("rtt_without_kernel_timestamp"),
        "loadgen_cpu_seconds_run": ec and ec.get("loadgen_cpu_seconds_run"),
        "loadgen_cpu_seconds_whole": ec and ec["loadgen_cpu_seconds"],
        "server_cpu_seconds_run": srv.get("cpu_seconds_run"),
        "batched_reads": ec and ec.get("io", {}).get("batched_reads"),
        "batched_writes": ec and ec.get("io", {}).get("batched_writes"),
    }
    e["cpu_ratio"] = ratio(e["loadgen_cpu_seconds_run"], e["server_cpu_seconds_run"])
    received = ec and ec["messages"]["received"]
    e["loadgen_us_per_message"] = ratio(e["loadgen_cpu_seconds_run"], received and received / 1e6)
    e["server_us_per_message"] = ratio(e["server_cpu_seconds_run"], received and received / 1e6)
    return e


def read_gaps(work: str) -> list[dict]:
    gaps = []
    try:
        with open(os.path.join(work, "gaps.tsv")) as fh:
            for line in fh:
                label, busy, tw, la = line.rstrip("\n").split("\t")
                gaps.append(
                    {"when": label, "other_busy_cores": float(busy), "time_wait": int(tw), "loadavg": la}
                )
    except OSError:
        pass
    return gaps


def read_modes(work: str) -> dict[str, str]:
    with open(os.path.join(work, "modes.tsv")) as fh:
        return dict(line.rstrip("\n").split("\t", 1) for line in fh)


def ratio_key(key: str) -> str:
    mode, name = key.split("/", 1)
    return (
        f"generator_cpu_over_{name.replace('-', '_')}_cpu_echo_"
        f"{mode.replace('-', '_').replace(':', '_')}"
    )


class Args:
    """The script's arguments, typed."""

    def __init__(self, argv: list[str]):
        (self.work, self.out, conns, conc, echo_conns, self.echo_dur, rounds, self.up0, self.up1,
         ncpu, echo_servers, self.flags, echo_modes) = argv
        self.conns, self.conc, self.echo_conns = int(conns), int(conc), int(echo_conns)
        self.rounds, self.ncpu = int(rounds), int(ncpu)
        # As given, for the printed headings.
        self.conns_s, self.conc_s, self.echo_conns_s, self.ncpu_s = conns, conc, echo_conns, ncpu
        self.echo_servers = echo_servers.split()
        self.echo_modes = echo_modes.split()
        # (mode, server) of every echo run, and its key in the report ("mode/server").
        self.echo_pairs = [(m, n) for m in self.echo_modes for n in self.echo_servers]
        self.echo_keys = [f"{m}/{n}" for m, n in self.echo_pairs]


def report(a: Args, mode_args: dict[str, str]) -> dict:
    runs = []
    for r in range(1, a.rounds + 1):
        row = connect_row(r, load(a.work, f"fanout-load-connect-{r}.json"), load(a.work, f"tokio-client-{r}.json"))
        for mode, name in a.echo_pairs:
            row["echo"][f"{mode}/{name}"] = echo_figures(load(a.work, f"echo-{mode}-{name}-{r}.json"))
        runs.append(row)

    connect_keys = [k for k in runs[0] if k not in NOT_MEDIAN] if runs else []
    medians = {k: median([r[k] for r in runs]) for k in connect_keys}
    echo_medians = {}
    for key in a.echo_keys:
        keys = runs[0]["echo"][key].keys() if runs else []
        echo_medians[key] = {k: median([r["echo"][key][k] for r in runs]) for k in keys}
    ratios = {
        "fanout_load_over_tokio_opened_per_second": ratio(
            medians.get("fanout_load_opened_per_second"), medians.get("tokio_opened_per_second")
        ),
    }
    for key in a.echo_keys:
        ratios[ratio_key(key)] = echo_medians[key].get("cpu_ratio")

    return {
        "connections": a.conns,
        "concurrency": a.conc,
        "echo_connections": a.echo_conns,
        "echo_duration": a.echo_dur,
        "rounds": a.rounds,
        "cpus": a.ncpu,
        "loadgen_flags": a.flags,
        "echo_modes": {m: mode_args[m] for m in a.echo_modes},
        "servers": SERVERS,
        "uptime_start": a.up0,
        "uptime_end": a.up1,
        "idle_gaps": read_gaps(a.work),
        "runs": runs,
        "medians": medians,
        "echo_medians": echo_medians,
        "ratios": ratios,
        "notes": NOTES,
    }


def connect_line(label: str, first: str, r: dict) -> str:
    return (
        f"{label:<6} {first:<7} {f(r['fanout_load_opened_per_second']):>13} {f(r['fanout_load_failed']):>5} "
        f"{f(r['tokio_opened_per_second']):>9} {f(r['tokio_failed']):>5} {f(r['open_rate_ratio'], 2):>6}"
    )


def echo_line(key: str, label: str, e: dict) -> str:
    return (
        f"{key:<28} {label:<6} {f(e['messages_per_second']):>9} {f(e['failed']):>5} "
        f"{f(e['rtt_p50_ms'], 3):>8} {f(e['rtt_p99_ms'], 3):>8} {f(e['loadgen_cpu_seconds_run'], 2):>9} "
        f"{f(e['server_cpu_seconds_run'], 2):>9} {f(e['loadgen_us_per_message'], 2):>10} "
        f"{f(e['server_us_per_message'], 2):>10} {f(e['cpu_ratio'], 2):>7}"
    )


def print_report(a: Args, rep: dict) -> None:
    runs, mode_args = rep["runs"], rep["echo_modes"]
    print()
    print(f"(a) connect: {a.conns_s} connections to fanout, at most {a.conc_s} in flight")
    print(f"{'round':<6} {'first':<7} {'fanout-load/s':>13} {'fail':>5} {'tokio/s':>9} {'fail':>5} {'ratio':>6}")
    for r in runs:
        print(connect_line(str(r["round"]), "fanout" if r["first"] == "fanout-load" else "tokio", r))
    print(connect_line("median", "", rep["medians"]))
    print()
    print(f"(b) echo: {a.echo_conns_s} connections, {a.echo_dur}; CPU over the echo run {a.flags}")
    for m in a.echo_modes:
        print(f"    {m}: {mode_args[m]}")
    print(
        f"{'mode/server':<28} {'round':<6} {'msg/s':>9} {'fail':>5} {'rtt p50':>8} {'rtt p99':>8} "
        f"{'gen CPU s':>9} {'srv CPU s':>9} {'gen us/msg':>10} {'srv us/msg':>10} {'gen/srv':>7}"
    )
    for key in a.echo_keys:
        for r in runs:
            print(echo_line(key, str(r["round"]), r["echo"][key]))
        print(echo_line(key, "median", rep["echo_medians"][key]))
    print()
    print(
        f"fanout-load opened/s / tokio-tungstenite client opened/s (medians): "
        f"{f(rep['ratios']['fanout_load_over_tokio_opened_per_second'], 2)}"
    )
    for key in a.echo_keys:
        mode, name = key.split("/", 1)
        print(
            f"generator CPU / {name} CPU over the echo run, {mode} (median of rounds): "
            f"{f(rep['echo_medians'][key].get('cpu_ratio'), 2)}"
        )
    gaps = rep["idle_gaps"]
    if gaps:
        busy = [g["other_busy_cores"] for g in gaps]
        print(
            f"other load in the idle gaps: median {statistics.median(busy):.2f}, max {max(busy):.2f} "
            f"of {a.ncpu_s} cores; TIME_WAIT max {max(g['time_wait'] for g in gaps)}"
        )
    print(f"uptime at start: {a.up0.strip()}")
    print(f"uptime at end:   {a.up1.strip()}")


def main(argv: list[str]) -> int:
    if len(argv) != 13:
        print(__doc__, file=sys.stderr)
        return 2
    a = Args(argv)
    rep = report(a, read_modes(a.work))
    write_json(a.out, rep)
    print_report(a, rep)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
