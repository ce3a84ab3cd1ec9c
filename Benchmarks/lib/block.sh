# The block part of Benchmarks/run-system.sh: 4 KiB random reads and writes at queue depth 32
# through Bulkhead's vhost-user-blk server (driven by the BlockLoad executable) and, on the same
# volume file with the server stopped, by fio with io_uring and O_DIRECT (the peer). Sourced
# after lib/common.sh (say, step, die, PYTHON).
# shellcheck shell=bash

BLOCK_SERVER_PID=""
BLOCK_STATE_DIR=""
BLOCK_VOLUME_BYTES=$((1 << 30))

# block_state_dir_create: a new state directory on a file system with O_DIRECT (not tmpfs), in
# $BLOCK_STATE_PARENT (default /var/tmp, on the root file system). Sets BLOCK_STATE_DIR.
block_state_dir_create() {
    local parent=${BLOCK_STATE_PARENT:-/var/tmp} fs
    fs=$(stat -f -c %T "$parent") || die "cannot stat the file system of $parent"
    case $fs in
        tmpfs | ramfs) die "$parent is on $fs, which has no O_DIRECT; set BLOCK_STATE_PARENT to a directory on a disk" ;;
    esac
    BLOCK_STATE_DIR=$(mktemp -d "$parent/bulkhead-block.XXXXXX") || die "mktemp in $parent failed"
    # Check O_DIRECT for real: some file systems (overlays, FUSE) refuse it without saying so in stat.
    dd if=/dev/zero of="$BLOCK_STATE_DIR/direct-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null \
        || die "O_DIRECT writes fail in $BLOCK_STATE_DIR ($fs); set BLOCK_STATE_PARENT to a directory on a disk"
    rm -f "$BLOCK_STATE_DIR/direct-probe"
    say "   block state directory: $BLOCK_STATE_DIR ($fs)"
}

# block_write_config FILE: one tenant "bench" with one 1 GiB volume "data".
block_write_config() {
    cat >"$1" <<JSON
{"host": {"stateDirectory": "$BLOCK_STATE_DIR"},
 "tenants": [{"id": "bench", "volumes": [{"id": "data", "sizeBytes": $BLOCK_VOLUME_BYTES}]}]}
JSON
}

block_volume_file() { echo "$BLOCK_STATE_DIR/tenants/bench/volumes/data.img"; }
block_socket() { echo "$BLOCK_STATE_DIR/tenants/bench/vhost/data.sock"; }

# block_volume_prefill: writes the whole volume file with fio (sequential, 1 MiB, O_DIRECT,
# non-zero data), so that both sides read allocated, written blocks and write over them
# (no sparse holes, no unwritten extents). The server opens the existing file as it is.
block_volume_prefill() {
    local file dir
    file=$(block_volume_file)
    dir=$(dirname "$file")
    mkdir -p -m 0700 "$BLOCK_STATE_DIR/tenants" "$BLOCK_STATE_DIR/tenants/bench" "$dir"
    fio --name=prefill --filename="$file" --size="$BLOCK_VOLUME_BYTES" --rw=write --bs=1M --ioengine=io_uring \
        --direct=1 --iodepth=8 --end_fsync=1 --output-format=terse >/dev/null 2>"$WORK_DIR/fio-prefill.err" \
        || { sed 's/^/    fio: /' "$WORK_DIR/fio-prefill.err" >&2; die "could not write the volume file $file"; }
    chmod 0600 "$file"
    local allocated
    allocated=$(stat -c '%b * %B' "$file")
    say "   volume file written: $file ($(($allocated >> 20)) MiB allocated)"
}

# block_server_start BINARY CONFIG LOG QUEUES: starts `bulkhead block-server` and waits up to 30 s
# for "block server ready" and the socket. Sets BLOCK_SERVER_PID.
block_server_start() {
    local bin=$1 config=$2 log=$3 queues=$4
    : >"$log"
    "$bin" block-server --config "$config" --tenant bench --queues "$queues" >>"$log" 2>&1 &
    BLOCK_SERVER_PID=$!
    local rc=0
    wait_ready "$BLOCK_SERVER_PID" "$log" "block server ready" block-server "$(block_socket)" || rc=$?
    ((rc != 1)) || BLOCK_SERVER_PID=""
    return "$rc"
}

# block_server_stop: SIGTERM, up to 10 s, then SIGKILL. Non-zero when it had to be killed or
# exited with a failure status.
block_server_stop() {
    local pid=$BLOCK_SERVER_PID rc=0 i
    [ -n "$pid" ] || return 0
    BLOCK_SERVER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        say "block-server did not exit within 10 s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # 143 = ended by the SIGTERM we sent (a server that does not catch it); anything else fails.
    [ "$rc" = 0 ] || [ "$rc" = 143 ] || { say "block-server exited with status $rc"; return 1; }
}

# block_cleanup: for the EXIT trap.
block_cleanup() {
    block_server_stop >/dev/null 2>&1 || true
    [ -n "$BLOCK_STATE_DIR" ] && rm -rf "$BLOCK_STATE_DIR"
    BLOCK_STATE_DIR=""
}

# block_measure_bulkhead LOADBIN QUEUES PATTERN ROUND: BlockLoad at QD32 against the running
# server; appends "ROUND bulkhead PATTERN QUEUES iops=.. cpu_us_per_io=.. ..." to
# $OUT_DIR/block.tsv.
block_measure_bulkhead() {
    local load=$1 queues=$2 pattern=$3 round=$4 base="$OUT_DIR/block-bulkhead-$3-${2}q-r$4"
    timeout $((DURATION + 40)) "$load" --socket "$(block_socket)" --queues "$queues" --depth 32 --block-size 4096 \
        --pattern "$pattern" --seconds "$DURATION" --warmup 1 --server-pid "$BLOCK_SERVER_PID" >"$base.txt" 2>&1 \
        || { sed 's/^/    /' "$base.txt" >&2; return 1; }
    local line
    line=$(grep '^blockload iops=' "$base.txt" | tail -n 1)
    [ -n "$line" ] || { say "BlockLoad printed no result line ($base.txt)"; return 1; }
    printf '%s\tbulkhead\t%s\t%s\t%s\n' "$round" "$pattern" "$queues" "${line#blockload }" >>"$OUT_DIR/block.tsv"
    say "   $(printf 'bulkhead %-9s %sq round %s: ' "$pattern" "$queues" "$round")${line#blockload }"
}

# block_measure_fio JOBS PATTERN ROUND: fio with io_uring, O_DIRECT, 4 KiB, QD32 per job, JOBS
# jobs, on the volume file (the server is stopped); CPU = fio's usr_cpu+sys_cpu of its own JSON
# (percent of the summed job run time) over total_ios. 1 s of ramp-up, like BlockLoad's warm-up.
block_measure_fio() {
    local jobs=$1 pattern=$2 round=$3 base="$OUT_DIR/block-fio-$2-${1}j-r$3"
    timeout $((DURATION + 40)) fio --name=x --filename="$(block_volume_file)" --ioengine=io_uring --direct=1 \
        --rw="$pattern" --bs=4k --iodepth=32 --numjobs="$jobs" --time_based --ramp_time=1 --runtime="$DURATION" \
        --group_reporting --output-format=json >"$base.json" 2>"$base.stderr" \
        || { sed 's/^/    fio: /' "$base.stderr" >&2; return 1; }
    local line
    line=$("$PYTHON" - "$base.json" "$pattern" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index("{"):])["jobs"][0]   # fio may print notes before the JSON
side = job["read" if sys.argv[2] == "randread" else "write"]
ios, iops = side["total_ios"], side["iops"]
cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] / 1000
if job.get("error") or ios <= 0:
    sys.exit("fio reported error %s, %s I/Os" % (job.get("error"), ios))
print("iops=%d cpu_us_per_io=%.2f fio_cpu_s=%.3f mean_lat_us=%.1f ios=%d" % (
    round(iops), cpu_s / ios * 1e6, cpu_s, side["lat_ns"]["mean"] / 1000, ios))
PY
) || { say "cannot read fio's JSON ($base.json)"; return 1; }
    printf '%s\tfio\t%s\t%s\t%s\n' "$round" "$pattern" "$jobs" "$line" >>"$OUT_DIR/block.tsv"
    say "   $(printf 'fio      %-9s %sj round %s: ' "$pattern" "$jobs" "$round")$line"
}

# block_run BULKHEAD_BIN LOAD_BIN: the whole block benchmark, $ROUNDS rounds of each scenario
# (1 queue vs 1 fio job, 2 queues vs 2 fio jobs; randread and randwrite). Rounds alternate which
# side goes first. Writes $OUT_DIR/block.tsv.
block_run() {
    local bin=$1 load=$2 config round queues pattern
    : >"$OUT_DIR/block.tsv"
    block_state_dir_create
    config=$BLOCK_STATE_DIR/block.json
    block_write_config "$config"
    cp "$config" "$OUT_DIR/block-config.json"
    "$bin" validate --config "$config" >&2 || die "bulkhead rejected the block benchmark configuration ($OUT_DIR/block-config.json)"
    step "writing the 1 GiB volume file once (both sides use it)"
    block_volume_prefill
    step "block: $ROUNDS round(s), $DURATION s per measurement (+1 s warm-up), 4 KiB, QD32 per queue/job"
    for ((round = 1; round <= ROUNDS; round++)); do
        for queues in 1 2; do
            local sides=(bulkhead fio)
            ((round % 2)) || sides=(fio bulkhead)
            local side
            for side in "${sides[@]}"; do
                if [ "$side" = bulkhead ]; then
                    local log="$OUT_DIR/block-server-${queues}q-r$round.log"
                    block_server_start "$bin" "$config" "$log" "$queues" || die "block-server did not start"
                    for pattern in randread randwrite; do
                        block_measure_bulkhead "$load" "$queues" "$pattern" "$round" \
                            || { tail -n 20 "$log" | sed 's/^/    block-server: /' >&2; die "BlockLoad $pattern ($queues queues) failed"; }
                    done
                    block_server_stop || die "block-server did not stop cleanly ($log)"
                else
                    for pattern in randread randwrite; do
                        block_measure_fio "$queues" "$pattern" "$round" || die "fio $pattern ($queues jobs) failed"
                    done
                fi
            done
        done
    done
}

# block_summarize: the table (medians over rounds) and the ratio lines, from $OUT_DIR/block.tsv.
block_summarize() {
    "$PYTHON" - "$OUT_DIR/block.tsv" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    round_, side, pattern, queues, pairs = line.rstrip("\n").split("\t")
    values = dict(p.split("=", 1) for p in pairs.split())
    rows.setdefault((side, pattern, queues), []).append(values)

def median(side, pattern, queues, key):
    xs = [float(v[key]) for v in rows.get((side, pattern, queues), []) if v.get(key) not in (None, "na")]
    return statistics.median(xs) if xs else None

print("Block: 4 KiB random I/O, QD32 per queue (Bulkhead: BlockLoad through vhost-user-blk; fio: io_uring,")
print("O_DIRECT, one job per queue, same file). Medians over rounds. CPU per I/O: Bulkhead = BlockLoad +")
print("block-server utime+stime; fio = its usr_cpu+sys_cpu.")
header = "%-22s %13s %10s %7s %16s %11s %14s" % ("scenario", "Bulkhead IOPS", "fio IOPS", "ratio",
                                                  "Bulkhead us/IO", "fio us/IO", "Bulkhead lat us")
print(header)
print("-" * len(header))
ratios = []
for pattern in ("randread", "randwrite"):
    for queues in ("1", "2"):
        b, f = median("bulkhead", pattern, queues, "iops"), median("fio", pattern, queues, "iops")
        bc, fc = median("bulkhead", pattern, queues, "cpu_us_per_io"), median("fio", pattern, queues, "cpu_us_per_io")
        lat = median("bulkhead", pattern, queues, "mean_lat_us")
        ratio = b / f if b and f else None
        fmt = lambda x, d=0: "-" if x is None else ("%.*f" % (d, x))
        print("%-22s %13s %10s %7s %16s %11s %14s" % ("%s 4k QD32 %sq" % (pattern, queues), fmt(b), fmt(f),
              fmt(ratio, 2), fmt(bc, 2), fmt(fc, 2), fmt(lat, 1)))
        suffix = "" if queues == "1" else "_2q"
        ratios.append("ratio.%s4k%s_vs_fio=%s" % (pattern, suffix, "-" if ratio is None else "%.2f" % ratio))
print()
# The 1-queue ratios are the headline ones; the 2-queue ones follow as extra lines.
for line in sorted(ratios, key=lambda r: "_2q" in r):
    print(line)
PY
}
