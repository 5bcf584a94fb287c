#!/usr/bin/env bash
# The push server across processes, joined by a real redis-server (--broker):
#   compare  one node, --subscribers-one subscribers (default 19,000), burst and sustained
#            publishes, without and with --broker, interleaved rounds: delivery p99 and
#            server CPU per delivery, as ratios;
#   cluster  --nodes fanout processes on one port (SO_REUSEPORT) with --broker, --subscribers
#            spread over them (default 50,000), --count publishes at --rate to any node:
#            delivered / expected / lost / duplicated, delivery p50 / p99 / max,
#            deliveries/s, server and Redis CPU per delivery;
#   restart  the same nodes, --restart-subscribers subscribers, publishes at --rate while
#            redis-server is restarted: how long after Redis accepts connections publishes
#            succeed again, and losses among publishes answered 200, before and after every
#            node resubscribed.
# Installs redis-server if missing (apt). Writes bench/results/<date>-broker.json (+ the
# fanout-load JSON of each run) and prints the figures.
#
# usage: scripts/bench-broker.sh [--phases compare,cluster,restart] [--nodes 3]
#          [--subscribers 50000] [--subscribers-one 19000] [--restart-subscribers 6000]
#          [--count 300] [--rate 5] [--rounds 3] [--port 9660] [--redis-port 6390]
set -euo pipefail
cd "$(dirname "$0")/.."

PHASES=compare,cluster,restart
NODES=3
SUBS=50000
SUBS_ONE=19000
SUBS_RESTART=6000
COUNT=300
RATE=5
ROUNDS=3
PORT=9660
REDIS_PORT=6390
while [ $# -gt 0 ]; do
    case "$1" in
        --phases) PHASES=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --subscribers) SUBS=$2; shift 2 ;;
        --subscribers-one) SUBS_ONE=$2; shift 2 ;;
        --restart-subscribers) SUBS_RESTART=$2; shift 2 ;;
        --count) COUNT=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --redis-port) REDIS_PORT=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_need_redis
bench_binaries missing
OUT=bench/results
mkdir -p "$OUT"
BASE="$OUT/$(date -u +%Y%m%d-%H%M%S)-broker"
WORK=$(mktemp -d)
KEY="bench-$RANDOM$RANDOM"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
REDIS_PID=""
NODE_PIDS=()
cleanup() {
    bench_stop "${NODE_PIDS[@]}" "$REDIS_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The phases' facts for the report, one JSON object a line.
FACTS="$BASE-facts.jsonl"
: >"$FACTS"

now_ms() { date +%s%3N; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

redis_start() {
    bench_redis_start "$REDIS_PORT" "$WORK/redis.log"
    REDIS_PID=$BENCH_REDIS_PID
}

redis_stop() {
    bench_stop "$REDIS_PID"
    REDIS_PID=""
}

# nodes_start N SHARDS [--broker]: N fanout processes on one port.
nodes_start() {
    local n=$1 shards=$2 broker=${3:-}
    local args=(--app push --listen "127.0.0.1:$PORT" --shards "$shards" --publish-key "$KEY"
        --write-queue-limit 4MiB)
    [ -n "$broker" ] && args+=(--broker "$REDIS_URL")
    bench_nodes_start "$n" "$WORK" "${args[@]}"
    NODE_PIDS=("${BENCH_NODE_PIDS[@]}")
}

nodes_stop() {
    bench_stop "${NODE_PIDS[@]}"
    NODE_PIDS=()
}

pid_args() {
    local p
    for p in "${NODE_PIDS[@]}"; do printf -- '--server-pid\n%s\n' "$p"; done
}

# load NAME SUBSCRIBERS COUNT RATE: one fanout-load run against the nodes.
load() {
    local name=$1 subs=$2 count=$3 rate=$4
    local pids
    mapfile -t pids < <(pid_args)
    local r0 r1
    r0=$( [ -n "$REDIS_PID" ] && cpu_ticks "$REDIS_PID" || echo 0)
    target/release/fanout-load fanout --url "ws://127.0.0.1:$PORT/ws?topics=bench" \
        --connections "$subs" --processes auto --source-ips 127.0.0.1-127.0.0.4 \
        --publish-url "http://127.0.0.1:$PORT/publish/bench" --publish-header "Authorization: Bearer $KEY" \
        --publish-count "$count" --publish-rate "$rate" --message-size 100 --grace 3s \
        "${pids[@]}" --no-progress --json "$BASE-$name.json" >"$WORK/$name.txt" 2>&1 || true
    r1=$( [ -n "$REDIS_PID" ] && cpu_ticks "$REDIS_PID" || echo 0)
    printf '{"run":"%s","redis_cpu_seconds":%s}\n' "$name" \
        "$(awk -v a="$r0" -v b="$r1" -v hz="$(getconf CLK_TCK)" 'BEGIN{print (b-a)/hz}')" >>"$FACTS"
    if [ ! -s "$BASE-$name.json" ]; then
        echo "fanout-load wrote no report for $name:" >&2
        tail -20 "$WORK/$name.txt" >&2
    fi
    grep -E "fanout:|delivery|lost|publish" "$WORK/$name.txt" | head -8 >&2 || true
}

redis_start

if [[ ",$PHASES," == *,compare,* ]]; then
    for round in $(seq "$ROUNDS"); do
        for mode in local broker; do
            echo "== compare round $round, $mode: 1 node, $SUBS_ONE subscribers" >&2
            if [ "$mode" = broker ]; then nodes_start 1 2 --broker; else nodes_start 1 2; fi
            load "compare-$mode-burst-$round" "$SUBS_ONE" 1 1
            load "compare-$mode-sustained-$round" "$SUBS_ONE" 400 20
            nodes_stop
        done
    done
fi

if [[ ",$PHASES," == *,cluster,* ]]; then
    echo "== cluster: $NODES nodes, $SUBS subscribers, $COUNT publishes at $RATE/s" >&2
    nodes_start "$NODES" 1 --broker
    load cluster "$SUBS" "$COUNT" "$RATE"
    nodes_stop
fi

if [[ ",$PHASES," == *,restart,* ]]; then
    echo "== restart: $NODES nodes, $SUBS_RESTART subscribers, redis-server restarted mid-run" >&2
    nodes_start "$NODES" 1 --broker
    RCOUNT=$((RATE * 30))
    load restart "$SUBS_RESTART" "$RCOUNT" "$RATE" &
    LOAD_PID=$!
    # The publisher starts once every subscriber holds; restart Redis 10 s into publishing.
    sleep 15
    down_ms=$(now_ms)
    redis_stop
    sleep 1
    redis_start
    ready_ms=$(now_ms)
    # Until every node has subscribed again.
    resub_ms=""
    for _ in $(seq 500); do
        n=$(redis-cli -p "$REDIS_PORT" pubsub numsub fanout:bench | tail -1)
        if [ "${n:-0}" -ge "$NODES" ]; then resub_ms=$(now_ms); break; fi
        sleep 0.01
    done
    wait "$LOAD_PID" || true
    printf '{"restart":{"redis_stopped_unix_ms":%s,"redis_ready_unix_ms":%s,"all_resubscribed_unix_ms":%s}}\n' \
        "$down_ms" "$ready_ms" "${resub_ms:-null}" >>"$FACTS"
    nodes_stop
fi

python3 scripts/lib/bench_broker.py "$BASE" "$RATE" "$NODES"
