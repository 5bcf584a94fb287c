#!/usr/bin/env bash
# fanout against two Rust peers (tokio-tungstenite and fastwebsockets echo servers, built from
# crates.io by scripts/build-peers.sh), driven by the same client (fanout-load) in one run:
#   - connect: open N connections (default 19,000) as fast as possible, hold them, close;
#     reports opened/s, server CPU per handshake and server RSS per idle connection;
#   - echo: 1,000 connections, pipelined echo for a few seconds; messages/s and server CPU.
# Each server runs with the same thread count. Rounds alternate servers; medians are kept.
# Prints a table with ratios and writes bench/results/<date>-compare.json.
#
# usage: scripts/bench-compare.sh [--connections N] [--echo-connections N] [--echo-duration D]
#                                 [--hold D] [--rounds R] [--threads T] [--servers "fanout tokio-tungstenite fastwebsockets"]
#                                 [--only connect|echo] [--pin]
# --pin puts the server on CPU 0 and the load generator on CPU 1 (taskset), so neither steals
# the other's core; without it the scheduler shares both cores between them.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=19000
ECHO_CONNECTIONS=1000
ECHO_DURATION=10s
HOLD=5s
ROUNDS=3
THREADS=2
SERVERS="fanout tokio-tungstenite fastwebsockets"
ONLY=""
PIN_SERVER=()
PIN_LOAD=()
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNECTIONS=$2; shift 2 ;;
        --echo-connections) ECHO_CONNECTIONS=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --pin) PIN_SERVER=(taskset -c 0); PIN_LOAD=(taskset -c 1); shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_binaries always
mapfile -t PEERS < <(scripts/build-peers.sh)
LOAD=target/release/fanout-load
OUT=bench/results
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
    trap - EXIT INT TERM
    bench_stop "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_of() {
    case "$1" in
        fanout) echo 9301 ;;
        tokio-tungstenite) echo 9302 ;;
        fastwebsockets) echo 9303 ;;
    esac
}

start_server() {
    local name=$1 port
    port=$(port_of "$name")
    case "$name" in
        fanout) "${PIN_SERVER[@]}" target/release/fanout serve --listen "127.0.0.1:$port" --shards "$THREADS" \
                    --ping-interval 0 2>"$WORK/$name.log" & ;;
        tokio-tungstenite) "${PIN_SERVER[@]}" "${PEERS[0]}" --listen "127.0.0.1:$port" --threads "$THREADS" 2>"$WORK/$name.log" & ;;
        fastwebsockets) "${PIN_SERVER[@]}" "${PEERS[1]}" --listen "127.0.0.1:$port" --threads "$THREADS" 2>"$WORK/$name.log" & ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    bench_wait_listening "$WORK/$name.log" "$SERVER_PID" || { echo "($name)" >&2; exit 1; }
}

stop_server() {
    bench_stop "$SERVER_PID"
    SERVER_PID=""
    sleep 1 # let TIME_WAIT settle a little between servers
}

for round in $(seq "$ROUNDS"); do
    for name in $SERVERS; do
        port=$(port_of "$name")
        echo "round $round/$ROUNDS: $name" >&2
        if [ "$ONLY" != echo ]; then
        start_server "$name"
        # Several source addresses: the kernel's search for a free ephemeral port, not the
        # server, would otherwise bound the handshake rate past ~10k connections.
        "${PIN_LOAD[@]}" "$LOAD" connect --url "ws://127.0.0.1:$port/" --connections "$CONNECTIONS" --duration "$HOLD" \
            --source-ips 127.0.0.1-127.0.0.8 --server-pid "$SERVER_PID" --no-progress --json "$WORK/$name-connect-$round.json" >&2 || true
        stop_server
        fi
        if [ "$ONLY" != connect ]; then
        start_server "$name"
        "${PIN_LOAD[@]}" "$LOAD" echo --url "ws://127.0.0.1:$port/" --connections "$ECHO_CONNECTIONS" --duration "$ECHO_DURATION" \
            --pipeline 1 --message-size 64 --server-pid "$SERVER_PID" --no-progress \
            --json "$WORK/$name-echo-$round.json" >&2 || true
        stop_server
        fi
    done
done

python3 - "$WORK" "$OUT/$STAMP-compare.json" "$CONNECTIONS" "$ECHO_CONNECTIONS" "$ROUNDS" "$SERVERS" <<'PY'
import json, statistics, sys, glob, os
work, out, conns, echo_conns, rounds, servers = sys.argv[1:7]
servers = servers.split()
def load(name, kind):
    runs = []
    for f in sorted(glob.glob(os.path.join(work, f"{name}-{kind}-*.json"))):
        with open(f) as fh:
            runs.append(json.load(fh))
    return runs
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
res = {}
for s in servers:
    c, e = load(s, "connect"), load(s, "echo")
    res[s] = {
        "connect_opened": med([r["opened"] for r in c]),
        "connect_failed": med([r["failed_total"] for r in c]),
        "handshakes_per_second": med([r["opened"] / r["ramp_seconds"] for r in c if r["ramp_seconds"] > 0]),
        "server_cpu_us_per_handshake": med([r.get("server_cpu_us_per_handshake") for r in c]),
        "server_rss_bytes_per_connection": med([r.get("server_rss_bytes_per_connection") for r in c]),
        "open_p99_ms": med([r["latency_ms"].get("open", {}).get("p99") for r in c]),
        "echo_messages_per_second": med([r["messages"]["received_per_second"] for r in e]),
        "echo_rtt_p50_ms": med([r["latency_ms"].get("rtt", {}).get("p50") for r in e]),
        "echo_rtt_p99_ms": med([r["latency_ms"].get("rtt", {}).get("p99") for r in e]),
        "echo_server_cpu_cores": med([r.get("server", {}).get("cpu_cores_run") for r in e]),
        "echo_loadgen_cpu_seconds": med([r["loadgen_cpu_seconds"] for r in e]),
        "echo_loadgen_cpu_seconds_run": med([r.get("loadgen_cpu_seconds_run") for r in e]),
        "echo_server_cpu_seconds": med([r.get("server", {}).get("cpu_seconds_run") for r in e]),
        "runs": {"connect": len(c), "echo": len(e)},
    }
ratios = {}
f = res.get("fanout")
if f:
    for s in servers:
        if s == "fanout":
            continue
        p = res[s]
        def ratio(a, b):
            return None if a in (None, 0) or b in (None, 0) else round(a / b, 3)
        ratios[s] = {
            "handshake_rate_fanout_over_peer": ratio(f["handshakes_per_second"], p["handshakes_per_second"]),
            "cpu_per_handshake_peer_over_fanout": ratio(p["server_cpu_us_per_handshake"], f["server_cpu_us_per_handshake"]),
            "rss_per_conn_peer_over_fanout": ratio(p["server_rss_bytes_per_connection"], f["server_rss_bytes_per_connection"]),
            "echo_throughput_fanout_over_peer": ratio(f["echo_messages_per_second"], p["echo_messages_per_second"]),
        }
report = {"connections": int(conns), "echo_connections": int(echo_conns), "rounds": int(rounds),
          "medians": res, "ratios": ratios, "note": "ratios > 1 favour fanout"}
with open(out, "w") as fh:
    json.dump(report, fh, indent=2)
def fmt(v, d=1):
    return "-" if v is None else f"{v:,.{d}f}"
print(f"\n{'server':<20} {'opened':>8} {'fail':>5} {'hs/s':>9} {'us/hs':>7} {'B/conn':>9} {'echo msg/s':>11} {'rtt p99':>8} {'srv cores':>9}")
for s in servers:
    r = res[s]
    print(f"{s:<20} {fmt(r['connect_opened'],0):>8} {fmt(r['connect_failed'],0):>5} {fmt(r['handshakes_per_second'],0):>9} "
          f"{fmt(r['server_cpu_us_per_handshake']):>7} {fmt(r['server_rss_bytes_per_connection'],0):>9} "
          f"{fmt(r['echo_messages_per_second'],0):>11} {fmt(r['echo_rtt_p99_ms'],2):>8} {fmt(r['echo_server_cpu_cores'],2):>9}")
for s, r in ratios.items():
    print(f"fanout vs {s}: handshake rate x{fmt(r['handshake_rate_fanout_over_peer'],2)}, "
          f"CPU/handshake {fmt(r['cpu_per_handshake_peer_over_fanout'],2)}x lower, "
          f"memory/conn {fmt(r['rss_per_conn_peer_over_fanout'],1)}x lower, "
          f"echo throughput x{fmt(r['echo_throughput_fanout_over_peer'],2)}")
print(f"\nwrote {out}")
PY
