#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient against fanout's echo app and fail
# on any non-passing case.
#
# Usage: scripts/autobahn.sh [--deflate | --deflate-full] [--tls] [--build]
#                            [--install-only] [-h]
#
#   --deflate       also run a quick subset of the permessage-deflate
#                   sections 12 and 13: in each of 12.1-12.5 and 13.1-13.7
#                   the cases with message sizes up to 4 KiB (N.M.1-N.M.5)
#                   and the auto-fragmented 8 KiB case (N.M.11)
#   --deflate-full  also run all of 12.* and 13.* (216 cases, about 15 min on
#                   2 busy cores; scripts/test.sh runs 12.* and 13.* side by side)
#   With either, the server runs with --deflate --deflate-min-size 0 (sections
#   1-10 do not offer the extension, so they are unaffected).
#   --tls           run the cases over wss:// (a self-signed certificate made
#                   with openssl; the suite's pyOpenSSL and service_identity
#                   pins provide the client side); output in target/autobahn-tls
#   --build         always run `cargo build --release` first (default: only
#                   when FANOUT_BIN is unset and target/release/fanout is missing)
#   --install-only  install (or verify the cached) test suite, then exit
#
# Output: target/autobahn/{spec.json,wstest.log,server.log,report/} (the HTML
# report is report/index.html); the last line is "autobahn: N passed, M failed".
# Exit status: 0 all passed, 1 a case failed / timeout / server died, 2 setup.
#
# Environment:
#   AUTOBAHN_PORT / PORT      port of the server under test (default 9001)
#   FANOUT_BIN                fanout binary (default target/release/fanout)
#   AUTOBAHN_SERVER_CMD       shell command that starts an echo server on $PORT;
#                             replaces the fanout command entirely
#   AUTOBAHN_CASES            JSON list of case patterns
#                             (default ["1.*","2.*",...,"9.*","10.*"])
#   AUTOBAHN_EXCLUDE          JSON list of excluded case patterns (default [])
#   AUTOBAHN_DEFLATE_CASES    JSON list replacing 12.*/13.* for --deflate-full
#   AUTOBAHN_WORK             output directory (default target/autobahn), so
#                             several runs can go side by side
#   AUTOBAHN_TIMEOUT          seconds allowed for wstest (default 540)
#   AUTOBAHN_STARTUP_TIMEOUT  seconds to wait for the server port (default 30)
#   AUTOBAHN_PROGRESS         seconds between progress lines (default 30)
#   AUTOBAHN_DEBIAN_MIRROR    Debian mirror URI for the bullseye source
#                             (default: derived from the system's apt sources)
#   AUTOBAHN_PYTHON27         Python 2.7 interpreter (default /usr/bin/python2.7,
#                             installed from bullseye when missing)
#   FANOUT_CACHE              cache root (default $HOME/.cache/fanout); the
#                             suite lives in $FANOUT_CACHE/autobahn-py27
#
# Autobahn|Testsuite needs Python 2.7.  On Debian 12 it is taken from the
# bullseye suite of the system's own mirror, pinned so that only the
# python2.7 packages (and the two libraries they need) come from there.
set -euo pipefail

readonly SUITE_VERSION=25.10.1
readonly PIP_VERSION=20.3.4
# Exact pins: the suite's requirements.txt plus every transitive dependency,
# each at the last release that still works on Python 2.7.  Everything is a
# wheel except autobahn and txaio (pure-Python sdists), so nothing compiles.
readonly PY27_PINS=(
  setuptools==44.0.0 wheel==0.37.1 six==1.16.0
  Twisted==19.10.0 zope.interface==4.6.0 incremental==16.10.1
  constantly==15.1.0 Automat==20.2.0 attrs==21.4.0 hyperlink==21.0.0
  idna==2.10 PyHamcrest==1.9.0 typing==3.10.0.0
  autobahn==0.10.9 txaio==2.1.0
  cryptography==3.3.2 cffi==1.15.1 pycparser==2.21 enum34==1.1.10
  ipaddress==1.0.23 pyOpenSSL==19.1.0
  service_identity==18.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0
  klein==17.10.0 Werkzeug==1.0.1 jinja2==2.11.3 markupsafe==1.1.1
  unittest2==1.1.0 traceback2==1.4.0 linecache2==1.0.0
  "autobahntestsuite==${SUITE_VERSION}"
)
# C speed-ups for the suite's masking and UTF-8 checks (about 3x faster runs,
# which makes sections 12 and 13 affordable); built from source against
# python2.7-dev, and optional: without them the suite is slower, not wrong.
readonly PY27_ACCEL=(wsaccel==0.6.2)
readonly DEFAULT_CASES='["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*"]'
# Deflate sections: "quick" expands to explicit case ids (wstest's patterns
# are unanchored regexes, so "12.*.1" would also match 12.1.10-12.1.18).
readonly DEFLATE_FULL_CASES='["12.*","13.*"]'
readonly APT_LIST=/etc/apt/sources.list.d/fanout-bullseye.list
readonly APT_PREFS=/etc/apt/preferences.d/fanout-bullseye
# Packages allowed from bullseye; everything else there is pinned to -1.
readonly BULLSEYE_PKGS="python2.7 python2.7-minimal python2.7-dev libpython2.7 libpython2.7-minimal libpython2.7-stdlib libpython2.7-dev libssl1.1 libffi7"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
PREFIX=$CACHE/autobahn-py27
WSTEST=$PREFIX/bin/wstest
# Debian's interpreter, by absolute path: a pyenv shim named python2.7 may
# come first in PATH.
PY27=${AUTOBAHN_PYTHON27:-/usr/bin/python2.7}
STAMP=$PREFIX/.fanout-pins
PORT=${AUTOBAHN_PORT:-${PORT:-9001}}
export PORT
WORK=${AUTOBAHN_WORK:-$ROOT/target/autobahn}
[[ $WORK == /* ]] || WORK=$ROOT/$WORK
SCHEME=ws
OUTDIR=$WORK/report

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

deflate=none build=0 install_only=0 tls=0
while (($#)); do
  case $1 in
    --deflate) deflate=quick ;;
    --deflate-full) deflate=full ;;
    --build) build=1 ;;
    --tls) tls=1 ;;
    --install-only) install_only=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
if ((tls)); then
  [[ -n ${AUTOBAHN_WORK:-} ]] || WORK=$ROOT/target/autobahn-tls
  OUTDIR=$WORK/report SCHEME=wss
fi

[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Python 2.7 with a clean environment: nothing from the caller's Python 3
# setup may leak in, and the suite's prefix is the user site directory.
py27() {
  env -u PYTHONPATH -u PYTHONHOME -u PIP_REQUIRE_VIRTUALENV \
    PYTHONUSERBASE="$PREFIX" PIP_CACHE_DIR="$CACHE/pip-py27" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$@"
}

# What the cached prefix was built from: a change reinstalls it.
stamp_text() { printf '%s\n' "$PY27" "${PY27_PINS[@]}" "${PY27_ACCEL[@]}"; }

suite_works() {
  [[ -x $WSTEST && -f $STAMP ]] || return 1
  [[ $(cat "$STAMP") == "$(stamp_text)" ]] || return 1
  py27 "$WSTEST" --autobahnversion 2>/dev/null | grep -q "AutobahnTestSuite ${SUITE_VERSION}"
}

python27_works() {
  [[ -x $PY27 ]] && "$PY27" -c 'import ssl, zlib, ctypes, json' 2>/dev/null
}

# URI of the system's main Debian mirror, e.g. "http://<host>/debian".
debian_mirror() {
  local codename f uri
  codename=$(sed -n 's/^VERSION_CODENAME=["'\'']\{0,1\}\([a-z]*\).*/\1/p' /etc/os-release 2>/dev/null || true)
  [[ -n $codename ]] || return 0
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    # deb822 stanzas: the first URI of a "deb" stanza listing the bare codename.
    uri=$(awk -v want="$codename" '
      function flush() {
        if (!found && types ~ /(^| )deb( |$)/ && (suites " ") ~ (" " want " ") && uri != "") { print uri; found = 1 }
        types = ""; suites = ""; uri = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:"  { $1 = ""; types = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "uris:"   { uri = $2 }
      END { flush() }
    ' "$f")
    [[ -n $uri ]] && { echo "$uri"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f && $f != "$APT_LIST" ]] || continue
    # One-line format: deb [options] URI suite component...
    uri=$(awk -v want="$codename" '
      !done && $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == want) { print $i; done = 1 }
      }
    ' "$f")
    [[ -n $uri ]] && { echo "$uri"; return 0; }
  done
  return 0
}

install_python27() {
  if python27_works; then
    log "using $PY27 ($("$PY27" -c 'import sys; print(sys.version.split()[0])'))"
    return
  fi
  local mirror=${AUTOBAHN_DEBIAN_MIRROR:-}
  [[ -n $mirror ]] || mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "cannot derive the Debian mirror from /etc/apt; set AUTOBAHN_DEBIAN_MIRROR"
  mirror=${mirror%/}
  log "adding bullseye from $mirror for python2.7 ($APT_LIST, $APT_PREFS)"

  local signed=""
  [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
    signed=" [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
  local tmp
  tmp=$(mktemp)
  printf '# Added by fanout scripts/autobahn.sh: Python 2.7 for Autobahn|Testsuite.\ndeb%s %s bullseye main\n' \
    "$signed" "$mirror" >"$tmp"
  as_root install -m 0644 "$tmp" "$APT_LIST"
  cat >"$tmp" <<EOF
# Added by fanout scripts/autobahn.sh: only python2.7 and the libraries it
# needs may come from bullseye; nothing else is installed, upgraded or
# downgraded from there.
Package: $BULLSEYE_PKGS
Pin: release n=bullseye
Pin-Priority: 100

Package: *
Pin: release n=bullseye
Pin-Priority: -1
EOF
  as_root install -m 0644 "$tmp" "$APT_PREFS"
  rm -f "$tmp"

  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
  as_root "${apt[@]}" update >/dev/null
  as_root "${apt[@]}" install -y --no-install-recommends python2.7 python2.7-dev >/dev/null
  python27_works || die "python2.7 installed but $PY27 is not usable"
  log "installed $("$PY27" -V 2>&1)"
}

# wsaccel: needs Python.h and a C compiler; a failure only costs speed.
install_accel() {
  if [[ ! -f /usr/include/python2.7/pyconfig.h && -f $APT_LIST ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 \
      install -y --no-install-recommends python2.7-dev >/dev/null 2>&1 || true
  fi
  if py27 "$PY27" -m pip "$@" -q --no-deps --no-binary=:all: "${PY27_ACCEL[@]}" >/dev/null 2>&1 &&
    py27 "$PY27" -c 'import wsaccel.xormask, wsaccel.utf8validator' 2>/dev/null; then
    log "installed ${PY27_ACCEL[*]} (C masking and UTF-8 for the suite)"
  else
    log "warning: could not build ${PY27_ACCEL[*]} (needs python2.7-dev and gcc); the suite runs slower"
  fi
}

install_suite() {
  local t0=$SECONDS
  install_python27

  # pip for Python 2.7: get-pip.py is not reachable, so fetch the last
  # py2-compatible pip wheel with Python 3's pip and run pip from the wheel.
  local boot=$CACHE/autobahn-bootstrap
  local pipwhl=$boot/pip-${PIP_VERSION}-py2.py3-none-any.whl
  if [[ ! -f $pipwhl ]]; then
    command -v python3 >/dev/null || die "python3 is needed to fetch pip for python2.7"
    if ! python3 -m pip --version >/dev/null 2>&1; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get -q install -y python3-pip >/dev/null
    fi
    mkdir -p "$boot"
    env -u PIP_REQUIRE_VIRTUALENV python3 -m pip download -q --disable-pip-version-check \
      "pip==${PIP_VERSION}" --no-deps --only-binary=:all: -d "$boot"
  fi
  [[ -f $pipwhl ]] || die "pip wheel not found after download: $pipwhl"

  # Build into a fresh directory and swap it in only when it works, so an
  # interrupted install never looks like a valid cache.
  local final=$PREFIX
  PREFIX=$final.new WSTEST=$final.new/bin/wstest STAMP=$final.new/.fanout-pins
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  local pipargs=(install --user --no-warn-script-location --no-python-version-warning
    --disable-pip-version-check --ignore-installed)
  log "installing pip ${PIP_VERSION}, setuptools, wheel into $final"
  py27 "$PY27" "$pipwhl/pip" "${pipargs[@]}" -q "$pipwhl" setuptools==44.0.0 wheel==0.37.1
  log "installing autobahntestsuite ${SUITE_VERSION} and pinned dependencies"
  # --no-deps: the pin list is complete (pip check below proves it), and it
  # keeps autobahn's [accelerate] extra (wsaccel, needs a C compiler) out.
  py27 "$PY27" -m pip "${pipargs[@]}" -q --no-deps \
    --only-binary=:all: --no-binary=autobahn,txaio "${PY27_PINS[@]}"
  py27 "$PY27" -m pip check --no-python-version-warning >/dev/null ||
    { py27 "$PY27" -m pip check --no-python-version-warning || true; die "inconsistent python2.7 dependencies"; }
  install_accel "${pipargs[@]}"
  stamp_text >"$STAMP"
  suite_works || die "wstest does not run after installation"

  rm -rf "$final"
  mv "$PREFIX" "$final"
  PREFIX=$final WSTEST=$final/bin/wstest STAMP=$final/.fanout-pins
  log "suite installed in $((SECONDS - t0))s"
}

ensure_suite() {
  mkdir -p "$CACHE"
  # Serialise concurrent runs sharing the cache while one of them installs.
  exec 9>"$CACHE/autobahn-py27.lock"
  flock 9
  if suite_works; then
    log "using cached suite in $PREFIX ($(py27 "$WSTEST" --autobahnversion 2>/dev/null | tr '\n' ' '))"
  else
    install_suite
  fi
  exec 9>&-
}

# ---------------------------------------------------------------- server --
SERVER_PID=""
WSTEST_PID=""

stop_pgroup() { # pid == pgid (started via setsid)
  local pid=$1 i
  kill -0 -- "-$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked through the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $WSTEST_PID ]]; then
    kill -TERM "$WSTEST_PID" 2>/dev/null || true
    wait "$WSTEST_PID" 2>/dev/null || true
  fi
  if [[ -n $SERVER_PID ]]; then
    stop_pgroup "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_server() {
  local cmd
  if [[ -n ${AUTOBAHN_SERVER_CMD:-} ]]; then
    cmd=$AUTOBAHN_SERVER_CMD
  else
    local bin=${FANOUT_BIN:-}
    if [[ -z $bin ]]; then
      bin=$ROOT/target/release/fanout
      if ((build)) || [[ ! -x $bin ]]; then
        log "cargo build --release"
        (cd "$ROOT" && cargo build --release)
      fi
    fi
    [[ -x $bin ]] || die "fanout binary not found: $bin"
    # Section 9 sends messages of up to 16 MiB; the default limit is 1 MiB.
    printf -v cmd '%q serve --app echo --listen 127.0.0.1:%s --max-message-size 16MiB' "$bin" "$PORT"
    # Sections 12 and 13 need the extension; every message is compressed back.
    [[ $deflate == none ]] || cmd+=" --deflate --deflate-min-size 0"
    if ((tls)); then
      printf -v cmd '%s --tls-cert %q --tls-key %q' "$cmd" "$TLS_CERT" "$TLS_KEY"
    fi
  fi
  port_open && die "port $PORT is already in use; set AUTOBAHN_PORT"

  local slog=$WORK/server.log
  log "starting server: $cmd (log: ${slog#"$ROOT"/})"
  # Own session/process group, so the whole tree can be stopped and a
  # terminal Ctrl-C reaches only this script, which then cleans up.
  setsid bash -c "$cmd" </dev/null >"$slog" 2>&1 &
  SERVER_PID=$!

  local deadline=$((SECONDS + ${AUTOBAHN_STARTUP_TIMEOUT:-30}))
  until port_open; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 20 "$slog" >&2 || true
      die "server exited before listening on port $PORT"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$slog" >&2 || true
      die "server not listening on port $PORT after ${AUTOBAHN_STARTUP_TIMEOUT:-30}s"
    fi
    sleep 0.1
  done
}

write_spec() {
  local cases=${AUTOBAHN_CASES:-$DEFAULT_CASES}
  python3 - "$1" "$OUTDIR" "$PORT" "$cases" "$deflate" "${AUTOBAHN_DEFLATE_CASES:-$DEFLATE_FULL_CASES}" \
    "${AUTOBAHN_EXCLUDE:-[]}" "$SCHEME" <<'PY'
import json, sys
path, outdir, port, cases, deflate, deflate_full, exclude, scheme = sys.argv[1:]
def pats(name, text):
    try:
        value = json.loads(text)
    except ValueError as exc:
        sys.exit("autobahn: error: %s is not JSON: %s" % (name, exc))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        sys.exit("autobahn: error: %s must be a JSON list of strings" % name)
    return value
cases = pats("AUTOBAHN_CASES", cases)
if deflate == "full":
    extra = pats("AUTOBAHN_DEFLATE_CASES", deflate_full)
elif deflate == "quick":
    extra = ["%d.%d.%d" % (sec, sub, size)
             for sec, subs in ((12, 5), (13, 7))
             for sub in range(1, subs + 1)
             for size in (1, 2, 3, 4, 5, 11)]
else:
    extra = []
cases += [c for c in extra if c not in cases]
spec = {
    "outdir": outdir,
    "servers": [{"agent": "fanout", "url": "%s://127.0.0.1:%s" % (scheme, port)}],
    "cases": cases,
    "exclude-cases": pats("AUTOBAHN_EXCLUDE", exclude),
    "exclude-agent-cases": {},
}
with open(path, "w") as fh:
    json.dump(spec, fh, indent=2)
    fh.write("\n")
print("autobahn: cases %s, excluded %s" % (spec["cases"], spec["exclude-cases"]), file=sys.stderr)
PY
}

# ------------------------------------------------------------------ main --
ensure_suite
((install_only)) && exit 0

mkdir -p "$WORK"
rm -rf "$OUTDIR"
if ((tls)); then
  py27 "$PY27" -c 'import OpenSSL, service_identity' ||
    die "the suite's Python 2.7 cannot import pyOpenSSL/service_identity (needed for wss://)"
  if ! command -v openssl >/dev/null && command -v apt-get >/dev/null; then
    log "apt-get install openssl (for the test certificate)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl </dev/null || true
  fi
  command -v openssl >/dev/null || die "--tls needs the openssl command (apt-get install openssl)"
  TLS_CERT=$WORK/cert.pem TLS_KEY=$WORK/key.pem
  export TLS_CERT TLS_KEY # for an AUTOBAHN_SERVER_CMD
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TLS_KEY" -out "$TLS_CERT" -days 2 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
    2>/dev/null || die "openssl could not make the test certificate"
fi
spec=$WORK/spec.json
write_spec "$spec"
start_server

timeout_s=${AUTOBAHN_TIMEOUT:-540}
wlog=$WORK/wstest.log
log "running wstest fuzzingclient against $SCHEME://127.0.0.1:$PORT (timeout ${timeout_s}s, log: ${wlog#"$ROOT"/})"
t0=$SECONDS
# In the background, so INT/TERM traps run at once, not after wstest.
(cd "$WORK" && exec timeout -k 10 "$timeout_s" env -u PYTHONPATH -u PYTHONHOME PYTHONUNBUFFERED=1 \
  PYTHONUSERBASE="$PREFIX" "$WSTEST" -m fuzzingclient -s "$spec") </dev/null >"$wlog" 2>&1 &
WSTEST_PID=$!
planned="" next_report=$((SECONDS + ${AUTOBAHN_PROGRESS:-30}))
while kill -0 "$WSTEST_PID" 2>/dev/null; do
  sleep 1
  if [[ -z $planned ]]; then
    planned=$(sed -n 's/^Ok, will run \([0-9]*\) test cases.*/\1/p' "$wlog")
    [[ -n $planned ]] && log "wstest will run $planned cases"
  fi
  if ((SECONDS >= next_report)); then
    log "$(grep -c '^Running test case' "$wlog") of ${planned:-?} cases started after $((SECONDS - t0))s"
    next_report=$((SECONDS + ${AUTOBAHN_PROGRESS:-30}))
  fi
done
if wait "$WSTEST_PID"; then wstest_rc=0; else wstest_rc=$?; fi
WSTEST_PID=""
log "wstest finished in $((SECONDS - t0))s (exit $wstest_rc)"
((wstest_rc == 0)) || tail -n 20 "$wlog" >&2 || true

server_died=0
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  server_died=1
else
  stop_pgroup "$SERVER_PID"
fi
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

summary_rc=0
python3 "$ROOT/scripts/autobahn_summary.py" --agent fanout --wstest-log "$wlog" "$OUTDIR" ||
  summary_rc=$?
if ((server_died)); then
  tail -n 20 "$WORK/server.log" >&2 || true
  log "error: the server exited during the run (log: ${WORK#"$ROOT"/}/server.log)"
  exit 1
elif ((wstest_rc == 124 || wstest_rc == 137)); then
  log "error: wstest timed out after ${timeout_s}s"
  exit 1
elif ((wstest_rc != 0)); then
  log "error: wstest exited with status $wstest_rc"
  exit 1
fi
exit "$((summary_rc == 0 ? 0 : 1))"
