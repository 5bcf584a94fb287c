#!/usr/bin/env bash
# The push server's figures with fanout-load fanout, one server process:
#   1. burst: one 100-byte publish to N subscribers (default 19,000): delivery latency, lost;
#   2. sustained: N subscribers, publishes at 20/s for 60 s: every message delivered,
#      deliveries/s, server CPU.
# Writes bench/results/<date>-push.json and prints the figures.
#
# usage: scripts/bench-push.sh [--subscribers N] [--rate R] [--seconds S] [--shards K] [--port P]
set -euo pipefail
cd "$(dirname "$0")/.."

N=19000
RATE=20
SECONDS_RUN=60
SHARDS=2
PORT=9650
while [ $# -gt 0 ]; do
    case "$1" in
        --subscribers) N=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --seconds) SECONDS_RUN=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_binaries missing
OUT=bench/results
mkdir -p "$OUT"
BASE="$OUT/$(date -u +%Y%m%d-%H%M%S)-push"
WORK=$(mktemp -d)
KEY="bench-$RANDOM$RANDOM"
SERVER_PID=""
cleanup() {
    bench_stop "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target/release/fanout serve --app push --listen "127.0.0.1:$PORT" --shards "$SHARDS" \
    --publish-key "$KEY" --write-queue-limit 4MiB 2>"$WORK/server.log" &
SERVER_PID=$!
bench_wait_listening "$WORK/server.log" "$SERVER_PID"

run() {
    local name=$1 count=$2 rate=$3
    target/release/fanout-load fanout --url "ws://127.0.0.1:$PORT/ws?topics=bench" --connections "$N" \
        --publish-url "http://127.0.0.1:$PORT/publish/bench" --publish-header "Authorization: Bearer $KEY" \
        --publish-count "$count" --publish-rate "$rate" --message-size 100 --grace 2s \
        --server-pid "$SERVER_PID" --no-progress --json "$BASE-$name.json" --plot "$BASE-$name.svg" \
        | tee "$WORK/$name.txt" || true
}
echo "== burst: one publish to $N subscribers" >&2
run burst 1 1
echo "== sustained: $RATE publishes/s for $SECONDS_RUN s to $N subscribers" >&2
run sustained $((RATE * SECONDS_RUN)) "$RATE"

python3 scripts/lib/bench_push.py "$BASE"
