#!/usr/bin/env bash
# System benchmark: the same iperf3 traffic between two network namespaces, in one run on one
# machine, through Bulkhead's switch (TAP ports, io_uring) and through three peers, each between
# two namespaces of its own with the same MACs and addresses: the Linux bridge with veth pairs; a
# plain C forwarder of our own (Benchmarks/PlainForwarder, built here with cc -O2: two TAPs with
# virtio-net headers and TSO, each frame read from one and written to the other, no policy; the
# cost floor of a user-space switch, so the distance to it is what Bulkhead's policy and engine
# cost); and Open vSwitch with its userspace datapath (datapath_type=netdev, tap ports, userspace
# TSO, started from a private run directory; skipped with a message when OVS is not installed).
# Then the ratios Bulkhead / each peer, and the CPU time per forwarded frame of Bulkhead's switch
# beside the plain forwarder's and OVS's. Then the switch's own lines (lib/switch.sh): 1 against N
# packet workers (host.switch.workers), the time from kill -9 of the `bulkhead switch` process to
# the first forwarded frame, and vhost-user port to TAP port frames/s, each skipped with the
# reason where this bulkhead does not support it yet. Then the block part: 4 KiB random reads and
# writes at queue depth 32 through `bulkhead block-server` (vhost-user-blk, driven by the
# BlockLoad executable) and, on the same 1 GiB volume file with the server stopped, through fio
# (io_uring, O_DIRECT), and the ratios Bulkhead / fio. Then the partition part (lib/partition.sh;
# skipped, saying so, where /dev/kvm is missing): `bulkhead partition` processes running the test
# guest (Tests/Guest): the time from exec to the guest's first instruction and first serial byte
# and the VMM's own resident memory, for 1 partition and for 20 started together; 4 KiB random
# reads at QD32 by the guest through its virtio-blk device (vhost-user, the block server,
# io_uring) against fio on the same file; 64-byte UDP frames from the guest through the switch to
# a namespace endpoint of its tenant.
#
#   Benchmarks/run-system.sh [--short] [--out DIR] [--rounds N] [--duration S]
#                            [--network-only | --block-only | --partition-only]
#
#   --short       3 s per measurement (default 10 s)
#   --out DIR     where the raw iperf3 JSON, the daemon's logs and results.txt go (default: a new
#                 temporary directory, printed)
#   --rounds N    measurements per scenario and topology; the table shows the median
#                 (default 2 with --short, 3 without). Rounds rotate which topology goes first.
#   --duration S  seconds per measurement, overriding --short's and the default
#   --network-only, --block-only, --partition-only
#                 run only that part (default: all three: network, block, partition)
#
# Environment: BULKHEAD_BINARY (use this binary, do not build), BLOCKLOAD_BINARY (likewise for
# BlockLoad), BULKHEAD_SCRATCH_PATH (passed to `swift build --scratch-path`; the binaries are
# then taken from there), BLOCK_STATE_PARENT (where the block part's temporary state directory
# goes; default /var/tmp; it must not be tmpfs: both sides use O_DIRECT; the partition part's
# state directory goes there too), PARTITION_COUNT (partitions started together; default 20).
#
# Needs root (namespaces, TAP devices), iperf3, iproute2, cc and /usr/bin/python3, and for the
# OVS peer openvswitch-switch; installs nothing (CI runs deploy/install-deps.sh first).
# Scenarios: TCP throughput (one stream, what the receiver got) and UDP with 64-byte payloads at
# an unlimited send rate (datagrams/s delivered to the receiving socket). Nothing is pinned: with two cores, where Bulkhead's dataplane thread
# also needs a core, leaving placement to the scheduler treats every side alike. Each topology
# is measured while the others are idle (Bulkhead's daemon and the plain forwarder stopped, OVS
# paused with SIGSTOP). The plain forwarder gets as many queues per TAP as Bulkhead's ports had,
# and it and ovs-vswitchd run at the niceness of Bulkhead's switch threads (-2 today: they
# inherit it from the Swift runtime's user-initiated threads), so that on a busy machine the
# scheduler favours no side.
#
# The block part needs fio and root as well (block-server drops its privileges after opening the
# volume). Each Bulkhead block measurement: 1 s warm-up, then DURATION s; fio gets the same as
# --ramp_time. 1 queue is compared with 1 fio job, 2 queues (server --queues 2) with 2 jobs.
#
# The partition part needs /dev/kvm, fio, gcc and objcopy (the test guest is built here with
# Tests/Guest/build.sh) and sha256sum. Its guests are 1 vCPU, 64 MiB; the test guest's drivers run
# in ring 3 and poll. Each guest gets tsc_mhz= from the host's "tsc: Detected" line (its own PIT
# calibration may fail under KVM); its I/O and UDP rates are timed by the host as well (the
# launcher stamps each console line with CLOCK_MONOTONIC) and the result lines use the host's.
#
# Exit status 0 when every measurement was taken (the ratios are reported, not judged; a part
# skipped for want of support or of OVS says so and does not fail), non-zero with the reason
# otherwise. The network part's results end with the lines
#   ratio.tcp_vs_linux_bridge=R
#   ratio.udp64_pps_vs_linux_bridge=R
#   ratio.tcp_vs_plain_forwarder=R
#   ratio.udp64_pps_vs_plain_forwarder=R
#   ratio.tcp_vs_ovs_netdev=R            (the two OVS lines only where OVS is installed)
#   ratio.udp64_pps_vs_ovs_netdev=R
#   switch.cpu_ns_per_frame.tcp=NS       (CPU time of the switch process per frame it forwarded;
#   switch.cpu_ns_per_frame.udp64=NS      a TCP GSO super-frame counts once)
#   plain_forwarder.cpu_ns_per_frame.tcp=NS, ...udp64=NS, ovs_netdev.cpu_ns_per_frame.tcp=NS, ...
# then, each where supported (a "# SKIP ..." line saying why otherwise):
#   switch.workersN=N, switch.workers1.tcp_gbps=, switch.workersN.tcp_gbps=,
#   switch.workers1.udp64_kpps=, switch.workersN.udp64_kpps=,
#   ratio.switch_workersN_vs_workers1.tcp=R, ratio.switch_workersN_vs_workers1.udp64_pps=R
#   switch.restart_ms=MS, switch.restart_largest_gap_ms=MS
# and the block part's with
#   ratio.randread4k_vs_fio=R        (1 queue, QD32, against 1 fio job)
#   ratio.randwrite4k_vs_fio=R
#   ratio.randread4k_2q_vs_fio=R     (2 queues against 2 fio jobs)
#   ratio.randwrite4k_2q_vs_fio=R
# and the partition part's (the last lines of the output when it runs; "# SKIP partition: ..."
# instead where /dev/kvm is missing) with
#   partition.single.first_instruction_ms=MS, partition.single.first_serial_byte_ms=MS,
#   partition.single.vmm_overhead_kib=KIB          (1 partition alone, median over rounds)
#   partition.guest_randread4k_iops=N, ..._doorbells_per_request=N, ..._exits_per_request=N
#   partition.guest_udp64_doorbells_per_frame=N, partition.guest_udp64_exits_per_frame=N
#   ratio.guest_randread4k_vs_fio=R    (the guest's host-timed IOPS / fio's)
#   partition.guest_udp64_pps=N        (frames that arrived at the namespace's interface per s)
#   partition.first_instruction_ms=MS  (20 together: medians of the 20, of all rounds)
#   partition.first_serial_byte_ms=MS
#   partition.vmm_overhead_kib=KIB
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/common.sh
source "$REPO/Benchmarks/lib/common.sh"
# shellcheck source=lib/linux-bridge.sh
source "$REPO/Benchmarks/lib/linux-bridge.sh"
# shellcheck source=lib/bulkhead.sh
source "$REPO/Benchmarks/lib/bulkhead.sh"
# shellcheck source=lib/plain-forwarder.sh
source "$REPO/Benchmarks/lib/plain-forwarder.sh"
# shellcheck source=lib/ovs-netdev.sh
source "$REPO/Benchmarks/lib/ovs-netdev.sh"
# shellcheck source=lib/switch.sh
source "$REPO/Benchmarks/lib/switch.sh"
# shellcheck source=lib/block.sh
source "$REPO/Benchmarks/lib/block.sh"
# shellcheck source=lib/partition.sh
source "$REPO/Benchmarks/lib/partition.sh"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

SHORT=0 OUT_DIR="" ROUNDS="" DURATION="" ONLY=""
only() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ] || die "--$ONLY-only and --$1-only exclude each other"; ONLY=$1; }
while (($#)); do
    case $1 in
        --short) SHORT=1 ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
        --out=*) OUT_DIR=${1#--out=} ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        --network-only) only network ;;
        --block-only) only block ;;
        --partition-only) only partition ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done
[ -n "$DURATION" ] || DURATION=$((SHORT ? 3 : 10))
[ -n "$ROUNDS" ] || ROUNDS=$((SHORT ? 2 : 3))
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a whole number of seconds"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number"

RUN_NETWORK=1 RUN_BLOCK=1 RUN_PARTITION=1
case $ONLY in
    network) RUN_BLOCK=0 RUN_PARTITION=0 ;;
    block) RUN_NETWORK=0 RUN_PARTITION=0 ;;
    partition) RUN_NETWORK=0 RUN_BLOCK=0 ;;
esac
PARTITION_SKIP=""
if ((RUN_PARTITION)); then
    PARTITION_SKIP=$(partition_skip_reason)
    [[ $PARTITION_COUNT =~ ^[1-9][0-9]*$ ]] || die "PARTITION_COUNT must be a positive number"
fi
[ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces, veth pairs, a bridge and TAP devices; block-server and partitions drop privileges)"
missing=()
if ((RUN_NETWORK)); then
for tool in iperf3 ip ss top timeout cc pgrep; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
if ((RUN_BLOCK)); then
for tool in fio dd stat timeout; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
if ((RUN_PARTITION)) && [ -z "$PARTITION_SKIP" ]; then
for tool in fio dd stat timeout ip gcc objcopy sha256sum; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
[ -x "$PYTHON" ] || missing+=("$PYTHON")
((${#missing[@]} == 0)) || die "missing: ${missing[*]} (run deploy/install-deps.sh: iperf3, iproute2, procps, python3, fio, gcc, binutils)"

# Addresses, the same on both topologies.
MAC_A=02:00:00:00:0b:01 MAC_B=02:00:00:00:0b:02
IP_A=10.77.0.1/24 IP_B=10.77.0.2/24
SERVER_IP=${IP_B%/*}

# --- build -----------------------------------------------------------------------------------
cd "$REPO"
# build_product PRODUCT OVERRIDE: prints the path of PRODUCT's release binary: the value of the
# environment variable named OVERRIDE when set (not built), else built with swift build.
build_product() {
    local product=$1 override=$2 bin build
    if [ -n "${!override:-}" ]; then
        step "using $override=${!override} (not building)"
        bin=${!override}
    else
        command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
        command -v swift >/dev/null || die "swift toolchain not found (expected at /opt/swift)"
        build=(swift build -c release --product "$product")
        bin=$REPO/.build/release/$product
        if [ -n "${BULKHEAD_SCRATCH_PATH:-}" ]; then
            build+=(--scratch-path "$BULKHEAD_SCRATCH_PATH")
            bin=$(cd "$REPO" && mkdir -p "$BULKHEAD_SCRATCH_PATH" && cd "$BULKHEAD_SCRATCH_PATH" && pwd)/release/$product
        fi
        step "building: ${build[*]}"
        "${build[@]}" >&2 || die "the release build of $product failed"
    fi
    [ -x "$bin" ] || die "no $product binary at $bin"
    printf '%s\n' "$bin"
}
BIN=$(build_product bulkhead BULKHEAD_BINARY)
if ((RUN_BLOCK)); then LOAD_BIN=$(build_product BlockLoad BLOCKLOAD_BINARY); fi
# The partition process the daemon spawns; an override of bulkhead alone finds it next to bulkhead.
if ((RUN_PARTITION)) && [ -z "$PARTITION_SKIP" ] && { [ -n "${BULKHEAD_VMM_BINARY:-}" ] || [ -z "${BULKHEAD_BINARY:-}" ]; }; then VMM_BIN=$(build_product bulkhead-vmm BULKHEAD_VMM_BINARY); fi

# --- directories, cleanup ----------------------------------------------------------------------
WORK_DIR=$(mktemp -d /tmp/bulkhead-bench-work.XXXXXX)
if [ -n "$OUT_DIR" ]; then mkdir -p "$OUT_DIR"; else OUT_DIR=$(mktemp -d /tmp/bulkhead-bench.XXXXXX); fi
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/measurements.tsv"
step "output directory: $OUT_DIR"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_iperf_client
    if [ -n "$BHB_PID" ]; then bulkhead_stop /dev/null >/dev/null 2>&1; fi
    kill_pidfile "$WORK_DIR/iperf3-server.pid"
    linux_bridge_teardown
    bulkhead_leftovers_remove
    plain_forwarder_teardown
    ovs_netdev_teardown
    probe_cleanup
    if declare -F vhost_stop >/dev/null; then vhost_stop; fi
    partition_cleanup
    block_cleanup
    rm -rf "$WORK_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

: >"$OUT_DIR/results.txt"
if ((RUN_NETWORK)); then
step "removing what an earlier, aborted run may have left"
linux_bridge_teardown
bulkhead_leftovers_remove
plain_forwarder_teardown
ovs_netdev_teardown

# --- topologies --------------------------------------------------------------------------------
CONFIG=$WORK_DIR/bench.json
bulkhead_write_config "$CONFIG" "$WORK_DIR/state" "$MAC_A" "$IP_A" "$MAC_B" "$IP_B"
cp "$CONFIG" "$OUT_DIR/bulkhead-config.json"
"$BIN" validate --config "$CONFIG" >&2 || die "bulkhead rejected the benchmark configuration ($OUT_DIR/bulkhead-config.json)"

step "setting up the Linux bridge topology (brb-a, brb-b, bridge brb-br0)"
linux_bridge_setup "$MAC_A" "$IP_A" "$MAC_B" "$IP_B" || die "could not set up the Linux bridge topology"

PFW_BIN=$WORK_DIR/plain-forwarder
step "building the plain forwarder (cc -O2): Benchmarks/PlainForwarder/plain-forwarder.c"
plain_forwarder_build "$REPO/Benchmarks/PlainForwarder/plain-forwarder.c" "$PFW_BIN" || die "could not build the plain forwarder"

TOPOLOGY_ORDER=(bulkhead linux-bridge plain-forwarder)
if ovs_netdev_available; then
    step "setting up Open vSwitch, userspace datapath (ovs-a, ovs-b, bridge ovs-br0; run directory $WORK_DIR/ovs)"
    ovs_netdev_setup "$WORK_DIR/ovs" "$MAC_A" "$IP_A" "$MAC_B" "$IP_B" \
        || { tail -n 20 "$WORK_DIR/ovs/ovs-vswitchd.log" 2>/dev/null | sed 's/^/    ovs-vswitchd: /' >&2; die "could not set up the Open vSwitch topology"; }
    ovs_netdev_pause
    TOPOLOGY_ORDER+=(ovs-netdev)
else
    say "SKIP ovs-netdev: Open vSwitch is not installed; its ratio lines are left out"
fi

# Each topology is measured while the others sit idle: the Bulkhead daemon and the plain
# forwarder are stopped, OVS is paused (SIGSTOP), the Linux bridge has no traffic.
measure_linux_bridge() {
    local round=$1
    SNAPSHOT_TOP=1 run_iperf linux-bridge tcp "$round" brb-a brb-b - || die "iperf3 TCP through the Linux bridge failed"
    SNAPSHOT_TOP= run_iperf linux-bridge udp64 "$round" brb-a brb-b - || die "iperf3 UDP through the Linux bridge failed"
}

# BHB_QUEUES: the queues per TAP port of the last Bulkhead run; the plain forwarder gets as
# many (one worker per queue, as Bulkhead's workers). PEER_NICE: the niceness of Bulkhead's
# switch threads in that run; the plain forwarder and ovs-vswitchd run at the same, so that on
# a busy machine no side gets a larger share of the CPUs from the scheduler than the other.
BHB_QUEUES="" PEER_NICE=0
# measure_bulkhead ROUND [TOPOLOGY CONFIG]: TOPOLOGY (default bulkhead) names the rows.
measure_bulkhead() {
    local round=$1 topo=${2:-bulkhead} config=${3:-$CONFIG} log="$OUT_DIR/${2:-bulkhead}-r$1.log" spid process
    bulkhead_start "$BIN" "$config" "$log" || die "bulkhead did not start (round $round)"
    if spid=$(bulkhead_switch_pid); then process=bulkhead-switch; else process=bulkhead-daemon; fi
    BHB_QUEUES=$(bulkhead_queue_count bhb-a)
    [ "$topo" != bulkhead ] || PEER_NICE=$(bulkhead_switch_nice "$spid")
    local snapshot=""; [ "$topo" != bulkhead ] || snapshot=1
    SWITCH_PROCESS=$process SNAPSHOT_TOP=$snapshot run_iperf "$topo" tcp "$round" bhb-a bhb-b "$spid" \
        || { tail -n 20 "$log" | sed 's/^/    bulkhead: /' >&2; die "iperf3 TCP through Bulkhead failed"; }
    kill -0 "$BHB_PID" 2>/dev/null || { sed 's/^/    /' "$log" >&2; die "bulkhead exited during the TCP run"; }
    SWITCH_PROCESS=$process SNAPSHOT_TOP= run_iperf "$topo" udp64 "$round" bhb-a bhb-b "$spid" \
        || { tail -n 20 "$log" | sed 's/^/    bulkhead: /' >&2; die "iperf3 UDP through Bulkhead failed"; }
    bulkhead_stop "$log" || die "bulkhead did not stop cleanly (round $round)"
}

measure_plain_forwarder() {
    local round=$1 log="$OUT_DIR/plain-forwarder-r$1.log" queues=${BHB_QUEUES:-1}
    ((queues >= 1)) || queues=1
    plain_forwarder_start "$PFW_BIN" "$queues" "$log" "$MAC_A" "$IP_A" "$MAC_B" "$IP_B" \
        || die "the plain forwarder did not start (round $round)"
    SWITCH_PROCESS=plain-forwarder SNAPSHOT_TOP=1 run_iperf plain-forwarder tcp "$round" pfw-a pfw-b "$PFW_PID" \
        || die "iperf3 TCP through the plain forwarder failed"
    SWITCH_PROCESS=plain-forwarder SNAPSHOT_TOP= run_iperf plain-forwarder udp64 "$round" pfw-a pfw-b "$PFW_PID" \
        || die "iperf3 UDP through the plain forwarder failed"
    plain_forwarder_stop "$log" || die "the plain forwarder did not stop cleanly (round $round)"
}

measure_ovs_netdev() {
    local round=$1
    ovs_netdev_resume
    ovs_netdev_renice "$PEER_NICE"
    SWITCH_PROCESS=ovs-vswitchd SNAPSHOT_TOP=1 run_iperf ovs-netdev tcp "$round" ovs-a ovs-b "$OVS_VSWITCHD_PID" \
        || { tail -n 20 "$OVS_DIR/ovs-vswitchd.log" | sed 's/^/    ovs-vswitchd: /' >&2; die "iperf3 TCP through OVS failed"; }
    SWITCH_PROCESS=ovs-vswitchd SNAPSHOT_TOP= run_iperf ovs-netdev udp64 "$round" ovs-a ovs-b "$OVS_VSWITCHD_PID" \
        || { tail -n 20 "$OVS_DIR/ovs-vswitchd.log" | sed 's/^/    ovs-vswitchd: /' >&2; die "iperf3 UDP through OVS failed"; }
    kill -0 "$OVS_VSWITCHD_PID" 2>/dev/null || die "ovs-vswitchd exited during the run"
    ovs_netdev_pause
}

step "measuring: $ROUNDS round(s), $DURATION s per measurement, topologies ${TOPOLOGY_ORDER[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    # Round r starts with topology r (rotating), Bulkhead first in round 1: a daemon that fails,
    # fails early, and the plain forwarder learns its queue count from it.
    n=${#TOPOLOGY_ORDER[@]}
    for ((k = 0; k < n; k++)); do
        case ${TOPOLOGY_ORDER[$(((round - 1 + k) % n))]} in
            bulkhead) measure_bulkhead "$round" ;;
            linux-bridge) measure_linux_bridge "$round" ;;
            plain-forwarder) measure_plain_forwarder "$round" ;;
            ovs-netdev) measure_ovs_netdev "$round" ;;
        esac
    done
done
linux_bridge_teardown
plain_forwarder_teardown
ovs_netdev_teardown
MAIN_QUEUES=$BHB_QUEUES  # the workers comparison below changes BHB_QUEUES

# --- the switch's own lines: workers, restart, vhost-user ------------------------------------
: >"$OUT_DIR/switch.txt"
switch_workers_compare
switch_restart_measure
switch_vhost_user_measure

# --- report --------------------------------------------------------------------------------------
{
    echo "Bulkhead system benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- Sources Package.swift 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $DURATION s per measurement, iperf3 $(iperf3 --version | awk 'NR==1 { print $2 }')"
    echo "Queues per TAP: Bulkhead ${MAIN_QUEUES:-?}, plain forwarder the same. Niceness of Bulkhead's switch threads: $PEER_NICE;"
    echo "the plain forwarder and ovs-vswitchd ran at the same."
    echo "TCP: one stream, end.sum_received.bits_per_second of the client's JSON (what the receiver got)."
    echo "UDP: 64-byte payloads, -b 0; delivered/s = (packets - lost_packets) / seconds of the receiver's"
    echo "     own JSON (server_output_json.end.sum_received)."
    echo "Switch CPU: utime+stime over the run (100% = one core), and by thread name (percent(threads)),"
    echo "of the process that forwards: Bulkhead's \`bulkhead switch\` child, or the daemon where the switch"
    echo "is its thread; plain-forwarder; ovs-vswitchd. Link drops: tx_dropped of the sender's link, rx_dropped of the receiver's;"
    echo "receiver out-of-order queued: TcpExt TCPOFOQueue in the receiver's namespace (reordering or loss)."
    echo
    for f in "$OUT_DIR"/*-tcp-r1.top.txt; do
        [ -s "$f" ] || continue
        echo "Busiest threads in the middle of $(basename "$f" .top.txt) (top -H, 1 s):"
        awk '/^ *PID /{ h = 1; print "  " $0; next } h && n < 6 { print "  " $0; n++ }' "$f"
        echo
    done
    "$PYTHON" "$BENCH_LIB/iperf_json.py" summarize "$OUT_DIR/measurements.tsv"
    cat "$OUT_DIR/switch.txt"
} >"$OUT_DIR/results.txt" || { cat "$OUT_DIR/results.txt"; die "could not summarize the measurements"; }
fi

# --- block -----------------------------------------------------------------------------------------
if ((RUN_BLOCK)); then
    block_run "$BIN" "$LOAD_BIN"
    block_cleanup
    {
        ((RUN_NETWORK)) && echo
        echo "Bulkhead block benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg),"
        echo "$DURATION s per measurement, $(fio --version), file system $(stat -f -c %T "${BLOCK_STATE_PARENT:-/var/tmp}")"
        block_summarize
    } >>"$OUT_DIR/results.txt" || { cat "$OUT_DIR/results.txt"; die "could not summarize the block measurements"; }
fi
# --- partition -------------------------------------------------------------------------------------
if ((RUN_PARTITION)); then
    if [ -n "$PARTITION_SKIP" ]; then
        step "partition: skipped: $PARTITION_SKIP"
        { ((RUN_NETWORK || RUN_BLOCK)) && echo
          echo "# SKIP partition: $PARTITION_SKIP; its lines are left out"; } >>"$OUT_DIR/results.txt"
    else
        partition_run
        block_cleanup
        {
            ((RUN_NETWORK || RUN_BLOCK)) && echo
            echo "Bulkhead partition benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg),"
            echo "$DURATION s per I/O and UDP measurement, $ROUNDS round(s), $(fio --version), file system $(stat -f -c %T "${BLOCK_STATE_PARENT:-/var/tmp}"),"
            echo "KVM: $(partition_kvm_flavour)"
            partition_summarize
        } >>"$OUT_DIR/results.txt" || { cat "$OUT_DIR/results.txt"; die "could not summarize the partition measurements"; }
    fi
fi
if ((RUN_NETWORK)); then
    echo "raw iperf3 JSON, daemon logs and results.txt: $OUT_DIR"
elif ((RUN_BLOCK)); then
    echo "raw fio JSON, BlockLoad output, block-server logs and results.txt: $OUT_DIR"
elif [ -n "$PARTITION_SKIP" ]; then
    echo "results.txt: $OUT_DIR"
else
    echo "partition records (launcher JSON, guest consoles, partition logs), fio JSON: $OUT_DIR/partition; results.txt: $OUT_DIR"
fi
echo
cat "$OUT_DIR/results.txt"
