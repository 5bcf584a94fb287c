#!/usr/bin/env bash
# Runs every fuzz target one after the other (one job, one core) for RUNS executions each,
# starting from seeds/<target> and keeping new inputs in corpus/<target>.
# Usage: fuzz/run-all.sh [RUNS] [TARGET...]   (default: 1000000 runs, every target)
# Toolchain: nightly if installed, else stable with RUSTC_BOOTSTRAP=1 (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
RUNS="${1:-1000000}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(handshake_request handshake_response frames_server frames_client utf8_incremental upgrade_policies resp deflate)
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo +stable fuzz)
fi
for t in "${TARGETS[@]}"; do
    extra=()
    case "$t" in
        handshake_* | upgrade_*) extra=(-dict=dict/http.dict -max_len=2048) ;;
        frames_*) extra=(-max_len=4096 -malloc_limit_mb=8) ;;
        utf8_*) extra=(-max_len=512) ;;
    esac
    mkdir -p "corpus/$t"
    echo "== $t: ${FUZZ[*]} run -O $t corpus/$t seeds/$t -- -runs=$RUNS ${extra[*]}"
    "${FUZZ[@]}" run -O "$t" "corpus/$t" "seeds/$t" -- -runs="$RUNS" "${extra[@]}"
done
