#!/usr/bin/env bash
# Interop tests: the fanout release binary against real third-party clients, Python
# `websockets` (tests/interop/python, pytest) and Node `ws` (tests/interop/node, node --test).
#
#   scripts/interop.sh            install what is missing, build if no binary, run both suites
#   scripts/interop.sh --build    also run `cargo build --release` first (rebuild if stale)
#   INTEROP_ONLY=python|node      run one suite
#   PYTEST_ARGS="-k echo -x"      extra pytest arguments
#   FANOUT_BIN=/path/to/fanout    test that binary instead of target/release/fanout
#
# Installs idempotently: a venv under ${FANOUT_CACHE:-$HOME/.cache/fanout}/interop-venv (pip
# install -r tests/interop/python/requirements.txt, redone when that file changes) and
# `npm ci` in tests/interop/node (redone when package-lock.json changes). Needs python3 (3.10+),
# node 20+ and npm, and cargo to build. Works unattended (CI=true, no stdin). Exits non-zero if
# anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
VENV=$CACHE/interop-venv
PY_DIR=$ROOT/tests/interop/python
NODE_DIR=$ROOT/tests/interop/node
ONLY=${INTEROP_ONLY:-}
BUILD=0
PER_TEST_TIMEOUT=${INTEROP_TEST_TIMEOUT:-120}

for arg in "$@"; do
    case $arg in
        --build) BUILD=1 ;;
        -h | --help)
            sed -n '2,16p' "$0"
            exit 0
            ;;
        *)
            echo "interop.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

log() { printf '\n== interop: %s\n' "$*"; }
need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "interop.sh: '$1' not found: $2" >&2
        exit 1
    }
}
hash_of() { sha256sum "$1" | cut -d' ' -f1; }

# 1,000 clients per test and a flood of raw sockets: make sure the fd limit is not the 1024
# default (best effort; the hard limit is what it is).
soft=$(ulimit -Sn)
if [[ $soft != unlimited && $soft -lt 8192 ]]; then
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
fi

START=$(date +%s)

# ----- the binary -----
if [[ -n ${FANOUT_BIN:-} ]]; then
    [[ -x $FANOUT_BIN ]] || {
        echo "interop.sh: FANOUT_BIN=$FANOUT_BIN is not an executable" >&2
        exit 1
    }
elif [[ $BUILD == 1 || ! -x $ROOT/target/release/fanout ]]; then
    need cargo "install Rust (rustup) to build the server"
    log "cargo build --release"
    cargo build --release
fi

# ----- Python: venv + websockets, pytest, pytest-timeout -----
setup_python() {
    need python3 "install Python 3.10+"
    # test_tls.py makes its self-signed certificate with the openssl command.
    if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
        log "apt-get install openssl"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl </dev/null
    fi
    need openssl "install openssl (test_tls.py makes its certificate with it)"
    local stamp=$VENV/.requirements.sha256 want
    want=$(hash_of "$PY_DIR/requirements.txt")
    if [[ -x $VENV/bin/python ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV" # the interpreter it was made from is gone
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV"
        mkdir -p "$CACHE"
        if ! python3 -m venv "$VENV"; then
            # Debian's own python3 needs python3-venv for ensurepip.
            rm -rf "$VENV"
            if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv </dev/null
                python3 -m venv "$VENV"
            else
                echo "interop.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
                exit 1
            fi
        fi
    fi
    if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        log "pip install -r tests/interop/python/requirements.txt"
        "$VENV/bin/python" -m pip install -q -r "$PY_DIR/requirements.txt" </dev/null
        echo "$want" >"$stamp"
    fi
}

# ----- Node: ws from the committed lock file -----
setup_node() {
    need node "install Node.js 20+"
    need npm "install npm"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    if ((major < 20)); then
        echo "interop.sh: node $(node --version) is too old: the tests need node 20+ (node --test)" >&2
        exit 1
    fi
    local stamp=$NODE_DIR/node_modules/.interop-lock.sha256 want
    want=$(hash_of "$NODE_DIR/package-lock.json")
    if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        log "npm ci (tests/interop/node)"
        (cd "$NODE_DIR" && npm ci --no-audit --no-fund </dev/null)
        echo "$want" >"$stamp"
    fi
}

failed=()

if [[ -z $ONLY || $ONLY == python ]]; then
    setup_python
    log "pytest (python websockets $("$VENV/bin/python" -c 'import websockets; print(websockets.__version__)'))"
    # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose
    if ! "$VENV/bin/python" -m pytest -q -rxXs --timeout "$PER_TEST_TIMEOUT" ${PYTEST_ARGS:-} "$PY_DIR" </dev/null; then
        failed+=(python)
    fi
fi

if [[ -z $ONLY || $ONLY == node ]]; then
    setup_node
    log "node --test (ws $(node -p 'require("./tests/interop/node/node_modules/ws/package.json").version'))"
    if ! (cd "$NODE_DIR" && node --test --test-reporter=spec </dev/null); then
        failed+=(node)
    fi
fi

elapsed=$(($(date +%s) - START))
if ((${#failed[@]})); then
    log "FAILED: ${failed[*]} (${elapsed}s)"
    exit 1
fi
log "all interop tests passed (${elapsed}s)"
