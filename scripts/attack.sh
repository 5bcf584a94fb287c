#!/usr/bin/env bash
# The attack suite of issue #20 (docs/attacks.md): every kind of the hostile review against
# release builds on loopback, then a soak. `fanout-load attack` starts target/release/fanout
# serve itself, one fresh server per kind (echo or push with --publish-key, plus the flags the
# kind needs: --handshake-timeout 2s, --max-conns-per-ip 10 --max-connections 500,
# --jwt-secret, --deflate, RLIMIT_NOFILE 256...), so each kind's peak RSS is its own. For
# each kind: server up after, peak RSS (VmRSS every 50 ms and VmHWM), the good echo client's
# p99 before and during, the attacker's outcome, the kind's /metrics counter before and after.
# Prints a table per part and writes bench/results/<date>-attack.json (kinds and soak).
# Exits non-zero when a bound is broken (see docs/attacks.md).
#
# usage: scripts/attack.sh [--ci] [--full] [--kinds all|K1,K2] [--soak DURATION|none]
#                          [--max-rss SIZE] [--scale F]
#   --ci     the short kinds and a 60 s soak (what scripts/test.sh runs; about 2 minutes), with
#            the good client's p99 reported against its bound but not judged: in CI the
#            attacker, the good client and the server share two busy cores, and a burst of 500
#            handshakes alone moves a 0.1 ms p99 by 3-9 ms from run to run. Every other bound
#            (server up, peak RSS, the refusal, the counters, no error for the good client)
#            still fails the run; the p99 bound is judged by the default and --full runs
#   --full   the review's sizes (150 x 1 MiB publish bodies, 10 x 16 MiB echo never read,
#            20-connection ping flood, 500 half-open heads, 1,000 clients at SIGTERM...)
#   default: the short kinds and a 10-minute soak
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

KINDS=all
SOAK=10m
EXTRA=()
while (($#)); do
    case "$1" in
        --ci) SOAK=60s; EXTRA+=(--p99-report-only) ;;
        --full) EXTRA+=(--full) ;;
        --kinds) KINDS=$2; shift ;;
        --soak) SOAK=$2; shift ;;
        --max-rss) EXTRA+=(--max-rss "$2"); shift ;;
        --scale) EXTRA+=(--scale "$2"); shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

bench_binaries always
mkdir -p bench/results
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=bench/results/$STAMP-attack.json
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

rc=0
if [ "$KINDS" != none ]; then
    target/release/fanout-load attack "$KINDS" "${EXTRA[@]}" \
        --server-bin target/release/fanout --json "$TMP/kinds.json" || rc=$?
fi
rs=0
if [ "$SOAK" != none ]; then
    target/release/fanout-load attack soak --duration "$SOAK" \
        --server-bin target/release/fanout --json "$TMP/soak.json" || rs=$?
fi
# One file: the kinds' report with the soak's section.
python3 scripts/lib/bench_attack.py "$TMP" "$OUT"
if ((rc != 0 || rs != 0)); then
    echo "attack suite: a bound was broken (kinds exit $rc, soak exit $rs); see $OUT" >&2
    exit 1
fi
echo "attack suite: all bounds held"
