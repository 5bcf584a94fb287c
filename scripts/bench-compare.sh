#!/usr/bin/env bash
# fanout against its peers, driven by the same client (fanout-load) in one run: fanout on its
# two I/O paths (`fanout`: --io epoll, `fanout-uring`: --io uring), two Rust echo
# servers (tokio-tungstenite, fastwebsockets; built from crates.io by scripts/build-peers.sh)
# and, when it is built (bench/peers/uws-pubsub/build.sh; optional, never needed by the tests),
# uWebSockets (`uws`: its EchoServer example, and uws-pubsub for the fan-out phase).
#   - connect: open N connections (default 19,000) as fast as possible, hold them, close;
#     reports opened/s, server CPU per handshake and server RSS per idle connection;
#   - echo: 1,000 connections, pipelined echo for a few seconds; messages/s, server CPU per
#     echoed message (user+system, and user only);
#   - fanout (fanout, fanout-uring and uws only): S subscribers (default 10,000) on one topic, a 100-byte
#     publish at a fixed rate for a fixed time (default 5/s for 30 s: slow enough that the
#     subscribers' one core keeps up, so no server queue grows) (`fanout serve --app push` with
#     THREADS shards vs uws-pubsub, one thread); server CPU per delivery (/proc/<pid>/stat
#     utime+stime over the run), deliveries counted by the subscribers, lost and duplicated.
# Each server runs with the same thread count (uWS's are one thread: use --threads 1, the
# default with --pin). Rounds alternate servers; medians are kept, every round is in the JSON.
# Prints a table with ratios and writes bench/results/<date>-compare.json (scripts/lib/bench_compare.py).
#
# usage: scripts/bench-compare.sh [--connections N] [--echo-connections N] [--echo-duration D]
#                                 [--hold D] [--rounds R] [--threads T] [--servers "fanout fanout-uring tokio-tungstenite fastwebsockets uws"]
#                                 [--only connect|echo|fanout] [--subscribers S] [--publish-rate R]
#                                 [--publish-seconds T] [--pin]
# --pin puts the server on CPU 0 and the load generator on CPU 1 (taskset), so neither steals
# the other's core, and makes --threads default to 1; without it the scheduler shares both
# cores between them (default --threads 2).
# The default --servers has uws when target/uws/uws-echo and uws-pubsub exist.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=19000
ECHO_CONNECTIONS=1000
ECHO_DURATION=10s
HOLD=5s
ROUNDS=3
THREADS=""
SERVERS="fanout fanout-uring tokio-tungstenite fastwebsockets"
UWS_ECHO=target/uws/uws-echo
UWS_PUBSUB=target/uws/uws-pubsub
if [ -x "$UWS_ECHO" ] && [ -x "$UWS_PUBSUB" ]; then SERVERS="$SERVERS uws"; fi
ONLY=""
SUBSCRIBERS=10000
PUBLISH_RATE=5
PUBLISH_SECONDS=30
PIN_SERVER=()
PIN_LOAD=()
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNECTIONS=$2; shift 2 ;;
        --echo-connections) ECHO_CONNECTIONS=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --subscribers) SUBSCRIBERS=$2; shift 2 ;;
        --publish-rate) PUBLISH_RATE=$2; shift 2 ;;
        --publish-seconds) PUBLISH_SECONDS=$2; shift 2 ;;
        --pin) PIN_SERVER=(taskset -c 0); PIN_LOAD=(taskset -c 1); shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case "$ONLY" in
    ""|connect|echo|fanout) ;;
    *) echo "--only takes connect, echo or fanout" >&2; exit 2 ;;
esac
if [ -z "$THREADS" ]; then
    if [ ${#PIN_SERVER[@]} -gt 0 ]; then THREADS=1; else THREADS=2; fi
fi
for name in $SERVERS; do
    if [ "$name" = uws ] && { [ ! -x "$UWS_ECHO" ] || [ ! -x "$UWS_PUBSUB" ]; }; then
        echo "uws is not built: run bench/peers/uws-pubsub/build.sh first" >&2
        exit 2
    fi
    if [ "$name" = uws ] && [ "$THREADS" != 1 ]; then
        echo "note: uWebSockets runs one thread, the others $THREADS (--threads 1 to match)" >&2
    fi
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true # uWS's examples do not raise it themselves

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_binaries always
PEERS=()
case " $SERVERS " in
    *" tokio-tungstenite "*|*" fastwebsockets "*) mapfile -t PEERS < <(scripts/build-peers.sh) ;;
esac
LOAD=target/release/fanout-load
OUT=bench/results
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=$(mktemp -d)
SERVER_PID=""
KEY="bench-$RANDOM$RANDOM"

cleanup() {
    trap - EXIT INT TERM
    bench_stop "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_of() {
    case "$1" in
        fanout) echo 9301 ;;
        tokio-tungstenite) echo 9302 ;;
        fastwebsockets) echo 9303 ;;
        uws) echo 9304 ;;
        fanout-uring) echo 9305 ;;
    esac
}

# fanout's --io for a server name.
io_of() {
    case "$1" in
        fanout-uring) echo uring ;;
        *) echo epoll ;;
    esac
}

# start_server NAME [echo|pubsub]: the server for the connect and echo phases, or the
# pub/sub server of the fan-out phase.
start_server() {
    local name=$1 kind=${2:-echo} port
    port=$(port_of "$name")
    case "$name-$kind" in
        fanout-echo|fanout-uring-echo) "${PIN_SERVER[@]}" target/release/fanout serve --listen "127.0.0.1:$port" --shards "$THREADS" \
                    --ping-interval 0 --io "$(io_of "$name")" 2>"$WORK/$name.log" & ;;
        fanout-pubsub|fanout-uring-pubsub) "${PIN_SERVER[@]}" target/release/fanout serve --app push --listen "127.0.0.1:$port" \
                    --shards "$THREADS" --ping-interval 0 --publish-key "$KEY" --write-queue-limit 4MiB \
                    --io "$(io_of "$name")" 2>"$WORK/$name.log" & ;;
        tokio-tungstenite-echo) "${PIN_SERVER[@]}" "${PEERS[0]}" --listen "127.0.0.1:$port" --threads "$THREADS" 2>"$WORK/$name.log" & ;;
        fastwebsockets-echo) "${PIN_SERVER[@]}" "${PEERS[1]}" --listen "127.0.0.1:$port" --threads "$THREADS" 2>"$WORK/$name.log" & ;;
        # EchoServer says "Listening on port N" on stdout; it listens on every address.
        uws-echo) PORT=$port "${PIN_SERVER[@]}" "$UWS_ECHO" >"$WORK/$name.log" 2>&1 & ;;
        uws-pubsub) "${PIN_SERVER[@]}" "$UWS_PUBSUB" --port "$port" --publish-key "$KEY" 2>"$WORK/$name.log" & ;;
        *) echo "unknown server $name ($kind)" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    bench_wait_listening "$WORK/$name.log" "$SERVER_PID" || { echo "($name)" >&2; exit 1; }
}

stop_server() {
    bench_stop "$SERVER_PID"
    SERVER_PID=""
    sleep 1 # let TIME_WAIT settle a little between servers
}

# The server's "utime stime" in clock ticks (/proc/PID/stat fields 14 and 15).
proc_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo "0 0"; return; }
    stat=${stat##*) } # the command name may hold spaces
    # shellcheck disable=SC2086 # word splitting is the point
    set -- $stat
    echo "${12} ${13}"
}

# measure NAME PHASE ROUND CMD...: runs the client, with the server's CPU ticks read around it.
measure() {
    local name=$1 phase=$2 round=$3 before
    shift 3
    before=$(proc_ticks "$SERVER_PID")
    "$@" --server-pid "$SERVER_PID" --no-progress --json "$WORK/$name-$phase-$round.json" >&2 || true
    echo "$before $(proc_ticks "$SERVER_PID") $(getconf CLK_TCK)" >"$WORK/$name-$phase-$round.cpu"
}

wants() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

for round in $(seq "$ROUNDS"); do
    for name in $SERVERS; do
        port=$(port_of "$name")
        echo "round $round/$ROUNDS: $name" >&2
        if wants connect; then
            start_server "$name"
            # Several source addresses: the kernel's search for a free ephemeral port, not the
            # server, would otherwise bound the handshake rate past ~10k connections.
            measure "$name" connect "$round" "${PIN_LOAD[@]}" "$LOAD" connect --url "ws://127.0.0.1:$port/" \
                --connections "$CONNECTIONS" --duration "$HOLD" --source-ips 127.0.0.1-127.0.0.8
            stop_server
        fi
        if wants echo; then
            start_server "$name"
            measure "$name" echo "$round" "${PIN_LOAD[@]}" "$LOAD" echo --url "ws://127.0.0.1:$port/" \
                --connections "$ECHO_CONNECTIONS" --duration "$ECHO_DURATION" --pipeline 1 --message-size 64
            stop_server
        fi
        if wants fanout && case $name in fanout|fanout-uring|uws) true ;; *) false ;; esac; then
            start_server "$name" pubsub
            measure "$name" fanout "$round" "${PIN_LOAD[@]}" "$LOAD" fanout \
                --url "ws://127.0.0.1:$port/ws?topics=bench" --connections "$SUBSCRIBERS" --source-ips 127.0.0.1-127.0.0.8 \
                --publish-url "http://127.0.0.1:$port/publish/bench" --publish-header "Authorization: Bearer $KEY" \
                --publish-rate "$PUBLISH_RATE" --publish-count "$(awk -v r="$PUBLISH_RATE" -v t="$PUBLISH_SECONDS" 'BEGIN { printf "%d", r * t }')" \
                --message-size 100 --grace 2s
            stop_server
        fi
    done
done

python3 scripts/lib/bench_compare.py "$WORK" "$OUT/$STAMP-compare.json" "$CONNECTIONS" "$ECHO_CONNECTIONS" "$ROUNDS" \
    "$SERVERS" "$SUBSCRIBERS"
