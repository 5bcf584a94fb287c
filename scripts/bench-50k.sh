#!/usr/bin/env bash
# The 50k scenario, one command after `cargo build --release`:
#   1. checks the OS limits for N connections and applies what is LOW (saving the previous
#      values; they are restored when the script ends, unless --keep-limits);
#   2. starts fanout as as many processes as RLIMIT_NOFILE requires, all on one port
#      (SO_REUSEPORT);
#   3. fanout-load connect: N connections, held for --hold (default 60 s), server RSS and CPU
#      sampled (bytes per idle connection, CPU per handshake, idle CPU);
#   4. fanout-load echo across N connections at a light rate (default 0.2 msg/s each);
#   5. writes bench/results/<date>-50k.json, a markdown report and latency plots, and stops
#      everything it started, also on failure or Ctrl-C.
#
# usage: scripts/bench-50k.sh [--connections N] [--hold D] [--echo-duration D] [--echo-rate R]
#                             [--port P] [--keep-limits] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

N=50000
HOLD=60s
ECHO_DURATION=20s
ECHO_RATE=0.2
PORT=9600
KEEP_LIMITS=0
OUT=bench/results
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --echo-rate) ECHO_RATE=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --keep-limits) KEEP_LIMITS=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

FANOUT=target/release/fanout
LOAD=target/release/fanout-load
if [ ! -x "$FANOUT" ] || [ ! -x "$LOAD" ]; then
    echo "building release binaries" >&2
    cargo build --release --workspace >&2
fi
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)
BASE="$OUT/$STAMP-50k"
WORK=$(mktemp -d)
STATE="$WORK/limits.state"
SERVER_PIDS=()
START=$(date +%s)

cleanup() {
    local rc=$?
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -f "$STATE" ]; then
        if [ "$KEEP_LIMITS" = 1 ]; then
            mkdir -p "$OUT"
            cp "$STATE" "$BASE.limits.state"
            echo "limits kept; restore them with: scripts/tune-limits.sh revert --state $BASE.limits.state" >&2
        else
            echo "== restoring the OS limits" >&2
            scripts/tune-limits.sh revert --state "$STATE" >&2 || rc=1
        fi
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

echo "== checking OS limits for $N connections" >&2
if ! scripts/tune-limits.sh check --connections "$N" --json "$WORK/limits-before.json" >&2; then
    echo "== raising what is LOW (restored at the end)" >&2
    scripts/tune-limits.sh apply --connections "$N" --state "$STATE" >&2
    if ! scripts/tune-limits.sh check --connections "$N" --json "$WORK/limits-after.json" >&2; then
        echo "limits still block $N connections (see above)" >&2
        exit 1
    fi
fi

SOFT=$(ulimit -n)
PER_PROCESS=$(( SOFT - 64 ))
PROCS=$(( (N + PER_PROCESS - 1) / PER_PROCESS ))
PORTS=$(awk '{print $2 - $1 + 1}' /proc/sys/net/ipv4/ip_local_port_range)
SOURCES=$(( (N + PORTS - 1) / PORTS + 1 ))
if [ "$SOURCES" -gt 250 ]; then SOURCES=250; fi
echo "== RLIMIT_NOFILE $SOFT: $PROCS server process(es) on port $PORT; $SOURCES source address(es)" >&2

for i in $(seq "$PROCS"); do
    "$FANOUT" serve --listen "127.0.0.1:$PORT" --shards 1 --max-connections "$PER_PROCESS" \
        2>"$WORK/server-$i.log" &
    SERVER_PIDS+=("$!")
done
for i in $(seq "$PROCS"); do
    for _ in $(seq 100); do
        if grep -q "listening on" "$WORK/server-$i.log" 2>/dev/null; then break; fi
        sleep 0.05
    done
    grep -q "listening on" "$WORK/server-$i.log" || { cat "$WORK/server-$i.log" >&2; exit 1; }
done
PID_ARGS=()
for pid in "${SERVER_PIDS[@]}"; do PID_ARGS+=(--server-pid "$pid"); done

echo "== connect: $N connections, held $HOLD" >&2
set +e
"$LOAD" connect --url "ws://127.0.0.1:$PORT/" --connections "$N" --duration "$HOLD" \
    --source-ips "127.0.0.1-127.0.0.$SOURCES" --processes auto "${PID_ARGS[@]}" \
    --json "$BASE-connect.json" --hgrm "$BASE-connect.hgrm" --plot "$BASE-connect.svg" \
    | tee "$WORK/connect.txt"
CONNECT_RC=${PIPESTATUS[0]}

echo "== echo: $N connections at $ECHO_RATE msg/s each for $ECHO_DURATION" >&2
"$LOAD" echo --url "ws://127.0.0.1:$PORT/" --connections "$N" --duration "$ECHO_DURATION" \
    --rate "$ECHO_RATE" --message-size 64 \
    --source-ips "127.0.0.1-127.0.0.$SOURCES" --processes auto "${PID_ARGS[@]}" \
    --json "$BASE-echo.json" --hgrm "$BASE-echo.hgrm" --plot "$BASE-echo.svg" \
    | tee "$WORK/echo.txt"
ECHO_RC=${PIPESTATUS[0]}
set -e
END=$(date +%s)

python3 - "$BASE" "$N" "$PROCS" "$SOURCES" "$((END - START))" "$CONNECT_RC" "$ECHO_RC" \
    "$WORK/limits-before.json" <<'PY'
import json, sys, os, platform
base, n, procs, sources, secs, crc, erc, limits = sys.argv[1:9]
def load(p):
    try:
        with open(p) as f: return json.load(f)
    except Exception: return None
c, e = load(base + "-connect.json"), load(base + "-echo.json")
lim = load(limits)
def lat(r, name):
    return (r or {}).get("latency_ms", {}).get(name, {})
rep = {
    "connections": int(n), "server_processes": int(procs), "source_addresses": int(sources),
    "wall_seconds": int(secs), "kernel": platform.release(),
    "connect": {
        "established": (c or {}).get("established"), "failed": (c or {}).get("failed"),
        "failed_total": (c or {}).get("failed_total"), "dropped": (c or {}).get("dropped"),
        "ramp_seconds": (c or {}).get("ramp_seconds"),
        "handshake_ms": lat(c, "handshake"), "open_ms": lat(c, "open"), "connect_ms": lat(c, "connect"),
        "server_rss_bytes_per_connection": (c or {}).get("server_rss_bytes_per_connection"),
        "server_cpu_us_per_handshake": (c or {}).get("server_cpu_us_per_handshake"),
        "server_idle_cpu_cores": ((c or {}).get("server") or {}).get("cpu_cores_run"),
        "loadgen_cpu_seconds": (c or {}).get("loadgen_cpu_seconds"),
        "exit_code": int(crc),
    },
    "echo": {
        "established": (e or {}).get("established"), "failed_total": (e or {}).get("failed_total"),
        "messages": (e or {}).get("messages"), "rtt_ms": lat(e, "rtt"),
        "server_cpu_cores": ((e or {}).get("server") or {}).get("cpu_cores_run"),
        "exit_code": int(erc),
    },
    "limits_before": lim,
}
with open(base + ".json", "w") as f: json.dump(rep, f, indent=2)
def g(d, k, fmt="{}"):
    v = d.get(k) if d else None
    return "-" if v is None else fmt.format(v)
cc, ee = rep["connect"], rep["echo"]
md = f"""# fanout 50k scenario ({os.path.basename(base)})

{n} connections to {procs} fanout process(es) sharing one port (SO_REUSEPORT), from
fanout-load over {sources} loopback source address(es); whole run {secs} s.

| figure | value |
| --- | --- |
| established / failed | {g(cc,'established')} / {g(cc,'failed_total')} |
| dropped while held | {cc['dropped'] or 0} |
| ramp | {g(cc,'ramp_seconds','{:.1f}')} s |
| handshake p50 / p99 / max (ms) | {g(cc['handshake_ms'],'p50','{:.2f}')} / {g(cc['handshake_ms'],'p99','{:.2f}')} / {g(cc['handshake_ms'],'max','{:.2f}')} |
| connect-to-open p50 / p99 (ms) | {g(cc['open_ms'],'p50','{:.2f}')} / {g(cc['open_ms'],'p99','{:.2f}')} |
| server RSS per idle connection | {g(cc,'server_rss_bytes_per_connection','{:.0f}')} B |
| server CPU per handshake | {g(cc,'server_cpu_us_per_handshake','{:.1f}')} us |
| server CPU while idle (all processes) | {g(cc,'server_idle_cpu_cores','{:.3f}')} cores |
| echo: established / failed | {g(ee,'established')} / {g(ee,'failed_total')} |
| echo: messages received/s | {g(ee['messages'] or {},'received_per_second','{:.0f}')} |
| echo RTT p50 / p99 / max (ms) | {g(ee['rtt_ms'],'p50','{:.2f}')} / {g(ee['rtt_ms'],'p99','{:.2f}')} / {g(ee['rtt_ms'],'max','{:.2f}')} |
| server CPU under echo | {g(ee,'server_cpu_cores','{:.3f}')} cores |

Plots: `{os.path.basename(base)}-connect.svg`, `{os.path.basename(base)}-echo.svg`;
HdrHistogram text: `*.hgrm`; raw reports: `*-connect.json`, `*-echo.json`.
"""
with open(base + ".md", "w") as f: f.write(md)
print(md)
print(f"wrote {base}.json and {base}.md")
PY
if [ "$CONNECT_RC" -ne 0 ] || [ "$ECHO_RC" -ne 0 ]; then
    echo "some connections failed or dropped (exit codes connect=$CONNECT_RC echo=$ECHO_RC)" >&2
    exit 1
fi
