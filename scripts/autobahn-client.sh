#!/usr/bin/env bash
# Run Autobahn|Testsuite in fuzzingserver mode against fanout's client reactor
# (examples/autobahn_client.rs, an echo client) and fail on any non-passing
# case: the client role's counterpart of scripts/autobahn.sh.
#
# Usage: scripts/autobahn-client.sh [--deflate | --deflate-full] [-h]
#
#   (no option)     sections 1-10, no extension offered
#   --deflate       then, in a second run offering permessage-deflate, the
#                   quick subset of sections 12 and 13 that autobahn.sh
#                   --deflate runs (sizes up to 4 KiB and the 8 KiB case)
#   --deflate-full  then all of 12.* and 13.* (216 cases)
#   The client offers client_max_window_bits, so 13.3.*-13.6.* (the suite's
#   server caps the client's window at 9 or 15) run too.
#
# Output: target/autobahn-client/{plain,deflate}/{spec.json,wstest.log,
# client.log,report/}; the last line of each run is "autobahn: N passed,
# M failed". Exit status: 0 all passed, 1 a case failed or a run broke,
# 2 setup. The suite is installed (or taken from its cache) by
# scripts/autobahn.sh --install-only.
#
# Environment:
#   AUTOBAHN_CLIENT_PORT      port of the suite's fuzzing server (default 9011)
#   AUTOBAHN_TIMEOUT          seconds allowed for each run (default 900)
#   FANOUT_CACHE              as in scripts/autobahn.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
PREFIX=$CACHE/autobahn-py27
WSTEST=$PREFIX/bin/wstest
PORT=${AUTOBAHN_CLIENT_PORT:-9011}
WORK=$ROOT/target/autobahn-client
CLIENT=$ROOT/target/release/examples/autobahn_client

log() { printf 'autobahn-client: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

deflate=none
while (($#)); do
  case $1 in
    --deflate) deflate=quick ;;
    --deflate-full) deflate=full ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

"$ROOT/scripts/autobahn.sh" --install-only
log "cargo build --release --example autobahn_client"
(cd "$ROOT" && cargo build --release --example autobahn_client) >&2

WSTEST_PID=""
# shellcheck disable=SC2317 # invoked through the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $WSTEST_PID ]]; then
    kill -TERM "$WSTEST_PID" 2>/dev/null || true
    wait "$WSTEST_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# run NAME CASES_JSON [--deflate]: one fuzzing server, the client through all its cases.
run() {
  local name=$1 cases=$2 flag=${3:-} dir=$WORK/$1 exclude='[]'
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 - "$dir/spec.json" "$dir/report" "$PORT" "$cases" "$exclude" <<'PY'
import json, sys
path, outdir, port, cases, exclude = sys.argv[1:]
spec = {"url": "ws://127.0.0.1:%s" % port, "outdir": outdir, "cases": json.loads(cases),
        "exclude-cases": json.loads(exclude), "exclude-agent-cases": {}}
with open(path, "w") as fh:
    json.dump(spec, fh, indent=2)
PY
  port_open && die "port $PORT is already in use; set AUTOBAHN_CLIENT_PORT"
  (cd "$dir" && exec timeout -k 10 "${AUTOBAHN_TIMEOUT:-900}" env -u PYTHONPATH -u PYTHONHOME \
    PYTHONUNBUFFERED=1 PYTHONUSERBASE="$PREFIX" "$WSTEST" -m fuzzingserver -s spec.json) \
    </dev/null >"$dir/wstest.log" 2>&1 &
  WSTEST_PID=$!
  local deadline=$((SECONDS + 30))
  until port_open; do
    kill -0 "$WSTEST_PID" 2>/dev/null || { tail -n 20 "$dir/wstest.log" >&2; die "wstest exited"; }
    ((SECONDS < deadline)) || die "wstest not listening on $PORT after 30s"
    sleep 0.2
  done
  log "$name: client through $cases (log: ${dir#"$ROOT"/}/client.log)"
  local t0=$SECONDS client_rc=0
  "$CLIENT" "ws://127.0.0.1:$PORT" ${flag:+"$flag"} >"$dir/client.log" 2>&1 || client_rc=$?
  kill -TERM "$WSTEST_PID" 2>/dev/null || true
  wait "$WSTEST_PID" 2>/dev/null || true
  WSTEST_PID=""
  log "$name: done in $((SECONDS - t0))s (client exit $client_rc)"
  local summary_rc=0
  python3 "$ROOT/scripts/autobahn_summary.py" --agent fanout "$dir/report" || summary_rc=$?
  ((client_rc == 0 && summary_rc == 0))
}

rc=0
run plain '["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*"]' || rc=1
case $deflate in
  quick)
    cases=$(python3 -c 'import json; print(json.dumps(["%d.%d.%d" % (s, u, z) for s, n in ((12, 5), (13, 7)) for u in range(1, n + 1) for z in (1, 2, 3, 4, 5, 11)]))')
    run deflate "$cases" --deflate || rc=1 ;;
  full) run deflate '["12.*","13.*"]' --deflate || rc=1 ;;
esac
exit "$rc"
