#!/usr/bin/env bash
# N WebSocket connections on this box, server and load generator together (2N sockets):
#   1. checks the OS limits for N connections and applies what is LOW or WARN (saving the
#      previous values; restored when the script ends, also on failure or Ctrl-C, unless
#      --keep-limits);
#   2. scripts/lib/bench_connections.py: as many `fanout serve` processes as RLIMIT_NOFILE
#      requires, on one port (SO_REUSEPORT); fanout-load in as many processes, from enough
#      source addresses that each uses a quarter of the ephemeral range at most; ramps, holds
#      (--hold), then a low-rate echo across every connection; progress every second; stops
#      by itself under a MemAvailable floor, on a stalled ramp or past a time cap;
#   3. writes bench/results/<date>-<N>.json and .md (and the generator's -load.json/.svg).
# --find-limit: ramps in steps (--step, each held 5 s) until connections fail or a guard
#   trips, then names what limited it with the evidence from /proc; N is the ceiling (default:
#   what MemAvailable could hold at 12 KB per connection, x1.5). Writes <date>-limit.{json,md}.
#   --no-tune: find the limit of the box as it is (no sysctl raised).
#
# usage: scripts/bench-connections.sh [--connections N] [--find-limit] [--step N] [--no-tune]
#            [--hold S] [--echo-duration S] [--echo-rate R] [--ping-interval D] [--servers K] [--sources S]
#            [--in-flight N] [--port P] [--mem-floor-gib G] [--keep-limits] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh disable=SC1091
. scripts/lib/bench.sh

N=
FIND_LIMIT=0
TUNE=1
KEEP_LIMITS=0
OUT=bench/results
MEM_FLOOR_GIB=3
PY_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --find-limit) FIND_LIMIT=1; PY_ARGS+=(--find-limit); shift ;;
        --no-tune) TUNE=0; shift ;;
        --keep-limits) KEEP_LIMITS=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        --mem-floor-gib) MEM_FLOOR_GIB=$2; shift 2 ;;
        --hold | --echo-duration | --echo-rate | --servers | --sources | --in-flight | --port | --step | --step-hold | --stall-s | --ping-interval)
            PY_ARGS+=("$1" "$2"); shift 2 ;;
        -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$N" ]; then
    if [ "$FIND_LIMIT" = 1 ]; then
        # A ceiling above what memory allows, so that something else than the ceiling stops it.
        avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
        N=$(( (avail_kb - MEM_FLOOR_GIB * 1048576) * 1024 * 3 / 2 / 12000 / 100000 * 100000 ))
        echo "== find-limit ceiling: $N connections (MemAvailable $((avail_kb / 1024)) MiB)" >&2
    else
        N=1000000
    fi
fi

bench_binaries missing
mkdir -p "$OUT"
WORK=$(mktemp -d)
STATE="$WORK/limits.state"
PIDFILE="$WORK/pids"

cleanup() {
    local rc=$? pids=()
    trap - EXIT INT TERM
    if [ -s "$PIDFILE" ]; then
        read -r -a pids <"$PIDFILE"
        bench_stop "${pids[@]}"
    fi
    if [ -f "$STATE" ]; then
        if [ "$KEEP_LIMITS" = 1 ]; then
            cp "$STATE" "$OUT/limits.state"
            echo "limits kept; restore them with: scripts/tune-limits.sh revert --state $OUT/limits.state" >&2
        else
            echo "== restoring the OS limits" >&2
            scripts/tune-limits.sh revert --state "$STATE" >/dev/null || rc=1
        fi
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

echo "== checking OS limits for $N connections" >&2
if ! scripts/tune-limits.sh check --connections "$N" --json "$WORK/limits-before.json" >"$WORK/check.txt"; then
    if [ "$TUNE" = 1 ]; then
        echo "== raising what is LOW or WARN (restored at the end)" >&2
        scripts/tune-limits.sh apply --connections "$N" --state "$STATE" >&2
        if ! scripts/tune-limits.sh check --connections "$N" >"$WORK/check.txt" && [ "$FIND_LIMIT" = 0 ]; then
            cat "$WORK/check.txt" >&2
            echo "limits still block $N connections (see above)" >&2
            exit 1
        fi
    elif [ "$FIND_LIMIT" = 0 ]; then
        cat "$WORK/check.txt" >&2
        echo "--no-tune: the limits block $N connections (see above)" >&2
        exit 1
    fi
elif [ "$TUNE" = 1 ]; then
    # Nothing blocks; still set what only hurts a run (WARN rows).
    scripts/tune-limits.sh apply --connections "$N" --state "$STATE" >/dev/null
fi

python3 scripts/lib/bench_connections.py --connections "$N" --out "$OUT" --work "$WORK" \
    --pidfile "$PIDFILE" --mem-floor-gib "$MEM_FLOOR_GIB" --limits-json "$WORK/limits-before.json" \
    "${PY_ARGS[@]}"
