#!/usr/bin/env bash
# Tests scripts/tune-limits.sh (the wrapper of `fanout limits`) for real on this machine:
# check, apply, revert against the live /proc/sys (needs root), --persist under a temporary
# root (TUNE_LIMITS_ROOT). Every sysctl it touches is saved first and restored on exit,
# whatever happens.
# Prints "tune-limits tests: N passed, M failed"; exits non-zero on any failure.
set -uo pipefail # no -e: a failed assertion is counted, not fatal
cd "$(dirname "$0")/.." || exit 1

SCRIPT=$PWD/scripts/tune-limits.sh
PASSED=0 FAILED=0
TMP=$(mktemp -d /tmp/tune-limits-test.XXXXXX)

pass() {
    PASSED=$((PASSED + 1))
    printf 'ok   %s\n' "$*"
}
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL %s\n' "$*"
}
# expect DESCRIPTION COMMAND...: passes when the command succeeds.
expect() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# Everything tune-limits.sh may change. Missing ones (e.g. no nf_conntrack) are skipped.
KEYS=(fs.file-max fs.nr_open net.core.somaxconn net.ipv4.tcp_max_syn_backlog
    net.core.netdev_max_backlog net.ipv4.ip_local_port_range net.ipv4.tcp_tw_reuse
    net.ipv4.tcp_fin_timeout net.ipv4.tcp_mem net.netfilter.nf_conntrack_max)
PERSIST_PATHS=(/etc/sysctl.d/90-fanout.conf /etc/security/limits.d/90-fanout.conf
    /etc/systemd/system/fanout.service.d/limits.conf)

proc() { printf '/proc/sys/%s' "${1//.//}"; }
get() { cat "$(proc "$1")"; }
set_sysctl() { sysctl -q -w "$1=$2" >/dev/null; }

# Raw values, tabs kept: comparing two snapshots compares every value exactly.
snapshot() {
    local k
    for k in "${KEYS[@]}"; do
        [[ -e $(proc "$k") ]] && printf '%s=%s\n' "$k" "$(get "$k")"
    done
}

# snap_get SNAPSHOT KEY: one value of a snapshot.
snap_get() {
    local line
    while IFS= read -r line; do
        [[ $line == "$2="* ]] && printf '%s' "${line#*=}" && return 0
    done <<<"$1"
    return 1
}

declare -A ORIG=()
for k in "${KEYS[@]}"; do
    [[ -e $(proc "$k") ]] && ORIG[$k]=$(get "$k")
done
ORIG_SNAPSHOT=$(snapshot)
declare -A PERSIST_EXISTED=()
for p in "${PERSIST_PATHS[@]}"; do
    [[ -e $p ]] && PERSIST_EXISTED[$p]=1
done

restore() {
    local k
    for k in "${!ORIG[@]}"; do
        if [[ $(get "$k") != "${ORIG[$k]}" ]]; then
            set_sysctl "$k" "${ORIG[$k]}" || printf 'WARNING: could not restore %s to %s\n' "$k" "${ORIG[$k]}" >&2
        fi
    done
}
cleanup() {
    restore
    rm -rf -- "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $(id -u) != 0 ]] || ! set_sysctl net.core.somaxconn "$(get net.core.somaxconn)" 2>/dev/null; then
    echo "tests/tune_limits.sh needs root and a writable /proc/sys"
    echo "tune-limits tests: 0 passed, 1 failed"
    exit 1
fi

# run NAME ARGS...: runs the script, output in $TMP/NAME.out, exit status in RC.
RC=0
run() {
    local name=$1
    shift
    "$SCRIPT" "$@" >"$TMP/$name.out" 2>&1
    RC=$?
}
out() { cat "$TMP/$1.out"; }
has() { grep -qF -- "$2" "$TMP/$1.out"; }

# row_printed NAME FILE: a table line starts with NAME and a column gap.
row_printed() {
    local line
    while IFS= read -r line; do
        [[ $line == "$1  "* ]] && return 0
    done <"$2"
    return 1
}

# Checks a --json file with python3; prints nothing, exits non-zero on a problem.
# json_ok FILE EXPECTED_EXIT TABLE_OUTPUT_FILE
json_ok() {
    python3 - "$@" <<'EOF'
import json, sys
path, code, table = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = json.load(open(path))
rows = d["rows"]
assert rows, "no rows"
statuses = {"OK", "LOW", "WARN", "CANNOT-RAISE", "INFO"}
for r in rows:
    assert set(r) >= {"name", "current", "needed", "status", "blocking", "fix", "set"}, r
    assert r["status"] in statuses, r
    assert isinstance(r["blocking"], bool), r
names = [r["name"] for r in rows]
assert len(names) == len(set(names)), "duplicate rows"
blocking = any(r["status"] in ("LOW", "CANNOT-RAISE") and r["blocking"] for r in rows)
assert d["exit_code"] == code == (1 if blocking else 0), (d["exit_code"], code, blocking)
text = open(table).read()
for r in rows:
    assert r["name"] in text, r["name"]
for k in ("kernel_bytes", "user_bytes", "mem_available_bytes"):
    assert isinstance(d["memory"][k], int)
EOF
}

# Value of a field of one row of a --json file.
json_row() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print([r for r in d["rows"] if r["name"]==sys.argv[2]][0][sys.argv[3]])' "$@"
}

# ---------------------------------------------------------------------------------------
echo "== static"
if command -v shellcheck >/dev/null; then
    expect "shellcheck scripts/tune-limits.sh" shellcheck "$SCRIPT"
    expect "shellcheck tests/tune_limits.sh" shellcheck "$PWD/tests/tune_limits.sh"
else
    fail "shellcheck not installed (apt-get install -y shellcheck)"
fi
run help --help
expect "--help exits 0 with usage" test "$RC" = 0 -a -n "$(grep -F 'Usage:' "$TMP/help.out")"
run badcmd frobnicate
expect "unknown command exits 2" test "$RC" = 2
run badopt check --connections many
expect "bad --connections exits 2" test "$RC" = 2
run badopt2 revert --persist
expect "option of another command exits 2" test "$RC" = 2
# The script is a wrapper: `fanout limits` itself prints the same table.
run wrapped check --connections 1000
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/fanout
"$BIN" limits check --connections 1000 >"$TMP/direct.out" 2>&1
expect "fanout limits check exits as the script does ($RC)" test "$?" = "$RC"
# Less what moves between two runs (open file handles, MemAvailable) and the program's name.
stable() { grep -v -e 'fs.file-max' -e 'MemAvailable' -e '^Result' -e 'building' "$1"; }
expect "fanout limits check prints the script's table" \
    test "$(stable "$TMP/direct.out")" = "$(stable "$TMP/wrapped.out")"

# ---------------------------------------------------------------------------------------
echo "== (1) check on this machine as it is"
run check1 check --json "$TMP/check1.json"
ROWS=("ulimit -n (soft)" "ulimit -Hn (hard)" fs.file-max fs.nr_open net.core.somaxconn
    net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog net.ipv4.ip_local_port_range
    net.ipv4.tcp_tw_reuse net.ipv4.tcp_fin_timeout net.ipv4.tcp_mem net.ipv4.tcp_rmem
    net.ipv4.tcp_wmem MemAvailable)
[[ -e $(proc net.netfilter.nf_conntrack_max) ]] && ROWS+=(net.netfilter.nf_conntrack_max)
missing=()
for r in "${ROWS[@]}"; do
    row_printed "$r" "$TMP/check1.out" || missing+=("$r")
done
expect "check prints every row (missing: ${missing[*]:-none})" test "${#missing[@]}" = 0
expect "check prints the memory estimate and MemAvailable" \
    grep -qE 'kernel: +100000 sockets x 5120 B.*fanout user space: 50000 x 256 B|MemAvailable' "$TMP/check1.out"
expect "check --json parses and agrees with the exit status ($RC)" json_ok "$TMP/check1.json" "$RC" "$TMP/check1.out"
# Independent of the script: these alone must make it exit 1.
read -r lo hi <<<"$(get net.ipv4.ip_local_port_range)"
must_fail=0
(($(get net.core.somaxconn) < 4096 || $(get net.ipv4.tcp_max_syn_backlog) < 4096 || hi - lo + 1 < 50000)) && must_fail=1
if ((must_fail)); then
    expect "check exits 1 (somaxconn/syn_backlog/port range are short here)" test "$RC" = 1
else
    expect "check exits 0 or 1" test "$RC" = 0 -o "$RC" = 1
fi
if ((hi - lo + 1 < 50000)); then
    # A quarter of the range per source address (past half, connect() walks every even port).
    quarter=$(((hi - lo + 1 + 3) / 4))
    addrs=$(((50000 + quarter - 1) / quarter))
    expect "port range row says how many source addresses ($addrs, a quarter of the range each)" \
        grep -qF -- "needs $addrs source addresses: fanout-load --source-ips 127.0.0.1-127.0.0.$addrs" "$TMP/check1.out"
fi
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
hard=$(ulimit -Hn)
if (((16#$capeff >> 24 & 1) == 0)) && [[ $hard != unlimited ]] && ((hard < 50064)); then
    procs=$(((50000 + hard - 64 - 1) / (hard - 64)))
    expect "no CAP_SYS_RESOURCE: hard ulimit row is CANNOT-RAISE, not LOW" \
        test "$(json_row "$TMP/check1.json" "ulimit -Hn (hard)" status)" = CANNOT-RAISE
    expect "CANNOT-RAISE is not blocking" test "$(json_row "$TMP/check1.json" "ulimit -Hn (hard)" blocking)" = False
    expect "says ceil(50000 / ($hard - 64)) = $procs server and client processes" \
        grep -qF "ceil(50000 / ($hard - 64)) = $procs server processes and $procs client processes" "$TMP/check1.out"
fi
# A million: every limit named, with its fix (processes for the fd cap, source addresses).
run check_million check --connections 1000000 --json "$TMP/million.json"
quarter=$(((hi - lo + 1 + 3) / 4))
addrs=$(((1000000 + quarter - 1) / quarter))
expect "a million: the port range row asks for $addrs source addresses" \
    test "$(json_row "$TMP/million.json" net.ipv4.ip_local_port_range needed)" = "$addrs source addrs"
for r in fs.file-max fs.nr_open net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_mem MemAvailable; do
    expect "a million: row $r is there" row_printed "$r" "$TMP/check_million.out"
done
[[ -e $(proc net.netfilter.nf_conntrack_max) ]] &&
    expect "a million: conntrack row is there (nf_conntrack loaded)" row_printed net.netfilter.nf_conntrack_max "$TMP/check_million.out"
expect "a million: fs.file-max needs both sides' sockets (>= 2000000)" \
    test "$(json_row "$TMP/million.json" fs.file-max needed | tr -dc 0-9)" -ge 2000000
if [[ $hard != unlimited ]] && ((hard < 1000064 && (16#$capeff >> 24 & 1) == 0)); then
    procs=$(((1000000 + hard - 64 - 1) / (hard - 64)))
    expect "a million: $procs server and client processes for the fd cap" \
        grep -qF "= $procs server processes and $procs client processes" "$TMP/check_million.out"
fi
run check_10k check --connections 10000 --json "$TMP/10k.json"
if ((hi - lo + 1 >= 10000 && (hi - lo + 1 + 3) / 4 < 10000)); then
    expect "10,000 from one address: over a quarter of the range is INFO with --source-ips" \
        test "$(json_row "$TMP/10k.json" net.ipv4.ip_local_port_range status)" = INFO
fi
run check_server check --server-only --connections 1000 --json "$TMP/server.json"
expect "check --server-only --connections 1000 --json parses" json_ok "$TMP/server.json" "$RC" "$TMP/check_server.out"
expect "--server-only: port range is INFO" test "$(json_row "$TMP/server.json" net.ipv4.ip_local_port_range status)" = INFO
expect "--connections 1000: ulimit hard OK" test "$(json_row "$TMP/server.json" "ulimit -Hn (hard)" status)" = OK
run check_bpc check --connections 1000 --bytes-per-conn 1000
expect "--bytes-per-conn is used in the estimate" has check_bpc "1000 x 1000 B"

# ---------------------------------------------------------------------------------------
echo "== (2) somaxconn and tcp_max_syn_backlog at 128: LOW"
set_sysctl net.core.somaxconn 128
set_sysctl net.ipv4.tcp_max_syn_backlog 128
run check2 check --json "$TMP/check2.json"
expect "check exits 1" test "$RC" = 1
expect "somaxconn row is LOW" test "$(json_row "$TMP/check2.json" net.core.somaxconn status)" = LOW
expect "tcp_max_syn_backlog row is LOW" test "$(json_row "$TMP/check2.json" net.ipv4.tcp_max_syn_backlog status)" = LOW
expect "the fix is the exact command" has check2 "sysctl -w net.core.somaxconn=4096"

# ---------------------------------------------------------------------------------------
echo "== (3) apply --dry-run changes nothing"
BEFORE=$(snapshot)
STATE=$TMP/x.state
run dry apply --dry-run --state "$STATE"
expect "apply --dry-run exits 0" test "$RC" = 0
expect "apply --dry-run prints the sysctl commands" \
    grep -qF "would run: sysctl -w net.core.somaxconn=4096" "$TMP/dry.out"
expect "apply --dry-run prints tcp_max_syn_backlog too" has dry "sysctl -w net.ipv4.tcp_max_syn_backlog=4096"
expect "apply --dry-run leaves every sysctl as it was" test "$(snapshot)" = "$BEFORE"
expect "apply --dry-run writes no state file" test ! -e "$STATE"

# ---------------------------------------------------------------------------------------
echo "== (4) apply makes them OK"
run apply1 apply --state "$STATE"
expect "apply exits 0" test "$RC" = 0 || out apply1
expect "somaxconn >= 4096 now" test "$(get net.core.somaxconn)" -ge 4096
expect "tcp_max_syn_backlog >= 4096 now" test "$(get net.ipv4.tcp_max_syn_backlog)" -ge 4096
expect "state file written" test -s "$STATE"
expect "state holds somaxconn's previous value 128" grep -qP '^sysctl\tnet\.core\.somaxconn\t128$' "$STATE"
expect "state holds port range's previous value with its tab" \
    grep -qxF "sysctl	net.ipv4.ip_local_port_range	$(snap_get "$BEFORE" net.ipv4.ip_local_port_range)" "$STATE"
run check4 check --json "$TMP/check4.json"
leftover=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(r["name"].replace(" ", "_") for r in d["rows"]
      if r["status"] in ("LOW", "WARN") and not r["name"].startswith(("ulimit", "MemAvailable"))))
' "$TMP/check4.json")
expect "after apply no sysctl row is LOW or WARN (left: ${leftover:-none})" test -z "$leftover"
only_cannot=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(all(r["status"] == "CANNOT-RAISE" for r in d["rows"] if r["blocking"] and r["status"] != "OK"))
' "$TMP/check4.json")
expect "after apply check exits 0 (or only CANNOT-RAISE rows block): rc=$RC" \
    test "$RC" = 0 -o "$only_cannot" = True

echo "== (4b) a second apply refuses to overwrite the state; --force keeps the originals"
set_sysctl net.core.somaxconn 256
sum=$(md5sum <"$STATE")
run apply2 apply --state "$STATE"
expect "apply with a state file present exits 2" test "$RC" = 2
expect "... and changes nothing" test "$(get net.core.somaxconn)" = 256
expect "... and leaves the state file as it was" test "$(md5sum <"$STATE")" = "$sum"
run apply3 apply --force --state "$STATE"
expect "apply --force exits 0" test "$RC" = 0
expect "apply --force raised somaxconn again" test "$(get net.core.somaxconn)" -ge 4096
expect "state still holds the ORIGINAL somaxconn (128) once" \
    test "$(grep -cP '^sysctl\tnet\.core\.somaxconn\t' "$STATE")" = 1 -a -n "$(grep -P '^sysctl\tnet\.core\.somaxconn\t128$' "$STATE")"

# ---------------------------------------------------------------------------------------
echo "== (5) revert restores 128/128 exactly"
AFTER_APPLY=$(snapshot)
run rdry revert --dry-run --state "$STATE"
expect "revert --dry-run exits 0 and changes nothing" test "$RC" = 0 -a "$(snapshot)" = "$AFTER_APPLY"
expect "revert --dry-run keeps the state file" test -e "$STATE"
run revert1 revert --state "$STATE"
expect "revert exits 0" test "$RC" = 0 || out revert1
expect "somaxconn is 128 again" test "$(get net.core.somaxconn)" = 128
expect "tcp_max_syn_backlog is 128 again" test "$(get net.ipv4.tcp_max_syn_backlog)" = 128
expect "every sysctl is exactly as before apply (tabs included)" test "$(snapshot)" = "$BEFORE"
expect "revert says what it did" has revert1 "restored net.core.somaxconn: "
expect "revert deletes the state file" test ! -e "$STATE"
run revert2 revert --state "$STATE"
expect "revert without a state file: 'nothing to revert', exit 0" test "$RC" = 0 -a -n "$(grep -F 'nothing to revert' "$TMP/revert2.out")"

# ---------------------------------------------------------------------------------------
echo "== multi-value: tcp_mem for 400000 connections, restored exactly"
# tcp_mem is sized for 2 KiB of buffers per socket (closing them all at once), +25%, at most
# 1/8 of RAM. A quarter of the box's own values is short of 400000 connections' 800000 sockets.
read -r m0 m1 m2 <<<"$(get net.ipv4.tcp_mem)"
set_sysctl net.ipv4.tcp_mem "$((m0 / 4)) $((m1 / 4)) $((m2 / 4))"
page=$(getconf PAGESIZE)
cap_pages=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 1024 / 8 / page))
BEFORE=$(snapshot)
run check400 check --connections 400000 --json "$TMP/c400.json"
tcp_mem_status=$(json_row "$TMP/c400.json" net.ipv4.tcp_mem status)
need_pages=$(((800000 * 2048 + page - 1) / page))
((need_pages > cap_pages)) && need_pages=$cap_pages
if ((m2 / 4 < need_pages)); then
    expect "tcp_mem at a quarter is WARN for 400000 connections (not blocking)" test "$tcp_mem_status" = WARN
fi
run apply400 apply --connections 400000 --state "$TMP/y.state"
expect "apply --connections 400000 exits 0" test "$RC" = 0
if [[ $tcp_mem_status == LOW || $tcp_mem_status == WARN ]]; then
    expect "tcp_mem was raised" test "$(get net.ipv4.tcp_mem)" != "$(snap_get "$BEFORE" net.ipv4.tcp_mem)"
    expect "state saved tcp_mem with its tabs" grep -qP '^sysctl\tnet\.ipv4\.tcp_mem\t\d+\t\d+\t\d+$' "$TMP/y.state"
    read -r _ _ new_max <<<"$(get net.ipv4.tcp_mem)"
    expect "tcp_mem max $new_max covers the $need_pages pages needed, at most 1/8 of RAM ($cap_pages)" \
        test "$new_max" -ge "$need_pages" -a "$new_max" -le "$cap_pages"
fi
run revert400 revert --state "$TMP/y.state"
expect "revert restores every value exactly (tcp_mem, port range...)" test "$RC" = 0 -a "$(snapshot)" = "$BEFORE"
set_sysctl net.ipv4.tcp_mem "${ORIG[net.ipv4.tcp_mem]}"
# Two million connections (4M sockets, 8 GiB of close buffers) stay capped at 1/8 of RAM: the
# old rule sized tcp_mem from the whole kernel estimate, and a teardown then took 7.3 GB.
run check2m check --connections 2000000 --json "$TMP/c2m.json"
set2m=$(json_row "$TMP/c2m.json" net.ipv4.tcp_mem set)
if [[ $set2m != None ]]; then
    read -r _ _ max2m <<<"$set2m"
    expect "2M connections: tcp_mem would be set to at most 1/8 of RAM ($max2m <= $cap_pages pages)" \
        test "$max2m" -le "$cap_pages"
fi

# ---------------------------------------------------------------------------------------
echo "== --persist under TUNE_LIMITS_ROOT"
R=$TMP/root
mkdir -p "$R/etc/security/limits.d"
printf 'old limits\n' >"$R/etc/security/limits.d/90-fanout.conf"
TREE_BEFORE=$(cd "$R" && find . | sort)
BEFORE=$(snapshot)
TUNE_LIMITS_ROOT=$R run persist apply --persist --state "$TMP/z.state"
expect "apply --persist exits 0" test "$RC" = 0 || out persist
expect "sysctl.d file holds somaxconn" grep -qx 'net.core.somaxconn = 4096' "$R/etc/sysctl.d/90-fanout.conf"
expect "limits.d file holds nofile soft and hard" \
    test -n "$(grep -E '^\*[[:space:]]+soft[[:space:]]+nofile[[:space:]]+[0-9]+$' "$R/etc/security/limits.d/90-fanout.conf")" \
    -a -n "$(grep -E '^root[[:space:]]+hard[[:space:]]+nofile[[:space:]]+[0-9]+$' "$R/etc/security/limits.d/90-fanout.conf")"
expect "systemd drop-in has LimitNOFILE=" grep -qE '^LimitNOFILE=[0-9]+$' "$R/etc/systemd/system/fanout.service.d/limits.conf"
expect "apply --persist says where the drop-in goes" has persist "/etc/systemd/system/fanout.service.d/limits.conf"
expect "state records the persisted files" test "$(grep -c '^file' "$TMP/z.state")" = 3
for p in "${PERSIST_PATHS[@]}"; do
    [[ -n ${PERSIST_EXISTED[$p]:-} ]] || expect "real $p untouched" test ! -e "$p"
done
run persist_revert revert --state "$TMP/z.state"
expect "revert after --persist exits 0" test "$RC" = 0 || out persist_revert
expect "revert removed the files and directories it created" test "$(cd "$R" && find . | sort)" = "$TREE_BEFORE"
expect "revert restored the file that was there before" test "$(cat "$R/etc/security/limits.d/90-fanout.conf")" = "old limits"
expect "revert restored the sysctls" test "$(snapshot)" = "$BEFORE"

# ---------------------------------------------------------------------------------------
echo "== (6) restore the machine"
restore
expect "every sysctl is back to its original value" test "$(snapshot)" = "$ORIG_SNAPSHOT"

echo "tune-limits tests: $PASSED passed, $FAILED failed"
((FAILED == 0))
