#!/usr/bin/env bash
# TLS figures, plaintext in the same run for the ratios:
#   - handshakes per second (fanout-load connect, ws:// then wss://) and the server's CPU
#     per handshake,
#   - memory per idle connection after the handshake (server RSS delta / open connections,
#     sampled by fanout-load while the connections are held), and after 64 KiB echoes,
#   - echo throughput over TLS as a ratio of plaintext (fanout-load echo, same settings).
# Prints the figures and writes bench/results/tls.json. Takes about a minute.
#
# Usage: scripts/bench-tls.sh [--connections N] [--echo-connections N] [--echo-duration D]
#                             [--message-size BYTES] [--pipeline N] [--shards N] [--out DIR]
#   --connections       idle connections for the handshake and memory figures (default 5000;
#                       the load generator and each server stay under the 20000 fd limit)
#   --echo-connections  connections of the echo runs (default 50)
#   --echo-duration     length of each echo run (default 5s)
#   --message-size      echo message size (default 1024)
#   --pipeline          echo messages in flight per connection (default 4)
#   --shards            server shards (default 1, so per-core figures)
set -euo pipefail
cd "$(dirname "$0")/.."

N=5000
ECHO_N=50
ECHO_DURATION=5s
SIZE=1024
PIPELINE=4
SHARDS=1
OUT=bench/results
PORT_PLAIN=9710
PORT_TLS=9711
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --echo-connections) ECHO_N=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --message-size) SIZE=$2; shift 2 ;;
        --pipeline) PIPELINE=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

FANOUT=target/release/fanout
LOAD=target/release/fanout-load
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_binaries always
command -v openssl >/dev/null || { echo "openssl is needed to make the test certificate" >&2; exit 2; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PIDS=()
cleanup() {
    local rc=$?
    bench_stop "${SERVER_PIDS[@]}"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# A self-signed leaf certificate (CA:FALSE: webpki refuses a CA certificate as a server's).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null

start_server() { # name port [tls flags...]
    local name=$1 port=$2
    shift 2
    "$FANOUT" serve --listen "127.0.0.1:$port" --shards "$SHARDS" "$@" 2>"$WORK/$name.log" &
    SERVER_PIDS+=("$!")
    bench_wait_listening "$WORK/$name.log" "$!" || exit 1
}

run_load() { # name pid url [args...]
    local name=$1 pid=$2 url=$3
    shift 3
    set +e
    "$LOAD" "$@" --url "$url" --server-pid "$pid" --tls-ca "$WORK/cert.pem" --no-progress \
        --json "$WORK/$name.json" >"$WORK/$name.txt" 2>&1
    local rc=$?
    set -e
    sed 's/^/    /' "$WORK/$name.txt" >&2
    if [ "$rc" -ne 0 ]; then echo "fanout-load $name exited $rc" >&2; exit 1; fi
}

# A fresh server per run: the idle-memory figure is an RSS delta.
for kind in plain tls; do
    if [ "$kind" = tls ]; then
        port=$PORT_TLS; scheme=wss; flags=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
    else
        port=$PORT_PLAIN; scheme=ws; flags=()
    fi
    echo "== $kind: connect $N and hold (handshakes/s, idle memory)" >&2
    start_server "connect-$kind" "$port" "${flags[@]}"
    run_load "connect-$kind" "${SERVER_PIDS[-1]}" "$scheme://localhost:$port/" \
        connect --connections "$N" --duration 2s
    kill -TERM "${SERVER_PIDS[-1]}"
    wait "${SERVER_PIDS[-1]}" 2>/dev/null || true
    unset 'SERVER_PIDS[-1]'

    echo "== $kind: echo, $ECHO_N connections, $SIZE B, pipeline $PIPELINE, $ECHO_DURATION" >&2
    start_server "echo-$kind" "$port" "${flags[@]}"
    run_load "echo-$kind" "${SERVER_PIDS[-1]}" "$scheme://localhost:$port/" \
        echo --connections "$ECHO_N" --duration "$ECHO_DURATION" --message-size "$SIZE" \
        --pipeline "$PIPELINE"
    kill -TERM "${SERVER_PIDS[-1]}"
    wait "${SERVER_PIDS[-1]}" 2>/dev/null || true
    unset 'SERVER_PIDS[-1]'
done

echo "== tls: memory after traffic: 2000 connections each echo 64 KiB twice, then sit idle" >&2
start_server "after-tls" "$PORT_TLS" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
run_load "after-tls" "${SERVER_PIDS[-1]}" "wss://localhost:$PORT_TLS/" \
    echo --connections 2000 --duration 4s --rate 0.5 --message-size 65536

python3 scripts/lib/bench_tls.py "$WORK" "$OUT/tls.json" "$N" "$ECHO_N" "$ECHO_DURATION" "$SIZE" "$PIPELINE" "$SHARDS"
