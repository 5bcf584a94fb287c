#!/usr/bin/env bash
# tune-limits.sh: check, apply and revert the OS limits fanout needs to hold N connections
# on this box (per-process fds, system fds, accept queues, ephemeral ports, TCP memory).
# `check` only reads; `apply` saves every previous value in a state file before changing it;
# `revert` restores exactly what the state file holds. Run with -h for usage.
set -euo pipefail

PROG=${0##*/}
readonly PROG
readonly RESERVED_FDS=64            # fds a fanout process keeps besides sockets (src/rt/limits.rs)
readonly DEFAULT_CONNECTIONS=50000
readonly BACKLOG_MIN=4096           # fanout's default --backlog; the kernel caps it at somaxconn
readonly SYN_BACKLOG_MIN=4096
readonly NETDEV_BACKLOG_MIN=16384   # loopback packets queue in the per-CPU backlog too
readonly FIN_TIMEOUT_MAX=30
readonly WIDE_PORT_LO=1024 WIDE_PORT_HI=65535
# connect() searches its source address's ephemeral range even ports first (Linux
# __inet_hash_connect): past half the range, every connect walks all even ports first
# (242 us of system CPU per connect at 67% full, 45 us at 8%: docs/limits.md). Plan each
# source address for a quarter of the range.
readonly PORT_SHARE_DIV=4
readonly KERNEL_BYTES_DEFAULT=5120  # per idle loopback TCP socket, measured: see kernel_estimate_note
readonly USER_BYTES_DEFAULT=256     # fanout's design target per idle connection
readonly UNLIMITED_FDS=1073741816   # stands in for "unlimited" in arithmetic
ROOT=${TUNE_LIMITS_ROOT:-}          # prefix for the /etc paths --persist writes (tests)
ROOT=${ROOT%/}
[[ -z $ROOT || $ROOT == /* ]] || ROOT=$PWD/$ROOT

usage() {
    cat <<EOF
Usage:
  $PROG check  [--connections N] [--server-only] [--json FILE]
               [--bytes-per-conn B] [--kernel-bytes-per-socket B]
  $PROG apply  [--connections N] [--server-only] [--dry-run] [--persist]
               [--state FILE] [--force]
  $PROG revert [--state FILE] [--dry-run]
  $PROG -h | --help

Checks, raises and restores the OS limits fanout needs for N connections (default
$DEFAULT_CONNECTIONS). By default the server and the client (fanout-load) run on this box over
loopback, so every connection costs 2 sockets here; --server-only counts the server side only.

check    One row per limit: current value, value needed, status, and the fix (the command).
           OK            enough for N connections
           LOW           blocks N connections; \`apply\` raises it (ulimit: advice only)
           WARN          does not block, but hurts a run (drops, slow port reuse); \`apply\` sets it
           CANNOT-RAISE  cannot be raised from here (e.g. the hard RLIMIT_NOFILE without
                         CAP_SYS_RESOURCE); not blocking when the work can be split
                         across processes or source addresses, which the fix says how
           INFO          informational
         Exit status: 1 if any LOW row, 0 otherwise (2: usage error).
  --connections N              connections to plan for (default $DEFAULT_CONNECTIONS)
  --server-only                the clients run on other machines
  --json FILE                  also write the rows and estimates as JSON
  --bytes-per-conn B           fanout user-space bytes per connection (default $USER_BYTES_DEFAULT, the
                               design target; give the measured RSS delta / connections)
  --kernel-bytes-per-socket B  kernel bytes per idle TCP socket (default $KERNEL_BYTES_DEFAULT)

apply    Sets every sysctl that is LOW or WARN (sysctl -w), after saving the previous value of
         everything it changes in the state file. It cannot raise the calling shell's ulimit:
         it prints the command to run there instead.
  --dry-run       print exactly what would run; change nothing, write nothing
  --persist       also write \$ROOT/etc/sysctl.d/90-fanout.conf (the sysctls set),
                  \$ROOT/etc/security/limits.d/90-fanout.conf (nofile soft/hard) and the systemd
                  drop-in \$ROOT/etc/systemd/system/fanout.service.d/limits.conf (LimitNOFILE=);
                  revert removes them (or restores what was there before)
  --state FILE    default \${XDG_STATE_HOME:-\$HOME/.local/state}/fanout/tune-limits.state
  --force         apply although a state file exists: values already saved there are kept,
                  so revert still restores the originals

revert   Restores every value saved in the state file exactly, removes the files apply
         created, then deletes the state file. With no state file: "nothing to revert", exit 0.
  --state FILE, --dry-run   as for apply

Environment: TUNE_LIMITS_ROOT prefixes the /etc paths --persist writes (default empty).
EOF
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

ceil_div() { echo $(((($1) + ($2) - 1) / ($2))); }

# 1536 -> "1.5 KiB"; one decimal, binary units.
human_bytes() {
    local b=$1 unit=B div=1
    if ((b >= 1073741824)); then
        unit=GiB div=1073741824
    elif ((b >= 1048576)); then
        unit=MiB div=1048576
    elif ((b >= 1024)); then
        unit=KiB div=1024
    fi
    if ((div == 1)); then
        printf '%d B' "$b"
    else
        local tenths=$(((b * 10 + div / 2) / div))
        printf '%d.%d %s' $((tenths / 10)) $((tenths % 10)) "$unit"
    fi
}

# 127.0.0.0 + k as a dotted quad (k < 2^24).
loopback_addr() {
    local k=$1
    printf '127.%d.%d.%d' $(((k >> 16) & 255)) $(((k >> 8) & 255)) $((k & 255))
}

# "a<TAB>b  c" -> "a b c"
words() {
    local -a w
    read -r -a w <<<"$1" || true
    printf '%s' "${w[*]}"
}

sysctl_path() { printf '/proc/sys/%s' "${1//.//}"; }

# The raw value of a sysctl (tabs kept); fails if it does not exist here.
sysctl_get() {
    local p
    p=$(sysctl_path "$1")
    [[ -r $p ]] || return 1
    local v
    v=$(<"$p")
    printf '%s' "$v"
}

# The command apply runs to set a sysctl, quoted as it would be typed.
sysctl_cmd() {
    local name=$1 value=$2
    if [[ $value == *[[:space:]]* ]]; then
        printf "sysctl -w %s='%s'" "$name" "$(words "$value")"
    else
        printf 'sysctl -w %s=%s' "$name" "$value"
    fi
}

has_cap_sys_resource() {
    local key val
    while read -r key val; do
        if [[ $key == CapEff: ]]; then
            (((16#$val >> 24) & 1)) && return 0
            return 1
        fi
    done </proc/self/status
    return 1
}

default_state_file() {
    local home=${HOME:-}
    [[ -n $home ]] || home=$(getent passwd "$(id -u)" | cut -d: -f6)
    printf '%s/fanout/tune-limits.state' "${XDG_STATE_HOME:-$home/.local/state}"
}

# ---------------------------------------------------------------------------------------
# Options

CONNECTIONS=$DEFAULT_CONNECTIONS
SERVER_ONLY=0
JSON_FILE=
DRY_RUN=0
PERSIST=0
FORCE=0
STATE_FILE=
BYTES_PER_CONN=$USER_BYTES_DEFAULT
KERNEL_BYTES=$KERNEL_BYTES_DEFAULT

parse_options() {
    local cmd=$1
    shift
    local allowed
    case $cmd in
        check) allowed=" --connections --server-only --json --bytes-per-conn --kernel-bytes-per-socket " ;;
        apply) allowed=" --connections --server-only --dry-run --persist --state --force --bytes-per-conn --kernel-bytes-per-socket " ;;
        revert) allowed=" --state --dry-run " ;;
    esac
    while (($#)); do
        local opt=$1 val='' has_val=0
        if [[ $opt == --*=* ]]; then
            val=${opt#*=} opt=${opt%%=*} has_val=1
        fi
        case $opt in
            -h | --help)
                usage
                exit 0
                ;;
        esac
        [[ $allowed == *" $opt "* ]] || die "$cmd: unknown option '$1' (see --help)"
        case $opt in
            --connections | --json | --state | --bytes-per-conn | --kernel-bytes-per-socket)
                if ((!has_val)); then
                    (($# >= 2)) || die "$opt needs a value"
                    val=$2
                    shift
                fi
                ;;
            *) ((!has_val)) || die "$opt takes no value" ;;
        esac
        case $opt in
            --connections)
                if ! is_uint "$val" || ((10#$val < 1 || 10#$val > 100000000)); then
                    die "--connections: expected a number from 1 to 100000000, got '$val'"
                fi
                CONNECTIONS=$((10#$val))
                ;;
            --bytes-per-conn)
                if ! is_uint "$val" || ((10#$val < 1)); then
                    die "--bytes-per-conn: expected a positive number, got '$val'"
                fi
                BYTES_PER_CONN=$((10#$val))
                ;;
            --kernel-bytes-per-socket)
                if ! is_uint "$val" || ((10#$val < 1)); then
                    die "--kernel-bytes-per-socket: expected a positive number, got '$val'"
                fi
                KERNEL_BYTES=$((10#$val))
                ;;
            --json) JSON_FILE=$val ;;
            --state) STATE_FILE=$val ;;
            --server-only) SERVER_ONLY=1 ;;
            --dry-run) DRY_RUN=1 ;;
            --persist) PERSIST=1 ;;
            --force) FORCE=1 ;;
        esac
        shift
    done
    [[ -n $STATE_FILE ]] || STATE_FILE=$(default_state_file)
}

# ---------------------------------------------------------------------------------------
# Evaluation: one row per limit

ROW_NAME=() ROW_CUR=() ROW_NEED=() ROW_STATUS=() ROW_BLOCK=() ROW_FIX=() ROW_KIND=() ROW_SET=()
NOTES=()
SIDES=2 SOCKETS=0 NOFILE_NEED=0 NOFILE_SOFT=0 NOFILE_HARD=0 HAS_CAP=0 PROCESSES=1
KERNEL_TOTAL=0 USER_TOTAL=0 MEM_AVAILABLE=0

# add_row NAME CURRENT NEEDED STATUS BLOCKING FIX KIND [SET]
add_row() {
    ROW_NAME+=("$1") ROW_CUR+=("$2") ROW_NEED+=("$3") ROW_STATUS+=("$4")
    ROW_BLOCK+=("$5") ROW_FIX+=("$6") ROW_KIND+=("$7") ROW_SET+=("${8:-}")
}

note() { NOTES+=("$*"); }

# A sysctl that must be at least MIN: add_min_row NAME MIN SEVERITY (LOW or WARN) [NEEDED-TEXT]
add_min_row() {
    local name=$1 min=$2 severity=$3 cur
    if ! cur=$(sysctl_get "$name"); then
        add_row "$name" "(absent)" ">= $min" INFO 0 "-" sysctl
        return
    fi
    if ((cur >= min)); then
        add_row "$name" "$cur" ">= $min" OK 0 "-" sysctl
    else
        local blocking=0
        [[ $severity == LOW ]] && blocking=1
        add_row "$name" "$cur" ">= $min" "$severity" "$blocking" "$(sysctl_cmd "$name" "$min")" sysctl "$min"
    fi
}

eval_nofile() {
    local n=$CONNECTIONS need=$((CONNECTIONS + RESERVED_FDS)) soft hard
    soft=$(ulimit -Sn) hard=$(ulimit -Hn)
    [[ $soft == unlimited ]] && soft=$UNLIMITED_FDS
    [[ $hard == unlimited ]] && hard=$UNLIMITED_FDS
    NOFILE_NEED=$need NOFILE_SOFT=$soft NOFILE_HARD=$hard
    HAS_CAP=0
    has_cap_sys_resource && HAS_CAP=1

    local hard_status hard_block=0 hard_fix
    if ((hard >= need)); then
        hard_status=OK hard_fix="-"
    elif ((HAS_CAP)); then
        hard_status=LOW hard_block=1
        hard_fix="ulimit -Hn $need && ulimit -n $need"
        note "ulimit: run \`ulimit -Hn $need && ulimit -n $need\` in the shell that starts fanout (and fanout-load): a script cannot raise its parent's limit. fs.nr_open must be >= $need first."
    else
        local usable=$((hard - RESERVED_FDS))
        hard_status=CANNOT-RAISE
        if ((usable < 1)); then
            hard_block=1
            hard_fix="raise the hard limit from a privileged parent (systemd LimitNOFILE=$need)"
            note "ulimit: the hard limit $hard leaves no room for sockets after $RESERVED_FDS reserved fds, and this process lacks CAP_SYS_RESOURCE to raise it: blocking."
        else
            PROCESSES=$(ceil_div "$n" "$usable")
            local per=$(((n + PROCESSES - 1) / PROCESSES)) who
            if ((SERVER_ONLY)); then
                who="$PROCESSES server processes"
                hard_fix="run $PROCESSES x \`fanout serve\` on one port (SO_REUSEPORT)"
            else
                who="$PROCESSES server processes and $PROCESSES client processes"
                hard_fix="run $PROCESSES x \`fanout serve\` on one port + \`fanout-load --processes auto\`"
            fi
            note "ulimit: CANNOT-RAISE: this process lacks CAP_SYS_RESOURCE (CapEff bit 24), so the hard limit $hard cannot be raised here (\`ulimit -Hn $need\` fails). $n connections then need ceil($n / ($hard - $RESERVED_FDS)) = $who, about $per connections each. Not blocking: fanout binds with SO_REUSEPORT, so start \`fanout serve --listen 127.0.0.1:9001\` $PROCESSES times and they share the port."
            ((SERVER_ONLY)) || note "ulimit: the client side splits itself: \`fanout-load connect --url ws://127.0.0.1:9001/ -n $n --processes auto\` starts $PROCESSES processes."
            if ((per * 10 > usable * 9)); then
                note "ulimit: SO_REUSEPORT spreads connections by hash, only roughly evenly, and $per of $usable per process leaves little headroom: start $((PROCESSES + 1)) servers."
            fi
            note "ulimit: to raise the limit itself, start fanout from a parent that has CAP_SYS_RESOURCE: a systemd unit with LimitNOFILE=$need, or a new login with /etc/security/limits.d (\`apply --persist\` writes both)."
        fi
    fi

    local soft_status soft_fix
    if ((soft >= need)); then
        soft_status=OK soft_fix="-"
    elif ((hard >= need)); then
        soft_status=WARN soft_fix="ulimit -n $need  (fanout raises soft to hard itself)"
    else
        soft_status=$hard_status
        if ((soft < hard)); then
            soft_fix="ulimit -n $hard  (fanout raises soft to hard itself)"
        else
            soft_fix="- (at the hard limit: see ulimit -Hn)"
        fi
    fi
    # The soft row never blocks on its own: fanout and fanout-load raise soft to hard at start.
    add_row "ulimit -n (soft)" "$soft" ">= $need" "$soft_status" 0 "$soft_fix" ulimit
    add_row "ulimit -Hn (hard)" "$hard" ">= $need" "$hard_status" "$hard_block" "$hard_fix" ulimit
}

eval_file_max() {
    local cur in_use=0 nr
    cur=$(sysctl_get fs.file-max) || {
        add_row fs.file-max "(absent)" "-" INFO 0 "-" sysctl
        return
    }
    if nr=$(sysctl_get fs.file-nr); then
        read -r in_use _ <<<"$nr"
    fi
    # Both sides' sockets plus what is open now, plus 10%.
    local need=$(((SOCKETS + in_use) * 11 / 10 + 1))
    note "fs.file-max: needed = ($SOCKETS sockets + $in_use file handles open now) + 10%."
    if ((cur >= need)); then
        add_row fs.file-max "$cur" ">= $need" OK 0 "-" sysctl
    else
        add_row fs.file-max "$cur" ">= $need" LOW 1 "$(sysctl_cmd fs.file-max "$need")" sysctl "$need"
    fi
}

eval_port_range() {
    local name=net.ipv4.ip_local_port_range raw lo hi
    raw=$(sysctl_get "$name") || {
        add_row "$name" "(absent)" "-" INFO 0 "-" sysctl
        return
    }
    read -r lo hi <<<"$raw"
    local ports=$((hi - lo + 1)) n=$CONNECTIONS
    local cur="$lo $hi ($ports ports)"
    if ((SERVER_ONLY)); then
        add_row "$name" "$cur" "- (clients elsewhere)" INFO 0 "-" sysctl
        note "$name: with --server-only it bounds outgoing connections from this box only; each client box needs ceil(its connections / its ports) source addresses per server port."
        return
    fi
    local addrs wide_lo=$WIDE_PORT_LO per_addr=$(((ports + PORT_SHARE_DIV - 1) / PORT_SHARE_DIV))
    addrs=$(ceil_div "$n" "$per_addr")
    ((lo < wide_lo)) && wide_lo=$lo
    local wide_ports=$((WIDE_PORT_HI - wide_lo + 1))
    local sources
    sources="--source-ips 127.0.0.1-$(loopback_addr "$addrs")"
    if ((per_addr >= n)); then
        add_row "$name" "$cur" ">= $n ports/addr" OK 0 "-" sysctl
    elif ((ports >= n)); then
        add_row "$name" "$cur" ">= $((n * PORT_SHARE_DIV)) ports/addr" INFO 0 "fanout-load $sources" sysctl
        note "$name: $n connections from one source address take over a quarter of its $ports ports: past half, every connect() walks all the even ports first (slow connects, 100% system CPU). Spread them: fanout-load $sources ($addrs addresses, a quarter of the range each)."
    elif ((n <= wide_ports)); then
        local value="$wide_lo	$WIDE_PORT_HI"
        add_row "$name" "$cur" ">= $n ports/addr" LOW 1 "$(sysctl_cmd "$name" "$value")  or fanout-load $sources" sysctl "$value"
        note "$name: $n connections to ONE server port from this box need $n source ports, but the range gives $ports per source address, of which a quarter should be used (past half, every connect() walks all the even ports first): needs $addrs source addresses: fanout-load $sources; or widen the range to '$wide_lo $WIDE_PORT_HI' ($wide_ports ports, what apply does); or spread over several server ports."
    else
        local wide_addrs
        wide_addrs=$(ceil_div "$n" $((wide_ports / PORT_SHARE_DIV)))
        add_row "$name" "$cur" "$addrs source addrs" CANNOT-RAISE 0 "fanout-load $sources" sysctl
        note "$name: no port range holds $n connections to ONE server port from one source address, and each address should use a quarter of its range (past half, every connect() walks all the even ports first): needs $addrs source addresses now (fanout-load $sources), or $wide_addrs after widening the range to '$wide_lo $WIDE_PORT_HI' (--source-ips 127.0.0.1-$(loopback_addr "$wide_addrs")). Not blocking: every 127.0.0.0/8 address works on loopback."
    fi
}

eval_tw_reuse() {
    local name=net.ipv4.tcp_tw_reuse cur
    cur=$(sysctl_get "$name") || {
        add_row "$name" "(absent)" "-" INFO 0 "-" sysctl
        return
    }
    if ((SERVER_ONLY)); then
        add_row "$name" "$cur" "- (outgoing only)" INFO 0 "-" sysctl
    elif ((cur == 1 || cur == 2)); then
        # 2 = loopback only, which is where the client runs in this mode.
        add_row "$name" "$cur" "1 or 2" OK 0 "-" sysctl
    else
        add_row "$name" "$cur" "1 or 2" WARN 0 "$(sysctl_cmd "$name" 1)" sysctl 1
        note "$name: 0 keeps each closed client port in TIME_WAIT for 60 s, so a second run within a minute can run out of ports."
    fi
}

eval_fin_timeout() {
    local name=net.ipv4.tcp_fin_timeout cur
    cur=$(sysctl_get "$name") || {
        add_row "$name" "(absent)" "-" INFO 0 "-" sysctl
        return
    }
    if ((cur <= FIN_TIMEOUT_MAX)); then
        add_row "$name" "$cur" "<= $FIN_TIMEOUT_MAX" OK 0 "-" sysctl
    else
        add_row "$name" "$cur" "<= $FIN_TIMEOUT_MAX" WARN 0 "$(sysctl_cmd "$name" "$FIN_TIMEOUT_MAX")" sysctl "$FIN_TIMEOUT_MAX"
    fi
}

eval_tcp_mem() {
    local name=net.ipv4.tcp_mem raw page a b c
    raw=$(sysctl_get "$name") || {
        add_row "$name" "(absent)" "-" INFO 0 "-" sysctl
        return
    }
    page=$(getconf PAGESIZE 2>/dev/null || echo 4096)
    read -r a b c <<<"$raw"
    local need_pages
    need_pages=$(ceil_div "$KERNEL_TOTAL" "$page")
    local cur need
    cur="$a $b $c pages (max $(human_bytes $((c * page))))"
    need=">= $need_pages pages max ($(human_bytes "$KERNEL_TOTAL"))"
    if ((c >= need_pages)); then
        add_row "$name" "$cur" "$need" OK 0 "-" sysctl
    else
        # Keep the min/pressure/max proportions; the max gets 25% over the estimate.
        local new_c=$((need_pages * 5 / 4))
        local value="$(((a * new_c + c - 1) / c))	$(((b * new_c + c - 1) / c))	$new_c"
        add_row "$name" "$cur" "$need" LOW 1 "$(sysctl_cmd "$name" "$value")" sysctl "$value"
    fi
    note "$name: compared with the whole kernel estimate ($SOCKETS sockets x $KERNEL_BYTES B). tcp_mem itself counts only socket buffer pages, so this is conservative; LOW only if the estimate exceeds tcp_mem[2]."
}

eval_buffers() {
    local name raw mn def mx total=0 page
    page=$(getconf PAGESIZE 2>/dev/null || echo 4096)
    for name in net.ipv4.tcp_rmem net.ipv4.tcp_wmem; do
        raw=$(sysctl_get "$name") || {
            add_row "$name" "(absent)" "-" INFO 0 "-" sysctl
            continue
        }
        read -r mn def mx <<<"$raw"
        add_row "$name" "$mn $def $mx" "- (busy sockets)" INFO 0 "-" sysctl
        total=$((total + def))
    done
    local tcp_mem_max
    if raw=$(sysctl_get net.ipv4.tcp_mem); then
        read -r _ _ tcp_mem_max <<<"$raw"
        note "tcp_rmem/tcp_wmem: an idle socket holds no buffer; a busy one may hold up to the defaults ($(human_bytes "$total") read+write, autotuned up to the maxima). If all $SOCKETS sockets were busy at the defaults: $(human_bytes $((SOCKETS * total))); the kernel caps all TCP buffers at tcp_mem[2] = $(human_bytes $((tcp_mem_max * page)))."
    fi
}

eval_conntrack() {
    local name=net.netfilter.nf_conntrack_max cur count=0
    [[ -e $(sysctl_path "$name") ]] || return 0 # nf_conntrack not loaded
    cur=$(sysctl_get "$name") || return 0
    count=$(sysctl_get net.netfilter.nf_conntrack_count 2>/dev/null) || count=0
    # One entry per connection (both directions), plus what is tracked now, plus 10%.
    local need=$(((CONNECTIONS + count) * 11 / 10 + 1))
    if ((cur >= need)); then
        add_row "$name" "$cur" ">= $need" OK 0 "-" sysctl
    else
        add_row "$name" "$cur" ">= $need" LOW 1 "$(sysctl_cmd "$name" "$need")" sysctl "$need"
        note "$name: a full conntrack table drops new connections (\"nf_conntrack: table full\" in dmesg)."
    fi
}

eval_memory() {
    local kb=0 key val
    while read -r key val _; do
        if [[ $key == MemAvailable: ]]; then
            kb=$val
            break
        fi
    done </proc/meminfo
    MEM_AVAILABLE=$((kb * 1024))
    local total=$((KERNEL_TOTAL + USER_TOTAL))
    if ((total <= MEM_AVAILABLE)); then
        add_row MemAvailable "$(human_bytes "$MEM_AVAILABLE")" ">= $(human_bytes "$total")" OK 0 "-" memory
    else
        add_row MemAvailable "$(human_bytes "$MEM_AVAILABLE")" ">= $(human_bytes "$total")" LOW 1 "free memory, or spread the connections over machines" memory
    fi
}

evaluate() {
    ROW_NAME=() ROW_CUR=() ROW_NEED=() ROW_STATUS=() ROW_BLOCK=() ROW_FIX=() ROW_KIND=() ROW_SET=()
    NOTES=()
    PROCESSES=1
    SIDES=2
    ((SERVER_ONLY)) && SIDES=1
    SOCKETS=$((CONNECTIONS * SIDES))
    KERNEL_TOTAL=$((SOCKETS * KERNEL_BYTES))
    USER_TOTAL=$((CONNECTIONS * BYTES_PER_CONN))

    eval_nofile
    eval_file_max
    add_min_row fs.nr_open "$NOFILE_NEED" LOW
    add_min_row net.core.somaxconn "$BACKLOG_MIN" LOW
    add_min_row net.ipv4.tcp_max_syn_backlog "$SYN_BACKLOG_MIN" LOW
    add_min_row net.core.netdev_max_backlog "$NETDEV_BACKLOG_MIN" WARN
    eval_port_range
    eval_tw_reuse
    eval_fin_timeout
    eval_tcp_mem
    eval_buffers
    eval_conntrack
    eval_memory
}

# Names of the rows that block N connections.
blocking_rows() {
    local i out=()
    for i in "${!ROW_NAME[@]}"; do
        [[ ${ROW_STATUS[i]} == LOW || ${ROW_STATUS[i]} == CANNOT-RAISE ]] && ((ROW_BLOCK[i])) && out+=("${ROW_NAME[i]}")
    done
    ((${#out[@]} == 0)) || printf '%s\n' "${out[@]}"
}

# ---------------------------------------------------------------------------------------
# Output

print_table() {
    local i w1=5 w2=7 w3=6 w4=6
    for i in "${!ROW_NAME[@]}"; do
        ((${#ROW_NAME[i]} > w1)) && w1=${#ROW_NAME[i]}
        ((${#ROW_CUR[i]} > w2)) && w2=${#ROW_CUR[i]}
        ((${#ROW_NEED[i]} > w3)) && w3=${#ROW_NEED[i]}
        ((${#ROW_STATUS[i]} > w4)) && w4=${#ROW_STATUS[i]}
    done
    printf "%-${w1}s  %-${w2}s  %-${w3}s  %-${w4}s  %s\n" LIMIT CURRENT NEEDED STATUS FIX
    for i in "${!ROW_NAME[@]}"; do
        printf "%-${w1}s  %-${w2}s  %-${w3}s  %-${w4}s  %s\n" \
            "${ROW_NAME[i]}" "${ROW_CUR[i]}" "${ROW_NEED[i]}" "${ROW_STATUS[i]}" "${ROW_FIX[i]}"
    done
}

kernel_estimate_note() {
    printf 'per idle loopback TCP socket about 5 KiB of kernel slab, measured by bench-connections.sh at a million connections: 5,061-5,114 B (TCP 2.5 KiB, socket inode 0.86 KiB, dentry, file, epoll item; docs/limits.md); %d B used (--kernel-bytes-per-socket B to change). MemAvailable counts the inodes and dentries of open sockets as reclaimable: leave a few GiB spare' "$KERNEL_BYTES"
}

print_report() {
    local side_text
    if ((SERVER_ONLY)); then
        side_text="server side only: 1 socket per connection on this box"
    else
        side_text="server and client on this box over loopback: 2 sockets per connection"
    fi
    printf 'fanout limits for %d connections (%s)\n\n' "$CONNECTIONS" "$side_text"
    print_table
    if ((${#NOTES[@]})); then
        printf '\nNotes:\n'
        local line
        for line in "${NOTES[@]}"; do
            printf '  - %s\n' "$line"
        done
    fi
    printf '\nMemory estimate for %d connections:\n' "$CONNECTIONS"
    printf '  kernel:  %d sockets x %d B = %s  (%s)\n' "$SOCKETS" "$KERNEL_BYTES" "$(human_bytes "$KERNEL_TOTAL")" "$(kernel_estimate_note)"
    printf '  fanout user space: %d x %d B = %s  (%s)\n' "$CONNECTIONS" "$BYTES_PER_CONN" "$(human_bytes "$USER_TOTAL")" \
        "$( ((BYTES_PER_CONN == USER_BYTES_DEFAULT)) && echo "the design target; give the measured figure with --bytes-per-conn B" || echo "from --bytes-per-conn")"
    ((SERVER_ONLY)) || printf '  (fanout-load user space is not counted)\n'
    printf '  total:   %s; MemAvailable: %s\n' "$(human_bytes $((KERNEL_TOTAL + USER_TOTAL)))" "$(human_bytes "$MEM_AVAILABLE")"

    local -a blocking cannot=()
    mapfile -t blocking < <(blocking_rows)
    local i
    for i in "${!ROW_NAME[@]}"; do
        [[ ${ROW_STATUS[i]} == CANNOT-RAISE ]] && ((!ROW_BLOCK[i])) && cannot+=("${ROW_NAME[i]}")
    done
    printf '\n'
    if ((${#blocking[@]})); then
        printf "Result: LOW (blocking): %s. \`%s apply --connections %d%s\` raises the sysctls.\n" \
            "$(join_by ', ' "${blocking[@]}")" "$0" "$CONNECTIONS" "$( ((SERVER_ONLY)) && echo " --server-only")"
    else
        printf 'Result: OK: nothing blocks %d connections.\n' "$CONNECTIONS"
    fi
    if ((${#cannot[@]})); then
        printf 'CANNOT-RAISE, not blocking: %s: split across processes / source addresses as the notes say.\n' \
            "$(join_by ', ' "${cannot[@]}")"
    fi
}

join_by() {
    local sep=$1 joined=''
    shift
    while (($#)); do
        joined+=${joined:+$sep}$1
        shift
    done
    printf '%s' "$joined"
}

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    printf '"%s"' "$s"
}

write_json() {
    local file=$1 code=$2 i sep=
    {
        printf '{\n'
        printf '  "connections": %d,\n' "$CONNECTIONS"
        printf '  "server_only": %s,\n' "$( ((SERVER_ONLY)) && echo true || echo false)"
        printf '  "sockets_per_connection": %d,\n' "$SIDES"
        printf '  "cap_sys_resource": %s,\n' "$( ((HAS_CAP)) && echo true || echo false)"
        printf '  "nofile": {"soft": %d, "hard": %d, "needed": %d, "reserved_fds": %d},\n' \
            "$NOFILE_SOFT" "$NOFILE_HARD" "$NOFILE_NEED" "$RESERVED_FDS"
        printf '  "processes_needed": %d,\n' "$PROCESSES"
        printf '  "memory": {"kernel_bytes_per_socket": %d, "kernel_bytes": %d, "user_bytes_per_conn": %d, "user_bytes": %d, "mem_available_bytes": %d},\n' \
            "$KERNEL_BYTES" "$KERNEL_TOTAL" "$BYTES_PER_CONN" "$USER_TOTAL" "$MEM_AVAILABLE"
        printf '  "rows": [\n'
        for i in "${!ROW_NAME[@]}"; do
            printf '%s    {"name": %s, "current": %s, "needed": %s, "status": %s, "blocking": %s, "fix": %s, "set": %s}' \
                "$sep" "$(json_str "${ROW_NAME[i]}")" "$(json_str "${ROW_CUR[i]}")" "$(json_str "${ROW_NEED[i]}")" \
                "$(json_str "${ROW_STATUS[i]}")" "$( ((ROW_BLOCK[i])) && echo true || echo false)" \
                "$(json_str "${ROW_FIX[i]}")" "$([[ -n ${ROW_SET[i]} ]] && json_str "$(words "${ROW_SET[i]}")" || echo null)"
            sep=$',\n'
        done
        printf '\n  ],\n'
        printf '  "notes": ['
        sep=
        for i in "${!NOTES[@]}"; do
            printf '%s\n    %s' "$sep" "$(json_str "${NOTES[i]}")"
            sep=,
        done
        printf '\n  ],\n'
        printf '  "exit_code": %d\n' "$code"
        printf '}\n'
    } >"$file"
}

# ---------------------------------------------------------------------------------------
# check

cmd_check() {
    parse_options check "$@"
    evaluate
    print_report
    local code=0
    [[ -n $(blocking_rows) ]] && code=1
    if [[ -n $JSON_FILE ]]; then
        write_json "$JSON_FILE" "$code" || die "cannot write $JSON_FILE"
        printf 'JSON written to %s\n' "$JSON_FILE"
    fi
    return "$code"
}

# ---------------------------------------------------------------------------------------
# State file: "# comment" lines, then records KIND<TAB>NAME<TAB>VALUE, VALUE to the end of
# the line (it may hold tabs):
#   sysctl  NAME  previous value, exactly as read from /proc/sys
#   dir     PATH  (empty)              a directory apply created
#   file    PATH  backup path or empty  a file apply wrote; the backup holds what was there

STATE_RECORDS=()

load_state() {
    STATE_RECORDS=()
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        [[ -z $line || $line == \#* ]] && continue
        STATE_RECORDS+=("$line")
    done <"$1"
}

record_kind() { printf '%s' "${1%%$'\t'*}"; }
record_name() {
    local rest=${1#*$'\t'}
    printf '%s' "${rest%%$'\t'*}"
}
record_value() {
    local rest=${1#*$'\t'}
    [[ $rest == *$'\t'* ]] && printf '%s' "${rest#*$'\t'}"
    return 0
}

state_has() {
    local kind=$1 name=$2 r
    for r in "${STATE_RECORDS[@]+"${STATE_RECORDS[@]}"}"; do
        [[ $(record_kind "$r") == "$kind" && $(record_name "$r") == "$name" ]] && return 0
    done
    return 1
}

# ---------------------------------------------------------------------------------------
# apply

SYSCTL_D=/etc/sysctl.d/90-fanout.conf
LIMITS_D=/etc/security/limits.d/90-fanout.conf
SYSTEMD_DROPIN=/etc/systemd/system/fanout.service.d/limits.conf

# in_list WORD ITEM...: is WORD one of the ITEMs?
in_list() {
    local word=$1 item
    shift
    for item in "$@"; do
        [[ $item == "$word" ]] && return 0
    done
    return 1
}

# Missing ancestors of a path, outermost first.
missing_dirs() {
    local d=${1%/*} out=()
    while [[ -n $d && ! -e $d ]]; do
        out=("$d" "${out[@]+"${out[@]}"}")
        d=${d%/*}
    done
    printf '%s\n' "${out[@]+"${out[@]}"}"
}

cmd_apply() {
    parse_options apply "$@"
    evaluate

    local state_exists=0
    [[ -e $STATE_FILE ]] && state_exists=1
    if ((state_exists && !FORCE)); then
        if ((DRY_RUN)); then
            printf 'note: %s exists; apply without --force would refuse (revert first)\n' "$STATE_FILE"
        else
            printf "%s: %s exists: an earlier apply has not been reverted. Run \`%s revert --state %s\` first, or pass --force (values saved there are kept).\n" \
                "$PROG" "$STATE_FILE" "$PROG" "$STATE_FILE" >&2
            return 2
        fi
    fi
    if ((!DRY_RUN)) && [[ $(id -u) != 0 ]]; then
        die "apply needs root to run sysctl -w (or use --dry-run)"
    fi
    STATE_RECORDS=()
    if ((state_exists)); then
        load_state "$STATE_FILE"
    fi

    # The sysctls to set.
    local i names=() values=() prev=()
    for i in "${!ROW_NAME[@]}"; do
        [[ ${ROW_KIND[i]} == sysctl && -n ${ROW_SET[i]} ]] || continue
        [[ ${ROW_STATUS[i]} == LOW || ${ROW_STATUS[i]} == WARN ]] || continue
        names+=("${ROW_NAME[i]}")
        values+=("${ROW_SET[i]}")
        prev+=("$(sysctl_get "${ROW_NAME[i]}")")
    done

    # The files --persist writes: path and content.
    local files=() contents=()
    if ((PERSIST)); then
        local stamp nofile=$NOFILE_NEED
        stamp="Written by fanout scripts/tune-limits.sh apply --persist --connections $CONNECTIONS ($(date -u +%Y-%m-%dT%H:%M:%SZ)); \`tune-limits.sh revert\` removes it."
        ((NOFILE_HARD > nofile)) && nofile=$NOFILE_HARD # never lower what logins get now
        if ((${#names[@]})); then
            local body="# $stamp"$'\n'
            for i in "${!names[@]}"; do
                body+="${names[i]} = $(words "${values[i]}")"$'\n'
            done
            files+=("$ROOT$SYSCTL_D")
            contents+=("$body")
        fi
        files+=("$ROOT$LIMITS_D")
        contents+=("# $stamp
# '*' does not match root: root has its own lines. Applies to new logins (pam_limits).
*       soft    nofile  $nofile
*       hard    nofile  $nofile
root    soft    nofile  $nofile
root    hard    nofile  $nofile
")
        files+=("$ROOT$SYSTEMD_DROPIN")
        contents+=("# $stamp
# For a unit not named fanout.service, copy to /etc/systemd/system/UNIT.service.d/limits.conf;
# then: systemctl daemon-reload && systemctl restart UNIT
[Service]
LimitNOFILE=$nofile
")
    fi

    if ((${#names[@]} == 0 && ${#files[@]} == 0)); then
        printf 'nothing to change: every sysctl is already enough for %d connections.\n' "$CONNECTIONS"
        print_ulimit_advice
        return 0
    fi

    # Plan the state: directories to create, file backups, previous sysctl values.
    local new_records=() dirs=() d k=0
    for i in "${!names[@]}"; do
        state_has sysctl "${names[i]}" || new_records+=("sysctl	${names[i]}	${prev[i]}")
    done
    local backups=()
    for i in "${!files[@]}"; do
        local f=${files[i]} backup=
        while IFS= read -r d; do
            [[ -n $d ]] || continue
            in_list "$d" "${dirs[@]+"${dirs[@]}"}" && continue
            dirs+=("$d")
            state_has dir "$d" || new_records+=("dir	$d	")
        done < <(missing_dirs "$f")
        if ! state_has file "$f"; then
            if [[ -e $f ]]; then
                while [[ -e $STATE_FILE.bak.$k ]]; do k=$((k + 1)); done
                backup=$STATE_FILE.bak.$k
                k=$((k + 1))
            fi
            new_records+=("file	$f	$backup")
        fi
        backups+=("$backup")
    done

    local pfx=
    if ((DRY_RUN)); then
        pfx="would run: "
        printf 'dry run: nothing is changed. apply would:\n'
    fi
    printf '%ssave previous values to %s:\n' "${pfx:+would }" "$STATE_FILE"
    local r
    for r in "${new_records[@]+"${new_records[@]}"}"; do
        case $(record_kind "$r") in
            sysctl) printf '  %s = %s\n' "$(record_name "$r")" "$(words "$(record_value "$r")")" ;;
            dir) printf '  %s (directory to create)\n' "$(record_name "$r")" ;;
            file)
                if [[ -n $(record_value "$r") ]]; then
                    printf '  %s (exists: its content goes to %s)\n' "$(record_name "$r")" "$(record_value "$r")"
                else
                    printf '  %s (file to create)\n' "$(record_name "$r")"
                fi
                ;;
        esac
    done
    ((${#new_records[@]})) || printf '  (all already saved there)\n'

    if ((!DRY_RUN)); then
        # Backups and the state come first, so revert can undo a half-finished apply.
        for i in "${!files[@]}"; do
            [[ -n ${backups[i]} ]] && cp -p -- "${files[i]}" "${backups[i]}"
        done
        mkdir -p -- "$(dirname -- "$STATE_FILE")"
        local tmp="$STATE_FILE.tmp.$$"
        {
            if ((state_exists)); then
                cat -- "$STATE_FILE"
            else
                printf '# fanout tune-limits state v1: KIND<TAB>NAME<TAB>PREVIOUS VALUE\n'
            fi
            printf '# apply --connections %d%s at %s\n' "$CONNECTIONS" "$( ((SERVER_ONLY)) && echo " --server-only")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
            for r in "${new_records[@]+"${new_records[@]}"}"; do
                printf '%s\n' "$r"
            done
        } >"$tmp"
        mv -f -- "$tmp" "$STATE_FILE"
    fi

    local failed=0
    for i in "${!names[@]}"; do
        printf '%s%s   # was %s\n' "$pfx" "$(sysctl_cmd "${names[i]}" "${values[i]}")" "$(words "${prev[i]}")"
        ((DRY_RUN)) && continue
        if ! sysctl -q -w "${names[i]}=$(words "${values[i]}")" >/dev/null ||
            [[ $(words "$(sysctl_get "${names[i]}")") != "$(words "${values[i]}")" ]]; then
            printf '%s: failed to set %s\n' "$PROG" "${names[i]}" >&2
            failed=1
        fi
    done
    for d in "${dirs[@]+"${dirs[@]}"}"; do
        printf '%smkdir %s\n' "$pfx" "$d"
        ((DRY_RUN)) || mkdir -- "$d"
    done
    for i in "${!files[@]}"; do
        printf '%swrite %s%s:\n' "$pfx" "${files[i]}" "$([[ -n ${backups[i]} ]] && echo " (previous content saved to ${backups[i]})")"
        printf '%s' "${contents[i]}" | sed 's/^/    | /'
        ((DRY_RUN)) || printf '%s' "${contents[i]}" >"${files[i]}"
    done
    if ((PERSIST)); then
        printf "persist: %s is read at boot (or now with \`sysctl --system\`); %s applies to new logins; the systemd drop-in belongs in /etc/systemd/system/fanout.service.d/limits.conf (then \`systemctl daemon-reload\`).\n" \
            "$ROOT$SYSCTL_D" "$ROOT$LIMITS_D"
    fi
    print_ulimit_advice
    if ((DRY_RUN)); then
        return 0
    fi
    if ((failed)); then
        printf "some changes failed; \`%s revert --state %s\` restores what was saved.\n" "$PROG" "$STATE_FILE" >&2
        return 1
    fi
    printf "done. \`%s revert --state %s\` restores the previous values.\n" "$PROG" "$STATE_FILE"
    return 0
}

print_ulimit_advice() {
    local i
    for i in "${!ROW_NAME[@]}"; do
        [[ ${ROW_NAME[i]} == "ulimit -Hn (hard)" ]] || continue
        case ${ROW_STATUS[i]} in
            OK)
                if ((NOFILE_SOFT < NOFILE_NEED)); then
                    printf 'ulimit: soft %d < %d; fanout raises soft to hard itself, or run in the shell that starts it: ulimit -n %d\n' \
                        "$NOFILE_SOFT" "$NOFILE_NEED" "$NOFILE_NEED"
                fi
                ;;
            LOW)
                printf 'ulimit: a script cannot raise its parent shell'"'"'s limit. In the shell that starts fanout run:\n  ulimit -Hn %d && ulimit -n %d\n' \
                    "$NOFILE_NEED" "$NOFILE_NEED"
                ;;
            CANNOT-RAISE)
                printf "ulimit: CANNOT-RAISE: hard limit %d and no CAP_SYS_RESOURCE, so \`ulimit -Hn %d\` fails here, and a script cannot raise its parent's limit anyway.\n" \
                    "$NOFILE_HARD" "$NOFILE_NEED"
                if ((NOFILE_HARD > RESERVED_FDS)); then
                    printf '  %d connections need ceil(%d / (%d - %d)) = %d server processes on one port (SO_REUSEPORT)%s. Not blocking.\n' \
                        "$CONNECTIONS" "$CONNECTIONS" "$NOFILE_HARD" "$RESERVED_FDS" "$PROCESSES" \
                        "$( ((SERVER_ONLY)) || echo " and as many client processes (fanout-load --processes auto)")"
                fi
                ;;
        esac
    done
}

# ---------------------------------------------------------------------------------------
# revert

cmd_revert() {
    parse_options revert "$@"
    if [[ ! -e $STATE_FILE ]]; then
        printf 'nothing to revert (no state file at %s)\n' "$STATE_FILE"
        return 0
    fi
    if ((!DRY_RUN)) && [[ $(id -u) != 0 ]]; then
        die "revert needs root to run sysctl -w (or use --dry-run)"
    fi
    load_state "$STATE_FILE"
    local pfx='' failed=0 i r kind name value cur
    ((DRY_RUN)) && pfx="would run: " && printf 'dry run: nothing is changed. revert would:\n'
    # Newest first: files before the directories that hold them.
    for ((i = ${#STATE_RECORDS[@]} - 1; i >= 0; i--)); do
        r=${STATE_RECORDS[i]}
        kind=$(record_kind "$r") name=$(record_name "$r") value=$(record_value "$r")
        case $kind in
            sysctl)
                if [[ ! $name =~ ^[a-z0-9_]+(\.[a-z0-9_-]+)+$ ]] || [[ ! -e $(sysctl_path "$name") ]]; then
                    printf '%s: skipping unknown sysctl %q in the state file\n' "$PROG" "$name" >&2
                    failed=1
                    continue
                fi
                cur=$(sysctl_get "$name")
                if [[ $(words "$cur") == "$(words "$value")" ]]; then
                    printf '%s already %s\n' "$name" "$(words "$value")"
                    continue
                fi
                printf '%s%s   # now %s\n' "$pfx" "$(sysctl_cmd "$name" "$value")" "$(words "$cur")"
                ((DRY_RUN)) && continue
                if sysctl -q -w "$name=$value" >/dev/null &&
                    [[ $(words "$(sysctl_get "$name")") == "$(words "$value")" ]]; then
                    printf '  restored %s: %s -> %s\n' "$name" "$(words "$cur")" "$(words "$value")"
                else
                    printf '%s: failed to restore %s to %s\n' "$PROG" "$name" "$(words "$value")" >&2
                    failed=1
                fi
                ;;
            file)
                if [[ -n $value ]]; then
                    printf '%srestore %s from %s\n' "$pfx" "$name" "$value"
                    ((DRY_RUN)) && continue
                    if cp -p -- "$value" "$name" && rm -f -- "$value"; then :; else
                        failed=1
                    fi
                else
                    printf '%srm -f %s\n' "$pfx" "$name"
                    ((DRY_RUN)) || rm -f -- "$name" || failed=1
                fi
                ;;
            dir)
                printf '%srmdir %s   # if empty\n' "$pfx" "$name"
                ((DRY_RUN)) && continue
                if [[ -d $name ]]; then
                    rmdir -- "$name" 2>/dev/null || printf '  kept %s: not empty\n' "$name"
                fi
                ;;
            *)
                printf '%s: skipping unknown record %q in the state file\n' "$PROG" "$r" >&2
                ;;
        esac
    done
    if ((DRY_RUN)); then
        printf '%srm %s\n' "$pfx" "$STATE_FILE"
        return 0
    fi
    if ((failed)); then
        printf '%s: some values were not restored; %s is kept\n' "$PROG" "$STATE_FILE" >&2
        return 1
    fi
    rm -f -- "$STATE_FILE"
    printf 'reverted: every saved value restored; removed %s\n' "$STATE_FILE"
}

# ---------------------------------------------------------------------------------------

main() {
    (($#)) || {
        usage >&2
        exit 2
    }
    local cmd=$1
    shift
    case $cmd in
        check) cmd_check "$@" ;;
        apply) cmd_apply "$@" ;;
        revert) cmd_revert "$@" ;;
        -h | --help | help) usage ;;
        *) die "unknown command '$cmd' (see --help)" ;;
    esac
}

main "$@"
