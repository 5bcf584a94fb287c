#!/usr/bin/env bash
# The 50k scenario: scripts/bench-connections.sh --connections 50000 (held 60 s, then an echo
# at 0.2 msg/s per connection for 20 s). Its options pass through, e.g. --connections N,
# --hold 60s, --echo-duration 20s, --echo-rate R, --port P, --keep-limits, --out DIR; the
# report is bench/results/<date>-50000.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--connections 50000 --hold 60 --echo-duration 20 --echo-rate 0.2)
while [ $# -gt 0 ]; do
    case "$1" in
        --hold | --echo-duration) args+=("$1" "${2%s}"); shift 2 ;;
        -h | --help) sed -n '2,5p' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
exec scripts/bench-connections.sh "${args[@]}"
