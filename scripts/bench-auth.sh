#!/usr/bin/env bash
# The per-handshake cost of the upgrade policies, two ways:
#   1. criterion micro-benchmarks (benches/auth.rs): JWT verify, token lookup, per-IP limiter,
#      Origin match, in ns per call;
#   2. end to end: fanout-load connect opens N connections (token in the URL) against the
#      release server started plain, with --jwt-secret, and with --jwt-secret plus the per-IP
#      limits and an Origin list (limits high enough never to refuse); the server's CPU per
#      handshake (from /proc, via --server-pid) and the ramp rate, median of R rounds run
#      interleaved so the box's noise hits every mode alike; also the server's RSS per held
#      connection (a connection with a token keeps its claims).
# Writes bench/results/<date>-auth.json and prints the figures.
#
# usage: scripts/bench-auth.sh [--connections N] [--rounds R] [--shards K] [--port P] [--no-criterion]
set -euo pipefail
cd "$(dirname "$0")/.."

N=10000
ROUNDS=5
SHARDS=2
PORT=9660
CRITERION=1
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --no-criterion) CRITERION=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_binaries missing
OUT=bench/results
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

if [ "$CRITERION" = 1 ]; then
    echo "== criterion: benches/auth.rs" >&2
    cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3 2>&1 | tee "$WORK/criterion.txt" >&2
fi

SECRET="bench-secret-$RANDOM$RANDOM-0123456789abcdef0123"
# An HS256 token built with the standard library, as an issuer would.
TOKEN=$(python3 scripts/lib/bench_auth.py token "$SECRET")

declare -A FLAGS=(
    [plain]=""
    [jwt]="--jwt-secret $SECRET"
    [jwt_limits]="--jwt-secret $SECRET --max-conns-per-ip 1000000 --handshake-rate-per-ip 1000000000 --allowed-origins https://*.example.com"
)
MODES="plain jwt jwt_limits"

run_one() {
    local mode=$1 round=$2
    # shellcheck disable=SC2086 # FLAGS holds a list of words
    target/release/fanout serve --listen "127.0.0.1:$PORT" --shards "$SHARDS" ${FLAGS[$mode]} \
        2>"$WORK/server.log" &
    SERVER_PID=$!
    bench_wait_listening "$WORK/server.log" "$SERVER_PID"
    target/release/fanout-load connect --url "ws://127.0.0.1:$PORT/?token=$TOKEN" \
        --connections "$N" --duration 1s --source-ips 127.0.0.1-127.0.0.4 \
        --server-pid "$SERVER_PID" --no-progress --json "$WORK/$mode-$round.json" >"$WORK/$mode-$round.txt" || true
    bench_stop "$SERVER_PID"
    SERVER_PID=""
}

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        echo "== round $round/$ROUNDS: $mode ($N connections)" >&2
        run_one "$mode" "$round"
    done
done

python3 scripts/lib/bench_auth.py report "$WORK" "$OUT/$STAMP-auth.json" "$N" "$ROUNDS" "$SHARDS" "$MODES"
