# The Open vSwitch topology of Benchmarks/run-system.sh: ovsdb-server and ovs-vswitchd started
# from a private run directory (nothing of a system OVS is used or touched), one bridge ovs-br0
# with the userspace datapath (datapath_type=netdev; the kernel module is absent here) and two
# ports of type tap, ovs-a and ovs-b, which OVS creates and the script moves into namespaces of
# the same names (MACs and addresses as on the Bulkhead side). The bridge keeps OVS's default
# flow, NORMAL (MAC learning). Userspace TSO is enabled (other_config:userspace-tso-enable), so
# OVS reads and writes the TAPs with virtio-net headers and GSO super-frames like Bulkhead.
# Between its own measurements OVS is stopped with SIGSTOP, so it takes no CPU from the others.
# Sourced.
# shellcheck shell=bash

OVS_NAMESPACES=(ovs-a ovs-b)
OVS_BRIDGE=ovs-br0
OVS_DIR=""
OVSDB_PID=""
OVS_VSWITCHD_PID=""
OVS_SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}

# Whether the OVS programs are installed; says what is missing otherwise.
ovs_netdev_available() {
    local tool missing=()
    for tool in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl ovs-appctl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ -r "$OVS_SCHEMA" ] || missing+=("$OVS_SCHEMA")
    ((${#missing[@]} == 0)) && return 0
    say "missing: ${missing[*]} (Debian package openvswitch-switch; deploy/install-deps.sh installs it)"
    return 1
}

ovs_vsctl() { ovs-vsctl --db="unix:$OVS_DIR/db.sock" --timeout=20 "$@"; }

# ovs_netdev_setup DIR MAC_A IP_A MAC_B IP_B: starts both daemons with everything under DIR
# (database, sockets, logs, pid files) and builds the bridge and its namespaces.
ovs_netdev_setup() {
    OVS_DIR=$1
    mkdir -p "$OVS_DIR"
    # The OVS_* variables keep every default path of the daemons and tools inside DIR.
    export OVS_RUNDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR OVS_SYSCONFDIR=$OVS_DIR
    ovsdb-tool create "$OVS_DIR/conf.db" "$OVS_SCHEMA" || return 1
    # In the foreground (no --detach), as children of this script: their ids are known, and
    # they are reaped here rather than left to an init that may not reap.
    ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" --unixctl="$OVS_DIR/ovsdb-server.ctl" \
        --log-file="$OVS_DIR/ovsdb-server.log" --no-chdir >"$OVS_DIR/ovsdb-server.out" 2>&1 &
    OVSDB_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do [ -S "$OVS_DIR/db.sock" ] && break; sleep 0.1; done
    [ -S "$OVS_DIR/db.sock" ] || { say "ovsdb-server did not create its socket:"; sed 's/^/    /' "$OVS_DIR/ovsdb-server.out" >&2; return 1; }
    ovs_vsctl --no-wait init || return 1
    ovs_vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true || return 1
    ovs-vswitchd "unix:$OVS_DIR/db.sock" --unixctl="$OVS_DIR/ovs-vswitchd.ctl" \
        --log-file="$OVS_DIR/ovs-vswitchd.log" --no-chdir >"$OVS_DIR/ovs-vswitchd.out" 2>&1 &
    OVS_VSWITCHD_PID=$!
    # Without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the change.
    ovs_vsctl add-br "$OVS_BRIDGE" -- set bridge "$OVS_BRIDGE" datapath_type=netdev || return 1
    ovs_vsctl add-port "$OVS_BRIDGE" "${OVS_NAMESPACES[0]}" -- set Interface "${OVS_NAMESPACES[0]}" type=tap || return 1
    ovs_vsctl add-port "$OVS_BRIDGE" "${OVS_NAMESPACES[1]}" -- set Interface "${OVS_NAMESPACES[1]}" type=tap || return 1
    wait_link "${OVS_NAMESPACES[0]}" && wait_link "${OVS_NAMESPACES[1]}" || { say "OVS did not create its tap ports"; return 1; }
    namespace_link_attach "${OVS_NAMESPACES[0]}" "$2" "$3" || return 1
    namespace_link_attach "${OVS_NAMESPACES[1]}" "$4" "$5" || return 1
    grep -q "Userspace TCP Segmentation Offloading support enabled" "$OVS_DIR/ovs-vswitchd.log" \
        || say "warning: ovs-vswitchd did not log that userspace TSO is enabled"
}

# ovs_netdev_renice NICE: sets the niceness of every thread of ovs-vswitchd (threads it starts
# later inherit it from their creator).
ovs_netdev_renice() {
    local t
    for t in /proc/"$OVS_VSWITCHD_PID"/task/*; do renice -n "$1" -p "${t##*/}" >/dev/null 2>&1 || true; done
}

# SIGSTOP / SIGCONT both daemons (no-ops when they are not running).
ovs_netdev_pause()  { local p; for p in $OVS_VSWITCHD_PID $OVSDB_PID; do kill -STOP "$p" 2>/dev/null || true; done; }
ovs_netdev_resume() { local p; for p in $OVSDB_PID $OVS_VSWITCHD_PID; do kill -CONT "$p" 2>/dev/null || true; done; }

# Stops both daemons and removes everything the topology created; safe when none or part of it
# exists (also what an earlier, aborted run may have left, when called before a setup).
ovs_netdev_teardown() {
    local ns p i
    ovs_netdev_resume
    # Its log tells what OVS made of the ports (offloads, errors); keep it with the results.
    [ -z "$OVS_DIR" ] || [ ! -s "$OVS_DIR/ovs-vswitchd.log" ] || [ -z "${OUT_DIR:-}" ] \
        || cp "$OVS_DIR/ovs-vswitchd.log" "$OUT_DIR/ovs-vswitchd.log" 2>/dev/null || true
    if [ -n "$OVS_VSWITCHD_PID" ] && kill -0 "$OVS_VSWITCHD_PID" 2>/dev/null; then
        ovs_vsctl --timeout=5 del-br "$OVS_BRIDGE" >/dev/null 2>&1 || true
        ovs-appctl -t "$OVS_DIR/ovs-vswitchd.ctl" --timeout=5 exit >/dev/null 2>&1 || true
    fi
    if [ -n "$OVSDB_PID" ] && kill -0 "$OVSDB_PID" 2>/dev/null; then
        ovs-appctl -t "$OVS_DIR/ovsdb-server.ctl" --timeout=5 exit >/dev/null 2>&1 || true
    fi
    for p in $OVS_VSWITCHD_PID $OVSDB_PID; do
        for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    OVS_VSWITCHD_PID="" OVSDB_PID=""
    for ns in "${OVS_NAMESPACES[@]}"; do
        netns_remove "$ns"
        ip link delete "$ns" 2>/dev/null || true
    done
    # The datapath's own port and the bridge's internal port are persistent TAPs. ovs-netdev
    # is every netdev datapath's: it stays while another ovs-vswitchd (a system one) runs.
    pgrep -x ovs-vswitchd >/dev/null || ip link delete ovs-netdev 2>/dev/null || true
    ip link delete "$OVS_BRIDGE" 2>/dev/null || true
}
