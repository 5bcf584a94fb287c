#!/usr/bin/env bash
# How the load generator (fanout-load) itself does, in one run:
#   (a) connection rate: fanout-load connect opens N connections (default 10,000) to fanout, and
#       so does a plain tokio-tungstenite client (bench/peers tokio-tungstenite-client,
#       connect_async, at most 1000 handshakes in flight, as fanout-load's default
#       --max-in-flight); opened/s each (fanout-load: opened / ramp_seconds; the client: opened /
#       seconds from the first connect start to the last open). They alternate going first.
#   (b) CPU: fanout-load echo with 1,000 connections for 10 s, against each of fanout,
#       fastwebsockets and tokio-tungstenite (bench/peers echo servers, 2 threads each, as
#       fanout's 2 shards), in each of the echo modes:
#         pipeline   --pipeline 1: flat out, every answer sends the next message
#         rate       --rate 100: 100 messages/s per connection, waking for every event
#         rate-tick  --rate 100 --tick 100us: the same rate, reading and sending once per tick
#                    (round trips timed by the kernel's receive timestamps); rate-tick:LEN for
#                    another tick length, e.g. rate-tick:250us
#       the generator's CPU seconds and the server's over the same window, the echo run
#       between ramp and close (loadgen_cpu_seconds_run, and the server's cpu_seconds_run
#       sampled through --server-pid), and their ratio. Servers rotate order per round.
# Every server is started once, for the whole run, with --ping-interval 0 for fanout.
# Between runs it sleeps (default 2 s) so closed connections clear, and measures the machine's
# busy CPU meanwhile (the load from anything else). Prints a table, medians and ratios, writes
# bench/results/<date>-loadgen.json.
#
# usage: scripts/bench-loadgen.sh [--connections N] [--rounds R] [--port P] [--concurrency C]
#                                 [--echo-connections N] [--echo-duration D] [--gap SECONDS]
#                                 [--echo-servers "fanout fastwebsockets tokio-tungstenite"]
#                                 [--echo-modes "pipeline rate rate-tick"] [--no-batch-io]
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=10000
ROUNDS=3
PORT=9311
CONCURRENCY=1000
ECHO_CONNECTIONS=1000
ECHO_DURATION=10s
GAP=2
ECHO_SERVERS="fanout fastwebsockets tokio-tungstenite"
ECHO_MODES="pipeline rate rate-tick"
BATCH_FLAG=()
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNECTIONS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --echo-connections) ECHO_CONNECTIONS=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --gap) GAP=$2; shift 2 ;;
        --echo-servers) ECHO_SERVERS=$2; shift 2 ;;
        --echo-modes) ECHO_MODES=$2; shift 2 ;;
        --no-batch-io) BATCH_FLAG=(--no-batch-io); shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

mode_args() {
    case "$1" in
        pipeline) echo "--pipeline 1" ;;
        rate) echo "--rate 100" ;;
        rate-tick) echo "--rate 100 --tick 100us" ;;
        rate-tick:?*) echo "--rate 100 --tick ${1#rate-tick:}" ;;
        *) echo "bench-loadgen: unknown echo mode $1 (pipeline, rate, rate-tick, rate-tick:LEN)" >&2; return 1 ;;
    esac
}
MODES_TSV=""
for mode in $ECHO_MODES; do
    args=$(mode_args "$mode") || exit 2
    MODES_TSV+="$mode"$'\t'"$args"$'\n'
done

LOAD=target/release/fanout-load
OUT=bench/results
WORK=$(mktemp -d)
CHILD_PID=""
declare -A SPID=() SPORT=()

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

cleanup() {
    trap - EXIT INT TERM
    bench_stop "$CHILD_PID" "${SPID[@]}"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "bench-loadgen: interrupted" >&2; exit 130' INT TERM

bench_binaries always
mapfile -t PEERS < <(scripts/build-peers.sh)
if [ "${#PEERS[@]}" -lt 3 ] || [ ! -x "${PEERS[2]}" ]; then
    echo "bench-loadgen: scripts/build-peers.sh did not give the three peer binaries" >&2
    exit 1
fi
CLIENT=${PEERS[2]}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)

# Runs a command in the background and waits for it, so that a signal to this script reaches
# the trap at once (bash defers traps while a foreground child runs) and the trap can stop it.
# Returns the command's exit status.
run_child() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

# Machine-wide busy CPU (cores) over the next $1 seconds, from /proc/stat; while nothing of
# ours is running this is the load from everything else.
busy_cores_over() {
    local a b
    read -r -a a < <(head -n1 /proc/stat)
    sleep "$1"
    read -r -a b < <(head -n1 /proc/stat)
    # cpu user nice system idle iowait irq softirq steal
    local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
    local total=$(( busy + (b[4]+b[5]) - (a[4]+a[5]) ))
    awk -v b="$busy" -v t="$total" -v n="$(nproc)" 'BEGIN { printf "%.2f", (t > 0 ? b / t * n : 0) }'
}

# Sleep between runs; log the background load, TIME_WAIT sockets and load average.
GAPS="$WORK/gaps.tsv"
gap() {
    local label=$1 busy tw
    busy=$(busy_cores_over "$GAP")
    tw=$(ss -Htan state time-wait 2>/dev/null | wc -l)
    printf '%s\t%s\t%s\t%s\n' "$label" "$busy" "$tw" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$GAPS"
    echo "  idle gap: other load ${busy} cores, ${tw} sockets in TIME_WAIT, loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >&2
}

check_servers() {
    local name
    for name in "${!SPID[@]}"; do
        if ! kill -0 "${SPID[$name]}" 2>/dev/null; then
            echo "bench-loadgen: the $name server exited; its log:" >&2
            cat "$WORK/$name.log" >&2
            exit 1
        fi
    done
}

echo "uptime at start: $(uptime)" >&2
UPTIME_START=$(uptime)

# fanout always (the connect runs use it); the peers when an echo run needs them.
NEEDED="fanout"
for name in $ECHO_SERVERS; do
    case " $NEEDED " in *" $name "*) ;; *) NEEDED="$NEEDED $name" ;; esac
done
offset=0
for name in $NEEDED; do
    port=$((PORT + offset)); offset=$((offset + 1))
    case "$name" in
        fanout) target/release/fanout serve --listen "127.0.0.1:$port" --shards 2 --ping-interval 0 \
                    2>"$WORK/$name.log" & ;;
        fastwebsockets) "${PEERS[1]}" --listen "127.0.0.1:$port" --threads 2 2>"$WORK/$name.log" & ;;
        tokio-tungstenite) "${PEERS[0]}" --listen "127.0.0.1:$port" --threads 2 2>"$WORK/$name.log" & ;;
        *) echo "bench-loadgen: unknown server $name (fanout, fastwebsockets, tokio-tungstenite)" >&2; exit 2 ;;
    esac
    SPID[$name]=$!
    SPORT[$name]=$port
    bench_wait_listening "$WORK/$name.log" "${SPID[$name]}" || exit 1
    echo "$name: pid ${SPID[$name]} on ws://127.0.0.1:$port/" >&2
done
URL="ws://127.0.0.1:${SPORT[fanout]}/"

run_fanout_load_connect() {
    local round=$1
    echo "round $round/$ROUNDS: fanout-load connect, $CONNECTIONS connections" >&2
    run_child "$LOAD" connect --url "$URL" --connections "$CONNECTIONS" --duration 1s \
        --max-in-flight "$CONCURRENCY" --no-progress "${BATCH_FLAG[@]}" \
        --json "$WORK/fanout-load-connect-$round.json" \
        >"$WORK/fanout-load-connect-$round.txt" 2>&1 ||
        echo "  fanout-load connect exited with status $? (see figures)" >&2
    check_servers
    gap "after fanout-load connect $round"
}

run_tokio_client() {
    local round=$1
    echo "round $round/$ROUNDS: tokio-tungstenite-client, $CONNECTIONS connections" >&2
    run_child "$CLIENT" --url "$URL" --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" \
        --hold 1s >"$WORK/tokio-client-$round.json" 2>"$WORK/tokio-client-$round.log" ||
        echo "  tokio-tungstenite-client exited with status $?" >&2
    check_servers
    gap "after tokio client $round"
}

# The modes and their arguments (checked before anything starts), for the summary too.
printf '%s' "$MODES_TSV" >"$WORK/modes.tsv"

run_echo() {
    local round=$1 mode=$2 name=$3 args
    args=$(mode_args "$mode")
    echo "round $round/$ROUNDS: fanout-load echo ($mode: $args) against $name, $ECHO_CONNECTIONS connections, $ECHO_DURATION" >&2
    # shellcheck disable=SC2086 # the mode's arguments are words
    run_child "$LOAD" echo --url "ws://127.0.0.1:${SPORT[$name]}/" --connections "$ECHO_CONNECTIONS" \
        $args --duration "$ECHO_DURATION" --server-pid "${SPID[$name]}" --no-progress \
        "${BATCH_FLAG[@]}" --json "$WORK/echo-$mode-$name-$round.json" \
        >"$WORK/echo-$mode-$name-$round.txt" 2>&1 ||
        echo "  fanout-load echo exited with status $? (see figures)" >&2
    check_servers
    gap "after echo ($mode) against $name $round"
}

gap "before round 1"
read -r -a ECHO_LIST <<<"$ECHO_SERVERS"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
        run_fanout_load_connect "$round"
        run_tokio_client "$round"
    else
        run_tokio_client "$round"
        run_fanout_load_connect "$round"
    fi
    # Each round starts the echo runs with the next server.
    n=${#ECHO_LIST[@]}
    for mode in $ECHO_MODES; do
        for i in $(seq 0 $((n - 1))); do
            run_echo "$round" "$mode" "${ECHO_LIST[$(( (i + round - 1) % n ))]}"
        done
    done
done
UPTIME_END=$(uptime)
echo "uptime at end: $UPTIME_END" >&2

python3 scripts/lib/bench_loadgen.py "$WORK" "$OUT/$STAMP-loadgen.json" "$CONNECTIONS" "$CONCURRENCY" "$ECHO_CONNECTIONS" \
    "$ECHO_DURATION" "$ROUNDS" "$UPTIME_START" "$UPTIME_END" "$(nproc)" "$ECHO_SERVERS" \
    "${BATCH_FLAG[*]:-}" "$ECHO_MODES"
