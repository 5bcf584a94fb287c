#!/usr/bin/env bash
# TLS figures, plaintext in the same run for the ratios:
#   - handshakes per second (fanout-load connect, ws:// then wss://) and the server's CPU
#     per handshake,
#   - memory per idle connection after the handshake (server RSS delta / open connections,
#     sampled by fanout-load while the connections are held), and after 64 KiB echoes,
#   - echo throughput over TLS as a ratio of plaintext (fanout-load echo, same settings).
# Prints the figures and writes bench/results/tls.json. Takes about a minute.
#
# Usage: scripts/bench-tls.sh [--connections N] [--echo-connections N] [--echo-duration D]
#                             [--message-size BYTES] [--pipeline N] [--shards N] [--out DIR]
#   --connections       idle connections for the handshake and memory figures (default 5000;
#                       the load generator and each server stay under the 20000 fd limit)
#   --echo-connections  connections of the echo runs (default 50)
#   --echo-duration     length of each echo run (default 5s)
#   --message-size      echo message size (default 1024)
#   --pipeline          echo messages in flight per connection (default 4)
#   --shards            server shards (default 1, so per-core figures)
set -euo pipefail
cd "$(dirname "$0")/.."

N=5000
ECHO_N=50
ECHO_DURATION=5s
SIZE=1024
PIPELINE=4
SHARDS=1
OUT=bench/results
PORT_PLAIN=9710
PORT_TLS=9711
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --echo-connections) ECHO_N=$2; shift 2 ;;
        --echo-duration) ECHO_DURATION=$2; shift 2 ;;
        --message-size) SIZE=$2; shift 2 ;;
        --pipeline) PIPELINE=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

FANOUT=target/release/fanout
LOAD=target/release/fanout-load
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_binaries always
command -v openssl >/dev/null || { echo "openssl is needed to make the test certificate" >&2; exit 2; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PIDS=()
cleanup() {
    local rc=$?
    bench_stop "${SERVER_PIDS[@]}"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# A self-signed leaf certificate (CA:FALSE: webpki refuses a CA certificate as a server's).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null

start_server() { # name port [tls flags...]
    local name=$1 port=$2
    shift 2
    "$FANOUT" serve --listen "127.0.0.1:$port" --shards "$SHARDS" "$@" 2>"$WORK/$name.log" &
    SERVER_PIDS+=("$!")
    bench_wait_listening "$WORK/$name.log" "$!" || exit 1
}

run_load() { # name pid url [args...]
    local name=$1 pid=$2 url=$3
    shift 3
    set +e
    "$LOAD" "$@" --url "$url" --server-pid "$pid" --tls-ca "$WORK/cert.pem" --no-progress \
        --json "$WORK/$name.json" >"$WORK/$name.txt" 2>&1
    local rc=$?
    set -e
    sed 's/^/    /' "$WORK/$name.txt" >&2
    if [ "$rc" -ne 0 ]; then echo "fanout-load $name exited $rc" >&2; exit 1; fi
}

# A fresh server per run: the idle-memory figure is an RSS delta.
for kind in plain tls; do
    if [ "$kind" = tls ]; then
        port=$PORT_TLS; scheme=wss; flags=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
    else
        port=$PORT_PLAIN; scheme=ws; flags=()
    fi
    echo "== $kind: connect $N and hold (handshakes/s, idle memory)" >&2
    start_server "connect-$kind" "$port" "${flags[@]}"
    run_load "connect-$kind" "${SERVER_PIDS[-1]}" "$scheme://localhost:$port/" \
        connect --connections "$N" --duration 2s
    kill -TERM "${SERVER_PIDS[-1]}"
    wait "${SERVER_PIDS[-1]}" 2>/dev/null || true
    unset 'SERVER_PIDS[-1]'

    echo "== $kind: echo, $ECHO_N connections, $SIZE B, pipeline $PIPELINE, $ECHO_DURATION" >&2
    start_server "echo-$kind" "$port" "${flags[@]}"
    run_load "echo-$kind" "${SERVER_PIDS[-1]}" "$scheme://localhost:$port/" \
        echo --connections "$ECHO_N" --duration "$ECHO_DURATION" --message-size "$SIZE" \
        --pipeline "$PIPELINE"
    kill -TERM "${SERVER_PIDS[-1]}"
    wait "${SERVER_PIDS[-1]}" 2>/dev/null || true
    unset 'SERVER_PIDS[-1]'
done

echo "== tls: memory after traffic: 2000 connections each echo 64 KiB twice, then sit idle" >&2
start_server "after-tls" "$PORT_TLS" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
run_load "after-tls" "${SERVER_PIDS[-1]}" "wss://localhost:$PORT_TLS/" \
    echo --connections 2000 --duration 4s --rate 0.5 --message-size 65536

python3 - "$WORK" "$OUT/tls.json" "$N" "$ECHO_N" "$ECHO_DURATION" "$SIZE" "$PIPELINE" "$SHARDS" <<'PY'
import json, sys, platform, datetime
work, out, n, echo_n, dur, size, pipeline, shards = sys.argv[1:9]
def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
rep = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "kernel": platform.release(), "connections": int(n), "shards": int(shards),
       "echo": {"connections": int(echo_n), "duration": dur, "message_size": int(size),
                "pipeline": int(pipeline)}}
for kind in ("plain", "tls"):
    c, e = load(f"connect-{kind}"), load(f"echo-{kind}")
    rep[kind] = {
        "established": c["established"], "failed": c["failed_total"],
        "handshakes_per_second": c["opened"] / max(c["ramp_seconds"], 1e-9),
        "handshake_ms_p50": c["latency_ms"].get("handshake", {}).get("p50"),
        "server_cpu_us_per_handshake": c.get("server_cpu_us_per_handshake"),
        "server_rss_bytes_per_idle_connection": c.get("server_rss_bytes_per_connection"),
        "loadgen_cpu_seconds_connect": c.get("loadgen_cpu_seconds"),
        "echo_messages_per_second": e["messages"]["received_per_second"],
        "echo_failed": e["failed_total"],
        "echo_rtt_ms_p50": e["latency_ms"].get("rtt", {}).get("p50"),
        "echo_rtt_ms_p99": e["latency_ms"].get("rtt", {}).get("p99"),
        "echo_server_cpu_cores": (e.get("server") or {}).get("cpu_cores_run"),
        "echo_server_cpu_us_per_message": 1e6 * ((e.get("server") or {}).get("cpu_seconds_run") or 0)
            / max(e["messages"]["received"], 1),
    }
a = load("after-tls")
rep["tls"]["server_rss_bytes_per_connection_after_64k_echo"] = a.get("server_rss_bytes_per_connection")
p, t = rep["plain"], rep["tls"]
rep["ratios_tls_over_plain"] = {
    "handshakes_per_second": t["handshakes_per_second"] / p["handshakes_per_second"],
    "server_cpu_per_handshake": (t["server_cpu_us_per_handshake"] or 0) / max(p["server_cpu_us_per_handshake"] or 1e-9, 1e-9),
    "echo_messages_per_second": t["echo_messages_per_second"] / p["echo_messages_per_second"],
    "echo_server_cpu_per_message": t["echo_server_cpu_us_per_message"] / max(p["echo_server_cpu_us_per_message"], 1e-9),
}
rep["tls_extra_bytes_per_idle_connection"] = (t["server_rss_bytes_per_idle_connection"] or 0) - (p["server_rss_bytes_per_idle_connection"] or 0)
with open(out, "w") as f:
    json.dump(rep, f, indent=2)
r = rep["ratios_tls_over_plain"]
print(f"connections held: {n} per run, {shards} shard(s)")
print(f"handshakes/s      plain {p['handshakes_per_second']:8.0f}   tls {t['handshakes_per_second']:8.0f}   ratio {r['handshakes_per_second']:.2f}  (load generator bound; see server CPU)")
print(f"server CPU/hs us  plain {p['server_cpu_us_per_handshake'] or 0:8.1f}   tls {t['server_cpu_us_per_handshake'] or 0:8.1f}   ratio {r['server_cpu_per_handshake']:.1f}")
print(f"RSS/idle conn B   plain {p['server_rss_bytes_per_idle_connection'] or 0:8.0f}   tls {t['server_rss_bytes_per_idle_connection'] or 0:8.0f}   (+{rep['tls_extra_bytes_per_idle_connection']:.0f} B for TLS)")
print(f"RSS/conn B after 64 KiB echoes (2000 TLS conns, then idle): {t['server_rss_bytes_per_connection_after_64k_echo'] or 0:.0f}")
print(f"echo msg/s        plain {p['echo_messages_per_second']:8.0f}   tls {t['echo_messages_per_second']:8.0f}   ratio {r['echo_messages_per_second']:.2f}")
print(f"server CPU/msg us plain {p['echo_server_cpu_us_per_message']:8.2f}   tls {t['echo_server_cpu_us_per_message']:8.2f}   ratio {r['echo_server_cpu_per_message']:.2f}")
print(f"echo rtt p50 ms   plain {p['echo_rtt_ms_p50']:8.3f}   tls {t['echo_rtt_ms_p50']:8.3f}")
print(f"wrote {out}")
PY
