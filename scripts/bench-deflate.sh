#!/usr/bin/env bash
# permessage-deflate figures, one command after `cargo build --release --workspace`:
#   1. codec: compression ratio and MB/s each way on a JSON payload for flate2's zlib-rs and
#      miniz_oxide backends at several levels (bench/deflate-codec, built once per backend);
#   2. memory per idle connection: N connections held with deflate off, on (no context
#      takeover: contexts shared per shard) and on with context takeover, the client offering
#      permessage-deflate (server RSS delta / N);
#   3. memory per connection after every connection exchanged messages (with takeover this is
#      where per-connection contexts appear);
#   4. echo throughput with a JSON payload, deflate off vs on, with server CPU and the bytes
#      the server wrote per message (its /metrics: the wire compression ratio);
#   5. writes bench/results/<date>-deflate.json and stops everything it started.
#
# usage: scripts/bench-deflate.sh [--connections N] [--echo-connections N] [--size BYTES]
#                                 [--duration D] [--port P] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

N=10000
ECHO_N=100
SIZE=4096
DURATION=10s
PORT=9650
OUT=bench/results
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --echo-connections) ECHO_N=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

FANOUT=target/release/fanout
LOAD=target/release/fanout-load
CODEC_DIR=bench/deflate-codec
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_binaries missing
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
    bench_stop "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'bench-deflate: %s\n' "$*" >&2; }

# ----- 1. codec -----
log "codec: building bench/deflate-codec for zlib-rs and miniz_oxide"
(cd "$CODEC_DIR" && cargo build -q --release --no-default-features --features zlib-rs &&
    cp target/release/fanout-deflate-codec "$WORK/codec-zlib-rs" &&
    cargo build -q --release --no-default-features --features miniz &&
    cp target/release/fanout-deflate-codec "$WORK/codec-miniz")
"$WORK/codec-zlib-rs" --dump >"$WORK/payload.json"
: >"$WORK/codec.jsonl"
for b in zlib-rs miniz; do
    "$WORK/codec-$b" "$WORK/payload.json" "$SIZE" | tee -a "$WORK/codec.jsonl" >&2
done

# ----- servers -----
start_server() { # flags...
    "$FANOUT" serve --listen "127.0.0.1:$PORT" --shards 2 --ping-interval 0 "$@" \
        >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "server did not start" >&2
    exit 1
}
stop_server() {
    bench_stop "$SERVER_PID"
    SERVER_PID=""
}
# A counter from the server's /metrics.
metric() {
    python3 scripts/lib/bench_deflate.py metric "$PORT" "$1"
}

declare -A MODE_FLAGS=(
    [off]=""
    [shared]="--deflate"
    [takeover]="--deflate --deflate-context-takeover"
)
# What the client offers: with takeover, plain permessage-deflate (both sides keep contexts).
declare -A LOAD_FLAGS=(
    [off]="--deflate"
    [shared]="--deflate"
    [takeover]="--deflate --deflate-context-takeover"
)
MODES=(off shared takeover)

for mode in "${MODES[@]}"; do
    # ----- 2. idle -----
    log "idle: $N connections, deflate $mode"
    # shellcheck disable=SC2086 # flags are words
    start_server ${MODE_FLAGS[$mode]}
    # shellcheck disable=SC2086
    "$LOAD" connect --url "ws://127.0.0.1:$PORT/" -n "$N" --duration 5s ${LOAD_FLAGS[$mode]} \
        --server-pid "$SERVER_PID" --no-progress --json "$WORK/idle-$mode.json" >&2
    stop_server

    # ----- 3. after messages -----
    log "active: $ECHO_N x 10 connections that each sent messages, deflate $mode"
    # shellcheck disable=SC2086
    start_server ${MODE_FLAGS[$mode]}
    # shellcheck disable=SC2086
    "$LOAD" echo --url "ws://127.0.0.1:$PORT/" -n $((ECHO_N * 10)) --duration 5s --rate 1 \
        --message-size "$SIZE" --payload-file "$WORK/payload.json" --text ${LOAD_FLAGS[$mode]} \
        --server-pid "$SERVER_PID" --no-progress --json "$WORK/active-$mode.json" >&2
    stop_server
done

# ----- 4. throughput -----
for mode in off shared; do
    log "echo throughput: $ECHO_N connections, $SIZE-byte JSON messages, deflate $mode"
    # shellcheck disable=SC2086
    start_server ${MODE_FLAGS[$mode]}
    w0=$(metric fanout_bytes_out_total)
    "$LOAD" echo --url "ws://127.0.0.1:$PORT/" -n "$ECHO_N" --duration "$DURATION" \
        --pipeline 1 --message-size "$SIZE" --payload-file "$WORK/payload.json" --text --deflate \
        --server-pid "$SERVER_PID" --no-progress --json "$WORK/echo-$mode.json" >&2
    w1=$(metric fanout_bytes_out_total)
    echo $((w1 - w0)) >"$WORK/echo-$mode.wchar"
    stop_server
done

python3 scripts/lib/bench_deflate.py report "$WORK" "$OUT/$STAMP-deflate.json" "$N" "$ECHO_N" "$SIZE"
