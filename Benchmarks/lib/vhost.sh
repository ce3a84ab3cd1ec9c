# The vhost-user part of Benchmarks/run-system.sh: frames per second between a vhost-user-net
# port and a TAP port of the same tenant and segment, through the switch. Sourced after
# lib/common.sh (say, step, die, PYTHON, WORK_DIR, OUT_DIR, DURATION).
#
#   vhost_run BULKHEAD_BIN NETLOAD_BIN
#       writes a host config (tenant "vbench": vhost-user port "vm0" and TAP port "tap" in
#       namespace bhv-tap, segment "lan"), starts `bulkhead run`, and measures through
#       <stateDirectory>/tenants/vbench/net/vm0.sock with NetLoad (our frontend) and, where it
#       starts, dpdk-testpmd (txonly through its virtio_user vdev). Prints on stdout:
#         vhost.udp64_pps_guest_to_tap=N      NetLoad, 64-byte frames, counted at the TAP (rx_packets)
#         vhost.udp1500_pps_guest_to_tap=N    the same with 1500-byte frames
#         vhost.udp64_pps_tap_to_guest=N      udp-flood in the namespace, counted by NetLoad (1024 buffers)
#         vhost.testpmd64_pps_guest_to_tap=N  testpmd txonly, 64-byte frames, counted at the TAP
#       A part that cannot run prints "# skipped: vhost.NAME: reason" instead of its line
#       (the daemon does not serve the socket, testpmd absent or not starting, no frames).
#   vhost_run_standalone LOOP_BIN NETLOAD_BIN
#       the same measurements against VhostTapLoop (the device looped to the TAP by one thread
#       each way, no switch, no policy) instead of the daemon; lines "vhost.standalone.NAME=N".
#       The device's own cost: not a result of the switch.
#
# Frame sizes are Ethernet frames without FCS (64 = 14 + 20 + 8 + 22 bytes of UDP payload), as
# testpmd's --txpkts counts them. Each measurement: 1 s warm-up, then DURATION s. Needs root,
# iproute2 and cc (for udp-flood.c and the memfd sealing shim testpmd needs: the vhost-user
# backends map only memfds sealed against shrinking, and testpmd's --no-huge memory is not).
# shellcheck shell=bash

VHOST_NS=bhv-tap VHOST_IF=bhv-tap VHOST_TENANT=vbench VHOST_PORT=vm0
VHOST_GUEST_MAC=02:00:00:00:0c:01 VHOST_GUEST_IP=10.88.0.2
VHOST_TAP_MAC=02:00:00:00:0c:02 VHOST_TAP_IP=10.88.0.1
VHOST_PID="" VHOST_STATE="" VHOST_TOOLS=""

# vhost_write_config FILE STATE_DIR
vhost_write_config() {
    cat >"$1" <<JSON
{
  "host": {"stateDirectory": "$2"},
  "tenants": [
    {
      "id": "$VHOST_TENANT",
      "segments": [{"id": "lan", "vni": 7101}],
      "ports": [
        {"id": "$VHOST_PORT", "kind": "vhost-user", "segment": "lan", "mac": "$VHOST_GUEST_MAC", "ips": ["$VHOST_GUEST_IP/24"]},
        {"id": "tap", "kind": "tap", "segment": "lan", "mac": "$VHOST_TAP_MAC", "ips": ["$VHOST_TAP_IP/24"],
         "netns": "$VHOST_NS", "ifname": "$VHOST_IF"}
      ]
    }
  ]
}
JSON
}

# vhost_tools: builds udp-flood and the memfd sealing shim into $WORK_DIR/vhost-tools.
vhost_tools() {
    local dir=$WORK_DIR/vhost-tools repo
    repo=$(cd "$BENCH_LIB/../.." && pwd)
    mkdir -p "$dir"
    command -v cc >/dev/null || { say "no C compiler (cc): the vhost part needs one"; return 1; }
    cc -O2 -o "$dir/udp-flood" "$BENCH_LIB/udp-flood.c" 2>"$dir/cc.err" \
        && cc -shared -fPIC -O2 -o "$dir/memfd-seal-preload.so" "$repo/Tests/Tools/memfd-seal-preload.c" -ldl 2>>"$dir/cc.err" \
        || { sed 's/^/    cc: /' "$dir/cc.err" >&2; return 1; }
    VHOST_TOOLS=$dir
}

# vhost_tap_counter NAME: a counter of the TAP interface in its namespace.
vhost_tap_counter() { ip netns exec "$VHOST_NS" cat "/sys/class/net/$VHOST_IF/statistics/$1" 2>/dev/null; }

# vhost_netload NETLOAD_BIN SOCKET SERVER_PID NAME ARGS...: NetLoad inside the TAP's namespace
# (so that its --peer-counter can name the TAP's sysfs counters) for VHOST_NETLOAD_SECONDS
# (default DURATION); output in $OUT_DIR/vhost-NAME.txt. Prints the "netload ..." result line;
# non-zero when there is none.
vhost_netload() {
    local load=$1 socket=$2 pid=$3 name=$4 base="$OUT_DIR/vhost-$4" seconds=${VHOST_NETLOAD_SECONDS:-$DURATION}
    shift 4
    timeout $((seconds + 30)) ip netns exec "$VHOST_NS" "$load" --socket "$socket" --seconds "$seconds" --warmup 1 \
        --server-pid "$pid" "$@" >"$base.txt" 2>&1
    grep '^netload direction=' "$base.txt" | tail -n 1 | grep .
}

# vhost_value LINE KEY: the value of KEY=... in a key=value line.
vhost_value() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }

# vhost_testpmd_txonly SOCKET NAME: dpdk-testpmd txonly (64-byte frames) through SOCKET; after 1 s
# of forwarding, counts the TAP's rx_packets over DURATION s. Prints frames/s, or a reason on
# stderr and non-zero.
vhost_testpmd_txonly() {
    local socket=$1 base="$OUT_DIR/vhost-$2" prefix="bhv$$" pid before after t0 t1 i
    command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd is not installed (Debian package dpdk-dev)" >&2; return 1; }
    LD_PRELOAD=$VHOST_TOOLS/memfd-seal-preload.so dpdk-testpmd --no-huge -m 512 --no-pci --file-prefix="$prefix" \
        --vdev "net_virtio_user0,path=$socket,queues=1,queue_size=256,mac=$VHOST_GUEST_MAC" -- \
        --total-num-mbufs=16384 --stats-period=1 --nb-cores=1 --forward-mode=txonly --txpkts=64 \
        --eth-peer="0,$VHOST_TAP_MAC" --tx-ip="$VHOST_GUEST_IP,$VHOST_TAP_IP" </dev/null >"$base.txt" 2>&1 &
    pid=$!
    for ((i = 0; i < 200; i++)); do
        grep -q 'Port statistics' "$base.txt" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q 'Port statistics' "$base.txt" || ! kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        rm -rf "/var/run/dpdk/$prefix"
        echo "testpmd did not start forwarding ($(grep -m1 -E 'Cause|Failed|Error' "$base.txt" || echo "see $base.txt"))" >&2
        return 1
    fi
    sleep 1
    before=$(vhost_tap_counter rx_packets); t0=$(date +%s.%N)
    sleep "$DURATION"
    after=$(vhost_tap_counter rx_packets); t1=$(date +%s.%N)
    kill -INT "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    rm -rf "/var/run/dpdk/$prefix"
    [ -n "$before" ] && [ -n "$after" ] || { echo "cannot read the TAP's rx_packets" >&2; return 1; }
    local pps
    pps=$(awk -v a="$before" -v b="$after" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%d", (b - a) / (t1 - t0) }')
    ((pps > 0)) || { echo "no frame of testpmd's arrived at the TAP (testpmd: $(grep -m1 'TX-packets' "$base.txt" | tr -s ' '))" >&2; return 1; }
    echo "$pps"
}

# vhost_measure PREFIX SOCKET SERVER_PID NETLOAD_BIN: the four measurements against whatever
# serves SOCKET, with the TAP in $VHOST_NS; prints PREFIX.NAME=N or "# skipped: ..." lines.
vhost_measure() {
    local prefix=$1 socket=$2 pid=$3 load=$4 line value why flood
    local rx="/sys/class/net/$VHOST_IF/statistics/rx_packets" tx="/sys/class/net/$VHOST_IF/statistics/tx_packets"
    local tap_mac
    tap_mac=$(ip netns exec "$VHOST_NS" cat "/sys/class/net/$VHOST_IF/address") || { say "no TAP $VHOST_IF in $VHOST_NS"; return 1; }
    # The guest answers no ARP: the TAP side knows its MAC.
    ip netns exec "$VHOST_NS" ip neigh replace "$VHOST_GUEST_IP" lladdr "$VHOST_GUEST_MAC" dev "$VHOST_IF" nud permanent

    # Does anything serve the socket? A daemon that binds it but does not serve it yet accepts
    # the connection and never answers: NetLoad's vhost-user messages time out.
    if ! line=$(VHOST_NETLOAD_SECONDS=1 vhost_netload "$load" "$socket" "$pid" "probe" --direction guest-to-switch --frame-bytes 64 \
            --dst-mac "$tap_mac" --src-mac "$VHOST_GUEST_MAC" --src-ip "$VHOST_GUEST_IP" --dst-ip "$VHOST_TAP_IP" --peer-counter "$rx"); then
        why="nothing answers vhost-user on $socket (does the switch serve vhost-user ports yet?): $(grep -m1 -i 'error' "$OUT_DIR/vhost-probe.txt" | sed 's/.*cannot connect to [^:]*: //' | cut -c1-160 || echo 'NetLoad printed no result')"
        for name in udp64_pps_guest_to_tap udp1500_pps_guest_to_tap udp64_pps_tap_to_guest testpmd64_pps_guest_to_tap; do
            echo "# skipped: $prefix.$name: $why"
        done
        return 0
    fi
    say "   vhost probe: $line"

    for bytes in 64 1500; do
        if line=$(vhost_netload "$load" "$socket" "$pid" "guest-to-tap-$bytes" --direction guest-to-switch --frame-bytes "$bytes" \
                --dst-mac "$tap_mac" --src-mac "$VHOST_GUEST_MAC" --src-ip "$VHOST_GUEST_IP" --dst-ip "$VHOST_TAP_IP" --peer-counter "$rx"); then
            say "   vhost guest->tap $bytes: $line"
            value=$(vhost_value "$line" peer_pps)
            if [ -n "$value" ] && [ "$value" != na ] && ((value > 0)); then
                echo "$prefix.udp${bytes}_pps_guest_to_tap=$value"
            else
                echo "# skipped: $prefix.udp${bytes}_pps_guest_to_tap: no frame arrived at the TAP (NetLoad: $(vhost_value "$line" pps) frames/s taken by the port)"
            fi
        else
            echo "# skipped: $prefix.udp${bytes}_pps_guest_to_tap: NetLoad failed ($OUT_DIR/vhost-guest-to-tap-$bytes.txt)"
        fi
    done

    # TAP to guest: udp-flood in the namespace for the warm-up, the window and a margin.
    ip netns exec "$VHOST_NS" "$VHOST_TOOLS/udp-flood" "$VHOST_GUEST_IP" 9 22 $((DURATION + 4)) >"$OUT_DIR/vhost-udp-flood.txt" 2>&1 &
    flood=$!
    # 1024 receive buffers (QEMU's rx_queue_size maximum): with 256 the guest's wake-up latency
    # on a loaded two-core machine (a 256-frame ring lasts ~1.3 ms at 200 k frames/s) decides
    # the result, not the switch (measured: 85 k/s with 256 against 200 k/s with 1024).
    if line=$(vhost_netload "$load" "$socket" "$pid" "tap-to-guest-64" --direction switch-to-guest --queue-size 1024 \
            --peer-counter "$tx"); then
        say "   vhost tap->guest 64: $line"
        value=$(vhost_value "$line" pps)
        if [ -n "$value" ] && ((value > 0)); then
            echo "$prefix.udp64_pps_tap_to_guest=$value"
        else
            echo "# skipped: $prefix.udp64_pps_tap_to_guest: no frame reached the guest (the switch read $(vhost_value "$line" peer_pps) frames/s from the TAP)"
        fi
    else
        echo "# skipped: $prefix.udp64_pps_tap_to_guest: NetLoad failed ($OUT_DIR/vhost-tap-to-guest-64.txt)"
    fi
    wait "$flood" 2>/dev/null || true
    say "   vhost udp-flood: $(cat "$OUT_DIR/vhost-udp-flood.txt")"

    if value=$(vhost_testpmd_txonly "$socket" testpmd-txonly-64 2>"$WORK_DIR/vhost-testpmd.why"); then
        say "   vhost testpmd txonly 64: $value frames/s at the TAP"
        echo "$prefix.testpmd64_pps_guest_to_tap=$value"
    else
        echo "# skipped: $prefix.testpmd64_pps_guest_to_tap: $(head -c 300 "$WORK_DIR/vhost-testpmd.why")"
    fi
}

# vhost_server_pid: the process whose CPU time NetLoad reports as server_cpu_s: the daemon's
# `bulkhead switch` child where there is one (issue 8 moves the switch out of the daemon), else
# the daemon.
vhost_server_pid() {
    local child
    child=$(ps -o pid=,args= --ppid "$VHOST_PID" 2>/dev/null | awk '$3 == "switch" || / switch( |$)/ { print $1; exit }')
    echo "${child:-$VHOST_PID}"
}

# vhost_run BULKHEAD_BIN NETLOAD_BIN: the daemon's measurements (see the top of the file).
vhost_run() {
    local bin=$1 load=$2 config log
    vhost_tools || die "cannot build the vhost part's tools"
    VHOST_STATE=$WORK_DIR/vhost-state
    config=$WORK_DIR/vhost.json
    log=$OUT_DIR/vhost-bulkhead.log
    vhost_write_config "$config" "$VHOST_STATE"
    cp "$config" "$OUT_DIR/vhost-config.json"
    "$bin" validate --config "$config" >&2 || die "bulkhead rejected the vhost benchmark configuration ($OUT_DIR/vhost-config.json)"
    netns_remove "$VHOST_NS"
    local socket=$VHOST_STATE/tenants/$VHOST_TENANT/net/$VHOST_PORT.sock
    : >"$log"
    "$bin" run --config "$config" >>"$log" 2>&1 &
    VHOST_PID=$!
    local rc=0
    wait_ready "$VHOST_PID" "$log" "bulkhead ready" bulkhead "$socket" || rc=$?
    if ((rc != 0)); then
        ((rc == 1)) && VHOST_PID=""
        vhost_stop
        die "bulkhead did not start with a vhost-user port ($log)"
    fi
    step "vhost: NetLoad and testpmd through $socket, $DURATION s per measurement"
    vhost_measure vhost "$socket" "$(vhost_server_pid)" "$load"
    vhost_stop
}

# vhost_run_standalone LOOP_BIN NETLOAD_BIN: the device alone (see the top of the file).
vhost_run_standalone() {
    local loop=$1 load=$2 dir socket i
    vhost_tools || die "cannot build the vhost part's tools"
    netns_remove "$VHOST_NS"
    ip link delete "$VHOST_IF" 2>/dev/null || true
    dir=$WORK_DIR/vhost-standalone
    mkdir -p "$dir"
    socket=$dir/port.sock
    "$loop" --socket "$socket" --tap "$VHOST_IF" --mac "$VHOST_GUEST_MAC" >"$OUT_DIR/vhost-standalone-loop.txt" 2>&1 &
    VHOST_PID=$!
    for ((i = 0; i < 100; i++)); do grep -q 'vhosttaploop ready' "$OUT_DIR/vhost-standalone-loop.txt" && break; sleep 0.1; done
    grep -q 'vhosttaploop ready' "$OUT_DIR/vhost-standalone-loop.txt" || { vhost_stop; die "VhostTapLoop did not start"; }
    ip netns add "$VHOST_NS"
    ip link set dev "$VHOST_IF" netns "$VHOST_NS"
    ip netns exec "$VHOST_NS" sh -c "ip link set lo up && ip link set dev $VHOST_IF address $VHOST_TAP_MAC \
        && ip addr add $VHOST_TAP_IP/24 dev $VHOST_IF && ip link set dev $VHOST_IF up" || { vhost_stop; die "cannot set up $VHOST_IF"; }
    step "vhost (standalone: VhostTapLoop, no switch): NetLoad and testpmd through $socket, $DURATION s per measurement"
    vhost_measure vhost.standalone "$socket" "$VHOST_PID" "$load"
    vhost_stop
    say "   $(tail -n 1 "$OUT_DIR/vhost-standalone-loop.txt")"
}

# vhost_stop: ends the daemon (or VhostTapLoop) and removes the namespace. For the EXIT trap too.
vhost_stop() {
    local i
    if [ -n "$VHOST_PID" ]; then
        kill -TERM "$VHOST_PID" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do kill -0 "$VHOST_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$VHOST_PID" 2>/dev/null || true
        wait "$VHOST_PID" 2>/dev/null || true
        VHOST_PID=""
    fi
    netns_remove "$VHOST_NS"
    [ -z "$VHOST_STATE" ] || rm -rf "$VHOST_STATE"
    VHOST_STATE=""
}
