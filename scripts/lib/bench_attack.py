"""The report of scripts/attack.sh: joins fanout-load attack's two reports, the kinds'
(TMP/kinds.json) and the soak's (TMP/soak.json), either of which may be missing (that part was
not run), into one file: the kinds' report with the soak's section under "soak" and "ok" true
when both parts held their bounds.

usage: python3 scripts/lib/bench_attack.py TMP OUT
  TMP  the directory fanout-load wrote kinds.json and soak.json into
  OUT  the joined report, e.g. bench/results/20260101-120000-attack.json
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from benchlib import load_json_if, write_json


def join(kinds: Optional[dict], soak: Optional[dict]) -> dict:
    """The kinds' report (or an empty suite) with the soak's section and the overall verdict."""
    v = kinds or {"suite": "attack", "kinds": []}
    v["soak"] = soak["soak"] if soak else None
    v["ok"] = (kinds is None or kinds["ok"]) and (soak is None or soak["ok"])
    return v


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    tmp, out = argv
    kinds = load_json_if(os.path.join(tmp, "kinds.json"))
    soak = load_json_if(os.path.join(tmp, "soak.json"))
    write_json(out, join(kinds, soak))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
