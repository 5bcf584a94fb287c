"""The Python of scripts/bench-auth.sh, two commands:

  python3 scripts/lib/bench_auth.py token SECRET
      prints an HS256 JWT signed with SECRET, built with the standard library as an issuer
      would: sub "bench-user-12345", sub_topics ["news.*"], expiring in a day.

  python3 scripts/lib/bench_auth.py report WORK OUT N ROUNDS SHARDS MODES
      reads fanout-load connect's WORK/MODE-ROUND.json for each mode of MODES (one word
      separated by spaces, e.g. "plain jwt jwt_limits") and round 1..ROUNDS, and criterion's
      output WORK/criterion.txt when it is there; writes OUT (per mode: the medians over the
      rounds of the server's CPU per handshake, handshakes/s and RSS per connection, the
      failures, and the extra CPU per handshake over "plain"; criterion's ns per call) and
      prints it. N and SHARDS are the run's connections and server shards, for the report.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time

from benchlib import median, write_json

# criterion's time units, in ns.
UNIT_NS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6}


def b64url(d: bytes) -> str:
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()


def token(secret: str, now: float | None = None) -> str:
    """An HS256 JWT for the bench's subscriber, valid for a day from NOW."""
    now = time.time() if now is None else now
    h = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64url(
        json.dumps(
            {"exp": int(now) + 86400, "sub": "bench-user-12345", "sub_topics": ["news.*"]}
        ).encode()
    )
    s = b64url(hmac.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
    return f"{h}.{p}.{s}"


def end_to_end(work: str, mode: str, rounds: int) -> dict:
    """One mode's figures over its rounds (a round without a readable report is skipped)."""
    cpu, rate, rss, failed = [], [], [], 0
    for r in range(1, rounds + 1):
        try:
            with open(f"{work}/{mode}-{r}.json") as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        failed += d["failed_total"]
        if d.get("server_cpu_us_per_handshake") is not None:
            cpu.append(d["server_cpu_us_per_handshake"])
        if d.get("server_rss_bytes_per_connection") is not None:
            rss.append(d["server_rss_bytes_per_connection"])
        if d.get("ramp_seconds"):
            rate.append(d["established"] / d["ramp_seconds"])
    return {
        "server_cpu_us_per_handshake_median": median(cpu),
        "server_cpu_us_per_handshake_runs": cpu,
        "handshakes_per_second_median": median(rate),
        "server_rss_bytes_per_connection_median": median(rss),
        "failed_total": failed,
    }


def criterion_ns(text: str) -> dict:
    """{benchmark: its estimate in ns} from criterion's console output."""
    out = {}
    for m in re.finditer(r"^(\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text, re.M):
        out[m.group(1)] = round(float(m.group(2)) * UNIT_NS.get(m.group(3), float("nan")), 1)
    return out


def report(work: str, n: int, rounds: int, shards: int, modes: list[str]) -> dict:
    out = {
        "connections": n,
        "rounds": rounds,
        "shards": shards,
        "cpu": os.cpu_count(),
        "end_to_end": {},
        "criterion_ns": {},
    }
    for mode in modes:
        out["end_to_end"][mode] = end_to_end(work, mode, rounds)
    base = out["end_to_end"].get("plain", {}).get("server_cpu_us_per_handshake_median")
    for v in out["end_to_end"].values():
        m = v["server_cpu_us_per_handshake_median"]
        if base is not None and m is not None:
            v["extra_us_vs_plain"] = round(m - base, 2)
    crit = f"{work}/criterion.txt"
    if os.path.exists(crit):
        with open(crit) as f:
            out["criterion_ns"] = criterion_ns(f.read())
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "token":
        print(token(argv[1]))
        return 0
    if len(argv) == 7 and argv[0] == "report":
        work, out_path, n, rounds, shards, modes = argv[1:]
        out = report(work, int(n), int(rounds), int(shards), modes.split())
        write_json(out_path, out)
        print(json.dumps(out, indent=2))
        print(f"wrote {out_path}", file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
