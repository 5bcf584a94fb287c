"""What the bench scripts' report modules share (scripts/lib/bench_*.py): reading the JSON that
fanout-load and the scripts wrote, medians and ratios that skip missing figures, writing the
JSON report, formatting a figure that may be missing, and reading a counter from a server's
/metrics. Imported by those modules, which Python runs with scripts/lib first on sys.path.
"""

from __future__ import annotations

import json
import os
import statistics
import urllib.request
from typing import Any, Iterable, Optional

Number = Optional[float]


def load_json(path: str) -> Any:
    """The JSON document in PATH."""
    with open(path) as f:
        return json.load(f)


def load_json_if(path: str) -> Any:
    """The JSON document in PATH, or None when there is no such file."""
    return load_json(path) if os.path.exists(path) else None


def load_jsonl(path: str) -> list:
    """One JSON value per non-blank line of PATH."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, value: Any) -> None:
    """VALUE as indented JSON into PATH (no trailing newline, as json.dump writes it)."""
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def median(xs: Iterable[Number]) -> Number:
    """The median of the figures that are there (None skipped), or None when none is."""
    present = [x for x in xs if x is not None]
    return statistics.median(present) if present else None


def ratio(a: Number, b: Number) -> Number:
    """a / b, or None when a is missing or b is missing or zero."""
    return None if a is None or b in (None, 0) else a / b


def fmt(x: Number, spec: str = ".2f", none: str = "-") -> str:
    """X formatted with SPEC, or NONE ("-") when the figure is missing."""
    return none if x is None else format(x, spec)


def pick(d: Optional[dict], keys: Iterable[str]) -> dict:
    """{key: d.get(key)} for each key (None for a key D lacks, or for every key if D is None)."""
    d = d or {}
    return {k: d.get(k) for k in keys}


QUANTILES = ("p50", "p99", "max")


def metric(port: int | str, name: str, timeout: float = 5) -> str:
    """The value of the sample NAME (no labels) on http://127.0.0.1:PORT/metrics, as text."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + " "))
