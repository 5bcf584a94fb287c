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
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"exp": int(time.time()) + 86400, "sub": "bench-user-12345",
                  "sub_topics": ["news.*"]}).encode())
s = b(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)

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

python3 - "$WORK" "$OUT/$STAMP-auth.json" "$N" "$ROUNDS" "$SHARDS" "$MODES" <<'PY'
import json, os, re, statistics, sys
work, out_path, n, rounds, shards, modes = sys.argv[1:]
out = {"connections": int(n), "rounds": int(rounds), "shards": int(shards),
       "cpu": os.cpu_count(), "end_to_end": {}, "criterion_ns": {}}
for mode in modes.split():
    cpu, rate, rss, failed = [], [], [], 0
    for r in range(1, int(rounds) + 1):
        try:
            with open(f"{work}/{mode}-{r}.json") as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        failed += d["failed_total"]
        if d.get("server_cpu_us_per_handshake") is not None:
            cpu.append(d["server_cpu_us_per_handshake"])
        if d.get("server_rss_bytes_per_connection") is not None:
            rss.append(d["server_rss_bytes_per_connection"])
        if d.get("ramp_seconds"):
            rate.append(d["established"] / d["ramp_seconds"])
    out["end_to_end"][mode] = {
        "server_cpu_us_per_handshake_median": statistics.median(cpu) if cpu else None,
        "server_cpu_us_per_handshake_runs": cpu,
        "handshakes_per_second_median": statistics.median(rate) if rate else None,
        "server_rss_bytes_per_connection_median": statistics.median(rss) if rss else None,
        "failed_total": failed,
    }
base = out["end_to_end"].get("plain", {}).get("server_cpu_us_per_handshake_median")
for mode, v in out["end_to_end"].items():
    m = v["server_cpu_us_per_handshake_median"]
    if base is not None and m is not None:
        v["extra_us_vs_plain"] = round(m - base, 2)
crit = f"{work}/criterion.txt"
if os.path.exists(crit):
    text = open(crit).read()
    unit = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6}
    for m in re.finditer(r"^(\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text, re.M):
        out["criterion_ns"][m.group(1)] = round(float(m.group(2)) * unit.get(m.group(3), float("nan")), 1)
with open(out_path, "w") as f:
    json.dump(out, f, indent=2)
print(json.dumps(out, indent=2))
print(f"wrote {out_path}", file=sys.stderr)
PY
