#!/usr/bin/env bash
# The project's test command (README): formatting, lints, unit, property and integration
# tests, tune-limits.sh, the attack suite (short kinds and a 60 s soak), interop with
# third-party clients (Python websockets, Node ws, headless Chromium), the Autobahn
# conformance suite over ws:// and wss://, and a short run of every fuzz target. Installs
# what it needs itself, idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s) ===\n' "$*" "$(date -u +%T)"; }

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing rustfmt and clippy"
    rustup component add rustfmt clippy
fi

if ! command -v redis-server >/dev/null 2>&1; then
    step "installing redis-server (the broker tests start a real one)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release"
cargo build --release --workspace

step "cargo test --workspace"
cargo test --workspace

step "the integration tests again, every test server on --io epoll (FANOUT_TEST_IO)"
# echo, push, limits, lifecycle, auth, deflate, history, status, broker...: the same tests
# through the plain calls, the path a kernel without io_uring gets (tests/common takes the
# server's I/O path from the variable; the run above used the default, io_uring).
FANOUT_TEST_IO=epoll cargo test -p fanout --tests

step "tune-limits.sh: check, apply, revert on this machine (restores every sysctl)"
if ! command -v shellcheck >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; }
fi
bash tests/tune_limits.sh

step "shellcheck: every script"
shellcheck -x scripts/*.sh tests/*.sh fuzz/*.sh

step "bench-connections.sh: 5,000 connections, 2 server processes (the million's script, small)"
# Applies what the limits need and must restore every sysctl; about 15 s.
limits_snapshot() {
    local k
    for k in fs/file-max fs/nr_open net/core/somaxconn net/ipv4/tcp_max_syn_backlog \
        net/core/netdev_max_backlog net/ipv4/ip_local_port_range net/ipv4/tcp_tw_reuse \
        net/ipv4/tcp_fin_timeout net/ipv4/tcp_mem net/netfilter/nf_conntrack_max; do
        printf '%s=%s\n' "$k" "$(cat "/proc/sys/$k" 2>/dev/null)"
    done
}
limits_before=$(limits_snapshot)
scripts/bench-connections.sh --connections 5000 --servers 2 --hold 5 --echo-duration 5 \
    --echo-rate 0.2 --port 9619 --out target/bench-connections-ci
if [ "$(limits_snapshot)" != "$limits_before" ]; then
    echo "bench-connections.sh left sysctls changed:" >&2
    diff <(echo "$limits_before") <(limits_snapshot) >&2
    exit 1
fi

step "attack suite: every kind of the hostile review (short sizes) and a 60 s soak"
# docs/attacks.md; about 3 minutes on 2 cores; writes bench/results/<date>-attack.json.
scripts/attack.sh --ci

step "interop: Python websockets and Node ws"
scripts/interop.sh

step "headless Chromium: echo, deflate, wss, push with CORS, closes, status page"
scripts/browser-test.sh

step "Autobahn|Testsuite fuzzingclient: 1.*-10.* and 12.* | 13.* (permessage-deflate), side by side"
# Two suites and two servers at once: the Python 2 client is the limit, one core each.
scripts/autobahn.sh --install-only
mkdir -p target
AUTOBAHN_TIMEOUT=1800 AUTOBAHN_DEFLATE_CASES='["12.*"]' \
    scripts/autobahn.sh --deflate-full >target/autobahn-a.log 2>&1 &
a=$!
AUTOBAHN_TIMEOUT=1800 AUTOBAHN_WORK=target/autobahn-13 AUTOBAHN_PORT=9002 AUTOBAHN_CASES='[]' \
    AUTOBAHN_DEFLATE_CASES='["13.*"]' scripts/autobahn.sh --deflate-full >target/autobahn-b.log 2>&1 &
b=$!
ra=0 rb=0
wait "$a" || ra=$?
wait "$b" || rb=$?
for f in target/autobahn-a.log target/autobahn-b.log; do
    printf -- '--- %s\n' "$f"
    # The per-section table and the verdict (the whole log on failure).
    if ((ra == 0 && rb == 0)); then grep -v '^autobahn: [0-9]* of [0-9]* cases started' "$f" | tail -n 25; else cat "$f"; fi
done
if ((ra != 0 || rb != 0)); then
    echo "autobahn failed (1.*-10.*,12.*: exit $ra; 13.*: exit $rb)" >&2
    exit 1
fi

step "Autobahn|Testsuite fuzzingclient over wss:// (TLS)"
scripts/autobahn.sh --tls

step "Autobahn|Testsuite fuzzingserver against fanout's client: 1.*-10.*, then 12.* and 13.* with permessage-deflate"
scripts/autobahn-client.sh --deflate-full

step "fuzz targets: 20,000 runs each from their seeds and corpus (cargo-fuzz)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked -q
fi
fuzz/run-all.sh 20000

step "all checks passed"
