# The plain forwarder topology of Benchmarks/run-system.sh: Benchmarks/PlainForwarder's C
# program holds two TAP devices, pfw-a and pfw-b, moved into namespaces of the same names with
# the same MACs and addresses as on the Bulkhead side, and copies frames between them with no
# policy: the cost floor of a user-space switch on TAP ports. Sourced.
# shellcheck shell=bash

PFW_NAMESPACES=(pfw-a pfw-b)
PFW_PID=""

# plain_forwarder_build SOURCE BINARY: compiles the forwarder with the system C compiler.
plain_forwarder_build() {
    command -v cc >/dev/null || { say "no C compiler (cc) to build the plain forwarder"; return 1; }
    cc -O2 -Wall -pthread -o "$2" "$1"
}

# Removes what the topology creates (its TAPs go with the forwarder process, or with their
# namespace when it is already gone); safe when none of it exists.
plain_forwarder_teardown() {
    local ns
    [ -z "$PFW_PID" ] || plain_forwarder_stop /dev/null >/dev/null 2>&1 || true
    for ns in "${PFW_NAMESPACES[@]}"; do
        netns_remove "$ns"
        ip link delete "$ns" 2>/dev/null || true
    done
}

# plain_forwarder_start BINARY QUEUES LOG MAC_A IP_A MAC_B IP_B: starts the forwarder with
# QUEUES queues per TAP, at niceness $PEER_NICE (default 0), waits until it has created them,
# and moves them into their namespaces.
plain_forwarder_start() {
    local bin=$1 queues=$2 log=$3
    : >"$log"
    nice -n "${PEER_NICE:-0}" "$bin" --queues "$queues" "${PFW_NAMESPACES[0]}" "${PFW_NAMESPACES[1]}" >>"$log" 2>&1 &
    PFW_PID=$!
    local rc=0
    wait_ready "$PFW_PID" "$log" "plain-forwarder ready" plain-forwarder || rc=$?
    if ((rc == 1)); then PFW_PID=""; return 1; fi
    ((rc == 0)) || return "$rc"
    namespace_link_attach "${PFW_NAMESPACES[0]}" "$4" "$5" || return 1
    namespace_link_attach "${PFW_NAMESPACES[1]}" "$6" "$7" || return 1
}

# plain_forwarder_stop LOG: SIGTERM (it logs its frame counts and exits), SIGKILL after 5 s.
plain_forwarder_stop() {
    local log=$1 rc=0 i
    [ -n "$PFW_PID" ] || return 0
    kill -TERM "$PFW_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$PFW_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$PFW_PID" 2>/dev/null; then
        say "plain-forwarder did not exit within 5 s of SIGTERM; killing it"
        kill -KILL "$PFW_PID" 2>/dev/null || true
        rc=1
    fi
    wait "$PFW_PID" 2>/dev/null || rc=$?
    PFW_PID=""
    if [ "$rc" != 0 ]; then
        say "plain-forwarder exited with status $rc; its log ($log):"
        sed 's/^/    /' "$log" >&2
    fi
    return "$rc"
}
