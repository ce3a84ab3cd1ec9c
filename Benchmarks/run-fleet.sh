#!/usr/bin/env bash
# Fleet benchmark: TCP and 64-byte UDP between tenant endpoints on two hosts, through Bulkhead's
# VXLAN uplink, against the Linux peer on the same hosts: a bridge and a `vxlan` device per host.
#
# The hosts are network namespaces bhf-h1 and bhf-h2, each with a veth `ul0` (10.98.0.1 and
# 10.98.0.2, MTU 1600) on the underlay bridge bhf-br0 in namespace bhf-ul, where etcd runs
# (10.98.0.254, data in a temporary directory). The endpoints are namespaces bhf-a (on h1,
# 10.78.0.1/24) and bhf-b (on h2, 10.78.0.2/24), one tenant segment (VNI 7001, MTU 1500).
#   Bulkhead:  `bulkhead run` per host (nsenter --net into bhf-hN), each with a TAP port in its
#              endpoint namespace; the segment spans the hosts over VXLAN, the map in etcd.
#   Linux:     per host, a bridge br0 with a vxlan device (id 7001, local the host's underlay
#              address, remote the other's, dstport 4789) and a veth whose other end is the
#              endpoint's interface (bhf-a / bhf-b, in the same namespaces as Bulkhead's TAPs).
# Each is measured while the other is torn down; rounds alternate which goes first.
#
#   Benchmarks/run-fleet.sh [--short] [--out DIR] [--rounds N] [--duration S]
#
#   --short       3 s per measurement (default 10 s)
#   --out DIR     raw iperf3 JSON, daemon logs and results.txt (default: a new temporary directory)
#   --rounds N    measurements per topology; the ratios use the medians (default 2 with --short, 3)
#   --duration S  seconds per measurement
#
# Environment: BULKHEAD_BINARY (use this binary, do not build), BULKHEAD_SCRATCH_PATH (passed to
# `swift build --scratch-path`), as Benchmarks/run-system.sh.
# Needs root, iperf3, iproute2, etcd, nsenter, /usr/bin/python3; installs nothing.
#
# Exit status 0 when every measurement was taken. The results end with
#   vxlan.bulkhead.tcp_gbps=G          vxlan.linux.tcp_gbps=G
#   vxlan.bulkhead.udp64_kpps=K        vxlan.linux.udp64_kpps=K
#   ratio.vxlan_tcp_vs_linux=R
#   ratio.vxlan_udp64_pps_vs_linux=R
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$REPO/Benchmarks/lib/common.sh"
die() { printf 'run-fleet: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
SHORT=0 OUT_DIR="" ROUNDS="" DURATION=""
while (($#)); do
    case $1 in
        --short) SHORT=1 ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
        --out=*) OUT_DIR=${1#--out=} ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done
[ -n "$DURATION" ] || DURATION=$((SHORT ? 3 : 10))
[ -n "$ROUNDS" ] || ROUNDS=$((SHORT ? 2 : 3))
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a whole number of seconds"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number"
[ "$(id -u)" = 0 ] || die "must run as root (namespaces, veths, bridges, vxlan and TAP devices)"
missing=()
for tool in iperf3 ip ss timeout etcd etcdctl nsenter pgrep; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x "$PYTHON" ] || missing+=("$PYTHON")
((${#missing[@]} == 0)) || die "missing: ${missing[*]} (deploy/install-deps.sh installs them)"

UL_NS=bhf-ul UL_BRIDGE=bhf-br0 UL_MTU=1600
HOSTS=(bhf-h1 bhf-h2) UNDERLAY=(10.98.0.1 10.98.0.2) ETCD_IP=10.98.0.254
ENDPOINTS=(bhf-a bhf-b) MACS=(02:00:00:00:0f:01 02:00:00:00:0f:02) IPS=(10.78.0.1/24 10.78.0.2/24)
VNI=7001
SERVER_IP=${IPS[1]%/*}

# --- build (as run-system.sh) -----------------------------------------------------------------
cd "$REPO"
if [ -n "${BULKHEAD_BINARY:-}" ]; then
    step "using BULKHEAD_BINARY=$BULKHEAD_BINARY (not building)"
    BIN=$BULKHEAD_BINARY
else
    command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
    build=(swift build -c release --product bulkhead)
    BIN=$REPO/.build/release/bulkhead
    if [ -n "${BULKHEAD_SCRATCH_PATH:-}" ]; then
        build+=(--scratch-path "$BULKHEAD_SCRATCH_PATH")
        BIN=$(mkdir -p "$BULKHEAD_SCRATCH_PATH" && cd "$BULKHEAD_SCRATCH_PATH" && pwd)/release/bulkhead
    fi
    step "building: ${build[*]}"
    "${build[@]}" >&2 || die "the release build of bulkhead failed"
fi
[ -x "$BIN" ] || die "no bulkhead binary at $BIN"

WORK_DIR=$(mktemp -d /tmp/bulkhead-fleet-work.XXXXXX)
if [ -n "$OUT_DIR" ]; then mkdir -p "$OUT_DIR"; else OUT_DIR=$(mktemp -d /tmp/bulkhead-fleet.XXXXXX); fi
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/measurements.tsv"
step "output directory: $OUT_DIR"

# --- the hosts and the underlay ---------------------------------------------------------------
ETCD_PID="" DAEMON_PIDS=()

underlay_teardown() {
    local ns
    for ns in "${ENDPOINTS[@]}" "${HOSTS[@]}" "$UL_NS"; do netns_remove "$ns"; done
}

underlay_setup() {
    local i ns
    ip netns add "$UL_NS" || return 1
    ip -n "$UL_NS" link set lo up || return 1
    ip -n "$UL_NS" link add "$UL_BRIDGE" mtu "$UL_MTU" type bridge || return 1
    ip -n "$UL_NS" link set "$UL_BRIDGE" type bridge stp_state 0 forward_delay 0 || return 1
    ip -n "$UL_NS" addr add "$ETCD_IP/24" dev "$UL_BRIDGE" || return 1
    ip -n "$UL_NS" link set "$UL_BRIDGE" up || return 1
    for i in 0 1; do
        ns=${HOSTS[$i]}
        ip netns add "$ns" || return 1
        ip link add ul0 netns "$ns" mtu "$UL_MTU" type veth peer name "p-$ns" netns "$UL_NS" mtu "$UL_MTU" || return 1
        ip -n "$UL_NS" link set "p-$ns" master "$UL_BRIDGE" up || return 1
        ip -n "$ns" addr add "${UNDERLAY[$i]}/24" dev ul0 || return 1
        ip -n "$ns" link set ul0 up || return 1
        ip -n "$ns" link set lo up || return 1
    done
}

etcd_start() {
    local i
    ip netns exec "$UL_NS" etcd --name bench --data-dir "$WORK_DIR/etcd" \
        --listen-client-urls "http://$ETCD_IP:2379" --advertise-client-urls "http://$ETCD_IP:2379" \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster bench=http://127.0.0.1:2380 --log-level warn >"$OUT_DIR/etcd.log" 2>&1 &
    ETCD_PID=$!
    for ((i = 0; i < 100; i++)); do
        if ETCDCTL_API=3 ip netns exec "$UL_NS" etcdctl --endpoints "http://$ETCD_IP:2379" --dial-timeout 1s \
            endpoint health >/dev/null 2>&1; then return 0; fi
        kill -0 "$ETCD_PID" 2>/dev/null || { sed 's/^/    etcd: /' "$OUT_DIR/etcd.log" >&2; return 1; }
        sleep 0.2
    done
    return 1
}

etcd_stop() {
    [ -n "$ETCD_PID" ] || return 0
    kill -TERM "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
    ETCD_PID=""
}

# --- Bulkhead ---------------------------------------------------------------------------------
# bulkhead_fleet_config I FILE: host I's configuration (0 or 1).
bulkhead_fleet_config() {
    local i=$1 file=$2 state="$WORK_DIR/state-${HOSTS[$1]}"
    cat >"$file" <<JSON
{
  "host": {
    "stateDirectory": "$state",
    "controlSocket": "$state/control.sock",
    "auditLog": "$state/audit.log",
    "fleet": {"hostId": "h$((i + 1))", "underlayAddress": "${UNDERLAY[$i]}", "underlayMTU": $UL_MTU,
              "etcd": {"endpoints": ["http://$ETCD_IP:2379"]}, "leaseSeconds": 5}
  },
  "tenants": [
    {"id": "bench", "segments": [{"id": "lan", "vni": $VNI, "mtu": 1500}],
     "ports": [{"id": "${ENDPOINTS[$i]}", "kind": "tap", "segment": "lan", "mac": "${MACS[$i]}", "ips": ["${IPS[$i]}"],
                "netns": "${ENDPOINTS[$i]}", "ifname": "${ENDPOINTS[$i]}"}]}
  ]
}
JSON
}

bulkhead_fleet_start() {
    local round=$1 i log pid
    DAEMON_PIDS=()
    for i in 0 1; do
        log="$OUT_DIR/bulkhead-${HOSTS[$i]}-r$round.log"
        : >"$log"
        nsenter --net="/run/netns/${HOSTS[$i]}" "$BIN" run --config "$WORK_DIR/${HOSTS[$i]}.json" >>"$log" 2>&1 &
        pid=$!
        DAEMON_PIDS+=("$pid")
        wait_ready "$pid" "$log" "switch forwarding" "bulkhead on ${HOSTS[$i]}" || return 1
    done
    # The map is in place once the endpoints reach each other.
    for ((i = 0; i < 150; i++)); do
        ip netns exec "${ENDPOINTS[0]}" ping -c 1 -W 1 "$SERVER_IP" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "the endpoints did not reach each other through Bulkhead within 30 s"
    return 1
}

bulkhead_fleet_stop() {
    local pid i rc=0
    for pid in "${DAEMON_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${DAEMON_PIDS[@]}"; do
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then say "bulkhead $pid did not stop within 15 s; killing it"; kill -KILL "$pid" 2>/dev/null; rc=1; fi
        wait "$pid" 2>/dev/null || true
    done
    DAEMON_PIDS=()
    for i in 0 1; do rm -rf "$WORK_DIR/state-${HOSTS[$i]}"; netns_remove "${ENDPOINTS[$i]}"; done
    return "$rc"
}

# The `bulkhead switch` child of daemon $1, or the daemon.
switch_pid_of() {
    local pid
    for pid in $(pgrep -P "$1" 2>/dev/null); do
        if [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 2p)" = switch ]; then printf '%s\n' "$pid"; return 0; fi
    done
    printf '%s\n' "$1"
}

measure_bulkhead() {
    local round=$1 spid
    bulkhead_fleet_start "$round" || die "Bulkhead did not start (round $round); logs in $OUT_DIR"
    spid=$(switch_pid_of "${DAEMON_PIDS[0]}")
    SWITCH_PROCESS=bulkhead-switch-h1 run_iperf vxlan-bulkhead tcp "$round" "${ENDPOINTS[0]}" "${ENDPOINTS[1]}" "$spid" \
        || die "iperf3 TCP through Bulkhead failed (round $round)"
    SWITCH_PROCESS=bulkhead-switch-h1 run_iperf vxlan-bulkhead udp64 "$round" "${ENDPOINTS[0]}" "${ENDPOINTS[1]}" "$spid" \
        || die "iperf3 UDP through Bulkhead failed (round $round)"
    bulkhead_fleet_stop || die "Bulkhead did not stop cleanly (round $round)"
}

# --- the Linux peer ---------------------------------------------------------------------------
linux_setup() {
    local i other ns ep
    for i in 0 1; do
        other=$((1 - i)) ns=${HOSTS[$i]} ep=${ENDPOINTS[$i]}
        ip -n "$ns" link add br0 type bridge || return 1
        ip -n "$ns" link set br0 type bridge stp_state 0 forward_delay 0 || return 1
        ip -n "$ns" link add vx0 type vxlan id "$VNI" local "${UNDERLAY[$i]}" remote "${UNDERLAY[$other]}" \
            dstport 4789 dev ul0 || return 1
        ip -n "$ns" link set vx0 mtu 1500 master br0 up || return 1
        ip netns add "$ep" || return 1
        ip -n "$ns" link add "ep-$ep" type veth peer name "$ep" netns "$ep" || return 1
        ip -n "$ns" link set "ep-$ep" master br0 up || return 1
        ip -n "$ns" link set br0 up || return 1
        ip -n "$ep" link set lo up || return 1
        ip -n "$ep" link set "$ep" address "${MACS[$i]}" mtu 1500 || return 1
        ip -n "$ep" addr add "${IPS[$i]}" dev "$ep" || return 1
        ip -n "$ep" link set "$ep" up || return 1
    done
    for ((i = 0; i < 150; i++)); do
        ip netns exec "${ENDPOINTS[0]}" ping -c 1 -W 1 "$SERVER_IP" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "the endpoints did not reach each other through the Linux vxlan peer within 30 s"
    return 1
}

linux_teardown() {
    local i
    for i in 0 1; do
        netns_remove "${ENDPOINTS[$i]}"
        ip -n "${HOSTS[$i]}" link delete vx0 2>/dev/null || true
        ip -n "${HOSTS[$i]}" link delete br0 2>/dev/null || true
    done
}

measure_linux() {
    local round=$1
    linux_setup || die "could not set up the Linux vxlan peer (round $round)"
    run_iperf vxlan-linux tcp "$round" "${ENDPOINTS[0]}" "${ENDPOINTS[1]}" - || die "iperf3 TCP through Linux vxlan failed (round $round)"
    run_iperf vxlan-linux udp64 "$round" "${ENDPOINTS[0]}" "${ENDPOINTS[1]}" - || die "iperf3 UDP through Linux vxlan failed (round $round)"
    linux_teardown
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_iperf_client
    kill_pidfile "$WORK_DIR/iperf3-server.pid"
    ((${#DAEMON_PIDS[@]} == 0)) || bulkhead_fleet_stop
    linux_teardown
    etcd_stop
    underlay_teardown
    rm -rf "$WORK_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

step "removing what an earlier, aborted run may have left"
underlay_teardown
step "setting up the underlay ($UL_NS, bridge $UL_BRIDGE, MTU $UL_MTU) and hosts ${HOSTS[*]}"
underlay_setup || die "could not set up the underlay"
step "starting etcd in $UL_NS ($ETCD_IP:2379)"
etcd_start || die "etcd did not start"
for i in 0 1; do
    bulkhead_fleet_config "$i" "$WORK_DIR/${HOSTS[$i]}.json"
    cp "$WORK_DIR/${HOSTS[$i]}.json" "$OUT_DIR/bulkhead-${HOSTS[$i]}.json"
    "$BIN" validate --config "$WORK_DIR/${HOSTS[$i]}.json" >&2 || die "bulkhead rejected the configuration of ${HOSTS[$i]}"
done

step "measuring: $ROUNDS round(s), $DURATION s per measurement; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then measure_bulkhead "$round"; measure_linux "$round"
    else measure_linux "$round"; measure_bulkhead "$round"; fi
done

median() { "$PYTHON" "$BENCH_LIB/iperf_json.py" median "$OUT_DIR/measurements.tsv" "$1" "$2" || die "no $1 $2 measurement"; }
bt=$(median vxlan-bulkhead tcp) lt=$(median vxlan-linux tcp)
bu=$(median vxlan-bulkhead udp64) lu=$(median vxlan-linux udp64)
for v in "$bt" "$lt" "$bu" "$lu"; do [ -n "$v" ] || die "a median is missing (see $OUT_DIR/measurements.tsv)"; done
{
    echo "Bulkhead fleet benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $DURATION s per measurement, $ROUNDS round(s), medians"
    echo "Two hosts (namespaces) on an underlay bridge, MTU $UL_MTU; one segment, VNI $VNI; endpoint to endpoint."
    echo "TCP: one stream, what the receiver got. UDP: 64-byte payloads, -b 0, datagrams/s delivered."
    awk -v bt="$bt" -v lt="$lt" -v bu="$bu" -v lu="$lu" 'BEGIN {
        printf "vxlan.bulkhead.tcp_gbps=%.2f\nvxlan.linux.tcp_gbps=%.2f\n", bt / 1e9, lt / 1e9
        printf "vxlan.bulkhead.udp64_kpps=%.0f\nvxlan.linux.udp64_kpps=%.0f\n", bu / 1e3, lu / 1e3
        printf "ratio.vxlan_tcp_vs_linux=%.2f\nratio.vxlan_udp64_pps_vs_linux=%.2f\n", bt / lt, bu / lu }'
} >"$OUT_DIR/results.txt" || die "could not summarize the measurements"
echo "raw iperf3 JSON, daemon logs and results.txt: $OUT_DIR"
echo
cat "$OUT_DIR/results.txt"
