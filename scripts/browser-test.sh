#!/usr/bin/env bash
# fanout in a real browser: headless Chromium (Debian's `chromium`, installed with apt when
# missing) against the release binary. Starts four servers (echo with --deflate, echo over TLS
# with a throw-away certificate, push with CORS for the test page's origin, and an echo to be
# stopped with SIGTERM), serves tests/browser/page.html with `python3 -m http.server`, and
# drives Chromium over the DevTools protocol (tests/browser/cdp.mjs, Node): the status page
# (live samples, screenshot in target/browser/status.png), then the page's checks. Prints one
# line per check; exit status 1 if any failed, 2 if something needed is missing.
#
#   scripts/browser-test.sh            # builds target/release/fanout when missing
#   FANOUT_BIN=path scripts/browser-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

BIN=${FANOUT_BIN:-target/release/fanout}
OUT=target/browser
KEY=browser-test-key

if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing chromium (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq chromium >/dev/null
fi
for tool in node python3 openssl; do
    command -v "$tool" >/dev/null || { echo "browser-test: $tool is needed" >&2; exit 2; }
done
NODE_FLAGS=()
# Node 20 has WebSocket behind a flag; 22 and later have it built in.
if ! node -e 'if (typeof WebSocket !== "function") process.exit(1)' 2>/dev/null; then
    NODE_FLAGS=(--experimental-websocket --no-warnings)
fi
if [ -z "${FANOUT_BIN:-}" ] && [ ! -x "$BIN" ]; then
    echo "== building target/release/fanout" >&2
    cargo build --release --bin fanout >&2
fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local rc=$?
    bench_stop "${PIDS[@]}"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null

# The page's own server first: the push server needs its origin for CORS.
mkdir -p "$WORK/www"
cp tests/browser/page.html "$WORK/www/"
PAGE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/www" "$PAGE_PORT" >"$WORK/www.log" 2>&1 &
PIDS+=($!)

SERVER_PID=
SERVER_PORT=
start_server() { # name, then fanout serve flags
    local name=$1
    shift
    "$BIN" serve --listen 127.0.0.1:0 --shards 2 "$@" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    bench_wait_listening "$WORK/$name.log" "$SERVER_PID"
    SERVER_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/$name.log" | head -n 1)
}
start_server deflate --app echo --deflate
A=$SERVER_PORT
start_server tls --app echo --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
B=$SERVER_PORT
start_server push --app push --publish-key "$KEY" --cors-origins "http://127.0.0.1:$PAGE_PORT"
C=$SERVER_PORT
start_server sigterm --app echo --drain-timeout 5s
D=$SERVER_PORT
D_PID=$SERVER_PID
for _ in $(seq 50); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PAGE_PORT/page.html', timeout=1)" 2>/dev/null && break
    sleep 0.1
done

# shellcheck disable=SC2054 # the comma is inside --window-size=W,H
CHROMIUM_FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --ignore-certificate-errors --window-size=1200,900 "--user-data-dir=$WORK/profile")
echo "== chromium $(chromium --version 2>/dev/null | awk '{print $2}'), servers on $A (deflate), $B (tls), $C (push), $D (sigterm); page on $PAGE_PORT"
rc=0
node "${NODE_FLAGS[@]}" tests/browser/cdp.mjs "$(command -v chromium)" \
    "http://127.0.0.1:$A/" \
    "http://127.0.0.1:$PAGE_PORT/page.html?a=$A&b=$B&c=$C&d=$D&key=$KEY" \
    "$OUT/status.png" "$D_PID" "${CHROMIUM_FLAGS[@]}" || rc=$?

# The SIGTERM'd server must have drained and exited 0.
if wait "$D_PID"; then
    echo "ok   sigterm_server_exit  exit 0"
else
    echo "FAIL sigterm_server_exit  exit $?"
    rc=1
fi
if ((rc != 0)); then
    for f in "$WORK"/*.log; do printf -- '--- %s\n' "$f"; tail -n 20 "$f"; done
    echo "browser-test: FAILED" >&2
    exit 1
fi
echo "browser-test: all checks passed"
