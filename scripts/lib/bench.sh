# shellcheck shell=bash
# What the bench scripts share; sourced by them (from the repository root).
#   bench_binaries missing|always
#                              build target/release/{fanout,fanout-load} when missing, or always
#   bench_stop PID...          SIGTERM, up to 5 s to exit each, then SIGKILL
#   bench_wait_listening LOG PID
#                              up to 10 s for the server to log "listening on"; if it exits or
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
        grep -q "listening on" "$log" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "the server did not start; its log ($log):" >&2
    cat "$log" >&2
    return 1
}
