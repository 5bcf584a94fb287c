#!/usr/bin/env bash
# How the load generator (fanout-load) itself does, against one fanout server, in one run:
#   (a) connection rate: fanout-load connect opens N connections (default 10,000), and so does a
#       plain tokio-tungstenite client (bench/peers tokio-tungstenite-client, connect_async, at
#       most 1000 handshakes in flight, as fanout-load's default --max-in-flight); opened/s each
#       (fanout-load: opened / ramp_seconds; the client: opened / seconds from the first connect
#       start to the last open). The two alternate which goes first from round to round.
#   (b) CPU: fanout-load echo with 1,000 connections, --pipeline 1, for 10 s; the generator's own
#       CPU seconds (loadgen_cpu_seconds: whole run, its ramp and close included) against the
#       server's (server.cpu_seconds_run: the echo run only, between ramp and close).
# Both clients see the same server (fanout serve --shards 2 --ping-interval 0), started once.
# Between runs it sleeps (default 2 s) so closed connections clear, and measures the machine's
# busy CPU meanwhile (the load from anything else). Prints a table, medians and ratios, writes
# bench/results/<date>-loadgen.json.
#
# usage: scripts/bench-loadgen.sh [--connections N] [--rounds R] [--port P] [--concurrency C]
#                                 [--echo-connections N] [--echo-duration D] [--gap SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=10000
ROUNDS=3
PORT=9311
CONCURRENCY=1000
ECHO_CONNECTIONS=1000
ECHO_DURATION=10s
GAP=2
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNECTIONS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --echo-connections) ECHO_CONNECTIONS=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --gap) GAP=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

LOAD=target/release/fanout-load
SERVER=target/release/fanout
URL="ws://127.0.0.1:$PORT/"
OUT=bench/results
WORK=$(mktemp -d)
SERVER_PID=""
CHILD_PID=""

stop_pid() {
    local pid=$1
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
cleanup() {
    trap - EXIT INT TERM
    stop_pid "$CHILD_PID"
    stop_pid "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "bench-loadgen: interrupted" >&2; exit 130' INT TERM

cargo build --release --workspace >&2
mapfile -t PEERS < <(scripts/build-peers.sh)
if [ "${#PEERS[@]}" -lt 3 ] || [ ! -x "${PEERS[2]}" ]; then
    echo "bench-loadgen: scripts/build-peers.sh did not give the tokio-tungstenite-client path" >&2
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

check_server() {
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "bench-loadgen: the server exited; its log:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
}

echo "uptime at start: $(uptime)" >&2
UPTIME_START=$(uptime)

"$SERVER" serve --listen "127.0.0.1:$PORT" --shards 2 --ping-interval 0 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do
    if grep -q "listening on" "$WORK/server.log" 2>/dev/null; then break; fi
    check_server
    sleep 0.05
done
if ! grep -q "listening on" "$WORK/server.log"; then
    echo "bench-loadgen: the server did not start:" >&2; cat "$WORK/server.log" >&2; exit 1
fi
echo "server pid $SERVER_PID on $URL" >&2

run_fanout_load_connect() {
    local round=$1
    echo "round $round/$ROUNDS: fanout-load connect, $CONNECTIONS connections" >&2
    run_child "$LOAD" connect --url "$URL" --connections "$CONNECTIONS" --duration 1s \
        --max-in-flight "$CONCURRENCY" --no-progress --json "$WORK/fanout-load-connect-$round.json" \
        >"$WORK/fanout-load-connect-$round.txt" 2>&1 ||
        echo "  fanout-load connect exited with status $? (see figures)" >&2
    check_server
    gap "after fanout-load connect $round"
}

run_tokio_client() {
    local round=$1
    echo "round $round/$ROUNDS: tokio-tungstenite-client, $CONNECTIONS connections" >&2
    run_child "$CLIENT" --url "$URL" --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" \
        --hold 1s >"$WORK/tokio-client-$round.json" 2>"$WORK/tokio-client-$round.log" ||
        echo "  tokio-tungstenite-client exited with status $?" >&2
    check_server
    gap "after tokio client $round"
}

gap "before round 1"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
        run_fanout_load_connect "$round"
        run_tokio_client "$round"
    else
        run_tokio_client "$round"
        run_fanout_load_connect "$round"
    fi
    echo "round $round/$ROUNDS: fanout-load echo, $ECHO_CONNECTIONS connections, $ECHO_DURATION" >&2
    run_child "$LOAD" echo --url "$URL" --connections "$ECHO_CONNECTIONS" --pipeline 1 \
        --duration "$ECHO_DURATION" --server-pid "$SERVER_PID" --no-progress \
        --json "$WORK/fanout-load-echo-$round.json" >"$WORK/fanout-load-echo-$round.txt" 2>&1 ||
        echo "  fanout-load echo exited with status $? (see figures)" >&2
    check_server
    gap "after echo $round"
done
UPTIME_END=$(uptime)
echo "uptime at end: $UPTIME_END" >&2

python3 - "$WORK" "$OUT/$STAMP-loadgen.json" "$CONNECTIONS" "$CONCURRENCY" "$ECHO_CONNECTIONS" \
    "$ECHO_DURATION" "$ROUNDS" "$UPTIME_START" "$UPTIME_END" "$(nproc)" <<'PY'
import json, os, statistics, sys
(work, out, conns, conc, echo_conns, echo_dur, rounds, up0, up1, ncpu) = sys.argv[1:11]
rounds = int(rounds)

def load(name):
    path = os.path.join(work, name)
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return json.loads(text.splitlines()[-1] if name.startswith("tokio") else text)
    except (OSError, ValueError, IndexError):
        return None

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

runs = []
for r in range(1, rounds + 1):
    fl, tc, ec = load(f"fanout-load-connect-{r}.json"), load(f"tokio-client-{r}.json"), load(f"fanout-load-echo-{r}.json")
    srv = (ec or {}).get("server") or {}
    row = {
        "round": r,
        "first": "fanout-load" if r % 2 == 1 else "tokio-tungstenite-client",
        "fanout_load_opened": fl and fl["opened"],
        "fanout_load_failed": fl and fl["failed_total"],
        "fanout_load_ramp_seconds": fl and fl["ramp_seconds"],
        "fanout_load_opened_per_second": fl and ratio(fl["opened"], fl["ramp_seconds"]),
        "fanout_load_connect_cpu_seconds": fl and fl["loadgen_cpu_seconds"],
        "fanout_load_failed_reasons": fl and fl.get("failed"),
        "tokio_opened": tc and tc["opened"],
        "tokio_failed": tc and tc["failed"],
        "tokio_seconds": tc and tc["seconds"],
        "tokio_opened_per_second": tc and ratio(tc["opened"], tc["seconds"]),
        "tokio_cpu_seconds": tc and tc["cpu_seconds"],
        "tokio_errors": tc and tc.get("errors"),
        "echo_opened": ec and ec["opened"],
        "echo_failed": ec and ec["failed_total"],
        "echo_run_seconds": ec and ec.get("run_seconds"),
        "echo_messages_per_second": ec and ec["messages"]["received_per_second"],
        "echo_loadgen_cpu_seconds": ec and ec["loadgen_cpu_seconds"],
        "echo_server_cpu_seconds_run": srv.get("cpu_seconds_run"),
        "echo_server_cpu_seconds_ramp": srv.get("cpu_seconds_ramp"),
    }
    row["open_rate_ratio"] = ratio(row["fanout_load_opened_per_second"], row["tokio_opened_per_second"])
    row["cpu_ratio"] = ratio(row["echo_loadgen_cpu_seconds"], row["echo_server_cpu_seconds_run"])
    runs.append(row)

keys = [k for k in runs[0] if k not in ("round", "first", "fanout_load_failed_reasons", "tokio_errors")] if runs else []
medians = {k: med([r[k] for r in runs]) for k in keys}
# Ratios of the medians (the per-round ratios' median is in medians too).
ratios = {
    "fanout_load_over_tokio_opened_per_second": ratio(medians.get("fanout_load_opened_per_second"),
                                                      medians.get("tokio_opened_per_second")),
    "generator_cpu_over_server_cpu_echo": ratio(medians.get("echo_loadgen_cpu_seconds"),
                                                medians.get("echo_server_cpu_seconds_run")),
}
gaps = []
try:
    with open(os.path.join(work, "gaps.tsv")) as fh:
        for line in fh:
            label, busy, tw, la = line.rstrip("\n").split("\t")
            gaps.append({"when": label, "other_busy_cores": float(busy), "time_wait": int(tw), "loadavg": la})
except OSError:
    pass

report = {
    "connections": int(conns), "concurrency": int(conc), "echo_connections": int(echo_conns),
    "echo_duration": echo_dur, "rounds": rounds, "cpus": int(ncpu),
    "server": "fanout serve --shards 2 --ping-interval 0 (one process for the whole run)",
    "uptime_start": up0, "uptime_end": up1, "idle_gaps": gaps,
    "runs": runs, "medians": medians, "ratios": ratios,
    "notes": [
        "open_rate_ratio > 1: fanout-load opens connections faster than the tokio-tungstenite client",
        "cpu_ratio < 1: the generator used less CPU than the server; the generator's figure covers "
        "its whole echo run (ramp and close included), the server's only the echo run between them",
    ],
}
with open(out, "w") as fh:
    json.dump(report, fh, indent=2)

def f(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"

print()
print(f"connect: {conns} connections, at most {conc} in flight; echo: {echo_conns} connections, --pipeline 1, {echo_dur}")
print(f"{'round':<6} {'first':<7} {'fanout-load/s':>13} {'fail':>5} {'tokio/s':>9} {'fail':>5} {'ratio':>6}   "
      f"{'echo msg/s':>10} {'gen CPU s':>9} {'srv CPU s':>9} {'ratio':>6}")
def line(label, first, r):
    print(f"{label:<6} {first:<7} {f(r['fanout_load_opened_per_second']):>13} {f(r['fanout_load_failed']):>5} "
          f"{f(r['tokio_opened_per_second']):>9} {f(r['tokio_failed']):>5} {f(r['open_rate_ratio'], 2):>6}   "
          f"{f(r['echo_messages_per_second']):>10} {f(r['echo_loadgen_cpu_seconds'], 2):>9} "
          f"{f(r['echo_server_cpu_seconds_run'], 2):>9} {f(r['cpu_ratio'], 2):>6}")
for r in runs:
    line(str(r["round"]), "fanout" if r["first"] == "fanout-load" else "tokio", r)
line("median", "", medians)  # each column's median; the ratio columns: median of the per-round ratios
print()
print(f"(a) fanout-load opened/s / tokio-tungstenite client opened/s (medians): "
      f"{f(medians.get('fanout_load_opened_per_second'))} / {f(medians.get('tokio_opened_per_second'))} = "
      f"{f(ratios['fanout_load_over_tokio_opened_per_second'], 2)}; median of the per-round ratios "
      f"{f(medians.get('open_rate_ratio'), 2)}")
print(f"(b) generator CPU / server CPU over the echo run (medians): "
      f"{f(medians.get('echo_loadgen_cpu_seconds'), 2)} s / {f(medians.get('echo_server_cpu_seconds_run'), 2)} s = "
      f"{f(ratios['generator_cpu_over_server_cpu_echo'], 2)}; median of the per-round ratios "
      f"{f(medians.get('cpu_ratio'), 2)}"
      f"  (server ramp CPU, not in the ratio: {f(medians.get('echo_server_cpu_seconds_ramp'), 2)} s)")
if gaps:
    busy = [g["other_busy_cores"] for g in gaps]
    print(f"other load in the idle gaps: median {statistics.median(busy):.2f}, max {max(busy):.2f} of {ncpu} cores; "
          f"TIME_WAIT max {max(g['time_wait'] for g in gaps)}")
print(f"uptime at start: {up0.strip()}")
print(f"uptime at end:   {up1.strip()}")
print(f"\nwrote {out}")
PY
