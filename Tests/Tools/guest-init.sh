#!/bin/sh
# /init of the guest-driver tests' initramfs (built by guest-initramfs.sh): busybox sh as PID 1 of
# a Linux guest whose disk /dev/vda is a vhost-user-blk device served by `bulkhead block-server`,
# so that Linux's own virtio_blk driver does the I/O.
#
# What to do comes from the kernel command line (/proc/cmdline):
#   bh.mode=verify  bh.jobs=J jobs in parallel; job j runs its dd on CPU j (so blk-mq submits on
#                   queue j when there are J queues), writes bh.kib KiB of pattern (region j) with
#                   O_DIRECT and fsync, reads it back with O_DIRECT, compares. The regions are
#                   spread over the disk, the first at offset 0, the last ending at its last byte:
#                   region j at j * S, S = (capacity - bh.kib KiB) / (J - 1) rounded down to 4 KiB.
#   bh.mode=chunks  chunk n = 1, 2, ... of bh.kib KiB at offset n * bh.kib KiB, each written with
#                   O_DIRECT and fsync (a FLUSH), then "BH-FLUSHED n flushes=F" (F: FLUSH requests
#                   completed so far); until the VM is killed.
#   bh.seed         goes into every pattern line, so that nothing from another run can match.
# Markers, one line each: BH-DISK, BH-JOB, BH-IRQ, BH-STAT, BH-FLUSHED, BH-RESULT ok | BH-RESULT fail WHY.
#
# Pattern of region TAG: 4 KiB block b is 64 lines of 64 bytes; line l is
#   "bulkhead SEED TAG block b line l" padded with spaces to 63 bytes, then "\n".
# GuestDriverTests.swift builds the same bytes: change both together.

export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
# Kernel errors (I/O errors on vda) still reach the console; chatter that could split a marker
# line does not.
echo 4 >/proc/sys/kernel/printk

fail() {
  echo "BH-RESULT fail $*"
  poweroff -f
  sleep 1000
}

# The value of bh.NAME on the kernel command line.
arg() {
  for word in $(cat /proc/cmdline); do
    case $word in "bh.$1="*) echo "${word#*=}" ;; esac
  done
}

pattern() {  # SEED TAG BLOCKS
  awk -v seed="$1" -v tag="$2" -v blocks="$3" 'BEGIN {
    for (b = 0; b < blocks; b++) for (l = 0; l < 64; l++) printf "%-63s\n", "bulkhead " seed " " tag " block " b " line " l
  }'
}

for module in $(cat /etc/modules); do
  insmod "/lib/modules/$module.ko" || fail "insmod $module"
done
waited=0
while [ ! -b /dev/vda ]; do
  waited=$((waited + 1))
  [ $waited -gt 300 ] && fail "no /dev/vda 30 s after loading $(cat /etc/modules | tr '\n' ' ')"
  sleep 0.1
done

mode=$(arg mode)
seed=$(arg seed)
kib=$(arg kib)
jobs=$(arg jobs)
[ -n "$seed" ] && [ -n "$kib" ] || fail "bh.seed and bh.kib must be on the kernel command line: $(cat /proc/cmdline)"
capacity=$(($(cat /sys/block/vda/size) * 512))
# cache=write-back: the driver saw VIRTIO_BLK_F_FLUSH, so fsync sends the device a FLUSH.
echo "BH-DISK bytes=$capacity queues=$(ls /sys/block/vda/mq | wc -l) cpus=$(grep -c ^processor /proc/cpuinfo)" \
  "cache=$(tr ' ' - </sys/block/vda/queue/write_cache)"

# FLUSH requests the device completed (field 16 of the disk's stat).
flushes() { awk '{ print $16 }' /sys/block/vda/stat; }

verify_job() {  # JOB
  job=$1
  offset=$((job * stride))
  pattern "$seed" "region$job" $((kib / 4)) >/tmp/written.$job
  taskset -c "$job" dd if=/tmp/written.$job of=/dev/vda bs=256K seek=$offset \
    oflag=direct,seek_bytes conv=fsync,notrunc status=none || { echo "BH-JOB $job fail write"; return 1; }
  taskset -c "$job" dd if=/dev/vda of=/tmp/read.$job bs=64K skip=$offset count=$((kib * 1024)) \
    iflag=direct,skip_bytes,count_bytes status=none || { echo "BH-JOB $job fail read"; return 1; }
  cmp /tmp/written.$job /tmp/read.$job || { echo "BH-JOB $job fail compare"; return 1; }
  echo "BH-JOB $job ok offset=$offset bytes=$((kib * 1024))"
}

case $mode in
  verify)
    [ -n "$jobs" ] || fail "bh.jobs missing"
    [ $((jobs * kib * 1024)) -le "$capacity" ] || fail "$jobs jobs of $kib KiB do not fit in $capacity bytes"
    stride=0
    [ "$jobs" -gt 1 ] && stride=$(((capacity - kib * 1024) / (jobs - 1) / 4096 * 4096))
    pids=""
    job=0
    while [ $job -lt "$jobs" ]; do
      verify_job $job &
      pids="$pids $!"
      job=$((job + 1))
    done
    failed=0
    for pid in $pids; do wait "$pid" || failed=$((failed + 1)); done
    # Completions per queue: one MSI-X vector per virtqueue, named virtioN-req.Q.
    grep -- '-req\.' /proc/interrupts | while read -r line; do echo "BH-IRQ $line"; done
    [ $failed -eq 0 ] || fail "$failed of $jobs jobs failed"
    echo "BH-STAT flushes=$(flushes)"
    echo "BH-RESULT ok"
    ;;
  chunks)
    n=1
    while [ $(((n + 1) * kib * 1024)) -le "$capacity" ]; do
      pattern "$seed" "chunk$n" $((kib / 4)) >/tmp/chunk
      dd if=/tmp/chunk of=/dev/vda bs=${kib}K seek=$((n * kib * 1024)) \
        oflag=direct,seek_bytes conv=fsync,notrunc status=none || fail "write of chunk $n"
      echo "BH-FLUSHED $n flushes=$(flushes)"
      n=$((n + 1))
    done
    fail "the disk filled up before the VM was killed"
    ;;
  *)
    fail "unknown bh.mode '$mode'"
    ;;
esac
poweroff -f
sleep 1000
