# The partition part of Benchmarks/run-system.sh: `bulkhead-vmm` processes (what `bulkhead run` spawns per partition) (KVM guests)
# running the test guest (Tests/Guest), measured three ways:
#   1. start-up: from CLOCK_MONOTONIC just before the launcher's execv to the guest's first
#      instruction and first serial byte (the partition logs both on the same clock), and the
#      VMM's own resident memory (smaps Rss of every mapping but the guest RAM memfd, the largest
#      of samples taken while the guest runs), for 1 partition alone and for 20 started at once;
#   2. guest I/O: 4 KiB random reads at QD32 by the guest's polling virtio-blk driver
#      (guest -> vhost-user -> block server -> io_uring) on a 1 GiB volume file, against fio
#      (io_uring, O_DIRECT, randread 4k QD32) on the same file with the server stopped;
#   3. UDP: 64-byte frames (60 + FCS) from the guest's virtio-net through the switch (the daemon,
#      `bulkhead run`) to a TAP port in a namespace of the same tenant, counted at that interface.
# Processes are started by lib/partition_launch.py, which stamps every line they write with
# CLOCK_MONOTONIC; lib/partition_summary.py turns the records into the table and the result lines.
# Sourced after lib/common.sh, lib/block.sh and lib/bulkhead.sh.
# shellcheck shell=bash

PARTITION_COUNT=${PARTITION_COUNT:-20}
PARTITION_DIR=""      # $OUT_DIR/partition: the launcher's records, consoles, fio and counters
PARTITION_CONFIG=""   # every partition, with the block server's volumes
PARTITION_TSC_MHZ=""
PARTITION_UDP_SINK_PID=""
PARTITION_MAC_A=02:00:00:00:0c:01 PARTITION_MAC_VM=02:00:00:00:0c:03

# partition_skip_reason: prints why the partition part cannot run here (empty: it can).
partition_skip_reason() {
    if [ ! -e /dev/kvm ]; then echo "/dev/kvm is missing (no KVM on this host)"; return; fi
    if [ ! -c /dev/kvm ]; then echo "/dev/kvm is not a character device"; return; fi
    if ! { exec 9<>/dev/kvm; } 2>/dev/null; then echo "/dev/kvm cannot be opened"; return; fi
    exec 9>&-
}

# partition_kvm_flavour: which KVM module this host has, in words.
partition_kvm_flavour() {
    if [ -d /sys/module/kvm_pvm ]; then
        echo "kvm_pvm, no hardware virtualization: every exit costs 15-100 us, ring-0 guest code is emulated"
    elif [ -d /sys/module/kvm_intel ]; then echo "kvm_intel"
    elif [ -d /sys/module/kvm_amd ]; then echo "kvm_amd"
    else echo "unknown module"
    fi
}

# partition_tsc_mhz: the host's TSC frequency in whole MHz, for the guest's tsc_mhz= (its PIT
# calibration may fall back to an assumed 2000 MHz under this KVM): the kernel's "tsc: Detected"
# line, else /proc/cpuinfo's "cpu MHz". Empty when neither says.
partition_tsc_mhz() {
    local mhz
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -n 1)
    [ -n "$mhz" ] || mhz=$(awk -F: '/^cpu MHz/ { gsub(/ /, "", $2); print $2; exit }' /proc/cpuinfo)
    [ -n "$mhz" ] && awk -v m="$mhz" 'BEGIN { printf "%d\n", m + 0.5 }'
}

# partition_write_config FILE IMAGE SHA256 TSC_ARG: tenant "bench" with the 1 GiB volume "data"
# and a small one per start-up partition; the tap port "a" (namespace bhb-a, 10.0.0.1) and the
# vhost-user port "vm" (10.0.0.3); partitions "io" (disk data), "udp" (NIC vm) and p1..pN (disk
# sN each), 1 vCPU and 64 MiB each. With DAEMON_ONLY=1: the ports alone (the daemon's config:
# no volumes, so no block server, and no partitions for it to start).
partition_write_config() {
    local file=$1 image=$2 sha=$3 tsc=$4 i volumes partitions boot
    boot="\"vcpus\": 1, \"memoryMiB\": 64, \"image\": {\"path\": \"$image\", \"sha256\": \"$sha\"}, \"restart\": \"never\""
    volumes="{\"id\": \"data\", \"sizeBytes\": $BLOCK_VOLUME_BYTES}"
    partitions="{\"id\": \"io\", $boot, \"disks\": [\"data\"], \"cmdline\": \"bench=randread qd=32 seconds=$DURATION$tsc\"},
    {\"id\": \"udp\", $boot, \"nics\": [\"vm\"], \"cmdline\": \"bench=udp udp=10.0.0.1:9 seconds=$DURATION$tsc\"}"
    for ((i = 1; i <= PARTITION_COUNT; i++)); do
        volumes+=", {\"id\": \"s$i\", \"sizeBytes\": 16777216}"
        # A guest that lives about a second (its memory is sampled meanwhile): random reads at
        # depth 1 of a sparse volume, light on the block server.
        partitions+=",
    {\"id\": \"p$i\", $boot, \"disks\": [\"s$i\"], \"cmdline\": \"bench=randread qd=1 seconds=1$tsc\"}"
    done
    if [ "${DAEMON_ONLY:-0}" = 1 ]; then volumes="" partitions=""; fi
    cat >"$file" <<JSON
{
  "host": {"stateDirectory": "$BLOCK_STATE_DIR"},
  "tenants": [{
    "id": "bench",
    "segments": [{"id": "lan", "vni": 7002}],
    "ports": [
      {"id": "a", "kind": "tap", "segment": "lan", "mac": "$PARTITION_MAC_A", "ips": ["10.0.0.1/24"],
       "netns": "bhb-a", "ifname": "bhb-a"},
      {"id": "vm", "kind": "vhost-user", "segment": "lan", "mac": "$PARTITION_MAC_VM", "ips": ["10.0.0.3/24"]}
    ],
    "volumes": [$volumes],
    "partitions": [
    $partitions
    ]
  }]
}
JSON
}

# partition_block_server_start LOG: the block server for the partition config's 21 volumes.
partition_block_server_start() {
    block_server_start "$BIN" "$PARTITION_CONFIG" "$1" 1
}

# partition_launch NAME ID...: starts the partitions ID... together (lib/partition_launch.py,
# consoles included) and waits for them; records in $PARTITION_DIR/NAME.json and NAME/. Fails
# when one had to be killed, exited with a failure status, or its guest did not print PASS.
partition_launch() {
    local name=$1 rc=0 id
    shift
    timeout 300 "$PYTHON" "$BENCH_LIB/partition_launch.py" --bin "$BIN" --vmm "${VMM_BIN:-$(dirname "$BIN")/bulkhead-vmm}" --config "$PARTITION_CONFIG" --tenant bench \
        --dir "$PARTITION_DIR/$name" --console --timeout $((DURATION + 90)) "$@" \
        >"$PARTITION_DIR/$name.json" 2>"$PARTITION_DIR/$name.stderr" || rc=$?
    if [ "$rc" != 0 ]; then
        sed 's/^/    launcher: /' "$PARTITION_DIR/$name.stderr" >&2
        say "partitions $* of $name did not all end by themselves (launcher status $rc); records in $PARTITION_DIR/$name"
    fi
    "$PYTHON" "$BENCH_LIB/partition_summary.py" check "$PARTITION_DIR/$name.json" "$PARTITION_DIR/$name" || rc=1
    return "$rc"
}

# partition_startup ROUND: one partition alone, then $PARTITION_COUNT together.
partition_startup() {
    local round=$1 ids=() i
    partition_launch "startup-1-r$round" p1 || return 1
    say "   $("$PYTHON" "$BENCH_LIB/partition_summary.py" startup-line "$PARTITION_DIR/startup-1-r$round.json" "1 partition, round $round")"
    for ((i = 1; i <= PARTITION_COUNT; i++)); do ids+=("p$i"); done
    partition_launch "startup-$PARTITION_COUNT-r$round" "${ids[@]}" || return 1
    say "   $("$PYTHON" "$BENCH_LIB/partition_summary.py" startup-line "$PARTITION_DIR/startup-$PARTITION_COUNT-r$round.json" "$PARTITION_COUNT partitions, round $round")"
}

# partition_guest_bench NAME ROUND: the guest's bench line of partition run NAME with the host's
# window, appended as "ROUND guest PAIRS" to $PARTITION_DIR/NAME-kind.tsv by the caller.
partition_guest_bench() {
    "$PYTHON" "$BENCH_LIB/partition_summary.py" guest-bench "$PARTITION_DIR/$1/$2.console"
}

# partition_io ROUND: the guest's random reads (block server running), then fio (stopped);
# rounds alternate which goes first, as in the block part.
partition_io() {
    local round=$1 sides=(guest fio) side line
    ((round % 2)) || sides=(fio guest)
    for side in "${sides[@]}"; do
        if [ "$side" = guest ]; then
            local log="$PARTITION_DIR/block-server-io-r$round.log"
            partition_block_server_start "$log" || return 1
            partition_launch "io-r$round" io || { tail -n 20 "$log" | sed 's/^/    block-server: /' >&2; return 1; }
            block_server_stop || { say "block-server did not stop cleanly ($log)"; return 1; }
            line=$(partition_guest_bench "io-r$round" io) || return 1
            printf '%s\tguest\t%s\n' "$round" "$line" >>"$PARTITION_DIR/io.tsv"
            say "   guest randread 4k QD32 round $round: $line"
        else
            # block_measure_fio writes its JSON and block.tsv under $OUT_DIR: ours, not the block part's.
            OUT_DIR=$PARTITION_DIR block_measure_fio 1 randread "$round" || return 1
        fi
    done
}

# partition_udp_sink_start: a UDP socket bound to port 9 in bhb-a that never reads: datagrams
# are counted by the kernel (InDatagrams, RcvbufErrors once the buffer is full) and no ICMP
# port-unreachable goes back to the guest.
partition_udp_sink_start() {
    ip netns exec bhb-a "$PYTHON" -c 'import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9))
while True: time.sleep(3600)' &
    PARTITION_UDP_SINK_PID=$!
}

partition_udp_sink_stop() {
    [ -n "$PARTITION_UDP_SINK_PID" ] || return 0
    kill -TERM "$PARTITION_UDP_SINK_PID" 2>/dev/null || true
    wait "$PARTITION_UDP_SINK_PID" 2>/dev/null || true
    PARTITION_UDP_SINK_PID=""
}

# partition_udp ROUND: the guest sends 60-byte UDP frames for $DURATION s to 10.0.0.1:9 (bhb-a)
# through the running daemon's switch; what arrived is bhb-a's rx_packets (and the UDP layer's
# counters) over the run.
partition_udp() {
    local round=$1 rx_before rx_after udp_before udp_after line
    rx_before=$(link_counter bhb-a bhb-a rx_packets)
    udp_before=$(udp_counters bhb-a)
    partition_launch "udp-r$round" udp || return 1
    rx_after=$(link_counter bhb-a bhb-a rx_packets)
    udp_after=$(udp_counters bhb-a)
    line=$(partition_guest_bench "udp-r$round" udp) || return 1
    line+=" endpoint_rx_frames=$((rx_after - rx_before)) endpoint_udp_in=$(awk -v b="$udp_before" -v a="$udp_after" \
        'BEGIN { split(b, x, " "); split(a, y, " "); print y[1] - x[1] " endpoint_udp_rcvbuf_errors=" y[2] - x[2] }')"
    printf '%s\tguest\t%s\n' "$round" "$line" >>"$PARTITION_DIR/udp.tsv"
    say "   guest udp64 round $round: $line"
}

# partition_run: the whole partition part. Needs $BIN, $ROUNDS, $DURATION, $OUT_DIR, $WORK_DIR.
partition_run() {
    local image sha tsc="" round daemon_config
    PARTITION_DIR=$OUT_DIR/partition
    rm -rf "$PARTITION_DIR"
    mkdir -p "$PARTITION_DIR"
    : >"$PARTITION_DIR/io.tsv"
    : >"$PARTITION_DIR/udp.tsv"
    step "partition: building the test guest: Tests/Guest/build.sh"
    image=$("$REPO/Tests/Guest/build.sh" "$WORK_DIR/guest" 2>"$PARTITION_DIR/guest-build.log" | tail -n 1) \
        || { sed 's/^/    /' "$PARTITION_DIR/guest-build.log" >&2; die "could not build the test guest"; }
    [ -s "$image" ] || die "the test guest build wrote no image ($image)"
    sha=$(sha256sum "$image" | cut -d' ' -f1)
    PARTITION_TSC_MHZ=$(partition_tsc_mhz)
    if [ -n "$PARTITION_TSC_MHZ" ]; then
        tsc=" tsc_mhz=$PARTITION_TSC_MHZ"
    else
        say "   the host's TSC frequency is unknown: the guest calibrates its own (its seconds= and rates may be off)"
    fi
    block_state_dir_create
    PARTITION_CONFIG=$BLOCK_STATE_DIR/partition.json
    partition_write_config "$PARTITION_CONFIG" "$image" "$sha" "$tsc"
    daemon_config=$BLOCK_STATE_DIR/partition-daemon.json
    DAEMON_ONLY=1 partition_write_config "$daemon_config" "$image" "$sha" "$tsc"
    cp "$PARTITION_CONFIG" "$PARTITION_DIR/partition-config.json"
    cp "$daemon_config" "$PARTITION_DIR/daemon-config.json"
    "$BIN" validate --config "$PARTITION_CONFIG" >&2 || die "bulkhead rejected the partition benchmark configuration ($PARTITION_DIR/partition-config.json)"
    "$BIN" validate --config "$daemon_config" >&2 || die "bulkhead rejected the partition daemon configuration ($PARTITION_DIR/daemon-config.json)"
    step "partition: writing the 1 GiB volume file once (the guest and fio read it)"
    block_volume_prefill

    step "partition: start-up, $ROUNDS round(s) of 1 partition alone and $PARTITION_COUNT together (1 vCPU, 64 MiB, one disk each; guest: bench=randread qd=1 seconds=1$tsc)"
    local log="$PARTITION_DIR/block-server-startup.log"
    partition_block_server_start "$log" || die "block-server did not start"
    # One launch first, not counted: it records the partitions' jail uids (a first start writes
    # the record) and brings the binary and the image into the page cache.
    partition_launch startup-warmup p1 || { tail -n 20 "$log" | sed 's/^/    block-server: /' >&2; die "the warm-up partition failed"; }
    for ((round = 1; round <= ROUNDS; round++)); do
        partition_startup "$round" || { tail -n 20 "$log" | sed 's/^/    block-server: /' >&2; die "partition start-up round $round failed"; }
    done
    block_server_stop || die "block-server did not stop cleanly ($log)"

    step "partition: guest I/O, $ROUNDS round(s): the guest's bench=randread qd=32 seconds=$DURATION$tsc against fio randread 4k QD32 ($DURATION s + 1 s ramp)"
    for ((round = 1; round <= ROUNDS; round++)); do
        partition_io "$round" || die "partition guest I/O round $round failed"
    done

    step "partition: guest UDP, $ROUNDS round(s): bench=udp udp=10.0.0.1:9 seconds=$DURATION$tsc through the switch to bhb-a"
    bulkhead_leftovers_remove
    bulkhead_start "$BIN" "$daemon_config" "$PARTITION_DIR/daemon.log" || die "bulkhead (the daemon, for the switch) did not start"
    partition_udp_sink_start
    for ((round = 1; round <= ROUNDS; round++)); do
        partition_udp "$round" || { tail -n 20 "$PARTITION_DIR/daemon.log" | sed 's/^/    bulkhead: /' >&2; die "partition guest UDP round $round failed"; }
    done
    partition_udp_sink_stop
    bulkhead_stop "$PARTITION_DIR/daemon.log" || die "bulkhead did not stop cleanly ($PARTITION_DIR/daemon.log)"
    [ ! -e /run/netns/bhb-a ] || die "bulkhead left namespace bhb-a behind"
}

# partition_cleanup: for the EXIT trap.
partition_cleanup() {
    partition_udp_sink_stop
}

# partition_summarize: the table and the result lines (lib/partition_summary.py report).
partition_summarize() {
    "$PYTHON" "$BENCH_LIB/partition_summary.py" report "$PARTITION_DIR" "$PARTITION_COUNT" "${PARTITION_TSC_MHZ:-}"
}
