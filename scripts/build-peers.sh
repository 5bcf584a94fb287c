#!/usr/bin/env bash
# Builds the peer echo servers that fanout is benchmarked against
# (bench/peers: tokio-tungstenite-echo, fastwebsockets-echo) and the baseline
# client fanout-load is measured against (tokio-tungstenite-client) in release
# mode. Idempotent: a second run is a no-op build. Cargo's progress goes to
# stderr; stdout gets the absolute path of each binary, one per line, always in
# this order: tokio-tungstenite-echo, fastwebsockets-echo,
# tokio-tungstenite-client; e.g.
#   mapfile -t PEERS < <(scripts/build-peers.sh)
# Extra arguments are passed to cargo build (e.g. --offline).
set -euo pipefail
cd "$(dirname "$0")/.."

manifest=bench/peers/Cargo.toml
bins=(tokio-tungstenite-echo fastwebsockets-echo tokio-tungstenite-client)

cargo build --release --locked --manifest-path "$manifest" "$@" >&2

# Ask cargo where the target directory is, so CARGO_TARGET_DIR and
# [build] target-dir are honoured.
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$manifest" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [[ -z "$target_dir" ]]; then
    echo "build-peers: could not find cargo's target directory" >&2
    exit 1
fi

for bin in "${bins[@]}"; do
    path="$target_dir/release/$bin"
    if [[ ! -x "$path" ]]; then
        echo "build-peers: $path was not built" >&2
        exit 1
    fi
    echo "$path"
done
