#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient report (index.json).

Usage: autobahn_summary.py [--agent NAME] [--wstest-log FILE] REPORT_DIR_OR_INDEX_JSON

Prints a per-section table (section = the case id without its last part,
e.g. "9.1" for case 9.1.3 and "5" for case 5.19), lists every failing case
and ends with the line

    autobahn: N passed, M failed

A case passes when its `behavior` is OK, NON-STRICT or INFORMATIONAL and its
`behaviorClose` is OK or INFORMATIONAL.  With --wstest-log (wstest's output),
every case wstest said it would run but that is missing from the index (wstest
skips a case whose connection is refused) counts as failed, behavior MISSING.
Exit status: 0 if every case passed, 1 if any case failed or no case was
found, 2 if the report cannot be read.
"""

import argparse
import ast
import json
import os
import sys
from collections import OrderedDict

PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}
COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED")


def case_key(case_id):
    """Sort "9.10.1" after "9.2.1"."""
    key = []
    for part in case_id.split("."):
        key.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return key


def section_of(case_id):
    """Parent of the case id: "9.1.3" -> "9.1", "5.19" -> "5"."""
    return case_id.rsplit(".", 1)[0] if "." in case_id else case_id


def report_path(outdir, reportfile):
    """Prefer the human-readable .html next to the .json named in the index."""
    if not reportfile:
        return "-"
    path = os.path.join(outdir, reportfile)
    html = os.path.splitext(path)[0] + ".html"
    return html if os.path.exists(html) else path


def planned_cases(log_path):
    """Case ids from wstest's "Cases = [...]" line, or None if not found."""
    try:
        with open(log_path, errors="replace") as fh:
            for line in fh:
                if line.startswith("Cases = ["):
                    return [str(c) for c in ast.literal_eval(line[len("Cases = "):].strip())]
    except (OSError, ValueError, SyntaxError):
        pass
    return None


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="report directory or its index.json")
    ap.add_argument("--agent", help="only this agent (default: all agents)")
    ap.add_argument("--wstest-log", help="wstest output, to find cases that never ran")
    args = ap.parse_args(argv)

    index = args.report
    if os.path.isdir(index):
        index = os.path.join(index, "index.json")
    outdir = os.path.dirname(index) or "."
    rel_outdir = os.path.relpath(outdir)
    if not rel_outdir.startswith(".."):
        outdir = rel_outdir

    try:
        with open(index) as fh:
            data = json.load(fh, object_pairs_hook=OrderedDict)
    except (OSError, ValueError) as exc:
        print("autobahn: cannot read %s: %s" % (index, exc), file=sys.stderr)
        print("autobahn: 0 passed, 0 failed")
        return 2

    agents = [args.agent] if args.agent else list(data)
    planned = planned_cases(args.wstest_log) if args.wstest_log else None
    passed = 0
    failures = []
    sections = OrderedDict()

    for agent in agents:
        cases = data.get(agent) or {}
        for case_id in sorted(cases, key=case_key):
            res = cases[case_id]
            behavior = res.get("behavior", "?")
            close = res.get("behaviorClose", "?")
            sec = sections.setdefault(
                section_of(case_id),
                dict.fromkeys(COLUMNS + ("other", "close-fail", "cases", "ms"), 0),
            )
            sec["cases"] += 1
            sec["ms"] += int(res.get("duration") or 0)
            sec[behavior if behavior in COLUMNS else "other"] += 1
            if close not in PASS_CLOSE:
                sec["close-fail"] += 1
            if behavior in PASS_BEHAVIOR and close in PASS_CLOSE:
                passed += 1
            else:
                failures.append(
                    (agent, case_id, behavior, close, report_path(outdir, res.get("reportfile")))
                )
        for case_id in sorted(set(planned or ()) - set(cases), key=case_key):
            sec = sections.setdefault(
                section_of(case_id),
                dict.fromkeys(COLUMNS + ("other", "close-fail", "cases", "ms"), 0),
            )
            sec["cases"] += 1
            sec["other"] += 1
            sec["close-fail"] += 1
            failures.append((agent, case_id, "MISSING", "MISSING", "(not in index.json)"))

    header = ("section", "cases") + COLUMNS + ("other", "close-fail", "time-ms")
    widths = (9, 6, 5, 11, 14, 7, 6, 11, 8)
    fmt = " ".join("%-*s" if i == 0 else "%*s" for i in range(len(header)))

    def row(values):
        flat = []
        for w, v in zip(widths, values):
            flat.extend((w, v))
        return fmt % tuple(flat)

    print(row(header))
    totals = dict.fromkeys(COLUMNS + ("other", "close-fail", "cases", "ms"), 0)
    for name, sec in sorted(sections.items(), key=lambda kv: case_key(kv[0])):
        for k in totals:
            totals[k] += sec[k]
        print(row((name, sec["cases"]) + tuple(sec[c] for c in COLUMNS)
                  + (sec["other"], sec["close-fail"], sec["ms"])))
    print(row(("total", totals["cases"]) + tuple(totals[c] for c in COLUMNS)
              + (totals["other"], totals["close-fail"], totals["ms"])))

    if failures:
        print()
        print("failing cases:")
        for agent, case_id, behavior, close, path in failures:
            print("  FAIL %-10s agent=%s behavior=%s behaviorClose=%s report=%s"
                  % (case_id, agent, behavior, close, path))

    total = passed + len(failures)
    if total == 0:
        print("autobahn: no test case found in %s (agents: %s)"
              % (index, ", ".join(agents) or "none"), file=sys.stderr)
    print("autobahn: %d passed, %d failed" % (passed, len(failures)))
    return 0 if total > 0 and not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
