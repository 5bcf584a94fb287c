#!/usr/bin/env bash
# A local push cluster in one command: a redis-server and N fanout processes sharing one port
# (SO_REUSEPORT: the kernel spreads connections over them), joined by --broker. Subscribe and
# publish on the port from anywhere on this machine; every subscriber on every node gets every
# publish. Ctrl-C stops everything. Installs redis-server if missing (apt).
#
# usage: scripts/cluster.sh [--nodes 3] [--port 9001] [--redis-port 6379] [--publish-key KEY]
#                           [-- extra fanout serve flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=3
PORT=9001
REDIS_PORT=6379
KEY=s3cret
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --redis-port) REDIS_PORT=$2; shift 2 ;;
        --publish-key) KEY=$2; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_need_redis
bench_binaries missing
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    echo "== stopping" >&2
    bench_stop "${PIDS[@]}"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
    echo "== using the redis-server already on port $REDIS_PORT" >&2
else
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
        sleep 0.02
    done
    echo "== redis-server on 127.0.0.1:$REDIS_PORT (pid ${PIDS[0]})" >&2
fi
for i in $(seq "$NODES"); do
    target/release/fanout serve --app push --listen "127.0.0.1:$PORT" --shards 1 \
        --publish-key "$KEY" --allow-ws-publish --broker "redis://127.0.0.1:$REDIS_PORT" \
        "${EXTRA[@]}" 2>"$WORK/node$i.log" &
    PIDS+=($!)
    bench_wait_listening "$WORK/node$i.log" "$!"
    echo "== node $i: pid $! on 127.0.0.1:$PORT (log: $WORK/node$i.log)" >&2
done
cat >&2 <<EOF

$NODES nodes share 127.0.0.1:$PORT. Try, in other terminals:
  subscribe:  fanout-load fanout ... or any WebSocket client on ws://127.0.0.1:$PORT/ws?topics=news
  publish:    curl -H 'Authorization: Bearer $KEY' -H 'Content-Type: text/plain' \\
                --data hello http://127.0.0.1:$PORT/publish/news
              (answers {"topic":"news","nodes":N}: N nodes had subscribers)
  health:     curl http://127.0.0.1:$PORT/healthz ; curl http://127.0.0.1:$PORT/metrics
  in Redis:   redis-cli -p $REDIS_PORT pubsub channels 'fanout:*'
Ctrl-C stops the cluster.
EOF
wait
