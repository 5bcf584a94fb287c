# shellcheck shell=bash
# What the bench scripts share; sourced by them (from the repository root).
#   bench_binaries missing|always
#                              build target/release/{fanout,fanout-load} when missing, or always
#   bench_stop PID...          SIGTERM, up to 5 s to exit each, then SIGKILL
#   bench_wait_listening LOG PID
#                              up to 10 s for the server to log "listening on" (any case); if it exits or
#                              never does, prints its log and returns 1

bench_binaries() {
    if [ "$1" = always ] || [ ! -x target/release/fanout ] || [ ! -x target/release/fanout-load ]; then
        echo "== building release binaries" >&2
        cargo build --release --workspace >&2
    fi
}

bench_stop() {
    local pid
    for pid in "$@"; do
        if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "$@"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

bench_wait_listening() {
    local log=$1 pid=$2
    for _ in $(seq 200); do
        grep -qi "listening on" "$log" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "the server did not start; its log ($log):" >&2
    cat "$log" >&2
    return 1
}

# The push nodes and Redis of bench-broker.sh and bench-history.sh (and cluster.sh's install):
#   bench_need_redis           apt-get install redis-server when it is missing
#   bench_redis_start PORT LOG a redis-server without persistence on 127.0.0.1:PORT, up to 4 s
#                              to answer PING; its pid in BENCH_REDIS_PID
#   bench_nodes_start N LOGDIR ARGS...
#                              N `target/release/fanout serve ARGS` (one port, SO_REUSEPORT),
#                              each up; with --broker, until N /healthz answers say ok; their
#                              pids in BENCH_NODE_PIDS

bench_need_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "== installing redis-server" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
}

bench_redis_start() {
    local port=$1 log=$2
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --protected-mode no >"$log" 2>&1 &
    BENCH_REDIS_PID=$!  # read by the scripts that source this file
    export BENCH_REDIS_PID
    for _ in $(seq 200); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.02
    done
    echo "redis-server did not start; its log ($log):" >&2
    cat "$log" >&2
    return 1
}

bench_nodes_start() {
    local n=$1 dir=$2 port="" broker="" a i
    shift 2
    for a in "$@"; do
        case "$a" in
            127.0.0.1:*) port=${a#127.0.0.1:} ;;
            --broker) broker=1 ;;
        esac
    done
    BENCH_NODE_PIDS=()
    for i in $(seq "$n"); do
        target/release/fanout serve "$@" 2>"$dir/node$i.log" &
        BENCH_NODE_PIDS+=($!)
        bench_wait_listening "$dir/node$i.log" "$!"
    done
    if [ -n "$broker" ] && [ -n "$port" ]; then
        for _ in $(seq 100); do
            local ok=0
            for _ in $(seq "$n"); do
                curl -s "http://127.0.0.1:$port/healthz" | grep -qx ok && ok=$((ok + 1))
            done
            [ "$ok" -eq "$n" ] && break
            sleep 0.05
        done
    fi
}
