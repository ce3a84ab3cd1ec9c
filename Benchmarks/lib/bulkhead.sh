# The Bulkhead side of Benchmarks/run-system.sh: its configuration, and starting and stopping
# the daemon, which creates (and on SIGTERM removes) the namespaces bhb-a, bhb-b and their TAPs.
# Sourced.
# shellcheck shell=bash

BHB_NAMESPACES=(bhb-a bhb-b)
BHB_PID=""

# bulkhead_write_config FILE STATE_DIR MAC_A IP_A MAC_B IP_B [WORKERS]
#   WORKERS, when given, sets host.switch.workers (the switch's packet workers; without it the
#   daemon's default applies).
bulkhead_write_config() {
    local file=$1 state=$2 host
    host="\"stateDirectory\": \"$state\""
    [ -z "${7:-}" ] || host+=", \"switch\": {\"workers\": $7}"
    cat >"$file" <<JSON
{
  "host": {$host},
  "tenants": [
    {
      "id": "bench",
      "segments": [{"id": "lan", "vni": 7001}],
      "ports": [
        {"id": "a", "kind": "tap", "segment": "lan", "mac": "$3", "ips": ["$4"],
         "netns": "bhb-a", "ifname": "bhb-a"},
        {"id": "b", "kind": "tap", "segment": "lan", "mac": "$5", "ips": ["$6"],
         "netns": "bhb-b", "ifname": "bhb-b"}
      ]
    }
  ]
}
JSON
}

# Removes what a daemon of an earlier, aborted run may have left (its TAPs go with their
# namespaces; a TAP not moved yet goes when its fds close, i.e. with the daemon).
bulkhead_leftovers_remove() {
    local ns
    for ns in "${BHB_NAMESPACES[@]}"; do
        netns_remove "$ns"
        ip link delete "$ns" 2>/dev/null || true
    done
}

# bulkhead_start BINARY CONFIG LOG: starts the daemon in the background and waits up to 30 s for
# "bulkhead ready" in its log. Returns non-zero (after printing the log) when it exits or the
# time runs out.
bulkhead_start() {
    local bin=$1 config=$2 log=$3
    : >"$log"
    "$bin" run --config "$config" >>"$log" 2>&1 &
    BHB_PID=$!
    local rc=0
    wait_ready "$BHB_PID" "$log" "bulkhead ready" bulkhead || rc=$?
    ((rc != 1)) || BHB_PID=""
    return "$rc"
}

# bulkhead_stop LOG: SIGTERM, then waits up to 15 s (SIGKILL after that). Returns non-zero when
# the daemon had to be killed, exited with a failure status, or left its namespaces behind.
bulkhead_stop() {
    local log=$1 rc=0 i ns problem=0
    [ -n "$BHB_PID" ] || return 0
    if kill -0 "$BHB_PID" 2>/dev/null; then
        kill -TERM "$BHB_PID" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do kill -0 "$BHB_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$BHB_PID" 2>/dev/null; then
            say "bulkhead did not exit within 15 s of SIGTERM; killing it"
            kill -KILL "$BHB_PID" 2>/dev/null || true
            problem=1
        fi
    else
        say "bulkhead (pid $BHB_PID) had already exited before SIGTERM"
        problem=1
    fi
    wait "$BHB_PID" 2>/dev/null || rc=$?
    BHB_PID=""
    if [ "$rc" != 0 ]; then say "bulkhead exited with status $rc"; problem=1; fi
    for ns in "${BHB_NAMESPACES[@]}"; do
        if [ -e "/run/netns/$ns" ]; then say "bulkhead left namespace $ns behind"; problem=1; fi
    done
    if [ "$problem" != 0 ]; then
        say "bulkhead's log ($log), last 30 lines:"
        tail -n 30 "$log" | sed 's/^/    /' >&2
    fi
    return "$problem"
}

# bulkhead_switch_pid: prints the id of the process that forwards the daemon's frames: its
# `bulkhead switch` process, or the daemon itself where the switch is one of its threads (before
# issue 8's switch process; returns 1 then). The switch process is a child of the daemon whose
# second argument is `switch` (whatever its argv[0]: a path, /proc/self/exe), or any process
# that pgrep -f 'bulkhead switch' finds with the daemon among its ancestors.
bulkhead_switch_pid() {
    local pid p
    [ -n "$BHB_PID" ] || return 1
    for pid in $(pgrep -P "$BHB_PID" 2>/dev/null); do
        if [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 2p)" = switch ]; then
            printf '%s\n' "$pid"; return 0
        fi
    done
    for pid in $(pgrep -f 'bulkhead switch' 2>/dev/null); do
        p=$pid
        while [ -n "$p" ] && ((p > 1)); do
            if [ "$p" = "$BHB_PID" ]; then printf '%s\n' "$pid"; return 0; fi
            # /proc/PID/stat after the ") " that ends the command name: state, then the parent.
            p=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$p/stat" 2>/dev/null)
        done
    done
    printf '%s\n' "$BHB_PID"
    return 1
}

# bulkhead_switch_nice PID: the niceness of the switch's threads in process PID: the lowest
# among threads whose name contains "switch", else the process's own. (The daemon's switch
# thread inherits the niceness of the thread that starts it; Swift's runtime runs
# user-initiated work at nice -2, so it need not be 0.)
bulkhead_switch_nice() {
    local t line best="" own=""
    for t in /proc/"$1"/task/*; do
        # After the ") " that ends the name, field 17 is the niceness (stat(5)'s field 19).
        line=$(awk '{ c = $0; sub(/^[^(]*\(/, "", c); sub(/\) [^)]*$/, "", c); sub(/^.*\) /, ""); print c "\t" $17 }' "$t/stat" 2>/dev/null) || continue
        [ -n "$line" ] || continue
        [ "${t##*/}" = "$1" ] && own=${line##*$'\t'}
        case ${line%%$'\t'*} in
            *switch*) if [ -z "$best" ] || ((${line##*$'\t'} < best)); then best=${line##*$'\t'}; fi ;;
        esac
    done
    printf '%s\n' "${best:-${own:-0}}"
}

# bulkhead_queue_count NS: the number of queues the daemon attached to the TAP named NS in
# namespace NS (its sysfs tx-N queue entries follow the attached queues).
bulkhead_queue_count() {
    local n
    n=$(ip netns exec "$1" sh -c "ls /sys/class/net/$1/queues" 2>/dev/null | grep -c '^tx-')
    printf '%s\n' "${n:-0}"
}
