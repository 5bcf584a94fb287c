#!/usr/bin/env bash
# Per-topic history and recovery under churn, with fanout-load fanout --churn: subscribers keep
# dropping their sockets (half of them reset) and coming back with the last position they saw.
#   local    one node (in-process history), --subscribers subscribers, --rate publishes/s for
#            --seconds, --churn fraction of subscribers reconnecting each second;
#   redis    --nodes nodes on one port joined by a real redis-server (history in Redis
#            Streams), the same load: clients come back to whichever node the kernel picks;
#   restart  the Redis nodes, redis-server restarted while publishing (no churn: Redis without
#            persistence loses the history, so clients away then could not recover it): 0 lost
#            among publishes answered 200, on every node;
#   memory   bytes per history entry (examples/history_memory.rs).
# Each reports lost / duplicated (per logical subscriber, accepted publishes only),
# reconnects, recoveries by outcome and recovery time. Installs redis-server if missing.
# Writes bench/results/<date>-history.json and prints the figures.
#
# usage: scripts/bench-history.sh [--phases local,redis,restart,memory] [--subscribers 19000]
#          [--rate 20] [--seconds 60] [--churn 0.05] [--nodes 2] [--port 9680] [--redis-port 6392]
set -euo pipefail
cd "$(dirname "$0")/.."

PHASES=local,redis,restart,memory
SUBS=19000
RATE=20
SECS=60
CHURN=0.05
NODES=2
PORT=9680
REDIS_PORT=6392
while [ $# -gt 0 ]; do
    case "$1" in
        --phases) PHASES=$2; shift 2 ;;
        --subscribers) SUBS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --churn) CHURN=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --redis-port) REDIS_PORT=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_need_redis
bench_binaries missing
OUT=bench/results
mkdir -p "$OUT"
BASE="$OUT/$(date -u +%Y%m%d-%H%M%S)-history"
WORK=$(mktemp -d)
KEY="bench-$RANDOM$RANDOM"
REDIS_PID=""
NODE_PIDS=()
cleanup() {
    bench_stop "${NODE_PIDS[@]}" "$REDIS_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
FACTS="$BASE-facts.jsonl"
: >"$FACTS"
now_ms() { date +%s%3N; }

redis_start() {
    bench_redis_start "$REDIS_PORT" "$WORK/redis.log"
    REDIS_PID=$BENCH_REDIS_PID
}

# nodes_start N SHARDS [--broker]
nodes_start() {
    local n=$1 shards=$2 broker=${3:-}
    local args=(--app push --listen "127.0.0.1:$PORT" --shards "$shards" --publish-key "$KEY"
        --envelope --history-size 5000 --max-recovery 5000 --write-queue-limit 8MiB)
    [ -n "$broker" ] && args+=(--broker "redis://127.0.0.1:$REDIS_PORT")
    bench_nodes_start "$n" "$WORK" "${args[@]}"
    NODE_PIDS=("${BENCH_NODE_PIDS[@]}")
}

nodes_stop() {
    bench_stop "${NODE_PIDS[@]}"
    NODE_PIDS=()
}

# load NAME COUNT [CHURN]: one fanout-load run against the nodes (churning if CHURN given).
load() {
    local name=$1 count=$2 churn=${3:-} pids=() p
    for p in "${NODE_PIDS[@]}"; do pids+=(--server-pid "$p"); done
    [ -n "$churn" ] && pids+=(--churn "$churn")
    target/release/fanout-load fanout --url "ws://127.0.0.1:$PORT/ws?topics=bench" \
        --connections "$SUBS" --processes auto --source-ips 127.0.0.1-127.0.0.4 \
        --publish-url "http://127.0.0.1:$PORT/publish/bench" --publish-header "Authorization: Bearer $KEY" \
        --publish-count "$count" --publish-rate "$RATE" --message-size 100 --grace 5s \
        "${pids[@]}" --no-progress --json "$BASE-$name.json" >"$WORK/$name.txt" 2>&1 || true
    if [ ! -s "$BASE-$name.json" ]; then
        echo "fanout-load wrote no report for $name:" >&2
        tail -20 "$WORK/$name.txt" >&2
    fi
    grep -E "fanout:|churn|recover|lost|duplicated|refused" "$WORK/$name.txt" | head -12 >&2 || true
}

COUNT=$((RATE * SECS))
if [[ ",$PHASES," == *,local,* ]]; then
    echo "== local: 1 node, $SUBS subscribers, $RATE/s for $SECS s, churn $CHURN" >&2
    nodes_start 1 2
    load local "$COUNT" "$CHURN"
    nodes_stop
fi
if [[ ",$PHASES," == *,redis,* || ",$PHASES," == *,restart,* ]]; then
    redis_start
fi
if [[ ",$PHASES," == *,redis,* ]]; then
    echo "== redis: $NODES nodes + Redis, $SUBS subscribers, $RATE/s for $SECS s, churn $CHURN" >&2
    nodes_start "$NODES" 1 --broker
    load redis "$COUNT" "$CHURN"
    nodes_stop
fi
if [[ ",$PHASES," == *,restart,* ]]; then
    echo "== restart: $NODES nodes + Redis, redis-server restarted while publishing" >&2
    nodes_start "$NODES" 1 --broker
    load restart "$((RATE * 30))" &
    LOAD_PID=$!
    sleep 20
    down_ms=$(now_ms)
    bench_stop "$REDIS_PID"
    sleep 1
    redis_start
    ready_ms=$(now_ms)
    wait "$LOAD_PID" || true
    printf '{"restart":{"redis_stopped_unix_ms":%s,"redis_ready_unix_ms":%s}}\n' "$down_ms" "$ready_ms" >>"$FACTS"
    nodes_stop
fi
if [[ ",$PHASES," == *,memory,* ]]; then
    echo "== memory: 10,000 topics x 100 entries of 100 bytes" >&2
    cargo run --release --quiet --example history_memory -- 10000 100 100 "$BASE-memory.json" >&2
fi

python3 scripts/lib/bench_history.py "$BASE"
