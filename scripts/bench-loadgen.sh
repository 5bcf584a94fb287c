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

python3 - "$WORK" "$OUT/$STAMP-loadgen.json" "$CONNECTIONS" "$CONCURRENCY" "$ECHO_CONNECTIONS" \
    "$ECHO_DURATION" "$ROUNDS" "$UPTIME_START" "$UPTIME_END" "$(nproc)" "$ECHO_SERVERS" \
    "${BATCH_FLAG[*]:-}" "$ECHO_MODES" <<'PY'
import json, os, statistics, sys
(work, out, conns, conc, echo_conns, echo_dur, rounds, up0, up1, ncpu, echo_servers, flags,
 echo_modes) = sys.argv[1:14]
rounds = int(rounds)
echo_servers = echo_servers.split()
echo_modes = echo_modes.split()
with open(os.path.join(work, "modes.tsv")) as fh:
    MODE_ARGS = dict(line.rstrip("\n").split("\t", 1) for line in fh)

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
    fl, tc = load(f"fanout-load-connect-{r}.json"), load(f"tokio-client-{r}.json")
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
        "echo": {},
    }
    row["open_rate_ratio"] = ratio(row["fanout_load_opened_per_second"], row["tokio_opened_per_second"])
    for mode, name in [(m, n) for m in echo_modes for n in echo_servers]:
        ec = load(f"echo-{mode}-{name}-{r}.json")
        srv = (ec or {}).get("server") or {}
        e = {
            "opened": ec and ec["opened"],
            "failed": ec and ec["failed_total"],
            "mismatched": ec and ec["messages"]["mismatched"],
            "run_seconds": ec and ec.get("run_seconds"),
            "messages_per_second": ec and ec["messages"]["received_per_second"],
            "rtt_p50_ms": ec and ec["latency_ms"].get("rtt", {}).get("p50"),
            "rtt_p99_ms": ec and ec["latency_ms"].get("rtt", {}).get("p99"),
            "rtt_without_kernel_timestamp": ec and ec["messages"].get("rtt_without_kernel_timestamp"),
            "loadgen_cpu_seconds_run": ec and ec.get("loadgen_cpu_seconds_run"),
            "loadgen_cpu_seconds_whole": ec and ec["loadgen_cpu_seconds"],
            "server_cpu_seconds_run": srv.get("cpu_seconds_run"),
            "batched_reads": ec and ec.get("io", {}).get("batched_reads"),
            "batched_writes": ec and ec.get("io", {}).get("batched_writes"),
        }
        e["cpu_ratio"] = ratio(e["loadgen_cpu_seconds_run"], e["server_cpu_seconds_run"])
        received = ec and ec["messages"]["received"]
        e["loadgen_us_per_message"] = ratio(e["loadgen_cpu_seconds_run"], received and received / 1e6)
        e["server_us_per_message"] = ratio(e["server_cpu_seconds_run"], received and received / 1e6)
        row["echo"][f"{mode}/{name}"] = e
    runs.append(row)

connect_keys = [k for k in runs[0] if k not in ("round", "first", "fanout_load_failed_reasons", "tokio_errors", "echo")] if runs else []
medians = {k: med([r[k] for r in runs]) for k in connect_keys}
echo_keys = [f"{m}/{n}" for m in echo_modes for n in echo_servers]
echo_medians = {}
for key in echo_keys:
    keys = runs[0]["echo"][key].keys() if runs else []
    echo_medians[key] = {k: med([r["echo"][key][k] for r in runs]) for k in keys}
ratios = {
    "fanout_load_over_tokio_opened_per_second": ratio(medians.get("fanout_load_opened_per_second"),
                                                      medians.get("tokio_opened_per_second")),
}
for key in echo_keys:
    mode, name = key.split("/", 1)
    ratios[f"generator_cpu_over_{name.replace('-', '_')}_cpu_echo_{mode.replace('-', '_').replace(':', '_')}"] = \
        echo_medians[key].get("cpu_ratio")
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
    "echo_duration": echo_dur, "rounds": rounds, "cpus": int(ncpu), "loadgen_flags": flags,
    "echo_modes": {m: MODE_ARGS[m] for m in echo_modes},
    "servers": {
        "fanout": "fanout serve --shards 2 --ping-interval 0",
        "fastwebsockets": "bench/peers fastwebsockets-echo --threads 2",
        "tokio-tungstenite": "bench/peers tokio-tungstenite-echo --threads 2",
        "note": "each started once for the whole run",
    },
    "uptime_start": up0, "uptime_end": up1, "idle_gaps": gaps,
    "runs": runs, "medians": medians, "echo_medians": echo_medians, "ratios": ratios,
    "notes": [
        "open_rate_ratio > 1: fanout-load opens connections faster than the tokio-tungstenite client",
        "cpu_ratio < 1: the generator used less CPU than the server, both over the echo run "
        "(between ramp and close); the echo ratios are medians of the per-round ratios",
    ],
}
with open(out, "w") as fh:
    json.dump(report, fh, indent=2)

def f(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"

print()
print(f"(a) connect: {conns} connections to fanout, at most {conc} in flight")
print(f"{'round':<6} {'first':<7} {'fanout-load/s':>13} {'fail':>5} {'tokio/s':>9} {'fail':>5} {'ratio':>6}")
def cline(label, first, r):
    print(f"{label:<6} {first:<7} {f(r['fanout_load_opened_per_second']):>13} {f(r['fanout_load_failed']):>5} "
          f"{f(r['tokio_opened_per_second']):>9} {f(r['tokio_failed']):>5} {f(r['open_rate_ratio'], 2):>6}")
for r in runs:
    cline(str(r["round"]), "fanout" if r["first"] == "fanout-load" else "tokio", r)
cline("median", "", medians)
print()
print(f"(b) echo: {echo_conns} connections, {echo_dur}; CPU over the echo run {flags}")
for m in echo_modes:
    print(f"    {m}: {MODE_ARGS[m]}")
print(f"{'mode/server':<28} {'round':<6} {'msg/s':>9} {'fail':>5} {'rtt p50':>8} {'rtt p99':>8} {'gen CPU s':>9} "
      f"{'srv CPU s':>9} {'gen us/msg':>10} {'srv us/msg':>10} {'gen/srv':>7}")
def eline(key, label, e):
    print(f"{key:<28} {label:<6} {f(e['messages_per_second']):>9} {f(e['failed']):>5} {f(e['rtt_p50_ms'], 3):>8} "
          f"{f(e['rtt_p99_ms'], 3):>8} {f(e['loadgen_cpu_seconds_run'], 2):>9} {f(e['server_cpu_seconds_run'], 2):>9} "
          f"{f(e['loadgen_us_per_message'], 2):>10} {f(e['server_us_per_message'], 2):>10} {f(e['cpu_ratio'], 2):>7}")
for key in echo_keys:
    for r in runs:
        eline(key, str(r["round"]), r["echo"][key])
    eline(key, "median", echo_medians[key])
print()
print(f"fanout-load opened/s / tokio-tungstenite client opened/s (medians): "
      f"{f(ratios['fanout_load_over_tokio_opened_per_second'], 2)}")
for key in echo_keys:
    mode, name = key.split("/", 1)
    print(f"generator CPU / {name} CPU over the echo run, {mode} (median of rounds): "
          f"{f(echo_medians[key].get('cpu_ratio'), 2)}")
if gaps:
    busy = [g["other_busy_cores"] for g in gaps]
    print(f"other load in the idle gaps: median {statistics.median(busy):.2f}, max {max(busy):.2f} of {ncpu} cores; "
          f"TIME_WAIT max {max(g['time_wait'] for g in gaps)}")
print(f"uptime at start: {up0.strip()}")
print(f"uptime at end:   {up1.strip()}")
print(f"\nwrote {out}")
PY
