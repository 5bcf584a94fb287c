#!/usr/bin/env bash
# System calls a server makes per unit of work, fanout (`fanout`: --io epoll; `fanout-uring`:
# --io uring, whose reads and writes are io_uring operations, not syscalls) against uWebSockets (the `uws` peer of
# scripts/bench-compare.sh, built by bench/peers/uws-pubsub/build.sh), counted with perf's
# syscall tracepoints on the server process (cheap, unlike strace, so timing barely moves):
#   - connect: per connection over its whole life (open, close handshake, close), N=5,000;
#   - echo: per echoed message, 1,000 connections, a 4 s window after the ramp;
#   - fanout: per delivery, 10,000 subscribers, a publish every 1/RATE s, a 6 s window while
#     publishing (deliveries in the window: RATE x 6 x subscribers, to a publish or so).
# Also the server's user and system CPU ticks over each window. One server at a time; with
# --pin the server runs on CPU 0 (one thread) and the client on CPU 1. Needs perf
# (linux-perf) and root or perf_event_paranoid <= 1. Prints a table; raw counts stay in a
# temporary directory that is removed.
#
# usage: scripts/bench-syscalls.sh [--servers "fanout fanout-uring uws"] [--phases "connect echo fanout"]
#                                  [--rate R] [--subscribers S] [--pin]
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS="fanout uws"
PHASES="connect echo fanout"
RATE=5
SUBSCRIBERS=10000
PIN_SERVER=()
PIN_LOAD=()
while [ $# -gt 0 ]; do
    case "$1" in
        --servers) SERVERS=$2; shift 2 ;;
        --phases) PHASES=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --subscribers) SUBSCRIBERS=$2; shift 2 ;;
        --pin) PIN_SERVER=(taskset -c 0); PIN_LOAD=(taskset -c 1); shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || { echo "perf missing: apt-get install -y linux-perf" >&2; exit 2; }
case " $SERVERS " in
    *" uws "*)
        if [ ! -x target/uws/uws-echo ] || [ ! -x target/uws/uws-pubsub ]; then
            echo "uws is not built: run bench/peers/uws-pubsub/build.sh first" >&2
            exit 2
        fi ;;
esac
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_binaries missing
LOAD=target/release/fanout-load
WORK=$(mktemp -d)
KEY="bench-$RANDOM$RANDOM"
PORT=9310
SERVER_PID=""
cleanup() {
    trap - EXIT INT TERM
    bench_stop "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

EVENTS=raw_syscalls:sys_enter
for s in accept4 read recvfrom write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl setsockopt \
    close shutdown fcntl futex io_uring_enter; do
    EVENTS="$EVENTS,syscalls:sys_enter_$s"
done

ticks() { # "utime stime" of the server (fields 14 and 15; neither command name has a space)
    cut -d' ' -f14,15 "/proc/$SERVER_PID/stat"
}

start() {
    local name=$1 phase=$2
    case "$name-$phase" in
        fanout-uring-fanout) "${PIN_SERVER[@]}" target/release/fanout serve --app push --listen "127.0.0.1:$PORT" --shards 1 \
                --ping-interval 0 --publish-key "$KEY" --write-queue-limit 4MiB --io uring 2>"$WORK/server.log" & ;;
        fanout-uring-*) "${PIN_SERVER[@]}" target/release/fanout serve --listen "127.0.0.1:$PORT" --shards 1 \
                --ping-interval 0 --io uring 2>"$WORK/server.log" & ;;
        fanout-fanout) "${PIN_SERVER[@]}" target/release/fanout serve --app push --listen "127.0.0.1:$PORT" --shards 1 \
                --ping-interval 0 --publish-key "$KEY" --write-queue-limit 4MiB --io epoll 2>"$WORK/server.log" & ;;
        fanout-*) "${PIN_SERVER[@]}" target/release/fanout serve --listen "127.0.0.1:$PORT" --shards 1 \
                --ping-interval 0 --io epoll 2>"$WORK/server.log" & ;;
        uws-fanout) "${PIN_SERVER[@]}" target/uws/uws-pubsub --port "$PORT" --publish-key "$KEY" 2>"$WORK/server.log" & ;;
        uws-*) PORT=$PORT "${PIN_SERVER[@]}" target/uws/uws-echo >"$WORK/server.log" 2>&1 & ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    bench_wait_listening "$WORK/server.log" "$SERVER_PID"
}

for phase in $PHASES; do
    for name in $SERVERS; do
        echo "== $name: $phase" >&2
        start "$name" "$phase"
        out=$WORK/$name-$phase
        case "$phase" in
            connect)
                perf stat -x, -e "$EVENTS" -p "$SERVER_PID" -o "$out.perf" &
                perf_pid=$!
                sleep 0.5
                t0=$(ticks)
                "${PIN_LOAD[@]}" "$LOAD" connect --url "ws://127.0.0.1:$PORT/" --connections 5000 --duration 1s \
                    --source-ips 127.0.0.1-127.0.0.8 --no-progress --json "$out.json" >/dev/null || true
                sleep 0.5
                kill -INT "$perf_pid"
                wait "$perf_pid" || true
                echo "$t0 $(ticks) 5000" >"$out.unit" ;;
            echo)
                "${PIN_LOAD[@]}" "$LOAD" echo --url "ws://127.0.0.1:$PORT/" --connections 1000 --duration 8s --pipeline 1 \
                    --message-size 64 --no-progress --json "$out.json" >/dev/null &
                load_pid=$!
                sleep 3
                t0=$(ticks)
                perf stat -x, -e "$EVENTS" -p "$SERVER_PID" -o "$out.perf" -- sleep 4
                echo "$t0 $(ticks) echo" >"$out.unit"
                wait "$load_pid" || true ;;
            fanout)
                "${PIN_LOAD[@]}" "$LOAD" fanout --url "ws://127.0.0.1:$PORT/ws?topics=bench" --connections "$SUBSCRIBERS" \
                    --source-ips 127.0.0.1-127.0.0.8 --publish-url "http://127.0.0.1:$PORT/publish/bench" \
                    --publish-header "Authorization: Bearer $KEY" --publish-rate "$RATE" \
                    --publish-count "$(awk -v r="$RATE" 'BEGIN { printf "%d", r * 15 }')" --message-size 100 --grace 2s \
                    --no-progress --json "$out.json" >/dev/null &
                load_pid=$!
                for _ in $(seq 300); do
                    [ "$(find "/proc/$SERVER_PID/fd" -mindepth 1 | wc -l)" -ge "$SUBSCRIBERS" ] && break
                    sleep 0.1
                done
                sleep 2
                t0=$(ticks)
                perf stat -x, -e "$EVENTS" -p "$SERVER_PID" -o "$out.perf" -- sleep 6
                echo "$t0 $(ticks) $(awk -v r="$RATE" -v n="$SUBSCRIBERS" 'BEGIN { printf "%d", r * 6 * n }')" >"$out.unit"
                wait "$load_pid" || true ;;
            *) echo "unknown phase $phase" >&2; exit 2 ;;
        esac
        bench_stop "$SERVER_PID"
        SERVER_PID=""
        sleep 1
    done
done

python3 scripts/lib/bench_syscalls.py "$WORK" "$SERVERS" "$PHASES"
