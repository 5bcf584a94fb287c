"""The table of scripts/bench-syscalls.sh: system calls per unit of work, from perf's CSV.

usage: bench_syscalls.py WORK "SERVERS" "PHASES"

WORK holds <server>-<phase>.perf (perf stat -x, output), <server>-<phase>.unit
("utime0 stime0 utime1 stime1 UNITS", UNITS a count or "echo": the echoed messages in the window,
from the client's messages/s and the 4 s window) and <server>-<phase>.json (the client's report).
"""

import json
import os
import sys

ECHO_WINDOW_SECONDS = 4.0
UNIT_NAMES = {"connect": "connection", "echo": "echoed message", "fanout": "delivery"}


def counts(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            name = parts[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all")
            out[name] = int(parts[0])
    return out


def main():
    work, servers, phases = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
    hz = os.sysconf("SC_CLK_TCK")
    for phase in phases:
        print(f"\nper {UNIT_NAMES.get(phase, phase)} ({phase}):")
        for s in servers:
            base = os.path.join(work, f"{s}-{phase}")
            try:
                c = counts(base + ".perf")
                with open(base + ".unit") as f:
                    u0, s0, u1, s1, units = f.read().split()
            except (OSError, ValueError):
                print(f"  {s:<12} (no figures)")
                continue
            if units == "echo":
                with open(base + ".json") as f:
                    rate = json.load(f)["messages"]["received_per_second"]
                units = rate * ECHO_WINDOW_SECONDS
            units = float(units)
            user, system = (int(u1) - int(u0)) / hz, (int(s1) - int(s0)) / hz
            calls = ", ".join(
                f"{k} {v / units:.3f}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]) if v / units >= 0.001 and k != "all"
            )
            print(
                f"  {s:<12} {c.get('all', 0) / units:.2f} syscalls ({calls}); "
                f"server CPU {1e6 * (user + system) / units:.2f} us (user {1e6 * user / units:.2f} us) over {units:,.0f}"
            )


if __name__ == "__main__":
    main()
