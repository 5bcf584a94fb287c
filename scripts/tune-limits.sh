#!/usr/bin/env bash
# tune-limits.sh: check, apply and revert the OS limits fanout needs to hold N connections
# on this box. A thin wrapper: the rules, the state file and the JSON live in Rust
# (`fanout limits check|apply|revert`, src/limits/), sharing src/rt/limits.rs with the
# server. Builds the release binary first when it is missing or older than the sources, then
# runs it with the same arguments. Run with --help for usage; docs/operations.md.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET == /* ]] || TARGET=$PWD/$TARGET # cargo reads a relative one from the caller's cwd
BIN=$TARGET/release/fanout

stale() {
    [[ ! -x $BIN ]] ||
        [[ -n $(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null) ]]
}

if stale; then
    if command -v cargo >/dev/null 2>&1; then
        echo "${0##*/}: building $BIN (cargo build --release --bin fanout)" >&2
        (cd -- "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release -q --bin fanout) >&2
    elif [[ -x $BIN ]]; then
        echo "${0##*/}: cargo not found; using $BIN although the sources are newer" >&2
    else
        echo "${0##*/}: $BIN is missing and cargo is not installed to build it" >&2
        exit 2
    fi
fi

FANOUT_LIMITS_PROG=$0 exec "$BIN" limits "$@"
