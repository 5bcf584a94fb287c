#!/usr/bin/env bash
# The project's test command (README): formatting, lints, unit, property and integration
# tests, interop with third-party clients (Python websockets, Node ws), and the Autobahn
# conformance suite over ws:// and wss://. Installs what it needs itself, idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing rustfmt and clippy"
    rustup component add rustfmt clippy
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release"
cargo build --release --workspace

step "cargo test --workspace"
cargo test --workspace

step "interop: Python websockets and Node ws"
scripts/interop.sh

step "Autobahn|Testsuite fuzzingclient"
scripts/autobahn.sh

step "Autobahn|Testsuite fuzzingclient over wss:// (TLS)"
scripts/autobahn.sh --tls

step "all checks passed"
